//! Files this crate writes (cached BIG-bench task files, split manifests): always through a
//! temporary file in the destination directory, renamed into place once complete, so an
//! interrupted run never leaves a half-written file that a later run would trust.

use crate::error::DataError;
use std::path::Path;

/// Write `bytes` to `dest` atomically (temp file + rename), creating parent directories.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), DataError> {
    iapt_assets::atomic::write_atomically(dest, bytes).map_err(|e| DataError::io(dest, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporaries() {
        let dir = std::env::temp_dir().join(format!("iapt-data-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let dest = dir.join("a/b/file.json");
        write_atomic(&dest, b"one").unwrap();
        write_atomic(&dest, b"two").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dest.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("file.json")]);
        // A destination that cannot be created (its parent is a file) fails and leaves nothing.
        let blocked = dir.join("a/b/file.json/inner.json");
        let msg = write_atomic(&blocked, b"x").unwrap_err().to_string();
        assert!(msg.contains("file.json"), "{msg}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
