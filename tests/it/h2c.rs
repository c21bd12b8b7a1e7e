//! Apps that speak HTTP/2 in cleartext with prior knowledge (h2c), as gRPC
//! clients do: the same listener serves them and HTTP/1.1 apps, their
//! requests get the credential like any other, trailers travel both ways,
//! streams are not held back for a retry, and the connection limits
//! (idle timeout, `max_connections`, head size) hold for them too.
//!
//! A real gRPC client and server are in [`crate::grpc`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio::time::Instant;

use crate::support::config::{TestConfig, listen_tls, oauth2, route, static_token};
use crate::support::h2c::{H2cConn, body_with_trailers, fed_body, header_map};
use crate::support::proxy::{
    CLIENT_TIMEOUT, TestClient, body_bytes, body_empty, body_generated, request_with,
};
use crate::support::raw::RawConn;
use crate::support::tls::TestPki;
use crate::support::token_servers::{OAuthBehaviour, OAuthServer};
use crate::support::upstream::{BodyDigest, Reply, Upstream, UpstreamOpts, generated_digest};

/// One route to `upstream` with a static credential `tok-123`.
fn config(pki: &TestPki, upstream: &str) -> TestConfig {
    TestConfig::new()
        .trusting(pki)
        .with(static_token("api", "API_TOKEN"))
        .with(route(upstream, "api"))
        .env("API_TOKEN", "tok-123")
}

/// An HTTPS upstream offering `h2` and `http/1.1` by ALPN.
async fn h2_upstream(pki: &Arc<TestPki>) -> Upstream {
    Upstream::start(UpstreamOpts::tls(pki).http2()).await
}

#[tokio::test]
async fn an_h2c_request_gets_the_oauth2_token_instead_of_the_apps_own() {
    let pki = Arc::new(TestPki::new());
    let tokens = OAuthServer::start(OAuthBehaviour::default()).await;
    let upstream = h2_upstream(&pki).await;
    let client = OAuthBehaviour::default();
    let proxy = TestConfig::new()
        .trusting(&pki)
        .with(oauth2("api", &tokens.url()))
        .with(route(&upstream.url(), "api"))
        .env("CLIENT_ID", &client.client_id)
        .env("CLIENT_SECRET", &client.client_secret)
        .start()
        .await;

    let mut conn = H2cConn::connect(proxy.route_addr(0)).await;
    let response = conn
        .send(request_with(
            Method::POST,
            "/v1/items?x=1",
            &[("authorization", "Bearer the-apps-own"), ("x-app", "1")],
            body_bytes("hello"),
        ))
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    assert_eq!(response.version, Version::HTTP_2, "answered in HTTP/2");

    let seen = upstream
        .last_request()
        .expect("the upstream saw the request");
    let token = tokens.last_token().expect("a token was issued");
    assert_eq!(
        seen.header_all("authorization"),
        [format!("Bearer {token}")]
    );
    assert_eq!(seen.path_and_query(), "/v1/items?x=1");
    assert_eq!(seen.header("x-app"), Some("1"));
    assert_eq!(seen.body_text(), "hello");
    assert_eq!(seen.version, Version::HTTP_2, "h2 upstream by ALPN");
}

#[tokio::test]
async fn http1_and_h2c_apps_share_one_listener() {
    let pki = Arc::new(TestPki::new());
    let upstream = h2_upstream(&pki).await;
    let proxy = config(&pki, &upstream.url()).start().await;
    let addr = proxy.route_addr(0);

    let mut h2c = H2cConn::connect(addr).await;
    let mut raw = RawConn::connect(addr).await;
    for round in 0..2 {
        let response = h2c
            .send(request_with(
                Method::GET,
                &format!("/h2c/{round}"),
                &[],
                body_empty(),
            ))
            .await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.version, Version::HTTP_2);

        raw.send_get(&format!("/h1/{round}")).await.unwrap();
        let response = raw
            .read_response(CLIENT_TIMEOUT)
            .await
            .expect("an h1 answer");
        assert_eq!(response.status, 200);

        let response = proxy.get(&format!("/pooled/{round}")).await;
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.version, Version::HTTP_11);
    }
    assert!(!h2c.is_closed(), "both connections stay open");
    let requests = upstream.requests();
    assert_eq!(requests.len(), 6);
    for seen in &requests {
        assert_eq!(
            seen.header_all("authorization"),
            ["Bearer tok-123"],
            "{}",
            seen.path
        );
    }
}

