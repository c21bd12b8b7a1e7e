//! `type = "inbenta"`: Inbenta's Auth API (`{auth_url}/auth` and
//! `{auth_url}/refreshToken`).
//!
//! Obtaining a token (`POST {auth_url}/auth`, `content-type:
//! application/json`, `x-inbenta-key: <api_key>`):
//! - API Secret flow: body `{"secret": "<secret>"}`.
//! - Domain Key flow: body `{"domain_key": "<domain key>"}`. The provider
//!   documents in `seeds/` say only that the domain key is sent to `/auth` in
//!   place of the secret, not under which field; `domain_key` is the name
//!   Inbenta's public SDKs use, so that is what is sent.
//! - `Origin: <origin>` whenever `origin` is configured (the domain key is
//!   bound to a list of domains, checked against the Origin).
//! - `x-oauth-token: Bearer <oauth_token>` when `oauth_token` is configured;
//!   like every secret here it is re-read on each call.
//!
//! The answer's `accessToken` is required. Its lifetime is `expires_in`
//! (seconds: a positive number or numeric string), else the absolute
//! `expiration` (Unix seconds) minus the system clock; a value that is not a
//! number, not positive, or already past is an error to retry. Lifetimes are
//! clamped to a year. `apis` (product → base URL) becomes
//! [`Token::apis`]; entries that are not absolute URLs are skipped with a
//! warning.
//!
//! Renewal: when the engine passes the still-valid current token,
//! `POST {auth_url}/refreshToken` with `Authorization: Bearer <accessToken>`
//! and `x-inbenta-key` is tried first. Its answer may carry only
//! `accessToken` and `expiration`/`expires_in`; the previous `apis` map is
//! kept then. If the refresh fails for any reason, one warning says why and a
//! new token is obtained through `/auth`. Each of the two requests has the
//! credential's whole `timeout`; the engine's limit on one renewal leaves
//! room for both (see [`super::EngineSettings::from_config`]).
//!
//! Error text from either endpoint is redacted of the `api_key`, the secret
//! or domain key, the `oauth_token` and the access token sent to
//! `/refreshToken`, in every spelling (see [`super::redact`]).
//!
//! `auth_url` may carry a base path (`https://api.inbenta.io/v1`), with or
//! without a trailing `/`. Every proxied request carries `authorization:
//! Bearer <accessToken>` and `x-inbenta-key: <api_key>`; an `accessToken`
//! (or `oauth_token`) that cannot be sent as a Bearer token (see
//! [`super::bearer`]) is an error to retry, and the token held keeps serving;
//! so is an `api_key` that cannot be sent as one token.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, ORIGIN};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use serde_json::{Value, json};

use super::bearer::{bearer_header, token_text};
use super::provider::{ApiMap, FetchError, Provider, Token, api_url};
use super::settings::{InbentaConfig, InbentaKey};
use super::token_client::{
    TokenClient, describe_url, lifetime_field, lifetime_until, sensitive_header, transient,
    unix_time_field,
};
use crate::secret::{EnvSource, Secret};

/// `x-inbenta-key`.
const X_INBENTA_KEY: HeaderName = HeaderName::from_static("x-inbenta-key");
/// `x-oauth-token`.
const X_OAUTH_TOKEN: HeaderName = HeaderName::from_static("x-oauth-token");

/// Obtains and renews Inbenta access tokens.
pub struct InbentaProvider {
    config: InbentaConfig,
    client: TokenClient,
    env: Arc<dyn EnvSource>,
}

impl fmt::Debug for InbentaProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flow = match &self.config.key {
            InbentaKey::Secret(r) => format!("secret from {}", r.describe()),
            InbentaKey::DomainKey(r) => format!("domain key from {}", r.describe()),
        };
        f.debug_struct("InbentaProvider")
            .field("auth_url", &describe_url(&self.config.auth_url))
            .field("api_key", &self.config.api_key.describe())
            .field("flow", &flow)
            .field("origin", &self.config.origin)
            .field(
                "oauth_token",
                &self.config.oauth_token.as_ref().map(|r| r.describe()),
            )
            .finish_non_exhaustive()
    }
}

