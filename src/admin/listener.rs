//! The admin listener: accepting connections under the admin cap (at the
//! cap, a new connection closes the oldest: see [`serve`]), telling a TLS
//! client (a probe with `scheme: HTTPS`), an HTTP/2 one (a `grpc:` probe)
//! or a PROXY protocol header from HTTP/1 by the first bytes
//! ([`crate::preface`]) and refusing those ([`crate::mismatch`]: closed,
//! GOAWAY `HTTP_1_1_REQUIRED`, or a `400` naming the header, each with a
//! WARN line saying what to change), and answering each request
//! ([`respond`]) from the endpoint modules.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use super::{AdminState, exposition, readyz, status_page};
use crate::cache::RedisState;
use crate::config::ConnLimits;
use crate::conn;
use crate::credential::CredentialStatus;
use crate::mismatch::{Mismatches, PlainListener};
use crate::preface::{self, Protocol};

/// Serve the admin endpoint until `shutdown` turns true, with at most
/// `limits.max_connections` connections open, each closed after
/// `limits.idle_timeout` without a request.
///
/// At the cap a new connection closes the oldest one, rather than waiting
/// in the listen backlog: idle or slow clients (a scraper leaking
/// connections, a slow-loris) would otherwise keep a health probe waiting
/// for the idle timeout of every connection ahead of it. A probe sends its
/// request at once and is answered in microseconds, so it is not the one
/// closed.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    // No waiting under a gate: the cap is kept here, by closing the oldest.
    let mut listener = conn::Listener::new(listener, conn::Gate::new("admin", usize::MAX));
    let mismatches = Arc::new(Mismatches::new(listener.local()));
    let mut open: VecDeque<AbortHandle> = VecDeque::new();
    let mut logged_full: Option<Instant> = None;
    loop {
        tokio::select! {
            (stream, peer, _) = listener.accept() => {
                open.retain(|connection| !connection.is_finished());
                if open.len() >= limits.max_connections.max(1) {
                    if let Some(oldest) = open.pop_front() {
                        oldest.abort();
                    }
                    log_full(&mut logged_full, limits.max_connections);
                }
                let state = state.clone();
                let mismatches = mismatches.clone();
                let connection = tokio::spawn(async move {
                    serve_connection(stream, peer, state, limits, mismatches).await;
                });
                open.push_back(connection.abort_handle());
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Serve one admin connection: by its first bytes (which must come within
/// the idle timeout), a TLS ClientHello is closed, and a PROXY protocol
/// header and the HTTP/2 preface refused, each with a WARN line
/// ([`Mismatches`]); anything else is served as HTTP/1.1 (hyper answers
/// what is not HTTP/1 with a bare `400`).
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: AdminState,
    limits: ConnLimits,
    mismatches: Arc<Mismatches>,
) {
    let deadline = crate::deadline::after(tokio::time::Instant::now(), limits.idle_timeout);
    let Some((protocol, stream)) = preface::sniff_by(stream, deadline, peer).await else {
        return;
    };
    match protocol {
        Protocol::Tls => return mismatches.tls_on_plain(peer, PlainListener::Admin),
        Protocol::ProxyHeader => return mismatches.refuse_proxy_header(stream, peer).await,
        Protocol::Http2 => return mismatches.refuse_h2c_on_admin(stream, peer).await,
        Protocol::Http1 => {}
    }
    let service = service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(respond(&state, &request)) }
    });
    if let Err(err) = conn::http1(&limits)
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        debug!(error = %err, "admin connection error");
    }
}

/// Say (at most once a minute) that the cap closes connections.
fn log_full(logged: &mut Option<Instant>, max_connections: usize) {
    let now = Instant::now();
    if logged.is_some_and(|at| now.duration_since(at) < LOG_FULL_AGAIN_AFTER) {
        return;
    }
    *logged = Some(now);
    warn!(
        max_connections,
        "admin connection limit reached; each new admin connection closes the oldest open one \
         (logged at most once a minute)"
    );
}

/// How long after a "limit reached" line the next one may be written.
const LOG_FULL_AGAIN_AFTER: Duration = Duration::from_secs(60);

/// The answer to one admin request.
pub fn respond<B>(state: &AdminState, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".to_owned(),
        );
    }
    match request.uri().path() {
        "/" => text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            status_page::render(state),
        ),
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" => {
            let (status, body) = readyz::readyz(state, request.uri().query());
            let mut response = text(status, "application/json", body.to_string() + "\n");
            if let Some(code) = body["error"]
                .as_str()
                .and_then(|c| HeaderValue::from_str(c).ok())
            {
                response.headers_mut().insert("x-sidekey-error", code);
            }
            response
        }
        "/metrics" => {
            refresh_expiry_gauges(state);
            let openmetrics = state.metrics.encode();
            let wants_openmetrics = request
                .headers()
                .get_all(ACCEPT)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .any(exposition::wants_openmetrics);
            if wants_openmetrics {
                text(StatusCode::OK, exposition::OPENMETRICS, openmetrics)
            } else {
                text(
                    StatusCode::OK,
                    exposition::PROMETHEUS_TEXT,
                    exposition::to_prometheus_text(&openmetrics),
                )
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    }
}

fn refresh_expiry_gauges(state: &AdminState) {
    let credentials = state.credentials.load_full();
    let redis_up = credentials
        .redis_state()
        .map(|redis| redis == RedisState::Up);
    state.metrics.set_cache_redis_up(redis_up);
    for (name, handle) in credentials.iter() {
        let seconds = match handle.status() {
            CredentialStatus::Ready {
                expires_in: Some(left),
            } => Some(left.as_secs_f64()),
            // A token without expiry has no series.
            CredentialStatus::Ready { expires_in: None } => None,
            CredentialStatus::Unavailable { .. } => Some(0.0),
        };
        state
            .metrics
            .set_token_expires_in(&Arc::from(name), seconds);
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
