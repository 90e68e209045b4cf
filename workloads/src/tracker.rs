//! A multi-object-tracker-like workload: the state service's checksummed
//! memory ([`State`]) rewritten with a tracker's access pattern instead of
//! the state service's uniform random pages.
//!
//! The memory is an array of per-object track records ([`TrackerConfig::record_kib`]
//! each: kinematic state and covariance in the first page, a ring of
//! appearance embeddings in the others). A tracker processing video at
//! [`TrackerConfig::fps`] updates, every frame, each *active* track (an
//! object currently in view): it rewrites the record's state page and the
//! embedding page the ring has reached. Objects leave and enter the view:
//! every frame a fraction ([`TrackerConfig::turnover`]) of the active tracks
//! ends and as many new ones start in the next free records, each birth
//! writing a whole record. Ended tracks stay in memory (kept for
//! re-identification), so the whole array is live state.
//!
//! What this means for a migration, and what distinguishes it from the
//! state service's uniform dirtying at the same write rate: tens of MiB/s
//! are written, but into a hot set (the active tracks' records) rewritten
//! many times a second plus a slowly advancing frontier of births, so the
//! *distinct* memory dirtied per second, what a pre-copy round has to
//! resend, is a small fraction of the write rate; and every page the
//! tracker touches after a post-copy restore is one it needs at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::state::{Rng, State, PAGE};

/// Configuration of the tracker's access pattern and its service.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct TrackerConfig {
    /// Memory of track records, MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub tracks_mib: u64,
    /// Bytes the tracker writes per second, MiB/s (state pages, embedding
    /// pages and new records together).
    #[arg(long, value_name = "MIB_PER_S", default_value_t = 32.0)]
    pub write_mib_per_s: f64,
    /// Frames processed per second, Hz.
    #[arg(long, value_name = "HZ", default_value_t = 30.0)]
    pub fps: f64,
    /// Size of one track record, KiB (a multiple of 4).
    #[arg(long, value_name = "KIB", default_value_t = 16)]
    pub record_kib: u64,
    /// Fraction of the active tracks that end (and are replaced by new
    /// ones) every frame, 0..1.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.01)]
    pub turnover: f64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            tracks_mib: 256,
            write_mib_per_s: 32.0,
            fps: 30.0,
            record_kib: 16,
            turnover: 0.01,
        }
    }
}

impl TrackerConfig {
    /// Refuses values the pattern cannot honour, naming the flag.
    pub fn validate(&self) -> Result<()> {
        let kib_per_page = (PAGE / 1024) as u64;
        if self.record_kib == 0 || !self.record_kib.is_multiple_of(kib_per_page) {
            bail!("--record-kib must be a positive multiple of {kib_per_page}");
        }
        if !(self.fps.is_finite() && self.fps > 0.0) {
            bail!("--fps must be > 0");
        }
        if !(self.write_mib_per_s.is_finite() && self.write_mib_per_s >= 0.0) {
            bail!("--write-mib-per-s must be >= 0");
        }
        if !(0.0..1.0).contains(&self.turnover) {
            bail!("--turnover must be in 0..1");
        }
        if self.slots() < 2 {
            bail!("--tracks-mib must hold at least two records of --record-kib");
        }
        Ok(())
    }

    /// Pages in the whole state.
    pub fn pages(&self) -> usize {
        usize::try_from(self.tracks_mib.saturating_mul(1 << 20) / PAGE as u64).unwrap_or(0)
    }

    /// Pages per record.
    pub fn record_pages(&self) -> usize {
        (self.record_kib as usize * 1024 / PAGE).max(1)
    }

    /// Records (track slots) in the state.
    pub fn slots(&self) -> usize {
        self.pages() / self.record_pages()
    }

    /// Pages an active track rewrites per frame: its state page, and the
    /// embedding page the ring has reached when the record has one.
    fn pages_per_update(&self) -> f64 {
        if self.record_pages() > 1 {
            2.0
        } else {
            1.0
        }
    }

