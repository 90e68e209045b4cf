//! Where a post-copy or hybrid source serves lazy pages from, decided once
//! per node agent: CRIU's lazy dump with its page server (the freeze does not
//! grow with memory), or, where that cannot run safely, a full dump into
//! tmpfs served from the images.
//!
//! The lazy dump is never attempted unchecked: with `fs.pipe-max-size`
//! below 4 MiB and no `CAP_SYS_RESOURCE`, CRIU cannot grow its page server's
//! pipe, splices to fd -1, and the failed transfer has left unkillable
//! processes on this kind of machine (`../shared/ENVIRONMENT.md`).

use std::{path::PathBuf, process::Command};

use super::criu_page_server::IovLayout;

/// The smallest `fs.pipe-max-size` CRIU's lazy page server works with: it
/// grows its pipe to 4 MiB (`pipe_read_dest_init`, `criu/page-xfer.c`).
pub const MIN_PIPE_MAX_SIZE: u64 = 4 << 20;
const PIPE_MAX_SIZE: &str = "/proc/sys/fs/pipe-max-size";
/// Where MOSE's set-up installs CRIU (the shim runs the same one).
const CRIU_INSTALLED: &str = "/usr/local/sbin/criu";

/// The lazy pages' source, as migration results name it (`lazy_source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LazySource {
    /// CRIU's lazy dump; its page server on loopback, read by MOSE.
    CriuPageServer { iov: IovLayout },
    /// A full dump into tmpfs, served from the images; `reason` says why the
    /// lazy dump is not used.
    TmpfsDump { reason: String },
}

impl LazySource {
    /// `"criu-page-server"` or `"tmpfs-dump"`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::CriuPageServer { .. } => "criu-page-server",
            Self::TmpfsDump { .. } => "tmpfs-dump",
        }
    }

    /// Checks what the lazy dump needs on this node: `fs.pipe-max-size` ≥
    /// [`MIN_PIPE_MAX_SIZE`], a CRIU whose version is known (it fixes the
    /// page-server protocol's layout) and CRIU's userfaultfd support (runc
    /// checks `lazy_pages` before a lazy dump).
    pub fn probe() -> Self {
        match Self::check() {
            Ok(iov) => Self::CriuPageServer { iov },
            Err(reason) => Self::TmpfsDump { reason },
        }
    }

    fn check() -> Result<IovLayout, String> {
        let pipe = std::fs::read_to_string(PIPE_MAX_SIZE)
            .map_err(|e| format!("cannot read {PIPE_MAX_SIZE}: {e}"))?;
        check_pipe_max_size(&pipe)?;
        let criu = criu_binary();
        let run = |args: &[&str]| {
            Command::new(&criu)
                .args(args)
                .output()
                .map_err(|e| format!("cannot run {} {}: {e}", criu.display(), args.join(" ")))
        };
        let out = run(&["--version"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (major, minor) = parse_version(&text).ok_or_else(|| {
            format!(
                "{} --version said {:?}, not a CRIU version",
                criu.display(),
                text.trim()
            )
        })?;
        let check = run(&["check", "--feature", "uffd-noncoop"])?;
        if !check.status.success() {
            return Err(format!(
                "CRIU {major}.{minor} has no non-cooperative userfaultfd here (criu check \
                 --feature uffd-noncoop: {})",
                String::from_utf8_lossy(&check.stderr).trim()
            ));
        }
        Ok(IovLayout::of_version(major, minor))
    }
}

/// The CRIU the shim's runc runs: MOSE's installed one, else `criu` on PATH.
fn criu_binary() -> PathBuf {
    let installed = PathBuf::from(CRIU_INSTALLED);
    if installed.exists() {
        installed
    } else {
        PathBuf::from("criu")
    }
}

fn check_pipe_max_size(text: &str) -> Result<(), String> {
    let v: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{PIPE_MAX_SIZE} holds {:?}, not a number", text.trim()))?;
    if v < MIN_PIPE_MAX_SIZE {
        return Err(format!(
            "fs.pipe-max-size is {v}, below the {MIN_PIPE_MAX_SIZE} CRIU's lazy page server \
             needs (run scripts/setup.sh, or: sysctl -w fs.pipe-max-size={MIN_PIPE_MAX_SIZE}, \
             and persist it under /etc/sysctl.d/)"
        ));
    }
    Ok(())
}

/// `Version: 4.1.1` → (4, 1).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))?
        .trim();
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()
        .and_then(|m| m.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_criu_versions() {
        assert_eq!(parse_version("Version: 4.1.1\n"), Some((4, 1)));
        assert_eq!(parse_version("Version: 4.2\nGitID: v4.2\n"), Some((4, 2)));
        assert_eq!(parse_version("Version: 3.19-rc1\n"), Some((3, 19)));
        assert_eq!(parse_version("criu: command not found"), None);
    }

    #[test]
    fn a_small_pipe_limit_is_refused_with_the_fix() {
        let e = check_pipe_max_size("1048576\n").unwrap_err();
        assert!(e.contains("fs.pipe-max-size is 1048576"), "{e}");
        assert!(e.contains("sysctl -w fs.pipe-max-size=4194304"), "{e}");
        assert!(check_pipe_max_size("4194304\n").is_ok());
        assert!(check_pipe_max_size("lots").is_err());
    }
}
