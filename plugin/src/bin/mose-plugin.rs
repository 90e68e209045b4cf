//! `mose-plugin`: a node's MOSE endpoint. Receives migrations from other nodes
//! over mutually authenticated TLS and restores them into the local containerd.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use clap::Parser;
use mose_migrate::{
    admission::Admission,
    pods::plan::{PodPlan, PodPlanQuery, PodPlannerFn},
    receiver::{serve, EndpointConfig},
    tls::{self, CertificateInfo, Identity, ReloadableServerConfig},
};
use mose_plugin::metrics::{Metrics, MetricsListen};
use mose_plugin::pods::{serve_pods, PodsConfig};
use mose_plugin::policy::{request_pod_plan, serve_policy, PolicyConfig};

#[derive(Parser)]
#[command(
    version,
    about = "MOSE node plugin: the migration endpoint of this node"
)]
struct Args {
    /// Address to listen on for migrations (the node's address).
    #[arg(long, default_value = "0.0.0.0:7700")]
    listen: SocketAddr,
    /// containerd gRPC socket of this node.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    containerd: PathBuf,
    /// This node's credentials: the bundle `mosectl ca issue --out` wrote
    /// (ca.pem, <node>.pem, <node>.key), never the CA's own directory.
    /// Reloaded on SIGHUP.
    #[arg(long, default_value = "/etc/mose/tls")]
    tls_dir: PathBuf,
    /// This node's name (its certificate is <tls-dir>/<node>.pem).
    #[arg(long)]
    node: String,
    /// tmpfs directory receiving migrations.
    #[arg(long, default_value = "/run/mose/incoming")]
    work: PathBuf,
    /// Where the node keeps its migration records.
    #[arg(long, default_value = "/var/lib/mose")]
    state: PathBuf,
    /// Seconds a silent source may stall a transfer before it is discarded
    /// (1 to 3600).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    io_timeout: u64,
    /// Where pods migrated from here with post-copy or hybrid serve their
    /// lazy pages from: `auto` (CRIU's lazy dump where the node passes its
    /// checks) or `tmpfs-dump`.
    #[arg(long, value_enum, default_value = "auto")]
    lazy_source: mose_plugin::LazySourceChoice,
    /// Unix socket of the policy hook (`mosectl plan`, `mosectl migrate`).
    #[arg(long, default_value = "/run/mose/policy.sock")]
    policy_socket: PathBuf,
    /// Unix socket for pod hand-overs (the pod CNI plugin and the MOSE
    /// shim ask here; see docs/kubernetes.md).
    #[arg(long, default_value = mose_contract::pod::DEFAULT_AGENT_SOCKET)]
    pods_socket: PathBuf,
    /// This node's migration endpoint as other nodes reach it (HOST:PORT;
    /// default: --listen, when that names an address).
    #[arg(long)]
    advertise: Option<String>,
    /// A program replacing the built-in policy: a plan request as JSON on
    /// stdin, a decision as JSON on stdout (see docs/policy.md).
    #[arg(long)]
    policy_program: Option<PathBuf>,
    /// Seconds the policy program may take.
    #[arg(long, default_value_t = 5)]
    policy_timeout: u64,
    /// A configured link rate instead of probing: HOST:PORT=RATE, e.g.
    /// 10.0.0.2:7700=300Mbit (repeatable).
    #[arg(long = "link", value_parser = parse_link)]
    links: Vec<(String, f64)>,
    /// MiB sent by a link probe.
    #[arg(long, default_value_t = 8)]
    probe_mib: u64,
    /// Seconds a measurement stays fresh.
    #[arg(long, default_value_t = 30)]
    measure_max_age: u64,
    /// Milliseconds between the two snapshots of a dirty-rate sample.
    #[arg(long, default_value_t = 1000)]
    sample_ms: u64,
    /// Where to serve Prometheus metrics (`GET /metrics`, OpenMetrics
    /// text): IP:PORT, or `off` for none.
    #[arg(long, value_name = "IP:PORT|off", default_value = mose_plugin::metrics::DEFAULT_LISTEN)]
    metrics_listen: MetricsListen,
    /// What incoming containers may bring to this node (TOML; see
    /// config/admission.toml). Default: /etc/mose/admission.toml if it
    /// exists, else the built-in defaults (a confined container only).
    #[arg(long, value_name = "FILE")]
    admission: Option<PathBuf>,
}

