//! The images of MOSE's workloads: the state service, redis, the MOSE
//! paper's network workloads SockPerf (UDP ping-pong latency) and iPerf3
//! (TCP throughput), each built from Debian's binary and its libraries, and
//! the use-case workloads built from this workspace's binaries: the UAV
//! control loop (`mose-uav`) and the multi-object tracker (`mose-tracker`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::image::{cached_archive, ImageSpec};

/// Image reference of the state service.
pub const STATE_SERVICE_REF: &str = "localhost/mose/state-service:latest";
/// Image reference of the pod sandbox image (`mose-pause`), the
/// `sandbox_image` of the testbed's CRI.
pub const PAUSE_REF: &str = "localhost/mose/pause:1";
/// Name of the pause binary.
pub const PAUSE_BIN: &str = "mose-pause";
/// Image reference of redis.
pub const REDIS_REF: &str = "localhost/mose/redis:latest";
/// Name of the state-service binary.
pub const STATE_SERVICE_BIN: &str = "mose-state-service";
/// Path of the state service inside its image.
pub const STATE_SERVICE_PATH: &str = "/usr/local/bin/mose-state-service";
/// Host redis server (Debian package `redis-server`).
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";
/// Path of the redis configuration inside its image.
pub const REDIS_CONF_PATH: &str = "/etc/redis/redis.conf";
/// Port redis listens on.
pub const REDIS_PORT: u16 = 6379;

/// Redis configuration: reachable from other hosts (no protected mode) and
/// no persistence, so that the only copy of the data is the process memory
/// that a migration has to move.
pub const REDIS_CONF: &str = "bind 0.0.0.0
port 6379
protected-mode no
daemonize no
supervised no
save \"\"
appendonly no
dir /data
logfile \"\"
";

/// The cargo target directory: `$CARGO_TARGET_DIR`, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.join("target"))
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// Where archives are cached: `<target>/mose-workloads`.
pub fn cache_dir() -> PathBuf {
    target_dir().join("mose-workloads")
}

/// Finds a binary of this workspace: next to the running executable (or
/// one level up, for test binaries in `deps/`), else the newest of
/// `<target>/{debug,release}/<name>`.
pub fn find_binary(name: &str) -> Result<PathBuf> {
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let target = target_dir();
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join(name))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    match found.pop() {
        Some((_, p)) => Ok(p),
        None => bail!(
            "{name} not found next to {:?} nor in {}/{{debug,release}}; build it with \
             `cargo build -p mose-workloads`",
            std::env::current_exe().ok(),
            target.display()
        ),
    }
}

/// Image of the state service built from `binary` (its shared libraries and
/// the loader come along), with busybox for debugging, `/data` for the
/// start marker and `/tmp`.
pub fn state_service_image(binary: &Path) -> ImageSpec {
    ImageSpec {
        name: STATE_SERVICE_REF.into(),
        files: vec![(binary.to_path_buf(), STATE_SERVICE_PATH.into())],
        libs_of: vec![binary.to_path_buf()],
        dirs: vec![("/data".into(), 0o755), ("/tmp".into(), 0o1777)],
        entrypoint: vec![STATE_SERVICE_PATH.into()],
        busybox: true,
        ..Default::default()
    }
}

/// The pod sandbox image: `mose-pause` (with its libraries) as `/pause`.
pub fn pause_image(binary: &Path) -> ImageSpec {
    ImageSpec {
        name: PAUSE_REF.into(),
        files: vec![(binary.to_path_buf(), "/pause".into())],
        libs_of: vec![binary.to_path_buf()],
        entrypoint: vec!["/pause".into()],
        ..Default::default()
    }
}

/// Builds (or reuses from `cache_dir`) the pause archive from the
/// `mose-pause` binary found like the state service's.
pub fn pause_archive(cache_dir: &Path) -> Result<PathBuf> {
    let bin = find_binary(PAUSE_BIN)?;
    cached_archive(&pause_image(&bin), cache_dir).context("pause image")
}

