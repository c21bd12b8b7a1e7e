//! The reverse proxy end to end: a real TLS upstream (rcgen certificates),
//! sidekey in-process, real requests; assertions on what the upstream
//! received and what the app got back.

use std::sync::Arc;
use std::time::Duration;

use crate::support::config::{
    TestConfig, forward_proxy, listen_tls, oauth2, route, static_token, stripped_route, toml_path,
};
use crate::support::process::SidekeyProcess;
use crate::support::proxy::{TestClient, body_bytes, body_generated, request, request_with};
use crate::support::tls::TestPki;
use crate::support::upstream::{Reply, Upstream, UpstreamOpts, closed_port, generated_digest};
use http::{Method, Version};

/// A static credential (with a tenant header) and one route to
/// `upstream`, trusting `pki`.
fn one_route(pki: &TestPki, upstream: &str) -> TestConfig {
    TestConfig::new()
        .trusting(pki)
        .with(static_token("api", "API_TOKEN").line(r#"headers = { "x-tenant" = "acme" }"#))
        .with(route(upstream, "api"))
        .env("API_TOKEN", "tok-123")
}

#[tokio::test]
async fn injects_the_credential_and_replaces_what_the_app_sent() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = one_route(&pki, &upstream.url())
        .line("[[routes]]", r#"headers = { "x-route" = "r1" }"#)
        .start()
        .await;

    let req = request_with(
        Method::GET,
        &format!("{}/items?page=2", proxy.route_url(0)),
        &[
            ("authorization", "Bearer app-token"),
            ("authorization", "Basic YXBwOmFwcA=="),
            ("x-tenant", "evil"),
            ("x-route", "app"),
            ("connection", "x-hop"),
            ("x-hop", "secret-hop"),
            ("proxy-authorization", "Basic cHJveHk="),
            ("accept", "application/json"),
        ],
        body_bytes(""),
    );
    let response = proxy.client.send(req).await;

    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.last_request().expect("upstream saw the request");
    assert_eq!(seen.path_and_query(), "/items?page=2");
    assert_eq!(seen.header_all("authorization"), vec!["Bearer tok-123"]);
    assert_eq!(seen.header_all("x-tenant"), vec!["acme"]);
    assert_eq!(seen.header_all("x-route"), vec!["r1"]);
    assert_eq!(seen.header("accept"), Some("application/json"));
    assert_eq!(
        seen.header("x-hop"),
        None,
        "headers named in Connection are hop-by-hop"
    );
    assert_eq!(seen.header("proxy-authorization"), None);
    assert_eq!(
        seen.header("host"),
        Some(upstream.addr().to_string().as_str()),
        "Host is the upstream's, not the app's"
    );
}

#[tokio::test]
async fn prefix_routing_strips_and_joins_base_paths() {
    let pki = Arc::new(TestPki::new());
    let chatbot = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let search = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = TestConfig::new()
        .trusting(&pki)
        .with(static_token("api", "API_TOKEN"))
        .with(stripped_route(
            &format!("{}/v1/", chatbot.url()),
            "api",
            "/chatbot",
        ))
        .with(route(&format!("{}/api", search.url()), "api").line(r#"path_prefix = "/search""#))
        .env("API_TOKEN", "tok-123")
        .start()
        .await;
    assert_eq!(
        proxy.route_addr(0),
        proxy.route_addr(1),
        "one listener serves both routes"
    );

    let r = proxy.get("/chatbot/conversation/message?lang=en").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        chatbot.last_request().unwrap().path_and_query(),
        "/v1/conversation/message?lang=en"
    );
    let r = proxy.get("/chatbot").await;
    assert_eq!(r.status, 200);
    assert_eq!(chatbot.last_request().unwrap().path_and_query(), "/v1");

    let r = proxy.get("/search/q?x=%20y").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        search.last_request().unwrap().path_and_query(),
        "/api/search/q?x=%20y"
    );

    let climbing = proxy.get("/chatbot/../admin").await;
    assert_eq!(climbing.status, 400);
    assert_eq!(climbing.sidekey_error(), Some("bad_request"));

    for unrouted in ["/chatbots", "/", "/other/chatbot"] {
        let r = proxy.get(unrouted).await;
        assert_eq!(r.status, 404, "{unrouted}");
        assert_eq!(r.sidekey_error(), Some("no_route"));
        assert_eq!(r.json()["error"], "no_route");
    }
    assert_eq!(chatbot.request_count(), 2);
    assert_eq!(search.request_count(), 1);
}

#[tokio::test]
async fn content_length_and_chunked_bodies_arrive_intact() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = one_route(&pki, &upstream.url()).start().await;
    let url = format!("{}/upload", proxy.route_url(0));

    for (len, exact) in [
        (10u64, true),
        (200_000, true),
        (10, false),
        (300_000, false),
    ] {
        let response = proxy
            .client
            .send(request(Method::POST, &url, body_generated(len, exact)))
            .await;
        assert_eq!(response.status, 200);
        let seen = upstream.last_request().unwrap();
        assert_eq!(seen.body_len, len, "len {len} exact {exact}");
        assert_eq!(seen.body_digest, generated_digest(len));
        if exact || len <= 64 * 1024 {
            // Small chunked bodies are kept for a possible retry and sent with their length.
            assert_eq!(
                seen.header("content-length"),
                Some(len.to_string().as_str())
            );
            assert_eq!(seen.header("transfer-encoding"), None);
        } else {
            assert_eq!(seen.header("transfer-encoding"), Some("chunked"));
        }
        assert_eq!(seen.header("authorization"), Some("Bearer tok-123"));
    }
}

// The proxy runs as its own process so that its memory is measured alone
// (in-process, every test running beside it would count). 32 MiB each way
// is twice the allowed growth of its peak RSS, so a proxy that held one
// body whole fails, and ~80 times hyper's largest read buffer (400 KiB),
// so streaming is what passes; larger bodies would only take longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_without_buffering() {
    const SIZE: u64 = 32 * 1024 * 1024;
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).respond(|req| {
        if req.method == Method::GET && req.path == "/big" {
            Reply::generated(SIZE)
        } else {
            Reply::echo()
        }
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("sidekey.toml");
    let config = one_route(&pki, &upstream.url()).json_log();
    std::fs::write(&config_path, config.text()).unwrap();
    let proxy = SidekeyProcess::run(config_path.to_str().unwrap(), &[("API_TOKEN", "tok-123")]);
    // Reading the log blocks this worker; the upstream runs on the other.
    let addr = proxy.listen_addr("proxy listening");
    let client = TestClient::new();
    let url = format!("http://{addr}/big");
    // Warm up pools and TLS sessions so only the transfers are measured.
    assert_eq!(client.get(&format!("http://{addr}/warm")).await.status, 200);
    let before = proxy.memory_kib("VmRSS");

    let upload = client
        .send(request(Method::POST, &url, body_generated(SIZE, false)))
        .await;
    assert_eq!(upload.status, 200);
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.body_len, SIZE);
    assert_eq!(seen.body_digest, generated_digest(SIZE));

    let download = client.download(&url).await;
    assert_eq!(download.status, 200);
    assert_eq!(download.error, None);
    assert_eq!(download.len, SIZE);
    assert_eq!(download.digest, generated_digest(SIZE));

    // 64 MiB went through the proxy; its peak resident memory stayed far
    // below one body.
    let peak_growth_mib = proxy.memory_kib("VmHWM").saturating_sub(before) / 1024;
    assert!(
        peak_growth_mib < 16,
        "sidekey's peak RSS grew by {peak_growth_mib} MiB while streaming 2 x 32 MiB"
    );
}

