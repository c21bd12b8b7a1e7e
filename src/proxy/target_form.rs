//! Request targets in the wrong form for their listener, answered with
//! what to send instead.
//!
//! - The forward proxy ([`forward_refusal`]) takes absolute `http://` URLs
//!   with a path: an app that uses the listener as its base URL
//!   (origin-form `GET /x`), an HTTP/2 request for `*` (refused on a route
//!   listener too), an `https://` URL in absolute form, or the `CONNECT`
//!   clients send for `https://` URLs is told the `http://` request that
//!   would have worked.
//! - A route listener ([`route_refusal`]) takes paths: an HTTP/1 request
//!   with an absolute URL comes from an app whose `HTTP_PROXY` names the
//!   route listener. Served, it went to the route's upstream, the app's
//!   headers for the other host and the route's token with it. (HTTP/2
//!   requests always carry a scheme and authority, and are not refused.)
//!
//! Clients show only the status line of a failed `CONNECT` (curl: "CONNECT
//! tunnel failed, response 400"; Python: "Tunnel connection failed: 400
//! Bad Request"), never its body, so its reason phrase says what to do
//! ([`explain_connect`]).
//!
//! Only a target's authority and path are echoed, never its query (an app
//! may carry a key there).

use http::{Method, Response, Uri, Version};
use hyper::ext::ReasonPhrase;

use crate::error::ProxyError;

/// Why `method uri` is not a request the forward proxy forwards, when it is
/// not an absolute `http://` URL; `None` when it is one.
pub fn forward_refusal(method: &Method, uri: &Uri) -> Option<ProxyError> {
    let message = if *method == Method::CONNECT {
        let host = uri.authority().map_or("HOST", |authority| {
            if authority.port_u16() == Some(443) {
                authority.host()
            } else {
                authority.as_str()
            }
        });
        format!(
            "CONNECT is not forwarded: a tunnel cannot carry injected credentials. \
             Request http://{host}/… instead of https://{host}/…; sidekey sends it \
             to the upstream as https://"
        )
    } else if uri.scheme() == Some(&http::uri::Scheme::HTTP) {
        if uri.path().starts_with('/') {
            return None;
        }
        // HTTP/2's `:path *` (asterisk-form, the server as a whole): no
        // resource of the upstream, as on a route listener.
        let authority = uri.authority().map_or("HOST", |a| a.as_str());
        format!(
            "the forward proxy takes http:// URLs with a path, such as \
             http://{authority}/v1/items, not the request target {}",
            uri.path()
        )
    } else if let Some(authority) = uri.authority() {
        format!(
            "the forward proxy takes http:// URLs only: request http://{authority}{} \
             and sidekey sends it to the upstream as https://",
            uri.path()
        )
    } else {
        let path = uri.path();
        let slash = if path.starts_with('/') { "" } else { "/" };
        format!(
            "this is sidekey's forward proxy: it takes absolute http:// URLs, not \
             the path {path}. Set HTTP_PROXY to this listener and request \
             http://HOST{slash}{path}, or send {path} to a route listener"
        )
    };
    Some(ProxyError::BadRequest(message))
}

/// Why an HTTP/1 request with an absolute URL is not served on a route
/// listener; `None` for a path, or for HTTP/2.
pub fn route_refusal(version: Version, uri: &Uri) -> Option<ProxyError> {
    let authority = uri.authority()?;
    if version >= Version::HTTP_2 {
        return None;
    }
    Some(ProxyError::BadRequest(format!(
        "this is a route listener: it takes paths such as {}, not URLs for {authority}. \
         An app whose HTTP_PROXY names this listener should name the \
         [forward_proxy] listener instead",
        uri.path()
    )))
}

/// The reason phrase of a refused `CONNECT`, for the clients that show
/// nothing else of the answer.
const CONNECT_REASON: &[u8] =
    b"CONNECT refused: request http:// URLs, the forward proxy sends them as https://";

/// Give the answer to a refused `CONNECT` a reason phrase that says what
/// to do (HTTP/1 only; HTTP/2 has no reason phrase).
pub fn explain_connect<B>(response: &mut Response<B>) {
    response
        .extensions_mut()
        .insert(ReasonPhrase::from_static(CONNECT_REASON));
}

#[cfg(test)]
mod tests {
    use super::{forward_refusal, route_refusal};
    use http::{Method, Uri, Version};

    fn message(method: Method, target: &str) -> Option<String> {
        let uri: Uri = target.parse().unwrap();
        forward_refusal(&method, &uri).map(|e| e.to_string())
    }

    #[test]
    fn each_refusal_names_the_request_that_works() {
        assert_eq!(message(Method::GET, "http://api.example/x?k=1"), None);
        let connect = message(Method::CONNECT, "api.example:443").unwrap();
        assert!(connect.contains("http://api.example/…"), "{connect}");
        let connect = message(Method::CONNECT, "api.example:8443").unwrap();
        assert!(connect.contains("http://api.example:8443/…"), "{connect}");
        let https = message(Method::GET, "https://api.example/x?key=secret").unwrap();
        assert!(https.contains("http://api.example/x "), "{https}");
        assert!(!https.contains("secret"), "{https}");
        let origin = message(Method::GET, "/v1/x?key=secret").unwrap();
        assert!(origin.contains("http://HOST/v1/x,"), "{origin}");
        assert!(!origin.contains("secret"), "{origin}");
        let star = message(Method::OPTIONS, "*").unwrap();
        assert!(star.contains("http://HOST/*"), "{star}");
        // HTTP/2 `:scheme http`, `:authority`, `:path *`.
        let h2_star = Uri::from_parts({
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(http::uri::Scheme::HTTP);
            parts.authority = Some("api.example".parse().unwrap());
            parts.path_and_query = Some("*".parse().unwrap());
            parts
        })
        .unwrap();
        let h2_star = forward_refusal(&Method::OPTIONS, &h2_star)
            .unwrap()
            .to_string();
        assert!(h2_star.contains("http://api.example/v1/items"), "{h2_star}");
    }

    #[test]
    fn route_listeners_refuse_http1_urls_only() {
        let url: Uri = "http://other.example/x?key=secret".parse().unwrap();
        let refused = route_refusal(Version::HTTP_11, &url).unwrap().to_string();
        assert!(
            refused.contains("/x,") && refused.contains("other.example"),
            "{refused}"
        );
        assert!(!refused.contains("secret"), "{refused}");
        assert!(route_refusal(Version::HTTP_10, &url).is_some());
        assert!(route_refusal(Version::HTTP_2, &url).is_none());
        let path: Uri = "/x".parse().unwrap();
        assert!(route_refusal(Version::HTTP_11, &path).is_none());
    }
}
