//! A link probe (`Measure{bytes}` + filler → `Measured{bytes, ms}`): the
//! policy learns the link's real rate between two nodes.

use std::time::Instant;

use mose_wire::{FrameKind, Message};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{machine::ReceiverEvent, session::Session};
use crate::error::{Phase, ProtocolError, Result};

/// Receives a probe's `bytes` of filler and reports how fast it arrived,
/// timed from the first frame to the last (the first frame's own transit is
/// excluded, so connection set-up and slow start do not count).
pub async fn answer<R, W>(s: &mut Session<'_, R, W>, bytes: u64) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    s.link.phase = Phase::Probe;
    let mut got = 0u64;
    let mut first: Option<(Instant, u64)> = None;
    while got < bytes {
        let f = s.link.next_frame(s.cfg.io_timeout).await?;
        if f.kind != FrameKind::FileData {
            return Err(s.link.protocol(ProtocolError::Unexpected {
                state: "absorbing a link probe",
                got: format!("a {:?} frame", f.kind),
            }));
        }
        let len = f.payload.len() as u64;
        s.step(ReceiverEvent::FileData { len })?;
        got += len;
        if first.is_none() {
            first = Some((Instant::now(), got));
        }
    }
    let (t0, first_bytes) = first.unwrap_or((Instant::now(), 0));
    s.link
        .send(&Message::Measured {
            bytes: got - first_bytes,
            ms: t0.elapsed().as_secs_f64() * 1000.0,
        })
        .await
}
