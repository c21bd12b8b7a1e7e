//! Credentials: obtaining tokens in the background and publishing, per
//! credential, the headers every request must carry.
//!
//! Owns: the [`CredentialHandle`] the proxy reads on each request (one
//! `ArcSwap` load of prebuilt header values), the [`Provider`] trait each
//! credential type implements (`inbenta`, `oauth2`, `static`, dispatched
//! through [`AnyProvider`]), and the renewal engine ([`engine`]) that runs one
//! supervised task per credential: first token before readiness, renewal
//! before expiry, backoff on failure ([`timing`] has the exact rules), and
//! renewal on demand when an upstream rejects a token ([`rejection`] decides
//! when a rejection is not about the token). Error text from token
//! endpoints is redacted of every secret sent ([`redact`]).
//!
//! Entry points: [`Credentials::start`] (one engine per `[credentials.NAME]`,
//! stopped when the [`Credentials`] is dropped), [`Credentials::spawn`] (an
//! engine for any provider, used by tests), and [`obtain_once`] (one token
//! without an engine, for `sidekey token`).
//!
//! A request's view of a credential: [`CredentialHandle::current`] gives the
//! [`Published`] headers and their `generation`, or — when there is no valid
//! token — [`CredentialHandle::wait_for_token`] waits (bounded) for the first
//! token or for a renewal about to happen. When the upstream answers a
//! status in `renew_on_status` ([`CredentialHandle::renews_on`]), the proxy
//! calls [`CredentialHandle::report_rejected`] with that generation (one
//! renewal however many requests report it, none when fresh tokens are
//! rejected too) and, unless the rejection is ignored,
//! [`CredentialHandle::wait_for_renewal`] to retry with the next token; that
//! wait ends as soon as the renewal attempt ends, new token or not.

pub mod engine;
pub mod inbenta;
pub mod oauth2;
pub mod redact;
pub mod rejection;
pub mod static_token;
pub mod timing;
pub mod token_client;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue, StatusCode, Uri};
use rustls::RootCertStore;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::config::{Config, CredentialConfig, CredentialKind, EnvSource, Secret, SecretError};
use crate::metrics::{Metrics, RejectionCounters};
use crate::tls::TlsError;

use self::inbenta::InbentaProvider;
use self::oauth2::OAuth2Provider;
use self::rejection::{Decision, Rejections};
use self::static_token::StaticProvider;
use self::token_client::TokenClient;

/// Inbenta product name (`chatbot`, `search`, …) → base URL, from the auth response's `apis`.
pub type ApiMap = HashMap<String, Uri>;

/// A token as a provider obtained it.
#[derive(Clone, Debug)]
pub struct Token {
    /// The token itself (Inbenta `accessToken`, OAuth `access_token`, the static value).
    pub value: Secret,
    /// How long it is valid from the moment its request was sent; `None` =
    /// no expiry (static). The engine clamps it to a year.
    pub lifetime: Option<Duration>,
    /// The headers every proxied request carries with this token, values
    /// marked sensitive: `authorization: Bearer …`, `x-inbenta-key`, …
    /// (not the credential's static `headers`; the engine adds those).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Inbenta product base URLs; `None` for other types.
    pub apis: Option<Arc<ApiMap>>,
}

/// Why a token could not be obtained. Messages never contain secrets.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The token endpoint refused the credentials (4xx other than 429):
    /// retried with backoff, but logged as a configuration problem.
    #[error("token endpoint refused the credentials ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// One readable line from the error body.
        message: String,
    },
    /// Network failure, timeout, 5xx, 429 or an unreadable answer.
    #[error("{message}")]
    Transient {
        /// What happened.
        message: String,
        /// `Retry-After` from a 429/503 answer.
        retry_after: Option<Duration>,
    },
    /// A secret reference could not be resolved.
    #[error("{0}")]
    Secret(Arc<SecretError>),
}

impl From<SecretError> for FetchError {
    fn from(err: SecretError) -> Self {
        FetchError::Secret(Arc::new(err))
    }
}

