//! The token cache (`[cache]`): sealed values under keys, kept where they
//! outlive the process — the restart file ([`file`]). Values are sealed
//! with AES-256-GCM ([`crypto`]) before they leave the process; the key of
//! an entry is its associated data.
//!
//! [`TokenCache`] is what the credentials use: [`TokenCache::get`] and
//! [`TokenCache::put`] of plaintext bytes under a key. Neither ever fails
//! its caller: a store that cannot be read or written, or a value that does
//! not open (another key, a corrupt file), is as if nothing were stored;
//! each distinct problem is logged once at WARN (repeats at DEBUG). What a
//! value holds and how its key is derived are [`crate::credential`]'s
//! (`stored`).

pub mod crypto;
pub mod file;

use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use crate::config::CacheConfig;
use crate::secret::{EnvSource, SecretError};
use crypto::{KeyError, Keys};
use file::FileStore;

/// Why `[cache]` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// `encryption_key` did not resolve.
    #[error("{0}")]
    Secret(#[from] SecretError),
    /// `encryption_key` is not a usable key.
    #[error("{0}")]
    Key(#[from] KeyError),
}

/// The configured cache: keys, and where values are stored.
#[derive(Debug)]
pub struct TokenCache {
    keys: Keys,
    file: Option<FileStore>,
    /// The last problem logged at WARN.
    warned: Mutex<Option<String>>,
}

impl TokenCache {
    /// The cache `[cache]` describes, its key resolved through `env`.
    pub fn open(config: &CacheConfig, env: &dyn EnvSource) -> Result<TokenCache, CacheError> {
        let secret = match &config.encryption_key {
            Some(reference) => reference.resolve(env)?,
            None => return Err(KeyError::Length { index: 1, len: 0 }.into()),
        };
        Ok(TokenCache {
            keys: Keys::parse(&secret)?,
            file: config.file.clone().map(FileStore::new),
            warned: Mutex::new(None),
        })
    }

    /// The plaintext stored under `key`, if any opens.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let file = self.file.as_ref()?;
        let sealed = match file.get(key) {
            Ok(sealed) => sealed?,
            Err(e) => {
                self.warn(format!("{e}; ignoring it"));
                return None;
            }
        };
        match self.keys.open(key, &sealed) {
            Ok(plain) => Some(plain),
            Err(e) => {
                let path = file.path().display();
                self.warn(format!(
                    "a cached token in {path} is ignored: {e}; a new token is fetched"
                ));
                None
            }
        }
    }

    /// Store `plain` under `key` until `expires`.
    pub async fn put(&self, key: &str, plain: &[u8], expires: SystemTime) {
        let Some(file) = &self.file else { return };
        let Some(sealed) = self.keys.seal(key, plain) else {
            self.warn("the system's random source failed; the token is not cached".into());
            return;
        };
        if let Err(e) = file.put(key, sealed, expires) {
            self.warn(format!("{e}; the token is not cached"));
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
