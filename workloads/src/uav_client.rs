//! The UAV control loop's client: a ground station streaming setpoints at a
//! fixed rate ([`crate::uav::COMMAND_HZ`] by default) and timestamping every
//! telemetry datagram on arrival, so the loop's own downtime KPI can be
//! computed: the longest silence in telemetry, the commands never answered,
//! the longest run of them, and whether the service's telemetry counter
//! continued (a restarted service would start it again at 1).
//!
//! The socket is handed in by the caller, so it can be created in another
//! network namespace (the testbed's user namespace) than the threads that
//! use it.

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::uav::{no_datagram, Command, Setpoint, Telemetry, COMMAND_HZ};

/// How long telemetry is still awaited after the last command.
pub const DRAIN: Duration = Duration::from_millis(500);
/// Receive timeout of the telemetry thread (how often it looks at its stop flag).
const POLL: Duration = Duration::from_millis(50);
/// An answer later than this many command periods after its command is "late":
/// the setpoint it acknowledges is stale by then.
pub const LATE_PERIODS: f64 = 5.0;

/// One telemetry datagram as it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Arrival {
    /// Command answered.
    pub cmd_seq: u64,
    /// Service's telemetry counter.
    pub tele_seq: u64,
    /// Arrival time, µs since the client started.
    pub t_us: u64,
    /// Arrival minus the command's send time, µs.
    pub rtt_us: u64,
}

/// What the client saw: the control loop's own KPIs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UavReport {
    /// Command rate, Hz.
    pub rate_hz: f64,
    /// Length of the run (first command to the end of the drain), ms.
    pub duration_ms: f64,
    /// Commands sent.
    pub sent: u64,
    /// Distinct commands answered.
    pub answered: u64,
    /// Commands never answered (`sent - answered`).
    pub lost: u64,
    /// Longest run of consecutive unanswered commands.
    pub longest_loss_run: u64,
    /// Longest time between two consecutive telemetry arrivals, ms: the
    /// control loop's downtime (the whole run with fewer than two arrivals).
    pub max_telemetry_gap_ms: f64,
    /// When that gap began, ms since the client started.
    pub gap_start_ms: f64,
    /// Answers that arrived more than [`LATE_PERIODS`] periods after their command.
    pub late: u64,
    /// Datagrams answering a command already answered.
    pub duplicates: u64,
    /// The telemetry counter rose with every arrival (the service continued).
    pub tele_seq_ok: bool,
    /// Arrivals whose telemetry counter was not above the previous one.
    pub tele_seq_violations: u64,
    /// First and last telemetry counter seen.
    pub tele_seq_range: Option<(u64, u64)>,
    /// Median round-trip time, ms.
    pub rtt_p50_ms: f64,
    /// 99th percentile round-trip time, ms.
    pub rtt_p99_ms: f64,
}

impl UavReport {
    /// One line for logs.
    pub fn summary(&self) -> String {
        format!(
            "{} of {} commands answered ({} lost, longest run {}), max telemetry gap {:.0} ms at \
             {:.0} ms, {} late, telemetry seq {}, rtt p50 {:.2} ms p99 {:.2} ms",
            self.answered,
            self.sent,
            self.lost,
            self.longest_loss_run,
            self.max_telemetry_gap_ms,
            self.gap_start_ms,
            self.late,
            if self.tele_seq_ok {
                "continuous"
            } else {
                "BROKEN"
            },
            self.rtt_p50_ms,
            self.rtt_p99_ms
        )
    }
}

/// Nearest-rank percentile `p` (0..=1) of sorted `v`, 0 when empty.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Longest run of numbers in `1..=sent` missing from `answered`.
fn longest_missing_run(sent: u64, answered: &BTreeSet<u64>) -> u64 {
    let mut longest = 0;
    let mut prev = 0u64;
    for &s in answered.range(1..=sent) {
        longest = longest.max(s - prev - 1);
        prev = s;
    }
    longest.max(sent - prev)
}

/// Longest time between consecutive arrivals (µs) and where it began (µs).
fn longest_gap(arrivals: &[Arrival]) -> Option<(u64, u64)> {
    arrivals
        .windows(2)
        .map(|w| (w[1].t_us.saturating_sub(w[0].t_us), w[0].t_us))
        .max_by_key(|&(gap, _)| gap)
}

