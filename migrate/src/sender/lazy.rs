//! The source's side of a lazy phase: the container stays frozen, and its
//! anonymous memory is served from the frozen dump (the pages images, mapped
//! from tmpfs; never CRIU's page server): pages a restored process faulted on
//! first, then everything else in a background push. The source lets go only
//! once the destination reports every page in place.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use mose_wire::{
    blocks::hash_block,
    frame::{Frame, FrameKind},
    BlockHash, LazyStats, Message, WireError, BLOCK_SIZE,
};
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::{Reader, Writer};
use crate::lazy::{LazyLayout, LazyProcess};

const PAGE: u64 = BLOCK_SIZE as u64;
/// Pages per background push frame.
const PUSH_RUN: u64 = 32;
/// Pages the background push may be ahead of what the destination reported
/// received (1 MiB: a fault's answer waits behind at most this much, ~40 ms
/// at 200 Mbit/s, while a fast link stays full).
const PUSH_WINDOW: u64 = 256;

/// The frozen dump's lazy pages, ready to serve.
pub struct Dump {
    layout: LazyLayout,
    /// pages_id → the mapped `pages-<id>.img`.
    maps: HashMap<u32, memmap2::Mmap>,
    /// pages_id → hash of every slot (hybrid: computed at the freeze).
    hashes: HashMap<u32, Vec<BlockHash>>,
    /// Blocks the destination holds from pre-copy rounds (hybrid): not pushed.
    held: HashSet<BlockHash>,
    /// Per process, per run: pages already sent.
    sent: Vec<Vec<Vec<bool>>>,
    /// Test hook: flip a byte of the next page sent, after hashing it.
    pub corrupt_next: bool,
}

impl Dump {
    /// Maps the pages images of the checkpoint in `images`.
    pub fn open(
        images: &Path,
        layout: LazyLayout,
        hashes: HashMap<u32, Vec<BlockHash>>,
        held: HashSet<BlockHash>,
    ) -> Result<Self> {
        let mut maps = HashMap::new();
        for p in &layout.processes {
            if maps.contains_key(&p.pages_id) || p.runs.is_empty() {
                continue;
            }
            let path = images.join(format!("pages-{}.img", p.pages_id));
            let f = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: the dump is finished; nothing writes the image while mapped.
            let m = unsafe { memmap2::Mmap::map(&f) }
                .with_context(|| format!("mapping {}", path.display()))?;
            let need = p
                .runs
                .iter()
                .map(|r| (r.slot + r.nr_pages) * PAGE)
                .max()
                .unwrap_or(0);
            if (m.len() as u64) < need {
                bail!(
                    "{} holds {} bytes, its pagemap needs {need}",
                    path.display(),
                    m.len()
                );
            }
            maps.insert(p.pages_id, m);
        }
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
            maps,
            hashes,
            held,
            sent,
            corrupt_next: false,
        })
    }

    pub fn pages(&self) -> u64 {
        self.layout.pages()
    }

    fn process(&self, pid: u32) -> Option<(usize, &LazyProcess)> {
        self.layout
            .processes
            .iter()
            .enumerate()
            .find(|(_, p)| p.pid == pid)
    }

    /// Pages `k..k+n` of run `ri` of process `pi`: hashes and data.
    fn read(&mut self, pi: usize, ri: usize, k: u64, n: u64) -> Result<(Vec<BlockHash>, Vec<u8>)> {
        let p = &self.layout.processes[pi];
        let run = &p.runs[ri];
        let map = self
            .maps
            .get(&p.pages_id)
            .ok_or_else(|| anyhow!("pages-{}.img is not mapped", p.pages_id))?;
        let from = ((run.slot + k) * PAGE) as usize;
        let data = &map[from..from + (n * PAGE) as usize];
        let hashes = match self.hashes.get(&p.pages_id) {
            Some(h) => h[(run.slot + k) as usize..(run.slot + k + n) as usize].to_vec(),
            None => data.chunks(BLOCK_SIZE).map(hash_block).collect(),
        };
        let mut data = data.to_vec();
        if self.corrupt_next {
            if let Some(b) = data.first_mut() {
                *b ^= 0x5a;
                self.corrupt_next = false;
            }
        }
        Ok((hashes, data))
    }
}

