//! `mose-hook`: MOSE's OCI lifecycle hook for containers with a service
//! address (the shim adds it to their spec; see `mose_network`).
//!
//! The runtime runs it with the container's OCI state (runtime-spec
//! "State": `id`, `pid`, `bundle`, `annotations`, …) as JSON on stdin:
//! - `mose-hook announce` (poststart): a gratuitous ARP for the address from
//!   inside the container's namespace, so bridges, the overlay and clients
//!   learn where it lives now. Held-down links (a restore under way) are
//!   left alone: the shim announces once the restore is complete.
//! - `mose-hook release` (poststop): the CNI `DEL`, the namespace and the
//!   node's record of the address removed, if this container holds it.
//!
//! Exit status 0 on success; otherwise 1 with the reason on stderr. runc
//! logs a failed poststart hook as a warning and a failed poststop hook as
//! an error of `delete`; the shim releases the address again at delete
//! either way.

use std::io::Read;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mose_network::{Attachment, NetworkIdentity, NodeConfig};
use serde::Deserialize;

#[derive(Parser)]
#[command(
    name = "mose-hook",
    version,
    about = "MOSE's OCI hooks for a container's service address; the OCI state comes on stdin"
)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// poststart: announce the service address (gratuitous ARP).
    Announce,
    /// poststop: release the service address (CNI DEL, namespace removed).
    Release,
}

/// The fields of the OCI state this hook reads.
#[derive(Deserialize)]
struct State {
    id: String,
    bundle: String,
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.verb) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mose-hook: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(verb: Verb) -> Result<(), String> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("reading the OCI state from stdin: {e}"))?;
    let state: State = serde_json::from_str(&input).map_err(|e| {
        format!("stdin is not an OCI state (JSON with id, bundle, annotations): {e}")
    })?;
    let identity = NetworkIdentity::from_annotations(
        state
            .annotations
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .map_err(|e| format!("container {}: {e}", state.id))?
    .ok_or_else(|| {
        format!(
            "container {} has no mose.io/network and mose.io/address annotations: nothing to do",
            state.id
        )
    })?;
    let cfg = NodeConfig::from_env();
    match verb {
        Verb::Announce => announce(&cfg, &identity, &state),
        Verb::Release => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("starting the async runtime: {e}"))?;
            let runner = mose_network::cni::TokioRunner;
            rt.block_on(Attachment::release_owned(
                &cfg,
                &runner,
                &identity,
                &state.bundle,
            ))
            .map_err(|e| format!("releasing {identity}: {e}"))
        }
    }
}

fn announce(cfg: &NodeConfig, identity: &NetworkIdentity, state: &State) -> Result<(), String> {
    let a = Attachment::load(cfg, identity)
        .map_err(|e| e.to_string())?
        .filter(|a| a.owner == state.bundle)
        .ok_or_else(|| {
            format!(
                "container {} does not hold {identity} on this node (no record under {})",
                state.id,
                cfg.state_dir.display()
            )
        })?;
    if a.held_down {
        return Ok(());
    }
    a.announce()
        .map_err(|e| format!("announcing {identity}: {e}"))
}
