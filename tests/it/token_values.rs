//! What a token may contain before sidekey sends it. A token endpoint (or a
//! static token file) can yield anything JSON or a file can hold: control
//! bytes, tabs, spaces, non-ASCII, a megabyte. Spaces around a token are
//! dropped, as a receiver drops them around a header value; anything else
//! that cannot be sent as one token is refused with a message that names
//! the problem and never quotes the token, and the token held before keeps
//! serving; none ever reaches an upstream.
//!
//! Engine tests run on tokio's paused clock against real loopback token
//! servers, so a minute of token life takes no real time.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use rustls::RootCertStore;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep};

use sidekey::credential::{CredentialHandle, Credentials};
use sidekey::metrics::Metrics;

use crate::support::config::{
    Table, TestConfig, inbenta, oauth2, route, static_token, toml_path, toml_str,
};
use crate::support::logs;
use crate::support::token_servers::{
    InbentaBehaviour, InbentaServer, OAuthBehaviour, OAuthServer, TokenReply,
};
use crate::support::upstream::{Upstream, UpstreamOpts};

/// Access tokens no upstream can be sent as `Bearer <token>`, by what is
/// wrong with them.
fn unsendable_tokens() -> Vec<(&'static str, String)> {
    vec![
        ("a tab", "bad\ttoken".to_owned()),
        ("a space inside", "bad token".to_owned()),
        ("non-ASCII", "bädtoken".to_owned()),
        ("1 MB", "b".repeat(1_000_000)),
    ]
}

/// `credential` started alone, with the test servers' client credentials.
fn start(credential: Table) -> (Credentials, Arc<CredentialHandle>) {
    let config = TestConfig::new()
        .env("CLIENT_ID", "test-client")
        .env("CLIENT_SECRET", "test-client-secret")
        .env("INBENTA_API_KEY", "test-api-key")
        .env("INBENTA_SECRET", "test-secret")
        .with(credential)
        .parse();
    let credentials =
        Credentials::start(&config, &RootCertStore::empty(), &Metrics::new()).expect("credentials");
    let handle = credentials.get("api").expect("credential api").clone();
    (credentials, handle)
}

