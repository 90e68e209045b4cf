//! Reading CRIU's pagemap images: which pages a checkpoint holds, where in
//! `pages-N.img` each one lies, and which ones CRIU would restore lazily.
//!
//! An image is CRIU's framing around protobuf records: two little-endian u32
//! magics ([`IMG_COMMON_MAGIC`], then [`PAGEMAP_MAGIC`]), then records of
//! `[u32 LE length][protobuf message]`: one `pagemap_head`, then one
//! `pagemap_entry` per run of pages. Present entries take their pages from
//! `pages-<pages_id>.img` one after another. The framing is read here; the
//! messages are decoded by prost from the declarations in [`proto`].

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use mose_wire::BLOCK_SIZE;
use prost::Message as _;

/// Which record of a pagemap image an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryAt {
    /// The entry's index after the head.
    pub index: usize,
    /// The offset of the record's length prefix.
    pub at: usize,
}

impl std::fmt::Display for EntryAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pagemap entry #{} (record at byte {})",
            self.index, self.at
        )
    }
}

/// Why a CRIU image (a pagemap, or the checkpoint directory holding them)
/// could not be read: what is wrong, and at which byte or in which file.
#[derive(Debug, thiserror::Error)]
pub enum PagemapError {
    #[error("{what} of {len} bytes has no {name} magic")]
    NoMagic {
        what: &'static str,
        len: usize,
        name: &'static str,
    },
    #[error("{what}: magic at byte {at} is {got:#010x}, not the {name} magic {want:#010x}")]
    WrongMagic {
        what: &'static str,
        at: usize,
        got: u32,
        name: &'static str,
        want: u32,
    },
    #[error(
        "{what}: the length of the record at byte {at} is cut ({got} of {RECORD_LEN_LEN} bytes)"
    )]
    LengthCut {
        what: &'static str,
        at: usize,
        got: usize,
    },
    #[error(
        "{what}: the record at byte {at} is cut: its length says {len} bytes, {remain} remain"
    )]
    RecordCut {
        what: &'static str,
        at: usize,
        len: usize,
        remain: usize,
    },
    #[error("pagemap image has no head record")]
    NoHead,
    #[error("pagemap head (record at byte {at})")]
    Head {
        at: usize,
        #[source]
        source: prost::DecodeError,
    },
    #[error("pagemap head (record at byte {at}) has no pages_id")]
    NoPagesId { at: usize },
    #[error("{entry}")]
    Entry {
        entry: EntryAt,
        #[source]
        source: prost::DecodeError,
    },
    #[error("{entry}: it has no vaddr")]
    NoVaddr { entry: EntryAt },
    #[error("{entry}: it has neither nr_pages nor compat_nr_pages")]
    NoNrPages { entry: EntryAt },
    #[error("{entry}: its vaddr {vaddr:#x} is not on a page boundary")]
    Unaligned { entry: EntryAt, vaddr: u64 },
    #[error("{entry}: its {nr_pages} pages from {vaddr:#x} run past the end of the address space")]
    PastEnd {
        entry: EntryAt,
        vaddr: u64,
        nr_pages: u64,
    },
    #[error(
        "{entry}: present and lazy pages add up past {MAX_PRESENT_PAGES} (1 TiB), more than MOSE takes from one checkpoint"
    )]
    TooManyPresent { entry: EntryAt },
    #[error("reading {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {}", .path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<PagemapError>,
    },
}

type Result<T, E = PagemapError> = std::result::Result<T, E>;

/// Pages live in a parent (pre-dump) image.
pub const PE_PARENT: u32 = 1;
/// Pages CRIU can restore lazily (private anonymous memory, not the stack).
pub const PE_LAZY: u32 = 2;
/// Pages are stored in `pages-<id>.img`.
pub const PE_PRESENT: u32 = 4;