/// The report from `sent` commands at `rate_hz` and the telemetry
/// `arrivals` in arrival order, over a run of `duration`.
pub fn analyze(sent: u64, rate_hz: f64, arrivals: &[Arrival], duration: Duration) -> UavReport {
    let mut answered = BTreeSet::new();
    let mut duplicates = 0;
    for a in arrivals {
        if !answered.insert(a.cmd_seq) {
            duplicates += 1;
        }
    }
    let violations = arrivals
        .windows(2)
        .filter(|w| w[1].tele_seq <= w[0].tele_seq)
        .count() as u64;
    let late_us = LATE_PERIODS * 1e6 / rate_hz;
    let mut rtts: Vec<u64> = arrivals.iter().map(|a| a.rtt_us).collect();
    rtts.sort_unstable();
    let duration_ms = duration.as_secs_f64() * 1e3;
    let (gap_ms, gap_start_ms) = match longest_gap(arrivals) {
        Some((gap, start)) => (gap as f64 / 1e3, start as f64 / 1e3),
        None => (duration_ms, 0.0),
    };
    let in_run = answered.range(1..=sent).count() as u64;
    UavReport {
        rate_hz,
        duration_ms,
        sent,
        answered: in_run,
        lost: sent - in_run,
        longest_loss_run: longest_missing_run(sent, &answered),
        max_telemetry_gap_ms: gap_ms,
        gap_start_ms,
        late: arrivals
            .iter()
            .filter(|a| a.rtt_us as f64 > late_us)
            .count() as u64,
        duplicates,
        tele_seq_ok: violations == 0 && !arrivals.is_empty(),
        tele_seq_violations: violations,
        tele_seq_range: arrivals
            .first()
            .zip(arrivals.last())
            .map(|(a, b)| (a.tele_seq, b.tele_seq)),
        rtt_p50_ms: percentile(&rtts, 0.5) as f64 / 1e3,
        rtt_p99_ms: percentile(&rtts, 0.99) as f64 / 1e3,
    }
}

/// The setpoint of command `seq`: a slow figure eight at hover thrust, as a
/// position-holding ground station would stream.
pub fn setpoint(seq: u64, rate_hz: f64) -> Setpoint {
    let t = seq as f32 / rate_hz as f32;
    Setpoint {
        roll_rad: 0.05 * (0.5 * t).sin(),
        pitch_rad: 0.05 * (0.25 * t).sin(),
        yaw_rate_rad_s: 0.1,
        thrust: 0.5,
    }
}

/// A running client; [`UavClientHandle::stop`] ends it and returns the report.
pub struct UavClientHandle {
    stop_send: Arc<AtomicBool>,
    stop_recv: Arc<AtomicBool>,
    sender: Option<JoinHandle<Result<u64>>>,
    receiver: Option<JoinHandle<Result<Vec<Arrival>>>>,
    start: Instant,
    rate_hz: f64,
}

/// Starts streaming commands from `socket` to `server` at `rate_hz`.
pub fn start(socket: UdpSocket, server: SocketAddr, rate_hz: f64) -> Result<UavClientHandle> {
    if !(rate_hz.is_finite() && rate_hz > 0.0) {
        bail!("the command rate must be > 0 Hz, not {rate_hz}");
    }
    socket
        .set_read_timeout(Some(POLL))
        .context("setting the telemetry receive timeout")?;
    let rx = socket.try_clone().context("cloning the UDP socket")?;
    let start = Instant::now();
    let (stop_send, stop_recv) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let s = stop_recv.clone();
    let receiver = thread::Builder::new()
        .name("uav-telemetry".into())
        .spawn(move || receive(&rx, start, &s))
        .context("spawning the telemetry thread")?;
    let s = stop_send.clone();
    let sender = thread::Builder::new()
        .name("uav-commands".into())
        .spawn(move || send(&socket, server, rate_hz, start, &s))
        .context("spawning the command thread")?;
    Ok(UavClientHandle {
        stop_send,
        stop_recv,
        sender: Some(sender),
        receiver: Some(receiver),
        start,
        rate_hz,
    })
}

