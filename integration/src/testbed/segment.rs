//! The testbed's service segment: one L2 network for containers' service
//! addresses spanning every node, as between real edge hosts.
//!
//! In each node's netns a bridge [`SERVICE_BRIDGE`] carries the containers'
//! links (made by CNI's bridge plugin from the node's `svc.conflist`) and a
//! VXLAN device [`VXLAN_DEV`] over the node link (`eth0`), with head-end
//! replication to every other endpoint, so the segment crosses the
//! (shaped) node links. A "user" netns joins the segment directly on its
//! own VXLAN device with [`USER_ADDRESS`]: the clients of the services.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::net::run_ok;

/// The CNI network name of the segment (`mose.io/network=svc`).
pub const SERVICE_NETWORK: &str = "svc";
/// The segment's subnet; containers take addresses from `.2` to `.249`.
pub const SERVICE_SUBNET: &str = "10.89.0.0/24";
/// The user netns's address on the segment.
pub const USER_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 254);
/// The bridge in each node's netns.
pub const SERVICE_BRIDGE: &str = "mose-svc0";
/// The VXLAN device in each node's (and the user's) netns.
pub const VXLAN_DEV: &str = "vxsvc";
/// VXLAN network identifier and UDP port (IANA's 4789).
const VNI: &str = "4242";
const VXLAN_PORT: &str = "4789";
/// 1500 on the node links minus VXLAN's 50 bytes of encapsulation.
pub const SEGMENT_MTU: u32 = 1450;

/// A container address on the segment: `10.89.0.<host>/24`.
pub fn service_address(host: u8) -> String {
    format!("10.89.0.{host}/24")
}

/// The node's CNI configuration directory (`MOSE_CNI_CONF_DIR`).
pub fn conf_dir(node_dir: &Path) -> PathBuf {
    node_dir.join("cni")
}

/// The node's attachment records (`MOSE_NETWORK_STATE_DIR`).
pub fn state_dir(node_dir: &Path) -> PathBuf {
    node_dir.join("network")
}

/// The environment that points a node's containerd (so its shims) and
/// agent at the node's CNI configuration and records.
pub fn node_env(node_dir: &Path) -> Vec<(String, String)> {
    vec![
        (
            "MOSE_CNI_CONF_DIR".into(),
            conf_dir(node_dir).display().to_string(),
        ),
        (
            "MOSE_NETWORK_STATE_DIR".into(),
            state_dir(node_dir).display().to_string(),
        ),
        (
            mose_contract::pod::AGENT_SOCKET_ENV.into(),
            agent_socket(node_dir).display().to_string(),
        ),
    ]
}

/// The node agent's pod hand-over socket (`mose-plugin --pods-socket`).
pub fn agent_socket(node_dir: &Path) -> PathBuf {
    node_dir.join("pods.sock")
}

/// The CRI's CNI plugin directory of a node: Debian's plugins and MOSE's
/// `mose-pod-cni` side by side (containerd's CRI takes one directory).
pub fn pod_cni_bin_dir(node_dir: &Path) -> PathBuf {
    node_dir.join("cni-bin")
}

/// Fills [`pod_cni_bin_dir`] with links to the plugins of `system` (e.g.
/// `/usr/lib/cni`) and to `mose-pod-cni` from `mose_bin`.
pub fn link_pod_cni_plugins(node_dir: &Path, system: &Path, mose_bin: &Path) -> Result<()> {
    let dir = pod_cni_bin_dir(node_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ours = mose_bin.join(POD_CNI_PLUGIN);
    anyhow::ensure!(
        ours.is_file(),
        "{} is missing: run `cargo build --workspace --bins`",
        ours.display()
    );
    let entries = std::fs::read_dir(system)
        .with_context(|| format!("listing the CNI plugins in {}", system.display()))?;
    for target in entries
        .flatten()
        .map(|e| e.path())
        .chain(std::iter::once(ours))
    {
        let Some(name) = target.file_name() else {
            continue;
        };
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("linking {} to {}", link.display(), target.display()))?;
    }
    Ok(())
}

/// MOSE's CNI plugin of the pod network (see `mose_network`'s `mose-pod-cni`).
pub const POD_CNI_PLUGIN: &str = "mose-pod-cni";

