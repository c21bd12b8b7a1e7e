//! HTTP/2 frames an upstream sends that no library server sends on purpose
//! ([`ScriptedUpstream`] writes them byte for byte): interim (1xx) HEADERS
//! before the answer, a field name in uppercase, DATA after the end of a
//! stream, a PUSH_PROMISE though sidekey turned push off, a flood of PINGs,
//! a huge HPACK table size, an answer to an upload before its end followed
//! by RST_STREAM(NO_ERROR), and DATA on answers that have no content. The
//! app must get the final answer or a clean 502, and the next request an
//! answer.

use std::sync::Arc;

use http::Method;

use crate::support::config::static_route;
use crate::support::h2_script::{ScriptedRequest, ScriptedUpstream, headers};
use crate::support::h2_wire::{
    DATA, END_HEADERS, END_STREAM, END_STREAM_AND_HEADERS, PING, PUSH_PROMISE, RST_STREAM,
    SETTINGS, frame, literal, status,
};
use crate::support::h2c::H2cConn;
use crate::support::proxy::{TestProxy, body_empty, read_whole, request};
use crate::support::tls::TestPki;
use crate::upstream_framing::second_gets_its_own_answer;
use crate::upstream_oddities::only_the_final_answer_arrives;

/// `SETTINGS_ENABLE_PUSH` (RFC 9113 §6.5.2).
const ENABLE_PUSH: u16 = 0x2;
/// `SETTINGS_HEADER_TABLE_SIZE`.
const HEADER_TABLE_SIZE: u16 = 0x1;
/// `PROTOCOL_ERROR`.
const PROTOCOL_ERROR: u32 = 0x1;

/// `200` with body `text`, on `stream`.
fn answer(stream: u32, text: &str) -> Vec<Vec<u8>> {
    vec![
        headers(stream, END_HEADERS, &[status(200)]),
        frame(DATA, END_STREAM, stream, text.as_bytes()),
    ]
}

/// A scripted upstream whose first request gets `first` and every later
/// one `200 second`, as soon as its head is there; sidekey in front of it.
async fn scene(
    first: impl Fn(u32) -> Vec<Vec<u8>> + Send + Sync + 'static,
) -> (ScriptedUpstream, TestProxy) {
    let pki = Arc::new(TestPki::new());
    let upstream = ScriptedUpstream::start(&pki, move |request: &ScriptedRequest| {
        match (request.index, request.at_head) {
            (_, false) => Vec::new(),
            (0, true) => first(request.stream),
            (_, true) => answer(request.stream, "second"),
        }
    })
    .await;
    let proxy = static_route(&upstream.url()).trusting(&pki).start().await;
    (upstream, proxy)
}

