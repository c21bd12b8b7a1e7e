//! An in-process upstream API on `127.0.0.1:0` that records every request.
//!
//! HTTPS (rustls, certificates from [`TestPki`]) or plain HTTP; HTTP/1.1
//! only, or HTTP/1.1 + HTTP/2 (ALPN with TLS, prior knowledge without).
//! Request bodies are streamed and counted, never kept whole: a record holds
//! the length, a digest ([`BodyDigest`]) and the first [`BODY_HEAD_LIMIT`] bytes.
//! Answers come from a closure `Fn(&RecordedRequest) -> Reply` (default:
//! echo the request as JSON), optionally after a delay, and may be a large
//! body generated on the fly.
//!
//! Faults, for the proxy's error paths: a body that trickles, stalls or
//! fails part-way ([`Reply::trickle`]); keep-alive connections closed when
//! idle, either actively ([`UpstreamOpts::close_idle_after`]) or as the close
//! that crosses the next request on the wire
//! ([`UpstreamOpts::drop_requests_after_idle`]); HTTP/2 GOAWAY on demand
//! ([`Upstream::goaway`]); and byte-level HTTP/1.1 answers written step by
//! step ([`UpstreamOpts::raw`]: slow heads, resets mid-response).

use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::tls::TestPki;

/// How many leading bytes of each request body a record keeps.
pub const BODY_HEAD_LIMIT: usize = 64 * 1024;

/// Error type of the upstream's answer bodies (a [`BodyEnd::Fail`]).
pub type ReplyError = Box<dyn std::error::Error + Send + Sync>;

/// The body type the upstream answers with.
pub type ReplyBody = BoxBody<Bytes, ReplyError>;

/// What the upstream saw of one request.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// 0-based order of arrival (by the time the body was read).
    pub index: usize,
    /// 0-based index of the TCP connection it came on (see [`Upstream::connections`]).
    pub connection: usize,
    /// Method.
    pub method: Method,
    /// The request target as received (path and query for origin-form).
    pub uri: http::Uri,
    /// Path.
    pub path: String,
    /// Query string without `?`, if any.
    pub query: Option<String>,
    /// HTTP version of the request.
    pub version: Version,
    /// Every header as received.
    pub headers: HeaderMap,
    /// Request body length in bytes.
    pub body_len: u64,
    /// Digest of the whole body (see [`BodyDigest`]).
    pub body_digest: u64,
    /// The first [`BODY_HEAD_LIMIT`] bytes of the body.
    pub body_head: Bytes,
    /// Set when reading the body failed (client aborted, …).
    pub body_error: Option<String>,
    /// Trailers after the body, if any came.
    pub trailers: Option<HeaderMap>,
    /// Whether the TLS client presented a certificate.
    pub client_cert_presented: bool,
}

impl RecordedRequest {
    /// A header's value as text (the first one, if repeated).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of a header.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    /// Path and query as sent (`/a/b?c=d`).
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }

    /// The body head as text (lossy).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body_head).into_owned()
    }

    /// The echo answer's JSON: method, path, query, version, headers
    /// (name → value, or a list when repeated), body_len, body_digest,
    /// body (the head as lossy UTF-8, at most 4 KiB), and trailers (name → value).
    pub fn echo_json(&self) -> serde_json::Value {
        let mut headers = serde_json::Map::new();
        for name in self.headers.keys() {
            let values = self.header_all(name.as_str());
            let value = if values.len() == 1 {
                serde_json::Value::String(values.into_iter().next().unwrap_or_default())
            } else {
                serde_json::Value::from(values)
            };
            headers.insert(name.as_str().to_owned(), value);
        }
        let head = &self.body_head[..self.body_head.len().min(4096)];
        let trailers: serde_json::Map<String, serde_json::Value> = self
            .trailers
            .iter()
            .flatten()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), serde_json::Value::String(value))
            })
            .collect();
        serde_json::json!({
            "method": self.method.as_str(),
            "path": self.path,
            "query": self.query,
            "version": format!("{:?}", self.version),
            "headers": headers,
            "body_len": self.body_len,
            "body_digest": format!("{:016x}", self.body_digest),
            "body": String::from_utf8_lossy(head),
            "client_cert": self.client_cert_presented,
            "trailers": trailers,
        })
    }
}

