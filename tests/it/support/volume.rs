//! A directory laid out like a Kubernetes Secret (or cert-manager) volume:
//! each file `NAME -> ..data/NAME`, `..data -> ..vN/`, and a new version
//! published by swapping the `..data` symlink atomically, as the kubelet does.

use std::path::{Path, PathBuf};

/// A secret volume in a temporary directory (removed on drop).
pub struct SecretVolume {
    dir: tempfile::TempDir,
    versions: usize,
}

impl SecretVolume {
    /// A volume holding `files` (name, bytes).
    pub fn new(files: &[(&str, &[u8])]) -> SecretVolume {
        let dir = tempfile::Builder::new()
            .prefix("sidekey-test-volume-")
            .tempdir()
            .expect("temp dir");
        let mut volume = SecretVolume { dir, versions: 0 };
        volume.publish(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), volume.dir().join(name))
                .expect("file symlink");
        }
        volume
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The path an application reads `name` from (through `..data`).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// Write a new version holding `files` and swap `..data` to it.
    pub fn publish(&mut self, files: &[(&str, &[u8])]) {
        self.versions += 1;
        let version = format!("..v{}", self.versions);
        let version_dir = self.dir().join(&version);
        std::fs::create_dir(&version_dir).expect("version dir");
        for (name, bytes) in files {
            std::fs::write(version_dir.join(name), bytes).expect("write file");
        }
        let tmp = self.dir().join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).expect("data symlink");
        std::fs::rename(&tmp, self.dir().join("..data")).expect("swap ..data");
    }
}
