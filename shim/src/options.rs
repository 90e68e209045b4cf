//! Runtime and checkpoint options: what containerd hands the shim as
//! protobuf `Any` values, decoded and validated in one place.
//!
//! Runtime options arrive as `containerd.runc.v1.Options` (gRPC clients, CRI
//! with runc-style options) or `runtimeoptions.v1.Options` (`ctr
//! --runtime-config-path`, CRI's generic options), whose `config_path` names a
//! TOML file with the same keys. containerd's client library sends the older
//! `containerd.linux.runc.CreateOptions` (create) and
//! `containerd.linux.runc.CheckpointOptions` (checkpoint) to every runtime not
//! named `io.containerd.runc*`; they mean what they mean to containerd's runc
//! shim. Checkpoint options otherwise arrive as
//! `containerd.runc.v1.CheckpointOptions`. The two checkpoint types differ on
//! the wire: `image_path`/`work_path` are fields 8/9 in the runc.v1 type and
//! 9/8 in the legacy one (containerd's `runtime/linux/runctypes/runc.proto`).

use std::path::PathBuf;

use containerd_shim_protos::{
    protobuf::{well_known_types::any::Any, CodedInputStream, Message},
    shim::oci::{CheckpointOptions as PbCheckpointOptions, Options as PbOptions},
};
use serde::Deserialize;

use crate::error::{Error, Result};

pub const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";
pub const GENERIC_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";
/// MOSE's own task options (JSON): runtime options plus the CRIU image a
/// migration destination restores from, without a detour through
/// containerd's content store (disk).
pub const MOSE_OPTIONS_TYPE: &str = mose_contract::OPTIONS_TYPE;
pub const RUNC_CHECKPOINT_TYPE: &str = "containerd.runc.v1.CheckpointOptions";
pub const LINUX_CHECKPOINT_TYPE: &str = "containerd.linux.runc.CheckpointOptions";
pub const LINUX_CREATE_TYPE: &str = "containerd.linux.runc.CreateOptions";

/// `containerd.linux.runc.CreateOptions`, field numbers from containerd's
/// `runtime/linux/runctypes/runc.proto`. Its generated type is not part of
/// the shim protos, so prost derives the decoder.
#[derive(Clone, PartialEq, prost::Message)]
struct LegacyCreateOptions {
    #[prost(bool, tag = "1")]
    no_pivot_root: bool,
    #[prost(bool, tag = "2")]
    open_tcp: bool,
    #[prost(bool, tag = "3")]
    external_unix_sockets: bool,
    #[prost(bool, tag = "4")]
    terminal: bool,
    #[prost(bool, tag = "5")]
    file_locks: bool,
    #[prost(string, repeated, tag = "6")]
    empty_namespaces: Vec<String>,
    #[prost(string, tag = "7")]
    cgroups_mode: String,
    #[prost(bool, tag = "8")]
    no_new_keyring: bool,
    #[prost(string, tag = "9")]
    shim_cgroup: String,
    #[prost(uint32, tag = "10")]
    io_uid: u32,
    #[prost(uint32, tag = "11")]
    io_gid: u32,
    #[prost(string, tag = "12")]
    criu_work_path: String,
    #[prost(string, tag = "13")]
    criu_image_path: String,
}

/// `containerd.linux.runc.CheckpointOptions` (same source): like the runc.v1
/// type but with `work_path` = 8 and `image_path` = 9.
#[derive(Clone, PartialEq, prost::Message)]
struct LegacyCheckpointOptions {
    #[prost(bool, tag = "1")]
    exit: bool,
    #[prost(bool, tag = "2")]
    open_tcp: bool,
    #[prost(bool, tag = "3")]
    external_unix_sockets: bool,
    #[prost(bool, tag = "4")]
    terminal: bool,
    #[prost(bool, tag = "5")]
    file_locks: bool,
    #[prost(string, repeated, tag = "6")]
    empty_namespaces: Vec<String>,
    #[prost(string, tag = "7")]
    cgroups_mode: String,
    #[prost(string, tag = "8")]
    work_path: String,
    #[prost(string, tag = "9")]
    image_path: String,
}

/// The OCI runtime binary used when the options name none.
pub const DEFAULT_BINARY: &str = "runc";