impl InbentaProvider {
    /// A provider for `config`, sending through `client`, resolving secret
    /// references in `env`.
    pub fn new(config: &InbentaConfig, client: TokenClient, env: Arc<dyn EnvSource>) -> Self {
        InbentaProvider {
            config: config.clone(),
            client,
            env,
        }
    }

    /// `{auth_url}/{name}`, whether or not `auth_url` ends with `/`.
    fn endpoint(&self, name: &str) -> Result<Uri, FetchError> {
        let base = &self.config.auth_url;
        let path = format!("{}/{name}", base.path().trim_end_matches('/'));
        let mut builder = Uri::builder().path_and_query(path);
        if let Some(scheme) = base.scheme() {
            builder = builder.scheme(scheme.clone());
        }
        if let Some(authority) = base.authority() {
            builder = builder.authority(authority.clone());
        }
        builder
            .build()
            .map_err(|e| transient(format!("cannot build the Inbenta {name} URL: {e}")))
    }

    /// A new token through `/auth`.
    async fn auth(&self, api_key: &Secret) -> Result<Token, FetchError> {
        let (field, key) = match &self.config.key {
            InbentaKey::Secret(r) => ("secret", r.resolve(&*self.env)?),
            InbentaKey::DomainKey(r) => ("domain_key", r.resolve(&*self.env)?),
        };
        let oauth = match &self.config.oauth_token {
            Some(r) => Some(r.resolve(&*self.env)?),
            None => None,
        };
        let mut headers = base_headers(api_key)?;
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(origin) = &self.config.origin {
            headers.insert(ORIGIN, origin.clone());
        }
        if let Some(oauth) = &oauth {
            headers.insert(X_OAUTH_TOKEN, bearer_header(oauth.expose(), "oauth_token")?);
        }
        let body = Bytes::from(json!({ field: key.expose() }).to_string());
        let mut redact = vec![api_key.expose(), key.expose()];
        redact.extend(oauth.as_ref().map(Secret::expose));
        let response = self
            .client
            .post(&self.endpoint("auth")?, headers, body)
            .await?
            .error_for_status(&redact)?;
        // `expiration` is the server's clock: counted from its `Date`.
        parse_token(
            &response.json()?,
            api_key,
            None,
            self.client.endpoint_unix_now(),
        )
    }

    /// A renewed token through `/refreshToken`.
    async fn refresh(&self, api_key: &Secret, current: &Token) -> Result<Token, FetchError> {
        let mut headers = base_headers(api_key)?;
        headers.insert(
            AUTHORIZATION,
            bearer_header(current.value.expose(), "the access token")?,
        );
        let response = self
            .client
            .post(&self.endpoint("refreshToken")?, headers, Bytes::new())
            .await?
            .error_for_status(&[api_key.expose(), current.value.expose()])?;
        parse_token(
            &response.json()?,
            api_key,
            current.apis.as_ref(),
            self.client.endpoint_unix_now(),
        )
    }
}

impl Provider for InbentaProvider {
    async fn fetch(&self, current: Option<&Token>) -> Result<Token, FetchError> {
        let api_key = self.config.api_key.resolve(&*self.env)?;
        // Sent in x-inbenta-key with every request: one token, like the access token.
        let api_key = Secret::new(token_text(api_key.expose(), "api_key", false)?);
        if let Some(current) = current {
            match self.refresh(&api_key, current).await {
                Ok(token) => return Ok(token),
                Err(err) => tracing::warn!(
                    error = %err,
                    "Inbenta token refresh failed; obtaining a new token through /auth"
                ),
            }
        }
        self.auth(&api_key).await
    }

    fn header_names(&self) -> Vec<HeaderName> {
        vec![AUTHORIZATION, X_INBENTA_KEY]
    }
}

/// `x-inbenta-key` and `accept`, sent to both endpoints.
fn base_headers(api_key: &Secret) -> Result<HeaderMap, FetchError> {
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    headers.insert(
        X_INBENTA_KEY,
        sensitive_header(api_key.expose(), "api_key")?,
    );
    Ok(headers)
}

