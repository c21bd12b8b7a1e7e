//! The shared test support works on its own: TLS upstream trusted through the
//! test CA, requests recorded, HTTP/2 by ALPN, connections counted, client
//! certificates recorded, large bodies streamed and counted.

use std::sync::Arc;
use std::time::Duration;

use crate::support::config::{
    TestConfig, forward_proxy, inbenta, oauth2, route, static_token, toml_path, toml_str,
};
use crate::support::proxy::{TestClient, body_bytes, body_empty, request, request_with};
use crate::support::tls::TestPki;
use crate::support::upstream::{
    BODY_HEAD_LIMIT, BodyDigest, ClientAuth, Reply, Upstream, UpstreamOpts, closed_port,
    generated_digest,
};
use http::{Method, Version};
use sidekey::secret::EnvSource;

fn pki() -> Arc<TestPki> {
    Arc::new(TestPki::new())
}

#[tokio::test]
async fn tls_upstream_echoes_and_records_what_it_received() {
    let pki = pki();
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    assert!(upstream.url().starts_with("https://127.0.0.1:"));
    let client = TestClient::trusting(&pki);

    let req = request_with(
        Method::POST,
        &format!("{}/v1/items?limit=5&q=a%20b", upstream.url()),
        &[("x-custom", "one"), ("x-multi", "a"), ("x-multi", "b")],
        body_bytes("hello upstream"),
    );
    let res = client.send(req).await;

    assert_eq!(res.status, 200);
    assert_eq!(res.version, Version::HTTP_11);
    assert_eq!(res.header("content-type"), Some("application/json"));
    let echo = res.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/v1/items");
    assert_eq!(echo["query"], "limit=5&q=a%20b");
    assert_eq!(echo["headers"]["x-custom"], "one");
    assert_eq!(echo["headers"]["x-multi"], serde_json::json!(["a", "b"]));
    assert_eq!(echo["body_len"], 14);
    assert_eq!(echo["body"], "hello upstream");

    let seen = upstream.last_request().expect("recorded");
    assert_eq!(seen.index, 0);
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.path_and_query(), "/v1/items?limit=5&q=a%20b");
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.header("x-custom"), Some("one"));
    assert_eq!(seen.header_all("x-multi"), vec!["a", "b"]);
    assert_eq!(seen.body_len, 14);
    assert_eq!(seen.body_digest, BodyDigest::of(b"hello upstream"));
    assert_eq!(seen.body_text(), "hello upstream");
    assert!(!seen.client_cert_presented);
    assert_eq!(upstream.requests().len(), 1);
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test]
async fn certificate_covers_localhost_too() {
    let pki = pki();
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let res = TestClient::trusting(&pki)
        .get(&format!("{}/x", upstream.localhost_url()))
        .await;
    assert_eq!(res.status, 200);
}

#[tokio::test]
async fn a_client_trusting_another_ca_is_refused() {
    let pki = pki();
    let other = TestPki::new();
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let err = TestClient::trusting(&other)
        .send_head(request(Method::GET, &upstream.url(), body_empty()))
        .await
        .expect_err("untrusted server certificate must fail");
    assert!(err.is_connect(), "{err:?}");
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test]
async fn http2_is_negotiated_when_enabled() {
    let pki = pki();
    let upstream = Upstream::start(
        UpstreamOpts::tls(&pki)
            .http2()
            .expect_version(Version::HTTP_2),
    )
    .await;
    let client = TestClient::trusting(&pki);
    for _ in 0..3 {
        let res = client.get(&format!("{}/h2", upstream.url())).await;
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.version, Version::HTTP_2);
        assert_eq!(res.json()["version"], "HTTP/2.0");
    }
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| r.version == Version::HTTP_2)
    );
    // Three streams on one connection.
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test]
async fn http1_only_upstream_refuses_h2_and_expect_version_flags_a_mismatch() {
    let pki = pki();
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).expect_version(Version::HTTP_2)).await;
    // The client offers h2 and http/1.1; the upstream picks http/1.1.
    let res = TestClient::trusting(&pki)
        .get(&format!("{}/x", upstream.url()))
        .await;
    assert_eq!(res.version, Version::HTTP_11);
    assert_eq!(res.status, 505, "the version assertion answers 505");
    assert_eq!(upstream.last_request().unwrap().version, Version::HTTP_11);
}

