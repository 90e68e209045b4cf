//! What a migration is asked to do: the source's options, the faults a test
//! can inject, and the progress callback.

use std::{path::PathBuf, sync::Arc, time::Duration};

use mose_wire::Technique;

use crate::{lazy::LazySource, tls::Identity};

/// Faults a test can inject to exercise the failure paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Corrupt one bulk frame after its checksum was computed.
    CorruptChunk,
    /// Close the stream in the middle of the final transfer.
    Truncate,
    /// Post-copy/hybrid: send one lazy page with content that does not match
    /// its hash (a wrong page, not a damaged frame).
    CorruptPage,
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "corrupt-chunk" => Ok(Self::CorruptChunk),
            "truncate" => Ok(Self::Truncate),
            "corrupt-page" => Ok(Self::CorruptPage),
            o => Err(format!(
                "unknown fault {o:?}: expected corrupt-chunk, truncate or corrupt-page"
            )),
        }
    }
}

/// Live progress for a terminal or a log.
#[derive(Debug, Clone)]
pub struct Progress {
    pub phase: String,
    pub round: u32,
    pub bytes: u64,
}

pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// See [`SourceOptions::stop_when`].
pub type StopFn = Arc<dyn Fn(u64) -> bool + Send + Sync>;

/// See [`SourceOptions::before_freeze`]: an error is the reason the
/// migration cannot go on.
pub type BeforeFreezeFn = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

pub struct SourceOptions {
    pub socket: PathBuf,
    pub namespace: String,
    pub container: String,
    /// Destination endpoint `host:port`.
    pub to: String,
    pub technique: Technique,
    /// Upper bound on pre-copy rounds.
    pub max_rounds: u32,
    /// Stop pre-copy once a round moves less than this many bytes.
    pub min_round_bytes: u64,
    pub identity: Identity,
    pub compress: bool,
    /// Pre-copy stop rule from the plan: given a round's delta in bytes,
    /// whether sending that in the freeze would already meet the downtime target.
    pub stop_when: Option<StopFn>,
    /// Cap on the sending rate in bits per second (`mose.io/max-bandwidth`).
    pub bandwidth_cap_bps: Option<u64>,
    /// tmpfs directory for checkpoint images.
    pub work_root: PathBuf,
    /// Bound on any single network wait (a cut link fails the migration
    /// after this long instead of hanging).
    pub io_timeout: Duration,
    /// Dump established TCP connections closed even when the service
    /// address moves with the container (CRIU `tcp-close`): what keeping
    /// them costs, measured against not keeping them.
    pub close_connections: bool,
    /// The container belongs to a Kubernetes pod (containerd's CRI): its
    /// pod IP moves with it (the pod's interface is held down for the dump,
    /// connections are kept), and after the hand-over the CRI, not the
    /// engine, stops the source's copy (see `crate::pods`).
    pub cri_pod: bool,
    /// Runs just before the container is paused for the dump (a pod's
    /// other containers are frozen in the same instant, see
    /// `crate::pods::freeze_group`); an error fails the migration before
    /// anything of this container is frozen.
    pub before_freeze: Option<BeforeFreezeFn>,
    /// The container is already paused (frozen with its pod's first
    /// container to move): the freeze dumps it without pausing it again,
    /// and a rollback resumes it.
    pub already_frozen: bool,
    /// Post-copy and hybrid: where the lazy pages are served from (see
    /// [`crate::lazy::source`]); probed once per process with
    /// [`LazySource::probe`]. A lazy dump the container's shim refuses (e.g.
    /// a runtime other than runc) falls back to the tmpfs dump, and the
    /// result says so.
    pub lazy_source: LazySource,
    pub fault: Option<Fault>,
    pub progress: Option<ProgressFn>,
}
