//! Pods migrated between nodes the Kubernetes way, through each node's CRI
//! (containerd's CRI plugin, handler `mose`), played as a controller and
//! kubelets would: the destination pod is created with
//! `mose.io/migrate-from: <node>/<namespace>/<pod>`; its sandbox gets the
//! source pod's IP (mose-pod-cni), each container's StartContainer returns
//! once the container runs restored from the source's, and the source stops
//! its copy and then the pod. A client's connection to the pod IP survives
//! every hand-over.

use std::time::Duration;

use mose_integration::cluster::{assert_connection_kept, Cluster};
use mose_integration::cri::{Cri, PodSpec, MOSE_HANDLER};
use mose_integration::pod_fixtures::{self, sidecar, PORT, READY, RUNNING};
use mose_integration::testbed::segment;
use mose_integration::wait_for;
use mose_network::pod::PodLink;
use mose_workloads::images::{cache_dir, state_service_archive};
use mose_workloads::probe::{ping, verify};

const POD: &str = "tracker";
const STATE_MIB: u32 = 16;

fn cluster() -> (Cluster, Vec<Cri>) {
    let c = Cluster::up(2, None).expect("testbed up");
    let state = state_service_archive(None, &cache_dir()).expect("state-service image");
    c.enable_pods(&[state]).expect("pods enabled");
    let cris = (1..=2)
        .map(|i| Cri::connect(c.node(i).unwrap().containerd_socket()).expect("CRI"))
        .collect();
    (c, cris)
}

/// A pod on node `i` as this test runs them (its pod annotations `extra`).
fn pod_on(c: &Cluster, i: usize, extra: &[(&str, &str)]) -> PodSpec {
    pod_fixtures::pod(c.node(i).unwrap().dir(), POD, extra)
}

/// The pod running on one node: its CRI ids.
struct Running {
    node: usize,
    pod: PodSpec,
    pod_id: String,
    state: String,
    sidecar: String,
    /// The pod's link as mose-pod-cni recorded it.
    link: PodLink,
}

fn link_of(c: &Cluster, node: usize, pod_id: &str) -> PodLink {
    let state_dir = segment::state_dir(c.node(node).unwrap().dir());
    PodLink::load(&state_dir, pod_id).expect("the pod's link record")
}

fn run_fresh(c: &Cluster, cris: &mut [Cri]) -> (Running, String) {
    let pod = pod_on(c, 1, &[("mose.io/max-downtime", "500ms")]);
    let cri = &mut cris[0];
    let pod_id = cri.run_pod(&pod, MOSE_HANDLER).expect("RunPodSandbox");
    let ip = pod_ip(cri, &pod_id);
    let state = pod_fixtures::start(
        cri,
        &pod_id,
        &pod,
        &pod_fixtures::state_container(STATE_MIB, &[]),
    )
    .expect("state service runs");
    let sidecar = pod_fixtures::start(cri, &pod_id, &pod, &sidecar()).expect("sidecar runs");
    let addr = format!("{ip}:{PORT}");
    wait_for("the service on the pod IP", Duration::from_secs(30), || {
        let a = addr.clone();
        c.bed
            .run_in_user(move || Ok(ping(&a).is_ok()))
            .unwrap_or(false)
    });
    let r = Running {
        node: 1,
        link: link_of(c, 1, &pod_id),
        pod,
        pod_id,
        state,
        sidecar,
    };
    (r, ip)
}

fn pod_ip(cri: &mut Cri, pod_id: &str) -> String {
    let s = cri.pod_status(pod_id).expect("PodSandboxStatus");
    s.network.map(|n| n.ip).unwrap_or_default()
}

