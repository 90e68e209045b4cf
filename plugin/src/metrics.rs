//! The node agent's Prometheus metrics: what it sees of the migrations that
//! leave and reach this node, served as OpenMetrics text on
//! `GET /metrics` (`--metrics-listen`, default `127.0.0.1:9464`).
//!
//! Where the numbers come from:
//! - outgoing migrations: the results `mosectl migrate` reports to the
//!   policy hook (`{"op":"learn"}`, see [`crate::policy`]), observed with
//!   [`Metrics::observe_outgoing`], and the pod containers this agent
//!   migrates itself when another node pulls a pod (the endpoint's
//!   `on_outgoing`, [`Metrics::outgoing_observer`]);
//! - incoming migrations: the receiver's record of each one (the
//!   [`mose_migrate::record::IncomingObserver`] in the endpoint's
//!   configuration), observed with [`Metrics::observe_incoming`].
//!
//! The exposition format is `prometheus-client`'s; the HTTP server is axum
//! (already in the workspace through tonic).

use std::{fmt, net::SocketAddr, str::FromStr, sync::Arc};

use anyhow::Context;
use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use mose_contract::Technique;
use mose_migrate::{
    error::Phase,
    record::{IncomingObserver, IncomingRecord, OutgoingObserver},
    result::MigrationResult,
};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};
use tokio::net::TcpListener;

/// The content type of `GET /metrics` (OpenMetrics text 1.0.0).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `--metrics-listen`'s default: loopback only, Prometheus' exporter port
/// range.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// Bucket bounds of the migration time histograms, in seconds: 10 ms to
/// 120 s, about ×2 apart.
const TIME_BUCKETS_S: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];

/// Bucket bounds of the post-copy fault-wait histogram, in seconds: 10 µs
/// (a page already on its way) to 1 s (a stalled link).
const FAULT_WAIT_BUCKETS_S: [f64; 16] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Bucket bounds of the pre-copy rounds histogram (rounds per migration).
const ROUND_BUCKETS: [f64; 12] = [
    0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0,
];

/// Bucket bounds of the prediction error histogram (|measured - predicted|
/// / measured: 0.1 is 10 %).
const ERROR_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

fn time_histogram() -> Histogram {
    Histogram::new(TIME_BUCKETS_S)
}

fn fault_wait_histogram() -> Histogram {
    Histogram::new(FAULT_WAIT_BUCKETS_S)
}

fn round_histogram() -> Histogram {
    Histogram::new(ROUND_BUCKETS)
}

