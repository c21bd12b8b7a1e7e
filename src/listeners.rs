//! The proxy listeners: each route listen address bound once, and the
//! forward proxy's, with a socket per serving worker ([`crate::workers::bind`]),
//! each with its TLS slot and dispatch slot; served on the calling runtime
//! ([`Serving::Here`]) or on the worker threads ([`Serving::Workers`]).
//!
//! A configuration's listeners are applied in two steps, so that a reload
//! is taken whole or not at all: [`ProxyListeners::prepare`] binds the
//! addresses not served yet (a failure names the key, e.g.
//! `routes[2].listen`, and nothing changes), [`ProxyListeners::commit`]
//! then swaps the dispatch and TLS of the listeners that stay (same
//! configured address: same sockets, no connection dropped), starts the
//! new ones and drains the removed ones (they stop accepting at once; their
//! open connections get `shutdown_grace` to finish).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::conn::{self, ProxyPolicy, TlsSlot};
use crate::metrics::Metrics;
use crate::preflight::Checked;
use crate::proxy::Dispatch;
use crate::proxy::build::Generation;
use crate::stop::{self, Stop, Stopping};
use crate::workers::{self, Workers};

/// Where the proxy listeners are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serving {
    /// On the calling runtime, one socket per listen address (tests and
    /// the demo, whose clocks and tasks are the caller's).
    Here,
    /// On `workers` threads, each with its own current-thread runtime and
    /// socket per listen address ([`crate::workers`]); the caller's runtime
    /// keeps the credentials, the admin listener and reloads.
    Workers,
}

/// A listen address that could not be bound, named by the key that asks
/// for it.
#[derive(Debug, thiserror::Error)]
#[error("{key}: cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The configuration key: `routes[2].listen`, `forward_proxy.listen`, `admin.listen`.
    pub key: String,
    /// The address.
    pub addr: SocketAddr,
    /// The I/O error.
    pub source: std::io::Error,
}

/// One proxy listener being served.
struct Running {
    /// The address it got (port 0 resolved).
    local: SocketAddr,
    tls: TlsSlot,
    dispatch: Arc<ArcSwap<Dispatch>>,
    stop: Stop,
}

/// What identifies a listener across reloads: its address as configured;
/// with port 0 (any free port) also whether it is the forward proxy's, which
/// may then be written with the same address as the routes' and still be a
/// listener of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Ident {
    addr: SocketAddr,
    forward_on_any_port: bool,
}

impl Ident {
    fn new(addr: SocketAddr, forward: bool) -> Ident {
        Ident {
            addr,
            forward_on_any_port: forward && addr.port() == 0,
        }
    }
}

/// One listen address a configuration asks for.
struct Wanted {
    ident: Ident,
    /// As configured (port 0 as written).
    addr: SocketAddr,
    /// The key asking for it (`routes[2].listen`).
    key: String,
    /// `None`: the forward proxy.
    tls: Option<Option<Arc<ServerConfig>>>,
    /// Sockets bound for it, when it is not served yet.
    new: Option<(Vec<std::net::TcpListener>, SocketAddr)>,
}

/// A configuration's listeners, with the addresses new to it bound.
pub struct Prepared {
    wanted: Vec<Wanted>,
    /// Each route's listener, in config order.
    routes: Vec<Ident>,
}

/// Every proxy listener being served, by configured address.
pub struct ProxyListeners {
    serving: Serving,
    /// Sockets per address: the number of serving workers.
    count: usize,
    metrics: Metrics,
    policy: ProxyPolicy,
    running: HashMap<Ident, Running>,
    route_addrs: Vec<SocketAddr>,
    forward: Option<Ident>,
    workers: Option<Workers>,
    /// The serving futures ([`Serving::Here`]).
    tasks: JoinSet<()>,
    /// Removed listeners finishing their connections.
    draining: JoinSet<()>,
}

impl ProxyListeners {
    /// Nothing served yet; with [`Serving::Workers`] the `count` serving
    /// threads start now.
    pub fn new(
        serving: Serving,
        count: usize,
        metrics: Metrics,
        policy: ProxyPolicy,
    ) -> std::io::Result<ProxyListeners> {
        let workers = match serving {
            Serving::Here => None,
            Serving::Workers => Some(Workers::start(count)?),
        };
        Ok(ProxyListeners {
            serving,
            count,
            metrics,
            policy,
            running: HashMap::new(),
            route_addrs: Vec::new(),
            forward: None,
            workers,
            tasks: JoinSet::new(),
            draining: JoinSet::new(),
        })
    }

    /// Sockets per address (the serving workers).
    pub fn count(&self) -> usize {
        self.count
    }

    /// The address route `index` is served on.
    pub fn route_addr(&self, index: usize) -> Option<SocketAddr> {
        self.route_addrs.get(index).copied()
    }

    /// The forward proxy's address.
    pub fn forward_addr(&self) -> Option<SocketAddr> {
        let configured = self.forward?;
        self.running.get(&configured).map(|running| running.local)
    }

