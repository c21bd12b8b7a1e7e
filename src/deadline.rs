//! Deadlines made from configured durations, and the one timer that
//! waits for them.
//!
//! A duration can be far longer than the clock can count to
//! (`body_timeout = "199999999999999d"` parses: it fits a `Duration`), and
//! `Instant + Duration` panics past that, which on the request path dropped
//! the app's connection. [`after`] saturates instead, at a horizon no
//! process outlives.
//!
//! [`Timer`] is a tokio timer made at its first wait and then only moved:
//! a body, a connection or a stream that waits again and again (each wait
//! with a deadline of its own) registers one timer entry, not one per wait,
//! and one that never waits makes none.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Where deadlines too far to count end: 30 years on.
const HORIZON: Duration = Duration::from_secs(30 * 365 * 86_400);

/// `timeout` after `start`; a timeout too long to add ends at the horizon.
pub fn after(start: Instant, timeout: Duration) -> Instant {
    start
        .checked_add(timeout)
        .or_else(|| start.checked_add(HORIZON))
        .unwrap_or(start)
}

/// A timer made at its first wait, then moved from deadline to deadline.
#[derive(Debug, Default)]
pub struct Timer {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Timer {
    /// Whether a timer was ever made (a wait happened).
    pub fn made(&self) -> bool {
        self.sleep.is_some()
    }

    /// Ready once `deadline` has passed; until then the task is woken when
    /// it does. Set for a later deadline, the timer moves now; set for an
    /// earlier one (a wait that ended), it moves when it fires, at most
    /// once per wait.
    pub fn poll_until(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            if sleep.deadline() > deadline {
                sleep.as_mut().reset(deadline);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if sleep.deadline() >= deadline {
                return Poll::Ready(());
            }
            sleep.as_mut().reset(deadline);
        }
    }
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
