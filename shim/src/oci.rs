//! The OCI runtime spec as the shim reads and changes it.
//!
//! The shim reads a bundle's `config.json`, and the spec in containerd's
//! record of a container, as the typed [`oci_spec::runtime::Spec`], and an
//! exec's process spec as [`oci_spec::runtime::Process`]: every question the
//! shim asks of a spec is asked of that typed view.
//!
//! It never writes the typed view back, though, because oci-spec 0.10 does
//! not round-trip a spec (test `typed_serialization_is_not_faithful`): it
//! drops every field it does not know (a later runtime-spec's, a runtime's
//! extension), keeps capability sets as hash sets (their order changes from
//! one write to the next, duplicates go) and rewrites capability names
//! (`SYS_ADMIN`, `cap_kill` become `CAP_SYS_ADMIN`, `CAP_KILL`: a name runc
//! ignores as unknown would become a capability the container is granted).
//! So a [`Document`] keeps the JSON it was read from beside its typed view,
//! and an edit (`set_annotation`, `set_cgroups_path`, `set_terminal`) sets
//! the one JSON member it names, then reads the typed view anew from the
//! edited JSON. What the shim writes is therefore the document it read with
//! exactly that member changed (serialized as before: the member order of
//! serde_json's map), and the typed view is always what a reader of the
//! written bytes gets (tests `round_trip_*`).
//!
//! The typed view reads a spec as runc's Go types do where oci-spec is
//! stricter: an absent `process.user` or `process.cwd` reads as Go's zero
//! value (root, ""), as runc reads it. oci-spec also refuses what the
//! runtimes accept in fields the shim never reads (runc ignores a capability
//! it does not know, with a warning; oci-spec refuses the spec). A field the
//! typed view cannot read therefore fails the read only when the shim reads
//! it ([`Kind::READ`]), with an error naming the field; any other is left out
//! of the typed view (and logged), and the runtime judges it, as it judges
//! every field oci-spec does not know. Either way the field stays in what the
//! shim writes.

use std::ops::Deref;

use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use serde_path_to_error::Segment;
use tracing::warn;

/// An OCI document the shim reads: its typed view and the JSON it came from.
#[derive(Debug, Clone)]
pub struct Document<T> {
    json: Map<String, Value>,
    typed: T,
}

/// A container's OCI runtime spec (`config.json`).
pub type BundleSpec = Document<Spec>;
/// The OCI process spec of an exec.
pub type ExecSpec = Document<Process>;

/// What the typed view of a kind of document needs to know.
pub trait Kind: DeserializeOwned {
    /// The members the shim reads, as member paths. A field that the typed
    /// view cannot read fails the read when it is (in) one of these, and is
    /// left to the runtime otherwise.
    const READ: &'static [&'static [&'static str]];

    /// Adjusts the copy of the JSON that becomes the typed view (never the
    /// JSON written back); an error refuses the document.
    fn prepare(json: &mut Map<String, Value>) -> Result<(), String>;
}

impl Kind for Spec {
    const READ: &'static [&'static [&'static str]] = &[
        &["ociVersion"],
        &["root"],
        &["annotations"],
        &["process", "args"],
        &["process", "cwd"],
        &["process", "user"],
        &["process", "terminal"],
        &["linux", "namespaces"],
        &["linux", "cgroupsPath"],
    ];

    fn prepare(json: &mut Map<String, Value>) -> Result<(), String> {
        if let Some(Value::Object(process)) = json.get_mut("process") {
            go_zero_values(process);
        }
        // Annotation values are strings. A `mose.io/*` one that is not is the
        // user's typo, refused here; any other is the runtime's to judge (as
        // before the typed view), so the typed view goes without it.
        if let Some(Value::Object(annotations)) = json.get_mut("annotations") {
            if let Some((key, value)) = annotations
                .iter()
                .find(|(k, v)| !v.is_string() && k.starts_with(mose_policy::annotations::PREFIX))
            {
                return Err(format!("annotation {key}={value}: expected a string value"));
            }
            annotations.retain(|_, v| v.is_string());
        }
        Ok(())
    }
}

impl Kind for Process {
    const READ: &'static [&'static [&'static str]] =
        &[&["args"], &["cwd"], &["user"], &["terminal"]];

    fn prepare(json: &mut Map<String, Value>) -> Result<(), String> {
        go_zero_values(json);
        Ok(())
    }
}

/// Go's runtime-spec types always carry a process's `user` and `cwd`
/// (`json:"user"`, `json:"cwd"`, no omitempty), and runc reads an absent one
/// as the zero value; oci-spec requires both.
fn go_zero_values(process: &mut Map<String, Value>) {
    for (key, zero) in [("user", Value::Object(Map::new())), ("cwd", "".into())] {
        let slot = process.entry(key).or_insert(Value::Null);
        if slot.is_null() {
            *slot = zero;
        }
    }
}

impl<T> Deref for Document<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.typed
    }
}

