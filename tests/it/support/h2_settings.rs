//! An HTTPS upstream that speaks just enough HTTP/2, frame by frame, to
//! change its SETTINGS in the middle of a connection, which no library
//! server lets a test do: [`SettingsUpstream::settings`] sends a SETTINGS
//! frame on every connection open at that moment (later connections start
//! with empty SETTINGS), and [`SettingsUpstream::acks`] counts the client's
//! acknowledgements, after which the client applies them. Every request
//! head is answered at once, `200` with no body; request bodies and flow
//! control are ignored (requests are expected without bodies).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::h2_wire::{
    ACK, CHUNK, END_STREAM_AND_HEADERS, HEADERS, SETTINGS, STATUS_200, frame, listen, start,
    take_frame,
};
use super::tls::TestPki;

/// `SETTINGS_MAX_CONCURRENT_STREAMS` (RFC 9113 §6.5.2).
pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// Counters shared by the connections.
#[derive(Default)]
struct Counters {
    connections: AtomicUsize,
    heads: AtomicUsize,
    acks: AtomicUsize,
}

/// A running SETTINGS upstream; dropping it closes everything.
pub struct SettingsUpstream {
    addr: SocketAddr,
    counters: Arc<Counters>,
    /// The latest SETTINGS to send, numbered so that each is sent once.
    settings: watch::Sender<(usize, Vec<(u16, u32)>)>,
    task: JoinHandle<()>,
}

impl SettingsUpstream {
    /// Listen on `127.0.0.1:0` (ALPN `h2` only, the server certificate of `pki`).
    pub async fn start(pki: &TestPki) -> SettingsUpstream {
        let counters = Arc::new(Counters::default());
        let settings = watch::Sender::new((0, Vec::new()));
        let (shared, changes) = (counters.clone(), settings.clone());
        let (addr, task) = listen(pki, move |tls, _| {
            shared.connections.fetch_add(1, Ordering::SeqCst);
            let shared = shared.clone();
            let mut changes = changes.subscribe();
            changes.mark_unchanged();
            async move {
                let _ = serve(tls, changes, &shared).await;
            }
        })
        .await;
        SettingsUpstream {
            addr,
            counters,
            settings,
            task,
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.counters.connections.load(Ordering::SeqCst)
    }

    /// Request heads received so far, on every connection.
    pub fn heads(&self) -> usize {
        self.counters.heads.load(Ordering::SeqCst)
    }

    /// SETTINGS acknowledgements received so far (one per connection for
    /// its first SETTINGS, then one per [`SettingsUpstream::settings`]).
    pub fn acks(&self) -> usize {
        self.counters.acks.load(Ordering::SeqCst)
    }

    /// Send SETTINGS `(identifier, value)` on every connection open now,
    /// and wait (up to 5 s) until the client has acknowledged them on one.
    pub async fn settings(&self, settings: &[(u16, u32)]) {
        let acked = self.acks();
        self.settings
            .send_modify(|(number, latest)| (*number, *latest) = (*number + 1, settings.to_vec()));
        tokio::time::timeout(Duration::from_secs(5), async {
            while self.acks() == acked {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the client acknowledges the SETTINGS");
    }
}

impl Drop for SettingsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The payload of a SETTINGS frame.
fn settings_payload(settings: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in settings {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    payload
}

/// Serve one connection: answer every request head at once, send the
/// SETTINGS `changes` brings.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    mut changes: watch::Receiver<(usize, Vec<(u16, u32)>)>,
    counters: &Counters,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    if !start(&mut io, &mut buf).await? {
        return Ok(());
    }
    let mut chunk = [0u8; CHUNK];
    loop {
        while let Some(head) = take_frame(&mut buf) {
            match head.kind {
                SETTINGS if head.flags & ACK == 0 => {
                    io.write_all(&frame(SETTINGS, ACK, 0, &[])).await?;
                }
                SETTINGS => {
                    counters.acks.fetch_add(1, Ordering::SeqCst);
                }
                HEADERS => {
                    counters.heads.fetch_add(1, Ordering::SeqCst);
                    let answer = frame(HEADERS, END_STREAM_AND_HEADERS, head.stream, &[STATUS_200]);
                    io.write_all(&answer).await?;
                }
                _ => {}
            }
        }
        io.flush().await?;
        tokio::select! {
            read = io.read(&mut chunk) => match read? {
                0 => return Ok(()),
                n => buf.extend_from_slice(&chunk[..n]),
            },
            Ok(()) = changes.changed() => {
                let payload = settings_payload(&changes.borrow_and_update().1);
                io.write_all(&frame(SETTINGS, 0, 0, &payload)).await?;
            }
        }
    }
}
