//! MOSE's migration wire protocol, shared by the source (mosectl / plugin) and
//! the destination endpoint (mose-plugin).
//!
//! A migration is one TLS stream of frames. Every frame carries a checksum of
//! its payload, and every page block is named by the hash of its content, so a
//! corrupt or truncated stream is detected and aborts the migration instead of
//! restoring wrong memory. Control messages are versioned JSON; bulk data
//! (page blocks, files) travels in binary frames.

pub mod blocks;
pub mod frame;
pub mod message;

/// Version of the protocol; both ends must speak the same one.
pub const PROTOCOL_VERSION: u32 = 5;

pub use blocks::{BlockHash, BlockStore, BLOCK_SIZE};
pub use frame::{FrameKind, FrameReader, FrameWriter, WireError};
pub use frame::{HeldRun, LAZY_SLOT};
pub use message::{ContainerIdentity, LazyStats, Message, Technique};
