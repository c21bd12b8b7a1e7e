//! Which protocol an app connection speaks, told by its first bytes.
//!
//! A client speaking HTTP/2 with prior knowledge (h2c, as gRPC clients do
//! to a local proxy; or after TLS ALPN `h2`) opens with the connection
//! preface `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n` (RFC 9113 §3.4), which no
//! HTTP/1.x request line can start like: `PRI` is refused as a method
//! anyway. Two more openings are no HTTP at all, and are told apart so
//! that the app can be told what it did wrong ([`crate::mismatch`]):
//! a TLS record carrying a handshake (`0x16`, then major version `0x03`:
//! a ClientHello; no request line starts with a control byte), and a PROXY
//! protocol header from a load balancer (v1 `PROXY ` — `PROPFIND` differs
//! at its fourth byte — or v2's 12-byte signature, which starts with an
//! empty line and a NUL). [`sniff`] reads until the bytes either differ from
//! every opening (usually at the first byte: one read, which also brings the
//! first request head) or match all of one. The bytes read are handed back
//! to the server that follows, in front of the rest of the stream
//! ([`Rewind`]).
//!
//! The caller bounds the wait ([`sniff_by`]: a connection that never sends
//! a byte is closed after `idle_timeout`, as for HTTP/1.1).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::time::Instant;
use tracing::debug;

/// The HTTP/2 client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A PROXY protocol v1 header's start (haproxy's `proxy-protocol.txt` §2.1).
const PROXY_V1: &[u8] = b"PROXY ";

/// A PROXY protocol v2 header's signature (§2.2).
const PROXY_V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A TLS record of type handshake, protocol version 3.x (SSL 3.0 to TLS
/// 1.3 all write `0x03` here): what a ClientHello starts with.
const TLS_HANDSHAKE: &[u8] = &[0x16, 0x03];

/// The openings that are not HTTP/1, and what each tells.
const OPENINGS: [(&[u8], Protocol); 4] = [
    (PREFACE, Protocol::Http2),
    (TLS_HANDSHAKE, Protocol::Tls),
    (PROXY_V1, Protocol::ProxyHeader),
    (PROXY_V2, Protocol::ProxyHeader),
];

/// How much the first read may bring: a typical request head, so that
/// the first request costs no extra read.
const FIRST_READ: usize = 4096;

/// What an app connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// HTTP/2 (the preface came).
    Http2,
    /// TLS: a ClientHello came (`https://` to a listener without `tls`).
    Tls,
    /// A PROXY protocol header (v1 or v2) came: a load balancer in front
    /// announces the client's address, which sidekey does not take.
    ProxyHeader,
}

/// [`sniff`], bounded by `deadline`: `None` when the connection from `peer`
/// ended or sent nothing telling by then (a debug line says which).
pub async fn sniff_by<S: AsyncRead + Unpin>(
    stream: S,
    deadline: Instant,
    peer: SocketAddr,
) -> Option<(Protocol, Rewind<S>)> {
    match tokio::time::timeout_at(deadline, sniff(stream)).await {
        Ok(Ok(sniffed)) => Some(sniffed),
        Ok(Err(err)) => {
            debug!(%peer, error = %err, "connection ended before its first request");
            None
        }
        Err(_) => {
            debug!(%peer, "no request within idle_timeout");
            None
        }
    }
}

/// Read from `stream` until its first bytes tell its [`Protocol`]; the
/// stream with those bytes put back. Fails when the connection ends or
/// breaks first.
pub async fn sniff<S: AsyncRead + Unpin>(mut stream: S) -> io::Result<(Protocol, Rewind<S>)> {
    let mut read = BytesMut::with_capacity(FIRST_READ);
    let protocol = loop {
        if stream.read_buf(&mut read).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(protocol) = decide(&read) {
            break protocol;
        }
    };
    Ok((protocol, Rewind::new(read.freeze(), stream)))
}

