//! `mosectl`: MOSE's command line: cluster credentials, migrations, records.

use std::{io::IsTerminal, net::IpAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mose_migrate::{
    record::append_record,
    result::{MigrationResult, PlanRecord},
    sender::{migrate, Fault, Progress, SourceOptions},
    tls::{self, init_ca, Identity},
};
use mose_plugin::policy::{report_result, request_plan, PlanAnswer, PlanQuery};
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
    /// Show the plan the node's policy picks for a container, with its
    /// predicted KPIs and whether each annotated target can be met.
    Plan(PlanArgs),
    /// Checkpoint a container's task into a directory with CRIU, as `ctr
    /// tasks checkpoint --exit --image-path` does for runc-named runtimes only.
    Checkpoint(CheckpointArgs),
    /// List the migrations recorded on this node.
    Migrations {
        #[arg(long, default_value = "/var/lib/mose")]
        state: PathBuf,
        #[arg(long, default_value = "table")]
        output: String,
    },
}

/// The cluster CA's default directory, apart from a node's default
/// `--tls-dir` (`/etc/mose/tls`): with both defaults on one host the CA key
/// would sit in the node's directory, where mose-plugin refuses it.
const CA_DIR: &str = "/etc/mose/ca";

#[derive(Subcommand)]
enum CaCmd {
    /// Create the cluster CA (directory 0700, ca.key 0600). Keep that
    /// directory on this host: its key can mint any node's identity.
    Init {
        /// The CA's directory: not a node's --tls-dir (/etc/mose/tls), which
        /// must never hold ca.key.
        #[arg(long, default_value = CA_DIR)]
        dir: PathBuf,
        #[arg(long, default_value = "mose")]
        name: String,
    },
    /// Issue a node's certificate signed by the cluster CA, into a bundle
    /// for that node (ca.pem, <node>.pem, <node>.key; no CA key).
    Issue(IssueArgs),
}

#[derive(clap::Args)]
struct IssueArgs {
    /// The cluster CA's directory (`mosectl ca init --dir`).
    #[arg(long, default_value = CA_DIR)]
    dir: PathBuf,
    #[arg(long)]
    node: String,
    /// IP addresses the node is reached at (repeatable).
    #[arg(long)]
    ip: Vec<IpAddr>,
    /// DNS names the node is reached at (repeatable).
    #[arg(long)]
    dns: Vec<String>,
    /// The bundle directory, created 0700 (default: <dir>/nodes/<node>);
    /// the node's agent takes it as --tls-dir.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Lifetime of the certificate in days (1 to 3650).
    #[arg(long, default_value_t = tls::DEFAULT_DAYS)]
    days: u32,
    /// Replace the certificate the bundle already holds with a new key and
    /// certificate (each file swapped whole); a running agent loads it on
    /// SIGHUP.
    #[arg(long)]
    renew: bool,
}

