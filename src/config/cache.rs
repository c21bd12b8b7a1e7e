//! Reading `[cache]`: paths resolved against the configuration file, a
//! literal key warned about, a missing key refused. What the settings mean
//! is [`crate::cache::settings`]'; what is stored and how, [`crate::cache`]'s.

use super::error::Key;
use super::source::Source;
use crate::cache::settings::CacheConfig;
use crate::secret::SecretRef;

/// Read `[cache]` when written: a relative `file` against the configuration
/// directory, a literal key with a warning, a missing key refused.
pub(super) fn read(src: &Source<'_>) -> Option<CacheConfig> {
    let table = Key::new("cache");
    let mut cache: CacheConfig = src.read(&table)?;
    cache.file = cache.file.map(|file| src.file(&file));
    if let Some(SecretRef::File(path)) = &cache.redis_url {
        cache.redis_url = Some(SecretRef::File(src.file(path)));
    }
    // A store written but unreadable has said why.
    if !src.written(&table, "file") && !src.written(&table, "redis_url") {
        let message = "[cache] without `redis_url` or `file` stores nothing";
        src.warn(&table, message);
    }
    let key = table.then("encryption_key");
    let Some(secret) = cache.encryption_key.take() else {
        let message = "missing key `encryption_key` (tokens are stored encrypted)";
        src.fail(&key, message);
        return None;
    };
    cache.encryption_key = Some(src.secret(&key, secret));
    Some(cache)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::fixture::{BASE, env, err, ok};
    use crate::secret::SecretRef;

    #[test]
    fn a_store_that_cannot_be_read_is_not_also_said_to_be_missing() {
        let text = format!(
            "{BASE}\n[cache]\nredis_url = \"redis://cache:99999\"\nencryption_key = {{ env = \"K\" }}\n"
        );
        let dir = crate::config::fixture::temp_dir();
        let file = dir.path().join("sidekey.toml");
        std::fs::write(&file, text).unwrap();
        let (config, errors) = crate::config::read(&file, env());
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(errors[0].message.contains("port"), "{}", errors[0]);
        let warnings = config.expect("read as far as it could be").warnings;
        assert!(warnings.is_empty(), "{warnings:#?}");
    }

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
