//! What host and port sidekey considers the same: a `[forward_proxy] hosts`
//! key, checked and put in canonical form once at config time
//! ([`ForwardHost`]), and the authority of an app's `http://` request, put
//! in the same form for the lookup ([`request_key`]).
//!
//! A key is a host and an optional port: `"api.example"`, `"api.example:8443"`,
//! `"10.0.0.7"`, `"[2001:db8::7]:8443"`. It names exactly one (host, port)
//! that the app's `http://` requests may go to:
//!
//! - without a port, the default port: the app's `http://api.example/…`
//!   (port 80, written or not) goes to `https://api.example/…` (port 443);
//! - with a port, that port: `http://api.example:8443/…` goes to
//!   `https://api.example:8443/…`.
//!
//! The canonical form is a lowercase DNS name, dotted-decimal IPv4 or
//! `[IPv6]` as Rust writes it. Host names compare ASCII case-insensitively
//! and nothing else: no trailing dot, no percent-decoding, no other spelling
//! of an IP address. A key that could never match such a request (`*.x`, a
//! URL, user information, an unbracketed or malformed IPv6 literal, a number
//! that only some resolvers read as an IPv4 address, a port outside
//! 1-65535) is refused by `check`; a request spelling a host some other way
//! finds no key.

use std::borrow::Cow;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use http::uri::Authority;
use serde::de::{self, Deserialize, Deserializer};

/// One `hosts` key: where the forward proxy may send a credential.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ForwardHost {
    /// Lowercase DNS name, dotted-decimal IPv4, or `[IPv6]` in canonical form.
    pub host: String,
    /// The key's port; `None` for the default port.
    pub port: Option<u16>,
}

impl ForwardHost {
    /// Parse and canonicalise a key, or say why it can never match.
    pub fn parse(key: &str) -> Result<ForwardHost, String> {
        if key.is_empty() {
            return Err("the host is empty".to_owned());
        }
        if key.contains("://") {
            return Err("write the host without a scheme, e.g. \"api.example.com\"".to_owned());
        }
        if key.contains('@') {
            return Err("user information (`…@`) is not part of a host".to_owned());
        }
        if key.contains(['/', '?', '#']) {
            return Err("a host, not a URL: remove the path".to_owned());
        }
        if key.contains('*') {
            return Err("wildcards are not supported; list each host".to_owned());
        }
        if key.contains('%') {
            return Err("percent-encoding is not allowed in a host".to_owned());
        }
        if key
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err("a host has no spaces or control characters".to_owned());
        }
        let (host, port) = split_port(key)?;
        let port = port.map(parse_port).transpose()?;
        let host = if let Some(inner) = host.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| "malformed IPv6 literal: `]` missing".to_owned())?;
            let ip: Ipv6Addr = inner
                .parse()
                .map_err(|_| format!("`{inner}` is not an IPv6 address"))?;
            format!("[{ip}]")
        } else if let Ok(ip) = host.parse::<Ipv4Addr>() {
            ip.to_string()
        } else {
            dns_name(host)?
        };
        Ok(ForwardHost { host, port })
    }

    /// The port the app's `http://` URL names for this key (80 when none).
    pub fn request_port(&self) -> u16 {
        self.port.unwrap_or(HTTP_PORT)
    }

    /// The authority of the `https://` upstream: the host, with the key's port if any.
    pub fn upstream_authority(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.clone(),
        }
    }
}

impl fmt::Display for ForwardHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.upstream_authority())
    }
}

impl<'de> Deserialize<'de> for ForwardHost {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let key = String::deserialize(d)?;
        ForwardHost::parse(&key).map_err(|why| de::Error::custom(format!("`{key}`: {why}")))
    }
}

/// The port of an `http://` URL that writes none.
const HTTP_PORT: u16 = 80;

