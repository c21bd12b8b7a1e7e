//! Deadlines made from configured durations. A duration can be far longer
//! than the clock can count to (`body_timeout = "199999999999999d"` parses:
//! it fits a `Duration`), and `Instant + Duration` panics past that, which
//! on the request path dropped the app's connection. [`after`] saturates
//! instead, at a horizon no process outlives.

use std::time::Duration;

use tokio::time::Instant;

/// Where deadlines too far to count end: 30 years on.
const HORIZON: Duration = Duration::from_secs(30 * 365 * 86_400);

/// `timeout` after `start`; a timeout too long to add ends at the horizon.
pub fn after(start: Instant, timeout: Duration) -> Instant {
    start
        .checked_add(timeout)
        .or_else(|| start.checked_add(HORIZON))
        .unwrap_or(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_too_long_to_add_ends_at_the_horizon() {
        let start = Instant::now();
        assert_eq!(
            after(start, Duration::from_secs(5)),
            start + Duration::from_secs(5)
        );
        let endless = Duration::from_secs(199_999_999_999_999 * 86_400);
        assert_eq!(after(start, endless), start + HORIZON);
        assert_eq!(after(start, Duration::MAX), start + HORIZON);
    }
}
