//! A small HTTPS client for token endpoints, shared by the `inbenta` and
//! `oauth2` providers.
//!
//! Contract:
//! - Pooled connections (`hyper_util` legacy client over `hyper_rustls`, HTTP/1.1
//!   or HTTP/2 by ALPN), trusting the roots handed to [`TokenClient::new`].
//! - Redirects are **never** followed: a 3xx answer is an error, so
//!   credentials are only ever sent to the configured URL.
//! - `http://` URLs are refused unless the credential sets
//!   `allow_insecure_http` (tests on loopback).
//! - The whole exchange (name lookup, connect, TLS, request, response head
//!   and body) runs under one timeout; a timeout is [`FetchError::Transient`],
//!   and says so when the lookup of the endpoint's name is what got no
//!   answer. Lookups are shared ([`SharedResolver`]): one per name in flight.
//! - Response bodies over [`MAX_BODY`] are refused. [`TokenResponse::json`]
//!   reads past a UTF-8 byte order mark and names a compressed body as such.
//! - [`TokenResponse::error_for_status`] is the one place where an error
//!   answer becomes a [`FetchError`]: 4xx (except 429) → `Refused`; 5xx, 429
//!   → `Transient` with `Retry-After` (delay-seconds or any HTTP-date form,
//!   counted from the answer's `Date` when it has one — the endpoint's own
//!   clock, right even when this one is years off — else from the system
//!   clock; a date in the past is zero, the engine applies its own floor).
//!   An answer whose `Date` is more than [`CLOCK_HINT_AFTER`] off the
//!   system clock adds to its message that the clock looks wrong (signed
//!   assertions are refused on it). The body
//!   becomes one readable line (RFC 6749 `{error, error_description}`,
//!   Inbenta `{"error": {code, message}}`, a gateway's `{"Message": …}`, or
//!   an excerpt). Every secret the request carried — the values of its
//!   sensitive headers and the secrets the provider names — is cut out in
//!   every spelling ([`Redactor`]) *before* the text is collapsed and cut to
//!   [`MAX_MESSAGE`] characters.
//! - Lifetimes in answers ([`lifetime_field`], [`unix_time_field`]) are
//!   positive numbers or numeric strings; zero, negative or non-numeric
//!   values are errors naming the field; anything beyond [`MAX_LIFETIME`] is
//!   clamped to it, so no later arithmetic on it can overflow.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, DATE, LOCATION, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use serde_json::Value;

use super::provider::FetchError;
use super::redact::{Redactor, collapse_whitespace};
use crate::cert_errors::{CERT_TIME_HINT, certificate_out_of_time, untrusted_certificate};
use crate::error_chain::error_chain;
use crate::resolve::SharedResolver;
use crate::rotating::{self, RotatingCert, Trust};
use crate::tls::TlsError;

/// Largest token response body accepted (1 MiB).
pub const MAX_BODY: usize = 1024 * 1024;

/// Longest excerpt of an error body put into a message, in characters.
pub const MAX_MESSAGE: usize = 200;

/// The UTF-8 byte order mark, read past before an answer's JSON.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Longest token lifetime believed: a year. Larger values are clamped.
pub const MAX_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

/// HTTPS client for token endpoints. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct TokenClient {
    client: Client<HttpsConnector<HttpConnector<SharedResolver>>, Full<Bytes>>,
    /// The connector's name lookups, asked on a timeout whether one hung.
    resolver: SharedResolver,
    /// How far the endpoint's clock (its last answer's `Date`) is ahead of
    /// the system clock, in seconds (negative: behind).
    clock_offset: Arc<AtomicI64>,
    timeout: Duration,
    allow_insecure_http: bool,
}

impl fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenClient")
            .field("timeout", &self.timeout)
            .field("allow_insecure_http", &self.allow_insecure_http)
            .finish_non_exhaustive()
    }
}

/// A token endpoint's answer, whatever its status.
#[derive(Debug)]
pub struct TokenResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body (at most [`MAX_BODY`] bytes).
    pub body: Bytes,
    /// The sensitive header values the request carried.
    sent: Redactor,
}

