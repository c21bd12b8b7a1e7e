//! In-process token endpoints on `127.0.0.1:0` that speak the providers'
//! wire formats exactly, record every request and can be scripted.
//!
//! - [`InbentaServer`]: `POST …/auth` (API Secret `{"secret"}`, Domain Key
//!   `{"domain_key"}` + `Origin`, optional `x-oauth-token: Bearer …`) and
//!   `POST …/refreshToken` (`Authorization: Bearer <issued token>`), both
//!   requiring `x-inbenta-key`. Matched by path suffix, so any base path
//!   works ([`InbentaServer::url`] gives `…/v1`).
//! - [`OAuthServer`]: RFC 6749 §4.4 client credentials at `/oauth/token`,
//!   form or JSON body (by `content-type`), client authentication by HTTP
//!   Basic (RFC 6749 §2.3.1 decoding) or in the body; RFC 7523 client
//!   assertions verified cryptographically ([`AssertionCheck`]: signature,
//!   `iss`/`sub`, `aud`, `exp`, `jti` never reused); mutual TLS
//!   ([`OAuthServer::start_mtls`] with [`OAuthBehaviour::id_only`]); and
//!   RFC 8693 token exchange ([`ExchangeCheck`]).
//!
//! Tokens are numbered (`inbenta-token-1`, `oauth-token-1`, …;
//! [`InbentaServer::last_token`]). Behaviour (lifetimes, formats, expected
//! credentials) lives in a plain struct that can be changed while running
//! ([`InbentaServer::update`]). Scripted answers: [`TokenReply`] queued
//! once ([`InbentaServer::push_reply`], [`InbentaServer::set_next_error`]) or
//! kept until cleared ([`InbentaServer::set_reply`]); a scripted answer is
//! given before any check. [`TokenReply::hang`] never answers (timeouts);
//! [`TokenReply::echo`] answers with the request itself (method, path, every
//! header, body), as gateways and HTML error pages do.
//!
//! [`OAuthServer::set_fault_plan`] fails a fixed share of requests (flaky
//! endpoints); [`OAuthServer::validator`] lets an upstream reject expired
//! tokens; [`OAuthBehaviour::delay`] slows the answers down, and
//! [`OAuthServer::max_in_flight`] shows whether requests overlapped. Every
//! [`Recorded`] request carries its arrival instant on the tokio clock, so
//! paused-clock tests read backoff delays off the server.
//!
//! HTTP/1.1 over plain TCP or TLS (`start_tls` with a [`TestPki`]), or on a
//! given listener ([`OAuthServer::start_on`]); a task per connection; the
//! servers stop when dropped.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::jose::{TestKey, verify};
use super::tls::TestPki;

/// What a token server saw of one request.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Method.
    pub method: Method,
    /// Path and query as received.
    pub path: String,
    /// Every header as received.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// When the request arrived (tokio clock, so paused-clock tests can
    /// measure the delays between attempts).
    pub at: tokio::time::Instant,
}

impl Recorded {
    /// A header's value as text (`None` if absent or not text).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Value::Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The body as `application/x-www-form-urlencoded` pairs, decoded.
    pub fn form(&self) -> BTreeMap<String, String> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    /// `Authorization: Basic …` decoded as RFC 6749 §2.3.1 says: base64,
    /// split at the first `:`, each side form-urldecoded.
    pub fn basic_credentials(&self) -> Option<(String, String)> {
        let encoded = self.header("authorization")?.strip_prefix("Basic ")?;
        let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        Some((form_decode(id), form_decode(secret)))
    }
}

fn form_decode(s: &str) -> String {
    // form_urlencoded parses `k=v` pairs; decode a lone component as a key.
    form_urlencoded::parse(s.as_bytes())
        .next()
        .map(|(k, _)| k.into_owned())
        .unwrap_or_default()
}

/// A scripted answer.
#[derive(Clone, Debug)]
pub struct TokenReply {
    /// Status.
    pub status: StatusCode,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
    /// Send the body in chunks without `content-length`.
    pub chunked: bool,
    /// Wait this long before answering.
    pub delay: Option<Duration>,
    /// Never answer (the connection stays open).
    pub hang: bool,
    /// Replace the body with the request echoed as text.
    pub echo: bool,
}

impl TokenReply {
    /// A JSON answer.
    pub fn json(status: u16, body: Value) -> TokenReply {
        TokenReply::text(status, body.to_string()).header("content-type", "application/json")
    }

    /// A plain-text answer.
    pub fn text(status: u16, body: impl Into<Bytes>) -> TokenReply {
        TokenReply {
            status: StatusCode::from_u16(status).expect("status"),
            headers: Vec::new(),
            body: body.into(),
            chunked: false,
            delay: None,
            hang: false,
            echo: false,
        }
    }

