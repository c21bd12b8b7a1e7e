//! The renewal engine: one task per credential that obtains a token,
//! publishes its headers, renews it before expiry, retries failures, and
//! renews on demand when an upstream rejects the token. A supervisor
//! restarts the task if it ever panics.
//!
//! Contract:
//! - The first token request starts at once; at most one token request of a
//!   credential is in flight, ever.
//! - A token's life counts from the instant its request was sent, clamped to
//!   a year; it is handed out until a safety margin before that expiry, on
//!   the monotonic and on the wall clock ([`super::suspend`]): a request
//!   that finds it over on the wall clock alone wakes the engine, which
//!   then renews at once if its next step is due by the wall clock. When
//!   to renew, how long to back off, and how long requests wait on an
//!   expired token are [`super::timing`]'s rules.
//! - A failed renewal keeps the old token serving until it stops being
//!   handed out; every failure is counted in
//!   `sidekey_token_refresh_total{outcome="failure"}`, logged as a WARN (at
//!   most one every 30 s while the message stays the same, DEBUG otherwise),
//!   and its message becomes the credential's reason while no valid token
//!   is held. Messages never contain secrets (see [`super::redact`]).
//! - A rejection reported through the handle wakes the engine for one
//!   renewal of that token ([`super::rejection`] decides whether to); the
//!   token being replaced is not offered to the provider (no Inbenta
//!   `/refreshToken` of a rejected token). When that attempt ends, whatever
//!   its outcome, waiting requests are released.
//! - Every token request has a reason ([`RenewalReason`]): `startup` or
//!   `reload` for an engine's first (`startup` again after a crash),
//!   `rejected` when an upstream's rejection woke the engine, `scheduled`
//!   otherwise; a retry after a failure keeps the reason of what it
//!   retries. The reason labels `sidekey_token_refresh_total`, is a field of
//!   the engine's log lines, and the last attempt (when, why, outcome, how
//!   long) is kept for the status page ([`CredentialHandle::report`]).
//! - With a `[cache]` ([`super::stored`]), every attempt first claims: a
//!   stored token that is not due (and is not the one held or rejected) is
//!   adopted instead of requested — counted in
//!   `sidekey_token_cache_adopted_total`, not as a token request; logged at
//!   INFO — and with Redis, a replica that finds another renewing waits
//!   for its token at most half the held token's remaining life (2 s
//!   without one), then requests its own. A token obtained is stored.
//! - A token without expiry (static) is read again every
//!   [`Provider::poll_interval`]; only a changed value is published.
//! - If the task panics, its supervisor logs an ERROR, counts it in
//!   `sidekey_renewal_task_restarts_total`, makes the credential's reason say
//!   so, and restarts it after a backoff (1 s doubling to 30 s); the handle
//!   and the published token survive, and the restarted task fetches a new
//!   token at once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::handle::{CredentialHandle, EngineSettings, Published, State};
use super::provider::{FetchError, Provider, Token};
use super::report::{LastAttempt, RenewalReason};
use super::stored::{Claim, Stored};
use super::timing::{
    BACKOFF_MAX, RETRY_FLOOR, backoff_delay, renewal_delay, retry_delay, safety_margin,
};
use super::token_client::MAX_LIFETIME;
use crate::metrics::{Metrics, RefreshOutcome};

/// How long a replica without a valid token waits for another replica's
/// renewal (with `[cache] redis_url`) before requesting a token itself.
const FLEET_WAIT_WITHOUT_TOKEN: Duration = Duration::from_secs(2);

/// A failure message is logged at WARN again after this long, if unchanged.
const REPEAT_WARNING_AFTER: Duration = Duration::from_secs(30);

/// The token the engine holds.
struct Held {
    token: Token,
    /// Until when it is handed out (`None`: no expiry).
    usable_until: Option<Instant>,
    /// The same moment on the credential's wall clock ([`super::suspend`]).
    wall_until: Option<SystemTime>,
}

impl Held {
    fn valid_at(&self, now: Instant, wall: SystemTime) -> bool {
        self.usable_for(now, wall)
            .is_none_or(|left| !left.is_zero())
    }

    /// How much longer it is handed out, by the nearer of its two ends;
    /// `None` when it has no expiry.
    fn usable_for(&self, now: Instant, wall: SystemTime) -> Option<Duration> {
        let left = self.usable_until?.saturating_duration_since(now);
        let wall_left = self
            .wall_until
            .map_or(left, |at| at.duration_since(wall).unwrap_or_default());
        Some(left.min(wall_left))
    }
}