/// The protocol the bytes so far tell, if they tell: one of [`OPENINGS`]
/// once all of it came, HTTP/1 once the bytes differ from every one.
fn decide(read: &[u8]) -> Option<Protocol> {
    let mut undecided = false;
    for (opening, protocol) in OPENINGS {
        let seen = read.len().min(opening.len());
        if read[..seen] == opening[..seen] {
            if seen == opening.len() {
                return Some(protocol);
            }
            undecided = true;
        }
    }
    (!undecided).then_some(Protocol::Http1)
}

/// A stream whose first bytes were read already: they are read again
/// first, then the stream's own. Writes pass through.
#[derive(Debug)]
pub struct Rewind<S> {
    head: Option<Bytes>,
    inner: S,
}

impl<S> Rewind<S> {
    /// `head`, then `stream`.
    pub fn new(head: Bytes, stream: S) -> Self {
        Rewind {
            head: (!head.is_empty()).then_some(head),
            inner: stream,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(head) = this.head.as_mut() {
            let n = head.len().min(buf.remaining());
            buf.put_slice(&head[..n]);
            head.advance(n);
            if head.is_empty() {
                this.head = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

crate::write_through::write_through!(Rewind.inner);

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn the_first_differing_byte_decides() {
        assert_eq!(decide(b"G"), Some(Protocol::Http1));
        assert_eq!(decide(b"PRI * HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(decide(b"POST / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(decide(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(decide(PREFACE), Some(Protocol::Http2));
        let mut more = PREFACE.to_vec();
        more.extend_from_slice(b"\x00\x00\x00\x04");
        assert_eq!(decide(&more), Some(Protocol::Http2));
    }

    #[test]
    fn tls_and_proxy_headers_are_told_from_methods_that_start_alike() {
        assert_eq!(decide(b"\x16"), None);
        assert_eq!(decide(b"\x16\x03\x01\x02\x00"), Some(Protocol::Tls));
        assert_eq!(decide(b"\x16\x01"), Some(Protocol::Http1));
        assert_eq!(decide(b"P"), None);
        assert_eq!(decide(b"PRO"), None);
        assert_eq!(decide(b"PROXY TCP4 "), Some(Protocol::ProxyHeader));
        assert_eq!(decide(b"PROPFIND / HTTP/1.1"), Some(Protocol::Http1));
        assert_eq!(decide(b"PUT / HTTP/1.1"), Some(Protocol::Http1));
        assert_eq!(decide(b"PATCH / HTTP/1.1"), Some(Protocol::Http1));
        assert_eq!(decide(b"\r\n\r\n"), None);
        assert_eq!(
            decide(b"\r\n\r\n\0\r\nQUIT\n\x21\x11"),
            Some(Protocol::ProxyHeader)
        );
        assert_eq!(decide(b"\r\nGET / HTTP/1.1"), Some(Protocol::Http1));
    }

    #[tokio::test]
    async fn the_bytes_read_to_decide_are_read_again() {
        for (sent, expected) in [
            (b"GET / HTTP/1.1\r\n\r\n".as_slice(), Protocol::Http1),
            (PREFACE, Protocol::Http2),
        ] {
            let (mut client, server) = tokio::io::duplex(64);
            // The preface split over several writes, then more bytes.
            for piece in sent.chunks(5) {
                client.write_all(piece).await.unwrap();
            }
            client.write_all(b"rest").await.unwrap();
            drop(client);
            let (protocol, mut stream) = sniff(server).await.unwrap();
            assert_eq!(protocol, expected);
            let mut all = Vec::new();
            stream.read_to_end(&mut all).await.unwrap();
            assert_eq!(all, [sent, b"rest"].concat());
        }
    }

    #[tokio::test]
    async fn a_connection_closed_before_telling_fails() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PRI * HTTP/2").await.unwrap();
        drop(client);
        let err = sniff(server).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
