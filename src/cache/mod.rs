//! The token cache (`[cache]`, whose settings are [`settings`]): sealed
//! values under keys, kept where they outlive the process — a Redis the
//! fleet shares ([`redis`]) and the restart file ([`file`]). Values are
//! sealed with AES-256-GCM ([`crypto`]) before they leave the process; an
//! entry's id is its associated data.
//!
//! [`TokenCache`] is what the credentials use: [`TokenCache::get`] (Redis
//! first, the file when Redis has nothing or is down), [`TokenCache::lock`]
//! (a renewal lock on Redis, so one replica renews for the fleet) and
//! [`TokenCache::publish`] (compare-and-set on Redis against what `get`
//! saw, then the file; releases the lock). None of them ever fails its
//! caller: a store that cannot be read or written, or a value that does
//! not open (another key, a corrupt file), is as if nothing were stored;
//! each distinct problem is logged once at WARN (repeats at DEBUG). The
//! file is read and written on the blocking pool, and a renewal waits for
//! it at most [`FILE_WAIT`]: a stalled disk (a slow `fsync`) must not hold
//! the thread that also answers health probes and signals. What a value
//! holds and how its id is derived are [`crate::credential`]'s (`stored`).

pub mod crypto;
pub mod file;
pub mod redis;
pub mod settings;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crate::secret::{EnvSource, SecretError};
use crypto::{KeyError, Keys, Sealed};
use file::{FileError, FileStore};
pub use redis::RedisState;
use redis::{Down, Entry, Locked, MAX_ENTRY, RedisStore};
use settings::{CacheConfig, check_redis_url};