/// Aborts the task when dropped, so aborting the supervisor stops the engine.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Run the credential's engine, restarting it after a panic, until aborted.
pub(super) async fn supervise<P: Provider>(
    provider: P,
    handle: Arc<CredentialHandle>,
    settings: EngineSettings,
    metrics: Metrics,
) {
    let provider = Arc::new(provider);
    let mut crashes: u32 = 0;
    let mut first_reason = settings.first_reason;
    loop {
        let started = Instant::now();
        let mut task = AbortOnDrop(tokio::spawn(run(
            Arc::clone(&provider),
            Arc::clone(&handle),
            settings.clone(),
            metrics.clone(),
            first_reason,
        )));
        // A restarted task's first token request is a start-up's.
        first_reason = RenewalReason::Startup;
        match (&mut task.0).await {
            Err(error) if error.is_panic() => {}
            // `run` never returns; cancelled means the runtime is stopping.
            _ => return,
        }
        if started.elapsed() > BACKOFF_MAX {
            crashes = 0;
        }
        let delay = backoff_delay(crashes).max(RETRY_FLOOR);
        crashes = crashes.saturating_add(1);
        metrics.record_task_restart(&handle.name);
        // The panic message itself was printed by the panic hook.
        tracing::error!(
            credential = %handle.name,
            restart_in_s = delay.as_secs_f64(),
            "renewal task crashed; restarting it (a published token keeps serving until it expires)"
        );
        let message: Box<str> = format!(
            "renewal task crashed; restarting in {:.1} s",
            delay.as_secs_f64()
        )
        .into();
        handle.state.rcu(|state| State {
            last_error: Some(message.clone()),
            ..state.with_attempt(false, Instant::now().checked_add(delay))
        });
        // Release requests waiting on a renewal the crashed task owed them.
        let renewing = handle.renewing();
        handle.settled.send_if_modified(|settled| {
            let changed = *settled < renewing;
            *settled = (*settled).max(renewing);
            changed
        });
        handle.attempted.notify_waiters();
        tokio::time::sleep(delay).await;
    }
}

