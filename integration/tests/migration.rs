//! Live migration between two testbed nodes (real netns, containerd, runc,
//! CRIU, mose-plugin and mosectl): correctness and failure semantics.
//!
//! ```text
//! cargo build --workspace --bins
//! cargo test -p mose-integration --test migration -- --test-threads=2
//! ```

use std::time::{Duration, Instant};

use mose_integration::cluster::Cluster;
use mose_integration::testbed::Node;

/// Each test gets its own containerd namespace: cgroup paths are
/// `/<namespace>/<id>` on the one host all testbeds share.
fn ns() -> String {
    mose_tests::unique_id("mig")
}
const RT: &str = "io.containerd.mose.v2";
/// The count lives only in the shell's memory; /tmp/c (rootfs) and
/// /scratch/c (a tmpfs) are windows on it.
const COUNTER: &str =
    "i=0; while true; do i=$((i+1)); echo $i > /tmp/c; echo $i > /scratch/c; sleep 0.05; done";

fn cluster() -> Cluster {
    Cluster::up(2, None).expect("cluster up")
}

fn counter(node: &Node, ns: &str, id: &str, n: &mut u32) -> Option<u64> {
    *n += 1;
    let o = node
        .ctr(ns)
        .run([
            "tasks",
            "exec",
            "--exec-id",
            &format!("rd{n}"),
            id,
            "cat",
            "/tmp/c",
        ])
        .ok()?;
    o.stdout.trim().parse().ok()
}

fn exec_out(node: &Node, ns: &str, id: &str, n: &mut u32, args: &[&str]) -> String {
    *n += 1;
    let mut a = vec![
        "tasks".to_string(),
        "exec".into(),
        "--exec-id".into(),
        format!("x{n}"),
        id.into(),
    ];
    a.extend(args.iter().map(|s| s.to_string()));
    node.ctr(ns).ok(a).unwrap_or_default()
}

