//! Leftover detection (processes, mounts, FIFOs, cgroups) and best-effort removal.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// Mount points from /proc/self/mountinfo (octal escapes decoded).
pub fn mount_points() -> Vec<PathBuf> {
    let s = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    s.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .collect()
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir`.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    mount_points()
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// Lazily unmounts everything at or below `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let mut ms = mounts_under(dir);
    ms.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in ms {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A process of this host, as `/proc` lists it.
#[derive(Debug, Clone)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    /// Its command line, arguments joined by spaces.
    pub cmdline: String,
}

/// Every process of this host but this one (those that end while being
/// read are left out).
pub fn processes() -> Vec<Process> {
    let me = std::process::id();
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = fs::read(e.path().join("cmdline")).ok()?;
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            // after the command name in parentheses: state, then the parent
            let ppid = stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()?;
            Some(Process {
                pid,
                ppid,
                cmdline: String::from_utf8_lossy(&cmd).replace('\0', " "),
            })
        })
        .filter(|p| p.pid != me)
        .collect()
}

/// Pids whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|p| p.cmdline.contains(needle))
        .map(|p| p.pid)
        .collect()
}

/// SIGKILLs every process whose command line contains `needle`.
pub fn kill_processes_mentioning(needle: &str) {
    for pid in processes_mentioning(needle) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// True if process `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// FIFOs (named pipes) found below `dir` (recursively).
pub fn fifos_under(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_fifo() {
                out.push(e.path());
            } else if ft.is_dir() && !ft.is_symlink() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// Directories named `name` under /sys/fs/cgroup/* (depth-limited search).
pub fn cgroup_dirs_named(name: &str) -> Vec<PathBuf> {
    const MAX_DEPTH: usize = 5;
    let mut out = Vec::new();
    let mut stack: Vec<(PathBuf, usize)> = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if !ft.is_dir() || ft.is_symlink() {
                continue;
            }
            if e.file_name().to_str() == Some(name) {
                out.push(e.path());
            }
            if depth < MAX_DEPTH {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    out
}

/// Removes empty cgroup dirs named `name` (e.g. a test namespace), deepest first.
pub fn remove_empty_cgroup_dirs(name: &str) {
    let mut dirs = cgroup_dirs_named(name);
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = fs::remove_dir(&d);
    }
}

/// What to check after a container has been deleted.
#[derive(Debug, Default, Clone)]
pub struct Leftovers<'a> {
    /// Container id: no cgroup dir, no bundle, no mount mentioning it may remain.
    pub container_id: &'a str,
    /// containerd namespace: only cgroup dirs below a dir of that name count
    /// (other users of the machine may have same-named containers).
    pub namespace: Option<&'a str>,
    /// Pids seen while the container ran: none may still be alive.
    pub pids: Vec<u32>,
    /// containerd root and state dirs (mounts below them).
    pub dirs: Vec<PathBuf>,
    /// FIFO directory: no FIFO may remain in it.
    pub fifo_dir: Option<PathBuf>,
}

/// Asserts nothing of a deleted container is left; lists every leftover found.
pub fn assert_no_leftovers(l: &Leftovers<'_>) -> Result<()> {
    let mut problems = Vec::new();
    let alive: Vec<u32> = l
        .pids
        .iter()
        .copied()
        .filter(|&p| process_alive(p))
        .collect();
    if !alive.is_empty() {
        problems.push(format!("processes still alive: {alive:?}"));
    }
    for d in &l.dirs {
        let ms: Vec<PathBuf> = mounts_under(d)
            .into_iter()
            .filter(|m| m.to_string_lossy().contains(l.container_id))
            .collect();
        if !ms.is_empty() {
            problems.push(format!("mounts left: {ms:?}"));
        }
        let bundles: Vec<PathBuf> = find_named(d, l.container_id, 4);
        if !bundles.is_empty() {
            problems.push(format!("dirs left: {bundles:?}"));
        }
    }
    if let Some(f) = &l.fifo_dir {
        let fifos = fifos_under(f);
        if !fifos.is_empty() {
            problems.push(format!("FIFOs left: {fifos:?}"));
        }
    }
    let cg: Vec<PathBuf> = cgroup_dirs_named(l.container_id)
        .into_iter()
        .filter(|p| {
            l.namespace
                .is_none_or(|ns| p.components().any(|c| c.as_os_str().to_str() == Some(ns)))
        })
        .collect();
    if !cg.is_empty() {
        problems.push(format!("cgroups left: {cg:?}"));
    }
    if !problems.is_empty() {
        bail!(
            "container {} left state behind:\n  {}",
            l.container_id,
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// Paths named `name` below `dir`, up to `depth` levels (not following symlinks).
fn find_named(dir: &Path, name: &str, depth: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, lvl)) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if e.file_name().to_str() == Some(name) {
                out.push(e.path());
            }
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() && lvl < depth {
                stack.push((e.path(), lvl + 1));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/a\040b\011c"), "/a b\tc");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/end\04"), r"/end\04");
    }

    #[test]
    fn own_process_is_alive_and_root_is_mounted() {
        assert!(process_alive(std::process::id()));
        assert!(mount_points().iter().any(|m| m == Path::new("/")));
    }

    #[test]
    fn fifos_are_found() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(d.path().join("sub")).expect("mkdir");
        let p = d.path().join("sub/f");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        assert_eq!(fifos_under(d.path()), vec![p]);
    }
}
