//! An HTTPS upstream that speaks just enough HTTP/2, frame by frame, to say
//! GOAWAY with a last stream id below streams in flight, which no library
//! server does on purpose: on its first connection it reads request heads
//! until `streams` have arrived, then sends GOAWAY (`NO_ERROR`, last stream
//! id = the first stream), answers that first stream, and closes half a
//! second later (a draining server keeps the connection a while). Every
//! later connection answers each stream at once. Answers are `200` with no
//! body. Request bodies, trailers and flow control are ignored (requests
//! are expected without bodies).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::tls::TestPki;

const PREFACE_LEN: usize = 24;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
const END_STREAM_AND_HEADERS: u8 = 0x5;
/// HPACK: `:status: 200` from the static table.
const STATUS_200: u8 = 0x88;
/// How long the first connection stays open after its GOAWAY.
const LINGER: std::time::Duration = std::time::Duration::from_millis(500);

/// A running GOAWAY upstream; dropping it closes everything.
pub struct GoawayUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    heads: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl GoawayUpstream {
    /// Listen on `127.0.0.1:0` (ALPN `h2` only, the server certificate of `pki`).
    pub async fn start(pki: &TestPki, streams: usize) -> GoawayUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let acceptor = TlsAcceptor::from(Arc::new(pki.server_config(&[b"h2"])));
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(AtomicUsize::new(0));
        let (count, seen) = (connections.clone(), heads.clone());
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { continue };
                        let first = count.fetch_add(1, Ordering::SeqCst) == 0;
                        let (acceptor, seen) = (acceptor.clone(), seen.clone());
                        conns.spawn(async move {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                let goaway_after = first.then_some(streams);
                                let _ = serve(tls, goaway_after, &seen).await;
                            }
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        GoawayUpstream {
            addr,
            connections,
            heads,
            task,
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Request heads received so far, on every connection.
    pub fn heads(&self) -> usize {
        self.heads.load(Ordering::SeqCst)
    }
}

impl Drop for GoawayUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One HTTP/2 frame: its 9-byte header, then `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len().to_be_bytes();
    let mut frame = vec![len[5], len[6], len[7], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Serve one connection; with `goaway_after`, say GOAWAY once that many
/// request heads came, answer the first and return.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    goaway_after: Option<usize>,
    heads: &AtomicUsize,
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
    // Empty SETTINGS: no stream limit.
    io.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
    io.flush().await?;
    let mut streams = Vec::new();
    loop {
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            if kind == SETTINGS && flags & ACK == 0 {
                io.write_all(&frame(SETTINGS, ACK, 0, &[])).await?;
            }
            if kind == HEADERS {
                heads.fetch_add(1, Ordering::SeqCst);
                streams.push(id);
            }
            buf.drain(..9 + len);
        }
        match goaway_after {
            Some(count) if streams.len() >= count => {
                let first = streams[0];
                let mut goaway = first.to_be_bytes().to_vec();
                goaway.extend_from_slice(&0u32.to_be_bytes()); // NO_ERROR
                io.write_all(&frame(GOAWAY, 0, 0, &goaway)).await?;
                io.write_all(&frame(
                    HEADERS,
                    END_STREAM_AND_HEADERS,
                    first,
                    &[STATUS_200],
                ))
                .await?;
                io.flush().await?;
                tokio::time::sleep(LINGER).await;
                return io.shutdown().await;
            }
            Some(_) => {}
            None => {
                for id in streams.drain(..) {
                    io.write_all(&frame(HEADERS, END_STREAM_AND_HEADERS, id, &[STATUS_200]))
                        .await?;
                }
                io.flush().await?;
            }
        }
        match io.read(&mut chunk).await? {
            0 => return Ok(()),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
