//! `mose-plugin`: a node's MOSE endpoint. Receives migrations from other nodes
//! over mutually authenticated TLS and restores them into the local containerd.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use mose_plugin::{
    endpoint::{serve, EndpointConfig},
    tls::Identity,
};

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
    /// Directory with the cluster CA and this node's certificate.
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
    /// Seconds a silent source may stall a transfer before it is discarded.
    #[arg(long, default_value_t = 10)]
    io_timeout: u64,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MOSE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let cfg = EndpointConfig {
        listen: a.listen,
        containerd: a.containerd,
        identity: Identity::new(&a.tls_dir, &a.node),
        work_root: a.work.join(&a.node),
        state_dir: a.state,
        release_timeout: Duration::from_secs(a.io_timeout.max(5)),
        io_timeout: Duration::from_secs(a.io_timeout),
    };
    if let Err(e) = serve(cfg).await {
        eprintln!("mose-plugin: {e:#}");
        std::process::exit(1);
    }
}
