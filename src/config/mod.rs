//! Typed configuration: the whole schema of DESIGN.md, loaded from TOML.
//!
//! Owns: the config types every other module reads, loading and validation
//! (errors name file, line and key), secret references and durations.
//! Parsing lives in [`load`](mod@load) (the file as written is described by
//! the private `raw` structs and turned into these types by `validate`),
//! secret references in [`secret`], durations in [`duration`]. `Debug`
//! output of anything here never shows a secret.

pub mod duration;
pub mod host;
pub mod load;
mod raw;
pub mod secret;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode, Uri};

pub use host::ForwardHost;
pub use load::{ConfigError, key_segment, load, parse};
pub use secret::{EnvSource, ProcessEnv, Secret, SecretError, SecretRef};

/// The whole configuration of one sidekey process.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file this configuration was read from (used for reload and messages).
    pub path: PathBuf,
    /// How long SIGTERM/SIGINT waits for in-flight requests (`shutdown_grace`, default 20s).
    pub shutdown_grace: Duration,
    /// What one app connection may hold, and how many there may be, across
    /// every route listener and the forward proxy (`max_connections`,
    /// `max_header_bytes`, `idle_timeout`).
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
    /// Where `{ env = … }` secret references are looked up.
    pub env: Arc<dyn EnvSource>,
    /// The 1-based line of each secret reference, file path and listen
    /// address, by dotted key (`credentials.pliant.client_id`,
    /// `routes[0].tls.cert`), so later checks can name the line.
    pub key_lines: Arc<BTreeMap<String, usize>>,
}

/// `[admin]`.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// Address of the admin listener.
    pub listen: SocketAddr,
    /// `allow_non_loopback`: permit a listen address outside loopback.
    pub allow_non_loopback: bool,
    /// Limits of the admin listener. Not configuration keys: fixed at
    /// [`ConnLimits::ADMIN`] (a few probes and a scraper need little), and
    /// only code (tests) changes them.
    pub limits: ConnLimits,
}

/// Connection limits of one kind of listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Open connections at most; at the cap the listener stops accepting and
    /// new connections wait in the kernel's listen backlog.
    pub max_connections: usize,
    /// Request line plus headers, in bytes; a larger request head is answered
    /// `431 Request Header Fields Too Large` and the connection closed.
    pub max_header_bytes: usize,
    /// How long a connection may wait for the next complete request head
    /// (idle keep-alive, or headers trickling in) before it is closed.
    pub idle_timeout: Duration,
}

impl ConnLimits {
    /// Route listeners and the forward proxy, unless configured otherwise.
    pub const PROXY: ConnLimits = ConnLimits {
        max_connections: 512,
        max_header_bytes: 64 * 1024,
        idle_timeout: Duration::from_secs(30),
    };

    /// The admin listener.
    pub const ADMIN: ConnLimits = ConnLimits {
        max_connections: 16,
        max_header_bytes: 8 * 1024,
        idle_timeout: Duration::from_secs(10),
    };
}

/// `[log]`.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// An `EnvFilter` directive such as `info` or `sidekey=debug` (default `info`).
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[tls]`.
#[derive(Clone, Debug, Default)]
pub struct TlsConfig {
    /// PEM bundle added to the system/webpki roots.
    pub ca_file: Option<PathBuf>,
}

/// `[credentials.NAME]`: how a token is obtained and which headers it adds.
#[derive(Clone, Debug, PartialEq)]
pub struct CredentialConfig {
    /// The table name (`NAME`).
    pub name: String,
    /// The type-specific part.
    pub kind: CredentialKind,
    /// `refresh_before`: renew when this much lifetime is left. `None` means the
    /// default: the smaller of 5 minutes and a quarter of the lifetime.
    pub refresh_before: Option<Duration>,
    /// `headers`: extra static headers sent with this credential.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `renew_on_status`: upstream statuses meaning "token rejected"
    /// (default `[401]`, inbenta `[401, 403]`).
    pub renew_on_status: Vec<StatusCode>,
    /// `allow_insecure_http`: permit an `http://` token endpoint.
    pub allow_insecure_http: bool,
    /// `timeout`: whole-request timeout for token endpoint calls (default 10s).
    pub timeout: Duration,
}

impl CredentialConfig {
    /// Every secret reference of this credential, with its key.
    pub fn secret_refs(&self) -> Vec<(&'static str, &SecretRef)> {
        match &self.kind {
            CredentialKind::Inbenta(inbenta) => {
                let flow = match &inbenta.key {
                    InbentaKey::Secret(r) => ("secret", r),
                    InbentaKey::DomainKey(r) => ("domain_key", r),
                };
                let mut refs = vec![("api_key", &inbenta.api_key), flow];
                refs.extend(inbenta.oauth_token.as_ref().map(|r| ("oauth_token", r)));
                refs
            }
            CredentialKind::OAuth2(oauth2) => vec![
                ("client_id", &oauth2.client_id),
                ("client_secret", &oauth2.client_secret),
            ],
            CredentialKind::Static(fixed) => vec![("token", &fixed.token)],
        }
    }

    /// Names of the environment variables this credential reads.
    pub fn env_vars(&self) -> Vec<&str> {
        self.secret_refs()
            .into_iter()
            .filter_map(|(_, r)| match r {
                SecretRef::Env(name) => Some(name.as_str()),
                SecretRef::File(_) | SecretRef::Literal(_) => None,
            })
            .collect()
    }
}

/// The type-specific part of a credential (`type = "…"`).
#[derive(Clone, Debug, PartialEq)]
pub enum CredentialKind {
    /// `type = "inbenta"`.
    Inbenta(InbentaConfig),
    /// `type = "oauth2"`.
    OAuth2(OAuth2Config),
    /// `type = "static"`.
    Static(StaticConfig),
}

