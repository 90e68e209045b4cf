//! The MOSE paper's state of the art: Podman + CRIU.
//!
//! `podman container checkpoint --export` on the source node (Podman's own
//! defaults: the container stops, the archive is compressed with Podman
//! 4.3's default, zstd), the archive sent over TCP through the testbed link
//! into tmpfs on the destination, and `podman container restore --import`
//! there. Every node has its own Podman storage (`--root`, `--runroot`,
//! `--tmpdir` under the node's directory), as two edge nodes would, with the
//! state-service image loaded into each; every Podman command runs in the
//! node's network namespace (`nsenter --net`), and the containers use the
//! host network, i.e. the node's address.
//!
//! Clients' TCP connections are closed at checkpoint, as in MOSE's
//! techniques: the CRIU configuration file `/run/mose-baseline/criu.conf`
//! (`tcp-close`, `skip-in-flight`) is named by the OCI annotation
//! `org.criu.config`, which runc reads on checkpoint and on restore; Podman
//! 4.3's restore has no `--tcp-close` of its own, and the annotation travels
//! inside the exported archive (`config.dump`, `spec.dump`).
//!
//! Configuration (see [`ensure_ready`]): Podman reads
//! [`CONTAINERS_CONF`] only (the environment variable `CONTAINERS_CONF` is
//! set on each command it runs; the machine's `/etc/containers` is left
//! alone). It selects runc (crun 1.8 cannot checkpoint) and lowers Podman's
//! default ulimits: as root Podman asks for RLIMIT_NOFILE and RLIMIT_NPROC
//! of 1048576 for every container, more than this sandbox's hard limits
//! allow, and Podman itself lowers its own RLIMIT_NPROC to 32768 when it
//! starts, so runc (its grandchild) may not set more than that either.
//! By hand: `CONTAINERS_CONF=/run/mose/podman/containers.conf podman --root
//! <node dir>/podman/root --runroot <node dir>/podman/runroot --tmpdir
//! <node dir>/podman/tmp ...`.

use std::collections::HashSet;
use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use mose_tests::ctr::{run_command, Output};
use mose_workloads::images::{cache_dir, state_service_archive, STATE_SERVICE_REF};

use super::{criu_config, BaselineRun, PhaseClock, WORK_DIR, XFER_PORT};
use crate::cluster::Cluster;
use crate::testbed::Node;

/// What the benchmark calls this baseline.
pub const TECHNIQUE: &str = "podman";

/// The containers.conf MOSE's Podman commands read (and only it).
pub const CONTAINERS_CONF: &str = "/run/mose/podman/containers.conf";

/// The highest RLIMIT_NPROC Podman 4.3 keeps for itself when it starts
/// (measured with strace: `setrlimit(RLIMIT_NPROC, 32768)`): a container
/// cannot ask for more.
const PODMAN_NPROC: u64 = 32768;

/// What Podman asks for as root when no ulimit is configured.
const PODMAN_DEFAULT_RLIMIT: u64 = 1_048_576;

/// Bound of quick Podman commands (run, inspect, rm, version).
const SHORT: Duration = Duration::from_secs(120);
/// Bound of checkpoint, restore and image load (they grow with the state).
const LONG: Duration = Duration::from_secs(900);

/// Checks that Podman, runc and CRIU are installed and writes the
/// configuration MOSE's Podman commands use: [`CONTAINERS_CONF`] (runtime
/// runc, cgroupfs, events to a file, default ulimits the sandbox allows)
/// and, through [`super::prepare`], the baselines' tmpfs and CRIU
/// configuration. Idempotent and cheap.
pub fn ensure_ready() -> Result<()> {
    let version = tool(
        "podman",
        "podman is not usable",
        "(Debian package podman, with conmon)",
    )?;
    if !version.stdout.contains("podman version") {
        bail!(
            "`podman --version` printed {:?}: install Podman with scripts/setup.sh (Debian package podman)",
            version.stdout.trim()
        );
    }
    tool("runc", "runc is not usable", "(Debian package runc)")?;
    tool(
        "criu",
        "criu is not usable",
        "(Podman's checkpoint needs CRIU >= 4 here: scripts/provision-criu.sh)",
    )?;
    let limits =
        std::fs::read_to_string("/proc/self/limits").context("reading /proc/self/limits")?;
    let conf = containers_conf(&limits)?;
    write_if_changed(Path::new(CONTAINERS_CONF), &conf)?;
    super::prepare()?;
    std::fs::create_dir_all(archive_dir())
        .with_context(|| format!("creating {}", archive_dir().display()))?;
    Ok(())
}

