//! Recreating the container in this node's containerd (same spec, labels,
//! image; runtime `io.containerd.mose.v2`) and restoring it through the MOSE
//! shim from the assembled image; and importing a container image that
//! arrived with a migration.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use containerd_client::services::v1::Container;
use mose_contract::RuntimeOptions;
use mose_wire::ContainerIdentity;
use prost_types::Any;

use super::config::EndpointConfig;
use crate::pods::handoff::Target;
use crate::{
    containerd::{runtime, Containerd, SPEC_TYPE_URL},
    error::{InPhase, MigrateError, Phase, Result},
    rootfs,
};

/// The first component MOSE puts in a migrated container's cgroups path,
/// followed by the node's name.
const NODE_CGROUP_PREFIX: &str = "mose-node-";

/// The container's spec as this node runs it: its cgroup must not collide
/// with the (frozen) source's when both nodes share a host, so it goes under
/// `/mose-node-<node>`, in place of the component an earlier hop added (a
/// container migrated back and forth keeps one: nested, `/proc/self/cgroup`
/// outgrew CRIU's page-sized buffer after 48 hops and the dump failed).
pub fn destination_spec(cfg: &EndpointConfig, container: &ContainerIdentity) -> serde_json::Value {
    let mut spec = container.spec.clone();
    if let Some(cg) = spec.pointer_mut("/linux/cgroupsPath") {
        if let Some(p) = cg.as_str() {
            *cg = serde_json::Value::String(node_cgroups_path(&cfg.identity.node, p));
        }
    }
    spec
}

/// `path` under `/mose-node-<node>`, without the one an earlier hop added.
fn node_cgroups_path(node: &str, path: &str) -> String {
    let rel = path.trim_start_matches('/');
    let rel = match rel.split_once('/') {
        Some((first, rest)) if first.starts_with(NODE_CGROUP_PREFIX) => rest,
        _ => rel,
    };
    format!("/{NODE_CGROUP_PREFIX}{node}/{rel}")
}

/// How long a restore's containerd lease protects its snapshot if this
/// process dies before ending it.
const LEASE_EXPIRY: std::time::Duration = std::time::Duration::from_secs(3600);

/// The destination's own timeline: (step, milliseconds), in order.
pub type Steps = Vec<(String, f64)>;

/// How long the shim of a pod's container may take to restore it once it
/// has the images.
const HANDOFF_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Where an incoming migration is restored.
pub enum RestoreTarget {
    /// A container created here from the source's identity.
    New,
    /// A pod's container the CRI created here (`id`), restored by its own
    /// shim from the images handed over (see [`crate::pods`]).
    Pod { id: String, target: Option<Target> },
}

impl RestoreTarget {
    pub fn of(into: Option<Target>) -> Self {
        match into {
            None => RestoreTarget::New,
            Some(t) => RestoreTarget::Pod {
                id: t.container_id.clone(),
                target: Some(t),
            },
        }
    }

    /// Restores from `images` (lazily through `lazy_socket`); returns the
    /// restored init's pid.
    #[allow(clippy::too_many_arguments)]
    pub async fn restore(
        &mut self,
        cfg: &EndpointConfig,
        cd: &Containerd,
        container: &ContainerIdentity,
        images: &Path,
        rootfs_tar: Option<PathBuf>,
        lazy_socket: Option<&Path>,
        steps: &mut Steps,
    ) -> Result<u32> {
        let (id, target) = match self {
            RestoreTarget::New => {
                return recreate(cfg, cd, container, images, rootfs_tar, lazy_socket, steps).await
            }
            RestoreTarget::Pod { id, target } => (id.clone(), target.take()),
        };
        let target = target.ok_or_else(|| {
            MigrateError::local(Phase::Restore, "the pod container was handed over already")
        })?;
        let t = Instant::now();
        if let Some(tar) = rootfs_tar {
            unpack_into(cd, &id, &tar).await?;
        }
        steps.push(("rootfs".into(), t.elapsed().as_secs_f64() * 1000.0));
        let t = Instant::now();
        let pid = target
            .hand_off(
                images.to_path_buf(),
                lazy_socket.map(Path::to_path_buf),
                HANDOFF_TIMEOUT,
            )
            .await
            .map_err(|e| MigrateError::local(Phase::Restore, e))?;
        steps.push(("shim restore".into(), t.elapsed().as_secs_f64() * 1000.0));
        Ok(pid)
    }

