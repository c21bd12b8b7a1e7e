//! Stopping one listener wherever it is served (the calling runtime or the
//! serving workers' threads): [`Stop`] is kept by whoever owns the
//! listener, [`Stopping`] goes with each of the listener's serving futures.
//!
//! - [`Stop::drain_within`]: the listener stops accepting at once (its
//!   sockets close), lets its open connections finish their requests, and
//!   after `grace` the connections still open are closed.
//! - Dropping a [`Stop`] closes the listener and its connections at once:
//!   [`Stopping::guard`] drops the serving future, and with it the
//!   connections it owns.
//!
//! Nothing here depends on a runtime: the signals are `watch` and `mpsc`
//! channels, so a [`Stop`] on the main runtime stops futures on any thread.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// The owner's side: stop the listener, learn when it has stopped.
#[derive(Debug)]
pub struct Stop {
    /// `true`: stop accepting and let the connections finish.
    drain: watch::Sender<bool>,
    /// Never sent: dropped, it ends every serving future at once.
    _abort: watch::Sender<()>,
    /// Every serving future holds a sender; all gone: stopped.
    alive: mpsc::Receiver<()>,
}

/// A serving future's side: when to stop accepting, and when to give up.
#[derive(Clone, Debug)]
pub struct Stopping {
    drain: watch::Receiver<bool>,
    abort: watch::Receiver<()>,
    alive: mpsc::Sender<()>,
}

/// A new pair: the owner's [`Stop`] and what each serving future takes.
pub fn channel() -> (Stop, Stopping) {
    let (drain, drain_rx) = watch::channel(false);
    let (abort, abort_rx) = watch::channel(());
    let (alive_tx, alive) = mpsc::channel(1);
    (
        Stop {
            drain,
            _abort: abort,
            alive,
        },
        Stopping {
            drain: drain_rx,
            abort: abort_rx,
            alive: alive_tx,
        },
    )
}

impl Stop {
    /// Tell the listener to stop accepting and let its connections finish.
    pub fn begin_drain(&self) {
        let _ = self.drain.send(true);
    }

    /// Return once every serving future of the listener has ended. Cancel-safe.
    pub async fn stopped(&mut self) {
        while self.alive.recv().await.is_some() {}
    }

    /// Stop accepting now, wait up to `grace` for the open connections to
    /// finish, then close whatever is left; whether they finished in time.
    pub async fn drain_within(mut self, grace: Duration) -> bool {
        self.begin_drain();
        tokio::time::timeout(grace, self.stopped()).await.is_ok()
        // Dropping `self` closes what is left.
    }
}

impl Stopping {
    /// The signal to stop accepting (turns `true`, or its sender goes away).
    pub fn drain(&self) -> watch::Receiver<bool> {
        self.drain.clone()
    }

    /// `serving`, ended early (dropped, with whatever it owns) when the
    /// [`Stop`] is dropped; the listener counts as running until it ends.
    pub fn guard<F>(self, serving: F) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Stopping {
            mut abort, alive, ..
        } = self;
        async move {
            tokio::select! {
                () = serving => {}
                // The sender never sends: this completes when it is dropped.
                _ = abort.changed() => {}
            }
            drop(alive);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_the_serving_future_then_dropping_aborts_it() {
        // A listener that ends one second after it is told to drain.
        let (stop, stopping) = channel();
        let mut drain = stopping.drain();
        let serving = stopping.guard(async move {
            let _ = drain.wait_for(|d| *d).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let task = tokio::spawn(serving);
        assert!(stop.drain_within(Duration::from_secs(5)).await);
        task.await.unwrap();

        // One that never ends is cut off after the grace period.
        let (stop, stopping) = channel();
        let task = tokio::spawn(stopping.guard(std::future::pending()));
        let started = tokio::time::Instant::now();
        assert!(!stop.drain_within(Duration::from_secs(2)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        task.await.expect("dropping the Stop ended the future");
    }
}