/// Plays controller and kubelet: a pod continuing `from` on node `to`,
/// its containers created and started in order. Returns the new pod, or
/// the error of the StartContainer that failed.
fn continue_on(
    c: &Cluster,
    cris: &mut [Cri],
    from: &Running,
    to: usize,
    technique: &str,
) -> anyhow::Result<Running> {
    let origin = format!("{}/default/{POD}", c.endpoint(from.node)?);
    let pod = pod_on(
        c,
        to,
        &[
            ("mose.io/max-downtime", "500ms"),
            ("mose.io/migrate-from", &origin),
            ("mose.io/technique", technique),
        ],
    );
    let cri = &mut cris[to - 1];
    let pod_id = cri.run_pod(&pod, MOSE_HANDLER)?;
    let link = link_of(c, to, &pod_id);
    let state = pod_fixtures::start(
        cri,
        &pod_id,
        &pod,
        &pod_fixtures::state_container(STATE_MIB, &[]),
    )?;
    // the pod froze as one: the sidecar left behind waits frozen for its
    // own pull, and never runs without the service
    let source_node = c.node(from.node)?;
    anyhow::ensure!(
        pod_fixtures::task_paused(source_node.containerd_socket(), &from.sidecar)?,
        "the source's sidecar is frozen once the state service moved"
    );
    let sidecar = pod_fixtures::start(cri, &pod_id, &pod, &sidecar())?;
    Ok(Running {
        node: to,
        link,
        pod,
        pod_id,
        state,
        sidecar,
    })
}

/// After a hand-over: the source agent stopped the source pod; the
/// kubelet's removal leaves nothing of it (sandbox, netns, link record,
/// cgroups) but the reservation of its address, which moved.
fn assert_source_gone(c: &Cluster, cris: &mut [Cri], source: &Running, ip: &str) {
    let node = c.node(source.node).unwrap();
    let state_dir = segment::state_dir(node.dir());
    let link = &source.link;
    let cri = &mut cris[source.node - 1];
    wait_for(
        "the source pod to be stopped by its node's agent",
        Duration::from_secs(30),
        || {
            cri.pod_status(&source.pod_id)
                .is_ok_and(|s| s.state != READY)
        },
    );
    for id in [&source.state, &source.sidecar] {
        assert_ne!(cri.container_status(id).unwrap().state, RUNNING);
    }
    cri.remove_pod(&source.pod_id)
        .expect("the kubelet removes it");
    assert!(cri.pods().unwrap().iter().all(|p| p.id != source.pod_id));
    assert!(!link.netns.exists(), "{} removed", link.netns.display());
    assert!(
        PodLink::load(&state_dir, &source.pod_id).is_err(),
        "record removed"
    );
    let ipam = node
        .dir()
        .join("cri-ipam")
        .join(segment::POD_NETWORK)
        .join(ip);
    // the address lives on at the destination: the source's range keeps it
    // reserved for the moved pod (and frees it when the pod comes back)
    let owner = std::fs::read_to_string(&ipam).unwrap_or_default();
    assert!(
        owner.starts_with("mose-moved-away"),
        "{} reserved for the moved pod: {owner:?}",
        ipam.display()
    );
    for hierarchy in ["memory", "pids", "unified", ""] {
        let cg = std::path::Path::new("/sys/fs/cgroup")
            .join(hierarchy)
            .join("k8s.io")
            .join(&source.state);
        assert!(!cg.exists(), "{} removed", cg.display());
    }
}

/// The new pod: Ready with the same IP and labels, its containers running,
/// the sidecar answered over localhost again.
fn assert_continued(cris: &mut [Cri], to: &Running, ip: &str) {
    let cri = &mut cris[to.node - 1];
    let s = cri.pod_status(&to.pod_id).unwrap();
    assert_eq!(s.state, READY, "{s:?}");
    assert_eq!(s.network.as_ref().map(|n| n.ip.as_str()), Some(ip));
    assert_eq!(s.labels.get("app").map(String::as_str), Some(POD));
    for id in [&to.state, &to.sidecar] {
        assert_eq!(cri.container_status(id).unwrap().state, RUNNING);
    }
    wait_for(
        "the restored sidecar to reach the service over localhost",
        Duration::from_secs(20),
        || pod_fixtures::answers_in_log(&to.pod, "sidecar/0.log") > 0,
    );
}