#[tokio::test]
async fn http2_upstream_is_used_when_alpn_offers_it_and_connections_are_pooled() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(
        UpstreamOpts::tls(&pki)
            .http2()
            .expect_version(Version::HTTP_2),
    )
    .await;
    let proxy = one_route(&pki, &upstream.url()).start().await;
    for i in 0..20 {
        let r = proxy.get(&format!("/n/{i}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 20);
    assert!(seen.iter().all(|r| r.version == Version::HTTP_2));
    assert!(
        seen.iter()
            .all(|r| r.header("authorization") == Some("Bearer tok-123"))
    );
    assert_eq!(upstream.connections(), 1, "one pooled HTTP/2 connection");
}

// Bodies larger than the HTTP/2 flow-control windows, several at once on
// the one upstream connection: each stream waits for window updates, so
// the futures that pump a request body and wait for a response are woken
// many times (they share the connection's task, see `proxy::h2_driver`).
#[tokio::test]
async fn http2_upstream_streams_large_bodies_both_ways_concurrently() {
    const SIZE: u64 = 1024 * 1024;
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(
        UpstreamOpts::tls(&pki)
            .http2()
            .expect_version(Version::HTTP_2)
            .respond(|req| {
                if req.method == Method::GET {
                    Reply::generated(SIZE)
                } else {
                    Reply::echo()
                }
            }),
    )
    .await;
    let proxy = one_route(&pki, &upstream.url()).start().await;
    let url = format!("http://{}/big", proxy.route_addr(0));
    let client = TestClient::new();
    let uploads: Vec<_> = (0..3)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                client
                    .send(request(Method::POST, &url, body_generated(SIZE, false)))
                    .await
                    .status
            })
        })
        .collect();
    let downloads: Vec<_> = (0..3)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { client.download(&url).await })
        })
        .collect();
    for upload in uploads {
        assert_eq!(upload.await.unwrap(), 200);
    }
    for download in downloads {
        let download = download.await.unwrap();
        assert_eq!(download.status, 200);
        assert_eq!(download.error, None);
        assert_eq!(download.len, SIZE);
        assert_eq!(download.digest, generated_digest(SIZE));
    }
    let uploaded: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::POST)
        .collect();
    assert_eq!(uploaded.len(), 3);
    for seen in uploaded {
        assert_eq!(seen.body_len, SIZE);
        assert_eq!(seen.body_digest, generated_digest(SIZE));
    }
    assert_eq!(upstream.connections(), 1, "one HTTP/2 connection");
}

