//! Typed configuration: the whole schema of DESIGN.md, loaded from TOML.
//!
//! Each type reads itself from the file (serde, unknown keys refused) and
//! checks its values as it reads them (`value`); the loader ([`parse`],
//! [`load`]) then applies the rules between keys and tables. Every refusal
//! is a [`ConfigError`] naming file, line and key. Credentials live in
//! `credential`, routes and the forward proxy in `route`, the top level and
//! small tables in `top`; forward-proxy host keys are [`crate::host`]'s,
//! secret references [`crate::secret`]'s. `Debug` output of anything here
//! never shows a secret.

mod credential;
mod error;
#[cfg(test)]
pub(crate) mod fixture;
mod load;
mod route;
mod rules;
mod source;
mod top;
mod value;

pub use credential::{
    BodyFormat, ClientAuth, CredentialConfig, CredentialKind, InbentaConfig, InbentaKey,
    OAuth2Config, StaticConfig,
};
pub use error::{ConfigError, Key};
pub use load::{load, parse};
pub use route::{ForwardProxyConfig, ListenerTls, RouteConfig, Upstream, UpstreamTls};
pub use top::{AdminConfig, Config, ConnLimits, LogConfig, LogFormat, Text, TlsConfig};
pub use value::parse_duration;