impl TokenClient {
    /// A client trusting `roots`, with `timeout` for each whole exchange.
    /// `http://` URLs are refused unless `allow_insecure_http`.
    pub fn new(
        roots: &Arc<RootCertStore>,
        timeout: Duration,
        allow_insecure_http: bool,
    ) -> Result<TokenClient, TlsError> {
        TokenClient::trusting(&rotating::fixed_trust(roots)?, timeout, allow_insecure_http)
    }

    /// A client trusting `trust` (the roots in force when a connection is
    /// made: `[tls] ca_file` rotates), with `timeout` for each whole
    /// exchange. `http://` URLs are refused unless `allow_insecure_http`.
    pub fn trusting(
        trust: &Arc<Trust>,
        timeout: Duration,
        allow_insecure_http: bool,
    ) -> Result<TokenClient, TlsError> {
        TokenClient::presenting(trust, None, timeout, allow_insecure_http)
    }

    /// Like [`TokenClient::trusting`], presenting `client_cert` (RFC 8705
    /// mutual TLS, the one in force at each handshake) when asked for one.
    pub fn presenting(
        trust: &Arc<Trust>,
        client_cert: Option<Arc<RotatingCert>>,
        timeout: Duration,
        allow_insecure_http: bool,
    ) -> Result<TokenClient, TlsError> {
        let resolver = SharedResolver::default();
        TokenClient::build(trust, client_cert, timeout, allow_insecure_http, resolver)
    }

    /// Like [`TokenClient::trusting`], looking names up with `resolver` (a
    /// stand-in for DNS in tests).
    pub fn resolving_with(
        trust: &Arc<Trust>,
        timeout: Duration,
        allow_insecure_http: bool,
        resolver: SharedResolver,
    ) -> Result<TokenClient, TlsError> {
        TokenClient::build(trust, None, timeout, allow_insecure_http, resolver)
    }

    fn build(
        trust: &Arc<Trust>,
        client_cert: Option<Arc<RotatingCert>>,
        timeout: Duration,
        allow_insecure_http: bool,
        resolver: SharedResolver,
    ) -> Result<TokenClient, TlsError> {
        let tls = rotating::upstream_config(trust, client_cert)?;
        let mut http = HttpConnector::new_with_resolver(resolver.clone());
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(TokenClient {
            client,
            resolver,
            clock_offset: Arc::default(),
            timeout,
            allow_insecure_http,
        })
    }

    /// The whole-exchange timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The time now in Unix seconds as the token endpoint's clock reads
    /// it: the system clock, moved by how far the endpoint's last `Date`
    /// was from it when that was more than [`CLOCK_TRUSTED_WITHIN`]. Signed
    /// assertions are dated by it, so that a system clock years off (a box
    /// started before NTP set it) costs one refused request, not all.
    pub fn endpoint_unix_now(&self) -> f64 {
        let offset = self.clock_offset.load(Ordering::Relaxed);
        unix_now() + offset as f64
    }

    /// Remember how far the `Date` of an answer just received is from the
    /// system clock (zero when within [`CLOCK_TRUSTED_WITHIN`] or absent).
    fn note_clock(&self, headers: &HeaderMap) {
        let Some(theirs) = (headers.get(DATE))
            .and_then(|date| httpdate::parse_http_date(date.to_str().ok()?).ok())
        else {
            return;
        };
        let ours = SystemTime::now();
        let offset = match theirs.duration_since(ours) {
            Ok(ahead) => i64::try_from(ahead.as_secs()).unwrap_or(i64::MAX),
            Err(behind) => i64::try_from(behind.duration().as_secs()).map_or(i64::MIN, |s| -s),
        };
        let offset = if offset.unsigned_abs() > CLOCK_TRUSTED_WITHIN.as_secs() {
            offset
        } else {
            0
        };
        self.clock_offset.store(offset, Ordering::Relaxed);
    }

