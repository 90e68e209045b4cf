//! A pod freezes as one. Its containers share the pod's loopback, address,
//! IPC and volumes, so none may run on here once a sibling has left: when a
//! container of a pod is frozen for a migration, every other running
//! container of the pod is paused in the same instant ([`freeze_siblings`],
//! the sender's `before_freeze`). Each then stays frozen until the
//! destination's kubelet starts its copy there and pulls it: it is dumped
//! frozen ([`claim`]; the migration's `already_frozen`), with the technique
//! and limits of the container whose freeze paused it ([`Follow`]).
//!
//! Undo ([`settle`]): if the migration whose freeze paused them fails, they
//! resume. If one is not pulled within [`FOLLOW_TIMEOUT`] after that
//! migration succeeded (the destination pod lacks it, or its kubelet gave
//! up), it resumes here, without the pod's address, which left. A pull of a
//! frozen container waits until the migration that froze it has ended, and
//! is refused if that one stayed here.
//!
//! The kubelet starts a pod's containers one after the other, so a frozen
//! container is out from the pod's freeze until its own restore (reported
//! per pulled container as `pod_frozen_before_ms` plus its own downtime).
//! The frozen set lives in the agent's memory: a pull of a container found
//! paused with no record (the agent restarted) dumps it as it is.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use mose_wire::Technique;
use tokio::sync::watch;
use tracing::{info, warn};

use super::CRI_NAMESPACE;
use crate::{
    containerd::{Containerd, TASK_PAUSED, TASK_RUNNING},
    sender::BeforeFreezeFn,
};

/// How long a container frozen with its pod waits for its pull before it
/// resumes here. A kubelet creates and starts the next container as soon as
/// the previous StartContainer returns; this leaves room for a slow image
/// pull on the destination.
pub const FOLLOW_TIMEOUT: Duration = Duration::from_secs(120);

/// How the containers frozen with a pod's moving container follow it: its
/// technique (see [`frozen_technique`]) and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Follow {
    pub technique: Technique,
    pub bandwidth_cap_bps: Option<u64>,
    pub compress: bool,
}

/// The technique for a container that is already frozen: pre-copy rounds
/// would only lengthen its outage (pre-copy → cold, hybrid → post-copy).
pub fn frozen_technique(t: Technique) -> Technique {
    match t {
        Technique::Precopy => Technique::Cold,
        Technique::Hybrid => Technique::Postcopy,
        t => t,
    }
}

/// How the migration whose freeze paused a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Moving,
    Moved,
    Stayed,
}

/// A container frozen with its pod, waiting for its pull.
struct Frozen {
    sandbox: String,
    /// The container whose freeze paused it.
    by: String,
    since: Instant,
    follow: Follow,
    outcome: watch::Receiver<Outcome>,
}

