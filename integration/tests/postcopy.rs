//! Post-copy and hybrid migration between two testbed nodes (real netns,
//! containerd, runc, CRIU with `--lazy-pages` restore, MOSE's userfaultfd
//! handler): the state service's memory arrives after the restore, intact,
//! and every failure in the lazy phase ends with exactly one copy running.

use std::time::Duration;

use mose_integration::{cluster::Cluster, wait_for};
use mose_tests::cleanup::{processes, Process};
use mose_workloads::probe::{ping, stats, verify};

/// A cluster whose node 1 runs the state service with `mib` MiB of state.
fn service(mib: u32, rate_mbit: Option<u32>, extra: &[&str]) -> (Cluster, String) {
    let c = Cluster::up(2, rate_mbit).expect("cluster up");
    let ns = mose_tests::unique_id("lazy");
    c.run_state_service(1, &ns, mib, extra)
        .expect("the state service");
    (c, ns)
}

fn addr(c: &Cluster, node: usize) -> String {
    format!("{}:7070", c.node(node).unwrap().ip())
}

fn containers(c: &Cluster, node: usize, ns: &str) -> String {
    c.node(node)
        .unwrap()
        .ctr(ns)
        .ok(["containers", "ls", "-q"])
        .unwrap_or_default()
}

/// Waits for the lazy phase: the restored copy runs on node 2 while the
/// source, frozen, still serves its memory.
fn wait_lazy_phase(c: &Cluster, ns: &str) {
    let n2 = c.node(2).unwrap();
    wait_for("the lazy phase", Duration::from_secs(60), || {
        n2.ctr(ns)
            .ok(["tasks", "ls"])
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("state") && l.contains("RUNNING"))
    });
}

/// The destination's record of its last incoming migration.
fn last_incoming(c: &Cluster) -> serde_json::Value {
    let log = c.node(2).unwrap().dir().join("mose-state/migrations.jsonl");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|v| v["direction"] == "in")
        .unwrap_or_default()
}

/// The lazy dumps of namespace `ns` still running on this host: runc
/// checkpoints with `--lazy-pages` whose state root (which ends in the
/// namespace) names it, and CRIU processes whose parent is such a runc or a
/// shim of the namespace (an orphaned CRIU is its shim's child).
fn lazy_dumps_left(ns: &str) -> Vec<String> {
    let procs = processes();
    let dumping =
        |p: &Process| p.cmdline.contains("--lazy-pages") && p.cmdline.contains(&format!("/{ns} "));
    let of_ns = |pid: u32| {
        procs.iter().any(|p| {
            p.pid == pid
                && (dumping(p)
                    || (p.cmdline.contains("containerd-shim-mose") && p.cmdline.contains(ns)))
        })
    };
    procs
        .iter()
        .filter(|p| {
            dumping(p) || (p.cmdline.contains("sbin/criu") && of_ns(p.ppid) && p.pid != p.ppid)
        })
        .map(|p| format!("{}: {}", p.pid, p.cmdline))
        .collect()
}

/// Nothing of a lazy dump outlives its migration: runc and CRIU (and with
/// CRIU its page server's port) are gone within a few seconds.
fn assert_no_lazy_dump_left(ns: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !lazy_dumps_left(ns).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        lazy_dumps_left(ns),
        Vec::<String>::new(),
        "a lazy dump outlived its migration"
    );
}

#[test]
fn a_corrupt_page_fails_the_migration_and_the_source_resumes_intact() {
    let (c, ns) = service(32, None, &[]);
    let before = ping(&addr(&c, 1)).unwrap();
    let r = c
        .migrate(
            1,
            2,
            &ns,
            "state",
            &["--technique", "postcopy", "--inject-fault", "corrupt-page"],
        )
        .unwrap();
    eprintln!("RESULT {r}");
    assert_eq!(r["status"], "rolled-back", "{r}");
    assert_eq!(r["lazy_source"], "criu-page-server", "{r}");
    let err = r["error"].as_str().unwrap_or_default();
    assert!(err.contains("corrupt page"), "{err}");
    assert_no_lazy_dump_left(&ns);
    // the destination stopped its copy before the source resumed
    assert!(!containers(&c, 2, &ns).contains("state"), "{r}");
    let p = ping(&addr(&c, 1)).expect("the source answers again");
    assert!(p.seq > before.seq);
    assert_eq!(p.sum, before.sum, "state checksum unchanged");
    assert!(verify(&addr(&c, 1)).unwrap().is_ok(), "every page intact");
}

