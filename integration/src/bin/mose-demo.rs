//! MOSE demo (the README's main command): a two-node edge testbed, the
//! stateful state service on node 1, a probe client at 200 requests/s, and
//! migrations there and back with each technique. Prints a KPI table and
//! writes `results/demo.json` and `results/demo.svg`.
//!
//! Usage: mose-demo [--state-mib S (64)] [--dirty-mib-per-s R (4)] [--rate-mbit L (1000)]

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;
use mose_integration::{cluster::Cluster, plot, print_table, results_dir, write_json};
use mose_workloads::{
    image::ctr_import,
    images::{cache_dir, state_service_archive, STATE_SERVICE_REF},
    probe::{verify, Probe},
};

const NS: &str = "mose-demo";
const PORT: u16 = 7070;

#[derive(Debug, Parser)]
#[command(
    name = "mose-demo",
    args_override_self = true,
    about = "MOSE demo: a two-node edge testbed, the state service on node 1 under a 200 req/s \
             probe, and migrations there and back with each technique",
    after_help = "Prints a KPI table and writes results/demo.json and results/demo.svg (under \
                  $MOSE_RESULTS_DIR when set)."
)]
struct Args {
    /// State size of the state service, in MiB.
    #[arg(long, value_name = "S", default_value_t = 64)]
    state_mib: u64,
    /// Rate at which the state is rewritten, in MiB/s.
    #[arg(long = "dirty-mib-per-s", value_name = "R", default_value_t = 4)]
    dirty: u64,
    /// Rate the testbed's links are shaped to, in Mbit/s.
    #[arg(long = "rate-mbit", value_name = "L", default_value_t = 1000)]
    rate: u32,
}

