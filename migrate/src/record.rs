//! The node's migration records: one JSON object per line in
//! `<state-dir>/migrations.jsonl`, written by both sides (`direction` "in" on
//! the receiver, "out" from `mosectl`).

use std::{path::Path, sync::Arc};

/// One incoming migration as the receiver records it.
#[derive(Debug)]
pub struct IncomingRecord<'a> {
    pub migration: &'a str,
    pub container: &'a str,
    pub namespace: &'a str,
    /// The peer's identity, as its certificate names it.
    pub peer: &'a str,
    /// The technique the source announced (`cold`, `precopy`, `postcopy`,
    /// `hybrid`).
    pub technique: &'a str,
    /// `ok` or `failed`.
    pub status: &'a str,
    pub error: Option<String>,
    /// The step a failed migration failed in, as [`crate::error::Phase`]
    /// names it (`restore`, `lazy phase`, ...); `None` when it succeeded.
    pub step: Option<String>,
    /// Wall time from the handshake to the outcome on this node.
    pub took: std::time::Duration,
}

/// Told of every incoming migration the receiver records (the node agent's
/// metrics), right when its record is written. It runs on the receiver's
/// task: it must be quick and must not block.
pub type IncomingObserver = Arc<dyn Fn(&IncomingRecord<'_>) + Send + Sync>;

/// Told of every outgoing migration this process runs for a pod pulled from
/// here (the node agent's metrics), once its result is recorded. Quick and
/// non-blocking, like [`IncomingObserver`].
pub type OutgoingObserver = Arc<dyn Fn(&crate::result::MigrationResult) + Send + Sync>;

/// Appends an incoming migration's record to the node's log.
pub fn record_incoming(state_dir: &Path, r: IncomingRecord<'_>) {
    let line = serde_json::json!({
        "migration": r.migration,
        "direction": "in",
        "container": r.container,
        "namespace": r.namespace,
        "peer": r.peer,
        "technique": r.technique,
        "status": r.status,
        "error": r.error,
        "step": r.step,
        "ms": r.took.as_secs_f64() * 1000.0,
        "at": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
    });
    append_record(state_dir, &line);
}

/// Appends one migration record to the node's log. A record that cannot be
/// written is logged and dropped: the migration's outcome does not depend on it.
pub fn append_record(state_dir: &Path, line: &serde_json::Value) {
    use std::io::Write;
    let path = state_dir.join("migrations.jsonl");
    let res = std::fs::create_dir_all(state_dir).and_then(|_| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        writeln!(f, "{line}")
    });
    if let Err(e) = res {
        tracing::warn!(path = %path.display(), error = %e, "could not write the migration record");
    }
}
