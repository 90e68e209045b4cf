//! A private containerd instance living in a temp dir.
//!
//! The daemon is `containerd` from PATH (Debian 12: 1.6), or the binary named
//! by `$MOSE_TEST_CONTAINERD` (e.g. `/opt/mose/containerd-1.7/bin/containerd`,
//! `../shared/bin/containerd-2.2`); `ctr` likewise from `$MOSE_TEST_CTR`.
//! Its configuration is written for its version (`version = 2` for 1.x,
//! `version = 3` for 2.x), always with a private root, state and sockets.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::client::Client;
pub use crate::ctr::ctr_binary;
use crate::ctr::{env_binary, wait_timeout, Ctr};
use crate::{cleanup, image};

/// Name of the shim binary looked up for the MOSE runtime.
pub const SHIM_BINARY: &str = "containerd-shim-mose-v2";

/// How long to wait for containerd to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The containerd binary the tests run: `$MOSE_TEST_CONTAINERD`, else
/// `containerd` (from PATH).
pub fn containerd_binary() -> PathBuf {
    env_binary("MOSE_TEST_CONTAINERD", "containerd")
}

/// `(major, minor)` of [`containerd_binary`], from `containerd --version`
/// (read once per test process; `(1, 6)` if it cannot be read).
pub fn containerd_version() -> (u32, u32) {
    static V: OnceLock<(u32, u32)> = OnceLock::new();
    *V.get_or_init(|| {
        let out = Command::new(containerd_binary())
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        parse_version(&out).unwrap_or((1, 6))
    })
}

/// True when the daemon under test is containerd 2.x or later.
pub fn containerd_is_2x() -> bool {
    containerd_version().0 >= 2
}

/// `(major, minor)` in `containerd --version` output, e.g.
/// `containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6` or
/// `containerd github.com/containerd/containerd v2.2.4 193637f…`.
pub fn parse_version(text: &str) -> Option<(u32, u32)> {
    text.split_whitespace().find_map(|tok| {
        let v = tok.strip_prefix('v').unwrap_or(tok);
        let mut parts = v.splitn(3, '.');
        let major = parts.next()?.parse().ok()?;
        let minor: String = parts
            .next()?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        Some((major, minor.parse().ok()?))
    })
}

/// A containerd started for tests; stopped and cleaned up on drop.
pub struct TestContainerd {
    dir: PathBuf,
    shim_dir: Option<PathBuf>,
    child: Mutex<Option<Child>>,
    namespaces: Mutex<BTreeSet<String>>,
}

/// Locates the directory holding `containerd-shim-mose-v2`: `$MOSE_SHIM_DIR`,
/// else `<workspace>/target/debug`, else `<workspace>/target/release`.
pub fn shim_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("MOSE_SHIM_DIR") {
        return Some(PathBuf::from(d));
    }
    let target = crate::target_dir();
    ["debug", "release"]
        .iter()
        .map(|p| target.join(p))
        .find(|d| d.join(SHIM_BINARY).exists())
}

