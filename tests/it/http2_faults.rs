//! HTTP/2 under faults the protocol lets either side commit: an upstream
//! that refuses streams (`REFUSED_STREAM`), advertises fewer concurrent
//! streams than the app sends requests at once, or falls silent with its
//! connection open (a black hole, [`Relay`]), or says GOAWAY below streams
//! in flight ([`GoawayUpstream`]); apps that stop reading a download, or
//! whose uploads the upstream is slow to take, while other requests share
//! a connection with them.
//!
//! On tokio's paused clock, so that the proxy's timeouts and keep-alive
//! PINGs pass in virtual time, except where a test says why not.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use sidekey::proxy::client::MAX_CONNECTION_AGE;

use crate::support::config::{TestConfig, route, static_token};
use crate::support::h2_goaway::GoawayUpstream;
use crate::support::proxy::{TestProxy, body_bytes, request};
use crate::support::relay::Relay;
use crate::support::tls::TestPki;
use crate::support::upstream::{Gate, Reply, Upstream, UpstreamOpts};

/// One route to `upstream` with a static credential and `setting` (one
/// line of the route's table).
async fn proxy_with(pki: &TestPki, upstream: &str, setting: &str) -> TestProxy {
    TestConfig::new()
        .trusting(pki)
        .with(static_token("api", "API_TOKEN"))
        .with(route(upstream, "api").line(setting))
        .env("API_TOKEN", "tok-123")
        .start()
        .await
}

/// One route to `upstream` with a static credential, `request_timeout = "2s"`.
async fn proxy_to(pki: &TestPki, upstream: &str) -> TestProxy {
    proxy_with(pki, upstream, r#"request_timeout = "2s""#).await
}

/// An HTTP/2 upstream behind a [`Relay`] and sidekey routed to the relay.
async fn relayed_http2_scene() -> (Upstream, Relay, TestProxy) {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).http2()).await;
    let relay = Relay::start(upstream.addr()).await;
    let proxy = proxy_to(&pki, &relay.https_url()).await;
    (upstream, relay, proxy)
}

