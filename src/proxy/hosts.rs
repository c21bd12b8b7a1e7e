//! The forward proxy's table: which (host, port) of an app's `http://`
//! request URL goes to which route. Built once from the configuration's
//! [`ForwardHost`] keys; per request it is one hash lookup on the host (put
//! in the keys' form by [`request_key`], which copies only when the request
//! spells it otherwise) and a scan of that host's few ports.
//!
//! The request's authority is only a lookup key: each route's upstream
//! authority comes from the configuration, so no spelling the app uses can
//! send the credential anywhere the configuration does not name. Requests
//! whose authority carries user information are refused; a listed name
//! written with a trailing dot is refused with the spelling that is listed.

use std::collections::HashMap;
use std::sync::Arc;

use http::Uri;

use super::route::Route;
use crate::error::ProxyError;
use crate::host::{ForwardHost, request_key};

/// Routes of the forward proxy by request host and port.
#[derive(Debug, Default)]
pub struct ForwardHosts {
    by_host: HashMap<String, Vec<(u16, Arc<Route>)>>,
}

impl ForwardHosts {
    /// Add the route for requests to `key`'s host and port.
    pub fn insert(&mut self, key: &ForwardHost, route: Arc<Route>) {
        let port = key.request_port();
        let ports = self.by_host.entry(key.host.clone()).or_default();
        ports.retain(|(p, _)| *p != port);
        ports.push((port, route));
    }

    /// One of its routes, if it has any.
    pub fn any(&self) -> Option<&Arc<Route>> {
        self.routes().next()
    }

    /// Every route it holds.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.by_host.values().flatten().map(|(_, route)| route)
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
        let not_allowed = || ProxyError::HostNotAllowed(authority.as_str().to_owned());
        let (host, port) = request_key(authority).ok_or_else(not_allowed)?;
        self.route(&host, port).ok_or_else(|| {
            // `api.example.` (a fully qualified name, as Kubernetes apps
            // write to skip the search domains) is another spelling, never
            // matched; the answer names the listed one.
            match host.strip_suffix('.') {
                Some(listed) if self.route(listed, port).is_some() => {
                    let listed = match port {
                        80 => listed.to_owned(),
                        port => format!("{listed}:{port}"),
                    };
                    ProxyError::HostNotAllowed(format!(
                        "{authority} (its trailing dot makes it another name: request http://{listed}/…)"
                    ))
                }
                _ => not_allowed(),
            }
        })
    }

    fn route(&self, host: &str, port: u16) -> Option<&Arc<Route>> {
        self.by_host
            .get(host)
            .and_then(|ports| ports.iter().find(|(p, _)| *p == port))
            .map(|(_, route)| route)
    }
}