/// How the shim drives the OCI runtime for one container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuntimeOptions {
    /// OCI runtime binary: `runc` (default), `crun`, `youki` or a path.
    pub binary_name: String,
    /// `--root` for the runtime's state; empty means the shim's default.
    pub root: String,
    pub systemd_cgroup: bool,
    pub no_pivot_root: bool,
    pub no_new_keyring: bool,
    /// Default image/work paths for checkpoints that do not name their own.
    pub criu_image_path: String,
    pub criu_work_path: String,
    pub io_uid: u32,
    pub io_gid: u32,
    pub shim_cgroup: String,
    /// Restore the task from this CRIU image directory (migration destination).
    pub restore_image: String,
    /// Restore lazily: anonymous memory is left out and CRIU hands each
    /// process's userfaultfd to the MOSE lazy-page handler listening here
    /// (post-copy and hybrid migration).
    pub lazy_pages_socket: String,
}

impl RuntimeOptions {
    pub fn binary(&self) -> &str {
        if self.binary_name.is_empty() {
            DEFAULT_BINARY
        } else {
            &self.binary_name
        }
    }
}

/// The TOML form of the runtime options (file named by `runtimeoptions.v1.Options`).
/// Keys follow containerd's runc options so one file serves both shims.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TomlOptions {
    #[serde(rename = "BinaryName", default)]
    binary_name: String,
    #[serde(rename = "Root", default)]
    root: String,
    #[serde(rename = "SystemdCgroup", default)]
    systemd_cgroup: bool,
    #[serde(rename = "NoPivotRoot", default)]
    no_pivot_root: bool,
    #[serde(rename = "NoNewKeyring", default)]
    no_new_keyring: bool,
    #[serde(rename = "CriuImagePath", default)]
    criu_image_path: String,
    #[serde(rename = "CriuWorkPath", default)]
    criu_work_path: String,
    #[serde(rename = "IoUid", default)]
    io_uid: u32,
    #[serde(rename = "IoGid", default)]
    io_gid: u32,
    #[serde(rename = "ShimCgroup", default)]
    shim_cgroup: String,
}

fn type_name(any: &Any) -> &str {
    any.type_url.rsplit('/').next().unwrap_or_default()
}

/// Decodes the runtime options of a Create request. `None` or an empty `Any`
/// yields the defaults; an unknown type is rejected rather than ignored, so a
/// misconfigured runtime class fails loudly at create.
pub fn decode_runtime_options(any: Option<&Any>) -> Result<RuntimeOptions> {
    let Some(any) = any.filter(|a| !a.type_url.is_empty()) else {
        return Ok(RuntimeOptions::default());
    };
    match type_name(any) {
        RUNC_OPTIONS_TYPE => {
            let o = PbOptions::parse_from_bytes(&any.value).map_err(|e| {
                Error::InvalidArgument(format!(
                    "malformed {RUNC_OPTIONS_TYPE} runtime options: {e}"
                ))
            })?;
            Ok(RuntimeOptions {
                binary_name: o.binary_name,
                root: o.root,
                systemd_cgroup: o.systemd_cgroup,
                no_pivot_root: o.no_pivot_root,
                no_new_keyring: o.no_new_keyring,
                criu_image_path: o.criu_image_path,
                criu_work_path: o.criu_work_path,
                io_uid: o.io_uid,
                io_gid: o.io_gid,
                shim_cgroup: o.shim_cgroup,
                restore_image: String::new(),
                lazy_pages_socket: String::new(),
            })
        }
        LINUX_CREATE_TYPE => {
            let o = <LegacyCreateOptions as prost::Message>::decode(any.value.as_slice()).map_err(
                |e| {
                    Error::InvalidArgument(format!(
                        "malformed {LINUX_CREATE_TYPE} runtime options: {e}"
                    ))
                },
            )?;
            Ok(RuntimeOptions {
                no_pivot_root: o.no_pivot_root,
                no_new_keyring: o.no_new_keyring,
                criu_image_path: o.criu_image_path,
                criu_work_path: o.criu_work_path,
                io_uid: o.io_uid,
                io_gid: o.io_gid,
                shim_cgroup: o.shim_cgroup,
                ..Default::default()
            })
        }
        GENERIC_OPTIONS_TYPE => {
            let (_type_url, config_path) = decode_generic_options(&any.value)?;
            if config_path.is_empty() {
                return Ok(RuntimeOptions::default());
            }
            load_options_file(&PathBuf::from(config_path))
        }
        MOSE_OPTIONS_TYPE => {
            let o: mose_contract::RuntimeOptions =
                serde_json::from_slice(&any.value).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "malformed {MOSE_OPTIONS_TYPE} (JSON with binary_name, root, \
                     systemd_cgroup, restore_image, lazy_pages_socket): {e}"
                    ))
                })?;
            if !o.lazy_pages_socket.is_empty()
                && (o.restore_image.is_empty() || !o.lazy_pages_socket.starts_with('/'))
            {
                return Err(Error::InvalidArgument(format!(
                    "{MOSE_OPTIONS_TYPE}: lazy_pages_socket {:?} needs an absolute path \
                     and a restore_image to restore lazily",
                    o.lazy_pages_socket
                )));
            }
            Ok(RuntimeOptions {
                binary_name: o.binary_name,
                root: o.root,
                systemd_cgroup: o.systemd_cgroup,
                restore_image: o.restore_image,
                lazy_pages_socket: o.lazy_pages_socket,
                ..Default::default()
            })
        }
        other => Err(Error::InvalidArgument(format!(
            "unsupported runtime options type {other:?}: the MOSE shim accepts \
             {RUNC_OPTIONS_TYPE}, {LINUX_CREATE_TYPE}, {GENERIC_OPTIONS_TYPE} \
             (ctr --runtime-config-path FILE) or {MOSE_OPTIONS_TYPE}"
        ))),
    }
}

