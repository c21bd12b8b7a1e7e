//! Listeners and lifecycle.
//!
//! [`serve_with`] takes a configuration that passed the preflight checks
//! ([`crate::preflight`]), builds its routes and starts its credential
//! engines ([`crate::proxy::build`]), binds every listener (routes sharing a
//! `listen` address share one listener; each connection is served by
//! [`crate::conn`]), then serves until [`Handle::shutdown`]: stop accepting,
//! let in-flight requests finish within `shutdown_grace`, return. The proxy
//! listeners are served on `workers` threads of their own
//! ([`Serving::Workers`], [`crate::listeners`]: a socket per worker on each
//! address, one connection cap for all) or on the calling runtime
//! ([`serve`], for tests and the demo); credentials, the admin listener and
//! reloads stay on the calling runtime.
//! [`Handle::reload`] swaps in the routes and credentials of a new checked
//! configuration without dropping a connection, once its new credentials
//! hold tokens; listen addresses and listener TLS cannot change on reload.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::admin;
use crate::config::Config;
use crate::conn;
use crate::credential::Credentials;
pub use crate::listeners::Serving;
use crate::listeners::{self, BindError};
use crate::metrics::Metrics;
use crate::preflight::Checked;
use crate::proxy::Dispatch;
use crate::proxy::build::{BuildError, build_generation};
use crate::workers::Workers;

/// Why the proxy could not start (or a reload was refused).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration could not be turned into running parts.
    #[error("cannot build the configuration's routes and credentials")]
    Build(#[from] BuildError),
    /// A reload changed what only a restart can change.
    #[error(
        "listen addresses, listener TLS or [forward_proxy] presence changed; these need a restart"
    )]
    ListenersChanged,
    /// A credential new to this configuration (or with changed settings)
    /// did not obtain its first token, so the configuration is not taken.
    #[error("credential {credential} could not obtain a token: {reason}")]
    CredentialNotReady {
        /// The credential's name.
        credential: String,
        /// Why (the token request's failure, or that it did not finish in time).
        reason: String,
    },
    /// The serving workers (runtimes, threads) could not be started.
    #[error("cannot start serving")]
    Workers(#[source] std::io::Error),
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// What every connection task shares.
struct Shared {
    metrics: Metrics,
    credentials: Arc<ArcSwap<Credentials>>,
}

/// A running proxy.
pub struct Handle {
    route_addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    forward_proxy_addr: Option<SocketAddr>,
    listen_plan: Vec<(SocketAddr, Option<(std::path::PathBuf, std::path::PathBuf)>)>,
    dispatchers: HashMap<SocketAddr, Arc<ArcSwap<Dispatch>>>,
    forward_dispatch: Option<Arc<ArcSwap<Dispatch>>>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// The serving threads ([`Serving::Workers`]).
    workers: Option<Workers>,
    grace: Duration,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("route_addrs", &self.route_addrs)
            .field("admin_addr", &self.admin_addr)
            .field("forward_proxy_addr", &self.forward_proxy_addr)
            .finish_non_exhaustive()
    }
}

impl Handle {
    /// The bound address serving route `index` (config order); port 0 in the
    /// config is resolved here.
    pub fn route_addr(&self, index: usize) -> Option<SocketAddr> {
        self.route_addrs.get(index).copied()
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The bound forward-proxy address.
    pub fn forward_proxy_addr(&self) -> Option<SocketAddr> {
        self.forward_proxy_addr
    }

    /// The running credentials (for tests and the CLI).
    pub fn credentials(&self) -> Arc<Credentials> {
        self.shared.credentials.load_full()
    }

    /// Apply a new configuration: same listeners, new routes and credentials.
    ///
    /// Credentials whose settings did not change keep their engine and token
    /// (no token request). Every other credential of the new configuration
    /// must obtain its first token within `ready_wait`; if one fails (or does
    /// not finish in time) the reload is refused whole and the old
    /// configuration keeps serving, so a reload never replaces a working
    /// token with none. Cancel-safe: dropping the future before it returns
    /// leaves the old configuration in place and stops the new engines.
    pub async fn reload(
        &mut self,
        checked: Checked,
        ready_wait: Duration,
    ) -> Result<(), ServeError> {
        let config = &checked.config;
        if listen_plan(config) != self.listen_plan {
            return Err(ServeError::ListenersChanged);
        }
        let current = self.shared.credentials.load_full();
        let workers = self.workers.as_ref().map_or(1, Workers::count);
        if config.workers != workers && self.workers.is_some() {
            warn!(
                running = workers,
                configured = config.workers,
                "workers changes at the next restart"
            );
        }
        let generation = build_generation(&checked, &self.shared.metrics, Some(&current), workers)?;
        first_tokens(&generation.credentials, ready_wait).await?;
        for (addr, dispatch) in &generation.listeners {
            if let Some(slot) = self.dispatchers.get(addr) {
                slot.store(dispatch.clone());
            }
        }
        if let (Some(slot), Some(dispatch)) = (&self.forward_dispatch, &generation.forward) {
            slot.store(dispatch.clone());
        }
        for (name, _) in current.iter() {
            if generation.credentials.get(name).is_none() {
                self.shared
                    .metrics
                    .set_token_expires_in(&Arc::from(name), None);
            }
        }
        let started: Vec<&str> = generation.credentials.started().collect();
        info!(
            started = ?started,
            kept = generation.credentials.iter().count() - started.len(),
            "configuration reloaded"
        );
        // The old credentials stop when the last request using them is done;
        // the ones taken over keep running.
        self.shared.credentials.store(generation.credentials);
        self.grace = config.shutdown_grace;
        Ok(())
    }

    /// Stop accepting, let in-flight requests finish within `shutdown_grace`, return.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let grace = self.grace;
        let drained = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
            if let Some(workers) = &mut self.workers {
                workers.stopped().await;
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                ?grace,
                "shutdown grace passed; closing remaining connections"
            );
            self.tasks.abort_all();
            if let Some(workers) = &mut self.workers {
                workers.abort().await;
            }
        }
        info!("stopped");
    }
}

