//! What odd apps send, as raw bytes: uploads that wait for
//! `100 Continue` (curl does for large ones) meeting an upstream that
//! rejects the token, early or after reading the body; HTTP/1.0 apps; a
//! WebSocket `Upgrade` through a route, which sidekey does not tunnel;
//! uploads written whole before the answer is read, refused by sidekey; and
//! refusals that close the connection, which must say so: the `408` of an
//! upload that pauses too long, and a refusal of an upload still waiting
//! for `100 Continue`.

use std::time::Duration;

use crate::support::config::{
    TestConfig, oauth_route_proxy, route, static_route_proxy, static_token,
};
use crate::support::proxy::TestProxy;
use crate::support::raw::{RawConn, RawResponse};
use crate::support::token_servers::{OAuthBehaviour, OAuthServer};
use crate::support::upstream::{RawStep, Reply, Upstream, UpstreamOpts};

/// Longest wait for an answer that should come at once.
const PROMPTLY: Duration = Duration::from_secs(5);

/// An OAuth 2.0 token endpoint issuing `oauth-token-1`, `-2`, … (each
/// answer `delay` late) and sidekey with one route to `upstream`, its first
/// token obtained.
async fn oauth_scene(upstream: &Upstream, delay: Option<Duration>) -> (OAuthServer, TestProxy) {
    let server = OAuthServer::start(OAuthBehaviour {
        client_id: "client".into(),
        client_secret: "s3cr3t".into(),
        expires_in: Some(serde_json::json!(3600)),
        delay,
        ..OAuthBehaviour::default()
    })
    .await;
    let proxy = oauth_route_proxy(&server.url(), &upstream.url()).await;
    (server, proxy)
}

/// An upstream that answers 401 to `oauth-token-1` and echoes the rest.
async fn rejecting_the_first_token() -> Upstream {
    Upstream::start(UpstreamOpts::plain().respond(
        |request| match request.header("authorization") {
            Some("Bearer oauth-token-1") => Reply::status(401),
            _ => Reply::echo(),
        },
    ))
    .await
}

