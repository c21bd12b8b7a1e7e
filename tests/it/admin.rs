//! The operator's view on the admin listener: the status page (`/`),
//! `/readyz` (every credential, and per route), `/metrics` in the format the
//! scraper asks for, renewal reasons, and the access log.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use sidekey::telemetry::settings::LogFormat;

use crate::support::config::{TestConfig, oauth2, route, static_token};
use crate::support::logs::{self, LogCapture};
use crate::support::metrics;
use crate::support::proxy::{ReqBody, TestProxy, TestResponse, body_empty, request_with};
use crate::support::tls::TestPki;
use crate::support::token_servers::{OAuthBehaviour, OAuthServer};
use crate::support::upstream::{Reply, Upstream, UpstreamOpts, closed_port};

/// `GET` `path` on the admin listener with `headers`.
async fn admin_get_with(proxy: &TestProxy, path: &str, headers: &[(&str, &str)]) -> TestResponse {
    let body: ReqBody = body_empty();
    let url = format!("{}{path}", proxy.admin_url());
    proxy
        .client
        .send(request_with(Method::GET, &url, headers, body))
        .await
}

/// An OAuth credential `pliant` that works, one `down` whose token endpoint
/// refuses connections, and a route to each (`pliant-api`, `down-api`).
async fn two_credentials(pki: &TestPki, server: &OAuthServer, upstream: &Upstream) -> TestProxy {
    let client = OAuthBehaviour::default();
    TestConfig::new()
        .admin()
        .trusting(pki)
        .with(
            oauth2("pliant", &format!("{}/oauth/token", server.url()))
                .line("allow_insecure_http = true"),
        )
        .with(
            oauth2("down", &format!("http://{}/oauth/token", closed_port()))
                .line("allow_insecure_http = true"),
        )
        .with(route(&upstream.url(), "pliant").line(r#"name = "pliant-api""#))
        .with(
            route(&upstream.url(), "down")
                .line(r#"name = "down-api""#)
                .line(r#"path_prefix = "/down""#),
        )
        .env("CLIENT_ID", &client.client_id)
        .env("CLIENT_SECRET", &client.client_secret)
        .start()
        .await
}

#[tokio::test]
async fn readyz_lists_every_credential_with_its_state_and_expiry() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let proxy = two_credentials(&pki, &server, &upstream).await;
    assert_eq!(proxy.get("/warm").await.status, 200, "pliant has its token");

    let ready = proxy.admin_get("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = ready.json();
    assert_eq!(body["ready"], false);
    let credentials = body["credentials"].as_array().expect("credentials");
    let names: Vec<&str> = credentials
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["down", "pliant"],
        "every credential, by name: {body}"
    );
    let down = &credentials[0];
    assert_eq!(down["ready"], false);
    assert!(
        down["reason"].as_str().unwrap().contains("never obtained"),
        "{down}"
    );
    assert!(down.get("expires_in_s").is_none(), "{down}");
    let pliant = &credentials[1];
    assert_eq!(pliant["ready"], true, "{pliant}");
    assert!(pliant.get("reason").is_none(), "{pliant}");
    let left = pliant["expires_in_s"].as_f64().expect("expires_in_s");
    assert!(left > 80_000.0 && left <= 86_400.0, "{left}");
}

#[tokio::test]
async fn metrics_are_served_in_the_format_the_scraper_asks_for() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = TestConfig::new()
        .admin()
        .trusting(&pki)
        .with(static_token("api", "TOKEN"))
        .with(route(&upstream.url(), "api").line(r#"name = "api""#))
        .env("TOKEN", "secret-token-value")
        .start()
        .await;
    assert_eq!(proxy.get("/a").await.status, 200);

    // No Accept (curl, older scrapers): Prometheus text 0.0.4, which has
    // no `# EOF` and names a counter's samples in its `# TYPE` line.
    let plain = proxy.admin_get("/metrics").await;
    assert_eq!(
        plain.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = plain.text();
    assert!(!text.contains("# EOF"), "{text}");
    assert!(!text.contains("secret-token-value"));
    assert!(
        text.contains("# TYPE sidekey_requests_total counter\n"),
        "{text}"
    );
    assert!(text.contains("# HELP sidekey_requests_total "), "{text}");
    assert!(
        text.contains("# TYPE sidekey_request_duration_seconds histogram\n"),
        "{text}"
    );
    assert!(
        text.contains(r#"sidekey_requests_total{route="api",status="200"} 1"#),
        "{text}"
    );
    // Every sample belongs to the family its `# TYPE` line announced.
    let mut family = "";
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            family = rest.split(' ').next().unwrap();
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(
                name.starts_with(family),
                "{name} under # TYPE {family}:\n{text}"
            );
        }
    }

    // Prometheus asks for OpenMetrics first.
    let prometheus_accept = "application/openmetrics-text;version=1.0.0;q=0.5,\
        application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
    let open = admin_get_with(&proxy, "/metrics", &[("accept", prometheus_accept)]).await;
    assert_eq!(
        open.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = open.text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("# TYPE sidekey_requests counter\n"), "{text}");

    // Text preferred over OpenMetrics: text.
    let prefers_text = admin_get_with(
        &proxy,
        "/metrics",
        &[(
            "accept",
            "application/openmetrics-text;q=0.3, text/plain;q=0.9",
        )],
    )
    .await;
    assert!(
        prefers_text
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
}

#[tokio::test]
async fn status_page_shows_credentials_and_routes_never_tokens() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let client = OAuthBehaviour::default();
    let proxy = TestConfig::new()
        .admin()
        .trusting(&pki)
        .with(
            oauth2("pliant", &format!("{}/oauth/token", server.url()))
                .line("allow_insecure_http = true"),
        )
        .with(static_token(r#""<b>legacy&co</b>""#, "TOKEN"))
        .with(route(&upstream.url(), "pliant").line(r#"name = "pliant-api""#))
        .with(
            route(&upstream.url(), "<b>legacy&co</b>")
                .line(r#"name = "<i>old\"route</i>""#)
                .line(r#"path_prefix = "/legacy""#),
        )
        .env("CLIENT_ID", &client.client_id)
        .env("CLIENT_SECRET", &client.client_secret)
        .env("TOKEN", "static-secret-token")
        .start()
        .await;
    for _ in 0..3 {
        assert_eq!(proxy.get("/a").await.status, 200);
    }

    let page = proxy.admin_get("/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = page.text();
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(
        html.contains(r#"<meta http-equiv="refresh""#),
        "refreshes itself"
    );
    // Credentials with their state and type; routes with their credential.
    assert!(html.contains("pliant"), "{html}");
    assert!(html.contains("pliant-api"), "{html}");
    assert!(html.contains("oauth2"), "{html}");
    assert!(html.contains("ready"), "{html}");
    assert!(
        html.contains("startup"),
        "the first renewal's reason: {html}"
    );
    assert!(html.contains(env!("CARGO_PKG_VERSION")), "version: {html}");
    assert!(html.contains("test.toml"), "the config file: {html}");
    // Names from the configuration are escaped, never markup.
    assert!(html.contains("&lt;b&gt;legacy&amp;co&lt;/b&gt;"), "{html}");
    assert!(html.contains("&lt;i&gt;old&quot;route&lt;/i&gt;"), "{html}");
    assert!(!html.contains("<b>legacy"), "{html}");
    assert!(!html.contains("<i>old"), "{html}");
    // No token, no secret.
    let issued = server.requests().len();
    assert!(issued >= 1);
    for n in 1..=issued {
        let token = format!("oauth-token-{n}");
        assert!(!html.contains(&token), "{token} on the page");
    }
    assert!(!html.contains("oauth-token"), "{html}");
    assert!(!html.contains("static-secret-token"), "{html}");
    assert!(!html.contains(&client.client_secret), "{html}");
}

#[tokio::test]
async fn readyz_answers_per_route_for_that_routes_credential_only() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let proxy = two_credentials(&pki, &server, &upstream).await;
    proxy.wait_for_token("pliant").await;

    // The app uses only pliant-api: the pod stays ready while `down` is down.
    let ready = proxy.admin_get("/readyz?route=pliant-api").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    let body = ready.json();
    assert_eq!(body["ready"], true);
    assert_eq!(body["credentials"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["credentials"][0]["name"], "pliant");
    assert_eq!(body["routes"][0]["name"], "pliant-api");
    assert_eq!(body["routes"][0]["credential"], "pliant");

    let down = proxy.admin_get("/readyz?route=down-api").await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(down.json()["credentials"][0]["name"], "down");
    let both = proxy
        .admin_get("/readyz?route=pliant-api&route=down-api")
        .await;
    assert_eq!(both.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(both.json()["credentials"].as_array().unwrap().len(), 2);

    // Route names are URL-encoded in the query like any value.
    let encoded = proxy.admin_get("/readyz?route=pliant%2Dapi").await;
    assert_eq!(encoded.status, StatusCode::OK);

    let unknown = proxy.admin_get("/readyz?route=nope").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.header("content-type"), Some("application/json"));
    assert_eq!(unknown.sidekey_error(), Some("unknown_route"));
    assert_eq!(unknown.json()["error"], "unknown_route");
    assert!(unknown.json()["message"].as_str().unwrap().contains("nope"));
}

#[tokio::test]
async fn renewals_carry_their_reason_in_metrics_logs_and_on_the_status_page() {
    let (logs, _guard) = logs::capture();
    let pki = Arc::new(TestPki::new());
    // The first token is rejected; later ones are accepted.
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).respond(|request| {
        match request.header("authorization") {
            Some("Bearer oauth-token-1") => Reply::status(401),
            _ => Reply::echo(),
        }
    }))
    .await;
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let client = OAuthBehaviour::default();
    let config = |scope: &str| {
        TestConfig::new()
            .admin()
            .trusting(&pki)
            .with(
                oauth2("pliant", &format!("{}/oauth/token", server.url()))
                    .line("allow_insecure_http = true")
                    .line(&format!(r#"scope = "{scope}""#)),
            )
            .with(route(&upstream.url(), "pliant").line(r#"name = "api""#))
            .env("CLIENT_ID", &client.client_id)
            .env("CLIENT_SECRET", &client.client_secret)
    };
    let mut proxy = config("read").start().await;

    // Token 1 at start-up, rejected; token 2 renewed on that rejection.
    let response = proxy.get("/x").await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    let page = proxy.admin_get("/").await.text();
    assert!(page.contains("rejected"), "last renewal's reason: {page}");

    // A reload that changes the credential: token 3 for the new engine.
    proxy
        .handle
        .reload(config("write").checked().unwrap(), Duration::from_secs(5))
        .await
        .expect("reload accepted");
    assert_eq!(server.calls(), 3, "{}", logs.text());
    let page = proxy.admin_get("/").await.text();
    assert!(page.contains("reload"), "last renewal's reason: {page}");
    assert!(page.contains("accepted"), "the last reload: {page}");

    let text = proxy.admin_get("/metrics").await.text();
    for reason in ["startup", "rejected", "reload"] {
        let labels = [
            ("credential", "pliant"),
            ("outcome", "success"),
            ("reason", reason),
        ];
        assert_eq!(
            metrics::sum(&text, "sidekey_token_refresh_total", &labels),
            1.0,
            "{reason}: {text}"
        );
    }
    for reason in ["startup", "rejected", "reload"] {
        let lines = logs.lines_with(&["obtained token", &format!("reason={reason}")]);
        assert_eq!(lines.len(), 1, "{reason}:\n{}", logs.text());
    }
}

/// A static credential `api` (token `access-secret-token`) and a route
/// `api` under `/api`, with `[log]` lines `log`.
async fn access_log_proxy(upstream: &Upstream, pki: &TestPki, log: &str) -> TestProxy {
    TestConfig::new()
        .trusting(pki)
        .line("[log]", log)
        .with(static_token("api", "TOKEN"))
        .with(
            route(&upstream.url(), "api")
                .line(r#"name = "api""#)
                .line(r#"path_prefix = "/api""#),
        )
        .env("TOKEN", "access-secret-token")
        .start()
        .await
}

#[tokio::test]
async fn access_log_writes_one_line_per_request_without_query_or_header_values() {
    let (logs, _guard) = logs::capture();
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = access_log_proxy(&upstream, &pki, "access = true").await;
    let url = |path: &str| format!("{}{path}", proxy.route_url(0));

    let first = proxy
        .client
        .send(request_with(
            Method::GET,
            &url("/api/items/1?api_key=query-secret"),
            &[("x-app-secret", "header-secret")],
            body_empty(),
        ))
        .await;
    assert_eq!(first.status, StatusCode::OK);
    let second = proxy.get("/api/items/2").await;
    assert_eq!(second.status, StatusCode::OK);
    let refused = proxy.get("/elsewhere").await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);

    let lines = logs.wait_for_lines(&["sidekey::access"], 3).await;
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let line = |path: &str| {
        lines
            .iter()
            .find(|line| line.contains(&format!("path=\"{path}\" ")))
            .unwrap_or_else(|| panic!("no line for {path}: {lines:#?}"))
    };
    let one = line("/api/items/1");
    for field in [
        "route=\"api\"",
        "method=GET",
        "status=200",
        &format!("bytes={}", first.body.len()),
        "upstream_ms=",
        "duration_ms=",
        "reused=false",
    ] {
        assert!(one.contains(field), "{field} in {one}");
    }
    let two = line("/api/items/2");
    assert!(two.contains("reused=true"), "the pooled connection: {two}");
    assert!(
        two.contains(&format!("bytes={}", second.body.len())),
        "{two}"
    );
    let none = line("/elsewhere");
    assert!(
        none.contains("route=\"none\"") && none.contains("status=404"),
        "{none}"
    );
    assert!(
        none.contains(&format!("bytes={}", refused.body.len())),
        "{none}"
    );
    assert!(
        !none.contains("upstream_ms"),
        "no upstream was asked: {none}"
    );
    for secret in [
        "query-secret",
        "api_key",
        "header-secret",
        "access-secret-token",
    ] {
        assert!(
            !logs.text().contains(secret),
            "{secret} logged:\n{}",
            logs.text()
        );
    }
}

#[tokio::test]
async fn access_log_is_off_by_default() {
    let (logs, _guard) = logs::capture();
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = access_log_proxy(&upstream, &pki, r#"level = "info""#).await;
    assert_eq!(proxy.get("/api/x").await.status, StatusCode::OK);
    assert_eq!(proxy.get("/elsewhere").await.status, StatusCode::NOT_FOUND);
    drop(proxy);
    assert!(
        logs.lines_with(&["sidekey::access"]).is_empty(),
        "{}",
        logs.text()
    );
}

#[tokio::test]
async fn access_log_follows_the_json_format_and_passes_a_warn_level() {
    // What `sidekey run` installs for `level = "warn"`, `format = "json"`.
    let filter = sidekey::telemetry::with_access_lines("warn".parse().unwrap());
    let (logs, _guard) = LogCapture::install_with(LogFormat::Json, filter, Duration::from_secs(60));
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = access_log_proxy(
        &upstream,
        &pki,
        "level = \"warn\"\nformat = \"json\"\naccess = true",
    )
    .await;
    let response = proxy.get("/api/json?q=1").await;
    assert_eq!(response.status, StatusCode::OK);

    let lines = logs.wait_for_lines(&["\"access\""], 1).await;
    let line: serde_json::Value = serde_json::from_str(&lines[0]).expect("a JSON line");
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["message"], "access");
    assert_eq!(line["route"], "api");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/api/json");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], response.body.len() as u64);
    assert_eq!(line["reused"], false);
    assert!(line["upstream_ms"].as_f64().unwrap() >= 0.0, "{line}");
    assert!(
        logs.lines_with(&["\"INFO\""]).len() == 1,
        "only the access line passes warn: {}",
        logs.text()
    );
}

#[tokio::test]
async fn access_log_writes_one_line_for_a_request_retried_after_a_rejection() {
    let (logs, _guard) = logs::capture();
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).respond(|request| {
        match request.header("authorization") {
            Some("Bearer oauth-token-1") => Reply::status(401),
            _ => Reply::echo(),
        }
    }))
    .await;
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let client = OAuthBehaviour::default();
    let proxy = TestConfig::new()
        .trusting(&pki)
        .line("[log]", "access = true")
        .with(
            oauth2("pliant", &format!("{}/oauth/token", server.url()))
                .line("allow_insecure_http = true"),
        )
        .with(route(&upstream.url(), "pliant").line(r#"name = "api""#))
        .env("CLIENT_ID", &client.client_id)
        .env("CLIENT_SECRET", &client.client_secret)
        .start()
        .await;
    let response = proxy.get("/x").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(upstream.request_count(), 2, "rejected, then retried");
    let lines = logs.wait_for_lines(&["sidekey::access"], 1).await;
    drop(proxy);
    let lines: Vec<String> = lines
        .into_iter()
        .chain(logs.lines_with(&["sidekey::access"]))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(lines.len(), 1, "the app got one answer: {lines:#?}");
    assert!(lines[0].contains("status=200"), "{}", lines[0]);
}

#[tokio::test]
async fn status_page_shows_a_failing_credential_its_error_and_backoff() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let proxy = two_credentials(&pki, &server, &upstream).await;
    proxy.wait_for_token("pliant").await;
    // `down` has tried once (connection refused) and waits to retry.
    let credentials = proxy.handle.credentials();
    let down = credentials.get("down").unwrap();
    let _ = down.wait_for_token(Duration::from_secs(5)).await;
    let report = down.report();
    assert_eq!(report.state.as_str(), "unavailable");
    assert!(report.failures >= 1, "{report:?}");
    assert!(report.last_attempt.as_ref().is_some_and(|a| !a.succeeded));

    let html = proxy.admin_get("/").await.text();
    assert!(
        html.contains(r#"<span class="s unavailable">unavailable</span>"#),
        "{html}"
    );
    assert!(html.contains("failed</span> · startup"), "{html}");
    assert!(html.contains("never obtained"), "{html}");
    assert!(html.contains("Connection refused"), "{html}");
    assert!(html.contains("in a row"), "{html}");
    assert!(
        html.contains("(backoff)") || html.contains("in flight"),
        "the next attempt: {html}"
    );
    assert!(html.contains("1 credential(s) without a token"), "{html}");
    assert!(html.contains("down-api"), "{html}");
    assert!(
        !html.contains(&OAuthBehaviour::default().client_secret),
        "{html}"
    );
}
