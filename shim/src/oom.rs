//! OOM notification for a container (cgroup v1 `memory.oom_control` through
//! `cgroup.event_control`), so containerd gets a TaskOOM event when the
//! kernel's OOM killer acts inside the container.
//!
//! A notification can lose the race with the container's end: `ctr run --rm`
//! deletes the task, and with it the cgroup, moments after an OOM kill. So
//! every OOM kill is also counted from the cgroup's own `oom_kill` counter,
//! and the exit of the init reports the kills no notification reported yet
//! ([`OomCounter::unreported`]) before the exit itself: an OOM is never lost,
//! however early it happens, and never reported twice.
//!
//! A kill is claimed (counted as reported) only by whoever publishes it, and
//! under the counter's publishing lock: the exit takes that lock before it
//! reports, so a notification's event already on its way is out before the
//! exit (after which `ctr run --rm` deletes the task and the shim goes).

use std::{
    io::{Read, Write},
    os::fd::{AsRawFd, FromRawFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tracing::warn;

use crate::metrics::V1Paths;

/// How long a notification waits for the kernel to count the kill it
/// announces (the notification comes before the victim is chosen).
const KILL_COUNT_WAIT: Duration = Duration::from_millis(100);

/// OOM kills of one container's memory cgroup, and how many were reported.
#[derive(Clone)]
pub struct OomCounter {
    dir: PathBuf,
    reported: Arc<Mutex<u64>>,
    /// Held while kills are claimed and their events published.
    publishing: Arc<tokio::sync::Mutex<()>>,
}

impl OomCounter {
    /// The kernel's count of OOM kills in the cgroup (`oom_kill` in
    /// `memory.oom_control`, Linux ≥ 4.13); `None` when it cannot be read.
    fn kills(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.dir.join("memory.oom_control")).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
    }

    /// Kills not reported yet, now counted as reported. Read while the cgroup
    /// still exists (at the init's exit, before the task is deleted).
    pub fn unreported(&self) -> u64 {
        let Some(kills) = self.kills() else { return 0 };
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        let new = kills.saturating_sub(*reported);
        *reported = (*reported).max(kills);
        new
    }

    /// Waits (at most [`KILL_COUNT_WAIT`]) for the kernel to count a kill
    /// of an init that died of SIGKILL while its cgroup had hit its limit
    /// (`memory.failcnt` > 0): the OOM killer sends SIGKILL before it
    /// counts the kill (`__oom_kill_process` in mm/oom_kill.c), so the exit
    /// can be reaped first, on a busy node by whole milliseconds. Returns
    /// at once for any other exit.
    pub async fn settle_after(&self, exit_status: i32) {
        if exit_status != 128 + libc::SIGKILL || !self.hit_limit() {
            return;
        }
        let deadline = Instant::now() + KILL_COUNT_WAIT;
        while Instant::now() < deadline {
            let reported = *self.reported.lock().unwrap_or_else(|p| p.into_inner());
            if self.kills().is_none_or(|k| k > reported) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Whether the cgroup's memory use ever hit its limit.
    fn hit_limit(&self) -> bool {
        std::fs::read_to_string(self.dir.join("memory.failcnt"))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
    }

    /// Whether the kernel counts this cgroup's kills (else every notification
    /// is one kill).
    pub fn counts_kills(&self) -> bool {
        self.kills().is_some()
    }

    /// The lock under which kills are claimed and published (see the module).
    pub async fn publishing(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.publishing.clone().lock_owned().await
    }

    /// One notification arrived: true when it announces a kill not reported
    /// yet (it is claimed by whoever publishes it). Where the kernel keeps no
    /// kill count, every notification counts.
    fn notified(&self) -> bool {
        let deadline = Instant::now() + KILL_COUNT_WAIT;
        loop {
            let Some(kills) = self.kills() else {
                return self.dir.exists();
            };
            let reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
            if kills > *reported {
                return true;
            }
            drop(reported);
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Starts watching the memory cgroup of `pid`; every OOM kill sends one unit
/// on the returned channel. Returns `None` where OOM events cannot be watched
/// (no v1 memory controller).
pub fn watch(pid: i32) -> Option<(mpsc::UnboundedReceiver<()>, OomCounter)> {
    let dir = V1Paths::of_pid(pid).ok()?.0.get("memory")?.clone();
    let counter = OomCounter {
        reported: Arc::new(Mutex::new(0)),
        publishing: Arc::new(tokio::sync::Mutex::new(())),
        dir,
    };
    // kills before the watch (none for a fresh container) are not this task's
    counter.unreported();
    let (tx, rx) = mpsc::unbounded_channel();
    let thread_counter = counter.clone();
    let spawned = std::thread::Builder::new()
        .name("mose-oom".into())
        .spawn(move || {
            if let Err(e) = watch_loop(&thread_counter, &tx) {
                warn!(cgroup = %thread_counter.dir.display(), error = %e, "OOM events unavailable");
            }
        });
    spawned.ok().map(|_| (rx, counter))
}

fn watch_loop(counter: &OomCounter, tx: &mpsc::UnboundedSender<()>) -> std::io::Result<()> {
    let dir: &Path = &counter.dir;
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
        if counter.notified() && tx.send(()).is_err() {
            return Ok(());
        }
    }
}
