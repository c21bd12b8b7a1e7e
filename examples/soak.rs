//! Soak harness for sidekey's renewal engine (issue #7): drives the **release
//! binary** for minutes through a credential with very short tokens while its
//! token endpoint misbehaves, and measures what the app and the API saw.
//!
//! Run it through the script, which builds `--release` first:
//!
//! ```sh
//! bash bench/soak.sh                                   # 10 min, 3 s tokens, 20 % failures, 20 s outage
//! bash bench/soak.sh --minutes 1 --outage-secs 10      # a quick check
//! ```
//!
//! or by hand: `cargo build --release && cargo run --release --example soak --
//! --sidekey target/release/sidekey --minutes 1`. `--help` lists every knob.
//!
//! What runs, all on 127.0.0.1:0:
//! - an **OAuth 2.0 token endpoint** (client credentials, form body, HTTP
//!   Basic client authentication, plain HTTP) issuing opaque random tokens with
//!   `expires_in = --ttl`; each is recorded with its issue instant and expiry.
//!   A fraction (`--failure-rate`) of the calls fail at random, evenly among:
//!   HTTP 500, a hang (no answer until the client gives up; sidekey's
//!   `timeout` is 1 s), a 200 with a garbage body, and a connection reset.
//!   During the outage phase every call fails (`--outage-kind`); in the
//!   recovery phase none does.
//! - an **HTTPS upstream** (rcgen CA and certificate, trusted by sidekey via
//!   `[tls] ca_file`) answering 200 to a known, unexpired token and 401 to an
//!   unknown or expired one, counting both separately.
//! - **sidekey** itself, `sidekey run` as a child process, with a generated
//!   configuration (one `oauth2` credential, one route, `[admin]`, JSON logs
//!   to a file); its ports are read from the `proxy listening` / `admin
//!   listening` log lines. It is stopped with SIGTERM at the end (and killed
//!   if the harness stops early).
//! - `--concurrency` **keep-alive clients** looping `GET /v1/soak` with a short
//!   pause between requests.
//!
//! Phases: **soak** (`--minutes` of traffic with random failures), then a full
//! token-endpoint **outage** (`--outage-secs`, longer than the TTL: requests
//! must turn into 503 `credential_unavailable` JSON), then **recovery** (the
//! endpoint answers again: how long until the first 200).
//!
//! Progress goes to stderr every `--report-secs`; the final summary, a
//! Markdown table for the closing note, goes to stdout. Exit status: 0 when
//! every target is met, 1 when one is missed (non-2xx in the soak phase,
//! expired or unknown tokens seen upstream, an outage answer other than the
//! 503 JSON, recovery slower than 2 s, a token in sidekey's log, an unclean
//! exit), 2 when the harness itself could not run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

/// A harness error: what could not be done, with its cause. Never holds a secret.
type HarnessError = Box<dyn std::error::Error + Send + Sync>;

/// Recovery slower than this is a missed target (the goal is about 1 s).
const RECOVERY_LIMIT: Duration = Duration::from_secs(2);
/// How long a client waits for one answer from sidekey before counting a timeout.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long sidekey may take to log its listeners and become ready.
const STARTUP_LIMIT: Duration = Duration::from_secs(30);
/// Traffic kept up after the first 200 of the recovery phase.
const AFTER_RECOVERY: Duration = Duration::from_secs(3);
/// Longest wait for the first 200 after the endpoint is restored.
const RECOVERY_WAIT_MAX: Duration = Duration::from_secs(30);
/// Issued tokens are this prefix and the base64url form of this many random bytes.
const TOKEN_PREFIX: &str = "soak-token-";
const TOKEN_BYTES: usize = 24;
/// A hanging token call gives up on its own after this (sidekey closes first).
const HANG_MAX: Duration = Duration::from_secs(120);

#[derive(Parser, Debug)]
#[command(about = "Soak test: sidekey with short-lived tokens and a flaky token endpoint")]
struct Args {
    /// Minutes of traffic in the soak phase (fractions allowed).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Token lifetime in seconds (`expires_in`).
    #[arg(long, default_value_t = 3)]
    ttl: u64,
    /// Share of token calls that fail during the soak phase: 0.2 or 20%.
    #[arg(long, default_value = "0.2", value_parser = parse_rate)]
    failure_rate: f64,
    /// Keep-alive client connections sending requests.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Pause of each client between two requests, in milliseconds.
    #[arg(long, default_value_t = 10)]
    pause_ms: u64,
    /// Length of the full token-endpoint outage in seconds (0 skips it).
    #[arg(long, default_value_t = 20)]
    outage_secs: u64,
    /// How the token endpoint fails during the outage.
    #[arg(long, value_enum, default_value_t = OutageKind::ServerError)]
    outage_kind: OutageKind,
    /// Seconds between progress reports on stderr.
    #[arg(long, default_value_t = 10)]
    report_secs: u64,
    /// The sidekey binary (bench/soak.sh passes the release build).
    #[arg(long, default_value = "target/release/sidekey")]
    sidekey: PathBuf,
    /// Keep the temporary directory (config, certificates, sidekey's log).
    #[arg(long)]
    keep_dir: bool,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let (number, scale) = match text.strip_suffix('%') {
        Some(percent) => (percent, 100.0),
        None => (text, 1.0),
    };
    let rate = number
        .trim()
        .parse::<f64>()
        .map_err(|e| format!("`{text}`: {e}"))?
        / scale;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("`{text}` is not between 0 and 1 (or 0% and 100%)"))
    }
}

/// How the token endpoint fails during the outage phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OutageKind {
    /// Every call answers HTTP 500.
    #[value(name = "500")]
    ServerError,
    /// Calls rotate through 500, hang, garbage and reset.
    Mixed,
}

/// One way the token endpoint fails a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Failure {
    ServerError,
    Hang,
    Garbage,
    Reset,
}

impl OutageKind {
    fn label(self) -> &'static str {
        match self {
            OutageKind::ServerError => "every call 500",
            OutageKind::Mixed => "500, hang, garbage, reset in turn",
        }
    }
}

impl Failure {
    const ALL: [Failure; 4] = [
        Failure::ServerError,
        Failure::Hang,
        Failure::Garbage,
        Failure::Reset,
    ];

    fn label(self) -> &'static str {
        match self {
            Failure::ServerError => "500",
            Failure::Hang => "hang",
            Failure::Garbage => "garbage",
            Failure::Reset => "reset",
        }
    }
}

/// The phases of a run; counters are kept per phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Soak = 0,
    Outage = 1,
    Recovery = 2,
}

impl Phase {
    const ALL: [Phase; 3] = [Phase::Soak, Phase::Outage, Phase::Recovery];

    fn name(self) -> &'static str {
        match self {
            Phase::Soak => "soak",
            Phase::Outage => "outage",
            Phase::Recovery => "recovery",
        }
    }
}

/// The phase the run is in, shared by every component that counts.
#[derive(Default)]
struct PhaseClock(AtomicUsize);

impl PhaseClock {
    fn get(&self) -> Phase {
        Phase::ALL[self.0.load(Ordering::Relaxed).min(2)]
    }

