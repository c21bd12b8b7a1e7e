//! The proxy's view of one credential, [`CredentialHandle`]: what to
//! inject now (one `ArcSwap` load of prebuilt [`Published`] headers), why
//! there is no valid token ([`Unavailable`]), the waits a request may make
//! for a token about to come, and the reports of rejected tokens that the
//! engine renews on. The engine task is its only writer.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue, StatusCode};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::provider::ApiMap;
use super::rejection::{self, Decision, Rejections};
use super::report::{CredentialReport, CredentialState, LastAttempt, RenewalReason};
use super::settings::{CredentialConfig, CredentialKind};
use super::stored::TokenStore;
use super::suspend::WallClock;
use super::timing;
use crate::metrics::{Metrics, RejectionCounters};

/// What the proxy injects for one credential at one moment. Built once per
/// token and shared by every request.
#[derive(Debug)]
pub struct Published {
    /// Every header to set (token headers + credential static headers), values marked sensitive.
    pub headers: Box<[(HeaderName, HeaderValue)]>,
    /// When the token stops being handed out (monotonic clock): a safety
    /// margin before the issuer's expiry; `None` = never.
    pub expires_at: Option<Instant>,
    /// The same moment on the wall clock, which keeps counting while the
    /// machine is suspended ([`super::suspend`]); `None` = never.
    pub wall_expiry: Option<SystemTime>,
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
    /// The credential's `type`, for people (`custom` by default).
    pub kind: &'static str,
    /// Why the engine's first token request is made: [`RenewalReason::Startup`],
    /// or [`RenewalReason::Reload`] for an engine a reload started.
    pub first_reason: RenewalReason,
    /// The credential's entry in the `[cache]`, if any.
    pub store: Option<Arc<TokenStore>>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            refresh_before: None,
            headers: Vec::new(),
            renew_on_status: vec![StatusCode::UNAUTHORIZED],
            fetch_timeout: Duration::from_secs(30),
            kind: "custom",
            first_reason: RenewalReason::Startup,
            store: None,
        }
    }
}

impl EngineSettings {
    /// The settings `[credentials.NAME]` describes. The fetch limit leaves
    /// each token-endpoint request of one fetch its whole `timeout` (Inbenta
    /// may make two: `/refreshToken`, then `/auth`), plus 5 s.
    pub fn from_config(config: &CredentialConfig) -> Self {
        let (requests, kind) = match config.kind {
            CredentialKind::Inbenta(_) => (2, "inbenta"),
            CredentialKind::OAuth2(_) => (1, "oauth2"),
            CredentialKind::Static(_) => (1, "static"),
        };
        EngineSettings {
            refresh_before: config.refresh_before,
            headers: config.headers.clone(),
            renew_on_status: config.renew_on_status.clone(),
            fetch_timeout: config
                .timeout
                .saturating_mul(requests)
                .saturating_add(Duration::from_secs(5)),
            kind,
            first_reason: RenewalReason::Startup,
            store: None,
        }
    }
}

