//! An interface's administrative state (`ip link set NAME up|down`) in the
//! calling thread's network namespace, by `SIOCGIFFLAGS`/`SIOCSIFFLAGS` on a
//! datagram socket: the kernel reads the namespace from the socket, so this
//! needs neither `ip` nor `/sys` (whose view belongs to the mount
//! namespace's network namespace, not the caller's).

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

use crate::error::{errno, NetworkError, Result};

fn ifreq(name: &str) -> Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(NetworkError::Invalid(format!(
            "interface name {name:?} must have 1 to {} bytes",
            libc::IFNAMSIZ - 1
        )));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

fn control_socket() -> Result<OwnedFd> {
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(errno("opening a socket to configure interfaces"))
}

/// Reads `name`'s flags (`IFF_*`); fails when the interface does not exist
/// in the caller's network namespace.
pub fn flags(name: &str) -> Result<libc::c_short> {
    let sock = control_socket()?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS fills the flags of the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(errno(format!("reading the flags of interface {name}"))(
            nix::Error::last(),
        ));
    }
    // SAFETY: the flags member of the union was just set by the kernel.
    Ok(unsafe { req.ifr_ifru.ifru_flags })
}

/// Sets `name` administratively up or down (a no-op when it already is).
pub fn set_up(name: &str, up: bool) -> Result<()> {
    let current = flags(name)?;
    let is_up = current & libc::IFF_UP as libc::c_short != 0;
    if is_up == up {
        return Ok(());
    }
    let sock = control_socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_flags = if up {
        current | libc::IFF_UP as libc::c_short
    } else {
        current & !(libc::IFF_UP as libc::c_short)
    };
    // SAFETY: SIOCSIFFLAGS reads the name and flags of the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(errno(format!(
            "setting interface {name} {}",
            if up { "up" } else { "down" }
        ))(nix::Error::last()));
    }
    Ok(())
}

/// `name`'s interface index in the caller's network namespace.
pub fn index(name: &str) -> Result<i32> {
    let sock = control_socket()?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFINDEX fills the index of the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFINDEX, &mut req) } < 0 {
        return Err(errno(format!("finding interface {name}"))(
            nix::Error::last(),
        ));
    }
    // SAFETY: the index member of the union was just set by the kernel.
    Ok(unsafe { req.ifr_ifru.ifru_ifindex })
}

/// `name`'s hardware (MAC) address.
pub fn hw_addr(name: &str) -> Result<[u8; 6]> {
    let sock = control_socket()?;
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFHWADDR fills the hardware address of the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(errno(format!("reading the MAC address of {name}"))(
            nix::Error::last(),
        ));
    }
    // SAFETY: the hwaddr member of the union was just set by the kernel.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok(mac)
}

/// `name`'s (first) IPv4 address and its prefix length.
pub fn ipv4(name: &str) -> Result<(std::net::Ipv4Addr, u8)> {
    let sock = control_socket()?;
    let read = |request, what: &str| -> Result<std::net::Ipv4Addr> {
        let mut req = ifreq(name)?;
        // SAFETY: SIOCGIFADDR / SIOCGIFNETMASK fill an AF_INET sockaddr of
        // the ifreq we own.
        if unsafe { libc::ioctl(sock.as_raw_fd(), request, &mut req) } < 0 {
            return Err(errno(format!("reading the IPv4 {what} of {name}"))(
                nix::Error::last(),
            ));
        }
        // SAFETY: the kernel wrote a sockaddr_in into the union.
        let sin: libc::sockaddr_in = unsafe { std::mem::transmute_copy(&req.ifr_ifru.ifru_addr) };
        Ok(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
    };
    let ip = read(libc::SIOCGIFADDR, "address")?;
    let mask = read(libc::SIOCGIFNETMASK, "netmask")?;
    Ok((ip, u32::from(mask).count_ones() as u8))
}

/// True when `name` exists in the caller's network namespace.
pub fn exists(name: &str) -> bool {
    index(name).is_ok()
}

/// Waits until `name` is operationally up (`IFF_RUNNING`: the kernel's
/// link-watch work has run, so the link passes traffic and a bridge
/// forwards on it), polling every millisecond up to `timeout`.
pub fn wait_running(name: &str, timeout: std::time::Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if flags(name)? & libc::IFF_RUNNING as libc::c_short != 0 {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(NetworkError::Invalid(format!(
                "interface {name} is up but not operational after {timeout:?} (no carrier?)"
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Forgets every IPv4 neighbour (ARP) entry of `name` in the caller's
/// network namespace, so that the next packet to a peer asks for it at
/// once. A link that was down keeps entries the kernel could not resolve
/// then, whose retry timer would hold the first packets back for up to a
/// second. Reads `/proc/thread-self/net/arp` (the caller thread's
/// namespace) and deletes each entry with `SIOCDARP`.
pub fn flush_neighbours(name: &str) -> Result<()> {
    let table =
        std::fs::read_to_string("/proc/thread-self/net/arp").map_err(|e| NetworkError::Io {
            what: "reading the neighbour table".into(),
            source: e,
        })?;
    let sock = control_socket()?;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(ip), Some(dev)) = (f.first(), f.get(5)) else {
            continue;
        };
        let Ok(ip) = ip.parse::<std::net::Ipv4Addr>() else {
            continue;
        };
        if *dev != name {
            continue;
        }
        // SAFETY: arpreq is plain old data; all-zero is a valid value.
        let mut req: libc::arpreq = unsafe { std::mem::zeroed() };
        // SAFETY: sockaddr_in fits in the sockaddr the request reserves.
        let pa = unsafe { &mut *std::ptr::addr_of_mut!(req.arp_pa).cast::<libc::sockaddr_in>() };
        pa.sin_family = libc::AF_INET as libc::sa_family_t;
        pa.sin_addr.s_addr = u32::from(ip).to_be();
        for (dst, src) in req.arp_dev.iter_mut().zip(name.as_bytes()) {
            *dst = *src as libc::c_char;
        }
        // SAFETY: SIOCDARP reads the request we own; a vanished entry is ENXIO.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCDARP, &req) } < 0 {
            let e = nix::Error::last();
            if e != nix::Error::ENXIO {
                return Err(errno(format!("forgetting neighbour {ip} on {name}"))(e));
            }
        }
    }
    Ok(())
}
