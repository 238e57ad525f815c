//! The project's one way to write a file: through a temporary name in the destination
//! directory, flushed to disk, then renamed over the final name, so a reader (or a later run
//! after a crash) never sees a half-written file. Every crate that writes files uses this.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Write `bytes` to `path` atomically, creating its parent directories. The error is the
/// operating system's; callers add the path to their own error type.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = TempPath::beside(path)?;
    let mut file = fs::File::create(temp.path())?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    temp.commit(path)
}

/// A temporary file or directory name next to a destination, removed on drop unless
/// [`TempPath::commit`]ted (renamed over the destination).
#[derive(Debug)]
pub struct TempPath {
    path: PathBuf,
    committed: bool,
}

impl TempPath {
    /// A fresh hidden name in `dest`'s directory (created if missing): `.<name>.tmp-<pid>-<n>`.
    pub fn beside(dest: &Path) -> io::Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&dir)?;
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Ok(Self { path: dir.join(format!(".{name}.tmp-{}-{n}", std::process::id())), committed: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rename the (complete, already synced) temporary over `dest`, then sync the directory so
    /// the rename itself survives a crash (best effort: not every platform opens directories).
    pub fn commit(mut self, dest: &Path) -> io::Result<()> {
        fs::rename(&self.path, dest)?;
        self.committed = true;
        sync_parent(dest);
        Ok(())
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if self.path.is_dir() {
            let _ = fs::remove_dir_all(&self.path);
        } else {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Rename a complete file (written by someone else, e.g. a burn recorder) over `dest`, first
/// syncing it to disk, then syncing the directory.
pub fn rename_durably(from: &Path, dest: &Path) -> io::Result<()> {
    fs::File::open(from)?.sync_all()?;
    fs::rename(from, dest)?;
    sync_parent(dest);
    Ok(())
}

fn sync_parent(file: &Path) {
    if let Some(dir) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(dir) = fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_creates_parents_and_leaves_no_temporaries() {
        let dir = std::env::temp_dir().join(format!("iapt-atomic-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let dest = dir.join("a/b/file.json");
        write_atomically(&dest, b"one").unwrap();
        write_atomically(&dest, b"two").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dest.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("file.json")]);
        // A destination whose parent is a file fails and leaves nothing behind.
        assert!(write_atomically(&dest.join("inner.json"), b"x").is_err());
        assert_eq!(fs::read_dir(dest.parent().unwrap()).unwrap().count(), 1);
        // An uncommitted temporary is removed when dropped.
        let temp = TempPath::beside(&dest).unwrap();
        fs::write(temp.path(), b"partial").unwrap();
        let path = temp.path().to_path_buf();
        drop(temp);
        assert!(!path.exists());
        fs::remove_dir_all(dir).unwrap();
    }
}
