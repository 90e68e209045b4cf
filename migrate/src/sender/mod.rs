//! The source side of a migration: stream a running container to a
//! destination node, and only release it once the destination reports the
//! restored container running. Any failure before that resumes the source.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use mose_wire::{
    blocks::zero_hash,
    frame::{FrameReader, FrameWriter},
    BlockHash, ContainerIdentity, Message, Technique, BLOCK_SIZE, LAZY_SLOT, PROTOCOL_VERSION,
};
use tokio::{
    io::{ReadHalf, WriteHalf},
    net::TcpStream,
};
use tokio_rustls::{client::TlsStream, TlsConnector};
use tracing::{info, warn};
use xxhash_rust::xxh3::xxh3_128;

pub mod lazy;

use self::lazy::{self as feeder, Dump};
use crate::{
    containerd::{spec_of, Containerd},
    lazy::LazyLayout,
    memory,
    result::{MigrationResult, Round, Timeline},
    rootfs,
    tls::{server_name, Identity},
};

/// Faults a test can inject to exercise the failure paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Corrupt one bulk frame after its checksum was computed.
    CorruptChunk,
    /// Close the stream in the middle of the final transfer.
    Truncate,
    /// Post-copy/hybrid: send one lazy page with content that does not match
    /// its hash (a wrong page, not a damaged frame).
    CorruptPage,
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "corrupt-chunk" => Ok(Self::CorruptChunk),
            "truncate" => Ok(Self::Truncate),
            "corrupt-page" => Ok(Self::CorruptPage),
            o => Err(format!(
                "unknown fault {o:?}: expected corrupt-chunk, truncate or corrupt-page"
            )),
        }
    }
}

/// Live progress for a terminal or a log.
#[derive(Debug, Clone)]
pub struct Progress {
    pub phase: String,
    pub round: u32,
    pub bytes: u64,
}

pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// See [`SourceOptions::stop_when`].
pub type StopFn = Arc<dyn Fn(u64) -> bool + Send + Sync>;

pub struct SourceOptions {
    pub socket: PathBuf,
    pub namespace: String,
    pub container: String,
    /// Destination endpoint `host:port`.
    pub to: String,
    pub technique: Technique,
    /// Upper bound on pre-copy rounds.
    pub max_rounds: u32,
    /// Stop pre-copy once a round moves less than this many bytes.
    pub min_round_bytes: u64,
    pub identity: Identity,
    pub compress: bool,
    /// Pre-copy stop rule from the plan: given a round's delta in bytes,
    /// whether sending that in the freeze would already meet the downtime target.
    pub stop_when: Option<StopFn>,
    /// Cap on the sending rate in bits per second (`mose.io/max-bandwidth`).
    pub bandwidth_cap_bps: Option<u64>,
    /// tmpfs directory for checkpoint images.
    pub work_root: PathBuf,
    /// Bound on any single network wait (a cut link fails the migration
    /// after this long instead of hanging).
    pub io_timeout: Duration,
    pub fault: Option<Fault>,
    pub progress: Option<ProgressFn>,
}

/// The reading half of a stream to a node endpoint.
pub type Reader = FrameReader<ReadHalf<TlsStream<TcpStream>>>;
/// The writing half of a stream to a node endpoint.
pub type Writer = FrameWriter<WriteHalf<TlsStream<TcpStream>>>;

struct Session {
    r: Reader,
    w: Writer,
    io_timeout: Duration,
}

impl Session {
    async fn send(&mut self, m: &Message) -> Result<()> {
        tokio::time::timeout(self.io_timeout, self.w.message(m))
            .await
            .map_err(|_| {
                anyhow!(
                    "destination did not take data for {:?} (link down?)",
                    self.io_timeout
                )
            })?
            .map_err(|e| anyhow!("sending to destination: {e}"))
    }

