//! A Kubernetes pod's container that continues another node's pod (its pod
//! carries `mose.io/migrate-from`, see `mose_contract::pod`): at task create
//! the shim has the node agent pull the container's migration instead of
//! creating it fresh, restores it at start, brings the pod's interface up
//! and announces its address, then reports the outcome to the agent (which
//! completes the hand-over with the source). Only the shim of a pod's
//! *container* pulls; the pod's sandbox starts as usual.
//!
//! On the source, a dump whose address moves holds the pod's interface down
//! (the address is about to live elsewhere) and a rollback brings it up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mose_contract::pod::{
    AgentReply, AgentRequest, PodOrigin, AGENT_SOCKET_ENV, CRI_CONTAINER_NAME, CRI_CONTAINER_TYPE,
    DEFAULT_AGENT_SOCKET,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    net::{
        unix::{OwnedReadHalf, OwnedWriteHalf},
        UnixStream,
    },
};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::oci::BundleSpec;
use mose_network::pod::PodLink;

/// Longest a pull may take until its images are here (rounds included).
const PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest the agent may take to acknowledge a restore's outcome.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// An open pull: the agent waits on this connection for the restore's outcome.
pub struct PodPull {
    lines: Lines<BufReader<OwnedReadHalf>>,
    w: OwnedWriteHalf,
    pub origin: PodOrigin,
    /// The pod's sandbox id (its link comes up after the restore).
    pub sandbox: Option<String>,
}

/// What a pull delivered: the image to restore from.
pub struct Pulled {
    pub pull: PodPull,
    pub images: String,
    pub lazy_socket: String,
}

fn annotation<'a>(spec: &'a BundleSpec, key: &str) -> Option<&'a str> {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The sandbox a CRI pod container belongs to, if any.
pub fn pod_sandbox(spec: &BundleSpec) -> Option<String> {
    if annotation(spec, CRI_CONTAINER_TYPE) != Some("container") {
        return None;
    }
    annotation(spec, CRI_SANDBOX_ID).map(String::from)
}

/// containerd's CRI annotation with a container's Kubernetes namespace.
const CRI_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
/// containerd's CRI annotation with a container's sandbox id.
const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// The pod's link record (written by `mose-pod-cni`).
fn pod_link(sandbox: &str) -> Result<PodLink> {
    let state = mose_network::NodeConfig::from_env().state_dir;
    PodLink::load(&state, sandbox).map_err(|e| {
        Error::FailedPrecondition(format!(
            "the pod's link cannot be handed over: {e} (the pod network's CNI \
             configuration must use mose-pod-cni; see docs/kubernetes.md)"
        ))
    })
}

fn agent_socket() -> PathBuf {
    std::env::var_os(AGENT_SOCKET_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET))
}

/// Pulls the container's migration when its pod continues another pod;
/// `Ok(None)` for any other container. The error carries the agent's (or
/// the source's) reason, and lands in the CRI's container status.
pub async fn pull_if_continuing(bundle: &Path, id: &str) -> Result<Option<Pulled>> {
    let path = bundle.join("config.json");
    let bytes =
        std::fs::read(&path).map_err(Error::io(format!("read OCI spec {}", path.display())))?;
    let spec = BundleSpec::parse(&bytes)
        .map_err(|m| Error::InvalidArgument(format!("invalid OCI spec {}: {m}", path.display())))?;
    if annotation(&spec, CRI_CONTAINER_TYPE) != Some("container") {
        return Ok(None);
    }
    let annotations = spec.annotations().clone().unwrap_or_default();
    let origin =
        PodOrigin::from_annotations(annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| Error::InvalidArgument(format!("mose.io/migrate-from: {e}")))?;
    let Some(origin) = origin else {
        return Ok(None);
    };
    // a pod continues only a pod of its own Kubernetes namespace
    let namespace = annotation(&spec, CRI_SANDBOX_NAMESPACE).unwrap_or_default();
    if namespace != origin.namespace {
        return Err(Error::InvalidArgument(format!(
            "mose.io/migrate-from: container {id} is in Kubernetes namespace {namespace:?} and \
             may continue only a pod of that namespace, not {origin}"
        )));
    }
    let name = annotation(&spec, CRI_CONTAINER_NAME).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "container {id} continues {origin} but its spec lacks {CRI_CONTAINER_NAME}: \
             is it a container of containerd's CRI?"
        ))
    })?;
    let req = AgentRequest::Pull {
        from: annotations
            .get(mose_contract::pod::MIGRATE_FROM_ANNOTATION)
            .cloned()
            .unwrap_or_default(),
        container: name.to_string(),
        namespace: namespace.to_string(),
        id: id.to_string(),
        technique: annotation(&spec, "mose.io/technique")
            .unwrap_or("")
            .to_string(),
    };
    let socket = agent_socket();
    let s = UnixStream::connect(&socket).await.map_err(|e| {
        Error::FailedPrecondition(format!(
            "container {id} continues {origin}, but this node's MOSE agent is not reachable \
             on {} ({e}): is mose-plugin running (its --pods-socket, the shim's \
             {AGENT_SOCKET_ENV})?",
            socket.display()
        ))
    })?;
    let (r, w) = s.into_split();
    let mut pull = PodPull {
        lines: BufReader::new(r).lines(),
        w,
        origin,
        sandbox: pod_sandbox(&spec),
    };
    info!(id, origin = %pull.origin, container = name, "pulling the container's migration");
    let reply = pull.ask(&req, PULL_TIMEOUT).await?;
    if !reply.ok {
        return Err(Error::FailedPrecondition(format!(
            "container {id} continues {}, but its migration failed: {}",
            pull.origin, reply.error
        )));
    }
    Ok(Some(Pulled {
        pull,
        images: reply.images,
        lazy_socket: reply.lazy_socket,
    }))
}