/// Image of Debian's redis server (`/usr/bin/redis-server` + libraries,
/// busybox, `/data`, [`REDIS_CONF`]).
pub fn redis_image() -> Result<ImageSpec> {
    let server = Path::new(REDIS_SERVER);
    if !server.exists() {
        bail!("{REDIS_SERVER} not found: install the Debian package redis-server");
    }
    Ok(ImageSpec {
        name: REDIS_REF.into(),
        binaries: vec![server.to_path_buf()],
        contents: vec![(
            REDIS_CONF_PATH.into(),
            REDIS_CONF.as_bytes().to_vec(),
            0o644,
        )],
        dirs: vec![("/data".into(), 0o755), ("/tmp".into(), 0o1777)],
        entrypoint: vec![REDIS_SERVER.into()],
        cmd: vec![REDIS_CONF_PATH.into()],
        busybox: true,
        ..Default::default()
    })
}

/// Image reference of SockPerf's server.
pub const SOCKPERF_REF: &str = "localhost/mose/sockperf:latest";
/// Image reference of iPerf3's server.
pub const IPERF3_REF: &str = "localhost/mose/iperf3:latest";
/// Host SockPerf (Debian package `sockperf`).
pub const SOCKPERF: &str = "/usr/bin/sockperf";
/// Host iPerf3 (Debian package `iperf3`).
pub const IPERF3: &str = "/usr/bin/iperf3";
/// UDP port SockPerf's server listens on (its default).
pub const SOCKPERF_PORT: u16 = 11111;
/// TCP port iPerf3's server listens on (its default).
pub const IPERF3_PORT: u16 = 5201;

/// An image running one Debian binary as its server (`args` after it).
fn server_image(name: &str, binary: &str, package: &str, args: &[String]) -> Result<ImageSpec> {
    let bin = Path::new(binary);
    if !bin.exists() {
        bail!("{binary} not found: install the Debian package {package}");
    }
    Ok(ImageSpec {
        name: name.into(),
        binaries: vec![bin.to_path_buf()],
        dirs: vec![("/tmp".into(), 0o1777)],
        entrypoint: vec![binary.into()],
        cmd: args.to_vec(),
        busybox: true,
        ..Default::default()
    })
}

/// SockPerf's server on UDP [`SOCKPERF_PORT`], all addresses.
pub fn sockperf_image() -> Result<ImageSpec> {
    let args = ["server", "-i", "0.0.0.0", "-p", &SOCKPERF_PORT.to_string()].map(String::from);
    server_image(SOCKPERF_REF, SOCKPERF, "sockperf", &args)
}

/// iPerf3's server on TCP [`IPERF3_PORT`].
pub fn iperf3_image() -> Result<ImageSpec> {
    let args = ["-s", "-p", &IPERF3_PORT.to_string()].map(String::from);
    server_image(IPERF3_REF, IPERF3, "iperf3", &args)
}

/// Builds (or reuses from `cache_dir`) the SockPerf archive.
pub fn sockperf_archive(cache_dir: &Path) -> Result<PathBuf> {
    cached_archive(&sockperf_image()?, cache_dir).context("sockperf image")
}

/// Builds (or reuses from `cache_dir`) the iPerf3 archive.
pub fn iperf3_archive(cache_dir: &Path) -> Result<PathBuf> {
    cached_archive(&iperf3_image()?, cache_dir).context("iperf3 image")
}

/// Image reference of the UAV control loop (`mose-uav serve`).
pub const UAV_REF: &str = "localhost/mose/uav:latest";
/// Name of the UAV binary.
pub const UAV_BIN: &str = "mose-uav";
/// Path of the UAV binary inside its image.
pub const UAV_PATH: &str = "/usr/local/bin/mose-uav";
/// Image reference of the multi-object tracker (`mose-tracker`).
pub const TRACKER_REF: &str = "localhost/mose/tracker:latest";
/// Name of the tracker binary.
pub const TRACKER_BIN: &str = "mose-tracker";
/// Path of the tracker binary inside its image.
pub const TRACKER_PATH: &str = "/usr/local/bin/mose-tracker";

