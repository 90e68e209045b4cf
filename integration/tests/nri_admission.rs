//! With containerd ≥ 1.7 and NRI enabled, MOSE's NRI plugin (`mose-nri`)
//! refuses at CreateContainer a container of a MOSE pod whose `mose.io/*`
//! annotations are malformed, naming the annotation: the container is
//! never created (without NRI the shim refuses it at StartContainer, see
//! `cri_pods`). A well-formed container is created and runs as before.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mose_integration::cluster::{bin_dir, Cluster};
use mose_integration::cri::{Cri, MOSE_HANDLER};
use mose_integration::pod_fixtures::{self, RUNNING};
use mose_integration::testbed::nri_socket;
use mose_integration::wait_for;
use mose_workloads::images::{cache_dir, state_service_archive};

/// Runs the testbed on a containerd with NRI: the one the run names
/// (`MOSE_TEST_CONTAINERD`, e.g. the matrix's), else the containerd 1.7
/// `scripts/provision-containerd.sh` installs (Debian's 1.6 has no NRI).
fn use_containerd_with_nri() {
    if std::env::var_os("MOSE_TEST_CONTAINERD").is_none() {
        let prefix = std::env::var("MOSE_CONTAINERD17_PREFIX")
            .unwrap_or_else(|_| "/opt/mose/containerd-1.7".into());
        let bin = PathBuf::from(&prefix).join("bin");
        assert!(
            bin.join("containerd").exists() && bin.join("ctr").exists(),
            "containerd 1.7 is missing in {}: run scripts/provision-containerd.sh \
             (scripts/setup.sh does)",
            bin.display()
        );
        std::env::set_var("MOSE_TEST_CONTAINERD", bin.join("containerd"));
        std::env::set_var("MOSE_TEST_CTR", bin.join("ctr"));
    }
    let v = mose_tests::containerd::containerd_version();
    assert!(v >= (1, 7), "containerd {v:?} has no NRI");
}

/// `mose-nri` on the node's NRI socket, killed when dropped.
struct NriPlugin(Child, PathBuf);

impl NriPlugin {
    fn start(socket: PathBuf, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).expect("mose-nri log");
        let child = Command::new(bin_dir().expect("MOSE binaries").join("mose-nri"))
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("mose-nri starts");
        let p = NriPlugin(child, log);
        wait_for(
            "mose-nri to register with NRI",
            Duration::from_secs(30),
            || p.log().contains("registered with NRI"),
        );
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

impl Drop for NriPlugin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn malformed_annotations_are_refused_at_create_container_through_nri() {
    use_containerd_with_nri();
    let c = Cluster::up(1, None).expect("testbed up");
    let state = state_service_archive(None, &cache_dir()).expect("state-service image");
    c.enable_pods(&[state]).expect("pods enabled");
    let node = c.node(1).unwrap();
    let nri = NriPlugin::start(nri_socket(node.dir()), node.dir().join("mose-nri.log"));
    let mut cri = Cri::connect(node.containerd_socket()).expect("CRI");
    let pod = pod_fixtures::pod(node.dir(), "nri-pod", &[]);
    let pod_id = cri.run_pod(&pod, MOSE_HANDLER).expect("RunPodSandbox");

    let typo = pod_fixtures::state_container(16, &[("mose.io/technqiue", "precopy")]);
    let e = cri.create_container(&pod_id, &pod, &typo).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("mose.io/technqiue"), "{msg}");
    assert!(msg.contains("did you mean mose.io/technique"), "{msg}");
    assert!(
        nri.log().contains("refused at CreateContainer"),
        "{}",
        nri.log()
    );

    // a well-formed one is created and runs
    let good = pod_fixtures::state_container(16, &[("mose.io/max-downtime", "200ms")]);
    let id = pod_fixtures::start(&mut cri, &pod_id, &pod, &good).expect("the container runs");
    assert_eq!(cri.container_status(&id).unwrap().state, RUNNING);
    cri.remove_pod(&pod_id).expect("stop and remove the pod");
}
