//! MOSE demo (the README's main command): a two-node edge testbed, the
//! stateful state service on node 1 with its service address on the
//! testbed's service segment, one probe connection from the user netns at
//! 200 requests/s for the whole run, and migrations there and back with
//! each technique. Prints a KPI table (with "connection kept" per
//! migration) and writes `results/demo.json`, `results/demo.svg` (KPI
//! bars) and `results/demo-timeline.svg` / `.png` (each migration's phases
//! on a time axis, its downtime window marked).
//!
//! Usage: mose-demo [--state-mib S (64)] [--dirty-mib-per-s R (4)] [--rate-mbit L (1000)]

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use clap::Parser;
use mose_integration::{
    cluster::Cluster, plot, print_table, results_dir, testbed::segment, write_json,
};
use mose_workloads::{
    image::ctr_import,
    images::{cache_dir, state_service_archive, STATE_SERVICE_REF},
    probe::{verify, Probe, ProbeConfig, ProbeResult},
};

const NS: &str = "mose-demo";
const PORT: u16 = 7070;

#[derive(Debug, Parser)]
#[command(
    name = "mose-demo",
    args_override_self = true,
    about = "MOSE demo: a two-node edge testbed, the state service on node 1 under a 200 req/s \
             probe, and migrations there and back with each technique",
    after_help = "Prints a KPI table and writes results/demo.json, results/demo.svg (KPI bars) and \
                  results/demo-timeline.svg and .png (each migration's phases and downtime window \
                  on a time axis), under $MOSE_RESULTS_DIR when set."
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

/// The service address the state service keeps on every node.
const SERVICE_HOST: u8 = 10;
/// The demo's migrations: technique, from node, to node.
const PLAN: [(&str, usize, usize); 8] = [
    ("cold", 1, 2),
    ("cold", 2, 1),
    ("precopy", 1, 2),
    ("precopy", 2, 1),
    ("postcopy", 1, 2),
    ("postcopy", 2, 1),
    ("hybrid", 1, 2),
    ("hybrid", 2, 1),
];

fn main() -> Result<()> {
    let args = Args::parse();
    println!("MOSE demo: live migration of a stateful service between two edge nodes");
    println!(
        "  state {} MiB, dirtied at {} MiB/s, links shaped to {} Mbit/s; the service keeps \
         {} and its client's one TCP connection\n",
        args.state_mib,
        args.dirty,
        args.rate,
        segment::service_address(SERVICE_HOST)
    );
    eprintln!("[demo] bringing up the two-node testbed (service segment: bridge + VXLAN per node)");
    let c = Cluster::up(2, Some(args.rate))?;
    let addr = start_service(&c, &args)?;
    eprintln!(
        "[demo] one probe connection from the user netns to {addr} at 200 req/s for all migrations"
    );
    let mut cfg = ProbeConfig::new(vec![addr.clone()], 200.0);
    cfg.read_timeout = Duration::from_secs(20);
    let probe = c.bed.run_in_user(move || Probe::start_with(cfg))?;
    let started = Instant::now();
    let mut windows = Vec::new();
    let mut results = Vec::new();
    for (technique, from, to) in PLAN {
        eprintln!("[demo] {technique}: node {from} -> node {to}");
        std::thread::sleep(Duration::from_millis(500));
        let t0 = started.elapsed().as_secs_f64() * 1e3;
        let r = c.migrate(
            from,
            to,
            NS,
            "state",
            &["--technique", technique, "--max-rounds", "4"],
        )?;
        let t1 = started.elapsed().as_secs_f64() * 1e3;
        windows.push((t0, t1));
        let ok = r["status"] == "ok";
        results.push(
            serde_json::json!({"technique": technique, "from": from, "to": to, "migration": r}),
        );
        if !ok {
            let _ = probe.stop();
            bail!(
                "migration {technique} node {from} -> node {to} failed: {}",
                r["error"]
            );
        }
    }
    std::thread::sleep(Duration::from_millis(700));
    let p = probe.stop();
    let a = addr.clone();
    let verified = c
        .bed
        .run_in_user(move || verify(&a))
        .map(|v| v.is_ok())
        .unwrap_or(false);
    report(&args, &p, &windows, &mut results, verified)
}

