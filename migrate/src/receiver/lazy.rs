//! The destination's side of a lazy phase (post-copy and hybrid): restore
//! with anonymous memory missing, then place pages as they come: asked for
//! when a process faults, pushed in the background by the source, or, for
//! hybrid, taken from the blocks pre-copy rounds already brought.
//!
//! Failure rules: a corrupt page, a handler error or a source that goes
//! silent stops the restored container (killed before the handler lets go of
//! its userfaultfds, so no process ever runs on a page it did not get) and the
//! migration is reported failed. The source's frozen copy is then the only
//! one, which the source resumes.

use std::{collections::HashMap, path::PathBuf, time::Instant};

use anyhow::{anyhow, bail, Result};
use mose_wire::{
    blocks::zero_hash,
    frame::{Frame, FrameKind, FrameReader, FrameWriter},
    BlockHash, ContainerIdentity, LazyStats, Message, Technique, WireError, BLOCK_SIZE, LAZY_SLOT,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};

use super::{assemble, destination_spec, recreate, EndpointConfig, Incoming};
use crate::{
    containerd::Containerd,
    lazy::{Delivery, Handler, LazyLayout, Origin, Report},
};

const PAGE: u64 = BLOCK_SIZE as u64;
/// Pages sent around a faulting one: neighbours are likely next.
pub const FAULT_RUN: u32 = 16;
/// The source is told what arrived every this many lazy pages (its push
/// window is larger).
const PROGRESS_EVERY: u64 = 64;
/// Cached pages handed to the handler per turn of the session's loop.
const PREFILL_BATCH: usize = 1024;

/// Restores lazily and serves the lazy phase to its end (the source's release).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run<R, W>(
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
    let t = Instant::now();
    let mut steps = Vec::new();
    let (images, rootfs_tar, layout) = match assemble(inc, true) {
        Ok(a) => a,
        Err(e) => return fail(w, "assemble image", e).await,
    };
    let layout = layout.ok_or_else(|| anyhow!("no lazy layout"))?;
    // hybrid: the content each lazy page had at the freeze, when the blocks
    // pre-copy brought hold it
    let cached = if technique == Technique::Hybrid {
        cached_pages(&layout, inc)
    } else {
        HashMap::new()
    };
    steps.push(("assemble image".into(), t.elapsed().as_secs_f64() * 1000.0));
    info!(
        migration,
        lazy_pages = layout.pages(),
        cached = cached.len(),
        "restoring lazily"
    );
    let socket = socket_path(cfg, migration);
    let (rep_tx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let handler = match Handler::start(&socket, layout.processes.clone(), rep_tx) {
        Ok(h) => h,
        Err(e) => return fail(w, "lazy-page handler", e).await,
    };

    // frames are read by a future of their own, so that a partly read frame
    // is never dropped when another event wins a select
    let (ftx, mut frames) = tokio::sync::mpsc::unbounded_channel::<Result<Frame, WireError>>();
    let reader = async {
        loop {
            let f = r.next().await;
            let end = f.is_err();
            if ftx.send(f).is_err() || end {
                break;
            }
        }
        std::future::pending::<()>().await;
    };
    let mut phase = Phase {
        cfg,
        cd,
        container,
        inc,
        handler: Some(handler),
        cached,
        restore_started: t,
        restored: None,
        stats: None,
    };
    let main = phase.serve(
        w,
        &mut reports,
        &mut frames,
        &images,
        rootfs_tar,
        &socket,
        steps,
    );
    let res = tokio::select! {
        res = main => res,
        _ = reader => Err(anyhow!("migration stream reader ended")),
    };
    if let Err(e) = &res {
        // the restored copy must not run on: stop it before the handler
        // closes its descriptors, and only then tell the source, which
        // resumes its frozen copy on hearing it
        warn!(container = %container.id, error = %format!("{e:#}"), "lazy phase failed; stopping the restored container");
        // its processes may be mid-restore, waiting for a page: containerd
        // cannot stop a task that is still starting, so kill them directly
        let spec = destination_spec(cfg, container);
        if let Some(cg) = spec.pointer("/linux/cgroupsPath").and_then(|v| v.as_str()) {
            let cg = cg.to_string();
            let killed = tokio::task::spawn_blocking(move || kill_cgroup(&cg))
                .await
                .unwrap_or(0);
            info!(killed, "stopped the restored processes");
        }
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            cd.remove_container(&container.id),
        )
        .await;
        if let Some(h) = phase.handler.take() {
            tokio::task::spawn_blocking(move || h.stop()).await.ok();
        }
        let _ = w
            .message(&Message::Failed {
                step: "lazy phase".into(),
                error: format!("{e:#}"),
            })
            .await;
    }
    if let Some(h) = phase.handler.take() {
        tokio::task::spawn_blocking(move || h.stop()).await.ok();
    }
    // whichever step noticed first (a write to a vanished source included),
    // the record says what happened to the restored copy
    res.map_err(|e| e.context("lazy phase failed; the restored container was stopped"))
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
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
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
            if nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok()
            {
                killed += 1;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn socket_path(cfg: &EndpointConfig, migration: &str) -> PathBuf {
    // unix socket paths are short: name it by a hash
    let h =
        xxhash_rust::xxh3::xxh3_64(format!("{}/{migration}", cfg.work_root.display()).as_bytes());
    cfg.work_root.join(format!(".mose-lazy-{h:016x}.sock"))
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
        for run in &p.runs {
            for k in 0..run.nr_pages {
                if let Some(h) = hashes.get((run.slot + k) as usize) {
                    if *h != LAZY_SLOT && (*h == zero || inc.blocks.contains(*h)) {
                        out.insert((p.pid, run.vaddr + k * PAGE), *h);
                    }
                }
            }
        }
    }
    out
}

