//! The forward proxy's table: which (host, port) of an app's `http://`
//! request URL goes to which route. Built once from the configuration's
//! [`ForwardHost`](crate::config::ForwardHost) keys; per request it is one
//! hash lookup on the host (lowercased, or IPv6 put in canonical form, only
//! when the request spells it otherwise) and a scan of that host's few ports.
//!
//! The request's authority is only a lookup key: each route's upstream
//! authority comes from the configuration, so no spelling the app uses can
//! send the credential anywhere the configuration does not name. Requests
//! whose authority carries user information are refused.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::sync::Arc;

use http::Uri;

use super::route::Route;
use crate::error::ProxyError;

/// Routes of the forward proxy by request host and port.
#[derive(Debug, Default)]
pub struct ForwardHosts {
    by_host: HashMap<String, Vec<(u16, Arc<Route>)>>,
}

impl ForwardHosts {
    /// Add the route for requests to `host` (canonical, as in
    /// [`ForwardHost`](crate::config::ForwardHost)) on `port`.
    pub fn insert(&mut self, host: &str, port: u16, route: Arc<Route>) {
        let ports = self.by_host.entry(host.to_owned()).or_default();
        ports.retain(|(p, _)| *p != port);
        ports.push((port, route));
    }

    /// The route for an absolute-form `http://` request URI.
    pub fn find(&self, uri: &Uri) -> Result<&Arc<Route>, ProxyError> {
        let authority = uri.authority().ok_or_else(|| {
            ProxyError::BadRequest("forward proxy request has no host".to_owned())
        })?;
        if authority.as_str().contains('@') {
            return Err(ProxyError::BadRequest(
                "user information in a forward proxy URL is not forwarded".to_owned(),
            ));
        }
        let port = authority.port_u16().unwrap_or(80);
        let host = canonical_host(authority.host())
            .ok_or_else(|| ProxyError::HostNotAllowed(authority.as_str().to_owned()))?;
        self.by_host
            .get(host.as_ref())
            .and_then(|ports| ports.iter().find(|(p, _)| *p == port))
            .map(|(_, route)| route)
            .ok_or_else(|| ProxyError::HostNotAllowed(authority.as_str().to_owned()))
    }
}

/// The host as the table spells it: ASCII lowercase, `[IPv6]` canonical.
/// `None` for a bracketed literal that is no IPv6 address.
fn canonical_host(host: &str) -> Option<Cow<'_, str>> {
    if let Some(inner) = host.strip_prefix('[') {
        let ip: Ipv6Addr = inner.strip_suffix(']')?.parse().ok()?;
        return Some(Cow::Owned(format!("[{ip}]")));
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(Cow::Owned(host.to_ascii_lowercase()));
    }
    Some(Cow::Borrowed(host))
}

#[cfg(test)]
mod tests {
    use super::canonical_host;

    #[test]
    fn hosts_are_canonical_only_where_the_table_is() {
        assert_eq!(
            canonical_host("api.example").as_deref(),
            Some("api.example")
        );
        assert_eq!(
            canonical_host("API.Example").as_deref(),
            Some("api.example")
        );
        assert_eq!(canonical_host("[0:0::1]").as_deref(), Some("[::1]"));
        assert_eq!(
            canonical_host("[::FFFF:7f00:1]").as_deref(),
            Some("[::ffff:127.0.0.1]")
        );
        assert_eq!(canonical_host("[zz]"), None);
        // Other spellings of a name or address stay what they are.
        assert_eq!(
            canonical_host("api.example.").as_deref(),
            Some("api.example.")
        );
        assert_eq!(canonical_host("2130706433").as_deref(), Some("2130706433"));
    }
}
