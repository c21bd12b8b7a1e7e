//! The proxy: from the app's request to the upstream's response.
//!
//! Per request, in order:
//! 1. [`Dispatch::find`] refuses what must not be forwarded (`CONNECT`,
//!    `TRACE`, paths that could escape the base path, see [`path`]) and
//!    picks the route: the longest `path_prefix` of the listener, or in
//!    forward-proxy mode the request's host and port ([`hosts`]).
//! 2. One `ArcSwap` load of the credential's prebuilt headers
//!    ([`crate::credential::CredentialHandle::current`]); no valid token → 503
//!    after a bounded wait for one (an `Upgrade` sidekey cannot carry is
//!    refused before that wait, see [`upgrade`]).
//! 3. [`headers::prepare_request`] strips hop-by-hop headers, `Host`, and the
//!    app's own values of every header the credential or route sets, then
//!    injects them ("strip, then inject"); an `Upgrade` sidekey cannot carry
//!    (a WebSocket) is refused there instead ([`upgrade`]).
//! 4. [`forward`] sends it over the route's pooled client (HTTPS, HTTP/2 when
//!    ALPN offers it), streaming the body; a small body is kept so a
//!    `renew_on_status` answer can be retried once with the renewed token.
//!    Both bodies must keep moving: `body_timeout` bounds every pause
//!    ([`body::Idle`]), and an app that takes no byte of its answer for as
//!    long is closed ([`crate::send_timeout`], [`crate::stream_stall`]).
//! 5. The `Location` and `Content-Location` of a redirect or a `201`, and
//!    the `Link` targets of any answer ([`link`]), that name the upstream's
//!    own URLs point back at sidekey: a route's upstream URLs become the
//!    app-side paths ([`relocate`]), the forward proxy's `https://` ones
//!    `http://` ([`redirect`]).

pub mod access;
pub mod body;
pub mod build;
pub mod chunked;
pub mod client;
pub mod forward;
pub mod framing;
pub mod grpc;
pub mod h2_driver;
pub mod head;
pub mod headers;
pub mod host_header;
pub mod hosts;
pub mod keep_alive;
pub mod linger;
pub mod link;
pub mod no_content;
pub mod path;
pub mod redirect;
pub mod relocate;
pub mod route;
pub mod service;
pub mod settings;
pub mod target_form;
pub mod unusable;
pub mod upgrade;

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{Either, Full};

pub use hosts::ForwardHosts;
pub use route::Route;

use crate::error::ProxyError;

/// Body of a request sent upstream: the app's stream, or a kept small body.
pub type UpstreamBody = Either<body::Prefixed, Full<Bytes>>;

/// Body of a response to the app: the upstream's stream, or sidekey's own JSON.
pub type ResponseBody = Either<body::FromUpstream, Full<Bytes>>;

/// How one listener chooses a route.
#[derive(Debug)]
pub enum Dispatch {
    /// Reverse-proxy routes sharing this listener, longest `path_prefix` first.
    Routes(Box<[Arc<Route>]>),
    /// `[forward_proxy]`: absolute-form requests, routed by host and port.
    Forward(ForwardHosts),
}

impl Dispatch {
    /// Whether `[log] access` is on for these routes (every route of a
    /// configuration carries the same flag), for requests no route took; a
    /// routed request reads its route's flag.
    pub fn access_log(&self) -> bool {
        match self {
            Dispatch::Routes(routes) => routes.first().is_some_and(|route| route.access_log),
            Dispatch::Forward(hosts) => hosts.any().is_some_and(|route| route.access_log),
        }
    }

    /// The longest `body_timeout` of these routes (`None` without routes):
    /// how long an app connection of this listener may take no byte of
    /// what sidekey writes to it ([`crate::send_timeout`]).
    pub fn longest_body_timeout(&self) -> Option<std::time::Duration> {
        match self {
            Dispatch::Routes(routes) => routes.iter().map(|route| route.body_timeout).max(),
            Dispatch::Forward(hosts) => hosts.routes().map(|route| route.body_timeout).max(),
        }
    }

