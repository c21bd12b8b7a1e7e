//! HTTP/1.1 answers that real upstreams, and the CDNs and gateways in
//! front of them, send and that are legal or common but unusual: interim
//! answers (`102 Processing`, `103 Early Hints`), a `HEAD` answer that
//! announces a length, chunk extensions and trailers, a status line
//! without a reason phrase, whitespace between a field name and its colon,
//! an HTTP/1.0 answer delimited by the close, interim answers that go on
//! past `request_timeout`, and malformed chunks after the head went out. Each must reach the app as its own client
//! would read it from the upstream directly, or be a clean 502 (504), and
//! the connection must serve the next request correctly.

use std::time::Duration;

use http::Method;

use crate::support::config::{static_route, static_route_proxy};
use crate::support::h2c::H2cConn;
use crate::support::proxy::{TestProxy, body_empty, request, request_with};
use crate::support::raw::RawConn;
use crate::support::upstream::{RawStep, Upstream, UpstreamOpts};
use crate::upstream_framing::second_gets_its_own_answer;

/// Longest wait for an answer that should come at once.
const PROMPTLY: Duration = Duration::from_secs(5);

/// An upstream answering `/first` with `first`, byte for byte, and
/// anything else correctly with `second`; sidekey in front of it.
async fn scene(first: &str) -> (Upstream, TestProxy) {
    let first = if first.contains("close") {
        vec![RawStep::text(first), RawStep::Shutdown]
    } else {
        vec![RawStep::text(first)]
    };
    crate::upstream_framing::scene(first).await
}

/// `GET /first` gets the final answer, `200 first`, without the fields of
/// the interim answers before it (a `103`'s `link`), and `GET /second` its
/// own answer after it.
pub(crate) async fn only_the_final_answer_arrives(proxy: &TestProxy) {
    let first = proxy.get("/first").await;
    assert_eq!(
        (first.status.as_u16(), first.text().as_str()),
        (200, "first")
    );
    assert_eq!(
        first.header("link"),
        None,
        "the 103's fields are not the answer's"
    );
    second_gets_its_own_answer(proxy, "interim answers").await;
}

