//! When the upstream or the app misbehaves on the wire: bodies that stall
//! in either direction (`body_timeout`), heads that never finish
//! (`request_timeout`), connections reset mid-response, keep-alive
//! connections the upstream closed while they sat in the pool, and HTTP/2
//! GOAWAY. Each test starts a real upstream with the fault, sidekey in
//! front of it, and checks what the app got and what the upstream saw.

use std::sync::Arc;
use std::time::Duration;

use crate::support::proxy::{
    TestClient, TestProxy, body_empty, body_generated, body_trickle, count_body, request,
    send_partial, start_proxy, toml_path, toml_str,
};
use crate::support::tls::TestPki;
use crate::support::upstream::{BodyEnd, RawStep, Reply, Upstream, UpstreamOpts};
use http::{Method, Version};
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
hosts = {{ "127.0.0.1:{port}" = "api" }}
body_timeout = "300ms"
"#,
        ca = toml_path(pki.ca_pem_path()),
        port = upstream.addr().port(),
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

// ---- pooled connections the upstream closed ----

#[tokio::test]
async fn idle_connection_closed_by_the_upstream_is_not_reused() {
    let pki = Arc::new(TestPki::new());
    let upstream =
        Upstream::start(UpstreamOpts::tls(&pki).close_idle_after(Duration::from_millis(200))).await;
    let proxy = start_proxy(&one_route(&pki, &upstream.url(), ""), env()).await;

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

#[tokio::test]
async fn idempotent_requests_on_a_stale_pooled_connection_do_not_fail() {
    let pki = Arc::new(TestPki::new());
    let upstream = stale_upstream(&pki, false).await;
    let proxy = start_proxy(&one_route(&pki, &upstream.url(), ""), env()).await;
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
    let mut post = request(Method::POST, &url("/payments"), body_generated(100, true));
    post.headers_mut()
        .insert("idempotency-key", "k-1".parse().unwrap());
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

#[tokio::test]
async fn a_post_on_a_stale_pooled_connection_is_not_repeated() {
    let pki = Arc::new(TestPki::new());
    let upstream = stale_upstream(&pki, false).await;
    let proxy = start_proxy(&one_route(&pki, &upstream.url(), ""), env()).await;

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

#[tokio::test]
async fn several_stale_pooled_connections_are_all_skipped() {
    let pki = Arc::new(TestPki::new());
    let upstream = stale_upstream(&pki, false).await;
    let proxy = start_proxy(&one_route(&pki, &upstream.url(), ""), env()).await;

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

#[tokio::test]
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
    let proxy = start_proxy(&one_route(&pki, &upstream.url(), ""), env()).await;
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
