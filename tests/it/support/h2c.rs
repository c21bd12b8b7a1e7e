//! A hand-driven HTTP/2 client connection with prior knowledge (h2c, no
//! TLS, no `Upgrade`), as gRPC clients speak to a local proxy: one TCP
//! connection, many requests multiplexed on it, and a way to tell whether
//! the server closed it (idle timeout, drain) or still serves it.
//!
//! Request bodies may carry trailers ([`body_with_trailers`]); responses are
//! read whole, trailers included ([`TestResponse::trailers`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::proxy::{BoxError, CLIENT_TIMEOUT, ReqBody, TestResponse, read_whole};

/// A header map from `(name, value)` pairs.
pub fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    map
}

/// A request body of fixed bytes followed by `trailers`.
pub fn body_with_trailers(bytes: impl Into<Bytes>, trailers: &[(&str, &str)]) -> ReqBody {
    let trailers = header_map(trailers);
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed()
}

/// Where a test feeds a [`fed_body`]: data and trailer frames; dropping it
/// ends the body.
pub type Feed = mpsc::Sender<Frame<Bytes>>;

/// A request body of unknown length whose frames the test sends one by
/// one, e.g. after reading each answer (a bidirectional stream).
pub fn fed_body() -> (Feed, ReqBody) {
    let (feed, frames) = mpsc::channel(4);
    (feed, FedBody(frames).boxed())
}

struct FedBody(mpsc::Receiver<Frame<Bytes>>);

impl Body for FedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

/// One HTTP/2 connection with prior knowledge.
pub struct H2cConn {
    sender: http2::SendRequest<ReqBody>,
    /// The connection's task: ends when the connection closes.
    task: JoinHandle<Result<(), hyper::Error>>,
}

impl H2cConn {
    /// Connect to `addr` and send the HTTP/2 preface and settings.
    pub async fn connect(addr: SocketAddr) -> H2cConn {
        let what = format!("h2c connection to {addr}");
        let handshake = async {
            let tcp = TcpStream::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
            tcp.set_nodelay(true).expect("nodelay");
            http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(TokioIo::new(tcp))
                .await
                .unwrap_or_else(|e| panic!("{what}: handshake: {e}"))
        };
        let (sender, conn) = tokio::time::timeout(CLIENT_TIMEOUT, handshake)
            .await
            .unwrap_or_else(|_| panic!("{what}: no handshake within {CLIENT_TIMEOUT:?}"));
        H2cConn {
            sender,
            task: tokio::spawn(conn),
        }
    }

    /// Send `req` (a path, or an absolute `http://` URI) and read the whole
    /// response, trailers included.
    pub async fn send(&mut self, req: Request<ReqBody>) -> TestResponse {
        let what = format!("{} {} (h2c)", req.method(), req.uri());
        let exchange = async {
            let response = self
                .send_head(req)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            read_whole(response).await
        };
        tokio::time::timeout(CLIENT_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| panic!("{what}: no complete response within {CLIENT_TIMEOUT:?}"))
    }

    /// Send `req` and return the response as soon as its head arrives, or
    /// the error (the stream or connection was refused or reset).
    pub async fn send_head(
        &mut self,
        req: Request<ReqBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        let mut req = req;
        if req.uri().authority().is_none() {
            // HTTP/2 requests carry `:scheme` and `:authority`.
            let uri = format!("http://sidekey{}", req.uri());
            *req.uri_mut() = uri.parse().expect("uri");
        }
        self.sender.ready().await?;
        self.sender.send_request(req).await
    }

    /// Whether the server has closed the connection (or said GOAWAY) by
    /// now, without waiting.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed() || self.task.is_finished()
    }

    /// Wait up to `limit` for the server to close the connection.
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, &mut self.task).await.is_ok()
    }
}

impl Drop for H2cConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}
