//! HTTP/2 app connections on a proxy listener: h2c by prior knowledge (the
//! preface, [`crate::preface`]) on a plain listener, or `h2` by ALPN on a
//! TLS one. Each request goes through [`service::handle_request`] exactly
//! as an HTTP/1.1 one does (strip-then-inject, body timeouts, the one
//! retry); what differs is the connection around it:
//!
//! - Request heads are bounded by `max_header_bytes`, as the HTTP/2
//!   header list size (RFC 9113 §6.5.2: names, values and 32 bytes per
//!   field); a larger head is answered `431` by the h2 layer and never
//!   reaches the service.
//! - Memory: what the app may send ahead is bounded by flow control, the
//!   protocol's default 64 KiB per stream and [`CONNECTION_WINDOW`] (1 MiB)
//!   for the connection, large enough that uploads an upstream is slow to
//!   take hold up none of the connection's other streams; what waits to go
//!   to a slow app by [`SEND_BUFFER`] per stream, of at most [`MAX_STREAMS`].
//! - Idle: the connection is idle while none of its requests is being
//!   served ([`IdleClock`], counted per request); after `idle_timeout` of
//!   that it says GOAWAY and closes, and if the peer keeps it open past
//!   another `idle_timeout`, it is dropped.
//! - Apps that stop reading: a stream whose answer the app takes no byte
//!   of for its route's `body_timeout` is reset ([`crate::stream_stall`]);
//!   a connection that takes no byte at all is closed
//!   ([`crate::send_timeout`]).
//! - Cancels: an app that resets more than [`MAX_CANCELLED`] requests in a
//!   row once they were sent upstream, with none answered between
//!   ([`crate::cancels`]), gets GOAWAY; its new streams are refused
//!   (`REFUSED_STREAM`) and the connection is dropped after `idle_timeout`
//!   if it stays open.
//! - Drain: on shutdown it says GOAWAY, lets the streams in progress
//!   finish, then closes (the caller bounds how long, `shutdown_grace`).
//! - Abuse of the protocol itself is h2's to refuse, under these settings
//!   (tests/it/h2c_abuse.rs, h2c_frames.rs): floods of reset streams, of
//!   empty DATA frames or of streams it must refuse itself, and header
//!   blocks that never end or decompress past four times the header list
//!   size, end the connection with GOAWAY `ENHANCE_YOUR_CALM`; h2 reads no
//!   frame while the ACK of a PING or SETTINGS waits to be written, so an
//!   app that floods them without reading stops its own flood.
//! - There is no request framing to check: HTTP/2 frames every body
//!   itself, and the h2 layer refuses connection-specific headers
//!   (`transfer-encoding`, `connection`, a `te` other than `trailers`).

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::Request;
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

use tracing::warn;

use crate::cancels::Cancels;
use crate::config::ConnLimits;
use crate::idle::{IdleClock, RestartsIdle};
use crate::metrics::Metrics;
use crate::proxy::framing::Framing;
use crate::proxy::{Dispatch, service};
use crate::stream_stall::{StreamExecutor, Watched};

/// Streams one connection may have open at once (RFC 9113 §6.5.2
/// recommends no fewer than 100).
pub const MAX_STREAMS: u32 = 100;

/// Requests one connection's app may cancel once they were sent upstream,
/// with none answered in between ([`crate::cancels`]): its stream limit,
/// so that an app that gives up every call it has open at once is never
/// cut off for it.
pub const MAX_CANCELLED: usize = MAX_STREAMS as usize;

/// Request body bytes the app may send ahead on one stream: the protocol's
/// initial window, enough on loopback, where window updates come at once.
const STREAM_WINDOW: u32 = 64 * 1024;

/// Request body bytes the app may send ahead on one connection, over all
/// its streams: sixteen stream windows. An upload the upstream is slow to
/// take keeps its stream's window in sidekey; with four such streams filling
/// the connection's window (256 KiB, as it was), every other call on the
/// app's connection (a gRPC channel carries them all) could send no body
/// and failed with 408.
pub const CONNECTION_WINDOW: u32 = 16 * STREAM_WINDOW;

/// Response bytes held for one stream while the app is slow to take them.
pub const SEND_BUFFER: usize = 64 * 1024;

/// Serve one HTTP/2 app connection until it closes: after `idle_timeout`
/// without a request in progress, or once `shutdown` turns true and its
/// streams are done.
pub async fn serve_connection<S>(
    stream: S,
    dispatch: Arc<ArcSwap<Dispatch>>,
    metrics: Metrics,
    limits: &ConnLimits,
    clock: Arc<IdleClock>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cancels = Cancels::new(MAX_CANCELLED);
    let service = {
        let (clock, cancels) = (clock.clone(), cancels.clone());
        service_fn(move |request: Request<Incoming>| {
            let busy = clock.request_started();
            let dispatch = dispatch.load_full();
            let metrics = metrics.clone();
            // Once the app cancelled too many, its new streams are refused
            // unprocessed (it may send them again on a new connection).
            let pending = (!cancels.is_exceeded()).then(|| cancels.pending());
            async move {
                let Some(pending) = pending else {
                    return Err(h2::Error::from(h2::Reason::REFUSED_STREAM));
                };
                let response =
                    service::handle_request(&dispatch, request, Framing::Clear, &metrics).await;
                pending.answered();
                Ok(response.map(|body| {
                    // The upstream's answer is watched; sidekey's own is whole.
                    let timeout = match &body {
                        Either::Left(upstream) => Some(upstream.timeout()),
                        Either::Right(_) => None,
                    };
                    RestartsIdle::new(Watched::new(body, timeout), busy)
                }))
            }
        })
    };
    let mut builder = http2::Builder::new(StreamExecutor);
    builder
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buf_size(SEND_BUFFER);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);

    let timeout = limits.idle_timeout;
    // Set once GOAWAY was said for idleness: the peer must be gone by then.
    let mut closing_by: Option<Instant> = None;
    let mut draining = false;
    let mut cut_off = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => return result,
            () = clock.expired(timeout), if closing_by.is_none() && !draining => {
                connection.as_mut().graceful_shutdown();
                closing_by = Some(crate::deadline::after(Instant::now(), timeout));
            }
            _ = shutdown.wait_for(|stop| *stop), if !draining => {
                draining = true;
                if closing_by.is_none() {
                    connection.as_mut().graceful_shutdown();
                }
            }
            () = cancels.exceeded(), if !cut_off => {
                cut_off = true;
                warn!(
                    "an HTTP/2 app cancelled more than {MAX_CANCELLED} requests in a row once \
                     they were sent upstream; its connection is closed"
                );
                connection.as_mut().graceful_shutdown();
                let by = crate::deadline::after(Instant::now(), timeout);
                closing_by = Some(closing_by.map_or(by, |earlier| earlier.min(by)));
            }
            () = sleep_until(closing_by) => return Ok(()),
        }
    }
}

/// Sleep until `deadline`, or for ever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
