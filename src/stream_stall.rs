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
//!   allocation) and a [`Stall`] watch beside the stream;
//! - [`Watched`], the answer's body, notes on that clock whether its last
//!   act was handing hyper a frame (then hyper waits for window) or not
//!   (it waits for the upstream: [`crate::proxy::body::Idle`] times that);
//! - [`Stall`] ends the task once the last frame handed out has waited
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
use tokio::time::{Instant, Sleep};
use tracing::debug;

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
/// [`StreamClock`] and [`Stall`] watch.
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
    timer: Option<Pin<Box<Sleep>>>,
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
        let deadline = since + timeout;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            if timer.deadline() > deadline {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if timer.deadline() >= deadline {
                return Poll::Ready(());
            }
            // Set for an earlier wait that ended: move it to this one.
            timer.as_mut().reset(deadline);
        }
    }
}
