//! Strip, then inject: the proxy owns the credential headers.
//!
//! The app's request loses its hop-by-hop headers (RFC 9110 §7.6.1, plus any
//! named in `Connection`), `Host` (the client sets the upstream's), `Expect`
//! (already answered by our server), and its own values of every header the
//! credential or route sets; then the route's static headers and the
//! credential's prebuilt headers are inserted. Values are shared `Bytes`:
//! inserting clones a reference, never the text. The upstream's response
//! loses its hop-by-hop headers too, and a `Content-Length` sent beside
//! `Transfer-Encoding` ([`prepare_response`]).
//!
//! Trailers: `TE` is hop-by-hop, but an app that accepts trailers
//! (`TE: trailers`, which gRPC clients send and gRPC servers require) gets
//! `te: trailers` passed on, since the proxy passes trailers on too; it is
//! the one `TE` value HTTP/2 allows (RFC 9113 §8.2.2). `Trailer`, which
//! names the trailer fields to come, is end-to-end (RFC 9110 §6.6.2) and
//! kept: hyper sends an HTTP/1.1 trailer field only when `Trailer` names it.

use http::header::{
    CONNECTION, CONTENT_LENGTH, EXPECT, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::error::ProxyError;

/// [`UPGRADE`]'s bit in [`Present`].
const UPGRADE_BIT: Present = 1 << 7;

/// The fields removed from every message whether or not `Connection` names
/// them: RFC 9110 §7.6.1's, and the older `Keep-Alive` and
/// `Proxy-Connection`; [`hop_by_hop_bit`] gives each one's bit.
static HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// [`TE`]'s bit in [`Present`].
const TE_BIT: Present = 1 << 5;

/// [`TRANSFER_ENCODING`]'s bit in [`Present`].
const TRANSFER_ENCODING_BIT: Present = 1 << 6;

/// Which of [`HOP_BY_HOP`] a map holds, one bit each (bit `i` is entry `i`).
type Present = u16;

/// `name`'s bit in [`Present`], or 0 when it is no [`HOP_BY_HOP`] field.
/// A `match` on the (lowercase) text: a length test for most names.
fn hop_by_hop_bit(name: &str) -> Present {
    let at = match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "transfer-encoding" => 6,
        "upgrade" => 7,
        _ => return 0,
    };
    1 << at
}

/// What a pass over a map found to remove.
#[derive(Default)]
struct Found {
    /// The [`HOP_BY_HOP`] fields present.
    hop_by_hop: Present,
    /// `Connection` lists a field beyond [`HOP_BY_HOP`].
    listed: bool,
}

impl Found {
    /// Note the field `name: value`.
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) {
        let bit = hop_by_hop_bit(name.as_str());
        self.hop_by_hop |= bit;
        if bit == 1 && !self.listed {
            self.listed = lists_others(value);
        }
    }

    /// Remove what was found from `headers`.
    fn remove(&self, headers: &mut HeaderMap) {
        if self.listed {
            remove_listed(headers);
        }
        if self.hop_by_hop == 0 {
            return;
        }
        for (at, name) in HOP_BY_HOP.iter().enumerate() {
            if self.hop_by_hop & (1 << at) != 0 {
                headers.remove(name);
            }
        }
    }
}

/// The names a `Connection` value lists: comma-separated, trimmed, empty
/// ones skipped; none for a value that is not visible ASCII.
fn listed_names(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
}

/// Whether a `Connection` value lists a field beyond [`HOP_BY_HOP`]
/// (usually it lists `keep-alive`, `upgrade` or `te`).
fn lists_others(value: &HeaderValue) -> bool {
    if value.as_bytes().eq_ignore_ascii_case(b"keep-alive") {
        return false;
    }
    listed_names(value).any(|name| {
        !HOP_BY_HOP
            .iter()
            .any(|hop| hop.as_str().eq_ignore_ascii_case(name))
    })
}

