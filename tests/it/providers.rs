//! The `inbenta` and `oauth2` providers against real token servers on
//! loopback: what the server received (exact headers and bodies), the token
//! each fetch yields, and how every kind of failure is classified.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::StatusCode;
use rustls::RootCertStore;
use serde_json::json;

use sidekey::credential::inbenta::InbentaProvider;
use sidekey::credential::oauth2::OAuth2Provider;
use sidekey::credential::settings::{
    BodyFormat, ClientAuth, Grant, InbentaConfig, InbentaKey, OAuth2Config,
};
use sidekey::credential::token_client::TokenClient;
use sidekey::credential::{FetchError, Provider, Token};
use sidekey::secret::{EnvSource, MapEnv, SecretRef};

use crate::support::tls::TestPki;
use crate::support::token_servers::{
    InbentaBehaviour, InbentaEndpoint, InbentaServer, Lifetime, OAuthBehaviour, OAuthServer,
    TokenReply, jwt, unix_now,
};
use crate::support::upstream::closed_port;

const TIMEOUT: Duration = Duration::from_secs(5);

fn plain_client() -> TokenClient {
    TokenClient::new(&Arc::new(RootCertStore::empty()), TIMEOUT, true).unwrap()
}

fn env(pairs: &[(&str, &str)]) -> Arc<dyn EnvSource> {
    Arc::new(MapEnv(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    ))
}

fn inbenta_env() -> Arc<dyn EnvSource> {
    env(&[
        ("INBENTA_API_KEY", "test-api-key"),
        ("INBENTA_SECRET", "test-secret"),
        ("INBENTA_DOMAIN_KEY", "test-domain-key"),
    ])
}

fn inbenta_config(auth_url: &str) -> InbentaConfig {
    InbentaConfig {
        api_key: SecretRef::Env("INBENTA_API_KEY".into()),
        key: InbentaKey::Secret(SecretRef::Env("INBENTA_SECRET".into())),
        origin: None,
        oauth_token: None,
        auth_url: auth_url.parse().unwrap(),
    }
}

fn inbenta(server: &InbentaServer) -> InbentaProvider {
    InbentaProvider::new(
        &inbenta_config(&server.url()),
        plain_client(),
        inbenta_env(),
    )
}

fn oauth_env() -> Arc<dyn EnvSource> {
    env(&[
        ("CLIENT_ID", "test-client"),
        ("CLIENT_SECRET", "test-client-secret"),
    ])
}

fn oauth_config(server: &OAuthServer, auth: ClientAuth, body: BodyFormat) -> OAuth2Config {
    OAuth2Config {
        token_url: server.token_url(),
        client_id: SecretRef::Env("CLIENT_ID".into()),
        client_secret: Some(SecretRef::Env("CLIENT_SECRET".into())),
        audience: None,
        scope: None,
        client_auth: auth,
        body,
        default_ttl: Duration::from_secs(3600),
        grant: Grant::ClientCredentials,
        private_key: None,
        key_id: None,
        signing_alg: None,
        assertion_audience: None,
        client_assertion: None,
        client_cert: None,
        client_key: None,
        subject_token: None,
        subject_token_type: None,
        resource: None,
    }
}

fn oauth(server: &OAuthServer, auth: ClientAuth, body: BodyFormat) -> OAuth2Provider {
    OAuth2Provider::new(
        &oauth_config(server, auth, body),
        plain_client(),
        oauth_env(),
    )
}

/// A token header's value as text, checking it is marked sensitive.
fn token_header<'a>(token: &'a Token, name: &str) -> &'a str {
    let (_, value) = token
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("token has no {name} header"));
    assert!(value.is_sensitive(), "{name} must be marked sensitive");
    value.to_str().unwrap()
}

fn lifetime_secs(token: &Token) -> u64 {
    token.lifetime.expect("lifetime").as_secs()
}

fn refused(err: FetchError) -> (StatusCode, String) {
    match err {
        FetchError::Refused { status, message } => (status, message),
        other => panic!("expected Refused, got {other:?}"),
    }
}

fn transient(err: FetchError) -> (String, Option<Duration>) {
    match err {
        FetchError::Transient {
            message,
            retry_after,
        } => (message, retry_after),
        other => panic!("expected Transient, got {other:?}"),
    }
}

/// A file holding `contents`, removed with the returned guard.
fn temp_file(contents: &str) -> tempfile::TempPath {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), contents).unwrap();
    file.into_temp_path()
}

// ---- Inbenta ----------------------------------------------------------------

