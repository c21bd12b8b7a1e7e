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
//! - The whole exchange (connect, TLS, request, response head and body) runs
//!   under one timeout; a timeout is [`FetchError::Transient`].
//! - Response bodies over [`MAX_BODY`] are refused.
//! - [`TokenResponse::error_for_status`] is the one place where an error
//!   answer becomes a [`FetchError`]: 4xx (except 429) → `Refused`; 5xx, 429
//!   → `Transient` with `Retry-After`. The body becomes one readable line
//!   (RFC 6749 `{error, error_description}`, Inbenta `{"error": {code,
//!   message}}`, a gateway's `{"Message": …}`, or a short sanitized excerpt),
//!   with every request secret the provider names cut out.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, LOCATION, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use serde_json::Value;

use super::FetchError;
use crate::error::error_chain;
use crate::tls::TlsError;

/// Largest token response body accepted (1 MiB).
pub const MAX_BODY: usize = 1024 * 1024;

/// Longest excerpt of an error body put into a message, in characters.
const MAX_MESSAGE: usize = 200;

/// HTTPS client for token endpoints. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct TokenClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
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
}

impl TokenClient {
    /// A client trusting `roots`, with `timeout` for each whole exchange.
    /// `http://` URLs are refused unless `allow_insecure_http`.
    pub fn new(
        roots: &RootCertStore,
        timeout: Duration,
        allow_insecure_http: bool,
    ) -> Result<TokenClient, TlsError> {
        let tls = crate::tls::client_config(roots, None)?;
        let mut http = HttpConnector::new();
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
            timeout,
            allow_insecure_http,
        })
    }

    /// The whole-exchange timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
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
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(url.clone())
            .body(Full::new(body))
            .map_err(|e| transient(format!("cannot build request to {target}: {e}")))?;
        *request.headers_mut() = headers;

        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                transient(format!(
                    "token request to {target} failed: {}",
                    error_chain(&e)
                ))
            })?;
            let (parts, body) = response.into_parts();
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
                            "reading the answer of {target} failed: {}",
                            error_chain(e.as_ref())
                        ))
                    }
                })?
                .to_bytes();
            Ok(TokenResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(transient(format!(
                "token request to {target} timed out after {:?}",
                self.timeout
            ))),
        }
    }
}

impl TokenResponse {
    /// `Ok(self)` for a 2xx answer; otherwise the classified error with one
    /// readable line from the body. Every string in `redact` (the secrets the
    /// request carried) is cut out of the message.
    pub fn error_for_status(self, redact: &[&str]) -> Result<TokenResponse, FetchError> {
        let status = self.status;
        if status.is_success() {
            return Ok(self);
        }
        if status.is_redirection() {
            let location = self
                .headers
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<Uri>().ok())
                .map(|u| format!(" to {}", describe_url(&u)))
                .unwrap_or_default();
            let message = redact_secrets(
                &format!("redirect{location} not followed; configure the final URL"),
                redact,
            );
            return Err(FetchError::Refused { status, message });
        }
        let message = redact_secrets(&error_message(status, &self.body), redact);
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            let retry_after = if matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            ) {
                self.headers
                    .get(RETRY_AFTER)
                    .and_then(|v| parse_retry_after(v, SystemTime::now()))
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

    /// The body as JSON; an unreadable body is [`FetchError::Transient`]
    /// (the body itself is never quoted: it may hold a token).
    pub fn json(&self) -> Result<Value, FetchError> {
        serde_json::from_slice(&self.body).map_err(|e| {
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

/// The lifetime in a JSON field that may be a number (`3600`, `3600.0`) or a
/// string (`"3600"`). `None` when absent, not a number, or negative.
pub fn seconds_field(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0 && f.is_finite())
                .map(|f| f as u64)
        }),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<u64>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| *f >= 0.0 && f.is_finite())
                    .map(|f| f as u64)
            })
        }
        _ => None,
    }
}

/// Seconds since the Unix epoch on the system clock.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

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