/// `mosectl ca issue`: the bundle, and how to put it on the node.
fn ca_issue(a: IssueArgs) -> Result<()> {
    let (dir, node) = (&a.dir, &a.node);
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| tls::default_bundle_dir(dir, node));
    let req = tls::NodeRequest {
        node,
        ips: &a.ip,
        dns: &a.dns,
        days: a.days,
        renew: a.renew,
    };
    let issued = tls::issue(dir, &out, &req)?;
    let c = &issued.certificate;
    let b = issued.bundle.display();
    println!(
        "{} node {node}'s certificate (serial {}, valid until {}) into {b}: ca.pem, {node}.pem, \
         {node}.key (mode 0600); the CA key stays in {}",
        if issued.renewed { "renewed" } else { "issued" },
        c.serial,
        c.not_after_utc(),
        dir.display(),
    );
    println!(
        "install it on {node} as its agent's --tls-dir, keeping the modes (directory 0700, key \
         0600), e.g.:\n  tar -C {b} -cf - . | ssh {node} 'install -d -m 0700 /etc/mose/tls && \
         tar -C /etc/mose/tls -xpf -'"
    );
    if issued.renewed {
        println!(
            "then tell the running agent: `kill -HUP $(pidof mose-plugin)` on {node}; it loads \
             the new certificate for new connections, migrations in flight go on"
        );
    } else {
        println!("  mose-plugin --node {node} --tls-dir /etc/mose/tls ...");
    }
    Ok(())
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
    /// cold, precopy, postcopy or hybrid; without it the node's policy plans the migration
    /// from the container's mose.io/* annotations.
    #[arg(long)]
    technique: Option<Technique>,
    /// Upper bound on pre-copy rounds (default: the plan's, else 4).
    #[arg(long)]
    max_rounds: Option<u32>,
    /// Cap on the migration's sending rate, e.g. 300Mbit (default: the plan's).
    #[arg(long, value_parser = mose_policy::annotations::parse_rate)]
    max_bandwidth: Option<u64>,
    /// The node's policy hook (served by mose-plugin).
    #[arg(long, default_value = "/run/mose/policy.sock")]
    policy_socket: PathBuf,
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
    /// Seconds any network wait may take before the migration is rolled back
    /// (1 to 3600).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    io_timeout: u64,
    /// Dump established TCP connections closed even when the container's
    /// service address moves with it (clients must reconnect); by default
    /// they are kept wherever the address is.
    #[arg(long)]
    close_connections: bool,
    /// `table` (with live progress on a terminal) or `json`.
    #[arg(long, default_value = "table")]
    output: String,
    /// Post-copy and hybrid: serve the lazy pages from CRIU's lazy dump
    /// where this node passes its checks (`auto`), or dump the whole memory
    /// into tmpfs first (`tmpfs-dump`).
    #[arg(long, value_enum, default_value = "auto")]
    lazy_source: mose_plugin::LazySourceChoice,
    /// Test hook: corrupt-chunk or truncate.
    #[arg(long, hide = true)]
    inject_fault: Option<Fault>,
}

#[derive(clap::Args)]
struct CheckpointArgs {
    /// containerd socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    address: PathBuf,
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// The container whose task to checkpoint.
    container: String,
    /// Directory receiving the CRIU image (created if missing).
    #[arg(long)]
    image_path: PathBuf,
    /// CRIU's work directory (its logs).
    #[arg(long)]
    work_path: Option<PathBuf>,
    /// Stop the task after the checkpoint (default: it keeps running).
    #[arg(long)]
    exit: bool,
    /// Include established TCP connections.
    #[arg(long)]
    tcp_established: bool,
    /// Include external unix sockets.
    #[arg(long)]
    ext_unix_sk: bool,
    /// The task has a terminal.
    #[arg(long)]
    shell_job: bool,
}

async fn checkpoint_cmd(a: CheckpointArgs) -> Result<()> {
    for (what, p) in [
        ("--image-path", Some(&a.image_path)),
        ("--work-path", a.work_path.as_ref()),
    ] {
        if let Some(p) = p.filter(|p| !p.is_absolute()) {
            anyhow::bail!(
                "{what} {} must be an absolute path (the shim resolves it, not mosectl)",
                p.display()
            );
        }
    }
    std::fs::create_dir_all(&a.image_path)
        .with_context(|| format!("creating {}", a.image_path.display()))?;
    let cd = mose_migrate::containerd::Containerd::connect(&a.address, &a.namespace).await?;
    let opts = mose_migrate::containerd::TaskCheckpoint {
        image_path: a.image_path.clone(),
        work_path: a.work_path,
        exit: a.exit,
        tcp_established: a.tcp_established,
        ext_unix_sk: a.ext_unix_sk,
        shell_job: a.shell_job,
    };
    cd.checkpoint_task(&a.container, &opts).await?;
    if !a.image_path.join("inventory.img").exists() {
        anyhow::bail!(
            "the runtime of {} reported success but {} holds no CRIU image (inventory.img): \
             is the container run by io.containerd.mose.v2 (or a runc-named runtime)?",
            a.container,
            a.image_path.display()
        );
    }
    println!(
        "checkpoint of {} written to {} ({})",
        a.container,
        a.image_path.display(),
        if a.exit {
            "task stopped"
        } else {
            "task left running"
        }
    );
    Ok(())
}

