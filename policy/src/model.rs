//! The cost model: what a technique would cost (downtime, total time, bytes on
//! the wire) for a container, predicted from measurements and a calibration of
//! the node.
//!
//! It mirrors MOSE's data path (`plugin/src/source.rs`), phase by phase:
//!
//! * **pre-copy rounds** (live): each round reads and hashes the whole
//!   resident memory of the running process and sends the blocks the
//!   destination does not have yet; reading/hashing and sending overlap, so a
//!   round lasts `max(bytes × overhead / B, M / scan)`.
//! * **freeze**: pause, CRIU dump (`M / dump`), hash the dumped pages
//!   (`M / hash`), send the blocks that changed since they were last sent,
//!   the destination writes the pages image (`M / assemble`) and CRIU
//!   restores (`M / restore`), plus fixed costs (RPCs, container create).
//!
//! Cold is the freeze phase alone with every block new. The state is assumed
//! incompressible (compression is carried in [`PlanParams`] but not modelled),
//! and the container image and the rootfs changes are not counted (the image
//! is usually cached; rootfs changes are small next to memory).

use serde::{Deserialize, Serialize};

use crate::annotations::Technique;

/// A pre-copy round moving fewer bytes than this ends the live phase
/// (MOSE's `min_round_bytes`, default 1 MiB).
pub const MIN_ROUND_BYTES: f64 = 1024.0 * 1024.0;
/// A round moving at least this fraction of the previous round's bytes ends
/// the live phase: the delta stopped shrinking (MOSE's own stop rule).
pub const SHRINK_STOP: f64 = 0.9;

/// Invalid input to the model, naming the offending field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} = {value}: {reason}")]
pub struct ModelError {
    /// e.g. `measurements.link_bytes_per_s`.
    pub field: &'static str,
    /// The offending value as text.
    pub value: String,
    /// What it should be.
    pub reason: &'static str,
}

/// What MOSE measured about the container and the link before planning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurements {
    /// Non-zero resident private memory to move (zero pages are not sent).
    pub memory_bytes: u64,
    /// Distinct bytes dirtied per second while the container runs.
    pub dirty_bytes_per_s: f64,
    /// Upper bound on what can be dirtied (the hot set); `None` = all memory.
    #[serde(default)]
    pub working_set_bytes: Option<u64>,
    /// Usable throughput of the link to the destination.
    pub link_bytes_per_s: f64,
}

impl Measurements {
    /// Checks the values the model divides by or multiplies with.
    pub fn validate(&self) -> Result<(), ModelError> {
        if !(self.link_bytes_per_s.is_finite() && self.link_bytes_per_s > 0.0) {
            return Err(ModelError {
                field: "measurements.link_bytes_per_s",
                value: self.link_bytes_per_s.to_string(),
                reason: "the link throughput must be a positive finite number of bytes per second",
            });
        }
        if !(self.dirty_bytes_per_s.is_finite() && self.dirty_bytes_per_s >= 0.0) {
            return Err(ModelError {
                field: "measurements.dirty_bytes_per_s",
                value: self.dirty_bytes_per_s.to_string(),
                reason: "the dirty rate must be a finite number of bytes per second, zero or more",
            });
        }
        Ok(())
    }
}

/// The node's throughputs (bytes/s) and fixed costs (ms), learned from past
/// migrations so that predictions track the real machine.
///
/// Missing fields in a persisted calibration take their default values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Calibration {
    /// Live pre-copy read + hash of the running process's memory.
    pub scan_bytes_per_s: f64,
    /// CRIU dump at freeze.
    pub dump_bytes_per_s: f64,
    /// Hashing the dumped pages.
    pub hash_bytes_per_s: f64,
    /// The destination writing the pages image.
    pub assemble_bytes_per_s: f64,
    /// CRIU restore.
    pub restore_bytes_per_s: f64,
    /// Downtime not proportional to memory: pause, checkpoint RPC, creating
    /// the container and task on the destination.
    pub fixed_downtime_ms: f64,
    /// Migration time outside the freeze not proportional to memory:
    /// connect, handshake, release of the source.
    pub fixed_total_ms: f64,
    /// Wire bytes per payload byte (framing, hashes, TLS), e.g. 1.01.
    pub wire_overhead: f64,
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration {
            scan_bytes_per_s: 1.5e9,
            dump_bytes_per_s: 9e8,
            hash_bytes_per_s: 4e9,
            assemble_bytes_per_s: 1e9,
            restore_bytes_per_s: 7e8,
            fixed_downtime_ms: 120.0,
            fixed_total_ms: 150.0,
            wire_overhead: 1.01,
        }
    }
}

