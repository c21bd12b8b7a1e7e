//! h2c apps that abuse HTTP/2 itself: streams opened and reset as fast as
//! the app can (rapid reset, CVE-2023-44487) and a header block that never
//! ends, CONTINUATION after CONTINUATION (the 2024 CONTINUATION flood). The
//! abusive connection is closed with GOAWAY, nothing of it reaches the
//! upstream, and the next connection is served as usual. Both defences are
//! the `h2` crate's, under the settings `crate::http2` gives hyper; these
//! tests keep them there.
//!
//! Floods of PING or SETTINGS frames, of empty DATA frames, HPACK bombs
//! and stream bookkeeping are [`super::h2c_frames`]'s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::config::static_route;
use crate::support::h2_wire::frame;
use crate::support::h2c::H2cConn;
use crate::support::proxy::{TestProxy, body_empty, request_with};
use crate::support::tls::TestPki;
use crate::support::upstream::{Upstream, UpstreamOpts};

/// A proxy with one route to an HTTP/2 upstream that answers after 50 ms
/// (so a request that reached it would still be in flight when reset).
async fn scene() -> (Upstream, TestProxy) {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(
        UpstreamOpts::tls(&pki)
            .http2()
            .delay(Duration::from_millis(50)),
    )
    .await;
    let proxy = static_route(&upstream.url()).trusting(&pki).start().await;
    (upstream, proxy)
}

/// A well-behaved h2c request on a new connection is answered.
async fn next_connection_is_served(addr: SocketAddr) {
    let mut conn = H2cConn::connect(addr).await;
    let response = conn
        .send(request_with(Method::GET, "/fine", &[], body_empty()))
        .await;
    assert_eq!(response.status, StatusCode::OK);
}

/// An HPACK field, literal without indexing, new name (both under 127 bytes).
fn field(name: &str, value: &str) -> Vec<u8> {
    let mut field = vec![0x00, name.len() as u8];
    field.extend_from_slice(name.as_bytes());
    field.push(value.len() as u8);
    field.extend_from_slice(value.as_bytes());
    field
}

/// HTTP/2 error code `ENHANCE_YOUR_CALM`.
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The error code of the GOAWAY frame among the frames in `bytes`.
fn goaway_error(bytes: &[u8]) -> Option<u32> {
    let mut rest = bytes;
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let payload = rest.get(9..9 + len)?;
        if rest[3] == 0x7 {
            return Some(u32::from_be_bytes(payload.get(4..8)?.try_into().ok()?));
        }
        rest = &rest[9 + len..];
    }
    None
}

#[tokio::test]
async fn rapid_reset_closes_the_connection_before_anything_reaches_the_upstream() {
    let (upstream, proxy) = scene().await;
    let tcp = TcpStream::connect(proxy.route_addr(0)).await.unwrap();
    let (mut app, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);

    let mut opened = 0;
    let refused = loop {
        app = match app.ready().await {
            Ok(app) => app,
            Err(err) => break err,
        };
        let request = http::Request::get("http://sidekey/reset").body(()).unwrap();
        match app.send_request(request, true) {
            Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(err) => break err,
        }
        opened += 1;
        assert!(
            opened < 10_000,
            "10,000 streams opened and reset, no GOAWAY"
        );
        if opened % 50 == 0 {
            // Let the connection's task write them.
            tokio::task::yield_now().await;
        }
    };
    assert_eq!(
        refused.reason(),
        Some(h2::Reason::ENHANCE_YOUR_CALM),
        "{refused}"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .is_ok()
    );
    next_connection_is_served(proxy.route_addr(0)).await;
    assert_eq!(upstream.paths(), ["/fine"], "after {opened} reset streams");
}

#[tokio::test]
async fn a_header_block_that_never_ends_closes_the_connection() {
    let (upstream, proxy) = scene().await;
    let mut tcp = TcpStream::connect(proxy.route_addr(0)).await.unwrap();
    let mut head = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    head.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    let fields: Vec<u8> = [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/flood"),
        (":authority", "sidekey"),
    ]
    .iter()
    .flat_map(|(name, value)| field(name, value))
    .collect();
    head.extend(frame(0x1, 0x1, 1, &fields)); // HEADERS, END_STREAM, no END_HEADERS
    tcp.write_all(&head).await.unwrap();

    // 10 KiB CONTINUATION frames, never END_HEADERS: 100 MiB unless cut off.
    let more: Vec<u8> = (0..100)
        .flat_map(|i| field(&format!("x-f{i}"), &"a".repeat(100)))
        .collect();
    let continuation = frame(0x9, 0, 1, &more);
    let mut sent = 0usize;
    while sent < 100 << 20 {
        let write = tokio::time::timeout(Duration::from_secs(5), tcp.write_all(&continuation));
        match write.await {
            Ok(Ok(())) => sent += continuation.len(),
            Ok(Err(_)) => break,
            Err(_) => panic!("a write blocked for 5 s after {sent} bytes"),
        }
    }
    assert!(sent < 100 << 20, "100 MiB of one header block were read");

    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer));
    let _ = read.await.expect("the connection is closed");
    assert_eq!(
        goaway_error(&answer),
        Some(ENHANCE_YOUR_CALM),
        "the connection ends with GOAWAY: {answer:?}"
    );
    next_connection_is_served(proxy.route_addr(0)).await;
    assert_eq!(upstream.paths(), ["/fine"]);
}
