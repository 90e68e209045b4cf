//! The `ctr-content-store` baseline: what containerd's own tools give a user.
//! `ctr tasks checkpoint --exit` into tmpfs under containerd's runc shim, the
//! image directory as tar over TCP through the node link into the
//! destination containerd's content store, and a containerd restore from it.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context, Result};
use containerd_client::types::Descriptor;
use mose_tests::fifo::TaskIo;
use mose_workloads::images::STATE_SERVICE_REF;
use sha2::{Digest, Sha256};

use super::{criu_config, BaselineRun, PhaseClock, WORK_DIR};
use crate::cluster::Cluster;

/// The checkpoint's media type in containerd's content store.
const CRIU_TAR: &str = "application/vnd.containerd.container.criu.checkpoint.criu.tar";
/// The containerd runtime the baseline's containers run under.
pub const RUNTIME: &str = "io.containerd.runc.v2";

/// Moves container `id` (running `cmd` under [`RUNTIME`] on node 1, in
/// containerd namespace `ns`) to node 2. The source's container is deleted
/// after the restore; the content is removed from node 2's store.
pub async fn migrate(c: &Cluster, ns: &str, id: &str, cmd: &[String]) -> Result<BaselineRun> {
    let mut digest = None;
    let r = migrate_steps(c, ns, id, cmd, &mut digest).await;
    // whatever happened: the images, the tar and the GC-rooted content go
    let (img, recv) = paths(id);
    let _ = std::fs::remove_dir_all(img);
    let _ = std::fs::remove_file(recv);
    if let (Some(d), Ok(n2)) = (digest, c.node(2)) {
        let _ = n2.ctr(ns).run(["content", "rm", &d]);
    }
    r
}

/// The checkpoint directory and the received tar of container `id`.
fn paths(id: &str) -> (PathBuf, PathBuf) {
    let dir = PathBuf::from(WORK_DIR);
    (dir.join(id), dir.join(format!("recv-{id}.tar")))
}

async fn migrate_steps(
    c: &Cluster,
    ns: &str,
    id: &str,
    cmd: &[String],
    ingested: &mut Option<String>,
) -> Result<BaselineRun> {
    let (n1, n2) = (c.node(1)?, c.node(2)?);
    let (img, recv) = paths(id);
    let _ = std::fs::remove_dir_all(&img);
    let mut clock = PhaseClock::new();
    n1.ctr(ns)
        .ok([
            "tasks".as_ref(),
            "checkpoint".as_ref(),
            "--exit".as_ref(),
            "--image-path".as_ref(),
            img.as_os_str(),
            id.as_ref(),
        ])
        .context("ctr tasks checkpoint --exit")?;
    clock.mark("checkpoint --exit", None);
    let (digest, size) = transfer(c, &img, &recv)?;
    clock.mark("tar over TCP", Some(size));
    *ingested = Some(digest.clone());
    ingest(n2.containerd_socket(), ns, &recv, &digest, size).await?;
    clock.mark("ingest into content store", None);
    restore(c, ns, id, cmd, &digest, size).await?;
    clock.mark("restore", None);
    let _ = n1.ctr(ns).run(["tasks", "delete", id]);
    let _ = n1.ctr(ns).run(["containers", "delete", id]);
    Ok(clock.finish("ctr-content-store", size))
}

/// Streams `img` as tar from node 1 to a file `recv` written by node 2:
/// the tar's digest and size.
fn transfer(c: &Cluster, img: &Path, recv: &Path) -> Result<(String, u64)> {
    let recv = recv.to_path_buf();
    super::send_dir_as_tar(c, img, move |mut s| {
        let mut f = std::fs::File::create(&recv)?;
        let (mut h, mut n, mut buf) = (Sha256::new(), 0u64, vec![0u8; 1 << 20]);
        loop {
            let k = s.read(&mut buf)?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            f.write_all(&buf[..k])?;
            n += k as u64;
        }
        Ok((format!("sha256:{:x}", h.finalize()), n))
    })
}

/// Creates the container on node 2 and restores its task from the
/// checkpoint `digest` in node 2's content store.
async fn restore(
    c: &Cluster,
    ns: &str,
    id: &str,
    cmd: &[String],
    digest: &str,
    size: u64,
) -> Result<()> {
    let n2 = c.node(2)?;
    let mut args = vec![
        "containers".to_string(),
        "create".into(),
        "--runtime".into(),
        RUNTIME.into(),
        "--net-host".into(),
        STATE_SERVICE_REF.into(),
        id.into(),
    ];
    args.extend(cmd.iter().cloned());
    n2.ctr(ns).ok(args)?;
    let client = mose_tests::client::Client::connect(n2.containerd_socket(), ns).await?;
    let mut spec = client.container_spec(id).await?;
    spec["annotations"]["org.criu.config"] = serde_json::json!(criu_config().display().to_string());
    client.set_container_spec(id, &spec).await?;
    let rootfs = client.rootfs_mounts(id).await?;
    let desc = Descriptor {
        media_type: CRIU_TAR.into(),
        digest: digest.into(),
        size: size as i64,
        annotations: Default::default(),
    };
    client
        .create_task_with(id, &TaskIo::null(), rootfs, Some(desc), None)
        .await?;
    client.start(id, "").await?;
    Ok(())
}

/// Writes a file into containerd's content store as a GC root (so it is not
/// collected before the restore uses it), as containerd's own clients do
/// under a lease.
async fn ingest(socket: &Path, ns: &str, file: &Path, digest: &str, size: u64) -> Result<()> {
    use containerd_client::services::v1::{
        content_client::ContentClient, WriteAction, WriteContentRequest,
    };
    let mut f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let r#ref = format!("baseline-{}", digest.trim_start_matches("sha256:"));
    // the file is read 1 MiB at a time as the stream is sent, as a client
    // streaming a large blob does (a read error ends the stream short: the
    // commit then fails on the size)
    let (chunks_ref, mut offset) = (r#ref.clone(), 0i64);
    let chunks = std::iter::from_fn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let n = std::io::Read::read(&mut f, &mut buf)
            .ok()
            .filter(|&n| n > 0)?;
        buf.truncate(n);
        let req = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: chunks_ref.clone(),
            total: size as i64,
            offset,
            data: buf,
            ..Default::default()
        };
        offset += n as i64;
        Some(req)
    });
    let commit = WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref,
        total: size as i64,
        offset: size as i64,
        expected: digest.into(),
        labels: [(
            "containerd.io/gc.root".to_string(),
            "mose-bench".to_string(),
        )]
        .into(),
        ..Default::default()
    };
    let channel = containerd_client::connect(socket).await?;
    let msgs = chunks.chain(std::iter::once(commit));
    let mut req = tonic::Request::new(tokio_stream::iter(msgs));
    req.metadata_mut()
        .insert("containerd-namespace", ns.parse()?);
    let mut resp = ContentClient::new(channel)
        .write(req)
        .await
        .map_err(|s| anyhow!("content write: {}", s.message()))?
        .into_inner();
    while resp
        .message()
        .await
        .map_err(|s| anyhow!("content write: {}", s.message()))?
        .is_some()
    {}
    Ok(())
}
