//! The source agent's side of a pod hand-over: find the running pod by its
//! Kubernetes namespace and name in containerd's CRI namespace, tell its
//! address, and migrate one of its containers to the node that asked. Once
//! the destination owns a container, the source stops it through the CRI;
//! once none of the pod's containers runs here, the pod itself (its network
//! and address go with it).

use std::path::PathBuf;

use containerd_client::services::v1::Container;
use mose_wire::Technique;
use tracing::{info, warn};

use super::{
    cri::Cri,
    freeze_group,
    plan::{PodPlan, PodPlanQuery},
    PullKey, ANNOTATION_CONTAINER_NAME, ANNOTATION_POD_NAME, ANNOTATION_POD_NAMESPACE,
    ANNOTATION_SANDBOX_ID, CRI_NAMESPACE, LABEL_KIND,
};
use crate::{
    containerd::{spec_of, Containerd},
    receiver::EndpointConfig,
    record::append_record,
    result::PlanRecord,
    sender::{self, SourceOptions},
};

/// Pre-copy rounds a pulled container gets at most.
const PULL_MAX_ROUNDS: u32 = 4;
/// Pre-copy stops once a round moves less than this.
const PULL_MIN_ROUND_BYTES: u64 = 1 << 20;

/// A running pod on this node.
pub struct SourcePod {
    pub sandbox: Container,
    /// Its containers (not the sandbox), oldest first.
    pub containers: Vec<Container>,
}

impl SourcePod {
    /// Finds the running pod `namespace/pod`; the error says why not.
    pub async fn find(cd: &Containerd, namespace: &str, pod: &str) -> Result<Self, String> {
        let look = |e: crate::containerd::ContainerdError| {
            format!("looking up pod {namespace}/{pod}: {e}")
        };
        let sandboxes = cd
            .list(&format!("labels.\"{LABEL_KIND}\"==sandbox"))
            .await
            .map_err(look)?;
        let mut sandbox = None;
        for c in sandboxes {
            let a = annotations(&c);
            if a[ANNOTATION_POD_NAMESPACE] == namespace
                && a[ANNOTATION_POD_NAME] == pod
                && cd.task_pid(&c.id).await.is_ok()
            {
                sandbox = Some(c);
            }
        }
        let sandbox = sandbox.ok_or_else(|| {
            format!("no running pod {namespace}/{pod} on this node (under the MOSE runtime's CRI)")
        })?;
        let mut containers = containers_of(cd, &sandbox.id).await.map_err(look)?;
        containers.sort_by_key(|c| c.created_at.as_ref().map(|t| (t.seconds, t.nanos)));
        Ok(SourcePod {
            sandbox,
            containers,
        })
    }

    /// The pod's network namespace (the sandbox spec's path).
    pub fn netns(&self) -> Result<PathBuf, String> {
        let spec = spec_of(&self.sandbox).map_err(|e| format!("the sandbox's spec: {e}"))?;
        spec.pointer("/linux/namespaces")
            .and_then(|n| n.as_array())
            .and_then(|ns| {
                ns.iter()
                    .find(|n| n["type"] == "network")
                    .and_then(|n| n["path"].as_str())
            })
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| {
                "the pod has no network namespace of its own (host network): its address \
                 cannot move"
                    .to_string()
            })
    }

    /// The pod's address, `A.B.C.D/len`.
    pub async fn address(&self) -> Result<String, String> {
        let ns = self.netns()?;
        tokio::task::spawn_blocking(move || mose_network::pod::address(&ns))
            .await
            .map_err(|e| format!("reading the pod's address: {e}"))?
            .map_err(|e| format!("reading the pod's address: {e}"))
    }

    /// Container names, in creation order (each once).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for c in &self.containers {
            if let Some(n) = annotations(c)[ANNOTATION_CONTAINER_NAME].as_str() {
                if !names.iter().any(|x| x == n) {
                    names.push(n.into());
                }
            }
        }
        names
    }

    /// The newest instance of container `name` (a restarted container's
    /// dead instances stay listed until the kubelet removes them).
    fn container(&self, name: &str) -> Option<&Container> {
        self.containers
            .iter()
            .rev()
            .find(|c| annotations(c)[ANNOTATION_CONTAINER_NAME] == name)
    }

    /// The pod's namespace and name.
    fn key(&self) -> (String, String) {
        let a = annotations(&self.sandbox);
        let s = |k: &str| a[k].as_str().unwrap_or_default().to_string();
        (s(ANNOTATION_POD_NAMESPACE), s(ANNOTATION_POD_NAME))
    }
}

