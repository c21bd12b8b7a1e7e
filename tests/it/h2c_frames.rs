//! What a buggy or hostile h2c app can do with HTTP/2's own frames, beyond
//! the rapid reset and endless header block of [`super::h2c_abuse`]:
//!
//! - floods of control frames it does not read the answers to (PING,
//!   SETTINGS): sidekey stops reading the connection once its answers wait
//!   to be written, so the flood stops itself and holds no memory; floods
//!   of empty DATA frames and of HEADERS sidekey must refuse itself end
//!   with GOAWAY `ENHANCE_YOUR_CALM`;
//! - HPACK: a block that references one large table entry until it
//!   decompresses to many times `max_header_bytes` is cut off while it is
//!   decoded (`431` up to four times the limit, GOAWAY beyond), and a table
//!   size update beyond the advertised size ends the connection;
//! - stream bookkeeping (IDs that go backwards or are even, DATA on a
//!   closed stream) and bodies that disagree with their `content-length`:
//!   a stream or connection error, and nothing, or only an aborted body,
//!   reaches the upstream;
//! - request targets: an empty `:path` is a stream error; `*` is refused on
//!   every listener, and so is a `host` that names another entity than
//!   `:authority` (RFC 9113 §8.3.1).
//!
//! Every test ends by having another app served by the same proxy. The
//! defences are the `h2` crate's under `crate::http2`'s settings, except
//! the request-target checks (`crate::proxy`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};

use crate::support::config::{TestConfig, forward_proxy, route, static_token};
use crate::support::h2_app::{
    Answer, COMPRESSION_ERROR, CONTINUATION, END_HEADERS, END_STREAM, ENHANCE_YOUR_CALM, H2App,
    PING, PROTOCOL_ERROR, RST_STREAM, STREAM_CLOSED, WINDOW_UPDATE, answer, data, goaway_error,
    headers, indexed, literal, literal_indexed, request_fields, table_size_update,
};
use crate::support::h2_wire::{HEADERS, SETTINGS, frame};
use crate::support::h2c::H2cConn;
use crate::support::proxy::{TestProxy, body_empty, request_with};
use crate::support::tls::TestPki;
use crate::support::upstream::{Upstream, UpstreamOpts};

/// How long the proxy may take to answer on loopback.
const ANSWER: Duration = Duration::from_secs(5);

/// A write that takes this long means the proxy stopped reading.
const BLOCKED: Duration = Duration::from_millis(100);

/// A proxy whose route 0 goes to an HTTP/2 upstream that echoes; and,
/// with `forward`, a forward proxy for `localhost:PORT` to the same.
async fn scene(forward: bool) -> (Upstream, TestProxy) {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).http2()).await;
    let mut config = TestConfig::new()
        .trusting(&pki)
        .with(static_token("api", "API_TOKEN"))
        .with(route(&upstream.url(), "api"))
        .env("API_TOKEN", "tok-123");
    if forward {
        config = config.with(forward_proxy(&[(&forward_host(&upstream), "api")]));
    }
    (upstream, config.start().await)
}

/// The forward proxy's `hosts` key (and `:authority`) for `upstream`.
fn forward_host(upstream: &Upstream) -> String {
    format!("localhost:{}", upstream.addr().port())
}

/// Another app's request on its own connection is answered.
async fn another_app_is_served(addr: SocketAddr) {
    let mut conn = H2cConn::connect(addr).await;
    let response = conn
        .send(request_with(Method::GET, "/fine", &[], body_empty()))
        .await;
    assert_eq!(response.status, StatusCode::OK);
}

/// `GET path` on `stream`, complete.
fn get(stream: u32, path: &str) -> Vec<u8> {
    headers(stream, &request_fields("GET", path, "sidekey"), true)
}

/// Send `batch` until a write blocks for [`BLOCKED`] or fails, at most
/// `limit` times; how many were sent whole.
async fn flood(app: &mut H2App, batch: &[u8], limit: usize) -> usize {
    let mut sent = 0;
    while sent < limit && app.send_within(batch, BLOCKED).await {
        sent += 1;
    }
    sent
}

/// A new connection to `addr` that has sent `bytes`.
async fn sent(addr: SocketAddr, bytes: &[u8]) -> H2App {
    let mut app = H2App::connect(addr).await;
    app.send(bytes).await.expect("send");
    app
}

/// Read until `stream` is answered (or reset) or GOAWAY comes.
async fn answered(app: &mut H2App, stream: u32) -> (Answer, Option<u32>) {
    let (frames, _) = app
        .read_until(ANSWER, |f| {
            answer(f, stream) != Answer::Nothing || goaway_error(f).is_some()
        })
        .await;
    (answer(&frames, stream), goaway_error(&frames))
}

