//! All credentials of a configuration ([`Credentials`]): one supervised
//! engine per `[credentials.NAME]`, shared with the next configuration when
//! a reload leaves its settings unchanged, stopped when no configuration
//! uses it any more; and [`obtain_once`], one token without an engine (for
//! `sidekey token`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use rustls::RootCertStore;
use tokio::task::AbortHandle;

use super::any::AnyProvider;
use super::engine;
use super::handle::{CredentialHandle, EngineSettings};
use super::provider::{FetchError, Provider, Token};
use super::report::RenewalReason;
use super::settings::CredentialConfig;
use super::stored::TokenStore;
use crate::cache::settings::CacheConfig;
use crate::cache::{RedisState, TokenCache};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::rotating::{self, Trust};
use crate::secret::{EnvSource, SecretRef};
use crate::tls::TlsError;

/// One running credential: the handle requests read, its renewal task, and
/// what it was started from. Shared between configurations by a reload that
/// leaves the credential's settings unchanged; the task stops when the last
/// configuration using it is gone.
struct Engine {
    handle: Arc<CredentialHandle>,
    task: AbortHandle,
    /// `None` for engines started by [`Credentials::spawn`] (never taken over).
    origin: Option<Origin>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The inputs an engine was built from; equal inputs mean a reload may keep it.
struct Origin {
    config: CredentialConfig,
    /// `[cache]`, whose entry the engine reads and writes.
    cache: Option<CacheConfig>,
    env: Arc<dyn EnvSource>,
    /// What its token client trusts (kept current while `ca_file` rotates).
    trust: Arc<Trust>,
}

impl Origin {
    /// Whether an engine started from `self` serves `config` (read through
    /// `env`, trusting `trust`) exactly as a new one would: same settings,
    /// same `[cache]`, same values of the environment variables it reads,
    /// same trust (as the roots now in force on both sides).
    fn serves(
        &self,
        config: &CredentialConfig,
        cache: Option<&CacheConfig>,
        env: &dyn EnvSource,
        trust: &Trust,
    ) -> bool {
        let same_value = |(_, secret): &(&str, &SecretRef)| match secret {
            SecretRef::Env(name) => self.env.var(name) == env.var(name),
            SecretRef::File(_) | SecretRef::Literal(_) => true,
        };
        let cache_refs = cache.iter();
        let mut cache_refs =
            cache_refs.flat_map(|cache| cache.encryption_key.iter().chain(&cache.redis_url));
        self.config == *config
            && self.cache.as_ref() == cache
            && self.trust.current().roots.roots == trust.current().roots.roots
            && config.secret_refs().iter().all(same_value)
            && cache_refs.all(|secret| same_value(&("cache", secret)))
    }
}

/// All credentials of a configuration, each with its renewal task running.
/// Dropping it stops the tasks that no other configuration shares.
#[derive(Default)]
pub struct Credentials {
    engines: BTreeMap<String, Arc<Engine>>,
    /// Names of the engines taken over from a previous configuration.
    taken_over: BTreeSet<String>,
    /// The `[cache]` the engines use, if any.
    cache: Option<Arc<TokenCache>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.engines
                    .iter()
                    .map(|(name, engine)| (name, &engine.handle)),
            )
            .finish()
    }
}

impl Credentials {
    /// Build one provider per `[credentials.NAME]` and start its renewal
    /// task; each fetches its first token at once. Must be called inside a
    /// tokio runtime. Fails only when a token endpoint client cannot be built.
    pub fn start(
        config: &Config,
        roots: &RootCertStore,
        metrics: &Metrics,
    ) -> Result<Credentials, TlsError> {
        let trust = rotating::fixed_trust(&Arc::new(roots.clone()))?;
        Credentials::start_reusing(config, &trust, metrics, None)
    }

    /// Like [`Credentials::start`], but every credential of `previous` whose
    /// settings, environment values and trust are unchanged is taken over as
    /// it runs (same handle, same token, no token request); only new or
    /// changed credentials start an engine, whose first token request has
    /// the reason `reload`. [`Credentials::started`] names those.
    pub fn start_reusing(
        config: &Config,
        trust: &Arc<Trust>,
        metrics: &Metrics,
        previous: Option<&Credentials>,
    ) -> Result<Credentials, TlsError> {
        let mut credentials = Credentials::default();
        // Opened when an engine starts; engines taken over keep theirs.
        let mut cache = None;
        for (name, credential) in &config.credentials {
            let reusable = previous
                .and_then(|previous| previous.engines.get(name))
                .filter(|engine| {
                    engine.origin.as_ref().is_some_and(|origin| {
                        origin.serves(credential, config.cache.as_ref(), &*config.env, trust)
                    })
                });
            if let Some(engine) = reusable {
                credentials.engines.insert(name.clone(), Arc::clone(engine));
                credentials.taken_over.insert(name.clone());
                continue;
            }
            let provider = AnyProvider::from_config(credential, trust, Arc::clone(&config.env))?;
            let origin = Origin {
                config: credential.clone(),
                cache: config.cache.clone(),
                env: Arc::clone(&config.env),
                trust: Arc::clone(trust),
            };
            let mut settings = EngineSettings::from_config(credential);
            let cache = cache.get_or_insert_with(|| open_cache(config));
            settings.store = (cache.as_ref())
                .and_then(|cache| TokenStore::new(cache, credential, &*config.env))
                .map(Arc::new);
            if previous.is_some() {
                settings.first_reason = RenewalReason::Reload;
            }
            credentials.start_engine(name, provider, settings, metrics, Some(origin));
        }
        credentials.cache = match cache {
            Some(opened) => opened,
            None => previous.and_then(|previous| previous.cache.clone()),
        }
        .filter(|_| config.cache.is_some());
        Ok(credentials)
    }

