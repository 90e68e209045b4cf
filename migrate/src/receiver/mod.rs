//! The destination endpoint: authenticates the source, receives a migration
//! into tmpfs, recreates the container in the local containerd and restores
//! it through the MOSE shim. Partial state is removed on any failure; a
//! restored container is kept only once the source has released its copy.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use containerd_client::services::v1::Container;
use mose_wire::{
    frame::{FrameKind, FrameReader, FrameWriter},
    BlockHash, BlockStore, ContainerIdentity, Message, Technique, PROTOCOL_VERSION,
};
use prost_types::Any;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
};
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

pub mod lazy;

use crate::{
    containerd::{runtime, Containerd, SPEC_TYPE_URL},
    lazy::LazyLayout,
    rootfs,
    tls::Identity,
};

/// The runtime a restored container runs under (it restores from MOSE options).
pub const MOSE_RUNTIME: &str = "io.containerd.mose.v2";

#[derive(Clone)]
pub struct EndpointConfig {
    pub listen: SocketAddr,
    pub containerd: PathBuf,
    pub identity: Identity,
    /// tmpfs directory receiving migrations.
    pub work_root: PathBuf,
    /// Where the node records its migrations (JSON lines).
    pub state_dir: PathBuf,
    /// How long a restored container waits for the source to release its copy.
    pub release_timeout: Duration,
    pub io_timeout: Duration,
}

/// Serves migrations until the process ends.
pub async fn serve(cfg: EndpointConfig) -> Result<()> {
    let tls = TlsAcceptor::from(cfg.identity.server_config()?);
    // received images live in memory, never on disk
    crate::ensure_tmpfs(&cfg.work_root)?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    // whatever an earlier, killed endpoint left half-received is garbage now
    if let Ok(rd) = std::fs::read_dir(&cfg.work_root) {
        for e in rd
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with(".mose-"))
        {
            warn!(path = %e.path().display(), "removing a stale incoming migration");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    info!(listen = %cfg.listen, node = %cfg.identity.node, "MOSE migration endpoint ready");
    let cfg = Arc::new(cfg);
    loop {
        let (tcp, peer) = listener.accept().await.context("accept")?;
        let _ = tcp.set_nodelay(true);
        let (tls, cfg) = (tls.clone(), cfg.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(cfg.io_timeout, tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    warn!(%peer, error = %e, "peer rejected during TLS handshake");
                    return;
                }
                Err(_) => {
                    warn!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let (r, w) = tokio::io::split(stream);
            if let Err(e) = handle(&cfg, FrameReader::new(r), FrameWriter::new(w), peer).await {
                error!(%peer, error = %format!("{e:#}"), "incoming migration failed");
            }
        });
    }
}

async fn next_frame<R: AsyncRead + Unpin>(
    r: &mut FrameReader<R>,
    io: Duration,
) -> Result<mose_wire::frame::Frame> {
    tokio::time::timeout(io, r.next())
        .await
        .map_err(|_| anyhow!("source sent nothing for {io:?}"))?
        .map_err(|e| anyhow!("{e}"))
}

pub(crate) struct Incoming {
    pub(crate) dir: PathBuf,
    pub(crate) blocks: BlockStore,
    pub(crate) manifests: Vec<(String, Vec<BlockHash>)>,
    /// Speculative pages images written from the source's layout hint: the
    /// hash of what each holds at every index.
    pub(crate) speculative: HashMap<String, Vec<BlockHash>>,
    /// Where blocks not held when a speculative image was written belong:
    /// written in place as they arrive.
    pub(crate) pending: HashMap<BlockHash, Vec<(String, usize)>>,
    pub(crate) spec_files: HashMap<String, std::fs::File>,
    pub(crate) files: HashMap<String, PathBuf>,
    pub(crate) bytes: u64,
}

pub(crate) fn safe_name(name: &str) -> Result<&str> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') || name.len() > 200 {
        bail!("refusing file name {name:?} from the source");
    }
    Ok(name)
}

