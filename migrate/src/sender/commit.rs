//! The commit and its alternatives: `Commit` → `Restored` (downtime ends) →
//! `Released` → `Ack` (the destination owns the container, the source copy
//! is removed); or, on any failure after the freeze, the rollback that
//! resumes the source.

use std::time::Duration;

use mose_wire::Message;
use tracing::{info, warn};

use super::{
    machine::{SenderEvent, SenderState},
    migration::Migration,
};
use crate::{
    containerd::Containerd,
    error::{InPhase, MigrateError, Phase, Result},
    result::PhaseStart,
};

/// How long a restore may take at the destination.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);
/// Margin past the destination's own silence timer before a source that
/// lost its destination in the lazy phase resumes.
const LAZY_STOP_MARGIN: Duration = Duration::from_secs(2);

impl Migration<'_> {
    /// Sends `Commit`; the phase it starts ends when the container runs.
    pub async fn commit(&mut self) -> Result<PhaseStart> {
        self.link.phase = Phase::Restore;
        let p = self.tl.begin("restore");
        self.link.send(&Message::Commit).await?;
        self.step(SenderEvent::SentCommit)?;
        Ok(p)
    }

    /// Cold and pre-copy: waits for `Restored`, then hands over.
    pub async fn await_restored(&mut self, p: PhaseStart) -> Result<()> {
        let answer = self.link.recv(RESTORE_TIMEOUT).await?;
        self.step(SenderEvent::Received(&answer))?;
        if let Message::Restored {
            pid,
            restore_ms,
            steps,
            ..
        } = answer
        {
            info!(pid, restore_ms, "destination restored the container");
            let now = self.tl.now_ms();
            self.tl.destination_steps(now, &steps);
        }
        self.downtime_ms = self.tl.now_ms() - self.freeze_at;
        self.tl.end(p, None);
        self.release().await
    }

    /// The commit point: once the destination acknowledges `Released` it
    /// owns the container, and the source's copy is removed.
    pub async fn release(&mut self) -> Result<()> {
        self.link.phase = Phase::Release;
        let p = self.tl.begin("release");
        self.link.send(&Message::Released).await?;
        self.step(SenderEvent::SentReleased)?;
        let answer = self.link.recv(self.opts.io_timeout).await?;
        self.step(SenderEvent::Received(&answer))?;
        self.remove_source_copy().await;
        self.tl.end(p, None);
        self.report("done", self.rounds.len() as u32);
        Ok(())
    }
}

impl Migration<'_> {
    /// The destination owns the container: the source's copy goes (a pod's
    /// container stays for the CRI, which the caller stops it through).
    pub async fn remove_source_copy(&mut self) {
        if self.opts.cri_pod {
            return;
        }
        if let Err(e) = self.cd.remove_container(&self.opts.container).await {
            warn!(error = %format!("{e:#}"), "source copy could not be removed; the destination owns the container now");
        }
    }
}

/// After a failure in `state`: resumes the source when it is paused and
/// still its own. When a lazy restore was committed and the destination did
/// not say it stopped its copy, waits until its silence timer has (so two
/// copies never run). Returns the status for the result.
pub async fn roll_back(
    opts: &super::SourceOptions,
    state: SenderState,
    e: &MigrateError,
) -> Result<&'static str> {
    if !state.must_resume() {
        return Ok("failed");
    }
    let destination_stopped = matches!(e, MigrateError::PeerFailed { .. });
    if state.destination_may_run(opts.technique) && !destination_stopped {
        let wait = opts.io_timeout + LAZY_STOP_MARGIN;
        warn!(?wait, "lazy phase lost contact with the destination; waiting for it to stop its copy before resuming");
        tokio::time::sleep(wait).await;
    }
    let cd = Containerd::connect(&opts.socket, &opts.namespace)
        .await
        .in_phase(
            Phase::Release,
            "connecting to containerd to resume the source",
        )?;
    cd.resume(&opts.container)
        .await
        .in_phase(Phase::Release, "resuming the source")?;
    Ok("rolled-back")
}