/// A token from an `/auth` or `/refreshToken` answer. `previous_apis` is kept
/// when the answer has no `apis`; `now` is the time in Unix seconds as the
/// server's clock reads it ([`TokenClient::endpoint_unix_now`]).
/// Public for the fuzz targets (`fuzz/`).
pub fn parse_token(
    json: &Value,
    api_key: &Secret,
    previous_apis: Option<&Arc<ApiMap>>,
    now: f64,
) -> Result<Token, FetchError> {
    let access_token = json
        .get("accessToken")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| transient("Inbenta answer has no accessToken".to_owned()))?;
    let access_token = token_text(access_token, "the access token", false)?;
    let lifetime = match lifetime_field(json.get("expires_in"), "expires_in")? {
        Some(lifetime) => lifetime,
        None => match unix_time_field(json.get("expiration"), "expiration")? {
            Some(expiration) => lifetime_until(expiration, now).ok_or_else(|| {
                transient(
                    "Inbenta answer's expiration has already passed (is the system clock right?)"
                        .to_owned(),
                )
            })?,
            None => {
                return Err(transient(
                    "Inbenta answer has neither expires_in nor expiration".to_owned(),
                ));
            }
        },
    };
    let apis = match json.get("apis") {
        Some(Value::Object(map)) => Some(Arc::new(parse_apis(map))),
        Some(Value::Null) | None => previous_apis.cloned(),
        Some(_) => {
            tracing::warn!("Inbenta answer's apis is not an object; ignored");
            previous_apis.cloned()
        }
    };
    let headers = vec![
        (
            AUTHORIZATION,
            bearer_header(access_token, "the access token")?,
        ),
        (
            X_INBENTA_KEY,
            sensitive_header(api_key.expose(), "api_key")?,
        ),
    ];
    Ok(Token {
        value: Secret::new(access_token),
        lifetime: Some(lifetime),
        headers,
        apis,
    })
}

/// Product name → base URL; entries that are not absolute URLs (or name
/// a port outside 1-65535) are skipped.
fn parse_apis(map: &serde_json::Map<String, Value>) -> ApiMap {
    let mut apis = HashMap::with_capacity(map.len());
    for (name, value) in map {
        match value.as_str().and_then(api_url) {
            Some(uri) => {
                apis.insert(name.clone(), uri);
            }
            None => tracing::warn!(
                api = %name.chars().take(64).collect::<String>(),
                "Inbenta answer's apis entry is not an absolute URL with a valid port; skipped"
            ),
        }
    }
    apis
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lifetime_from_expires_in_then_expiration() {
        let key = Secret::new("key");
        let t = parse_token(
            &json!({"accessToken": "a", "expires_in": "1200", "expiration": 5}),
            &key,
            None,
            1000.0,
        )
        .unwrap();
        assert_eq!(t.lifetime, Some(Duration::from_secs(1200)));
        let t = parse_token(
            &json!({"accessToken": "a", "expiration": 1600}),
            &key,
            None,
            1000.0,
        )
        .unwrap();
        assert_eq!(t.lifetime, Some(Duration::from_secs(600)));
        assert!(
            parse_token(
                &json!({"accessToken": "a", "expiration": 999}),
                &key,
                None,
                1000.0
            )
            .is_err()
        );
        assert!(parse_token(&json!({"accessToken": "a"}), &key, None, 1000.0).is_err());
        assert!(parse_token(&json!({"expires_in": 10}), &key, None, 1000.0).is_err());
        for (field, bad) in [("expires_in", json!(0)), ("expiration", json!("never"))] {
            let err = parse_token(&json!({"accessToken": "a", field: bad}), &key, None, 1000.0)
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn apis_parsed_or_kept() {
        let key = Secret::new("key");
        let t = parse_token(
            &json!({"accessToken": "a", "expires_in": 10, "apis": {
                "chatbot": "https://api-gce3.inbenta.io/prod/chatbot",
                "broken": "not a url",
                "number": 5
            }}),
            &key,
            None,
            0.0,
        )
        .unwrap();
        let apis = t.apis.unwrap();
        assert_eq!(apis.len(), 1);
        assert_eq!(
            apis["chatbot"].to_string(),
            "https://api-gce3.inbenta.io/prod/chatbot"
        );
        let kept = parse_token(
            &json!({"accessToken": "b", "expires_in": 10}),
            &key,
            Some(&apis),
            0.0,
        )
        .unwrap();
        assert!(Arc::ptr_eq(&kept.apis.unwrap(), &apis));
    }
}
