//! tokio for paused-clock tests whose clock waits for loopback bytes in
//! flight: `#[tokio::test(start_paused = true, crate = "crate::support::paused")]`.
//!
//! tokio's paused clock jumps to the next timer as soon as the runtime has
//! nothing to do. On loopback a write usually makes its peer readable before
//! the syscall returns, so an exchange between the test's own tasks takes no
//! virtual time. But when the machine is busy the kernel may finish the
//! delivery a little later (on `ksoftirqd`), and a bare paused runtime then
//! sees nothing ready and jumps: to the client's 60 s timeout, a request
//! timeout, a renewal, whatever comes next, and the test fails for a reason
//! that is not sidekey's.
//!
//! The runtime built here holds the clock still until the runtime has been
//! quiet for [`SETTLE`] of real time: before parking after any work, a
//! blocking task sleeps that long (tokio does not advance a paused clock
//! while a blocking task runs); bytes that arrive meanwhile wake the runtime
//! as usual. Only a park with nothing run since the last settle period lets
//! the clock move. A test costs [`SETTLE`] of real time per step of its
//! virtual clock, not per exchange.
//!
//! Tests without sockets keep tokio's own runtime (the engine tests of
//! `renewal` on a scripted provider, the unit tests in `src/`): nothing is
//! in flight there, and some take thousands of clock steps.
//!
//! The macro reaches tokio through this path: it needs `runtime::Builder`
//! (as tokio's, with this hook added) and `pin!`.

pub use tokio::pin;

/// How long the runtime must have been quiet before its paused clock may
/// jump to the next timer.
pub const SETTLE: std::time::Duration = std::time::Duration::from_micros(500);

pub mod runtime {
    //! [`Builder`]: tokio's, with the settle hook of the paused clock.

    use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

    pub use tokio::runtime::Runtime;

    /// The subset of `tokio::runtime::Builder` that `#[tokio::test]` calls.
    pub struct Builder(tokio::runtime::Builder);

    impl Builder {
        /// A current-thread runtime (the only flavour with a paused clock).
        pub fn new_current_thread() -> Builder {
            Builder(tokio::runtime::Builder::new_current_thread())
        }

        /// Start with the clock paused, held still while I/O settles.
        pub fn start_paused(mut self, paused: bool) -> Builder {
            self.0.start_paused(paused);
            if paused {
                let settle = Arc::new(Settle {
                    phase: Mutex::new(Phase::Busy),
                });
                let parking = Arc::clone(&settle);
                self.0.on_thread_park(move || parking.before_park());
                self.0.on_thread_unpark(move || settle.after_unpark());
            }
            self
        }

        /// Enable I/O and time.
        pub fn enable_all(mut self) -> Builder {
            self.0.enable_all();
            self
        }

        /// Build the runtime.
        pub fn build(mut self) -> std::io::Result<Runtime> {
            self.0.build()
        }
    }

    /// Where the runtime is between settling and letting the clock move.
    #[derive(Clone, Copy, Debug)]
    enum Phase {
        /// Something ran since the runtime last settled: settle before the
        /// clock may move.
        Busy,
        /// A settle period is running; `woke`: the runtime ran meanwhile.
        Settling { woke: bool },
        /// Quiet for a whole settle period: the clock may move. `parks`
        /// let since then, the last one at `at` (virtual and real time).
        Quiet {
            parks: u8,
            at: Option<(tokio::time::Instant, std::time::Instant)>,
        },
    }

    /// The runtime's [`Phase`], shared by its park hooks and settle task.
    struct Settle {
        phase: Mutex<Phase>,
    }

    impl Settle {
        fn phase(&self) -> MutexGuard<'_, Phase> {
            self.phase.lock().unwrap_or_else(PoisonError::into_inner)
        }

        /// The runtime has nothing to run: let the clock move if it has been
        /// quiet since the last settle period, else start one. Two parks are
        /// let through: tokio counts the end of the settle period as a
        /// wake-up, so the first returns at once without moving the clock.
        fn before_park(self: &Arc<Self>) {
            let mut phase = self.phase();
            match *phase {
                Phase::Settling { .. } => *phase = Phase::Settling { woke: true },
                Phase::Quiet { parks, .. } if parks < 2 => {
                    let at = (tokio::time::Instant::now(), std::time::Instant::now());
                    *phase = Phase::Quiet {
                        parks: parks + 1,
                        at: Some(at),
                    };
                }
                Phase::Quiet { .. } | Phase::Busy => {
                    *phase = Phase::Settling { woke: false };
                    let settle = Arc::clone(self);
                    // Returns at once; the clock stays still until it finishes.
                    drop(tokio::task::spawn_blocking(move || {
                        std::thread::sleep(super::SETTLE);
                        let mut phase = settle.phase();
                        *phase = match *phase {
                            Phase::Settling { woke: false } => Phase::Quiet { parks: 0, at: None },
                            _ => Phase::Busy,
                        };
                    }));
                }
            }
        }

        /// The runtime woke from a park it was let make. Unless that park
        /// only took the settle period's wake-up (the first, returning at
        /// once with the clock where it was), timers fired or bytes arrived,
        /// and what they start must settle before the clock moves again.
        fn after_unpark(&self) {
            let mut phase = self.phase();
            if let Phase::Quiet {
                parks,
                at: Some((virtual_at, real_at)),
            } = *phase
                && (parks > 1
                    || tokio::time::Instant::now() != virtual_at
                    || real_at.elapsed() > super::SETTLE / 2)
            {
                *phase = Phase::Busy;
            }
        }
    }
}
