//! A MOSE container's network identity on one node.
//!
//! A container annotated with `mose.io/network` and `mose.io/address` (see
//! [`mose_contract::network`]) gets a network namespace of its own, attached
//! to that CNI network with its service address and a MAC derived from it.
//! The same happens on a migration's destination before the restore, so the
//! restored container answers on the same address from the same MAC, and
//! CRIU can restore its established TCP connections there.
//!
//! Around a migration the link is *held down* (its node-side end is down:
//! nothing reaches or leaves the container), first on the source before the
//! dump, then on the destination until the restore is complete; it comes up
//! on exactly one node and is then *announced* (a gratuitous ARP from inside
//! the container's namespace), so that bridges, the overlay and clients
//! learn the new location at once. Two live owners of one address never
//! exist.
//!
//! - [`config`]: where a node keeps its CNI configuration, plugins and state.
//! - [`attachment`]: attach, hold down, bring up, announce, release.
//! - [`cni`]: running a CNI network configuration list's plugins.
//! - [`netns`]: network namespaces bound to a file.
//! - [`link`]: interface flags; [`announce`]: gratuitous ARP.

pub mod announce;
pub mod attachment;
pub mod cni;
pub mod config;
pub mod error;
pub mod link;
pub mod netns;
pub mod pod;

pub use attachment::Attachment;
pub use config::NodeConfig;
pub use error::{NetworkError, Result};
pub use mose_contract::network::{NetworkIdentity, ServiceAddress};
