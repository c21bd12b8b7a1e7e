//! Admin endpoints, reload and graceful shutdown of an in-process proxy.

use std::sync::Arc;
use std::time::Duration;

use crate::support::config::{TestConfig, oauth2, route, static_token};
use crate::support::proxy::{TestClient, TestProxy};
use crate::support::tls::TestPki;
use crate::support::token_servers::{OAuthBehaviour, OAuthServer, TokenReply};
use crate::support::upstream::{Upstream, UpstreamOpts, closed_port};

/// A static credential whose token is read from `token_env` (`TOKEN_A` and
/// `TOKEN_B` are set), a route named `api`, and an admin listener.
fn config(pki: &TestPki, upstream: &str, token_env: &str) -> TestConfig {
    TestConfig::new()
        .top(r#"shutdown_grace = "5s""#)
        .admin()
        .trusting(pki)
        .with(static_token("api", token_env))
        .with(route(upstream, "api").line(r#"name = "api""#))
        .env("TOKEN_A", "token-a")
        .env("TOKEN_B", "token-b")
}

#[tokio::test]
async fn healthz_readyz_and_metrics() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = config(&pki, &upstream.url(), "TOKEN_A").start().await;

    let health = proxy.admin_get("/healthz").await;
    assert_eq!(health.status, 200);
    let ready = proxy.admin_get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["ready"], true);

    assert_eq!(proxy.get("/a").await.status, 200);
    assert_eq!(proxy.get("/b").await.status, 200);
    let metrics = proxy.admin_get("/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    assert!(
        text.contains(r#"sidekey_requests_total{route="api",status="200"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"sidekey_request_duration_seconds_count{route="api"} 2"#),
        "{text}"
    );
    assert!(
        !text.contains(r#"sidekey_token_expires_in_seconds{credential="api"}"#),
        "a static token never expires, so it has no expiry series: {text}"
    );
    assert!(
        text.contains(
            r#"sidekey_token_refresh_total{credential="api",outcome="success",reason="startup"} 1"#
        ),
        "{text}"
    );
    assert!(!text.contains("token-a"), "metrics never show a token");

    assert_eq!(proxy.admin_get("/nope").await.status, 404);
}

#[tokio::test]
async fn readyz_lists_credentials_without_a_token_and_why() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = TestConfig::new()
        .admin()
        .trusting(&pki)
        .with(
            oauth2("pliant", &format!("http://{}/oauth/token", closed_port()))
                .line(r#"client_id = "id""#)
                .line(r#"client_secret = "very-secret-value""#),
        )
        .with(route(&upstream.url(), "pliant"))
        .start()
        .await;
    let ready = proxy.admin_get("/readyz").await;
    assert_eq!(ready.status, 503);
    let body = ready.json();
    assert_eq!(body["ready"], false);
    assert_eq!(body["credentials"][0]["name"], "pliant");
    assert!(body["credentials"][0]["reason"].as_str().unwrap().len() > 5);
    assert!(!ready.text().contains("very-secret-value"));
    let metrics = proxy.admin_get("/metrics").await.text();
    assert!(
        metrics.contains(r#"sidekey_token_expires_in_seconds{credential="pliant"} 0"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn reload_swaps_credentials_and_routes_without_dropping_the_listener() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let mut proxy = config(&pki, &upstream.url(), "TOKEN_A").start().await;
    let addr = proxy.route_addr(0);
    assert_eq!(proxy.get("/1").await.status, 200);
    assert_eq!(
        upstream.last_request().unwrap().header("authorization"),
        Some("Bearer token-a")
    );

    let new_config = config(&pki, &upstream.url(), "TOKEN_B").checked().unwrap();
    proxy
        .handle
        .reload(new_config, Duration::from_secs(5))
        .await
        .expect("reload accepted");
    assert_eq!(proxy.route_addr(0), addr);
    assert_eq!(proxy.get("/2").await.status, 200);
    assert_eq!(
        upstream.last_request().unwrap().header("authorization"),
        Some("Bearer token-b")
    );

    // A configuration whose secrets do not resolve never reaches the reload:
    // the preflight checks refuse it by key, and the old one keeps serving.
    let refused = &config(&pki, &upstream.url(), "TOKEN_MISSING")
        .checked()
        .expect_err("a missing variable is refused")
        .0[0];
    assert_eq!(refused.key, "credentials.api.token");
    assert!(refused.message.contains("TOKEN_MISSING"), "{refused}");
    assert_eq!(proxy.get("/3").await.status, 200);
    assert_eq!(
        upstream.last_request().unwrap().header("authorization"),
        Some("Bearer token-b")
    );
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_then_stops_listening() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).delay(Duration::from_millis(400))).await;
    let TestProxy { handle, .. } = config(&pki, &upstream.url(), "TOKEN_A").start().await;
    let addr = handle.route_addr(0).unwrap();
    let client = TestClient::new();
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.get(&format!("http://{addr}/slow")).await }
    });
    upstream.wait_for_requests(1).await;
    handle.shutdown().await;
    let response = in_flight.await.unwrap();
    assert_eq!(response.status, 200, "the in-flight request completed");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed after shutdown"
    );
}

