//! Soak: one state service migrated back and forth between two testbed
//! nodes with post-copy and hybrid (CRIU's lazy dump behind MOSE's page
//! transfer), `MOSE_SOAK_HOPS` times (the suite runs a short form;
//! `scripts/soak.sh` runs 50). Every migration must be `ok` with the state
//! intact, and nothing may grow: the agents' open descriptors and memory,
//! the tmpfs the migrations work in, mounts, processes, and listening
//! page-server ports.
//!
//! It runs alone in its test binary: the process and port counts are
//! host-wide.

use std::{path::Path, time::Duration};

use mose_integration::{cluster::Cluster, testbed::incoming_root};
use mose_tests::cleanup::processes;
use mose_workloads::probe::{ping, verify};

/// Hops in the suite's short form.
const SHORT_HOPS: usize = 8;
/// Hops before the baselines are taken: a post-copy and a hybrid into each
/// node, so that first-use allocations (a hybrid receiver's block store) settle.
const WARM_UP: usize = 4;
/// The migrated state, MiB.
const STATE_MIB: u32 = 32;
/// What an agent's resident memory may exceed its size after the first hop
/// by: two and a half migrations' worth of page blocks. glibc keeps some
/// freed blocks in its arenas even after `malloc_trim`, so the size moves
/// up and down between hops (measured over 40 hops: 42 to 87 MiB from 23
/// MiB); a leak of a migration's blocks, or of 1.6 MiB per hop, crosses it
/// within 50 hops.
const RSS_BOUND_KIB: u64 = STATE_MIB as u64 * 1024 * 5 / 2;

/// What is counted after each hop.
#[derive(Debug, Clone, PartialEq)]
struct Usage {
    /// Open descriptors of each node's agent.
    fds: Vec<usize>,
    /// Resident memory of each node's agent, KiB (bounded, not compared:
    /// see [`RSS_BOUND_KIB`]).
    rss_kib: Vec<u64>,
    /// Bytes under the migrations' tmpfs directories (both sides).
    tmpfs_bytes: u64,
    /// Mounts naming the testbed.
    mounts: usize,
    /// Processes naming the testbed or the test's namespace (shims, runc,
    /// CRIU, containers' helpers).
    processes: usize,
    /// TCP sockets listening on the host's loopback owned by CRIU.
    page_server_ports: usize,
}

fn count_dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Listening TCP sockets on 127.0.0.1 whose owner is a CRIU process.
fn criu_listeners() -> usize {
    let criu: Vec<u32> = processes()
        .into_iter()
        .filter(|p| p.cmdline.contains("sbin/criu"))
        .map(|p| p.pid)
        .collect();
    let out = std::process::Command::new("ss")
        .args(["-Hltnp", "src", "127.0.0.1"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter(|l| criu.iter().any(|p| l.contains(&format!("pid={p},"))))
        .count()
}

fn usage(c: &Cluster, ns: &str) -> Usage {
    let mut fds = Vec::new();
    let mut rss_kib = Vec::new();
    for i in 1..=2 {
        let pid = c.node(i).unwrap().plugin_pid().expect("agent pid");
        fds.push(
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|d| d.count())
                .unwrap_or(0),
        );
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        rss_kib.push(
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0),
        );
    }
    let bed = c.bed.name().to_string();
    let n1_dir = c.node(1).unwrap().dir().to_path_buf();
    let tmpfs_bytes = count_dir_bytes(&incoming_root(n1_dir.parent().unwrap()))
        + count_dir_bytes(Path::new("/run/mose/migrations"));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&bed))
        .count();
    let processes = processes()
        .iter()
        .filter(|p| p.cmdline.contains(&bed) || p.cmdline.contains(ns))
        .count();
    Usage {
        fds,
        rss_kib,
        tmpfs_bytes,
        mounts,
        processes,
        page_server_ports: criu_listeners(),
    }
}

