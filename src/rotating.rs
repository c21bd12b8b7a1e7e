//! TLS files that rotate by themselves: listener certificates
//! (`tls = { cert, key }`), upstream client certificates
//! (`upstream_tls = { client_cert, client_key }`) and `[tls] ca_file` are
//! read again every [`POLL_INTERVAL`] while a configuration using them
//! serves, the way a static token's `{ file = … }` is (cert-manager and
//! Kubernetes Secret mounts swap a `..data` symlink; each read resolves the
//! path anew).
//!
//! - A [`Rotating`] value holds what its files made (a certificate with its
//!   key, or the trust of the upstream and token endpoint clients) and hands
//!   out the one in force: rustls asks it at every handshake ([`ResolvesServerCert`],
//!   [`ResolvesClientCert`], [`ServerCertVerifier`]), so a new connection
//!   gets the new certificate and open connections keep theirs.
//! - Only a change of the files' bytes is loaded; a change into something
//!   unusable (no certificate, a key that does not match, a file gone) is
//!   logged once as a WARN and the one in force keeps serving.
//! - [`watch`] polls the values of one configuration on the calling
//!   runtime and stops by itself once no listener or client uses them.

use std::fmt;
use std::hash::{DefaultHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::ResolvesClientCert;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tracing::{info, warn};

use crate::tls::{self, ListenerTls, TlsConfig, TlsError};

/// How often rotating files are read again (static token files too).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What a set of files made, and the files, read again on [`Reread::reread`].
pub struct Rotating<T> {
    /// What it is, for the log: "listener certificate", "CA file", …
    what: &'static str,
    files: Vec<PathBuf>,
    load: Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>,
    current: ArcSwap<T>,
    /// A digest of the files' bytes when last read; `None` while unreadable.
    seen: Mutex<Option<u64>>,
}

/// A [`Rotating`] value, whatever it holds: what [`watch`] polls.
pub trait Reread: fmt::Debug + Send + Sync {
    /// Read the files again; load them if their bytes changed.
    fn reread(&self);
    /// Whether there are files to read.
    fn has_files(&self) -> bool;
}

impl<T> fmt::Debug for Rotating<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rotating")
            .field("what", &self.what)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> Rotating<T> {
    /// What `initial` makes, replaced by what `load` makes whenever `files`
    /// change. The files' digest is taken before `initial` reads them, so a
    /// change in between is loaded at the next poll rather than missed.
    fn new(
        what: &'static str,
        files: Vec<PathBuf>,
        initial: impl FnOnce() -> Result<T, TlsError>,
        load: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Arc<Rotating<T>>, TlsError> {
        let seen = digest(&files).ok();
        let initial = initial()?;
        Ok(Arc::new(Rotating {
            what,
            files,
            load: Box::new(load),
            current: ArcSwap::from_pointee(initial),
            seen: Mutex::new(seen),
        }))
    }

    /// The value in force.
    pub fn current(&self) -> Arc<T> {
        self.current.load_full()
    }
}

impl<T: Send + Sync + 'static> Reread for Rotating<T> {
    fn reread(&self) {
        let files = FileList(&self.files);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        match digest(&self.files) {
            Ok(now) if Some(now) == *seen => {}
            Ok(now) => {
                *seen = Some(now);
                match (self.load)() {
                    Ok(value) => {
                        self.current.store(Arc::new(value));
                        info!(files = %files, "{} changed; new connections use the new one", self.what);
                    }
                    Err(err) => warn!(
                        files = %files,
                        "{} changed but cannot be used ({err}); the one in use keeps serving",
                        self.what
                    ),
                }
            }
            Err(err) => {
                if seen.take().is_some() {
                    warn!(
                        files = %files,
                        "{} cannot be read ({err}); the one in use keeps serving",
                        self.what
                    );
                }
            }
        }
    }

    fn has_files(&self) -> bool {
        !self.files.is_empty()
    }
}

/// Paths joined for a log field.
struct FileList<'a>(&'a [PathBuf]);

impl fmt::Display for FileList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, path) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", path.display())?;
        }
        Ok(())
    }
}

/// A digest of the bytes of `files` (each path resolved anew). Not a secret
/// (a hash of the key file's bytes) and only compared, never shown.
fn digest(files: &[PathBuf]) -> std::io::Result<u64> {
    let mut hasher = DefaultHasher::new();
    for path in files {
        let bytes = crate::small_file::read(path)?;
        hasher.write_usize(bytes.len());
        hasher.write(&bytes);
    }
    Ok(hasher.finish())
}

/// Read the values of one configuration again every [`POLL_INTERVAL`] on
/// the calling runtime, until none of them is used any more.
pub fn watch(values: &[Arc<dyn Reread>]) {
    let mut weak: Vec<Weak<dyn Reread>> = values
        .iter()
        .filter(|value| value.has_files())
        .map(Arc::downgrade)
        .collect();
    if weak.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(POLL_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        while !weak.is_empty() {
            ticks.tick().await;
            weak.retain(|value| match value.upgrade() {
                Some(value) => {
                    value.reread();
                    true
                }
                None => false,
            });
        }
    });
}

// ---------------------------------------------------------------------------
// Certificates with their keys
// ---------------------------------------------------------------------------

/// A certificate chain and its private key, from two PEM files.
pub type RotatingCert = Rotating<CertifiedKey>;

