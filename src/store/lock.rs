//! The `<database>.lock` file lock: `serve`, and every command that writes, holds it for as long as
//! it runs, so that a second server refuses to start instead of racing the first. Paths are
//! resolved through symlinks first: two names for one file must meet at one lock.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// An advisory lock on `<database>.lock`, held by `serve` (and by commands that write) for as long as
/// the value lives, so that a second server refuses to start instead of racing the first.
#[derive(Debug)]
pub struct Lock {
    _file: File,
    path: PathBuf,
}

impl Lock {
    /// Takes the lock or says who holds it.
    pub fn acquire(database: &Path) -> Result<Lock> {
        // Through symlinks and `..`: two paths to one file must meet at one lock.
        let path = lock_path(&resolve(database));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("create directory {}", dir.display()), e))?;
        }
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(format!("open lock file {}", path.display()), e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    holder.to_string()
                };
                return Err(Error::Locked {
                    path: database.to_path_buf(),
                    holder,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io(format!("lock {}", path.display()), e));
            }
        }
        // Record who holds it, for the next one's error message.
        let me = format!("stripe-inbox pid {}", std::process::id());
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = file.write_all(me.as_bytes());
        Ok(Lock { _file: file, path })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether some process holds the lock on `database` right now (without taking it).
    pub fn held(database: &Path) -> Option<String> {
        match Lock::acquire(database) {
            Err(Error::Locked { holder, .. }) => Some(holder),
            _ => None,
        }
    }
}

/// The database's real path, through symlinks, also when the file does not exist yet (its
/// directory is resolved then); the path as given when not even the directory exists.
pub fn resolve(database: &Path) -> PathBuf {
    if let Ok(real) = database.canonicalize() {
        return real;
    }
    let dir = match database.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match (dir.canonicalize(), database.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => database.to_path_buf(),
    }
}

/// `stripe-inbox.db` → `stripe-inbox.db.lock`.
pub fn lock_path(database: &Path) -> PathBuf {
    super::with_suffix(database, ".lock")
}
