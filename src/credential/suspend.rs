//! Token expiry across a system suspend. tokio's clock is the monotonic
//! clock, which stops while the machine sleeps (a laptop's lid closed, a
//! paused VM); the token issuer's clock does not. A token that had an hour
//! left when the machine went to sleep for two is over when it wakes, yet
//! the monotonic clock still gives it an hour, and the engine's renewal
//! timer slept through the two hours too.
//!
//! So the end of a token is kept on both clocks: the monotonic deadline
//! (no wall-clock step can stretch it) and the wall-clock time (a suspend
//! cannot stretch it); a token is handed out only while both lie ahead.
//! [`WallClock`] is the wall clock a credential reads. When the wall clock
//! alone says a token is over, the request that found out wakes the engine
//! (see [`super::handle`]), which renews at once if its own next step is due
//! by the wall clock ([`WallClock::at`]). A wall clock stepped forward (an
//! NTP correction) costs at most one early renewal; stepped back, the
//! monotonic deadline still holds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// The wall clock of one credential: the system's, plus whatever a test
/// made it skip ([`WallClock::skip`]; zero otherwise).
#[derive(Debug, Default)]
pub struct WallClock {
    skipped_ms: AtomicU64,
}

impl WallClock {
    /// The time now.
    pub fn now(&self) -> SystemTime {
        let now = SystemTime::now();
        match self.skipped_ms.load(Ordering::Relaxed) {
            0 => now,
            skipped => now
                .checked_add(Duration::from_millis(skipped))
                .unwrap_or(now),
        }
    }

    /// When the monotonic instant `at` comes (or came) on this clock, as
    /// the two clocks stand now; `None` if that is not representable.
    pub fn at(&self, at: Instant) -> Option<SystemTime> {
        let (wall, now) = (self.now(), Instant::now());
        match at.checked_duration_since(now) {
            Some(ahead) => wall.checked_add(ahead),
            None => wall.checked_sub(now.saturating_duration_since(at)),
        }
    }

    /// Move this clock `by` ahead of the monotonic clock, as a suspend of
    /// that long would. For tests: no machine is put to sleep in one.
    #[doc(hidden)]
    pub fn skip(&self, by: Duration) {
        let millis = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.skipped_ms.fetch_add(millis, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_moves_the_wall_clock_and_where_instants_fall_on_it() {
        let clock = WallClock::default();
        let later = Instant::now() + Duration::from_secs(60);
        let before = clock.at(later).unwrap();
        clock.skip(Duration::from_secs(3600));
        let after = clock.at(later).unwrap();
        let moved = after.duration_since(before).unwrap();
        // Each `at` reads both clocks, a few nanoseconds apart.
        let off = moved.abs_diff(Duration::from_secs(3600));
        assert!(off < Duration::from_millis(100), "{moved:?}");
        assert!(clock.now() > SystemTime::now() + Duration::from_secs(3599));
    }

    #[test]
    fn an_instant_in_the_past_falls_before_now() {
        let clock = WallClock::default();
        let now = Instant::now();
        let earlier = now.checked_sub(Duration::from_secs(5)).unwrap_or(now);
        assert!(clock.at(earlier).unwrap() <= clock.now());
    }
}
