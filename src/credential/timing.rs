//! When a credential's engine renews, retries, and stops handing out a
//! token: the timing rules, as pure functions of a token's lifetime, the
//! failures so far and what the server said.
//!
//! With `L` the token's lifetime, counted from the instant its request was
//! sent (never from when the answer arrived) and clamped to a year:
//!
//! - **Safety margin** `M = min(L / 10, 5 s)`: the token is handed out until
//!   `L − M`, so a request in flight does not reach the upstream with a
//!   token that expired on the way ([`safety_margin`]).
//! - **Renewal** at `L − before − jitter` ([`renewal_delay`]), where `before`
//!   is `refresh_before` when configured, else the larger of
//!   `min(5 min, L / 4)` (the documented default) and `min(30 s, L / 2)` (so
//!   tokens shorter than two minutes renew at half their life, leaving room
//!   for several attempts); `before` is at least `2 M`. The jitter is 0–5 %
//!   of `L` (at most 30 s). The renewal never comes sooner than `L / 10`
//!   (and 500 ms) after the request. A token past `L − before` is *due*
//!   ([`due`]): a stored copy of it (the `[cache]`) is not adopted.
//! - **Retry after a failure** ([`retry_delay`]), never sooner than
//!   [`RETRY_FLOOR`] (1 s) whatever the server says:
//!   - while a token is still handed out for `left`: the backoff (1 s
//!     doubling, ±20 %, at most 30 s) or the server's `Retry-After` (at most
//!     5 min), but at most `left / 2`, so retries fit in the remaining life;
//!   - without a usable token: the server's `Retry-After` (at most 5 min),
//!     else 1–1.2 s, so recovery follows the endpoint's recovery within about
//!     a second; except when the endpoint refused the credentials (a 4xx:
//!     they will not fix themselves), which keeps the exponential backoff.
//! - **Waiting on expiry** ([`EXPIRY_WAIT`]): a request that finds the token
//!   stopped being handed out less than 5 s ago waits for the renewal
//!   attempt in flight or due before then, instead of failing at once.

use std::time::Duration;

use super::provider::FetchError;

/// No two token requests of a credential closer than this (bar one
/// renewal per rejected token), whatever the server says.
pub const RETRY_FLOOR: Duration = Duration::from_secs(1);
/// First backoff delay after a failure while a token is still usable.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Longest backoff delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Longest `Retry-After` honoured.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(300);
/// Default `refresh_before` cap (the default is the smaller of this and a
/// quarter of the lifetime, but see [`SHORT_TOKEN_BEFORE_MAX`]).
pub const REFRESH_BEFORE_DEFAULT_MAX: Duration = Duration::from_secs(300);
/// Short tokens renew at half their life, with at most this much left.
pub const SHORT_TOKEN_BEFORE_MAX: Duration = Duration::from_secs(30);
/// Cap on the renewal jitter (0–5 % of the lifetime).
pub const RENEWAL_JITTER_MAX: Duration = Duration::from_secs(30);
/// Longest safety margin before a token's expiry.
pub const MARGIN_MAX: Duration = Duration::from_secs(5);
/// How long after a token stopped being handed out a request still waits
/// for its renewal.
pub const EXPIRY_WAIT: Duration = Duration::from_secs(5);
/// Shortest wait before renewing a token, however short its lifetime.
const RENEWAL_MIN: Duration = Duration::from_millis(500);

/// How long before its expiry a token of `lifetime` stops being handed out.
pub fn safety_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(MARGIN_MAX)
}

/// The default `refresh_before` for a token of `lifetime`.
pub fn default_refresh_before(lifetime: Duration) -> Duration {
    let documented = (lifetime / 4).min(REFRESH_BEFORE_DEFAULT_MAX);
    let short = (lifetime / 2).min(SHORT_TOKEN_BEFORE_MAX);
    documented.max(short)
}

/// How much life a token of `lifetime` has left when it is renewed (before
/// the jitter): `refresh_before` or its default, at least twice the margin.
fn renew_before(lifetime: Duration, refresh_before: Option<Duration>) -> Duration {
    refresh_before
        .unwrap_or_else(|| default_refresh_before(lifetime))
        .max(safety_margin(lifetime).saturating_mul(2))
}