    /// Active tracks that make up the write rate: each frame writes
    /// `active · (pages per update + turnover · record pages)` pages.
    /// At least 1, at most half the slots (the births need room).
    pub fn active_tracks(&self) -> usize {
        let pages_per_frame = self.write_mib_per_s * (1 << 20) as f64 / PAGE as f64 / self.fps;
        let per_track = self.pages_per_update() + self.turnover * self.record_pages() as f64;
        ((pages_per_frame / per_track).round() as usize).clamp(1, (self.slots() / 2).max(1))
    }

    /// Distinct bytes the pattern dirties per second, by its own arithmetic:
    /// every active record whole (its pages are all rewritten within a
    /// second when the frame rate is at least its page count) plus the
    /// records born in that second. What a pre-copy round resends per
    /// second, against [`TrackerConfig::write_mib_per_s`] written.
    pub fn distinct_mib_per_s(&self) -> f64 {
        let rp = self.record_pages() as f64;
        let active = self.active_tracks() as f64;
        let embedding_pages = (rp - 1.0).max(0.0);
        let touched = 1.0 + embedding_pages.min(self.fps);
        let births = active * self.turnover * self.fps;
        ((active * touched + births * rp) * PAGE as f64 / (1 << 20) as f64)
            .min(self.tracks_mib as f64)
    }
}

/// The active window of tracks and which pages each frame rewrites.
#[derive(Debug, Clone)]
pub struct Tracks {
    slots: usize,
    record_pages: usize,
    births_per_frame: f64,
    carry: f64,
    /// Oldest active track id (ids grow forever; a track's slot is id mod slots).
    tail: u64,
    /// Next track id to be born; the active tracks are `tail..head`.
    head: u64,
    frame: u64,
}

impl Tracks {
    /// The pattern of `cfg`, its first active tracks in records `0..active`.
    pub fn new(cfg: &TrackerConfig) -> Result<Self> {
        cfg.validate()?;
        let active = cfg.active_tracks();
        Ok(Self {
            slots: cfg.slots(),
            record_pages: cfg.record_pages(),
            births_per_frame: active as f64 * cfg.turnover,
            carry: 0.0,
            tail: 0,
            head: active as u64,
            frame: 0,
        })
    }

    /// Tracks currently active.
    pub fn active(&self) -> usize {
        (self.head - self.tail) as usize
    }

    fn record_base(&self, id: u64) -> usize {
        (id % self.slots as u64) as usize * self.record_pages
    }

    /// Appends the page indices the next frame rewrites to `out`: the
    /// births' whole records first, then each active track's state page and
    /// its current embedding page.
    pub fn next_frame(&mut self, out: &mut Vec<usize>) {
        self.carry += self.births_per_frame;
        let births = self.carry.floor() as u64;
        self.carry -= births as f64;
        for _ in 0..births {
            self.tail += 1;
            let base = self.record_base(self.head);
            out.extend(base..base + self.record_pages);
            self.head += 1;
        }
        let ring = self.record_pages as u64 - 1;
        for id in self.tail..self.head {
            let base = self.record_base(id);
            out.push(base);
            if ring > 0 {
                // staggered by id, so the frame's embedding writes spread
                out.push(base + 1 + ((self.frame + id) % ring) as usize);
            }
        }
        self.frame += 1;
    }
}

/// Frames this far behind schedule (a freeze, a starved CPU) are skipped,
/// not caught up in a burst.
const MAX_LAG_FRAMES: f64 = 3.0;

