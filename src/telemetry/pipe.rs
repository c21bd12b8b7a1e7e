//! The log's way out of the process: every line is queued for a thread of
//! its own that writes it to stderr, so a log reader that stalls (the pipe
//! fills) or goes away (EPIPE) never blocks or fails a thread that serves.
//!
//! - At most [`QUEUE_BYTES`] of lines wait; a line that does not fit is
//!   dropped and counted. Once a write succeeds again, one WARN line says
//!   how many were lost. The queue itself is unbounded and grows by small
//!   blocks as lines come: an idle process holds none of it (a bounded
//!   channel of 8,192 slots was 0.3 MiB of resident memory from the start).
//! - A failed write is ignored (there is nowhere left to report it).
//! - [`LogPipe::flush`] waits, for a bounded time, until what was queued
//!   before it is written: the last lines before exit are not lost to a
//!   working reader, and a stalled one cannot hold the exit.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// The most bytes of log lines waiting for the writer thread.
pub const QUEUE_BYTES: usize = 1 << 20;

enum Message {
    Line(Vec<u8>),
    /// Answered once every line queued before it has been written.
    Flush(SyncSender<()>),
}

/// The writing side, handed to the subscriber as its writer.
#[derive(Clone)]
pub struct LogPipe {
    queue: Sender<Message>,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    /// Bytes of the lines queued and not yet written.
    queued: AtomicUsize,
    /// Lines dropped since the last notice.
    dropped: AtomicU64,
}

impl LogPipe {
    /// A pipe to `out`, written by a new thread; the thread ends when every
    /// `LogPipe` clone is gone. Fails only if the thread cannot start.
    pub fn spawn<W>(out: W) -> std::io::Result<LogPipe>
    where
        W: Write + Send + 'static,
    {
        let (queue, lines) = channel();
        let counts = Arc::new(Counts::default());
        let thread_counts = counts.clone();
        std::thread::Builder::new()
            .name("sidekey-log".to_owned())
            .spawn(move || write_lines(out, &lines, &thread_counts))?;
        Ok(LogPipe { queue, counts })
    }

    /// Queue `line`, or drop and count it when the queue is full.
    fn send(&self, line: &[u8]) {
        let counts = &self.counts;
        let queued = counts.queued.fetch_add(line.len(), Ordering::Relaxed);
        let fits = queued + line.len() <= QUEUE_BYTES;
        let sent = fits && self.queue.send(Message::Line(line.to_vec())).is_ok();
        if !sent {
            counts.queued.fetch_sub(line.len(), Ordering::Relaxed);
            counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Wait up to `within` for the lines queued so far to be written;
    /// whether they were.
    pub fn flush(&self, within: Duration) -> bool {
        let (done, written) = sync_channel(1);
        self.queue.send(Message::Flush(done)).is_ok() && written.recv_timeout(within).is_ok()
    }
}

/// The writer thread: each line to `out`, then the notice of lines dropped.
fn write_lines<W: Write>(mut out: W, lines: &Receiver<Message>, counts: &Counts) {
    while let Ok(message) = lines.recv() {
        match message {
            Message::Line(line) => {
                let written = out.write_all(&line).and_then(|()| out.flush());
                counts.queued.fetch_sub(line.len(), Ordering::Relaxed);
                let dropped = match written {
                    Ok(()) => counts.dropped.swap(0, Ordering::Relaxed),
                    Err(_) => 0,
                };
                if dropped > 0 {
                    // Through the subscriber, in the configured format, back into this queue.
                    tracing::warn!(
                        lines = dropped,
                        "log lines dropped: the log reader did not keep up"
                    );
                }
            }
            Message::Flush(done) => {
                let _ = done.try_send(());
            }
        }
    }
}

impl<'a> MakeWriter<'a> for LogPipe {
    type Writer = &'a LogPipe;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Each `write` is one whole line from the subscriber (it formats a line,
/// then writes it at once); it always "succeeds".
impl Write for &LogPipe {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.send(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;

    /// A writer that blocks until `open` is set, then appends to `written`.
    #[derive(Clone, Default)]
    struct Gated {
        open: Arc<(Mutex<bool>, std::sync::Condvar)>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gated {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let (open, opened) = &*self.open;
            let mut guard = open.lock().unwrap();
            while !*guard {
                guard = opened.wait(guard).unwrap();
            }
            self.written.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_writer_costs_dropped_lines_not_a_blocked_caller() {
        let out = Gated::default();
        let pipe = LogPipe::spawn(out.clone()).unwrap();
        let line = vec![b'x'; 64 * 1024];
        let started = Instant::now();
        for _ in 0..64 {
            (&pipe).write_all(&line).unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(
            !pipe.flush(Duration::from_millis(20)),
            "the writer is stalled"
        );
        assert!(pipe.counts.dropped.load(Ordering::Relaxed) >= 64 - 16);

        // The reader is back: what fitted is written, in order, and nothing more.
        let (open, opened) = &*out.open;
        *open.lock().unwrap() = true;
        opened.notify_all();
        assert!(pipe.flush(Duration::from_secs(5)));
        let written = out.written.lock().unwrap().len();
        assert!(written <= QUEUE_BYTES + line.len(), "{written}");
        assert!(written >= QUEUE_BYTES - line.len(), "{written}");
    }

    #[test]
    fn a_failing_writer_is_ignored() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let pipe = LogPipe::spawn(Broken).unwrap();
        for _ in 0..10_000 {
            (&pipe).write_all(b"a line\n").unwrap();
        }
        assert!(pipe.flush(Duration::from_secs(5)));
    }
}
