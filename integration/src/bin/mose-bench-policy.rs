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
//! Usage: mose-bench-policy [--runs 3] [--state 32,128] [--dirty 0,8]
//!        [--links 1000,200] [--max-downtime-ms 1000] [--max-total-ms 6000]   (see `--help`)
//! Writes results/bench-policy.json and results/bench-policy.svg.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use mose_integration::{cluster::Cluster, median, plot, print_table, results_dir, write_json};
use mose_workloads::{
    image::ctr_import,
    images::{cache_dir, state_service_archive, STATE_SERVICE_REF},
    probe::ping,
};

const RT: &str = "io.containerd.mose.v2";
const PORT: u16 = 7070;

#[derive(Debug, Parser)]
#[command(
    name = "mose-bench-policy",
    args_override_self = true,
    about = "Policy benchmark on the two-node testbed: how well the cost model predicts downtime and \
             total time, and how often plans that claim a target feasible meet it (MOSE's plan vs a \
             fixed configuration)",
    after_help = "Every list is comma-separated; the grid is state x dirty x links. Writes \
                  results/bench-policy.json and results/bench-policy.svg (under $MOSE_RESULTS_DIR \
                  when set)."
)]
struct Args {
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
fn migrate(
    c: &Cluster,
    from: usize,
    ns: &str,
    id: &str,
    extra: &[&str],
) -> Result<serde_json::Value> {
    let to = 3 - from;
    let r = c.migrate(from, to, ns, id, extra)?;
    if r["status"] != "ok" {
        bail!("migration {from}->{to} failed: {}", r["error"]);
    }
    wait_up(c, to)?;
    Ok(r)
}

fn kpi(r: &serde_json::Value, name: &str) -> (f64, f64, Option<bool>) {
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
fn claimed(r: &serde_json::Value, annotation: &str) -> Option<bool> {
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
    let Args {
        runs,
        states,
        dirties,
        links,
        max_down,
        max_total,
    } = Args::parse();
    let runs = runs.max(1);
    let archive = state_service_archive(None, &cache_dir())?;
    let mut accuracy = Vec::new();
    let mut targets_rows = Vec::new();
    let t_all = Instant::now();
    for &link in &links {
        let c = Cluster::up(2, Some(link))?;
        let ns = mose_tests::unique_id("bpol");
        for i in [1, 2] {
            ctr_import(c.node(i)?.containerd_socket(), &ns, &archive)?;
        }
        // warm-up: one migration each way per size teaches both nodes
        for &s in &states {
            let id = format!("warm{s}");
            start(&c, 1, &ns, &id, s, 0, &[])?;
            migrate(&c, 1, &ns, &id, &["--technique", "cold"])?;
            migrate(&c, 2, &ns, &id, &["--technique", "precopy"])?;
            c.remove(1, &ns, &id);
            eprintln!("[bench] L={link} warm-up S={s} done");
        }
        // Part A: predicted vs measured, targets annotated on every container
        for &s in &states {
            for &r in &dirties {
                let id = format!("a{s}r{r}");
                let ann = [
                    format!("mose.io/max-downtime={max_down}ms"),
                    format!("mose.io/max-migration-time={max_total}ms"),
                ];
                start(&c, 1, &ns, &id, s, r, &ann)?;
                let mut at = 1;
                for technique in ["cold", "precopy"] {
                    for run in 1..=runs {
                        eprintln!("[bench] L={link} S={s} R={r} {technique} run {run}");
                        let res = migrate(&c, at, &ns, &id, &["--technique", technique])?;
                        at = 3 - at;
                        let (pd, md, metd) = kpi(&res, "downtime");
                        let (pt, mt, mett) = kpi(&res, "total");
                        let (pb, mb, _) = kpi(&res, "bytes");
                        accuracy.push(serde_json::json!({
                            "state_mib": s, "dirty_mib_per_s": r, "link_mbit": link,
                            "technique": technique, "run": run, "rounds": res["rounds"],
                            "downtime": {"predicted_ms": pd, "measured_ms": md, "claimed_feasible": claimed(&res, "mose.io/max-downtime"), "met": metd},
                            "total": {"predicted_ms": pt, "measured_ms": mt, "claimed_feasible": claimed(&res, "mose.io/max-migration-time"), "met": mett},
                            "bytes": {"predicted": pb, "measured": mb},
                            "result": res,
                        }));
                    }
                }
                c.remove(at, &ns, &id);
            }
        }
        // Part B: MOSE's plan vs a fixed configuration, per objective
        for &s in &states {
            for &r in &dirties {
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
                    start(&c, 1, &ns, &id, s, r, &ann)?;
                    eprintln!("[bench] L={link} S={s} R={r} {objective}: MOSE plan, then fixed");
                    let planned = migrate(&c, 1, &ns, &id, &[])?;
                    // the fixed configuration the MOSE paper would use
                    let fixed_args: &[&str] = if objective == "min-downtime" {
                        &["--technique", "precopy", "--max-rounds", "4"]
                    } else {
                        &["--technique", "cold"]
                    };
                    let fixed = migrate(&c, 2, &ns, &id, fixed_args)?;
                    c.remove(1, &ns, &id);
                    for (policy, res) in [("MOSE plan", &planned), ("fixed", &fixed)] {
                        let down = res["downtime_ms"].as_f64().unwrap_or(f64::NAN);
                        let total = res["total_ms"].as_f64().unwrap_or(f64::NAN);
                        let bytes = res["bytes_sent"].as_f64().unwrap_or(f64::NAN);
                        let met = if objective == "min-downtime" {
                            total <= max_total as f64
                        } else {
                            down <= (max_down * 3) as f64
                        };
                        let live_ms: f64 = res["round_details"]
                            .as_array()
                            .map(|a| a.iter().filter_map(|x| x["duration_ms"].as_f64()).sum())
                            .unwrap_or(0.0);
                        targets_rows.push(serde_json::json!({
                            "state_mib": s, "dirty_mib_per_s": r, "link_mbit": link,
                            "objective": objective, "policy": policy,
                            "technique": res["technique"], "rounds": res["rounds"],
                            "cap_bps": planned["plan"]["decision"]["plan"]["bandwidth_cap_bps"].as_u64().filter(|_| policy == "MOSE plan"),
                            "claimed_feasible": if policy == "MOSE plan" { res["plan"]["decision"]["feasible"].clone() } else { serde_json::Value::Null },
                            "downtime_ms": down, "total_ms": total, "bytes": bytes,
                            "mean_rate_mbit": bytes * 8.0 / 1e6 / (live_ms.max(1.0) / 1000.0 + down / 1000.0),
                            "target_met": met,
                        }));
                    }
                }
            }
        }
    }

    // --- report ---
    let mut rows = Vec::new();
    for a in &accuracy {
        rows.push(vec![
            a["state_mib"].to_string(),
            a["dirty_mib_per_s"].to_string(),
            a["link_mbit"].to_string(),
            a["technique"].as_str().unwrap_or("").into(),
            a["run"].to_string(),
            format!(
                "{:.0}",
                a["downtime"]["predicted_ms"].as_f64().unwrap_or(f64::NAN)
            ),
            format!(
                "{:.0}",
                a["downtime"]["measured_ms"].as_f64().unwrap_or(f64::NAN)
            ),
            format!(
                "{:.0}",
                a["total"]["predicted_ms"].as_f64().unwrap_or(f64::NAN)
            ),
            format!(
                "{:.0}",
                a["total"]["measured_ms"].as_f64().unwrap_or(f64::NAN)
            ),
            format!(
                "{}/{}",
                a["downtime"]["claimed_feasible"], a["downtime"]["met"]
            ),
            format!("{}/{}", a["total"]["claimed_feasible"], a["total"]["met"]),
        ]);
    }
    println!(
        "\nPart A: predicted vs measured (downtime = freeze to restored; feasible/met per target)"
    );
    print_table(
        &[
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
        ],
        &rows,
    );
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
        let claimed: Vec<&serde_json::Value> = accuracy
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
    let mut rows = Vec::new();
    for t in &targets_rows {
        rows.push(vec![
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
            format!("{:.0}", t["downtime_ms"].as_f64().unwrap_or(f64::NAN)),
            format!("{:.0}", t["total_ms"].as_f64().unwrap_or(f64::NAN)),
            format!("{:.1}", t["bytes"].as_f64().unwrap_or(f64::NAN) / 1048576.0),
            format!("{:.0}", t["mean_rate_mbit"].as_f64().unwrap_or(f64::NAN)),
            if t["target_met"] == true { "yes" } else { "NO" }.into(),
        ]);
    }
    println!(
        "\nPart B: MOSE plan vs fixed configuration (min-downtime: max-migration-time {max_total} ms; min-bandwidth: max-downtime {} ms)",
        max_down * 3
    );
    print_table(
        &[
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
        ],
        &rows,
    );
    let met = |p: &str| {
        let v: Vec<&serde_json::Value> = targets_rows.iter().filter(|t| t["policy"] == p).collect();
        (
            v.iter().filter(|t| t["target_met"] == true).count(),
            v.len(),
        )
    };
    let (mm, mn) = met("MOSE plan");
    let (fm, fnn) = met("fixed");
    println!("targets met: MOSE plan {mm}/{mn}, fixed configuration {fm}/{fnn}");
    println!("bench took {:.0} s", t_all.elapsed().as_secs_f64());

    let dir = results_dir()?;
    let json = serde_json::json!({
        "summary": {
            "median_abs_error_downtime": median(&ed), "median_abs_error_total": median(&et),
            "downtime_feasible_met": [hd, nd], "total_feasible_met": [ht, nt],
            "targets_met_mose": [mm, mn], "targets_met_fixed": [fm, fnn],
            "migrations": accuracy.len(), "runs": runs,
            "max_downtime_ms": max_down, "max_total_ms": max_total,
        },
        "accuracy": accuracy,
        "targets": targets_rows,
    });
    write_json(&dir.join("bench-policy.json"), &json)?;
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
        &dir.join("bench-policy.svg"),
        "MOSE policy: predicted vs measured (grey: ±20%)",
        &[
            ("downtime", pts("downtime")),
            ("total migration time", pts("total")),
        ],
    )?;
    println!(
        "\nwrote {} and {}",
        dir.join("bench-policy.json").display(),
        dir.join("bench-policy.svg").display()
    );
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
        ] {
            let e = parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }
}
