//! Name lookups in a hostile environment: a DNS server that does not
//! answer (a pod whose DNS or mesh sidecar is not ready, a CoreDNS outage)
//! or answers "no such name". The lookups are stand-ins
//! (`SharedResolver::with_lookup`): a test cannot make the machine's DNS
//! hang.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{Either, Full};
use sidekey::credential::token_client::TokenClient;
use sidekey::proxy::client::{ClientOptions, LOOKUP_AT_LEAST, upstream_client};
use sidekey::resolve::SharedResolver;

use crate::support::tls::TestPki;
use crate::support::upstream::{Upstream, UpstreamOpts};

/// How long a lookup of a name whose DNS server is gone takes: glibc
/// waits out its timeout and attempts (5 s × 2 by default, times every
/// search domain with Kubernetes' `ndots:5`).
const HANG: Duration = Duration::from_secs(2);

fn hangs(_: &str) -> io::Result<Vec<SocketAddr>> {
    std::thread::sleep(HANG);
    Err(io::Error::other("Temporary failure in name resolution"))
}

fn no_such_name(_: &str) -> io::Result<Vec<SocketAddr>> {
    Err(io::Error::other("Name or service not known"))
}

/// An upstream client for routes with `connect_timeout` whose lookups
/// `lookup` answers; the error of one GET to `url` and how long it took.
async fn get_error(
    lookup: fn(&str) -> io::Result<Vec<SocketAddr>>,
    connect_timeout: Duration,
    url: &str,
) -> (String, Duration) {
    let pki = TestPki::new();
    let resolver = SharedResolver::with_lookup(lookup);
    let client = upstream_client(
        pki.client_config(),
        ClientOptions {
            connect_timeout,
            allow_insecure_http: false,
            upstream_tls: None,
            workers: 1,
            resolver: Some(&resolver),
        },
    )
    .expect("client");
    let request = Request::get(url)
        .body(Either::Right(Full::new(Bytes::new())))
        .expect("request");
    let started = tokio::time::Instant::now();
    let err = client.request(request).await.expect_err("no upstream");
    (sidekey::error_chain::error_chain(&err), started.elapsed())
}

#[tokio::test]
async fn an_upstream_lookup_slower_than_connect_timeout_gets_a_resolver_retrys_time_and_is_named() {
    // A lookup is never cut before LOOKUP_AT_LEAST (6 s: glibc sends a lost
    // query again after 5 s), however short connect_timeout is; the
    // lookup's error names the host. (The limit itself is unit-tested in
    // resolve.rs and proxy/client.rs: a test here would wait 6 s.)
    let url = "https://api.example.test/v1";
    let (message, took) = get_error(hangs, Duration::from_millis(300), url).await;
    assert!(
        took >= HANG && took < LOOKUP_AT_LEAST,
        "{took:?} ({message})"
    );
    assert!(
        message.contains("looking up api.example.test: Temporary failure"),
        "the message names the host and the resolver's answer: {message}"
    );
}

#[tokio::test]
async fn an_upstream_name_that_does_not_exist_fails_at_once_and_says_so() {
    let (message, took) = get_error(
        no_such_name,
        Duration::from_secs(5),
        "https://gone.example.test/v1",
    )
    .await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(
        message.contains("gone.example.test") && message.contains("not known"),
        "the message names the host and the answer: {message}"
    );
}

/// A token client (`timeout`, `http://` allowed) whose lookups `lookup`
/// answers; the message of one POST to `url`.
async fn token_error(
    lookup: fn(&str) -> io::Result<Vec<SocketAddr>>,
    timeout: Duration,
    url: &str,
) -> String {
    let roots = Arc::new(TestPki::new().root_store());
    let trust = sidekey::rotating::fixed_trust(&roots).expect("trust");
    let resolver = SharedResolver::with_lookup(lookup);
    let client = TokenClient::resolving_with(&trust, timeout, true, resolver).expect("client");
    let url = url.parse().expect("url");
    let err = client
        .post(&url, HeaderMap::new(), Bytes::from_static(b"grant_type=x"))
        .await
        .expect_err("no endpoint");
    err.to_string()
}

#[tokio::test]
async fn a_token_endpoint_lookup_that_hangs_is_named_in_the_timeout() {
    let message = token_error(
        hangs,
        Duration::from_millis(300),
        "http://tokens.example.test/oauth/token",
    )
    .await;
    assert!(message.contains("timed out"), "{message}");
    assert!(
        message.contains("looking up tokens.example.test") && message.contains("no answer"),
        "the message says the lookup is what hung: {message}"
    );
}

#[tokio::test]
async fn a_token_endpoint_name_that_does_not_exist_is_named() {
    let message = token_error(
        no_such_name,
        Duration::from_secs(5),
        "http://gone.example.test/oauth/token",
    )
    .await;
    assert!(
        message.contains("looking up gone.example.test: Name or service not known"),
        "{message}"
    );
}

/// The two addresses `two_addresses` answers: a black hole first, then the
/// upstream (set once by the test below).
static TWO_ADDRESSES: std::sync::OnceLock<Vec<SocketAddr>> = std::sync::OnceLock::new();

fn two_addresses(_: &str) -> io::Result<Vec<SocketAddr>> {
    Ok(TWO_ADDRESSES.get().cloned().unwrap_or_default())
}

/// A listener on `127.0.0.2:port` whose accept queue is full: the kernel
/// drops further SYNs, so a connect to it hangs (a dead address in DNS).
fn black_hole(port: u16) -> (socket2::Socket, Vec<std::net::TcpStream>) {
    use socket2::{Domain, Socket, Type};
    let addr = SocketAddr::from(([127, 0, 0, 2], port));
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.bind(&addr.into()).expect("bind 127.0.0.2");
    socket.listen(0).expect("listen");
    let fill = (0..3)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        })
        .collect();
    (socket, fill)
}

#[tokio::test]
async fn a_dead_first_address_costs_its_share_of_connect_timeout_once_not_per_connection() {
    let upstream = Upstream::start(UpstreamOpts::plain()).await;
    let port = upstream.addr().port();
    let (_hole, _fill) = black_hole(port);
    TWO_ADDRESSES
        .set(vec![
            SocketAddr::from(([127, 0, 0, 2], 0)),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        ])
        .expect("set once");
    let pki = TestPki::new();
    let resolver = SharedResolver::with_lookup(two_addresses);
    let url = format!("http://upstream.example.test:{port}/v1");
    let mut took = Vec::new();
    // A new client each time: each request needs a new connection.
    for _ in 0..3 {
        let client = upstream_client(
            pki.client_config(),
            ClientOptions {
                connect_timeout: Duration::from_secs(2),
                allow_insecure_http: true,
                upstream_tls: None,
                workers: 1,
                resolver: Some(&resolver),
            },
        )
        .expect("client");
        let request = Request::get(&url)
            .body(Either::Right(Full::new(Bytes::new())))
            .expect("request");
        let started = Instant::now();
        let (response, _) = client
            .request(request)
            .await
            .expect("the second address answers");
        assert_eq!(response.status(), 200);
        took.push(started.elapsed());
    }
    // The first connection waits out the dead address's share (1 s of 2);
    // the next ones go to the address that answered.
    assert!(took[0] >= Duration::from_millis(900), "{took:?}");
    assert!(
        took[1] < Duration::from_millis(300) && took[2] < Duration::from_millis(300),
        "{took:?}"
    );
}