/// The CRI containers (not the sandbox) of pod `sandbox_id`, in no order.
pub(super) async fn containers_of(
    cd: &Containerd,
    sandbox_id: &str,
) -> Result<Vec<Container>, crate::containerd::ContainerdError> {
    Ok(cd
        .list(&format!("labels.\"{LABEL_KIND}\"==container"))
        .await?
        .into_iter()
        .filter(|c| annotations(c)[ANNOTATION_SANDBOX_ID] == sandbox_id)
        .collect())
}

/// A container's OCI spec annotations (`Null` when unreadable).
fn annotations(c: &Container) -> serde_json::Value {
    spec_of(c)
        .map(|s| s["annotations"].clone())
        .unwrap_or_default()
}

/// Checks a pull of `key` and starts its migration to `reply_to` in the
/// background. Returns the source container's id.
pub async fn pull(
    cfg: &EndpointConfig,
    key: PullKey,
    technique: Option<Technique>,
    reply_to: String,
    peer: Option<std::net::IpAddr>,
) -> Result<String, String> {
    // the container goes only to the node that asked for it
    let to_host = reply_to
        .rsplit_once(':')
        .and_then(|(h, _)| h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().ok());
    if to_host.is_none() || to_host != peer {
        return Err(format!(
            "a pull must name the asking node's own endpoint: {reply_to:?} is not at {}",
            peer.map(|p| p.to_string())
                .unwrap_or_else(|| "the peer's address".into())
        ));
    }
    let cd = Containerd::connect(&cfg.containerd, CRI_NAMESPACE)
        .await
        .map_err(|e| format!("connecting to this node's containerd: {e}"))?;
    let pod = SourcePod::find(&cd, &key.namespace, &key.pod).await?;
    let c = pod.container(&key.container).ok_or_else(|| {
        format!(
            "pod {}/{} has no container {:?} (it has {:?})",
            key.namespace,
            key.pod,
            key.container,
            pod.names()
        )
    })?;
    cd.task_pid(&c.id)
        .await
        .map_err(|e| format!("{key} is not running here: {e}"))?;
    let id = c.id.clone();
    freeze_group::check_not_stayed(&pod.sandbox.id, &id).map_err(|e| format!("{key}: {e}"))?;
    let guard = InFlight::claim(&id)
        .ok_or_else(|| format!("{key} is already being migrated from this node"))?;
    // frozen with its pod: wait until the container that froze it moved
    let claimed = freeze_group::claim(&id, cfg.io_timeout / 2).await?;
    let frozen = claimed.is_some() || freeze_group::is_paused(&cfg.containerd, &id).await;
    let planned = match (technique, claimed) {
        (Some(t), _) => Planned::asked(t),
        (None, Some(c)) => Planned::following(c.follow),
        (None, None) => plan_pod(cfg, &pod, &id, &reply_to).await?,
    };
    let sandbox = pod.sandbox.id.clone();
    let opts = source_options(cfg, &id, &sandbox, reply_to, &planned, frozen);
    let pull = Pull {
        key,
        sandbox,
        frozen,
        frozen_for: claimed.map(|c| c.frozen_for),
        plan: planned.plan,
    };
    let cfg = cfg.clone();
    tokio::spawn(async move {
        run_pull(cfg, opts, pull).await;
        drop(guard);
    });
    Ok(id)
}

/// The migration of pulled container `id` of pod `sandbox`, as planned;
/// `frozen`: it is paused already (frozen with its pod).
fn source_options(
    cfg: &EndpointConfig,
    id: &str,
    sandbox: &str,
    to: String,
    planned: &Planned,
    frozen: bool,
) -> SourceOptions {
    let technique = if frozen {
        freeze_group::frozen_technique(planned.technique)
    } else {
        planned.technique
    };
    let follow = freeze_group::Follow {
        technique: planned.technique,
        bandwidth_cap_bps: planned.bandwidth_cap_bps,
        compress: planned.compress,
    };
    SourceOptions {
        socket: cfg.containerd.clone(),
        namespace: CRI_NAMESPACE.into(),
        container: id.into(),
        to,
        technique,
        max_rounds: planned.max_rounds,
        min_round_bytes: PULL_MIN_ROUND_BYTES,
        identity: cfg.identity.clone(),
        compress: planned.compress,
        stop_when: None,
        bandwidth_cap_bps: planned.bandwidth_cap_bps,
        work_root: cfg.work_root.join(".mose-out"),
        io_timeout: cfg.io_timeout,
        close_connections: false,
        cri_pod: true,
        before_freeze: Some(freeze_group::hook(
            cfg.containerd.clone(),
            sandbox.into(),
            id.into(),
            follow,
            is_in_flight,
        )),
        already_frozen: frozen,
        lazy_source: cfg.lazy_source.clone(),
        fault: None,
        progress: None,
    }
}

