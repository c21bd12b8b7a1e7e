//! Connections that speak the wrong protocol to a proxy listener or to the
//! admin listener — the first-day mistakes of wiring an app (or a health
//! probe) to a sidecar —, each ended with an answer that says what to do
//! or, where nothing can be answered, with a log line that does:
//!
//! | the app sends | to | sidekey |
//! | --- | --- | --- |
//! | plain HTTP/1 (`http://`) | an HTTPS listener | `400 bad_request` in plain HTTP/1.1: "this listener speaks HTTPS: use https://HOST/PATH", then closes (nginx answers this mistake with "400 The plain HTTP request was sent to HTTPS port"; without it the app sees a TLS alert, or a reset) |
//! | the HTTP/2 preface (h2c) | an HTTPS listener | an empty SETTINGS (the server preface), then GOAWAY `INADEQUATE_SECURITY` (RFC 9113 §7: "the underlying transport has properties that do not meet minimum security requirements") whose debug data says to use TLS, then closes; an HTTP/1.1 `400` would reach an h2 client as a garbled frame |
//! | a TLS ClientHello (`https://`) | a plain listener | closes at once: nothing sensible can be said inside TLS (an HTTP `400` reads to curl as "wrong version number") |
//! | a TLS ClientHello (a probe with `scheme: HTTPS`) | the admin listener (always plain) | closes at once, as above; the log line says to use `http://` (a Kubernetes probe's `scheme: HTTP`, its default) |
//! | the HTTP/2 preface (h2c: a Kubernetes `grpc:` probe, `curl --http2-prior-knowledge`) | the admin listener (HTTP/1.1 only) | an empty SETTINGS, then GOAWAY `HTTP_1_1_REQUIRED` (RFC 9113 §7, the code for exactly this) whose debug data names the endpoints; the log line says to probe them with `httpGet` |
//! | a PROXY protocol header | any listener, the admin one too | `400 bad_request` naming it, then closes; what follows the header may be TLS, whose client cannot read that, hence the log line |
//!
//! Every one is also logged at WARN with the listener, the app's address
//! and what to change, at most once a minute per listener and mistake
//! (the next line counts those not logged): a port scanner cannot flood
//! the log.
//!
//! The checks cost nothing on a normal connection: a plain proxy listener
//! tells these openings from HTTP in the bytes it reads first anyway
//! ([`crate::preface`]; the admin listener reads them the same way before
//! it hands the connection to hyper); an HTTPS listener peeks at one byte
//! ([`starts_tls`]: one `recv(MSG_PEEK)` per connection, none per request)
//! and goes on with the handshake when it is a TLS handshake record's.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::Authority;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::error::json_error;
use crate::preface::{self, Protocol};

/// A TLS record of type handshake starts with this byte; no HTTP request
/// (nor the HTTP/2 preface, nor a PROXY header) does.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// How often one mistake on one listener is logged again.
const LOG_AGAIN_AFTER: Duration = Duration::from_secs(60);

/// How long a connection is read (and the bytes dropped) after its answer,
/// waiting for the app to close: closing with bytes unread makes the
/// kernel reset the connection, and the app may lose the answer.
const LINGER: Duration = Duration::from_secs(2);

/// HTTP/2 frame types and the error code sent (RFC 9113 §6, §7).
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const INADEQUATE_SECURITY: u32 = 0xc;
const HTTP_1_1_REQUIRED: u32 = 0xd;

/// A wrong protocol on a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mistake {
    /// Plain HTTP/1 to an HTTPS listener.
    PlainToHttps,
    /// h2c (prior knowledge) to an HTTPS listener.
    H2cToHttps,
    /// TLS to a plain listener.
    TlsToPlain,
    /// A PROXY protocol header.
    ProxyHeader,
    /// h2c (prior knowledge) to the admin listener.
    H2cToAdmin,
}

impl Mistake {
    const ALL: usize = 5;
}

