//! Migration benchmark on the two-node testbed: the state service with
//! S MiB of state dirtied at R MiB/s, over links shaped to L Mbit/s, migrated
//! with MOSE `cold`, `precopy`, `postcopy` and `hybrid` and, in the same run
//! and over the same links, with the cold migrations a user has without MOSE
//! (see `mose_integration::baseline`): `pipeline` (runc checkpoint into tmpfs,
//! tar over TCP while it is read, unpacked into tmpfs, runc restore), `podman`
//! (the MOSE paper's Podman checkpoint --export / restore --import) and
//! `ctr-content-store` (ctr checkpoint, the tar ingested into containerd's
//! content store, containerd restore). A probe client at 200 req/s measures
//! the client-observed downtime of each; ratios are given against every
//! baseline in the run and against the strongest (lowest downtime).
//!
//! Usage: mose-bench-migration [--state 64,512,1024] [--dirty 0,16] [--links 1000,200] [--runs 1]
//!        [--techniques pipeline,podman,ctr-content-store,cold,precopy,postcopy,hybrid]   (see `--help`)
//! Writes results/bench-migration.json, results/bench-migration.svg and one
//! phase timeline per configuration, results/bench-migration-timeline-*.{svg,png}.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use clap::{builder::PossibleValuesParser, Parser};
use mose_integration::{
    baseline::{self, ctr, pipeline, podman, BASELINES},
    cluster::Cluster,
    median, plot, print_table, results_dir, write_json,
};
use mose_tests::fifo::TaskIo;
use mose_workloads::{
    image::{ctr_import, ImageSpec},
    images::{
        cache_dir, find_binary, state_service_archive, state_service_image, STATE_SERVICE_BIN,
        STATE_SERVICE_REF,
    },
    probe::{ping, verify, Probe, ProbeResult},
};

const PORT: u16 = 7070;
/// MOSE's techniques as `--techniques` names them: `postcopy-tmpfs` and
/// `hybrid-tmpfs` are post-copy and hybrid from a full dump into tmpfs
/// (`--lazy-source tmpfs-dump`), beside the same techniques from CRIU's lazy dump.
const MOSE_TECHNIQUES: [&str; 6] = [
    "cold",
    "precopy",
    "postcopy",
    "hybrid",
    "postcopy-tmpfs",
    "hybrid-tmpfs",
];
/// The default `--techniques`: every baseline, then MOSE's four.
const DEFAULT_TECHNIQUES: &str = "pipeline,podman,ctr-content-store,cold,precopy,postcopy,hybrid";

fn is_baseline(technique: &str) -> bool {
    BASELINES.contains(&technique)
}

/// The lazy phase's rate as a share of the link's, in percent.
fn lazy_link_pct(run: &Run, link_mbit: u32) -> f64 {
    if run.lazy_ms <= 0.0 {
        return 0.0;
    }
    let mbit = run.lazy_bytes * 8.0 / 1e6 / (run.lazy_ms / 1000.0);
    100.0 * mbit / f64::from(link_mbit)
}

/// `mosectl migrate` arguments of a MOSE technique as `--techniques` names it.
fn migrate_args(technique: &str) -> Vec<&str> {
    let (base, tmpfs) = match technique.strip_suffix("-tmpfs") {
        Some(b) => (b, true),
        None => (technique, false),
    };
    let mut a = vec!["--technique", base, "--max-rounds", "5"];
    if tmpfs {
        a.extend(["--lazy-source", "tmpfs-dump"]);
    }
    a
}

