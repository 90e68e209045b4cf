//! `mose-state-service`: the stateful workload MOSE migrates (see
//! `mose_workloads::service`).

use std::process::ExitCode;

use clap::Parser;
use mose_workloads::service::{Config, Flags, Service};

fn main() -> ExitCode {
    mose_workloads::exit_on_sigterm();
    let config = match Config::from_env_and_flags(&Flags::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mose-state-service: {e:#}");
            return ExitCode::from(2);
        }
    };
    match Service::start(config.clone()) {
        Ok(svc) => {
            eprintln!(
                "mose-state-service: listening on {} state_mib={} dirty_mib_per_s={} seed={}",
                svc.local_addr(),
                config.state_mib,
                config.dirty_mib_per_s,
                config.seed
            );
            // Everything runs in the service's threads; keep main alive.
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("mose-state-service: {e:#}");
            ExitCode::FAILURE
        }
    }
}
