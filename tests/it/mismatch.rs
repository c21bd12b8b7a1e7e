//! An app (or what stands in front of it) speaking the wrong protocol to a
//! listener: the first-day mistakes of wiring an app to a sidecar. Each one
//! must end in an answer that says what to do, or, where nothing can be
//! answered, in a log line that does: plain HTTP or h2c to an HTTPS
//! listener, TLS to a plain one, a PROXY protocol header from a load
//! balancer, `Upgrade` requests (WebSocket, h2c), and the odd request line
//! (HTTP/1.0 without `Host`, HTTP/0.9). Sent as raw bytes, so no client
//! library tidies them up; every test asserts on what the app got and on
//! what reached the upstream.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use tokio::time::Instant;

use crate::support::config::{TestConfig, forward_proxy, listen_tls, oauth2, route, static_token};
use crate::support::h2_app::H2App;
use crate::support::h2_wire::{GOAWAY, SETTINGS};
use crate::support::h2c::H2cConn;
use crate::support::logs::LogCapture;
use crate::support::proxy::{TestProxy, body_empty, request};
use crate::support::raw::{RawConn, RawResponse};
use crate::support::tls::{TestPki, client_hello};
use crate::support::token_servers::{OAuthBehaviour, OAuthServer, TokenReply};
use crate::support::upstream::{Upstream, UpstreamOpts};

/// Bound for an answer or a close that should come at once; the answer,
/// not this bound, ends a passing exchange.
const WITHIN: Duration = Duration::from_secs(10);

/// A recording TLS upstream and a proxy with one route to it (base path
/// `/v1`), listening with HTTPS when `tls`, and a forward proxy for the
/// upstream's `localhost:PORT`.
struct Scene {
    upstream: Upstream,
    proxy: TestProxy,
}

impl Scene {
    async fn start(tls: bool) -> Scene {
        let pki = Arc::new(TestPki::new());
        let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
        let mut listener = route(&format!("{}/v1", upstream.url()), "api");
        if tls {
            listener = listener.line(&listen_tls(&pki));
        }
        let host = format!("localhost:{}", upstream.addr().port());
        let proxy = TestConfig::new()
            .trusting(&pki)
            .with(static_token("api", "API_TOKEN"))
            .with(listener)
            .with(forward_proxy(&[(&host, "api")]))
            .env("API_TOKEN", "tok-mismatch")
            .start()
            .await;
        // The PKI's files are read at start; the directory may go.
        Scene { upstream, proxy }
    }

    fn port(&self) -> u16 {
        self.proxy.route_addr(0).port()
    }

    /// Raw bytes to the route listener: the first response (if one comes
    /// before the close), and the connection to read on.
    async fn send(&self, bytes: &[u8]) -> (Option<RawResponse>, RawConn) {
        let mut conn = RawConn::connect(self.proxy.route_addr(0)).await;
        // The server may close while we still write: read what it said.
        let _ = conn.send(bytes).await;
        (conn.read_response(WITHIN).await, conn)
    }
}

/// sidekey's own JSON error: the status, `x-sidekey-error`, and its message.
fn sidekey_error(response: &RawResponse, status: u16, code: &str) -> String {
    assert_eq!(response.status, status, "{}", response.body_text());
    assert_eq!(
        response.header("x-sidekey-error"),
        Some(code),
        "{response:?}"
    );
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", response.body_text()));
    assert_eq!(body["error"], code, "{body}");
    body["message"].as_str().expect("a message").to_owned()
}

// ---- 1. plain HTTP (and h2c) to an HTTPS listener ----

#[tokio::test]
async fn plain_http_to_an_https_listener_is_told_to_use_https() {
    let (logs, _guard) = LogCapture::install("warn", Duration::from_secs(10));
    let scene = Scene::start(true).await;
    let port = scene.port();
    let (response, mut conn) = scene
        .send(
            format!("GET /items?key=secret HTTP/1.1\r\nhost: localhost:{port}\r\n\r\n").as_bytes(),
        )
        .await;
    let response = response.unwrap_or_else(|| {
        panic!(
            "no HTTP answer to plain HTTP on an HTTPS listener; got {:?}",
            conn.text()
        )
    });
    let message = sidekey_error(&response, 400, "bad_request");
    assert!(
        message.contains(&format!("https://localhost:{port}/items")),
        "{message}"
    );
    assert!(
        !message.contains("secret"),
        "the query is not echoed: {message}"
    );
    assert_eq!(response.header("connection"), Some("close"));
    assert!(conn.closed_within(WITHIN).await, "closed after the answer");
    assert_eq!(scene.upstream.request_count(), 0);
    let listener = scene.proxy.route_addr(0);
    let lines = logs
        .wait_for_lines(&["WARN", "plain HTTP", &format!("https://{listener}")], 1)
        .await;
    assert!(!lines[0].contains("secret"), "{}", lines[0]);
}

