//! A SockPerf ping-pong client that sees an outage: requests at a fixed rate
//! to a `sockperf server`, every reply timestamped on arrival.
//!
//! Why not `sockperf ping-pong` itself: its client logs only its measurement
//! window and counts no missing replies while its server is frozen, so it
//! reported gaps of 5–33 ms across migrations that froze the server for
//! ~0.9 s (docs/results.md). The wire format is SockPerf's message header,
//! all fields big-endian (as `sockperf server` 3.x answers it):
//!
//! | bytes | field  | value sent                          |
//! |-------|--------|-------------------------------------|
//! | 0..8  | seqn   | request number, from 1              |
//! | 8..10 | flags  | 3 = client + pong request; reply: 2 |
//! | 10..14| length | 14 (the header alone)               |

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// Header length and the only message length sent (bytes).
const MESSAGE_LEN: usize = 14;
/// Request flags: from a client, asking for a pong.
const FLAGS_PING: u16 = 3;
/// How long replies are still awaited after the last request.
const DRAIN: Duration = Duration::from_millis(500);

/// What the client saw.
#[derive(Debug, Clone, PartialEq)]
pub struct PingPongResult {
    /// Requests sent.
    pub sent: u64,
    /// Distinct requests answered.
    pub answered: u64,
    /// Longest time between two consecutive replies' arrival (ms): the
    /// client-observed outage.
    pub longest_gap_ms: f64,
    /// When that gap started, from the first request (ms).
    pub gap_start_ms: f64,
    /// Median round-trip time of the answered requests (ms).
    pub median_rtt_ms: f64,
}

/// One encoded request.
pub fn encode(seqn: u64) -> [u8; MESSAGE_LEN] {
    let mut m = [0u8; MESSAGE_LEN];
    m[..8].copy_from_slice(&seqn.to_be_bytes());
    m[8..10].copy_from_slice(&FLAGS_PING.to_be_bytes());
    m[10..].copy_from_slice(&(MESSAGE_LEN as u32).to_be_bytes());
    m
}

/// The sequence number of a reply (`None` for anything else).
pub fn decode_reply(m: &[u8]) -> Option<u64> {
    if m.len() < MESSAGE_LEN || m[8..10] != 2u16.to_be_bytes() {
        return None;
    }
    Some(u64::from_be_bytes(m[..8].try_into().ok()?))
}

/// Sends `rate` requests/s to `server` for `duration` from `socket` (created
/// in the client's network namespace), then waits [`DRAIN`] for late
/// replies. Errors: socket I/O, or no reply at all (the server never
/// answered: no outage can be told from no service).
pub fn ping_pong(
    socket: UdpSocket,
    server: SocketAddr,
    rate: u32,
    duration: Duration,
) -> Result<PingPongResult> {
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .context("setting the UDP client's read timeout")?;
    let receiver = socket
        .try_clone()
        .context("cloning the UDP client socket")?;
    let start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let replies = std::thread::spawn(move || receive(receiver, start, &stop));
    let sent = send(&socket, server, rate, duration, start);
    std::thread::sleep(DRAIN);
    done.store(true, Ordering::Relaxed);
    let arrivals = replies
        .join()
        .map_err(|_| anyhow::anyhow!("the UDP reply thread panicked"))??;
    let sent = sent?;
    summarize(sent, &arrivals, rate)
}

fn send(
    socket: &UdpSocket,
    server: SocketAddr,
    rate: u32,
    duration: Duration,
    start: Instant,
) -> Result<u64> {
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut seqn = 0u64;
    while start.elapsed() < duration {
        seqn += 1;
        // a send may fail while the address has no owner (no neighbour
        // entry yet): that request is simply lost, like on a real network
        let _ = socket.send_to(&encode(seqn), server);
        let next = period * u32::try_from(seqn).unwrap_or(u32::MAX);
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok(seqn)
}

/// (seqn, arrival ms since start) of each reply.
fn receive(socket: UdpSocket, start: Instant, done: &AtomicBool) -> Result<Vec<(u64, f64)>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while !done.load(Ordering::Relaxed) {
        match socket.recv(&mut buf) {
            Ok(n) => {
                if let Some(s) = decode_reply(&buf[..n]) {
                    out.push((s, start.elapsed().as_secs_f64() * 1e3));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => return Err(e).context("receiving SockPerf replies"),
        }
    }
    Ok(out)
}

/// The result from the replies' (seqn, arrival ms); `rate` gives each
/// request's send time (seqn / rate) for the round-trip times.
pub fn summarize(sent: u64, arrivals: &[(u64, f64)], rate: u32) -> Result<PingPongResult> {
    if arrivals.is_empty() {
        bail!("the SockPerf server answered none of {sent} requests");
    }
    let mut seen = std::collections::HashSet::new();
    let mut rtts = Vec::new();
    let (mut gap, mut gap_start) = (0.0f64, 0.0);
    let mut last: Option<f64> = None;
    for &(s, t) in arrivals {
        if !seen.insert(s) {
            continue;
        }
        rtts.push(t - (s.saturating_sub(1)) as f64 * 1e3 / f64::from(rate.max(1)));
        if let Some(l) = last {
            if t - l > gap {
                gap = t - l;
                gap_start = l;
            }
        }
        last = Some(t);
    }
    Ok(PingPongResult {
        sent,
        answered: seen.len() as u64,
        longest_gap_ms: gap,
        gap_start_ms: gap_start,
        median_rtt_ms: crate::median(&rtts),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_sockperf_headers() {
        let m = encode(7);
        assert_eq!(
            m,
            [0, 0, 0, 0, 0, 0, 0, 7, 0, 3, 0, 0, 0, 14],
            "seqn 7, client + pong request, length 14"
        );
        let mut reply = m;
        reply[9] = 2;
        assert_eq!(decode_reply(&reply), Some(7));
        assert_eq!(decode_reply(&m), None, "a request is not a reply");
        assert_eq!(decode_reply(&reply[..10]), None, "short message");
    }

    #[test]
    fn the_gap_is_the_longest_silence_between_replies() {
        // 1000/s; replies 1..=3 at once, then nothing until 900 ms
        let arrivals = [(1, 0.1), (2, 1.1), (3, 2.1), (3, 2.2), (900, 900.0)];
        let r = summarize(900, &arrivals, 1000).unwrap();
        assert_eq!(r.answered, 4, "a duplicate reply counts once");
        assert!((r.longest_gap_ms - 897.9).abs() < 1e-9, "{r:?}");
        assert!((r.gap_start_ms - 2.1).abs() < 1e-9);
        assert!(summarize(5, &[], 1000).is_err(), "no reply is an error");
    }
}