    /// POST `body` with `headers` to `url` and read the whole answer, whatever
    /// its status (see [`TokenResponse::error_for_status`]). Redirects are not
    /// followed. Network errors, the timeout and an oversized body are
    /// [`FetchError::Transient`]; a refused `http://` URL too (the
    /// configuration check refuses it first).
    pub async fn post(
        &self,
        url: &Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<TokenResponse, FetchError> {
        let target = describe_url(url);
        match url.scheme_str() {
            Some("https") => {}
            Some("http") if self.allow_insecure_http => {}
            Some("http") => {
                return Err(transient(format!(
                    "refusing to send credentials over plain http to {target} \
                     (set allow_insecure_http = true for loopback tests)"
                )));
            }
            _ => {
                return Err(transient(format!(
                    "token URL {target} must be an https:// URL"
                )));
            }
        }
        if url.authority().is_none() {
            return Err(transient(format!("token URL {target} has no host")));
        }
        let sent = sent_secrets(&headers);
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(url.clone())
            .body(Full::new(body))
            .map_err(|e| transient(format!("cannot build request to {target}: {e}")))?;
        *request.headers_mut() = headers;

        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                let hint = if untrusted_certificate(&e) {
                    UNTRUSTED_HINT
                } else if certificate_out_of_time(&e) {
                    CERT_TIME_HINT
                } else {
                    ""
                };
                transient(format!(
                    "token request to {target} failed: {}{hint}",
                    error_chain(&e)
                ))
            })?;
            let (parts, body) = response.into_parts();
            self.note_clock(&parts.headers);
            let declared = parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|len| len > MAX_BODY as u64) {
                return Err(too_large(&target));
            }
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<LengthLimitError>().is_some() {
                        too_large(&target)
                    } else {
                        transient(format!(
                            "reading the answer of {target} (status {}) failed: {}",
                            parts.status,
                            error_chain(e.as_ref())
                        ))
                    }
                })?
                .to_bytes();
            Ok(TokenResponse {
                status: parts.status,
                headers: parts.headers,
                body,
                sent,
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                // A DNS server that does not answer looks like a slow
                // endpoint unless the message says which it was.
                let lookup = match url.host() {
                    Some(host) if self.resolver.looking_up(host) => {
                        format!(": looking up {host} got no answer (is the DNS server reachable?)")
                    }
                    _ => String::new(),
                };
                Err(transient(format!(
                    "token request to {target} timed out after {:?}{lookup}",
                    self.timeout
                )))
            }
        }
    }
}

/// The sensitive header values of a request, to cut out of its answer.
fn sent_secrets(headers: &HeaderMap) -> Redactor {
    headers
        .values()
        .filter(|value| value.is_sensitive())
        .filter_map(|value| value.to_str().ok())
        .fold(Redactor::new(), Redactor::header_value)
}

