//! Errors sidekey answers itself, and the one place they become HTTP
//! responses: status, `content-type: application/json`, a body
//! `{"error": CODE, "message": TEXT}` and the header `x-sidekey-error: CODE`.
//!
//! | status | code | source |
//! | --- | --- | --- |
//! | 503 | `credential_unavailable` | credential: no valid token |
//! | 502 | `upstream_unreachable` | upstream: connect / TLS / connection failure |
//! | 504 | `upstream_timeout` | upstream: `request_timeout` passed |
//! | 408 | `request_body_timeout` | downstream: the app's request body paused longer than `body_timeout` |
//! | 404 | `no_route` | downstream: no route matches |
//! | 403 | `host_not_allowed` | downstream: forward proxy to a host outside `hosts` |
//! | 400 | `bad_request` | downstream: a request sidekey refuses to forward |
//! | 501 | `upgrade_not_supported` | downstream: an `Upgrade` (WebSocket, …) sidekey cannot carry ([`crate::proxy::upgrade`]) |
//!
//! A gRPC call ([`crate::proxy::grpc`]) gets the same error as a gRPC
//! status instead ([`ProxyError::to_grpc_response`]): HTTP 200,
//! `content-type: application/grpc`, `grpc-status` and `grpc-message` (the
//! message above) in a headers-only answer, and `x-sidekey-error: CODE`.
//!
//! Messages never contain tokens or secrets: they are built from route
//! names, paths and error kinds only.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::credential::Unavailable;
use crate::proxy::grpc::{self, Code};

/// The header naming the error code on every response sidekey makes itself.
pub static SIDEKEY_ERROR: HeaderName = HeaderName::from_static("x-sidekey-error");

/// A request sidekey answers itself instead of forwarding (or after failing to).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route of this listener matches the path.
    #[error("no route matches {0}")]
    NoRoute(String),
    /// The credential holds no valid token.
    #[error("{0}")]
    CredentialUnavailable(#[from] Unavailable),
    /// Connecting (TCP or TLS) to the upstream failed, or the connection broke
    /// or brought an answer that cannot be passed on.
    #[error("upstream {upstream} {failure}: {reason}")]
    UpstreamUnreachable {
        /// scheme://host:port of the upstream.
        upstream: String,
        /// `unreachable` when connecting failed, else what went wrong after.
        failure: &'static str,
        /// Why, from the error chain.
        reason: String,
    },
    /// The upstream sent no response head within `request_timeout`.
    #[error("upstream {upstream} did not answer within {timeout:?}")]
    UpstreamTimeout {
        /// scheme://host:port of the upstream.
        upstream: String,
        /// The route's `request_timeout`.
        timeout: Duration,
    },
    /// The app's request body paused longer than `body_timeout` before the
    /// upstream answered.
    #[error("the request body stalled: no bytes for {timeout:?}")]
    RequestBodyTimeout {
        /// The route's `body_timeout`.
        timeout: Duration,
    },
    /// Forward proxy: the host is not in `hosts`.
    #[error("host {0} is not in forward_proxy.hosts; credentials are never sent there")]
    HostNotAllowed(String),
    /// A request sidekey refuses to forward.
    #[error("{0}")]
    BadRequest(String),
    /// An `Upgrade` to a protocol sidekey cannot carry (a WebSocket).
    #[error("{0}")]
    UpgradeNotSupported(String),
}

impl ProxyError {
    /// HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::CredentialUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamUnreachable { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::RequestBodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::HostNotAllowed(_) => StatusCode::FORBIDDEN,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UpgradeNotSupported(_) => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// Whether the app's connection ends with this answer: after a stalled
    /// request body (`408`) nobody knows where the next request would start,
    /// so the connection is closed, and the answer must say so (RFC 9110
    /// 15.5.9) or the app's pool may hand the closed connection to its next
    /// request.
    pub fn closes_connection(&self) -> bool {
        matches!(self, ProxyError::RequestBodyTimeout { .. })
    }

    /// The stable error code of DESIGN.md.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute(_) => "no_route",
            ProxyError::CredentialUnavailable(_) => "credential_unavailable",
            ProxyError::UpstreamUnreachable { .. } => "upstream_unreachable",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::RequestBodyTimeout { .. } => "request_body_timeout",
            ProxyError::HostNotAllowed(_) => "host_not_allowed",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::UpgradeNotSupported(_) => "upgrade_not_supported",
        }
    }

    /// The JSON response for this error.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        json_error(self.status(), self.code(), &self.to_string())
    }

    /// The gRPC status that says this error to a gRPC client.
    pub fn grpc_code(&self) -> Code {
        match self {
            ProxyError::NoRoute(_) => Code::Unimplemented,
            ProxyError::CredentialUnavailable(_) | ProxyError::UpstreamUnreachable { .. } => {
                Code::Unavailable
            }
            ProxyError::UpstreamTimeout { .. } => Code::DeadlineExceeded,
            ProxyError::RequestBodyTimeout { .. } => Code::Unknown,
            ProxyError::HostNotAllowed(_) => Code::PermissionDenied,
            ProxyError::BadRequest(_) => Code::InvalidArgument,
            ProxyError::UpgradeNotSupported(_) => Code::Unimplemented,
        }
    }

    /// The response for this error to a gRPC call: a status, no message body.
    pub fn to_grpc_response(&self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::new()));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(
            GRPC_STATUS.clone(),
            HeaderValue::from(u16::from(self.grpc_code() as u8)),
        );
        if let Ok(message) = HeaderValue::try_from(grpc::encode_message(&self.to_string())) {
            headers.insert(GRPC_MESSAGE.clone(), message);
        }
        headers.insert(SIDEKEY_ERROR.clone(), HeaderValue::from_static(self.code()));
        response
    }
}

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// A JSON error response `{"error": code, "message": message}` with `x-sidekey-error`.
pub fn json_error(status: StatusCode, code: &'static str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let length = body.len();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(SIDEKEY_ERROR.clone(), HeaderValue::from_static(code));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_json_with_its_code_header() {
        let err = ProxyError::NoRoute("/nowhere".into());
        let response = err.to_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()["x-sidekey-error"], "no_route");
        assert_eq!(response.headers()["content-type"], "application/json");
    }

    #[test]
    fn a_grpc_call_gets_its_error_as_a_status() {
        let err = ProxyError::UpstreamTimeout {
            upstream: "https://api.example".into(),
            timeout: Duration::from_secs(1),
        };
        let response = err.to_grpc_response();
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["grpc-status"], "4");
        assert_eq!(
            headers["grpc-message"],
            "upstream https://api.example did not answer within 1s"
        );
        assert_eq!(headers["x-sidekey-error"], "upstream_timeout");
    }
}