/// What a plain-HTTP listener that a TLS client reached serves, which
/// decides what the client is told to change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlainListener {
    /// Routes: the app's base URL says `https://`.
    Routes,
    /// The forward proxy: the app's proxy URL says `https://`.
    ForwardProxy,
    /// The admin listener: a health probe or scraper uses `https://`.
    Admin,
}

/// When one mistake was last logged, and how many came since.
#[derive(Debug, Default)]
struct Logged {
    at: Option<Instant>,
    unlogged: u64,
}

/// One listener's answers to connections that speak the wrong protocol,
/// and when it last logged each mistake.
#[derive(Debug)]
pub struct Mismatches {
    /// The listener's address (bound; port 0 resolved).
    listener: SocketAddr,
    logged: [Mutex<Logged>; Mistake::ALL],
}

impl Mismatches {
    /// For the listener bound to `listener`.
    pub fn new(listener: SocketAddr) -> Mismatches {
        Mismatches {
            listener,
            logged: Default::default(),
        }
    }

    /// An HTTPS listener's connection whose first byte is no TLS
    /// handshake's ([`starts_tls`]): answer its protocol with what to do
    /// instead, and close. `http1` serves a plain HTTP/1 request its
    /// refusal; `deadline` bounds the wait for the bytes that tell.
    pub async fn refuse_plain_on_https(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        mut http1: http1::Builder,
        deadline: Instant,
    ) {
        // Only here, not per connection: a `getsockname` call.
        let local = stream.local_addr().unwrap_or(self.listener);
        let Some((protocol, stream)) = preface::sniff_by(stream, deadline, peer).await else {
            return;
        };
        match protocol {
            Protocol::Http1 => {
                // Logged once a request was read: bytes that are neither
                // TLS nor HTTP (a port scanner's) get hyper's bare 400.
                let answered = Arc::new(AtomicBool::new(false));
                let noted = answered.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    noted.store(true, Ordering::Relaxed);
                    let answer = use_https(&request, local);
                    async move { Ok::<_, Infallible>(answer) }
                });
                http1.keep_alive(false);
                let served = http1.serve_connection(TokioIo::new(stream), service);
                if let Err(err) = served.await {
                    debug!(%peer, error = %err, "plain HTTP on an HTTPS listener");
                }
                if answered.load(Ordering::Relaxed) {
                    self.warn(
                        Mistake::PlainToHttps,
                        peer,
                        format_args!(
                            "an app sent plain HTTP (http://) to HTTPS listener {}: it was \
                             answered 400; the app must use https://{local}",
                            self.listener
                        ),
                    );
                }
            }
            Protocol::Http2 => {
                self.warn(
                    Mistake::H2cToHttps,
                    peer,
                    format_args!(
                        "an app sent HTTP/2 without TLS (h2c, prior knowledge) to HTTPS \
                         listener {}: it was sent GOAWAY; the app must connect with TLS \
                         (https://{local}, or TLS credentials for gRPC)",
                        self.listener
                    ),
                );
                let message = format!(
                    "this listener speaks HTTPS: connect with TLS, https://{local} \
                     (h2c, HTTP/2 without TLS, is not served here)"
                );
                answer_and_close(stream, &goaway(INADEQUATE_SECURITY, &message)).await;
            }
            Protocol::ProxyHeader => self.refuse_proxy_header(stream, peer).await,
            // Its first byte was no handshake record's.
            Protocol::Tls => {}
        }
    }

    /// A plain listener's connection that opened with a TLS ClientHello:
    /// closed at once (the caller drops it), logged with what to change,
    /// which depends on what the listener serves (`serves`).
    pub fn tls_on_plain(&self, peer: SocketAddr, serves: PlainListener) {
        let listener = self.listener;
        let address = advised(listener);
        match serves {
            PlainListener::ForwardProxy => self.warn(
                Mistake::TlsToPlain,
                peer,
                format_args!(
                    "an app started TLS with forward proxy listener {listener}, which \
                     speaks plain HTTP (its proxy URL says https://): closed. Name it \
                     HTTP_PROXY=http://{address} and request http:// URLs; sidekey sends \
                     them to the upstream as https://"
                ),
            ),
            PlainListener::Routes => self.warn(
                Mistake::TlsToPlain,
                peer,
                format_args!(
                    "an app started TLS (an https:// URL) with plain-HTTP listener \
                     {listener}: closed. Use http://{address}, or give this route tls = \
                     {{ cert, key }} to serve HTTPS"
                ),
            ),
            PlainListener::Admin => self.warn(
                Mistake::TlsToPlain,
                peer,
                format_args!(
                    "a client (a health probe or scraper) started TLS (https://) with the \
                     admin listener {listener}, which speaks plain HTTP only: closed. Use \
                     http://{address}; a Kubernetes probe needs scheme: HTTP (its default), \
                     a Prometheus scrape scheme: http"
                ),
            ),
        }
    }

    /// An admin connection that opened with the HTTP/2 preface: GOAWAY
    /// `HTTP_1_1_REQUIRED`, then the close.
    pub async fn refuse_h2c_on_admin<S>(&self, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.warn(
            Mistake::H2cToAdmin,
            peer,
            format_args!(
                "an HTTP/2 client (prior knowledge; a Kubernetes grpc probe?) reached admin \
                 listener {}: it was sent GOAWAY HTTP_1_1_REQUIRED. The admin endpoints speak \
                 HTTP/1.1: probe /healthz or /readyz with httpGet",
                self.listener
            ),
        );
        let message = "the admin endpoints (/healthz, /readyz, /metrics) speak HTTP/1.1 only";
        answer_and_close(stream, &goaway(HTTP_1_1_REQUIRED, message)).await;
    }

    /// A connection that opened with a PROXY protocol header: a `400`
    /// naming it, then the close.
    pub async fn refuse_proxy_header<S>(&self, stream: S, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.warn(
            Mistake::ProxyHeader,
            peer,
            format_args!(
                "a connection to listener {} opened with a PROXY protocol header (a load \
                 balancer's send-proxy / proxy_protocol setting): answered 400 and closed. \
                 sidekey does not take the PROXY protocol: turn it off for this backend",
                self.listener
            ),
        );
        let refusal = json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "this connection opened with a PROXY protocol header, which sidekey does \
             not take: turn the PROXY protocol off in the load balancer in front of it",
        );
        answer_and_close(stream, &http1_bytes(refusal).await).await;
    }

    /// Log `what` at WARN unless this mistake was logged less than
    /// [`LOG_AGAIN_AFTER`] ago; then count it.
    fn warn(&self, mistake: Mistake, peer: SocketAddr, what: fmt::Arguments<'_>) {
        let Ok(mut logged) = self.logged[mistake as usize].lock() else {
            return;
        };
        let now = Instant::now();
        if logged
            .at
            .is_some_and(|at| now.duration_since(at) < LOG_AGAIN_AFTER)
        {
            logged.unlogged += 1;
            return;
        }
        logged.at = Some(now);
        let unlogged = std::mem::take(&mut logged.unlogged);
        drop(logged);
        if unlogged == 0 {
            warn!(listener = %self.listener, %peer, "{what}");
        } else {
            warn!(
                listener = %self.listener,
                %peer,
                more_since_last_logged = unlogged,
                "{what}"
            );
        }
    }
}

