//! The probe: a client that PINGs the state service at a fixed rate and
//! measures what a user of a migrated service would see.
//!
//! Downtime is measured from the client side as the longest gap between two
//! consecutive successful answers, since that is the service interruption
//! a migration causes, whatever the node-side timings say. The `seq` of
//! each answer proves continuity: a restored process continues its counter,
//! a restarted one would start again at 1.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::protocol::{PingReply, VerifyReport};

/// Default connect timeout per attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(50);
/// Default read timeout per request.
pub const READ_TIMEOUT: Duration = Duration::from_millis(100);
/// Read timeout for VERIFY (a full scan of a large state takes a while).
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);

/// Probe settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    /// Service addresses (`host:port`), tried in order after a failure.
    pub addrs: Vec<String>,
    /// Requests per second.
    pub rate: f64,
    /// Connect timeout per attempt.
    pub connect_timeout: Duration,
    /// Read timeout per request.
    pub read_timeout: Duration,
    /// Gaps longer than this are listed (default: 3 request periods).
    pub gap_threshold: Option<Duration>,
}

impl ProbeConfig {
    /// Defaults for `addrs` at `rate` requests/s.
    pub fn new(addrs: Vec<String>, rate: f64) -> Self {
        Self {
            addrs,
            rate,
            connect_timeout: CONNECT_TIMEOUT,
            read_timeout: READ_TIMEOUT,
            gap_threshold: None,
        }
    }

    fn period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rate)
    }

    fn threshold(&self) -> Duration {
        self.gap_threshold.unwrap_or(self.period() * 3)
    }
}

/// One successful answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Time the answer arrived, µs since the probe started.
    pub t_us: u64,
    /// Round-trip time in µs (send to answer).
    pub rtt_us: u64,
    /// Sequence number answered.
    pub seq: u64,
    /// Rolling checksum answered.
    pub sum: u64,
    /// Index into the address list of the address that answered.
    pub addr: usize,
    /// Which connection carried it: 1 for the first opened, 2 for the next…
    pub conn: u64,
}

/// A period without answers longer than the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Gap {
    /// Last answer before the gap, ms since start.
    pub start_ms: f64,
    /// First answer after the gap, ms since start.
    pub end_ms: f64,
    /// `end_ms - start_ms`.
    pub duration_ms: f64,
}

/// What the probe observed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProbeResult {
    /// Addresses probed (in order of preference).
    pub addrs: Vec<String>,
    /// Requested rate (requests/s).
    pub rate: f64,
    /// Wall time probed, ms.
    pub duration_ms: f64,
    /// Requests issued (one per tick, whatever the number of addresses tried).
    pub requests: u64,
    /// Successful answers.
    pub answers: u64,
    /// Failed requests (every address failed or timed out).
    pub errors: u64,
    /// Connections opened after the first: 0 when one connection carried
    /// the whole run (a migration that kept it).
    pub reconnects: u64,
    /// Answers per second over the run.
    pub answer_rate: f64,
    /// Longest gap between consecutive answers, ms (the whole run when
    /// fewer than two answers arrived).
    pub downtime_ms: f64,
    /// Threshold for [`ProbeResult::gaps`], ms.
    pub gap_threshold_ms: f64,
    /// Gaps longer than the threshold, in time order.
    pub gaps: Vec<Gap>,
    /// Sequence numbers strictly increased over the whole run.
    pub seq_ok: bool,
    /// Answers whose seq was not greater than the previous one.
    pub seq_violations: u64,
    /// First seq answered.
    pub first_seq: Option<u64>,
    /// Last seq answered.
    pub last_seq: Option<u64>,
    /// Checksum in the last answer (hex).
    pub last_sum: Option<String>,
    /// Answers per address.
    pub answers_per_addr: BTreeMap<String, u64>,
    /// Round-trip time percentiles, µs.
    pub rtt_p50_us: u64,
    /// 99th percentile RTT, µs.
    pub rtt_p99_us: u64,
    /// Largest RTT, µs.
    pub rtt_max_us: u64,
    /// Every answer (not serialized: can be large; see [`ProbeResult::samples_csv`]).
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

