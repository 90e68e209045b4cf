//! MOSE's node agent (`mose-plugin`: the migration listener, the policy hook
//! service, measurements, calibration, metrics) and `mosectl`. The migration
//! engine itself is the `mose-migrate` crate.

pub mod calibrate;
pub mod measure;
pub mod metrics;
pub mod nri;
pub mod pods;
pub mod policy;
pub mod visibility;

/// `--lazy-source`: where a post-copy or hybrid source serves the lazy
/// pages from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LazySourceChoice {
    /// CRIU's lazy dump and page server where this node passes its checks,
    /// else a dump into tmpfs.
    Auto,
    /// Always a full dump into tmpfs (what MOSE did before the lazy dump;
    /// kept to compare against).
    TmpfsDump,
}

/// Decides the lazy pages' source once for this process, and says in the
/// log which one it is and, when it is not the lazy dump, why.
pub fn lazy_source(choice: LazySourceChoice) -> mose_migrate::lazy::LazySource {
    use mose_migrate::lazy::LazySource;
    let s = match choice {
        LazySourceChoice::TmpfsDump => LazySource::TmpfsDump {
            reason: "asked for (--lazy-source tmpfs-dump)".into(),
        },
        LazySourceChoice::Auto => LazySource::probe(),
    };
    match &s {
        LazySource::CriuPageServer { iov } => tracing::info!(
            ?iov,
            "post-copy and hybrid serve lazy pages from CRIU's lazy dump (page server on loopback)"
        ),
        LazySource::TmpfsDump { reason } => tracing::warn!(
            %reason,
            "post-copy and hybrid dump the whole memory into tmpfs (their freeze grows with memory)"
        ),
    }
    s
}

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
