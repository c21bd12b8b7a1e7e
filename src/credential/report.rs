//! What an operator may know about a credential: why a token request was
//! made ([`RenewalReason`]), how the last one went ([`LastAttempt`]), and the
//! whole picture at one moment ([`CredentialReport`], for the status page
//! and `/readyz`). Nothing here holds a token or a secret: only names,
//! times, counts and the engine's redacted failure messages.

use std::fmt;
use std::time::{Duration, SystemTime};

/// Why a credential's engine made a token request; the `reason` label of
/// `sidekey_token_refresh_total`. A retry after a failure keeps the reason
/// of the request it retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RenewalReason {
    /// The first token of an engine started with the process (or restarted
    /// after its task crashed).
    Startup,
    /// Renewal before expiry (or the next read of a token without expiry).
    Scheduled,
    /// An upstream rejected the token (`renew_on_status`).
    Rejected,
    /// The first token of an engine a configuration reload started (a new
    /// credential, or one whose settings changed).
    Reload,
}

impl RenewalReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RenewalReason::Startup => "startup",
            RenewalReason::Scheduled => "scheduled",
            RenewalReason::Rejected => "rejected",
            RenewalReason::Reload => "reload",
        }
    }
}

impl fmt::Display for RenewalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The last token request that ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastAttempt {
    /// When it ended (wall clock, for display).
    pub at: SystemTime,
    /// Why it was made.
    pub reason: RenewalReason,
    /// Whether it brought a token (or confirmed an unchanged one).
    pub succeeded: bool,
    /// How long it took.
    pub took: Duration,
}

/// Where a credential stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialState {
    /// A valid token is held and the last request for one succeeded.
    Ready,
    /// A valid token is held and a token request is in flight.
    Renewing,
    /// A valid token is held, but the last request for one failed; the
    /// engine retries with backoff.
    Retrying,
    /// No valid token: never obtained, or expired while renewals failed.
    Unavailable,
}

impl CredentialState {
    /// A short word for people and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialState::Ready => "ready",
            CredentialState::Renewing => "renewing",
            CredentialState::Retrying => "retrying",
            CredentialState::Unavailable => "unavailable",
        }
    }

    /// Whether requests get a token.
    pub fn serves(self) -> bool {
        self != CredentialState::Unavailable
    }
}

/// One credential at one moment, for people.
#[derive(Clone, Debug)]
pub struct CredentialReport {
    /// The credential's name.
    pub name: String,
    /// Its `type` (`inbenta`, `oauth2`, `static`; `custom` for other providers).
    pub kind: &'static str,
    /// Where it stands.
    pub state: CredentialState,
    /// How much longer the current token is handed out (`None`: no valid
    /// token, or one without expiry).
    pub expires_in: Option<Duration>,
    /// The current token's lifetime as the issuer stated it (`None`: none
    /// held, or no expiry).
    pub lifetime: Option<Duration>,
    /// Tokens published so far by this credential's engine.
    pub generation: u64,
    /// The last token request that ended.
    pub last_attempt: Option<LastAttempt>,
    /// When the last successful token request ended.
    pub last_success: Option<SystemTime>,
    /// The last failure since the last success (redacted by the engine).
    pub last_error: Option<String>,
    /// A token request is in flight.
    pub in_flight: bool,
    /// Failed token requests in a row.
    pub failures: u32,
    /// Token requests that failed since the engine started.
    pub failures_total: u64,
    /// When the next token request is due; `None` when one is in flight
    /// or none is scheduled.
    pub next_attempt_in: Option<Duration>,
    /// Why there is no valid token (when [`CredentialState::Unavailable`]).
    pub unavailable_reason: Option<String>,
}
