//! A real gRPC client and a real gRPC server (Python `grpcio`, see
//! `support::grpc`) with sidekey in between: the client speaks h2c to
//! sidekey, sidekey speaks HTTP/2 over TLS to the server and puts its
//! OAuth 2.0 token in the `authorization` metadata. Every kind of call
//! goes through (unary, both streaming directions, bidirectional with each
//! message answered before the next is sent), a non-zero `grpc-status`
//! reaches the client as such, and an upstream that cannot speak HTTP/2
//! fails the call at once with a status that says so.
//!
//! These run child processes, so they run in real time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::config::{TestConfig, oauth2, route};
use crate::support::grpc::{GrpcServer, run_client};
use crate::support::tls::TestPki;
use crate::support::token_servers::{OAuthBehaviour, OAuthServer};
use crate::support::upstream::{Upstream, UpstreamOpts};

/// One OAuth 2.0 credential against `tokens` and one route to `upstream`.
fn config(pki: &TestPki, tokens: &OAuthServer, upstream: &str) -> TestConfig {
    let client = OAuthBehaviour::default();
    TestConfig::new()
        .trusting(pki)
        .with(oauth2("grpc", &tokens.url()))
        .with(route(upstream, "grpc"))
        .env("CLIENT_ID", &client.client_id)
        .env("CLIENT_SECRET", &client.client_secret)
}

/// The `authorization` values the server saw, from one of its answers.
fn seen_authorization(answer: &Value) -> &Value {
    &answer["authorization"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_of_every_kind_reach_a_grpc_server_with_the_oauth2_token() {
    let pki = Arc::new(TestPki::new());
    let server = GrpcServer::start(&pki).await;
    let tokens = OAuthServer::start(OAuthBehaviour::default()).await;
    let proxy = config(&pki, &tokens, &server.url()).start().await;
    proxy.wait_for_tokens().await;
    let token = tokens.last_token().expect("a token");
    let expected = json!([format!("Bearer {token}")]);

    let results = run_client(proxy.route_addr(0)).await;

    let unary = &results["unary"]["ok"];
    assert_eq!(unary["echo"], "hello", "{results:#}");
    assert_eq!(
        seen_authorization(unary),
        &expected,
        "the server saw sidekey's token, not the app's own"
    );

    let chat = &results["chat"]["ok"];
    let answers = chat["answers"].as_array().expect("chat answers");
    let echoes: Vec<&Value> = answers.iter().map(|a| &a["echo"]).collect();
    assert_eq!(
        echoes,
        [&json!("ping-0"), &json!("ping-1"), &json!("ping-2")],
        "{results:#}"
    );
    assert!(answers.iter().all(|a| seen_authorization(a) == &expected));
    assert_eq!(chat["after_end"], json!([]), "the stream ended cleanly");

    let collect = &results["collect"]["ok"];
    assert_eq!(collect["count"], 3, "{results:#}");
    assert_eq!(collect["joined"], "a,b,c");
    assert_eq!(seen_authorization(collect), &expected);

    let count = results["count"]["ok"].as_array().expect("count answers");
    let numbers: Vec<&Value> = count.iter().map(|a| &a["n"]).collect();
    assert_eq!(numbers, [&json!(0), &json!(1), &json!(2)], "{results:#}");

    assert_eq!(
        results["refuse"]["status"],
        json!({"code": "PERMISSION_DENIED", "details": "not for you"}),
        "the server's grpc-status and grpc-message reach the client"
    );
    assert_eq!(tokens.calls(), 1, "one token for every call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_to_an_upstream_without_http2_fails_at_once_and_says_why() {
    let pki = Arc::new(TestPki::new());
    // HTTPS, ALPN offers only http/1.1.
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let tokens = OAuthServer::start(OAuthBehaviour::default()).await;
    let proxy = config(&pki, &tokens, &upstream.url()).start().await;
    proxy.wait_for_tokens().await;

    let started = Instant::now();
    let results = run_client(proxy.route_addr(0)).await;
    for call in ["unary", "chat", "collect", "count", "refuse"] {
        let status = &results[call]["status"];
        assert_eq!(status["code"], "UNAVAILABLE", "{call}: {results:#}");
        let details = status["details"].as_str().unwrap_or_default();
        assert!(
            details.contains("HTTP/2"),
            "{call}: the status says why: {details}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "failed at once, not after the client's 10 s deadline: {:?}",
        started.elapsed()
    );
    assert_eq!(
        upstream.request_count(),
        0,
        "nothing was sent that the upstream could not answer"
    );
}
