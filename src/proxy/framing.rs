//! How each request's body was framed, as the app wrote it.
//!
//! A request with both `Content-Length` and `Transfer-Encoding` is how
//! request smuggling starts (RFC 9112 §6.1, §11.2); sidekey refuses it, as
//! Envoy and nginx do. hyper 1 cannot tell the service: it frames such a
//! request as chunked, drops the `Content-Length` header (in either order)
//! and closes the connection after the response. So the connection is read
//! through a [`Tapped`] stream that keeps the bytes from where the next
//! request head starts, and when hyper hands a request over,
//! [`Tap::inspect`] parses that head again with `httparse` — the parser
//! hyper itself uses, with its default settings — and reports the
//! [`Framing`]. [`super::Dispatch::find`] refuses a conflict.
//!
//! To know where the following head starts, the tap skips a
//! `Content-Length` body by counting its bytes (hyper has checked the
//! value). The end of a chunked body cannot be known without decoding it, so
//! a request with a chunked body is the last one on its connection: the
//! server answers it with `Connection: close` and the tap stops recording.
//! Should the tap ever disagree with hyper about a head, the request is
//! refused and the connection closed ([`Framing::Lost`]).
//!
//! Cost per request: the head's bytes are copied once and parsed once; a
//! `Content-Length` body is counted, not copied.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use http::Request;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes kept while waiting for hyper to hand a request over; hyper's
/// own read buffer is smaller, so reaching this means the tap lost track.
const MAX_PENDING: usize = 1 << 20;

/// Header slots tried first when parsing a head (more are used when needed).
const HEADER_SLOTS: usize = 128;

/// What a request's head says about its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length`, or no body: the connection may carry more requests.
    Length,
    /// `Transfer-Encoding` (chunked): the last request on its connection.
    Chunked,
    /// Both `Content-Length` and `Transfer-Encoding`: refused.
    Conflict,
    /// The tap could not follow the connection: refused, connection closed.
    Lost,
}

impl Framing {
    /// Whether the connection must close after this request's response.
    pub fn closes_connection(self) -> bool {
        !matches!(self, Framing::Length)
    }
}

#[derive(Debug, Default)]
struct State {
    /// Bytes from the start of the next request head on.
    pending: Vec<u8>,
    /// Bytes of the current `Content-Length` body still to come.
    skip: u64,
    /// Recording stopped (after a chunked request, or when lost).
    stopped: bool,
}

impl State {
    fn observe(&mut self, bytes: &[u8]) {
        if self.stopped {
            return;
        }
        let skipped = usize::try_from(self.skip)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        self.skip -= skipped as u64;
        let bytes = &bytes[skipped..];
        if self.pending.len() + bytes.len() > MAX_PENDING {
            self.stop();
            return;
        }
        self.pending.extend_from_slice(bytes);
    }

    fn stop(&mut self) {
        self.stopped = true;
        self.pending = Vec::new();
    }
}

/// The service's side of one connection's tap.
#[derive(Clone, Debug, Default)]
pub struct Tap(Arc<Mutex<State>>);

