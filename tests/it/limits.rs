//! Connections, memory and logs under floods: the connection caps of the
//! proxy and admin listeners, request-head limits, idle timeouts, the
//! open-file limit, and repeated error lines folded into summaries.
//!
//! Idle timeouts and waits at a connection cap run on tokio's paused clock
//! (the clients and sidekey share the test's runtime); the folding of
//! repeated lines runs on a thread of its own, in real time.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use sidekey::config::ConnLimits;

use crate::support::config::{TestConfig, listen_tls, oauth2, route, static_token};
use crate::support::logs::LogCapture;
use crate::support::proxy::CLIENT_TIMEOUT;
use crate::support::raw::RawConn;
use crate::support::tls::TestPki;
use crate::support::upstream::{Reply, Upstream, UpstreamOpts, closed_port};

/// An admin listener, and one route to `upstream` with a static credential.
fn config(pki: &TestPki, upstream: &str) -> TestConfig {
    TestConfig::new()
        .admin()
        .trusting(pki)
        .with(static_token("api", "API_TOKEN"))
        .with(route(upstream, "api"))
        .env("API_TOKEN", "tok-123")
}

/// A GET whose head carries an `x-fill` header of `len` bytes.
fn get_with_header(len: usize) -> Vec<u8> {
    let mut request = b"GET /fill HTTP/1.1\r\nhost: sidekey\r\nx-fill: ".to_vec();
    request.resize(request.len() + len, b'a');
    request.extend_from_slice(b"\r\n\r\n");
    request
}

