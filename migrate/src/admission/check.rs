//! The checks of an incoming container against a namespace's [`Rules`].
//!
//! The spec is read as JSON rather than decoded into `oci-spec`'s typed
//! `Spec`: a field, capability or namespace type newer than that crate must
//! not make a valid container unmigratable, and only the fields checked
//! here are interpreted (OCI runtime-spec `config.md` and
//! `config-linux.md` give their meaning).

use std::path::Path;

use mose_wire::ContainerIdentity;
use serde_json::Value;

use super::rules::{is_plain_absolute, Rules, NAMESPACE_TYPES};

/// One thing the container has that the rules do not allow.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// What the container asks for, e.g. `host path / bind-mounted at /host`.
    pub what: String,
    /// The policy setting that would allow it; `None` when none can.
    pub allow: Option<String>,
}

fn v(what: String, allow: &str) -> Violation {
    Violation {
        what,
        allow: Some(allow.to_string()),
    }
}

/// Every violation of `rules` by `container`, in spec order; empty when it
/// may come.
pub fn violations(rules: &Rules, container: &ContainerIdentity) -> Vec<Violation> {
    let spec = &container.spec;
    let mut out = Vec::new();
    capabilities(rules, spec, &mut out);
    namespaces(rules, spec, &mut out);
    mounts(rules, spec, &mut out);
    devices(rules, spec, &mut out);
    confinement(rules, spec, &mut out);
    hooks(rules, spec, &mut out);
    image(rules, &container.image, &mut out);
    labels(container, &mut out);
    out
}

fn strings(v: Option<&Value>) -> impl Iterator<Item = &str> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

fn capabilities(rules: &Rules, spec: &Value, out: &mut Vec<Violation>) {
    let Some(caps) = spec.pointer("/process/capabilities") else {
        return;
    };
    let mut extra: Vec<String> = [
        "bounding",
        "effective",
        "permitted",
        "inheritable",
        "ambient",
    ]
    .iter()
    .flat_map(|set| strings(caps.get(*set)))
    .map(super::rules::canonical_capability)
    .filter(|c| !rules.allows_capability(c))
    .collect();
    extra.sort();
    extra.dedup();
    if extra.is_empty() {
        return;
    }
    let list = if extra.len() > 4 {
        format!("{} and {} more", extra[..4].join(", "), extra.len() - 4)
    } else {
        extra.join(", ")
    };
    let allow = if extra.len() > 4 {
        "privileged = true".to_string()
    } else {
        format!("capabilities = {extra:?}")
    };
    out.push(v(
        format!("process.capabilities adds {list} beyond containerd's default set"),
        &allow,
    ));
}

fn namespaces(rules: &Rules, spec: &Value, out: &mut Vec<Violation>) {
    let listed: Vec<&Value> = spec
        .pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    for typ in NAMESPACE_TYPES {
        if rules.allows_host_namespace(typ) {
            continue;
        }
        let entry = listed
            .iter()
            .find(|n| n.get("type").and_then(Value::as_str) == Some(typ));
        let what = match entry.map(|n| n.get("path").and_then(Value::as_str)) {
            None => format!("shares this node's {typ} namespace (linux.namespaces has no {typ})"),
            Some(Some(path)) if !path.is_empty() => {
                format!("joins the existing {typ} namespace at {path}")
            }
            Some(_) => continue,
        };
        out.push(v(what, &format!("host-namespaces = [\"{typ}\"]")));
    }
}

fn is_bind(m: &Value) -> bool {
    m.get("type").and_then(Value::as_str) == Some("bind")
        || strings(m.get("options")).any(|o| o == "bind" || o == "rbind")
}