impl ProbeResult {
    /// The window `[from_ms, to_ms]` of the run (ms since the probe
    /// started, e.g. one migration's): the longest gap between answers
    /// overlapping it, in ms, and whether the answers around and inside it
    /// came over one connection. `None` when no answer precedes the window
    /// or none follows it.
    pub fn window(&self, from_ms: f64, to_ms: f64) -> Option<(f64, bool)> {
        let us = |ms: f64| (ms * 1e3) as u64;
        let before = self.samples.iter().rposition(|s| s.t_us <= us(from_ms))?;
        let after = before
            + self.samples[before..]
                .iter()
                .position(|s| s.t_us >= us(to_ms))?;
        let w = &self.samples[before..=after];
        let gap = w
            .windows(2)
            .map(|p| p[1].t_us.saturating_sub(p[0].t_us))
            .max()
            .unwrap_or(0);
        Some((gap as f64 / 1e3, w.iter().all(|s| s.conn == w[0].conn)))
    }

    /// A one-paragraph human summary.
    pub fn summary(&self) -> String {
        let per_addr: Vec<String> = self
            .answers_per_addr
            .iter()
            .map(|(a, n)| format!("{a}={n}"))
            .collect();
        format!(
            "requests={} answers={} errors={} rate={:.1}/s downtime_ms={:.1} gaps={} \
             seq_ok={} seq={}..{} rtt_us p50={} p99={} max={} per_addr[{}]",
            self.requests,
            self.answers,
            self.errors,
            self.answer_rate,
            self.downtime_ms,
            self.gaps.len(),
            self.seq_ok,
            self.first_seq.map(|s| s.to_string()).unwrap_or_default(),
            self.last_seq.map(|s| s.to_string()).unwrap_or_default(),
            self.rtt_p50_us,
            self.rtt_p99_us,
            self.rtt_max_us,
            per_addr.join(" ")
        )
    }

    /// Samples as CSV (`t_us,rtt_us,seq,sum,addr`), for plots.
    pub fn samples_csv(&self) -> String {
        let mut s = String::from("t_us,rtt_us,seq,sum,addr\n");
        for x in &self.samples {
            let addr = self.addrs.get(x.addr).map(String::as_str).unwrap_or("?");
            s.push_str(&format!(
                "{},{},{},{:016x},{}\n",
                x.t_us, x.rtt_us, x.seq, x.sum, addr
            ));
        }
        s
    }
}

/// Raw counters of a run, analysed by [`analyze`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawRun {
    /// Successful answers in arrival order.
    pub samples: Vec<Sample>,
    /// Requests issued.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Connections opened (the first included).
    pub connects: u64,
    /// Length of the run.
    pub duration: Duration,
}

