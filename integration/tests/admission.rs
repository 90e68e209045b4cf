//! Trust between nodes on the testbed (real netns, containerd, runc, CRIU,
//! mose-plugin and mosectl): a peer with a valid certificate cannot make the
//! destination run more than its admission policy allows, nor claim another
//! node's name; an operator-allowed privileged container migrates as before.
//!
//! ```text
//! cargo build --workspace --bins
//! cargo test -p mose-integration --test admission
//! ```

use std::time::{Duration, Instant};

use mose_integration::cluster::Cluster;
use mose_integration::testbed::Node;

const RT: &str = "io.containerd.mose.v2";
const IMAGE: &str = "localhost/mose-test/busybox:latest";
const COUNTER: &str = "i=0; while true; do i=$((i+1)); echo $i > /tmp/c; sleep 0.05; done";

/// Both nodes' policy: the suite's defaults, images only from the test
/// registry, and a namespace whose operator allows privileged containers.
fn policy(privileged_ns: &str) -> String {
    format!(
        "{}images = [\"localhost/mose-test/\"]\n\n[namespaces.{privileged_ns}]\nprivileged = true\n",
        mose_integration::cluster::TESTBED_ADMISSION
    )
}

/// A 2-node cluster whose plugins use [`policy`].
fn cluster_with_policy(privileged_ns: &str) -> (Cluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("admission.toml");
    std::fs::write(&file, policy(privileged_ns)).expect("write the policy");
    let args = vec!["--admission".to_string(), file.display().to_string()];
    (Cluster::up_with(2, None, &args).expect("cluster up"), dir)
}

fn counter(node: &Node, ns: &str, id: &str, n: &mut u32) -> Option<u64> {
    *n += 1;
    let exec = format!("rd{n}");
    let args = ["tasks", "exec", "--exec-id", &exec, id, "cat", "/tmp/c"];
    node.ctr(ns).run(args).ok()?.stdout.trim().parse().ok()
}