impl TokenResponse {
    /// An answer to a request that carried `request_headers` (whose
    /// sensitive values are cut out of any message made from the answer).
    /// [`TokenClient::post`] builds these; public for the fuzz targets.
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        request_headers: &HeaderMap,
    ) -> TokenResponse {
        TokenResponse {
            status,
            headers,
            body,
            sent: sent_secrets(request_headers),
        }
    }

    /// `Ok(self)` for a 2xx answer; otherwise the classified error with one
    /// readable line from the body. The request's sensitive header values
    /// and every secret in `secrets` (the other secrets the request carried,
    /// e.g. in its body) are cut out of the message in every spelling.
    pub fn error_for_status(self, secrets: &[&str]) -> Result<TokenResponse, FetchError> {
        let status = self.status;
        if status.is_success() {
            return Ok(self);
        }
        let redactor = secrets.iter().fold(self.sent.clone(), |redactor, secret| {
            redactor.secret(secret)
        });
        if status.is_redirection() {
            let location = self
                .headers
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<Uri>().ok())
                .map(|u| format!(" to {}", describe_url(&u)))
                .unwrap_or_default();
            let message = excerpt(
                &format!("redirect{location} not followed; configure the final URL"),
                &redactor,
            );
            return Err(FetchError::Refused { status, message });
        }
        let their_now = (self.headers.get(DATE))
            .and_then(|date| httpdate::parse_http_date(date.to_str().ok()?).ok());
        let system_now = SystemTime::now();
        let mut message = error_message(status, &self.body, &redactor);
        if let Some(hint) = their_now.and_then(|then| clock_hint(then, system_now)) {
            message.push_str(&hint);
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            let retry_after = if matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            ) {
                // An HTTP-date counts from the answer's own `Date`: both
                // are the endpoint's clock, whatever this one says.
                let now = their_now.unwrap_or(system_now);
                self.headers
                    .get(RETRY_AFTER)
                    .and_then(|v| parse_retry_after(v, now))
            } else {
                None
            };
            Err(FetchError::Transient {
                message: format!("token endpoint answered {status}: {message}"),
                retry_after,
            })
        } else {
            Err(FetchError::Refused { status, message })
        }
    }

    /// The body as JSON, past a UTF-8 byte order mark (Windows servers
    /// write one); an unreadable body is [`FetchError::Transient`] (the body
    /// itself is never quoted: it may hold a token), and so is a compressed
    /// one, named as such: sidekey asks for no `content-encoding`.
    pub fn json(&self) -> Result<Value, FetchError> {
        if let Some(encoding) = self
            .headers
            .get(CONTENT_ENCODING)
            .filter(|encoding| !encoding.as_bytes().eq_ignore_ascii_case(b"identity"))
        {
            let encoding: String = String::from_utf8_lossy(encoding.as_bytes())
                .chars()
                .take(40)
                .collect();
            return Err(transient(format!(
                "token endpoint answered {} with a body in content-encoding {encoding}, \
                 which sidekey does not ask for and cannot read",
                self.status
            )));
        }
        let body = self.body.strip_prefix(UTF8_BOM).unwrap_or(&self.body);
        serde_json::from_slice(body).map_err(|e| {
            transient(format!(
                "token endpoint answered {} with a body that is not JSON ({} bytes, {})",
                self.status,
                self.body.len(),
                e.classify_name()
            ))
        })
    }
}

/// The short name of a serde_json error class, without position details.
trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// A header value holding a secret: marked sensitive so it never shows in
/// `Debug` output or HPACK tables. Fails (without quoting the value) when the
/// value cannot be sent in a header.
pub fn sensitive_header(value: &str, what: &str) -> Result<HeaderValue, FetchError> {
    let mut header = HeaderValue::from_str(value)
        .map_err(|_| transient(format!("{what} cannot be sent in an HTTP header")))?;
    header.set_sensitive(true);
    Ok(header)
}

/// A number of seconds in a JSON field: a number (`3600`, `3599.5`) or a
/// string holding one (`"3600"`). `Ok(None)` when absent or `null`; an
/// error naming `field` when it is anything else or not finite.
fn number_field(value: Option<&Value>, field: &str) -> Result<Option<f64>, FetchError> {
    let number = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    };
    match number.filter(|n| n.is_finite()) {
        Some(n) => Ok(Some(n)),
        None => Err(bad_field(field, value)),
    }
}

/// "the answer's expires_in (…) is not a positive number of seconds".
fn bad_field(field: &str, value: Option<&Value>) -> FetchError {
    let shown: String = value
        .map(Value::to_string)
        .unwrap_or_default()
        .chars()
        .take(40)
        .collect();
    transient(format!(
        "token endpoint answered {field} {shown}, which is not a positive number of seconds"
    ))
}

/// A lifetime from `expires_in`-style field (seconds from now): `Ok(None)`
/// when absent or `null`; a positive number (or numeric string) clamped to
/// [`MAX_LIFETIME`]; an error naming `field` for zero, negative or
/// non-numeric values.
pub fn lifetime_field(value: Option<&Value>, field: &str) -> Result<Option<Duration>, FetchError> {
    match number_field(value, field)? {
        None => Ok(None),
        Some(seconds) => lifetime_from_secs(seconds)
            .map(Some)
            .ok_or_else(|| bad_field(field, value)),
    }
}