/// Whether a token of `lifetime` obtained `age` ago is due for renewal (the
/// renewal point without jitter has passed), so that a stored copy of it is
/// not worth adopting.
pub fn due(lifetime: Duration, age: Duration, refresh_before: Option<Duration>) -> bool {
    age >= lifetime.saturating_sub(renew_before(lifetime, refresh_before))
}

/// How long after its request was sent a token of `lifetime` is renewed.
pub fn renewal_delay(lifetime: Duration, refresh_before: Option<Duration>) -> Duration {
    let before = renew_before(lifetime, refresh_before);
    let jitter = lifetime
        .mul_f64(fastrand::f64() * 0.05)
        .min(RENEWAL_JITTER_MAX);
    let floor = (lifetime / 10).max(RENEWAL_MIN);
    lifetime
        .saturating_sub(before)
        .saturating_sub(jitter)
        .max(floor)
}

/// The `n`th (0-based) backoff delay after consecutive failures: 1 s
/// doubling, ±20 %, never above 30 s.
pub fn backoff_delay(failures: u32) -> Duration {
    let base = BACKOFF_INITIAL
        .saturating_mul(1u32 << failures.min(16))
        .min(BACKOFF_MAX);
    base.mul_f64(0.8 + 0.4 * fastrand::f64()).min(BACKOFF_MAX)
}

