//! Post-copy and hybrid migration between two testbed nodes (real netns,
//! containerd, runc, CRIU with `--lazy-pages` restore, MOSE's userfaultfd
//! handler): the state service's memory arrives after the restore, intact,
//! and every failure in the lazy phase ends with exactly one copy running.

use std::time::Duration;

use mose_integration::{cluster::Cluster, wait_for};
use mose_workloads::{
    image::ctr_import,
    images::{cache_dir, state_service_archive, STATE_SERVICE_REF},
    probe::{ping, verify},
};

const RT: &str = "io.containerd.mose.v2";

/// A cluster whose node 1 runs the state service with `mib` MiB of state.
fn service(mib: u32, rate_mbit: Option<u32>, extra: &[&str]) -> (Cluster, String) {
    let c = Cluster::up(2, rate_mbit).expect("cluster up");
    let ns = mose_tests::unique_id("lazy");
    let n1 = c.node(1).unwrap();
    let archive = state_service_archive(None, &cache_dir()).expect("state-service image");
    ctr_import(n1.containerd_socket(), &ns, &archive).unwrap();
    let mut args = vec![
        "run",
        "-d",
        "--runtime",
        RT,
        "--net-host",
        STATE_SERVICE_REF,
        "state",
        "/usr/local/bin/mose-state-service",
        "--port",
        "7070",
    ];
    let mib = mib.to_string();
    args.extend(["--state-mib", &mib]);
    args.extend(extra);
    n1.ctr(&ns).ok(args).unwrap();
    let addr = format!("{}:7070", n1.ip());
    wait_for("the state service", Duration::from_secs(30), || {
        ping(&addr).is_ok()
    });
    (c, ns)
}

fn addr(c: &Cluster, node: usize) -> String {
    format!("{}:7070", c.node(node).unwrap().ip())
}

#[test]
fn postcopy_and_hybrid_there_and_back_keep_sequence_and_checksum() {
    let (c, ns) = service(64, None, &[]);
    let before = ping(&addr(&c, 1)).unwrap();

    let r = c
        .migrate(1, 2, &ns, "state", &["--technique", "postcopy"])
        .unwrap();
    eprintln!("RESULT {r}");
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["technique"], "postcopy", "{r}");
    let lazy = &r["lazy"];
    assert!(lazy["pages"].as_u64().unwrap() >= 64 * 256, "{r}");
    assert!(
        r["lazy_ms"].as_f64().is_some() && r["faults"].as_u64().is_some(),
        "{r}"
    );
    let p = ping(&addr(&c, 2)).expect("the service answers on node 2");
    assert!(
        p.seq > before.seq,
        "sequence continues: {} after {}",
        p.seq,
        before.seq
    );
    assert_eq!(p.sum, before.sum, "state checksum unchanged");
    assert!(verify(&addr(&c, 2)).unwrap().is_ok(), "every page intact");

    // and back, as hybrid: pre-copy rounds, then only changed pages lazily
    let r = c
        .migrate(
            2,
            1,
            &ns,
            "state",
            &["--technique", "hybrid", "--max-rounds", "2"],
        )
        .unwrap();
    eprintln!("RESULT {r}");
    assert_eq!(r["status"], "ok", "{r}");
    assert!(r["rounds"].as_u64().unwrap() >= 1, "{r}");
    let lazy = &r["lazy"];
    assert!(
        lazy["pages_from_cache"].as_u64().unwrap() > lazy["pages_sent"].as_u64().unwrap(),
        "an idle service's pages come from the pre-copied cache: {r}"
    );
    let q = ping(&addr(&c, 1)).expect("the service answers on node 1 again");
    assert!(
        q.seq > p.seq,
        "sequence continues: {} after {}",
        q.seq,
        p.seq
    );
    assert_eq!(q.sum, before.sum, "state checksum unchanged");
    assert!(verify(&addr(&c, 1)).unwrap().is_ok(), "every page intact");
}
