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

/// One line of `/proc/<pid>/maps`:
/// `start-end perms offset dev inode [name]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping<'a> {
    pub start: u64,
    pub end: u64,
    /// `rwxp`: read, write, execute, then `p` private or `s` shared.
    pub perms: &'a str,
    pub inode: u64,
    /// The path, `[heap]`, `[stack]`, `[vdso]`...; empty when anonymous.
    pub name: &'a str,
}

impl Mapping<'_> {
    fn perm(&self, at: usize, c: u8) -> bool {
        self.perms.as_bytes().get(at) == Some(&c)
    }
    pub fn readable(&self) -> bool {
        self.perm(0, b'r')
    }
    pub fn writable(&self) -> bool {
        self.perm(1, b'w')
    }
    pub fn executable(&self) -> bool {
        self.perm(2, b'x')
    }
    pub fn private(&self) -> bool {
        self.perm(3, b'p')
    }
    /// Backed by a file (its inode), rather than anonymous memory.
    pub fn file_backed(&self) -> bool {
        self.inode != 0
    }
    /// The kernel's own pages (`[vvar]`, `[vvar_vclock]`, `[vsyscall]`):
    /// not readable through `mem`, and never dumped by CRIU.
    pub fn kernel_only(&self) -> bool {
        self.name == "[vsyscall]" || self.name.starts_with("[vvar")
    }
    /// Its pages, by virtual page number: `first..last`.
    pub fn page_numbers(&self) -> std::ops::Range<u64> {
        self.start / PAGE..self.end / PAGE
    }
}

/// The one parser of `/proc/<pid>/maps` (lines that do not parse are
/// skipped: a process's maps are read while it runs).
pub fn mappings(text: &str) -> impl Iterator<Item = Mapping<'_>> {
    fn field<'a>(rest: &mut &'a str) -> Option<&'a str> {
        let t = rest.trim_start();
        let (f, r) = t.split_at(t.find(char::is_whitespace).unwrap_or(t.len()));
        *rest = r;
        Some(f).filter(|f| !f.is_empty())
    }
    text.lines().filter_map(|line| {
        let mut rest = line;
        let range = field(&mut rest)?;
        let perms = field(&mut rest)?;
        let _offset = field(&mut rest)?;
        let _dev = field(&mut rest)?;
        let inode = field(&mut rest)?.parse().ok()?;
        let (start, end) = range.split_once('-')?;
        Some(Mapping {
            start: u64::from_str_radix(start, 16).ok()?,
            end: u64::from_str_radix(end, 16).ok()?,
            perms,
            inode,
            // a path may hold spaces: the name is the rest of the line
            name: rest.trim(),
        })
    })
}

/// Parses `/proc/<pid>/maps`, keeping private writable mappings.
pub fn parse_maps(text: &str) -> Vec<Region> {
    mappings(text)
        .filter(|m| m.readable() && m.writable() && m.private() && !m.kernel_only())
        .map(|m| Region {
            start: m.start,
            end: m.end,
        })
        .collect()
}

/// A page of the processes, as `/proc/<pid>/pagemap` counts them.
const PAGE: u64 = BLOCK_SIZE as u64;

// Bits of a `/proc/<pid>/pagemap` entry, one native-endian u64 per virtual
// page (the kernel's `Documentation/admin-guide/mm/pagemap.rst`).

/// The page is in memory.
pub const PM_PRESENT: u64 = 1 << 63;
/// The page is in swap.
pub const PM_SWAP: u64 = 1 << 62;
/// The page is file-backed or shared anonymous (since Linux 3.5).
pub const PM_FILE: u64 = 1 << 61;
/// The page was written since soft-dirty bits were last cleared (kernels
/// built with soft-dirty tracking only; this one is not).
pub const PM_SOFT_DIRTY: u64 = 1 << 55;
/// Bits 0-54 of a present page: its frame number (zero without
/// CAP_SYS_ADMIN). Of a swapped page they are its swap type and offset.
pub const PM_PFN_MASK: u64 = (1 << 55) - 1;
/// Bytes of one entry.
const PM_ENTRY_LEN: usize = std::mem::size_of::<u64>();
/// Entries a reader takes at once (32 KiB, one `pread`).
pub const PAGEMAP_CHUNK: u64 = 4096;