#[tokio::test]
async fn a_ping_flood_that_reads_no_acks_stops_itself() {
    let (upstream, proxy) = scene(false).await;
    // A small receive buffer: the proxy's ACKs fill it, then its socket.
    let mut app = H2App::connect_small_buffer(proxy.route_addr(0), 4096).await;
    let pings: Vec<u8> = (0..1000u64)
        .flat_map(|i| frame(PING, 0, 0, &i.to_be_bytes()))
        .collect();
    let sent = flood(&mut app, &pings, 2000).await;
    assert!(
        sent < 2000,
        "2,000,000 PINGs read while their ACKs were not"
    );
    another_app_is_served(proxy.route_addr(0)).await;
    assert_eq!(upstream.paths(), ["/fine"]);
}

#[tokio::test]
async fn a_settings_flood_that_reads_no_acks_stops_itself() {
    let (upstream, proxy) = scene(false).await;
    let mut app = H2App::connect_small_buffer(proxy.route_addr(0), 4096).await;
    // SETTINGS_INITIAL_WINDOW_SIZE = 65536, over and over.
    let settings: Vec<u8> = (0..1000)
        .flat_map(|_| frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]))
        .collect();
    let sent = flood(&mut app, &settings, 2000).await;
    assert!(
        sent < 2000,
        "2,000,000 SETTINGS read while their ACKs were not"
    );
    another_app_is_served(proxy.route_addr(0)).await;
    assert_eq!(upstream.paths(), ["/fine"]);
}

#[tokio::test]
async fn a_flood_of_empty_data_frames_closes_the_connection() {
    let (upstream, proxy) = scene(false).await;
    let mut app = H2App::connect(proxy.route_addr(0)).await;
    let upload = headers(1, &request_fields("POST", "/up", "sidekey"), false);
    app.send(&upload).await.expect("send");
    let empty: Vec<u8> = (0..1000).flat_map(|_| data(1, &[], false)).collect();
    flood(&mut app, &empty, 1000).await;
    let (frames, _) = app.read_until(ANSWER, |f| goaway_error(f).is_some()).await;
    assert_eq!(goaway_error(&frames), Some(ENHANCE_YOUR_CALM));
    another_app_is_served(proxy.route_addr(0)).await;
    // The upload may have started; it never completed.
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| r.path == "/fine" || r.body_error.is_some())
    );
}

#[tokio::test]
async fn a_flood_of_headers_the_proxy_must_refuse_closes_the_connection() {
    let (upstream, proxy) = scene(false).await;
    let mut app = H2App::connect(proxy.route_addr(0)).await;
    // `connection` is forbidden in HTTP/2: h2 resets each such stream.
    let mut fields = request_fields("GET", "/bad", "sidekey");
    fields.extend(literal("connection", "close"));
    let mut next = 1u32;
    let mut sent = 0;
    while sent < 100 {
        let batch: Vec<u8> = (0..100)
            .flat_map(|i| headers(next + 2 * i, &fields, true))
            .collect();
        next += 200;
        if !app.send_within(&batch, BLOCKED).await {
            break;
        }
        sent += 1;
    }
    let (frames, _) = app.read_until(ANSWER, |f| goaway_error(f).is_some()).await;
    assert_eq!(goaway_error(&frames), Some(ENHANCE_YOUR_CALM));
    another_app_is_served(proxy.route_addr(0)).await;
    assert_eq!(upstream.paths(), ["/fine"]);
}

/// A request whose block stores one 4,000-byte field in the dynamic table
/// and then references it `references` times (1 byte each).
fn hpack_bomb(path: &str, references: usize) -> Vec<u8> {
    let mut block = request_fields("GET", path, "sidekey");
    block.extend(literal_indexed("x-big", &"a".repeat(4000)));
    block.extend((0..references).flat_map(|_| indexed(62)));
    // HEADERS, then CONTINUATION, at most 16,000 bytes each.
    let chunks: Vec<&[u8]> = block.chunks(16_000).collect();
    let mut bytes = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let (kind, mut flags) = if i == 0 {
            (HEADERS, END_STREAM)
        } else {
            (CONTINUATION, 0)
        };
        if i + 1 == chunks.len() {
            flags |= END_HEADERS;
        }
        bytes.extend(frame(kind, flags, 1, chunk));
    }
    bytes
}