/// After `what`, sidekey told the upstream GOAWAY `PROTOCOL_ERROR`, and
/// `GET /second` gets its own answer on a new connection.
async fn a_connection_error_costs_that_connection(
    upstream: &ScriptedUpstream,
    proxy: &TestProxy,
    what: &str,
) {
    upstream
        .wait_until("sidekey says GOAWAY", |u| !u.goaways().is_empty())
        .await;
    assert_eq!(upstream.goaways(), [PROTOCOL_ERROR], "after {what}");
    second_gets_its_own_answer(proxy, what).await;
    assert_eq!(upstream.connections(), 2, "after {what}");
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn interim_answers_before_the_final_one_are_skipped() {
    // Cloudflare and Fastly send 103 Early Hints; 100 and 102 come unasked.
    let (upstream, proxy) = scene(|stream| {
        let mut frames = vec![
            headers(stream, END_HEADERS, &[status(100)]),
            headers(stream, END_HEADERS, &[status(102)]),
            headers(
                stream,
                END_HEADERS,
                &[status(103), literal("link", "</a.css>; rel=preload")],
            ),
        ];
        frames.extend(answer(stream, "first"));
        frames
    })
    .await;
    only_the_final_answer_arrives(&proxy).await;
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn an_uppercase_field_name_is_502_and_the_next_request_is_answered() {
    // RFC 9113 §8.2.1 makes it a malformed answer, a stream error; h2
    // fails it in HPACK decoding, a connection error (GOAWAY), which §5.4.1
    // allows: the requests in flight on that connection fail with it.
    let (upstream, proxy) = scene(|stream| {
        vec![headers(
            stream,
            END_STREAM_AND_HEADERS,
            &[status(200), literal("X-Upper", "1")],
        )]
    })
    .await;
    let first = proxy.get("/first").await;
    assert_eq!(first.status, 502, "{}", first.text());
    assert_eq!(first.sidekey_error(), Some("upstream_unreachable"));
    a_connection_error_costs_that_connection(&upstream, &proxy, "an uppercase field name").await;
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn data_after_the_end_of_a_stream_never_reaches_an_answer() {
    let (_upstream, proxy) = scene(|stream| {
        let mut frames = answer(stream, "first");
        frames.push(frame(DATA, 0, stream, b"late"));
        frames.push(frame(DATA, END_STREAM, stream, b"later"));
        frames
    })
    .await;
    let first = proxy.get("/first").await;
    assert_eq!(
        (first.status.as_u16(), first.text().as_str()),
        (200, "first")
    );
    second_gets_its_own_answer(&proxy, "DATA after END_STREAM").await;
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn push_is_turned_off_and_a_push_promise_costs_one_connection() {
    let (upstream, proxy) = scene(|stream| {
        // A promised stream 2 with `:method GET` (static index 2).
        let mut promise = 2u32.to_be_bytes().to_vec();
        promise.push(0x82);
        let mut frames = vec![frame(PUSH_PROMISE, END_HEADERS, stream, &promise)];
        frames.extend(answer(stream, "first"));
        frames
    })
    .await;
    let first = proxy.get("/first").await;
    assert!(
        upstream.client_settings().contains(&(ENABLE_PUSH, 0)),
        "{:?}",
        upstream.client_settings()
    );
    assert_eq!(first.status, 502, "{}", first.text());
    a_connection_error_costs_that_connection(&upstream, &proxy, "a PUSH_PROMISE").await;
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_ping_flood_is_answered_and_the_answer_still_comes() {
    const PINGS: usize = 5_000;
    let (upstream, proxy) = scene(|stream| {
        let mut frames: Vec<Vec<u8>> = (0..PINGS as u64)
            .map(|i| frame(PING, 0, 0, &i.to_be_bytes()))
            .collect();
        frames.extend(answer(stream, "first"));
        frames
    })
    .await;
    let first = proxy.get("/first").await;
    assert_eq!(
        (first.status.as_u16(), first.text().as_str()),
        (200, "first")
    );
    upstream
        .wait_until("every PING acknowledged", |u| u.ping_acks() >= PINGS)
        .await;
    second_gets_its_own_answer(&proxy, "a PING flood").await;
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_huge_hpack_table_size_changes_nothing() {
    let (upstream, proxy) = scene(|stream| {
        let mut table = HEADER_TABLE_SIZE.to_be_bytes().to_vec();
        table.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut frames = vec![frame(SETTINGS, 0, 0, &table)];
        frames.extend(answer(stream, "first"));
        frames
    })
    .await;
    assert_eq!(proxy.get("/first").await.text(), "first");
    for _ in 0..3 {
        second_gets_its_own_answer(&proxy, "SETTINGS_HEADER_TABLE_SIZE 2^32-1").await;
    }
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn an_answer_that_must_have_no_body_reaches_the_app_without_one() {
    // RFC 9110 §6.4.1: no content in a 204, a 304 or an answer to HEAD,
    // whatever DATA the upstream sends (h2 checks only HEAD's). An HTTP/1.1
    // app's connection drops it; an HTTP/2 app's would get it as the body.
    let with_data = |code: u16| {
        move |stream| {
            vec![
                headers(
                    stream,
                    END_HEADERS,
                    &[status(code), literal("content-length", "5")],
                ),
                frame(DATA, END_STREAM, stream, b"first"),
            ]
        }
    };
    for (method, code) in [(Method::GET, 204), (Method::GET, 304), (Method::HEAD, 200)] {
        let what = format!("{method} answered {code} with DATA");
        let (_upstream, proxy) = scene(with_data(code)).await;
        let mut app = H2cConn::connect(proxy.route_addr(0)).await;
        let answer = app
            .send_head(request(method.clone(), "/first", body_empty()))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let answer = read_whole(answer).await;
        assert_eq!(answer.status, code, "{what}");
        assert_eq!(answer.body, "", "{what}");
        // A 204 has no length (RFC 9110 §8.6); the others keep theirs.
        let length = (code != 204).then_some("5");
        assert_eq!(answer.header("content-length"), length, "{what}");
        second_gets_its_own_answer(&proxy, &what).await;
    }
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn an_answer_before_the_upload_ends_reaches_the_app_despite_the_reset() {
    // RFC 9113 §8.1: a server may answer before the request is whole and
    // then reset the stream with NO_ERROR, which tells the client to stop
    // sending, not that the answer is void (a 413 or 401 to an upload).
    let (_upstream, proxy) = scene(|stream| {
        vec![
            headers(
                stream,
                END_HEADERS,
                &[status(413), literal("content-length", "4")],
            ),
            frame(DATA, END_STREAM, stream, b"big!"),
            frame(RST_STREAM, 0, stream, &0u32.to_be_bytes()), // NO_ERROR
        ]
    })
    .await;
    let url = format!("{}/first", proxy.route_url(0));
    // Streamed (larger than a retry keeps), and larger than a stream's window.
    let answer = proxy.client.post_streaming(&url, 1_000_000, false).await;
    assert_eq!(
        (answer.status.as_u16(), answer.text().as_str()),
        (413, "big!")
    );
    second_gets_its_own_answer(&proxy, "an early answer and NO_ERROR").await;
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn an_upload_waits_while_the_upstream_shuts_every_window_and_goes_on_when_it_opens() {
    // SETTINGS_INITIAL_WINDOW_SIZE 0 (RFC 9113 §6.9.2: it applies to the
    // streams already open too), then restored once the upload's stream is
    // open: the body goes out whole, and nothing times out meanwhile.
    const INITIAL_WINDOW_SIZE: u16 = 0x4;
    let window = |size: u32| {
        let mut setting = INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
        setting.extend_from_slice(&size.to_be_bytes());
        frame(SETTINGS, 0, 0, &setting)
    };
    let pki = Arc::new(TestPki::new());
    let upstream = ScriptedUpstream::start(&pki, move |request: &ScriptedRequest| {
        match (request.index, request.body) {
            // The first request shuts the windows before its answer.
            (0, _) => [vec![window(0)], answer(request.stream, "shut")].concat(),
            // The upload's head: nothing could be sent; open them again.
            (_, None) => vec![window(65_535)],
            (_, Some(len)) => answer(request.stream, &format!("got {len}")),
        }
    })
    .await;
    let proxy = static_route(&upstream.url()).trusting(&pki).start().await;
    assert_eq!(proxy.get("/shut").await.text(), "shut");
    let url = format!("{}/upload", proxy.route_url(0));
    let upload = proxy.client.post(&url, vec![7u8; 50_000]).await;
    assert_eq!(
        (upload.status.as_u16(), upload.text().as_str()),
        (200, "got 50000")
    );
    assert_eq!(upstream.connections(), 1);
}