fn wait_counter(node: &Node, ns: &str, id: &str, n: &mut u32, above: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = counter(node, ns, id, n).filter(|v| *v > above) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "counter of {id} on {} never went above {above}",
            node.name()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_counter(c: &Cluster, ns: &str, id: &str) {
    let n1 = c.node(1).unwrap();
    n1.import_test_image(ns).unwrap();
    n1.ctr(ns)
        .ok([
            "run",
            "-d",
            "--runtime",
            RT,
            "--label",
            "mose.test/owner=migration-test",
            "--mount",
            "type=tmpfs,destination=/scratch,options=rw",
            "localhost/mose-test/busybox:latest",
            id,
            "sh",
            "-c",
            COUNTER,
        ])
        .expect("start the counter");
}

fn status(r: &serde_json::Value) -> &str {
    r["status"].as_str().unwrap_or("?")
}

fn has_container(node: &Node, ns: &str, id: &str) -> bool {
    node.ctr(ns)
        .ok(["containers", "ls", "-q"])
        .map(|o| o.lines().any(|l| l.trim() == id))
        .unwrap_or(false)
}

#[test]
fn cold_then_precopy_there_and_back_keeps_state_files_and_identity() {
    let c = cluster();
    let ns = ns();
    let (n1, n2) = (c.node(1).unwrap(), c.node(2).unwrap());
    let id = "svc";
    let mut reads = 0;
    start_counter(&c, &ns, id);
    let before = wait_counter(n1, &ns, id, &mut reads, 20);
    exec_out(
        n1,
        &ns,
        id,
        &mut reads,
        &["sh", "-c", "echo kept > /data.txt"],
    );

    // node 2 lacks the image: it travels with the container
    let r = c.migrate(1, 2, &ns, id, &["--technique", "cold"]).unwrap();
    assert_eq!(status(&r), "ok", "{r}");
    assert!(!has_container(n1, &ns, id), "the source copy is released");
    let after = wait_counter(n2, &ns, id, &mut reads, before);
    assert!(
        after < before + 400,
        "count continued ({before} -> {after}), not restarted"
    );
    assert_eq!(
        exec_out(n2, &ns, id, &mut reads, &["cat", "/data.txt"]).trim(),
        "kept",
        "rootfs file"
    );
    let scratch: u64 = exec_out(n2, &ns, id, &mut reads, &["cat", "/scratch/c"])
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(
        scratch >= before,
        "tmpfs content migrated: {scratch} vs {before}"
    );
    let info = n2.ctr(&ns).ok(["containers", "info", id]).unwrap();
    assert!(info.contains("mose.test/owner"), "labels kept: {info}");

    // and back, with pre-copy
    let r = c
        .migrate(
            2,
            1,
            &ns,
            id,
            &["--technique", "precopy", "--max-rounds", "3"],
        )
        .unwrap();
    assert_eq!(status(&r), "ok", "{r}");
    assert!(r["rounds"].as_u64().unwrap_or(0) >= 1, "{r}");
    assert!(r["downtime_ms"].as_f64().unwrap_or(0.0) > 0.0);
    for k in [
        "technique",
        "rounds",
        "downtime_ms",
        "total_ms",
        "bytes_sent",
        "phases",
    ] {
        assert!(!r[k].is_null(), "result has {k}: {r}");
    }
    let back = wait_counter(n1, &ns, id, &mut reads, after);
    assert!(back < after + 400);
    assert!(!has_container(n2, &ns, id));
    // the records on both nodes list the migrations
    let list = std::process::Command::new(c.bin.join("mosectl"))
        .args(["migrations", "--output", "json", "--state"])
        .arg(n2.dir().join("mose-state"))
        .output()
        .unwrap();
    let recs: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(
        recs.as_array().map(|a| a.len()),
        Some(2),
        "one in, one out on node 2: {recs}"
    );
}

fn assert_rolled_back(
    c: &Cluster,
    ns: &str,
    r: &serde_json::Value,
    id: &str,
    before: u64,
    reads: &mut u32,
    expect: &str,
) {
    let (n1, n2) = (c.node(1).unwrap(), c.node(2).unwrap());
    assert_eq!(status(r), expect, "{r}");
    assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    // the source keeps running with its state, and counts on
    let v = wait_counter(n1, ns, id, reads, before);
    assert!(v < before + 2000);
    // the destination holds nothing of it
    let deadline = Instant::now() + Duration::from_secs(15);
    while has_container(n2, ns, id) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !has_container(n2, ns, id),
        "destination removed its partial copy"
    );
    let bed = n2
        .dir()
        .parent()
        .and_then(|p| p.file_name())
        .unwrap()
        .to_string_lossy()
        .to_string();
    let incoming = std::path::Path::new("/run/mose/incoming")
        .join(bed)
        .join(n2.name());
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::fs::read_dir(&incoming)
        .map(|d| d.count() > 0)
        .unwrap_or(false)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        std::fs::read_dir(&incoming)
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "no partial images left in {}",
        incoming.display()
    );
}

#[test]
fn corrupt_or_truncated_stream_rolls_back() {
    let c = cluster();
    let ns = ns();
    let id = "svc";
    let mut reads = 0;
    start_counter(&c, &ns, id);
    let before = wait_counter(c.node(1).unwrap(), &ns, id, &mut reads, 10);
    let r = c
        .migrate(
            1,
            2,
            &ns,
            id,
            &["--technique", "cold", "--inject-fault", "corrupt-chunk"],
        )
        .unwrap();
    assert_rolled_back(&c, &ns, &r, id, before, &mut reads, "rolled-back");
    let r = c
        .migrate(
            1,
            2,
            &ns,
            id,
            &["--technique", "precopy", "--inject-fault", "truncate"],
        )
        .unwrap();
    assert_rolled_back(&c, &ns, &r, id, before, &mut reads, "rolled-back");
    // after both failures, a clean migration still works
    let r = c.migrate(1, 2, &ns, id, &["--technique", "cold"]).unwrap();
    assert_eq!(status(&r), "ok", "{r}");
    // each node's agent counted what it saw: the source its rollbacks with
    // the failing step, the destination the migration it received
    let m1 = c.metrics(1).unwrap();
    for want in [
        "200 OK",
        "mose_migrations_total{technique=\"cold\",direction=\"out\",outcome=\"rolled-back\"} 1",
        "mose_migrations_total{technique=\"precopy\",direction=\"out\",outcome=\"rolled-back\"} 1",
        "mose_migrations_total{technique=\"cold\",direction=\"out\",outcome=\"ok\"} 1",
        "mose_migration_failures_total{direction=\"out\",technique=\"cold\",outcome=\"rolled-back\",step=",
        "mose_migration_downtime_seconds_count{technique=\"cold\",outcome=\"ok\"} 1",
    ] {
        assert!(m1.contains(want), "node 1's metrics lack {want}:\n{m1}");
    }
    let m2 = c.metrics(2).unwrap();
    let want = "mose_migrations_total{technique=\"cold\",direction=\"in\",outcome=\"ok\"} 1";
    assert!(m2.contains(want), "node 2's metrics lack {want}:\n{m2}");
}

