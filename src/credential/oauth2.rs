//! `type = "oauth2"`: the OAuth 2.0 client credentials grant (RFC 6749
//! §4.4) or token exchange (RFC 8693, `grant = "token_exchange"`).
//!
//! Each [`OAuth2Provider::fetch`] re-reads its secrets (`client_id`,
//! `client_secret`, `private_key`, `client_assertion`, `subject_token`: a
//! rotated file is picked up on the next renewal) and POSTs one token
//! request to `token_url`:
//!
//! - Client authentication by `client_auth` ([`super::client_auth`]): the
//!   default `basic` is `Authorization: Basic base64(urlencode(id) ":"
//!   urlencode(secret))`, each part encoded with
//!   `application/x-www-form-urlencoded` as RFC 6749 §2.3.1 requires, so a
//!   secret holding `:`, `+`, `%`, spaces or non-ASCII round-trips; `post`,
//!   `private_key_jwt`, `client_assertion` and `tls_client_auth` put their
//!   parameters in the body.
//! - The grant: `grant_type=client_credentials`, or for a token exchange
//!   `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`,
//!   `subject_token` (read at every request) and `subject_token_type`
//!   (default `urn:ietf:params:oauth:token-type:jwt`); then `audience`,
//!   `resource` and `scope` when set.
//! - `body = "form"` (default): those fields form-encoded, `grant_type`
//!   first. `body = "json"` (Auth0): the same fields as one JSON object,
//!   e.g. Pliant's `{"client_id", "client_secret", "audience", "grant_type":
//!   "client_credentials"}`.
//! - `Accept: application/json`. Every secret sent (client secret,
//!   assertion, subject token) is cut out of error messages.
//!
//! A token exchange answer's `issued_token_type`, when present, must be an
//! access token, a JWT or an ID token, and its `token_type` may be `N_A`
//! ([`parse_exchanged`]). The answer's `access_token` is required; `token_type`, when present, must
//! be `bearer` in any case. The lifetime is `expires_in` (a positive number
//! or numeric string; `0`, negative or non-numeric values are an error to
//! retry, not "no lifetime"); without it, the `exp` claim of a JWT access
//! token (payload decoded, the signature is not checked: only the issuer's
//! word on its own token's expiry is read) relative to the system clock —
//! or, when the JWT's `iat` lies more than [`CLOCK_TOLERANCE`] ahead of that
//! clock or its `exp` has passed on it (a box started before NTP set it,
//! years off), `exp - iat`, the
//! lifetime the issuer gave it, with a warning that the clock looks wrong;
//! without `exp`, `default_ttl`. Lifetimes are clamped to a year.
//!
//! Every request carries `authorization: Bearer <access_token>`; an access
//! token that cannot be sent so (see [`super::bearer`]) is an error to
//! retry, and the token held keeps serving.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::assertion::{jwt_claims, jwt_exp};
use super::bearer::{bearer_header, token_text};
use super::client_auth::ClientAuthenticator;
use super::provider::{FetchError, Provider, Token};
use super::settings::{BodyFormat, Grant, OAuth2Config};
use super::token_client::{
    MAX_LIFETIME, TokenClient, describe_url, lifetime_field, lifetime_until, transient,
};
use crate::secret::{EnvSource, Secret, SecretRef};

/// Obtains tokens with the client credentials grant or a token exchange.
pub struct OAuth2Provider {
    config: Box<OAuth2Config>,
    auth: ClientAuthenticator,
    client: TokenClient,
    env: Arc<dyn EnvSource>,
}

impl fmt::Debug for OAuth2Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subject_token = self.config.subject_token.as_ref();
        f.debug_struct("OAuth2Provider")
            .field("token_url", &describe_url(&self.config.token_url))
            .field("grant", &self.config.grant)
            .field("auth", &self.auth)
            .field("subject_token", &subject_token.map(SecretRef::describe))
            .field("audience", &self.config.audience)
            .field("scope", &self.config.scope)
            .field("body", &self.config.body)
            .field("default_ttl", &self.config.default_ttl)
            .finish_non_exhaustive()
    }
}

impl OAuth2Provider {
    /// A provider for `config`, sending through `client`, resolving secret
    /// references in `env`. With `client_auth = "tls_client_auth"`, `client`
    /// must present the client certificate
    /// ([`super::client_auth::client_certificate`]).
    pub fn new(config: &OAuth2Config, client: TokenClient, env: Arc<dyn EnvSource>) -> Self {
        OAuth2Provider {
            config: Box::new(config.clone()),
            auth: ClientAuthenticator::new(config),
            client,
            env,
        }
    }