/// One credential type: how to obtain a token and which headers it sets.
pub trait Provider: Send + Sync + 'static {
    /// Obtain a token. `current` is the token now held while it is still
    /// valid (Inbenta renews it through `/refreshToken`), else `None`.
    fn fetch(
        &self,
        current: Option<&Token>,
    ) -> impl Future<Output = Result<Token, FetchError>> + Send;

    /// Names of the headers this provider sets; the app's own values for
    /// these are removed before injecting.
    fn header_names(&self) -> Vec<HeaderName>;

    /// How often to call `fetch` again when the token has no lifetime (a
    /// static token read from a file); `None` = never.
    fn poll_interval(&self) -> Option<Duration> {
        None
    }
}

/// What the proxy injects for one credential at one moment. Built once per
/// token and shared by every request.
#[derive(Debug)]
pub struct Published {
    /// Every header to set (token headers + credential static headers), values marked sensitive.
    pub headers: Box<[(HeaderName, HeaderValue)]>,
    /// When the token stops being handed out (monotonic clock): a safety
    /// margin before the issuer's expiry; `None` = never.
    pub expires_at: Option<Instant>,
    /// Increases with every newly published token; identifies "the token a request saw".
    pub generation: u64,
    /// Inbenta product base URLs of this token.
    pub apis: Option<Arc<ApiMap>>,
    /// Obtained by a renewal that an upstream's rejection triggered.
    pub renewed_on_rejection: bool,
}

/// What [`CredentialHandle::report_rejected`] did about a rejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// A renewal of the rejected token was requested (now or before):
    /// [`CredentialHandle::wait_for_renewal`] gives its outcome.
    Renewing,
    /// The rejected token was already replaced: retry with the current one.
    Replaced,
    /// Fresh tokens are rejected too, so the rejection is not about the
    /// token: no renewal; pass the answer on.
    Ignored,
}

/// Why a credential cannot serve a request right now (→ 503 `credential_unavailable`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("credential {credential} has no valid token: {reason}")]
pub struct Unavailable {
    /// The credential name.
    pub credential: Arc<str>,
    /// Why (never obtained yet, expired while renewals fail, last error).
    pub reason: String,
}

/// Readiness of one credential, for `/readyz` and metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum CredentialStatus {
    /// A valid token is held; `expires_in` is `None` for tokens without expiry.
    Ready {
        /// Time left until expiry.
        expires_in: Option<Duration>,
    },
    /// No valid token.
    Unavailable {
        /// Why.
        reason: String,
    },
}

/// Settings of one credential's renewal engine, from its configuration.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// `refresh_before`; `None` = the smaller of 5 minutes and a quarter of the lifetime.
    pub refresh_before: Option<Duration>,
    /// The credential's static `headers`, sent with every token.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `renew_on_status`.
    pub renew_on_status: Vec<StatusCode>,
    /// Longest one `fetch` may take before the engine gives up on it and
    /// retries (a safety net; providers time out on each request first).
    pub fetch_timeout: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            refresh_before: None,
            headers: Vec::new(),
            renew_on_status: vec![StatusCode::UNAUTHORIZED],
            fetch_timeout: Duration::from_secs(30),
        }
    }
}

impl EngineSettings {
    /// The settings `[credentials.NAME]` describes. The fetch limit leaves
    /// each token-endpoint request of one fetch its whole `timeout` (Inbenta
    /// may make two: `/refreshToken`, then `/auth`), plus 5 s.
    pub fn from_config(config: &CredentialConfig) -> Self {
        let requests = match config.kind {
            CredentialKind::Inbenta(_) => 2,
            CredentialKind::OAuth2(_) | CredentialKind::Static(_) => 1,
        };
        EngineSettings {
            refresh_before: config.refresh_before,
            headers: config.headers.clone(),
            renew_on_status: config.renew_on_status.clone(),
            fetch_timeout: config
                .timeout
                .saturating_mul(requests)
                .saturating_add(Duration::from_secs(5)),
        }
    }
}

/// The proxy's view of one credential. Cheap to read from any number of
/// requests at once; the credential's engine task is the only writer.
pub struct CredentialHandle {
    name: Arc<str>,
    /// What the engine published last (token headers, last error).
    state: ArcSwap<engine::State>,
    strip_names: Box<[HeaderName]>,
    renew_on: Box<[StatusCode]>,
    /// Which rejections renew the token.
    rejections: Mutex<Rejections>,
    /// Wakes the engine when a token is rejected.
    wake: Notify,
    /// Generation of the latest published token (0 = none yet).
    generation: watch::Sender<u64>,
    /// Highest rejected generation whose renewal attempt has ended.
    settled: watch::Sender<u64>,
    /// Woken after every token request, successful or not.
    attempted: Notify,
    /// `sidekey_token_rejections_total` of this credential.
    counters: RejectionCounters,
}