    /// Answer `status` with the request echoed as text: the request line,
    /// every header as received (`name: value`) and the body.
    pub fn echo(status: u16) -> TokenReply {
        let mut reply = TokenReply::text(status, "");
        reply.echo = true;
        reply
    }

    /// RFC 6749 §5.2: `{"error": error, "error_description": description}`.
    pub fn oauth_error(status: u16, error: &str, description: &str) -> TokenReply {
        TokenReply::json(
            status,
            json!({"error": error, "error_description": description}),
        )
    }

    /// Inbenta: `{"error": {"code": code, "message": message}}`.
    pub fn inbenta_error(status: u16, code: u16, message: &str) -> TokenReply {
        TokenReply::json(status, json!({"error": {"code": code, "message": message}}))
    }

    /// Never answer.
    pub fn hang() -> TokenReply {
        let mut reply = TokenReply::text(200, "");
        reply.hang = true;
        reply
    }

    /// Add a header.
    pub fn header(mut self, name: &str, value: &str) -> TokenReply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Add `Retry-After: value`.
    pub fn retry_after(self, value: &str) -> TokenReply {
        self.header("retry-after", value)
    }

    /// Send the body chunked (no `content-length`).
    pub fn chunked(mut self) -> TokenReply {
        self.chunked = true;
        self
    }

    /// Answer after `delay`.
    pub fn delay(mut self, delay: Duration) -> TokenReply {
        self.delay = Some(delay);
        self
    }
}

/// How a token answer states its lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// `"expires_in": N` (number).
    ExpiresIn(u64),
    /// `"expires_in": "N"` (string).
    ExpiresInString(u64),
    /// Inbenta: only `"expiration": now + N` (Unix seconds).
    Expiration(u64),
    /// Inbenta: both `expires_in` and `expiration` (what `/auth` sends).
    Both(u64),
    /// No lifetime field at all.
    None,
}

