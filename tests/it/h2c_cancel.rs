//! An h2c app that resets its stream after the upstream request started:
//! the upstream request is cancelled with it (an HTTP/2 upstream sees its
//! stream reset, an HTTP/1.1 upstream its connection closed, never reused
//! with an answer still due on it), whether the reset comes while the
//! upstream prepares its answer or while its body streams, and nothing of
//! it stays open: the next request gets its own answer, on the same
//! HTTP/2 connection or on a new HTTP/1.1 one.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};

use crate::support::config::{TestConfig, route, static_token};
use crate::support::h2_app::{Answer, H2App, RST_STREAM, answer, headers, request_fields};
use crate::support::h2_wire::frame;
use crate::support::h2c::H2cConn;
use crate::support::proxy::{body_empty, request_with};
use crate::support::tls::TestPki;
use crate::support::upstream::{Gate, Reply, Upstream, UpstreamOpts};

/// HTTP/2 error code `CANCEL`.
const CANCEL: u32 = 0x8;

/// When the app resets its stream.
#[derive(Clone, Copy, Debug)]
enum When {
    /// While the upstream has not answered yet.
    BeforeTheHead,
    /// After the head, while the upstream's body trickles.
    DuringTheBody,
}

/// `/held` is answered per `when` (held at a gate, or a 1 MB body that
/// trickles for 10 s); anything else is echoed. The app resets `/held`
/// there; then a next request is sent on a new app connection.
async fn reset_while_upstream_works(http2: bool, when: When) {
    let pki = Arc::new(TestPki::new());
    let gate = Gate::new();
    let mut opts = UpstreamOpts::tls(&pki);
    if http2 {
        opts = opts.http2();
    }
    let held = gate.clone();
    let upstream = Upstream::start(opts.respond(move |request| match request.path.as_str() {
        "/held" => match when {
            When::BeforeTheHead => Reply::echo().until(&held),
            When::DuringTheBody => Reply::trickle(1000, 1000, Duration::from_millis(10)),
        },
        _ => Reply::echo(),
    }))
    .await;
    let proxy = TestConfig::new()
        .trusting(&pki)
        .with(static_token("api", "API_TOKEN"))
        .with(route(&upstream.url(), "api"))
        .env("API_TOKEN", "tok-123")
        .start()
        .await;

    let mut app = H2App::connect(proxy.route_addr(0)).await;
    let request = headers(1, &request_fields("GET", "/held", "sidekey"), true);
    app.send(&request).await.expect("send");
    match when {
        When::BeforeTheHead => upstream.wait_for_answering(1).await,
        When::DuringTheBody => {
            let (frames, _) = app
                .read_until(Duration::from_secs(5), |f| answer(f, 1) != Answer::Nothing)
                .await;
            assert_eq!(answer(&frames, 1), Answer::Status(200));
        }
    }
    let reset = frame(RST_STREAM, 0, 1, &CANCEL.to_be_bytes());
    app.send(&reset).await.expect("send");
    match when {
        When::BeforeTheHead => upstream.wait_for_answering(0).await,
        When::DuringTheBody => upstream.wait_for_abandoned_answers(1).await,
    }
    // An answer still due on a reused HTTP/1.1 connection would come now.
    gate.open();

    let mut next = H2cConn::connect(proxy.route_addr(0)).await;
    let response = next
        .send(request_with(Method::GET, "/next", &[], body_empty()))
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.json()["path"], "/next", "{when:?}");
    assert_eq!(upstream.paths(), ["/held", "/next"]);
    let connections = if http2 { 1 } else { 2 };
    assert_eq!(upstream.connections(), connections, "{when:?}");
    assert_eq!(upstream.answering(), 0);
}

#[tokio::test]
async fn a_reset_before_the_answer_cancels_the_http2_upstream_stream() {
    reset_while_upstream_works(true, When::BeforeTheHead).await;
}

#[tokio::test]
async fn a_reset_before_the_answer_closes_the_http1_upstream_connection() {
    reset_while_upstream_works(false, When::BeforeTheHead).await;
}

#[tokio::test]
async fn a_reset_during_the_answer_body_cancels_the_http2_upstream_stream() {
    reset_while_upstream_works(true, When::DuringTheBody).await;
}

#[tokio::test]
async fn a_reset_during_the_answer_body_closes_the_http1_upstream_connection() {
    reset_while_upstream_works(false, When::DuringTheBody).await;
}
