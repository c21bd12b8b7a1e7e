//! The allocator, and giving freed memory back to the operating system.
//!
//! A connection flood leaves memory freed but held by the allocator. The
//! default build uses glibc's malloc and a small task that trims it: glibc
//! returns by itself only the free space at the very top of a heap, so every
//! five seconds the task asks how much free space the arenas hold and,
//! past 1 MiB, releases the free pages with `malloc_trim(0)` (which
//! since glibc 2.8 also frees whole pages inside a heap). The features
//! `jemalloc` (with its background purging thread) and `mimalloc` are the
//! alternatives `bash bench/run.sh allocators` measures.

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options (its `MALLOC_CONF`, read at the first
/// allocation; the environment's `_RJEM_MALLOC_CONF` still overrides them),
/// for a smaller idle footprint at equal speed: one arena per CPU
/// (`percpu_arena:percpu`) and one purging thread for all arenas
/// (`max_background_threads:1`).
///
/// jemalloc declares it `const char *malloc_conf`: a thin pointer to a NUL-
/// terminated string, so the static is a `&u8` to the text's first byte (a
/// `&[u8]` would be a pointer and a length, whose layout Rust leaves open).
#[cfg(feature = "jemalloc")]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &u8 = &b"percpu_arena:percpu,max_background_threads:1\0"[0];

#[cfg(all(feature = "jemalloc", feature = "mimalloc"))]
compile_error!("features `jemalloc` and `mimalloc` exclude each other: pick one");

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Starts giving freed memory back: glibc's trimming task on the current
/// runtime, or jemalloc's background purging thread (which returns pages
/// unused for its decay time, 10 s, even while the proxy is idle).
pub fn return_freed_memory() {
    #[cfg(feature = "jemalloc")]
    if let Err(err) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %err, "cannot start jemalloc's background purging; freed memory is returned only while serving");
    }
    #[cfg(all(
        target_os = "linux",
        target_env = "gnu",
        not(feature = "jemalloc"),
        not(feature = "mimalloc")
    ))]
    glibc::spawn_trimming();
}

#[cfg(all(
    target_os = "linux",
    target_env = "gnu",
    not(feature = "jemalloc"),
    not(feature = "mimalloc")
))]
mod glibc {
    use std::time::Duration;

    /// How often the arenas are looked at for free space.
    const TRIM_EVERY: Duration = Duration::from_secs(5);

    /// Free space held in the arenas above which it is given back.
    const TRIM_ABOVE: usize = 1024 * 1024;

    /// Trims every five seconds, on the current runtime, for as long as it
    /// runs.
    pub fn spawn_trimming() {
        tokio::spawn(async {
            let mut every = tokio::time::interval(TRIM_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                trim_if_above(TRIM_ABOVE);
            }
        });
    }

    /// Releases the arenas' free pages when they hold more than `limit`
    /// bytes of free space (`mallinfo2().fordblks`).
    pub fn trim_if_above(limit: usize) {
        // SAFETY: mallinfo2 (glibc ≥ 2.33) takes no arguments and reads
        // malloc's state under malloc's own locks.
        let free = unsafe { libc::mallinfo2() }.fordblks;
        if free > limit {
            // SAFETY: malloc_trim only returns unused pages to the OS, under
            // malloc's own locks; allocations meanwhile are unaffected.
            unsafe { libc::malloc_trim(0) };
        }
    }
}
