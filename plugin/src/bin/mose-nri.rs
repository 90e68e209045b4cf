//! `mose-nri`: MOSE's NRI plugin for containerd ≥ 1.7 (see
//! `mose_plugin::nri`). It connects to NRI's socket, refuses at
//! CreateContainer the containers of MOSE pods with malformed `mose.io/*`
//! annotations, and reconnects whenever containerd restarts.

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use mose_plugin::nri::{run_session, NriConfig};
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    version,
    about = "MOSE's NRI plugin: refuses malformed mose.io/* annotations at CreateContainer"
)]
struct Args {
    /// NRI's socket (containerd's [plugins."io.containerd.nri.v1.nri"] socket_path).
    #[arg(long, default_value = "/var/run/nri/nri.sock")]
    socket: PathBuf,
    /// The CRI runtime handler of MOSE's runtime class.
    #[arg(long, default_value = "mose")]
    handler: String,
    /// Two-digit index NRI orders plugins by.
    #[arg(long, default_value = "10", value_parser = two_digits)]
    index: String,
    /// Seconds between connection attempts while NRI is not there.
    #[arg(long, default_value_t = 2)]
    retry: u64,
    /// Exit after the first session instead of reconnecting.
    #[arg(long)]
    once: bool,
}

fn two_digits(s: &str) -> Result<String, String> {
    if s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(s.into())
    } else {
        Err(format!("--index {s:?}: NRI wants two digits, e.g. 10"))
    }
}

#[tokio::main]
async fn main() {
    mose_plugin::init_logging("info");
    let a = Args::parse();
    let cfg = NriConfig {
        socket: a.socket,
        name: "mose".into(),
        index: a.index,
        handler: a.handler,
    };
    let mut said = false;
    loop {
        match run_session(&cfg).await {
            Ok(end) => {
                info!(?end, "the NRI session ended; reconnecting");
                said = false;
            }
            Err(e) if a.once => {
                eprintln!("mose-nri: {e:#}");
                std::process::exit(1);
            }
            Err(e) if !said => {
                warn!(error = %format!("{e:#}"), "NRI is not reachable; retrying");
                said = true;
            }
            Err(_) => {}
        }
        if a.once {
            return;
        }
        tokio::time::sleep(Duration::from_secs(a.retry.max(1))).await;
    }
}
