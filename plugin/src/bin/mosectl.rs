//! `mosectl`: MOSE's command line: cluster credentials, migrations, records.

use std::{io::IsTerminal, net::IpAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};
use mose_plugin::{
    endpoint::append_record,
    result::MigrationResult,
    source::{migrate, Fault, Progress, SourceOptions},
    tls::{init_ca, issue, Identity},
};
use mose_wire::Technique;

#[derive(Parser)]
#[command(version, about = "MOSE: migrate running containers between edge nodes")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Cluster credentials (mutual TLS between node plugins).
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// Migrate a running container to another node.
    Migrate(MigrateArgs),
    /// List the migrations recorded on this node.
    Migrations {
        #[arg(long, default_value = "/var/lib/mose")]
        state: PathBuf,
        #[arg(long, default_value = "table")]
        output: String,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// Create the cluster CA.
    Init {
        #[arg(long, default_value = "/etc/mose/tls")]
        dir: PathBuf,
        #[arg(long, default_value = "mose")]
        name: String,
    },
    /// Issue a node certificate signed by the cluster CA.
    Issue {
        #[arg(long, default_value = "/etc/mose/tls")]
        dir: PathBuf,
        #[arg(long)]
        node: String,
        /// IP addresses the node is reached at (repeatable).
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// DNS names the node is reached at (repeatable).
        #[arg(long)]
        dns: Vec<String>,
    },
}

#[derive(clap::Args)]
struct MigrateArgs {
    /// containerd socket of the source node.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    address: PathBuf,
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// The container to migrate.
    container: String,
    /// Destination node's endpoint, HOST:PORT.
    #[arg(long)]
    to: String,
    #[arg(long, default_value = "precopy")]
    technique: Technique,
    #[arg(long, default_value_t = 4)]
    max_rounds: u32,
    /// Stop pre-copy when a round moves fewer MiB than this.
    #[arg(long, default_value_t = 1)]
    min_round_mib: u64,
    /// lz4-compress bulk data (when the link, not the CPU, is the bottleneck).
    #[arg(long)]
    compress: bool,
    #[arg(long, default_value = "/etc/mose/tls")]
    tls_dir: PathBuf,
    /// This node's name (its certificate is <tls-dir>/<node>.pem).
    #[arg(long)]
    node: String,
    #[arg(long, default_value = "/run/mose/migrations")]
    work: PathBuf,
    #[arg(long, default_value = "/var/lib/mose")]
    state: PathBuf,
    /// Seconds any network wait may take before the migration is rolled back.
    #[arg(long, default_value_t = 10)]
    io_timeout: u64,
    /// `table` (with live progress on a terminal) or `json`.
    #[arg(long, default_value = "table")]
    output: String,
    /// Test hook: corrupt-chunk or truncate.
    #[arg(long, hide = true)]
    inject_fault: Option<Fault>,
}

fn progress_printer() -> Arc<dyn Fn(&Progress) + Send + Sync> {
    let start = std::time::Instant::now();
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(100));
    Arc::new(move |p: &Progress| {
        let secs = start.elapsed().as_secs_f64().max(1e-3);
        bar.set_message(format!(
            "{:<8} round {:>2}  {:>8.1} MiB sent  {:>7.1} Mbit/s",
            p.phase,
            p.round,
            p.bytes as f64 / 1048576.0,
            p.bytes as f64 * 8.0 / 1e6 / secs
        ));
        if p.phase == "done" {
            bar.finish_and_clear();
        }
    })
}

fn print_table(r: &MigrationResult) {
    println!("migration {}: {}", r.migration, r.status);
    println!("  container   {} -> {}", r.container, r.destination);
    println!(
        "  technique   {} ({} pre-copy rounds)",
        r.technique, r.rounds
    );
    println!("  downtime    {:.1} ms", r.downtime_ms);
    println!("  total       {:.1} ms", r.total_ms);
    println!("  bytes sent  {:.2} MiB", r.bytes_sent as f64 / 1048576.0);
    for p in &r.phases {
        println!(
            "    {:<14} +{:>8.1} ms  {:>8.1} ms",
            p.name, p.start_ms, p.duration_ms
        );
    }
    if let Some(e) = &r.error {
        println!("  error       {e}");
    }
}

async fn run() -> Result<i32> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Ca {
            cmd: CaCmd::Init { dir, name },
        } => {
            init_ca(&dir, &name)?;
            println!("cluster CA created in {}", dir.display());
        }
        Cmd::Ca {
            cmd: CaCmd::Issue { dir, node, ip, dns },
        } => {
            issue(&dir, &node, &ip, &dns)?;
            println!(
                "certificate for {node} written to {}",
                dir.join(format!("{node}.pem")).display()
            );
        }
        Cmd::Migrate(a) => {
            let json = a.output == "json";
            let progress = (!json && std::io::stderr().is_terminal()).then(progress_printer);
            let r = migrate(SourceOptions {
                socket: a.address,
                namespace: a.namespace,
                container: a.container,
                to: a.to,
                technique: a.technique,
                max_rounds: a.max_rounds,
                min_round_bytes: a.min_round_mib << 20,
                identity: Identity::new(&a.tls_dir, &a.node),
                compress: a.compress,
                bandwidth_cap_bps: None,
                work_root: a.work,
                io_timeout: Duration::from_secs(a.io_timeout.max(1)),
                fault: a.inject_fault,
                progress,
            })
            .await;
            let mut rec = serde_json::to_value(&r)?;
            rec["direction"] = "out".into();
            append_record(&a.state, &rec);
            if json {
                use std::io::Write;
                let _ = writeln!(std::io::stdout(), "{}", serde_json::to_string(&r)?);
            } else {
                print_table(&r);
            }
            return Ok(if r.status == "ok" { 0 } else { 1 });
        }
        Cmd::Migrations { state, output } => {
            let text = std::fs::read_to_string(state.join("migrations.jsonl")).unwrap_or_default();
            let recs: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if output == "json" {
                println!("{}", serde_json::to_string(&recs)?);
            } else {
                println!(
                    "{:<36} {:<4} {:<16} {:<12} {:>10}",
                    "MIGRATION", "DIR", "CONTAINER", "STATUS", "MS"
                );
                for r in recs {
                    let ms = r
                        .get("total_ms")
                        .or(r.get("ms"))
                        .and_then(|v| v.as_f64())
                        .unwrap_or(0.0);
                    println!(
                        "{:<36} {:<4} {:<16} {:<12} {:>10.1}",
                        r["migration"].as_str().unwrap_or("-"),
                        r["direction"].as_str().unwrap_or("-"),
                        r["container"].as_str().unwrap_or("-"),
                        r["status"].as_str().unwrap_or("-"),
                        ms
                    );
                }
            }
        }
    }
    Ok(0)
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MOSE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("mosectl: {e:#}");
            std::process::exit(1);
        }
    }
}
