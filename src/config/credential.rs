//! `[credentials.NAME]`: how a token is obtained and which headers it adds.
//! Owns the credential types, the keys each `type` accepts and requires,
//! their defaults (token timeout, TTL, Inbenta auth URL, `renew_on_status`)
//! and the rules between keys (`secret` or `domain_key`, https unless
//! `allow_insecure_http`).

use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode, Uri};
use serde::Deserialize;

use super::error::{ConfigError, Key};
use super::source::Source;
use super::value::{
    BaseUrl, Dur, Headers, Name, Scheme, Timeout, Url, Value, secs, statuses, via, via_some,
};
use crate::secret::SecretRef;

/// `[credentials.NAME]`: how a token is obtained and which headers it adds.
#[derive(Clone, Debug, PartialEq)]
pub struct CredentialConfig {
    /// The table name (`NAME`).
    pub name: String,
    /// The type-specific part.
    pub kind: CredentialKind,
    /// `refresh_before`: renew when this much lifetime is left. `None` means the
    /// default: the smaller of 5 minutes and a quarter of the lifetime.
    pub refresh_before: Option<Duration>,
    /// `headers`: extra static headers sent with this credential.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `renew_on_status`: upstream statuses meaning "token rejected"
    /// (default `[401]`, inbenta `[401, 403]`).
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
                let mut refs = vec![("api_key", &inbenta.api_key), flow];
                refs.extend(inbenta.oauth_token.as_ref().map(|r| ("oauth_token", r)));
                refs
            }
            CredentialKind::OAuth2(oauth2) => vec![
                ("client_id", &oauth2.client_id),
                ("client_secret", &oauth2.client_secret),
            ],
            CredentialKind::Static(fixed) => vec![("token", &fixed.token)],
        }
    }

    /// Names of the environment variables this credential reads.
    pub fn env_vars(&self) -> Vec<&str> {
        self.secret_refs()
            .into_iter()
            .filter_map(|(_, r)| match r {
                SecretRef::Env(name) => Some(name.as_str()),
                SecretRef::File(_) | SecretRef::Literal(_) => None,
            })
            .collect()
    }
}

/// The type-specific part of a credential (`type = "…"`).
#[derive(Clone, Debug, PartialEq)]
pub enum CredentialKind {
    /// `type = "inbenta"`.
    Inbenta(InbentaConfig),
    /// `type = "oauth2"`.
    OAuth2(OAuth2Config),
    /// `type = "static"`.
    Static(StaticConfig),
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
    /// `auth_url` (default `https://api.inbenta.io/v1`); `/auth` and `/refreshToken` live below it.
    pub auth_url: Uri,
}

/// Which Inbenta flow a credential uses.
#[derive(Clone, Debug, PartialEq)]
pub enum InbentaKey {
    /// API Secret flow: `{"secret": …}`.
    Secret(SecretRef),
    /// Domain Key flow: the domain key sent in place of the secret.
    DomainKey(SecretRef),
}

/// `type = "oauth2"`: RFC 6749 §4.4 client credentials grant.
#[derive(Clone, Debug, PartialEq)]
pub struct OAuth2Config {
    /// `token_url`.
    pub token_url: Uri,
    /// `client_id`.
    pub client_id: SecretRef,
    /// `client_secret`.
    pub client_secret: SecretRef,
    /// `audience` (Auth0).
    pub audience: Option<String>,
    /// `scope`.
    pub scope: Option<String>,
    /// `client_auth` (default basic).
    pub client_auth: ClientAuth,
    /// `body` (default form).
    pub body: BodyFormat,
    /// `default_ttl` (default 1h): lifetime when neither `expires_in` nor a JWT `exp` says.
    pub default_ttl: Duration,
}

/// How the client authenticates at the token endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// HTTP Basic with RFC 6749 §2.3.1 form-urlencoded id and secret.
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the request body.
    Post,
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
#[derive(Clone, Debug, PartialEq)]
pub struct StaticConfig {
    /// `token`.
    pub token: SecretRef,
    /// `header` (default `authorization`).
    pub header: HeaderName,
    /// `scheme` (default `Bearer`; empty sends the raw value).
    pub scheme: String,
}

/// `[credentials.NAME]` as written: one flat table of every type's keys.
/// Not a `#[serde(tag = "type")]` enum: serde reads a tagged table into a
/// buffer first, and an error inside it would lose its line and key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct CredentialFile {
    #[serde(rename = "type")]
    kind: Type,
    #[serde(default, deserialize_with = "via_some::<_, Dur, _>")]
    refresh_before: Option<Duration>,
    #[serde(default, deserialize_with = "via::<_, Headers, _>")]
    headers: Vec<(HeaderName, HeaderValue)>,
    #[serde(default, deserialize_with = "statuses")]
    renew_on_status: Option<Vec<StatusCode>>,
    #[serde(default)]
    allow_insecure_http: bool,
    #[serde(default = "secs::<10>", deserialize_with = "via::<_, Timeout, _>")]
    timeout: Duration,
    api_key: Option<SecretRef>,
    secret: Option<SecretRef>,
    domain_key: Option<SecretRef>,
    origin: Option<Value>,
    oauth_token: Option<SecretRef>,
    auth_url: Option<BaseUrl>,
    token_url: Option<Url>,
    client_id: Option<SecretRef>,
    client_secret: Option<SecretRef>,
    audience: Option<String>,
    scope: Option<String>,
    #[serde(default)]
    client_auth: ClientAuth,
    #[serde(default)]
    body: BodyFormat,
    #[serde(default = "secs::<3600>", deserialize_with = "via::<_, Timeout, _>")]
    default_ttl: Duration,
    token: Option<SecretRef>,
    header: Option<Name>,
    scheme: Option<Scheme>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Type {
    Inbenta,
    OAuth2,
    Static,
}

