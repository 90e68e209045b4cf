//! The sender's lazy phase (post-copy and hybrid): the container stays
//! frozen, and its anonymous memory is served from CRIU's lazy page server
//! on loopback (a lazy dump) or from the mapped pages images of a full dump
//! in tmpfs: pages a restored process faulted on first, then everything else
//! in a background push. The source lets go only once the destination
//! reports every page in place.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    time::Duration,
};

use mose_wire::{
    blocks::{hash_block, zero_hash},
    frame::{Frame, FrameKind},
    BlockHash, LazyStats, Message, Technique, WireError, BLOCK_SIZE,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{
    machine::{SenderEvent, SenderState},
    migration::{Migration, Writer},
    options::{Fault, Progress},
    transfer::LazyPart,
};
use crate::{
    error::{InPhase, MigrateError, Phase, ProtocolError, Result},
    lazy::{LazyLayout, LazyProcess, PageServerClient},
    link::{forward_frames, within},
    result::{LazyResult, PhaseStart},
};

/// How long a lazy restore may take at the destination before it answers.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest run of pages one PageRequest is answered with.
const MAX_ANSWER: u32 = 256;

const PAGE: u64 = BLOCK_SIZE as u64;
/// Pages per background push frame.
const PUSH_RUN: u64 = 32;
/// Pages the push reads from CRIU's page server at once (1 MiB).
const READ_AHEAD: u64 = 256;
/// Pages the background push may be ahead of what the destination reported
/// received (1 MiB: a fault's answer waits behind at most this much, ~40 ms
/// at 200 Mbit/s, while a fast link stays full).
const PUSH_WINDOW: u64 = 256;

/// Where the frozen container's lazy pages are read from.
enum Pages {
    /// The pages images of a full dump in tmpfs, mapped (pages_id → map).
    Images(HashMap<u32, memmap2::Mmap>),
    /// CRIU's page server, the pages still in the frozen processes.
    Server(PageServerClient),
}

/// The frozen dump's lazy pages, ready to serve.
pub struct Dump {
    layout: LazyLayout,
    pages: Pages,
    /// pages_id → hash of every slot (hybrid with a tmpfs dump: computed at
    /// the freeze).
    hashes: HashMap<u32, Vec<BlockHash>>,
    /// Blocks the destination holds from pre-copy rounds (hybrid): not pushed.
    held: HashSet<BlockHash>,
    /// Per process, per run: pages already sent.
    sent: Vec<Vec<Vec<bool>>>,
    /// Pages the push read ahead from CRIU's page server: process, run,
    /// first page, their content.
    ahead: Option<(usize, usize, u64, Vec<u8>)>,
    /// Test hook: flip a byte of the next page sent, after hashing it.
    pub corrupt_next: bool,
}

impl Dump {
    /// The lazy pages of the checkpoint in `images`: read from CRIU's page
    /// server when `server` is given (a lazy dump), else from the mapped
    /// pages images.
    pub fn open(
        images: &Path,
        layout: LazyLayout,
        hashes: HashMap<u32, Vec<BlockHash>>,
        held: HashSet<BlockHash>,
        server: Option<PageServerClient>,
    ) -> Result<Self> {
        let pages = match server {
            Some(c) => Pages::Server(c),
            None => Pages::Images(map_images(images, &layout)?),
        };
        let sent = layout
            .processes
            .iter()
            .map(|p| {
                p.runs
                    .iter()
                    .map(|r| vec![false; r.nr_pages as usize])
                    .collect()
            })
            .collect();
        Ok(Self {
            layout,
            pages,
            hashes,
            held,
            sent,
            ahead: None,
            corrupt_next: false,
        })
    }

    pub fn pages(&self) -> u64 {
        self.layout.pages()
    }

    /// Whether held pages must be named to the destination: with a lazy dump
    /// it has no hash of them from the final transfer.
    fn names_held(&self) -> bool {
        matches!(self.pages, Pages::Server(_))
    }

    /// Ends CRIU's page-server session properly (the dump then finishes).
    pub async fn close(self) -> Result<()> {
        match self.pages {
            Pages::Server(c) => c
                .close()
                .await
                .in_phase(Phase::Lazy, "ending the session with CRIU's page server"),
            Pages::Images(_) => Ok(()),
        }
    }

    fn process(&self, pid: u32) -> Option<(usize, &LazyProcess)> {
        self.layout
            .processes
            .iter()
            .enumerate()
            .find(|(_, p)| p.pid == pid)
    }

    /// Marks pages `k..k+n` of run `ri` of process `pi` sent.
    fn mark_sent(&mut self, pi: usize, ri: usize, k: u64, n: u64) {
        if let Some(s) = self.sent[pi][ri].get_mut(k as usize..(k + n) as usize) {
            s.iter_mut().for_each(|s| *s = true);
        }
    }

    fn is_sent(&self, pi: usize, ri: usize, k: u64) -> bool {
        self.sent[pi][ri].get(k as usize).copied().unwrap_or(true)
    }

    /// Pages `k..k+n` of run `ri` of process `pi`: hashes and data. With
    /// `read_ahead` (the push, which goes on in address order) a read from
    /// CRIU's page server takes up to [`READ_AHEAD`] pages of the run at once
    /// and keeps the rest for the next calls: one request per 32 pages made
    /// the page server, not the link, the limit.
    async fn read(
        &mut self,
        pi: usize,
        ri: usize,
        k: u64,
        n: u64,
        read_ahead: bool,
    ) -> Result<(Vec<BlockHash>, Vec<u8>)> {
        let p = &self.layout.processes[pi];
        let run = p.runs[ri];
        let (pid, pages_id) = (p.pid, p.pages_id);
        let (hashes, mut data) = match &mut self.pages {
            Pages::Server(c) => {
                let data = match &self.ahead {
                    Some((api, ari, ak, d))
                        if (*api, *ari) == (pi, ri)
                            && k >= *ak
                            && (k + n - ak) * PAGE <= d.len() as u64 =>
                    {
                        d[((k - ak) * PAGE) as usize..((k + n - ak) * PAGE) as usize].to_vec()
                    }
                    _ => {
                        let want = match read_ahead {
                            true => READ_AHEAD.max(n).min(run.nr_pages - k),
                            false => n,
                        };
                        let mut d = Vec::with_capacity((want * PAGE) as usize);
                        c.read(pid, run.vaddr + k * PAGE, want, &mut d)
                            .await
                            .in_phase(Phase::Lazy, "reading lazy pages from CRIU's page server")?;
                        let out = d[..(n * PAGE) as usize].to_vec();
                        if want > n {
                            self.ahead = Some((pi, ri, k, d));
                        }
                        out
                    }
                };
                (data.chunks(BLOCK_SIZE).map(hash_block).collect(), data)
            }
            Pages::Images(maps) => {
                let slot = run.slot.ok_or_else(|| {
                    MigrateError::local(
                        Phase::Lazy,
                        format!(
                            "lazy run {:#x} of pid {pid} has no slot in pages-{pages_id}.img",
                            run.vaddr
                        ),
                    )
                })? + k;
                let map = maps.get(&pages_id).ok_or_else(|| {
                    MigrateError::local(Phase::Lazy, format!("pages-{pages_id}.img is not mapped"))
                })?;
                let data = &map[(slot * PAGE) as usize..((slot + n) * PAGE) as usize];
                let hashes = match self.hashes.get(&pages_id) {
                    Some(h) => h[slot as usize..(slot + n) as usize].to_vec(),
                    None => data.chunks(BLOCK_SIZE).map(hash_block).collect(),
                };
                (hashes, data.to_vec())
            }
        };
        if self.corrupt_next {
            if let Some(b) = data.first_mut() {
                *b ^= 0x5a;
                self.corrupt_next = false;
            }
        }
        Ok((hashes, data))
    }
}

/// Maps the pages images holding `layout`'s lazy runs (a full dump).
fn map_images(images: &Path, layout: &LazyLayout) -> Result<HashMap<u32, memmap2::Mmap>> {
    let mut maps = HashMap::new();
    for p in &layout.processes {
        if maps.contains_key(&p.pages_id) || p.runs.is_empty() {
            continue;
        }
        let path = images.join(format!("pages-{}.img", p.pages_id));
        let f = std::fs::File::open(&path)
            .in_phase(Phase::Lazy, &format!("opening {}", path.display()))?;
        // SAFETY: the dump is finished; nothing writes the image while mapped.
        let m = unsafe { memmap2::Mmap::map(&f) }
            .in_phase(Phase::Lazy, &format!("mapping {}", path.display()))?;
        let mut need = 0;
        for r in &p.runs {
            let slot = r.slot.ok_or_else(|| {
                MigrateError::local(
                    Phase::Lazy,
                    format!(
                        "lazy run {:#x} of pid {} has no slot in {} (a lazy dump's memory is \
                         served by CRIU's page server only)",
                        r.vaddr,
                        p.pid,
                        path.display()
                    ),
                )
            })?;
            need = need.max((slot + r.nr_pages) * PAGE);
        }
        if (m.len() as u64) < need {
            return Err(MigrateError::local(
                Phase::Lazy,
                format!(
                    "{} holds {} bytes, its pagemap needs {need}",
                    path.display(),
                    m.len()
                ),
            ));
        }
        maps.insert(p.pages_id, m);
    }
    Ok(maps)
}

/// What the lazy phase measured, source side.
#[derive(Debug, Default)]
struct Outcome {
    /// When the destination reported the container running (ms on the
    /// migration's clock), with the destination's own steps.
    restored_at_ms: f64,
    restore_steps: Vec<(String, f64)>,
    stats: LazyStats,
    pages_sent: u64,
    /// Pages named by blocks the destination holds (hybrid, lazy dump).
    pages_named: u64,
    pages_requested: u64,
    bytes: u64,
}

impl Migration<'_> {
    /// Post-copy and hybrid after the commit: serve the frozen dump's lazy
    /// pages until the destination has them all, then release the source's
    /// copy. `p` is the restore phase begun at `Commit`.
    pub async fn serve_lazy(&mut self, images: &Path, part: LazyPart, p: PhaseStart) -> Result<()> {
        self.link.phase = Phase::Lazy;
        let held = match self.opts.technique {
            // the destination holds every block sent so far, and zero pages
            Technique::Hybrid => {
                let mut k = std::mem::take(&mut self.known);
                k.insert(zero_hash());
                k
            }
            _ => HashSet::new(),
        };
        let server = self.page_server.take();
        let mut dump = Dump::open(images, part.layout, part.hashes, held, server)?;
        dump.corrupt_next = self.opts.fault == Some(Fault::CorruptPage);
        info!(
            lazy_pages = dump.pages(),
            source = self.lazy_source.as_ref().map(|s| s.0),
            "serving lazy pages from the frozen dump"
        );
        let out = self.feed_all(&mut dump).await?;
        let pages = dump.pages();
        // the destination owns the container: CRIU's dump may finish
        if let Err(e) = dump.close().await {
            warn!(error = %format!("{e:#}"), "CRIU's page server did not end its session cleanly");
        }
        self.end_lazy_dump().await;
        self.tl
            .destination_steps(out.restored_at_ms, &out.restore_steps);
        self.downtime_ms = out.restored_at_ms - self.freeze_at;
        self.tl.end_at(p, out.restored_at_ms, None);
        let lazy_pages = self.tl.begin_at("lazy pages", out.restored_at_ms);
        self.tl.end(lazy_pages, Some(out.bytes));
        self.lazy = Some(LazyResult {
            lazy_ms: out.stats.lazy_ms,
            faults: out.stats.faults,
            fault_p50_us: out.stats.fault_p50_us,
            fault_p99_us: out.stats.fault_p99_us,
            pages,
            pages_sent: out.pages_sent,
            pages_from_cache: out.stats.pages_from_cache,
            page_requests: out.pages_requested,
            bytes: out.bytes,
        });
        self.remove_source().await;
        Ok(())
    }

    /// Runs the feeder next to a frame reader (so a partly read frame is never
    /// dropped when the feeder's own wait wins).
    async fn feed_all(&mut self, dump: &mut Dump) -> Result<Outcome> {
        let started = self.tl.started();
        let progress = self.opts.progress.clone();
        let Migration {
            link, state, opts, ..
        } = self;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let reader = forward_frames(&mut link.r, tx);
        let mut feeder = Feeder {
            dump,
            w: &mut link.w,
            peer: &link.peer,
            io: opts.io_timeout,
            technique: opts.technique,
            state,
            now_ms: &move || started.elapsed().as_secs_f64() * 1000.0,
            on_restored: &move || {
                if let Some(p) = &progress {
                    p(&Progress {
                        phase: "lazy".into(),
                        round: 0,
                        bytes: 0,
                    });
                }
            },
            out: Outcome::default(),
            cursor: (0, 0, 0),
            acked: 0,
        };
        tokio::select! {
            res = feeder.run(&mut rx) => res,
            _ = reader => Err(MigrateError::local(Phase::Lazy, "the stream's reader ended")),
        }
    }

    /// Removes the source's copy once the destination owns the container.
    async fn remove_source(&mut self) {
        let p = self.tl.begin("release");
        self.remove_source_copy().await;
        self.tl.end(p, None);
        self.report("done", 0);
    }
}