#[derive(clap::Args)]
struct PlanArgs {
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// The container to plan for.
    container: String,
    /// Destination node's endpoint, HOST:PORT.
    #[arg(long)]
    to: String,
    /// Plan for this technique only (as `migrate --technique` would).
    #[arg(long)]
    technique: Option<Technique>,
    /// Measure now instead of using recent measurements.
    #[arg(long)]
    fresh: bool,
    #[arg(long, default_value = "/run/mose/policy.sock")]
    policy_socket: PathBuf,
    /// `table` or `json`.
    #[arg(long, default_value = "table")]
    output: String,
}

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / 1048576.0)
}

fn print_plan(a: &PlanAnswer) {
    use mose_policy::units::{fmt_duration_ms, fmt_rate};
    let r = &a.request;
    let m = &r.measurements;
    let d = &a.decision;
    println!(
        "plan for {}/{} -> {} (policy: {})",
        r.namespace, r.container, r.destination, a.policy
    );
    if let Some(e) = &a.policy_error {
        println!("  note        {e}");
    }
    println!(
        "  measured    memory {}, dirtied {}/s, link {} ({})",
        mib(m.memory_bytes as f64),
        mib(m.dirty_bytes_per_s),
        fmt_rate(m.link_bytes_per_s * 8.0),
        a.link_source
    );
    match (&d.plan, &d.predicted) {
        (Some(p), Some(x)) => {
            println!("  plan        {}", p.describe());
            println!(
                "  predicted   downtime {}, total {}, {} on the wire at up to {}",
                fmt_duration_ms(x.downtime_ms),
                fmt_duration_ms(x.total_ms),
                mib(x.bytes as f64),
                fmt_rate(x.rate_bps as f64)
            );
        }
        _ => println!("  plan        none: refused"),
    }
    if !d.targets.is_empty() {
        println!(
            "  {:<28} {:>12} {:>12}  met",
            "target", "limit", "predicted"
        );
        for t in &d.targets {
            let f = |v: f64| {
                if t.unit == "ms" {
                    fmt_duration_ms(v)
                } else {
                    fmt_rate(v)
                }
            };
            let ok = if t.feasible {
                "yes".to_string()
            } else {
                format!("NO ({} over)", f(t.miss_by))
            };
            println!(
                "  {:<28} {:>12} {:>12}  {ok}",
                t.annotation,
                f(t.limit),
                f(t.predicted)
            );
        }
    }
    println!("  reason      {}", d.reason);
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
    if let Some(p) = &r.plan {
        println!("  plan ({}) vs measured:", p.policy);
        println!(
            "    {:<10} {:>14} {:>14} {:>14}  met",
            "kpi", "target", "predicted", "measured"
        );
        for k in &p.kpis {
            let f = |v: f64| {
                if k.unit == "B" {
                    mib(v)
                } else {
                    format!("{v:.0} {}", k.unit)
                }
            };
            println!(
                "    {:<10} {:>14} {:>14} {:>14}  {}",
                k.kpi,
                k.target.map(f).unwrap_or_else(|| "-".into()),
                f(k.predicted),
                f(k.measured),
                match k.met {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "-",
                }
            );
        }
    }
}

