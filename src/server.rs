//! Listeners and lifecycle.
//!
//! [`serve`] validates everything first (secrets, TLS files), starts the
//! credential engines, binds every listener (routes sharing a `listen`
//! address share one listener), then serves until [`Handle::shutdown`]:
//! stop accepting, let in-flight requests finish within `shutdown_grace`,
//! return. [`Handle::reload`] swaps in the routes and credentials of a new,
//! already validated configuration without dropping a connection; listen
//! addresses and listener TLS cannot change on reload.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use crate::admin;
use crate::config::{Config, ConnLimits, RouteConfig, Upstream};
use crate::conn;
use crate::credential::Credentials;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::preflight::{Checked, RouteTls};
use crate::proxy::client::{ClientOptions, upstream_client};
use crate::proxy::framing::{Framing, Tap};
use crate::proxy::route::{Base, RouteParts, Target};
use crate::proxy::{Dispatch, ForwardHosts, ResponseBody, Route, forward::forward};
use crate::tls;

/// Why the proxy could not start (or a reload was refused).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration could not be turned into running parts.
    #[error("{0}")]
    Config(String),
    /// A credential new to this configuration (or with changed settings)
    /// did not obtain its first token, so the configuration is not taken.
    #[error("credential {credential} could not obtain a token: {reason}")]
    CredentialNotReady {
        /// The credential's name.
        credential: String,
        /// Why (the token request's failure, or that it did not finish in time).
        reason: String,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Routes and credentials of one configuration; replaced whole on reload.
struct Generation {
    /// Dispatch per configured listen address (as written, before binding).
    listeners: HashMap<SocketAddr, Arc<Dispatch>>,
    /// Dispatch of the forward proxy.
    forward: Option<Arc<Dispatch>>,
    /// The credential engines of this configuration.
    credentials: Arc<Credentials>,
}

/// What every connection task shares.
struct Shared {
    metrics: Metrics,
    credentials: ArcSwap<Credentials>,
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
            return Err(ServeError::Config(
                "listen addresses, listener TLS or [forward_proxy] presence changed; \
                 these need a restart"
                    .to_owned(),
            ));
        }
        let current = self.shared.credentials.load_full();
        let generation = build_generation(&checked, &self.shared.metrics, Some(&current))?;
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
        })
        .await;
        if drained.is_err() {
            warn!(
                ?grace,
                "shutdown grace passed; closing remaining connections"
            );
            self.tasks.abort_all();
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

fn build_route(
    route: &RouteConfig,
    route_tls: &RouteTls,
    credentials: &Credentials,
) -> Result<Route, ServeError> {
    let credential = credentials.get(&route.credential).cloned().ok_or_else(|| {
        ServeError::Config(format!(
            "route {} names unknown credential {}",
            route.name, route.credential
        ))
    })?;
    let client = upstream_client(
        route_tls.upstream.clone(),
        ClientOptions {
            connect_timeout: route.connect_timeout,
            allow_insecure_http: route.allow_insecure_http,
            upstream_tls: route.upstream_tls.as_ref(),
        },
    )
    .map_err(|e| ServeError::Config(format!("route {}: {e}", route.name)))?;
    let target = match &route.upstream {
        Upstream::Url(uri) => Target::Fixed(Base::from_uri(uri).ok_or_else(|| {
            ServeError::Config(format!("route {}: upstream is not absolute", route.name))
        })?),
        Upstream::InbentaApi(api) => Target::InbentaApi(api.clone()),
    };
    Ok(Route::new(
        &route.path_prefix,
        route.strip_prefix,
        target,
        RouteParts {
            name: Arc::from(route.name.as_str()),
            credential,
            headers: route.headers.clone(),
            client,
            request_timeout: route.request_timeout,
            body_timeout: route.body_timeout,
        },
    ))
}

/// Start credentials (taking over the unchanged ones of `previous`) and
/// build every dispatch table of `config`.
fn build_generation(
    checked: &Checked,
    metrics: &Metrics,
    previous: Option<&Credentials>,
) -> Result<Generation, ServeError> {
    let config = &checked.config;
    let roots = &*checked.roots;
    let credentials = Credentials::start_reusing(config, roots, metrics, previous)
        .map_err(|e| ServeError::Config(e.to_string()))?;
    let mut grouped: BTreeMap<SocketAddr, Vec<Arc<Route>>> = BTreeMap::new();
    for (route, route_tls) in config.routes.iter().zip(&checked.routes) {
        grouped
            .entry(route.listen)
            .or_default()
            .push(Arc::new(build_route(route, route_tls, &credentials)?));
    }
    let listeners = grouped
        .into_iter()
        .map(|(addr, routes)| (addr, Arc::new(Dispatch::routes(routes))))
        .collect();
    let forward = match &config.forward_proxy {
        None => None,
        Some(forward) => {
            let mut hosts = ForwardHosts::default();
            for (host, credential_name) in &forward.hosts {
                let credential = credentials.get(credential_name).cloned().ok_or_else(|| {
                    ServeError::Config(format!(
                        "forward_proxy.hosts.{host} names unknown credential {credential_name}"
                    ))
                })?;
                let client = upstream_client(
                    tls::client_config(roots, None)
                        .map_err(|e| ServeError::Config(format!("forward_proxy: {e}")))?,
                    ClientOptions {
                        connect_timeout: forward.connect_timeout,
                        allow_insecure_http: false,
                        upstream_tls: None,
                    },
                )
                .map_err(|e| ServeError::Config(format!("forward_proxy: {e}")))?;
                // The upstream is the configured host and port, never the
                // request's spelling of it.
                let base = format!("https://{}", host.upstream_authority())
                    .parse::<http::Uri>()
                    .ok()
                    .and_then(|uri| Base::from_uri(&uri))
                    .ok_or_else(|| {
                        ServeError::Config(format!("forward_proxy.hosts.{host} is not a host"))
                    })?;
                let route = Route::new(
                    "/",
                    false,
                    Target::Fixed(base),
                    RouteParts {
                        name: Arc::from(format!("forward_proxy:{host}")),
                        credential,
                        headers: Vec::new(),
                        client,
                        request_timeout: forward.request_timeout,
                        body_timeout: forward.body_timeout,
                    },
                );
                hosts.insert(&host.host, host.request_port(), Arc::new(route));
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

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Start everything `checked` describes and return once every listener is bound.
pub async fn serve(checked: Checked) -> Result<Handle, ServeError> {
    let config = &checked.config;
    let metrics = Metrics::new();
    let generation = build_generation(&checked, &metrics, None)?;
    let shared = Arc::new(Shared {
        metrics,
        credentials: ArcSwap::new(generation.credentials.clone()),
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    // One cap for every route listener and the forward proxy together.
    let policy = ConnPolicy {
        limits: config.limits,
        gate: conn::Gate::for_proxy(
            &config.limits,
            config.admin.as_ref().map(|admin| &admin.limits),
        ),
    };

    // Bind every route listener once, in config order.
    let mut bound: HashMap<SocketAddr, SocketAddr> = HashMap::new();
    let mut dispatchers = HashMap::new();
    let mut route_addrs = Vec::with_capacity(config.routes.len());
    for (route, route_tls) in config.routes.iter().zip(&checked.routes) {
        if let Some(local) = bound.get(&route.listen) {
            route_addrs.push(*local);
            continue;
        }
        let listener = bind(route.listen).await?;
        let local = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: route.listen,
            source,
        })?;
        let acceptor = route_tls.listener.clone().map(TlsAcceptor::from);
        let dispatch = generation
            .listeners
            .get(&route.listen)
            .cloned()
            .ok_or_else(|| ServeError::Config(format!("no routes for {}", route.listen)))?;
        let slot = Arc::new(ArcSwap::new(dispatch));
        dispatchers.insert(route.listen, slot.clone());
        info!(listen = %local, tls = acceptor.is_some(), "proxy listening");
        tasks.spawn(accept_loop(
            listener,
            acceptor,
            slot,
            shared.clone(),
            policy.clone(),
            shutdown_rx.clone(),
        ));
        bound.insert(route.listen, local);
        route_addrs.push(local);
    }

    let mut forward_proxy_addr = None;
    let mut forward_dispatch = None;
    if let (Some(forward_config), Some(dispatch)) = (&config.forward_proxy, &generation.forward) {
        let listener = bind(forward_config.listen).await?;
        let local = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: forward_config.listen,
            source,
        })?;
        let slot = Arc::new(ArcSwap::new(dispatch.clone()));
        info!(listen = %local, "forward proxy listening");
        tasks.spawn(accept_loop(
            listener,
            None,
            slot.clone(),
            shared.clone(),
            policy.clone(),
            shutdown_rx.clone(),
        ));
        forward_proxy_addr = Some(local);
        forward_dispatch = Some(slot);
    }

    let mut admin_addr = None;
    if let Some(admin_config) = &config.admin {
        let listener = bind(admin_config.listen).await?;
        let local = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: admin_config.listen,
            source,
        })?;
        info!(listen = %local, "admin listening");
        let state = admin::AdminState {
            metrics: shared.metrics.clone(),
            credentials: CredentialsView(shared.clone()),
        };
        tasks.spawn(admin::serve(
            listener,
            state,
            admin_config.limits,
            shutdown_rx.clone(),
        ));
        admin_addr = Some(local);
    }

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
        grace: config.shutdown_grace,
    })
}