impl Calibration {
    /// Checks that every throughput is positive and finite, fixed costs are
    /// finite and non-negative and the overhead is at least 1.
    pub fn validate(&self) -> Result<(), ModelError> {
        let rates = [
            ("calibration.scan_bytes_per_s", self.scan_bytes_per_s),
            ("calibration.dump_bytes_per_s", self.dump_bytes_per_s),
            ("calibration.hash_bytes_per_s", self.hash_bytes_per_s),
            (
                "calibration.assemble_bytes_per_s",
                self.assemble_bytes_per_s,
            ),
            ("calibration.restore_bytes_per_s", self.restore_bytes_per_s),
        ];
        for (field, v) in rates {
            if !(v.is_finite() && v > 0.0) {
                return Err(ModelError {
                    field,
                    value: v.to_string(),
                    reason: "a throughput must be a positive finite number of bytes per second",
                });
            }
        }
        for (field, v) in [
            ("calibration.fixed_downtime_ms", self.fixed_downtime_ms),
            ("calibration.fixed_total_ms", self.fixed_total_ms),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(ModelError {
                    field,
                    value: v.to_string(),
                    reason: "a fixed cost must be a finite number of milliseconds, zero or more",
                });
            }
        }
        if !(self.wire_overhead.is_finite() && self.wire_overhead >= 1.0) {
            return Err(ModelError {
                field: "calibration.wire_overhead",
                value: self.wire_overhead.to_string(),
                reason: "the wire overhead is a ratio of at least 1",
            });
        }
        Ok(())
    }
}

/// One way to migrate: the knobs MOSE's source side takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanParams {
    pub technique: Technique,
    /// Upper bound on live pre-copy rounds (ignored by cold).
    pub max_rounds: u32,
    /// Cap on the wire rate, bits per second; `None` = the link's rate.
    pub bandwidth_cap_bps: Option<u64>,
    /// lz4 on bulk data. Not modelled: the state is assumed incompressible.
    pub compression: bool,
    /// Pre-copy stop rule: end the live rounds as soon as a round's delta,
    /// sent in the freeze, would keep the downtime under this many ms (set
    /// from `mose.io/max-downtime`; MOSE's source applies the same rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_below_downtime_ms: Option<u64>,
}

impl PlanParams {
    /// A short human description, e.g. "precopy, 3 rounds, capped at 150Mbit".
    pub fn describe(&self) -> String {
        let mut s = self.technique.to_string();
        if self.technique == Technique::Precopy {
            let n = self.max_rounds.max(1);
            s.push_str(&format!(", {n} round{}", if n == 1 { "" } else { "s" }));
        }
        if let Some(cap) = self.bandwidth_cap_bps {
            s.push_str(&format!(
                ", capped at {}",
                crate::select::fmt_rate(cap as f64)
            ));
        }
        s
    }
}

/// What the model expects a plan to cost.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Time the application is frozen.
    pub downtime_ms: f64,
    /// From the start of the migration to the container running on the destination.
    pub total_ms: f64,
    /// Bytes on the wire (payload × overhead).
    pub bytes: u64,
    /// Peak wire rate used, bits per second.
    pub rate_bps: u64,
    /// Predicted live pre-copy rounds (0 for cold).
    pub rounds: u32,
    /// Whether MOSE implements the technique; unavailable predictions are
    /// rough placeholders and are never selected.
    pub available: bool,
}

/// The downtime if the freeze had to send `final_bytes` of memory: the
/// freeze's fixed and memory-proportional costs plus that transfer. Pre-copy's
/// downtime-target stop rule uses it, on both the model's and the source's side.
pub fn downtime_if_final_ms(
    m: &Measurements,
    c: &Calibration,
    final_bytes: f64,
    cap_bps: Option<u64>,
) -> f64 {
    let bw = match cap_bps {
        Some(cap) if cap > 0 => m.link_bytes_per_s.min(cap as f64 / 8.0),
        _ => m.link_bytes_per_s,
    };
    let mem = m.memory_bytes as f64;
    c.fixed_downtime_ms
        + 1e3
            * (mem / c.dump_bytes_per_s
                + mem / c.hash_bytes_per_s
                + mem / c.assemble_bytes_per_s
                + mem / c.restore_bytes_per_s
                + final_bytes * c.wire_overhead / bw)
}

