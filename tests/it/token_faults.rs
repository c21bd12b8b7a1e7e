//! The credential engine under token-endpoint and upstream faults, end to end
//! through the real providers: absurd lifetimes, servers that say "retry
//! now", error pages that echo the credentials back, upstreams that reject
//! every token, a hanging Inbenta refresh, short tokens against a flaky
//! endpoint, and a matrix of the faults a token endpoint can produce — each
//! classified, backed off, reported in one line without secrets, and
//! recovered from.
//!
//! Tests of timing run on tokio's paused clock against real loopback
//! servers, so seconds of backoff and token life take no real time; that
//! includes the proxy, which runs on the test's runtime too. Tests of
//! request storms need no clock and run multi-threaded in real time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::StatusCode;
use rustls::RootCertStore;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep};

use sidekey::credential::{CredentialHandle, CredentialStatus, Credentials};
use sidekey::metrics::Metrics;

use crate::support::config::{Table, TestConfig, inbenta, oauth2, route, static_token};
use crate::support::logs;
use crate::support::proxy::TestProxy;
use crate::support::timing::{assert_between, gaps};
use crate::support::tls::TestPki;
use crate::support::token_servers::{
    InbentaBehaviour, InbentaEndpoint, InbentaServer, Lifetime, OAuthBehaviour, OAuthServer,
    TokenReply, jwt,
};
use crate::support::upstream::{Reply, Upstream, UpstreamOpts, closed_port};

const CLIENT_ID: &str = "test-client";
const CLIENT_SECRET: &str = "test-client-secret";

/// Nothing yet, and the client credentials the test token servers accept
/// in the environment.
fn base() -> TestConfig {
    TestConfig::new()
        .env("CLIENT_ID", CLIENT_ID)
        .env("CLIENT_SECRET", CLIENT_SECRET)
        .env("INBENTA_API_KEY", "test-api-key")
        .env("INBENTA_SECRET", "test-secret")
}

/// The engines of a configuration made of one credential table.
fn engines(credential: Table) -> (Credentials, Metrics) {
    let config = base().with(credential).parse();
    let metrics = Metrics::new();
    let credentials =
        Credentials::start(&config, &RootCertStore::empty(), &metrics).expect("credentials");
    (credentials, metrics)
}

fn api(credentials: &Credentials) -> Arc<CredentialHandle> {
    credentials.get("api").expect("credential api").clone()
}

fn reason(handle: &CredentialHandle) -> String {
    match handle.status() {
        CredentialStatus::Unavailable { reason } => reason,
        ready => panic!("expected no valid token, got {ready:?}"),
    }
}

