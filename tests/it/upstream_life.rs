//! Upstream connections over their whole life, as cloud load balancers and
//! API gateways treat them: the upstream's name starts to resolve to
//! another address (a load balancer node retired, a failover) while
//! sidekey's connections are kept busy and never idle out.
//!
//! The name change is a [`Relay`] retargeted to a second upstream: the
//! connections opened after it reach the new server, those open before stay
//! with the old one, as with a DNS change. Runs on the paused clock, so
//! [`MAX_CONNECTION_AGE`] passes in virtual time.

use std::sync::Arc;
use std::time::Duration;

use sidekey::proxy::client::MAX_CONNECTION_AGE;
use tokio::time::Instant;

use crate::support::config::static_route;
use crate::support::h2_settings::{MAX_CONCURRENT_STREAMS, SettingsUpstream};
use crate::support::proxy::{TestClient, TestProxy};
use crate::support::relay::Relay;
use crate::support::tls::TestPki;
use crate::support::upstream::{Reply, Upstream, UpstreamOpts};

/// Time between two requests of the steady traffic: well below the pool's
/// idle timeout, so the connections never idle out.
const EVERY: Duration = Duration::from_secs(10);

/// How long the answer to `/slow` takes: a request still on the old
/// connection when it is retired.
const SLOW: Duration = Duration::from_secs(20);

/// The old upstream (answers `/slow` after [`SLOW`]), the new one, the
/// relay standing for the upstream's name (at the old one), and sidekey
/// routed to the relay.
async fn moving_upstream(http2: bool) -> (Upstream, Upstream, Relay, TestProxy) {
    let pki = Arc::new(TestPki::new());
    let opts = |pki: &Arc<TestPki>| {
        let opts = UpstreamOpts::tls(pki);
        if http2 { opts.http2() } else { opts }
    };
    let old = Upstream::start(opts(&pki).respond(|request| {
        if request.path == "/slow" {
            Reply::echo().delay(SLOW)
        } else {
            Reply::echo()
        }
    }))
    .await;
    let new = Upstream::start(opts(&pki)).await;
    let relay = Relay::start(old.addr()).await;
    let proxy = static_route(&relay.https_url())
        .trusting(&pki)
        .start()
        .await;
    (old, new, relay, proxy)
}

