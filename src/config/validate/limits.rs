//! The top-level connection limits: `max_connections`, `max_header_bytes`
//! and `idle_timeout`, with their defaults ([`ConnLimits::PROXY`]) and
//! bounds.

use toml::Spanned;

use super::{Cx, Result};
use crate::config::ConnLimits;
use crate::config::raw::RawConfig;

/// Fewest bytes `max_header_bytes` may be: a request line and a handful of headers.
const MIN_HEADER_BYTES: i64 = 1024;
/// Most bytes `max_header_bytes` may be: beyond this one connection alone
/// could hold megabytes before sidekey sees a request.
const MAX_HEADER_BYTES: i64 = 1024 * 1024;
/// Most connections `max_connections` may allow (far more than a sidecar's
/// app opens; each costs memory and file descriptors).
const MAX_CONNECTIONS: i64 = 1_000_000;

impl Cx<'_> {
    pub(super) fn limits(&self, raw: &RawConfig) -> Result<ConnLimits> {
        let default = ConnLimits::PROXY;
        Ok(ConnLimits {
            max_connections: self.bounded(
                "max_connections",
                &raw.max_connections,
                (1, MAX_CONNECTIONS),
                default.max_connections,
            )?,
            max_header_bytes: self.bounded(
                "max_header_bytes",
                &raw.max_header_bytes,
                (MIN_HEADER_BYTES, MAX_HEADER_BYTES),
                default.max_header_bytes,
            )?,
            idle_timeout: self.positive_duration(
                "idle_timeout",
                &raw.idle_timeout,
                default.idle_timeout,
            )?,
        })
    }

    /// An integer within `low..=high`, or `default` when the key is absent.
    fn bounded(
        &self,
        key: &str,
        value: &Option<Spanned<i64>>,
        (low, high): (i64, i64),
        default: usize,
    ) -> Result<usize> {
        let Some(value) = value else {
            return Ok(default);
        };
        let number = *value.get_ref();
        if !(low..=high).contains(&number) {
            return Err(self.error(
                key,
                &value.span(),
                format!("{number} is out of range (use {low} to {high})"),
            ));
        }
        usize::try_from(number).map_err(|_| self.error(key, &value.span(), "out of range"))
    }
}
