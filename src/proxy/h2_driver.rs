//! One task per upstream HTTP/2 connection, instead of hyper's one per request.
//!
//! hyper's HTTP/2 client hands its futures to an executor: the connection's
//! I/O, the dispatch of requests to it and then, for every request, one
//! future that waits for the response (and one that streams a request body
//! when there is one). Spawned as tokio tasks, each request costs a task
//! allocation, its registration and removal, and a wake-up of a task that
//! does little more than pass the response on; measured with callgrind,
//! spawning alone was about 2,400 instructions of a request's 62,000
//! (`bench/count.sh`).
//!
//! [`ConnExecutor`] is that executor for one connection: every future it is
//! given joins a set polled by one tokio task, the connection's driver,
//! which polls only the futures that were woken. The driver is spawned with
//! the first future and ends when the set is empty, which happens once the
//! connection is closed and its last requests have been answered or failed
//! (hyper fails them when the connection goes). A future given after that
//! starts a new driver.
//!
//! Futures are boxed once each (what a task allocation was); a slot and its
//! waker are reused by later futures.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake, Waker};

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Most futures polled in one turn of the driver before it yields to the
/// runtime's other tasks (and is scheduled again). This also bounds the
/// turn once tokio's cooperative budget, which all the connection's futures
/// share, runs out: each of them then wakes itself and returns pending, and
/// the budget is refilled only when the driver yields.
const POLLS_PER_TURN: usize = 64;

/// hyper's executor for one HTTP/2 connection: see the module docs. Clones
/// share the connection's set.
#[derive(Clone, Default)]
pub struct ConnExecutor {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ConnExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnExecutor").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    slots: Vec<Slot>,
    /// Indexes of empty slots.
    free: Vec<usize>,
    /// Indexes of slots whose future was woken (each at most once).
    woken: Vec<usize>,
    /// Futures in the set.
    live: usize,
    /// The driver task's waker; `None` while it runs or when there is none.
    driver: Option<Waker>,
    /// A driver task exists (it ends when `live` drops to zero).
    running: bool,
}

struct Slot {
    /// The future; taken out while it is polled.
    future: Option<BoxFuture>,
    /// From `execute` until the future is done (wakes of a done future are dropped).
    occupied: bool,
    waker: Waker,
    woken: bool,
}

/// Wakes one slot: queues it and wakes the driver unless it is running.
struct SlotWaker {
    shared: Weak<Shared>,
    index: usize,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let driver = {
            let mut state = lock(&shared.state);
            let State {
                slots,
                woken,
                driver,
                ..
            } = &mut *state;
            match slots.get_mut(self.index) {
                Some(slot) if slot.occupied && !slot.woken => {
                    slot.woken = true;
                    woken.push(self.index);
                    driver.take()
                }
                _ => None,
            }
        };
        if let Some(driver) = driver {
            driver.wake();
        }
    }
}

impl<F> hyper::rt::Executor<F> for ConnExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        let spawn = {
            let mut state = lock(&self.shared.state);
            let index = match state.free.pop() {
                Some(index) => index,
                None => {
                    let index = state.slots.len();
                    let waker = Waker::from(Arc::new(SlotWaker {
                        shared: Arc::downgrade(&self.shared),
                        index,
                    }));
                    state.slots.push(Slot {
                        future: None,
                        occupied: false,
                        waker,
                        woken: false,
                    });
                    index
                }
            };
            let slot = &mut state.slots[index];
            slot.future = Some(Box::pin(future));
            slot.occupied = true;
            slot.woken = true;
            state.woken.push(index);
            state.live += 1;
            let spawn = !state.running;
            state.running = true;
            if let Some(driver) = state.driver.take() {
                drop(state);
                driver.wake();
            }
            spawn
        };
        if spawn {
            tokio::spawn(Driver {
                shared: self.shared.clone(),
                batch: Vec::new(),
                finished: false,
            });
        }
    }
}

