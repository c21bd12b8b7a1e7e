//! The upstream client of a route: connections to its one upstream, kept
//! per serving worker ([`crate::workers`]), HTTP/2 when the upstream's ALPN
//! offers it, never following redirects.
//!
//! A route has one upstream (an Inbenta route's comes from its token and
//! changes rarely), so each worker's [`Pool`] is one list of connections to
//! it, found by the worker's index: no hashing of an authority, no racing.
//! - HTTP/1.1: a request takes a connection that is ready for one, or
//!   opens a new one and keeps it; a connection is busy until its response
//!   body has been read, so under steady load a worker holds at most as many
//!   upstream connections as it has requests in flight.
//! - HTTP/2: one multiplexed connection per worker, opened by the first
//!   request while the others wait for it (ALPN of that first connection
//!   decides between the two), and opened again once it closes or the
//!   upstream says GOAWAY, stops answering its PINGs while streams are open
//!   ([`H2_KEEP_ALIVE_INTERVAL`]), leaves a request unanswered for its
//!   `request_timeout` ([`UpstreamClient::retire_http2_after_timeout`]), or
//!   reaches [`MAX_CONNECTION_AGE`].
//!   Requests beyond the upstream's stream limit queue on the connection
//!   ([`H2_INITIAL_STREAMS`]). A response the app is slow to take waits in
//!   sidekey only up to its stream's window ([`H2_STREAM_WINDOW`]), and
//!   the connection's window holds many of those ([`H2_CONNECTION_WINDOW`]),
//!   so an app that stops reading holds up no other request. The
//!   connection's futures and those hyper makes for each request run in one
//!   task per connection, not one task per request ([`super::h2_driver`]).
//!
//! A request marked HTTP/2 (a gRPC call, see [`super::grpc`]) is never
//! sent over HTTP/1.1: its status would travel in trailers that HTTP/1.1
//! cannot carry, and a bidirectional stream would wait for ever. When the
//! upstream speaks only HTTP/1.1, it fails at once ([`UpstreamError::NeedsHttp2`]).
//!
//! A request the connection never sent (it closed first, or said GOAWAY)
//! is sent again on another connection. Idle HTTP/1.1 connections are
//! dropped after [`POOL_IDLE_TIMEOUT`], shorter than the idle timeouts of
//! the servers and load balancers APIs usually sit behind, so that the
//! proxy, not the upstream, usually closes an idle connection; sooner when
//! the upstream's first answer on it advertised a shorter keep-alive
//! timeout (Node.js: 5 s; [`super::keep_alive`]). No
//! connection takes new requests past [`MAX_CONNECTION_AGE`], so that a
//! change of the upstream's address reaches connections that never idle. Every failed
//! request carries the moment its connection was opened ([`Opened`]), so
//! that `forward` can tell a connection taken from the pool from one opened
//! for it, and sends a request again only after the former
//! ([`on_stale_connection`]).
//!
//! hyper-util's composable pool (`client::pool::cache`) was considered: its
//! cache races a new connect against waiting for an idle connection (what
//! opened twice as many upstream connections as app connections with the
//! legacy client), has no idle timeout, and checks out through `&mut self`
//! tower services; the list here is a few lines and does neither.

use std::future::{Future, poll_fn};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::rt::Executor;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tower_service::Service;
use tracing::debug;

use super::UpstreamBody;
use super::h2_driver::ConnExecutor;
use super::keep_alive;
use super::unusable::{self, Unusable};
use crate::resolve::{RememberingConnector, SharedResolver};
use crate::tls::TlsError;
use crate::tls::UpstreamTls;