/// The options `start` hands the shim crate when it spawns the shim server,
/// which puts the server in `ShimCgroup` (and adjusts its OOM score) from a
/// `containerd.runc.v1.Options`. containerd passes the task's runtime options
/// on `start`'s stdin in whichever accepted type the client chose, so they
/// are normalised here; `None` for options the shim cannot read (Create
/// reports those with the reason).
pub fn start_options(any: &Any) -> Option<Any> {
    let o = decode_runtime_options(Some(any)).ok()?;
    let pb = PbOptions {
        shim_cgroup: o.shim_cgroup,
        ..Default::default()
    };
    Some(Any {
        type_url: format!("type.googleapis.com/{RUNC_OPTIONS_TYPE}"),
        value: pb.write_to_bytes().ok()?,
        ..Default::default()
    })
}

/// Reads the TOML options file named by `runtimeoptions.v1.Options.config_path`.
pub fn load_options_file(path: &std::path::Path) -> Result<RuntimeOptions> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::InvalidArgument(format!(
            "cannot read runtime options file {}: {e}",
            path.display()
        ))
    })?;
    let t: TomlOptions = toml::from_str(&text).map_err(|e| {
        Error::InvalidArgument(format!(
            "invalid runtime options file {}: {e} (accepted keys: BinaryName, Root, \
             SystemdCgroup, NoPivotRoot, NoNewKeyring, CriuImagePath, CriuWorkPath, \
             IoUid, IoGid, ShimCgroup)",
            path.display()
        ))
    })?;
    Ok(RuntimeOptions {
        binary_name: t.binary_name,
        root: t.root,
        systemd_cgroup: t.systemd_cgroup,
        no_pivot_root: t.no_pivot_root,
        no_new_keyring: t.no_new_keyring,
        criu_image_path: t.criu_image_path,
        criu_work_path: t.criu_work_path,
        io_uid: t.io_uid,
        io_gid: t.io_gid,
        shim_cgroup: t.shim_cgroup,
        restore_image: String::new(),
        lazy_pages_socket: String::new(),
    })
}

/// `runtimeoptions.v1.Options { string type_url = 1; string config_path = 2; }`,
/// decoded by hand because its generated type is not part of the shim protos.
fn decode_generic_options(bytes: &[u8]) -> Result<(String, String)> {
    let bad = |e: containerd_shim_protos::protobuf::Error| {
        Error::InvalidArgument(format!("malformed {GENERIC_OPTIONS_TYPE}: {e}"))
    };
    let mut input = CodedInputStream::from_bytes(bytes);
    let (mut type_url, mut config_path) = (String::new(), String::new());
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(bad)? {
        match tag {
            0x0a => type_url = input.read_string().map_err(bad)?,
            0x12 => config_path = input.read_string().map_err(bad)?,
            other => {
                let wire = containerd_shim_protos::protobuf::rt::WireType::new(other & 7)
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "malformed {GENERIC_OPTIONS_TYPE}: bad wire type in tag {other}"
                        ))
                    })?;
                input.skip_field(wire).map_err(bad)?;
            }
        }
    }
    Ok((type_url, config_path))
}

