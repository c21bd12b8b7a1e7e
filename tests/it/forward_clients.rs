//! The forward proxy as real HTTP_PROXY clients use it: the bytes curl,
//! wget, Python `requests`, Node and Java's `HttpClient` send to a proxy
//! (captured from each), keep-alive across hosts, and the answers they get
//! to what sidekey refuses.

use std::sync::Arc;
use std::time::Duration;

use crate::support::config::{TestConfig, forward_proxy, route, static_token};
use crate::support::proxy::TestProxy;
use crate::support::raw::{RawConn, RawResponse};
use crate::support::tls::TestPki;
use crate::support::upstream::{Reply, Upstream, UpstreamOpts};

const TOKEN_A: &str = "tok-host-a";
const TOKEN_B: &str = "tok-host-b";
const WITHIN: Duration = Duration::from_secs(5);

/// Two upstreams, `localhost:A` with credential `a` and `localhost:B`
/// with credential `b`, behind one forward proxy.
struct Two {
    a: Upstream,
    b: Upstream,
    proxy: TestProxy,
}

impl Two {
    async fn start() -> Two {
        Two::start_with(|opts| opts).await
    }

    /// Upstream A started with `a_opts` applied to its options.
    async fn start_with(a_opts: impl FnOnce(UpstreamOpts) -> UpstreamOpts) -> Two {
        Two::start_full(a_opts, "b").await
    }

    /// Upstream A started with `a_opts` applied to its options; B's host
    /// with credential `b_credential` (`"a"` or `"b"`).
    async fn start_full(
        a_opts: impl FnOnce(UpstreamOpts) -> UpstreamOpts,
        b_credential: &str,
    ) -> Two {
        let pki = Arc::new(TestPki::new());
        let a = Upstream::start(a_opts(UpstreamOpts::tls(&pki))).await;
        let b = Upstream::start(UpstreamOpts::tls(&pki)).await;
        let (host_a, host_b) = (
            format!("localhost:{}", a.addr().port()),
            format!("localhost:{}", b.addr().port()),
        );
        let proxy = TestConfig::new()
            .trusting(&pki)
            .with(static_token("a", "TOKEN_A"))
            .with(static_token("b", "TOKEN_B"))
            .with(forward_proxy(&[(&host_a, "a"), (&host_b, b_credential)]))
            .env("TOKEN_A", TOKEN_A)
            .env("TOKEN_B", TOKEN_B)
            .start()
            .await;
        Two { a, b, proxy }
    }

    fn pa(&self) -> u16 {
        self.a.addr().port()
    }

    fn pb(&self) -> u16 {
        self.b.addr().port()
    }

    async fn conn(&self) -> RawConn {
        RawConn::connect(self.proxy.forward_proxy_addr()).await
    }
}

/// Send `bytes` and read one response.
async fn ask(conn: &mut RawConn, bytes: &str) -> RawResponse {
    conn.send(bytes.as_bytes()).await.expect("send");
    conn.read_response(WITHIN)
        .await
        .unwrap_or_else(|| panic!("no answer to {bytes:?}"))
}

/// Send `request` on a fresh connection: the one answer, which must be
/// sidekey's own refusal with `status` and `code`; its message.
async fn refusal(two: &Two, request: &str, status: u16, code: &str) -> String {
    let mut conn = two.conn().await;
    let r = ask(&mut conn, request).await;
    assert_eq!(r.status, status, "{request:?}: {}", r.body_text());
    assert_eq!(r.header("x-sidekey-error"), Some(code), "{request:?}");
    r.body_text()
}

#[tokio::test]
async fn requests_that_are_no_http_url_are_told_what_to_send_instead() {
    let two = Two::start().await;
    let pa = two.pa();
    // An app that uses the forward proxy's address as its base URL.
    let origin = refusal(
        &two,
        &format!("GET /v1/items HTTP/1.1\r\nHost: localhost:{pa}\r\n\r\n"),
        400,
        "bad_request",
    )
    .await;
    assert!(
        origin.contains("HTTP_PROXY") && origin.contains("http://HOST/v1/items"),
        "{origin}"
    );
    // An `https://` URL written in absolute form (clients send CONNECT for
    // those; some write the URL itself).
    let https = refusal(
        &two,
        &format!("GET https://localhost:{pa}/v1/items HTTP/1.1\r\nHost: localhost:{pa}\r\n\r\n"),
        400,
        "bad_request",
    )
    .await;
    assert!(
        https.contains(&format!("http://localhost:{pa}/v1/items")),
        "{https}"
    );
    // Python `requests` asks for https:// URLs with this CONNECT.
    let connect = refusal(
        &two,
        "CONNECT api.example.com:443 HTTP/1.0\r\n\r\n",
        400,
        "bad_request",
    )
    .await;
    assert!(connect.contains("http://api.example.com/"), "{connect}");
    assert_eq!(two.a.connections() + two.b.connections(), 0);
}