/// How long an idle pooled connection is kept. Below the default idle
/// timeouts of AWS's ALB (60 s), nginx (75 s) and IIS (120 s): against those, the pool drops a connection before the
/// upstream can close it under a request. Upstreams with shorter keep-alive
/// timeouts are covered by `forward`'s replay of idempotent requests.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The least time a connection waits for its name lookup, whatever
/// `connect_timeout` says: glibc sends a lost DNS query again only after
/// its `timeout` (5 s by default; Kubernetes' conntrack race loses one now
/// and then), so a shorter wait turns every lost packet into a failure
/// that one more second would have answered.
pub const LOOKUP_AT_LEAST: Duration = Duration::from_secs(6);

/// How long a connection waits for its name lookup.
fn lookup_limit(connect_timeout: Duration) -> Duration {
    connect_timeout.max(LOOKUP_AT_LEAST)
}

/// How long a connection takes new requests. Past this age it is retired
/// (HTTP/2: no new streams, HTTP/1.1: not taken again once idle) and the
/// next request opens another, which looks the upstream's name up again:
/// without it, a connection kept busy never idles out, and the one HTTP/2
/// connection of a worker would stay pinned to an address that DNS no
/// longer gives (a load balancer node retired, a failover) for as long as
/// the upstream keeps it open. Requests on a retired connection finish
/// there; it closes once they have. A few minutes, like the DNS TTLs of
/// cloud load balancers (60 s) times a few, and nginx's `keepalive_time`
/// idea; the cost is one handshake per connection per period.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);

/// How long an HTTP/2 connection with streams open may go without a byte
/// from the upstream before it is pinged to tell a dead peer from a quiet
/// one. Not while idle: gRPC servers answer pings on a connection without
/// calls (more often than every 5 minutes) with GOAWAY `too_many_pings`.
/// A connection that died while idle costs the first request on it one
/// `request_timeout`, which retires it
/// ([`UpstreamClient::retire_http2_after_timeout`]).
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a PING may go unanswered before its connection is given up
/// (and the next request opens another): a dead peer is found within
/// [`H2_KEEP_ALIVE_INTERVAL`] and this of its last byte.
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Response bytes the upstream may send ahead on one HTTP/2 stream: what
/// waits in sidekey for an app that reads slowly or not at all. A stream
/// can carry this much per round trip (100 MiB/s at 10 ms).
const H2_STREAM_WINDOW: u32 = 1024 * 1024;

/// Response bytes the upstream may send ahead on one HTTP/2 connection,
/// over all its streams: the most a worker's connection holds for slow
/// apps. Sixteen stream windows: a stream whose app stopped reading keeps
/// its window's worth unread, and with the two windows equal (what hyper's
/// adaptive window does), one such app stalled every other response on the
/// connection until `body_timeout` cut them off.
const H2_CONNECTION_WINDOW: u32 = 16 * H2_STREAM_WINDOW;

/// Streams a new HTTP/2 connection opens before the upstream's SETTINGS
/// say how many it takes. hyper assumes 100, and a burst of requests that
/// waited for the connection would go out at once; an upstream that takes
/// fewer refuses the rest. With one, the others wait (one round trip) for
/// the real limit, then queue under it.
const H2_INITIAL_STREAMS: usize = 1;

/// How often a worker's idle HTTP/1.1 connections are all checked against
/// [`POOL_IDLE_TIMEOUT`] (the ones a request looks at are checked every time).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Most tries of a request that connections keep returning unsent (each
/// closed or said GOAWAY before taking it).
const SEND_ATTEMPTS: u32 = 4;

/// TCP keepalive of upstream connections.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

type Connector = HttpsConnector<RememberingConnector>;
type Io = MaybeHttpsStream<TokioIo<TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Settings of one upstream client.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions<'a> {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Permit `http://` (tests on loopback only).
    pub allow_insecure_http: bool,
    /// Client certificate and server-name override.
    pub upstream_tls: Option<&'a UpstreamTls>,
    /// How many serving workers use the client (one pool each).
    pub workers: usize,
    /// Name lookups (`None`: `getaddrinfo`, one per name in flight); a
    /// stand-in in tests.
    pub resolver: Option<&'a SharedResolver>,
}