/// A pulled container's migration, beside its options.
struct Pull {
    key: PullKey,
    sandbox: String,
    /// It was paused before its migration began.
    frozen: bool,
    /// How long it had been frozen with its pod.
    frozen_for: Option<std::time::Duration>,
    plan: Option<PodPlan>,
}

/// Whether container `id` is being migrated from this node.
fn is_in_flight(id: &str) -> bool {
    IN_FLIGHT
        .lock()
        .map(|v| v.iter().any(|x| x == id))
        .unwrap_or(false)
}

/// Containers being migrated from this node: one migration each at a time
/// (a kubelet that retries a timed-out StartContainer asks again).
static IN_FLIGHT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
/// Pods (sandbox ids) of which a container has moved to another node: the
/// pod's address lives there now.
static MOVED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

struct InFlight(String);

impl InFlight {
    fn claim(id: &str) -> Option<InFlight> {
        let mut v = IN_FLIGHT.lock().ok()?;
        if v.iter().any(|x| x == id) {
            return None;
        }
        v.push(id.into());
        Some(InFlight(id.into()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut v) = IN_FLIGHT.lock() {
            v.retain(|x| x != &self.0);
        }
    }
}

/// Records that a container of pod `sandbox` moved (when `moved`); returns
/// whether one had moved before.
fn mark_moved(sandbox: &str, moved: bool) -> bool {
    let Ok(mut v) = MOVED.lock() else {
        return false;
    };
    let was = v.iter().any(|x| x == sandbox);
    if moved && !was {
        v.push(sandbox.into());
    }
    was
}

/// A container of a pod whose address already moved failed to follow and
/// was resumed here: its link must stay down (the address lives on the
/// other node), whatever the rollback did.
pub(super) fn keep_link_down(sandbox: &str) {
    let state = mose_network::NodeConfig::from_env().state_dir;
    match mose_network::pod::PodLink::load(&state, sandbox).and_then(|l| l.hold_down()) {
        Ok(()) => warn!(
            sandbox,
            "a container stayed behind its moved pod; the pod's link here stays down"
        ),
        Err(e) => {
            warn!(sandbox, error = %e, "could not hold the pod's link down after a failed follow-up migration")
        }
    }
}

/// Runs the migration, records it, and stops what the destination now owns.
async fn run_pull(cfg: EndpointConfig, opts: SourceOptions, p: Pull) {
    let id = opts.container.clone();
    let (key, sandbox) = (&p.key, &p.sandbox);
    info!(%key, container = %id, to = %opts.to, technique = %opts.technique, frozen_with_pod = p.frozen, "pod container pulled");
    let mut result = sender::migrate(opts).await;
    if let Some(plan) = p.plan {
        result.plan = Some(PlanRecord::compare(
            plan.policy,
            plan.policy_error,
            plan.decision,
            &plan.request,
            &result,
        ));
    }
    let mut rec = serde_json::to_value(&result).unwrap_or_default();
    rec["direction"] = "out".into();
    rec["pod"] = format!("{}/{}", key.namespace, key.pod).into();
    rec["pod_container"] = key.container.clone().into();
    if let Some(d) = p.frozen_for {
        rec["pod_frozen_before_ms"] = (d.as_secs_f64() * 1e3).into();
    }
    append_record(&cfg.state_dir, &rec);
    if let Some(observe) = &cfg.on_outgoing {
        observe(&result);
    }
    let moved = result.status == "ok";
    // what this migration's freeze paused resumes now, or follows
    freeze_group::settle(&cfg.containerd, sandbox, &id, moved).await;
    if !moved {
        warn!(%key, status = %result.status, error = ?result.error, "pulled container's migration did not complete; it stays here");
        if p.frozen {
            freeze_group::resume_if_paused(&cfg.containerd, &id).await;
        }
        if mark_moved(sandbox, false) {
            keep_link_down(sandbox);
        } else {
            freeze_group::mark_stayed(sandbox, &id);
        }
        return;
    }
    mark_moved(sandbox, true);
    if let Err(e) = stop_moved(&cfg, &id, sandbox).await {
        warn!(%key, error = %e, "the destination owns the container, but stopping the source's copy failed");
    }
}

/// Stops the moved container, and the pod once none of its containers runs.
async fn stop_moved(cfg: &EndpointConfig, id: &str, sandbox: &str) -> Result<(), String> {
    let mut cri = Cri::connect(&cfg.containerd).await?;
    if let Err(e) = cri.stop_container(id).await {
        warn!(error = %e, "stopping the moved container through the CRI; killing it through containerd");
        if let Ok(cd) = Containerd::connect(&cfg.containerd, CRI_NAMESPACE).await {
            let _ = cd.kill(id, 9).await;
        }
    }
    let cd = Containerd::connect(&cfg.containerd, CRI_NAMESPACE)
        .await
        .map_err(|e| format!("connecting to containerd: {e}"))?;
    let sb = cd
        .container(sandbox)
        .await
        .map_err(|e| format!("the pod's sandbox: {e}"))?;
    let (ns, name) = SourcePod {
        sandbox: sb,
        containers: Vec::new(),
    }
    .key();
    let pod = SourcePod::find(&cd, &ns, &name).await?;
    for c in &pod.containers {
        if cd.task_pid(&c.id).await.is_ok() {
            return Ok(());
        }
    }
    info!(pod = %format!("{ns}/{name}"), "every container of the pod moved; stopping the pod here");
    // its address lives on elsewhere: the pod's CNI DEL keeps it reserved
    let state = mose_network::NodeConfig::from_env().state_dir;
    if let Err(e) = mose_network::pod::PodLink::mark_moved(&state, sandbox) {
        warn!(error = %e, "could not mark the pod's address as moved; this node may hand it out again");
    }
    if let Ok(mut v) = MOVED.lock() {
        v.retain(|x| x != sandbox);
    }
    cri.stop_pod(sandbox).await
}

/// How a pulled container migrates: what the destination asked, or what
/// the policy planned for its pod.
struct Planned {
    technique: Technique,
    max_rounds: u32,
    bandwidth_cap_bps: Option<u64>,
    compress: bool,
    plan: Option<PodPlan>,
}

impl Planned {
    /// A frozen container follows the one whose freeze paused it.
    fn following(f: freeze_group::Follow) -> Self {
        Planned {
            technique: f.technique,
            max_rounds: PULL_MAX_ROUNDS,
            bandwidth_cap_bps: f.bandwidth_cap_bps,
            compress: f.compress,
            plan: None,
        }
    }