#[tokio::test]
async fn a_tls_listener_offers_h2_by_alpn_and_h2c_works_on_the_serving_workers() {
    let pki = Arc::new(TestPki::new());
    let upstream = h2_upstream(&pki).await;
    let tls = config(&pki, &upstream.url())
        .line("[[routes]]", &listen_tls(&pki))
        .start()
        .await;
    // The test client offers h2 and http/1.1, as browsers and most clients do.
    let response = TestClient::trusting(&pki)
        .get(&format!("{}/alpn", tls.route_https_url(0)))
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.version, Version::HTTP_2, "h2 by ALPN");

    let workers = config(&pki, &upstream.url())
        .top("workers = 2")
        .start_on_workers()
        .await;
    let mut conn = H2cConn::connect(workers.route_addr(0)).await;
    for round in 0..3 {
        let response = conn
            .send(request_with(
                Method::GET,
                &format!("/workers/{round}"),
                &[],
                body_empty(),
            ))
            .await;
        assert_eq!(response.status, StatusCode::OK);
    }
    let requests = upstream.requests();
    assert_eq!(requests.len(), 4);
    assert!(
        requests
            .iter()
            .all(|seen| seen.header("authorization") == Some("Bearer tok-123"))
    );
}

#[tokio::test]
async fn trailers_travel_both_ways_and_te_trailers_reaches_the_upstream() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).http2().respond(|_| {
        Reply::bytes(200, "reply")
            .header("content-type", "application/grpc")
            .trailer("grpc-status", "7")
            .trailer("grpc-message", "denied")
    }))
    .await;
    let proxy = config(&pki, &upstream.url()).start().await;

    let mut conn = H2cConn::connect(proxy.route_addr(0)).await;
    let response = conn
        .send(request_with(
            Method::POST,
            "/pkg.Service/Method",
            &[("te", "trailers"), ("content-type", "application/grpc")],
            body_with_trailers("request", &[("x-checksum", "abc")]),
        ))
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.body, "reply");
    assert_eq!(response.trailer("grpc-status"), Some("7"), "{response:?}");
    assert_eq!(response.trailer("grpc-message"), Some("denied"));

    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.body_text(), "request");
    assert_eq!(
        seen.trailers.as_ref().and_then(|t| t.get("x-checksum")),
        Some(&http::HeaderValue::from_static("abc")),
        "request trailers reach the upstream: {seen:?}"
    );
    assert_eq!(seen.header("te"), Some("trailers"));
}

#[tokio::test]
async fn large_bodies_stream_both_ways_over_h2c_within_the_flow_control_windows() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).http2().respond(|request| {
        if request.method == Method::GET {
            Reply::generated_chunked(3 << 20)
        } else {
            Reply::echo()
        }
    }))
    .await;
    let proxy = config(&pki, &upstream.url()).start().await;
    let mut conn = H2cConn::connect(proxy.route_addr(0)).await;

    let len = 2 << 20;
    let response = conn
        .send(request_with(
            Method::POST,
            "/upload",
            &[],
            body_generated(len, false),
        ))
        .await;
    assert_eq!(response.status, StatusCode::OK);
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.body_len, len);
    assert_eq!(seen.body_digest, generated_digest(len));

    let response = conn
        .send(request_with(Method::GET, "/download", &[], body_empty()))
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.body.len(), 3 << 20);
    assert_eq!(BodyDigest::of(&response.body), generated_digest(3 << 20));
}

