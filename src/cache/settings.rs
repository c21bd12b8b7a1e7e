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

/// Whether `url` is a `redis://` or `rediss://` URL with an ASCII host
/// name, a port (if written) in 1-65535 and a database (if written) that is
/// a number, saying which part is wrong (never repeating the URL, which may
/// hold a password). sidekey builds `url` without Unicode host support (see
/// `idna_adapter` in Cargo.toml), so an internationalized name must be
/// written in its `xn--` form.
pub fn check_redis_url(url: &str) -> Result<(), &'static str> {
    let Some(("redis" | "rediss", rest)) = url.split_once("://") else {
        return Err("expected a redis:// or rediss:// URL");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_and_port = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = match host_and_port.rfind(['.', ':', ']']) {
        Some(at) if host_and_port[at..].starts_with(':') => {
            (&host_and_port[..at], Some(&host_and_port[at + 1..]))
        }
        _ => (host_and_port, None),
    };
    let database = rest[authority.len()..]
        .split(['?', '#'])
        .next()
        .unwrap_or_default();
    let database = database.strip_prefix('/').unwrap_or(database);
    if host.is_empty() {
        Err("expected a redis:// or rediss:// URL")
    } else if !host.is_ascii() {
        Err(
            "the host name must be ASCII: write an internationalized name in its xn-- (punycode) form",
        )
    } else if port.is_some_and(|port| !matches!(port.parse::<u16>(), Ok(1..))) {
        Err("the port must be a number from 1 to 65535")
    } else if !database.bytes().all(|b| b.is_ascii_digit()) {
        Err("the database after the host must be a number, e.g. redis://cache:6379/0")
    } else {
        Ok(())
    }
}

fn redis_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretRef>, D::Error> {
    let url = SecretRef::deserialize(d)?;
    if let SecretRef::Literal(url) = &url {
        check_redis_url(url.expose()).map_err(de::Error::custom)?;
    }
    Ok(Some(url))
}

#[cfg(test)]
mod tests {
    use super::check_redis_url;

    #[test]
    fn a_redis_url_needs_the_scheme_a_host_and_ascii_host_names() {
        for url in [
            "redis://127.0.0.1:6379/0",
            "rediss://:pässword@cache.example:6380",
            "redis://xn--bcher-kva.example",
        ] {
            assert_eq!(check_redis_url(url), Ok(()), "{url}");
        }
        for url in ["http://cache:6379", "redis://", "redis:///0", "cache:6379"] {
            assert_eq!(
                check_redis_url(url),
                Err("expected a redis:// or rediss:// URL"),
                "{url}"
            );
        }
        for url in [
            "redis://cache:99999/0",
            "redis://:pw@cache:0",
            "rediss://[::1]:x",
        ] {
            let e = check_redis_url(url);
            assert_eq!(e, Err("the port must be a number from 1 to 65535"), "{url}");
        }
        for url in ["redis://cache:6379/zero", "redis://cache/0/1"] {
            let e = check_redis_url(url);
            assert!(e.is_err_and(|e| e.contains("database")), "{url}: {e:?}");
        }
        for url in [
            "redis://[::1]:6379/2",
            "redis://cache:6379/",
            "redis://c?protocol=resp3",
        ] {
            assert_eq!(check_redis_url(url), Ok(()), "{url}");
        }
        let idn = check_redis_url("redis://bücher.example:6379/0");
        assert!(idn.is_err_and(|e| e.contains("xn--")), "{idn:?}");
    }
}