    /// Bind, in config order, every listen address of `checked` that is not
    /// served yet; nothing changes until [`ProxyListeners::commit`]. The
    /// first address that cannot be bound refuses the whole configuration
    /// (the sockets bound so far close).
    pub fn prepare(&self, checked: &Checked) -> Result<Prepared, BindError> {
        let config = &checked.config;
        let mut wanted: Vec<Wanted> = Vec::new();
        for (index, (route, route_tls)) in config.routes.iter().zip(&checked.routes).enumerate() {
            let ident = Ident::new(route.listen, false);
            if wanted.iter().any(|w| w.ident == ident) {
                continue;
            }
            wanted.push(Wanted {
                ident,
                addr: route.listen,
                key: format!("routes[{index}].listen"),
                tls: Some(route_tls.listener.clone()),
                new: None,
            });
        }
        if let Some(forward) = &config.forward_proxy {
            wanted.push(Wanted {
                ident: Ident::new(forward.listen, true),
                addr: forward.listen,
                key: "forward_proxy.listen".to_owned(),
                tls: None,
                new: None,
            });
        }
        for want in &mut wanted {
            if !self.running.contains_key(&want.ident) {
                let bound = workers::bind(want.addr, self.count).map_err(|source| BindError {
                    key: want.key.clone(),
                    addr: want.addr,
                    source,
                })?;
                want.new = Some(bound);
            }
        }
        Ok(Prepared {
            wanted,
            routes: (config.routes.iter())
                .map(|route| Ident::new(route.listen, false))
                .collect(),
        })
    }

    /// Serve `prepared` with the dispatch tables of `generation`: swap them
    /// (and the TLS) into the listeners that stay, start the new ones, and
    /// drain the ones no longer wanted within `grace`.
    pub fn commit(&mut self, prepared: Prepared, generation: &Generation, grace: Duration) {
        let mut kept: HashMap<Ident, Running> = HashMap::with_capacity(prepared.wanted.len());
        self.forward = None;
        for want in prepared.wanted {
            let (dispatch, tls) = match want.tls {
                Some(tls) => (generation.listeners.get(&want.addr), tls),
                None => {
                    self.forward = Some(want.ident);
                    (generation.forward.as_ref(), None)
                }
            };
            let Some(dispatch) = dispatch.cloned() else {
                // build_generation made a dispatch for every listen address.
                continue;
            };
            let running = match (self.running.remove(&want.ident), want.new) {
                (Some(running), _) => {
                    running.dispatch.store(dispatch);
                    let had_tls = running.tls.load().is_some();
                    if had_tls != tls.is_some() {
                        info!(listen = %running.local, tls = tls.is_some(), "listener TLS switched");
                    }
                    running.tls.store(tls);
                    running
                }
                (None, Some((sockets, local))) => {
                    let tls_on = tls.is_some();
                    let (stop, stopping) = stop::channel();
                    let running = Running {
                        local,
                        tls: Arc::new(ArcSwapOption::new(tls)),
                        dispatch: Arc::new(ArcSwap::new(dispatch)),
                        stop,
                    };
                    self.serve(sockets, &running, &stopping);
                    info!(listen = %local, key = %want.key, tls = tls_on, workers = self.count, "proxy listening");
                    running
                }
                // `prepare` bound every address not running.
                (None, None) => continue,
            };
            kept.insert(want.ident, running);
        }
        // Let go of what earlier reloads finished with.
        while self.draining.try_join_next().is_some() {}
        while self.tasks.try_join_next().is_some() {}
        for (_, removed) in std::mem::replace(&mut self.running, kept) {
            let local = removed.local;
            info!(listen = %local, "listener removed: no longer accepting, draining its connections");
            self.draining.spawn(async move {
                if !removed.stop.drain_within(grace).await {
                    warn!(listen = %local, ?grace, "shutdown grace passed; closing the removed listener's remaining connections");
                }
            });
        }
        self.route_addrs = prepared
            .routes
            .iter()
            .filter_map(|ident| self.running.get(ident).map(|running| running.local))
            .collect();
    }

    /// Serve `sockets` (one per worker) as `running` says.
    fn serve(
        &mut self,
        sockets: Vec<std::net::TcpListener>,
        running: &Running,
        stopping: &Stopping,
    ) {
        for (index, socket) in sockets.into_iter().enumerate() {
            let (tls, dispatch) = (running.tls.clone(), running.dispatch.clone());
            let (metrics, policy) = (self.metrics.clone(), self.policy.clone());
            let stopping = stopping.clone();
            let listening = move || -> std::io::Result<workers::Listening> {
                let listener = TcpListener::from_std(socket)?;
                let drain = stopping.drain();
                Ok(Box::pin(stopping.guard(conn::serve_proxy_listener(
                    listener, tls, dispatch, metrics, policy, drain,
                ))))
            };
            match &self.workers {
                Some(workers) => {
                    workers.add(index, Box::new(move || listening().map(|l| vec![l])));
                }
                None => match listening() {
                    Ok(listening) => {
                        self.tasks.spawn(listening);
                    }
                    Err(err) => warn!(error = %err, "cannot serve a listener socket"),
                },
            }
        }
    }

    /// Stop accepting everywhere and let the open connections finish,
    /// within `grace`; then close what is left. Whether all finished in time.
    pub async fn shutdown(mut self, grace: Duration) -> bool {
        let mut stops: Vec<Stop> = self.running.drain().map(|(_, r)| r.stop).collect();
        for stop in &stops {
            stop.begin_drain();
        }
        if let Some(workers) = &mut self.workers {
            workers.close();
        }
        let drained = tokio::time::timeout(grace, async {
            for stop in &mut stops {
                stop.stopped().await;
            }
            while self.tasks.join_next().await.is_some() {}
            while self.draining.join_next().await.is_some() {}
            if let Some(workers) = &mut self.workers {
                workers.stopped().await;
            }
        })
        .await
        .is_ok();
        if !drained {
            drop(stops);
            self.tasks.abort_all();
            self.draining.abort_all();
            if let Some(workers) = &mut self.workers {
                workers.abort().await;
            }
        }
        drained
    }

    /// How listeners are served.
    pub fn serving(&self) -> Serving {
        self.serving
    }
}