    async fn recv(&mut self, within: Duration) -> Result<Message> {
        let m = tokio::time::timeout(within, self.r.message())
            .await
            .map_err(|_| anyhow!("no answer from the destination within {within:?}"))?
            .map_err(|e| anyhow!("reading from destination: {e}"))?;
        if let Message::Failed { step, error } = &m {
            bail!("destination failed at {step}: {error}");
        }
        Ok(m)
    }

    async fn blocks(&mut self, b: &[(BlockHash, &[u8])]) -> Result<()> {
        tokio::time::timeout(self.io_timeout, self.w.blocks(b))
            .await
            .map_err(|_| {
                anyhow!(
                    "destination did not take data for {:?} (link down?)",
                    self.io_timeout
                )
            })?
            .map_err(|e| anyhow!("sending blocks: {e}"))
    }

    async fn file(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let hash = format!("{:032x}", xxh3_128(data));
        self.send(&Message::FileBegin {
            name: name.into(),
            size: data.len() as u64,
            hash,
        })
        .await?;
        for chunk in data.chunks(1 << 20) {
            tokio::time::timeout(self.io_timeout, self.w.file_data(chunk))
                .await
                .map_err(|_| anyhow!("destination did not take data for {:?}", self.io_timeout))?
                .map_err(|e| anyhow!("sending {name}: {e}"))?;
        }
        self.send(&Message::FileEnd { name: name.into() }).await
    }
}

/// Migrates the container; never panics, always returns a result.
pub async fn migrate(opts: SourceOptions) -> MigrationResult {
    let mut tl = Timeline::new();
    let migration = format!(
        "{}-{}",
        opts.container,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default()
    );
    let mut st = State {
        frozen: false,
        rounds: Vec::new(),
        downtime_ms: 0.0,
        bytes: 0,
        lazy: None,
        lazy_committed: false,
    };
    let res = run(&opts, &migration, &mut tl, &mut st).await;
    let total_ms = tl.now_ms();
    let (status, error) = match res {
        Ok(()) => ("ok", None),
        Err(e) => {
            let msg = format!("{e:#}");
            warn!(error = %msg, "migration failed");
            if st.lazy_committed && e.downcast_ref::<feeder::DestinationStopped>().is_none() {
                // the destination may be running the restored copy; it stops
                // it once the source is silent for its I/O timeout: resume
                // only after that, so that two copies never run
                let wait = opts.io_timeout + Duration::from_secs(2);
                warn!(?wait, "lazy phase lost contact with the destination; waiting for it to stop its copy before resuming");
                tokio::time::sleep(wait).await;
            }
            let status = if st.frozen {
                // the source is still ours: give it back its CPU
                match resume(&opts).await {
                    Ok(()) => "rolled-back",
                    Err(re) => {
                        return finish(
                            &opts,
                            migration,
                            tl,
                            st,
                            total_ms,
                            "failed",
                            Some(format!("{msg}; resuming the source also failed: {re:#}")),
                        );
                    }
                }
            } else {
                "failed"
            };
            (status, Some(msg))
        }
    };
    finish(&opts, migration, tl, st, total_ms, status, error)
}

fn finish(
    opts: &SourceOptions,
    migration: String,
    tl: Timeline,
    st: State,
    total_ms: f64,
    status: &str,
    error: Option<String>,
) -> MigrationResult {
    let _ = std::fs::remove_dir_all(opts.work_root.join(&migration));
    MigrationResult {
        status: status.into(),
        migration,
        container: opts.container.clone(),
        destination: opts.to.clone(),
        technique: opts.technique.to_string(),
        rounds: st.rounds.iter().filter(|r| !r.final_round).count() as u32,
        round_details: st.rounds,
        downtime_ms: st.downtime_ms,
        total_ms,
        bytes_sent: st.bytes,
        phases: tl.phases,
        error,
        plan: None,
        lazy_ms: st.lazy.as_ref().map(|l| l.lazy_ms),
        faults: st.lazy.as_ref().map(|l| l.faults),
        fault_p99_us: st.lazy.as_ref().map(|l| l.fault_p99_us),
        lazy: st.lazy,
    }
}