/// What grew in `u` against `b`, if anything.
fn grew(u: &Usage, b: &Usage) -> Option<String> {
    if u.fds != b.fds {
        return Some("the agents' descriptors changed".into());
    }
    if u.mounts != b.mounts {
        return Some("mounts changed".into());
    }
    if u.processes != b.processes {
        return Some("processes changed".into());
    }
    if u.tmpfs_bytes > b.tmpfs_bytes {
        return Some("tmpfs use grew".into());
    }
    None
}

/// The usage once the hop's aftermath settled (the source's shim exits a
/// moment after its container is removed): up to five seconds for it to
/// come back to `baseline`, when there is one.
fn settled(c: &Cluster, ns: &str, baseline: Option<&Usage>) -> Usage {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let u = usage(c, ns);
        let ok = match baseline {
            Some(b) => grew(&u, b).is_none(),
            None => true,
        };
        if ok || std::time::Instant::now() > deadline {
            return u;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn postcopy_and_hybrid_back_and_forth_keep_state_and_leak_nothing() {
    let hops: usize = std::env::var("MOSE_SOAK_HOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SHORT_HOPS)
        .max(WARM_UP + 4);
    let c = Cluster::up(2, None).expect("cluster up");
    let ns = mose_tests::unique_id("soak");
    c.run_state_service(1, &ns, STATE_MIB, &[])
        .expect("the state service");
    let addr = |n: usize| format!("{}:7070", c.node(n).unwrap().ip());
    let first = ping(&addr(1)).unwrap();
    let mut last_seq = first.seq;
    let mut baselines: [Option<Usage>; 2] = [None, None];
    let mut rss_after_first: Option<Vec<u64>> = None;
    for hop in 0..hops {
        let (from, to) = if hop % 2 == 0 { (1, 2) } else { (2, 1) };
        let technique = if hop % 4 < 2 { "postcopy" } else { "hybrid" };
        let r = c
            .migrate(from, to, &ns, "state", &["--technique", technique])
            .unwrap();
        assert_eq!(
            r["status"], "ok",
            "hop {hop} ({technique} {from}→{to}): {r}"
        );
        assert_eq!(r["lazy_source"], "criu-page-server", "hop {hop}: {r}");
        let p =
            ping(&addr(to)).unwrap_or_else(|e| panic!("hop {hop}: no answer on node {to}: {e}"));
        assert!(p.seq > last_seq, "hop {hop}: sequence went back");
        assert_eq!(p.sum, first.sum, "hop {hop}: state checksum changed");
        last_seq = p.seq;
        let u = settled(&c, &ns, baselines[hop % 2].as_ref());
        eprintln!(
            "hop {hop:>2} {technique:<8} {from}→{to}: downtime {:>5.0} ms, {u:?}",
            r["downtime_ms"].as_f64().unwrap_or(0.0)
        );
        assert_eq!(
            u.page_server_ports, 0,
            "hop {hop}: a page server outlived its migration"
        );
        let first_rss = rss_after_first.get_or_insert_with(|| u.rss_kib.clone());
        for (now, first) in u.rss_kib.iter().zip(first_rss.iter()) {
            assert!(
                *now <= first + RSS_BOUND_KIB,
                "hop {hop}: an agent's memory grew from {first} to {now} KiB"
            );
        }
        // the container sits on one node after even hops, the other after
        // odd ones: each parity is compared with its own baseline
        match &baselines[hop % 2] {
            None if hop >= WARM_UP => baselines[hop % 2] = Some(u),
            None => {}
            Some(b) => {
                if let Some(why) = grew(&u, b) {
                    panic!("hop {hop}: {why}\nnow {u:?}\nbaseline {b:?}");
                }
            }
        }
    }
    let at = if hops.is_multiple_of(2) { 1 } else { 2 };
    assert!(verify(&addr(at)).unwrap().is_ok(), "every page intact");
}