#[test]
fn wrong_credentials_are_rejected_before_anything_is_written() {
    let c = cluster();
    let ns = ns();
    let id = "svc";
    let mut reads = 0;
    start_counter(&c, &ns, id);
    let before = wait_counter(c.node(1).unwrap(), &ns, id, &mut reads, 10);
    // a node certificate from another cluster's CA
    let rogue = tempfile::tempdir().unwrap();
    let mosectl = c.bin.join("mosectl");
    let n1 = c.node(1).unwrap();
    for args in [
        vec![
            "ca".to_string(),
            "init".into(),
            "--dir".into(),
            rogue.path().display().to_string(),
        ],
        vec![
            "ca".into(),
            "issue".into(),
            "--dir".into(),
            rogue.path().display().to_string(),
            "--node".into(),
            n1.name().into(),
            "--ip".into(),
            n1.ip().to_string(),
        ],
    ] {
        assert!(std::process::Command::new(&mosectl)
            .args(&args)
            .status()
            .unwrap()
            .success());
    }
    let o = n1
        .command(mosectl.display().to_string())
        .args(["migrate", "--address"])
        .arg(n1.containerd_socket())
        .args([
            "--namespace",
            &ns,
            id,
            "--to",
            &c.endpoint(2).unwrap(),
            "--tls-dir",
        ])
        // the bundle `mosectl ca issue` wrote for n1 (default --out)
        .arg(rogue.path().join("nodes").join(n1.name()))
        .args(["--node", n1.name(), "--state", "/tmp", "--output", "json"])
        .args(["--technique", "precopy"])
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON result");
    assert_eq!(status(&r), "failed", "{r}");
    assert!(r["error"].as_str().unwrap_or("").contains("TLS"), "{r}");
    assert_eq!(r["bytes_sent"].as_u64(), Some(0));
    assert_rolled_back(&c, &ns, &r, id, before, &mut reads, "failed");
    let log = std::fs::read_to_string(c.node(2).unwrap().plugin_log()).unwrap_or_default();
    assert!(log.contains("rejected during TLS handshake"), "{log}");
}

#[test]
fn restore_failing_at_destination_rolls_back() {
    let c = cluster();
    let ns = ns();
    let (n1, n2) = (c.node(1).unwrap(), c.node(2).unwrap());
    let id = "svc";
    let mut reads = 0;
    n1.import_test_image(&ns).unwrap();
    n2.import_test_image(&ns).unwrap();
    // the service listens on a host-network port that is already taken on node 2,
    // so CRIU cannot restore its listening socket there
    let port = "7999";
    n1.ctr(&ns)
        .ok([
            "run",
            "-d",
            "--runtime",
            RT,
            "--net-host",
            "--mount",
            "type=tmpfs,destination=/scratch,options=rw",
            "localhost/mose-test/busybox:latest",
            id,
            "sh",
            "-c",
            &format!("httpd -p {port}; {COUNTER}"),
        ])
        .unwrap();
    n2.ctr(&ns)
        .ok([
            "run",
            "-d",
            "--net-host",
            "localhost/mose-test/busybox:latest",
            "squatter",
            "httpd",
            "-f",
            "-p",
            port,
        ])
        .unwrap();
    let before = wait_counter(n1, &ns, id, &mut reads, 10);
    let r = c.migrate(1, 2, &ns, id, &["--technique", "cold"]).unwrap();
    assert_rolled_back(&c, &ns, &r, id, before, &mut reads, "rolled-back");
    assert!(r["error"].as_str().unwrap_or("").contains("restore"), "{r}");
}
