//! Pod migration through the CRI against the same containers migrated with
//! `mosectl` outside Kubernetes, on a two-node testbed (links shaped to
//! 1 Gbit/s by default), in one invocation, alternating the two paths run
//! by run so that a busy machine hurts both alike.
//!
//! - `cri`: a pod (the state service with `--state-mib` MiB, and a sidecar
//!   asking it over localhost) on node 1; a pod continuing it is created on
//!   node 2 through node 2's CRI (RunPodSandbox, then CreateContainer and
//!   StartContainer for each container, as a kubelet would).
//! - `mosectl`: the same two containers run with `ctr` under the MOSE
//!   runtime, each with a service address (the sidecar asks the service's),
//!   migrated one after the other with `mosectl migrate`.
//!
//! Per run: the client-observed downtime (the longest gap in answers of a
//! 200 req/s probe holding one connection to the service), MOSE's downtime
//! of the state container (freeze to restored, from the source's record),
//! the total time (first request to the last container running), and
//! whether the probe's connection survived. Prints a table with medians and
//! the CRI path's difference to `mosectl` in client gap and MOSE downtime
//! (the goal: at most +50 ms each), writes
//! `results/bench-pods.json` and `results/bench-pods.svg` (under
//! `$MOSE_RESULTS_DIR` when set).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use mose_integration::cluster::Cluster;
use mose_integration::cri::Cri;
use mose_integration::pod_fixtures::{self, PORT};
use mose_integration::testbed::segment;
use mose_integration::{median, ms, plot, print_table, results_dir, write_json};
use mose_workloads::image::ctr_import;
use mose_workloads::images::{cache_dir, state_service_archive, STATE_SERVICE_REF};
use mose_workloads::probe::{ping, Probe, ProbeConfig, ProbeResult};

const NS: &str = "mose-bench-pods";
const RT: &str = "io.containerd.mose.v2";
const POD: &str = "bench";
/// Service addresses of the `mosectl` path's two containers.
const STATE_HOST: u8 = 40;
const SIDECAR_HOST: u8 = 41;
/// The CRI path may add at most this to the downtime (issue goal).
const GOAL_EXTRA_MS: f64 = 50.0;

#[derive(Debug, Parser)]
#[command(
    name = "mose-bench-pods",
    about = "A two-container pod migrated through the CRI, beside the same containers \
             migrated with mosectl, on a two-node testbed"
)]
struct Args {
    /// Rate the testbed's links are shaped to, in Mbit/s.
    #[arg(long = "rate-mbit", value_name = "L", default_value_t = 1000)]
    rate: u32,
    /// The state service's memory, in MiB.
    #[arg(long = "state-mib", value_name = "S", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=2048))]
    state_mib: u32,
    /// Techniques to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "precopy,postcopy",
          value_parser = ["cold", "precopy", "postcopy", "hybrid"])]
    techniques: Vec<String>,
    /// Migrations per path and technique (the table gives medians).
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=10))]
    runs: u32,
}

/// One measured migration of the two containers.
#[derive(Debug, Clone, serde::Serialize)]
struct Run {
    path: &'static str,
    technique: String,
    client_gap_ms: f64,
    downtime_ms: f64,
    /// The sidecar's outage: through the CRI, frozen with the pod
    /// (`pod_frozen_before_ms`) plus its own migration's downtime; with
    /// `mosectl`, its own downtime (it runs on without its service while
    /// the state container moves).
    sidecar_out_ms: f64,
    total_ms: f64,
    reconnects: u64,
    migrations: Vec<serde_json::Value>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    eprintln!(
        "[bench] two-node testbed, links shaped to {} Mbit/s, state {} MiB",
        args.rate, args.state_mib
    );
    let c = Cluster::up(2, Some(args.rate))?;
    let state = state_service_archive(None, &cache_dir())?;
    c.enable_pods(std::slice::from_ref(&state))?;
    ctr_import(c.node(1)?.containerd_socket(), NS, &state)?;
    let mut cris = Vec::new();
    for i in 1..=2 {
        cris.push(Cri::connect(c.node(i)?.containerd_socket())?);
    }
    let mut runs = Vec::new();
    for t in &args.techniques {
        for n in 0..args.runs {
            eprintln!("[bench] {t} run {}/{}: through the CRI", n + 1, args.runs);
            runs.push(cri_run(&c, &mut cris, &args, t)?);
            eprintln!("[bench] {t} run {}/{}: with mosectl", n + 1, args.runs);
            runs.push(mosectl_run(&c, &args, t)?);
        }
    }
    report(&args, &runs)
}

/// A probe on one connection to `addr` around `migrate`.
fn probed<T>(
    c: &Cluster,
    addr: &str,
    migrate: impl FnOnce() -> Result<T>,
) -> Result<(T, ProbeResult)> {
    let mut cfg = ProbeConfig::new(vec![addr.to_string()], 200.0);
    cfg.read_timeout = Duration::from_secs(20);
    let probe = c.bed.run_in_user(move || Probe::start_with(cfg))?;
    std::thread::sleep(Duration::from_secs(1));
    let out = migrate();
    std::thread::sleep(Duration::from_secs(1));
    let r = probe.stop();
    eprintln!("[bench]   probe: {}", r.summary());
    for g in &r.gaps {
        eprintln!("[bench]   gap: {g:?}");
    }
    Ok((out?, r))
}

