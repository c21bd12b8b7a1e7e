//! `[cache]`: tokens kept across restarts in an encrypted file. Most tests
//! run two in-process proxies one after the other against one token
//! endpoint, and count the token requests the second one makes. (Sharing
//! between replicas on Redis is `fleet`'s.)

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tempfile::TempDir;

use crate::support::config::{TestConfig, inbenta, inbenta_route, oauth2, route, toml_path};
use crate::support::logs::capture;
use crate::support::tls::TestPki;
use crate::support::token_servers::{InbentaBehaviour, InbentaServer, OAuthBehaviour, OAuthServer};
use crate::support::upstream::{Upstream, UpstreamOpts};

/// Two 32-byte keys, base64.
const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY_B: &str = "HxgdHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";

/// A fresh directory for one test's cache file, removed when dropped.
fn cache_dir() -> TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// One OAuth credential and one route, with `[cache] file` at `file` and
/// the key read from `CACHE_KEY` (set to `key`).
fn config(token: &OAuthServer, upstream: &Upstream, file: &Path, key: &str) -> TestConfig {
    TestConfig::new()
        .with(oauth2("api", &token.url()))
        .with(route(&upstream.url(), "api"))
        .line(
            "[cache]",
            &format!(
                "file = {}\nencryption_key = {{ env = \"CACHE_KEY\" }}",
                toml_path(file)
            ),
        )
        .env("CLIENT_ID", "test-client")
        .env("CLIENT_SECRET", "test-client-secret")
        .env("CACHE_KEY", key)
}

/// Start a proxy with `config`, send one request, check it carried `bearer`
/// (when given), and shut the proxy down.
async fn run_once(config: &TestConfig, bearer: Option<&str>, upstream: &Upstream) {
    let proxy = config.start().await;
    let response = proxy.get("/v1/things").await;
    assert_eq!(response.status, 200, "{}", response.text());
    if let Some(bearer) = bearer {
        let last = upstream.requests().pop().expect("a request upstream");
        assert_eq!(
            last.header("authorization"),
            Some(format!("Bearer {bearer}").as_str())
        );
    }
    proxy.handle.shutdown().await;
}

#[tokio::test]
async fn a_restart_with_the_cache_file_makes_no_token_request() {
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let token = OAuthServer::start(OAuthBehaviour::default()).await;
    let dir = cache_dir();
    let file = dir.path().join("tokens");
    let config = config(&token, &upstream, &file, KEY_A);

    run_once(&config, None, &upstream).await;
    assert_eq!(token.calls(), 1);
    let issued = token.last_token().expect("a token issued");
    let mode = std::fs::metadata(&file)
        .expect("cache file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "only the owner reads the cache file");
    let text = std::fs::read_to_string(&file).expect("cache file");
    assert!(
        !text.contains(&issued),
        "the token is stored encrypted:\n{text}"
    );
    assert!(
        !text.contains("test-client"),
        "the client id is only hashed:\n{text}"
    );

    run_once(&config, Some(&issued), &upstream).await;
    assert_eq!(
        token.calls(),
        1,
        "the restarted proxy used the cached token"
    );
}

#[tokio::test]
async fn a_cache_sealed_with_another_key_is_ignored_with_one_log_line() {
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let token = OAuthServer::start(OAuthBehaviour::default()).await;
    let dir = cache_dir();
    let file = dir.path().join("tokens");
    run_once(&config(&token, &upstream, &file, KEY_A), None, &upstream).await;

    let (logs, _guard) = capture();
    let rekeyed = config(&token, &upstream, &file, KEY_B);
    run_once(&rekeyed, None, &upstream).await;
    assert_eq!(
        token.calls(),
        2,
        "a fresh token instead of the undecryptable one"
    );
    let lines = logs.lines_with(&["cached token", "ignored", "another key"]);
    assert_eq!(lines.len(), 1, "one clear line:\n{}", logs.text());
    assert!(lines[0].contains("WARN"), "{}", lines[0]);
    assert!(!logs.text().contains(KEY_A) && !logs.text().contains(KEY_B));

    // The fresh token was stored with the new key: the next start uses it.
    let fresh = token.last_token().expect("a token issued");
    run_once(&rekeyed, Some(&fresh), &upstream).await;
    assert_eq!(token.calls(), 2);
}

#[tokio::test]
async fn a_corrupt_cache_file_is_ignored_and_replaced() {
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let token = OAuthServer::start(OAuthBehaviour::default()).await;
    let dir = cache_dir();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "{ not a cache").expect("write");
    let config = config(&token, &upstream, &file, KEY_A);

    run_once(&config, None, &upstream).await;
    run_once(&config, None, &upstream).await;
    assert_eq!(token.calls(), 1, "the file was replaced by a readable one");
}