    /// The grant's parameters: `grant_type`, the subject token of a token
    /// exchange (read now), `audience`, `resource`, `scope`; the secrets
    /// among them are added to `secrets`.
    fn grant(&self, secrets: &mut Vec<Secret>) -> Result<Vec<(&'static str, Secret)>, FetchError> {
        let config = &self.config;
        let text = |value: &str| Secret::new(value);
        let mut params = Vec::new();
        match (config.grant, &config.subject_token) {
            (Grant::TokenExchange, Some(subject)) => {
                let subject = subject.resolve(&*self.env)?;
                params.push(("grant_type", text(TOKEN_EXCHANGE)));
                params.push(("subject_token", subject.clone()));
                let kind = config
                    .subject_token_type
                    .as_deref()
                    .unwrap_or(JWT_TOKEN_TYPE);
                params.push(("subject_token_type", text(kind)));
                secrets.push(subject);
            }
            (Grant::TokenExchange, None) => {
                return Err(transient("token exchange needs `subject_token`".to_owned()));
            }
            (Grant::ClientCredentials, _) => {
                params.push(("grant_type", text("client_credentials")));
            }
        }
        if let Some(audience) = &config.audience {
            params.push(("audience", text(audience)));
        }
        if let Some(resource) = &config.resource {
            params.push(("resource", text(resource)));
        }
        if let Some(scope) = &config.scope {
            params.push(("scope", text(scope)));
        }
        Ok(params)
    }

    /// Headers and body of one token request, and the secrets it carries.
    fn request(&self) -> Result<(HeaderMap, Bytes, Vec<Secret>), FetchError> {
        let auth = (self.auth).authenticate(&*self.env, self.client.endpoint_unix_now())?;
        let mut secrets = auth.secrets;
        let grant = self.grant(&mut secrets)?;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.extend(auth.header.map(|basic| (AUTHORIZATION, basic)));
        // grant_type first, as RFC 6749's examples (and strict parsers) have it.
        let mut grant = grant.into_iter();
        let grant_type = grant.next();
        let params = grant_type.into_iter().chain(auth.params).chain(grant);
        let body = match self.config.body {
            BodyFormat::Form => {
                let mut form = form_urlencoded::Serializer::new(String::new());
                for (name, value) in params {
                    form.append_pair(name, value.expose());
                }
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                );
                Bytes::from(form.finish())
            }
            BodyFormat::Json => {
                let object: Map<String, Value> = params
                    .map(|(name, value)| (name.to_owned(), value.expose().into()))
                    .collect();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Bytes::from(Value::Object(object).to_string())
            }
        };
        Ok((headers, body, secrets))
    }
}

impl Provider for OAuth2Provider {
    async fn fetch(&self, _current: Option<&Token>) -> Result<Token, FetchError> {
        let (headers, body, secrets) = self.request()?;
        let secrets: Vec<&str> = secrets.iter().map(Secret::expose).collect();
        let response = self
            .client
            .post(&self.config.token_url, headers, body)
            .await?
            .error_for_status(&secrets)?;
        let json = response.json()?;
        // A JWT's `exp` is the issuer's clock: counted from its `Date`.
        let now = self.client.endpoint_unix_now();
        match self.config.grant {
            Grant::ClientCredentials => parse_token(&json, self.config.default_ttl, now),
            Grant::TokenExchange => parse_exchanged(&json, self.config.default_ttl, now),
        }
    }

    fn header_names(&self) -> Vec<HeaderName> {
        vec![AUTHORIZATION]
    }
}

/// `grant_type` of RFC 8693 §2.1.
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// The default `subject_token_type`.
const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// The `issued_token_type`s (RFC 8693 §3) that can be sent as a Bearer token.
const BEARER_TOKEN_TYPES: [&str; 3] = [
    "urn:ietf:params:oauth:token-type:access_token",
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
];

/// A token from an RFC 8693 §2.2.1 answer: `issued_token_type`, when
/// present, must be one sent as a Bearer token, and `token_type` may be
/// `N_A` (the issued token is not an OAuth access token, e.g. a JWT);
/// otherwise as [`parse_token`].
pub fn parse_exchanged(json: &Value, default_ttl: Duration, now: f64) -> Result<Token, FetchError> {
    match json.get("issued_token_type") {
        None | Some(Value::Null) => {}
        Some(Value::String(kind)) if BEARER_TOKEN_TYPES.contains(&kind.as_str()) => {}
        Some(other) => {
            let kind: String = other.to_string().chars().take(80).collect();
            return Err(transient(format!(
                "token endpoint issued_token_type {kind}, which is not sent as a Bearer \
                 token (expected access_token, jwt or id_token)"
            )));
        }
    }
    let not_applicable = json
        .get("token_type")
        .and_then(Value::as_str)
        .is_some_and(|kind| kind.eq_ignore_ascii_case("N_A"));
    if not_applicable && let Value::Object(object) = json {
        let mut object = object.clone();
        object.remove("token_type");
        return parse_token(&Value::Object(object), default_ttl, now);
    }
    parse_token(json, default_ttl, now)
}

