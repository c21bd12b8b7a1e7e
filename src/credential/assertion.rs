//! RFC 7523 client assertions: the PEM key of `private_key`, the JWS
//! algorithm it signs with, and the signed JWT one token request carries.
//!
//! - A key is PKCS#8 (`BEGIN PRIVATE KEY`, any of the kinds below) or
//!   PKCS#1 (`BEGIN RSA PRIVATE KEY`). RSA → RS256, EC P-256 → ES256, EC
//!   P-384 → ES384, Ed25519 → EdDSA; `signing_alg` chooses another that the
//!   key can do (RS384, RS512, PS256, PS384, PS512). Signed with `ring`, the
//!   crypto rustls already uses here: three signature families and a JSON
//!   header need no JOSE crate and no second crypto stack.
//! - [`AssertionSigner`] parses the key on first use and again only when
//!   the bytes of its source change (a rotated key file); the `check`
//!   command parses it at load ([`SigningKey::from_pem`]).
//! - Each assertion is fresh: `iss` = `sub` = the client id, `aud` (the
//!   token endpoint URL unless `assertion_audience` says otherwise), a
//!   random 128-bit `jti`, `iat` now and `exp` [`ASSERTION_LIFETIME`] later.
//! - No key material and no assertion appears in any message or `Debug`.

use std::fmt;
use std::hash::{DefaultHasher, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE_NO_PAD, URL_SAFE_NO_PAD_INDIFFERENT};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, RsaEncoding, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};

use super::provider::FetchError;
use super::token_client::transient;
use crate::secret::{EnvSource, Secret, SecretRef};

/// How long an assertion is valid: `exp` is this far after `iat`.
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(300);

/// `client_assertion_type` of RFC 7523 §2.2.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// What kind of key a PEM file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Rsa => "an RSA key",
            Kind::P256 => "an EC P-256 key",
            Kind::P384 => "an EC P-384 key",
            Kind::Ed25519 => "an Ed25519 key",
        })
    }
}

/// Every `signing_alg`, the key kind it needs; the first of a kind is its default.
const ALGORITHMS: [(&str, Kind); 9] = [
    ("RS256", Kind::Rsa),
    ("RS384", Kind::Rsa),
    ("RS512", Kind::Rsa),
    ("PS256", Kind::Rsa),
    ("PS384", Kind::Rsa),
    ("PS512", Kind::Rsa),
    ("ES256", Kind::P256),
    ("ES384", Kind::P384),
    ("EdDSA", Kind::Ed25519),
];

/// Why a key cannot sign. Never holds key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No PEM private key in the text.
    #[error("holds no PEM private key{0}")]
    NoKey(&'static str),
    /// A PEM key of a form or kind that cannot sign assertions.
    #[error("holds {0}")]
    Unusable(String),
    /// `signing_alg` names no algorithm.
    #[error(
        "signing_alg {0:?} is not one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
    )]
    UnknownAlg(String),
    /// `signing_alg` needs another kind of key.
    #[error("signing_alg {alg} needs {needs}, but private_key holds {has}")]
    Mismatch {
        /// The algorithm.
        alg: &'static str,
        /// What it needs.
        needs: String,
        /// What the key is.
        has: String,
    },
    /// ring failed to sign (no randomness).
    #[error("signing the client assertion failed")]
    Sign,
}

/// A parsed private key with the algorithm it signs with. `Debug` shows the algorithm only.
pub struct SigningKey {
    alg: &'static str,
    key: Key,
    rng: SystemRandom,
}

