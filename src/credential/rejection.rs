//! What an upstream's rejection of a token (a status in `renew_on_status`)
//! does to a credential: renew the token, or ignore the rejection because a
//! fresh token does not cure it.
//!
//! The rule, per credential:
//!
//! - The first rejection of a token renews it, once however many requests
//!   report it ([`Decision::Renew`]; later reports of the same token join
//!   that renewal, [`Decision::Join`]). A revoked or expired token is
//!   replaced on its first rejection.
//! - A rejection of a token that was itself obtained by a rejection-triggered
//!   renewal (the retry with the fresh token was rejected too, or later
//!   requests were) shows the rejection is not about the token: such
//!   rejections are ignored ([`Decision::Ignore`]) for [`COOL_DOWN`] (60 s),
//!   or until the token is replaced by its scheduled renewal, whichever comes
//!   first. After the cool-down, one rejection renews again (a probe); if the
//!   probe's token is rejected too, another cool-down starts. An upstream
//!   that rejects everything thus costs at most one token request per
//!   cool-down, instead of one per request.
//!
//! Pure state, no clock of its own: the caller passes `now`.

use std::time::Duration;

use tokio::time::Instant;

/// How long rejections of a token are ignored once a fresh token turned out
/// to be rejected as well.
pub const COOL_DOWN: Duration = Duration::from_secs(60);

/// What to do about one rejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Renew the token now (wake the engine).
    Renew,
    /// A renewal of this token was already requested.
    Join,
    /// Not about the token: pass the rejection on. `first` is set on the
    /// rejection that started the cool-down (worth one log line).
    Ignore {
        /// Whether this rejection started the cool-down.
        first: bool,
    },
}

/// Rejection state of one credential.
#[derive(Debug, Default)]
pub struct Rejections {
    /// Highest generation whose rejection requested a renewal (0 = none).
    renewing: u64,
    /// The generation whose rejections are ignored, and until when.
    suspended: Option<(u64, Instant)>,
}

impl Rejections {
    /// Decide about a rejection of the current token, of `generation`;
    /// `after_rejection` says whether a rejection-triggered renewal produced it.
    pub fn decide(&mut self, generation: u64, after_rejection: bool, now: Instant) -> Decision {
        if self.renewing >= generation {
            return Decision::Join;
        }
        if let Some((suspended, until)) = self.suspended
            && suspended == generation
        {
            if now < until {
                return Decision::Ignore { first: false };
            }
            // The cool-down is over: one probe.
            self.renewing = generation;
            return Decision::Renew;
        }
        if after_rejection {
            let until = now.checked_add(COOL_DOWN).unwrap_or(now);
            self.suspended = Some((generation, until));
            return Decision::Ignore { first: true };
        }
        self.renewing = generation;
        Decision::Renew
    }

    /// The highest generation whose rejection requested a renewal.
    pub fn renewing(&self) -> u64 {
        self.renewing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_rejection_renews_once_and_others_join() {
        let now = Instant::now();
        let mut r = Rejections::default();
        assert_eq!(r.decide(1, false, now), Decision::Renew);
        assert_eq!(r.decide(1, false, now), Decision::Join);
        assert_eq!(r.renewing(), 1);
        // A token from a scheduled renewal is renewed on its first rejection.
        assert_eq!(r.decide(2, false, now), Decision::Renew);
    }

    #[test]
    fn a_rejected_fresh_token_starts_a_cool_down_then_one_probe() {
        let now = Instant::now();
        let mut r = Rejections::default();
        assert_eq!(r.decide(1, false, now), Decision::Renew);
        // Token 2 came from that renewal and is rejected too.
        assert_eq!(r.decide(2, true, now), Decision::Ignore { first: true });
        assert_eq!(r.decide(2, true, now), Decision::Ignore { first: false });
        let later = now + COOL_DOWN - Duration::from_millis(1);
        assert_eq!(r.decide(2, true, later), Decision::Ignore { first: false });
        // After the cool-down: one probe, joined by the others.
        let after = now + COOL_DOWN;
        assert_eq!(r.decide(2, true, after), Decision::Renew);
        assert_eq!(r.decide(2, true, after), Decision::Join);
        // The probe's token is rejected as well: another cool-down.
        assert_eq!(r.decide(3, true, after), Decision::Ignore { first: true });
        // A scheduled renewal's token starts afresh.
        assert_eq!(r.decide(4, false, after), Decision::Renew);
    }
}
