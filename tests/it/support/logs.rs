//! Capturing what sidekey logs into a buffer the test reads: either the same
//! subscriber the binary installs (`sidekey::telemetry::build`, with repeats
//! folded; [`LogCapture::install`]) or every event at every level as it
//! happens ([`capture`]).
//!
//! Install it at the top of a `#[tokio::test]` (current-thread runtime): the
//! guard makes it the default for the test's thread, where the in-process
//! proxy's and engines' tasks run too, so parallel tests see only their own
//! lines.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sidekey::config::LogFormat;
use tracing::dispatcher::DefaultGuard;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;

/// A shared buffer of log text.
#[derive(Clone, Default)]
pub struct LogCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl LogCapture {
    /// Capture sidekey's text log at `level` (a level or `target=level` directives),
    /// folding repeats per `repeat_interval`, until the guard is dropped.
    pub fn install(level: &str, repeat_interval: Duration) -> (LogCapture, DefaultGuard) {
        let capture = LogCapture::default();
        let dispatch = sidekey::telemetry::build(
            LogFormat::Text,
            level.parse::<Targets>().expect("a log level"),
            capture.clone(),
            false,
            repeat_interval,
        );
        let guard = tracing::dispatcher::set_default(&dispatch);
        (capture, guard)
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        let buffer = self.buffer.lock().expect("log buffer");
        String::from_utf8_lossy(&buffer)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The lines containing every one of `needles`.
    pub fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|line| needles.iter().all(|needle| line.contains(needle)))
            .collect()
    }

    /// Everything so far, for assertion messages.
    pub fn text(&self) -> String {
        self.lines().join("\n")
    }
}

/// One writer per event, appending to the shared buffer.
pub struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> MakeWriter<'w> for LogCapture {
    type Writer = CaptureWriter;

    fn make_writer(&'w self) -> Self::Writer {
        CaptureWriter(self.buffer.clone())
    }
}

/// Capture every event (all levels, no folding, no ANSI colours) on this
/// thread until the guard is dropped.
pub fn capture() -> (LogCapture, DefaultGuard) {
    let capture = LogCapture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    (capture, guard)
}
