//! The cold migrations MOSE is compared with, run on the same testbed and
//! links as MOSE's techniques in one benchmark invocation:
//!
//! - [`pipeline`]: the strongest hand-made cold migration — `runc checkpoint`
//!   into tmpfs, streamed as tar over TCP while it is read, unpacked into
//!   tmpfs on the destination and `runc restore`d from there;
//! - [`podman`]: the MOSE paper's state of the art — Podman's
//!   `container checkpoint --export`, the archive over the same link,
//!   `container restore --import`;
//! - [`ctr`]: `ctr tasks checkpoint --exit`, the image tar ingested into the
//!   destination containerd's content store, and a containerd restore.
//!
//! Each reports its phases in the shape of a MOSE migration result (`name`,
//! `start_ms`, `duration_ms`, `bytes`), so tables and timelines treat both alike.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

pub mod ctr;
pub mod pipeline;
pub mod podman;

/// The baselines' tmpfs: checkpoint images, archives, bundles.
pub const WORK_DIR: &str = "/run/mose-baseline";
/// The TCP port a baseline's destination receives its transfer on.
pub const XFER_PORT: u16 = 7799;

/// How long a baseline's receiver waits for its sender to connect.
pub const ACCEPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Accepts one connection on `listener`, or fails after `timeout` (a sender
/// that failed before connecting must not leave the port taken forever).
pub fn accept_within(
    listener: &std::net::TcpListener,
    timeout: std::time::Duration,
) -> Result<std::net::TcpStream> {
    listener.set_nonblocking(true)?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() > deadline {
                    anyhow::bail!("no sender connected within {timeout:?}");
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Streams directory `dir` as tar over one TCP connection through the
/// testbed link, from node 1's netns to node 2's, where `receive` reads the
/// connection (on its own thread, as it arrives): what `receive` returns.
/// The receiver is always joined before the port is used again; it ends on
/// EOF, or when no sender connected within [`ACCEPT_TIMEOUT`].
pub fn send_dir_as_tar<T: Send + 'static>(
    c: &crate::cluster::Cluster,
    dir: &Path,
    receive: impl FnOnce(std::net::TcpStream) -> Result<T> + Send + 'static,
) -> Result<T> {
    use std::io::Write;
    let (n1, n2) = (c.node(1)?, c.node(2)?);
    let ip2 = n2.ip();
    let listener = n2.run_in_netns(move || Ok(std::net::TcpListener::bind((ip2, XFER_PORT))?))?;
    let receiver = std::thread::spawn(move || receive(accept_within(&listener, ACCEPT_TIMEOUT)?));
    let dir = dir.to_path_buf();
    let sent = n1.run_in_netns(move || -> Result<()> {
        let s = std::net::TcpStream::connect((ip2, XFER_PORT))?;
        let mut b = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, s));
        b.append_dir_all(".", &dir)?;
        b.into_inner()?.flush()?;
        Ok(())
    });
    let received = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the baseline's tar receiver panicked"))?;
    sent.context("sending the checkpoint as tar")?;
    received
}

/// The CRIU configuration file every baseline's container names in its
/// `org.criu.config` annotation: CRIU closes the clients' TCP connections
/// and skips unaccepted ones, as MOSE tells it to.
pub fn criu_config() -> PathBuf {
    Path::new(WORK_DIR).join("criu.conf")
}

/// Mounts the baselines' tmpfs and writes their CRIU configuration.
pub fn prepare() -> Result<()> {
    mose_migrate::ensure_tmpfs(Path::new(WORK_DIR))?;
    std::fs::write(criu_config(), "tcp-close\nskip-in-flight\n")
        .with_context(|| format!("writing {}", criu_config().display()))
}

/// What `--techniques` calls each baseline.
pub const BASELINES: [&str; 3] = ["pipeline", "podman", "ctr-content-store"];

/// One step of a baseline migration, on the migration's own clock.
#[derive(Debug, Clone, Serialize)]
pub struct BaselinePhase {
    pub name: String,
    /// Milliseconds from the migration's start (the checkpoint call).
    pub start_ms: f64,
    pub duration_ms: f64,
    /// Bytes moved over the link in this step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// A finished baseline migration. Every baseline is cold: its downtime, as
/// the baseline itself sees it, is its whole span, `total_ms`.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineRun {
    pub technique: String,
    pub total_ms: f64,
    /// Bytes carried over the link (the archive or tar stream).
    pub bytes: u64,
    pub phases: Vec<BaselinePhase>,
}

impl BaselineRun {
    /// A result in the shape of MOSE's `MigrationResult` JSON (status `ok`,
    /// `downtime_ms` = `total_ms`), for tables, JSON and timelines.
    pub fn to_result_json(&self) -> serde_json::Value {
        serde_json::json!({
            "status": "ok",
            "technique": self.technique,
            "downtime_ms": self.total_ms,
            "total_ms": self.total_ms,
            "bytes_sent": self.bytes,
            "rounds": 0,
            "phases": self.phases,
        })
    }
}

/// Times consecutive steps of a baseline on one clock.
pub struct PhaseClock {
    start: std::time::Instant,
    last: std::time::Instant,
    phases: Vec<BaselinePhase>,
}

impl Default for PhaseClock {
    fn default() -> Self {
        Self::new()
    }
}

impl PhaseClock {
    pub fn new() -> Self {
        let now = std::time::Instant::now();
        Self {
            start: now,
            last: now,
            phases: Vec::new(),
        }
    }

    /// Ends the current step (begun where the previous one ended) as `name`.
    pub fn mark(&mut self, name: &str, bytes: Option<u64>) {
        let now = std::time::Instant::now();
        self.phases.push(BaselinePhase {
            name: name.into(),
            start_ms: crate::ms(self.last - self.start),
            duration_ms: crate::ms(now - self.last),
            bytes,
        });
        self.last = now;
    }

    /// The finished run: its span is from the clock's start to the last mark.
    pub fn finish(self, technique: &str, bytes: u64) -> BaselineRun {
        BaselineRun {
            technique: technique.into(),
            total_ms: crate::ms(self.last - self.start),
            bytes,
            phases: self.phases,
        }
    }
}
