//! Shared by the fuzz targets.

/// A fresh directory on tmpfs (`/dev/shm`) when there is one, else in the temp dir: targets that
/// touch files run millions of times.
pub fn scratch_dir(what: &str) -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    tempfile::tempdir_in(base).unwrap_or_else(|e| panic!("{what}: {e}"))
}
