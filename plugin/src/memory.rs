//! Reading a running container's memory for pre-copy rounds, without freezing it.
//!
//! Pre-copy needs to know what changed since the destination's last copy. This
//! kernel has no soft-dirty tracking, so instead of asking the kernel, a round
//! reads every present page of the processes' private writable mappings
//! (`/proc/<pid>/maps`, `pagemap` for presence, `mem` for content) while the
//! application keeps running, and hashes it: blocks whose hash the destination
//! already holds are not sent. A page torn by a concurrent write only costs a
//! resend; the final, frozen dump is authoritative.

use std::{collections::HashSet, fs::File, os::unix::fs::FileExt};

use anyhow::{Context, Result};
use mose_wire::{
    blocks::{hash_block, zero_hash},
    BlockHash, BLOCK_SIZE,
};

/// A private writable mapping of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
}

/// Parses `/proc/<pid>/maps`, keeping private writable mappings.
pub fn parse_maps(text: &str) -> Vec<Region> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let range = f.next()?;
            let perms = f.next()?;
            if !(perms.starts_with("rw") && perms.ends_with('p')) {
                return None;
            }
            if l.ends_with("[vvar]") || l.ends_with("[vsyscall]") || l.contains("[vvar_") {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some(Region {
                start: u64::from_str_radix(a, 16).ok()?,
                end: u64::from_str_radix(b, 16).ok()?,
            })
        })
        .collect()
}

/// Statistics of one live scan.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct ScanStats {
    pub pages_present: u64,
    pub zero_pages: u64,
    pub new_blocks: u64,
}

/// Scans the memory of `pids`, calling `emit` with batches of blocks not in
/// `known` (which is updated). Processes that vanish mid-scan are skipped.
/// Blocking: run it on a blocking thread and hand batches to the sender.
pub fn scan<F>(pids: &[u32], known: &mut HashSet<BlockHash>, mut emit: F) -> Result<ScanStats>
where
    F: FnMut(Vec<(BlockHash, Vec<u8>)>) -> Result<()>,
{
    const BATCH: usize = 256;
    let mut stats = ScanStats::default();
    let zero = zero_hash();
    let mut batch = Vec::with_capacity(BATCH);
    for &pid in pids {
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            continue;
        };
        let (Ok(mem), Ok(pagemap)) = (
            File::open(format!("/proc/{pid}/mem")),
            File::open(format!("/proc/{pid}/pagemap")),
        ) else {
            continue;
        };
        for r in parse_maps(&maps) {
            let pages = ((r.end - r.start) / BLOCK_SIZE as u64) as usize;
            // presence bits, 8 bytes per page
            const CHUNK: usize = 4096;
            let mut first = 0usize;
            while first < pages {
                let n = CHUNK.min(pages - first);
                let mut pm = vec![0u8; n * 8];
                let off = (r.start / BLOCK_SIZE as u64 + first as u64) * 8;
                if pagemap.read_exact_at(&mut pm, off).is_err() {
                    break;
                }
                let mut i = 0;
                while i < n {
                    let present = |j: usize| {
                        let e =
                            u64::from_le_bytes(pm[j * 8..j * 8 + 8].try_into().unwrap_or([0; 8]));
                        e & (1 << 63) != 0 || e & (1 << 62) != 0
                    };
                    if !present(i) {
                        i += 1;
                        continue;
                    }
                    let mut j = i;
                    while j < n && present(j) && j - i < 256 {
                        j += 1;
                    }
                    let addr = r.start + ((first + i) * BLOCK_SIZE) as u64;
                    let mut buf = vec![0u8; (j - i) * BLOCK_SIZE];
                    if mem.read_exact_at(&mut buf, addr).is_ok() {
                        for page in buf.chunks(BLOCK_SIZE) {
                            stats.pages_present += 1;
                            let h = hash_block(page);
                            if h == zero {
                                stats.zero_pages += 1;
                                continue;
                            }
                            if known.insert(h) {
                                stats.new_blocks += 1;
                                batch.push((h, page.to_vec()));
                                if batch.len() >= BATCH {
                                    emit(std::mem::take(&mut batch))?;
                                }
                            }
                        }
                    }
                    i = j;
                }
                first += n;
            }
        }
    }
    if !batch.is_empty() {
        emit(batch).context("sending the last blocks of a round")?;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_private_writable_mappings() {
        let maps = "\
55d0c0000000-55d0c0001000 r--p 00000000 00:1f 12 /bin/x
55d0c0001000-55d0c0003000 rw-p 00001000 00:1f 12 /bin/x
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
7f0000100000-7f0000200000 rw-s 00000000 00:05 9 /dev/shm/y
7ffd00000000-7ffd00001000 r--p 00000000 00:00 0 [vvar]
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0 [stack]
";
        let r = parse_maps(maps);
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[0],
            Region {
                start: 0x55d0c0001000,
                end: 0x55d0c0003000
            }
        );
    }

    #[test]
    fn a_quiet_process_is_sent_once() {
        // an idle process: its memory does not change between rounds
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let pid = child.id();
        let mut known = HashSet::new();
        let mut got = 0u64;
        let first = scan(&[pid], &mut known, |b| {
            got += b.len() as u64;
            Ok(())
        })
        .unwrap();
        let again = scan(&[pid], &mut known, |_| Ok(())).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            first.new_blocks > 0 && first.pages_present >= first.new_blocks,
            "{first:?}"
        );
        assert_eq!(got, first.new_blocks);
        assert_eq!(
            again.new_blocks, 0,
            "nothing changed, nothing to send: {again:?}"
        );
        assert_eq!(again.pages_present, first.pages_present);
    }
}
