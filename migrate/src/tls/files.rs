//! Writing credentials: private modes, private directories, and files
//! replaced by a rename so a reader never sees half of one.

use super::*;

pub(super) fn write_file(path: PathBuf, data: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(&path, data).map_err(|source| TlsError::Write { path, source })
}

pub(super) fn write_private(path: &Path, data: &str) -> Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, data.as_bytes()))
        .map_err(|source| TlsError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// The effective uid of this process: the user credentials must belong to.
pub(super) fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// What is wrong with a file or directory of a node's credentials owned by
/// `owner` with permission bits `mode`, for a process running as `euid`:
/// another owner, or group or others able to write it. Either lets someone
/// else replace the credentials (ca.pem decides which CA the node trusts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exposure {
    Owner(u32),
    Writable,
}

pub(super) fn exposure(owner: u32, mode: u32, euid: u32) -> Option<Exposure> {
    if owner != euid {
        Some(Exposure::Owner(owner))
    } else if mode & 0o022 != 0 {
        Some(Exposure::Writable)
    } else {
        None
    }
}

/// Refuses `path` (owned by `owner`, mode `mode`) when [`exposure`] finds
/// it exposed, naming the path and the fix.
pub(super) fn check_exposure(path: &Path, owner: u32, mode: u32) -> Result<()> {
    let euid = euid();
    match exposure(owner, mode, euid) {
        None => Ok(()),
        Some(Exposure::Owner(owner)) => Err(TlsError::NotOwned {
            path: path.to_path_buf(),
            owner,
            euid,
        }),
        Some(Exposure::Writable) => Err(TlsError::WritableByOthers {
            path: path.to_path_buf(),
            mode,
        }),
    }
}

/// What [`private_dir`] does with an existing directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DirUse {
    /// Owned by this user and closed to group and others: used as it is.
    Use,
    /// Owned by this user, open to others, empty and not a shared (sticky)
    /// directory: set to 0700 and used.
    TakeOver,
    /// Owned by another user: refused.
    NotOwned,
    /// Open to group or others and holding files, or shared: refused.
    NotPrivate,
}

/// The decision of [`private_dir`] for an existing directory owned by
/// `owner` with permission bits `mode`, `empty` or not, for `euid`.
pub(super) fn dir_use(owner: u32, mode: u32, empty: bool, euid: u32) -> DirUse {
    let sticky = mode & 0o1000 != 0;
    if owner != euid {
        DirUse::NotOwned
    } else if mode & 0o077 == 0 {
        DirUse::Use
    } else if empty && !sticky {
        DirUse::TakeOver
    } else {
        DirUse::NotPrivate
    }
}

/// Makes `dir` with mode 0700 (and so any missing parent) to hold `holds`
/// (said in errors: "the cluster CA's private key (ca.key)"). An existing
/// directory must be this user's; an empty one of this user's is taken
/// over and set to 0700; one with content, or a shared (sticky) one, must
/// already be closed to group and others.
pub(super) fn private_dir(dir: &Path, holds: &str) -> Result<()> {
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| TlsError::CreateDir {
                dir: dir.to_path_buf(),
                source,
            })?;
    }
    let meta = std::fs::metadata(dir).map_err(|source| TlsError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(TlsError::NotADirectory {
            path: dir.to_path_buf(),
            holds: holds.to_string(),
        });
    }
    let mode = meta.mode() & 0o7777;
    let empty = std::fs::read_dir(dir)
        .map(|mut rd| rd.next().is_none())
        .unwrap_or(false);
    let euid = euid();
    match dir_use(meta.uid(), mode, empty, euid) {
        DirUse::Use => Ok(()),
        DirUse::TakeOver => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
                |source| TlsError::Write {
                    path: dir.to_path_buf(),
                    source,
                },
            )
        }
        DirUse::NotOwned => Err(TlsError::DirNotOwned {
            dir: dir.to_path_buf(),
            owner: meta.uid(),
            euid,
            holds: holds.to_string(),
        }),
        DirUse::NotPrivate => Err(TlsError::DirNotPrivate {
            dir: dir.to_path_buf(),
            mode,
            holds: holds.to_string(),
        }),
    }
}

/// Replaces `dir/name` with `data` as a whole: written to a temporary file
/// in the same directory (mode `mode`), flushed to disk, then renamed over
/// the old file, so a reader sees the old or the new content, never a part.
/// Returns the temporary file's path for [`commit_staged`]; nothing is
/// replaced until then.
pub(super) fn stage(dir: &Path, name: &str, data: &[u8], mode: u32) -> Result<PathBuf> {
    let tmp = dir.join(format!(".{name}.new-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, data)?;
            f.sync_all()
        });
    match written {
        Ok(()) => Ok(tmp),
        Err(source) => {
            let _ = std::fs::remove_file(&tmp);
            Err(TlsError::Write { path: tmp, source })
        }
    }
}

/// Renames staged files (temporary, final) into place, in order, then
/// flushes the directory. On an error the staged files not yet renamed are
/// removed.
pub(super) fn commit_staged(dir: &Path, staged: &[(PathBuf, PathBuf)]) -> Result<()> {
    for (i, (tmp, path)) in staged.iter().enumerate() {
        if let Err(source) = std::fs::rename(tmp, path) {
            for (t, _) in &staged[i..] {
                let _ = std::fs::remove_file(t);
            }
            return Err(TlsError::Write {
                path: path.clone(),
                source,
            });
        }
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| TlsError::Write {
            path: dir.to_path_buf(),
            source,
        })
}