/// The proxy's view of one credential. Cheap to read from any number of
/// requests at once; the credential's engine task is the only writer.
pub struct CredentialHandle {
    pub(super) name: Arc<str>,
    /// The credential's `type`, for people.
    kind: &'static str,
    /// What the engine published last (token headers, last error).
    pub(super) state: ArcSwap<State>,
    strip_names: Box<[HeaderName]>,
    renew_on: Box<[StatusCode]>,
    /// A rejection can bring a different token (see [`Self::retries_on_rejection`]).
    retries: bool,
    /// Which rejections renew the token.
    rejections: Mutex<Rejections>,
    /// Wakes the engine when a token is rejected.
    pub(super) wake: Notify,
    /// Generation of the latest published token (0 = none yet).
    pub(super) generation: watch::Sender<u64>,
    /// Highest rejected generation whose renewal attempt has ended.
    pub(super) settled: watch::Sender<u64>,
    /// Woken after every token request, successful or not.
    pub(super) attempted: Notify,
    /// The wall clock this credential's tokens also expire on.
    pub(super) wall: WallClock,
    /// Wakes the engine when a request finds the token over on the wall
    /// clock while the monotonic clock still counts it valid: the machine
    /// was suspended, and the engine's timer slept through it.
    pub(super) overslept: Notify,
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
    pub(super) fn new(
        name: &str,
        kind: &'static str,
        strip_names: Vec<HeaderName>,
        renew_on: &[StatusCode],
        token_can_change: bool,
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
            kind,
            state: ArcSwap::from_pointee(State::default()),
            strip_names: unique.into_boxed_slice(),
            renew_on: renew_on.into(),
            retries: token_can_change && !renew_on.is_empty(),
            rejections: Mutex::new(Rejections::default()),
            wake: Notify::new(),
            generation: watch::Sender::new(0),
            settled: watch::Sender::new(0),
            attempted: Notify::new(),
            wall: WallClock::default(),
            overslept: Notify::new(),
        }
    }

    /// The credential's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The headers to inject now, or why there is no valid token. One
    /// `ArcSwap` load and two clock reads: no locks, no formatting.
    pub fn current(&self) -> Result<Arc<Published>, Unavailable> {
        let state = self.state.load();
        if let Some(published) = &state.published
            && self.usable(published)
        {
            return Ok(Arc::clone(published));
        }
        Err(Unavailable {
            credential: Arc::clone(&self.name),
            reason: state.reason(),
        })
    }

    /// Whether `published` may be handed out now: both its monotonic and its
    /// wall-clock end lie ahead. Over on the wall clock only, the machine
    /// slept: the engine is woken to renew.
    fn usable(&self, published: &Published) -> bool {
        let Some(expires_at) = published.expires_at else {
            return true;
        };
        if Instant::now() >= expires_at {
            return false;
        }
        if published.wall_expiry.is_none_or(|at| self.wall.now() < at) {
            return true;
        }
        self.overslept.notify_one();
        false
    }

    /// The wall clock this credential's tokens also expire on (a test makes
    /// it skip ahead to act out a suspend).
    #[doc(hidden)]
    pub fn wall_clock(&self) -> &WallClock {
        &self.wall
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

    /// Whether a request whose token is rejected can be retried with a
    /// different one: some status renews the token (`renew_on_status`), and
    /// a renewal can bring a different token (not so for a fixed `static`
    /// token). When not, requests are not kept for a retry.
    pub fn retries_on_rejection(&self) -> bool {
        self.retries
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

    /// Whether the renewal a rejection of token `generation` asked for is
    /// still under way: a request sent with that token now would most
    /// likely be rejected too.
    pub fn renewal_pending(&self, generation: u64) -> bool {
        self.renewing() >= generation && *self.settled.borrow() < generation
    }

    /// The highest generation whose rejection requested a renewal.
    pub(super) fn renewing(&self) -> u64 {
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
    /// - After a suspend the token outlived (over on the wall clock only):
    ///   the engine is woken, and the wait is as above, counted from then.
    pub async fn wait_for_token(&self, timeout: Duration) -> Result<Arc<Published>, Unavailable> {
        let limit = crate::deadline::after(Instant::now(), timeout);
        // When this request found the token over on the wall clock alone.
        let mut overslept_at: Option<Instant> = None;
        loop {
            let attempted = self.attempted.notified();
            tokio::pin!(attempted);
            attempted.as_mut().enable();
            let state = self.state.load();
            let now = Instant::now();
            let deadline = match &state.published {
                Some(published) if self.usable(published) => break,
                None if state.last_error.is_some() => break,
                None => limit,
                Some(published) => {
                    let Some(mut expired) = published.expires_at else {
                        break;
                    };
                    // Over on the wall clock alone: the machine slept, the
                    // engine was just woken to renew, and the wait counts
                    // from now.
                    let woken = now < expired && overslept_at.is_none();
                    if now < expired {
                        expired = *overslept_at.get_or_insert(now);
                    }
                    let Some(grace) = expired.checked_add(timing::EXPIRY_WAIT) else {
                        break;
                    };
                    let deadline = limit.min(grace);
                    let coming = woken
                        || state.in_flight
                        || state.next_attempt.is_some_and(|at| at <= deadline);
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
            Some(published) if self.usable(published) => CredentialStatus::Ready {
                expires_in: published
                    .expires_at
                    .map(|at| at.saturating_duration_since(now)),
            },
            _ => CredentialStatus::Unavailable {
                reason: state.reason(),
            },
        }
    }
}

impl CredentialHandle {
    /// Everything an operator may know about the credential now (never the
    /// token): for the status page and `/readyz`.
    pub fn report(&self) -> CredentialReport {
        let state = self.state.load();
        let now = Instant::now();
        let valid = state
            .published
            .as_ref()
            .filter(|published| self.usable(published));
        let credential_state = match valid {
            None => CredentialState::Unavailable,
            Some(_) if state.in_flight => CredentialState::Renewing,
            Some(_) if state.last_error.is_some() => CredentialState::Retrying,
            Some(_) => CredentialState::Ready,
        };
        CredentialReport {
            name: self.name.to_string(),
            kind: self.kind,
            state: credential_state,
            expires_in: valid
                .and_then(|published| published.expires_at)
                .map(|at| at.saturating_duration_since(now)),
            lifetime: valid.and(state.lifetime),
            generation: *self.generation.borrow(),
            last_attempt: state.last_attempt.clone(),
            last_success: state.last_success,
            last_error: state.last_error.as_deref().map(str::to_owned),
            in_flight: state.in_flight,
            failures: state.failures,
            failures_total: state.failures_total,
            next_attempt_in: state
                .next_attempt
                .filter(|_| !state.in_flight)
                .map(|at| at.saturating_duration_since(now)),
            unavailable_reason: valid.is_none().then(|| state.reason()),
        }
    }
}

/// What the handle reads: the published token (if any), the last failure
/// and when the next attempt comes, and for people the last attempt and
/// the failure counts.
#[derive(Clone, Default)]
pub(super) struct State {
    /// The latest token's headers, kept after expiry so the reason can say when.
    pub(super) published: Option<Arc<Published>>,
    /// The last failure since the last success (never contains a secret).
    pub(super) last_error: Option<Box<str>>,
    /// A token request is in flight.
    pub(super) in_flight: bool,
    /// When the next token request is due (`None`: none scheduled).
    pub(super) next_attempt: Option<Instant>,
    /// The issuer's lifetime of `published` (`None`: no expiry).
    pub(super) lifetime: Option<Duration>,
    /// The last token request that ended.
    pub(super) last_attempt: Option<LastAttempt>,
    /// When the last successful token request ended.
    pub(super) last_success: Option<SystemTime>,
    /// Failed token requests in a row.
    pub(super) failures: u32,
    /// Failed token requests since the engine started.
    pub(super) failures_total: u64,
}

impl State {
    /// Why there is no valid token (called only when there is none).
    pub(super) fn reason(&self) -> String {
        let last = self.last_error.as_deref();
        match (&self.published, last) {
            (None, None) => "never obtained: first token request in progress".to_owned(),
            (None, Some(error)) => format!("never obtained: {error}"),
            (Some(_), last) => {
                let when = self
                    .published
                    .as_ref()
                    .and_then(|published| published.wall_expiry)
                    .map(httpdate::fmt_http_date)
                    .unwrap_or_else(|| "an unknown time".to_owned());
                match last {
                    Some(error) => format!("expired at {when}; last renewal failed: {error}"),
                    None => format!("expired at {when}; renewal in progress"),
                }
            }
        }
    }

    /// A copy with the same token, error and history.
    pub(super) fn with_attempt(&self, in_flight: bool, next_attempt: Option<Instant>) -> State {
        State {
            in_flight,
            next_attempt,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn reasons_say_what_happened() {
        let state = State::default();
        assert_eq!(
            state.reason(),
            "never obtained: first token request in progress"
        );
        let state = State {
            last_error: Some("connection refused".into()),
            ..State::default()
        };
        assert_eq!(state.reason(), "never obtained: connection refused");
        let state = State {
            published: Some(Arc::new(Published {
                headers: Box::new([]),
                expires_at: None,
                wall_expiry: Some(UNIX_EPOCH),
                generation: 1,
                apis: None,
                renewed_on_rejection: false,
            })),
            last_error: Some("HTTP 500".into()),
            ..State::default()
        };
        assert_eq!(
            state.reason(),
            "expired at Thu, 01 Jan 1970 00:00:00 GMT; last renewal failed: HTTP 500"
        );
    }
}
