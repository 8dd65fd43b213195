//! Test support, compiled only for the crate's unit tests and with the `testkit` feature (which the
//! integration tests and the benchmarks turn on through the dev-dependency on this crate), never
//! into the release binary: realistic event streams for the mirror ([`streams`]) and a temp dir
//! that is removed even when a test panics ([`TempDir`]), and the fuzz targets' bodies ([`fuzz`]).

pub mod fuzz;
pub mod streams;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory under the system temp dir, removed (with everything in it) on drop, also
/// when the test that made it panics.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/stripe-inbox-<tag>-<pid>-<n>`.
    ///
    /// # Panics
    /// When the directory cannot be created.
    pub fn new(tag: &str) -> TempDir {
        TempDir::new_in(&std::env::temp_dir(), tag)
    }

    /// The same under `parent` (which must exist), for a test that needs a particular file
    /// system.
    ///
    /// # Panics
    /// When the directory cannot be created.
    pub fn new_in(parent: &Path, tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("stripe-inbox-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("create temp dir {}: {e}", dir.display()));
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
