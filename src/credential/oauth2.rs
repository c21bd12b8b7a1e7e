//! `type = "oauth2"`: the OAuth 2.0 client credentials grant (RFC 6749 §4.4).
//!
//! Each [`OAuth2Provider::fetch`] re-reads `client_id` and `client_secret`
//! (a rotated secret file is picked up on the next renewal) and POSTs one
//! token request to `token_url`:
//!
//! - `client_auth = "basic"` (default): `Authorization: Basic
//!   base64(urlencode(id) ":" urlencode(secret))`, each part encoded with
//!   `application/x-www-form-urlencoded` as RFC 6749 §2.3.1 requires, so a
//!   secret holding `:`, `+`, `%`, spaces or non-ASCII round-trips.
//!   `client_auth = "post"`: `client_id` and `client_secret` in the body.
//! - `body = "form"` (default): `grant_type=client_credentials` plus
//!   `audience` and `scope` when set, form-encoded. `body = "json"` (Auth0):
//!   the same fields as one JSON object, e.g. Pliant's
//!   `{"client_id", "client_secret", "audience", "grant_type": "client_credentials"}`.
//! - `Accept: application/json`.
//!
//! The answer's `access_token` is required; `token_type`, when present, must
//! be `bearer` in any case. The lifetime is `expires_in` (a positive number
//! or numeric string; `0`, negative or non-numeric values are an error to
//! retry, not "no lifetime"); without it, the `exp` claim of a JWT access
//! token (payload decoded, the signature is not checked: only the issuer's
//! word on its own token's expiry is read) relative to the system clock;
//! without that, `default_ttl`. Lifetimes are clamped to a year.
//!
//! Every request carries `authorization: Bearer <access_token>`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD_INDIFFERENT};
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::provider::{FetchError, Provider, Token};
use super::token_client::{
    MAX_LIFETIME, TokenClient, describe_url, lifetime_field, lifetime_until, sensitive_header,
    transient, unix_now,
};
use crate::config::{BodyFormat, ClientAuth, OAuth2Config};
use crate::secret::{EnvSource, Secret};

/// Obtains tokens with the client credentials grant.
pub struct OAuth2Provider {
    config: OAuth2Config,
    client: TokenClient,
    env: Arc<dyn EnvSource>,
}

impl fmt::Debug for OAuth2Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2Provider")
            .field("token_url", &describe_url(&self.config.token_url))
            .field("client_id", &self.config.client_id.describe())
            .field("client_secret", &self.config.client_secret.describe())
            .field("audience", &self.config.audience)
            .field("scope", &self.config.scope)
            .field("client_auth", &self.config.client_auth)
            .field("body", &self.config.body)
            .field("default_ttl", &self.config.default_ttl)
            .finish_non_exhaustive()
    }
}

impl OAuth2Provider {
    /// A provider for `config`, sending through `client`, resolving secret
    /// references in `env`.
    pub fn new(config: &OAuth2Config, client: TokenClient, env: Arc<dyn EnvSource>) -> Self {
        OAuth2Provider {
            config: config.clone(),
            client,
            env,
        }
    }

    /// Headers and body of one token request.
    fn request(&self, id: &Secret, secret: &Secret) -> Result<(HeaderMap, Bytes), FetchError> {
        let config = &self.config;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let in_body = config.client_auth == ClientAuth::Post;
        if config.client_auth == ClientAuth::Basic {
            headers.insert(
                AUTHORIZATION,
                sensitive_header(&basic_credentials(id, secret), "the client credentials")?,
            );
        }
        let body = match config.body {
            BodyFormat::Form => {
                let mut form = form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "client_credentials");
                if in_body {
                    form.append_pair("client_id", id.expose());
                    form.append_pair("client_secret", secret.expose());
                }
                if let Some(audience) = &config.audience {
                    form.append_pair("audience", audience);
                }
                if let Some(scope) = &config.scope {
                    form.append_pair("scope", scope);
                }
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                );
                Bytes::from(form.finish())
            }
            BodyFormat::Json => {
                let mut object = Map::new();
                if in_body {
                    object.insert("client_id".into(), id.expose().into());
                    object.insert("client_secret".into(), secret.expose().into());
                }
                if let Some(audience) = &config.audience {
                    object.insert("audience".into(), audience.as_str().into());
                }
                if let Some(scope) = &config.scope {
                    object.insert("scope".into(), scope.as_str().into());
                }
                object.insert("grant_type".into(), "client_credentials".into());
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Bytes::from(Value::Object(object).to_string())
            }
        };
        Ok((headers, body))
    }
}

impl Provider for OAuth2Provider {
    async fn fetch(&self, _current: Option<&Token>) -> Result<Token, FetchError> {
        let id = self.config.client_id.resolve(&*self.env)?;
        let secret = self.config.client_secret.resolve(&*self.env)?;
        let (headers, body) = self.request(&id, &secret)?;
        let response = self
            .client
            .post(&self.config.token_url, headers, body)
            .await?
            .error_for_status(&[secret.expose()])?;
        parse_token(&response.json()?, self.config.default_ttl, unix_now())
    }

    fn header_names(&self) -> Vec<HeaderName> {
        vec![AUTHORIZATION]
    }
}

