//! RFC 7523 client assertions: the PEM key of `private_key`, the JWS
//! algorithm it signs with, and the signed JWT one token request carries.
//!
//! - A key is PKCS#8 (`BEGIN PRIVATE KEY`, any of the kinds below), PKCS#1
//!   (`BEGIN RSA PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`). RSA → RS256, EC P-256 → ES256, EC
//!   P-384 → ES384, Ed25519 → EdDSA; `signing_alg` chooses another that the
//!   key can do (RS384, RS512, PS256, PS384, PS512). Signed with `ring`, the
//!   crypto rustls already uses here: three signature families and a JSON
//!   header need no JOSE crate and no second crypto stack.
//! - [`AssertionSigner`] parses the key on first use and again only when
//!   the bytes of its source change (a rotated key file); the `check`
//!   command parses it at load ([`SigningKey::from_pem`]).
//! - Each assertion is fresh: `iss` = `sub` = the client id, `aud` (the
//!   token endpoint URL unless `assertion_audience` says otherwise), a
//!   random 128-bit `jti`, `iat` now and `exp` [`ASSERTION_LIFETIME`] later
//!   — "now" as the token endpoint's clock reads it
//!   ([`super::token_client::TokenClient::endpoint_unix_now`]), so a system
//!   clock years off costs one refused request, not every one.
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
            PrivateKeyDer::Sec1(sec1) => sec1_key(sec1.secret_sec1_der(), &rng)?,
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

/// An EC key in SEC1 form (`BEGIN EC PRIVATE KEY`, as `openssl ecparam
/// -genkey` writes it): ring reads EC keys as PKCS#8 only, so it is wrapped
/// in the PKCS#8 structure of each curve until one fits.
fn sec1_key(sec1: &[u8], rng: &SystemRandom) -> Result<(Kind, Key), KeyError> {
    /// DER of the AlgorithmIdentifier `{ id-ecPublicKey, curve }`.
    const P256: &[u8] =
        b"\x30\x13\x06\x07\x2a\x86\x48\xce\x3d\x02\x01\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07";
    const P384: &[u8] = b"\x30\x10\x06\x07\x2a\x86\x48\xce\x3d\x02\x01\x06\x05\x2b\x81\x04\x00\x22";
    let curves = [
        (
            Kind::P256,
            P256,
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        ),
        (
            Kind::P384,
            P384,
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        ),
    ];
    for (kind, algorithm, signing) in curves {
        let mut info = b"\x02\x01\x00".to_vec();
        info.extend_from_slice(algorithm);
        der_append(&mut info, 0x04, sec1);
        let mut pkcs8 = Vec::new();
        der_append(&mut pkcs8, 0x30, &info);
        if let Ok(pair) = EcdsaKeyPair::from_pkcs8(signing, &pkcs8, rng) {
            return Ok((kind, Key::Ecdsa(pair)));
        }
    }
    Err(KeyError::Unusable(
        "an EC key (SEC1) that is not on P-256 or P-384, or lacks its public key".to_owned(),
    ))
}

/// Append a DER element: `tag`, the definite length of `content`, `content`.
fn der_append(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let len = content.len();
    match len {
        0..=0x7f => out.push(len as u8),
        0x80..=0xff => out.extend_from_slice(&[0x81, len as u8]),
        _ => out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
    }
    out.extend_from_slice(content);
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
    jwt_claims(token)?
        .get("exp")?
        .as_f64()
        .filter(|exp| exp.is_finite())
}

