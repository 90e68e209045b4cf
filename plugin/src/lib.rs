//! MOSE's node plugin: the migration endpoint that receives containers
//! (`mose-plugin`), and the source side that sends them (`mosectl migrate`).

pub mod calibrate;
pub mod containerd;
pub mod endpoint;
pub mod lazy;
pub mod measure;
pub mod memory;
pub mod oci_runtime;
pub mod policy;
pub mod result;
pub mod rootfs;
pub mod source;
pub mod tls;
pub mod visibility;

/// Makes sure `dir` is memory-backed: checkpoint images must never touch the
/// disk on the hot path. Mounts a tmpfs there when it is not one already
/// (on some hosts `/run` itself is on disk).
pub fn ensure_tmpfs(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let st = nix::sys::statfs::statfs(dir).with_context(|| format!("statfs {}", dir.display()))?;
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
    .with_context(|| {
        format!(
            "mounting a tmpfs on {} (MOSE keeps checkpoint images in memory; run as root)",
            dir.display()
        )
    })
}
