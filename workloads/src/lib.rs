//! Workloads for MOSE's live-migration testbed.
//!
//! * [`service`] / [`state`] / [`protocol`]: the state service, a stateful
//!   process holding S MiB of checksummed memory that is rewritten at a
//!   configurable rate — what MOSE migrates between edge nodes.
//! * [`probe`]: a client that PINGs the service at a fixed rate and reports
//!   the client-observed downtime and the continuity of the service's
//!   sequence counter; `verify` proves no page was lost in a migration.
//! * [`image`] / [`images`]: a deterministic OCI image builder and the
//!   images of the state service and redis, importable with `ctr`.

pub mod image;
pub mod images;
pub mod probe;
pub mod protocol;
pub mod service;
pub mod state;
