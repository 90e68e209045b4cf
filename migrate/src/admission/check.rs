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

pub(super) fn v(what: String, allow: &str) -> Violation {
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
    super::mounts::check(rules, spec, &mut out);
    devices(rules, spec, &mut out);
    confinement(rules, spec, &mut out);
    hooks(rules, spec, &mut out);
    annotations(rules, spec, &mut out);
    cgroups_path(spec, &mut out);
    image(rules, &container.image, &mut out);
    labels(container, &mut out);
    out
}

pub(super) fn strings(v: Option<&Value>) -> impl Iterator<Item = &str> {
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

/// The device cgroup rules containerd's default spec grants
/// (`oci.WithDefaultUnixDevices`): null, random, full, tty, zero, urandom,
/// console, the pts and ptmx; (type, major, minor), `None` for `*`.
const DEFAULT_DEVICES: &[(&str, Option<i64>, Option<i64>)] = &[
    ("c", Some(1), Some(3)),
    ("c", Some(1), Some(8)),
    ("c", Some(1), Some(7)),
    ("c", Some(5), Some(0)),
    ("c", Some(1), Some(5)),
    ("c", Some(1), Some(9)),
    ("c", Some(5), Some(1)),
    ("c", Some(136), None),
    ("c", Some(5), Some(2)),
];

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
    // beyond containerd's defaults, a rule granting read or write opens a
    // host device (with CAP_MKNOD in the default set, a node it can create)
    for d in spec
        .pointer("/linux/resources/devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|d| d.get("allow").and_then(Value::as_bool) == Some(true))
    {
        let access = d.get("access").and_then(Value::as_str).unwrap_or("rwm");
        let typ = d.get("type").and_then(Value::as_str).unwrap_or("a");
        let (major, minor) = (
            d.get("major").and_then(Value::as_i64),
            d.get("minor").and_then(Value::as_i64),
        );
        if !access.contains(['r', 'w']) || DEFAULT_DEVICES.contains(&(typ, major, minor)) {
            continue;
        }
        let num = |n: Option<i64>| n.map_or("*".to_string(), |n| n.to_string());
        out.push(v(
            format!(
                "its device cgroup allows {typ} {}:{} {access}",
                num(major),
                num(minor)
            ),
            "devices = true",
        ));
    }
}

/// Paths containerd's default spec masks and makes read-only (a subset
/// every containerd since 1.6 sets): without them container root reads
/// kernel memory (`/proc/kcore`) or writes host sysctls
/// (`/proc/sys/kernel/core_pattern`, a known escape).
const MASKED: &[&str] = &[
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/sys/firmware",
];
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn confinement(rules: &Rules, spec: &Value, out: &mut Vec<Violation>) {
    if !rules.unconfined() {
        seccomp_and_apparmor(spec, out);
    }
    if rules.privileged() {
        return;
    }
    for (key, required) in [("maskedPaths", MASKED), ("readonlyPaths", READONLY)] {
        let listed: Vec<&str> = strings(spec.pointer(&format!("/linux/{key}"))).collect();
        let missing: Vec<&str> = required
            .iter()
            .copied()
            .filter(|p| !listed.contains(p))
            .collect();
        if !missing.is_empty() {
            out.push(v(
                format!("linux.{key} leaves out {}", missing.join(", ")),
                "privileged = true",
            ));
        }
    }
    let sys_rw = spec
        .get("mounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|m| m.get("type").and_then(Value::as_str) == Some("sysfs"))
        .any(|m| !strings(m.get("options")).any(|o| o == "ro"));
    if sys_rw {
        out.push(v("mounts /sys writable".into(), "privileged = true"));
    }
}

fn seccomp_and_apparmor(spec: &Value, out: &mut Vec<Violation>) {
    match spec.pointer("/linux/seccomp") {
        None | Some(Value::Null) => out.push(v(
            "runs without a seccomp profile (linux.seccomp is unset; `ctr run --seccomp` sets \
             containerd's default)"
                .into(),
            "unconfined = true",
        )),
        Some(profile) => {
            let default = profile.get("defaultAction").and_then(Value::as_str);
            if matches!(default, Some("SCMP_ACT_ALLOW" | "SCMP_ACT_LOG")) {
                out.push(v(
                    format!(
                        "its seccomp profile lets every syscall through by default ({})",
                        default.unwrap_or_default()
                    ),
                    "unconfined = true",
                ));
            }
        }
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

/// Annotation prefixes an OCI runtime or CRIU acts on: runc hands
/// `org.criu.config` to CRIU (whose `action-script` runs as root on the
/// node), applies `org.systemd.property.*` to the container's unit, and
/// crun reads `run.oci.*`.
const RUNTIME_ANNOTATIONS: &[&str] = &["org.criu.", "org.systemd.property.", "run.oci."];

fn annotations(rules: &Rules, spec: &Value, out: &mut Vec<Violation>) {
    let Some(all) = spec.get("annotations").and_then(Value::as_object) else {
        return;
    };
    for key in all.keys().filter(|k| {
        RUNTIME_ANNOTATIONS.iter().any(|p| k.starts_with(p)) && !rules.allows_annotation(k)
    }) {
        out.push(v(
            format!("annotation {key} tells the OCI runtime or CRIU what to do on this node"),
            &format!("annotations = [\"{key}\"]"),
        ));
    }
}

/// This node places the peer's cgroup under its own (`/mose-node-<node>/…`,
/// see the receiver's restore); `..` would climb out of it.
fn cgroups_path(spec: &Value, out: &mut Vec<Violation>) {
    if let Some(p) = spec.pointer("/linux/cgroupsPath").and_then(Value::as_str) {
        if p.split(['/', ':']).any(|c| c == "..") {
            out.push(Violation {
                what: format!("linux.cgroupsPath {p:?} climbs out of this node's cgroup with .."),
                allow: None,
            });
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
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["rw"]}],
            "annotations": {"mose.io/max-downtime": "200ms"},
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                               {"type": "mount"}, {"type": "network"}],
                "cgroupsPath": "/default/svc",
                "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                    "/proc/scsi"],
                "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq",
                    "/proc/sys", "/proc/sysrq-trigger"],
                "seccomp": {"defaultAction": "SCMP_ACT_ERRNO"},
                "resources": {"devices": [{"allow": false, "access": "rwm"},
                    {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                    {"allow": true, "type": "c", "major": 136, "access": "rwm"}]}}
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
        s["linux"]
            .as_object_mut()
            .map(|l| l.remove("readonlyPaths"));
        s["mounts"][1]["options"] = json!(["nosuid", "rw"]);
        s["linux"].as_object_mut().map(|l| l.remove("seccomp"));
        s["process"]["apparmorProfile"] = json!("unconfined");
        let w = whats(&Rules::default(), s.clone());
        // capabilities, devices, the device cgroup, seccomp, AppArmor,
        // masked paths, read-only paths, writable /sys
        assert_eq!(w.len(), 8, "{w:?}");
        assert!(w[2].contains("allows a *:* rwm"), "{w:?}");
        assert!(w[5].contains("leaves out /proc/kcore, /proc/keys"), "{w:?}");
        assert!(w[6].contains("readonlyPaths leaves out /proc/bus"), "{w:?}");
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

    #[test]
    fn a_device_rule_granting_access_or_an_allow_all_seccomp_is_refused() {
        let mut s = confined();
        s["linux"]["resources"]["devices"] = json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "b", "access": "m"},
            {"allow": true, "type": "b", "major": 8, "access": "rw"}]);
        s["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW"});
        let w = whats(&Rules::default(), s);
        assert_eq!(
            w,
            [
                "its device cgroup allows b 8:* rw",
                "its seccomp profile lets every syscall through by default (SCMP_ACT_ALLOW)"
            ]
        );
    }

    #[test]
    fn runtime_annotations_and_a_climbing_cgroup_path_are_refused() {
        let mut s = confined();
        s["annotations"]["org.criu.config"] = json!("/run/x/rootfs/evil.conf");
        s["annotations"]["run.oci.keep_original_groups"] = json!("1");
        s["linux"]["cgroupsPath"] = json!("/default/../../system.slice/x");
        let r = Rules {
            annotations: Some(vec!["run.oci.keep_original_groups".into()]),
            ..Default::default()
        };
        let vs = violations(&r, &container(s));
        assert_eq!(vs.len(), 2, "{vs:?}");
        assert!(vs[0].what.contains("annotation org.criu.config"), "{vs:?}");
        assert_eq!(
            vs[0].allow.as_deref(),
            Some("annotations = [\"org.criu.config\"]")
        );
        assert!(
            vs[1].what.contains("climbs out") && vs[1].allow.is_none(),
            "{vs:?}"
        );
    }
}
