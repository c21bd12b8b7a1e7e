//! Token lifecycle seen from the app: no stampede at startup, an outage of
//! the token endpoint (old token serves until it truly expires, then 503
//! JSON, then recovery), and the `sidekey token` command.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use crate::support::config::{TestConfig, oauth2, route};
use crate::support::process::BIN;
use crate::support::proxy::TestProxy;
use crate::support::tls::TestPki;
use crate::support::token_servers::{OAuthBehaviour, OAuthServer, TokenReply};
use crate::support::upstream::{Upstream, UpstreamOpts};
use serde_json::json;
use sidekey::credential::CredentialStatus;

/// An OAuth 2.0 credential (JSON body, client secret in the body) against
/// `token` and one route to `upstream`, both trusted through `pki`.
fn config(pki: &TestPki, token: &OAuthServer, upstream: &Upstream) -> TestConfig {
    TestConfig::new()
        .trusting(pki)
        .with(
            oauth2("pliant", &token.url())
                .line(r#"audience = "api.getpliant.com/api/integration""#)
                .line(r#"body = "json""#)
                .line(r#"client_auth = "post""#),
        )
        .with(route(&upstream.url(), "pliant"))
        .env("CLIENT_ID", "test-client")
        .env("CLIENT_SECRET", "test-client-secret")
}

/// A PKI, an upstream and a token endpoint whose tokens live `expires_in` s.
async fn scene(expires_in: u64) -> (Arc<TestPki>, Upstream, OAuthServer) {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let behaviour = OAuthBehaviour {
        expires_in: Some(json!(expires_in)),
        ..OAuthBehaviour::default()
    };
    let token = OAuthServer::start_tls(behaviour, &pki).await;
    (pki, upstream, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_requests_at_startup_share_one_token_request() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let token = OAuthServer::start_tls(OAuthBehaviour::default(), &pki).await;
    // The first token takes a while, so every request below arrives before it.
    token.push_reply(
        TokenReply::json(
            200,
            json!({"access_token": "slow-token", "token_type": "Bearer", "expires_in": 3600}),
        )
        .delay(Duration::from_millis(400)),
    );
    let proxy = Arc::new(config(&pki, &token, &upstream).start().await);

    let requests: Vec<_> = (0..100)
        .map(|i| {
            let proxy = Arc::clone(&proxy);
            tokio::spawn(async move { proxy.get(&format!("/cards/{i}")).await })
        })
        .collect();
    for request in requests {
        let response = request.await.unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
    }
    assert_eq!(
        token.calls(),
        1,
        "one token request, however many requests wait for it"
    );
    assert_eq!(upstream.request_count(), 100);
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| r.header("authorization") == Some("Bearer slow-token"))
    );
}

async fn wait_for_status(proxy: &TestProxy, status: u16, within: Duration) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let response = proxy.get("/poll").await;
        if response.status == status {
            return if response.body.is_empty() {
                json!(null)
            } else {
                response.json()
            };
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {status} within {within:?}; last {} {}",
            response.status,
            response.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// On tokio's paused clock: the token's 3 s life, the retries and the
// outage pass in virtual time, exactly as the engine counts them, while
// every request still crosses the real proxy, upstream and token endpoint.
#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn outage_serves_the_old_token_until_expiry_then_503_then_recovers() {
    let (pki, upstream, token) = scene(3).await;
    let proxy = config(&pki, &token, &upstream).start().await;
    assert_eq!(proxy.get("/before").await.status, 200);
    let obtained = tokio::time::Instant::now();

    // The token endpoint goes down.
    token.set_reply(Some(TokenReply::oauth_error(
        503,
        "temporarily_unavailable",
        "maintenance",
    )));
    // Until the 3-second token truly expires, requests still succeed with it.
    while obtained.elapsed() < Duration::from_millis(2000) {
        assert_eq!(proxy.get("/during").await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let error = wait_for_status(&proxy, 503, Duration::from_secs(5)).await;
    assert_eq!(error["error"], "credential_unavailable");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("pliant"), "{message}");
    assert!(message.contains("temporarily_unavailable"), "{message}");
    assert!(!message.contains("test-client-secret"));
    let failures = token.calls();
    assert!(failures >= 2, "renewal was retried during the outage");

    // The outage goes on for a while; then the endpoint recovers and the
    // next attempt, about a second later at most, gets a token.
    tokio::time::sleep(Duration::from_secs(4)).await;
    token.set_reply(None);
    let recovered = tokio::time::Instant::now();
    wait_for_status(&proxy, 200, Duration::from_secs(20)).await;
    assert!(
        recovered.elapsed() < Duration::from_millis(1600),
        "200 again only {:?} after the endpoint recovered",
        recovered.elapsed()
    );
    let issued = token.last_token().unwrap();
    assert_eq!(
        upstream.last_request().unwrap().header("authorization"),
        Some(format!("Bearer {issued}").as_str())
    );
}

#[tokio::test]
async fn token_command_prints_type_and_lifetime_not_the_token() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let token = OAuthServer::start_tls(OAuthBehaviour::default(), &pki).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidekey.toml");
    std::fs::write(&path, config(&pki, &token, &upstream).text()).unwrap();

    let path1 = path.clone();
    let (quiet, shown) = tokio::task::spawn_blocking(move || {
        (token_command(&path1, false), token_command(&path1, true))
    })
    .await
    .unwrap();
    assert_eq!(
        quiet.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );
    let stdout = String::from_utf8_lossy(&quiet.stdout);
    assert!(stdout.contains("type oauth2"), "{stdout}");
    assert!(stdout.contains("expires in 86400s"), "{stdout}");
    let issued = token.issued_tokens();
    assert_eq!(issued.len(), 2);
    assert!(
        !stdout.contains(&issued[0]),
        "the token is printed only with --show"
    );
    assert_eq!(shown.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&shown.stdout).contains(&issued[1]));

    // A refused credential exits 1 with the endpoint's reason, not the secret.
    token.set_reply(Some(TokenReply::oauth_error(
        401,
        "invalid_client",
        "Client authentication failed",
    )));
    let refused = tokio::task::spawn_blocking(move || token_command(&path, false))
        .await
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("invalid_client"), "{stderr}");
    assert!(!stderr.contains("test-client-secret"), "{stderr}");
}