fn main() -> Result<()> {
    let Args {
        state_mib,
        dirty,
        rate,
    } = Args::parse();
    println!("MOSE demo: live migration of a stateful service between two edge nodes");
    println!("  state {state_mib} MiB, dirtied at {dirty} MiB/s, links shaped to {rate} Mbit/s\n");
    eprintln!("[demo] bringing up the two-node testbed");
    let c = Cluster::up(2, Some(rate))?;
    let (n1, n2) = (c.node(1)?, c.node(2)?);
    eprintln!("[demo] importing the state-service image on node 1 only (node 2 gets it with the migration)");
    let archive = state_service_archive(None, &cache_dir())?;
    ctr_import(n1.containerd_socket(), NS, &archive)?;
    n1.ctr(NS).ok([
        "run",
        "-d",
        "--runtime",
        "io.containerd.mose.v2",
        "--net-host",
        "--label",
        "demo.mose.io/role=state-service",
        STATE_SERVICE_REF,
        "state",
        "/usr/local/bin/mose-state-service",
        "--state-mib",
        &state_mib.to_string(),
        "--dirty-mib-per-s",
        &dirty.to_string(),
        "--port",
        &PORT.to_string(),
    ])?;
    let addrs = vec![format!("{}:{PORT}", n1.ip()), format!("{}:{PORT}", n2.ip())];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while mose_workloads::probe::ping(&addrs[0]).is_err() {
        if std::time::Instant::now() > deadline {
            bail!("the state service did not answer on {}", addrs[0]);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let plan = [
        ("cold", 1, 2),
        ("cold", 2, 1),
        ("precopy", 1, 2),
        ("precopy", 2, 1),
        ("postcopy", 1, 2),
        ("hybrid", 2, 1),
    ];
    let mut rows = Vec::new();
    let mut results = Vec::new();
    let mut seq_ok = true;
    for (technique, from, to) in plan {
        eprintln!("[demo] {technique}: node {from} -> node {to}");
        let probe = Probe::start(addrs.clone(), 200.0)?;
        std::thread::sleep(Duration::from_millis(500));
        let r = c.migrate(
            from,
            to,
            NS,
            "state",
            &["--technique", technique, "--max-rounds", "4"],
        )?;
        std::thread::sleep(Duration::from_millis(700));
        let p = probe.stop();
        let dest = &addrs[to - 1];
        let v = verify(dest).map(|v| v.is_ok()).unwrap_or(false);
        seq_ok &= p.seq_ok;
        let status = r["status"].as_str().unwrap_or("?").to_string();
        rows.push(vec![
            format!("{technique} n{from}->n{to}"),
            status.clone(),
            format!("{:.0}", p.downtime_ms),
            format!("{:.0}", r["downtime_ms"].as_f64().unwrap_or(0.0)),
            format!("{:.0}", r["total_ms"].as_f64().unwrap_or(0.0)),
            format!("{:.1}", r["bytes_sent"].as_f64().unwrap_or(0.0) / 1048576.0),
            r["rounds"].to_string(),
            r["lazy_ms"]
                .as_f64()
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "-".into()),
            r["faults"]
                .as_u64()
                .map(|v| {
                    format!(
                        "{v} (p99 {:.1} ms)",
                        r["fault_p99_us"].as_f64().unwrap_or(0.0) / 1000.0
                    )
                })
                .unwrap_or_else(|| "-".into()),
            if p.seq_ok { "yes".into() } else { "NO".into() },
            if v { "ok".into() } else { "FAILED".into() },
        ]);
        results.push(serde_json::json!({
            "technique": technique, "from": n1.name(), "to": to,
            "migration": r, "probe": p,
            "verify_ok": v,
        }));
        if status != "ok" {
            print_table(&HEADER, &rows);
            bail!(
                "migration {technique} node {from} -> node {to} failed: {}",
                r["error"]
            );
        }
    }
    println!();
    print_table(&HEADER, &rows);
    println!("\nclient-observed downtime = longest gap between answers of a 200 req/s probe;");
    println!("mose downtime = freeze to the destination reporting the restored container running.");
    println!(
        "lazy ms = post-copy/hybrid: restore to the last page in place (faults: waits for a page)."
    );
    let dir = results_dir()?;
    write_json(
        &dir.join("demo.json"),
        &serde_json::json!({"state_mib": state_mib, "dirty_mib_per_s": dirty, "rate_mbit": rate, "migrations": results}),
    )?;
    let labels: Vec<String> = plan
        .iter()
        .map(|(t, f, _)| format!("{t} {}", if *f == 1 { "->" } else { "<-" }))
        .collect();
    let labels: Vec<&str> = labels.iter().map(|s| s.as_str()).collect();
    let col = |k: &str| -> Vec<f64> {
        results
            .iter()
            .map(|r| r["migration"][k].as_f64().unwrap_or(0.0))
            .collect()
    };
    plot::grouped_bars(
        &dir.join("demo.svg"),
        &format!("MOSE migrations, {state_mib} MiB state, {dirty} MiB/s dirty, {rate} Mbit/s"),
        "ms",
        &labels,
        &[
            (
                "client-observed downtime",
                results
                    .iter()
                    .map(|r| r["probe"]["downtime_ms"].as_f64().unwrap_or(0.0))
                    .collect(),
            ),
            ("mose downtime", col("downtime_ms")),
            ("total migration time", col("total_ms")),
        ],
    )?;
    println!(
        "\nwrote {} and {}",
        dir.join("demo.json").display(),
        dir.join("demo.svg").display()
    );
    if !seq_ok {
        bail!("the probe saw the sequence repeat or restart: state was lost");
    }
    Ok(())
}

const HEADER: [&str; 11] = [
    "migration",
    "status",
    "client gap ms",
    "mose downtime ms",
    "total ms",
    "MiB sent",
    "rounds",
    "lazy ms",
    "faults",
    "seq ok",
    "verify",
];

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("mose-demo").chain(args.iter().copied()))
    }

    #[test]
    fn flags() {
        Args::command().debug_assert();
        let a = parse(&[]).expect("defaults");
        assert_eq!((a.state_mib, a.dirty, a.rate), (64, 4, 1000));
        let a = parse(&[
            "--state-mib",
            "128",
            "--dirty-mib-per-s=8",
            "--rate-mbit",
            "200",
        ])
        .expect("flags");
        assert_eq!((a.state_mib, a.dirty, a.rate), (128, 8, 200));
        for bad in [&["--bogus"][..], &["--state-mib"], &["--rate-mbit", "1.5"]] {
            let e = parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }
}
