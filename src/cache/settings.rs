//! What the `[cache]` settings mean: where tokens outlive the process — a
//! Redis shared by the fleet, an encrypted restart file — and the key they
//! are encrypted with. Reading the table from the file is `config`'s
//! (`config/cache.rs`).

use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::config::value::{File, via_some};
use crate::secret::SecretRef;

/// `[cache]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct CacheConfig {
    /// `file`: the restart cache (mode 0600, replaced atomically).
    #[serde(default, deserialize_with = "via_some::<_, File, _>")]
    pub file: Option<PathBuf>,
    /// `redis_url`: `redis://` or `rediss://`, standalone or a cluster
    /// node, shared by the fleet; written, or a secret reference (a URL
    /// with a password).
    #[serde(default, deserialize_with = "redis_url")]
    pub redis_url: Option<SecretRef>,
    /// `key_prefix` of every Redis key (default `sidekey:`).
    #[serde(default = "prefix")]
    pub key_prefix: String,
    /// `encryption_key`: 32 bytes, base64 (several, comma-separated: the
    /// first encrypts, every one decrypts). Required.
    pub encryption_key: Option<SecretRef>,
}

fn prefix() -> String {
    "sidekey:".to_owned()
}

/// Whether `url` is a `redis://` or `rediss://` URL (never repeating it).
pub fn check_redis_url(url: &str) -> Result<(), &'static str> {
    match url.split_once("://") {
        Some(("redis" | "rediss", rest)) if !rest.is_empty() => Ok(()),
        _ => Err("expected a redis:// or rediss:// URL"),
    }
}

fn redis_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretRef>, D::Error> {
    let url = SecretRef::deserialize(d)?;
    if let SecretRef::Literal(url) = &url {
        check_redis_url(url.expose()).map_err(de::Error::custom)?;
    }
    Ok(Some(url))
}
