//! Route answers whose `Link` fields (RFC 8288) name the upstream point
//! back at sidekey, as `Location` does (`route_redirects`): a paginated
//! API's `<https://host/base/items?page=2>; rel="next"` reaches the app as
//! `</prefix/items?page=2>; rel="next"`, so an app following `rel="next"`
//! comes back through the route and gets its credential injected instead
//! of going to the upstream without it. Every `<…>` of every `Link` field
//! is mapped; parameters, other hosts' and other credentials' URLs, and
//! values that do not parse pass as they are.
//!
//! The upstreams here answer `200` with one `Link` field for each
//! `x-answer-link` header of the request, so each case is one request.

use std::sync::Arc;

use crate::support::config::{TestConfig, route, static_token, stripped_route};
use crate::support::proxy::{TestClient, TestResponse, body_empty, request_with};
use crate::support::tls::TestPki;
use crate::support::upstream::{RecordedRequest, Reply, Upstream, UpstreamOpts};
use http::Method;

/// A TLS upstream that answers a request carrying `x-answer-link` with a
/// `200` and one `Link` field per such header, and echoes every other.
async fn linking_upstream(pki: &Arc<TestPki>) -> Upstream {
    Upstream::start(UpstreamOpts::tls(pki).respond(|request: &RecordedRequest| {
        let links = request.header_all("x-answer-link");
        if links.is_empty() {
            return Reply::echo();
        }
        links
            .iter()
            .fold(Reply::status(200), |reply, link| reply.header("link", link))
    }))
    .await
}

/// Ask `url` with the upstream told to answer with the `Link` fields
/// `links`.
async fn answered_with(client: &TestClient, url: &str, links: &[&str]) -> TestResponse {
    let headers: Vec<(&str, &str)> = links.iter().map(|link| ("x-answer-link", *link)).collect();
    let r = client
        .send(request_with(Method::GET, url, &headers, body_empty()))
        .await;
    assert_eq!(r.status, 200, "{links:?}: {}", r.text());
    r
}