/// Starts `cmd` (the state service's command line: its program becomes the
/// entrypoint) in a Podman container `id` on node `node`: runtime runc, the
/// node's network (`--network host` inside its netns), the
/// `org.criu.config` annotation, the node's own storage (the state-service
/// image is loaded there first, once per node). Returns the container's
/// init pid.
pub fn start(c: &Cluster, node: usize, id: &str, cmd: &[String]) -> Result<u32> {
    if !Path::new(CONTAINERS_CONF).exists() || !criu_config().exists() {
        ensure_ready()?;
    }
    let n = c.node(node)?;
    ensure_image(n)?;
    let (program, args) = cmd.split_first().context("podman::start needs a command")?;
    let annotation = format!("org.criu.config={}", criu_config().display());
    let mut a: Vec<&str> = vec![
        "run",
        "--detach",
        "--name",
        id,
        "--runtime",
        "runc",
        "--network",
        "host",
        "--annotation",
        &annotation,
        "--entrypoint",
        program,
        STATE_SERVICE_REF,
    ];
    a.extend(args.iter().map(String::as_str));
    podman(n, &a, SHORT)?;
    init_pid(n, id)
}

/// Migrates container `id` from node 1 to node 2: `podman container
/// checkpoint --export` into tmpfs on node 1, the archive over TCP (sender
/// in node 1's netns, listener in node 2's) into tmpfs on node 2, `podman
/// container restore --import` there. Synchronous (it blocks: call it from
/// async code as the other blocking steps, or through `spawn_blocking`).
///
/// Before the clock starts the image is made present on node 2 (as on an
/// edge node that already runs it) and the listener is bound; after it
/// stops, the checkpointed source container and both archives are removed.
pub fn migrate(c: &Cluster, id: &str) -> Result<BaselineRun> {
    let (n1, n2) = (c.node(1)?, c.node(2)?);
    ensure_image(n2)?;
    std::fs::create_dir_all(archive_dir())
        .with_context(|| format!("creating {}", archive_dir().display()))?;
    let export = archive_path(id, n1.name());
    let import = archive_path(id, n2.name());
    let _ = std::fs::remove_file(&export);
    let _ = std::fs::remove_file(&import);
    let ip2 = n2.ip();
    let listener = n2
        .run_in_netns(move || {
            TcpListener::bind((ip2, XFER_PORT))
                .with_context(|| format!("binding {ip2}:{XFER_PORT} in the destination's netns"))
        })
        .context("the archive's receiver")?;

    let mut clock = PhaseClock::new();
    let export_s = export.display().to_string();
    podman(
        n1,
        &["container", "checkpoint", "--export", &export_s, id],
        LONG,
    )?;
    let compression = archive_compression(&export)?;
    clock.mark(&format!("checkpoint --export ({compression})"), None);

    let import2 = import.clone();
    let receiver = std::thread::spawn(move || -> Result<u64> {
        let (mut s, _) = listener.accept().context("accepting the archive")?;
        let mut f = std::fs::File::create(&import2)
            .with_context(|| format!("creating {}", import2.display()))?;
        let n = std::io::copy(&mut s, &mut f).context("receiving the archive")?;
        f.flush()?;
        Ok(n)
    });
    let export2 = export.clone();
    let sent = n1.run_in_netns(move || -> Result<u64> {
        let mut f = std::fs::File::open(&export2)
            .with_context(|| format!("opening {}", export2.display()))?;
        let mut s = TcpStream::connect((ip2, XFER_PORT))
            .with_context(|| format!("connecting to {ip2}:{XFER_PORT}"))?;
        let n = std::io::copy(&mut f, &mut s).context("sending the archive")?;
        s.shutdown(Shutdown::Write)?;
        Ok(n)
    });
    let sent = match sent {
        Ok(n) => n,
        Err(e) => {
            // unblock the receiver's accept, then report the sender's error
            let _ = n2.run_in_netns(move || Ok(TcpStream::connect((ip2, XFER_PORT))?));
            let _ = receiver.join();
            return Err(e.context("sending the podman archive to node 2"));
        }
    };
    let received = receiver
        .join()
        .map_err(|_| anyhow!("the archive's receiver panicked"))??;
    if received != sent {
        bail!("sent {sent} bytes of the podman archive, node 2 received {received}");
    }
    clock.mark("archive over TCP", Some(received));

    let import_s = import.display().to_string();
    podman(n2, &["container", "restore", "--import", &import_s], LONG)?;
    clock.mark("restore --import", None);
    let run = clock.finish(TECHNIQUE, received);

    // the checkpointed (stopped) source and the archives are no longer needed
    let _ = podman(n1, &["rm", "--force", "--time", "0", id], SHORT);
    let _ = std::fs::remove_file(&export);
    let _ = std::fs::remove_file(&import);
    Ok(run)
}

