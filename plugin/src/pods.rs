//! The node agent's pod socket: what the pod CNI plugin and the MOSE shim
//! ask of this node when a pod created here through the CRI continues a
//! running pod of another node (see `mose_contract::pod` and
//! `mose_migrate::pods`). One JSON object per line each way.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use mose_contract::{
    pod::{AgentReply, AgentRequest},
    PodOrigin, Technique,
};
use mose_migrate::{
    pods::{handoff::Waiter, query_pod, request_pull, HandoffRegistry, PullKey},
    tls::Identity,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    net::{
        unix::{OwnedReadHalf, OwnedWriteHalf},
        UnixListener, UnixStream,
    },
};
use tracing::{info, warn};

/// How long a pulled container may take from the request to its images
/// being here (pre-copy rounds and the final transfer included).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the shim may take to report its restore.
const RESTORE_REPORT_TIMEOUT: Duration = Duration::from_secs(120);

/// The pod socket's settings.
pub struct PodsConfig {
    pub socket: PathBuf,
    pub identity: Identity,
    /// This node's migration endpoint as other nodes reach it (`HOST:PORT`);
    /// `None` when `--listen` names no address and `--advertise` is not given.
    pub advertise: Option<String>,
    pub io_timeout: Duration,
    pub handoffs: HandoffRegistry,
}

/// Serves the pod socket until the process ends.
pub async fn serve_pods(cfg: PodsConfig) -> Result<()> {
    if let Some(dir) = cfg.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&cfg.socket);
    let listener = UnixListener::bind(&cfg.socket)
        .with_context(|| format!("listening on {}", cfg.socket.display()))?;
    info!(socket = %cfg.socket.display(), advertise = ?cfg.advertise, "MOSE pod hand-over socket ready");
    let cfg = Arc::new(cfg);
    loop {
        let (s, _) = listener
            .accept()
            .await
            .context("accept on the pod socket")?;
        let cfg = cfg.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_client(&cfg, s).await {
                warn!(error = %format!("{e:#}"), "pod socket client");
            }
        });
    }
}

struct Client {
    lines: Lines<BufReader<OwnedReadHalf>>,
    w: OwnedWriteHalf,
}

impl Client {
    async fn reply(&mut self, r: &AgentReply) -> Result<()> {
        let mut out = serde_json::to_vec(r)?;
        out.push(b'\n');
        self.w.write_all(&out).await?;
        Ok(())
    }

    async fn next(&mut self, within: Duration) -> Result<Option<AgentRequest>> {
        let line = match tokio::time::timeout(within, self.lines.next_line()).await {
            Ok(l) => l?,
            Err(_) => anyhow::bail!("no request within {within:?}"),
        };
        match line {
            None => Ok(None),
            Some(l) => Ok(Some(
                serde_json::from_str(&l).with_context(|| format!("bad request {l:?}"))?,
            )),
        }
    }
}

async fn serve_client(cfg: &PodsConfig, s: UnixStream) -> Result<()> {
    let (r, w) = s.into_split();
    let mut c = Client {
        lines: BufReader::new(r).lines(),
        w,
    };
    while let Some(req) = c.next(Duration::from_secs(3600)).await? {
        match req {
            AgentRequest::PodAddress { from } => {
                let reply = match pod_address(cfg, &from).await {
                    Ok(address) => AgentReply {
                        ok: true,
                        address,
                        ..Default::default()
                    },
                    Err(e) => AgentReply::failed(e),
                };
                c.reply(&reply).await?;
            }
            AgentRequest::Pull {
                from,
                container,
                namespace,
                id,
                technique,
            } => {
                let target = PullTarget {
                    namespace: &namespace,
                    container,
                    id: &id,
                };
                pull(cfg, &mut c, &from, target, &technique).await?
            }
            other => {
                c.reply(&AgentReply::failed(format!(
                    "{other:?} comes only after a pull on the same connection"
                )))
                .await?
            }
        }
    }
    Ok(())
}

async fn pod_address(cfg: &PodsConfig, from: &str) -> Result<String, String> {
    let o = PodOrigin::parse(from).map_err(|e| format!("mose.io/migrate-from: {e}"))?;
    let info = query_pod(
        &cfg.identity,
        &o.endpoint,
        &o.namespace,
        &o.pod,
        cfg.io_timeout,
    )
    .await
    .map_err(|e| format!("asking {} for {o}: {}", o.endpoint, chain(&e)))?;
    info!(%o, address = %info.address, "the new pod keeps the address of the pod it continues");
    Ok(info.address)
}