/// The admin endpoint's view of the current credentials (follows reloads).
#[derive(Clone)]
pub struct CredentialsView(Arc<Shared>);

impl CredentialsView {
    /// The credentials in service now.
    pub fn current(&self) -> Arc<Credentials> {
        self.0.credentials.load_full()
    }
}

impl std::fmt::Debug for CredentialsView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialsView")
    }
}

/// What every proxy connection may hold, and the cap they share.
#[derive(Clone)]
struct ConnPolicy {
    limits: ConnLimits,
    gate: Arc<conn::Gate>,
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    dispatch: Arc<ArcSwap<Dispatch>>,
    shared: Arc<Shared>,
    policy: ConnPolicy,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let mut listener = conn::Listener::new(listener, policy.gate.clone());
    loop {
        tokio::select! {
            (stream, peer, slot) = listener.accept() => {
                let _ = stream.set_nodelay(true);
                let watcher = graceful.watcher();
                let dispatch = dispatch.clone();
                let shared = shared.clone();
                let acceptor = acceptor.clone();
                let limits = policy.limits;
                tokio::spawn(async move {
                    serve_connection(stream, peer, acceptor, dispatch, shared, &limits, watcher).await;
                    drop(slot);
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    dispatch: Arc<ArcSwap<Dispatch>>,
    shared: Arc<Shared>,
    limits: &ConnLimits,
    watcher: hyper_util::server::graceful::Watcher,
) {
    // The tap sees the raw request heads that hyper's parser tidies up.
    let tap = Tap::default();
    let inspector = tap.clone();
    let service = service_fn(move |mut request: Request<Incoming>| {
        let framing = inspector.inspect(&request);
        request.extensions_mut().insert(framing);
        let dispatch = dispatch.load_full();
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle_request(&dispatch, request, &shared.metrics).await) }
    });
    let builder = conn::http1(limits);
    let result = match acceptor {
        None => {
            watcher
                .watch(builder.serve_connection(TokioIo::new(tap.wrap(stream)), service))
                .await
        }
        Some(acceptor) => {
            // The TLS handshake is bounded by the idle timeout too.
            match tokio::time::timeout(limits.idle_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => {
                    watcher
                        .watch(
                            builder.serve_connection(TokioIo::new(tap.wrap(tls_stream)), service),
                        )
                        .await
                }
                Ok(Err(err)) => {
                    debug!(%peer, error = %err, "TLS handshake with the app failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake with the app timed out");
                    return;
                }
            }
        }
    };
    if let Err(err) = result {
        debug!(%peer, error = %err, "connection ended with an error");
    }
}

/// Route, forward and account for one request; never fails.
async fn handle_request(
    dispatch: &Dispatch,
    request: Request<Incoming>,
    metrics: &Metrics,
) -> Response<ResponseBody> {
    let started = tokio::time::Instant::now();
    let closes = request
        .extensions()
        .get::<Framing>()
        .is_some_and(|framing| framing.closes_connection());
    let (label, result) = match dispatch.find(&request) {
        Ok(route) => (route.name.clone(), forward(route, request, metrics).await),
        Err(err) => (no_route_label(), Err(err)),
    };
    let mut response = match result {
        Ok(response) => response,
        Err(err) => {
            log_error(&label, &err);
            err.to_response().map(http_body_util::Either::Right)
        }
    };
    if closes {
        // A refused framing: the tap no longer knows where a next request
        // would start (see `proxy::framing`), so this is the connection's last.
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    metrics.record_request(
        &label,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

fn no_route_label() -> Arc<str> {
    static LABEL: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    LABEL.get_or_init(|| Arc::from("none")).clone()
}

/// The one log line of an error sidekey answers itself. Lines at WARN and
/// above carry `route`, so a storm of them is folded into one line per
/// interval ([`crate::telemetry`]).
fn log_error(route: &str, err: &ProxyError) {
    match err {
        ProxyError::CredentialUnavailable(_) => error!(route, code = err.code(), "{err}"),
        ProxyError::UpstreamUnreachable { .. } | ProxyError::UpstreamTimeout { .. } => {
            // Already logged where the upstream failed.
        }
        _ => debug!(route, code = err.code(), "{err}"),
    }
}