/// Send a `POST /up` head with `Expect: 100-continue`, wait for the
/// `100 Continue` as curl does, then send `len` bytes; the final answer.
async fn upload_after_100_continue(proxy: &TestProxy, len: usize) -> RawResponse {
    let mut app = RawConn::connect(proxy.route_addr(0)).await;
    let head = format!(
        "POST /up HTTP/1.1\r\nhost: sidekey\r\ncontent-length: {len}\r\nexpect: 100-continue\r\n\r\n"
    );
    app.send(head.as_bytes()).await.expect("write head");
    let interim = app.read_response(PROMPTLY).await.expect("100 Continue");
    assert_eq!(interim.status, 100);
    app.send(&vec![b'u'; len]).await.expect("write body");
    app.read_response(PROMPTLY).await.expect("a final answer")
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn an_upload_waiting_for_100_continue_is_retried_with_the_renewed_token() {
    let upstream = rejecting_the_first_token().await;
    let (server, proxy) = oauth_scene(&upstream, None).await;

    let answer = upload_after_100_continue(&proxy, 1000).await;

    assert_eq!(answer.status, 200, "{}", answer.body_text());
    let seen: Vec<_> = upstream
        .requests()
        .iter()
        .map(|r| (r.header("authorization").map(str::to_owned), r.body_len))
        .collect();
    assert_eq!(
        seen,
        [
            (Some("Bearer oauth-token-1".to_owned()), 1000),
            (Some("Bearer oauth-token-2".to_owned()), 1000)
        ]
    );
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| r.header("expect").is_none())
    );
    assert_eq!(server.calls(), 2);
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn an_upload_refused_before_its_body_is_read_gets_the_refusal_and_a_renewal() {
    // The upstream answers as soon as the head is there and closes with the
    // body unread; the body is larger than a retry keeps, so it streams.
    let upstream = Upstream::start(
        UpstreamOpts::plain()
            .raw_by(|request| {
                let answer = match request.header("authorization") {
                    Some("Bearer oauth-token-1") => {
                        "HTTP/1.1 401 Unauthorized\r\nconnection: close\r\ncontent-length: 4\r\n\r\nnope"
                    }
                    _ => "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                };
                vec![RawStep::text(answer), RawStep::Reset]
            })
            .raw_before_body(),
    )
    .await;
    let (server, proxy) = oauth_scene(&upstream, None).await;

    let refused = upload_after_100_continue(&proxy, 200_000).await;
    assert_eq!(
        (refused.status, refused.body_text().as_str()),
        (401, "nope")
    );
    // The rejection is reported: the token is renewed in the background,
    // and the next upload carries the new one.
    let credentials = proxy.handle.credentials();
    let (_, api) = credentials.iter().next().expect("credential api");
    let renewed = api
        .wait_for_newer(1, PROMPTLY)
        .await
        .expect("a renewed token");
    assert_eq!(renewed.generation, 2);
    let accepted = upload_after_100_continue(&proxy, 200_000).await;
    assert_eq!(
        (accepted.status, accepted.body_text().as_str()),
        (200, "ok")
    );
    assert_eq!(server.calls(), 2, "one renewal for the rejected token");
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn an_upload_arriving_while_a_rejected_token_is_renewed_waits_for_the_new_one() {
    // Streamed uploads cannot be retried: one sent with the rejected token
    // while its renewal is under way would be refused for certain.
    let upstream = rejecting_the_first_token().await;
    let (server, proxy) = oauth_scene(&upstream, Some(Duration::from_secs(2))).await;

    // A small request is rejected, reported, and retried after the renewal;
    // the upload starts while that renewal (2 s) is under way.
    let small_url = format!("{}/small", proxy.route_url(0));
    let small = proxy.client.get(&small_url);
    let upload = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        upload_after_100_continue(&proxy, 200_000).await
    };
    let (small, upload) = tokio::join!(small, upload);
    assert_eq!(small.status, 200, "{}", small.text());
    assert_eq!(upload.status, 200, "{}", upload.body_text());
    let sent: Vec<_> = upstream
        .requests()
        .iter()
        .map(|r| (r.path.clone(), r.header("authorization").map(str::to_owned)))
        .collect();
    let bearer = |n: u32| Some(format!("Bearer oauth-token-{n}"));
    assert!(sent.contains(&("/up".to_owned(), bearer(2))), "{sent:?}");
    assert!(!sent.contains(&("/up".to_owned(), bearer(1))), "{sent:?}");
    assert_eq!(server.calls(), 2, "one renewal for the rejected token");
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn http_1_0_apps_get_plain_answers_and_websocket_upgrades_a_refusal() {
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let proxy = static_route_proxy(&upstream.url()).await;
    let host = upstream.addr().to_string();

    // HTTP/1.0 without Host: answered, then closed (no keep-alive asked).
    let mut app = RawConn::connect(proxy.route_addr(0)).await;
    app.send(b"GET /a HTTP/1.0\r\n\r\n").await.expect("write");
    assert!(app.closed_within(PROMPTLY).await);
    assert!(
        app.text().starts_with("HTTP/1.0 200 OK\r\n"),
        "{}",
        app.text()
    );
    // Asking for keep-alive: both requests answered on one connection.
    let mut app = RawConn::connect(proxy.route_addr(0)).await;
    app.send(b"GET /b HTTP/1.0\r\nconnection: keep-alive\r\n\r\nGET /c HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    assert!(app.closed_within(PROMPTLY).await);
    assert_eq!(app.responses().len(), 2, "{}", app.text());
    for seen in upstream.requests() {
        assert_eq!(seen.header("host"), Some(host.as_str()));
        assert_eq!(seen.header("authorization"), Some("Bearer tok-123"));
    }

    // A WebSocket handshake: refused (sidekey cannot carry the upgraded
    // connection; see `mismatch`), never forwarded as a plain GET, and the
    // app keeps its connection.
    let mut app = RawConn::connect(proxy.route_addr(0)).await;
    app.send(
        b"GET /ws HTTP/1.1\r\nhost: sidekey\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    )
    .await
    .expect("write");
    let answer = app.read_response(PROMPTLY).await.expect("an answer");
    assert_eq!(answer.status, 501);
    assert_eq!(
        answer.header("x-sidekey-error"),
        Some("upgrade_not_supported")
    );
    assert!(upstream.requests().iter().all(|seen| seen.path != "/ws"));
    app.send_get("/after").await.expect("write");
    let after = app.read_response(PROMPTLY).await.expect("an answer");
    assert_eq!(after.status, 200);
    assert_eq!(upstream.last_request().expect("forwarded").path, "/after");
}

/// An app that writes its whole upload before it reads an answer, as
/// Python's `http.client` (and so `requests`) does.
async fn upload_then_read(app: &mut RawConn, path: &str, len: usize) -> RawResponse {
    let head = format!("POST {path} HTTP/1.1\r\nhost: sidekey\r\ncontent-length: {len}\r\n\r\n");
    app.send(head.as_bytes()).await.expect("write head");
    app.send(&vec![b'u'; len])
        .await
        .expect("the whole upload is taken, not reset");
    app.read_response(PROMPTLY).await.expect("an answer")
}

#[tokio::test]
async fn an_upload_refused_before_it_is_read_gets_the_refusal_not_a_reset() {
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let proxy = static_route_proxy(&upstream.url()).await;
    // More than the sockets' buffers hold: a server that closes with the
    // rest unread makes the kernel answer the app's writes with a reset.
    let len = 16 << 20;
    let mut app = RawConn::connect(proxy.route_addr(0)).await;

    let refused = upload_then_read(&mut app, "/a/%2e%2e/b", len).await;
    assert_eq!(refused.status, 400, "{}", refused.body_text());
    assert_eq!(refused.header("x-sidekey-error"), Some("bad_request"));
    // Read to its end, the upload leaves the connection usable.
    let next = upload_then_read(&mut app, "/next", 10).await;
    assert_eq!(next.status, 200, "{}", next.body_text());
    assert_eq!(
        upstream.requests().len(),
        1,
        "only the second reached the upstream"
    );
}

#[tokio::test]
async fn an_app_that_closes_its_sending_side_after_the_request_gets_the_answer() {
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let proxy = static_route_proxy(&upstream.url()).await;
    for request in [
        // Shorter than an HTTP/2 preface, which the listener looks for.
        &b"GET /a HTTP/1.1\r\n\r\n"[..],
        b"POST /b HTTP/1.1\r\nhost: sidekey\r\ncontent-length: 5\r\n\r\nhello",
    ] {
        let mut app = RawConn::connect(proxy.route_addr(0)).await;
        app.send(request).await.expect("write");
        app.finish_sending().await;
        assert!(app.closed_within(PROMPTLY).await, "closed after the answer");
        let answers = app.responses();
        assert_eq!(answers.len(), 1, "{}", app.text());
        assert_eq!(answers[0].status, 200, "{}", app.text());
    }
    assert_eq!(upstream.requests().len(), 2);
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn an_upload_that_stalls_gets_a_408_that_says_the_connection_closes() {
    // RFC 9110 15.5.9: a 408 means the server closes the connection, and
    // should say so; an app's pool that is not told may hand the closed
    // connection to its next request.
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let proxy = TestConfig::new()
        .with(static_token("api", "API_TOKEN"))
        .with(route(&upstream.url(), "api").line(r#"body_timeout = "300ms""#))
        .env("API_TOKEN", "tok-123")
        .start()
        .await;
    let mut app = RawConn::connect(proxy.route_addr(0)).await;
    // 10 of the 1,000 bytes announced, then the app pauses.
    app.send(b"POST /up HTTP/1.1\r\nhost: sidekey\r\ncontent-length: 1000\r\n\r\n0123456789")
        .await
        .expect("write");

    let answer = app.read_response(PROMPTLY).await.expect("an answer");

    assert_eq!(answer.status, 408, "{}", answer.body_text());
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(app.closed_within(PROMPTLY).await, "and it does close");
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_refused_upload_still_waiting_for_100_continue_is_told_the_connection_closes() {
    // The app has not sent its body and may never: sidekey cannot tell its
    // next request from the body, so it closes; RFC 9110 10.1.1 asks the
    // answer to say which (curl, after its 1 s wait, may be sending the
    // body already).
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let proxy = static_route_proxy(&upstream.url()).await;
    let mut app = RawConn::connect(proxy.route_addr(0)).await;
    app.send(
        b"POST /a/%2e%2e/b HTTP/1.1\r\nhost: sidekey\r\ncontent-length: 2000000\r\n\
          expect: 100-continue\r\n\r\n",
    )
    .await
    .expect("write");

    let answer = app.read_response(PROMPTLY).await.expect("an answer");

    assert_eq!(answer.status, 400, "{}", answer.body_text());
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(app.closed_within(PROMPTLY).await, "and it does close");
    assert!(upstream.requests().is_empty());
}
