//! Hostile input: requests that must not be forwarded, or not with the
//! credential, or not to anywhere but the configured upstream. Every test
//! runs a recording TLS upstream that the configuration names ("good") and
//! a second one it does not ("evil"), sends what an attacker (or a confused
//! app) would send, mostly as raw bytes so no client library tidies it up,
//! and asserts on the answer and on what each upstream saw.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Method;

use crate::support::config::{TestConfig, forward_proxy, route, static_token};
use crate::support::proxy::{CLIENT_TIMEOUT, TestProxy, body_bytes, request_with};
use crate::support::raw::{RawConn, RawResponse};
use crate::support::tls::TestPki;
use crate::support::upstream::{Upstream, UpstreamOpts};

const TOKEN: &str = "tok-hostile";

/// How long a raw exchange waits for the server to close the connection
/// (every exchange here ends with a close: `connection: close`, or a
/// refusal); the close, not this bound, ends a passing exchange.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// A proxy with one reverse route (`good` with base path `/v1`) and a
/// forward proxy whose only host is `host(GOOD_PORT)`; an `evil` upstream
/// runs beside them and is named nowhere.
struct Scene {
    good: Upstream,
    evil: Upstream,
    proxy: TestProxy,
}

impl Scene {
    async fn start(host: impl FnOnce(u16) -> String) -> Scene {
        let pki = Arc::new(TestPki::new());
        let good = Upstream::start(UpstreamOpts::tls(&pki)).await;
        let evil = Upstream::start(UpstreamOpts::tls(&pki)).await;
        let proxy = TestConfig::new()
            .trusting(&pki)
            .with(static_token("api", "API_TOKEN"))
            .with(route(&format!("{}/v1", good.url()), "api"))
            .with(forward_proxy(&[(&host(good.addr().port()), "api")]))
            .env("API_TOKEN", TOKEN)
            .start()
            .await;
        Scene { good, evil, proxy }
    }

    /// The forward proxy names `localhost:GOOD_PORT` only.
    async fn localhost_only() -> Scene {
        Scene::start(|port| format!("localhost:{port}")).await
    }

    fn g(&self) -> u16 {
        self.good.addr().port()
    }

    fn e(&self) -> u16 {
        self.evil.addr().port()
    }

    /// Raw bytes to the reverse route's listener.
    async fn reverse(&self, bytes: &[u8]) -> (Vec<RawResponse>, bool) {
        exchange(self.proxy.route_addr(0), bytes).await
    }

    /// Raw bytes to the forward proxy's listener.
    async fn forward(&self, bytes: &[u8]) -> (Vec<RawResponse>, bool) {
        exchange(self.proxy.forward_proxy_addr(), bytes).await
    }

    /// The evil upstream was never even connected to.
    fn assert_evil_untouched(&self) {
        assert_eq!(self.evil.connections(), 0, "the evil upstream was reached");
    }
}

/// Write `bytes` on a fresh connection, keeping it open; the responses,
/// and whether the server closed the connection within [`CLOSE_WITHIN`] (a
/// server that keeps a connection open after a refused request would answer
/// a request pipelined behind it).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> (Vec<RawResponse>, bool) {
    let mut conn = RawConn::connect(addr).await;
    // The server may close while we still write: read what it said.
    let _ = conn.send(bytes).await;
    let closed = conn.closed_within(CLOSE_WITHIN).await;
    (conn.responses(), closed)
}

fn statuses(responses: &[RawResponse]) -> Vec<u16> {
    responses.iter().map(|r| r.status).collect()
}

/// Exactly one response, a 4xx; returns it.
fn one_4xx<'a>(responses: &'a [RawResponse], what: &str) -> &'a RawResponse {
    assert_eq!(responses.len(), 1, "{what}: {responses:?}");
    let response = &responses[0];
    assert!(
        (400..500).contains(&response.status),
        "{what}: status {} ({})",
        response.status,
        response.body_text()
    );
    response
}

/// Exactly one response, sidekey's own 400 `bad_request`.
fn one_bad_request(responses: &[RawResponse], what: &str) {
    let response = one_4xx(responses, what);
    assert_eq!(response.status, 400, "{what}");
    assert_eq!(
        response.header("x-sidekey-error"),
        Some("bad_request"),
        "{what}: {response:?}"
    );
}