fn error_histogram() -> Histogram {
    Histogram::new(ERROR_BUCKETS)
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Which side of a migration this node was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// This node received the container (the destination).
    In,
    /// This node sent the container (the source).
    Out,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MigrationLabels {
    technique: &'static str,
    direction: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    technique: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TechniqueLabels {
    technique: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    direction: &'static str,
    technique: &'static str,
    outcome: &'static str,
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KpiLabels {
    kpi: String,
}

/// The agent's metrics and the registry that encodes them. Observing is
/// cheap (atomic adds under short locks) and never fails.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    migrations: Family<MigrationLabels, Counter>,
    downtime: Histograms<OutcomeLabels>,
    duration: Histograms<MigrationLabels>,
    sent_bytes: Family<TechniqueLabels, Counter>,
    rounds: Histograms<TechniqueLabels>,
    faults: Family<TechniqueLabels, Counter>,
    fault_wait_p99: Histograms<TechniqueLabels>,
    failures: Family<FailureLabels, Counter>,
    prediction_error: Histograms<KpiLabels>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All metrics registered, none observed yet.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let migrations = Family::<MigrationLabels, Counter>::default();
        registry.register(
            "mose_migrations",
            "Migrations finished on this node (count), by technique, direction (out: this node \
             was the source; in: the destination) and outcome (the result's status: ok, failed, \
             rolled-back)",
            migrations.clone(),
        );
        let downtime: Histograms<OutcomeLabels> =
            Family::new_with_constructor(time_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "mose_migration_downtime",
            "Service gap of outgoing migrations in seconds, as the source measures it (freeze to \
             the destination reporting the container running, or to the source resumed after a \
             rollback); migrations that froze nothing are not observed",
            Unit::Seconds,
            downtime.clone(),
        );
        let duration: Histograms<MigrationLabels> =
            Family::new_with_constructor(time_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "mose_migration_duration",
            "Total migration time in seconds (out: request to source released; in: handshake to \
             the restored container kept or cleaned up)",
            Unit::Seconds,
            duration.clone(),
        );
        let sent_bytes = Family::<TechniqueLabels, Counter>::default();
        registry.register_with_unit(
            "mose_migration_sent",
            "Bytes outgoing migrations put on the wire (all phases, all outcomes)",
            Unit::Bytes,
            sent_bytes.clone(),
        );
        let rounds: Histograms<TechniqueLabels> =
            Family::new_with_constructor(round_histogram as fn() -> Histogram);
        registry.register(
            "mose_precopy_rounds",
            "Live pre-copy rounds per outgoing migration (count; 0 for cold and post-copy)",
            rounds.clone(),
        );
        let faults = Family::<TechniqueLabels, Counter>::default();
        registry.register(
            "mose_postcopy_faults",
            "Page faults that waited for a page during the lazy phase of outgoing post-copy and \
             hybrid migrations (count)",
            faults.clone(),
        );
        let fault_wait_p99: Histograms<TechniqueLabels> =
            Family::new_with_constructor(fault_wait_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "mose_postcopy_fault_wait_p99",
            "99th percentile of the fault waits of one outgoing post-copy or hybrid migration, in \
             seconds: one observation per migration that had faults (single waits are not \
             reported to the agent)",
            Unit::Seconds,
            fault_wait_p99.clone(),
        );
        let failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "mose_migration_failures",
            "Migrations that did not complete (count), by the step they failed in; \
             outcome=\"rolled-back\" counts the source's rollbacks (frozen, then resumed with its \
             state), outcome=\"failed\" the rest",
            failures.clone(),
        );
        let prediction_error: Histograms<KpiLabels> =
            Family::new_with_constructor(error_histogram as fn() -> Histogram);
        registry.register(
            "mose_policy_prediction_error_ratio",
            "Relative error of the policy's predictions, |measured - predicted| / measured (a \
             ratio: 0.1 is 10 %), per KPI, for successful outgoing migrations that followed a \
             plan; KPIs measured as 0 are not observed",
            prediction_error.clone(),
        );
        Self {
            registry,
            migrations,
            downtime,
            duration,
            sent_bytes,
            rounds,
            faults,
            fault_wait_p99,
            failures,
            prediction_error,
        }
    }

    /// Observes an outgoing migration's result (this node was the source).
    pub fn observe_outgoing(&self, r: &MigrationResult) {
        let technique = technique_label(&r.technique);
        let outcome = outcome_label(&r.status);
        let ok = outcome == "ok";
        let direction = Direction::Out.as_str();
        let labels = MigrationLabels {
            technique,
            direction,
            outcome,
        };
        self.migrations.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&labels)
            .observe(r.total_ms / 1000.0);
        if ok || r.downtime_ms > 0.0 {
            self.downtime
                .get_or_create(&OutcomeLabels { technique, outcome })
                .observe(r.downtime_ms / 1000.0);
        }
        let t = TechniqueLabels { technique };
        self.sent_bytes.get_or_create(&t).inc_by(r.bytes_sent);
        self.rounds.get_or_create(&t).observe(f64::from(r.rounds));
        let (faults, p99_us) = match &r.lazy {
            Some(l) => (Some(l.faults), Some(l.fault_p99_us)),
            None => (r.faults, r.fault_p99_us),
        };
        if let Some(n) = faults {
            self.faults.get_or_create(&t).inc_by(n);
            if let Some(p99) = p99_us.filter(|_| n > 0) {
                self.fault_wait_p99
                    .get_or_create(&t)
                    .observe(p99 / 1_000_000.0);
            }
        }
        if !ok {
            self.failures
                .get_or_create(&FailureLabels {
                    direction,
                    technique,
                    outcome,
                    step: failing_step(r.error.as_deref()),
                })
                .inc();
        }
        if let (true, Some(plan)) = (ok, &r.plan) {
            for k in plan.kpis.iter().filter(|k| k.measured > 0.0) {
                let err = (k.measured - k.predicted).abs() / k.measured;
                self.prediction_error
                    .get_or_create(&KpiLabels {
                        kpi: kpi_label(&k.kpi).into(),
                    })
                    .observe(err);
            }
        }
    }

    /// Observes an incoming migration as the receiver records it (this node
    /// was the destination).
    pub fn observe_incoming(&self, r: &IncomingRecord<'_>) {
        let technique = technique_label(r.technique);
        let outcome = outcome_label(r.status);
        let direction = Direction::In.as_str();
        let labels = MigrationLabels {
            technique,
            direction,
            outcome,
        };
        self.migrations.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&labels)
            .observe(r.took.as_secs_f64());
        if outcome != "ok" {
            self.failures
                .get_or_create(&FailureLabels {
                    direction,
                    technique,
                    outcome,
                    step: r
                        .step
                        .as_deref()
                        .map_or_else(|| "unknown".into(), step_label),
                })
                .inc();
        }
    }

    /// An observer for the receiver ([`mose_migrate::receiver::EndpointConfig`]'s
    /// `on_incoming`) feeding [`Metrics::observe_incoming`].
    pub fn incoming_observer(self: &Arc<Self>) -> IncomingObserver {
        let m = self.clone();
        Arc::new(move |r: &IncomingRecord<'_>| m.observe_incoming(r))
    }

    /// An observer for the endpoint's pod pulls (`EndpointConfig::on_outgoing`)
    /// feeding [`Metrics::observe_outgoing`].
    pub fn outgoing_observer(self: &Arc<Self>) -> OutgoingObserver {
        let m = self.clone();
        Arc::new(move |r: &MigrationResult| m.observe_outgoing(r))
    }

    /// The OpenMetrics text exposition of every metric (ends with `# EOF`).
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// A technique's label: its name, or `unknown` for anything else (labels
/// stay a bounded set whatever a client reports).
fn technique_label(t: &str) -> &'static str {
    Technique::from_str(t).map_or("unknown", Technique::as_str)
}