/// The segment's CNI network configuration list: the one set-up installs
/// (`config/cni/svc.conflist`: CNI's bridge plugin on [`SERVICE_BRIDGE`]
/// with static addresses and MACs from the runtime).
pub const CONFLIST: &str = include_str!("../../../config/cni/svc.conflist");

/// The CNI network of the node's Kubernetes pods (containerd's CRI).
pub const POD_NETWORK: &str = "mose-pods";
/// Pods per node: node `i` (1-based, up to [`POD_NODES`]) gives its pods
/// the segment's addresses `.160 + 8 (i - 1)` to `+ 7`.
pub const PODS_PER_NODE: u8 = 8;
/// Nodes whose CRI has pod addresses (the rest of the /24 is the services').
pub const POD_NODES: usize = 11;

/// The CRI's CNI configuration directory of a node.
pub fn pod_conf_dir(node_dir: &Path) -> PathBuf {
    node_dir.join("cri-net.d")
}

/// The pod address range of node `index` (first, last), `None` past
/// [`POD_NODES`].
pub fn pod_range(index: usize) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if index == 0 || index > POD_NODES {
        return None;
    }
    let first = 160 + PODS_PER_NODE * (index as u8 - 1);
    Some((
        Ipv4Addr::new(10, 89, 0, first),
        Ipv4Addr::new(10, 89, 0, first + PODS_PER_NODE - 1),
    ))
}

/// The pods' CNI network of node `index`: MOSE's `mose-pod-cni` (which
/// gives a pod continuing another node's pod that pod's address) over CNI's
/// bridge plugin on the segment's bridge, host-local addresses from
/// [`pod_range`] (kept in the node's directory), so pod IPs are reachable
/// from every node and the user netns.
pub fn pod_conflist(index: usize, node_dir: &Path) -> Option<String> {
    let (first, last) = pod_range(index)?;
    let v = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": POD_NETWORK,
        "plugins": [{
            "type": POD_CNI_PLUGIN,
            "capabilities": {"io.kubernetes.cri.pod-annotations": true},
            "agentSocket": agent_socket(node_dir).display().to_string(),
            "stateDir": state_dir(node_dir).display().to_string(),
            "delegate": {
                "type": "bridge",
                "bridge": SERVICE_BRIDGE,
                "mtu": SEGMENT_MTU,
                "isGateway": false,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": SERVICE_SUBNET, "rangeStart": first.to_string(),
                                 "rangeEnd": last.to_string()}]],
                    "dataDir": node_dir.join("cri-ipam").display().to_string(),
                },
            },
        }],
    });
    Some(v.to_string())
}