/// The claims of a JWT (`header.payload.signature`), unverified; `None`
/// when the token is not a JWT with a JSON payload.
pub fn jwt_claims(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD_INDIFFERENT.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use ring::signature::KeyPair as _;

    fn pem(label: &str, der: &[u8]) -> String {
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            STANDARD.encode(der)
        )
    }

    fn ed25519() -> (String, Vec<u8>) {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let public = pair.public_key().as_ref().to_vec();
        (pem("PRIVATE KEY", pkcs8.as_ref()), public)
    }

    #[test]
    fn the_key_kind_chooses_the_algorithm_and_the_signature_verifies() {
        let (pem, public) = ed25519();
        let key = SigningKey::from_pem(pem.as_bytes(), None).unwrap();
        assert_eq!(key.alg(), "EdDSA");
        let jwt = key.sign_jwt(Some("k1"), &json!({"sub": "x"})).unwrap();
        let jwt = jwt.expose();
        let (input, signature) = jwt.rsplit_once('.').unwrap();
        let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        signature::UnparsedPublicKey::new(&signature::ED25519, &public)
            .verify(input.as_bytes(), &signature)
            .unwrap();
        let header = URL_SAFE_NO_PAD
            .decode(input.split('.').next().unwrap())
            .unwrap();
        let header: Value = serde_json::from_slice(&header).unwrap();
        assert_eq!(header, json!({"alg": "EdDSA", "typ": "JWT", "kid": "k1"}));

        let rng = SystemRandom::new();
        let p256 = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(p256, &rng).unwrap();
        let key = SigningKey::from_pem(pem_of(&pkcs8).as_bytes(), None).unwrap();
        assert_eq!(key.alg(), "ES256");
        assert_eq!(format!("{key:?}"), "SigningKey { alg: \"ES256\", .. }");
    }

    fn pem_of(pkcs8: &ring::pkcs8::Document) -> String {
        pem("PRIVATE KEY", pkcs8.as_ref())
    }

    #[test]
    fn mistakes_are_named_without_key_material() {
        let (pem_text, _) = ed25519();
        let err = SigningKey::from_pem(pem_text.as_bytes(), Some("RS256")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "signing_alg RS256 needs an RSA key, but private_key holds an Ed25519 key"
        );
        let err = SigningKey::from_pem(pem_text.as_bytes(), Some("HS256")).unwrap_err();
        assert!(matches!(err, KeyError::UnknownAlg(_)), "{err}");
        let encrypted = pem("ENCRYPTED PRIVATE KEY", b"opaque");
        let err = SigningKey::from_pem(encrypted.as_bytes(), None).unwrap_err();
        assert!(err.to_string().contains("not encrypted"), "{err}");
        let err = SigningKey::from_pem(b"not a key", None).unwrap_err();
        assert_eq!(err.to_string(), "holds no PEM private key");
        let garbage = pem("PRIVATE KEY", b"\x30\x03\x02\x01\x00");
        let err = SigningKey::from_pem(garbage.as_bytes(), None).unwrap_err();
        assert!(err.to_string().contains("neither RSA"), "{err}");
    }

    #[test]
    fn der_lengths_use_the_short_and_long_forms() {
        let mut out = Vec::new();
        der_append(&mut out, 0x04, &[7; 3]);
        assert_eq!(out, [0x04, 3, 7, 7, 7]);
        let mut out = Vec::new();
        der_append(&mut out, 0x30, &[0; 0x90]);
        assert_eq!(out[..3], [0x30, 0x81, 0x90]);
        let mut out = Vec::new();
        der_append(&mut out, 0x30, &[0; 0x123]);
        assert_eq!(out[..4], [0x30, 0x82, 0x01, 0x23]);
    }

    #[test]
    fn a_signer_parses_again_only_when_the_bytes_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, ed25519().0).unwrap();
        let signer = AssertionSigner::new(SecretRef::File(path.clone()), None, None);
        let env = crate::secret::MapEnv::default();
        let first = signer.key(&env).unwrap();
        assert!(Arc::ptr_eq(&first, &signer.key(&env).unwrap()));
        std::fs::write(&path, ed25519().0).unwrap();
        assert!(!Arc::ptr_eq(&first, &signer.key(&env).unwrap()));
        std::fs::write(&path, "broken").unwrap();
        let err = signer.key(&env).unwrap_err().to_string();
        assert!(
            err.contains("key.pem") && err.contains("no PEM private key"),
            "{err}"
        );
        let one = signer.assertion(&env, "c", "a", 1).unwrap_err();
        assert!(!format!("{signer:?}").contains("BEGIN"), "{one}");
    }
}
