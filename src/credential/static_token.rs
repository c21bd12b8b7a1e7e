//! `type = "static"`: a fixed token from `{ env }`, `{ file }` or a literal,
//! sent as `HEADER: SCHEME TOKEN` (or the raw token when `scheme = ""`).
//! The token must be one a header carries unchanged ([`super::bearer`]):
//! spaces and tabs around it are dropped, and what is left is visible
//! ASCII, at most 64 KiB; a raw value may also hold spaces between its words.
//!
//! The token never expires. A `{ file = … }` token is read again every
//! second ([`Provider::poll_interval`]), so a rotated Kubernetes secret
//! (mounted files are symlinks into a `..data` directory that the kubelet
//! swaps) is picked up: the path is resolved anew on each read. The engine
//! publishes a new token only when the value changed, and keeps the old one
//! when a re-read fails or yields a value that cannot be sent (a file
//! emptied, as a rewrite in place leaves it for a moment; a directory; a
//! dangling link), with one warning until the file is readable again.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::bearer::token_text;
use super::provider::{FetchError, Provider, Token};
use super::settings::StaticConfig;
use crate::secret::{EnvSource, Secret, SecretError, SecretRef};

/// How often a `{ file = … }` token is read again: as often as rotating TLS
/// files ([`crate::rotating`]), so one rotation of a Secret volume reaches
/// tokens and certificates alike.
pub const FILE_POLL_INTERVAL: Duration = crate::rotating::POLL_INTERVAL;

/// Provider of a fixed token.
#[derive(Debug)]
pub struct StaticProvider {
    token: SecretRef,
    header: HeaderName,
    scheme: String,
    env: Arc<dyn EnvSource>,
    poll_interval: Option<Duration>,
}

impl StaticProvider {
    /// The provider `config` describes; `{ env }` references are read from `env`.
    pub fn new(config: &StaticConfig, env: Arc<dyn EnvSource>) -> Self {
        let poll_interval = match config.token {
            SecretRef::File(_) => Some(FILE_POLL_INTERVAL),
            SecretRef::Env(_) | SecretRef::Literal(_) => None,
        };
        StaticProvider {
            token: config.token.clone(),
            header: config.header.clone(),
            scheme: config.scheme.clone(),
            env,
            poll_interval,
        }
    }

    /// Read the token again every `interval` (`None` = never) instead of the
    /// default (every second for files, never otherwise).
    pub fn with_poll_interval(mut self, interval: Option<Duration>) -> Self {
        self.poll_interval = interval;
        self
    }
}

impl Provider for StaticProvider {
    async fn fetch(&self, _current: Option<&Token>) -> Result<Token, FetchError> {
        let read = self.token.resolve(self.env.as_ref())?;
        // A raw value (`scheme = ""`) may be `SCHEME TOKEN` itself.
        let what = format!("the token in {}", self.token.describe());
        let value = token_text(read.expose(), &what, self.scheme.is_empty())?;
        let text = if self.scheme.is_empty() {
            value.to_owned()
        } else {
            format!("{} {value}", self.scheme)
        };
        let value = Secret::new(value);
        let mut header =
            HeaderValue::try_from(text).map_err(|_| SecretError::Invalid(self.token.describe()))?;
        header.set_sensitive(true);
        Ok(Token {
            value,
            lifetime: None,
            headers: vec![(self.header.clone(), header)],
            apis: None,
        })
    }

    fn header_names(&self) -> Vec<HeaderName> {
        vec![self.header.clone()]
    }

    /// A file's content can be replaced; a literal, or the process's own
    /// environment, stays what it was.
    fn can_change(&self) -> bool {
        matches!(self.token, SecretRef::File(_))
    }

    fn poll_interval(&self) -> Option<Duration> {
        self.poll_interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::MapEnv;

    fn provider(token: SecretRef, header: &str, scheme: &str) -> StaticProvider {
        let config = StaticConfig {
            token,
            header: HeaderName::from_bytes(header.as_bytes()).unwrap(),
            scheme: scheme.to_owned(),
        };
        StaticProvider::new(&config, Arc::new(MapEnv::from([("TOKEN", "from-env")])))
    }

    #[tokio::test]
    async fn bearer_scheme_and_raw_value() {
        let bearer = provider(SecretRef::Env("TOKEN".into()), "authorization", "Bearer");
        let token = bearer.fetch(None).await.unwrap();
        assert_eq!(token.value.expose(), "from-env");
        assert_eq!(token.lifetime, None);
        assert_eq!(token.headers.len(), 1);
        assert_eq!(token.headers[0].0, "authorization");
        assert_eq!(token.headers[0].1, "Bearer from-env");
        assert!(token.headers[0].1.is_sensitive());
        assert_eq!(bearer.poll_interval(), None);

        let raw = provider(
            SecretRef::Literal(Secret::new("s3cr3t-lit")),
            "x-api-key",
            "",
        );
        let token = raw.fetch(None).await.unwrap();
        assert_eq!(token.headers[0].0, "x-api-key");
        assert_eq!(token.headers[0].1, "s3cr3t-lit");
        assert_eq!(
            raw.header_names(),
            vec![HeaderName::from_static("x-api-key")]
        );
        assert!(!format!("{token:?} {raw:?}").contains("s3cr3t"));
        // Neither can bring a different token: no request is kept to retry.
        assert!(!bearer.can_change() && !raw.can_change());
        let file = provider(SecretRef::File("/run/token".into()), "authorization", "");
        assert!(file.can_change(), "a file can be rotated");
    }

    #[tokio::test]
    async fn file_tokens_are_polled_and_errors_name_the_source() {
        let missing = provider(
            SecretRef::File("/nonexistent/sidekey/token".into()),
            "authorization",
            "Bearer",
        );
        assert_eq!(missing.poll_interval(), Some(FILE_POLL_INTERVAL));
        let err = missing.fetch(None).await.unwrap_err().to_string();
        assert!(err.contains("/nonexistent/sidekey/token"), "{err}");

        let unset = provider(SecretRef::Env("NOPE".into()), "authorization", "Bearer");
        let err = unset.fetch(None).await.unwrap_err().to_string();
        assert_eq!(err, "environment variable NOPE is not set");
    }
}
