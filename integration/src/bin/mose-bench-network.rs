//! The MOSE paper's network cases: SockPerf (UDP ping-pong latency) and
//! iPerf3 (TCP throughput) servers with a service address on the testbed's
//! service segment, their clients in the user netns, migrated node 1 -> 2
//! with each technique. Per run: the client-observed downtime (the longest
//! gap between SockPerf replies; the longest run of zero-throughput 100 ms
//! iPerf3 intervals), MOSE's downtime and total time, bytes, and whether
//! the TCP connection survived. iPerf3 runs twice per technique: keeping
//! its connection, and with `--close-connections` and a client that
//! reconnects, which shows what keeping connections costs (total time ratio
//! keep/close). Prints a table, writes `results/bench-network.json` and
//! `results/bench-network.svg` (under `$MOSE_RESULTS_DIR` when set).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use mose_integration::testbed::segment;
use mose_integration::{
    cluster::Cluster, median, plot, print_table, results_dir, sockperf, write_json,
};
use mose_workloads::image::ctr_import;
use mose_workloads::images::{
    cache_dir, iperf3_archive, sockperf_archive, IPERF3_PORT, IPERF3_REF, SOCKPERF_PORT,
    SOCKPERF_REF,
};

const NS: &str = "mose-bench-network";
const RT: &str = "io.containerd.mose.v2";
const TECHNIQUES: [&str; 4] = ["cold", "precopy", "postcopy", "hybrid"];

#[derive(Debug, Parser)]
#[command(
    name = "mose-bench-network",
    about = "SockPerf and iPerf3 migrated with every technique, keeping their address and \
             connection (and iPerf3 once more closing it), on a two-node testbed"
)]
struct Args {
    /// Rate the testbed's links are shaped to, in Mbit/s.
    #[arg(long = "rate-mbit", value_name = "L", default_value_t = 1000)]
    rate: u32,
    /// How long each client runs, in seconds (the migration starts 2 s in).
    #[arg(long, value_name = "S", default_value_t = 10)]
    seconds: u64,
    /// iPerf3's sending rate, in Mbit/s (below the link rate: the migration
    /// shares the links).
    #[arg(long = "iperf-mbit", value_name = "R", default_value_t = 200)]
    iperf_mbit: u32,
    /// Techniques to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "cold,precopy,postcopy,hybrid",
          value_parser = ["cold", "precopy", "postcopy", "hybrid"])]
    techniques: Vec<String>,
    /// Cases to run, comma-separated: sockperf, iperf3 (connection kept),
    /// iperf3-close (closed, the client reconnects).
    #[arg(long, value_delimiter = ',', default_value = "sockperf,iperf3,iperf3-close",
          value_parser = ["sockperf", "iperf3", "iperf3-close"])]
    cases: Vec<String>,
    /// Migrations per case and technique (the table gives each; ratios use medians).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=10))]
    runs: u32,
}

/// One measured migration.
struct Run {
    workload: &'static str,
    technique: &'static str,
    keep: bool,
    client_gap_ms: f64,
    survived: Option<bool>,
    reconnects: u32,
    migration: serde_json::Value,
}

fn main() -> Result<()> {
    let args = Args::parse();
    eprintln!(
        "[bench] two-node testbed, links shaped to {} Mbit/s",
        args.rate
    );
    let c = Cluster::up(2, Some(args.rate))?;
    let archives = [
        sockperf_archive(&cache_dir())?,
        iperf3_archive(&cache_dir())?,
    ];
    for a in &archives {
        ctr_import(c.node(1)?.containerd_socket(), NS, a)?;
    }
    let mut runs = Vec::new();
    let mut host = 20u8;
    for technique in TECHNIQUES
        .into_iter()
        .filter(|t| args.techniques.iter().any(|a| a == t))
    {
        for (case, workload, keep) in [
            ("sockperf", "sockperf", true),
            ("iperf3", "iperf3", true),
            ("iperf3-close", "iperf3", false),
        ] {
            if !args.cases.iter().any(|c| c == case) {
                continue;
            }
            for _ in 0..args.runs {
                host += 1;
                eprintln!(
                    "[bench] {workload} {technique} ({})",
                    if keep {
                        "connection kept"
                    } else {
                        "connection closed, client reconnects"
                    }
                );
                let run = measure(&c, &args, workload, technique, keep, host)?;
                c.remove(2, NS, workload);
                runs.push(run);
            }
        }
    }
    report(&args, &runs)
}

