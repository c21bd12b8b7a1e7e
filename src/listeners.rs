//! The proxy listeners of one serving configuration: each route listen
//! address bound once, and the forward proxy's, with a socket per serving
//! worker ([`crate::workers::bind`]), each address's TLS and its dispatch
//! slot (which reloads swap); then serving them, on the calling runtime
//! ([`Serving::Here`]) or on the worker threads ([`Serving::Workers`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::info;

use crate::conn::{self, ProxyPolicy};
use crate::metrics::Metrics;
use crate::preflight::Checked;
use crate::proxy::Dispatch;
use crate::proxy::build::Generation;
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

/// One proxy listen address: its sockets (one per worker), TLS and dispatch.
struct ProxyListener {
    sockets: Vec<std::net::TcpListener>,
    acceptor: Option<TlsAcceptor>,
    dispatch: Arc<ArcSwap<Dispatch>>,
}

/// Every proxy listener of a configuration, bound and not yet served.
pub struct Bound {
    listeners: Vec<ProxyListener>,
    /// The address each route got, in config order (port 0 resolved).
    pub route_addrs: Vec<SocketAddr>,
    /// The dispatch slot of each route listen address, as configured.
    pub dispatchers: HashMap<SocketAddr, Arc<ArcSwap<Dispatch>>>,
    /// The forward proxy's address and dispatch slot.
    pub forward: Option<(SocketAddr, Arc<ArcSwap<Dispatch>>)>,
}

/// Bind every route listen address once, in config order, and the forward
/// proxy's, with `workers` sockets each.
pub fn bind(
    checked: &Checked,
    generation: &Generation,
    workers: usize,
) -> Result<Bound, BindError> {
    let config = &checked.config;
    let bind = |key: String, addr| {
        workers::bind(addr, workers).map_err(|source| BindError { key, addr, source })
    };
    let mut bound = Bound {
        listeners: Vec::new(),
        route_addrs: Vec::with_capacity(config.routes.len()),
        dispatchers: HashMap::new(),
        forward: None,
    };
    let mut locals: HashMap<SocketAddr, SocketAddr> = HashMap::new();
    for (index, (route, route_tls)) in config.routes.iter().zip(&checked.routes).enumerate() {
        if let Some(local) = locals.get(&route.listen) {
            bound.route_addrs.push(*local);
            continue;
        }
        let (sockets, local) = bind(format!("routes[{index}].listen"), route.listen)?;
        let acceptor = route_tls.listener.clone().map(TlsAcceptor::from);
        let Some(dispatch) = generation.listeners.get(&route.listen).cloned() else {
            // build_generation made a dispatch for every listen address.
            continue;
        };
        let slot = Arc::new(ArcSwap::new(dispatch));
        bound.dispatchers.insert(route.listen, slot.clone());
        info!(listen = %local, tls = acceptor.is_some(), workers, "proxy listening");
        bound.listeners.push(ProxyListener {
            sockets,
            acceptor,
            dispatch: slot,
        });
        locals.insert(route.listen, local);
        bound.route_addrs.push(local);
    }
    if let (Some(forward), Some(dispatch)) = (&config.forward_proxy, &generation.forward) {
        let (sockets, local) = bind("forward_proxy.listen".to_owned(), forward.listen)?;
        let slot = Arc::new(ArcSwap::new(dispatch.clone()));
        info!(listen = %local, workers, "forward proxy listening");
        bound.listeners.push(ProxyListener {
            sockets,
            acceptor: None,
            dispatch: slot.clone(),
        });
        bound.forward = Some((local, slot));
    }
    Ok(bound)
}

impl Bound {
    /// Serve every listener until `shutdown`: as tasks of `tasks` on the
    /// calling runtime, or on started [`Workers`] (worker `i` serves socket
    /// `i` of every listener), which are returned.
    pub fn serve(
        self,
        serving: Serving,
        metrics: &Metrics,
        policy: &ProxyPolicy,
        shutdown: &watch::Receiver<bool>,
        tasks: &mut JoinSet<()>,
    ) -> std::io::Result<Option<Workers>> {
        let count = self.listeners.first().map_or(1, |l| l.sockets.len());
        let mut per_worker: Vec<Vec<ProxyListener>> = (0..count).map(|_| Vec::new()).collect();
        for listener in self.listeners {
            for (worker, socket) in listener.sockets.into_iter().enumerate() {
                per_worker[worker].push(ProxyListener {
                    sockets: vec![socket],
                    acceptor: listener.acceptor.clone(),
                    dispatch: listener.dispatch.clone(),
                });
            }
        }
        let serve_worker = |listeners: Vec<ProxyListener>| {
            let (metrics, policy, shutdown) = (metrics.clone(), policy.clone(), shutdown.clone());
            move || -> std::io::Result<Vec<workers::Listening>> {
                let mut listening: Vec<workers::Listening> = Vec::new();
                for listener in listeners {
                    for socket in listener.sockets {
                        listening.push(Box::pin(conn::serve_proxy_listener(
                            TcpListener::from_std(socket)?,
                            listener.acceptor.clone(),
                            listener.dispatch.clone(),
                            metrics.clone(),
                            policy.clone(),
                            shutdown.clone(),
                        )));
                    }
                }
                Ok(listening)
            }
        };
        match serving {
            Serving::Here => {
                for listeners in per_worker {
                    for listening in serve_worker(listeners)()? {
                        tasks.spawn(listening);
                    }
                }
                Ok(None)
            }
            Serving::Workers => {
                let serve: Vec<workers::Serve> = per_worker
                    .into_iter()
                    .map(|listeners| Box::new(serve_worker(listeners)) as workers::Serve)
                    .collect();
                Workers::start(serve).map(Some)
            }
        }
    }
}