/// `sidekey token --config PATH pliant [--show]` with the client id and
/// secret in its environment.
fn token_command(path: &Path, show: bool) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(["token", "--config"])
        .arg(path)
        .arg("pliant")
        .env("CLIENT_ID", "test-client")
        .env("CLIENT_SECRET", "test-client-secret");
    if show {
        command.arg("--show");
    }
    command.output().unwrap()
}

/// A suspend of the machine (a laptop's lid, a paused VM) stops the
/// monotonic clock the engine counts a token's life on, but not the
/// issuer's: `skip` moves the credential's wall clock ahead as a suspend
/// would, and tokio's clock not at all.
fn suspend(proxy: &TestProxy, by: Duration) {
    let credentials = proxy.handle.credentials();
    credentials.get("pliant").unwrap().wall_clock().skip(by);
}

#[tokio::test]
async fn a_token_a_suspend_outlived_is_never_sent_and_is_renewed_at_once() {
    let (pki, upstream, token) = scene(3600).await;
    let proxy = config(&pki, &token, &upstream).start().await;
    assert_eq!(proxy.get("/before").await.status, 200);
    let before = token.last_token().unwrap();

    // Two hours asleep: the hour-long token ended during the suspend.
    suspend(&proxy, Duration::from_secs(7200));
    let response = proxy.get("/after").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(token.calls(), 2, "renewed once, on the first request after");
    let after = token.last_token().unwrap();
    assert_ne!(after, before);
    let sent = upstream.last_request().unwrap();
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {after}").as_str()),
        "the token the suspend outlived never reaches the upstream"
    );
    // The new token counts from the new wall-clock time: it serves on.
    assert_eq!(proxy.get("/later").await.status, 200);
    assert_eq!(token.calls(), 2);
    let credentials = proxy.handle.credentials();
    let status = credentials.get("pliant").unwrap().status();
    assert!(
        matches!(status, CredentialStatus::Ready { .. }),
        "{status:?}"
    );

    // A short suspend, within the token's life, changes nothing.
    suspend(&proxy, Duration::from_secs(600));
    assert_eq!(proxy.get("/short").await.status, 200);
    assert_eq!(token.calls(), 2);
}

// On tokio's paused clock: the requests' 5 s wait and the engine's
// backoff pass in virtual time.
#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn after_a_suspend_a_token_endpoint_outage_gives_503s_not_the_old_token_nor_a_storm() {
    let (pki, upstream, token) = scene(3600).await;
    let proxy = Arc::new(config(&pki, &token, &upstream).start().await);
    assert_eq!(proxy.get("/before").await.status, 200);

    token.set_reply(Some(TokenReply::oauth_error(
        503,
        "temporarily_unavailable",
        "maintenance",
    )));
    suspend(&proxy, Duration::from_secs(7200));
    let requests: Vec<_> = (0..20)
        .map(|i| {
            let proxy = Arc::clone(&proxy);
            tokio::spawn(async move { proxy.get(&format!("/after/{i}")).await })
        })
        .collect();
    for request in requests {
        let response = request.await.unwrap();
        assert_eq!(response.status, 503, "{}", response.text());
        assert_eq!(response.sidekey_error(), Some("credential_unavailable"));
    }
    assert_eq!(
        upstream.request_count(),
        1,
        "only /before reached the upstream"
    );
    // One renewal at once, then the engine's backoff (1 s floor) while the
    // requests wait out their 5 s: not one token request per app request.
    let calls = token.calls();
    assert!((2..=8).contains(&calls), "{calls} token requests");
}