impl Type {
    /// The type's name, and the keys it accepts besides [`COMMON_KEYS`].
    fn keys(self) -> (&'static str, &'static str) {
        match self {
            Type::Inbenta => (
                "inbenta",
                "api_key secret domain_key origin oauth_token auth_url",
            ),
            Type::OAuth2 => (
                "oauth2",
                "token_url client_id client_secret audience scope client_auth body default_ttl",
            ),
            Type::Static => ("static", "token header scheme"),
        }
    }
}

/// The keys every type accepts.
const COMMON_KEYS: &str = "type refresh_before headers renew_on_status allow_insecure_http timeout";

impl CredentialFile {
    /// Apply the rules of this credential's `type`; `src` names the lines.
    pub(super) fn build(
        self,
        name: &str,
        src: &Source<'_>,
    ) -> Result<CredentialConfig, ConfigError> {
        let base = Key::new("credentials").then(name);
        let key = |field: &str| base.clone().then(field);
        let (type_name, keys) = self.kind.keys();
        let allowed = format!("{COMMON_KEYS} {keys}");
        if let Some(other) =
            (src.keys(&base).into_iter()).find(|k| !allowed.split(' ').any(|a| a == k))
        {
            let message = format!("key `{other}` is not valid for type {type_name}");
            return Err(src.error(&key(&other), message));
        }
        let missing = |field: &str| {
            let message = format!("missing key `{field}` (required for type {type_name})");
            src.error(&key(field), message)
        };
        let secret = |field: &str, value: Option<SecretRef>| {
            let value = value.ok_or_else(|| missing(field))?;
            Ok::<_, ConfigError>(src.secret(&key(field), value))
        };
        let table = format!("[{base}]");
        let https =
            |field: &str, url| src.https(&key(field), url, self.allow_insecure_http, &table);
        let (kind, default_statuses) = match self.kind {
            Type::Inbenta => {
                let flow = match (self.secret, self.domain_key) {
                    (Some(s), None) => InbentaKey::Secret(secret("secret", Some(s))?),
                    (None, Some(d)) => InbentaKey::DomainKey(secret("domain_key", Some(d))?),
                    (Some(_), Some(_)) => {
                        return Err(src.error(
                            &key("domain_key"),
                            "set `secret` (API Secret flow) or `domain_key` (Domain Key flow), not both",
                        ));
                    }
                    (None, None) => {
                        return Err(src.error(
                            &key("secret"),
                            "missing key `secret` or `domain_key` (one is required for type inbenta)",
                        ));
                    }
                };
                if self.origin.is_some() && matches!(flow, InbentaKey::Secret(_)) {
                    let message =
                        "`origin` is only sent with `domain_key`; it is ignored with `secret`";
                    src.warn(&key("origin"), message);
                }
                let auth_url = match self.auth_url {
                    Some(url) => https("auth_url", url.0)?,
                    None => Uri::from_static("https://api.inbenta.io/v1"),
                };
                let inbenta = InbentaConfig {
                    api_key: secret("api_key", self.api_key)?,
                    key: flow,
                    origin: self.origin.map(|v| v.0),
                    oauth_token: self.oauth_token.map(|t| src.secret(&key("oauth_token"), t)),
                    auth_url,
                };
                let statuses = vec![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN];
                (CredentialKind::Inbenta(inbenta), statuses)
            }
            Type::OAuth2 => {
                let token_url = self.token_url.ok_or_else(|| missing("token_url"))?;
                let oauth2 = OAuth2Config {
                    token_url: https("token_url", token_url.0)?,
                    client_id: secret("client_id", self.client_id)?,
                    client_secret: secret("client_secret", self.client_secret)?,
                    audience: self.audience,
                    scope: self.scope,
                    client_auth: self.client_auth,
                    body: self.body,
                    default_ttl: self.default_ttl,
                };
                (
                    CredentialKind::OAuth2(oauth2),
                    vec![StatusCode::UNAUTHORIZED],
                )
            }
            Type::Static => {
                let fixed = StaticConfig {
                    token: secret("token", self.token)?,
                    header: self.header.map_or(http::header::AUTHORIZATION, |h| h.0),
                    scheme: self.scheme.map_or_else(|| "Bearer".to_owned(), |s| s.0),
                };
                (
                    CredentialKind::Static(fixed),
                    vec![StatusCode::UNAUTHORIZED],
                )
            }
        };
        Ok(CredentialConfig {
            name: name.to_owned(),
            kind,
            refresh_before: self.refresh_before,
            headers: self.headers,
            renew_on_status: self.renew_on_status.unwrap_or(default_statuses),
            allow_insecure_http: self.allow_insecure_http,
            timeout: self.timeout,
        })
    }
}