/// `auto`: the source's policy planned the pod as a whole (both
/// containers measured, the pod's targets), the first container followed
/// the plan, and the sidecar, frozen with it, followed with it.
fn assert_planned_as_a_pod(c: &Cluster, source: usize) {
    let log = c
        .node(source)
        .unwrap()
        .dir()
        .join("mose-state/migrations.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let out: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &serde_json::Value| r["direction"] == "out")
        .collect();
    let [.., state, sidecar] = &out[..] else {
        panic!("two pulls recorded in {}: {out:?}", log.display());
    };
    assert_eq!(state["pod_container"], "state");
    assert_eq!(state["status"], "ok");
    let plan = &state["plan"];
    let technique = &plan["decision"]["plan"]["technique"];
    assert_eq!(
        &state["technique"], technique,
        "the plan was followed: {plan}"
    );
    // the source pod came with mose.io/technique: postcopy (the move
    // before): the plan still chose among every technique
    let considered = plan["decision"]["candidates_considered"].as_u64().unwrap();
    assert!(
        considered > 1,
        "a free choice, not the old pod's fixed technique: {plan}"
    );
    let kpis = plan["kpis"].as_array().expect("predicted beside measured");
    assert!(
        kpis.iter()
            .any(|k| k["kpi"] == "downtime" && k["target"] == 500.0),
        "the pod's max-downtime is the plan's target: {kpis:?}"
    );
    // the pod's memory: the state service's 16 MiB and the sidecar's
    let memory = plan["measurements"]["memory_bytes"].as_u64().unwrap();
    assert!(memory > u64::from(STATE_MIB) << 20, "{memory}");
    assert_eq!(sidecar["pod_container"], "sidecar");
    assert_eq!(sidecar["status"], "ok");
    assert!(sidecar["pod_frozen_before_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_pod_moves_node_to_node_through_the_cri_keeping_ip_state_and_connections() {
    let (c, mut cris) = cluster();
    let (mut here, ip) = run_fresh(&c, &mut cris);
    let addr = format!("{ip}:{PORT}");
    let a = addr.clone();
    let before = c.as_user(move || ping(&a));
    let probe = c.one_connection_probe(&addr);
    for (to, technique) in [(2, "precopy"), (1, "postcopy"), (2, "auto")] {
        let failed_queries = pod_fixtures::errors_in_log(&here.pod, "sidecar/0.log");
        let next = continue_on(&c, &mut cris, &here, to, technique)
            .unwrap_or_else(|e| panic!("{technique} to node {to}: {e:#}"));
        assert_continued(&mut cris, &next, &ip);
        assert_eq!(
            pod_fixtures::errors_in_log(&here.pod, "sidecar/0.log"),
            failed_queries,
            "the source's sidecar never ran without its service"
        );
        assert_source_gone(&c, &mut cris, &here, &ip);
        if technique == "auto" {
            assert_planned_as_a_pod(&c, here.node);
        }
        here = next;
    }
    let r = probe.stop();
    assert_connection_kept(&r);
    let a = addr.clone();
    let (after, report) = c.as_user(move || Ok((ping(&a)?, verify(&a)?)));
    assert!(after.seq > before.seq);
    assert_eq!(after.sum, before.sum, "state checksum unchanged");
    assert!(report.is_ok(), "every page intact");
}

#[test]
fn a_failed_restore_leaves_the_source_pod_serving_and_the_new_pod_failed_with_the_cause() {
    let (c, mut cris) = cluster();
    let (here, ip) = run_fresh(&c, &mut cris);
    let addr = format!("{ip}:{PORT}");
    let probe = c.one_connection_probe(&addr);
    // the destination's container may hold far less memory than the
    // service's state: its restore fails there
    let origin = format!("{}/default/{POD}", c.endpoint(1).unwrap());
    let pod = pod_on(
        &c,
        2,
        &[
            ("mose.io/migrate-from", &origin),
            ("mose.io/technique", "cold"),
        ],
    );
    let cri = &mut cris[1];
    let pod_id = cri.run_pod(&pod, MOSE_HANDLER).expect("RunPodSandbox");
    assert_eq!(
        pod_ip(cri, &pod_id),
        ip,
        "the new sandbox holds the address"
    );
    let mut small = pod_fixtures::state_container(STATE_MIB, &[]);
    small.memory_limit = Some(6 << 20);
    let id = cri
        .create_container(&pod_id, &pod, &small)
        .expect("CreateContainer");
    let e = cri.start_container(&id).unwrap_err();
    let status = cri.container_status(&id).unwrap();
    assert_ne!(status.state, RUNNING);
    assert!(
        status.message.contains("restore") || status.reason.contains("Error"),
        "the cause in the container's status: {status:?} ({e:#})"
    );
    // the source serves on, with its state and the probe's connection
    let a = addr.clone();
    wait_for(
        "the source to answer again",
        Duration::from_secs(30),
        || {
            let a = a.clone();
            c.bed
                .run_in_user(move || Ok(ping(&a).is_ok()))
                .unwrap_or(false)
        },
    );
    let s = cris[0].pod_status(&here.pod_id).unwrap();
    assert_eq!(s.state, READY);
    assert_eq!(
        cris[0].container_status(&here.state).unwrap().state,
        RUNNING
    );
    // the sidecar, frozen with the pod, runs again
    let socket = c.node(1).unwrap().containerd_socket().to_path_buf();
    wait_for("the sidecar to be thawed", Duration::from_secs(30), || {
        pod_fixtures::task_paused(&socket, &here.sidecar).is_ok_and(|p| !p)
    });
    // the kubelet goes on to the next container: it does not follow alone,
    // the pod stays on node 1 as a whole
    let e = pod_fixtures::start(&mut cris[1], &pod_id, &pod, &sidecar()).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("stays on this node as a whole"), "{msg}");
    assert!(!pod_fixtures::task_paused(&socket, &here.sidecar).unwrap());
    let answered = pod_fixtures::answers_in_log(&here.pod, "sidecar/0.log");
    wait_for(
        "the source's sidecar to reach its service again",
        Duration::from_secs(20),
        || pod_fixtures::answers_in_log(&here.pod, "sidecar/0.log") > answered,
    );
    let r = probe.stop();
    assert_connection_kept(&r);
    let a = addr.clone();
    let report = c.as_user(move || verify(&a));
    assert!(report.is_ok(), "every page intact");
    // the controller gives up: the failed pod goes, its address with it
    cris[1].remove_pod(&pod_id).expect("remove the failed pod");
}

#[test]
fn pods_naming_a_bad_or_absent_origin_are_refused_at_run_pod_sandbox() {
    let (c, mut cris) = cluster();
    let (here, _ip) = run_fresh(&c, &mut cris);
    let endpoint = c.endpoint(1).unwrap();
    for (origin, why) in [
        ("n1/default".to_string(), "3"),
        (
            format!("{endpoint}/default/nobody"),
            "no running pod default/nobody",
        ),
        (format!("{endpoint}/Default/{POD}"), "not a Kubernetes name"),
        // a pod may continue only a pod of its own Kubernetes namespace
        (
            format!("{endpoint}/kube-system/{POD}"),
            "may continue only a pod of that namespace",
        ),
    ] {
        let pod = pod_on(&c, 2, &[("mose.io/migrate-from", &origin)]);
        let e = cris[1].run_pod(&pod, MOSE_HANDLER).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("mose.io/migrate-from") || msg.contains(why),
            "{origin}: {msg}"
        );
        assert!(msg.contains(why), "{origin}: {msg}");
    }
    assert!(
        cris[1].pods().unwrap().iter().all(|p| p.state != READY),
        "no pod left Ready on node 2"
    );
    // the source never noticed
    let s = cris[0].pod_status(&here.pod_id).unwrap();
    assert_eq!(s.state, READY);
}