/// Predicts the cost of `plan` for a container measured as `m` on a node
/// calibrated as `c`.
///
/// With B the effective bandwidth (the link, or the plan's cap if lower), M
/// the memory, D the dirty rate and W the working set:
///
/// * cold: downtime = fixed + M/dump + M/hash + M·ovh/B + M/assemble + M/restore.
/// * precopy: round 1 sends M in `max(M·ovh/B, M/scan)`; round i sends
///   `b_i = min(D·t_{i-1}, W)` in `max(b_i·ovh/B, M/scan)`; the live phase
///   stops after `max_rounds` (at least one, as in MOSE), or after a round
///   moving less than 1 MiB, or after a round moving ≥ 0.9 × the previous
///   one. The final delta `f = min(D·t_last, W)` is what was dirtied since the
///   last scan (the container is paused before CRIU dumps, so nothing is
///   dirtied during the dump); downtime is the cold formula with f in place
///   of M for the transfer.
/// * postcopy and hybrid: rough placeholders, `available: false`.
pub fn predict(
    m: &Measurements,
    c: &Calibration,
    plan: &PlanParams,
) -> Result<Prediction, ModelError> {
    m.validate()?;
    c.validate()?;
    if plan.bandwidth_cap_bps == Some(0) {
        return Err(ModelError {
            field: "plan.bandwidth_cap_bps",
            value: "0".into(),
            reason: "a bandwidth cap must be greater than zero",
        });
    }
    let bw = match plan.bandwidth_cap_bps {
        Some(cap) => m.link_bytes_per_s.min(cap as f64 / 8.0),
        None => m.link_bytes_per_s,
    };
    let mem = m.memory_bytes as f64;
    let dirty = m.dirty_bytes_per_s;
    let ws = m.working_set_bytes.unwrap_or(m.memory_bytes) as f64;
    let ovh = c.wire_overhead;
    let s = |bytes: f64, rate: f64| bytes / rate; // seconds
                                                  // the freeze phase, apart from the transfer of `f` payload bytes
    let frozen_fixed = c.fixed_downtime_ms / 1e3
        + s(mem, c.dump_bytes_per_s)
        + s(mem, c.hash_bytes_per_s)
        + s(mem, c.assemble_bytes_per_s)
        + s(mem, c.restore_bytes_per_s);
    let scan_t = s(mem, c.scan_bytes_per_s);

    let (live_s, live_bytes, rounds, final_bytes, mut peak, available) = match plan.technique {
        Technique::Cold => (0.0, 0.0, 0, mem, 0.0, true),
        Technique::Precopy => {
            let mut live_s = 0.0;
            let mut live_bytes = 0.0;
            let mut rounds = 0u32;
            let mut peak: f64 = 0.0;
            let mut prev_b = f64::INFINITY;
            let mut t_last = 0.0;
            for i in 1..=plan.max_rounds.max(1) {
                let b = if i == 1 {
                    mem
                } else {
                    (dirty * t_last).min(ws)
                };
                let t = s(b * ovh, bw).max(scan_t);
                live_s += t;
                live_bytes += b;
                rounds = i;
                if t > 0.0 {
                    peak = peak.max(b * ovh / t);
                }
                t_last = t;
                if b < MIN_ROUND_BYTES || (i > 1 && b >= SHRINK_STOP * prev_b) {
                    break;
                }
                if let Some(target) = plan.stop_below_downtime_ms {
                    if downtime_if_final_ms(m, c, b, plan.bandwidth_cap_bps) <= target as f64 {
                        break;
                    }
                }
                prev_b = b;
            }
            let f = (dirty * t_last).min(ws);
            (live_s, live_bytes, rounds, f, peak, true)
        }
        Technique::Postcopy => {
            // placeholder: freeze only for the non-memory state, then pages
            // are pulled on demand at link speed after restore
            let pull = s(mem * ovh, bw);
            let downtime = c.fixed_downtime_ms / 1e3;
            return Ok(finish(
                downtime,
                pull + c.fixed_total_ms / 1e3,
                mem * ovh,
                bw * 8.0,
                0,
                false,
            ));
        }
        Technique::Hybrid => {
            // placeholder: one pre-copy round, then post-copy of the delta
            let t1 = s(mem * ovh, bw).max(scan_t);
            let delta = (dirty * t1).min(ws);
            let downtime = c.fixed_downtime_ms / 1e3;
            let total = t1 + downtime + s(delta * ovh, bw) + c.fixed_total_ms / 1e3;
            return Ok(finish(
                downtime,
                total,
                (mem + delta) * ovh,
                bw * 8.0,
                1,
                false,
            ));
        }
    };
    if final_bytes > 0.0 {
        peak = peak.max(bw);
    }
    let downtime = frozen_fixed + s(final_bytes * ovh, bw);
    let total = live_s + downtime + c.fixed_total_ms / 1e3;
    Ok(finish(
        downtime,
        total,
        (live_bytes + final_bytes) * ovh,
        peak * 8.0,
        rounds,
        available,
    ))
}

