//! Migration benchmark on the two-node testbed: the state service with
//! S MiB of state dirtied at R MiB/s, over links shaped to L Mbit/s, migrated
//! with MOSE `cold`, `precopy`, `postcopy` and `hybrid` and, in the same run, with the baseline a
//! careful user has today: `ctr tasks checkpoint --exit` into tmpfs under
//! containerd's runc shim, the image directory streamed as tar over TCP
//! through the same shaped link into the destination containerd's content
//! store, and a containerd restore (no MOSE). A probe client at 200 req/s
//! measures the client-observed downtime of each.
//!
//! Usage: mose-bench-migration [--state 64,512,1024] [--dirty 0,16] [--links 1000,200] [--runs 1]
//!        [--techniques baseline,cold,precopy,postcopy,hybrid]   (see `--help`)
//! Writes results/bench-migration.json and results/bench-migration.svg.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use clap::{builder::PossibleValuesParser, Parser};
use containerd_client::types::Descriptor;
use mose_integration::{cluster::Cluster, median, ms, plot, print_table, results_dir, write_json};
use mose_tests::fifo::TaskIo;
use mose_workloads::{
    image::ctr_import,
    images::{cache_dir, state_service_archive, STATE_SERVICE_REF},
    probe::{ping, verify, Probe},
};
use sha2::{Digest, Sha256};

const PORT: u16 = 7070;
const XFER_PORT: u16 = 7799;
const CRIU_TAR: &str = "application/vnd.containerd.container.criu.checkpoint.criu.tar";
const BASE: &str = "/run/mose-baseline";
/// What `--techniques` may name: `postcopy-tmpfs` and `hybrid-tmpfs` are
/// post-copy and hybrid from a full dump into tmpfs (`--lazy-source
/// tmpfs-dump`), beside the same techniques from CRIU's lazy dump.
const TECHNIQUES: [&str; 7] = [
    "baseline",
    "cold",
    "precopy",
    "postcopy",
    "hybrid",
    "postcopy-tmpfs",
    "hybrid-tmpfs",
];

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
             techniques and with the ctr checkpoint + tar over TCP + restore baseline, client-observed \
             downtime measured by a 200 req/s probe",
    after_help = "Every list is comma-separated; the grid is state x dirty x links. Writes \
                  results/bench-migration.json and results/bench-migration.svg (under \
                  $MOSE_RESULTS_DIR when set)."
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
        default_value = "baseline,cold,precopy,postcopy,hybrid",
        value_parser = PossibleValuesParser::new(TECHNIQUES)
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

