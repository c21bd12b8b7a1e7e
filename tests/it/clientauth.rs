//! OAuth 2.0 without a client secret (issue #12): `private_key_jwt`
//! assertions verified by the token server (signature, `aud`, `exp`, `jti`
//! never reused) for RS256, ES256 and EdDSA; a `client_assertion` file read
//! at every token request; RFC 8693 token exchange; RFC 8705 mutual TLS.
//! Each obtains a token the upstream sees and renews it; mistakes are
//! `check` errors naming the key, or a clear error and a retry at run time.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use serde_json::json;
use sidekey::credential::obtain_once;

use crate::support::config::{Table, TestConfig, oauth2, route, toml_path};
use crate::support::jose::TestKey;
use crate::support::tls::TestPki;
use crate::support::token_servers::{
    AssertionCheck, ExchangeCheck, OAuthBehaviour, OAuthServer, TokenReply, unix_now,
};
use crate::support::upstream::{Upstream, UpstreamOpts};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A token server that renews quickly (20 s tokens: renewed after 15 s of
/// the paused clock) and accepts what `configure` says.
async fn token_server(configure: impl FnOnce(&mut OAuthBehaviour)) -> OAuthServer {
    let mut behaviour = OAuthBehaviour {
        expires_in: Some(json!(20)),
        ..OAuthBehaviour::default()
    };
    configure(&mut behaviour);
    OAuthServer::start(behaviour).await
}

/// `[credentials.api]`, type oauth2 against `server`, without a client secret.
fn credential(server: &OAuthServer) -> Table {
    oauth2("api", &server.url()).without("client_secret")
}

fn config(credential: Table, upstream: &Upstream) -> TestConfig {
    TestConfig::new()
        .with(credential)
        .with(route(&upstream.url(), "api"))
        .env("CLIENT_ID", "test-client")
}

fn private_key_jwt(server: &OAuthServer, key_file: &Path) -> Table {
    credential(server).line(&format!(
        "client_auth = \"private_key_jwt\"\nprivate_key = {{ file = {} }}",
        toml_path(key_file)
    ))
}

/// Two tokens in a row, each with a fresh assertion the server verified;
/// the upstream saw the first.
async fn obtains_and_renews_with(key: TestKey) {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key.pem");
    key.write(&key_file);
    let server = token_server(|_| {}).await;
    let check = AssertionCheck::signed_by(vec![key.clone().with_kid("k1")], &server.url());
    server.update(|b| b.assertion = Some(check));
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let credential = private_key_jwt(&server, &key_file).line(r#"key_id = "k1""#);
    let proxy = config(credential, &upstream).start().await;

    let response = proxy.get("/first").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        upstream.last_request().unwrap().header("authorization"),
        Some("Bearer oauth-token-1")
    );
    let requests = server.wait_for_requests(2).await;
    assert_eq!(
        server.issued_tokens().len(),
        2,
        "the renewal was accepted too"
    );
    for request in &requests {
        let form = request.form();
        assert_eq!(form["grant_type"], "client_credentials");
        assert_eq!(form["client_id"], "test-client");
        assert_eq!(form["client_assertion_type"], JWT_BEARER);
        assert!(!form.contains_key("client_secret"));
        assert_eq!(request.header("authorization"), None);
    }
    assert_ne!(
        requests[0].form()["client_assertion"],
        requests[1].form()["client_assertion"]
    );
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn private_key_jwt_rs256_obtains_and_renews() {
    obtains_and_renews_with(TestKey::rsa()).await;
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn private_key_jwt_es256_obtains_and_renews() {
    obtains_and_renews_with(TestKey::p256()).await;
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn private_key_jwt_eddsa_obtains_and_renews() {
    obtains_and_renews_with(TestKey::ed25519()).await;
}

/// A box whose clock is years off (before NTP set it) signs assertions the
/// token endpoint refuses as expired or issued in the future; the
/// endpoint's `Date` says what its clock reads, and the next assertion is
/// dated by that: the credential recovers on its own.
#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn private_key_jwt_is_dated_by_the_endpoints_clock_when_this_one_is_years_off() {
    const FOUR_YEARS: i64 = 4 * 365 * 86_400;
    for clock_ahead in [FOUR_YEARS, -FOUR_YEARS] {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key.pem");
        let key = TestKey::p256();
        key.write(&key_file);
        let server = token_server(|_| {}).await;
        let mut check = AssertionCheck::signed_by(vec![key], &server.url());
        check.clock_ahead = clock_ahead;
        server.update(|b| b.assertion = Some(check));
        let upstream = Upstream::start(UpstreamOpts::plain()).await;
        let proxy = config(private_key_jwt(&server, &key_file), &upstream)
            .start()
            .await;
        // The first assertion is refused; the retry is dated right.
        server.wait_for_requests(2).await;
        let response = proxy.get("/first").await;
        assert_eq!(
            response.status,
            200,
            "endpoint {clock_ahead} s ahead: {}",
            response.text()
        );
        assert_eq!(server.issued_tokens().len(), 1);
        proxy.handle.shutdown().await;
    }
}

#[tokio::test]
async fn private_key_jwt_signs_with_the_chosen_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key.pem");
    let key = TestKey::rsa();
    key.write(&key_file);
    let server = token_server(|_| {}).await;
    // PS256 only, for the issuer as audience.
    let check = AssertionCheck::signed_by(vec![key.verified_as("PS256")], "https://issuer.example");
    server.update(|b| b.assertion = Some(check));
    let config = TestConfig::new()
        .with(
            private_key_jwt(&server, &key_file)
                .line("signing_alg = \"PS256\"\nassertion_audience = \"https://issuer.example\""),
        )
        .env("CLIENT_ID", "test-client")
        .parse();
    let (token, _) = obtain_once(&config, "api", &RootCertStore::empty())
        .await
        .unwrap();
    assert_eq!(token.value.expose(), "oauth-token-1");
}

#[tokio::test]
async fn private_key_jwt_reads_every_key_form_openssl_writes() {
    let rsa = TestKey::rsa();
    let forms = [
        (
            "SEC1 P-256",
            TestKey::openssl(
                &["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
                None,
            ),
        ),
        (
            "SEC1 P-384",
            TestKey::openssl(
                &["ecparam", "-name", "secp384r1", "-genkey", "-noout"],
                None,
            ),
        ),
        (
            "PKCS#8 v1 Ed25519",
            TestKey::openssl(&["genpkey", "-algorithm", "ed25519"], None),
        ),
        (
            "PKCS#1 RSA",
            TestKey::openssl(&["pkey", "-traditional"], Some(&rsa.pem)),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key.pem");
    for (form, key) in forms {
        key.write(&key_file);
        let server = token_server(|_| {}).await;
        let check = AssertionCheck::signed_by(vec![key.clone()], &server.url());
        server.update(|b| b.assertion = Some(check));
        let config = TestConfig::new()
            .with(private_key_jwt(&server, &key_file))
            .env("CLIENT_ID", "test-client")
            .parse();
        let obtained = obtain_once(&config, "api", &RootCertStore::empty()).await;
        assert!(obtained.is_ok(), "{form}: {:?}", obtained.err());
    }
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn private_key_jwt_rereads_a_rotated_key() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key.pem");
    let (old, new) = (TestKey::p256(), TestKey::ed25519());
    old.write(&key_file);
    let server = token_server(|_| {}).await;
    let check = AssertionCheck::signed_by(vec![old], &server.url());
    server.update(|b| b.assertion = Some(check));
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let proxy = config(private_key_jwt(&server, &key_file), &upstream)
        .start()
        .await;
    assert_eq!(proxy.get("/first").await.status, 200);

    // The key rotates (another kind, even); the server trusts only the new one.
    new.write(&key_file);
    let check = AssertionCheck::signed_by(vec![new], &server.url());
    server.update(|b| b.assertion = Some(check));
    server.wait_for_requests(2).await;
    assert_eq!(server.issued_tokens().len(), 2, "renewed with the new key");
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_key_the_server_does_not_know_is_refused_and_retried_without_leaking() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key.pem");
    TestKey::p256().write(&key_file);
    let server = token_server(|_| {}).await;
    let check = AssertionCheck::signed_by(vec![TestKey::p256()], &server.url());
    server.update(|b| b.assertion = Some(check));
    // A JSON body puts the assertion first, inside the echo's excerpt.
    let config = TestConfig::new()
        .with(private_key_jwt(&server, &key_file).line(r#"body = "json""#))
        .env("CLIENT_ID", "test-client")
        .parse();
    let error = obtain_once(&config, "api", &RootCertStore::empty())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("invalid_client"), "{error}");
    assert!(error.contains("no key verifies"), "{error}");

    // An answer echoing the request shows no piece of the assertion.
    server.push_reply(TokenReply::echo(400));
    let error = obtain_once(&config, "api", &RootCertStore::empty())
        .await
        .unwrap_err()
        .to_string();
    let sent = server.last_request().unwrap().json()["client_assertion"].clone();
    let sent = sent.as_str().unwrap();
    for part in sent.split('.') {
        assert!(!error.contains(part), "{error}");
    }
    assert!(error.contains("<redacted>"), "{error}");

    // The engine backs off and tries again; the proxy never panics.
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let before = server.calls();
    let proxy = config_with(&server, &key_file, &upstream).start().await;
    server.wait_for_requests(before + 3).await;
    let response = proxy.get("/x").await;
    assert_eq!(response.status, 503, "{}", response.text());
    assert!(
        response.text().contains("invalid_client"),
        "{}",
        response.text()
    );
}

fn config_with(server: &OAuthServer, key_file: &Path, upstream: &Upstream) -> TestConfig {
    config(private_key_jwt(server, key_file), upstream)
}

// ---------------------------------------------------------------------------
// client_assertion: someone else's JWT, read at every token request
// ---------------------------------------------------------------------------

/// A projected service-account token signed by the cluster's `key`.
fn service_account_token(key: &TestKey, n: u64, exp: u64) -> String {
    key.sign(&json!({
        "iss": "https://kubernetes.default.svc",
        "sub": "system:serviceaccount:shop:app",
        "aud": ["api://AzureADTokenExchange"],
        "exp": exp,
        "iat": unix_now(),
        "n": n,
    }))
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn client_assertion_file_is_read_at_every_token_request() {
    let cluster = TestKey::p256();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sidekey-token");
    let first = service_account_token(&cluster, 1, unix_now() + 3600);
    std::fs::write(&file, format!("{first}\n")).unwrap();
    let server = token_server(|b| {
        b.assertion = Some(AssertionCheck {
            keys: vec![cluster.clone()],
            audience: "api://AzureADTokenExchange".into(),
            subject: Some((
                "https://kubernetes.default.svc".into(),
                "system:serviceaccount:shop:app".into(),
            )),
            single_use: false,
            clock_ahead: 0,
        });
    })
    .await;
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let credential = credential(&server).line(&format!(
        "client_auth = \"client_assertion\"\nclient_assertion = {{ file = {} }}",
        toml_path(&file)
    ));
    let proxy = config(credential, &upstream).start().await;
    assert_eq!(proxy.get("/first").await.status, 200);

    // The kubelet rotates the token between two token requests.
    let second = service_account_token(&cluster, 2, unix_now() + 3600);
    std::fs::write(&file, &second).unwrap();
    let requests = server.wait_for_requests(2).await;
    assert_eq!(requests[0].form()["client_assertion"], first);
    assert_eq!(requests[1].form()["client_assertion"], second);
    assert_eq!(requests[1].form()["client_assertion_type"], JWT_BEARER);
    assert_eq!(server.issued_tokens().len(), 2);
}

#[tokio::test]
async fn an_expired_client_assertion_is_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sidekey-token");
    let expired = service_account_token(&TestKey::p256(), 1, unix_now() - 120);
    std::fs::write(&file, &expired).unwrap();
    let server = token_server(|_| {}).await;
    let config = TestConfig::new()
        .with(credential(&server).line(&format!(
            "client_auth = \"client_assertion\"\nclient_assertion = {{ file = {} }}",
            toml_path(&file)
        )))
        .env("CLIENT_ID", "test-client")
        .parse();
    let error = obtain_once(&config, "api", &RootCertStore::empty())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("expired"), "{error}");
    assert!(error.contains("sidekey-token"), "{error}");
    assert!(!error.contains(&expired[..20]), "{error}");
    assert!(
        !error.contains("clock"),
        "two minutes late is rotation, not the clock: {error}"
    );
    assert_eq!(server.calls(), 0);

    // Expired years ago by this clock: more likely this clock is years
    // ahead (a node started before NTP set it) than a token unrotated for
    // years; the message says both.
    let years_ago = service_account_token(&TestKey::p256(), 1, unix_now() - 4 * 365 * 86_400);
    std::fs::write(&file, &years_ago).unwrap();
    let error = obtain_once(&config, "api", &RootCertStore::empty())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("expired"), "{error}");
    assert!(error.contains("system clock"), "{error}");
    assert_eq!(server.calls(), 0);
}

// ---------------------------------------------------------------------------
// RFC 8693 token exchange
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn token_exchange_renews_with_the_current_subject_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("subject");
    std::fs::write(&file, "subject-1\n").unwrap();
    let server = token_server(|b| {
        let mut check = ExchangeCheck::of(&["subject-1", "subject-2"]);
        check.issued_token_type = "urn:ietf:params:oauth:token-type:jwt".into();
        check.token_type = "N_A".into();
        b.exchange = Some(check);
        b.id_only = true;
    })
    .await;
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let credential = credential(&server).line(&format!(
        "grant = \"token_exchange\"\nsubject_token = {{ file = {} }}\n\
         audience = \"api\"\nresource = \"https://api.example.com\"\nscope = \"read\"",
        toml_path(&file)
    ));
    let proxy = config(credential, &upstream).start().await;
    let response = proxy.get("/first").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        upstream.last_request().unwrap().header("authorization"),
        Some("Bearer oauth-token-1")
    );

    std::fs::write(&file, "subject-2").unwrap();
    let requests = server.wait_for_requests(2).await;
    let form = requests[1].form();
    assert_eq!(
        form["grant_type"],
        "urn:ietf:params:oauth:grant-type:token-exchange"
    );
    assert_eq!(form["subject_token"], "subject-2");
    assert_eq!(
        form["subject_token_type"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
    assert_eq!(form["audience"], "api");
    assert_eq!(form["resource"], "https://api.example.com");
    assert_eq!(form["scope"], "read");
    assert_eq!(form["client_id"], "test-client");
    assert_eq!(server.issued_tokens().len(), 2);
}

#[tokio::test]
async fn token_exchange_with_a_signed_assertion_and_a_refused_subject() {
    let dir = tempfile::tempdir().unwrap();
    let (key_file, subject) = (dir.path().join("key.pem"), dir.path().join("subject"));
    let key = TestKey::ed25519();
    key.write(&key_file);
    std::fs::write(&subject, "not-accepted").unwrap();
    let server = token_server(|b| b.exchange = Some(ExchangeCheck::of(&["subject-1"]))).await;
    let check = AssertionCheck::signed_by(vec![key], &server.url());
    server.update(|b| b.assertion = Some(check));
    let config = TestConfig::new()
        .with(private_key_jwt(&server, &key_file).line(&format!(
            "grant = \"token_exchange\"\nsubject_token = {{ file = {} }}",
            toml_path(&subject)
        )))
        .env("CLIENT_ID", "test-client")
        .parse();
    let error = obtain_once(&config, "api", &RootCertStore::empty())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("invalid_grant"), "{error}");

    std::fs::write(&subject, "subject-1").unwrap();
    let (token, _) = obtain_once(&config, "api", &RootCertStore::empty())
        .await
        .unwrap();
    assert_eq!(token.value.expose(), "oauth-token-1");
    assert!(
        server
            .last_request()
            .unwrap()
            .form()
            .contains_key("client_assertion")
    );
}

// ---------------------------------------------------------------------------
// RFC 8705 mutual TLS
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn tls_client_auth_obtains_and_renews_over_mutual_tls() {
    let pki = Arc::new(TestPki::new());
    let server = OAuthServer::start_mtls(
        OAuthBehaviour {
            expires_in: Some(json!(20)),
            id_only: true,
            ..OAuthBehaviour::default()
        },
        &pki,
    )
    .await;
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let credential = credential(&server).line(&format!(
        "client_auth = \"tls_client_auth\"\nclient_cert = {}\nclient_key = {{ file = {} }}",
        toml_path(pki.client_cert_path()),
        toml_path(pki.client_key_path())
    ));
    let proxy = config(credential, &upstream).trusting(&pki).start().await;
    let response = proxy.get("/first").await;
    assert_eq!(response.status, 200, "{}", response.text());
    let requests = server.wait_for_requests(2).await;
    let form = requests[1].form();
    assert_eq!(form["client_id"], "test-client");
    assert_eq!(form.len(), 2, "grant_type and client_id only: {form:?}");
    assert_eq!(requests[1].header("authorization"), None);
    assert_eq!(server.issued_tokens().len(), 2);
}

#[tokio::test]
async fn without_the_client_certificate_the_token_server_refuses_the_handshake() {
    let pki = Arc::new(TestPki::new());
    let server = OAuthServer::start_mtls(
        OAuthBehaviour {
            id_only: true,
            ..OAuthBehaviour::default()
        },
        &pki,
    )
    .await;
    // client_auth = "post" with no secret is a public client: no certificate.
    let config = TestConfig::new()
        .trusting(&pki)
        .with(
            credential(&server)
                .line("grant = \"token_exchange\"\nclient_auth = \"post\"\nsubject_token = \"s\""),
        )
        .env("CLIENT_ID", "test-client")
        .parse();
    let error = obtain_once(&config, "api", &pki.root_store())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("token request"), "{error}");
    assert_eq!(server.calls(), 0);
}

// ---------------------------------------------------------------------------
// `check`: every mistake names its key
// ---------------------------------------------------------------------------

fn check_errors(lines: &str, env: &[(&str, &str)]) -> String {
    let mut config = TestConfig::new()
        .with(oauth2("api", "https://auth.example.com/token").line(lines))
        .with(route("https://api.example.com", "api"))
        .env("CLIENT_ID", "id")
        .env("CLIENT_SECRET", "secret");
    for (name, value) in env {
        config = config.env(name, value);
    }
    match config.checked() {
        Ok(_) => String::new(),
        Err(errors) => errors.to_string(),
    }
}

#[test]
fn check_names_the_key_for_every_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = dir.path().join("rsa.pem");
    TestKey::rsa().write(&rsa);
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let secretless = "client_secret = { env = \"CLIENT_SECRET\" }";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            "client_auth = \"private_key_jwt\"".into(),
            "client_auth",
            "missing key `private_key` (required with client_auth = \"private_key_jwt\")",
        ),
        (
            format!(
                "client_auth = \"private_key_jwt\"\nprivate_key = {{ file = {} }}",
                toml_path(&garbage)
            ),
            "private_key",
            "holds no PEM private key",
        ),
        (
            format!(
                "client_auth = \"private_key_jwt\"\nprivate_key = {{ file = {} }}\nsigning_alg = \"ES256\"",
                toml_path(&rsa)
            ),
            "signing_alg",
            "signing_alg ES256 needs an EC P-256 key, but private_key holds an RSA key",
        ),
        (
            format!(
                "client_auth = \"private_key_jwt\"\nprivate_key = {{ file = {} }}\nsigning_alg = \"HS256\"",
                toml_path(&rsa)
            ),
            "signing_alg",
            "is not one of",
        ),
        (
            "client_auth = \"client_assertion\"".into(),
            "client_auth",
            "missing key `client_assertion`",
        ),
        (
            "client_auth = \"tls_client_auth\"\nclient_cert = \"c.pem\"".into(),
            "client_auth",
            "missing key `client_key`",
        ),
        (
            "grant = \"token_exchange\"".into(),
            "grant",
            "missing key `subject_token`",
        ),
        (
            "resource = \"https://api.example.com\"".into(),
            "resource",
            "only sent with grant = \"token_exchange\"",
        ),
        (
            "key_id = \"k1\"".into(),
            "key_id",
            "`key_id` is not used with client_auth = \"basic\"",
        ),
    ];
    for (lines, key, expected) in &cases {
        let errors = check_errors(lines, &[]);
        assert!(errors.contains(expected), "{lines}\n→ {errors}");
        assert!(
            errors.contains(&format!("credentials.api.{key}")),
            "{lines}\n→ {errors}"
        );
    }
    // A secret-based mode without its secret, and a secret nobody sends.
    let no_secret = TestConfig::new()
        .with(oauth2("api", "https://auth.example.com/token").without("client_secret"))
        .with(route("https://api.example.com", "api"))
        .env("CLIENT_ID", "id");
    let errors = no_secret.checked().unwrap_err().to_string();
    assert!(errors.contains("missing key `client_secret`"), "{errors}");
    let errors = check_errors(
        &format!(
            "client_auth = \"private_key_jwt\"\nprivate_key = {{ file = {} }}\n{secretless}",
            toml_path(&rsa)
        ),
        &[],
    );
    assert!(
        errors.contains("`client_secret` is not used with client_auth = \"private_key_jwt\""),
        "{errors}"
    );
    // A good key passes, and its text shows nowhere.
    let pem = TestKey::p256().pem;
    let config = TestConfig::new()
        .with(
            oauth2("api", "https://auth.example.com/token")
                .without("client_secret")
                .line("client_auth = \"private_key_jwt\"\nprivate_key = { env = \"KEY\" }"),
        )
        .with(route("https://api.example.com", "api"))
        .env("CLIENT_ID", "id")
        .env("KEY", &pem);
    let checked = config.checked().unwrap();
    let body = pem.lines().nth(1).unwrap();
    assert!(!format!("{checked:?}").contains(body));
}
