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
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::h2_goaway::frame;
use super::tls::TestPki;

const PREFACE_LEN: usize = 24;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;
const END_STREAM_AND_HEADERS: u8 = 0x5;
/// HPACK: `:status: 200` from the static table.
const STATUS_200: u8 = 0x88;

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
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let acceptor = TlsAcceptor::from(Arc::new(pki.server_config(&[b"h2"])));
        let counters = Arc::new(Counters::default());
        let settings = watch::Sender::new((0, Vec::new()));
        let (shared, changes) = (counters.clone(), settings.clone());
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { continue };
                        shared.connections.fetch_add(1, Ordering::SeqCst);
                        let (acceptor, shared) = (acceptor.clone(), shared.clone());
                        let mut changes = changes.subscribe();
                        changes.mark_unchanged();
                        conns.spawn(async move {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                let _ = serve(tls, changes, &shared).await;
                            }
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
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
    let mut chunk = [0u8; 16 * 1024];
    while buf.len() < PREFACE_LEN {
        match io.read(&mut chunk).await? {
            0 => return Ok(()),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.drain(..PREFACE_LEN);
    io.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
    io.flush().await?;
    loop {
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    io.write_all(&frame(SETTINGS, ACK, 0, &[])).await?;
                }
                SETTINGS => {
                    counters.acks.fetch_add(1, Ordering::SeqCst);
                }
                HEADERS => {
                    counters.heads.fetch_add(1, Ordering::SeqCst);
                    io.write_all(&frame(HEADERS, END_STREAM_AND_HEADERS, id, &[STATUS_200]))
                        .await?;
                }
                _ => {}
            }
            buf.drain(..9 + len);
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
