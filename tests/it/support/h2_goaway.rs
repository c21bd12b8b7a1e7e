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
use tokio::task::JoinHandle;

use super::h2_wire::{
    ACK, CHUNK, END_STREAM_AND_HEADERS, GOAWAY, HEADERS, SETTINGS, STATUS_200, frame, listen,
    start, take_frame,
};
use super::tls::TestPki;

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
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(AtomicUsize::new(0));
        let (count, seen) = (connections.clone(), heads.clone());
        let (addr, task) = listen(pki, move |tls, number| {
            count.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            async move {
                let goaway_after = (number == 0).then_some(streams);
                let _ = serve(tls, goaway_after, &seen).await;
            }
        })
        .await;
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

/// Serve one connection; with `goaway_after`, say GOAWAY once that many
/// request heads came, answer the first and return.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    goaway_after: Option<usize>,
    heads: &AtomicUsize,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    if !start(&mut io, &mut buf).await? {
        return Ok(());
    }
    let mut chunk = [0u8; CHUNK];
    let mut streams = Vec::new();
    loop {
        while let Some(head) = take_frame(&mut buf) {
            if head.kind == SETTINGS && head.flags & ACK == 0 {
                io.write_all(&frame(SETTINGS, ACK, 0, &[])).await?;
            }
            if head.kind == HEADERS {
                heads.fetch_add(1, Ordering::SeqCst);
                streams.push(head.stream);
            }
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