/// Remove the fields `Connection` lists (RFC 9110 §7.6.1). Without
/// allocating: a name is looked up as text (`HeaderMap` parses it on the
/// stack, case-insensitively; a token that is no field name matches
/// nothing), and each value taken out is a shared `Bytes` handle.
fn remove_listed(headers: &mut HeaderMap) {
    let mut at = 0;
    // By index, so that `headers` can change in between. `Connection`
    // itself stays until [`Found::remove`] ends, so the values stay put.
    while let Some(value) = headers.get_all(CONNECTION).iter().nth(at).cloned() {
        at += 1;
        for name in listed_names(&value) {
            if !name.eq_ignore_ascii_case(CONNECTION.as_str()) {
                headers.remove(name);
            }
        }
    }
}

/// Prepare the upstream's response headers for the app: remove hop-by-hop
/// headers, including those listed in `Connection`, and settle
/// `Content-Length`:
/// - beside `Transfer-Encoding`, it goes. The encoding wins (RFC 9112
///   §6.3) and the body passed on is the decoded one, so the length would
///   be wrong: an app would wait for bytes that never come, or read the
///   next response's as this one's. An intermediary must remove it before
///   forwarding (same section).
/// - a list (`5, 5`, valid by RFC 9110 §8.6; hyper has checked that its
///   values agree) becomes its one value: Node's parser refuses a list, and
///   Python's `http.client` reads such a body until the connection closes.
pub fn prepare_response(headers: &mut HeaderMap) {
    let mut found = Found::default();
    let mut length_list = None;
    for (name, value) in headers.iter() {
        found.note(name, value);
        if *name == CONTENT_LENGTH && length_list.is_none() && value.as_bytes().contains(&b',') {
            length_list = Some(value.clone());
        }
    }
    if found.hop_by_hop & TRANSFER_ENCODING_BIT != 0 {
        headers.remove(CONTENT_LENGTH);
    } else if let Some(list) = length_list {
        let first = list
            .as_bytes()
            .split(|b| *b == b',')
            .next()
            .unwrap_or_default();
        if let Ok(length) = HeaderValue::from_bytes(first.trim_ascii()) {
            headers.insert(CONTENT_LENGTH, length);
        }
    }
    found.remove(headers);
}

/// Prepare the app's headers for the upstream: remove hop-by-hop headers,
/// `Host`, `Expect` and every name in `strip`; insert `route_headers`, then
/// `credential_headers` (the credential wins on a clash). A request whose
/// `Upgrade` offer sidekey cannot decline is refused instead, its headers
/// untouched ([`super::upgrade`]).
///
/// One pass over the fields finds what is there to remove; only those are
/// looked up (hashed) again.
pub fn prepare_request(
    headers: &mut HeaderMap,
    strip: &[HeaderName],
    route_headers: &[(HeaderName, HeaderValue)],
    credential_headers: &[(HeaderName, HeaderValue)],
) -> Result<(), ProxyError> {
    let mut found = Found::default();
    let (mut host, mut expect, mut stripped) = (false, false, false);
    for (name, value) in headers.iter() {
        if *name == HOST {
            host = true;
        } else if *name == EXPECT {
            expect = true;
        } else {
            found.note(name, value);
            stripped = stripped || strip.contains(name);
        }
    }
    if found.hop_by_hop & UPGRADE_BIT != 0
        && let Some(refusal) = super::upgrade::refusal(headers)
    {
        return Err(refusal);
    }
    let accepts_trailers = found.hop_by_hop & TE_BIT != 0 && accepts_trailers(headers);
    found.remove(headers);
    if accepts_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if host {
        headers.remove(HOST);
    }
    if expect {
        headers.remove(EXPECT);
    }
    if stripped {
        for name in strip {
            headers.remove(name);
        }
    }
    inject(headers, route_headers, credential_headers);
    Ok(())
}

