//! Repeated warnings and errors folded into counts, so that a failing
//! upstream or a credential without a token cannot fill the disk: a 503
//! storm once wrote 65 MB of identical lines in 3 minutes.
//!
//! An event at WARN or ERROR that carries a `route` or `credential` field is
//! keyed by its call site and those two values. The first event of a key is
//! written; further ones are counted (the latest message kept) until the
//! flusher thread, once per interval, writes one summary line per key with
//! the count (`suppressed=N`) and the latest message, and forgets keys that
//! stayed quiet for a whole interval. So a steady failure writes one line,
//! then one line per interval; a new failure, or one after a quiet
//! interval, is written at once. Events without those fields (startup,
//! reload, accept errors, which limit themselves) pass untouched, as does
//! anything below WARN.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::callsite::Identifier;
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// The target of summary lines (never folded themselves).
const SUMMARY_TARGET: &str = "sidekey::repeats";

/// Keys tracked at most; beyond this, new keys are not folded (routes and
/// credentials come from the configuration, so this is never reached in
/// practice).
const MAX_KEYS: usize = 4096;

/// The layer that folds repeats; see the module docs.
#[derive(Clone, Debug, Default)]
pub(super) struct Repeats {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Set once the flusher runs; without it nothing is folded, since the
    /// counts would never be written.
    flushing: AtomicBool,
    entries: Mutex<HashMap<Key, Entry>>,
}

#[derive(Debug, Hash, PartialEq, Eq)]
struct Key {
    callsite: Identifier,
    route: Option<String>,
    credential: Option<String>,
}

#[derive(Debug)]
struct Entry {
    level: Level,
    suppressed: u64,
    latest: String,
}

/// One summary line to write.
struct Summary {
    key: Key,
    level: Level,
    suppressed: u64,
    latest: String,
}

impl Repeats {
    /// Start the thread that writes summaries every `interval` through
    /// `dispatch` (the subscriber this layer is part of); it ends when that
    /// subscriber is dropped.
    pub(super) fn start_flusher(&self, dispatch: WeakDispatch, interval: Duration) {
        let shared = self.shared.clone();
        let started = std::thread::Builder::new()
            .name("sidekey-log-repeats".to_owned())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    let Some(dispatch) = dispatch.upgrade() else {
                        return;
                    };
                    let summaries = shared.drain();
                    tracing::dispatcher::with_default(&dispatch, || {
                        for summary in &summaries {
                            summary.write(interval);
                        }
                    });
                }
            });
        if started.is_ok() {
            self.shared.flushing.store(true, Ordering::Release);
        }
    }
}

impl Shared {
    /// Take the counts of this interval; forget keys without any.
    fn drain(&self) -> Vec<Summary> {
        let Ok(mut entries) = self.entries.lock() else {
            return Vec::new();
        };
        let mut summaries = Vec::new();
        entries.retain(|key, entry| {
            if entry.suppressed == 0 {
                return false;
            }
            summaries.push(Summary {
                key: Key {
                    callsite: key.callsite.clone(),
                    route: key.route.clone(),
                    credential: key.credential.clone(),
                },
                level: entry.level,
                suppressed: entry.suppressed,
                latest: std::mem::take(&mut entry.latest),
            });
            entry.suppressed = 0;
            true
        });
        summaries
    }

    /// Whether to write `event`; counts it when not.
    fn admit(&self, event: &Event<'_>) -> bool {
        let metadata = event.metadata();
        if *metadata.level() > Level::WARN
            || metadata.target() == SUMMARY_TARGET
            || !self.flushing.load(Ordering::Acquire)
        {
            return true;
        }
        let mut fields = KeyFields::default();
        event.record(&mut fields);
        if fields.route.is_none() && fields.credential.is_none() {
            return true;
        }
        let key = Key {
            callsite: metadata.callsite(),
            route: fields.route,
            credential: fields.credential,
        };
        let Ok(mut entries) = self.entries.lock() else {
            return true;
        };
        if let Some(entry) = entries.get_mut(&key) {
            entry.suppressed += 1;
            let mut message = Message::default();
            event.record(&mut message);
            entry.latest = message.0;
            return false;
        }
        if entries.len() < MAX_KEYS {
            entries.insert(
                key,
                Entry {
                    level: *metadata.level(),
                    suppressed: 0,
                    latest: String::new(),
                },
            );
        }
        true
    }
}