fn finish(
    downtime_s: f64,
    total_s: f64,
    bytes: f64,
    rate_bps: f64,
    rounds: u32,
    available: bool,
) -> Prediction {
    // all inputs are validated finite and non-negative; `as` saturates anyway
    Prediction {
        downtime_ms: downtime_s * 1e3,
        total_ms: total_s * 1e3,
        bytes: bytes.round() as u64,
        rate_bps: rate_bps.round() as u64,
        rounds,
        available,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// Measurements in the units people think in (also used by select's tests).
    pub(crate) fn meas(mem_mib: u64, dirty_mib_s: f64, link_mbit: f64) -> Measurements {
        Measurements {
            memory_bytes: mem_mib * MIB,
            dirty_bytes_per_s: dirty_mib_s * MIB as f64,
            working_set_bytes: None,
            link_bytes_per_s: link_mbit * 1e6 / 8.0,
        }
    }

    fn plan(t: Technique, rounds: u32) -> PlanParams {
        PlanParams {
            technique: t,
            max_rounds: rounds,
            bandwidth_cap_bps: None,
            compression: false,
            stop_below_downtime_ms: None,
        }
    }

    fn p(m: &Measurements, pl: &PlanParams) -> Prediction {
        predict(m, &Calibration::default(), pl).unwrap()
    }

    #[test]
    fn a_downtime_target_in_reach_ends_the_rounds() {
        // dirtying keeps rounds going (each delta shrinks), unless the target is in reach
        let m = meas(512, 8.0, 1000.0);
        let free = p(&m, &plan(Technique::Precopy, 8));
        assert!(free.rounds > 1, "{free:?}");
        let reach = PlanParams {
            stop_below_downtime_ms: Some(60_000),
            ..plan(Technique::Precopy, 8)
        };
        let stopped = p(&m, &reach);
        assert_eq!(stopped.rounds, 1, "{stopped:?}");
        assert!(stopped.total_ms < free.total_ms);
        // an unreachable target changes nothing
        let far = PlanParams {
            stop_below_downtime_ms: Some(1),
            ..plan(Technique::Precopy, 8)
        };
        assert_eq!(p(&m, &far), free);
        // the rule's downtime is the freeze with that delta on the wire
        let c = Calibration::default();
        assert!(downtime_if_final_ms(&m, &c, 0.0, None) < downtime_if_final_ms(&m, &c, 1e8, None));
        assert!(
            downtime_if_final_ms(&m, &c, 1e8, Some(100_000_000))
                > downtime_if_final_ms(&m, &c, 1e8, None)
        );
    }

    fn all_plans() -> Vec<PlanParams> {
        let mut v = vec![plan(Technique::Cold, 0)];
        v.extend((1..=8).map(|k| plan(Technique::Precopy, k)));
        v
    }

    #[test]
    fn cold_follows_the_formula() {
        let c = Calibration::default();
        let m = meas(512, 0.0, 1000.0);
        let got = p(&m, &plan(Technique::Cold, 0));
        let mem = m.memory_bytes as f64;
        let want_s = 0.120
            + mem / c.dump_bytes_per_s
            + mem / c.hash_bytes_per_s
            + mem * 1.01 / m.link_bytes_per_s
            + mem / c.assemble_bytes_per_s
            + mem / c.restore_bytes_per_s;
        assert!((got.downtime_ms - want_s * 1e3).abs() < 1e-6, "{got:?}");
        assert!((got.total_ms - got.downtime_ms - 150.0).abs() < 1e-6);
        assert_eq!(got.bytes, (mem * 1.01).round() as u64);
        assert_eq!(got.rate_bps, 1_000_000_000);
        assert_eq!(got.rounds, 0);
        assert!(got.available);
    }

    #[test]
    fn precopy_with_an_idle_container_sends_memory_once() {
        let m = meas(256, 0.0, 1000.0);
        for k in 1..=8 {
            let got = p(&m, &plan(Technique::Precopy, k));
            let want = m.memory_bytes as f64 * 1.01;
            assert!((got.bytes as f64 - want).abs() <= 1.0, "k={k} {got:?}");
            // round 2 moves nothing and ends the live phase
            assert_eq!(got.rounds, k.min(2));
        }
    }

    #[test]
    fn precopy_beats_cold_on_downtime_at_a_low_dirty_rate() {
        let m = meas(512, 8.0, 1000.0);
        let cold = p(&m, &plan(Technique::Cold, 0));
        for k in 1..=8 {
            let pre = p(&m, &plan(Technique::Precopy, k));
            assert!(
                pre.downtime_ms < cold.downtime_ms,
                "k={k} {pre:?} vs {cold:?}"
            );
            assert!(pre.total_ms > cold.total_ms, "pre-copy costs total time");
        }
    }

    #[test]
    fn high_dirty_rate_stops_early_and_stays_finite() {
        // dirtying faster than the link: round 2 re-sends the whole working
        // set, round 3 does the same, so the delta stopped shrinking there
        let m = Measurements {
            working_set_bytes: Some(256 * MIB),
            ..meas(1024, 2000.0, 100.0)
        };
        let got = p(&m, &plan(Technique::Precopy, 8));
        assert_eq!(got.rounds, 3, "{got:?}");
        assert!(got.downtime_ms.is_finite() && got.total_ms.is_finite());
        // memory + one working set per later round + the final delta
        let bound = (1024 + 3 * 256) as f64 * MIB as f64 * 1.01;
        assert!((got.bytes as f64) <= bound + 1.0, "{got:?}");
        // without a working set bound, round 2 re-sends all memory and stops
        let got = p(&meas(1024, 2000.0, 100.0), &plan(Technique::Precopy, 8));
        assert_eq!(got.rounds, 2, "{got:?}");
        assert!(
            (got.bytes as f64) <= 3.0 * 1024.0 * MIB as f64 * 1.01 + 1.0,
            "{got:?}"
        );
    }

    #[test]
    fn stop_rule_mirrors_mose() {
        // link-bound rounds shrink by D·ovh/B each: 0.76 keeps going to the
        // round bound, 0.93 (less than 10% smaller) ends the phase at round 2
        let c = Calibration::default();
        let m = meas(1024, 90.0, 1000.0);
        let got = predict(&m, &c, &plan(Technique::Precopy, 8)).unwrap();
        assert_eq!(got.rounds, 8, "{got:?}");
        let m = meas(1024, 110.0, 1000.0);
        let got = predict(&m, &c, &plan(Technique::Precopy, 8)).unwrap();
        assert_eq!(got.rounds, 2, "{got:?}");
        // a tiny container stops after its first round
        let tiny = Measurements {
            memory_bytes: MIB / 2,
            ..meas(1, 1.0, 1000.0)
        };
        assert_eq!(p(&tiny, &plan(Technique::Precopy, 8)).rounds, 1);
        // max_rounds 0 still runs one round, as MOSE does
        assert_eq!(p(&m, &plan(Technique::Precopy, 0)).rounds, 1);
    }

    #[test]
    fn more_bandwidth_never_hurts() {
        for dirty in [0.0, 4.0, 64.0, 512.0] {
            for pl in all_plans() {
                let mut last: Option<Prediction> = None;
                for link in [10.0, 50.0, 100.0, 300.0, 1000.0, 10_000.0] {
                    let got = p(&meas(512, dirty, link), &pl);
                    if let Some(l) = last {
                        assert!(
                            got.downtime_ms <= l.downtime_ms + 1e-9,
                            "{pl:?} d={dirty} link={link}"
                        );
                        assert!(
                            got.total_ms <= l.total_ms + 1e-9,
                            "{pl:?} d={dirty} link={link}"
                        );
                    }
                    last = Some(got);
                }
            }
        }
    }

    #[test]
    fn more_dirtying_never_helps() {
        for link in [50.0, 1000.0] {
            for pl in all_plans() {
                let mut last: Option<Prediction> = None;
                for dirty in [0.0, 1.0, 8.0, 32.0, 128.0, 1024.0, 8192.0] {
                    let got = p(&meas(512, dirty, link), &pl);
                    if let Some(l) = last {
                        assert!(
                            got.downtime_ms >= l.downtime_ms - 1e-9,
                            "{pl:?} d={dirty} link={link}"
                        );
                        assert!(
                            got.total_ms >= l.total_ms - 1e-9,
                            "{pl:?} d={dirty} link={link}"
                        );
                    }
                    last = Some(got);
                }
            }
        }
    }

    #[test]
    fn zero_memory_and_zero_dirty_rate_are_finite() {
        let m = meas(0, 0.0, 1000.0);
        for pl in all_plans() {
            let got = p(&m, &pl);
            assert!(got.downtime_ms.is_finite() && got.total_ms.is_finite());
            assert_eq!(got.bytes, 0);
            assert_eq!(got.rate_bps, 0);
            assert!((got.downtime_ms - 120.0).abs() < 1e-9);
        }
    }

    #[test]
    fn bad_link_is_a_clear_error() {
        for link in [0.0, -5.0, f64::NAN, f64::INFINITY] {
            let m = Measurements {
                link_bytes_per_s: link,
                ..meas(64, 0.0, 1.0)
            };
            let e = predict(&m, &Calibration::default(), &plan(Technique::Cold, 0)).unwrap_err();
            assert_eq!(e.field, "measurements.link_bytes_per_s");
            assert!(e.to_string().contains("positive"), "{e}");
        }
        let m = Measurements {
            dirty_bytes_per_s: -1.0,
            ..meas(64, 0.0, 100.0)
        };
        assert_eq!(
            m.validate().unwrap_err().field,
            "measurements.dirty_bytes_per_s"
        );
        let c = Calibration {
            dump_bytes_per_s: 0.0,
            ..Default::default()
        };
        let e = predict(&meas(64, 0.0, 100.0), &c, &plan(Technique::Cold, 0)).unwrap_err();
        assert_eq!(e.field, "calibration.dump_bytes_per_s");
        let zero_cap = PlanParams {
            bandwidth_cap_bps: Some(0),
            ..plan(Technique::Cold, 0)
        };
        assert!(predict(&meas(64, 0.0, 100.0), &Calibration::default(), &zero_cap).is_err());
    }

    #[test]
    fn a_cap_slows_the_transfer_and_bounds_the_rate() {
        let m = meas(512, 8.0, 1000.0);
        for pl in all_plans() {
            let capped = PlanParams {
                bandwidth_cap_bps: Some(200_000_000),
                ..pl
            };
            let a = p(&m, &pl);
            let b = p(&m, &capped);
            assert!(b.rate_bps <= 200_000_000, "{b:?}");
            assert!(b.total_ms > a.total_ms);
            // a cap above the link changes nothing
            let loose = PlanParams {
                bandwidth_cap_bps: Some(10_000_000_000),
                ..pl
            };
            assert_eq!(p(&m, &loose), a);
        }
    }

    #[test]
    fn postcopy_and_hybrid_are_unavailable_placeholders() {
        let m = meas(512, 8.0, 1000.0);
        for t in [Technique::Postcopy, Technique::Hybrid] {
            let got = p(&m, &plan(t, 1));
            assert!(!got.available);
            assert!(got.downtime_ms.is_finite() && got.bytes > 0);
        }
    }

    #[test]
    fn calibration_persists_and_fills_missing_fields() {
        let c = Calibration::default();
        let back: Calibration = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let partial: Calibration = serde_json::from_str(r#"{"dump_bytes_per_s": 5e8}"#).unwrap();
        assert_eq!(partial.dump_bytes_per_s, 5e8);
        assert_eq!(partial.restore_bytes_per_s, 7e8);
    }
}