/// Wait for a new connection's first byte: whether it starts a TLS
/// handshake record. Fails when the connection ends first.
pub async fn starts_tls(stream: &TcpStream) -> io::Result<bool> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(first[0] == TLS_HANDSHAKE_RECORD)
}

/// The address to advise: the listener's, with `HOST` for an unspecified
/// IP (a listener on `0.0.0.0` is reached by one of the machine's names).
fn advised(listener: SocketAddr) -> String {
    if listener.ip().is_unspecified() {
        format!("HOST:{}", listener.port())
    } else {
        listener.to_string()
    }
}

/// The answer to a plain HTTP request on an HTTPS listener reached at
/// `local`: the `https://` URL to use instead, with the host the app named
/// (when it is a valid authority) and its path, never its query (an app
/// may carry a key there).
fn use_https(request: &Request<Incoming>, local: SocketAddr) -> Response<Full<Bytes>> {
    let named = request
        .headers()
        .get(HOST)
        .and_then(|host| Authority::try_from(host.as_bytes()).ok())
        .or_else(|| request.uri().authority().cloned());
    let authority = named.map_or_else(|| local.to_string(), |named| named.to_string());
    let path = request.uri().path();
    let path = if path.starts_with('/') { path } else { "/" };
    let message = format!("this listener speaks HTTPS: use https://{authority}{path}");
    json_error(StatusCode::BAD_REQUEST, "bad_request", &message)
}