impl Tap {
    /// Read `stream` through this tap.
    pub fn wrap<S>(&self, stream: S) -> Tapped<S> {
        Tapped {
            inner: stream,
            tap: self.clone(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` inconsistent
        // in a way that matters: the next inspect fails closed if it did.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The framing of `request`, the request hyper just parsed on this
    /// connection. Call once per request, in order.
    pub fn inspect<B>(&self, request: &Request<B>) -> Framing {
        let mut state = self.state();
        if state.stopped {
            return Framing::Lost;
        }
        let head = match parse_head(&state.pending) {
            Some(head) if head.method_matches(request.method()) => head,
            _ => {
                state.stop();
                return Framing::Lost;
            }
        };
        state.pending.drain(..head.len);
        match (head.content_length, head.transfer_encoding) {
            (Some(_), true) => {
                state.stop();
                Framing::Conflict
            }
            (None, true) => {
                state.stop();
                Framing::Chunked
            }
            (length, false) => {
                let length = length.unwrap_or(0);
                let buffered = usize::try_from(length)
                    .unwrap_or(usize::MAX)
                    .min(state.pending.len());
                state.pending.drain(..buffered);
                state.skip = length - buffered as u64;
                Framing::Length
            }
        }
    }
}

/// What the tap needs from one raw head.
struct Head {
    len: usize,
    method: String,
    content_length: Option<u64>,
    transfer_encoding: bool,
}

impl Head {
    fn method_matches(&self, method: &http::Method) -> bool {
        self.method == method.as_str()
    }
}

/// Parse the head at the start of `bytes`; `None` unless it is complete and
/// its framing headers are readable (hyper has accepted it, so they are).
fn parse_head(bytes: &[u8]) -> Option<Head> {
    let mut slots = [httparse::EMPTY_HEADER; HEADER_SLOTS];
    match head_with(bytes, &mut slots) {
        Err(httparse::Error::TooManyHeaders) => {
            let lines = bytes.iter().filter(|b| **b == b'\n').count();
            let mut slots = vec![httparse::EMPTY_HEADER; lines + 1];
            head_with(bytes, &mut slots).ok().flatten()
        }
        other => other.ok().flatten(),
    }
}

fn head_with<'b>(
    bytes: &'b [u8],
    slots: &mut [httparse::Header<'b>],
) -> Result<Option<Head>, httparse::Error> {
    let mut request = httparse::Request::new(slots);
    let httparse::Status::Complete(len) = request.parse(bytes)? else {
        return Ok(None);
    };
    let mut content_length = None;
    let mut transfer_encoding = false;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
        } else if header.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value).ok().map(str::trim);
            match value.and_then(|v| v.parse::<u64>().ok()) {
                Some(length) => content_length = Some(length),
                // hyper ignores a Content-Length after Transfer-Encoding
                // unread; it still counts as present.
                None => content_length = content_length.or(Some(0)),
            }
        }
    }
    Ok(Some(Head {
        len,
        method: request.method.unwrap_or_default().to_owned(),
        content_length,
        transfer_encoding,
    }))
}

/// The app's connection, read through a [`Tap`].
#[derive(Debug)]
pub struct Tapped<S> {
    inner: S,
    tap: Tap,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tapped<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &poll {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                this.tap.state().observe(new);
            }
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tapped<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::{Framing, Tap};
    use http::{Method, Request};

    fn request(method: Method) -> Request<()> {
        Request::builder().method(method).body(()).unwrap()
    }

    #[test]
    fn follows_length_bodies_and_stops_at_chunked_or_conflict() {
        let tap = Tap::default();
        tap.state()
            .observe(b"POST /a HTTP/1.1\r\ncontent-length: 10\r\n\r\n01234");
        assert_eq!(tap.inspect(&request(Method::POST)), Framing::Length);
        // The rest of the body, then a head that looks conflicting inside a
        // body, then the real next head split across reads.
        let decoy = "GET / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        let next = format!(
            "56789POST /b HTTP/1.1\r\ncontent-length: {}\r\n",
            decoy.len()
        );
        tap.state().observe(next.as_bytes());
        tap.state().observe(format!("\r\n{decoy}").as_bytes());
        assert_eq!(tap.inspect(&request(Method::POST)), Framing::Length);
        tap.state()
            .observe(b"GET /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(tap.inspect(&request(Method::GET)), Framing::Conflict);
        assert_eq!(tap.inspect(&request(Method::GET)), Framing::Lost);

        let tap = Tap::default();
        tap.state().observe(
            b"PUT /d HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        );
        assert_eq!(tap.inspect(&request(Method::PUT)), Framing::Chunked);
        assert!(Framing::Chunked.closes_connection());
        assert!(!Framing::Length.closes_connection());
    }

    #[test]
    fn disagreeing_with_hyper_fails_closed() {
        let tap = Tap::default();
        tap.state().observe(b"GET /a HTTP/1.1\r\n\r\n");
        assert_eq!(tap.inspect(&request(Method::POST)), Framing::Lost);
        let tap = Tap::default();
        tap.state().observe(b"GET /a HTTP/1.1\r\n");
        assert_eq!(tap.inspect(&request(Method::GET)), Framing::Lost);
    }

    #[test]
    fn many_headers_are_parsed_too() {
        let tap = Tap::default();
        let mut head = String::from("POST /a HTTP/1.1\r\n");
        for i in 0..300 {
            head.push_str(&format!("x-{i}: {i}\r\n"));
        }
        head.push_str("content-length: 1\r\ntransfer-encoding: chunked\r\n\r\n");
        tap.state().observe(head.as_bytes());
        assert_eq!(tap.inspect(&request(Method::POST)), Framing::Conflict);
    }
}
