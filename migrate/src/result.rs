//! The outcome of a migration, as people and scripts read it: status, KPIs,
//! bytes on the wire and a timeline of phases.

use std::time::Instant;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    /// Milliseconds since the migration was requested.
    pub start_ms: f64,
    pub duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Round {
    pub round: u32,
    pub final_round: bool,
    pub pages_present: u64,
    pub new_blocks: u64,
    pub bytes: u64,
    pub duration_ms: f64,
    /// Time the application was frozen during this round (0 for live rounds).
    pub freeze_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationResult {
    /// `ok`, `failed` (the source was never stopped) or `rolled-back`
    /// (the source was frozen and has been resumed with its state intact).
    pub status: String,
    pub migration: String,
    pub container: String,
    pub destination: String,
    pub technique: String,
    pub rounds: u32,
    pub round_details: Vec<Round>,
    /// Source-side service gap: freeze to the destination reporting the
    /// restored container running; after a rollback, freeze to the source
    /// resumed; 0 when nothing was frozen.
    pub downtime_ms: f64,
    /// Request to source released.
    pub total_ms: f64,
    pub bytes_sent: u64,
    pub phases: Vec<Phase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the policy planned and predicted, next to what was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanRecord>,
    /// Post-copy and hybrid: restore to last page in place, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lazy_ms: Option<f64>,
    /// Post-copy and hybrid: page faults that waited for a page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<u64>,
    /// Post-copy and hybrid: 99th percentile of those waits, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_p99_us: Option<f64>,
    /// Post-copy and hybrid: the lazy phase in detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lazy: Option<LazyResult>,
    /// The service address that moved with the container (`A.B.C.D/len on
    /// network N`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Its established TCP connections: `kept` (restored open, the address
    /// moved too), `closed` (dumped closed: no service address), or
    /// `untouched` (the migration failed or rolled back: the source runs on
    /// with them).
    #[serde(default)]
    pub connections: String,
    /// Post-copy and hybrid: where the source served the lazy pages from,
    /// `criu-page-server` (CRIU's lazy dump: the freeze does not grow with
    /// memory) or `tmpfs-dump` (the whole memory dumped into tmpfs first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lazy_source: Option<String>,
    /// Why the source used `tmpfs-dump`, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lazy_source_note: Option<String>,
}

/// The lazy phase of a post-copy or hybrid migration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LazyResult {
    pub lazy_ms: f64,
    pub faults: u64,
    pub fault_p50_us: f64,
    pub fault_p99_us: f64,
    /// Lazy pages in the checkpoint.
    pub pages: u64,
    /// Lazy pages that crossed the link (answers and push).
    pub pages_sent: u64,
    /// Lazy pages the destination took from its pre-copied blocks (hybrid).
    pub pages_from_cache: u64,
    /// Fault requests the source answered.
    pub page_requests: u64,
    /// Bytes the lazy phase put on the wire.
    pub bytes: u64,
}

/// The plan a migration followed, with its predictions beside the measured KPIs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanRecord {
    /// `builtin`, or the operator's policy program.
    pub policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_error: Option<String>,
    pub decision: mose_policy::Decision,
    pub measurements: mose_policy::Measurements,
    pub kpis: Vec<KpiComparison>,
}

/// One KPI: its target (if annotated), the prediction and the measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KpiComparison {
    pub kpi: String,
    pub unit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<f64>,
    pub predicted: f64,
    pub measured: f64,
    /// Whether the measurement met the target (absent without a target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
}

impl PlanRecord {
    /// Sets the measured side from a finished migration.
    pub fn compare(
        policy: String,
        policy_error: Option<String>,
        decision: mose_policy::Decision,
        request: &mose_policy::PlanRequest,
        r: &MigrationResult,
    ) -> Self {
        let t = &request.targets;
        let p = decision.predicted;
        let row = |kpi: &str, unit: &str, target: Option<f64>, predicted: f64, measured: f64| {
            KpiComparison {
                kpi: kpi.into(),
                unit: unit.into(),
                target,
                predicted,
                measured,
                met: target.map(|x| measured <= x),
            }
        };
        let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        let kpis = match &p {
            Some(p) => vec![
                row(
                    "downtime",
                    "ms",
                    ms(t.max_downtime),
                    p.downtime_ms,
                    r.downtime_ms,
                ),
                row(
                    "total",
                    "ms",
                    ms(t.max_migration_time),
                    p.total_ms,
                    r.total_ms,
                ),
                row("bytes", "B", None, p.bytes as f64, r.bytes_sent as f64),
            ],
            None => Vec::new(),
        };
        Self {
            policy,
            policy_error,
            decision,
            measurements: request.measurements.clone(),
            kpis,
        }
    }
}

/// Records phases against a common start.
#[derive(Clone)]
pub struct Timeline {
    t0: Instant,
    pub phases: Vec<Phase>,
}

impl Timeline {
    pub fn new() -> Self {
        Self {
            t0: Instant::now(),
            phases: Vec::new(),
        }
    }

    pub fn now_ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1000.0
    }

    /// Starts a phase; `end` records it.
    pub fn begin(&self, name: &str) -> PhaseStart {
        PhaseStart {
            name: name.to_string(),
            start_ms: self.now_ms(),
        }
    }

    /// Starts a phase that began at `start_ms` (measured elsewhere).
    pub fn begin_at(&self, name: &str, start_ms: f64) -> PhaseStart {
        PhaseStart {
            name: name.to_string(),
            start_ms,
        }
    }

    /// When the migration started (its clock's zero).
    pub fn started(&self) -> Instant {
        self.t0
    }

    /// Records a phase that ended at `end_ms` (measured elsewhere).
    pub fn end_at(&mut self, p: PhaseStart, end_ms: f64, bytes: Option<u64>) {
        self.phases.push(Phase {
            name: p.name,
            start_ms: p.start_ms,
            duration_ms: end_ms - p.start_ms,
            bytes,
        });
    }

    /// Places the destination's own steps (name, ms) so that they end at
    /// `end_ms`, when its answer left (each named `dest: <step>`).
    pub fn destination_steps(&mut self, end_ms: f64, steps: &[(String, f64)]) {
        let mut at = end_ms - steps.iter().map(|(_, d)| d).sum::<f64>();
        for (name, d) in steps {
            self.phases.push(Phase {
                name: format!("dest: {name}"),
                start_ms: at,
                duration_ms: *d,
                bytes: None,
            });
            at += d;
        }
    }

    pub fn end(&mut self, p: PhaseStart, bytes: Option<u64>) -> f64 {
        let d = self.now_ms() - p.start_ms;
        self.phases.push(Phase {
            name: p.name,
            start_ms: p.start_ms,
            duration_ms: d,
            bytes,
        });
        d
    }
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

pub struct PhaseStart {
    name: String,
    start_ms: f64,
}
