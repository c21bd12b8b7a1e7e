//! App and admin connections: how many may be open, what one may hold, and
//! how accepting survives running out of file descriptors.
//!
//! - [`Gate`]: a cap on open connections shared by listeners of one kind
//!   (every route listener and the forward proxy share one; the admin
//!   listener has its own). At the cap a listener stops accepting: new
//!   connections wait in the kernel's listen backlog, not in sidekey's
//!   memory, and are accepted as soon as one closes. Reaching the cap is
//!   logged once a minute at most, never per connection.
//! - [`Listener::accept`]: waits for room, accepts, and on an accept error
//!   (`EMFILE`, …) backs off exponentially (10 ms doubling to 1 s) and logs
//!   the first failure of a streak, then one count a minute, then the
//!   recovery.
//! - [`http1`]: the per-connection HTTP/1 settings: request head limit
//!   (`431` beyond it; more than 100 headers also get `431`), answers to an
//!   app that closed its sending side after its request, and the idle
//!   timeout, which hyper measures from the moment it waits for a request
//!   head, so it bounds idle keep-alive connections and trickling headers
//!   alike. Proxy connections measure it themselves, with one timer per
//!   connection instead of hyper's one per request ([`crate::idle`]).
//! - [`serve_proxy_listener`] and [`serve_proxy_connection`]: a proxy
//!   listener's accept loop, and one app connection from its TLS handshake
//!   to its close: its first bytes tell HTTP/2 ([`crate::preface`], served
//!   by [`crate::http2`]) from HTTP/1.1, served here with the request
//!   framing tap in front of hyper, and from the wrong protocols answered by
//!   [`crate::mismatch`] (TLS to a plain listener, plain HTTP or h2c to an
//!   HTTPS one, a PROXY protocol header). Either version's writes are watched by
//!   [`crate::send_timeout`]: an app that takes no byte of its answers for
//!   `body_timeout` is closed.
//! - [`raise_fd_limit`] and the file-descriptor budget that keeps
//!   `max_connections` below what the open-file limit allows.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::ConnLimits;
use crate::idle::{IdleClock, IdleRead, RestartsIdle};
use crate::metrics::Metrics;
use crate::mismatch::{self, Mismatches, PlainListener};
use crate::preface::{self, Protocol};
use crate::proxy::framing::Tap;
use crate::proxy::{Dispatch, service};
use crate::send_timeout::SendTimeout;

/// How often a persisting condition (a full cap, failing accepts) is logged again.
const LOG_AGAIN_AFTER: Duration = Duration::from_secs(60);

/// First pause after a failed accept; it doubles up to [`MAX_ACCEPT_PAUSE`].
const FIRST_ACCEPT_PAUSE: Duration = Duration::from_millis(10);

/// Longest pause between accept attempts while they fail.
const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// hyper's smallest read buffer limit (its initial buffer size).
const MIN_BUF_SIZE: usize = 8192;

/// File descriptors kept for everything but app connections: listeners,
/// token endpoint connections, files, the runtime.
const RESERVED_FDS: u64 = 64;

/// The HTTP/1 server settings for connections under `limits`.
pub fn http1(limits: &ConnLimits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .max_header_size(limits.max_header_bytes)
        // The read buffer also bounds what one connection holds while a body
        // streams through; hyper's default is ~400 KB.
        .max_buf_size(limits.max_header_bytes.max(MIN_BUF_SIZE))
        // An app (or probe script) that closes its sending side once its
        // request is written (`nc -N`) still gets the answer; hyper's
        // default drops the request at that end of input.
        .half_close(true)
        .keep_alive(true);
    builder
}

/// What every proxy connection may hold, and the cap they share.
#[derive(Clone, Debug)]
pub struct ProxyPolicy {
    /// Per-connection limits.
    pub limits: ConnLimits,
    /// The cap shared by every proxy listener.
    pub gate: Arc<Gate>,
}

/// A proxy listener's TLS (`None`: plain HTTP); a reload or a rotated
/// certificate file replaces it, and each new connection takes the one in
/// force when it is accepted.
pub type TlsSlot = Arc<ArcSwapOption<ServerConfig>>;

