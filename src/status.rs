//! What the process runs, for the admin listener ([`ProcessStatus`]): the
//! version, when it started, the configuration file and the routes it
//! describes, and the last reload with its outcome. [`crate::server`] sets
//! it at start and after each accepted reload; the `run` command records a
//! refused one. Nothing here holds a secret: route names, credential names,
//! listen addresses and upstream origins without user information.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::config::{Config, Upstream};

/// One route of the configuration in force, for people and `/readyz?route=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSummary {
    /// The route's name (its `route` label).
    pub name: String,
    /// The credential its requests carry.
    pub credential: String,
    /// Where the app sends them: listen address and path prefix.
    pub listen: String,
    /// Where they go (origin and base path, or the Inbenta API's name).
    pub upstream: String,
}

/// The configuration in force.
#[derive(Clone, Debug)]
pub struct Configured {
    /// The file it was read from.
    pub path: PathBuf,
    /// Its routes, forward-proxy hosts last (named `forward_proxy:HOST`).
    pub routes: Vec<RouteSummary>,
}

/// How the last reload went.
#[derive(Clone, Debug)]
pub struct ReloadRecord {
    /// When it ended.
    pub at: SystemTime,
    /// `None` when it was accepted, else why it was refused.
    pub refused: Option<String>,
}

/// What the process runs; shared by the server and the admin listener.
#[derive(Debug)]
pub struct ProcessStatus {
    started: SystemTime,
    started_at: Instant,
    configured: ArcSwap<Configured>,
    last_reload: ArcSwap<Option<ReloadRecord>>,
}

impl ProcessStatus {
    /// Start counting uptime, with `config` in force.
    pub fn new(config: &Config) -> Arc<Self> {
        Arc::new(ProcessStatus {
            started: SystemTime::now(),
            started_at: Instant::now(),
            configured: ArcSwap::from_pointee(configured(config)),
            last_reload: ArcSwap::from_pointee(None),
        })
    }

    /// `config` replaced the configuration in force.
    pub fn reloaded(&self, config: &Config) {
        self.configured.store(Arc::new(configured(config)));
        self.last_reload.store(Arc::new(Some(ReloadRecord {
            at: SystemTime::now(),
            refused: None,
        })));
    }

    /// A reload was refused, for `why` (no secret: the messages sidekey logs).
    pub fn reload_refused(&self, why: String) {
        self.last_reload.store(Arc::new(Some(ReloadRecord {
            at: SystemTime::now(),
            refused: Some(why),
        })));
    }

    /// sidekey's version.
    pub fn version(&self) -> &'static str {
        env!("CARGO_PKG_VERSION")
    }

    /// When the process started serving (wall clock).
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// How long it has been serving.
    pub fn uptime(&self) -> Duration {
        self.started_at.elapsed()
    }

    /// The configuration in force.
    pub fn configured(&self) -> Arc<Configured> {
        self.configured.load_full()
    }

    /// The last reload, if any.
    pub fn last_reload(&self) -> Option<ReloadRecord> {
        self.last_reload.load().as_ref().clone()
    }
}

fn configured(config: &Config) -> Configured {
    let mut routes: Vec<RouteSummary> = config
        .routes
        .iter()
        .map(|route| RouteSummary {
            name: route.name.clone(),
            credential: route.credential.clone(),
            listen: format!("{}{}", route.listen, route.path_prefix),
            upstream: match &route.upstream {
                Upstream::Url(uri) => origin_and_path(uri),
                Upstream::InbentaApi(api) => format!("inbenta api `{api}`"),
            },
        })
        .collect();
    if let Some(forward) = &config.forward_proxy {
        routes.extend(forward.hosts.iter().map(|(host, credential)| {
            RouteSummary {
                // The route name `proxy::build` gives forward-proxy hosts.
                name: format!("forward_proxy:{host}"),
                credential: credential.clone(),
                listen: forward.listen.to_string(),
                upstream: format!("https://{}", host.upstream_authority()),
            }
        }));
    }
    Configured {
        path: config.path.clone(),
        routes,
    }
}

/// `scheme://host[:port]/base`, without user information.
fn origin_and_path(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("https");
    let host = uri.host().unwrap_or_default();
    let port = uri.port().map(|p| format!(":{p}")).unwrap_or_default();
    let path = match uri.path() {
        "/" => "",
        path => path,
    };
    format!("{scheme}://{host}{port}{path}")
}

#[cfg(test)]
mod tests {
    use super::origin_and_path;

    #[test]
    fn upstreams_show_without_user_information() {
        let uri = "https://user:pw@api.example.com:8443/v1".parse().unwrap();
        assert_eq!(origin_and_path(&uri), "https://api.example.com:8443/v1");
        let uri = "https://api.example.com/".parse().unwrap();
        assert_eq!(origin_and_path(&uri), "https://api.example.com");
    }
}
