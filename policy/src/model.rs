//! The cost model: what a technique would cost (downtime, total time, bytes on
//! the wire) for a container, predicted from measurements and a calibration of
//! the node.
//!
//! It mirrors MOSE's data path (`plugin/src/source.rs`), phase by phase:
//!
//! * **pre-copy rounds** (live, pre-copy and hybrid): each round reads and
//!   hashes the whole resident memory of the running process and sends the
//!   blocks the destination does not have yet; reading/hashing and sending
//!   overlap, so a round lasts `max(bytes × overhead / B, M / scan)`.
//! * **freeze**: pause, CRIU dump (`M / dump`), hash the dumped pages
//!   (`M / hash`), send the blocks that changed since they were last sent,
//!   the destination writes the pages image (`M / assemble`) and CRIU
//!   restores (`M / restore`), plus fixed costs (RPCs, container create;
//!   and, for a container whose service address moves with it, CRIU's
//!   network lock and unlock, the address's attachment on the destination
//!   and its announcement).
//!   Lazy techniques keep only part of it: post-copy dumps and restores with
//!   `--lazy-pages` (no hash, no memory in the image); hybrid also hashes, so
//!   the destination can take unchanged pages from the rounds' blocks.
//! * **lazy phase** (post-copy and hybrid): the container runs on the
//!   destination while the memory it lacks moves at link rate (faults plus a
//!   background push); until the last page arrives it depends on the source.
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
    /// Whether the container's address moves with it: a container with a
    /// MOSE service address (the `mose.io/network` and `mose.io/address`
    /// annotations of its spec, see `docs/networking.md`), or a Kubernetes
    /// pod's container (its pod IP). Not measured: read from the spec when
    /// planning. Its freeze then costs
    /// [`Calibration::address_fixed_downtime_ms`] more. Absent (older
    /// requests and records): `false`.
    #[serde(default)]
    pub moves_address: bool,
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
    /// Extra downtime, in ms, of a migration whose address moves with the
    /// container ([`Measurements::moves_address`]), on top of
    /// `fixed_downtime_ms`: CRIU's network lock and unlock around the dump
    /// and the restore, attaching the address (CNI `ADD`) on the
    /// destination, bringing its link up and the gratuitous ARP. It exists
    /// only for those containers, so it is learned apart from
    /// `fixed_downtime_ms` (`plugin/src/calibrate.rs`).
    ///
    /// The default, 200 ms, is from docs/results.md: the steps named in "A
    /// service that keeps its address" as the address's own (the network
    /// unlocks at the end of the dump, ~47 ms, and of the restore, ~60 ms;
    /// CNI `ADD` ~17 ms; link up and announcement ~10 ms) make ~135 ms;
    /// post-copy froze for 433–486 ms there (under 1 MiB, address moving)
    /// against 199–230 ms at 64 MiB without one ("Against three
    /// baselines"); and the UAV scenario's pre-copy downtime was
    /// under-predicted by ~170–225 ms without it (181–236 ms predicted,
    /// 403–406 ms measured in the runs without an outlier). The calibration
    /// learns ~170 ms from the migrations recorded in results/.
    pub address_fixed_downtime_ms: f64,
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
            address_fixed_downtime_ms: 200.0,
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
            (
                "calibration.address_fixed_downtime_ms",
                self.address_fixed_downtime_ms,
            ),
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

    /// The freeze's fixed cost for a container measured as `m`, in ms:
    /// `fixed_downtime_ms`, plus `address_fixed_downtime_ms` when its
    /// address moves with it.
    pub fn fixed_freeze_ms(&self, m: &Measurements) -> f64 {
        if m.moves_address {
            self.fixed_downtime_ms + self.address_fixed_downtime_ms
        } else {
            self.fixed_downtime_ms
        }
    }
}

