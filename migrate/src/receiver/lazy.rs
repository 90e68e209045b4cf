//! The receiver's lazy phase (post-copy and hybrid): restore with anonymous
//! memory missing, then place pages as they come: asked for when a process
//! faults, pushed in the background by the source, or, for hybrid, taken from
//! the blocks pre-copy rounds already brought.
//!
//! Failure rules: a corrupt page, a handler error or a source that goes
//! silent stops the restored container (killed before the handler lets go of
//! its userfaultfds, so no process ever runs on a page it did not get) and the
//! migration is reported failed. The source's frozen copy is then the only
//! one, which the source resumes.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use mose_wire::{
    blocks::zero_hash,
    frame::{Frame, FrameKind, FrameWriter},
    BlockHash, ContainerIdentity, LazyStats, Message, Technique, WireError, BLOCK_SIZE, LAZY_SLOT,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::mpsc::{unbounded_channel, UnboundedReceiver},
};
use tracing::{info, warn};

use super::{
    assemble::assemble,
    config::EndpointConfig,
    incoming::Incoming,
    machine::{ReceiverEvent, ReceiverState},
    restore::{RestoreTarget, Steps},
    session::Session,
};
use crate::{
    containerd::Containerd,
    error::{error_chain, InPhase, MigrateError, Phase, Result},
    lazy::{Delivery, Handler, LazyLayout, Origin, Report},
    link::{forward_frames, within},
};

const PAGE: u64 = BLOCK_SIZE as u64;
/// Pages asked for around a faulting one: neighbours are likely next.
pub const FAULT_RUN: u32 = 16;
/// The source is told what arrived every this many lazy pages (its push
/// window is larger).
const PROGRESS_EVERY: u64 = 64;
/// Cached pages handed to the handler per turn of the session's loop.
const PREFILL_BATCH: usize = 1024;
/// Cached pages placed as one run at most.
const CACHED_RUN: usize = 64;

type Frames = UnboundedReceiver<Result<Frame, WireError>>;

/// Restores lazily and serves the lazy phase to its end (the source's release).
pub async fn run<R, W>(
    s: &mut Session<'_, R, W>,
    cd: &Containerd,
    container: &ContainerIdentity,
    inc: &mut Incoming,
    migration: &str,
    technique: Technique,
    target: RestoreTarget,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    s.link.phase = Phase::Lazy;
    let t = Instant::now();
    let a = match assemble(inc, true) {
        Ok(a) => a,
        Err(e) => return fail_early(s, "assemble image", e).await,
    };
    let layout = match a.layout {
        Some(l) => l,
        None => {
            return fail_early(
                s,
                "assemble image",
                MigrateError::local(Phase::Lazy, "no lazy layout"),
            )
            .await
        }
    };
    // hybrid: the content each lazy page had at the freeze, when the blocks
    // pre-copy brought hold it
    let cached = match technique {
        Technique::Hybrid => cached_pages(&layout, inc),
        _ => HashMap::new(),
    };
    let steps: Steps = vec![("assemble image".into(), t.elapsed().as_secs_f64() * 1000.0)];
    info!(
        migration,
        lazy_pages = layout.pages(),
        cached = cached.len(),
        "restoring lazily"
    );
    let socket = socket_path(&s.cfg.work_root, migration);
    let (rep_tx, reports) = unbounded_channel();
    let handler = match Handler::start(&socket, layout.processes.clone(), rep_tx) {
        Ok(h) => h,
        Err(e) => {
            return fail_early(
                s,
                "lazy-page handler",
                MigrateError::Local {
                    phase: Phase::Lazy,
                    what: "starting the lazy-page handler".into(),
                    source: e.into(),
                },
            )
            .await
        }
    };
    let restore = Restore {
        cd,
        container,
        target,
        images: a.images,
        rootfs_tar: a.rootfs_tar,
        socket,
        steps,
    };
    serve(s, cd, container, inc, handler, cached, reports, restore, t).await
}

async fn fail_early<R, W>(s: &mut Session<'_, R, W>, step: &str, e: MigrateError) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    s.link.fail(step, &error_chain(&e)).await;
    Err(e)
}

