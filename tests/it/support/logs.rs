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

use sidekey::telemetry::settings::LogFormat;
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
        let filter = level.parse::<Targets>().expect("a log level");
        Self::install_with(LogFormat::Text, filter, repeat_interval)
    }

    /// Capture sidekey's log in `format` through `filter`, folding repeats
    /// per `repeat_interval`, until the guard is dropped.
    pub fn install_with(
        format: LogFormat,
        filter: Targets,
        repeat_interval: Duration,
    ) -> (LogCapture, DefaultGuard) {
        let capture = LogCapture::default();
        let dispatch =
            sidekey::telemetry::build(format, filter, capture.clone(), false, repeat_interval);
        let guard = tracing::dispatcher::set_default(&dispatch);
        rebuild_interest();
        (capture, guard)
    }

    /// Wait (up to 5 s, then panic) until `n` lines contain every one of
    /// `needles`; those lines.
    pub async fn wait_for_lines(&self, needles: &[&str], n: usize) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let lines = self.lines_with(needles);
            if lines.len() >= n {
                return lines;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{n} lines with {needles:?} expected:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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
    rebuild_interest();
    (capture, guard)
}

/// Makes every log call site stay on for the captures: tracing caches, per
/// call site, whether any subscriber wants it, and a call site first reached
/// by a parallel test (whose thread has no capture) could be cached as
/// wanted by no one, so a capture installed meanwhile saw nothing. A global
/// default that wants everything (and drops it: threads without a capture
/// log nowhere, as before) keeps the answer "sometimes" for every call site;
/// installing it rebuilds the cache once.
fn rebuild_interest() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing::subscriber::set_global_default(WantsEverything);
    });
}

/// A subscriber that wants every event and span, and keeps none.
struct WantsEverything;

impl tracing::Subscriber for WantsEverything {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::always()
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
