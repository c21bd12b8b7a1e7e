//! The per-request service of a proxy listener: route the request
//! ([`Dispatch::find`]), forward it ([`forward`]), turn a refusal or failure
//! into sidekey's JSON error (logged once, see [`crate::error`]; a gRPC
//! status for a gRPC call, see [`super::grpc`]), close the connection after
//! a refused framing (and explain a refused `CONNECT` in its status line,
//! see [`super::target_form`]), count the request in the metrics, and when
//! `[log] access` is on, write its access line ([`access`]).

use std::future::Future;

use http::{HeaderValue, Method, Request, Response, Version};
use hyper::body::Incoming;
use tracing::{debug, error};

use super::access;
use super::forward::forward;
use super::framing::Framing;
use super::linger::FromApp;
use super::{Dispatch, ResponseBody};
use crate::error::ProxyError;
use crate::metrics::Metrics;

/// Route, forward and account for one request, whose body the
/// connection's tap found framed as `framing`; never fails.
///
/// A plain function that routes the request before it returns the future
/// that forwards it: an `async fn` would keep the request in its state
/// three times (as passed, moved in, and wrapped) while the upstream
/// answers, and hyper moves this future once per request.
pub fn handle_request<'a>(
    dispatch: &'a Dispatch,
    request: Request<Incoming>,
    framing: Framing,
    metrics: &'a Metrics,
) -> impl Future<Output = Response<ResponseBody>> + 'a {
    let started = tokio::time::Instant::now();
    let mut closes = framing.closes_connection();
    // `Connection` is an HTTP/1 header (HTTP/2 forbids it).
    let http1 = request.version() <= Version::HTTP_11;
    let (request, refusal_closes) = FromApp::wrap(request, closes);
    let grpc = super::grpc::is_call(&request);
    let connect = request.method() == Method::CONNECT;
    // `[log] access`: the request's method and path are noted before it is
    // forwarded; when off, this is the route's flag and nothing else.
    let found = dispatch.find(&request, framing);
    let access = match &found {
        Ok(route) => route.access_log,
        Err(_) => dispatch.access_log(),
    }
    .then(|| access::Start::new(&request, started));
    async move {
        let (series, result) = match found {
            Ok(route) => (&route.metrics, forward(route, request).await),
            Err(err) => (metrics.no_route(), Err(err)),
        };
        let (mut response, status) = match result {
            Ok(response) => {
                let status = response.status();
                (response, status)
            }
            Err(err) => {
                log_error(series.route(), &err);
                closes |= refusal_closes || (http1 && err.closes_connection());
                let response = if grpc {
                    err.to_grpc_response()
                } else {
                    err.to_response()
                };
                let mut response = response.map(http_body_util::Either::Right);
                if connect {
                    super::target_form::explain_connect(&mut response);
                }
                (response, err.status())
            }
        };
        if closes {
            // A refused framing, a stalled body or an upload refused before
            // `100 Continue`: where a next request would start is unknown (see
            // `proxy::framing`, `linger`), so this is the connection's last.
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        // A gRPC call's error is counted by the HTTP status it stands for.
        series.record_request(status.as_u16(), started.elapsed().as_secs_f64());
        if let Some(start) = access {
            access::finish(start, series.route(), &mut response);
        }
        response
    }
}

/// The one log line of an error sidekey answers itself. Lines at WARN and
/// above carry `route`, so a storm of them is folded into one line per
/// interval ([`crate::telemetry`]).
fn log_error(route: &str, err: &ProxyError) {
    match err {
        ProxyError::CredentialUnavailable(_) => error!(route, code = err.code(), "{err}"),
        ProxyError::UpstreamUnreachable { .. } | ProxyError::UpstreamTimeout { .. } => {
            // Already logged where the upstream failed.
        }
        _ => debug!(route, code = err.code(), "{err}"),
    }
}
