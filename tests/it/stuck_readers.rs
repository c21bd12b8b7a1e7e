//! Apps that stop reading their responses: a hung worker, a client stuck
//! on a lock, a slowloris reader. Such an app must not hold the upstream's
//! response, its connection or HTTP/2 stream, for ever: once it takes no
//! byte for `body_timeout`, sidekey closes its connection, which releases
//! them. A reader that is slow but keeps taking bytes is served to the end.
//!
//! On the real clock, with short timeouts: the app's socket fills for real
//! (kernel buffers, small receive buffers here), and the paused clock could
//! jump to a timeout while a busy machine delivers loopback bytes late.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::config::{TestConfig, route, static_token};
use crate::support::proxy::TestProxy;
use crate::support::tls::TestPki;
use crate::support::upstream::{Reply, Upstream, UpstreamOpts};

/// The route's `body_timeout` in these tests.
const BODY_TIMEOUT: &str = "300ms";

/// Bound for what must happen soon after the timeout.
const PROMPTLY: Duration = Duration::from_secs(5);

/// An answer the app never finishes reading: 1 GiB.
const ENDLESS: u64 = 1 << 30;

/// One route to `upstream` with `body_timeout` [`BODY_TIMEOUT`] and a
/// `request_timeout` longer than every wait of these tests but the
/// defect's.
async fn proxy_to(pki: &TestPki, upstream: &str) -> TestProxy {
    TestConfig::new()
        .trusting(pki)
        .with(static_token("api", "API_TOKEN"))
        .with(route(upstream, "api").line(&format!(
            "body_timeout = \"{BODY_TIMEOUT}\"\nrequest_timeout = \"8s\""
        )))
        .env("API_TOKEN", "tok-123")
        .start()
        .await
}

/// An app connection to `addr` with a receive buffer of about
/// `receive_buffer` bytes, that has sent `GET path`.
async fn app_asking(addr: SocketAddr, path: &str, receive_buffer: u32) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(receive_buffer).unwrap();
    let mut app = socket.connect(addr).await.unwrap();
    app.write_all(format!("GET {path} HTTP/1.1\r\nhost: sidekey\r\n\r\n").as_bytes())
        .await
        .unwrap();
    app
}

/// Read until the connection ends; the bytes read, or `None` when it is
/// still open after `within`.
async fn read_to_close(app: &mut TcpStream, within: Duration) -> Option<u64> {
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    tokio::time::timeout(within, async {
        loop {
            match app.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n as u64,
            }
        }
    })
    .await
    .ok()
    .map(|()| total)
}

/// An HTTP/2 upstream taking one stream at a time, answering `/big` with
/// an endless body and anything else with an echo.
async fn one_stream_upstream(pki: &Arc<TestPki>) -> Upstream {
    Upstream::start(
        UpstreamOpts::tls(pki)
            .http2()
            .max_concurrent_streams(1)
            .respond(|seen| match seen.path.as_str() {
                "/big" => Reply::generated(ENDLESS),
                _ => Reply::echo(),
            }),
    )
    .await
}

#[tokio::test]
async fn an_app_that_reads_nothing_is_cut_off_and_its_upstream_stream_freed() {
    let pki = Arc::new(TestPki::new());
    // One stream at a time on the worker's one upstream connection: the
    // stuck answer's stream is the only one there is.
    let upstream = one_stream_upstream(&pki).await;
    let proxy = proxy_to(&pki, &upstream.url()).await;

    // The app asks for the download and never reads a byte of it.
    let mut stuck = app_asking(proxy.route_addr(0), "/big", 4096).await;
    upstream
        .wait_for_request_matching(|r| r.path == "/big")
        .await;

    // Another app connection's request needs the stream: it is served
    // once the stuck app's connection was closed (before the fix it
    // waited for a free stream until request_timeout, 504).
    let after = proxy.get("/after").await;
    assert_eq!(after.status, 200, "{}", after.text());
    upstream.wait_for_abandoned_answers(1).await;
    assert_eq!(upstream.connections(), 1, "the same upstream connection");

    let read = read_to_close(&mut stuck, PROMPTLY).await;
    let read = read.expect("the stuck app's connection is closed");
    assert!(read < ENDLESS, "the answer was cut off after {read} bytes");
}

