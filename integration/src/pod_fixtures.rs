//! The two-container pod the CRI tests and the pod benchmark run: the state
//! service and a sidecar that asks it over the pod's loopback, created and
//! started the way a kubelet does.

use std::{collections::HashMap, path::Path, time::Duration};

use anyhow::{bail, Result};
use mose_workloads::images::STATE_SERVICE_REF;

use crate::cri::{ContainerSpec, Cri, PodSpec};

/// The state service's port in the pod.
pub const PORT: u16 = 7070;
/// `ContainerState::ContainerRunning`.
pub const RUNNING: i32 = 1;
/// `PodSandboxState::SandboxReady`.
pub const READY: i32 = 0;

fn owned(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Pod `name` in namespace `default`, labelled `app=<name>`, its logs under
/// `node_dir/pods/<uid>`.
pub fn pod(node_dir: &Path, name: &str, annotations: &[(&str, &str)]) -> PodSpec {
    let uid = mose_tests::unique_id(name);
    PodSpec {
        name: name.into(),
        namespace: "default".into(),
        log_dir: node_dir.join("pods").join(&uid).display().to_string(),
        uid,
        labels: HashMap::from([("app".into(), name.into())]),
        annotations: owned(annotations),
    }
}

/// The state service with `state_mib` MiB of state on [`PORT`].
pub fn state_container(state_mib: u32, annotations: &[(&str, &str)]) -> ContainerSpec {
    ContainerSpec {
        name: "state".into(),
        image: STATE_SERVICE_REF.into(),
        command: ["/usr/local/bin/mose-state-service", "--state-mib"]
            .map(String::from)
            .to_vec(),
        args: vec![state_mib.to_string(), "--port".into(), PORT.to_string()],
        annotations: owned(annotations),
        log_path: "state/0.log".into(),
        memory_limit: None,
    }
}

/// Asks the service over the pod's loopback twice a second (a new
/// connection each time), printing the answers.
pub fn sidecar() -> ContainerSpec {
    let script = format!("while :; do echo PING | nc -w 1 127.0.0.1 {PORT}; sleep 0.5; done");
    ContainerSpec {
        name: "sidecar".into(),
        image: STATE_SERVICE_REF.into(),
        command: vec!["/bin/sh".into(), "-c".into(), script],
        log_path: "sidecar/0.log".into(),
        ..Default::default()
    }
}

/// CreateContainer + StartContainer, then waits (30 s) until it runs.
pub fn start(cri: &mut Cri, pod_id: &str, pod: &PodSpec, spec: &ContainerSpec) -> Result<String> {
    let id = cri.create_container(pod_id, pod, spec)?;
    cri.start_container(&id)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if cri.container_status(&id)?.state == RUNNING {
            return Ok(id);
        }
        if std::time::Instant::now() > deadline {
            bail!("container {} did not run within 30 s", spec.name);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lines of the container's CRI log (`log_path` under the pod's log
/// directory) that carry a state-service answer on stdout.
pub fn answers_in_log(pod: &PodSpec, log_path: &str) -> usize {
    log_of(pod, log_path)
        .iter()
        .filter(|(stream, l)| {
            stream == "stdout" && mose_workloads::protocol::PingReply::parse(l).is_ok()
        })
        .count()
}

/// Plays a kubelet: RunPodSandbox (handler `mose`), then CreateContainer
/// and StartContainer for each container in order, each running before the
/// next. Returns the pod's id and its containers'.
pub fn run_pod_with(
    cri: &mut Cri,
    pod: &PodSpec,
    containers: &[ContainerSpec],
) -> Result<(String, Vec<String>)> {
    let pod_id = cri.run_pod(pod, crate::cri::MOSE_HANDLER)?;
    let mut ids = Vec::new();
    for c in containers {
        ids.push(start(cri, &pod_id, pod, c)?);
    }
    Ok((pod_id, ids))
}

/// Lines of the container's CRI log on stderr: the sidecar's failed
/// queries (`nc: can't connect ...`).
pub fn errors_in_log(pod: &PodSpec, log_path: &str) -> Vec<String> {
    log_of(pod, log_path)
        .into_iter()
        .filter(|(stream, _)| stream == "stderr")
        .map(|(_, l)| l)
        .collect()
}

/// Whether the CRI container `id`'s task is paused (frozen), asked of the
/// node's containerd directly: the CRI reports a paused container as
/// running.
pub fn task_paused(containerd_socket: &Path, id: &str) -> Result<bool> {
    use mose_migrate::containerd::{Containerd, TASK_PAUSED};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (_, status) = rt.block_on(async {
        let cd = Containerd::connect(containerd_socket, mose_migrate::pods::CRI_NAMESPACE).await?;
        cd.task_state(id).await
    })?;
    Ok(status == TASK_PAUSED)
}

/// The container's CRI log (`log_path` under the pod's log directory) as
/// `(stream, line)` pairs; empty while it does not exist.
fn log_of(pod: &PodSpec, log_path: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(&pod.log_dir).join(log_path)).unwrap_or_default();
    crate::cri::log_lines(&text)
}
