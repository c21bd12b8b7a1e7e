//! Building the running parts of one configuration: its credential engines
//! (taking over the unchanged ones of the configuration before), each route
//! with its pooled upstream client, and the dispatch table of every listener
//! (with the table that points its answers back at its routes, [`relocate`])
//! and of the forward proxy. A reload builds a new [`Generation`] and swaps
//! it in whole; nothing here binds a socket.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use super::client::{ClientOptions, upstream_client};
use super::relocate;
use super::route::{Base, RouteParts, Target};
use super::{Dispatch, ForwardHosts, Route};
use crate::config::{RouteConfig, Upstream};
use crate::credential::Credentials;
use crate::metrics::Metrics;
use crate::preflight::{Checked, RouteTls};
use crate::rotating;
use crate::tls::TlsError;

/// Routes and credentials of one configuration; replaced whole on reload.
pub struct Generation {
    /// Dispatch per configured listen address (as written, before binding).
    pub listeners: HashMap<SocketAddr, Arc<Dispatch>>,
    /// Dispatch of the forward proxy.
    pub forward: Option<Arc<Dispatch>>,
    /// The credential engines of this configuration.
    pub credentials: Arc<Credentials>,
}

/// Why a checked configuration could not be turned into running parts.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A token endpoint client could not be built.
    #[error("token endpoint client")]
    TokenClient(#[source] TlsError),
    /// An upstream client could not be built.
    #[error("{user}: upstream client")]
    Client {
        /// The route or forward-proxy host.
        user: String,
        /// Why.
        #[source]
        source: TlsError,
    },
    /// A route or forward-proxy host names a credential that does not exist
    /// (the configuration loader refuses this first).
    #[error("{user} names unknown credential {credential}")]
    UnknownCredential {
        /// The route or forward-proxy host.
        user: String,
        /// The name.
        credential: String,
    },
    /// An upstream that is not an absolute URL (refused by the loader first).
    #[error("{user}: the upstream is not an absolute URL")]
    NotAbsolute {
        /// The route or forward-proxy host.
        user: String,
    },
}

fn build_route(
    route: &RouteConfig,
    route_tls: &RouteTls,
    credentials: &Credentials,
    metrics: &Metrics,
    workers: usize,
    access_log: bool,
) -> Result<Route, BuildError> {
    let credential = credentials.get(&route.credential).cloned().ok_or_else(|| {
        BuildError::UnknownCredential {
            user: format!("route {}", route.name),
            credential: route.credential.clone(),
        }
    })?;
    let client = upstream_client(
        route_tls.upstream.clone(),
        ClientOptions {
            connect_timeout: route.connect_timeout,
            allow_insecure_http: route.allow_insecure_http,
            upstream_tls: route.upstream_tls.as_ref(),
            workers,
            resolver: None,
        },
    )
    .map_err(|source| BuildError::Client {
        user: format!("route {}", route.name),
        source,
    })?;
    let target = match &route.upstream {
        Upstream::Url(uri) => {
            Target::Fixed(Base::from_uri(uri).ok_or_else(|| BuildError::NotAbsolute {
                user: format!("route {}", route.name),
            })?)
        }
        Upstream::InbentaApi(api) => Target::InbentaApi(api.clone()),
    };
    let name = Arc::from(route.name.as_str());
    Ok(Route::new(
        &route.path_prefix,
        route.strip_prefix,
        target,
        RouteParts {
            metrics: metrics.route(&name),
            name,
            credential,
            headers: route.headers.clone(),
            client,
            request_timeout: route.request_timeout,
            body_timeout: route.body_timeout,
            access_log,
        },
    ))
}

/// The dispatch of one listener: its routes in [`Dispatch::order`], each
/// given the listener's [`relocate`] table (built here, once), so answers
/// naming any of their upstream URLs point back at the route that owns it.
fn listener_dispatch(mut routes: Vec<Route>) -> Dispatch {
    Dispatch::order(&mut routes);
    let table = Arc::new(relocate::Listener::new(
        routes.iter().map(Route::relocate_entry).collect(),
    ));
    Dispatch::routes(
        routes
            .into_iter()
            .enumerate()
            .map(|(index, route)| Arc::new(route.on_listener(Arc::clone(&table), index)))
            .collect(),
    )
}

