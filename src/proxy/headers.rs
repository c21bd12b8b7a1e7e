//! Strip, then inject: the proxy owns the credential headers.
//!
//! The app's request loses its hop-by-hop headers (RFC 9110 §7.6.1, plus any
//! named in `Connection`), `Host` (the client sets the upstream's), `Expect`
//! (already answered by our server), and its own values of every header the
//! credential or route sets; then the route's static headers and the
//! credential's prebuilt headers are inserted. Values are shared `Bytes`:
//! inserting clones a reference, never the text.

use http::header::{
    CONNECTION, EXPECT, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Remove hop-by-hop headers, including those listed in `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &PROXY_AUTHENTICATE,
        &PROXY_AUTHORIZATION,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
        &UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Prepare the app's headers for the upstream: remove hop-by-hop headers,
/// `Host`, `Expect` and every name in `strip`; insert `route_headers`, then
/// `credential_headers` (the credential wins on a clash).
pub fn prepare_request(
    headers: &mut HeaderMap,
    strip: &[HeaderName],
    route_headers: &[(HeaderName, HeaderValue)],
    credential_headers: &[(HeaderName, HeaderValue)],
) {
    remove_hop_by_hop(headers);
    headers.remove(HOST);
    headers.remove(EXPECT);
    for name in strip {
        headers.remove(name);
    }
    inject(headers, route_headers, credential_headers);
}

/// Insert `route_headers` then `credential_headers`, replacing any value.
pub fn inject(
    headers: &mut HeaderMap,
    route_headers: &[(HeaderName, HeaderValue)],
    credential_headers: &[(HeaderName, HeaderValue)],
) {
    for (name, value) in route_headers.iter().chain(credential_headers) {
        headers.insert(name.clone(), value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::AUTHORIZATION;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        headers
    }

    #[test]
    fn strips_then_injects() {
        let mut headers = map(&[
            ("authorization", "Bearer app-token"),
            ("authorization", "Basic second"),
            ("x-inbenta-key", "app-key"),
            ("host", "localhost:8080"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("expect", "100-continue"),
            ("accept", "application/json"),
        ]);
        let credential = [
            (AUTHORIZATION, HeaderValue::from_static("Bearer real")),
            (
                HeaderName::from_static("x-inbenta-key"),
                HeaderValue::from_static("real-key"),
            ),
        ];
        let route = [(
            HeaderName::from_static("x-extra"),
            HeaderValue::from_static("1"),
        )];
        let strip = [AUTHORIZATION, HeaderName::from_static("x-inbenta-key")];
        prepare_request(&mut headers, &strip, &route, &credential);

        assert_eq!(headers.get_all(AUTHORIZATION).iter().count(), 1);
        assert_eq!(headers[AUTHORIZATION], "Bearer real");
        assert_eq!(headers["x-inbenta-key"], "real-key");
        assert_eq!(headers["x-extra"], "1");
        assert_eq!(headers["accept"], "application/json");
        for gone in [
            "host",
            "connection",
            "x-secret-hop",
            "keep-alive",
            "transfer-encoding",
            "expect",
        ] {
            assert!(!headers.contains_key(gone), "{gone} should be removed");
        }
    }

    #[test]
    fn credential_wins_over_route_header_of_the_same_name() {
        let mut headers = HeaderMap::new();
        inject(
            &mut headers,
            &[(AUTHORIZATION, HeaderValue::from_static("route"))],
            &[(AUTHORIZATION, HeaderValue::from_static("credential"))],
        );
        assert_eq!(headers[AUTHORIZATION], "credential");
    }
}
