//! When the upstream or the app misbehaves on the wire: bodies that stall
//! in either direction (`body_timeout`), heads that never finish
//! (`request_timeout`), connections reset mid-response, keep-alive
//! connections the upstream closed while they sat in the pool, and HTTP/2
//! GOAWAY. Each test starts a real upstream with the fault, sidekey in
//! front of it, and checks what the app got and what the upstream saw.
//!
//! Every test runs on tokio's paused clock: the app, sidekey and the
//! upstream share the test's runtime, so the timeouts, trickles and idle
//! periods pass in virtual time, exactly as sidekey's timers count them,
//! and the clock moves only while all of them wait.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::support::config::{TestConfig, forward_proxy, route, static_token};
use crate::support::proxy::{
    Download, TestClient, TestProxy, body_empty, body_generated, body_trickle, count_body, request,
    request_with,
};
use crate::support::raw::RawConn;
use crate::support::tls::TestPki;
use crate::support::upstream::{BodyEnd, RawStep, Reply, Upstream, UpstreamOpts};
use http::{Method, Version};

/// A static credential and one route named `api` to `upstream`, trusting
/// `pki`; an admin listener for the metrics.
fn one_route(pki: &TestPki, upstream: &str) -> TestConfig {
    TestConfig::new()
        .trusting(pki)
        .admin()
        .with(static_token("api", "API_TOKEN"))
        .with(route(upstream, "api").line(r#"name = "api""#))
        .env("API_TOKEN", "tok-123")
}

/// [`one_route`] with `body_timeout = "300ms"`, started.
async fn with_body_timeout(pki: &TestPki, upstream: &str) -> TestProxy {
    one_route(pki, upstream)
        .line("[[routes]]", r#"body_timeout = "300ms""#)
        .start()
        .await
}

/// Longest a test waits for something a timeout of a few hundred
/// milliseconds should have ended.
const PATIENCE: Duration = Duration::from_secs(5);

/// The value of `sidekey_upstream_errors_total{route="api",kind=KIND}`, 0 when absent.
async fn upstream_errors(proxy: &TestProxy, kind: &str) -> u64 {
    let series = format!("sidekey_upstream_errors_total{{route=\"api\",kind=\"{kind}\"}}");
    proxy.metric(&series).await as u64
}

/// `GET path` on route 0, the body streamed and counted; it must end
/// (`what`) within [`PATIENCE`].
async fn download_in_time(proxy: &TestProxy, path: &str, what: &str) -> Download {
    let url = format!("{}{path}", proxy.route_url(0));
    tokio::time::timeout(PATIENCE, proxy.client.download(&url))
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {PATIENCE:?}"))
}

/// Write `bytes` on a fresh connection, keeping it open (an app that stops
/// sending), and read until the server closes it or [`PATIENCE`] passes:
/// the connection, whether it was closed, and the time since the write.
async fn send_partial(addr: SocketAddr, bytes: &[u8]) -> (RawConn, bool, Duration) {
    let mut conn = RawConn::connect(addr).await;
    conn.send(bytes).await.expect("write");
    let started = tokio::time::Instant::now();
    let closed = conn.closed_within(PATIENCE).await;
    (conn, closed, started.elapsed())
}

// ---- the app's request body (issue #7, defect 14) ----

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn app_body_that_stops_short_of_its_content_length_is_408() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = with_body_timeout(&pki, &upstream.url()).await;

    // 10 of the 1,000 bytes it announced, then nothing: the socket stays open.
    let (conn, closed, elapsed) = send_partial(
        proxy.route_addr(0),
        b"POST /upload HTTP/1.1\r\nhost: app\r\ncontent-length: 1000\r\n\r\n0123456789",
    )
    .await;

    assert_eq!(
        conn.status(),
        Some(408),
        "after {elapsed:?}: {}",
        conn.text()
    );
    assert!(conn.text().contains("request_body_timeout"));
    assert!(closed, "the connection is closed after the 408");
    assert!(elapsed >= Duration::from_millis(300));
    assert_eq!(
        upstream.request_count(),
        0,
        "a body that never completed is not sent on"
    );
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn large_app_body_that_stalls_mid_upload_is_408() {
    let pki = Arc::new(TestPki::new());
    for http2 in [false, true] {
        let opts = UpstreamOpts::tls(&pki);
        let upstream = Upstream::start(if http2 { opts.http2() } else { opts }).await;
        let proxy = with_body_timeout(&pki, &upstream.url()).await;

        // Too large to keep for a retry: this body streams to the upstream.
        let mut head =
            b"POST /upload HTTP/1.1\r\nhost: app\r\ncontent-length: 200000\r\n\r\n".to_vec();
        head.extend(std::iter::repeat_n(b'x', 100_000));
        let (conn, _, elapsed) = send_partial(proxy.route_addr(0), &head).await;

        assert_eq!(
            conn.status(),
            Some(408),
            "http2 {http2}, after {elapsed:?}: {}",
            conn.text()
        );
        assert!(conn.text().contains("request_body_timeout"));
    }
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn app_body_that_keeps_trickling_is_not_cut() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = with_body_timeout(&pki, &upstream.url()).await;

    // 8 chunks 100 ms apart: 700 ms in all, never 300 ms without a byte.
    let body = body_trickle(8, 1000, Duration::from_millis(100), BodyEnd::Finish);
    let r = proxy
        .client
        .send(request(
            Method::POST,
            &format!("{}/upload", proxy.route_url(0)),
            body,
        ))
        .await;

    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream.last_request().unwrap().body_len, 8000);
}

// ---- the upstream's response ----

/// An upstream whose answers announce 1,000 bytes, send 10 and stall.
async fn stalling_upstream(pki: &Arc<TestPki>) -> Upstream {
    let stall = Reply::trickle(1, 10, Duration::from_millis(10))
        .announce(1000)
        .then_stall();
    Upstream::start(UpstreamOpts::tls(pki).always(stall)).await
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn upstream_body_that_stalls_is_cut_after_body_timeout() {
    let pki = Arc::new(TestPki::new());
    let upstream = stalling_upstream(&pki).await;
    let proxy = with_body_timeout(&pki, &upstream.url()).await;

    let response = proxy
        .client
        .send_head(request(
            Method::GET,
            &format!("{}/export", proxy.route_url(0)),
            body_empty(),
        ))
        .await
        .expect("response head");
    assert_eq!(response.status(), 200);
    let started = tokio::time::Instant::now();
    let download = tokio::time::timeout(PATIENCE, count_body(response))
        .await
        .expect("the stalled body must be cut, not left open");

    assert_eq!(
        download.len, 10,
        "what arrived before the stall is passed on"
    );
    assert!(
        download.error.is_some(),
        "the app sees a broken body, not a short one that looks complete"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(upstream_errors(&proxy, "body_timeout").await, 1);
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn upstream_body_that_keeps_trickling_arrives_whole() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).always(Reply::trickle(
        8,
        1000,
        Duration::from_millis(100),
    )))
    .await;
    let proxy = with_body_timeout(&pki, &upstream.url()).await;

    let download = proxy
        .client
        .download(&format!("{}/export", proxy.route_url(0)))
        .await;

    assert_eq!(download.error, None);
    assert_eq!(download.len, 8000, "an idle timeout, not a total one");
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn forward_proxy_has_a_body_timeout_too() {
    let pki = Arc::new(TestPki::new());
    let upstream = stalling_upstream(&pki).await;
    let port = upstream.addr().port();
    let proxy = TestConfig::new()
        .trusting(&pki)
        .with(static_token("api", "API_TOKEN"))
        .with(
            forward_proxy(&[(&format!("127.0.0.1:{port}"), "api")])
                .line(r#"body_timeout = "300ms""#),
        )
        .env("API_TOKEN", "tok-123")
        .start()
        .await;

    let (conn, closed, _) = send_partial(
        proxy.forward_proxy_addr(),
        format!("GET http://127.0.0.1:{port}/export HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            .as_bytes(),
    )
    .await;

    assert_eq!(conn.status(), Some(200), "{}", conn.text());
    assert!(closed, "the stalled response is cut within {PATIENCE:?}");
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn upstream_sending_its_head_slowly_is_504_after_request_timeout() {
    let pki = Arc::new(TestPki::new());
    // One header line every 100 ms: the connection is busy, the head takes 1.1 s.
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).raw(RawStep::slow_head(
        "HTTP/1.1 200 OK",
        10,
        Duration::from_millis(100),
    )))
    .await;
    let proxy = one_route(&pki, &upstream.url())
        .line("[[routes]]", r#"request_timeout = "300ms""#)
        .start()
        .await;

    let started = tokio::time::Instant::now();
    let r = proxy.get("/slow-head").await;

    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.sidekey_error(), Some("upstream_timeout"));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(upstream_errors(&proxy, "timeout").await, 1);
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn upstream_reset_mid_response_breaks_the_apps_response() {
    let pki = Arc::new(TestPki::new());
    let mut steps = vec![RawStep::text(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1000\r\n\r\n",
    )];
    steps.push(RawStep::Write(vec![b'a'; 100].into()));
    steps.push(RawStep::Sleep(Duration::from_millis(50)));
    steps.push(RawStep::Reset);
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).raw(steps)).await;
    let proxy = one_route(&pki, &upstream.url()).start().await;

    let download =
        download_in_time(&proxy, "/file", "a reset upstream ends the app's response").await;

    assert_eq!(download.status, 200);
    assert_eq!(download.len, 100);
    assert!(
        download.error.is_some(),
        "the app must see the response broken, not complete"
    );
    assert_eq!(upstream_errors(&proxy, "body").await, 1);

    // The proxy itself is fine: the next request gets its own connection.
    let again = download_in_time(&proxy, "/file", "second download").await;
    assert_eq!(again.len, 100);
    assert_eq!(upstream.connections(), 2);
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn upstream_reset_before_answering_is_502() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).raw(vec![RawStep::Reset])).await;
    let proxy = one_route(&pki, &upstream.url()).start().await;

    let r = proxy.get("/x").await;

    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.sidekey_error(), Some("upstream_unreachable"));
    assert_eq!(
        upstream.request_count(),
        1,
        "a fresh connection that fails is not retried"
    );
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn http2_stream_reset_mid_response_breaks_only_that_response() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).http2().respond(|req| {
        if req.path == "/broken" {
            Reply::trickle(1, 100, Duration::from_millis(50)).then_fail()
        } else {
            Reply::echo()
        }
    }))
    .await;
    let proxy = one_route(&pki, &upstream.url()).start().await;

    let broken =
        download_in_time(&proxy, "/broken", "a reset stream ends the app's response").await;
    assert_eq!(broken.len, 100);
    assert!(broken.error.is_some());

    let fine = proxy.get("/fine").await;
    assert_eq!(fine.status, 200);
    assert_eq!(fine.json()["version"], "HTTP/2.0");
    assert_eq!(
        upstream.connections(),
        1,
        "a stream reset leaves the connection in use"
    );
}

