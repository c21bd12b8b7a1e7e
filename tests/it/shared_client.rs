//! Several credentials of one client at one token endpoint. Each is its own:
//! a refused one backs off alone and is reported under its own name, and
//! with a `[cache]`, credentials that would obtain different tokens (another
//! grant, resource or subject) never adopt each other's.
//!
//! Paused clock against real loopback token servers.

use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use tokio::time::sleep;

use sidekey::credential::{CredentialHandle, CredentialStatus, Credentials};
use sidekey::metrics::Metrics;

use crate::support::config::{Table, TestConfig, oauth2, toml_path};
use crate::support::metrics::sum;
use crate::support::token_servers::{ExchangeCheck, OAuthBehaviour, OAuthServer, jwt};

/// A 32-byte cache key, base64.
const CACHE_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// `tables` with the test server's client, started; the engines and their metrics.
fn start(tables: Vec<Table>, cache: Option<&std::path::Path>) -> (Credentials, Metrics) {
    let mut config = TestConfig::new()
        .env("CLIENT_ID", "test-client")
        .env("CLIENT_SECRET", "test-client-secret")
        .env("WRONG_SECRET", "not-the-secret")
        .env("CACHE_KEY", CACHE_KEY);
    for table in tables {
        config = config.with(table);
    }
    if let Some(file) = cache {
        config = config.line(
            "[cache]",
            &format!(
                "file = {}\nencryption_key = {{ env = \"CACHE_KEY\" }}",
                toml_path(file)
            ),
        );
    }
    let metrics = Metrics::new();
    let credentials = Credentials::start(&config.parse(), &RootCertStore::empty(), &metrics)
        .expect("credentials");
    (credentials, metrics)
}

fn handle(credentials: &Credentials, name: &str) -> Arc<CredentialHandle> {
    credentials.get(name).expect("credential").clone()
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_refused_credential_backs_off_alone_and_is_reported_under_its_own_name() {
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let wrong = oauth2("wrong", &server.url()).line(r#"client_secret = { env = "WRONG_SECRET" }"#);
    let (credentials, metrics) = start(vec![oauth2("right", &server.url()), wrong], None);
    let (right, wrong) = (handle(&credentials, "right"), handle(&credentials, "wrong"));
    right
        .wait_for_newer(0, Duration::from_secs(5))
        .await
        .expect("the right secret gets a token");
    // Attempts at 0, 1, 3, 7 and 15 s (jitter aside) for the refused one.
    sleep(Duration::from_secs(20)).await;
    assert!(matches!(right.status(), CredentialStatus::Ready { .. }));
    match wrong.status() {
        CredentialStatus::Unavailable { reason } => {
            assert!(reason.contains("refused"), "{reason}")
        }
        ready => panic!("the wrong secret got a token: {ready:?}"),
    }
    let (right_report, wrong_report) = (right.report(), wrong.report());
    assert_eq!(right_report.failures_total, 0, "{right_report:?}");
    assert_eq!(right_report.generation, 1, "{right_report:?}");
    assert!(
        (3..=7).contains(&wrong_report.failures_total),
        "backoff of its own: {wrong_report:?}"
    );
    assert_eq!(server.issued_tokens().len(), 1);
    let text = metrics.encode();
    let refreshes = |name: &str, outcome: &str| {
        let labels = [("credential", name), ("outcome", outcome)];
        sum(&text, "sidekey_token_refresh_total", &labels)
    };
    assert_eq!(refreshes("right", "success"), 1.0, "{text}");
    assert_eq!(refreshes("right", "failure"), 0.0, "{text}");
    assert_eq!(refreshes("wrong", "success"), 0.0, "{text}");
    assert_eq!(
        refreshes("wrong", "failure"),
        wrong_report.failures_total as f64,
        "{text}"
    );
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_cached_token_is_never_adopted_by_a_credential_that_asks_for_another() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("tokens");
    let subject = |name: &str, value: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, value).expect("subject token");
        path
    };
    let service_account = |sub: &str| jwt(serde_json::json!({"iss": "k8s", "sub": sub}));
    let (a, b) = (service_account("sa-a"), service_account("sa-b"));
    let server = OAuthServer::start(OAuthBehaviour {
        exchange: Some(ExchangeCheck::of(&[&a, &b, "opaque-subject"])),
        ..OAuthBehaviour::default()
    })
    .await;
    let exchange = |path: &std::path::Path| {
        oauth2("api", &server.url()).line(&format!(
            "grant = \"token_exchange\"\nsubject_token = {{ file = {} }}",
            toml_path(path)
        ))
    };
    // One after the other, each with the cache the previous ones filled:
    // the same client at the same endpoint, asking for different tokens.
    let askers = [
        ("client credentials", oauth2("api", &server.url())),
        (
            "another resource",
            oauth2("api", &server.url()).line(r#"resource = "https://b.example""#),
        ),
        ("a token exchange", exchange(&subject("subject-a", &a))),
        ("another subject", exchange(&subject("subject-b", &b))),
        (
            "an opaque subject",
            exchange(&subject("opaque", "opaque-subject")),
        ),
    ];
    for (round, (what, table)) in askers.into_iter().enumerate() {
        let (credentials, _metrics) = start(vec![table], Some(&cache));
        let api = handle(&credentials, "api");
        let published = api
            .wait_for_newer(0, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            server.calls(),
            round + 1,
            "{what}: adopted a token obtained for another request"
        );
        let issued = server.last_token().expect("a token issued");
        assert_eq!(
            published.headers[0].1,
            format!("Bearer {issued}").as_str(),
            "{what}"
        );
    }
    // The same subject again, rotated to a new token of the same account:
    // that one is shared.
    std::fs::write(dir.path().join("subject-b2"), service_account("sa-b")).expect("rotated");
    let rotated = exchange(&dir.path().join("subject-b2"));
    let (credentials, _metrics) = start(vec![rotated], Some(&cache));
    handle(&credentials, "api")
        .wait_for_newer(0, Duration::from_secs(5))
        .await
        .expect("adopted");
    assert_eq!(server.calls(), 5, "the same account's token is shared");
}