/// The task that polls a connection's woken futures.
struct Driver {
    shared: Arc<Shared>,
    /// The woken indexes being polled (kept to reuse its allocation).
    batch: Vec<usize>,
    /// The set was empty and the driver ended: a later future has a new one.
    finished: bool,
}

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut polled = 0;
        loop {
            {
                let mut state = lock(&this.shared.state);
                if state.woken.is_empty() {
                    if state.live == 0 {
                        state.running = false;
                        this.finished = true;
                        return Poll::Ready(());
                    }
                    state.driver = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                if polled >= POLLS_PER_TURN {
                    drop(state);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                std::mem::swap(&mut this.batch, &mut state.woken);
            }
            for index in this.batch.drain(..) {
                polled += 1;
                // Taken out while polled: a future may give the executor a
                // new one (the connection does, for each request).
                let (mut future, waker) = {
                    let mut state = lock(&this.shared.state);
                    let slot = &mut state.slots[index];
                    slot.woken = false;
                    match slot.future.take() {
                        Some(future) => (future, slot.waker.clone()),
                        None => continue,
                    }
                };
                let done = future
                    .as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_ready();
                let mut state = lock(&this.shared.state);
                if done {
                    state.slots[index].occupied = false;
                    state.live -= 1;
                    state.free.push(index);
                } else {
                    state.slots[index].future = Some(future);
                }
            }
        }
    }
}

impl Drop for Driver {
    /// Dropped before its set is empty (the runtime shuts down, or a future
    /// panicked): the futures go too, or they would keep the connection
    /// (they hold the executor, which holds them) and never run again.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let futures: Vec<BoxFuture> = {
            let mut state = lock(&self.shared.state);
            state.running = false;
            state.driver = None;
            state.woken.clear();
            state.live = 0;
            let State { slots, free, .. } = &mut *state;
            free.clear();
            free.extend(0..slots.len());
            slots
                .iter_mut()
                .filter_map(|slot| {
                    slot.occupied = false;
                    slot.woken = false;
                    slot.future.take()
                })
                .collect()
        };
        drop(futures);
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic in a polled future happens outside the lock; the state stays consistent.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::oneshot;

    fn running(executor: &ConnExecutor) -> bool {
        lock(&executor.shared.state).running
    }

    #[tokio::test]
    async fn futures_run_in_one_task_until_the_set_is_empty() {
        let executor = ConnExecutor::default();
        let (tx, rx) = oneshot::channel::<u32>();
        let (done_tx, done_rx) = oneshot::channel::<u32>();
        // One waits for a value from outside; another, given from inside a
        // polled future (as hyper's connection does per request), sends it.
        executor.execute(async move {
            let _ = done_tx.send(rx.await.unwrap_or(0) + 1);
        });
        let inner = executor.clone();
        executor.execute(async move {
            tokio::task::yield_now().await; // wakes itself while polled
            inner.execute(async move {
                let _ = tx.send(41);
            });
        });
        assert_eq!(done_rx.await.ok(), Some(42));
        for _ in 0..10 {
            if !running(&executor) {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(!running(&executor), "the driver ends with its last future");
        assert_eq!(lock(&executor.shared.state).live, 0);

        // A later future starts a new driver.
        let (tx, rx) = oneshot::channel();
        executor.execute(async move {
            let _ = tx.send(());
        });
        assert!(rx.await.is_ok());
    }

    #[tokio::test]
    async fn slots_are_reused() {
        let executor = ConnExecutor::default();
        let count = Arc::new(AtomicUsize::new(0));
        for _ in 0..100 {
            let (tx, rx) = oneshot::channel();
            let count = count.clone();
            executor.execute(async move {
                count.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(());
            });
            assert!(rx.await.is_ok());
        }
        assert_eq!(count.load(Ordering::Relaxed), 100);
        assert!(lock(&executor.shared.state).slots.len() <= 2);
    }

    #[tokio::test]
    async fn a_panicking_future_drops_the_others() {
        let executor = ConnExecutor::default();
        let (tx, rx) = oneshot::channel::<()>();
        // Held by a future that never ends: dropped with the driver.
        executor.execute(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        executor.execute(async {
            panic!("boom");
        });
        assert!(rx.await.is_err(), "the pending future was dropped");
        assert!(!running(&executor));
    }
}
