//! `[credentials.NAME]`: the credential types, the keys each `type` accepts
//! and requires, and their defaults. A table is read twice from the parsed
//! file, never through a buffer (as a `#[serde(tag = "type")]` enum would,
//! losing every line): for `type` and the shared keys, then for its type's.

use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode, Uri};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::error::Key;
use super::source::Source;
use super::value::{BaseUrl, Dur, Headers, Name, Scheme, Timeout, Url, Value};
use super::value::{secs, statuses, via, via_some};
use crate::secret::SecretRef;
use crate::suggest::did_you_mean;

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

/// The keys every type accepts; neither read refuses the other's keys ([`KEYS`] does).
#[derive(Deserialize)]
#[serde(expecting = "a table")]
struct Common {
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
}

/// `type = "inbenta"` as written: the flow is one of two keys.
#[derive(Deserialize)]
struct InbentaFile {
    api_key: SecretRef,
    secret: Option<SecretRef>,
    domain_key: Option<SecretRef>,
    origin: Option<Value>,
    oauth_token: Option<SecretRef>,
    auth_url: Option<BaseUrl>,
}

/// A credential's `type`; its number is its row in [`KEYS`] and [`NAMES`].
#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Type {
    Inbenta = 1,
    OAuth2 = 2,
    Static = 3,
}

/// Each type's keys; every type accepts the first row's.
const KEYS: [&str; 4] = [
    "type refresh_before headers renew_on_status allow_insecure_http timeout",
    "api_key secret domain_key origin oauth_token auth_url",
    "token_url client_id client_secret audience scope client_auth body default_ttl grant \
     private_key key_id signing_alg assertion_audience client_assertion client_cert client_key \
     subject_token subject_token_type resource",
    "token header scheme",
];
const NAMES: [&str; 4] = ["", "inbenta", "oauth2", "static"];

/// Read `[credentials.NAME]` by its type's keys and rules; `None` when it cannot be.
pub(super) fn read(name: &str, src: &Source<'_>) -> Option<CredentialConfig> {
    let base = Key::new("credentials").then(name);
    let common: Common = src.read(&base)?;
    let (type_name, own) = (NAMES[common.kind as usize], KEYS[common.kind as usize]);
    let accepted: Vec<&str> = KEYS[0].split(' ').chain(own.split(' ')).collect();
    let written = src.keys(&base);
    for key in written
        .iter()
        .filter(|key| !accepted.contains(&key.as_str()))
    {
        let message = match KEYS.iter().any(|keys| keys.split(' ').any(|k| k == key)) {
            true => format!("key `{key}` is not valid for type {type_name}"),
            false => did_you_mean(format!(
                "unknown key `{key}`, expected one of `{}`",
                accepted.join("`, `")
            )),
        };
        src.fail(&base.then(key), message);
    }
    let http = common.allow_insecure_http;
    let secret = |field: &str, value| src.secret(&base.then(field), value);
    let kind = match common.kind {
        Type::Inbenta => {
            let file: InbentaFile = typed(src, &base, type_name)?;
            let key = match (file.secret, file.domain_key) {
                (Some(s), None) => InbentaKey::Secret(secret("secret", s)),
                (None, Some(d)) => InbentaKey::DomainKey(secret("domain_key", d)),
                (Some(_), Some(_)) => {
                    let message = "set `secret` (API Secret flow) or `domain_key` (Domain Key \
                                   flow), not both";
                    src.fail(&base.then("domain_key"), message);
                    return None;
                }
                (None, None) => {
                    let message = "missing key `secret` or `domain_key` (one is required for \
                                   type inbenta)";
                    src.fail(&base.then("secret"), message);
                    return None;
                }
            };
            if file.origin.is_some() && matches!(key, InbentaKey::Secret(_)) {
                let message =
                    "`origin` is only sent with `domain_key`; it is ignored with `secret`";
                src.warn(&base.then("origin"), message);
            }
            let inbenta = Uri::from_static("https://api.inbenta.io/v1");
            let auth_url = file.auth_url.map_or(inbenta, |url| url.0);
            src.https(&base, ("auth_url", &auth_url), http);
            CredentialKind::Inbenta(InbentaConfig {
                api_key: secret("api_key", file.api_key),
                key,
                origin: file.origin.map(|v| v.0),
                oauth_token: file.oauth_token.map(|t| secret("oauth_token", t)),
                auth_url,
            })
        }
        Type::OAuth2 => {
            let mut oauth2: Box<OAuth2Config> = typed(src, &base, type_name)?;
            oauth2.client_id = secret("client_id", oauth2.client_id);
            let o = &mut oauth2;
            for (key, value) in [
                ("client_secret", &mut o.client_secret),
                ("private_key", &mut o.private_key),
                ("client_assertion", &mut o.client_assertion),
                ("client_key", &mut o.client_key),
                ("subject_token", &mut o.subject_token),
            ] {
                *value = value.take().map(|v| secret(key, v));
            }
            o.client_cert = o.client_cert.as_deref().map(|path| src.file(path));
            src.https(&base, ("token_url", &oauth2.token_url), http);
            CredentialKind::OAuth2(oauth2)
        }
        Type::Static => {
            let mut fixed: StaticConfig = typed(src, &base, type_name)?;
            fixed.token = secret("token", fixed.token);
            CredentialKind::Static(fixed)
        }
    };
    let rejected = match common.kind {
        Type::Inbenta => vec![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN],
        Type::OAuth2 | Type::Static => vec![StatusCode::UNAUTHORIZED],
    };
    Some(CredentialConfig {
        name: name.to_owned(),
        kind,
        refresh_before: common.refresh_before,
        headers: common.headers,
        renew_on_status: common.renew_on_status.unwrap_or(rejected),
        allow_insecure_http: common.allow_insecure_http,
        timeout: common.timeout,
    })
}

/// `T` read at `base`, a missing key said to be required for type `type_name`.
fn typed<T: DeserializeOwned>(src: &Source<'_>, base: &Key, type_name: &str) -> Option<T> {
    let found = src.errors.borrow().len();
    let read = src.read(base);
    for e in src.errors.borrow_mut().iter_mut().skip(found) {
        if e.message.starts_with("missing key") {
            e.message = format!("{} (required for type {type_name})", e.message);
        }
    }
    read
}
