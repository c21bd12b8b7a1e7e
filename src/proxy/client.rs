//! The pooled upstream client of a route: hyper-util's legacy client over
//! hyper-rustls, HTTP/2 when the upstream's ALPN offers it, keep-alive
//! connections reused across requests, never following redirects.
//!
//! Idle connections are kept [`POOL_IDLE_TIMEOUT`], shorter than the idle
//! timeouts of the servers and load balancers APIs usually sit behind, so
//! that the proxy, not the upstream, usually closes an idle connection.
//! Every connection is stamped with the moment it was opened ([`Opened`]),
//! so that a failed request can tell a connection taken from the pool from
//! one opened for it (`forward` sends a request again only after the former).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tower_service::Service;

use super::UpstreamBody;
use crate::config::UpstreamTls;
use crate::tls::TlsError;

/// How long an idle pooled connection is kept. Below the default idle
/// timeouts of AWS's ALB (60 s), nginx (75 s) and IIS (120 s): against those, the pool drops a connection before the
/// upstream can close it under a request. Upstreams with shorter keep-alive
/// timeouts are covered by `forward`'s replay of idempotent requests.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A route's pooled client.
pub type UpstreamClient = Client<Stamping<HttpsConnector<HttpConnector>>, UpstreamBody>;

/// Settings of one upstream client.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions<'a> {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Permit `http://` (tests on loopback only).
    pub allow_insecure_http: bool,
    /// Client certificate and server-name override.
    pub upstream_tls: Option<&'a UpstreamTls>,
}

/// Build a pooled client speaking TLS as `tls_config` says (trust, and a
/// client certificate for mTLS).
pub fn upstream_client(
    tls_config: ClientConfig,
    options: ClientOptions<'_>,
) -> Result<UpstreamClient, TlsError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(options.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));

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
    let connector = Stamping(builder.enable_http1().enable_http2().wrap_connector(http));

    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(256)
        .http2_adaptive_window(true)
        .http2_keep_alive_interval(Some(Duration::from_secs(30)))
        .build(connector))
}

/// Whether `err` happened on a pooled connection (opened before `started`,
/// the moment the request was handed to the client) that broke before any
/// response arrived: the upstream closed it while it sat idle, and the
/// request may never have been read. hyper-util itself sends a request
/// again only when it was never written; this covers the rest.
pub fn on_stale_connection(err: &hyper_util::client::legacy::Error, started: Instant) -> bool {
    if err.is_connect() {
        return false;
    }
    let Some(info) = err.connect_info() else {
        return false;
    };
    let mut extras = http::Extensions::new();
    info.get_extras(&mut extras);
    let pooled = extras
        .get::<Opened>()
        .is_some_and(|opened| opened.0 < started);
    pooled && connection_lost(err)
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

/// When a connection was opened; found in the `connect_info` of a failed
/// request's error (`Connected::get_extras`).
#[derive(Clone, Copy, Debug)]
pub struct Opened(pub Instant);

/// A connector whose connections carry [`Opened`].
#[derive(Clone, Debug)]
pub struct Stamping<C>(C);

impl<C> Service<Uri> for Stamping<C>
where
    C: Service<Uri>,
    C::Future: Send + 'static,
{
    type Response = Stamped<C::Response>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            Ok(Stamped {
                io,
                opened: Instant::now(),
            })
        })
    }
}

/// A connection and the moment it was opened.
#[derive(Debug)]
pub struct Stamped<T> {
    io: T,
    opened: Instant,
}

impl<T: Connection> Connection for Stamped<T> {
    fn connected(&self) -> Connected {
        self.io.connected().extra(Opened(self.opened))
    }
}

impl<T: Read + Unpin> Read for Stamped<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Stamped<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}
