//! `containerd-shim-mose-v2 -info`: describes the runtime to containerd 2.x.
//!
//! containerd 2.x runs the shim binary with `-info` (runtime options, if
//! any, as a protobuf `Any` on stdin) before it starts a shim for a task, for
//! `ctr plugins inspect-runtime`, and to validate specs with idmapped mounts
//! against the OCI runtime's features. It expects a `containerd.types.RuntimeInfo`
//! on stdout, as containerd's runc shim (`cmd/containerd-shim-runc-v2/manager`
//! `Info`) writes it:
//!
//! - `name`: the runtime type, `io.containerd.mose.v2`;
//! - `version`: the shim's version;
//! - `options`: the runtime options received, as received;
//! - `features`: the OCI runtime's `features` output (runtime-spec
//!   `features.md` JSON) in an `Any` of type
//!   `types.containerd.io/opencontainers/runtime-spec/1/features/Features`,
//!   the JSON encoding containerd's `typeurl` uses for that Go type.
//!
//! The OCI runtime binary is the one the options name (`BinaryName` of
//! `containerd.runc.v1.Options`, or the TOML file of
//! `runtimeoptions.v1.Options`), runc by default: the same decoding Create
//! uses. An OCI runtime without a `features` subcommand (Debian 12's crun 1.8)
//! or one that is not installed still gets an answer with name, version and
//! options — containerd then treats the runtime as one that publishes no
//! features — and the reason is logged (stderr) and carried as the shim
//! annotation [`FEATURES_ERROR_ANNOTATION`], which containerd logs with the
//! shim info (debug level) and `ctr plugins inspect-runtime` prints.
//! Options the shim cannot read fail `-info`, as they would fail Create (and as
//! runc's shim fails on options it cannot decode).

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use containerd_shim_protos::{
    protobuf::{well_known_types::any::Any, Message, MessageField},
    types::introspection::{RuntimeInfo, RuntimeVersion},
};
use tracing::warn;

use crate::{
    bootstrap::RUNTIME_TYPE,
    error::{Error, Result},
    options::decode_runtime_options,
};

/// Type URL containerd's `typeurl` gives runtime-spec's `features.Features`
/// (registered by containerd's client with prefix `types.containerd.io`,
/// path `opencontainers/runtime-spec`, spec major version `1`).
pub const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";
/// Shim annotation naming the OCI runtime binary the features came from.
pub const OCI_RUNTIME_ANNOTATION: &str = "mose.shim/oci-runtime";
/// Shim annotation saying why the answer carries no features.
pub const FEATURES_ERROR_ANNOTATION: &str = "mose.shim/features-unavailable";
/// Bound on `<runtime> features` (containerd waits for `-info` on task create).
const FEATURES_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on what is read from stdin (containerd sends one `Any`).
const MAX_STDIN: u64 = 1 << 20;

/// Runs the `-info` action: options from stdin, `RuntimeInfo` to stdout.
pub async fn run() -> Result<()> {
    let mut stdin = Vec::new();
    if !nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
        std::io::stdin()
            .take(MAX_STDIN)
            .read_to_end(&mut stdin)
            .map_err(Error::io("read runtime options from stdin"))?;
    }
    let info = runtime_info(&stdin).await?;
    let bytes = info.write_to_bytes()?;
    let mut out = std::io::stdout();
    out.write_all(&bytes)
        .and_then(|_| out.flush())
        .map_err(Error::io("write the runtime info"))
}

/// The `RuntimeInfo` for runtime options `stdin` (empty: none).
pub async fn runtime_info(stdin: &[u8]) -> Result<RuntimeInfo> {
    let options = if stdin.is_empty() {
        None
    } else {
        let any = Any::parse_from_bytes(stdin).map_err(|e| {
            Error::InvalidArgument(format!(
                "runtime options on stdin are not a protobuf Any: {e}"
            ))
        })?;
        Some(any).filter(|a| !a.type_url.is_empty())
    };
    let opts = decode_runtime_options(options.as_ref())?;
    let mut info = RuntimeInfo {
        name: RUNTIME_TYPE.to_string(),
        version: MessageField::some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: option_env!("MOSE_REVISION").unwrap_or_default().to_string(),
            ..Default::default()
        }),
        options: options.into(),
        ..Default::default()
    };
    match features(opts.binary()).await {
        Ok((path, json)) => {
            info.annotations.insert(
                OCI_RUNTIME_ANNOTATION.to_string(),
                path.display().to_string(),
            );
            info.features = MessageField::some(Any {
                type_url: FEATURES_TYPE_URL.to_string(),
                value: json,
                ..Default::default()
            });
        }
        Err(reason) => {
            warn!(runtime = opts.binary(), %reason, "runtime info without OCI runtime features");
            info.annotations
                .insert(FEATURES_ERROR_ANNOTATION.to_string(), reason);
        }
    }
    Ok(info)
}