/// RFC 6749 §2.3.1: `base64(urlencode(id) ":" urlencode(secret))`.
fn basic_credentials(id: &Secret, secret: &Secret) -> String {
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(id.expose()), encode(secret.expose()));
    format!("Basic {}", STANDARD.encode(pair))
}

/// A token from an RFC 6749 §5.1 answer; `now` is the system clock in Unix
/// seconds. Public for the fuzz targets (`fuzz/`).
pub fn parse_token(json: &Value, default_ttl: Duration, now: f64) -> Result<Token, FetchError> {
    let access_token = json
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| transient("token endpoint answer has no access_token".to_owned()))?;
    match json.get("token_type") {
        None | Some(Value::Null) => {}
        Some(Value::String(kind)) if kind.eq_ignore_ascii_case("bearer") => {}
        Some(other) => {
            let kind: String = match other {
                Value::String(s) => s.chars().take(40).collect(),
                _ => "a non-string value".to_owned(),
            };
            return Err(transient(format!(
                "token endpoint issued token_type {kind:?}; only Bearer tokens are supported"
            )));
        }
    }
    let lifetime = match lifetime_field(json.get("expires_in"), "expires_in")? {
        Some(lifetime) => lifetime,
        None => match jwt_exp(access_token) {
            Some(exp) => lifetime_until(exp, now).ok_or_else(|| {
                transient(
                    "token endpoint issued an access token whose exp claim has passed \
                     (is the system clock right?)"
                        .to_owned(),
                )
            })?,
            None => default_ttl.min(MAX_LIFETIME),
        },
    };
    let bearer = sensitive_header(&format!("Bearer {access_token}"), "the access token")?;
    Ok(Token {
        value: Secret::new(access_token),
        lifetime: Some(lifetime),
        headers: vec![(AUTHORIZATION, bearer)],
        apis: None,
    })
}

/// The `exp` claim of a JWT (`header.payload.signature`), unverified, in
/// Unix seconds; `None` when the token is not a JWT or `exp` is not a number.
fn jwt_exp(token: &str) -> Option<f64> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD_INDIFFERENT.decode(payload).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_f64().filter(|exp| exp.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jwt(claims: Value) -> String {
        let header = URL_SAFE_NO_PAD_INDIFFERENT.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD_INDIFFERENT.encode(claims.to_string());
        format!("{header}.{payload}.c2lnbmF0dXJl")
    }

    #[test]
    fn basic_credentials_encode_each_part_first() {
        let got = basic_credentials(&Secret::new("my id"), &Secret::new("a:b+c%d é"));
        let decoded = STANDARD
            .decode(got.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            "my+id:a%3Ab%2Bc%25d+%C3%A9"
        );
    }

    #[test]
    fn jwt_exp_is_read_without_verification() {
        assert_eq!(
            jwt_exp(&jwt(json!({"exp": 1_700_000_000}))),
            Some(1_700_000_000.0)
        );
        assert_eq!(jwt_exp(&jwt(json!({"exp": 1e300}))), Some(1e300));
        assert_eq!(jwt_exp(&jwt(json!({"exp": "soon"}))), None);
        assert_eq!(jwt_exp(&jwt(json!({"sub": "x"}))), None);
        assert_eq!(jwt_exp("not-a-jwt"), None);
        assert_eq!(jwt_exp("a.!!!.c"), None);
    }

    #[test]
    fn lifetime_sources_in_order() {
        let ttl = Duration::from_secs(3600);
        let now = 1_000_000.0;
        let token = parse_token(
            &json!({"access_token": "abc", "expires_in": "120", "token_type": "BEARER"}),
            ttl,
            now,
        )
        .unwrap();
        assert_eq!(token.lifetime, Some(Duration::from_secs(120)));
        assert_eq!(token.value.expose(), "abc");
        assert!(token.headers[0].1.is_sensitive());

        let access = jwt(json!({"exp": now + 900.0}));
        let token = parse_token(&json!({"access_token": access}), ttl, now).unwrap();
        assert_eq!(token.lifetime, Some(Duration::from_secs(900)));

        let token = parse_token(&json!({"access_token": "opaque"}), ttl, now).unwrap();
        assert_eq!(token.lifetime, Some(ttl));

        let expired = jwt(json!({"exp": now - 1.0}));
        assert!(parse_token(&json!({"access_token": expired}), ttl, now).is_err());

        // Absurd lifetimes are clamped, never an overflow later.
        let forever = jwt(json!({"exp": 1e300}));
        let token = parse_token(&json!({"access_token": forever}), ttl, now).unwrap();
        assert_eq!(token.lifetime, Some(MAX_LIFETIME));
        let token =
            parse_token(&json!({"access_token": "a", "expires_in": 1e300}), ttl, now).unwrap();
        assert_eq!(token.lifetime, Some(MAX_LIFETIME));
        // A lifetime that is not positive is an error, not "use default_ttl".
        let err = parse_token(&json!({"access_token": "a", "expires_in": 0}), ttl, now)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expires_in"), "{err}");
    }

    #[test]
    fn token_type_must_be_bearer() {
        let ttl = Duration::from_secs(60);
        let err = parse_token(&json!({"access_token": "a", "token_type": "mac"}), ttl, 0.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"mac\""), "{err}");
        assert!(parse_token(&json!({"token_type": "bearer"}), ttl, 0.0).is_err());
    }
}