/// A route's client: one [`Pool`] per serving worker.
pub struct UpstreamClient {
    connector: Connector,
    http1: http1::Builder,
    pools: Box<[Mutex<Pool>]>,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("workers", &self.pools.len())
            .finish_non_exhaustive()
    }
}

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection: TCP, TLS or the HTTP handshake failed or timed out.
    #[error("cannot connect to the upstream")]
    Connect(#[source] BoxError),
    /// The connection failed while the request was on it.
    #[error("the upstream connection failed")]
    Request {
        /// hyper's error.
        #[source]
        source: hyper::Error,
        /// When the connection was opened.
        opened: Opened,
    },
    /// The request URI has no scheme or authority (never, from a route).
    #[error("the upstream URI is not absolute")]
    NotAbsolute,
    /// An answer the app could not read as sent ([`super::unusable`]).
    #[error(transparent)]
    Unusable(#[from] Unusable),
    /// The request must go as HTTP/2 (a gRPC call) and the upstream speaks
    /// only HTTP/1.1.
    #[error(
        "the upstream speaks only HTTP/1.1 (TLS ALPN did not offer h2); a gRPC call needs HTTP/2"
    )]
    NeedsHttp2,
}

impl UpstreamError {
    /// Whether no connection could be made.
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

/// When a connection was opened; carried by a failed request's error.
#[derive(Clone, Copy, Debug)]
pub struct Opened(pub Instant);

/// What the first connection's ALPN said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Unknown,
    Http1,
    Http2,
}

/// One worker's connections to the route's upstream.
struct Pool {
    /// The upstream these connections go to, and its `Host` header value.
    origin: Option<(Scheme, Authority, HeaderValue)>,
    protocol: Protocol,
    http1: Vec<Http1Conn>,
    http2: Option<Http2Conn>,
    /// Set while a request opens the connection the others wait for (the
    /// first one, and every HTTP/2 one); closed when it is done.
    connecting: Option<watch::Receiver<()>>,
    swept: tokio::time::Instant,
    next_id: u64,
}

struct Http1Conn {
    sender: http1::SendRequest<UpstreamBody>,
    opened: Instant,
    /// tokio's clock (the same as `std`'s outside tests), so that the
    /// paused clock of tests moves it.
    used: tokio::time::Instant,
    /// Not taken again once idle this long: [`POOL_IDLE_TIMEOUT`], or less
    /// when the upstream advertised a shorter keep-alive ([`keep_alive`]).
    idle_limit: Duration,
    /// Not taken again from this moment ([`MAX_CONNECTION_AGE`]).
    retire_at: tokio::time::Instant,
}

struct Http2Conn {
    sender: http2::SendRequest<UpstreamBody>,
    opened: Instant,
    id: u64,
    /// Set by the connection's task at [`MAX_CONNECTION_AGE`]: one atomic
    /// load per request instead of a clock read.
    aged: Arc<AtomicBool>,
}

/// What a request does next, decided under the pool's lock.
enum Step {
    Http1(Http1Conn, HeaderValue),
    Http2(http2::SendRequest<UpstreamBody>, Instant, u64),
    Wait(watch::Receiver<()>),
    Connect(Option<watch::Sender<()>>),
}

