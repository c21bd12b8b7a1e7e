//! Spreading one listen address's app connections evenly over the serving
//! workers.
//!
//! Linux hands each new connection to one worker's `SO_REUSEPORT` socket by
//! a hash of its addresses and ports, so an app's few keep-alive connections
//! often land unevenly: 4 connections all on one of 2 workers one time in 8,
//! 64 split 38/26 as often as not. The busier worker's requests then wait
//! for its one thread while another thread has nothing to do. So each
//! worker counts the connections it serves, and one that accepts a
//! connection while it serves more than the least busy worker of the
//! address hands the connection over to that one, before reading a byte of
//! it (Envoy's "exact" connection balance). The counts stay within one of
//! each other; handing over costs a channel send per connection, nothing
//! per request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

/// A connection one worker accepted and another is to serve, with what it
/// holds while open (`S`: its place under the connection cap).
#[derive(Debug)]
pub struct Arrived<S> {
    /// The socket, off the accepting worker's runtime.
    pub stream: std::net::TcpStream,
    /// The app's address.
    pub peer: SocketAddr,
    /// What the connection holds while it is open.
    pub held: S,
    /// Its count at the worker that serves it.
    pub open: Open,
}

/// The open connections of each worker on one listen address, and the way
/// to hand a connection to each.
#[derive(Debug)]
pub struct Balance<S> {
    counts: Arc<Counts>,
    hand_to: Box<[mpsc::UnboundedSender<Arrived<S>>]>,
}

/// Connections open per worker. A lock, not atomics: two workers placing at
/// once must not both see the same least busy one (taken once per
/// connection, never per request).
#[derive(Debug)]
struct Counts(Mutex<Box<[usize]>>);

impl Counts {
    /// The counts (a panic elsewhere while holding them leaves them usable).
    fn lock(&self) -> MutexGuard<'_, Box<[usize]>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One worker's share of a [`Balance`]: its index and what is handed to it.
#[derive(Debug)]
pub struct Share<S> {
    /// The balance of the listen address.
    pub balance: Arc<Balance<S>>,
    /// This worker's index.
    pub worker: usize,
    /// Connections other workers hand to this one.
    pub handed: mpsc::UnboundedReceiver<Arrived<S>>,
}

/// A connection counted at a worker, until it is dropped.
#[derive(Debug)]
pub struct Open {
    counts: Arc<Counts>,
    worker: usize,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.counts.lock()[self.worker] -= 1;
    }
}

impl Open {
    /// Count the connection at `worker` instead (handing over failed).
    pub fn move_to(self, worker: usize) -> Open {
        let counts = self.counts.clone();
        drop(self);
        counts.lock()[worker] += 1;
        Open { counts, worker }
    }
}

/// Where a newly accepted connection is served.
#[derive(Debug)]
pub enum Place {
    /// By the worker that accepted it.
    Here(Open),
    /// By the worker at this index, which is counted for it already.
    There(usize, Open),
}

impl<S> Balance<S> {
    /// A balance over `workers` workers: one [`Share`] each.
    pub fn shares(workers: usize) -> Vec<Share<S>> {
        let (hand_to, handed): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let balance = Arc::new(Balance {
            counts: Arc::new(Counts(Mutex::new(vec![0; workers].into()))),
            hand_to: hand_to.into(),
        });
        handed
            .into_iter()
            .enumerate()
            .map(|(worker, handed)| Share {
                balance: balance.clone(),
                worker,
                handed,
            })
            .collect()
    }

    /// Where a connection `worker` just accepted is to be served: there
    /// when `worker` serves more connections than the least busy one.
    pub fn place(&self, worker: usize) -> Place {
        let target = {
            let mut open = self.counts.lock();
            let least = (0..open.len()).min_by_key(|&w| open[w]).unwrap_or(worker);
            let target = if open[worker] > open[least] {
                least
            } else {
                worker
            };
            open[target] += 1;
            target
        };
        let open = Open {
            counts: self.counts.clone(),
            worker: target,
        };
        if target == worker {
            Place::Here(open)
        } else {
            Place::There(target, open)
        }
    }

    /// Connections each worker serves now.
    pub fn open(&self) -> Vec<usize> {
        self.counts.lock().to_vec()
    }

    /// Hand `arrived` to worker `to`; back when that worker no longer
    /// takes connections (its listener has stopped).
    pub fn hand_over(&self, to: usize, arrived: Arrived<S>) -> Result<(), Box<Arrived<S>>> {
        self.hand_to[to]
            .send(arrived)
            .map_err(|mpsc::error::SendError(arrived)| Box::new(arrived))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_least_busy_worker_and_counts_stay_within_one() {
        let shares = Balance::<()>::shares(3);
        let balance = shares[0].balance.clone();
        let mut open = Vec::new();
        // Every connection accepted by worker 0, as a skewed hash would.
        for _ in 0..10 {
            match balance.place(0) {
                Place::Here(o) => open.push((0, o)),
                Place::There(to, o) => open.push((to, o)),
            }
        }
        assert_eq!(balance.open(), [4, 3, 3]);
        // Closing worker 1's connections makes it the one to take the next.
        open.retain(|(at, _)| *at != 1);
        assert_eq!(balance.open(), [4, 0, 3]);
        assert!(matches!(balance.place(2), Place::There(1, _)));
    }

    #[test]
    fn a_worker_that_stopped_taking_connections_gives_them_back() {
        let mut shares = Balance::<()>::shares(2);
        let balance = shares[0].balance.clone();
        drop(shares.remove(1));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, peer) = listener.accept().unwrap();
        let Place::Here(_first) = balance.place(0) else {
            panic!("the first stays here")
        };
        let Place::There(to, open) = balance.place(0) else {
            panic!("the second goes to worker 1")
        };
        let arrived = Arrived {
            stream,
            peer,
            held: (),
            open,
        };
        let back = balance
            .hand_over(to, arrived)
            .expect_err("worker 1 is gone");
        let open = back.open.move_to(0);
        assert_eq!(balance.open(), [2, 0]);
        drop(open);
        assert_eq!(balance.open(), [1, 0]);
    }
}
