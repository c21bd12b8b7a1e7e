//! The proxy: from the app's request to the upstream's response.
//!
//! Per request, in order:
//! 1. [`Dispatch::find`] picks the route: the longest `path_prefix` of the
//!    listener (or, in forward-proxy mode, the request's host).
//! 2. One `ArcSwap` load of the credential's prebuilt headers
//!    ([`crate::credential::CredentialHandle::current`]); no valid token → 503.
//! 3. [`headers::prepare_request`] strips hop-by-hop headers, `Host`, and the
//!    app's own values of every header the credential or route sets, then
//!    injects them ("strip, then inject").
//! 4. [`forward`] sends it over the route's pooled client (HTTPS, HTTP/2 when
//!    ALPN offers it), streaming the body; a small body is kept so a
//!    `renew_on_status` answer can be retried once with the renewed token.
//!    Both bodies must keep moving: `body_timeout` bounds every pause
//!    ([`body::Idle`]).

pub mod body;
pub mod client;
pub mod forward;
pub mod headers;
pub mod route;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{Either, Full};

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
    /// `[forward_proxy]`: absolute-form requests, routed by host name.
    Forward(HashMap<String, Arc<Route>>),
}

impl Dispatch {
    /// Routes of one listener; sorted here so the longest prefix wins.
    pub fn routes(mut routes: Vec<Arc<Route>>) -> Self {
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix().len()));
        Dispatch::Routes(routes.into_boxed_slice())
    }

    /// The route for `request`.
    pub fn find<B>(&self, request: &Request<B>) -> Result<&Arc<Route>, ProxyError> {
        match self {
            Dispatch::Routes(routes) => {
                let path = request.uri().path();
                refuse_dot_segments(path)?;
                routes
                    .iter()
                    .find(|route| route.matches(path))
                    .ok_or_else(|| ProxyError::NoRoute(path.to_owned()))
            }
            Dispatch::Forward(hosts) => {
                if request.method() == http::Method::CONNECT {
                    return Err(ProxyError::BadRequest(
                        "CONNECT tunnels cannot carry injected credentials; send http:// URLs \
                         through the proxy and sidekey upgrades them to https://"
                            .to_owned(),
                    ));
                }
                let uri = request.uri();
                if uri.scheme() != Some(&http::uri::Scheme::HTTP) {
                    return Err(ProxyError::BadRequest(
                        "forward proxy expects absolute http:// request URIs".to_owned(),
                    ));
                }
                refuse_dot_segments(uri.path())?;
                let host = uri.host().unwrap_or_default();
                hosts
                    .get(&host.to_ascii_lowercase())
                    .ok_or_else(|| ProxyError::HostNotAllowed(host.to_owned()))
            }
        }
    }
}

/// Refuse `.` and `..` path segments (also percent-encoded): joined onto an
/// upstream base path they would climb out of it, with the credential attached.
fn refuse_dot_segments(path: &str) -> Result<(), ProxyError> {
    if !path.contains(['.', '%']) {
        return Ok(());
    }
    let dot = |segment: &str| {
        [".", "..", "%2e", "%2e%2e", ".%2e", "%2e."]
            .iter()
            .any(|form| segment.eq_ignore_ascii_case(form))
    };
    if path.split('/').any(dot) {
        return Err(ProxyError::BadRequest(
            "request paths with `.` or `..` segments are not forwarded".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::refuse_dot_segments;

    #[test]
    fn dot_segments_are_refused_in_any_spelling() {
        for path in ["/a/../b", "/..", "/a/./b", "/a/%2E%2e/b", "/a/.%2e", "/%2e"] {
            assert!(refuse_dot_segments(path).is_err(), "{path}");
        }
        for path in [
            "/",
            "/a.b/c",
            "/v1/file.json",
            "/..a/b",
            "/a%2Fb",
            "/a/...",
            "/%2e%2e%2e",
        ] {
            assert!(refuse_dot_segments(path).is_ok(), "{path}");
        }
    }
}
