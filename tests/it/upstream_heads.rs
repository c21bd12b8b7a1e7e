//! Upstream answer heads that real servers send and that an app's client
//! takes when it talks to the upstream directly (Python's `http.client`,
//! curl, Node, Java): many header fields (a page of `Set-Cookie`s, tracing
//! and security headers; up to hyper's 100) and a field folded over two
//! lines (obs-fold, from old servers and frameworks). Through sidekey the
//! app must get the same answer, not a 502.

use std::time::Duration;

use crate::support::config::static_route_proxy;
use crate::support::proxy::TestProxy;
use crate::support::raw::{RawConn, RawResponse};
use crate::support::upstream::{RawStep, Upstream, UpstreamOpts};

/// Longest wait for an answer that should come at once.
const PROMPTLY: Duration = Duration::from_secs(5);

/// An upstream answering every request with `answer`, byte for byte, and
/// sidekey in front of it.
async fn scene(answer: String) -> (Upstream, TestProxy) {
    let upstream = Upstream::start(UpstreamOpts::plain().raw(vec![RawStep::text(&answer)])).await;
    let proxy = static_route_proxy(&upstream.url()).await;
    (upstream, proxy)
}

/// `GET path` as curl sends it, and the answer.
async fn curl_get(proxy: &TestProxy, path: &str) -> RawResponse {
    let mut app = RawConn::connect(proxy.route_addr(0)).await;
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: sidekey\r\nuser-agent: curl/7.88.1\r\naccept: */*\r\n\r\n"
    );
    app.send(request.as_bytes()).await.expect("write");
    app.read_response(PROMPTLY).await.expect("an answer")
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn an_answer_with_up_to_100_header_fields_reaches_the_app_whole_and_more_is_502() {
    // hyper's limit, kept: above it every answer head is parsed on the heap
    // (9 % more instructions per request) for answers no API sends.
    let cookies = |n: usize| -> String {
        (0..n)
            .map(|i| format!("set-cookie: c{i}={i}\r\n"))
            .collect()
    };
    let (_upstream, proxy) = scene(format!(
        "HTTP/1.1 200 OK\r\n{}content-length: 2\r\n\r\nok",
        cookies(99)
    ))
    .await;
    let answer = curl_get(&proxy, "/cookies").await;
    assert_eq!((answer.status, answer.body_text().as_str()), (200, "ok"));
    let set: Vec<_> = answer
        .headers
        .iter()
        .filter(|(name, _)| name == "set-cookie")
        .map(|(_, value)| value.as_str())
        .collect();
    let expected: Vec<_> = (0..99).map(|i| format!("c{i}={i}")).collect();
    assert_eq!(set, expected, "every cookie, in order");

    let (_upstream, proxy) = scene(format!(
        "HTTP/1.1 200 OK\r\n{}content-length: 2\r\n\r\nok",
        cookies(150)
    ))
    .await;
    let answer = curl_get(&proxy, "/cookies").await;
    assert_eq!(answer.status, 502);
    assert_eq!(
        answer.header("x-sidekey-error"),
        Some("upstream_unreachable")
    );
    // Reached, so not said to be unreachable.
    let message = answer.body_text();
    assert!(
        message.contains("connected, then the exchange failed"),
        "{message}"
    );
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_field_folded_over_two_lines_reaches_the_app_unfolded() {
    // RFC 9112 5.2: a proxy either rejects obs-fold with 502 or replaces it
    // with spaces; clients replace it, so an app talking to the upstream
    // directly gets this answer.
    let (_upstream, proxy) = scene(
        "HTTP/1.1 200 OK\r\nx-folded: first\r\n  second\r\ncontent-length: 2\r\n\r\nok".to_owned(),
    )
    .await;

    let answer = curl_get(&proxy, "/folded").await;

    assert_eq!(
        (answer.status, answer.body_text().as_str()),
        (200, "ok"),
        "{:?}",
        answer.header("x-sidekey-error")
    );
    let folded = answer.header("x-folded").expect("the folded field");
    assert_eq!(
        folded.split_whitespace().collect::<Vec<_>>(),
        ["first", "second"],
        "{folded:?}"
    );
}