impl Lifetime {
    fn write(self, object: &mut serde_json::Map<String, Value>) {
        match self {
            Lifetime::ExpiresIn(n) => {
                object.insert("expires_in".into(), json!(n));
            }
            Lifetime::ExpiresInString(n) => {
                object.insert("expires_in".into(), json!(n.to_string()));
            }
            Lifetime::Expiration(n) => {
                object.insert("expiration".into(), json!(unix_now() + n));
            }
            Lifetime::Both(n) => {
                object.insert("expires_in".into(), json!(n));
                object.insert("expiration".into(), json!(unix_now() + n));
            }
            Lifetime::None => {}
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// An unsigned JWT-shaped token whose payload is `claims`.
pub fn jwt(claims: Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.dGVzdC1zaWduYXR1cmU")
}

// ---- the shared server core -------------------------------------------------

type Responder = Arc<dyn Fn(&Recorded) -> TokenReply + Send + Sync>;

struct Core {
    requests: Mutex<Vec<Recorded>>,
    count: watch::Sender<usize>,
    connections: AtomicUsize,
    /// Requests being answered now, and the most at once.
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Core {
    fn new() -> Arc<Core> {
        Arc::new(Core {
            requests: Mutex::new(Vec::new()),
            count: watch::Sender::new(0),
            connections: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        })
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Recorded> {
        let mut count = self.count.subscribe();
        tokio::time::timeout(Duration::from_secs(30), count.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("token server: fewer than {n} requests within 30s"))
            .expect("token server core alive");
        self.requests()
    }
}

/// A listening token server; aborts its accept loop when dropped.
struct Running {
    addr: SocketAddr,
    tls: bool,
    core: Arc<Core>,
    accept: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn listen(
    listener: Option<TcpListener>,
    tls: Option<rustls::ServerConfig>,
    respond: Responder,
) -> Running {
    let listener = match listener {
        Some(listener) => listener,
        None => TcpListener::bind("127.0.0.1:0").await.expect("bind"),
    };
    let addr = listener.local_addr().expect("local addr");
    let core = Core::new();
    let is_tls = tls.is_some();
    let acceptor = tls.map(|config| TlsAcceptor::from(Arc::new(config)));
    let accept_core = Arc::clone(&core);
    let accept = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            accept_core.connections.fetch_add(1, Ordering::SeqCst);
            let core = Arc::clone(&accept_core);
            let respond = Arc::clone(&respond);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service =
                    service_fn(move |req| handle(req, Arc::clone(&core), Arc::clone(&respond)));
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                    None => {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    Running {
        addr,
        tls: is_tls,
        core,
        accept,
    }
}

async fn handle(
    req: Request<Incoming>,
    core: Arc<Core>,
    respond: Responder,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let now = core.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    core.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let response = answer(req, &core, &respond).await;
    core.in_flight.fetch_sub(1, Ordering::SeqCst);
    Ok(response)
}

async fn answer(
    req: Request<Incoming>,
    core: &Core,
    respond: &Responder,
) -> Response<BoxBody<Bytes, Infallible>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let recorded = Recorded {
        method: parts.method,
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        headers: parts.headers,
        body,
        at: tokio::time::Instant::now(),
    };
    let mut reply = respond(&recorded);
    if reply.echo {
        reply.body = echo_text(&recorded);
    }
    {
        let mut requests = core.requests.lock().unwrap();
        requests.push(recorded);
        let n = requests.len();
        core.count.send_replace(n);
    }
    if reply.hang {
        std::future::pending::<()>().await;
    }
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    let body = if reply.chunked {
        let chunks = reply
            .body
            .chunks(64 * 1024)
            .map(Bytes::copy_from_slice)
            .collect();
        Chunks(chunks).boxed()
    } else {
        Full::new(reply.body).boxed()
    };
    let mut response = Response::new(body);
    *response.status_mut() = reply.status;
    for (name, value) in &reply.headers {
        response.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    response
}

/// The request as an echoing error page shows it.
fn echo_text(request: &Recorded) -> Bytes {
    let mut text = format!("{} {}\n", request.method, request.path);
    for (name, value) in &request.headers {
        text.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    text.push('\n');
    text.push_str(&request.body_text());
    Bytes::from(text)
}

/// A body sent as separate frames, so hyper uses chunked encoding.
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// One-shot and persistent scripted answers, per endpoint.
struct Script<E> {
    once: VecDeque<(Option<E>, TokenReply)>,
    always: Vec<(Option<E>, TokenReply)>,
}

impl<E: PartialEq + Copy> Script<E> {
    fn new() -> Self {
        Script {
            once: VecDeque::new(),
            always: Vec::new(),
        }
    }

    fn take(&mut self, endpoint: E) -> Option<TokenReply> {
        let matches = |e: &Option<E>| e.is_none_or(|e| e == endpoint);
        if let Some(i) = self.once.iter().position(|(e, _)| matches(e)) {
            return self.once.remove(i).map(|(_, r)| r);
        }
        self.always
            .iter()
            .find(|(e, _)| matches(e))
            .map(|(_, r)| r.clone())
    }

    fn set(&mut self, endpoint: Option<E>, reply: Option<TokenReply>) {
        self.always.retain(|(e, _)| *e != endpoint);
        if let Some(reply) = reply {
            self.always.push((endpoint, reply));
        }
    }
}

fn base_url(running: &Running) -> String {
    let scheme = if running.tls { "https" } else { "http" };
    format!("{scheme}://{}", running.addr)
}

// ---- Inbenta ----------------------------------------------------------------

/// The two Inbenta Auth API endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InbentaEndpoint {
    /// `POST …/auth`.
    Auth,
    /// `POST …/refreshToken`.
    Refresh,
}

/// What the Inbenta server accepts and how it answers.
#[derive(Clone, Debug)]
pub struct InbentaBehaviour {
    /// Required `x-inbenta-key` on both endpoints (401 otherwise).
    pub api_key: String,
    /// Accepted `{"secret"}` (401 otherwise).
    pub secret: String,
    /// Accepted `{"domain_key"}` (401 otherwise).
    pub domain_key: String,
    /// With the domain key, the `Origin` required (403 otherwise); `None` = any.
    pub origin: Option<String>,
    /// Required `x-oauth-token: Bearer <this>` on `/auth` (403 otherwise); `None` = not checked.
    pub oauth_token: Option<String>,
    /// Lifetime fields of `/auth` answers (default `Both(1200)`).
    pub auth_lifetime: Lifetime,
    /// Lifetime fields of `/refreshToken` answers (default `Expiration(1200)`).
    pub refresh_lifetime: Lifetime,
    /// Product → base URL in `/auth` answers.
    pub apis: BTreeMap<String, String>,
    /// Whether `/refreshToken` answers carry `apis` too (default false, like Inbenta).
    pub refresh_includes_apis: bool,
}

impl Default for InbentaBehaviour {
    fn default() -> Self {
        InbentaBehaviour {
            api_key: "test-api-key".into(),
            secret: "test-secret".into(),
            domain_key: "test-domain-key".into(),
            origin: None,
            oauth_token: None,
            auth_lifetime: Lifetime::Both(1200),
            refresh_lifetime: Lifetime::Expiration(1200),
            apis: BTreeMap::from([
                (
                    "chatbot".to_owned(),
                    "https://api-gce3.inbenta.io/prod/chatbot".to_owned(),
                ),
                (
                    "search".to_owned(),
                    "https://api-gce3.inbenta.io/prod/search".to_owned(),
                ),
            ]),
            refresh_includes_apis: false,
        }
    }
}

struct InbentaState {
    behaviour: InbentaBehaviour,
    script: Script<InbentaEndpoint>,
    issued: Vec<String>,
    valid: HashSet<String>,
}

/// A fake Inbenta Auth API. See the module docs.
pub struct InbentaServer {
    /// Where it listens.
    pub addr: SocketAddr,
    running: Running,
    state: Arc<Mutex<InbentaState>>,
}

impl InbentaServer {
    /// Start over plain HTTP.
    pub async fn start(behaviour: InbentaBehaviour) -> InbentaServer {
        Self::start_with(behaviour, None).await
    }

    /// Start over HTTPS with `pki`'s server certificate.
    pub async fn start_tls(behaviour: InbentaBehaviour, pki: &TestPki) -> InbentaServer {
        Self::start_with(behaviour, Some(pki.server_config(&[b"http/1.1"]))).await
    }

    async fn start_with(
        behaviour: InbentaBehaviour,
        tls: Option<rustls::ServerConfig>,
    ) -> InbentaServer {
        let state = Arc::new(Mutex::new(InbentaState {
            behaviour,
            script: Script::new(),
            issued: Vec::new(),
            valid: HashSet::new(),
        }));
        let responder_state = Arc::clone(&state);
        let running = listen(
            None,
            tls,
            Arc::new(move |req| inbenta_answer(&mut responder_state.lock().unwrap(), req)),
        )
        .await;
        InbentaServer {
            addr: running.addr,
            running,
            state,
        }
    }

    /// The `auth_url` to configure: `http(s)://127.0.0.1:PORT/v1`.
    pub fn url(&self) -> String {
        format!("{}/v1", base_url(&self.running))
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.running.core.requests()
    }

    /// Requests to `…/auth` so far.
    pub fn auth_requests(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| endpoint_of(&r.path) == Some(InbentaEndpoint::Auth))
            .collect()
    }

    /// Requests to `…/refreshToken` so far.
    pub fn refresh_requests(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| endpoint_of(&r.path) == Some(InbentaEndpoint::Refresh))
            .collect()
    }

    /// How many `…/auth` requests arrived.
    pub fn auth_calls(&self) -> usize {
        self.auth_requests().len()
    }

    /// How many `…/refreshToken` requests arrived.
    pub fn refresh_calls(&self) -> usize {
        self.refresh_requests().len()
    }

    /// How many requests of any kind arrived.
    pub fn calls(&self) -> usize {
        self.running.core.requests.lock().unwrap().len()
    }

    /// The token issued last.
    pub fn last_token(&self) -> Option<String> {
        self.state.lock().unwrap().issued.last().cloned()
    }

    /// Make every token issued so far unknown to `/refreshToken` (401).
    pub fn revoke_tokens(&self) {
        self.state.lock().unwrap().valid.clear();
    }

    /// Change the behaviour while running.
    pub fn update(&self, f: impl FnOnce(&mut InbentaBehaviour)) {
        f(&mut self.state.lock().unwrap().behaviour);
    }

    /// Answer the next request to `endpoint` (`None` = any) with `reply`.
    pub fn push_reply(&self, endpoint: Option<InbentaEndpoint>, reply: TokenReply) {
        self.state
            .lock()
            .unwrap()
            .script
            .once
            .push_back((endpoint, reply));
    }

    /// Answer the next request, whichever endpoint, with `reply`.
    pub fn set_next_error(&self, reply: TokenReply) {
        self.push_reply(None, reply);
    }

    /// Answer every request to `endpoint` (`None` = any) with `reply` until
    /// set to `None`.
    pub fn set_reply(&self, endpoint: Option<InbentaEndpoint>, reply: Option<TokenReply>) {
        self.state.lock().unwrap().script.set(endpoint, reply);
    }
}

fn endpoint_of(path: &str) -> Option<InbentaEndpoint> {
    let path = path.split('?').next().unwrap_or("");
    if path.ends_with("/auth") {
        Some(InbentaEndpoint::Auth)
    } else if path.ends_with("/refreshToken") {
        Some(InbentaEndpoint::Refresh)
    } else {
        None
    }
}

fn inbenta_answer(state: &mut InbentaState, req: &Recorded) -> TokenReply {
    let Some(endpoint) = endpoint_of(&req.path) else {
        return TokenReply::inbenta_error(404, 404, "Not Found");
    };
    if req.method != Method::POST {
        return TokenReply::inbenta_error(405, 405, "Method Not Allowed");
    }
    if let Some(reply) = state.script.take(endpoint) {
        return reply;
    }
    let b = &state.behaviour;
    if req.header("x-inbenta-key") != Some(b.api_key.as_str()) {
        return TokenReply::inbenta_error(401, 401, "Invalid API key");
    }
    let mut answer = serde_json::Map::new();
    match endpoint {
        InbentaEndpoint::Auth => {
            if !req
                .header("content-type")
                .is_some_and(|c| c.starts_with("application/json"))
            {
                return TokenReply::inbenta_error(400, 400, "Expected a JSON body");
            }
            let body = req.json();
            if let Some(secret) = body.get("secret").and_then(Value::as_str) {
                if secret != b.secret {
                    return TokenReply::inbenta_error(401, 401, "Invalid secret");
                }
            } else if let Some(key) = body.get("domain_key").and_then(Value::as_str) {
                if key != b.domain_key {
                    return TokenReply::inbenta_error(401, 401, "Invalid domain key");
                }
                if let Some(origin) = &b.origin
                    && req.header("origin") != Some(origin.as_str())
                {
                    return TokenReply::inbenta_error(403, 403, "Domain not allowed");
                }
            } else {
                return TokenReply::inbenta_error(400, 400, "Missing secret or domain_key");
            }
            if let Some(oauth) = &b.oauth_token
                && req.header("x-oauth-token") != Some(format!("Bearer {oauth}").as_str())
            {
                return TokenReply::inbenta_error(403, 403, "Invalid OAuth token");
            }
            b.auth_lifetime.write(&mut answer);
            answer.insert("apis".into(), json!(b.apis));
        }
        InbentaEndpoint::Refresh => {
            let bearer = req
                .header("authorization")
                .and_then(|h| h.strip_prefix("Bearer "));
            if !bearer.is_some_and(|t| state.valid.contains(t)) {
                return TokenReply::inbenta_error(401, 401, "Invalid access token");
            }
            b.refresh_lifetime.write(&mut answer);
            if b.refresh_includes_apis {
                answer.insert("apis".into(), json!(b.apis));
            }
        }
    }
    let token = format!("inbenta-token-{}", state.issued.len() + 1);
    answer.insert("accessToken".into(), json!(token));
    state.issued.push(token.clone());
    state.valid.insert(token);
    TokenReply::json(200, Value::Object(answer))
}

// ---- OAuth 2.0 --------------------------------------------------------------

/// What the OAuth server accepts and how it answers.
#[derive(Clone, Debug)]
pub struct OAuthBehaviour {
    /// Accepted client id.
    pub client_id: String,
    /// Accepted client secret.
    pub client_secret: String,
    /// The `expires_in` value to send as is (`json!(3600)`, `json!("3600")`), or none.
    pub expires_in: Option<Value>,
    /// `token_type` to send, or none.
    pub token_type: Option<String>,
    /// Issue JWT-shaped access tokens whose `exp` is this many seconds from now.
    pub jwt_exp_in: Option<u64>,
    /// Answer with a token only after this long (so overlapping requests show).
    pub delay: Option<Duration>,
    /// Accept RFC 7523 client assertions that pass these checks.
    pub assertion: Option<AssertionCheck>,
    /// Accept `client_id` alone: the TLS layer verified the client
    /// (`start_mtls`), or a public client asks for a token exchange.
    pub id_only: bool,
    /// Accept RFC 8693 token exchanges of these subject tokens.
    pub exchange: Option<ExchangeCheck>,
}

/// How a client assertion is checked (RFC 7523 §3).
#[derive(Clone, Debug)]
pub struct AssertionCheck {
    /// Keys whose signatures are accepted.
    pub keys: Vec<TestKey>,
    /// The required `aud`.
    pub audience: String,
    /// The required `iss` and `sub`; `None`: both the client id.
    pub subject: Option<(String, String)>,
    /// Refuse a `jti` seen before (a self-signed assertion is single-use;
    /// a projected service-account token is not).
    pub single_use: bool,
    /// How far (seconds) the server's clock is ahead of this machine's
    /// (negative: behind): assertions are judged on it, and every answer
    /// carries it as its `Date`.
    pub clock_ahead: i64,
}

impl AssertionCheck {
    /// Signed by one of `keys`, for `audience`, `iss` = `sub` = client id, single-use.
    pub fn signed_by(keys: Vec<TestKey>, audience: &str) -> AssertionCheck {
        AssertionCheck {
            keys,
            audience: audience.to_owned(),
            subject: None,
            single_use: true,
            clock_ahead: 0,
        }
    }
}

/// What an RFC 8693 token exchange must carry, and what it answers.
#[derive(Clone, Debug)]
pub struct ExchangeCheck {
    /// Subject tokens accepted (any other is `invalid_grant`).
    pub subject_tokens: Vec<String>,
    /// The required `subject_token_type`.
    pub subject_token_type: String,
    /// The answer's `issued_token_type`.
    pub issued_token_type: String,
    /// The answer's `token_type` (`N_A` when the token is not an access token).
    pub token_type: String,
}

impl ExchangeCheck {
    /// Accepting `subject_tokens` of type JWT, issuing access tokens.
    pub fn of(subject_tokens: &[&str]) -> ExchangeCheck {
        ExchangeCheck {
            subject_tokens: subject_tokens.iter().map(|t| (*t).to_owned()).collect(),
            subject_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
            issued_token_type: "urn:ietf:params:oauth:token-type:access_token".into(),
            token_type: "Bearer".into(),
        }
    }
}

impl Default for OAuthBehaviour {
    fn default() -> Self {
        OAuthBehaviour {
            client_id: "test-client".into(),
            client_secret: "test-client-secret".into(),
            expires_in: Some(json!(86400)),
            token_type: Some("Bearer".into()),
            jwt_exp_in: None,
            delay: None,
            assertion: None,
            id_only: false,
            exchange: None,
        }
    }
}

struct OAuthState {
    behaviour: OAuthBehaviour,
    script: Script<()>,
    issued: Vec<String>,
    /// When each token was issued (tokio clock).
    issued_at: HashMap<String, tokio::time::Instant>,
    /// Request `n` (counted from when the plan was set) is answered with
    /// `plan[n % len]` when that is `Some`.
    fault_plan: Vec<Option<TokenReply>>,
    planned: usize,
    /// Every assertion `jti` accepted.
    jtis: HashSet<String>,
}

/// A fake OAuth 2.0 token endpoint (client credentials). See the module docs.
pub struct OAuthServer {
    running: Running,
    state: Arc<Mutex<OAuthState>>,
}

impl OAuthServer {
    /// Start over plain HTTP.
    pub async fn start(behaviour: OAuthBehaviour) -> OAuthServer {
        Self::start_with(behaviour, None).await
    }

    /// Start over HTTPS with `pki`'s server certificate.
    pub async fn start_tls(behaviour: OAuthBehaviour, pki: &TestPki) -> OAuthServer {
        Self::start_with(behaviour, Some(pki.server_config(&[b"http/1.1"]))).await
    }

    /// Start over HTTPS with `pki`'s server certificate, requiring a client
    /// certificate that `pki`'s CA signed (RFC 8705 `tls_client_auth`).
    pub async fn start_mtls(behaviour: OAuthBehaviour, pki: &TestPki) -> OAuthServer {
        let tls = pki.server_config_mtls(&[b"http/1.1"], true);
        Self::start_with(behaviour, Some(tls)).await
    }

    /// Start over plain HTTP on `listener` (to come up at an address that
    /// refused connections until now).
    pub async fn start_on(listener: TcpListener, behaviour: OAuthBehaviour) -> OAuthServer {
        Self::start_full(Some(listener), behaviour, None).await
    }

    async fn start_with(
        behaviour: OAuthBehaviour,
        tls: Option<rustls::ServerConfig>,
    ) -> OAuthServer {
        Self::start_full(None, behaviour, tls).await
    }

    async fn start_full(
        listener: Option<TcpListener>,
        behaviour: OAuthBehaviour,
        tls: Option<rustls::ServerConfig>,
    ) -> OAuthServer {
        let state = Arc::new(Mutex::new(OAuthState {
            behaviour,
            script: Script::new(),
            issued: Vec::new(),
            issued_at: HashMap::new(),
            fault_plan: Vec::new(),
            planned: 0,
            jtis: HashSet::new(),
        }));
        let responder_state = Arc::clone(&state);
        let running = listen(
            listener,
            tls,
            Arc::new(move |req| oauth_answer(&mut responder_state.lock().unwrap(), req)),
        )
        .await;
        OAuthServer { running, state }
    }

    /// The `token_url` to configure: `http(s)://127.0.0.1:PORT/oauth/token`.
    pub fn url(&self) -> String {
        format!("{}/oauth/token", base_url(&self.running))
    }

    /// [`OAuthServer::url`] as a `Uri`.
    pub fn token_url(&self) -> Uri {
        self.url().parse().expect("uri")
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.running.core.requests()
    }

    /// The last request.
    pub fn last_request(&self) -> Option<Recorded> {
        self.requests().pop()
    }

    /// How many requests arrived.
    pub fn calls(&self) -> usize {
        self.running.core.requests.lock().unwrap().len()
    }

    /// How many TCP connections were accepted.
    pub fn connections(&self) -> usize {
        self.running.core.connections.load(Ordering::SeqCst)
    }

    /// Wait (up to 30 s, then panic) until `n` requests have arrived.
    pub async fn wait_for_requests(&self, n: usize) -> Vec<Recorded> {
        self.running.core.wait_for(n).await
    }

    /// The token issued last.
    pub fn last_token(&self) -> Option<String> {
        self.state.lock().unwrap().issued.last().cloned()
    }

    /// Every token issued, in order.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.lock().unwrap().issued.clone()
    }

    /// Change the behaviour while running.
    pub fn update(&self, f: impl FnOnce(&mut OAuthBehaviour)) {
        f(&mut self.state.lock().unwrap().behaviour);
    }

    /// Answer the next request with `reply`.
    pub fn set_next_error(&self, reply: TokenReply) {
        self.state
            .lock()
            .unwrap()
            .script
            .once
            .push_back((None, reply));
    }

    /// Alias of [`OAuthServer::set_next_error`] for successful scripted answers.
    pub fn push_reply(&self, reply: TokenReply) {
        self.set_next_error(reply);
    }

    /// Answer every request with `reply` until set to `None`.
    pub fn set_reply(&self, reply: Option<TokenReply>) {
        self.state.lock().unwrap().script.set(None, reply);
    }

    /// From now on answer request `n` with `plan[n % plan.len()]` when that
    /// is `Some` (a fault), normally otherwise; an empty plan ends it.
    pub fn set_fault_plan(&self, plan: Vec<Option<TokenReply>>) {
        let mut state = self.state.lock().unwrap();
        state.fault_plan = plan;
        state.planned = 0;
    }

    /// The most requests it was answering at once.
    pub fn max_in_flight(&self) -> usize {
        self.running.core.max_in_flight.load(Ordering::SeqCst)
    }

    /// A predicate "this `authorization` value is `Bearer <token>` for a
    /// token this server issued less than `lifetime` ago", for upstreams
    /// that reject expired tokens.
    pub fn validator(
        &self,
        lifetime: Duration,
    ) -> impl Fn(Option<&str>) -> bool + Send + Sync + 'static {
        let state = Arc::clone(&self.state);
        move |authorization| {
            let Some(token) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else {
                return false;
            };
            state
                .lock()
                .unwrap()
                .issued_at
                .get(token)
                .is_some_and(|at| at.elapsed() < lifetime)
        }
    }
}

fn oauth_answer(state: &mut OAuthState, req: &Recorded) -> TokenReply {
    let ahead = (state.behaviour.assertion.as_ref()).map_or(0, |check| check.clock_ahead);
    let reply = oauth_answer_now(state, req);
    if ahead == 0 {
        return reply;
    }
    let now = std::time::SystemTime::now();
    let theirs = if ahead > 0 {
        now + Duration::from_secs(ahead.unsigned_abs())
    } else {
        now - Duration::from_secs(ahead.unsigned_abs())
    };
    reply.header("date", &httpdate::fmt_http_date(theirs))
}

fn oauth_answer_now(state: &mut OAuthState, req: &Recorded) -> TokenReply {
    if req.method != Method::POST {
        return TokenReply::oauth_error(405, "invalid_request", "POST required");
    }
    if let Some(reply) = state.script.take(()) {
        return reply;
    }
    if !state.fault_plan.is_empty() {
        let planned = state.fault_plan[state.planned % state.fault_plan.len()].clone();
        state.planned += 1;
        if let Some(reply) = planned {
            return reply;
        }
    }
    let content_type = req.header("content-type").unwrap_or("");
    let params: BTreeMap<String, String> = if content_type.starts_with("application/json") {
        match req.json() {
            Value::Object(map) => map
                .into_iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
                .collect(),
            _ => return TokenReply::oauth_error(400, "invalid_request", "malformed JSON body"),
        }
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        req.form()
    } else {
        return TokenReply::oauth_error(400, "invalid_request", "unsupported content type");
    };
    if let Err(reply) = authenticate(state, req, &params) {
        return reply;
    }
    let b = &state.behaviour;
    let exchange = match (params.get("grant_type").map(String::as_str), &b.exchange) {
        (Some("client_credentials"), _) => None,
        (Some("urn:ietf:params:oauth:grant-type:token-exchange"), Some(check)) => {
            if params.get("subject_token_type") != Some(&check.subject_token_type) {
                return TokenReply::oauth_error(400, "invalid_request", "wrong subject_token_type");
            }
            let subject = params
                .get("subject_token")
                .map(String::as_str)
                .unwrap_or("");
            if !check.subject_tokens.iter().any(|t| t == subject) {
                return TokenReply::oauth_error(400, "invalid_grant", "subject_token not accepted");
            }
            Some(check.clone())
        }
        _ => {
            return TokenReply::oauth_error(
                400,
                "unsupported_grant_type",
                "grant_type must be client_credentials",
            );
        }
    };
    let n = state.issued.len() + 1;
    let token = match b.jwt_exp_in {
        Some(exp_in) => jwt(json!({"sub": b.client_id, "n": n, "exp": unix_now() + exp_in})),
        None => format!("oauth-token-{n}"),
    };
    let mut answer = serde_json::Map::new();
    answer.insert("access_token".into(), json!(token));
    match &exchange {
        Some(check) => {
            answer.insert("issued_token_type".into(), json!(check.issued_token_type));
            answer.insert("token_type".into(), json!(check.token_type));
        }
        None => {
            if let Some(kind) = &b.token_type {
                answer.insert("token_type".into(), json!(kind));
            }
        }
    }
    if let Some(expires_in) = &b.expires_in {
        answer.insert("expires_in".into(), expires_in.clone());
    }
    let delay = b.delay;
    state
        .issued_at
        .insert(token.clone(), tokio::time::Instant::now());
    state.issued.push(token);
    let reply = TokenReply::json(200, Value::Object(answer)).header("cache-control", "no-store");
    match delay {
        Some(delay) => reply.delay(delay),
        None => reply,
    }
}

/// RFC 6749 §2.3 client authentication by exactly one method: HTTP Basic,
/// `client_secret` in the body, an RFC 7523 assertion, or (when
/// [`OAuthBehaviour::id_only`]) the `client_id` alone.
fn authenticate(
    state: &mut OAuthState,
    req: &Recorded,
    params: &BTreeMap<String, String>,
) -> Result<(), TokenReply> {
    let b = &state.behaviour;
    let refused = |why: &str| TokenReply::oauth_error(401, "invalid_client", why);
    let basic = req.basic_credentials();
    let in_body = params.get("client_secret").map(|secret| {
        (
            params.get("client_id").cloned().unwrap_or_default(),
            secret.clone(),
        )
    });
    let assertion = params.get("client_assertion");
    let methods = [basic.is_some(), in_body.is_some(), assertion.is_some()];
    if methods.iter().filter(|m| **m).count() > 1 {
        return Err(TokenReply::oauth_error(
            400,
            "invalid_request",
            "more than one client authentication method",
        ));
    }
    if let Some(assertion) = assertion {
        let Some(check) = b.assertion.clone() else {
            return Err(refused("client assertions are not accepted"));
        };
        if params.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return Err(refused("wrong client_assertion_type"));
        }
        let (_, claims) = verify(assertion, &check.keys).map_err(|e| refused(&e))?;
        let (iss, sub) = check
            .subject
            .clone()
            .unwrap_or_else(|| (b.client_id.clone(), b.client_id.clone()));
        let now = unix_now().saturating_add_signed(check.clock_ahead);
        let exp = claims["exp"].as_u64().unwrap_or(0);
        let iat = claims["iat"].as_u64().unwrap_or(0);
        let problem = if claims["iss"] != json!(iss) || claims["sub"] != json!(sub) {
            Some("wrong iss or sub")
        } else if claims["aud"] != json!(check.audience) && claims["aud"] != json!([check.audience])
        {
            Some("wrong aud")
        } else if exp <= now {
            Some("assertion expired")
        } else if iat > now + 60 {
            Some("assertion issued in the future")
        } else if check.single_use && exp > now + 310 {
            Some("exp too far ahead")
        } else if params.get("client_id").is_some_and(|id| *id != b.client_id) {
            Some("client_id does not match")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(refused(problem));
        }
        if check.single_use {
            let jti = claims["jti"].as_str().unwrap_or("").to_owned();
            if jti.len() < 16 || !state.jtis.insert(jti) {
                return Err(refused("jti missing or reused"));
            }
        }
        return Ok(());
    }
    let (id, secret) = match (basic, in_body) {
        (Some(pair), None) | (None, Some(pair)) => pair,
        _ if b.id_only && params.get("client_id") == Some(&b.client_id) => return Ok(()),
        _ => return Err(refused("Client authentication failed")),
    };
    if id != b.client_id || secret != b.client_secret {
        return Err(refused("Client authentication failed")
            .header("www-authenticate", "Basic realm=\"token\""));
    }
    Ok(())
}