/// A KPI's label: the KPIs a plan compares (`downtime`, `total`, `bytes`,
/// see `PlanRecord::compare`), or `unknown`: a reported result cannot grow
/// the label set.
fn kpi_label(k: &str) -> &'static str {
    match k {
        "downtime" => "downtime",
        "total" => "total",
        "bytes" => "bytes",
        _ => "unknown",
    }
}

/// A status' label: `ok`, `failed`, `rolled-back` (the values
/// [`MigrationResult::status`] holds), or `unknown`.
fn outcome_label(s: &str) -> &'static str {
    match s {
        "ok" => "ok",
        "failed" => "failed",
        "rolled-back" => "rolled-back",
        _ => "unknown",
    }
}

/// Every phase a migration can fail in. A new [`Phase`] variant makes the
/// match below a compile error: the reminder to list it in `ALL` too.
fn all_phases() -> [Phase; 9] {
    const ALL: [Phase; 9] = [
        Phase::Handshake,
        Phase::Image,
        Phase::Rounds,
        Phase::FreezeDump,
        Phase::Transfer,
        Phase::Restore,
        Phase::Lazy,
        Phase::Release,
        Phase::Probe,
    ];
    fn listed(p: Phase) {
        match p {
            Phase::Handshake
            | Phase::Image
            | Phase::Rounds
            | Phase::FreezeDump
            | Phase::Transfer
            | Phase::Restore
            | Phase::Lazy
            | Phase::Release
            | Phase::Probe => {}
        }
    }
    ALL.iter().copied().for_each(listed);
    ALL
}

/// The label of a step named as [`Phase`] displays it (`freeze+dump`,
/// `restore`, ...); `unknown` for anything else.
fn step_label(name: &str) -> String {
    all_phases()
        .iter()
        .map(Phase::to_string)
        .find(|n| n == name)
        .unwrap_or_else(|| "unknown".into())
}