#[tokio::test]
async fn plain_http_without_host_to_an_https_listener_is_told_its_address() {
    let scene = Scene::start(true).await;
    let addr = scene.proxy.route_addr(0);
    // HTTP/1.0, no Host, a body on its way: still one clear answer.
    let (response, _) = scene
        .send(b"POST /items HTTP/1.0\r\ncontent-length: 5\r\n\r\nhello")
        .await;
    let response = response.expect("an HTTP answer");
    let message = sidekey_error(&response, 400, "bad_request");
    assert!(
        message.contains(&format!("https://{addr}/items")),
        "{message}"
    );
}

#[tokio::test]
async fn a_plain_upload_to_an_https_listener_still_gets_its_answer() {
    let scene = Scene::start(true).await;
    let body = vec![b'x'; 512 * 1024];
    let mut conn = RawConn::connect(scene.proxy.route_addr(0)).await;
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    // An app that writes its whole upload before it reads (Python's
    // `requests`): the answer must not be lost to a reset.
    let _ = conn.send(&[head.as_bytes(), &body].concat()).await;
    let response = conn
        .read_response(WITHIN)
        .await
        .unwrap_or_else(|| panic!("no answer after the upload; got {:?}", conn.text()));
    sidekey_error(&response, 400, "bad_request");
}

/// What an h2c client connecting to `addr` is sent: the server preface
/// (an empty SETTINGS) first, then a GOAWAY, then the close. Returns the
/// GOAWAY's error code and debug data.
async fn goaway_then_close(addr: std::net::SocketAddr) -> (u32, String) {
    let mut app = H2App::connect(addr).await;
    let (frames, _) = app
        .read_until(WITHIN, |frames| frames.iter().any(|f| f.kind == GOAWAY))
        .await;
    assert_eq!(
        frames.first().map(|f| f.kind),
        Some(SETTINGS),
        "the server preface comes first: {frames:?}"
    );
    let goaway = frames
        .iter()
        .find(|f| f.kind == GOAWAY)
        .unwrap_or_else(|| panic!("no GOAWAY: {frames:?}"));
    let code = u32::from_be_bytes(goaway.payload[4..8].try_into().expect("a GOAWAY code"));
    let debug = String::from_utf8_lossy(&goaway.payload[8..]).into_owned();
    let (_, closed) = app.read_until(WITHIN, |_| false).await;
    assert!(closed, "closed after the GOAWAY");
    (code, debug)
}

#[tokio::test]
async fn h2c_to_an_https_listener_gets_a_goaway_that_says_https() {
    let scene = Scene::start(true).await;
    let addr = scene.proxy.route_addr(0);
    let (code, debug) = goaway_then_close(addr).await;
    // INADEQUATE_SECURITY (RFC 9113 §7): the transport needs TLS.
    assert_eq!(code, 0xc);
    assert!(debug.contains(&format!("https://{addr}")), "{debug}");
}

#[tokio::test]
async fn an_h2c_client_reports_the_goaway_and_its_reason() {
    let scene = Scene::start(true).await;
    let mut client = H2cConn::connect(scene.proxy.route_addr(0)).await;
    let err = client
        .send_head(request(Method::GET, "/items", body_empty()))
        .await
        .expect_err("no request is served without TLS");
    // hyper's h2 shows the reason and the debug data: "connection error
    // received: security properties do not meet minimum requirements
    // (b\"this listener speaks HTTPS: connect with TLS, https://…\")".
    let chain = sidekey::error_chain::error_chain(&err);
    assert!(chain.contains("security"), "{chain}");
    assert!(chain.contains("connect with TLS"), "{chain}");
    assert_eq!(scene.upstream.request_count(), 0);
}

// ---- 2. TLS to a plain listener ----

