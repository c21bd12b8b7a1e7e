//! What a credential type implements: the [`Provider`] trait (obtain a
//! token, name the headers it sets), the [`Token`] it returns and the
//! [`FetchError`] it fails with. Shared by the providers and the engine; a
//! leaf of `credential`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode, Uri};

use crate::secret::{Secret, SecretError};

/// Inbenta product name (`chatbot`, `search`, …) → base URL, from the auth response's `apis`.
pub type ApiMap = HashMap<String, Uri>;

/// One `apis` entry's base URL: absolute, with a port (if written) in
/// 1-65535. `None` otherwise, so that a product is never reached on a port
/// other than the one its entry names.
pub fn api_url(text: &str) -> Option<Uri> {
    let uri = text.parse::<Uri>().ok()?;
    let authority = uri.authority()?;
    let valid = uri.scheme().is_some() && crate::host::written_port(authority).is_ok();
    valid.then_some(uri)
}

/// A token as a provider obtained it.
#[derive(Clone, Debug)]
pub struct Token {
    /// The token itself (Inbenta `accessToken`, OAuth `access_token`, the static value).
    pub value: Secret,
    /// How long it is valid from the moment its request was sent; `None` =
    /// no expiry (static). The engine clamps it to a year.
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

    /// Whether `fetch` can bring a different token than the last one, so
    /// that a request whose token was rejected is worth keeping to retry
    /// with the next. Only a fixed token cannot.
    fn can_change(&self) -> bool {
        true
    }

    /// How often to call `fetch` again when the token has no lifetime (a
    /// static token read from a file); `None` = never.
    fn poll_interval(&self) -> Option<Duration> {
        None
    }
}