/// Runs `cmd`, retrying briefly while its binary is busy (ETXTBSY): a
/// runtime binary being replaced, or one just written while another thread
/// forked, cannot be executed for a moment.
async fn output_retrying_busy(
    cmd: &mut tokio::process::Command,
) -> std::io::Result<std::process::Output> {
    let mut tries = 0;
    loop {
        match cmd.output().await {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 10 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// `<binary> features`: the absolute binary path and its JSON (re-encoded
/// compactly after checking it is a JSON object), or why not.
async fn features(binary: &str) -> std::result::Result<(PathBuf, Vec<u8>), String> {
    let path = look_path(binary).ok_or_else(|| {
        format!("OCI runtime {binary:?} not found (PATH or absolute path, executable)")
    })?;
    let mut cmd = tokio::process::Command::new(&path);
    cmd.arg("features")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(FEATURES_TIMEOUT, output_retrying_busy(&mut cmd))
        .await
        .map_err(|_| {
            format!(
                "`{} features` did not finish within {FEATURES_TIMEOUT:?}",
                path.display()
            )
        })?
        .map_err(|e| format!("cannot run `{} features`: {e}", path.display()))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(if out.stderr.is_empty() {
            &out.stdout
        } else {
            &out.stderr
        })
        .trim()
        .to_string();
        return Err(format!(
            "`{} features` failed ({}): {said:?} (an OCI runtime without a features \
             subcommand, such as crun 1.8, answers this way; runc has one since 1.1)",
            path.display(),
            out.status
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("`{} features` printed no JSON: {e}", path.display()))?;
    if !v.is_object() {
        return Err(format!(
            "`{} features` printed JSON that is not an object",
            path.display()
        ));
    }
    let json = serde_json::to_vec(&v).map_err(|e| e.to_string())?;
    Ok((path, json))
}

/// Resolves `binary` as `exec.LookPath` does: a name with a slash is used as
/// it is, a bare name is searched in `PATH`.
pub(crate) fn look_path(binary: &str) -> Option<PathBuf> {
    if binary.contains('/') {
        let p = PathBuf::from(binary);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(binary))
        .find(|p| is_executable(p))
}

pub(crate) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn runc_options(binary: &Path) -> Vec<u8> {
        use containerd_shim_protos::shim::oci::Options;
        let o = Options {
            binary_name: binary.display().to_string(),
            ..Default::default()
        };
        Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: o.write_to_bytes().unwrap(),
            ..Default::default()
        }
        .write_to_bytes()
        .unwrap()
    }

    #[tokio::test]
    async fn features_of_the_named_runtime_are_carried() {
        let dir = tempfile::tempdir().unwrap();
        let rt = write_script(
            dir.path(),
            "fake-runc",
            r#"[ "$1" = features ] && echo '{"ociVersionMin":"1.0.0", "hooks":["prestart"]}'"#,
        );
        let stdin = runc_options(&rt);
        let info = runtime_info(&stdin).await.unwrap();
        assert_eq!(info.name, RUNTIME_TYPE);
        assert_eq!(info.version.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(info.options.type_url, "containerd.runc.v1.Options");
        assert_eq!(info.features.type_url, FEATURES_TYPE_URL);
        let v: serde_json::Value = serde_json::from_slice(&info.features.value).unwrap();
        assert_eq!(v["hooks"][0], "prestart");
        assert_eq!(
            info.annotations.get(OCI_RUNTIME_ANNOTATION),
            Some(&rt.display().to_string())
        );
        // and it survives the wire
        let back = RuntimeInfo::parse_from_bytes(&info.write_to_bytes().unwrap()).unwrap();
        assert_eq!(back, info);
    }

    #[tokio::test]
    async fn runtime_without_features_still_answers() {
        let dir = tempfile::tempdir().unwrap();
        let rt = write_script(
            dir.path(),
            "old-crun",
            "echo 'unknown command features' >&2; exit 1",
        );
        let info = runtime_info(&runc_options(&rt)).await.unwrap();
        assert_eq!(info.name, RUNTIME_TYPE);
        assert!(info.features.is_none());
        let why = info.annotations.get(FEATURES_ERROR_ANNOTATION).unwrap();
        assert!(why.contains("unknown command features"), "{why}");

        let missing = runc_options(&dir.path().join("absent"));
        let info = runtime_info(&missing).await.unwrap();
        assert!(info.features.is_none());
        assert!(info.annotations[FEATURES_ERROR_ANNOTATION].contains("not found"));
    }

    #[tokio::test]
    async fn unreadable_options_fail() {
        let any = Any {
            type_url: "example.com/Unknown".into(),
            value: vec![1, 2, 3],
            ..Default::default()
        };
        let err = runtime_info(&any.write_to_bytes().unwrap())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unsupported runtime options type"));
        assert!(runtime_info(&[0xff, 0xff]).await.is_err());
    }
}