    /// After a failure: the restored copy must not run on (a pod's
    /// container stays, stopped, for the CRI to report; a created one goes).
    pub async fn discard(&self, cd: &Containerd, container: &ContainerIdentity) {
        match self {
            RestoreTarget::New => {
                let _ = cd.remove_container(&container.id).await;
            }
            RestoreTarget::Pod { id, .. } => {
                if cd.task_pid(id).await.is_ok() {
                    let _ = cd.kill(id, 9).await;
                }
                // its shim may have brought the pod's link up already: the
                // address belongs to the source again
                let sandbox = match cd.container(id).await {
                    Ok(c) => crate::containerd::spec_of(&c).ok().and_then(|s| {
                        s["annotations"][crate::pods::ANNOTATION_SANDBOX_ID]
                            .as_str()
                            .map(String::from)
                    }),
                    Err(_) => None,
                };
                if let Some(sb) = sandbox {
                    let state = mose_network::NodeConfig::from_env().state_dir;
                    let held =
                        mose_network::pod::PodLink::load(&state, &sb).and_then(|l| l.hold_down());
                    if let Err(e) = held {
                        tracing::warn!(sandbox = %sb, error = %e, "the failed pod's link could not be held down");
                    }
                }
            }
        }
    }

    /// The cgroup the restored processes run in.
    pub async fn cgroup(
        &self,
        cfg: &EndpointConfig,
        cd: &Containerd,
        container: &ContainerIdentity,
    ) -> Option<String> {
        let spec = match self {
            RestoreTarget::New => destination_spec(cfg, container),
            RestoreTarget::Pod { id, .. } => {
                crate::containerd::spec_of(&cd.container(id).await.ok()?).ok()?
            }
        };
        spec.pointer("/linux/cgroupsPath")
            .and_then(|v| v.as_str())
            .map(String::from)
    }
}

/// Unpacks the source's rootfs changes into the upper directory of the
/// CRI container `id`'s snapshot (before its shim mounts it).
async fn unpack_into(cd: &Containerd, id: &str, tar: &Path) -> Result<()> {
    let c = cd
        .container(id)
        .await
        .in_phase(Phase::Restore, "looking up the pod's container")?;
    let mounts = cd
        .snapshot_mounts(&c.snapshotter, &c.snapshot_key)
        .await
        .in_phase(Phase::Restore, "reading the pod container's snapshot")?;
    unpack_changes(&mounts, tar)
}

/// Unpacks the rootfs changes in `tar` into the upper dir of `mounts`.
fn unpack_changes(mounts: &[containerd_client::types::Mount], tar: &Path) -> Result<()> {
    let data = std::fs::read(tar).in_phase(Phase::Restore, "reading the rootfs changes")?;
    let upper = rootfs::upperdir(mounts).in_phase(Phase::Restore, "finding the upper dir")?;
    rootfs::unpack(&data, &upper).in_phase(Phase::Restore, "unpacking the rootfs changes")
}

