//! iproute2 (`ip`, `tc`) and network-namespace plumbing for the testbed.
//!
//! Every external command is bounded by [`CMD_TIMEOUT`]. Processes are put into
//! a node's netns with `nsenter --net` rather than `ip netns exec`: the latter
//! also unshares the mount namespace and remounts `/sys`, which hides the
//! cgroup v1 hierarchies under `/sys/fs/cgroup` (runc then cannot create
//! containers) and makes containerd's mounts invisible from the root mount
//! namespace (so they could not be cleaned up from outside).

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use mose_tests::ctr::{run_command, Output};

/// Bound for every `ip`/`tc`/`nsenter` call.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(20);

/// Where `ip netns add` bind-mounts named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Runs `program args` with [`CMD_TIMEOUT`]; returns the output whatever the exit code.
pub(crate) fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<Output> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_command(cmd, None, CMD_TIMEOUT)
}

/// Runs `program args` and fails (with its output) unless it exits 0.
pub(crate) fn run_ok<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<String> {
    Ok(run(program, args)?.check()?.stdout)
}

/// Runs `program args`, treating failures whose stderr contains one of
/// `benign` (e.g. "Cannot find device") as success. Used by idempotent teardown.
pub(crate) fn run_tolerant(program: &str, args: &[&str], benign: &[&str]) -> Result<()> {
    let out = run(program, args)?;
    if out.success() || benign.iter().any(|b| out.stderr.contains(b)) {
        return Ok(());
    }
    out.check().map(|_| ())
}

/// Path of the bind mount naming netns `ns`.
pub fn netns_path(ns: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(ns)
}

/// True if the named netns exists.
pub fn netns_exists(ns: &str) -> bool {
    netns_path(ns).exists()
}

/// True if a network interface `name` exists in the root namespace.
pub fn link_exists(name: &str) -> bool {
    PathBuf::from("/sys/class/net").join(name).exists()
}

/// A `Command` running `program` inside netns `ns` (same mount namespace).
pub fn netns_command(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns_path(ns).display()))
        .arg("--")
        .arg(program);
    cmd
}

/// Runs `f` on a fresh thread whose network namespace is `ns`, so Rust code
/// (TCP servers, clients) can act "from inside a node" without a helper binary.
/// Only that thread switches; the rest of the process stays in the root netns.
pub fn spawn_in_netns<T, F>(ns: &str, f: F) -> Result<thread::JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let path = netns_path(ns);
    let file = fs::File::open(&path).with_context(|| {
        format!(
            "opening netns {} (is the testbed up? see `ip netns list`)",
            path.display()
        )
    })?;
    let name = format!("netns-{ns}");
    thread::Builder::new()
        .name(name)
        .spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into {}", path.display()))?;
            f()
        })
        .context("spawning a thread for a netns")
}

/// Like [`spawn_in_netns`] but waits for the result.
pub fn run_in_netns<T, F>(ns: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    spawn_in_netns(ns, f)?
        .join()
        .map_err(|_| anyhow!("thread running in netns {ns} panicked"))?
}

/// Pids (other than ours) whose network namespace is the named netns `ns`:
/// compared by the nsfs inode behind `/proc/<pid>/ns/net`.
pub fn pids_in_netns(ns: &str) -> Vec<u32> {
    let Ok(target) = fs::metadata(netns_path(ns)) else {
        return Vec::new();
    };
    let me = std::process::id();
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net"))
                .map(|m| m.ino() == target.ino() && m.dev() == target.dev())
                .unwrap_or(false)
        })
        .collect()
}

/// `tbf` parameters for `mbit` Mbit/s: the bucket holds ~5 ms of traffic but
/// at least 64 KiB, because veth passes GSO super-packets of up to 64 KiB and
/// a smaller bucket would make tbf segment or starve them; the queue holds
/// ~20 ms of traffic (at least 3 buckets) so TCP sees delay before drops.
pub fn tbf_params(mbit: u32) -> Vec<String> {
    let bytes_per_sec = u64::from(mbit) * 1_000_000 / 8;
    let burst = (bytes_per_sec / 200).max(64 * 1024);
    let limit = (bytes_per_sec / 50).max(3 * burst);
    vec![
        "rate".into(),
        format!("{mbit}mbit"),
        "burst".into(),
        burst.to_string(),
        "limit".into(),
        limit.to_string(),
    ]
}

/// Replaces the root qdisc of `dev` (in netns `ns`, or the root netns) by tbf
/// at `mbit`, or removes it (back to the default) when `mbit` is `None`.
pub(crate) fn shape(ns: Option<&str>, dev: &str, mbit: Option<u32>) -> Result<()> {
    let mut args: Vec<String> = Vec::new();
    if let Some(ns) = ns {
        args.extend(["-n".into(), ns.into()]);
    }
    match mbit {
        Some(r) => {
            if r == 0 {
                return Err(anyhow!("rate must be > 0 Mbit/s (use None to unshape)"));
            }
            args.extend(["qdisc", "replace", "dev", dev, "root", "tbf"].map(String::from));
            args.extend(tbf_params(r));
            run_ok("tc", &args)
                .with_context(|| format!("shaping {dev} to {r} Mbit/s (is sch_tbf available?)"))?;
        }
        None => {
            args.extend(["qdisc", "del", "dev", dev, "root"].map(String::from));
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            // Deleting the default qdisc fails harmlessly: nothing to remove.
            run_tolerant(
                "tc",
                &a,
                &["handle of zero", "No such file", "Invalid handle"],
            )
            .with_context(|| format!("removing shaping from {dev}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tbf_bucket_scales_with_rate() {
        let p = tbf_params(50);
        assert_eq!(p[1], "50mbit");
        assert_eq!(p[3], (64 * 1024).to_string());
        let p = tbf_params(10_000);
        assert_eq!(p[3], (1_250_000_000u64 / 200).to_string());
    }
}
