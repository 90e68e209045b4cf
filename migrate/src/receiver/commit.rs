//! Cold and pre-copy after `Commit`: assemble the image, restore, answer
//! `Restored`, and keep the restored copy only once the source releases its
//! own (`Released` → `Ack`); otherwise remove it.

use std::time::Instant;

use mose_wire::{ContainerIdentity, Message};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};

use super::{
    assemble::assemble,
    incoming::Incoming,
    machine::ReceiverEvent,
    restore::{RestoreTarget, Steps},
    session::Session,
};
use crate::{
    containerd::Containerd,
    error::{error_chain, MigrateError, Phase, Result},
};

/// Restores and completes the two-phase hand-over.
pub async fn run<R, W>(
    s: &mut Session<'_, R, W>,
    cd: &Containerd,
    container: &ContainerIdentity,
    inc: &mut Incoming,
    mut target: RestoreTarget,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    s.link.phase = Phase::Restore;
    let t = Instant::now();
    let mut steps = Steps::new();
    let pid = match restore(s, cd, container, inc, &mut target, &mut steps).await {
        Ok(pid) => pid,
        Err(e) => {
            target.discard(cd, container).await;
            s.link.fail("restore", &error_chain(&e)).await;
            return Err(e);
        }
    };
    s.step(ReceiverEvent::Restored)?;
    let restore_ms = t.elapsed().as_secs_f64() * 1000.0;
    s.link
        .send(&Message::Restored {
            pid,
            restore_ms,
            prepare_ms: 0.0,
            steps,
        })
        .await?;
    await_release(s, cd, container, pid, &target).await
}

async fn restore<R, W>(
    s: &mut Session<'_, R, W>,
    cd: &Containerd,
    container: &ContainerIdentity,
    inc: &mut Incoming,
    target: &mut RestoreTarget,
    steps: &mut Steps,
) -> Result<u32>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let t = Instant::now();
    let a = assemble(inc, false)?;
    steps.push(("assemble image".into(), t.elapsed().as_secs_f64() * 1000.0));
    target
        .restore(s.cfg, cd, container, &a.images, a.rootfs_tar, None, steps)
        .await
}

/// Two-phase hand-over: the restored copy stays only once the source let go.
async fn await_release<R, W>(
    s: &mut Session<'_, R, W>,
    cd: &Containerd,
    container: &ContainerIdentity,
    pid: u32,
    target: &RestoreTarget,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    s.link.phase = Phase::Release;
    let released = match s.link.recv(s.cfg.release_timeout).await {
        Ok(m) => s.step(ReceiverEvent::Message(&m)),
        Err(e) => Err(e),
    };
    match released {
        Ok(()) => {
            s.link.send(&Message::Ack).await?;
            info!(container = %container.id, pid, "migration complete; the container runs here");
            Ok(())
        }
        Err(e) => {
            warn!(container = %container.id, error = %error_chain(&e), "source did not release its copy; removing the restored one");
            target.discard(cd, container).await;
            Err(MigrateError::local(
                Phase::Release,
                format!(
                    "the source did not confirm the hand-over ({})",
                    error_chain(&e)
                ),
            ))
        }
    }
}