impl<S: Subscriber> Layer<S> for Repeats {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        self.shared.admit(event)
    }
}

impl Summary {
    fn write(&self, interval: Duration) {
        let route = self.key.route.as_deref().map(tracing::field::display);
        let credential = self.key.credential.as_deref().map(tracing::field::display);
        let suppressed = self.suppressed;
        let latest = &self.latest;
        if self.level == Level::ERROR {
            tracing::error!(
                target: SUMMARY_TARGET,
                route,
                credential,
                suppressed,
                "{suppressed} more like this in the last {interval:?}; the latest: {latest}"
            );
        } else {
            tracing::warn!(
                target: SUMMARY_TARGET,
                route,
                credential,
                suppressed,
                "{suppressed} more like this in the last {interval:?}; the latest: {latest}"
            );
        }
    }
}

/// The `route` and `credential` fields of an event.
#[derive(Default)]
struct KeyFields {
    route: Option<String>,
    credential: Option<String>,
}

impl Visit for KeyFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "route" => self.route = Some(value.to_owned()),
            "credential" => self.credential = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "route" => self.route = Some(format!("{value:?}")),
            "credential" => self.credential = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

/// An event's message and its other fields (not `route`, `credential`),
/// formatted as `message k=v k=v`.
#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        use std::fmt::Write as _;
        match field.name() {
            "route" | "credential" => {}
            "message" if self.0.is_empty() => {
                let _ = write!(self.0, "{value:?}");
            }
            "message" => {
                let rest = std::mem::take(&mut self.0);
                let _ = write!(self.0, "{value:?}{rest}");
            }
            name => {
                let _ = write!(self.0, " {name}={value:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tracing_subscriber::filter::Targets;

    use crate::telemetry::settings::LogFormat;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buffer {
        fn lines(&self) -> Vec<String> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines().map(str::to_owned).collect()
        }
    }

    fn warn_for(route: &str) {
        tracing::warn!(route, "upstream request failed");
    }

    #[test]
    fn repeats_are_counted_per_key_and_forgotten_after_a_quiet_interval() {
        let interval = Duration::from_millis(100);
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let dispatch = super::super::build(
            LogFormat::Text,
            Targets::new().with_default(tracing::Level::INFO),
            move || writer.clone(),
            false,
            interval,
        );
        tracing::dispatcher::with_default(&dispatch, || {
            for _ in 0..5 {
                warn_for("a");
                warn_for("b");
                tracing::warn!("no route: never folded");
                tracing::info!(route = "a", "info: never folded");
            }
        });
        // A tick writes the counts, the next one (nothing new) forgets the keys.
        std::thread::sleep(interval * 5);
        // Quiet for more than an interval: "a" is written in full again.
        tracing::dispatcher::with_default(&dispatch, || warn_for("a"));

        let lines = buffer.lines();
        let count = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
        assert_eq!(count("no route: never folded"), 5, "{lines:#?}");
        assert_eq!(count("info: never folded"), 5, "{lines:#?}");
        for route in ["a", "b"] {
            let suppressed: u64 = lines
                .iter()
                .filter_map(|l| {
                    l.split_once(&format!("route={route} suppressed="))?
                        .1
                        .parse::<u64>()
                        .ok()
                })
                .sum();
            assert_eq!(suppressed, 4, "{lines:#?}");
        }
        assert!(
            count("more like this in the last 100ms; the latest: upstream request failed") >= 2
        );
        let full = |route: &str| {
            lines
                .iter()
                .filter(|l| l.ends_with(&format!("upstream request failed route=\"{route}\"")))
                .count()
        };
        assert_eq!(
            full("a"),
            2,
            "first, and after the quiet interval: {lines:#?}"
        );
        assert_eq!(full("b"), 1, "{lines:#?}");
    }
}
