//! The state of MOSE's stateful workload: S MiB of anonymous memory with a
//! per-page hash and a rolling checksum.
//!
//! A live migration must carry every page of this memory; the per-page
//! hashes and the checksum (kept in the same process memory, so migrated
//! with it) let `VERIFY` prove after a migration that no page was lost,
//! stale or corrupted. Each page starts with its index and a write
//! generation so that all pages are distinct and non-zero: neither
//! zero-page detection nor deduplication can shrink what must be copied.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use anyhow::{bail, Result};

/// Page size of the state (and of the dirtying): 4 KiB.
pub const PAGE: usize = 4096;

/// Pages verified per lock hold in [`State::verify`] (keeps the writer and
/// other verifiers from stalling behind one long scan).
const VERIFY_CHUNK: usize = 256;

/// splitmix64: a small, fast PRNG that is good enough for page content.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform-ish value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// Hash of one page's content, salted with its index so that swapped pages
/// are detected too.
pub fn page_hash(index: usize, page: &[u8]) -> u64 {
    let mut h = 0xCBF2_9CE4_8422_2325u64 ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for w in page.chunks_exact(8) {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = (h.rotate_left(23) ^ u64::from_le_bytes(b)).wrapping_mul(0x100_0000_01B3);
    }
    // Final avalanche so that similar pages give unrelated hashes.
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^ (h >> 33)
}

/// Fills `page` with content for page `index`, write generation `gen`:
/// index and generation first (distinct, non-zero), then PRNG bytes.
pub fn fill_page(page: &mut [u8], index: usize, gen: u64, rng: &mut Rng) {
    let (head, rest) = page.split_at_mut(16);
    head[..8].copy_from_slice(&(index as u64 | 1 << 63).to_le_bytes());
    head[8..].copy_from_slice(&gen.to_le_bytes());
    for w in rest.chunks_exact_mut(8) {
        w.copy_from_slice(&(rng.next_u64() | 1).to_le_bytes());
    }
}

