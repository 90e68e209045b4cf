//! While the container runs: the image (when the destination lacks it),
//! pre-copy rounds of content-addressed page blocks, and the layout hint of
//! the pages images the dump will most likely produce.

use std::time::Duration;

use mose_wire::{BlockHash, Message, BLOCK_SIZE};
use tracing::info;

use super::{machine::SenderEvent, migration::Migration};
use crate::{
    error::{InPhase, MigrateError, Phase, Result},
    memory,
    result::Round,
};

/// How long the destination may take to import an image.
const IMAGE_IMPORT: Duration = Duration::from_secs(120);
/// A round whose delta is at least this share of the previous one stopped
/// converging.
const NOT_SHRINKING: f64 = 0.9;

impl Migration<'_> {
    /// Sends the image when the destination lacks it, and waits for its
    /// import: a freeze must not wait for it.
    pub async fn send_image(&mut self) -> Result<()> {
        if self.state != super::machine::SenderState::SendingImage {
            return Ok(());
        }
        self.link.phase = Phase::Image;
        let p = self.tl.begin("image");
        self.report("image", 0);
        let tar = self.work.join("image.tar");
        export_image(&self.cd, &self.container.image, &tar).await?;
        let data =
            std::fs::read(&tar).in_phase(Phase::Image, &format!("reading {}", tar.display()))?;
        self.link.file("image.tar", &data).await?;
        let _ = std::fs::remove_file(&tar);
        self.step(SenderEvent::SentImage)?;
        let answer = self.link.recv(IMAGE_IMPORT).await?;
        self.step(SenderEvent::Received(&answer))?;
        self.tl.end(p, Some(data.len() as u64));
        Ok(())
    }

    /// Pre-copy rounds until the stop rule holds; returns the pages seen in
    /// the last round (for the layout hint).
    pub async fn precopy(&mut self) -> Result<Option<memory::Seen>> {
        if !self.opts.technique.has_rounds() {
            return Ok(None);
        }
        self.link.phase = Phase::Rounds;
        let mut prev = u64::MAX;
        let mut seen = None;
        for round in 1..=self.opts.max_rounds.max(1) {
            let (moved, pages) = self.round(round).await?;
            seen = Some(pages);
            // stop rule: converged, or the delta stopped shrinking, or the
            // downtime target is in reach
            if moved < self.opts.min_round_bytes
                || (round > 1 && moved as f64 >= NOT_SHRINKING * prev as f64)
            {
                break;
            }
            if self.opts.stop_when.as_ref().is_some_and(|f| f(moved)) {
                info!(round, moved, "downtime target in reach: freezing now");
                break;
            }
            prev = moved;
        }
        Ok(seen)
    }

    /// One live round: scan and hash on a blocking thread while this task
    /// sends (CPU and link overlap). Returns the bytes of new blocks.
    async fn round(&mut self, round: u32) -> Result<(u64, memory::Seen)> {
        let p = self.tl.begin(&format!("round {round}"));
        let before = self.link.w.bytes();
        self.link
            .send(&Message::RoundStart {
                round,
                final_round: false,
            })
            .await?;
        let pids = self
            .cd
            .pids(&self.opts.container)
            .await
            .in_phase(Phase::Rounds, "listing the container's processes")?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(BlockHash, Vec<u8>)>>(8);
        let mut known = std::mem::take(&mut self.known);
        let scanner = tokio::task::spawn_blocking(move || {
            let mut pages = memory::Seen::new();
            let r = memory::scan(&pids, &mut known, Some(&mut pages), |batch| {
                tx.blocking_send(batch).map_err(|_| memory::ConsumerStopped)
            });
            (r, known, pages)
        });
        let mut send_err = None;
        while let Some(batch) = rx.recv().await {
            let refs: Vec<(BlockHash, &[u8])> =
                batch.iter().map(|(h, d)| (*h, d.as_slice())).collect();
            if let Err(e) = self.link.blocks(&refs).await {
                send_err = Some(e);
                break;
            }
        }
        drop(rx);
        let (stats, known, pages) = scanner
            .await
            .map_err(|e| MigrateError::local(Phase::Rounds, format!("memory scan task: {e}")))?;
        self.known = known;
        if let Some(e) = send_err {
            return Err(e);
        }
        let stats = stats.in_phase(Phase::Rounds, "reading the container's memory")?;
        self.link
            .send(&Message::RoundEnd {
                round,
                blocks: stats.new_blocks,
            })
            .await?;
        self.step(SenderEvent::SentRound)?;
        let bytes = self.link.w.bytes() - before;
        let d = self.tl.end(p, Some(bytes));
        self.report("precopy", round);
        self.rounds.push(Round {
            round,
            final_round: false,
            pages_present: stats.pages_present,
            new_blocks: stats.new_blocks,
            bytes,
            duration_ms: d,
            freeze_ms: 0.0,
        });
        info!(
            round,
            new_blocks = stats.new_blocks,
            bytes,
            "pre-copy round"
        );
        Ok((stats.new_blocks * BLOCK_SIZE as u64, pages))
    }

    /// Tells the destination how the pages images will most likely be laid
    /// out, so it writes them while this side freezes and dumps. Returns
    /// whether a hint was sent.
    pub async fn layout_hint(&mut self, seen: Option<memory::Seen>) -> Result<bool> {
        // lazy pages are not in the restored image: nothing to lay out ahead
        let Some(seen) = seen.filter(|_| !self.opts.technique.is_lazy()) else {
            return Ok(false);
        };
        let p = self.tl.begin("layout hint");
        let what = "listing the container's processes";
        let root = self
            .cd
            .task_pid(&self.opts.container)
            .await
            .in_phase(Phase::Rounds, what)?;
        let pids = self
            .cd
            .pids(&self.opts.container)
            .await
            .in_phase(Phase::Rounds, what)?;
        let layout = tokio::task::spawn_blocking(move || {
            memory::criu_layout(&memory::tree_order(root, &pids), &seen)
        })
        .await
        .map_err(|e| MigrateError::local(Phase::Rounds, format!("layout prediction: {e}")))?;
        let before = self.link.w.bytes();
        for (i, pages) in layout.iter().enumerate() {
            let hashes: Vec<BlockHash> = pages.iter().map(|(_, h)| *h).collect();
            self.link
                .manifest(&format!("hint:pages-{}.img", i + 1), &hashes)
                .await?;
        }
        self.link.flush().await?;
        self.tl.end(p, Some(self.link.w.bytes() - before));
        Ok(true)
    }
}

/// Exports the container's image (`ctr images export`) to `out`.
async fn export_image(
    cd: &crate::containerd::Containerd,
    image: &str,
    out: &std::path::Path,
) -> Result<()> {
    let o = tokio::process::Command::new("ctr")
        .args(["-a", cd.socket(), "-n", cd.namespace(), "images", "export"])
        .arg(out)
        .arg(image)
        .output()
        .await
        .in_phase(
            Phase::Image,
            "running ctr images export (is ctr installed?)",
        )?;
    if !o.status.success() {
        return Err(MigrateError::local(
            Phase::Image,
            format!(
                "exporting image {image}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ));
    }
    Ok(())
}
