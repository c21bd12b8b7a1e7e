//! TLS files: what the TLS settings mean (`[tls]`: [`TlsConfig`]; a
//! route's `tls` and `upstream_tls`: [`ListenerTls`], [`UpstreamTls`]),
//! reading PEM certificates and keys, and the trust roots (webpki + system
//! roots + `[tls] ca_file`). The rustls configurations built from them
//! (listeners, upstreams, token endpoints), whose files rotate, are
//! [`crate::rotating`]'s. All crypto comes from rustls' `ring` provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::config::value::{File, from_text, via, via_some};

/// `[tls]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct TlsConfig {
    /// PEM bundle added to the system/webpki roots.
    #[serde(default, deserialize_with = "via_some::<_, File, _>")]
    pub ca_file: Option<PathBuf>,
}

/// `tls = { cert, key }` on a route: serve HTTPS.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct ListenerTls {
    /// PEM certificate chain.
    #[serde(deserialize_with = "via::<_, File, _>")]
    pub cert: PathBuf,
    /// PEM private key.
    #[serde(deserialize_with = "via::<_, File, _>")]
    pub key: PathBuf,
}

/// `upstream_tls = { client_cert, client_key, server_name }`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
pub struct UpstreamTls {
    /// PEM client certificate chain (mTLS).
    #[serde(deserialize_with = "via_some::<_, File, _>")]
    pub client_cert: Option<PathBuf>,
    /// PEM client private key (mTLS).
    #[serde(deserialize_with = "via_some::<_, File, _>")]
    pub client_key: Option<PathBuf>,
    /// SNI / verification name instead of the upstream's host.
    #[serde(deserialize_with = "via_some::<_, ServerName, _>")]
    pub server_name: Option<String>,
}

from_text! {
    /// A TLS server name: a DNS name or an IP address.
    ServerName(String, "a DNS name or IP address") = |text| match rustls_pki_types::ServerName::try_from(text) {
        Ok(_) => Ok(text.to_owned()),
        Err(_) => Err(format!("`{text}` is not a DNS name or IP address")),
    };
}

/// A TLS file or setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the combination (e.g. key does not match certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// rustls' `ring` provider, which every TLS configuration uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Read every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |message: String| TlsError::File {
        path: path.to_owned(),
        message,
    };
    let bytes = crate::small_file::read(path).map_err(|e| file_error(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error("contains no PEM certificate".to_owned()));
    }
    Ok(certs)
}

/// Read the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = crate::small_file::read(path).map_err(|e| TlsError::File {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| TlsError::File {
        path: path.to_owned(),
        message: "contains no usable PEM private key".to_owned(),
    })
}

/// webpki roots, the system's roots (when readable) and `ca_file`.
pub fn root_store(tls: &TlsConfig) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A system root rustls cannot parse is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(ca_file) = &tls.ca_file {
        for cert in load_certs(ca_file)? {
            roots.add(cert).map_err(|e| TlsError::File {
                path: ca_file.clone(),
                message: format!("unusable CA certificate: {e}"),
            })?;
        }
    }
    Ok(roots)
}
