//! The policy hook: `mose-plugin` answers `plan(container, destination)` on
//! a local unix socket with a migration plan, its predicted KPIs and whether
//! each annotated target can be met. It keeps the measurements the cost model
//! needs (per container and per link, refreshed in the background) and the
//! node's calibration (learned from every completed migration).
//!
//! The protocol is one JSON object per line each way (see `docs/policy.md`):
//! `{"op":"plan",...}`, `{"op":"learn","result":{...}}`, `{"op":"status"}`.
//! An operator may replace the built-in policy with a program that reads a
//! `PlanRequest` on stdin and prints a `Decision` on stdout; a program that
//! fails, hangs or prints an invalid decision is reported and the built-in
//! policy is used instead.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use mose_policy::{
    annotations::{self, KpiTargets, Technique, TechniqueChoice},
    model::Measurements,
    schema::{parse_decision, PlanRequest},
    select::{select, Decision},
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::Mutex,
};
use tracing::{info, warn};

use mose_migrate::{
    containerd::{spec_of, Containerd},
    result::MigrationResult,
    tls::Identity,
};

use crate::{
    calibrate::Store,
    measure::{probe_link, sample_memory, LinkSample, MemorySample},
    metrics::Metrics,
};

/// Settings of the policy hook.
#[derive(Clone)]
pub struct PolicyConfig {
    /// Unix socket the hook listens on.
    pub socket: PathBuf,
    pub containerd: PathBuf,
    pub identity: Identity,
    /// Where the calibration is persisted.
    pub state_dir: PathBuf,
    /// A tmpfs directory for the start-up calibration.
    pub scratch: PathBuf,
    /// An operator's policy program replacing the built-in one.
    pub program: Option<PathBuf>,
    pub program_timeout: Duration,
    /// Configured link rates (bytes/s) by destination `host:port`; measured otherwise.
    pub links: HashMap<String, f64>,
    /// Filler sent by a link probe.
    pub probe_bytes: u64,
    /// Measurements older than this are refreshed before planning.
    pub max_age: Duration,
    /// Interval between the two memory snapshots of a dirty-rate sample.
    pub sample_interval: Duration,
    /// Every `stride`-th page is hashed when sampling.
    pub sample_stride: u64,
    /// Background refresh period of the measurements of recently planned containers.
    pub refresh_every: Duration,
    pub io_timeout: Duration,
    /// Observes every migration result reported here (`{"op":"learn"}`).
    pub metrics: Arc<Metrics>,
}

/// A plan request on the socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanQuery {
    pub namespace: String,
    pub container: String,
    /// Destination endpoint `host:port`.
    pub destination: String,
    /// An explicit technique overriding `mose.io/technique` (as `mosectl
    /// migrate --technique` does); predictions are still made for it.
    #[serde(default)]
    pub technique: Option<Technique>,
    /// Measure now even if recent measurements exist.
    #[serde(default)]
    pub fresh: bool,
}

/// A plan request for a Kubernetes pod moving as a whole (`{"op":"plan_pod"}`):
/// its containers are frozen together, so the policy plans for all of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodPlanQuery {
    pub namespace: String,
    /// The pod's running containers, the one moving first first: its
    /// `mose.io/*` annotations (the pod's, which containerd's CRI copies to
    /// each container) are the targets; the measurements are summed.
    pub containers: Vec<String>,
    /// Destination endpoint `host:port`.
    pub destination: String,
    /// An explicit technique overriding `mose.io/technique`.
    #[serde(default)]
    pub technique: Option<Technique>,
}

/// The hook's answer to a plan request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanAnswer {
    /// What the policy was given.
    pub request: PlanRequest,
    pub decision: Decision,
    /// `builtin`, or the path of the operator's program that decided.
    pub policy: String,
    /// Why the operator's program was not used, when it was configured but failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_error: Option<String>,
    /// How the link rate was obtained: `configured`, `probe` or `cached probe`.
    pub link_source: String,
    pub memory: MemorySample,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Plan(PlanQuery),
    PlanPod(PodPlanQuery),
    Learn { result: Box<MigrationResult> },
    Status,
}

type Key = (String, String);
/// When a memory sample was taken, of which pids, and what it found.
type Sampled = (Instant, Vec<u32>, MemorySample);

struct Policy {
    cfg: PolicyConfig,
    store: Mutex<Store>,
    /// Samples with the pids they were taken from: a container restored
    /// here since has new pids, and an old sample says nothing about it.
    memory: Mutex<HashMap<Key, Sampled>>,
    links: Mutex<HashMap<String, (Instant, LinkSample)>>,
    /// Containers planned recently, refreshed in the background.
    watched: Mutex<HashMap<Key, Instant>>,
}