/// Everything a checkpoint request asks of CRIU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointOptions {
    /// Stop the container after the dump (otherwise it keeps running).
    pub exit: bool,
    pub open_tcp: bool,
    pub external_unix_sockets: bool,
    pub terminal: bool,
    pub file_locks: bool,
    pub empty_namespaces: Vec<String>,
    /// CRIU's `--manage-cgroups-mode`: soft, full, strict or ignore.
    pub cgroups_mode: String,
    pub image_path: String,
    pub work_path: String,
    /// Dump established TCP connections as closed (they cannot follow a
    /// service to another address) instead of failing on them.
    pub tcp_close: bool,
    /// Ignore connections not yet accepted, rather than failing on them.
    pub skip_in_flight: bool,
    /// Restore only: leave lazily restorable memory out and hand it to a
    /// lazy-page handler (never set for a dump: CRIU's lazy dump is not used).
    pub lazy_pages: bool,
    /// The request came from MOSE's node agent (a migration's freeze), not
    /// through containerd: nothing may wait for containerd's metadata.
    pub migration: bool,
    /// The service address moves with the container: its link goes down
    /// before the dump (see `mose_contract::CheckpointOptions`).
    pub hand_over_address: bool,
    /// CRIU's lazy dump, its page server on `127.0.0.1:<port>` (see
    /// `mose_contract::CheckpointOptions::lazy_page_server_port`).
    pub lazy_page_server_port: Option<u16>,
    /// Wait for the container's lazy dump to end (nothing else is done).
    pub finish_lazy_dump: bool,
    /// With `finish_lazy_dump`: the page server's client never connected.
    pub wake_page_server: bool,
}

/// MOSE's checkpoint options (JSON): containerd's runc checkpoint options
/// plus the CRIU settings a migration needs that runc has no flag for.
pub const MOSE_CHECKPOINT_TYPE: &str = mose_contract::CHECKPOINT_OPTIONS_TYPE;

/// The checkpoint options of containerd's runc types: the runc.v1 and the
/// legacy message share their field names (not their numbers).
macro_rules! checkpoint_options_from {
    ($o:expr) => {{
        let o = $o;
        CheckpointOptions {
            exit: o.exit,
            open_tcp: o.open_tcp,
            external_unix_sockets: o.external_unix_sockets,
            terminal: o.terminal,
            file_locks: o.file_locks,
            empty_namespaces: o.empty_namespaces,
            cgroups_mode: o.cgroups_mode,
            image_path: o.image_path,
            work_path: o.work_path,
            ..Default::default()
        }
    }};
}

const CGROUP_MODES: [&str; 4] = ["soft", "full", "strict", "ignore"];
const NAMESPACES: [&str; 7] = ["network", "ipc", "uts", "mount", "pid", "user", "cgroup"];