fn mounts(rules: &Rules, spec: &Value, out: &mut Vec<Violation>) {
    for m in spec
        .get("mounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|m| is_bind(m))
    {
        let source = m.get("source").and_then(Value::as_str).unwrap_or("");
        let dest = m.get("destination").and_then(Value::as_str).unwrap_or("?");
        let path = Path::new(source);
        if is_plain_absolute(path) && rules.allows_host_path(path) {
            continue;
        }
        let allow = if is_plain_absolute(path) {
            format!("host-paths = [\"{source}\"]")
        } else {
            // relative or with `..`: no prefix rule can vouch for it
            out.push(Violation {
                what: format!("bind mount of {source:?} at {dest} is not a plain absolute path"),
                allow: None,
            });
            continue;
        };
        out.push(v(
            format!("bind-mounts host path {source} at {dest}"),
            &allow,
        ));
    }
}

fn devices(rules: &Rules, spec: &Value, out: &mut Vec<Violation>) {
    if rules.devices() {
        return;
    }
    let listed = spec
        .pointer("/linux/devices")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if listed > 0 {
        out.push(v(
            format!("linux.devices gives it {listed} host device(s)"),
            "devices = true",
        ));
    }
    let all = spec
        .pointer("/linux/resources/devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|d| {
            d.get("allow").and_then(Value::as_bool) == Some(true)
                && matches!(d.get("type").and_then(Value::as_str), None | Some("a"))
                && d.get("major").is_none_or(Value::is_null)
                && d.get("minor").is_none_or(Value::is_null)
        });
    if all {
        out.push(v(
            "its device cgroup allows every device".into(),
            "devices = true",
        ));
    }
}

fn confinement(rules: &Rules, spec: &Value, out: &mut Vec<Violation>) {
    if rules.unconfined() {
        return;
    }
    if spec.pointer("/linux/seccomp").is_none_or(Value::is_null) {
        out.push(v(
            "runs without a seccomp profile (linux.seccomp is unset; `ctr run --seccomp` sets \
             containerd's default)"
                .into(),
            "unconfined = true",
        ));
    }
    if spec
        .pointer("/process/apparmorProfile")
        .and_then(Value::as_str)
        == Some("unconfined")
    {
        out.push(v(
            "runs with AppArmor unconfined".into(),
            "unconfined = true",
        ));
    }
    if !rules.privileged()
        && spec
            .pointer("/linux/maskedPaths")
            .is_some_and(is_empty_list)
    {
        out.push(v(
            "masks none of the kernel's paths (linux.maskedPaths is empty)".into(),
            "privileged = true",
        ));
    }
}

fn is_empty_list(v: &Value) -> bool {
    v.as_array().is_some_and(Vec::is_empty)
}

fn hooks(rules: &Rules, spec: &Value, out: &mut Vec<Violation>) {
    let Some(hooks) = spec.get("hooks").and_then(Value::as_object) else {
        return;
    };
    for (kind, list) in hooks {
        for h in list.as_array().into_iter().flatten() {
            let path = h.get("path").and_then(Value::as_str).unwrap_or("");
            if is_plain_absolute(Path::new(path)) && rules.allows_hook(Path::new(path)) {
                continue;
            }
            out.push(v(
                format!("its {kind} hook runs {path:?} on this node"),
                &format!("hooks = [\"{path}\"]"),
            ));
        }
    }
}

fn image(rules: &Rules, image: &str, out: &mut Vec<Violation>) {
    if !rules.allows_image(image) {
        let prefixes = rules.images().unwrap_or_default().join(", ");
        out.push(v(
            format!("image {image} is not from an allowed registry or prefix ({prefixes})"),
            "its prefix in images",
        ));
    }
}

