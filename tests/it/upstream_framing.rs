//! Misframed upstream answers on a kept-alive HTTP/1.1 connection: bytes
//! after the body, two different `Content-Length`s, a body on a 204, a 304
//! or a HEAD answer, `Connection: close`, `Content-Length` and
//! `Transfer-Encoding` together, interim (1xx) answers, and a `101` nobody
//! asked for. The danger is a desync: the next request taken from the pool
//! reading the leftovers of the previous answer as its own. After each, a
//! second request must get its own answer (or a clean 502), never the
//! leftovers.

use std::sync::Arc;
use std::time::Duration;

use http::Method;

use crate::support::config::{static_route, static_route_proxy};
use crate::support::proxy::{TestProxy, body_empty, count_body, request};
use crate::support::raw::RawConn;
use crate::support::tls::TestPki;
use crate::support::upstream::{RawStep, Upstream, UpstreamOpts};

/// A whole answer that a client reading a desynchronised connection would
/// take for the next request's.
const SMUGGLED: &str = "HTTP/1.1 200 OK\r\ncontent-length: 8\r\nx-smuggled: 1\r\n\r\nsmuggled";

/// An upstream answering `/first` (any method) with `first`, byte for byte,
/// and anything else correctly with `second`; sidekey in front of it.
pub(crate) async fn scene(first: Vec<RawStep>) -> (Upstream, TestProxy) {
    let upstream = Upstream::start(UpstreamOpts::plain().raw_by(move |request| {
        if request.path == "/first" {
            first.clone()
        } else {
            vec![RawStep::text(
                "HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond",
            )]
        }
    }))
    .await;
    let proxy = static_route_proxy(&upstream.url()).await;
    (upstream, proxy)
}