// ---- pooled connections the upstream closed ----

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn idle_connection_closed_by_the_upstream_is_not_reused() {
    let pki = Arc::new(TestPki::new());
    let upstream =
        Upstream::start(UpstreamOpts::tls(&pki).close_idle_after(Duration::from_millis(200))).await;
    let proxy = one_route(&pki, &upstream.url()).start().await;

    assert_eq!(proxy.get("/one").await.status, 200);
    tokio::time::timeout(PATIENCE, async {
        while upstream.idle_closes() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the upstream closes the idle connection");
    let r = proxy.get("/two").await;

    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream.connections(), 2);
}

/// An upstream whose keep-alive close crosses the proxy's next request:
/// every request on a connection idle for 200 ms is lost with it.
async fn stale_upstream(pki: &Arc<TestPki>, http2: bool) -> Upstream {
    let opts = UpstreamOpts::tls(pki).drop_requests_after_idle(Duration::from_millis(200));
    Upstream::start(if http2 { opts.http2() } else { opts }).await
}

/// Let the pooled connection(s) go stale.
async fn let_connections_go_stale() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn idempotent_requests_on_a_stale_pooled_connection_do_not_fail() {
    let pki = Arc::new(TestPki::new());
    let upstream = stale_upstream(&pki, false).await;
    let proxy = one_route(&pki, &upstream.url()).start().await;
    let url = |path: &str| format!("{}{path}", proxy.route_url(0));

    assert_eq!(proxy.get("/warm").await.status, 200);
    let mut sent = 1;
    for method in [Method::GET, Method::HEAD, Method::PUT, Method::DELETE] {
        let_connections_go_stale().await;
        let r = proxy
            .client
            .send(request(method.clone(), &url("/again"), body_empty()))
            .await;
        sent += 1;
        assert_eq!(r.status, 200, "{method}: {}", r.text());
    }
    // A POST the app marked as safe to repeat (IETF Idempotency-Key).
    let_connections_go_stale().await;
    let post = request_with(
        Method::POST,
        &url("/payments"),
        &[("idempotency-key", "k-1")],
        body_generated(100, true),
    );
    let r = proxy.client.send(post).await;
    sent += 1;
    assert_eq!(r.status, 200, "{}", r.text());

    assert_eq!(upstream.request_count(), sent);
    assert_eq!(
        upstream.dropped_requests(),
        sent - 1,
        "every request after the first met a stale connection"
    );
    assert_eq!(
        upstream_errors(&proxy, "stale_connection").await,
        sent as u64 - 1
    );
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_post_on_a_stale_pooled_connection_is_not_repeated() {
    let pki = Arc::new(TestPki::new());
    let upstream = stale_upstream(&pki, false).await;
    let proxy = one_route(&pki, &upstream.url()).start().await;

    assert_eq!(proxy.get("/warm").await.status, 200);
    let_connections_go_stale().await;
    let r = proxy
        .client
        .post(&format!("{}/cards", proxy.route_url(0)), "{}")
        .await;

    // sidekey cannot tell whether the upstream acted on it: the app decides.
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.sidekey_error(), Some("upstream_unreachable"));
    assert_eq!(upstream.dropped_requests(), 1);
    assert_eq!(upstream.request_count(), 1, "only the warm-up was answered");
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn several_stale_pooled_connections_are_all_skipped() {
    let pki = Arc::new(TestPki::new());
    let upstream = stale_upstream(&pki, false).await;
    let proxy = one_route(&pki, &upstream.url()).start().await;

    // Four requests at once: four pooled connections, all going stale together.
    let client = TestClient::new();
    let base = proxy.route_url(0);
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..4 {
        let (client, url) = (client.clone(), format!("{base}/burst/{i}"));
        burst.spawn(async move { client.get(&url).await.status });
    }
    while let Some(status) = burst.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    let warm_connections = upstream.connections();
    let_connections_go_stale().await;

    let r = proxy.get("/after").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(warm_connections > 1, "the burst opened several connections");
    assert_eq!(
        upstream.dropped_requests(),
        warm_connections,
        "each stale connection was tried once"
    );
    assert_eq!(
        upstream.connections(),
        warm_connections + 1,
        "then a new one answered"
    );
}

// ---- HTTP/2 GOAWAY ----

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn http2_goaway_finishes_in_flight_requests_and_moves_new_ones() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).http2().respond(|req| {
        if req.path == "/slow" {
            Reply::echo().delay(Duration::from_millis(500))
        } else {
            Reply::echo()
        }
    }))
    .await;
    let proxy = one_route(&pki, &upstream.url()).start().await;
    let base = proxy.route_url(0);

    let slow = {
        let (client, url) = (proxy.client.clone(), format!("{base}/slow"));
        tokio::spawn(async move { client.get(&url).await })
    };
    upstream.wait_for_requests(1).await;

    // Requests on their way while the upstream says GOAWAY, then requests after it.
    let burst = |name: &'static str| {
        let mut burst = tokio::task::JoinSet::new();
        for i in 0..20 {
            let (client, url) = (proxy.client.clone(), format!("{base}/{name}/{i}"));
            burst.spawn(async move { client.get(&url).await });
        }
        burst
    };
    let mut racing = burst("racing");
    tokio::task::yield_now().await;
    upstream.goaway();
    while let Some(r) = racing.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let mut after = burst("after");
    while let Some(r) = after.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, 200, "the in-flight request finishes");
    assert_eq!(slow.json()["path"], "/slow");

    let seen = upstream.requests();
    assert_eq!(seen.len(), 41);
    assert!(seen.iter().all(|r| r.version == Version::HTTP_2));
    assert!(
        seen.iter()
            .filter(|r| r.path.starts_with("/after/"))
            .all(|r| r.connection > 0),
        "no new stream on the connection that said GOAWAY"
    );
}