/// Computes downtime, gaps, seq continuity and per-address counts.
pub fn analyze(cfg: &ProbeConfig, run: RawRun) -> ProbeResult {
    let threshold_us = cfg.threshold().as_micros() as u64;
    let duration_ms = run.duration.as_secs_f64() * 1e3;
    let mut gaps = Vec::new();
    let mut longest_us = 0u64;
    let mut violations = 0u64;
    for w in run.samples.windows(2) {
        let d = w[1].t_us.saturating_sub(w[0].t_us);
        longest_us = longest_us.max(d);
        if d > threshold_us {
            gaps.push(Gap {
                start_ms: w[0].t_us as f64 / 1e3,
                end_ms: w[1].t_us as f64 / 1e3,
                duration_ms: d as f64 / 1e3,
            });
        }
        if w[1].seq <= w[0].seq {
            violations += 1;
        }
    }
    let downtime_ms = if run.samples.len() < 2 {
        duration_ms
    } else {
        longest_us as f64 / 1e3
    };
    let mut per_addr: BTreeMap<String, u64> = BTreeMap::new();
    for s in &run.samples {
        let a = cfg.addrs.get(s.addr).cloned().unwrap_or_else(|| "?".into());
        *per_addr.entry(a).or_default() += 1;
    }
    let mut rtts: Vec<u64> = run.samples.iter().map(|s| s.rtt_us).collect();
    rtts.sort_unstable();
    let pct = |p: f64| -> u64 {
        if rtts.is_empty() {
            0
        } else {
            rtts[((rtts.len() - 1) as f64 * p).round() as usize]
        }
    };
    let answers = run.samples.len() as u64;
    ProbeResult {
        addrs: cfg.addrs.clone(),
        rate: cfg.rate,
        duration_ms,
        requests: run.requests,
        answers,
        errors: run.errors,
        reconnects: run.connects.saturating_sub(1),
        answer_rate: if duration_ms > 0.0 {
            answers as f64 * 1e3 / duration_ms
        } else {
            0.0
        },
        downtime_ms,
        gap_threshold_ms: threshold_us as f64 / 1e3,
        gaps,
        seq_ok: violations == 0 && answers > 0,
        seq_violations: violations,
        first_seq: run.samples.first().map(|s| s.seq),
        last_seq: run.samples.last().map(|s| s.seq),
        last_sum: run.samples.last().map(|s| format!("{:016x}", s.sum)),
        answers_per_addr: per_addr,
        rtt_p50_us: pct(0.5),
        rtt_p99_us: pct(0.99),
        rtt_max_us: rtts.last().copied().unwrap_or(0),
        samples: run.samples,
    }
}

/// A persistent line-protocol connection.
struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to nothing"))
}

impl Conn {
    fn open(addr: &str, connect_timeout: Duration) -> Result<Self> {
        let sa = resolve(addr)?;
        let s = TcpStream::connect_timeout(&sa, connect_timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true).context("TCP_NODELAY")?;
        let r = BufReader::new(s.try_clone().context("cloning stream")?);
        Ok(Self { w: s, r })
    }

    /// Sends `req` (one line) and reads one answer line within `timeout`.
    fn request(&mut self, req: &str, timeout: Duration) -> Result<String> {
        self.w
            .set_write_timeout(Some(timeout))
            .context("set write timeout")?;
        self.w
            .write_all(req.as_bytes())
            .context("sending request")?;
        // The read half is a clone of the same socket: same timeout.
        self.w
            .set_read_timeout(Some(timeout))
            .context("set read timeout")?;
        let mut line = String::new();
        let n = self.r.read_line(&mut line).context("reading answer")?;
        if n == 0 || !line.ends_with('\n') {
            bail!("connection closed");
        }
        Ok(line)
    }
}

fn one_request(addr: &str, req: &str, timeout: Duration) -> Result<String> {
    let mut c = Conn::open(addr, CONNECT_TIMEOUT.max(Duration::from_millis(500)))?;
    c.request(req, timeout)
        .with_context(|| format!("{} to {addr}", req.trim()))
}

/// Sends one PING to `addr` on a fresh connection.
pub fn ping(addr: &str) -> Result<PingReply> {
    PingReply::parse(&one_request(addr, "PING\n", Duration::from_secs(2))?)
}

/// Sends VERIFY to `addr` and parses the report (waits up to [`VERIFY_TIMEOUT`]).
pub fn verify(addr: &str) -> Result<VerifyReport> {
    VerifyReport::parse(&one_request(addr, "VERIFY\n", VERIFY_TIMEOUT)?)
}

/// Sends STATS to `addr` and returns the JSON.
pub fn stats(addr: &str) -> Result<serde_json::Value> {
    let line = one_request(addr, "STATS\n", Duration::from_secs(5))?;
    serde_json::from_str(&line).context("parsing STATS answer")
}

/// Starts probes.
pub struct Probe;

/// A running probe; [`ProbeHandle::stop`] ends it and returns the result.
pub struct ProbeHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<RawRun>>,
    cfg: ProbeConfig,
}