/// The `authorization` value a handle hands out now.
fn authorization(handle: &CredentialHandle) -> String {
    let published = handle.current().expect("a valid token");
    let (_, value) = published
        .headers
        .iter()
        .find(|(name, _)| name == "authorization")
        .expect("an authorization header");
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

/// The renewal answered `bad` (after `good` with a 60 s life): the good
/// token still serves, and the failure names the access token, not its text.
async fn assert_renewal_refused(handle: &CredentialHandle, what: &str, bad: &str) {
    handle
        .wait_for_newer(0, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{what}: first token: {e}"));
    // Renewal is due 15 s before the end of the 60 s life.
    sleep(Duration::from_secs(50)).await;
    assert_eq!(
        authorization(handle),
        "Bearer good-1",
        "{what}: the token refused must not replace the good one"
    );
    let report = handle.report();
    let error = report
        .last_error
        .clone()
        .unwrap_or_else(|| panic!("{what}: no failure recorded: {report:?}"));
    assert!(error.contains("access token"), "{what}: {error}");
    let shown = bad.trim();
    assert!(
        !error.contains(&shown[..shown.len().min(8)]),
        "{what}: the message quotes the token: {error}"
    );
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn oauth_tokens_that_cannot_be_sent_as_bearer_are_refused_and_the_old_one_kept() {
    for (what, bad) in unsendable_tokens() {
        let server = OAuthServer::start(OAuthBehaviour::default()).await;
        let answer = |token: &str| json!({"access_token": token, "expires_in": 60});
        server.push_reply(TokenReply::json(200, answer("good-1")));
        server.set_reply(Some(TokenReply::json(200, answer(&bad))));
        let (_credentials, handle) = start(oauth2("api", &server.url()));
        assert_renewal_refused(&handle, what, &bad).await;
    }
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn spaces_around_a_token_are_dropped_as_a_receiver_drops_them() {
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let answer = |token: &str| json!({"access_token": token, "expires_in": 60});
    server.push_reply(TokenReply::json(200, answer(" \tpadded-1 ")));
    server.set_reply(Some(TokenReply::json(200, answer("padded-2\t"))));
    let (_credentials, handle) = start(oauth2("api", &server.url()));
    handle
        .wait_for_newer(0, Duration::from_secs(5))
        .await
        .expect("first token");
    assert_eq!(authorization(&handle), "Bearer padded-1");
    sleep(Duration::from_secs(50)).await;
    assert_eq!(authorization(&handle), "Bearer padded-2");

    let server = InbentaServer::start(InbentaBehaviour::default()).await;
    let answer = json!({"accessToken": "padded-3 ", "expires_in": 60});
    server.set_reply(None, Some(TokenReply::json(200, answer)));
    let (_credentials, handle) = start(inbenta("api", &server.url()));
    handle
        .wait_for_newer(0, Duration::from_secs(5))
        .await
        .expect("first token");
    assert_eq!(authorization(&handle), "Bearer padded-3");
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn inbenta_tokens_that_cannot_be_sent_as_bearer_are_refused_and_the_old_one_kept() {
    for (what, bad) in unsendable_tokens() {
        let server = InbentaServer::start(InbentaBehaviour::default()).await;
        let answer = |token: &str| json!({"accessToken": token, "expires_in": 60});
        server.push_reply(None, TokenReply::json(200, answer("good-1")));
        server.set_reply(None, Some(TokenReply::json(200, answer(&bad))));
        let (_credentials, handle) = start(inbenta("api", &server.url()));
        assert_renewal_refused(&handle, what, &bad).await;
    }
}

#[tokio::test]
async fn a_first_token_that_cannot_be_sent_never_reaches_the_upstream() {
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let huge: Value = json!({"access_token": "b".repeat(1_000_000), "expires_in": 60});
    server.set_reply(Some(TokenReply::json(200, huge)));
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let proxy = TestConfig::new()
        .env("CLIENT_ID", "test-client")
        .env("CLIENT_SECRET", "test-client-secret")
        .with(oauth2("api", &server.url()))
        .with(route(&upstream.url(), "api"))
        .start()
        .await;
    let response = proxy.get("/x").await;
    assert_eq!(
        response.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        response.text()
    );
    let message = response.json()["message"].as_str().unwrap_or("").to_owned();
    assert!(message.contains("access token"), "{message}");
    assert!(!message.contains("bbbbbbbb"), "{message}");
    assert!(
        upstream.requests().is_empty(),
        "the token was sent upstream"
    );
}

// ---- static token files ---------------------------------------------------------

/// `[credentials.api]`, type `static`, its token read from the file at `path`.
fn static_file(path: &std::path::Path, scheme: Option<&str>) -> Table {
    let table =
        static_token("api", "UNUSED").line(&format!("token = {{ file = {} }}", toml_path(path)));
    match scheme {
        Some(scheme) => table.line(&format!("scheme = {}", toml_str(scheme))),
        None => table,
    }
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_static_token_file_that_cannot_be_sent_keeps_the_token_held() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("token");
    let bearer = [
        ("a space inside", "zq9 x7"),
        ("a tab inside", "zq9\tx7"),
        ("non-ASCII", "tökén"),
    ];
    let raw = [("a tab", "SSWS\tabc"), ("non-ASCII", "SSWS ä")];
    let huge = "t".repeat(1_000_000);
    let cases = bearer
        .iter()
        .map(|(what, value)| (None, *what, *value, "Bearer good"))
        .chain(
            raw.iter()
                .map(|(what, value)| (Some(""), *what, *value, "SSWS good")),
        )
        .chain([(None, "1 MB", huge.as_str(), "Bearer good")]);
    for (scheme, what, bad, good) in cases {
        let initial = good.strip_prefix("Bearer ").unwrap_or(good);
        std::fs::write(&path, initial).expect("write");
        let (_credentials, handle) = start(static_file(&path, scheme));
        handle
            .wait_for_newer(0, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        std::fs::write(&path, bad).expect("write");
        sleep(Duration::from_secs(3)).await;
        assert_eq!(authorization(&handle), good, "{what}: {scheme:?}");
        let error = handle.report().last_error.unwrap_or_default();
        assert!(
            error.contains(&path.display().to_string()),
            "{what}: {error}"
        );
        assert!(!error.contains(bad.trim()), "{what}: {error}");
        // Spaces around it are dropped, spaces inside a raw value kept.
        std::fs::write(&path, format!(" {initial}2 \n")).expect("write");
        sleep(Duration::from_secs(2)).await;
        let expected = format!("{good}2");
        assert_eq!(authorization(&handle), expected, "{what}: {scheme:?}");
    }
}

/// What is done to a token file, and how.
type FileFault = (&'static str, fn(&std::path::Path));

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_static_token_file_broken_in_place_keeps_the_token_with_one_warning_each_time() {
    let (logs, _guard) = logs::capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("token");
    std::fs::write(&path, "tok-0\n").expect("write");
    let (_credentials, handle) = start(static_file(&path, None));
    handle
        .wait_for_newer(0, Duration::from_secs(5))
        .await
        .expect("first token");
    let faults: [FileFault; 4] = [
        // A non-atomic rewrite: truncated now, written a moment later.
        ("truncated", |path| {
            std::fs::write(path, "").expect("truncate")
        }),
        ("only a newline", |path| {
            std::fs::write(path, "\n").expect("write")
        }),
        ("a directory", |path| {
            std::fs::remove_file(path).expect("remove");
            std::fs::create_dir(path).expect("mkdir");
        }),
        ("a dangling symlink", |path| {
            std::fs::remove_file(path).expect("remove");
            std::os::unix::fs::symlink(path.with_extension("gone"), path).expect("symlink");
        }),
    ];
    for (round, (what, break_it)) in faults.into_iter().enumerate() {
        let warnings = logs.lines_with(&["WARN", "token request failed"]).len();
        break_it(&path);
        sleep(Duration::from_secs(5)).await;
        assert_eq!(
            authorization(&handle),
            format!("Bearer tok-{round}"),
            "{what}"
        );
        assert_eq!(
            logs.lines_with(&["WARN", "token request failed"]).len(),
            warnings + 1,
            "{what}: one warning per broken streak:\n{}",
            logs.text()
        );
        // Written again: the next read publishes it.
        if path.is_dir() {
            std::fs::remove_dir(&path).expect("rmdir");
        } else {
            std::fs::remove_file(&path).expect("remove");
        }
        std::fs::write(&path, format!("tok-{}\n", round + 1)).expect("write");
        sleep(Duration::from_secs(2)).await;
        assert_eq!(
            authorization(&handle),
            format!("Bearer tok-{}", round + 1),
            "{what}"
        );
    }
}

// ---- answers that are not plain JSON -----------------------------------------------

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_byte_order_mark_is_read_past_and_a_compressed_answer_is_named() {
    let json = |body: &str| {
        TokenReply::text(200, body.to_owned()).header("content-type", "application/json")
    };
    // Windows servers may put a UTF-8 byte order mark before the JSON.
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    server.set_reply(Some(json(
        "\u{feff}{\"access_token\":\"bom-token\",\"expires_in\":60}",
    )));
    let (_credentials, handle) = start(oauth2("api", &server.url()));
    handle
        .wait_for_newer(0, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("an answer with a BOM: {e}"));
    assert_eq!(authorization(&handle), "Bearer bom-token");

    // sidekey asks for no compression; a server that compresses anyway is
    // told apart from one that sends something other than JSON.
    let server = OAuthServer::start(OAuthBehaviour::default()).await;
    let gzip_bytes = vec![0x1f_u8, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3];
    server.set_reply(Some(
        TokenReply::text(200, gzip_bytes)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip"),
    ));
    let (_credentials, handle) = start(oauth2("api", &server.url()));
    sleep(Duration::from_millis(500)).await;
    let error = handle.report().last_error.unwrap_or_default();
    assert!(error.contains("content-encoding gzip"), "{error}");
}

/// A token endpoint that answers `200` with a 4 KB body announced in full
/// and sent one byte every 100 ms, on every connection.
async fn trickling_token_endpoint() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = vec![0; 8192];
                let _ = stream.read(&mut request).await;
                let body = format!("{{\"access_token\":\"{}\"}}", "t".repeat(4000));
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                for byte in body.bytes() {
                    if stream.write_all(&[byte]).await.is_err() {
                        return;
                    }
                    sleep(Duration::from_millis(100)).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn an_answer_trickled_byte_by_byte_ends_at_the_request_timeout() {
    let addr = trickling_token_endpoint().await;
    let credential = oauth2("api", &format!("http://{addr}/oauth/token")).line(r#"timeout = "2s""#);
    let started = Instant::now();
    let (_credentials, handle) = start(credential);
    sleep(Duration::from_millis(2500)).await;
    let report = handle.report();
    let attempt = report.last_attempt.as_ref().expect("an attempt ended");
    assert!(!attempt.succeeded);
    // The timeout covers the whole exchange, body included: the byte that
    // arrives every 100 ms does not keep the request going.
    assert!(
        attempt.took >= Duration::from_secs(2) && attempt.took < Duration::from_millis(2200),
        "{report:?}"
    );
    let error = report.last_error.unwrap_or_default();
    assert!(error.contains("timed out after 2s"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn an_inbenta_api_key_that_cannot_be_sent_is_refused_before_any_request() {
    for (what, key) in [
        ("non-ASCII", "test-api-kéy"),
        ("a space inside", "test api-key"),
    ] {
        let server = InbentaServer::start(InbentaBehaviour {
            api_key: key.to_owned(),
            ..InbentaBehaviour::default()
        })
        .await;
        let table = inbenta("api", &server.url()).line(r#"api_key = { env = "ODD_API_KEY" }"#);
        let config = TestConfig::new()
            .env("ODD_API_KEY", key)
            .env("INBENTA_SECRET", "test-secret")
            .with(table)
            .parse();
        let credentials = Credentials::start(&config, &RootCertStore::empty(), &Metrics::new())
            .expect("credentials");
        let handle = credentials.get("api").expect("credential api").clone();
        sleep(Duration::from_millis(500)).await;
        assert!(handle.current().is_err(), "{what}: the key was sent");
        assert_eq!(server.calls(), 0, "{what}: the key was sent to /auth");
        let error = handle.report().last_error.unwrap_or_default();
        assert!(error.contains("api_key"), "{what}: {error}");
        assert!(!error.contains("test"), "{what}: {error}");
    }
}

#[test]
fn check_refuses_a_token_that_cannot_be_sent_naming_its_key() {
    let static_api = |value: &str, scheme: &str| {
        TestConfig::new()
            .env("ODD", value)
            .with(static_token("api", "ODD").line(&format!("scheme = {}", toml_str(scheme))))
            .with(route("https://api.example.com", "api"))
    };
    let inbenta_api = |key: &str| {
        TestConfig::new()
            .env("INBENTA_API_KEY", key)
            .env("INBENTA_SECRET", "test-secret")
            .with(inbenta("api", "https://auth.example.com/v1"))
            .with(route("https://api.example.com", "api"))
    };
    let cases = [
        (
            "credentials.api.token",
            static_api("zq9 x7", "Bearer"),
            "a space at byte 3",
        ),
        (
            "credentials.api.token",
            static_api("SSWS zq9\tx7", ""),
            "a tab at byte 8",
        ),
        (
            "credentials.api.api_key",
            inbenta_api("zq9x7é"),
            "a non-ASCII character at byte 5",
        ),
    ];
    for (key, config, expected) in cases {
        let errors = config.checked().expect_err(key).to_string();
        assert!(
            errors.contains(key) && errors.contains(expected),
            "{errors}"
        );
        assert!(!errors.contains("zq9"), "{errors}");
    }
    // Spaces around a token, or between the words of a raw value, are fine.
    assert!(static_api(" zq9x7 ", "Bearer").checked().is_ok());
    assert!(static_api("SSWS zq9x7", "").checked().is_ok());
}
