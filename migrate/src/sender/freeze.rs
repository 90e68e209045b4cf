//! The freeze: pause the container (from here on a failure resumes it) and
//! dump it with CRIU, through its shim: into tmpfs, or for post-copy and
//! hybrid lazily (the memory stays in the paused processes and CRIU's page
//! server on loopback serves it).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tracing::{debug, warn};

use super::{machine::SenderEvent, migration::Migration};
use crate::{
    error::{InPhase, Phase, Result},
    lazy::{criu_page_server::free_loopback_port, LazySource, PageServerClient},
};

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
        let before = self.link.w.bytes();
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
        if !self.dump_lazily(&images, &crwork).await? {
            self.dump_to_tmpfs(&images, &crwork).await?;
        }
        self.step(SenderEvent::Dumped)?;
        // cold streams its dump while CRIU writes it: what went meanwhile
        let streamed = self.link.w.bytes() - before;
        self.tl
            .end(p, (self.streamed_blocks > 0).then_some(streamed));
        Ok(images)
    }

    /// Post-copy and hybrid where the node allows it: CRIU's lazy dump, its
    /// page server on loopback, connected. Returns false when the container
    /// is to be dumped into tmpfs instead (not a lazy technique, the node
    /// cannot, or the shim refused: the result records why).
    async fn dump_lazily(&mut self, images: &Path, crwork: &Path) -> Result<bool> {
        if !self.opts.technique.is_lazy() {
            return Ok(false);
        }
        let iov = match &self.opts.lazy_source {
            LazySource::CriuPageServer { iov } => *iov,
            LazySource::TmpfsDump { reason } => {
                self.lazy_source = Some(("tmpfs-dump", Some(reason.clone())));
                return Ok(false);
            }
        };
        let port = free_loopback_port().in_phase(
            Phase::FreezeDump,
            "finding a loopback port for CRIU's page server",
        )?;
        let dumped = self
            .cd
            .shim_checkpoint(
                &self.opts.container,
                images,
                crwork,
                self.moves_address(),
                self.keeps_connections(),
                Some(port),
            )
            .await;
        if let Err(e) = dumped {
            if !e.is_shim_refusal() {
                // the shim may have started it all the same (a call that
                // timed out): end whatever runs before dumping again
                self.lazy_dump = Some(port);
                self.end_lazy_dump().await;
            }
            let reason = format!("the lazy dump failed: {}", crate::error::error_chain(&e));
            warn!(%reason, "dumping into tmpfs instead");
            self.lazy_source = Some(("tmpfs-dump", Some(reason)));
            // whatever the failed attempt wrote goes before the full dump
            for d in [images, crwork] {
                let _ = std::fs::remove_dir_all(d);
                std::fs::create_dir_all(d)
                    .in_phase(Phase::FreezeDump, &format!("creating {}", d.display()))?;
            }
            return Ok(false);
        }
        self.lazy_dump = Some(port);
        self.lazy_source = Some(("criu-page-server", None));
        let client = PageServerClient::connect(port, iov, self.opts.io_timeout)
            .await
            .in_phase(Phase::FreezeDump, "connecting to CRIU's lazy page server")?;
        self.page_server = Some(client);
        self.page_server_connected = true;
        Ok(true)
    }

    /// Ends a lazy dump still running (a failure before or during the lazy
    /// phase, or its success): the page server's session closes (CRIU then
    /// leaves the processes as they are: paused), and runc's exit is awaited
    /// so that nothing of the dump outlives the migration.
    pub async fn end_lazy_dump(&mut self) {
        if self.lazy_dump.take().is_none() {
            return;
        }
        // closing the session ends CRIU's page server; one never opened is
        // ended by the shim (it knows the port is still its CRIU's)
        drop(self.page_server.take());
        let never_connected = !self.page_server_connected;
        match self
            .cd
            .shim_finish_lazy_dump(&self.opts.container, never_connected)
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_shim_refusal() => {
                debug!(error = %crate::error::error_chain(&e), "no lazy dump was left to end");
            }
            Err(e) => {
                warn!(error = %crate::error::error_chain(&e), "the lazy dump ended with an error");
            }
        }
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
