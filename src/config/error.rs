//! What a configuration error says: [`ConfigError`] (file, line, key,
//! message), all of them ([`ConfigErrors`]), and [`Key`], the key path one
//! names (`routes[0].tls.cert`, `forward_proxy.hosts."api.example.com"`),
//! which finds its own span in the parsed document.

use std::fmt::{self, Display};
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
    /// Key path such as `routes[0].upstream` (empty for a syntax error outside any key).
    pub key: String,
    /// What is wrong, never containing a secret value.
    pub message: String,
}

impl Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = self.line.map(|line| format!(":{line}")).unwrap_or_default();
        let key = Some(&self.key).filter(|key| !key.is_empty());
        let key = key.map(|key| format!(": {key}")).unwrap_or_default();
        write!(f, "{}{line}{key}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// `message` about `key` (empty for none) in the file at `path`.
    pub fn new(path: &Path, line: Option<usize>, key: impl Display, message: impl Display) -> Self {
        let (path, key, message) = (path.to_path_buf(), key.to_string(), message.to_string());
        ConfigError {
            path,
            line,
            key,
            message,
        }
    }
}

/// Every problem found in a configuration, by line; `Display` joins them with `; `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<String> = self.0.iter().map(ConfigError::to_string).collect();
        f.write_str(&all.join("; "))
    }
}

impl std::error::Error for ConfigErrors {}

/// A parsed document, or a value in it, with its span.
pub(super) type Doc<'i> = Spanned<DeValue<'i>>;

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
        Key(vec![Segment::Name(name.to_owned())])
    }

    /// The key `name` inside this one.
    pub fn then(&self, name: &str) -> Key {
        Key([&self.0[..], &[Segment::Name(name.to_owned())]].concat())
    }

    /// Element `index` of this array.
    pub fn at(&self, index: usize) -> Key {
        Key([&self.0[..], &[Segment::Index(index)]].concat())
    }

    /// This key joined with the `path` serde was at (minus `toml::Spanned`'s private key).
    pub(super) fn join(&self, path: &serde_path_to_error::Path) -> Key {
        use serde_path_to_error::Segment::{Map, Seq};
        path.iter()
            .fold(self.clone(), |key, segment| match segment {
                Seq { index } => key.at(*index),
                Map { key: name } if !name.starts_with("$__") => key.then(name),
                _ => key,
            })
    }

    /// How a message names this table: `[admin]`, or `this route (routes[0])`.
    pub(super) fn table(&self) -> String {
        match self.0.last() {
            Some(Segment::Index(_)) => format!("this route ({self})"),
            _ => format!("[{self}]"),
        }
    }

    /// This key's value in `doc` and `true`, or the nearest table holding it and `false`.
    pub(super) fn find<'d, 'i>(&self, doc: &'d Doc<'i>) -> (&'d Doc<'i>, bool) {
        let mut at = doc;
        for segment in &self.0 {
            let next = match segment {
                Segment::Name(name) => at.get_ref().get(name.as_str()),
                Segment::Index(index) => at.get_ref().get(*index),
            };
            let Some(value) = next else {
                return (at, false);
            };
            at = value;
        }
        (at, true)
    }

    /// Take the last named key of this path (relative to `doc`) out of `doc`; whether it was there.
    pub(super) fn remove(&self, doc: &mut Doc<'_>) -> bool {
        let end = self.0.iter().rposition(|s| matches!(s, Segment::Name(_)));
        let mut at = Some(doc.get_mut());
        for (n, segment) in self.0.iter().enumerate().take(end.map_or(0, |end| end + 1)) {
            at = match (segment, at) {
                (Segment::Name(name), Some(DeValue::Table(table))) if Some(n) == end => {
                    return table.remove(name.as_str()).is_some();
                }
                (Segment::Name(name), Some(DeValue::Table(t))) => t.get_mut(name.as_str()),
                (Segment::Index(index), Some(DeValue::Array(array))) => array.get_mut(*index),
                _ => None,
            }
            .map(Spanned::get_mut);
        }
        false
    }
}

impl Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bare = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
        for (i, segment) in self.0.iter().enumerate() {
            let dot = if i == 0 { "" } else { "." };
            match segment {
                Segment::Index(index) => write!(f, "[{index}]")?,
                Segment::Name(name) if name.is_empty() => write!(f, "{dot}\"\"")?,
                Segment::Name(name) if name.bytes().all(bare) => write!(f, "{dot}{name}")?,
                Segment::Name(name) => write!(f, "{dot}{name:?}")?,
            }
        }
        Ok(())
    }
}

/// The 1-based line holding byte `offset` of `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let before = &text.as_bytes()[..offset.min(text.len())];
    before.iter().filter(|&&b| b == b'\n').count() + 1
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
