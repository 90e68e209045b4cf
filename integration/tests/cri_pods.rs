//! Pods like a kubelet runs them: containerd's CRI plugin on a testbed node
//! with the runtime handler `mose`, driven through the CRI (`runtime.v1`)
//! by MOSE's kubelet-like client. A two-container pod (the state service
//! and a sidecar reading it over localhost) gets a pod IP on the service
//! segment; ExecSync, Exec and Attach streaming, CRI logs, ContainerStats,
//! UpdateContainerResources, stop and removal work; `mose.io/*` pod and container annotations reach
//! the shim, and a malformed one is refused with its name.

use std::path::Path;
use std::time::Duration;

use mose_integration::cluster::Cluster;
use mose_integration::cri::{ContainerSpec, Cri, PodSpec, MOSE_HANDLER};
use mose_integration::cri_stream;
use mose_integration::pod_fixtures::{self, sidecar, PORT, READY, RUNNING};
use mose_integration::testbed::segment;
use mose_integration::wait_for;
use mose_workloads::images::{cache_dir, state_service_archive};
use mose_workloads::probe::ping;
use mose_workloads::protocol::PingReply;

fn cluster() -> (Cluster, Cri) {
    let c = Cluster::up(1, None).expect("testbed up");
    let state = state_service_archive(None, &cache_dir()).expect("state-service image");
    c.enable_pods(&[state]).expect("pods enabled");
    let cri = Cri::connect(c.node(1).unwrap().containerd_socket()).expect("CRI");
    (c, cri)
}

fn pod(c: &Cluster, name: &str, annotations: &[(&str, &str)]) -> PodSpec {
    pod_fixtures::pod(c.node(1).unwrap().dir(), name, annotations)
}

fn state_container(annotations: &[(&str, &str)]) -> ContainerSpec {
    pod_fixtures::state_container(16, annotations)
}

