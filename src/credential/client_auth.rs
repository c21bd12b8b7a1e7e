//! How an `oauth2` credential proves who it is to its token endpoint
//! (`client_auth`), and which keys each way and each `grant` needs.
//!
//! - `basic` (default): `Authorization: Basic …` of `client_id` and
//!   `client_secret` (RFC 6749 §2.3.1). `post`: both in the body.
//! - `private_key_jwt` (RFC 7523 §2.2, OIDC Core §9): `client_id`,
//!   `client_assertion_type` = jwt-bearer and a fresh assertion signed with
//!   `private_key` ([`super::assertion`]).
//! - `client_assertion`: the same, the assertion being the JWT in
//!   `client_assertion` (a Kubernetes projected service-account token for
//!   Entra ID workload identity federation), read at every token request
//!   because the kubelet rotates it. One whose `exp` has passed is not
//!   sent: the error names the file and says so.
//! - `tls_client_auth` (RFC 8705 §2): `client_id` in the body; the TLS
//!   connection carries `client_cert` (the token client, see
//!   [`super::any`]).
//! - With `grant = "token_exchange"` and no `client_secret`, `basic` and
//!   `post` send `client_id` only (a public client, as security token
//!   services often are).
//!
//! [`check`] lists every mistake for `sidekey check`: a key the mode needs
//! and lacks, a key another mode or grant uses, a key that does not parse,
//! an algorithm the key cannot do, client TLS files that do not load.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use super::assertion::{AssertionSigner, JWT_BEARER, KeyError, SigningKey, jwt_exp};
use super::provider::FetchError;
use super::settings::{ClientAuth, Grant, OAuth2Config};
use super::token_client::{sensitive_header, transient};
use crate::rotating::{self, RotatingCert};
use crate::secret::{EnvSource, Secret, SecretRef};
use crate::tls::TlsError;

/// What client authentication adds to one token request.
#[derive(Debug, Default)]
pub struct Authentication {
    /// `Authorization` (basic), marked sensitive.
    pub header: Option<HeaderValue>,
    /// Body parameters, in order.
    pub params: Vec<(&'static str, Secret)>,
    /// The secrets among them, to cut out of error messages.
    pub secrets: Vec<Secret>,
}

/// The client authentication of one credential.
#[derive(Debug)]
pub struct ClientAuthenticator {
    mode: ClientAuth,
    client_id: SecretRef,
    client_secret: Option<SecretRef>,
    signer: Option<AssertionSigner>,
    assertion: Option<SecretRef>,
    audience: String,
}

impl ClientAuthenticator {
    /// The authentication `config` describes (checked by [`check`]).
    pub fn new(config: &OAuth2Config) -> Self {
        let signer = config.private_key.clone().map(|key| {
            AssertionSigner::new(key, config.signing_alg.clone(), config.key_id.clone())
        });
        let audience = config.assertion_audience.clone();
        ClientAuthenticator {
            mode: config.client_auth,
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            signer,
            assertion: config.client_assertion.clone(),
            audience: audience.unwrap_or_else(|| config.token_url.to_string()),
        }
    }