#[derive(Default)]
struct Registry {
    /// Pods (sandbox ids) whose first container to move failed to, with
    /// that container and when: the pod stays here as a whole.
    stayed: HashMap<String, (String, Instant)>,
    /// Frozen containers by containerd container id.
    frozen: HashMap<String, Frozen>,
    /// The outcome of each migration that froze others, by its container.
    freezers: HashMap<String, watch::Sender<Outcome>>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn with_registry<T>(f: impl FnOnce(&mut Registry) -> T) -> Option<T> {
    let mut g = REGISTRY.lock().ok()?;
    Some(f(g.get_or_insert_with(Registry::default)))
}

/// The sender hook that freezes `leader`'s running siblings in pod
/// `sandbox` just before `leader` itself is paused; `skip` tells which
/// containers not to touch (their own migrations are under way).
pub fn hook(
    socket: PathBuf,
    sandbox: String,
    leader: String,
    follow: Follow,
    skip: fn(&str) -> bool,
) -> BeforeFreezeFn {
    Arc::new(move || {
        let (socket, sandbox, leader) = (socket.clone(), sandbox.clone(), leader.clone());
        Box::pin(async move {
            freeze_siblings(&socket, &sandbox, &leader, follow, skip)
                .await
                .map(|_| ())
        })
    })
}

/// Pauses every running container of pod `sandbox` but `leader` and those
/// `skip` names; returns how many. On an error, those it paused resume.
pub async fn freeze_siblings(
    socket: &Path,
    sandbox: &str,
    leader: &str,
    follow: Follow,
    skip: fn(&str) -> bool,
) -> Result<usize, String> {
    let cd = Containerd::connect(socket, CRI_NAMESPACE)
        .await
        .map_err(|e| format!("connecting to containerd: {e}"))?;
    let running = running_siblings(&cd, sandbox, leader).await?;
    let mut paused: Vec<String> = Vec::new();
    for id in running.iter().filter(|id| !skip(id)) {
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
    with_registry(|r| {
        let (tx, rx) = watch::channel(Outcome::Moving);
        r.freezers.insert(leader.into(), tx);
        for id in &paused {
            let f = Frozen {
                sandbox: sandbox.into(),
                by: leader.into(),
                since,
                follow,
                outcome: rx.clone(),
            };
            r.frozen.insert(id.clone(), f);
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
    let all = super::source::containers_of(cd, sandbox)
        .await
        .map_err(|e| format!("listing the pod's containers: {e}"))?;
    let mut running = Vec::new();
    for c in all {
        if c.id != leader {
            if let Ok((_, TASK_RUNNING)) = cd.task_state(&c.id).await {
                running.push(c.id);
            }
        }
    }
    Ok(running)
}

/// Refuses the pull of container `id` of pod `sandbox` when the pod's first
/// container failed to move (within [`FOLLOW_TIMEOUT`]): the pod stays here
/// as a whole rather than split. Pulling that first container again is a
/// new attempt and clears the mark.
pub fn check_not_stayed(sandbox: &str, id: &str) -> Result<(), String> {
    with_registry(|r| match r.stayed.get(sandbox) {
        Some((first, _)) if first == id => {
            r.stayed.remove(sandbox);
            Ok(())
        }
        Some((first, at)) if at.elapsed() < FOLLOW_TIMEOUT => Err(format!(
            "the pod's first container to move ({first}) failed to, {:.0?} ago: the pod \
             stays on this node as a whole; delete the continuing pod and create it again",
            at.elapsed()
        )),
        _ => {
            r.stayed.remove(sandbox);
            Ok(())
        }
    })
    .unwrap_or(Ok(()))
}

/// Marks pod `sandbox` as staying here: its first container to move, `id`,
/// failed to.
pub fn mark_stayed(sandbox: &str, id: &str) {
    with_registry(|r| r.stayed.insert(sandbox.into(), (id.into(), Instant::now())));
}

/// A frozen container claimed for its own migration.
#[derive(Debug, Clone, Copy)]
pub struct Claimed {
    /// How long it has been frozen.
    pub frozen_for: Duration,
    pub follow: Follow,
}

/// Claims container `id` for its own pull: `Ok(None)` when its pod did not
/// freeze it (or it has been resumed since). A frozen one waits (up to
/// `wait`) until the migration that froze it has ended; if that one stayed
/// here, the pull is refused (this container resumes with it).
pub async fn claim(id: &str, wait: Duration) -> Result<Option<Claimed>, String> {
    let Some(mut outcome) =
        with_registry(|r| r.frozen.get(id).map(|f| f.outcome.clone())).flatten()
    else {
        return Ok(None);
    };
    let ended = tokio::time::timeout(wait, outcome.wait_for(|o| *o != Outcome::Moving)).await;
    let o = match ended {
        Ok(Ok(o)) => *o,
        // the sender went with its registry entry: it settled
        Ok(Err(_)) => Outcome::Moved,
        Err(_) => {
            return Err(format!(
                "container {id} was frozen with its pod, whose first container is still \
                 moving after {wait:?}; ask again once that container runs on the destination"
            ))
        }
    };
    if o == Outcome::Stayed {
        return Err(format!(
            "container {id} was frozen with its pod, whose first container did not move: \
             it stays and runs on this node"
        ));
    }
    Ok(with_registry(|r| r.frozen.remove(id))
        .flatten()
        .map(|f| Claimed {
            frozen_for: f.since.elapsed(),
            follow: f.follow,
        }))
}

/// The migration of container `by` in pod `sandbox` ended: what its freeze
/// paused resumes now if it did not move, or after [`FOLLOW_TIMEOUT`] if
/// no pull claims it (the pod's link then stays down: its address left).
pub async fn settle(socket: &Path, sandbox: &str, by: &str, moved: bool) {
    if !moved {
        thaw(socket, by, "the migration that froze them did not complete").await;
    }
    let outcome = if moved {
        Outcome::Moved
    } else {
        Outcome::Stayed
    };
    if let Some(tx) = with_registry(|r| r.freezers.remove(by)).flatten() {
        let _ = tx.send(outcome);
    }
    let froze_any = with_registry(|r| r.frozen.values().any(|f| f.by == by)).unwrap_or(false);
    if moved && froze_any {
        let (socket, sandbox, by) = (socket.to_path_buf(), sandbox.to_string(), by.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(FOLLOW_TIMEOUT).await;
            let left = thaw(
                &socket,
                &by,
                "no pull came for them from the node the pod moved to",
            )
            .await;
            if !left.is_empty() {
                super::source::keep_link_down(&sandbox);
            }
        });
    }
}

/// Resumes every container still frozen by `by`'s migration.
async fn thaw(socket: &Path, by: &str, why: &str) -> Vec<String> {
    let frozen: Vec<(String, String)> = with_registry(|r| {
        let ids: Vec<String> = r
            .frozen
            .iter()
            .filter(|(_, f)| f.by == by)
            .map(|(id, _)| id.clone())
            .collect();
        ids.into_iter()
            .filter_map(|id| r.frozen.remove(&id).map(|f| (id, f.sandbox)))
            .collect()
    })
    .unwrap_or_default();
    for (id, sandbox) in &frozen {
        warn!(container = %id, sandbox = %sandbox, why, "resuming a container frozen with its pod");
        resume_if_paused(socket, id).await;
    }
    frozen.into_iter().map(|(id, _)| id).collect()
}

/// Resumes `id` if its task is paused.
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

/// Whether container `id`'s task is paused (frozen by an earlier agent,
/// say, whose record died with it).
pub async fn is_paused(socket: &Path, id: &str) -> bool {
    match Containerd::connect(socket, CRI_NAMESPACE).await {
        Ok(cd) => matches!(cd.task_state(id).await, Ok((_, TASK_PAUSED))),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follow() -> Follow {
        Follow {
            technique: Technique::Precopy,
            bandwidth_cap_bps: None,
            compress: false,
        }
    }

    fn freeze(id: &str, by: &str) {
        with_registry(|r| {
            let rx = match r.freezers.get(by) {
                Some(tx) => tx.subscribe(),
                None => {
                    let (tx, rx) = watch::channel(Outcome::Moving);
                    r.freezers.insert(by.into(), tx);
                    rx
                }
            };
            r.frozen.insert(
                id.into(),
                Frozen {
                    sandbox: "sb".into(),
                    by: by.into(),
                    since: Instant::now(),
                    follow: follow(),
                    outcome: rx,
                },
            );
        });
    }

    #[tokio::test]
    async fn a_frozen_container_is_claimed_once_its_freezer_moved_and_never_twice() {
        freeze("c-moved", "leader-moved");
        let waiting = tokio::spawn(claim("c-moved", Duration::from_secs(5)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "waits while the leader moves");
        settle(Path::new("/nonexistent"), "sb", "leader-moved", true).await;
        let c = waiting.await.unwrap().unwrap().expect("claimed");
        assert_eq!(c.follow, follow());
        assert!(claim("c-moved", Duration::from_secs(1))
            .await
            .unwrap()
            .is_none());
        assert!(claim("never-frozen", Duration::from_secs(1))
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn a_pull_is_refused_when_the_freezer_stayed_or_is_still_moving() {
        freeze("c-slow", "leader-slow");
        let e = claim("c-slow", Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(e.contains("still moving"), "{e}");
        freeze("c-stayed", "leader-stayed");
        let waiting = tokio::spawn(claim("c-stayed", Duration::from_secs(5)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        // not moved: thawed (no containerd here: resuming is a logged no-op)
        settle(Path::new("/nonexistent"), "sb", "leader-stayed", false).await;
        let e = waiting.await.unwrap().unwrap_err();
        assert!(e.contains("did not move"), "{e}");
        assert!(with_registry(|r| !r.frozen.contains_key("c-stayed")).unwrap());
    }

    #[test]
    fn a_pod_whose_first_container_stayed_stays_whole_until_that_one_is_pulled_again() {
        mark_stayed("sb-stayed", "first");
        let e = check_not_stayed("sb-stayed", "sidecar").unwrap_err();
        assert!(e.contains("stays on this node as a whole"), "{e}");
        check_not_stayed("sb-stayed", "first").unwrap();
        check_not_stayed("sb-stayed", "sidecar").unwrap();
        check_not_stayed("sb-other", "sidecar").unwrap();
    }

    #[test]
    fn frozen_containers_skip_the_live_rounds() {
        assert_eq!(frozen_technique(Technique::Precopy), Technique::Cold);
        assert_eq!(frozen_technique(Technique::Hybrid), Technique::Postcopy);
        assert_eq!(frozen_technique(Technique::Postcopy), Technique::Postcopy);
        assert_eq!(frozen_technique(Technique::Cold), Technique::Cold);
    }
}
