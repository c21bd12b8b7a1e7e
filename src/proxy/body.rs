//! Bodies on their way through the proxy, in both directions.
//!
//! Both directions carry an idle deadline, `body_timeout` ([`Idle`]): bytes
//! must keep arriving. The clock runs only while the proxy waits for the
//! next piece of a body, never while the other side is slow to take it, so
//! a slow reader is not blamed on the sender (an app that takes nothing at
//! all is closed by [`crate::send_timeout`]). A stalled body ends with
//! [`BodyError::Stalled`]: for the app's request body that becomes a 408
//! (see `forward`), for the upstream's response body the app's response is
//! cut off ([`FromUpstream`] logs it and counts it). A streamed request body
//! also raises a [`StallFlag`]: hyper's HTTP/2 client reports a request body
//! that failed only as a stream it reset, so `forward` asks the body.
//!
//! Request bodies are kept whole when small enough to be sent a second time,
//! otherwise streamed ([`take`]). A body of known length over the limit
//! streams at once. Any other is read until it ends or passes the limit: a
//! small one is kept, a large one streams on with the frames already read
//! in front ([`Prefixed`]), so nothing is lost either way. A body with
//! trailers is streamed, whatever its length (a kept body has no place for
//! them). Whether a body may be held back at all is `forward`'s call (an
//! HTTP/2 stream of unknown length is not: see there).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Instant;
use tracing::warn;

use super::linger::Stalls;
use crate::deadline::Timer;
use crate::error_chain::error_chain;
use crate::metrics::RouteMetrics;

/// Why a body ended early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// No bytes arrived for the whole `body_timeout`.
    #[error("the body stalled: no bytes for {0:?}")]
    Stalled(Duration),
    /// The connection failed while the body was read.
    #[error("reading the body failed")]
    Read(#[source] BoxError),
}

/// A body's own error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body with an idle deadline: each wait for its next frame may last at
/// most `timeout`.
///
/// One timer per body, made on the first wait and re-armed only when it
/// fires early: each wait notes when it began, and a timer still set for an
/// earlier wait is moved to the current wait's deadline when it goes off.
/// A body that never has to wait never makes a timer.
#[derive(Debug)]
pub struct Idle<B = super::linger::FromApp> {
    inner: B,
    timeout: Duration,
    /// When the current wait for a frame began; `None` between waits.
    waiting_since: Option<Instant>,
    timer: Timer,
}

impl<B> Idle<B> {
    /// `body`, allowed to pause at most `timeout` between frames.
    pub fn new(body: B, timeout: Duration) -> Self {
        Idle {
            inner: body,
            timeout,
            waiting_since: None,
            timer: Timer::default(),
        }
    }

    /// Pending until the current wait has lasted `timeout`; then ready.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        self.timer
            .poll_until(cx, crate::deadline::after(since, self.timeout))
    }
}