/// Why `[cache]` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// `encryption_key` did not resolve.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// `encryption_key` is not a usable key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// `redis_url` did not resolve.
    #[error(transparent)]
    RedisUrl(SecretError),
    /// `redis_url`'s value is not a Redis URL.
    #[error("{0}")]
    NotRedis(&'static str),
    /// `redis_url` is not usable.
    #[error(transparent)]
    Redis(#[from] ::redis::RedisError),
    /// `[tls] ca_file`, for `rediss://`, cannot be read.
    #[error(transparent)]
    CaFile(#[from] crate::tls::TlsError),
}

/// The longest a renewal waits for the cache file before going on without
/// it (a write still goes on in the background).
pub const FILE_WAIT: Duration = Duration::from_secs(1);

/// A value found in the cache.
#[derive(Debug)]
pub struct Found {
    /// The value, opened.
    pub plain: Vec<u8>,
}

/// What [`TokenCache::get`] saw on Redis, for [`TokenCache::publish`] to
/// compare against: the entry as stored (`None`: none), or nothing known.
#[derive(Debug, Clone, Default)]
pub struct Seen(Option<Entry>);

/// The outcome of [`TokenCache::lock`].
#[derive(Debug)]
pub enum Lock {
    /// This replica renews; the lock's value, for its release.
    Taken(String),
    /// Another replica is renewing.
    Busy,
    /// Nothing to share with (no Redis, or Redis down): renew alone.
    Alone,
}

/// The configured cache: keys, and where values are stored.
#[derive(Debug)]
pub struct TokenCache {
    keys: Keys,
    redis: Option<RedisStore>,
    file: Option<Arc<FileStore>>,
    /// [`FILE_WAIT`], shorter in tests.
    file_wait: Duration,
    /// The last problem logged at WARN.
    warned: Mutex<Option<String>>,
}

impl TokenCache {
    /// The cache `[cache]` describes, its key resolved through `env`;
    /// `rediss://` trusts the system's roots and `ca_file` (`[tls]`).
    pub fn open(
        config: &CacheConfig,
        env: &dyn EnvSource,
        ca_file: Option<&Path>,
    ) -> Result<TokenCache, CacheError> {
        let secret = match &config.encryption_key {
            Some(reference) => reference.resolve(env)?,
            None => return Err(KeyError::Length { index: 1, len: 0 }.into()),
        };
        let keys = Keys::parse(&secret)?;
        let redis = match &config.redis_url {
            Some(reference) => {
                let url = reference.resolve(env).map_err(CacheError::RedisUrl)?;
                check_redis_url(url.expose()).map_err(CacheError::NotRedis)?;
                Some(RedisStore::new(url.expose(), &config.key_prefix, ca_file)?)
            }
            None => None,
        };
        Ok(TokenCache {
            keys,
            redis,
            file: config
                .file
                .clone()
                .map(|path| Arc::new(FileStore::new(path))),
            file_wait: FILE_WAIT,
            warned: Mutex::new(None),
        })
    }

    /// Redis's state, when one is configured.
    pub fn redis_state(&self) -> Option<RedisState> {
        self.redis.as_ref().map(RedisStore::state)
    }

    /// The value stored under `id`, if any opens, and what Redis held.
    pub async fn get(&self, id: &str) -> (Option<Found>, Seen) {
        let mut seen = Seen::default();
        if let Some(redis) = &self.redis
            && let Ok(stored) = redis.get(id).await
        {
            let sealed = match &stored {
                Entry::Absent => None,
                Entry::Value(bytes) => match serde_json::from_slice::<Sealed>(bytes) {
                    Ok(sealed) => Some(sealed),
                    Err(_) => {
                        self.warn(
                            "a cached token in Redis is ignored: it is not a sealed entry; \
                             a new token is fetched and replaces it"
                                .into(),
                        );
                        None
                    }
                },
                Entry::Oversized(len) => {
                    self.warn(format!(
                        "a cached token in Redis is ignored: it is {len} bytes, more than \
                         the {MAX_ENTRY} an entry may have; a new token is fetched and \
                         replaces it"
                    ));
                    None
                }
                Entry::Foreign(kind) => {
                    self.warn(format!(
                        "a cached token in Redis is ignored: its key holds a {kind}, not a \
                         string; a new token is fetched and replaces it"
                    ));
                    None
                }
            };
            seen = Seen(Some(stored));
            if let Some(plain) = sealed.and_then(|sealed| self.unseal(id, &sealed, "Redis")) {
                return (Some(Found { plain }), seen);
            }
        }
        let Some(file) = &self.file else {
            return (None, seen);
        };
        let sealed = match self.on_file(file, id, FileStore::get).await {
            Some(Ok(sealed)) => sealed,
            Some(Err(e)) => {
                self.warn(format!("{e}; ignoring it"));
                None
            }
            None => None,
        };
        let where_ = file.path().display().to_string();
        let plain = sealed.and_then(|sealed| self.unseal(id, &sealed, &where_));
        (plain.map(|plain| Found { plain }), seen)
    }

    /// Take the renewal lock of `id` for `ttl` (the longest a renewal takes).
    pub async fn lock(&self, id: &str, ttl: Duration) -> Lock {
        match &self.redis {
            None => Lock::Alone,
            Some(redis) => match redis.lock(id, ttl).await {
                Ok(Locked::Taken(value)) => Lock::Taken(value),
                Ok(Locked::Busy) => Lock::Busy,
                Ok(Locked::Stuck) => {
                    self.warn(format!(
                        "the renewal lock in Redis had no expiry (no replica's lock: \
                         something else wrote the key); it now expires in {} ms",
                        ttl.as_millis()
                    ));
                    Lock::Busy
                }
                Err(Down) => Lock::Alone,
            },
        }
    }

    /// Release the lock `lock` took, if it did.
    pub async fn unlock(&self, id: &str, lock: &Lock) {
        if let (Some(redis), Lock::Taken(value)) = (&self.redis, lock) {
            redis.unlock(id, value).await;
        }
    }

    /// Store `plain` under `id` until `expires`: on Redis only if the entry
    /// still holds what `seen` saw (a fleet replaces a token once), in the
    /// file always. Whether Redis took it (`None`: no Redis to ask).
    pub async fn publish(
        &self,
        id: &str,
        plain: &[u8],
        expires: SystemTime,
        seen: &Seen,
    ) -> Option<bool> {
        let Some(sealed) = self.keys.seal(id, plain) else {
            self.warn("the system's random source failed; the token is not cached".into());
            return None;
        };
        let mut shared = None;
        if let Some(redis) = &self.redis
            && let Ok(text) = serde_json::to_string(&sealed)
        {
            let ttl = expires
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            // Nothing seen (Redis was down): only where there is no entry.
            let expected = seen.0.as_ref().unwrap_or(&Entry::Absent);
            if !ttl.is_zero() {
                shared = redis.put_if(id, expected, &text, ttl).await.ok();
            }
        }
        if let Some(file) = &self.file {
            let put = move |store: &FileStore, id: &str| store.put(id, sealed, expires);
            if let Some(Err(e)) = self.on_file(file, id, put).await {
                self.warn(format!("{e}; the token is not cached"));
            }
        }
        shared
    }

    /// Run `work` on the file store in the blocking pool and wait for it at
    /// most `file_wait`; `None` (said at WARN) when it took longer or died.
    async fn on_file<T, F>(
        &self,
        file: &Arc<FileStore>,
        id: &str,
        work: F,
    ) -> Option<Result<T, FileError>>
    where
        T: Send + 'static,
        F: FnOnce(&FileStore, &str) -> Result<T, FileError> + Send + 'static,
    {
        let (store, key) = (Arc::clone(file), id.to_owned());
        let task = tokio::task::spawn_blocking(move || work(&store, &key));
        match tokio::time::timeout(self.file_wait, task).await {
            Ok(Ok(done)) => Some(done),
            Ok(Err(_)) => {
                self.warn(format!(
                    "cache file {}: its I/O failed",
                    file.path().display()
                ));
                None
            }
            Err(_) => {
                self.warn(format!(
                    "cache file {} did not answer within {} ms (a stalled disk?); going on \
                     without it",
                    file.path().display(),
                    self.file_wait.as_millis()
                ));
                None
            }
        }
    }

    /// Open `sealed`, stored `where_` under `id`; a failure is logged.
    fn unseal(&self, id: &str, sealed: &Sealed, where_: &str) -> Option<Vec<u8>> {
        match self.keys.open(id, sealed) {
            Ok(plain) => Some(plain),
            Err(e) => {
                self.warn(format!(
                    "a cached token in {where_} is ignored: {e}; a new token is fetched"
                ));
                None
            }
        }
    }

    /// Log `message` at WARN unless it is the one logged last (then DEBUG).
    fn warn(&self, message: String) {
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        if warned.as_deref() == Some(message.as_str()) {
            tracing::debug!("token cache: {message}");
        } else {
            tracing::warn!("token cache: {message}");
            *warned = Some(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Instant;

    use super::*;
    use crate::secret::Secret;

    /// 32 zero bytes.
    const KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    fn cache_in(dir: &Path, file_wait: Duration) -> TokenCache {
        TokenCache {
            keys: Keys::parse(&Secret::new(KEY)).unwrap(),
            redis: None,
            file: Some(Arc::new(FileStore::new(dir.join("tokens.json")))),
            file_wait,
            warned: Mutex::new(None),
        }
    }

    async fn cached(cache: &TokenCache) -> Option<Vec<u8>> {
        cache.get("a").await.0.map(|found| found.plain)
    }

    #[tokio::test]
    async fn a_stalled_cache_file_holds_a_renewal_back_at_most_file_wait() {
        let dir = tempfile::tempdir().unwrap();
        let wait = Duration::from_millis(200);
        let cache = cache_in(dir.path(), wait);
        let expires = SystemTime::now() + Duration::from_secs(60);
        cache.publish("a", b"one", expires, &Seen::default()).await;
        assert_eq!(cached(&cache).await.as_deref(), Some(&b"one"[..]));

        // A call stuck in the disk (a slow fsync) holds the file's turn.
        let file = Arc::clone(cache.file.as_ref().unwrap());
        let (held, is_held) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let stalled = std::thread::spawn(move || {
            let _turn = file.hold_turn();
            held.send(()).unwrap();
            let _ = released.recv();
        });
        is_held.recv().unwrap();
        let started = Instant::now();
        cache.publish("a", b"two", expires, &Seen::default()).await;
        let during = cached(&cache).await;
        let waited = started.elapsed();
        assert_eq!(during, None, "nothing is read from a stalled file");
        assert!(
            waited >= 2 * wait && waited < 2 * wait + Duration::from_secs(1),
            "a stalled file held publish + get for {waited:?}"
        );

        // Once the disk answers, the write that waited lands.
        release.send(()).unwrap();
        stalled.join().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while cached(&cache).await.as_deref() != Some(&b"two"[..]) {
            assert!(Instant::now() < deadline, "the delayed write never landed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
