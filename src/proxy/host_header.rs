//! An HTTP/2 request's `host` field against its `:authority`.
//!
//! HTTP/2 carries the target's authority in `:authority`; a client that
//! sends `host` as well must send the same (RFC 9113 §8.3.1), and a server
//! should treat a request whose `host` names another entity as malformed.
//! sidekey reads neither to route a request on a route listener, reads only
//! `:authority` on the forward proxy, and never forwards `host`; still, an
//! app whose two disagree is broken, or probing which of them a proxy
//! believes, and is refused ([`check`], `400`) rather than served on one
//! reading of it.
//!
//! The two are compared as names of one entity: the host ASCII
//! case-insensitively, a port left out meaning the scheme's default.
//! HTTP/1 requests are not checked: there an absolute-form target wins over
//! `Host` (RFC 9112 §3.2.2), and an origin-form one has no other authority.

use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{Request, Version};

use crate::error::ProxyError;

/// Refuse an HTTP/2 `request` whose `host` fields name another host or
/// port than its `:authority` (or are no authority at all).
pub fn check<B>(request: &Request<B>) -> Result<(), ProxyError> {
    if request.version() != Version::HTTP_2 {
        return Ok(());
    }
    let Some(authority) = request.uri().authority() else {
        return Ok(());
    };
    let default_port = if request.uri().scheme() == Some(&Scheme::HTTPS) {
        443
    } else {
        80
    };
    let same = |host: &Authority| {
        host.host().eq_ignore_ascii_case(authority.host())
            && host.port_u16().unwrap_or(default_port)
                == authority.port_u16().unwrap_or(default_port)
    };
    let agrees = request.headers().get_all(HOST).iter().all(|value| {
        Authority::try_from(value.as_bytes())
            .map(|host| same(&host))
            .unwrap_or(false)
    });
    if agrees {
        Ok(())
    } else {
        Err(ProxyError::BadRequest(format!(
            "the request's host field names another host than its :authority \
             ({authority}): send the same in both, or host not at all"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::check;
    use http::{Request, Version};

    fn request(uri: &str, hosts: &[&str]) -> Request<()> {
        let mut builder = Request::get(uri).version(Version::HTTP_2);
        for host in hosts {
            builder = builder.header("host", *host);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn the_same_entity_in_any_spelling_agrees() {
        for (uri, hosts) in [
            ("http://api.example/x", &[][..]),
            ("http://api.example/x", &["api.example"][..]),
            ("http://api.example/x", &["API.Example:80"][..]),
            ("http://api.example:80/x", &["api.example"][..]),
            ("https://api.example/x", &["api.example:443"][..]),
            ("http://[::1]:8080/x", &["[::1]:8080"][..]),
        ] {
            assert!(check(&request(uri, hosts)).is_ok(), "{uri} {hosts:?}");
        }
    }

    #[test]
    fn another_host_or_port_or_a_second_host_is_refused() {
        for (uri, hosts) in [
            ("http://api.example/x", &["other.example"][..]),
            ("http://api.example/x", &["api.example:8080"][..]),
            ("https://api.example/x", &["api.example:80"][..]),
            (
                "http://api.example/x",
                &["api.example", "other.example"][..],
            ),
            ("http://api.example/x", &["api.example/x"][..]),
        ] {
            let refused = check(&request(uri, hosts)).unwrap_err().to_string();
            assert!(refused.contains("(api.example"), "{refused}");
        }
    }

    #[test]
    fn http1_is_not_checked() {
        let mut request = request("http://api.example/x", &["other.example"]);
        *request.version_mut() = Version::HTTP_11;
        assert!(check(&request).is_ok());
    }
}
