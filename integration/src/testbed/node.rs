//! One edge node of the testbed: a netns with its own containerd.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use mose_tests::ctr::{run_command, Ctr, Output};
use serde::{Deserialize, Serialize};

use super::net;

/// Interface name of a node's end of its veth pair (inside its netns).
pub const NODE_IFACE: &str = "eth0";

/// A node: where it lives and how to reach it. Serializable so that a
/// detached testbed can be described in JSON and loaded again by name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    pub(crate) name: String,
    pub(crate) index: usize,
    pub(crate) netns: String,
    pub(crate) ip: Ipv4Addr,
    pub(crate) dir: PathBuf,
    pub(crate) socket: PathBuf,
    pub(crate) host_veth: String,
    pub(crate) containerd_pid: Option<u32>,
    pub(crate) plugin_pid: Option<u32>,
}

impl Node {
    /// Node name (`n1`, `n2`, …).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// 1-based index.
    pub fn index(&self) -> usize {
        self.index
    }
    /// Name of its network namespace (`ip netns list`).
    pub fn netns(&self) -> &str {
        &self.netns
    }
    /// Its address on the testbed subnet (on `eth0` in the netns).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
    /// Its directory (containerd root, state, sockets, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// containerd's gRPC socket (a path: reachable from any netns).
    pub fn containerd_socket(&self) -> &Path {
        &self.socket
    }
    /// containerd's root dir.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    /// containerd's state dir.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    /// Directory for IO FIFOs (`ctr run --fifo-dir`).
    pub fn fifo_dir(&self) -> PathBuf {
        self.dir.join("fifo")
    }
    /// containerd's config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    /// containerd's log file.
    pub fn containerd_log(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }
    /// The plugin's log file (stdout and stderr).
    pub fn plugin_log(&self) -> PathBuf {
        self.dir.join("plugin.log")
    }
    /// Root-namespace end of the node's veth pair (attached to the bridge).
    pub fn host_veth(&self) -> &str {
        &self.host_veth
    }
    /// Pid of the node's containerd, if started.
    pub fn containerd_pid(&self) -> Option<u32> {
        self.containerd_pid
    }
    /// Pid of the node's plugin, if one was started.
    pub fn plugin_pid(&self) -> Option<u32> {
        self.plugin_pid
    }

    /// A `ctr` runner for this node's containerd and `namespace`.
    pub fn ctr(&self, namespace: &str) -> Ctr {
        Ctr::new(&self.socket, namespace)
    }

    /// A `Command` running `program` inside this node's netns.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        net::netns_command(&self.netns, program)
    }

    /// Runs `args` (program first) inside the node's netns with a timeout;
    /// returns the output whatever the exit code.
    pub fn exec_in_netns<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Output> {
        let (program, rest) = args
            .split_first()
            .context("exec_in_netns needs at least a program")?;
        let mut cmd = self.command(program);
        cmd.args(rest);
        run_command(cmd, None, net::CMD_TIMEOUT)
            .with_context(|| format!("running a command in netns {}", self.netns))
    }

    /// Runs Rust code on a thread inside this node's netns (see
    /// [`net::spawn_in_netns`]).
    pub fn spawn_in_netns<T, F>(&self, f: F) -> Result<JoinHandle<Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        net::spawn_in_netns(&self.netns, f)
    }

    /// Runs Rust code inside this node's netns and waits for it.
    pub fn run_in_netns<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        net::run_in_netns(&self.netns, f)
    }

    /// Imports the busybox test image into `namespace`; returns its ref.
    pub fn import_test_image(&self, namespace: &str) -> Result<String> {
        let tar = mose_tests::image::cached_oci_archive().context("building the test image")?;
        self.ctr(namespace)
            .ok(["images".as_ref(), "import".as_ref(), tar.as_os_str()])
            .with_context(|| format!("importing the test image into node {}", self.name))?;
        Ok(mose_tests::image::TEST_IMAGE_REF.to_string())
    }

    /// Shapes both directions of the node's link to `mbit` Mbit/s (tbf on the
    /// egress of each veth end), or removes shaping with `None`.
    pub fn set_rate(&self, mbit: Option<u32>) -> Result<()> {
        net::shape(Some(&self.netns), NODE_IFACE, mbit)
            .with_context(|| format!("node {} → bridge", self.name))?;
        net::shape(None, &self.host_veth, mbit)
            .with_context(|| format!("bridge → node {}", self.name))
    }

    /// Takes the node's interface down: the node drops off the network
    /// (its processes keep running).
    pub fn cut_link(&self) -> Result<()> {
        net::run_ok(
            "ip",
            &["-n", &self.netns, "link", "set", NODE_IFACE, "down"],
        )
        .with_context(|| format!("cutting the link of node {}", self.name))?;
        Ok(())
    }

    /// Brings the node's interface back up (address and shaping are kept).
    pub fn restore_link(&self) -> Result<()> {
        net::run_ok("ip", &["-n", &self.netns, "link", "set", NODE_IFACE, "up"])
            .with_context(|| format!("restoring the link of node {}", self.name))?;
        Ok(())
    }

    /// Last `n` lines of containerd's log.
    pub fn containerd_log_tail(&self, n: usize) -> String {
        tail(&self.containerd_log(), n)
    }
}

/// Last `n` lines of a file ("" if unreadable).
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
