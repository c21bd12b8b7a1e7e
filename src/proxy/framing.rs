//! How each request's body was framed, as the app wrote it.
//!
//! A request with both `Content-Length` and `Transfer-Encoding` is how
//! request smuggling starts (RFC 9112 §6.1, §11.2); sidekey refuses it, as
//! Envoy and nginx do. hyper 1 cannot tell the service: it frames such a
//! request as chunked, drops the `Content-Length` header (in either order)
//! and closes the connection after the response. So the connection is read
//! through a [`Tapped`] stream that reads each request head as it arrives
//! ([`super::head`]: where it ends by httparse's rules — the parser hyper
//! itself uses, with its default settings —, its method and its framing
//! headers), and when hyper hands a request over, [`Tap::inspect`] checks
//! that the tap's last complete head has the method hyper read and reports
//! its [`Framing`]. [`super::Dispatch::find`] refuses a conflict.
//!
//! To know where the following head starts, the tap follows each body
//! through the bytes hyper reads: a `Content-Length` body by counting its
//! bytes (hyper has checked the value), a chunked body chunk by chunk as
//! hyper's decoder reads it ([`super::chunked`]). Should the tap ever
//! disagree with hyper about a head or a body, or meet a chunked body it
//! cannot read as hyper does, the next request is refused and the
//! connection closed ([`Framing::Lost`]).
//!
//! Cost per connection and request: hyper holds the head in its read buffer
//! while it arrives; the tap keeps no copy, only a few dozen bytes of
//! scanner state, so a head trickling in up to `max_header_bytes` costs one
//! copy, not two. Head bytes are scanned once; body bytes are counted, not
//! copied; a chunked body costs one scan and parse per size line, and
//! copies only a size line split across reads and its trailer fields, into
//! a buffer reused for the connection's life. Bytes are kept only for
//! pipelined requests: what follows a complete head (and its body) until
//! hyper hands that head over, which is at most what hyper read with it.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use http::Request;
use tokio::io::{AsyncRead, ReadBuf};

use super::chunked::{Chunked, Lost, Progress};
use super::head::{Head, HeadScan, Scan};

/// Most bytes kept while waiting for hyper to hand a request over; hyper's
/// own read buffer is smaller, so reaching this means the tap lost track.
const MAX_PENDING: usize = 1 << 20;

/// Most bytes read at once while a head arrives: one less than hyper's
/// first read size, so that hyper does not raise it (see [`Tapped`]).
const HEAD_READ: usize = 8191;

/// Capacity of the pipelining buffer kept for reuse once it is empty.
const KEEP_PENDING: usize = 4096;

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
    /// The next request head, as far as it has arrived.
    head: HeadScan,
    /// A complete head that hyper has not handed over yet.
    ready: Option<Head>,
    /// Where the tap is in the body of the last complete head.
    body: Body,
    /// A chunk-size line split across reads, or a trailer section.
    scratch: Vec<u8>,
    /// Bytes after `ready`'s body (from `pending_from` on): the start of the
    /// next head, kept until hyper hands `ready` over. Only pipelined
    /// requests leave anything here.
    pending: Vec<u8>,
    pending_from: usize,
    /// Recording stopped (lost track, or a conflict ended the connection).
    stopped: bool,
}

impl State {
    fn observe(&mut self, mut bytes: &[u8]) {
        if self.stopped {
            return;
        }
        if self.pending.is_empty() {
            bytes = &bytes[self.follow(bytes)..];
            if bytes.is_empty() {
                return;
            }
        }
        if self.pending.len() - self.pending_from + bytes.len() > MAX_PENDING {
            self.stop();
            return;
        }
        self.pending.drain(..std::mem::take(&mut self.pending_from));
        self.pending.extend_from_slice(bytes);
    }

    /// Follow `bytes` through the current body and the heads after it, up
    /// to the end of a head's body while hyper has not handed that head
    /// over; how many bytes were followed (all of them once stopped).
    fn follow(&mut self, bytes: &[u8]) -> usize {
        let mut at = 0;
        while !self.stopped && at < bytes.len() {
            match self.body.skip(&bytes[at..], &mut self.scratch) {
                Ok(used) => at += used,
                // hyper reads this body or fails on it; the tap cannot tell
                // where the next head starts: it refuses that one.
                Err(Lost) => self.stop(),
            }
            if self.stopped || at == bytes.len() || self.ready.is_some() {
                break;
            }
            match self.head.scan(&bytes[at..]) {
                Scan::More => at = bytes.len(),
                Scan::Complete(used, head) => {
                    at += used;
                    self.body = match (head.content_length, head.transfer_encoding) {
                        // hyper closes the connection after this request.
                        (Some(_), true) => {
                            self.stop();
                            Body::Done
                        }
                        (None, true) => Body::Chunked(Chunked::default()),
                        (None | Some(0), false) => Body::Done,
                        (Some(length), false) => Body::Length(length),
                    };
                    self.ready = Some(head);
                }
            }
        }
        if self.stopped { bytes.len() } else { at }
    }

    /// The framing of the head hyper read as a `method` request: the tap's
    /// complete head, whose body it already follows.
    fn next_head(&mut self, method: &http::Method) -> Framing {
        let Some(head) = self.ready.take() else {
            // The head is incomplete, the tap is still in the previous
            // body, or it stopped before this head.
            return Framing::Lost;
        };
        if !head.method.is(method.as_str()) {
            return Framing::Lost;
        }
        if head.content_length.is_some() && head.transfer_encoding {
            return Framing::Conflict;
        }
        self.resume();
        Framing::Clear
    }