/// An image running one binary of this workspace at `path` (with its
/// libraries and the loader), busybox for debugging, `/data` (the start
/// marker) and `/tmp`.
fn workspace_image(name: &str, binary: &Path, path: &str, cmd: &[&str]) -> ImageSpec {
    ImageSpec {
        name: name.into(),
        files: vec![(binary.to_path_buf(), path.into())],
        libs_of: vec![binary.to_path_buf()],
        dirs: vec![("/data".into(), 0o755), ("/tmp".into(), 0o1777)],
        entrypoint: vec![path.into()],
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        busybox: true,
        ..Default::default()
    }
}

/// Image of the UAV control loop built from `binary`: `mose-uav serve` on
/// UDP [`crate::uav::UAV_PORT`] by default.
pub fn uav_image(binary: &Path) -> ImageSpec {
    workspace_image(UAV_REF, binary, UAV_PATH, &["serve"])
}

/// Image of the multi-object tracker built from `binary`.
pub fn tracker_image(binary: &Path) -> ImageSpec {
    workspace_image(TRACKER_REF, binary, TRACKER_PATH, &[])
}

/// Builds (or reuses from `cache_dir`) the UAV archive; `binary` defaults
/// to [`find_binary`]`("mose-uav")`.
pub fn uav_archive(binary: Option<&Path>, cache_dir: &Path) -> Result<PathBuf> {
    let bin = match binary {
        Some(b) => b.to_path_buf(),
        None => find_binary(UAV_BIN)?,
    };
    cached_archive(&uav_image(&bin), cache_dir).context("uav image")
}

/// Builds (or reuses from `cache_dir`) the tracker archive; `binary`
/// defaults to [`find_binary`]`("mose-tracker")`.
pub fn tracker_archive(binary: Option<&Path>, cache_dir: &Path) -> Result<PathBuf> {
    let bin = match binary {
        Some(b) => b.to_path_buf(),
        None => find_binary(TRACKER_BIN)?,
    };
    cached_archive(&tracker_image(&bin), cache_dir).context("tracker image")
}

/// Builds (or reuses from `cache_dir`) the state-service archive; `binary`
/// defaults to [`find_binary`]`("mose-state-service")`.
pub fn state_service_archive(binary: Option<&Path>, cache_dir: &Path) -> Result<PathBuf> {
    let bin = match binary {
        Some(b) => b.to_path_buf(),
        None => find_binary(STATE_SERVICE_BIN)?,
    };
    cached_archive(&state_service_image(&bin), cache_dir).context("state-service image")
}

/// Builds (or reuses from `cache_dir`) the redis archive.
pub fn redis_archive(cache_dir: &Path) -> Result<PathBuf> {
    cached_archive(&redis_image()?, cache_dir).context("redis image")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_conf_disables_protection_and_persistence() {
        for want in [
            "protected-mode no",
            "save \"\"",
            "appendonly no",
            "bind 0.0.0.0",
        ] {
            assert!(REDIS_CONF.contains(want), "{want}");
        }
    }

    #[test]
    fn use_case_images_run_their_binaries() {
        let u = uav_image(Path::new("/bin/true"));
        assert_eq!(
            (u.name.as_str(), u.entrypoint.clone()),
            (UAV_REF, vec![UAV_PATH.to_string()])
        );
        assert_eq!(u.cmd, vec!["serve".to_string()]);
        assert_eq!(u.files[0].1, UAV_PATH);
        let t = tracker_image(Path::new("/bin/true"));
        assert_eq!(
            (t.name.as_str(), t.entrypoint.clone()),
            (TRACKER_REF, vec![TRACKER_PATH.to_string()])
        );
        assert!(t.cmd.is_empty());
        for s in [&u, &t] {
            assert!(s.dirs.iter().any(|(d, _)| d == "/tmp") && s.busybox);
            assert_eq!(s.libs_of, vec![PathBuf::from("/bin/true")]);
        }
    }

    #[test]
    fn state_service_spec_has_entrypoint_and_dirs() {
        let s = state_service_image(Path::new("/bin/true"));
        assert_eq!(s.entrypoint, vec![STATE_SERVICE_PATH.to_string()]);
        assert!(s.dirs.iter().any(|(d, _)| d == "/data"));
        assert!(s.busybox);
    }
}