/// Requests every [`EVERY`] until [`MAX_CONNECTION_AGE`] and a minute have
/// passed since the upstream moved (all must be 200), with a [`SLOW`] one
/// started just before the age is reached (it must finish, on the old
/// upstream). `concurrent`: the others go on meanwhile (HTTP/2, one
/// connection); else they wait for it, as an HTTP/1.1 request alongside
/// would open a connection of its own. Returns how many requests were sent.
async fn steady_traffic_across_the_move(
    proxy: &TestProxy,
    moved: Instant,
    concurrent: bool,
) -> usize {
    let mut slow = None;
    let mut sent = 0;
    while moved.elapsed() < MAX_CONNECTION_AGE + Duration::from_secs(60) {
        tokio::time::sleep(EVERY).await;
        if slow.is_none() && moved.elapsed() + EVERY >= MAX_CONNECTION_AGE {
            let (client, url) = (TestClient::new(), format!("{}/slow", proxy.route_url(0)));
            let sending = tokio::spawn(async move { client.get(&url).await });
            slow = Some(if concurrent {
                sending
            } else {
                let answer = sending.await.unwrap();
                tokio::spawn(async move { answer })
            });
        }
        let r = proxy.get(&format!("/steady/{sent}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        sent += 1;
    }
    let slow = slow.expect("the slow request was sent").await.unwrap();
    assert_eq!(slow.status, 200, "{}", slow.text());
    sent + 1
}

/// What both protocols must show: no request failed, the new upstream
/// serves once the old connection aged, and the request in flight then
/// finished on the old one.
async fn connections_follow_the_move(http2: bool) {
    let (old, new, relay, proxy) = moving_upstream(http2).await;
    assert_eq!(proxy.get("/first").await.status, 200);
    relay.retarget(new.addr());
    let moved = Instant::now();

    let sent = steady_traffic_across_the_move(&proxy, moved, http2).await;

    assert_eq!(old.request_count() + new.request_count(), sent + 1);
    assert!(
        new.request_count() >= 4,
        "{MAX_CONNECTION_AGE:?} and a minute after the upstream's address changed, the new \
         address got {} of {sent} requests",
        new.request_count()
    );
    assert!(old.paths().contains(&"/slow".to_owned()));
    assert!(!new.paths().contains(&"/slow".to_owned()));
    assert_eq!(old.connections(), 1, "one connection to the old address");
    assert_eq!(new.connections(), 1, "one connection to the new address");
    // Drained, the old connection is closed, not kept for ever.
    tokio::time::timeout(Duration::from_secs(5), async {
        while relay.open_connections() > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the retired connection closes once its last request is done");
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_busy_http2_connection_follows_an_address_change_within_its_max_age() {
    connections_follow_the_move(true).await;
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_busy_http1_connection_follows_an_address_change_within_its_max_age() {
    connections_follow_the_move(false).await;
}

// ---- what the upstream says about its own keep-alive ----

/// Node.js (5 s by default), Apache and many gateways tell how long they
/// keep an idle connection (`Keep-Alive: timeout=N`) and close it then. A
/// request sidekey sends on it as that close happens is lost with it; a
/// POST cannot be sent again (sidekey cannot tell whether it was acted
/// on), so the app would get a 502 for a request that never left.
#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn the_keep_alive_timeout_the_upstream_advertises_is_honoured() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(
        UpstreamOpts::tls(&pki)
            .always(Reply::echo().header("keep-alive", "timeout=2"))
            .drop_requests_after_idle(Duration::from_secs(2)),
    )
    .await;
    let proxy = static_route(&upstream.url()).trusting(&pki).start().await;
    let url = format!("{}/payments", proxy.route_url(0));

    // Well within the advertised timeout: the connection is reused.
    assert_eq!(proxy.get("/first").await.status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(proxy.get("/second").await.status, 200);
    assert_eq!(upstream.connections(), 1, "reused within the timeout");

    // At the upstream's close: not on that connection.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = proxy.client.post(&url, "{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream.dropped_requests(), 0, "no request met the close");
    assert_eq!(upstream.connections(), 2);
}

/// A load balancer draining or rate-limiting connections answers
/// `Connection: close` now and then: sidekey opens one connection per
/// closing answer, no more, and no request fails.
#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn connection_close_on_every_third_answer_costs_one_connection_each() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).respond(|request| {
        if request.index % 3 == 2 {
            Reply::echo().header("connection", "close")
        } else {
            Reply::echo()
        }
    }))
    .await;
    let proxy = static_route(&upstream.url()).trusting(&pki).start().await;
    let url = format!("{}/orders", proxy.route_url(0));

    for i in 0..30 {
        let r = if i % 2 == 0 {
            proxy.get(&format!("/n/{i}")).await
        } else {
            proxy.client.post(&url, "{}").await
        };
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert!(
            r.header("connection").is_none(),
            "hop-by-hop, not passed on"
        );
    }
    assert_eq!(upstream.request_count(), 30);
    assert_eq!(
        upstream.connections(),
        10,
        "30 requests, a close every third"
    );
}

/// The upstream's certificate is replaced by one from a CA sidekey does not
/// trust (a misconfigured rotation): connections opened before go on
/// serving until they are retired, new ones fail verification with a 502
/// that says so, and no request reaches the untrusted server.
#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_certificate_from_another_ca_fails_new_connections_only() {
    let pki = Arc::new(TestPki::new());
    let old = Upstream::start(UpstreamOpts::tls(&pki).respond(|request| {
        if request.path == "/slow" {
            Reply::echo().delay(SLOW)
        } else {
            Reply::echo()
        }
    }))
    .await;
    let untrusted = Upstream::start(UpstreamOpts::tls(&Arc::new(TestPki::new()))).await;
    let relay = Relay::start(old.addr()).await;
    let proxy = static_route(&relay.https_url())
        .trusting(&pki)
        .start()
        .await;
    assert_eq!(proxy.get("/first").await.status, 200);
    relay.retarget(untrusted.addr());

    // The pooled connection still serves.
    assert_eq!(proxy.get("/pooled").await.status, 200);
    // Busy with /slow, it cannot take /fresh: that one needs a connection.
    let (client, slow_url) = (TestClient::new(), format!("{}/slow", proxy.route_url(0)));
    let slow = tokio::spawn(async move { client.get(&slow_url).await });
    old.wait_for_requests(3).await;
    let fresh = proxy.get("/fresh").await;
    assert_eq!(fresh.status, 502, "{}", fresh.text());
    assert_eq!(fresh.sidekey_error(), Some("upstream_unreachable"));
    assert!(
        fresh.text().contains("certificate"),
        "the 502 says why: {}",
        fresh.text()
    );
    assert_eq!(slow.await.unwrap().status, 200);
    assert_eq!(proxy.get("/pooled-again").await.status, 200);

    // Retired at its age, the old connection gives way to failing ones.
    tokio::time::sleep(MAX_CONNECTION_AGE).await;
    assert_eq!(proxy.get("/aged").await.status, 502);
    assert_eq!(untrusted.request_count(), 0);
    assert_eq!(untrusted.connections(), 2, "/fresh and /aged tried it");
    assert_eq!(old.connections(), 1);
}