impl fmt::Debug for CredentialHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialHandle")
            .field("name", &self.name)
            .field("generation", &*self.generation.borrow())
            .field("status", &self.status())
            .finish()
    }
}

impl CredentialHandle {
    fn new(
        name: &str,
        strip_names: Vec<HeaderName>,
        renew_on: &[StatusCode],
        metrics: &Metrics,
    ) -> Self {
        let mut unique: Vec<HeaderName> = Vec::with_capacity(strip_names.len());
        for name in strip_names {
            if !unique.contains(&name) {
                unique.push(name);
            }
        }
        let name: Arc<str> = Arc::from(name);
        CredentialHandle {
            counters: metrics.rejection_counters(&name),
            name,
            state: ArcSwap::from_pointee(engine::State::default()),
            strip_names: unique.into_boxed_slice(),
            renew_on: renew_on.into(),
            rejections: Mutex::new(Rejections::default()),
            wake: Notify::new(),
            generation: watch::Sender::new(0),
            settled: watch::Sender::new(0),
            attempted: Notify::new(),
        }
    }

    /// The credential's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The headers to inject now, or why there is no valid token. One
    /// `ArcSwap` load and a clock read: no locks, no formatting.
    pub fn current(&self) -> Result<Arc<Published>, Unavailable> {
        let state = self.state.load();
        if let Some(published) = &state.published
            && published
                .expires_at
                .is_none_or(|expires_at| Instant::now() < expires_at)
        {
            return Ok(Arc::clone(published));
        }
        Err(Unavailable {
            credential: Arc::clone(&self.name),
            reason: state.reason(),
        })
    }

    /// Header names the proxy strips from the app's request before injecting
    /// (provider headers and the credential's static headers).
    pub fn strip_names(&self) -> &[HeaderName] {
        &self.strip_names
    }

    /// Whether `status` from the upstream means "token rejected" (`renew_on_status`).
    pub fn renews_on(&self, status: StatusCode) -> bool {
        self.renew_on.contains(&status)
    }

    /// An upstream rejected the token of `generation`. The first rejection
    /// of a token renews it (once, however many requests report it); a
    /// rejection of a token that a rejection-triggered renewal produced is
    /// ignored for a cool-down ([`rejection`]). Counted in
    /// `sidekey_token_rejections_total`.
    pub fn report_rejected(&self, generation: u64) -> Rejection {
        let state = self.state.load();
        let Some(published) = &state.published else {
            return Rejection::Ignored;
        };
        if published.generation != generation {
            self.counters.renewed();
            return Rejection::Replaced;
        }
        let decision = self
            .rejections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .decide(generation, published.renewed_on_rejection, Instant::now());
        match decision {
            Decision::Renew => {
                self.counters.renewed();
                self.wake.notify_one();
                Rejection::Renewing
            }
            Decision::Join => {
                self.counters.renewed();
                Rejection::Renewing
            }
            Decision::Ignore { first } => {
                self.counters.ignored();
                if first {
                    tracing::warn!(
                        credential = %self.name,
                        cool_down_s = rejection::COOL_DOWN.as_secs(),
                        "a freshly renewed token was rejected too: the upstream's rejections \
                         are not about the token; not renewing on rejection for a while"
                    );
                }
                Rejection::Ignored
            }
        }
    }

    /// The highest generation whose rejection requested a renewal.
    fn renewing(&self) -> u64 {
        self.rejections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .renewing()
    }