/// The phases of a migration result up to the restore (where its downtime
/// goes): `name=ms` for each, the destination's own steps included.
fn downtime_breakdown(detail: &serde_json::Value) -> String {
    detail["phases"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|p| {
                    let n = p["name"].as_str().unwrap_or_default();
                    !matches!(n, "image" | "lazy pages" | "release") && !n.starts_with("round")
                })
                .map(|p| {
                    format!(
                        "{}={:.0}",
                        p["name"].as_str().unwrap_or("?"),
                        p["duration_ms"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// A configuration: state MiB, dirty MiB/s, link Mbit/s.
type Config = (u64, u64, u32);

#[derive(Debug, Parser)]
#[command(
    name = "mose-bench-migration",
    args_override_self = true,
    about = "Migration benchmark on the two-node testbed: the state service migrated with MOSE's \
             techniques and, over the same links, with three cold baselines (pipeline: runc + tar \
             over TCP; podman: checkpoint --export / restore --import; ctr-content-store), \
             client-observed downtime measured by a 200 req/s probe",
    after_help = "Every list is comma-separated; the grid is state x dirty x links. Writes \
                  results/bench-migration.json, results/bench-migration.svg and phase timelines \
                  results/bench-migration-timeline-*.svg/.png (under $MOSE_RESULTS_DIR when set)."
)]
struct Args {
    /// State sizes of the state service, in MiB.
    #[arg(
        long = "state",
        value_name = "MIB",
        value_delimiter = ',',
        default_value = "64,512,1024"
    )]
    states: Vec<u64>,
    /// Rates at which the state is rewritten, in MiB/s.
    #[arg(
        long = "dirty",
        value_name = "MIB_PER_S",
        value_delimiter = ',',
        default_value = "0,16"
    )]
    dirties: Vec<u64>,
    /// Rates the testbed's links are shaped to, in Mbit/s (one testbed each).
    #[arg(
        long,
        value_name = "MBIT",
        value_delimiter = ',',
        default_value = "1000,200"
    )]
    links: Vec<u32>,
    /// Runs of each technique per configuration.
    #[arg(long, value_name = "N", default_value_t = 1)]
    runs: u64,
    /// Techniques to run per configuration, in this order.
    #[arg(
        long,
        value_name = "TECHNIQUE",
        value_delimiter = ',',
        default_value = DEFAULT_TECHNIQUES,
        value_parser = PossibleValuesParser::new(BASELINES.iter().chain(MOSE_TECHNIQUES.iter()))
    )]
    techniques: Vec<String>,
}

struct Run {
    technique: String,
    /// Post-copy/hybrid: bytes moved after the restore, the lazy phase's
    /// length and its fault waits.
    lazy_bytes: f64,
    lazy_ms: f64,
    faults: u64,
    fault_p99_us: f64,
    downtime_ms: f64,
    /// The migration did not end `ok` (its status and error): a miss, left
    /// out of medians and ratios.
    failed: Option<String>,
    /// The downtime MOSE measured (freeze to restored), beside the probe's.
    mose_downtime_ms: f64,
    total_ms: f64,
    bytes: f64,
    rounds: u64,
    max_live_freeze_ms: f64,
    seq_ok: bool,
    verify_ok: bool,
    rss_mib: f64,
    detail: serde_json::Value,
}

fn service_cmd(mib: u64, dirty: u64) -> Vec<String> {
    vec![
        "/usr/local/bin/mose-state-service".into(),
        "--state-mib".into(),
        mib.to_string(),
        "--dirty-mib-per-s".into(),
        dirty.to_string(),
        "--port".into(),
        PORT.to_string(),
    ]
}

/// What one benchmark run needs of its testbed.
struct Bench<'a> {
    c: &'a Cluster,
    ns: String,
    /// The state service's address on node 1 and on node 2.
    addrs: Vec<String>,
    /// The state service's image, for the runtimes driven without containerd.
    image: ImageSpec,
}

impl Run {
    /// A run that could not be measured (its service did not start, say).
    fn failed(technique: &str, error: String) -> Run {
        Run {
            technique: technique.into(),
            lazy_bytes: 0.0,
            lazy_ms: 0.0,
            faults: 0,
            fault_p99_us: 0.0,
            downtime_ms: 0.0,
            failed: Some(error.clone()),
            mose_downtime_ms: 0.0,
            total_ms: 0.0,
            bytes: 0.0,
            rounds: 0,
            max_live_freeze_ms: 0.0,
            seq_ok: false,
            verify_ok: false,
            rss_mib: 0.0,
            detail: serde_json::json!({"status": "failed", "technique": technique, "error": error}),
        }
    }
}

