//! Forwarding one request to its route's upstream, and the one retry.
//!
//! The request body streams through unless it turns out to be at most
//! [`RETRY_BODY_LIMIT`] ([`super::body::take`]): then it is kept, and so is
//! a copy of the request when it could be sent again ([`needs_copy`]). When
//! the upstream answers with a status in the credential's
//! `renew_on_status`, the proxy reports the token as rejected (one renewal
//! per token, shared by all requests that saw it), waits for that renewal
//! to end and, when it brought a new token, sends the request once more;
//! when it did not (a failed renewal), when it cannot (a fixed static
//! token: not even a copy was kept) or the rejection is ignored (fresh
//! tokens are rejected too), the upstream's answer goes back at once. A
//! rejected retry is reported too. A streamed request's rejection is
//! reported and passed on; the next request gets the new token.
//!
//! An HTTP/2 request body of unknown length (a gRPC call, any stream) is
//! never held back: its other end may wait for the response before it
//! sends more (a bidirectional stream), so reading ahead for a retry could
//! wait for ever. It streams from its first byte and is never retried.
//!
//! Bodies are wrapped here ([`super::body`]): the app's body may pause at
//! most the route's `body_timeout` (else 408, when the upstream has not
//! answered yet), and so may the upstream's (else the app's response is cut
//! off). A kept request that failed on a pooled connection the upstream had
//! closed is sent again when that is harmless ([`replayable`]); one whose
//! HTTP/2 stream the upstream refused (`REFUSED_STREAM`, never processed)
//! is sent again whatever its method, when a copy was kept.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderName};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Body;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::access::Line;
use super::body::{BodyError, FromUpstream, Idle, Outgoing, Prefixed, StallFlag, take};
use super::client::{on_stale_connection, refused_stream, went_away};
use super::grpc;
use super::headers::{inject, prepare_request, prepare_response};
use super::linger::FromApp;
use super::no_content;
use super::upgrade;
use super::{ResponseBody, Route};
use crate::cert_errors::{CERT_TIME_HINT, certificate_out_of_time};
use crate::credential::{Published, Rejection};
use crate::error::ProxyError;
use crate::error_chain::error_chain;

/// Largest request body kept in memory for a retry (64 KiB).
pub const RETRY_BODY_LIMIT: u64 = 64 * 1024;

/// Longest wait for a credential's first token request to finish.
const FIRST_TOKEN_WAIT: Duration = Duration::from_secs(5);

/// Longest wait for a renewed token before passing a rejection on.
const RENEWAL_WAIT: Duration = Duration::from_secs(10);

/// Most attempts of one request when pooled connections turn out stale or
/// the upstream refuses its streams (each failed attempt uses one up;
/// several connections can go stale together).
const STALE_ATTEMPTS: u32 = 8;

/// The header an app sets to say a request may be repeated safely
/// (IETF httpapi "The Idempotency-Key HTTP Header Field").
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Whether a request whose body was kept whole needs a copy of itself
/// ([`Kept`]) for sending it a second time. There are three reasons, and
/// this is where they are weighed:
/// - its token is rejected (`renew_on_status`): only when the credential
///   can bring a different token (`retry_on_rejection`, see
///   [`crate::credential::CredentialHandle::retries_on_rejection`]);
/// - its pooled connection turns out to have been closed by the upstream:
///   only when sending it twice is harmless (`replayable`, see
///   [`replayable`]);
/// - the upstream refuses its HTTP/2 stream unprocessed: whatever the
///   method, when the upstream speaks HTTP/2 (`http2`, asked last: it
///   takes the worker's pool lock).
fn needs_copy(retry_on_rejection: bool, replayable: bool, http2: impl FnOnce() -> bool) -> bool {
    retry_on_rejection || replayable || http2()
}

/// Whether sending a request twice is harmless: an idempotent method (RFC
/// 9110 §9.2.2) or an `Idempotency-Key` from the app. Other requests are
/// not repeated after a connection failure, since the upstream may have
/// acted on them (RFC 9112 §9.3.1).
fn replayable(method: &Method, headers: &HeaderMap) -> bool {
    method.is_idempotent() || headers.contains_key(&IDEMPOTENCY_KEY)
}