/// Build a client speaking TLS as `tls_config` says (trust, and a client
/// certificate for mTLS).
pub fn upstream_client(
    tls_config: ClientConfig,
    options: ClientOptions<'_>,
) -> Result<UpstreamClient, TlsError> {
    // The lookup is bounded by connect_timeout too (but never below
    // LOOKUP_AT_LEAST), then the connect.
    let resolver = options.resolver.cloned().unwrap_or_default();
    let resolver = resolver.answer_within(lookup_limit(options.connect_timeout));
    let mut http = HttpConnector::new_with_resolver(resolver.clone());
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(options.connect_timeout));
    http.set_keepalive(Some(TCP_KEEPALIVE));

    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls_config);
    let mut builder = if options.allow_insecure_http {
        builder.https_or_http()
    } else {
        builder.https_only()
    };
    if let Some(name) = options.upstream_tls.and_then(|t| t.server_name.as_deref()) {
        let server_name = ServerName::try_from(name.to_owned()).map_err(|e| {
            TlsError::Rustls(rustls::Error::General(format!("server_name `{name}`: {e}")))
        })?;
        builder = builder.with_server_name_resolver(FixedServerNameResolver::new(server_name));
    }
    let http = RememberingConnector::new(http, resolver);
    let connector = builder.enable_http1().enable_http2().wrap_connector(http);

    let now = tokio::time::Instant::now();
    let pools = (0..options.workers.max(1))
        .map(|_| {
            Mutex::new(Pool {
                origin: None,
                protocol: Protocol::Unknown,
                http1: Vec::new(),
                http2: None,
                connecting: None,
                swept: now,
                next_id: 0,
            })
        })
        .collect();
    Ok(UpstreamClient {
        connector,
        http1: http1_builder(),
        pools,
    })
}

/// How HTTP/1.1 answers are read: a field folded over several lines
/// (obs-fold, from old servers) is unfolded with spaces as RFC 9112 5.2
/// allows a proxy to do, since the app's own client would accept it,
/// rather than answered 502; whitespace between a field name and its colon
/// is removed, as RFC 9112 5.1 tells a proxy to do (it was a 502). At most hyper's 100 header fields: more
/// makes hyper parse every answer head into buffers on the heap (measured:
/// +4,350 instructions and 2 allocations per request, 9 %), for answers no
/// API sends.
fn http1_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder.allow_obsolete_multiline_headers_in_responses(true);
    builder.allow_spaces_after_header_name_in_responses(true);
    builder
}

impl UpstreamClient {
    /// Whether the current worker's connections to the upstream speak
    /// HTTP/2 (known once its first connection is open).
    pub fn speaks_http2(&self) -> bool {
        let pool = &self.pools[crate::workers::id() % self.pools.len()];
        lock(pool).protocol == Protocol::Http2
    }

    /// A request got no answer head within its `request_timeout`: the
    /// worker's HTTP/2 connection is retired so that the next request opens
    /// another; its other streams go on. A connection that fell silent (a
    /// black hole: a host gone, a NAT entry forgotten) then costs one
    /// timeout, not every request after it. Rarely, the connection retired
    /// is a newer one than the request went out on: that costs a handshake.
    pub fn retire_http2_after_timeout(&self) {
        let pool = &self.pools[crate::workers::id() % self.pools.len()];
        lock(pool).http2 = None;
    }