/// One `/proc/<pid>/pagemap` entry; the one place its bits are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageEntry(pub u64);

impl PageEntry {
    pub fn present(self) -> bool {
        self.0 & PM_PRESENT != 0
    }
    pub fn swapped(self) -> bool {
        self.0 & PM_SWAP != 0
    }
    /// A page with content: in memory or in swap (what a dump holds).
    pub fn present_or_swapped(self) -> bool {
        self.0 & (PM_PRESENT | PM_SWAP) != 0
    }
    /// File-backed or shared anonymous.
    pub fn file_or_shared(self) -> bool {
        self.0 & PM_FILE != 0
    }
    pub fn soft_dirty(self) -> bool {
        self.0 & PM_SOFT_DIRTY != 0
    }
    /// The page frame of a page in memory (zero when the kernel hides it).
    pub fn pfn(self) -> Option<u64> {
        (self.present() && !self.swapped()).then_some(self.0 & PM_PFN_MASK)
    }
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
///
/// Read by hand rather than with the `procfs` crate (0.18:
/// `Process::maps()`, `pagemap()` with `PageInfo`), measured on a process
/// with 512 MiB and 1 GiB of present pages (release build, thread CPU time,
/// 41 interleaved runs on the shared 2-core development machine): its maps
/// reading is as fast (~0.05 ms either way), but its pagemap pass costs
/// 6-15% more than one 32 KiB `pread` per [`PAGEMAP_CHUNK`] entries here
/// (512 MiB: 15.5 vs 13.4 ms best, 17.2 vs 15.9 median; 1 GiB: 24.0 vs
/// 22.1 best, 27.9 vs 24.7 median): it reads through an 8 KiB buffer,
/// decodes each entry into an enum, and needs the pagemap `&mut`. That is
/// under 1% of a whole pre-copy scan (presence, `mem` reads, hashing:
/// ~300 ms of CPU per 512 MiB), so speed alone barely decides; but the
/// crate would add two crates (procfs, procfs-core) to the build to replace
/// ~60 lines that are all of `/proc` MOSE reads, and make the pass every
/// round and every dirty-rate sample runs slower, not faster.
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

    /// Its mappings (see [`mappings`]).
    pub fn mappings(&self) -> impl Iterator<Item = Mapping<'_>> {
        mappings(&self.maps)
    }

    /// Its private writable mappings (see [`parse_maps`]).
    pub fn private_writable(&self) -> Vec<Region> {
        parse_maps(&self.maps)
    }

    /// The pagemap entries of `n` pages from virtual page number `first`;
    /// None when they cannot be read (the process is gone, or the range is
    /// not mapped).
    pub fn entries(&self, first: u64, n: usize) -> Option<Vec<PageEntry>> {
        let mut raw = vec![0u8; n.checked_mul(PM_ENTRY_LEN)?];
        let at = first.checked_mul(PM_ENTRY_LEN as u64)?;
        self.pagemap.read_exact_at(&mut raw, at).ok()?;
        let (entries, _) = raw.as_chunks::<PM_ENTRY_LEN>();
        Some(
            entries
                .iter()
                .map(|e| PageEntry(u64::from_ne_bytes(*e)))
                .collect(),
        )
    }
}

/// What a consumer of [`scan`]'s batches returns when it takes no more
/// (the round was aborted: the link failed, or the sender gave up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("round aborted")]
pub struct ConsumerStopped;