#[tokio::test]
async fn a_header_block_that_decompresses_to_48_mib_is_cut_off_while_decoded() {
    let (upstream, proxy) = scene(false).await;
    let addr = proxy.route_addr(0);
    // 12,000 references: 48 MB decompressed from 16 KB.
    let mut app = sent(addr, &hpack_bomb("/bomb", 12_000)).await;
    let (answer, goaway) = answered(&mut app, 1).await;
    assert_eq!((answer, goaway), (Answer::Nothing, Some(ENHANCE_YOUR_CALM)));
    another_app_is_served(addr).await;
    assert_eq!(upstream.paths(), ["/fine"]);
}

#[tokio::test]
async fn a_header_block_somewhat_over_the_limit_gets_431_and_the_connection_goes_on() {
    let (upstream, proxy) = scene(false).await;
    let addr = proxy.route_addr(0);
    // 30 references: 120 KB, over the default max_header_bytes.
    let mut app = sent(addr, &hpack_bomb("/big", 30)).await;
    assert_eq!(answered(&mut app, 1).await, (Answer::Status(431), None));
    // The decoder's table is intact: the entry still decodes.
    let next = [request_fields("GET", "/after", "sidekey"), indexed(62)].concat();
    app.send(&headers(3, &next, true)).await.expect("send");
    assert_eq!(answered(&mut app, 3).await, (Answer::Status(200), None));
    assert_eq!(
        upstream
            .last_request()
            .unwrap()
            .header("x-big")
            .map(str::len),
        Some(4000)
    );
    assert_eq!(upstream.paths(), ["/after"]);
}

#[tokio::test]
async fn a_table_size_update_beyond_the_advertised_size_ends_the_connection() {
    let (upstream, proxy) = scene(false).await;
    let addr = proxy.route_addr(0);
    let block = [
        table_size_update(1 << 20),
        request_fields("GET", "/t", "sidekey"),
    ]
    .concat();
    let mut app = sent(addr, &headers(1, &block, true)).await;
    let (answer, goaway) = answered(&mut app, 1).await;
    // RFC 9113 §4.3 names COMPRESSION_ERROR; h2 says PROTOCOL_ERROR.
    assert_eq!(answer, Answer::Nothing);
    assert!(
        matches!(goaway, Some(PROTOCOL_ERROR | COMPRESSION_ERROR)),
        "{goaway:?}"
    );
    another_app_is_served(addr).await;
    assert_eq!(upstream.paths(), ["/fine"]);
}

#[tokio::test]
async fn stream_ids_that_go_backwards_or_are_even_end_the_connection() {
    let (upstream, proxy) = scene(false).await;
    let addr = proxy.route_addr(0);
    for bytes in [
        [get(5, "/five"), get(3, "/three")].concat(),
        get(2, "/even"),
    ] {
        let mut app = sent(addr, &bytes).await;
        let (frames, _) = app.read_until(ANSWER, |f| goaway_error(f).is_some()).await;
        assert_eq!(goaway_error(&frames), Some(PROTOCOL_ERROR));
        assert_eq!(answer(&frames, 3), Answer::Nothing);
    }
    assert!(
        !upstream
            .paths()
            .iter()
            .any(|p| p == "/three" || p == "/even")
    );
    another_app_is_served(addr).await;
}

#[tokio::test]
async fn data_on_a_closed_stream_is_a_stream_error() {
    let (upstream, proxy) = scene(false).await;
    let mut app = H2App::connect(proxy.route_addr(0)).await;
    app.send(&get(1, "/one")).await.expect("send");
    let (frames, _) = app
        .read_until(ANSWER, |f| {
            f.iter().any(|f| f.stream == 1 && f.flags & END_STREAM != 0)
        })
        .await;
    assert_eq!(answer(&frames, 1), Answer::Status(200));
    app.send(&data(1, b"late", true)).await.expect("send");
    let (frames, _) = app
        .read_until(ANSWER, |f| f.iter().any(|f| f.kind == RST_STREAM))
        .await;
    assert_eq!(answer(&frames, 1), Answer::Reset(STREAM_CLOSED));
    assert_eq!(upstream.requests()[0].body_len, 0);
    // The connection goes on.
    app.send(&get(3, "/three")).await.expect("send");
    assert_eq!(answered(&mut app, 3).await, (Answer::Status(200), None));
    assert_eq!(upstream.paths(), ["/one", "/three"]);
}

/// `POST path` on stream 1 announcing `content-length: length`.
fn post_announcing(path: &str, length: usize) -> Vec<u8> {
    let mut fields = request_fields("POST", path, "sidekey");
    fields.extend(literal("content-length", &length.to_string()));
    headers(1, &fields, false)
}