/// The server preface (an empty SETTINGS frame) and a GOAWAY with error
/// `code` and `message` as its debug data.
fn goaway(code: u32, message: &str) -> Vec<u8> {
    let mut payload = 0u32.to_be_bytes().to_vec();
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(message.as_bytes());
    let mut frames = frame(SETTINGS, &[]);
    frames.extend(frame(GOAWAY, &payload));
    frames
}

/// An HTTP/2 frame on stream 0, without flags.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap_or(0).to_be_bytes();
    let mut frame = vec![length[1], length[2], length[3], kind, 0, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    frame
}

/// `response` as HTTP/1.1 bytes, saying the connection closes.
async fn http1_bytes(response: Response<Full<Bytes>>) -> Vec<u8> {
    let (parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    let mut bytes = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in &parts.headers {
        bytes.extend_from_slice(name.as_str().as_bytes());
        bytes.extend_from_slice(b": ");
        bytes.extend_from_slice(value.as_bytes());
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"connection: close\r\n\r\n");
    bytes.extend_from_slice(&body);
    bytes
}

/// Write `answer`, end the sending side, and read (dropping the bytes)
/// until the app closes or [`LINGER`] passes.
async fn answer_and_close<S>(mut stream: S, answer: &[u8])
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(LINGER, async {
        stream.write_all(answer).await?;
        stream.shutdown().await?;
        let mut dropped = [0u8; 4096];
        while stream.read(&mut dropped).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_goaway_follows_an_empty_settings_frame() {
        let frames = goaway(INADEQUATE_SECURITY, "use TLS");
        assert_eq!(frames[..9], [0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]);
        let goaway = &frames[9..];
        assert_eq!(goaway[..9], [0, 0, 15, GOAWAY, 0, 0, 0, 0, 0]);
        assert_eq!(goaway[9..13], [0, 0, 0, 0], "no stream was processed");
        assert_eq!(goaway[13..17], [0, 0, 0, 0xc]);
        assert_eq!(&goaway[17..], b"use TLS");
    }

    #[tokio::test]
    async fn an_error_is_written_as_a_closing_http1_response() {
        let response = json_error(StatusCode::BAD_REQUEST, "bad_request", "no");
        let text = String::from_utf8(http1_bytes(response).await).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("x-sidekey-error: bad_request\r\n"), "{text}");
        assert!(
            text.ends_with(
                "connection: close\r\n\r\n{\"error\":\"bad_request\",\"message\":\"no\"}"
            ),
            "{text}"
        );
    }

    #[test]
    fn an_unspecified_listener_is_advised_by_its_port() {
        assert_eq!(advised(SocketAddr::from(([0, 0, 0, 0], 8080))), "HOST:8080");
        assert_eq!(
            advised(SocketAddr::from(([127, 0, 0, 1], 8080))),
            "127.0.0.1:8080"
        );
    }
}
