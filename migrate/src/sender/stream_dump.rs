//! Cold: the dump streams while CRIU writes it. The final round opens
//! before the dump, and every page block CRIU has written into a
//! `pages-<id>.img` so far goes to the destination while the dump still runs,
//! so the link is busy from the freeze on instead of idle until the dump
//! ends. The final transfer then sends only what is left ([`Migration::known`]
//! holds what went).
//!
//! A block is read only below the file's size: the kernel grows a tmpfs
//! file's size after the bytes below it are copied in, so what is read is
//! what CRIU wrote. Even a block read early and wrong could do no harm: a
//! block travels with the hash of its content, the destination verifies it,
//! and only the final manifest (hashed after the dump) places blocks.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::FileExt,
    path::Path,
    time::Duration,
};

use mose_wire::{
    blocks::{hash_block, zero_hash},
    BlockHash, Message, BLOCK_SIZE,
};

use super::migration::{Migration, SourceLink};
use crate::error::{InPhase, Phase, Result};

/// How often the dump's pages images are looked at while it runs.
const POLL: Duration = Duration::from_millis(5);
/// Blocks read and sent at a time (one `Blocks` frame).
const BATCH: usize = 256;

/// How far each growing pages image has been read.
#[derive(Default)]
struct Tail {
    read: HashMap<String, u64>,
}

impl Tail {
    /// The next run of at most [`BATCH`] blocks written since the last call,
    /// as `(file name, data)`, from the first pages image that grew.
    fn next_run(&mut self, images: &Path) -> std::io::Result<Option<(String, Vec<u8>)>> {
        for entry in std::fs::read_dir(images)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            if !(name.starts_with("pages-") && name.ends_with(".img")) {
                continue;
            }
            let size = entry.metadata()?.len() / BLOCK_SIZE as u64 * BLOCK_SIZE as u64;
            let done = self.read.get(&name).copied().unwrap_or(0);
            if size <= done {
                continue;
            }
            let len = (size - done).min((BATCH * BLOCK_SIZE) as u64) as usize;
            let mut data = vec![0u8; len];
            std::fs::File::open(entry.path())?.read_exact_at(&mut data, done)?;
            self.read.insert(name.clone(), done + len as u64);
            return Ok(Some((name, data)));
        }
        Ok(None)
    }
}

impl Migration<'_> {
    /// Dumps into `images` (tmpfs) through the shim; for cold, streams the
    /// pages CRIU writes meanwhile (the final round is then open).
    pub async fn dump_to_tmpfs(&mut self, images: &Path, crwork: &Path) -> Result<()> {
        let (moves, keeps) = (self.moves_address(), self.keeps_connections());
        let what = "dumping the container (CRIU, through its shim)";
        if self.opts.technique != mose_wire::Technique::Cold {
            return self
                .cd
                .shim_checkpoint(&self.opts.container, images, crwork, moves, keeps, None)
                .await
                .in_phase(Phase::FreezeDump, what);
        }
        self.open_final_round().await?;
        if self.opts.fault == Some(super::options::Fault::CorruptChunk) {
            // the first block that streams, if any does before the dump
            // ends (else the final transfer's first): the rollback test
            self.link.w.inject_corruption();
        }
        let opts = self.opts;
        let dump = self
            .cd
            .shim_checkpoint(&opts.container, images, crwork, moves, keeps, None);
        tokio::pin!(dump);
        let mut tail = Tail::default();
        let mut streamed = 0u64;
        loop {
            // the dump's end is looked for before each run: from then on the
            // final transfer sends the rest, with its exact layout first (the
            // destination lays out what it holds and writes each later block
            // in place as it arrives)
            let next = match tail.next_run(images) {
                Ok(next) => next,
                Err(e) => {
                    // streaming is a head start only: the final transfer
                    // sends whatever did not go
                    tracing::warn!(error = %e, "cannot read the dump as CRIU writes it; sending it once it is done");
                    self.streamed_blocks = streamed;
                    return dump.await.in_phase(Phase::FreezeDump, what);
                }
            };
            let idle = next.is_none();
            tokio::select! {
                biased;
                r = &mut dump => {
                    tracing::debug!(blocks = streamed, "sent while the dump ran");
                    self.streamed_blocks = streamed;
                    return r.in_phase(Phase::FreezeDump, what);
                }
                _ = tokio::time::sleep(POLL), if idle => {}
                _ = std::future::ready(()), if !idle => {}
            }
            if let Some((name, data)) = next {
                match send_new_blocks(&mut self.link, &mut self.known, &data).await {
                    Ok(n) => streamed += n,
                    Err(e) => {
                        // the rollback resumes the container: the dump (its
                        // shim call) ends first, whatever became of the link
                        let _ = dump.await;
                        return Err(e);
                    }
                }
                tracing::trace!(image = name, bytes = data.len(), "streamed");
            }
        }
    }

    /// Opens the final round (`RoundStart{final_round}`) once.
    pub async fn open_final_round(&mut self) -> Result<u32> {
        let round = self.rounds.len() as u32 + 1;
        if !self.final_round_open {
            self.link
                .send(&Message::RoundStart {
                    round,
                    final_round: true,
                })
                .await?;
            self.final_round_open = true;
        }
        Ok(round)
    }
}

/// Sends the blocks of `data` the destination does not hold yet (`known`
/// holds what went): how many went.
async fn send_new_blocks(
    link: &mut SourceLink,
    known: &mut HashSet<BlockHash>,
    data: &[u8],
) -> Result<u64> {
    let zero = zero_hash();
    let batch: Vec<(BlockHash, &[u8])> = data
        .chunks(BLOCK_SIZE)
        .map(|p| (hash_block(p), p))
        .filter(|(h, _)| *h != zero && known.insert(*h))
        .collect();
    if !batch.is_empty() {
        link.blocks(&batch).await?;
    }
    Ok(batch.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_reads_whole_blocks_as_they_are_written_in_runs() {
        let dir = std::env::temp_dir().join(format!("mose-tail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pages-1.img");
        let block = |i: usize| vec![(i % 251) as u8 + 1; BLOCK_SIZE];
        let mut t = Tail::default();
        // other files and a partial block are not read
        std::fs::write(dir.join("pagemap-1.img"), b"x").unwrap();
        let mut data: Vec<u8> = block(0);
        data.extend_from_slice(&block(1)[..100]);
        std::fs::write(&path, &data).unwrap();
        let (name, got) = t.next_run(&dir).unwrap().unwrap();
        assert_eq!((name.as_str(), got), ("pages-1.img", block(0)));
        assert!(t.next_run(&dir).unwrap().is_none());
        // the file grows past a batch: runs of at most BATCH blocks, in order
        let mut data = Vec::new();
        for i in 0..BATCH + 3 {
            data.extend_from_slice(&block(i));
        }
        std::fs::write(&path, &data).unwrap();
        let (_, a) = t.next_run(&dir).unwrap().unwrap();
        let (_, b) = t.next_run(&dir).unwrap().unwrap();
        assert_eq!(a.len(), BATCH * BLOCK_SIZE);
        assert_eq!(a[..BLOCK_SIZE], block(1)[..]);
        assert_eq!(b, data[(BATCH + 1) * BLOCK_SIZE..]);
        assert!(t.next_run(&dir).unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
