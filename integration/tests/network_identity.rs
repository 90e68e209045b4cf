//! A migrated service keeps its address and its clients' connections: the
//! state service and Redis run in network namespaces of their own on the
//! testbed's service segment (CNI bridge + VXLAN across the node links),
//! and a client in the user netns holds one TCP connection to each across
//! migrations there and back with every technique, across failures that
//! roll back, and a refused migration.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use mose_integration::cluster::{assert_connection_kept, Cluster};
use mose_integration::testbed::segment::{self, SERVICE_NETWORK};
use mose_integration::wait_for;
use mose_workloads::image::ctr_import;
use mose_workloads::images::{
    cache_dir, redis_archive, state_service_archive, REDIS_REF, STATE_SERVICE_REF,
};
use mose_workloads::probe::{ping, verify, ProbeHandle};

const RT: &str = "io.containerd.mose.v2";
const TECHNIQUES: [&str; 4] = ["cold", "precopy", "postcopy", "hybrid"];
const PORT: u16 = 7070;

fn annotations(host: u8) -> Vec<String> {
    vec![
        "--annotation".into(),
        format!("mose.io/network={SERVICE_NETWORK}"),
        "--annotation".into(),
        format!("mose.io/address={}", segment::service_address(host)),
    ]
}

/// Starts the state service as `id` on node 1 with service address
/// `10.89.0.<host>`; returns its address as a client dials it.
fn state_service(c: &Cluster, ns: &str, id: &str, host: u8) -> String {
    state_service_of(c, ns, id, host, 16)
}

/// [`state_service`] holding `state_mib` MiB of state.
fn state_service_of(c: &Cluster, ns: &str, id: &str, host: u8, state_mib: u32) -> String {
    let archive = state_service_archive(None, &cache_dir()).expect("state-service image");
    for i in 1..=2 {
        ctr_import(c.node(i).unwrap().containerd_socket(), ns, &archive).unwrap();
    }
    let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--runtime".into(), RT.into()];
    args.extend(annotations(host));
    args.extend(
        [
            STATE_SERVICE_REF,
            id,
            "/usr/local/bin/mose-state-service",
            "--state-mib",
        ]
        .map(String::from),
    );
    args.push(state_mib.to_string());
    args.extend(["--port".into(), PORT.to_string()]);
    c.node(1).unwrap().ctr(ns).ok(&args).unwrap();
    let addr = format!("10.89.0.{host}:{PORT}");
    wait_for(
        "the state service on its address",
        Duration::from_secs(30),
        || {
            let a = addr.clone();
            c.bed
                .run_in_user(move || Ok(ping(&a).is_ok()))
                .unwrap_or(false)
        },
    );
    addr
}

fn migrate_ok(c: &Cluster, from: usize, to: usize, ns: &str, id: &str, technique: &str) {
    let r = c
        .migrate(from, to, ns, id, &["--technique", technique])
        .unwrap();
    assert_eq!(r["status"], "ok", "{technique} {from}->{to}: {r}");
    assert_eq!(r["connections"], "kept", "{r}");
    assert!(
        r["address"]
            .as_str()
            .is_some_and(|a| a.contains("10.89.0.")),
        "{r}"
    );
}

/// The address lives on node `at` only: its record and namespace are there
/// and gone from the other node, and the user's VXLAN sends its MAC there.
fn assert_address_at(c: &Cluster, at: usize, other: usize, host: u8) {
    let record = |i: usize| {
        segment::state_dir(c.node(i).unwrap().dir())
            .join(SERVICE_NETWORK)
            .join(format!("10.89.0.{host}.json"))
    };
    assert!(record(at).exists(), "node {at} holds the address");
    assert!(!record(other).exists(), "node {other} released it");
    let netns = record(other).with_extension("netns");
    assert!(!netns.exists(), "no namespace left on node {other}");
    let mac = format!("02:6d:0a:59:00:{host:02x}");
    let gone = c.node(other).unwrap().netns().to_string();
    assert_eq!(
        segment::local_ports(&gone, &mac).unwrap(),
        Vec::<String>::new(),
        "node {other}'s bridge has no port left for the address's MAC"
    );
    let at_ip = c.node(at).unwrap().ip();
    let user = c.bed.user_netns().to_string();
    wait_for(
        "the overlay to learn the new location",
        Duration::from_secs(5),
        || segment::learnt_location(&user, &mac).ok().flatten() == Some(at_ip),
    );
    let here = c.node(at).unwrap().netns().to_string();
    wait_for(
        &format!("node {at}'s bridge to reach the MAC on a local port"),
        Duration::from_secs(5),
        || segment::local_ports(&here, &mac).is_ok_and(|p| p.len() == 1),
    );
}