/// `HOST:PORT=RATE` with RATE in the form of `mose.io/max-bandwidth`.
fn parse_link(s: &str) -> Result<(String, f64), String> {
    let (dest, rate) = s.rsplit_once('=').ok_or_else(|| {
        format!("--link {s:?}: expected HOST:PORT=RATE, e.g. 10.0.0.2:7700=300Mbit")
    })?;
    let bps =
        mose_policy::annotations::parse_rate(rate).map_err(|e| format!("--link {s:?}: {e}"))?;
    Ok((dest.to_string(), bps as f64 / 8.0))
}

/// Pods pulled from this node with technique `auto` are planned by this
/// node's own policy hook, over its socket.
fn pod_planner(socket: PathBuf) -> PodPlannerFn {
    Arc::new(move |q: PodPlanQuery| {
        let socket = socket.clone();
        Box::pin(async move {
            let ans = request_pod_plan(
                &socket,
                &mose_plugin::policy::PodPlanQuery {
                    namespace: mose_migrate::pods::CRI_NAMESPACE.into(),
                    containers: q.containers,
                    destination: q.destination,
                    technique: None,
                },
            )
            .await
            .map_err(|e| format!("{e:#}"))?;
            Ok(PodPlan {
                policy: ans.policy,
                policy_error: ans.policy_error,
                request: ans.request,
                decision: ans.decision,
            })
        })
    })
}

/// Warns when this node's certificate expires within
/// [`tls::EXPIRY_WARNING`], with how to renew it.
fn warn_if_expiring(c: &CertificateInfo) {
    let Some(left) = c.remaining(SystemTime::now()) else {
        return;
    };
    if left < tls::EXPIRY_WARNING {
        tracing::warn!(
            node = %c.node,
            not_after = %c.not_after_utc(),
            days_left = left.as_secs() / 86_400,
            "this node's certificate expires within 30 days: renew it where the cluster CA is \
             (`mosectl ca issue --dir <CA dir> --node {0} --renew --out DIR`), copy the bundle \
             to this node's --tls-dir and send this agent SIGHUP",
            c.node
        );
    }
}

/// Reloads the TLS identity of the migration endpoint and the admission
/// policy on every SIGHUP: connections accepted afterwards present the new
/// certificate, migrations begun afterwards are admitted by the new policy,
/// migrations in flight keep their connection. A failed reload keeps what
/// was loaded before and says why.
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    tls: Arc<ReloadableServerConfig>,
    admission: Arc<Admission>,
) -> anyhow::Result<()> {
    while hup.recv().await.is_some() {
        match admission.reload() {
            Ok(()) => {
                tracing::info!(policy = %admission.source(), "SIGHUP: reloaded the admission policy")
            }
            Err(e) => tracing::error!(
                error = format!("{:#}", anyhow::Error::from(e)),
                "SIGHUP: reloading the admission policy failed; the policy loaded before stays"
            ),
        }
        let dir = tls.identity().dir.display().to_string();
        match tls.reload() {
            Ok(c) => {
                tracing::info!(
                    tls_dir = %dir,
                    node = %c.node,
                    serial = %c.serial,
                    not_after = %c.not_after_utc(),
                    "SIGHUP: reloaded this node's TLS identity; new connections present it, \
                     migrations in flight go on"
                );
                warn_if_expiring(&c);
            }
            Err(e) => tracing::error!(
                tls_dir = %dir,
                error = format!("{:#}", anyhow::Error::from(e)),
                "SIGHUP: reloading this node's TLS identity failed; still presenting the \
                 certificate loaded before (serial {})",
                tls.certificate().serial
            ),
        }
    }
    std::future::pending().await
}