impl UavClientHandle {
    /// Stops sending, waits [`DRAIN`] for the last telemetry and analyses
    /// the run. Errors: a socket error in either thread, or a thread that
    /// panicked.
    pub fn stop(mut self) -> Result<UavReport> {
        self.stop_send.store(true, Ordering::Release);
        let sent = join(self.sender.take(), "command")?;
        thread::sleep(DRAIN);
        self.stop_recv.store(true, Ordering::Release);
        let arrivals = join(self.receiver.take(), "telemetry")?;
        Ok(analyze(sent, self.rate_hz, &arrivals, self.start.elapsed()))
    }
}

impl Drop for UavClientHandle {
    fn drop(&mut self) {
        self.stop_send.store(true, Ordering::Release);
        self.stop_recv.store(true, Ordering::Release);
    }
}

fn join<T>(h: Option<JoinHandle<Result<T>>>, what: &str) -> Result<T> {
    h.ok_or_else(|| anyhow!("the {what} thread was already joined"))?
        .join()
        .map_err(|_| anyhow!("the {what} thread panicked"))?
}

fn micros_since(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

/// Sends commands on an absolute schedule until stopped; returns how many.
/// A send that fails (no route or neighbour while the address moves) is a
/// lost command, as on a real radio link.
fn send(
    socket: &UdpSocket,
    server: SocketAddr,
    rate_hz: f64,
    start: Instant,
    stop: &AtomicBool,
) -> Result<u64> {
    let period = Duration::from_secs_f64(1.0 / rate_hz);
    let mut seq = 0u64;
    while !stop.load(Ordering::Acquire) {
        seq += 1;
        let cmd = Command {
            seq,
            sent_us: micros_since(start),
            setpoint: setpoint(seq, rate_hz),
        };
        let _ = socket.send_to(&cmd.encode(), server);
        let next = period.mul_f64(seq as f64);
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            thread::sleep(wait);
        }
    }
    Ok(seq)
}

/// Receives telemetry until stopped.
fn receive(socket: &UdpSocket, start: Instant, stop: &AtomicBool) -> Result<Vec<Arrival>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Acquire) {
        match socket.recv(&mut buf) {
            Ok(n) => {
                let t_us = micros_since(start);
                if let Some(t) = Telemetry::decode(&buf[..n]) {
                    out.push(Arrival {
                        cmd_seq: t.cmd_seq,
                        tele_seq: t.tele_seq,
                        t_us,
                        rtt_us: t_us.saturating_sub(t.sent_us),
                    });
                }
            }
            Err(e) if no_datagram(&e) || e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(e).context("receiving telemetry"),
        }
    }
    Ok(out)
}