/// Three TLS ClientHellos to `addr` (a plain listener) are each closed at
/// once, without a byte: nothing sensible can be said inside TLS.
async fn hellos_are_closed_at_once(addr: std::net::SocketAddr) {
    for _ in 0..3 {
        let mut conn = RawConn::connect(addr).await;
        conn.send(&client_hello("localhost")).await.expect("sent");
        let started = Instant::now();
        assert!(conn.closed_within(WITHIN).await, "closed");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "closed at once, not after the idle timeout: {:?}",
            started.elapsed()
        );
        assert_eq!(conn.text(), "", "nothing sensible can be said inside TLS");
    }
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn tls_to_a_plain_listener_closes_at_once_and_warns_what_to_change() {
    let (logs, _guard) = LogCapture::install("warn", Duration::from_secs(10));
    let scene = Scene::start(false).await;
    let addr = scene.proxy.route_addr(0);
    hellos_are_closed_at_once(addr).await;
    let lines = logs
        .wait_for_lines(
            &["WARN", &addr.to_string(), &format!("Use http://{addr}")],
            1,
        )
        .await;
    assert_eq!(lines.len(), 1, "one line for a burst: {lines:#?}");
    assert!(lines[0].contains("tls"), "{}", lines[0]);
}

#[tokio::test]
async fn tls_to_the_forward_proxy_warns_to_name_it_with_http() {
    let (logs, _guard) = LogCapture::install("warn", Duration::from_secs(10));
    let scene = Scene::start(false).await;
    let addr = scene.proxy.forward_proxy_addr();
    let mut conn = RawConn::connect(addr).await;
    conn.send(&client_hello("localhost")).await.expect("sent");
    assert!(conn.closed_within(WITHIN).await, "closed");
    logs.wait_for_lines(&["WARN", &format!("HTTP_PROXY=http://{addr}")], 1)
        .await;
}

// ---- 4. a PROXY protocol header ----

/// A PROXY protocol v2 header (RFC: haproxy's proxy-protocol.txt §2.2):
/// signature, v2 PROXY over TCP4, 12 address bytes.
fn proxy_v2() -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
    header.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0x30, 0x39, 0x1f, 0x90]);
    header
}

const PROXY_V1: &[u8] = b"PROXY TCP4 10.0.0.1 10.0.0.2 12345 8080\r\n";

#[tokio::test]
async fn a_proxy_protocol_header_is_refused_by_name() {
    let (logs, _guard) = LogCapture::install("warn", Duration::from_secs(10));
    for tls in [false, true] {
        let scene = Scene::start(tls).await;
        let request = b"GET /items HTTP/1.1\r\nhost: localhost\r\n\r\n";
        for (version, header) in [("v1", PROXY_V1.to_vec()), ("v2", proxy_v2())] {
            let what = format!("PROXY {version}, tls listener: {tls}");
            let (response, mut conn) = scene.send(&[header.as_slice(), request].concat()).await;
            let response =
                response.unwrap_or_else(|| panic!("{what}: no answer; got {:?}", conn.text()));
            let message = sidekey_error(&response, 400, "bad_request");
            assert!(message.contains("PROXY protocol"), "{what}: {message}");
            assert!(conn.closed_within(WITHIN).await, "{what}: closed");
        }
        assert_eq!(scene.upstream.request_count(), 0);
        // Whatever the load balancer passes on may be TLS, whose client
        // never reads that answer: the operator learns it from the log.
        let listener = scene.proxy.route_addr(0).to_string();
        logs.wait_for_lines(&["WARN", &listener, "PROXY protocol header"], 1)
            .await;
    }
}

// ---- 3. upgrades ----