/// What the lazy restore needs.
struct Restore<'a> {
    cd: &'a Containerd,
    container: &'a ContainerIdentity,
    target: RestoreTarget,
    images: PathBuf,
    rootfs_tar: Option<PathBuf>,
    socket: PathBuf,
    steps: Steps,
}

impl Restore<'_> {
    async fn run(&mut self, cfg: &EndpointConfig) -> (Result<u32>, Steps) {
        let mut steps = std::mem::take(&mut self.steps);
        let r = self
            .target
            .restore(
                cfg,
                self.cd,
                self.container,
                &self.images,
                self.rootfs_tar.take(),
                Some(&self.socket),
                &mut steps,
            )
            .await;
        (r, steps)
    }
}

/// Runs the phase; on failure stops the restored copy, then tells the source.
#[allow(clippy::too_many_arguments)]
async fn serve<R, W>(
    s: &mut Session<'_, R, W>,
    cd: &Containerd,
    container: &ContainerIdentity,
    inc: &mut Incoming,
    handler: Handler,
    cached: HashMap<(u32, u64), BlockHash>,
    mut reports: UnboundedReceiver<Report>,
    mut restore: Restore<'_>,
    started: Instant,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Session {
        cfg, link, state, ..
    } = s;
    let cfg: &EndpointConfig = cfg;
    // frames are read by a future of their own, so that a partly read frame
    // is never dropped when another event wins a select
    let (ftx, mut frames) = unbounded_channel::<Result<Frame, WireError>>();
    let reader = forward_frames(&mut link.r, ftx);
    let mut phase = LazyPhase {
        cfg,
        w: &mut link.w,
        peer: &link.peer,
        state,
        inc,
        handler: Some(handler),
        cached,
        restore_started: started,
        prefill: Vec::new(),
        asked: HashSet::new(),
        received: 0,
        reported: 0,
    };
    let res = tokio::select! {
        res = phase.run(&mut reports, &mut frames, restore.run(cfg)) => res,
        _ = reader => Err(MigrateError::local(Phase::Lazy, "the migration stream's reader ended")),
    };
    if let Err(e) = &res {
        stop_restored(cfg, cd, container, &restore.target, &mut phase.handler, e).await;
        let m = Message::Failed {
            step: "lazy phase".into(),
            error: error_chain(e),
        };
        let _ = tokio::time::timeout(cfg.io_timeout, phase.w.message(&m)).await;
    }
    if let Some(h) = phase.handler.take() {
        tokio::task::spawn_blocking(move || h.stop()).await.ok();
    }
    // whichever step noticed first (a write to a vanished source included),
    // the record says what happened to the restored copy
    res.map_err(|e| MigrateError::Local {
        phase: Phase::Lazy,
        what: "lazy phase failed; the restored container was stopped".into(),
        source: Box::new(e),
    })
}

/// The restored copy must not run on: stop it before the handler closes its
/// descriptors (the caller tells the source afterwards, which resumes its
/// frozen copy on hearing it).
async fn stop_restored(
    cfg: &EndpointConfig,
    cd: &Containerd,
    container: &ContainerIdentity,
    target: &RestoreTarget,
    handler: &mut Option<Handler>,
    e: &MigrateError,
) {
    warn!(container = %container.id, error = %error_chain(e), "lazy phase failed; stopping the restored container");
    // its processes may be mid-restore, waiting for a page: containerd
    // cannot stop a task that is still starting, so kill them directly
    if let Some(cg) = target.cgroup(cfg, cd, container).await {
        let killed = tokio::task::spawn_blocking(move || kill_cgroup(&cg))
            .await
            .unwrap_or(0);
        info!(killed, "stopped the restored processes");
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), target.discard(cd, container)).await;
    if let Some(h) = handler.take() {
        tokio::task::spawn_blocking(move || h.stop()).await.ok();
    }
}