/// The step a failed outgoing migration failed in. The engine's errors
/// start with the phase they happened in (`"freeze+dump: ..."`, see
/// `mose_migrate::error::MigrateError`); anything else is `unknown`.
pub fn failing_step(error: Option<&str>) -> String {
    error
        .and_then(|e| e.split_once(": "))
        .map_or_else(|| "unknown".into(), |(phase, _)| step_label(phase))
}

/// `--metrics-listen`: where the metrics are served, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListen {
    /// No metrics endpoint.
    Off,
    /// Serve `GET /metrics` on this address.
    At(SocketAddr),
}

impl FromStr for MetricsListen {
    type Err = String;

    /// `off`, or an IP address and port (`127.0.0.1:9464`, `[::1]:9464`,
    /// `0.0.0.0:9464`); host names are refused (the agent does not resolve
    /// names at start).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "expected IP:PORT such as 127.0.0.1:9464 or [::1]:9464 (host \
                                names are not resolved), or `off` to serve no metrics";
        if s == "off" {
            return Ok(MetricsListen::Off);
        }
        if s.trim().is_empty() {
            return Err(format!("empty: {EXPECTED}"));
        }
        s.parse::<SocketAddr>()
            .map(MetricsListen::At)
            .map_err(|_| format!("not IP:PORT: {EXPECTED}"))
    }
}

/// Binds the metrics endpoint. The error names the address and the flag.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot serve metrics on {addr} (--metrics-listen): {e}; pass another \
             --metrics-listen IP:PORT, or --metrics-listen off"
        )
    })
}

/// The HTTP routes: `GET /metrics`; anything else is 404.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics)
}

async fn scrape(State(m): State<Arc<Metrics>>) -> Response {
    match m.encode() {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding the metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding the metrics failed\n",
            )
                .into_response()
        }
    }
}