/// A GET as raw bytes; `connection: close` so the exchange ends with the answer.
fn get(target: &str, host: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").into_bytes()
}

// ---- issue #7, defect 4: CONNECT (and TRACE/TRACK) ----

#[tokio::test]
async fn connect_trace_and_track_are_refused_on_every_listener() {
    let scene = Scene::localhost_only().await;
    let (g, e) = (scene.g(), scene.e());

    let connect = format!(
        "CONNECT 127.0.0.1:{e} HTTP/1.1\r\nhost: 127.0.0.1:{e}\r\nconnection: close\r\n\r\n"
    );
    let (responses, _) = scene.reverse(connect.as_bytes()).await;
    one_bad_request(&responses, "CONNECT on a reverse route");
    let (responses, _) = scene
        .reverse(
            format!(
                "CONNECT localhost:{g} HTTP/1.1\r\nhost: localhost:{g}\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    one_bad_request(&responses, "CONNECT to the upstream's own authority");

    for method in ["TRACE", "TRACK"] {
        let (responses, _) = scene
            .reverse(
                format!("{method} /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").as_bytes(),
            )
            .await;
        one_bad_request(&responses, &format!("{method} on a reverse route"));
        let (responses, _) = scene
            .forward(
                format!("{method} http://localhost:{g}/x HTTP/1.1\r\nhost: localhost:{g}\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
        one_bad_request(&responses, &format!("{method} through the forward proxy"));
    }
    let (responses, _) = scene
        .forward(
            format!(
                "CONNECT localhost:{g} HTTP/1.1\r\nhost: localhost:{g}\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    one_bad_request(&responses, "CONNECT through the forward proxy");

    assert_eq!(scene.good.request_count(), 0, "nothing was forwarded");
    scene.assert_evil_untouched();
}

// ---- issue #7, defect 15: forward proxy host and port ----

#[tokio::test]
async fn forward_proxy_key_without_port_allows_only_the_default_port() {
    // "127.0.0.1" names the host on the default port; the evil upstream
    // listens on the same address, another port.
    let scene = Scene::start(|_| "127.0.0.1".to_owned()).await;
    let e = scene.e();
    let (responses, _) = scene
        .forward(&get(
            &format!("http://127.0.0.1:{e}/x"),
            &format!("127.0.0.1:{e}"),
        ))
        .await;
    let response = one_4xx(&responses, "another port of an allowed host");
    assert_eq!(response.status, 403);
    assert_eq!(response.header("x-sidekey-error"), Some("host_not_allowed"));
    scene.assert_evil_untouched();
}

#[tokio::test]
async fn forward_proxy_host_and_port_key_allows_that_port_only() {
    let scene = Scene::localhost_only().await;
    let (g, e) = (scene.g(), scene.e());

    let req = request_with(
        Method::GET,
        &format!("http://localhost:{g}/v2/items?q=1"),
        &[("authorization", "Bearer app")],
        body_bytes(""),
    );
    let r = scene.proxy.via_forward_proxy(req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = scene.good.last_request().expect("forwarded");
    assert_eq!(seen.path_and_query(), "/v2/items?q=1");
    assert_eq!(
        seen.header_all("authorization"),
        vec![format!("Bearer {TOKEN}")]
    );
    assert_eq!(seen.header("host"), Some(format!("localhost:{g}").as_str()));

    for target in [
        format!("http://localhost:{e}/x"),
        "http://localhost/x".to_owned(),
    ] {
        let (responses, _) = scene.forward(&get(&target, "localhost")).await;
        assert_eq!(one_4xx(&responses, &target).status, 403, "{target}");
    }
    assert_eq!(scene.good.request_count(), 1);
    scene.assert_evil_untouched();
}

#[tokio::test]
async fn forward_proxy_bypass_attempts_never_reach_an_unnamed_host() {
    let scene = Scene::localhost_only().await;
    let (g, e) = (scene.g(), scene.e());
    let attempts: Vec<(String, String)> = vec![
        // trailing dot, case is fine (same name), so not here
        (
            format!("http://localhost.:{g}/x"),
            format!("localhost.:{g}"),
        ),
        // userinfo
        (
            format!("http://localhost@127.0.0.1:{e}/x"),
            format!("127.0.0.1:{e}"),
        ),
        (
            format!("http://localhost:{g}@127.0.0.1:{e}/x"),
            format!("127.0.0.1:{e}"),
        ),
        (
            format!("http://evil@localhost:{g}/x"),
            format!("localhost:{g}"),
        ),
        // other names and numbers for the same address
        (format!("http://127.0.0.1:{g}/x"), format!("127.0.0.1:{g}")),
        (
            format!("http://2130706433:{g}/x"),
            format!("2130706433:{g}"),
        ),
        (
            format!("http://0x7f000001:{g}/x"),
            format!("0x7f000001:{g}"),
        ),
        (
            format!("http://0177.0.0.1:{g}/x"),
            format!("0177.0.0.1:{g}"),
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{g}/x"),
            format!("[::ffff:127.0.0.1]:{g}"),
        ),
        (format!("http://[::1]:{g}/x"), format!("[::1]:{g}")),
        // other ports
        (format!("http://localhost:{e}/x"), format!("localhost:{e}")),
        ("http://localhost/x".to_owned(), "localhost".to_owned()),
        (format!("http://localhost:0{e}/x"), format!("localhost:{e}")),
        // encodings
        (
            format!("http://local%68ost:{g}/x"),
            format!("localhost:{g}"),
        ),
        (
            format!("http://localhost%3a{g}/x"),
            format!("localhost:{g}"),
        ),
        (
            format!("http://localhost:{g}\\@127.0.0.1:{e}/x"),
            format!("127.0.0.1:{e}"),
        ),
        // the Host header never decides
        (format!("http://127.0.0.1:{e}/x"), format!("localhost:{g}")),
        ("/x".to_owned(), format!("localhost:{g}")),
        (format!("https://localhost:{g}/x"), format!("localhost:{g}")),
    ];
    for (target, host) in &attempts {
        let (responses, _) = scene.forward(&get(target, host)).await;
        one_4xx(&responses, target);
    }
    assert_eq!(scene.good.request_count(), 0, "no attempt was forwarded");
    scene.assert_evil_untouched();

    // Host names ignore case: this is the configured host, and the upstream
    // is addressed by the configured name.
    let (responses, _) = scene
        .forward(&get(&format!("http://LocalHost:{g}/x"), "evil"))
        .await;
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].status, 200);
    let seen = scene.good.last_request().expect("forwarded");
    assert_eq!(seen.header("host"), Some(format!("localhost:{g}").as_str()));
    scene.assert_evil_untouched();
}

// ---- issue #7, defect 16: paths that escape on some upstreams ----

#[tokio::test]
async fn paths_that_escape_on_some_upstream_are_refused() {
    let scene = Scene::localhost_only().await;
    let g = scene.g();
    let hostile = [
        // the plain forms
        "/../admin",
        "/a/./b",
        "/%2e%2e/admin",
        // Tomcat/Spring: `;` starts path parameters, `..;` is `..`
        "/..;/admin",
        "/a/..;jsessionid=x/b",
        "/a/.;/b",
        // encoded slashes, decoded before splitting
        "/..%2fadmin",
        "/a%2F..%2Fadmin",
        // IIS: `\` is `/`
        "/..\\admin",
        "/a\\..\\b",
        "/a/..%5cb",
        // double (and triple) decoding
        "/%252e%252e/admin",
        "/a/%252e%252e%252fadmin",
        "/%25252e%25252e/admin",
        // NUL and other control bytes
        "/..%00/admin",
        "/a%00b",
        "/a%0d%0ax-injected:%201",
        "/a%09b",
        // IIS %u encoding, overlong UTF-8, full-width dots
        "/%u002e%u002e/admin",
        "/%c0%ae%c0%ae/admin",
        "/%ef%bc%8e%ef%bc%8e/admin",
        // trailing spaces vanish on Windows
        "/..%20/admin",
    ];
    for path in hostile {
        let (responses, _) = scene.reverse(&get(path, "a")).await;
        one_bad_request(&responses, &format!("reverse {path}"));
        let (responses, _) = scene
            .forward(&get(
                &format!("http://localhost:{g}{path}"),
                &format!("localhost:{g}"),
            ))
            .await;
        one_bad_request(&responses, &format!("forward {path}"));
    }
    assert_eq!(scene.good.request_count(), 0, "nothing was forwarded");
    scene.assert_evil_untouched();
}

#[tokio::test]
async fn legitimate_paths_are_forwarded_unchanged() {
    let scene = Scene::localhost_only().await;
    let fine = [
        "/file.json",
        "/a..b",
        "/a/...",
        "/%2e%2e%2e",
        "/..a/b.",
        "/.well-known/openid-configuration",
        "/files/a%2Fb",
        "/files/a%5Cb",
        "/caf%C3%A9/%E2%80%A6",
        "/a;b=c/d",
        "/100%25/x",
        "/q?path=../../etc&x=%2e%2e",
    ];
    for path in fine {
        let (responses, _) = scene.reverse(&get(path, "a")).await;
        assert_eq!(responses.len(), 1, "{path}");
        assert_eq!(
            responses[0].status,
            200,
            "{path}: {}",
            responses[0].body_text()
        );
        let seen = scene.good.last_request().expect("forwarded");
        assert_eq!(seen.uri.to_string(), format!("/v1{path}"), "{path}");
    }
}

// ---- issue #7, defect 17: Content-Length with Transfer-Encoding ----

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_in_either_order() {
    let scene = Scene::localhost_only().await;
    let after = "GET /after HTTP/1.1\r\nhost: a\r\n\r\n";
    let heads = [
        "content-length: 4\r\ntransfer-encoding: chunked\r\n",
        "transfer-encoding: chunked\r\ncontent-length: 4\r\n",
        "Content-Length: 4\r\nTransfer-Encoding: gzip, chunked\r\n",
        "transfer-encoding: chunked\r\ncontent-length: 0\r\ncontent-length: 0\r\n",
    ];
    for head in heads {
        // The chunked body hides a second request in what Content-Length
        // would call the next message.
        let bytes = format!(
            "POST /smuggle HTTP/1.1\r\nhost: a\r\n{head}\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n{after}"
        );
        let (responses, closed) = scene.reverse(bytes.as_bytes()).await;
        one_bad_request(&responses, head);
        assert!(closed, "{head}: the connection is closed after the refusal");
        let (responses, closed) = scene
            .forward(
                bytes
                    .replace(
                        "POST /smuggle",
                        &format!("POST http://localhost:{}/smuggle", scene.g()),
                    )
                    .as_bytes(),
            )
            .await;
        one_bad_request(&responses, head);
        assert!(closed, "{head}: the forward proxy closes too");
    }
    assert_eq!(scene.good.request_count(), 0, "nothing was forwarded");
}

#[tokio::test]
async fn conflicting_framing_is_caught_behind_earlier_requests_on_a_connection() {
    let scene = Scene::localhost_only().await;
    // A body that looks like a conflicting head must not trip the check,
    // also when sidekey refused its request without reading it; the real
    // conflict in the fourth request must.
    let decoy = "GET /x HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
    let bytes = format!(
        "POST /../refused HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n{decoy}\
         POST /one HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n{decoy}\
         GET /two HTTP/1.1\r\nhost: a\r\n\r\n\
         POST /three HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n\
         GET /four HTTP/1.1\r\nhost: a\r\n\r\n",
        decoy.len(),
        decoy.len()
    );
    let (responses, closed) = scene.reverse(bytes.as_bytes()).await;
    assert_eq!(statuses(&responses), [400, 200, 200, 400], "{responses:?}");
    assert_eq!(responses[3].header("x-sidekey-error"), Some("bad_request"));
    assert!(closed);
    assert_eq!(scene.good.paths(), ["/v1/one", "/v1/two"]);
    assert_eq!(scene.good.requests()[0].body_text(), decoy);
}

// ---- chunked request bodies on a keep-alive connection ----

/// Three chunked uploads and a GET, as one stream: several chunks; chunk
/// extensions and trailer fields; a body that looks like a conflicting
/// head (with an upper-case size).
fn chunked_uploads() -> (String, [(&'static str, String); 4]) {
    let decoy = "GET /x HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
    let bytes = format!(
        "POST /one HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n\
         5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n\
         PUT /two HTTP/1.1\r\nhost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
         3;name=value;q=\"a;b\"\r\nabc\r\n2 ; x\r\nde\r\n0;last\r\nx-checksum: 1234\r\nx-more: a\r\n\r\n\
         POST /three HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n\
         {:X}\r\n{decoy}\r\n000\r\n\r\n\
         GET /four HTTP/1.1\r\nhost: a\r\n\r\n",
        decoy.len()
    );
    let expected = [
        ("/v1/one", "hello world".to_owned()),
        ("/v1/two", "abcde".to_owned()),
        ("/v1/three", decoy.to_owned()),
        ("/v1/four", String::new()),
    ];
    (bytes, expected)
}

/// On `conn`, where the requests of `expected` were written: each is
/// answered 200 without `Connection: close`, the connection is left open
/// (a GET of `probe` sent after the answers is answered on it too), and the
/// upstream saw each request with its body, then the probe at `probe_seen`.
async fn assert_all_forwarded_on_one_connection(
    scene: &Scene,
    conn: &mut RawConn,
    expected: &[(&str, String)],
    (probe, probe_seen): (&str, &str),
) {
    let mut responses = Vec::new();
    for _ in expected {
        match conn.read_response(CLIENT_TIMEOUT).await {
            Some(response) => responses.push(response),
            None => panic!(
                "closed or silent after {responses:?}; unparsed: {:?}",
                conn.text()
            ),
        }
    }
    assert_eq!(
        statuses(&responses),
        vec![200; expected.len()],
        "{responses:?}"
    );
    for response in &responses {
        assert_eq!(response.header("connection"), None, "{response:?}");
    }
    conn.send(format!("GET {probe} HTTP/1.1\r\nhost: a\r\n\r\n").as_bytes())
        .await
        .expect("the connection is left open for the next request");
    let answer = conn.read_response(CLIENT_TIMEOUT).await;
    assert_eq!(
        answer.map(|r| r.status),
        Some(200),
        "the connection is left open for the next request"
    );
    assert_eq!(conn.text(), "", "nothing but the answers was sent");
    let mut expected = expected.to_vec();
    expected.push((probe_seen, String::new()));
    let seen: Vec<(String, String)> = scene
        .good
        .requests()
        .iter()
        .map(|r| (r.path.clone(), r.body_text()))
        .collect();
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(path, body)| ((*path).to_owned(), body.clone()))
        .collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn chunked_requests_keep_their_connection_open() {
    let scene = Scene::localhost_only().await;
    let (bytes, expected) = chunked_uploads();
    let mut conn = RawConn::connect(scene.proxy.route_addr(0)).await;
    conn.send(bytes.as_bytes()).await.expect("write");
    assert_all_forwarded_on_one_connection(&scene, &mut conn, &expected, ("/probe", "/v1/probe"))
        .await;
}

#[tokio::test]
async fn chunked_requests_read_in_small_pieces_keep_their_connection_open() {
    let scene = Scene::localhost_only().await;
    let (bytes, expected) = chunked_uploads();
    // Read boundaries fall inside heads, size lines, data, CRLFs, trailers.
    let mut conn = RawConn::connect(scene.proxy.route_addr(0)).await;
    conn.send_in_pieces(bytes.as_bytes(), 3)
        .await
        .expect("write");
    assert_all_forwarded_on_one_connection(&scene, &mut conn, &expected, ("/probe", "/v1/probe"))
        .await;
}

#[tokio::test]
async fn chunked_requests_keep_the_forward_proxy_connection_open() {
    let scene = Scene::localhost_only().await;
    let (bytes, expected) = chunked_uploads();
    let mut bytes = bytes;
    for path in ["/one", "/two", "/three", "/four"] {
        // The request lines only: the decoy body keeps its length.
        bytes = bytes.replacen(
            &format!(" {path} "),
            &format!(" http://localhost:{}{path} ", scene.g()),
            1,
        );
    }
    let mut conn = RawConn::connect(scene.proxy.forward_proxy_addr()).await;
    conn.send(bytes.as_bytes()).await.expect("write");
    let expected = expected.map(|(path, body)| (path.strip_prefix("/v1").unwrap_or(path), body));
    let probe = format!("http://localhost:{}/probe", scene.g());
    assert_all_forwarded_on_one_connection(&scene, &mut conn, &expected, (&probe, "/probe")).await;
}

#[tokio::test]
async fn conflicting_framing_behind_chunked_requests_is_refused() {
    let scene = Scene::localhost_only().await;
    let bytes = "POST /one HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n\
                 5\r\nhello\r\n0\r\n\r\n\
                 POST /two HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n\
                 3;ext\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n\
                 POST /smuggle HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n\
                 0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n\
                 GET /after HTTP/1.1\r\nhost: a\r\n\r\n";
    let (responses, closed) = scene.reverse(bytes.as_bytes()).await;
    assert_eq!(statuses(&responses), [200, 200, 400], "{responses:?}");
    assert_eq!(responses[2].header("x-sidekey-error"), Some("bad_request"));
    assert!(closed);
    assert_eq!(scene.good.paths(), ["/v1/one", "/v1/two"]);
}

#[tokio::test]
async fn chunked_bodies_the_tap_cannot_follow_end_the_connection() {
    let scene = Scene::localhost_only().await;
    let upload = "POST /up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n";
    let after = "GET /after HTTP/1.1\r\nhost: a\r\n\r\n";
    // Bodies hyper refuses: the upload gets 400 and hyper reads no further.
    let refused_by_hyper = [
        "zz\r\nhello\r\n0\r\n\r\n",
        "5 5\r\nhello\r\n0\r\n\r\n",
        "-5\r\nhello\r\n0\r\n\r\n",
        "\r\n0\r\n\r\n",
        ";x\r\n0\r\n\r\n",
        "5\nhello\r\n0\r\n\r\n",
        "5;a\nb\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXY0\r\n\r\n",
        "10000000000000000\r\nhello\r\n0\r\n\r\n",
    ];
    for body in refused_by_hyper {
        let bytes = format!("{upload}{body}{after}");
        let (responses, closed) = scene.reverse(bytes.as_bytes()).await;
        one_bad_request(&responses, body);
        assert!(closed, "{body:?}");
    }
    // Bodies hyper reads but the tap does not read the same way: the upload
    // is forwarded, the request after it refused.
    let refused_by_the_tap = [
        // 17 digits: hyper reads 5, httparse refuses more than 16
        "00000000000000005\r\nhello\r\n0\r\n\r\n",
        // a bare LF in a trailer section: httparse alone would end the
        // section at the blank line; hyper reads on to the CRLF CRLF and
        // takes the GET line for part of its trailers
        "0\r\nx-sum: 1\n\nGET /hidden HTTP/1.1\r\nhost: a\r\n\r\n",
    ];
    for body in refused_by_the_tap {
        let bytes = format!("{upload}{body}{after}");
        let (responses, closed) = scene.reverse(bytes.as_bytes()).await;
        assert_eq!(statuses(&responses), [200, 400], "{body:?}: {responses:?}");
        assert_eq!(responses[1].header("x-sidekey-error"), Some("bad_request"));
        assert!(closed, "{body:?}");
    }
    assert_eq!(
        scene.good.paths(),
        ["/v1/up", "/v1/up"],
        "nothing after an upload"
    );
}

// ---- limits and malformed heads ----

#[tokio::test]
async fn oversized_heads_get_4xx_and_nothing_is_forwarded() {
    let scene = Scene::localhost_only().await;
    let big_value = format!(
        "GET /x HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
        "v".repeat(600 * 1024)
    );
    let mut many = String::from("GET /x HTTP/1.1\r\nhost: a\r\n");
    for i in 0..500 {
        many.push_str(&format!("x-h{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    let long_path = format!(
        "GET /{} HTTP/1.1\r\nhost: a\r\n\r\n",
        "p".repeat(600 * 1024)
    );
    for (what, bytes) in [
        ("big header", big_value),
        ("many headers", many),
        ("long path", long_path),
    ] {
        let (responses, _) = scene.reverse(bytes.as_bytes()).await;
        // The server may close while we still write: a 4xx, or nothing at all.
        if !responses.is_empty() {
            one_4xx(&responses, what);
        }
    }
    assert_eq!(scene.good.request_count(), 0, "nothing was forwarded");
}

#[tokio::test]
async fn malformed_request_lines_and_headers_get_400_and_nothing_is_forwarded() {
    let scene = Scene::localhost_only().await;
    let g = scene.g();
    let cases: [&[u8]; 10] = [
        b"GET /a\x01b HTTP/1.1\r\nhost: a\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nhost: a\r\n\r\n",
        b"GET /a\x7fb HTTP/1.1\r\nhost: a\r\n\r\n",
        b"GET /a HTTP/1.1\r\nhost: a\r\nx-v: a\x00b\r\n\r\n",
        b"GET /a HTTP/1.1\r\nhost: a\r\nx-v: a\rb\r\n\r\n",
        b"GET /a HTTP/1.1\r\nhost: a\r\nbad header: x\r\n\r\n",
        b"GET /a HTTP/1.1\r\nhost: a\r\nx-v: a\r\n folded\r\n\r\n",
        b"GET /a HTTP/9.9\r\nhost: a\r\n\r\n",
        b"POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: -1\r\n\r\n",
        b"POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
    ];
    for bytes in cases {
        let what = String::from_utf8_lossy(bytes).into_owned();
        let (responses, _) = scene.reverse(bytes).await;
        one_4xx(&responses, &what);
        let forward = what.replacen("/a", &format!("http://localhost:{g}/a"), 1);
        let (responses, _) = scene.forward(forward.as_bytes()).await;
        // Lossy UTF-8 may have changed the bytes; any answer must be a 4xx.
        one_4xx(&responses, &forward);
    }
    let bad_te =
        "POST /a HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n";
    let (responses, _) = scene.reverse(bad_te.as_bytes()).await;
    one_4xx(&responses, bad_te);
    assert_eq!(scene.good.request_count(), 0, "nothing was forwarded");
    scene.assert_evil_untouched();
}

// ---- reverse routes: the configured upstream, whatever the request says ----

#[tokio::test]
async fn reverse_routes_send_the_token_only_to_the_configured_upstream() {
    let scene = Scene::localhost_only().await;
    let (g, e) = (scene.g(), scene.e());
    let evil_authority = format!("127.0.0.1:{e}");
    let requests = [
        // absolute-form naming another host: only the path is used
        get(&format!("https://{evil_authority}/x"), &evil_authority),
        get(&format!("http://{evil_authority}/x"), &evil_authority),
        get("http://evil.example/x", "evil.example"),
        // Host header tricks
        get("/x", &evil_authority),
        format!(
            "GET /x HTTP/1.1\r\nhost: {evil_authority}\r\nhost: localhost:{g}\r\nx-forwarded-host: {evil_authority}\r\nconnection: close\r\n\r\n"
        )
        .into_bytes(),
        b"GET /x HTTP/1.1\r\nconnection: close\r\n\r\n".to_vec(),
    ];
    for bytes in &requests {
        let (responses, _) = scene.reverse(bytes).await;
        let what = String::from_utf8_lossy(bytes);
        assert_eq!(responses.len(), 1, "{what}");
        if responses[0].status == 200 {
            let seen = scene.good.last_request().expect("forwarded");
            assert_eq!(seen.path, "/v1/x", "{what}");
            assert_eq!(
                seen.header("host"),
                Some(scene.good.addr().to_string().as_str()),
                "{what}"
            );
        } else {
            one_4xx(&responses, &what);
        }
    }
    // Targets that are not a path at all.
    for bytes in [
        String::from_utf8(get(&evil_authority, &evil_authority)).unwrap(),
        String::from_utf8(get("*", "a"))
            .unwrap()
            .replace("GET", "OPTIONS"),
    ] {
        let (responses, _) = scene.reverse(bytes.as_bytes()).await;
        one_bad_request(&responses, &bytes);
    }
    assert!(
        scene
            .good
            .requests()
            .iter()
            .all(|r| r.header("authorization") == Some(&format!("Bearer {TOKEN}")))
    );
    scene.assert_evil_untouched();
}