#[tokio::test]
async fn inbenta_secret_flow_posts_the_secret_to_auth() {
    let server = InbentaServer::start(InbentaBehaviour::default()).await;
    let provider = inbenta(&server);

    let token = provider.fetch(None).await.unwrap();

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let req = &requests[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/v1/auth");
    assert_eq!(req.header("x-inbenta-key"), Some("test-api-key"));
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("accept"), Some("application/json"));
    assert_eq!(req.header("authorization"), None);
    assert_eq!(req.header("origin"), None);
    assert_eq!(req.header("x-oauth-token"), None);
    assert_eq!(req.body_text(), r#"{"secret":"test-secret"}"#);

    assert_eq!(token.value.expose(), "inbenta-token-1");
    assert_eq!(lifetime_secs(&token), 1200);
    assert_eq!(token.headers.len(), 2);
    assert_eq!(
        token_header(&token, "authorization"),
        "Bearer inbenta-token-1"
    );
    assert_eq!(token_header(&token, "x-inbenta-key"), "test-api-key");
    let apis = token.apis.as_ref().expect("apis");
    assert_eq!(apis.len(), 2);
    assert_eq!(
        apis["chatbot"].to_string(),
        "https://api-gce3.inbenta.io/prod/chatbot"
    );
    assert_eq!(provider.header_names(), ["authorization", "x-inbenta-key"]);
}

#[tokio::test]
async fn inbenta_domain_key_flow_sends_domain_key_and_origin() {
    let server = InbentaServer::start(InbentaBehaviour {
        origin: Some("https://www.example.com".into()),
        ..Default::default()
    })
    .await;
    let mut config = inbenta_config(&server.url());
    config.key = InbentaKey::DomainKey(SecretRef::Env("INBENTA_DOMAIN_KEY".into()));
    config.origin = Some("https://www.example.com".parse().unwrap());
    let provider = InbentaProvider::new(&config, plain_client(), inbenta_env());

    let token = provider.fetch(None).await.unwrap();

    let req = &server.auth_requests()[0];
    assert_eq!(req.body_text(), r#"{"domain_key":"test-domain-key"}"#);
    assert_eq!(req.header("origin"), Some("https://www.example.com"));
    assert_eq!(req.header("x-inbenta-key"), Some("test-api-key"));
    assert_eq!(token.value.expose(), "inbenta-token-1");
}

#[tokio::test]
async fn inbenta_oauth_token_is_sent_and_reread_on_every_auth() {
    let server = InbentaServer::start(InbentaBehaviour {
        oauth_token: Some("oauth-1".into()),
        ..Default::default()
    })
    .await;
    let oauth_file = temp_file("oauth-1\n");
    let mut config = inbenta_config(&server.url());
    config.oauth_token = Some(SecretRef::File(oauth_file.to_path_buf()));
    let provider = InbentaProvider::new(&config, plain_client(), inbenta_env());

    provider.fetch(None).await.unwrap();
    std::fs::write(&oauth_file, "oauth-2\n").unwrap();
    server.update(|b| b.oauth_token = Some("oauth-2".into()));
    provider.fetch(None).await.unwrap();

    let auths = server.auth_requests();
    assert_eq!(auths[0].header("x-oauth-token"), Some("Bearer oauth-1"));
    assert_eq!(auths[1].header("x-oauth-token"), Some("Bearer oauth-2"));
    assert_eq!(auths[1].body_text(), r#"{"secret":"test-secret"}"#);
}

#[tokio::test]
async fn inbenta_renews_through_refresh_token_and_keeps_apis() {
    let server = InbentaServer::start(InbentaBehaviour::default()).await;
    let provider = inbenta(&server);
    let first = provider.fetch(None).await.unwrap();

    let second = provider.fetch(Some(&first)).await.unwrap();

    assert_eq!(server.auth_calls(), 1);
    assert_eq!(server.refresh_calls(), 1);
    let req = &server.refresh_requests()[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/v1/refreshToken");
    assert_eq!(req.header("authorization"), Some("Bearer inbenta-token-1"));
    assert_eq!(req.header("x-inbenta-key"), Some("test-api-key"));
    assert!(req.body.is_empty());

    // The refresh answer carried only accessToken + expiration.
    assert_eq!(second.value.expose(), "inbenta-token-2");
    let lifetime = lifetime_secs(&second);
    assert!((1198..=1200).contains(&lifetime), "{lifetime}");
    assert_eq!(
        token_header(&second, "authorization"),
        "Bearer inbenta-token-2"
    );
    assert_eq!(token_header(&second, "x-inbenta-key"), "test-api-key");
    assert!(Arc::ptr_eq(
        first.apis.as_ref().unwrap(),
        second.apis.as_ref().unwrap()
    ));
}

#[tokio::test]
async fn inbenta_refresh_answer_with_apis_replaces_them() {
    let server = InbentaServer::start(InbentaBehaviour::default()).await;
    let provider = inbenta(&server);
    let first = provider.fetch(None).await.unwrap();
    server.update(|b| {
        b.refresh_includes_apis = true;
        b.refresh_lifetime = Lifetime::ExpiresIn(600);
        b.apis = [("km".to_owned(), "https://km.example.com/v1".to_owned())].into();
    });

    let second = provider.fetch(Some(&first)).await.unwrap();

    let apis = second.apis.as_ref().unwrap();
    assert_eq!(apis.len(), 1);
    assert_eq!(apis["km"].to_string(), "https://km.example.com/v1");
    assert_eq!(lifetime_secs(&second), 600);
}

#[tokio::test]
async fn inbenta_refresh_failure_falls_back_to_auth() {
    let server = InbentaServer::start(InbentaBehaviour::default()).await;
    let provider = inbenta(&server);
    let first = provider.fetch(None).await.unwrap();

    // Refused refresh (token unknown to the server).
    server.revoke_tokens();
    let second = provider.fetch(Some(&first)).await.unwrap();
    assert_eq!(server.refresh_calls(), 1);
    assert_eq!(server.auth_calls(), 2);
    assert_eq!(second.value.expose(), "inbenta-token-2");
    assert_eq!(second.apis.as_ref().unwrap().len(), 2);

    // Server error on refresh.
    server.push_reply(
        Some(InbentaEndpoint::Refresh),
        TokenReply::inbenta_error(500, 500, "Internal error"),
    );
    let third = provider.fetch(Some(&second)).await.unwrap();
    assert_eq!(server.refresh_calls(), 2);
    assert_eq!(server.auth_calls(), 3);
    assert_eq!(third.value.expose(), "inbenta-token-3");

    // Unreadable refresh answer.
    server.push_reply(
        Some(InbentaEndpoint::Refresh),
        TokenReply::text(200, "<html>ok</html>"),
    );
    let fourth = provider.fetch(Some(&third)).await.unwrap();
    assert_eq!(server.auth_calls(), 4);
    assert_eq!(fourth.value.expose(), "inbenta-token-4");

    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/v1/auth",
            "/v1/refreshToken",
            "/v1/auth",
            "/v1/refreshToken",
            "/v1/auth",
            "/v1/refreshToken",
            "/v1/auth"
        ]
    );
}

#[tokio::test]
async fn inbenta_refresh_and_auth_both_failing_reports_the_auth_error() {
    let server = InbentaServer::start(InbentaBehaviour::default()).await;
    let provider = inbenta(&server);
    let first = provider.fetch(None).await.unwrap();
    server.revoke_tokens();
    server.set_reply(
        Some(InbentaEndpoint::Auth),
        Some(TokenReply::inbenta_error(401, 401, "Invalid secret")),
    );

    let (status, message) = refused(provider.fetch(Some(&first)).await.unwrap_err());
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(message, "401: Invalid secret");
}

#[tokio::test]
async fn inbenta_lifetime_from_expiration_or_string_expires_in() {
    let server = InbentaServer::start(InbentaBehaviour {
        auth_lifetime: Lifetime::Expiration(600),
        ..Default::default()
    })
    .await;
    let provider = inbenta(&server);
    let lifetime = lifetime_secs(&provider.fetch(None).await.unwrap());
    assert!((598..=600).contains(&lifetime), "{lifetime}");

    server.update(|b| b.auth_lifetime = Lifetime::ExpiresInString(900));
    assert_eq!(lifetime_secs(&provider.fetch(None).await.unwrap()), 900);

    server.update(|b| b.auth_lifetime = Lifetime::None);
    let (message, _) = transient(provider.fetch(None).await.unwrap_err());
    assert!(
        message.contains("neither expires_in nor expiration"),
        "{message}"
    );
}

#[tokio::test]
async fn inbenta_expiration_counts_from_the_answers_date_when_the_clock_is_years_off() {
    let server = InbentaServer::start(InbentaBehaviour::default()).await;
    let provider = inbenta(&server);
    let now = std::time::SystemTime::now();
    let years = Duration::from_secs(FOUR_YEARS as u64);
    // The server's clock is right; this one is four years behind it, then
    // ahead. Its answer: 20 minutes left, as an absolute time only.
    for server_now in [now + years, now - years] {
        let unix = server_now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        server.push_reply(
            Some(InbentaEndpoint::Auth),
            TokenReply::json(
                200,
                json!({"accessToken": "tok", "expiration": unix + 1200}),
            )
            .header("date", &httpdate::fmt_http_date(server_now)),
        );
        let token = provider
            .fetch(None)
            .await
            .unwrap_or_else(|e| panic!("server at {server_now:?}: {e}"));
        let lifetime = lifetime_secs(&token);
        assert!(
            (1198..=1200).contains(&lifetime),
            "server at {server_now:?}: 20 minutes, not a year nor refused: {lifetime}"
        );
    }
}

#[tokio::test]
async fn inbenta_skips_invalid_apis_entries() {
    let server = InbentaServer::start(InbentaBehaviour::default()).await;
    server.push_reply(
        Some(InbentaEndpoint::Auth),
        TokenReply::json(
            200,
            json!({
                "accessToken": "tok",
                "expires_in": 1200,
                "apis": {
                    "chatbot": "https://bot.example.com/prod/chatbot",
                    "bad": "::no::",
                    "num": 7,
                    // Read as no port at all, it would reach the bot on 443.
                    "port": "https://bot.example.com:70000/prod/search",
                    "zero": "https://bot.example.com:0/prod/km"
                }
            }),
        ),
    );
    let token = inbenta(&server).fetch(None).await.unwrap();
    let apis = token.apis.unwrap();
    assert_eq!(apis.keys().collect::<Vec<_>>(), ["chatbot"]);
}

#[tokio::test]
async fn inbenta_auth_url_joins_with_or_without_slash_or_path() {
    let server = InbentaServer::start(InbentaBehaviour::default()).await;
    for (auth_url, path) in [
        (format!("{}/", server.url()), "/v1/auth"),
        (format!("http://{}", server.addr), "/auth"),
        (format!("http://{}/", server.addr), "/auth"),
        (format!("http://{}/base/v2", server.addr), "/base/v2/auth"),
    ] {
        let provider =
            InbentaProvider::new(&inbenta_config(&auth_url), plain_client(), inbenta_env());
        let first = provider.fetch(None).await.unwrap();
        assert_eq!(server.requests().last().unwrap().path, path, "{auth_url}");
        provider.fetch(Some(&first)).await.unwrap();
        assert_eq!(
            server.requests().last().unwrap().path,
            path.replace("/auth", "/refreshToken"),
            "{auth_url}"
        );
    }
}

#[tokio::test]
async fn inbenta_wrong_secret_is_refused_with_readable_message() {
    let server = InbentaServer::start(InbentaBehaviour {
        secret: "another-secret".into(),
        ..Default::default()
    })
    .await;
    let err = inbenta(&server).fetch(None).await.unwrap_err();
    let text = err.to_string();
    let (status, message) = refused(err);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(message, "401: Invalid secret");
    assert!(!text.contains("test-secret") && !text.contains("test-api-key"));
}

// ---- OAuth 2.0 --------------------------------------------------------------

#[tokio::test]
async fn oauth_basic_form_request() {
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let mut config = oauth_config(&server, ClientAuth::Basic, BodyFormat::Form);
    config.audience = Some("api.example.com/api".into());
    config.scope = Some("cards:read cards:write".into());
    let provider = OAuth2Provider::new(&config, plain_client(), oauth_env());

    let token = provider.fetch(None).await.unwrap();

    let req = server.last_request().unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/oauth/token");
    assert_eq!(
        req.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(req.header("accept"), Some("application/json"));
    assert_eq!(
        req.header("authorization"),
        Some(
            format!(
                "Basic {}",
                STANDARD.encode("test-client:test-client-secret")
            )
            .as_str()
        )
    );
    assert_eq!(
        req.body_text(),
        "grant_type=client_credentials&audience=api.example.com%2Fapi&scope=cards%3Aread+cards%3Awrite"
    );

    assert_eq!(token.value.expose(), "oauth-token-1");
    assert_eq!(lifetime_secs(&token), 86400);
    assert_eq!(token.headers.len(), 1);
    assert_eq!(
        token_header(&token, "authorization"),
        "Bearer oauth-token-1"
    );
    assert!(token.apis.is_none());
    assert_eq!(provider.header_names(), ["authorization"]);
}

#[tokio::test]
async fn oauth_post_form_request() {
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let token = oauth(&server, ClientAuth::Post, BodyFormat::Form)
        .fetch(None)
        .await
        .unwrap();

    let req = server.last_request().unwrap();
    assert_eq!(req.header("authorization"), None);
    assert_eq!(
        req.body_text(),
        "grant_type=client_credentials&client_id=test-client&client_secret=test-client-secret"
    );
    assert_eq!(token.value.expose(), "oauth-token-1");
}

#[tokio::test]
async fn oauth_json_request_has_the_auth0_shape() {
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let mut config = oauth_config(&server, ClientAuth::Post, BodyFormat::Json);
    config.audience = Some("api.getpliant.com/api/integration".into());
    let token = OAuth2Provider::new(&config, plain_client(), oauth_env())
        .fetch(None)
        .await
        .unwrap();

    let req = server.last_request().unwrap();
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("accept"), Some("application/json"));
    assert_eq!(req.header("authorization"), None);
    assert_eq!(
        req.json(),
        json!({
            "client_id": "test-client",
            "client_secret": "test-client-secret",
            "audience": "api.getpliant.com/api/integration",
            "grant_type": "client_credentials"
        })
    );
    assert_eq!(lifetime_secs(&token), 86400);
}

#[tokio::test]
async fn oauth_basic_json_request_keeps_credentials_out_of_the_body() {
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    oauth(&server, ClientAuth::Basic, BodyFormat::Json)
        .fetch(None)
        .await
        .unwrap();
    let req = server.last_request().unwrap();
    assert_eq!(req.json(), json!({"grant_type": "client_credentials"}));
    assert_eq!(
        req.basic_credentials(),
        Some(("test-client".into(), "test-client-secret".into()))
    );
}

#[tokio::test]
async fn oauth_basic_encodes_special_characters_per_rfc6749() {
    let id = "client id:é";
    let secret = "p:a+s%s w€rd/=&";
    let server = OAuthServer::start(OAuthBehaviour {
        client_id: id.into(),
        client_secret: secret.into(),
        ..Default::default()
    })
    .await;
    let provider = OAuth2Provider::new(
        &oauth_config(&server, ClientAuth::Basic, BodyFormat::Form),
        plain_client(),
        env(&[("CLIENT_ID", id), ("CLIENT_SECRET", secret)]),
    );

    provider.fetch(None).await.unwrap();

    let req = server.last_request().unwrap();
    let encoded = req
        .header("authorization")
        .unwrap()
        .strip_prefix("Basic ")
        .unwrap();
    let decoded = String::from_utf8(STANDARD.decode(encoded).unwrap()).unwrap();
    assert_eq!(
        decoded,
        "client+id%3A%C3%A9:p%3Aa%2Bs%25s+w%E2%82%ACrd%2F%3D%26"
    );
    assert_eq!(req.basic_credentials(), Some((id.into(), secret.into())));
}

#[tokio::test]
async fn oauth_secrets_are_reread_on_every_fetch() {
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let secret_file = temp_file("test-client-secret\n");
    let mut config = oauth_config(&server, ClientAuth::Post, BodyFormat::Form);
    config.client_secret = Some(SecretRef::File(secret_file.to_path_buf()));
    let provider = OAuth2Provider::new(&config, plain_client(), oauth_env());

    provider.fetch(None).await.unwrap();
    std::fs::write(&secret_file, "rotated-secret\n").unwrap();
    server.update(|b| b.client_secret = "rotated-secret".into());
    provider.fetch(None).await.unwrap();

    let requests = server.requests();
    assert_eq!(requests[0].form()["client_secret"], "test-client-secret");
    assert_eq!(requests[1].form()["client_secret"], "rotated-secret");
}

#[tokio::test]
async fn oauth_expires_in_string_and_token_type_in_any_case() {
    let server = OAuthServer::start(OAuthBehaviour {
        expires_in: Some(json!("7200")),
        token_type: Some("bearer".into()),
        ..Default::default()
    })
    .await;
    let provider = oauth(&server, ClientAuth::Basic, BodyFormat::Form);
    assert_eq!(lifetime_secs(&provider.fetch(None).await.unwrap()), 7200);

    server.update(|b| b.token_type = Some("BEARER".into()));
    provider.fetch(None).await.unwrap();

    server.update(|b| b.token_type = None);
    provider.fetch(None).await.unwrap();

    server.update(|b| b.token_type = Some("mac".into()));
    let (message, _) = transient(provider.fetch(None).await.unwrap_err());
    assert!(
        message.contains("\"mac\"") && message.contains("Bearer"),
        "{message}"
    );
}

#[tokio::test]
async fn a_lifetime_that_is_not_a_positive_number_is_an_error_naming_the_field() {
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let provider = oauth(&server, ClientAuth::Basic, BodyFormat::Form);
    for bad in [
        json!(0),
        json!(-5),
        json!(-0.5),
        json!("0"),
        json!("-1"),
        json!("soon"),
        json!(""),
        json!(true),
        json!({"seconds": 60}),
    ] {
        server.set_next_error(TokenReply::json(
            200,
            json!({"access_token": "x", "token_type": "Bearer", "expires_in": bad}),
        ));
        let (message, retry_after) = transient(
            provider
                .fetch(None)
                .await
                .expect_err(&format!("expires_in {bad} accepted")),
        );
        assert!(message.contains("expires_in"), "{bad}: {message}");
        assert_eq!(retry_after, None);
    }
    // Numbers as strings, fractions and null are fine; null means "absent".
    for (good, secs) in [
        (json!("3600"), 3600),
        (json!(" 60 "), 60),
        (json!(3599.9), 3599),
        (json!(null), 3600),
    ] {
        server.set_next_error(TokenReply::json(
            200,
            json!({"access_token": "x", "expires_in": good}),
        ));
        let token = provider.fetch(None).await.unwrap();
        assert_eq!(lifetime_secs(&token), secs, "{good}");
    }

    // Inbenta: the same for expires_in, and for expiration.
    let auth = InbentaServer::start(InbentaBehaviour::default()).await;
    let provider = inbenta(&auth);
    for (field, bad) in [
        ("expires_in", json!(0)),
        ("expires_in", json!("soon")),
        ("expiration", json!("tomorrow")),
    ] {
        auth.push_reply(
            Some(InbentaEndpoint::Auth),
            TokenReply::json(200, json!({"accessToken": "x", field: bad})),
        );
        let (message, _) = transient(
            provider
                .fetch(None)
                .await
                .expect_err(&format!("{field} {bad} accepted")),
        );
        assert!(message.contains(field), "{field} {bad}: {message}");
    }
}

#[tokio::test]
async fn oauth_lifetime_from_jwt_exp_then_default_ttl() {
    let server = OAuthServer::start(OAuthBehaviour {
        expires_in: None,
        jwt_exp_in: Some(1800),
        ..Default::default()
    })
    .await;
    let provider = oauth(&server, ClientAuth::Basic, BodyFormat::Form);

    let token = provider.fetch(None).await.unwrap();
    assert_eq!(Some(token.value.expose().to_owned()), server.last_token());
    let lifetime = lifetime_secs(&token);
    assert!((1798..=1800).contains(&lifetime), "{lifetime}");

    server.update(|b| b.jwt_exp_in = None);
    let token = provider.fetch(None).await.unwrap();
    assert_eq!(token.value.expose(), "oauth-token-2");
    assert_eq!(token.lifetime, Some(Duration::from_secs(3600)));

    // expires_in wins over the JWT's exp.
    server.update(|b| {
        b.jwt_exp_in = Some(1800);
        b.expires_in = Some(json!(60));
    });
    assert_eq!(lifetime_secs(&provider.fetch(None).await.unwrap()), 60);

    // A JWT that says it has already expired is not used.
    server.push_reply(TokenReply::json(
        200,
        json!({"access_token": jwt(json!({"exp": unix_now() - 10})), "token_type": "Bearer"}),
    ));
    let (message, _) = transient(provider.fetch(None).await.unwrap_err());
    assert!(message.contains("exp"), "{message}");
}

/// A box started before NTP set its clock: this many seconds off, either way.
const FOUR_YEARS: i64 = 4 * 365 * 86_400;

#[tokio::test]
async fn a_jwt_lifetime_is_its_exp_after_iat_when_the_clock_is_years_off() {
    let server = OAuthServer::start(OAuthBehaviour {
        expires_in: None,
        ..Default::default()
    })
    .await;
    let provider = oauth(&server, ClientAuth::Basic, BodyFormat::Form);
    // The issuer's clock is right and says the token was issued just now
    // for 15 minutes; this clock is four years behind it, then ahead of it.
    for issuer_ahead in [FOUR_YEARS, -FOUR_YEARS] {
        let iat = unix_now() as i64 + issuer_ahead;
        server.push_reply(TokenReply::json(
            200,
            json!({"access_token": jwt(json!({"iat": iat, "exp": iat + 900})), "token_type": "Bearer"}),
        ));
        let token = provider
            .fetch(None)
            .await
            .unwrap_or_else(|e| panic!("issuer ahead by {issuer_ahead} s: {e}"));
        assert_eq!(
            lifetime_secs(&token),
            900,
            "issuer ahead by {issuer_ahead} s: a 15-minute token is not served longer, nor refused"
        );
    }
    // With the clocks agreeing, the lifetime still counts from now.
    server.push_reply(TokenReply::json(
        200,
        json!({"access_token": jwt(json!({"iat": unix_now() - 30, "exp": unix_now() + 870})), "token_type": "Bearer"}),
    ));
    let lifetime = lifetime_secs(&provider.fetch(None).await.unwrap());
    assert!((868..=870).contains(&lifetime), "{lifetime}");
}

#[tokio::test]
async fn oauth_wrong_secret_is_refused_as_invalid_client() {
    let server = OAuthServer::start(OAuthBehaviour {
        client_secret: "something-else".into(),
        ..Default::default()
    })
    .await;
    let err = oauth(&server, ClientAuth::Basic, BodyFormat::Form)
        .fetch(None)
        .await
        .unwrap_err();
    assert!(!format!("{err} {err:?}").contains("test-client-secret"));
    let (status, message) = refused(err);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(message, "invalid_client: Client authentication failed");
}

#[tokio::test]
async fn missing_secret_fails_before_any_request() {
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let provider = OAuth2Provider::new(
        &oauth_config(&server, ClientAuth::Basic, BodyFormat::Form),
        plain_client(),
        env(&[("CLIENT_ID", "test-client")]),
    );
    let err = provider.fetch(None).await.unwrap_err();
    assert!(matches!(err, FetchError::Secret(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "environment variable CLIENT_SECRET is not set"
    );
    assert_eq!(server.calls(), 0);
}

// ---- error answers ----------------------------------------------------------

#[tokio::test]
async fn error_bodies_become_one_readable_line() {
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let provider = oauth(&server, ClientAuth::Basic, BodyFormat::Form);
    let cases = [
        (
            TokenReply::oauth_error(401, "invalid_client", "Client authentication failed"),
            "invalid_client: Client authentication failed",
        ),
        (
            TokenReply::oauth_error(403, "access_denied", "Unauthorized"),
            "access_denied: Unauthorized",
        ),
        (
            TokenReply::json(400, json!({"error": "invalid_scope"})),
            "invalid_scope",
        ),
        (
            TokenReply::inbenta_error(401, 401, "Invalid API key"),
            "401: Invalid API key",
        ),
        (
            TokenReply::json(
                403,
                json!({"Message": "User is not authorized to access this resource with an explicit deny"}),
            ),
            "User is not authorized to access this resource with an explicit deny",
        ),
        (
            TokenReply::text(404, "<html>\r\n<body>\n  Not found\n</body></html>"),
            "<html> <body> Not found </body></html>",
        ),
        (TokenReply::text(400, ""), "Bad Request (empty body)"),
    ];
    for (reply, expected) in cases {
        let status = reply.status;
        server.set_next_error(reply);
        let (got_status, message) = refused(provider.fetch(None).await.unwrap_err());
        assert_eq!(got_status, status);
        assert_eq!(message, expected);
    }

    // A long text body is cut to a short excerpt.
    server.set_next_error(TokenReply::text(400, "é".repeat(10_000)));
    let (_, message) = refused(provider.fetch(None).await.unwrap_err());
    assert!(message.chars().count() <= 201, "{}", message.len());
}

#[tokio::test]
async fn server_errors_and_throttling_are_transient_with_retry_after() {
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let provider = oauth(&server, ClientAuth::Basic, BodyFormat::Form);

    server.set_next_error(TokenReply::text(429, "Too many requests").retry_after("7"));
    let (message, retry_after) = transient(provider.fetch(None).await.unwrap_err());
    assert_eq!(retry_after, Some(Duration::from_secs(7)));
    assert!(
        message.contains("429") && message.contains("Too many requests"),
        "{message}"
    );

    server.set_next_error(
        TokenReply::inbenta_error(503, 503, "Service Unavailable").retry_after("120"),
    );
    let (message, retry_after) = transient(provider.fetch(None).await.unwrap_err());
    assert_eq!(retry_after, Some(Duration::from_secs(120)));
    assert!(message.contains("503: Service Unavailable"), "{message}");

    // HTTP-date form: far enough ahead to survive the exchange.
    let at = httpdate_in(3600);
    server.set_next_error(TokenReply::text(503, "maintenance").retry_after(&at));
    let (_, retry_after) = transient(provider.fetch(None).await.unwrap_err());
    let secs = retry_after.expect("retry_after from date").as_secs();
    assert!((3590..=3600).contains(&secs), "{secs}");

    // Retry-After only counts on 429 and 503.
    server.set_next_error(TokenReply::text(500, "boom").retry_after("9"));
    let (message, retry_after) = transient(provider.fetch(None).await.unwrap_err());
    assert_eq!(retry_after, None);
    assert!(message.contains("boom"), "{message}");

    server.set_next_error(TokenReply::text(502, "bad gateway"));
    transient(provider.fetch(None).await.unwrap_err());
}

#[tokio::test]
async fn a_retry_after_date_counts_from_the_answers_own_date_when_the_clock_is_years_off() {
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let provider = oauth(&server, ClientAuth::Basic, BodyFormat::Form);
    let now = std::time::SystemTime::now();
    let years = Duration::from_secs(FOUR_YEARS as u64);
    // The endpoint's clock is right; this one is four years behind it, then
    // ahead of it. "Come back in two minutes", by the endpoint's clock.
    for server_now in [now + years, now - years] {
        let again = httpdate::fmt_http_date(server_now + Duration::from_secs(120));
        server.set_next_error(
            TokenReply::text(503, "maintenance")
                .retry_after(&again)
                .header("date", &httpdate::fmt_http_date(server_now)),
        );
        let (_, retry_after) = transient(provider.fetch(None).await.unwrap_err());
        assert_eq!(
            retry_after,
            Some(Duration::from_secs(120)),
            "endpoint at {server_now:?}: two minutes, not years nor at once"
        );
    }
}

#[tokio::test]
async fn a_refusal_from_an_endpoint_whose_date_is_years_off_says_the_clock_looks_wrong() {
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let provider = oauth(&server, ClientAuth::Basic, BodyFormat::Form);
    let now = std::time::SystemTime::now();
    let years = Duration::from_secs(FOUR_YEARS as u64);
    // A signed assertion made on a clock years off is refused as expired
    // or not yet valid; the answer's Date shows whose clock is off.
    for server_now in [now + years, now - years] {
        server.set_next_error(
            TokenReply::json(
                400,
                json!({"error": "invalid_client", "error_description": "assertion expired"}),
            )
            .header("date", &httpdate::fmt_http_date(server_now)),
        );
        let (status, message) = refused(provider.fetch(None).await.unwrap_err());
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            message.starts_with("invalid_client: assertion expired"),
            "{message}"
        );
        assert!(message.contains("clock"), "{message}");
    }
    // Clocks that agree add nothing.
    server.set_next_error(TokenReply::json(
        400,
        json!({"error": "invalid_client", "error_description": "assertion expired"}),
    ));
    let (_, message) = refused(provider.fetch(None).await.unwrap_err());
    assert_eq!(message, "invalid_client: assertion expired");
}

/// An IMF-fixdate `secs` from now.
fn httpdate_in(secs: u64) -> String {
    let t = unix_now() + secs;
    let days = t / 86_400;
    let rem = t % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        months[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[tokio::test]
async fn error_messages_never_echo_request_secrets() {
    let server = InbentaServer::start(InbentaBehaviour::default()).await;
    server.set_next_error(TokenReply::inbenta_error(
        401,
        401,
        "secret test-secret is not valid for key test-api-key",
    ));
    let err = inbenta(&server).fetch(None).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("test-secret"), "{text}");
    assert!(!text.contains("test-api-key"), "{text}");
    assert!(text.contains("<redacted>"), "{text}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let target = OAuthServer::start(OAuthBehaviour::default()).await;
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    server.set_next_error(TokenReply::text(307, "").header("location", &target.url()));

    let err = oauth(&server, ClientAuth::Post, BodyFormat::Form)
        .fetch(None)
        .await
        .unwrap_err();
    let (status, message) = refused(err);
    assert_eq!(status, StatusCode::TEMPORARY_REDIRECT);
    assert!(message.contains("not followed"), "{message}");
    assert_eq!(server.calls(), 1);
    assert_eq!(target.calls(), 0);
}

#[tokio::test]
async fn unreadable_success_answers_are_transient() {
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let provider = oauth(&server, ClientAuth::Basic, BodyFormat::Form);
    server.set_next_error(TokenReply::text(200, "<html>login page</html>"));
    let (message, _) = transient(provider.fetch(None).await.unwrap_err());
    assert!(message.contains("not JSON"), "{message}");
    assert!(!message.contains("login page"), "{message}");

    server.set_next_error(TokenReply::json(200, json!({"token_type": "Bearer"})));
    let (message, _) = transient(provider.fetch(None).await.unwrap_err());
    assert!(message.contains("access_token"), "{message}");
}

#[tokio::test]
async fn bodies_over_one_mebibyte_are_refused() {
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let provider = oauth(&server, ClientAuth::Basic, BodyFormat::Form);
    let huge = format!(
        r#"{{"access_token":"x","expires_in":60,"pad":"{}"}}"#,
        "a".repeat(1024 * 1024)
    );

    // Announced by content-length.
    server.set_next_error(TokenReply::text(200, huge.clone()));
    let (message, _) = transient(provider.fetch(None).await.unwrap_err());
    assert!(message.contains("larger than"), "{message}");

    // Chunked, found while reading.
    server.set_next_error(TokenReply::text(200, huge).chunked());
    let (message, _) = transient(provider.fetch(None).await.unwrap_err());
    assert!(message.contains("larger than"), "{message}");

    // Just under the limit is fine.
    let fits = format!(
        r#"{{"access_token":"x","expires_in":60,"pad":"{}"}}"#,
        "a".repeat(1000 * 1024)
    );
    server.set_next_error(TokenReply::text(200, fits).chunked());
    provider.fetch(None).await.unwrap();
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let server = InbentaServer::start(InbentaBehaviour::default()).await;
    server.set_next_error(TokenReply::hang());
    let timeout = Duration::from_millis(200);
    let client = TokenClient::new(&Arc::new(RootCertStore::empty()), timeout, true).unwrap();
    let provider = InbentaProvider::new(&inbenta_config(&server.url()), client, inbenta_env());

    let started = Instant::now();
    let (message, _) = transient(provider.fetch(None).await.unwrap_err());
    let elapsed = started.elapsed();
    assert!(message.contains("timed out"), "{message}");
    assert!(
        elapsed >= timeout && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert_eq!(server.calls(), 1);
}

#[tokio::test]
async fn plain_http_is_refused_unless_allowed() {
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let client = TokenClient::new(&Arc::new(RootCertStore::empty()), TIMEOUT, false).unwrap();
    let provider = OAuth2Provider::new(
        &oauth_config(&server, ClientAuth::Basic, BodyFormat::Form),
        client,
        oauth_env(),
    );
    let (message, _) = transient(provider.fetch(None).await.unwrap_err());
    assert!(message.contains("allow_insecure_http"), "{message}");
    assert_eq!(server.calls(), 0);
}

#[tokio::test]
async fn connection_failures_are_transient() {
    let addr = closed_port();
    let provider = InbentaProvider::new(
        &inbenta_config(&format!("http://{addr}/v1")),
        plain_client(),
        inbenta_env(),
    );
    let (message, retry_after) = transient(provider.fetch(None).await.unwrap_err());
    assert!(message.contains(&addr.to_string()), "{message}");
    assert_eq!(retry_after, None);
}

#[tokio::test]
async fn connections_are_pooled() {
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let provider = oauth(&server, ClientAuth::Basic, BodyFormat::Form);
    for _ in 0..3 {
        provider.fetch(None).await.unwrap();
    }
    assert_eq!(server.calls(), 3);
    assert_eq!(server.connections(), 1);
}

// ---- TLS ----------------------------------------------------------------------

#[tokio::test]
async fn tls_token_endpoints_with_a_test_ca() {
    let pki = TestPki::new();
    let inbenta_server = InbentaServer::start_tls(InbentaBehaviour::default(), &pki).await;
    let oauth_server = OAuthServer::start_tls(OAuthBehaviour::default(), &pki).await;
    assert!(inbenta_server.url().starts_with("https://127.0.0.1:"));
    let client = TokenClient::new(&Arc::new(pki.root_store()), TIMEOUT, false).unwrap();

    let provider = InbentaProvider::new(
        &inbenta_config(&inbenta_server.url()),
        client.clone(),
        inbenta_env(),
    );
    let first = provider.fetch(None).await.unwrap();
    let second = provider.fetch(Some(&first)).await.unwrap();
    assert_eq!(second.value.expose(), "inbenta-token-2");
    assert_eq!(inbenta_server.refresh_calls(), 1);

    let token = OAuth2Provider::new(
        &oauth_config(&oauth_server, ClientAuth::Basic, BodyFormat::Json),
        client,
        oauth_env(),
    )
    .fetch(None)
    .await
    .unwrap();
    assert_eq!(token.value.expose(), "oauth-token-1");

    // A client that does not trust the test CA never reaches the server.
    let untrusting = TokenClient::new(&Arc::new(RootCertStore::empty()), TIMEOUT, false).unwrap();
    let provider = InbentaProvider::new(
        &inbenta_config(&inbenta_server.url()),
        untrusting,
        inbenta_env(),
    );
    let (message, _) = transient(provider.fetch(None).await.unwrap_err());
    assert!(message.to_lowercase().contains("certificate"), "{message}");
    assert_eq!(inbenta_server.calls(), 2);
}

// ---- no secret in Debug ----------------------------------------------------------

#[tokio::test]
async fn debug_output_shows_no_secret() {
    let inbenta_server = InbentaServer::start(InbentaBehaviour {
        oauth_token: Some("oauth-value".into()),
        ..Default::default()
    })
    .await;
    let oauth_server = OAuthServer::start(OAuthBehaviour::default()).await;
    let mut config = inbenta_config(&inbenta_server.url());
    config.oauth_token = Some(SecretRef::Literal(sidekey::secret::Secret::new(
        "oauth-value",
    )));
    let inbenta_provider = InbentaProvider::new(&config, plain_client(), inbenta_env());
    let mut oauth_cfg = oauth_config(&oauth_server, ClientAuth::Basic, BodyFormat::Form);
    oauth_cfg.client_secret = Some(SecretRef::Literal(sidekey::secret::Secret::new(
        "test-client-secret",
    )));
    let oauth_provider = OAuth2Provider::new(&oauth_cfg, plain_client(), oauth_env());

    let inbenta_token = inbenta_provider.fetch(None).await.unwrap();
    let oauth_token = oauth_provider.fetch(None).await.unwrap();

    let debug = format!(
        "{inbenta_provider:?} {oauth_provider:?} {inbenta_token:?} {oauth_token:?} {:?}",
        plain_client()
    );
    for secret in [
        "test-secret",
        "test-api-key",
        "oauth-value",
        "test-client-secret",
        "inbenta-token-1",
        "oauth-token-1",
    ] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
    assert!(debug.contains("InbentaProvider") && debug.contains("OAuth2Provider"));
}
