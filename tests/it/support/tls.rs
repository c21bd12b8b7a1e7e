//! A throwaway PKI made at test time with rcgen: a CA, a server certificate
//! for `localhost` and `127.0.0.1` signed by it, and a client certificate for
//! mTLS. PEM files live in a temporary directory removed on drop, so a sidekey
//! configuration can point at them (`[tls] ca_file`, a route's `tls = { … }`,
//! `upstream_tls = { client_cert, client_key }`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The crypto provider every test config uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A leaf certificate and its key, as DER and as PEM files.
pub struct Leaf {
    /// The certificate.
    pub cert_der: CertificateDer<'static>,
    /// The PKCS#8 private key, DER.
    pub key_der: Vec<u8>,
    /// Where the certificate PEM was written.
    pub cert_path: PathBuf,
    /// Where the key PEM was written.
    pub key_path: PathBuf,
}

impl Leaf {
    /// The chain to present: just the leaf (the CA is the trust anchor).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert_der.clone()]
    }

    /// The private key for rustls.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

/// A CA with a server and a client certificate, written to a temporary directory.
pub struct TestPki {
    dir: tempfile::TempDir,
    ca_der: CertificateDer<'static>,
    ca_path: PathBuf,
    server: Leaf,
    client: Leaf,
}

impl TestPki {
    /// Make a new CA, a server certificate for `localhost` + `127.0.0.1`
    /// (IP SAN) and a client certificate.
    pub fn new() -> TestPki {
        Self::with_server_names(&["localhost", "127.0.0.1"])
    }

    /// Like [`TestPki::new`] with other server names (DNS names or IPs).
    pub fn with_server_names(names: &[&str]) -> TestPki {
        Self::build(names, None)
    }

    /// Like [`TestPki::new`], with a server certificate valid only from
    /// 1 January of `from` to 1 January of `until`: what a machine whose
    /// clock is outside those years sees as not yet valid or expired.
    pub fn with_server_valid(from: i32, until: i32) -> TestPki {
        Self::build(&["localhost", "127.0.0.1"], Some((from, until)))
    }

    fn build(names: &[&str], server_years: Option<(i32, i32)>) -> TestPki {
        let dir = tempfile::Builder::new()
            .prefix("sidekey-test-pki-")
            .tempdir()
            .expect("temp dir");

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "sidekey test CA");
        ca_params.distinguished_name = dn;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("ca key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let ca_der = ca_cert.der().clone();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca_cert.pem()).expect("write ca.pem");
        let issuer = Issuer::new(ca_params, ca_key);

        let server = issue(
            &issuer,
            dir.path(),
            "server",
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let server = match server_years {
            None => server,
            Some(years) => issue_valid(
                &issuer,
                dir.path(),
                "server",
                names,
                ExtendedKeyUsagePurpose::ServerAuth,
                Some(years),
            ),
        };
        let client = issue(
            &issuer,
            dir.path(),
            "client",
            &["client.sidekey.test"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        TestPki {
            dir,
            ca_der,
            ca_path,
            server,
            client,
        }
    }

    /// The temporary directory holding every PEM file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate, PEM file (for `[tls] ca_file`).
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_path
    }

    /// The server certificate PEM file (for a route's `tls = { cert = … }`).
    pub fn server_cert_path(&self) -> &Path {
        &self.server.cert_path
    }

    /// The server certificate, DER (to recognise it on the wire).
    pub fn server_cert_der(&self) -> &CertificateDer<'static> {
        &self.server.cert_der
    }

    /// The server certificate and key PEM files' bytes (to publish them elsewhere).
    pub fn server_pem(&self) -> (Vec<u8>, Vec<u8>) {
        let read = |path: &Path| std::fs::read(path).expect("read PEM");
        (read(&self.server.cert_path), read(&self.server.key_path))
    }

    /// The client certificate and key PEM files' bytes.
    pub fn client_pem(&self) -> (Vec<u8>, Vec<u8>) {
        let read = |path: &Path| std::fs::read(path).expect("read PEM");
        (read(&self.client.cert_path), read(&self.client.key_path))
    }

    /// The CA certificate PEM file's bytes.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.ca_path).expect("read CA PEM")
    }