/// Serves the policy hook until the process ends.
pub async fn serve_policy(cfg: PolicyConfig) -> Result<()> {
    if let Some(dir) = cfg.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&cfg.socket);
    let listener = UnixListener::bind(&cfg.socket)
        .with_context(|| format!("listening on {}", cfg.socket.display()))?;
    let mut store = Store::open(&cfg.state_dir);
    let scratch = cfg.scratch.clone();
    let calibrated = tokio::task::spawn_blocking(move || {
        let r = mose_migrate::ensure_tmpfs(&scratch)
            .map_err(anyhow::Error::from)
            .and_then(|_| store.calibrate_startup(&scratch, 64));
        let c = std::env::current_exe()
            .map_err(anyhow::Error::from)
            .and_then(|exe| store.calibrate_criu(&exe, &scratch));
        (store, r.and(c))
    })
    .await
    .map_err(|e| anyhow!("start-up calibration: {e}"))?;
    let (store, r) = calibrated;
    if let Err(e) = r {
        warn!(error = %format!("{e:#}"), "start-up calibration failed; using defaults");
    }
    if let Err(e) = store.save() {
        warn!(error = %format!("{e:#}"), "could not persist the calibration");
    }
    info!(socket = %cfg.socket.display(), calibration = ?store.learned.calibration(), "MOSE policy hook ready");
    let p = Arc::new(Policy {
        cfg,
        store: Mutex::new(store),
        memory: Mutex::new(HashMap::new()),
        links: Mutex::new(HashMap::new()),
        watched: Mutex::new(HashMap::new()),
    });
    tokio::spawn(refresh_loop(p.clone()));
    loop {
        let (s, _) = listener
            .accept()
            .await
            .context("accept on the policy socket")?;
        let p = p.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_client(&p, s).await {
                warn!(error = %format!("{e:#}"), "policy client");
            }
        });
    }
}

async fn serve_client(p: &Policy, s: UnixStream) -> Result<()> {
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let answer = match serde_json::from_str::<Request>(&line) {
            Err(e) => serde_json::json!({"ok": false, "error": format!("bad request: {e}")}),
            Ok(req) => match handle(p, req).await {
                Ok(v) => serde_json::json!({"ok": true, "answer": v}),
                Err(e) => serde_json::json!({"ok": false, "error": format!("{e:#}")}),
            },
        };
        let mut out = serde_json::to_vec(&answer)?;
        out.push(b'\n');
        w.write_all(&out).await?;
    }
    Ok(())
}

async fn handle(p: &Policy, req: Request) -> Result<serde_json::Value> {
    match req {
        Request::Plan(q) => Ok(serde_json::to_value(plan(p, &q).await?)?),
        Request::PlanPod(q) => Ok(serde_json::to_value(plan_pod(p, &q).await?)?),
        Request::Learn { result } => {
            // the node's metrics see every reported result, learnt from or not
            p.cfg.metrics.observe_outgoing(&result);
            let link = p
                .links
                .lock()
                .await
                .get(&result.destination)
                .map(|(_, l)| l.bytes_per_s)
                .or_else(|| p.cfg.links.get(&result.destination).copied())
                .unwrap_or(0.0);
            if result.status == "ok" {
                // the container left this node: its samples describe nothing
                // here now (after a failure or a rollback it is still here)
                p.memory
                    .lock()
                    .await
                    .retain(|(_, id), _| *id != result.container);
            }
            let mut store = p.store.lock().await;
            let before = store.learned.migrations;
            store.learned.learn(&result, link);
            if store.learned.migrations > before {
                store.save()?;
            }
            Ok(serde_json::json!({
                "learned": store.learned.migrations > before,
                "migrations": store.learned.migrations,
                "calibration": store.learned.calibration(),
            }))
        }
        Request::Status => {
            let store = p.store.lock().await;
            let memory: Vec<_> = p
                .memory
                .lock()
                .await
                .iter()
                .map(|((ns, id), (t, _, m))| serde_json::json!({"namespace": ns, "container": id, "age_s": t.elapsed().as_secs_f64(), "memory": m}))
                .collect();
            let links: Vec<_> = p
                .links
                .lock()
                .await
                .iter()
                .map(|(d, (t, l))| serde_json::json!({"destination": d, "age_s": t.elapsed().as_secs_f64(), "link": l}))
                .collect();
            Ok(serde_json::json!({
                "calibration": store.learned.calibration(),
                "migrations_learned": store.learned.migrations,
                "memory": memory,
                "links": links,
            }))
        }
    }
}