/// `GET /second` must get its own answer, after `what`.
pub(crate) async fn second_gets_its_own_answer(proxy: &TestProxy, what: &str) {
    let second = proxy.get("/second").await;
    assert_eq!(
        (second.status.as_u16(), second.text().as_str()),
        (200, "second"),
        "after {what}"
    );
    assert!(second.header("x-smuggled").is_none(), "after {what}");
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn misframed_answers_never_reach_the_next_request() {
    let text = |t: &str| vec![RawStep::text(t)];
    let cases = [
        (
            text(&format!(
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst{SMUGGLED}"
            )),
            200,
            "first",
        ),
        (
            vec![
                RawStep::text("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst"),
                RawStep::Sleep(Duration::from_millis(5)),
                RawStep::text(SMUGGLED),
            ],
            200,
            "first",
        ),
        (
            text(&format!(
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 63\r\n\r\nfirst{SMUGGLED}"
            )),
            502,
            "",
        ),
        (
            text(&format!("HTTP/1.1 204 No Content\r\n\r\n{SMUGGLED}")),
            204,
            "",
        ),
        (
            text(&format!(
                "HTTP/1.1 204 No Content\r\ncontent-length: 61\r\n\r\n{SMUGGLED}"
            )),
            204,
            "",
        ),
        (
            text(&format!(
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 61\r\n\r\n{SMUGGLED}"
            )),
            304,
            "",
        ),
        (
            text(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
                 HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst",
            ),
            200,
            "first",
        ),
    ];
    for (first, status, body) in cases {
        let what = format!("{first:?}");
        let (_upstream, proxy) = scene(first).await;
        let answer = proxy.get("/first").await;
        assert_eq!(answer.status.as_u16(), status, "{what}");
        if status != 502 {
            assert_eq!(answer.text(), body, "{what}");
        }
        // Late leftovers land while the connection sits in the pool.
        tokio::time::sleep(Duration::from_millis(20)).await;
        second_gets_its_own_answer(&proxy, &what).await;
    }
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_body_after_a_head_answer_never_reaches_the_next_request() {
    let first = format!("HTTP/1.1 200 OK\r\ncontent-length: 61\r\n\r\n{SMUGGLED}");
    let (_upstream, proxy) = scene(vec![RawStep::text(&first)]).await;
    let url = format!("{}/first", proxy.route_url(0));
    let head = proxy
        .client
        .send_head(request(Method::HEAD, &url, body_empty()))
        .await
        .expect("HEAD");
    let head = count_body(head).await;
    assert_eq!((head.status.as_u16(), head.len), (200, 0));
    assert_eq!(head.headers["content-length"], "61");
    second_gets_its_own_answer(&proxy, "a HEAD answer with a body").await;
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_connection_close_answer_is_not_reused() {
    let first = "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nfirst";
    let (upstream, proxy) = scene(vec![RawStep::text(first)]).await;
    assert_eq!(proxy.get("/first").await.text(), "first");
    second_gets_its_own_answer(&proxy, "connection: close").await;
    assert_eq!(upstream.connections(), 2);
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_chunked_answer_that_also_has_a_content_length_reaches_the_app_whole() {
    // Transfer-Encoding wins (RFC 9112 §6.3); the length must not be passed
    // on, or the app waits for 40 bytes of a 5-byte body.
    let first = "HTTP/1.1 200 OK\r\ncontent-length: 40\r\ntransfer-encoding: chunked\r\n\r\n\
                 5\r\nfirst\r\n0\r\n\r\n";
    let (_upstream, proxy) = scene(vec![RawStep::text(first)]).await;
    let url = format!("{}/first", proxy.route_url(0));
    let answer = proxy.client.download(&url).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.error, None, "headers {:?}", answer.headers);
    assert_eq!(answer.len, 5);
    assert_ne!(
        answer.headers.get("content-length").map(|v| v.as_bytes()),
        Some(b"40".as_slice())
    );
    second_gets_its_own_answer(&proxy, "content-length with chunked").await;
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_101_to_a_request_that_asked_for_no_upgrade_is_502() {
    let first = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n{SMUGGLED}"
    );
    let (_upstream, proxy) = scene(vec![RawStep::text(&first)]).await;
    let mut app = RawConn::connect(proxy.route_addr(0)).await;
    app.send_get("/first").await.expect("write");
    let answer = app.read_response(Duration::from_secs(5)).await;
    let answer = answer.expect("an answer to the first request");
    assert_eq!(answer.status, 502, "{}", app.text());
    assert_eq!(
        answer.header("x-sidekey-error"),
        Some("upstream_unreachable")
    );
    // The app's connection still serves its next request.
    app.send_get("/second").await.expect("write");
    let second = app.read_response(Duration::from_secs(5)).await;
    let second = second.expect("an answer to the second request");
    assert_eq!(
        (second.status, second.body_text().as_str()),
        (200, "second")
    );
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_transfer_coding_other_than_chunked_is_502() {
    // hyper removes the chunked coding but not the others; passed on, the
    // app would take gzip bytes for the body, with nothing saying so.
    let cases = [
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\nconnection: close\r\n\r\nfirst",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n",
    ];
    for first in cases {
        let steps = vec![RawStep::text(first), RawStep::Reset];
        let (_upstream, proxy) = scene(steps).await;
        let answer = proxy.get("/first").await;
        assert_eq!(answer.status, 502, "{first:?}: {}", answer.text());
        assert_eq!(answer.sidekey_error(), Some("upstream_unreachable"));
        second_gets_its_own_answer(&proxy, first).await;
    }
    // The one coding hyper decodes, in any case, is passed on as the body.
    let first = "HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n";
    let (_upstream, proxy) = scene(vec![RawStep::text(first)]).await;
    assert_eq!(proxy.get("/first").await.text(), "first");
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn an_http_1_0_upstream_does_not_make_the_apps_connection_http_1_0() {
    // An HTTP/1.1 app reading "HTTP/1.0" closes its connection after each
    // answer (RFC 9112 §9.3); sidekey speaks HTTP/1.1 to it whatever the
    // upstream speaks.
    let first = "HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\nfirst";
    let (_upstream, proxy) = scene(vec![RawStep::text(first), RawStep::Reset]).await;
    let mut app = RawConn::connect(proxy.route_addr(0)).await;
    app.send_get("/first").await.expect("write");
    // Read what comes meanwhile; the connection stays open.
    assert!(!app.closed_within(Duration::from_millis(100)).await);
    assert!(
        app.text().starts_with("HTTP/1.1 200 OK\r\n"),
        "{}",
        app.text()
    );
    assert!(app.text().ends_with("\r\n\r\nfirst"), "{}", app.text());
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_content_length_list_reaches_the_app_as_one_length() {
    // `5, 5` is valid (RFC 9110 §8.6) and hyper reads it, but many clients
    // do not: Node's parser refuses it, Python's http.client reads the body
    // until the connection closes (the idle timeout, on a kept-alive one).
    let first = "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nfirst";
    let (_upstream, proxy) = scene(vec![RawStep::text(first)]).await;
    let mut app = RawConn::connect(proxy.route_addr(0)).await;
    app.send_get("/first").await.expect("write");
    let answer = app.read_response(Duration::from_secs(5)).await;
    let answer = answer.expect("an answer");
    assert_eq!(answer.header("content-length"), Some("5"));
    assert_eq!(answer.body_text(), "first");
}

/// A TLS upstream answering every request with `steps`, and sidekey in
/// front of it.
async fn tls_scene(steps: Vec<RawStep>) -> (Upstream, TestProxy) {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).raw(steps)).await;
    let proxy = static_route(&upstream.url()).trusting(&pki).start().await;
    (upstream, proxy)
}

#[tokio::test]
async fn a_close_delimited_answer_cut_without_close_notify_never_looks_complete() {
    // No length, no chunks: the answer ends where the connection does. A
    // TCP close without TLS close_notify is no such end (a crashed server,
    // or a cut an attacker made, RFC 8446 §6.1): the app must see a broken
    // body, not a short one that looks whole.
    let head = "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n";
    let (_upstream, proxy) = tls_scene(vec![
        RawStep::text(&format!("{head}partial answer")),
        RawStep::Abandon,
    ])
    .await;
    let url = format!("{}/cut", proxy.route_url(0));
    let answer = proxy.client.download(&url).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.error.is_some(),
        "{} bytes and a clean end",
        answer.len
    );

    // The same answer closed with close_notify is whole.
    let (_upstream, proxy) = tls_scene(vec![
        RawStep::text(&format!("{head}whole answer")),
        RawStep::Shutdown,
    ])
    .await;
    let answer = proxy
        .client
        .download(&format!("{}/whole", proxy.route_url(0)))
        .await;
    assert_eq!(
        (answer.status.as_u16(), answer.error, answer.len),
        (200, None, 12)
    );
}
