//! The final transfer, while the container is frozen: the page blocks the
//! destination lacks (post-copy and hybrid: only the pages CRIU restores
//! eagerly), the other CRIU image files, the page manifests and the rootfs
//! changes.

use std::{collections::HashMap, path::Path};

use mose_wire::{
    blocks::{hash_block, hash_blocks, zero_hash},
    BlockHash, Message, Technique, BLOCK_SIZE, LAZY_SLOT,
};

use super::{migration::Migration, options::Fault};
use crate::{
    error::{InPhase, MigrateError, Phase, Result},
    lazy::LazyLayout,
    result::Round,
    rootfs,
};

/// Page blocks per Blocks frame.
const BLOCKS_PER_FRAME: usize = 256;

/// What the lazy phase needs from the final transfer.
pub struct LazyPart {
    pub layout: LazyLayout,
    /// Hybrid: pages_id → the hash of every slot of `pages-<id>.img`.
    pub hashes: HashMap<u32, Vec<BlockHash>>,
}

/// Counts of the final round.
#[derive(Default)]
struct Sent {
    new_blocks: u64,
    pages_present: u64,
}

impl Migration<'_> {
    /// Sends the dump in `images`; returns the lazy part for post-copy and
    /// hybrid. `hinted`: a layout hint was sent during the rounds.
    pub async fn final_transfer(
        &mut self,
        images: &Path,
        hinted: bool,
    ) -> Result<Option<LazyPart>> {
        self.link.phase = Phase::Transfer;
        let p = self.tl.begin("transfer");
        let before = self.link.w.bytes();
        if self.opts.fault == Some(Fault::CorruptChunk) {
            self.link.w.inject_corruption();
        }
        let final_round = self.open_final_round().await?;
        let mut lazy = match self.opts.technique.is_lazy() {
            true => Some(LazyPart {
                layout: LazyLayout::read(images)
                    .in_phase(Phase::Transfer, "reading the pagemaps")?,
                hashes: HashMap::new(),
            }),
            false => None,
        };
        let mut sent = Sent {
            new_blocks: self.streamed_blocks,
            ..Sent::default()
        };
        let mut files = Vec::new();
        let mut manifests = Vec::new();
        let dir = std::fs::read_dir(images)
            .in_phase(Phase::Transfer, &format!("reading {}", images.display()))?;
        for entry in dir {
            let entry = entry.in_phase(Phase::Transfer, "listing the dump")?;
            let name = entry.file_name().to_string_lossy().to_string();
            let map = map_file(&entry.path())?;
            if is_pages_image(&name, &map) {
                let hashes = self
                    .send_pages(&name, &map, lazy.as_mut(), hinted, &mut sent)
                    .await?;
                manifests.push((name, hashes));
            } else {
                files.push((name, map.to_vec()));
            }
        }
        self.link
            .send(&Message::RoundEnd {
                round: final_round,
                blocks: sent.new_blocks,
            })
            .await?;
        if self.opts.fault == Some(Fault::Truncate) {
            return Err(MigrateError::Injected {
                phase: Phase::Transfer,
                what: "stream truncated during the final transfer",
            });
        }
        for (name, data) in &files {
            self.link.file(name, data).await?;
        }
        for (name, hashes) in &manifests {
            self.link.manifest(name, hashes).await?;
        }
        self.send_rootfs().await?;
        let bytes = self.link.w.bytes() - before;
        let d = self.tl.end(p, Some(bytes));
        self.rounds.push(Round {
            round: final_round,
            final_round: true,
            pages_present: sent.pages_present,
            new_blocks: sent.new_blocks,
            bytes,
            duration_ms: d,
            freeze_ms: d,
        });
        self.report("restore", final_round);
        Ok(lazy)
    }

    /// One `pages-N.img`: its blocks the destination lacks (lazy pages stay
    /// here); returns its manifest.
    async fn send_pages(
        &mut self,
        name: &str,
        data: &[u8],
        lazy: Option<&mut LazyPart>,
        hinted: bool,
        sent: &mut Sent,
    ) -> Result<Vec<BlockHash>> {
        let technique = self.opts.technique;
        let lazy_slots = lazy
            .as_ref()
            .and_then(|l| l.layout.lazy_slots.get(name))
            .cloned();
        let is_lazy = |i: usize| {
            lazy_slots
                .as_ref()
                .and_then(|l| l.get(i))
                .copied()
                .unwrap_or(false)
        };
        let hashes: Vec<BlockHash> = match (&lazy_slots, technique) {
            // post-copy: the content of lazy pages is not needed now
            (Some(_), Technique::Postcopy) => data
                .chunks(BLOCK_SIZE)
                .enumerate()
                .map(|(i, p)| if is_lazy(i) { LAZY_SLOT } else { hash_block(p) })
                .collect(),
            _ => hash_blocks(data),
        };
        if let (Some(lazy), Technique::Hybrid, Some(id)) = (lazy, technique, pages_id(name)) {
            lazy.hashes.insert(id, hashes.clone());
        }
        if !hinted && !technique.is_lazy() {
            // no live rounds laid the image out: announce its exact layout
            // first, so the destination writes each block in place as it
            // arrives instead of assembling the image after the transfer
            self.link.manifest(&format!("hint:{name}"), &hashes).await?;
        }
        let zero = zero_hash();
        let mut batch: Vec<(BlockHash, &[u8])> = Vec::new();
        for (i, (page, &h)) in data.chunks(BLOCK_SIZE).zip(hashes.iter()).enumerate() {
            sent.pages_present += 1;
            if is_lazy(i) || h == zero || !self.known.insert(h) {
                continue;
            }
            sent.new_blocks += 1;
            batch.push((h, page));
            if batch.len() >= BLOCKS_PER_FRAME {
                self.link.blocks(&batch).await?;
                batch.clear();
            }
        }
        if !batch.is_empty() {
            self.link.blocks(&batch).await?;
        }
        Ok(hashes)
    }

    /// The overlay upper dir of the container's snapshot, as a tar.
    async fn send_rootfs(&mut self) -> Result<()> {
        let mounts = self
            .cd
            .snapshot_mounts(&self.container.snapshotter, &self.container.snapshot_key)
            .await
            .in_phase(Phase::Transfer, "reading the container's snapshot mounts")?;
        let upper =
            rootfs::upperdir(&mounts).in_phase(Phase::Transfer, "finding the rootfs changes")?;
        let tar = rootfs::pack(&upper).in_phase(Phase::Transfer, "packing the rootfs changes")?;
        self.link.file("rootfs.tar", &tar).await
    }
}

/// `pages-<id>.img` → id.
fn pages_id(name: &str) -> Option<u32> {
    name.strip_prefix("pages-")?
        .strip_suffix(".img")?
        .parse()
        .ok()
}

fn is_pages_image(name: &str, data: &[u8]) -> bool {
    pages_id(name).is_some() && data.len().is_multiple_of(BLOCK_SIZE)
}

/// Maps an image file: it is already in memory (tmpfs), so map, do not copy.
fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path)
        .in_phase(Phase::Transfer, &format!("opening {}", path.display()))?;
    // SAFETY: the image files are this migration's own (the dump is finished)
    // and nothing modifies them while they are mapped.
    unsafe { memmap2::Mmap::map(&file) }
        .in_phase(Phase::Transfer, &format!("mapping {}", path.display()))
}
