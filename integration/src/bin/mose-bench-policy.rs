//! Policy benchmark on the two-node testbed: how well the cost model
//! predicts, and how often plans that claim a target is feasible meet it.
//!
//! Part A (accuracy): the state service with S MiB dirtied at R MiB/s over
//! links of L Mbit/s, migrated back and forth with each technique, `runs`
//! times per scenario. Every migration asks the node's policy for its
//! prediction first (`mosectl migrate` does) and records it beside what it
//! measured; the nodes learn online from every migration, as in production.
//! A warm-up migration per size runs first, so the calibration has seen
//! this machine's CRIU before any measured run.
//!
//! Part B (targets): containers annotated with an objective and targets,
//! migrated once with MOSE's plan and once with a fixed configuration like
//! the MOSE paper's (cold for min-bandwidth; pre-copy with a round count
//! fixed in advance for min-downtime): which meets the targets, and at what
//! bandwidth and bytes.
//!
//! Part C (use-case scenarios, `mose_workloads::scenario`): the MOSE paper's
//! edge use cases, each a container with a service address on the testbed's
//! service segment, annotated with its own targets: a UAV-autopilot-like
//! control loop (50 Hz UDP setpoints answered with telemetry, a downtime
//! target) and a multi-object tracker (256 MiB of track records rewritten
//! per frame, a migration-time target). Both nodes first learn the
//! workload from two cold migrations (1 -> 2 -> 1); then the container
//! moves 1 -> 2 with the policy's plan while its own client measures from
//! the user netns: the UAV's ground station (longest telemetry gap, lost
//! commands, telemetry continuity) or a probe of the tracker (service gap,
//! then VERIFY of its memory). The table gives the plan, the predicted
//! KPIs, MOSE's and the client's measurements and, per target, met or
//! missed.
//!
//! Usage: mose-bench-policy [--parts a,b,c] [--scenarios uav,tracker]
//!        [--runs 3] [--state 32,128] [--dirty 0,8] [--links 1000,200]
//!        [--max-downtime-ms 1000] [--max-total-ms 6000]   (see `--help`)
//! Writes results/bench-policy.json and .svg (Parts A, B) and
//! results/bench-policy-scenarios.json (Part C).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use mose_integration::testbed::segment;
use mose_integration::{cluster::Cluster, median, plot, print_table, results_dir, write_json};
use mose_workloads::{
    image::ctr_import,
    images::{cache_dir, state_service_archive, tracker_archive, uav_archive, STATE_SERVICE_REF},
    probe::{ping, verify, Probe, ProbeConfig, ProbeHandle},
    scenario::{Kind, UseCase, TRACKER_MAX_MIGRATION_MS, UAV_MAX_DOWNTIME_MS},
    tracker::TrackerConfig,
    uav::{COMMAND_HZ, HISTORY_MIB},
    uav_client,
};
use serde_json::{json, Value};

const RT: &str = "io.containerd.mose.v2";
const PORT: u16 = 7070;

/// A part of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// Cost-model accuracy.
    A,
    /// Targets: MOSE's plan vs a fixed configuration.
    B,
    /// Use-case scenarios.
    C,
}

#[derive(Debug, Parser)]
#[command(
    name = "mose-bench-policy",
    args_override_self = true,
    about = "Policy benchmark on the two-node testbed: how well the cost model predicts downtime and \
             total time, how often plans that claim a target feasible meet it (MOSE's plan vs a \
             fixed configuration), and the MOSE paper's use cases (a UAV control loop, a \
             multi-object tracker) migrated with their own targets",
    after_help = "Every list is comma-separated; Parts A and B run the grid state x dirty x links, \
                  Part C one testbed at --scenario-link. Writes results/bench-policy.json and \
                  results/bench-policy.svg (Parts A, B) and results/bench-policy-scenarios.json \
                  (Part C), under $MOSE_RESULTS_DIR when set."
)]
struct Args {
    /// Parts to run: a (accuracy), b (targets vs a fixed configuration), c (use-case scenarios).
    #[arg(
        long,
        value_name = "PARTS",
        value_delimiter = ',',
        default_value = "a,b,c"
    )]
    parts: Vec<Part>,
    /// Part C's scenarios: uav (control loop), tracker (multi-object tracker).
    #[arg(
        long,
        value_name = "SCENARIOS",
        value_delimiter = ',',
        default_value = "uav,tracker"
    )]
    scenarios: Vec<Kind>,
    /// Migrations per technique and scenario in Part A (0 counts as 1).
    #[arg(long, value_name = "N", default_value_t = 3)]
    runs: u64,
    /// State sizes of the state service, in MiB.
    #[arg(
        long = "state",
        value_name = "MIB",
        value_delimiter = ',',
        default_value = "32,128"
    )]
    states: Vec<u64>,
    /// Rates at which the state is rewritten, in MiB/s.
    #[arg(
        long = "dirty",
        value_name = "MIB_PER_S",
        value_delimiter = ',',
        default_value = "0,8"
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
    /// Downtime target annotated on the containers, in ms (min-bandwidth's is 3 times this).
    #[arg(long = "max-downtime-ms", value_name = "MS", default_value_t = 1000)]
    max_down: u64,
    /// Total migration time target annotated on the containers, in ms.
    #[arg(long = "max-total-ms", value_name = "MS", default_value_t = 6000)]
    max_total: u64,
    /// Rate Part C's testbed links are shaped to, in Mbit/s.
    #[arg(long = "scenario-link", value_name = "MBIT", default_value_t = 1000)]
    scenario_link: u32,
    /// The UAV's mose.io/max-downtime, in ms.
    #[arg(long = "uav-max-downtime-ms", value_name = "MS", default_value_t = UAV_MAX_DOWNTIME_MS)]
    uav_max_down: u64,
    /// The UAV's command history (its state), in MiB.
    #[arg(long = "uav-history-mib", value_name = "MIB", default_value_t = HISTORY_MIB)]
    uav_history_mib: u64,
    /// The tracker's mose.io/max-migration-time, in ms.
    #[arg(
        long = "tracker-max-migration-ms",
        value_name = "MS",
        default_value_t = TRACKER_MAX_MIGRATION_MS
    )]
    tracker_max_migration: u64,
    /// The tracker's track records (its state), in MiB.
    #[arg(long = "tracker-mib", value_name = "MIB", default_value_t = 256)]
    tracker_mib: u64,
    /// The rate the tracker writes its records at, in MiB/s.
    #[arg(
        long = "tracker-write-mib-per-s",
        value_name = "MIB_PER_S",
        default_value_t = 32.0
    )]
    tracker_write: f64,
}