// ---- absurd lifetimes -------------------------------------------------------

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn absurd_lifetimes_are_clamped_and_never_kill_the_credential() {
    let year = Duration::from_secs(365 * 86_400);
    let answers = [
        json!({"access_token": "a", "expires_in": 9_223_372_036_854_775_808_u64}),
        json!({"access_token": "b", "expires_in": u64::MAX}),
        json!({"access_token": "c", "expires_in": 1e300}),
        json!({"access_token": "d", "expires_in": "1e300"}),
        json!({"access_token": jwt(json!({"sub": "x", "exp": 1e300}))}),
    ];
    for answer in answers {
        let server = OAuthServer::start(OAuthBehaviour::default()).await;
        server.push_reply(TokenReply::json(200, answer.clone()));
        let (credentials, _metrics) = engines(oauth2("api", &server.url()));
        let handle = api(&credentials);
        handle
            .wait_for_newer(0, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{answer}: {e}"));
        match handle.status() {
            CredentialStatus::Ready {
                expires_in: Some(left),
            } => assert!(left <= year && left > year / 2, "{answer}: {left:?}"),
            other => panic!("{answer}: {other:?}"),
        }
        sleep(Duration::from_secs(3600)).await;
        assert_eq!(
            server.calls(),
            1,
            "{answer}: renewed a year-long token early"
        );
    }
}

#[tokio::test]
async fn a_token_with_an_absurd_lifetime_serves_requests() {
    let token = OAuthServer::start(OAuthBehaviour {
        expires_in: Some(json!(1e300)),
        ..OAuthBehaviour::default()
    })
    .await;
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let proxy = proxy_config("api", oauth2("api", &token.url()), &upstream)
        .start()
        .await;
    let response = proxy.get("/cards").await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    assert_eq!(
        upstream.last_request().unwrap().header("authorization"),
        Some("Bearer oauth-token-1")
    );
    let ready = proxy.admin_get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
}

// ---- server-chosen delays ---------------------------------------------------

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn retry_after_now_or_in_the_past_still_waits_a_second() {
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    for i in 0..10 {
        let when = if i % 2 == 0 {
            "0"
        } else {
            "Thu, 01 Jan 1970 00:00:00 GMT"
        };
        server.push_reply(TokenReply::text(429, "slow down").retry_after(when));
    }
    let (credentials, _metrics) = engines(oauth2("api", &server.url()));
    api(&credentials)
        .wait_for_newer(0, Duration::from_secs(600))
        .await
        .expect("a token once the server stops throttling");
    let arrivals: Vec<Instant> = server.requests().iter().map(|r| r.at).collect();
    assert_eq!(arrivals.len(), 11);
    for gap in gaps(&arrivals) {
        assert!(gap >= 1.0, "retried after {gap} s: {arrivals:?}");
    }
}

// ---- secrets in echoed error pages ------------------------------------------

/// A client secret that every encoding spells differently.
const ODD_SECRET: &str = "s3cr3t pa55/\"quoted\"\\back+plus:colon%pct é-0123456789abcdef";
/// An Inbenta API secret that JSON escapes.
const ODD_INBENTA_SECRET: &str = "inb-\"qu0ted\"\\with/escapes-and-a-long-tail-0123456789";
const ODD_API_KEY: &str = "api-key-0123456789abcdefXYZ";

fn form(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn json_inner(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap();
    quoted[1..quoted.len() - 1].to_owned()
}

/// Every spelling of the secrets a token request may carry, and every
/// 10-character piece of each (a leaked prefix is a leak).
fn forbidden_pieces() -> Vec<String> {
    let basic = STANDARD.encode(format!("{}:{}", form(CLIENT_ID), form(ODD_SECRET)));
    let mut spellings = vec![basic];
    for secret in [ODD_SECRET, ODD_INBENTA_SECRET, ODD_API_KEY] {
        spellings.push(secret.to_owned());
        spellings.push(form(secret));
        spellings.push(json_inner(secret));
    }
    let mut pieces = Vec::new();
    for spelling in spellings {
        let chars: Vec<char> = spelling.chars().collect();
        for window in chars.windows(10) {
            pieces.push(window.iter().collect());
        }
    }
    pieces
}

fn assert_no_secret(text: &str, what: &str) {
    for piece in forbidden_pieces() {
        assert!(
            !text.contains(&piece),
            "{what} shows {piece:?} of a secret:\n{text}"
        );
    }
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn token_endpoints_echoing_the_request_never_leak_a_secret() {
    let (logs, _guard) = logs::capture();
    let basic = OAuthServer::start(OAuthBehaviour::default()).await;
    basic.set_reply(Some(TokenReply::echo(401)));
    let post_form = OAuthServer::start(OAuthBehaviour::default()).await;
    post_form.set_reply(Some(TokenReply::echo(500)));
    let post_json = OAuthServer::start(OAuthBehaviour::default()).await;
    post_json.set_reply(Some(TokenReply::echo(401)));
    let auth = InbentaServer::start(InbentaBehaviour::default()).await;
    auth.set_reply(None, Some(TokenReply::echo(500)));
    // This one issues a short token, then echoes on /refreshToken and /auth.
    let refresh = InbentaServer::start(InbentaBehaviour {
        api_key: ODD_API_KEY.into(),
        secret: ODD_INBENTA_SECRET.into(),
        auth_lifetime: Lifetime::ExpiresIn(4),
        ..InbentaBehaviour::default()
    })
    .await;
    let upstream = Upstream::start(UpstreamOpts::plain()).await;

    let oauth = |name: &str, server: &OAuthServer, auth: &str, body: &str| {
        oauth2(name, &server.url())
            .line(r#"client_secret = { env = "ODD_SECRET" }"#)
            .line(&format!(r#"client_auth = "{auth}""#))
            .line(&format!(r#"body = "{body}""#))
    };
    let odd_inbenta = |name: &str, server: &InbentaServer| {
        inbenta(name, &server.url())
            .line(r#"api_key = { env = "ODD_API_KEY" }"#)
            .line(r#"secret = { env = "ODD_INBENTA_SECRET" }"#)
    };
    let names = ["basic", "post_form", "post_json", "inbenta", "refresh"];
    let mut config = TestConfig::new()
        .admin()
        .with(oauth("basic", &basic, "basic", "form"))
        .with(oauth("post_form", &post_form, "post", "form"))
        .with(oauth("post_json", &post_json, "post", "json"))
        .with(odd_inbenta("inbenta", &auth))
        .with(odd_inbenta("refresh", &refresh));
    for name in names {
        config =
            config.with(route(&upstream.url(), name).line(&format!(r#"path_prefix = "/{name}""#)));
    }
    let proxy = config
        .env("CLIENT_ID", CLIENT_ID)
        .env("ODD_SECRET", ODD_SECRET)
        .env("ODD_API_KEY", ODD_API_KEY)
        .env("ODD_INBENTA_SECRET", ODD_INBENTA_SECRET)
        .start()
        .await;

    // The short token is renewed through /refreshToken (echoed), then /auth
    // (echoed) until it expires.
    let refresh_handle = proxy.handle.credentials().get("refresh").unwrap().clone();
    refresh_handle
        .wait_for_newer(0, Duration::from_secs(10))
        .await
        .expect("first token");
    refresh.set_reply(None, Some(TokenReply::echo(401)));
    refresh.set_reply(Some(InbentaEndpoint::Refresh), Some(TokenReply::echo(500)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while refresh_handle.current().is_ok() {
        assert!(Instant::now() < deadline, "the short token never expired");
        sleep(Duration::from_millis(50)).await;
    }
    assert!(refresh.refresh_calls() >= 1);

    let mut seen = String::new();
    for name in names {
        let response = proxy.get(&format!("/{name}/v1/things")).await;
        assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE, "{name}");
        let body = response.json();
        assert_eq!(body["error"], "credential_unavailable");
        let message = body["message"].as_str().unwrap().to_owned();
        assert!(message.contains(name), "{message}");
        assert!(
            message.contains("401") || message.contains("500"),
            "{name}: {message}"
        );
        assert_no_secret(&message, &format!("the 503 body of {name}"));
        seen += &message;
    }
    let readyz = proxy.admin_get("/readyz").await;
    assert_eq!(readyz.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(readyz.json()["credentials"].as_array().unwrap().len(), 5);
    assert_no_secret(&readyz.text(), "/readyz");

    let text = logs.text();
    assert!(
        !logs.lines_with(&["token request failed"]).is_empty(),
        "no failure was logged:\n{text}"
    );
    assert!(
        !logs.lines_with(&["refresh failed"]).is_empty(),
        "the refresh failure was not logged:\n{text}"
    );
    assert_no_secret(&text, "the log");
    // The echo was there to leak: what is left of it says what was cut.
    assert!(seen.contains("<redacted>"), "{seen}");
}

// ---- rejections a new token does not cure ------------------------------------

/// An admin listener, `credential` (named `name`) and one route with it to
/// `upstream`.
fn proxy_config(name: &str, credential: Table, upstream: &Upstream) -> TestConfig {
    base()
        .admin()
        .with(credential)
        .with(route(&upstream.url(), name))
}

/// `requests` GETs (or streamed POSTs of 70 KiB, just over what is kept
/// for a retry), `concurrency` at a time; the statuses the app got.
async fn traffic(
    proxy: &TestProxy,
    requests: usize,
    concurrency: usize,
    streamed: bool,
) -> Vec<StatusCode> {
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let client = proxy.client.clone();
        let base = proxy.route_url(0);
        let count = requests / concurrency + usize::from(worker < requests % concurrency);
        workers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..count {
                let url = format!("{base}/v1/items/{worker}/{i}");
                let response = if streamed {
                    client.post_streaming(&url, 70 * 1024, false).await
                } else {
                    client.get(&url).await
                };
                statuses.push(response.status);
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for worker in workers {
        statuses.extend(worker.await.unwrap());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_forbidding_everything_costs_at_most_two_token_requests() {
    let auth = InbentaServer::start(InbentaBehaviour {
        auth_lifetime: Lifetime::Both(3600),
        ..InbentaBehaviour::default()
    })
    .await;
    let upstream = Upstream::start(UpstreamOpts::plain().always(Reply::status(403))).await;
    let proxy = proxy_config("inbenta", inbenta("inbenta", &auth.url()), &upstream)
        .start()
        .await;

    let statuses = traffic(&proxy, 1000, 50, false).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::FORBIDDEN));
    assert!(
        auth.calls() <= 2,
        "{} token requests for 1000 forbidden requests",
        auth.calls()
    );
    let ignored = proxy
        .metric("sidekey_token_rejections_total{credential=\"inbenta\",action=\"ignored\"}")
        .await;
    assert!(ignored >= 900.0, "ignored rejections: {ignored}");
    // At most one retry per request, usually none.
    assert!(upstream.request_count() <= 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_rejecting_every_oauth_token_costs_at_most_two_token_requests() {
    let token = OAuthServer::start(OAuthBehaviour::default()).await;
    let upstream = Upstream::start(UpstreamOpts::plain().always(Reply::status(401))).await;
    let proxy = proxy_config("api", oauth2("api", &token.url()), &upstream)
        .start()
        .await;
    let statuses = traffic(&proxy, 500, 50, false).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED));
    assert!(token.calls() <= 2, "{} token requests", token.calls());
    // Streamed requests report rejections too, and cause no storm either.
    let statuses = traffic(&proxy, 50, 10, true).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED));
    assert!(token.calls() <= 2, "{} token requests", token.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_requests_rejected_everywhere_cause_no_storm() {
    let auth = InbentaServer::start(InbentaBehaviour::default()).await;
    let upstream = Upstream::start(UpstreamOpts::plain().always(Reply::status(403))).await;
    let proxy = proxy_config("inbenta", inbenta("inbenta", &auth.url()), &upstream)
        .start()
        .await;
    let statuses = traffic(&proxy, 100, 20, true).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::FORBIDDEN));
    assert!(auth.calls() <= 2, "{} token requests", auth.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_costs_one_renewal_and_the_request_succeeds() {
    let token = OAuthServer::start(OAuthBehaviour::default()).await;
    let upstream = Upstream::start(UpstreamOpts::plain().respond(|request| {
        if request.header("authorization") == Some("Bearer oauth-token-1") {
            Reply::status(401)
        } else {
            Reply::echo()
        }
    }))
    .await;
    let proxy = proxy_config("api", oauth2("api", &token.url()), &upstream)
        .start()
        .await;
    let statuses = traffic(&proxy, 200, 20, false).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(token.calls(), 2, "one renewal for the revoked token");
    let renewed = proxy
        .metric("sidekey_token_rejections_total{credential=\"api\",action=\"renewed\"}")
        .await;
    assert!(renewed >= 1.0, "renewed rejections: {renewed}");
}

#[tokio::test]
async fn a_rejected_static_token_is_answered_at_once() {
    let upstream = Upstream::start(UpstreamOpts::plain().always(Reply::status(401))).await;
    let proxy = proxy_config("legacy", static_token("legacy", "CLIENT_SECRET"), &upstream)
        .start()
        .await;
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let response = proxy.get("/v1/legacy").await;
        assert_eq!(response.status, StatusCode::UNAUTHORIZED);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the 401 was held for {:?}",
            started.elapsed()
        );
    }
    // Not idempotent, small body: nothing to keep it for.
    let response = proxy
        .client
        .post(&format!("{}/v1/legacy", proxy.route_url(0)), "{}")
        .await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    // Nothing new to retry with: each request reached the upstream once.
    assert_eq!(upstream.request_count(), 4);
    // Still reported: counted, and the token source read again.
    let renewed = proxy
        .metric("sidekey_token_rejections_total{credential=\"legacy\",action=\"renewed\"}")
        .await;
    assert!(renewed >= 1.0, "renewed rejections: {renewed}");
}

// ---- Inbenta: the /auth fallback after a hanging /refreshToken ----------------

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn inbenta_auth_fallback_gets_its_own_timeout() {
    let (logs, _guard) = logs::capture();
    let auth = InbentaServer::start(InbentaBehaviour {
        auth_lifetime: Lifetime::ExpiresIn(100),
        ..InbentaBehaviour::default()
    })
    .await;
    let (credentials, metrics) = engines(inbenta("api", &auth.url()).line(r#"timeout = "10s""#));
    let handle = api(&credentials);
    let first = handle
        .wait_for_newer(0, Duration::from_secs(10))
        .await
        .expect("first token");
    // /refreshToken hangs past the timeout; /auth answers, slowly but in time.
    auth.set_reply(Some(InbentaEndpoint::Refresh), Some(TokenReply::hang()));
    auth.push_reply(
        Some(InbentaEndpoint::Auth),
        TokenReply::json(
            200,
            json!({"accessToken": "slow-auth-token", "expires_in": 100}),
        )
        .delay(Duration::from_secs(8)),
    );
    let renewed = handle
        .wait_for_newer(first.generation, Duration::from_secs(300))
        .await
        .expect("renewed");
    let text = metrics.encode();
    assert!(
        !text.contains("outcome=\"failure\""),
        "the renewal failed first: {}\n{text}",
        logs.lines_with(&["token request failed"]).join("\n")
    );
    assert!(
        Instant::now() < first.expires_at.unwrap(),
        "renewed only after the old token expired"
    );
    let bearer = renewed.headers[0].1.to_str().unwrap();
    assert_eq!(bearer, "Bearer slow-auth-token");
}

// ---- short tokens against a flaky token endpoint -----------------------------

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn short_tokens_from_a_flaky_endpoint_never_fail_a_request() {
    const LIFETIME: Duration = Duration::from_secs(3);
    let token = OAuthServer::start(OAuthBehaviour {
        expires_in: Some(json!(LIFETIME.as_secs())),
        ..OAuthBehaviour::default()
    })
    .await;
    // 20 % of token requests fail: 500s, hangs past the 1 s timeout,
    // garbage. The first faults come early, within the ~6 requests of this
    // test: a 500 (retried while the token serves), a hang (the token
    // expires meanwhile; requests wait for the next attempt), garbage.
    let fault = |i: usize| match i {
        1 => Some(TokenReply::text(500, "internal error")),
        3 => Some(TokenReply::hang()),
        5 => Some(TokenReply::text(200, "<html>garbage</html>")),
        12 => Some(TokenReply::text(502, "bad gateway")),
        18 => Some(TokenReply::hang()),
        _ => None,
    };
    token.set_fault_plan((0..25).map(fault).collect());
    let valid = token.validator(LIFETIME);
    let expired_upstream = Arc::new(AtomicUsize::new(0));
    let upstream = Upstream::start(UpstreamOpts::plain().respond({
        let expired_upstream = expired_upstream.clone();
        move |request| {
            if valid(request.header("authorization")) {
                Reply::echo()
            } else {
                expired_upstream.fetch_add(1, Ordering::SeqCst);
                Reply::status(401)
            }
        }
    }))
    .await;
    let proxy = proxy_config(
        "api",
        oauth2("api", &token.url()).line(r#"timeout = "1s""#),
        &upstream,
    )
    .start()
    .await;

    let deadline = Instant::now() + Duration::from_secs(8);
    let mut workers = Vec::new();
    for worker in 0..4 {
        let client = proxy.client.clone();
        let url = format!("{}/v1/work/{worker}", proxy.route_url(0));
        workers.push(tokio::spawn(async move {
            let mut failed = Vec::new();
            while Instant::now() < deadline {
                let response = client.get(&url).await;
                if response.status != StatusCode::OK {
                    failed.push(format!("{} {}", response.status, response.text()));
                }
                sleep(Duration::from_millis(20)).await;
            }
            failed
        }));
    }
    let mut failed = Vec::new();
    for worker in workers {
        failed.extend(worker.await.unwrap());
    }
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert_eq!(
        expired_upstream.load(Ordering::SeqCst),
        0,
        "expired tokens reached the upstream"
    );
    // At least the 500 and the hang were served.
    assert!(token.calls() >= 5, "only {} token requests", token.calls());
}

// ---- every fault a token endpoint can produce ----------------------------------

/// What a failing token endpoint does, and what the engine should make of it.
struct Fault {
    name: &'static str,
    reply: TokenReply,
    /// Part of the reason `/readyz` and the 503 give.
    reason: &'static str,
    /// Bounds of the first two delays between attempts, in seconds.
    gaps: [(f64, f64); 2],
}

fn faults() -> Vec<Fault> {
    let floor = (1.0, 1.25);
    vec![
        Fault {
            name: "500",
            reply: TokenReply::text(500, "boom"),
            reason: "answered 500 Internal Server Error: boom",
            gaps: [floor, floor],
        },
        Fault {
            name: "429 without Retry-After",
            reply: TokenReply::text(429, "slow down"),
            reason: "answered 429 Too Many Requests",
            gaps: [floor, floor],
        },
        Fault {
            name: "429 Retry-After seconds",
            reply: TokenReply::text(429, "slow down").retry_after("7"),
            reason: "429",
            gaps: [(7.0, 7.0), (7.0, 7.0)],
        },
        Fault {
            name: "429 Retry-After date in the past",
            reply: TokenReply::text(429, "slow down").retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            reason: "429",
            gaps: [floor, floor],
        },
        Fault {
            name: "503 Retry-After huge",
            reply: TokenReply::text(503, "maintenance").retry_after("99999999999"),
            reason: "503",
            gaps: [(300.0, 300.0), (300.0, 300.0)],
        },
        Fault {
            name: "garbage body",
            reply: TokenReply::text(200, "<html>not a token</html>"),
            reason: "not JSON",
            gaps: [floor, floor],
        },
        Fault {
            name: "missing access_token",
            reply: TokenReply::json(200, json!({"token_type": "Bearer", "expires_in": 60})),
            reason: "no access_token",
            gaps: [floor, floor],
        },
        Fault {
            name: "expires_in 0",
            reply: TokenReply::json(200, json!({"access_token": "z", "expires_in": 0})),
            reason: "expires_in",
            gaps: [floor, floor],
        },
        Fault {
            name: "expires_in negative",
            reply: TokenReply::json(200, json!({"access_token": "n", "expires_in": -60})),
            reason: "expires_in",
            gaps: [floor, floor],
        },
        Fault {
            name: "expires_in not a number",
            reply: TokenReply::json(200, json!({"access_token": "s", "expires_in": "soon"})),
            reason: "expires_in",
            gaps: [floor, floor],
        },
        Fault {
            name: "hang past the timeout",
            reply: TokenReply::hang(),
            reason: "timed out",
            // The 2 s timeout, then the retry delay.
            gaps: [(3.0, 3.25), (3.0, 3.25)],
        },
        Fault {
            name: "401 invalid_client",
            reply: TokenReply::oauth_error(401, "invalid_client", "Client authentication failed"),
            reason: "refused the credentials (401 Unauthorized): invalid_client",
            // Refused credentials do not fix themselves: exponential backoff.
            gaps: [(0.8, 1.2), (1.6, 2.4)],
        },
    ]
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn every_token_endpoint_fault_is_classified_backed_off_reported_and_recovered() {
    let (logs, _guard) = logs::capture();
    for fault in faults() {
        let server = OAuthServer::start(OAuthBehaviour::default()).await;
        server.set_reply(Some(fault.reply.clone()));
        let (credentials, metrics) =
            engines(oauth2("api", &server.url()).line(r#"timeout = "2s""#));
        let handle = api(&credentials);
        let started = Instant::now();
        // Three attempts: measure the delays between them.
        let longest = fault.gaps.iter().map(|g| g.1).fold(0.0, f64::max);
        sleep(Duration::from_secs_f64(longest * 2.0 + 0.5)).await;
        let arrivals: Vec<Instant> = server.requests().iter().map(|r| r.at).collect();
        assert!(
            arrivals.len() >= 3,
            "{}: {} attempts",
            fault.name,
            arrivals.len()
        );
        assert_eq!(
            arrivals[0], started,
            "{}: first attempt at once",
            fault.name
        );
        for (gap, (low, high)) in gaps(&arrivals).iter().zip(fault.gaps) {
            assert_between(*gap, low, high, fault.name);
        }
        let why = reason(&handle);
        assert!(why.contains(fault.reason), "{}: {why}", fault.name);
        assert!(
            !why.contains('\n') && why.len() < 400,
            "{}: {why}",
            fault.name
        );
        assert!(!why.contains(CLIENT_SECRET), "{}: {why}", fault.name);
        assert!(
            metrics
                .encode()
                .contains("sidekey_token_refresh_total{credential=\"api\",outcome=\"failure\","),
            "{}",
            fault.name
        );

        // The endpoint recovers: the next attempt gets a token.
        server.set_reply(None);
        let attempts = server.calls();
        let recovered = handle
            .wait_for_newer(0, Duration::from_secs(400))
            .await
            .unwrap_or_else(|e| panic!("{}: never recovered: {e}", fault.name));
        assert_eq!(recovered.generation, 1, "{}", fault.name);
        assert!(
            server.calls() <= attempts + 2,
            "{}: {} attempts to recover",
            fault.name,
            server.calls() - attempts
        );
    }
    let text = logs.text();
    assert!(!text.contains(CLIENT_SECRET), "{text}");
    let warnings = logs.lines_with(&["token request failed"]);
    assert!(warnings.len() >= faults().len(), "{text}");
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn refused_connections_are_retried_each_second_until_the_endpoint_listens() {
    let addr = closed_port();
    let url = format!("http://{addr}/oauth/token");
    let (credentials, _metrics) = engines(oauth2("api", &url));
    let handle = api(&credentials);
    sleep(Duration::from_secs(10)).await;
    let why = reason(&handle);
    assert!(why.contains(&addr.to_string()), "{why}");
    let listener = TcpListener::bind(addr)
        .await
        .expect("rebind the closed port");
    let server = OAuthServer::start_on(listener, OAuthBehaviour::default()).await;
    let up = Instant::now();
    handle
        .wait_for_newer(0, Duration::from_secs(60))
        .await
        .expect("recovers once the endpoint listens");
    assert!(
        up.elapsed() <= Duration::from_millis(1250),
        "{:?}",
        up.elapsed()
    );
    assert_eq!(server.calls(), 1);
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn an_untrusted_token_endpoint_certificate_is_a_tls_failure() {
    let pki = TestPki::new();
    let server = OAuthServer::start_tls(OAuthBehaviour::default(), &pki).await;
    // The engines trust no root at all.
    let (credentials, _metrics) = engines(oauth2("api", &server.url()));
    let handle = api(&credentials);
    sleep(Duration::from_secs(5)).await;
    let why = reason(&handle);
    assert!(
        why.contains("certificate") || why.contains("UnknownIssuer"),
        "{why}"
    );
    assert!(
        why.contains("[tls] ca_file"),
        "the reason says what to do: {why}"
    );
    assert!(!why.contains('\n'), "{why}");
    assert_eq!(
        server.calls(),
        0,
        "nothing was sent to an untrusted endpoint"
    );
}

/// A machine whose clock is years off (before NTP set it) finds every
/// certificate not yet valid or expired: the reason says to check the clock.
#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_certificate_outside_its_validity_asks_whether_the_clock_is_right() {
    // Valid only in years this clock is before, then after.
    for (from, until, what) in [(2090, 2091, "not valid yet"), (2001, 2002, "expired")] {
        let pki = TestPki::with_server_valid(from, until);
        let server = OAuthServer::start_tls(OAuthBehaviour::default(), &pki).await;
        let config = base().with(oauth2("api", &server.url())).parse();
        let credentials =
            Credentials::start(&config, &pki.root_store(), &Metrics::new()).expect("credentials");
        let handle = api(&credentials);
        sleep(Duration::from_secs(5)).await;
        let why = reason(&handle);
        assert!(why.contains(what), "{why}");
        assert!(
            why.contains("system clock"),
            "the reason says the clock may be wrong: {why}"
        );
        assert_eq!(server.calls(), 0);
    }
}

/// A token endpoint that answers a status and then breaks off its body: the
/// status is the most useful thing it said, so the reason keeps it.
#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_status_is_reported_even_when_the_body_breaks_off() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/token", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head).await;
            let _ = stream
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 100\r\n\r\nshort")
                .await;
            // Dropped here: the body ends 95 bytes early.
        }
    });
    let (credentials, _metrics) = engines(oauth2("api", &url));
    let handle = api(&credentials);
    sleep(Duration::from_secs(5)).await;
    let why = reason(&handle);
    assert!(
        why.contains("(status 503 Service Unavailable)"),
        "the status is kept: {why}"
    );
    assert!(why.contains("reading the answer"), "{why}");
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn inbenta_answer_without_access_token_is_transient_and_recovers() {
    let auth = InbentaServer::start(InbentaBehaviour::default()).await;
    auth.set_reply(
        Some(InbentaEndpoint::Auth),
        Some(TokenReply::json(200, json!({"expires_in": 60}))),
    );
    let (credentials, _metrics) = engines(inbenta("api", &auth.url()));
    let handle = api(&credentials);
    sleep(Duration::from_secs(3)).await;
    let why = reason(&handle);
    assert!(why.contains("no accessToken"), "{why}");
    let arrivals: Vec<Instant> = auth.requests().iter().map(|r| r.at).collect();
    for gap in gaps(&arrivals) {
        assert_between(gap, 1.0, 1.25, "retry");
    }
    auth.set_reply(Some(InbentaEndpoint::Auth), None);
    handle
        .wait_for_newer(0, Duration::from_secs(5))
        .await
        .expect("recovers");
}
