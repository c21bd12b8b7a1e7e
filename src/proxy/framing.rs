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
//! To know where the following head starts, the tap follows each body
//! through the bytes hyper reads: a `Content-Length` body by counting its
//! bytes (hyper has checked the value), a chunked body chunk by chunk as
//! hyper's decoder reads it ([`super::chunked`]). Should the tap ever
//! disagree with hyper about a head or a body, or meet a chunked body it
//! cannot read as hyper does, the next request is refused and the
//! connection closed ([`Framing::Lost`]).
//!
//! Cost per request: the head's bytes are copied once and parsed once; body
//! bytes are counted, not copied; a chunked body costs one scan and parse
//! per size line, and copies only a size line split across reads and its
//! trailer fields, into a buffer reused for the connection's life.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use http::Request;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::chunked::{Chunked, Lost, Progress};

/// Most bytes kept while waiting for hyper to hand a request over; hyper's
/// own read buffer is smaller, so reaching this means the tap lost track.
const MAX_PENDING: usize = 1 << 20;

/// Header slots tried first when parsing a head (more are used when needed).
const HEADER_SLOTS: usize = 128;

/// What a request's head says about its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length`, `Transfer-Encoding` (chunked), or no body: the
    /// connection may carry more requests.
    Clear,
    /// Both `Content-Length` and `Transfer-Encoding`: refused.
    Conflict,
    /// The tap could not follow the connection: refused, connection closed.
    Lost,
}

impl Framing {
    /// Whether the connection must close after this request's response.
    pub fn closes_connection(self) -> bool {
        !matches!(self, Framing::Clear)
    }
}

/// Where the tap is in the request whose head it last inspected.
#[derive(Debug, Default)]
enum Body {
    /// Past its body (or it has none): the bytes are the next head.
    #[default]
    Done,
    /// This many `Content-Length` bytes still to come.
    Length(u64),
    /// Inside a chunked body.
    Chunked(Chunked),
}

impl Body {
    /// How many of `bytes` belong to the body; `scratch` is
    /// [`Chunked::follow`]'s.
    fn skip(&mut self, bytes: &[u8], scratch: &mut Vec<u8>) -> Result<usize, Lost> {
        let used = match self {
            Body::Done => return Ok(0),
            Body::Length(left) => {
                let used = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                *left -= used as u64;
                if *left > 0 {
                    return Ok(used);
                }
                used
            }
            Body::Chunked(chunked) => match chunked.follow(bytes, scratch)? {
                Progress::More => return Ok(bytes.len()),
                Progress::Ended(used) => used,
            },
        };
        *self = Body::Done;
        Ok(used)
    }
}

#[derive(Debug, Default)]
struct State {
    /// Bytes from the start of the next request head on.
    pending: Vec<u8>,
    /// Where the tap is in the current request's body.
    body: Body,
    /// A chunk-size line split across reads, or a trailer section.
    scratch: Vec<u8>,
    /// Recording stopped (lost track, or a conflict ended the connection).
    stopped: bool,
}

impl State {
    fn observe(&mut self, bytes: &[u8]) {
        if self.stopped {
            return;
        }
        let Ok(used) = self.body.skip(bytes, &mut self.scratch) else {
            self.stop();
            return;
        };
        let bytes = &bytes[used..];
        if self.pending.len() + bytes.len() > MAX_PENDING {
            self.stop();
            return;
        }
        self.pending.extend_from_slice(bytes);
    }

    /// The framing of the head at the start of `pending`, which hyper read
    /// as a `method` request; from here the tap follows that head's body.
    fn next_head(&mut self, method: &http::Method) -> Framing {
        if self.stopped || !matches!(self.body, Body::Done) {
            return Framing::Lost;
        }
        let head = match parse_head(&self.pending, method) {
            Some(head) if head.method_matches => head,
            _ => return Framing::Lost,
        };
        self.pending.drain(..head.len);
        self.body = match (head.content_length, head.transfer_encoding) {
            (Some(_), true) => return Framing::Conflict,
            (None, true) => Body::Chunked(Chunked::default()),
            (None | Some(0), false) => Body::Done,
            (Some(length), false) => Body::Length(length),
        };
        // Body bytes (and more) that hyper read with the head.
        match self.body.skip(&self.pending, &mut self.scratch) {
            Ok(used) => {
                self.pending.drain(..used);
                Framing::Clear
            }
            // This head is clear; hyper reads its body or fails on it. The
            // tap cannot tell where the next head starts: refuse it.
            Err(Lost) => {
                self.stop();
                Framing::Clear
            }
        }
    }

    fn stop(&mut self) {
        self.stopped = true;
        self.pending = Vec::new();
        self.scratch = Vec::new();
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
        let framing = state.next_head(request.method());
        if framing.closes_connection() {
            state.stop();
        }
        framing
    }
}

/// What the tap needs from one raw head.
struct Head {
    len: usize,
    /// Whether its method is the one hyper read.
    method_matches: bool,
    content_length: Option<u64>,
    transfer_encoding: bool,
}

/// Parse the head at the start of `bytes`, which hyper read as a `method`
/// request; `None` unless it is complete and its framing headers are
/// readable (hyper has accepted it, so they are).
///
/// The header slots are left uninitialized (httparse writes the ones it
/// uses): initializing [`HEADER_SLOTS`] of them was 4 KiB of stores per request.
fn parse_head(bytes: &[u8], method: &http::Method) -> Option<Head> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADER_SLOTS];
    match head_with(bytes, method, &mut slots) {
        Err(httparse::Error::TooManyHeaders) => {
            let lines = bytes.iter().filter(|b| **b == b'\n').count();
            let mut slots: Vec<MaybeUninit<httparse::Header<'_>>> = Vec::with_capacity(lines + 1);
            slots.resize_with(lines + 1, MaybeUninit::uninit);
            head_with(bytes, method, &mut slots).ok().flatten()
        }
        other => other.ok().flatten(),
    }
}

