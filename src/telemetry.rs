//! Logging setup: `[log] level` (applied again by a reload) and `format`
//! (read at start), with `RUST_LOG` taking
//! precedence over the configured level (an empty one counts as unset, an
//! invalid one is ignored with a warning). Nothing logged anywhere in sidekey
//! contains a token or a secret. Requests are logged at debug level, and
//! with `[log] access = true` one access line each (target
//! `sidekey::access`, see [`crate::proxy::access`]), let through at INFO
//! whatever the configured level; `RUST_LOG` decides alone when set.
//!
//! Per-request warnings and errors (a 503, an unreachable upstream, a
//! timeout) are written once, then counted: one summary line per route or
//! credential every [`REPEAT_INTERVAL`] ([`repeats`](mod@repeats)).
//!
//! Lines reach stderr through [`pipe`](mod@pipe): a log reader that stalls
//! or goes away costs dropped lines (counted, then reported), never a
//! blocked or failed request.

mod pipe;
mod repeats;
pub mod settings;

use std::io::IsTerminal as _;
use std::sync::OnceLock;
use std::time::Duration;

use tracing::Dispatch;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt as _;

use self::pipe::LogPipe;
use self::repeats::Repeats;

/// How often repeated warnings and errors are summarised.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(10);

use self::settings::{LogConfig, LogFormat};

/// Install the global subscriber. A second call (tests) is a no-op; a
/// reload goes through [`reload`].
pub fn init(log: &LogConfig) {
    // Set but blank (`RUST_LOG=` from a template) is as unset: parsed, it
    // would filter out every line.
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|text| !text.trim().is_empty());
    let from_env: Option<Targets> = rust_log.as_deref().and_then(|text| text.parse().ok());
    let refused = rust_log.filter(|_| from_env.is_none());
    let env_decides = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| configured(log));
    let ansi = std::io::stderr().is_terminal();
    let (dispatch, set_filter) = match PIPE.get_or_init(|| LogPipe::spawn(std::io::stderr()).ok()) {
        Some(pipe) => build_reloadable(log.format, filter, pipe.clone(), ansi, REPEAT_INTERVAL),
        // No thread for the log: write in place, as a last resort.
        None => build_reloadable(log.format, filter, std::io::stderr, ansi, REPEAT_INTERVAL),
    };
    if dispatch.try_init().is_ok() {
        let set_filter = (!env_decides).then_some(set_filter);
        let _ = INSTALLED.set(Installed {
            format: log.format,
            set_filter,
        });
    }
    if let Some(text) = refused {
        tracing::warn!(
            rust_log = %text,
            "RUST_LOG is not a filter sidekey reads (target=level directives, such as \
             \"info,sidekey=debug\"); it is ignored and [log] level applies"
        );
    }
}

/// `[log] level` as a filter that also lets the access lines through.
fn configured(log: &LogConfig) -> Targets {
    let level = log.level.parse();
    with_access_lines(level.unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO)))
}

/// Apply a reloaded `[log]`: its `level` from now on (unless `RUST_LOG`
/// decides); its `format` is read at start only, which a warning says.
pub fn reload(log: &LogConfig) {
    let Some(installed) = INSTALLED.get() else {
        return;
    };
    if let Some(set_filter) = &installed.set_filter {
        set_filter(configured(log));
    }
    if log.format != installed.format {
        tracing::warn!("[log] format changes at the next restart");
    }
}

/// Replaces the filter of the subscriber it was built with.
type SetFilter = Box<dyn Fn(Targets) + Send + Sync>;

/// What [`init`] installed, for [`reload`].
struct Installed {
    format: LogFormat,
    /// `None`: `RUST_LOG` decides.
    set_filter: Option<SetFilter>,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// The pipe [`init`] installed (none before, or if its thread could not start).
static PIPE: OnceLock<Option<LogPipe>> = OnceLock::new();

/// How long [`flush`] waits for the log reader at exit.
const FLUSH_WITHIN: Duration = Duration::from_secs(1);

/// Write out the lines logged so far, waiting at most a second for a
/// stalled log reader (before exit, and before writing to stderr directly).
pub fn flush() {
    if let Some(Some(pipe)) = PIPE.get() {
        pipe.flush(FLUSH_WITHIN);
    }
}

/// `filter`, letting the access log's lines (`sidekey::access` at INFO)
/// through whatever the level, unless it names that target itself. They are
/// written only when `[log] access` is on, so `level = "warn"` with the
/// access log keeps both.
pub fn with_access_lines(filter: Targets) -> Targets {
    if filter.iter().any(|(target, _)| target == ACCESS_TARGET) {
        return filter;
    }
    filter.with_target(ACCESS_TARGET, tracing::Level::INFO)
}

/// The target of the access log's lines.
pub const ACCESS_TARGET: &str = "sidekey::access";

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
    build_reloadable(format, filter, writer, ansi, repeat_interval).0
}

/// [`build`], and what replaces its filter.
fn build_reloadable<W>(
    format: LogFormat,
    filter: Targets,
    writer: W,
    ansi: bool,
    repeat_interval: Duration,
) -> (Dispatch, SetFilter)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // No internal errors on stderr: `eprintln!` panics when stderr is closed.
    let builder = tracing_subscriber::fmt()
        .log_internal_errors(false)
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(false);
    let repeats = Repeats::default();
    let (dispatch, set_filter): (Dispatch, SetFilter) = match format {
        LogFormat::Text => {
            let (filter, handle) = reload::Layer::new(filter);
            let subscriber = builder.finish().with(filter).with(repeats.clone());
            let set = move |filter| drop(handle.reload(filter));
            (Dispatch::new(subscriber), Box::new(set))
        }
        LogFormat::Json => {
            let (filter, handle) = reload::Layer::new(filter);
            let builder = builder.json().flatten_event(true);
            let subscriber = builder.finish().with(filter).with(repeats.clone());
            let set = move |filter| drop(handle.reload(filter));
            (Dispatch::new(subscriber), Box::new(set))
        }
    };
    repeats.start_flusher(dispatch.downgrade(), repeat_interval);
    (dispatch, set_filter)
}
