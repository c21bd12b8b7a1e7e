//! Credentials: obtaining tokens in the background and publishing, per
//! credential, the headers every request must carry.
//!
//! Owns: what `[credentials.NAME]` means ([`settings`]), the
//! [`CredentialHandle`] the proxy reads on each request (one
//! `ArcSwap` load of prebuilt header values), the [`Provider`] trait each
//! credential type implements (`inbenta`, `oauth2`, `static`, dispatched
//! through [`AnyProvider`]; `oauth2` client authentication without a secret
//! is in [`client_auth`] and [`assertion`]; what a token may contain is
//! [`bearer`]), and the renewal engine ([`engine`]) that runs one
//! supervised task per credential: first token before readiness, renewal
//! before expiry, backoff on failure ([`timing`] has the exact rules), and
//! renewal on demand when an upstream rejects a token ([`rejection`] decides
//! when a rejection is not about the token; [`suspend`] keeps a token's end
//! on the wall clock too, which a system suspend does not stop). Error text from token
//! endpoints is redacted of every secret sent ([`redact`]). With a
//! `[cache]`, an engine starts from a stored token that is not yet due and
//! stores each token it obtains ([`stored`]).
//!
//! Entry points: [`Credentials::start`] (one engine per `[credentials.NAME]`,
//! stopped when the [`Credentials`] is dropped), [`Credentials::spawn`] (an
//! engine for any provider, used by tests), and [`obtain_once`] (one token
//! without an engine, for `sidekey token`).
//!
//! A request's view of a credential: [`CredentialHandle::current`] gives the
//! [`Published`] headers and their `generation`, or — when there is no valid
//! token — [`CredentialHandle::wait_for_token`] waits (bounded) for the first
//! token or for a renewal about to happen. When the upstream answers a
//! status in `renew_on_status` ([`CredentialHandle::renews_on`]), the proxy
//! calls [`CredentialHandle::report_rejected`] with that generation (one
//! renewal however many requests report it, none when fresh tokens are
//! rejected too) and, unless the rejection is ignored,
//! [`CredentialHandle::wait_for_renewal`] to retry with the next token; that
//! wait ends as soon as the renewal attempt ends, new token or not.

pub mod any;
pub mod assertion;
pub mod bearer;
pub mod client_auth;
pub mod engine;
pub mod handle;
pub mod inbenta;
pub mod oauth2;
pub mod provider;
pub mod redact;
pub mod registry;
pub mod rejection;
pub mod report;
pub mod settings;
pub mod static_token;
pub mod stored;
pub mod suspend;
pub mod timing;
pub mod token_client;

pub use any::AnyProvider;
pub use handle::{
    CredentialHandle, CredentialStatus, EngineSettings, Published, Rejection, Unavailable,
};
pub use provider::{ApiMap, FetchError, Provider, Token};
pub use registry::{Credentials, NotReady, ObtainError, obtain_once};
pub use report::{CredentialReport, CredentialState, LastAttempt, RenewalReason};