impl Probe {
    /// Starts probing `addrs` at `rate` requests/s with default timeouts.
    pub fn start(addrs: Vec<String>, rate: f64) -> Result<ProbeHandle> {
        Self::start_with(ProbeConfig::new(addrs, rate))
    }

    /// Starts probing with explicit settings.
    pub fn start_with(cfg: ProbeConfig) -> Result<ProbeHandle> {
        if cfg.addrs.is_empty() {
            bail!("probe needs at least one address");
        }
        if !(cfg.rate.is_finite() && cfg.rate > 0.0) {
            bail!("probe rate must be > 0");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (s, c) = (stop.clone(), cfg.clone());
        let thread = thread::Builder::new()
            .name("probe".into())
            .spawn(move || run_probe(&c, &s))
            .context("spawning probe thread")?;
        Ok(ProbeHandle {
            stop,
            thread: Some(thread),
            cfg,
        })
    }
}

impl ProbeHandle {
    /// Answers so far are not visible; this only tells whether it still runs.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the probe and returns what it observed.
    pub fn stop(mut self) -> ProbeResult {
        self.stop.store(true, Ordering::Release);
        let run = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        analyze(&self.cfg, run)
    }
}

impl Drop for ProbeHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The probe loop: one request per tick on an absolute schedule. Small
/// delays (scheduling hiccups) are caught up so the rate holds; after a
/// long stall (a request hung until its timeout) the schedule skips ahead
/// instead of bursting.
fn run_probe(cfg: &ProbeConfig, stop: &AtomicBool) -> RawRun {
    let period = cfg.period();
    let start = Instant::now();
    let mut next = start;
    let mut run = RawRun::default();
    let mut conn: Option<Conn> = None;
    let mut current = 0usize;
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if now < next {
            thread::sleep((next - now).min(Duration::from_millis(20)));
            continue;
        }
        next += period;
        if next + period * 4 < now {
            // Far behind (a request hung until its timeout): skip ahead.
            next = now + period;
        }
        run.requests += 1;
        let mut answered = false;
        // The current address first, then the others in order.
        for k in 0..cfg.addrs.len() {
            let idx = (current + k) % cfg.addrs.len();
            if k > 0 || conn.is_none() {
                conn = Conn::open(&cfg.addrs[idx], cfg.connect_timeout).ok();
                run.connects += u64::from(conn.is_some());
            }
            let Some(c) = conn.as_mut() else { continue };
            let sent = Instant::now();
            match c
                .request("PING\n", cfg.read_timeout)
                .and_then(|l| PingReply::parse(&l))
            {
                Ok(p) => {
                    let t = Instant::now();
                    run.samples.push(Sample {
                        t_us: (t - start).as_micros() as u64,
                        rtt_us: (t - sent).as_micros() as u64,
                        seq: p.seq,
                        sum: p.sum,
                        addr: idx,
                        conn: run.connects,
                    });
                    current = idx;
                    answered = true;
                    break;
                }
                Err(_) => conn = None,
            }
            if stop.load(Ordering::Acquire) {
                break;
            }
        }
        if !answered {
            run.errors += 1;
        }
    }
    run.duration = start.elapsed();
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ProbeConfig {
        ProbeConfig::new(vec!["a:1".into(), "b:2".into()], 200.0)
    }

    fn samples(points: &[(u64, u64, usize)]) -> Vec<Sample> {
        points
            .iter()
            .map(|&(t_ms, seq, addr)| Sample {
                t_us: t_ms * 1000,
                rtt_us: 100,
                seq,
                sum: 7,
                addr,
                conn: 1 + addr as u64,
            })
            .collect()
    }

    #[test]
    fn a_window_reports_its_gap_and_whether_one_connection_carried_it() {
        let pts = [(0, 1, 0), (10, 2, 0), (300, 3, 0), (310, 4, 0), (600, 5, 1)];
        let r = analyze(
            &cfg(),
            RawRun {
                samples: samples(&pts),
                ..RawRun::default()
            },
        );
        assert_eq!(r.window(20.0, 290.0), Some((290.0, true)));
        assert_eq!(r.window(305.0, 590.0), Some((290.0, false)));
        assert_eq!(r.window(700.0, 800.0), None);
    }

