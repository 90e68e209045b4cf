//! The lazy pages a restored process still waits for. Ranges are kept by
//! their run-time address, which `mremap` can move, together with the address
//! they had at the checkpoint (which names them on the wire).

use std::collections::BTreeMap;

/// Non-overlapping ranges `start..end` (run-time), each with the checkpoint
/// address of its first byte.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Iovs {
    m: BTreeMap<u64, (u64, u64)>,
    /// Set once anything moved: image and run-time addresses may then differ.
    moved: bool,
}

impl Iovs {
    /// Ranges at the addresses they had at the checkpoint.
    pub fn new(ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut s = Self::default();
        for (start, len) in ranges {
            if len > 0 {
                s.m.insert(start, (start + len, start));
            }
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        self.m.is_empty()
    }

    /// Bytes still waited for.
    pub fn len_bytes(&self) -> u64 {
        self.m.iter().map(|(s, (e, _))| e - s).sum()
    }

    /// The checkpoint address of run-time address `addr`, when still waited for.
    pub fn lookup(&self, addr: u64) -> Option<u64> {
        let (s, (e, img)) = self.m.range(..=addr).next_back()?;
        (addr < *e).then(|| img + (addr - s))
    }

    /// Forgets `start..start+len` (placed, unmapped or discarded).
    pub fn remove(&mut self, start: u64, len: u64) {
        let end = start + len;
        let hit: Vec<u64> = self
            .m
            .range(..end)
            .rev()
            .take_while(|(_, (e, _))| *e > start)
            .map(|(s, _)| *s)
            .collect();
        for s in hit {
            let Some((e, img)) = self.m.remove(&s) else {
                continue;
            };
            if s < start {
                self.m.insert(s, (start, img));
            }
            if e > end {
                self.m.insert(end, (e, img + (end - s)));
            }
        }
    }

    /// `mremap` moved `from..from+len` to `to`.
    pub fn remap(&mut self, from: u64, to: u64, len: u64) {
        let end = from + len;
        let moved: Vec<(u64, u64, u64)> = self
            .m
            .range(..end)
            .rev()
            .take_while(|(_, (e, _))| *e > from)
            .map(|(s, (e, img))| {
                let a = (*s).max(from);
                (a, (*e).min(end), img + (a - s))
            })
            .collect();
        self.remove(from, len);
        self.remove(to, len);
        for (a, b, img) in moved {
            self.m.insert(a - from + to, (b - from + to, img));
            self.moved = true;
        }
    }

    /// Where the checkpoint range `img..img+len` now lies: `(run-time start,
    /// offset into the range, length)` for each part still waited for.
    pub fn placements(&self, img: u64, len: u64) -> Vec<(u64, u64, u64)> {
        let end = img + len;
        let part = |s: u64, e: u64, i: u64| {
            let a = i.max(img);
            let b = (i + (e - s)).min(end);
            (a < b).then(|| (s + (a - i), a - img, b - a))
        };
        if !self.moved {
            // run-time == checkpoint addresses: only the overlapping ranges
            return self
                .m
                .range(..end)
                .rev()
                .take_while(|(_, (e, _))| *e > img)
                .filter_map(|(s, (e, i))| part(*s, *e, *i))
                .collect();
        }
        self.m
            .iter()
            .filter_map(|(s, (e, i))| part(*s, *e, *i))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 4096;

    #[test]
    fn lookup_and_remove_split_ranges() {
        let mut v = Iovs::new([(0x10000, 8 * P), (0x40000, 2 * P)]);
        assert_eq!(v.len_bytes(), 10 * P);
        assert_eq!(v.lookup(0x10000 + 3 * P + 5), Some(0x10000 + 3 * P + 5));
        assert_eq!(v.lookup(0x30000), None);
        v.remove(0x10000 + 2 * P, 2 * P);
        assert_eq!(v.lookup(0x10000 + 2 * P), None);
        assert_eq!(v.lookup(0x10000 + 4 * P), Some(0x10000 + 4 * P));
        assert_eq!(v.len_bytes(), 8 * P);
        // a removal spanning ranges and gaps
        v.remove(0x10000, 0x40000 + P - 0x10000);
        assert_eq!(v.len_bytes(), P);
        assert_eq!(v.lookup(0x40000 + P), Some(0x40000 + P));
        v.remove(0, u64::MAX / 2);
        assert!(v.is_empty());
    }

    #[test]
    fn remap_moves_run_time_addresses_but_keeps_image_names() {
        let mut v = Iovs::new([(0x10000, 4 * P)]);
        v.remap(0x10000 + P, 0x90000, 2 * P);
        assert_eq!(v.lookup(0x10000 + P), None);
        assert_eq!(v.lookup(0x90000 + P), Some(0x10000 + 2 * P));
        assert_eq!(v.lookup(0x10000), Some(0x10000));
        // the image range lands in two places now
        let mut got = v.placements(0x10000, 4 * P);
        got.sort();
        assert_eq!(
            got,
            vec![
                (0x10000, 0, P),
                (0x10000 + 3 * P, 3 * P, P),
                (0x90000, P, 2 * P)
            ]
        );
        v.remove(0x90000, P);
        assert_eq!(v.placements(0x10000 + P, P), vec![]);
    }

    #[test]
    fn placements_clip_to_what_is_still_waited_for() {
        let mut v = Iovs::new([(0x10000, 4 * P)]);
        v.remove(0x10000 + P, P);
        let mut got = v.placements(0x10000, 3 * P);
        got.sort();
        assert_eq!(got, vec![(0x10000, 0, P), (0x10000 + 2 * P, 2 * P, P)]);
        assert_eq!(v.placements(0x50000, P), vec![]);
    }
}