/// Serve a proxy listener's connections until `shutdown` turns true (or its
/// sender goes away), then close the socket and let the open connections
/// finish (the caller bounds how long: dropping this future closes them).
pub async fn serve_proxy_listener(
    listener: TcpListener,
    tls: TlsSlot,
    dispatch: Arc<ArcSwap<Dispatch>>,
    metrics: Metrics,
    policy: ProxyPolicy,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let mut listener = Listener::new(listener, policy.gate.clone());
    let mismatches = Arc::new(Mismatches::new(listener.local));
    // Owned here, so that dropping the listener's future ends them.
    let mut connections = JoinSet::new();
    // Each connection's own view of the drain signal (HTTP/2 says GOAWAY).
    let drain = shutdown.clone();
    loop {
        tokio::select! {
            (stream, peer, slot) = listener.accept() => {
                let _ = stream.set_nodelay(true);
                crate::send_timeout::limit_unsent(&stream);
                let watcher = graceful.watcher();
                let acceptor = tls.load_full().map(TlsAcceptor::from);
                let app = App {
                    dispatch: dispatch.clone(),
                    metrics: metrics.clone(),
                    limits: policy.limits,
                    shutdown: drain.clone(),
                    mismatches: mismatches.clone(),
                };
                // Finished connections are let go of here, not in this
                // select: `accept` is not to be cancelled once it accepted.
                while connections.try_join_next().is_some() {}
                connections.spawn(async move {
                    serve_proxy_connection(stream, peer, acceptor, app, watcher).await;
                    drop(slot);
                });
            }
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
    while connections.join_next().await.is_some() {}
}

/// What one app connection of a proxy listener is served with.
#[derive(Clone, Debug)]
pub struct App {
    /// The listener's dispatch table; each request uses the one in force
    /// when it arrives.
    pub dispatch: Arc<ArcSwap<Dispatch>>,
    /// Where requests are counted.
    pub metrics: Metrics,
    /// Per-connection limits.
    pub limits: ConnLimits,
    /// Turns true when the listener drains.
    pub shutdown: watch::Receiver<bool>,
    /// The listener's answers to connections in the wrong protocol.
    pub mismatches: Arc<Mismatches>,
}

/// Serve one app connection of a proxy listener until it closes: the TLS
/// handshake when the listener has one (bounded by `idle_timeout`; a
/// connection whose first byte starts no TLS record is answered by
/// [`Mismatches::refuse_plain_on_https`] instead), then by its first bytes
/// HTTP/2 ([`crate::http2`]) or HTTP/1.1 under [`http1`] with the request
/// framing tap, each request through
/// [`service::handle_request`] with the dispatch table in force when it
/// arrives. `watcher` keeps the listener's drain waiting until it closes.
pub async fn serve_proxy_connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    app: App,
    watcher: Watcher,
) {
    let idle = IdleClock::start();
    let Some(acceptor) = acceptor else {
        return serve_app(stream, false, peer, app, idle, watcher).await;
    };
    // The TLS handshake is bounded by the idle timeout too.
    let deadline = crate::deadline::after(Instant::now(), app.limits.idle_timeout);
    match tokio::time::timeout_at(deadline, mismatch::starts_tls(&stream)).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            let http1 = http1(&app.limits);
            let mismatches = app.mismatches;
            return mismatches
                .refuse_plain_on_https(stream, peer, http1, deadline)
                .await;
        }
        Ok(Err(err)) => {
            debug!(%peer, error = %err, "connection ended before its TLS handshake");
            return;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake with the app timed out");
            return;
        }
    }
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(tls_stream)) => {
            idle.restart();
            serve_app(tls_stream, true, peer, app, idle, watcher).await;
        }
        Ok(Err(err)) => debug!(%peer, error = %err, "TLS handshake with the app failed"),
        Err(_) => debug!(%peer, "TLS handshake with the app timed out"),
    }
}

