//! The container's rootfs changes: the upper directory of its overlay
//! snapshot, copied as it is (whiteouts included) into the destination's
//! fresh snapshot of the same image.

use std::path::{Path, PathBuf};

use containerd_client::types::Mount;

/// Why the rootfs changes of a migrated container could not be found,
/// packed or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(
        "the container's snapshot has no overlay upper directory (mounts: {mounts:?}); MOSE migrates rootfs changes of overlayfs snapshots only"
    )]
    NoUpperdir { mounts: Vec<String> },
    #[error("packing rootfs changes in {}", .dir.display())]
    Pack {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("finishing rootfs archive")]
    Finish {
        #[source]
        source: std::io::Error,
    },
    #[error("unpacking rootfs changes into {}", .dir.display())]
    Unpack {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = RootfsError> = std::result::Result<T, E>;

/// The overlay upper directory among a snapshot's mounts.
pub fn upperdir(mounts: &[Mount]) -> Result<PathBuf> {
    for m in mounts {
        for o in &m.options {
            if let Some(p) = o.strip_prefix("upperdir=") {
                return Ok(PathBuf::from(p));
            }
        }
    }
    Err(RootfsError::NoUpperdir {
        mounts: mounts.iter().map(|m| m.r#type.clone()).collect(),
    })
}

/// Packs `dir` into a tar archive (symlinks kept as links, devices and whiteouts kept).
pub fn pack(dir: &Path) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    b.append_dir_all(".", dir)
        .map_err(|source| RootfsError::Pack {
            dir: dir.to_path_buf(),
            source,
        })?;
    b.into_inner()
        .map_err(|source| RootfsError::Finish { source })
}

/// Unpacks a rootfs-changes archive into `dir`.
pub fn unpack(data: &[u8], dir: &Path) -> Result<()> {
    let mut a = tar::Archive::new(data);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_unpack_xattrs(true);
    a.set_overwrite(true);
    a.unpack(dir).map_err(|source| RootfsError::Unpack {
        dir: dir.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_keeps_files_and_links() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("data/sub")).unwrap();
        std::fs::write(src.path().join("data/sub/f"), b"state").unwrap();
        std::os::unix::fs::symlink("sub/f", src.path().join("data/link")).unwrap();
        let tar = pack(src.path()).unwrap();
        let dst = tempfile::tempdir().unwrap();
        unpack(&tar, dst.path()).unwrap();
        assert_eq!(
            std::fs::read(dst.path().join("data/sub/f")).unwrap(),
            b"state"
        );
        assert_eq!(
            std::fs::read_link(dst.path().join("data/link")).unwrap(),
            Path::new("sub/f")
        );
        let m = Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec!["workdir=/w".into(), "upperdir=/u".into()],
        };
        assert_eq!(upperdir(&[m]).unwrap(), PathBuf::from("/u"));
        assert!(upperdir(&[]).is_err());
    }
}