    /// Read the secrets now and build what one token request carries, at
    /// `now` (Unix seconds, as the token endpoint's clock reads it: signed
    /// assertions are dated by it, and a client assertion's `exp` is
    /// judged on it).
    pub fn authenticate(
        &self,
        env: &dyn EnvSource,
        now: f64,
    ) -> Result<Authentication, FetchError> {
        let id = self.client_id.resolve(env)?;
        let mut auth = Authentication::default();
        let assertion = match (self.mode, &self.client_secret) {
            (ClientAuth::Basic, Some(secret)) => {
                let secret = secret.resolve(env)?;
                let basic = basic_credentials(&id, &secret);
                auth.header = Some(sensitive_header(&basic, "the client credentials")?);
                auth.secrets.push(secret);
                None
            }
            (ClientAuth::Post, Some(secret)) => {
                let secret = secret.resolve(env)?;
                auth.params.push(("client_id", id));
                auth.params.push(("client_secret", secret.clone()));
                auth.secrets.push(secret);
                return Ok(auth);
            }
            (ClientAuth::PrivateKeyJwt, _) => {
                let signer = self.signer.as_ref().ok_or_else(|| missing("private_key"))?;
                Some(signer.assertion(env, id.expose(), &self.audience, now.max(0.0) as u64)?)
            }
            (ClientAuth::ClientAssertion, _) => {
                let source = self
                    .assertion
                    .as_ref()
                    .ok_or_else(|| missing("client_assertion"))?;
                let jwt = source.resolve(env)?;
                if let Some(exp) = jwt_exp(jwt.expose())
                    && exp <= now
                {
                    // Years late is more likely a clock years ahead (a node
                    // started before NTP set it) than years without rotation.
                    let clock = if now - exp > CLOCK_SUSPECT_AFTER.as_secs_f64() {
                        " If it is, this system's clock may be that far ahead: is the \
                         system clock right?"
                    } else {
                        ""
                    };
                    return Err(transient(format!(
                        "the client assertion in {} expired {:.0}s ago; is it still being \
                         rotated (a projected service-account token is renewed by the kubelet)?\
                         {clock}",
                        source.describe(),
                        now - exp
                    )));
                }
                Some(jwt)
            }
            (ClientAuth::Basic | ClientAuth::Post | ClientAuth::TlsClientAuth, _) => {
                auth.params.push(("client_id", id));
                return Ok(auth);
            }
        };
        if let Some(assertion) = assertion {
            auth.params.push(("client_id", id));
            auth.params
                .push(("client_assertion_type", Secret::new(JWT_BEARER)));
            auth.params.push(("client_assertion", assertion.clone()));
            auth.secrets.push(assertion);
        }
        Ok(auth)
    }
}

/// How long ago a client assertion may have expired before its message
/// says the system clock may be wrong.
const CLOCK_SUSPECT_AFTER: Duration = Duration::from_secs(86_400);

fn missing(key: &str) -> FetchError {
    transient(format!("client authentication needs `{key}`"))
}

/// RFC 6749 §2.3.1: `base64(urlencode(id) ":" urlencode(secret))`.
pub(crate) fn basic_credentials(id: &Secret, secret: &Secret) -> String {
    use base64::Engine as _;
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(id.expose()), encode(secret.expose()));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// The client certificate of `tls_client_auth`, read now and again when
/// its files change; `None` for the other modes.
pub fn client_certificate(config: &OAuth2Config) -> Result<Option<Arc<RotatingCert>>, TlsError> {
    let (ClientAuth::TlsClientAuth, Some(cert), Some(SecretRef::File(key))) =
        (config.client_auth, &config.client_cert, &config.client_key)
    else {
        return Ok(None);
    };
    let cert = rotating::cert("token endpoint client certificate", cert, key)?;
    rotating::watch(&[cert.clone() as _]);
    Ok(Some(cert))
}

/// Every mistake in the client authentication and grant keys of `config`,
/// as (key to name, message). Reads the key files (never quoting them).
pub fn check(config: &OAuth2Config, env: &dyn EnvSource) -> Vec<(&'static str, String)> {
    let mut errors = Vec::new();
    let mode = config.client_auth;
    let mode_name = match mode {
        ClientAuth::Basic => "basic",
        ClientAuth::Post => "post",
        ClientAuth::PrivateKeyJwt => "private_key_jwt",
        ClientAuth::ClientAssertion => "client_assertion",
        ClientAuth::TlsClientAuth => "tls_client_auth",
    };
    let exchange = config.grant == Grant::TokenExchange;
    let secret_mode = matches!(mode, ClientAuth::Basic | ClientAuth::Post);
    let keys: [(&'static str, bool, bool); 10] = [
        // (key, set, used by this mode and grant)
        ("client_secret", config.client_secret.is_some(), secret_mode),
        (
            "private_key",
            config.private_key.is_some(),
            mode == ClientAuth::PrivateKeyJwt,
        ),
        (
            "key_id",
            config.key_id.is_some(),
            mode == ClientAuth::PrivateKeyJwt,
        ),
        (
            "signing_alg",
            config.signing_alg.is_some(),
            mode == ClientAuth::PrivateKeyJwt,
        ),
        (
            "assertion_audience",
            config.assertion_audience.is_some(),
            mode == ClientAuth::PrivateKeyJwt,
        ),
        (
            "client_assertion",
            config.client_assertion.is_some(),
            mode == ClientAuth::ClientAssertion,
        ),
        (
            "client_cert",
            config.client_cert.is_some(),
            mode == ClientAuth::TlsClientAuth,
        ),
        (
            "client_key",
            config.client_key.is_some(),
            mode == ClientAuth::TlsClientAuth,
        ),
        (
            "subject_token_type",
            config.subject_token_type.is_some(),
            exchange,
        ),
        ("resource", config.resource.is_some(), exchange),
    ];
    for (key, set, used) in keys {
        if set && !used {
            let message = match key {
                "subject_token_type" | "resource" => {
                    format!("`{key}` is only sent with grant = \"token_exchange\"")
                }
                _ => format!("`{key}` is not used with client_auth = \"{mode_name}\""),
            };
            errors.push((key, message));
        }
    }
    if config.subject_token.is_some() != exchange {
        let message = match exchange {
            true => "missing key `subject_token` (required with grant = \"token_exchange\")",
            false => "`subject_token` is only sent with grant = \"token_exchange\"",
        };
        let key = if exchange { "grant" } else { "subject_token" };
        errors.push((key, message.to_owned()));
    }
    let required: &[&'static str] = match mode {
        ClientAuth::Basic | ClientAuth::Post if !exchange => &["client_secret"],
        ClientAuth::Basic | ClientAuth::Post => &[],
        ClientAuth::PrivateKeyJwt => &["private_key"],
        ClientAuth::ClientAssertion => &["client_assertion"],
        ClientAuth::TlsClientAuth => &["client_cert", "client_key"],
    };
    for key in required {
        if !keys.iter().any(|(k, set, _)| k == key && *set) {
            let message =
                format!("missing key `{key}` (required with client_auth = \"{mode_name}\")");
            errors.push(("client_auth", message));
        }
    }
    if let (ClientAuth::PrivateKeyJwt, Some(private_key)) = (mode, &config.private_key) {
        match private_key.resolve_pem(env) {
            Err(e) => errors.push(("private_key", e.to_string())),
            Ok(pem) => {
                let alg = config.signing_alg.as_deref();
                if let Err(e) = SigningKey::from_pem(pem.expose().as_bytes(), alg) {
                    let key = match e {
                        KeyError::UnknownAlg(_) | KeyError::Mismatch { .. } => "signing_alg",
                        _ => "private_key",
                    };
                    let message = match key {
                        "private_key" => format!("{} {e}", private_key.describe()),
                        _ => e.to_string(),
                    };
                    errors.push((key, message));
                }
            }
        }
    }
    if mode == ClientAuth::TlsClientAuth
        && let (Some(cert), Some(key)) = (&config.client_cert, &config.client_key)
    {
        match key {
            SecretRef::File(key) => check_tls_files(cert, key, &mut errors),
            _ => errors.push((
                "client_key",
                "`client_key` must be { file = \"PATH\" } (a PEM key file)".to_owned(),
            )),
        }
    }
    errors
}

/// The client certificate and key load and match.
fn check_tls_files(cert: &Path, key: &Path, errors: &mut Vec<(&'static str, String)>) {
    let certs =
        crate::tls::load_certs(cert).map_err(|e| errors.push(("client_cert", e.to_string())));
    let key_ok =
        crate::tls::load_private_key(key).map_err(|e| errors.push(("client_key", e.to_string())));
    if certs.is_ok()
        && key_ok.is_ok()
        && let Err(e) = rotating::cert("token endpoint client certificate", cert, key)
    {
        errors.push(("client_cert", e.to_string()));
    }
}