/// Start credentials (taking over the unchanged ones of `previous`) and
/// build every dispatch table of `checked`, with upstream connections kept
/// apart for each of `workers` serving workers.
pub fn build_generation(
    checked: &Checked,
    metrics: &Metrics,
    previous: Option<&Credentials>,
    workers: usize,
) -> Result<Generation, BuildError> {
    let config = &checked.config;
    let credentials = Credentials::start_reusing(config, &checked.trust, metrics, previous)
        .map_err(BuildError::TokenClient)?;
    let mut grouped: BTreeMap<SocketAddr, Vec<Route>> = BTreeMap::new();
    for (route, route_tls) in config.routes.iter().zip(&checked.routes) {
        grouped.entry(route.listen).or_default().push(build_route(
            route,
            route_tls,
            &credentials,
            metrics,
            workers,
            config.log.access,
        )?);
    }
    let listeners = grouped
        .into_iter()
        .map(|(addr, routes)| (addr, Arc::new(listener_dispatch(routes))))
        .collect();
    let forward = match &config.forward_proxy {
        None => None,
        Some(forward) => {
            let mut hosts = ForwardHosts::default();
            // An answer's `https://` URLs point back at `http://` only for
            // the hosts of the answering host's credential: an upstream must
            // not steer a redirect-following app to where a credential it
            // never had is injected (as for routes, [`relocate`]).
            let mut authorities: BTreeMap<&str, Vec<Box<str>>> = BTreeMap::new();
            for (host, credential_name) in &forward.hosts {
                authorities
                    .entry(credential_name)
                    .or_default()
                    .push(host.upstream_authority().into());
            }
            let authorities: BTreeMap<&str, Arc<[Box<str>]>> = authorities
                .into_iter()
                .map(|(credential, hosts)| (credential, hosts.into()))
                .collect();
            for (host, credential_name) in &forward.hosts {
                let credential = credentials.get(credential_name).cloned().ok_or_else(|| {
                    BuildError::UnknownCredential {
                        user: format!("forward_proxy.hosts.{host}"),
                        credential: credential_name.clone(),
                    }
                })?;
                let client = upstream_client(
                    rotating::upstream_config(&checked.trust, None).map_err(|source| {
                        BuildError::Client {
                            user: "forward_proxy".to_owned(),
                            source,
                        }
                    })?,
                    ClientOptions {
                        connect_timeout: forward.connect_timeout,
                        allow_insecure_http: false,
                        upstream_tls: None,
                        workers,
                        resolver: None,
                    },
                )
                .map_err(|source| BuildError::Client {
                    user: "forward_proxy".to_owned(),
                    source,
                })?;
                // The upstream is the configured host and port, never the
                // request's spelling of it.
                let base = format!("https://{}", host.upstream_authority())
                    .parse::<http::Uri>()
                    .ok()
                    .and_then(|uri| Base::from_uri(&uri))
                    .ok_or_else(|| BuildError::NotAbsolute {
                        user: format!("forward_proxy.hosts.{host}"),
                    })?;
                let name = Arc::from(format!("forward_proxy:{host}"));
                let route = Route::new(
                    "/",
                    false,
                    Target::Fixed(base),
                    RouteParts {
                        metrics: metrics.route(&name),
                        name,
                        credential,
                        headers: Vec::new(),
                        client,
                        request_timeout: forward.request_timeout,
                        body_timeout: forward.body_timeout,
                        access_log: config.log.access,
                    },
                )
                .serving_forward_proxy(
                    authorities
                        .get(credential_name.as_str())
                        .cloned()
                        .unwrap_or_default(),
                );
                hosts.insert(host, Arc::new(route));
            }
            Some(Arc::new(Dispatch::Forward(hosts)))
        }
    };
    Ok(Generation {
        listeners,
        forward,
        credentials: Arc::new(credentials),
    })
}
