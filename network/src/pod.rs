//! A Kubernetes pod's interface around a migration. The pod's network
//! namespace and its `eth0` belong to containerd's CRI and its CNI plugin;
//! MOSE only holds the pod's link down at the node's end while the address
//! lives elsewhere (the source after its dump, the destination until its
//! restore) and announces the address where it lives now. Held at the
//! node's end, the pod's `eth0` keeps its address and routes (CRIU's TCP
//! repair needs them to restore connections) but nothing reaches or leaves
//! the pod.
//!
//! The pod CNI plugin (`mose-pod-cni`) records each pod's node-side
//! interface under the node's network state directory, by the pod's sandbox
//! id (CNI's container id for a pod): [`PodLink`].

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    announce,
    error::{io, NetworkError, Result},
    link, netns,
};

/// The pod's interface, as the CRI names it (`CNI_IFNAME`).
pub const POD_IFNAME: &str = "eth0";
const LINK_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// A pod's link on this node: its node-side interface and its namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodLink {
    /// The node-side end of the pod's veth (in the node's namespace).
    pub host_ifname: String,
    /// The pod's network namespace.
    pub netns: PathBuf,
    /// The pod's address (`A.B.C.D/len`) as its CNI result gave it.
    #[serde(default)]
    pub address: String,
}

impl PodLink {
    /// Where the record of sandbox `sandbox_id` lives under `state_dir`.
    pub fn path(state_dir: &Path, sandbox_id: &str) -> PathBuf {
        state_dir.join("pods").join(format!("{sandbox_id}.json"))
    }

    /// Writes the record (the CNI plugin, at `ADD`).
    pub fn save(&self, state_dir: &Path, sandbox_id: &str) -> Result<()> {
        let path = Self::path(state_dir, sandbox_id);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        }
        let bytes = serde_json::to_vec(self)
            .map_err(|e| NetworkError::Invalid(format!("encoding a pod link record: {e}")))?;
        std::fs::write(&path, bytes).map_err(io(format!("writing {}", path.display())))
    }

    /// Reads the record of sandbox `sandbox_id`.
    pub fn load(state_dir: &Path, sandbox_id: &str) -> Result<PodLink> {
        let path = Self::path(state_dir, sandbox_id);
        let bytes = std::fs::read(&path).map_err(io(format!(
            "reading the pod's link record {} (was the pod attached by mose-pod-cni?)",
            path.display()
        )))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| NetworkError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Removes the record (the CNI plugin, at `DEL`; idempotent), and the
    /// moved-away mark.
    pub fn remove(state_dir: &Path, sandbox_id: &str) {
        let _ = std::fs::remove_file(Self::path(state_dir, sandbox_id));
        let _ = std::fs::remove_file(Self::moved_path(state_dir, sandbox_id));
    }

    fn moved_path(state_dir: &Path, sandbox_id: &str) -> PathBuf {
        state_dir.join("pods").join(format!("{sandbox_id}.moved"))
    }

    /// Marks the pod's address as moved to another node (the source agent,
    /// after the hand-over): its `DEL` here keeps the address reserved.
    pub fn mark_moved(state_dir: &Path, sandbox_id: &str) -> Result<()> {
        let p = Self::moved_path(state_dir, sandbox_id);
        std::fs::write(&p, b"").map_err(io(format!("writing {}", p.display())))
    }

    /// Whether [`Self::mark_moved`] marked the pod.
    pub fn moved(state_dir: &Path, sandbox_id: &str) -> bool {
        Self::moved_path(state_dir, sandbox_id).exists()
    }

    /// Takes the pod's link down at the node's end.
    pub fn hold_down(&self) -> Result<()> {
        link::set_up(&self.host_ifname, false)
    }

    /// Brings the link up at the node's end, waits until both ends pass
    /// traffic, forgets the pod's stale neighbours and announces its address
    /// (gratuitous ARP), so peers and the segment's bridges learn where it
    /// lives now. Returns the announced address.
    pub fn bring_up_and_announce(&self) -> Result<Ipv4Addr> {
        link::set_up(&self.host_ifname, true)?;
        link::wait_running(&self.host_ifname, LINK_UP_TIMEOUT)?;
        let (mac, ip) = netns::run_in(&self.netns, || {
            link::wait_running(POD_IFNAME, LINK_UP_TIMEOUT)?;
            link::flush_neighbours(POD_IFNAME)?;
            Ok((link::hw_addr(POD_IFNAME)?, link::ipv4(POD_IFNAME)?.0))
        })?;
        announce::gratuitous_arp(&self.netns, POD_IFNAME, mac, ip)?;
        Ok(ip)
    }
}

/// The pod's IPv4 address and prefix length (`A.B.C.D/len`).
pub fn address(ns: &Path) -> Result<String> {
    let (ip, len) = netns::run_in(ns, || link::ipv4(POD_IFNAME))?;
    Ok(format!("{ip}/{len}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_by_sandbox_id() {
        let dir = tempfile::tempdir().unwrap();
        let l = PodLink {
            host_ifname: "veth1234".into(),
            netns: "/var/run/netns/cni-x".into(),
            address: "10.89.0.161/24".into(),
        };
        l.save(dir.path(), "abc").unwrap();
        assert_eq!(PodLink::load(dir.path(), "abc").unwrap(), l);
        assert!(!PodLink::moved(dir.path(), "abc"));
        PodLink::mark_moved(dir.path(), "abc").unwrap();
        assert!(PodLink::moved(dir.path(), "abc"));
        PodLink::remove(dir.path(), "abc");
        assert!(!PodLink::moved(dir.path(), "abc"));
        let e = PodLink::load(dir.path(), "abc").unwrap_err().to_string();
        assert!(e.contains("mose-pod-cni"), "{e}");
    }
}