/// Serve an app connection (past TLS) in the HTTP version its first bytes
/// tell; they must come within the idle time.
async fn serve_app<S>(
    stream: S,
    over_tls: bool,
    peer: SocketAddr,
    app: App,
    idle: Arc<IdleClock>,
    watcher: Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = app.limits.idle_timeout;
    let deadline = idle
        .deadline(timeout)
        .unwrap_or_else(|| crate::deadline::after(Instant::now(), timeout));
    let Some((protocol, stream)) = preface::sniff_by(stream, deadline, peer).await else {
        return;
    };
    let http2 = match protocol {
        Protocol::Http1 => false,
        Protocol::Http2 => true,
        Protocol::Tls => {
            // Closed at once. (TLS inside TLS comes from no client that
            // meant it: closed without a word.)
            if !over_tls {
                let serves = match **app.dispatch.load() {
                    Dispatch::Forward(_) => PlainListener::ForwardProxy,
                    Dispatch::Routes(_) => PlainListener::Routes,
                };
                app.mismatches.tls_on_plain(peer, serves);
            }
            return;
        }
        Protocol::ProxyHeader => {
            app.mismatches.refuse_proxy_header(stream, peer).await;
            return;
        }
    };
    // Both versions: an app that takes no byte of its answers is closed.
    let stream = SendTimeout::new(stream, app.dispatch.clone());
    let result = if http2 {
        let limits = app.limits;
        let served = crate::http2::serve_connection(
            stream,
            app.dispatch,
            app.metrics,
            &limits,
            idle,
            app.shutdown,
        );
        let result = served.await;
        drop(watcher);
        result
    } else {
        serve_http1(stream, app, idle, watcher).await
    };
    if let Err(err) = result {
        debug!(%peer, error = %err, "connection ended with an error");
    }
}

/// Serve an HTTP/1.1 app connection under [`http1`], read through the
/// request framing tap and the idle deadline.
async fn serve_http1<S>(
    stream: S,
    app: App,
    idle: Arc<IdleClock>,
    watcher: Watcher,
) -> Result<(), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The tap sees the raw request heads that hyper's parser tidies up.
    let tap = Tap::default();
    let inspector = tap.clone();
    let clock = idle.clone();
    let App {
        dispatch,
        metrics,
        limits,
        ..
    } = app;
    let service = service_fn(move |request: Request<Incoming>| {
        let busy = clock.request_started();
        // Passed along, not put in the request's extensions: a first
        // extension costs three allocations per request.
        let framing = inspector.inspect(&request);
        let dispatch = dispatch.load_full();
        let metrics = metrics.clone();
        async move {
            let response = service::handle_request(&dispatch, request, framing, &metrics).await;
            Ok::<_, Infallible>(response.map(|body| RestartsIdle::new(body, busy)))
        }
    });
    let mut builder = http1(&limits);
    builder.header_read_timeout(None);
    let io = IdleRead::new(tap.wrap(stream), idle, limits.idle_timeout);
    watcher
        .watch(builder.serve_connection(TokioIo::new(io), service))
        .await
}

/// A cap on open connections, shared by the listeners of one kind.
#[derive(Debug)]
pub struct Gate {
    kind: &'static str,
    limit: usize,
    slots: Arc<Semaphore>,
    /// When "limit reached" was last logged.
    logged_full: Mutex<Option<Instant>>,
}