/// The targets annotated on a container, validated by the one parser, and
/// whether its service address moves with it (the `mose.io/network` and
/// `mose.io/address` annotations, read as the migration engine reads them:
/// a malformed pair would fail the migration, so it fails the plan).
async fn targets_of(cd: &Containerd, id: &str) -> Result<(KpiTargets, bool)> {
    let c = cd.container(id).await?;
    let spec = spec_of(&c)?;
    let moves_address = mose_migrate::network::identity_of(&spec)
        .map_err(|e| anyhow!("container {id}: {e}"))?
        .is_some();
    let ann: std::collections::BTreeMap<String, String> = spec
        .get("annotations")
        .and_then(|a| a.as_object())
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let targets = annotations::parse(&ann).map_err(|e| anyhow!("container {id}: {e}"))?;
    Ok((targets, moves_address))
}

async fn pids_of(cd: &Containerd, id: &str) -> Result<Vec<u32>> {
    let mut pids = cd.pids(id).await?;
    pids.sort_unstable();
    Ok(pids)
}

/// Starts sampling `pids` on a blocking thread; [`remember`] its result.
fn start_sampling(p: &Policy, pids: &[u32]) -> tokio::task::JoinHandle<Result<MemorySample>> {
    let (interval, stride) = (p.cfg.sample_interval, p.cfg.sample_stride);
    let sampled = pids.to_vec();
    tokio::task::spawn_blocking(move || sample_memory(&sampled, interval, stride))
}

/// Waits for a sample started by [`start_sampling`] and caches it.
async fn remember(
    p: &Policy,
    key: Key,
    pids: Vec<u32>,
    h: tokio::task::JoinHandle<Result<MemorySample>>,
) -> Result<MemorySample> {
    let m = h.await.map_err(|e| anyhow!("memory sampling: {e}"))??;
    p.memory.lock().await.insert(key, (Instant::now(), pids, m));
    Ok(m)
}

async fn measure_memory(p: &Policy, ns: &str, id: &str, pids: Vec<u32>) -> Result<MemorySample> {
    let h = start_sampling(p, &pids);
    remember(p, (ns.to_string(), id.to_string()), pids, h).await
}

/// The cached sample of `key`, if fresh and taken from these `pids` (a
/// container restored here since has new pids).
async fn cached_memory(p: &Policy, key: &Key, pids: &[u32]) -> Option<MemorySample> {
    match p.memory.lock().await.get(key) {
        Some((t, was, m)) if t.elapsed() < p.cfg.max_age && was == pids => Some(*m),
        _ => None,
    }
}

async fn memory_of(
    p: &Policy,
    cd: &Containerd,
    ns: &str,
    id: &str,
    fresh: bool,
) -> Result<MemorySample> {
    let key = (ns.to_string(), id.to_string());
    let pids = pids_of(cd, id).await?;
    if !fresh {
        if let Some(m) = cached_memory(p, &key, &pids).await {
            return Ok(m);
        }
    }
    measure_memory(p, ns, id, pids).await
}

async fn link_to(p: &Policy, to: &str, fresh: bool) -> Result<(f64, String)> {
    if let Some(r) = p.cfg.links.get(to) {
        return Ok((*r, "configured".into()));
    }
    if !fresh {
        if let Some((t, l)) = p.links.lock().await.get(to) {
            if t.elapsed() < p.cfg.max_age {
                return Ok((l.bytes_per_s, "cached probe".into()));
            }
        }
    }
    let l = probe_link(&p.cfg.identity, to, p.cfg.probe_bytes, p.cfg.io_timeout)
        .await
        .with_context(|| format!("measuring the link to {to}"))?;
    p.links
        .lock()
        .await
        .insert(to.to_string(), (Instant::now(), l));
    Ok((l.bytes_per_s, "probe".into()))
}

/// Measures what is stale, builds the request and decides.
async fn plan(p: &Policy, q: &PlanQuery) -> Result<PlanAnswer> {
    let cd = Containerd::connect(&p.cfg.containerd, &q.namespace).await?;
    let (mut targets, moves_address) = targets_of(&cd, &q.container).await?;
    if let Some(t) = q.technique {
        targets.technique = TechniqueChoice::Fixed(t);
    }
    p.watched
        .lock()
        .await
        .insert((q.namespace.clone(), q.container.clone()), Instant::now());
    let memory = memory_of(p, &cd, &q.namespace, &q.container, q.fresh).await?;
    let subject = Subject {
        namespace: &q.namespace,
        container: &q.container,
        destination: &q.destination,
        pod_containers: Vec::new(),
        moves_address,
    };
    decide(p, subject, targets, memory, q.fresh).await
}