    /// Send `request` (absolute URI) to the upstream on one of the current
    /// worker's connections, and return the response head and when its
    /// connection was opened.
    ///
    /// A plain function returning an `async move` block rather than an
    /// `async fn`: an `async fn` keeps its arguments twice in its state
    /// (as passed, and moved into the body), and this future is moved
    /// whole at every level above it, once per request.
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` keeps its arguments twice in its state"
    )]
    pub fn request(
        &self,
        mut request: Request<UpstreamBody>,
    ) -> impl Future<Output = Result<(Response<Incoming>, Opened), UpstreamError>> + Send + '_ {
        async move {
            let pool = &self.pools[crate::workers::id() % self.pools.len()];
            let (Some(scheme), Some(authority)) = (
                request.uri().scheme().cloned(),
                request.uri().authority().cloned(),
            ) else {
                return Err(UpstreamError::NotAbsolute);
            };
            let mut attempts = 0;
            let mut waited = false;
            loop {
                attempts += 1;
                let step = take(&mut lock(pool), &scheme, &authority, waited);
                let (result, opened) = match step {
                    Step::Http1(mut conn, host) => {
                        if request.version() == Version::HTTP_2 {
                            lock(pool).http1.push(conn);
                            return Err(UpstreamError::NeedsHttp2);
                        }
                        to_origin_form(&mut request, host);
                        let sending = conn.sender.try_send_request(request);
                        let opened = conn.opened;
                        lock(pool).http1.push(conn);
                        (sending.await, opened)
                    }
                    Step::Http2(mut sender, opened, id) => {
                        let result = sender.try_send_request(request).await;
                        let unsent = result.as_ref().is_err_and(|err| err.message().is_some());
                        if unsent || sender.is_closed() {
                            // Closed or GOAWAY: the next request opens a new one.
                            forget_http2(&mut lock(pool), id);
                        }
                        (result, opened)
                    }
                    Step::Wait(mut connecting) => {
                        // Woken when the connection is there or the attempt ended.
                        let _ = connecting.changed().await;
                        waited = true;
                        attempts -= 1;
                        continue;
                    }
                    Step::Connect(done) => {
                        // Boxed: the handshake's state (TLS buffers, the HTTP
                        // handshake) and a fresh connection's first exchange
                        // are kilobytes; inline, they would make every
                        // request's future that large, and hyper moves that
                        // future once per request.
                        Box::pin(self.send_fresh(pool, &scheme, &authority, done, request)).await?
                    }
                };
                match result {
                    Ok(response) => {
                        // Dropped unread, its connection is closed, never reused.
                        unusable::check(&response)?;
                        return Ok((response, Opened(opened)));
                    }
                    Err(mut err) => match err.take_message() {
                        Some(unsent) if attempts < SEND_ATTEMPTS => {
                            request = to_absolute_form(unsent, &scheme, &authority);
                        }
                        _ => {
                            return Err(UpstreamError::Request {
                                source: err.into_error(),
                                opened: Opened(opened),
                            });
                        }
                    },
                }
            }
        }
    }

    /// Open a connection ([`Self::connect`]; `done`: the others wait for
    /// it, and are woken once it is open or failed) and send `request` on
    /// it, its first exchange: the answer head or the failure, and when
    /// the connection was opened.
    async fn send_fresh(
        &self,
        pool: &Mutex<Pool>,
        scheme: &Scheme,
        authority: &Authority,
        done: Option<watch::Sender<()>>,
        mut request: Request<UpstreamBody>,
    ) -> Result<(SendResult, Instant), UpstreamError> {
        let connected = self.connect(pool, scheme, authority, done.is_some()).await;
        drop(done);
        Ok(match connected? {
            Fresh::Http1(mut sender, host, opened) => {
                let now = tokio::time::Instant::now();
                let needs_http2 = request.version() == Version::HTTP_2;
                let sending = (!needs_http2).then(|| {
                    to_origin_form(&mut request, host);
                    sender.try_send_request(request)
                });
                let mut conn = Http1Conn {
                    sender,
                    opened,
                    used: now,
                    idle_limit: POOL_IDLE_TIMEOUT,
                    retire_at: now + MAX_CONNECTION_AGE,
                };
                let Some(sending) = sending else {
                    keep_http1(&mut lock(pool), authority, conn);
                    return Err(UpstreamError::NeedsHttp2);
                };
                // Kept once its first answer said how long the upstream
                // keeps it idle (busy until then).
                let result = sending.await;
                if let Some(limit) = result
                    .as_ref()
                    .ok()
                    .and_then(|response| keep_alive::idle_limit(response.headers()))
                {
                    conn.idle_limit = limit.min(POOL_IDLE_TIMEOUT);
                }
                keep_http1(&mut lock(pool), authority, conn);
                (result, opened)
            }
            Fresh::Http2(mut sender, opened, _) => (sender.try_send_request(request).await, opened),
        })
    }

    /// Open a connection to `scheme://authority` and keep it in `pool` if it
    /// speaks HTTP/2 (an HTTP/1.1 one is kept once its first request is on
    /// it). `waited_for`: the others wait for this one.
    async fn connect(
        &self,
        pool: &Mutex<Pool>,
        scheme: &Scheme,
        authority: &Authority,
        waited_for: bool,
    ) -> Result<Fresh, UpstreamError> {
        let result = self.handshake(scheme, authority).await;
        let mut pool = lock(pool);
        if waited_for {
            pool.connecting = None;
        }
        let connection = result?;
        let same_origin = pool
            .origin
            .as_ref()
            .is_some_and(|(_, current, _)| current == authority);
        if !same_origin {
            return Ok(connection);
        }
        match &connection {
            Fresh::Http1(..) => pool.protocol = Protocol::Http1,
            Fresh::Http2(sender, opened, aged) => {
                pool.protocol = Protocol::Http2;
                pool.next_id += 1;
                pool.http2 = Some(Http2Conn {
                    sender: sender.clone(),
                    opened: *opened,
                    id: pool.next_id,
                    aged: Arc::clone(aged),
                });
            }
        }
        Ok(connection)
    }

