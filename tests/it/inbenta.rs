//! Inbenta end to end: a fake Inbenta Auth API speaking its wire format, a
//! product API upstream found through the auth response's `apis` map, and
//! sidekey in between.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::config::{TestConfig, inbenta, inbenta_route};
use crate::support::proxy::{TestProxy, body_bytes, body_generated, request, request_with};
use crate::support::tls::TestPki;
use crate::support::token_servers::{InbentaBehaviour, InbentaServer, Lifetime};
use crate::support::upstream::{Reply, Upstream, UpstreamOpts, generated_digest};
use http::Method;
use serde_json::json;

/// An Inbenta credential against `auth` and a route to the chatbot API,
/// both trusted through `pki`; the proxy started.
async fn start_proxy(pki: &TestPki, auth: &InbentaServer) -> TestProxy {
    TestConfig::new()
        .trusting(pki)
        .with(inbenta("inbenta", &auth.url()))
        .with(inbenta_route("chatbot", "inbenta"))
        .env("INBENTA_API_KEY", "test-api-key")
        .env("INBENTA_SECRET", "test-secret")
        .start()
        .await
}

/// The auth server advertises `upstream` as the chatbot API.
fn behaviour(upstream: &Upstream, lifetime: Lifetime) -> InbentaBehaviour {
    InbentaBehaviour {
        apis: BTreeMap::from([(
            "chatbot".to_owned(),
            format!("{}/prod/chatbot", upstream.url()),
        )]),
        auth_lifetime: lifetime,
        refresh_lifetime: lifetime,
        ..InbentaBehaviour::default()
    }
}

#[tokio::test]
async fn chatbot_route_uses_the_apis_map_and_sends_token_and_key() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let auth = InbentaServer::start_tls(behaviour(&upstream, Lifetime::Both(1200)), &pki).await;
    let proxy = start_proxy(&pki, &auth).await;

    let req = request_with(
        Method::POST,
        &format!("{}/v1/conversation/message", proxy.route_url(0)),
        &[("x-inbenta-key", "app-key")],
        body_bytes(r#"{"message":"hi"}"#),
    );
    let response = proxy.client.send(req).await;
    assert_eq!(response.status, 200, "{}", response.text());

    let seen = upstream.last_request().unwrap();
    assert_eq!(seen.path, "/prod/chatbot/v1/conversation/message");
    let token = auth.last_token().unwrap();
    assert_eq!(
        seen.header_all("authorization"),
        vec![format!("Bearer {token}")]
    );
    assert_eq!(seen.header_all("x-inbenta-key"), vec!["test-api-key"]);
    assert_eq!(seen.body_text(), r#"{"message":"hi"}"#);
    let auth_request = &auth.auth_requests()[0];
    assert_eq!(auth_request.json(), json!({"secret": "test-secret"}));
    assert_eq!(auth_request.header("x-inbenta-key"), Some("test-api-key"));
}

/// An Inbenta product API behind a gateway that answers 403 for tokens in
/// the returned set, an auth server advertising it, and the proxy, with a
/// first request served.
async fn gateway_with_dead_tokens() -> (
    Arc<Mutex<HashSet<String>>>,
    Upstream,
    InbentaServer,
    TestProxy,
) {
    let pki = Arc::new(TestPki::new());
    let dead: Arc<Mutex<HashSet<String>>> = Arc::default();
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).respond({
        let dead = dead.clone();
        move |req| {
            let bearer = req.header("authorization").unwrap_or_default();
            let token = bearer.trim_start_matches("Bearer ").to_owned();
            if dead.lock().unwrap().contains(&token) {
                // What Inbenta's API gateway answers for an expired or wrong token.
                Reply::json(
                    403,
                    json!({"Message": "User is not authorized to access this resource with an explicit deny"}),
                )
            } else {
                Reply::echo()
            }
        }
    }))
    .await;
    let auth = InbentaServer::start_tls(behaviour(&upstream, Lifetime::Both(1200)), &pki).await;
    let proxy = start_proxy(&pki, &auth).await;
    proxy.wait_for_tokens().await;
    assert_eq!(proxy.get("/first").await.status, 200);
    (dead, upstream, auth, proxy)
}