#[tokio::test]
async fn http1_upstream_connections_are_kept_alive_and_reused() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = one_route(&pki, &upstream.url()).start().await;
    for i in 0..20 {
        assert_eq!(proxy.get(&format!("/n/{i}")).await.status, 200);
    }
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| r.version == Version::HTTP_11)
    );
    assert_eq!(
        upstream.connections(),
        1,
        "sequential requests reuse one connection"
    );
}

/// `apps` app connections (one client each) sending `rounds` requests one
/// after the other, all at once; every answer must be 200.
async fn steady_load(proxy: &crate::support::proxy::TestProxy, apps: usize, rounds: usize) {
    let mut load = tokio::task::JoinSet::new();
    for app in 0..apps {
        let (client, base) = (TestClient::new(), proxy.route_url(0));
        load.spawn(async move {
            for i in 0..rounds {
                let r = client.get(&format!("{base}/app/{app}/{i}")).await;
                assert_eq!(r.status, 200, "{}", r.text());
            }
        });
    }
    while let Some(done) = load.join_next().await {
        done.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_load_opens_no_more_upstream_connections_than_app_connections() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = one_route(&pki, &upstream.url()).start().await;

    steady_load(&proxy, 32, 20).await;

    assert_eq!(upstream.request_count(), 32 * 20);
    assert!(
        upstream.connections() <= 32,
        "32 app connections opened {} HTTP/1.1 upstream connections",
        upstream.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_load_shares_one_http2_connection_per_worker() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).http2()).await;
    let proxy = one_route(&pki, &upstream.url()).start().await;

    steady_load(&proxy, 32, 20).await;

    assert_eq!(upstream.request_count(), 32 * 20);
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| r.version == Version::HTTP_2)
    );
    assert_eq!(
        upstream.connections(),
        1,
        "requests served on the test's runtime (one worker) share one HTTP/2 connection"
    );
}

#[tokio::test]
async fn unreachable_upstream_is_502_json() {
    let pki = Arc::new(TestPki::new());
    let proxy = one_route(&pki, &format!("https://{}", closed_port()))
        .start()
        .await;
    let r = proxy.get("/x").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.sidekey_error(), Some("upstream_unreachable"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["error"], "upstream_unreachable");
    let message = r.json()["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains(" unreachable: "), "{message}");
    assert!(!r.text().contains("tok-123"));
}

#[tokio::test]
async fn untrusted_upstream_certificate_is_502_and_no_token_leaves() {
    let trusted = TestPki::new();
    let other = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&other)).await;
    let proxy = one_route(&trusted, &upstream.url()).start().await;
    let r = proxy.get("/x").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.sidekey_error(), Some("upstream_unreachable"));
    assert_eq!(
        upstream.request_count(),
        0,
        "no request reaches an untrusted upstream"
    );
}