enum Key {
    Rsa(RsaKeyPair, &'static dyn RsaEncoding),
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// The key in `pem`, signing with `alg` (default: the key's own).
    pub fn from_pem(pem: &[u8], alg: Option<&str>) -> Result<SigningKey, KeyError> {
        let wanted = match alg {
            None => None,
            Some(name) => Some(
                ALGORITHMS
                    .iter()
                    .find(|(n, _)| *n == name)
                    .copied()
                    .ok_or_else(|| KeyError::UnknownAlg(name.chars().take(20).collect()))?,
            ),
        };
        let rng = SystemRandom::new();
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| {
            let text = String::from_utf8_lossy(pem);
            KeyError::NoKey(if text.contains("ENCRYPTED PRIVATE KEY") {
                " that is not encrypted (decrypt it: openssl pkcs8 -topk8 -nocrypt)"
            } else {
                ""
            })
        })?;
        let (kind, key) = match &der {
            PrivateKeyDer::Pkcs1(rsa) => (
                Kind::Rsa,
                rsa_key(RsaKeyPair::from_der(rsa.secret_pkcs1_der()))?,
            ),
            PrivateKeyDer::Sec1(_) => {
                return Err(KeyError::Unusable(
                    "an EC key in SEC1 form (BEGIN EC PRIVATE KEY); convert it to PKCS#8 \
                     with `openssl pkcs8 -topk8 -nocrypt`"
                        .to_owned(),
                ));
            }
            PrivateKeyDer::Pkcs8(pkcs8) => pkcs8_key(pkcs8.secret_pkcs8_der(), &rng)?,
            _ => return Err(KeyError::NoKey("")),
        };
        let (alg, needs) = wanted.unwrap_or_else(|| {
            *ALGORITHMS
                .iter()
                .find(|(_, k)| *k == kind)
                .unwrap_or(&ALGORITHMS[0])
        });
        if needs != kind {
            return Err(KeyError::Mismatch {
                alg,
                needs: needs.to_string(),
                has: kind.to_string(),
            });
        }
        let key = match key {
            Key::Rsa(pair, _) => Key::Rsa(pair, rsa_encoding(alg)),
            other => other,
        };
        Ok(SigningKey { alg, key, rng })
    }

    /// The JWS `alg`.
    pub fn alg(&self) -> &'static str {
        self.alg
    }

    /// A compact JWS of `claims`, with `kid` when given.
    pub fn sign_jwt(&self, key_id: Option<&str>, claims: &Value) -> Result<Secret, KeyError> {
        let mut header = json!({"alg": self.alg, "typ": "JWT"});
        if let Some(kid) = key_id {
            header["kid"] = kid.into();
        }
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let message = signing_input.as_bytes();
        let signature = match &self.key {
            Key::Rsa(pair, encoding) => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(*encoding, &self.rng, message, &mut signature)
                    .map_err(|_| KeyError::Sign)?;
                signature
            }
            Key::Ecdsa(pair) => pair
                .sign(&self.rng, message)
                .map_err(|_| KeyError::Sign)?
                .as_ref()
                .to_vec(),
            Key::Ed25519(pair) => pair.sign(message).as_ref().to_vec(),
        };
        Ok(Secret::new(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        )))
    }
}

fn rsa_key(pair: Result<RsaKeyPair, ring::error::KeyRejected>) -> Result<Key, KeyError> {
    pair.map(|pair| Key::Rsa(pair, &signature::RSA_PKCS1_SHA256))
        .map_err(|e| KeyError::Unusable(format!("an RSA key that cannot sign ({e})")))
}

/// A PKCS#8 key of any supported kind.
fn pkcs8_key(der: &[u8], rng: &SystemRandom) -> Result<(Kind, Key), KeyError> {
    if let Ok(pair) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
        return Ok((Kind::Ed25519, Key::Ed25519(pair)));
    }
    let ec = [
        (Kind::P256, &signature::ECDSA_P256_SHA256_FIXED_SIGNING),
        (Kind::P384, &signature::ECDSA_P384_SHA384_FIXED_SIGNING),
    ];
    for (kind, alg) in ec {
        if let Ok(pair) = EcdsaKeyPair::from_pkcs8(alg, der, rng) {
            return Ok((kind, Key::Ecdsa(pair)));
        }
    }
    RsaKeyPair::from_pkcs8(der)
        .map(|pair| (Kind::Rsa, Key::Rsa(pair, &signature::RSA_PKCS1_SHA256)))
        .map_err(|e| {
            KeyError::Unusable(format!(
                "a PKCS#8 key that is neither RSA (2048 to 8192 bits), EC P-256, EC P-384 \
                 nor Ed25519 ({e})"
            ))
        })
}