/// A streaming digest with a byte count: FNV-1a's multiply applied to
/// 8-byte words (with an xor-shift so that every bit reaches the low ones),
/// the bytes past the last whole word kept for the next update, so chunking
/// does not change it. Word by word, an unoptimized test build digests
/// hundreds of MiB in a fraction of a second.
#[derive(Clone, Copy, Debug)]
pub struct BodyDigest {
    hash: u64,
    len: u64,
    /// Bytes not yet mixed in (fewer than 8).
    tail: [u8; 8],
    tail_len: usize,
}

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl BodyDigest {
    /// An empty digest.
    pub fn new() -> Self {
        BodyDigest {
            hash: 0xcbf2_9ce4_8422_2325,
            len: 0,
            tail: [0; 8],
            tail_len: 0,
        }
    }

    fn mix(&mut self, word: u64) {
        self.hash = (self.hash ^ word).wrapping_mul(FNV_PRIME);
        self.hash ^= self.hash >> 29;
    }

    /// Feed bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        let mut rest = bytes;
        if self.tail_len > 0 {
            let take = (8 - self.tail_len).min(rest.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&rest[..take]);
            self.tail_len += take;
            rest = &rest[take..];
            if self.tail_len < 8 {
                return;
            }
            self.mix(u64::from_le_bytes(self.tail));
            self.tail_len = 0;
        }
        let (words, tail) = rest.as_chunks::<8>();
        for word in words {
            self.mix(u64::from_le_bytes(*word));
        }
        self.tail[..tail.len()].copy_from_slice(tail);
        self.tail_len = tail.len();
    }

    /// The digest so far.
    pub fn digest(&self) -> u64 {
        let mut last = *self;
        let mut word = [0u8; 8];
        word[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
        // The length tells a short last word from one padded with zeros.
        last.mix(u64::from_le_bytes(word));
        last.mix(self.len);
        last.hash
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The digest of one slice.
    pub fn of(bytes: &[u8]) -> u64 {
        let mut d = Self::new();
        d.update(bytes);
        d.digest()
    }
}

impl Default for BodyDigest {
    fn default() -> Self {
        Self::new()
    }
}

/// The body of a [`Reply`].
#[derive(Clone, Debug)]
pub enum ReplyPayload {
    /// The request echoed as JSON ([`RecordedRequest::echo_json`]).
    Echo,
    /// Fixed bytes.
    Bytes(Bytes),
    /// `len` bytes of [`pattern_byte`] generated on the fly; with
    /// `content_length` the length is announced, else it is chunked.
    Generated {
        /// Total bytes.
        len: u64,
        /// Announce `content-length`.
        content_length: bool,
    },
    /// `chunks` chunks of `chunk_len` pattern bytes, the first at once and
    /// each further one `interval` later; then, another `interval` later,
    /// `end`. With `length` that length is announced (`content-length`),
    /// even when it is not what will be sent.
    Trickle {
        /// Chunks to send.
        chunks: usize,
        /// Bytes per chunk.
        chunk_len: usize,
        /// Pause before each chunk after the first, and before `end`.
        interval: Duration,
        /// What happens after the last chunk.
        end: BodyEnd,
        /// Announced length, if any.
        length: Option<u64>,
    },
}

/// How a [`ReplyPayload::Trickle`] body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyEnd {
    /// It ends normally.
    Finish,
    /// It never ends and never sends another byte (the connection stays open).
    Stall,
    /// It fails: HTTP/1.1 closes the connection mid-body, HTTP/2 resets the
    /// stream.
    Fail,
}

/// An answer: status, headers, body and an optional delay before the head.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Extra headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body.
    pub payload: ReplyPayload,
    /// Wait this long before answering (for timeout tests).
    pub delay: Option<Duration>,
    /// Wait until this gate opens before answering.
    pub gate: Option<Gate>,
    /// Trailers sent after the body (none: no trailers).
    pub trailers: Vec<(HeaderName, HeaderValue)>,
    /// No answer: the HTTP/2 stream is reset with `REFUSED_STREAM` (on
    /// HTTP/1.1 the connection is closed).
    pub refuse: bool,
}

/// Holds the answers given it ([`Reply::until`]) until the test opens it:
/// a request stays in flight exactly as long as a test needs, however slow
/// the machine.
#[derive(Clone, Debug)]
pub struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Gate {
    /// A closed gate.
    pub fn new() -> Gate {
        Gate(Arc::new(tokio::sync::watch::Sender::new(false)))
    }

    /// Let every answer waiting on it, and every later one, go.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn passed(&self) {
        let mut open = self.0.subscribe();
        // The sender lives as long as `self`: this cannot fail.
        let _ = open.wait_for(|open| *open).await;
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

impl Reply {
    /// 200 with the request echoed as JSON.
    pub fn echo() -> Reply {
        Reply {
            status: StatusCode::OK,
            headers: Vec::new(),
            payload: ReplyPayload::Echo,
            delay: None,
            gate: None,
            trailers: Vec::new(),
            refuse: false,
        }
    }

    /// No answer: an HTTP/2 stream refused (`REFUSED_STREAM`, RFC 9113
    /// §8.7: the request was not processed), after its body was read.
    pub fn refused() -> Reply {
        Reply {
            refuse: true,
            ..Reply::echo()
        }
    }

    /// A status with an empty body.
    pub fn status(status: u16) -> Reply {
        Reply::bytes(status, Bytes::new())
    }

    /// A status with a fixed body.
    pub fn bytes(status: u16, body: impl Into<Bytes>) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).expect("status"),
            headers: Vec::new(),
            payload: ReplyPayload::Bytes(body.into()),
            delay: None,
            gate: None,
            trailers: Vec::new(),
            refuse: false,
        }
    }

    /// A JSON body (`content-type: application/json`).
    pub fn json(status: u16, value: serde_json::Value) -> Reply {
        Reply::bytes(status, value.to_string()).header("content-type", "application/json")
    }

    /// 200 with `len` generated bytes and a `content-length`.
    pub fn generated(len: u64) -> Reply {
        Reply {
            status: StatusCode::OK,
            headers: vec![(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )],
            payload: ReplyPayload::Generated {
                len,
                content_length: true,
            },
            delay: None,
            gate: None,
            trailers: Vec::new(),
            refuse: false,
        }
    }

    /// 200 with `len` generated bytes, chunked (no `content-length`).
    pub fn generated_chunked(len: u64) -> Reply {
        let mut reply = Reply::generated(len);
        reply.payload = ReplyPayload::Generated {
            len,
            content_length: false,
        };
        reply
    }

    /// Add a header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        ));
        self
    }

    /// Send a trailer field after the body.
    pub fn trailer(mut self, name: &str, value: &str) -> Reply {
        self.trailers.push((
            HeaderName::from_bytes(name.as_bytes()).expect("trailer name"),
            HeaderValue::from_str(value).expect("trailer value"),
        ));
        self
    }

    /// Wait before answering.
    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = Some(delay);
        self
    }

    /// Answer only once `gate` is open.
    pub fn until(mut self, gate: &Gate) -> Reply {
        self.gate = Some(gate.clone());
        self
    }

    /// 200 with a body of `chunks` chunks of `chunk_len` bytes, one every
    /// `interval` (the first at once), chunked; it then ends normally
    /// (see [`Reply::then_stall`], [`Reply::then_fail`], [`Reply::announce`]).
    pub fn trickle(chunks: usize, chunk_len: usize, interval: Duration) -> Reply {
        Reply {
            status: StatusCode::OK,
            headers: vec![(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )],
            payload: ReplyPayload::Trickle {
                chunks,
                chunk_len,
                interval,
                end: BodyEnd::Finish,
                length: None,
            },
            delay: None,
            gate: None,
            trailers: Vec::new(),
            refuse: false,
        }
    }

    /// A trickled body that, after its chunks, never ends.
    pub fn then_stall(self) -> Reply {
        self.trickle_end(BodyEnd::Stall)
    }

    /// A trickled body that, after its chunks, fails.
    pub fn then_fail(self) -> Reply {
        self.trickle_end(BodyEnd::Fail)
    }

    /// Announce `length` bytes (`content-length`) for a trickled body,
    /// whatever it really sends.
    pub fn announce(mut self, length: u64) -> Reply {
        if let ReplyPayload::Trickle { length: l, .. } = &mut self.payload {
            *l = Some(length);
        }
        self
    }

    fn trickle_end(mut self, new_end: BodyEnd) -> Reply {
        if let ReplyPayload::Trickle { end, .. } = &mut self.payload {
            *end = new_end;
        }
        self
    }
}