    /// The server key PEM file (for a route's `tls = { key = … }`).
    pub fn server_key_path(&self) -> &Path {
        &self.server.key_path
    }

    /// The client certificate PEM file (for `upstream_tls = { client_cert = … }`).
    pub fn client_cert_path(&self) -> &Path {
        &self.client.cert_path
    }

    /// The client key PEM file (for `upstream_tls = { client_key = … }`).
    pub fn client_key_path(&self) -> &Path {
        &self.client.key_path
    }

    /// A root store holding only this CA.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("add test CA");
        roots
    }

    /// A server config presenting the server certificate, offering `alpn`
    /// (e.g. `&[b"h2", b"http/1.1"]`), no client authentication.
    pub fn server_config(&self, alpn: &[&[u8]]) -> ServerConfig {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(self.server.chain(), self.server.key())
            .expect("server cert");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    /// A server config that verifies client certificates against this CA.
    /// With `required = false` a client without a certificate is accepted
    /// too (so a test can record whether one was presented).
    pub fn server_config_mtls(&self, alpn: &[&[u8]], required: bool) -> ServerConfig {
        let builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(self.root_store()), provider());
        let builder = if required {
            builder
        } else {
            builder.allow_unauthenticated()
        };
        let verifier = builder.build().expect("client verifier");
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server.chain(), self.server.key())
            .expect("server cert");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    /// A client config trusting only this CA, without ALPN (hyper-rustls sets it).
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_webpki_verifier(self.server_verifier())
            .with_no_client_auth()
    }

    /// A client config trusting only this CA and presenting the client certificate.
    pub fn client_config_with_cert(&self) -> ClientConfig {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_webpki_verifier(self.server_verifier())
            .with_client_auth_cert(self.client.chain(), self.client.key())
            .expect("client cert")
    }

    fn server_verifier(&self) -> Arc<WebPkiServerVerifier> {
        WebPkiServerVerifier::builder_with_provider(Arc::new(self.root_store()), provider())
            .build()
            .expect("server verifier")
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

fn issue(
    issuer: &Issuer<'static, KeyPair>,
    dir: &Path,
    file_stem: &str,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> Leaf {
    issue_valid(issuer, dir, file_stem, names, usage, None)
}

/// [`issue`], valid from 1 January of the first year to 1 January of the
/// second when `years` is given (rcgen's default otherwise).
fn issue_valid(
    issuer: &Issuer<'static, KeyPair>,
    dir: &Path,
    file_stem: &str,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    years: Option<(i32, i32)>,
) -> Leaf {
    let mut params = CertificateParams::new(
        names
            .iter()
            .map(|n| (*n).to_owned())
            .collect::<Vec<String>>(),
    )
    .expect("leaf params");
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().copied().unwrap_or(file_stem),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    if let Some((from, until)) = years {
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
    }
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("sign leaf");
    let cert_path = dir.join(format!("{file_stem}.pem"));
    let key_path = dir.join(format!("{file_stem}.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    Leaf {
        cert_der: cert.der().clone(),
        key_der: key.serialize_der(),
        cert_path,
        key_path,
    }
}

/// The certificate a TLS server on `addr` presents to a new connection for
/// `localhost`, trusting the CAs of `pkis`; the handshake's error otherwise.
pub async fn presented_certificate(
    addr: std::net::SocketAddr,
    pkis: &[&TestPki],
) -> Result<CertificateDer<'static>, String> {
    let mut roots = RootCertStore::empty();
    for pki in pkis {
        roots.add(pki.ca_der.clone()).expect("add test CA");
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake with {addr}: {e}"))?;
    let (_, connection) = tls.get_ref();
    connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| cert.clone().into_owned())
        .ok_or_else(|| "no certificate presented".to_owned())
}

/// The first bytes a TLS client sends to a server it knows as `name`: a
/// real ClientHello (rustls's, offering `h2` and `http/1.1`), for tests
/// that send it where no TLS is spoken.
pub fn client_hello(name: &str) -> Vec<u8> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("server name");
    let mut client =
        rustls::ClientConnection::new(Arc::new(config), name).expect("client connection");
    let mut hello = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut hello).expect("ClientHello");
    }
    hello
}