#[tokio::test]
async fn gateway_403_on_a_dead_token_renews_through_auth_and_retries_once() {
    let (dead, upstream, auth, proxy) = gateway_with_dead_tokens().await;

    // Inbenta revokes the token behind our back.
    let first = auth.last_token().unwrap();
    dead.lock().unwrap().insert(first.clone());
    auth.revoke_tokens();

    let response = proxy
        .client
        .post(&format!("{}/second", proxy.route_url(0)), "small body")
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.requests();
    assert_eq!(seen.len(), 3, "first, rejected second, retried second");
    assert_eq!(
        seen[1].header("authorization"),
        Some(format!("Bearer {first}").as_str())
    );
    let second = auth.last_token().unwrap();
    assert_ne!(first, second);
    assert_eq!(
        seen[2].header("authorization"),
        Some(format!("Bearer {second}").as_str())
    );
    assert_eq!(seen[2].body_text(), "small body");
    assert_eq!(
        auth.auth_calls(),
        2,
        "a rejected token is replaced through /auth"
    );
    assert_eq!(auth.refresh_calls(), 0);

    // The fresh token is refused as well: that is not about the token. The
    // 403 goes back at once, without another renewal.
    dead.lock().unwrap().insert(second.clone());
    let response = proxy.get("/third").await;
    assert_eq!(response.status, 403);
    assert_eq!(auth.auth_calls(), 2);
    assert_eq!(upstream.request_count(), 4);
}

#[tokio::test]
async fn gateway_403_with_a_small_chunked_body_retries_it_whole() {
    let (dead, upstream, auth, proxy) = gateway_with_dead_tokens().await;
    let first = auth.last_token().unwrap();
    dead.lock().unwrap().insert(first);
    auth.revoke_tokens();
    let response = proxy
        .client
        .send(request(
            Method::POST,
            &format!("{}/chunked", proxy.route_url(0)),
            body_generated(20_000, false),
        ))
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = upstream.requests();
    assert_eq!(seen.len(), 3);
    let renewed = auth.last_token().unwrap();
    assert_eq!(
        seen[2].header("authorization"),
        Some(format!("Bearer {renewed}").as_str())
    );
    assert_eq!(seen[2].body_len, 20_000);
    assert_eq!(seen[2].body_digest, generated_digest(20_000));
    assert_eq!(auth.auth_calls(), 2);
}

// On tokio's paused clock: the seconds of token life pass in virtual time
// while every request crosses the real proxy, upstream and auth server.
#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn short_tokens_are_refreshed_and_the_apis_map_survives_refresh_answers() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    // 4-second tokens: renewed about every 2 s through /refreshToken, whose
    // answers carry no `apis` (as Inbenta's do).
    let auth = InbentaServer::start_tls(behaviour(&upstream, Lifetime::Both(4)), &pki).await;
    let proxy = start_proxy(&pki, &auth).await;
    proxy.wait_for_tokens().await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    while auth.refresh_calls() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refresh within 20 s"
        );
        let response = proxy.get(&format!("/n/{sent}")).await;
        assert_eq!(response.status, 200, "request {sent}: {}", response.text());
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = proxy.get("/after-refresh").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        upstream.last_request().unwrap().header("authorization"),
        Some(format!("Bearer {}", auth.last_token().unwrap()).as_str()),
        "the refreshed token is in use"
    );
    assert_eq!(
        auth.auth_calls(),
        1,
        "renewal uses /refreshToken while the token is valid"
    );
    for refresh in auth.refresh_requests() {
        assert!(
            refresh
                .header("authorization")
                .unwrap()
                .starts_with("Bearer inbenta-token-")
        );
        assert_eq!(refresh.header("x-inbenta-key"), Some("test-api-key"));
    }
}
