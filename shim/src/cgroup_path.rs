//! A restored container's own cgroup.
//!
//! A checkpoint carries the OCI spec of the container it was taken from, and
//! with it that container's `linux.cgroupsPath` (`ctr` sets `/<namespace>/<id>`).
//! Restoring it as a new container beside the original (`ctr containers
//! restore c2 ck`) would put both in one cgroup, so that killing or deleting
//! one (`ctr tasks rm -f c1`, which kills the whole cgroup) takes the other
//! down too. containerd's runc shim does exactly that; MOSE gives the restored
//! container a cgroup of its own when the named one holds live processes.

use std::path::{Path, PathBuf};

use tracing::info;

use crate::error::{Error, Result};

/// Where cgroup hierarchies are mounted; the v1 controllers that every
/// container is placed in, and the v2 (or hybrid `unified`) tree.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const HIERARCHIES: [&str; 6] = ["memory", "pids", "freezer", "cpu", "unified", ""];

/// Rewrites `spec`'s cgroups path to one named after `id` when the path it
/// names is occupied by live processes (another container's); returns
/// whether the spec changed. A systemd-style path (`slice:prefix:name`) is
/// left to the runtime. Errors when the replacement is occupied as well.
pub fn own_cgroup(spec: &mut serde_json::Value, id: &str) -> Result<bool> {
    own_cgroup_in(spec, id, Path::new(CGROUP_ROOT))
}

fn own_cgroup_in(spec: &mut serde_json::Value, id: &str, root: &Path) -> Result<bool> {
    let Some(path) = spec
        .pointer("/linux/cgroupsPath")
        .and_then(|p| p.as_str())
        .map(str::to_string)
    else {
        return Ok(false);
    };
    if path.is_empty() || path.contains(':') || !occupied(root, &path) {
        return Ok(false);
    }
    let parent = Path::new(&path).parent().unwrap_or(Path::new("/"));
    let mine = parent.join(id).display().to_string();
    if occupied(root, &mine) {
        return Err(Error::FailedPrecondition(format!(
            "cannot restore container {id}: its checkpoint's cgroup {path} belongs to a \
             running container, and {mine} is in use too; remove that container or give \
             the restored one another id"
        )));
    }
    info!(container = id, from = %path, to = %mine, "restored container gets its own cgroup");
    if let Some(linux) = spec.get_mut("linux").and_then(|l| l.as_object_mut()) {
        linux.insert("cgroupsPath".into(), mine.into());
    }
    Ok(true)
}

/// True when any hierarchy's cgroup at `path` holds a process.
fn occupied(root: &Path, path: &str) -> bool {
    let rel = path.trim_start_matches('/');
    HIERARCHIES.iter().any(|h| {
        let procs: PathBuf = root.join(h).join(rel).join("cgroup.procs");
        std::fs::read_to_string(procs).is_ok_and(|t| !t.trim().is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &str) -> serde_json::Value {
        serde_json::json!({"linux": {"cgroupsPath": path}})
    }

    fn cgroup(root: &Path, h: &str, path: &str, procs: &str) {
        let d = root.join(h).join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cgroup.procs"), procs).unwrap();
    }

    #[test]
    fn a_free_cgroup_is_kept() {
        let root = tempfile::tempdir().unwrap();
        cgroup(root.path(), "memory", "/default/c1", "");
        let mut s = spec("/default/c1");
        assert!(!own_cgroup_in(&mut s, "c2", root.path()).unwrap());
        assert_eq!(s, spec("/default/c1"));
    }

    #[test]
    fn an_occupied_cgroup_is_replaced_by_the_containers_own() {
        let root = tempfile::tempdir().unwrap();
        cgroup(root.path(), "pids", "/default/c1", "123\n");
        let mut s = spec("/default/c1");
        assert!(own_cgroup_in(&mut s, "c2", root.path()).unwrap());
        assert_eq!(s, spec("/default/c2"));
        cgroup(root.path(), "memory", "/default/c2", "456\n");
        let mut s = spec("/default/c1");
        let e = own_cgroup_in(&mut s, "c2", root.path()).unwrap_err();
        assert!(e.to_string().contains("in use too"), "{e}");
    }

    #[test]
    fn systemd_paths_and_missing_paths_are_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let mut s = spec("system.slice:mose:c1");
        assert!(!own_cgroup_in(&mut s, "c2", root.path()).unwrap());
        let mut s = serde_json::json!({"linux": {}});
        assert!(!own_cgroup_in(&mut s, "c2", root.path()).unwrap());
    }
}
