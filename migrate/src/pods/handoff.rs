//! The destination's side of a pulled container: the CRI has created the
//! container, and its shim waits (through the node agent) for the images to
//! restore from. The agent registers the wait under the container's
//! [`PullKey`]; the receiver of the matching incoming migration takes it and,
//! in place of creating a container, hands the images over and waits for
//! the shim's outcome.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::oneshot;

/// A container of a pod, by the pod's Kubernetes namespace and name and the
/// container's name in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PullKey {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

impl std::fmt::Display for PullKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "container {} of pod {}/{}",
            self.container, self.namespace, self.pod
        )
    }
}

/// What the receiver hands the waiting shim.
#[derive(Debug)]
pub struct Handoff {
    /// The assembled CRIU image directory.
    pub images: PathBuf,
    /// The lazy-page handler's socket (post-copy, hybrid).
    pub lazy_socket: Option<PathBuf>,
    /// The shim's outcome: the restored init's pid, or why the restore failed.
    pub outcome: oneshot::Sender<Result<u32, String>>,
}

/// A container waiting for its migration.
#[derive(Debug)]
pub struct Target {
    /// The CRI's containerd container id on this node.
    pub container_id: String,
    ready: oneshot::Sender<Handoff>,
    /// Told when the receiver takes the wait (the source's `Begin` arrived).
    begun: Option<oneshot::Sender<()>>,
}

/// The waits of this node, shared by the agent's pod socket and its
/// migration endpoint.
#[derive(Debug, Clone, Default)]
pub struct HandoffRegistry {
    waiting: Arc<Mutex<HashMap<PullKey, Target>>>,
}

/// The agent's end of a registered wait; dropping it withdraws the wait.
pub struct Waiter {
    registry: HandoffRegistry,
    key: PullKey,
    ready: Option<oneshot::Receiver<Handoff>>,
    begun: Option<oneshot::Receiver<()>>,
}

impl HandoffRegistry {
    /// Registers `container_id` as the destination of `key`; refused while
    /// another wait for the same container is pending.
    pub fn register(&self, key: PullKey, container_id: &str) -> Result<Waiter, String> {
        let (tx, rx) = oneshot::channel();
        let (begun_tx, begun_rx) = oneshot::channel();
        let mut w = self.waiting.lock().map_err(|_| "registry poisoned")?;
        if let Some(t) = w.get(&key) {
            if !t.ready.is_closed() {
                return Err(format!(
                    "{key} is already being migrated here (into container {})",
                    t.container_id
                ));
            }
        }
        w.insert(
            key.clone(),
            Target {
                container_id: container_id.into(),
                ready: tx,
                begun: Some(begun_tx),
            },
        );
        Ok(Waiter {
            registry: self.clone(),
            key,
            ready: Some(rx),
            begun: Some(begun_rx),
        })
    }

    /// Takes the wait for `key`, if a live one is registered.
    pub fn take(&self, key: &PullKey) -> Option<Target> {
        let mut w = self.waiting.lock().ok()?;
        let mut t = w.remove(key).filter(|t| !t.ready.is_closed())?;
        if let Some(b) = t.begun.take() {
            let _ = b.send(());
        }
        Some(t)
    }
}

impl Target {
    /// Hands the images to the shim and waits up to `timeout` for its
    /// outcome. Errors say which side gave up.
    pub async fn hand_off(
        self,
        images: PathBuf,
        lazy_socket: Option<PathBuf>,
        timeout: Duration,
    ) -> Result<u32, String> {
        let (tx, rx) = oneshot::channel();
        self.ready
            .send(Handoff {
                images,
                lazy_socket,
                outcome: tx,
            })
            .map_err(|_| {
                format!(
                    "the shim of container {} stopped waiting for its migration",
                    self.container_id
                )
            })?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(pid))) => Ok(pid),
            Ok(Ok(Err(e))) => Err(format!(
                "the shim of container {} could not restore it: {e}",
                self.container_id
            )),
            Ok(Err(_)) => Err(format!(
                "the shim of container {} went away during the restore",
                self.container_id
            )),
            Err(_) => Err(format!(
                "the shim of container {} did not report its restore within {timeout:?} \
                 (did the CRI start it?)",
                self.container_id
            )),
        }
    }
}

impl Waiter {
    /// Waits up to `begin` for the source's migration to begin here, then
    /// up to `timeout` for the receiver's hand-over.
    pub async fn ready(&mut self, begin: Duration, timeout: Duration) -> Result<Handoff, String> {
        if let Some(b) = self.begun.take() {
            match tokio::time::timeout(begin, b).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(format!("the wait for {} was withdrawn", self.key));
                }
                Err(_) => {
                    return Err(format!(
                        "the source did not begin the migration of {} within {begin:?}: see the \
                         source agent's log (can it reach this node's --advertise endpoint?)",
                        self.key
                    ))
                }
            }
        }
        let rx = self
            .ready
            .take()
            .ok_or_else(|| "the hand-over was already taken".to_string())?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(h)) => Ok(h),
            Ok(Err(_)) => Err(format!(
                "the migration of {} ended before its restore",
                self.key
            )),
            Err(_) => Err(format!(
                "the source did not deliver {} within {timeout:?}",
                self.key
            )),
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // close our end first, so that an entry nobody took reads as closed
        drop(self.ready.take());
        if let Ok(mut w) = self.registry.waiting.lock() {
            if w.get(&self.key).is_some_and(|t| t.ready.is_closed()) {
                w.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PullKey {
        PullKey {
            namespace: "default".into(),
            pod: "web".into(),
            container: "app".into(),
        }
    }

    #[tokio::test]
    async fn a_registered_wait_gets_the_images_and_returns_the_outcome() {
        let reg = HandoffRegistry::default();
        let mut waiter = reg.register(key(), "c2").unwrap();
        assert!(reg.register(key(), "c3").is_err(), "one wait per container");
        let target = reg.take(&key()).unwrap();
        assert_eq!(target.container_id, "c2");
        let shim = tokio::spawn(async move {
            let h = waiter
                .ready(Duration::from_secs(5), Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(h.images, PathBuf::from("/img"));
            h.outcome.send(Ok(42)).unwrap();
        });
        let pid = target
            .hand_off("/img".into(), None, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(pid, 42);
        shim.await.unwrap();
    }

    #[tokio::test]
    async fn a_source_that_never_begins_is_reported_as_such() {
        let reg = HandoffRegistry::default();
        let mut waiter = reg.register(key(), "c2").unwrap();
        let e = waiter
            .ready(Duration::from_millis(50), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.contains("did not begin"), "{e}");
    }

    #[tokio::test]
    async fn a_withdrawn_wait_is_not_taken_and_a_silent_shim_times_out() {
        let reg = HandoffRegistry::default();
        drop(reg.register(key(), "c2").unwrap());
        assert!(reg.take(&key()).is_none());
        let _waiter = reg.register(key(), "c2").unwrap();
        let target = reg.take(&key()).unwrap();
        let e = target
            .hand_off("/img".into(), None, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(e.contains("did not report"), "{e}");
    }
}