/// What a plan is for: a container (a pod's first, with the pod's
/// containers) and where it goes.
struct Subject<'a> {
    namespace: &'a str,
    container: &'a str,
    destination: &'a str,
    pod_containers: Vec<String>,
    /// The container's address moves with it (see
    /// [`Measurements::moves_address`]).
    moves_address: bool,
}

/// Plans a pod as one: the first container's targets (the pod's), the
/// containers' memory and dirty rates summed.
async fn plan_pod(p: &Policy, q: &PodPlanQuery) -> Result<PlanAnswer> {
    let first = q
        .containers
        .first()
        .ok_or_else(|| anyhow!("a pod plan needs at least one container"))?;
    let cd = Containerd::connect(&p.cfg.containerd, &q.namespace).await?;
    let (mut targets, _) = targets_of(&cd, first).await?;
    // the pod's annotations are the source pod's: a technique they fix was
    // the previous move's; this one asked for a plan (or names its own)
    targets.technique = q
        .technique
        .map_or(TechniqueChoice::Auto, TechniqueChoice::Fixed);
    let memory = pod_memory(p, &cd, &q.namespace, &q.containers).await?;
    let subject = Subject {
        namespace: &q.namespace,
        container: first,
        destination: &q.destination,
        pod_containers: q.containers.clone(),
        // the pod IP moves with the pod, as for the engine's `cri_pod`
        moves_address: true,
    };
    decide(p, subject, targets, memory, false).await
}

/// The pod's memory: its containers' samples summed, those not fresh in
/// the cache taken in parallel (one sampling interval in all).
async fn pod_memory(p: &Policy, cd: &Containerd, ns: &str, ids: &[String]) -> Result<MemorySample> {
    let mut samples = Vec::new();
    let mut pending = Vec::new();
    for id in ids {
        let key = (ns.to_string(), id.clone());
        p.watched.lock().await.insert(key.clone(), Instant::now());
        let pids = pids_of(cd, id).await?;
        match cached_memory(p, &key, &pids).await {
            Some(m) => samples.push(m),
            None => {
                let h = start_sampling(p, &pids);
                pending.push((key, pids, h));
            }
        }
    }
    for (key, pids, h) in pending {
        samples.push(remember(p, key, pids, h).await?);
    }
    let mut sum = MemorySample::default();
    for m in samples {
        sum.memory_bytes += m.memory_bytes;
        sum.present_bytes += m.present_bytes;
        sum.dirty_bytes_per_s += m.dirty_bytes_per_s;
        sum.sampled_pages += m.sampled_pages;
        sum.changed_pages += m.changed_pages;
        sum.interval_ms = sum.interval_ms.max(m.interval_ms);
    }
    Ok(sum)
}

/// Measures the link (`fresh`: now), builds the request and decides: the
/// built-in policy, or the operator's program.
async fn decide(
    p: &Policy,
    s: Subject<'_>,
    targets: KpiTargets,
    memory: MemorySample,
    fresh: bool,
) -> Result<PlanAnswer> {
    let (link, link_source) = link_to(p, s.destination, fresh).await?;
    let calibration = p.store.lock().await.learned.calibration();
    let request = PlanRequest {
        container: s.container.to_string(),
        namespace: s.namespace.to_string(),
        destination: s.destination.to_string(),
        targets,
        measurements: Measurements {
            memory_bytes: memory.memory_bytes,
            dirty_bytes_per_s: memory.dirty_bytes_per_s,
            working_set_bytes: None,
            link_bytes_per_s: link,
            moves_address: s.moves_address,
        },
        calibration,
        pod_containers: s.pod_containers,
    };
    let builtin = || {
        select(
            &request.targets,
            &request.measurements,
            &request.calibration,
        )
    };
    let (decision, policy, policy_error) = match &p.cfg.program {
        None => (builtin(), "builtin".to_string(), None),
        Some(prog) => match run_program(prog, &request, p.cfg.program_timeout).await {
            Ok(d) => (d, prog.display().to_string(), None),
            Err(e) => {
                let msg = format!(
                    "policy program {} was not used: {e}; the built-in policy decided",
                    prog.display()
                );
                warn!("{msg}");
                (builtin(), "builtin".to_string(), Some(msg))
            }
        },
    };
    Ok(PlanAnswer {
        request,
        decision,
        policy,
        policy_error,
        link_source,
        memory,
    })
}