/// containerd's restart monitor acts on `containerd.io/restart.*` labels
/// (its `loguri` may name a program containerd then starts on this node):
/// never taken from a peer.
fn labels(container: &ContainerIdentity, out: &mut Vec<Violation>) {
    for key in container
        .labels
        .keys()
        .filter(|k| k.starts_with("containerd.io/restart."))
    {
        out.push(Violation {
            what: format!(
                "label {key} would have containerd's restart monitor act on this node; \
                 set restart policies on the destination, not through a migration"
            ),
            allow: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `ctr run`'s spec (containerd 1.7/2.x defaults) plus a seccomp profile.
    fn confined() -> Value {
        json!({
            "process": {"capabilities": {
                "bounding": ["CAP_CHOWN", "CAP_KILL"], "effective": ["CAP_CHOWN", "CAP_KILL"],
                "permitted": ["CAP_CHOWN", "CAP_KILL"]}},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["rw"]}],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                               {"type": "mount"}, {"type": "network"}],
                "maskedPaths": ["/proc/kcore"],
                "seccomp": {"defaultAction": "SCMP_ACT_ERRNO"},
                "resources": {"devices": [{"allow": false, "access": "rwm"}]}}
        })
    }

    fn container(spec: Value) -> ContainerIdentity {
        ContainerIdentity {
            id: "svc".into(),
            namespace: "default".into(),
            image: "localhost/mose-test/busybox:latest".into(),
            spec,
            labels: Default::default(),
            snapshotter: String::new(),
            runtime: String::new(),
        }
    }

    fn whats(r: &Rules, spec: Value) -> Vec<String> {
        violations(r, &container(spec))
            .into_iter()
            .map(|v| v.what)
            .collect()
    }

    #[test]
    fn a_confined_container_passes_the_defaults() {
        assert_eq!(whats(&Rules::default(), confined()), Vec::<String>::new());
    }

    #[test]
    fn a_privileged_spec_is_refused_on_every_count_and_admitted_when_allowed() {
        let mut s = confined();
        let all: Vec<String> = [
            "CAP_SYS_ADMIN",
            "CAP_NET_ADMIN",
            "CAP_SYS_MODULE",
            "CAP_BPF",
            "CAP_CHOWN",
            "CAP_PERFMON",
        ]
        .iter()
        .map(|c| c.to_string())
        .collect();
        s["process"]["capabilities"]["bounding"] = json!(all);
        s["linux"]["devices"] = json!([{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}]);
        s["linux"]["resources"]["devices"] = json!([{"allow": true, "access": "rwm"}]);
        s["linux"]["maskedPaths"] = json!([]);
        s["linux"].as_object_mut().map(|l| l.remove("seccomp"));
        s["process"]["apparmorProfile"] = json!("unconfined");
        let w = whats(&Rules::default(), s.clone());
        assert_eq!(w.len(), 6, "{w:?}");
        assert!(w[0].contains("CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN and 1 more"));
        let allowed = Rules {
            privileged: Some(true),
            ..Default::default()
        };
        assert_eq!(whats(&allowed, s), Vec::<String>::new());
    }

    #[test]
    fn host_namespaces_missing_or_joined_by_path_are_refused() {
        let mut s = confined();
        s["linux"]["namespaces"] = json!([{"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
            {"type": "network", "path": "/proc/1/ns/net"}]);
        let w = whats(&Rules::default(), s.clone());
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("joins the existing network namespace at /proc/1/ns/net"));
        assert!(w[1].contains("shares this node's pid namespace"));
        let r = Rules {
            host_namespaces: Some(vec!["network".into(), "pid".into()]),
            ..Default::default()
        };
        assert_eq!(whats(&r, s), Vec::<String>::new());
    }

    #[test]
    fn host_path_mounts_are_refused_unless_under_an_allowed_directory() {
        let mut s = confined();
        s["mounts"] = json!([
            {"destination": "/host", "type": "bind", "source": "/", "options": ["rbind", "rw"]},
            {"destination": "/data", "type": "none", "source": "/srv/data/a", "options": ["bind"]},
            {"destination": "/x", "type": "bind", "source": "/srv/data/../../etc"}]);
        let r = Rules {
            host_paths: Some(vec!["/srv/data".into()]),
            ..Default::default()
        };
        let vs = violations(&r, &container(s));
        assert_eq!(vs.len(), 2, "{vs:?}");
        assert_eq!(vs[0].what, "bind-mounts host path / at /host");
        assert_eq!(vs[0].allow.as_deref(), Some("host-paths = [\"/\"]"));
        assert!(vs[1].what.contains("not a plain absolute path") && vs[1].allow.is_none());
    }

    #[test]
    fn hooks_images_and_restart_labels_are_checked() {
        let mut s = confined();
        s["hooks"] = json!({"createRuntime": [{"path": "/tmp/evil"}], "poststart": [{"path": "/usr/bin/ok"}]});
        let r = Rules {
            hooks: Some(vec!["/usr/bin/ok".into()]),
            images: Some(vec!["registry.example/".into()]),
            ..Default::default()
        };
        let mut c = container(s);
        c.labels.insert(
            "containerd.io/restart.loguri".into(),
            "binary:///tmp/x".into(),
        );
        let w: Vec<String> = violations(&r, &c).into_iter().map(|v| v.what).collect();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(w[0].contains("createRuntime hook runs \"/tmp/evil\""));
        assert!(w[1].contains("image localhost/mose-test/busybox:latest is not from"));
        assert!(w[2].contains("containerd.io/restart.loguri"));
    }
}