#[tokio::test]
async fn timeouts_too_long_to_add_to_now_never_panic() {
    // A timeout of 547 billion years parses (it fits a Duration) but not
    // added to the clock: every deadline made from it must saturate.
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).always(Reply::trickle(
        3,
        10,
        Duration::from_millis(30),
    )))
    .await;
    let endless = r#""199999999999999d""#;
    let proxy = one_route(&pki, &upstream.url())
        .line("[[routes]]", &format!("body_timeout = {endless}"))
        .line("[[routes]]", &format!("request_timeout = {endless}"))
        .top(&format!("idle_timeout = {endless}"))
        .start()
        .await;

    // A request body that pauses, and an answer that does.
    let body = body_trickle(3, 100, Duration::from_millis(30), BodyEnd::Finish);
    let r = proxy
        .client
        .send(request(
            Method::POST,
            &format!("{}/upload", proxy.route_url(0)),
            body,
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body.len(), 30);
    assert_eq!(upstream.last_request().unwrap().body_len, 300);
    // The connection (and its idle clock) serves on.
    assert_eq!(proxy.get("/again").await.status, 200);
}

/// A machine whose clock is years off finds the upstream's certificate
/// not yet valid or expired: the 502 says to check the clock.
#[tokio::test]
async fn an_upstream_certificate_outside_its_validity_asks_whether_the_clock_is_right() {
    for (from, until, what) in [(2090, 2091, "not valid yet"), (2001, 2002, "expired")] {
        let pki = Arc::new(TestPki::with_server_valid(from, until));
        let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
        let proxy = one_route(&pki, &upstream.url()).start().await;
        let response = proxy.get("/v1/things").await;
        assert_eq!(response.status, 502);
        let message = response.text();
        assert!(message.contains(what), "{message}");
        assert!(message.contains("system clock"), "{message}");
        assert!(upstream.requests().is_empty());
        proxy.handle.shutdown().await;
    }
}