/// `type = "inbenta"`.
#[derive(Clone, Debug, PartialEq)]
pub struct InbentaConfig {
    /// `api_key`, sent as `x-inbenta-key` to the auth API and every upstream request.
    pub api_key: SecretRef,
    /// API Secret flow (`secret`) or Domain Key flow (`domain_key`); exactly one is set.
    pub key: InbentaKey,
    /// `origin`: the `Origin` header sent with the domain key.
    pub origin: Option<HeaderValue>,
    /// `oauth_token`: adds `x-oauth-token: Bearer …` to auth requests; re-read on every auth call.
    pub oauth_token: Option<SecretRef>,
    /// `auth_url` (default `https://api.inbenta.io/v1`); `/auth` and `/refreshToken` live below it.
    pub auth_url: Uri,
}

/// Which Inbenta flow a credential uses.
#[derive(Clone, Debug, PartialEq)]
pub enum InbentaKey {
    /// API Secret flow: `{"secret": …}`.
    Secret(SecretRef),
    /// Domain Key flow: the domain key sent in place of the secret.
    DomainKey(SecretRef),
}

/// `type = "oauth2"`: RFC 6749 §4.4 client credentials grant.
#[derive(Clone, Debug, PartialEq)]
pub struct OAuth2Config {
    /// `token_url`.
    pub token_url: Uri,
    /// `client_id`.
    pub client_id: SecretRef,
    /// `client_secret`.
    pub client_secret: SecretRef,
    /// `audience` (Auth0).
    pub audience: Option<String>,
    /// `scope`.
    pub scope: Option<String>,
    /// `client_auth` (default basic).
    pub client_auth: ClientAuth,
    /// `body` (default form).
    pub body: BodyFormat,
    /// `default_ttl` (default 1h): lifetime when neither `expires_in` nor a JWT `exp` says.
    pub default_ttl: Duration,
}

/// How the client authenticates at the token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with RFC 6749 §2.3.1 form-urlencoded id and secret.
    Basic,
    /// `client_id` and `client_secret` in the request body.
    Post,
}

/// Encoding of the token request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/x-www-form-urlencoded` (RFC 6749).
    Form,
    /// `application/json` (Auth0 style).
    Json,
}

/// `type = "static"`: a fixed token, re-read when its file changes.
#[derive(Clone, Debug, PartialEq)]
pub struct StaticConfig {
    /// `token`.
    pub token: SecretRef,
    /// `header` (default `authorization`).
    pub header: HeaderName,
    /// `scheme` (default `Bearer`; empty sends the raw value).
    pub scheme: String,
}

/// `[[routes]]`: where the app's requests go.
#[derive(Clone, Debug)]
pub struct RouteConfig {
    /// `name`: label for metrics and logs (default `LISTEN` + `PATH_PREFIX`).
    pub name: String,
    /// `listen`.
    pub listen: SocketAddr,
    /// `upstream` or `inbenta_api`.
    pub upstream: Upstream,
    /// `credential`: the name of a `[credentials.NAME]` table.
    pub credential: String,
    /// `path_prefix` (default `/`), always starting with `/`.
    pub path_prefix: String,
    /// `strip_prefix` (default false).
    pub strip_prefix: bool,
    /// `headers`: static headers for this route.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `connect_timeout` (default 5s).
    pub connect_timeout: Duration,
    /// `request_timeout` (default 60s): until the upstream's response head arrives.
    pub request_timeout: Duration,
    /// `body_timeout` (default 60s): longest pause between two pieces of a
    /// body, the app's request body or the upstream's response body.
    pub body_timeout: Duration,
    /// `tls`: serve HTTPS on this listener.
    pub tls: Option<ListenerTls>,
    /// `upstream_tls`: client certificate / server name for the upstream.
    pub upstream_tls: Option<UpstreamTls>,
    /// `allow_insecure_http`: permit an `http://` upstream.
    pub allow_insecure_http: bool,
    /// `allow_non_loopback`: permit a listen address outside loopback.
    pub allow_non_loopback: bool,
}

/// Where a route forwards to.
#[derive(Clone, Debug)]
pub enum Upstream {
    /// `upstream = "https://host[:port][/base]"`.
    Url(Uri),
    /// `inbenta_api = "chatbot"`: base URL from the credential's latest `apis` map.
    InbentaApi(String),
}

/// `tls = { cert, key }` on a route: serve HTTPS.
#[derive(Clone, Debug)]
pub struct ListenerTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `upstream_tls = { client_cert, client_key, server_name }`.
#[derive(Clone, Debug, Default)]
pub struct UpstreamTls {
    /// PEM client certificate chain (mTLS).
    pub client_cert: Option<PathBuf>,
    /// PEM client private key (mTLS).
    pub client_key: Option<PathBuf>,
    /// SNI / verification name instead of the upstream's host.
    pub server_name: Option<String>,
}

/// `[forward_proxy]`: HTTP_PROXY mode.
#[derive(Clone, Debug)]
pub struct ForwardProxyConfig {
    /// `listen`.
    pub listen: SocketAddr,
    /// `hosts`: (host, port) → credential name. Only these get credentials;
    /// see [`ForwardHost`] for what a key matches.
    pub hosts: BTreeMap<ForwardHost, String>,
    /// `allow_non_loopback`.
    pub allow_non_loopback: bool,
    /// `connect_timeout` (default 5s).
    pub connect_timeout: Duration,
    /// `request_timeout` (default 60s).
    pub request_timeout: Duration,
    /// `body_timeout` (default 60s).
    pub body_timeout: Duration,
}
