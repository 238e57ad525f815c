//! Files this crate writes (cached BIG-bench task files, split manifests): always through a
//! temporary file in the destination directory, renamed into place once complete, so an
//! interrupted run never leaves a half-written file that a later run would trust.

use crate::error::DataError;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Write `bytes` to `dest` atomically (temp file + rename), creating parent directories.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| DataError::io(&parent, e))?;
    let tmp = Temp(temp_name(&parent, dest));
    let mut file = fs::File::create(&tmp.0).map_err(|e| DataError::io(&tmp.0, e))?;
    file.write_all(bytes).map_err(|e| DataError::io(&tmp.0, e))?;
    file.sync_all().map_err(|e| DataError::io(&tmp.0, e))?;
    drop(file);
    fs::rename(&tmp.0, dest).map_err(|e| DataError::io(dest, e))?;
    std::mem::forget(tmp);
    Ok(())
}

fn temp_name(dir: &Path, dest: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Removes the temporary file unless the write completed.
struct Temp(PathBuf);

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
