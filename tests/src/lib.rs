//! Integration-test harness for the MOSE containerd shim (`io.containerd.mose.v2`).
//!
//! It starts a private containerd per test ([`containerd::TestContainerd`]),
//! imports a busybox image built locally ([`image`]), drives containers with
//! `ctr` ([`ctr`]) and the gRPC API ([`client`]) and checks that nothing is
//! left behind ([`cleanup`]). The runtime under test comes from
//! `MOSE_TEST_RUNTIME` (default `io.containerd.mose.v2`); `MOSE_TEST_BINARY`
//! (e.g. `youki`) makes the tests that create containers through the
//! shared `Env` helpers ask the shim for that OCI runtime binary
//! (`BinaryName` in a `--runtime-config-path` file).
//!
//! Run (as root, cgroup v1, containerd 1.6 and CRIU on the machine):
//!
//! ```text
//! cargo build -p mose-shim                 # containerd-shim-mose-v2 into target/debug
//! cargo test -p mose-tests -- --test-threads=2
//! MOSE_TEST_RUNTIME=io.containerd.runc.v2 cargo test -p mose-tests -- --test-threads=2
//! MOSE_TEST_BINARY=youki cargo test -p mose-tests --test lifecycle --test task_ops
//! cargo test -p mose-tests --test youki        # youki's task life cycle, always
//! ```
//!
//! `MOSE_SHIM_DIR` overrides where the shim binary is looked up;
//! `MOSE_TEST_KEEP=1` keeps each test's temp dir (containerd log, state).
//! `MOSE_TEST_CONTAINERD` and `MOSE_TEST_CTR` (absolute paths) choose the
//! containerd and ctr binaries (default: `containerd`, `ctr` from PATH), e.g.
//! containerd 1.7 or 2.2 (`scripts/test-containerd-matrix.sh`).

pub mod cleanup;
pub mod client;
pub mod containerd;
pub mod ctr;
pub mod fifo;
pub mod image;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// Default bound for every external command and wait.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Runtime type used by the tests: `$MOSE_TEST_RUNTIME` or `io.containerd.mose.v2`.
pub fn runtime() -> String {
    std::env::var("MOSE_TEST_RUNTIME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "io.containerd.mose.v2".to_string())
}

/// OCI runtime binary the tests ask the shim for (`BinaryName` in the
/// runtime options): `$MOSE_TEST_BINARY`, e.g. `youki`; `None` leaves the
/// shim's default (runc).
pub fn oci_binary() -> Option<String> {
    std::env::var("MOSE_TEST_BINARY")
        .ok()
        .filter(|s| !s.is_empty())
}

/// True when `bin` is an executable file in a directory of `$PATH`.
pub fn on_path(bin: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .filter_map(|d| std::fs::metadata(std::path::Path::new(d).join(bin)).ok())
        .any(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Says on the test run's own stderr (not captured by the test harness, so
/// it shows in the suite's output) that `test` skips some or all of its
/// checks, and why — e.g. a check that only applies to one containerd release.
pub fn skip_note(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "note: {test}: skipped: {why}");
}

/// True when the runtime under test is containerd's runc shim.
pub fn runtime_is_runc() -> bool {
    runtime().starts_with("io.containerd.runc.")
}

/// The cargo target dir: `$CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.join("target"))
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// A unique, short id (`<prefix>-<pid>-<n>`) usable as container id and namespace.
pub fn unique_id(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `f` every 20 ms until it returns `Some`, failing after `timeout`.
pub fn poll_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async variant of [`poll_until`]: awaits `f` every 20 ms until it yields `Some`.
pub async fn poll_until_async<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
