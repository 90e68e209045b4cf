//! Reading CRIU's pagemap images: which pages a checkpoint holds, where in
//! `pages-N.img` each one lies, and which ones CRIU would restore lazily.
//!
//! Format (CRIU `images/pagemap.proto`): two 32-bit magics, then records of
//! `[u32 LE length][protobuf]`: one `pagemap_head { pages_id = 1 }`, then
//! `pagemap_entry { vaddr = 1; compat_nr_pages = 2; in_parent = 3; flags = 4;
//! nr_pages = 5 }` in address order. Present entries take their pages from
//! `pages-<pages_id>.img` one after another.

use std::{collections::BTreeMap, path::Path};

use anyhow::{anyhow, bail, Context, Result};

/// Pages live in a parent (pre-dump) image.
pub const PE_PARENT: u32 = 1;
/// Pages CRIU can restore lazily (private anonymous memory, not the stack).
pub const PE_LAZY: u32 = 2;
/// Pages are stored in `pages-<id>.img`.
pub const PE_PRESENT: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagemapEntry {
    pub vaddr: u64,
    pub nr_pages: u64,
    pub flags: u32,
}

impl PagemapEntry {
    pub fn is_lazy(&self) -> bool {
        self.flags & PE_LAZY != 0
    }
    pub fn is_present(&self) -> bool {
        self.flags & PE_PRESENT != 0
    }
}

/// One process's pagemap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pagemap {
    pub pages_id: u32,
    pub entries: Vec<PagemapEntry>,
}

/// A run of lazy pages: where the process had them and where their content
/// sits in the pages image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LazyRun {
    pub vaddr: u64,
    pub nr_pages: u64,
    /// Index of the run's first page in `pages-<pages_id>.img`.
    pub slot: u64,
}

/// The lazy pages of one process of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LazyProcess {
    /// The process as numbered in the checkpoint (what CRIU hands over).
    pub pid: u32,
    pub pages_id: u32,
    pub runs: Vec<LazyRun>,
}

impl LazyProcess {
    pub fn pages(&self) -> u64 {
        self.runs.iter().map(|r| r.nr_pages).sum()
    }
}

impl Pagemap {
    pub fn parse(data: &[u8]) -> Result<Self> {
        if data.len() < 8 {
            bail!("pagemap image of {} bytes has no magic", data.len());
        }
        let mut at = 8;
        let mut records = Vec::new();
        while at < data.len() {
            let len = u32::from_le_bytes(
                data.get(at..at + 4)
                    .ok_or_else(|| anyhow!("pagemap record header cut at byte {at}"))?
                    .try_into()?,
            ) as usize;
            at += 4;
            let rec = data
                .get(at..at + len)
                .ok_or_else(|| anyhow!("pagemap record of {len} bytes cut at byte {at}"))?;
            records.push(rec);
            at += len;
        }
        let (head, rest) = records
            .split_first()
            .ok_or_else(|| anyhow!("pagemap image has no head record"))?;
        let pages_id = fields(head)?
            .get(&1)
            .copied()
            .ok_or_else(|| anyhow!("pagemap head has no pages_id"))? as u32;
        let mut entries = Vec::with_capacity(rest.len());
        for rec in rest {
            let f = fields(rec)?;
            let vaddr = *f
                .get(&1)
                .ok_or_else(|| anyhow!("pagemap entry has no vaddr"))?;
            let nr_pages = f.get(&5).or_else(|| f.get(&2)).copied().unwrap_or(0);
            let flags = match f.get(&4) {
                Some(fl) => *fl as u32,
                // images older than the flags field: in_parent or present
                None if f.get(&3).copied().unwrap_or(0) != 0 => PE_PARENT,
                None => PE_PRESENT,
            };
            entries.push(PagemapEntry {
                vaddr,
                nr_pages,
                flags,
            });
        }
        Ok(Self { pages_id, entries })
    }

    pub fn read(path: &Path) -> Result<Self> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&data).with_context(|| format!("parsing {}", path.display()))
    }

    /// Present entries with the index of their first page in the pages image.
    pub fn present_runs(&self) -> impl Iterator<Item = (u64, &PagemapEntry)> {
        self.entries
            .iter()
            .filter(|e| e.is_present())
            .scan(0u64, |slot, e| {
                let at = *slot;
                *slot += e.nr_pages;
                Some((at, e))
            })
    }
}

/// Varint fields of a protobuf record (other wire types are skipped).
fn fields(rec: &[u8]) -> Result<BTreeMap<u32, u64>> {
    let mut out = BTreeMap::new();
    let mut at = 0;
    while at < rec.len() {
        let key = varint(rec, &mut at)?;
        let (field, wire) = ((key >> 3) as u32, key & 7);
        match wire {
            0 => {
                let v = varint(rec, &mut at)?;
                out.insert(field, v);
            }
            1 => at += 8,
            2 => {
                let n = varint(rec, &mut at)? as usize;
                at += n;
            }
            5 => at += 4,
            w => bail!("pagemap record: unsupported protobuf wire type {w}"),
        }
        if at > rec.len() {
            bail!("pagemap record: field {field} runs past the record");
        }
    }
    Ok(out)
}

