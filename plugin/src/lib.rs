//! MOSE's node agent (`mose-plugin`: the migration listener, the policy hook
//! service, measurements, calibration) and `mosectl`. The migration engine
//! itself is the `mose-migrate` crate.

pub mod calibrate;
pub mod measure;
pub mod nri;
pub mod pods;
pub mod policy;
pub mod visibility;

/// Structured logs to stderr at `MOSE_LOG`'s filter, else `default`
/// (e.g. `info`), for the agent's binaries.
pub fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MOSE_LOG")
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}
