//! What a certificate error in a failed TLS handshake likely means, for
//! the messages of the token client and the proxy: a certificate no trusted
//! root vouches for ([`untrusted_certificate`]: a private CA missing from
//! `[tls] ca_file`), or one expired or not yet valid at the system clock's
//! time ([`certificate_out_of_time`]: on a box whose clock is years off,
//! before NTP set it, every certificate looks so; [`CERT_TIME_HINT`]).

/// What to say about a certificate that is expired or not yet valid: its
/// validity is judged on the system clock, which may be years off (a box
/// started before NTP set it).
pub const CERT_TIME_HINT: &str =
    " (certificates are judged on this system's clock: is the system clock right?)";

/// Whether a connect error is a certificate expired or not yet valid at
/// the system clock's time.
pub fn certificate_out_of_time(err: &(dyn std::error::Error + 'static)) -> bool {
    use rustls::{CertificateError, Error as TlsError};
    std::iter::successors(Some(err), |e| e.source()).any(|e| {
        matches!(
            tls_error_in(e),
            Some(TlsError::InvalidCertificate(
                CertificateError::Expired
                    | CertificateError::ExpiredContext { .. }
                    | CertificateError::NotValidYet
                    | CertificateError::NotValidYetContext { .. }
            ))
        )
    })
}

/// Whether a connect error is a certificate no trusted root vouches for
/// (rustls' `UnknownIssuer`, or a CA certificate served as the server's).
pub fn untrusted_certificate(err: &(dyn std::error::Error + 'static)) -> bool {
    use rustls::{CertificateError, Error as TlsError};
    std::iter::successors(Some(err), |e| e.source()).any(|e| {
        matches!(
            tls_error_in(e),
            Some(TlsError::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::Other(_)
            ))
        )
    })
}

/// The rustls error an error is or wraps. Connectors box it inside an
/// `io::Error`, and neither a `Box<dyn Error>` nor an `io::Error` lists what
/// it wraps as its `source()`, so both are opened here.
fn tls_error_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let io = e.downcast_ref::<std::io::Error>()?;
    let inner: &(dyn std::error::Error + 'static) = io.get_ref()?;
    tls_error_in(inner)
}
