//! TLS files that rotate by themselves, without a signal: a listener's
//! certificate, `[tls] ca_file` and an upstream client certificate are read
//! again when their files change (a Kubernetes Secret volume's `..data`
//! symlink swapped), new connections use the new ones, and a change into
//! something unusable keeps the old ones serving. On the paused clock: the
//! files are polled every second.
//!
//! Every test here captures the log from its first line: the lines about a
//! changed file come from one tracing callsite, which a test running
//! without a subscriber at the time could otherwise register as never
//! wanted.

use std::sync::Arc;
use std::time::Duration;

use crate::support::config::{TestConfig, oauth2, route, static_token, toml_path};
use crate::support::logs;
use crate::support::proxy::TestClient;
use crate::support::tls::{TestPki, presented_certificate};
use crate::support::token_servers::{OAuthBehaviour, OAuthServer};
use crate::support::upstream::{Upstream, UpstreamOpts};
use crate::support::volume::SecretVolume;

/// Poll `check` every 100 ms (paused clock) until it holds, for at most 10 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 10 s");
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_listener_certificate_swapped_in_its_volume_is_presented_to_new_connections() {
    let (logs, _guard) = logs::capture();
    let (first, second) = (Arc::new(TestPki::new()), Arc::new(TestPki::new()));
    let upstream = Upstream::start(UpstreamOpts::tls(&first)).await;
    let (cert, key) = first.server_pem();
    let mut volume = SecretVolume::new(&[("tls.crt", &cert), ("tls.key", &key)]);
    let proxy = TestConfig::new()
        .trusting(&first)
        .with(static_token("api", "TOKEN"))
        .with(route(&upstream.url(), "api").line(&format!(
            "tls = {{ cert = {}, key = {} }}",
            toml_path(&volume.path("tls.crt")),
            toml_path(&volume.path("tls.key"))
        )))
        .env("TOKEN", "token-1")
        .start()
        .await;
    let addr = proxy.route_addr(0);
    let both = [first.as_ref(), second.as_ref()];
    assert_eq!(
        presented_certificate(addr, &both).await.unwrap(),
        *first.server_cert_der()
    );
    // A kept-alive connection made with the first certificate.
    let kept = TestClient::trusting(&first);
    let url = format!("https://localhost:{}/kept", addr.port());
    assert_eq!(kept.get(&url).await.status, 200);

    let (cert, key) = second.server_pem();
    volume.publish(&[("tls.crt", &cert), ("tls.key", &key)]);
    eventually("the new certificate is presented", async || {
        presented_certificate(addr, &both).await.unwrap() == *second.server_cert_der()
    })
    .await;
    assert_eq!(
        kept.get(&url).await.status,
        200,
        "the open connection keeps its certificate (this client trusts only the first)"
    );
    assert_eq!(
        logs.lines_with(&["listener certificate changed", "new connections"])
            .len(),
        1,
        "{}",
        logs.text()
    );

    // A certificate whose key does not match, then no PEM at all: logged,
    // and the certificate in force keeps serving.
    let (first_cert, _) = first.server_pem();
    volume.publish(&[("tls.crt", &first_cert), ("tls.key", &key)]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    volume.publish(&[("tls.crt", b"not a certificate"), ("tls.key", &key)]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        presented_certificate(addr, &both).await.unwrap(),
        *second.server_cert_der()
    );
    let refused = logs.lines_with(&["listener certificate changed but cannot be used"]);
    assert_eq!(
        refused.len(),
        2,
        "each bad change logged once: {}",
        logs.text()
    );
    assert!(refused[0].contains("WARN"), "{}", refused[0]);
    assert!(
        !logs.text().contains("PRIVATE KEY"),
        "no key material in the log"
    );
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_ca_file_swapped_in_its_volume_is_trusted_for_new_upstream_connections() {
    let (logs, _guard) = logs::capture();
    let (old_ca, new_ca) = (Arc::new(TestPki::new()), Arc::new(TestPki::new()));
    let upstream = Upstream::start(UpstreamOpts::tls(&new_ca)).await;
    let mut volume = SecretVolume::new(&[("ca.crt", &old_ca.ca_pem())]);
    let proxy = TestConfig::new()
        .line(
            "[tls]",
            &format!("ca_file = {}", toml_path(&volume.path("ca.crt"))),
        )
        .with(static_token("api", "TOKEN"))
        .with(route(&upstream.url(), "api"))
        .env("TOKEN", "token-1")
        .start()
        .await;
    let untrusted = proxy.get("/before").await;
    assert_eq!(untrusted.status, 502, "{}", untrusted.text());
    assert_eq!(upstream.request_count(), 0);

    volume.publish(&[("ca.crt", &new_ca.ca_pem())]);
    eventually("the upstream's new CA is trusted", async || {
        proxy.get("/after").await.status == 200
    })
    .await;
    assert_eq!(
        upstream.last_request().unwrap().header("authorization"),
        Some("Bearer token-1")
    );
    assert_eq!(
        logs.lines_with(&["CA file changed;"]).len(),
        1,
        "{}",
        logs.text()
    );
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn an_upstream_client_certificate_swapped_in_its_volume_is_presented() {
    let (_logs, _guard) = logs::capture();
    let (trusted, other) = (Arc::new(TestPki::new()), Arc::new(TestPki::new()));
    let upstream = Upstream::start(UpstreamOpts::tls(&trusted).require_client_cert()).await;
    let (cert, key) = other.client_pem();
    let mut volume = SecretVolume::new(&[("tls.crt", &cert), ("tls.key", &key)]);
    let proxy = TestConfig::new()
        .trusting(&trusted)
        .with(static_token("api", "TOKEN"))
        .with(route(&upstream.url(), "api").line(&format!(
            "upstream_tls = {{ client_cert = {}, client_key = {} }}",
            toml_path(&volume.path("tls.crt")),
            toml_path(&volume.path("tls.key"))
        )))
        .env("TOKEN", "token-1")
        .start()
        .await;
    assert_eq!(
        proxy.get("/before").await.status,
        502,
        "a certificate the upstream does not trust"
    );

    let (cert, key) = trusted.client_pem();
    volume.publish(&[("tls.crt", &cert), ("tls.key", &key)]);
    eventually("the new client certificate is accepted", async || {
        proxy.get("/after").await.status == 200
    })
    .await;
    assert!(upstream.last_request().unwrap().client_cert_presented);
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_ca_file_swapped_in_its_volume_is_trusted_by_token_requests() {
    let (logs, _guard) = logs::capture();
    let (old_ca, new_ca) = (Arc::new(TestPki::new()), Arc::new(TestPki::new()));
    let behaviour = OAuthBehaviour {
        client_id: "client".into(),
        client_secret: "s3cr3t".into(),
        ..OAuthBehaviour::default()
    };
    let token_server = OAuthServer::start_tls(behaviour, &new_ca).await;
    let upstream = Upstream::start(UpstreamOpts::tls(&new_ca)).await;
    let mut volume = SecretVolume::new(&[("ca.crt", &old_ca.ca_pem())]);
    let proxy = TestConfig::new()
        .line(
            "[tls]",
            &format!("ca_file = {}", toml_path(&volume.path("ca.crt"))),
        )
        .with(oauth2("api", &token_server.token_url().to_string()))
        .with(route(&upstream.url(), "api"))
        .env("CLIENT_ID", "client")
        .env("CLIENT_SECRET", "s3cr3t")
        .start()
        .await;
    let credential = proxy.handle.credentials().get("api").cloned().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        credential.current().is_err(),
        "the token endpoint is not trusted yet"
    );

    volume.publish(&[("ca.crt", &new_ca.ca_pem())]);
    // The engine's next retry (backing off) trusts the new CA.
    credential
        .wait_for_newer(0, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("no token after the CA changed: {e}\n{}", logs.text()));
    assert_eq!(proxy.get("/after").await.status, 200);
}