    fn set(&self, phase: Phase) {
        self.0.store(phase as usize, Ordering::Relaxed);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking holder cannot leave these plain counters half-updated in a
    // way that matters for a report.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ------------------------------------------------------------ token endpoint

/// What happened to one token call.
#[derive(Clone, Copy, Debug)]
enum CallOutcome {
    Issued,
    Failed(Failure),
    /// The request itself was wrong (method, path, client credentials, grant).
    Refused,
}

#[derive(Clone, Copy, Debug)]
struct Call {
    at: Instant,
    outcome: CallOutcome,
}

/// A token the endpoint issued.
#[derive(Clone, Copy, Debug)]
struct Issued {
    expires: Instant,
}

#[derive(Default)]
struct TokenBook {
    tokens: HashMap<String, Issued>,
    calls: Vec<Call>,
}

/// The scripted OAuth 2.0 token endpoint (plain HTTP/1.1, hand-parsed so a
/// call can be answered, left hanging or reset at will).
struct TokenEndpoint {
    addr: SocketAddr,
    ttl: Duration,
    failure_rate: f64,
    outage_kind: OutageKind,
    /// A [`Health`], as its discriminant.
    health: AtomicU8,
    outage_seq: AtomicUsize,
    /// The expected `Authorization: Basic …` value.
    basic: String,
    book: Mutex<TokenBook>,
}

/// How the token endpoint answers in each phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Health {
    /// Soak: `--failure-rate` of the calls fail at random.
    Flaky,
    /// Outage: every call fails (`--outage-kind`).
    Down,
    /// Recovery: every call succeeds, so the time to the first 200 measures
    /// sidekey, not a random failure of its first attempt.
    Healthy,
}

/// What a token request carried, as far as the endpoint checks it.
struct TokenRequest {
    method: String,
    path: String,
    authorization: Option<String>,
    body: Vec<u8>,
}

impl TokenEndpoint {
    async fn start(
        ttl: Duration,
        failure_rate: f64,
        outage_kind: OutageKind,
        client_id: &str,
        client_secret: &str,
    ) -> Result<Arc<TokenEndpoint>, HarnessError> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", encode(client_id), encode(client_secret)))
        );
        let endpoint = Arc::new(TokenEndpoint {
            addr: listener.local_addr()?,
            ttl,
            failure_rate,
            outage_kind,
            health: AtomicU8::new(Health::Flaky as u8),
            outage_seq: AtomicUsize::new(0),
            basic,
            book: Mutex::new(TokenBook::default()),
        });
        let serving = Arc::clone(&endpoint);
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(Arc::clone(&serving).connection(stream));
                    }
                    Err(e) => {
                        eprintln!("token endpoint: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Ok(endpoint)
    }

    fn url(&self) -> String {
        format!("http://{}/oauth/token", self.addr)
    }

    fn set_health(&self, health: Health) {
        self.health.store(health as u8, Ordering::SeqCst);
    }

    /// Whether (and how) to fail the next call.
    fn decide(&self) -> Option<Failure> {
        let health = self.health.load(Ordering::SeqCst);
        if health == Health::Down as u8 {
            Some(match self.outage_kind {
                OutageKind::ServerError => Failure::ServerError,
                OutageKind::Mixed => {
                    Failure::ALL[self.outage_seq.fetch_add(1, Ordering::Relaxed) % 4]
                }
            })
        } else if health == Health::Flaky as u8 {
            (fastrand::f64() < self.failure_rate).then(|| Failure::ALL[fastrand::usize(0..4)])
        } else {
            None
        }
    }

    fn valid(&self, request: &TokenRequest) -> bool {
        let grant = form_urlencoded::parse(&request.body)
            .any(|(key, value)| key == "grant_type" && value == "client_credentials");
        request.method == "POST"
            && request.path == "/oauth/token"
            && request.authorization.as_deref() == Some(self.basic.as_str())
            && grant
    }

    fn record(&self, outcome: CallOutcome) {
        lock(&self.book).calls.push(Call {
            at: Instant::now(),
            outcome,
        });
    }

    fn issue(&self) -> String {
        let token = format!(
            "soak-{}",
            URL_SAFE_NO_PAD.encode(std::array::from_fn::<u8, 24, _>(|_| fastrand::u8(..)))
        );
        let now = Instant::now();
        let mut book = lock(&self.book);
        book.tokens.insert(
            token.clone(),
            Issued {
                expires: now + self.ttl,
            },
        );
        book.calls.push(Call {
            at: now,
            outcome: CallOutcome::Issued,
        });
        token
    }

    fn lookup(&self, token: &str) -> Option<Issued> {
        lock(&self.book).tokens.get(token).copied()
    }

    fn calls(&self) -> Vec<Call> {
        lock(&self.book).calls.clone()
    }

    fn tokens(&self) -> HashSet<String> {
        lock(&self.book).tokens.keys().cloned().collect()
    }

    /// Serves one keep-alive connection, one request at a time.
    async fn connection(self: Arc<Self>, mut stream: TcpStream) {
        let mut buffer = Vec::new();
        loop {
            let request = match read_request(&mut stream, &mut buffer).await {
                Ok(Some(request)) => request,
                Ok(None) | Err(_) => return,
            };
            if !self.valid(&request) {
                self.record(CallOutcome::Refused);
                let body = r#"{"error":"invalid_client","error_description":"soak: unexpected token request"}"#;
                if write_response(&mut stream, "401 Unauthorized", body.as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            let failure = self.decide();
            if let Some(failure) = failure {
                self.record(CallOutcome::Failed(failure));
            }
            let written = match failure {
                None => {
                    let body = serde_json::json!({
                        "access_token": self.issue(),
                        "token_type": "Bearer",
                        "expires_in": self.ttl.as_secs(),
                    })
                    .to_string();
                    write_response(&mut stream, "200 OK", body.as_bytes()).await
                }
                Some(Failure::ServerError) => {
                    let body =
                        r#"{"error":"server_error","error_description":"soak: injected failure"}"#;
                    write_response(&mut stream, "500 Internal Server Error", body.as_bytes()).await
                }
                Some(Failure::Garbage) => write_response(&mut stream, "200 OK", &garbage()).await,
                Some(Failure::Hang) => {
                    // Never answer; wait for the client to give up and close.
                    let mut sink = [0u8; 1024];
                    let _ = tokio::time::timeout(HANG_MAX, async {
                        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                    })
                    .await;
                    return;
                }
                Some(Failure::Reset) => {
                    // SO_LINGER 0: closing sends RST instead of FIN.
                    let _ = stream.set_zero_linger();
                    return;
                }
            };
            if written.is_err() {
                return;
            }
        }
    }
}

/// A 200 body no token client can use: HTML, truncated JSON, JSON without a
/// token, or binary noise.
fn garbage() -> Vec<u8> {
    match fastrand::usize(0..4) {
        0 => b"<html><body><h1>502 Bad Gateway</h1></body></html>".to_vec(),
        1 => br#"{"access_token":"soak-trunc"#.to_vec(),
        2 => br#"{"status":"ok","detail":"maintenance"}"#.to_vec(),
        _ => std::iter::repeat_with(|| fastrand::u8(..))
            .take(64)
            .collect(),
    }
}

/// Reads one HTTP/1.1 request (head and `Content-Length` body) from a
/// keep-alive connection. `Ok(None)` when the peer closed cleanly.
async fn read_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Result<Option<TokenRequest>, HarnessError> {
    const HEAD_MAX: usize = 64 * 1024;
    let mut chunk = [0u8; 8192];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(head_len) = parsed.parse(buffer)? {
            let header = |name: &str| {
                parsed
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let body_len = match header("content-length") {
                Some(value) => value.trim().parse::<usize>()?,
                None => 0,
            };
            if body_len > HEAD_MAX {
                return Err("token request body too large".into());
            }
            let method = parsed.method.unwrap_or_default().to_owned();
            let path = parsed.path.unwrap_or_default().to_owned();
            let authorization = header("authorization");
            while buffer.len() < head_len + body_len {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err("connection closed inside a request body".into());
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            let body = buffer[head_len..head_len + body_len].to_vec();
            buffer.drain(..head_len + body_len);
            return Ok(Some(TokenRequest {
                method,
                path,
                authorization,
                body,
            }));
        }
        if buffer.len() > HEAD_MAX {
            return Err("token request head too large".into());
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return if buffer.is_empty() {
                Ok(None)
            } else {
                Err("connection closed inside a request head".into())
            };
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

async fn write_response(stream: &mut TcpStream, status: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncache-control: no-store\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await
}

// ------------------------------------------------------------------ upstream

/// What the upstream saw in one phase.
#[derive(Clone, Copy, Debug, Default)]
struct UpstreamPhase {
    requests: u64,
    valid: u64,
    /// A token the endpoint issued, presented after its expiry.
    expired: u64,
    /// Largest lateness of an expired token.
    expired_late_max: Duration,
    /// A bearer token the endpoint never issued.
    unknown: u64,
    /// No `Authorization: Bearer …` at all.
    missing: u64,
    /// Smallest lifetime left on a valid token.
    min_left: Option<Duration>,
}

/// The HTTPS API behind sidekey: 200 for a valid token, 401 otherwise.
struct Upstream {
    tokens: Arc<TokenEndpoint>,
    phase: Arc<PhaseClock>,
    seen: Mutex<[UpstreamPhase; 3]>,
}

impl Upstream {
    async fn start(
        tls: rustls::ServerConfig,
        tokens: Arc<TokenEndpoint>,
        phase: Arc<PhaseClock>,
    ) -> Result<(Arc<Upstream>, SocketAddr), HarnessError> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let upstream = Arc::new(Upstream {
            tokens,
            phase,
            seen: Mutex::new([UpstreamPhase::default(); 3]),
        });
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let serving = Arc::clone(&upstream);
        tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        eprintln!("upstream: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let upstream = Arc::clone(&serving);
                tokio::spawn(async move {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await
                    else {
                        return;
                    };
                    let service = service_fn(move |request: Request<Incoming>| {
                        let upstream = Arc::clone(&upstream);
                        async move { Ok::<_, Infallible>(upstream.answer(&request)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok((upstream, addr))
    }

    fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Err(rejection) = self.judge(authorization) else {
            return json_response(StatusCode::OK, r#"{"ok":true}"#.to_owned());
        };
        let mut response = json_response(
            StatusCode::UNAUTHORIZED,
            format!(r#"{{"error":"invalid_token","reason":"{rejection}"}}"#),
        );
        if let Ok(value) =
            format!(r#"Bearer error="invalid_token", error_description="{rejection}""#).parse()
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }

    /// Counts one request by its `Authorization` value: `Ok` for a known,
    /// unexpired bearer token, else why not (missing, unknown, expired).
    fn judge(&self, authorization: Option<&str>) -> Result<(), &'static str> {
        let now = Instant::now();
        let token = authorization.and_then(|v| v.strip_prefix("Bearer "));
        let issued = token.and_then(|t| self.tokens.lookup(t));
        let mut seen = lock(&self.seen);
        let seen = &mut seen[self.phase.get() as usize];
        seen.requests += 1;
        match (token, issued) {
            (None, _) => {
                seen.missing += 1;
                Err("missing")
            }
            (Some(_), None) => {
                seen.unknown += 1;
                Err("unknown")
            }
            (Some(_), Some(issued)) if now >= issued.expires => {
                seen.expired += 1;
                seen.expired_late_max = seen.expired_late_max.max(now - issued.expires);
                Err("expired")
            }
            (Some(_), Some(issued)) => {
                seen.valid += 1;
                let left = issued.expires - now;
                seen.min_left = Some(seen.min_left.map_or(left, |m| m.min(left)));
                Ok(())
            }
        }
    }

    fn phase(&self, phase: Phase) -> UpstreamPhase {
        lock(&self.seen)[phase as usize]
    }
}

fn json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A throwaway CA and a server certificate for 127.0.0.1 signed by it; the
/// CA is written to `dir/ca.pem` for sidekey's `[tls] ca_file`.
fn upstream_tls(dir: &Path) -> Result<(rustls::ServerConfig, PathBuf), HarnessError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sidekey soak CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca_cert.pem())?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, ca_path))
}

// ------------------------------------------------------------------- traffic

/// The app's view of one phase.
#[derive(Clone, Debug, Default)]
struct TrafficPhase {
    requests: u64,
    ok: u64,
    /// Non-2xx answers and transport errors, by "STATUS x-sidekey-error" or kind.
    failures: BTreeMap<String, u64>,
    first_ok: Option<Instant>,
    first_503: Option<Instant>,
    last_ok: Option<Instant>,
    /// Non-2xx after this phase's first 2xx.
    failures_after_first_ok: u64,
    /// Non-2xx answers that are not sidekey's 503 `credential_unavailable` JSON.
    off_contract: u64,
    off_contract_examples: Vec<String>,
    /// The open run of consecutive non-2xx: since when and how many.
    bad_run: Option<(Instant, u64)>,
    longest_bad: Duration,
    longest_bad_count: u64,
}

impl TrafficPhase {
    fn close_run(&mut self, at: Instant) {
        if let Some((since, count)) = self.bad_run.take()
            && at - since >= self.longest_bad
        {
            self.longest_bad = at - since;
            self.longest_bad_count = count;
        }
    }

    fn failures_total(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// What one request came back with.
enum Outcome {
    Answer {
        status: StatusCode,
        /// `x-sidekey-error`, if any.
        code: Option<String>,
        /// Whether it is the 503 `credential_unavailable` JSON of the contract.
        contract_503: bool,
    },
    Transport(&'static str),
}

struct Traffic {
    phase: Arc<PhaseClock>,
    phases: Mutex<[TrafficPhase; 3]>,
}

impl Traffic {
    fn record(&self, outcome: Outcome) {
        let now = Instant::now();
        let mut phases = lock(&self.phases);
        let stats = &mut phases[self.phase.get() as usize];
        stats.requests += 1;
        let (key, contract_503) = match outcome {
            Outcome::Answer { status, .. } if status.is_success() => {
                stats.ok += 1;
                stats.first_ok.get_or_insert(now);
                stats.last_ok = Some(now);
                stats.close_run(now);
                return;
            }
            Outcome::Answer {
                status,
                code,
                contract_503,
            } => {
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    stats.first_503.get_or_insert(now);
                }
                let key = format!("{} {}", status.as_u16(), code.as_deref().unwrap_or("-"));
                (key, contract_503)
            }
            Outcome::Transport(kind) => (kind.to_owned(), false),
        };
        if !contract_503 {
            stats.off_contract += 1;
            if stats.off_contract_examples.len() < 3 && !stats.off_contract_examples.contains(&key)
            {
                stats.off_contract_examples.push(key.clone());
            }
        }
        *stats.failures.entry(key).or_default() += 1;
        if stats.first_ok.is_some() {
            stats.failures_after_first_ok += 1;
        }
        match &mut stats.bad_run {
            Some((_, count)) => *count += 1,
            None => stats.bad_run = Some((now, 1)),
        }
    }

    fn phase(&self, phase: Phase) -> TrafficPhase {
        lock(&self.phases)[phase as usize].clone()
    }

    /// Ends the open non-2xx run of `phase` at `at`.
    fn close_phase(&self, phase: Phase, at: Instant) {
        lock(&self.phases)[phase as usize].close_run(at);
    }
}

/// One keep-alive client: GET, read the whole answer, pause, again.
async fn client_loop(
    proxy: SocketAddr,
    traffic: Arc<Traffic>,
    stop: Arc<AtomicBool>,
    pause: Duration,
) {
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut connection = match sender.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => match connect(proxy).await {
                Ok(sender) => sender,
                Err(_) => {
                    traffic.record(Outcome::Transport("connect error"));
                    tokio::time::sleep(pause.max(Duration::from_millis(10))).await;
                    continue;
                }
            },
        };
        let request = Request::get("/v1/soak")
            .header(header::HOST, proxy.to_string())
            .body(Empty::new());
        let Ok(request) = request else {
            return;
        };
        let exchange = async {
            connection.ready().await?;
            let response = connection.send_request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, hyper::Error>((parts, body))
        };
        let outcome = match tokio::time::timeout(CLIENT_TIMEOUT, exchange).await {
            Ok(Ok((parts, body))) => {
                sender = Some(connection);
                classify(&parts, &body)
            }
            Ok(Err(_)) => Outcome::Transport("connection error"),
            Err(_) => Outcome::Transport("client timeout"),
        };
        traffic.record(outcome);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

fn classify(parts: &http::response::Parts, body: &Bytes) -> Outcome {
    let code = parts
        .headers
        .get("x-sidekey-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let body_code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned));
    let contract_503 = parts.status == StatusCode::SERVICE_UNAVAILABLE
        && json
        && code.as_deref() == Some("credential_unavailable")
        && body_code.as_deref() == Some("credential_unavailable");
    Outcome::Answer {
        status: parts.status,
        code,
        contract_503,
    }
}

async fn connect(
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, HarnessError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One GET on a fresh connection: status and body.
async fn get(addr: SocketAddr, path: &str) -> Result<(StatusCode, Bytes), HarnessError> {
    let mut sender = connect(addr).await?;
    let request = Request::get(path)
        .header(header::HOST, addr.to_string())
        .body(Empty::new())?;
    let response = tokio::time::timeout(Duration::from_secs(5), async {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, body))
    })
    .await??;
    Ok(response)
}

// ------------------------------------------------------------------- sidekey

/// The sidekey child process and where it listens. Killed if dropped early.
struct Sidekey {
    child: Child,
    pid: u32,
    log: PathBuf,
    proxy: SocketAddr,
    admin: SocketAddr,
}

/// Resident memory, open file descriptors and threads of a process.
#[derive(Clone, Copy, Debug)]
struct ProcSample {
    rss_kib: u64,
    fds: usize,
    threads: u64,
}

impl ProcSample {
    fn of(pid: u32) -> Option<ProcSample> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
        Some(ProcSample {
            rss_kib: field("VmRSS:")?,
            fds,
            threads: field("Threads:").unwrap_or(0),
        })
    }

    fn describe(sample: Option<ProcSample>) -> String {
        match sample {
            Some(s) => format!(
                "RSS {:.1} MiB, {} fds, {} threads",
                s.rss_kib as f64 / 1024.0,
                s.fds,
                s.threads
            ),
            None => "n/a".to_owned(),
        }
    }
}

fn config_text(token_url: &str, upstream: SocketAddr, ca_file: &Path) -> String {
    format!(
        r#"# Generated by examples/soak.rs.
shutdown_grace = "2s"

[admin]
listen = "127.0.0.1:0"

[log]
level = "info"
format = "json"

[tls]
ca_file = "{ca}"

[credentials.soak]
type = "oauth2"
token_url = "{token_url}"
client_id = {{ env = "SOAK_CLIENT_ID" }}
client_secret = {{ env = "SOAK_CLIENT_SECRET" }}
allow_insecure_http = true
timeout = "1s"

[[routes]]
name = "soak"
listen = "127.0.0.1:0"
upstream = "https://{upstream}"
credential = "soak"
"#,
        ca = ca_file.display(),
    )
}

impl Sidekey {
    async fn start(
        binary: &Path,
        config: &Path,
        log: PathBuf,
        client_id: &str,
        client_secret: &str,
    ) -> Result<Sidekey, HarnessError> {
        let file =
            std::fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let child = Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("SOAK_CLIENT_ID", client_id)
            .env("SOAK_CLIENT_SECRET", client_secret)
            .env_remove("RUST_LOG")
            .env_remove("SIDEKEY_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("start {}: {e}", binary.display()))?;
        let pid = child.id().ok_or("sidekey exited at once")?;
        let mut sidekey = Sidekey {
            child,
            pid,
            log,
            proxy: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let deadline = Instant::now() + STARTUP_LIMIT;
        let (proxy, admin) = loop {
            if let Some(status) = sidekey.child.try_wait()? {
                return Err(format!(
                    "sidekey exited ({status}) before listening; log:\n{}",
                    sidekey.log_tail(20)
                )
                .into());
            }
            let text = std::fs::read_to_string(&sidekey.log).unwrap_or_default();
            if let (Some(proxy), Some(admin)) = (
                listen_address(&text, "proxy listening"),
                listen_address(&text, "admin listening"),
            ) {
                break (proxy, admin);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "sidekey did not log its listeners within {STARTUP_LIMIT:?}; log:\n{}",
                    sidekey.log_tail(20)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        sidekey.proxy = proxy;
        sidekey.admin = admin;
        loop {
            if let Ok((status, _)) = get(admin, "/readyz").await
                && status == StatusCode::OK
            {
                return Ok(sidekey);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "sidekey not ready within {STARTUP_LIMIT:?}; log:\n{}",
                    sidekey.log_tail(20)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn sample(&self) -> Option<ProcSample> {
        ProcSample::of(self.pid)
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, then wait (at most 10 s) for the exit status.
    async fn stop(mut self) -> Result<std::process::ExitStatus, HarnessError> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await?;
        if !sent.success() {
            return Err("kill -TERM failed".into());
        }
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.kill().await?;
                Err("sidekey did not exit within 10 s of SIGTERM (killed)".into())
            }
        }
    }
}

/// How many issued tokens appear in `log`: one pass over the text, looking
/// at what follows each occurrence of the token prefix.
fn leaked_tokens(log: &str, tokens: &HashSet<String>) -> usize {
    let token_len = TOKEN_PREFIX.len() + TOKEN_BYTES.div_ceil(3) * 4;
    let mut found = HashSet::new();
    for (at, _) in log.match_indices(TOKEN_PREFIX) {
        if let Some(candidate) = log.get(at..at + token_len)
            && tokens.contains(candidate)
        {
            found.insert(candidate);
        }
    }
    found.len()
}

/// The `listen` field of the JSON log line whose message contains `message`.
fn listen_address(log: &str, message: &str) -> Option<SocketAddr> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| {
            line["message"]
                .as_str()
                .is_some_and(|m| m.contains(message))
        })
        .and_then(|line| line["listen"].as_str()?.parse().ok())
}

// ------------------------------------------------------------------- reports

/// Token calls per TTL window over `[from, to)` (full windows only).
#[derive(Clone, Copy, Debug, Default)]
struct Windows {
    windows: usize,
    calls_mean: f64,
    calls_max: usize,
    issued_mean: f64,
    issued_min: usize,
}

fn windows(calls: &[Call], from: Instant, to: Instant, ttl: Duration) -> Windows {
    let n = (to.saturating_duration_since(from).as_secs_f64() / ttl.as_secs_f64()).floor() as usize;
    if n == 0 {
        return Windows::default();
    }
    let mut all = vec![0usize; n];
    let mut issued = vec![0usize; n];
    for call in calls.iter().filter(|c| c.at >= from) {
        let index = (call.at.duration_since(from).as_secs_f64() / ttl.as_secs_f64()) as usize;
        if index < n {
            all[index] += 1;
            if matches!(call.outcome, CallOutcome::Issued) {
                issued[index] += 1;
            }
        }
    }
    Windows {
        windows: n,
        calls_mean: all.iter().sum::<usize>() as f64 / n as f64,
        calls_max: all.iter().copied().max().unwrap_or(0),
        issued_mean: issued.iter().sum::<usize>() as f64 / n as f64,
        issued_min: issued.iter().copied().min().unwrap_or(0),
    }
}

/// Token calls in `[from, to)`: total, issued, refused, failures by kind.
#[derive(Clone, Debug, Default)]
struct CallCounts {
    total: usize,
    issued: usize,
    refused: usize,
    failed: BTreeMap<Failure, usize>,
}

impl CallCounts {
    fn of(calls: &[Call], from: Instant, to: Instant) -> CallCounts {
        let mut counts = CallCounts::default();
        for call in calls.iter().filter(|c| c.at >= from && c.at < to) {
            counts.total += 1;
            match call.outcome {
                CallOutcome::Issued => counts.issued += 1,
                CallOutcome::Refused => counts.refused += 1,
                CallOutcome::Failed(kind) => *counts.failed.entry(kind).or_default() += 1,
            }
        }
        counts
    }

    fn failures(&self) -> String {
        let failed: usize = self.failed.values().sum();
        if failed == 0 {
            return "0".to_owned();
        }
        let kinds: Vec<String> = self
            .failed
            .iter()
            .map(|(kind, n)| format!("{} {n}", kind.label()))
            .collect();
        format!("{failed} ({})", kinds.join(", "))
    }
}

fn failures_text(failures: &BTreeMap<String, u64>) -> String {
    if failures.is_empty() {
        return "none".to_owned();
    }
    failures
        .iter()
        .map(|(key, n)| format!("{key}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

fn progress_line(
    phase: Phase,
    since: Instant,
    traffic: &TrafficPhase,
    upstream: &UpstreamPhase,
    calls: &[Call],
    ttl: Duration,
    sample: Option<ProcSample>,
) -> String {
    let now = Instant::now();
    let elapsed = now - since;
    let counts = CallCounts::of(calls, since, now);
    let w = windows(calls, since, now, ttl);
    let mut open = traffic.clone();
    open.close_run(now);
    format!(
        "[{:>8} {:>5.0}s] requests {} ({:.0}/s), 2xx {}, non-2xx {} [{}], longest non-2xx run {} | \
         token calls {} (issued {}, failed {}), per {}-s window mean {:.2} max {} | \
         upstream: expired {}, unknown {} | sidekey {}",
        phase.name(),
        elapsed.as_secs_f64(),
        traffic.requests,
        traffic.requests as f64 / elapsed.as_secs_f64().max(0.001),
        traffic.ok,
        traffic.failures_total(),
        failures_text(&traffic.failures),
        secs(open.longest_bad),
        counts.total,
        counts.issued,
        counts.failures(),
        ttl.as_secs(),
        w.calls_mean,
        w.calls_max,
        upstream.expired,
        upstream.unknown,
        ProcSample::describe(sample),
    )
}

/// One row of the summary: what, the figure, the target, whether it is met.
struct Row {
    what: String,
    value: String,
    target: &'static str,
    met: Option<bool>,
}

fn row(what: impl Into<String>, value: impl Into<String>) -> Row {
    Row {
        what: what.into(),
        value: value.into(),
        target: "",
        met: None,
    }
}

fn check(
    what: impl Into<String>,
    value: impl Into<String>,
    target: &'static str,
    met: bool,
) -> Row {
    Row {
        what: what.into(),
        value: value.into(),
        target,
        met: Some(met),
    }
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from("| measure | value | target | |\n| --- | --- | --- | --- |\n");
    for r in rows {
        let verdict = match r.met {
            Some(true) => "ok",
            Some(false) => "**MISSED**",
            None => "",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            r.what, r.value, r.target, verdict
        );
    }
    out
}

// ---------------------------------------------------------------------- run

/// The size of sidekey's log and its lines by level.
struct LogStats {
    bytes: usize,
    warn: usize,
    error: usize,
}

/// Instants at which the phases started and ended.
struct Timeline {
    soak: (Instant, Instant),
    outage: Option<(Instant, Instant)>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    tokio::select! {
        result = run(args) => match result {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("soak: {e}");
                ExitCode::from(2)
            }
        },
        _ = tokio::signal::ctrl_c() => {
            eprintln!("soak: interrupted; sidekey stopped");
            ExitCode::from(130)
        }
    }
}

/// Runs every phase and prints the summary; `Ok(true)` when every target is met.
async fn run(args: Args) -> Result<bool, HarnessError> {
    if args.ttl == 0 || args.concurrency == 0 || args.report_secs == 0 || args.minutes < 0.0 {
        return Err(
            "--ttl, --concurrency and --report-secs must be positive, --minutes >= 0".into(),
        );
    }
    let binary = args
        .sidekey
        .canonicalize()
        .map_err(|e| format!("sidekey binary {}: {e}", args.sidekey.display()))?;
    let ttl = Duration::from_secs(args.ttl);
    let soak_for = Duration::from_secs_f64(args.minutes * 60.0);
    let outage_for = Duration::from_secs(args.outage_secs);
    let pause = Duration::from_millis(args.pause_ms);
    let report_every = Duration::from_secs(args.report_secs);

    let dir = tempfile::Builder::new().prefix("sidekey-soak-").tempdir()?;
    let client_id = format!(
        "soak-client-{}",
        URL_SAFE_NO_PAD.encode(std::array::from_fn::<u8, 6, _>(|_| fastrand::u8(..)))
    );
    let client_secret =
        URL_SAFE_NO_PAD.encode(std::array::from_fn::<u8, 24, _>(|_| fastrand::u8(..)));

    let phase = Arc::new(PhaseClock::default());
    let endpoint = TokenEndpoint::start(
        ttl,
        args.failure_rate,
        args.outage_kind,
        &client_id,
        &client_secret,
    )
    .await?;
    let (tls, ca_file) = upstream_tls(dir.path())?;
    let (upstream, upstream_addr) =
        Upstream::start(tls, Arc::clone(&endpoint), Arc::clone(&phase)).await?;
    let config = dir.path().join("sidekey.toml");
    std::fs::write(
        &config,
        config_text(&endpoint.url(), upstream_addr, &ca_file),
    )?;
    let log = dir.path().join("sidekey.log");

    eprintln!(
        "soak: sidekey {}; token endpoint {} (ttl {} s, failure rate {:.0} %), upstream https://{}, dir {}",
        binary.display(),
        endpoint.url(),
        args.ttl,
        args.failure_rate * 100.0,
        upstream_addr,
        dir.path().display()
    );
    let sidekey = Sidekey::start(&binary, &config, log.clone(), &client_id, &client_secret).await?;
    let start_sample = sidekey.sample();
    eprintln!(
        "soak: sidekey pid {} ready: proxy {}, admin {}; {}",
        sidekey.pid,
        sidekey.proxy,
        sidekey.admin,
        ProcSample::describe(start_sample)
    );
    eprintln!(
        "soak: {} clients, {} ms pause; soak {}, then outage {} ({})",
        args.concurrency,
        args.pause_ms,
        secs(soak_for),
        secs(outage_for),
        args.outage_kind.label()
    );

    // ---- soak
    let traffic = Arc::new(Traffic {
        phase: Arc::clone(&phase),
        phases: Mutex::new(Default::default()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        clients.spawn(client_loop(
            sidekey.proxy,
            Arc::clone(&traffic),
            Arc::clone(&stop),
            pause,
        ));
    }
    let progress = |phase: Phase, since: Instant| {
        progress_line(
            phase,
            since,
            &traffic.phase(phase),
            &upstream.phase(phase),
            &endpoint.calls(),
            ttl,
            sidekey.sample(),
        )
    };
    let soak_start = Instant::now();
    // The first report's sample is the steady state under load to compare
    // the end of the soak with (a leak shows as growth between the two).
    let mut loaded_sample = None;
    run_for(soak_for, report_every, || {
        loaded_sample = loaded_sample.or_else(|| sidekey.sample());
        eprintln!("{}", progress(Phase::Soak, soak_start));
    })
    .await;
    let soak_end = Instant::now();
    traffic.close_phase(Phase::Soak, soak_end);
    let soak_end_sample = sidekey.sample();
    eprintln!("{}", progress(Phase::Soak, soak_start));

    // ---- outage
    let mut outage = None;
    if !outage_for.is_zero() {
        phase.set(Phase::Outage);
        endpoint.set_health(Health::Down);
        let outage_start = Instant::now();
        eprintln!("soak: token endpoint down for {}", secs(outage_for));
        run_for(outage_for, report_every, || {
            eprintln!("{}", progress(Phase::Outage, outage_start));
        })
        .await;
        let restored = Instant::now();
        phase.set(Phase::Recovery);
        endpoint.set_health(Health::Healthy);
        traffic.close_phase(Phase::Outage, restored);
        eprintln!("{}", progress(Phase::Outage, outage_start));
        eprintln!("soak: token endpoint restored");
        outage = Some((outage_start, restored));
        let deadline = restored + RECOVERY_WAIT_MAX;
        while traffic.phase(Phase::Recovery).first_ok.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(AFTER_RECOVERY).await;
        eprintln!("{}", progress(Phase::Recovery, restored));
    }
    stop.store(true, Ordering::Relaxed);
    while clients.join_next().await.is_some() {}
    // Let sidekey notice the closed client connections before counting fds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let end_sample = sidekey.sample();
    let exit = sidekey.stop().await;

    let timeline = Timeline {
        soak: (soak_start, soak_end),
        outage,
    };
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let leaked = leaked_tokens(&log_text, &endpoint.tokens())
        + usize::from(log_text.contains(&client_secret));
    let level_lines = |level: &str| {
        let needle = format!(r#""level":"{level}""#);
        log_text.lines().filter(|l| l.contains(&needle)).count()
    };
    let log_stats = LogStats {
        bytes: log_text.len(),
        warn: level_lines("WARN"),
        error: level_lines("ERROR"),
    };

    let rows = summary(
        &args,
        &timeline,
        &traffic,
        &upstream,
        &endpoint.calls(),
        [start_sample, loaded_sample, soak_end_sample, end_sample],
        leaked,
        &log_stats,
        &exit,
    );
    let met = rows.iter().all(|r| r.met != Some(false));
    println!(
        "\n## sidekey soak: {} min, {} s tokens, {:.0} % token-endpoint failures, {} s outage ({})\n",
        args.minutes,
        args.ttl,
        args.failure_rate * 100.0,
        args.outage_secs,
        args.outage_kind.label()
    );
    println!("{}", table(&rows));
    println!(
        "{}",
        if met {
            "Every target met."
        } else {
            "Some targets MISSED (exit status 1)."
        }
    );
    if args.keep_dir {
        let kept = dir.keep();
        eprintln!("soak: kept {}", kept.display());
    }
    Ok(met)
}

/// Waits `total`, calling `report` every `every`.
async fn run_for(total: Duration, every: Duration, mut report: impl FnMut()) {
    let end = Instant::now() + total;
    let mut next = Instant::now() + every;
    loop {
        let now = Instant::now();
        if now >= end {
            return;
        }
        if next >= end {
            tokio::time::sleep_until(end).await;
            return;
        }
        tokio::time::sleep_until(next).await;
        report();
        next += every;
    }
}

#[allow(clippy::too_many_arguments)]
fn summary(
    args: &Args,
    timeline: &Timeline,
    traffic: &Traffic,
    upstream: &Upstream,
    calls: &[Call],
    samples: [Option<ProcSample>; 4],
    leaked: usize,
    log: &LogStats,
    exit: &Result<std::process::ExitStatus, HarnessError>,
) -> Vec<Row> {
    let ttl = Duration::from_secs(args.ttl);
    let (soak_start, soak_end) = timeline.soak;
    let soak = traffic.phase(Phase::Soak);
    let soak_up = upstream.phase(Phase::Soak);
    let soak_calls = CallCounts::of(calls, soak_start, soak_end);
    let w = windows(calls, soak_start, soak_end, ttl);
    let elapsed = soak_end - soak_start;
    let refused = calls
        .iter()
        .filter(|c| matches!(c.outcome, CallOutcome::Refused))
        .count();
    let mut rows = vec![
        row("**soak phase**", format!("{} of traffic", secs(elapsed))),
        row(
            "requests sent",
            format!(
                "{} ({:.0}/s)",
                soak.requests,
                soak.requests as f64 / elapsed.as_secs_f64().max(0.001)
            ),
        ),
        row("2xx", soak.ok.to_string()),
        check(
            "non-2xx (incl. transport errors)",
            format!(
                "{} [{}]",
                soak.failures_total(),
                failures_text(&soak.failures)
            ),
            "0",
            soak.failures_total() == 0,
        ),
        row(
            "longest run of consecutive non-2xx",
            format!(
                "{} ({} answers)",
                secs(soak.longest_bad),
                soak.longest_bad_count
            ),
        ),
        row(
            "token requests",
            format!(
                "{} (issued {}, injected failures {})",
                soak_calls.total,
                soak_calls.issued,
                soak_calls.failures()
            ),
        ),
        row(
            format!("token requests per {} s window", args.ttl),
            format!(
                "mean {:.2}, max {} over {} windows; tokens issued per window mean {:.2}, min {}",
                w.calls_mean, w.calls_max, w.windows, w.issued_mean, w.issued_min
            ),
        ),
        row(
            "upstream requests (incl. sidekey's retries)",
            soak_up.requests.to_string(),
        ),
        check(
            "expired tokens seen upstream",
            late(&soak_up),
            "0",
            soak_up.expired == 0,
        ),
        check(
            "unknown tokens seen upstream",
            (soak_up.unknown + soak_up.missing).to_string(),
            "0",
            soak_up.unknown + soak_up.missing == 0,
        ),
        row(
            "least lifetime left on a token upstream",
            soak_up.min_left.map_or("n/a".to_owned(), secs),
        ),
        check(
            "token requests sidekey got wrong (method, path, credentials, grant)",
            refused.to_string(),
            "0",
            refused == 0,
        ),
    ];
    if let Some((outage_start, restored)) = timeline.outage {
        let during = traffic.phase(Phase::Outage);
        let during_up = upstream.phase(Phase::Outage);
        let after = traffic.phase(Phase::Recovery);
        let after_up = upstream.phase(Phase::Recovery);
        let outage_calls = CallCounts::of(calls, outage_start, restored);
        let offsets: Vec<String> = calls
            .iter()
            .filter(|c| c.at >= outage_start && c.at < restored)
            .map(|c| format!("{:.1}", (c.at - outage_start).as_secs_f64()))
            .collect();
        let first_call_after = calls
            .iter()
            .find(|c| c.at >= restored)
            .map(|c| c.at - restored);
        let recovery = after.first_ok.map(|at| at - restored);
        let expect_503 = restored - outage_start > ttl;
        rows.extend([
            row(
                "**outage phase**",
                format!(
                    "{} full token-endpoint outage ({})",
                    secs(restored - outage_start),
                    args.outage_kind.label()
                ),
            ),
            row(
                "requests sent",
                format!(
                    "{} (2xx {}, non-2xx {})",
                    during.requests,
                    during.ok,
                    during.failures_total()
                ),
            ),
            row("answers", failures_text(&during.failures)),
            check(
                "outage start → first 503",
                during
                    .first_503
                    .map_or("none".to_owned(), |at| secs(at - outage_start)),
                "a 503 once the token expires",
                !expect_503 || during.first_503.is_some(),
            ),
            row(
                "outage start → last 2xx",
                during
                    .last_ok
                    .map_or("none".to_owned(), |at| secs(at - outage_start)),
            ),
            check(
                "non-2xx other than 503 `credential_unavailable` JSON",
                if during.off_contract == 0 {
                    "0".to_owned()
                } else {
                    format!(
                        "{} (e.g. {})",
                        during.off_contract,
                        during.off_contract_examples.join(", ")
                    )
                },
                "0",
                during.off_contract == 0,
            ),
            check(
                "expired tokens seen upstream",
                late(&during_up),
                "0",
                during_up.expired == 0,
            ),
            row(
                "token requests during the outage",
                format!(
                    "{} (failed {}) at +{} s",
                    outage_calls.total,
                    outage_calls.failures(),
                    offsets.join(", +")
                ),
            ),
            row("**recovery**", "token endpoint answers again"),
            row(
                "restore → first token request",
                first_call_after.map_or("none".to_owned(), secs),
            ),
            check(
                "restore → first 200",
                recovery.map_or(format!("none within {}", secs(RECOVERY_WAIT_MAX)), secs),
                "≲ 1 s (missed > 2 s)",
                recovery.is_some_and(|r| r <= RECOVERY_LIMIT),
            ),
            row(
                "non-2xx after the first 200",
                format!(
                    "{} (all answers of the phase: {})",
                    after.failures_after_first_ok,
                    failures_text(&after.failures)
                ),
            ),
            check(
                "expired tokens seen upstream",
                late(&after_up),
                "0",
                after_up.expired == 0,
            ),
        ]);
        let unknown = during_up.unknown + during_up.missing + after_up.unknown + after_up.missing;
        rows.push(check(
            "unknown tokens seen upstream (outage, recovery)",
            unknown.to_string(),
            "0",
            unknown == 0,
        ));
    }
    let [start, loaded, soak_end_sample, end] = samples;
    rows.extend([
        row("**sidekey process**", ""),
        row(
            "at start (ready, before traffic)",
            ProcSample::describe(start),
        ),
        row(
            format!("after {} s of soak (first report)", args.report_secs),
            ProcSample::describe(loaded),
        ),
        row(
            "end of the soak phase",
            ProcSample::describe(soak_end_sample),
        ),
        row(
            "end of the run (clients gone 1 s)",
            ProcSample::describe(end),
        ),
        check(
            "tokens or client secret in sidekey's log",
            leaked.to_string(),
            "0",
            leaked == 0,
        ),
        row(
            "sidekey's log",
            format!(
                "{:.1} MiB: {} warn lines, {} error lines",
                log.bytes as f64 / 1_048_576.0,
                log.warn,
                log.error
            ),
        ),
        match exit {
            Ok(status) => check(
                "exit on SIGTERM",
                status.to_string(),
                "exit status 0",
                status.success(),
            ),
            Err(e) => check("exit on SIGTERM", e.to_string(), "exit status 0", false),
        },
    ]);
    rows
}

fn late(up: &UpstreamPhase) -> String {
    if up.expired == 0 {
        "0".to_owned()
    } else {
        format!(
            "{} (up to {} past expiry)",
            up.expired,
            secs(up.expired_late_max)
        )
    }
}

#[cfg(test)]
mod tests {
    //! The harness's own parts: the fault injector, the upstream's verdicts
    //! and the bookkeeping the report is built from.

    use super::*;

    fn token_request(authorization: &str) -> Vec<u8> {
        let body = "grant_type=client_credentials";
        format!(
            "POST /oauth/token HTTP/1.1\r\nhost: soak\r\nauthorization: {authorization}\r\n\
             content-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// Reads one response: `Ok(None)` on a clean close before any byte.
    async fn read_answer(stream: &mut TcpStream) -> std::io::Result<Option<(u16, Vec<u8>)>> {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut response = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = response.parse(&buffer) {
                let length = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                    .expect("content-length");
                if buffer.len() >= head + length {
                    let status = response.code.expect("status");
                    return Ok(Some((status, buffer[head..head + length].to_vec())));
                }
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return if buffer.is_empty() {
                    Ok(None)
                } else {
                    Err(std::io::ErrorKind::UnexpectedEof.into())
                };
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
    }

    async fn endpoint(failure_rate: f64) -> Arc<TokenEndpoint> {
        TokenEndpoint::start(
            Duration::from_secs(3),
            failure_rate,
            OutageKind::Mixed,
            "soak:client",
            "s3cret+/ %",
        )
        .await
        .expect("token endpoint starts")
    }

    #[test]
    fn failure_rate_is_a_fraction_or_a_percentage() {
        assert_eq!(parse_rate("0.2"), Ok(0.2));
        assert_eq!(parse_rate("20%"), Ok(0.2));
        assert_eq!(parse_rate("0"), Ok(0.0));
        assert!(parse_rate("1.5").is_err());
        assert!(parse_rate("-1%").is_err());
        assert!(parse_rate("often").is_err());
    }

    #[tokio::test]
    async fn endpoint_issues_tokens_on_a_keep_alive_connection_and_refuses_bad_requests() {
        let endpoint = endpoint(0.0).await;
        // RFC 6749 §2.3.1: each part form-encoded before Basic.
        assert_eq!(
            endpoint.basic,
            format!(
                "Basic {}",
                STANDARD.encode("soak%3Aclient:s3cret%2B%2F+%25")
            )
        );
        let mut stream = TcpStream::connect(endpoint.addr).await.expect("connect");
        let mut issued = Vec::new();
        for _ in 0..2 {
            stream
                .write_all(&token_request(&endpoint.basic))
                .await
                .expect("write");
            let (status, body) = read_answer(&mut stream)
                .await
                .expect("read")
                .expect("answer");
            assert_eq!(status, 200);
            let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(json["expires_in"], 3);
            assert_eq!(json["token_type"], "Bearer");
            issued.push(json["access_token"].as_str().expect("token").to_owned());
        }
        assert_ne!(issued[0], issued[1]);
        assert_eq!(endpoint.tokens(), issued.iter().cloned().collect());

        stream
            .write_all(&token_request("Basic c29tZW9uZTplbHNl"))
            .await
            .expect("write");
        let (status, _) = read_answer(&mut stream)
            .await
            .expect("read")
            .expect("answer");
        assert_eq!(status, 401);
        let outcomes: Vec<_> = endpoint.calls().iter().map(|c| c.outcome).collect();
        assert!(matches!(
            outcomes[..],
            [
                CallOutcome::Issued,
                CallOutcome::Issued,
                CallOutcome::Refused
            ]
        ));
    }

    #[tokio::test]
    async fn mixed_outage_answers_500_hangs_sends_garbage_and_resets_in_turn() {
        let endpoint = endpoint(0.0).await;
        endpoint.set_health(Health::Down);
        let request = token_request(&endpoint.basic);

        let mut stream = TcpStream::connect(endpoint.addr).await.expect("connect");
        stream.write_all(&request).await.expect("write");
        let (status, _) = read_answer(&mut stream)
            .await
            .expect("read")
            .expect("answer");
        assert_eq!(status, 500);
        stream.write_all(&request).await.expect("write");
        let hang = tokio::time::timeout(Duration::from_millis(300), read_answer(&mut stream)).await;
        assert!(hang.is_err(), "the second call hangs: {hang:?}");
        drop(stream);

        let mut stream = TcpStream::connect(endpoint.addr).await.expect("connect");
        stream.write_all(&request).await.expect("write");
        let (status, body) = read_answer(&mut stream)
            .await
            .expect("read")
            .expect("answer");
        assert_eq!(status, 200);
        let token = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("access_token")?.as_str().map(str::to_owned));
        assert_eq!(token, None, "garbage carries no usable token");
        stream.write_all(&request).await.expect("write");
        let reset = read_answer(&mut stream).await;
        assert!(
            matches!(&reset, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "the fourth call is reset: {reset:?}"
        );

        let failures: Vec<_> = endpoint
            .calls()
            .iter()
            .map(|c| match c.outcome {
                CallOutcome::Failed(kind) => Some(kind),
                _ => None,
            })
            .collect();
        assert_eq!(failures, Failure::ALL.map(Some).to_vec());
        assert!(endpoint.tokens().is_empty());
    }

    #[tokio::test]
    async fn random_failures_follow_the_rate() {
        let endpoint = endpoint(0.5).await;
        let draws = 2000;
        let failed = (0..draws).filter(|_| endpoint.decide().is_some()).count();
        assert!((800..1200).contains(&failed), "{failed} of {draws}");
        let always = TokenEndpoint::start(
            Duration::from_secs(3),
            1.0,
            OutageKind::ServerError,
            "id",
            "secret",
        )
        .await
        .expect("starts");
        let kinds: std::collections::BTreeSet<_> =
            (0..200).filter_map(|_| always.decide()).collect();
        assert_eq!(kinds.len(), 4, "every kind is drawn: {kinds:?}");
        always.set_health(Health::Healthy);
        assert_eq!((0..200).filter_map(|_| always.decide()).count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn upstream_tells_valid_expired_unknown_and_missing_tokens_apart() {
        let endpoint = endpoint(0.0).await;
        let upstream = Upstream {
            tokens: Arc::clone(&endpoint),
            phase: Arc::new(PhaseClock::default()),
            seen: Mutex::new(Default::default()),
        };
        let token = endpoint.issue();
        let bearer = format!("Bearer {token}");
        tokio::time::advance(Duration::from_millis(2999)).await;
        assert_eq!(upstream.judge(Some(&bearer)), Ok(()));
        tokio::time::advance(Duration::from_millis(6)).await;
        assert_eq!(upstream.judge(Some(&bearer)), Err("expired"));
        assert_eq!(upstream.judge(Some("Bearer made-up")), Err("unknown"));
        assert_eq!(
            upstream.judge(Some(&format!("Basic {token}"))),
            Err("missing")
        );
        assert_eq!(upstream.judge(None), Err("missing"));

        upstream.phase.set(Phase::Outage);
        assert_eq!(upstream.judge(Some(&bearer)), Err("expired"));
        let soak = upstream.phase(Phase::Soak);
        assert_eq!(
            (
                soak.requests,
                soak.valid,
                soak.expired,
                soak.unknown,
                soak.missing
            ),
            (5, 1, 1, 1, 2)
        );
        assert_eq!(soak.min_left, Some(Duration::from_millis(1)));
        assert_eq!(soak.expired_late_max, Duration::from_millis(5));
        assert_eq!(upstream.phase(Phase::Outage).expired, 1);
    }

    #[test]
    fn answers_are_classified_and_non_2xx_runs_measured() {
        let parts = |status: u16, code: Option<&str>, body: &str| {
            let mut response = Response::builder()
                .status(status)
                .header(header::CONTENT_TYPE, "application/json");
            if let Some(code) = code {
                response = response.header("x-sidekey-error", code);
            }
            let (parts, ()) = response.body(()).expect("response").into_parts();
            classify(&parts, &Bytes::from(body.to_owned()))
        };
        let traffic = Traffic {
            phase: Arc::new(PhaseClock::default()),
            phases: Mutex::new(Default::default()),
        };
        traffic.record(parts(200, None, r#"{"ok":true}"#));
        traffic.record(parts(
            503,
            Some("credential_unavailable"),
            r#"{"error":"credential_unavailable","message":"…"}"#,
        ));
        traffic.record(parts(503, Some("credential_unavailable"), "not json"));
        traffic.record(parts(
            502,
            Some("upstream_unreachable"),
            r#"{"error":"upstream_unreachable"}"#,
        ));
        traffic.record(Outcome::Transport("client timeout"));
        std::thread::sleep(Duration::from_millis(20));
        traffic.record(parts(200, None, r#"{"ok":true}"#));

        let soak = traffic.phase(Phase::Soak);
        assert_eq!((soak.requests, soak.ok, soak.failures_total()), (6, 2, 4));
        assert_eq!(soak.failures["503 credential_unavailable"], 2);
        assert_eq!(soak.failures["502 upstream_unreachable"], 1);
        assert_eq!(soak.failures["client timeout"], 1);
        assert_eq!(soak.off_contract, 3, "only the JSON 503 is the contract's");
        assert_eq!(soak.longest_bad_count, 4);
        assert!(soak.longest_bad >= Duration::from_millis(20));
        assert!(soak.first_503.is_some());
        assert_eq!(soak.failures_after_first_ok, 4);
    }

    #[test]
    fn token_calls_are_counted_per_ttl_window() {
        let start = Instant::now();
        let ttl = Duration::from_secs(3);
        let call = |ms: u64, outcome| Call {
            at: start + Duration::from_millis(ms),
            outcome,
        };
        let calls = [
            call(100, CallOutcome::Issued),
            call(2300, CallOutcome::Failed(Failure::Hang)),
            call(3300, CallOutcome::Issued),
            call(5500, CallOutcome::Issued),
            call(8999, CallOutcome::Issued), // in the third, partial window: not counted
        ];
        let w = windows(&calls, start, start + Duration::from_millis(8000), ttl);
        assert_eq!(w.windows, 2);
        assert_eq!(w.calls_max, 2);
        assert!((w.calls_mean - 2.0).abs() < 1e-9);
        assert!((w.issued_mean - 1.5).abs() < 1e-9);
        assert_eq!(w.issued_min, 1);
        let counts = CallCounts::of(&calls, start, start + Duration::from_secs(9));
        assert_eq!((counts.total, counts.issued), (5, 4));
        assert_eq!(counts.failures(), "1 (hang 1)");
    }

    #[test]
    fn a_token_in_the_log_is_found() {
        let token = format!(
            "{TOKEN_PREFIX}{}",
            URL_SAFE_NO_PAD.encode([7u8; TOKEN_BYTES])
        );
        let other = format!(
            "{TOKEN_PREFIX}{}",
            URL_SAFE_NO_PAD.encode([8u8; TOKEN_BYTES])
        );
        let tokens: HashSet<String> = [token.clone(), other].into();
        let log = format!(
            "{{\"message\":\"credential soak\"}}\n{{\"message\":\"sent Bearer {token}\"}}\n{TOKEN_PREFIX}short"
        );
        assert_eq!(leaked_tokens(&log, &tokens), 1);
        assert_eq!(leaked_tokens("nothing here", &tokens), 0);
    }

    #[test]
    fn listeners_are_read_from_json_log_lines() {
        let log = "not json\n\
            {\"level\":\"INFO\",\"message\":\"proxy listening\",\"listen\":\"127.0.0.1:4001\",\"tls\":false}\n\
            {\"level\":\"INFO\",\"message\":\"admin listening\",\"listen\":\"127.0.0.1:4002\"}\n";
        assert_eq!(
            listen_address(log, "proxy listening"),
            Some(SocketAddr::from(([127, 0, 0, 1], 4001)))
        );
        assert_eq!(
            listen_address(log, "admin listening"),
            Some(SocketAddr::from(([127, 0, 0, 1], 4002)))
        );
        assert_eq!(listen_address(log, "forward proxy listening"), None);
    }
}