#[tokio::test]
async fn sidekeys_own_errors_reach_a_grpc_call_as_a_grpc_status() {
    let pki = Arc::new(TestPki::new());
    let upstream = h2_upstream(&pki).await;
    let proxy = config(&pki, &upstream.url())
        .admin()
        .line("[[routes]]", r#"path_prefix = "/pkg.Known""#)
        .start()
        .await;
    let mut conn = H2cConn::connect(proxy.route_addr(0)).await;

    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let response = conn
        .send(request_with(
            Method::POST,
            "/pkg.Unknown/Call",
            &grpc,
            body_empty(),
        ))
        .await;
    assert_eq!(
        response.status,
        StatusCode::OK,
        "gRPC says errors in grpc-status"
    );
    assert_eq!(response.header("grpc-status"), Some("12"), "UNIMPLEMENTED");
    assert_eq!(response.sidekey_error(), Some("no_route"));
    let message = response.header("grpc-message").unwrap_or_default();
    assert!(message.contains("/pkg.Unknown/Call"), "{message}");
    assert!(response.body.is_empty());

    // The same error to a plain HTTP/2 request is sidekey's JSON.
    let response = conn
        .send(request_with(
            Method::POST,
            "/pkg.Unknown/Call",
            &[],
            body_empty(),
        ))
        .await;
    assert_eq!(response.status, StatusCode::NOT_FOUND);
    assert_eq!(response.json()["error"], "no_route");

    assert_eq!(
        proxy
            .metric(r#"sidekey_requests_total{route="none",status="404"}"#)
            .await,
        2.0,
        "counted by the HTTP status the error stands for"
    );
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test]
async fn announced_trailers_travel_both_ways_over_http1_too() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).respond(|_| {
        Reply::generated_chunked(10)
            .header("trailer", "x-sum")
            .trailer("x-sum", "42")
    }))
    .await;
    let proxy = config(&pki, &upstream.url()).start().await;

    let (feed, body) = fed_body();
    feed.send(Frame::data(Bytes::from_static(b"upload")))
        .await
        .unwrap();
    feed.send(Frame::trailers(header_map(&[("x-checksum", "abc")])))
        .await
        .unwrap();
    drop(feed);
    let response = proxy
        .client
        .send(request_with(
            Method::PUT,
            &format!("{}/upload", proxy.route_url(0)),
            &[("te", "trailers"), ("trailer", "x-checksum")],
            body,
        ))
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.version, Version::HTTP_11);
    assert_eq!(response.body.len(), 10);
    assert_eq!(response.trailer("x-sum"), Some("42"), "{response:?}");

    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.body_text(), "upload");
    assert_eq!(
        seen.trailers.as_ref().and_then(|t| t.get("x-checksum")),
        Some(&http::HeaderValue::from_static("abc")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn te_other_than_trailers_is_still_dropped() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = config(&pki, &upstream.url()).start().await;
    let mut raw = RawConn::connect(proxy.route_addr(0)).await;
    raw.send(
        b"GET /te HTTP/1.1\r\nhost: sidekey\r\nte: gzip, trailers;q=1\r\nconnection: te\r\n\r\n\
          GET /te2 HTTP/1.1\r\nhost: sidekey\r\nte: gzip\r\n\r\n",
    )
    .await
    .unwrap();
    for _ in 0..2 {
        let response = raw.read_response(CLIENT_TIMEOUT).await.unwrap();
        assert_eq!(response.status, 200);
    }
    let requests = upstream.requests();
    assert_eq!(
        requests[0].header_all("te"),
        ["trailers"],
        "only `trailers` is passed on"
    );
    assert!(requests[1].header("te").is_none(), "{:?}", requests[1]);
}

#[tokio::test]
async fn an_h2c_stream_flows_both_ways_without_waiting_for_its_end() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).http2().echo_stream()).await;
    let proxy = config(&pki, &upstream.url()).start().await;
    let mut conn = H2cConn::connect(proxy.route_addr(0)).await;

    let (tx, body) = fed_body();
    let request = request_with(
        Method::POST,
        "/pkg.Chat/Talk",
        &[("content-type", "application/grpc"), ("te", "trailers")],
        body,
    );
    tx.send(Frame::data(Bytes::from_static(b"ping-1")))
        .await
        .unwrap();
    let exchange = async {
        let response = conn.send_head(request).await.expect("a response head");
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        for round in 1..=3 {
            // Each message comes back before the next one is sent.
            let frame = body.frame().await.expect("a frame").expect("no error");
            assert_eq!(
                frame.into_data().expect("data"),
                format!("ping-{round}"),
                "round {round}"
            );
            if round < 3 {
                let next = Bytes::from(format!("ping-{}", round + 1));
                tx.send(Frame::data(next)).await.unwrap();
            }
        }
        tx.send(Frame::trailers(header_map(&[("x-done", "yes")])))
            .await
            .unwrap();
        drop(tx);
        let trailers = body
            .collect()
            .await
            .expect("the end of the stream")
            .trailers()
            .cloned();
        assert_eq!(
            trailers
                .as_ref()
                .and_then(|t| t.get("x-done"))
                .map(|v| v.as_bytes()),
            Some(b"yes".as_slice())
        );
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the stream went through both ways within 10 s");
    assert_eq!(upstream.request_count(), 1);
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn idle_h2c_connections_are_closed_after_idle_timeout_but_not_while_serving() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).http2().respond(|request| {
        match request.path.as_str() {
            "/slow" => Reply::status(204).delay(Duration::from_millis(900)),
            "/stuck" => Reply::status(204).delay(Duration::from_secs(60)),
            _ => Reply::status(200),
        }
    }))
    .await;
    let proxy = config(&pki, &upstream.url())
        .top(r#"idle_timeout = "300ms""#)
        .start()
        .await;
    let addr = proxy.route_addr(0);

    // Served: a slow answer longer than the idle timeout is not cut off.
    let mut served = H2cConn::connect(addr).await;
    let response = served
        .send(request_with(Method::GET, "/slow", &[], body_empty()))
        .await;
    assert_eq!(response.status, StatusCode::NO_CONTENT);
    // Never sent a request.
    let mut silent = H2cConn::connect(addr).await;
    // Only part of the preface.
    let mut partial = RawConn::connect(addr).await;
    partial.send(b"PRI * HTTP/2.0\r\n").await.unwrap();
    // A request given up (stream reset) while the upstream works on it
    // for longer than the wait below: it must stop counting as served.
    let mut abandoned = H2cConn::connect(addr).await;
    let slow = abandoned.send_head(request_with(Method::GET, "/stuck", &[], body_empty()));
    assert!(
        tokio::time::timeout(Duration::from_millis(100), slow)
            .await
            .is_err(),
        "no answer yet"
    );

    let started = Instant::now();
    for (what, conn) in [
        ("served", &mut served),
        ("silent", &mut silent),
        ("abandoned", &mut abandoned),
    ] {
        assert!(
            conn.closed_within(Duration::from_secs(5)).await,
            "{what} h2c connection still open"
        );
    }
    assert!(partial.closed_within(Duration::from_secs(5)).await);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "closed by the timeout, not at once"
    );
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn at_max_connections_an_h2c_connection_waits_for_a_free_place() {
    let pki = Arc::new(TestPki::new());
    let upstream = h2_upstream(&pki).await;
    let proxy = config(&pki, &upstream.url())
        .top("max_connections = 1")
        .start()
        .await;
    let addr = proxy.route_addr(0);

    let mut first = H2cConn::connect(addr).await;
    let response = first
        .send(request_with(Method::GET, "/first", &[], body_empty()))
        .await;
    assert_eq!(response.status, StatusCode::OK);

    let mut second = H2cConn::connect(addr).await;
    let waiting = second.send_head(request_with(Method::GET, "/second", &[], body_empty()));
    tokio::pin!(waiting);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), waiting.as_mut())
            .await
            .is_err(),
        "a connection over the cap is not served"
    );
    assert_eq!(upstream.request_count(), 1);

    drop(first);
    let response = tokio::time::timeout(CLIENT_TIMEOUT, waiting)
        .await
        .expect("served once the first connection closed")
        .expect("a response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.request_count(), 2);
}

