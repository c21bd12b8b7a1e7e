//! The admin listener: accepting connections under the admin cap, and
//! answering each request ([`respond`]) from the endpoint modules.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

use super::{AdminState, exposition, readyz, status_page};
use crate::cache::RedisState;
use crate::config::ConnLimits;
use crate::conn;
use crate::credential::CredentialStatus;

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
