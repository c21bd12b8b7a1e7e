//! Upstream answers that hyper accepts but the app could not read as
//! sent, refused before they reach it (a 502, like nginx's "upstream sent
//! unknown Transfer-Encoding"):
//!
//! - `101 Switching Protocols`, which only a request asking for an upgrade
//!   may get (RFC 9110 §15.2.2). sidekey never passes `Upgrade` on (it is
//!   hop-by-hop), so the answer is one nobody asked for, and the connection
//!   no longer speaks HTTP.
//! - A `Transfer-Encoding` other than `chunked` alone. hyper removes the
//!   chunked coding and passes the body on, and `Transfer-Encoding` is
//!   hop-by-hop: any other coding (`gzip, chunked`, or `gzip` read until the
//!   close) would reach the app still applied, with nothing saying so.

use http::header::TRANSFER_ENCODING;
use http::{Response, StatusCode};

/// Why an upstream's answer is not passed on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Unusable {
    /// `101` to a request that asked for no upgrade.
    #[error("the upstream switched protocols (101) though the request asked for no upgrade")]
    SwitchedProtocols,
    /// A transfer coding the app would not be told about.
    #[error("the upstream's response uses a transfer coding other than chunked")]
    TransferCoding,
}

/// Whether `response`'s head can be passed on to the app.
pub fn check<B>(response: &Response<B>) -> Result<(), Unusable> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Err(Unusable::SwitchedProtocols);
    }
    let mut codings = response.headers().get_all(TRANSFER_ENCODING).iter();
    match (codings.next(), codings.next()) {
        (None, _) => Ok(()),
        (Some(only), None)
            if only
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked") =>
        {
            Ok(())
        }
        _ => Err(Unusable::TransferCoding),
    }
}

#[cfg(test)]
mod tests {
    use super::{Unusable, check};
    use http::Response;

    fn with_coding(codings: &[&str]) -> Result<(), Unusable> {
        let mut response = Response::builder();
        for coding in codings {
            response = response.header("transfer-encoding", *coding);
        }
        check(&response.body(()).unwrap())
    }

    #[test]
    fn only_chunked_alone_passes() {
        assert_eq!(with_coding(&[]), Ok(()));
        assert_eq!(with_coding(&["chunked"]), Ok(()));
        assert_eq!(with_coding(&[" Chunked "]), Ok(()));
        for codings in [
            &["gzip"][..],
            &["gzip, chunked"],
            &["gzip", "chunked"],
            &["chunked, chunked"],
            &["identity"],
        ] {
            assert_eq!(
                with_coding(codings),
                Err(Unusable::TransferCoding),
                "{codings:?}"
            );
        }
    }

    #[test]
    fn a_101_is_refused() {
        let response = Response::builder().status(101).body(()).unwrap();
        assert_eq!(check(&response), Err(Unusable::SwitchedProtocols));
    }
}
