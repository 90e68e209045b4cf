//! Network namespaces kept alive by a bind mount on a file, as `ip netns`
//! and CNI runtimes keep them (here under the node's state directory, so
//! that nodes sharing a host never collide), and code run inside one.
//!
//! Written on `nix` rather than a netns crate: creating one is an unshare
//! and a bind mount on a thread of its own, entering one a `setns`.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::error::{errno, io, NetworkError, Result};

/// Creates a new network namespace bound to `path` (which must not exist;
/// its directory is created). Only the loopback exists in it, down.
pub fn create(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io(format!("creating the mount point {}", path.display())))?;
    let target = path.to_path_buf();
    let bound = std::thread::Builder::new()
        .name("mose-netns".into())
        .spawn(move || -> Result<()> {
            // this thread alone moves to the new namespace and then ends
            unshare(CloneFlags::CLONE_NEWNET).map_err(errno("creating a network namespace"))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(errno(format!(
                "binding the new network namespace to {}",
                target.display()
            )))
        })
        .map_err(io("starting a thread to create a network namespace"))?
        .join()
        .map_err(|_| NetworkError::Invalid("the netns thread panicked".into()))?;
    if let Err(e) = bound {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// Releases the namespace bound to `path` and removes the file; a path that
/// is gone or not a mount point is not an error (idempotent).
pub fn remove(path: &Path) -> Result<()> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(errno(format!("unmounting {}", path.display()))(e)),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("removing {}", path.display()))(e)),
    }
}

/// True when `path` is bound to a network namespace (a live one).
pub fn is_bound(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

/// Runs `f` on a thread of its own inside the network namespace at `path`
/// (a bound file or `/proc/<pid>/ns/net`); that thread ends there, so no
/// other thread ever runs in the container's namespace.
pub fn run_in<T, F>(path: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let path: PathBuf = path.to_path_buf();
    std::thread::Builder::new()
        .name("mose-in-netns".into())
        .spawn(move || {
            let ns = File::open(&path)
                .map_err(io(format!("opening network namespace {}", path.display())))?;
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(errno(format!(
                "entering network namespace {}",
                path.display()
            )))?;
            f()
        })
        .map_err(io("starting a thread to enter a network namespace"))?
        .join()
        .map_err(|_| NetworkError::Invalid("the netns thread panicked".into()))?
}
