//! Reading the files an operator points sidekey at, which are small and
//! regular: the configuration file, secret files, certificates and keys,
//! the token cache. A FIFO
//! is refused instead of blocking the reading thread until some writer
//! opens it, and a device or a file over [`MAX_BYTES`] instead of being
//! read until memory runs out. Symbolic links are followed (Kubernetes
//! mounts secrets through them).

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Far above any configuration, secret, key, certificate bundle or token cache.
pub const MAX_BYTES: u64 = 4 * 1024 * 1024;

/// The bytes of the regular file at `path`, at most [`MAX_BYTES`] of them.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    // Without O_NONBLOCK, opening a FIFO waits for a writer; a regular
    // file ignores the flag.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        let message = "not a regular file (a directory, FIFO, socket or device)";
        return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
    }
    let expected = usize::try_from(metadata.len().min(MAX_BYTES)).unwrap_or_default();
    let mut bytes = Vec::with_capacity(expected);
    file.take(MAX_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_BYTES {
        let message = format!("larger than {} MiB", MAX_BYTES >> 20);
        return Err(io::Error::new(io::ErrorKind::InvalidData, message));
    }
    Ok(bytes)
}

/// [`read`], as UTF-8 text.
pub fn read_to_string(path: &Path) -> io::Result<String> {
    String::from_utf8(read(path)?).map_err(|_| {
        let message = "not UTF-8 text";
        io::Error::new(io::ErrorKind::InvalidData, message)
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn a_regular_file_and_a_link_to_one_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let (token, link) = (dir.path().join("token"), dir.path().join("link"));
        std::fs::write(&token, "t0ken\n").unwrap();
        std::os::unix::fs::symlink(&token, &link).unwrap();
        assert_eq!(read(&token).unwrap(), b"t0ken\n");
        assert_eq!(read(&link).unwrap(), b"t0ken\n");
    }

    #[test]
    fn a_fifo_is_refused_at_once_instead_of_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let started = Instant::now();
        let error = read(&fifo).unwrap_err();
        assert!(error.to_string().contains("not a regular file"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn devices_and_directories_are_refused() {
        for path in ["/dev/zero", "/dev/null", "/"] {
            let error = read(Path::new(path)).unwrap_err();
            assert!(
                error.to_string().contains("not a regular file"),
                "{path}: {error}"
            );
        }
    }

    #[test]
    fn a_file_over_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("large");
        // Sparse: it costs no disk.
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_BYTES + 1).unwrap();
        let error = read(&path).unwrap_err();
        assert!(error.to_string().contains("larger than 4 MiB"), "{error}");
        file.set_len(MAX_BYTES).unwrap();
        assert_eq!(read(&path).unwrap().len() as u64, MAX_BYTES);
    }
}
