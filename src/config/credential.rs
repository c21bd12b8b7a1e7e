//! Reading `[credentials.NAME]`: the keys each `type` accepts and requires,
//! the rules between them, and secret references resolved. A table is read
//! twice from the parsed file, never through a buffer (as a
//! `#[serde(tag = "type")]` enum would, losing every line): for `type` and
//! the shared keys, then for its type's. What the settings mean is
//! [`crate::credential::settings`]'.

use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode, Uri};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::error::Key;
use super::source::Source;
use super::value::{BaseUrl, Dur, Headers, Timeout, Value};
use super::value::{secs, statuses, via, via_some};
use crate::credential::settings::{
    CredentialConfig, CredentialKind, InbentaConfig, InbentaKey, OAuth2Config, StaticConfig,
};
use crate::secret::SecretRef;
use crate::suggest::did_you_mean;

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
            let default = Uri::from_static(InbentaConfig::AUTH_URL);
            let auth_url = file.auth_url.map_or(default, |url| url.0);
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
    let rejected = kind.default_renew_on_status();
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
