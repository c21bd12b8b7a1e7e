//! What the forward proxy answers a request that is no `http://` URL: an
//! app that uses the listener as its base URL (origin-form `GET /x`), an
//! `https://` URL in absolute form, or the `CONNECT` clients send for
//! `https://` URLs. Each answer names the `http://` request that would
//! have worked, so the fix is in the message.
//!
//! Only the target's authority and path are echoed, never its query
//! (an app may carry a key there).

use http::{Method, Uri};

use crate::error::ProxyError;

/// Why `method uri` is not a request the forward proxy forwards, when it is
/// not an absolute `http://` URL; `None` when it is one.
pub fn refusal(method: &Method, uri: &Uri) -> Option<ProxyError> {
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
        return None;
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

#[cfg(test)]
mod tests {
    use super::refusal;
    use http::{Method, Uri};

    fn message(method: Method, target: &str) -> Option<String> {
        let uri: Uri = target.parse().unwrap();
        refusal(&method, &uri).map(|e| e.to_string())
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
    }
}