/// Load `cert` and `key` as one certified key (the key must match).
fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = tls::load_certs(cert)?;
    let private_key = tls::load_private_key(key)?;
    Ok(CertifiedKey::from_der(
        chain,
        private_key,
        &tls::provider(),
    )?)
}

/// The certificate of `cert` and `key`, read now and again when they change.
pub fn cert(what: &'static str, cert: &Path, key: &Path) -> Result<Arc<RotatingCert>, TlsError> {
    let files = vec![cert.to_owned(), key.to_owned()];
    let (cert_path, key_path) = (cert.to_owned(), key.to_owned());
    Rotating::new(
        what,
        files,
        || certified_key(cert, key),
        move || certified_key(&cert_path, &key_path),
    )
}

impl ResolvesServerCert for RotatingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for RotatingCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Server config for a `tls = { cert, key }` listener and the certificate it
/// presents, which rotates with its files. ALPN offers `h2` and `http/1.1`
/// (the connection's first bytes then decide, see [`crate::preface`]).
pub fn server_config(
    listener: &ListenerTls,
) -> Result<(Arc<ServerConfig>, Arc<RotatingCert>), TlsError> {
    let cert = cert("listener certificate", &listener.cert, &listener.key)?;
    let mut config = ServerConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), cert))
}

// ---------------------------------------------------------------------------
// Trust of the upstream and token endpoint clients
// ---------------------------------------------------------------------------

/// Trust anchors as read at one time, and their WebPKI verifier.
#[derive(Debug)]
pub struct Anchors {
    /// webpki + system roots + `[tls] ca_file`.
    pub roots: Arc<RootCertStore>,
    /// `None` when there is no root at all (tests): nothing is trusted.
    verifier: Option<Arc<WebPkiServerVerifier>>,
    /// The signature algorithms of the crypto provider.
    algorithms: WebPkiSupportedAlgorithms,
}

impl Anchors {
    fn new(roots: Arc<RootCertStore>) -> Result<Anchors, TlsError> {
        let algorithms = tls::provider().signature_verification_algorithms;
        let verifier = if roots.is_empty() {
            None
        } else {
            let builder =
                WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), tls::provider());
            Some(builder.build().map_err(|err| TlsError::File {
                path: PathBuf::new(),
                message: format!("no usable trust anchors: {err}"),
            })?)
        };
        Ok(Anchors {
            roots,
            verifier,
            algorithms,
        })
    }
}

/// webpki + system roots + `[tls] ca_file`, as a server certificate verifier.
pub type Trust = Rotating<Anchors>;

/// The trust of `roots` (read from `tls` already), read again from the
/// system and `ca_file` when `ca_file` changes.
pub fn trust(roots: &Arc<RootCertStore>, tls_config: &TlsConfig) -> Result<Arc<Trust>, TlsError> {
    let files: Vec<PathBuf> = tls_config.ca_file.iter().cloned().collect();
    let tls_config = tls_config.clone();
    Rotating::new(
        "CA file",
        files,
        || Anchors::new(Arc::clone(roots)),
        move || Anchors::new(Arc::new(tls::root_store(&tls_config)?)),
    )
}

/// The trust of `roots` alone, which no file changes (tests, `sidekey token`).
pub fn fixed_trust(roots: &Arc<RootCertStore>) -> Result<Arc<Trust>, TlsError> {
    trust(roots, &TlsConfig::default())
}

impl ServerCertVerifier for Trust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.current().verifier {
            Some(verifier) => verifier.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }

    // The signature checks depend on the crypto provider only, not on the
    // roots: the same functions WebPkiServerVerifier calls.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.current().algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.current().algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().algorithms.supported_schemes()
    }
}

/// Client config for an upstream or a token endpoint: `trust` (the WebPKI
/// verifier of the roots in force: the same checks as
/// `with_root_certificates`, only replaceable), with `client_cert` when the
/// route names one. ALPN is left empty: the hyper-rustls connector sets it.
pub fn upstream_config(
    trust: &Arc<Trust>,
    client_cert: Option<Arc<RotatingCert>>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(trust.clone());
    Ok(match client_cert {
        Some(cert) => builder.with_client_cert_resolver(cert),
        None => builder.with_no_client_auth(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value that is the file's text, refused when empty.
    fn text_file(path: &Path) -> Arc<Rotating<String>> {
        let read = |path: &Path| -> Result<String, TlsError> {
            let text = std::fs::read_to_string(path).map_err(|e| TlsError::File {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            if text.is_empty() {
                return Err(TlsError::File {
                    path: path.to_owned(),
                    message: "empty".to_owned(),
                });
            }
            Ok(text)
        };
        let owned = path.to_owned();
        Rotating::new(
            "test file",
            vec![path.to_owned()],
            || read(path),
            move || read(&owned),
        )
        .unwrap()
    }

    #[test]
    fn only_a_usable_change_replaces_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        std::fs::write(&path, "one").unwrap();
        let value = text_file(&path);
        let first = value.current();
        value.reread();
        assert!(
            Arc::ptr_eq(&first, &value.current()),
            "unchanged: not loaded again"
        );

        std::fs::write(&path, "").unwrap();
        value.reread();
        assert_eq!(*value.current(), "one", "unusable: the old value stays");
        std::fs::remove_file(&path).unwrap();
        value.reread();
        assert_eq!(*value.current(), "one", "gone: the old value stays");

        std::fs::write(&path, "two").unwrap();
        value.reread();
        assert_eq!(*value.current(), "two");
        assert!(value.has_files());
    }
}
