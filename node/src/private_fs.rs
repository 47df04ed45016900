//! Files only root may read: the ledger, the usage spool and the shim's per-pod record say which
//! pod holds which device and where reports go, so they are created 0600 in directories created
//! 0700 (whatever the umask allows less of).
//!
//! A directory that already exists is left as it is: it may be shared (an admin's `state_dir`
//! choice), and the files in it are private either way.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every file this module creates.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory this module creates.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` and any missing parents with mode 0700.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Opens `path` for writing, created 0600 if missing. An existing file is set to 0600 too (it is
/// one of ours: a lock file or a record from an older version).
pub fn open_for_write(path: &Path, truncate: bool) -> io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(truncate)
        .mode(FILE_MODE)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Writes `bytes` to a fresh 0600 file at `path` (replacing any), without syncing.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    open_for_write(path, true)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn created_files_and_dirs_are_private_and_existing_files_are_tightened() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("a/b");
        create_dir(&dir).unwrap();
        assert_eq!((mode(&t.path().join("a")), mode(&dir)), (0o700, 0o700));

        let f = dir.join("x.json");
        write(&f, b"{}").unwrap();
        assert_eq!(mode(&f), 0o600);

        let loose = dir.join("old.lock");
        std::fs::write(&loose, "").unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
        open_for_write(&loose, false).unwrap();
        assert_eq!(mode(&loose), 0o600);

        // An existing directory is not touched.
        let shared = t.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_dir(&shared).unwrap();
        assert_eq!(mode(&shared), 0o755);
    }
}