/// The destination gave up and has already stopped its restored copy: the
/// source may resume at once.
#[derive(Debug)]
pub struct DestinationStopped(pub String);

impl std::fmt::Display for DestinationStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DestinationStopped {}

/// What the lazy phase measured, source side.
#[derive(Debug, Default)]
pub struct Outcome {
    /// When the destination reported the container running (ms on the
    /// migration's clock), with the destination's own steps.
    pub restored_at_ms: f64,
    pub restore_steps: Vec<(String, f64)>,
    pub stats: LazyStats,
    pub pages_sent: u64,
    pub pages_requested: u64,
    pub bytes: u64,
}

/// Serves the lazy phase from `Commit` until the destination acknowledges the
/// release. `now_ms` reads the migration's clock.
pub async fn serve(
    dump: &mut Dump,
    r: Reader,
    w: &mut Writer,
    io_timeout: Duration,
    now_ms: &(dyn Fn() -> f64 + Sync),
    on_restored: &(dyn Fn() + Sync),
) -> Result<Outcome> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<Frame, WireError>>();
    let mut r = r;
    let reader = tokio::spawn(async move {
        loop {
            let f = r.next().await;
            let end = f.is_err();
            if tx.send(f).is_err() || end {
                break;
            }
        }
    });
    let res = feed(dump, &mut rx, w, io_timeout, now_ms, on_restored).await;
    reader.abort();
    res
}

async fn send(
    w: &mut Writer,
    io: Duration,
    pid: u32,
    vaddr: u64,
    h: &[BlockHash],
    d: &[u8],
) -> Result<()> {
    tokio::time::timeout(io, w.pages(pid, vaddr, h, d))
        .await
        .map_err(|_| anyhow!("destination did not take pages for {io:?} (link down?)"))?
        .map_err(|e| anyhow!("sending pages: {e}"))
}