/// The bundle's OCI spec of a CRI container on node `dir` (what the shim got).
fn shim_spec(state_dir: &Path, id: &str) -> serde_json::Value {
    let p = state_dir
        .join("io.containerd.runtime.v2.task/k8s.io")
        .join(id)
        .join("config.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("config.json")
}

fn start(cri: &mut Cri, pod_id: &str, pod: &PodSpec, spec: &ContainerSpec) -> String {
    pod_fixtures::start(cri, pod_id, pod, spec).expect("the container runs")
}

/// The memory limit the container sees in its own cgroup (v2, else v1).
fn memory_limit(cri: &mut Cri, id: &str) -> String {
    let out = cri
        .exec_sync(
            id,
            &[
                "sh",
                "-c",
                "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
            ],
            10,
        )
        .expect("reading the memory limit");
    out.stdout.trim().to_string()
}

#[test]
fn a_two_container_pod_runs_under_mose_through_the_cri() {
    let (c, mut cri) = cluster();
    let node = c.node(1).unwrap();
    let pod = pod(&c, "state-pod", &[("mose.io/max-downtime", "300ms")]);
    let pod_id = cri.run_pod(&pod, MOSE_HANDLER).expect("RunPodSandbox");
    let status = cri.pod_status(&pod_id).unwrap();
    assert_eq!(status.state, READY, "{status:?}");
    let ip = status
        .network
        .as_ref()
        .map(|n| n.ip.clone())
        .unwrap_or_default();
    let (first, last) = segment::pod_range(1).unwrap();
    let addr: std::net::Ipv4Addr = ip.parse().unwrap_or_else(|_| panic!("pod IP {ip:?}"));
    assert!(
        first <= addr && addr <= last,
        "pod IP {addr} in node 1's range"
    );
    assert_eq!(
        status.labels.get("app").map(String::as_str),
        Some("state-pod")
    );

    let state = start(
        &mut cri,
        &pod_id,
        &pod,
        &state_container(&[("mose.io/technique", "precopy")]),
    );
    let side = start(&mut cri, &pod_id, &pod, &sidecar());

    // the service answers on the pod IP from the user netns
    let target = format!("{ip}:{PORT}");
    wait_for("the service on the pod IP", Duration::from_secs(30), || {
        let t = target.clone();
        c.bed
            .run_in_user(move || Ok(ping(&t).is_ok()))
            .unwrap_or(false)
    });

    // the sidecar reaches it over localhost: its CRI log holds answers
    wait_for(
        "the sidecar's log to hold an answer",
        Duration::from_secs(20),
        || pod_fixtures::answers_in_log(&pod, "sidecar/0.log") > 0,
    );

    // ExecSync: output and exit code
    let out = cri
        .exec_sync(&side, &["echo", "hello from the pod"], 10)
        .unwrap();
    assert_eq!(
        (out.exit_code, out.stdout.as_str()),
        (0, "hello from the pod\n")
    );
    let out = cri
        .exec_sync(&side, &["sh", "-c", "echo oops >&2; exit 3"], 10)
        .unwrap();
    assert_eq!((out.exit_code, out.stderr.as_str()), (3, "oops\n"));

    // Exec streaming (kubectl exec's WebSocket protocol): both streams and
    // the exit code
    let url = cri
        .exec_url(&side, &["sh", "-c", "echo out; echo err >&2; exit 7"])
        .unwrap();
    // the streaming server listens on the node's loopback, in its netns
    let out = node
        .run_in_netns(move || cri_stream::collect(&url, Duration::from_secs(30), |_| false))
        .unwrap();
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("out\n", "err\n"),
        "{out:?}"
    );
    assert_eq!(out.exit_code(), Some(7), "{out:?}");

    // Attach streaming: the sidecar's output as it is written
    let url = cri.attach_url(&side).unwrap();
    let out = node
        .run_in_netns(move || {
            cri_stream::collect(&url, Duration::from_secs(30), |o| {
                o.stdout.lines().any(|l| PingReply::parse(l).is_ok())
            })
        })
        .unwrap();
    assert!(out.stdout.contains('\n'), "{out:?}");

    // the pod's and the container's mose.io annotations reached the shim
    let spec = shim_spec(&node.state(), &state);
    assert_eq!(
        spec["annotations"]["mose.io/max-downtime"], "300ms",
        "{}",
        spec["annotations"]
    );
    assert_eq!(spec["annotations"]["mose.io/technique"], "precopy");

    // ContainerStats: the state service's 16 MiB are in its working set
    let stats = cri.container_stats(&state).unwrap();
    let ws = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value)
        .unwrap_or(0);
    assert!(ws >= 16 << 20, "working set {ws} bytes");

    // UpdateContainerResources reaches the container's cgroup
    let linux = k8s_cri::v1::LinuxContainerResources {
        memory_limit_in_bytes: 96 << 20,
        ..Default::default()
    };
    cri.update_resources(&side, linux)
        .expect("UpdateContainerResources");
    assert_eq!(memory_limit(&mut cri, &side), (96u64 << 20).to_string());

    // stop and remove: nothing listed, the pod's address released
    cri.remove_pod(&pod_id).expect("stop and remove the pod");
    assert!(cri.pods().unwrap().iter().all(|p| p.id != pod_id));
    let ipam = node
        .dir()
        .join("cri-ipam")
        .join(segment::POD_NETWORK)
        .join(&ip);
    assert!(!ipam.exists(), "{} released", ipam.display());
}

#[test]
fn malformed_mose_annotations_are_refused_with_their_name() {
    let (c, mut cri) = cluster();
    // on the pod: the sandbox itself is refused
    let bad_pod = pod(&c, "bad-pod", &[("mose.io/max-downtime", "banana")]);
    let e = cri.run_pod(&bad_pod, MOSE_HANDLER).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("mose.io/max-downtime"), "{msg}");
    assert!(
        cri.pods().unwrap().iter().all(|p| p.state != READY),
        "no pod left Ready"
    );

    // a service address on a pod: the CRI owns the pod's network
    let addr_pod = pod(
        &c,
        "addr-pod",
        &[
            ("mose.io/network", "svc"),
            ("mose.io/address", "10.89.0.77/24"),
        ],
    );
    let e = cri.run_pod(&addr_pod, MOSE_HANDLER).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("mose.io/network"), "{msg}");
    assert!(msg.contains("belongs to the CRI"), "{msg}");

    // on a container: refused when containerd's CRI creates its task (StartContainer)
    let pod = pod(&c, "good-pod", &[]);
    let pod_id = cri.run_pod(&pod, MOSE_HANDLER).expect("RunPodSandbox");
    let spec = state_container(&[("mose.io/technqiue", "precopy")]);
    let id = cri
        .create_container(&pod_id, &pod, &spec)
        .expect("CreateContainer");
    let e = cri.start_container(&id).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("mose.io/technqiue"), "{msg}");
    assert!(msg.contains("did you mean mose.io/technique"), "{msg}");
    assert_ne!(cri.container_status(&id).unwrap().state, RUNNING);
    cri.remove_pod(&pod_id).expect("stop and remove the pod");
}
