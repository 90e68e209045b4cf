//! A MOSE cluster on the testbed: every node runs containerd, the MOSE shim
//! and `mose-plugin` with credentials from one cluster CA, and migrations are
//! driven with `mosectl` from inside the source node's network namespace.
//!
//! As an operator sets it up: the CA lives in a directory of its own on the
//! test host, and each node gets only its bundle from `mosectl ca issue
//! --out` (`<node dir>/tls`: ca.pem, `<node>.pem`, `<node>.key`), which its
//! plugin and `mosectl migrate` from it take as `--tls-dir`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::testbed::{Node, PluginCommand, Testbed, TestbedOptions};

/// Port every node's plugin listens on.
pub const PLUGIN_PORT: u16 = 7700;

/// Where the MOSE binaries are: `$MOSE_BIN_DIR`, else the shim dir the tests
/// use (target/debug or target/release).
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("MOSE_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let d = mose_tests::containerd::shim_dir()
        .ok_or_else(|| anyhow!("MOSE binaries not built: run `cargo build --workspace --bins`"))?;
    for b in [
        "mose-plugin",
        "mosectl",
        "containerd-shim-mose-v2",
        "mose-pod-cni",
        "mose-nri",
    ] {
        if !d.join(b).exists() {
            bail!(
                "{} is missing in {}: run `cargo build --workspace --bins`",
                b,
                d.display()
            );
        }
    }
    Ok(d)
}

/// containerd's namespace of the CRI's pods and images.
pub const CRI_NAMESPACE: &str = "k8s.io";

pub struct Cluster {
    pub bed: Testbed,
    /// The cluster CA's directory (`mosectl ca init --dir`, `ca issue
    /// --dir`); no node is given it. Nodes' credentials: [`Self::bundle_dir`].
    pub tls: PathBuf,
    pub bin: PathBuf,
}

/// Node `node`'s credentials bundle: `<node dir>/tls`.
pub fn bundle_of(node: &Node) -> PathBuf {
    node.dir().join("tls")
}