async fn resume(opts: &SourceOptions) -> Result<()> {
    let cd = Containerd::connect(&opts.socket, &opts.namespace).await?;
    cd.resume(&opts.container).await
}

struct State {
    frozen: bool,
    rounds: Vec<Round>,
    downtime_ms: f64,
    bytes: u64,
    lazy: Option<crate::result::LazyResult>,
    /// A lazy restore was committed: the destination may run a copy.
    lazy_committed: bool,
}

fn report(opts: &SourceOptions, phase: &str, round: u32, bytes: u64) {
    if let Some(p) = &opts.progress {
        p(&Progress {
            phase: phase.into(),
            round,
            bytes,
        });
    }
}

async fn connect(opts: &SourceOptions) -> Result<Session> {
    let (r, mut w) = connect_to(&opts.identity, &opts.to, opts.io_timeout).await?;
    w.set_compression(opts.compress);
    w.set_rate_limit(opts.bandwidth_cap_bps.map(|b| b / 8));
    Ok(Session {
        r,
        w,
        io_timeout: opts.io_timeout,
    })
}

/// Opens a mutually authenticated stream to the node endpoint at `to`.
pub async fn connect_to(identity: &Identity, to: &str, io: Duration) -> Result<(Reader, Writer)> {
    let host = to
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| anyhow!("destination {to:?} is not HOST:PORT"))?;
    let cfg = identity.client_config()?;
    let tcp = tokio::time::timeout(io, TcpStream::connect(to))
        .await
        .map_err(|_| anyhow!("connecting to {to} timed out"))?
        .with_context(|| format!("connecting to destination {to}"))?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(io, TlsConnector::from(cfg).connect(server_name(host)?, tcp))
        .await
        .map_err(|_| anyhow!("TLS handshake with {to} timed out"))?
        .with_context(|| format!("TLS handshake with {to} (same cluster CA?)"))?;
    let (r, w) = tokio::io::split(tls);
    Ok((FrameReader::new(r), FrameWriter::new(w)))
}