/// Waits until `id`'s counter on `node` passes `above`; returns it.
fn counts_past(node: &Node, ns: &str, id: &str, n: &mut u32, above: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = counter(node, ns, id, n).filter(|v| *v > above) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{id} on {} stopped counting",
            node.name()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the counter as `id` from `image` with `extra` `ctr run` flags.
fn run_counter(node: &Node, ns: &str, id: &str, image: &str, extra: &[&str]) {
    let mut args = vec!["run", "-d", "--runtime", RT, "--net-host"];
    args.extend(extra);
    args.extend([image, id, "sh", "-c", COUNTER]);
    node.ctr(ns).ok(args).expect("start the counter");
}

fn listed(node: &Node, ns: &str, what: &str) -> Vec<String> {
    node.ctr(ns)
        .ok([what, "ls", "-q"])
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Node 2's tmpfs for incoming migrations.
fn incoming(c: &Cluster) -> std::path::PathBuf {
    let n2 = c.node(2).expect("node 2");
    let bed = n2.dir().parent().and_then(|p| p.file_name()).expect("bed");
    std::path::Path::new("/run/mose/incoming")
        .join(bed)
        .join(n2.name())
}

/// The migration failed with `reason` in its error, the source still
/// counts, and node 2 holds no container, image or incoming file of it.
fn assert_refused(c: &Cluster, ns: &str, id: &str, r: &serde_json::Value, reason: &str) {
    let (n1, n2) = (c.node(1).expect("node 1"), c.node(2).expect("node 2"));
    assert_eq!(r["status"].as_str(), Some("failed"), "{r}");
    let error = r["error"].as_str().unwrap_or("");
    assert!(error.contains("admission policy"), "{r}");
    assert!(error.contains(reason), "expected {reason:?} in: {error}");
    assert_eq!(r["downtime_ms"].as_f64(), Some(0.0), "never frozen: {r}");
    let mut n = 0;
    let now = counts_past(n1, ns, id, &mut n, 0);
    counts_past(n1, ns, id, &mut n, now);
    assert!(!listed(n2, ns, "containers").contains(&id.to_string()));
    assert_eq!(
        listed(n2, ns, "images"),
        Vec::<String>::new(),
        "no image byte on node 2"
    );
    let left = std::fs::read_dir(incoming(c)).map_or(0, |d| d.count());
    assert_eq!(left, 0, "nothing received into {}", incoming(c).display());
}

#[test]
fn containers_beyond_the_destination_policy_are_refused_before_anything_is_written() {
    let privileged_ns = mose_tests::unique_id("admp");
    let (c, _policy) = cluster_with_policy(&privileged_ns);
    let n1 = c.node(1).expect("node 1");
    let ns = mose_tests::unique_id("adm");
    n1.import_test_image(&ns).expect("import");
    let other = "registry.other.example/busybox:latest";
    n1.ctr(&ns)
        .ok(["images", "tag", IMAGE, other])
        .expect("tag");
    let cases: [(&str, &str, Vec<&str>, &str); 4] = [
        (
            "privileged",
            IMAGE,
            vec!["--privileged"],
            "beyond containerd's default set",
        ),
        (
            "hostroot",
            IMAGE,
            vec!["--mount", "type=bind,src=/,dst=/host,options=rbind:ro"],
            "bind-mounts host path / at /host",
        ),
        (
            "hostpid",
            IMAGE,
            // runc opens the path itself: its own, the host's, pid namespace
            // (joining pid 1's fails in runc here: "can't get final child's PID")
            vec!["--with-ns", "pid:/proc/self/ns/pid"],
            "joins the existing pid namespace at /proc/self/ns/pid",
        ),
        (
            "foreign",
            other,
            vec![],
            "image registry.other.example/busybox:latest is not from an allowed registry",
        ),
    ];
    for (id, image, extra, reason) in cases {
        run_counter(n1, &ns, id, image, &extra);
        let r = c
            .migrate(1, 2, &ns, id, &["--technique", "cold"])
            .expect("mosectl");
        assert_refused(&c, &ns, id, &r, reason);
        let log =
            std::fs::read_to_string(c.node(2).expect("node 2").plugin_log()).unwrap_or_default();
        assert!(log.contains(reason), "node 2 logs the refusal of {id}");
    }
}

#[test]
fn a_peer_claiming_another_nodes_name_is_refused() {
    let (c, _policy) = cluster_with_policy("unused");
    let (n1, n2) = (c.node(1).expect("node 1"), c.node(2).expect("node 2"));
    let ns = mose_tests::unique_id("adm");
    n1.import_test_image(&ns).expect("import");
    run_counter(n1, &ns, "svc", IMAGE, &[]);
    // node 1's own valid certificate and key, presented under node 3's name
    let bundle = c.bundle_dir(1).expect("bundle");
    let forged = tempfile::tempdir().expect("tempdir");
    std::fs::copy(bundle.join("ca.pem"), forged.path().join("ca.pem")).expect("ca.pem");
    for ext in ["pem", "key"] {
        let from = bundle.join(format!("{}.{ext}", n1.name()));
        std::fs::copy(&from, forged.path().join(format!("node3.{ext}"))).expect("copy");
    }
    let o = n1
        .command(c.bin.join("mosectl").display().to_string())
        .args(["migrate", "--address"])
        .arg(n1.containerd_socket())
        .args([
            "--namespace",
            &ns,
            "svc",
            "--to",
            &c.endpoint(2).expect("endpoint"),
        ])
        .arg("--tls-dir")
        .arg(forged.path())
        .args(["--node", "node3", "--state", "/tmp", "--output", "json"])
        .args(["--technique", "cold"])
        .output()
        .expect("mosectl");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON result");
    assert_eq!(r["status"].as_str(), Some("failed"), "{r}");
    let error = r["error"].as_str().unwrap_or("");
    let want = format!(
        "claims to be node \"node3\" but its certificate was issued for node \"{}\"",
        n1.name()
    );
    assert!(error.contains(&want), "{error}");
    let mut n = 0;
    let now = counts_past(n1, &ns, "svc", &mut n, 0);
    counts_past(n1, &ns, "svc", &mut n, now);
    assert!(!listed(n2, &ns, "containers").contains(&"svc".to_string()));
    let log = std::fs::read_to_string(n2.plugin_log()).unwrap_or_default();
    assert!(log.contains(&want), "node 2 logs the refused claim");
}

#[test]
fn an_operator_allowed_privileged_container_migrates_as_before() {
    let privileged_ns = mose_tests::unique_id("admp");
    let (c, _policy) = cluster_with_policy(&privileged_ns);
    let (n1, n2) = (c.node(1).expect("node 1"), c.node(2).expect("node 2"));
    let ns = privileged_ns;
    n1.import_test_image(&ns).expect("import");
    run_counter(n1, &ns, "tool", IMAGE, &["--privileged"]);
    let mut n = 0;
    let before = counts_past(n1, &ns, "tool", &mut n, 10);
    let r = c
        .migrate(1, 2, &ns, "tool", &["--technique", "cold"])
        .expect("mosectl");
    assert_eq!(r["status"].as_str(), Some("ok"), "{r}");
    let after = counts_past(n2, &ns, "tool", &mut n, before);
    assert!(
        after < before + 2000,
        "the count went on from {before}: {after}"
    );
    assert!(!listed(n1, &ns, "containers").contains(&"tool".to_string()));
}