/// Decodes and validates checkpoint options; `None` means defaults
/// (leave running, image written to the path containerd gives).
pub fn decode_checkpoint_options(any: Option<&Any>) -> Result<CheckpointOptions> {
    let Some(any) = any.filter(|a| !a.type_url.is_empty()) else {
        return Ok(CheckpointOptions::default());
    };
    let name = type_name(any);
    if name == MOSE_CHECKPOINT_TYPE {
        let o: mose_contract::CheckpointOptions =
            serde_json::from_slice(&any.value).map_err(|e| {
                Error::InvalidArgument(format!(
                    "malformed {MOSE_CHECKPOINT_TYPE} (JSON with exit, image_path, work_path, \
                 tcp_close, tcp_established, hand_over_address, skip_in_flight, file_locks, \
                 lazy_page_server_port, finish_lazy_dump, wake_page_server): {e}"
                ))
            })?;
        if o.lazy_page_server_port != 0 && o.exit {
            return Err(Error::InvalidArgument(format!(
                "{MOSE_CHECKPOINT_TYPE}: a lazy dump (lazy_page_server_port) serves the memory \
                 of tasks it leaves in place; it cannot also stop them (exit)"
            )));
        }
        if o.tcp_close && o.tcp_established {
            return Err(Error::InvalidArgument(format!(
                "{MOSE_CHECKPOINT_TYPE}: tcp_close and tcp_established contradict each other: \
                 established connections are dumped either closed or open, choose one"
            )));
        }
        return Ok(CheckpointOptions {
            exit: o.exit,
            image_path: o.image_path,
            work_path: o.work_path,
            tcp_close: o.tcp_close,
            open_tcp: o.tcp_established,
            hand_over_address: o.hand_over_address,
            skip_in_flight: o.skip_in_flight,
            file_locks: o.file_locks,
            migration: true,
            lazy_page_server_port: (o.lazy_page_server_port != 0)
                .then_some(o.lazy_page_server_port),
            finish_lazy_dump: o.finish_lazy_dump,
            wake_page_server: o.wake_page_server,
            ..Default::default()
        });
    }
    let o = match name {
        RUNC_CHECKPOINT_TYPE => {
            let o = PbCheckpointOptions::parse_from_bytes(&any.value).map_err(|e| {
                Error::InvalidArgument(format!("malformed {name} checkpoint options: {e}"))
            })?;
            checkpoint_options_from!(o)
        }
        LINUX_CHECKPOINT_TYPE => {
            let o = <LegacyCheckpointOptions as prost::Message>::decode(any.value.as_slice())
                .map_err(|e| {
                    Error::InvalidArgument(format!("malformed {name} checkpoint options: {e}"))
                })?;
            checkpoint_options_from!(o)
        }
        _ => {
            return Err(Error::InvalidArgument(format!(
                "unsupported checkpoint options type {name:?}: the MOSE shim accepts \
                 {RUNC_CHECKPOINT_TYPE}, {LINUX_CHECKPOINT_TYPE} or {MOSE_CHECKPOINT_TYPE}"
            )))
        }
    };
    validate_checkpoint(&o)?;
    Ok(o)
}

