//! Content-addressed page blocks: the unit of memory transfer.
//!
//! A block is one 4 KiB page named by the 128-bit XXH3 hash of its content.
//! The destination keeps every block it has received; the source remembers
//! which hashes it sent and sends each distinct content once. Zero pages are
//! never sent. This is what lets pre-copy work without soft-dirty tracking:
//! whatever did not change since an earlier round has a known hash.

use std::collections::HashMap;

use xxhash_rust::xxh3::xxh3_128;

/// Size of a page block.
pub const BLOCK_SIZE: usize = 4096;

/// Content hash of a block.
pub type BlockHash = u128;

/// Hash of a block's content.
pub fn hash_block(data: &[u8]) -> BlockHash {
    xxh3_128(data)
}

/// Hash of an all-zero block (never transferred).
pub fn zero_hash() -> BlockHash {
    static ZERO: std::sync::OnceLock<BlockHash> = std::sync::OnceLock::new();
    *ZERO.get_or_init(|| xxh3_128(&[0u8; BLOCK_SIZE]))
}

/// Splits `data` (a multiple of [`BLOCK_SIZE`], e.g. a CRIU pages image) into block hashes.
/// Large data is hashed on every core (a frozen container's dump is hashed
/// while the link waits): in slices, one scoped thread each, joined in order.
pub fn hash_blocks(data: &[u8]) -> Vec<BlockHash> {
    /// At least this much per thread: below it a thread costs more than it saves.
    const PER_THREAD: usize = 8 << 20;
    let serial = |d: &[u8]| d.chunks(BLOCK_SIZE).map(hash_block).collect::<Vec<_>>();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cores.min(data.len() / PER_THREAD);
    if threads < 2 {
        return serial(data);
    }
    let per = data.len().div_ceil(threads).next_multiple_of(BLOCK_SIZE);
    std::thread::scope(|s| {
        // a slice whose thread could not be started is hashed here, in order
        let parts: Vec<Result<_, &[u8]>> = data
            .chunks(per)
            .map(|part| {
                std::thread::Builder::new()
                    .spawn_scoped(s, move || serial(part))
                    .map_err(|_| part)
            })
            .collect();
        let mut out = Vec::with_capacity(data.len().div_ceil(BLOCK_SIZE));
        for p in parts {
            match p {
                Ok(h) => match h.join() {
                    Ok(h) => out.extend(h),
                    // hashing a slice cannot panic; if it did, the panic is
                    // the scope's to report
                    Err(e) => std::panic::resume_unwind(e),
                },
                Err(part) => out.extend(serial(part)),
            }
        }
        out
    })
}

/// Blocks held by the destination, by hash.
#[derive(Default)]
pub struct BlockStore {
    blocks: HashMap<BlockHash, Box<[u8]>>,
    bytes: u64,
}