#[test]
fn losing_the_source_in_the_lazy_phase_stops_the_destination_copy() {
    // 64 MiB over 100 Mbit/s: about five seconds of lazy phase
    let (c, ns) = service(64, Some(100), &[]);
    let before = ping(&addr(&c, 1)).unwrap();
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut source = c
        .migrate_command(
            1,
            2,
            &ns,
            "state",
            &["--technique", "postcopy", "--io-timeout", "4"],
        )
        .unwrap()
        .stdout(out.reopen().unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let n2 = c.node(2).unwrap();
    wait_for("the lazy phase", Duration::from_secs(60), || {
        if let Ok(Some(st)) = source.try_wait() {
            panic!(
                "mosectl ended ({st}) before the lazy phase was seen: {}",
                std::fs::read_to_string(out.path()).unwrap_or_default()
            );
        }
        n2.ctr(&ns)
            .ok(["tasks", "ls"])
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("state") && l.contains("RUNNING"))
    });
    // while CRIU serves its memory, the source's copy cannot be resumed
    // beside the destination's
    let refused = c
        .node(1)
        .unwrap()
        .ctr(&ns)
        .ok(["tasks", "resume", "state"])
        .unwrap_err()
        .to_string();
    assert!(refused.contains("lazy dump"), "{refused}");
    source.kill().unwrap();
    let _ = source.wait();
    // the copy cannot run without its memory: the destination stops it
    wait_for(
        "the destination to stop its copy",
        Duration::from_secs(30),
        || !containers(&c, 2, &ns).contains("state"),
    );
    // the destination records the migration once its copy is gone
    wait_for(
        "the destination's record of the failed migration",
        Duration::from_secs(30),
        || !last_incoming(&c)["status"].is_null(),
    );
    let rec = last_incoming(&c);
    assert_eq!(rec["status"], "failed", "{rec}");
    let err = rec["error"].as_str().unwrap_or_default();
    assert!(err.contains("lazy phase"), "{err}");
    // CRIU's page server lost its client with the source: the dump ended,
    // leaving the container paused
    assert_no_lazy_dump_left(&ns);
    // the frozen source is all that is left; the operator resumes it
    c.node(1)
        .unwrap()
        .ctr(&ns)
        .ok(["tasks", "resume", "state"])
        .unwrap();
    let p = ping(&addr(&c, 1)).expect("the resumed source answers");
    assert!(p.seq > before.seq);
    assert_eq!(p.sum, before.sum, "state checksum unchanged");
    assert!(verify(&addr(&c, 1)).unwrap().is_ok(), "every page intact");
}

/// Failures before the lazy phase, with CRIU's lazy dump already serving:
/// the stream cut in the final transfer, and a restore the destination
/// cannot do (another process holds the service's port there). Each time
/// the source resumes intact and nothing of the dump is left.
#[test]
fn a_cut_stream_or_a_failed_lazy_restore_resumes_the_source_and_ends_the_dump() {
    let (c, ns) = service(32, None, &[]);
    let before = ping(&addr(&c, 1)).unwrap();
    let r = c
        .migrate(
            1,
            2,
            &ns,
            "state",
            &["--technique", "postcopy", "--inject-fault", "truncate"],
        )
        .unwrap();
    assert_eq!(r["status"], "rolled-back", "{r}");
    assert_eq!(r["lazy_source"], "criu-page-server", "{r}");
    assert_no_lazy_dump_left(&ns);
    let p = ping(&addr(&c, 1)).expect("the source answers again");
    assert!(p.seq > before.seq);
    assert_eq!(p.sum, before.sum, "state checksum unchanged");

    // node 2's port 7070 is taken: the restored service cannot listen there
    let n2 = c.node(2).unwrap();
    let ip = n2.ip();
    let squat = n2
        .run_in_netns(move || Ok(std::net::TcpListener::bind((ip, 7070))?))
        .unwrap();
    let r = c
        .migrate(
            1,
            2,
            &ns,
            "state",
            &["--technique", "hybrid", "--max-rounds", "1"],
        )
        .unwrap();
    drop(squat);
    assert_eq!(r["status"], "rolled-back", "{r}");
    assert_no_lazy_dump_left(&ns);
    assert!(!containers(&c, 2, &ns).contains("state"), "{r}");
    let q = ping(&addr(&c, 1)).expect("the source answers again");
    assert!(q.seq > p.seq);
    assert_eq!(q.sum, before.sum, "state checksum unchanged");
    assert!(verify(&addr(&c, 1)).unwrap().is_ok(), "every page intact");
}