/// Creates the state-service container with CRIU settings for clients'
/// connections (closed, in-flight skipped) and starts it.
async fn start_service(
    c: &Cluster,
    node: usize,
    ns: &str,
    id: &str,
    runtime: &str,
    mib: u64,
    dirty: u64,
) -> Result<f64> {
    let n = c.node(node)?;
    let mut args = vec![
        "containers".to_string(),
        "create".into(),
        "--runtime".into(),
        runtime.into(),
        "--net-host".into(),
    ];
    args.push(STATE_SERVICE_REF.into());
    args.push(id.into());
    args.extend(service_cmd(mib, dirty));
    n.ctr(ns).ok(args)?;
    let client = mose_tests::client::Client::connect(n.containerd_socket(), ns).await?;
    if runtime.contains("runc") {
        // the baseline tells CRIU the same as MOSE does: close client
        // connections, skip unaccepted ones
        let mut spec = client.container_spec(id).await?;
        spec["annotations"]["org.criu.config"] = serde_json::json!(format!("{BASE}/criu.conf"));
        client.set_container_spec(id, &spec).await?;
    }
    client.create_task(id, &TaskIo::null()).await?;
    let pid = client.start(id, "").await?;
    let addr = format!("{}:{PORT}", n.ip());
    let deadline = Instant::now() + Duration::from_secs(60);
    while ping(&addr).is_err() {
        if Instant::now() > deadline {
            bail!("state service {id} did not answer on {addr}");
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

/// The baseline: ctr checkpoint --exit into tmpfs, tar over TCP, containerd restore.
async fn baseline(
    c: &Cluster,
    ns: &str,
    id: &str,
    mib: u64,
    dirty: u64,
) -> Result<(f64, f64, serde_json::Value)> {
    let (n1, n2) = (c.node(1)?, c.node(2)?);
    let img = PathBuf::from(BASE).join(id);
    let _ = std::fs::remove_dir_all(&img);
    let t0 = Instant::now();
    n1.ctr(ns)
        .ok([
            "tasks".as_ref(),
            "checkpoint".as_ref(),
            "--exit".as_ref(),
            "--image-path".as_ref(),
            img.as_os_str(),
            id.as_ref(),
        ])
        .context("ctr tasks checkpoint --exit")?;
    let t1 = Instant::now();
    // destination: receive the tar into tmpfs, then into containerd's content store
    let (ip2, recv) = (n2.ip(), PathBuf::from(BASE).join(format!("recv-{id}.tar")));
    let recv2 = recv.clone();
    let receiver = n2.spawn_in_netns(move || -> Result<(String, u64)> {
        let l = TcpListener::bind((ip2, XFER_PORT))?;
        let (mut s, _) = l.accept()?;
        let mut f = std::fs::File::create(&recv2)?;
        let (mut h, mut n, mut buf) = (Sha256::new(), 0u64, vec![0u8; 1 << 20]);
        loop {
            let k = s.read(&mut buf)?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            f.write_all(&buf[..k])?;
            n += k as u64;
        }
        Ok((format!("sha256:{:x}", h.finalize()), n))
    })?;
    std::thread::sleep(Duration::from_millis(100));
    let (img2, ip) = (img.clone(), n2.ip());
    n1.run_in_netns(move || -> Result<()> {
        let s = TcpStream::connect((ip, XFER_PORT))?;
        let mut b = tar::Builder::new(s);
        b.append_dir_all(".", &img2)?;
        b.into_inner()?.flush()?;
        Ok(())
    })?;
    let (digest, size) = receiver
        .join()
        .map_err(|_| anyhow!("receiver panicked"))??;
    ingest(n2.containerd_socket(), ns, &recv, &digest, size).await?;
    let _ = std::fs::remove_file(&recv);
    let t2 = Instant::now();
    // restore on the destination under containerd's runc shim
    let mut args = vec![
        "containers".to_string(),
        "create".into(),
        "--runtime".into(),
        "io.containerd.runc.v2".into(),
        "--net-host".into(),
        STATE_SERVICE_REF.into(),
        id.into(),
    ];
    args.extend(service_cmd(mib, dirty));
    n2.ctr(ns).ok(args)?;
    let client = mose_tests::client::Client::connect(n2.containerd_socket(), ns).await?;
    let mut spec = client.container_spec(id).await?;
    spec["annotations"]["org.criu.config"] = serde_json::json!(format!("{BASE}/criu.conf"));
    client.set_container_spec(id, &spec).await?;
    let rootfs = client.rootfs_mounts(id).await?;
    let desc_digest = digest.clone();
    let desc = Descriptor {
        media_type: CRIU_TAR.into(),
        digest,
        size: size as i64,
        annotations: Default::default(),
    };
    client
        .create_task_with(id, &TaskIo::null(), rootfs, Some(desc), None)
        .await?;
    client.start(id, "").await?;
    let t3 = Instant::now();
    let _ = n1.ctr(ns).run(["tasks", "delete", id]);
    let _ = n1.ctr(ns).run(["containers", "delete", id]);
    let _ = n2.ctr(ns).run(["content", "rm", &desc_digest]);
    let _ = std::fs::remove_dir_all(&img);
    let phases = serde_json::json!([
        {"name": "checkpoint --exit", "ms": ms(t1 - t0)},
        {"name": "tar over TCP + ingest", "ms": ms(t2 - t1), "bytes": size},
        {"name": "restore", "ms": ms(t3 - t2)},
    ]);
    Ok((ms(t3 - t0), size as f64, phases))
}

/// Writes a file into containerd's content store as a GC root (so it is not
/// collected before the restore uses it), as containerd's own clients do
/// under a lease.
async fn ingest(socket: &Path, ns: &str, file: &Path, digest: &str, size: u64) -> Result<()> {
    use containerd_client::services::v1::{
        content_client::ContentClient, WriteAction, WriteContentRequest,
    };
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let r#ref = format!("baseline-{}", digest.trim_start_matches("sha256:"));
    let mut msgs: Vec<WriteContentRequest> = data
        .chunks(1 << 20)
        .enumerate()
        .map(|(i, c)| WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: r#ref.clone(),
            total: size as i64,
            offset: (i << 20) as i64,
            data: c.to_vec(),
            ..Default::default()
        })
        .collect();
    msgs.push(WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref,
        total: size as i64,
        offset: size as i64,
        expected: digest.into(),
        labels: [(
            "containerd.io/gc.root".to_string(),
            "mose-bench".to_string(),
        )]
        .into(),
        ..Default::default()
    });
    let channel = containerd_client::connect(socket).await?;
    let mut req = tonic::Request::new(tokio_stream::iter(msgs));
    req.metadata_mut()
        .insert("containerd-namespace", ns.parse()?);
    let mut resp = ContentClient::new(channel)
        .write(req)
        .await
        .map_err(|s| anyhow!("content write: {}", s.message()))?
        .into_inner();
    while resp
        .message()
        .await
        .map_err(|s| anyhow!("content write: {}", s.message()))?
        .is_some()
    {}
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let Args {
        states,
        dirties,
        links,
        runs,
        techniques,
    } = Args::parse();
    mose_migrate::ensure_tmpfs(Path::new(BASE))?;
    std::fs::write(
        Path::new(BASE).join("criu.conf"),
        "tcp-close\nskip-in-flight\n",
    )?;
    let archive = state_service_archive(None, &cache_dir())?;
    let mut all = Vec::new();
    let mut rows = Vec::new();
    for &link in &links {
        eprintln!("[bench] testbed with links shaped to {link} Mbit/s");
        let c = Cluster::up(2, Some(link))?;
        let ns = mose_tests::unique_id("bench");
        for i in [1, 2] {
            ctr_import(c.node(i)?.containerd_socket(), &ns, &archive)?;
        }
        let addrs = vec![
            format!("{}:{PORT}", c.node(1)?.ip()),
            format!("{}:{PORT}", c.node(2)?.ip()),
        ];
        let mut k = 0;
        for &mib in &states {
            for &dirty in &dirties {
                for run in 0..runs {
                    for technique in techniques.iter().map(|t| t.as_str()) {
                        k += 1;
                        let id = format!("s{k}");
                        eprintln!("[bench] S={mib} MiB R={dirty} MiB/s L={link} Mbit/s {technique} (run {})", run + 1);
                        let runtime = if technique == "baseline" {
                            "io.containerd.runc.v2"
                        } else {
                            "io.containerd.mose.v2"
                        };
                        let rss = start_service(&c, 1, &ns, &id, runtime, mib, dirty).await?;
                        std::thread::sleep(Duration::from_secs(1));
                        let probe = Probe::start(addrs.clone(), 200.0)?;
                        std::thread::sleep(Duration::from_millis(500));
                        let (total, bytes, rounds, live_freeze, detail) = if technique == "baseline"
                        {
                            let (t, b, phases) = baseline(&c, &ns, &id, mib, dirty).await?;
                            (t, b, 0, 0.0, serde_json::json!({"phases": phases}))
                        } else {
                            let r = c.migrate(1, 2, &ns, &id, &migrate_args(technique))?;
                            if r["status"] != "ok" {
                                // recorded as a miss; the grid goes on
                                eprintln!("[bench] {technique} {}: {}", r["status"], r["error"]);
                            }
                            let lf = r["round_details"]
                                .as_array()
                                .map(|a| {
                                    a.iter()
                                        .filter(|x| x["final_round"] == false)
                                        .filter_map(|x| x["freeze_ms"].as_f64())
                                        .fold(0.0, f64::max)
                                })
                                .unwrap_or(0.0);
                            (
                                r["total_ms"].as_f64().unwrap_or(0.0),
                                r["bytes_sent"].as_f64().unwrap_or(0.0),
                                r["rounds"].as_u64().unwrap_or(0),
                                lf,
                                r,
                            )
                        };
                        std::thread::sleep(Duration::from_millis(800));
                        let p = probe.stop();
                        let v = verify(&addrs[1]).map(|v| v.is_ok()).unwrap_or(false);
                        c.remove(2, &ns, &id);
                        c.remove(1, &ns, &id);
                        let lazy = &detail["lazy"];
                        let run = Run {
                            technique: technique.into(),
                            lazy_bytes: lazy["bytes"].as_f64().unwrap_or(0.0),
                            lazy_ms: detail["lazy_ms"].as_f64().unwrap_or(0.0),
                            faults: detail["faults"].as_u64().unwrap_or(0),
                            fault_p99_us: detail["fault_p99_us"].as_f64().unwrap_or(0.0),
                            downtime_ms: p.downtime_ms,
                            failed: (technique != "baseline" && detail["status"] != "ok")
                                .then(|| format!("{}: {}", detail["status"], detail["error"])),
                            mose_downtime_ms: detail["downtime_ms"].as_f64().unwrap_or(0.0),
                            total_ms: total,
                            bytes,
                            rounds,
                            max_live_freeze_ms: live_freeze,
                            seq_ok: p.seq_ok,
                            verify_ok: v,
                            rss_mib: rss,
                            detail,
                        };
                        rows.push(vec![
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
                            format!("{:.0}", lazy_link_pct(&run, link)),
                            run.faults.to_string(),
                            format!("{:.0}", run.fault_p99_us),
                            if run.failed.is_some() {
                                "FAILED".into()
                            } else if run.seq_ok && run.verify_ok {
                                "yes".into()
                            } else {
                                "NO".into()
                            },
                        ]);
                        all.push(((mib, dirty, link), run, p));
                    }
                }
            }
        }
    }
    println!();
    print_table(
        &[
            "S MiB",
            "R MiB/s",
            "L Mbit/s",
            "technique",
            "downtime ms",
            "MOSE downtime ms",
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
        ],
        &rows,
    );
    // ratios against the baseline of the same configuration
    println!("\nratios to the baseline (median downtime):");
    let mut ratios = Vec::new();
    let mut configs: Vec<Config> = all.iter().map(|(k, ..)| *k).collect();
    configs.dedup();
    let mut labels = Vec::new();
    let mut series: Vec<Vec<f64>> = vec![Vec::new(); techniques.len()];
    let med = |cfg: &Config, t: &str, f: &dyn Fn(&Run) -> f64| {
        median(
            &all.iter()
                .filter(|(k, r, _)| k == cfg && r.technique == t && r.failed.is_none())
                .map(|(_, r, _)| f(r))
                .collect::<Vec<_>>(),
        )
    };
    for cfg in &configs {
        let b = med(cfg, "baseline", &|r| r.downtime_ms);
        let mut line = format!("  S={} R={} L={}:", cfg.0, cfg.1, cfg.2);
        let mut row = serde_json::json!({"state_mib": cfg.0, "dirty_mib_per_s": cfg.1, "link_mbit": cfg.2, "baseline_ms": b});
        for (i, t) in techniques.iter().enumerate() {
            let d = med(cfg, t, &|r| r.downtime_ms);
            series[i].push(d);
            if t != "baseline" {
                line.push_str(&format!(" {t} {:.2}x", d / b));
                row[format!("{t}_ratio")] = (d / b).into();
                row[format!("{t}_ms")] = d.into();
            }
        }
        println!("{line} (baseline {b:.0} ms)");
        ratios.push(row);
        labels.push(format!("{}M/{}R/{}L", cfg.0, cfg.1, cfg.2));
    }
    // where the downtime of each lazy run goes
    println!("\nwhere the downtime goes (post-copy and hybrid; phases in ms):");
    for ((s, r, l), run, _) in &all {
        if run.lazy_ms > 0.0 {
            println!(
                "  S={s} R={r} L={l} {}: {} (lazy source {})",
                run.technique,
                downtime_breakdown(&run.detail),
                run.detail["lazy_source"].as_str().unwrap_or("-")
            );
        }
    }
    // the post-copy goals: downtime independent of memory and at most half a
    // second, the lazy phase near the link's rate, short fault waits
    let mut goals = Vec::new();
    let (smin, smax) = (
        states.iter().copied().min().unwrap_or(0),
        states.iter().copied().max().unwrap_or(0),
    );
    let large = states
        .iter()
        .copied()
        .filter(|&s| s <= 1024)
        .max()
        .unwrap_or(smax);
    println!("\npost-copy and hybrid goals (medians):");
    for t in techniques
        .iter()
        .filter(|t| t.starts_with("postcopy") || t.starts_with("hybrid"))
    {
        for &link in &links {
            for &dirty in &dirties {
                let lo = med(&(smin, dirty, link), t, &|r| r.downtime_ms);
                let hi = med(&(large, dirty, link), t, &|r| r.downtime_ms);
                let pct = med(&(large, dirty, link), t, &|r| lazy_link_pct(r, link));
                let p99 = med(&(large, dirty, link), t, &|r| r.fault_p99_us) / 1000.0;
                let base = med(&(large, dirty, link), "baseline", &|r| r.downtime_ms);
                println!(
                    "  {t} L={link} R={dirty}: downtime S={large} {hi:.0} ms / S={smin} {lo:.0} ms = \
                     {:.2}x (goal <= 1.3x, <= 500 ms); lazy phase {pct:.0}% of the link (goal >= 90%); \
                     fault p99 {p99:.1} ms (goal <= 20 ms at 1000 Mbit); {:.3}x the baseline",
                    hi / lo,
                    hi / base
                );
                goals.push(serde_json::json!({
                    "technique": t, "link_mbit": link, "dirty_mib_per_s": dirty,
                    "small_mib": smin, "large_mib": large,
                    "downtime_small_ms": lo, "downtime_large_ms": hi,
                    "downtime_large_over_small": hi / lo,
                    "lazy_link_pct_large": pct, "fault_p99_ms_large": p99,
                    "over_baseline_large": hi / base,
                }));
            }
        }
    }
    let dir = results_dir()?;
    let runs_json: Vec<serde_json::Value> = all
        .iter()
        .map(|((s, r, l), run, p)| {
            serde_json::json!({
                "state_mib": s, "dirty_mib_per_s": r, "link_mbit": l, "technique": run.technique,
                "downtime_ms": run.downtime_ms, "total_ms": run.total_ms, "bytes": run.bytes, "rounds": run.rounds,
                "max_live_freeze_ms": run.max_live_freeze_ms, "rss_mib": run.rss_mib,
                "mose_downtime_ms": run.mose_downtime_ms, "lazy_link_pct": lazy_link_pct(run, *l),
                "lazy_source": run.detail["lazy_source"], "downtime_breakdown": downtime_breakdown(&run.detail),
                "lazy_bytes": run.lazy_bytes, "lazy_ms": run.lazy_ms, "faults": run.faults, "fault_p99_us": run.fault_p99_us,
                "seq_ok": run.seq_ok, "verify_ok": run.verify_ok, "failed": run.failed, "probe": p, "detail": run.detail,
            })
        })
        .collect();
    write_json(
        &dir.join("bench-migration.json"),
        &serde_json::json!({"runs": runs_json, "ratios": ratios, "lazy_goals": goals}),
    )?;
    let label_refs: Vec<&str> = labels.iter().map(|s| s.as_str()).collect();
    plot::grouped_bars(
        &dir.join("bench-migration.svg"),
        "client-observed downtime (ms): baseline vs MOSE",
        "ms",
        &label_refs,
        &techniques
            .iter()
            .zip(series.iter())
            .map(|(t, v)| (t.as_str(), v.clone()))
            .collect::<Vec<_>>(),
    )?;
    println!(
        "\nwrote {} and {}",
        dir.join("bench-migration.json").display(),
        dir.join("bench-migration.svg").display()
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

    #[test]
    fn defaults_and_lists() {
        Args::command().debug_assert();
        let a = parse(&[]).expect("defaults");
        assert_eq!(
            (a.states, a.dirties, a.links, a.runs),
            (vec![64, 512, 1024], vec![0, 16], vec![1000, 200], 1)
        );
        assert_eq!(a.techniques, TECHNIQUES[..5]);
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
