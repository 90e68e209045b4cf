//! Receiving a migration up to `Commit`: the image (imported at once, while
//! the source still runs), pre-copy rounds, the layout hint, and after the
//! source's freeze the final blocks, CRIU files, manifests and rootfs.

use std::io::Write;

use mose_wire::{
    frame::{Frame, FrameKind},
    ContainerIdentity, Message,
};
use tokio::io::{AsyncRead, AsyncWrite};
use xxhash_rust::xxh3::Xxh3;

use super::{
    incoming::{safe_name, FileSink, Incoming},
    machine::{ReceiverEvent, ReceiverState},
    restore::import_image,
    session::Session,
};
use crate::error::{InPhase, MigrateError, Phase, Result};

/// Receives frames into `inc` until the source commits.
pub async fn run<R, W>(
    s: &mut Session<'_, R, W>,
    container: &ContainerIdentity,
    inc: &mut Incoming,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    s.link.phase = Phase::Transfer;
    while matches!(s.state, ReceiverState::Transfer { .. }) {
        let f = s.link.next_frame(s.cfg.io_timeout).await?;
        match f.kind {
            FrameKind::Control => {
                let m = s.link.message_of(&f)?;
                s.step(ReceiverEvent::Message(&m))?;
                on_message(s, container, inc, m).await?;
            }
            _ => on_data(s, inc, &f)?,
        }
    }
    Ok(())
}

/// Blocks, manifests, file data; lazy pages are refused by the machine.
fn on_data<R, W>(s: &mut Session<'_, R, W>, inc: &mut Incoming, f: &Frame) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let peer = s.link.peer.clone();
    let wire = |source, what: &str| MigrateError::Wire {
        phase: Phase::Transfer,
        peer: peer.clone(),
        what: what.into(),
        source,
    };
    match f.kind {
        FrameKind::Blocks => {
            s.step(ReceiverEvent::Blocks)?;
            for (h, d) in f.blocks().map_err(|e| wire(e, "decoding blocks"))? {
                inc.add_block(h, d)?;
            }
        }
        FrameKind::Manifest => {
            let (name, hashes) = f.manifest().map_err(|e| wire(e, "decoding a manifest"))?;
            let hint = name.starts_with("hint:");
            s.step(ReceiverEvent::Manifest { hint })?;
            match name.strip_prefix("hint:") {
                // the source is about to freeze and dump: lay the image out now
                Some(image) => inc.speculate(image, &hashes)?,
                None => inc.manifests.push((name, hashes)),
            }
        }
        FrameKind::FileData => {
            s.step(ReceiverEvent::FileData {
                len: f.payload.len() as u64,
            })?;
            let sink = inc.current.as_mut().ok_or_else(|| {
                MigrateError::local(Phase::Transfer, "file data without an open file")
            })?;
            sink.hasher.update(&f.payload);
            sink.file
                .write_all(&f.payload)
                .in_phase(Phase::Transfer, &format!("writing {}", sink.name))?;
        }
        FrameKind::Pages => s.step(ReceiverEvent::Pages)?,
        FrameKind::Control => {}
    }
    Ok(())
}

/// A control message the machine allowed.
async fn on_message<R, W>(
    s: &mut Session<'_, R, W>,
    container: &ContainerIdentity,
    inc: &mut Incoming,
    m: Message,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match m {
        Message::FileBegin { name, hash, .. } => {
            let name = safe_name(&name)?.to_string();
            let path = inc.dir.join("files").join(&name);
            let file = std::fs::File::create(&path)
                .in_phase(Phase::Transfer, &format!("creating {}", path.display()))?;
            inc.current = Some(FileSink {
                name,
                hash,
                file,
                hasher: Xxh3::new(),
            });
        }
        Message::FileEnd { name } => {
            let sink = inc.current.take().ok_or_else(|| {
                MigrateError::local(Phase::Transfer, format!("FileEnd {name} without a file"))
            })?;
            let got = format!("{:032x}", sink.hasher.digest128());
            if got != sink.hash {
                return Err(MigrateError::local(
                    Phase::Transfer,
                    format!("file {name} arrived corrupt (hash {got} != {})", sink.hash),
                ));
            }
            let size = sink.file.metadata().map(|m| m.len()).unwrap_or(0);
            inc.bytes += size;
            let path = inc.dir.join("files").join(&name);
            if name == "image.tar" {
                // import now, while the source still runs: not in the downtime;
                // the source freezes only once the image is in place
                s.link.phase = Phase::Image;
                import_image(&s.cfg.containerd, container, &path).await?;
                let _ = std::fs::remove_file(&path);
                s.link.send(&Message::Ack).await?;
                s.link.phase = Phase::Transfer;
            } else {
                inc.files.insert(name, path);
            }
        }
        // rounds are bookkeeping of the source; Commit ends the loop
        _ => {}
    }
    Ok(())
}