/// The credential's task: fetch, publish, wait, forever (until aborted).
/// `reason` is why its first token request is made.
async fn run<P: Provider>(
    provider: Arc<P>,
    handle: Arc<CredentialHandle>,
    settings: EngineSettings,
    metrics: Metrics,
    mut reason: RenewalReason,
) {
    let name = Arc::clone(&handle.name);
    let mut held: Option<Held> = None;
    // A restarted task continues the numbering of the handle.
    let mut generation: u64 = *handle.generation.borrow();
    let mut failures: u32 = 0;
    let mut on_rejection = false;
    let mut warned: Option<(Instant, Box<str>)> = None;
    loop {
        // The rejected generation this attempt answers.
        let covering = handle.renewing();
        handle.state.rcu(|state| state.with_attempt(true, None));
        // A cached token that is not due (nor the one held or rejected)
        // saves a request; with Redis, one replica requests for the fleet.
        let claim = match &settings.store {
            Some(store) => {
                // Wait on another replica's renewal while half the held
                // token's life is left, or briefly without one.
                let left = held
                    .as_ref()
                    .and_then(|held| held.usable_for(Instant::now(), handle.wall.now()));
                let wait = left.map_or(FLEET_WAIT_WITHOUT_TOKEN, |left| left / 2);
                let held = held.as_ref().map(|held| &held.token.value);
                Some(
                    store
                        .claim(held, settings.fetch_timeout, wait, &handle.wall)
                        .await,
                )
            }
            None => None,
        };
        let restored = matches!(claim, Some(Claim::Adopt(_)));
        let (result, sent) = match claim {
            Some(Claim::Adopt(stored)) => {
                let (token, sent) = adopt(stored);
                (Ok(token), sent)
            }
            ticket => {
                let sent = Instant::now();
                let offered = held
                    .as_ref()
                    .filter(|held| !on_rejection && held.valid_at(sent, handle.wall.now()));
                let result = fetch(&*provider, offered, &settings).await;
                if let (Some(store), Some(Claim::Fetch(ticket))) = (&settings.store, ticket) {
                    store
                        .settle(ticket, result.as_ref().ok(), sent.elapsed(), &handle.wall)
                        .await;
                }
                (result, sent)
            }
        };

        let attempt = LastAttempt {
            at: SystemTime::now(),
            reason,
            succeeded: result.is_ok(),
            took: sent.elapsed(),
        };
        let next: Option<Duration> = match result {
            Ok(token) => {
                let lifetime = token.lifetime.map(|lifetime| lifetime.min(MAX_LIFETIME));
                let unchanged = lifetime.is_none()
                    && held.as_ref().is_some_and(|held| {
                        held.usable_until.is_none()
                            && held.token.value == token.value
                            && held.token.headers == token.headers
                    });
                if unchanged {
                    if failures > 0 {
                        tracing::info!(credential = %name, "token source readable again; value unchanged");
                    }
                    handle.state.rcu(|state| State {
                        last_error: None,
                        last_attempt: Some(attempt.clone()),
                        last_success: Some(attempt.at),
                        failures: 0,
                        ..state.with_attempt(false, None)
                    });
                } else {
                    generation += 1;
                    let usable =
                        lifetime.map(|lifetime| lifetime.saturating_sub(safety_margin(lifetime)));
                    // At most a year: cannot overflow; if it did, the token is not used.
                    let usable_until =
                        usable.map(|usable| sent.checked_add(usable).unwrap_or(sent));
                    let wall_expiry = usable_until.and_then(|at| handle.wall.at(at));
                    let published = Arc::new(Published {
                        headers: build_headers(&token.headers, &settings.headers),
                        expires_at: usable_until,
                        wall_expiry,
                        generation,
                        apis: token.apis.clone(),
                        renewed_on_rejection: on_rejection,
                    });
                    // The engine is the only writer: load, then store.
                    let previous = handle.state.load();
                    let (failures_total, last) =
                        (previous.failures_total, previous.last_attempt.clone());
                    // A token from the cache was no attempt of this engine's.
                    let last_attempt = match restored {
                        true => last,
                        false => Some(attempt.clone()),
                    };
                    handle.state.store(Arc::new(State {
                        published: Some(published),
                        last_error: None,
                        in_flight: false,
                        next_attempt: None,
                        lifetime,
                        last_success: last_attempt.as_ref().map(|attempt| attempt.at),
                        last_attempt,
                        failures: 0,
                        failures_total,
                    }));
                    handle.generation.send_replace(generation);
                    match (lifetime, restored) {
                        (Some(_), true) => tracing::info!(
                            credential = %name,
                            generation,
                            "using a cached token valid for {} s more",
                            usable_until.map_or(0, |at| at.saturating_duration_since(Instant::now()).as_secs())
                        ),
                        (Some(lifetime), false) => tracing::info!(
                            credential = %name,
                            generation,
                            reason = %reason,
                            "obtained token valid for {} s",
                            lifetime.as_secs()
                        ),
                        (None, _) => tracing::info!(
                            credential = %name,
                            generation,
                            reason = %reason,
                            "obtained token without expiry"
                        ),
                    }
                    match restored {
                        true => metrics.record_token_adopted(&name),
                        false => metrics.record_token_refresh(
                            &name,
                            RefreshOutcome::Success,
                            reason.as_str(),
                        ),
                    }
                    held = Some(Held {
                        token,
                        usable_until,
                        wall_until: wall_expiry,
                    });
                }
                failures = 0;
                warned = None;
                match lifetime {
                    Some(lifetime) => {
                        let after = renewal_delay(lifetime, settings.refresh_before);
                        Some(
                            sent.checked_add(after)
                                .map_or(after, |at| at.saturating_duration_since(Instant::now())),
                        )
                    }
                    None => provider.poll_interval(),
                }
            }
            Err(error) => {
                metrics.record_token_refresh(&name, RefreshOutcome::Failure, reason.as_str());
                let (now, wall) = (Instant::now(), handle.wall.now());
                // A token without expiry (static) keeps serving and is simply
                // read again at the next poll.
                let keeps_forever = held
                    .as_ref()
                    .is_some_and(|held| held.usable_until.is_none());
                let usable_for = held.as_ref().and_then(|held| held.usable_for(now, wall));
                let delay = if keeps_forever {
                    provider.poll_interval()
                } else {
                    Some(retry_delay(&error, failures, usable_for))
                };
                let message: Box<str> = error.to_string().into();
                let repeated = warned.as_ref().is_some_and(|(at, last)| {
                    *last == message && now.saturating_duration_since(*at) < REPEAT_WARNING_AFTER
                });
                let retry_in = delay.map_or(-1.0, |d| d.as_secs_f64());
                let serving = held.as_ref().is_some_and(|held| held.valid_at(now, wall));
                if repeated || (keeps_forever && failures > 0) {
                    tracing::debug!(credential = %name, attempt = failures + 1, reason = %reason, retry_in_s = retry_in, "token request failed again: {message}");
                } else {
                    tracing::warn!(
                        credential = %name,
                        attempt = failures + 1,
                        reason = %reason,
                        retry_in_s = retry_in,
                        old_token_valid = serving,
                        "token request failed: {message}"
                    );
                    warned = Some((now, message.clone()));
                }
                handle.state.rcu(|state| State {
                    last_error: Some(message.clone()),
                    last_attempt: Some(attempt.clone()),
                    failures: failures.saturating_add(1),
                    failures_total: state.failures_total.saturating_add(1),
                    ..state.with_attempt(false, None)
                });
                failures = failures.saturating_add(1);
                delay
            }
        };
        let deadline = next.and_then(|delay| Instant::now().checked_add(delay));
        handle
            .state
            .rcu(|state| state.with_attempt(false, deadline));
        // Requests waiting on a renewal this attempt answered get its outcome.
        handle.settled.send_if_modified(|settled| {
            let changed = *settled < covering;
            *settled = (*settled).max(covering);
            changed
        });
        handle.attempted.notify_waiters();
        on_rejection = wait(&handle, deadline).await;
        if on_rejection {
            reason = RenewalReason::Rejected;
        } else if failures == 0 {
            reason = RenewalReason::Scheduled;
        }
    }
}