    /// When there is no valid token: wait, at most `timeout`, for one that
    /// is about to come, then the current state.
    ///
    /// - Before the first token: until the first token request has ended
    ///   (at once when it already failed, so a broken endpoint costs no
    ///   extra wait).
    /// - After the token stopped being handed out: only within
    ///   [`timing::EXPIRY_WAIT`] of that moment, and only while a token
    ///   request is in flight or due before then (it keeps waiting across
    ///   failed attempts in that window). Later, or during a longer outage,
    ///   it returns at once.
    pub async fn wait_for_token(&self, timeout: Duration) -> Result<Arc<Published>, Unavailable> {
        let limit = deadline_after(timeout);
        loop {
            let attempted = self.attempted.notified();
            tokio::pin!(attempted);
            attempted.as_mut().enable();
            let state = self.state.load();
            let now = Instant::now();
            let deadline = match &state.published {
                Some(published) if published.expires_at.is_none_or(|at| now < at) => break,
                None if state.last_error.is_some() => break,
                None => limit,
                Some(published) => {
                    let Some(grace) = published
                        .expires_at
                        .and_then(|at| at.checked_add(timing::EXPIRY_WAIT))
                    else {
                        break;
                    };
                    let deadline = limit.min(grace);
                    let coming =
                        state.in_flight || state.next_attempt.is_some_and(|at| at <= deadline);
                    if now >= deadline || !coming {
                        break;
                    }
                    deadline
                }
            };
            drop(state);
            if tokio::time::timeout_at(deadline, attempted).await.is_err() {
                break;
            }
        }
        self.current()
    }

    /// Wait (up to `timeout`) for a token newer than `generation`; then the
    /// current state, whether or not a newer token arrived.
    pub async fn wait_for_newer(
        &self,
        generation: u64,
        timeout: Duration,
    ) -> Result<Arc<Published>, Unavailable> {
        let mut published = self.generation.subscribe();
        // On timeout the current state is the answer; the sender lives as long as `self`.
        let _ = tokio::time::timeout(timeout, published.wait_for(|&g| g > generation)).await;
        self.current()
    }

    /// After [`CredentialHandle::report_rejected`]: wait (up to `timeout`)
    /// until the renewal of the token of `generation` has ended — a newer
    /// token was published, or the attempt failed or yielded the same token
    /// (a static token) — then the current state.
    pub async fn wait_for_renewal(
        &self,
        generation: u64,
        timeout: Duration,
    ) -> Result<Arc<Published>, Unavailable> {
        let mut published = self.generation.subscribe();
        let mut settled = self.settled.subscribe();
        let ended = async {
            loop {
                if *published.borrow_and_update() > generation
                    || *settled.borrow_and_update() >= generation
                {
                    return;
                }
                // Both senders live as long as `self`.
                tokio::select! {
                    _ = published.changed() => {}
                    _ = settled.changed() => {}
                }
            }
        };
        let _ = tokio::time::timeout(timeout, ended).await;
        self.current()
    }

    /// Readiness now.
    pub fn status(&self) -> CredentialStatus {
        let state = self.state.load();
        let now = Instant::now();
        match &state.published {
            Some(published) if published.expires_at.is_none_or(|at| now < at) => {
                CredentialStatus::Ready {
                    expires_in: published
                        .expires_at
                        .map(|at| at.saturating_duration_since(now)),
                }
            }
            _ => CredentialStatus::Unavailable {
                reason: state.reason(),
            },
        }
    }
}

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
    env: Arc<dyn EnvSource>,
    roots: Arc<RootCertStore>,
}

impl Origin {
    /// Whether an engine started from `self` serves `config` (read through
    /// `env`, trusting `roots`) exactly as a new one would: same settings,
    /// same values of the environment variables it reads, same trust.
    fn serves(
        &self,
        config: &CredentialConfig,
        env: &dyn EnvSource,
        roots: &RootCertStore,
    ) -> bool {
        self.config == *config
            && self.roots.roots == roots.roots
            && config
                .env_vars()
                .iter()
                .all(|name| self.env.var(name) == env.var(name))
    }
}

