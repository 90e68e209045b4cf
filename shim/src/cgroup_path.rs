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

use crate::{
    error::{Error, Result},
    oci::BundleSpec,
};

/// Where cgroup hierarchies are mounted; the v1 controllers that every
/// container is placed in, and the v2 (or hybrid `unified`) tree.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const HIERARCHIES: [&str; 6] = ["memory", "pids", "freezer", "cpu", "unified", ""];

/// Rewrites `spec`'s cgroups path to one named after `id` when the path it
/// names is occupied by live processes (another container's); returns
/// whether the spec changed. A systemd-style path (`slice:prefix:name`) is
/// left to the runtime. Errors when the replacement is occupied as well.
pub fn own_cgroup(spec: &mut BundleSpec, id: &str) -> Result<bool> {
    own_cgroup_in(spec, id, Path::new(CGROUP_ROOT))
}

fn own_cgroup_in(spec: &mut BundleSpec, id: &str, root: &Path) -> Result<bool> {
    let Some(path) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().into_owned())
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
    spec.set_cgroups_path(&mine)
        .map_err(|e| Error::Internal(format!("set the restored container's cgroup: {e}")))?;
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

    fn spec(path: &str) -> BundleSpec {
        parse(serde_json::json!({"ociVersion": "1.0.2", "linux": {"cgroupsPath": path}}))
    }

    fn parse(v: serde_json::Value) -> BundleSpec {
        BundleSpec::parse(v.to_string().as_bytes()).unwrap()
    }

    /// The spec as written.
    fn json(s: &BundleSpec) -> serde_json::Value {
        serde_json::from_slice(&s.to_vec().unwrap()).unwrap()
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
        assert_eq!(json(&s), json(&spec("/default/c1")));
    }

    #[test]
    fn an_occupied_cgroup_is_replaced_by_the_containers_own() {
        let root = tempfile::tempdir().unwrap();
        cgroup(root.path(), "pids", "/default/c1", "123\n");
        let mut s = spec("/default/c1");
        assert!(own_cgroup_in(&mut s, "c2", root.path()).unwrap());
        assert_eq!(json(&s), json(&spec("/default/c2")));
        assert_eq!(*s, *spec("/default/c2"));
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
        let mut s = parse(serde_json::json!({"ociVersion": "1.0.2", "linux": {}}));
        assert!(!own_cgroup_in(&mut s, "c2", root.path()).unwrap());
    }

    #[test]
    fn the_rewrite_changes_the_cgroups_path_only() {
        let root = tempfile::tempdir().unwrap();
        cgroup(root.path(), "", "/k8s.io/c1", "7\n");
        let input = serde_json::json!({"ociVersion": "1.1.0",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                "capabilities": {"bounding": ["CAP_KILL", "CAP_CHOWN"]}},
            "linux": {"cgroupsPath": "/k8s.io/c1", "x-future": [1],
                "resources": {"memory": {"limit": 1048576}},
                "namespaces": [{"type": "pid"}, {"type": "network"}]}});
        let mut s = parse(input.clone());
        assert!(own_cgroup_in(&mut s, "c2", root.path()).unwrap());
        let mut expected = input;
        expected["linux"]["cgroupsPath"] = "/k8s.io/c2".into();
        assert_eq!(json(&s), expected);
        let linux = s.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/k8s.io/c2"))
        );
    }
}