type Frames = mpsc::UnboundedReceiver<Result<Frame, WireError>>;

/// Serves one lazy phase, from `Commit` until the destination acknowledges
/// the release.
struct Feeder<'a> {
    dump: &'a mut Dump,
    w: &'a mut Writer,
    peer: &'a str,
    io: Duration,
    technique: Technique,
    state: &'a mut SenderState,
    now_ms: &'a (dyn Fn() -> f64 + Sync),
    on_restored: &'a (dyn Fn() + Sync),
    out: Outcome,
    /// Push cursor: process, run, page.
    cursor: (usize, usize, u64),
    /// Pages the destination reported received.
    acked: u64,
}

impl Feeder<'_> {
    fn step(&mut self, event: SenderEvent<'_>) -> Result<()> {
        *self.state = self
            .state
            .step(self.technique, event)
            .map_err(|source| self.protocol(source))?;
        Ok(())
    }

    fn protocol(&self, source: ProtocolError) -> MigrateError {
        MigrateError::Protocol {
            phase: Phase::Lazy,
            peer: self.peer.to_string(),
            source,
        }
    }

    fn lazy_flags(&self) -> (bool, bool, bool) {
        match *self.state {
            SenderState::Lazy {
                restored,
                placed,
                sent,
            } => (restored, placed, sent),
            _ => (true, true, true),
        }
    }

    fn window_full(&self) -> bool {
        (self.out.pages_sent + self.out.pages_named).saturating_sub(self.acked) >= PUSH_WINDOW
    }

    async fn send_message(&mut self, m: &Message) -> Result<()> {
        let what = format!("take {}", m.name());
        within(Phase::Lazy, self.peer, &what, self.io, self.w.message(m)).await
    }

    async fn send_pages(&mut self, pid: u32, vaddr: u64, h: &[BlockHash], d: &[u8]) -> Result<()> {
        within(
            Phase::Lazy,
            self.peer,
            "take pages",
            self.io,
            self.w.pages(pid, vaddr, h, d),
        )
        .await
    }

    async fn run(&mut self, rx: &mut Frames) -> Result<Outcome> {
        let start_bytes = self.w.bytes();
        loop {
            let frames = self.pending_frames(rx).await?;
            for f in frames {
                self.on_frame(f).await?;
            }
            let (restored, placed, sent) = self.lazy_flags();
            if restored && placed {
                break;
            }
            if restored && !sent && !self.window_full() {
                self.push_one().await?;
                // the frame reader runs beside this future in one task: let
                // it read what the destination sent (a fault's request)
                // before the next push frame
                tokio::task::yield_now().await;
            }
        }
        self.out.bytes = self.w.bytes() - start_bytes;
        // the commit point: the destination has everything
        self.send_message(&Message::Released).await?;
        self.step(SenderEvent::SentReleased)?;
        let f = next(rx, self.io, self.peer).await?;
        let m = control(&f, self.peer)?;
        self.step(SenderEvent::Received(&m))?;
        Ok(std::mem::take(&mut self.out))
    }

    /// Whatever the destination sent; waits for something when there is
    /// nothing to push (before the restore, after the push, or with the
    /// window full).
    async fn pending_frames(&mut self, rx: &mut Frames) -> Result<Vec<Result<Frame, WireError>>> {
        let mut frames = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(f) => frames.push(f),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    return Err(MigrateError::local(
                        Phase::Lazy,
                        "the destination's stream ended during the lazy phase",
                    ))
                }
            }
        }
        let (restored, placed, sent) = self.lazy_flags();
        let can_push = restored && !placed && !sent && !self.window_full();
        if frames.is_empty() && !can_push {
            // a restore takes as long as it takes (as for cold); otherwise the
            // destination is busy placing pages and reports within `io`
            let wait = if restored {
                self.io
            } else {
                self.io.max(RESTORE_TIMEOUT)
            };
            frames.push(Ok(next(rx, wait, self.peer).await?));
        }
        Ok(frames)
    }

    async fn on_frame(&mut self, f: Result<Frame, WireError>) -> Result<()> {
        let f = f.map_err(|source| MigrateError::Wire {
            phase: Phase::Lazy,
            peer: self.peer.to_string(),
            what: "destination lost during the lazy phase".into(),
            source,
        })?;
        let m = control(&f, self.peer)?;
        if let Message::Failed { step, error } = m {
            // the destination gave up and has already stopped its restored
            // copy: the source may resume at once
            return Err(MigrateError::PeerFailed {
                phase: Phase::Lazy,
                peer: self.peer.to_string(),
                step,
                error,
            });
        }
        self.step(SenderEvent::Received(&m))?;
        match m {
            Message::PageRequest { pid, vaddr, pages } => self.answer(pid, vaddr, pages).await,
            Message::Restored {
                pid,
                restore_ms,
                steps,
                ..
            } => {
                info!(
                    pid,
                    restore_ms, "destination restored the container lazily; pushing its memory"
                );
                self.out.restored_at_ms = (self.now_ms)();
                self.out.restore_steps = steps;
                (self.on_restored)();
                Ok(())
            }
            Message::LazyProgress { pages } => {
                self.acked = self.acked.max(pages);
                Ok(())
            }
            Message::LazyDone { stats } => {
                info!(
                    lazy_ms = stats.lazy_ms,
                    faults = stats.faults,
                    "every page is in place at the destination"
                );
                self.out.stats = stats;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Answers a fault: `pages` pages from `vaddr` (within its run).
    async fn answer(&mut self, pid: u32, vaddr: u64, pages: u32) -> Result<()> {
        self.out.pages_requested += 1;
        let bad = |what: String| MigrateError::local(Phase::Lazy, what);
        let (pi, p) = self.dump.process(pid).ok_or_else(|| {
            bad(format!(
                "destination asked for pages of pid {pid}, which has no lazy memory"
            ))
        })?;
        let ri = p
            .runs
            .iter()
            .position(|r| vaddr >= r.vaddr && vaddr < r.vaddr + r.nr_pages * PAGE)
            .ok_or_else(|| {
                bad(format!(
                    "destination asked for page {vaddr:#x} of pid {pid}, which is not lazy"
                ))
            })?;
        let run = p.runs[ri];
        let first = (vaddr - run.vaddr) / PAGE;
        let n = u64::from(pages.clamp(1, MAX_ANSWER)).min(run.nr_pages - first);
        let (h, d) = self.dump.read(pi, ri, first, n, false).await?;
        let class: Vec<Option<bool>> = h.iter().map(|h| Some(self.named_held(h))).collect();
        self.send_classified(pid, run.vaddr + first * PAGE, &h, &d, &class)
            .await?;
        self.dump.mark_sent(pi, ri, first, n);
        Ok(())
    }

    /// Whether a page goes as the name of a block the destination holds.
    fn named_held(&self, h: &BlockHash) -> bool {
        self.dump.names_held() && self.dump.held.contains(h)
    }

    /// Sends the pages of `h`/`d` (from `vaddr`) by class, as contiguous
    /// runs: `Some(false)` with their data, `Some(true)` by block name only,
    /// `None` not at all.
    async fn send_classified(
        &mut self,
        pid: u32,
        vaddr: u64,
        h: &[BlockHash],
        d: &[u8],
        class: &[Option<bool>],
    ) -> Result<bool> {
        let n = class.len();
        let mut sent = false;
        let mut a = 0usize;
        while a < n {
            let Some(held) = class[a] else {
                a += 1;
                continue;
            };
            let b = (a..n).find(|&i| class[i] != Some(held)).unwrap_or(n);
            let at = vaddr + a as u64 * PAGE;
            if held {
                within(
                    Phase::Lazy,
                    self.peer,
                    "take held pages",
                    self.io,
                    self.w.pages_held(pid, at, &h[a..b]),
                )
                .await?;
                self.out.pages_named += (b - a) as u64;
            } else {
                self.send_pages(pid, at, &h[a..b], &d[a * BLOCK_SIZE..b * BLOCK_SIZE])
                    .await?;
                self.out.pages_sent += (b - a) as u64;
            }
            sent = true;
            a = b;
        }
        Ok(sent)
    }

    /// One background push frame (pages not sent yet and, for hybrid, not
    /// held by the destination); `LazySent` once the push is over.
    async fn push_one(&mut self) -> Result<()> {
        let procs = self.dump.layout.processes.len();
        let mut pushed = false;
        while self.cursor.0 < procs && !pushed {
            let (pi, ri, k) = self.cursor;
            let runs = &self.dump.layout.processes[pi].runs;
            if ri >= runs.len() {
                self.cursor = (pi + 1, 0, 0);
                continue;
            }
            let run = runs[ri];
            if k >= run.nr_pages {
                self.cursor = (pi, ri + 1, 0);
                continue;
            }
            let n = PUSH_RUN.min(run.nr_pages - k);
            pushed = self.push_range(pi, ri, k, n).await?;
            self.dump.mark_sent(pi, ri, k, n);
            self.cursor = (pi, ri, k + n);
        }
        if self.cursor.0 >= procs {
            debug!(pages = self.out.pages_sent, "push complete");
            self.send_message(&Message::LazySent {
                pages: self.out.pages_sent,
            })
            .await?;
            self.step(SenderEvent::SentLazy)?;
        }
        Ok(())
    }

    /// Pushes the pages of `k..k+n` of run `ri` of process `pi` that still
    /// need to go, as contiguous runs (pages the destination holds are
    /// named, or with a tmpfs dump left to its own cache). Returns whether
    /// any went.
    async fn push_range(&mut self, pi: usize, ri: usize, k: u64, n: u64) -> Result<bool> {
        let pid = self.dump.layout.processes[pi].pid;
        let run = self.dump.layout.processes[pi].runs[ri];
        let (h, d) = self.dump.read(pi, ri, k, n, true).await?;
        let class: Vec<Option<bool>> = (0..n)
            .map(|i| {
                let held = self.dump.held.contains(&h[i as usize]);
                match (self.dump.is_sent(pi, ri, k + i), held) {
                    (true, _) => None,
                    (false, false) => Some(false),
                    (false, true) => self.dump.names_held().then_some(true),
                }
            })
            .collect();
        self.send_classified(pid, run.vaddr + k * PAGE, &h, &d, &class)
            .await
    }
}

/// The next frame from the destination, waiting at most `wait`.
async fn next(rx: &mut Frames, wait: Duration, peer: &str) -> Result<Frame> {
    match tokio::time::timeout(wait, rx.recv()).await {
        Err(_) => Err(MigrateError::Timeout {
            phase: Phase::Lazy,
            peer: peer.to_string(),
            what: "send anything during the lazy phase".into(),
            after: wait,
        }),
        Ok(None) => Err(MigrateError::local(
            Phase::Lazy,
            "the destination's stream ended during the lazy phase",
        )),
        Ok(Some(f)) => f.map_err(|source| MigrateError::Wire {
            phase: Phase::Lazy,
            peer: peer.to_string(),
            what: "reading the destination's answer".into(),
            source,
        }),
    }
}

/// The control message of a frame from the destination.
fn control(f: &Frame, peer: &str) -> Result<Message> {
    if f.kind != FrameKind::Control {
        return Err(MigrateError::Protocol {
            phase: Phase::Lazy,
            peer: peer.to_string(),
            source: ProtocolError::Unexpected {
                state: "serving lazy pages",
                got: format!("a {:?} frame", f.kind),
            },
        });
    }
    f.message().map_err(|source| MigrateError::Wire {
        phase: Phase::Lazy,
        peer: peer.to_string(),
        what: "decoding a control message".into(),
        source,
    })
}
