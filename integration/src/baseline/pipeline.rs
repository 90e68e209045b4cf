//! The `pipeline` baseline: the strongest cold migration a careful user
//! builds by hand from runc, CRIU, tar and TCP, with no containerd on the
//! path and no disk:
//!
//! 1. `runc checkpoint` (CRIU dump, the container stopped) into tmpfs;
//! 2. the image directory streamed as tar over one TCP connection through the
//!    node link while it is read, and unpacked into tmpfs on the destination
//!    as it arrives (`runc checkpoint | tar | nc` → `nc | tar x`);
//! 3. `runc restore --detach` from that tmpfs, in a bundle of the same image
//!    whose network namespace is the destination node's.
//!
//! The container runs under runc directly on both nodes (a bundle per node
//! under [`WORK_DIR`], its own runc root), so nothing but the migration is
//! timed. Its CRIU options match MOSE's (the `org.criu.config` annotation).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{anyhow, bail, Context, Result};
use mose_workloads::image::{unpack_rootfs, ImageSpec};

use super::{criu_config, BaselineRun, PhaseClock, WORK_DIR};
use crate::cluster::Cluster;

/// The runc binary the pipeline drives (the one containerd's runc shim uses).
const RUNC: &str = "runc";

/// runc's state directory for node `node`'s pipeline containers.
fn runc_root(node: usize) -> PathBuf {
    Path::new(WORK_DIR).join(format!("runc-n{node}"))
}

/// The bundle of container `id` on node `node`.
fn bundle(node: usize, id: &str) -> PathBuf {
    Path::new(WORK_DIR).join(format!("bundle-n{node}-{id}"))
}

/// Runs runc with `args` under node `node`'s runc root, in the node's
/// network namespace as the node's containerd runs it (so CRIU sees the
/// container's network namespace as its own and does not lock it); runc's
/// log in the error when it fails. runc's stdio is `/dev/null`: a detached container
/// inherits it (CRIU then dumps and restores it as it is), and a pipe would
/// be held open by the container for as long as it runs.
fn runc(c: &Cluster, node: usize, args: &[&str]) -> Result<()> {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let log = Path::new(WORK_DIR).join(format!("runc-{}-{n}.log", std::process::id()));
    let status = crate::testbed::net::netns_command(c.node(node)?.netns(), RUNC)
        .arg("--root")
        .arg(runc_root(node))
        .arg("--log")
        .arg(&log)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {RUNC} (is runc installed? scripts/setup.sh)"));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    if !status?.success() {
        bail!("runc {} failed: {}", args.join(" "), text.trim());
    }
    Ok(())
}

