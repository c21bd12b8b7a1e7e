//! The admin endpoint (`[admin] listen`), plain HTTP/1.1:
//!
//! - `GET /healthz` — 200 `ok` while the process serves.
//! - `GET /readyz` — 200 when every credential holds a valid token, else 503
//!   with `{"ready": false, "credentials": [{"name", "reason"}]}` listing the
//!   ones that do not, and why.
//! - `GET /metrics` — Prometheus text format (see [`crate::metrics`]); the
//!   token expiry gauge is refreshed at each scrape.
//!
//! Anything else is 404. Nothing here reveals a token or secret.
//!
//! The listener is capped ([`ConnLimits::ADMIN`]: 16 connections, 8 KiB
//! request heads, 10 s idle timeout), so idle or slow admin clients can
//! neither exhaust file descriptors nor crowd out the proxy; at the cap new
//! connections wait in the listen backlog.

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

use crate::config::ConnLimits;
use crate::conn;
use crate::credential::{CredentialStatus, Credentials};
use crate::metrics::Metrics;

/// What the admin endpoint reads.
#[derive(Clone, Debug)]
pub struct AdminState {
    /// The metric registry.
    pub metrics: Metrics,
    /// The credentials in service (a reload swaps them here).
    pub credentials: Arc<ArcSwap<Credentials>>,
}

/// Serve the admin endpoint until `shutdown` turns true, with at most
/// `limits.max_connections` connections open (more wait in the listen
/// backlog), each closed after `limits.idle_timeout` without a request.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut listener =
        conn::Listener::new(listener, conn::Gate::new("admin", limits.max_connections));
    loop {
        tokio::select! {
            (stream, _, slot) = listener.accept() => {
                let state = state.clone();
                tokio::spawn(async move {
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
                    drop(slot);
                });
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// The answer to one admin request.
pub fn respond(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".to_owned(),
        );
    }
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" => readyz(state),
        "/metrics" => {
            refresh_expiry_gauges(state);
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                state.metrics.encode(),
            )
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    }
}

fn readyz(state: &AdminState) -> Response<Full<Bytes>> {
    let credentials = state.credentials.load_full();
    let not_ready: Vec<serde_json::Value> = credentials
        .iter()
        .filter_map(|(name, handle)| match handle.status() {
            CredentialStatus::Ready { .. } => None,
            CredentialStatus::Unavailable { reason } => {
                Some(serde_json::json!({ "name": name, "reason": reason }))
            }
        })
        .collect();
    let ready = not_ready.is_empty();
    let body = serde_json::json!({ "ready": ready, "credentials": not_ready }).to_string();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, "application/json", body + "\n")
}

fn refresh_expiry_gauges(state: &AdminState) {
    let credentials = state.credentials.load_full();
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