fn head_with<'b>(
    bytes: &'b [u8],
    method: &http::Method,
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<Head>, httparse::Error> {
    let mut request = httparse::Request::new(&mut []);
    let httparse::Status::Complete(len) = request.parse_with_uninit_headers(bytes, slots)? else {
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
        method_matches: request.method == Some(method.as_str()),
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

    /// Feed `messages` (method, head, body) to a tap as one stream in reads
    /// of `read` bytes, inspecting each request as soon as its head has been
    /// read, as hyper hands it over.
    fn framings(messages: &[(Method, &str, &str)], read: usize) -> Vec<Framing> {
        let tap = Tap::default();
        let stream: String = messages
            .iter()
            .map(|(_, head, body)| format!("{head}{body}"))
            .collect();
        let mut head_ends = Vec::new();
        let mut at = 0;
        for (_, head, body) in messages {
            head_ends.push(at + head.len());
            at += head.len() + body.len();
        }
        let mut seen = Vec::new();
        let mut observed = 0;
        for bytes in stream.as_bytes().chunks(read) {
            tap.state().observe(bytes);
            observed += bytes.len();
            while seen.len() < messages.len() && head_ends[seen.len()] <= observed {
                seen.push(tap.inspect(&request(messages[seen.len()].0.clone())));
            }
        }
        seen
    }

    /// [`framings`] for every size of read, which must all agree.
    fn framings_any_reads(messages: &[(Method, &str, &str)]) -> Vec<Framing> {
        let len: usize = messages.iter().map(|(_, h, b)| h.len() + b.len()).sum();
        let whole = framings(messages, len);
        for read in 1..len {
            assert_eq!(framings(messages, read), whole, "reads of {read} bytes");
        }
        whole
    }

    const DECOY: &str = "GET / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";

    #[test]
    fn follows_length_and_chunked_bodies_to_the_next_head() {
        let length_head = format!(
            "POST /b HTTP/1.1\r\ncontent-length: {}\r\n\r\n",
            DECOY.len()
        );
        let chunked_decoy = format!("{:x};ext=1\r\n{DECOY}\r\n0\r\n\r\n", DECOY.len());
        let messages = [
            (
                Method::PUT,
                "PUT /a HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
                "5\r\nhello\r\n1;a=b;c=\"d;e\"\r\n!\r\n0\r\nx-sum: 1\r\nx-more: 2\r\n\r\n",
            ),
            (Method::POST, &length_head, DECOY),
            (
                Method::POST,
                "POST /c HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                &chunked_decoy,
            ),
            (Method::GET, "GET /d HTTP/1.1\r\n\r\n", ""),
            (
                Method::POST,
                "POST /e HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
                "0\r\n\r\n",
            ),
            (
                Method::GET,
                "GET /f HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
                "0\r\n\r\n",
            ),
            (Method::GET, "GET /g HTTP/1.1\r\n\r\n", ""),
        ];
        use Framing::{Clear, Conflict, Lost};
        assert_eq!(
            framings_any_reads(&messages),
            [Clear, Clear, Clear, Clear, Clear, Conflict, Lost]
        );
        assert!(Framing::Conflict.closes_connection());
        assert!(Framing::Lost.closes_connection());
        assert!(!Framing::Clear.closes_connection());
    }

    #[test]
    fn a_chunked_body_it_cannot_follow_refuses_the_next_request() {
        for body in [
            "zz\r\nhello\r\n0\r\n\r\n",
            "5\r\nhelloXY0\r\n\r\n",
            "00000000000000005\r\nhello\r\n0\r\n\r\n",
            "0\r\nx-sum: 1\n\nGET /hidden HTTP/1.1\r\n\r\n",
        ] {
            let messages = [
                (
                    Method::POST,
                    "POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
                    body,
                ),
                (Method::GET, "GET /b HTTP/1.1\r\n\r\n", ""),
            ];
            assert_eq!(
                framings_any_reads(&messages),
                [Framing::Clear, Framing::Lost],
                "{body:?}"
            );
        }
    }

    #[test]
    fn chunked_bodies_read_whole_are_not_copied() {
        let tap = Tap::default();
        tap.state().observe(
            b"PUT /a HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5;x\r\nhello\r\n0\r\n\r\nGET /b",
        );
        assert_eq!(tap.inspect(&request(Method::PUT)), Framing::Clear);
        tap.state().observe(b" HTTP/1.1\r\n\r\n");
        assert_eq!(tap.state().pending, b"GET /b HTTP/1.1\r\n\r\n");
        assert_eq!(tap.state().scratch.capacity(), 0);
        assert_eq!(tap.inspect(&request(Method::GET)), Framing::Clear);
        assert!(tap.state().pending.is_empty());
    }

    #[test]
    fn disagreeing_with_hyper_fails_closed() {
        let tap = Tap::default();
        tap.state().observe(b"GET /a HTTP/1.1\r\n\r\n");
        assert_eq!(tap.inspect(&request(Method::POST)), Framing::Lost);
        let tap = Tap::default();
        tap.state().observe(b"GET /a HTTP/1.1\r\n");
        assert_eq!(tap.inspect(&request(Method::GET)), Framing::Lost);
        // hyper hands a request over while the tap is still in a body.
        let tap = Tap::default();
        tap.state()
            .observe(b"PUT /a HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n");
        assert_eq!(tap.inspect(&request(Method::PUT)), Framing::Clear);
        tap.state().observe(b"GET /b HTTP/1.1\r\n\r\n");
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