fn validate_checkpoint(o: &CheckpointOptions) -> Result<()> {
    if !o.cgroups_mode.is_empty() && !CGROUP_MODES.contains(&o.cgroups_mode.as_str()) {
        return Err(Error::InvalidArgument(format!(
            "invalid checkpoint cgroups_mode {:?}: expected one of {}",
            o.cgroups_mode,
            CGROUP_MODES.join(", ")
        )));
    }
    for ns in &o.empty_namespaces {
        if !NAMESPACES.contains(&ns.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "invalid checkpoint empty_namespaces entry {ns:?}: expected one of {}",
                NAMESPACES.join(", ")
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use containerd_shim_protos::protobuf::CodedOutputStream;

    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        Any {
            type_url: type_url.to_string(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_without_options() {
        assert_eq!(decode_runtime_options(None).unwrap().binary(), "runc");
        assert_eq!(
            decode_checkpoint_options(None).unwrap(),
            CheckpointOptions::default()
        );
    }

    #[test]
    fn runc_options_select_binary() {
        let o = PbOptions {
            binary_name: "crun".into(),
            ..Default::default()
        };
        let a = any(
            &format!("type.googleapis.com/{RUNC_OPTIONS_TYPE}"),
            o.write_to_bytes().unwrap(),
        );
        assert_eq!(decode_runtime_options(Some(&a)).unwrap().binary(), "crun");
    }

    #[test]
    fn unknown_options_type_is_rejected() {
        let a = any("example.com/Bogus", vec![1, 2, 3]);
        let e = decode_runtime_options(Some(&a)).unwrap_err().to_string();
        assert!(
            e.contains("unsupported runtime options type \"Bogus\""),
            "{e}"
        );
        let e = decode_checkpoint_options(Some(&a)).unwrap_err().to_string();
        assert!(e.contains("unsupported checkpoint options type"), "{e}");
    }

    #[test]
    fn generic_options_read_toml_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mose.toml");
        std::fs::write(&path, "BinaryName = \"crun\"\nRoot = \"/run/x\"\n").unwrap();
        let mut bytes = Vec::new();
        {
            let mut out = CodedOutputStream::vec(&mut bytes);
            out.write_string(1, "x").unwrap();
            out.write_string(2, path.to_str().unwrap()).unwrap();
            out.flush().unwrap();
        }
        let o = decode_runtime_options(Some(&any(GENERIC_OPTIONS_TYPE, bytes))).unwrap();
        assert_eq!((o.binary(), o.root.as_str()), ("crun", "/run/x"));

        std::fs::write(&path, "BinaryNmae = \"crun\"\n").unwrap();
        let e = load_options_file(&path).unwrap_err().to_string();
        assert!(
            e.contains("BinaryNmae") && e.contains("accepted keys"),
            "{e}"
        );
    }

    #[test]
    fn mose_options_carry_the_restore_image() {
        let a = any(
            MOSE_OPTIONS_TYPE,
            br#"{"restore_image":"/run/mose/in/x"}"#.to_vec(),
        );
        let o = decode_runtime_options(Some(&a)).unwrap();
        assert_eq!(
            (o.binary(), o.restore_image.as_str()),
            ("runc", "/run/mose/in/x")
        );
        let a = any(MOSE_OPTIONS_TYPE, br#"{"restore_imag":"/x"}"#.to_vec());
        let e = decode_runtime_options(Some(&a)).unwrap_err().to_string();
        assert!(
            e.contains("restore_imag") && e.contains("mose.v1.Options"),
            "{e}"
        );
    }

    #[test]
    fn checkpoint_options_are_validated() {
        let o = PbCheckpointOptions {
            exit: true,
            cgroups_mode: "sideways".into(),
            ..Default::default()
        };
        let a = any(LINUX_CHECKPOINT_TYPE, o.write_to_bytes().unwrap());
        let e = decode_checkpoint_options(Some(&a)).unwrap_err().to_string();
        assert!(e.contains("cgroups_mode") && e.contains("soft"), "{e}");

        let o = PbCheckpointOptions {
            exit: true,
            open_tcp: true,
            empty_namespaces: vec!["network".into()],
            ..Default::default()
        };
        let a = any(RUNC_CHECKPOINT_TYPE, o.write_to_bytes().unwrap());
        let c = decode_checkpoint_options(Some(&a)).unwrap();
        assert!(c.exit && c.open_tcp);
        assert_eq!(c.empty_namespaces, vec!["network".to_string()]);
    }

    #[test]
    fn truncated_generic_options_rejected() {
        let e = decode_runtime_options(Some(&any(GENERIC_OPTIONS_TYPE, vec![0x12, 0x10, b'a'])))
            .unwrap_err()
            .to_string();
        assert!(e.contains("malformed runtimeoptions.v1.Options"), "{e}");
    }

    #[test]
    fn legacy_create_options_mean_what_they_mean_to_runc() {
        let o = LegacyCreateOptions {
            no_pivot_root: true,
            shim_cgroup: "/shims".into(),
            io_uid: 1000,
            io_gid: 1001,
            criu_image_path: "/ck".into(),
            criu_work_path: "/work".into(),
            ..Default::default()
        };
        let a = any(
            &format!("type.googleapis.com/{LINUX_CREATE_TYPE}"),
            prost::Message::encode_to_vec(&o),
        );
        let r = decode_runtime_options(Some(&a)).unwrap();
        assert!(r.no_pivot_root);
        assert_eq!((r.io_uid, r.io_gid), (1000, 1001));
        assert_eq!(r.shim_cgroup, "/shims");
        assert_eq!(
            (r.criu_image_path.as_str(), r.criu_work_path.as_str()),
            ("/ck", "/work")
        );
        assert_eq!(r.binary(), "runc");
        let bad = any(LINUX_CREATE_TYPE, vec![0x4a, 0x10, b'a']);
        let e = decode_runtime_options(Some(&bad)).unwrap_err().to_string();
        assert!(
            e.contains("malformed containerd.linux.runc.CreateOptions"),
            "{e}"
        );
    }

    #[test]
    fn legacy_checkpoint_options_have_their_own_field_numbers() {
        let o = LegacyCheckpointOptions {
            exit: true,
            image_path: "/img".into(),
            work_path: "/wrk".into(),
            file_locks: true,
            ..Default::default()
        };
        let a = any(LINUX_CHECKPOINT_TYPE, prost::Message::encode_to_vec(&o));
        let c = decode_checkpoint_options(Some(&a)).unwrap();
        assert!(c.exit && c.file_locks);
        assert_eq!(
            (c.image_path.as_str(), c.work_path.as_str()),
            ("/img", "/wrk")
        );
        let o = PbCheckpointOptions {
            image_path: "/img".into(),
            work_path: "/wrk".into(),
            ..Default::default()
        };
        let a = any(RUNC_CHECKPOINT_TYPE, o.write_to_bytes().unwrap());
        let c = decode_checkpoint_options(Some(&a)).unwrap();
        assert_eq!(
            (c.image_path.as_str(), c.work_path.as_str()),
            ("/img", "/wrk")
        );
    }
}