impl<T: Kind> Document<T> {
    /// Reads a document from its JSON bytes. The error names what is wrong
    /// (the field, for a field the shim reads) and is meant to follow the
    /// document's name: "invalid OCI spec <path>: <error>".
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let json = match serde_json::from_slice(bytes) {
            Ok(Value::Object(json)) => json,
            Ok(_) => return Err("not a JSON object".into()),
            Err(e) => return Err(format!("not valid JSON: {e}")),
        };
        let typed = typed_view(&json, true)?;
        Ok(Self { json, typed })
    }

    /// The document as the shim writes it: the JSON it was read from with the
    /// shim's edits applied.
    pub fn to_vec(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(&self.json).map_err(|e| format!("serialize the OCI document: {e}"))
    }

    /// Sets member `path` (created with its parents when absent) of the JSON
    /// to `value` and reads the typed view anew; on an error nothing changes.
    fn set(&mut self, path: &[&str], value: Value) -> Result<(), String> {
        let Some((last, parents)) = path.split_last() else {
            return Err("no member to set".into());
        };
        let mut json = self.json.clone();
        let mut obj = &mut json;
        for (i, key) in parents.iter().enumerate() {
            let slot = obj.entry(*key).or_insert(Value::Null);
            if slot.is_null() {
                *slot = Value::Object(Map::new());
            }
            obj = slot.as_object_mut().ok_or_else(|| {
                format!(
                    "cannot set {}: {} is not an object",
                    path.join("."),
                    parents[..=i].join(".")
                )
            })?;
        }
        obj.insert(last.to_string(), value);
        let typed = typed_view(&json, false)?;
        self.json = json;
        self.typed = typed;
        Ok(())
    }
}

impl<T: Kind> Document<T> {
    /// Applies `f` to a copy of the JSON and reads the typed view anew; on
    /// an error nothing changes.
    fn edit(
        &mut self,
        f: impl FnOnce(&mut Map<String, Value>) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut json = self.json.clone();
        f(&mut json)?;
        let typed = typed_view(&json, false)?;
        self.json = json;
        self.typed = typed;
        Ok(())
    }
}

impl Document<Spec> {
    /// Points the `linux.namespaces` entry of type `typ` (e.g. `network`) at
    /// `path`, so the runtime joins that namespace; fails when the spec
    /// lists no such namespace.
    pub fn set_namespace_path(&mut self, typ: &str, path: &str) -> Result<(), String> {
        self.edit(|json| {
            let entry = json
                .get_mut("linux")
                .and_then(|l| l.get_mut("namespaces"))
                .and_then(Value::as_array_mut)
                .and_then(|ns| {
                    ns.iter_mut()
                        .find(|n| n.get("type").and_then(Value::as_str) == Some(typ))
                })
                .and_then(Value::as_object_mut)
                .ok_or_else(|| format!("linux.namespaces lists no {typ} namespace"))?;
            entry.insert("path".into(), path.into());
            Ok(())
        })
    }

    /// Appends `hook` (`{"path", "args", "env", "timeout"}`) to `hooks.<kind>`
    /// (e.g. `poststart`), after the hooks already there.
    pub fn add_hook(&mut self, kind: &str, hook: Value) -> Result<(), String> {
        self.edit(|json| {
            let hooks = json
                .entry("hooks")
                .or_insert_with(|| Value::Object(Map::new()));
            if hooks.is_null() {
                *hooks = Value::Object(Map::new());
            }
            let list = hooks
                .as_object_mut()
                .ok_or("hooks is not an object")?
                .entry(kind)
                .or_insert_with(|| Value::Array(Vec::new()));
            if list.is_null() {
                *list = Value::Array(Vec::new());
            }
            list.as_array_mut()
                .ok_or_else(|| format!("hooks.{kind} is not a list"))?
                .push(hook);
            Ok(())
        })
    }

