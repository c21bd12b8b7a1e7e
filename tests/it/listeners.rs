//! Listeners over a proxy's life: bind errors that name the key, and
//! reloads that add, drop and change listeners (proxy routes, the forward
//! proxy, the admin listener) while the listeners that stay keep their
//! sockets and their traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sidekey::server::Serving;

use crate::support::config::{TestConfig, forward_proxy, listen_tls, route, static_token};
use crate::support::metrics::sum;
use crate::support::process::SidekeyProcess;
use crate::support::proxy::{TestClient, TestProxy, body_empty, request_with, send_to};
use crate::support::tls::TestPki;
use crate::support::traffic::Traffic;
use crate::support::upstream::{Gate, Reply, Upstream, UpstreamOpts, closed_port};

/// A port something else listens on (held as long as the returned listener).
fn busy_port() -> (std::net::TcpListener, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    (listener, addr)
}

/// A static credential `api` (token from `TOKEN`) and a route to `upstream`.
fn base(pki: &TestPki, upstream: &str) -> TestConfig {
    TestConfig::new()
        .top(r#"shutdown_grace = "5s""#)
        .trusting(pki)
        .with(static_token("api", "TOKEN"))
        .with(route(upstream, "api"))
        .env("TOKEN", "token-1")
}

/// Start `config` and return the error's whole text (it must fail).
async fn start_error(config: &TestConfig) -> String {
    let checked = config.checked().expect("preflight accepts it");
    let err = sidekey::server::serve(checked)
        .await
        .expect_err("the address is taken");
    sidekey::error_chain::error_chain(&err)
}

#[tokio::test]
async fn a_busy_address_at_start_is_named_by_its_key() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let (_held, busy) = busy_port();

    let second_route = base(&pki, &upstream.url()).with(
        route(&upstream.url(), "api")
            .line(&format!("listen = \"{busy}\""))
            .line(r#"path_prefix = "/two""#),
    );
    let message = start_error(&second_route).await;
    assert!(
        message.starts_with(&format!("routes[1].listen: cannot listen on {busy}: ")),
        "{message}"
    );

    let admin = base(&pki, &upstream.url()).line("[admin]", &format!("listen = \"{busy}\""));
    let message = start_error(&admin).await;
    assert!(
        message.starts_with(&format!("admin.listen: cannot listen on {busy}: ")),
        "{message}"
    );

    let forward = base(&pki, &upstream.url())
        .with(forward_proxy(&[("api.example.test", "api")]).line(&format!("listen = \"{busy}\"")));
    let message = start_error(&forward).await;
    assert!(
        message.starts_with(&format!("forward_proxy.listen: cannot listen on {busy}: ")),
        "{message}"
    );
}

#[tokio::test]
async fn demo_on_a_busy_port_suggests_port_0() {
    let (_held, busy) = busy_port();
    let err = sidekey::demo::start(busy)
        .await
        .expect_err("the port is taken");
    let message = sidekey::error_chain::error_chain(&err);
    assert!(
        message.contains(&format!("{busy}")) && message.contains("--listen 127.0.0.1:0"),
        "{message}"
    );
}

/// Apply `config` to the running proxy; the refusal's whole text.
async fn reload(proxy: &mut TestProxy, config: &TestConfig) -> Result<(), String> {
    let checked = config.checked().map_err(|e| e.to_string())?;
    proxy
        .handle
        .reload(checked, Duration::from_secs(5))
        .await
        .map_err(|e| sidekey::error_chain::error_chain(&e))
}

/// Wait (up to 5 s) until nothing accepts connections on `addr`.
async fn wait_refused(addr: SocketAddr) {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{addr} still accepts connections");
}

/// An upstream that answers `/slow…` once `gate` opens, anything else at once.
async fn upstream_with_slow_paths(pki: &Arc<TestPki>, gate: &Gate) -> Upstream {
    let gate = gate.clone();
    Upstream::start(UpstreamOpts::tls(pki).respond(move |req| {
        if req.path_and_query().starts_with("/slow") {
            Reply::echo().until(&gate)
        } else {
            Reply::echo()
        }
    }))
    .await
}

/// A route to `upstream` on `listen` under `prefix`, sending `x-edition`.
fn route_on(
    upstream: &str,
    listen: &str,
    prefix: &str,
    edition: &str,
) -> crate::support::config::Table {
    route(upstream, "api")
        .line(&format!("listen = \"{listen}\""))
        .line(&format!("path_prefix = \"{prefix}\""))
        .line(&format!("headers = {{ \"x-edition\" = \"{edition}\" }}"))
}

async fn reload_adds_and_removes_listeners_under_traffic(serving: Serving) {
    let pki = Arc::new(TestPki::new());
    let slow = Gate::new();
    let upstream = upstream_with_slow_paths(&pki, &slow).await;
    let (removed, added) = (closed_port(), closed_port());
    let config = |edition: &str, second: SocketAddr| {
        TestConfig::new()
            .top(r#"shutdown_grace = "5s""#)
            .top("workers = 2")
            .trusting(&pki)
            .with(static_token("api", "TOKEN"))
            .env("TOKEN", "token-1")
            .with(route_on(&upstream.url(), "127.0.0.1:0", "/", edition))
            .with(route_on(&upstream.url(), &second.to_string(), "/", edition))
    };
    let before = config("1", removed);
    let mut proxy = match serving {
        Serving::Here => before.start().await,
        Serving::Workers => before.start_on_workers().await,
    };
    let stays = proxy.route_addr(0);
    assert_eq!(proxy.route_addr(1), removed);

    let traffic = Traffic::start(&format!("http://{stays}"));
    traffic.wait_for_more(20).await;
    // A request in flight on the listener the reload removes.
    let in_flight = tokio::spawn(async move {
        TestClient::new()
            .get(&format!("http://{removed}/slow/in-flight"))
            .await
    });
    upstream
        .wait_for_request_matching(|r| r.path_and_query() == "/slow/in-flight")
        .await;

    reload(&mut proxy, &config("2", added))
        .await
        .expect("reload taken");
    assert_eq!(
        proxy.route_addr(0),
        stays,
        "the listener that stays keeps its address"
    );
    assert_eq!(proxy.route_addr(1), added);
    wait_refused(removed).await;
    assert!(
        !in_flight.is_finished(),
        "the removed listener stopped accepting at once"
    );
    slow.open();
    let finished = in_flight.await.expect("in-flight request");
    assert_eq!(finished.status, 200, "the in-flight request completed");

    let new_listener = TestClient::new().get(&format!("http://{added}/new")).await;
    assert_eq!(new_listener.status, 200, "{}", new_listener.text());
    traffic.wait_for_more(20).await;
    let (ok, failed, reasons) = traffic.stop().await;
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed: {reasons:?}",
        ok + failed
    );
    let last = upstream.last_request().expect("a request");
    assert_eq!(
        last.header("x-edition"),
        Some("2"),
        "the header change of the same edit took effect"
    );
    proxy.handle.shutdown().await;
}

#[tokio::test]
async fn reload_adds_and_removes_listeners_under_traffic_here() {
    reload_adds_and_removes_listeners_under_traffic(Serving::Here).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_listeners_under_traffic_on_workers() {
    reload_adds_and_removes_listeners_under_traffic(Serving::Workers).await;
}

#[tokio::test]
async fn a_reload_whose_new_listener_cannot_bind_is_refused_whole() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let (_held, busy) = busy_port();
    let before =
        base(&pki, &upstream.url()).line("[[routes]]", r#"headers = { "x-edition" = "1" }"#);
    let mut proxy = before.start().await;
    let addr = proxy.route_addr(0);

    let with_busy_route = base(&pki, &upstream.url())
        .line("[[routes]]", r#"headers = { "x-edition" = "2" }"#)
        .with(route_on(&upstream.url(), &busy.to_string(), "/", "2"));
    let refused = reload(&mut proxy, &with_busy_route)
        .await
        .expect_err("refused");
    assert!(
        refused.starts_with(&format!("routes[1].listen: cannot listen on {busy}: ")),
        "{refused}"
    );
    let with_busy_admin = base(&pki, &upstream.url())
        .line("[[routes]]", r#"headers = { "x-edition" = "2" }"#)
        .line("[admin]", &format!("listen = \"{busy}\""));
    let refused = reload(&mut proxy, &with_busy_admin)
        .await
        .expect_err("refused");
    assert!(
        refused.starts_with(&format!("admin.listen: cannot listen on {busy}: ")),
        "{refused}"
    );

    // Nothing of either edit was taken.
    assert_eq!(proxy.route_addr(0), addr);
    assert_eq!(proxy.handle.route_addr(1), None);
    assert_eq!(proxy.handle.admin_addr(), None);
    assert_eq!(proxy.get("/after").await.status, 200);
    assert_eq!(
        upstream.last_request().unwrap().header("x-edition"),
        Some("1")
    );
}

#[tokio::test]
async fn admin_listener_and_forward_proxy_come_and_go_with_reloads() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let plain = base(&pki, &upstream.url());
    let mut proxy = plain.start().await;
    assert_eq!(proxy.handle.admin_addr(), None);
    assert_eq!(proxy.handle.forward_proxy_addr(), None);

    let with_both = plain
        .clone()
        .admin()
        .with(forward_proxy(&[("api.example.test", "api")]));
    reload(&mut proxy, &with_both).await.expect("reload taken");
    assert_eq!(proxy.admin_get("/healthz").await.status, 200);
    let forward = proxy.forward_proxy_addr();
    let elsewhere = request_with(
        http::Method::GET,
        "http://elsewhere.test/x",
        &[],
        body_empty(),
    );
    let refused = send_to(forward, elsewhere).await;
    assert_eq!(
        refused.status,
        403,
        "the forward proxy answers: {}",
        refused.text()
    );
    let (admin, route) = (proxy.admin_addr(), proxy.route_addr(0));

    reload(&mut proxy, &plain).await.expect("reload taken");
    assert_eq!(proxy.handle.admin_addr(), None);
    assert_eq!(proxy.handle.forward_proxy_addr(), None);
    wait_refused(admin).await;
    wait_refused(forward).await;
    assert_eq!(proxy.route_addr(0), route);
    assert_eq!(proxy.get("/still").await.status, 200);
}

#[tokio::test]
async fn a_reload_switches_a_listener_to_tls_on_the_same_socket() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let plain = base(&pki, &upstream.url());
    let mut proxy = plain.start().await;
    let addr = proxy.route_addr(0);
    assert_eq!(proxy.get("/plain").await.status, 200);

    let with_tls = plain.clone().line("[[routes]]", &listen_tls(&pki));
    reload(&mut proxy, &with_tls).await.expect("reload taken");
    assert_eq!(proxy.route_addr(0), addr);
    let https = TestClient::trusting(&pki)
        .get(&format!("https://{addr}/tls"))
        .await;
    assert_eq!(https.status, 200);

    reload(&mut proxy, &plain).await.expect("reload taken");
    assert_eq!(proxy.get("/plain-again").await.status, 200);
}

// Reading the log blocks a worker thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_a_listener_to_the_running_binary_and_names_a_busy_one() {
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidekey.toml");
    let write = |config: &TestConfig| std::fs::write(&path, config.text()).unwrap();
    let config = base(&pki, &upstream.url()).admin().json_log();
    write(&config);
    let mut sidekey = SidekeyProcess::run(path.to_str().unwrap(), &[("TOKEN", "token-1")]);
    let first = sidekey.listen_addr("proxy listening");
    let admin = sidekey.listen_addr("admin listening");
    let client = TestClient::new();
    // Reloads by outcome, and whether the last one was taken: what an alert watches.
    let reloads = || async {
        let body = client.get(&format!("http://{admin}/metrics")).await.body;
        let text = String::from_utf8_lossy(&body);
        let count = |outcome| sum(&text, "sidekey_reloads_total", &[("outcome", outcome)]);
        let ok = sum(&text, "sidekey_config_last_reload_successful", &[]);
        (count("success"), count("failure"), ok)
    };
    assert_eq!(reloads().await, (0.0, 0.0, 1.0));

    let added = closed_port();
    let with_added = config
        .clone()
        .with(route_on(&upstream.url(), &added.to_string(), "/", "2"));
    write(&with_added);
    sidekey.signal("HUP");
    let listening = sidekey.wait_for("proxy listening");
    assert_eq!(listening["listen"], added.to_string(), "{listening}");
    assert_eq!(listening["key"], "routes[1].listen", "{listening}");
    sidekey.wait_for("configuration reloaded");
    assert_eq!(client.get(&format!("http://{added}/new")).await.status, 200);
    assert_eq!(reloads().await, (1.0, 0.0, 1.0));
    assert_eq!(client.get(&format!("http://{first}/old")).await.status, 200);

    let (_held, busy) = busy_port();
    write(&with_added.with(route_on(&upstream.url(), &busy.to_string(), "/", "3")));
    sidekey.signal("HUP");
    let refused = sidekey.wait_for("reload refused");
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("routes[2].listen: cannot listen on {busy}: ")),
        "{refused}"
    );
    assert_eq!(
        client.get(&format!("http://{added}/still")).await.status,
        200
    );
    assert_eq!(reloads().await, (1.0, 1.0, 0.0));

    sidekey.signal("TERM");
    assert_eq!(sidekey.wait_exit().await.code(), Some(0));
}

#[tokio::test]
async fn a_reload_keeps_the_running_connection_limits_and_says_so() {
    let (logs, _guard) = crate::support::logs::capture();
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki)).await;
    let mut proxy = base(&pki, &upstream.url()).start().await;
    let more = base(&pki, &upstream.url()).top("max_connections = 7");
    reload(&mut proxy, &more).await.expect("reload taken");
    let warned = logs.lines_with(&["WARN", "max_connections", "next restart"]);
    assert_eq!(warned.len(), 1, "{}", logs.text());
    assert_eq!(proxy.get("/still").await.status, 200);
}