/// Starts the state service as `id` on `node` with `annotations`.
fn start(
    c: &Cluster,
    node: usize,
    ns: &str,
    id: &str,
    mib: u64,
    dirty: u64,
    annotations: &[String],
) -> Result<()> {
    let n = c.node(node)?;
    let mut args: Vec<String> = ["run", "-d", "--runtime", RT, "--net-host"]
        .map(String::from)
        .to_vec();
    for a in annotations {
        args.push("--annotation".into());
        args.push(a.clone());
    }
    args.extend([
        STATE_SERVICE_REF.to_string(),
        id.to_string(),
        "/usr/local/bin/mose-state-service".into(),
        "--state-mib".into(),
        mib.to_string(),
        "--dirty-mib-per-s".into(),
        dirty.to_string(),
        "--port".into(),
        PORT.to_string(),
    ]);
    n.ctr(ns).ok(args)?;
    wait_up(c, node)
}

fn wait_up(c: &Cluster, node: usize) -> Result<()> {
    let addr = format!("{}:{PORT}", c.node(node)?.ip());
    let deadline = Instant::now() + Duration::from_secs(60);
    while ping(&addr).is_err() {
        if Instant::now() > deadline {
            bail!("the state service did not answer on {addr}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Migrates and checks the service answers at the destination.
fn migrate(c: &Cluster, from: usize, ns: &str, id: &str, extra: &[&str]) -> Result<Value> {
    let to = 3 - from;
    let r = c.migrate(from, to, ns, id, extra)?;
    if r["status"] != "ok" {
        bail!("migration {from}->{to} failed: {}", r["error"]);
    }
    wait_up(c, to)?;
    Ok(r)
}

/// The predicted and measured value of KPI `name` (`downtime`, `total`,
/// `bytes`) and whether it met its target, from a migration result.
fn kpi(r: &Value, name: &str) -> (f64, f64, Option<bool>) {
    let k = r["plan"]["kpis"]
        .as_array()
        .and_then(|a| a.iter().find(|k| k["kpi"] == name).cloned())
        .unwrap_or_default();
    (
        k["predicted"].as_f64().unwrap_or(f64::NAN),
        k["measured"].as_f64().unwrap_or(f64::NAN),
        k["met"].as_bool(),
    )
}

/// Whether the plan predicted the target `annotation` feasible.
fn claimed(r: &Value, annotation: &str) -> Option<bool> {
    r["plan"]["decision"]["targets"]
        .as_array()?
        .iter()
        .find(|t| t["annotation"] == annotation)?["feasible"]
        .as_bool()
}

fn rel_err(p: f64, m: f64) -> f64 {
    ((p - m) / m).abs()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let t_all = Instant::now();
    if args.parts.contains(&Part::A) || args.parts.contains(&Part::B) {
        let ab = run_ab(&args)?;
        report_ab(&args, &ab)?;
    }
    if args.parts.contains(&Part::C) {
        let rows = run_c(&args)?;
        report_c(&args, &rows)?;
    }
    println!("bench took {:.0} s", t_all.elapsed().as_secs_f64());
    Ok(())
}

/// What Parts A and B measured (one JSON object per migration or row).
#[derive(Debug, Default)]
struct AbResults {
    accuracy: Vec<Value>,
    targets: Vec<Value>,
}

/// Parts A and B (those selected): one testbed per link rate, warmed up,
/// then the accuracy grid and the target comparisons.
fn run_ab(args: &Args) -> Result<AbResults> {
    let archive = state_service_archive(None, &cache_dir())?;
    let mut out = AbResults::default();
    for &link in &args.links {
        let c = Cluster::up(2, Some(link))?;
        let ns = mose_tests::unique_id("bpol");
        for i in [1, 2] {
            ctr_import(c.node(i)?.containerd_socket(), &ns, &archive)?;
        }
        warm_up(&c, &ns, link, &args.states)?;
        if args.parts.contains(&Part::A) {
            part_a(&c, &ns, link, args, &mut out.accuracy)?;
        }
        if args.parts.contains(&Part::B) {
            part_b(&c, &ns, link, args, &mut out.targets)?;
        }
    }
    Ok(out)
}

/// One migration each way per size teaches both nodes.
fn warm_up(c: &Cluster, ns: &str, link: u32, states: &[u64]) -> Result<()> {
    for &s in states {
        let id = format!("warm{s}");
        start(c, 1, ns, &id, s, 0, &[])?;
        migrate(c, 1, ns, &id, &["--technique", "cold"])?;
        migrate(c, 2, ns, &id, &["--technique", "precopy"])?;
        c.remove(1, ns, &id);
        eprintln!("[bench] L={link} warm-up S={s} done");
    }
    Ok(())
}

/// Part A: predicted vs measured, targets annotated on every container.
fn part_a(c: &Cluster, ns: &str, link: u32, args: &Args, out: &mut Vec<Value>) -> Result<()> {
    let runs = args.runs.max(1);
    for &s in &args.states {
        for &r in &args.dirties {
            let id = format!("a{s}r{r}");
            let ann = [
                format!("mose.io/max-downtime={}ms", args.max_down),
                format!("mose.io/max-migration-time={}ms", args.max_total),
            ];
            start(c, 1, ns, &id, s, r, &ann)?;
            let mut at = 1;
            for technique in ["cold", "precopy"] {
                for run in 1..=runs {
                    eprintln!("[bench] L={link} S={s} R={r} {technique} run {run}");
                    let res = migrate(c, at, ns, &id, &["--technique", technique])?;
                    at = 3 - at;
                    let (pd, md, metd) = kpi(&res, "downtime");
                    let (pt, mt, mett) = kpi(&res, "total");
                    let (pb, mb, _) = kpi(&res, "bytes");
                    out.push(json!({
                        "state_mib": s, "dirty_mib_per_s": r, "link_mbit": link,
                        "technique": technique, "run": run, "rounds": res["rounds"],
                        "downtime": {"predicted_ms": pd, "measured_ms": md, "claimed_feasible": claimed(&res, "mose.io/max-downtime"), "met": metd},
                        "total": {"predicted_ms": pt, "measured_ms": mt, "claimed_feasible": claimed(&res, "mose.io/max-migration-time"), "met": mett},
                        "bytes": {"predicted": pb, "measured": mb},
                        "result": res,
                    }));
                }
            }
            c.remove(at, ns, &id);
        }
    }
    Ok(())
}

/// Part B: MOSE's plan vs a fixed configuration, per objective.
fn part_b(c: &Cluster, ns: &str, link: u32, args: &Args, out: &mut Vec<Value>) -> Result<()> {
    let (max_down, max_total) = (args.max_down, args.max_total);
    for &s in &args.states {
        for &r in &args.dirties {
            for objective in ["min-downtime", "min-bandwidth"] {
                let ann: Vec<String> = if objective == "min-downtime" {
                    vec![format!("mose.io/max-migration-time={max_total}ms")]
                } else {
                    vec![
                        "mose.io/objective=min-bandwidth".into(),
                        format!("mose.io/max-downtime={}ms", max_down * 3),
                    ]
                };
                let id = format!("b{s}r{r}{}", &objective[4..7]);
                start(c, 1, ns, &id, s, r, &ann)?;
                eprintln!("[bench] L={link} S={s} R={r} {objective}: MOSE plan, then fixed");
                let planned = migrate(c, 1, ns, &id, &[])?;
                // the fixed configuration the MOSE paper would use
                let fixed_args: &[&str] = if objective == "min-downtime" {
                    &["--technique", "precopy", "--max-rounds", "4"]
                } else {
                    &["--technique", "cold"]
                };
                let fixed = migrate(c, 2, ns, &id, fixed_args)?;
                c.remove(1, ns, &id);
                for (policy, res) in [("MOSE plan", &planned), ("fixed", &fixed)] {
                    let row = BRow {
                        s,
                        r,
                        link,
                        objective,
                        policy,
                    };
                    out.push(row.json(res, &planned, max_down, max_total));
                }
            }
        }
    }
    Ok(())
}

/// Where a Part B row comes from.
struct BRow<'a> {
    s: u64,
    r: u64,
    link: u32,
    objective: &'a str,
    policy: &'a str,
}

impl BRow<'_> {
    fn json(&self, res: &Value, planned: &Value, max_down: u64, max_total: u64) -> Value {
        let down = res["downtime_ms"].as_f64().unwrap_or(f64::NAN);
        let total = res["total_ms"].as_f64().unwrap_or(f64::NAN);
        let bytes = res["bytes_sent"].as_f64().unwrap_or(f64::NAN);
        let met = if self.objective == "min-downtime" {
            total <= max_total as f64
        } else {
            down <= (max_down * 3) as f64
        };
        let live_ms: f64 = res["round_details"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["duration_ms"].as_f64()).sum())
            .unwrap_or(0.0);
        let mose = self.policy == "MOSE plan";
        json!({
            "state_mib": self.s, "dirty_mib_per_s": self.r, "link_mbit": self.link,
            "objective": self.objective, "policy": self.policy,
            "technique": res["technique"], "rounds": res["rounds"],
            "cap_bps": planned["plan"]["decision"]["plan"]["bandwidth_cap_bps"].as_u64().filter(|_| mose),
            "claimed_feasible": if mose { res["plan"]["decision"]["feasible"].clone() } else { Value::Null },
            "downtime_ms": down, "total_ms": total, "bytes": bytes,
            "mean_rate_mbit": bytes * 8.0 / 1e6 / (live_ms.max(1.0) / 1000.0 + down / 1000.0),
            "target_met": met,
        })
    }
}

/// Part A's table.
const A_HEADER: [&str; 11] = [
    "S MiB",
    "R MiB/s",
    "L Mbit/s",
    "technique",
    "run",
    "pred down",
    "meas down",
    "pred total",
    "meas total",
    "down feas/met",
    "total feas/met",
];
/// Part B's table.
const B_HEADER: [&str; 11] = [
    "objective",
    "S MiB",
    "R MiB/s",
    "L Mbit/s",
    "policy",
    "plan",
    "downtime ms",
    "total ms",
    "MiB sent",
    "mean Mbit/s",
    "target met",
];
/// Part C's table.
const C_HEADER: [&str; 10] = [
    "scenario",
    "targets",
    "plan",
    "feasible",
    "pred down ms",
    "pred total ms",
    "MOSE down ms",
    "MOSE total ms",
    "client",
    "met",
];

fn f0(v: &Value) -> String {
    format!("{:.0}", v.as_f64().unwrap_or(f64::NAN))
}

/// Prints Part A's table and summary; returns the summary's numbers.
fn report_a(accuracy: &[Value]) -> Value {
    let rows: Vec<Vec<String>> = accuracy
        .iter()
        .map(|a| {
            vec![
                a["state_mib"].to_string(),
                a["dirty_mib_per_s"].to_string(),
                a["link_mbit"].to_string(),
                a["technique"].as_str().unwrap_or("").into(),
                a["run"].to_string(),
                f0(&a["downtime"]["predicted_ms"]),
                f0(&a["downtime"]["measured_ms"]),
                f0(&a["total"]["predicted_ms"]),
                f0(&a["total"]["measured_ms"]),
                format!(
                    "{}/{}",
                    a["downtime"]["claimed_feasible"], a["downtime"]["met"]
                ),
                format!("{}/{}", a["total"]["claimed_feasible"], a["total"]["met"]),
            ]
        })
        .collect();
    println!(
        "\nPart A: predicted vs measured (downtime = freeze to restored; feasible/met per target)"
    );
    print_table(&A_HEADER, &rows);
    let err = |k: &str| -> Vec<f64> {
        accuracy
            .iter()
            .map(|a| {
                rel_err(
                    a[k]["predicted_ms"].as_f64().unwrap_or(f64::NAN),
                    a[k]["measured_ms"].as_f64().unwrap_or(f64::NAN),
                )
            })
            .filter(|e| e.is_finite())
            .collect()
    };
    let (ed, et) = (err("downtime"), err("total"));
    let hit = |k: &str| -> (usize, usize) {
        let claimed: Vec<&Value> = accuracy
            .iter()
            .filter(|a| a[k]["claimed_feasible"] == true)
            .collect();
        (
            claimed.iter().filter(|a| a[k]["met"] == true).count(),
            claimed.len(),
        )
    };
    let (hd, nd) = hit("downtime");
    let (ht, nt) = hit("total");
    println!(
        "\nmedian |error|: downtime {:.1}% , total {:.1}%  (goal <= 20%; {} migrations)",
        median(&ed) * 100.0,
        median(&et) * 100.0,
        accuracy.len()
    );
    println!("targets claimed feasible and met: downtime {hd}/{nd}, total {ht}/{nt} (goal >= 90%)");
    json!({
        "median_abs_error_downtime": median(&ed), "median_abs_error_total": median(&et),
        "downtime_feasible_met": [hd, nd], "total_feasible_met": [ht, nt],
        "migrations": accuracy.len(),
    })
}

/// Prints Part B's table and summary; returns the summary's numbers.
fn report_b(args: &Args, targets: &[Value]) -> Value {
    let rows: Vec<Vec<String>> = targets
        .iter()
        .map(|t| {
            vec![
                t["objective"].as_str().unwrap_or("").into(),
                t["state_mib"].to_string(),
                t["dirty_mib_per_s"].to_string(),
                t["link_mbit"].to_string(),
                t["policy"].as_str().unwrap_or("").into(),
                format!(
                    "{} x{}{}",
                    t["technique"].as_str().unwrap_or(""),
                    t["rounds"],
                    t["cap_bps"]
                        .as_u64()
                        .map(|c| format!(" cap {} Mbit/s", c / 1_000_000))
                        .unwrap_or_default()
                ),
                f0(&t["downtime_ms"]),
                f0(&t["total_ms"]),
                format!("{:.1}", t["bytes"].as_f64().unwrap_or(f64::NAN) / 1048576.0),
                f0(&t["mean_rate_mbit"]),
                if t["target_met"] == true { "yes" } else { "NO" }.into(),
            ]
        })
        .collect();
    println!(
        "\nPart B: MOSE plan vs fixed configuration (min-downtime: max-migration-time {} ms; min-bandwidth: max-downtime {} ms)",
        args.max_total,
        args.max_down * 3
    );
    print_table(&B_HEADER, &rows);
    let met = |p: &str| {
        let v: Vec<&Value> = targets.iter().filter(|t| t["policy"] == p).collect();
        (
            v.iter().filter(|t| t["target_met"] == true).count(),
            v.len(),
        )
    };
    let (mm, mn) = met("MOSE plan");
    let (fm, fnn) = met("fixed");
    println!("targets met: MOSE plan {mm}/{mn}, fixed configuration {fm}/{fnn}");
    json!({"targets_met_mose": [mm, mn], "targets_met_fixed": [fm, fnn]})
}

/// Prints Parts A and B (those that ran) and writes
/// results/bench-policy.json (and .svg when Part A ran).
fn report_ab(args: &Args, ab: &AbResults) -> Result<()> {
    let mut summary = json!({
        "runs": args.runs.max(1), "max_downtime_ms": args.max_down, "max_total_ms": args.max_total,
    });
    let merge = |summary: &mut Value, part: Value| {
        if let (Some(s), Some(p)) = (summary.as_object_mut(), part.as_object()) {
            s.extend(p.clone());
        }
    };
    if args.parts.contains(&Part::A) {
        merge(&mut summary, report_a(&ab.accuracy));
    }
    if args.parts.contains(&Part::B) {
        merge(&mut summary, report_b(args, &ab.targets));
    }
    let dir = results_dir()?;
    let json = json!({"summary": summary, "accuracy": ab.accuracy, "targets": ab.targets});
    write_json(&dir.join("bench-policy.json"), &json)?;
    println!("\nwrote {}", dir.join("bench-policy.json").display());
    if !ab.accuracy.is_empty() {
        plot_accuracy(&dir.join("bench-policy.svg"), &ab.accuracy)?;
        println!("wrote {}", dir.join("bench-policy.svg").display());
    }
    Ok(())
}

fn plot_accuracy(path: &std::path::Path, accuracy: &[Value]) -> Result<()> {
    let pts = |k: &str| -> Vec<(f64, f64, String)> {
        accuracy
            .iter()
            .map(|a| {
                (
                    a[k]["predicted_ms"].as_f64().unwrap_or(f64::NAN),
                    a[k]["measured_ms"].as_f64().unwrap_or(f64::NAN),
                    format!(
                        "{} {} Mbit/s",
                        a["technique"].as_str().unwrap_or(""),
                        a["link_mbit"]
                    ),
                )
            })
            .collect()
    };
    plot::predicted_vs_measured(
        path,
        "MOSE policy: predicted vs measured (grey: ±20%)",
        &[
            ("downtime", pts("downtime")),
            ("total migration time", pts("total")),
        ],
    )
}

// --- Part C: use-case scenarios ---

/// How long a scenario's client runs before the migration starts and after
/// it ended.
const SETTLE: Duration = Duration::from_secs(2);
/// Bound for a scenario's service to answer after a start or a migration.
const READY: Duration = Duration::from_secs(60);
/// Request rate of the tracker's probe, requests/s.
const TRACKER_PROBE_HZ: f64 = 50.0;

/// The use cases selected, in the order given, each once.
fn use_cases(args: &Args) -> Vec<UseCase> {
    let mut kinds: Vec<Kind> = Vec::new();
    for k in &args.scenarios {
        if !kinds.contains(k) {
            kinds.push(*k);
        }
    }
    kinds
        .into_iter()
        .map(|k| match k {
            Kind::Uav => UseCase::uav(args.uav_max_down, args.uav_history_mib),
            Kind::Tracker => UseCase::tracker(
                args.tracker_max_migration,
                &TrackerConfig {
                    tracks_mib: args.tracker_mib,
                    write_mib_per_s: args.tracker_write,
                    ..TrackerConfig::default()
                },
            ),
        })
        .collect()
}

/// The scenario's host number on the service segment (`10.89.0.<host>`).
fn host_of(k: Kind) -> u8 {
    match k {
        Kind::Uav => 61,
        Kind::Tracker => 62,
    }
}

/// Where clients in the user netns reach the scenario's service.
fn service_addr(u: &UseCase) -> SocketAddr {
    SocketAddr::from(([10, 89, 0, host_of(u.kind)], u.port))
}

/// The container id of a scenario.
fn id_of(u: &UseCase) -> &'static str {
    u.kind.as_str()
}