/// Why a memory scan of a pre-copy round ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// The consumer stopped taking batches mid-round.
    #[error(transparent)]
    Stopped(#[from] ConsumerStopped),
    /// The consumer stopped before the round's last batch.
    #[error("sending the last blocks of a round")]
    LastBlocks(#[source] ConsumerStopped),
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
) -> Result<ScanStats, ScanError>
where
    F: FnMut(Vec<(BlockHash, Vec<u8>)>) -> Result<(), ConsumerStopped>,
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
        for r in pm_proc.private_writable() {
            let pages = ((r.end - r.start) / BLOCK_SIZE as u64) as usize;
            let mut first = 0usize;
            while first < pages {
                let n = (PAGEMAP_CHUNK as usize).min(pages - first);
                let Some(pm) = pm_proc.entries(r.start / BLOCK_SIZE as u64 + first as u64, n)
                else {
                    break;
                };
                let mut i = 0;
                while i < n {
                    let present = |j: usize| pm[j].present_or_swapped();
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
        emit(batch).map_err(ScanError::LastBlocks)?;
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
        let mem = &proc_mem.mem;
        let mut buf = vec![0u8; BLOCK_SIZE];
        // CRIU injects its parasite into the first executable mapping: that
        // page is copied-on-write, hence dumped, by the time CRIU looks
        let mut exec_seen = false;
        for m in proc_mem.mappings() {
            if !m.private() || m.kernel_only() {
                continue;
            }
            let vdso = m.name == "[vdso]";
            let poked = !exec_seen && m.executable() && !vdso;
            exec_seen |= poked;
            let pages = m.page_numbers();
            let mut first = pages.start;
            while first < pages.end {
                let n = (pages.end - first).min(PAGEMAP_CHUNK);
                let Some(pm) = proc_mem.entries(first, n as usize) else {
                    break;
                };
                for (i, e) in pm.into_iter().enumerate() {
                    let page_no = first + i as u64;
                    let dump = vdso
                        || (poked && page_no == pages.start)
                        || (!(m.file_backed() && e.file_or_shared()) && e.present_or_swapped());
                    if !dump {
                        continue;
                    }
                    let addr = page_no * page;
                    let h = match seen.get(&(pid, addr)) {
                        Some(h) => *h,
                        None if mem.read_exact_at(&mut buf, addr).is_ok() => hash_block(&buf),
                        None => zero_hash(),
                    };
                    hashes.push((addr, h));
                }
                first += n;
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
    fn reads_every_field_of_a_maps_line() {
        let maps = "\
00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/dbus daemon (deleted)
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
7ffd00000000-7ffd00002000 r--p 00000000 00:00 0                          [vvar_vclock]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
not a maps line
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 notanumber [stack]
";
        let m: Vec<_> = mappings(maps).collect();
        assert_eq!(m.len(), 4, "{m:?}");
        assert_eq!(
            m[0],
            Mapping {
                start: 0x400000,
                end: 0x452000,
                perms: "r-xp",
                inode: 173521,
                name: "/usr/bin/dbus daemon (deleted)",
            }
        );
        assert!(m[0].executable() && m[0].private() && m[0].file_backed() && !m[0].writable());
        assert_eq!(m[0].page_numbers(), 0x400..0x452);
        assert!(m[1].readable() && m[1].writable() && !m[1].file_backed());
        assert_eq!(m[1].name, "");
        assert!(m[2].kernel_only() && m[3].kernel_only() && !m[1].kernel_only());
    }

    #[test]
    fn decodes_pagemap_bits() {
        let e = PageEntry(PM_PRESENT | PM_SOFT_DIRTY | 0x1234);
        assert!(e.present() && e.present_or_swapped() && e.soft_dirty());
        assert!(!e.swapped() && !e.file_or_shared());
        assert_eq!(e.pfn(), Some(0x1234));
        let e = PageEntry(PM_SWAP | PM_FILE | 0x5);
        assert!(e.swapped() && e.present_or_swapped() && e.file_or_shared());
        assert_eq!(e.pfn(), None);
        assert!(!PageEntry(0).present_or_swapped());
        // this process: a buffer it wrote is in memory, anonymous
        let buf = vec![7u8; 16 * BLOCK_SIZE];
        let pm = ProcMemory::open(std::process::id()).unwrap();
        let first = (buf.as_ptr() as u64).div_ceil(PAGE);
        let e = pm.entries(first, 8).unwrap();
        assert_eq!(e.len(), 8);
        assert!(
            e.iter().all(|e| e.present() && !e.file_or_shared()),
            "{e:x?}"
        );
        assert!(pm
            .private_writable()
            .iter()
            .any(|r| r.start <= first * PAGE && first * PAGE < r.end));
        std::hint::black_box(&buf);
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