#[tokio::test]
async fn a_small_body_longer_or_shorter_than_its_content_length_reaches_no_upstream() {
    let (upstream, proxy) = scene(false).await;
    let addr = proxy.route_addr(0);
    for (path, length) in [("/more", 4), ("/less", 100)] {
        let bytes = [post_announcing(path, length), data(1, b"12345678", true)].concat();
        let mut app = sent(addr, &bytes).await;
        assert_eq!(
            answered(&mut app, 1).await,
            (Answer::Reset(PROTOCOL_ERROR), None)
        );
    }
    another_app_is_served(addr).await;
    assert_eq!(upstream.paths(), ["/fine"]);
}

#[tokio::test]
async fn a_streamed_body_shorter_than_its_content_length_is_aborted_upstream() {
    let (upstream, proxy) = scene(false).await;
    let mut app = H2App::connect(proxy.route_addr(0)).await;
    app.send(&post_announcing("/short", 200_000))
        .await
        .expect("send");
    // 64,000 bytes fill the stream's window; more than sidekey keeps for a
    // retry, so the upload starts once the window is given back.
    let chunk = vec![b'x'; 16_000];
    for _ in 0..4 {
        app.send(&data(1, &chunk, false)).await.expect("send");
    }
    let (frames, _) = app
        .read_until(ANSWER, |f| {
            f.iter().any(|f| f.kind == WINDOW_UPDATE && f.stream == 1)
        })
        .await;
    assert!(
        frames
            .iter()
            .any(|f| f.kind == WINDOW_UPDATE && f.stream == 1)
    );
    upstream.wait_for_answering(1).await;
    app.send(&data(1, &chunk, true)).await.expect("send");
    assert_eq!(
        answered(&mut app, 1).await,
        (Answer::Reset(PROTOCOL_ERROR), None)
    );
    let recorded = upstream.wait_for_requests(1).await;
    assert!(
        recorded[0].body_error.is_some(),
        "the upstream saw a whole body"
    );
    assert!(recorded[0].body_len < 200_000);
    another_app_is_served(proxy.route_addr(0)).await;
}

#[tokio::test]
async fn an_empty_path_is_a_stream_error() {
    let (upstream, proxy) = scene(true).await;
    let authority = forward_host(&upstream);
    for addr in [proxy.route_addr(0), proxy.forward_proxy_addr()] {
        let bytes = headers(1, &request_fields("GET", "", &authority), true);
        let mut app = sent(addr, &bytes).await;
        assert_eq!(
            answered(&mut app, 1).await,
            (Answer::Reset(PROTOCOL_ERROR), None)
        );
    }
    assert_eq!(upstream.request_count(), 0);
}

#[tokio::test]
async fn an_asterisk_path_is_refused_by_the_forward_proxy_as_by_a_route() {
    let (upstream, proxy) = scene(true).await;
    let authority = forward_host(&upstream);
    for addr in [proxy.route_addr(0), proxy.forward_proxy_addr()] {
        for method in ["OPTIONS", "GET", "POST"] {
            let bytes = headers(1, &request_fields(method, "*", &authority), true);
            let mut app = sent(addr, &bytes).await;
            assert_eq!(
                answered(&mut app, 1).await,
                (Answer::Status(400), None),
                "{method} * on {addr}"
            );
        }
    }
    let sent: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.uri.to_string())
        .collect();
    assert!(sent.is_empty(), "forwarded: {sent:?}");
}

#[tokio::test]
async fn a_host_that_disagrees_with_the_authority_is_refused() {
    let (upstream, proxy) = scene(true).await;
    let authority = forward_host(&upstream);
    for addr in [proxy.route_addr(0), proxy.forward_proxy_addr()] {
        let fields = [
            request_fields("GET", "/other-host", &authority),
            literal("host", "elsewhere.example"),
        ]
        .concat();
        let mut app = sent(addr, &headers(1, &fields, true)).await;
        assert_eq!(
            answered(&mut app, 1).await,
            (Answer::Status(400), None),
            "{addr}"
        );
        // The same entity spelled otherwise is no disagreement.
        let same = [
            request_fields("GET", "/same-host", &authority),
            literal("host", &authority.to_uppercase()),
        ]
        .concat();
        app.send(&headers(3, &same, true)).await.expect("send");
        assert_eq!(
            answered(&mut app, 3).await,
            (Answer::Status(200), None),
            "{addr}"
        );
    }
    assert_eq!(upstream.paths(), ["/same-host", "/same-host"]);
}
