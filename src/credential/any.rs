//! [`AnyProvider`]: the configured credential types behind one [`Provider`],
//! dispatched statically.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use super::client_auth;
use super::inbenta::InbentaProvider;
use super::oauth2::OAuth2Provider;
use super::provider::{FetchError, Provider, Token};
use super::settings::{CredentialConfig, CredentialKind};
use super::static_token::StaticProvider;
use super::token_client::TokenClient;
use crate::rotating::Trust;
use crate::secret::EnvSource;
use crate::tls::TlsError;

/// Any configured provider: static dispatch over the credential types.
#[derive(Debug)]
pub enum AnyProvider {
    /// `type = "inbenta"`.
    Inbenta(InbentaProvider),
    /// `type = "oauth2"`.
    OAuth2(OAuth2Provider),
    /// `type = "static"`.
    Static(StaticProvider),
}

impl AnyProvider {
    /// The provider `config` describes, with its own token endpoint client
    /// (presenting the client certificate of `tls_client_auth`, watched for
    /// changes on the calling runtime).
    pub fn from_config(
        config: &CredentialConfig,
        trust: &Arc<Trust>,
        env: Arc<dyn EnvSource>,
    ) -> Result<Self, TlsError> {
        let client = || TokenClient::trusting(trust, config.timeout, config.allow_insecure_http);
        Ok(match &config.kind {
            CredentialKind::Inbenta(inbenta) => {
                AnyProvider::Inbenta(InbentaProvider::new(inbenta, client()?, env))
            }
            CredentialKind::OAuth2(oauth2) => {
                let (timeout, insecure) = (config.timeout, config.allow_insecure_http);
                let cert = client_auth::client_certificate(oauth2)?;
                let client = TokenClient::presenting(trust, cert, timeout, insecure)?;
                AnyProvider::OAuth2(OAuth2Provider::new(oauth2, client, env))
            }
            CredentialKind::Static(fixed) => AnyProvider::Static(StaticProvider::new(fixed, env)),
        })
    }

    /// The `type` as written in the configuration.
    pub fn type_name(&self) -> &'static str {
        match self {
            AnyProvider::Inbenta(_) => "inbenta",
            AnyProvider::OAuth2(_) => "oauth2",
            AnyProvider::Static(_) => "static",
        }
    }
}

impl Provider for AnyProvider {
    async fn fetch(&self, current: Option<&Token>) -> Result<Token, FetchError> {
        match self {
            AnyProvider::Inbenta(p) => p.fetch(current).await,
            AnyProvider::OAuth2(p) => p.fetch(current).await,
            AnyProvider::Static(p) => p.fetch(current).await,
        }
    }

    fn header_names(&self) -> Vec<HeaderName> {
        match self {
            AnyProvider::Inbenta(p) => p.header_names(),
            AnyProvider::OAuth2(p) => p.header_names(),
            AnyProvider::Static(p) => p.header_names(),
        }
    }

    fn can_change(&self) -> bool {
        match self {
            AnyProvider::Inbenta(p) => p.can_change(),
            AnyProvider::OAuth2(p) => p.can_change(),
            AnyProvider::Static(p) => p.can_change(),
        }
    }

    fn poll_interval(&self) -> Option<Duration> {
        match self {
            AnyProvider::Inbenta(p) => p.poll_interval(),
            AnyProvider::OAuth2(p) => p.poll_interval(),
            AnyProvider::Static(p) => p.poll_interval(),
        }
    }
}