#[tokio::test]
async fn an_h2c_request_head_over_the_limit_gets_431_and_never_reaches_the_upstream() {
    let pki = Arc::new(TestPki::new());
    let upstream = h2_upstream(&pki).await;
    let proxy = config(&pki, &upstream.url())
        .top("max_header_bytes = 4096")
        .start()
        .await;
    let mut conn = H2cConn::connect(proxy.route_addr(0)).await;

    let small = "a".repeat(3 * 1024);
    let response = conn
        .send(request_with(
            Method::GET,
            "/small",
            &[("x-fill", &small)],
            body_empty(),
        ))
        .await;
    assert_eq!(response.status, StatusCode::OK);

    let large = "a".repeat(5 * 1024);
    let response = conn
        .send(request_with(
            Method::GET,
            "/large",
            &[("x-fill", &large)],
            body_empty(),
        ))
        .await;
    assert_eq!(response.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(upstream.paths(), ["/small"]);
}

#[tokio::test]
async fn shutdown_lets_an_h2c_stream_finish_then_closes_the_connection() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(
        UpstreamOpts::tls(&pki)
            .http2()
            .delay(Duration::from_millis(400)),
    )
    .await;
    let proxy = config(&pki, &upstream.url())
        .top(r#"shutdown_grace = "5s""#)
        .start()
        .await;
    let mut conn = H2cConn::connect(proxy.route_addr(0)).await;
    let in_flight = conn.send_head(request_with(Method::GET, "/slow", &[], body_empty()));
    let shutdown = async {
        upstream.wait_for_requests(1).await;
        proxy.handle.shutdown().await;
    };
    let (response, ()) = tokio::join!(in_flight, shutdown);
    let response = response.expect("the in-flight stream completed");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        conn.closed_within(Duration::from_secs(5)).await,
        "the connection is closed after the drain"
    );
}

