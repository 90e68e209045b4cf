//! Whether containerd, and so the MOSE shim it starts, sees the node agent's
//! work directory.
//!
//! Incoming checkpoint images land in the agent's tmpfs and the shim restores
//! from there. An agent started in a mount namespace of its own (`ip netns
//! exec`, which also unshares mounts, or a container without shared mounts)
//! mounts that tmpfs where containerd cannot see it: every migration to the
//! node would roll back with a bare "inventory.img missing". The agent checks
//! at start, with a marker file looked up through containerd's own root
//! (`/proc/<containerd pid>/root/…`), and refuses to run with what to do.

use std::{
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

/// The pid of the process serving the unix socket at `socket` (containerd).
pub fn socket_server_pid(socket: &Path) -> Result<i32> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to containerd at {}", socket.display()))?;
    let cred = getsockopt(&stream, PeerCredentials)
        .with_context(|| format!("reading the peer credentials of {}", socket.display()))?;
    Ok(cred.pid())
}

/// Fails unless process `pid` sees `dir` (this process's view of it) as the
/// same directory: a marker written here must be visible through its root.
pub fn check_visible_to(pid: i32, dir: &Path, who: &str) -> Result<()> {
    let marker_name = format!(".mose-visible-{}", std::process::id());
    let marker = dir.join(&marker_name);
    std::fs::write(&marker, b"")
        .with_context(|| format!("writing a marker file in {}", dir.display()))?;
    let rel = dir.strip_prefix("/").unwrap_or(dir);
    let theirs: PathBuf = PathBuf::from(format!("/proc/{pid}/root"))
        .join(rel)
        .join(&marker_name);
    let seen = theirs.exists();
    let _ = std::fs::remove_file(&marker);
    if seen {
        return Ok(());
    }
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).ok();
    let (mine, other) = (ns("self"), ns(&pid.to_string()));
    let why = if mine != other {
        format!(
            "this agent runs in another mount namespace ({}) than {who} (pid {pid}, {})",
            mine.map(|p| p.display().to_string()).unwrap_or_default(),
            other.map(|p| p.display().to_string()).unwrap_or_default()
        )
    } else {
        format!(
            "{who} (pid {pid}) sees another filesystem at {}",
            dir.display()
        )
    };
    bail!(
        "{why}: checkpoint images received into {} would be invisible to {who} and the \
         MOSE shim, and every incoming migration would fail. Start mose-plugin in \
         {who}'s mount namespace: enter only the network namespace (`nsenter \
         --net=/run/netns/NAME mose-plugin …`, not `ip netns exec`, which also unshares \
         mounts), or, in a container, share the work directory (--work) with the host \
         with shared mount propagation",
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_process_sees_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        check_visible_to(std::process::id() as i32, dir.path(), "itself").unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "marker removed"
        );
    }

    #[test]
    fn a_process_in_another_mount_namespace_does_not() {
        // a child in a private mount namespace with its own tmpfs on the
        // directory: the agent's marker is invisible to it
        let dir = tempfile::tempdir().unwrap();
        let script = format!(
            "mount -t tmpfs mose-test {} && exec sleep 30",
            dir.path().display()
        );
        let mut child = std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .spawn()
            .expect("unshare (util-linux) runs");
        let pid = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim()
            != "sleep"
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the child did not mount its tmpfs"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let e = check_visible_to(pid, dir.path(), "containerd")
            .unwrap_err()
            .to_string();
        let _ = child.kill();
        let _ = child.wait();
        assert!(e.contains("another mount namespace"), "{e}");
        assert!(e.contains("nsenter --net="), "{e}");
    }
}