/// Byte `i` of a generated body: `i % 251`.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// The digest of a generated body of `len` bytes.
pub fn generated_digest(len: u64) -> u64 {
    let chunk = pattern_chunk();
    let mut d = BodyDigest::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        d.update(&chunk[..n]);
        left -= n as u64;
    }
    d.digest()
}

/// 256 repetitions of the 251-byte pattern, so consecutive chunks line up
/// (made once: every generated body shares it).
fn pattern_chunk() -> Bytes {
    static CHUNK: OnceLock<Bytes> = OnceLock::new();
    CHUNK
        .get_or_init(|| {
            (0..251u64 * 256)
                .map(pattern_byte)
                .collect::<Vec<u8>>()
                .into()
        })
        .clone()
}

/// A body of `remaining` pattern bytes produced chunk by chunk.
pub struct GeneratedBody {
    chunk: Bytes,
    remaining: u64,
    exact: bool,
}

impl GeneratedBody {
    /// `len` bytes; `exact` announces the length (content-length).
    pub fn new(len: u64, exact: bool) -> Self {
        GeneratedBody {
            chunk: pattern_chunk(),
            remaining: len,
            exact,
        }
    }
}

impl Body for GeneratedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = this.remaining.min(this.chunk.len() as u64) as usize;
        this.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(this.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

/// The body of a [`ReplyPayload::Trickle`] answer.
pub struct TrickleBody {
    chunk: Bytes,
    left: usize,
    interval: Duration,
    end: BodyEnd,
    length: Option<u64>,
    /// Set while waiting for the next chunk (or the end).
    pause: Option<Pin<Box<Sleep>>>,
}

impl TrickleBody {
    /// `chunks` chunks of `chunk_len` pattern bytes, one every `interval`
    /// (the first at once), then `end`; `length` is announced if given.
    pub fn new(
        chunks: usize,
        chunk_len: usize,
        interval: Duration,
        end: BodyEnd,
        length: Option<u64>,
    ) -> Self {
        let chunk: Vec<u8> = (0..chunk_len as u64).map(pattern_byte).collect();
        TrickleBody {
            chunk: Bytes::from(chunk),
            left: chunks,
            interval,
            end,
            length,
            pause: None,
        }
    }
}

impl Body for TrickleBody {
    type Data = Bytes;
    type Error = ReplyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReplyError>>> {
        let this = self.get_mut();
        if let Some(pause) = this.pause.as_mut() {
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.pause = None;
        }
        if this.left > 0 {
            this.left -= 1;
            if this.left > 0 || this.end != BodyEnd::Finish {
                this.pause = Some(Box::pin(tokio::time::sleep(this.interval)));
            }
            return Poll::Ready(Some(Ok(Frame::data(this.chunk.clone()))));
        }
        match this.end {
            BodyEnd::Finish => Poll::Ready(None),
            // Nothing will wake this body again: it stays open without a byte.
            BodyEnd::Stall => Poll::Pending,
            BodyEnd::Fail => Poll::Ready(Some(Err("test upstream: body failed on purpose".into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0 && self.end == BodyEnd::Finish && self.pause.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(length) => SizeHint::with_exact(length),
            None => SizeHint::default(),
        }
    }
}

/// One step of a byte-level HTTP/1.1 answer ([`UpstreamOpts::raw`]).
#[derive(Clone, Debug)]
pub enum RawStep {
    /// Write these bytes and flush.
    Write(Bytes),
    /// Wait.
    Sleep(Duration),
    /// Close the connection with a TCP reset (SO_LINGER 0).
    Reset,
    /// Close it cleanly: TLS `close_notify` (over TLS), then FIN.
    Shutdown,
    /// Close it with a FIN but no TLS `close_notify`: over TLS, a cut an
    /// attacker or a crashed server could make.
    Abandon,
}

impl RawStep {
    /// Write text.
    pub fn text(text: &str) -> RawStep {
        RawStep::Write(Bytes::copy_from_slice(text.as_bytes()))
    }

    /// A response head sent one line every `interval`: the status line at
    /// once, then `headers` lines, then the blank line.
    pub fn slow_head(status_line: &str, headers: usize, interval: Duration) -> Vec<RawStep> {
        let mut steps = vec![RawStep::text(&format!("{status_line}\r\n"))];
        for i in 0..headers {
            steps.push(RawStep::Sleep(interval));
            steps.push(RawStep::text(&format!("x-slow-{i}: {i}\r\n")));
        }
        steps.push(RawStep::Sleep(interval));
        steps.push(RawStep::text("content-length: 0\r\n\r\n"));
        steps
    }
}

type Responder = Arc<dyn Fn(&RecordedRequest) -> Reply + Send + Sync>;

type RawResponder = Arc<dyn Fn(&RecordedRequest) -> Vec<RawStep> + Send + Sync>;

/// Whether and how the upstream asks for a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate requested.
    None,
    /// Requested and verified when given, not required.
    Optional,
    /// Required: a handshake without one fails.
    Required,
}

/// How to start an [`Upstream`].
#[derive(Clone)]
pub struct UpstreamOpts {
    tls: Option<Arc<TestPki>>,
    http2: bool,
    client_auth: ClientAuth,
    delay: Option<Duration>,
    expect_version: Option<Version>,
    respond: Responder,
    close_idle_after: Option<Duration>,
    drop_requests_after_idle: Option<Duration>,
    raw: Option<RawResponder>,
    raw_before_body: bool,
    echo_stream: bool,
    max_concurrent_streams: Option<u32>,
    stream_window: Option<u32>,
    hold_bodies: Option<(String, Gate)>,
}

impl UpstreamOpts {
    /// Plain HTTP/1.1, echo.
    pub fn plain() -> Self {
        UpstreamOpts {
            tls: None,
            http2: false,
            client_auth: ClientAuth::None,
            delay: None,
            expect_version: None,
            respond: Arc::new(|_| Reply::echo()),
            close_idle_after: None,
            drop_requests_after_idle: None,
            raw: None,
            raw_before_body: false,
            echo_stream: false,
            max_concurrent_streams: None,
            stream_window: None,
            hold_bodies: None,
        }
    }

    /// HTTPS with the server certificate of `pki`, HTTP/1.1, echo.
    pub fn tls(pki: &Arc<TestPki>) -> Self {
        UpstreamOpts {
            tls: Some(pki.clone()),
            ..Self::plain()
        }
    }

    /// Also serve HTTP/2 (ALPN `h2` with TLS, prior knowledge without).
    pub fn http2(mut self) -> Self {
        self.http2 = true;
        self
    }

    /// Read no byte of the body of a request whose path starts with
    /// `prefix` until `gate` opens (a server slow to take an upload): its
    /// flow-control window stays shut once the client filled it.
    pub fn hold_bodies(mut self, prefix: &str, gate: Gate) -> Self {
        self.hold_bodies = Some((prefix.to_owned(), gate));
        self
    }

    /// HTTP/2: a flow-control window of `bytes` per stream, and one of
    /// 16 MiB for the connection, as gRPC servers have: a request body the
    /// server does not read holds up its own stream only.
    pub fn stream_window(mut self, bytes: u32) -> Self {
        self.stream_window = Some(bytes);
        self
    }

    /// HTTP/2: advertise `SETTINGS_MAX_CONCURRENT_STREAMS = n`; a stream
    /// beyond it is refused (`REFUSED_STREAM`).
    pub fn max_concurrent_streams(mut self, n: u32) -> Self {
        self.max_concurrent_streams = Some(n);
        self
    }

    /// Ask for a client certificate (TLS only).
    pub fn client_auth(mut self, mode: ClientAuth) -> Self {
        self.client_auth = mode;
        self
    }

    /// Require a client certificate signed by the test CA.
    pub fn require_client_cert(self) -> Self {
        self.client_auth(ClientAuth::Required)
    }

    /// Wait this long before every answer (a reply's own delay wins).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Answer 505 to any request whose version differs (e.g. `HTTP_2`).
    pub fn expect_version(mut self, version: Version) -> Self {
        self.expect_version = Some(version);
        self
    }

    /// Decide each answer from the recorded request.
    pub fn respond(
        mut self,
        f: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
    ) -> Self {
        self.respond = Arc::new(f);
        self
    }

    /// Answer every request the same way.
    pub fn always(self, reply: Reply) -> Self {
        self.respond(move |_| reply.clone())
    }

    /// Answer every request with `len` generated bytes (content-length set).
    pub fn stream_body(self, len: u64) -> Self {
        self.always(Reply::generated(len))
    }

    /// Close an HTTP/1.1 keep-alive connection once it has been idle (no
    /// request in progress) for `idle`, like a server's keep-alive timeout.
    pub fn close_idle_after(mut self, idle: Duration) -> Self {
        self.close_idle_after = Some(idle);
        self
    }

    /// A request that arrives on a connection idle for at least `idle`
    /// (after an earlier request on it) is not answered: the connection is
    /// closed at once, as when a server's keep-alive close crosses the
    /// client's next request on the wire. Counted in
    /// [`Upstream::dropped_requests`], not recorded as a request.
    pub fn drop_requests_after_idle(mut self, idle: Duration) -> Self {
        self.drop_requests_after_idle = Some(idle);
        self
    }

    /// Answer every request at once, before its body has arrived, with
    /// the request body streamed back frame by frame (trailers too): a
    /// full-duplex echo. The request is recorded as its head arrives
    /// (`body_len` 0).
    pub fn echo_stream(mut self) -> Self {
        self.echo_stream = true;
        self
    }

    /// Answer every request (HTTP/1.1 only) by running `steps` on the
    /// connection byte by byte; the request is recorded (head and a
    /// `content-length` body). Unless a step closes it, the connection then
    /// waits for the next request.
    pub fn raw(self, steps: Vec<RawStep>) -> Self {
        self.raw_by(move |_| steps.clone())
    }

    /// Run the [`UpstreamOpts::raw`] steps as soon as a request's head has
    /// arrived, before reading its body (a server refusing an upload early:
    /// 401, 413). Whatever follows the head is then read as the next request.
    pub fn raw_before_body(mut self) -> Self {
        self.raw_before_body = true;
        self
    }

    /// [`UpstreamOpts::raw`] with the steps chosen per request: a misframed
    /// answer to one request and a correct one to the next on the same
    /// connection.
    pub fn raw_by(
        mut self,
        f: impl Fn(&RecordedRequest) -> Vec<RawStep> + Send + Sync + 'static,
    ) -> Self {
        self.raw = Some(Arc::new(f));
        self
    }
}

struct State {
    requests: Mutex<Vec<RecordedRequest>>,
    connections: AtomicUsize,
    handshake_failures: AtomicUsize,
    dropped_requests: AtomicUsize,
    idle_closes: AtomicUsize,
    abandoned_answers: AtomicUsize,
    answering: AtomicUsize,
    changed: Notify,
    goaway: Notify,
    opts: UpstreamOpts,
}

/// What one connection's requests share: whether one is in progress and
/// since when the connection has been idle.
struct ConnState {
    index: usize,
    client_cert: bool,
    served: AtomicUsize,
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl ConnState {
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(self.idle_since.lock().expect("lock").elapsed())
    }
}

/// The service's refusal to answer: hyper closes an HTTP/1.1 connection,
/// and resets an HTTP/2 stream with the `h2` reason found among the
/// error's sources (`INTERNAL_ERROR` without one).
#[derive(Debug)]
enum DroppedRequest {
    /// [`UpstreamOpts::drop_requests_after_idle`].
    Idle,
    /// [`Reply::refused`].
    Refused(h2::Error),
}

impl std::fmt::Display for DroppedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DroppedRequest::Idle => f.write_str("request dropped with its idle connection"),
            DroppedRequest::Refused(_) => f.write_str("request refused"),
        }
    }
}

