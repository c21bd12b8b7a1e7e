//! When the upstream or the app misbehaves on the wire: bodies that stall
//! in either direction (`body_timeout`), heads that never finish
//! (`request_timeout`), connections reset mid-response. Each test starts a real upstream with the fault, sidekey in
//! front of it, and checks what the app got and what the upstream saw.

use std::sync::Arc;
use std::time::Duration;

use crate::support::proxy::{
    TestProxy, body_empty, body_trickle, count_body, request, send_partial, start_proxy, toml_path,
    toml_str,
};
use crate::support::tls::TestPki;
use crate::support::upstream::{BodyEnd, RawStep, Reply, Upstream, UpstreamOpts};
use http::Method;
use sidekey::config::secret::MapEnv;

fn env() -> MapEnv {
    MapEnv::from([("API_TOKEN", "tok-123")])
}

/// A static credential and one route to `upstream`, trusting `pki`.
fn one_route(pki: &TestPki, upstream: &str, route_extra: &str) -> String {
    format!(
        r#"
[tls]
ca_file = {ca}

[admin]
listen = "127.0.0.1:0"

[credentials.api]
type = "static"
token = {{ env = "API_TOKEN" }}

[[routes]]
listen = "127.0.0.1:0"
upstream = {upstream}
credential = "api"
name = "api"
{route_extra}
"#,
        ca = toml_path(pki.ca_pem_path()),
        upstream = toml_str(upstream),
    )
}

/// Longest a test waits for something a timeout of a few hundred
/// milliseconds should have ended.
const PATIENCE: Duration = Duration::from_secs(5);

/// The value of `sidekey_upstream_errors_total{route="api",kind=KIND}`, 0 when absent.
async fn upstream_errors(proxy: &TestProxy, kind: &str) -> u64 {
    let metrics = proxy.admin_get("/metrics").await.text();
    let series = format!("sidekey_upstream_errors_total{{route=\"api\",kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

// ---- the app's request body (issue #7, defect 14) ----

#[tokio::test]
async fn app_body_that_stops_short_of_its_content_length_is_408() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = start_proxy(
        &one_route(&pki, &upstream.url(), r#"body_timeout = "300ms""#),
        env(),
    )
    .await;

    // 10 of the 1,000 bytes it announced, then nothing: the socket stays open.
    let exchange = send_partial(
        proxy.route_addr(0),
        b"POST /upload HTTP/1.1\r\nhost: app\r\ncontent-length: 1000\r\n\r\n0123456789",
        PATIENCE,
    )
    .await;

    assert_eq!(
        exchange.status(),
        Some(408),
        "after {:?}: {}",
        exchange.elapsed,
        exchange.text()
    );
    assert!(exchange.text().contains("request_body_timeout"));
    assert!(exchange.closed, "the connection is closed after the 408");
    assert!(exchange.elapsed >= Duration::from_millis(300));
    assert_eq!(
        upstream.request_count(),
        0,
        "a body that never completed is not sent on"
    );
}

#[tokio::test]
async fn large_app_body_that_stalls_mid_upload_is_408() {
    let pki = Arc::new(TestPki::new());
    for http2 in [false, true] {
        let opts = UpstreamOpts::tls(&pki);
        let upstream = Upstream::start(if http2 { opts.http2() } else { opts }).await;
        let proxy = start_proxy(
            &one_route(&pki, &upstream.url(), r#"body_timeout = "300ms""#),
            env(),
        )
        .await;

        // Too large to keep for a retry: this body streams to the upstream.
        let mut head =
            b"POST /upload HTTP/1.1\r\nhost: app\r\ncontent-length: 200000\r\n\r\n".to_vec();
        head.extend(std::iter::repeat_n(b'x', 100_000));
        let exchange = send_partial(proxy.route_addr(0), &head, PATIENCE).await;

        assert_eq!(
            exchange.status(),
            Some(408),
            "http2 {http2}, after {:?}: {}",
            exchange.elapsed,
            exchange.text()
        );
        assert!(exchange.text().contains("request_body_timeout"));
    }
}

#[tokio::test]
async fn app_body_that_keeps_trickling_is_not_cut() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = start_proxy(
        &one_route(&pki, &upstream.url(), r#"body_timeout = "300ms""#),
        env(),
    )
    .await;

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

#[tokio::test]
async fn upstream_body_that_stalls_is_cut_after_body_timeout() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(
        UpstreamOpts::tls(&pki).always(
            Reply::trickle(1, 10, Duration::from_millis(10))
                .announce(1000)
                .then_stall(),
        ),
    )
    .await;
    let proxy = start_proxy(
        &one_route(&pki, &upstream.url(), r#"body_timeout = "300ms""#),
        env(),
    )
    .await;

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

#[tokio::test]
async fn upstream_body_that_keeps_trickling_arrives_whole() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).always(Reply::trickle(
        8,
        1000,
        Duration::from_millis(100),
    )))
    .await;
    let proxy = start_proxy(
        &one_route(&pki, &upstream.url(), r#"body_timeout = "300ms""#),
        env(),
    )
    .await;

    let download = proxy
        .client
        .download(&format!("{}/export", proxy.route_url(0)))
        .await;

    assert_eq!(download.error, None);
    assert_eq!(download.len, 8000, "an idle timeout, not a total one");
}

#[tokio::test]
async fn forward_proxy_has_a_body_timeout_too() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(
        UpstreamOpts::tls(&pki).always(
            Reply::trickle(1, 10, Duration::from_millis(10))
                .announce(1000)
                .then_stall(),
        ),
    )
    .await;
    let config = format!(
        r#"
[tls]
ca_file = {ca}

[credentials.api]
type = "static"
token = {{ env = "API_TOKEN" }}

[forward_proxy]
listen = "127.0.0.1:0"
hosts = {{ "127.0.0.1" = "api" }}
body_timeout = "300ms"
"#,
        ca = toml_path(pki.ca_pem_path()),
    );
    let proxy = start_proxy(&config, env()).await;

    let exchange = send_partial(
        proxy.forward_proxy_addr(),
        format!(
            "GET http://127.0.0.1:{}/export HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n",
            upstream.addr().port()
        )
        .as_bytes(),
        PATIENCE,
    )
    .await;

    assert_eq!(exchange.status(), Some(200), "{}", exchange.text());
    assert!(
        exchange.closed,
        "the stalled response is cut within {PATIENCE:?}"
    );
}

#[tokio::test]
async fn upstream_sending_its_head_slowly_is_504_after_request_timeout() {
    let pki = Arc::new(TestPki::new());
    // One header line every 100 ms: the connection is busy, the head takes 1.1 s.
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).raw(RawStep::slow_head(
        "HTTP/1.1 200 OK",
        10,
        Duration::from_millis(100),
    )))
    .await;
    let proxy = start_proxy(
        &one_route(&pki, &upstream.url(), r#"request_timeout = "300ms""#),
        env(),
    )
    .await;

    let started = tokio::time::Instant::now();
    let r = proxy.get("/slow-head").await;

    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.sidekey_error(), Some("upstream_timeout"));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(upstream_errors(&proxy, "timeout").await, 1);
}