/// One open connection's place under its [`Gate`]; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Gate {
    /// A cap of `limit` connections for listeners of `kind` ("proxy", "admin").
    pub fn new(kind: &'static str, limit: usize) -> Arc<Gate> {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Gate {
            kind,
            limit,
            slots: Arc::new(Semaphore::new(limit)),
            logged_full: Mutex::new(None),
        })
    }

    /// The cap for the proxy listeners: `limits.max_connections`, lowered
    /// (and logged) when the open-file limit could not hold that many app
    /// connections, each with an upstream connection, next to `admin`
    /// connections, the `held` descriptors that the configuration keeps
    /// open whatever the traffic (a socket per proxy listen address and
    /// worker, a token endpoint connection per credential) and
    /// [`RESERVED_FDS`].
    pub fn for_proxy(limits: &ConnLimits, admin: Option<&ConnLimits>, held: usize) -> Arc<Gate> {
        let wanted = limits.max_connections;
        let admin = admin.map_or(0, |admin| admin.max_connections);
        let limit = match fd_budget(admin.saturating_add(held)) {
            Some((budget, open_files)) if budget < wanted => {
                warn!(
                    max_connections = wanted,
                    lowered_to = budget,
                    open_file_limit = open_files,
                    "max_connections is more than the open-file limit allows (each app \
                     connection can need a second descriptor for its upstream); raise the \
                     limit (LimitNOFILE=, ulimit -n) to allow more"
                );
                budget
            }
            _ => wanted,
        };
        Gate::new("proxy", limit)
    }

    /// The cap.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.limit - self.slots.available_permits()
    }

    /// Return once there is room for one more connection, without taking it.
    async fn room(&self) {
        if self.slots.available_permits() > 0 {
            return;
        }
        self.log_full();
        // Acquired and released at once: this only waits for a free place.
        let _ = self.slots.acquire().await;
    }

    /// Take a place for an accepted connection. Normally there is one (see
    /// [`Gate::room`]); when another listener of the same gate took it
    /// first, wait for the next.
    async fn claim(&self) -> Slot {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => self.slots.clone().acquire_owned().await.ok(),
        };
        Slot { _permit: permit }
    }

    fn log_full(&self) {
        let now = Instant::now();
        let Ok(mut logged) = self.logged_full.lock() else {
            return;
        };
        if logged.is_some_and(|at| now.duration_since(at) < LOG_AGAIN_AFTER) {
            return;
        }
        *logged = Some(now);
        warn!(
            kind = self.kind,
            max_connections = self.limit,
            "{} connection limit reached; new connections wait in the listen backlog \
             until one closes (logged at most once a minute)",
            self.kind
        );
    }
}

/// A listener under a [`Gate`].
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    local: SocketAddr,
    gate: Arc<Gate>,
    errors: AcceptErrors,
    /// A connection accepted by a call cancelled while it waited for a place.
    unplaced: Option<(TcpStream, SocketAddr)>,
}

impl Listener {
    /// Accept on `listener` under `gate`.
    pub fn new(listener: TcpListener, gate: Arc<Gate>) -> Listener {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        Listener {
            listener,
            local,
            gate,
            errors: AcceptErrors::default(),
            unplaced: None,
        }
    }

    /// The address it is bound to (port 0 resolved).
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// The next connection and its place under the cap. Waits while the
    /// cap is reached; pauses and retries while accepting fails. Safe to
    /// cancel (in a `select!` with shutdown): a connection accepted while
    /// another listener took the last place is kept for the next call.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr, Slot) {
        loop {
            if self.unplaced.is_none() {
                self.gate.room().await;
                match self.listener.accept().await {
                    Ok(accepted) => {
                        self.errors.recovered(self.local, Instant::now());
                        self.unplaced = Some(accepted);
                    }
                    Err(err) => {
                        let pause = self.errors.failed(self.local, &err, Instant::now());
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                }
            }
            let slot = self.gate.claim().await;
            if let Some((stream, peer)) = self.unplaced.take() {
                return (stream, peer, slot);
            }
        }
    }
}

/// What a listener does about failing `accept` calls: how long to pause,
/// and which failures to log.
#[derive(Debug, Default)]
struct AcceptErrors {
    /// Failures since the last success.
    streak: u64,
    /// Failures since the last line about them.
    unlogged: u64,
    /// When the streak started, and when it was last logged.
    since: Option<(Instant, Instant)>,
}

impl AcceptErrors {
    /// An accept failed: log (or count) it and return how long to pause.
    fn failed(&mut self, listener: SocketAddr, err: &std::io::Error, now: Instant) -> Duration {
        self.streak += 1;
        match self.since {
            None => {
                warn!(%listener, error = %err, "accept failed; retrying with backoff");
                self.since = Some((now, now));
            }
            Some((started, logged)) if now.duration_since(logged) >= LOG_AGAIN_AFTER => {
                warn!(
                    %listener,
                    error = %err,
                    failures = self.unlogged + 1,
                    failing_for_s = now.duration_since(started).as_secs(),
                    "accept still failing"
                );
                self.since = Some((started, now));
                self.unlogged = 0;
            }
            Some(_) => self.unlogged += 1,
        }
        let doublings = u32::try_from(self.streak - 1).unwrap_or(u32::MAX).min(16);
        FIRST_ACCEPT_PAUSE
            .saturating_mul(1 << doublings)
            .min(MAX_ACCEPT_PAUSE)
    }