#[tokio::test]
async fn connections_are_counted_to_prove_pooling() {
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let pooled = TestClient::new();
    for i in 0..5 {
        let res = pooled.get(&format!("{}/p/{i}", upstream.url())).await;
        assert_eq!(res.status, 200);
    }
    assert_eq!(upstream.connections(), 1, "one pooled connection");
    assert!(upstream.requests().iter().all(|r| r.connection == 0));

    for i in 0..3 {
        let res = TestClient::new()
            .get(&format!("{}/fresh/{i}", upstream.url()))
            .await;
        assert_eq!(res.status, 200);
    }
    assert_eq!(upstream.connections(), 4);
    let conns: Vec<usize> = upstream.requests().iter().map(|r| r.connection).collect();
    assert_eq!(conns, vec![0, 0, 0, 0, 0, 1, 2, 3]);
}

#[tokio::test]
async fn client_certificate_presence_is_recorded() {
    let pki = pki();
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).client_auth(ClientAuth::Optional)).await;

    let res = TestClient::trusting(&pki)
        .get(&format!("{}/anon", upstream.url()))
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["client_cert"], false);

    let res = TestClient::with_client_cert(&pki)
        .get(&format!("{}/mtls", upstream.url()))
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["client_cert"], true);

    let seen = upstream.requests();
    assert!(!seen[0].client_cert_presented);
    assert!(seen[1].client_cert_presented);
}

#[tokio::test]
async fn required_client_certificate_refuses_anonymous_clients() {
    let pki = pki();
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).require_client_cert()).await;

    let res = TestClient::with_client_cert(&pki)
        .get(&format!("{}/ok", upstream.url()))
        .await;
    assert_eq!(res.status, 200);
    assert!(upstream.last_request().unwrap().client_cert_presented);

    // In TLS 1.3 the client learns of the rejection only after its handshake
    // completes, so the failure may show on the request or on the body.
    let anon = TestClient::trusting(&pki)
        .send_head(request(
            Method::GET,
            &format!("{}/anon", upstream.url()),
            body_empty(),
        ))
        .await;
    assert!(anon.is_err(), "anonymous client got {anon:?}");
    assert_eq!(upstream.request_count(), 1);
    assert!(upstream.handshake_failures() >= 1);
}

#[tokio::test]
async fn scripted_answers_depend_on_the_request() {
    let upstream =
        Upstream::start(
            UpstreamOpts::plain().respond(|req| match req.header("authorization") {
                Some("Bearer new") => Reply::json(200, serde_json::json!({"ok": true})),
                _ => Reply::status(401).header("www-authenticate", "Bearer"),
            }),
        )
        .await;
    let client = TestClient::new();

    let old = request_with(
        Method::GET,
        &upstream.url(),
        &[("authorization", "Bearer old")],
        body_empty(),
    );
    let res = client.send(old).await;
    assert_eq!(res.status, 401);
    assert_eq!(res.header("www-authenticate"), Some("Bearer"));

    let new = request_with(
        Method::GET,
        &upstream.url(),
        &[("authorization", "Bearer new")],
        body_empty(),
    );
    let res = client.send(new).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["ok"], true);

    let seen = upstream.wait_for_requests(2).await;
    assert_eq!(seen[0].header("authorization"), Some("Bearer old"));
    assert_eq!(seen[1].header("authorization"), Some("Bearer new"));
}

