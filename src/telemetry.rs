//! Logging setup: `[log] level` and `format`, with `RUST_LOG` taking
//! precedence over the configured level. Nothing logged anywhere in sidekey
//! contains a token or a secret; request logging is at debug level only.

use std::io::IsTerminal as _;
use std::time::Duration;

use tracing::Dispatch;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{LogConfig, LogFormat};

/// Install the global subscriber. A second call (tests, reload) is a no-op.
pub fn init(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let dispatch = build(
        log.format,
        filter,
        std::io::stderr,
        std::io::stderr().is_terminal(),
        Duration::from_secs(10),
    );
    let _ = dispatch.try_init();
}

/// A subscriber writing `format` lines that pass `filter` to `writer`
/// (tests hand in a buffer and install it with
/// `tracing::dispatcher::set_default`).
pub fn build<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
    _repeat_interval: Duration,
) -> Dispatch
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(false);
    match format {
        LogFormat::Text => Dispatch::new(builder.finish()),
        LogFormat::Json => Dispatch::new(builder.json().flatten_event(true).finish()),
    }
}
