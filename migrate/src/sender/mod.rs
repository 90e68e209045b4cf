//! The sender (source) side: stream a running container to a destination
//! node, and only release it once the destination reports the restored
//! container running. Any failure after the freeze resumes the source.
//!
//! One file per phase, driven by the state machine in [`machine`]:
//! [`handshake`] → [`rounds`] (image, pre-copy, layout hint) → [`freeze`] →
//! [`transfer`] → [`commit`] (cold, pre-copy) or [`lazy`] (post-copy,
//! hybrid) → release, or the rollback in [`commit::roll_back`].

pub mod commit;
pub mod freeze;
pub mod handshake;
pub mod lazy;
pub mod machine;
pub mod migration;
pub mod options;
pub mod rounds;
pub mod stream_dump;
pub mod transfer;
pub mod workdir;

use tracing::warn;

pub use handshake::{connect_to, Certified};
pub use migration::{Reader, Writer};
pub use options::{BeforeFreezeFn, Fault, Progress, ProgressFn, SourceOptions, StopFn};

use crate::{
    error::{error_chain, MigrateError, Result},
    result::{MigrationResult, Timeline},
};
use machine::SenderState;
use migration::Migration;

/// Migrates the container; never panics, always returns a result (status
/// `ok`, `failed` or `rolled-back`, see [`MigrationResult`]).
pub async fn migrate(opts: SourceOptions) -> MigrationResult {
    let tl = Timeline::new();
    let id = migration_id(&opts.container);
    let mut m = match handshake::start(&opts, id.clone(), tl.clone()).await {
        Ok(m) => m,
        Err(e) => {
            let error = error_chain(&e);
            // nothing to remove: the work directory is created last, once
            // its lock is held, and a failed start never got that far (a
            // directory of this name that exists belongs to someone else)
            warn!(%error, "migration failed before anything was frozen");
            let total_ms = tl.now_ms();
            return result_of(&opts, id, tl, total_ms, None, "failed", Some(error));
        }
    };
    let res = run(&mut m).await;
    // a lazy dump still running (a failure) ends before the source resumes
    m.end_lazy_dump().await;
    let total_ms = m.tl.now_ms();
    let (status, error) = match res {
        Ok(()) => ("ok", None),
        Err(e) => fail(&opts, m.state, &e).await,
    };
    let was_frozen = m.freeze_at > 0.0 || m.opts.already_frozen;
    if status != "ok" && was_frozen && m.downtime_ms == 0.0 {
        // frozen, then resumed by the rollback: the service was out till now
        m.downtime_ms = m.tl.now_ms() - m.freeze_at;
    }
    let _ = std::fs::remove_dir_all(&m.work);
    let tl = m.tl.clone();
    result_of(
        &opts,
        m.id.clone(),
        tl,
        total_ms,
        Some(&mut m),
        status,
        error,
    )
}

/// The phases in order.
async fn run(m: &mut Migration<'_>) -> Result<()> {
    m.send_image().await?;
    let seen = m.precopy().await?;
    let hinted = m.layout_hint(seen).await?;
    let images = m.freeze_and_dump().await?;
    let lazy = m.final_transfer(&images, hinted).await?;
    let p = m.commit().await?;
    match lazy {
        Some(part) => m.serve_lazy(&images, part, p).await,
        None => m.await_restored(p).await,
    }
}

/// Rolls back after a failure; the status and error for the result.
async fn fail(
    opts: &SourceOptions,
    state: SenderState,
    e: &MigrateError,
) -> (&'static str, Option<String>) {
    let msg = error_chain(e);
    warn!(error = %msg, state = state.describe(), "migration failed");
    match commit::roll_back(opts, state, e).await {
        Ok(status) => (status, Some(msg)),
        Err(re) => (
            "failed",
            Some(format!(
                "{msg}; resuming the source also failed: {}",
                error_chain(&re)
            )),
        ),
    }
}

fn result_of(
    opts: &SourceOptions,
    migration: String,
    tl: Timeline,
    total_ms: f64,
    m: Option<&mut Migration<'_>>,
    status: &str,
    error: Option<String>,
) -> MigrationResult {
    let (rounds, downtime_ms, bytes_sent, lazy, kept, address, source) = match m {
        Some(m) => (
            std::mem::take(&mut m.rounds),
            m.downtime_ms,
            m.link.w.bytes(),
            m.lazy.take(),
            m.keeps_connections(),
            m.address.take(),
            m.lazy_source.take(),
        ),
        None => (Vec::new(), 0.0, 0, None, false, None, None),
    };
    let (lazy_source, lazy_source_note) = match source {
        Some((name, note)) => (Some(name.to_string()), note),
        None => (None, None),
    };
    MigrationResult {
        status: status.into(),
        migration,
        container: opts.container.clone(),
        destination: opts.to.clone(),
        technique: opts.technique.to_string(),
        rounds: rounds.iter().filter(|r| !r.final_round).count() as u32,
        round_details: rounds,
        downtime_ms,
        total_ms,
        bytes_sent,
        phases: tl.phases,
        error,
        plan: None,
        lazy_ms: lazy.as_ref().map(|l| l.lazy_ms),
        faults: lazy.as_ref().map(|l| l.faults),
        fault_p99_us: lazy.as_ref().map(|l| l.fault_p99_us),
        lazy,
        connections: crate::network::connections(status == "ok", kept).into(),
        address: address.map(|a| a.to_string()),
        lazy_source,
        lazy_source_note,
    }
}

/// A migration's identity, `<container>-<ms since the epoch>-<16 hex digits>`:
/// unique across the agents and `mosectl` runs of one machine and across
/// nodes, since it names the work directory on both sides (two migrations of
/// containers with the same name started in the same millisecond once shared
/// one and destroyed each other's images). The random part comes from the
/// OS (getrandom); if that fails, the process id and a counter stand in.
fn migration_id(container: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let nonce = getrandom::u64().unwrap_or_else(|_| {
        (u64::from(std::process::id()) << 32) | COUNTER.fetch_add(1, Ordering::Relaxed)
    });
    format!("{container}-{ms}-{nonce:016x}")
}

#[cfg(test)]
mod id_tests {
    use super::migration_id;

    #[test]
    fn ids_of_one_container_in_one_millisecond_differ() {
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|_| migration_id("svc")).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids
            .iter()
            .all(|id| id.starts_with("svc-") && !id.contains('/')));
    }
}
