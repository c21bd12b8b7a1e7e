//! Listeners over a proxy's life: bind errors that name the key, and
//! reloads that add, drop and change listeners (proxy routes, the forward
//! proxy, the admin listener) while the listeners that stay keep their
//! sockets and their traffic.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::support::config::{TestConfig, forward_proxy, route, static_token};
use crate::support::tls::TestPki;
use crate::support::upstream::{Upstream, UpstreamOpts};

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