impl TestContainerd {
    /// Starts a fresh containerd in a new temp dir under /tmp.
    pub fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("mose-t-")
            .tempdir_in("/tmp")
            .context("creating temp dir")?
            .keep();
        let me = Self {
            dir,
            shim_dir: shim_dir(),
            child: Mutex::new(None),
            namespaces: Mutex::new(BTreeSet::new()),
        };
        fs::create_dir_all(me.fifo_dir())?;
        fs::write(me.dir.join("config.toml"), me.config()).context("writing config")?;
        me.spawn()?;
        Ok(me)
    }

    fn config(&self) -> String {
        if containerd_is_2x() {
            containerd_config_v3(&self.root(), &self.state(), &self.socket())
        } else {
            containerd_config(&self.root(), &self.state(), &self.socket())
        }
    }

    fn spawn(&self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening containerd log")?;
        let mut path = String::new();
        if let Some(d) = &self.shim_dir {
            path.push_str(&d.display().to_string());
            path.push(':');
        }
        // a containerd of its own prefix runs that prefix's runc shim
        let binary = containerd_binary();
        if let Some(d) = binary.parent().filter(|d| !d.as_os_str().is_empty()) {
            path.push_str(&d.display().to_string());
            path.push(':');
        }
        path.push_str("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        // containerd's task Checkpoint stages the CRIU image in a temp dir
        // under $XDG_RUNTIME_DIR (else /tmp) and does not always remove it:
        // keep those inside this daemon's directory, removed with it
        let xdg = self.dir.join("xdg");
        fs::create_dir_all(&xdg).with_context(|| format!("creating {}", xdg.display()))?;
        let mut cmd = Command::new(&binary);
        cmd.arg("--config")
            .arg(self.dir.join("config.toml"))
            .env("PATH", path)
            .env("XDG_RUNTIME_DIR", &xdg)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Own process group so that a ^C to the test run does not hit it first.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        *self.child.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if UnixStream::connect(self.socket()).is_ok() {
                return Ok(());
            }
            if let Some(c) = self
                .child
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .as_mut()
            {
                if let Some(st) = c.try_wait()? {
                    bail!(
                        "containerd exited early with {st}; log tail:\n{}",
                        self.log_tail(40)
                    );
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "containerd did not accept connections on {} within {START_TIMEOUT:?}; log tail:\n{}",
                    self.socket().display(),
                    self.log_tail(40)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop_daemon(&self) -> Result<()> {
        let mut guard = self.child.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        if let Some(mut child) = guard.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if wait_timeout(&mut child, Duration::from_secs(20))?.is_none() {
                bail!("containerd did not stop on SIGTERM within 20s (killed)");
            }
        }
        let _ = fs::remove_file(self.socket());
        Ok(())
    }

    /// Stops containerd with SIGTERM and starts it again on the same dirs.
    pub fn restart(&self) -> Result<()> {
        self.stop_daemon()?;
        self.spawn()
    }

    /// The temp dir holding everything.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// containerd's root dir.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    /// containerd's state dir.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    /// Directory where tests (and `ctr --fifo-dir`) create IO FIFOs.
    pub fn fifo_dir(&self) -> PathBuf {
        self.dir.join("fifo")
    }
    /// The gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("c.sock")
    }
    /// containerd's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }
    /// The shim directory put on containerd's PATH, if found.
    pub fn shim_dir(&self) -> Option<&Path> {
        self.shim_dir.as_deref()
    }
    /// Bundle dir of a v2 task (its `rootfs` is the mounted container root).
    pub fn bundle(&self, namespace: &str, id: &str) -> PathBuf {
        self.state()
            .join("io.containerd.runtime.v2.task")
            .join(namespace)
            .join(id)
    }

    /// Last `n` lines of containerd's log.
    pub fn log_tail(&self, n: usize) -> String {
        let s = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn remember(&self, namespace: &str) {
        if let Ok(mut ns) = self.namespaces.lock() {
            ns.insert(namespace.to_string());
        }
    }

    /// A `ctr` runner for `namespace`.
    pub fn ctr(&self, namespace: &str) -> Ctr {
        self.remember(namespace);
        Ctr::new(&self.socket(), namespace)
    }

    /// A gRPC client for `namespace`.
    pub async fn client(&self, namespace: &str) -> Result<Client> {
        self.remember(namespace);
        Client::connect(&self.socket(), namespace).await
    }

    /// Imports the busybox test image into `namespace`; returns its ref.
    pub fn import_test_image(&self, namespace: &str) -> Result<String> {
        let tar = image::cached_oci_archive()?;
        let ctr = self.ctr(namespace);
        // ctr 1.6 imports and unpacks (default snapshotter) in one go.
        ctr.ok(["images".as_ref(), "import".as_ref(), tar.as_os_str()])
            .context("importing test image")?;
        Ok(image::TEST_IMAGE_REF.to_string())
    }

    /// Asserts that deleted container `id` of `namespace` left nothing behind:
    /// none of `pids` alive, no mount/dir named after it under root/state, no
    /// FIFO in the FIFO dir, no cgroup dir named after it (below `namespace`).
    pub fn assert_clean(&self, namespace: &str, id: &str, pids: &[u32]) -> Result<()> {
        cleanup::assert_no_leftovers(&cleanup::Leftovers {
            container_id: id,
            namespace: Some(namespace),
            pids: pids.to_vec(),
            dirs: vec![self.root(), self.state()],
            fifo_dir: Some(self.fifo_dir()),
        })
    }

    /// Kills and deletes all tasks and containers in all namespaces used.
    fn remove_everything(&self) {
        let namespaces: Vec<String> = self
            .namespaces
            .lock()
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default();
        for ns in namespaces {
            let ctr = Ctr::new(&self.socket(), &ns).with_timeout(Duration::from_secs(20));
            let mut ids: BTreeSet<String> =
                ctr.list("tasks").unwrap_or_default().into_iter().collect();
            ids.extend(ctr.list("containers").unwrap_or_default());
            for id in ids {
                ctr.force_remove(&id);
            }
        }
    }
}

impl Drop for TestContainerd {
    fn drop(&mut self) {
        if self.child.lock().map(|c| c.is_some()).unwrap_or(false) {
            self.remove_everything();
        }
        if let Err(e) = self.stop_daemon() {
            eprintln!("stopping containerd: {e:#}");
        }
        // Shims that outlived containerd: they carry `-address <sock>`.
        cleanup::kill_processes_mentioning(&self.socket().display().to_string());
        cleanup::unmount_under(&self.dir);
        let namespaces: Vec<String> = self
            .namespaces
            .lock()
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default();
        for ns in &namespaces {
            cleanup::remove_empty_cgroup_dirs(ns);
        }
        if std::env::var_os("MOSE_TEST_KEEP").is_some() {
            eprintln!("keeping {}", self.dir.display());
        } else if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("removing {}: {e}", self.dir.display());
        }
    }
}

/// The configuration of a private containerd 2.x (config `version = 3`):
/// the same as [`containerd_config`] in 2.x's plugin names (the CRI runtime
/// options moved to `io.containerd.cri.v1.runtime`), without the default
/// imports of `/etc/containerd/conf.d` and without NRI (2.x enables it on
/// one host-wide socket, which parallel private daemons would share).
pub fn containerd_config_v3(root: &Path, state: &Path, socket: &Path) -> String {
    format!(
        r#"version = 3
root = "{root}"
state = "{state}"
imports = []

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  level = "debug"

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.cri.v1.runtime".containerd]
  default_runtime_name = "runc"

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.mose]
  runtime_type = "io.containerd.mose.v2"
  pod_annotations = ["mose.io/*"]
  container_annotations = ["mose.io/*"]

[plugins."io.containerd.nri.v1.nri"]
  disable = true
"#,
        root = root.display(),
        state = state.display(),
        sock = socket.display(),
    )
}