#[tokio::test]
async fn a_cached_token_due_for_renewal_is_not_used() {
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    // One-second tokens are renewed half a second after they are requested.
    let token = OAuthServer::start(OAuthBehaviour {
        expires_in: Some(json!(1)),
        ..OAuthBehaviour::default()
    })
    .await;
    let dir = cache_dir();
    let file = dir.path().join("tokens");
    let config = config(&token, &upstream, &file, KEY_A);

    run_once(&config, None, &upstream).await;
    let first = token.calls();
    tokio::time::sleep(Duration::from_millis(600)).await;
    run_once(&config, None, &upstream).await;
    assert_eq!(
        token.calls(),
        first + 1,
        "the stored token was due: a new one was fetched"
    );
    let issued = token.issued_tokens();
    let last = upstream.requests().pop().expect("a request upstream");
    let bearer = format!("Bearer {}", issued.last().expect("issued"));
    assert_eq!(last.header("authorization"), Some(bearer.as_str()));
}

/// Four years: a clock that far off is not drift but a box started before
/// NTP set it (an RTC that lost its battery, a VM image's saved time).
const YEARS: Duration = Duration::from_secs(4 * 365 * 86_400);

#[tokio::test]
async fn a_token_stored_under_a_clock_years_ahead_is_not_taken_as_new_once_the_clock_is_right() {
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let token = OAuthServer::start(OAuthBehaviour {
        expires_in: Some(json!(3600)),
        ..OAuthBehaviour::default()
    })
    .await;
    let dir = cache_dir();
    let file = dir.path().join("tokens");
    let config = config(&token, &upstream, &file, KEY_A);

    // The first run's clock jumps four years ahead: its token looks over
    // and is renewed, and the renewal is stored as obtained in four years.
    let proxy = config.start().await;
    assert_eq!(proxy.get("/v1/things").await.status, 200);
    let credentials = proxy.handle.credentials();
    credentials.get("api").unwrap().wall_clock().skip(YEARS);
    assert_eq!(proxy.get("/v1/things").await.status, 200);
    proxy.handle.shutdown().await;
    assert_eq!(token.calls(), 2);

    // Restarted with the clock right, the stored token's age is unknown
    // (it may have ended hours ago): it is not used as if just obtained.
    let (logs, _guard) = capture();
    let proxy = config.start().await;
    let response = proxy.get("/v1/things").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(token.calls(), 3, "a new token was requested");
    let issued = token.issued_tokens();
    let last = upstream.requests().pop().expect("a request upstream");
    let bearer = format!("Bearer {}", issued.last().expect("issued"));
    assert_eq!(last.header("authorization"), Some(bearer.as_str()));
    let lines = logs.lines_with(&["cached token", "clock"]);
    assert_eq!(lines.len(), 1, "one line says why:\n{}", logs.text());
    proxy.handle.shutdown().await;
}

#[tokio::test]
async fn an_encryption_key_that_is_not_32_bytes_is_refused_before_start() {
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let token = OAuthServer::start(OAuthBehaviour::default()).await;
    let dir = cache_dir();
    let file = dir.path().join("tokens");
    let short = config(&token, &upstream, &file, "c2hvcnQ=");
    let error = short
        .checked()
        .expect_err("a 5-byte key is refused")
        .to_string();
    assert!(error.contains("cache.encryption_key"), "{error}");
    assert!(error.contains("5 bytes long; AES-256 needs 32"), "{error}");
    assert!(
        !error.contains("c2hvcnQ="),
        "the key is never shown: {error}"
    );
    let unset = config(&token, &upstream, &file, KEY_A).env("CACHE_KEY", "");
    let error = unset
        .checked()
        .expect_err("an empty key is refused")
        .to_string();
    assert!(error.contains("cache.encryption_key"), "{error}");
}

