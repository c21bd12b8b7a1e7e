//! What a credential's settings mean: [`CredentialConfig`] (shared keys)
//! and each `type`'s own ([`InbentaConfig`], [`OAuth2Config`],
//! [`StaticConfig`]), with their defaults. Reading them from the file, and
//! which keys each type accepts, is `config`'s (`config/credential.rs`).

use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode, Uri};
use serde::Deserialize;

use crate::config::value::{Name, Timeout, Url, from_text, secs, via};
use crate::secret::SecretRef;

/// `[credentials.NAME]`: how a token is obtained and which headers it adds.
#[derive(Clone, Debug, PartialEq)]
pub struct CredentialConfig {
    /// The table name (`NAME`).
    pub name: String,
    /// The type-specific part.
    pub kind: CredentialKind,
    /// `refresh_before`: renew with this much lifetime left (`None`: the lesser of 5m and 1/4).
    pub refresh_before: Option<Duration>,
    /// `headers`: extra static headers sent with this credential.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `renew_on_status`: statuses meaning "token rejected" (default 401; inbenta 401, 403).
    pub renew_on_status: Vec<StatusCode>,
    /// `allow_insecure_http`: permit an `http://` token endpoint.
    pub allow_insecure_http: bool,
    /// `timeout`: whole-request timeout for token endpoint calls (default 10s).
    pub timeout: Duration,
}

impl CredentialConfig {
    /// Every secret reference of this credential, with its key.
    pub fn secret_refs(&self) -> Vec<(&'static str, &SecretRef)> {
        match &self.kind {
            CredentialKind::Inbenta(inbenta) => {
                let flow = match &inbenta.key {
                    InbentaKey::Secret(r) => ("secret", r),
                    InbentaKey::DomainKey(r) => ("domain_key", r),
                };
                let oauth = inbenta.oauth_token.iter().map(|r| ("oauth_token", r));
                let refs = [("api_key", &inbenta.api_key), flow];
                refs.into_iter().chain(oauth).collect()
            }
            CredentialKind::OAuth2(o) => [
                ("client_id", Some(&o.client_id)),
                ("client_secret", o.client_secret.as_ref()),
                ("private_key", o.private_key.as_ref()),
                ("client_assertion", o.client_assertion.as_ref()),
                ("client_key", o.client_key.as_ref()),
                ("subject_token", o.subject_token.as_ref()),
            ]
            .into_iter()
            .filter_map(|(key, r)| Some((key, r?)))
            .collect(),
            CredentialKind::Static(fixed) => vec![("token", &fixed.token)],
        }
    }
}

/// The type-specific part of a credential (`type = "…"`).
#[derive(Clone, Debug, PartialEq)]
pub enum CredentialKind {
    /// `type = "inbenta"`.
    Inbenta(InbentaConfig),
    /// `type = "oauth2"` (boxed: it has the most keys by far).
    OAuth2(Box<OAuth2Config>),
    /// `type = "static"`.
    Static(StaticConfig),
}

impl CredentialKind {
    /// `renew_on_status` when it is not written: 401, and 403 too for inbenta.
    pub fn default_renew_on_status(&self) -> Vec<StatusCode> {
        match self {
            CredentialKind::Inbenta(_) => vec![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN],
            CredentialKind::OAuth2(_) | CredentialKind::Static(_) => vec![StatusCode::UNAUTHORIZED],
        }
    }
}

/// `type = "inbenta"`.
#[derive(Clone, Debug, PartialEq)]
pub struct InbentaConfig {
    /// `api_key`, sent as `x-inbenta-key` to the auth API and every upstream request.
    pub api_key: SecretRef,
    /// API Secret flow (`secret`) or Domain Key flow (`domain_key`); exactly one is set.
    pub key: InbentaKey,
    /// `origin`: the `Origin` header sent with the domain key.
    pub origin: Option<HeaderValue>,
    /// `oauth_token`: adds `x-oauth-token: Bearer …` to auth requests; re-read on every auth call.
    pub oauth_token: Option<SecretRef>,
    /// `auth_url` (default [`Self::AUTH_URL`]); `/auth` and `/refreshToken` live below it.
    pub auth_url: Uri,
}

impl InbentaConfig {
    /// Where Inbenta's authorization API is unless `auth_url` says otherwise.
    pub const AUTH_URL: &str = "https://api.inbenta.io/v1";
}

