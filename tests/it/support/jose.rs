//! Signing keys made at test time and JWS verification, for token servers
//! that check `private_key_jwt` and `client_assertion` cryptographically.
//!
//! - [`TestKey::ed25519`] and [`TestKey::p256`] are generated with `ring`;
//!   [`TestKey::rsa`] with `openssl genpkey` (ring cannot generate RSA keys),
//!   once per test binary. Each has its PEM (PKCS#8), its public key and
//!   its default JWS `alg`.
//! - [`TestKey::openssl`] takes a key in the forms `openssl` writes (SEC1,
//!   PKCS#1, PKCS#8 v1), to show each is read.
//! - [`verify`] checks a compact JWS against public keys (by `alg`, and by
//!   `kid` when the key has one) and returns its claims.
//! - [`TestKey::sign`] signs claims, for assertions "issued by someone else"
//!   (a projected service-account token).

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, UnparsedPublicKey};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};

/// A private key as a PEM file holds it, and what verifies its signatures.
#[derive(Clone, Debug)]
pub struct TestKey {
    /// PKCS#8 PEM.
    pub pem: String,
    /// The public key: PKCS#1 DER (RSA), an uncompressed point (EC), 32 bytes (Ed25519).
    pub public: Vec<u8>,
    /// The default JWS algorithm of the key.
    pub alg: &'static str,
    /// The `kid` a verifier expects, if any.
    pub kid: Option<String>,
}

fn pem(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64"))
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

impl TestKey {
    /// A new Ed25519 key (EdDSA).
    pub fn ed25519() -> TestKey {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("ed25519");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("ed25519");
        TestKey {
            pem: pem(pkcs8.as_ref()),
            public: pair.public_key().as_ref().to_vec(),
            alg: "EdDSA",
            kid: None,
        }
    }

    /// A new EC P-256 key (ES256).
    pub fn p256() -> TestKey {
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("p256");
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("p256");
        TestKey {
            pem: pem(pkcs8.as_ref()),
            public: pair.public_key().as_ref().to_vec(),
            alg: "ES256",
            kid: None,
        }
    }

    /// A 2048-bit RSA key (RS256), made by `openssl genpkey` once per run.
    pub fn rsa() -> TestKey {
        static RSA: OnceLock<TestKey> = OnceLock::new();
        RSA.get_or_init(|| {
            let out = Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                ])
                .output()
                .expect("openssl genpkey (RSA test keys need the openssl command)");
            assert!(out.status.success(), "openssl genpkey failed");
            let pem = String::from_utf8(out.stdout).expect("PEM");
            let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("RSA PEM");
            let pair = RsaKeyPair::from_pkcs8(der.secret_der()).expect("RSA key");
            TestKey {
                pem,
                public: pair.public_key().as_ref().to_vec(),
                alg: "RS256",
                kid: None,
            }
        })
        .clone()
    }

    /// A key in the form `openssl` writes with `args` (e.g. `ecparam -name
    /// prime256v1 -genkey -noout`: SEC1), with `pem` as written and the
    /// public key read from its PKCS#8 form (`openssl pkcs8 -topk8`).
    pub fn openssl(args: &[&str], input: Option<&str>) -> TestKey {
        let pem = openssl(args, input);
        let pkcs8 = openssl(&["pkcs8", "-topk8", "-nocrypt"], Some(&pem));
        let der = PrivateKeyDer::from_pem_slice(pkcs8.as_bytes()).expect("PKCS#8 PEM");
        let der = der.secret_der();
        let rng = SystemRandom::new();
        let ec = |alg| EcdsaKeyPair::from_pkcs8(alg, der, &rng).ok();
        let (public, alg) = if let Ok(pair) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            (pair.public_key().as_ref().to_vec(), "EdDSA")
        } else if let Some(pair) = ec(&signature::ECDSA_P256_SHA256_FIXED_SIGNING) {
            (pair.public_key().as_ref().to_vec(), "ES256")
        } else if let Some(pair) = ec(&signature::ECDSA_P384_SHA384_FIXED_SIGNING) {
            (pair.public_key().as_ref().to_vec(), "ES384")
        } else {
            let pair = RsaKeyPair::from_pkcs8(der).expect("a key ring reads");
            (pair.public_key().as_ref().to_vec(), "RS256")
        };
        TestKey {
            pem,
            public,
            alg,
            kid: None,
        }
    }

    /// The same key, expected to be named `kid`.
    pub fn with_kid(mut self, kid: &str) -> TestKey {
        self.kid = Some(kid.to_owned());
        self
    }

    /// The same key, verified as `alg` (e.g. PS256 for an RSA key).
    pub fn verified_as(mut self, alg: &'static str) -> TestKey {
        self.alg = alg;
        self
    }

    /// Write the PEM to `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, &self.pem).expect("write key");
    }

    /// A compact JWS of `claims` signed with this key (RS256, ES256 or EdDSA).
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": self.alg, "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let der = PrivateKeyDer::from_pem_slice(self.pem.as_bytes()).expect("PEM");
        let rng = SystemRandom::new();
        let signature = match self.alg {
            "EdDSA" => Ed25519KeyPair::from_pkcs8(der.secret_der())
                .expect("key")
                .sign(input.as_bytes())
                .as_ref()
                .to_vec(),
            "ES256" => EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                der.secret_der(),
                &rng,
            )
            .expect("key")
            .sign(&rng, input.as_bytes())
            .expect("sign")
            .as_ref()
            .to_vec(),
            _ => {
                let pair = RsaKeyPair::from_pkcs8(der.secret_der()).expect("key");
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut out,
                )
                .expect("sign");
                out
            }
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

/// What `openssl ARGS` writes to stdout, fed `input`.
fn openssl(args: &[&str], input: Option<&str>) -> String {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl (test keys need the openssl command)");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(input.unwrap_or("").as_bytes())
        .expect("openssl stdin");
    drop(stdin);
    let out = child.wait_with_output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?} failed");
    String::from_utf8(out.stdout).expect("PEM")
}

/// The header and claims of `jwt` if its signature verifies with one of
/// `keys` (matched by `alg`, and by `kid` where the key names one).
pub fn verify(jwt: &str, keys: &[TestKey]) -> Result<(Value, Value), String> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err("not a compact JWS".into());
    };
    let decode = |part: &str| -> Result<Value, String> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|e| format!("base64: {e}"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("JSON: {e}"))
    };
    let (header, claims) = (decode(header)?, decode(claims)?);
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|e| format!("signature base64: {e}"))?;
    let alg = header["alg"].as_str().unwrap_or("");
    let kid = header["kid"].as_str();
    let input = &jwt[..jwt.rfind('.').expect("dot")];
    for key in keys
        .iter()
        .filter(|k| k.alg == alg && (k.kid.is_none() || k.kid.as_deref() == kid))
    {
        let algorithm: &dyn signature::VerificationAlgorithm = match alg {
            "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
            "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
            "ES256" => &signature::ECDSA_P256_SHA256_FIXED,
            "ES384" => &signature::ECDSA_P384_SHA384_FIXED,
            "EdDSA" => &signature::ED25519,
            _ => continue,
        };
        if UnparsedPublicKey::new(algorithm, &key.public)
            .verify(input.as_bytes(), &signature)
            .is_ok()
        {
            return Ok((header, claims));
        }
    }
    Err(format!(
        "no key verifies this {alg} signature (kid {kid:?})"
    ))
}
