//! Just enough of HTTP/2's wire format for hand-driven test upstreams that
//! misbehave where no library server lets a test ([`super::h2_goaway`],
//! [`super::h2_settings`], [`super::h2_script`]): frame constants, a frame
//! builder, HPACK literals, reading the client's preface, taking whole
//! frames off a read buffer, and an HTTPS listener (ALPN `h2` only) that
//! hands each connection to a server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::tls::TestPki;

/// The client connection preface (RFC 9113 §3.4), in bytes.
const PREFACE_LEN: usize = 24;
/// Frame types and flags (RFC 9113 §6).
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const ACK: u8 = 0x1;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const END_STREAM_AND_HEADERS: u8 = 0x5;
/// HPACK: `:status: 200` from the static table.
pub const STATUS_200: u8 = 0x88;
/// Bytes read from a connection at once.
pub const CHUNK: usize = 16 * 1024;

/// One HTTP/2 frame: its 9-byte header, then `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len().to_be_bytes();
    let mut frame = vec![len[5], len[6], len[7], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// HPACK: a `:status` of any code, as a literal that is not indexed.
pub fn status(code: u16) -> Vec<u8> {
    let digits = code.to_string();
    // Literal without indexing, name from static table entry 8 (`:status`).
    let mut field = vec![0x08, digits.len() as u8];
    field.extend_from_slice(digits.as_bytes());
    field
}

/// HPACK: the field `name: value` as a literal that is not indexed, its
/// name written as given (uppercase too). Both shorter than 127 bytes.
pub fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut field = vec![0x00, name.len() as u8];
    field.extend_from_slice(name.as_bytes());
    field.push(value.len() as u8);
    field.extend_from_slice(value.as_bytes());
    field
}

/// The header of a frame taken off a buffer (its payload is dropped).
#[derive(Clone, Copy, Debug)]
pub struct FrameHead {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

/// Read the client's preface into `buf` (what follows it stays there) and
/// send empty SETTINGS; `false` when the client closed first.
pub async fn start<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<bool> {
    let mut chunk = [0u8; CHUNK];
    while buf.len() < PREFACE_LEN {
        match io.read(&mut chunk).await? {
            0 => return Ok(false),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.drain(..PREFACE_LEN);
    io.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
    io.flush().await?;
    Ok(true)
}

/// The next whole frame at the start of `buf`, taken off it.
pub fn take_frame(buf: &mut Vec<u8>) -> Option<FrameHead> {
    take_whole_frame(buf).map(|(head, _)| head)
}

/// The next whole frame at the start of `buf` and its payload, taken off it.
pub fn take_whole_frame(buf: &mut Vec<u8>) -> Option<(FrameHead, Vec<u8>)> {
    if buf.len() < 9 {
        return None;
    }
    let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
    if buf.len() < 9 + len {
        return None;
    }
    let head = FrameHead {
        kind: buf[3],
        flags: buf[4],
        stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
    };
    let payload = buf[9..9 + len].to_vec();
    buf.drain(..9 + len);
    Some((head, payload))
}

/// Listen on `127.0.0.1:0` (TLS with the server certificate of `pki`, ALPN
/// `h2` only) and run `serve` on each connection, with its number (0 for
/// the first); the task stops when aborted.
pub async fn listen<F, Fut>(pki: &TestPki, serve: F) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(TlsStream<TcpStream>, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let acceptor = TlsAcceptor::from(Arc::new(pki.server_config(&[b"h2"])));
    let serve = Arc::new(serve);
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        let mut accepted_so_far = 0;
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else { continue };
                    let (acceptor, serve) = (acceptor.clone(), serve.clone());
                    let number = accepted_so_far;
                    accepted_so_far += 1;
                    conns.spawn(async move {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            serve(tls, number).await;
                        }
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    (addr, task)
}
