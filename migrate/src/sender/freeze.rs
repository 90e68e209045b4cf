//! The freeze: pause the container (from here on a failure resumes it) and
//! dump it with CRIU into tmpfs, through its shim.

use std::{path::PathBuf, time::Duration};

use tracing::warn;

use super::{machine::SenderEvent, migration::Migration};
use crate::error::{InPhase, Phase, Result};

/// Attempts to pause before giving up: the cgroup freezer gives up when a
/// task is briefly unfreezable (it is thawed again then, nothing lost).
const PAUSE_ATTEMPTS: u32 = 3;
const PAUSE_RETRY: Duration = Duration::from_millis(100);

impl Migration<'_> {
    /// Pauses and dumps; returns the CRIU image directory.
    pub async fn freeze_and_dump(&mut self) -> Result<PathBuf> {
        self.link.phase = Phase::FreezeDump;
        if let Some(hook) = &self.opts.before_freeze {
            hook()
                .await
                .in_phase(Phase::FreezeDump, "freezing the containers that go with it")?;
        }
        // a container frozen with its pod has been out since before its
        // migration began: its downtime counts from the migration's start
        self.freeze_at = if self.opts.already_frozen {
            0.0
        } else {
            self.tl.now_ms()
        };
        let p = self.tl.begin("freeze+dump");
        self.report("dump", 0);
        if !self.opts.already_frozen {
            self.pause().await?;
        }
        self.step(SenderEvent::Froze)?;
        let images = self.work.join("images");
        let crwork = self.work.join("criu-work");
        for d in [&images, &crwork] {
            std::fs::create_dir_all(d)
                .in_phase(Phase::FreezeDump, &format!("creating {}", d.display()))?;
        }
        self.cd
            .shim_checkpoint(
                &self.opts.container,
                &images,
                &crwork,
                self.moves_address(),
                self.keeps_connections(),
            )
            .await
            .in_phase(
                Phase::FreezeDump,
                "dumping the container (CRIU, through its shim)",
            )?;
        self.step(SenderEvent::Dumped)?;
        self.tl.end(p, None);
        Ok(images)
    }

    async fn pause(&mut self) -> Result<()> {
        let mut attempt = 1;
        loop {
            match self.cd.pause(&self.opts.container).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < PAUSE_ATTEMPTS => {
                    warn!(attempt, error = %format!("{e:#}"), "freezing the container failed; retrying");
                    attempt += 1;
                    tokio::time::sleep(PAUSE_RETRY).await;
                }
                Err(e) => return Err(e).in_phase(Phase::FreezeDump, "pausing the container"),
            }
        }
    }
}
