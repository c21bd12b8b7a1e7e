//! What a configuration error says: [`ConfigError`] (file, line, key,
//! message) and [`Key`], the key path it names (`routes[0].tls.cert`,
//! `forward_proxy.hosts."api.example.com"`), which finds its own span in
//! the parsed document.

use std::fmt;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::DeValue;

/// A configuration problem: file, line (when known), key path and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration file.
    pub path: PathBuf,
    /// 1-based line of the offending key, when known.
    pub line: Option<usize>,
    /// Dotted key path such as `routes[0].upstream` or `credentials.pliant.token_url`
    /// (empty for a syntax error outside any key).
    pub key: String,
    /// What is wrong, never containing a secret value.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// `message` about `key` (empty for none) in the file at `path`.
    pub fn new(
        path: &Path,
        line: Option<usize>,
        key: impl fmt::Display,
        message: impl fmt::Display,
    ) -> Self {
        let (path, key, message) = (path.to_path_buf(), key.to_string(), message.to_string());
        ConfigError {
            path,
            line,
            key,
            message,
        }
    }
}

/// A key path, segment by segment; `Display` writes it as TOML would.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Key(Vec<Segment>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Name(String),
    Index(usize),
}

impl Key {
    /// A top-level key.
    pub fn new(name: &str) -> Key {
        Key::default().then(name)
    }

    /// The key `name` inside this one.
    pub fn then(mut self, name: &str) -> Key {
        self.0.push(Segment::Name(name.to_owned()));
        self
    }

    /// Element `index` of this array.
    pub fn at(mut self, index: usize) -> Key {
        self.0.push(Segment::Index(index));
        self
    }

    /// The path serde was at when it failed, without the private key
    /// through which `toml::Spanned` reads its value.
    pub(super) fn from_serde(path: &serde_path_to_error::Path) -> Key {
        let mut key = Key::default();
        for segment in path {
            match segment {
                serde_path_to_error::Segment::Seq { index } => key = key.at(*index),
                serde_path_to_error::Segment::Map { key: name } if !name.starts_with("$__") => {
                    key = key.then(name);
                }
                _ => {}
            }
        }
        key
    }

    /// This key's value in `doc` and `true`, or the nearest table or array
    /// that would hold it and `false`.
    pub(super) fn find<'d, 'i>(
        &self,
        doc: &'d Spanned<DeValue<'i>>,
    ) -> (&'d Spanned<DeValue<'i>>, bool) {
        let mut at = doc;
        for segment in &self.0 {
            let next = match segment {
                Segment::Name(name) => at.get_ref().get(name.as_str()),
                Segment::Index(index) => at.get_ref().get(*index),
            };
            match next {
                Some(value) => at = value,
                None => return (at, false),
            }
        }
        (at, true)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Index(index) => write!(f, "[{index}]")?,
                Segment::Name(name) => {
                    let bare = !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    let dot = if i == 0 { "" } else { "." };
                    match bare {
                        true => write!(f, "{dot}{name}")?,
                        false => write!(f, "{dot}{name:?}")?,
                    }
                }
            }
        }
        Ok(())
    }
}

/// The 1-based line holding byte `offset` of `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .split(|&b| b == b'\n')
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_written_as_toml_spells_them() {
        let key = Key::new("routes").at(0).then("tls").then("cert");
        assert_eq!(key.to_string(), "routes[0].tls.cert");
        let key = Key::new("forward_proxy")
            .then("hosts")
            .then("api.inbenta.io");
        assert_eq!(key.to_string(), r#"forward_proxy.hosts."api.inbenta.io""#);
        let key = Key::new("credentials").then("x-tenant_2").then("");
        assert_eq!(key.to_string(), r#"credentials.x-tenant_2."""#);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }
}
