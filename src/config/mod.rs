//! Typed configuration: the whole schema of DESIGN.md, loaded from TOML.
//!
//! Each type reads itself from the file (serde, unknown keys refused) and
//! checks its values as it reads them (`value`); the loader ([`read`],
//! [`parse`]) then applies the rules between keys and tables. Every refusal
//! is a [`ConfigError`] naming file, line and key. This module reads the
//! file; what a subsystem's settings mean is that subsystem's
//! (`credential::settings`, `cache::settings`, `admin::settings`,
//! `telemetry::settings`, `proxy::settings`, `tls`), and the top level
//! ([`Config`]) and `[[routes]]` are here. Forward-proxy host keys are
//! [`crate::host`]'s, secret references [`crate::secret`]'s. `Debug` output
//! of anything here never shows a secret.

mod cache;
mod credential;
mod error;
mod load;
mod route;
mod rules;
mod source;
mod top;
pub(crate) mod value;

pub use crate::limits::ConnLimits;
pub use error::{ConfigError, ConfigErrors, Key};
pub use load::{Loaded, parse, read};
pub use route::{RouteConfig, Upstream};
pub use top::{Config, Text};

#[cfg(test)]
/// Test fixtures for configuration text: one small valid file and the
/// environment it needs, shared by the loader's and preflight's tests.
pub(crate) mod fixture {
    use std::path::Path;
    use std::sync::Arc;

    use super::{Config, ConfigError, parse};
    use crate::secret::{EnvSource, MapEnv};

    /// Where the fixtures say the text was read from.
    pub const FILE: &str = "/etc/sidekey/sidekey.toml";

    /// Lines 1–8: one static credential and one route using it.
    pub const BASE: &str = r#"[credentials.a]
type = "static"
token = { env = "A_TOKEN" }

[[routes]]
listen = "127.0.0.1:8080"
upstream = "https://api.example.com"
credential = "a"
"#;

    /// The environment [`BASE`] reads its token from.
    pub fn env() -> Arc<dyn EnvSource> {
        Arc::new(MapEnv::from([("A_TOKEN", "t0k3n")]))
    }

    /// `text` parsed as [`FILE`]; panics with the error when it is refused.
    #[track_caller]
    pub fn ok(text: &str) -> Config {
        match parse(text, Path::new(FILE), env()) {
            Ok(config) => config,
            Err(e) => panic!("expected a valid config, got {e}"),
        }
    }

    /// The first error `text` is refused with; panics when it is accepted.
    #[track_caller]
    pub fn err(text: &str) -> ConfigError {
        errs(text).remove(0)
    }

    /// Every error `text` is refused with, by line; panics when it is accepted.
    #[track_caller]
    pub fn errs(text: &str) -> Vec<ConfigError> {
        match parse(text, Path::new(FILE), env()) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.0,
        }
    }

    /// A fresh directory for files a test writes, removed when dropped.
    pub fn temp_dir() -> tempfile::TempDir {
        match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(e) => panic!("cannot create a temporary directory: {e}"),
        }
    }
}