/// `ctr run` arguments: the MOSE runtime, the service address on the
/// segment, the scenario's target annotations, its image and command.
fn run_args(u: &UseCase) -> Vec<String> {
    let mut a: Vec<String> = ["run", "-d", "--runtime", RT].map(String::from).to_vec();
    let network = [
        format!("mose.io/network={}", segment::SERVICE_NETWORK),
        format!(
            "mose.io/address={}",
            segment::service_address(host_of(u.kind))
        ),
    ];
    for ann in network.into_iter().chain(u.annotations()) {
        a.push("--annotation".into());
        a.push(ann);
    }
    a.push(u.image.into());
    a.push(id_of(u).into());
    a.extend(u.command.iter().cloned());
    a
}

/// Part C: every selected use case on one testbed of its own.
fn run_c(args: &Args) -> Result<Vec<Value>> {
    let cases = use_cases(args);
    let c = Cluster::up(2, Some(args.scenario_link))?;
    let ns = mose_tests::unique_id("bpolc");
    for u in &cases {
        let archive = match u.kind {
            Kind::Uav => uav_archive(None, &cache_dir())?,
            Kind::Tracker => tracker_archive(None, &cache_dir())?,
        };
        for i in [1, 2] {
            ctr_import(c.node(i)?.containerd_socket(), &ns, &archive)?;
        }
    }
    let mut rows = Vec::new();
    for u in &cases {
        eprintln!(
            "[bench] scenario {} ({}), L={} Mbit/s",
            id_of(u),
            u.targets_summary(),
            args.scenario_link
        );
        let row = scenario(&c, &ns, u).unwrap_or_else(|e| {
            eprintln!("[bench] scenario {} failed: {e:#}", id_of(u));
            json!({"scenario": id_of(u), "targets": u.targets_summary(), "error": format!("{e:#}")})
        });
        for node in [1, 2] {
            c.remove(node, &ns, id_of(u));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Waits until the scenario's service answers from the user netns.
fn wait_ready(c: &Cluster, u: &UseCase) -> Result<()> {
    let (kind, addr) = (u.kind, service_addr(u));
    c.bed.run_in_user(move || {
        let deadline = Instant::now() + READY;
        loop {
            let up = match kind {
                Kind::Uav => uav_client::exchange(addr, Duration::from_millis(200)).is_ok(),
                Kind::Tracker => ping(&addr.to_string()).is_ok(),
            };
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer on {addr} within {READY:?}",
                    kind.as_str()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// Migrates `from` -> `to` with `extra` and waits for the service; the
/// result, which must be `ok`.
fn migrate_ready(c: &Cluster, ns: &str, u: &UseCase, from: usize, extra: &[&str]) -> Result<Value> {
    let r = c.migrate(from, 3 - from, ns, id_of(u), extra)?;
    if r["status"] != "ok" {
        bail!("migration {from}->{}: {}", 3 - from, r["error"]);
    }
    wait_ready(c, u)?;
    Ok(r)
}

/// Two cold migrations (1 -> 2 -> 1): both nodes learn this workload's
/// fixed costs (its service address included) before the measured run.
fn warm_up_case(c: &Cluster, ns: &str, u: &UseCase) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for from in [1, 2] {
        let r = migrate_ready(c, ns, u, from, &["--technique", "cold"])?;
        eprintln!(
            "[bench] {} warm-up cold {from}->{}: downtime {} ms, total {} ms",
            id_of(u),
            3 - from,
            f0(&r["downtime_ms"]),
            f0(&r["total_ms"])
        );
        out.push(json!({"from": from, "to": 3 - from, "technique": "cold",
            "downtime_ms": r["downtime_ms"], "total_ms": r["total_ms"]}));
    }
    Ok(out)
}

/// The scenario's own client, running in the user netns.
enum ScenarioClient {
    /// The UAV's ground station.
    Uav(uav_client::UavClientHandle),
    /// A consumer of the tracker's tracks: a probe on one TCP connection.
    Tracker(ProbeHandle),
}

/// What a scenario's client saw.
struct Seen {
    /// Its report, as JSON.
    report: Value,
    /// The longest service gap it observed, ms.
    gap_ms: f64,
    /// The client column of the table.
    cell: String,
}

impl ScenarioClient {
    fn start(c: &Cluster, u: &UseCase) -> Result<Self> {
        let addr = service_addr(u);
        match u.kind {
            Kind::Uav => {
                let socket = c.bed.run_in_user(|| {
                    UdpSocket::bind("0.0.0.0:0").context("binding the ground station's socket")
                })?;
                Ok(Self::Uav(uav_client::start(socket, addr, COMMAND_HZ)?))
            }
            Kind::Tracker => {
                let mut cfg = ProbeConfig::new(vec![addr.to_string()], TRACKER_PROBE_HZ);
                // one connection for the whole run: a stall is waited out
                cfg.read_timeout = Duration::from_secs(20);
                Ok(Self::Tracker(
                    c.bed.run_in_user(move || Probe::start_with(cfg))?,
                ))
            }
        }
    }

    fn stop(self) -> Result<Seen> {
        match self {
            Self::Uav(h) => {
                let r = h.stop()?;
                let cell = format!(
                    "telemetry gap {:.0} ms, lost {}/{} (run {}), late {}, seq {}",
                    r.max_telemetry_gap_ms,
                    r.lost,
                    r.sent,
                    r.longest_loss_run,
                    r.late,
                    if r.tele_seq_ok { "ok" } else { "BROKEN" }
                );
                Ok(Seen {
                    gap_ms: r.max_telemetry_gap_ms,
                    report: serde_json::to_value(&r)?,
                    cell,
                })
            }
            Self::Tracker(h) => {
                let r = h.stop();
                let cell = format!(
                    "probe gap {:.0} ms, {} reconnects, seq {}",
                    r.downtime_ms,
                    r.reconnects,
                    if r.seq_ok { "ok" } else { "BROKEN" }
                );
                Ok(Seen {
                    gap_ms: r.downtime_ms,
                    report: serde_json::to_value(&r)?,
                    cell,
                })
            }
        }
    }
}

/// One use case: started on node 1 with its targets, warmed up, then
/// migrated to node 2 with the policy's plan while its client measures.
fn scenario(c: &Cluster, ns: &str, u: &UseCase) -> Result<Value> {
    c.node(1)?.ctr(ns).ok(run_args(u))?;
    wait_ready(c, u)?;
    let warm = warm_up_case(c, ns, u)?;
    let client = ScenarioClient::start(c, u)?;
    std::thread::sleep(SETTLE);
    eprintln!(
        "[bench] {}: migrating 1->2 with the policy's plan",
        id_of(u)
    );
    let t0 = Instant::now();
    let res = c.migrate(1, 2, ns, id_of(u), &[]);
    let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
    std::thread::sleep(SETTLE);
    let seen = client.stop()?;
    let res = res?;
    let verify = if u.kind == Kind::Tracker && res["status"] == "ok" {
        let a = service_addr(u).to_string();
        Some(c.bed.run_in_user(move || verify(&a))?.is_ok())
    } else {
        None
    };
    let row = scenario_row(u, &res, &seen, wall_ms, verify);
    eprintln!(
        "[bench] {}: {} -> {}",
        id_of(u),
        row["plan_label"].as_str().unwrap_or(""),
        seen.cell
    );
    Ok(with_details(row, warm, seen.report, res))
}

/// Adds the warm-up, the client's report and the whole migration result.
fn with_details(mut row: Value, warm: Vec<Value>, client: Value, res: Value) -> Value {
    if let Some(o) = row.as_object_mut() {
        o.insert("warm_up".into(), Value::from(warm));
        o.insert("client".into(), client);
        o.insert("result".into(), res);
    }
    row
}

/// `postcopy x0`, `precopy x2 cap 300 Mbit/s`, or `refused` / `failed: …`.
fn plan_label(res: &Value) -> String {
    let decision = &res["plan"]["decision"];
    if decision["refused"] == true {
        return "refused".into();
    }
    let cap = decision["plan"]["bandwidth_cap_bps"]
        .as_u64()
        .map(|c| format!(" cap {} Mbit/s", c / 1_000_000))
        .unwrap_or_default();
    let label = format!(
        "{} x{}{cap}",
        res["technique"].as_str().unwrap_or("?"),
        res["rounds"]
    );
    if res["status"] == "ok" {
        label
    } else {
        format!("{label} ({})", res["status"].as_str().unwrap_or("failed"))
    }
}

/// Each target of `u` against the prediction, MOSE's measurement and (for
/// the downtime) the client's `gap_ms`: met only by a migration that
/// succeeded.
fn target_rows(u: &UseCase, res: &Value, gap_ms: f64) -> Vec<Value> {
    let ok = res["status"] == "ok";
    u.targets
        .iter()
        .map(|t| {
            let (predicted, measured, _) = kpi(res, t.kpi());
            let limit = t.limit_ms as f64;
            let client = (t.kpi() == "downtime").then_some(gap_ms);
            json!({
                "annotation": t.annotation, "kpi": t.kpi(), "limit_ms": t.limit_ms,
                "claimed_feasible": claimed(res, t.annotation),
                "predicted_ms": predicted, "mose_measured_ms": measured,
                "met": ok && measured <= limit,
                "client_measured_ms": client,
                "client_met": client.map(|g| ok && g <= limit),
            })
        })
        .collect()
}

/// The `met` cell: `downtime yes (client NO)`, `total yes`.
fn met_cell(targets: &[Value]) -> String {
    let yes = |v: &Value| if *v == true { "yes" } else { "NO" };
    targets
        .iter()
        .map(|t| {
            let what = t["kpi"].as_str().unwrap_or("?");
            match t["client_met"].as_bool() {
                Some(_) => format!(
                    "{what} {} (client {})",
                    yes(&t["met"]),
                    yes(&t["client_met"])
                ),
                None => format!("{what} {}", yes(&t["met"])),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The scenario's row: targets, plan, predictions, MOSE's and the client's
/// measurements, met or missed.
fn scenario_row(
    u: &UseCase,
    res: &Value,
    seen: &Seen,
    wall_ms: f64,
    verify: Option<bool>,
) -> Value {
    let decision = &res["plan"]["decision"];
    let m = &res["plan"]["measurements"];
    let targets = target_rows(u, res, seen.gap_ms);
    let mut client_cell = seen.cell.clone();
    if let Some(v) = verify {
        client_cell.push_str(if v { ", VERIFY ok" } else { ", VERIFY FAILED" });
    }
    json!({
        "scenario": id_of(u), "image": u.image, "command": u.command,
        "annotations": u.annotations(), "targets_summary": u.targets_summary(),
        "plan_label": plan_label(res), "status": res["status"],
        "plan": decision["plan"], "feasible": decision["feasible"], "reason": decision["reason"],
        "measurements": {"memory_bytes": m["memory_bytes"], "dirty_bytes_per_s": m["dirty_bytes_per_s"],
            "link_bytes_per_s": m["link_bytes_per_s"]},
        "predicted": {"downtime_ms": kpi(res, "downtime").0, "total_ms": kpi(res, "total").0,
            "bytes": kpi(res, "bytes").0},
        "measured": {"downtime_ms": res["downtime_ms"], "total_ms": res["total_ms"],
            "bytes_sent": res["bytes_sent"], "rounds": res["rounds"], "lazy_ms": res["lazy_ms"],
            "mosectl_wall_ms": wall_ms},
        "client_gap_ms": seen.gap_ms, "client_cell": client_cell, "verify_ok": verify,
        "targets": targets, "met_cell": met_cell(&targets),
    })
}

/// One table row of a scenario (or of its error).
fn c_table_row(r: &Value) -> Vec<String> {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    if let Some(e) = r["error"].as_str() {
        let mut row = vec![s(&r["scenario"]), s(&r["targets"]), format!("error: {e}")];
        row.resize(C_HEADER.len(), String::new());
        return row;
    }
    let feasible = match r["feasible"].as_bool() {
        Some(true) => "yes",
        Some(false) => "no",
        None => "?",
    };
    vec![
        s(&r["scenario"]),
        s(&r["targets_summary"]),
        s(&r["plan_label"]),
        feasible.into(),
        f0(&r["predicted"]["downtime_ms"]),
        f0(&r["predicted"]["total_ms"]),
        f0(&r["measured"]["downtime_ms"]),
        f0(&r["measured"]["total_ms"]),
        s(&r["client_cell"]),
        s(&r["met_cell"]),
    ]
}

/// Prints Part C's table, the policy's reasons, and writes
/// results/bench-policy-scenarios.json.
fn report_c(args: &Args, rows: &[Value]) -> Result<()> {
    println!(
        "\nPart C: use-case scenarios (L={} Mbit/s; MOSE downtime = freeze to restored, total = \
         request to source released; client = the scenario's own client in the user netns)",
        args.scenario_link
    );
    let table: Vec<Vec<String>> = rows.iter().map(c_table_row).collect();
    print_table(&C_HEADER, &table);
    for r in rows.iter().filter(|r| r["error"].is_null()) {
        let m = &r["measurements"];
        println!(
            "  {}: M {:.1} MiB, D {:.1} MiB/s, L {:.0} Mbit/s; mosectl (plan + migration) {:.0} ms; {}",
            r["scenario"].as_str().unwrap_or(""),
            m["memory_bytes"].as_f64().unwrap_or(f64::NAN) / 1048576.0,
            m["dirty_bytes_per_s"].as_f64().unwrap_or(f64::NAN) / 1048576.0,
            m["link_bytes_per_s"].as_f64().unwrap_or(f64::NAN) * 8.0 / 1e6,
            r["measured"]["mosectl_wall_ms"].as_f64().unwrap_or(f64::NAN),
            r["reason"].as_str().unwrap_or("")
        );
    }
    let targets: Vec<&Value> = rows
        .iter()
        .flat_map(|r| r["targets"].as_array().into_iter().flatten())
        .collect();
    let met = targets.iter().filter(|t| t["met"] == true).count();
    println!(
        "scenario targets met (MOSE's measurement): {met}/{}",
        targets.len()
    );
    let path = results_dir()?.join("bench-policy-scenarios.json");
    write_json(
        &path,
        &json!({"link_mbit": args.scenario_link, "scenarios": rows}),
    )?;
    println!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("mose-bench-policy").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_and_lists() {
        Args::command().debug_assert();
        let a = parse(&[]).expect("defaults");
        assert_eq!(
            (
                a.runs,
                a.states,
                a.dirties,
                a.links,
                a.max_down,
                a.max_total
            ),
            (3, vec![32, 128], vec![0, 8], vec![1000, 200], 1000, 6000)
        );
        assert_eq!(
            a.parts,
            vec![Part::A, Part::B, Part::C],
            "everything by default"
        );
        assert_eq!(a.scenarios, vec![Kind::Uav, Kind::Tracker]);
        assert_eq!(
            (a.scenario_link, a.uav_max_down, a.tracker_max_migration),
            (1000, 450, 3500)
        );
        let a = parse(&[
            "--runs",
            "1",
            "--dirty",
            "4",
            "--links",
            "100,50",
            "--max-total-ms",
            "9000",
        ])
        .expect("lists");
        assert_eq!(
            (a.runs, a.dirties, a.links, a.max_total),
            (1, vec![4], vec![100, 50], 9000)
        );
        for bad in [
            &["--bogus"][..],
            &["--state", "x"],
            &["--max-downtime-ms", "1s"],
            &["--parts", "d"],
            &["--parts", "a,x"],
            &["--scenarios", "drone"],
            &["--tracker-mib", "-1"],
        ] {
            let e = parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }

    #[test]
    fn scenarios_can_run_alone_with_their_own_targets() {
        let a = parse(&[
            "--parts",
            "c",
            "--scenarios",
            "tracker,uav,tracker",
            "--uav-max-downtime-ms",
            "300",
            "--tracker-max-migration-ms",
            "5000",
            "--tracker-mib",
            "64",
        ])
        .expect("part c");
        assert_eq!(a.parts, vec![Part::C]);
        let cases = use_cases(&a);
        let kinds: Vec<Kind> = cases.iter().map(|u| u.kind).collect();
        assert_eq!(kinds, vec![Kind::Tracker, Kind::Uav], "each once, in order");
        assert_eq!(
            cases[0].annotations(),
            vec![
                "mose.io/max-migration-time=5000ms".to_string(),
                "mose.io/objective=min-downtime".into()
            ]
        );
        assert!(cases[0]
            .command
            .windows(2)
            .any(|w| w == ["--tracks-mib", "64"]));
        assert_eq!(cases[1].annotations()[0], "mose.io/max-downtime=300ms");
    }

    #[test]
    fn containers_get_a_service_address_and_their_targets() {
        let u = UseCase::uav(450, 4);
        let a = run_args(&u);
        let ann: Vec<&str> = a
            .windows(2)
            .filter(|w| w[0] == "--annotation")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(
            ann,
            vec![
                "mose.io/network=svc",
                "mose.io/address=10.89.0.61/24",
                "mose.io/max-downtime=450ms",
                "mose.io/objective=min-downtime"
            ]
        );
        assert!(!a.iter().any(|x| x == "--net-host"), "the address moves");
        let image = a.iter().position(|x| x == u.image).expect("image");
        assert_eq!(a[image + 1], "uav");
        assert_eq!(a[image + 2..], u.command[..]);
        assert_eq!(service_addr(&u).to_string(), "10.89.0.61:14550");
        let t = UseCase::tracker(3500, &TrackerConfig::default());
        assert_eq!(service_addr(&t).to_string(), "10.89.0.62:7070");
    }

    /// A migration result as `mosectl migrate --output json` gives it.
    fn result(status: &str, technique: &str, down: f64, total: f64) -> Value {
        json!({
            "status": status, "technique": technique, "rounds": 0,
            "downtime_ms": down, "total_ms": total, "bytes_sent": 1,
            "plan": {
                "decision": {
                    "plan": {"technique": technique, "max_rounds": 0, "bandwidth_cap_bps": null},
                    "feasible": true, "refused": false, "reason": "r",
                    "targets": [
                        {"annotation": "mose.io/max-downtime", "feasible": true},
                        {"annotation": "mose.io/max-migration-time", "feasible": false}
                    ]
                },
                "measurements": {"memory_bytes": 4194304, "dirty_bytes_per_s": 0.0,
                    "link_bytes_per_s": 1.2e8},
                "kpis": [
                    {"kpi": "downtime", "predicted": 420.0, "measured": down},
                    {"kpi": "total", "predicted": 3000.0, "measured": total}
                ]
            }
        })
    }

    fn seen(gap_ms: f64) -> Seen {
        Seen {
            report: Value::Null,
            gap_ms,
            cell: "c".into(),
        }
    }

    #[test]
    fn targets_are_met_by_measurements_of_a_migration_that_succeeded() {
        let u = UseCase::uav(450, 4);
        let r = result("ok", "postcopy", 430.0, 900.0);
        let rows = target_rows(&u, &r, 470.0);
        assert_eq!(rows.len(), 1);
        let t = &rows[0];
        assert_eq!(
            (t["kpi"].as_str(), t["limit_ms"].as_u64()),
            (Some("downtime"), Some(450))
        );
        assert_eq!(
            (t["predicted_ms"].as_f64(), t["mose_measured_ms"].as_f64()),
            (Some(420.0), Some(430.0))
        );
        assert_eq!(
            (t["met"].as_bool(), t["client_met"].as_bool()),
            (Some(true), Some(false))
        );
        assert_eq!(t["claimed_feasible"], true);
        assert_eq!(met_cell(&rows), "downtime yes (client NO)");
        let failed = target_rows(&u, &result("rolled-back", "cold", 100.0, 200.0), 100.0);
        assert_eq!(
            (
                failed[0]["met"].as_bool(),
                failed[0]["client_met"].as_bool()
            ),
            (Some(false), Some(false))
        );
        let tr = UseCase::tracker(3500, &TrackerConfig::default());
        let rows = target_rows(&tr, &result("ok", "postcopy", 500.0, 3600.0), 800.0);
        assert_eq!(rows[0]["claimed_feasible"], false);
        assert_eq!(
            rows[0]["client_measured_ms"],
            Value::Null,
            "no client measure of the total"
        );
        assert_eq!(met_cell(&rows), "total NO");
    }

    #[test]
    fn the_row_shows_plan_predictions_and_measurements() {
        let u = UseCase::uav(450, 4);
        let r = result("ok", "postcopy", 430.0, 900.0);
        assert_eq!(plan_label(&r), "postcopy x0");
        let mut capped = result("failed", "precopy", 0.0, 10.0);
        capped["rounds"] = json!(2);
        capped["plan"]["decision"]["plan"]["bandwidth_cap_bps"] = json!(300_000_000u64);
        assert_eq!(plan_label(&capped), "precopy x2 cap 300 Mbit/s (failed)");
        capped["plan"]["decision"]["refused"] = json!(true);
        assert_eq!(plan_label(&capped), "refused");
        let row = scenario_row(&u, &r, &seen(470.0), 2500.0, None);
        assert_eq!(
            c_table_row(&row),
            vec![
                "uav",
                "max-downtime 450ms, min-downtime",
                "postcopy x0",
                "yes",
                "420",
                "3000",
                "430",
                "900",
                "c",
                "downtime yes (client NO)"
            ]
        );
        let tr = UseCase::tracker(3500, &TrackerConfig::default());
        let row = scenario_row(&tr, &r, &seen(800.0), 2500.0, Some(true));
        assert_eq!(row["client_cell"], "c, VERIFY ok");
        let err = json!({"scenario": "tracker", "targets": "t", "error": "boom"});
        let cells = c_table_row(&err);
        assert_eq!((cells.len(), cells[2].as_str()), (10, "error: boom"));
    }
}