/// A GET with `count` small headers.
fn get_with_headers(count: usize) -> Vec<u8> {
    let mut request = String::from("GET /many HTTP/1.1\r\nhost: sidekey\r\n");
    for i in 0..count {
        request.push_str(&format!("x-h{i}: v\r\n"));
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// Send `bytes` on a fresh connection and read the answer.
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> (u16, RawConn) {
    let mut conn = RawConn::connect(addr).await;
    // The server may answer and close before it read everything: a failed
    // write is fine, the answer is what counts.
    let _ = conn.send(bytes).await;
    let response = conn
        .read_response(CLIENT_TIMEOUT)
        .await
        .expect("an answer before the connection closed");
    (response.status, conn)
}

#[tokio::test]
async fn a_request_head_over_64_kib_gets_431_and_never_reaches_the_upstream() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = config(&pki, &upstream.url()).start().await;
    let addr = proxy.route_addr(0);

    let (status, _) = exchange(addr, &get_with_header(60 * 1024)).await;
    assert_eq!(status, 200, "a 60 KiB head is within the default limit");
    assert_eq!(upstream.request_count(), 1);

    let (status, mut conn) = exchange(addr, &get_with_header(100 * 1024)).await;
    assert_eq!(status, 431, "a 100 KiB head is over the default 64 KiB");
    assert!(
        conn.closed_within(Duration::from_secs(5)).await,
        "the connection is closed after a 431"
    );

    let (status, _) = exchange(addr, &get_with_headers(101)).await;
    assert_eq!(status, 431, "more than 100 headers");
    assert_eq!(
        upstream.request_count(),
        1,
        "refused heads never reach the upstream"
    );
}

#[tokio::test]
async fn max_header_bytes_sets_the_request_head_limit() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = config(&pki, &upstream.url())
        .top("max_header_bytes = 4096")
        .start()
        .await;
    let addr = proxy.route_addr(0);

    let (status, _) = exchange(addr, &get_with_header(3 * 1024)).await;
    assert_eq!(status, 200);
    let (status, _) = exchange(addr, &get_with_header(5 * 1024)).await;
    assert_eq!(status, 431);
    assert_eq!(upstream.request_count(), 1);
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn idle_and_trickling_app_connections_are_closed_after_idle_timeout() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = config(&pki, &upstream.url())
        .top(r#"idle_timeout = "300ms""#)
        .start()
        .await;
    let addr = proxy.route_addr(0);

    // Keep-alive after one request.
    let mut keep_alive = RawConn::connect(addr).await;
    keep_alive.send_get("/one").await.unwrap();
    let response = keep_alive.read_response(CLIENT_TIMEOUT).await.unwrap();
    assert_eq!(response.status, 200);
    // Never sent anything.
    let mut silent = RawConn::connect(addr).await;
    // Headers that never end.
    let mut trickle = RawConn::connect(addr).await;
    trickle
        .send(b"GET /slow HTTP/1.1\r\nhost: sidekey\r\nx-a: 1\r\n")
        .await
        .unwrap();

    let started = Instant::now();
    for (what, conn) in [
        ("idle keep-alive", &mut keep_alive),
        ("silent", &mut silent),
        ("trickling headers", &mut trickle),
    ] {
        assert!(
            conn.closed_within(Duration::from_secs(5)).await,
            "{what} connection still open"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "closed by the timeout, not at once"
    );
    assert_eq!(upstream.request_count(), 1);
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn idle_timeout_spares_a_slow_upstream_and_a_long_response_on_a_kept_alive_connection() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).respond(|request| {
        if request.path == "/slow" {
            Reply::status(204).delay(Duration::from_millis(900))
        } else {
            // 10 chunks, one per 100 ms: 900 ms of body.
            Reply::trickle(10, 10, Duration::from_millis(100)).announce(100)
        }
    }))
    .await;
    let proxy = config(&pki, &upstream.url())
        .top(r#"idle_timeout = "300ms""#)
        .start()
        .await;
    let mut conn = RawConn::connect(proxy.route_addr(0)).await;
    for path in ["/slow", "/long", "/slow", "/long"] {
        conn.send_get(path).await.unwrap();
        let response = conn.read_response(CLIENT_TIMEOUT).await;
        let response = response.unwrap_or_else(|| panic!("{path}: no whole response"));
        let expected = if path == "/slow" { 204 } else { 200 };
        assert_eq!(response.status, expected, "{path}");
        if path == "/long" {
            assert_eq!(response.body.len(), 100, "{path}: the whole body");
        }
    }
    // Idle again: the timeout applies from the end of the last response.
    let started = Instant::now();
    assert!(conn.closed_within(Duration::from_secs(5)).await);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(upstream.request_count(), 4);
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_tls_listener_closes_connections_that_never_finish_the_handshake() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = config(&pki, &upstream.url())
        .top(r#"idle_timeout = "300ms""#)
        .line("[[routes]]", &listen_tls(&pki))
        .start()
        .await;

    // A TCP connection that never sends a ClientHello would otherwise hold
    // its place under max_connections for ever.
    let mut silent = RawConn::connect(proxy.route_addr(0)).await;
    let started = Instant::now();
    assert!(
        silent.closed_within(Duration::from_secs(5)).await,
        "a connection without a TLS handshake is closed after idle_timeout"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn at_max_connections_the_next_connection_waits_and_is_served_when_one_closes() {
    let (logs, _guard) = LogCapture::install("info", Duration::from_secs(10));
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let proxy = config(&pki, &upstream.url())
        .top("max_connections = 2")
        .start()
        .await;
    let addr = proxy.route_addr(0);

    let mut open = Vec::new();
    for i in 0..2 {
        let mut conn = RawConn::connect(addr).await;
        conn.send_get(&format!("/first/{i}")).await.unwrap();
        let response = conn.read_response(CLIENT_TIMEOUT).await.unwrap();
        assert_eq!(response.status, 200);
        open.push(conn);
    }

    // Both slots taken by idle keep-alive connections: new ones wait.
    let mut third = RawConn::connect(addr).await;
    third.send_get("/third").await.unwrap();
    let mut fourth = RawConn::connect(addr).await;
    fourth.send_get("/fourth").await.unwrap();
    assert!(
        third
            .read_response(Duration::from_millis(500))
            .await
            .is_none(),
        "a connection over the cap is not served"
    );
    assert_eq!(upstream.request_count(), 2);
    // The admin listener has a cap of its own: probes and scrapes answer.
    for path in ["/readyz", "/metrics"] {
        assert_eq!(proxy.admin_get(path).await.status, 200, "{path}");
    }

    // One closes: the waiting connection is accepted and served.
    drop(open.remove(0));
    let response = third
        .read_response(CLIENT_TIMEOUT)
        .await
        .expect("served once a slot is free");
    assert_eq!(response.status, 200);
    assert!(
        fourth
            .read_response(Duration::from_millis(300))
            .await
            .is_none(),
        "still at the cap"
    );
    drop(open);
    let response = fourth.read_response(CLIENT_TIMEOUT).await.unwrap();
    assert_eq!(response.status, 200);

    let saturated = logs.lines_with(&["connection limit"]);
    assert_eq!(
        saturated.len(),
        1,
        "the cap is logged once, not per connection:\n{}",
        logs.text()
    );
}

#[tokio::test(start_paused = true, crate = "crate::support::paused")]
async fn a_full_admin_listener_closes_its_oldest_connection_so_healthz_answers_at_once() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let admin_limits = ConnLimits {
        max_connections: 4,
        max_header_bytes: 8 * 1024,
        idle_timeout: Duration::from_millis(500),
    };
    let proxy = config(&pki, &upstream.url())
        .start_adjusted(|config| {
            if let Some(admin) = config.admin.as_mut() {
                admin.limits = admin_limits;
            }
        })
        .await;
    let admin = proxy.admin_addr();

    // Idle clients (a leaking scraper, a slow-loris) open many times the cap.
    let started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..8 * admin_limits.max_connections {
        let mut conn = RawConn::connect(admin).await;
        conn.send(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        idle.push(conn);
    }

    let response = proxy.get("/while-admin-is-full").await;
    assert_eq!(response.status, 200, "{}", response.text());

    // A probe is answered before any idle connection times out: each new
    // connection closed the oldest open one.
    let mut probe = RawConn::connect(admin).await;
    probe.send_get("/healthz").await.unwrap();
    let response = probe
        .read_response(admin_limits.idle_timeout)
        .await
        .unwrap_or_else(|| panic!("/healthz not answered after {:?}", started.elapsed()));
    assert_eq!(response.status, 200);
    assert!(started.elapsed() < admin_limits.idle_timeout);
    for conn in &mut idle[..=7 * admin_limits.max_connections] {
        assert!(
            conn.closed_within(Duration::ZERO).await,
            "closed for a newer one"
        );
    }
    for conn in &mut idle[7 * admin_limits.max_connections + 1..] {
        assert!(
            conn.closed_within(Duration::from_secs(5)).await,
            "an idle admin connection is closed after the admin idle timeout"
        );
    }
}

#[tokio::test]
async fn repeated_request_failures_log_one_line_then_a_count_per_interval() {
    let interval = Duration::from_millis(300);
    let (logs, _guard) = LogCapture::install("info", interval);
    let dead = closed_port();
    let proxy = TestConfig::new()
        .with(static_token("api", "API_TOKEN"))
        .with(oauth2("unreachable", &format!("http://{dead}/oauth/token")))
        .with(
            route(&format!("https://{dead}"), "api")
                .line(r#"name = "bad-upstream""#)
                .line(r#"path_prefix = "/bad""#),
        )
        .with(
            route(&format!("https://{dead}"), "unreachable")
                .line(r#"name = "no-token""#)
                .line(r#"path_prefix = "/none""#),
        )
        .env("API_TOKEN", "tok-123")
        .env("CLIENT_ID", "tok-123")
        .env("CLIENT_SECRET", "tok-123")
        .start()
        .await;

    const REQUESTS: usize = 40;
    for _ in 0..REQUESTS {
        let response = proxy
            .client
            .get(&format!("{}/bad/x", proxy.route_url(0)))
            .await;
        assert_eq!(response.status, 502);
        let response = proxy
            .client
            .get(&format!("{}/none/x", proxy.route_url(0)))
            .await;
        assert_eq!(response.status, 503);
    }
    // The flusher writes the last counts at its next tick (real time, on
    // its own thread): wait for them, then one more interval, in which a
    // quiet route writes nothing.
    let routes = [("bad-upstream", 502), ("no-token", 503)];
    let summarised = |route: &str| -> usize {
        logs.lines_with(&[route])
            .iter()
            .filter_map(|line| {
                let (_, rest) = line.split_once("suppressed=")?;
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while routes
        .iter()
        .any(|(route, _)| summarised(route) < REQUESTS - 1)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(interval).await;

    for (route, status) in routes {
        let lines = logs.lines_with(&[route]);
        assert!(
            !lines.is_empty() && lines.len() <= 3,
            "{REQUESTS} {status}s on {route} logged {} lines:\n{}",
            lines.len(),
            logs.text()
        );
        assert_eq!(
            summarised(route),
            REQUESTS - 1,
            "the summaries count every line left out on {route}:\n{}",
            logs.text()
        );
    }
}

/// A static credential from `SIDEKEY_TEST_TOKEN` and a route to an
/// upstream that is never called.
fn minimal() -> TestConfig {
    TestConfig::new()
        .with(static_token("legacy", "SIDEKEY_TEST_TOKEN"))
        .with(route("https://api.example.test", "legacy"))
}

/// `sidekey run` on a minimal config under `ulimit ULIMIT_ARGS`: the child
/// and what it logged up to "sidekey running".
#[cfg(target_os = "linux")]
fn run_under_ulimit(dir: &std::path::Path, ulimit_args: &str) -> (std::process::Child, String) {
    run_config_under_ulimit(dir, &minimal(), ulimit_args)
}

/// `sidekey run` on `config` under `ulimit ULIMIT_ARGS`: the child and
/// what it logged up to "sidekey running".
#[cfg(target_os = "linux")]
fn run_config_under_ulimit(
    dir: &std::path::Path,
    config: &TestConfig,
    ulimit_args: &str,
) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let path = dir.join("sidekey.toml");
    std::fs::write(&path, config.text()).unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            r#"ulimit {ulimit_args} && exec "$0" run --config "$1""#
        ))
        .arg(env!("CARGO_BIN_EXE_sidekey"))
        .arg(&path)
        .env("SIDEKEY_TEST_TOKEN", "t0ken")
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while !seen.contains("sidekey running") {
        line.clear();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        seen.push_str(&line);
    }
    (child, seen)
}

/// The soft and hard "Max open files" of process `pid`.
#[cfg(target_os = "linux")]
fn open_file_limits(pid: u32) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    let mut numbers = line.split_whitespace().skip(3);
    (
        numbers.next().unwrap().to_owned(),
        numbers.next().unwrap().to_owned(),
    )
}

#[cfg(target_os = "linux")]
#[test]
fn run_raises_the_soft_open_file_limit_to_the_hard_limit() {
    let (_, hard) = open_file_limits(std::process::id());
    if hard == "unlimited" || hard.parse::<u64>().is_ok_and(|hard| hard <= 256) {
        return; // nothing to raise to, or nothing to compare
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut child, seen) = run_under_ulimit(dir.path(), "-Sn 256");
    let (soft, child_hard) = open_file_limits(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.contains("sidekey running"), "{seen}");
    assert_eq!(child_hard, hard);
    assert_eq!(
        soft, hard,
        "the soft limit (256 at start) is raised to the hard limit"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn max_connections_is_lowered_to_what_the_open_file_limit_holds() {
    let dir = tempfile::tempdir().unwrap();
    // Soft and hard: nothing to raise. (200 - 64 reserved - 2 listener
    // sockets (one address, two workers) - 1 credential) / 2 = 66 (no
    // admin listener), each app connection counted with an upstream one.
    let config = minimal().top("workers = 2");
    let (mut child, seen) = run_config_under_ulimit(dir.path(), &config, "-n 200");
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.contains("sidekey running"), "{seen}");
    let lowered: Vec<&str> = seen
        .lines()
        .filter(|line| line.contains("max_connections is more than the open-file limit allows"))
        .collect();
    assert_eq!(lowered.len(), 1, "{seen}");
    assert!(lowered[0].contains("max_connections=512"), "{seen}");
    assert!(lowered[0].contains("lowered_to=66"), "{seen}");
}

/// Many listeners on several workers hold descriptors of their own: the
/// connections the open-file limit lets in must each still get their
/// upstream connection, not a 502 "Too many open files".
#[cfg(target_os = "linux")]
#[tokio::test]
async fn at_the_lowered_max_connections_every_app_connection_gets_its_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let mut config = TestConfig::new()
        .top("workers = 2")
        .with(static_token("legacy", "SIDEKEY_TEST_TOKEN"));
    // Forty listen addresses free a moment ago, below the ephemeral range:
    // ports from `bind(:0)`, released, were at times taken by other tests
    // before the child listened on them.
    for _ in 0..40 {
        let listen = closed_port();
        config =
            config.with(route(&upstream.url(), "legacy").line(&format!("listen = \"{listen}\"")));
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut child, seen) = run_config_under_ulimit(dir.path(), &config, "-n 256");
    let ports: Vec<u16> = seen
        .lines()
        .filter(|line| line.contains("proxy listening"))
        .filter_map(|line| line.split("listen=127.0.0.1:").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(ports.len(), 40, "{seen}");
    let allowed: usize = seen
        .split("lowered_to=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("max_connections lowered: {seen}"));

    // Exactly as many app connections as allowed, each holding its
    // upstream connection open (keep-alive) while the next ones come.
    let mut apps = Vec::new();
    for i in 0..allowed {
        let port = ports[i % ports.len()];
        let mut app = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        app.write_all(b"GET /hold HTTP/1.1\r\nhost: app\r\n\r\n")
            .await
            .unwrap();
        apps.push(app);
    }
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for app in &mut apps {
        let mut head = [0u8; 12];
        let status =
            match tokio::time::timeout(Duration::from_secs(10), app.read_exact(&mut head)).await {
                Ok(Ok(_)) => String::from_utf8_lossy(&head[9..12]).into_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer".to_owned(),
            };
        *statuses.entry(status).or_default() += 1;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        statuses,
        std::collections::BTreeMap::from([("200".to_owned(), allowed)]),
        "every one of the {allowed} connections allowed got its answer"
    );
}

#[test]
fn the_systemd_unit_sets_an_open_file_limit() {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/sidekey.service"),
    )
    .unwrap();
    let limit = unit
        .lines()
        .find_map(|line| line.trim().strip_prefix("LimitNOFILE="))
        .expect("LimitNOFILE= in the unit");
    let limit: u64 = limit.parse().expect("a number");
    let max_connections = ConnLimits::PROXY.max_connections as u64;
    assert!(
        limit >= 4 * max_connections,
        "LimitNOFILE={limit} leaves room for max_connections ({max_connections}) app \
         connections, as many upstream ones, and the rest"
    );
}

#[test]
fn connection_limits_are_checked_with_file_line_and_key() {
    use crate::support::proxy::parse_config;
    let base = minimal().env("SIDEKEY_TEST_TOKEN", "t0ken");
    let config = base.parse();
    assert_eq!(config.limits, ConnLimits::PROXY, "defaults");
    assert_eq!(config.limits.max_connections, 512);
    assert_eq!(config.limits.max_header_bytes, 64 * 1024);
    assert_eq!(config.limits.idle_timeout, Duration::from_secs(30));

    for (line, key, message) in [
        ("max_connections = 0", "max_connections", "out of range"),
        ("max_header_bytes = 100", "max_header_bytes", "out of range"),
        ("idle_timeout = \"0s\"", "idle_timeout", "longer than zero"),
    ] {
        // The key on line 2, before the tables.
        let err = &parse_config(&format!("\n{line}\n{base}"), base.map_env())
            .unwrap_err()
            .0[0];
        assert_eq!(err.key, key);
        assert_eq!(err.line, Some(2), "{err}");
        assert!(err.message.contains(message), "{err}");
    }
}