/// Removes container `id` on node `node` (killed first) and its archives,
/// best effort.
pub fn remove(c: &Cluster, node: usize, id: &str) {
    if let Ok(n) = c.node(node) {
        let _ = podman(n, &["rm", "--force", "--time", "0", id], SHORT);
        let _ = std::fs::remove_file(archive_path(id, n.name()));
    }
}

/// Where Podman keeps node `n`'s images and containers.
pub fn storage_dir(n: &Node) -> PathBuf {
    n.dir().join("podman")
}

/// The global flags that give a node its own Podman.
fn storage_flags(n: &Node) -> Vec<String> {
    let d = storage_dir(n);
    [
        ("--root", "root"),
        ("--runroot", "runroot"),
        ("--tmpdir", "tmp"),
    ]
    .iter()
    .flat_map(|(flag, sub)| [flag.to_string(), d.join(sub).display().to_string()])
    .collect()
}

/// Runs `podman <node's storage> args` in node `n`'s netns with MOSE's
/// containers.conf; fails naming the command and its stderr.
fn podman(n: &Node, args: &[&str], timeout: Duration) -> Result<Output> {
    let mut cmd = n.command("podman");
    cmd.env("CONTAINERS_CONF", CONTAINERS_CONF)
        .args(storage_flags(n))
        .args(args);
    let out = run_command(cmd, None, timeout)?;
    if !out.success() {
        bail!(
            "`podman {}` on node {} failed ({}): {}",
            args.join(" "),
            n.name(),
            out.code
                .map_or_else(|| "killed".to_string(), |c| format!("exit {c}")),
            out.stderr.trim()
        );
    }
    Ok(out)
}

/// `program --version`, or an error saying what to install.
fn tool(program: &str, what: &str, package: &str) -> Result<Output> {
    let mut cmd = Command::new(program);
    cmd.arg("--version");
    run_command(cmd, None, SHORT)
        .and_then(Output::check)
        .map_err(|e| anyhow!("{what} ({e:#}): install it with scripts/setup.sh {package}"))
}

/// Loads the state-service image into node `n`'s storage unless it is
/// there (remembered per storage for the life of the process).
fn ensure_image(n: &Node) -> Result<()> {
    static LOADED: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    let loaded = LOADED.get_or_init(Default::default);
    let key = storage_dir(n);
    if loaded.lock().unwrap().contains(&key) {
        return Ok(());
    }
    if podman(n, &["image", "exists", STATE_SERVICE_REF], SHORT).is_err() {
        let archive = state_service_archive(None, &cache_dir())
            .context("building the state-service image")?;
        let archive_s = archive.display().to_string();
        podman(n, &["load", "--quiet", "--input", &archive_s], LONG)?;
        // the OCI archive names its image by its full reference
        podman(n, &["image", "exists", STATE_SERVICE_REF], SHORT).with_context(|| {
            format!(
                "{} has no image {STATE_SERVICE_REF} after podman load",
                archive.display()
            )
        })?;
    }
    loaded.lock().unwrap().insert(key);
    Ok(())
}

/// The init pid of running container `id` on node `n`.
fn init_pid(n: &Node, id: &str) -> Result<u32> {
    let out = podman(n, &["inspect", "--format", "{{.State.Pid}}", id], SHORT)?;
    let pid: u32 = out
        .stdout
        .trim()
        .parse()
        .with_context(|| format!("podman inspect gave pid {:?}", out.stdout.trim()))?;
    if pid == 0 {
        bail!("container {id} on node {} is not running", n.name());
    }
    Ok(pid)
}

