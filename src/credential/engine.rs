//! The renewal engine: one task per credential, the only caller of its
//! provider, so there is never more than one token request in flight.
//!
//! What the task does, in order:
//! - **First token** at once. Until it arrives [`CredentialHandle::current`]
//!   answers `Unavailable` ("never obtained: …").
//! - **Renewal before expiry**: a token with lifetime `L` is renewed after
//!   `L - refresh_before - jitter`, where `refresh_before` defaults to the
//!   smaller of 5 minutes and `L / 4`, and the jitter is 0–5 % of `L`
//!   (at most 30 s), so replicas do not renew in step. The expiry is computed
//!   on the monotonic clock from the lifetime at receipt. The provider gets the
//!   held token while it is still valid (Inbenta renews it with
//!   `/refreshToken`), else `None`.
//! - **Failure**: retried after 1 s, doubling to 30 s, each ±20 %; a
//!   `Retry-After` from the token endpoint is used instead (at most 5 min).
//!   The old token keeps serving until it really expires; after that
//!   `current()` answers `Unavailable` with the last error. Each failure is
//!   one `warn` line and one `sidekey_token_refresh_total{outcome="failure"}`.
//! - **Rejection**: [`CredentialHandle::report_rejected`] wakes the task to
//!   renew at once (without offering the rejected token to the provider).
//! - **Tokens without lifetime** (static) are fetched again every
//!   [`Provider::poll_interval`]; a new generation is published only when the
//!   value changed, and a failed re-read keeps the old value.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};
use tokio::time::Instant;

use super::{CredentialHandle, EngineSettings, FetchError, Provider, Published, Token};
use crate::metrics::{Metrics, RefreshOutcome};

/// First retry delay after a failure.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Longest retry delay computed by the backoff.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Longest `Retry-After` honoured.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(300);
/// Default `refresh_before` cap (the default is the smaller of this and a quarter of the lifetime).
pub const REFRESH_BEFORE_DEFAULT_MAX: Duration = Duration::from_secs(300);
/// Cap on the renewal jitter (0–5 % of the lifetime).
pub const RENEWAL_JITTER_MAX: Duration = Duration::from_secs(30);
/// Shortest wait before renewing a token, however short its lifetime.
const RENEWAL_MIN: Duration = Duration::from_millis(500);

/// What the handle reads: the published token (if any) and the last failure.
#[derive(Default)]
pub(super) struct State {
    /// The latest token's headers, kept after expiry so the reason can say when.
    pub(super) published: Option<Arc<Published>>,
    /// Wall-clock expiry of `published`, for messages only.
    pub(super) wall_expiry: Option<SystemTime>,
    /// The last failure since the last success (never contains a secret).
    pub(super) last_error: Option<Box<str>>,
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
                    .wall_expiry
                    .map(rfc3339)
                    .unwrap_or_else(|| "an unknown time".to_owned());
                match last {
                    Some(error) => format!("expired at {when}; last renewal failed: {error}"),
                    None => format!("expired at {when}; renewal in progress"),
                }
            }
        }
    }
}

/// The token the engine holds.
struct Held {
    token: Token,
    expires_at: Option<Instant>,
}