/// Runs an operator's policy program: the request as JSON on stdin, a
/// decision as JSON on stdout, within `timeout`.
async fn run_program(prog: &PathBuf, req: &PlanRequest, timeout: Duration) -> Result<Decision> {
    let mut child = tokio::process::Command::new(prog)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", prog.display()))?;
    let input = serde_json::to_vec(req)?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin for the policy program"))?;
    let io = async move {
        // a program that does not read its input must not block us
        let _ = stdin.write_all(&input).await;
        drop(stdin);
        child.wait_with_output().await
    };
    let out = tokio::time::timeout(timeout, io)
        .await
        .map_err(|_| anyhow!("it did not answer within {timeout:?}"))?
        .context("waiting for it")?;
    if !out.status.success() {
        bail!(
            "it exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8(out.stdout).map_err(|_| anyhow!("its output is not UTF-8"))?;
    parse_decision(&text, req).map_err(|e| anyhow!("{e}"))
}

/// Keeps the measurements of recently planned containers fresh, so that a
/// plan right before a migration rarely waits for a sample.
async fn refresh_loop(p: Arc<Policy>) {
    loop {
        tokio::time::sleep(p.cfg.refresh_every).await;
        let keys: Vec<Key> = {
            let mut w = p.watched.lock().await;
            w.retain(|_, t| t.elapsed() < Duration::from_secs(600));
            w.keys().cloned().collect()
        };
        for (ns, id) in keys {
            let pids = match Containerd::connect(&p.cfg.containerd, &ns).await {
                Ok(cd) => pids_of(&cd, &id).await,
                Err(e) => Err(e.into()),
            };
            let sampled = match pids {
                Ok(pids) => measure_memory(&p, &ns, &id, pids).await,
                Err(e) => Err(e),
            };
            if let Err(e) = sampled {
                // gone (migrated away or deleted): stop watching it
                p.watched.lock().await.remove(&(ns.clone(), id.clone()));
                p.memory.lock().await.remove(&(ns.clone(), id.clone()));
                info!(namespace = %ns, container = %id, error = %format!("{e:#}"), "stopped sampling");
            }
        }
    }
}

/// Asks the policy hook at `socket` to plan a pod's migration.
pub async fn request_pod_plan(socket: &std::path::Path, q: &PodPlanQuery) -> Result<PlanAnswer> {
    let mut req = serde_json::to_value(q)?;
    req["op"] = "plan_pod".into();
    let v = call(socket, &req).await?;
    serde_json::from_value(v).context("the policy hook's answer is not a plan")
}

/// Asks the policy hook at `socket` for a plan (used by `mosectl`).
pub async fn request_plan(socket: &std::path::Path, q: &PlanQuery) -> Result<PlanAnswer> {
    let v = call(socket, &serde_json::json!({"op": "plan", "namespace": q.namespace, "container": q.container, "destination": q.destination, "technique": q.technique, "fresh": q.fresh})).await?;
    serde_json::from_value(v).context("the policy hook's answer is not a plan")
}

/// Reports a finished migration to the policy hook at `socket`, which learns
/// from it and counts it in the node's metrics ([`crate::metrics`]).
pub async fn report_result(socket: &std::path::Path, r: &MigrationResult) -> Result<()> {
    call(socket, &serde_json::json!({"op": "learn", "result": r})).await?;
    Ok(())
}

/// One request/answer exchange with the hook.
pub async fn call(socket: &std::path::Path, req: &serde_json::Value) -> Result<serde_json::Value> {
    let s = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "connecting to the MOSE policy hook at {} (is mose-plugin running on this node?)",
            socket.display()
        )
    })?;
    let (r, mut w) = s.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    let mut lines = BufReader::new(r).lines();
    let reply = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .map_err(|_| anyhow!("the policy hook did not answer within 120 s"))??
        .ok_or_else(|| anyhow!("the policy hook closed the connection"))?;
    let v: serde_json::Value =
        serde_json::from_str(&reply).context("the policy hook's answer is not JSON")?;
    if v["ok"].as_bool() != Some(true) {
        bail!(
            "the policy hook refused: {}",
            v["error"].as_str().unwrap_or("no reason given")
        );
    }
    Ok(v["answer"].clone())
}
