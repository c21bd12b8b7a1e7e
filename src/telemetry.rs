//! Logging setup: `[log] level` and `format`, with `RUST_LOG` taking
//! precedence over the configured level. Nothing logged anywhere in sidekey
//! contains a token or a secret; request logging is at debug level only.
//!
//! Per-request warnings and errors (a 503, an unreachable upstream, a
//! timeout) are written once, then counted: one summary line per route or
//! credential every [`REPEAT_INTERVAL`] ([`repeats`](mod@repeats)).

mod repeats;

use std::io::IsTerminal as _;
use std::time::Duration;

use tracing::Dispatch;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use self::repeats::Repeats;

/// How often repeated warnings and errors are summarised.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(10);

use crate::config::{LogConfig, LogFormat};

/// Install the global subscriber. A second call (tests, reload) is a no-op.
pub fn init(log: &LogConfig) {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .and_then(|text| text.parse().ok());
    let filter = from_env
        .or_else(|| log.level.parse().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let dispatch = build(
        log.format,
        filter,
        std::io::stderr,
        std::io::stderr().is_terminal(),
        REPEAT_INTERVAL,
    );
    let _ = dispatch.try_init();
}

/// A subscriber writing `format` lines that pass `filter` to `writer`,
/// folding repeated per-request warnings per `repeat_interval` (tests hand
/// in a buffer and a short interval, and install it with
/// `tracing::dispatcher::set_default`).
pub fn build<W>(
    format: LogFormat,
    filter: Targets,
    writer: W,
    ansi: bool,
    repeat_interval: Duration,
) -> Dispatch
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(false);
    let repeats = Repeats::default();
    let dispatch = match format {
        LogFormat::Text => Dispatch::new(builder.finish().with(filter).with(repeats.clone())),
        LogFormat::Json => Dispatch::new(
            builder
                .json()
                .flatten_event(true)
                .finish()
                .with(filter)
                .with(repeats.clone()),
        ),
    };
    repeats.start_flusher(dispatch.downgrade(), repeat_interval);
    dispatch
}
