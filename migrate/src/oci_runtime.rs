//! Can the container's OCI runtime be migrated? The source asks before it
//! contacts the destination or freezes anything: a migration dumps the
//! frozen container with its runtime and restores it from the CRIU image,
//! and youki (no `restore`, no dump of a frozen container) or a crun built
//! without CRIU cannot. The knowledge is
//! `mose_policy::oci_runtime`, shared with the shim; the runtime binary
//! itself is asked (`--version`), as the shim does.

use std::path::{Path, PathBuf};

use containerd_client::services::v1::Container;
use mose_policy::oci_runtime::{parse_version, OciRuntimeCaps, USE_INSTEAD};

/// A container MOSE refuses to migrate because of its OCI runtime.
#[derive(Debug, thiserror::Error)]
pub enum OciRuntimeError {
    #[error(
        "cannot migrate container {id}: its OCI runtime {binary:?} cannot be migrated: {why}; {USE_INSTEAD}"
    )]
    NotMigratable {
        id: String,
        binary: String,
        why: String,
    },
}

/// The shim's record of the runtime a task runs under, in the task's bundle
/// (`container::OPTIONS_FILE` in the shim, written at create).
const SHIM_RECORD: &str = "mose-runtime.json";

/// The OCI runtime binary of container `c`, whose init has pid `pid`: what
/// the MOSE shim recorded in the task's bundle (the shim's cwd), else the
/// `BinaryName` of runc options on the container, else runc.
pub fn binary_of(c: &Container, pid: u32) -> String {
    if let Some(b) = shim_bundle(pid).and_then(|b| recorded_binary(&b)) {
        return b;
    }
    c.runtime
        .as_ref()
        .and_then(|r| r.options.as_ref())
        .and_then(options_binary)
        .unwrap_or_else(|| "runc".into())
}

/// The bundle of the shim that is the parent of `pid`.
fn shim_bundle(pid: u32) -> Option<PathBuf> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let ppid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())?;
    std::fs::read_link(format!("/proc/{ppid}/cwd")).ok()
}

fn recorded_binary(bundle: &Path) -> Option<String> {
    let text = std::fs::read_to_string(bundle.join(SHIM_RECORD)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("binary")
        .and_then(|b| b.as_str())
        .filter(|b| !b.is_empty())
        .map(str::to_string)
}

/// `BinaryName` of `containerd.runc.v1.Options` or MOSE's JSON options.
fn options_binary(any: &prost_types::Any) -> Option<String> {
    use containerd_shim_protos::{protobuf::Message, shim::oci::Options};
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    let b = match name {
        "containerd.runc.v1.Options" => Options::parse_from_bytes(&any.value).ok()?.binary_name,
        mose_contract::OPTIONS_TYPE => {
            serde_json::from_slice::<mose_contract::RuntimeOptions>(&any.value)
                .ok()?
                .binary_name
        }
        _ => return None,
    };
    (!b.is_empty()).then_some(b)
}

/// Asks `binary --version` what it can do; a binary that cannot be run is
/// not judged here (the migration's own steps report it).
pub async fn probe(binary: &str) -> OciRuntimeCaps {
    let out = tokio::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => parse_version(binary, &String::from_utf8_lossy(&o.stdout)),
        _ => OciRuntimeCaps::unknown(binary),
    }
}

/// Refuses to migrate container `id` when its runtime cannot be dumped and
/// restored.
pub fn check_migratable(
    caps: &OciRuntimeCaps,
    binary: &str,
    id: &str,
) -> Result<(), OciRuntimeError> {
    if let Some(why) = caps.no_migration() {
        return Err(OciRuntimeError::NotMigratable {
            id: id.to_string(),
            binary: binary.to_string(),
            why,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_from_the_shims_record_or_the_options() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(recorded_binary(dir.path()), None);
        std::fs::write(
            dir.path().join(SHIM_RECORD),
            r#"{"binary":"youki","root":"/run/mose/runc/x/ns","systemd_cgroup":false}"#,
        )
        .unwrap();
        assert_eq!(recorded_binary(dir.path()).as_deref(), Some("youki"));

        use containerd_shim_protos::{protobuf::Message, shim::oci::Options};
        let pb = Options {
            binary_name: "crun".into(),
            ..Default::default()
        };
        let any = prost_types::Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: pb.write_to_bytes().unwrap(),
        };
        assert_eq!(options_binary(&any).as_deref(), Some("crun"));
        let any = prost_types::Any {
            type_url: "mose.v1.Options".into(),
            value: br#"{"binary_name":"youki"}"#.to_vec(),
        };
        assert_eq!(options_binary(&any).as_deref(), Some("youki"));
        let any = prost_types::Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: vec![],
        };
        assert_eq!(options_binary(&any), None);
        // no task (pid 0 has no shim), no options: runc
        assert_eq!(binary_of(&Container::default(), 0), "runc");
    }

    #[test]
    fn youki_is_refused_runc_is_not() {
        let youki = parse_version("youki", "youki version: 0.7.0\n");
        let e = check_migratable(&youki, "youki", "svc")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot migrate container svc"), "{e}");
        assert!(e.contains("youki 0.7.0") && e.contains("with runc"), "{e}");
        let runc = parse_version("runc", "runc version 1.1.5\n");
        assert!(check_migratable(&runc, "runc", "svc").is_ok());
    }
}