/// First u32 of every image of a checkpoint in CRIU's current image format
/// (`img_version` 2, "v1.1"): `IMG_COMMON_MAGIC` in `criu/include/magic.h`.
/// Images of the older v1 format (`img_version` 1), without it, are not read.
const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
/// Second u32 of a pagemap image: `PAGEMAP_MAGIC` in `criu/include/magic.h`.
const PAGEMAP_MAGIC: u32 = 0x5608_4025;
/// Bytes of one magic.
const MAGIC_LEN: usize = 4;
/// Bytes of the length that prefixes each protobuf record.
const RECORD_LEN_LEN: usize = 4;
/// A page of the checkpointed processes, as CRIU counts `nr_pages`.
const PAGE: u64 = BLOCK_SIZE as u64;
/// The most present pages one pagemap may describe (1 TiB of 4 KiB pages).
/// Nothing in the image bounds `nr_pages`, and [`LazyLayout`] keeps a flag
/// per present page (the receiver also walks every lazy page), so a corrupt
/// count must be refused before it becomes an allocation; no container MOSE
/// migrates (its dump sits in the source's tmpfs) comes near this.
pub const MAX_PRESENT_PAGES: u64 = 1 << 28;

/// CRIU's image messages that MOSE reads, declared by hand from
/// `images/pagemap.proto` of checkpoint-restore/criu at commit
/// 2cf8f13ca1f11a0491977e438b262e646137256c (the file last changed in
/// afb2e6c3f95dd0b15f739d9669bd7eaf120a2f31). The proto's `required` fields
/// are `optional` here: prost does not check presence, and a missing field
/// must be an error that names it, not a silent zero.
///
/// `inventory.img` is not declared: MOSE only checks that it exists.
mod proto {
    /// `message pagemap_head`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PagemapHead {
        /// `required uint32 pages_id = 1`: the N of `pages-N.img`.
        #[prost(uint32, optional, tag = "1")]
        pub pages_id: Option<u32>,
    }

    /// `message pagemap_entry`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PagemapEntry {
        /// `required uint64 vaddr = 1`.
        #[prost(uint64, optional, tag = "1")]
        pub vaddr: Option<u64>,
        /// `required uint32 compat_nr_pages = 2`: the count before
        /// `nr_pages` existed (CRIU now writes 0 here).
        #[prost(uint32, optional, tag = "2")]
        pub compat_nr_pages: Option<u32>,
        /// `optional bool in_parent = 3`: the pages are in the parent image
        /// (images older than `flags`).
        #[prost(bool, optional, tag = "3")]
        pub in_parent: Option<bool>,
        /// `optional uint32 flags = 4`: `PE_*`.
        #[prost(uint32, optional, tag = "4")]
        pub flags: Option<u32>,
        /// `optional uint64 nr_pages = 5`.
        #[prost(uint64, optional, tag = "5")]
        pub nr_pages: Option<u64>,
    }
}

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

    /// The entry as CRIU's page reader sees it (`init_compat_pagemap_entry`
    /// in `criu/pagemap.c`): images older than `flags` mark parent pages with
    /// `in_parent` and everything else present; images older than
    /// `nr_pages` count in `compat_nr_pages`. Refuses what no dump holds: a
    /// missing field, an address not on a page boundary, a run past the end
    /// of the address space.
    fn from_record(rec: proto::PagemapEntry, entry: EntryAt) -> Result<Self> {
        let vaddr = rec.vaddr.ok_or(PagemapError::NoVaddr { entry })?;
        let nr_pages = rec
            .nr_pages
            .or(rec.compat_nr_pages.map(u64::from))
            .ok_or(PagemapError::NoNrPages { entry })?;
        let flags = match (rec.in_parent == Some(true), rec.flags) {
            (true, flags) => flags.unwrap_or(0) | PE_PARENT,
            (false, Some(flags)) => flags,
            (false, None) => PE_PRESENT,
        };
        if !vaddr.is_multiple_of(PAGE) {
            return Err(PagemapError::Unaligned { entry, vaddr });
        }
        if nr_pages
            .checked_mul(PAGE)
            .and_then(|len| vaddr.checked_add(len))
            .is_none()
        {
            return Err(PagemapError::PastEnd {
                entry,
                vaddr,
                nr_pages,
            });
        }
        Ok(Self {
            vaddr,
            nr_pages,
            flags,
        })
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
    /// Index of the run's first page in `pages-<pages_id>.img`; `None` for a
    /// lazy dump's run (flags `PE_LAZY` alone: the content stayed in the
    /// frozen process, served by CRIU's page server).
    pub slot: Option<u64>,
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

/// The protobuf records of a CRIU image after its two magics, each with the
/// offset of its length prefix; the image's own length bounds every record
/// (a length field never sizes an allocation).
struct Records<'a> {
    /// What the image is, for errors ("pagemap image").
    what: &'static str,
    data: &'a [u8],
    at: usize,
}

