//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use mose_tests::client::Client;
use mose_tests::containerd::TestContainerd;
use mose_tests::ctr::{Ctr, Output};
use mose_tests::fifo::TaskIo;

/// Counter that keeps its count only in memory and writes it to /tmp/c every
/// 50 ms. The file is replaced by a rename, so it always holds a whole value:
/// written in place, a process frozen (pause, checkpoint) between the
/// truncation and the write left it empty.
pub const COUNTER: &str =
    "i=0; while true; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/c; sleep 0.05; done";

/// Bound for waits on short-lived processes.
pub const WAIT: Duration = Duration::from_secs(30);

/// One private containerd with the test image imported into a fresh namespace.
pub struct Env {
    pub ctr: Ctr,
    pub ns: String,
    pub image: String,
    pub rt: String,
    /// `--runtime-config-path` file naming the OCI runtime binary
    /// (`MOSE_TEST_BINARY`, or [`env_with_binary`]); `None`: the default.
    pub runtime_config: Option<String>,
    // Last so that everything above is dropped before containerd goes away.
    pub cd: TestContainerd,
}

/// Starts containerd and imports the image; `name` prefixes the namespace.
/// Containers run under the OCI runtime `MOSE_TEST_BINARY` names, if any.
pub fn env(name: &str) -> Env {
    env_with_binary(name, mose_tests::oci_binary().as_deref())
}

/// Like [`env`], with containers created by `run_args`/`create_container`
/// asking the shim for OCI runtime `binary` (`BinaryName`).
pub fn env_with_binary(name: &str, binary: Option<&str>) -> Env {
    let cd = TestContainerd::start().expect("start private containerd");
    let ns = mose_tests::unique_id(name);
    let image = cd
        .import_test_image(&ns)
        .expect("import busybox test image");
    let runtime_config = binary.map(|b| {
        let path = cd.dir().join("oci-runtime.toml");
        std::fs::write(&path, format!("BinaryName = {b:?}\n")).expect("write runtime options");
        path.display().to_string()
    });
    Env {
        ctr: cd.ctr(&ns),
        ns,
        image,
        rt: mose_tests::runtime(),
        runtime_config,
        cd,
    }
}

impl Env {
    /// A gRPC client for the namespace.
    pub async fn client(&self) -> Client {
        self.cd.client(&self.ns).await.expect("connect gRPC client")
    }

    /// Args for `ctr run --runtime RT --fifo-dir DIR <flags> IMAGE ID <cmd>`.
    pub fn run_args(&self, id: &str, flags: &[&str], cmd: &[&str]) -> Vec<String> {
        let fifo = self.cd.fifo_dir().display().to_string();
        let mut a: Vec<String> = vec!["run".into(), "--runtime".into(), self.rt.clone()];
        a.push("--fifo-dir".into());
        a.push(fifo);
        a.extend(self.runtime_config_flags());
        a.extend(flags.iter().map(|s| s.to_string()));
        a.push(self.image.clone());
        a.push(id.into());
        a.extend(cmd.iter().map(|s| s.to_string()));
        a
    }

    /// `ctr run` in the foreground; returns its output.
    pub fn run(&self, id: &str, flags: &[&str], cmd: &[&str]) -> Output {
        self.ctr
            .run(self.run_args(id, flags, cmd))
            .expect("ctr run finished in time")
    }

    /// `ctr run -d --null-io` (detached long-running container).
    pub fn run_detached(&self, id: &str, flags: &[&str], cmd: &[&str]) {
        let mut f = vec!["-d", "--null-io"];
        f.extend_from_slice(flags);
        self.ctr
            .run(self.run_args(id, &f, cmd))
            .and_then(Output::check)
            .expect("ctr run -d");
    }

    /// `ctr containers create --runtime RT <flags> IMAGE ID`, then sets
    /// `process.args` to `cmd` through the Containers API (ctr 1.6 parses a
    /// `-c` anywhere on its command line as its own `--config` flag).
    pub async fn create_container(&self, id: &str, flags: &[&str], cmd: &[&str]) {
        let mut a: Vec<String> = vec![
            "containers".into(),
            "create".into(),
            "--runtime".into(),
            self.rt.clone(),
        ];
        a.extend(self.runtime_config_flags());
        a.extend(flags.iter().map(|s| s.to_string()));
        a.push(self.image.clone());
        a.push(id.into());
        self.ctr
            .run(a)
            .and_then(Output::check)
            .expect("ctr containers create");
        if !cmd.is_empty() {
            let c = self.client().await;
            let mut spec = c.container_spec(id).await.expect("get spec");
            spec["process"]["args"] = serde_json::json!(cmd);
            c.set_container_spec(id, &spec).await.expect("set spec");
        }
    }

    /// `--runtime-config-path FILE` when a binary was chosen (before the
    /// caller's flags: a test's own file wins).
    pub fn runtime_config_flags(&self) -> Vec<String> {
        match &self.runtime_config {
            Some(p) => vec!["--runtime-config-path".into(), p.clone()],
            None => Vec::new(),
        }
    }

    /// FIFOs for a process named `name`.
    pub fn fifos(&self, name: &str, stdin: bool, stderr: bool, terminal: bool) -> TaskIo {
        TaskIo::create(&self.cd.fifo_dir(), name, stdin, stderr, terminal).expect("mkfifo")
    }

    /// Path of `path` (absolute in the container) in the running task's rootfs.
    pub fn rootfs_path(&self, id: &str, path: &str) -> PathBuf {
        self.cd
            .bundle(&self.ns, id)
            .join("rootfs")
            .join(path.trim_start_matches('/'))
    }

    /// Current counter value in `/tmp/c` of task `id`, if readable. The
    /// writer truncates before it writes: an empty read is retried briefly.
    pub fn counter(&self, id: &str) -> Option<u64> {
        let path = self.rootfs_path(id, "/tmp/c");
        for _ in 0..10 {
            let text = std::fs::read_to_string(&path).ok()?;
            if let Ok(v) = text.trim().parse() {
                return Some(v);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// Waits until the counter of `id` reaches at least `n`.
    pub fn wait_counter(&self, id: &str, n: u64) -> u64 {
        mose_tests::poll_until(&format!("counter of {id} >= {n}"), WAIT, || {
            self.counter(id).filter(|&v| v >= n)
        })
        .expect("counter advancing")
    }

    /// Asserts that deleted container `id` left nothing behind.
    pub fn assert_clean(&self, id: &str, pids: &[u32]) {
        if let Err(e) = self.cd.assert_clean(&self.ns, id, pids) {
            panic!("{e:#}\ncontainerd log tail:\n{}", self.cd.log_tail(30));
        }
    }
}