/// An h2c connection to the proxy's first route, its task running.
async fn h2c_app(proxy: &TestProxy) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(proxy.route_addr(0))
        .await
        .unwrap();
    let (app, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    app
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_stream_the_upstream_refused_is_sent_again() {
    let pki = Arc::new(TestPki::new());
    // The first try of each request is refused: not processed (RFC 9113 §8.7).
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).http2().respond(|seen| {
        if seen.index % 2 == 0 {
            Reply::refused()
        } else {
            Reply::echo()
        }
    }))
    .await;
    let proxy = proxy_to(&pki, &upstream.url()).await;

    let get = proxy.get("/get").await;
    assert_eq!(get.status, 200, "{}", get.text());
    let url = format!("{}/post", proxy.route_url(0));
    let post = proxy
        .client
        .send(request(Method::POST, &url, body_bytes("order")))
        .await;
    assert_eq!(
        post.status,
        200,
        "a refused POST was not processed: {}",
        post.text()
    );
    assert_eq!(post.json()["body"], "order");

    assert_eq!(upstream.paths(), ["/get", "/get", "/post", "/post"]);
    assert_eq!(
        upstream.connections(),
        1,
        "a refused stream leaves the connection in use"
    );
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_burst_beyond_the_upstreams_max_concurrent_streams_waits_its_turn() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(
        UpstreamOpts::tls(&pki)
            .http2()
            .max_concurrent_streams(1)
            .delay(Duration::from_millis(10)),
    )
    .await;
    let proxy = proxy_to(&pki, &upstream.url()).await;

    // 50 app requests at once on one worker: the first opens the upstream
    // connection, the others wait for it and go out together. POSTs: no
    // copy is kept to send one again, so none may be refused.
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..50 {
        let (client, url) = (proxy.client.clone(), format!("{}/{i}", proxy.route_url(0)));
        burst.spawn(async move { client.post(&url, "order").await });
    }
    let mut statuses = Vec::new();
    while let Some(r) = burst.join_next().await {
        statuses.push(r.unwrap().status.as_u16());
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(upstream.request_count(), 50);
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn an_upstream_gone_silent_costs_one_timeout_then_a_new_connection_serves() {
    let (_upstream, relay, proxy) = relayed_http2_scene().await;

    assert_eq!(proxy.get("/before").await.status, 200);
    relay.black_hole();
    let lost = proxy.get("/lost").await;
    assert_eq!(lost.status, 504, "{}", lost.text());

    // The timeout retired the silent connection: the next request opens
    // another at once.
    let after = proxy.get("/after").await;
    assert_eq!(after.status, 200, "{}", after.text());
    assert_eq!(relay.connections(), 2);
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn an_idle_upstream_connection_is_not_pinged() {
    // gRPC servers close a connection pinged without calls (GOAWAY
    // `too_many_pings`), so an idle one gets nothing from sidekey.
    let (_upstream, relay, proxy) = relayed_http2_scene().await;

    assert_eq!(proxy.get("/before").await.status, 200);
    let settled = relay.bytes_from_server();
    // Just under five minutes: below the connection's max age, so that
    // `/after` finds it still in use.
    let idle = Duration::from_secs(299);
    assert!(idle < MAX_CONNECTION_AGE);
    tokio::time::sleep(idle).await;
    assert_eq!(
        relay.bytes_from_server(),
        settled,
        "no PING answered in 5 idle minutes"
    );
    assert_eq!(proxy.get("/after").await.status, 200);
    assert_eq!(relay.connections(), 1);
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn an_app_that_stops_reading_a_download_holds_up_no_other_request() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).http2().respond(|seen| {
        if seen.path == "/big" {
            Reply::generated(64 << 20)
        } else {
            Reply::generated(256 << 10)
        }
    }))
    .await;
    let relay = Relay::start(upstream.addr()).await;
    let proxy = proxy_with(&pki, &relay.https_url(), r#"body_timeout = "1s""#).await;

    // An h2c app takes the head of a large download and never reads on:
    // its stream's window stays shut, and what sidekey took from the
    // upstream for it waits in sidekey (until body_timeout resets the
    // stream, see stuck_readers.rs; the requests below come before that).
    let stuck = h2c_app(&proxy).await;
    let request = http::Request::get("http://sidekey/big").body(()).unwrap();
    let (head, _send) = stuck
        .ready()
        .await
        .unwrap()
        .send_request(request, true)
        .unwrap();
    let _unread = head.await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The other requests share the worker's upstream connection, and
    // arrive whole.
    for i in 0..3 {
        let download = proxy
            .client
            .download(&format!("{}/{i}", proxy.route_url(0)))
            .await;
        assert_eq!(download.status, 200);
        assert!(download.error.is_none(), "{:?}", download.error);
        assert_eq!(download.len, 256 << 10);
    }
    assert_eq!(upstream.connections(), 1);
    let taken = relay.bytes_from_server();
    assert!(
        taken < 4 << 20,
        "{taken} bytes taken from the upstream: the stuck download's window and the others"
    );
}

// On the real clock: the held uploads keep bodies waiting on the app, and
// the paused clock could jump to their `body_timeout` while a loaded
// machine delivers loopback bytes late.
#[tokio::test]
async fn uploads_the_upstream_is_slow_to_take_hold_up_no_other_stream_of_the_app() {
    let pki = Arc::new(TestPki::new());
    let gate = Gate::new();
    let upstream = Upstream::start(
        UpstreamOpts::tls(&pki)
            .http2()
            .stream_window(64 << 10)
            .hold_bodies("/held", gate.clone()),
    )
    .await;
    let proxy = proxy_with(&pki, &upstream.url(), r#"body_timeout = "1s""#).await;

    // One h2c connection, as a gRPC channel: five uploads the upstream does
    // not take yet. The upstream's window for each stream fills (its
    // connection's does not), and each stream's window in sidekey then.
    let app = h2c_app(&proxy).await;
    let post = |path: &str, len: usize| {
        http::Request::post(format!("http://sidekey{path}"))
            .header("content-length", len.to_string())
            .body(())
            .unwrap()
    };
    let mut held = Vec::new();
    for i in 0..5 {
        let mut app = app.clone().ready().await.unwrap();
        let (response, mut body) = app
            .send_request(post(&format!("/held/{i}"), 200 << 10), false)
            .unwrap();
        body.send_data(Bytes::from(vec![b'u'; 200 << 10]), true)
            .unwrap();
        held.push((response, body));
    }
    upstream.wait_for_connections(1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // A small call on the same connection is taken and answered.
    let mut app = app.clone().ready().await.unwrap();
    let (response, mut body) = app.send_request(post("/small", 1024), false).unwrap();
    body.send_data(Bytes::from(vec![b's'; 1024]), true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.paths(), ["/small"]);

    gate.open();
    for (response, _) in held {
        let response = response.await;
        assert!(
            response.as_ref().is_ok_and(|r| r.status() == 200),
            "{response:?}"
        );
    }
    assert_eq!(upstream.request_count(), 6);
}

// On the real clock: nothing to wait for but bytes.
#[tokio::test]
async fn requests_above_a_goaways_last_stream_are_sent_again_on_a_new_connection() {
    let pki = Arc::new(TestPki::new());
    // Five requests on the first connection; GOAWAY names only the first
    // as taken.
    let upstream = GoawayUpstream::start(&pki, 5).await;
    let proxy = proxy_to(&pki, &upstream.url()).await;

    let mut burst = tokio::task::JoinSet::new();
    for i in 0..5 {
        let (client, url) = (proxy.client.clone(), format!("{}/{i}", proxy.route_url(0)));
        burst.spawn(async move { client.get(&url).await });
    }
    while let Some(r) = burst.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(upstream.connections(), 2);
    assert_eq!(upstream.heads(), 9, "four sent again");
}