    /// Sets annotation `key` to `value`.
    pub fn set_annotation(&mut self, key: &str, value: &str) -> Result<(), String> {
        self.set(&["annotations", key], value.into())
    }

    /// Sets `linux.cgroupsPath`.
    pub fn set_cgroups_path(&mut self, path: &str) -> Result<(), String> {
        self.set(&["linux", "cgroupsPath"], path.into())
    }
}

impl Document<Process> {
    /// Sets whether the process gets a terminal.
    pub fn set_terminal(&mut self, terminal: bool) -> Result<(), String> {
        self.set(&["terminal"], terminal.into())
    }
}

/// Most fields the typed view leaves out of one document (each a field that
/// oci-spec cannot read, outside those the shim reads).
const MAX_LEFT_OUT: usize = 64;

/// The typed view of `json` (see the module documentation).
fn typed_view<T: Kind>(json: &Map<String, Value>, log: bool) -> Result<T, String> {
    let mut copy = json.clone();
    T::prepare(&mut copy)?;
    let mut doc = Value::Object(copy);
    for _ in 0..MAX_LEFT_OUT {
        let e = match serde_path_to_error::deserialize::<_, T>(&doc) {
            Ok(typed) => return Ok(typed),
            Err(e) => e,
        };
        let field = e.path().to_string();
        let Some(member) = left_to_runtime(T::READ, e.path()) else {
            return Err(format!(
                "{field}: {}; correct it to the form the OCI runtime spec gives",
                e.inner()
            ));
        };
        if !remove(&mut doc, &member) {
            return Err(format!("{field}: {}", e.inner()));
        }
        if log {
            warn!(field = %field, error = %e.inner(),
                "the shim reads the OCI spec without this field, which it cannot type; the runtime judges it");
        }
    }
    Err(format!(
        "more than {MAX_LEFT_OUT} fields of the OCI document cannot be read"
    ))
}

/// The member to leave out of the typed view for an error at `path`: the
/// outermost one holding the error that neither is nor holds nor lies in a
/// member the shim reads; `None` when the error is in such a member.
fn left_to_runtime(read: &[&[&str]], path: &serde_path_to_error::Path) -> Option<Vec<String>> {
    let keys: Vec<&str> = path
        .iter()
        .map_while(|s| match s {
            Segment::Map { key } => Some(key.as_str()),
            _ => None,
        })
        .collect();
    for n in 1..=keys.len() {
        let member = &keys[..n];
        if read.iter().any(|r| member.starts_with(r)) {
            return None; // in a member the shim reads
        }
        if !read.iter().any(|r| r.starts_with(member)) {
            return Some(member.iter().map(|k| k.to_string()).collect());
        }
    }
    None // in a member that holds one the shim reads
}

/// Removes member `path` from `doc`; false when it is not there.
fn remove(doc: &mut Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut v = doc;
    for key in parents {
        match v.get_mut(key.as_str()) {
            Some(next) => v = next,
            None => return false,
        }
    }
    v.as_object_mut()
        .is_some_and(|o| o.remove(last.as_str()).is_some())
}