    /// Follow what was kept while hyper had not handed the last head over.
    fn resume(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending);
        let from = std::mem::take(&mut self.pending_from);
        let used = self.follow(&pending[from..]);
        if self.stopped {
            return;
        }
        if from + used < pending.len() {
            self.pending = pending;
            self.pending_from = from + used;
        } else if pending.capacity() <= KEEP_PENDING {
            pending.clear();
            self.pending = pending;
        }
    }

    /// Whether the next bytes read are (the rest of) a request head.
    fn reading_head(&self) -> bool {
        !self.stopped && self.ready.is_none() && matches!(self.body, Body::Done)
    }

    fn stop(&mut self) {
        self.stopped = true;
        self.pending = Vec::new();
        self.pending_from = 0;
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

/// The app's connection, read through a [`Tap`].
///
/// While a request head arrives, reads are at most [`HEAD_READ`] bytes,
/// through a buffer on the stack. hyper doubles the size it asks for after
/// every read that fills it, and its `BytesMut` then grows past
/// `max_header_bytes`: a 60 KiB head sent at once ended in a 112 KiB buffer,
/// through 8, 24 and 56 KiB ones. Reads a byte short of hyper's first size
/// keep it asking for 8 KiB, and the buffer doubles to no more than 64 KiB
/// (8, 16, 32, 64): a head never holds more than the next power of two of
/// `max_header_bytes`, whether the allocator hands out fresh or reused
/// memory. Body bytes are read as hyper asks.
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
        if buf.remaining() > HEAD_READ && this.tap.state().reading_head() {
            let mut staging = [MaybeUninit::<u8>::uninit(); HEAD_READ];
            let mut small = ReadBuf::uninit(&mut staging);
            let poll = Pin::new(&mut this.inner).poll_read(cx, &mut small);
            if let Poll::Ready(Ok(())) = &poll {
                let new = small.filled();
                buf.put_slice(new);
                if !new.is_empty() {
                    this.tap.state().observe(new);
                }
            }
            return poll;
        }
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

crate::write_through::write_through!(Tapped.inner);

#[cfg(test)]
mod tests {
    use super::{Framing, HEAD_READ, Tap};
    use http::{Method, Request};
    use std::pin::Pin;
    use tokio::io::{AsyncRead, ReadBuf};

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
        assert!(tap.state().pending.is_empty());
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

    /// A head trickling in up to `max_header_bytes` is already in hyper's
    /// read buffer; a second copy in the tap doubled what a slow-loris
    /// connection holds (bench/flood.sh: 145 KiB per connection for 60 KiB).
    #[test]
    fn a_head_arriving_is_not_copied() {
        let tap = Tap::default();
        let mut head = String::from("POST /a HTTP/1.1\r\ncontent-length: 5\r\n");
        while head.len() < 60 * 1024 {
            head.push_str("x-filler: 0123456789abcdef0123456789abcdef0123456789\r\n");
        }
        // hyper's reads of a head sent at once: 8, 16, 32 KiB, the rest.
        let mut rest = head.as_bytes();
        for read in [8192, 16384, 32768, usize::MAX] {
            let (now, later) = rest.split_at(read.min(rest.len()));
            tap.state().observe(now);
            rest = later;
        }
        let kept = |tap: &Tap| {
            let state = tap.state();
            state.pending.capacity() + state.scratch.capacity()
        };
        assert!(kept(&tap) <= 1024, "{} bytes kept", kept(&tap));
        tap.state().observe(b"\r\nhelloGET /b HTTP/1.1\r\n\r\n");
        assert_eq!(tap.inspect(&request(Method::POST)), Framing::Clear);
        assert_eq!(tap.inspect(&request(Method::GET)), Framing::Clear);
        assert!(kept(&tap) <= 1024, "{} bytes kept", kept(&tap));
    }

    /// Read `stream` through a tap into buffers of 64 KiB, as hyper's
    /// grown buffer offers, handing a request over when the tap has its
    /// head; the size of each read.
    async fn read_sizes(stream: &[u8], method: Method) -> Vec<usize> {
        let tap = Tap::default();
        let mut tapped = tap.wrap(stream);
        let mut storage = vec![0; 64 * 1024];
        let mut sizes = Vec::new();
        loop {
            let mut buf = ReadBuf::new(&mut storage);
            std::future::poll_fn(|cx| Pin::new(&mut tapped).poll_read(cx, &mut buf))
                .await
                .unwrap();
            match buf.filled().len() {
                0 => return sizes,
                n => sizes.push(n),
            }
            if tap.state().ready.is_some() {
                assert_eq!(tap.inspect(&request(method.clone())), Framing::Clear);
            }
        }
    }

    #[tokio::test]
    async fn heads_are_read_in_pieces_hyper_does_not_grow_on() {
        let mut head = String::from("PUT /a HTTP/1.1\r\ncontent-length: 100000\r\n");
        while head.len() < 60 * 1024 {
            head.push_str("x-filler: 0123456789abcdef0123456789abcdef0123456789\r\n");
        }
        head.push_str("\r\n");
        let stream = [head.as_bytes(), &[b'x'; 100_000]].concat();
        let sizes = read_sizes(&stream, Method::PUT).await;
        let head_reads = head.len().div_ceil(HEAD_READ);
        assert!(sizes.len() > head_reads, "{sizes:?}");
        assert!(
            sizes[..head_reads].iter().all(|n| *n == HEAD_READ),
            "{sizes:?}"
        );
        // The read that ends the head is short too; then the body as asked.
        assert_eq!(sizes[head_reads], 64 * 1024, "{sizes:?}");
        assert_eq!(sizes.len(), head_reads + 2, "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), stream.len());
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