/// A token from an RFC 6749 §5.1 answer; `now` is the system clock in Unix
/// seconds. Public for the fuzz targets (`fuzz/`).
pub fn parse_token(json: &Value, default_ttl: Duration, now: f64) -> Result<Token, FetchError> {
    let access_token = json
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| transient("token endpoint answer has no access_token".to_owned()))?;
    let access_token = token_text(access_token, "the access token", false)?;
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
            Some(exp) => jwt_lifetime(exp, jwt_iat(access_token), now)?,
            None => default_ttl.min(MAX_LIFETIME),
        },
    };
    let bearer = bearer_header(access_token, "the access token")?;
    Ok(Token {
        value: Secret::new(access_token),
        lifetime: Some(lifetime),
        headers: vec![(AUTHORIZATION, bearer)],
        apis: None,
    })
}

/// How far a JWT access token's `iat` may lie from the system clock before
/// the clock (or the issuer's) is taken to be wrong.
pub const CLOCK_TOLERANCE: Duration = Duration::from_secs(60);

/// The `iat` claim of a JWT, unverified, in Unix seconds.
fn jwt_iat(token: &str) -> Option<f64> {
    let claims = jwt_claims(token)?;
    claims.get("iat")?.as_f64().filter(|iat| iat.is_finite())
}

/// A JWT access token's lifetime from its `exp` (and `iat`), at `now` on
/// the system clock. A token issued ahead of this clock (`iat` later than
/// `now` by more than [`CLOCK_TOLERANCE`]) or already past its `exp` tells
/// that the clock is wrong: counted from `now`, a 15-minute token would be
/// served for a year (clock behind) or refused as expired (clock ahead);
/// its lifetime is then `exp - iat`. A token issued a while ago and not yet
/// expired (an issuer handing out the token it issued earlier) is counted
/// from `now`: `exp - iat` would outlive it.
fn jwt_lifetime(exp: f64, iat: Option<f64>, now: f64) -> Result<Duration, FetchError> {
    let off = iat
        .filter(|&iat| iat < exp)
        .filter(|&iat| iat - now > CLOCK_TOLERANCE.as_secs_f64() || now >= exp);
    if let Some(iat) = off {
        let lifetime = lifetime_until(exp, iat)
            .ok_or_else(|| transient("the access token's exp is not after its iat".to_owned()))?;
        tracing::warn!(
            "the access token was issued (iat) {:.0} s {} this system's clock: the clock looks \
             wrong; its lifetime is taken as exp - iat = {} s",
            (now - iat).abs(),
            if iat > now { "ahead of" } else { "behind" },
            lifetime.as_secs()
        );
        return Ok(lifetime);
    }
    lifetime_until(exp, now).ok_or_else(|| {
        transient(
            "token endpoint issued an access token whose exp claim has passed \
             (is the system clock right?)"
                .to_owned(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::super::client_auth::basic_credentials;
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD_INDIFFERENT};
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
    fn a_jwt_lifetime_is_exp_minus_iat_only_when_the_clock_is_plainly_wrong() {
        let now = 1_000_000.0;
        let secs = |lifetime: Result<Duration, FetchError>| lifetime.unwrap().as_secs();
        // Issued 30 min ago, 30 min left (an issuer handing out the token
        // it issued earlier): counted from now, never exp - iat.
        assert_eq!(
            secs(jwt_lifetime(now + 1800.0, Some(now - 1800.0), now)),
            1800
        );
        // Issued years ahead of this clock (the clock is behind).
        let iat = now + 4.0 * 31_536_000.0;
        assert_eq!(secs(jwt_lifetime(iat + 900.0, Some(iat), now)), 900);
        // Already past its exp on this clock (the clock is ahead).
        let iat = now - 4.0 * 31_536_000.0;
        assert_eq!(secs(jwt_lifetime(iat + 900.0, Some(iat), now)), 900);
        // Within the tolerance: counted from now.
        assert_eq!(secs(jwt_lifetime(now + 900.0, Some(now + 30.0), now)), 900);
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

    #[test]
    fn exchanged_tokens_must_be_bearer_kinds_and_may_be_n_a() {
        let ttl = Duration::from_secs(60);
        let jwt_type = "urn:ietf:params:oauth:token-type:jwt";
        let answer =
            json!({"access_token": "a", "issued_token_type": jwt_type, "token_type": "N_A"});
        assert_eq!(
            parse_exchanged(&answer, ttl, 0.0).unwrap().value.expose(),
            "a"
        );
        // Only an exchange may say N_A.
        assert!(parse_token(&answer, ttl, 0.0).is_err());
        let saml = json!({"access_token": "a",
            "issued_token_type": "urn:ietf:params:oauth:token-type:saml2"});
        let err = parse_exchanged(&saml, ttl, 0.0).unwrap_err().to_string();
        assert!(err.contains("saml2"), "{err}");
        let untyped = json!({"access_token": "a", "token_type": "Bearer", "expires_in": 5});
        let token = parse_exchanged(&untyped, ttl, 0.0).unwrap();
        assert_eq!(token.lifetime, Some(Duration::from_secs(5)));
    }
}
