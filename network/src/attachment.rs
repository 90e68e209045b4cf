//! A container's attachment to its service network on this node, and its
//! record: `<state_dir>/<network>/<ip>.json` (created exclusively, so that
//! one address has one owner per node) next to the container's network
//! namespace `<state_dir>/<network>/<ip>.netns`.
//!
//! Life cycle (the shim drives it; `mose-hook` releases at poststop):
//! `attach` (namespace, CNI `ADD` with the address and its MAC, optionally
//! held down) → `hold_down` / `bring_up` + `announce` around a migration →
//! `release` (CNI `DEL`, namespace and record removed; idempotent).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tracing::{info, warn};

use crate::cni::{self, Invocation, Runner};
use crate::config::NodeConfig;
use crate::error::{io, NetworkError, Result};
use crate::{announce, link, netns, NetworkIdentity};

/// The container's interface in its namespace.
pub const IFNAME: &str = "eth0";
/// Longest wait for a link brought up to become operational.
const LINK_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// A container's attachment, as recorded on the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Attachment {
    /// The owner: the container's bundle directory (unique on a node).
    pub owner: String,
    /// The CNI container id the plugins were called with.
    pub container_id: String,
    pub network: String,
    /// `A.B.C.D/len`.
    pub address: String,
    pub mac: String,
    /// The container's network namespace (a bound file).
    pub netns: PathBuf,
    /// The node-side end of the container's link.
    pub host_ifname: String,
    /// The link is held down (a migration is under way).
    pub held_down: bool,
    /// The CNI `ADD` result, handed to `DEL` as `prevResult`.
    pub cni_result: Value,
}

fn record_path(cfg: &NodeConfig, id: &NetworkIdentity) -> PathBuf {
    cfg.state_dir
        .join(&id.network)
        .join(format!("{}.json", id.address.ip))
}

fn netns_path(cfg: &NodeConfig, id: &NetworkIdentity) -> PathBuf {
    cfg.state_dir
        .join(&id.network)
        .join(format!("{}.netns", id.address.ip))
}

impl Attachment {
    /// The record of `id`'s address on this node, if any.
    pub fn load(cfg: &NodeConfig, id: &NetworkIdentity) -> Result<Option<Attachment>> {
        let path = record_path(cfg, id);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                NetworkError::Invalid(format!(
                    "attachment record {} is corrupt ({e}): remove it and the container holding \
                     the address",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(format!("reading {}", path.display()))(e)),
        }
    }