/// Serves `GET /metrics` on `listener` (see [`bind`]) until the process
/// ends or the listener fails.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let addr = listener
        .local_addr()
        .context("the metrics listener's address")?;
    tracing::info!(address = %addr, "serving metrics at http://{addr}/metrics");
    axum::serve(listener, router(metrics))
        .await
        .with_context(|| format!("serving metrics on {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mose_migrate::result::{KpiComparison, LazyResult, Phase as TimelinePhase, PlanRecord};

    fn result(technique: &str, status: &str) -> MigrationResult {
        MigrationResult {
            status: status.into(),
            migration: "m-1".into(),
            container: "c".into(),
            destination: "10.0.0.2:7700".into(),
            technique: technique.into(),
            rounds: 0,
            round_details: Vec::new(),
            downtime_ms: 0.0,
            total_ms: 0.0,
            bytes_sent: 0,
            phases: Vec::new(),
            error: None,
            plan: None,
            lazy_ms: None,
            faults: None,
            fault_p99_us: None,
            lazy: None,
            address: None,
            connections: String::new(),
            lazy_source: None,
            lazy_source_note: None,
        }
    }

    fn encoded(m: &Metrics) -> String {
        m.encode().unwrap()
    }

    #[test]
    fn an_ok_postcopy_migration_counts_its_time_bytes_and_fault_waits() {
        let m = Metrics::new();
        let mut r = result("postcopy", "ok");
        r.downtime_ms = 180.0;
        r.total_ms = 3_400.0;
        r.bytes_sent = 33_554_432;
        r.lazy = Some(LazyResult {
            lazy_ms: 2_900.0,
            faults: 412,
            fault_p50_us: 350.0,
            fault_p99_us: 2_100.0,
            pages: 8_192,
            pages_sent: 8_192,
            pages_from_cache: 0,
            page_requests: 412,
            bytes: 33_000_000,
        });
        r.faults = Some(412);
        r.fault_p99_us = Some(2_100.0);
        m.observe_outgoing(&r);
        let t = encoded(&m);
        for line in [
            "mose_migrations_total{technique=\"postcopy\",direction=\"out\",outcome=\"ok\"} 1",
            "mose_migration_downtime_seconds_bucket{le=\"0.25\",technique=\"postcopy\",outcome=\"ok\"} 1",
            "mose_migration_downtime_seconds_bucket{le=\"0.1\",technique=\"postcopy\",outcome=\"ok\"} 0",
            "mose_migration_duration_seconds_sum{technique=\"postcopy\",direction=\"out\",outcome=\"ok\"} 3.4",
            "mose_migration_duration_seconds_bucket{le=\"5.0\",technique=\"postcopy\",direction=\"out\",outcome=\"ok\"} 1",
            "mose_migration_sent_bytes_total{technique=\"postcopy\"} 33554432",
            "mose_precopy_rounds_bucket{le=\"0.0\",technique=\"postcopy\"} 1",
            "mose_postcopy_faults_total{technique=\"postcopy\"} 412",
            "mose_postcopy_fault_wait_p99_seconds_bucket{le=\"0.0025\",technique=\"postcopy\"} 1",
            "mose_postcopy_fault_wait_p99_seconds_bucket{le=\"0.001\",technique=\"postcopy\"} 0",
            "# UNIT mose_migration_downtime_seconds seconds",
            "# EOF",
        ] {
            assert!(t.contains(line), "missing {line:?} in\n{t}");
        }
        assert!(!t.contains("mose_migration_failures_total{"), "{t}");
        assert!(
            !t.contains("mose_policy_prediction_error_ratio_bucket{"),
            "{t}"
        );
    }

    #[test]
    fn a_rolled_back_migration_is_counted_by_its_failing_step() {
        let m = Metrics::new();
        let mut r = result("precopy", "rolled-back");
        r.rounds = 3;
        r.downtime_ms = 420.0;
        r.total_ms = 2_000.0;
        r.bytes_sent = 1_000;
        r.phases = vec![TimelinePhase {
            name: "freeze+dump".into(),
            start_ms: 1_500.0,
            duration_ms: 100.0,
            bytes: None,
        }];
        r.error =
            Some("restore: 10.0.0.2:7700 failed at restore: runc restore: exit status 1".into());
        m.observe_outgoing(&r);
        let mut f = result("cold", "failed");
        f.error = Some("handshake: connecting to 10.0.0.2:7700: connection refused".into());
        m.observe_outgoing(&f);
        let t = encoded(&m);
        for line in [
            "mose_migration_failures_total{direction=\"out\",technique=\"precopy\",outcome=\"rolled-back\",step=\"restore\"} 1",
            "mose_migration_failures_total{direction=\"out\",technique=\"cold\",outcome=\"failed\",step=\"handshake\"} 1",
            "mose_migrations_total{technique=\"precopy\",direction=\"out\",outcome=\"rolled-back\"} 1",
            "mose_migration_downtime_seconds_sum{technique=\"precopy\",outcome=\"rolled-back\"} 0.42",
            "mose_precopy_rounds_bucket{le=\"3.0\",technique=\"precopy\"} 1",
            "mose_precopy_rounds_bucket{le=\"2.0\",technique=\"precopy\"} 0",
        ] {
            assert!(t.contains(line), "missing {line:?} in\n{t}");
        }
        // a failure that froze nothing has no downtime to observe
        assert!(
            !t.contains("mose_migration_downtime_seconds_count{technique=\"cold\""),
            "{t}"
        );
    }

    #[test]
    fn a_planned_migration_observes_the_relative_error_of_each_kpi() {
        let m = Metrics::new();
        let mut r = result("precopy", "ok");
        r.downtime_ms = 200.0;
        r.total_ms = 4_000.0;
        r.bytes_sent = 100;
        let kpi = |kpi: &str, unit: &str, predicted: f64, measured: f64| KpiComparison {
            kpi: kpi.into(),
            unit: unit.into(),
            target: None,
            predicted,
            measured,
            met: None,
        };
        r.plan = Some(PlanRecord {
            policy: "builtin".into(),
            policy_error: None,
            decision: mose_policy::Decision {
                plan: None,
                predicted: None,
                targets: Vec::new(),
                feasible: true,
                refused: false,
                reason: "test".into(),
                candidates_considered: 1,
            },
            measurements: mose_policy::Measurements {
                memory_bytes: 1 << 26,
                dirty_bytes_per_s: 0.0,
                working_set_bytes: None,
                link_bytes_per_s: 1e8,
                moves_address: false,
            },
            kpis: vec![
                // 150 predicted, 200 measured: 25 % off
                kpi("downtime", "ms", 150.0, 200.0),
                // 4400 predicted, 4000 measured: 10 % off
                kpi("total", "ms", 4_400.0, 4_000.0),
                // measured 0: no relative error to speak of
                kpi("bytes", "B", 50.0, 0.0),
            ],
        });
        m.observe_outgoing(&r);
        let t = encoded(&m);
        for line in [
            "mose_policy_prediction_error_ratio_sum{kpi=\"downtime\"} 0.25",
            "mose_policy_prediction_error_ratio_bucket{le=\"0.25\",kpi=\"downtime\"} 1",
            "mose_policy_prediction_error_ratio_bucket{le=\"0.1\",kpi=\"downtime\"} 0",
            "mose_policy_prediction_error_ratio_bucket{le=\"0.1\",kpi=\"total\"} 1",
            "mose_policy_prediction_error_ratio_bucket{le=\"0.05\",kpi=\"total\"} 0",
        ] {
            assert!(t.contains(line), "missing {line:?} in\n{t}");
        }
        assert!(!t.contains("kpi=\"bytes\""), "{t}");
    }

    #[test]
    fn incoming_migrations_are_counted_with_their_step() {
        let m = Arc::new(Metrics::new());
        let observe = m.incoming_observer();
        let rec = |status, step: Option<&str>, ms| IncomingRecord {
            migration: "m-2",
            container: "c",
            namespace: "default",
            peer: "node-a",
            technique: "hybrid",
            status,
            error: step.map(|s| format!("{s}: it broke")),
            step: step.map(String::from),
            took: std::time::Duration::from_millis(ms),
        };
        observe(&rec("ok", None, 1_200));
        observe(&rec("failed", Some("lazy phase"), 800));
        let t = encoded(&m);
        for line in [
            "mose_migrations_total{technique=\"hybrid\",direction=\"in\",outcome=\"ok\"} 1",
            "mose_migrations_total{technique=\"hybrid\",direction=\"in\",outcome=\"failed\"} 1",
            "mose_migration_failures_total{direction=\"in\",technique=\"hybrid\",outcome=\"failed\",step=\"lazy phase\"} 1",
            "mose_migration_duration_seconds_count{technique=\"hybrid\",direction=\"in\",outcome=\"ok\"} 1",
            "mose_migration_duration_seconds_sum{technique=\"hybrid\",direction=\"in\",outcome=\"failed\"} 0.8",
        ] {
            assert!(t.contains(line), "missing {line:?} in\n{t}");
        }
    }

    #[test]
    fn labels_stay_bounded() {
        assert_eq!(technique_label("pre-copy"), "precopy");
        assert_eq!(technique_label("teleport"), "unknown");
        assert_eq!(outcome_label("exploded"), "unknown");
        assert_eq!(
            failing_step(Some("freeze+dump: pausing: busy")),
            "freeze+dump"
        );
        assert_eq!(failing_step(Some("lazy phase: x")), "lazy phase");
        assert_eq!(failing_step(Some("something else: x")), "unknown");
        assert_eq!(failing_step(None), "unknown");
        for p in all_phases() {
            assert_eq!(step_label(&p.to_string()), p.to_string());
        }
    }

    #[test]
    fn metrics_listen_takes_an_address_or_off() {
        assert_eq!("off".parse(), Ok(MetricsListen::Off));
        assert_eq!(
            DEFAULT_LISTEN.parse(),
            Ok(MetricsListen::At(SocketAddr::from(([127, 0, 0, 1], 9464))))
        );
        assert!(matches!("[::1]:9464".parse(), Ok(MetricsListen::At(_))));
        for bad in [
            "",
            " ",
            "9464",
            "localhost:9464",
            "127.0.0.1",
            "127.0.0.1:99999",
            "OFF",
        ] {
            assert!(bad.parse::<MetricsListen>().is_err(), "{bad:?} accepted");
        }
    }
}
