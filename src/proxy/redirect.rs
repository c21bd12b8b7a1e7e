//! The forward proxy's answers that point the app at the upstream's own
//! `https://` URLs (`Location`, `Content-Location`): the app asked for
//! `http://HOST/…` and sidekey sent it as `https://HOST/…`, so an upstream
//! that redirects to `https://HOST/next` is pointed back at `http://HOST/next`,
//! for the answering host and every other `hosts` key of the same
//! credential (each key's `http://` URL goes to its own `https://` upstream).
//! Hosts of another credential are left as they are: an upstream must not
//! steer a redirect-following app (a `307` POST, body and all) to where a
//! credential it never had is injected.
//! A redirect-following app then comes back through sidekey (and gets its
//! token injected) instead of asking for an `https://` tunnel, which the
//! forward proxy refuses.
//!
//! The targets of `Link` fields (RFC 8288), on any answer, are rewritten
//! the same way ([`super::link`]): a paginated API's
//! `<https://HOST/items?page=2>; rel="next"` reaches the app as
//! `<http://HOST/items?page=2>; rel="next"`.
//!
//! Only the keys' upstream origins are rewritten, compared ASCII
//! case-insensitively; every other URL, and relative ones, pass as they are.

use http::HeaderMap;

use super::link;

/// Rewrite `https://{authority}…` to `http://{authority}…`, for each of
/// `authorities`, in the answer's `Location` and `Content-Location` when it
/// is a `redirect` (a 3xx or a `201`), and in its `Link` targets whatever
/// its status.
pub fn rewrite(redirect: bool, headers: &mut HeaderMap, authorities: &[Box<str>]) {
    link::rewrite_answer_urls(headers, redirect, |url| to_http(url, authorities));
}

/// `url` as an `http://` URL, when it is an `https://` URL of one of
/// `authorities`.
fn to_http(url: &str, authorities: &[Box<str>]) -> Option<String> {
    let scheme = url.get(..8)?;
    if !scheme.eq_ignore_ascii_case("https://") {
        return None;
    }
    let rest = &url[8..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(end);
    // `https://host:443` is the key `host` (whose app-side URL has no port).
    let portless = authority
        .strip_suffix(":443")
        .filter(|host| host.ends_with(']') || !host.contains(':'));
    let listed = |name: &str| authorities.iter().any(|key| key.eq_ignore_ascii_case(name));
    let authority = if listed(authority) {
        authority
    } else {
        portless.filter(|host| listed(host))?
    };
    Some(format!("http://{authority}{after}"))
}

#[cfg(test)]
mod tests {
    use super::to_http;

    fn rewritten(url: &str) -> Option<String> {
        let listed: [Box<str>; 4] = [
            "api.example:8443".into(),
            "other.example".into(),
            "[::1]".into(),
            "tls.example:443".into(),
        ];
        to_http(url, &listed)
    }

    #[test]
    fn only_listed_https_urls_become_http() {
        for (url, expected) in [
            (
                "https://api.example:8443/a?b#c",
                Some("http://api.example:8443/a?b#c"),
            ),
            ("HTTPS://API.example:8443", Some("http://API.example:8443")),
            (
                "https://api.example:8443?q",
                Some("http://api.example:8443?q"),
            ),
            ("https://api.example/a", None),
            ("https://Other.example/a", Some("http://Other.example/a")),
            (
                "https://other.example:443/a",
                Some("http://other.example/a"),
            ),
            ("https://api.example:443/a", None),
            ("https://api.example:84430/a", None),
            ("https://api.example:8443.evil/a", None),
            ("https://user@api.example:8443/a", None),
            ("http://api.example:8443/a", None),
            ("/a", None),
            ("https:", None),
            ("https://[::1]:443/a", Some("http://[::1]/a")),
            ("https://[::1]:8443/a", None),
            // A key listed with :443 keeps it.
            (
                "https://tls.example:443/a",
                Some("http://tls.example:443/a"),
            ),
            ("https://tls.example/a", None),
        ] {
            assert_eq!(rewritten(url).as_deref(), expected, "{url}");
        }
    }
}
