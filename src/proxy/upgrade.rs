//! HTTP/1.1 `Upgrade` requests (RFC 9110 §7.8): which are refused, which
//! are served as the plain requests they also are.
//!
//! sidekey carries HTTP only: it cannot relay the protocol a connection
//! switches to (nor inject a credential into it), and `Upgrade` and
//! `Connection` are hop-by-hop, so they never reach the upstream
//! ([`super::headers`]). Served without them, a WebSocket handshake reached
//! the upstream as a plain `GET` and the app got a `200` (or the upstream's
//! `400`/`426`) where its client library expected `101`: a confusing
//! failure, and a request the upstream never meant to serve. So an offer
//! whose client cannot go on without the switch (`websocket`, `SPDY/3.1`
//! as `kubectl` sends, anything unknown) is refused with
//! `501 upgrade_not_supported`, before it is forwarded.
//!
//! An offer a server may decline by answering in HTTP/1.1, as designed,
//! is declined: `h2c` (RFC 7540 §3.2; HTTP/2's own clients fall back) and
//! `TLS/x` (RFC 2817 §3.1, an optional upgrade). The request is served
//! over HTTP/1.1, its offer dropped.
//!
//! Checked only for a request that carries `Upgrade`: the header pass that
//! strips hop-by-hop fields already notes it ([`super::headers`]), so other
//! requests pay nothing. A request whose route has no token yet is checked
//! before it waits for one ([`super::forward`]): the refusal comes at once,
//! not after the first-token wait as a `503` that blames the credential.
//! HTTP/2 forbids the field (RFC 9113 §8.2.2; hyper refuses such a
//! stream), and extended `CONNECT` (RFC 8441) is not offered.

use http::HeaderMap;
use http::header::UPGRADE;

use crate::error::ProxyError;

/// Longest protocol name echoed in a refusal.
const ECHO_LIMIT: usize = 32;

/// Why a request offering the `Upgrade`s in `headers` is refused; `None`
/// when every offer is one a server may decline.
pub fn refusal(headers: &HeaderMap) -> Option<ProxyError> {
    let refused = headers
        .get_all(UPGRADE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|offer| !offer.is_empty())
        .find(|offer| !declinable(offer))?;
    let name = refused.split(|b| *b == b'/').next().unwrap_or_default();
    let message = if name.eq_ignore_ascii_case(b"websocket") {
        "WebSocket upgrades are not proxied: sidekey carries HTTP requests only, \
         and cannot relay (or inject credentials into) a WebSocket connection"
            .to_owned()
    } else {
        format!(
            "Upgrade to {} is not proxied: sidekey carries HTTP/1.1 and HTTP/2 requests \
             only, not the protocol a connection switches to",
            echoed(refused)
        )
    };
    Some(ProxyError::UpgradeNotSupported(message))
}

/// Whether a server may decline `offer` and answer in HTTP/1.1.
fn declinable(offer: &[u8]) -> bool {
    let name = offer.split(|b| *b == b'/').next().unwrap_or_default();
    name.eq_ignore_ascii_case(b"h2c") || name.eq_ignore_ascii_case(b"tls")
}

/// `offer` as text to echo: a short token, or a placeholder.
fn echoed(offer: &[u8]) -> String {
    let token = offer.len() <= ECHO_LIMIT
        && offer
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(b));
    if token {
        String::from_utf8_lossy(offer).into_owned()
    } else {
        "another protocol".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn offering(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(UPGRADE, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn offers_a_server_may_decline_are_served() {
        for values in [&["h2c"][..], &["H2C"], &["TLS/1.2"], &["h2c", " "], &[""]] {
            assert!(refusal(&offering(values)).is_none(), "{values:?}");
        }
    }

    #[test]
    fn offers_that_need_the_switch_are_refused_by_name() {
        let message = |values: &[&str]| {
            refusal(&offering(values))
                .map(|err| err.to_string())
                .unwrap_or_else(|| panic!("{values:?} served"))
        };
        assert!(message(&["websocket"]).starts_with("WebSocket upgrades"));
        assert!(message(&["WebSocket/13"]).starts_with("WebSocket upgrades"));
        assert!(message(&["h2c, websocket"]).starts_with("WebSocket upgrades"));
        assert!(message(&["h2c", "websocket"]).starts_with("WebSocket upgrades"));
        assert!(message(&["SPDY/3.1"]).contains("Upgrade to SPDY/3.1 is not proxied"));
        assert!(message(&["a\"b"]).contains("Upgrade to another protocol"));
        assert!(message(&[&"x".repeat(64)]).contains("another protocol"));
    }
}