/// Creates the state-service container under containerd `runtime` on node 1,
/// with CRIU settings for clients' connections (closed, in-flight skipped)
/// when runc runs it, and starts it: its init pid.
async fn start_in_containerd(
    b: &Bench<'_>,
    id: &str,
    runtime: &str,
    cmd: &[String],
) -> Result<u32> {
    let n = b.c.node(1)?;
    let mut args = vec![
        "containers".to_string(),
        "create".into(),
        "--runtime".into(),
        runtime.into(),
        "--net-host".into(),
        STATE_SERVICE_REF.into(),
        id.into(),
    ];
    args.extend(cmd.iter().cloned());
    n.ctr(&b.ns).ok(args)?;
    let client = mose_tests::client::Client::connect(n.containerd_socket(), &b.ns).await?;
    if runtime == ctr::RUNTIME {
        // the baseline tells CRIU the same as MOSE does
        let mut spec = client.container_spec(id).await?;
        spec["annotations"]["org.criu.config"] =
            serde_json::json!(baseline::criu_config().display().to_string());
        client.set_container_spec(id, &spec).await?;
    }
    client.create_task(id, &TaskIo::null()).await?;
    client.start(id, "").await
}

/// Starts the state service on node 1 the way `technique` runs it and waits
/// until it answers: its resident memory, in MiB.
async fn start_service(b: &Bench<'_>, technique: &str, id: &str, cmd: &[String]) -> Result<f64> {
    let pid = match technique {
        "pipeline" => pipeline::start(b.c, 1, id, &b.image, cmd)?,
        "podman" => podman::start(b.c, 1, id, cmd)?,
        "ctr-content-store" => start_in_containerd(b, id, ctr::RUNTIME, cmd).await?,
        _ => start_in_containerd(b, id, "io.containerd.mose.v2", cmd).await?,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while ping(&b.addrs[0]).is_err() {
        if Instant::now() > deadline {
            bail!(
                "state service {id} ({technique}) did not answer on {}",
                b.addrs[0]
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    Ok(rss_kib / 1024.0)
}

/// Migrates `id` from node 1 to node 2 with `technique`: a migration result
/// (a baseline's in the same JSON shape, see `BaselineRun::to_result_json`).
/// A failure is a result with status `failed`, so the grid goes on.
async fn execute(b: &Bench<'_>, technique: &str, id: &str, cmd: &[String]) -> serde_json::Value {
    let r = match technique {
        "pipeline" => pipeline::migrate(b.c, id, &b.image, cmd).map(|r| r.to_result_json()),
        "podman" => podman::migrate(b.c, id).map(|r| r.to_result_json()),
        "ctr-content-store" => ctr::migrate(b.c, &b.ns, id, cmd)
            .await
            .map(|r| r.to_result_json()),
        t => b.c.migrate(1, 2, &b.ns, id, &migrate_args(t)),
    };
    let r = r.unwrap_or_else(|e| {
        serde_json::json!({"status": "failed", "technique": technique, "error": format!("{e:#}")})
    });
    if r["status"] != "ok" {
        eprintln!("[bench] {technique} {}: {}", r["status"], r["error"]);
    }
    r
}

/// Removes the state service from both nodes, the way `technique` ran it.
fn remove_service(b: &Bench<'_>, technique: &str, id: &str) {
    for node in [2, 1] {
        match technique {
            "pipeline" => pipeline::remove(b.c, node, id),
            "podman" => podman::remove(b.c, node, id),
            _ => b.c.remove(node, &b.ns, id),
        }
    }
}

/// The largest freeze of a live (not final) pre-copy round, in ms.
fn max_live_freeze(r: &serde_json::Value) -> f64 {
    r["round_details"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|x| x["final_round"] == false)
                .filter_map(|x| x["freeze_ms"].as_f64())
                .fold(0.0, f64::max)
        })
        .unwrap_or(0.0)
}

/// One run of `technique` in a configuration, probed by a client.
async fn run_one(
    b: &Bench<'_>,
    technique: &str,
    id: &str,
    (mib, dirty): (u64, u64),
) -> Result<(Run, ProbeResult)> {
    let cmd = service_cmd(mib, dirty);
    let rss = start_service(b, technique, id, &cmd).await?;
    std::thread::sleep(Duration::from_secs(1));
    let probe = Probe::start(b.addrs.clone(), 200.0)?;
    std::thread::sleep(Duration::from_millis(500));
    let detail = execute(b, technique, id, &cmd).await;
    std::thread::sleep(Duration::from_millis(800));
    let p = probe.stop();
    let verify_ok = verify(&b.addrs[1]).map(|v| v.is_ok()).unwrap_or(false);
    remove_service(b, technique, id);
    let run = Run {
        technique: technique.into(),
        lazy_bytes: detail["lazy"]["bytes"].as_f64().unwrap_or(0.0),
        lazy_ms: detail["lazy_ms"].as_f64().unwrap_or(0.0),
        faults: detail["faults"].as_u64().unwrap_or(0),
        fault_p99_us: detail["fault_p99_us"].as_f64().unwrap_or(0.0),
        downtime_ms: p.downtime_ms,
        failed: (detail["status"] != "ok")
            .then(|| format!("{}: {}", detail["status"], detail["error"])),
        mose_downtime_ms: detail["downtime_ms"].as_f64().unwrap_or(0.0),
        total_ms: detail["total_ms"].as_f64().unwrap_or(0.0),
        bytes: detail["bytes_sent"].as_f64().unwrap_or(0.0),
        rounds: detail["rounds"].as_u64().unwrap_or(0),
        max_live_freeze_ms: max_live_freeze(&detail),
        seq_ok: p.seq_ok,
        verify_ok,
        rss_mib: rss,
        detail,
    };
    Ok((run, p))
}

/// A run's row in the results table.
fn table_row(cfg: &Config, run: &Run) -> Vec<String> {
    let (mib, dirty, link) = *cfg;
    vec![
        format!("{mib}"),
        format!("{dirty}"),
        format!("{link}"),
        run.technique.clone(),
        format!("{:.0}", run.downtime_ms),
        format!("{:.0}", run.mose_downtime_ms),
        format!("{:.0}", run.total_ms),
        format!("{:.1}", run.bytes / 1048576.0),
        format!("{:.2}", run.bytes / 1048576.0 / run.rss_mib.max(1.0)),
        run.rounds.to_string(),
        format!("{:.0}", run.max_live_freeze_ms),
        format!("{:.1}", run.lazy_bytes / 1048576.0),
        format!("{:.0}", run.lazy_ms),
        format!("{:.0}", lazy_link_pct(run, link)),
        run.faults.to_string(),
        format!("{:.0}", run.fault_p99_us),
        if run.failed.is_some() {
            "FAILED".into()
        } else if run.seq_ok && run.verify_ok {
            "yes".into()
        } else {
            "NO".into()
        },
    ]
}

const TABLE_HEADER: [&str; 17] = [
    "S MiB",
    "R MiB/s",
    "L Mbit/s",
    "technique",
    "downtime ms",
    "MOSE/baseline downtime ms",
    "total ms",
    "MiB sent",
    "sent/RSS",
    "rounds",
    "live freeze ms",
    "lazy MiB",
    "lazy ms",
    "lazy % link",
    "faults",
    "fault p99 us",
    "intact",
];

/// Every run of the benchmark: its configuration, the run, the probe's view.
type Runs = Vec<(Config, Run, ProbeResult)>;

/// The median of `f` over the successful runs of `technique` in `cfg`
/// (NaN when there are none).
fn med(all: &Runs, cfg: &Config, technique: &str, f: &dyn Fn(&Run) -> f64) -> f64 {
    median(
        &all.iter()
            .filter(|(k, r, _)| k == cfg && r.technique == technique && r.failed.is_none())
            .map(|(_, r, _)| f(r))
            .collect::<Vec<_>>(),
    )
}

/// The baselines of `cfg` with a successful run, by median downtime: the
/// strongest (lowest) first.
fn baselines_of(all: &Runs, cfg: &Config, techniques: &[String]) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = techniques
        .iter()
        .filter(|t| is_baseline(t))
        .map(|t| (t.clone(), med(all, cfg, t, &|r| r.downtime_ms)))
        .filter(|(_, d)| d.is_finite())
        .collect();
    v.sort_by(|a, b| a.1.total_cmp(&b.1));
    v
}

/// Prints and returns, per configuration, every technique's median downtime
/// and its ratio to each baseline of the run and to the strongest.
fn ratios(all: &Runs, configs: &[Config], techniques: &[String]) -> Vec<serde_json::Value> {
    println!("\nratios to the baselines (median client-observed downtime; < 1 is faster):");
    let mut out = Vec::new();
    for cfg in configs {
        let bases = baselines_of(all, cfg, techniques);
        let mut row =
            serde_json::json!({"state_mib": cfg.0, "dirty_mib_per_s": cfg.1, "link_mbit": cfg.2});
        let mut line = format!("  S={} R={} L={}:", cfg.0, cfg.1, cfg.2);
        for (name, d) in &bases {
            row[format!("{name}_ms")] = (*d).into();
            line.push_str(&format!(" {name} {d:.0} ms"));
        }
        if let Some((strongest, _)) = bases.first() {
            row["strongest_baseline"] = strongest.clone().into();
            line.push_str(&format!(" (strongest: {strongest})"));
        }
        println!("{line}");
        for t in techniques.iter().filter(|t| !is_baseline(t)) {
            let d = med(all, cfg, t, &|r| r.downtime_ms);
            if !d.is_finite() {
                println!("    {t}: no successful run");
                continue;
            }
            row[format!("{t}_ms")] = d.into();
            let parts: Vec<String> = bases
                .iter()
                .map(|(name, bd)| {
                    row[format!("{t}_vs_{name}")] = (d / bd).into();
                    format!("{:.2}x {name}", d / bd)
                })
                .collect();
            if let Some((_, bd)) = bases.first() {
                row[format!("{t}_vs_strongest")] = (d / bd).into();
            }
            println!("    {t}: {d:.0} ms; {}", parts.join(", "));
        }
        out.push(row);
    }
    out
}

/// Cold's goals against the `pipeline` baseline: below it in every
/// configuration, and at most 0.85x of it at 512 MiB over 1 Gbit/s.
fn cold_goals(all: &Runs, configs: &[Config]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    println!("\ncold against the pipeline baseline (medians):");
    for cfg in configs {
        let cold = med(all, cfg, "cold", &|r| r.downtime_ms);
        let pipe = med(all, cfg, "pipeline", &|r| r.downtime_ms);
        if !cold.is_finite() || !pipe.is_finite() {
            continue;
        }
        let goal = if cfg.0 == 512 && cfg.2 == 1000 {
            0.85
        } else {
            1.0
        };
        let met = cold / pipe <= goal;
        println!(
            "  S={} R={} L={}: cold {cold:.0} ms / pipeline {pipe:.0} ms = {:.2}x (goal {} {goal}x): {}",
            cfg.0,
            cfg.1,
            cfg.2,
            cold / pipe,
            if goal < 1.0 { "<=" } else { "<" },
            if met { "met" } else { "MISSED" }
        );
        out.push(serde_json::json!({
            "state_mib": cfg.0, "dirty_mib_per_s": cfg.1, "link_mbit": cfg.2,
            "cold_ms": cold, "pipeline_ms": pipe, "ratio": cold / pipe, "goal": goal, "met": met,
        }));
    }
    out
}

/// Post-copy's goals: downtime independent of memory and at most half a
/// second, the lazy phase near the link's rate, short fault waits.
fn lazy_goals(all: &Runs, a: &Args) -> Vec<serde_json::Value> {
    let mut goals = Vec::new();
    let (smin, smax) = (
        a.states.iter().copied().min().unwrap_or(0),
        a.states.iter().copied().max().unwrap_or(0),
    );
    let large = a
        .states
        .iter()
        .copied()
        .filter(|&s| s <= 1024)
        .max()
        .unwrap_or(smax);
    println!("\npost-copy and hybrid goals (medians):");
    for t in a
        .techniques
        .iter()
        .filter(|t| t.starts_with("postcopy") || t.starts_with("hybrid"))
    {
        for &link in &a.links {
            for &dirty in &a.dirties {
                let (lo_cfg, hi_cfg) = ((smin, dirty, link), (large, dirty, link));
                let lo = med(all, &lo_cfg, t, &|r| r.downtime_ms);
                let hi = med(all, &hi_cfg, t, &|r| r.downtime_ms);
                let pct = med(all, &hi_cfg, t, &|r| lazy_link_pct(r, link));
                let p99 = med(all, &hi_cfg, t, &|r| r.fault_p99_us) / 1000.0;
                println!(
                    "  {t} L={link} R={dirty}: downtime S={large} {hi:.0} ms / S={smin} {lo:.0} ms = \
                     {:.2}x (goal <= 1.3x, <= 500 ms); lazy phase {pct:.0}% of the link (goal >= 90%); \
                     fault p99 {p99:.1} ms (goal <= 20 ms at 1000 Mbit)",
                    hi / lo
                );
                goals.push(serde_json::json!({
                    "technique": t, "link_mbit": link, "dirty_mib_per_s": dirty,
                    "small_mib": smin, "large_mib": large,
                    "downtime_small_ms": lo, "downtime_large_ms": hi,
                    "downtime_large_over_small": hi / lo,
                    "lazy_link_pct_large": pct, "fault_p99_ms_large": p99,
                }));
            }
        }
    }
    goals
}

/// Where the downtime of each lazy run goes.
fn print_breakdowns(all: &Runs) {
    println!("\nwhere the downtime goes (post-copy and hybrid; phases in ms):");
    for ((s, r, l), run, _) in all {
        if run.lazy_ms > 0.0 {
            println!(
                "  S={s} R={r} L={l} {}: {} (lazy source {})",
                run.technique,
                downtime_breakdown(&run.detail),
                run.detail["lazy_source"].as_str().unwrap_or("-")
            );
        }
    }
}

/// One phase timeline per configuration: a bar per run.
fn write_timelines(dir: &Path, all: &Runs, configs: &[Config]) -> Result<Vec<String>> {
    let mut written = Vec::new();
    for cfg in configs {
        let bars: Vec<plot::TimelineBar> = all
            .iter()
            .filter(|(k, ..)| k == cfg)
            .map(|(_, run, p)| {
                let label = format!("{} ({:.0} ms)", run.technique, p.downtime_ms);
                plot::TimelineBar::from_result(label, &run.detail)
            })
            .collect();
        let stem = format!("bench-migration-timeline-{}M-{}R-{}L", cfg.0, cfg.1, cfg.2);
        let title = format!(
            "where the time goes: S={} MiB, R={} MiB/s, L={} Mbit/s",
            cfg.0, cfg.1, cfg.2
        );
        let (svg, png) = plot::phase_timeline(dir, &stem, &title, &bars)?;
        written.push(svg.display().to_string());
        written.push(png.display().to_string());
    }
    Ok(written)
}

/// The runs as JSON, with everything the tables show.
fn runs_json(all: &Runs) -> Vec<serde_json::Value> {
    all.iter()
        .map(|((s, r, l), run, p)| {
            serde_json::json!({
                "state_mib": s, "dirty_mib_per_s": r, "link_mbit": l, "technique": run.technique,
                "baseline": is_baseline(&run.technique),
                "downtime_ms": run.downtime_ms, "total_ms": run.total_ms, "bytes": run.bytes, "rounds": run.rounds,
                "max_live_freeze_ms": run.max_live_freeze_ms, "rss_mib": run.rss_mib,
                "mose_downtime_ms": run.mose_downtime_ms, "lazy_link_pct": lazy_link_pct(run, *l),
                "lazy_source": run.detail["lazy_source"], "downtime_breakdown": downtime_breakdown(&run.detail),
                "lazy_bytes": run.lazy_bytes, "lazy_ms": run.lazy_ms, "faults": run.faults, "fault_p99_us": run.fault_p99_us,
                "seq_ok": run.seq_ok, "verify_ok": run.verify_ok, "failed": run.failed, "probe": p, "detail": run.detail,
            })
        })
        .collect()
}

/// Runs the grid of one link rate on a fresh testbed.
async fn run_link(
    a: &Args,
    link: u32,
    image: &ImageSpec,
    archive: &Path,
    all: &mut Runs,
) -> Result<()> {
    eprintln!("[bench] testbed with links shaped to {link} Mbit/s");
    let c = Cluster::up(2, Some(link))?;
    let ns = mose_tests::unique_id("bench");
    for i in [1, 2] {
        ctr_import(c.node(i)?.containerd_socket(), &ns, archive)?;
    }
    let addrs = vec![
        format!("{}:{PORT}", c.node(1)?.ip()),
        format!("{}:{PORT}", c.node(2)?.ip()),
    ];
    let b = Bench {
        c: &c,
        ns,
        addrs,
        image: image.clone(),
    };
    let mut k = 0;
    for &mib in &a.states {
        for &dirty in &a.dirties {
            for run in 0..a.runs {
                for technique in &a.techniques {
                    k += 1;
                    eprintln!(
                        "[bench] S={mib} MiB R={dirty} MiB/s L={link} Mbit/s {technique} (run {})",
                        run + 1
                    );
                    let id = format!("s{k}");
                    let (r, p) = match run_one(&b, technique, &id, (mib, dirty)).await {
                        Ok(rp) => rp,
                        Err(e) => {
                            // recorded as a miss; the grid goes on
                            eprintln!("[bench] {technique}: {e:#}");
                            remove_service(&b, technique, &id);
                            (
                                Run::failed(technique, format!("{e:#}")),
                                ProbeResult::default(),
                            )
                        }
                    };
                    all.push(((mib, dirty, link), r, p));
                }
            }
        }
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let a = Args::parse();
    baseline::prepare()?;
    if a.techniques.iter().any(|t| t == "podman") {
        podman::ensure_ready()?;
    }
    let image = state_service_image(&find_binary(STATE_SERVICE_BIN)?);
    let archive = state_service_archive(None, &cache_dir())?;
    let mut all: Runs = Vec::new();
    for &link in &a.links {
        run_link(&a, link, &image, &archive, &mut all).await?;
    }
    println!();
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|(cfg, run, _)| table_row(cfg, run))
        .collect();
    print_table(&TABLE_HEADER, &rows);
    let mut configs: Vec<Config> = all.iter().map(|(k, ..)| *k).collect();
    configs.dedup();
    let ratios = ratios(&all, &configs, &a.techniques);
    let cold = cold_goals(&all, &configs);
    print_breakdowns(&all);
    let goals = lazy_goals(&all, &a);
    let dir = results_dir()?;
    write_json(
        &dir.join("bench-migration.json"),
        &serde_json::json!({"runs": runs_json(&all), "ratios": ratios, "cold_goals": cold, "lazy_goals": goals}),
    )?;
    let labels: Vec<String> = configs
        .iter()
        .map(|c| format!("{}M/{}R/{}L", c.0, c.1, c.2))
        .collect();
    let label_refs: Vec<&str> = labels.iter().map(|s| s.as_str()).collect();
    let series: Vec<(&str, Vec<f64>)> = a
        .techniques
        .iter()
        .map(|t| {
            let v = configs
                .iter()
                .map(|cfg| med(&all, cfg, t, &|r| r.downtime_ms))
                .collect();
            (t.as_str(), v)
        })
        .collect();
    plot::grouped_bars(
        &dir.join("bench-migration.svg"),
        "client-observed downtime (ms): baselines vs MOSE",
        "ms",
        &label_refs,
        &series,
    )?;
    let timelines = write_timelines(&dir, &all, &configs)?;
    println!(
        "\nwrote {}, {} and {}",
        dir.join("bench-migration.json").display(),
        dir.join("bench-migration.svg").display(),
        timelines.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("mose-bench-migration").chain(args.iter().copied()))
    }

    /// A successful run of `technique` with client-observed downtime `ms`.
    fn run(cfg: Config, technique: &str, ms: f64) -> (Config, Run, ProbeResult) {
        let mut r = Run::failed(technique, String::new());
        (r.downtime_ms, r.failed, r.detail) = (ms, None, serde_json::json!({"status": "ok"}));
        (cfg, r, ProbeResult::default())
    }

    #[test]
    fn ratios_name_each_baseline_and_the_strongest_and_never_nan() {
        let cfg = (512, 0, 1000);
        let techniques: Vec<String> = ["pipeline", "podman", "cold", "postcopy"]
            .map(String::from)
            .into();
        let mut all = vec![
            run(cfg, "pipeline", 5000.0),
            run(cfg, "podman", 13000.0),
            run(cfg, "cold", 4000.0),
            run(cfg, "postcopy", 500.0),
        ];
        // a failed baseline run is left out, not counted as a fast one
        let mut failed = run(cfg, "pipeline", 1.0);
        failed.1.failed = Some("failed: x".into());
        all.push(failed);
        let rows = ratios(&all, &[cfg], &techniques);
        let row = &rows[0];
        assert_eq!(row["strongest_baseline"], "pipeline");
        assert_eq!(row["cold_vs_pipeline"], 0.8);
        assert_eq!(row["cold_vs_strongest"], 0.8);
        assert_eq!(row["postcopy_vs_podman"], 500.0 / 13000.0);
        let goals = cold_goals(&all, &[cfg]);
        assert_eq!(
            (goals[0]["goal"].as_f64(), goals[0]["met"].as_bool()),
            (Some(0.85), Some(true))
        );
        // no baseline in the run: medians, but no ratio and no NaN anywhere
        let only: Vec<String> = ["cold"].map(String::from).into();
        let rows = ratios(&all, &[cfg], &only);
        let text = serde_json::to_string(&rows).expect("json");
        assert!(!text.contains("NaN") && !text.contains("null"), "{text}");
        assert!(rows[0].get("strongest_baseline").is_none(), "{text}");
        assert!(cold_goals(&vec![run(cfg, "cold", 1.0)], &[cfg]).is_empty());
    }

    #[test]
    fn defaults_and_lists() {
        Args::command().debug_assert();
        let a = parse(&[]).expect("defaults");
        assert_eq!(
            (a.states, a.dirties, a.links, a.runs),
            (vec![64, 512, 1024], vec![0, 16], vec![1000, 200], 1)
        );
        assert_eq!(a.techniques.join(","), DEFAULT_TECHNIQUES);
        assert_eq!(
            migrate_args("hybrid-tmpfs"),
            [
                "--technique",
                "hybrid",
                "--max-rounds",
                "5",
                "--lazy-source",
                "tmpfs-dump"
            ]
        );
        assert_eq!(
            migrate_args("postcopy"),
            ["--technique", "postcopy", "--max-rounds", "5"]
        );
        // as README.md and docs/results.md run it
        let a = parse(&[
            "--state",
            "64,512",
            "--techniques",
            "cold,postcopy",
            "--runs",
            "2",
        ])
        .expect("lists");
        assert_eq!(
            (a.states, a.techniques, a.runs),
            (
                vec![64, 512],
                vec!["cold".to_string(), "postcopy".into()],
                2
            )
        );
        for bad in [
            &["--bogus"][..],
            &["--state", "64,x"],
            &["--techniques", "cold,warm"],
            &["--links", "-1"],
            &["--runs", "1,2"],
        ] {
            let e = parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }
}
