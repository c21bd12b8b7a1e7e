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
//! [`Handle::reload`] swaps in the routes, credentials and listeners of a
//! new checked configuration once its new listen addresses are bound and its
//! new credentials hold tokens: listeners whose address stays keep their
//! sockets and connections (their TLS may switch), new ones start, removed
//! ones drain within `shutdown_grace`; the admin listener and the forward
//! proxy come and go the same way. `workers` and the connection limits keep
//! their running values until a restart (a warning says so).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::admin;
use crate::admin::settings::AdminConfig;
use crate::config::{Config, ConnLimits};
use crate::conn;
use crate::credential::{Credentials, NotReady};
pub use crate::listeners::Serving;
use crate::listeners::{BindError, ProxyListeners};
use crate::metrics::Metrics;
use crate::preflight::Checked;
use crate::proxy::build::{BuildError, build_generation};
use crate::rotating;
use crate::status::ProcessStatus;
use crate::stop::{self, Stop};

/// Why the proxy could not start (or a reload was refused).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration could not be turned into running parts.
    #[error("cannot build the configuration's routes and credentials")]
    Build(#[from] BuildError),
    /// A credential new to this configuration (or with changed settings)
    /// did not obtain its first token, so the configuration is not taken.
    #[error(transparent)]
    CredentialNotReady(#[from] NotReady),
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
    /// What the admin listener shows about the process.
    status: Arc<ProcessStatus>,
}

/// The admin listener being served.
struct AdminListener {
    /// As configured (port 0 as written).
    configured: SocketAddr,
    /// As bound.
    local: SocketAddr,
    stop: Stop,
}

/// A running proxy.
pub struct Handle {
    proxy: ProxyListeners,
    admin: Option<AdminListener>,
    /// The admin listener's serving, and removed admin listeners closing.
    admin_tasks: JoinSet<()>,
    shared: Arc<Shared>,
    /// The proxy listeners' connection limits (fixed until a restart).
    limits: ConnLimits,
    grace: Duration,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("admin_addr", &self.admin_addr())
            .field("forward_proxy_addr", &self.forward_proxy_addr())
            .finish_non_exhaustive()
    }
}