/// `mosectl migrate`: plans (unless told exactly what to do), migrates,
/// records the plan beside the result and lets the policy learn from it.
async fn migrate_cmd(a: MigrateArgs) -> Result<i32> {
    let json = a.output == "json";
    let plan = match plan_for(&a, json).await? {
        Ok(plan) => plan,
        Err(code) => return Ok(code),
    };
    if let Some(p) = &plan {
        if p.decision.refused {
            report_refusal(&a, p, json);
            return Ok(1);
        }
        if !json {
            print_plan(p);
        }
    }
    let policy_socket = a.policy_socket.clone();
    let state = a.state.clone();
    let opts = source_options(a, plan.as_ref(), json)?;
    let mut r = migrate(opts).await;
    if let Some(p) = plan {
        r.plan = Some(PlanRecord::compare(
            p.policy,
            p.policy_error,
            p.decision,
            &p.request,
            &r,
        ));
    }
    // the record first: it must not wait on the agent
    let mut rec = serde_json::to_value(&r)?;
    rec["direction"] = "out".into();
    append_record(&state, &rec);
    // every result goes to the node's agent: its metrics count failures and
    // rollbacks too, and its calibration learns from successful ones only
    if let Err(e) = report_result(&policy_socket, &r).await {
        tracing::warn!(error = %format!("{e:#}"), "the node's agent did not take this migration's result (its metrics and calibration miss it)");
    }
    if json {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "{}", serde_json::to_string(&r)?);
    } else {
        print_table(&r);
    }
    Ok(if r.status == "ok" { 0 } else { 1 })
}

/// Asks the policy for a plan. Without one, an explicit technique migrates
/// as told; otherwise the migration ends here: `Err(exit code)` once the
/// failure is printed as JSON, or an error.
async fn plan_for(a: &MigrateArgs, json: bool) -> Result<Result<Option<PlanAnswer>, i32>> {
    let query = PlanQuery {
        namespace: a.namespace.clone(),
        container: a.container.clone(),
        destination: a.to.clone(),
        technique: a.technique,
        fresh: false,
    };
    match request_plan(&a.policy_socket, &query).await {
        Ok(p) => Ok(Ok(Some(p))),
        // an explicit technique does not need the policy
        Err(e) if a.technique.is_some() => {
            tracing::warn!(error = %format!("{e:#}"), "no plan from the node's policy hook (see error): migrating with the given technique, without predictions");
            Ok(Ok(None))
        }
        Err(e) => {
            let error = format!("{e:#}; pass --technique to migrate without a plan");
            if json {
                let r = serde_json::json!({
                    "status": "failed", "container": a.container, "destination": a.to,
                    "bytes_sent": 0, "error": error,
                });
                println!("{r}");
                return Ok(Err(1));
            }
            anyhow::bail!(error);
        }
    }
}

/// Tells the user the policy refused the migration (`mose.io/strict`).
fn report_refusal(a: &MigrateArgs, p: &PlanAnswer, json: bool) {
    let r = serde_json::json!({
        "status": "failed", "container": a.container, "destination": a.to,
        "error": format!("the policy refused to migrate: {}", p.decision.reason),
        "plan": p,
    });
    if json {
        println!("{r}");
    } else {
        print_plan(p);
        eprintln!(
            "mosectl: the policy refused to migrate (mose.io/strict): {}",
            p.decision.reason
        );
    }
}