/// Starts the state service on node 1 with its service address; returns
/// the address clients dial.
fn start_service(c: &Cluster, args: &Args) -> Result<String> {
    let n1 = c.node(1)?;
    eprintln!("[demo] importing the state-service image on node 1 only (node 2 gets it with the migration)");
    let archive = state_service_archive(None, &cache_dir())?;
    ctr_import(n1.containerd_socket(), NS, &archive)?;
    let address = segment::service_address(SERVICE_HOST);
    n1.ctr(NS).ok([
        "run",
        "-d",
        "--runtime",
        "io.containerd.mose.v2",
        "--annotation",
        &format!("mose.io/network={}", segment::SERVICE_NETWORK),
        "--annotation",
        &format!("mose.io/address={address}"),
        "--label",
        "demo.mose.io/role=state-service",
        STATE_SERVICE_REF,
        "state",
        "/usr/local/bin/mose-state-service",
        "--state-mib",
        &args.state_mib.to_string(),
        "--dirty-mib-per-s",
        &args.dirty.to_string(),
        "--port",
        &PORT.to_string(),
    ])?;
    let addr = format!("10.89.0.{SERVICE_HOST}:{PORT}");
    let a = addr.clone();
    c.bed.run_in_user(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while mose_workloads::probe::ping(&a).is_err() {
            if Instant::now() > deadline {
                bail!("the state service did not answer on {a}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })?;
    Ok(addr)
}

/// Prints the table (one row per migration: the probe's gap inside it and
/// whether its one connection was kept) and writes the JSON and the plot.
fn report(
    args: &Args,
    p: &ProbeResult,
    windows: &[(f64, f64)],
    results: &mut [serde_json::Value],
    verified: bool,
) -> Result<()> {
    let mut rows = Vec::new();
    let mut all_kept = true;
    for ((row, (t0, t1)), (technique, from, to)) in results.iter_mut().zip(windows).zip(PLAN) {
        let r = &row["migration"];
        let (gap, one_conn) = p.window(*t0, *t1).unwrap_or((f64::NAN, false));
        let kept = one_conn && r["connections"] == "kept";
        all_kept &= kept;
        eprintln!(
            "[demo] {technique} n{from}->n{to}: {}",
            if kept {
                "connection kept"
            } else {
                "connection NOT kept"
            }
        );
        rows.push(row_of(technique, from, to, r, gap, kept));
        row["client_gap_ms"] = serde_json::json!(gap);
        row["connection_kept"] = serde_json::json!(kept);
    }
    println!();
    print_table(&HEADER, &rows);
    println!("\nclient gap = longest gap between answers of one 200 req/s probe connection during the migration;");
    println!("mose downtime = freeze to the destination reporting the restored container running.");
    println!(
        "connection = the probe's single TCP connection (opened once, before the first migration)."
    );
    println!(
        "probe overall: {} answers, {} reconnects, sequence {}; final VERIFY {}",
        p.answers,
        p.reconnects,
        if p.seq_ok { "continuous" } else { "BROKEN" },
        if verified { "ok" } else { "FAILED" }
    );
    write_outputs(args, p, results)?;
    if !p.seq_ok || !verified || !all_kept || p.reconnects > 0 {
        bail!("state lost or the client's connection not kept (see the table)");
    }
    Ok(())
}

fn row_of(
    technique: &str,
    from: usize,
    to: usize,
    r: &serde_json::Value,
    gap: f64,
    kept: bool,
) -> Vec<String> {
    vec![
        format!("{technique} n{from}->n{to}"),
        r["status"].as_str().unwrap_or("?").to_string(),
        format!("{gap:.0}"),
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
        if kept {
            "kept".into()
        } else {
            "NOT kept".into()
        },
    ]
}

fn write_outputs(args: &Args, p: &ProbeResult, results: &[serde_json::Value]) -> Result<()> {
    let dir = results_dir()?;
    write_json(
        &dir.join("demo.json"),
        &serde_json::json!({"state_mib": args.state_mib, "dirty_mib_per_s": args.dirty,
            "rate_mbit": args.rate, "probe": p, "migrations": results}),
    )?;
    let labels: Vec<String> = PLAN
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
    let gaps = results
        .iter()
        .map(|r| r["client_gap_ms"].as_f64().unwrap_or(0.0))
        .collect();
    plot::grouped_bars(
        &dir.join("demo.svg"),
        &format!(
            "MOSE migrations, {} MiB state, {} MiB/s dirty, {} Mbit/s, one client connection",
            args.state_mib, args.dirty, args.rate
        ),
        "ms",
        &labels,
        &[
            ("client-observed gap", gaps),
            ("mose downtime", col("downtime_ms")),
            ("total migration time", col("total_ms")),
        ],
    )?;
    let (timeline_svg, timeline_png) = write_timeline(args, &dir, results)?;
    println!(
        "\nwrote {}, {}, {} and {}",
        dir.join("demo.json").display(),
        dir.join("demo.svg").display(),
        timeline_svg.display(),
        timeline_png.display()
    );
    Ok(())
}

/// `demo-timeline.svg` and `.png`: one bar per migration, its phases and
/// downtime window; returns their paths.
fn write_timeline(
    args: &Args,
    dir: &Path,
    results: &[serde_json::Value],
) -> Result<(PathBuf, PathBuf)> {
    let bars: Vec<plot::TimelineBar> = results
        .iter()
        .map(|r| {
            let label = format!(
                "{} n{}→n{}",
                r["technique"].as_str().unwrap_or("?"),
                r["from"],
                r["to"]
            );
            plot::TimelineBar::from_result(label, &r["migration"])
        })
        .collect();
    plot::phase_timeline(
        dir,
        "demo-timeline",
        &format!(
            "MOSE migration phases, {} MiB state, {} MiB/s dirty, {} Mbit/s",
            args.state_mib, args.dirty, args.rate
        ),
        &bars,
    )
}

const HEADER: [&str; 10] = [
    "migration",
    "status",
    "client gap ms",
    "mose downtime ms",
    "total ms",
    "MiB sent",
    "rounds",
    "lazy ms",
    "faults",
    "connection",
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
