//! The configuration file being read: its path, text and parsed document.
//! It names the line of a key (the line of its value, or of the nearest
//! table holding it when the key is missing), turns a `toml` or serde error
//! into a [`ConfigError`], resolves relative paths against the file's
//! directory, and collects warnings (a secret written literally), named
//! like errors.

use std::cell::RefCell;
use std::fmt;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::DeValue;

use super::error::{ConfigError, Key, line_of};
use super::secret::SecretRef;

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
        let doc = toml::de::DeTable::parse(text).map_err(|error| ConfigError {
            path: path.to_path_buf(),
            line: error.span().map(|span| line_of(text, span.start)),
            key: String::new(),
            message: error.message().trim().to_owned(),
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
        self.at(Some(self.line(key)), key, message)
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
        self.at(Some(line), &key, message)
    }

    fn at(&self, line: Option<usize>, key: &Key, message: impl fmt::Display) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            line,
            key: key.to_string(),
            message: message.to_string(),
        }
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
}