impl<'a> Records<'a> {
    fn new(what: &'static str, data: &'a [u8], magic: u32) -> Result<Self> {
        let mut at = 0;
        for (name, want) in [("CRIU image", IMG_COMMON_MAGIC), (what, magic)] {
            let got = data
                .get(at..)
                .and_then(<[u8]>::first_chunk::<MAGIC_LEN>)
                .ok_or(PagemapError::NoMagic {
                    what,
                    len: data.len(),
                    name,
                })?;
            let got = u32::from_le_bytes(*got);
            if got != want {
                return Err(PagemapError::WrongMagic {
                    what,
                    at,
                    got,
                    name,
                    want,
                });
            }
            at += MAGIC_LEN;
        }
        Ok(Self { what, data, at })
    }
}

impl<'a> Iterator for Records<'a> {
    /// (offset of the record's length prefix, the record).
    type Item = Result<(usize, &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        let (what, at) = (self.what, self.at);
        let rest = self.data.get(at..).filter(|r| !r.is_empty())?;
        // an error ends the iteration: nothing after it can be framed
        self.at = self.data.len();
        let Some((len, body)) = rest.split_first_chunk::<RECORD_LEN_LEN>() else {
            return Some(Err(PagemapError::LengthCut {
                what,
                at,
                got: rest.len(),
            }));
        };
        let len = u32::from_le_bytes(*len) as usize;
        let Some(rec) = body.get(..len) else {
            return Some(Err(PagemapError::RecordCut {
                what,
                at,
                len,
                remain: body.len(),
            }));
        };
        self.at = at + RECORD_LEN_LEN + len;
        Some(Ok((at, rec)))
    }
}

impl Pagemap {
    pub fn parse(data: &[u8]) -> Result<Self> {
        let mut records = Records::new("pagemap image", data, PAGEMAP_MAGIC)?;
        let (at, head) = records.next().ok_or(PagemapError::NoHead)??;
        let pages_id = proto::PagemapHead::decode(head)
            .map_err(|source| PagemapError::Head { at, source })?
            .pages_id
            .ok_or(PagemapError::NoPagesId { at })?;
        let mut entries = Vec::new();
        let mut present = 0u64;
        for (i, rec) in records.enumerate() {
            let (at, rec) = rec?;
            let entry = EntryAt { index: i, at };
            let e = proto::PagemapEntry::decode(rec)
                .map_err(|source| PagemapError::Entry { entry, source })
                .and_then(|rec| PagemapEntry::from_record(rec, entry))?;
            if e.is_present() || e.is_lazy() {
                present = present.saturating_add(e.nr_pages);
                if present > MAX_PRESENT_PAGES {
                    return Err(PagemapError::TooManyPresent { entry });
                }
            }
            entries.push(e);
        }
        Ok(Self { pages_id, entries })
    }