#[tokio::test]
async fn delayed_answers_arrive_after_the_delay() {
    let upstream = Upstream::start(UpstreamOpts::plain().delay(Duration::from_millis(300))).await;
    let started = tokio::time::Instant::now();
    let res = TestClient::new().get(&upstream.url()).await;
    assert_eq!(res.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The request is recorded before the delay.
    assert_eq!(upstream.request_count(), 1);
}

#[test]
fn body_digest_ignores_chunking_and_tells_bodies_apart() {
    let body: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 256) as u8).collect();
    let whole = BodyDigest::of(&body);
    for chunk in [1, 3, 7, 8, 9, 64, 999] {
        let mut d = BodyDigest::new();
        for piece in body.chunks(chunk) {
            d.update(piece);
        }
        assert_eq!((d.digest(), d.len()), (whole, 1000), "chunks of {chunk}");
    }
    // One flipped bit anywhere, two that a plain word-wise multiply would
    // cancel, swapped words, a missing or an extra zero byte: all differ.
    let mut others = Vec::new();
    for (at, bit) in [(0, 0), (7, 7), (500, 3), (999, 7)] {
        let mut changed = body.clone();
        changed[at] ^= 1 << bit;
        others.push(changed);
    }
    let mut twice = body.clone();
    twice[7] ^= 0x80;
    twice[15] ^= 0x80;
    let mut swapped = body.clone();
    swapped[..16].rotate_left(8);
    let mut longer = body.clone();
    longer.push(0);
    others.extend([twice, swapped, body[..999].to_vec(), longer]);
    for other in others {
        assert_ne!(BodyDigest::of(&other), whole);
    }
}

#[tokio::test]
async fn large_download_is_generated_and_counted_not_buffered() {
    const LEN: u64 = 16 * 1024 * 1024;
    let pki = pki();
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).stream_body(LEN)).await;
    let dl = TestClient::trusting(&pki)
        .download(&format!("{}/big", upstream.url()))
        .await;
    assert_eq!(dl.status, 200);
    assert_eq!(dl.error, None);
    assert_eq!(
        dl.headers.get("content-length").unwrap().to_str().unwrap(),
        LEN.to_string()
    );
    assert_eq!(dl.len, LEN);
    assert_eq!(dl.digest, generated_digest(LEN));
}

#[tokio::test]
async fn chunked_download_has_no_content_length() {
    let upstream =
        Upstream::start(UpstreamOpts::plain().always(Reply::generated_chunked(1_000_000))).await;
    let dl = TestClient::new().download(&upstream.url()).await;
    assert_eq!(dl.status, 200);
    assert!(dl.headers.get("content-length").is_none());
    assert_eq!(dl.headers.get("transfer-encoding").unwrap(), "chunked");
    assert_eq!(dl.len, 1_000_000);
    assert_eq!(dl.digest, generated_digest(1_000_000));
}

#[tokio::test]
async fn large_upload_is_streamed_and_counted_not_kept() {
    const LEN: u64 = 16 * 1024 * 1024;
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let res = TestClient::new()
        .post_streaming(&format!("{}/upload", upstream.url()), LEN, false)
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["body_len"], LEN);
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.header("transfer-encoding"), Some("chunked"));
    assert_eq!(seen.body_len, LEN);
    assert_eq!(seen.body_digest, generated_digest(LEN));
    assert_eq!(
        seen.body_head.len(),
        BODY_HEAD_LIMIT,
        "only the head is kept"
    );
    assert_eq!(seen.body_error, None);
}

#[tokio::test]
async fn closed_port_refuses_connections() {
    let addr = closed_port();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let err = TestClient::new()
        .send_head(request(
            Method::GET,
            &format!("http://{addr}/"),
            body_empty(),
        ))
        .await
        .expect_err("nothing listens");
    assert!(err.is_connect(), "{err:?}");
}

#[tokio::test]
async fn wait_for_requests_sees_requests_from_other_tasks() {
    let upstream = Arc::new(Upstream::start(UpstreamOpts::plain()).await);
    let url = upstream.url();
    let sender = tokio::spawn(async move {
        let client = TestClient::new();
        for i in 0..3 {
            client.get(&format!("{url}/bg/{i}")).await;
        }
    });
    let seen = upstream.wait_for_requests(3).await;
    assert_eq!(seen.len(), 3);
    sender.await.unwrap();
    upstream.wait_for_connections(1).await;
}