/// Starts the server, runs the client across one migration 1 -> 2.
fn measure(
    c: &Cluster,
    args: &Args,
    workload: &'static str,
    technique: &'static str,
    keep: bool,
    host: u8,
) -> Result<Run> {
    let address = segment::service_address(host);
    let image = if workload == "sockperf" {
        SOCKPERF_REF
    } else {
        IPERF3_REF
    };
    c.node(1)?.ctr(NS).ok([
        "run",
        "-d",
        "--runtime",
        RT,
        "--annotation",
        &format!("mose.io/network={}", segment::SERVICE_NETWORK),
        "--annotation",
        &format!("mose.io/address={address}"),
        image,
        workload,
    ])?;
    let ip = format!("10.89.0.{host}");
    std::thread::sleep(Duration::from_millis(500));
    let user = c.bed.user_netns().to_string();
    let client = std::thread::scope(|s| -> Result<Client> {
        let h = s.spawn(|| run_client(c, &user, workload, &ip, args));
        std::thread::sleep(Duration::from_secs(2));
        let mut extra = vec!["--technique", technique];
        if !keep {
            extra.push("--close-connections");
        }
        let m = c.migrate(1, 2, NS, workload, &extra);
        let client = h
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        Ok(Client {
            migration: m?,
            ..client
        })
    })?;
    if client.migration["status"] != "ok" {
        bail!(
            "{workload} {technique}: migration failed: {}",
            client.migration
        );
    }
    Ok(Run {
        workload,
        technique,
        keep,
        client_gap_ms: client.gap_ms,
        survived: client.survived,
        reconnects: client.reconnects,
        migration: client.migration,
    })
}

/// What a client saw.
struct Client {
    gap_ms: f64,
    survived: Option<bool>,
    reconnects: u32,
    migration: serde_json::Value,
}

fn run_client(c: &Cluster, user: &str, workload: &str, ip: &str, args: &Args) -> Result<Client> {
    let empty = serde_json::Value::Null;
    if workload == "sockperf" {
        let gap_ms = sockperf(c, ip, args.seconds)?;
        return Ok(Client {
            gap_ms,
            survived: None,
            reconnects: 0,
            migration: empty,
        });
    }
    let (gap_ms, reconnects) = iperf3(user, ip, args)?;
    Ok(Client {
        gap_ms,
        survived: Some(reconnects == 0),
        reconnects,
        migration: empty,
    })
}

fn in_user(user: &str, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{user}"))
        .arg("--")
        .arg(program);
    c
}

/// SockPerf ping-pong at [`SOCKPERF_MPS`] requests/s from the user netns
/// with MOSE's client (see [`mose_integration::sockperf`] for why not
/// sockperf's own): the longest time between two replies (ms).
fn sockperf(c: &Cluster, ip: &str, seconds: u64) -> Result<f64> {
    let socket = c
        .bed
        .run_in_user(|| std::net::UdpSocket::bind("0.0.0.0:0").context("binding the UDP client"))?;
    let server = format!("{ip}:{SOCKPERF_PORT}")
        .parse()
        .context("the SockPerf server's address")?;
    let r = sockperf::ping_pong(socket, server, SOCKPERF_MPS, Duration::from_secs(seconds))?;
    eprintln!(
        "[bench] sockperf: {} of {} answered, longest gap {:.0} ms at {:.0} ms, median RTT {:.2} ms",
        r.answered, r.sent, r.longest_gap_ms, r.gap_start_ms, r.median_rtt_ms
    );
    Ok(r.longest_gap_ms)
}

/// SockPerf's request rate (messages per second).
const SOCKPERF_MPS: u32 = 1000;