/// Whether the `TE` values list `trailers` (RFC 9110 §10.1.4).
fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(TE).iter().any(|value| {
        listed_names(value).any(|coding| {
            let name = coding.split(';').next().unwrap_or_default().trim();
            name.eq_ignore_ascii_case("trailers")
        })
    })
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
        prepare_request(&mut headers, &strip, &route, &credential).unwrap();

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
    fn te_trailers_is_passed_on_alone_and_trailer_is_kept() {
        for (te, passed) in [
            ("trailers", Some("trailers")),
            ("gzip, Trailers", Some("trailers")),
            ("deflate;q=0.5", None),
            ("trailersx", None),
        ] {
            let mut headers = map(&[("connection", "te"), ("trailer", "x-sum")]);
            headers.insert(TE, HeaderValue::from_static(te));
            prepare_request(&mut headers, &[], &[], &[]).unwrap();
            let te_left = headers.get(TE).map(|v| v.to_str().unwrap());
            assert_eq!(te_left, passed, "{te}");
            assert_eq!(headers["trailer"], "x-sum");
            assert!(!headers.contains_key(CONNECTION));
        }
    }

    #[test]
    fn connection_lists_are_removed_case_insensitively_across_values() {
        let mut headers = map(&[
            ("connection", "X-Secret-Hop ,  keep-alive"),
            ("connection", "close, x-other"),
            ("x-secret-hop", "1"),
            ("x-other", "2"),
            ("close", "3"),
            ("keep-alive", "timeout=5"),
            ("content-type", "application/json"),
        ]);
        prepare_response(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["content-type"]);
    }

    #[test]
    fn connection_may_list_end_to_end_fields_and_itself() {
        // The listing decides, however odd: RFC 9110 §7.6.1.
        let mut headers = map(&[
            ("connection", "content-type, connection, ,"),
            ("content-type", "application/json"),
            ("content-length", "2"),
        ]);
        prepare_response(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["content-length"]);
    }

    #[test]
    fn tokens_that_are_no_field_names_and_unreadable_values_remove_nothing_else() {
        let mut headers = map(&[("accept", "*/*"), ("te", "trailers")]);
        headers.append(CONNECTION, HeaderValue::from_static("no such name!, {}"));
        headers.append(CONNECTION, HeaderValue::from_bytes(b"accept\xff").unwrap());
        prepare_response(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn every_hop_by_hop_field_goes_without_a_connection_header() {
        let mut headers = HeaderMap::new();
        for name in &HOP_BY_HOP[1..] {
            headers.append(name.clone(), HeaderValue::from_static("x"));
        }
        headers.append("x-kept", HeaderValue::from_static("1"));
        prepare_response(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn a_length_beside_a_transfer_encoding_is_not_passed_on() {
        let mut headers = map(&[
            ("content-length", "40"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "1"),
        ]);
        prepare_response(&mut headers);
        assert_eq!(headers, map(&[("x-kept", "1")]));
        let mut headers = map(&[("content-length", "40"), ("connection", "close")]);
        prepare_response(&mut headers);
        assert_eq!(headers, map(&[("content-length", "40")]));
    }

    #[test]
    fn a_length_list_becomes_its_one_value() {
        let mut headers = map(&[("content-length", " 7 ,7"), ("x-kept", "1, 2")]);
        prepare_response(&mut headers);
        assert_eq!(headers, map(&[("content-length", "7"), ("x-kept", "1, 2")]));
    }

    #[test]
    fn hop_by_hop_bits_name_their_fields() {
        for (at, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_bit(name.as_str()), 1 << at, "{name}");
        }
        assert_eq!(hop_by_hop_bit("user-agent"), 0);
    }

    #[test]
    fn stripped_names_go_with_all_their_values_and_connection_listed_ones_too() {
        let mut headers = map(&[
            ("authorization", "Bearer app-token"),
            ("authorization", "Basic second"),
            ("connection", "x-route"),
            ("x-route", "app"),
            ("x-app", "kept"),
        ]);
        prepare_request(
            &mut headers,
            &[AUTHORIZATION],
            &[],
            &[(AUTHORIZATION, HeaderValue::from_static("Bearer real"))],
        )
        .unwrap();
        let all: Vec<_> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(all, [("x-app", "kept"), ("authorization", "Bearer real")]);
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