impl Handle {
    /// The bound address serving route `index` (config order); port 0 in the
    /// config is resolved here.
    pub fn route_addr(&self, index: usize) -> Option<SocketAddr> {
        self.proxy.route_addr(index)
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|admin| admin.local)
    }

    /// The bound forward-proxy address.
    pub fn forward_proxy_addr(&self) -> Option<SocketAddr> {
        self.proxy.forward_addr()
    }

    /// What the process runs, as the admin listener shows it (the CLI
    /// records refused reloads here).
    pub fn status(&self) -> &Arc<ProcessStatus> {
        &self.shared.status
    }

    /// The running credentials (for tests and the CLI).
    pub fn credentials(&self) -> Arc<Credentials> {
        self.shared.credentials.load_full()
    }

    /// Apply a new configuration: its routes, credentials and listeners.
    ///
    /// Listen addresses new to it are bound first; one that cannot be bound
    /// refuses the reload (the error names its key and address). Credentials
    /// whose settings did not change keep their engine and token (no token
    /// request). Every other credential of the new configuration must
    /// obtain its first token within `ready_wait`; if one fails (or does not
    /// finish in time) the reload is refused whole and the old configuration
    /// keeps serving, so a reload never replaces a working token with none.
    /// Once taken, listeners that stay keep their sockets, new ones serve,
    /// removed ones stop accepting and drain within `shutdown_grace`.
    /// Cancel-safe: dropping the future before it returns leaves the old
    /// configuration in place, closes the new sockets and stops the new engines.
    pub async fn reload(
        &mut self,
        checked: Checked,
        ready_wait: Duration,
    ) -> Result<(), ServeError> {
        let config = &checked.config;
        let prepared = self.proxy.prepare(&checked)?;
        // `Some(new)`: the admin listener changes (to `new`, maybe none);
        // `None`: the one running stays.
        let admin = match &config.admin {
            Some(admin) if self.admin.as_ref().map(|a| a.configured) != Some(admin.listen) => {
                Some(Some(bind("admin.listen", admin.listen).await?))
            }
            Some(_) => None,
            None => Some(None),
        };
        let current = self.shared.credentials.load_full();
        let workers = self.proxy.count();
        let generation = build_generation(&checked, &self.shared.metrics, Some(&current), workers)?;
        generation.credentials.first_tokens(ready_wait).await?;

        self.warn_restart_only(config);
        self.grace = config.shutdown_grace;
        self.proxy.commit(prepared, &generation, self.grace);
        rotating::watch(&checked.rotating);
        while self.admin_tasks.try_join_next().is_some() {}
        if let Some(admin) = admin {
            if let Some(old) = self.admin.take() {
                info!(listen = %old.local, "admin listener removed");
                let grace = self.grace;
                self.admin_tasks.spawn(async move {
                    old.stop.drain_within(grace).await;
                });
            }
            if let (Some((listener, local)), Some(admin_config)) = (admin, &config.admin) {
                self.admin = Some(self.serve_admin(listener, local, admin_config));
            }
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
        self.shared.status.reloaded(config);
        self.shared.metrics.record_reload(true);
        Ok(())
    }

    /// A reload was refused for `why` (no secret: what sidekey logs): the
    /// status page and the metrics say so.
    pub fn reload_refused(&self, why: String) {
        self.shared.status.reload_refused(why);
        self.shared.metrics.record_reload(false);
    }

    /// Warn about what a reload cannot change: the serving threads and the
    /// connection limits keep their running values.
    fn warn_restart_only(&self, config: &Config) {
        let workers = self.proxy.count();
        if self.proxy.serving() == Serving::Workers && config.workers != workers {
            warn!(
                running = workers,
                configured = config.workers,
                "workers changes at the next restart"
            );
        }
        if config.limits != self.limits {
            warn!("max_connections, max_header_bytes and idle_timeout change at the next restart");
        }
    }

    /// Serve the admin endpoint on `listener`.
    fn serve_admin(
        &mut self,
        listener: TcpListener,
        local: SocketAddr,
        config: &AdminConfig,
    ) -> AdminListener {
        info!(listen = %local, "admin listening");
        let state = admin::AdminState::new(
            self.shared.metrics.clone(),
            self.shared.credentials.clone(),
            self.shared.status.clone(),
        );
        let (stop, stopping) = stop::channel();
        let serving = admin::serve(listener, state, config.limits, stopping.drain());
        self.admin_tasks.spawn(stopping.guard(serving));
        AdminListener {
            configured: config.listen,
            local,
            stop,
        }
    }

    /// Stop accepting, let in-flight requests finish within `shutdown_grace`, return.
    pub async fn shutdown(mut self) {
        let grace = self.grace;
        if let Some(admin) = self.admin.take() {
            self.admin_tasks.spawn(async move {
                admin.stop.drain_within(grace).await;
            });
        }
        let drained = self.proxy.shutdown(grace).await;
        if !drained {
            warn!(
                ?grace,
                "shutdown grace passed; closing remaining connections"
            );
        }
        self.admin_tasks.abort_all();
        while self.admin_tasks.join_next().await.is_some() {}
        info!("stopped");
    }
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
    // One cap for every route listener and the forward proxy together, on
    // every worker; the descriptors those listeners and the credentials'
    // token connections hold are not the app connections'.
    let listen: std::collections::HashSet<_> = (config.routes.iter().map(|route| route.listen))
        .chain(config.forward_proxy.as_ref().map(|forward| forward.listen))
        .collect();
    let held = (listen.len().saturating_mul(workers)).saturating_add(config.credentials.len());
    let policy = conn::ProxyPolicy {
        limits: config.limits,
        gate: conn::Gate::for_proxy(
            &config.limits,
            config.admin.as_ref().map(|admin| &admin.limits),
            held,
        ),
    };
    let mut proxy = ProxyListeners::new(serving, workers, metrics.clone(), policy)
        .map_err(ServeError::Workers)?;
    let prepared = proxy.prepare(&checked)?;
    let admin = match &config.admin {
        Some(admin) => Some(bind("admin.listen", admin.listen).await?),
        None => None,
    };
    let generation = build_generation(&checked, &metrics, None, workers)?;
    let shared = Arc::new(Shared {
        metrics,
        credentials: Arc::new(ArcSwap::new(generation.credentials.clone())),
        status: ProcessStatus::new(config),
    });
    proxy.commit(prepared, &generation, config.shutdown_grace);
    rotating::watch(&checked.rotating);
    let mut handle = Handle {
        proxy,
        admin: None,
        admin_tasks: JoinSet::new(),
        shared,
        limits: config.limits,
        grace: config.shutdown_grace,
    };
    if let (Some((listener, local)), Some(admin_config)) = (admin, &config.admin) {
        handle.admin = Some(handle.serve_admin(listener, local, admin_config));
    }
    Ok(handle)
}
