//! The podman baseline by hand, on a testbed left running by `mose-testbed`:
//! starts the state service under Podman on node 1, migrates it to node 2
//! with `podman container checkpoint --export` / archive over TCP /
//! `podman container restore --import`, checks that the state answers on
//! node 2 (PING sequence continued, same checksum when nothing is dirtied,
//! VERIFY ok), prints the phases as JSON and removes the containers.
//!
//! ```text
//! target/debug/mose-testbed up --name pm --nodes 2 --rate-mbit 1000
//! cargo run -p mose-integration --example podman_baseline -- pm 64 [DIRTY_MIB_PER_S]
//! target/debug/mose-testbed down --name pm
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mose_integration::{baseline::podman, cluster::Cluster, testbed::Testbed};
use mose_workloads::probe::{ping, verify, Probe};

const PORT: u16 = 7070;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args
        .first()
        .context("usage: podman_baseline TESTBED [STATE_MIB] [DIRTY]")?;
    let mib: u64 = args.get(1).map_or(Ok(64), |s| s.parse())?;
    let dirty: u64 = args.get(2).map_or(Ok(0), |s| s.parse())?;
    let c = Cluster {
        bed: Testbed::load(name)?,
        tls: Default::default(),
        bin: Default::default(),
    };
    podman::ensure_ready()?;
    let id = format!("pm{}", std::process::id());
    let cmd: Vec<String> = [
        "/usr/local/bin/mose-state-service",
        "--state-mib",
        &mib.to_string(),
        "--dirty-mib-per-s",
        &dirty.to_string(),
        "--port",
        &PORT.to_string(),
    ]
    .map(String::from)
    .to_vec();
    let result = run(&c, &id, &cmd, dirty);
    podman::remove(&c, 1, &id);
    podman::remove(&c, 2, &id);
    result
}

fn run(c: &Cluster, id: &str, cmd: &[String], dirty: u64) -> Result<()> {
    let a1 = format!("{}:{PORT}", c.node(1)?.ip());
    let a2 = format!("{}:{PORT}", c.node(2)?.ip());
    let t = Instant::now();
    let pid = podman::start(c, 1, id, cmd)?;
    while ping(&a1).is_err() {
        if t.elapsed() > Duration::from_secs(120) {
            bail!("the state service did not answer on {a1}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "started {id} on n1 (init pid {pid}), answering after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(1));
    let before = ping(&a1)?;
    // a client connection held open over the checkpoint: CRIU must close it
    // (tcp-close through org.criu.config), not refuse to dump it
    let mut held = TcpStream::connect(&a1)?;
    held.write_all(b"PING\n")?;
    let mut buf = [0u8; 256];
    let _ = held.read(&mut buf)?;
    let probe = Probe::start(vec![a1.clone(), a2.clone()], 200.0)?;
    std::thread::sleep(Duration::from_millis(500));
    let r = podman::migrate(c, id);
    std::thread::sleep(Duration::from_millis(500));
    let p = probe.stop();
    let r = r?;
    held.set_read_timeout(Some(Duration::from_secs(2)))?;
    let held_closed = matches!(held.read(&mut buf), Ok(0) | Err(_));
    let after = ping(&a2).context("the restored service on node 2")?;
    let v = verify(&a2)?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    println!(
        "client-observed downtime {:.0} ms (probe at 200 req/s, {} answers on n2); \
         PING seq {} -> {}, sum {:016x} -> {:016x}; VERIFY {:?}; held connection closed: {held_closed}",
        p.downtime_ms,
        p.answers_per_addr.get(&a2).copied().unwrap_or(0),
        before.seq,
        after.seq,
        before.sum,
        after.sum,
        v
    );
    if after.seq <= before.seq || (dirty == 0 && after.sum != before.sum) || !v.is_ok() {
        bail!("the state did not survive the migration");
    }
    if ping(&a1).is_ok() {
        bail!("the source still answers on {a1}");
    }
    Ok(())
}