fn rsa_encoding(alg: &str) -> &'static dyn RsaEncoding {
    match alg {
        "RS384" => &signature::RSA_PKCS1_SHA384,
        "RS512" => &signature::RSA_PKCS1_SHA512,
        "PS256" => &signature::RSA_PSS_SHA256,
        "PS384" => &signature::RSA_PSS_SHA384,
        "PS512" => &signature::RSA_PSS_SHA512,
        _ => &signature::RSA_PKCS1_SHA256,
    }
}

/// Signs the assertions of one credential with the key `private_key`
/// holds now, parsed again only when its bytes change.
pub struct AssertionSigner {
    private_key: SecretRef,
    signing_alg: Option<String>,
    key_id: Option<String>,
    /// The digest of the PEM text last parsed, and its key.
    parsed: Mutex<Option<(u64, Arc<SigningKey>)>>,
}

impl fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("private_key", &self.private_key.describe())
            .field("signing_alg", &self.signing_alg)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl AssertionSigner {
    /// A signer reading `private_key`, signing with `signing_alg` (or the
    /// key's own), naming `key_id` as `kid`.
    pub fn new(
        private_key: SecretRef,
        signing_alg: Option<String>,
        key_id: Option<String>,
    ) -> Self {
        AssertionSigner {
            private_key,
            signing_alg,
            key_id,
            parsed: Mutex::new(None),
        }
    }

    /// The key in force: the one parsed last unless the source's bytes changed.
    fn key(&self, env: &dyn EnvSource) -> Result<Arc<SigningKey>, FetchError> {
        let pem = self.private_key.resolve_pem(env)?;
        let mut hasher = DefaultHasher::new();
        hasher.write(pem.expose().as_bytes());
        let digest = hasher.finish();
        let mut parsed = self.parsed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((seen, key)) = &*parsed
            && *seen == digest
        {
            return Ok(Arc::clone(key));
        }
        let key = SigningKey::from_pem(pem.expose().as_bytes(), self.signing_alg.as_deref())
            .map_err(|e| {
                transient(format!(
                    "private_key ({}) cannot sign client assertions: it {e}",
                    self.private_key.describe()
                ))
            })?;
        let key = Arc::new(key);
        *parsed = Some((digest, Arc::clone(&key)));
        Ok(key)
    }

    /// A fresh assertion of `client_id` for `audience`, issued at `now`
    /// (Unix seconds).
    pub fn assertion(
        &self,
        env: &dyn EnvSource,
        client_id: &str,
        audience: &str,
        now: u64,
    ) -> Result<Secret, FetchError> {
        let key = self.key(env)?;
        let mut jti = [0u8; 16];
        key.rng
            .fill(&mut jti)
            .map_err(|_| transient(KeyError::Sign.to_string()))?;
        let claims = json!({
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "jti": URL_SAFE_NO_PAD.encode(jti),
            "iat": now,
            "exp": now + ASSERTION_LIFETIME.as_secs(),
        });
        key.sign_jwt(self.key_id.as_deref(), &claims)
            .map_err(|e| transient(e.to_string()))
    }
}

/// The `exp` claim of a JWT (`header.payload.signature`), unverified, in
/// Unix seconds; `None` when the token is not a JWT or `exp` is not a number.
pub fn jwt_exp(token: &str) -> Option<f64> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD_INDIFFERENT.decode(payload).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_f64().filter(|exp| exp.is_finite())
}
