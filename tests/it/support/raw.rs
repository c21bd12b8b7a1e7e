//! A hand-driven HTTP/1.1 client connection, for tests about the bytes on
//! the wire and about connections themselves: requests no client library
//! would send, bodies that stop half-way, requests written a few bytes at a
//! time, and whether the server answered, kept the connection or closed it.
//!
//! Writing never closes the write half (an app that stops sending keeps its
//! socket open). What the server sends is kept until a test reads it as
//! responses ([`RawConn::read_response`], [`RawConn::responses`]).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::proxy::CLIENT_TIMEOUT;

/// One HTTP/1.1 response read from raw bytes.
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Headers (names lowercase).
    pub headers: Vec<(String, String)>,
    /// Body (content-length framed).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection driven byte by byte.
pub struct RawConn {
    tcp: TcpStream,
    /// Bytes received and not yet taken by [`RawConn::read_response`].
    received: Vec<u8>,
}

impl RawConn {
    /// Open a TCP connection (the kernel completes it even when the server
    /// has not accepted it yet).
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let tcp = tokio::time::timeout(CLIENT_TIMEOUT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connect {addr}: timed out"))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        tcp.set_nodelay(true).expect("nodelay");
        RawConn {
            tcp,
            received: Vec::new(),
        }
    }

    /// Write bytes (a write error, such as a reset from a server that gave
    /// up on us, is returned rather than a panic).
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tcp.write_all(bytes).await
    }

    /// Write bytes `piece` at a time with a pause after each write, so the
    /// server reads them in many small reads (an app streaming an upload;
    /// boundaries land inside heads, chunk-size lines and trailers). Stops
    /// at the first write error.
    pub async fn send_in_pieces(&mut self, bytes: &[u8], piece: usize) -> std::io::Result<()> {
        let mut pieces = bytes.chunks(piece.max(1)).peekable();
        while let Some(piece) = pieces.next() {
            self.send(piece).await?;
            if pieces.peek().is_some() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        Ok(())
    }

    /// Close the sending side (`shutdown(SHUT_WR)`), as `nc -N` and some
    /// scripts do once their request is written; reading goes on.
    pub async fn finish_sending(&mut self) {
        self.tcp.shutdown().await.expect("shutdown(SHUT_WR)");
    }

    /// `GET path` with `Host: sidekey` and nothing else.
    pub async fn send_get(&mut self, path: &str) -> std::io::Result<()> {
        self.send(format!("GET {path} HTTP/1.1\r\nhost: sidekey\r\n\r\n").as_bytes())
            .await
    }

    /// Read one response, or `None` when none arrives within `within` or
    /// the server closes first.
    pub async fn read_response(&mut self, within: Duration) -> Option<RawResponse> {
        tokio::time::timeout(within, async {
            loop {
                if let Some((response, len)) = parse_response(&self.received, false) {
                    self.received.drain(..len);
                    return Some(response);
                }
                if !self.fill().await {
                    return None;
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Whether the server closes the connection (EOF or reset) within
    /// `within`; bytes that arrive meanwhile are kept.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        tokio::time::timeout(within, async { while self.fill().await {} })
            .await
            .is_ok()
    }

    /// What was received, as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }

    /// The status code of the first response head received, if any (its
    /// body may be incomplete).
    pub fn status(&self) -> Option<u16> {
        let text = String::from_utf8_lossy(&self.received);
        text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }

    /// Every response received, once the exchange is over: content-length
    /// framed (as sidekey and the test upstream answer), or delimited by the
    /// close. Panics on bytes that are not complete responses.
    pub fn responses(&self) -> Vec<RawResponse> {
        let mut rest = self.received.as_slice();
        let mut responses = Vec::new();
        while !rest.is_empty() {
            let (response, len) = parse_response(rest, true).unwrap_or_else(|| {
                panic!(
                    "not a complete response: {:?}",
                    String::from_utf8_lossy(rest)
                )
            });
            responses.push(response);
            rest = &rest[len..];
        }
        responses
    }

    /// Read more bytes; false on EOF or error.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.received.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }
}

/// The response at the start of `bytes` and how many bytes it takes, or
/// `None` while it is incomplete. Without a `content-length` the body is
/// empty, or with `to_the_end` the rest of `bytes` (the connection closed).
fn parse_response(bytes: &[u8], to_the_end: bool) -> Option<(RawResponse, usize)> {
    // More than hyper's default of 100, for answers with many fields.
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    assert!(
        headers.iter().all(|(n, _)| n != "transfer-encoding"),
        "chunked responses are not expected here: {headers:?}"
    );
    let status = response.code?;
    let body_len = match headers.iter().find(|(n, _)| n == "content-length") {
        Some((_, len)) => len.parse().expect("content-length"),
        None if to_the_end => bytes.len() - head_len,
        None => 0,
    };
    let body = bytes.get(head_len..head_len + body_len)?.to_vec();
    Some((
        RawResponse {
            status,
            headers,
            body,
        },
        head_len + body_len,
    ))
}
