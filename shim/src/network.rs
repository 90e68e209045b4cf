//! The container's service address (see `mose_network`): a container
//! annotated with `mose.io/network` and `mose.io/address` gets a network
//! namespace of its own attached through CNI at create (held down for a
//! restore until the restore is complete), joined by the runtime through
//! the spec's namespace path. The shim adds `mose-hook` to the spec's
//! `poststart` (announce the address) and `poststop` (release it) hooks.
//!
//! runc runs no poststart hook after a restore (crun runs none at all), so
//! after a restore the shim does the hook's work itself: bring the link up,
//! then announce. A failure there fails the restore (a migration then rolls
//! back), never passes silently.

use std::path::{Path, PathBuf};

use std::process::Command;
use std::time::Duration;

use mose_network::cni::{RunOutput, Runner};
use mose_network::{Attachment, NetworkError, NetworkIdentity, NodeConfig};
use oci_spec::runtime::LinuxNamespaceType;
use serde_json::json;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::oci::BundleSpec;

/// The OCI hook binary, found next to the shim's own executable or on the
/// shim's `PATH`.
pub const HOOK_BINARY: &str = "mose-hook";
/// Longest the hook may run (the OCI `timeout`, seconds).
const HOOK_TIMEOUT_S: u64 = 30;

/// Runs CNI plugins through the shim's reaper (the shim is a subreaper that
/// reaps every child: a plain wait would lose the plugin's exit status).
struct ReaperRunner;

impl Runner for ReaperRunner {
    async fn run(
        &self,
        cmd: Command,
        input: Vec<u8>,
        timeout: Duration,
    ) -> std::io::Result<RunOutput> {
        let what = format!("CNI plugin {}", cmd.get_program().to_string_lossy());
        let out = crate::reaper::run_with_input(cmd, input, timeout, &what)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(RunOutput {
            success: out.code == 0,
            status: match out.code {
                137 => format!("killed after {timeout:?} (exit 137)"),
                c => format!("exit status {c}"),
            },
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}

/// A container's service address on this node.
#[derive(Debug)]
pub struct ContainerNetwork {
    cfg: NodeConfig,
    pub identity: NetworkIdentity,
    pub attachment: Attachment,
}

fn net_err(e: NetworkError) -> Error {
    match e {
        NetworkError::AddressTaken { .. } => Error::AlreadyExists(e.to_string()),
        NetworkError::NoNetworkConfig { .. }
        | NetworkError::BadNetworkConfig { .. }
        | NetworkError::NoPlugin { .. } => Error::FailedPrecondition(e.to_string()),
        _ => Error::Internal(format!("service address: {e}")),
    }
}

/// The identity the spec's annotations give, if any (malformed or half
/// given: refused, naming the annotation).
pub fn identity(spec: &BundleSpec) -> Result<Option<NetworkIdentity>> {
    let Some(a) = spec.annotations() else {
        return Ok(None);
    };
    NetworkIdentity::from_annotations(a.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// containerd's CRI marks the containers of pods (sandbox and container).
const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

fn is_kubernetes_pod(spec: &BundleSpec) -> bool {
    spec.annotations()
        .as_ref()
        .is_some_and(|a| a.contains_key(CRI_CONTAINER_TYPE))
}

/// Attaches the container's namespace (held down when `restore`), points
/// the spec at it and adds the hooks. Nothing is left behind on a failure.
pub async fn prepare(
    spec: &mut BundleSpec,
    identity: NetworkIdentity,
    bundle: &Path,
    container_id: &str,
    restore: bool,
) -> Result<ContainerNetwork> {
    if is_kubernetes_pod(spec) {
        return Err(Error::InvalidArgument(format!(
            "{identity}: a Kubernetes pod's network belongs to the CRI (its pod IP, from the \
             pod network's CNI); remove the mose.io/network and mose.io/address annotations \
             from the pod and its containers"
        )));
    }
    if !crate::oci::creates_namespace(spec, LinuxNamespaceType::Network) {
        return Err(Error::InvalidArgument(format!(
            "{identity} needs the container in a network namespace of its own that MOSE \
             creates: the spec joins the host's or another namespace (drop --net-host or the \
             namespace path, or the mose.io/network and mose.io/address annotations)"
        )));
    }
    let hook = hook_binary()?;
    let cfg = NodeConfig::from_env();
    let owner = bundle.display().to_string();
    let started = std::time::Instant::now();
    let attachment = Attachment::attach(
        &cfg,
        &ReaperRunner,
        &identity,
        &owner,
        container_id,
        restore,
    )
    .await
    .map_err(net_err)?;
    let attach_ms = started.elapsed().as_secs_f64() * 1e3;
    info!(address = %identity, attach_ms, restore, "service address attached (CNI ADD)");
    let net = ContainerNetwork {
        cfg,
        identity,
        attachment,
    };
    if let Err(e) = net.edit_spec(spec, &hook) {
        net.release().await;
        return Err(e);
    }
    Ok(net)
}

impl ContainerNetwork {
    fn edit_spec(&self, spec: &mut BundleSpec, hook: &Path) -> Result<()> {
        let edit =
            |e: String| Error::InvalidArgument(format!("cannot attach the service address: {e}"));
        let netns = self.attachment.netns.display().to_string();
        spec.set_namespace_path("network", &netns).map_err(edit)?;
        let mut env = self.cfg.env();
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        for (kind, verb) in [("poststart", "announce"), ("poststop", "release")] {
            let entry = json!({
                "path": hook.display().to_string(),
                "args": [HOOK_BINARY, verb],
                "env": env,
                "timeout": HOOK_TIMEOUT_S,
            });
            spec.add_hook(kind, entry).map_err(edit)?;
        }
        Ok(())
    }

    /// Before a dump whose address moves: nothing reaches or leaves the
    /// container from here until [`Self::bring_up`] or its removal.
    pub fn hold_down(&mut self) -> Result<()> {
        self.attachment.hold_down(&self.cfg).map_err(net_err)?;
        info!(address = %self.identity, "service address held down for the dump");
        Ok(())
    }

    /// Brings a held link up and announces the address (after a restore,
    /// or when a migration rolled back and the container resumes).
    pub fn bring_up(&mut self) -> Result<()> {
        let started = std::time::Instant::now();
        if self.attachment.held_down {
            self.attachment.bring_up(&self.cfg).map_err(net_err)?;
        }
        let up_ms = started.elapsed().as_secs_f64() * 1e3;
        self.attachment.announce().map_err(net_err)?;
        let announce_ms = started.elapsed().as_secs_f64() * 1e3 - up_ms;
        info!(address = %self.identity, up_ms, announce_ms, "service address up and announced");
        Ok(())
    }

    /// Whether the link is held down.
    pub fn held_down(&self) -> bool {
        self.attachment.held_down
    }

    /// CNI `DEL`, namespace and record removed (idempotent).
    pub async fn release(&self) {
        let owner = &self.attachment.owner;
        if let Err(e) =
            Attachment::release_owned(&self.cfg, &ReaperRunner, &self.identity, owner).await
        {
            warn!(address = %self.identity, error = %e, "releasing the service address");
        }
    }
}

/// `mose-hook` next to the shim, else on `PATH`; refused when absent (the
/// address would never be announced nor released).
fn hook_binary() -> Result<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(HOOK_BINARY)))
        .filter(|p| crate::info::is_executable(p))
        .or_else(|| crate::info::look_path(HOOK_BINARY))
        .ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "{HOOK_BINARY} is not installed next to the shim nor on its PATH: a container \
                 with a service address needs it (scripts/setup.sh installs it)"
            ))
        })
}
