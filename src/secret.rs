//! Secrets and where they come from: [`SecretRef`] (`{ env = "NAME" }`,
//! `{ file = "PATH" }` or a literal, as the configuration writes it), the
//! [`EnvSource`] it is looked up in, and [`Secret`], the value.
//!
//! A reference is resolved each time a provider needs the value, so a rotated
//! file or a changed variable is picked up without a restart. [`Secret`]
//! never prints its value: `Debug` and `Display` show `<redacted>`. A
//! reference reads itself from the configuration file (its `Deserialize` is
//! here, next to the type); no message about it repeats a literal. The
//! configuration loader warns where a literal is written and resolves
//! relative `file` paths.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

/// Where environment variables come from. Tests pass a map instead of
/// mutating the process environment.
pub trait EnvSource: Send + Sync + fmt::Debug {
    /// The value of variable `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// A fixed set of variables (for tests and the demo). `Debug` shows only names.
#[derive(Clone, Default)]
pub struct MapEnv(pub HashMap<String, String>);

impl fmt::Debug for MapEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl EnvSource for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

impl<const N: usize> From<[(&str, &str); N]> for MapEnv {
    fn from(pairs: [(&str, &str); N]) -> Self {
        MapEnv(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }
}

/// A secret value. Its text is reachable only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    /// Wrap a value.
    pub fn new(value: impl Into<Box<str>>) -> Self {
        Secret(value.into())
    }

    /// The secret text. Call only where the value is sent on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A reference to a secret as written in the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretRef {
    /// `{ env = "NAME" }`; one trailing newline is trimmed.
    Env(String),
    /// `{ file = "PATH" }`; one trailing newline is trimmed.
    File(PathBuf),
    /// A literal string in the file (accepted with a warning).
    Literal(Secret),
}

/// Why a secret reference could not be resolved. Never contains the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The variable is not set.
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    /// The file could not be read.
    #[error("cannot read secret file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The value is empty (after trimming the trailing newline).
    #[error("{0} is empty")]
    Empty(String),
    /// The value is not valid UTF-8 or contains control characters.
    #[error("{0} contains bytes that cannot be sent in an HTTP header")]
    Invalid(String),
}

impl SecretRef {
    /// Read the current value, to be sent in a header or a body: one line.
    pub fn resolve(&self, env: &dyn EnvSource) -> Result<Secret, SecretError> {
        self.read(env, |c| c.is_control() && c != '\t')
    }

    /// Read the current value of a PEM key, which is never sent: line
    /// breaks are allowed, other control characters are not.
    pub fn resolve_pem(&self, env: &dyn EnvSource) -> Result<Secret, SecretError> {
        self.read(env, |c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    }

    fn read(&self, env: &dyn EnvSource, refused: fn(char) -> bool) -> Result<Secret, SecretError> {
        let value = match self {
            // A value put in the environment from a file (Kubernetes'
            // `secretKeyRef` of a `--from-file` secret) keeps the file's
            // newline, which no secret can contain.
            SecretRef::Env(name) => trim_trailing_newline(
                env.var(name)
                    .ok_or_else(|| SecretError::EnvMissing(name.clone()))?,
            ),
            SecretRef::File(path) => {
                let bytes = crate::small_file::read(path).map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                })?;
                let text =
                    String::from_utf8(bytes).map_err(|_| SecretError::Invalid(self.describe()))?;
                trim_trailing_newline(text)
            }
            SecretRef::Literal(secret) => secret.expose().to_owned(),
        };
        if value.is_empty() {
            return Err(SecretError::Empty(self.describe()));
        }
        if value.chars().any(refused) {
            return Err(SecretError::Invalid(self.describe()));
        }
        Ok(Secret::new(value))
    }

    /// Where the value comes from, for messages (never the value itself).
    pub fn describe(&self) -> String {
        match self {
            SecretRef::Env(name) => format!("environment variable {name}"),
            SecretRef::File(path) => format!("file {}", path.display()),
            SecretRef::Literal(_) => "literal value".to_owned(),
        }
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SecretVisitor)
    }
}

struct SecretVisitor;

impl<'de> Visitor<'de> for SecretVisitor {
    type Value = SecretRef;

    /// serde's "invalid type" message names what was found and this, never
    /// the value (a number written where a secret belongs may be one).
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"{ env = "NAME" }, { file = "PATH" } or a string"#)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<SecretRef, E> {
        match value {
            "" => Err(E::custom("the secret is empty")),
            value => Ok(SecretRef::Literal(Secret::new(value))),
        }
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<SecretRef, E> {
        Err(E::invalid_type(de::Unexpected::Other("an integer"), &self))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<SecretRef, E> {
        Err(E::invalid_type(de::Unexpected::Other("a float"), &self))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SecretRef, A::Error> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            env: Option<String>,
            file: Option<String>,
        }
        let table = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
        match (table.env, table.file) {
            (Some(name), None) if name.is_empty() => {
                Err(de::Error::custom("`env` names no variable"))
            }
            (Some(name), None) => Ok(SecretRef::Env(name)),
            (None, Some(file)) if file.is_empty() => Err(de::Error::custom("`file` names no file")),
            (None, Some(file)) => Ok(SecretRef::File(file.into())),
            _ => Err(de::Error::custom(
                r#"a secret is { env = "NAME" } or { file = "PATH" }: set exactly one of `env` and `file`"#,
            )),
        }
    }
}

fn trim_trailing_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_and_literal_resolve() {
        let env = MapEnv::from([("TOKEN", "abc")]);
        let got = SecretRef::Env("TOKEN".into()).resolve(&env).unwrap();
        assert_eq!(got.expose(), "abc");
        let missing = SecretRef::Env("NOPE".into()).resolve(&env).unwrap_err();
        assert_eq!(missing.to_string(), "environment variable NOPE is not set");
        let lit = SecretRef::Literal(Secret::new("xyz"))
            .resolve(&env)
            .unwrap();
        assert_eq!(lit.expose(), "xyz");
    }

    #[test]
    fn file_trims_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\r\n").unwrap();
        let got = SecretRef::File(path.clone())
            .resolve(&MapEnv::default())
            .unwrap();
        assert_eq!(got.expose(), "s3cret");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            SecretRef::File(path).resolve(&MapEnv::default()),
            Err(SecretError::Empty(_))
        ));
    }

    #[test]
    fn env_trims_one_trailing_newline_as_a_file_does() {
        let env = MapEnv::from([("FROM_FILE", "s3cret\n"), ("TWO", "s3cret\n\n")]);
        let got = SecretRef::Env("FROM_FILE".into()).resolve(&env).unwrap();
        assert_eq!(got.expose(), "s3cret");
        // Only one: a second line break is still no secret.
        assert!(matches!(
            SecretRef::Env("TWO".into()).resolve(&env),
            Err(SecretError::Invalid(_))
        ));
    }

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "<redacted> <redacted>");
        let r = SecretRef::Literal(secret);
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
