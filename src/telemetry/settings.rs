//! What the `[log]` settings mean: the level filter, the output format and
//! access lines, with their defaults. Reading the table is `config`'s.

use serde::Deserialize;

use crate::config::value::{from_text, via};

/// `[log]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
pub struct LogConfig {
    /// A level, or `target=level` directives such as `sidekey=debug,info` (default `info`).
    #[serde(deserialize_with = "via::<_, Level, _>")]
    pub level: String,
    /// Output format.
    pub format: LogFormat,
    /// `access`: one line per proxied request (default false).
    pub access: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        let (level, format) = ("info".to_owned(), LogFormat::Text);
        LogConfig {
            level,
            format,
            access: false,
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

from_text! {
    /// A log filter: a level, or `target=level` directives such as
    /// `sidekey=debug,info` (span and field filters are not supported).
    Level(String, "a log level such as \"info\"") = |text| {
        if text.contains(['[', ']', '{', '}']) {
            return Err("not a log filter: span and field filters are not supported \
                        (use a level or `target=level` directives)".to_owned());
        }
        match text.parse::<tracing_subscriber::filter::Targets>() {
            Ok(_) => Ok(text.to_owned()),
            Err(e) => Err(format!("not a log filter: {e}")),
        }
    };
}
