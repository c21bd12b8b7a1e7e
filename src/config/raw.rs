//! The configuration file exactly as written: serde structs that deny
//! unknown keys and keep the span of every value, so that validation (in
//! `validate`) can name the line of anything it refuses.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use toml::Spanned;

/// A string value with its span.
pub(crate) type Str = Spanned<String>;

/// A `key = "value"` table such as `headers` or `hosts`.
pub(crate) type StrMap = BTreeMap<Str, Str>;

/// The top level of the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub shutdown_grace: Option<Str>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub idle_timeout: Option<Str>,
    pub admin: Option<Spanned<RawAdmin>>,
    pub log: Option<Spanned<RawLog>>,
    pub tls: Option<Spanned<RawTls>>,
    #[serde(default)]
    pub credentials: BTreeMap<Str, Spanned<RawCredential>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
    pub forward_proxy: Option<Spanned<RawForwardProxy>>,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: Str,
    pub allow_non_loopback: Option<Spanned<bool>>,
}

/// `[log]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub level: Option<Str>,
    pub format: Option<Str>,
}

/// `[tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub ca_file: Option<Str>,
}

/// `[credentials.NAME]`: every key of every type; `validate` refuses the
/// keys that do not belong to the credential's `type`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCredential {
    #[serde(rename = "type")]
    pub kind: Str,
    // common
    pub refresh_before: Option<Str>,
    pub headers: Option<Spanned<StrMap>>,
    pub renew_on_status: Option<Spanned<Vec<Spanned<i64>>>>,
    pub allow_insecure_http: Option<Spanned<bool>>,
    pub timeout: Option<Str>,
    // inbenta
    pub api_key: Option<Spanned<RawSecret>>,
    pub secret: Option<Spanned<RawSecret>>,
    pub domain_key: Option<Spanned<RawSecret>>,
    pub origin: Option<Str>,
    pub oauth_token: Option<Spanned<RawSecret>>,
    pub auth_url: Option<Str>,
    // oauth2
    pub token_url: Option<Str>,
    pub client_id: Option<Spanned<RawSecret>>,
    pub client_secret: Option<Spanned<RawSecret>>,
    pub audience: Option<Str>,
    pub scope: Option<Str>,
    pub client_auth: Option<Str>,
    pub body: Option<Str>,
    pub default_ttl: Option<Str>,
    // static
    pub token: Option<Spanned<RawSecret>>,
    pub header: Option<Str>,
    pub scheme: Option<Str>,
}

impl RawCredential {
    /// The type-specific keys that are present, with the span of each value.
    pub(crate) fn typed_keys(&self) -> Vec<(&'static str, std::ops::Range<usize>)> {
        fn span<T>(value: &Option<Spanned<T>>) -> Option<std::ops::Range<usize>> {
            value.as_ref().map(Spanned::span)
        }
        let keys = [
            ("api_key", span(&self.api_key)),
            ("secret", span(&self.secret)),
            ("domain_key", span(&self.domain_key)),
            ("origin", span(&self.origin)),
            ("oauth_token", span(&self.oauth_token)),
            ("auth_url", span(&self.auth_url)),
            ("token_url", span(&self.token_url)),
            ("client_id", span(&self.client_id)),
            ("client_secret", span(&self.client_secret)),
            ("audience", span(&self.audience)),
            ("scope", span(&self.scope)),
            ("client_auth", span(&self.client_auth)),
            ("body", span(&self.body)),
            ("default_ttl", span(&self.default_ttl)),
            ("token", span(&self.token)),
            ("header", span(&self.header)),
            ("scheme", span(&self.scheme)),
        ];
        keys.into_iter()
            .filter_map(|(name, span)| span.map(|span| (name, span)))
            .collect()
    }
}

/// `[[routes]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub name: Option<Str>,
    pub listen: Str,
    pub upstream: Option<Str>,
    pub inbenta_api: Option<Str>,
    pub credential: Str,
    pub path_prefix: Option<Str>,
    pub strip_prefix: Option<Spanned<bool>>,
    pub headers: Option<Spanned<StrMap>>,
    pub connect_timeout: Option<Str>,
    pub request_timeout: Option<Str>,
    pub body_timeout: Option<Str>,
    pub tls: Option<Spanned<RawListenerTls>>,
    pub upstream_tls: Option<Spanned<RawUpstreamTls>>,
    pub allow_insecure_http: Option<Spanned<bool>>,
    pub allow_non_loopback: Option<Spanned<bool>>,
}

/// `tls = { cert, key }` on a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListenerTls {
    pub cert: Str,
    pub key: Str,
}

/// `upstream_tls = { client_cert, client_key, server_name }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    pub client_cert: Option<Str>,
    pub client_key: Option<Str>,
    pub server_name: Option<Str>,
}

/// `[forward_proxy]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawForwardProxy {
    pub listen: Str,
    #[serde(default)]
    pub hosts: StrMap,
    pub allow_non_loopback: Option<Spanned<bool>>,
    pub connect_timeout: Option<Str>,
    pub request_timeout: Option<Str>,
    pub body_timeout: Option<Str>,
}

/// A secret value as written: `{ env = "NAME" }`, `{ file = "PATH" }` or a
/// literal string. `Debug` never shows a literal.
pub(crate) enum RawSecret {
    /// `{ env = "NAME" }` or `{ file = "PATH" }` (exactly one is `Some`
    /// after validation).
    Table(RawSecretTable),
    /// A literal string.
    Literal(String),
}

impl fmt::Debug for RawSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawSecret::Table(table) => table.fmt(f),
            RawSecret::Literal(_) => f.write_str("Literal(<redacted>)"),
        }
    }
}

/// The table form of a secret reference.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecretTable {
    pub env: Option<String>,
    pub file: Option<String>,
}

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;

        impl<'de> Visitor<'de> for SecretVisitor {
            type Value = RawSecret;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"{ env = "NAME" }, { file = "PATH" } or a string"#)
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<RawSecret, E> {
                Ok(RawSecret::Literal(value.to_owned()))
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawSecret, E> {
                Err(E::custom(not_a_secret("an integer")))
            }

            fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawSecret, E> {
                Err(E::custom(not_a_secret("an integer")))
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawSecret, E> {
                Err(E::custom(not_a_secret("a float")))
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawSecret, E> {
                Err(E::custom(not_a_secret("a boolean")))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawSecret, A::Error> {
                let table =
                    RawSecretTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawSecret::Table(table))
            }
        }

        deserializer.deserialize_any(SecretVisitor)
    }
}

/// The message for a secret of the wrong type; unlike serde's default it
/// never repeats the value.
fn not_a_secret(found: &str) -> String {
    format!(r#"expected {{ env = "NAME" }}, {{ file = "PATH" }} or a string, found {found}"#)
}