/// Every `Link` field the app got, in order.
fn links(r: &TestResponse) -> Vec<String> {
    r.headers
        .get_all("link")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

#[tokio::test]
async fn pagination_links_under_a_prefix_and_base_path_point_back_at_the_route() {
    let pki = Arc::new(TestPki::new());
    let upstream = linking_upstream(&pki).await;
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
    let url = format!("{}/api/items", proxy.route_url(0));
    let ask = |links: Vec<String>| {
        let client = &proxy.client;
        let url = url.clone();
        async move {
            let links: Vec<&str> = links.iter().map(String::as_str).collect();
            answered_with(client, &url, &links).await
        }
    };

    // Several links in one field: absolute (scheme and host in another
    // case) and path-absolute, parameters kept as sent.
    let r = ask(vec![format!(
        "<HTTPS://LocalHost:{port}/v1/items?page=2&per_page=50>; rel=\"next\", \
         </v1/items?page=9>; rel=\"last\";title=\"Last, <9>\""
    )])
    .await;
    assert_eq!(
        links(&r),
        vec![
            "</api/items?page=2&per_page=50>; rel=\"next\", \
             </api/items?page=9>; rel=\"last\";title=\"Last, <9>\""
        ]
    );

    // Across two fields: both mapped, both kept, in order.
    let r = ask(vec![
        format!("<https://localhost:{port}/v1/items?page=1>; rel=\"first\""),
        format!("<https://localhost:{port}/v1/items?page=3>;rel=next"),
    ])
    .await;
    assert_eq!(
        links(&r),
        vec![
            "</api/items?page=1>; rel=\"first\"",
            "</api/items?page=3>;rel=next"
        ]
    );

    // Another host, another port, plain http://, a path outside the base and
    // a relative reference pass as they are, next to one that is mapped.
    for kept in [
        "<https://elsewhere.example/v1/items?page=2>; rel=\"next\"".to_owned(),
        format!(
            "<https://localhost:{}/v1/items>; rel=\"next\"",
            port.wrapping_add(1)
        ),
        format!("<http://localhost:{port}/v1/items>; rel=\"next\""),
        "</v1beta/items>; rel=\"next\"".to_owned(),
        "<?page=2>; rel=\"next\"".to_owned(),
    ] {
        let r = ask(vec![format!("{kept}, </v1/items?page=2>; rel=\"next\"")]).await;
        assert_eq!(
            links(&r),
            vec![format!("{kept}, </api/items?page=2>; rel=\"next\"")]
        );
    }

    // Values that do not parse as links pass whole, never half rewritten.
    for malformed in [
        "</v1/items?page=2; rel=\"next\"",
        "</v1/items?page=2>; title=\"open, </v1/x>; rel=\"next\"",
        "/v1/items?page=2; rel=\"next\"",
        "</v1/items?page=2> rel=\"next\"",
        "</v1/a>; rel=\"next\" </v1/b>; rel=\"last\"",
    ] {
        let r = ask(vec![malformed.to_owned()]).await;
        assert_eq!(links(&r), vec![malformed], "{malformed}");
    }
}

#[tokio::test]
async fn without_strip_prefix_links_under_base_and_prefix_come_back() {
    // `/search/q` goes to `/api/search/q`: the upstream's `/api/search/…`
    // is the app's `/search/…`; `/api/other` is no URL of this route.
    let pki = Arc::new(TestPki::new());
    let upstream = linking_upstream(&pki).await;
    let proxy = TestConfig::new()
        .trusting(&pki)
        .with(static_token("api", "API_TOKEN"))
        .with(route(&format!("{}/api", upstream.url()), "api").line(r#"path_prefix = "/search""#))
        .env("API_TOKEN", "tok-123")
        .start()
        .await;
    let url = format!("{}/search/q", proxy.route_url(0));
    let r = answered_with(
        &proxy.client,
        &url,
        &["</api/search/q?page=2>; rel=\"next\", </api/other>; rel=\"help\""],
    )
    .await;
    assert_eq!(
        links(&r),
        vec!["</search/q?page=2>; rel=\"next\", </api/other>; rel=\"help\""]
    );
}

#[tokio::test]
async fn a_link_to_another_credentials_route_passes_as_it_is() {
    // Two routes on one listener, one upstream under two base paths, two
    // credentials: a link into the other credential's route would steer
    // the app to where a credential its request never had is injected.
    let pki = Arc::new(TestPki::new());
    let upstream = linking_upstream(&pki).await;
    let url = upstream.url();
    let port = upstream.addr().port();
    let proxy = TestConfig::new()
        .trusting(&pki)
        .with(static_token("one", "TOKEN_ONE"))
        .with(static_token("two", "TOKEN_TWO"))
        .with(stripped_route(&format!("{url}/v1"), "one", "/a"))
        .with(stripped_route(&format!("{url}/v2"), "two", "/b"))
        .env("TOKEN_ONE", "tok-one")
        .env("TOKEN_TWO", "tok-two")
        .start()
        .await;
    assert_eq!(proxy.route_addr(0), proxy.route_addr(1), "one listener");
    let r = answered_with(
        &proxy.client,
        &format!("{}/a/items", proxy.route_url(0)),
        &[&format!(
            "</v1/items?page=2>; rel=\"next\", \
             <https://127.0.0.1:{port}/v2/secrets>; rel=\"related\", </v2/x>; rel=\"up\""
        )],
    )
    .await;
    assert_eq!(
        links(&r),
        vec![format!(
            "</a/items?page=2>; rel=\"next\", \
             <https://127.0.0.1:{port}/v2/secrets>; rel=\"related\", </v2/x>; rel=\"up\""
        )]
    );
}

/// The `rel="next"` target of the `Link` fields in `r`, if any (enough
/// parsing for the links this test's upstream writes).
fn next_link(r: &TestResponse) -> Option<String> {
    links(r)
        .iter()
        .flat_map(|field| field.split(','))
        .find_map(|link| {
            let (target, params) = link.trim().split_once(';')?;
            params
                .contains("rel=\"next\"")
                .then(|| target.trim_matches(['<', '>']).to_owned())
        })
}

#[tokio::test]
async fn an_app_following_next_links_stays_behind_sidekey() {
    // A paginated API that answers only requests carrying its token, with
    // absolute `next` links to itself, three pages long. An app that
    // follows them reads every page through sidekey; before, the second
    // request went to the upstream directly and got 401.
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).respond(|request| {
        if request.header("authorization") != Some("Bearer tok-123") {
            return Reply::status(401);
        }
        let host = request.header("host").unwrap_or_default().to_owned();
        let page: u32 = request
            .query
            .as_deref()
            .and_then(|q| q.strip_prefix("page="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let mut reply = Reply::bytes(200, format!("page {page}"));
        if page < 3 {
            let next = page + 1;
            reply = reply.header(
                "link",
                &format!(
                    "<https://{host}/v1/items?page={next}>; rel=\"next\", \
                     <https://{host}/v1/items?page=3>; rel=\"last\""
                ),
            );
        }
        reply
    }))
    .await;
    let proxy = TestConfig::new()
        .trusting(&pki)
        .with(static_token("api", "API_TOKEN"))
        .with(stripped_route(
            &format!("{}/v1", upstream.localhost_url()),
            "api",
            "/api",
        ))
        .env("API_TOKEN", "tok-123")
        .start()
        .await;
    let base = proxy.route_url(0);
    let mut url = format!("{base}/api/items");
    let mut pages = Vec::new();
    for _ in 0..5 {
        let r = proxy.client.get(&url).await;
        assert_eq!(r.status, 200, "{url}: {}", r.text());
        pages.push(r.text());
        let Some(next) = next_link(&r) else { break };
        // Resolved against the URL asked, as every client does.
        assert!(next.starts_with("/api/items?page="), "{next}");
        url = format!("{base}{next}");
    }
    assert_eq!(pages, ["page 1", "page 2", "page 3"]);
    let seen: Vec<String> = upstream
        .requests()
        .iter()
        .map(RecordedRequest::path_and_query)
        .collect();
    assert_eq!(seen, ["/v1/items", "/v1/items?page=2", "/v1/items?page=3"]);
}
