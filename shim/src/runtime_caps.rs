//! What the container's OCI runtime can do for checkpoint and restore,
//! probed once per binary (`<binary> --version`, read by
//! `mose_policy::oci_runtime`), so that the shim refuses what the runtime
//! cannot do before anything is frozen, dumped or written: a restore under
//! youki (it has no `restore`) or crun built without CRIU, a dump of a paused
//! container under youki, a dump under such a crun, or CRIU options a
//! runtime's checkpoint has no flag for.
//!
//! A migration's freeze and its destination's restore must not wait for a
//! runtime to start (`runc --version` ≈8 ms, youki's ≈20 ms), so the answer
//! is kept per node under `/run/mose/oci-runtime-version/`, keyed by the
//! binary's path, inode, size and mtime (like containerd's version in
//! `bootstrap`): only the first probe after an install or upgrade runs it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
};

use mose_policy::oci_runtime::{parse_version, OciRuntimeCaps, USE_INSTEAD};
use tracing::debug;

use crate::{
    error::{Error, Result},
    options::CheckpointOptions,
    reaper::{self, Capture},
};

/// Capabilities per binary, probed once per shim server.
static PROBED: Mutex<BTreeMap<String, OciRuntimeCaps>> = Mutex::new(BTreeMap::new());

/// Where `--version` answers are kept per node.
const CACHE_DIR: &str = "/run/mose/oci-runtime-version";

/// The capabilities of `binary` (a name on PATH or a path). A binary that
/// cannot be run is not judged here: the runtime call itself reports it.
pub async fn probe(binary: &str) -> OciRuntimeCaps {
    if let Some(c) = PROBED.lock().ok().and_then(|m| m.get(binary).cloned()) {
        return c;
    }
    let Some(text) = version_output(binary, Path::new(CACHE_DIR)).await else {
        return OciRuntimeCaps::unknown(binary);
    };
    let caps = parse_version(binary, &text);
    if let Ok(mut m) = PROBED.lock() {
        m.insert(binary.to_string(), caps.clone());
    }
    caps
}

/// `<binary> --version` output, from the node's cache when the binary is
/// unchanged since it was asked.
async fn version_output(binary: &str, cache_dir: &Path) -> Option<String> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let path = resolve(binary)?;
    let md = std::fs::metadata(&path).ok()?;
    let key = format!(
        "{} {} {} {} {}.{}",
        path.display(),
        md.dev(),
        md.ino(),
        md.size(),
        md.mtime(),
        md.mtime_nsec()
    );
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    let cache = cache_dir.join(format!("{:016x}", h.finish()));
    if let Some(text) = std::fs::read_to_string(&cache).ok().and_then(|t| {
        let (k, v) = t.split_once('\n')?;
        (k == key).then(|| v.to_string())
    }) {
        return Some(text);
    }
    let mut cmd = Command::new(&path);
    cmd.arg("--version").stdin(Stdio::null());
    let text = match reaper::run(cmd, Capture::Both, &format!("{binary} --version")).await {
        Ok(out) if out.code == 0 => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => {
            debug!(binary, code = out.code, "OCI runtime --version failed");
            return None;
        }
        Err(e) => {
            debug!(binary, error = %e, "OCI runtime --version could not run");
            return None;
        }
    };
    let _ = std::fs::create_dir_all(cache_dir);
    let tmp = cache.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, format!("{key}\n{text}")).is_ok() {
        let _ = std::fs::rename(&tmp, &cache);
    }
    Some(text)
}

