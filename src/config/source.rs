//! The configuration file being read: its path, text and parsed document.
//! It names the line of a key (the line of its value, or of the nearest
//! table holding it when the key is missing), turns a `toml` or serde error
//! into a [`ConfigError`], resolves relative paths against the file's
//! directory, collects warnings (a secret written literally), named like
//! errors, and applies the two rules several tables share: https unless
//! `allow_insecure_http`, loopback unless `allow_non_loopback`.

use std::cell::RefCell;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http::Uri;
use toml::Spanned;
use toml::de::DeValue;

use super::error::{ConfigError, Key, line_of};
use crate::secret::SecretRef;

/// One configuration file, parsed.
pub(super) struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
    pub doc: Spanned<DeValue<'a>>,
    /// What is accepted but deserves a word, in the order found.
    pub warnings: RefCell<Vec<ConfigError>>,
}

impl<'a> Source<'a> {
    /// Parse `text`; a syntax error is named by its line.
    pub fn parse(path: &'a Path, text: &'a str) -> Result<Source<'a>, ConfigError> {
        let doc = toml::de::DeTable::parse(text).map_err(|error| {
            let line = error.span().map(|span| line_of(text, span.start));
            ConfigError::new(path, line, "", error.message().trim())
        })?;
        let doc = Spanned::new(doc.span(), DeValue::Table(doc.into_inner()));
        let warnings = RefCell::default();
        Ok(Source {
            path,
            text,
            doc,
            warnings,
        })
    }

    /// `message` about `key`, on the line of its value.
    pub fn error(&self, key: &Key, message: impl fmt::Display) -> ConfigError {
        ConfigError::new(self.path, Some(self.line(key)), key, message)
    }

    /// The line of `key`'s value, or of the table that lacks it.
    pub fn line(&self, key: &Key) -> usize {
        line_of(self.text, key.find(&self.doc).0.span().start)
    }

    /// Accept `key` but say `message` about it.
    pub fn warn(&self, key: &Key, message: impl fmt::Display) {
        self.warnings.borrow_mut().push(self.error(key, message));
    }

    /// Whether `key` is written in the file.
    pub fn written(&self, key: &Key) -> bool {
        key.find(&self.doc).1
    }

    /// The keys written in table `key`.
    pub fn keys(&self, key: &Key) -> Vec<String> {
        match key.find(&self.doc) {
            (value, true) => value.get_ref().as_table().map_or_else(Vec::new, |table| {
                table.keys().map(|k| k.get_ref().to_string()).collect()
            }),
            (_, false) => Vec::new(),
        }
    }

    /// A `toml` or serde error at `key` (the path serde was at): the line of
    /// its span, and the key a "missing field" names. serde says "field"
    /// where a TOML file has keys, "variant" where it has a value, and
    /// "i64" where it has an integer.
    pub fn serde(&self, mut key: Key, error: &toml::de::Error) -> ConfigError {
        let mut message = error
            .message()
            .trim()
            .replace("expected i64", "expected an integer");
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

    /// A secret reference at `key`: a `file` resolved like [`Self::file`], a
    /// literal accepted with a warning.
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

    /// `url` at `key`, refused if it is `http://` and `table` does not allow it.
    pub fn https(
        &self,
        key: &Key,
        url: Uri,
        allowed: bool,
        table: &str,
    ) -> Result<Uri, ConfigError> {
        if url.scheme_str() != Some("http") || allowed {
            return Ok(url);
        }
        let message = format!(
            "`http://` sends credentials in clear text; use https:// or set \
             `allow_insecure_http = true` in {table}"
        );
        Err(self.error(key, message))
    }

    /// Refuse listen address `addr` at `key` outside loopback unless `table` allows it.
    pub fn loopback(
        &self,
        key: &Key,
        addr: SocketAddr,
        allowed: bool,
        table: &str,
    ) -> Result<(), ConfigError> {
        if addr.ip().is_loopback() || allowed {
            return Ok(());
        }
        let risk = match table {
            "[admin]" => "would expose readiness and metrics beyond this host",
            _ => "anyone who can reach it can spend the credential",
        };
        let message = format!(
            "{addr} is not a loopback address and {risk}; set `allow_non_loopback = true` \
             in {table} to permit it"
        );
        Err(self.error(key, message))
    }
}