/// Creates the bridge and VXLAN device in node netns `ns` (underlay address
/// `local`) and writes the node's CNI configurations (MOSE's service
/// network and, for node `index` ≤ [`POD_NODES`], the CRI's pod network).
pub fn create_node(ns: &str, index: usize, local: Ipv4Addr, node_dir: &Path) -> Result<()> {
    let dir = conf_dir(node_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join(format!("{SERVICE_NETWORK}.conflist"));
    std::fs::write(&file, CONFLIST).with_context(|| format!("writing {}", file.display()))?;
    let pods = pod_conf_dir(node_dir);
    std::fs::create_dir_all(&pods).with_context(|| format!("creating {}", pods.display()))?;
    if let Some(conf) = pod_conflist(index, node_dir) {
        let file = pods.join(format!("10-{POD_NETWORK}.conflist"));
        std::fs::write(&file, conf).with_context(|| format!("writing {}", file.display()))?;
    }
    let ip = |args: &[&str]| {
        let mut all = vec!["-n", ns];
        all.extend_from_slice(args);
        run_ok("ip", &all).with_context(|| format!("ip {} in {ns}", args.join(" ")))
    };
    ip(&["link", "add", SERVICE_BRIDGE, "type", "bridge"])?;
    vxlan(ns, local)?;
    let mtu = SEGMENT_MTU.to_string();
    ip(&[
        "link",
        "set",
        VXLAN_DEV,
        "master",
        SERVICE_BRIDGE,
        "mtu",
        &mtu,
        "up",
    ])?;
    ip(&["link", "set", SERVICE_BRIDGE, "mtu", &mtu, "up"])?;
    Ok(())
}

/// Creates the user netns's VXLAN device with [`USER_ADDRESS`].
pub fn create_user(ns: &str, local: Ipv4Addr) -> Result<()> {
    vxlan(ns, local)?;
    let addr = format!("{USER_ADDRESS}/24");
    run_ok("ip", &["-n", ns, "addr", "add", &addr, "dev", VXLAN_DEV])?;
    run_ok(
        "ip",
        &[
            "-n",
            ns,
            "link",
            "set",
            VXLAN_DEV,
            "mtu",
            &SEGMENT_MTU.to_string(),
            "up",
        ],
    )?;
    Ok(())
}

fn vxlan(ns: &str, local: Ipv4Addr) -> Result<()> {
    run_ok(
        "ip",
        &[
            "-n",
            ns,
            "link",
            "add",
            VXLAN_DEV,
            "type",
            "vxlan",
            "id",
            VNI,
            "local",
            &local.to_string(),
            "dstport",
            VXLAN_PORT,
            "dev",
            "eth0",
        ],
    )
    .with_context(|| format!("creating VXLAN device {VXLAN_DEV} in {ns} (kernel vxlan module?)"))?;
    Ok(())
}

/// Head-end replication: broadcast and unknown unicast from the endpoint in
/// netns `ns` go to each of `peers` (underlay addresses).
pub fn flood_to(ns: &str, peers: &[Ipv4Addr]) -> Result<()> {
    for p in peers {
        run_ok(
            "bridge",
            &[
                "-n",
                ns,
                "fdb",
                "append",
                "00:00:00:00:00:00",
                "dev",
                VXLAN_DEV,
                "dst",
                &p.to_string(),
            ],
        )
        .with_context(|| format!("flooding {VXLAN_DEV} in {ns} to {p}"))?;
    }
    Ok(())
}

/// Where the VXLAN device of netns `ns` sends frames for `mac`: the
/// underlay address of the endpoint it learnt the MAC at, if any.
pub fn learnt_location(ns: &str, mac: &str) -> Result<Option<Ipv4Addr>> {
    let out = run_ok("bridge", &["-n", ns, "fdb", "show", "dev", VXLAN_DEV])?;
    Ok(out.lines().filter(|l| l.starts_with(mac)).find_map(|l| {
        let mut w = l.split_whitespace();
        w.find(|x| *x == "dst").and_then(|_| w.next())?.parse().ok()
    }))
}

/// The node-local bridge ports (veths) on which node netns `ns`'s service
/// bridge has learnt `mac`: non-empty while a container there owns the
/// address (entries learnt over the VXLAN are remote, not listed).
pub fn local_ports(ns: &str, mac: &str) -> Result<Vec<String>> {
    let out = run_ok("bridge", &["-n", ns, "fdb", "show", "br", SERVICE_BRIDGE])?;
    Ok(out
        .lines()
        .filter(|l| l.starts_with(mac) && !l.contains(" permanent"))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|x| *x == "dev").and_then(|_| w.next())
        })
        .filter(|dev| *dev != VXLAN_DEV)
        .map(String::from)
        .collect())
}

/// The neighbour (ARP) entry of `ip` in netns `ns` (`ip neigh show`).
pub fn neighbour(ns: &str, ip: &str) -> Result<String> {
    run_ok("ip", &["-n", ns, "neigh", "show", ip])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ranges_are_disjoint_and_off_the_user_address() {
        assert_eq!(pod_range(0), None);
        let (a, b) = pod_range(1).unwrap();
        assert_eq!((a.octets()[3], b.octets()[3]), (160, 167));
        let (_, last) = pod_range(POD_NODES).unwrap();
        assert!(last < USER_ADDRESS, "{last}");
        assert_eq!(pod_range(POD_NODES + 1), None);
        let v: serde_json::Value =
            serde_json::from_str(&pod_conflist(2, Path::new("/x")).unwrap()).unwrap();
        assert_eq!(
            v["plugins"][0]["delegate"]["ipam"]["ranges"][0][0]["rangeStart"],
            "10.89.0.168"
        );
    }

    #[test]
    fn the_installed_conflist_is_the_segment() {
        let v: serde_json::Value = serde_json::from_str(CONFLIST).unwrap();
        assert_eq!(v["name"], SERVICE_NETWORK);
        assert_eq!(v["plugins"][0]["bridge"], SERVICE_BRIDGE);
        assert_eq!(v["plugins"][0]["mtu"], SEGMENT_MTU);
    }
}