#[tokio::test]
async fn a_reload_that_changes_the_cache_restarts_engines_from_the_stored_token() {
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let token = OAuthServer::start(OAuthBehaviour::default()).await;
    let dir = cache_dir();
    let file = dir.path().join("tokens");
    let before = config(&token, &upstream, &file, KEY_A);
    let mut proxy = before.start().await;
    assert_eq!(proxy.get("/v1/things").await.status, 200);
    let issued = token.last_token().expect("a token issued");

    // A new key first (the stored token still opens with the old one).
    let rotated = before.env("CACHE_KEY", &format!("{KEY_B},{KEY_A}"));
    proxy
        .handle
        .reload(rotated.checked().expect("checked"), Duration::from_secs(5))
        .await
        .expect("reload");
    let started: Vec<String> = proxy
        .handle
        .credentials()
        .started()
        .map(str::to_owned)
        .collect();
    assert_eq!(started, ["api"], "a changed cache key restarts the engine");
    assert_eq!(proxy.get("/v1/things").await.status, 200);
    assert_eq!(
        token.calls(),
        1,
        "the restarted engine took the stored token"
    );
    let last = upstream.requests().pop().expect("a request upstream");
    assert_eq!(
        last.header("authorization"),
        Some(format!("Bearer {issued}").as_str())
    );
    proxy.handle.shutdown().await;
}

#[tokio::test]
async fn an_inbenta_token_restarts_with_its_apis_map_and_key() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let behaviour = InbentaBehaviour {
        apis: BTreeMap::from([(
            "chatbot".to_owned(),
            format!("{}/prod/chatbot", upstream.url()),
        )]),
        ..InbentaBehaviour::default()
    };
    let auth = InbentaServer::start_tls(behaviour, &pki).await;
    let dir = cache_dir();
    let config = TestConfig::new()
        .trusting(&pki)
        .with(inbenta("inbenta", &auth.url()))
        .with(inbenta_route("chatbot", "inbenta"))
        .line(
            "[cache]",
            &format!(
                "file = {}\nencryption_key = {{ env = \"CACHE_KEY\" }}",
                toml_path(&dir.path().join("tokens"))
            ),
        )
        .env("INBENTA_API_KEY", "test-api-key")
        .env("INBENTA_SECRET", "test-secret")
        .env("CACHE_KEY", KEY_A);
    for _ in 0..2 {
        let proxy = config.start().await;
        let response = proxy.get("/v1/conversation").await;
        assert_eq!(response.status, 200, "{}", response.text());
        proxy.handle.shutdown().await;
    }
    assert_eq!(auth.calls(), 1, "the restart used the stored token");
    let seen = upstream.last_request().expect("a request upstream");
    assert_eq!(
        seen.path, "/prod/chatbot/v1/conversation",
        "the apis map survived"
    );
    let token = auth.last_token().expect("a token");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    assert_eq!(seen.header("x-inbenta-key"), Some("test-api-key"));
}

#[test]
fn a_cache_file_that_is_the_configuration_or_a_secret_is_refused_before_it_is_overwritten() {
    let dir = cache_dir();
    let (config_path, secret) = (
        dir.path().join("sidekey.toml"),
        dir.path().join("client-secret.txt"),
    );
    std::fs::write(&secret, "client-secret\n").unwrap();
    // The configuration itself (through a symbolic link), or a secret file it
    // reads: replaced by the cache at the first token, the next start failed.
    let link = dir.path().join("link.toml");
    std::os::unix::fs::symlink(&config_path, &link).unwrap();
    for (target, named) in [
        (&link, "the configuration file"),
        (&secret, "client-secret.txt"),
    ] {
        let config = TestConfig::new()
            .with(oauth2("api", "http://127.0.0.1:9/token").line(&format!(
                "client_secret = {{ file = {} }}",
                toml_path(&secret)
            )))
            .with(route("http://127.0.0.1:9", "api"))
            .line(
                "[cache]",
                &format!("file = {}\nencryption_key = \"{KEY_A}\"", toml_path(target)),
            );
        std::fs::write(&config_path, config.text()).unwrap();
        let out = std::process::Command::new(crate::support::process::BIN)
            .args(["check", "--config"])
            .arg(&config_path)
            .env_clear()
            .env("CLIENT_ID", "id")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", target.display());
        let line = stderr
            .lines()
            .find(|line| line.contains("cache.file"))
            .unwrap_or_else(|| panic!("no error names cache.file: {stderr}"));
        assert!(line.contains(named), "{line}");
    }
}