    /// Put a listener's routes in the order [`Dispatch::find`] tries them:
    /// longest `path_prefix` first (stable: equal lengths keep their order).
    pub fn order(routes: &mut [Route]) {
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix().len()));
    }

    /// Routes of one listener, already in [`Dispatch::order`] (their
    /// [`relocate`] table was built in that order).
    pub fn routes(routes: Vec<Arc<Route>>) -> Self {
        debug_assert!(
            routes.is_sorted_by_key(|route| std::cmp::Reverse(route.prefix().len())),
            "routes not in dispatch order"
        );
        Dispatch::Routes(routes.into_boxed_slice())
    }

    /// The route for `request`, or why it is not forwarded at all: a method
    /// that must not be ([`refuse_method`]), a body framed both by
    /// `Content-Length` and `Transfer-Encoding` ([`framing`]), an HTTP/2
    /// `host` that disagrees with `:authority` ([`host_header`]), a request
    /// target in the wrong form for the listener ([`target_form`]: a URL on
    /// a route listener, anything but an `http://` URL on the forward
    /// proxy), a path that could escape the upstream's base path
    /// ([`path::check`]), a forward-proxy host and port outside `hosts`.
    pub fn find<B>(
        &self,
        request: &Request<B>,
        framing: framing::Framing,
    ) -> Result<&Arc<Route>, ProxyError> {
        refuse_framing(framing)?;
        host_header::check(request)?;
        let uri = request.uri();
        if let Dispatch::Forward(_) = self
            && let Some(refusal) = target_form::forward_refusal(request.method(), uri)
        {
            return Err(refusal);
        }
        refuse_method(request.method())?;
        match self {
            Dispatch::Routes(routes) => {
                if let Some(refusal) = target_form::route_refusal(request.version(), uri) {
                    return Err(refusal);
                }
                let path = uri.path();
                if !path.starts_with('/') {
                    // Authority-form (`host:port`) or asterisk-form (`*`).
                    return Err(ProxyError::BadRequest(
                        "the request target must be a path such as /v1/items".to_owned(),
                    ));
                }
                refuse_unsafe_path(path)?;
                routes
                    .iter()
                    .find(|route| route.matches(path))
                    .ok_or_else(|| ProxyError::NoRoute(path.to_owned()))
            }
            Dispatch::Forward(hosts) => {
                refuse_unsafe_path(uri.path())?;
                hosts.find(uri)
            }
        }
    }
}

/// `CONNECT` would open a tunnel the credential cannot be injected into
/// (and, forwarded to a reverse route's upstream, carries the credential
/// somewhere it means nothing); `TRACE` and `TRACK` make an upstream that
/// honours them echo the request, injected credential included, back to
/// the app. None of them is forwarded, on any listener.
fn refuse_method(method: &Method) -> Result<(), ProxyError> {
    let refused = *method == Method::CONNECT
        || *method == Method::TRACE
        || method.as_str().eq_ignore_ascii_case("TRACK");
    if !refused {
        return Ok(());
    }
    let why = if *method == Method::CONNECT {
        "CONNECT tunnels cannot carry injected credentials; send http:// URLs \
         through the forward proxy and sidekey upgrades them to https://"
    } else {
        "TRACE and TRACK would echo the injected credential back to the app"
    };
    Err(ProxyError::BadRequest(format!(
        "{method} is not forwarded: {why}"
    )))
}

/// The [`framing::Framing`] the connection's tap found: a conflict, or
/// a connection the tap could not follow, is refused.
fn refuse_framing(framing: framing::Framing) -> Result<(), ProxyError> {
    let why = match framing {
        framing::Framing::Conflict => {
            "requests with both Content-Length and Transfer-Encoding are not forwarded"
        }
        framing::Framing::Lost => "the request's framing could not be verified",
        framing::Framing::Clear => return Ok(()),
    };
    Err(ProxyError::BadRequest(why.to_owned()))
}

fn refuse_unsafe_path(path: &str) -> Result<(), ProxyError> {
    path::check(path).map_err(|unsafe_path| ProxyError::BadRequest(unsafe_path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::refuse_method;
    use http::Method;

    #[test]
    fn tunnels_and_echoes_are_refused() {
        for method in ["CONNECT", "TRACE", "TRACK", "track"] {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert!(refuse_method(&method).is_err(), "{method}");
        }
        for method in [Method::GET, Method::POST, Method::OPTIONS, Method::PATCH] {
            assert!(refuse_method(&method).is_ok(), "{method}");
        }
    }
}
