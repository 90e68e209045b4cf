//! `containerd-shim-mose-v2`: the MOSE containerd runtime (`io.containerd.mose.v2`).
//!
//! Runs containers through an OCI runtime binary (runc by default) and adds
//! migration-aware checkpoint/restore with CRIU.

mod bootstrap;
mod cgroup_path;
mod container;
mod criu_kdat;
mod error;
mod info;
mod log_uri;
mod loopback;
mod metrics;
mod network;
mod oci;
mod oom;
mod options;
mod pod_migration;
mod process;
mod reaper;
mod runtime;
mod runtime_caps;
mod service;
mod spec_generation;
mod stdio;

use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

fn init_logging(debug: bool, to_fifo: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_env("MOSE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false);
    let fifo = if to_fifo {
        bootstrap::open_log_fifo()
    } else {
        None
    };
    let _ = match fifo {
        Some(f) => builder.with_writer(Mutex::new(f)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

fn main() {
    let args: Vec<_> = std::env::args_os().collect();
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{}: invalid arguments: {e}", bootstrap::RUNTIME_TYPE);
            std::process::exit(2);
        }
    };
    if flags.version {
        println!(
            "{}:\n  Runtime: {}\n  Version: {}",
            env!("CARGO_BIN_NAME"),
            bootstrap::RUNTIME_TYPE,
            env!("CARGO_PKG_VERSION")
        );
        return;
    }
    // `-info` (containerd 2.x, before a task's shim starts) is answered by a
    // short-lived process, like `start` and `delete`: it logs to stderr
    let serving = !flags.info && !matches!(flags.action.as_str(), "start" | "delete");
    init_logging(flags.debug, serving);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!(
                "{}: cannot start async runtime: {e}",
                bootstrap::RUNTIME_TYPE
            );
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async {
        match flags.action.as_str() {
            _ if flags.info => info::run().await,
            "start" => bootstrap::start(&flags).await,
            "delete" => bootstrap::delete(&flags).await,
            _ => bootstrap::serve(&flags).await,
        }
    });
    if let Err(e) = result {
        tracing::error!(error = %e, action = %flags.action, "shim failed");
        eprintln!("{}: {e}", bootstrap::RUNTIME_TYPE);
        std::process::exit(1);
    }
}
