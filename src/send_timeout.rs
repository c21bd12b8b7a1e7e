//! The send timeout of an app connection on a proxy listener: an app that
//! takes no byte of what sidekey writes to it for `body_timeout` (a hung
//! worker thread, a client stuck on a lock, a reader that stopped) has its
//! connection closed, as nginx's `send_timeout` does. Without it such an
//! app held the upstream's answer for ever, and with it the upstream
//! connection (HTTP/1.1) or one of the few streams of the worker's shared
//! HTTP/2 connection, which every other app's requests then queued for.
//!
//! [`SendTimeout`] wraps the connection (HTTP/1.1 and HTTP/2 alike). A
//! write, flush or shutdown the kernel does not take (`Pending`) starts a
//! stall; any one it takes ends the stall. A stall that lasts the timeout
//! fails the write with `TimedOut`: hyper closes the connection and drops
//! the responses in progress, which closes the upstream's HTTP/1.1
//! connection mid-answer or resets its HTTP/2 stream. One timer per
//! connection, made at its first stall and moved after; a write that
//! completes costs one branch, no clock read and no timer.
//!
//! The timeout is the longest `body_timeout` of the listener's routes in
//! force when the stall starts: a connection's writes carry whatever it
//! has queued (HTTP/2: frames of many streams, of any route), so no route's
//! reader is cut off sooner than that route allows. It measures the app
//! only: the clock runs only while a write waits on the app, never while
//! sidekey waits on the upstream (that is [`crate::proxy::body::Idle`]'s).
//!
//! "Takes" is what the kernel's send buffer takes, and a full buffer takes
//! more only once some of it has gone out: with the default buffer (up to
//! 4 MiB) that is a third of it, so a slow reader making progress could
//! look stuck. [`limit_unsent`] caps the bytes waiting unsent in the
//! kernel at [`UNSENT_LIMIT`] (`TCP_NOTSENT_LOWAT`), so the kernel takes
//! more as soon as the app has read about half of that; it also bounds
//! what a stuck app holds in kernel memory. Answers up to that size still
//! go out in one write.
//!
//! An HTTP/2 app that reads one stream's answer and not another's keeps
//! its connection moving: that stream is reset by [`crate::stream_stall`]
//! instead, after its own route's `body_timeout`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::deadline::Timer;
use crate::proxy::Dispatch;

/// Bytes the kernel may hold unsent for one app connection
/// ([`limit_unsent`]).
pub const UNSENT_LIMIT: u32 = 128 * 1024;

/// The timeout of a listener without routes (none is ever served).
const FALLBACK: Duration = Duration::from_secs(60);

/// Cap the unsent bytes the kernel holds for `stream` at [`UNSENT_LIMIT`]
/// (Linux; elsewhere the kernel's default applies). Best effort: a socket
/// that refuses keeps the default, and its stalls are seen later.
pub fn limit_unsent(stream: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let _ = socket2::SockRef::from(stream).set_tcp_notsent_lowat(UNSENT_LIMIT);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = stream;
}

/// An app connection whose writes fail once the app has taken no byte
/// for its listener's longest `body_timeout`.
#[derive(Debug)]
pub struct SendTimeout<S> {
    inner: S,
    /// The listener's routes, for the timeout.
    dispatch: Arc<ArcSwap<Dispatch>>,
    /// When the current stall times out; `None` while writes are taken.
    deadline: Option<Instant>,
    /// Made at the first stall, then moved from deadline to deadline.
    timer: Timer,
}

impl<S> SendTimeout<S> {
    /// `stream` of a listener routed by `dispatch`.
    pub fn new(stream: S, dispatch: Arc<ArcSwap<Dispatch>>) -> Self {
        SendTimeout {
            inner: stream,
            dispatch,
            deadline: None,
            timer: Timer::default(),
        }
    }

    /// `poll`, an inner write's outcome, seen by the stall clock: ready
    /// ends a stall; pending starts or goes on with one, and fails once it
    /// has lasted the timeout.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.deadline = None;
            return poll;
        }
        if self.timed_out(cx) {
            debug!(
                "the app took no byte of its answers within body_timeout; closing its connection"
            );
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the app took no byte of its response within body_timeout",
            )));
        }
        Poll::Pending
    }

    /// Whether the current stall has lasted the timeout; if not, the timer
    /// wakes this task when it will have.
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = match self.deadline {
            Some(deadline) => deadline,
            None => {
                let timeout = self
                    .dispatch
                    .load()
                    .longest_body_timeout()
                    .unwrap_or(FALLBACK);
                *self
                    .deadline
                    .insert(crate::deadline::after(Instant::now(), timeout))
            }
        };
        // Set for a later deadline (a reload shortened the timeout), the
        // timer moves now.
        self.timer.poll_until(cx, deadline).is_ready()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A listener without routes: the timeout is [`FALLBACK`].
    fn no_routes() -> Arc<ArcSwap<Dispatch>> {
        Arc::new(ArcSwap::from_pointee(Dispatch::routes(Vec::new())))
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_app_never_takes_fails_after_the_timeout() {
        let (mut app, sidekey) = tokio::io::duplex(64);
        let mut conn = SendTimeout::new(sidekey, no_routes());
        conn.write_all(&[b'x'; 64]).await.unwrap();
        assert!(!conn.timer.made(), "writes taken at once make no timer");

        let started = Instant::now();
        let err = conn.write_all(b"more").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), FALLBACK);
        let mut taken = [0u8; 64];
        app.read_exact(&mut taken).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_app_that_keeps_taking_bytes_is_never_cut_off() {
        let (mut app, sidekey) = tokio::io::duplex(64);
        let mut conn = SendTimeout::new(sidekey, no_routes());
        let reader = tokio::spawn(async move {
            let mut byte = [0u8; 1];
            let mut taken = 0;
            // One byte per 0.9 timeouts: far slower than the writer.
            while app.read_exact(&mut byte).await.is_ok() {
                taken += 1;
                tokio::time::sleep(FALLBACK * 9 / 10).await;
            }
            taken
        });
        let started = Instant::now();
        conn.write_all(&[b'x'; 80]).await.expect("never cut off");
        assert!(started.elapsed() > FALLBACK * 10, "the writes waited");
        drop(conn);
        assert!(reader.await.unwrap() >= 16);
    }
}
