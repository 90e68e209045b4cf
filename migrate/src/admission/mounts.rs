//! The mounts of an incoming spec: which of them bring this node's files
//! into the container.
//!
//! Kernel filesystems without host data (proc, sysfs, tmpfs, devpts,
//! mqueue, cgroup) are fine; a bind mount's `source` and an overlay's
//! `lowerdir`, `upperdir` and `workdir` are host paths, checked against
//! `host-paths`; any other filesystem (ext4 from a block device, nfs, …) is
//! the host's storage, allowed only to a privileged container.

use std::path::Path;

use serde_json::Value;

use super::check::{strings, v, Violation};
use super::rules::{is_plain_absolute, Rules};

/// Filesystems that hold no host data.
const KERNEL_TYPES: &[&str] = &[
    "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "shm",
];

/// Every violation among `spec`'s mounts.
pub fn check(rules: &Rules, spec: &Value, out: &mut Vec<Violation>) {
    for m in spec
        .get("mounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let typ = m.get("type").and_then(Value::as_str).unwrap_or("");
        let source = m.get("source").and_then(Value::as_str).unwrap_or("");
        let dest = m.get("destination").and_then(Value::as_str).unwrap_or("?");
        let bind = typ == "bind" || strings(m.get("options")).any(|o| o == "bind" || o == "rbind");
        if bind {
            host_path(rules, source, dest, "bind-mounts", out);
        } else if typ == "overlay" {
            for dir in overlay_dirs(m) {
                host_path(rules, &dir, dest, "overlays", out);
            }
        } else if !KERNEL_TYPES.contains(&typ) && !rules.privileged() {
            out.push(v(
                format!("mounts a {typ:?} filesystem from {source:?} at {dest}"),
                "privileged = true",
            ));
        }
    }
}

/// An overlay mount's host directories: every `lowerdir` (`:`-separated),
/// `upperdir` and `workdir` option.
fn overlay_dirs(m: &Value) -> Vec<String> {
    let mut dirs = Vec::new();
    for o in strings(m.get("options")) {
        match o.split_once('=') {
            Some(("lowerdir", list)) => dirs.extend(list.split(':').map(str::to_string)),
            Some(("upperdir" | "workdir", dir)) => dirs.push(dir.to_string()),
            _ => {}
        }
    }
    dirs
}

fn host_path(rules: &Rules, source: &str, dest: &str, verb: &str, out: &mut Vec<Violation>) {
    let path = Path::new(source);
    if !is_plain_absolute(path) {
        // relative or with `..`: no prefix rule can vouch for it
        out.push(Violation {
            what: format!("{verb} {source:?} at {dest}, not a plain absolute path"),
            allow: None,
        });
    } else if !rules.allows_host_path(path) {
        out.push(v(
            format!("{verb} host path {source} at {dest}"),
            &format!("host-paths = [\"{source}\"]"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn whats(r: &Rules, mounts: Value) -> Vec<String> {
        let mut out = Vec::new();
        check(r, &json!({ "mounts": mounts }), &mut out);
        out.into_iter().map(|v| v.what).collect()
    }

    #[test]
    fn kernel_filesystems_pass_and_host_paths_are_checked() {
        let r = Rules {
            host_paths: Some(vec!["/srv/data".into()]),
            ..Default::default()
        };
        let w = whats(
            &r,
            json!([
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]},
                {"destination": "/host", "type": "bind", "source": "/", "options": ["rbind"]},
                {"destination": "/data", "type": "none", "source": "/srv/data/a", "options": ["bind"]},
                {"destination": "/x", "type": "bind", "source": "/srv/data/../../etc"}]),
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!(w[0], "bind-mounts host path / at /host");
        assert!(w[1].contains("not a plain absolute path"));
    }

    #[test]
    fn an_overlay_of_host_directories_is_a_host_path_mount() {
        let w = whats(
            &Rules::default(),
            json!([{"destination": "/host", "type": "overlay", "source": "overlay",
                    "options": ["lowerdir=/etc:/usr", "upperdir=/tmp/u", "workdir=/tmp/w"]}]),
        );
        assert_eq!(
            w,
            [
                "overlays host path /etc at /host",
                "overlays host path /usr at /host",
                "overlays host path /tmp/u at /host",
                "overlays host path /tmp/w at /host"
            ]
        );
    }

    #[test]
    fn a_host_filesystem_needs_a_privileged_namespace() {
        let m = json!([{"destination": "/disk", "type": "ext4", "source": "/dev/sda1"}]);
        let w = whats(&Rules::default(), m.clone());
        assert_eq!(
            w,
            ["mounts a \"ext4\" filesystem from \"/dev/sda1\" at /disk"]
        );
        let privileged = Rules {
            privileged: Some(true),
            ..Default::default()
        };
        assert!(whats(&privileged, m).is_empty());
    }
}