/// The delay before the next attempt after `error`, the `failures`th
/// consecutive one (0-based); `usable_for` is how much longer the held
/// token is handed out (`None` or zero: no usable token).
pub fn retry_delay(error: &FetchError, failures: u32, usable_for: Option<Duration>) -> Duration {
    let retry_after = match error {
        FetchError::Transient {
            retry_after: Some(retry_after),
            ..
        } => Some((*retry_after).min(RETRY_AFTER_MAX)),
        _ => None,
    };
    let delay = match usable_for.filter(|left| !left.is_zero()) {
        Some(left) => retry_after
            .unwrap_or_else(|| backoff_delay(failures))
            .min(left / 2),
        None => match (retry_after, error) {
            (Some(retry_after), _) => retry_after,
            (None, FetchError::Refused { .. }) => backoff_delay(failures),
            (None, _) => RETRY_FLOOR.mul_f64(1.0 + 0.2 * fastrand::f64()),
        },
    };
    delay.max(RETRY_FLOOR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    const HOUR: Duration = Duration::from_secs(3600);

    fn transient(retry_after: Option<Duration>) -> FetchError {
        FetchError::Transient {
            message: "busy".into(),
            retry_after,
        }
    }

    fn refused() -> FetchError {
        FetchError::Refused {
            status: StatusCode::UNAUTHORIZED,
            message: "invalid_client".into(),
        }
    }

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn default_renewal_keeps_the_documented_rule_for_long_tokens() {
        for _ in 0..200 {
            // 3600 - 300 - [0, 30]
            let hour = secs(renewal_delay(HOUR, None));
            assert!((3270.0..=3300.0).contains(&hour), "{hour}");
            // 400 - 100 - [0, 20]
            let medium = secs(renewal_delay(Duration::from_secs(400), None));
            assert!((280.0..=300.0).contains(&medium), "{medium}");
            let configured = secs(renewal_delay(
                Duration::from_secs(100),
                Some(Duration::from_secs(10)),
            ));
            assert!((85.0..=90.0).contains(&configured), "{configured}");
        }
    }

    #[test]
    fn a_token_is_due_at_its_renewal_point_without_jitter() {
        let secs = Duration::from_secs;
        // An hour: renewed with 5 minutes left.
        assert!(!due(HOUR, secs(3299), None));
        assert!(due(HOUR, secs(3300), None));
        assert!(!due(HOUR, secs(3300), Some(secs(60))));
        // One second: at half its life.
        assert!(!due(secs(1), Duration::from_millis(499), None));
        assert!(due(secs(1), Duration::from_millis(500), None));
        // Never later than the jittered renewal.
        for _ in 0..100 {
            assert!(!due(HOUR, renewal_delay(HOUR, None) - secs(1), None));
        }
    }

    #[test]
    fn short_tokens_renew_at_half_their_life() {
        assert_eq!(
            default_refresh_before(Duration::from_secs(3)),
            Duration::from_millis(1500)
        );
        assert_eq!(
            default_refresh_before(Duration::from_secs(100)),
            Duration::from_secs(30)
        );
        assert_eq!(
            default_refresh_before(Duration::from_secs(120)),
            Duration::from_secs(30)
        );
        assert_eq!(default_refresh_before(HOUR), Duration::from_secs(300));
        for _ in 0..200 {
            // 3 - 1.5 - [0, 0.15]
            let short = secs(renewal_delay(Duration::from_secs(3), None));
            assert!((1.35..=1.5).contains(&short), "{short}");
        }
    }

    #[test]
    fn renewal_never_spins_and_leaves_room_for_the_margin() {
        assert_eq!(renewal_delay(Duration::ZERO, None), RENEWAL_MIN);
        // refresh_before longer than the lifetime: a tenth of it.
        let d = renewal_delay(Duration::from_secs(60), Some(Duration::from_secs(120)));
        assert_eq!(d, Duration::from_secs(6));
        // refresh_before shorter than twice the margin is widened to it.
        for _ in 0..50 {
            let d = secs(renewal_delay(HOUR, Some(Duration::from_secs(1))));
            assert!((3560.0..=3590.0).contains(&d), "{d}");
        }
    }

    #[test]
    fn margin_is_a_tenth_up_to_five_seconds() {
        assert_eq!(
            safety_margin(Duration::from_secs(3)),
            Duration::from_millis(300)
        );
        assert_eq!(safety_margin(HOUR), MARGIN_MAX);
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        for _ in 0..200 {
            for (n, base) in [1.0, 2.0, 4.0, 8.0, 16.0].iter().enumerate() {
                let d = secs(backoff_delay(n as u32));
                assert!(d >= base * 0.8 && d <= base * 1.2, "{n}: {d}");
            }
            for n in [5, 6, 20, u32::MAX] {
                let d = secs(backoff_delay(n));
                assert!((24.0..=30.0).contains(&d), "{n}: {d}");
            }
        }
    }

    #[test]
    fn retries_without_a_token_come_about_a_second_apart() {
        for failures in [0, 3, 30] {
            let d = secs(retry_delay(&transient(None), failures, None));
            assert!((1.0..=1.2).contains(&d), "{d}");
            let d = secs(retry_delay(
                &transient(None),
                failures,
                Some(Duration::ZERO),
            ));
            assert!((1.0..=1.2).contains(&d), "{d}");
        }
        // Refused credentials back off exponentially.
        let d = secs(retry_delay(&refused(), 4, None));
        assert!((12.8..=19.2).contains(&d), "{d}");
    }

    #[test]
    fn retry_after_is_honoured_capped_and_floored() {
        let ra = |s: u64| transient(Some(Duration::from_secs(s)));
        assert_eq!(retry_delay(&ra(42), 3, None), Duration::from_secs(42));
        assert_eq!(retry_delay(&ra(86_400), 0, None), RETRY_AFTER_MAX);
        assert_eq!(retry_delay(&ra(0), 0, None), RETRY_FLOOR);
        assert_eq!(retry_delay(&ra(0), 0, Some(HOUR)), RETRY_FLOOR);
    }

    #[test]
    fn retries_fit_in_the_remaining_life() {
        let left = Some(Duration::from_secs(20));
        // Retry-After beyond the token's life: half the time left.
        let d = retry_delay(&transient(Some(Duration::from_secs(3600))), 0, left);
        assert_eq!(d, Duration::from_secs(10));
        // Long backoff: capped the same way.
        assert_eq!(
            retry_delay(&transient(None), 10, left),
            Duration::from_secs(10)
        );
        // Never below the floor, even with little left.
        let d = retry_delay(&transient(None), 0, Some(Duration::from_millis(300)));
        assert_eq!(d, RETRY_FLOOR);
        // Plenty of life left: the plain backoff.
        let d = secs(retry_delay(&transient(None), 2, Some(HOUR)));
        assert!((3.2..=4.8).contains(&d), "{d}");
    }
}
