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

/// The permission bits of `path` (following symlinks).
pub(super) fn mode_of(path: &Path) -> Result<u32> {
    std::fs::metadata(path)
        .map(|m| m.mode() & 0o7777)
        .map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// Makes `dir` with mode 0700 (and so any missing parent). An existing
/// empty directory is taken over and set to 0700; an existing one with
/// content must already be closed to group and others.
pub(super) fn private_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| TlsError::CreateDir {
                dir: dir.to_path_buf(),
                source,
            })?;
    }
    let mode = mode_of(dir)?;
    let empty = || {
        std::fs::read_dir(dir)
            .map(|mut rd| rd.next().is_none())
            .unwrap_or(false)
    };
    if mode & 0o077 != 0 && empty() {
        use std::os::unix::fs::PermissionsExt;
        return std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| TlsError::Write {
                path: dir.to_path_buf(),
                source,
            },
        );
    }
    if mode & 0o077 != 0 {
        return Err(TlsError::DirNotPrivate {
            dir: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
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
