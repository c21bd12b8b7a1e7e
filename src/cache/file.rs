//! The restart cache file: one JSON document of sealed entries by key
//! (`{"version":1,"entries":{KEY:{"kid","data","expires"}}}`), readable only
//! by its owner (mode 0600) and replaced atomically — written to a temporary
//! file in the same directory, then renamed over the old one — so a crash
//! mid-write leaves the previous file whole. Expired entries are dropped on
//! each write. A few hundred bytes per credential, read when an engine
//! starts and written once per renewal, so the I/O is plain and blocking.
//!
//! Readers and writers in one process take turns; two processes sharing a
//! file may lose each other's latest entry (the next renewal writes it
//! again). The calls block: [`super::TokenCache`] makes them on the
//! blocking pool.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::crypto::Sealed;

const VERSION: u32 = 1;

/// Why the cache file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading, writing or renaming failed.
    #[error("cache file {path}: {source}")]
    Io {
        /// The file (or its temporary sibling).
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The file is not a cache file of this version.
    #[error("cache file {path} is not readable as a sidekey cache: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        source: serde_json::Error,
    },
}

/// One stored entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    sealed: Sealed,
    /// Unix seconds after which the entry is dropped.
    expires: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Document {
    version: u32,
    entries: BTreeMap<String, Entry>,
}

/// The cache file at one path.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    /// Serialises this process's reads and read-modify-write cycles.
    turn: Mutex<()>,
}

impl FileStore {
    /// The store at `path` (nothing is read or created yet).
    pub fn new(path: PathBuf) -> FileStore {
        FileStore {
            path,
            turn: Mutex::new(()),
        }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This process's turn at the file, held as a stalled call would.
    #[cfg(test)]
    pub(super) fn hold_turn(&self) -> std::sync::MutexGuard<'_, ()> {
        self.turn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entry stored under `key`, if any and not expired.
    pub fn get(&self, key: &str) -> Result<Option<Sealed>, FileError> {
        let _turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
        let mut document = self.read()?;
        let now = unix_now();
        Ok(document
            .entries
            .remove(key)
            .filter(|entry| entry.expires > now)
            .map(|entry| entry.sealed))
    }

    /// Store `sealed` under `key` until `expires`, dropping expired entries.
    pub fn put(&self, key: &str, sealed: Sealed, expires: SystemTime) -> Result<(), FileError> {
        let _turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
        // An unreadable file is replaced: the caller was told when reading it.
        let mut document = self.read().unwrap_or_default();
        let now = unix_now();
        document.version = VERSION;
        document.entries.retain(|_, entry| entry.expires > now);
        let expires = expires
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        document
            .entries
            .insert(key.to_owned(), Entry { sealed, expires });
        let text = serde_json::to_vec_pretty(&document).map_err(|source| FileError::Format {
            path: self.path.clone(),
            source,
        })?;
        write_atomically(&self.path, &text)
    }

    fn read(&self) -> Result<Document, FileError> {
        let text = match crate::small_file::read(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Document::default()),
            Err(source) => {
                let path = self.path.clone();
                return Err(FileError::Io { path, source });
            }
        };
        let document: Document =
            serde_json::from_slice(&text).map_err(|source| FileError::Format {
                path: self.path.clone(),
                source,
            })?;
        Ok(document)
    }
}

/// Write `bytes` to a new 0600 file beside `path`, flush it to disk, then
/// rename it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let name = path
        .file_name()
        .map_or("cache".into(), |n| n.to_string_lossy());
    let temp = path.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        fastrand::u32(..)
    ));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FileError::Io { path, source }
    };
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        });
    if let Err(e) = written.and_then(|()| fs::rename(&temp, path)) {
        let _ = fs::remove_file(&temp);
        // The operator knows the cache file, not its temporary name.
        return Err(io(path)(e));
    }
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use super::*;

    fn sealed(data: &str) -> Sealed {
        Sealed {
            kid: "00112233".into(),
            data: data.into(),
        }
    }

    #[test]
    fn entries_survive_a_new_store_and_the_file_is_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let later = SystemTime::now() + Duration::from_secs(60);
        let store = FileStore::new(path.clone());
        assert!(store.get("a").unwrap().is_none(), "no file yet");
        store.put("a", sealed("one"), later).unwrap();
        store.put("b", sealed("two"), later).unwrap();
        store.put("gone", sealed("old"), SystemTime::now()).unwrap();
        let again = FileStore::new(path.clone());
        assert_eq!(again.get("a").unwrap(), Some(sealed("one")));
        assert_eq!(again.get("b").unwrap(), Some(sealed("two")));
        assert_eq!(again.get("gone").unwrap(), None, "expired");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
    }

    #[test]
    fn a_corrupt_file_is_reported_then_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        fs::write(&path, "{ not json").unwrap();
        let store = FileStore::new(path.clone());
        let error = store.get("a").unwrap_err();
        assert!(error.to_string().contains("not readable"), "{error}");
        let later = SystemTime::now() + Duration::from_secs(60);
        store.put("a", sealed("one"), later).unwrap();
        assert_eq!(store.get("a").unwrap(), Some(sealed("one")));
    }

    #[test]
    fn a_failed_write_names_the_cache_file_not_its_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // The disk full or the directory read-only fail the same way, later.
        let not_a_dir = dir.path().join("file");
        fs::write(&not_a_dir, "").unwrap();
        let path = not_a_dir.join("tokens");
        let later = SystemTime::now() + Duration::from_secs(60);
        let error = FileStore::new(path.clone()).put("a", sealed("one"), later);
        let error = error.unwrap_err().to_string();
        assert!(
            error.contains(&format!("cache file {}:", path.display())),
            "{error}"
        );
        assert!(!error.contains(".tokens."), "{error}");
    }
}