/// `technique`: the pod's `mose.io/technique`; `auto` (or none) is `None`:
/// the source's policy hook plans for the pod as a whole.
fn technique_of(t: &str) -> Result<Option<Technique>, String> {
    match t.trim() {
        "" | "auto" => Ok(None),
        t => t.parse().map(Some).map_err(|_| {
            format!("mose.io/technique {t:?} is not cold, precopy, postcopy, hybrid or auto")
        }),
    }
}

/// Where a pulled container goes: the new pod's Kubernetes namespace, the
/// container's name and the CRI's container id.
struct PullTarget<'a> {
    namespace: &'a str,
    container: String,
    id: &'a str,
}

async fn pull(
    cfg: &PodsConfig,
    c: &mut Client,
    from: &str,
    target: PullTarget<'_>,
    technique: &str,
) -> Result<()> {
    let mut waiter = match start_pull(cfg, from, target, technique).await {
        Ok(w) => w,
        Err(e) => return c.reply(&AgentReply::failed(e)).await,
    };
    let begin = cfg.io_timeout * 3;
    let handoff = match waiter.ready(begin, DELIVERY_TIMEOUT).await {
        Ok(h) => h,
        Err(e) => return c.reply(&AgentReply::failed(e)).await,
    };
    c.reply(&AgentReply {
        ok: true,
        images: handoff.images.display().to_string(),
        lazy_socket: handoff
            .lazy_socket
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        ..Default::default()
    })
    .await?;
    let outcome = match c.next(RESTORE_REPORT_TIMEOUT).await {
        Ok(Some(AgentRequest::Restored { pid })) => Ok(pid),
        Ok(Some(AgentRequest::RestoreFailed { error })) => Err(error),
        Ok(Some(other)) => Err(format!(
            "the shim sent {other:?} instead of its restore's outcome"
        )),
        Ok(None) => Err("the shim closed its connection before reporting its restore".into()),
        Err(e) => Err(format!("the shim's restore report: {e:#}")),
    };
    let ok = outcome.is_ok();
    let _ = handoff.outcome.send(outcome);
    c.reply(&AgentReply {
        ok,
        ..Default::default()
    })
    .await
}

async fn start_pull(
    cfg: &PodsConfig,
    from: &str,
    target: PullTarget<'_>,
    technique: &str,
) -> Result<Waiter, String> {
    let o = PodOrigin::parse(from).map_err(|e| format!("mose.io/migrate-from: {e}"))?;
    if target.namespace != o.namespace {
        return Err(format!(
            "mose.io/migrate-from: a pod in Kubernetes namespace {:?} may continue only a pod \
             of that namespace, not {o}",
            target.namespace
        ));
    }
    let (container, id) = (target.container, target.id);
    let technique = technique_of(technique)?;
    let advertise = cfg.advertise.as_deref().ok_or_else(|| {
        "this node's agent listens on an unspecified address: start mose-plugin with \
         --advertise HOST:PORT (where other nodes reach its endpoint) to pull pods"
            .to_string()
    })?;
    let key = PullKey {
        namespace: o.namespace.clone(),
        pod: o.pod.clone(),
        container,
    };
    let waiter = cfg.handoffs.register(key.clone(), id)?;
    let source = request_pull(
        &cfg.identity,
        &o.endpoint,
        &key,
        technique,
        advertise,
        cfg.io_timeout,
    )
    .await
    .map_err(|e| chain(&e))?;
    let technique = technique.map_or("auto (the source plans the pod)".to_string(), |t| {
        t.to_string()
    });
    info!(%key, into = id, source_container = %source, %technique, "pulling a pod's container");
    Ok(waiter)
}

fn chain(e: &mose_migrate::error::MigrateError) -> String {
    mose_migrate::error::error_chain(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_precopy_and_nonsense_is_refused() {
        assert_eq!(technique_of("").unwrap(), None);
        assert_eq!(technique_of("auto").unwrap(), None);
        assert_eq!(technique_of("postcopy").unwrap(), Some(Technique::Postcopy));
        assert!(technique_of("warp").unwrap_err().contains("warp"));
    }
}