// ---- HTTP/2 SETTINGS changed mid-connection ----

/// An upstream under load says "no new streams for now"
/// (`SETTINGS_MAX_CONCURRENT_STREAMS` = 0) on a connection sidekey keeps:
/// a request waits for it to open again, and goes when it does; if it
/// never does, the request ends at its `request_timeout` (never hangs)
/// and the connection is left for a new one. On the real clock, with short
/// durations: on the paused one, the hand-driven upstream's frames did not
/// reach sidekey before the clock jumped to the request's timeout.
#[tokio::test]
async fn an_http2_upstream_that_stops_taking_streams_mid_connection_never_hangs_a_request() {
    let pki = TestPki::new();
    let upstream = SettingsUpstream::start(&pki).await;
    let proxy = static_route(&upstream.url())
        .trusting(&pki)
        .line("[[routes]]", r#"request_timeout = "500ms""#)
        .start()
        .await;
    let get = |path: &str| {
        let (client, url) = (TestClient::new(), format!("{}{path}", proxy.route_url(0)));
        tokio::spawn(async move { client.get(&url).await })
    };
    assert_eq!(proxy.get("/first").await.status, 200);

    upstream.settings(&[(MAX_CONCURRENT_STREAMS, 0)]).await;
    let queued = get("/queued");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.heads(), 1, "no stream opened while none may be");
    upstream.settings(&[(MAX_CONCURRENT_STREAMS, 100)]).await;
    let queued = queued.await.unwrap();
    assert_eq!(queued.status, 200, "{}", queued.text());
    assert_eq!(upstream.connections(), 1);

    upstream.settings(&[(MAX_CONCURRENT_STREAMS, 0)]).await;
    let started = Instant::now();
    let stuck = proxy.get("/stuck").await;
    assert_eq!(stuck.status, 504, "{}", stuck.text());
    assert_eq!(stuck.sidekey_error(), Some("upstream_timeout"));
    assert!(started.elapsed() < Duration::from_millis(1500));
    let after = proxy.get("/after").await;
    assert_eq!(after.status, 200, "{}", after.text());
    assert_eq!(
        upstream.connections(),
        2,
        "a new connection after the timeout"
    );
}