/// What is kept of a request so it can be sent a second time.
struct Kept {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl Kept {
    /// The same request once more.
    fn request(&self) -> Request<super::UpstreamBody> {
        let mut request = Request::new(Either::Right(Full::new(self.body.clone())));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// Send `request` through `route`, returning the upstream's response (or
/// sidekey's own error).
///
/// A plain function returning an `async move` block (an `async fn` keeps
/// its arguments twice in its state), whose common path is small: the
/// first-token wait, a streamed body and the retry after a rejected token
/// are separate boxed futures, and what is prepared for the first exchange
/// is scoped so that it is not kept in the state while the upstream
/// answers. hyper moves the request's whole future once per request.
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` keeps its arguments twice in its state"
)]
pub fn forward(
    route: &Arc<Route>,
    request: Request<FromApp>,
) -> impl Future<Output = Result<Response<ResponseBody>, ProxyError>> + '_ {
    async move {
        let published = match route.credential.current() {
            Ok(published) => published,
            // The first token, or the renewal of one that just expired, may
            // be on its way: wait for it (bounded) instead of failing the
            // request. During an outage, or after the first request failed,
            // this returns at once. An `Upgrade` no token can make servable
            // is refused first, not after the wait with a 503 that blames
            // the credential (with a token, `prepare_request` refuses it at
            // no extra cost).
            Err(_) => {
                if let Some(refusal) = upgrade::refusal(request.headers()) {
                    return Err(refusal);
                }
                Box::pin(
                    route
                        .credential
                        .wait_for_token(FIRST_TOKEN_WAIT.min(route.request_timeout)),
                )
                .await?
            }
        };
        let grpc_call = grpc::is_call(&request);
        let head = request.method() == Method::HEAD;
        let (first, kept, replay) = {
            let (mut parts, body) = request.into_parts();
            parts.uri = route.upstream_uri(&parts.uri, &published)?;
            prepare_request(
                &mut parts.headers,
                route.credential.strip_names(),
                &route.headers,
                &published.headers,
            )?;
            let body = Idle::new(body, route.body_timeout);
            let stream_now = parts.version == Version::HTTP_2 && body.size_hint().exact().is_none();
            // The client picks HTTP/1.1 or HTTP/2 upstream, whatever the app
            // spoke; a gRPC call must go as HTTP/2 (see `grpc`) and fails
            // rather than not.
            parts.version = if grpc_call {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            };
            let outgoing = if stream_now {
                Outgoing::Streamed(Prefixed::new(body))
            } else {
                take(body, RETRY_BODY_LIMIT)
                    .await
                    .map_err(|e| unreadable(route, e))?
            };
            let body = match outgoing {
                Outgoing::Kept(body) => body,
                Outgoing::Streamed(body) => {
                    let streamed = streamed(route, parts, body, published, grpc_call, head);
                    return Box::pin(streamed).await;
                }
            };
            let replay = replayable(&parts.method, &parts.headers);
            let kept = needs_copy(route.credential.retries_on_rejection(), replay, || {
                route.client.speaks_http2()
            })
            .then(|| Kept {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                version: parts.version,
                headers: parts.headers.clone(),
                body: body.clone(),
            });
            let first = Request::from_parts(parts, Either::Right(Full::new(body)));
            (first, kept, replay)
        };
        let first = send(route, first, kept.as_ref(), replay).await?;
        if !route.credential.renews_on(token_status(grpc_call, &first)) {
            return Ok(finish(route, first, head));
        }
        Box::pin(after_rejection(
            route, first, kept, published, grpc_call, head,
        ))
        .await
    }
}

/// A request whose body streams (too large to keep, or an HTTP/2 stream of
/// unknown length): sent once, never retried.
async fn streamed(
    route: &Route,
    mut parts: http::request::Parts,
    body: Prefixed,
    published: Arc<Published>,
    grpc_call: bool,
    head: bool,
) -> Result<Response<ResponseBody>, ProxyError> {
    // Never retried, so never sent with a token whose renewal a rejection
    // asked for: it waits for that renewal (bounded).
    let published = if route.credential.renewal_pending(published.generation) {
        with_renewed(route, &mut parts.headers, published).await
    } else {
        published
    };
    let response = send(
        route,
        Request::from_parts(parts, Either::Left(body)),
        None,
        false,
    )
    .await?;
    Ok(pass_on(
        route,
        response,
        published.generation,
        grpc_call,
        head,
    ))
}

/// The answer to a request that is not sent again, whose token was of
/// `generation`: a rejection of that token is reported (the next request
/// gets whatever comes of it), and the answer goes to the app.
fn pass_on(
    route: &Route,
    response: Response<FromUpstream>,
    generation: u64,
    grpc_call: bool,
    head: bool,
) -> Response<ResponseBody> {
    if route
        .credential
        .renews_on(token_status(grpc_call, &response))
    {
        let _ = route.credential.report_rejected(generation);
    }
    finish(route, response, head)
}

/// The upstream rejected the token of a kept request (`first`, its answer):
/// report it and, when a renewal brings a newer token in time, send the
/// request once more with it.
async fn after_rejection(
    route: &Route,
    first: Response<FromUpstream>,
    kept: Option<Kept>,
    published: Arc<Published>,
    grpc_call: bool,
    head: bool,
) -> Result<Response<ResponseBody>, ProxyError> {
    let Some(kept) = kept.filter(|_| route.credential.retries_on_rejection()) else {
        // No different token can come of a renewal: report it (it is
        // counted, and the token source read again) and pass the answer on.
        let _ = route.credential.report_rejected(published.generation);
        return Ok(finish(route, first, head));
    };
    if route.credential.report_rejected(published.generation) == Rejection::Ignored {
        debug!(route = %route.name, status = first.status().as_u16(), "token rejected; fresh tokens are rejected too, not renewing");
        return Ok(finish(route, first, head));
    }
    let renewed = match route
        .credential
        .wait_for_renewal(
            published.generation,
            RENEWAL_WAIT.min(route.request_timeout),
        )
        .await
    {
        Ok(renewed) if renewed.generation > published.generation => renewed,
        _ => {
            debug!(route = %route.name, status = first.status().as_u16(), "token rejected; no newer token to retry with");
            return Ok(finish(route, first, head));
        }
    };
    debug!(route = %route.name, status = first.status().as_u16(), "token rejected; retrying once with the renewed token");
    drop(first);
    let retry = rebuild(kept, route, &renewed);
    let response = send(route, retry, None, false).await?;
    // Rejected with a fresh token: not about the token (see `rejection`).
    Ok(pass_on(
        route,
        response,
        renewed.generation,
        grpc_call,
        head,
    ))
}

/// The token renewed after `rejected`'s rejection, its headers set in
/// `headers` in place of `rejected`'s; `rejected` itself when the renewal
/// does not come in time (the upstream URI stays: an Inbenta token's
/// renewal keeps its `apis`).
async fn with_renewed(
    route: &Route,
    headers: &mut http::HeaderMap,
    rejected: Arc<Published>,
) -> Arc<Published> {
    let wait = RENEWAL_WAIT.min(route.request_timeout);
    match route
        .credential
        .wait_for_renewal(rejected.generation, wait)
        .await
    {
        Ok(renewed) if renewed.generation > rejected.generation => {
            let strip = route.credential.strip_names();
            // Prepared before: no `Upgrade` is left to refuse.
            let _ = prepare_request(headers, strip, &route.headers, &renewed.headers);
            renewed
        }
        _ => rejected,
    }
}

/// The status `renew_on_status` is matched against: a gRPC call's
/// UNAUTHENTICATED counts as 401 ([`grpc::rejects_token`]).
fn token_status<B>(grpc_call: bool, response: &Response<B>) -> StatusCode {
    if grpc_call {
        grpc::rejects_token(response)
    } else {
        response.status()
    }
}

/// The kept request with the renewed credential headers.
fn rebuild(kept: Kept, route: &Route, renewed: &Published) -> Request<super::UpstreamBody> {
    let mut request = Request::new(Either::Right(Full::new(kept.body)));
    *request.method_mut() = kept.method;
    *request.uri_mut() = kept.uri;
    *request.version_mut() = kept.version;
    *request.headers_mut() = kept.headers;
    inject(request.headers_mut(), &route.headers, &renewed.headers);
    request
}

/// The app's request body could not be read: it stalled (408) or broke (400).
fn unreadable(route: &Route, err: BodyError) -> ProxyError {
    match err {
        BodyError::Stalled(timeout) => {
            warn!(route = %route.name, ?timeout, "the app's request body stalled");
            ProxyError::RequestBodyTimeout { timeout }
        }
        BodyError::Read(source) => ProxyError::BadRequest(format!(
            "request body could not be read: {}",
            error_chain(source.as_ref())
        )),
    }
}

/// One exchange with the upstream, bounded by the route's `request_timeout`
/// (one deadline, whatever the attempts). A request with a copy (`kept`) is
/// sent again when the upstream refused its HTTP/2 stream unprocessed
/// ([`refused_stream`]), and, when it is [`replayable`], when it failed on
/// a pooled connection the upstream had closed ([`on_stale_connection`])
/// or the upstream said GOAWAY before answering it ([`went_away`]).
///
/// A plain function returning an `async move` block, and the attempts and
/// the deadline raced in its body: an `async fn` keeps its arguments twice
/// in its state, and a separate exchange future would hold the request a
/// third time; this future is moved whole at every level above it.
fn send<'a>(
    route: &'a Route,
    mut request: Request<super::UpstreamBody>,
    kept: Option<&'a Kept>,
    replayable: bool,
) -> impl Future<Output = Result<Response<FromUpstream>, ProxyError>> + 'a {
    let stall_flag = match request.body() {
        Either::Left(streamed) => Some(streamed.stall_flag()),
        Either::Right(_) => None,
    };
    async move {
        let upstream = || route.describe_target();
        // Raced in place rather than through `tokio::time::timeout`, which
        // would move each attempt (kilobytes: the client's state) into itself
        // and then into this future: two copies per request.
        // One reading of the clock for the deadline and the first attempt.
        let now = Instant::now();
        let mut deadline = std::pin::pin!(tokio::time::sleep_until(crate::deadline::after(
            now,
            route.request_timeout
        )));
        let mut started = now;
        let mut attempt = 1;
        let outcome = loop {
            let mut call = std::pin::pin!(route.client.request(request));
            let result = std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = call.as_mut().poll(cx) {
                    return Poll::Ready(Ok(result));
                }
                deadline.as_mut().poll(cx).map(Err)
            })
            .await;
            let err = match result {
                Ok(Ok((response, opened))) => break Ok(Ok((response, opened, started))),
                Ok(Err(err)) => err,
                Err(elapsed) => break Err(elapsed),
            };
            let why = if refused_stream(&err) {
                "refused_stream"
            } else if replayable && on_stale_connection(&err, started) {
                "stale_connection"
            } else if replayable && went_away(&err) {
                "goaway"
            } else {
                break Ok(Err(err));
            };
            let Some(kept) = kept.filter(|_| attempt < STALE_ATTEMPTS) else {
                break Ok(Err(err));
            };
            route.metrics.record_upstream_error(why);
            debug!(route = %route.name, attempt, why, error = %error_chain(&err), "upstream did not take the request; sending it again");
            request = kept.request();
            attempt += 1;
            started = Instant::now();
        };
        match outcome {
            Ok(Ok((response, opened, started))) => {
                let mut response = response
                    .map(|body| FromUpstream::new(body, route.body_timeout, route.metrics.clone()));
                if route.access_log {
                    *response.body_mut().access_line() =
                        Some(Line::upstream(started.elapsed(), opened.0 < started));
                }
                Ok(response)
            }
            Ok(Err(err)) => {
                if stall_flag.as_ref().is_some_and(StallFlag::is_raised) {
                    return Err(unreadable(route, BodyError::Stalled(route.body_timeout)));
                }
                let kind = if err.is_connect() { "connect" } else { "other" };
                route.metrics.record_upstream_error(kind);
                let mut reason = error_chain(&err);
                if certificate_out_of_time(&err) {
                    reason.push_str(CERT_TIME_HINT);
                }
                warn!(route = %route.name, kind, error = %reason, "upstream request failed");
                Err(ProxyError::UpstreamUnreachable {
                    upstream: upstream(),
                    failure: if err.is_connect() {
                        "unreachable"
                    } else {
                        "connected, then the exchange failed"
                    },
                    reason,
                })
            }
            Err(_) => {
                route.client.retire_http2_after_timeout();
                route.metrics.record_upstream_error("timeout");
                warn!(route = %route.name, timeout = ?route.request_timeout, "upstream timed out");
                Err(ProxyError::UpstreamTimeout {
                    upstream: upstream(),
                    timeout: route.request_timeout,
                })
            }
        }
    }
}

/// The upstream's response for the app: headers prepared
/// ([`prepare_response`]; `Location` and `Content-Location` naming the
/// upstream's URLs point back at sidekey, see [`Route::rewrite_answer`]),
/// body streamed. Its version is sidekey's own, not
/// the upstream's: hyper writes an HTTP/1.1 response's version as given,
/// and an HTTP/1.1 app reading `HTTP/1.0` closes its connection after
/// every answer (RFC 9112 §9.3). hyper still answers an HTTP/1.0 app in
/// HTTP/1.0 and an HTTP/2 one in HTTP/2.
///
/// An answer that has no content (to a `HEAD` request, or a `204` or
/// `304`) reaches the app without one, whatever the upstream sent
/// ([`no_content`]).
fn finish(route: &Route, response: Response<FromUpstream>, head: bool) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    parts.version = Version::HTTP_11;
    prepare_response(&mut parts.headers);
    route.rewrite_answer(parts.status, &mut parts.headers);
    if no_content::has_none(head, parts.status) {
        if parts.status == StatusCode::NO_CONTENT {
            parts.headers.remove(CONTENT_LENGTH);
        }
        if !body.is_end_stream() {
            // Dropped unread: its access line is written now.
            return Response::from_parts(parts, Either::Right(Full::new(Bytes::new())));
        }
    }
    Response::from_parts(parts, Either::Left(body))
}
