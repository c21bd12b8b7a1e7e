//! The configuration file being read: its path, text and parsed document.
//! It names a key's line (its value's, or the nearest table's when missing),
//! turns `toml` and serde errors into [`ConfigError`]s, resolves relative
//! paths, collects warnings and errors, and states rules several tables share.

use std::cell::RefCell;
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http::Uri;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::{ConfigError, Doc, Key, line_of};
use crate::secret::SecretRef;
use crate::suggest::did_you_mean;

/// One configuration file, parsed.
pub(super) struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
    pub doc: Doc<'a>,
    /// What is accepted but deserves a word, in the order found.
    pub warnings: RefCell<Vec<ConfigError>>,
    /// What is refused, in the order found.
    pub errors: RefCell<Vec<ConfigError>>,
}

impl<'a> Source<'a> {
    /// Parse `text`; a syntax error is named by its line.
    pub fn parse(path: &'a Path, text: &'a str) -> Result<Source<'a>, ConfigError> {
        let doc = DeTable::parse(text).map_err(|error| {
            let line = error.span().map(|span| line_of(text, span.start));
            ConfigError::new(path, line, "", error.message().trim())
        })?;
        let doc = Spanned::new(doc.span(), DeValue::Table(doc.into_inner()));
        let (warnings, errors) = (RefCell::default(), RefCell::default());
        Ok(Source {
            path,
            text,
            doc,
            warnings,
            errors,
        })
    }

    /// `message` about `key`, on the line of its value.
    pub fn error(&self, key: &Key, message: impl Display) -> ConfigError {
        ConfigError::new(self.path, Some(self.line(key)), key, message)
    }

    /// The line of `key`'s value, or of the table that lacks it.
    pub fn line(&self, key: &Key) -> usize {
        line_of(self.text, key.find(&self.doc).0.span().start)
    }

    /// Accept `key` but say `message` about it.
    pub fn warn(&self, key: &Key, message: impl Display) {
        self.warnings.borrow_mut().push(self.error(key, message));
    }

    /// Refuse `key` with `message`.
    pub fn fail(&self, key: &Key, message: impl Display) {
        self.errors.borrow_mut().push(self.error(key, message));
    }

    /// The keys written in table `key`.
    pub fn keys(&self, key: &Key) -> Vec<String> {
        let (value, found) = key.find(&self.doc);
        let table = value.get_ref().as_table().filter(|_| found);
        let keys = table.into_iter().flat_map(|table| table.keys());
        keys.map(|key| key.get_ref().to_string()).collect()
    }

    /// Whether table `key` has `name` written, readable or not.
    pub fn written(&self, key: &Key, name: &str) -> bool {
        self.keys(key).iter().any(|written| written == name)
    }

    /// The value at `key` (the whole file for the empty key), read as `T`. A
    /// bad key is reported and left out, so that one read reports them all;
    /// `None` when `T` cannot be read without it.
    pub fn read<T: DeserializeOwned>(&self, key: &Key) -> Option<T> {
        let (mut doc, mut reported) = (key.find(&self.doc).0.clone(), Vec::new());
        loop {
            let de = toml::de::ValueDeserializer::from(doc.clone());
            let e = match serde_path_to_error::deserialize(de) {
                Ok(value) => return Some(value),
                Err(e) => e,
            };
            let at = Key::default().join(e.path());
            let error = self.serde(key.join(e.path()), e.inner());
            if reported.contains(&error.key) {
                return None; // a key left out was needed
            }
            reported.push(error.key.clone());
            self.errors.borrow_mut().push(error);
            if !at.remove(&mut doc) {
                return None;
            }
        }
    }

    /// A `toml` or serde error at `key`, on the line of its span, in TOML's
    /// words (keys, not fields; values, not variants; integers, not i64).
    fn serde(&self, mut key: Key, error: &toml::de::Error) -> ConfigError {
        let message = error.message().trim();
        let mut message = message.replace("expected i64", "expected an integer");
        for (serde, ours) in [
            ("missing field ", "missing key "),
            ("unknown field ", "unknown key "),
            ("unknown variant ", "unknown value "),
        ] {
            if let Some(rest) = message.strip_prefix(serde) {
                if serde == "missing field " {
                    key = key.then(rest.trim_matches('`'));
                }
                message = format!("{ours}{rest}");
            }
        }
        let message = did_you_mean(message);
        let line = match error.span() {
            Some(span) => line_of(self.text, span.start),
            None => self.line(&key),
        };
        ConfigError::new(self.path, Some(line), key, message)
    }

    /// A path as written, resolved against the configuration file's directory.
    pub fn file(&self, path: &Path) -> PathBuf {
        self.path.parent().unwrap_or(Path::new("")).join(path)
    }

    /// A secret reference at `key`: a `file` resolved, a literal accepted with a warning.
    pub fn secret(&self, key: &Key, secret: SecretRef) -> SecretRef {
        match secret {
            SecretRef::File(path) => SecretRef::File(self.file(&path)),
            SecretRef::Literal(_) => {
                let message = "secret written literally in the configuration; prefer \
                               { env = \"NAME\" } or { file = \"PATH\" }";
                self.warn(key, message);
                secret
            }
            SecretRef::Env(_) => secret,
        }
    }

    /// Refuse an `http://` `url` at `table.field` unless the table allows it.
    pub fn https(&self, table: &Key, (field, url): (&str, &Uri), allowed: bool) {
        if url.scheme_str() == Some("http") && !allowed {
            let message = format!(
                "`http://` sends credentials in clear text; use https:// or set \
                 `allow_insecure_http = true` in {}",
                table.table()
            );
            self.fail(&table.then(field), message);
        }
    }

    /// Refuse `table`'s listen address `addr` outside loopback unless the table allows it.
    pub fn loopback(&self, table: &Key, addr: SocketAddr, allowed: bool) {
        if addr.ip().is_loopback() || allowed {
            return;
        }
        let risk = match *table == Key::new("admin") {
            true => "would expose readiness and metrics beyond this host",
            false => "anyone who can reach it can spend the credential",
        };
        let message = format!(
            "{addr} is not a loopback address and {risk}; set `allow_non_loopback = true` in {} \
             to permit it",
            table.table()
        );
        self.fail(&table.then("listen"), message);
    }
}
