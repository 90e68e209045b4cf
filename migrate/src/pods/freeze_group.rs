//! A pod freezes as one. Its containers share the pod's loopback, address,
//! IPC and volumes, so none may run on here once a sibling has left: when
//! the first of a pod's containers is frozen for a migration, every other
//! running container of the pod is paused in the same instant
//! ([`freeze_siblings`], the sender's `before_freeze`). Each then stays
//! frozen until the destination's kubelet starts its copy there and pulls
//! it: it is dumped frozen ([`claim`]; the migration's `already_frozen`).
//!
//! Undo: if the first container's migration fails, its siblings resume
//! ([`thaw`]). If a sibling is not pulled within [`FOLLOW_TIMEOUT`] of the
//! first container's hand-over (the destination pod lacks it, or its
//! kubelet gave up), it resumes here, without the pod's address, which left
//! ([`thaw_unclaimed_after`]).
//!
//! The kubelet starts a pod's containers one after the other, so a sibling
//! is out from the pod's freeze until its own restore: its outage is the
//! first container's migration plus its own (reported per pulled container
//! as `pod_frozen_before_ms`).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tracing::{info, warn};

use super::{ANNOTATION_SANDBOX_ID, CRI_NAMESPACE, LABEL_KIND};
use crate::{
    containerd::{spec_of, Containerd, TASK_PAUSED, TASK_RUNNING},
    sender::BeforeFreezeFn,
};

/// How long a sibling frozen with its pod waits for its pull before it
/// resumes here. A kubelet creates and starts the next container as soon as
/// the previous StartContainer returns; this leaves room for a slow image
/// pull on the destination.
pub const FOLLOW_TIMEOUT: Duration = Duration::from_secs(120);

/// A container frozen with its pod, waiting for its pull.
struct Frozen {
    sandbox: String,
    since: Instant,
}

/// Frozen siblings by containerd container id.
static FROZEN: Mutex<Option<HashMap<String, Frozen>>> = Mutex::new(None);

fn with_frozen<T>(f: impl FnOnce(&mut HashMap<String, Frozen>) -> T) -> Option<T> {
    let mut g = FROZEN.lock().ok()?;
    Some(f(g.get_or_insert_with(HashMap::new)))
}

/// The sender hook that freezes `leader`'s running siblings in pod
/// `sandbox` just before `leader` itself is paused.
pub fn hook(socket: PathBuf, sandbox: String, leader: String) -> BeforeFreezeFn {
    Arc::new(move || {
        let (socket, sandbox, leader) = (socket.clone(), sandbox.clone(), leader.clone());
        Box::pin(async move {
            freeze_siblings(&socket, &sandbox, &leader)
                .await
                .map(|_| ())
        })
    })
}

/// Pauses every running container of pod `sandbox` but `leader`; returns
/// how many. On an error, those it paused are resumed again.
pub async fn freeze_siblings(socket: &Path, sandbox: &str, leader: &str) -> Result<usize, String> {
    let cd = Containerd::connect(socket, CRI_NAMESPACE)
        .await
        .map_err(|e| format!("connecting to containerd: {e}"))?;
    let running = running_siblings(&cd, sandbox, leader).await?;
    let mut paused: Vec<String> = Vec::new();
    for id in &running {
        if let Err(e) = cd.pause(id).await {
            for p in &paused {
                let _ = cd.resume(p).await;
            }
            return Err(format!(
                "pausing container {id} of the same pod, to freeze the pod as one: {e}"
            ));
        }
        paused.push(id.clone());
    }
    let since = Instant::now();
    with_frozen(|f| {
        for id in &paused {
            f.insert(
                id.clone(),
                Frozen {
                    sandbox: sandbox.into(),
                    since,
                },
            );
        }
    });
    if !paused.is_empty() {
        info!(sandbox, siblings = ?paused, "froze the pod's other containers with the one moving");
    }
    Ok(paused.len())
}

/// The pod's containers other than `leader` whose task runs.
async fn running_siblings(
    cd: &Containerd,
    sandbox: &str,
    leader: &str,
) -> Result<Vec<String>, String> {
    let all = cd
        .list(&format!("labels.\"{LABEL_KIND}\"==container"))
        .await
        .map_err(|e| format!("listing the pod's containers: {e}"))?;
    let mut running = Vec::new();
    for c in all {
        let in_pod = spec_of(&c)
            .map(|s| s["annotations"][ANNOTATION_SANDBOX_ID] == sandbox)
            .unwrap_or(false);
        if in_pod && c.id != leader {
            if let Ok((_, TASK_RUNNING)) = cd.task_state(&c.id).await {
                running.push(c.id);
            }
        }
    }
    Ok(running)
}

/// Takes container `id` out of the frozen set for its own migration:
/// `Some(how long it has been frozen)` when its pod froze it.
pub fn claim(id: &str) -> Option<Duration> {
    with_frozen(|f| f.remove(id).map(|x| x.since.elapsed())).flatten()
}

/// Resumes every container of `sandbox` still frozen with its pod;
/// `why` goes to the log.
pub async fn thaw(socket: &Path, sandbox: &str, why: &str) -> Vec<String> {
    let ids: Vec<String> = with_frozen(|f| {
        let ids: Vec<String> = f
            .iter()
            .filter(|(_, x)| x.sandbox == sandbox)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            f.remove(id);
        }
        ids
    })
    .unwrap_or_default();
    if ids.is_empty() {
        return ids;
    }
    warn!(sandbox, containers = ?ids, why, "resuming containers frozen with their pod");
    for id in &ids {
        resume_if_paused(socket, id).await;
    }
    ids
}

/// Resumes `id` if its task is paused (a pulled sibling whose migration
/// failed before its rollback had anything to resume).
pub async fn resume_if_paused(socket: &Path, id: &str) {
    let Ok(cd) = Containerd::connect(socket, CRI_NAMESPACE).await else {
        warn!(
            container = id,
            "cannot reach containerd to resume a frozen container"
        );
        return;
    };
    if let Ok((_, TASK_PAUSED)) = cd.task_state(id).await {
        if let Err(e) = cd.resume(id).await {
            warn!(container = id, error = %e, "resuming a container frozen with its pod failed");
        }
    }
}

/// After the first container's hand-over: siblings not pulled within
/// `timeout` resume here (their pod's link stays down: its address left).
pub fn thaw_unclaimed_after(socket: PathBuf, sandbox: String, timeout: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        let left = thaw(
            &socket,
            &sandbox,
            "no pull came for them from the node the pod moved to",
        )
        .await;
        if !left.is_empty() {
            super::source::keep_link_down(&sandbox);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_is_claimed_once_and_only_if_its_pod_froze_it() {
        with_frozen(|f| {
            f.insert(
                "c-claim".into(),
                Frozen {
                    sandbox: "sb".into(),
                    since: Instant::now(),
                },
            )
        });
        assert!(claim("c-claim").is_some());
        assert!(claim("c-claim").is_none());
        assert!(claim("never-frozen").is_none());
    }
}
