//! A private containerd instance living in a temp dir.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::client::Client;
use crate::ctr::{wait_timeout, Ctr};
use crate::{cleanup, image};

/// Name of the shim binary looked up for the MOSE runtime.
pub const SHIM_BINARY: &str = "containerd-shim-mose-v2";

/// How long to wait for containerd to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

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
        containerd_config(&self.root(), &self.state(), &self.socket())
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
        path.push_str("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(self.dir.join("config.toml"))
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Own process group so that a ^C to the test run does not hit it first.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().context("spawning containerd")?;
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

/// The configuration of a private containerd for MOSE's tests and testbed:
/// its own root, state and sockets, and the CRI runtimes `runc` and `mose`.
pub fn containerd_config(root: &Path, state: &Path, socket: &Path) -> String {
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

[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.mose]
  runtime_type = "io.containerd.mose.v2"
"#,
        root = root.display(),
        state = state.display(),
        sock = socket.display(),
    )
}