    /// An accept succeeded.
    fn recovered(&mut self, listener: SocketAddr, now: Instant) {
        if let Some((started, _)) = self.since.take() {
            info!(
                %listener,
                failures = self.streak,
                failed_for_ms = now.duration_since(started).as_millis() as u64,
                "accepting again"
            );
        }
        self.streak = 0;
        self.unlogged = 0;
    }
}

/// Raise the soft open-file limit to the hard limit; returns (before, after).
pub fn raise_fd_limit() -> std::io::Result<(u64, u64)> {
    #[cfg(unix)]
    {
        let (before, _) = rlimit::Resource::NOFILE.get()?;
        let after = rlimit::increase_nofile_limit(u64::MAX)?;
        Ok((before, after))
    }
    #[cfg(not(unix))]
    {
        Ok((0, 0))
    }
}

/// How many app connections the soft open-file limit can hold next to
/// `others` descriptors, and that limit; `None` when unlimited or unknown.
fn fd_budget(others: usize) -> Option<(usize, u64)> {
    #[cfg(unix)]
    {
        let (soft, _) = rlimit::Resource::NOFILE.get().ok()?;
        if soft == rlimit::INFINITY {
            return None;
        }
        let others = u64::try_from(others).unwrap_or(u64::MAX);
        let spare = soft.saturating_sub(RESERVED_FDS.saturating_add(others));
        let budget = usize::try_from(spare / 2).unwrap_or(usize::MAX).max(1);
        Some((budget, soft))
    }
    #[cfg(not(unix))]
    {
        let _ = others;
        None
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Log lines written while `f` runs.
    fn logged(f: impl FnOnce()) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    /// A connection accepted while another listener took the last place
    /// under the cap is kept when that accept is cancelled (a drain, a
    /// reload), and handed out by the next call instead of being dropped.
    #[tokio::test]
    async fn a_cancelled_accept_keeps_the_connection_it_took() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let gate = Gate::new("test", 1);
        let bind = || async { TcpListener::bind("127.0.0.1:0").await.unwrap() };
        let (first, second) = (bind().await, bind().await);
        let (first_addr, second_addr) = (first.local_addr().unwrap(), second.local_addr().unwrap());
        let mut first = Listener::new(first, gate.clone());
        let mut second = Listener::new(second, gate.clone());

        // `first` sees room and waits in accept; meanwhile `second` takes
        // the only place; then a client reaches `first`, whose accept now
        // waits for a place — and is cancelled.
        let waiting = tokio::spawn(async move {
            let cancelled = tokio::time::timeout(Duration::from_millis(300), first.accept()).await;
            assert!(cancelled.is_err(), "no place was free");
            first
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _held = tokio::net::TcpStream::connect(second_addr).await.unwrap();
        let (_, _, taken) = second.accept().await;
        let mut client = tokio::net::TcpStream::connect(first_addr).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let mut first = waiting.await.unwrap();

        drop(taken);
        let (mut stream, _, _slot) = tokio::time::timeout(Duration::from_secs(5), first.accept())
            .await
            .expect("the kept connection");
        let mut hello = [0u8; 5];
        stream.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello");
    }

    #[test]
    fn a_long_accept_failure_streak_logs_a_handful_of_lines_and_backs_off() {
        let listener = SocketAddr::from(([127, 0, 0, 1], 8080));
        let emfile = std::io::Error::from_raw_os_error(24);
        let start = Instant::now();
        let mut attempts = 0;
        let lines = logged(|| {
            let mut errors = AcceptErrors::default();
            let mut now = start;
            // The scenario: 45 s of EMFILE.
            while now - start < Duration::from_secs(45) {
                attempts += 1;
                now += errors.failed(listener, &emfile, now);
            }
            errors.recovered(listener, now);
        });
        assert!(
            lines.len() <= 3,
            "45 s of accept failures logged {} lines",
            lines.len()
        );
        assert!(
            lines.first().is_some_and(|l| l.contains("accept failed")),
            "{lines:?}"
        );
        assert!(
            lines.last().is_some_and(|l| l.contains("accepting again")),
            "the recovery is logged with the count: {lines:?}"
        );
        assert!(
            attempts <= 60,
            "{attempts} accept attempts in 45 s: the pause grows to 1 s"
        );
    }
}