/// Sends one command from a fresh socket (bound in the calling thread's
/// network namespace) and waits up to `timeout` for its telemetry: whether
/// the service is up.
pub fn exchange(server: SocketAddr, timeout: Duration) -> Result<Telemetry> {
    let socket = UdpSocket::bind("0.0.0.0:0").context("binding a UDP socket")?;
    socket
        .set_read_timeout(Some(timeout))
        .context("setting the receive timeout")?;
    let cmd = Command {
        seq: 1,
        sent_us: 0,
        setpoint: setpoint(1, COMMAND_HZ),
    };
    socket
        .send_to(&cmd.encode(), server)
        .with_context(|| format!("sending a command to {server}"))?;
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .with_context(|| format!("no telemetry from {server}"))?;
    Telemetry::decode(&buf[..n])
        .with_context(|| format!("{server} answered {n} bytes that are not telemetry"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Arrivals for commands `seqs`, each answered `rtt_ms` after it was
    /// sent at 50 Hz, with the telemetry counter rising by one.
    fn arrivals(seqs: &[u64], rtt_ms: u64) -> Vec<Arrival> {
        seqs.iter()
            .enumerate()
            .map(|(i, &s)| Arrival {
                cmd_seq: s,
                tele_seq: 100 + i as u64,
                t_us: (s - 1) * 20_000 + rtt_ms * 1000,
                rtt_us: rtt_ms * 1000,
            })
            .collect()
    }

    #[test]
    fn steady_loop_has_a_one_period_gap_and_no_loss() {
        let seqs: Vec<u64> = (1..=100).collect();
        let r = analyze(100, 50.0, &arrivals(&seqs, 1), Duration::from_secs(2));
        assert_eq!(
            (r.sent, r.answered, r.lost, r.longest_loss_run),
            (100, 100, 0, 0)
        );
        assert!((r.max_telemetry_gap_ms - 20.0).abs() < 1e-9, "{r:?}");
        assert!(r.tele_seq_ok);
        assert_eq!(r.tele_seq_range, Some((100, 199)));
        assert_eq!((r.late, r.duplicates), (0, 0));
        assert!((r.rtt_p50_ms - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_migration_shows_as_the_gap_and_the_lost_run() {
        // commands 31..=52 (22 of them, 440 ms) are lost while the service moves
        let seqs: Vec<u64> = (1..=30).chain(53..=100).collect();
        let r = analyze(100, 50.0, &arrivals(&seqs, 2), Duration::from_secs(2));
        assert_eq!((r.lost, r.longest_loss_run), (22, 22));
        // last answer: command 30 at 582 ms; next: command 53 at 1042 ms
        assert!((r.max_telemetry_gap_ms - 460.0).abs() < 1e-9, "{r:?}");
        assert!((r.gap_start_ms - 582.0).abs() < 1e-9, "{r:?}");
        assert!(r.tele_seq_ok, "the counter continued");
    }

    #[test]
    fn unanswered_tail_and_head_count_as_runs() {
        let r = analyze(
            10,
            50.0,
            &arrivals(&[3, 4, 5], 1),
            Duration::from_millis(200),
        );
        assert_eq!((r.lost, r.longest_loss_run), (7, 5), "6..=10 unanswered");
        let r = analyze(10, 50.0, &arrivals(&[9, 10], 1), Duration::from_millis(200));
        assert_eq!(r.longest_loss_run, 8, "1..=8 unanswered");
    }

    #[test]
    fn restarted_service_duplicates_and_late_answers_are_flagged() {
        let mut a = arrivals(&[1, 2, 3, 4], 1);
        a[2].tele_seq = 1; // a restarted service counts from 1 again
        a[3].rtt_us = 150_000; // 7.5 periods: stale
        a.push(a[3]);
        a[4].t_us += 1;
        a[4].tele_seq = 104;
        let r = analyze(4, 50.0, &a, Duration::from_millis(200));
        assert!(!r.tele_seq_ok);
        assert_eq!(r.tele_seq_violations, 1);
        assert_eq!((r.answered, r.duplicates, r.late), (4, 1, 2));
    }

    #[test]
    fn no_telemetry_means_the_whole_run_is_the_gap() {
        let r = analyze(25, 50.0, &[], Duration::from_millis(700));
        assert_eq!((r.answered, r.lost, r.longest_loss_run), (0, 25, 25));
        assert_eq!(r.max_telemetry_gap_ms, 700.0);
        assert!(!r.tele_seq_ok);
        assert_eq!(r.tele_seq_range, None);
    }

    #[test]
    fn client_and_service_talk_over_loopback() {
        let svc = crate::uav::UavService::start(&crate::uav::UavConfig {
            port: 0,
            bind: "127.0.0.1".into(),
            history_mib: 1,
        })
        .expect("service");
        let t = exchange(svc.local_addr(), Duration::from_secs(2)).expect("exchange");
        assert_eq!(t.tele_seq, 1);
        let sock = UdpSocket::bind("127.0.0.1:0").expect("socket");
        let h = start(sock, svc.local_addr(), 100.0).expect("client");
        thread::sleep(Duration::from_millis(500));
        let r = h.stop().expect("report");
        assert!(r.sent >= 40, "{}", r.summary());
        assert_eq!(r.lost, 0, "{}", r.summary());
        assert!(r.tele_seq_ok, "{}", r.summary());
        assert_eq!(
            r.tele_seq_range.map(|(a, _)| a),
            Some(2),
            "after the exchange"
        );
        assert!(r.max_telemetry_gap_ms < 200.0, "{}", r.summary());
        assert!(start(
            UdpSocket::bind("127.0.0.1:0").expect("socket"),
            svc.local_addr(),
            0.0
        )
        .is_err());
    }
}