#[test]
fn pki_files_exist_outside_the_repo_and_quote_as_toml() {
    let pki = TestPki::new();
    for path in [
        pki.ca_pem_path(),
        pki.server_cert_path(),
        pki.server_key_path(),
        pki.client_cert_path(),
        pki.client_key_path(),
    ] {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.starts_with("-----BEGIN "), "{}", path.display());
        assert!(!path.starts_with(env!("CARGO_MANIFEST_DIR")));
    }
    let dir = pki.dir().to_path_buf();
    let quoted = toml_path(pki.ca_pem_path());
    let parsed: toml::Table = format!("ca_file = {quoted}").parse().unwrap();
    assert_eq!(
        parsed["ca_file"].as_str().unwrap(),
        pki.ca_pem_path().to_str().unwrap()
    );
    assert_eq!(toml_str("a\"b\\c"), r#""a\"b\\c""#);
    drop(pki);
    assert!(!dir.exists(), "temp dir removed on drop");
}

#[tokio::test]
async fn start_proxy_serves_a_route_to_a_tls_upstream_trusted_via_ca_file() {
    let pki = pki();
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = TestConfig::new()
        .admin()
        .trusting(&pki)
        .with(static_token("fixed", "SELFTEST_TOKEN"))
        .with(route(&upstream.url(), "fixed"))
        .env("SELFTEST_TOKEN", "t0k")
        .start()
        .await;

    let res = proxy.get("/hello?x=1").await;
    assert_eq!(res.status, 200, "{}", res.text());
    let seen = upstream.last_request().expect("forwarded");
    assert_eq!(seen.path_and_query(), "/hello?x=1");
    assert_eq!(seen.header("authorization"), Some("Bearer t0k"));

    let health = proxy.admin_get("/healthz").await;
    assert_eq!(health.status, 200);
}

#[test]
fn test_config_renders_the_shapes_and_later_lines_replace_keys() {
    let pki = TestPki::new();
    let config = TestConfig::new()
        .top("max_connections = 2")
        .admin()
        .trusting(&pki)
        .with(static_token("api", "API_TOKEN").line(r#"header = "x-api-key""#))
        .with(oauth2("plain", "http://127.0.0.1:9/oauth/token"))
        .with(inbenta("secure", "https://auth.example.test/v1"))
        .with(route("https://api.example.test", "api").line(r#"name = "first""#))
        .with(route("http://127.0.0.1:9/v1", "plain").line(r#"path_prefix = "/plain""#))
        .with(forward_proxy(&[("api.example.test", "secure")]))
        .line("[[routes]]", r#"name = "second""#)
        .line("[[routes]]", r#"name = "renamed""#)
        .top("max_connections = 3")
        .env("API_TOKEN", "t0k")
        .env("API_TOKEN", "t0k-2");
    let text = config.text();
    assert!(text.starts_with("max_connections = 3\n"), "{text}");
    // Only the plain-HTTP token endpoint and upstream are allowed plain HTTP.
    assert_eq!(
        text.matches("allow_insecure_http = true").count(),
        2,
        "{text}"
    );
    let table: toml::Table = text.parse().unwrap();
    assert_eq!(
        table["credentials"]["api"]["header"].as_str(),
        Some("x-api-key")
    );
    let names: Vec<_> = table["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["first", "renamed"], "{text}");

    // sidekey accepts it; its secrets resolve only from the environment given.
    let parsed = config.parse();
    assert_eq!(parsed.limits.max_connections, 3);
    assert_eq!(parsed.routes.len(), 2);
    assert_eq!(parsed.credentials.len(), 3);
    let refused = config
        .checked()
        .expect_err("CLIENT_* and INBENTA_* are not set");
    let keys = refused.0.iter().map(|e| e.key.as_str());
    assert!(
        keys.clone().all(|key| key.starts_with("credentials.")),
        "{refused}"
    );
    assert!(
        keys.count() > 1,
        "every unset variable is reported: {refused}"
    );
    assert_eq!(config.map_env().var("API_TOKEN").as_deref(), Some("t0k-2"));
}
