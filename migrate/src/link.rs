//! One framed, authenticated stream between the two sides, with every wait
//! bounded by one helper ([`within`]) so that a cut link fails the migration
//! with a [`MigrateError::Timeout`] instead of hanging.

use std::{future::Future, time::Duration};

use mose_wire::{
    frame::{Frame, FrameKind, FrameReader, FrameWriter},
    BlockHash, Message, WireError,
};
use tokio::io::{AsyncRead, AsyncWrite};
use xxhash_rust::xxh3::xxh3_128;

use crate::error::{MigrateError, Phase, ProtocolError, Result};

/// Bytes of file data per frame.
const FILE_CHUNK: usize = 1 << 20;

/// Awaits `fut` for at most `after`: a timeout or a wire error becomes a
/// [`MigrateError`] naming `phase`, `peer` and `what` was being done.
pub async fn within<T>(
    phase: Phase,
    peer: &str,
    what: &str,
    after: Duration,
    fut: impl Future<Output = Result<T, WireError>>,
) -> Result<T> {
    match tokio::time::timeout(after, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(MigrateError::Wire {
            phase,
            peer: peer.to_string(),
            what: what.to_string(),
            source,
        }),
        Err(_) => Err(MigrateError::Timeout {
            phase,
            peer: peer.to_string(),
            what: what.to_string(),
            after,
        }),
    }
}

/// Both halves of a stream to a peer, and the phase errors are reported in.
pub struct Link<R, W> {
    pub r: FrameReader<R>,
    pub w: FrameWriter<W>,
    /// Who is at the other end (address or node name), for errors.
    pub peer: String,
    /// Bound on any single send or receive.
    pub io: Duration,
    /// The phase the migration is in: named by every error of this link.
    pub phase: Phase,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Link<R, W> {
    pub fn new(r: FrameReader<R>, w: FrameWriter<W>, peer: String, io: Duration) -> Self {
        Link {
            r,
            w,
            peer,
            io,
            phase: Phase::Handshake,
        }
    }

    /// Sends a control message.
    pub async fn send(&mut self, m: &Message) -> Result<()> {
        let what = format!("take {}", m.name());
        within(self.phase, &self.peer, &what, self.io, self.w.message(m)).await
    }

    /// Sends page blocks.
    pub async fn blocks(&mut self, b: &[(BlockHash, &[u8])]) -> Result<()> {
        within(
            self.phase,
            &self.peer,
            "take blocks",
            self.io,
            self.w.blocks(b),
        )
        .await
    }

    /// Sends a page manifest (`hint:` names a predicted layout).
    pub async fn manifest(&mut self, name: &str, hashes: &[BlockHash]) -> Result<()> {
        let what = format!("take manifest {name}");
        let fut = self.w.manifest(name, hashes);
        within(self.phase, &self.peer, &what, self.io, fut).await
    }

    /// Flushes buffered frames.
    pub async fn flush(&mut self) -> Result<()> {
        within(self.phase, &self.peer, "take data", self.io, self.w.flush()).await
    }

    /// Sends a whole file: `FileBegin{size, xxh3-128}`, data frames, `FileEnd`.
    pub async fn file(&mut self, name: &str, data: &[u8]) -> Result<()> {
        self.send(&Message::FileBegin {
            name: name.into(),
            size: data.len() as u64,
            hash: format!("{:032x}", xxh3_128(data)),
        })
        .await?;
        let what = format!("take {name}");
        for chunk in data.chunks(FILE_CHUNK) {
            let fut = self.w.file_data(chunk);
            within(self.phase, &self.peer, &what, self.io, fut).await?;
        }
        self.send(&Message::FileEnd { name: name.into() }).await
    }

    /// The next frame, waiting at most `after`.
    pub async fn next_frame(&mut self, after: Duration) -> Result<Frame> {
        within(
            self.phase,
            &self.peer,
            "send anything",
            after,
            self.r.next(),
        )
        .await
    }

    /// The next control message, waiting at most `after`. The peer's
    /// `Failed` becomes [`MigrateError::PeerFailed`]; a data frame here is a
    /// protocol error.
    pub async fn recv(&mut self, after: Duration) -> Result<Message> {
        let f = self.next_frame(after).await?;
        let m = self.message_of(&f)?;
        if let Message::Failed { step, error } = m {
            return Err(MigrateError::PeerFailed {
                phase: self.phase,
                peer: self.peer.clone(),
                step,
                error,
            });
        }
        Ok(m)
    }

    /// The control message a frame carries, or a protocol error naming it.
    pub fn message_of(&self, f: &Frame) -> Result<Message> {
        if f.kind != FrameKind::Control {
            return Err(self.protocol(ProtocolError::Unexpected {
                state: "waiting for a control message",
                got: format!("a {:?} frame", f.kind),
            }));
        }
        f.message().map_err(|source| MigrateError::Wire {
            phase: self.phase,
            peer: self.peer.clone(),
            what: "decoding a control message".into(),
            source,
        })
    }

    /// A protocol error in the current phase with this peer.
    pub fn protocol(&self, source: ProtocolError) -> MigrateError {
        MigrateError::Protocol {
            phase: self.phase,
            peer: self.peer.clone(),
            source,
        }
    }

    /// Tells the peer this side failed at `step` (best effort: the stream may
    /// be gone already).
    pub async fn fail(&mut self, step: &str, error: &str) {
        let m = Message::Failed {
            step: step.into(),
            error: error.into(),
        };
        let _ = tokio::time::timeout(self.io, self.w.message(&m)).await;
    }
}

/// Reads frames into `tx` until the stream ends or fails (the error is
/// forwarded too), then stays pending. Run it as its own future next to the
/// consumer, so that a partly read frame is never dropped when another
/// event wins a `select!`.
pub async fn forward_frames<R: AsyncRead + Unpin>(
    r: &mut FrameReader<R>,
    tx: tokio::sync::mpsc::UnboundedSender<Result<Frame, WireError>>,
) {
    loop {
        let f = r.next().await;
        let end = f.is_err();
        if tx.send(f).is_err() || end {
            break;
        }
    }
    std::future::pending::<()>().await;
}