async fn handle<R, W>(
    cfg: &EndpointConfig,
    mut r: FrameReader<R>,
    mut w: FrameWriter<W>,
    peer: SocketAddr,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let io = cfg.io_timeout;
    let hello = next_frame(&mut r, io).await?.message()?;
    let source = match hello {
        Message::Hello { version, node } if version == PROTOCOL_VERSION => node,
        Message::Hello { version, .. } => {
            w.message(&Message::Failed {
                step: "hello".into(),
                error: format!(
                    "protocol {version} not supported (this node speaks {PROTOCOL_VERSION})"
                ),
            })
            .await?;
            bail!("source speaks protocol {version}");
        }
        other => bail!("expected Hello, got {other:?}"),
    };
    w.message(&Message::HelloOk {
        version: PROTOCOL_VERSION,
        node: cfg.identity.node.clone(),
    })
    .await?;
    let (migration, container, technique) = match next_frame(&mut r, io).await?.message()? {
        Message::Measure { bytes } => return answer_probe(&mut r, &mut w, bytes, io).await,
        Message::Begin {
            migration,
            container,
            technique,
        } => (migration, container, technique),
        other => bail!("expected Begin, got {other:?}"),
    };
    let migration = safe_name(&migration)?.to_string();
    info!(%peer, %source, %migration, container = %container.id, "incoming migration");
    let cd = Containerd::connect(&cfg.containerd, &container.namespace).await?;
    if cd.container(&container.id).await.is_ok() {
        let err = format!("container {} already exists on this node", container.id);
        w.message(&Message::Failed {
            step: "begin".into(),
            error: err.clone(),
        })
        .await?;
        bail!(err);
    }
    let has_image = cd.has_image(&container.image).await;
    w.message(&Message::BeginOk { has_image }).await?;

    let dir = cfg.work_root.join(&migration);
    std::fs::create_dir_all(dir.join("files"))?;
    let mut inc = Incoming {
        dir: dir.clone(),
        blocks: BlockStore::new(),
        manifests: Vec::new(),
        speculative: HashMap::new(),
        pending: HashMap::new(),
        spec_files: HashMap::new(),
        files: HashMap::new(),
        bytes: 0,
    };
    let t_begin = Instant::now();
    let res = receive(
        cfg, &mut r, &mut w, &cd, &container, &mut inc, technique, &migration,
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    match &res {
        Ok(()) => record(
            cfg,
            &migration,
            &container,
            &source,
            "ok",
            None,
            t_begin.elapsed(),
        ),
        Err(e) => {
            record(
                cfg,
                &migration,
                &container,
                &source,
                "failed",
                Some(format!("{e:#}")),
                t_begin.elapsed(),
            );
        }
    }
    res
}

/// Writes the pages image the source predicts, from the blocks held now
/// (missing ones as zeros), so that at the freeze only the differences are
/// written. The prediction is only a head start: the final manifest decides.
fn speculate(inc: &mut Incoming, image: &str, hashes: &[BlockHash]) -> Result<()> {
    let image = safe_name(image)?.to_string();
    let t = Instant::now();
    let dir = inc.dir.join("speculative");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(&image);
    let mut file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let written = inc
        .blocks
        .write_speculative(hashes, &mut file)
        .map_err(|e| anyhow!("laying out {image}: {e}"))?;
    info!(
        image,
        pages = hashes.len(),
        ms = t.elapsed().as_secs_f64() * 1000.0,
        "speculative pages image written"
    );
    // a newer layout replaces an older one of the same image
    for v in inc.pending.values_mut() {
        v.retain(|(n, _)| *n != image);
    }
    for (i, (want, got)) in hashes.iter().zip(written.iter()).enumerate() {
        if want != got {
            inc.pending
                .entry(*want)
                .or_default()
                .push((image.clone(), i));
        }
    }
    inc.spec_files.insert(image.clone(), file);
    inc.speculative.insert(image, written);
    Ok(())
}

/// Writes a just-received block wherever a speculative image waits for it.
fn place_block(inc: &mut Incoming, hash: BlockHash, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let Some(places) = inc.pending.remove(&hash) else {
        return Ok(());
    };
    for (image, i) in places {
        if let (Some(f), Some(w)) = (inc.spec_files.get(&image), inc.speculative.get_mut(&image)) {
            f.write_all_at(data, (i * mose_wire::BLOCK_SIZE) as u64)
                .with_context(|| format!("writing into {image}"))?;
            w[i] = hash;
        }
    }
    Ok(())
}

/// Turns a speculative image into the final one by rewriting only the blocks
/// that differ from `hashes`. Returns false (and leaves it) when too much
/// differs for patching to pay off.
fn patch_speculative(
    inc: &Incoming,
    name: &str,
    hashes: &[BlockHash],
    out: &Path,
) -> Result<Option<usize>> {
    use std::os::unix::fs::FileExt;
    let Some(written) = inc.speculative.get(name) else {
        return Ok(None);
    };
    let diffs: Vec<usize> = (0..hashes.len())
        .filter(|&i| written.get(i) != Some(&hashes[i]))
        .collect();
    if diffs.len() * 4 > hashes.len() {
        return Ok(None);
    }
    let path = inc.dir.join("speculative").join(name);
    let Some(file) = inc.spec_files.get(name) else {
        return Ok(None);
    };
    file.set_len((hashes.len() * mose_wire::BLOCK_SIZE) as u64)?;
    for &i in &diffs {
        let b = inc.blocks.block(hashes[i]).ok_or_else(|| {
            anyhow!(
                "rebuilding {name}: page block #{i} ({:032x}) was never received",
                hashes[i]
            )
        })?;
        file.write_all_at(b, (i * mose_wire::BLOCK_SIZE) as u64)?;
    }
    std::fs::rename(&path, out).with_context(|| format!("placing {name}"))?;
    Ok(Some(diffs.len()))
}

/// Largest link probe a peer may ask this node to absorb.
const MAX_PROBE_BYTES: u64 = 256 << 20;

/// Receives a link probe's filler and reports how fast it arrived, timed from
/// the first frame to the last (the first frame's own transit is excluded, so
/// connection set-up and slow start do not count).
async fn answer_probe<R, W>(
    r: &mut FrameReader<R>,
    w: &mut FrameWriter<W>,
    bytes: u64,
    io: Duration,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if bytes == 0 || bytes > MAX_PROBE_BYTES {
        w.message(&Message::Failed {
            step: "measure".into(),
            error: format!("a link probe must be 1 byte to {MAX_PROBE_BYTES} bytes, not {bytes}"),
        })
        .await?;
        bail!("refused a link probe of {bytes} bytes");
    }
    let mut got = 0u64;
    let mut first: Option<(Instant, u64)> = None;
    while got < bytes {
        let f = next_frame(r, io).await?;
        if f.kind != FrameKind::FileData {
            bail!("link probe: expected filler, got a {:?} frame", f.kind);
        }
        got += f.payload.len() as u64;
        if first.is_none() {
            first = Some((Instant::now(), got));
        }
    }
    let (t0, first_bytes) = first.unwrap_or((Instant::now(), 0));
    w.message(&Message::Measured {
        bytes: got - first_bytes,
        ms: t0.elapsed().as_secs_f64() * 1000.0,
    })
    .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn receive<R, W>(
    cfg: &EndpointConfig,
    r: &mut FrameReader<R>,
    w: &mut FrameWriter<W>,
    cd: &Containerd,
    container: &ContainerIdentity,
    inc: &mut Incoming,
    technique: Technique,
    migration: &str,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut current: Option<(
        String,
        u64,
        String,
        std::fs::File,
        u64,
        xxhash_rust::xxh3::Xxh3,
    )> = None;
    loop {
        let f = tokio::time::timeout(cfg.io_timeout, r.next())
            .await
            .map_err(|_| {
                anyhow!(
                    "source sent nothing for {:?}; discarding the migration",
                    cfg.io_timeout
                )
            })?
            .map_err(|e| anyhow!("migration stream: {e}; discarding the migration"))?;
        match f.kind {
            FrameKind::Pages => bail!("lazy pages before the restore was committed"),
            FrameKind::Blocks => {
                for (h, d) in f.blocks()? {
                    inc.blocks.insert(h, d).map_err(|e| anyhow!("{e}"))?;
                    place_block(inc, h, d)?;
                }
            }
            FrameKind::Manifest => {
                let (name, hashes) = f.manifest()?;
                match name.strip_prefix("hint:") {
                    // the source is about to freeze and dump: lay the image out now
                    Some(image) => speculate(inc, image, &hashes)?,
                    None => inc.manifests.push((name, hashes)),
                }
            }
            FrameKind::FileData => {
                let Some((name, size, _, file, written, hasher)) = current.as_mut() else {
                    bail!("file data outside a file");
                };
                *written += f.payload.len() as u64;
                if *written > *size {
                    bail!("file {name} is longer than announced");
                }
                hasher.update(&f.payload);
                std::io::Write::write_all(file, &f.payload)?;
            }
            FrameKind::Control => match f.message()? {
                Message::FileBegin { name, size, hash } => {
                    let name = safe_name(&name)?.to_string();
                    let path = inc.dir.join("files").join(&name);
                    let file = std::fs::File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    current = Some((name, size, hash, file, 0, xxhash_rust::xxh3::Xxh3::new()));
                }
                Message::FileEnd { name } => {
                    let Some((n, size, hash, _f, written, hasher)) = current.take() else {
                        bail!("FileEnd {name} without FileBegin");
                    };
                    let got = format!("{:032x}", hasher.digest128());
                    if n != name || written != size || got != hash {
                        bail!("file {name} arrived corrupt or truncated ({written}/{size} bytes, hash {got} != {hash})");
                    }
                    inc.bytes += size;
                    let path = inc.dir.join("files").join(&n);
                    if n == "image.tar" {
                        // import now, while the source still runs: not in the downtime
                        import_image(cfg, container, &path).await?;
                        let _ = std::fs::remove_file(&path);
                        // the source freezes only once the image is in place
                        w.message(&Message::Ack).await?;
                    } else {
                        inc.files.insert(n.clone(), path);
                    }
                }
                Message::RoundStart { .. } | Message::RoundEnd { .. } => {}
                Message::Abort { reason } => bail!("source aborted: {reason}"),
                Message::Commit => break,
                other => bail!("unexpected {other:?} during transfer"),
            },
        }
    }
    if technique.is_lazy() {
        return lazy::run(cfg, r, w, cd, container, inc, technique, migration).await;
    }
    // all data is here: restore
    let t = Instant::now();
    let mut steps = Vec::new();
    let restored = restore(cfg, cd, container, inc, migration, &mut steps).await;
    let pid = match restored {
        Ok(pid) => pid,
        Err(e) => {
            let step = e.to_string();
            let _ = cd.remove_container(&container.id).await;
            let _ = w
                .message(&Message::Failed {
                    step: "restore".into(),
                    error: format!("{e:#}"),
                })
                .await;
            bail!("restore failed: {step}");
        }
    };
    let restore_ms = t.elapsed().as_secs_f64() * 1000.0;
    w.message(&Message::Restored {
        pid,
        restore_ms,
        prepare_ms: 0.0,
        steps,
    })
    .await?;
    // two-phase hand-over: keep the restored copy only once the source let go
    let released = tokio::time::timeout(cfg.release_timeout, r.message()).await;
    match released {
        Ok(Ok(Message::Released)) => {
            w.message(&Message::Ack).await?;
            info!(container = %container.id, pid, "migration complete; the container runs here");
            Ok(())
        }
        other => {
            warn!(container = %container.id, ?other, "source did not release its copy; removing the restored one");
            let _ = cd.remove_container(&container.id).await;
            bail!("source did not confirm the hand-over")
        }
    }
}

/// Rebuilds the CRIU image, recreates the container and restores it.
async fn restore(
    cfg: &EndpointConfig,
    cd: &Containerd,
    container: &ContainerIdentity,
    inc: &mut Incoming,
    _migration: &str,
    steps: &mut Vec<(String, f64)>,
) -> Result<u32> {
    let t = Instant::now();
    let (images, rootfs_tar, _) = assemble(inc, false)?;
    steps.push(("assemble image".into(), t.elapsed().as_secs_f64() * 1000.0));
    recreate(cfg, cd, container, &images, rootfs_tar, None, steps).await
}

/// What [`assemble`] hands on: the image directory, the rootfs changes if
/// any, and for a lazy restore which pages are left out.
pub(crate) type Assembled = (PathBuf, Option<PathBuf>, Option<LazyLayout>);

/// Places the received files and writes the pages images from the block
/// store. For a lazy restore the pages CRIU restores lazily are left out
/// (holes in a sparse file: CRIU skips them and never reads there).
pub(crate) fn assemble(inc: &mut Incoming, lazy: bool) -> Result<Assembled> {
    use std::os::unix::fs::FileExt;
    let images = inc.dir.join("images");
    std::fs::create_dir_all(&images)?;
    let rootfs_tar = inc.files.remove("rootfs.tar");
    for (name, path) in &inc.files {
        std::fs::rename(path, images.join(name)).with_context(|| format!("placing {name}"))?;
    }
    if !lazy {
        if inc
            .manifests
            .iter()
            .any(|(_, h)| h.contains(&mose_wire::LAZY_SLOT))
        {
            bail!("the source left pages behind, but this is not a post-copy migration");
        }
    } else {
        let layout = LazyLayout::read(&images)?;
        for (name, hashes) in &inc.manifests {
            let name = safe_name(name)?;
            let path = images.join(name);
            let file = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            file.set_len((hashes.len() * mose_wire::BLOCK_SIZE) as u64)?;
            let lazy_slots = layout.lazy_slots.get(name);
            for (i, h) in hashes.iter().enumerate() {
                if lazy_slots.and_then(|l| l.get(i)).copied().unwrap_or(false) {
                    continue;
                }
                if *h == mose_wire::LAZY_SLOT {
                    bail!("{name}: page #{i} was left behind but CRIU restores it eagerly");
                }
                if *h == mose_wire::blocks::zero_hash() {
                    continue; // a hole reads as zeros
                }
                let b = inc.blocks.block(*h).ok_or_else(|| {
                    anyhow!("rebuilding {name}: page block #{i} ({h:032x}) was never received")
                })?;
                file.write_all_at(b, (i * mose_wire::BLOCK_SIZE) as u64)?;
            }
        }
        if !images.join("inventory.img").exists() {
            bail!("the received checkpoint has no inventory.img");
        }
        return Ok((images, rootfs_tar, Some(layout)));
    }
    for (name, hashes) in &inc.manifests {
        let name = safe_name(name)?;
        let path = images.join(name);
        if let Some(patched) = patch_speculative(inc, name, hashes, &path)? {
            info!(
                image = name,
                pages = hashes.len(),
                patched,
                "speculative pages image patched"
            );
            continue;
        }
        // straight from the block store into the file: one copy, no staging buffer
        let mut file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        inc.blocks
            .write_to(hashes, &mut file)
            .map_err(|e| anyhow!("rebuilding {name}: {e}"))?;
    }
    if !images.join("inventory.img").exists() {
        bail!("the received checkpoint has no inventory.img");
    }
    Ok((images, rootfs_tar, None))
}

/// The container's spec as this node runs it: its cgroup must not collide
/// with the (frozen) source's when both nodes share a host.
pub(crate) fn destination_spec(
    cfg: &EndpointConfig,
    container: &ContainerIdentity,
) -> serde_json::Value {
    let mut spec = container.spec.clone();
    if let Some(cg) = spec.pointer_mut("/linux/cgroupsPath") {
        if let Some(p) = cg.as_str() {
            *cg = serde_json::Value::String(format!(
                "/mose-{}{}",
                cfg.identity.node,
                if p.starts_with('/') {
                    p.to_string()
                } else {
                    format!("/{p}")
                }
            ));
        }
    }
    spec
}

/// Recreates the container from the received identity and rootfs, and
/// restores it through the MOSE shim from `images` (lazily when a lazy-page
/// handler listens on `lazy_socket`).
pub(crate) async fn recreate(
    cfg: &EndpointConfig,
    cd: &Containerd,
    container: &ContainerIdentity,
    images: &Path,
    rootfs_tar: Option<PathBuf>,
    lazy_socket: Option<&Path>,
    steps: &mut Vec<(String, f64)>,
) -> Result<u32> {
    let mut t = Instant::now();
    let mut step = |name: &str, steps: &mut Vec<(String, f64)>| {
        steps.push((name.to_string(), t.elapsed().as_secs_f64() * 1000.0));
        t = Instant::now();
    };
    let parent = cd.image_chain_id(&container.image).await?;
    let snapshotter = if container.snapshotter.is_empty() {
        "overlayfs"
    } else {
        &container.snapshotter
    };
    let mounts = cd
        .prepare_snapshot(snapshotter, &container.id, &parent)
        .await?;
    if let Some(tar) = rootfs_tar {
        let data = std::fs::read(&tar)?;
        rootfs::unpack(&data, &rootfs::upperdir(&mounts)?)?;
    }
    step("snapshot+rootfs", steps);
    let spec = destination_spec(cfg, container);
    let c = Container {
        id: container.id.clone(),
        labels: container.labels.clone().into_iter().collect(),
        image: container.image.clone(),
        runtime: Some(runtime(MOSE_RUNTIME, None)),
        spec: Some(Any {
            type_url: SPEC_TYPE_URL.into(),
            value: serde_json::to_vec(&spec)?,
        }),
        snapshotter: snapshotter.into(),
        snapshot_key: container.id.clone(),
        ..Default::default()
    };
    if let Err(e) = cd.create_container(c).await {
        let _ = cd.remove_snapshot(snapshotter, &container.id).await;
        return Err(e);
    }
    let mut o = serde_json::json!({ "restore_image": images.display().to_string() });
    if let Some(sock) = lazy_socket {
        o["lazy_pages_socket"] = sock.display().to_string().into();
    }
    let opts = Any {
        type_url: "mose.v1.Options".into(),
        value: serde_json::to_vec(&o)?,
    };
    step("create container", steps);
    cd.create_task(&container.id, mounts, Some(opts)).await?;
    step("create task", steps);
    let pid = cd.start(&container.id).await?;
    step("CRIU restore", steps);
    Ok(pid)
}

async fn import_image(
    cfg: &EndpointConfig,
    container: &ContainerIdentity,
    tar: &Path,
) -> Result<()> {
    let o = tokio::process::Command::new("ctr")
        .args([
            "-a",
            &cfg.containerd.display().to_string(),
            "-n",
            &container.namespace,
            "images",
            "import",
        ])
        .arg(tar)
        .output()
        .await
        .context("running ctr images import")?;
    if !o.status.success() {
        bail!(
            "importing image {}: {}",
            container.image,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

pub(crate) fn record(
    cfg: &EndpointConfig,
    migration: &str,
    container: &ContainerIdentity,
    source: &str,
    status: &str,
    error: Option<String>,
    took: Duration,
) {
    crate::record::record_incoming(
        &cfg.state_dir,
        crate::record::IncomingRecord {
            migration,
            container: &container.id,
            namespace: &container.namespace,
            peer: source,
            status,
            error,
            took,
        },
    );
}