/// Wait until every credential `credentials` started itself has obtained its
/// first token, at most `limit` in all; the first one that fails (or is still
/// waiting at the deadline) refuses the configuration.
async fn first_tokens(credentials: &Credentials, limit: Duration) -> Result<(), ServeError> {
    let deadline = tokio::time::Instant::now() + limit;
    for name in credentials.started() {
        let Some(handle) = credentials.get(name) else {
            continue;
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Err(unavailable) = handle.wait_for_token(left).await {
            let reason = if tokio::time::Instant::now() >= deadline {
                format!(
                    "no token within {} s: {}",
                    limit.as_secs_f64(),
                    unavailable.reason
                )
            } else {
                unavailable.reason
            };
            return Err(ServeError::CredentialNotReady {
                credential: name.to_owned(),
                reason,
            });
        }
    }
    Ok(())
}

/// Listen addresses with their TLS files, and the forward proxy: what a reload may not change.
fn listen_plan(
    config: &Config,
) -> Vec<(SocketAddr, Option<(std::path::PathBuf, std::path::PathBuf)>)> {
    let mut plan: Vec<_> = config
        .routes
        .iter()
        .map(|route| {
            (
                route.listen,
                route.tls.as_ref().map(|t| (t.cert.clone(), t.key.clone())),
            )
        })
        .collect();
    if let Some(forward) = &config.forward_proxy {
        plan.push((forward.listen, None));
    }
    plan.dedup();
    plan
}

/// Bind `addr` (asked for by `key`); the listener and the address it got (port 0 resolved).
async fn bind(key: &str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServeError> {
    let bind_error = |source| {
        let key = key.to_owned();
        ServeError::Bind(BindError { key, addr, source })
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}

/// Start everything `checked` describes on the calling runtime and return
/// once every listener is bound (see [`Serving::Here`]).
pub async fn serve(checked: Checked) -> Result<Handle, ServeError> {
    serve_with(checked, Serving::Here).await
}

/// Start everything `checked` describes, the proxy listeners as `serving`
/// says, and return once every listener is bound.
pub async fn serve_with(checked: Checked, serving: Serving) -> Result<Handle, ServeError> {
    let config = &checked.config;
    let workers = match serving {
        Serving::Here => 1,
        Serving::Workers => config.workers.max(1),
    };
    let metrics = Metrics::new();
    let generation = build_generation(&checked, &metrics, None, workers)?;
    let shared = Arc::new(Shared {
        metrics,
        credentials: Arc::new(ArcSwap::new(generation.credentials.clone())),
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    // One cap for every route listener and the forward proxy together, on every worker.
    let policy = conn::ProxyPolicy {
        limits: config.limits,
        gate: conn::Gate::for_proxy(
            &config.limits,
            config.admin.as_ref().map(|admin| &admin.limits),
        ),
    };

    let bound = listeners::bind(&checked, &generation, workers)?;
    let (route_addrs, dispatchers) = (bound.route_addrs.clone(), bound.dispatchers.clone());
    let (forward_proxy_addr, forward_dispatch) = bound.forward.clone().unzip();

    let mut admin_addr = None;
    if let Some(admin_config) = &config.admin {
        let (listener, local) = bind("admin.listen", admin_config.listen).await?;
        info!(listen = %local, "admin listening");
        let state = admin::AdminState {
            metrics: shared.metrics.clone(),
            credentials: shared.credentials.clone(),
        };
        tasks.spawn(admin::serve(
            listener,
            state,
            admin_config.limits,
            shutdown_rx.clone(),
        ));
        admin_addr = Some(local);
    }

    let workers = bound
        .serve(serving, &shared.metrics, &policy, &shutdown_rx, &mut tasks)
        .map_err(ServeError::Workers)?;

    Ok(Handle {
        route_addrs,
        admin_addr,
        forward_proxy_addr,
        listen_plan: listen_plan(config),
        dispatchers,
        forward_dispatch,
        shared,
        shutdown,
        tasks,
        workers,
        grace: config.shutdown_grace,
    })
}