    /// TCP, TLS (ALPN) and the HTTP handshake; the connection's task runs
    /// on the current (worker's) runtime.
    async fn handshake(
        &self,
        scheme: &Scheme,
        authority: &Authority,
    ) -> Result<Fresh, UpstreamError> {
        let uri = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| UpstreamError::Connect(e.into()))?;
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(UpstreamError::Connect)?;
        let io: Io = connector.call(uri).await.map_err(UpstreamError::Connect)?;
        let opened = Instant::now();
        if io.connected().is_negotiated_h2() {
            // The connection's futures, and every request's, run in one
            // task (see `h2_driver`).
            let executor = ConnExecutor::default();
            let (sender, connection) = http2::Builder::new(executor.clone())
                .timer(TokioTimer::new())
                .initial_stream_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONNECTION_WINDOW)
                .initial_max_send_streams(H2_INITIAL_STREAMS)
                .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
                .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT)
                .handshake(io)
                .await
                .map_err(|e| UpstreamError::Connect(e.into()))?;
            let (ended, ending) = oneshot::channel::<()>();
            Executor::execute(&executor, async move {
                let _ended = ended;
                if let Err(err) = connection.await {
                    debug!(error = %err, "upstream HTTP/2 connection ended with an error");
                }
            });
            // A future of its own, not raced with the connection's: the
            // driver polls only woken futures, so the requests do not poll
            // this timer (that was +120 instructions per request).
            let aged = Arc::new(AtomicBool::new(false));
            let retire = Arc::clone(&aged);
            Executor::execute(&executor, async move {
                tokio::select! {
                    _ = ending => {}
                    () = tokio::time::sleep(MAX_CONNECTION_AGE) => retire.store(true, Ordering::Relaxed),
                }
            });
            Ok(Fresh::Http2(sender, opened, aged))
        } else {
            let (sender, connection) = self
                .http1
                .handshake(io)
                .await
                .map_err(|e| UpstreamError::Connect(e.into()))?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    debug!(error = %err, "upstream connection ended with an error");
                }
            });
            Ok(Fresh::Http1(sender, host_value(scheme, authority), opened))
        }
    }
}

/// What sending a request on a connection came to: the answer head, or
/// the failure (with the request when it was never sent).
type SendResult =
    Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<UpstreamBody>>>;

/// A connection just opened.
enum Fresh {
    Http1(http1::SendRequest<UpstreamBody>, HeaderValue, Instant),
    Http2(http2::SendRequest<UpstreamBody>, Instant, Arc<AtomicBool>),
}

fn lock(pool: &Mutex<Pool>) -> MutexGuard<'_, Pool> {
    // A panic while holding the lock leaves the lists consistent.
    pool.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Pick a connection for a request to `scheme://authority`, or decide to