/// A gRPC server says a token is rejected with `grpc-status: 16`
/// (UNAUTHENTICATED) in an HTTP 200 answer, not with a 401: with 401 in
/// `renew_on_status`, sidekey treats it as the rejection it is and renews,
/// so the app's next call carries a new token.
#[tokio::test]
async fn a_grpc_unauthenticated_answer_renews_the_token() {
    let pki = Arc::new(TestPki::new());
    let tokens = OAuthServer::start(OAuthBehaviour::default()).await;
    let first_token: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let seen_first = first_token.clone();
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).http2().respond(move |request| {
        let authorization = request
            .header("authorization")
            .unwrap_or_default()
            .to_owned();
        let mut first = seen_first.lock().unwrap();
        let first = first.get_or_insert_with(|| authorization.clone());
        let grpc = Reply::status(200).header("content-type", "application/grpc");
        if *first == authorization {
            grpc.header("grpc-status", "16")
                .header("grpc-message", "token revoked")
        } else {
            grpc.trailer("grpc-status", "0")
        }
    }))
    .await;
    let client = OAuthBehaviour::default();
    let proxy = TestConfig::new()
        .trusting(&pki)
        .with(oauth2("api", &tokens.url()))
        .with(route(&upstream.url(), "api"))
        .env("CLIENT_ID", &client.client_id)
        .env("CLIENT_SECRET", &client.client_secret)
        .start()
        .await;
    let mut conn = H2cConn::connect(proxy.route_addr(0)).await;
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let call = || {
        request_with(
            Method::POST,
            "/pkg.Svc/Call",
            &grpc,
            body_with_trailers("", &[]),
        )
    };

    let rejected = conn.send(call()).await;
    assert_eq!(
        rejected.header("grpc-status"),
        Some("16"),
        "passed on as the server said"
    );
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    while tokens.calls() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(tokens.calls(), 2, "the rejection renewed the token");

    let accepted = conn.send(call()).await;
    assert_eq!(accepted.status, StatusCode::OK);
    assert_eq!(
        accepted.trailer("grpc-status"),
        Some("0"),
        "{:?}",
        accepted.trailers
    );
    let issued = tokens.issued_tokens();
    assert_eq!(
        upstream.last_request().unwrap().header_all("authorization"),
        [format!("Bearer {}", issued[1])]
    );
}