async fn fail<W: AsyncWrite + Unpin>(
    w: &mut FrameWriter<W>,
    step: &str,
    e: anyhow::Error,
) -> Result<()> {
    let _ = w
        .message(&Message::Failed {
            step: step.into(),
            error: format!("{e:#}"),
        })
        .await;
    Err(e.context(format!("lazy restore: {step}")))
}

struct Phase<'a> {
    cfg: &'a EndpointConfig,
    cd: &'a Containerd,
    container: &'a ContainerIdentity,
    inc: &'a mut Incoming,
    handler: Option<Handler>,
    cached: HashMap<(u32, u64), BlockHash>,
    restore_started: Instant,
    restored: Option<u32>,
    stats: Option<LazyStats>,
}

impl Phase<'_> {
    fn handler(&self) -> Result<&Handler> {
        self.handler
            .as_ref()
            .ok_or_else(|| anyhow!("the lazy-page handler is gone"))
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
                && j + 1 - i < 64
            {
                j += 1;
            }
            let mut data = Vec::with_capacity((j - i + 1) * BLOCK_SIZE);
            let mut zero_pages = 0;
            for key in &keys[i..=j] {
                let h = self
                    .cached
                    .remove(key)
                    .ok_or_else(|| anyhow!("cache lost page {:#x} of pid {}", key.1, key.0))?;
                if h == zero_hash() {
                    zero_pages += 1;
                }
                let b = self
                    .inc
                    .blocks
                    .block(h)
                    .ok_or_else(|| anyhow!("cached block {h:032x} vanished"))?;
                data.extend_from_slice(b);
            }
            let d = Delivery {
                pid,
                vaddr: start,
                data,
                origin: Origin::Cache,
                zero_pages,
            };
            if urgent {
                self.handler()?.deliver_urgent(d)?;
            } else {
                self.handler()?.deliver(d)?;
            }
            i = j + 1;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn serve<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut FrameWriter<W>,
        reports: &mut tokio::sync::mpsc::UnboundedReceiver<Report>,
        frames: &mut tokio::sync::mpsc::UnboundedReceiver<Result<Frame, WireError>>,
        images: &std::path::Path,
        rootfs_tar: Option<PathBuf>,
        socket: &std::path::Path,
        steps: Vec<(String, f64)>,
    ) -> Result<()> {
        let io = self.cfg.io_timeout;
        let (cfg, cd, container) = (self.cfg, self.cd, self.container);
        let restore = async move {
            let mut steps = steps;
            let r = recreate(
                cfg,
                cd,
                container,
                images,
                rootfs_tar,
                Some(socket),
                &mut steps,
            )
            .await;
            (r, steps)
        };
        tokio::pin!(restore);
        let mut restoring = true;
        let mut last_frame = Instant::now();
        let mut released = false;
        // hybrid: cached pages still to place (popped from the end), a
        // batch per turn so that faults and frames are served in between
        let mut prefill: Vec<(u32, u64)> = Vec::new();
        // answers to PageRequests not in yet (they go ahead of the push)
        let mut asked: std::collections::HashSet<(u32, u64)> = Default::default();
        // lazy pages received, and how many the source was last told about
        let (mut received, mut reported) = (0u64, 0u64);
        loop {
            // a restore takes as long as it takes (as for cold)
            let limit = if restoring {
                io.max(std::time::Duration::from_secs(120))
            } else {
                io
            };
            let silent = limit.saturating_sub(last_frame.elapsed());
            tokio::select! {
                (res, steps) = &mut restore, if restoring => {
                    restoring = false;
                    match res {
                        Ok(pid) => {
                            self.restored = Some(pid);
                            let restore_ms = self.restore_started.elapsed().as_secs_f64() * 1000.0;
                            info!(pid, restore_ms, "restored lazily; the container runs");
                            w.message(&Message::Restored { pid, restore_ms, prepare_ms: 0.0, steps: steps.clone() }).await?;
                        }
                        Err(e) => bail!("lazy restore failed: {e:#}"),
                    }
                }
                // once every page is in place the handler is gone
                rep = reports.recv(), if self.stats.is_none() => match rep {
                    Some(Report::Request { pid, vaddr, pages }) => {
                        if self.cached.contains_key(&(pid, vaddr)) {
                            let mut keys = vec![(pid, vaddr)];
                            self.deliver_cached(&mut keys, true)?;
                        } else {
                            asked.insert((pid, vaddr));
                            w.message(&Message::PageRequest { pid, vaddr, pages: pages.max(FAULT_RUN) }).await?;
                        }
                    }
                    Some(Report::RestoreFinished) => {
                        prefill = self.cached.keys().copied().collect();
                        prefill.sort_unstable_by(|a, b| b.cmp(a));
                        if !prefill.is_empty() {
                            info!(pages = prefill.len(), "placing the pages pre-copy already brought");
                        }
                    }
                    Some(Report::Done(stats)) => {
                        // every page is in place: the descriptors may close now
                        // (a fork or mremap would otherwise wait for a handler
                        // that no longer reads its events)
                        if let Some(h) = self.handler.take() {
                            tokio::task::spawn_blocking(move || h.stop()).await.ok();
                        }
                        w.message(&Message::LazyDone { stats: stats.clone() }).await?;
                        self.stats = Some(stats);
                    }
                    Some(Report::Failed(msg)) => bail!("lazy-page handler: {msg}"),
                    None => bail!("the lazy-page handler stopped"),
                },
                f = frames.recv() => {
                    last_frame = Instant::now();
                    let f = match f {
                        Some(Ok(f)) => f,
                        Some(Err(e @ (WireError::Checksum { .. } | WireError::Malformed(_)))) => {
                            bail!("corrupt data from the source during the lazy phase ({e}); \
                                no page is placed unverified: the restored container is stopped")
                        }
                        Some(Err(e)) => bail!("the source was lost during the lazy phase ({e}); \
                            the restored container cannot run without its memory and is stopped"),
                        None => bail!("the source's stream ended during the lazy phase"),
                    };
                    match f.kind {
                        // every page is in place already: what was in flight is moot
                        FrameKind::Pages if self.stats.is_some() => {}
                        FrameKind::Pages => {
                            let run = f.pages().map_err(|e| anyhow!("{e}; the page is not placed: \
                                the restored container is stopped"))?;
                            received += run.hashes.len() as u64;
                            if received - reported >= PROGRESS_EVERY {
                                w.message(&Message::LazyProgress { pages: received }).await?;
                                reported = received;
                            }
                            let zero = zero_hash();
                            let zero_pages = run.hashes.iter().filter(|h| **h == zero).count() as u64;
                            for k in 0..run.hashes.len() as u64 {
                                self.cached.remove(&(run.pid, run.vaddr + k * PAGE));
                            }
                            let asked = asked.remove(&(run.pid, run.vaddr));
                            let d = Delivery {
                                pid: run.pid,
                                vaddr: run.vaddr,
                                data: run.data,
                                origin: Origin::Source,
                                zero_pages,
                            };
                            if asked {
                                self.handler()?.deliver_urgent(d)?;
                            } else {
                                self.handler()?.deliver(d)?;
                            }
                        }
                        FrameKind::Control => match f.message()? {
                            Message::LazySent { pages } => info!(pages, "the source sent every lazy page"),
                            Message::Released => {
                                if self.stats.is_none() {
                                    bail!("the source let go before every page was in place");
                                }
                                w.message(&Message::Ack).await?;
                                released = true;
                            }
                            Message::Abort { reason } => bail!("source aborted: {reason}"),
                            other => bail!("unexpected {other:?} during the lazy phase"),
                        },
                        other => bail!("unexpected {other:?} frame during the lazy phase"),
                    }
                }
                _ = std::future::ready(()), if !prefill.is_empty() && self.handler.is_some() => {
                    let n = prefill.len().saturating_sub(PREFILL_BATCH);
                    let mut keys = prefill.split_off(n);
                    keys.retain(|k| self.cached.contains_key(k));
                    self.deliver_cached(&mut keys, false)?;
                    continue;
                }
                _ = tokio::time::sleep(silent) => {
                    if self.stats.is_some() && self.restored.is_some() {
                        bail!("the source did not confirm the hand-over");
                    }
                    bail!("the source sent nothing for {io:?} during the lazy phase; \
                        the restored container cannot run without its memory and is stopped");
                }
            }
            if released {
                info!(container = %self.container.id, "post-copy complete; the container runs here");
                return Ok(());
            }
        }
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
        let mut blocks = mose_wire::BlockStore::new();
        blocks.insert(ha, &a).unwrap();
        let inc = Incoming {
            dir: dir.path().into(),
            blocks,
            manifests: vec![("pages-1.img".into(), vec![ha, ha, hb, zero_hash()])],
            speculative: HashMap::new(),
            pending: HashMap::new(),
            spec_files: HashMap::new(),
            files: HashMap::new(),
            bytes: 0,
        };
        let got = cached_pages(&layout, &inc);
        // slot 1 (held), slot 2 (not held), slot 3 (zero: always held)
        assert_eq!(got.len(), 2);
        assert_eq!(got[&(5, 0x10000)], ha);
        assert_eq!(got[&(5, 0x12000)], zero_hash());
    }
}
