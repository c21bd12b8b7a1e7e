//! Listeners and lifecycle: binds every route listener, the forward proxy and
//! the admin endpoint, starts the credential engines, and drains in-flight
//! requests on shutdown.

use std::net::SocketAddr;

use crate::config::Config;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration could not be turned into running parts.
    #[error("{0}")]
    Config(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A running proxy.
#[derive(Debug)]
pub struct Handle {
    route_addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    forward_proxy_addr: Option<SocketAddr>,
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
}

/// Start everything `config` describes and return once every listener is bound.
pub async fn serve(config: Config) -> Result<Handle, ServeError> {
    let _ = config;
    todo!("proxy core")
}