fn wait_answering(c: &Cluster, addr: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = addr.to_string();
        if c.bed.run_in_user(move || Ok(ping(&a).is_ok()))? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the state service does not answer on {addr}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The source node's records of migrations out, from line `from` on.
fn records_out(c: &Cluster, node: usize, from: usize) -> Result<Vec<serde_json::Value>> {
    let path = c.node(node)?.dir().join("mose-state/migrations.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    Ok(text
        .lines()
        .skip(from)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["direction"] == "out")
        .collect())
}

fn record_count(c: &Cluster, node: usize) -> Result<usize> {
    let path = c.node(node)?.dir().join("mose-state/migrations.jsonl");
    Ok(std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .count())
}

fn cri_run(c: &Cluster, cris: &mut [Cri], args: &Args, technique: &str) -> Result<Run> {
    let containers = [
        pod_fixtures::state_container(args.state_mib, &[]),
        pod_fixtures::sidecar(),
    ];
    let pod = pod_fixtures::pod(c.node(1)?.dir(), POD, &[]);
    let (src_pod, _) = pod_fixtures::run_pod_with(&mut cris[0], &pod, &containers)?;
    let ip = cris[0]
        .pod_status(&src_pod)?
        .network
        .map(|n| n.ip)
        .unwrap_or_default();
    let addr = format!("{ip}:{PORT}");
    wait_answering(c, &addr)?;
    let before = record_count(c, 1)?;
    let origin = format!("{}/default/{POD}", c.endpoint(1)?);
    let dest = pod_fixtures::pod(
        c.node(2)?.dir(),
        POD,
        &[
            ("mose.io/migrate-from", &origin),
            ("mose.io/technique", technique),
        ],
    );
    let cri2 = &mut cris[1];
    let ((dst_pod, total_ms), probe) = probed(c, &addr, || {
        let t = Instant::now();
        let (id, _) = pod_fixtures::run_pod_with(cri2, &dest, &containers)?;
        Ok((id, ms(t.elapsed())))
    })?;
    let migrations = records_out(c, 1, before)?;
    cris[0].remove_pod(&src_pod)?;
    cris[1].remove_pod(&dst_pod)?;
    finish(
        "cri",
        technique,
        probe,
        total_ms,
        migrations,
        "pod_container",
    )
}

fn mosectl_run(c: &Cluster, args: &Args, technique: &str) -> Result<Run> {
    let state_addr = segment::service_address(STATE_HOST);
    let sidecar_script =
        format!("while :; do echo PING | nc -w 1 10.89.0.{STATE_HOST} {PORT}; sleep 0.5; done");
    let state_mib = args.state_mib.to_string();
    let run = |id: &str, address: &str, cmd: &[&str]| -> Result<()> {
        let network = format!("mose.io/network={}", segment::SERVICE_NETWORK);
        let address = format!("mose.io/address={address}");
        let mut a = vec![
            "run",
            "-d",
            "--runtime",
            RT,
            "--annotation",
            &network,
            "--annotation",
            &address,
            STATE_SERVICE_REF,
            id,
        ];
        a.extend_from_slice(cmd);
        c.node(1)?.ctr(NS).ok(&a).map(|_| ())
    };
    let port = PORT.to_string();
    run(
        "state",
        &state_addr,
        &[
            "/usr/local/bin/mose-state-service",
            "--state-mib",
            &state_mib,
            "--port",
            &port,
        ],
    )?;
    run(
        "sidecar",
        &segment::service_address(SIDECAR_HOST),
        &["/bin/sh", "-c", &sidecar_script],
    )?;
    let addr = format!("10.89.0.{STATE_HOST}:{PORT}");
    wait_answering(c, &addr)?;
    let (migrations, probe) = probed(c, &addr, || {
        let t = Instant::now();
        let mut out = Vec::new();
        for id in ["state", "sidecar"] {
            out.push(c.migrate(1, 2, NS, id, &["--technique", technique])?);
        }
        Ok((out, ms(t.elapsed())))
    })?;
    let (migrations, total_ms) = migrations;
    for id in ["state", "sidecar"] {
        c.remove(2, NS, id);
        c.remove(1, NS, id);
    }
    finish(
        "mosectl",
        technique,
        probe,
        total_ms,
        migrations,
        "container",
    )
}