fn archive_dir() -> PathBuf {
    Path::new(WORK_DIR).join("podman")
}

/// The archive of container `id` on the node named `node` (tmpfs).
fn archive_path(id: &str, node: &str) -> PathBuf {
    archive_dir().join(format!("{id}-{node}.tar.zst"))
}

/// The compression of an exported archive, from its magic number.
fn archive_compression(path: &Path) -> Result<&'static str> {
    let mut head = [0u8; 4];
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let k = std::io::Read::read(&mut f, &mut head)?;
    Ok(compression_of(&head[..k]))
}

/// `zstd`, `gzip` or `none` (a plain tar) from an archive's first bytes.
fn compression_of(head: &[u8]) -> &'static str {
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "zstd"
    } else if head.starts_with(&[0x1f, 0x8b]) {
        "gzip"
    } else {
        "none"
    }
}

/// MOSE's containers.conf for the limits in `limits` (the text of
/// `/proc/self/limits`): runc, and the default ulimits lowered to what this
/// process may hand down (NPROC also to what Podman keeps, 32768).
fn containers_conf(limits: &str) -> Result<String> {
    let nofile = hard_limit(limits, "Max open files")
        .context("no \"Max open files\" in /proc/self/limits")?
        .min(PODMAN_DEFAULT_RLIMIT);
    let nproc = hard_limit(limits, "Max processes")
        .context("no \"Max processes\" in /proc/self/limits")?
        .min(PODMAN_NPROC);
    Ok(format!(
        "# Written by MOSE (integration/src/baseline/podman.rs) for the podman baseline;\n\
         # read through CONTAINERS_CONF by MOSE's podman commands only.\n\
         [containers]\n\
         # Podman asks for nofile and nproc {PODMAN_DEFAULT_RLIMIT} by default, more than\n\
         # this machine's hard limits: runc then fails with \"error setting rlimit type 6/7\"\n\
         default_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\
         \n\
         [engine]\n\
         # crun 1.8 (Podman's default) cannot checkpoint\n\
         runtime = \"runc\"\n\
         # no systemd as pid 1, no journald\n\
         cgroup_manager = \"cgroupfs\"\n\
         events_logger = \"file\"\n"
    ))
}

/// The hard limit of the `/proc/<pid>/limits` row starting with `row`
/// (`unlimited` as `u64::MAX`).
fn hard_limit(limits: &str, row: &str) -> Option<u64> {
    let rest = limits.lines().find_map(|l| l.strip_prefix(row))?;
    let hard = rest.split_whitespace().nth(1)?;
    if hard == "unlimited" {
        Some(u64::MAX)
    } else {
        hard.parse().ok()
    }
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // write and rename: another process may read it at the same time
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max processes             96365                96365                processes 
Max open files            1024                 20000                files     
";

    #[test]
    fn conf_lowers_ulimits_to_what_runc_may_set() {
        let conf = containers_conf(LIMITS).unwrap();
        assert!(
            conf.contains(r#"default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]"#),
            "{conf}"
        );
        assert!(conf.contains(r#"runtime = "runc""#));
        let roomy = LIMITS
            .replace(
                "96365                96365",
                "unlimited            unlimited",
            )
            .replace("20000", "unlimited");
        assert!(containers_conf(&roomy)
            .unwrap()
            .contains(r#"["nofile=1048576:1048576", "nproc=32768:32768"]"#));
        assert_eq!(hard_limit(LIMITS, "Max cpu time"), Some(u64::MAX));
        assert!(containers_conf("nothing").is_err());
    }

    #[test]
    fn compression_from_magic() {
        assert_eq!(compression_of(&[0x28, 0xb5, 0x2f, 0xfd, 0]), "zstd");
        assert_eq!(compression_of(&[0x1f, 0x8b, 8]), "gzip");
        assert_eq!(compression_of(b"arti"), "none");
        assert_eq!(compression_of(&[]), "none");
    }

    #[test]
    fn archives_are_per_node_on_tmpfs() {
        assert_eq!(
            archive_path("s3", "n2"),
            Path::new("/run/mose-baseline/podman/s3-n2.tar.zst")
        );
    }
}