/// Writes a bundle for `cmd` from `image` on node `node`: the image's
/// rootfs, and runc's default spec with the command, a writable root, the
/// node's network namespace and the baselines' CRIU configuration.
fn write_bundle(
    c: &Cluster,
    node: usize,
    id: &str,
    image: &ImageSpec,
    cmd: &[String],
) -> Result<()> {
    let dir = bundle(node, id);
    let _ = std::fs::remove_dir_all(&dir);
    unpack_rootfs(image, &dir.join("rootfs"))?;
    let out = Command::new(RUNC)
        .args(["spec", "--bundle"])
        .arg(&dir)
        .output()
        .context("running runc spec")?;
    if !out.status.success() {
        bail!("runc spec: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut spec: serde_json::Value =
        serde_json::from_str(&text).context("runc spec's config.json")?;
    let netns = crate::testbed::net::netns_path(c.node(node)?.netns());
    spec["process"]["args"] = serde_json::json!(cmd);
    spec["process"]["terminal"] = false.into();
    spec["root"]["readonly"] = false.into();
    spec["linux"]["cgroupsPath"] = format!("/mose-baseline/n{node}-{id}").into();
    spec["annotations"] =
        serde_json::json!({"org.criu.config": criu_config().display().to_string()});
    let ns = spec["linux"]["namespaces"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("runc spec has no linux.namespaces"))?;
    ns.retain(|n| n["type"] != "network");
    ns.push(serde_json::json!({"type": "network", "path": netns}));
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Starts `cmd` from `image` as container `id` under runc on node `node`:
/// the container's init pid.
pub fn start(c: &Cluster, node: usize, id: &str, image: &ImageSpec, cmd: &[String]) -> Result<u32> {
    write_bundle(c, node, id, image, cmd)?;
    detached(c, node, id, &["run"])
}

/// Runs runc `verb` (`run`, or `restore` with its image) detached in the
/// bundle of container `id` on node `node`: the container's init pid.
fn detached(c: &Cluster, node: usize, id: &str, verb: &[&str]) -> Result<u32> {
    let b = bundle(node, id);
    let (b_arg, pid_file) = (b.to_string_lossy(), b.join("pid"));
    let pid_arg = pid_file.to_string_lossy();
    let tail = ["--detach", "--bundle", &b_arg, "--pid-file", &pid_arg, id];
    runc(c, node, &[verb, &tail[..]].concat())?;
    read_pid(&pid_file)
}

/// The tmpfs directories of container `id`'s checkpoint on node 1 and of
/// its copy as received on node 2.
fn images(id: &str) -> [PathBuf; 2] {
    let dir = Path::new(WORK_DIR);
    [
        dir.join(format!("dump-{id}")),
        dir.join(format!("recv-{id}")),
    ]
}

fn read_pid(path: &Path) -> Result<u32> {
    std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .parse()
        .with_context(|| format!("{} holds no pid", path.display()))
}

/// Moves container `id` from node 1 to node 2 (it must have been started
/// with [`start`] on node 1 from `image` with `cmd`).
pub fn migrate(c: &Cluster, id: &str, image: &ImageSpec, cmd: &[String]) -> Result<BaselineRun> {
    // the destination's bundle is ready before the migration, as a user who
    // pulled the image there beforehand has it
    write_bundle(c, 2, id, image, cmd)?;
    let [dump, recv] = images(id);
    for d in [&dump, &recv] {
        let _ = std::fs::remove_dir_all(d);
    }
    let mut clock = PhaseClock::new();
    runc(
        c,
        1,
        &["checkpoint", "--image-path", &dump.to_string_lossy(), id],
    )?;
    clock.mark("runc checkpoint", None);
    let bytes = stream_tar(c, &dump, &recv)?;
    clock.mark("tar over TCP, unpacked as it arrives", Some(bytes));
    detached(
        c,
        2,
        id,
        &["restore", "--image-path", &recv.to_string_lossy()],
    )?;
    clock.mark("runc restore", None);
    for d in [&dump, &recv] {
        let _ = std::fs::remove_dir_all(d);
    }
    let _ = runc(c, 1, &["delete", "--force", id]);
    Ok(clock.finish("pipeline", bytes))
}

/// Streams directory `from` (node 1) as tar over TCP to node 2, which
/// unpacks it into `to` as it arrives: the bytes that crossed the link.
fn stream_tar(c: &Cluster, from: &Path, to: &Path) -> Result<u64> {
    let to = to.to_path_buf();
    super::send_dir_as_tar(c, from, move |s| {
        let mut r = std::io::BufReader::with_capacity(1 << 20, Counted { inner: s, n: 0 });
        tar::Archive::new(&mut r)
            .unpack(&to)
            .with_context(|| format!("unpacking the checkpoint into {}", to.display()))?;
        // the tar's trailing blocks after the end marker
        std::io::copy(&mut r, &mut std::io::sink())?;
        Ok(r.get_ref().n)
    })
}

/// A reader counting the bytes read through it.
struct Counted<R> {
    inner: R,
    n: u64,
}

impl<R: std::io::Read> std::io::Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

/// Removes container `id` from node `node`, its bundle and whatever a
/// failed migration of it left in tmpfs (best effort).
pub fn remove(c: &Cluster, node: usize, id: &str) {
    let _ = runc(c, node, &["delete", "--force", id]);
    let _ = std::fs::remove_dir_all(bundle(node, id));
    for d in images(id) {
        let _ = std::fs::remove_dir_all(d);
    }
}
