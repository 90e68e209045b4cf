//! Reading a running container's memory for pre-copy rounds, without freezing it.
//!
//! Pre-copy needs to know what changed since the destination's last copy. This
//! kernel has no soft-dirty tracking, so instead of asking the kernel, a round
//! reads every present page of the processes' private writable mappings
//! (`/proc/<pid>/maps`, `pagemap` for presence, `mem` for content) while the
//! application keeps running, and hashes it: blocks whose hash the destination
//! already holds are not sent. A page torn by a concurrent write only costs a
//! resend; the final, frozen dump is authoritative.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    os::unix::fs::FileExt,
};

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

/// Content hash of each scanned page, by (pid, address).
pub type Seen = HashMap<(u32, u64), BlockHash>;

/// A process's memory as `/proc` shows it: its mappings, their content and
/// the page-table flags of each page. Every reader here (live rounds,
/// dirty-rate sampling, layout prediction) goes through it.
pub struct ProcMemory {
    pub maps: String,
    pub mem: File,
    pagemap: File,
}

impl ProcMemory {
    /// None when the process is gone (or its memory is not readable).
    pub fn open(pid: u32) -> Option<Self> {
        Some(Self {
            maps: std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?,
            mem: File::open(format!("/proc/{pid}/mem")).ok()?,
            pagemap: File::open(format!("/proc/{pid}/pagemap")).ok()?,
        })
    }

    /// The pagemap entries of `n` pages from virtual page number `first`.
    pub fn entries(&self, first: u64, n: usize) -> Option<Vec<u64>> {
        let mut raw = vec![0u8; n * 8];
        self.pagemap.read_exact_at(&mut raw, first * 8).ok()?;
        Some(
            raw.chunks_exact(8)
                .map(|e| u64::from_le_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]))
                .collect(),
        )
    }
}

/// Whether a pagemap entry is a page in memory or in swap.
pub fn present_or_swapped(e: u64) -> bool {
    e & (1 << 63) != 0 || e & (1 << 62) != 0
}

/// Scans the memory of `pids`, calling `emit` with batches of blocks not in
/// `known` (which is updated), and recording every page's hash in `seen`.
/// Processes that vanish mid-scan are skipped. Blocking: run it on a
/// blocking thread and hand batches to the sender.
pub fn scan<F>(
    pids: &[u32],
    known: &mut HashSet<BlockHash>,
    mut seen: Option<&mut Seen>,
    mut emit: F,
) -> Result<ScanStats>
where
    F: FnMut(Vec<(BlockHash, Vec<u8>)>) -> Result<()>,
{
    const BATCH: usize = 256;
    let mut stats = ScanStats::default();
    let zero = zero_hash();
    let mut batch = Vec::with_capacity(BATCH);
    for &pid in pids {
        let Some(pm_proc) = ProcMemory::open(pid) else {
            continue;
        };
        let mem = &pm_proc.mem;
        for r in parse_maps(&pm_proc.maps) {
            let pages = ((r.end - r.start) / BLOCK_SIZE as u64) as usize;
            const CHUNK: usize = 4096;
            let mut first = 0usize;
            while first < pages {
                let n = CHUNK.min(pages - first);
                let Some(pm) = pm_proc.entries(r.start / BLOCK_SIZE as u64 + first as u64, n)
                else {
                    break;
                };
                let mut i = 0;
                while i < n {
                    let present = |j: usize| present_or_swapped(pm[j]);
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
                        for (k, page) in buf.chunks(BLOCK_SIZE).enumerate() {
                            stats.pages_present += 1;
                            let h = hash_block(page);
                            if let Some(seen) = seen.as_deref_mut() {
                                seen.insert((pid, addr + (k * BLOCK_SIZE) as u64), h);
                            }
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

/// The processes of a container in CRIU's dump order: depth first from
/// `root`, children in the order the kernel lists them; any pid not reached
/// that way is appended.
pub fn tree_order(root: u32, pids: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        if out.contains(&p) {
            continue;
        }
        out.push(p);
        let mut children = Vec::new();
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                    children.extend(c.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
                }
            }
        }
        stack.extend(children.into_iter().rev());
    }
    for p in pids {
        if !out.contains(p) {
            out.push(*p);
        }
    }
    out
}

/// Predicts the page list of each process's CRIU pages image (in
/// [`tree_order`]), so the destination can lay the image out while the
/// source dumps. It follows CRIU's rules: private mappings only, no
/// `[vvar]`/`[vsyscall]`, `[vdso]` whole, file-backed private pages only
/// once written (anonymous) plus the one CRIU writes its parasite into, and
/// otherwise every present or swapped page
/// (checked against real CRIU 4.1 dumps). Hashes come from the last live scan (`seen`); pages it did
/// not read are read now. A wrong prediction costs only time: the final
/// manifest decides every byte.
pub fn criu_layout(pids: &[u32], seen: &Seen) -> Vec<Vec<(u64, BlockHash)>> {
    let page = BLOCK_SIZE as u64;
    let mut out = Vec::new();
    for &pid in pids {
        let mut hashes = Vec::new();
        let Some(proc_mem) = ProcMemory::open(pid) else {
            out.push(hashes);
            continue;
        };
        let (maps, mem) = (&proc_mem.maps, &proc_mem.mem);
        let mut buf = vec![0u8; BLOCK_SIZE];
        // CRIU injects its parasite into the first executable mapping: that
        // page is copied-on-write, hence dumped, by the time CRIU looks
        let mut exec_seen = false;
        for l in maps.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 5 || !f[1].ends_with('p') {
                continue;
            }
            let name = f.get(5).copied().unwrap_or("");
            if name == "[vsyscall]" || name.starts_with("[vvar") {
                continue;
            }
            let vdso = name == "[vdso]";
            let poked = !exec_seen && f[1].as_bytes().get(2) == Some(&b'x') && !vdso;
            exec_seen |= poked;
            let file_private = f[4] != "0";
            let Some((a, b)) = f[0].split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
            else {
                continue;
            };
            let Some(pm) = proc_mem.entries(start / page, ((end - start) / page) as usize) else {
                continue;
            };
            for (i, &e) in pm.iter().enumerate() {
                let file_page = e & (1 << 61) != 0;
                let dump = vdso
                    || (poked && i == 0)
                    || (!(file_private && file_page) && present_or_swapped(e));
                if !dump {
                    continue;
                }
                let addr = start + i as u64 * page;
                let h = match seen.get(&(pid, addr)) {
                    Some(h) => *h,
                    None if mem.read_exact_at(&mut buf, addr).is_ok() => hash_block(&buf),
                    None => zero_hash(),
                };
                hashes.push((addr, h));
            }
        }
        out.push(hashes);
    }
    out
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
        let mut seen = Seen::new();
        let first = scan(&[pid], &mut known, Some(&mut seen), |b| {
            got += b.len() as u64;
            Ok(())
        })
        .unwrap();
        let again = scan(&[pid], &mut known, None, |_| Ok(())).unwrap();
        assert_eq!(seen.len() as u64, first.pages_present);
        // the layout prediction covers the pages CRIU would dump
        let layout = criu_layout(&tree_order(pid, &[pid]), &seen);
        assert_eq!(layout.len(), 1);
        assert!(!layout[0].is_empty());
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