/// SIGKILLs every process in cgroup `path` (under each mounted hierarchy),
/// until none is left or five seconds passed. Returns how many were killed.
fn kill_cgroup(path: &str) -> usize {
    let mounts: Vec<PathBuf> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            (fstype == "cgroup" || fstype == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .collect();
    let rel = path.trim_start_matches('/');
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut killed = 0;
    loop {
        let mut pids = std::collections::BTreeSet::new();
        for m in &mounts {
            if let Ok(t) = std::fs::read_to_string(m.join(rel).join("cgroup.procs")) {
                pids.extend(t.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        if pids.is_empty() || Instant::now() > deadline {
            return killed;
        }
        for pid in pids {
            let pid = nix::unistd::Pid::from_raw(pid);
            if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn socket_path(work_root: &Path, migration: &str) -> PathBuf {
    // unix socket paths are short: name it by a hash
    let h = xxhash_rust::xxh3::xxh3_64(format!("{}/{migration}", work_root.display()).as_bytes());
    work_root.join(format!(".mose-lazy-{h:016x}.sock"))
}

/// (pid, checkpoint page address) → hash, for every lazy page whose content
/// the destination already holds.
fn cached_pages(layout: &LazyLayout, inc: &Incoming) -> HashMap<(u32, u64), BlockHash> {
    let manifests: HashMap<&str, &Vec<BlockHash>> =
        inc.manifests.iter().map(|(n, h)| (n.as_str(), h)).collect();
    let zero = zero_hash();
    let mut out = HashMap::new();
    for p in &layout.processes {
        let Some(hashes) = manifests.get(format!("pages-{}.img", p.pages_id).as_str()) else {
            continue;
        };
        // a lazy dump's runs have no slot: the source names what is held
        // as it pushes (PagesHeld frames)
        for (run, slot) in p.runs.iter().filter_map(|r| Some((r, r.slot?))) {
            for k in 0..run.nr_pages {
                if let Some(h) = hashes.get((slot + k) as usize) {
                    if *h != LAZY_SLOT && (*h == zero || inc.blocks.contains(*h)) {
                        out.insert((p.pid, run.vaddr + k * PAGE), *h);
                    }
                }
            }
        }
    }
    out
}

/// The lazy phase's working state (the receiver's [`ReceiverState::Lazy`]
/// says where the protocol is; this holds the pages' bookkeeping).
struct LazyPhase<'a, W> {
    cfg: &'a EndpointConfig,
    w: &'a mut FrameWriter<W>,
    peer: &'a str,
    state: &'a mut ReceiverState,
    inc: &'a mut Incoming,
    handler: Option<Handler>,
    cached: HashMap<(u32, u64), BlockHash>,
    restore_started: Instant,
    /// Hybrid: cached pages still to place (popped from the end), a batch
    /// per turn so that faults and frames are served in between.
    prefill: Vec<(u32, u64)>,
    /// Answers to PageRequests not in yet (they go ahead of the push).
    asked: HashSet<(u32, u64)>,
    /// Lazy pages received, and how many the source was last told about.
    received: u64,
    reported: u64,
}

impl<W: AsyncWrite + Unpin> LazyPhase<'_, W> {
    fn step(&mut self, event: ReceiverEvent<'_>) -> Result<()> {
        *self.state = self
            .state
            .clone()
            .step(event)
            .map_err(|source| MigrateError::Protocol {
                phase: Phase::Lazy,
                peer: self.peer.to_string(),
                source,
            })?;
        Ok(())
    }

    async fn send(&mut self, m: &Message) -> Result<()> {
        let what = format!("take {}", m.name());
        within(
            Phase::Lazy,
            self.peer,
            &what,
            self.cfg.io_timeout,
            self.w.message(m),
        )
        .await
    }

    fn handler(&self) -> Result<&Handler> {
        self.handler
            .as_ref()
            .ok_or_else(|| MigrateError::local(Phase::Lazy, "the lazy-page handler is gone"))
    }

    fn placed(&self) -> bool {
        matches!(self.state, ReceiverState::Lazy { placed: true, .. })
    }

    /// The event loop: restore, handler reports, frames, hybrid prefill and
    /// the source's silence, until the source releases its copy.
    async fn run(
        &mut self,
        reports: &mut UnboundedReceiver<Report>,
        frames: &mut Frames,
        restore: impl std::future::Future<Output = (Result<u32>, Steps)>,
    ) -> Result<()> {
        let io = self.cfg.io_timeout;
        tokio::pin!(restore);
        let mut restoring = true;
        let mut last_frame = Instant::now();
        while *self.state != ReceiverState::Done {
            // a restore takes as long as it takes (as for cold)
            let limit = if restoring {
                io.max(Duration::from_secs(120))
            } else {
                io
            };
            let silent = limit.saturating_sub(last_frame.elapsed());
            tokio::select! {
                (res, steps) = &mut restore, if restoring => {
                    restoring = false;
                    self.on_restored(res?, steps).await?;
                }
                // once every page is in place the handler is gone
                rep = reports.recv(), if !self.placed() => self.on_report(rep).await?,
                f = frames.recv() => {
                    last_frame = Instant::now();
                    self.on_frame(f).await?;
                }
                _ = std::future::ready(()), if !self.prefill.is_empty() && self.handler.is_some() => {
                    self.prefill_batch()?;
                    // the frame reader runs beside this future in one task
                    tokio::task::yield_now().await;
                }
                _ = tokio::time::sleep(silent) => return Err(self.silence(io)),
            }
        }
        info!("post-copy complete; the container runs here");
        Ok(())
    }

    async fn on_restored(&mut self, pid: u32, steps: Steps) -> Result<()> {
        self.step(ReceiverEvent::Restored)?;
        let restore_ms = self.restore_started.elapsed().as_secs_f64() * 1000.0;
        info!(pid, restore_ms, "restored lazily; the container runs");
        self.send(&Message::Restored {
            pid,
            restore_ms,
            prepare_ms: 0.0,
            steps,
        })
        .await
    }

    fn silence(&self, io: Duration) -> MigrateError {
        let what = match self.state {
            ReceiverState::Lazy { restored: true, placed: true, .. } => {
                "confirm the hand-over".to_string()
            }
            _ => "send anything during the lazy phase (the restored container cannot run without its memory and is stopped)".to_string(),
        };
        MigrateError::Timeout {
            phase: Phase::Lazy,
            peer: self.peer.to_string(),
            what,
            after: io,
        }
    }

    async fn on_report(&mut self, rep: Option<Report>) -> Result<()> {
        match rep {
            Some(Report::Request { pid, vaddr, pages }) => {
                if self.cached.contains_key(&(pid, vaddr)) {
                    self.deliver_cached(&mut [(pid, vaddr)], true)
                } else {
                    self.asked.insert((pid, vaddr));
                    let pages = pages.max(FAULT_RUN);
                    self.send(&Message::PageRequest { pid, vaddr, pages }).await
                }
            }
            Some(Report::RestoreFinished) => {
                self.prefill = self.cached.keys().copied().collect();
                self.prefill.sort_unstable_by(|a, b| b.cmp(a));
                if !self.prefill.is_empty() {
                    info!(
                        pages = self.prefill.len(),
                        "placing the pages pre-copy already brought"
                    );
                }
                Ok(())
            }
            Some(Report::Done(stats)) => self.on_all_placed(stats).await,
            Some(Report::Failed(msg)) => Err(MigrateError::local(
                Phase::Lazy,
                format!("lazy-page handler: {msg}"),
            )),
            None => Err(MigrateError::local(
                Phase::Lazy,
                "the lazy-page handler stopped",
            )),
        }
    }

    /// Every page is in place: the descriptors may close now (a fork or
    /// mremap would otherwise wait for a handler that no longer reads its
    /// events), and the source may let go.
    async fn on_all_placed(&mut self, stats: LazyStats) -> Result<()> {
        self.step(ReceiverEvent::AllPlaced)?;
        if let Some(h) = self.handler.take() {
            tokio::task::spawn_blocking(move || h.stop()).await.ok();
        }
        self.send(&Message::LazyDone { stats }).await
    }

    async fn on_frame(&mut self, f: Option<Result<Frame, WireError>>) -> Result<()> {
        let f = match f {
            Some(Ok(f)) => f,
            Some(Err(source)) => {
                let what = match source {
                    WireError::Checksum { .. } | WireError::Malformed(_) => {
                        "corrupt data during the lazy phase; no page is placed unverified"
                    }
                    _ => "the source was lost during the lazy phase",
                };
                return Err(MigrateError::Wire {
                    phase: Phase::Lazy,
                    peer: self.peer.to_string(),
                    what: what.into(),
                    source,
                });
            }
            None => {
                return Err(MigrateError::local(
                    Phase::Lazy,
                    "the source's stream ended during the lazy phase",
                ))
            }
        };
        match f.kind {
            FrameKind::Pages => self.on_pages(&f).await,
            FrameKind::PagesHeld => self.on_pages_held(&f).await,
            FrameKind::Control => {
                let m = f.message().map_err(|source| MigrateError::Wire {
                    phase: Phase::Lazy,
                    peer: self.peer.to_string(),
                    what: "decoding a control message".into(),
                    source,
                })?;
                self.step(ReceiverEvent::Message(&m))?;
                match m {
                    Message::LazySent { pages } => info!(pages, "the source sent every lazy page"),
                    Message::Released => self.send(&Message::Ack).await?,
                    _ => {}
                }
                Ok(())
            }
            FrameKind::Blocks => self.step(ReceiverEvent::Blocks),
            FrameKind::Manifest => self.step(ReceiverEvent::Manifest { hint: false }),
            FrameKind::FileData => self.step(ReceiverEvent::FileData {
                len: f.payload.len() as u64,
            }),
        }
    }

    async fn on_pages(&mut self, f: &Frame) -> Result<()> {
        self.step(ReceiverEvent::Pages)?;
        // every page is in place already: what was in flight is moot
        if self.placed() {
            return Ok(());
        }
        let run = f.pages().map_err(|source| MigrateError::Wire {
            phase: Phase::Lazy,
            peer: self.peer.to_string(),
            what: "a lazy page failed its check; it is not placed".into(),
            source,
        })?;
        self.note_received(run.hashes.len() as u64).await?;
        let zero = zero_hash();
        let zero_pages = run.hashes.iter().filter(|h| **h == zero).count() as u64;
        for k in 0..run.hashes.len() as u64 {
            self.cached.remove(&(run.pid, run.vaddr + k * PAGE));
        }
        let urgent = self.asked.remove(&(run.pid, run.vaddr));
        let d = Delivery {
            pid: run.pid,
            vaddr: run.vaddr,
            data: run.data,
            origin: Origin::Source,
            zero_pages,
        };
        self.deliver(d, urgent)
    }

    /// Counts lazy pages received, telling the source every
    /// [`PROGRESS_EVERY`] (its push window moves on that).
    async fn note_received(&mut self, pages: u64) -> Result<()> {
        self.received += pages;
        if self.received - self.reported >= PROGRESS_EVERY {
            self.send(&Message::LazyProgress {
                pages: self.received,
            })
            .await?;
            self.reported = self.received;
        }
        Ok(())
    }

    /// Pages the source named by blocks this node holds (hybrid with a lazy
    /// dump: their content did not change since the rounds brought it).
    async fn on_pages_held(&mut self, f: &Frame) -> Result<()> {
        self.step(ReceiverEvent::Pages)?;
        if self.placed() {
            return Ok(());
        }
        let run = f.held_pages().map_err(|source| MigrateError::Wire {
            phase: Phase::Lazy,
            peer: self.peer.to_string(),
            what: "a run of held pages is malformed; it is not placed".into(),
            source,
        })?;
        self.note_received(run.hashes.len() as u64).await?;
        let (data, zero_pages) = self.held_blocks(&run.hashes, |k, h| {
            format!(
                "the source named block {h:032x} for page {:#x} of pid {} as held here, but \
                 this node never received it",
                run.vaddr + k as u64 * PAGE,
                run.pid
            )
        })?;
        let urgent = self.asked.remove(&(run.pid, run.vaddr));
        let d = Delivery {
            pid: run.pid,
            vaddr: run.vaddr,
            data,
            origin: Origin::Cache,
            zero_pages,
        };
        self.deliver(d, urgent)
    }

    /// The content of the blocks `hashes` from this node's block store (a
    /// zero page's hash reads as zeros), and how many are zero pages;
    /// `missing(i, hash)` says what a block it lacks means.
    fn held_blocks(
        &self,
        hashes: &[BlockHash],
        missing: impl Fn(usize, BlockHash) -> String,
    ) -> Result<(Vec<u8>, u64)> {
        let zero = zero_hash();
        let mut data = Vec::with_capacity(hashes.len() * BLOCK_SIZE);
        for (i, &h) in hashes.iter().enumerate() {
            let b = self
                .inc
                .blocks
                .block(h)
                .ok_or_else(|| MigrateError::local(Phase::Lazy, missing(i, h)))?;
            data.extend_from_slice(b);
        }
        let zero_pages = hashes.iter().filter(|&&h| h == zero).count() as u64;
        Ok((data, zero_pages))
    }

    fn deliver(&self, d: Delivery, urgent: bool) -> Result<()> {
        let h = self.handler()?;
        let r = if urgent {
            h.deliver_urgent(d)
        } else {
            h.deliver(d)
        };
        r.in_phase(Phase::Lazy, "handing pages to the lazy-page handler")
    }

    fn prefill_batch(&mut self) -> Result<()> {
        let n = self.prefill.len().saturating_sub(PREFILL_BATCH);
        let mut keys = self.prefill.split_off(n);
        keys.retain(|k| self.cached.contains_key(k));
        self.deliver_cached(&mut keys, false)
    }

    /// Places cached pages of (pid, vaddr..) as runs; `urgent` when a
    /// process waits for them.
    fn deliver_cached(&mut self, keys: &mut [(u32, u64)], urgent: bool) -> Result<()> {
        keys.sort_unstable();
        let mut i = 0;
        while i < keys.len() {
            let (pid, start) = keys[i];
            let mut j = i;
            while j + 1 < keys.len()
                && keys[j + 1].0 == pid
                && keys[j + 1].1 == keys[j].1 + PAGE
                && j + 1 - i < CACHED_RUN
            {
                j += 1;
            }
            let d = self.cached_run(pid, start, &keys[i..=j])?;
            self.deliver(d, urgent)?;
            i = j + 1;
        }
        Ok(())
    }

    fn cached_run(&mut self, pid: u32, vaddr: u64, keys: &[(u32, u64)]) -> Result<Delivery> {
        let hashes = keys
            .iter()
            .map(|key| {
                self.cached.remove(key).ok_or_else(|| {
                    MigrateError::local(
                        Phase::Lazy,
                        format!("cache lost page {:#x} of pid {}", key.1, key.0),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (data, zero_pages) =
            self.held_blocks(&hashes, |_, h| format!("cached block {h:032x} vanished"))?;
        Ok(Delivery {
            pid,
            vaddr,
            data,
            origin: Origin::Cache,
            zero_pages,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lazy::pagemap::{tests::image, Pagemap, PE_LAZY, PE_PRESENT};

    #[test]
    fn hybrid_cache_holds_only_lazy_pages_whose_blocks_arrived() {
        let dir = tempfile::tempdir().unwrap();
        let map = Pagemap::parse(&image(
            1,
            &[(0x1000, 1, PE_PRESENT), (0x10000, 3, PE_PRESENT | PE_LAZY)],
        ))
        .unwrap();
        let layout = LazyLayout::from_pagemaps(vec![(5, map)]);
        let a = vec![1u8; BLOCK_SIZE];
        let b = vec![2u8; BLOCK_SIZE];
        let (ha, hb) = (
            mose_wire::blocks::hash_block(&a),
            mose_wire::blocks::hash_block(&b),
        );
        let mut inc = Incoming::create(dir.path().join("m")).unwrap();
        inc.blocks.insert(ha, &a).unwrap();
        inc.manifests = vec![("pages-1.img".into(), vec![ha, ha, hb, zero_hash()])];
        let got = cached_pages(&layout, &inc);
        // slot 1 (held), slot 2 (not held), slot 3 (zero: always held)
        assert_eq!(got.len(), 2);
        assert_eq!(got[&(5, 0x10000)], ha);
        assert_eq!(got[&(5, 0x12000)], zero_hash());
    }
}