impl BlockStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a block after checking its content against its name.
    pub fn insert(&mut self, hash: BlockHash, data: &[u8]) -> Result<(), BlockError> {
        if data.len() != BLOCK_SIZE {
            return Err(BlockError::Size(data.len()));
        }
        let actual = hash_block(data);
        if actual != hash {
            return Err(BlockError::Corrupt {
                expected: hash,
                actual,
            });
        }
        if self.blocks.insert(hash, data.into()).is_none() {
            self.bytes += BLOCK_SIZE as u64;
        }
        Ok(())
    }

    pub fn contains(&self, hash: BlockHash) -> bool {
        hash == zero_hash() || self.blocks.contains_key(&hash)
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Bytes of block content held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// A held block's content (the zero block is always held).
    pub fn block(&self, hash: BlockHash) -> Option<&[u8]> {
        static ZERO: [u8; BLOCK_SIZE] = [0u8; BLOCK_SIZE];
        if hash == zero_hash() {
            return Some(&ZERO);
        }
        self.blocks.get(&hash).map(|b| &b[..])
    }

    /// Writes a pages image from its block list straight to `out`, in
    /// vectored batches: the blocks are copied once, into the file.
    pub fn write_to(
        &self,
        hashes: &[BlockHash],
        out: &mut impl std::io::Write,
    ) -> Result<(), BlockError> {
        self.write_blocks(hashes, out)
    }

    /// Lays out a pages image in `file` (fresh and empty) from its block
    /// list as far as the blocks are held: each held block is written in
    /// place, and every other slot (the zero block, a block not held yet) is
    /// left a hole, which reads as zeros, for a speculative image patched
    /// later. Nothing is written for a slot that holds nothing yet, so laying
    /// out a large image of which little is held costs little (a cold
    /// migration's exact layout arrives when only what streamed during its
    /// dump is held, a tenth of it at 512 MiB over 1 Gbit/s). Returns
    /// the hash of what the file holds at each index.
    pub fn write_speculative(
        &self,
        hashes: &[BlockHash],
        file: &mut std::fs::File,
    ) -> Result<Vec<BlockHash>, BlockError> {
        use std::io::{Seek, SeekFrom};
        let io = |e: std::io::Error| BlockError::Io(e.to_string());
        let zh = zero_hash();
        let held = |h: &BlockHash| *h != zh && self.blocks.contains_key(h);
        let written: Vec<BlockHash> = hashes
            .iter()
            .map(|h| if held(h) { *h } else { zh })
            .collect();
        let mut i = 0;
        while i < hashes.len() {
            if !held(&hashes[i]) {
                i += 1;
                continue;
            }
            let end = (i..hashes.len())
                .find(|&j| !held(&hashes[j]))
                .unwrap_or(hashes.len());
            file.seek(SeekFrom::Start((i * BLOCK_SIZE) as u64))
                .map_err(io)?;
            self.write_blocks(&hashes[i..end], file)?;
            i = end;
        }
        file.set_len((hashes.len() * BLOCK_SIZE) as u64)
            .map_err(io)?;
        Ok(written)
    }

    /// Writes the blocks of `hashes` to `out` in order, in vectored batches;
    /// a block not held is an error naming its index.
    fn write_blocks(
        &self,
        hashes: &[BlockHash],
        out: &mut impl std::io::Write,
    ) -> Result<(), BlockError> {
        const BATCH: usize = 256;
        let zero = [0u8; BLOCK_SIZE];
        let zh = zero_hash();
        let io = |e: std::io::Error| BlockError::Io(e.to_string());
        for (k, batch) in hashes.chunks(BATCH).enumerate() {
            let mut bufs: Vec<&[u8]> = Vec::with_capacity(batch.len());
            for (i, h) in batch.iter().enumerate() {
                let b = if *h == zh {
                    Some(&zero[..])
                } else {
                    self.blocks.get(h).map(|b| &b[..])
                };
                bufs.push(b.ok_or(BlockError::Missing {
                    index: k * BATCH + i,
                    hash: *h,
                })?);
            }
            // write_vectored may stop early: finish the batch block by block
            let slices: Vec<std::io::IoSlice<'_>> =
                bufs.iter().map(|b| std::io::IoSlice::new(b)).collect();
            let mut done = out.write_vectored(&slices).map_err(io)?;
            for b in &bufs {
                if done >= b.len() {
                    done -= b.len();
                    continue;
                }
                out.write_all(&b[done..]).map_err(io)?;
                done = 0;
            }
        }
        Ok(())
    }

    /// Reference rebuild into memory, for checking [`Self::write_to`].
    #[cfg(test)]
    fn assemble(&self, hashes: &[BlockHash], out: &mut Vec<u8>) -> Result<(), BlockError> {
        out.reserve(hashes.len() * BLOCK_SIZE);
        let zero = zero_hash();
        for (i, h) in hashes.iter().enumerate() {
            if *h == zero {
                out.extend_from_slice(&[0u8; BLOCK_SIZE]);
                continue;
            }
            match self.blocks.get(h) {
                Some(b) => out.extend_from_slice(b),
                None => return Err(BlockError::Missing { index: i, hash: *h }),
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockError {
    #[error("page block has {0} bytes, expected {BLOCK_SIZE}")]
    Size(usize),
    #[error(
        "corrupt page block: content hash {actual:032x} does not match its name {expected:032x}"
    )]
    Corrupt {
        expected: BlockHash,
        actual: BlockHash,
    },
    #[error("page block #{index} ({hash:032x}) was never received")]
    Missing { index: usize, hash: BlockHash },
    #[error("writing a pages image: {0}")]
    Io(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_checks_content_and_assembles() {
        let mut s = BlockStore::new();
        let a = vec![1u8; BLOCK_SIZE];
        let b = vec![2u8; BLOCK_SIZE];
        s.insert(hash_block(&a), &a).unwrap();
        assert_eq!(
            s.insert(hash_block(&a), &b),
            Err(BlockError::Corrupt {
                expected: hash_block(&a),
                actual: hash_block(&b)
            })
        );
        assert_eq!(s.insert(1, &a[..10]), Err(BlockError::Size(10)));
        let mut out = Vec::new();
        s.assemble(&[hash_block(&a), zero_hash(), hash_block(&a)], &mut out)
            .unwrap();
        assert_eq!(out.len(), 3 * BLOCK_SIZE);
        assert_eq!(&out[BLOCK_SIZE..2 * BLOCK_SIZE], &[0u8; BLOCK_SIZE][..]);
        let e = s.assemble(&[hash_block(&b)], &mut Vec::new()).unwrap_err();
        assert!(matches!(e, BlockError::Missing { index: 0, .. }));
        assert!(s.contains(zero_hash()));
        assert_eq!(s.bytes(), BLOCK_SIZE as u64);
    }

    #[test]
    fn parallel_hashing_matches_block_by_block() {
        // past the parallel threshold, with a ragged last block run
        let data: Vec<u8> = (0..(17 << 20) + 3 * BLOCK_SIZE)
            .map(|i| (i / 4093) as u8)
            .collect();
        let serial: Vec<BlockHash> = data.chunks(BLOCK_SIZE).map(hash_block).collect();
        assert_eq!(hash_blocks(&data), serial);
    }

    #[test]
    fn vectored_write_matches_assembly_across_batches() {
        let mut s = BlockStore::new();
        let mut hashes = Vec::new();
        for i in 0..600u32 {
            if i % 7 == 0 {
                hashes.push(zero_hash());
                continue;
            }
            let b: Vec<u8> = (0..BLOCK_SIZE)
                .map(|j| (i as usize * 31 + j) as u8)
                .collect();
            let h = hash_block(&b);
            s.insert(h, &b).unwrap();
            hashes.push(h);
        }
        let mut a = Vec::new();
        s.assemble(&hashes, &mut a).unwrap();
        let mut w = Vec::new();
        s.write_to(&hashes, &mut w).unwrap();
        assert_eq!(a, w);
        // a speculative layout holds what is held, zeros (holes) elsewhere,
        // and says so; its length is the whole image's
        let path = std::env::temp_dir().join(format!("mose-spec-{}", std::process::id()));
        let mut f = std::fs::File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let layout = [42, hashes[1], hashes[2], zero_hash(), 43, hashes[3]];
        let got = s.write_speculative(&layout, &mut f).unwrap();
        let spec = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let z = zero_hash();
        assert_eq!(got, vec![z, hashes[1], hashes[2], z, z, hashes[3]]);
        assert_eq!(spec.len(), layout.len() * BLOCK_SIZE);
        for (i, h) in got.iter().enumerate() {
            let want = s.block(*h).unwrap();
            assert_eq!(
                &spec[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE],
                want,
                "slot {i}"
            );
        }
        assert!(s.block(42).is_none());
        let missing = [hashes[1], 42];
        assert!(matches!(
            s.write_to(&missing, &mut Vec::new()),
            Err(BlockError::Missing { index: 1, .. })
        ));
    }
}
