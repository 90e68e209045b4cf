//! The sender's work directories, `<work root>/<migration id>` on a tmpfs
//! (a dump lives in memory). A running migration holds an exclusive lock on
//! `<work root>/<id>.lock` (taken before its directory exists). A directory
//! whose lock nobody holds was left by a sender that died (a killed agent or
//! `mosectl`); without a sweep its images would hold the node's memory until
//! a reboot, so each migration removes those before it starts.

use std::{
    fs::File,
    path::{Path, PathBuf},
    time::Duration,
};

use nix::fcntl::{Flock, FlockArg};
use tracing::warn;

/// A directory without a lock file (left by a MOSE that took none) counts
/// as stale once it is this old.
const UNLOCKED_GRACE: Duration = Duration::from_secs(600);

/// The lock of one running migration's work directory; dropping it removes
/// the lock file (the directory is removed by the migration itself).
#[derive(Debug)]
pub struct WorkLock {
    path: PathBuf,
    _lock: Flock<File>,
}

impl Drop for WorkLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn lock_path(root: &Path, id: &str) -> PathBuf {
    root.join(format!("{id}.lock"))
}

/// Takes the lock of migration `id` under `root`. Errors: the lock file
/// cannot be created, or another process holds it (`WouldBlock`).
pub fn lock(root: &Path, id: &str) -> std::io::Result<WorkLock> {
    let path = lock_path(root, id);
    let f = File::create(&path)?;
    let lock = Flock::lock(f, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| std::io::Error::from(e))?;
    Ok(WorkLock { path, _lock: lock })
}

/// Removes what dead senders left under `root`; returns the directories
/// removed. Running migrations (their lock held) are left alone.
pub fn sweep(root: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut removed = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if name.starts_with('.') || !is_dir {
            continue;
        }
        let stale = match File::open(lock_path(root, &name)) {
            Ok(f) => Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok(),
            Err(_) => e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > UNLOCKED_GRACE),
        };
        if stale {
            warn!(path = %e.path().display(), "removing the work directory of a sender that died");
            let _ = std::fs::remove_dir_all(e.path());
            let _ = std::fs::remove_file(lock_path(root, &name));
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_directories_whose_lock_nobody_holds_are_swept() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        // running: locked
        let running = lock(r, "a-1").unwrap();
        std::fs::create_dir(r.join("a-1")).unwrap();
        // died: lock file left, nobody holds it
        std::fs::create_dir(r.join("b-2")).unwrap();
        std::fs::write(r.join("b-2.lock"), "").unwrap();
        // no lock file, fresh: spared (a sender of an older MOSE may run)
        std::fs::create_dir(r.join("c-3")).unwrap();
        assert_eq!(sweep(r), 1);
        assert!(r.join("a-1").exists() && r.join("c-3").exists());
        assert!(!r.join("b-2").exists() && !r.join("b-2.lock").exists());
        assert!(lock(r, "a-1").is_err(), "a held lock is not taken twice");
        drop(running);
        assert!(
            !r.join("a-1.lock").exists(),
            "dropping the lock removes its file"
        );
        assert_eq!(
            sweep(r),
            0,
            "a directory without a lock file is spared while young"
        );
    }
}