/// The admission policy of the suite's nodes (see config/admission.toml):
/// its containers use the node's network (`ctr run --net-host`, which also
/// bind-mounts the host's /etc/hosts and /etc/resolv.conf) and `ctr run`'s
/// default spec, which sets no seccomp profile.
pub const TESTBED_ADMISSION: &str = "\
[default]
host-namespaces = [\"network\"]
host-paths = [\"/etc/hosts\", \"/etc/resolv.conf\"]
unconfined = true
";

/// `--admission <node dir>/admission.toml` holding [`TESTBED_ADMISSION`],
/// unless the caller's plugin arguments name a policy of their own.
fn testbed_admission(node: &Node, plugin_args: &[String]) -> Vec<String> {
    if plugin_args.iter().any(|a| a == "--admission") {
        return Vec::new();
    }
    let path = node.dir().join("admission.toml");
    if let Err(e) = std::fs::write(&path, TESTBED_ADMISSION) {
        eprintln!("cluster: writing {}: {e}", path.display());
    }
    vec!["--admission".into(), path.display().to_string()]
}

fn run(cmd: &mut std::process::Command, what: &str) -> Result<String> {
    let o = cmd.output().with_context(|| format!("running {what}"))?;
    if !o.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

impl Cluster {
    /// Brings up `nodes` nodes with their plugins and cluster credentials.
    pub fn up(nodes: usize, rate_mbit: Option<u32>) -> Result<Self> {
        Self::up_with(nodes, rate_mbit, &[])
    }

    /// Like [`Cluster::up`], with extra `mose-plugin` arguments for every node
    /// (e.g. `--policy-program`).
    pub fn up_with(nodes: usize, rate_mbit: Option<u32>, plugin_args: &[String]) -> Result<Self> {
        let plugin_args = plugin_args.to_vec();
        let bin = bin_dir()?;
        let tls = tempfile::Builder::new()
            .prefix("mose-ca-")
            .tempdir_in("/tmp")
            .context("creating the CA's directory")?
            .keep();
        let mosectl = bin.join("mosectl");
        run(
            std::process::Command::new(&mosectl)
                .args(["ca", "init", "--dir"])
                .arg(&tls),
            "mosectl ca init",
        )?;
        let plugin = bin.join("mose-plugin").display().to_string();
        let (tls2, mosectl2) = (tls.clone(), mosectl.clone());
        // each node's bundle is issued for the address the testbed gave it,
        // right before its plugin starts
        let mut opts = TestbedOptions::default()
            .nodes(nodes)
            .plugin_fn(move |node: &Node| {
                let bundle = bundle_of(node);
                let issued = run(
                    std::process::Command::new(&mosectl2)
                        .args(["ca", "issue", "--dir"])
                        .arg(&tls2)
                        .args(["--node", node.name(), "--ip", &node.ip().to_string()])
                        .arg("--out")
                        .arg(&bundle),
                    "mosectl ca issue",
                );
                if let Err(e) = issued {
                    eprintln!("cluster: {e:#}");
                    return None;
                }
                Some(PluginCommand::new(
                    plugin.clone(),
                    [
                        "--listen".to_string(),
                        format!("{}:{PLUGIN_PORT}", node.ip()),
                        "--containerd".into(),
                        node.containerd_socket().display().to_string(),
                        "--tls-dir".into(),
                        bundle.display().to_string(),
                        "--node".into(),
                        node.name().to_string(),
                        "--work".into(),
                        // tmpfs, one directory per testbed: endpoints clean theirs at start
                        node.dir()
                            .parent()
                            .map(crate::testbed::incoming_root)
                            .unwrap_or_else(|| "/run/mose/incoming/testbed".into())
                            .display()
                            .to_string(),
                        "--state".into(),
                        node.dir().join("mose-state").display().to_string(),
                        "--policy-socket".into(),
                        node.dir().join("policy.sock").display().to_string(),
                        "--pods-socket".into(),
                        crate::testbed::segment::agent_socket(node.dir())
                            .display()
                            .to_string(),
                    ]
                    .into_iter()
                    .chain(testbed_admission(node, &plugin_args))
                    .chain(plugin_args.iter().cloned())
                    .collect::<Vec<_>>(),
                ))
            });
        if let Some(r) = rate_mbit {
            opts = opts.rate_mbit(r);
        }
        let bed = Testbed::up(opts)?;
        Ok(Self { bed, tls, bin })
    }

    pub fn node(&self, i: usize) -> Result<&Node> {
        self.bed.node(i)
    }

    /// `ip:port` of node `i`'s plugin.
    pub fn endpoint(&self, i: usize) -> Result<String> {
        Ok(format!("{}:{PLUGIN_PORT}", self.node(i)?.ip()))
    }

    /// Runs `mosectl migrate` on node `from` (inside its netns) towards node
    /// `to`; returns the parsed JSON result (whatever the status).
    /// Imports the state-service image on node `node` and runs it there as
    /// container `state` in `ns` (MOSE runtime, the node's network, port
    /// 7070) with `mib` MiB of state and `extra` arguments; returns its
    /// address once it answers.
    pub fn run_state_service(
        &self,
        node: usize,
        ns: &str,
        mib: u32,
        extra: &[&str],
    ) -> Result<String> {
        use mose_workloads::images::{cache_dir, state_service_archive, STATE_SERVICE_REF};
        let n = self.node(node)?;
        let archive = state_service_archive(None, &cache_dir())?;
        mose_workloads::image::ctr_import(n.containerd_socket(), ns, &archive)?;
        let mib = mib.to_string();
        let mut args = vec![
            "run",
            "-d",
            "--runtime",
            "io.containerd.mose.v2",
            "--net-host",
            STATE_SERVICE_REF,
            "state",
            "/usr/local/bin/mose-state-service",
            "--port",
            "7070",
            "--state-mib",
            &mib,
        ];
        args.extend(extra);
        n.ctr(ns).ok(args)?;
        let addr = format!("{}:7070", n.ip());
        crate::wait_for(
            "the state service",
            std::time::Duration::from_secs(30),
            || mose_workloads::probe::ping(&addr).is_ok(),
        );
        Ok(addr)
    }

    /// Node `node`'s agent's Prometheus metrics, as an operator scrapes them
    /// (`GET /metrics` on its default `--metrics-listen`, inside the node):
    /// the whole HTTP response.
    pub fn metrics(&self, node: usize) -> Result<String> {
        use std::io::{Read, Write};
        self.node(node)?.run_in_netns(|| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", 9464))
                .context("connecting to the agent's metrics on 127.0.0.1:9464")?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        })
    }

    pub fn migrate(
        &self,
        from: usize,
        to: usize,
        ns: &str,
        id: &str,
        extra: &[&str],
    ) -> Result<serde_json::Value> {
        let o = self
            .migrate_command(from, to, ns, id, extra)?
            .output()
            .context("running mosectl migrate")?;
        let text = String::from_utf8_lossy(&o.stdout);
        serde_json::from_str(text.trim()).with_context(|| {
            format!(
                "mosectl printed no JSON result: stdout {text:?}, stderr {:?}",
                String::from_utf8_lossy(&o.stderr)
            )
        })
    }

    /// The `mosectl migrate` command [`Self::migrate`] runs, for a test that
    /// needs the process itself (to kill the source mid-migration).
    pub fn migrate_command(
        &self,
        from: usize,
        to: usize,
        ns: &str,
        id: &str,
        extra: &[&str],
    ) -> Result<std::process::Command> {
        let src = self.node(from)?;
        let mut cmd = src.command(self.bin.join("mosectl"));
        cmd.args(["migrate", "--address"])
            .arg(src.containerd_socket())
            .args([
                "--namespace",
                ns,
                id,
                "--to",
                &self.endpoint(to)?,
                "--tls-dir",
            ])
            .arg(bundle_of(src))
            .args(["--node", src.name(), "--state"])
            .arg(src.dir().join("mose-state"))
            .arg("--policy-socket")
            .arg(self.policy_socket(from)?)
            .args(["--output", "json"])
            .args(extra);
        Ok(cmd)
    }

    /// Makes every node ready for Kubernetes pods: the sandbox image
    /// (`mose-pause`) and `images` (OCI archives) in the CRI's `k8s.io`
    /// namespace, visible to the CRI.
    pub fn enable_pods(&self, images: &[PathBuf]) -> Result<()> {
        let pause = mose_workloads::images::pause_archive(&mose_workloads::images::cache_dir())?;
        for n in self.bed.nodes() {
            for a in std::iter::once(&pause).chain(images) {
                mose_workloads::image::ctr_import(n.containerd_socket(), CRI_NAMESPACE, a)?;
            }
            let mut cri = crate::cri::Cri::connect(n.containerd_socket())?;
            if !cri.has_image(mose_workloads::images::PAUSE_REF)? {
                bail!(
                    "node {}: the CRI does not list the imported sandbox image {}",
                    n.name(),
                    mose_workloads::images::PAUSE_REF
                );
            }
        }
        Ok(())
    }

    /// Kills and deletes container `id` on node `node`, best effort (between
    /// benchmark runs).
    pub fn remove(&self, node: usize, ns: &str, id: &str) {
        if let Ok(n) = self.node(node) {
            let ctr = n.ctr(ns);
            let _ = ctr.run(["tasks", "kill", "-s", "SIGKILL", id]);
            std::thread::sleep(std::time::Duration::from_millis(300));
            let _ = ctr.run(["tasks", "delete", id]);
            let _ = ctr.run(["containers", "delete", id]);
        }
    }

    /// Node `i`'s plugin work directory (tmpfs): one subdirectory per
    /// migration it is receiving, created when the migration begins.
    pub fn incoming_dir(&self, i: usize) -> Result<PathBuf> {
        Ok(crate::testbed::incoming_root(self.bed.dir()).join(self.node(i)?.name()))
    }

    /// Waits (up to 60 s, panicking after: for tests) until a task in
    /// namespace `ns` on node `i` is paused, i.e. a migration froze it.
    pub fn wait_frozen(&self, i: usize, ns: &str) {
        let n = self.node(i).expect("the node exists");
        crate::wait_for(
            "the source to freeze",
            std::time::Duration::from_secs(60),
            || {
                n.ctr(ns)
                    .ok(["tasks", "ls"])
                    .unwrap_or_default()
                    .contains("PAUSED")
            },
        );
    }

    /// Waits until node `i` is receiving a migration (or `timeout` passes).
    pub fn wait_receiving(&self, i: usize, timeout: std::time::Duration) -> Result<()> {
        let dir = self.incoming_dir(i)?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let busy = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.flatten()
                        .any(|e| !e.file_name().to_string_lossy().starts_with('.'))
                })
                .unwrap_or(false);
            if busy {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("node {i} did not start receiving a migration within {timeout:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Node `i`'s policy hook socket.
    pub fn policy_socket(&self, i: usize) -> Result<PathBuf> {
        Ok(self.node(i)?.dir().join("policy.sock"))
    }

    /// Runs `mosectl plan` on node `from` for a migration to node `to`.
    pub fn plan(&self, from: usize, to: usize, ns: &str, id: &str) -> Result<serde_json::Value> {
        let src = self.node(from)?;
        let o = src
            .command(self.bin.join("mosectl"))
            .args([
                "plan",
                "--namespace",
                ns,
                id,
                "--to",
                &self.endpoint(to)?,
                "--output",
                "json",
                "--policy-socket",
            ])
            .arg(self.policy_socket(from)?)
            .output()
            .context("running mosectl plan")?;
        let text = String::from_utf8_lossy(&o.stdout);
        serde_json::from_str(text.trim()).with_context(|| {
            format!(
                "mosectl plan printed no JSON: stdout {text:?}, stderr {:?}",
                String::from_utf8_lossy(&o.stderr)
            )
        })
    }

    /// The cluster CA's directory (see [`Cluster::tls`]).
    pub fn tls_dir(&self) -> &Path {
        &self.tls
    }

    /// Node `i`'s credentials bundle (its plugin's `--tls-dir`).
    pub fn bundle_dir(&self, i: usize) -> Result<PathBuf> {
        Ok(bundle_of(self.node(i)?))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tls);
        // the plugins' tmpfs work dirs (see `up`)
        let incoming = crate::testbed::incoming_root(self.bed.dir());
        mose_tests::cleanup::unmount_under(&incoming);
        let _ = std::fs::remove_dir_all(&incoming);
    }
}

impl Cluster {
    /// Runs `f` in the user netns (a client on the service segment);
    /// panics when it cannot run there (for tests).
    pub fn as_user<T: Send + 'static>(&self, f: impl FnOnce() -> Result<T> + Send + 'static) -> T {
        self.bed
            .run_in_user(f)
            .expect("the client's work in the user netns")
    }

    /// A 50 req/s probe of `addr` from the user netns on one connection for
    /// the whole run: a stall is waited out (20 s), never answered by
    /// reconnecting (a reconnect is counted).
    pub fn one_connection_probe(&self, addr: &str) -> mose_workloads::probe::ProbeHandle {
        let mut cfg = mose_workloads::probe::ProbeConfig::new(vec![addr.to_string()], 50.0);
        cfg.read_timeout = std::time::Duration::from_secs(20);
        self.as_user(move || mose_workloads::probe::Probe::start_with(cfg))
    }
}

/// Panics unless the probe's one connection carried the whole run: never
/// reset, no request failed, the sequence continued (for tests).
pub fn assert_connection_kept(r: &mose_workloads::probe::ProbeResult) {
    assert_eq!(
        r.reconnects,
        0,
        "the probe's one connection was never reset: {}",
        r.summary()
    );
    assert_eq!(r.errors, 0, "no request failed: {}", r.summary());
    assert!(r.seq_ok, "the sequence continued: {}", r.summary());
}
