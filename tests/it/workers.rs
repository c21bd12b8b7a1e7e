//! Serving on worker threads, as `sidekey run` does: every worker has its
//! own socket on the listen address (`SO_REUSEPORT`), its own runtime and
//! its own upstream connections, and all of them share the routes, the
//! credentials, the connection cap, reloads and the shutdown drain.
//!
//! These tests run on the real clock: the workers' runtimes are not the
//! test's, so a paused test clock would not reach them.

use std::sync::Arc;
use std::time::Duration;

use http::Version;

use crate::support::config::{TestConfig, route, static_token};
use crate::support::proxy::{TestClient, TestProxy};
use crate::support::raw::RawConn;
use crate::support::tls::TestPki;
use crate::support::upstream::{Upstream, UpstreamOpts};

/// Two workers, a static credential whose token is read from `token_env`,
/// and one route to `upstream`.
fn two_workers(pki: &TestPki, upstream: &str, token_env: &str) -> TestConfig {
    TestConfig::new()
        .top("workers = 2")
        .top(r#"shutdown_grace = "5s""#)
        .trusting(pki)
        .with(static_token("api", token_env))
        .with(route(upstream, "api"))
        .env("TOKEN_A", "token-a")
        .env("TOKEN_B", "token-b")
}

/// `apps` app connections (a client each), each sending `rounds` requests
/// one after the other, all at once; the `authorization` each request
/// carried upstream is checked by the caller.
async fn load(proxy: &TestProxy, apps: usize, rounds: usize) {
    let mut apps_running = tokio::task::JoinSet::new();
    for app in 0..apps {
        let (client, base) = (TestClient::new(), proxy.route_url(0));
        apps_running.spawn(async move {
            for i in 0..rounds {
                let r = client.get(&format!("{base}/app/{app}/{i}")).await;
                assert_eq!(r.status, 200, "{}", r.text());
            }
        });
    }
    while let Some(done) = apps_running.join_next().await {
        done.unwrap();
    }
}

#[tokio::test]
async fn connections_spread_over_the_workers_each_with_its_own_http2_connection() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).http2()).await;
    let proxy = two_workers(&pki, &upstream.url(), "TOKEN_A")
        .start_on_workers()
        .await;

    // 32 app connections from 32 source ports: the kernel's hash sends
    // some to each worker's socket (all to one: a chance of 2 in 2^32).
    load(&proxy, 32, 3).await;

    let seen = upstream.requests();
    assert_eq!(seen.len(), 96);
    assert!(seen.iter().all(|r| r.version == Version::HTTP_2));
    assert!(
        seen.iter()
            .all(|r| r.header("authorization") == Some("Bearer token-a"))
    );
    assert_eq!(
        upstream.connections(),
        2,
        "one multiplexed upstream connection per worker"
    );
}

#[tokio::test]
async fn http1_upstream_connections_stay_within_the_app_connections_across_workers() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = two_workers(&pki, &upstream.url(), "TOKEN_A")
        .start_on_workers()
        .await;

    load(&proxy, 16, 10).await;

    assert_eq!(upstream.request_count(), 160);
    assert!(
        upstream.connections() <= 16,
        "16 app connections opened {} upstream connections",
        upstream.connections()
    );
}

#[tokio::test]
async fn a_reload_reaches_every_worker() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let mut proxy = two_workers(&pki, &upstream.url(), "TOKEN_A")
        .start_on_workers()
        .await;
    load(&proxy, 8, 2).await;

    let new_config = two_workers(&pki, &upstream.url(), "TOKEN_B")
        .checked()
        .unwrap();
    proxy
        .handle
        .reload(new_config, Duration::from_secs(5))
        .await
        .expect("reload accepted");
    load(&proxy, 16, 2).await;

    let seen = upstream.requests();
    assert_eq!(seen.len(), 16 + 32);
    assert!(
        seen[16..]
            .iter()
            .all(|r| r.header("authorization") == Some("Bearer token-b")),
        "every worker serves the reloaded credential"
    );
}

#[tokio::test]
async fn max_connections_is_one_cap_across_workers() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = two_workers(&pki, &upstream.url(), "TOKEN_A")
        .top("max_connections = 2")
        .start_on_workers()
        .await;
    let addr = proxy.route_addr(0);

    // Two kept-alive connections, wherever the kernel put them.
    let mut open = Vec::new();
    for i in 0..2 {
        let mut conn = RawConn::connect(addr).await;
        conn.send_get(&format!("/first/{i}")).await.unwrap();
        let response = conn.read_response(Duration::from_secs(5)).await.unwrap();
        assert_eq!(response.status, 200);
        open.push(conn);
    }
    // Four more, each closing after its answer: whichever worker each
    // lands on, none is served while the two stay open.
    let mut waiting = Vec::new();
    for i in 0..4 {
        let mut conn = RawConn::connect(addr).await;
        let head = format!("GET /waiting/{i} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n");
        conn.send(head.as_bytes()).await.unwrap();
        waiting.push(conn);
    }
    for conn in &mut waiting {
        assert!(
            conn.read_response(Duration::from_millis(100))
                .await
                .is_none(),
            "a connection over the cap is not served"
        );
    }
    assert_eq!(upstream.request_count(), 2);

    drop(open);
    for conn in &mut waiting {
        let response = conn
            .read_response(Duration::from_secs(5))
            .await
            .expect("served once there is room");
        assert_eq!(response.status, 200);
    }
    assert_eq!(upstream.request_count(), 6);
}

#[tokio::test]
async fn shutdown_drains_every_worker_then_stops_listening() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).delay(Duration::from_millis(400))).await;
    let TestProxy { handle, .. } = two_workers(&pki, &upstream.url(), "TOKEN_A")
        .start_on_workers()
        .await;
    let addr = handle.route_addr(0).unwrap();
    let mut in_flight = tokio::task::JoinSet::new();
    for i in 0..8 {
        let client = TestClient::new();
        in_flight.spawn(async move { client.get(&format!("http://{addr}/slow/{i}")).await });
    }
    upstream.wait_for_requests(8).await;

    handle.shutdown().await;

    while let Some(response) = in_flight.join_next().await {
        assert_eq!(
            response.unwrap().status,
            200,
            "an in-flight request completed"
        );
    }
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no worker listens after shutdown"
    );
}