/// `GET /first` on a raw connection (with `extra` header lines), and
/// everything sidekey sent until its answer was whole.
async fn raw_first(proxy: &TestProxy, extra: &str) -> String {
    let mut app = RawConn::connect(proxy.route_addr(0)).await;
    let request = format!("GET /first HTTP/1.1\r\nhost: sidekey\r\n{extra}\r\n");
    app.send(request.as_bytes()).await.expect("write");
    // Chunked answers end with the last chunk; the others are read whole.
    if !extra.is_empty() {
        while !app.text().contains("\r\n0\r\n") && !app.closed_within(PROMPTLY).await {}
        let _ = app.closed_within(Duration::from_millis(50)).await;
        return app.text();
    }
    let answer = app.read_response(PROMPTLY).await.expect("an answer");
    format!("{} {}", answer.status, answer.body_text())
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn interim_answers_of_every_kind_are_skipped() {
    // 100 and 103 before the answer are covered in `upstream_framing`;
    // 102 Processing (WebDAV servers, long requests) and several of them.
    let first = "HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n\
                 HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
                 HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst";
    let (upstream, proxy) = scene(first).await;
    only_the_final_answer_arrives(&proxy).await;
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_status_line_without_a_reason_is_relayed() {
    // RFC 9112 §4: the reason phrase may be empty, and the space before it
    // is often missing too.
    let (upstream, proxy) = scene("HTTP/1.1 200\r\ncontent-length: 5\r\n\r\nfirst").await;
    assert_eq!(raw_first(&proxy, "").await, "200 first");
    second_gets_its_own_answer(&proxy, "no reason phrase").await;
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn chunk_extensions_are_read_past() {
    let first = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                 5;name=\"a b\"\r\nfirst\r\n0;last\r\n\r\n";
    let (upstream, proxy) = scene(first).await;
    let answer = proxy.get("/first").await;
    assert_eq!(
        (answer.status.as_u16(), answer.text().as_str()),
        (200, "first")
    );
    second_gets_its_own_answer(&proxy, "chunk extensions").await;
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn trailers_reach_apps_that_accept_them() {
    let first = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n\
                 5\r\nfirst\r\n0\r\nx-sum: 9\r\n\r\n";
    let (_upstream, proxy) = scene(first).await;
    // HTTP/1.1 with `TE: trailers`: in the last chunk.
    let text = raw_first(&proxy, "te: trailers\r\n").await;
    assert!(
        text.ends_with("\r\n5\r\nfirst\r\n0\r\nx-sum: 9\r\n\r\n"),
        "{text}"
    );
    // HTTP/2: a trailing HEADERS frame.
    let mut app = H2cConn::connect(proxy.route_addr(0)).await;
    let answer = app
        .send(request_with(
            Method::GET,
            "/first",
            &[("te", "trailers")],
            body_empty(),
        ))
        .await;
    assert_eq!(answer.text(), "first");
    assert_eq!(answer.trailer("x-sum"), Some("9"));
    second_gets_its_own_answer(&proxy, "trailers").await;
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_head_answer_announcing_a_length_keeps_its_connection() {
    let (upstream, proxy) = scene("HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n").await;
    let url = format!("{}/first", proxy.route_url(0));
    let answer = proxy
        .client
        .send(request(Method::HEAD, &url, body_empty()))
        .await;
    assert_eq!((answer.status.as_u16(), answer.body.len()), (200, 0));
    assert_eq!(answer.header("content-length"), Some("1000"));
    second_gets_its_own_answer(&proxy, "a HEAD answer").await;
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn whitespace_between_a_field_name_and_its_colon_is_removed() {
    // RFC 9112 §5.1: "A proxy MUST remove any such whitespace from a
    // response message before forwarding the message downstream"; curl,
    // Python and browsers read such a field.
    let first = "HTTP/1.1 200 OK\r\nx-space : 1\r\nx-tab\t: 2\r\ncontent-length: 5\r\n\r\nfirst";
    let (upstream, proxy) = scene(first).await;
    let answer = proxy.get("/first").await;
    assert_eq!(
        (answer.status.as_u16(), answer.text().as_str()),
        (200, "first"),
        "{:?}",
        answer.sidekey_error()
    );
    assert_eq!(
        (answer.header("x-space"), answer.header("x-tab")),
        (Some("1"), Some("2"))
    );
    second_gets_its_own_answer(&proxy, "whitespace before a colon").await;
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn an_http_1_0_answer_delimited_by_the_close_reaches_the_app_whole() {
    // No length, no `Connection: close`: HTTP/1.0 closes after each answer.
    let first = "HTTP/1.0 200 OK\r\n\r\nfirst";
    let upstream =
        Upstream::start(UpstreamOpts::plain().raw(vec![RawStep::text(first), RawStep::Shutdown]))
            .await;
    let proxy = static_route_proxy(&upstream.url()).await;
    for _ in 0..2 {
        let answer = proxy
            .client
            .download(&format!("{}/first", proxy.route_url(0)))
            .await;
        assert_eq!(
            (answer.status.as_u16(), answer.len, answer.error),
            (200, 5, None)
        );
    }
    assert_eq!(upstream.connections(), 2, "its connection is not reused");
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn interim_answers_do_not_extend_the_request_timeout() {
    // A 102 every 100 ms, for longer than `request_timeout`: the final
    // answer's head is what the timeout waits for.
    let mut steps = Vec::new();
    for _ in 0..100 {
        steps.push(RawStep::text("HTTP/1.1 102 Processing\r\n\r\n"));
        steps.push(RawStep::Sleep(Duration::from_millis(100)));
    }
    steps.push(RawStep::text(
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst",
    ));
    let upstream = Upstream::start(UpstreamOpts::plain().raw(steps)).await;
    let proxy = static_route(&upstream.url())
        .line("[[routes]]", r#"request_timeout = "2s""#)
        .start()
        .await;
    let started = tokio::time::Instant::now();
    let answer = proxy.get("/slow").await;
    assert_eq!(answer.status, 504, "{}", answer.text());
    assert_eq!(answer.sidekey_error(), Some("upstream_timeout"));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_malformed_chunk_breaks_the_apps_answer_and_never_looks_complete() {
    // After a good chunk: a size that is not hex, one too large for 64
    // bits, a chunk longer than its size. The head has gone to the app, so
    // its answer must break, not end short and look whole.
    let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n";
    for rest in [
        "zz\r\nxx\r\n0\r\n\r\n",
        "fffffffffffffffffff\r\nxx\r\n0\r\n\r\n",
        "2\r\nxxyy\r\n0\r\n\r\n",
    ] {
        let steps = vec![RawStep::text(&format!("{head}{rest}")), RawStep::Shutdown];
        let upstream = Upstream::start(UpstreamOpts::plain().raw(steps)).await;
        let proxy = static_route_proxy(&upstream.url()).await;
        let answer = proxy
            .client
            .download(&format!("{}/x", proxy.route_url(0)))
            .await;
        assert_eq!(answer.status, 200, "{rest:?}");
        assert!(
            answer.error.is_some(),
            "{rest:?}: {} bytes and a clean end",
            answer.len
        );
    }
}