    /// Start a renewal task for `provider` under `name` (replacing and
    /// stopping any credential of that name). Must be called inside a tokio
    /// runtime.
    pub fn spawn<P: Provider>(
        &mut self,
        name: &str,
        provider: P,
        settings: EngineSettings,
        metrics: &Metrics,
    ) -> Arc<CredentialHandle> {
        self.start_engine(name, provider, settings, metrics, None)
    }

    fn start_engine<P: Provider>(
        &mut self,
        name: &str,
        provider: P,
        settings: EngineSettings,
        metrics: &Metrics,
        origin: Option<Origin>,
    ) -> Arc<CredentialHandle> {
        let mut strip = provider.header_names();
        strip.extend(settings.headers.iter().map(|(name, _)| name.clone()));
        let handle = Arc::new(CredentialHandle::new(
            name,
            settings.kind,
            strip,
            &settings.renew_on_status,
            provider.can_change(),
            metrics,
        ));
        let task = tokio::spawn(engine::supervise(
            provider,
            Arc::clone(&handle),
            settings,
            metrics.clone(),
        ));
        let engine = Arc::new(Engine {
            handle: Arc::clone(&handle),
            task: task.abort_handle(),
            origin,
        });
        self.taken_over.remove(name);
        // Replacing an engine of the same name drops (and so stops) the old one
        // unless another configuration still shares it.
        self.engines.insert(name.to_owned(), engine);
        handle
    }

    /// Names of the credentials this configuration started itself (not
    /// taken over from the previous one): the ones a reload must see obtain
    /// a first token before it takes effect.
    pub fn started(&self) -> impl Iterator<Item = &str> {
        self.engines
            .keys()
            .filter(|name| !self.taken_over.contains(*name))
            .map(String::as_str)
    }

    /// Wait until every credential this configuration [`started`](Self::started)
    /// has obtained its first token, at most `limit` in all; the first one
    /// that fails (or is still waiting at the deadline) is the error.
    pub async fn first_tokens(&self, limit: std::time::Duration) -> Result<(), NotReady> {
        let deadline = tokio::time::Instant::now() + limit;
        for name in self.started() {
            let Some(handle) = self.get(name) else {
                continue;
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Err(unavailable) = handle.wait_for_token(left).await {
                let reason = if tokio::time::Instant::now() >= deadline {
                    let limit = limit.as_secs_f64();
                    format!("no token within {limit} s: {}", unavailable.reason)
                } else {
                    unavailable.reason
                };
                let credential = name.to_owned();
                return Err(NotReady { credential, reason });
            }
        }
        Ok(())
    }

    /// The state of the `[cache]`'s Redis, when one is configured.
    pub fn redis_state(&self) -> Option<RedisState> {
        self.cache.as_ref()?.redis_state()
    }

    /// The handle of credential `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<CredentialHandle>> {
        self.engines.get(name).map(|engine| &engine.handle)
    }

    /// Every handle, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<CredentialHandle>)> {
        self.engines
            .iter()
            .map(|(name, engine)| (name.as_str(), &engine.handle))
    }
}

/// A credential new to a configuration (or with changed settings) that did
/// not obtain its first token, so the configuration is not taken.
#[derive(Debug, thiserror::Error)]
#[error("credential {credential} could not obtain a token: {reason}")]
pub struct NotReady {
    /// The credential's name.
    pub credential: String,
    /// Why (the token request's failure, or that it did not finish in time).
    pub reason: String,
}

/// The `[cache]` of `config`, if any and usable. Preflight checked its key,
/// so a failure here (a variable changed since) only loses the cache.
fn open_cache(config: &Config) -> Option<Arc<TokenCache>> {
    let cache = config.cache.as_ref()?;
    match TokenCache::open(cache, &*config.env, config.tls.ca_file.as_deref()) {
        Ok(cache) => Some(Arc::new(cache)),
        Err(e) => {
            tracing::error!("[cache] is not used: {e}");
            None
        }
    }
}

/// Why `sidekey token` could not obtain a token.
#[derive(Debug, thiserror::Error)]
pub enum ObtainError {
    /// No `[credentials.NAME]` of that name.
    #[error("no credential named `{name}` in the configuration (defined: {defined})")]
    UnknownCredential {
        /// The name asked for.
        name: String,
        /// The names the configuration defines.
        defined: String,
    },
    /// The token endpoint client could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The provider failed.
    #[error("credential {credential}: {source}")]
    Fetch {
        /// The credential name.
        credential: String,
        /// What went wrong.
        source: FetchError,
    },
}

/// Obtain one token for credential `name`, outside any engine (for
/// `sidekey token`). Returns the token and the credential type
/// (`"inbenta"`, `"oauth2"` or `"static"`).
pub async fn obtain_once(
    config: &Config,
    name: &str,
    roots: &RootCertStore,
) -> Result<(Token, &'static str), ObtainError> {
    let credential =
        config
            .credentials
            .get(name)
            .ok_or_else(|| ObtainError::UnknownCredential {
                name: name.to_owned(),
                defined: config.defined(),
            })?;
    let trust = rotating::fixed_trust(&Arc::new(roots.clone()))?;
    let provider = AnyProvider::from_config(credential, &trust, Arc::clone(&config.env))?;
    let token = provider
        .fetch(None)
        .await
        .map_err(|source| ObtainError::Fetch {
            credential: name.to_owned(),
            source,
        })?;
    Ok((token, provider.type_name()))
}