/// Recreates the container from the received identity and rootfs, and
/// restores it through the MOSE shim from `images` (lazily when a lazy-page
/// handler listens on `lazy_socket`). Returns the restored init's pid.
pub async fn recreate(
    cfg: &EndpointConfig,
    cd: &Containerd,
    container: &ContainerIdentity,
    images: &Path,
    rootfs_tar: Option<PathBuf>,
    lazy_socket: Option<&Path>,
    steps: &mut Steps,
) -> Result<u32> {
    let mut t = Instant::now();
    let mut step = |name: &str, steps: &mut Steps| {
        steps.push((name.to_string(), t.elapsed().as_secs_f64() * 1000.0));
        t = Instant::now();
    };
    let snapshotter = match container.snapshotter.as_str() {
        "" => "overlayfs",
        s => s,
    };
    // the snapshot is held by a lease until the container references it
    let leased = cd
        .leased(&format!("mose-restore-{}", container.id), LEASE_EXPIRY)
        .await
        .in_phase(Phase::Restore, "taking a containerd lease for the rootfs")?;
    let prepared = prepare_rootfs(&leased, container, snapshotter, rootfs_tar).await;
    let mounts = match prepared {
        Ok(m) => m,
        Err(e) => {
            leased.release().await;
            return Err(e);
        }
    };
    step("snapshot+rootfs", steps);
    let c = Container {
        id: container.id.clone(),
        labels: container.labels.clone().into_iter().collect(),
        image: container.image.clone(),
        runtime: Some(runtime(mose_contract::RUNTIME_TYPE, None)),
        spec: Some(Any {
            type_url: SPEC_TYPE_URL.into(),
            value: serde_json::to_vec(&destination_spec(cfg, container))
                .in_phase(Phase::Restore, "encoding the spec")?,
        }),
        snapshotter: snapshotter.into(),
        snapshot_key: container.id.clone(),
        ..Default::default()
    };
    let created = leased.create_container(c).await;
    leased.release().await;
    if let Err(e) = created {
        let _ = cd.remove_snapshot(snapshotter, &container.id).await;
        return Err(e).in_phase(Phase::Restore, "creating the container");
    }
    step("create container", steps);
    let opts = restore_options(images, lazy_socket)?;
    cd.create_task(&container.id, mounts, Some(opts))
        .await
        .in_phase(Phase::Restore, "creating the task")?;
    step("create task", steps);
    let pid = cd
        .start(&container.id)
        .await
        .in_phase(Phase::Restore, "restoring the task (CRIU)")?;
    step("CRIU restore", steps);
    Ok(pid)
}

/// A snapshot of the image with the source's rootfs changes unpacked in.
async fn prepare_rootfs(
    cd: &Containerd,
    container: &ContainerIdentity,
    snapshotter: &str,
    rootfs_tar: Option<PathBuf>,
) -> Result<Vec<containerd_client::types::Mount>> {
    let parent = cd
        .image_chain_id(&container.image)
        .await
        .in_phase(Phase::Restore, "resolving the image")?;
    let mounts = cd
        .prepare_snapshot(snapshotter, &container.id, &parent)
        .await
        .in_phase(Phase::Restore, "preparing the snapshot")?;
    if let Some(tar) = rootfs_tar {
        unpack_changes(&mounts, &tar)?;
    }
    Ok(mounts)
}

/// `mose.v1.Options` for the shim: restore from `images`, lazily through
/// `lazy_socket` when given.
fn restore_options(images: &Path, lazy_socket: Option<&Path>) -> Result<Any> {
    let o = RuntimeOptions {
        restore_image: images.display().to_string(),
        lazy_pages_socket: lazy_socket
            .map(|s| s.display().to_string())
            .unwrap_or_default(),
        ..Default::default()
    };
    Ok(Any {
        type_url: mose_contract::OPTIONS_TYPE.into(),
        value: serde_json::to_vec(&o).in_phase(Phase::Restore, "encoding the options")?,
    })
}

/// Imports a container image tar (`ctr images import`) into `namespace`.
pub async fn import_image(
    containerd: &Path,
    container: &ContainerIdentity,
    tar: &Path,
) -> Result<()> {
    let o = tokio::process::Command::new("ctr")
        .arg("-a")
        .arg(containerd)
        .args(["-n", &container.namespace, "images", "import"])
        .arg(tar)
        .output()
        .await
        .in_phase(
            Phase::Image,
            "running ctr images import (is ctr installed?)",
        )?;
    if !o.status.success() {
        return Err(MigrateError::local(
            Phase::Image,
            format!(
                "importing image {}: {}",
                container.image,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::node_cgroups_path;

    #[test]
    fn a_container_migrated_back_and_forth_keeps_one_node_component() {
        let mut p = "/soak/state".to_string();
        for hop in 0..50 {
            p = node_cgroups_path(if hop % 2 == 0 { "n2" } else { "n1" }, &p);
        }
        assert_eq!(p, "/mose-node-n1/soak/state");
        assert_eq!(node_cgroups_path("n1", "k8s/c1"), "/mose-node-n1/k8s/c1");
        // a path of the user's own that merely looks alike keeps its parts
        assert_eq!(
            node_cgroups_path("n1", "/mose-n2/x"),
            "/mose-node-n1/mose-n2/x"
        );
    }
}
