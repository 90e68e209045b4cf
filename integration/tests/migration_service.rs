//! Migrating real services over shaped links: the state service under
//! failures in the middle of the stream (destination endpoint killed, link
//! cut), and Redis keeping its keys. Every failure must leave the source
//! answering with a continuing sequence and an intact state.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    time::Duration,
};

use mose_integration::{cluster::Cluster, wait_for};
use mose_workloads::{
    image::ctr_import,
    images::{cache_dir, redis_archive, REDIS_REF},
    probe::{ping, verify},
};

const RT: &str = "io.containerd.mose.v2";

/// A cluster whose node 1 runs the state service with `mib` MiB of state.
fn service(mib: u32, rate_mbit: u32) -> (Cluster, String, String) {
    let c = Cluster::up(2, Some(rate_mbit)).expect("cluster up");
    let ns = mose_tests::unique_id("svc");
    let addr = c
        .run_state_service(1, &ns, mib, &[])
        .expect("the state service");
    (c, ns, addr)
}

fn assert_source_intact(c: &Cluster, ns: &str, addr: &str, seq_before: u64, sum_before: u64) {
    let p = ping(addr).expect("the source still answers");
    assert!(
        p.seq > seq_before,
        "sequence continues: {} after {seq_before}",
        p.seq
    );
    assert_eq!(p.sum, sum_before, "state checksum unchanged (no dirtying)");
    assert!(verify(addr).unwrap().is_ok(), "every page intact");
    let n2 = c.node(2).unwrap();
    wait_for(
        "the destination to drop its partial copy",
        Duration::from_secs(30),
        || {
            !n2.ctr(ns)
                .ok(["containers", "ls", "-q"])
                .unwrap_or_default()
                .contains("state")
        },
    );
}

#[test]
fn destination_killed_mid_stream_rolls_back() {
    // 96 MiB over 80 Mbit/s: about ten seconds of transfer to interrupt
    let (c, ns, addr) = service(96, 80);
    let before = ping(&addr).unwrap();
    let plugin = c
        .node(2)
        .unwrap()
        .plugin_pid()
        .expect("node 2 runs a plugin");
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            // mid-stream: the destination is receiving, the transfer under way
            c.wait_receiving(2, Duration::from_secs(60)).unwrap();
            std::thread::sleep(Duration::from_secs(2));
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(plugin as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        });
        c.migrate(
            1,
            2,
            &ns,
            "state",
            &["--technique", "precopy", "--io-timeout", "5"],
        )
        .unwrap()
    });
    assert_ne!(r["status"], "ok", "{r}");
    assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    assert_source_intact(&c, &ns, &addr, before.seq, before.sum);
}

#[test]
fn link_cut_mid_stream_rolls_back() {
    let (c, ns, addr) = service(96, 80);
    let before = ping(&addr).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            // cut once the source is frozen and its memory on the wire
            c.wait_frozen(1, &ns);
            std::thread::sleep(Duration::from_secs(1));
            c.bed.cut_link(2).unwrap();
        });
        let r = c
            .migrate(
                1,
                2,
                &ns,
                "state",
                &["--technique", "cold", "--io-timeout", "4"],
            )
            .unwrap();
        assert_eq!(r["status"], "rolled-back", "{r}");
    });
    c.bed.restore_link(2).unwrap();
    assert_source_intact(&c, &ns, &addr, before.seq, before.sum);
}

fn redis(addr: &str, cmd: &[&str]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("*{}\r\n", cmd.len());
    for a in cmd {
        req += &format!("${}\r\n{a}\r\n", a.len());
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut line = String::new();
    let mut r = BufReader::new(s);
    r.read_line(&mut line).unwrap();
    if let Some(n) = line.strip_prefix('$') {
        let n: i64 = n.trim().parse().unwrap();
        if n < 0 {
            return "(nil)".into();
        }
        let mut v = String::new();
        r.read_line(&mut v).unwrap();
        return v.trim_end().to_string();
    }
    line.trim_end().to_string()
}

#[test]
fn redis_keys_survive_every_technique_there_and_back() {
    let c = Cluster::up(2, None).expect("cluster up");
    let ns = mose_tests::unique_id("redis");
    let (n1, n2) = (c.node(1).unwrap(), c.node(2).unwrap());
    ctr_import(
        n1.containerd_socket(),
        &ns,
        &redis_archive(&cache_dir()).unwrap(),
    )
    .unwrap();
    n1.ctr(&ns)
        .ok([
            "run",
            "-d",
            "--runtime",
            RT,
            "--net-host",
            REDIS_REF,
            "redis",
        ])
        .unwrap();
    let a1 = format!("{}:6379", n1.ip());
    let a2 = format!("{}:6379", n2.ip());
    wait_for("redis", Duration::from_secs(30), || {
        TcpStream::connect(&a1).is_ok()
    });
    for i in 0..200 {
        assert_eq!(
            redis(&a1, &["SET", &format!("key{i}"), &format!("value-{i}")]),
            "+OK"
        );
    }
    let r = c
        .migrate(1, 2, &ns, "redis", &["--technique", "precopy"])
        .unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    wait_for("redis on node 2", Duration::from_secs(30), || {
        TcpStream::connect(&a2).is_ok()
    });
    assert_eq!(redis(&a2, &["GET", "key0"]), "value-0");
    assert_eq!(redis(&a2, &["GET", "key199"]), "value-199");
    assert_eq!(redis(&a2, &["DBSIZE"]), ":200");
    redis(&a2, &["SET", "moved", "yes"]);
    let r = c
        .migrate(2, 1, &ns, "redis", &["--technique", "cold"])
        .unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    wait_for("redis back on node 1", Duration::from_secs(30), || {
        TcpStream::connect(&a1).is_ok()
    });
    assert_eq!(redis(&a1, &["GET", "moved"]), "yes");
    assert_eq!(redis(&a1, &["DBSIZE"]), ":201");

    // post-copy there (redis runs before its memory has arrived), hybrid back
    let r = c
        .migrate(1, 2, &ns, "redis", &["--technique", "postcopy"])
        .unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    wait_for(
        "redis on node 2 after post-copy",
        Duration::from_secs(30),
        || TcpStream::connect(&a2).is_ok(),
    );
    assert_eq!(redis(&a2, &["GET", "key123"]), "value-123");
    assert_eq!(redis(&a2, &["DBSIZE"]), ":201");
    redis(&a2, &["SET", "lazy", "yes"]);
    // the migrated copy still forks (a snapshot) like the original
    assert!(redis(&a2, &["BGSAVE"]).starts_with('+'));
    let r = c
        .migrate(2, 1, &ns, "redis", &["--technique", "hybrid"])
        .unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    wait_for(
        "redis on node 1 after hybrid",
        Duration::from_secs(30),
        || TcpStream::connect(&a1).is_ok(),
    );
    assert_eq!(redis(&a1, &["GET", "lazy"]), "yes");
    assert_eq!(redis(&a1, &["GET", "key7"]), "value-7");
    assert_eq!(redis(&a1, &["DBSIZE"]), ":202");
}