#[tokio::test]
async fn one_app_connection_to_two_hosts_carries_each_hosts_token_to_that_host_only() {
    let two = Two::start().await;
    let (pa, pb) = (two.pa(), two.pb());
    let mut conn = two.conn().await;
    // curl's bytes (`curl -x http://u:p@sidekey … URL_A URL_B`): one
    // connection, Proxy-Authorization and Proxy-Connection on each request;
    // the second names host A in `Host` (Node's `http` writes the proxy's
    // own address there), the target decides (RFC 9112 §3.2.2).
    let hop = "Proxy-Authorization: Basic dTpw\r\nProxy-Connection: Keep-Alive\r\n";
    for (target, host) in [
        (
            format!("http://localhost:{pa}/1"),
            format!("localhost:{pa}"),
        ),
        (
            format!("http://localhost:{pb}/2"),
            format!("localhost:{pa}"),
        ),
        (
            format!("http://LOCALHOST:{pa}/3"),
            format!("localhost:{pb}"),
        ),
    ] {
        let r = ask(
            &mut conn,
            &format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{hop}Accept: */*\r\n\r\n"),
        )
        .await;
        assert_eq!(r.status, 200, "{target}: {}", r.body_text());
    }
    for (upstream, port, token, paths) in [
        (&two.a, pa, TOKEN_A, vec!["/1", "/3"]),
        (&two.b, pb, TOKEN_B, vec!["/2"]),
    ] {
        let seen = upstream.requests();
        assert_eq!(
            seen.iter().map(|r| r.path_and_query()).collect::<Vec<_>>(),
            paths
        );
        for request in seen {
            assert_eq!(
                request.header_all("authorization"),
                vec![format!("Bearer {token}")]
            );
            assert_eq!(
                request.header("host"),
                Some(format!("localhost:{port}").as_str())
            );
            assert_eq!(request.header("proxy-authorization"), None);
            assert_eq!(request.header("proxy-connection"), None);
        }
    }
}

/// Upstream A's answers: redirects to its own `https://` URLs, to B's
/// (port in `x-b-port`), to an unlisted host and a relative one.
fn redirecting(opts: UpstreamOpts) -> UpstreamOpts {
    opts.respond(|request| match request.path.as_str() {
        "/old" => {
            let port = request
                .header("host")
                .and_then(|host| host.rsplit(':').next())
                .unwrap_or_default()
                .to_owned();
            Reply::status(302)
                .header("location", &format!("https://LocalHost:{port}/new?x=1"))
                .header("content-location", &format!("https://localhost:{port}/old"))
        }
        "/to-b" => {
            let b = request.header("x-b-port").unwrap_or_default().to_owned();
            Reply::status(307).header("location", &format!("https://localhost:{b}/from-a"))
        }
        "/pages" => {
            let port = request
                .header("host")
                .and_then(|host| host.rsplit(':').next())
                .unwrap_or_default()
                .to_owned();
            Reply::status(200).header(
                "link",
                &format!(
                    "<https://LocalHost:{port}/pages?page=2>; rel=\"next\", \
                     <https://elsewhere.example/x>; rel=\"alternate\", </pages?page=9>; rel=last"
                ),
            )
        }
        "/away" => Reply::status(302).header("location", "https://elsewhere.example/x"),
        "/relative" => Reply::status(302).header("location", "/new"),
        _ => Reply::echo(),
    })
}

#[tokio::test]
async fn an_upstream_redirect_to_a_listed_https_url_is_followed_through_the_proxy() {
    // The upstream (reached over https://) redirects to absolute https://
    // URLs, its own (as APIs behind a load balancer do) or another listed
    // host's of the same credential. Handed on as they are, a
    // redirect-following app asks for https:// through the proxy (CONNECT)
    // and fails; rewritten to http://, it comes back through sidekey and
    // gets its token injected again.
    let two = Two::start_full(redirecting, "a").await;
    let pa = two.pa();
    let mut conn = two.conn().await;
    let get = |target: String| format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");

    let r = ask(&mut conn, &get(format!("http://localhost:{pa}/old"))).await;
    assert_eq!(r.status, 302);
    let location = r.header("location").expect("location").to_owned();
    assert_eq!(location, format!("http://LocalHost:{pa}/new?x=1"));
    assert_eq!(
        r.header("content-location"),
        Some(format!("http://localhost:{pa}/old").as_str())
    );
    let r = ask(&mut conn, &get(location)).await;
    assert_eq!(r.status, 200, "{}", r.body_text());
    let seen = two.a.last_request().expect("followed");
    assert_eq!(seen.path_and_query(), "/new?x=1");
    assert_eq!(
        seen.header_all("authorization"),
        vec![format!("Bearer {TOKEN_A}")]
    );

    // A redirect to another listed host of the same credential: followed
    // through sidekey, it reaches that host with that credential's token.
    let pb = two.pb();
    let to_b =
        format!("GET http://localhost:{pa}/to-b HTTP/1.1\r\nHost: x\r\nX-B-Port: {pb}\r\n\r\n");
    let r = ask(&mut conn, &to_b).await;
    let location = r.header("location").expect("location").to_owned();
    assert_eq!(location, format!("http://localhost:{pb}/from-a"));
    let r = ask(&mut conn, &get(location)).await;
    assert_eq!(r.status, 200, "{}", r.body_text());
    let seen = two.b.last_request().expect("followed to B");
    assert_eq!(seen.path_and_query(), "/from-a");
    assert_eq!(
        seen.header_all("authorization"),
        vec![format!("Bearer {TOKEN_A}")]
    );

    // Unlisted hosts' URLs and relative ones are passed on as they are.
    for (path, kept) in [
        ("/away", "https://elsewhere.example/x"),
        ("/relative", "/new"),
    ] {
        let r = ask(&mut conn, &get(format!("http://localhost:{pa}{path}"))).await;
        assert_eq!(r.header("location"), Some(kept), "{path}");
    }
}

#[tokio::test]
async fn a_link_to_a_listed_https_url_points_back_at_the_proxy() {
    // A paginated answer's `Link: <https://HOST/pages?page=2>; rel="next"`
    // sends an app following it around the proxy (a CONNECT, refused) as a
    // redirect would: it reaches the app as `http://`, like `Location`.
    // Other hosts and relative references pass as they are.
    let two = Two::start_full(redirecting, "a").await;
    let pa = two.pa();
    let mut conn = two.conn().await;
    let r = ask(
        &mut conn,
        &format!("GET http://localhost:{pa}/pages HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("link"),
        Some(
            format!(
                "<http://LocalHost:{pa}/pages?page=2>; rel=\"next\", \
                 <https://elsewhere.example/x>; rel=\"alternate\", </pages?page=9>; rel=last"
            )
            .as_str()
        )
    );
}

#[tokio::test]
async fn a_redirect_to_a_host_of_another_credential_is_not_pointed_back_at_the_proxy() {
    // A's upstream must not be able to steer a redirect-following app (a
    // 307 POST, body and all) to B with B's credential, which A's request
    // never had: B's https:// URL reaches the app as it is.
    let two = Two::start_full(redirecting, "b").await;
    let (pa, pb) = (two.pa(), two.pb());
    let mut conn = two.conn().await;
    let r = ask(
        &mut conn,
        &format!(
            "POST http://localhost:{pa}/to-b HTTP/1.1\r\nHost: x\r\nX-B-Port: {pb}\r\nContent-Length: 2\r\n\r\nhi"
        ),
    )
    .await;
    assert_eq!(r.status, 307);
    assert_eq!(
        r.header("location"),
        Some(format!("https://localhost:{pb}/from-a").as_str())
    );
    // A's own URLs still come back.
    let r = ask(
        &mut conn,
        &format!("GET http://localhost:{pa}/old HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    assert_eq!(
        r.header("location"),
        Some(format!("http://LocalHost:{pa}/new?x=1").as_str())
    );
    assert_eq!(two.b.request_count(), 0);
}

#[tokio::test]
async fn a_trailing_dot_is_refused_with_the_name_that_is_listed() {
    // Kubernetes apps write `api.example.com.` to skip the search domains;
    // the key is `api.example.com`. Refused (another spelling of a name is
    // never matched), but the answer says which spelling is listed.
    let two = Two::start().await;
    let pa = two.pa();
    let message = refusal(
        &two,
        &format!("GET http://LocalHost.:{pa}/x HTTP/1.1\r\nHost: localhost.:{pa}\r\n\r\n"),
        403,
        "host_not_allowed",
    )
    .await;
    assert!(
        message.contains(&format!("http://localhost:{pa}/")),
        "{message}"
    );
    // A name listed under no spelling gets no hint.
    let other = refusal(
        &two,
        &format!("GET http://other.:{pa}/x HTTP/1.1\r\nHost: other\r\n\r\n"),
        403,
        "host_not_allowed",
    )
    .await;
    assert!(!other.contains("request http://"), "{other}");
    assert_eq!(two.a.request_count(), 0);
}

#[tokio::test]
async fn an_ipv6_key_takes_curls_bracketed_urls_and_names_the_upstream_in_brackets() {
    let pki = Arc::new(TestPki::with_server_names(&["::1"]));
    let listener = tokio::net::TcpListener::bind("[::1]:0")
        .await
        .expect("bind [::1]");
    let upstream = Upstream::start_on(listener, UpstreamOpts::tls(&pki));
    let port = upstream.addr().port();
    let proxy = TestConfig::new()
        .trusting(&pki)
        .with(static_token("a", "TOKEN_A"))
        .with(forward_proxy(&[(&format!("[::1]:{port}"), "a")]))
        .env("TOKEN_A", TOKEN_A)
        .start()
        .await;
    let mut conn = RawConn::connect(proxy.forward_proxy_addr()).await;
    // curl -x … 'http://[::1]:PORT/x', then the same address spelled longer.
    for (target, path) in [
        (format!("http://[::1]:{port}/x"), "/x"),
        (format!("http://[0:0::1]:{port}/y"), "/y"),
    ] {
        let r = ask(
            &mut conn,
            &format!("GET {target} HTTP/1.1\r\nHost: [::1]:{port}\r\nProxy-Connection: Keep-Alive\r\n\r\n"),
        )
        .await;
        assert_eq!(r.status, 200, "{target}: {}", r.body_text());
        let seen = upstream.last_request().expect("forwarded");
        assert_eq!(seen.path_and_query(), path);
        assert_eq!(seen.header("host"), Some(format!("[::1]:{port}").as_str()));
        assert_eq!(
            seen.header_all("authorization"),
            vec![format!("Bearer {TOKEN_A}")]
        );
    }
}

#[tokio::test]
async fn an_app_proxying_through_a_route_listener_is_refused_not_sent_to_the_routes_upstream() {
    // HTTP_PROXY pointing at a route listener instead of the forward proxy:
    // curl's bytes for http://other.example/x. Served, the request (and
    // whatever the app meant for other.example in its headers) went to the
    // route's upstream with the route's token, and the app got that
    // upstream's answer as other.example's.
    let pki = Arc::new(TestPki::new());
    let a = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = TestConfig::new()
        .trusting(&pki)
        .with(static_token("a", "TOKEN_A"))
        .with(route(&format!("{}/v1", a.url()), "a"))
        .env("TOKEN_A", TOKEN_A)
        .start()
        .await;
    let mut conn = RawConn::connect(proxy.route_addr(0)).await;
    let r = ask(
        &mut conn,
        "GET http://other.example/x?key=k HTTP/1.1\r\nHost: other.example\r\nX-Api-Key: for-other\r\nProxy-Connection: Keep-Alive\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body_text());
    assert_eq!(r.header("x-sidekey-error"), Some("bad_request"));
    let message = r.body_text();
    assert!(message.contains("forward_proxy"), "{message}");
    assert!(!message.contains("key=k"), "{message}");
    assert_eq!(a.request_count(), 0, "nothing reached the route's upstream");
    // The app's ordinary requests on the same connection are served.
    let r = ask(&mut conn, "GET /x HTTP/1.1\r\nHost: sidekey\r\n\r\n").await;
    assert_eq!(r.status, 200);
    assert_eq!(a.last_request().expect("served").path_and_query(), "/v1/x");
}

#[tokio::test]
async fn a_refused_connect_says_what_to_do_in_its_status_line() {
    // curl, Java and Python show only the status line of a failed CONNECT,
    // never its body: Python raises "Tunnel connection failed: 400 <reason>".
    let two = Two::start().await;
    let mut conn = two.conn().await;
    conn.send(b"CONNECT api.example.com:443 HTTP/1.0\r\n\r\n")
        .await
        .expect("send");
    assert!(conn.closed_within(WITHIN).await, "HTTP/1.0: closed");
    let status_line = conn.text().lines().next().unwrap_or_default().to_owned();
    assert!(
        status_line.starts_with("HTTP/1.0 400 ") && status_line.contains("http://"),
        "{status_line}"
    );
}