    pub fn read(path: &Path) -> Result<Self> {
        let data = std::fs::read(path).map_err(|source| PagemapError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&data).map_err(|e| PagemapError::Parse {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Present entries with the index of their first page in the pages image.
    pub fn present_runs(&self) -> impl Iterator<Item = (u64, &PagemapEntry)> {
        self.entries
            .iter()
            .filter(|e| e.is_present())
            .scan(0u64, |slot, e| {
                let at = *slot;
                *slot = slot.saturating_add(e.nr_pages);
                Some((at, e))
            })
    }
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
        let unreadable = |source| PagemapError::Read {
            path: dir.to_path_buf(),
            source,
        };
        for e in std::fs::read_dir(dir).map_err(unreadable)? {
            let e = e.map_err(unreadable)?;
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

    /// The layout of parsed pagemaps. Their sizes are those
    /// [`Pagemap::parse`] accepts: at most [`MAX_PRESENT_PAGES`] present
    /// pages each.
    pub fn from_pagemaps(mut maps: Vec<(u32, Pagemap)>) -> Self {
        maps.sort_by_key(|(pid, _)| *pid);
        let mut processes = Vec::new();
        let mut lazy_slots = BTreeMap::new();
        for (pid, map) in maps {
            let slots: &mut Vec<bool> = lazy_slots
                .entry(format!("pages-{}.img", map.pages_id))
                .or_default();
            let mut runs = Vec::new();
            let mut next_slot = 0u64;
            for e in &map.entries {
                if !e.is_present() {
                    // a lazy dump's lazy run has no slot; parent pages are
                    // never lazy
                    if e.is_lazy() && e.flags & PE_PARENT == 0 {
                        runs.push(LazyRun {
                            vaddr: e.vaddr,
                            nr_pages: e.nr_pages,
                            slot: None,
                        });
                    }
                    continue;
                }
                let slot = next_slot;
                next_slot = next_slot.saturating_add(e.nr_pages);
                let (from, to) = (slot as usize, next_slot as usize);
                if slots.len() < to {
                    slots.resize(to, false);
                }
                if e.is_lazy() {
                    slots[from..to].fill(true);
                    runs.push(LazyRun {
                        vaddr: e.vaddr,
                        nr_pages: e.nr_pages,
                        slot: Some(slot),
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

    /// CRIU's framing around one message: its u32 LE length, then it.
    fn record(msg: &impl prost::Message) -> Vec<u8> {
        let body = msg.encode_to_vec();
        let mut out = (body.len() as u32).to_le_bytes().to_vec();
        out.extend(body);
        out
    }

    fn magics() -> Vec<u8> {
        [IMG_COMMON_MAGIC, PAGEMAP_MAGIC]
            .iter()
            .flat_map(|m| m.to_le_bytes())
            .collect()
    }

    fn entry(vaddr: u64, nr_pages: u64, flags: u32) -> proto::PagemapEntry {
        // as CRIU 4 writes it: compat_nr_pages left 0, the count in nr_pages
        proto::PagemapEntry {
            vaddr: Some(vaddr),
            compat_nr_pages: Some(0),
            in_parent: None,
            flags: Some(flags),
            nr_pages: Some(nr_pages),
        }
    }

    fn image_of(pages_id: u32, entries: &[proto::PagemapEntry]) -> Vec<u8> {
        let mut img = magics();
        img.extend(record(&proto::PagemapHead {
            pages_id: Some(pages_id),
        }));
        for e in entries {
            img.extend(record(e));
        }
        img
    }

    /// A pagemap image as CRIU writes it.
    pub(crate) fn image(pages_id: u64, entries: &[(u64, u64, u32)]) -> Vec<u8> {
        let entries: Vec<_> = entries
            .iter()
            .map(|&(vaddr, nr, flags)| entry(vaddr, nr, flags))
            .collect();
        image_of(pages_id as u32, &entries)
    }

    /// A lazy dump (`criu dump --lazy-pages`) writes its lazy runs with
    /// `PE_LAZY` alone: no slot in the pages image, content served later.
    #[test]
    fn a_lazy_dumps_runs_have_no_slot() {
        let img = image(
            4,
            &[
                (0x400000, 2, PE_PRESENT),
                (0x7f0000000000, 3, PE_LAZY),
                (0x7f0000010000, 1, PE_PARENT),
                (0x7ffff000, 1, PE_PRESENT),
            ],
        );
        let l = LazyLayout::from_pagemaps(vec![(1, Pagemap::parse(&img).unwrap())]);
        assert_eq!(
            l.processes[0].runs,
            vec![LazyRun {
                vaddr: 0x7f0000000000,
                nr_pages: 3,
                slot: None
            }]
        );
        assert_eq!(l.pages(), 3);
        // the pages image holds the three present pages, none of them lazy
        assert_eq!(l.lazy_slots["pages-4.img"], vec![false; 3]);
    }

    #[test]
    fn a_huge_lazy_run_is_refused_like_a_huge_present_one() {
        let img = image(4, &[(0x400000, MAX_PRESENT_PAGES + 1, PE_LAZY)]);
        assert!(matches!(
            Pagemap::parse(&img),
            Err(PagemapError::TooManyPresent { .. })
        ));
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
                slot: Some(2)
            }]
        );
        assert_eq!(
            l.lazy_slots["pages-3.img"],
            vec![false, false, true, true, true, true, false]
        );
    }

    #[test]
    fn reads_the_bytes_criu_writes() {
        // written out by hand as protobuf-c packs them, not through prost
        let img = [
            0x19, 0x43, 0x56, 0x54, // IMG_COMMON_MAGIC
            0x25, 0x40, 0x08, 0x56, // PAGEMAP_MAGIC
            2, 0, 0, 0, 0x08, 0x03, // head: pages_id = 3
            11, 0, 0, 0, // entry: vaddr = 0x400000, compat_nr_pages = 0,
            0x08, 0x80, 0x80, 0x80, 0x02, 0x10, 0x00, // flags = PE_PRESENT,
            0x20, 0x04, 0x28, 0x02, // nr_pages = 2
        ];
        assert_eq!(img[..8], magics()[..]);
        let map = Pagemap::parse(&img).unwrap();
        assert_eq!(
            map,
            Pagemap {
                pages_id: 3,
                entries: vec![PagemapEntry {
                    vaddr: 0x400000,
                    nr_pages: 2,
                    flags: PE_PRESENT
                }]
            }
        );
        assert_eq!(image(3, &[(0x400000, 2, PE_PRESENT)]), img);
    }

    #[test]
    fn reads_entries_of_older_images_as_criu_does() {
        let old = |vaddr, compat, in_parent, flags| proto::PagemapEntry {
            vaddr: Some(vaddr),
            compat_nr_pages: Some(compat),
            in_parent,
            flags,
            nr_pages: None,
        };
        let img = image_of(
            1,
            &[
                old(0x1000, 2, None, None),
                old(0x3000, 1, Some(true), None),
                old(0x4000, 1, Some(false), None),
                old(0x5000, 3, Some(true), Some(PE_LAZY)),
            ],
        );
        let got: Vec<_> = Pagemap::parse(&img)
            .unwrap()
            .entries
            .iter()
            .map(|e| (e.nr_pages, e.flags))
            .collect();
        assert_eq!(
            got,
            vec![
                (2, PE_PRESENT),
                (1, PE_PARENT),
                (1, PE_PRESENT),
                (3, PE_PARENT | PE_LAZY)
            ]
        );
    }

    fn err(img: &[u8]) -> String {
        crate::error::error_chain(&Pagemap::parse(img).unwrap_err())
    }

    #[test]
    fn rejects_cut_and_garbage_images() {
        let img = image(1, &[(0x1000, 1, PE_PRESENT)]);
        let e = err(&img[..img.len() - 2]);
        assert!(e.contains("cut") && e.contains("record at byte 14"), "{e}");
        let e = err(&img[..img.len() - 11]);
        assert!(e.contains("length of the record at byte 14 is cut"), "{e}");
        assert!(err(&[1, 2, 3]).contains("no CRIU image magic"));
        assert!(err(&img[..8]).contains("no head record"));
        let mut bad = img[..8].to_vec();
        bad.extend([2, 0, 0, 0, 0x0b, 0x00]); // wire type 3
        let e = err(&bad);
        assert!(e.contains("pagemap head") && e.contains("wire type"), "{e}");
        // a length field far past the image: an error, not an allocation
        let mut huge = img.clone();
        huge[14..18].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = err(&huge);
        assert!(e.contains("length says 4294967295 bytes"), "{e}");
    }

    #[test]
    fn rejects_other_images_by_their_magic() {
        let mut img = image(1, &[]);
        img[4..8].copy_from_slice(&0x5804_0ca7u32.to_le_bytes());
        let e = err(&img);
        assert!(e.contains("not the pagemap image magic 0x56084025"), "{e}");
        img[..4].copy_from_slice(&PAGEMAP_MAGIC.to_le_bytes());
        assert!(err(&img).contains("not the CRIU image magic"));
    }

    #[test]
    fn rejects_entries_no_dump_holds() {
        let e = err(&image_of(
            1,
            &[
                entry(0x1000, 1, PE_PRESENT),
                proto::PagemapEntry {
                    vaddr: None,
                    ..entry(0, 1, PE_PRESENT)
                },
            ],
        ));
        assert!(
            e.contains("pagemap entry #1") && e.contains("no vaddr"),
            "{e}"
        );
        let e = err(&image_of(
            1,
            &[proto::PagemapEntry {
                compat_nr_pages: None,
                nr_pages: None,
                ..entry(0x1000, 0, PE_PRESENT)
            }],
        ));
        assert!(e.contains("neither nr_pages nor compat_nr_pages"), "{e}");
        let e = err(&image(1, &[(0x1001, 1, PE_PRESENT)]));
        assert!(e.contains("0x1001 is not on a page boundary"), "{e}");
        let e = err(&image(1, &[(0x1000, u64::MAX / PAGE, PE_PARENT)]));
        assert!(e.contains("past the end of the address space"), "{e}");
        let e = err(&image(1, &[(0x1000, MAX_PRESENT_PAGES + 1, PE_PRESENT)]));
        assert!(e.contains("present and lazy pages add up past"), "{e}");
        // pages in a parent image take no slot here: not counted
        let map = Pagemap::parse(&image(1, &[(0x1000, MAX_PRESENT_PAGES + 1, PE_PARENT)])).unwrap();
        assert_eq!(map.present_runs().count(), 0);
        let h = image_of(1, &[]);
        let mut no_id = magics();
        no_id.extend(record(&proto::PagemapHead { pages_id: None }));
        assert!(Pagemap::parse(&h).is_ok());
        assert!(err(&no_id).contains("has no pages_id"));
    }

    /// Arbitrary, cut and mutated images: every reader returns Ok or Err,
    /// never panics, and never sizes an allocation from a field of the image
    /// beyond what the image itself and [`MAX_PRESENT_PAGES`] bound.
    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Parses `img` and, when it parses, lays it out as a lazy phase
        /// would: both must hold together whatever the bytes.
        fn read_all(img: &[u8]) -> Result<LazyLayout> {
            let map = Pagemap::parse(img)?;
            let present: u64 = map.present_runs().map(|(_, e)| e.nr_pages).sum();
            assert!(present <= MAX_PRESENT_PAGES);
            assert!(map.entries.len() <= img.len() / RECORD_LEN_LEN);
            // a lazy dump's lazy runs take no slot but are bounded alike
            let bounded: u64 = map
                .entries
                .iter()
                .filter(|e| e.is_present() || e.is_lazy())
                .map(|e| e.nr_pages)
                .sum();
            assert!(bounded <= MAX_PRESENT_PAGES);
            let layout = LazyLayout::from_pagemaps(vec![(1, map)]);
            let slots = layout.lazy_slots.values().map(Vec::len).sum::<usize>() as u64;
            assert!(slots <= present);
            assert!(layout.pages() <= bounded);
            Ok(layout)
        }

        fn entries() -> impl Strategy<Value = Vec<(u64, u64, u32)>> {
            prop::collection::vec(
                (0u64..1 << 35, 0u64..1024, 0u32..8).prop_map(|(p, n, f)| (p * PAGE, n, f)),
                0..24,
            )
        }

        fn config() -> ProptestConfig {
            ProptestConfig {
                cases: 256,
                // the same cases every run, and no files of failures kept
                rng_algorithm: prop::test_runner::RngAlgorithm::ChaCha,
                rng_seed: prop::test_runner::RngSeed::Fixed(0x4d4f_5345),
                failure_persistence: None,
                ..ProptestConfig::default()
            }
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn arbitrary_bytes(img in prop::collection::vec(any::<u8>(), 0..512)) {
                let _ = read_all(&img);
            }

            #[test]
            fn arbitrary_records_after_the_magics(
                body in prop::collection::vec(any::<u8>(), 0..512),
            ) {
                let mut img = magics();
                img.extend(body);
                let _ = read_all(&img);
            }

            #[test]
            fn valid_images_read_back(id in any::<u32>(), es in entries()) {
                let map = Pagemap::parse(&image(u64::from(id), &es)).unwrap();
                prop_assert_eq!(map.pages_id, id);
                let got: Vec<_> = map.entries.iter().map(|e| (e.vaddr, e.nr_pages, e.flags)).collect();
                prop_assert_eq!(got, es);
            }

            #[test]
            fn cut_images_fail_or_hold_whole_records(
                es in entries(),
                cut in any::<prop::sample::Index>(),
            ) {
                let img = image(7, &es);
                let keep = cut.index(img.len());
                match Pagemap::parse(&img[..keep]) {
                    // cut between records: the entries before the cut
                    Ok(map) => {
                        prop_assert!(map.entries.len() <= es.len());
                        prop_assert_eq!(image(7, &es[..map.entries.len()]).len(), keep);
                    }
                    Err(e) => {
                        let e = crate::error::error_chain(&e);
                        prop_assert!(
                            e.contains("cut") || e.contains("magic") || e.contains("no head"),
                            "{}", e
                        );
                    }
                }
            }

            #[test]
            fn mutated_images_never_panic(
                es in entries(),
                edits in prop::collection::vec(
                    (any::<prop::sample::Index>(), any::<u8>(), 0u8..4),
                    1..8,
                ),
            ) {
                let mut img = image(7, &es);
                for (at, byte, how) in edits {
                    if img.is_empty() {
                        img.push(byte);
                        continue;
                    }
                    let at = at.index(img.len());
                    match how {
                        0 => img[at] = byte,
                        1 => img[at] ^= 1 << (byte % 8),
                        2 => img.insert(at, byte),
                        _ => {
                            img.remove(at);
                        }
                    }
                }
                let _ = read_all(&img);
            }

            #[test]
            fn any_length_field_is_bounded_by_the_image(
                es in entries(),
                which in any::<prop::sample::Index>(),
                len in any::<u32>(),
            ) {
                // rewrite one record's length prefix with an arbitrary value
                let mut img = image(7, &es);
                let mut starts = Vec::new();
                let mut at = 2 * MAGIC_LEN;
                while at < img.len() {
                    starts.push(at);
                    let n = u32::from_le_bytes(img[at..at + 4].try_into().unwrap());
                    at += RECORD_LEN_LEN + n as usize;
                }
                let at = starts[which.index(starts.len())];
                img[at..at + 4].copy_from_slice(&len.to_le_bytes());
                let _ = read_all(&img);
            }
        }
    }
}