    fn asked(technique: Technique) -> Self {
        Planned {
            technique,
            max_rounds: PULL_MAX_ROUNDS,
            bandwidth_cap_bps: None,
            compress: false,
            plan: None,
        }
    }
}

/// Asks the policy hook to plan pod `pod` as a whole, `first` moving
/// first; a refusal or a missing hook is the pull's error.
async fn plan_pod(
    cfg: &EndpointConfig,
    pod: &SourcePod,
    first: &str,
    to: &str,
) -> Result<Planned, String> {
    let planner = cfg.pod_planner.as_ref().ok_or_else(|| {
        "mose.io/technique auto: this node has no policy hook to plan the pod; name a \
         technique (cold, precopy, postcopy, hybrid)"
            .to_string()
    })?;
    let cd = Containerd::connect(&cfg.containerd, CRI_NAMESPACE)
        .await
        .map_err(|e| format!("connecting to this node's containerd: {e}"))?;
    let mut containers = vec![first.to_string()];
    for c in &pod.containers {
        if c.id != first && cd.task_pid(&c.id).await.is_ok() {
            containers.push(c.id.clone());
        }
    }
    let p = planner(PodPlanQuery {
        containers,
        destination: to.into(),
    })
    .await
    .map_err(|e| format!("planning the pod's migration: {e}"))?;
    let params = p.decision.plan.ok_or_else(|| {
        format!(
            "the policy refused to migrate the pod: {}",
            p.decision.reason
        )
    })?;
    info!(plan = %params.describe(), reason = %p.decision.reason, "the pod's migration planned");
    Ok(Planned {
        technique: params.technique,
        max_rounds: params.max_rounds.max(1),
        bandwidth_cap_bps: params.bandwidth_cap_bps,
        compress: params.compression,
        plan: Some(p),
    })
}
