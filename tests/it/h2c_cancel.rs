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

use crate::support::config::static_route;
use crate::support::h2_app::{
    Answer, H2App, RST_STREAM, answer, goaway_error, headers, request_fields,
};
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
    let proxy = static_route(&upstream.url()).trusting(&pki).start().await;

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

/// Requests one app connection may cancel after they reached the upstream,
/// with none answered, before sidekey stops taking its requests
/// (`crate::http2::MAX_CANCELLED`).
const MAX_CANCELLED: usize = 100;

#[tokio::test]
async fn an_app_that_cancels_every_request_once_it_reached_the_upstream_is_cut_off() {
    // An upstream that never answers. (Over HTTP/1.1 each cancelled request
    // would cost it a connection, and sidekey a TLS handshake.)
    let pki = Arc::new(TestPki::new());
    let gate = Gate::new();
    let opts = UpstreamOpts::tls(&pki).http2();
    let upstream = Upstream::start(opts.always(Reply::echo().until(&gate))).await;
    let proxy = static_route(&upstream.url()).trusting(&pki).start().await;

    let mut app = H2App::connect(proxy.route_addr(0)).await;
    let mut cancelled = 0;
    let mut goaway = None;
    for stream in (1u32..).step_by(2).take(5 * MAX_CANCELLED) {
        let request = headers(stream, &request_fields("GET", "/cancel", "sidekey"), true);
        if app.send(&request).await.is_err() {
            break;
        }
        // Unlike a rapid reset, the reset comes once the upstream has it.
        let refused = tokio::select! {
            biased;
            (frames, _) = app.read_until(Duration::from_secs(5), |f| goaway_error(f).is_some()) => {
                goaway = goaway_error(&frames);
                true
            }
            () = upstream.wait_for_answering(1) => false,
        };
        if refused {
            break;
        }
        let reset = frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes());
        if app.send(&reset).await.is_err() {
            break;
        }
        upstream.wait_for_answering(0).await;
        cancelled += 1;
    }
    assert!(
        cancelled <= MAX_CANCELLED + 1,
        "{cancelled} requests cancelled once at the upstream ({} received), \
         the app's connection still served",
        upstream.request_count()
    );
    assert!(goaway.is_some(), "no GOAWAY");
    assert_eq!(upstream.request_count(), cancelled);

    // Another app is served as usual.
    gate.open();
    let mut other = H2cConn::connect(proxy.route_addr(0)).await;
    let response = other
        .send(request_with(Method::GET, "/next", &[], body_empty()))
        .await;
    assert_eq!(response.status, StatusCode::OK);
}

#[tokio::test]
async fn an_app_that_cancels_every_other_request_is_served_on() {
    let pki = Arc::new(TestPki::new());
    let gate = Gate::new();
    let held = gate.clone();
    let opts = UpstreamOpts::tls(&pki).http2();
    let upstream = Upstream::start(opts.respond(move |request| match request.path.as_str() {
        "/cancel" => Reply::echo().until(&held),
        _ => Reply::echo(),
    }))
    .await;
    let proxy = static_route(&upstream.url()).trusting(&pki).start().await;

    let mut app = H2App::connect(proxy.route_addr(0)).await;
    let mut streams = (1u32..).step_by(2);
    // More cancels than MAX_CANCELLED in all, never more than one in a row.
    let rounds = MAX_CANCELLED + 20;
    for _ in 0..rounds {
        let stream = streams.next().unwrap_or_default();
        let answered = headers(stream, &request_fields("GET", "/ok", "sidekey"), true);
        app.send(&answered).await.expect("send");
        let (frames, _) = app
            .read_until(Duration::from_secs(5), |f| {
                answer(f, stream) != Answer::Nothing
            })
            .await;
        assert_eq!(answer(&frames, stream), Answer::Status(200));
        assert_eq!(goaway_error(&frames), None);

        let stream = streams.next().unwrap_or_default();
        let cancelled = headers(stream, &request_fields("GET", "/cancel", "sidekey"), true);
        app.send(&cancelled).await.expect("send");
        upstream.wait_for_answering(1).await;
        let reset = frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes());
        app.send(&reset).await.expect("send");
        upstream.wait_for_answering(0).await;
    }
    assert_eq!(upstream.request_count(), 2 * rounds);
}