/// wait for one being opened, or to open one. A request that `waited`
/// once for another's connection that did not come opens its own.
fn take(pool: &mut Pool, scheme: &Scheme, authority: &Authority, waited: bool) -> Step {
    let same_origin = pool
        .origin
        .as_ref()
        .is_some_and(|(s, a, _)| s == scheme && a == authority);
    if !same_origin {
        // A new upstream (an Inbenta token with other `apis`): start over.
        pool.origin = Some((
            scheme.clone(),
            authority.clone(),
            host_value(scheme, authority),
        ));
        pool.protocol = Protocol::Unknown;
        pool.http1.clear();
        pool.http2 = None;
        pool.connecting = None;
    }
    match pool.protocol {
        Protocol::Http2 => {
            if let Some(conn) = &pool.http2 {
                // Once aged, dropped here: its requests finish on it, and
                // it closes when the last one has.
                if !conn.sender.is_closed() && !conn.aged.load(Ordering::Relaxed) {
                    return Step::Http2(conn.sender.clone(), conn.opened, conn.id);
                }
                pool.http2 = None;
            }
        }
        Protocol::Http1 => {
            if let Some(conn) = take_http1(pool) {
                let host = pool
                    .origin
                    .as_ref()
                    .map(|(_, _, host)| host.clone())
                    .unwrap_or_else(|| host_value(scheme, authority));
                return Step::Http1(conn, host);
            }
            // Each request in flight has its own connection.
            return Step::Connect(None);
        }
        Protocol::Unknown => {}
    }
    if waited {
        return Step::Connect(None);
    }
    // A closed channel: the request opening it gave up (was cancelled).
    if let Some(connecting) = pool
        .connecting
        .as_ref()
        .filter(|connecting| connecting.has_changed().is_ok())
    {
        return Step::Wait(connecting.clone());
    }
    let (done, connecting) = watch::channel(());
    pool.connecting = Some(connecting);
    Step::Connect(Some(done))
}

/// The most recently used HTTP/1.1 connection ready for a request; closed,
/// long-idle and aged ones ([`MAX_CONNECTION_AGE`]) are dropped on the way
/// (an idle one closes then; a busy one is dropped once its answer is read).
fn take_http1(pool: &mut Pool) -> Option<Http1Conn> {
    let now = tokio::time::Instant::now();
    let idle_too_long = |conn: &Http1Conn| {
        conn.sender.is_ready()
            && (now.saturating_duration_since(conn.used) >= conn.idle_limit
                || now >= conn.retire_at)
    };
    if now.saturating_duration_since(pool.swept) >= SWEEP_EVERY {
        pool.swept = now;
        pool.http1
            .retain(|conn| !conn.sender.is_closed() && !idle_too_long(conn));
    }
    let mut index = pool.http1.len();
    while index > 0 {
        index -= 1;
        let conn = &pool.http1[index];
        if conn.sender.is_closed() || idle_too_long(conn) {
            pool.http1.swap_remove(index);
        } else if conn.sender.is_ready() {
            let mut conn = pool.http1.swap_remove(index);
            conn.used = now;
            return Some(conn);
        }
    }
    None
}

/// Keep a new HTTP/1.1 connection, unless the route's upstream changed meanwhile.
fn keep_http1(pool: &mut Pool, authority: &Authority, conn: Http1Conn) {
    if pool
        .origin
        .as_ref()
        .is_some_and(|(_, current, _)| current == authority)
    {
        pool.http1.push(conn);
    }
}

/// Drop the HTTP/2 connection `id` (it closed or said GOAWAY).
fn forget_http2(pool: &mut Pool, id: u64) {
    if pool.http2.as_ref().is_some_and(|conn| conn.id == id) {
        pool.http2 = None;
    }
}