impl Held {
    fn valid_at(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}

/// The credential's task: fetch, publish, wait, forever (until aborted).
pub(super) async fn run<P: Provider>(
    provider: P,
    handle: Arc<CredentialHandle>,
    settings: EngineSettings,
    metrics: Metrics,
) {
    let name = Arc::clone(&handle.name);
    let mut held: Option<Held> = None;
    let mut generation: u64 = 0;
    let mut failures: u32 = 0;
    let mut rejected = false;
    loop {
        let now = Instant::now();
        let offered = if rejected {
            None
        } else {
            held.as_ref()
                .filter(|held| held.valid_at(now))
                .map(|held| &held.token)
        };
        let result =
            match tokio::time::timeout(settings.fetch_timeout, provider.fetch(offered)).await {
                Ok(result) => result,
                Err(_) => Err(FetchError::Transient {
                    message: format!(
                        "token request did not finish within {} s",
                        settings.fetch_timeout.as_secs_f64()
                    ),
                    retry_after: None,
                }),
            };

        let next: Option<Duration> = match result {
            Ok(token) => {
                let received = Instant::now();
                let lifetime = token.lifetime;
                let unchanged = lifetime.is_none()
                    && held.as_ref().is_some_and(|held| {
                        held.expires_at.is_none()
                            && held.token.value == token.value
                            && held.token.headers == token.headers
                    });
                if unchanged {
                    if failures > 0 {
                        tracing::info!(credential = %name, "token source readable again; value unchanged");
                        handle.state.rcu(|state| State {
                            published: state.published.clone(),
                            wall_expiry: state.wall_expiry,
                            last_error: None,
                        });
                    }
                } else {
                    generation += 1;
                    let expires_at = lifetime.map(|lifetime| received + lifetime);
                    let published = Arc::new(Published {
                        headers: build_headers(&token.headers, &settings.headers),
                        expires_at,
                        generation,
                        apis: token.apis.clone(),
                    });
                    handle.state.store(Arc::new(State {
                        published: Some(published),
                        wall_expiry: lifetime.and_then(|l| SystemTime::now().checked_add(l)),
                        last_error: None,
                    }));
                    handle.generation.send_replace(generation);
                    metrics.record_token_refresh(&name, RefreshOutcome::Success);
                    match lifetime {
                        Some(lifetime) => tracing::info!(
                            credential = %name,
                            generation,
                            "obtained token valid for {} s",
                            lifetime.as_secs()
                        ),
                        None => tracing::info!(
                            credential = %name,
                            generation,
                            "obtained token without expiry"
                        ),
                    }
                    held = Some(Held { token, expires_at });
                }
                failures = 0;
                match lifetime {
                    Some(lifetime) => Some(renewal_delay(lifetime, settings.refresh_before)),
                    None => provider.poll_interval(),
                }
            }
            Err(error) => {
                metrics.record_token_refresh(&name, RefreshOutcome::Failure);
                let now = Instant::now();
                // A token without expiry (static) keeps serving and is simply
                // read again at the next poll.
                let keeps_forever = held.as_ref().is_some_and(|held| held.expires_at.is_none());
                let delay = if keeps_forever {
                    provider.poll_interval()
                } else {
                    Some(retry_delay(&error, failures))
                };
                let serving = held.as_ref().is_some_and(|held| held.valid_at(now));
                let retry_in = delay.map_or(-1.0, |d| d.as_secs_f64());
                if failures == 0 || !keeps_forever {
                    tracing::warn!(
                        credential = %name,
                        attempt = failures + 1,
                        retry_in_s = retry_in,
                        old_token_valid = serving,
                        "token request failed: {error}"
                    );
                } else {
                    tracing::debug!(credential = %name, attempt = failures + 1, "token request failed again: {error}");
                }
                let message: Box<str> = error.to_string().into();
                handle.state.rcu(|state| State {
                    published: state.published.clone(),
                    wall_expiry: state.wall_expiry,
                    last_error: Some(message.clone()),
                });
                failures = failures.saturating_add(1);
                delay
            }
        };
        handle.attempted.notify_waiters();
        rejected = wait(&handle, next).await;
    }
}

/// Sleep for `delay` (`None` = until woken), or until an upstream rejects the
/// current token. Returns whether a rejection woke it.
async fn wait(handle: &CredentialHandle, delay: Option<Duration>) -> bool {
    let deadline = delay.map(|delay| Instant::now() + delay);
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
        }
        // A wake-up stored while a renewal was in flight may concern a token
        // already replaced: only the currently published generation counts.
        let current = *handle.generation.borrow();
        if current != 0 && handle.rejected.load(Ordering::Acquire) == current {
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

/// How long to keep a fresh token of `lifetime` before renewing it.
pub fn renewal_delay(lifetime: Duration, refresh_before: Option<Duration>) -> Duration {
    let before = refresh_before.unwrap_or_else(|| (lifetime / 4).min(REFRESH_BEFORE_DEFAULT_MAX));
    let jitter = lifetime
        .mul_f64(rand::random_range(0.0..0.05))
        .min(RENEWAL_JITTER_MAX);
    let floor = (lifetime / 10).max(RENEWAL_MIN);
    lifetime
        .saturating_sub(before)
        .saturating_sub(jitter)
        .max(floor)
}

/// The `n`th (0-based) retry delay after consecutive failures: 1 s doubling,
/// ±20 %, never above 30 s.
pub fn backoff_delay(failures: u32) -> Duration {
    let base = BACKOFF_INITIAL
        .saturating_mul(1u32 << failures.min(16))
        .min(BACKOFF_MAX);
    base.mul_f64(rand::random_range(0.8..1.2)).min(BACKOFF_MAX)
}

/// The delay before retrying after `error`: its `Retry-After` when given
/// (at most 5 min), else the backoff.
fn retry_delay(error: &FetchError, failures: u32) -> Duration {
    match error {
        FetchError::Transient {
            retry_after: Some(retry_after),
            ..
        } => (*retry_after).min(RETRY_AFTER_MAX),
        _ => backoff_delay(failures),
    }
}

/// `2024-05-01T12:00:00Z` (UTC, whole seconds).
fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_default_is_quarter_or_five_minutes_minus_jitter() {
        for _ in 0..200 {
            let hour = renewal_delay(Duration::from_secs(3600), None);
            // 3600 - 300 - [0, 30]
            assert!(hour <= Duration::from_secs(3300) && hour >= Duration::from_secs(3270));
            let short = renewal_delay(Duration::from_secs(100), None);
            // 100 - 25 - [0, 5]
            assert!(short <= Duration::from_secs(75) && short >= Duration::from_secs(70));
            let configured = renewal_delay(Duration::from_secs(100), Some(Duration::from_secs(10)));
            assert!(configured <= Duration::from_secs(90) && configured >= Duration::from_secs(85));
        }
    }

    #[test]
    fn renewal_never_spins_on_tiny_or_odd_lifetimes() {
        assert_eq!(renewal_delay(Duration::ZERO, None), RENEWAL_MIN);
        let d = renewal_delay(Duration::from_secs(60), Some(Duration::from_secs(120)));
        assert_eq!(d, Duration::from_secs(6));
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        for _ in 0..200 {
            for (n, base) in [1.0, 2.0, 4.0, 8.0, 16.0].iter().enumerate() {
                let d = backoff_delay(n as u32).as_secs_f64();
                assert!(d >= base * 0.8 && d <= base * 1.2, "{n}: {d}");
            }
            for n in [5, 6, 20, u32::MAX] {
                let d = backoff_delay(n).as_secs_f64();
                assert!((24.0..=30.0).contains(&d), "{n}: {d}");
            }
        }
    }

    #[test]
    fn retry_after_wins_and_is_capped() {
        let transient = |retry_after| FetchError::Transient {
            message: "busy".into(),
            retry_after,
        };
        assert_eq!(
            retry_delay(&transient(Some(Duration::from_secs(42))), 3),
            Duration::from_secs(42)
        );
        assert_eq!(
            retry_delay(&transient(Some(Duration::from_secs(86_400))), 0),
            RETRY_AFTER_MAX
        );
        assert!(retry_delay(&transient(None), 0) <= Duration::from_millis(1200));
    }

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // leap day 2024
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00Z");
    }

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
                generation: 1,
                apis: None,
            })),
            wall_expiry: Some(UNIX_EPOCH),
            last_error: Some("HTTP 500".into()),
        };
        assert_eq!(
            state.reason(),
            "expired at 1970-01-01T00:00:00Z; last renewal failed: HTTP 500"
        );
    }
}
