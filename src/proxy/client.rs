//! The pooled upstream client of a route: hyper-util's legacy client over
//! hyper-rustls, HTTP/2 when the upstream's ALPN offers it, keep-alive
//! connections reused across requests, never following redirects.

use std::time::Duration;

use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::ServerName;

use super::UpstreamBody;
use crate::config::UpstreamTls;
use crate::tls::{self, TlsError};

/// A route's pooled client.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

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

/// Build a pooled client trusting `roots`.
pub fn upstream_client(
    roots: &RootCertStore,
    options: ClientOptions<'_>,
) -> Result<UpstreamClient, TlsError> {
    let tls_config = tls::client_config(roots, options.upstream_tls)?;
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
    let connector = builder.enable_http1().enable_http2().wrap_connector(http);

    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .http2_adaptive_window(true)
        .http2_keep_alive_interval(Some(Duration::from_secs(30)))
        .build(connector))
}