/// `Host` for `scheme://authority`: the authority without a default port.
fn host_value(scheme: &Scheme, authority: &Authority) -> HeaderValue {
    let default_port = match scheme.as_str() {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    };
    let host = match authority.port_u16() {
        Some(port) if Some(port) != default_port => authority.as_str(),
        _ => authority.host(),
    };
    HeaderValue::from_str(host).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// HTTP/1.1 form of a request: `Host` set (unless the request has one) and
/// the URI as path and query.
fn to_origin_form(request: &mut Request<UpstreamBody>, host: HeaderValue) {
    request.headers_mut().entry(HOST).or_insert(host);
    if request.uri().scheme().is_some() {
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::from(path);
    }
}

/// A request returned unsent, in the absolute form every attempt starts from.
fn to_absolute_form(
    mut request: Request<UpstreamBody>,
    scheme: &Scheme,
    authority: &Authority,
) -> Request<UpstreamBody> {
    if request.uri().scheme().is_none() {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(scheme.clone());
        parts.authority = Some(authority.clone());
        parts.path_and_query = request.uri().path_and_query().cloned();
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    request
}

/// Whether `err` happened on a pooled connection (opened before `started`,
/// the moment the request was handed to the client) that broke before any
/// response arrived: the upstream closed it while it sat idle, and the
/// request may never have been read. The client itself sends a request
/// again only when it was never written; this covers the rest.
pub fn on_stale_connection(err: &UpstreamError, started: Instant) -> bool {
    match err {
        UpstreamError::Request { source, opened } => opened.0 < started && connection_lost(source),
        _ => false,
    }
}

/// Whether the upstream refused `err`'s HTTP/2 stream (`REFUSED_STREAM`):
/// it did not process the request (RFC 9113 §8.7), so sending it again is
/// harmless whatever its method. Servers refuse streams beyond their
/// `SETTINGS_MAX_CONCURRENT_STREAMS` (lowered, or not yet known to the
/// client) and when overloaded.
pub fn refused_stream(err: &UpstreamError) -> bool {
    h2_cause(err).is_some_and(|err| {
        err.is_reset() && err.is_remote() && err.reason() == Some(h2::Reason::REFUSED_STREAM)
    })
}

/// Whether the upstream said GOAWAY before answering `err`'s request: its
/// HTTP/2 stream was above the GOAWAY's last stream id (not processed), or
/// the connection closed after the GOAWAY under a stream the upstream had
/// taken. `h2` reports both the same way, so only a request that is
/// harmless to send twice may be sent again ([`on_stale_connection`]'s rule).
pub fn went_away(err: &UpstreamError) -> bool {
    h2_cause(err).is_some_and(|err| err.is_go_away() && err.is_remote())
}

/// The `h2` error under `err`, if any.
fn h2_cause(err: &UpstreamError) -> Option<&h2::Error> {
    let UpstreamError::Request { source, .. } = err else {
        return None;
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
    while let Some(err) = cause {
        if let Some(err) = err.downcast_ref::<h2::Error>() {
            return Some(err);
        }
        cause = err.source();
    }
    None
}

/// Whether the cause of `err` is the connection going away (closed, reset,
/// ended mid-message) rather than the request, a timeout or a bad answer.
fn connection_lost(err: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind;
    let mut cause = Some(err);
    while let Some(err) = cause {
        if let Some(err) = err.downcast_ref::<hyper::Error>() {
            if err.is_incomplete_message() || err.is_canceled() || err.is_closed() {
                return true;
            }
            if err.is_user() || err.is_parse() || err.is_timeout() {
                return false;
            }
        }
        if let Some(err) = err.downcast_ref::<std::io::Error>() {
            return matches!(
                err.kind(),
                ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
                    | ErrorKind::UnexpectedEof
            );
        }
        cause = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_may_take_connect_timeout_but_never_less_than_a_resolver_retry() {
        assert_eq!(lookup_limit(Duration::from_millis(300)), LOOKUP_AT_LEAST);
        assert_eq!(lookup_limit(Duration::from_secs(5)), Duration::from_secs(6));
        assert_eq!(
            lookup_limit(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
    }
}
