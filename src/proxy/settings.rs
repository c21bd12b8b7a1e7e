//! What the `[forward_proxy]` settings mean: the listener, which host goes
//! to which credential, and the timeouts of the requests it forwards.
//! Reading the table, and the rules between its hosts and the credentials,
//! are `config`'s.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::config::value::{Listen, Timeout, secs, via};
use crate::host::ForwardHost;

/// `[forward_proxy]`: HTTP_PROXY mode.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct ForwardProxyConfig {
    /// `listen`.
    #[serde(deserialize_with = "via::<_, Listen, _>")]
    pub listen: SocketAddr,
    /// `hosts`: (host, port) → credential name; see [`ForwardHost`] for what a key matches.
    #[serde(default)]
    pub hosts: BTreeMap<ForwardHost, String>,
    /// `allow_non_loopback`.
    #[serde(default)]
    pub allow_non_loopback: bool,
    /// `connect_timeout` (default 5s).
    #[serde(default = "secs::<5>", deserialize_with = "via::<_, Timeout, _>")]
    pub connect_timeout: Duration,
    /// `request_timeout` (default 60s).
    #[serde(default = "secs::<60>", deserialize_with = "via::<_, Timeout, _>")]
    pub request_timeout: Duration,
    /// `body_timeout` (default 60s).
    #[serde(default = "secs::<60>", deserialize_with = "via::<_, Timeout, _>")]
    pub body_timeout: Duration,
}