/// An absolute time in Unix seconds from a JSON field (`expiration`, a JWT
/// `exp`): `Ok(None)` when absent or `null`, an error naming `field` when not
/// a number.
pub fn unix_time_field(value: Option<&Value>, field: &str) -> Result<Option<f64>, FetchError> {
    number_field(value, field)
}

/// The lifetime left at `now` until `unix_time` (both in seconds since the
/// epoch), clamped to [`MAX_LIFETIME`]; `None` when it has passed.
pub fn lifetime_until(unix_time: f64, now: f64) -> Option<Duration> {
    lifetime_from_secs(unix_time - now)
}

/// `seconds` as a lifetime: `None` unless positive, clamped to [`MAX_LIFETIME`].
fn lifetime_from_secs(seconds: f64) -> Option<Duration> {
    if seconds.is_nan() || seconds <= 0.0 {
        return None;
    }
    if seconds >= MAX_LIFETIME.as_secs_f64() {
        return Some(MAX_LIFETIME);
    }
    Some(Duration::from_secs_f64(seconds)).filter(|d| !d.is_zero())
}

/// Seconds since the Unix epoch on the system clock.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// How far a token endpoint's `Date` may be from the system clock before
/// assertions are dated by the endpoint's clock instead
/// ([`TokenClient::endpoint_unix_now`]).
pub const CLOCK_TRUSTED_WITHIN: Duration = Duration::from_secs(30);

/// How far a token endpoint's `Date` may be from the system clock before
/// its error messages say that the clock looks wrong.
pub const CLOCK_HINT_AFTER: Duration = Duration::from_secs(300);

/// " (…: is the system clock right?)" when the endpoint's `Date` (`theirs`)
/// is more than [`CLOCK_HINT_AFTER`] from the system clock (`ours`): signed
/// assertions and certificates are then judged on a wrong time.
fn clock_hint(theirs: SystemTime, ours: SystemTime) -> Option<String> {
    let (gap, side) = match theirs.duration_since(ours) {
        Ok(ahead) => (ahead, "ahead of"),
        Err(behind) => (behind.duration(), "behind"),
    };
    (gap > CLOCK_HINT_AFTER).then(|| {
        format!(
            " (the token endpoint's clock is {} s {side} this system's: is the system clock right?)",
            gap.as_secs()
        )
    })
}

/// What to do about a token endpoint whose certificate chain does not lead
/// to a trusted root.
const UNTRUSTED_HINT: &str = " (if the token endpoint's certificate comes from a private CA, add that CA with [tls] ca_file)";

/// `FetchError::Transient` without `Retry-After`.
pub fn transient(message: String) -> FetchError {
    FetchError::Transient {
        message,
        retry_after: None,
    }
}

fn too_large(target: &str) -> FetchError {
    transient(format!(
        "the answer of {target} is larger than {MAX_BODY} bytes; refused"
    ))
}

/// Scheme, host, port and path of a URL for messages: never its user info
/// or query (either might carry a key).
pub(crate) fn describe_url(url: &Uri) -> String {
    let port = url.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{}{port}{}",
        url.scheme_str().unwrap_or("?"),
        url.host().unwrap_or(""),
        url.path()
    )
}

/// One readable line from an error body, without any secret the request
/// carried: the body is redacted as received, then the message is taken
/// from it, redacted again (JSON unescaping may spell a secret anew),
/// collapsed, and only then cut to an excerpt.
fn error_message(status: StatusCode, body: &[u8], redactor: &Redactor) -> String {
    let text = redactor.redact(&String::from_utf8_lossy(body));
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|json| json_error_message(&json))
        .unwrap_or(text);
    let message = excerpt(&message, redactor);
    if message.is_empty() {
        status
            .canonical_reason()
            .map(|r| format!("{r} (empty body)"))
            .unwrap_or_else(|| "empty body".to_owned())
    } else {
        message
    }
}

