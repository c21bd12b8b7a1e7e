//! The top level: [`Config`], which assembles every table's settings (the
//! small tables' types live with their subsystems: `[admin]` in
//! [`crate::admin::settings`], `[log]` in [`crate::telemetry::settings`],
//! `[tls]` in [`crate::tls`]), and the file's [`Text`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::error::{ConfigError, Key};
use super::route::RouteConfig;
use super::source::Source;
use crate::admin::settings::AdminConfig;
use crate::cache::settings::CacheConfig;
use crate::credential::settings::CredentialConfig;
use crate::limits::ConnLimits;
use crate::proxy::settings::ForwardProxyConfig;
use crate::secret::EnvSource;
use crate::telemetry::settings::LogConfig;
use crate::tls::TlsConfig;

/// The whole configuration of one sidekey process.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file this configuration was read from (for reload and messages).
    pub path: PathBuf,
    /// `shutdown_grace` (default 20s): how long SIGTERM/SIGINT waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// `workers` (default: the cores available): serving threads, each with its own runtime.
    pub workers: usize,
    /// `max_connections`, `max_header_bytes`, `idle_timeout`: route listeners and forward proxy.
    pub limits: ConnLimits,
    /// `[admin]`: /healthz, /readyz, /metrics. `None` when the table is absent.
    pub admin: Option<AdminConfig>,
    /// `[log]`.
    pub log: LogConfig,
    /// `[tls]`: extra trust for upstreams and token endpoints.
    pub tls: TlsConfig,
    /// `[credentials.NAME]`, by name.
    pub credentials: BTreeMap<String, CredentialConfig>,
    /// `[[routes]]`, in file order.
    pub routes: Vec<RouteConfig>,
    /// `[forward_proxy]`.
    pub forward_proxy: Option<ForwardProxyConfig>,
    /// `[cache]`: tokens kept across restarts.
    pub cache: Option<CacheConfig>,
    /// Where `{ env = … }` secret references are looked up.
    pub env: Arc<dyn EnvSource>,
    /// The file's text, so that later checks can name a key's line ([`Config::key_error`]).
    pub text: Text,
    /// What is accepted but deserves a word (a literal secret), for the caller to report.
    pub warnings: Vec<ConfigError>,
}

impl Config {
    /// An error about `key` (such as `routes[0].tls.cert`), on the line that writes it.
    pub fn key_error(&self, key: &Key, error: impl fmt::Display) -> ConfigError {
        let line = Source::parse(&self.path, &self.text.0).map(|src| src.line(key));
        ConfigError::new(&self.path, line.ok(), key, error)
    }

    /// The credential names, for messages: `a, b`, or `none`.
    pub fn defined(&self) -> String {
        let names: Vec<&str> = self.credentials.keys().map(String::as_str).collect();
        match names.is_empty() {
            true => "none".to_owned(),
            false => names.join(", "),
        }
    }
}

/// A configuration file's text; `Debug` shows only its length (it may hold a literal secret).
#[derive(Clone, Default)]
pub struct Text(pub Arc<str>);

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}