/// Checks every migration succeeded and builds the run; `state_key` is the
/// record field naming the state container.
fn finish(
    path: &'static str,
    technique: &str,
    probe: ProbeResult,
    total_ms: f64,
    migrations: Vec<serde_json::Value>,
    state_key: &str,
) -> Result<Run> {
    if migrations.len() != 2 || migrations.iter().any(|m| m["status"] != "ok") {
        bail!("{path} {technique}: expected two successful migrations, got {migrations:?}");
    }
    let state = migrations
        .iter()
        .find(|m| m[state_key] == "state" || m["pod_container"] == "state")
        .or(migrations.first())
        .context("no migration of the state container")?;
    let sidecar = migrations
        .iter()
        .find(|m| m[state_key] == "sidecar" || m["pod_container"] == "sidecar")
        .context("no migration of the sidecar")?;
    let sidecar_out_ms = sidecar["pod_frozen_before_ms"].as_f64().unwrap_or(0.0)
        + sidecar["downtime_ms"].as_f64().unwrap_or(f64::NAN);
    Ok(Run {
        path,
        technique: technique.to_string(),
        client_gap_ms: probe.downtime_ms,
        downtime_ms: state["downtime_ms"].as_f64().unwrap_or(f64::NAN),
        sidecar_out_ms,
        total_ms,
        reconnects: probe.reconnects,
        migrations,
    })
}

fn med(runs: &[Run], path: &str, t: &str, f: impl Fn(&Run) -> f64) -> f64 {
    let v: Vec<f64> = runs
        .iter()
        .filter(|r| r.path == path && r.technique == t)
        .map(f)
        .collect();
    median(&v)
}

fn report(args: &Args, runs: &[Run]) -> Result<()> {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.path.to_string(),
                r.technique.clone(),
                format!("{:.0}", r.client_gap_ms),
                format!("{:.0}", r.downtime_ms),
                format!("{:.0}", r.sidecar_out_ms),
                format!("{:.0}", r.total_ms),
                if r.reconnects == 0 {
                    "kept".into()
                } else {
                    format!("{} reconnects", r.reconnects)
                },
            ]
        })
        .collect();
    print_table(
        &[
            "path",
            "technique",
            "client gap ms",
            "MOSE downtime ms",
            "sidecar out ms",
            "total ms",
            "connection",
        ],
        &rows,
    );
    let mut summary = Vec::new();
    let mut srows = Vec::new();
    for t in &args.techniques {
        let gap = |p: &str| med(runs, p, t, |r| r.client_gap_ms);
        let down = |p: &str| med(runs, p, t, |r| r.downtime_ms);
        let total = |p: &str| med(runs, p, t, |r| r.total_ms);
        let side = |p: &str| med(runs, p, t, |r| r.sidecar_out_ms);
        let extra = gap("cri") - gap("mosectl");
        let extra_down = down("cri") - down("mosectl");
        let met = extra <= GOAL_EXTRA_MS && extra_down <= GOAL_EXTRA_MS;
        srows.push(vec![
            t.clone(),
            format!("{:.0} / {:.0} ({:+.0})", gap("cri"), gap("mosectl"), extra),
            format!(
                "{:.0} / {:.0} ({:+.0})",
                down("cri"),
                down("mosectl"),
                extra_down
            ),
            format!("{:.0} / {:.0}", side("cri"), side("mosectl")),
            format!("{:.0} / {:.0}", total("cri"), total("mosectl")),
            if met { "met".into() } else { "missed".into() },
        ]);
        summary.push(serde_json::json!({
            "technique": t,
            "client_gap_ms": {"cri": gap("cri"), "mosectl": gap("mosectl")},
            "downtime_ms": {"cri": down("cri"), "mosectl": down("mosectl")},
            "sidecar_out_ms": {"cri": side("cri"), "mosectl": side("mosectl")},
            "total_ms": {"cri": total("cri"), "mosectl": total("mosectl")},
            "cri_extra_gap_ms": extra,
            "cri_extra_downtime_ms": extra_down,
            "goal_extra_ms": GOAL_EXTRA_MS,
        }));
    }
    println!();
    print_table(
        &[
            "technique",
            "client gap ms: cri / mosectl (extra)",
            "MOSE downtime ms: cri / mosectl (extra)",
            "sidecar out ms: cri / mosectl",
            "total ms: cri / mosectl",
            "goal +50 ms",
        ],
        &srows,
    );
    let dir = results_dir()?;
    write_json(
        &dir.join("bench-pods.json"),
        &serde_json::json!({"rate_mbit": args.rate, "state_mib": args.state_mib,
            "runs": runs, "medians": summary}),
    )?;
    let metrics: Vec<String> = args
        .techniques
        .iter()
        .flat_map(|t| [format!("{t} gap"), format!("{t} total")])
        .collect();
    let metric_refs: Vec<&str> = metrics.iter().map(String::as_str).collect();
    let series = |p: &str| -> Vec<f64> {
        args.techniques
            .iter()
            .flat_map(|t| {
                [
                    med(runs, p, t, |r| r.client_gap_ms),
                    med(runs, p, t, |r| r.total_ms),
                ]
            })
            .collect()
    };
    plot::grouped_bars(
        &dir.join("bench-pods.svg"),
        &format!(
            "Two-container pod ({} MiB state, {} Mbit/s): CRI vs mosectl",
            args.state_mib, args.rate
        ),
        "ms (median)",
        &metric_refs,
        &[("cri", series("cri")), ("mosectl", series("mosectl"))],
    )?;
    eprintln!(
        "[bench] wrote {} and {}",
        dir.join("bench-pods.json").display(),
        dir.join("bench-pods.svg").display()
    );
    Ok(())
}