#[tokio::test]
async fn upstream_reset_mid_response_breaks_the_apps_response() {
    let pki = Arc::new(TestPki::new());
    let mut steps = vec![RawStep::text(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1000\r\n\r\n",
    )];
    steps.push(RawStep::Write(vec![b'a'; 100].into()));
    steps.push(RawStep::Sleep(Duration::from_millis(50)));
    steps.push(RawStep::Reset);
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).raw(steps)).await;
    let proxy = start_proxy(&one_route(&pki, &upstream.url(), ""), env()).await;

    let download = tokio::time::timeout(
        PATIENCE,
        proxy
            .client
            .download(&format!("{}/file", proxy.route_url(0))),
    )
    .await
    .expect("a reset upstream ends the app's response");

    assert_eq!(download.status, 200);
    assert_eq!(download.len, 100);
    assert!(
        download.error.is_some(),
        "the app must see the response broken, not complete"
    );
    assert_eq!(upstream_errors(&proxy, "body").await, 1);

    // The proxy itself is fine: the next request gets its own connection.
    let again = tokio::time::timeout(
        PATIENCE,
        proxy
            .client
            .download(&format!("{}/file", proxy.route_url(0))),
    )
    .await
    .expect("second download");
    assert_eq!(again.len, 100);
    assert_eq!(upstream.connections(), 2);
}

#[tokio::test]
async fn upstream_reset_before_answering_is_502() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).raw(vec![RawStep::Reset])).await;
    let proxy = start_proxy(&one_route(&pki, &upstream.url(), ""), env()).await;

    let r = proxy.get("/x").await;

    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.sidekey_error(), Some("upstream_unreachable"));
    assert_eq!(
        upstream.request_count(),
        1,
        "a fresh connection that fails is not retried"
    );
}

#[tokio::test]
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
    let proxy = start_proxy(&one_route(&pki, &upstream.url(), ""), env()).await;

    let broken = tokio::time::timeout(
        PATIENCE,
        proxy
            .client
            .download(&format!("{}/broken", proxy.route_url(0))),
    )
    .await
    .expect("a reset stream ends the app's response");
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