/// One way to migrate: the knobs MOSE's source side takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanParams {
    pub technique: Technique,
    /// Upper bound on live pre-copy rounds (pre-copy and hybrid; ignored by
    /// cold and post-copy).
    pub max_rounds: u32,
    /// Cap on the wire rate, bits per second; `None` = the link's rate.
    pub bandwidth_cap_bps: Option<u64>,
    /// lz4 on bulk data. Not modelled: the state is assumed incompressible.
    pub compression: bool,
    /// Pre-copy stop rule: end the live rounds as soon as a round's delta,
    /// sent in the freeze, would keep the downtime under this many ms (set
    /// from `mose.io/max-downtime`; MOSE's source applies the same rule).
    /// Pre-copy only: hybrid's freeze sends no delta, so its downtime does
    /// not depend on the rounds and the model ignores this field for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_below_downtime_ms: Option<u64>,
}

impl PlanParams {
    /// A short human description, e.g. "precopy, 3 rounds, capped at 150Mbit".
    pub fn describe(&self) -> String {
        let mut s = self.technique.to_string();
        if matches!(self.technique, Technique::Precopy | Technique::Hybrid) {
            let n = self.max_rounds.max(1);
            s.push_str(&format!(", {n} round{}", if n == 1 { "" } else { "s" }));
        }
        if let Some(cap) = self.bandwidth_cap_bps {
            s.push_str(&format!(
                ", capped at {}",
                crate::units::fmt_rate(cap as f64)
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
    /// From the start of the migration to the container running on the
    /// destination with all its memory (for post-copy and hybrid, until the
    /// last lazy page has arrived and the source can let go).
    pub total_ms: f64,
    /// Bytes on the wire (payload × overhead).
    pub bytes: u64,
    /// The part of `bytes` sent after the container resumes on the
    /// destination (post-copy and hybrid; 0 otherwise): while it is in
    /// flight, losing the source loses the container.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lazy_bytes: u64,
    /// Peak wire rate used, bits per second.
    pub rate_bps: u64,
    /// Predicted live pre-copy rounds (0 for cold and post-copy).
    pub rounds: u32,
    /// Whether MOSE can run the technique: true for all four since post-copy
    /// and hybrid were implemented; kept so decisions keep their JSON form.
    pub available: bool,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
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
    c.fixed_freeze_ms(m)
        + 1e3
            * (mem / c.dump_bytes_per_s
                + mem / c.hash_bytes_per_s
                + mem / c.assemble_bytes_per_s
                + mem / c.restore_bytes_per_s
                + final_bytes * c.wire_overhead / bw)
}

/// The live pre-copy phase: what the rounds moved, and the final delta `f`
/// (dirtied since the last scan) left for after them.
struct Live {
    secs: f64,
    bytes: f64,
    rounds: u32,
    final_bytes: f64,
    peak: f64,
}

impl Live {
    const NONE: Live = Live {
        secs: 0.0,
        bytes: 0.0,
        rounds: 0,
        final_bytes: 0.0,
        peak: 0.0,
    };
}

/// Runs the pre-copy rounds of `plan` (MOSE's stop rules; the downtime-target
/// rule only when `stop_below_ms` is set) over bandwidth `bw` (bytes/s).
fn live_rounds(
    m: &Measurements,
    c: &Calibration,
    plan: &PlanParams,
    bw: f64,
    stop_below_ms: Option<u64>,
) -> Live {
    let mem = m.memory_bytes as f64;
    let ws = m.working_set_bytes.unwrap_or(m.memory_bytes) as f64;
    let ovh = c.wire_overhead;
    let scan_t = mem / c.scan_bytes_per_s;
    let mut live = Live::NONE;
    let mut prev_b = f64::INFINITY;
    let mut t_last = 0.0;
    for i in 1..=plan.max_rounds.max(1) {
        let b = if i == 1 {
            mem
        } else {
            (m.dirty_bytes_per_s * t_last).min(ws)
        };
        let t = (b * ovh / bw).max(scan_t);
        live.secs += t;
        live.bytes += b;
        live.rounds = i;
        if t > 0.0 {
            live.peak = live.peak.max(b * ovh / t);
        }
        t_last = t;
        if b < MIN_ROUND_BYTES || (i > 1 && b >= SHRINK_STOP * prev_b) {
            break;
        }
        if let Some(target) = stop_below_ms {
            if downtime_if_final_ms(m, c, b, plan.bandwidth_cap_bps) <= target as f64 {
                break;
            }
        }
        prev_b = b;
    }
    live.final_bytes = (m.dirty_bytes_per_s * t_last).min(ws);
    live
}

/// Predicts the cost of `plan` for a container measured as `m` on a node
/// calibrated as `c`.
///
/// With B the effective bandwidth (the link, or the plan's cap if lower), M
/// the memory, D the dirty rate, W the working set, fixed =
/// fixed_downtime (+ address_fixed_downtime when the address moves with the
/// container) and F = fixed + M/dump + M/hash + M/assemble + M/restore:
///
/// * cold: downtime = F − M/dump + max(M/dump, M·ovh/B) (its dump streams
///   while CRIU writes it).
/// * precopy: round 1 sends M in `max(M·ovh/B, M/scan)`; round i sends
///   `b_i = min(D·t_{i-1}, W)` in `max(b_i·ovh/B, M/scan)`; the live phase
///   stops after `max_rounds` (at least one, as in MOSE), or after a round
///   moving less than 1 MiB, or after a round moving ≥ 0.9 × the previous
///   one, or when the plan's downtime target is in reach. The final delta
///   `f = min(D·t_last, W)` is what was dirtied since the last scan (the
///   container is paused before CRIU dumps, so nothing is dirtied during the
///   dump); downtime = F + f·ovh/B.
/// * postcopy: downtime = fixed + M/dump (lazy pages are neither
///   hashed, sent nor restored in the freeze); then M·ovh/B after restore.
/// * hybrid: pre-copy's rounds without the downtime-target rule (the freeze
///   sends no delta, so the downtime does not depend on the rounds);
///   downtime = fixed + M/dump + M/hash; then f·ovh/B after restore.
///
/// total = live rounds + downtime + lazy transfer + fixed_total.
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
    let ovh = c.wire_overhead;
    let fixed = c.fixed_freeze_ms(m) / 1e3;
    let dump = mem / c.dump_bytes_per_s;
    let hash = mem / c.hash_bytes_per_s;
    // the freeze of cold and pre-copy, apart from the transfer
    let eager_freeze =
        fixed + dump + hash + mem / c.assemble_bytes_per_s + mem / c.restore_bytes_per_s;

    // (live phase, freeze costs apart from the transfer, payload sent in
    // the freeze, payload sent lazily after restore)
    let (live, freeze_s, frozen, lazy) = match plan.technique {
        Technique::Cold => (Live::NONE, eager_freeze, mem, 0.0),
        Technique::Precopy => {
            let live = live_rounds(m, c, plan, bw, plan.stop_below_downtime_ms);
            let f = live.final_bytes;
            (live, eager_freeze, f, 0.0)
        }
        Technique::Postcopy => (Live::NONE, fixed + dump, 0.0, mem),
        Technique::Hybrid => {
            let live = live_rounds(m, c, plan, bw, None);
            let f = live.final_bytes;
            (live, fixed + dump + hash, 0.0, f)
        }
    };
    let mut peak = live.peak;
    if frozen + lazy > 0.0 {
        peak = peak.max(bw);
    }
    let wire = frozen * ovh / bw;
    let downtime = match plan.technique {
        // cold streams its dump while CRIU writes it (docs/migration.md):
        // the dump and the transfer overlap, the longer of the two counts
        Technique::Cold => freeze_s - dump + dump.max(wire),
        _ => freeze_s + wire,
    };
    let total = live.secs + downtime + lazy * ovh / bw + c.fixed_total_ms / 1e3;
    // all inputs are validated finite and non-negative; `as` saturates anyway
    Ok(Prediction {
        downtime_ms: downtime * 1e3,
        total_ms: total * 1e3,
        bytes: ((live.bytes + frozen + lazy) * ovh).round() as u64,
        lazy_bytes: (lazy * ovh).round() as u64,
        rate_bps: (peak * 8.0).round() as u64,
        rounds: live.rounds,
        available: true,
    })
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
            moves_address: false,
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
        // the dump overlaps the transfer (cold streams it): the longer counts
        let want_s = 0.120
            + (mem / c.dump_bytes_per_s).max(mem * 1.01 / m.link_bytes_per_s)
            + mem / c.hash_bytes_per_s
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

    fn lazy_plans() -> Vec<PlanParams> {
        let mut v = vec![plan(Technique::Postcopy, 0)];
        v.extend((1..=8).map(|k| plan(Technique::Hybrid, k)));
        v
    }

    #[test]
    fn postcopy_follows_the_formula() {
        let c = Calibration::default();
        let m = meas(512, 64.0, 1000.0);
        let got = p(&m, &plan(Technique::Postcopy, 0));
        let mem = m.memory_bytes as f64;
        // the freeze only dumps: lazy pages are neither hashed, sent nor restored
        let want_s = 0.120 + mem / c.dump_bytes_per_s;
        assert!((got.downtime_ms - want_s * 1e3).abs() < 1e-6, "{got:?}");
        let lazy_ms = mem * 1.01 / m.link_bytes_per_s * 1e3;
        assert!((got.total_ms - got.downtime_ms - lazy_ms - 150.0).abs() < 1e-6);
        assert_eq!(got.bytes, (mem * 1.01).round() as u64);
        assert_eq!(got.lazy_bytes, got.bytes, "all memory moves after restore");
        assert_eq!(got.rate_bps, 1_000_000_000);
        assert_eq!(got.rounds, 0);
        assert!(got.available);
        // the dirty rate plays no part
        assert_eq!(
            p(&meas(512, 0.0, 1000.0), &plan(Technique::Postcopy, 0)),
            got
        );
    }

    #[test]
    fn postcopy_downtime_grows_with_memory_only_by_the_dump() {
        let c = Calibration::default();
        for link in [10.0, 100.0, 1000.0] {
            let small = p(&meas(64, 8.0, link), &plan(Technique::Postcopy, 0));
            let big = p(&meas(1024, 8.0, link), &plan(Technique::Postcopy, 0));
            let dump_ms = (1024 - 64) as f64 * MIB as f64 / c.dump_bytes_per_s * 1e3;
            assert!(
                (big.downtime_ms - small.downtime_ms - dump_ms).abs() < 1e-6,
                "{small:?} {big:?}"
            );
            // cold pays hash, transfer, assemble and restore on top
            let cold = p(&meas(1024, 8.0, link), &plan(Technique::Cold, 0));
            assert!(big.downtime_ms < cold.downtime_ms);
        }
    }

    #[test]
    fn hybrid_moves_precopys_final_delta_lazily() {
        let c = Calibration::default();
        let m = meas(512, 8.0, 1000.0);
        let mem = m.memory_bytes as f64;
        let bw = m.link_bytes_per_s;
        let eager_freeze_ms = 120.0
            + 1e3
                * (mem / c.dump_bytes_per_s
                    + mem / c.hash_bytes_per_s
                    + mem / c.assemble_bytes_per_s
                    + mem / c.restore_bytes_per_s);
        let post = p(&m, &plan(Technique::Postcopy, 0));
        for k in 1..=8 {
            let pre = p(&m, &plan(Technique::Precopy, k));
            let hyb = p(&m, &plan(Technique::Hybrid, k));
            // same rounds, same bytes: only where the final delta moves differs
            assert_eq!(hyb.rounds, pre.rounds, "k={k}");
            assert_eq!(hyb.bytes, pre.bytes, "k={k}");
            // pre-copy sends the final delta in the freeze, hybrid after it
            let final_wire = (pre.downtime_ms - eager_freeze_ms) / 1e3 * bw;
            assert!(
                (hyb.lazy_bytes as f64 - final_wire).abs() <= 1.0,
                "k={k} {hyb:?} {pre:?}"
            );
            assert!(hyb.lazy_bytes > 0 && hyb.lazy_bytes < post.lazy_bytes);
            let want_ms = 120.0 + 1e3 * (mem / c.dump_bytes_per_s + mem / c.hash_bytes_per_s);
            assert!((hyb.downtime_ms - want_ms).abs() < 1e-6, "k={k} {hyb:?}");
            // total = rounds + downtime + lazy delta + fixed: pre-copy's total
            // without assemble and restore
            let pre_total_less =
                pre.total_ms - 1e3 * (mem / c.assemble_bytes_per_s + mem / c.restore_bytes_per_s);
            assert!((hyb.total_ms - pre_total_less).abs() < 1e-6, "k={k}");
            assert!(hyb.downtime_ms > post.downtime_ms, "hybrid also hashes");
        }
        // an idle container leaves nothing to move lazily
        let idle = p(&meas(512, 0.0, 1000.0), &plan(Technique::Hybrid, 4));
        assert_eq!(idle.lazy_bytes, 0);
        assert_eq!(idle.rounds, 2);
    }

    #[test]
    fn hybrid_ignores_the_downtime_target_stop_rule() {
        // the freeze sends no delta, so a target in reach must not cut the rounds
        let m = meas(512, 8.0, 1000.0);
        let free = p(&m, &plan(Technique::Hybrid, 8));
        assert!(free.rounds > 1, "{free:?}");
        let with_target = PlanParams {
            stop_below_downtime_ms: Some(60_000),
            ..plan(Technique::Hybrid, 8)
        };
        assert_eq!(p(&m, &with_target), free);
    }

    #[test]
    fn lazy_plans_keep_the_models_invariants() {
        for pl in lazy_plans() {
            // zero memory: nothing sent, only the fixed freeze
            let z = p(&meas(0, 0.0, 1000.0), &pl);
            assert_eq!((z.bytes, z.lazy_bytes, z.rate_bps), (0, 0, 0), "{pl:?}");
            assert!((z.downtime_ms - 120.0).abs() < 1e-9);
            for dirty in [0.0, 4.0, 64.0, 512.0] {
                let mut last: Option<Prediction> = None;
                for link in [10.0, 50.0, 100.0, 300.0, 1000.0, 10_000.0] {
                    let got = p(&meas(512, dirty, link), &pl);
                    assert!(got.lazy_bytes <= got.bytes);
                    if let Some(l) = last {
                        assert!(got.downtime_ms <= l.downtime_ms + 1e-9, "{pl:?}");
                        assert!(got.total_ms <= l.total_ms + 1e-9, "{pl:?}");
                    }
                    last = Some(got);
                }
            }
            for link in [50.0, 1000.0] {
                let mut last: Option<Prediction> = None;
                for dirty in [0.0, 1.0, 8.0, 32.0, 128.0, 1024.0, 8192.0] {
                    let got = p(&meas(512, dirty, link), &pl);
                    if let Some(l) = last {
                        assert!(got.downtime_ms >= l.downtime_ms - 1e-9, "{pl:?}");
                        assert!(got.total_ms >= l.total_ms - 1e-9, "{pl:?}");
                    }
                    last = Some(got);
                }
            }
            let m = meas(512, 8.0, 1000.0);
            let capped = PlanParams {
                bandwidth_cap_bps: Some(200_000_000),
                ..pl
            };
            let (a, b) = (p(&m, &pl), p(&m, &capped));
            assert!(
                b.rate_bps <= 200_000_000 && b.total_ms > a.total_ms,
                "{pl:?}"
            );
        }
    }

    #[test]
    fn lazy_bytes_stay_out_of_eager_json() {
        let m = meas(64, 8.0, 1000.0);
        let cold = serde_json::to_value(p(&m, &plan(Technique::Cold, 0))).unwrap();
        assert!(cold.get("lazy_bytes").is_none(), "{cold}");
        let post = p(&m, &plan(Technique::Postcopy, 0));
        let v = serde_json::to_value(post).unwrap();
        assert_eq!(v["lazy_bytes"], post.lazy_bytes);
        // decisions written before the field existed still parse
        let old: Prediction = serde_json::from_str(
            r#"{"downtime_ms":1,"total_ms":2,"bytes":3,"rate_bps":4,"rounds":0,"available":true}"#,
        )
        .unwrap();
        assert_eq!(old.lazy_bytes, 0);
    }

    #[test]
    fn describe_shows_the_rounds_of_hybrid_too() {
        assert_eq!(plan(Technique::Hybrid, 3).describe(), "hybrid, 3 rounds");
        assert_eq!(plan(Technique::Hybrid, 0).describe(), "hybrid, 1 round");
        assert_eq!(plan(Technique::Postcopy, 0).describe(), "postcopy");
        assert_eq!(plan(Technique::Precopy, 2).describe(), "precopy, 2 rounds");
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

    #[test]
    fn a_calibration_from_before_the_address_cost_loads_with_its_prior() {
        // every field a calibration had before address_fixed_downtime_ms
        let old: Calibration = serde_json::from_str(
            r#"{"scan_bytes_per_s":1.2e9,"dump_bytes_per_s":8e8,"hash_bytes_per_s":3e9,
            "assemble_bytes_per_s":9e8,"restore_bytes_per_s":6e8,"fixed_downtime_ms":140.0,
            "fixed_total_ms":160.0,"wire_overhead":1.02}"#,
        )
        .unwrap();
        assert_eq!(old.fixed_downtime_ms, 140.0);
        assert_eq!(old.address_fixed_downtime_ms, 200.0);
        assert!(old.validate().is_ok());
        // and measurements from before moves_address: the address stays put
        let m: Measurements = serde_json::from_str(
            r#"{"memory_bytes":4325376,"dirty_bytes_per_s":32768.0,"link_bytes_per_s":1.27e8}"#,
        )
        .unwrap();
        assert!(!m.moves_address);
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["moves_address"], false, "policy programs always see it");
    }

    #[test]
    fn a_bad_address_cost_is_a_clear_error() {
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            let c = Calibration {
                address_fixed_downtime_ms: bad,
                ..Default::default()
            };
            let e = predict(&meas(64, 0.0, 100.0), &c, &plan(Technique::Cold, 0)).unwrap_err();
            assert_eq!(e.field, "calibration.address_fixed_downtime_ms");
        }
        let zero = Calibration {
            address_fixed_downtime_ms: 0.0,
            ..Default::default()
        };
        assert!(zero.validate().is_ok());
    }

    #[test]
    fn a_moving_address_adds_its_fixed_cost_to_every_technique() {
        let c = Calibration {
            address_fixed_downtime_ms: 180.0,
            ..Default::default()
        };
        for (mem, dirty, link) in [(4, 0.03, 1000.0), (64, 4.0, 1000.0), (512, 16.0, 100.0)] {
            let still = meas(mem, dirty, link);
            let moving = Measurements {
                moves_address: true,
                ..still.clone()
            };
            for pl in all_plans().into_iter().chain(lazy_plans()) {
                let a = predict(&still, &c, &pl).unwrap();
                let b = predict(&moving, &c, &pl).unwrap();
                assert!(
                    (b.downtime_ms - a.downtime_ms - 180.0).abs() < 1e-9,
                    "{pl:?} {a:?} {b:?}"
                );
                assert!((b.total_ms - a.total_ms - 180.0).abs() < 1e-9, "{pl:?}");
                // only the freeze's fixed cost changes
                assert_eq!(
                    (b.bytes, b.lazy_bytes, b.rate_bps, b.rounds),
                    (a.bytes, a.lazy_bytes, a.rate_bps, a.rounds),
                    "{pl:?}"
                );
            }
        }
        // an address that stays put costs nothing, whatever the calibration says
        let m = meas(64, 4.0, 1000.0);
        let free = Calibration {
            address_fixed_downtime_ms: 0.0,
            ..c.clone()
        };
        for pl in all_plans().into_iter().chain(lazy_plans()) {
            assert_eq!(
                predict(&m, &c, &pl).unwrap(),
                predict(&m, &free, &pl).unwrap()
            );
        }
    }

    #[test]
    fn the_downtime_target_stop_rule_counts_the_address() {
        let c = Calibration::default();
        let still = meas(512, 8.0, 1000.0);
        let moving = Measurements {
            moves_address: true,
            ..still.clone()
        };
        let d = downtime_if_final_ms(&moving, &c, 1e6, None)
            - downtime_if_final_ms(&still, &c, 1e6, None);
        assert!((d - c.address_fixed_downtime_ms).abs() < 1e-9);
        // a target the freeze meets without the address but not with it:
        // the rounds go on for the moving address instead of stopping at 1
        let target =
            downtime_if_final_ms(&still, &c, still.memory_bytes as f64, None).ceil() as u64;
        let pl = PlanParams {
            stop_below_downtime_ms: Some(target),
            ..plan(Technique::Precopy, 8)
        };
        assert_eq!(p(&still, &pl).rounds, 1);
        assert!(p(&moving, &pl).rounds > 1);
    }
}
