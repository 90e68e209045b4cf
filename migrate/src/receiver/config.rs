//! The receiver's settings.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::tls::Identity;

/// How a node receives migrations (`mose-plugin`'s flags).
#[derive(Clone)]
pub struct EndpointConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// containerd's gRPC socket.
    pub containerd: PathBuf,
    /// This node's TLS identity (cluster CA, certificate, key).
    pub identity: Identity,
    /// tmpfs directory receiving migrations.
    pub work_root: PathBuf,
    /// Where the node records its migrations (JSON lines).
    pub state_dir: PathBuf,
    /// How long a restored container waits for the source to release its copy.
    pub release_timeout: Duration,
    /// Bound on any single network wait.
    pub io_timeout: Duration,
    /// Pod containers created here by the CRI that wait for their migration
    /// (see [`crate::pods`]).
    pub handoffs: crate::pods::HandoffRegistry,
    /// Plans pods pulled from here with technique `auto` (the node agent's
    /// policy hook); without one such a pull is refused with the reason.
    pub pod_planner: Option<crate::pods::plan::PodPlannerFn>,
    /// Where pods migrated from here with post-copy or hybrid serve their
    /// lazy pages from (probed once at the agent's start).
    pub lazy_source: crate::lazy::LazySource,
    /// Told of each incoming migration as it is recorded (the agent's
    /// metrics); `None` records only.
    pub on_incoming: Option<crate::record::IncomingObserver>,
    /// Told of each pod container migrated from here as it is recorded
    /// (the agent's metrics); `None` records only.
    pub on_outgoing: Option<crate::record::OutgoingObserver>,
    /// What an incoming container may bring to this node (checked at its
    /// `Begin`, before anything but control messages is received).
    pub admission: std::sync::Arc<crate::admission::Admission>,
}