/// `text` redacted, collapsed to one line, redacted again, and cut to
/// [`MAX_MESSAGE`] characters (`…` marks the cut).
fn excerpt(text: &str, redactor: &Redactor) -> String {
    let line = redactor.redact(&collapse_whitespace(&redactor.redact(text)));
    match line.char_indices().nth(MAX_MESSAGE) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// The message of the error shapes token endpoints use.
fn json_error_message(json: &Value) -> Option<String> {
    let object = json.as_object()?;
    let text = |v: &Value| match v {
        Value::String(s) => Some(collapse_whitespace(s)),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match object.get("error") {
        // RFC 6749 §5.2 (and Auth0): {"error": "invalid_client", "error_description": "…"}
        Some(Value::String(code)) => {
            let code = collapse_whitespace(code);
            let description = object
                .get("error_description")
                .or_else(|| object.get("message"))
                .and_then(text)
                .filter(|d| !d.is_empty());
            return Some(match description {
                Some(d) => format!("{code}: {d}"),
                None => code,
            });
        }
        // Inbenta: {"error": {"code": 401, "message": "…"}}
        Some(Value::Object(inner)) => {
            let code = inner.get("code").and_then(text);
            let message = inner.get("message").and_then(text);
            match (code, message) {
                (Some(c), Some(m)) => return Some(format!("{c}: {m}")),
                (None, Some(m)) => return Some(m),
                (Some(c), None) => return Some(format!("error code {c}")),
                (None, None) => {}
            }
        }
        _ => {}
    }
    // API gateways: {"Message": "…"} / {"message": "…"}
    ["Message", "message", "error_description", "detail", "title"]
        .iter()
        .find_map(|key| object.get(*key).and_then(text).filter(|t| !t.is_empty()))
}

/// `Retry-After` as delay-seconds or an HTTP-date (IMF-fixdate, RFC 850 or
/// asctime); a date in the past is zero.
fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str) -> TokenResponse {
        TokenResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
            sent: Redactor::new(),
        }
    }

    fn refused_message(status: u16, body: &str) -> String {
        match response(status, body).error_for_status(&[]) {
            Err(FetchError::Refused { message, .. }) => message,
            other => panic!("expected Refused, got {other:?}"),
        }
    }

    #[test]
    fn error_shapes_become_one_line() {
        assert_eq!(
            refused_message(
                401,
                r#"{"error":"invalid_client","error_description":"Client authentication failed"}"#
            ),
            "invalid_client: Client authentication failed"
        );
        assert_eq!(
            refused_message(
                403,
                r#"{"error":"access_denied","error_description":"Unauthorized"}"#
            ),
            "access_denied: Unauthorized"
        );
        assert_eq!(
            refused_message(400, r#"{"error":"invalid_request"}"#),
            "invalid_request"
        );
        assert_eq!(
            refused_message(401, r#"{"error":{"code":401,"message":"Invalid API key"}}"#),
            "401: Invalid API key"
        );
        assert_eq!(
            refused_message(
                403,
                r#"{"Message":"User is not authorized to access this resource with an explicit deny"}"#
            ),
            "User is not authorized to access this resource with an explicit deny"
        );
        assert_eq!(
            refused_message(404, "<html>\n  <body>Not\tFound</body>\n</html>\n"),
            "<html> <body>Not Found</body> </html>"
        );
        assert_eq!(refused_message(400, ""), "Bad Request (empty body)");
        let long = "x".repeat(5000);
        let message = refused_message(400, &long);
        assert_eq!(message.chars().count(), MAX_MESSAGE + 1);
        assert!(message.ends_with('…'));
    }

    #[test]
    fn classification() {
        assert!(matches!(
            response(500, "oops").error_for_status(&[]),
            Err(FetchError::Transient { .. })
        ));
        assert!(matches!(
            response(429, "slow down").error_for_status(&[]),
            Err(FetchError::Transient { .. })
        ));
        assert!(matches!(
            response(302, "").error_for_status(&[]),
            Err(FetchError::Refused { .. })
        ));
        assert!(response(200, "{}").error_for_status(&[]).is_ok());
    }

    #[test]
    fn secrets_are_cut_out_of_messages() {
        let body = r#"{"error":"invalid_client","error_description":"bad s3cr3t+x / s3cr3t%2Bx"}"#;
        let message = match response(401, body).error_for_status(&["s3cr3t+x"]) {
            Err(FetchError::Refused { message, .. }) => message,
            other => panic!("{other:?}"),
        };
        assert_eq!(message, "invalid_client: bad <redacted> / <redacted>");
    }

    #[test]
    fn secrets_are_cut_before_the_excerpt_is() {
        // The secret straddles the excerpt's cut: no piece of it may remain.
        let secret = "SeCrEt-0123456789-abcdefghij";
        let body = format!("{}{secret} trailing text", "x".repeat(MAX_MESSAGE - 10));
        let message = match response(400, &body).error_for_status(&[secret]) {
            Err(FetchError::Refused { message, .. }) => message,
            other => panic!("{other:?}"),
        };
        assert!(!message.contains("SeCrEt"), "{message}");
        assert!(message.chars().count() <= MAX_MESSAGE + 1, "{message}");
    }

    #[test]
    fn retry_after_seconds_and_date() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("120"), now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after(
                &HeaderValue::from_static("Sun, 06 Nov 1994 08:50:07 GMT"),
                now
            ),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after(
                &HeaderValue::from_static("Sun, 06 Nov 1994 08:00:00 GMT"),
                now
            ),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("soon"), now),
            None
        );
        // The obsolete forms a server may still send.
        for old_form in ["Sunday, 06-Nov-94 08:50:07 GMT", "Sun Nov  6 08:50:07 1994"] {
            assert_eq!(
                parse_retry_after(&HeaderValue::from_str(old_form).unwrap(), now),
                Some(Duration::from_secs(30)),
                "{old_form}"
            );
        }
        // Too large for a number of seconds: not a delay at all.
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("99999999999999999999999"), now),
            None
        );
    }

    #[test]
    fn urls_in_messages_lose_user_info_and_query() {
        let url: Uri = "https://user:pw@auth.example.com:8443/v1/auth?key=k"
            .parse()
            .unwrap();
        assert_eq!(describe_url(&url), "https://auth.example.com:8443/v1/auth");
    }

    #[test]
    fn lifetimes_are_positive_numbers_clamped_to_a_year() {
        use serde_json::json;
        let secs =
            |v: Value| lifetime_field(Some(&v), "expires_in").map(|d| d.map(|d| d.as_secs_f64()));
        assert_eq!(secs(json!(3600)).unwrap(), Some(3600.0));
        assert_eq!(secs(json!("3600")).unwrap(), Some(3600.0));
        assert_eq!(secs(json!(" 86400 ")).unwrap(), Some(86400.0));
        assert_eq!(secs(json!(3600.5)).unwrap(), Some(3600.5));
        assert_eq!(secs(json!(null)).unwrap(), None);
        assert_eq!(lifetime_field(None, "expires_in").unwrap(), None);
        let year = MAX_LIFETIME.as_secs_f64();
        for huge in [json!(u64::MAX), json!(1e300), json!("1e300"), json!(9.3e18)] {
            assert_eq!(secs(huge.clone()).unwrap(), Some(year), "{huge}");
        }
        for bad in [
            json!(0),
            json!(-5),
            json!("soon"),
            json!("inf"),
            json!("NaN"),
            json!(true),
            json!([1]),
        ] {
            let err = secs(bad.clone()).unwrap_err().to_string();
            assert!(err.contains("expires_in"), "{bad}: {err}");
        }
        assert_eq!(lifetime_until(990.0, 1000.0), None);
        assert_eq!(
            lifetime_until(1600.0, 1000.0),
            Some(Duration::from_secs(600))
        );
        assert_eq!(lifetime_until(1e300, 1000.0), Some(MAX_LIFETIME));
    }
}