/// `binary` itself when it is a path, else the first executable file of
/// that name in a `$PATH` directory.
fn resolve(binary: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if binary.contains('/') {
        return Some(PathBuf::from(binary));
    }
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    path.split(':')
        .map(|d| Path::new(d).join(binary))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Refuses a Create that restores container `id` from a CRIU image when the
/// runtime cannot restore.
pub fn check_restore(caps: &OciRuntimeCaps, binary: &str, id: &str) -> Result<()> {
    match &caps.no_restore {
        None => Ok(()),
        Some(why) => Err(Error::FailedPrecondition(format!(
            "cannot restore container {id} from a checkpoint with OCI runtime {binary:?}: {why}; {USE_INSTEAD}"
        ))),
    }
}

/// Refuses a Checkpoint the runtime cannot carry out, before it is called.
pub fn check_checkpoint(
    caps: &OciRuntimeCaps,
    binary: &str,
    id: &str,
    opts: &CheckpointOptions,
    paused: bool,
) -> Result<()> {
    let refuse = |why: String| {
        Err(Error::FailedPrecondition(format!(
            "cannot checkpoint container {id} with OCI runtime {binary:?}: {why}; {USE_INSTEAD}"
        )))
    };
    if let Some(why) = &caps.no_checkpoint {
        return refuse(why.clone());
    }
    if paused && !caps.checkpoints_paused {
        return Err(Error::FailedPrecondition(format!(
            "cannot checkpoint container {id} with OCI runtime {binary:?}: {}; \
             checkpoint it through containerd's Tasks API without pausing it first \
             (containerd's client, and so `ctr tasks checkpoint` and `ctr containers \
             checkpoint`, pause the task before every checkpoint), or {USE_INSTEAD}",
            caps.no_paused_checkpoint()
        )));
    }
    if caps.checkpoint_command != "checkpoint" {
        // youki's dump: no flags for these CRIU settings
        if !opts.empty_namespaces.is_empty() {
            return refuse(format!("{} has no --empty-ns", caps.name));
        }
        if opts.lazy_pages {
            return refuse(format!("{} has no --lazy-pages", caps.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn youki() -> OciRuntimeCaps {
        parse_version("youki", "youki version: 0.7.0\ncommit: x\n")
    }

    #[test]
    fn restore_refusal_names_runtime_and_alternative() {
        let e = check_restore(&youki(), "youki", "c1").unwrap_err();
        assert!(matches!(e, Error::FailedPrecondition(_)));
        let m = e.to_string();
        assert!(m.contains("container c1"), "{m}");
        assert!(m.contains("\"youki\"") && m.contains("youki 0.7.0"), "{m}");
        assert!(m.contains("no `restore`") && m.contains("with runc"), "{m}");
        let runc = parse_version("runc", "runc version 1.1.5\n");
        assert!(check_restore(&runc, "runc", "c1").is_ok());
        assert!(check_restore(&OciRuntimeCaps::unknown("/x"), "/x", "c1").is_ok());
    }

    #[tokio::test]
    async fn version_output_comes_from_the_node_cache_for_an_unchanged_binary() {
        use std::hash::{Hash, Hasher};
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("my-runtime");
        std::fs::write(&bin, "#!/bin/sh\necho not run\n").unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let md = std::fs::metadata(&bin).unwrap();
        let key = format!(
            "{} {} {} {} {}.{}",
            bin.display(),
            md.dev(),
            md.ino(),
            md.size(),
            md.mtime(),
            md.mtime_nsec()
        );
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bin.hash(&mut h);
        let cache = dir.path().join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        let cached = "youki version: 0.7.0\ncommit: x\n";
        std::fs::write(
            cache.join(format!("{:016x}", h.finish())),
            format!("{key}\n{cached}"),
        )
        .unwrap();
        let text = version_output(bin.to_str().unwrap(), &cache).await;
        assert_eq!(
            text.as_deref(),
            Some(cached),
            "answered from the cache, not run"
        );
        assert_eq!(resolve("/x/y"), Some(PathBuf::from("/x/y")));
        assert!(resolve("sh").is_some_and(|p| p.is_absolute()));
        assert_eq!(resolve("no-such-runtime-binary"), None);
    }

    #[test]
    fn checkpoint_refusals() {
        let crun = parse_version(
            "crun",
            "crun version 1.8.1\nspec: 1.0.0\n+SYSTEMD +SECCOMP\n",
        );
        let m = check_checkpoint(&crun, "crun", "c2", &Default::default(), false)
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("cannot checkpoint container c2") && m.contains("+CRIU"),
            "{m}"
        );
        let y = youki();
        assert!(check_checkpoint(&y, "youki", "c2", &Default::default(), false).is_ok());
        let m = check_checkpoint(&y, "youki", "c2", &Default::default(), true)
            .unwrap_err()
            .to_string();
        assert!(m.contains("cannot checkpoint a paused container"), "{m}");
        assert!(m.contains("without pausing it"), "{m}");
        let lazy = CheckpointOptions {
            lazy_pages: true,
            ..Default::default()
        };
        let m = check_checkpoint(&y, "youki", "c2", &lazy, false)
            .unwrap_err()
            .to_string();
        assert!(m.contains("--lazy-pages"), "{m}");
        let ns = CheckpointOptions {
            empty_namespaces: vec!["network".into()],
            ..Default::default()
        };
        assert!(check_checkpoint(&y, "youki", "c2", &ns, false).is_err());
        let runc = parse_version("runc", "runc version 1.1.5\n");
        assert!(check_checkpoint(&runc, "runc", "c2", &lazy, true).is_ok());
    }
}