impl<B> Body for Idle<B>
where
    B: Body<Data = Bytes> + Stalls + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.waiting_since = None;
            return Poll::Ready(frame.map(|frame| frame.map_err(|e| BodyError::Read(e.into()))));
        }
        match this.poll_deadline(cx) {
            Poll::Ready(()) => {
                this.inner.stalled();
                Poll::Ready(Some(Err(BodyError::Stalled(this.timeout))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream's response body on its way to the app: [`Idle`], and when
/// it breaks (stalled, or the connection failed) one log line and one
/// `sidekey_upstream_errors_total{kind="body_timeout"|"body"}`; the error
/// then makes hyper cut the app's response off, so a broken body never
/// looks complete.
#[derive(Debug)]
pub struct FromUpstream {
    body: Idle<Incoming>,
    metrics: Arc<RouteMetrics>,
    /// The access line of this response (`[log] access`); `None` when off.
    access: Option<Box<super::access::Line>>,
}

impl FromUpstream {
    /// The upstream's `body` for the route of `metrics`, allowed to pause `timeout`.
    pub fn new(body: Incoming, timeout: Duration, metrics: Arc<RouteMetrics>) -> Self {
        FromUpstream {
            body: Idle::new(body, timeout),
            metrics,
            access: None,
        }
    }

    /// How long it may pause: its route's `body_timeout`.
    pub fn timeout(&self) -> Duration {
        self.body.timeout
    }

    /// The access line it carries, written when the body is dropped
    /// ([`super::access`]).
    pub fn access_line(&mut self) -> &mut Option<Box<super::access::Line>> {
        &mut self.access
    }
}

impl Body for FromUpstream {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Some(line) = &mut this.access
            && let Poll::Ready(Some(Ok(frame))) = &polled
        {
            line.count(frame.data_ref().map_or(0, Bytes::len));
        }
        if let Poll::Ready(Some(Err(err))) = &polled {
            let route = &**this.metrics.route();
            match err {
                BodyError::Stalled(timeout) => {
                    this.metrics.record_upstream_error("body_timeout");
                    warn!(
                        route,
                        ?timeout,
                        "upstream response body stalled; response to the app cut off"
                    );
                }
                BodyError::Read(_) => {
                    this.metrics.record_upstream_error("body");
                    warn!(route, error = %error_chain(err), "upstream response body failed; response to the app cut off");
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What [`take`] made of a request body.
#[derive(Debug)]
pub enum Outgoing {
    /// The whole body, small enough to send again.
    Kept(Bytes),
    /// Too large (or with trailers): streamed, never buffered whole.
    Streamed(Prefixed),
}

/// Read `body` as far as needed to decide whether it can be kept (≤ `limit` bytes).
pub async fn take(mut body: Idle, limit: u64) -> Result<Outgoing, BodyError> {
    if body.size_hint().exact().is_some_and(|len| len > limit) {
        return Ok(Outgoing::Streamed(Prefixed::new(body)));
    }
    let mut head = VecDeque::new();
    let mut size: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let is_data = frame.is_data();
        if let Some(data) = frame.data_ref() {
            size += data.len() as u64;
        }
        head.push_back(frame);
        if size > limit || !is_data {
            return Ok(Outgoing::Streamed(Prefixed::after(head, body)));
        }
    }
    if head.len() <= 1 {
        // One frame (the usual `Content-Length` body) or none: no copy.
        let data = head.pop_front().and_then(|frame| frame.into_data().ok());
        return Ok(Outgoing::Kept(data.unwrap_or_default()));
    }
    let mut whole = BytesMut::with_capacity(size as usize);
    for frame in head {
        if let Ok(data) = frame.into_data() {
            whole.extend_from_slice(&data);
        }
    }
    Ok(Outgoing::Kept(whole.freeze()))
}

/// Raised when a streamed request body stalled.
#[derive(Clone, Debug, Default)]
pub struct StallFlag(Arc<AtomicBool>);

impl StallFlag {
    /// Whether the body stalled.
    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn raise(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A streamed body: frames already read, then the rest of the app's body.
#[derive(Debug)]
pub struct Prefixed {
    head: VecDeque<Frame<Bytes>>,
    rest: Option<Idle>,
    stalled: StallFlag,
}

impl Prefixed {
    /// The app's body, untouched.
    pub fn new(body: Idle) -> Self {
        Self::after(VecDeque::new(), body)
    }

    /// `head`, then the rest of `body`.
    fn after(head: VecDeque<Frame<Bytes>>, body: Idle) -> Self {
        Prefixed {
            head,
            rest: Some(body),
            stalled: StallFlag::default(),
        }
    }

    /// The flag this body raises when it stalls.
    pub fn stall_flag(&self) -> StallFlag {
        self.stalled.clone()
    }
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.head.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let Some(rest) = this.rest.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(rest).poll_frame(cx);
        if let Poll::Ready(Some(Err(BodyError::Stalled(_)))) = polled {
            this.stalled.raise();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
        if self.head.is_empty() {
            return rest;
        }
        let head: u64 = self
            .head
            .iter()
            .filter_map(|frame| frame.data_ref().map(|data| data.len() as u64))
            .sum();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + head);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + head);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tokio::sync::mpsc;

    use super::*;

    /// A body fed frame by frame from the test.
    struct Fed(mpsc::Receiver<Bytes>);

    impl crate::proxy::linger::Stalls for Fed {}

    impl Body for Fed {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0
                .poll_recv(cx)
                .map(|data| data.map(|d| Ok(Frame::data(d))))
        }
    }

    fn fed(timeout: Duration) -> (mpsc::Sender<Bytes>, Idle<Fed>) {
        let (tx, rx) = mpsc::channel(16);
        (tx, Idle::new(Fed(rx), timeout))
    }

    const T: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn bytes_that_keep_coming_never_time_out() {
        let (tx, mut body) = fed(T);
        tokio::spawn(async move {
            for _ in 0..20 {
                tokio::time::sleep(T * 9 / 10).await;
                let _ = tx.send(Bytes::from_static(b"x")).await;
            }
        });
        let started = Instant::now();
        let mut frames = 0;
        while let Some(frame) = body.frame().await {
            frame.expect("no timeout while bytes keep coming");
            frames += 1;
        }
        assert_eq!(frames, 20);
        assert!(
            started.elapsed() >= T * 18,
            "20 pauses of 0.9 T, longer than T in all"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_of_the_whole_timeout_is_a_stall() {
        let (tx, mut body) = fed(T);
        tx.send(Bytes::from_static(b"first")).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        let waiting = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(matches!(err, BodyError::Stalled(t) if t == T));
        assert_eq!(waiting.elapsed(), T, "measured from the start of the wait");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_is_not_blamed_on_the_sender() {
        let (tx, mut body) = fed(T);
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        // The reader takes 3 T to come back; the next bytes are there.
        tokio::time::sleep(T * 3).await;
        tx.send(Bytes::from_static(b"b")).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        // And the clock for the following wait starts now, not at the last byte.
        tokio::time::sleep(T * 3).await;
        let waiting = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(matches!(err, BodyError::Stalled(_)));
        assert_eq!(waiting.elapsed(), T);
    }

    #[tokio::test(start_paused = true)]
    async fn the_end_of_the_body_is_passed_on() {
        let (tx, mut body) = fed(T);
        tx.send(Bytes::from_static(b"all")).await.unwrap();
        drop(tx);
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "all"
        );
        assert!(body.frame().await.is_none());
    }
}
