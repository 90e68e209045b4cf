//! OOM notification for a container (cgroup v1 `memory.oom_control` through
//! `cgroup.event_control`), so containerd gets a TaskOOM event when the
//! kernel's OOM killer acts inside the container.

use std::{
    io::{Read, Write},
    os::fd::{AsRawFd, FromRawFd},
    path::Path,
};

use tokio::sync::mpsc;
use tracing::warn;

use crate::metrics::V1Paths;

/// Starts watching the memory cgroup of `pid`; every OOM sends one unit on the
/// returned channel. Returns `None` where OOM events cannot be watched
/// (no v1 memory controller).
pub fn watch(pid: i32) -> Option<mpsc::UnboundedReceiver<()>> {
    let dir = V1Paths::of_pid(pid).ok()?.0.get("memory")?.clone();
    let (tx, rx) = mpsc::unbounded_channel();
    let spawned = std::thread::Builder::new()
        .name("mose-oom".into())
        .spawn(move || {
            if let Err(e) = watch_loop(&dir, &tx) {
                warn!(cgroup = %dir.display(), error = %e, "OOM events unavailable");
            }
        });
    spawned.ok().map(|_| rx)
}

fn watch_loop(dir: &Path, tx: &mpsc::UnboundedSender<()>) -> std::io::Result<()> {
    let control = std::fs::File::open(dir.join("memory.oom_control"))?;
    // SAFETY: eventfd returns a fresh descriptor we take ownership of.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: efd is a valid, owned descriptor.
    let mut event = unsafe { std::fs::File::from_raw_fd(efd) };
    let mut reg = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.event_control"))?;
    // one write: the kernel parses the registration from a single buffer
    let line = format!("{} {}", event.as_raw_fd(), control.as_raw_fd());
    reg.write_all(line.as_bytes())?;
    let mut buf = [0u8; 8];
    loop {
        event.read_exact(&mut buf)?;
        // the eventfd also fires when the cgroup is removed
        if !dir.exists() {
            return Ok(());
        }
        if tx.send(()).is_err() {
            return Ok(());
        }
    }
}