/// The (host, port) of a request's authority in the form of a key:
/// lowercased, `[IPv6]` canonical, port 80 when none is written. Other
/// spellings are left as they are (and so match no key); `None` for a
/// bracketed literal that is no IPv6 address. A host already in canonical
/// form is borrowed, not copied.
pub fn request_key(authority: &Authority) -> Option<(Cow<'_, str>, u16)> {
    let (host, port) = (authority.host(), authority.port_u16().unwrap_or(HTTP_PORT));
    if let Some(inner) = host.strip_prefix('[') {
        let ip: Ipv6Addr = inner.strip_suffix(']')?.parse().ok()?;
        return Some((Cow::Owned(format!("[{ip}]")), port));
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some((Cow::Owned(host.to_ascii_lowercase()), port));
    }
    Some((Cow::Borrowed(host), port))
}

/// The port an absolute URL's `authority` writes (`None` when it writes
/// none, or an empty one), refused outside 1-65535: the `http` crate reads
/// such a port as no port at all, which would connect to the scheme's
/// default port instead of failing.
pub fn written_port(authority: &Authority) -> Result<Option<u16>, String> {
    let host_and_port = authority.as_str().rsplit('@').next().unwrap_or_default();
    let after_host = host_and_port
        .get(authority.host().len()..)
        .unwrap_or_default();
    match after_host.strip_prefix(':') {
        None | Some("") => Ok(None),
        Some(port) => parse_port(port).map(Some),
    }
}

/// `host[:port]`, `[v6][:port]`.
fn split_port(key: &str) -> Result<(&str, Option<&str>), String> {
    if key.starts_with('[') {
        return match key.find(']') {
            Some(end) => match &key[end + 1..] {
                "" => Ok((key, None)),
                rest => match rest.strip_prefix(':') {
                    Some(port) => Ok((&key[..=end], Some(port))),
                    None => Err("malformed IPv6 literal: expected `:PORT` after `]`".to_owned()),
                },
            },
            None => Err("malformed IPv6 literal: `]` missing".to_owned()),
        };
    }
    match key.matches(':').count() {
        0 => Ok((key, None)),
        1 => {
            let (host, port) = key.split_once(':').unwrap_or((key, ""));
            Ok((host, Some(port)))
        }
        _ => Err("write IPv6 addresses in brackets, e.g. \"[2001:db8::7]:8443\"".to_owned()),
    }
}

fn parse_port(port: &str) -> Result<u16, String> {
    let number = if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        port.parse::<u16>().ok().filter(|p| *p != 0)
    } else {
        None
    };
    number.ok_or_else(|| format!("`{port}` is not a port (1-65535)"))
}