fn varint(b: &[u8], at: &mut usize) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b
            .get(*at)
            .ok_or_else(|| anyhow!("pagemap record: varint cut short"))?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    bail!("pagemap record: varint longer than 64 bits")
}

/// The lazy pages of every process in a checkpoint directory, and for each
/// pages image which of its slots are lazy.
pub struct LazyLayout {
    pub processes: Vec<LazyProcess>,
    /// `pages-N.img` → one flag per page slot: true when the page is lazy.
    pub lazy_slots: BTreeMap<String, Vec<bool>>,
}

impl LazyLayout {
    /// Reads every `pagemap-<pid>.img` in `dir`.
    pub fn read(dir: &Path) -> Result<Self> {
        let mut maps = Vec::new();
        for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().to_string();
            let Some(pid) = name
                .strip_prefix("pagemap-")
                .and_then(|r| r.strip_suffix(".img"))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            maps.push((pid, Pagemap::read(&e.path())?));
        }
        Ok(Self::from_pagemaps(maps))
    }

    pub fn from_pagemaps(mut maps: Vec<(u32, Pagemap)>) -> Self {
        maps.sort_by_key(|(pid, _)| *pid);
        let mut processes = Vec::new();
        let mut lazy_slots = BTreeMap::new();
        for (pid, map) in maps {
            let slots: &mut Vec<bool> = lazy_slots
                .entry(format!("pages-{}.img", map.pages_id))
                .or_default();
            let mut runs = Vec::new();
            for (slot, e) in map.present_runs() {
                let end = (slot + e.nr_pages) as usize;
                if slots.len() < end {
                    slots.resize(end, false);
                }
                if e.is_lazy() {
                    slots[slot as usize..end].iter_mut().for_each(|s| *s = true);
                    runs.push(LazyRun {
                        vaddr: e.vaddr,
                        nr_pages: e.nr_pages,
                        slot,
                    });
                }
            }
            processes.push(LazyProcess {
                pid,
                pages_id: map.pages_id,
                runs,
            });
        }
        Self {
            processes,
            lazy_slots,
        }
    }

    pub fn pages(&self) -> u64 {
        self.processes.iter().map(|p| p.pages()).sum()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn varint_into(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn record(fields: &[(u32, u64)]) -> Vec<u8> {
        let mut r = Vec::new();
        for (f, v) in fields {
            varint_into(u64::from(*f) << 3, &mut r);
            varint_into(*v, &mut r);
        }
        let mut out = (r.len() as u32).to_le_bytes().to_vec();
        out.extend(r);
        out
    }

    /// A pagemap image as CRIU writes it.
    pub(crate) fn image(pages_id: u64, entries: &[(u64, u64, u32)]) -> Vec<u8> {
        let mut img = vec![0x19, 0x43, 0x56, 0x54, 0x25, 0x40, 0x08, 0x56];
        img.extend(record(&[(1, pages_id)]));
        for (vaddr, nr, flags) in entries {
            img.extend(record(&[(1, *vaddr), (2, *nr), (4, u64::from(*flags))]));
        }
        img
    }

    #[test]
    fn parses_entries_and_finds_lazy_slots() {
        let img = image(
            3,
            &[
                (0x400000, 2, PE_PRESENT),
                (0x7f0000000000, 4, PE_PRESENT | PE_LAZY),
                (0x7f0000010000, 1, PE_PARENT),
                (0x7ffff000, 1, PE_PRESENT),
            ],
        );
        let map = Pagemap::parse(&img).unwrap();
        assert_eq!(map.pages_id, 3);
        assert_eq!(map.entries.len(), 4);
        let slots: Vec<u64> = map.present_runs().map(|(s, _)| s).collect();
        assert_eq!(slots, vec![0, 2, 6]);
        let l = LazyLayout::from_pagemaps(vec![(1, map)]);
        assert_eq!(l.pages(), 4);
        assert_eq!(
            l.processes[0].runs,
            vec![LazyRun {
                vaddr: 0x7f0000000000,
                nr_pages: 4,
                slot: 2
            }]
        );
        assert_eq!(
            l.lazy_slots["pages-3.img"],
            vec![false, false, true, true, true, true, false]
        );
    }

    #[test]
    fn rejects_cut_and_garbage_images() {
        let img = image(1, &[(0x1000, 1, PE_PRESENT)]);
        let e = Pagemap::parse(&img[..img.len() - 2]).unwrap_err();
        assert!(format!("{e:#}").contains("cut"), "{e:#}");
        assert!(Pagemap::parse(&[1, 2, 3]).is_err());
        let mut bad = img[..8].to_vec();
        bad.extend([2, 0, 0, 0, 0x0b, 0x00]); // wire type 3
        assert!(format!("{:#}", Pagemap::parse(&bad).unwrap_err()).contains("wire type"));
    }
}
