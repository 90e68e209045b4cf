//! Announcing a service address from its new location: gratuitous ARP
//! (RFC 5227 §3 "ARP announcement", plus the reply form some devices
//! honour), broadcast from the container's interface inside its network
//! namespace. The MAC is unchanged by a migration, so neighbour caches stay
//! right; what the announcement moves is every bridge's and the VXLAN
//! overlay's forwarding entry for that MAC, at once rather than after the
//! next unknown-unicast flood.
//!
//! Written by hand: one fixed 42-byte frame on an `AF_PACKET` socket does
//! not justify a packet-building crate or a spawned `arping` in the
//! downtime path.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

use crate::error::{errno, NetworkError, Result};
use crate::{link, netns};

/// `ETH_P_ARP`.
const ETH_P_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];

/// The Ethernet frame of a gratuitous ARP for `ip` at `mac`: a request
/// (`op` 1) or a reply (`op` 2), sender and target address both `ip`.
pub fn frame(mac: [u8; 6], ip: Ipv4Addr, op: u16) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    let target_mac = if op == 2 { BROADCAST } else { [0; 6] };
    f[32..38].copy_from_slice(&target_mac);
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// Broadcasts a gratuitous ARP request and reply for `ip` at `mac` from
/// interface `ifname` of the network namespace at `ns` (a bound file or
/// `/proc/<pid>/ns/net`).
pub fn gratuitous_arp(ns: &Path, ifname: &str, mac: [u8; 6], ip: Ipv4Addr) -> Result<()> {
    let ifname = ifname.to_string();
    netns::run_in(ns, move || send_here(&ifname, mac, ip))
}

fn send_here(ifname: &str, mac: [u8; 6], ip: Ipv4Addr) -> Result<()> {
    let ifindex = link::index(ifname)?;
    if link::flags(ifname)? & libc::IFF_RUNNING as libc::c_short == 0 {
        return Err(NetworkError::Invalid(format!(
            "cannot announce {ip}: {ifname} has no carrier (its node-side end is down)"
        )));
    }
    let sock = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(errno("opening a packet socket to announce the address"))?;
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = ifindex;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&BROADCAST);
    for op in [1u16, 2] {
        let f = frame(mac, ip, op);
        // SAFETY: the frame and the address are live for the call and their
        // lengths are the ones passed.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                std::ptr::addr_of!(to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n != f.len() as isize {
            return Err(errno(format!(
                "sending a gratuitous ARP for {ip} on {ifname}"
            ))(nix::Error::last()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_follow_rfc_826_layout() {
        let mac = [0x02, 0x6d, 10, 89, 0, 10];
        let ip = Ipv4Addr::new(10, 89, 0, 10);
        let req = frame(mac, ip, 1);
        assert_eq!(&req[0..6], &BROADCAST);
        assert_eq!(&req[12..14], &[0x08, 0x06]);
        assert_eq!(&req[20..22], &[0, 1]);
        assert_eq!(&req[28..32], &[10, 89, 0, 10]);
        assert_eq!(&req[38..42], &[10, 89, 0, 10]);
        assert_eq!(&req[32..38], &[0; 6]);
        let rep = frame(mac, ip, 2);
        assert_eq!(&rep[20..22], &[0, 2]);
        assert_eq!(&rep[22..28], &mac);
    }
}