/// All credentials of a configuration, each with its renewal task running.
/// Dropping it stops the tasks that no other configuration shares.
#[derive(Default)]
pub struct Credentials {
    engines: BTreeMap<String, Arc<Engine>>,
    /// Names of the engines taken over from a previous configuration.
    taken_over: BTreeSet<String>,
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
        Credentials::start_reusing(config, roots, metrics, None)
    }

    /// Like [`Credentials::start`], but every credential of `previous` whose
    /// settings, environment values and trust are unchanged is taken over as
    /// it runs (same handle, same token, no token request); only new or
    /// changed credentials start an engine. [`Credentials::started`] names
    /// those.
    pub fn start_reusing(
        config: &Config,
        roots: &RootCertStore,
        metrics: &Metrics,
        previous: Option<&Credentials>,
    ) -> Result<Credentials, TlsError> {
        let shared_roots = Arc::new(roots.clone());
        let mut credentials = Credentials::default();
        for (name, credential) in &config.credentials {
            let reusable = previous
                .and_then(|previous| previous.engines.get(name))
                .filter(|engine| {
                    engine
                        .origin
                        .as_ref()
                        .is_some_and(|origin| origin.serves(credential, &*config.env, roots))
                });
            if let Some(engine) = reusable {
                credentials.engines.insert(name.clone(), Arc::clone(engine));
                credentials.taken_over.insert(name.clone());
                continue;
            }
            let provider = AnyProvider::from_config(credential, roots, Arc::clone(&config.env))?;
            let origin = Origin {
                config: credential.clone(),
                env: Arc::clone(&config.env),
                roots: Arc::clone(&shared_roots),
            };
            credentials.start_engine(
                name,
                provider,
                EngineSettings::from_config(credential),
                metrics,
                Some(origin),
            );
        }
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
            strip,
            &settings.renew_on_status,
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

/// `now + timeout`, or a year from now when that overflows.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(token_client::MAX_LIFETIME))
        .unwrap_or(now)
}

/// Why `sidekey token` could not obtain a token.
#[derive(Debug, thiserror::Error)]
pub enum ObtainError {
    /// No `[credentials.NAME]` of that name.
    #[error("no credential named `{0}` in the configuration")]
    UnknownCredential(String),
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
    let credential = config
        .credentials
        .get(name)
        .ok_or_else(|| ObtainError::UnknownCredential(name.to_owned()))?;
    let provider = AnyProvider::from_config(credential, roots, Arc::clone(&config.env))?;
    let token = provider
        .fetch(None)
        .await
        .map_err(|source| ObtainError::Fetch {
            credential: name.to_owned(),
            source,
        })?;
    Ok((token, provider.type_name()))
}

/// Any configured provider: static dispatch over the credential types.
#[derive(Debug)]
pub enum AnyProvider {
    /// `type = "inbenta"`.
    Inbenta(InbentaProvider),
    /// `type = "oauth2"`.
    OAuth2(OAuth2Provider),
    /// `type = "static"`.
    Static(StaticProvider),
}

impl AnyProvider {
    /// The provider `config` describes, with its own token endpoint client.
    pub fn from_config(
        config: &CredentialConfig,
        roots: &RootCertStore,
        env: Arc<dyn EnvSource>,
    ) -> Result<Self, TlsError> {
        let client = || TokenClient::new(roots, config.timeout, config.allow_insecure_http);
        Ok(match &config.kind {
            CredentialKind::Inbenta(inbenta) => {
                AnyProvider::Inbenta(InbentaProvider::new(inbenta, client()?, env))
            }
            CredentialKind::OAuth2(oauth2) => {
                AnyProvider::OAuth2(OAuth2Provider::new(oauth2, client()?, env))
            }
            CredentialKind::Static(fixed) => AnyProvider::Static(StaticProvider::new(fixed, env)),
        })
    }

    /// The `type` as written in the configuration.
    pub fn type_name(&self) -> &'static str {
        match self {
            AnyProvider::Inbenta(_) => "inbenta",
            AnyProvider::OAuth2(_) => "oauth2",
            AnyProvider::Static(_) => "static",
        }
    }
}

impl Provider for AnyProvider {
    async fn fetch(&self, current: Option<&Token>) -> Result<Token, FetchError> {
        match self {
            AnyProvider::Inbenta(p) => p.fetch(current).await,
            AnyProvider::OAuth2(p) => p.fetch(current).await,
            AnyProvider::Static(p) => p.fetch(current).await,
        }
    }

    fn header_names(&self) -> Vec<HeaderName> {
        match self {
            AnyProvider::Inbenta(p) => p.header_names(),
            AnyProvider::OAuth2(p) => p.header_names(),
            AnyProvider::Static(p) => p.header_names(),
        }
    }

    fn poll_interval(&self) -> Option<Duration> {
        match self {
            AnyProvider::Inbenta(p) => p.poll_interval(),
            AnyProvider::OAuth2(p) => p.poll_interval(),
            AnyProvider::Static(p) => p.poll_interval(),
        }
    }
}
