//! Route answers that point at the upstream point back at sidekey: a
//! `Location` or `Content-Location` naming a route's upstream URL (absolute,
//! or path-absolute under its base path) reaches the app as the path it
//! would ask sidekey for, so a redirect-following app comes back through
//! the route that owns the URL and gets that route's credential injected,
//! as nginx's `proxy_redirect default` does.
//!
//! The upstreams here answer with whatever `Location` the request's
//! `x-answer-location` header asks for (status from `x-answer-status`,
//! default 302), so each case is one request.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::support::config::{
    TestConfig, inbenta, inbenta_route, listen_tls, route, static_token, stripped_route,
};
use crate::support::proxy::{TestClient, TestProxy, TestResponse, body_empty, request_with};
use crate::support::tls::TestPki;
use crate::support::token_servers::{InbentaBehaviour, InbentaServer, Lifetime};
use crate::support::upstream::{RecordedRequest, Reply, Upstream, UpstreamOpts};
use http::Method;

/// A TLS upstream that answers `x-answer-status` (default 302) with the
/// `Location` (and `Content-Location`) the request asks for, and echoes
/// every other request.
async fn redirecting_upstream(pki: &Arc<TestPki>) -> Upstream {
    Upstream::start(UpstreamOpts::tls(pki).respond(|request: &RecordedRequest| {
        let Some(location) = request.header("x-answer-location") else {
            return Reply::echo();
        };
        let status = request
            .header("x-answer-status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(302);
        let mut reply = Reply::status(status).header("location", location);
        if let Some(content_location) = request.header("x-answer-content-location") {
            reply = reply.header("content-location", content_location);
        }
        reply
    }))
    .await
}

/// Ask `url` with the upstream told to answer `status` with `location`.
async fn answered_with(
    client: &TestClient,
    url: &str,
    status: u16,
    location: &str,
    content_location: Option<&str>,
) -> TestResponse {
    let status = status.to_string();
    let mut headers = vec![
        ("x-answer-location", location),
        ("x-answer-status", status.as_str()),
    ];
    if let Some(content_location) = content_location {
        headers.push(("x-answer-content-location", content_location));
    }
    client
        .send(request_with(Method::GET, url, &headers, body_empty()))
        .await
}

/// The `Location` the app got for `location` on `path`, with a 302.
async fn location_for(proxy: &TestProxy, path: &str, location: &str) -> Option<String> {
    let url = format!("{}{path}", proxy.route_url(0));
    let r = answered_with(&proxy.client, &url, 302, location, None).await;
    assert_eq!(r.status, 302, "{location}: {}", r.text());
    r.header("location").map(str::to_owned)
}

#[tokio::test]
async fn a_redirect_to_the_upstream_is_followed_through_the_route_with_its_credential() {
    let pki = Arc::new(TestPki::new());
    let upstream = redirecting_upstream(&pki).await;
    // The upstream is configured as `localhost`; its answers spell it
    // `LocalHost` too.
    let proxy = TestConfig::new()
        .trusting(&pki)
        .with(static_token("api", "API_TOKEN"))
        .with(stripped_route(
            &format!("{}/v1/", upstream.localhost_url()),
            "api",
            "/api",
        ))
        .env("API_TOKEN", "tok-123")
        .start()
        .await;
    let port = upstream.addr().port();
    let base = proxy.route_url(0);

    // Absolute (host and scheme in another case), with query and fragment;
    // Content-Location path-absolute.
    let r = answered_with(
        &proxy.client,
        &format!("{base}/api/old"),
        302,
        &format!("HTTPS://LocalHost:{port}/v1/new?x=1#top"),
        Some("/v1/old"),
    )
    .await;
    assert_eq!(r.status, 302);
    let location = r.header("location").expect("location").to_owned();
    assert_eq!(location, "/api/new?x=1#top");
    assert_eq!(r.header("content-location"), Some("/api/old"));

    // A redirect-following app resolves it against the URL it asked and
    // comes back through the route: the upstream sees its own URL, with
    // the credential.
    let followed = location.split('#').next().unwrap_or_default();
    let r = proxy.client.get(&format!("{base}{followed}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = upstream.last_request().expect("followed");
    assert_eq!(seen.path_and_query(), "/v1/new?x=1");
    assert_eq!(seen.header_all("authorization"), vec!["Bearer tok-123"]);

    // 201 Created names the new resource, path-absolute or absolute.
    for created in [
        "/v1/items/7".to_owned(),
        format!("https://localhost:{port}/v1/items/7"),
    ] {
        let r = answered_with(
            &proxy.client,
            &format!("{base}/api/items"),
            201,
            &created,
            None,
        )
        .await;
        assert_eq!(r.status, 201);
        assert_eq!(r.header("location"), Some("/api/items/7"), "{created}");
    }
    // The base itself, and the base with its trailing slash.
    assert_eq!(
        location_for(&proxy, "/api/x", "/v1").await.as_deref(),
        Some("/api")
    );
    assert_eq!(
        location_for(&proxy, "/api/x", &format!("https://localhost:{port}/v1/?q"))
            .await
            .as_deref(),
        Some("/api/?q")
    );

    // Anything not under the upstream's base passes as it is: other hosts
    // (another name of the same server too) and ports, plain http://, paths outside the base (`/v1beta` is not
    // under `/v1`), user information, relative references.
    for kept in [
        "https://elsewhere.example/v1/x".to_owned(),
        format!("https://localhost:{}/v1/x", port.wrapping_add(1)),
        format!("https://127.0.0.1:{port}/v1/x"),
        format!("http://localhost:{port}/v1/x"),
        format!("https://localhost:{port}/v1beta/x"),
        "/v1beta/x".to_owned(),
        "/other/x".to_owned(),
        format!("https://user@localhost:{port}/v1/x"),
        "next".to_owned(),
        "?page=2".to_owned(),
    ] {
        assert_eq!(
            location_for(&proxy, "/api/x", &kept).await.as_deref(),
            Some(kept.as_str()),
        );
    }
}

#[tokio::test]
async fn without_strip_prefix_only_urls_under_base_and_prefix_come_back() {
    // `/search/q` goes to `/api/search/q`: the upstream's `/api/search/r`
    // is the app's `/search/r`, and `/api/other` is no URL of this route.
    let pki = Arc::new(TestPki::new());
    let upstream = redirecting_upstream(&pki).await;
    let proxy = TestConfig::new()
        .trusting(&pki)
        .with(static_token("api", "API_TOKEN"))
        .with(route(&format!("{}/api", upstream.url()), "api").line(r#"path_prefix = "/search""#))
        .env("API_TOKEN", "tok-123")
        .start()
        .await;
    for (location, expected) in [
        ("/api/search/r?p=2", "/search/r?p=2"),
        ("/api/search", "/search"),
        ("/api/other", "/api/other"),
        ("/api/searching", "/api/searching"),
    ] {
        assert_eq!(
            location_for(&proxy, "/search/q", location).await.as_deref(),
            Some(expected),
            "{location}"
        );
    }
}

#[tokio::test]
async fn routes_on_one_listener_map_each_others_urls_longest_base_first() {
    // Three routes on one listener, to one upstream under three base paths
    // (one nested in another), with two credentials. A redirect from one
    // route's upstream to the base path of another route with the same
    // credential comes back as that route's path; a route with another
    // credential is never pointed at (an upstream must not steer the app to
    // where a credential it never had is injected).
    let pki = Arc::new(TestPki::new());
    let upstream = redirecting_upstream(&pki).await;
    let url = upstream.url();
    let proxy = TestConfig::new()
        .trusting(&pki)
        .with(static_token("one", "TOKEN_ONE"))
        .with(static_token("two", "TOKEN_TWO"))
        .with(stripped_route(&format!("{url}/v1"), "one", "/a"))
        .with(stripped_route(&format!("{url}/v2"), "one", "/b"))
        .with(stripped_route(&format!("{url}/v1/deep"), "two", "/c"))
        .env("TOKEN_ONE", "tok-one")
        .env("TOKEN_TWO", "tok-two")
        .start()
        .await;
    assert_eq!(proxy.route_addr(0), proxy.route_addr(2), "one listener");
    let port = upstream.addr().port();

    for (location, expected) in [
        (format!("https://127.0.0.1:{port}/v2/there"), "/b/there"),
        ("/v2/there".to_owned(), "/b/there"),
        // /c's deeper base is credential two's: /a's own path takes it.
        ("/v1/deep/x".to_owned(), "/a/deep/x"),
        ("/v1/deeper".to_owned(), "/a/deeper"),
        ("/v1/x".to_owned(), "/a/x"),
    ] {
        assert_eq!(
            location_for(&proxy, "/a/move", &location).await.as_deref(),
            Some(expected),
            "{location}"
        );
    }
    // From credential two's route, credential one's URLs stay as they are.
    for location in [
        "/v2/there".to_owned(),
        format!("https://127.0.0.1:{port}/v1/x"),
    ] {
        assert_eq!(
            location_for(&proxy, "/c/move", &location).await.as_deref(),
            Some(location.as_str()),
        );
    }
    assert_eq!(
        location_for(&proxy, "/c/move", "/v1/deep/y")
            .await
            .as_deref(),
        Some("/c/y")
    );

    let r = proxy.get("/b/there").await;
    assert_eq!(r.status, 200);
    let seen = upstream.last_request().expect("followed");
    assert_eq!(seen.path, "/v2/there");
    assert_eq!(seen.header_all("authorization"), vec!["Bearer tok-one"]);
}

#[tokio::test]
async fn a_tls_listener_gets_the_same_path() {
    // The rewritten reference is path-absolute: an app on an https://
    // listener resolves it against its own URL.
    let pki = Arc::new(TestPki::new());
    let upstream = redirecting_upstream(&pki).await;
    let proxy = TestConfig::new()
        .trusting(&pki)
        .with(static_token("api", "API_TOKEN"))
        .with(
            stripped_route(&format!("{}/v1", upstream.url()), "api", "/api")
                .line(&listen_tls(&pki)),
        )
        .env("API_TOKEN", "tok-123")
        .start()
        .await;
    let client = TestClient::trusting(&pki);
    let url = format!("https://localhost:{}/api/x", proxy.route_addr(0).port());
    let r = answered_with(&client, &url, 307, "/v1/y", None).await;
    assert_eq!(r.status, 307);
    assert_eq!(r.header("location"), Some("/api/y"));
}

#[tokio::test]
async fn an_inbenta_route_maps_its_apis_url_back() {
    let pki = Arc::new(TestPki::new());
    let upstream = redirecting_upstream(&pki).await;
    let behaviour = InbentaBehaviour {
        apis: BTreeMap::from([(
            "chatbot".to_owned(),
            format!("{}/prod/chatbot", upstream.url()),
        )]),
        auth_lifetime: Lifetime::Both(1200),
        refresh_lifetime: Lifetime::Both(1200),
        ..InbentaBehaviour::default()
    };
    let auth = InbentaServer::start_tls(behaviour, &pki).await;
    let proxy = TestConfig::new()
        .trusting(&pki)
        .with(inbenta("inbenta", &auth.url()))
        .with(inbenta_route("chatbot", "inbenta"))
        .env("INBENTA_API_KEY", "test-api-key")
        .env("INBENTA_SECRET", "test-secret")
        .start()
        .await;
    proxy.wait_for_tokens().await;
    let port = upstream.addr().port();
    for (location, expected) in [
        (
            format!("https://127.0.0.1:{port}/prod/chatbot/v1/next"),
            "/v1/next",
        ),
        ("/prod/chatbot/v1/next".to_owned(), "/v1/next"),
        ("/prod/other".to_owned(), "/prod/other"),
    ] {
        assert_eq!(
            location_for(&proxy, "/v1/conversation", &location)
                .await
                .as_deref(),
            Some(expected),
            "{location}"
        );
    }
}