/// True when `spec` asks for a new namespace of type `typ`: one listed
/// without a path, which the runtime creates (one given by path is joined).
pub fn creates_namespace(spec: &Spec, typ: LinuxNamespaceType) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter().any(|n| {
                n.typ() == typ && n.path().as_ref().is_none_or(|p| p.as_os_str().is_empty())
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A container's spec as containerd's CRI writes it for runc: every kind
    /// of member runc reads (namespaces, mounts, hooks, annotations,
    /// resources, seccomp, id mappings, devices, masked paths, ...).
    const CRI_SPEC: &str = include_str!("testdata/containerd-cri-config.json");

    fn value(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    fn bundle(v: Value) -> BundleSpec {
        BundleSpec::parse(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn round_trip_without_edits_is_the_input() {
        let doc = BundleSpec::parse(CRI_SPEC.as_bytes()).unwrap();
        assert_eq!(value(&doc.to_vec().unwrap()), value(CRI_SPEC.as_bytes()));
        // and the typed view reads what the shim asks
        assert_eq!(doc.version(), "1.1.0");
        assert!(creates_namespace(&doc, LinuxNamespaceType::Pid));
        assert!(!creates_namespace(&doc, LinuxNamespaceType::Network));
        assert!(!creates_namespace(&doc, LinuxNamespaceType::Ipc));
        assert!(!creates_namespace(&doc, LinuxNamespaceType::Time));
        let linux = doc.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(std::path::Path::new(
                "kubepods-burstable-pod6f1c.slice:cri-containerd:1a2b3c"
            ))
        );
        let ann = doc.annotations().as_ref().unwrap();
        assert_eq!(ann["mose.io/max-downtime"], "200ms");
    }

    #[test]
    fn round_trip_of_an_edit_changes_that_member_only() {
        let mut doc = BundleSpec::parse(CRI_SPEC.as_bytes()).unwrap();
        doc.set_annotation("org.criu.config", "/b/mose-criu.conf")
            .unwrap();
        doc.set_cgroups_path("/k8s/c2").unwrap();
        let mut expected = value(CRI_SPEC.as_bytes());
        expected["annotations"]["org.criu.config"] = "/b/mose-criu.conf".into();
        expected["linux"]["cgroupsPath"] = "/k8s/c2".into();
        let written = doc.to_vec().unwrap();
        assert_eq!(value(&written), expected);
        // the typed view is the written document's
        let reread = BundleSpec::parse(&written).unwrap();
        assert_eq!(*reread, *doc);
        assert_eq!(
            doc.annotations().as_ref().unwrap()["org.criu.config"],
            "/b/mose-criu.conf"
        );
        let linux = doc.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(std::path::Path::new("/k8s/c2"))
        );
    }

    /// Byte for byte what the shim wrote while it edited the spec as an
    /// untyped `serde_json::Value`.
    #[test]
    fn round_trip_writes_the_bytes_the_untyped_shim_wrote() {
        let mut old: Value = serde_json::from_str(CRI_SPEC).unwrap();
        let ann = old["annotations"].as_object_mut().unwrap();
        ann.insert("org.criu.config".into(), "/b/mose-criu.conf".into());
        let linux = old["linux"].as_object_mut().unwrap();
        linux.insert("cgroupsPath".into(), "/k8s/c2".into());
        let mut doc = BundleSpec::parse(CRI_SPEC.as_bytes()).unwrap();
        doc.set_annotation("org.criu.config", "/b/mose-criu.conf")
            .unwrap();
        doc.set_cgroups_path("/k8s/c2").unwrap();
        assert_eq!(doc.to_vec().unwrap(), serde_json::to_vec(&old).unwrap());

        let sent = r#"{"user":{"uid":0,"gid":0},"args":["sh"],"cwd":"/","x":[1]}"#;
        let mut old: Value = serde_json::from_str(sent).unwrap();
        old["terminal"] = true.into();
        let mut p = ExecSpec::parse(sent.as_bytes()).unwrap();
        p.set_terminal(true).unwrap();
        assert_eq!(p.to_vec().unwrap(), serde_json::to_vec(&old).unwrap());
    }

    #[test]
    fn round_trip_keeps_what_oci_spec_does_not_know() {
        let input = json!({
            "ociVersion": "1.3.0",
            "x-vendor": {"a": [1, 2]},
            "process": {
                "args": ["sh"], "cwd": "/", "futureField": true,
                "capabilities": {"bounding": ["SYS_ADMIN", "cap_kill", "CAP_KILL"]}
            },
            "linux": {"futureLinux": {"a": 1}, "namespaces": [{"type": "pid"}]},
            "annotations": {"example.com/number": 3}
        });
        let mut doc = bundle(input.clone());
        doc.set_annotation("k", "v").unwrap();
        let mut expected = input;
        expected["annotations"]["k"] = "v".into();
        assert_eq!(value(&doc.to_vec().unwrap()), expected);
        // the typed view reads the rest (an absent user is Go's zero value)
        assert_eq!(doc.process().as_ref().unwrap().user().uid(), 0);
        assert!(creates_namespace(&doc, LinuxNamespaceType::Pid));
    }

    /// Why the shim never writes the typed view: oci-spec 0.10 loses or
    /// changes what the runtimes read. Should this test fail, oci-spec has
    /// become faithful for these cases; the JSON-keeping `Document` stays
    /// correct either way.
    #[test]
    fn typed_serialization_is_not_faithful() {
        let input = json!({
            "ociVersion": "1.3.0",
            "x-vendor": 1,
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                "capabilities": {"bounding": ["SYS_ADMIN"]}}
        });
        let typed: Spec = serde_json::from_value(input.clone()).unwrap();
        let out = serde_json::to_value(&typed).unwrap();
        assert!(out.get("x-vendor").is_none(), "unknown fields dropped");
        assert_eq!(
            out["process"]["capabilities"]["bounding"],
            json!(["CAP_SYS_ADMIN"]),
            "capability names rewritten"
        );
        // the realistic spec: only the capability sets' order may differ
        let cri: Spec = serde_json::from_str(CRI_SPEC).unwrap();
        let mut out = serde_json::to_value(&cri).unwrap();
        let mut input = value(CRI_SPEC.as_bytes());
        for v in [&mut out, &mut input] {
            for set in ["bounding", "effective", "permitted"] {
                let caps = v["process"]["capabilities"][set].as_array_mut().unwrap();
                caps.sort_by_key(|c| c.to_string());
            }
        }
        assert_eq!(out, input);
    }

    #[test]
    fn annotations_edit_creates_the_map_and_keeps_others() {
        let mut doc = bundle(json!({"ociVersion": "1.0.2"}));
        assert!(doc.annotations().is_none());
        doc.set_annotation("io.mose.checkpoint.generation", "1")
            .unwrap();
        assert_eq!(
            value(&doc.to_vec().unwrap()),
            json!({"ociVersion": "1.0.2", "annotations": {"io.mose.checkpoint.generation": "1"}})
        );
        let mut doc = bundle(json!({"ociVersion": "1.0.2", "annotations": null}));
        doc.set_annotation("a", "1").unwrap();
        doc.set_annotation("a", "2").unwrap();
        doc.set_annotation("b", "3").unwrap();
        assert_eq!(
            value(&doc.to_vec().unwrap())["annotations"],
            json!({"a": "2", "b": "3"})
        );
        assert_eq!(doc.annotations().as_ref().unwrap().len(), 2);
    }

    #[test]
    fn cgroups_path_edit_creates_linux_when_absent() {
        let mut doc = bundle(json!({"ociVersion": "1.0.2"}));
        doc.set_cgroups_path("/default/c2").unwrap();
        assert_eq!(
            value(&doc.to_vec().unwrap()),
            json!({"ociVersion": "1.0.2", "linux": {"cgroupsPath": "/default/c2"}})
        );
    }

    #[test]
    fn namespace_queries() {
        let doc = bundle(json!({"ociVersion": "1.0.2", "linux": {"namespaces": [
            {"type": "pid"},
            {"type": "network", "path": "/run/netns/x"},
            {"type": "mount", "path": ""},
            {"type": "time"}
        ]}}));
        assert!(creates_namespace(&doc, LinuxNamespaceType::Pid));
        assert!(!creates_namespace(&doc, LinuxNamespaceType::Network));
        assert!(creates_namespace(&doc, LinuxNamespaceType::Mount));
        assert!(creates_namespace(&doc, LinuxNamespaceType::Time));
        assert!(!creates_namespace(&doc, LinuxNamespaceType::User));
        let doc = bundle(json!({"ociVersion": "1.0.2"}));
        assert!(!creates_namespace(&doc, LinuxNamespaceType::Pid));
        let e = BundleSpec::parse(
            br#"{"ociVersion":"1","linux":{"namespaces":[{"type":"pid"},{"type":"netw"}]}}"#,
        )
        .unwrap_err();
        assert!(
            e.starts_with("linux.namespaces[1].type: unknown variant `netw`"),
            "{e}"
        );
        assert!(e.contains("correct it"), "{e}");
    }

    #[test]
    fn malformed_fields_the_shim_reads_are_named() {
        let e = BundleSpec::parse(br#"{"ociVersion":1}"#).unwrap_err();
        assert!(e.starts_with("ociVersion: invalid type: integer"), "{e}");
        let e = BundleSpec::parse(br#"{"ociVersion":"1","process":{"args":"sh"}}"#).unwrap_err();
        assert!(e.starts_with("process.args: invalid type: string"), "{e}");
        let e = BundleSpec::parse(br#"{"ociVersion":"1","linux":{"cgroupsPath":7}}"#).unwrap_err();
        assert!(e.starts_with("linux.cgroupsPath: "), "{e}");
        let e = BundleSpec::parse(br#"{"ociVersion":"1","root":{"path":[]}}"#).unwrap_err();
        assert!(e.starts_with("root.path: "), "{e}");
        let e = BundleSpec::parse(br#"{"ociVersion":"1","process":[]}"#).unwrap_err();
        assert!(e.starts_with("process: "), "{e}");
        let e = BundleSpec::parse(br#"{"ociVersion":"1","#).unwrap_err();
        assert!(e.starts_with("not valid JSON: "), "{e}");
        assert!(e.contains("line 1"), "{e}");
        let e = BundleSpec::parse(b"[1]").unwrap_err();
        assert_eq!(e, "not a JSON object");
    }

    #[test]
    fn fields_the_shim_does_not_read_are_left_to_the_runtime() {
        // runc ignores an unknown capability and judges seccomp itself
        let input = json!({"ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/",
                "capabilities": {"bounding": ["CAP_KILL", "CAP_FUTURE"]}},
            "linux": {"seccomp": {"defaultAction": "SCMP_ACT_FUTURE"},
                "namespaces": [{"type": "network"}]},
            "mounts": [{"type": "tmpfs"}]});
        let mut doc = bundle(input.clone());
        let p = doc.process().as_ref().unwrap();
        assert!(p.capabilities().is_none());
        assert_eq!(p.args().as_deref(), Some(&["sh".to_string()][..]));
        assert!(doc.mounts().is_none());
        assert!(creates_namespace(&doc, LinuxNamespaceType::Network));
        doc.set_cgroups_path("/x").unwrap();
        let mut expected = input;
        expected["linux"]["cgroupsPath"] = "/x".into();
        assert_eq!(value(&doc.to_vec().unwrap()), expected);
    }

    #[test]
    fn exec_process_spec_with_and_without_terminal() {
        // as containerd sends it (ctr exec, CRI exec)
        let sent = json!({"user": {"uid": 0, "gid": 0}, "args": ["sh", "-c", "id"],
            "env": ["PATH=/bin"], "cwd": "/",
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"]},
            "noNewPrivileges": true, "x-future": {"k": 1}});
        let mut p = ExecSpec::parse(sent.to_string().as_bytes()).unwrap();
        assert_eq!(p.terminal(), None);
        assert_eq!(p.args().as_ref().unwrap().len(), 3);
        p.set_terminal(true).unwrap();
        assert_eq!(p.terminal(), Some(true));
        let mut expected = sent.clone();
        expected["terminal"] = true.into();
        assert_eq!(value(&p.to_vec().unwrap()), expected);
        p.set_terminal(false).unwrap();
        assert_eq!(p.terminal(), Some(false));
        expected["terminal"] = false.into();
        assert_eq!(value(&p.to_vec().unwrap()), expected);

        let with = json!({"terminal": true, "args": ["sh"], "cwd": "/",
            "consoleSize": {"height": 24, "width": 80}});
        let mut p = ExecSpec::parse(with.to_string().as_bytes()).unwrap();
        assert_eq!(p.terminal(), Some(true));
        assert_eq!(p.console_size().map(|b| b.width()), Some(80));
        p.set_terminal(false).unwrap();
        let mut expected = with;
        expected["terminal"] = false.into();
        assert_eq!(value(&p.to_vec().unwrap()), expected);

        let e = ExecSpec::parse(br#"{"args":["sh"],"terminal":"yes"}"#).unwrap_err();
        assert!(e.starts_with("terminal: invalid type: string"), "{e}");
    }
}