/// Longest gap between consecutive times (seconds), 0 with fewer than two.
fn longest_gap(times: &[f64]) -> f64 {
    times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

/// iPerf3 at `--iperf-mbit` in 100 ms intervals for `--seconds`; a client
/// whose connection breaks starts again for the rest of the time. Returns
/// the longest stretch without data (ms) and the reconnects.
fn iperf3(user: &str, ip: &str, args: &Args) -> Result<(f64, u32)> {
    let start = Instant::now();
    let end = start + Duration::from_secs(args.seconds);
    let mut data_times = Vec::new();
    let mut reconnects = 0;
    while Instant::now() + Duration::from_millis(500) < end {
        let t0 = start.elapsed().as_secs_f64();
        let left = (end - Instant::now()).as_secs().max(1);
        let out = in_user(user, "iperf3")
            .args([
                "-c",
                ip,
                "-p",
                &IPERF3_PORT.to_string(),
                "-i",
                "0.1",
                "--json",
            ])
            .args([
                "-t",
                &left.to_string(),
                "-b",
                &format!("{}M", args.iperf_mbit),
            ])
            .args(["--connect-timeout", "300"])
            .output()
            .context("running iperf3 (Debian package iperf3)")?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        for i in v["intervals"].as_array().into_iter().flatten() {
            if i["sum"]["bytes"].as_f64().unwrap_or(0.0) > 0.0 {
                data_times.push(t0 + i["sum"]["end"].as_f64().unwrap_or(0.0));
            }
        }
        if v.get("error").is_none() && out.status.success() {
            break;
        }
        reconnects += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((longest_gap(&data_times) * 1e3, reconnects))
}

fn report(args: &Args, runs: &[Run]) -> Result<()> {
    let header = [
        "workload",
        "technique",
        "connection",
        "client gap ms",
        "mose downtime ms",
        "total ms",
        "MiB sent",
        "survived",
        "reconnects",
    ];
    let rows: Vec<Vec<String>> = runs.iter().map(row).collect();
    println!();
    print_table(&header, &rows);
    println!("\nclient gap: SockPerf = longest time between two replies at 1000 requests/s;");
    println!("iPerf3 = longest stretch without data in 100 ms intervals.");
    println!("What keeping connections costs (iPerf3, median total time, keep / close):");
    let mut ratios = Vec::new();
    for t in TECHNIQUES {
        let total = |keep| {
            let v: Vec<f64> = runs
                .iter()
                .filter(|r| r.workload == "iperf3" && r.technique == t && r.keep == keep)
                .filter_map(|r| r.migration["total_ms"].as_f64())
                .collect();
            (!v.is_empty()).then(|| (median(&v), v.len()))
        };
        if let (Some((k, n)), Some((c, _))) = (total(true), total(false)) {
            println!(
                "  {t}: {k:.0} ms / {c:.0} ms = {:.2}x ({n} runs each)",
                k / c
            );
            ratios.push(
                serde_json::json!({"technique": t, "keep_ms": k, "close_ms": c,
                "ratio": k / c, "runs": n}),
            );
        }
    }
    write_outputs(args, runs, ratios)
}

fn row(r: &Run) -> Vec<String> {
    let m = &r.migration;
    vec![
        r.workload.into(),
        r.technique.into(),
        m["connections"].as_str().unwrap_or("?").into(),
        format!("{:.0}", r.client_gap_ms),
        format!("{:.0}", m["downtime_ms"].as_f64().unwrap_or(0.0)),
        format!("{:.0}", m["total_ms"].as_f64().unwrap_or(0.0)),
        format!("{:.1}", m["bytes_sent"].as_f64().unwrap_or(0.0) / 1048576.0),
        match r.survived {
            None => "n/a (UDP)".into(),
            Some(true) => "yes".into(),
            Some(false) => "no".into(),
        },
        r.reconnects.to_string(),
    ]
}

fn write_outputs(args: &Args, runs: &[Run], ratios: Vec<serde_json::Value>) -> Result<()> {
    let dir = results_dir()?;
    let json: Vec<serde_json::Value> = runs
        .iter()
        .map(|r| {
            serde_json::json!({"workload": r.workload, "technique": r.technique, "keep": r.keep,
                "client_gap_ms": r.client_gap_ms, "survived": r.survived,
                "reconnects": r.reconnects, "migration": r.migration})
        })
        .collect();
    write_json(
        &dir.join("bench-network.json"),
        &serde_json::json!({"rate_mbit": args.rate, "seconds": args.seconds,
            "iperf_mbit": args.iperf_mbit, "runs": json, "keep_vs_close_total": ratios}),
    )?;
    let series = |w: &str, keep: bool| -> Vec<f64> {
        TECHNIQUES
            .iter()
            .map(|t| {
                let v: Vec<f64> = runs
                    .iter()
                    .filter(|r| r.workload == w && r.technique == *t && r.keep == keep)
                    .map(|r| r.client_gap_ms)
                    .collect();
                if v.is_empty() {
                    0.0
                } else {
                    median(&v)
                }
            })
            .collect()
    };
    plot::grouped_bars(
        &dir.join("bench-network.svg"),
        &format!("client-observed downtime (median), {} Mbit/s", args.rate),
        "ms",
        &TECHNIQUES,
        &[
            ("SockPerf (UDP)", series("sockperf", true)),
            ("iPerf3, connection kept", series("iperf3", true)),
            ("iPerf3, closed + reconnect", series("iperf3", false)),
        ],
    )?;
    println!(
        "\nwrote {} and {}",
        dir.join("bench-network.json").display(),
        dir.join("bench-network.svg").display()
    );
    Ok(())
}
