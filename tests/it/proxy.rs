//! The reverse proxy end to end: a real TLS upstream (rcgen certificates),
//! sidekey in-process, real requests; assertions on what the upstream
//! received and what the app got back.

use std::sync::Arc;
use std::time::Duration;

use crate::support::process::SidekeyProcess;
use crate::support::proxy::{
    TestClient, body_bytes, body_generated, request, start_proxy, toml_path, toml_str,
};
use crate::support::tls::TestPki;
use crate::support::upstream::{Reply, Upstream, UpstreamOpts, closed_port, generated_digest};
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

[credentials.api]
type = "static"
token = {{ env = "API_TOKEN" }}
headers = {{ "x-tenant" = "acme" }}

[[routes]]
listen = "127.0.0.1:0"
upstream = {upstream}
credential = "api"
{route_extra}
"#,
        ca = toml_path(pki.ca_pem_path()),
        upstream = toml_str(upstream),
    )
}

#[tokio::test]
async fn injects_the_credential_and_replaces_what_the_app_sent() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = start_proxy(
        &one_route(&pki, &upstream.url(), r#"headers = { "x-route" = "r1" }"#),
        env(),
    )
    .await;

    let mut req = request(
        Method::GET,
        &format!("{}/items?page=2", proxy.route_url(0)),
        body_bytes(""),
    );
    let headers = req.headers_mut();
    headers.append("authorization", "Bearer app-token".parse().unwrap());
    headers.append("authorization", "Basic YXBwOmFwcA==".parse().unwrap());
    headers.insert("x-tenant", "evil".parse().unwrap());
    headers.insert("x-route", "app".parse().unwrap());
    headers.insert("connection", "x-hop".parse().unwrap());
    headers.insert("x-hop", "secret-hop".parse().unwrap());
    headers.insert("proxy-authorization", "Basic cHJveHk=".parse().unwrap());
    headers.insert("accept", "application/json".parse().unwrap());
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
    let config = format!(
        r#"
[tls]
ca_file = {ca}

[credentials.api]
type = "static"
token = {{ env = "API_TOKEN" }}

[[routes]]
listen = "127.0.0.1:0"
path_prefix = "/chatbot"
strip_prefix = true
upstream = "{chatbot}/v1/"
credential = "api"

[[routes]]
listen = "127.0.0.1:0"
path_prefix = "/search"
upstream = "{search}/api"
credential = "api"
"#,
        ca = toml_path(pki.ca_pem_path()),
        chatbot = chatbot.url(),
        search = search.url(),
    );
    let proxy = start_proxy(&config, env()).await;
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
    let proxy = start_proxy(&one_route(&pki, &upstream.url(), ""), env()).await;
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
// (in-process, every test running beside it would count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_stream_both_ways_without_buffering() {
    const SIZE: u64 = 100 * 1024 * 1024;
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
    let config = format!(
        "[log]\nformat = \"json\"\n{}",
        one_route(&pki, &upstream.url(), "")
    );
    std::fs::write(&config_path, config).unwrap();
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

    // 200 MB went through the proxy; its peak resident memory stayed far
    // below one body.
    let peak_growth_mib = proxy.memory_kib("VmHWM").saturating_sub(before) / 1024;
    assert!(
        peak_growth_mib < 16,
        "sidekey's peak RSS grew by {peak_growth_mib} MiB while streaming 2 x 100 MiB"
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
    let proxy = start_proxy(&one_route(&pki, &upstream.url(), ""), env()).await;
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

#[tokio::test]
async fn http1_upstream_connections_are_kept_alive_and_reused() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = start_proxy(&one_route(&pki, &upstream.url(), ""), env()).await;
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

#[tokio::test]
async fn unreachable_upstream_is_502_json() {
    let pki = Arc::new(TestPki::new());
    let proxy = start_proxy(
        &one_route(&pki, &format!("https://{}", closed_port()), ""),
        env(),
    )
    .await;
    let r = proxy.get("/x").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.sidekey_error(), Some("upstream_unreachable"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["error"], "upstream_unreachable");
    assert!(!r.text().contains("tok-123"));
}

#[tokio::test]
async fn untrusted_upstream_certificate_is_502_and_no_token_leaves() {
    let trusted = TestPki::new();
    let other = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&other)).await;
    let proxy = start_proxy(&one_route(&trusted, &upstream.url(), ""), env()).await;
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
    let proxy = start_proxy(
        &one_route(&pki, &upstream.url(), r#"request_timeout = "300ms""#),
        env(),
    )
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
    let config = format!(
        r#"
[tls]
ca_file = {ca}

[credentials.pliant]
type = "oauth2"
token_url = "http://{token}/oauth/token"
client_id = "id"
client_secret = "secret"
allow_insecure_http = true

[[routes]]
listen = "127.0.0.1:0"
upstream = "{upstream}"
credential = "pliant"
"#,
        ca = toml_path(pki.ca_pem_path()),
        token = closed_port(),
        upstream = upstream.url(),
    );
    let proxy = start_proxy(&config, MapEnv::default()).await;
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
"#,
        ca = toml_path(pki.ca_pem_path()),
        port = upstream.addr().port(),
    );
    let proxy = start_proxy(&config, env()).await;
    let port = upstream.addr().port();

    let mut req = request(
        Method::GET,
        &format!("http://127.0.0.1:{port}/v1/x?y=1"),
        body_bytes(""),
    );
    req.headers_mut()
        .insert("authorization", "Bearer app".parse().unwrap());
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
    let route_extra = format!(
        "tls = {{ cert = {cert}, key = {key} }}\nupstream_tls = {{ client_cert = {ccert}, client_key = {ckey} }}",
        cert = toml_path(pki.server_cert_path()),
        key = toml_path(pki.server_key_path()),
        ccert = toml_path(pki.client_cert_path()),
        ckey = toml_path(pki.client_key_path()),
    );
    let proxy = start_proxy(&one_route(&pki, &upstream.url(), &route_extra), env()).await;
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
    let proxy = start_proxy(
        &one_route(
            &pki,
            &upstream.url(),
            r#"upstream_tls = { server_name = "api.internal.test" }"#,
        ),
        env(),
    )
    .await;
    assert_eq!(proxy.get("/x").await.status, 200);
}