impl PodPull {
    async fn ask(&mut self, req: &AgentRequest, within: Duration) -> Result<AgentReply> {
        let mut line = serde_json::to_vec(req)
            .map_err(|e| Error::Internal(format!("encoding a request to the agent: {e}")))?;
        line.push(b'\n');
        self.w
            .write_all(&line)
            .await
            .map_err(Error::io("writing to the MOSE agent"))?;
        let reply = tokio::time::timeout(within, self.lines.next_line())
            .await
            .map_err(|_| {
                Error::FailedPrecondition(format!(
                    "the MOSE agent did not answer within {within:?} ({})",
                    self.origin
                ))
            })?
            .map_err(Error::io("reading the MOSE agent's answer"))?
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "the MOSE agent closed the connection ({}): see its log",
                    self.origin
                ))
            })?;
        serde_json::from_str(&reply)
            .map_err(|e| Error::Internal(format!("the MOSE agent's answer {reply:?}: {e}")))
    }

    /// After the restore: the pod's interface comes up and its address is
    /// announced, then the agent hears the outcome (and, when that is a
    /// success, completes the hand-over). A failure to bring the interface
    /// up fails the restore.
    pub async fn report(mut self, restored: std::result::Result<u32, String>) -> Result<()> {
        let restored = match (restored, &self.sandbox) {
            (Ok(pid), Some(sb)) => {
                let sb = sb.clone();
                let started = std::time::Instant::now();
                let up = tokio::task::spawn_blocking(move || {
                    pod_link(&sb)
                        .map_err(|e| e.to_string())?
                        .bring_up_and_announce()
                        .map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
                match up {
                    Ok(ip) => {
                        info!(%ip, up_ms = started.elapsed().as_secs_f64() * 1e3, "pod address up and announced here");
                        Ok(pid)
                    }
                    Err(e) => Err(format!(
                        "restored, but the pod's interface did not come up: {e}"
                    )),
                }
            }
            (r, _) => r,
        };
        let failed = restored.as_ref().err().cloned();
        let req = match restored {
            Ok(pid) => AgentRequest::Restored { pid },
            Err(error) => AgentRequest::RestoreFailed { error },
        };
        let reply = self.ask(&req, REPORT_TIMEOUT).await;
        match (failed, reply) {
            (Some(e), _) => Err(Error::Internal(e)),
            (None, Ok(r)) if r.ok => Ok(()),
            (None, Ok(r)) => Err(Error::FailedPrecondition(format!(
                "the hand-over from {} did not complete: {}",
                self.origin, r.error
            ))),
            (None, Err(e)) => {
                warn!(error = %e, "the agent did not acknowledge the restore");
                Err(e)
            }
        }
    }
}

/// Holds the pod's link down (source, before a dump whose address moves)
/// or brings it up and announces (after a rollback).
pub fn set_pod_interface(sandbox: &str, up: bool) -> Result<()> {
    let link = pod_link(sandbox)?;
    let r = if up {
        link.bring_up_and_announce().map(|_| ())
    } else {
        link.hold_down()
    };
    r.map_err(|e| {
        Error::Internal(format!(
            "pod {sandbox}'s link ({}) {}: {e}",
            link.host_ifname,
            if up { "up" } else { "down" }
        ))
    })
}