/// Runs the tracker's frames against `state` until `stop` is set: each
/// frame's pages rewritten (content, hash and checksum kept consistent by
/// [`State::write_page`]), frames paced on an absolute schedule.
pub fn run(state: &State, cfg: &TrackerConfig, seed: u64, stop: &AtomicBool) -> Result<()> {
    let mut tracks = Tracks::new(cfg)?;
    let period = Duration::from_secs_f64(1.0 / cfg.fps);
    let mut rng = Rng::new(seed ^ 0x7A3C_5E21_9B4D_0F68);
    let mut buf = [0u8; PAGE];
    let mut pages = Vec::new();
    let mut origin = Instant::now();
    let mut done = 0u64;
    while !stop.load(Ordering::Acquire) {
        let due = origin.elapsed().as_secs_f64() * cfg.fps;
        if due - done as f64 > MAX_LAG_FRAMES {
            origin = Instant::now();
            done = 0;
            continue;
        }
        if (done as f64) < due {
            pages.clear();
            tracks.next_frame(&mut pages);
            for &p in &pages {
                state.write_page(p, &mut rng, &mut buf);
            }
            done += 1;
            continue;
        }
        let next = period.mul_f64(done as f64);
        thread::sleep(next.saturating_sub(origin.elapsed()).min(period));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn cfg() -> TrackerConfig {
        TrackerConfig::default()
    }

    #[test]
    fn defaults_give_a_crowded_scene_at_32_mib_per_s() {
        let c = cfg();
        c.validate().expect("defaults are valid");
        assert_eq!(
            (c.pages(), c.record_pages(), c.slots()),
            (65_536, 4, 16_384)
        );
        // 32 MiB/s at 30 fps = 273 pages a frame, 2.04 pages per track
        assert_eq!(c.active_tracks(), 134);
        let d = c.distinct_mib_per_s();
        assert!(d > 2.0 && d < 4.0, "{d} MiB/s distinct of 32 written");
    }

    #[test]
    fn invalid_configs_name_the_flag() {
        let bad = |f: fn(&mut TrackerConfig)| {
            let mut c = cfg();
            f(&mut c);
            c.validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(bad(|c| c.record_kib = 6).contains("--record-kib"));
        assert!(bad(|c| c.fps = 0.0).contains("--fps"));
        assert!(bad(|c| c.turnover = 1.0).contains("--turnover"));
        assert!(bad(|c| c.write_mib_per_s = f64::NAN).contains("--write-mib-per-s"));
        assert!(bad(|c| c.tracks_mib = 0).contains("--tracks-mib"));
    }

    #[test]
    fn a_second_of_frames_writes_the_rate_into_a_small_hot_set() {
        let c = cfg();
        let mut t = Tracks::new(&c).expect("tracks");
        let mut writes = 0usize;
        let mut distinct = HashSet::new();
        for _ in 0..30 {
            let mut v = Vec::new();
            t.next_frame(&mut v);
            assert!(v.iter().all(|&p| p < c.pages()));
            writes += v.len();
            distinct.extend(v);
        }
        let mib = |pages: usize| (pages * PAGE) as f64 / (1 << 20) as f64;
        assert!(
            (mib(writes) - 32.0).abs() < 1.0,
            "{} MiB written",
            mib(writes)
        );
        let d = mib(distinct.len());
        assert!((d - c.distinct_mib_per_s()).abs() < 0.5, "{d} MiB distinct");
        assert_eq!(t.active(), c.active_tracks(), "births replace deaths");
    }

    #[test]
    fn the_frontier_wraps_around_the_records() {
        let c = TrackerConfig {
            tracks_mib: 1,
            record_kib: 4,
            write_mib_per_s: 1.0,
            fps: 10.0,
            turnover: 0.5,
        };
        let mut t = Tracks::new(&c).expect("tracks");
        assert_eq!(c.slots(), 256);
        let mut seen = HashSet::new();
        for _ in 0..100 {
            let mut v = Vec::new();
            t.next_frame(&mut v);
            assert!(v.iter().all(|&p| p < 256));
            seen.extend(v);
        }
        assert_eq!(seen.len(), 256, "births reached every record");
    }

    #[test]
    fn the_state_stays_consistent_under_the_pattern() {
        let c = TrackerConfig {
            tracks_mib: 2,
            write_mib_per_s: 8.0,
            ..cfg()
        };
        let state = State::new(c.pages(), 5).expect("state");
        let stop = AtomicBool::new(false);
        thread::scope(|s| {
            let h = s.spawn(|| run(&state, &c, 5, &stop));
            thread::sleep(Duration::from_millis(300));
            stop.store(true, Ordering::Release);
            h.join().expect("join").expect("run");
        });
        assert!(state.writes() > 100, "{} writes", state.writes());
        assert!(matches!(state.verify(), crate::state::Verify::Ok { .. }));
    }
}