#[tokio::test]
async fn a_websocket_upgrade_is_refused_clearly_and_not_forwarded() {
    let scene = Scene::start(false).await;
    let (response, _) = scene
        .send(
            b"GET /chat HTTP/1.1\r\nhost: localhost\r\nconnection: Upgrade\r\n\
              upgrade: websocket\r\nsec-websocket-version: 13\r\n\
              sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await;
    let response = response.expect("an answer");
    let message = sidekey_error(&response, 501, "upgrade_not_supported");
    assert!(message.contains("WebSocket"), "{message}");
    assert_eq!(
        scene.upstream.request_count(),
        0,
        "the handshake reached the upstream as a plain GET: {:?}",
        scene.upstream.last_request().map(|r| r.headers)
    );

    // Through the forward proxy too (an `ws://` URL with HTTP_PROXY set).
    let port = scene.upstream.addr().port();
    let mut conn = RawConn::connect(scene.proxy.forward_proxy_addr()).await;
    conn.send(
        format!(
            "GET http://localhost:{port}/chat HTTP/1.1\r\nhost: localhost:{port}\r\n\
             connection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("sent");
    let response = conn.read_response(WITHIN).await.expect("an answer");
    sidekey_error(&response, 501, "upgrade_not_supported");
    assert_eq!(scene.upstream.request_count(), 0);
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_websocket_upgrade_is_refused_at_once_while_the_token_endpoint_hangs() {
    // No token yet (the token endpoint never answers): a request would
    // wait for the first token and then get a 503 blaming the credential.
    // An upgrade no token could make servable gets its 501 at once.
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let tokens = OAuthServer::start(OAuthBehaviour::default()).await;
    tokens.set_reply(Some(TokenReply::hang()));
    let proxy = TestConfig::new()
        .with(oauth2("api", &tokens.url()))
        .with(route(&upstream.url(), "api").line("allow_insecure_http = true"))
        .env("CLIENT_ID", "id")
        .env("CLIENT_SECRET", "secret")
        .start()
        .await;
    tokens.wait_for_requests(1).await;
    let started = Instant::now();
    let mut conn = RawConn::connect(proxy.route_addr(0)).await;
    conn.send(
        b"GET /chat HTTP/1.1\r\nhost: localhost\r\nconnection: Upgrade\r\n\
          upgrade: websocket\r\nsec-websocket-version: 13\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("sent");
    let response = conn.read_response(WITHIN).await.expect("an answer");
    let waited = started.elapsed();
    let message = sidekey_error(&response, 501, "upgrade_not_supported");
    assert!(message.contains("WebSocket"), "{message}");
    assert!(
        waited < Duration::from_millis(500),
        "answered after {waited:?} (the first-token wait)"
    );
    assert!(
        proxy
            .handle
            .credentials()
            .get("api")
            .expect("api")
            .current()
            .is_err(),
        "still no token"
    );
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test]
async fn an_h2c_upgrade_offer_is_served_over_http1() {
    let scene = Scene::start(false).await;
    let (response, _) = scene
        .send(
            b"GET /items HTTP/1.1\r\nhost: localhost\r\nconnection: Upgrade, HTTP2-Settings\r\n\
              upgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n",
        )
        .await;
    let response = response.expect("an answer");
    assert_eq!(response.status, 200, "{}", response.body_text());
    let received = scene.upstream.last_request().expect("forwarded");
    assert_eq!(received.path, "/v1/items");
    for hop in ["upgrade", "http2-settings", "connection"] {
        assert!(
            received.header(hop).is_none(),
            "{hop} reached the upstream: {:?}",
            received.headers
        );
    }
}

// ---- 5. the admin listener ----

/// A proxy with the admin listener (plain HTTP, as it always is) and one
/// route with a static token.
async fn with_admin() -> TestProxy {
    TestConfig::new()
        .with(static_token("api", "API_TOKEN"))
        .with(route("https://127.0.0.1:9/v1", "api"))
        .env("API_TOKEN", "tok-admin")
        .admin()
        .start()
        .await
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn tls_to_the_admin_listener_closes_at_once_and_warns_to_probe_with_http() {
    // A Kubernetes probe with `scheme: HTTPS` (or `curl https://`) against
    // the plain admin port: hyper's bare 400, unreadable inside TLS, used
    // to be all it got, and the log said nothing.
    let (logs, _guard) = LogCapture::install("warn", Duration::from_secs(10));
    let proxy = with_admin().await;
    let addr = proxy.admin_addr();
    hellos_are_closed_at_once(addr).await;
    let lines = logs
        .wait_for_lines(
            &[
                "WARN",
                &addr.to_string(),
                &format!("http://{addr}"),
                "scheme: HTTP",
            ],
            1,
        )
        .await;
    assert_eq!(lines.len(), 1, "one line for a burst: {lines:#?}");
    assert!(lines[0].contains("admin"), "{}", lines[0]);
    // The listener still serves its probes.
    assert_eq!(proxy.admin_get("/healthz").await.status, 200);
}

#[tokio::test]
async fn a_proxy_protocol_header_to_the_admin_listener_is_refused_by_name() {
    let (logs, _guard) = LogCapture::install("warn", Duration::from_secs(10));
    let proxy = with_admin().await;
    let addr = proxy.admin_addr();
    let request = b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n";
    for (version, header) in [("v1", PROXY_V1.to_vec()), ("v2", proxy_v2())] {
        let mut conn = RawConn::connect(addr).await;
        let _ = conn.send(&[header.as_slice(), request].concat()).await;
        let response = conn
            .read_response(WITHIN)
            .await
            .unwrap_or_else(|| panic!("{version}: no answer; got {:?}", conn.text()));
        let message = sidekey_error(&response, 400, "bad_request");
        assert!(message.contains("PROXY protocol"), "{version}: {message}");
        assert!(conn.closed_within(WITHIN).await, "{version}: closed");
    }
    logs.wait_for_lines(&["WARN", &addr.to_string(), "PROXY protocol header"], 1)
        .await;
    assert_eq!(proxy.admin_get("/healthz").await.status, 200);
}

#[tokio::test]
async fn h2c_to_the_admin_listener_is_told_to_use_http1_and_warns() {
    // A Kubernetes `grpc:` probe, or `curl --http2-prior-knowledge`, at the
    // admin port (HTTP/1.1 only): hyper's HTTP/1 server used to answer the
    // preface with a bare 400, which an HTTP/2 client reads as a garbled
    // frame, and nothing was logged.
    let (logs, _guard) = LogCapture::install("warn", Duration::from_secs(10));
    let proxy = with_admin().await;
    let addr = proxy.admin_addr();
    let (code, debug) = goaway_then_close(addr).await;
    // HTTP_1_1_REQUIRED (RFC 9113 §7).
    assert_eq!(code, 0xd);
    assert!(debug.contains("HTTP/1.1"), "{debug}");
    let lines = logs
        .wait_for_lines(&["WARN", &addr.to_string(), "httpGet"], 1)
        .await;
    assert!(lines[0].contains("admin"), "{}", lines[0]);
    assert_eq!(proxy.admin_get("/healthz").await.status, 200);
}

// ---- 6. odd request lines ----

#[tokio::test]
async fn http10_without_host_is_served() {
    let scene = Scene::start(false).await;
    let (response, mut conn) = scene.send(b"GET /items HTTP/1.0\r\n\r\n").await;
    let response = response.expect("an answer");
    assert_eq!(response.status, 200, "{}", response.body_text());
    assert!(conn.closed_within(WITHIN).await, "HTTP/1.0: closed after");
    let received = scene.upstream.last_request().expect("forwarded");
    assert_eq!(received.path, "/v1/items");
    assert!(received.header("host").is_some(), "{:?}", received.headers);
}

#[tokio::test]
async fn http10_without_host_through_the_forward_proxy_is_served() {
    let scene = Scene::start(false).await;
    let port = scene.upstream.addr().port();
    let mut conn = RawConn::connect(scene.proxy.forward_proxy_addr()).await;
    conn.send(format!("GET http://localhost:{port}/items HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .expect("sent");
    let response = conn.read_response(WITHIN).await.expect("an answer");
    assert_eq!(response.status, 200, "{}", response.body_text());
    assert_eq!(
        scene.upstream.last_request().expect("forwarded").path,
        "/items"
    );
}

#[tokio::test]
async fn an_http09_request_line_gets_a_400_and_a_close() {
    let scene = Scene::start(false).await;
    let (response, mut conn) = scene.send(b"GET /items\r\n").await;
    let response = response.expect("an answer");
    assert_eq!(response.status, 400);
    assert!(conn.closed_within(WITHIN).await, "closed");
    assert_eq!(scene.upstream.request_count(), 0);
}

#[tokio::test]
async fn an_https_url_on_a_route_listener_is_refused_with_what_to_send() {
    let scene = Scene::start(false).await;
    let (response, _) = scene
        .send(b"GET https://api.example.test/items HTTP/1.1\r\nhost: api.example.test\r\n\r\n")
        .await;
    let response = response.expect("an answer");
    let message = sidekey_error(&response, 400, "bad_request");
    assert!(message.contains("[forward_proxy]"), "{message}");
    assert_eq!(scene.upstream.request_count(), 0);
}
