//! Reading delays off recorded instants, for tests of backoff and renewal
//! timing (on tokio's clock, so paused-clock tests measure exact delays).

use tokio::time::Instant;

/// Seconds between consecutive instants.
pub fn gaps(instants: &[Instant]) -> Vec<f64> {
    instants
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect()
}

/// `value` seconds lie within `[low, high]`; `what` names them otherwise.
pub fn assert_between(value: f64, low: f64, high: f64, what: &str) {
    assert!(
        (low..=high).contains(&value),
        "{what}: {value} s not within [{low}, {high}]"
    );
}