/// One token request, bounded by the fetch limit, offering the held token
/// (for Inbenta's `/refreshToken`) when the caller found it still valid
/// and not rejected.
async fn fetch<P: Provider>(
    provider: &P,
    offered: Option<&Held>,
    settings: &EngineSettings,
) -> Result<Token, FetchError> {
    let offered = offered.map(|held| &held.token);
    match tokio::time::timeout(settings.fetch_timeout, provider.fetch(offered)).await {
        Ok(result) => result,
        Err(_) => Err(FetchError::Transient {
            message: format!(
                "token request did not finish within {} s",
                settings.fetch_timeout.as_secs_f64()
            ),
            retry_after: None,
        }),
    }
}

/// A cached token and the instant its request was sent. On a monotonic
/// clock younger than the token, its remaining life counts from now.
fn adopt(stored: Stored) -> (Token, Instant) {
    let (mut token, now) = (stored.token, Instant::now());
    match now.checked_sub(stored.age) {
        Some(sent) => (token, sent),
        None => {
            token.lifetime = token.lifetime.map(|life| life.saturating_sub(stored.age));
            (token, now)
        }
    }
}

/// Sleep until `deadline` (`None` = until woken), or until an upstream
/// rejects the current token, or until a request finds that the machine
/// slept past the deadline's wall-clock time. Returns whether a rejection
/// woke it.
async fn wait(handle: &CredentialHandle, deadline: Option<Instant>) -> bool {
    let wall_deadline = deadline.and_then(|deadline| handle.wall.at(deadline));
    loop {
        let sleep = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => return false,
            () = handle.wake.notified() => {}
            () = handle.overslept.notified() => {
                if wall_deadline.is_some_and(|at| handle.wall.now() >= at) {
                    return false;
                }
                continue;
            }
        }
        // A wake-up stored while a renewal was in flight may concern a token
        // already replaced: only the currently published generation counts.
        let current = *handle.generation.borrow();
        if current != 0 && handle.renewing() == current {
            return true;
        }
    }
}

/// Token headers (marked sensitive) followed by the credential's static headers.
fn build_headers(
    token: &[(HeaderName, HeaderValue)],
    fixed: &[(HeaderName, HeaderValue)],
) -> Box<[(HeaderName, HeaderValue)]> {
    token
        .iter()
        .map(|(name, value)| {
            let mut value = value.clone();
            value.set_sensitive(true);
            (name.clone(), value)
        })
        .chain(fixed.iter().cloned())
        .collect()
}