#[test]
fn state_service_keeps_address_and_connection_with_every_technique_there_and_back() {
    let c = Cluster::up(2, Some(1000)).expect("cluster up");
    let ns = mose_tests::unique_id("netid");
    let addr = state_service(&c, &ns, "state", 10);
    let a = addr.clone();
    let before = c.as_user(move || ping(&a));
    let probe = c.one_connection_probe(&addr);
    for t in TECHNIQUES {
        migrate_ok(&c, 1, 2, &ns, "state", t);
        assert_address_at(&c, 2, 1, 10);
        migrate_ok(&c, 2, 1, &ns, "state", t);
        assert_address_at(&c, 1, 2, 10);
    }
    let r = probe.stop();
    assert_connection_kept(&r);
    let a = addr.clone();
    let (after, report) = c.as_user(move || Ok((ping(&a)?, verify(&a)?)));
    assert!(after.seq > before.seq);
    assert_eq!(after.sum, before.sum, "state checksum unchanged");
    assert!(report.is_ok(), "every page intact");
    let user = c.bed.user_netns().to_string();
    let neigh = segment::neighbour(&user, "10.89.0.10").unwrap();
    assert!(
        neigh.contains("02:6d:0a:59:00:0a"),
        "the client's neighbour entry: {neigh}"
    );
}

/// One RESP command on an open connection; the reply's first line.
fn redis_cmd(s: &mut BufReader<TcpStream>, cmd: &[&str]) -> anyhow::Result<String> {
    let mut req = format!("*{}\r\n", cmd.len());
    for a in cmd {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.get_mut().write_all(req.as_bytes())?;
    let mut line = String::new();
    s.read_line(&mut line)?;
    if line.starts_with('$') && !line.starts_with("$-1") {
        let mut v = String::new();
        s.read_line(&mut v)?;
        return Ok(v.trim_end().to_string());
    }
    Ok(line.trim_end().to_string())
}

#[test]
fn a_redis_client_connection_opened_before_keeps_working_after_every_technique() {
    let c = Cluster::up(2, Some(1000)).expect("cluster up");
    let ns = mose_tests::unique_id("netredis");
    let archive = redis_archive(&cache_dir()).expect("redis image");
    for i in 1..=2 {
        ctr_import(c.node(i).unwrap().containerd_socket(), &ns, &archive).unwrap();
    }
    let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--runtime".into(), RT.into()];
    args.extend(annotations(11));
    args.extend([REDIS_REF, "redis"].map(String::from));
    c.node(1).unwrap().ctr(&ns).ok(&args).unwrap();
    let conn = c.as_user(|| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match TcpStream::connect_timeout(
                &"10.89.0.11:6379".parse()?,
                Duration::from_millis(500),
            ) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(30)))?;
                    return Ok(BufReader::new(s));
                }
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => return Err(e.into()),
            }
        }
    });
    let mut conn = conn;
    assert_eq!(redis_cmd(&mut conn, &["SET", "k0", "v0"]).unwrap(), "+OK");
    for (i, t) in TECHNIQUES.iter().enumerate() {
        for (from, to) in [(1, 2), (2, 1)] {
            migrate_ok(&c, from, to, &ns, "redis", t);
            let key = format!("k{i}{from}");
            // the same connection, opened before the first migration
            assert_eq!(
                redis_cmd(&mut conn, &["SET", &key, t]).unwrap(),
                "+OK",
                "{t} {from}->{to}"
            );
            assert_eq!(redis_cmd(&mut conn, &["GET", "k0"]).unwrap(), "v0");
            assert_eq!(redis_cmd(&mut conn, &["GET", &key]).unwrap(), *t);
        }
    }
}

