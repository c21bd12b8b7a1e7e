//! The access log (`[log] access = true`): one line per request, message
//! `access`, at INFO with target `sidekey::access`, in the format of
//! `[log] format`.
//!
//! Fields: `route` (`none` when no route took the request), `method`,
//! `path` (never the query string), `status`, `bytes` (of the response body
//! sent to the app), `duration_ms` (request start to the end of the
//! response body), and for responses that came from the upstream
//! `upstream_ms` (sending the request to the upstream's response head) and
//! `reused` (whether the upstream connection was already open). No header
//! value, so no credential, is ever written.
//!
//! A response from the upstream is logged when its body is done (its
//! [`super::body::FromUpstream`] dropped: sent whole, cut off, or the app
//! went away), so `bytes` counts what was passed on; sidekey's own error
//! responses are logged at once. When the log is off nothing here runs: the
//! service checks one flag, and a response body carries an empty `Option`.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use hyper::body::Body as _;
use tokio::time::Instant;

use super::ResponseBody;

/// What is kept of a request for its access line (only when the log is on).
#[derive(Debug)]
pub struct Start {
    method: Method,
    path: Box<str>,
    started: Instant,
}

impl Start {
    /// Note `request`'s method and path (without the query), `started`.
    pub fn new<B>(request: &Request<B>, started: Instant) -> Self {
        Start {
            method: request.method().clone(),
            path: request.uri().path().into(),
            started,
        }
    }
}

/// The access line of one response from the upstream, carried by its body;
/// written when dropped, once [`finish`] has filled it in.
#[derive(Debug)]
pub struct Line {
    upstream: Duration,
    reused: bool,
    bytes: u64,
    request: Option<(Start, Arc<str>, u16)>,
}

impl Line {
    /// The upstream took `upstream` to answer, on a connection that was
    /// `reused` (already open).
    pub fn upstream(upstream: Duration, reused: bool) -> Box<Self> {
        Box::new(Line {
            upstream,
            reused,
            bytes: 0,
            request: None,
        })
    }

    /// `n` more bytes of the body went to the app.
    pub fn count(&mut self, n: usize) {
        self.bytes += n as u64;
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        // A response dropped before `finish` (one the proxy retried) is not
        // what the app got: no line.
        if let Some((start, route, status)) = &self.request {
            write(
                start,
                route,
                *status,
                self.bytes,
                Some((self.upstream, self.reused)),
            );
        }
    }
}

/// The request of `start`, taken by `route`, is answered with `response`:
/// log it now (sidekey's own answer) or when its body is done (the
/// upstream's).
pub fn finish(start: Start, route: &Arc<str>, response: &mut Response<ResponseBody>) {
    let status = response.status().as_u16();
    match response.body_mut() {
        http_body_util::Either::Left(from_upstream) => {
            let line = from_upstream
                .access_line()
                .get_or_insert_with(|| Line::upstream(Duration::ZERO, false));
            line.request = Some((start, Arc::clone(route), status));
        }
        http_body_util::Either::Right(own) => {
            let bytes = own.size_hint().exact().unwrap_or_default();
            write(&start, route, status, bytes, None);
        }
    }
}

fn write(start: &Start, route: &str, status: u16, bytes: u64, upstream: Option<(Duration, bool)>) {
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    tracing::info!(
        target: "sidekey::access",
        route,
        method = %start.method,
        path = &*start.path,
        status,
        bytes,
        duration_ms = ms(start.started.elapsed()),
        upstream_ms = upstream.map(|(took, _)| ms(took)),
        reused = upstream.map(|(_, reused)| reused),
        "access"
    );
}
