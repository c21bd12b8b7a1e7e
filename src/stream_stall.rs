//! HTTP/2 streams whose answer the app stopped reading: after the route's
//! `body_timeout` without the app taking a byte of it, the stream is reset
//! (`RST_STREAM CANCEL`) and the upstream's answer dropped, which resets
//! its stream upstream too.
//!
//! [`crate::send_timeout`] does not see such a stream: an app that reads
//! its other streams keeps the connection's writes moving, while this
//! stream's window stays shut. hyper then waits for window before it polls
//! the answer's body again, so the body cannot time out by itself; its
//! stream task must be ended from outside the body. Hence:
//!
//! - [`StreamExecutor`] runs each stream's task (hyper spawns one per
//!   request) with a [`StreamClock`] of its own (a task-local, no
//!   allocation) and a `Stall` watch beside the stream;
//! - [`Watched`], the answer's body, notes on that clock whether its last
//!   act was handing hyper a frame (then hyper waits for window) or not
//!   (it waits for the upstream: [`crate::proxy::body::Idle`] times that);
//! - `Stall` ends the task once the last frame handed out has waited
//!   `body_timeout` for window. Its timer is made only for a stream that
//!   waits for window at all, then moved.
//!
//! A stream whose body is sidekey's own answer (small, whole) is not
//! watched.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Instant;
use tracing::debug;

use crate::deadline::Timer;

tokio::task_local! {
    /// The clock of the stream whose task is being polled.
    static STREAM: StreamClock;
}

/// One stream's clock: when its answer last handed hyper a frame and has
/// not been polled since (the stream waits for window), and its timeout.
#[derive(Debug, Default)]
pub struct StreamClock {
    waiting: Cell<Option<(Instant, Duration)>>,
}

/// Runs hyper's HTTP/2 stream tasks on tokio, each with its
/// [`StreamClock`] and `Stall` watch.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        let watched = async move {
            tokio::select! {
                biased;
                () = stream => {}
                () = Stall::default() => {
                    debug!("the app took no byte of an HTTP/2 answer within body_timeout; stream reset");
                }
            }
        };
        tokio::spawn(STREAM.scope(StreamClock::default(), watched));
    }
}

/// An answer's body on an HTTP/2 stream, noting on its stream's clock
/// whether it waits for window (`timeout`: its route's `body_timeout`;
/// `None`: not watched).
#[derive(Debug)]
pub struct Watched<B> {
    body: B,
    timeout: Option<Duration>,
}

impl<B> Watched<B> {
    /// `body`, reset after `timeout` waiting for window (`None`: never).
    pub fn new(body: B, timeout: Option<Duration>) -> Self {
        Watched { body, timeout }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Watched<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Some(timeout) = this.timeout {
            // Handed a frame: hyper polls again once the window has room.
            let waiting = matches!(polled, Poll::Ready(Some(Ok(_)))) && !this.body.is_end_stream();
            let _ = STREAM.try_with(|clock| {
                clock
                    .waiting
                    .set(waiting.then(|| (Instant::now(), timeout)));
            });
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

/// Ready once the stream's answer has waited its timeout for window.
#[derive(Debug, Default)]
struct Stall {
    /// Made at the stream's first wait for window, then moved.
    timer: Timer,
}

impl Future for Stall {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let Ok(Some((since, timeout))) = STREAM.try_with(|clock| clock.waiting.get()) else {
            // Not waiting for window: the stream's own progress wakes the
            // task, and this is polled again with it.
            return Poll::Pending;
        };
        this.timer
            .poll_until(cx, crate::deadline::after(since, timeout))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::BodyExt;
    use hyper::rt::Executor;
    use tokio::sync::oneshot;

    use super::*;

    const T: Duration = Duration::from_secs(10);

    /// A body that hands one frame (while `first`) and then never another.
    struct OneThenNothing {
        first: bool,
    }

    impl Body for OneThenNothing {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            if std::mem::take(&mut self.first) {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"x")))));
            }
            Poll::Pending
        }
    }

    /// Sends when the stream task was ended (its future dropped).
    struct Ended(Option<oneshot::Sender<Instant>>);

    impl Drop for Ended {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(Instant::now());
            }
        }
    }

    /// A stream task whose body hands hyper one frame; then hyper either
    /// waits for window (does not poll it again) or, with `polled_again`,
    /// polls it again and waits for the upstream. When it was ended.
    fn stream_task(polled_again: bool) -> oneshot::Receiver<Instant> {
        let (tx, rx) = oneshot::channel();
        StreamExecutor.execute(async move {
            let _ended = Ended(Some(tx));
            let mut body = Watched::new(OneThenNothing { first: true }, Some(T));
            let _ = body.frame().await;
            if polled_again {
                let _ = body.frame().await;
            }
            std::future::pending::<()>().await;
        });
        rx
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_waiting_for_window_is_ended_after_its_timeout() {
        let started = Instant::now();
        let ended = stream_task(false);
        let at = ended.await.expect("ended");
        assert_eq!(at - started, T);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_waiting_for_the_upstream_is_left_to_the_body_timeout() {
        let mut ended = stream_task(true);
        tokio::time::sleep(T * 10).await;
        assert!(ended.try_recv().is_err(), "still running after 10 timeouts");
    }
}
