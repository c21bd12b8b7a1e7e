//! The idle deadline of an app connection on a proxy listener: from the
//! moment the connection can take a request (it opened, or the last
//! response ended) the next request head must be complete within
//! `idle_timeout`, else the connection is closed. It bounds idle keep-alive
//! connections and trickling heads alike, as hyper's `header_read_timeout`
//! does, but with one timer per connection instead of one per request.
//!
//! hyper's timer is a boxed sleep made anew for every request head and
//! dropped when the head is read, so every request registered and removed
//! one timer entry. Here one [`Sleep`] lives as long as the connection and
//! only moves: pushing a tokio timer's deadline later is an atomic update
//! of the entry, not a trip through the timer wheel.
//!
//! Three parts share one [`IdleClock`]: [`IdleRead`] wraps the connection
//! and fails a read that waits past the deadline (hyper then closes the
//! connection); its writes arm the timer too, since the response's last
//! write, not a read, may be the connection's last act before it idles;
//! the service calls [`IdleClock::request_started`] when a
//! head is handed over, which stops the clock while the request is served
//! (the upstream's wait is `request_timeout`'s, the bodies'
//! `body_timeout`'s); and the response body, wrapped in [`RestartsIdle`],
//! starts it again when hyper is done with it.
//!
//! An HTTP/2 connection serves many requests at once: the clock counts
//! them ([`Busy`], one per request, dropped with its response body or with
//! a request given up half-way) and runs only while none is served. There,
//! [`IdleClock::expired`] tells the connection when to say GOAWAY
//! ([`crate::http2`]) instead of failing a read.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// When one connection's idle time started; shared by its reads, its
/// service and its response bodies.
#[derive(Debug)]
pub struct IdleClock {
    /// The connection's start: instants are kept as nanoseconds since.
    base: Instant,
    /// Nanoseconds from `base` to the start of the idle time.
    since: AtomicU64,
    /// Requests being served (each holds a [`Busy`]).
    busy: AtomicUsize,
}

impl IdleClock {
    /// A clock for a connection that opens now, idle from the start.
    pub fn start() -> Arc<IdleClock> {
        Arc::new(IdleClock {
            base: Instant::now(),
            since: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        })
    }

    /// A request head was handed over: not idle until the returned [`Busy`]
    /// is dropped (with the response body, or with the request given up).
    pub fn request_started(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Idle from now (a response ended, or the TLS handshake did), unless
    /// another request is being served.
    pub fn restart(&self) {
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.since.store(nanos, Ordering::Relaxed);
    }

    /// When the idle time ends, if the connection is idle.
    pub fn deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.since.load(Ordering::Relaxed);
        Some(crate::deadline::after(
            self.base + Duration::from_nanos(since),
            timeout,
        ))
    }

    /// Return once the connection has been idle for `timeout`. While it is
    /// busy this wakes once per `timeout` to look again: one timer per
    /// connection, moved, never one per request.
    pub async fn expired(&self, timeout: Duration) {
        let sleep = tokio::time::sleep(timeout);
        tokio::pin!(sleep);
        loop {
            sleep.as_mut().await;
            let now = Instant::now();
            match self.deadline(timeout) {
                Some(deadline) if deadline <= now => return,
                Some(deadline) => sleep.as_mut().reset(deadline),
                None => sleep.as_mut().reset(crate::deadline::after(now, timeout)),
            }
        }
    }
}

/// One request being served on a connection: while any is held, the
/// connection is not idle; dropping the last one starts the idle time.
#[derive(Debug)]
pub struct Busy(Arc<IdleClock>);

impl Drop for Busy {
    fn drop(&mut self) {
        // The idle time's start moves before the count drops, so a
        // connection seen idle never shows an older start.
        self.0.restart();
        self.0.busy.fetch_sub(1, Ordering::Release);
    }
}

/// A connection whose reads fail once it has been idle `timeout`.
#[derive(Debug)]
pub struct IdleRead<S> {
    inner: S,
    clock: Arc<IdleClock>,
    timeout: Duration,
    /// Made on the first wait, then moved from deadline to deadline.
    timer: Option<Pin<Box<Sleep>>>,
    /// The deadline a write last set the timer for.
    set_by_write: Option<Instant>,
}

impl<S> IdleRead<S> {
    /// Read `stream` under `clock`, failing reads after `timeout` idle.
    pub fn new(stream: S, clock: Arc<IdleClock>, timeout: Duration) -> Self {
        IdleRead {
            inner: stream,
            clock,
            timeout,
            timer: None,
            set_by_write: None,
        }
    }

    /// Ready once the idle deadline has passed (never while a request is served).
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(deadline) = self.clock.deadline(self.timeout) else {
            return Poll::Pending;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx)
    }

    /// After a write: set the timer for this task if the connection is idle
    /// and no write has yet for this deadline (once is enough: the task is
    /// woken when it fires, and the read then fails).
    fn set_timer(&mut self, cx: &mut Context<'_>) {
        let deadline = self.clock.deadline(self.timeout);
        if deadline.is_some() && deadline != self.set_by_write {
            self.set_by_write = deadline;
            let _ = self.poll_expired(cx);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleRead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if poll.is_pending() && this.poll_expired(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no complete request head within idle_timeout",
            )));
        }
        poll
    }
}

// Writes pass through; when the connection is idle they set the timer
// (for this task), so that it fires even when no read was waiting yet:
// hyper may have polled the last read while the response was still going
// out, before the idle time began.
crate::write_through::write_through!(IdleRead.inner, after = set_timer);

/// A response body that ends its request's [`Busy`] when hyper drops it:
/// after its last frame, or when the response is abandoned.
#[derive(Debug)]
pub struct RestartsIdle<B> {
    body: B,
    _busy: Busy,
}

impl<B> RestartsIdle<B> {
    /// `body`, ending `busy` when dropped.
    pub fn new(body: B, busy: Busy) -> Self {
        RestartsIdle { body, _busy: busy }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for RestartsIdle<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test(start_paused = true)]
    async fn reads_fail_only_while_idle_and_the_clock_restarts_with_each_response() {
        let (client, server) = tokio::io::duplex(64);
        let clock = IdleClock::start();
        let mut conn = IdleRead::new(server, clock.clone(), Duration::from_millis(300));
        let mut buf = [0u8; 8];

        // Serving a request: a long silence is no idleness.
        let busy = clock.request_started();
        let waited = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
        assert!(waited.is_err(), "the read still waits after 5 s");

        // The response ended: idle from now, failing 300 ms later.
        let body = RestartsIdle::new(http_body_util::Empty::<Bytes>::new(), busy);
        drop(body);
        let started = Instant::now();
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_runs_only_while_no_request_is_served() {
        let timeout = Duration::from_millis(300);
        let clock = IdleClock::start();
        let first = clock.request_started();
        let second = clock.request_started();
        drop(first);
        assert_eq!(clock.deadline(timeout), None, "one request still served");
        let expired = tokio::spawn({
            let clock = clock.clone();
            async move {
                clock.expired(timeout).await;
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!expired.is_finished(), "busy for 2 s: not idle");
        let ended = Instant::now();
        drop(second);
        let at = expired.await.unwrap();
        assert_eq!(at - ended, timeout, "idle from the end of the last request");
    }
}