#[test]
fn a_brief_link_cut_in_the_lazy_phase_is_ridden_out() {
    let (c, ns) = service(64, Some(100), &[]);
    let before = ping(&addr(&c, 1)).unwrap();
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            wait_lazy_phase(&c, &ns);
            c.bed.cut_link(2).unwrap();
            std::thread::sleep(Duration::from_secs(2));
            c.bed.restore_link(2).unwrap();
        });
        c.migrate(
            1,
            2,
            &ns,
            "state",
            &["--technique", "postcopy", "--io-timeout", "15"],
        )
        .unwrap()
    });
    assert_eq!(r["status"], "ok", "{r}");
    let p = ping(&addr(&c, 2)).expect("the service answers on node 2");
    assert!(p.seq > before.seq);
    assert_eq!(p.sum, before.sum, "state checksum unchanged");
    assert!(verify(&addr(&c, 2)).unwrap().is_ok(), "every page intact");
    assert!(!containers(&c, 1, &ns).contains("state"), "source released");
}

#[test]
fn postcopy_and_hybrid_there_and_back_keep_sequence_and_checksum() {
    let (c, ns) = service(64, None, &[]);
    let before = ping(&addr(&c, 1)).unwrap();

    let r = c
        .migrate(1, 2, &ns, "state", &["--technique", "postcopy"])
        .unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["technique"], "postcopy", "{r}");
    // CRIU's lazy dump: the pages stayed in the frozen service until asked
    assert_eq!(r["lazy_source"], "criu-page-server", "{r}");
    assert!(r["lazy_source_note"].is_null(), "{r}");
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

    // and once more over, from a full dump into tmpfs (what MOSE falls back
    // to where the lazy dump cannot run), saying so in the result
    let r = c
        .migrate(
            1,
            2,
            &ns,
            "state",
            &["--technique", "postcopy", "--lazy-source", "tmpfs-dump"],
        )
        .unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["lazy_source"], "tmpfs-dump", "{r}");
    assert!(
        r["lazy_source_note"]
            .as_str()
            .unwrap_or_default()
            .contains("--lazy-source tmpfs-dump"),
        "{r}"
    );
    let t = ping(&addr(&c, 2)).expect("the service answers on node 2 again");
    assert!(t.seq > q.seq);
    assert_eq!(t.sum, before.sum, "state checksum unchanged");
    assert!(verify(&addr(&c, 2)).unwrap().is_ok(), "every page intact");
    assert_no_lazy_dump_left(&ns);
}

#[test]
fn fork_mremap_and_madvise_during_the_lazy_phase_see_the_right_memory() {
    // the service forks a verifier, moves a buffer and discards half of it
    // every 200 ms; over 100 Mbit/s the lazy phase spans several of those
    let (c, ns) = service(48, Some(100), &["--churn"]);
    let before = ping(&addr(&c, 1)).unwrap();
    let r = c
        .migrate(1, 2, &ns, "state", &["--technique", "postcopy"])
        .unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    assert!(
        r["lazy_ms"].as_f64().unwrap() > 1000.0,
        "a long lazy phase: {r}"
    );
    let a2 = addr(&c, 2);
    let rounds = |st: &serde_json::Value| st["churn_rounds"].as_u64().unwrap_or(0);
    let first = stats(&a2).unwrap();
    wait_for("more churn on node 2", Duration::from_secs(30), || {
        stats(&a2)
            .map(|st| rounds(&st) >= rounds(&first) + 3)
            .unwrap_or(false)
    });
    let st = stats(&a2).unwrap();
    assert_eq!(
        st["churn_errors"], 0,
        "every move, discard and fork saw the right memory: {st}"
    );
    let p = ping(&a2).unwrap();
    assert!(p.seq > before.seq);
    assert_eq!(p.sum, before.sum, "state checksum unchanged");
    assert!(verify(&a2).unwrap().is_ok(), "every page intact");
}
