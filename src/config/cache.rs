//! `[cache]`: where tokens outlive the process — a Redis shared by the
//! fleet, an encrypted restart file — and the key they are encrypted with.
//! What is stored and how is [`crate::cache`]'s.

use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use super::error::Key;
use super::source::Source;
use super::value::{File, via_some};
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

/// Read `[cache]` when written: a relative `file` against the configuration
/// directory, a literal key with a warning, a missing key refused.
pub(super) fn read(src: &Source<'_>) -> Option<CacheConfig> {
    let table = Key::new("cache");
    let mut cache: CacheConfig = src.read(&table)?;
    cache.file = cache.file.map(|file| src.file(&file));
    if let Some(SecretRef::File(path)) = &cache.redis_url {
        cache.redis_url = Some(SecretRef::File(src.file(path)));
    }
    if cache.file.is_none() && cache.redis_url.is_none() {
        let message = "[cache] without `redis_url` or `file` stores nothing";
        src.warn(&table, message);
    }
    let key = table.then("encryption_key");
    cache.encryption_key = match cache.encryption_key {
        Some(secret) => Some(src.secret(&key, secret)),
        None => {
            src.fail(
                &key,
                "missing key `encryption_key` (tokens are stored encrypted)",
            );
            return None;
        }
    };
    Some(cache)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::fixture::{BASE, err, ok};
    use crate::secret::SecretRef;

    #[test]
    fn file_resolves_against_the_config_directory_and_the_key_is_required() {
        let text =
            format!("{BASE}\n[cache]\nfile = \"tokens\"\nencryption_key = {{ env = \"K\" }}\n");
        let cache = ok(&text).cache.expect("[cache]");
        assert_eq!(
            cache.file.as_deref(),
            Some(Path::new("/etc/sidekey/tokens"))
        );
        assert_eq!(cache.encryption_key, Some(SecretRef::Env("K".into())));
        let keyless = err(&format!("{BASE}\n[cache]\nfile = \"tokens\"\n"));
        assert_eq!(keyless.key.as_str(), "cache.encryption_key");
        assert!(keyless.to_string().contains("missing key"), "{keyless}");
        let unknown = err(&format!(
            "{BASE}\n[cache]\nencryption_key = \"k\"\nfiel = \"x\"\n"
        ));
        assert!(unknown.to_string().contains("`file`"), "{unknown}");
        assert!(ok(BASE).cache.is_none());
        let empty = ok(&format!(
            "{BASE}\n[cache]\nencryption_key = {{ env = \"K\" }}\n"
        ));
        let warning = empty.warnings.first().expect("a warning").to_string();
        assert!(warning.contains("stores nothing"), "{warning}");
    }

    #[test]
    fn redis_url_is_redis_or_rediss_and_never_shown() {
        let with = |url: &str| {
            format!("{BASE}\n[cache]\nredis_url = \"{url}\"\nencryption_key = {{ env = \"K\" }}\n")
        };
        let cache = ok(&with("rediss://:hunter2@redis.example:6380/0"))
            .cache
            .expect("[cache]");
        assert_eq!(cache.key_prefix, "sidekey:");
        let Some(SecretRef::Literal(url)) = &cache.redis_url else {
            panic!("a literal redis_url: {:?}", cache.redis_url);
        };
        assert_eq!(url.expose(), "rediss://:hunter2@redis.example:6380/0");
        assert!(cache.redis_url.is_some() && ok(&with("redis://r:6379")).warnings.is_empty());
        let referenced = format!(
            "{BASE}\n[cache]\nredis_url = {{ file = \"redis-url\" }}\nencryption_key = {{ env = \"K\" }}\n"
        );
        let referenced = ok(&referenced).cache.expect("[cache]").redis_url;
        assert_eq!(
            referenced,
            Some(SecretRef::File("/etc/sidekey/redis-url".into()))
        );
        assert!(!format!("{cache:?}").contains("hunter2"));
        let http = err(&with("https://:hunter2@redis.example"));
        assert_eq!(http.key.as_str(), "cache.redis_url");
        assert!(http.to_string().contains("redis:// or rediss://"), "{http}");
        assert!(!http.to_string().contains("hunter2"), "{http}");
    }
}
