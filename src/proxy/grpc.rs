//! What the proxy knows of gRPC: how to tell a gRPC call, and how its own
//! errors are said to one.
//!
//! A gRPC call is an HTTP/2 request whose `content-type` is
//! `application/grpc`, alone or with a `+format` or `;parameters` (gRPC-Web,
//! `application/grpc-web…`, works over HTTP/1.1 and is not one). Such a
//! call needs HTTP/2 end to end (its status travels in trailers), so
//! `forward` marks it for an HTTP/2 upstream connection and the client
//! refuses to send it over HTTP/1.1 ([`super::client`]).
//!
//! A gRPC server rejects a token with `grpc-status: 16` (UNAUTHENTICATED)
//! in an HTTP 200 answer where an HTTP API says 401: [`rejects_token`] reads
//! it as that 401, so `renew_on_status` covers gRPC upstreams too.
//!
//! An error sidekey answers itself goes to a gRPC client as a gRPC status
//! ([`crate::error::ProxyError::to_grpc_response`]): gRPC clients read
//! `grpc-status` and `grpc-message`, not a JSON body, and turn a bare 502
//! into "Received http2 header with status: 502".

use http::header::CONTENT_TYPE;
use http::{HeaderMap, Request, Response, StatusCode, Version};

/// gRPC status codes (`google.rpc.Code`) sidekey answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    /// 2: no better code.
    Unknown = 2,
    /// 3: the request is not one sidekey forwards.
    InvalidArgument = 3,
    /// 4: the upstream did not answer in time.
    DeadlineExceeded = 4,
    /// 7: a forward-proxy host outside `hosts`.
    PermissionDenied = 7,
    /// 12: no route for the method's path.
    Unimplemented = 12,
    /// 14: no token, or no (HTTP/2) connection to the upstream.
    Unavailable = 14,
}

/// Whether `request` is a gRPC call: HTTP/2 and `application/grpc…`. A
/// version check only, for HTTP/1.1 requests.
pub fn is_call<B>(request: &Request<B>) -> bool {
    request.version() == Version::HTTP_2 && has_grpc_content_type(request.headers())
}

/// The HTTP status a gRPC call's answer stands for where tokens are
/// concerned: 401 when a trailers-only answer (the status in its headers,
/// as servers answer a call they refuse before any message) says
/// UNAUTHENTICATED, else the answer's own status.
pub fn rejects_token<B>(response: &Response<B>) -> StatusCode {
    match response.headers().get("grpc-status") {
        Some(code) if code.as_bytes() == b"16" => StatusCode::UNAUTHORIZED,
        _ => response.status(),
    }
}

/// Whether `content-type` is `application/grpc`, `application/grpc+…` or
/// `application/grpc;…`.
fn has_grpc_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return false;
    };
    let value = value.as_bytes();
    let prefix = b"application/grpc";
    value.len() >= prefix.len()
        && value[..prefix.len()].eq_ignore_ascii_case(prefix)
        && matches!(value.get(prefix.len()), None | Some(b'+' | b';'))
}

/// `message` as a `grpc-message` value: percent-encoded UTF-8, every byte
/// outside printable ASCII, and `%`, as `%XX` (gRPC over HTTP/2, "Responses").
pub fn encode_message(message: &str) -> String {
    let mut encoded = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(version: Version, content_type: &str) -> bool {
        let request = Request::builder()
            .version(version)
            .header(CONTENT_TYPE, content_type)
            .body(())
            .unwrap();
        is_call(&request)
    }

    #[test]
    fn grpc_calls_are_http2_with_a_grpc_content_type() {
        for content_type in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;charset=utf-8",
        ] {
            assert!(call(Version::HTTP_2, content_type), "{content_type}");
            assert!(
                !call(Version::HTTP_11, content_type),
                "{content_type} over h1"
            );
        }
        for content_type in [
            "application/grpc-web",
            "application/grpcx",
            "application/json",
        ] {
            assert!(!call(Version::HTTP_2, content_type), "{content_type}");
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(encode_message("plain text: ok"), "plain text: ok");
        assert_eq!(encode_message("100% über\n"), "100%25 %C3%BCber%0A");
    }
}