impl std::error::Error for DroppedRequest {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DroppedRequest::Idle => None,
            DroppedRequest::Refused(reason) => Some(reason),
        }
    }
}

/// A running upstream. Dropping it stops the accept loop and every connection.
pub struct Upstream {
    addr: SocketAddr,
    tls: bool,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Bind `127.0.0.1:0` and start serving.
    pub async fn start(opts: UpstreamOpts) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Self::start_on(listener, opts)
    }

    /// Serve on a listener the test already bound.
    pub fn start_on(listener: TcpListener, opts: UpstreamOpts) -> Upstream {
        let addr = listener.local_addr().expect("local addr");
        let acceptor = opts.tls.as_ref().map(|pki| {
            let alpn: &[&[u8]] = if opts.http2 {
                &[b"h2", b"http/1.1"]
            } else {
                &[b"http/1.1"]
            };
            let config = match opts.client_auth {
                ClientAuth::None => pki.server_config(alpn),
                ClientAuth::Optional => pki.server_config_mtls(alpn, false),
                ClientAuth::Required => pki.server_config_mtls(alpn, true),
            };
            TlsAcceptor::from(Arc::new(config))
        });
        let tls = acceptor.is_some();
        let state = Arc::new(State {
            requests: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            handshake_failures: AtomicUsize::new(0),
            dropped_requests: AtomicUsize::new(0),
            idle_closes: AtomicUsize::new(0),
            abandoned_answers: AtomicUsize::new(0),
            answering: AtomicUsize::new(0),
            changed: Notify::new(),
            goaway: Notify::new(),
            opts,
        });
        let task = tokio::spawn(accept_loop(listener, acceptor, state.clone()));
        Upstream {
            addr,
            tls,
            state,
            task,
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT` or `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// `https://localhost:PORT` (the certificate covers both names).
    pub fn localhost_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://localhost:{}", self.addr.port())
    }

    /// Every request so far, in order of arrival.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// The path of every request so far, in order of arrival.
    pub fn paths(&self) -> Vec<String> {
        let requests = self.state.requests.lock().expect("lock");
        requests.iter().map(|r| r.path.clone()).collect()
    }

    /// The number of requests so far.
    pub fn request_count(&self) -> usize {
        self.state.requests.lock().expect("lock").len()
    }

    /// The latest request.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.state.requests.lock().expect("lock").last().cloned()
    }

    /// Accepted TCP connections so far (including failed TLS handshakes).
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed (untrusted CA, missing client cert, …).
    pub fn handshake_failures(&self) -> usize {
        self.state.handshake_failures.load(Ordering::SeqCst)
    }

    /// Requests dropped with their idle connection
    /// ([`UpstreamOpts::drop_requests_after_idle`]).
    pub fn dropped_requests(&self) -> usize {
        self.state.dropped_requests.load(Ordering::SeqCst)
    }

    /// Connections closed for being idle ([`UpstreamOpts::close_idle_after`]).
    pub fn idle_closes(&self) -> usize {
        self.state.idle_closes.load(Ordering::SeqCst)
    }

    /// Answer bodies dropped before their end: the client closed the
    /// HTTP/1.1 connection or reset the HTTP/2 stream mid-body.
    pub fn abandoned_answers(&self) -> usize {
        self.state.abandoned_answers.load(Ordering::SeqCst)
    }

    /// Requests whose answer head is being made right now (reading the
    /// body, waiting on a delay or [`Gate`]); a request the client cancels
    /// (HTTP/2 reset, HTTP/1.1 connection closed) leaves this count.
    pub fn answering(&self) -> usize {
        self.state.answering.load(Ordering::SeqCst)
    }

    /// Wait until [`Upstream::answering`] is `n`; panics after 10 s.
    pub async fn wait_for_answering(&self, n: usize) {
        self.wait_until(|s| s.answering.load(Ordering::SeqCst) == n)
            .await
            .unwrap_or_else(|| {
                panic!(
                    "upstream: {} requests being answered after 10s, not {n}",
                    self.answering()
                )
            });
    }

    /// Wait until at least `n` answer bodies were abandoned mid-body
    /// ([`Upstream::abandoned_answers`]); panics after 10 s.
    pub async fn wait_for_abandoned_answers(&self, n: usize) {
        self.wait_until(|s| s.abandoned_answers.load(Ordering::SeqCst) >= n)
            .await
            .unwrap_or_else(|| panic!("upstream: fewer than {n} abandoned answers after 10s"));
    }

    /// Start a graceful shutdown of every open connection: HTTP/2 sends
    /// GOAWAY and finishes the streams in progress; HTTP/1.1 closes after
    /// the response in progress. New connections are still accepted.
    pub fn goaway(&self) {
        self.state.goaway.notify_waiters();
    }

    /// Wait until at least `n` requests were recorded (panics after 10 s).
    pub async fn wait_for_requests(&self, n: usize) -> Vec<RecordedRequest> {
        self.wait_until(|s| s.requests.lock().expect("lock").len() >= n)
            .await
            .unwrap_or_else(|| panic!("upstream: fewer than {n} requests after 10s"));
        self.requests()
    }

    /// Wait until a request for which `matches` holds has arrived (it is
    /// recorded before any delay of its answer); panics after 10 s.
    pub async fn wait_for_request_matching(
        &self,
        matches: impl Fn(&RecordedRequest) -> bool,
    ) -> RecordedRequest {
        self.wait_until(|s| s.requests.lock().expect("lock").iter().any(&matches))
            .await
            .unwrap_or_else(|| panic!("upstream: no matching request after 10s"));
        self.requests()
            .into_iter()
            .find(|r| matches(r))
            .expect("found above")
    }

    /// Wait until at least `n` connections were accepted (panics after 10 s).
    pub async fn wait_for_connections(&self, n: usize) {
        self.wait_until(|s| s.connections.load(Ordering::SeqCst) >= n)
            .await
            .unwrap_or_else(|| panic!("upstream: fewer than {n} connections after 10s"));
    }

    async fn wait_until(&self, done: impl Fn(&State) -> bool) -> Option<()> {
        let wait = async {
            loop {
                let notified = self.state.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if done(&self.state) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .ok()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address on loopback where nothing listens (bound, then released), for
/// a test to listen on later or to find closed. Its port lies below the
/// kernel's ephemeral range: with tests running side by side, a port from
/// `bind(:0)` was sometimes taken, before the test listened on it, by the
/// local end of another test's outgoing connection (which come from that
/// range). Ports are handed out once per process, from an offset of its
/// own.
pub fn closed_port() -> SocketAddr {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let first = ephemeral_ports_from().unwrap_or(32768);
    let low = 10_000;
    let count = usize::from(first.saturating_sub(low).max(1));
    let offset = std::process::id() as usize * 7919;
    for _ in 0..count {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = low + ((offset + n) % count) as u16;
        if let Ok(listener) = StdTcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().expect("local addr");
        }
    }
    panic!("no free port in {low}..{first}");
}

/// The first port of the kernel's ephemeral range, where it has one.
fn ephemeral_ports_from() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

async fn accept_loop(listener: TcpListener, acceptor: Option<TlsAcceptor>, state: Arc<State>) {
    // Connections live in this set, so aborting the loop closes them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let conn_index = state.connections.fetch_add(1, Ordering::SeqCst);
                state.changed.notify_waiters();
                conns.spawn(serve_conn(tcp, conn_index, acceptor.clone(), state.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_conn(
    tcp: TcpStream,
    conn_index: usize,
    acceptor: Option<TlsAcceptor>,
    state: Arc<State>,
) {
    let _ = tcp.set_nodelay(true);
    let mut conn = ConnState {
        index: conn_index,
        client_cert: false,
        served: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        idle_since: Mutex::new(Instant::now()),
    };
    match acceptor {
        Some(acceptor) => {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(_) => {
                    state.handshake_failures.fetch_add(1, Ordering::SeqCst);
                    state.changed.notify_waiters();
                    return;
                }
            };
            let (_, session) = tls.get_ref();
            conn.client_cert = session
                .peer_certificates()
                .is_some_and(|certs| !certs.is_empty());
            // ALPN decided the protocol; without ALPN it is HTTP/1.1.
            let h2 = session.alpn_protocol() == Some(b"h2".as_slice());
            match state.opts.raw.clone() {
                Some(steps) if !h2 => serve_raw(tls, steps, Arc::new(conn), state).await,
                _ => serve_http(TokioIo::new(tls), Some(h2), Arc::new(conn), state).await,
            }
        }
        // Plain: HTTP/2 only by prior knowledge, and only when enabled.
        None => match state.opts.raw.clone() {
            Some(steps) => serve_raw(tcp, steps, Arc::new(conn), state).await,
            None => serve_http(TokioIo::new(tcp), None, Arc::new(conn), state).await,
        },
    }
}

/// Serve one connection with hyper: `alpn_h2` is what TLS negotiated, `None`
/// for plain connections (HTTP/2 by prior knowledge when enabled).
async fn serve_http<I>(io: I, alpn_h2: Option<bool>, conn: Arc<ConnState>, state: Arc<State>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if let Some(n) = state.opts.max_concurrent_streams {
        builder.http2().max_concurrent_streams(n);
    }
    if let Some(bytes) = state.opts.stream_window {
        builder
            .http2()
            .initial_stream_window_size(bytes)
            .initial_connection_window_size(16 << 20);
    }
    let builder = match alpn_h2 {
        Some(true) => builder.http2_only(),
        None if state.opts.http2 => builder,
        _ => builder.http1_only(),
    };
    let svc = {
        let (state, conn) = (state.clone(), conn.clone());
        service_fn(move |req| handle(req, state.clone(), conn.clone()))
    };
    let serving = builder.serve_connection(io, svc);
    tokio::pin!(serving);
    let goaway = state.goaway.notified();
    tokio::pin!(goaway);
    goaway.as_mut().enable();
    let mut shutting_down = false;
    loop {
        tokio::select! {
            _ = serving.as_mut() => return,
            _ = goaway.as_mut(), if !shutting_down => {
                shutting_down = true;
                serving.as_mut().graceful_shutdown();
            }
            _ = idle_close(&conn, state.opts.close_idle_after), if !shutting_down => {
                // Dropping the connection closes the socket.
                state.idle_closes.fetch_add(1, Ordering::SeqCst);
                state.changed.notify_waiters();
                return;
            }
        }
    }
}

/// Resolves once the connection has been idle for `idle` (never without it).
async fn idle_close(conn: &ConnState, idle: Option<Duration>) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    loop {
        match conn.idle_for() {
            Some(idle_for) if idle_for >= idle => return,
            Some(idle_for) => tokio::time::sleep(idle - idle_for).await,
            None => tokio::time::sleep(idle).await,
        }
    }
}

/// A connection [`serve_raw`] can reset: the TCP stream under it.
trait RawIo: AsyncRead + AsyncWrite + Unpin + Send {
    fn tcp(&self) -> &TcpStream;
}

impl RawIo for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl RawIo for TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Serve one HTTP/1.1 connection byte by byte: read a request, run `steps`.
async fn serve_raw<S: RawIo>(
    mut io: S,
    steps: RawResponder,
    conn: Arc<ConnState>,
    state: Arc<State>,
) {
    let mut buf = BytesMut::with_capacity(8192);
    while let Some(request) = read_raw_request(&mut io, &mut buf, &conn, &state).await {
        for step in steps(&request) {
            match step {
                RawStep::Write(bytes) => {
                    if io.write_all(&bytes).await.is_err() || io.flush().await.is_err() {
                        return;
                    }
                }
                RawStep::Sleep(pause) => tokio::time::sleep(pause).await,
                RawStep::Reset => {
                    let _ = io.tcp().set_zero_linger();
                    return;
                }
                RawStep::Shutdown => {
                    let _ = io.shutdown().await;
                    return;
                }
                RawStep::Abandon => return,
            }
        }
    }
}

/// Read one request head (and a `content-length` body) and record it;
/// `None` when the connection ended first.
async fn read_raw_request<S: RawIo>(
    io: &mut S,
    buf: &mut BytesMut,
    conn: &ConnState,
    state: &State,
) -> Option<RecordedRequest> {
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    };
    let head = buf.split_to(head_end);
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method =
        Method::from_bytes(request_line.next().unwrap_or("GET").as_bytes()).unwrap_or(Method::GET);
    let uri: http::Uri = request_line
        .next()
        .unwrap_or("/")
        .parse()
        .unwrap_or_default();
    let mut headers = HeaderMap::new();
    for line in lines.filter(|line| !line.is_empty()) {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_str(value.trim()),
            )
        {
            headers.append(name, value);
        }
    }
    let length: usize = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .filter(|_| !state.opts.raw_before_body)
        .unwrap_or(0);
    while buf.len() < length {
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    let body = buf.split_to(length).freeze();
    conn.served.fetch_add(1, Ordering::SeqCst);
    let request = {
        let mut requests = state.requests.lock().expect("lock");
        let index = requests.len();
        let request = RecordedRequest {
            index,
            connection: conn.index,
            method,
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            uri,
            version: Version::HTTP_11,
            headers,
            body_len: body.len() as u64,
            body_digest: BodyDigest::of(&body),
            body_head: body.slice(..body.len().min(BODY_HEAD_LIMIT)),
            body_error: None,
            trailers: None,
            client_cert_presented: conn.client_cert,
        };
        requests.push(request.clone());
        request
    };
    state.changed.notify_waiters();
    Some(request)
}

/// One request on a hyper connection: maybe dropped with its idle
/// connection, otherwise recorded and answered.
async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
    conn: Arc<ConnState>,
) -> Result<Response<ReplyBody>, DroppedRequest> {
    let earlier = conn.served.fetch_add(1, Ordering::SeqCst);
    if let Some(idle) = state.opts.drop_requests_after_idle
        && earlier > 0
        && conn.idle_for().is_some_and(|idle_for| idle_for >= idle)
    {
        state.dropped_requests.fetch_add(1, Ordering::SeqCst);
        state.changed.notify_waiters();
        return Err(DroppedRequest::Idle);
    }
    if state.opts.echo_stream {
        return Ok(echo_stream(req, &state, &conn));
    }
    conn.in_flight.fetch_add(1, Ordering::SeqCst);
    let answering = Answering::start(&state);
    let response = answer(req, &state, &conn).await;
    drop(answering);
    *conn.idle_since.lock().expect("lock") = Instant::now();
    conn.in_flight.fetch_sub(1, Ordering::SeqCst);
    let response = response.map(|response| {
        let state = state.clone();
        response.map(move |body| Abandonable::new(body, state).boxed())
    });
    response.ok_or(DroppedRequest::Refused(h2::Reason::REFUSED_STREAM.into()))
}

/// One request whose answer is being made (its head not yet given to
/// hyper), counted in [`Upstream::answering`] until it is made or dropped:
/// hyper drops it when the client cancels the request.
struct Answering(Arc<State>);

impl Answering {
    fn start(state: &Arc<State>) -> Answering {
        state.answering.fetch_add(1, Ordering::SeqCst);
        state.changed.notify_waiters();
        Answering(state.clone())
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.answering.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// An answer body that counts itself in [`Upstream::abandoned_answers`]
/// when dropped before its end.
struct Abandonable {
    body: ReplyBody,
    ended: bool,
    state: Arc<State>,
}

impl Abandonable {
    fn new(body: ReplyBody, state: Arc<State>) -> Self {
        Abandonable {
            body,
            ended: false,
            state,
        }
    }
}

impl Body for Abandonable {
    type Data = Bytes;
    type Error = ReplyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReplyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Abandonable {
    fn drop(&mut self) {
        if !self.ended && !self.body.is_end_stream() {
            self.state.abandoned_answers.fetch_add(1, Ordering::SeqCst);
            self.state.changed.notify_waiters();
        }
    }
}

/// [`UpstreamOpts::echo_stream`]: record the head, stream the body back.
fn echo_stream(req: Request<Incoming>, state: &State, conn: &ConnState) -> Response<ReplyBody> {
    let (parts, body) = req.into_parts();
    {
        let mut requests = state.requests.lock().expect("lock");
        let index = requests.len();
        requests.push(RecordedRequest {
            index,
            connection: conn.index,
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            body_len: 0,
            body_digest: BodyDigest::of(b""),
            body_head: Bytes::new(),
            body_error: None,
            trailers: None,
            client_cert_presented: conn.client_cert,
        });
    }
    state.changed.notify_waiters();
    Response::new(body.map_err(ReplyError::from).boxed())
}

/// The answer to `req`; `None` for a [`Reply::refused`] one.
async fn answer(
    req: Request<Incoming>,
    state: &State,
    conn: &ConnState,
) -> Option<Response<ReplyBody>> {
    let (parts, mut body) = req.into_parts();
    if let Some((prefix, gate)) = &state.opts.hold_bodies
        && parts.uri.path().starts_with(prefix.as_str())
    {
        gate.passed().await;
    }
    let mut digest = BodyDigest::new();
    let mut head = BytesMut::new();
    let mut body_error = None;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    digest.update(data);
                    let room = BODY_HEAD_LIMIT.saturating_sub(head.len());
                    head.extend_from_slice(&data[..data.len().min(room)]);
                } else if let Some(fields) = frame.trailers_ref() {
                    trailers = Some(fields.clone());
                }
            }
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }
    let recorded = {
        let mut requests = state.requests.lock().expect("lock");
        let recorded = RecordedRequest {
            index: requests.len(),
            connection: conn.index,
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            body_len: digest.len(),
            body_digest: digest.digest(),
            body_head: head.freeze(),
            body_error,
            trailers,
            client_cert_presented: conn.client_cert,
        };
        requests.push(recorded.clone());
        recorded
    };
    state.changed.notify_waiters();

    if let Some(expected) = state.opts.expect_version
        && recorded.version != expected
    {
        let reply = Reply::bytes(
            505,
            format!("upstream expected {expected:?}, got {:?}", recorded.version),
        );
        return Some(build_response(reply, &recorded));
    }

    let reply = (state.opts.respond)(&recorded);
    if let Some(delay) = reply.delay.or(state.opts.delay) {
        tokio::time::sleep(delay).await;
    }
    if let Some(gate) = &reply.gate {
        gate.passed().await;
    }
    (!reply.refuse).then(|| build_response(reply, &recorded))
}

fn build_response(reply: Reply, recorded: &RecordedRequest) -> Response<ReplyBody> {
    let is_echo = matches!(reply.payload, ReplyPayload::Echo);
    let body: ReplyBody = match reply.payload {
        ReplyPayload::Echo => full(Bytes::from(recorded.echo_json().to_string())),
        ReplyPayload::Bytes(bytes) => full(bytes),
        ReplyPayload::Generated {
            len,
            content_length,
        } => GeneratedBody::new(len, content_length)
            .map_err(|never| match never {})
            .boxed(),
        ReplyPayload::Trickle {
            chunks,
            chunk_len,
            interval,
            end,
            length,
        } => TrickleBody::new(chunks, chunk_len, interval, end, length).boxed(),
    };
    let body = if reply.trailers.is_empty() {
        body
    } else {
        let trailers: HeaderMap = reply.trailers.into_iter().collect();
        body.with_trailers(async move { Some(Ok(trailers)) })
            .boxed()
    };
    let mut response = Response::new(body);
    *response.status_mut() = reply.status;
    if is_echo {
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    for (name, value) in reply.headers {
        response.headers_mut().append(name, value);
    }
    response
}

fn full(bytes: Bytes) -> ReplyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}