#[tokio::test]
async fn slow_upstream_is_504_after_request_timeout() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).delay(Duration::from_secs(5))).await;
    let proxy = one_route(&pki, &upstream.url())
        .line("[[routes]]", r#"request_timeout = "300ms""#)
        .start()
        .await;
    let r = proxy.get("/slow").await;
    assert_eq!(r.status, 504);
    assert_eq!(r.sidekey_error(), Some("upstream_timeout"));
    assert_eq!(r.json()["error"], "upstream_timeout");
}

#[tokio::test]
async fn no_token_yet_is_503_credential_unavailable() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = TestConfig::new()
        .trusting(&pki)
        .with(
            oauth2("pliant", &format!("http://{}/oauth/token", closed_port()))
                .line(r#"client_id = "id""#)
                .line(r#"client_secret = "secret""#),
        )
        .with(route(&upstream.url(), "pliant"))
        .start()
        .await;
    let r = proxy.get("/cards").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.sidekey_error(), Some("credential_unavailable"));
    assert_eq!(r.json()["error"], "credential_unavailable");
    assert!(r.json()["message"].as_str().unwrap().contains("pliant"));
    assert_eq!(
        upstream.request_count(),
        0,
        "nothing is sent without a token"
    );
}

#[tokio::test]
async fn forward_proxy_injects_only_for_listed_hosts() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let port = upstream.addr().port();
    let proxy = TestConfig::new()
        .trusting(&pki)
        .with(static_token("api", "API_TOKEN"))
        .with(forward_proxy(&[(&format!("127.0.0.1:{port}"), "api")]))
        .env("API_TOKEN", "tok-123")
        .start()
        .await;

    let req = request_with(
        Method::GET,
        &format!("http://127.0.0.1:{port}/v1/x?y=1"),
        &[("authorization", "Bearer app")],
        body_bytes(""),
    );
    let r = proxy.via_forward_proxy(req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.path_and_query(), "/v1/x?y=1");
    assert_eq!(seen.header_all("authorization"), vec!["Bearer tok-123"]);

    let r = proxy
        .via_forward_proxy(request(
            Method::GET,
            &format!("http://localhost:{port}/v1/x"),
            body_bytes(""),
        ))
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.sidekey_error(), Some("host_not_allowed"));
    assert_eq!(upstream.request_count(), 1, "unlisted hosts get nothing");

    let mut connect = request(
        Method::CONNECT,
        &format!("127.0.0.1:{port}"),
        body_bytes(""),
    );
    *connect.uri_mut() = format!("127.0.0.1:{port}").parse().unwrap();
    let r = proxy.via_forward_proxy(connect).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.sidekey_error(), Some("bad_request"));
}

#[tokio::test]
async fn https_listener_and_mtls_upstream() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).require_client_cert()).await;
    let upstream_tls = format!(
        "upstream_tls = {{ client_cert = {}, client_key = {} }}",
        toml_path(pki.client_cert_path()),
        toml_path(pki.client_key_path()),
    );
    let proxy = one_route(&pki, &upstream.url())
        .line("[[routes]]", &listen_tls(&pki))
        .line("[[routes]]", &upstream_tls)
        .start()
        .await;
    let client = TestClient::trusting(&pki);
    let r = client
        .get(&format!("{}/secure", proxy.route_https_url(0)))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.header("authorization"), Some("Bearer tok-123"));
    assert!(
        seen.client_cert_presented,
        "the route presented its client certificate"
    );
}

#[tokio::test]
async fn upstream_server_name_override_verifies_against_that_name() {
    let pki = Arc::new(TestPki::with_server_names(&["api.internal.test"]));
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = one_route(&pki, &upstream.url())
        .line(
            "[[routes]]",
            r#"upstream_tls = { server_name = "api.internal.test" }"#,
        )
        .start()
        .await;
    assert_eq!(proxy.get("/x").await.status, 200);
}