    #[test]
    fn steady_run_has_no_gaps() {
        let pts: Vec<(u64, u64, usize)> = (0..200).map(|i| (i * 5, i + 1, 0)).collect();
        let r = analyze(
            &cfg(),
            RawRun {
                samples: samples(&pts),
                requests: 200,
                errors: 0,
                connects: 1,
                duration: Duration::from_secs(1),
            },
        );
        assert_eq!(r.answers, 200);
        assert_eq!(r.reconnects, 0);
        assert!((r.downtime_ms - 5.0).abs() < 1e-9);
        assert!(r.gaps.is_empty());
        assert!(r.seq_ok);
        assert_eq!((r.first_seq, r.last_seq), (Some(1), Some(200)));
        assert!((r.answer_rate - 200.0).abs() < 1e-9);
        assert_eq!(r.gap_threshold_ms, 15.0);
    }

    #[test]
    fn migration_gap_and_address_switch_are_reported() {
        // Node a answers until 100 ms, node b from 350 ms; seq continues.
        let mut pts = vec![(0, 10, 0), (5, 11, 0), (100, 12, 0)];
        pts.extend([(350, 13, 1), (355, 20, 1), (360, 21, 1)]);
        let r = analyze(
            &cfg(),
            RawRun {
                samples: samples(&pts),
                requests: 73,
                errors: 50,
                connects: 3,
                duration: Duration::from_millis(400),
            },
        );
        assert_eq!(r.reconnects, 2);
        assert_eq!(r.gaps.len(), 2);
        assert_eq!(r.gaps[1].duration_ms, 250.0);
        assert_eq!(r.gaps[1].start_ms, 100.0);
        assert_eq!(r.downtime_ms, 250.0);
        assert!(r.seq_ok);
        assert_eq!(r.answers_per_addr["a:1"], 3);
        assert_eq!(r.answers_per_addr["b:2"], 3);
        assert_eq!(r.errors, 50);
    }

    #[test]
    fn restarted_or_repeated_seq_is_flagged() {
        let restarted = samples(&[(0, 41, 0), (5, 42, 0), (10, 1, 1), (15, 2, 1)]);
        let r = analyze(
            &cfg(),
            RawRun {
                samples: restarted,
                ..RawRun::default()
            },
        );
        assert!(!r.seq_ok);
        assert_eq!(r.seq_violations, 1);
        let repeated = samples(&[(0, 5, 0), (5, 5, 0)]);
        let r = analyze(
            &cfg(),
            RawRun {
                samples: repeated,
                ..RawRun::default()
            },
        );
        assert!(!r.seq_ok);
    }

    #[test]
    fn no_answers_means_whole_run_is_downtime() {
        let r = analyze(
            &cfg(),
            RawRun {
                samples: vec![],
                requests: 10,
                errors: 10,
                connects: 0,
                duration: Duration::from_millis(50),
            },
        );
        assert_eq!(r.downtime_ms, 50.0);
        assert!(!r.seq_ok);
        assert_eq!(r.first_seq, None);
    }

    #[test]
    fn probe_fails_over_to_the_next_address() {
        let svc = crate::service::Service::start(crate::service::Config {
            state_mib: 1,
            port: 0,
            bind: "127.0.0.1".into(),
            ..Default::default()
        })
        .expect("service");
        // A port nobody listens on (bound then released) comes first.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .to_string();
        let live = svc.local_addr().to_string();
        let h = Probe::start(vec![dead.clone(), live.clone()], 200.0).expect("probe");
        thread::sleep(Duration::from_millis(500));
        let r = h.stop();
        assert!(r.answers >= 80, "{}", r.summary());
        assert!(r.seq_ok, "{}", r.summary());
        assert_eq!(r.answers_per_addr.get(&live).copied(), Some(r.answers));
        assert_eq!(r.errors, 0, "{}", r.summary());
    }
}
