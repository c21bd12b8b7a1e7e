//! An HTTPS upstream that speaks HTTP/2 frame by frame and answers each
//! request with the frames its test scripts, byte for byte: interim
//! HEADERS, field names no library server would send, DATA after the end
//! of a stream, PUSH_PROMISE, PING floods. It records what the client sends
//! back: its SETTINGS, PING acknowledgements and GOAWAY codes.
//! The script is asked when a request's HEADERS frame arrives and, for a
//! request with a body, again when its body has ended (its bytes counted,
//! not kept). CONTINUATION and flow control are not handled: request
//! fields come in one frame, and bodies fit the default windows.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::h2_wire::{
    ACK, CHUNK, DATA, END_STREAM, GOAWAY, HEADERS, PING, SETTINGS, frame, listen, start,
    take_whole_frame,
};
use super::tls::TestPki;

/// One request as the script sees it.
#[derive(Clone, Copy, Debug)]
pub struct ScriptedRequest {
    /// 0-based order of arrival, over every connection.
    pub index: usize,
    /// Its stream.
    pub stream: u32,
    /// Whether the script is asked on its HEADERS frame (else at the end
    /// of its body).
    pub at_head: bool,
    /// The length of its body once it has ended (0 for a request without
    /// one); `None` while it goes on.
    pub body: Option<u64>,
}

type Script = Arc<dyn Fn(&ScriptedRequest) -> Vec<Vec<u8>> + Send + Sync>;

/// What the client sent, over every connection.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    requests: AtomicUsize,
    ping_acks: AtomicUsize,
    /// The payload of each SETTINGS frame (not acknowledgements), as pairs.
    settings: Mutex<Vec<Vec<(u16, u32)>>>,
    /// The error code of each GOAWAY.
    goaways: Mutex<Vec<u32>>,
}

/// A running scripted upstream; dropping it closes everything.
pub struct ScriptedUpstream {
    addr: SocketAddr,
    seen: Arc<Seen>,
    task: JoinHandle<()>,
}

impl ScriptedUpstream {
    /// Listen on `127.0.0.1:0` (ALPN `h2` only, the server certificate of
    /// `pki`) and answer each request with the frames `script` gives.
    pub async fn start(
        pki: &TestPki,
        script: impl Fn(&ScriptedRequest) -> Vec<Vec<u8>> + Send + Sync + 'static,
    ) -> ScriptedUpstream {
        let seen = Arc::new(Seen::default());
        let script: Script = Arc::new(script);
        let shared = seen.clone();
        let (addr, task) = listen(pki, move |tls, _| {
            shared.connections.fetch_add(1, Ordering::SeqCst);
            let (seen, script) = (shared.clone(), script.clone());
            async move {
                let _ = serve(tls, &script, &seen).await;
            }
        })
        .await;
        ScriptedUpstream { addr, seen, task }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }

    /// PING acknowledgements received so far.
    pub fn ping_acks(&self) -> usize {
        self.seen.ping_acks.load(Ordering::SeqCst)
    }

    /// The client's first SETTINGS, as `(identifier, value)` pairs.
    pub fn client_settings(&self) -> Vec<(u16, u32)> {
        let settings = self.seen.settings.lock().expect("lock");
        settings.first().cloned().unwrap_or_default()
    }

    /// The error code of every GOAWAY received so far.
    pub fn goaways(&self) -> Vec<u32> {
        self.seen.goaways.lock().expect("lock").clone()
    }

    /// Wait (up to 5 s) until `done` holds.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&ScriptedUpstream) -> bool) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while !done(self) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}, within 5 s"));
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A HEADERS frame on `stream` with `flags`, its block the fields given
/// (each already HPACK-encoded, see [`super::h2_wire::status`]).
pub fn headers(stream: u32, flags: u8, fields: &[Vec<u8>]) -> Vec<u8> {
    frame(HEADERS, flags, stream, &fields.concat())
}

/// Read a big-endian `u32` at `at` of `payload` (0 past its end).
fn u32_at(payload: &[u8], at: usize) -> u32 {
    payload
        .get(at..at + 4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Serve one connection: acknowledge SETTINGS, answer each request with
/// what the script says, record what the client sends.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    script: &Script,
    seen: &Seen,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    if !start(&mut io, &mut buf).await? {
        return Ok(());
    }
    let mut chunk = [0u8; CHUNK];
    // Requests whose body has not ended: (stream, index, bytes so far).
    let mut open: Vec<(u32, usize, u64)> = Vec::new();
    loop {
        while let Some((head, payload)) = take_whole_frame(&mut buf) {
            match head.kind {
                SETTINGS if head.flags & ACK == 0 => {
                    let pairs = payload
                        .chunks_exact(6)
                        .map(|s| (u16::from_be_bytes([s[0], s[1]]), u32_at(s, 2)))
                        .collect();
                    seen.settings.lock().expect("lock").push(pairs);
                    io.write_all(&frame(SETTINGS, ACK, 0, &[])).await?;
                }
                PING if head.flags & ACK != 0 => {
                    seen.ping_acks.fetch_add(1, Ordering::SeqCst);
                }
                PING => io.write_all(&frame(PING, ACK, 0, &payload)).await?,
                GOAWAY => {
                    let code = u32_at(&payload, 4);
                    seen.goaways.lock().expect("lock").push(code);
                }
                HEADERS => {
                    let index = seen.requests.fetch_add(1, Ordering::SeqCst);
                    let ended = head.flags & END_STREAM != 0;
                    if !ended {
                        open.push((head.stream, index, 0));
                    }
                    let request = ScriptedRequest {
                        index,
                        stream: head.stream,
                        at_head: true,
                        body: ended.then_some(0),
                    };
                    for frame in script(&request) {
                        io.write_all(&frame).await?;
                    }
                }
                DATA => {
                    let Some(at) = open.iter().position(|(s, _, _)| *s == head.stream) else {
                        continue;
                    };
                    open[at].2 += payload.len() as u64;
                    if head.flags & END_STREAM != 0 {
                        let (stream, index, len) = open.swap_remove(at);
                        let request = ScriptedRequest {
                            index,
                            stream,
                            at_head: false,
                            body: Some(len),
                        };
                        for frame in script(&request) {
                            io.write_all(&frame).await?;
                        }
                    }
                }
                _ => {}
            }
        }
        io.flush().await?;
        match io.read(&mut chunk).await? {
            0 => return Ok(()),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