async fn run(
    opts: &SourceOptions,
    migration: &str,
    tl: &mut Timeline,
    st: &mut State,
) -> Result<()> {
    let p = tl.begin("prepare");
    let cd = Containerd::connect(&opts.socket, &opts.namespace).await?;
    let c = cd.container(&opts.container).await?;
    let pid = cd.task_pid(&opts.container).await?;
    // refused before the destination is contacted or anything frozen
    let binary = crate::oci_runtime::binary_of(&c, pid);
    let caps = crate::oci_runtime::probe(&binary).await;
    crate::oci_runtime::check_migratable(&caps, &binary, &opts.container)?;
    let identity = ContainerIdentity {
        id: c.id.clone(),
        namespace: opts.namespace.clone(),
        image: c.image.clone(),
        spec: spec_of(&c)?,
        labels: c.labels.clone().into_iter().collect::<BTreeMap<_, _>>(),
        snapshotter: c.snapshotter.clone(),
        runtime: c
            .runtime
            .as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_default(),
    };
    let mut s = connect(opts).await?;
    s.send(&Message::Hello {
        version: PROTOCOL_VERSION,
        node: opts.identity.node.clone(),
    })
    .await?;
    match s.recv(opts.io_timeout).await? {
        Message::HelloOk { version, .. } if version == PROTOCOL_VERSION => {}
        other => bail!("destination answered {other:?} to Hello (protocol {PROTOCOL_VERSION})"),
    }
    s.send(&Message::Begin {
        migration: migration.into(),
        technique: opts.technique,
        container: identity.clone(),
    })
    .await?;
    let has_image = match s.recv(opts.io_timeout).await? {
        Message::BeginOk { has_image } => has_image,
        other => bail!("destination answered {other:?} to Begin"),
    };
    crate::ensure_tmpfs(&opts.work_root)?;
    let work = opts.work_root.join(migration);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    tl.end(p, None);

    if !has_image {
        let p = tl.begin("image");
        report(opts, "image", 0, s.w.bytes());
        let tar = work.join("image.tar");
        export_image(&cd, &c.image, &tar).await?;
        let data = std::fs::read(&tar).with_context(|| format!("reading {}", tar.display()))?;
        s.file("image.tar", &data).await?;
        let _ = std::fs::remove_file(&tar);
        // wait for the import: a freeze must not wait for it
        match s.recv(Duration::from_secs(120)).await? {
            Message::Ack => {}
            other => bail!("destination answered {other:?} to the image"),
        }
        tl.end(p, Some(data.len() as u64));
    }

    let mut known: HashSet<BlockHash> = HashSet::new();
    let mut seen: Option<memory::Seen> = None;
    if opts.technique.has_rounds() {
        let mut prev = u64::MAX;
        for round in 1..=opts.max_rounds.max(1) {
            let p = tl.begin(&format!("round {round}"));
            let before = s.w.bytes();
            s.send(&Message::RoundStart {
                round,
                final_round: false,
            })
            .await?;
            let pids = cd.pids(&opts.container).await?;
            // hash on a blocking thread while this task sends: CPU and link overlap
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(BlockHash, Vec<u8>)>>(8);
            let mut k = std::mem::take(&mut known);
            let scanner = tokio::task::spawn_blocking(move || {
                let mut pages = memory::Seen::new();
                let r = memory::scan(&pids, &mut k, Some(&mut pages), |batch| {
                    tx.blocking_send(batch)
                        .map_err(|_| anyhow!("round aborted"))
                });
                (r, k, pages)
            });
            let mut send_err = None;
            while let Some(batch) = rx.recv().await {
                let refs: Vec<(BlockHash, &[u8])> =
                    batch.iter().map(|(h, d)| (*h, d.as_slice())).collect();
                if let Err(e) = s.blocks(&refs).await {
                    send_err = Some(e);
                    break;
                }
            }
            drop(rx);
            let (stats, k, pages) = scanner
                .await
                .map_err(|e| anyhow!("memory scan task: {e}"))?;
            known = k;
            seen = Some(pages);
            if let Some(e) = send_err {
                return Err(e);
            }
            let stats = stats?;
            s.send(&Message::RoundEnd {
                round,
                blocks: stats.new_blocks,
            })
            .await?;
            let bytes = s.w.bytes() - before;
            let d = tl.end(p, Some(bytes));
            report(opts, "precopy", round, s.w.bytes());
            st.rounds.push(Round {
                round,
                final_round: false,
                pages_present: stats.pages_present,
                new_blocks: stats.new_blocks,
                bytes,
                duration_ms: d,
                freeze_ms: 0.0,
            });
            info!(
                round,
                new_blocks = stats.new_blocks,
                bytes,
                "pre-copy round"
            );
            let moved = stats.new_blocks * BLOCK_SIZE as u64;
            // stop rule: converged, or the delta stopped shrinking, or the
            // downtime target is in reach
            if moved < opts.min_round_bytes || (round > 1 && moved as f64 >= 0.9 * prev as f64) {
                break;
            }
            if opts.stop_when.as_ref().is_some_and(|f| f(moved)) {
                info!(round, moved, "downtime target in reach: freezing now");
                break;
            }
            prev = moved;
        }
    }

    // tell the destination how the pages images will most likely be laid
    // out, so it writes them while this side freezes and dumps
    let lazy = opts.technique.is_lazy();
    if lazy {
        // lazy pages are not in the restored image: nothing to lay out ahead
        seen = None;
    }
    let hinted = seen.is_some();
    if let Some(seen) = seen.take() {
        let p = tl.begin("layout hint");
        let root = cd.task_pid(&opts.container).await?;
        let pids = cd.pids(&opts.container).await?;
        let layout = tokio::task::spawn_blocking(move || {
            memory::criu_layout(&memory::tree_order(root, &pids), &seen)
        })
        .await
        .map_err(|e| anyhow!("layout prediction: {e}"))?;
        let before = s.w.bytes();
        for (i, pages) in layout.iter().enumerate() {
            let name = format!("hint:pages-{}.img", i + 1);
            let hashes: Vec<BlockHash> = pages.iter().map(|(_, h)| *h).collect();
            let hashes = &hashes;
            tokio::time::timeout(opts.io_timeout, s.w.manifest(&name, hashes))
                .await
                .map_err(|_| anyhow!("destination did not take the layout hint"))?
                .map_err(|e| anyhow!("sending {name}: {e}"))?;
        }
        tokio::time::timeout(opts.io_timeout, s.w.flush())
            .await
            .map_err(|_| anyhow!("destination did not take the layout hint"))?
            .map_err(|e| anyhow!("sending the layout hint: {e}"))?;
        tl.end(p, Some(s.w.bytes() - before));
    }

    // --- freeze: from here on a failure must resume the source ---
    let freeze_at = tl.now_ms();
    let p = tl.begin("freeze+dump");
    report(opts, "dump", 0, s.w.bytes());
    // the cgroup freezer gives up when a task is briefly unfreezable (it is
    // thawed again then, nothing lost): try a few times before failing
    let mut attempt = 1;
    loop {
        match cd.pause(&opts.container).await {
            Ok(()) => break,
            Err(e) if attempt < 3 => {
                warn!(attempt, error = %format!("{e:#}"), "freezing the container failed; retrying");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
    st.frozen = true;
    let images = work.join("images");
    let crwork = work.join("criu-work");
    std::fs::create_dir_all(&images)?;
    std::fs::create_dir_all(&crwork)?;
    cd.shim_checkpoint(&opts.container, &images, &crwork)
        .await?;
    tl.end(p, None);

    let p = tl.begin("transfer");
    let before = s.w.bytes();
    if opts.fault == Some(Fault::CorruptChunk) {
        s.w.inject_corruption();
    }
    let final_round = st.rounds.len() as u32 + 1;
    s.send(&Message::RoundStart {
        round: final_round,
        final_round: true,
    })
    .await?;
    let mut files = Vec::new();
    let mut manifests = Vec::new();
    let mut new_blocks = 0u64;
    let mut pages_present = 0u64;
    let zero = zero_hash();
    // post-copy and hybrid: the pages CRIU restores lazily stay here for now
    let layout = if lazy {
        Some(LazyLayout::read(&images)?)
    } else {
        None
    };
    let mut lazy_hashes: HashMap<u32, Vec<BlockHash>> = HashMap::new();
    for entry in
        std::fs::read_dir(&images).with_context(|| format!("reading {}", images.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        // map, do not copy: the image is already in memory (tmpfs)
        let file = std::fs::File::open(entry.path())
            .with_context(|| format!("opening {}", entry.path().display()))?;
        // SAFETY: the image files are ours (the dump is finished) and are not
        // modified while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("mapping {}", entry.path().display()))?;
        let data: &[u8] = &map;
        if name.starts_with("pages-")
            && name.ends_with(".img")
            && data.len().is_multiple_of(BLOCK_SIZE)
        {
            let lazy_slots = layout.as_ref().and_then(|l| l.lazy_slots.get(&name));
            let is_lazy = |i: usize| lazy_slots.and_then(|l| l.get(i)).copied().unwrap_or(false);
            let hashes: Vec<BlockHash> = match (lazy_slots, opts.technique) {
                // post-copy: the content of lazy pages is not needed now
                (Some(_), Technique::Postcopy) => data
                    .chunks(BLOCK_SIZE)
                    .enumerate()
                    .map(|(i, p)| {
                        if is_lazy(i) {
                            LAZY_SLOT
                        } else {
                            mose_wire::blocks::hash_block(p)
                        }
                    })
                    .collect(),
                _ => mose_wire::blocks::hash_blocks(data),
            };
            if opts.technique == Technique::Hybrid {
                if let Some(id) = name
                    .strip_prefix("pages-")
                    .and_then(|n| n.strip_suffix(".img"))
                    .and_then(|n| n.parse::<u32>().ok())
                {
                    lazy_hashes.insert(id, hashes.clone());
                }
            }
            if !hinted && !lazy {
                // no live rounds laid the image out: announce its exact layout
                // first, so the destination writes each block in place as it
                // arrives instead of assembling the image after the transfer
                let hint = format!("hint:{name}");
                tokio::time::timeout(opts.io_timeout, s.w.manifest(&hint, &hashes))
                    .await
                    .map_err(|_| anyhow!("destination did not take the page layout"))?
                    .map_err(|e| anyhow!("sending {hint}: {e}"))?;
            }
            let mut batch: Vec<(BlockHash, &[u8])> = Vec::new();
            for (i, (page, &h)) in data.chunks(BLOCK_SIZE).zip(hashes.iter()).enumerate() {
                pages_present += 1;
                if is_lazy(i) {
                    continue;
                }
                if h != zero && known.insert(h) {
                    new_blocks += 1;
                    batch.push((h, page));
                    if batch.len() >= 256 {
                        s.blocks(&batch).await?;
                        batch.clear();
                    }
                }
            }
            if !batch.is_empty() {
                s.blocks(&batch).await?;
            }
            manifests.push((name, hashes));
        } else {
            files.push((name, data.to_vec()));
        }
    }
    s.send(&Message::RoundEnd {
        round: final_round,
        blocks: new_blocks,
    })
    .await?;
    if opts.fault == Some(Fault::Truncate) {
        bail!("injected fault: stream truncated during the final transfer");
    }
    for (name, data) in &files {
        s.file(name, data).await?;
    }
    for (name, hashes) in &manifests {
        tokio::time::timeout(opts.io_timeout, s.w.manifest(name, hashes))
            .await
            .map_err(|_| anyhow!("destination did not take the page manifest"))?
            .map_err(|e| anyhow!("sending manifest {name}: {e}"))?;
    }
    let mounts = cd.snapshot_mounts(&c.snapshotter, &c.snapshot_key).await?;
    let upper = rootfs::upperdir(&mounts)?;
    let tar = rootfs::pack(&upper)?;
    s.file("rootfs.tar", &tar).await?;
    let bytes = s.w.bytes() - before;
    let d = tl.end(p, Some(bytes));
    st.rounds.push(Round {
        round: final_round,
        final_round: true,
        pages_present,
        new_blocks,
        bytes,
        duration_ms: d,
        freeze_ms: d,
    });
    report(opts, "restore", final_round, s.w.bytes());

    let p = tl.begin("restore");
    s.send(&Message::Commit).await?;
    if let Some(layout) = layout {
        st.lazy_committed = true;
        return lazy_phase(
            opts,
            tl,
            st,
            s,
            &cd,
            &images,
            layout,
            lazy_hashes,
            known,
            freeze_at,
            p,
        )
        .await;
    }
    match s.recv(Duration::from_secs(120)).await? {
        Message::Restored {
            pid,
            restore_ms,
            steps,
            ..
        } => {
            info!(pid, restore_ms, "destination restored the container");
            // the destination's steps end when its answer left: place them
            let mut at = tl.now_ms() - steps.iter().map(|(_, d)| d).sum::<f64>();
            for (name, d) in steps {
                tl.phases.push(crate::result::Phase {
                    name: format!("dest: {name}"),
                    start_ms: at,
                    duration_ms: d,
                    bytes: None,
                });
                at += d;
            }
        }
        other => bail!("destination answered {other:?} to Commit"),
    }
    st.downtime_ms = tl.now_ms() - freeze_at;
    tl.end(p, None);

    // commit point: the destination owns the container once it acknowledges
    let p = tl.begin("release");
    s.send(&Message::Released).await?;
    match s.recv(opts.io_timeout).await? {
        Message::Ack => {}
        other => bail!("destination answered {other:?} to Released"),
    }
    st.frozen = false;
    st.bytes = s.w.bytes();
    if let Err(e) = cd.remove_container(&opts.container).await {
        warn!(error = %e, "source copy could not be removed; the destination owns the container now");
    }
    tl.end(p, None);
    report(opts, "done", final_round, s.w.bytes());
    Ok(())
}

/// Post-copy and hybrid after the commit: serve the frozen dump's lazy pages
/// until the destination has them all, then release the source's copy.
#[allow(clippy::too_many_arguments)]
async fn lazy_phase(
    opts: &SourceOptions,
    tl: &mut Timeline,
    st: &mut State,
    s: Session,
    cd: &Containerd,
    images: &Path,
    layout: LazyLayout,
    hashes: HashMap<u32, Vec<BlockHash>>,
    known: HashSet<BlockHash>,
    freeze_at: f64,
    restore_phase: crate::result::PhaseStart,
) -> Result<()> {
    let held = if opts.technique == Technique::Hybrid {
        // the destination holds every block sent so far, and zero pages
        let mut k = known;
        k.insert(zero_hash());
        k
    } else {
        HashSet::new()
    };
    let mut dump = Dump::open(images, layout, hashes, held)?;
    info!(
        lazy_pages = dump.pages(),
        "serving lazy pages from the frozen dump"
    );
    let Session {
        r,
        mut w,
        io_timeout,
    } = s;
    let started = tl.started();
    let now = move || started.elapsed().as_secs_f64() * 1000.0;
    let progress = opts.progress.clone();
    let on_restored = move || {
        if let Some(p) = &progress {
            p(&Progress {
                phase: "lazy".into(),
                round: 0,
                bytes: 0,
            });
        }
    };
    dump.corrupt_next = opts.fault == Some(Fault::CorruptPage);
    let out = feeder::serve(&mut dump, r, &mut w, io_timeout, &now, &on_restored).await?;
    // the destination's steps end when its answer left: place them
    let mut at = out.restored_at_ms - out.restore_steps.iter().map(|(_, d)| d).sum::<f64>();
    for (name, d) in &out.restore_steps {
        tl.phases.push(crate::result::Phase {
            name: format!("dest: {name}"),
            start_ms: at,
            duration_ms: *d,
            bytes: None,
        });
        at += d;
    }
    st.downtime_ms = out.restored_at_ms - freeze_at;
    tl.end_at(restore_phase, out.restored_at_ms, None);
    let lazy_start = out.restored_at_ms;
    tl.phases.push(crate::result::Phase {
        name: "lazy pages".into(),
        start_ms: lazy_start,
        duration_ms: now() - lazy_start,
        bytes: Some(out.bytes),
    });
    st.lazy = Some(crate::result::LazyResult {
        lazy_ms: out.stats.lazy_ms,
        faults: out.stats.faults,
        fault_p50_us: out.stats.fault_p50_us,
        fault_p99_us: out.stats.fault_p99_us,
        pages: dump.pages(),
        pages_sent: out.pages_sent,
        pages_from_cache: out.stats.pages_from_cache,
        page_requests: out.pages_requested,
        bytes: out.bytes,
    });
    st.frozen = false;
    st.bytes = w.bytes();
    let p = tl.begin("release");
    if let Err(e) = cd.remove_container(&opts.container).await {
        warn!(error = %e, "source copy could not be removed; the destination owns the container now");
    }
    tl.end(p, None);
    report(opts, "done", 0, w.bytes());
    Ok(())
}

async fn export_image(cd: &Containerd, image: &str, out: &Path) -> Result<()> {
    let o = tokio::process::Command::new("ctr")
        .args(["-a", cd.socket(), "-n", cd.namespace(), "images", "export"])
        .arg(out)
        .arg(image)
        .output()
        .await
        .context("running ctr images export (is ctr installed?)")?;
    if !o.status.success() {
        bail!(
            "exporting image {image}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}