    /// Refuses when another owner holds `id`'s address on this node (a
    /// record whose namespace is gone is stale and does not count).
    pub fn check_free(cfg: &NodeConfig, id: &NetworkIdentity, owner: &str) -> Result<()> {
        match Self::load(cfg, id)? {
            // a bare reservation (no namespace yet) is an attach under way
            Some(a)
                if a.owner != owner
                    && (a.netns.as_os_str().is_empty() || netns::is_bound(&a.netns)) =>
            {
                Err(NetworkError::AddressTaken {
                    network: id.network.clone(),
                    address: id.address.to_string(),
                    owner: a.owner,
                    netns: a.netns.display().to_string(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Gives the container `owner` its namespace on `id`'s network with the
    /// address and its MAC; the node-side end stays down when `hold_down`
    /// (a restore: the container's sockets are not there yet). Any failure
    /// undoes what was done.
    pub async fn attach(
        cfg: &NodeConfig,
        runner: &impl Runner,
        id: &NetworkIdentity,
        owner: &str,
        container_id: &str,
        hold_down: bool,
    ) -> Result<Attachment> {
        let list = cni::load(cfg, &id.network)?;
        Self::check_free(cfg, id, owner)?;
        // a stale record of this address (its holder died uncleanly)
        Self::discard(cfg, runner, id).await;
        reserve(cfg, id, owner)?;
        let ns = netns_path(cfg, id);
        if let Err(e) = netns::create(&ns) {
            let _ = std::fs::remove_file(record_path(cfg, id));
            return Err(e);
        }
        let inv = invocation(container_id, &ns, id);
        let added = match cni::add(cfg, runner, &list, &inv).await {
            Ok(r) => r,
            Err(e) => {
                let _ = netns::remove(&ns);
                let _ = std::fs::remove_file(record_path(cfg, id));
                return Err(e);
            }
        };
        let mut a = Attachment {
            owner: owner.into(),
            container_id: container_id.into(),
            network: id.network.clone(),
            address: id.address.to_string(),
            mac: id.address.mac_string(),
            netns: ns,
            host_ifname: added.host_interface(IFNAME).unwrap_or_default().into(),
            held_down: false,
            cni_result: added.raw,
        };
        let done = async {
            if a.host_ifname.is_empty() {
                return Err(NetworkError::Invalid(format!(
                    "CNI network {} attached {IFNAME} without a node-side interface MOSE can \
                     hold down (use the bridge plugin)",
                    id.network
                )));
            }
            if hold_down {
                a.hold_down(cfg)?;
            }
            loopback_up(&a.netns)?;
            a.save(cfg)
        };
        if let Err(e) = done.await {
            a.release(cfg, runner).await;
            return Err(e);
        }
        info!(address = %a.address, network = %a.network, host_ifname = %a.host_ifname, held_down = hold_down, "service address attached");
        Ok(a)
    }

    /// Takes the link down at the node's end: nothing reaches or leaves the
    /// container from now on.
    pub fn hold_down(&mut self, cfg: &NodeConfig) -> Result<()> {
        link::set_up(&self.host_ifname, false)?;
        self.held_down = true;
        self.save(cfg)
    }

    /// Brings the link up again at the node's end and waits until both ends
    /// pass traffic (see [`Self::announce`]).
    pub fn bring_up(&mut self, cfg: &NodeConfig) -> Result<()> {
        link::set_up(&self.host_ifname, true)?;
        self.held_down = false;
        self.save(cfg)?;
        // the kernel marks a link operational (and a bridge forwards on its
        // port) only after its link-watch work has run: frames sent before
        // are dropped, an announcement among them
        link::wait_running(&self.host_ifname, LINK_UP_TIMEOUT)?;
        netns::run_in(&self.netns, || {
            link::wait_running(IFNAME, LINK_UP_TIMEOUT)?;
            link::flush_neighbours(IFNAME)
        })
    }

    /// Announces the address from inside the container's namespace.
    pub fn announce(&self) -> Result<()> {
        let id = self.identity()?;
        announce::gratuitous_arp(&self.netns, IFNAME, id.address.mac(), id.address.ip)
    }

    fn identity(&self) -> Result<NetworkIdentity> {
        let address = mose_contract::ServiceAddress::parse(&self.address)
            .map_err(|e| NetworkError::Invalid(format!("attachment record address: {e}")))?;
        Ok(NetworkIdentity {
            network: self.network.clone(),
            address,
        })
    }

    /// Detaches and forgets: CNI `DEL`, the namespace unbound, the record
    /// removed. Failures are logged; what can be removed is.
    pub async fn release(&self, cfg: &NodeConfig, runner: &impl Runner) {
        if let Ok(id) = self.identity() {
            if let Ok(list) = cni::load(cfg, &id.network) {
                let inv = invocation(&self.container_id, &self.netns, &id);
                if let Err(e) = cni::del(cfg, runner, &list, &inv, Some(&self.cni_result)).await {
                    warn!(address = %self.address, error = %e, "CNI DEL failed");
                }
            }
            let _ = std::fs::remove_file(record_path(cfg, &id));
        }
        if let Err(e) = netns::remove(&self.netns) {
            warn!(netns = %self.netns.display(), error = %e, "removing the network namespace failed");
        }
        info!(address = %self.address, network = %self.network, "service address released");
    }

    /// Releases `id`'s address if `owner` holds it (a no-op otherwise).
    pub async fn release_owned(
        cfg: &NodeConfig,
        runner: &impl Runner,
        id: &NetworkIdentity,
        owner: &str,
    ) -> Result<()> {
        if let Some(a) = Self::load(cfg, id)? {
            if a.owner == owner {
                a.release(cfg, runner).await;
            }
        }
        Ok(())
    }

    /// Releases a stale record of `id`'s address (its holder is gone).
    async fn discard(cfg: &NodeConfig, runner: &impl Runner, id: &NetworkIdentity) {
        if let Ok(Some(a)) = Self::load(cfg, id) {
            warn!(address = %a.address, owner = %a.owner, "releasing a stale attachment");
            a.release(cfg, runner).await;
        }
        let _ = netns::remove(&netns_path(cfg, id));
    }

    fn save(&self, cfg: &NodeConfig) -> Result<()> {
        let id = self.identity()?;
        let path = record_path(cfg, &id);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| NetworkError::Invalid(format!("encoding the attachment record: {e}")))?;
        std::fs::write(&tmp, bytes).map_err(io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io(format!("writing {}", path.display())))
    }
}

/// Creates `id`'s record exclusively, naming `owner`: of two containers
/// attaching one address at once, one fails here.
fn reserve(cfg: &NodeConfig, id: &NetworkIdentity, owner: &str) -> Result<()> {
    let path = record_path(cfg, id);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(NetworkError::AddressTaken {
                network: id.network.clone(),
                address: id.address.to_string(),
                owner: "being attached at this moment".into(),
                netns: netns_path(cfg, id).display().to_string(),
            })
        }
        Err(e) => return Err(io(format!("creating {}", path.display()))(e)),
    };
    std::io::Write::write_all(&mut f, json!({ "owner": owner }).to_string().as_bytes())
        .map_err(io(format!("writing {}", path.display())))
}

fn invocation(container_id: &str, ns: &Path, id: &NetworkIdentity) -> Invocation {
    let mut rc = Map::new();
    rc.insert("ips".into(), json!([id.address.to_string()]));
    rc.insert("mac".into(), json!(id.address.mac_string()));
    Invocation {
        container_id: container_id.into(),
        netns: ns.to_path_buf(),
        ifname: IFNAME.into(),
        runtime_config: rc,
    }
}

/// Brings the namespace's loopback up (runc does for namespaces it creates;
/// this one it is handed).
fn loopback_up(ns: &Path) -> Result<()> {
    netns::run_in(ns, || link::set_up("lo", true))
}