/// Page-aligned anonymous memory (mmap), so that each state page is exactly
/// one OS page and transparent huge pages can be turned off for it (dirty
/// tracking during pre-copy migration then works at 4 KiB granularity).
struct PageMem {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: PageMem owns its mapping exclusively; access goes through &/&mut.
unsafe impl Send for PageMem {}
// SAFETY: shared access is read-only through &self.
unsafe impl Sync for PageMem {}

impl PageMem {
    fn new(len: usize) -> Result<Self> {
        // SAFETY: anonymous private mapping, no file descriptor involved.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(PAGE),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!(
                "mmap of {len} bytes failed: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: advisory only on our own mapping; failure is harmless.
        unsafe { libc::madvise(ptr, len.max(PAGE), libc::MADV_NOHUGEPAGE) };
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes, readable, and lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for PageMem {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `new`.
        unsafe { libc::munmap(self.ptr.cast(), self.len.max(PAGE)) };
    }
}

/// Memory and bookkeeping guarded by one lock.
struct Inner {
    mem: PageMem,
    hashes: Vec<u64>,
    gens: Vec<u64>,
}

/// Result of a full verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    /// Every page matches its hash and the hashes add up to the checksum.
    Ok {
        /// Checksum at the end of the check.
        sum: u64,
        /// Pages checked.
        pages: usize,
    },
    /// A page (or the checksum, then `page == pages`) does not match.
    Corrupt {
        /// First page whose content does not match its recorded hash
        /// (`pages` when only the rolling checksum disagrees).
        page: usize,
        /// Recorded hash (or checksum).
        expected: u64,
        /// Recomputed hash (or sum of recorded hashes).
        got: u64,
    },
}

/// The service state: pages, per-page hashes and the rolling checksum
/// (wrapping sum of all page hashes).
pub struct State {
    inner: Mutex<Inner>,
    pages: usize,
    sum: AtomicU64,
    writes: AtomicU64,
}

impl State {
    /// Allocates `pages` pages and fills them from a PRNG seeded with `seed`.
    pub fn new(pages: usize, seed: u64) -> Result<Self> {
        let mut mem = PageMem::new(pages * PAGE)?;
        let mut hashes = vec![0u64; pages];
        let mut rng = Rng::new(seed);
        let mut sum = 0u64;
        for (i, (page, h)) in mem
            .as_mut_slice()
            .chunks_exact_mut(PAGE)
            .zip(hashes.iter_mut())
            .enumerate()
        {
            fill_page(page, i, 0, &mut rng);
            *h = page_hash(i, page);
            sum = sum.wrapping_add(*h);
        }
        Ok(Self {
            inner: Mutex::new(Inner {
                mem,
                hashes,
                gens: vec![0; pages],
            }),
            pages,
            sum: AtomicU64::new(sum),
            writes: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the bookkeeping half-updated in a
        // way we could fix; keep serving what is there.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of pages.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Rolling checksum (lock-free read; PING must not wait for writers).
    pub fn sum(&self) -> u64 {
        self.sum.load(Ordering::Acquire)
    }

    /// Page writes since start.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Acquire)
    }

    /// Rewrites page `index` with fresh PRNG content, updating its hash and
    /// the checksum. Content is generated outside the lock.
    pub fn write_page(&self, index: usize, rng: &mut Rng, buf: &mut [u8; PAGE]) {
        let index = index % self.pages.max(1);
        if self.pages == 0 {
            return;
        }
        let mut g = self.lock();
        let gen = g.gens[index] + 1;
        drop(g);
        fill_page(buf, index, gen, rng);
        let h = page_hash(index, buf);
        g = self.lock();
        g.gens[index] = g.gens[index].max(gen);
        g.mem.as_mut_slice()[index * PAGE..(index + 1) * PAGE].copy_from_slice(buf);
        let old = std::mem::replace(&mut g.hashes[index], h);
        // Updated under the lock so that verify sees hashes and sum agree.
        let sum = self.sum.load(Ordering::Relaxed);
        self.sum
            .store(sum.wrapping_sub(old).wrapping_add(h), Ordering::Release);
        self.writes.fetch_add(1, Ordering::AcqRel);
    }

    /// Corrupts one byte of page `index` without updating its hash (tests).
    pub fn corrupt_page_for_test(&self, index: usize) {
        let mut g = self.lock();
        g.mem.as_mut_slice()[index * PAGE + 100] ^= 0x55;
    }

    /// Verifies every page in a forked child, as a service that forks for a
    /// snapshot (Redis's BGSAVE) would read it: a second process sharing the
    /// memory copy-on-write. Returns whether the child found every page intact.
    pub fn verify_in_child(&self) -> std::io::Result<bool> {
        let g = self.lock();
        // SAFETY: the child only reads memory through the guard it inherits
        // and leaves with _exit: it allocates nothing and takes no lock.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let mem = g.mem.as_slice();
            let ok = (0..self.pages)
                .all(|i| page_hash(i, &mem[i * PAGE..(i + 1) * PAGE]) == g.hashes[i]);
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        drop(g);
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut status = 0;
        loop {
            // SAFETY: waiting for the child forked above.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r == pid {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0)
    }

    /// Recomputes every page's hash and compares it with the recorded one,
    /// then checks that the recorded hashes add up to the rolling checksum.
    pub fn verify(&self) -> Verify {
        let mut start = 0;
        while start < self.pages {
            let end = (start + VERIFY_CHUNK).min(self.pages);
            let g = self.lock();
            let mem = g.mem.as_slice();
            for i in start..end {
                let got = page_hash(i, &mem[i * PAGE..(i + 1) * PAGE]);
                if got != g.hashes[i] {
                    return Verify::Corrupt {
                        page: i,
                        expected: g.hashes[i],
                        got,
                    };
                }
            }
            drop(g);
            start = end;
        }
        let g = self.lock();
        let total = g.hashes.iter().fold(0u64, |a, h| a.wrapping_add(*h));
        let sum = self.sum();
        if total != sum {
            return Verify::Corrupt {
                page: self.pages,
                expected: sum,
                got: total,
            };
        }
        Verify::Ok {
            sum,
            pages: self.pages,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_state_verifies_and_pages_are_distinct_nonzero() {
        let s = State::new(64, 7).expect("state");
        assert_eq!(
            s.verify(),
            Verify::Ok {
                sum: s.sum(),
                pages: 64
            }
        );
        let g = s.lock();
        let mem = g.mem.as_slice();
        let mut seen = std::collections::HashSet::new();
        for p in mem.chunks_exact(PAGE) {
            assert!(p.iter().any(|b| *b != 0));
            assert!(seen.insert(p.to_vec()), "duplicate page");
        }
    }

    #[test]
    fn checksum_tracks_page_writes() {
        let s = State::new(32, 1).expect("state");
        let before = s.sum();
        let mut rng = Rng::new(99);
        let mut buf = [0u8; PAGE];
        for i in 0..100 {
            s.write_page(i * 7, &mut rng, &mut buf);
        }
        assert_eq!(s.writes(), 100);
        assert_ne!(s.sum(), before);
        let expected = {
            let g = s.lock();
            g.mem
                .as_slice()
                .chunks_exact(PAGE)
                .enumerate()
                .fold(0u64, |a, (i, p)| a.wrapping_add(page_hash(i, p)))
        };
        assert_eq!(s.sum(), expected);
        assert!(matches!(s.verify(), Verify::Ok { pages: 32, .. }));
    }

    #[test]
    fn corruption_is_detected() {
        let s = State::new(16, 3).expect("state");
        s.corrupt_page_for_test(5);
        match s.verify() {
            Verify::Corrupt { page, .. } => assert_eq!(page, 5),
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn same_seed_same_checksum() {
        let a = State::new(8, 42).expect("a");
        let b = State::new(8, 42).expect("b");
        let c = State::new(8, 43).expect("c");
        assert_eq!(a.sum(), b.sum());
        assert_ne!(a.sum(), c.sum());
    }
}