#[tokio::main]
async fn main() {
    // the hidden mode CRIU calibration dumps and restores (see calibrate.rs)
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--calibration-target") {
        let mib = args.get(2).and_then(|m| m.parse().ok()).unwrap_or(16);
        let ready = PathBuf::from(args.get(3).cloned().unwrap_or_default());
        mose_plugin::calibrate::calibration_target(mib, &ready);
    }
    mose_plugin::init_logging("info");
    let a = Args::parse();
    // credentials first: a node must not run beside the CA key, with files
    // another user owns or others can write, a key others can read, an
    // expired certificate or one that does not chain to the bundle's ca.pem
    let identity = Identity::new(&a.tls_dir, &a.node);
    let tls = match ReloadableServerConfig::load(identity.clone()) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            eprintln!("mose-plugin: {:#}", anyhow::Error::from(e));
            std::process::exit(1);
        }
    };
    warn_if_expiring(&tls.certificate());
    // installed before anything serves: an early SIGHUP must not end the agent
    let hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("mose-plugin: listening for SIGHUP: {e}");
            std::process::exit(1);
        }
    };
    // a metrics address that cannot be had stops the agent before anything starts
    let metrics_listener = match a.metrics_listen {
        MetricsListen::Off => None,
        MetricsListen::At(addr) => match mose_plugin::metrics::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("mose-plugin: {e:#}");
                std::process::exit(1);
            }
        },
    };
    let admission = match Admission::from_option(a.admission.as_deref()) {
        Ok(adm) => Arc::new(adm),
        Err(e) => {
            eprintln!("mose-plugin: {:#}", anyhow::Error::from(e));
            std::process::exit(1);
        }
    };
    tracing::info!(policy = %admission.source(), "admission policy loaded");
    let metrics = Arc::new(Metrics::new());
    let cfg = EndpointConfig {
        listen: a.listen,
        containerd: a.containerd,
        identity,
        work_root: a.work.join(&a.node),
        state_dir: a.state,
        release_timeout: Duration::from_secs(a.io_timeout.max(5)),
        io_timeout: Duration::from_secs(a.io_timeout),
        handoffs: Default::default(),
        pod_planner: Some(pod_planner(a.policy_socket.clone())),
        lazy_source: mose_plugin::lazy_source(a.lazy_source),
        on_incoming: Some(metrics.incoming_observer()),
        on_outgoing: Some(metrics.outgoing_observer()),
        admission: admission.clone(),
    };
    let advertise = a
        .advertise
        .clone()
        .or_else(|| (!a.listen.ip().is_unspecified()).then(|| a.listen.to_string()));
    let pods = PodsConfig {
        socket: a.pods_socket.clone(),
        identity: cfg.identity.clone(),
        advertise,
        io_timeout: cfg.io_timeout,
        handoffs: cfg.handoffs.clone(),
    };
    let policy = PolicyConfig {
        socket: a.policy_socket,
        containerd: cfg.containerd.clone(),
        identity: cfg.identity.clone(),
        state_dir: cfg.state_dir.clone(),
        scratch: cfg.work_root.clone(),
        program: a.policy_program,
        program_timeout: Duration::from_secs(a.policy_timeout.max(1)),
        links: a.links.into_iter().collect::<HashMap<_, _>>(),
        probe_bytes: a.probe_mib.clamp(1, 256) << 20,
        max_age: Duration::from_secs(a.measure_max_age),
        sample_interval: Duration::from_millis(a.sample_ms.max(50)),
        sample_stride: 4,
        refresh_every: Duration::from_secs(a.measure_max_age.max(5)),
        io_timeout: cfg.io_timeout,
        metrics: metrics.clone(),
    };
    // both servers use the tmpfs work root: mount it once, before either starts
    if let Err(e) = mose_migrate::ensure_tmpfs(&cfg.work_root).map_err(anyhow::Error::from) {
        eprintln!("mose-plugin: {e:#}");
        std::process::exit(1);
    }
    // the shim restores from that tmpfs: containerd must see it too
    let shared = mose_plugin::visibility::socket_server_pid(&cfg.containerd).and_then(|pid| {
        mose_plugin::visibility::check_visible_to(pid, &cfg.work_root, "containerd")
    });
    if let Err(e) = shared {
        eprintln!("mose-plugin: {e:#}");
        std::process::exit(1);
    }
    let serve_metrics = async move {
        match metrics_listener {
            Some(l) => mose_plugin::metrics::serve(l, metrics).await,
            None => std::future::pending().await,
        }
    };
    let r = tokio::select! {
        r = serve(cfg, tls.clone()) => r.map_err(anyhow::Error::from),
        r = reload_on_sighup(hup, tls, admission) => r,
        r = serve_policy(policy) => r,
        r = serve_pods(pods) => r,
        r = serve_metrics => r,
    };
    if let Err(e) = r {
        eprintln!("mose-plugin: {e:#}");
        std::process::exit(1);
    }
}
