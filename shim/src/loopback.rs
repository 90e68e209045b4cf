//! Loopback in a restored container's fresh network namespace.
//!
//! runc creates a container's new network namespace and brings its loopback
//! up at create (its "loopback" network). At restore it creates the namespace
//! too, CRIU restores into it as an empty namespace, and nobody brings the
//! loopback up: a server on 127.0.0.1 inside is unreachable ("Network is
//! unreachable"). The shim brings it up right after the restore; the kernel
//! then configures 127.0.0.1/8 and ::1 itself. youki (0.7) leaves it down
//! at create too, so the shim also brings it up after every create (a no-op
//! when the runtime did).

use std::os::fd::{AsFd, AsRawFd};

use nix::sched::{setns, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Error, Result};

/// Sets `lo` up in the network namespace of process `pid`. Runs on a thread
/// of its own, which enters the namespace and ends there, so no thread of the
/// shim ever serves from another namespace.
pub fn bring_up(pid: i32) -> Result<()> {
    std::thread::Builder::new()
        .name("mose-loopback".into())
        .spawn(move || bring_up_here(pid))
        .map_err(Error::io("start the loopback thread"))?
        .join()
        .map_err(|_| Error::Internal("the loopback thread panicked".into()))?
}

fn bring_up_here(pid: i32) -> Result<()> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(Error::io(format!(
        "open the network namespace of pid {pid}"
    )))?;
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::io(format!("enter the network namespace of pid {pid}"))(e.into()))?;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::io("open a socket for the loopback")(e.into()))?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the flags of the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(Error::io("read the loopback's flags")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the flags member of the union was just set by the kernel.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(Error::io("set the loopback up")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// True when the spec asks for a network namespace of the container's own
/// (no path): the one runc creates, whose loopback needs bringing up after a
/// restore. A namespace given by path (CNI, CRI, a migration's prepared
/// namespace) is its owner's to configure.
pub fn has_own_netns(spec: &Spec) -> bool {
    crate::oci::creates_namespace(spec, LinuxNamespaceType::Network)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_netns_only_without_a_path() {
        let spec = |v: serde_json::Value| -> Spec { serde_json::from_value(v).unwrap() };
        let own = spec(serde_json::json!({"linux": {"namespaces": [{"type": "network"}]}}));
        assert!(has_own_netns(&own));
        let given = spec(serde_json::json!({"linux": {"namespaces": [
            {"type": "network", "path": "/run/netns/x"}]}}));
        assert!(!has_own_netns(&given));
        let host = spec(serde_json::json!({"linux": {"namespaces": [{"type": "pid"}]}}));
        assert!(!has_own_netns(&host));
    }
}