/// One OAuth 2.0 credential (`scope` as given, the test server's client
/// id and secret) and one route with a `x-route` header, for the reload tests.
fn oauth_config(
    pki: &TestPki,
    token_url: &str,
    upstream: &str,
    scope: &str,
    tag: &str,
) -> TestConfig {
    let client = OAuthBehaviour::default();
    TestConfig::new()
        .trusting(pki)
        .with(
            oauth2("pliant", token_url)
                .line(&format!(r#"scope = "{scope}""#))
                .line(r#"timeout = "2s""#),
        )
        .with(
            route(upstream, "pliant")
                .line(r#"name = "api""#)
                .line(&format!(r#"headers = {{ "x-route" = "{tag}" }}"#)),
        )
        .env("CLIENT_ID", &client.client_id)
        .env("CLIENT_SECRET", &client.client_secret)
}

#[tokio::test]
async fn reload_keeps_unchanged_credentials_and_their_tokens() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let config = |tag| oauth_config(&pki, &server.url(), &upstream.url(), "read", tag);
    let mut proxy = config("one").start().await;
    assert_eq!(proxy.get("/1").await.status, 200);
    assert_eq!(server.calls(), 1);

    let new_config = config("two").checked().unwrap();
    proxy
        .handle
        .reload(new_config, Duration::from_secs(5))
        .await
        .expect("reload accepted");
    assert_eq!(proxy.get("/2").await.status, 200);
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.header("x-route"), Some("two"), "the new route applies");
    assert_eq!(seen.header("authorization"), Some("Bearer oauth-token-1"));
    assert_eq!(
        server.calls(),
        1,
        "an unchanged credential costs no token request"
    );
}

#[tokio::test]
async fn reload_during_a_token_outage_is_refused_and_the_old_token_keeps_serving() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let mut proxy = oauth_config(&pki, &server.url(), &upstream.url(), "read", "one")
        .start()
        .await;
    assert_eq!(proxy.get("/1").await.status, 200);

    // The token endpoint is down, and the reload changes the credential.
    server.set_reply(Some(TokenReply::text(500, "down")));
    let changed = oauth_config(&pki, &server.url(), &upstream.url(), "write", "two");
    let refused = proxy
        .handle
        .reload(changed.checked().unwrap(), Duration::from_secs(20))
        .await
        .expect_err("a credential without a token is never swapped in");
    let message = refused.to_string();
    assert!(message.contains("credential pliant"), "{message}");
    assert!(message.contains("500"), "{message}");

    let response = proxy.get("/2").await;
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.header("authorization"), Some("Bearer oauth-token-1"));
    assert_eq!(
        seen.header("x-route"),
        Some("one"),
        "the old configuration serves"
    );
}

#[tokio::test]
async fn reload_with_a_wrong_secret_is_refused_at_once() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let config = oauth_config(&pki, &server.url(), &upstream.url(), "read", "one");
    let mut proxy = config.start().await;
    assert_eq!(proxy.get("/1").await.status, 200);

    let started = tokio::time::Instant::now();
    let refused = proxy
        .handle
        .reload(
            config
                .env("CLIENT_SECRET", "wrong-secret-value")
                .checked()
                .unwrap(),
            Duration::from_secs(20),
        )
        .await
        .expect_err("a rejected secret is refused");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused as soon as the token endpoint said no, not after the ready wait"
    );
    let message = refused.to_string();
    assert!(message.contains("credential pliant"), "{message}");
    assert!(!message.contains("wrong-secret-value"), "{message}");
    assert_eq!(proxy.get("/2").await.status, 200);
    assert_eq!(
        upstream.last_request().unwrap().header("authorization"),
        Some("Bearer oauth-token-1")
    );
}
