//! What the `[admin]` settings mean: where the admin listener binds and its
//! fixed connection limits. Reading the table is `config`'s.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::config::value::{Listen, via};
use crate::limits::ConnLimits;

/// `[admin]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct AdminConfig {
    /// Address of the admin listener.
    #[serde(deserialize_with = "via::<_, Listen, _>")]
    pub listen: SocketAddr,
    /// `allow_non_loopback`: permit a listen address outside loopback.
    #[serde(default)]
    pub allow_non_loopback: bool,
    /// Not keys: [`ConnLimits::ADMIN`]; only code (tests) changes them.
    #[serde(skip, default = "admin_limits")]
    pub limits: ConnLimits,
}

fn admin_limits() -> ConnLimits {
    ConnLimits::ADMIN
}