async fn feed(
    dump: &mut Dump,
    rx: &mut mpsc::UnboundedReceiver<Result<Frame, WireError>>,
    w: &mut Writer,
    io: Duration,
    now_ms: &(dyn Fn() -> f64 + Sync),
    on_restored: &(dyn Fn() + Sync),
) -> Result<Outcome> {
    let start_bytes = w.bytes();
    let mut out = Outcome::default();
    let mut restored = false;
    let mut done = false;
    let mut lazy_sent = false;
    // push cursor: process, run, page
    let (mut pi, mut ri, mut k) = (0usize, 0usize, 0u64);
    // pages put on the wire (answers and push) and reported received
    let mut acked = 0u64;
    loop {
        let window_full = out.pages_sent.saturating_sub(acked) >= PUSH_WINDOW;
        // answer whatever the destination asked, before pushing more
        let mut frames = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(f) => frames.push(f),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    bail!("the destination's stream ended during the lazy phase")
                }
            }
        }
        if frames.is_empty() && (!restored || lazy_sent || window_full) && !done {
            // a restore takes as long as it takes (as for cold); otherwise the
            // destination is busy placing pages and reports within `io`
            let wait = if restored {
                io
            } else {
                io.max(Duration::from_secs(120))
            };
            let f = tokio::time::timeout(wait, rx.recv())
                .await
                .map_err(|_| {
                    anyhow!("no word from the destination for {wait:?} during the lazy phase")
                })?
                .ok_or_else(|| anyhow!("the destination's stream ended during the lazy phase"))?;
            frames.push(f);
        }
        for f in frames {
            let f = f.map_err(|e| anyhow!("destination lost during the lazy phase: {e}"))?;
            if f.kind != FrameKind::Control {
                bail!("unexpected {:?} frame from the destination", f.kind);
            }
            match f.message()? {
                Message::PageRequest { pid, vaddr, pages } => {
                    out.pages_requested += 1;
                    let (pi, p) = dump.process(pid).ok_or_else(|| {
                        anyhow!(
                            "destination asked for pages of pid {pid}, which has no lazy memory"
                        )
                    })?;
                    let Some(ri) = p
                        .runs
                        .iter()
                        .position(|r| vaddr >= r.vaddr && vaddr < r.vaddr + r.nr_pages * PAGE)
                    else {
                        bail!(
                            "destination asked for page {vaddr:#x} of pid {pid}, which is not lazy"
                        );
                    };
                    let run = p.runs[ri];
                    let first = (vaddr - run.vaddr) / PAGE;
                    let n = u64::from(pages.clamp(1, 256)).min(run.nr_pages - first);
                    let (h, d) = dump.read(pi, ri, first, n)?;
                    send(w, io, pid, run.vaddr + first * PAGE, &h, &d).await?;
                    dump.sent[pi][ri][first as usize..(first + n) as usize]
                        .iter_mut()
                        .for_each(|s| *s = true);
                    out.pages_sent += n;
                }
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
                    restored = true;
                    out.restored_at_ms = now_ms();
                    out.restore_steps = steps;
                    on_restored();
                }
                Message::LazyProgress { pages } => acked = acked.max(pages),
                Message::LazyDone { stats } => {
                    info!(
                        lazy_ms = stats.lazy_ms,
                        faults = stats.faults,
                        "every page is in place at the destination"
                    );
                    out.stats = stats;
                    done = true;
                }
                Message::Failed { step, error } => {
                    return Err(DestinationStopped(format!(
                        "destination failed at {step}: {error}"
                    ))
                    .into())
                }
                other => bail!("destination sent {other:?} during the lazy phase"),
            }
        }
        if done && restored {
            break;
        }
        if !restored || lazy_sent || out.pages_sent.saturating_sub(acked) >= PUSH_WINDOW {
            continue;
        }
        // one background push frame
        let procs = dump.layout.processes.len();
        let mut pushed = false;
        while pi < procs && !pushed {
            let runs = dump.layout.processes[pi].runs.len();
            if ri >= runs {
                (pi, ri, k) = (pi + 1, 0, 0);
                continue;
            }
            let run = dump.layout.processes[pi].runs[ri];
            if k >= run.nr_pages {
                (ri, k) = (ri + 1, 0);
                continue;
            }
            // skip what was sent already, and (hybrid) what the destination holds
            let pid = dump.layout.processes[pi].pid;
            let n = PUSH_RUN.min(run.nr_pages - k);
            let (h, d) = dump.read(pi, ri, k, n)?;
            let mut a = 0u64;
            while a < n {
                let keep = |i: u64| {
                    !dump.sent[pi][ri][(k + i) as usize] && !dump.held.contains(&h[i as usize])
                };
                if !keep(a) {
                    a += 1;
                    continue;
                }
                let mut b = a;
                while b < n && keep(b) {
                    b += 1;
                }
                let (ha, da) = (
                    &h[a as usize..b as usize],
                    &d[(a * PAGE) as usize..(b * PAGE) as usize],
                );
                send(w, io, pid, run.vaddr + (k + a) * PAGE, ha, da).await?;
                out.pages_sent += b - a;
                pushed = true;
                a = b;
            }
            dump.sent[pi][ri][k as usize..(k + n) as usize]
                .iter_mut()
                .for_each(|s| *s = true);
            k += n;
        }
        if pi >= procs && !lazy_sent {
            debug!(pages = out.pages_sent, "push complete");
            tokio::time::timeout(
                io,
                w.message(&Message::LazySent {
                    pages: out.pages_sent,
                }),
            )
            .await
            .map_err(|_| anyhow!("destination did not take data for {io:?}"))?
            .map_err(|e| anyhow!("sending LazySent: {e}"))?;
            lazy_sent = true;
        }
    }
    out.bytes = w.bytes() - start_bytes;
    // the commit point: the destination has everything
    tokio::time::timeout(io, w.message(&Message::Released))
        .await
        .map_err(|_| anyhow!("destination did not take Released"))?
        .map_err(|e| anyhow!("sending Released: {e}"))?;
    let f = tokio::time::timeout(io, rx.recv())
        .await
        .map_err(|_| anyhow!("no Ack from the destination within {io:?}"))?
        .ok_or_else(|| anyhow!("the destination's stream ended before its Ack"))?
        .map_err(|e| anyhow!("reading the destination's Ack: {e}"))?;
    match f.message()? {
        Message::Ack => Ok(out),
        other => bail!("destination answered {other:?} to Released"),
    }
}