#[tokio::test]
async fn an_app_that_reads_nothing_of_an_http1_answer_frees_the_upstream_connection() {
    let upstream = Upstream::start(UpstreamOpts::plain().always(Reply::generated(ENDLESS))).await;
    let proxy = TestConfig::new()
        .with(static_token("api", "API_TOKEN"))
        .with(
            route(&upstream.url(), "api")
                .line("allow_insecure_http = true")
                .line(&format!("body_timeout = \"{BODY_TIMEOUT}\"")),
        )
        .env("API_TOKEN", "tok-123")
        .start()
        .await;

    let mut stuck = app_asking(proxy.route_addr(0), "/big", 4096).await;
    upstream.wait_for_requests(1).await;

    // The upstream's HTTP/1.1 connection is closed mid-answer: its answer
    // is abandoned, not left to wait on the app.
    upstream.wait_for_abandoned_answers(1).await;
    let read = read_to_close(&mut stuck, PROMPTLY).await;
    assert!(
        read.is_some_and(|read| read < ENDLESS),
        "the stuck app's connection is closed: {read:?}"
    );
}

#[tokio::test]
async fn a_slow_reader_that_keeps_taking_bytes_is_served_to_the_end() {
    const LEN: u64 = 5 << 20;
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(UpstreamOpts::tls(&pki).always(Reply::generated(LEN))).await;
    let proxy = proxy_to(&pki, &upstream.url()).await;

    // A read of up to 256 KiB every 100 ms, with a receive buffer of that
    // size: the app's socket stays full all along, and sidekey's writes
    // wait on it, for less than body_timeout each. More than the kernel's
    // send buffer (up to 4 MiB) can hide: sidekey's writes must see the
    // app's progress while its socket is full.
    let mut app = app_asking(proxy.route_addr(0), "/slow", 256 << 10).await;
    let mut received = Vec::new();
    let mut buf = vec![0u8; 256 << 10];
    let head_and_body = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        match tokio::time::timeout(PROMPTLY, app.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break None,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n")
            && (received.len() - end - 4) as u64 >= LEN
        {
            break Some(end + 4);
        }
    };
    let head_len = head_and_body.unwrap_or_else(|| {
        panic!(
            "cut off after {} bytes: {}",
            received.len(),
            String::from_utf8_lossy(&received[..received.len().min(200)])
        )
    });
    assert!(received.starts_with(b"HTTP/1.1 200"));
    assert_eq!((received.len() - head_len) as u64, LEN);
    assert_eq!(upstream.abandoned_answers(), 0);
}

#[tokio::test]
async fn an_http2_stream_whose_answer_the_app_never_reads_is_reset() {
    let pki = Arc::new(TestPki::new());
    let upstream = one_stream_upstream(&pki).await;
    let proxy = proxy_to(&pki, &upstream.url()).await;

    // One h2c connection, as a gRPC channel, with room in its connection
    // window for every stream: the app reads the connection all along, so
    // its socket never fills; one stream's answer it never reads, whose
    // stream window stays shut.
    let tcp = TcpStream::connect(proxy.route_addr(0)).await.unwrap();
    let (app, conn) = h2::client::Builder::new()
        .initial_connection_window_size(16 << 20)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(conn);
    let get = |path: &str| {
        http::Request::get(format!("http://sidekey{path}"))
            .body(())
            .unwrap()
    };
    let (head, _) = app
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(get("/big"), true)
        .unwrap();
    let mut stuck = head.await.unwrap().into_body();
    upstream
        .wait_for_request_matching(|r| r.path == "/big")
        .await;

    // The next call on the same connection needs the upstream's only
    // stream: it is answered once the stuck stream was reset (before, it
    // waited for request_timeout, 504).
    let (head, _) = app
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(get("/after"), true)
        .unwrap();
    let after = tokio::time::timeout(PROMPTLY, head)
        .await
        .expect("answered before request_timeout")
        .unwrap();
    assert_eq!(after.status(), 200);
    upstream.wait_for_abandoned_answers(1).await;

    // What had come of the stuck answer can still be read; then the
    // stream ends in a reset, not as a complete answer.
    let ended = tokio::time::timeout(PROMPTLY, async {
        loop {
            match stuck.data().await {
                Some(Ok(data)) => {
                    let _ = stuck.flow_control().release_capacity(data.len());
                }
                Some(Err(err)) => return Some(err),
                None => return None,
            }
        }
    })
    .await
    .expect("the stuck stream ends");
    let err = ended.expect("reset, not complete");
    assert!(err.is_reset(), "{err}");
}