/// One readable line from an error body.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    if let Ok(json) = serde_json::from_slice::<Value>(body)
        && let Some(message) = json_error_message(&json)
    {
        return message;
    }
    let text = sanitize(&String::from_utf8_lossy(body));
    if text.is_empty() {
        status
            .canonical_reason()
            .map(|r| format!("{r} (empty body)"))
            .unwrap_or_else(|| "empty body".to_owned())
    } else {
        text
    }
}

/// The message of the error shapes token endpoints use.
fn json_error_message(json: &Value) -> Option<String> {
    let object = json.as_object()?;
    let text = |v: &Value| match v {
        Value::String(s) => Some(sanitize(s)),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match object.get("error") {
        // RFC 6749 §5.2 (and Auth0): {"error": "invalid_client", "error_description": "…"}
        Some(Value::String(code)) => {
            let code = sanitize(code);
            let description = object
                .get("error_description")
                .or_else(|| object.get("message"))
                .and_then(text)
                .filter(|d| !d.is_empty());
            return Some(match description {
                Some(d) => sanitize(&format!("{code}: {d}")),
                None => code,
            });
        }
        // Inbenta: {"error": {"code": 401, "message": "…"}}
        Some(Value::Object(inner)) => {
            let code = inner.get("code").and_then(text);
            let message = inner.get("message").and_then(text);
            match (code, message) {
                (Some(c), Some(m)) => return Some(sanitize(&format!("{c}: {m}"))),
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

/// Control characters become spaces, runs of whitespace one space, and the
/// result is cut to [`MAX_MESSAGE`] characters.
fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_MESSAGE + 4));
    let mut count = 0;
    let mut pending_space = false;
    for c in text.chars() {
        if c.is_whitespace() || c.is_control() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            if count + 1 >= MAX_MESSAGE {
                out.push('…');
                return out;
            }
            out.push(' ');
            count += 1;
            pending_space = false;
        }
        if count >= MAX_MESSAGE {
            out.push('…');
            return out;
        }
        out.push(c);
        count += 1;
    }
    out
}

/// Cut every secret (and its form-urlencoded spelling) out of a message.
fn redact_secrets(message: &str, secrets: &[&str]) -> String {
    let mut out = message.to_owned();
    for secret in secrets {
        // Very short values would shred the message and reveal little.
        if secret.len() < 4 {
            continue;
        }
        out = out.replace(secret, "<redacted>");
        let encoded: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        if encoded != *secret {
            out = out.replace(&encoded, "<redacted>");
        }
    }
    out
}

/// `Retry-After` as delay-seconds or an IMF-fixdate HTTP-date.
fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = parse_http_date(text)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Unix seconds of an IMF-fixdate such as `Sun, 06 Nov 1994 08:49:37 GMT`.
fn parse_http_date(text: &str) -> Option<u64> {
    let mut parts = text.split_ascii_whitespace();
    let _weekday = parts.next()?.strip_suffix(',')?;
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':');
    let hour: u64 = hms.next()?.parse().ok()?;
    let minute: u64 = hms.next()?.parse().ok()?;
    let second: u64 = hms.next()?.parse().ok()?;
    if parts.next()? != "GMT" || parts.next().is_some() || hms.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 || year < 1970 {
        return None;
    }
    let days = days_from_civil(year, month, day as i64);
    u64::try_from(days)
        .ok()
        .map(|d| d * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str) -> TokenResponse {
        TokenResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
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
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2000 12:00:00 GMT"),
            Some(951_825_600)
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
    fn seconds_as_number_or_string() {
        use serde_json::json;
        assert_eq!(seconds_field(Some(&json!(3600))), Some(3600));
        assert_eq!(seconds_field(Some(&json!("3600"))), Some(3600));
        assert_eq!(seconds_field(Some(&json!(" 86400 "))), Some(86400));
        assert_eq!(seconds_field(Some(&json!(3600.5))), Some(3600));
        assert_eq!(seconds_field(Some(&json!(-5))), None);
        assert_eq!(seconds_field(Some(&json!("soon"))), None);
        assert_eq!(seconds_field(Some(&json!(null))), None);
        assert_eq!(seconds_field(None), None);
    }
}
