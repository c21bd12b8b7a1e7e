//! Which serving worker the current thread is: [`id`]. Per-worker state
//! (a route's upstream connections, [`crate::proxy::client`]) is an array
//! indexed by it, so a connection made on one worker's runtime is only used
//! from there. Threads that are not serving workers are worker 0.

use std::cell::Cell;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The current thread's worker index (0 outside the serving workers).
pub fn id() -> usize {
    WORKER.with(Cell::get)
}