/// The source answers on its address with the probe's connection intact,
/// and node 2 holds no record, namespace or container of it.
fn assert_rolled_back_in_place(c: &Cluster, ns: &str, probe: ProbeHandle, addr: &str) {
    let a = addr.to_string();
    let p = c.as_user(move || ping(&a));
    assert!(p.seq > 0);
    let r = probe.stop();
    assert_connection_kept(&r);
    let n2 = c.node(2).unwrap();
    wait_for(
        "the destination to drop its copy",
        Duration::from_secs(30),
        || {
            !n2.ctr(ns)
                .ok(["containers", "ls", "-q"])
                .unwrap_or_default()
                .contains("state")
        },
    );
    let dir = segment::state_dir(n2.dir()).join(SERVICE_NETWORK);
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "node 2 left {left:?} in {}", dir.display());
}

#[test]
fn failures_roll_back_with_the_address_and_connection_on_the_source() {
    let c = Cluster::up(2, Some(200)).expect("cluster up");
    let ns = mose_tests::unique_id("netfail");
    let addr = state_service(&c, &ns, "state", 12);
    // the destination has no configuration for the network: refused at
    // begin, before the source is frozen
    let conf = segment::conf_dir(c.node(2).unwrap().dir()).join("svc.conflist");
    let saved = std::fs::read(&conf).unwrap();
    std::fs::remove_file(&conf).unwrap();
    let probe = c.one_connection_probe(&addr);
    let r = c
        .migrate(1, 2, &ns, "state", &["--technique", "cold"])
        .unwrap();
    assert_eq!(r["status"], "failed", "refused before the freeze: {r}");
    assert!(
        r["error"].as_str().unwrap_or("").contains("svc.conflist"),
        "{r}"
    );
    assert_rolled_back_in_place(&c, &ns, probe, &addr);

    // the destination's CNI ADD fails (a bridge name Linux refuses): its
    // restore fails after the freeze and the migration rolls back
    let broken = String::from_utf8(saved.clone())
        .unwrap()
        .replace("\"mose-svc0\"", "\"bridge-name-too-long-for-linux\"");
    std::fs::write(&conf, broken).unwrap();
    let probe = c.one_connection_probe(&addr);
    let r = c
        .migrate(1, 2, &ns, "state", &["--technique", "cold"])
        .unwrap();
    assert_eq!(r["status"], "rolled-back", "{r}");
    assert!(r["error"].as_str().unwrap_or("").contains("CNI"), "{r}");
    assert_eq!(r["connections"], "untouched", "the source kept them: {r}");
    assert!(
        r["downtime_ms"].as_f64().is_some_and(|d| d > 0.0),
        "frozen until the rollback: {r}"
    );
    assert_rolled_back_in_place(&c, &ns, probe, &addr);
    std::fs::write(&conf, saved).unwrap();

    // the node link cut once the source is frozen
    let probe = c.one_connection_probe(&addr);
    std::thread::scope(|s| {
        s.spawn(|| {
            c.wait_frozen(1, &ns);
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
    assert_rolled_back_in_place(&c, &ns, probe, &addr);
}

#[test]
fn destination_agent_killed_mid_stream_rolls_back_with_the_address_and_connection() {
    // cold: frozen, link held down, then 96 MiB over 80 Mbit/s (about ten
    // seconds of transfer) interrupted by the destination's agent dying
    let c = Cluster::up(2, Some(80)).expect("cluster up");
    let ns = mose_tests::unique_id("netkill");
    let addr = state_service_of(&c, &ns, "state", 13, 96);
    let plugin = c
        .node(2)
        .unwrap()
        .plugin_pid()
        .expect("node 2 runs a plugin");
    let probe = c.one_connection_probe(&addr);
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            c.wait_frozen(1, &ns);
            c.wait_receiving(2, Duration::from_secs(60)).unwrap();
            std::thread::sleep(Duration::from_secs(1));
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
            &["--technique", "cold", "--io-timeout", "5"],
        )
        .unwrap()
    });
    assert_ne!(r["status"], "ok", "{r}");
    assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    assert_rolled_back_in_place(&c, &ns, probe, &addr);
    let mac = "02:6d:0a:59:00:0d";
    let n1 = c.node(1).unwrap().netns().to_string();
    assert_eq!(
        segment::local_ports(&n1, mac).unwrap().len(),
        1,
        "the source's port is the address's only owner"
    );
}

#[test]
fn an_address_taken_on_the_destination_is_refused_before_the_freeze() {
    let c = Cluster::up(2, Some(1000)).expect("cluster up");
    let ns = mose_tests::unique_id("nettaken");
    state_service(&c, &ns, "state", 13);
    // a squatter on node 2 with the same address (an operator's mistake on
    // a shared segment; a migration must not make it two owners on node 2)
    let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--runtime".into(), RT.into()];
    args.extend(annotations(13));
    args.extend(
        [
            STATE_SERVICE_REF,
            "squatter",
            "/usr/local/bin/mose-state-service",
            "--state-mib",
            "1",
        ]
        .map(String::from),
    );
    c.node(2).unwrap().ctr(&ns).ok(&args).unwrap();
    let r = c
        .migrate(1, 2, &ns, "state", &["--technique", "precopy"])
        .unwrap();
    assert_eq!(r["status"], "failed", "refused before the freeze: {r}");
    let e = r["error"].as_str().unwrap_or("");
    assert!(
        e.contains("10.89.0.13/24") && e.contains("already held"),
        "{e}"
    );
    let tasks = c.node(1).unwrap().ctr(&ns).ok(["tasks", "ls"]).unwrap();
    assert!(
        tasks
            .lines()
            .any(|l| l.starts_with("state") && l.contains("RUNNING")),
        "the source runs on: {tasks}"
    );
    let tasks = c.node(2).unwrap().ctr(&ns).ok(["tasks", "ls"]).unwrap();
    assert!(!tasks.lines().any(|l| l.starts_with("state ")), "{tasks}");
}

#[test]
fn malformed_or_unusable_identities_are_refused_at_create() {
    let c = Cluster::up(1, None).expect("cluster up");
    let ns = mose_tests::unique_id("netbad");
    let n1 = c.node(1).unwrap();
    n1.import_test_image(&ns).unwrap();
    let cases: [(&[&str], &str, &str); 4] = [
        (
            &["--net-host"],
            "10.89.0.20/24",
            "network namespace of its own",
        ),
        (&[], "10.89.0.300/24", "mose.io/address"),
        (&[], "10.89.0.0/24", "broadcast"),
        (
            &["--annotation", "mose.io/network=nonet"],
            "10.89.0.21/24",
            "nonet.conflist",
        ),
    ];
    for (i, (extra, address, says)) in cases.iter().enumerate() {
        let id = format!("bad{i}");
        let mut args = vec!["run", "-d", "--runtime", RT];
        args.extend_from_slice(extra);
        let network = format!("mose.io/network={SERVICE_NETWORK}");
        if !extra.contains(&"mose.io/network=nonet") {
            args.extend(["--annotation", &network]);
        }
        let addr = format!("mose.io/address={address}");
        args.extend(["--annotation", &addr]);
        args.extend(["localhost/mose-test/busybox:latest", &id, "sleep", "60"]);
        let e = n1.ctr(&ns).ok(&args).expect_err(&id);
        assert!(format!("{e:#}").contains(says), "{id}: {e:#}");
        let _ = n1.ctr(&ns).run(["containers", "rm", &id]);
    }
    let dir = segment::state_dir(n1.dir()).join(SERVICE_NETWORK);
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "refusals leave nothing: {left:?}");
}
