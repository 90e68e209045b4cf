//! The contract between MOSE's shim (`containerd-shim-mose-v2`) and its node
//! agent (`mose-plugin`, `mosectl`, the migration engine): the runtime type
//! containerd knows the shim by, the `mose.v1.*` option types carried in
//! containerd's `Any` fields (JSON), and the migration techniques.
//!
//! A small crate of its own so that both sides, and the pure `policy`, share
//! one definition without pulling in the wire protocol or containerd.

pub mod network;
pub mod options;
pub mod pod;
pub mod technique;

pub use network::{NetworkIdentity, ServiceAddress};
pub use options::{CheckpointOptions, RuntimeOptions, CHECKPOINT_OPTIONS_TYPE, OPTIONS_TYPE};
pub use pod::PodOrigin;
pub use technique::Technique;

/// The runtime type containerd starts the MOSE shim by
/// (`containerd-shim-mose-v2` on its `PATH`).
pub const RUNTIME_TYPE: &str = "io.containerd.mose.v2";