/// A DNS name, lowercased: labels of letters, digits, `-` and `_`, and not
/// a number that some resolvers read as an IPv4 address (`2130706433`,
/// `0x7f.1`, `0177.0.0.1`).
fn dns_name(host: &str) -> Result<String, String> {
    let name = host.to_ascii_lowercase();
    if name.ends_with('.') {
        return Err(format!(
            "remove the trailing dot (`{}`)",
            name.trim_end_matches('.')
        ));
    }
    if name.len() > 253 {
        return Err("a host name is at most 253 characters".to_owned());
    }
    let mut labels = name.split('.');
    let ok_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !labels.all(ok_label) {
        return Err(format!(
            "`{host}` is not a host name such as \"api.example.com\""
        ));
    }
    let last = name.rsplit('.').next().unwrap_or_default();
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || last
            .strip_prefix("0x")
            .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if numeric {
        return Err(format!(
            "`{host}` reads as an IPv4 address in a form that not every resolver \
             understands; write it in dotted decimal such as \"10.0.0.7\""
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use http::uri::Authority;

    use super::{ForwardHost, request_key, written_port};

    fn key(text: &str) -> (String, Option<u16>) {
        let host = ForwardHost::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        (host.host, host.port)
    }

    #[test]
    fn a_written_port_must_be_one_to_65535() {
        let port = |authority: &str| written_port(&authority.parse::<Authority>().unwrap());
        assert_eq!(port("api.example"), Ok(None));
        assert_eq!(port("api.example:"), Ok(None));
        assert_eq!(port("api.example:8443"), Ok(Some(8443)));
        assert_eq!(port("[::1]:8443"), Ok(Some(8443)));
        assert_eq!(port("[::1]"), Ok(None));
        assert_eq!(port("user:pw@api.example:443"), Ok(Some(443)));
        for bad in [
            "api.example:70000",
            "api.example:0",
            "9:99999",
            "[::1]:65536",
        ] {
            assert!(
                port(bad).unwrap_err().contains("is not a port (1-65535)"),
                "{bad}"
            );
        }
    }

    #[test]
    fn keys_are_canonical() {
        assert_eq!(key("API.Example.com"), ("api.example.com".into(), None));
        assert_eq!(
            key("api.example.com:8443"),
            ("api.example.com".into(), Some(8443))
        );
        assert_eq!(key("localhost"), ("localhost".into(), None));
        assert_eq!(key("10.0.0.7:443"), ("10.0.0.7".into(), Some(443)));
        assert_eq!(key("[2001:DB8:0::7]"), ("[2001:db8::7]".into(), None));
        assert_eq!(key("[::1]:8443"), ("[::1]".into(), Some(8443)));
        assert_eq!(key("svc_a.ns.svc"), ("svc_a.ns.svc".into(), None));
        assert_eq!(key("3com.example"), ("3com.example".into(), None));
        let host = ForwardHost::parse("api.example").unwrap();
        assert_eq!(
            (host.request_port(), host.upstream_authority()),
            (80, "api.example".into())
        );
        let host = ForwardHost::parse("api.example:8443").unwrap();
        assert_eq!(
            (host.request_port(), host.upstream_authority()),
            (8443, "api.example:8443".into())
        );
    }

    #[test]
    fn keys_that_can_never_match_are_refused() {
        for (text, why) in [
            ("", "empty"),
            ("*.example.com", "wildcards"),
            ("https://api.example.com", "scheme"),
            ("api.example.com/v1", "path"),
            ("user@api.example.com", "user information"),
            ("api.example.com.", "trailing dot"),
            ("api%2eexample.com", "percent"),
            ("api example.com", "spaces"),
            ("api.example.com:", "not a port"),
            ("api.example.com:0", "not a port"),
            ("api.example.com:65536", "not a port"),
            ("api.example.com:https", "not a port"),
            ("api.example.com:+443", "not a port"),
            ("::1", "brackets"),
            ("[::1", "`]` missing"),
            ("[zz::1]", "not an IPv6 address"),
            ("[::1]8443", "after `]`"),
            ("[fe80::1%eth0]", "percent"),
            ("2130706433", "dotted decimal"),
            ("0x7f000001", "dotted decimal"),
            ("0177.0.0.1", "dotted decimal"),
            ("127.1", "dotted decimal"),
            ("-api.example", "not a host name"),
            ("api..example", "not a host name"),
        ] {
            let err = ForwardHost::parse(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn request_hosts_are_canonical_only_where_keys_are() {
        let key = |authority: &'static str| {
            request_key(&Authority::from_static(authority)).map(|(h, p)| (h.into_owned(), p))
        };
        assert_eq!(key("api.example"), Some(("api.example".into(), 80)));
        assert_eq!(key("API.Example:8443"), Some(("api.example".into(), 8443)));
        assert_eq!(key("[0:0::1]"), Some(("[::1]".into(), 80)));
        assert_eq!(
            key("[::FFFF:7f00:1]:81"),
            Some(("[::ffff:127.0.0.1]".into(), 81))
        );
        assert_eq!(key("[zz]"), None);
        // Other spellings of a name or address stay what they are.
        assert_eq!(key("api.example."), Some(("api.example.".into(), 80)));
        assert_eq!(key("2130706433"), Some(("2130706433".into(), 80)));
    }
}
