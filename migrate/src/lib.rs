//! MOSE's migration engine: streams a running container from a source node
//! to a destination node and restores it there, cold, pre-copy, post-copy or
//! hybrid (`docs/migration.md`).
//!
//! - [`sender`]: the source side (`mosectl migrate`), one file per phase and
//!   the sender's state machine.
//! - [`receiver`]: the destination side (the node agent's listener), one file
//!   per phase and the receiver's state machine.
//! - [`lazy`]: page placement through userfaultfd, CRIU pagemaps and address
//!   ranges, used by both sides and importing neither.
//! - [`admission`]: what an incoming container may bring to the destination;
//!   [`peer`]: which node a peer is, from its certificate.
//! - [`containerd`], [`tls`], [`memory`], [`rootfs`], [`oci_runtime`]: the
//!   plumbing the two sides share; [`result`] and [`record`]: what a
//!   migration reports.

pub mod admission;
pub mod containerd;
pub mod error;
pub mod lazy;
pub mod link;
pub mod memory;
pub mod network;
pub mod oci_runtime;
pub mod peer;
pub mod pods;
pub mod receiver;
pub mod record;
pub mod result;
pub mod rootfs;
pub mod sender;
pub mod tls;

/// Why MOSE's work directory could not be made memory-backed.
#[derive(Debug, thiserror::Error)]
pub enum TmpfsError {
    #[error("creating {}", .dir.display())]
    Create {
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("statfs {}", .dir.display())]
    Statfs {
        dir: std::path::PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("mounting a tmpfs on {} (MOSE keeps checkpoint images in memory; run as root)", .dir.display())]
    Mount {
        dir: std::path::PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// Makes sure `dir` is memory-backed: checkpoint images must never touch the
/// disk on the hot path. Mounts a tmpfs there when it is not one already
/// (on some hosts `/run` itself is on disk).
pub fn ensure_tmpfs(dir: &std::path::Path) -> Result<(), TmpfsError> {
    std::fs::create_dir_all(dir).map_err(|source| TmpfsError::Create {
        dir: dir.to_path_buf(),
        source,
    })?;
    let st = nix::sys::statfs::statfs(dir).map_err(|source| TmpfsError::Statfs {
        dir: dir.to_path_buf(),
        source,
    })?;
    if st.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC {
        return Ok(());
    }
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some("mode=0700"),
    )
    .map_err(|source| TmpfsError::Mount {
        dir: dir.to_path_buf(),
        source,
    })
}
