//! How long an HTTP/1.1 upstream keeps an idle connection, when it says so.
//!
//! Node.js (5 s by default), Apache httpd and many gateways advertise their
//! keep-alive timeout in every answer (`Keep-Alive: timeout=5`, RFC 2068
//! §19.7.1.1) and close the connection once it has been idle that long. A
//! request sent on it as that close happens is lost with it, and a POST
//! cannot be sent again (see `forward`). The pool therefore stops reusing a
//! connection a little before the timeout its upstream advertised
//! ([`idle_limit`]), as undici (Node's own client) does. Read once per
//! connection, from its first answer: servers send the same value on every
//! answer, and the request path pays no header lookup after that.

use std::time::Duration;

use http::{HeaderMap, HeaderName};

/// The field (not a constant of `http`).
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Most of the advertised timeout taken off it, to keep clear of the close:
/// a connection is not reused past `timeout - min(MARGIN, timeout / 2)`.
const MARGIN: Duration = Duration::from_secs(1);

/// How long a connection whose answer carried `headers` may sit idle and
/// still be reused, from its `Keep-Alive: timeout=N`; `None` when the
/// upstream says nothing (or nothing readable) about it.
pub fn idle_limit(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(&KEEP_ALIVE)?.to_str().ok()?;
    let seconds = value.split(',').find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("timeout")
            .then(|| value.trim().trim_matches('"').parse::<u64>().ok())?
    })?;
    let timeout = Duration::from_secs(seconds);
    Some(timeout - MARGIN.min(timeout / 2))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn limit(value: &'static str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert(&KEEP_ALIVE, HeaderValue::from_static(value));
        idle_limit(&headers)
    }

    #[test]
    fn the_timeout_is_read_and_kept_clear_of() {
        assert_eq!(limit("timeout=5"), Some(Duration::from_secs(4)));
        assert_eq!(limit("timeout=5, max=1000"), Some(Duration::from_secs(4)));
        assert_eq!(
            limit("max=100 , Timeout = 15"),
            Some(Duration::from_secs(14))
        );
        assert_eq!(limit("timeout=\"2\""), Some(Duration::from_secs(1)));
        assert_eq!(limit("timeout=1"), Some(Duration::from_millis(500)));
        assert_eq!(limit("timeout=0"), Some(Duration::ZERO));
    }

    #[test]
    fn no_readable_timeout_says_nothing() {
        assert_eq!(idle_limit(&HeaderMap::new()), None);
        assert_eq!(limit("max=100"), None);
        assert_eq!(limit("timeout=soon"), None);
        assert_eq!(limit("timeout=-1"), None);
        assert_eq!(limit("timeout"), None);
    }
}