/// Which Inbenta flow a credential uses.
#[derive(Clone, Debug, PartialEq)]
pub enum InbentaKey {
    /// API Secret flow: `{"secret": …}`.
    Secret(SecretRef),
    /// Domain Key flow: the domain key sent in place of the secret.
    DomainKey(SecretRef),
}

/// `type = "oauth2"`: RFC 6749 §4.4 client credentials grant or RFC 8693
/// token exchange. Which keys each `client_auth` and `grant` needs is
/// checked outside `config` (`credential::client_auth::check`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct OAuth2Config {
    /// `token_url`.
    #[serde(deserialize_with = "via::<_, Url, _>")]
    pub token_url: Uri,
    /// `client_id`.
    pub client_id: SecretRef,
    /// `client_secret` (`client_auth` basic and post).
    pub client_secret: Option<SecretRef>,
    /// `audience` (Auth0).
    pub audience: Option<String>,
    /// `scope`.
    pub scope: Option<String>,
    /// `client_auth` (default basic).
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// `body` (default form).
    #[serde(default)]
    pub body: BodyFormat,
    /// `default_ttl` (default 1h): lifetime when neither `expires_in` nor a JWT `exp` says.
    #[serde(default = "secs::<3600>", deserialize_with = "via::<_, Timeout, _>")]
    pub default_ttl: Duration,
    /// `grant` (default client_credentials).
    #[serde(default)]
    pub grant: Grant,
    /// `private_key` (private_key_jwt): PEM key signing the assertions.
    pub private_key: Option<SecretRef>,
    /// `key_id`: the assertions' JWT `kid`.
    pub key_id: Option<String>,
    /// `signing_alg` (default: the key's own, RS256, ES256, ES384 or EdDSA).
    pub signing_alg: Option<String>,
    /// `assertion_audience`: the assertions' `aud` (default `token_url`).
    pub assertion_audience: Option<String>,
    /// `client_assertion` (client_assertion): a JWT issued by someone else.
    pub client_assertion: Option<SecretRef>,
    /// `client_cert` (tls_client_auth): PEM certificate chain.
    pub client_cert: Option<PathBuf>,
    /// `client_key` (tls_client_auth): `{ file = … }` with its PEM key.
    pub client_key: Option<SecretRef>,
    /// `subject_token` (token_exchange), read at every token request.
    pub subject_token: Option<SecretRef>,
    /// `subject_token_type` (token_exchange; default `…:token-type:jwt`).
    pub subject_token_type: Option<String>,
    /// `resource` (token_exchange).
    pub resource: Option<String>,
}

/// `grant`: what the token request asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// RFC 6749 §4.4.
    #[default]
    ClientCredentials,
    /// RFC 8693: a `subject_token` exchanged for an access token.
    TokenExchange,
}

/// How the client authenticates at the token endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with RFC 6749 §2.3.1 form-urlencoded id and secret.
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the request body.
    Post,
    /// RFC 7523: an assertion signed with `private_key` per request.
    PrivateKeyJwt,
    /// RFC 7523: the JWT in `client_assertion`, read per request.
    ClientAssertion,
    /// RFC 8705: mutual TLS with `client_cert` and `client_key`.
    TlsClientAuth,
}

/// Encoding of the token request body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    /// `application/x-www-form-urlencoded` (RFC 6749).
    #[default]
    Form,
    /// `application/json` (Auth0 style).
    Json,
}

/// `type = "static"`: a fixed token, re-read when its file changes.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct StaticConfig {
    /// `token`.
    pub token: SecretRef,
    /// `header` (default `authorization`).
    #[serde(default = "authorization", deserialize_with = "via::<_, Name, _>")]
    pub header: HeaderName,
    /// `scheme` (default `Bearer`; empty sends the raw value).
    #[serde(default = "bearer", deserialize_with = "via::<_, Scheme, _>")]
    pub scheme: String,
}

fn authorization() -> HeaderName {
    http::header::AUTHORIZATION
}

fn bearer() -> String {
    "Bearer".to_owned()
}

from_text! {
    /// An authorization scheme: one word, or empty for the raw value.
    Scheme(String, "a word such as \"Bearer\"") = |text| match text.chars().all(|c| c.is_ascii_graphic()) {
        true => Ok(text.to_owned()),
        false => Err(format!(
            "`{text}` is not a valid authorization scheme (one word such as \"Bearer\", \
             or \"\" for the raw value)"
        )),
    };
}
