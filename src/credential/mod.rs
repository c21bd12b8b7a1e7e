//! Credentials: obtaining tokens in the background and publishing, per
//! credential, the headers every request must carry.
//!
//! Owns: the [`CredentialHandle`] the proxy reads on each request (one
//! `ArcSwap` load of prebuilt header values), the [`Provider`] trait each
//! credential type implements (`inbenta`, `oauth2`, `static`), and the
//! renewal engine ([`engine`]) that runs one task per credential: first token
//! before readiness, renewal before expiry, jittered backoff on failure, and
//! renewal on demand when an upstream rejects a token.

pub mod engine;
pub mod inbenta;
pub mod oauth2;
pub mod static_token;
pub mod token_client;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode, Uri};
use tokio::time::Instant;

use crate::config::{Secret, SecretError};

/// Inbenta product name (`chatbot`, `search`, …) → base URL, from the auth response's `apis`.
pub type ApiMap = HashMap<String, Uri>;

/// A token as a provider obtained it.
#[derive(Clone, Debug)]
pub struct Token {
    /// The token itself (Inbenta `accessToken`, OAuth `access_token`, the static value).
    pub value: Secret,
    /// How long it is valid from the moment it was received; `None` = no expiry (static).
    pub lifetime: Option<Duration>,
    /// The headers every proxied request carries with this token, values
    /// marked sensitive: `authorization: Bearer …`, `x-inbenta-key`, …
    /// (not the credential's static `headers`; the engine adds those).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Inbenta product base URLs; `None` for other types.
    pub apis: Option<Arc<ApiMap>>,
}

/// Why a token could not be obtained. Messages never contain secrets.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The token endpoint refused the credentials (4xx other than 429):
    /// retried with backoff, but logged as a configuration problem.
    #[error("token endpoint refused the credentials ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// One readable line from the error body.
        message: String,
    },
    /// Network failure, timeout, 5xx, 429 or an unreadable answer.
    #[error("{message}")]
    Transient {
        /// What happened.
        message: String,
        /// `Retry-After` from a 429/503 answer.
        retry_after: Option<Duration>,
    },
    /// A secret reference could not be resolved.
    #[error("{0}")]
    Secret(Arc<SecretError>),
}

impl From<SecretError> for FetchError {
    fn from(err: SecretError) -> Self {
        FetchError::Secret(Arc::new(err))
    }
}

/// One credential type: how to obtain a token and which headers it sets.
pub trait Provider: Send + Sync + 'static {
    /// Obtain a token. `current` is the token now held while it is still
    /// valid (Inbenta renews it through `/refreshToken`), else `None`.
    fn fetch(
        &self,
        current: Option<&Token>,
    ) -> impl Future<Output = Result<Token, FetchError>> + Send;

    /// Names of the headers this provider sets; the app's own values for
    /// these are removed before injecting.
    fn header_names(&self) -> Vec<HeaderName>;

    /// How often to call `fetch` again when the token has no lifetime (a
    /// static token read from a file); `None` = never.
    fn poll_interval(&self) -> Option<Duration> {
        None
    }
}

/// What the proxy injects for one credential at one moment. Built once per
/// token and shared by every request.
#[derive(Debug)]
pub struct Published {
    /// Every header to set (token headers + credential static headers), values marked sensitive.
    pub headers: Box<[(HeaderName, HeaderValue)]>,
    /// When the token stops being valid (monotonic clock); `None` = never.
    pub expires_at: Option<Instant>,
    /// Increases with every newly published token; identifies "the token a request saw".
    pub generation: u64,
    /// Inbenta product base URLs of this token.
    pub apis: Option<Arc<ApiMap>>,
}

/// Why a credential cannot serve a request right now (→ 503 `credential_unavailable`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("credential {credential} has no valid token: {reason}")]
pub struct Unavailable {
    /// The credential name.
    pub credential: Arc<str>,
    /// Why (never obtained yet, expired while renewals fail, last error).
    pub reason: String,
}

/// Readiness of one credential, for `/readyz` and metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum CredentialStatus {
    /// A valid token is held; `expires_in` is `None` for tokens without expiry.
    Ready {
        /// Time left until expiry.
        expires_in: Option<Duration>,
    },
    /// No valid token.
    Unavailable {
        /// Why.
        reason: String,
    },
}

/// The proxy's view of one credential.
#[derive(Debug)]
pub struct CredentialHandle {
    _todo: (),
}

impl CredentialHandle {
    /// The credential's name.
    pub fn name(&self) -> &str {
        todo!("engine helper")
    }

    /// The headers to inject now, or why there is no valid token. One
    /// `ArcSwap` load and a clock read: no locks, no formatting.
    pub fn current(&self) -> Result<Arc<Published>, Unavailable> {
        todo!("engine helper")
    }

    /// Header names the proxy strips from the app's request before injecting
    /// (provider headers and the credential's static headers).
    pub fn strip_names(&self) -> &[HeaderName] {
        todo!("engine helper")
    }

    /// Whether `status` from the upstream means "token rejected" (`renew_on_status`).
    pub fn renews_on(&self, status: StatusCode) -> bool {
        let _ = status;
        todo!("engine helper")
    }

    /// An upstream rejected the token of `generation`: renew it, once per
    /// generation however many requests report it.
    pub fn report_rejected(&self, generation: u64) {
        let _ = generation;
        todo!("engine helper")
    }

    /// Wait (up to `timeout`) for a token newer than `generation`.
    pub async fn wait_for_newer(
        &self,
        generation: u64,
        timeout: Duration,
    ) -> Result<Arc<Published>, Unavailable> {
        let _ = (generation, timeout);
        todo!("engine helper")
    }

    /// Readiness now.
    pub fn status(&self) -> CredentialStatus {
        todo!("engine helper")
    }
}

/// All credentials of a configuration, each with its renewal task running.
/// Dropping it stops the tasks.
#[derive(Debug)]
pub struct Credentials {
    handles: BTreeMap<String, Arc<CredentialHandle>>,
}

impl Credentials {
    /// The handle of credential `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<CredentialHandle>> {
        self.handles.get(name)
    }

    /// Every handle, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<CredentialHandle>)> {
        self.handles.iter().map(|(name, handle)| (name.as_str(), handle))
    }
}
