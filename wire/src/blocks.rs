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
pub fn hash_blocks(data: &[u8]) -> Vec<BlockHash> {
    data.chunks(BLOCK_SIZE).map(hash_block).collect()
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
        self.write_blocks(hashes, out, false).map(|_| ())
    }

    /// Like [`Self::write_to`], but a block not held yet is written as zeros
    /// instead of failing: for a speculative image that is patched later.
    /// Returns the hash of what was actually written at each index.
    pub fn write_speculative(
        &self,
        hashes: &[BlockHash],
        out: &mut impl std::io::Write,
    ) -> Result<Vec<BlockHash>, BlockError> {
        self.write_blocks(hashes, out, true)
    }

    fn write_blocks(
        &self,
        hashes: &[BlockHash],
        out: &mut impl std::io::Write,
        lenient: bool,
    ) -> Result<Vec<BlockHash>, BlockError> {
        const BATCH: usize = 256;
        let zero = [0u8; BLOCK_SIZE];
        let zh = zero_hash();
        let io = |e: std::io::Error| BlockError::Io(e.to_string());
        let mut written = Vec::with_capacity(if lenient { hashes.len() } else { 0 });
        let mut start = 0;
        while start < hashes.len() {
            let end = (start + BATCH).min(hashes.len());
            let mut bufs: Vec<&[u8]> = Vec::with_capacity(end - start);
            for (i, h) in hashes[start..end].iter().enumerate() {
                let b = if *h == zh {
                    Some(&zero[..])
                } else {
                    self.blocks.get(h).map(|b| &b[..])
                };
                match b {
                    Some(b) => {
                        bufs.push(b);
                        if lenient {
                            written.push(*h);
                        }
                    }
                    None if lenient => {
                        bufs.push(&zero);
                        written.push(zh);
                    }
                    None => {
                        return Err(BlockError::Missing {
                            index: start + i,
                            hash: *h,
                        })
                    }
                }
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
            start = end;
        }
        Ok(written)
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
        // a speculative write fills what is missing with zeros and says so
        let mut spec = Vec::new();
        let got = s
            .write_speculative(&[hashes[1], 42, zero_hash()], &mut spec)
            .unwrap();
        assert_eq!(got, vec![hashes[1], zero_hash(), zero_hash()]);
        assert_eq!(&spec[..BLOCK_SIZE], s.block(hashes[1]).unwrap());
        assert!(spec[BLOCK_SIZE..].iter().all(|b| *b == 0));
        assert!(s.block(42).is_none());
        let missing = [hashes[1], 42];
        assert!(matches!(
            s.write_to(&missing, &mut Vec::new()),
            Err(BlockError::Missing { index: 1, .. })
        ));
    }
}