#[tokio::test]
async fn an_http2_stream_read_slowly_is_served_to_the_end() {
    const LEN: u64 = 1 << 20;
    let pki = Arc::new(TestPki::new());
    let upstream = Upstream::start(
        UpstreamOpts::tls(&pki)
            .http2()
            .always(Reply::generated(LEN)),
    )
    .await;
    let proxy = proxy_to(&pki, &upstream.url()).await;

    let tcp = TcpStream::connect(proxy.route_addr(0)).await.unwrap();
    let (app, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let request = http::Request::get("http://sidekey/slow").body(()).unwrap();
    let app: h2::client::SendRequest<bytes::Bytes> = app;
    let (head, _) = app
        .ready()
        .await
        .unwrap()
        .send_request(request, true)
        .unwrap();
    let mut body = head.await.unwrap().into_body();

    // A window's worth (64 KiB) at most every 100 ms: the stream waits for
    // window most of the time, never for body_timeout on end.
    let mut received = 0u64;
    while let Some(data) = body.data().await {
        let data = data.unwrap_or_else(|err| panic!("reset after {received} bytes: {err}"));
        received += data.len() as u64;
        let _ = body.flow_control().release_capacity(data.len());
        tokio::time::sleep(Duration::from_millis(100) * data.len() as u32 / (64 << 10)).await;
    }
    assert_eq!(received, LEN);
    assert_eq!(upstream.abandoned_answers(), 0);
}

/// Whether a [`StopsReading`] connection reads, switched by the test.
#[derive(Default)]
struct ReadSwitch {
    stopped: std::sync::atomic::AtomicBool,
    waiting: std::sync::Mutex<Option<std::task::Waker>>,
}

impl ReadSwitch {
    fn set(&self, stopped: bool) {
        self.stopped
            .store(stopped, std::sync::atomic::Ordering::SeqCst);
        if let Some(waker) = self.waiting.lock().unwrap().take() {
            waker.wake();
        }
    }
}

/// A connection whose reads stop while its switch says so, as an app
/// whose reading thread hung.
struct StopsReading {
    tcp: TcpStream,
    switch: Arc<ReadSwitch>,
}

impl tokio::io::AsyncRead for StopsReading {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this
            .switch
            .stopped
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            *this.switch.waiting.lock().unwrap() = Some(cx.waker().clone());
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}
impl tokio::io::AsyncWrite for StopsReading {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn an_http2_app_that_stops_reading_its_connection_is_closed() {
    let pki = Arc::new(TestPki::new());
    let upstream = one_stream_upstream(&pki).await;
    let proxy = proxy_to(&pki, &upstream.url()).await;

    // Large windows: what holds the answer back is the app's socket.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(proxy.route_addr(0)).await.unwrap();
    let switch = Arc::new(ReadSwitch::default());
    let io = StopsReading {
        tcp,
        switch: switch.clone(),
    };
    let (app, conn) = h2::client::Builder::new()
        .initial_window_size(16 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake::<_, bytes::Bytes>(io)
        .await
        .unwrap();
    let mut conn = tokio::spawn(conn);
    let request = http::Request::get("http://sidekey/big").body(()).unwrap();
    let (head, _) = app
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(request, true)
        .unwrap();
    let _unread = head.await.unwrap();
    switch.set(true);

    // The stuck answer is abandoned upstream, and another app's request
    // gets the upstream's only stream.
    upstream.wait_for_abandoned_answers(1).await;
    let after = proxy.get("/after").await;
    assert_eq!(after.status, 200, "{}", after.text());

    // Not only the stream: the connection was closed. Reading again, the
    // app finds its end (while it still holds the connection open).
    switch.set(false);
    let ended = tokio::time::timeout(PROMPTLY, &mut conn).await;
    assert!(ended.is_ok(), "the app's connection is still open");
    drop(app);
}