/// The sender's options: what the user asked, else what the plan says.
fn source_options(a: MigrateArgs, plan: Option<&PlanAnswer>, json: bool) -> Result<SourceOptions> {
    let planned = plan.and_then(|p| p.decision.plan);
    let technique = match (a.technique, &planned) {
        (Some(t), _) => t,
        (None, Some(p)) => p.technique,
        (None, None) => anyhow::bail!("no technique given and no plan"),
    };
    let max_rounds = a
        .max_rounds
        .or(planned.as_ref().map(|p| p.max_rounds))
        .unwrap_or(4);
    let cap = a
        .max_bandwidth
        .or(planned.as_ref().and_then(|p| p.bandwidth_cap_bps));
    let compress = a.compress || planned.as_ref().is_some_and(|p| p.compression);
    // the plan's downtime-target stop rule, judged with the same model
    let stop_when: Option<mose_migrate::sender::StopFn> = match (plan, &planned) {
        (Some(ans), Some(p)) if a.max_rounds.is_none() => p.stop_below_downtime_ms.map(|target| {
            let (m, c) = (
                ans.request.measurements.clone(),
                ans.request.calibration.clone(),
            );
            Arc::new(move |bytes: u64| {
                mose_policy::model::downtime_if_final_ms(&m, &c, bytes as f64, cap) <= target as f64
            }) as mose_migrate::sender::StopFn
        }),
        _ => None,
    };
    let progress = (!json && std::io::stderr().is_terminal()).then(progress_printer);
    Ok(SourceOptions {
        socket: a.address,
        namespace: a.namespace,
        container: a.container,
        to: a.to,
        technique,
        max_rounds,
        min_round_bytes: a.min_round_mib << 20,
        identity: Identity::new(&a.tls_dir, &a.node),
        compress,
        bandwidth_cap_bps: cap,
        stop_when,
        work_root: a.work,
        io_timeout: Duration::from_secs(a.io_timeout),
        close_connections: a.close_connections,
        cri_pod: false,
        before_freeze: None,
        already_frozen: false,
        lazy_source: match technique.is_lazy() {
            true => mose_plugin::lazy_source(a.lazy_source),
            false => mose_migrate::lazy::LazySource::TmpfsDump {
                reason: "not a lazy technique".into(),
            },
        },
        fault: a.inject_fault,
        progress,
    })
}

async fn run() -> Result<i32> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Ca {
            cmd: CaCmd::Init { dir, name },
        } => {
            init_ca(&dir, &name)?;
            println!(
                "cluster CA created in {0} (mode 0700); keep it on this host, its ca.key can \
                 mint any node's identity; give each node only its bundle: `mosectl ca issue \
                 --dir {0} --node NODE --ip ADDRESS`",
                dir.display()
            );
        }
        Cmd::Ca {
            cmd: CaCmd::Issue(a),
        } => ca_issue(a)?,
        Cmd::Plan(a) => {
            let q = PlanQuery {
                namespace: a.namespace,
                container: a.container,
                destination: a.to,
                technique: a.technique,
                fresh: a.fresh,
            };
            let ans = request_plan(&a.policy_socket, &q).await?;
            if a.output == "json" {
                println!("{}", serde_json::to_string(&ans)?);
            } else {
                print_plan(&ans);
            }
            return Ok(if ans.decision.refused { 1 } else { 0 });
        }
        Cmd::Migrate(a) => return migrate_cmd(a).await,
        Cmd::Checkpoint(a) => checkpoint_cmd(a).await?,
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
    mose_plugin::init_logging("warn");
    match run().await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("mosectl: {e:#}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cmd {
        Cli::try_parse_from(std::iter::once("mosectl").chain(args.iter().copied()))
            .unwrap()
            .cmd
    }

    #[test]
    fn the_ca_directory_is_not_a_nodes_tls_directory_by_default() {
        let Cmd::Migrate(m) = parse(&["migrate", "svc", "--to", "h:1", "--node", "n"]) else {
            panic!("not migrate");
        };
        let Cmd::Ca {
            cmd: CaCmd::Init { dir: init, .. },
        } = parse(&["ca", "init"])
        else {
            panic!("not ca init");
        };
        let Cmd::Ca {
            cmd: CaCmd::Issue(issue),
        } = parse(&["ca", "issue", "--node", "n"])
        else {
            panic!("not ca issue");
        };
        assert_eq!(init, PathBuf::from("/etc/mose/ca"));
        assert_eq!(issue.dir, init);
        assert_ne!(
            init, m.tls_dir,
            "the CA key would land in the node's --tls-dir"
        );
        assert!(!tls::default_bundle_dir(&init, "n").starts_with(&m.tls_dir));
    }
}
