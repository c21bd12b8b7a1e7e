//! How many of its requests an HTTP/2 app may cancel once sidekey is
//! working on them.
//!
//! h2 closes a connection whose app resets streams before sidekey has
//! taken them (rapid reset, `max_pending_accept_reset_streams`). An app
//! that waits a moment before each reset gets past that: sidekey has
//! taken the stream, sent the request on with the credential, and cancels
//! the upstream request when the stream is reset (an HTTP/2 upstream's
//! stream is reset, an HTTP/1.1 upstream's connection closed). Each such
//! request frees its stream at once, so the app's concurrency limit does
//! not bound them: one connection could start upstream requests, and over
//! HTTP/1.1 open upstream connections, as fast as it can write, without
//! waiting for one answer.
//!
//! [`Cancels`] keeps one connection's count: a request the app gives up
//! before its answer's head ([`Pending`] dropped) adds one, an answered one
//! takes one off. A client that cancels some calls (deadlines, a user who
//! navigates away) stays near zero; one whose count passes the limit
//! (`crate::http2::MAX_CANCELLED`) is told to stop ([`Cancels::exceeded`]),
//! and `crate::http2` closes its connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// One connection's cancelled requests less its answered ones (never below
/// zero).
#[derive(Debug, Default)]
pub struct Cancels {
    /// Most the count may reach.
    limit: usize,
    count: AtomicUsize,
    /// Set once the count passed `limit`; never cleared.
    tripped: AtomicBool,
    exceeded: Notify,
}

impl Cancels {
    /// A new connection's count, allowed to reach `limit`.
    pub fn new(limit: usize) -> Arc<Cancels> {
        Arc::new(Cancels {
            limit,
            ..Cancels::default()
        })
    }

    /// A request is being served: count it cancelled unless
    /// [`Pending::answered`] is called.
    pub fn pending(self: &Arc<Self>) -> Pending {
        Pending {
            cancels: Some(self.clone()),
        }
    }

    /// Resolves once more than the limit of requests were cancelled
    /// (net of the answered ones), and from then on at once.
    pub async fn exceeded(&self) {
        loop {
            let notified = self.exceeded.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_exceeded() {
                return;
            }
            notified.await;
        }
    }

    /// Whether more than the limit were cancelled at some point
    /// (answers that came after do not undo it).
    pub fn is_exceeded(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }

    fn cancelled(&self) {
        if self.count.fetch_add(1, Ordering::Relaxed) + 1 > self.limit {
            self.tripped.store(true, Ordering::Relaxed);
            self.exceeded.notify_waiters();
        }
    }

    fn answered(&self) {
        // Never below zero: answers do not buy cancels ahead.
        let _ = self
            .count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// A request being served; dropped before [`Pending::answered`], it counts
/// as cancelled.
#[derive(Debug)]
pub struct Pending {
    cancels: Option<Arc<Cancels>>,
}

impl Pending {
    /// The request's answer head is ready.
    pub fn answered(mut self) {
        if let Some(cancels) = self.cancels.take() {
            cancels.answered();
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(cancels) = self.cancels.take() {
            cancels.cancelled();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_pay_off_cancels_and_too_many_in_a_row_are_told() {
        const LIMIT: usize = 100;
        let cancels = Cancels::new(LIMIT);
        // Answers first buy nothing ahead.
        for _ in 0..10 {
            cancels.pending().answered();
        }
        for _ in 0..LIMIT {
            drop(cancels.pending());
        }
        // One answered call between keeps the count at the limit.
        cancels.pending().answered();
        drop(cancels.pending());
        let exceeded = cancels.exceeded();
        tokio::pin!(exceeded);
        assert!(futures_poll(exceeded.as_mut()).is_pending());
        drop(cancels.pending());
        assert!(futures_poll(exceeded.as_mut()).is_ready());
        // For good: an answer that comes after does not undo it.
        cancels.pending().answered();
        assert!(cancels.is_exceeded());
    }

    fn futures_poll<F: std::future::Future>(
        future: std::pin::Pin<&mut F>,
    ) -> std::task::Poll<F::Output> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        future.poll(&mut cx)
    }
}