/// The configuration of a private containerd 1.x for MOSE's tests and testbed:
/// its own root, state and sockets, and the CRI runtimes `runc` and `mose`
/// (the latter passing `mose.io/*` pod and container annotations, as
/// `config/containerd-mose.toml` does).
pub fn containerd_config(root: &Path, state: &Path, socket: &Path) -> String {
    containerd_config_with(root, state, socket, &CriSettings::default())
}

/// The CRI settings of a node whose pods run (the testbed's): the sandbox
/// image and where CNI's plugins and network configuration are.
#[derive(Debug, Clone, Default)]
pub struct CriSettings {
    /// `sandbox_image` (must be in the node's `k8s.io` namespace).
    pub sandbox_image: Option<String>,
    /// CNI `bin_dir` and `conf_dir`.
    pub cni: Option<(PathBuf, PathBuf)>,
    /// `restrict_oom_score_adj`: the CRI gives the sandbox an OOM score of
    /// -998, which needs `CAP_SYS_RESOURCE`; where the daemon lacks it
    /// (this sandboxed machine's root does), runc's init fails ("can't get
    /// final child's PID from pipe") unless the score is restricted.
    pub restrict_oom_score_adj: bool,
    /// NRI's socket (containerd ≥ 1.7): NRI enabled with external plugins
    /// connecting there (`None`: NRI left disabled, the default).
    pub nri_socket: Option<PathBuf>,
}

/// [`containerd_config`] with the CRI's `cri` settings.
pub fn containerd_config_with(
    root: &Path,
    state: &Path,
    socket: &Path,
    cri: &CriSettings,
) -> String {
    let sandbox = cri
        .sandbox_image
        .as_ref()
        .map(|i| format!("  sandbox_image = \"{i}\"\n"))
        .unwrap_or_default()
        + if cri.restrict_oom_score_adj {
            "  restrict_oom_score_adj = true\n"
        } else {
            ""
        };
    let cni = cri
        .cni
        .as_ref()
        .map(|(bin, conf)| {
            format!(
                "\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"{}\"\n  conf_dir = \"{}\"\n",
                bin.display(),
                conf.display()
            )
        })
        .unwrap_or_default();
    let nri = cri
        .nri_socket
        .as_ref()
        .map(|sock| {
            format!(
                "\n[plugins.\"io.containerd.nri.v1.nri\"]\n  disable = false\n  \
                 disable_connections = false\n  socket_path = \"{s}\"\n  \
                 plugin_path = \"{s}.d\"\n  plugin_config_path = \"{s}.conf.d\"\n",
                s = sock.display()
            )
        })
        .unwrap_or_default();
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  level = "debug"

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
{sandbox}
[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.mose]
  runtime_type = "io.containerd.mose.v2"
  pod_annotations = ["mose.io/*"]
  container_annotations = ["mose.io/*"]
{cni}{nri}"#,
        root = root.display(),
        state = state.display(),
        sock = socket.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_parsed() {
        for (text, want) in [
            (
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3",
                Some((1, 6)),
            ),
            (
                "containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+deb13u1",
                Some((1, 7)),
            ),
            (
                "containerd github.com/containerd/containerd v2.2.4 193637f7ee8a",
                Some((2, 2)),
            ),
            ("nonsense", None),
        ] {
            assert_eq!(parse_version(text), want, "{text}");
        }
    }
}
