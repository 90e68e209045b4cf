//! The state service: [`State`] plus a dirtying thread and a TCP server
//! speaking the [`crate::protocol`].
//!
//! One thread per connection: requests are tiny and the clients few, and a
//! blocking thread answers PING without any scheduling hop (well under 1 ms
//! even while the dirtier runs), which keeps the probe's downtime
//! measurement about the migration, not about the server.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::protocol::{parse_request, PingReply, Request, VerifyReport};
use crate::state::{Rng, State, Verify, PAGE};

/// Pacing step of the dirtier: small so that the dirty rate is smooth.
const DIRTY_STEP: Duration = Duration::from_millis(5);

/// Connections idle this long are closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Marker written at start when `/data` exists (lets tests and scripts see
/// whether a container was started fresh or restored).
pub const MARKER: &str = "/data/started";

/// Configuration of the state service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// State size in MiB.
    pub state_mib: u64,
    /// Rewrite rate in MiB/s (0: idle).
    pub dirty_mib_per_s: f64,
    /// TCP port (0: any free port).
    pub port: u16,
    /// Listen address.
    pub bind: String,
    /// PRNG seed for the initial content and the dirtier.
    pub seed: u64,
    /// Exercise the address-space events a lazy restore must follow: every
    /// 200 ms move a scratch buffer (mremap), discard half of it
    /// (MADV_DONTNEED) and verify the state from a forked child.
    pub churn: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_mib: 64,
            dirty_mib_per_s: 0.0,
            port: 7070,
            bind: "0.0.0.0".into(),
            seed: 1,
            churn: false,
        }
    }
}

/// Command-line flags of `mose-state-service`; each one given wins over its
/// environment variable (see [`Config::from_env_and_flags`]).
#[derive(Debug, Default, Clone, PartialEq, clap::Parser)]
#[command(
    name = "mose-state-service",
    args_override_self = true,
    about = "The stateful workload MOSE migrates: S MiB of checksummed memory rewritten at R MiB/s, \
             served over TCP (PING, VERIFY, STATS, QUIT)",
    after_help = "Environment (flags win): MOSE_STATE_MIB MOSE_DIRTY_MIB_PER_S MOSE_PORT MOSE_SEED \
                  MOSE_BIND, and MOSE_IDLE (set: no dirtying)."
)]
pub struct Flags {
    /// State size in MiB [default: 64].
    #[arg(long, value_name = "S")]
    pub state_mib: Option<u64>,
    /// Rewrite rate in MiB/s, 0: idle [default: 0].
    #[arg(
        long,
        value_name = "R",
        value_parser = non_negative,
        allow_negative_numbers = true,
        overrides_with = "idle"
    )]
    pub dirty_mib_per_s: Option<f64>,
    /// No dirtying (same as --dirty-mib-per-s 0; the later of the two wins).
    #[arg(long, overrides_with = "dirty_mib_per_s")]
    pub idle: bool,
    /// TCP port, 0: any free port [default: 7070].
    #[arg(long, value_name = "P")]
    pub port: Option<u16>,
    /// Listen address [default: 0.0.0.0].
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,
    /// PRNG seed of the initial content and the dirtier [default: 1].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Every 200 ms move a scratch buffer (mremap), discard half of it
    /// (MADV_DONTNEED) and verify the state from a forked child.
    #[arg(long)]
    pub churn: bool,
}

/// A rate: finite and >= 0.
fn non_negative(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        Ok(_) => Err("must be a number >= 0".into()),
        Err(e) => Err(e.to_string()),
    }
}

impl Config {
    /// Reads `MOSE_STATE_MIB`, `MOSE_DIRTY_MIB_PER_S`, `MOSE_PORT`,
    /// `MOSE_SEED`, `MOSE_BIND`, `MOSE_IDLE` (set: no dirtying), then
    /// applies the command-line `flags` (which win).
    pub fn from_env_and_flags(flags: &Flags) -> Result<Self> {
        let mut c = Self::default();
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(v) = env("MOSE_STATE_MIB") {
            c.state_mib = v.parse().context("MOSE_STATE_MIB")?;
        }
        if let Some(v) = env("MOSE_DIRTY_MIB_PER_S") {
            c.dirty_mib_per_s = v.parse().context("MOSE_DIRTY_MIB_PER_S")?;
        }
        if let Some(v) = env("MOSE_PORT") {
            c.port = v.parse().context("MOSE_PORT")?;
        }
        if let Some(v) = env("MOSE_SEED") {
            c.seed = v.parse().context("MOSE_SEED")?;
        }
        if let Some(v) = env("MOSE_BIND") {
            c.bind = v;
        }
        if env("MOSE_IDLE").is_some() {
            c.dirty_mib_per_s = 0.0;
        }
        if let Some(v) = flags.state_mib {
            c.state_mib = v;
        }
        if let Some(v) = flags.dirty_mib_per_s {
            c.dirty_mib_per_s = v;
        }
        if flags.idle {
            c.dirty_mib_per_s = 0.0;
        }
        if let Some(v) = flags.port {
            c.port = v;
        }
        if let Some(v) = &flags.bind {
            c.bind = v.clone();
        }
        if let Some(v) = flags.seed {
            c.seed = v;
        }
        c.churn |= flags.churn;
        // the flag's value was checked when it was parsed
        if !(c.dirty_mib_per_s.is_finite() && c.dirty_mib_per_s >= 0.0) {
            bail!("MOSE_DIRTY_MIB_PER_S must be >= 0");
        }
        Ok(c)
    }
}

/// Shared by all threads of the service.
struct Shared {
    config: Config,
    state: State,
    seq: AtomicU64,
    started: Instant,
    stop: AtomicBool,
    /// `--churn` rounds done, and checks that failed in them.
    churn_rounds: AtomicU64,
    churn_errors: AtomicU64,
}

/// A running state service.
pub struct Service {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

/// JSON answer to STATS.
#[derive(Debug, Serialize)]
struct Stats<'a> {
    state_mib: u64,
    pages: usize,
    page_size: usize,
    dirty_mib_per_s: f64,
    writes: u64,
    seq: u64,
    sum: String,
    uptime_s: f64,
    pid: u32,
    churn_rounds: u64,
    churn_errors: u64,
    config: &'a Config,
}

impl Service {
    /// Allocates and fills the state, binds the port, writes the marker
    /// file and starts the dirtier and the acceptor threads.
    pub fn start(config: Config) -> Result<Self> {
        let pages = usize::try_from(config.state_mib)
            .ok()
            .and_then(|m| m.checked_mul(1 << 20))
            .context("state size too large")?
            / PAGE;
        let state = State::new(pages, config.seed)?;
        let listener = TcpListener::bind((config.bind.as_str(), config.port))
            .with_context(|| format!("binding {}:{}", config.bind, config.port))?;
        let addr = listener.local_addr().context("local addr")?;
        let shared = Arc::new(Shared {
            config,
            state,
            seq: AtomicU64::new(0),
            started: Instant::now(),
            stop: AtomicBool::new(false),
            churn_rounds: AtomicU64::new(0),
            churn_errors: AtomicU64::new(0),
        });
        if shared.config.churn {
            let mut scratch = Scratch::new(SCRATCH_BYTES)?;
            let s = shared.clone();
            thread::Builder::new()
                .name("churn".into())
                .spawn(move || churn(&s, &mut scratch))
                .context("spawning churn")?;
        }
        write_marker(Path::new(MARKER), &shared.config);
        if shared.config.dirty_mib_per_s > 0.0 && pages > 0 {
            let s = shared.clone();
            thread::Builder::new()
                .name("dirtier".into())
                .spawn(move || dirtier(&s))
                .context("spawning dirtier")?;
        }
        let s = shared.clone();
        thread::Builder::new()
            .name("acceptor".into())
            .spawn(move || acceptor(&s, listener))
            .context("spawning acceptor")?;
        Ok(Self { shared, addr })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The state (for in-process tests).
    pub fn state(&self) -> &State {
        &self.shared.state
    }

    /// Stops dirtying and accepting (existing connections end on next request).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        // Wake the acceptor.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.addr.port())),
            Duration::from_millis(100),
        );
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write_marker(path: &Path, config: &Config) {
    let Some(dir) = path.parent() else { return };
    if !dir.is_dir() {
        return;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let line = format!(
        "pid={} started_unix={now:.3} state_mib={} dirty_mib_per_s={} port={}\n",
        std::process::id(),
        config.state_mib,
        config.dirty_mib_per_s,
        config.port
    );
    if let Err(e) = std::fs::write(path, line) {
        eprintln!("mose-state-service: writing {}: {e}", path.display());
    }
}

/// Size of the `--churn` scratch buffer.
const SCRATCH_BYTES: usize = 4 << 20;
const CHURN_EVERY: Duration = Duration::from_millis(200);

/// The byte the scratch buffer holds at `offset`.
fn pattern(offset: usize) -> u8 {
    ((offset / PAGE) as u8) ^ (offset as u8).rotate_left(3) ^ 0xA5
}

/// A buffer that moves between two reserved address ranges.
struct Scratch {
    at: usize,
    spare: usize,
    len: usize,
}

impl Scratch {
    fn new(len: usize) -> Result<Self> {
        let map = |prot| {
            // SAFETY: a fresh private anonymous mapping.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    prot,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                bail!(
                    "mmap for the churn buffer: {}",
                    std::io::Error::last_os_error()
                );
            }
            Ok(p as usize)
        };
        let at = map(libc::PROT_READ | libc::PROT_WRITE)?;
        let spare = map(libc::PROT_NONE)?;
        let mut s = Self { at, spare, len };
        s.fill(0, len);
        Ok(s)
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `at` is our read-write mapping of `len` bytes, used by the
        // churn thread only.
        unsafe { std::slice::from_raw_parts(self.at as *const u8, self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `bytes`, with exclusive access through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.at as *mut u8, self.len) }
    }

    fn fill(&mut self, from: usize, to: usize) {
        for (i, b) in self.bytes_mut()[from..to].iter_mut().enumerate() {
            *b = pattern(from + i);
        }
    }

    fn holds_pattern(&self, from: usize, to: usize) -> bool {
        self.bytes()[from..to]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == pattern(from + i))
    }

    /// mremap to the spare range; the old range becomes the spare.
    fn relocate(&mut self) -> Result<()> {
        // SAFETY: both ranges are ours; MREMAP_FIXED replaces the spare.
        let p = unsafe {
            libc::mremap(
                self.at as *mut libc::c_void,
                self.len,
                self.len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                self.spare as *mut libc::c_void,
            )
        };
        if p == libc::MAP_FAILED {
            bail!("mremap: {}", std::io::Error::last_os_error());
        }
        // SAFETY: re-reserve the range we just left, at the same address.
        let r = unsafe {
            libc::mmap(
                self.at as *mut libc::c_void,
                self.len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if r == libc::MAP_FAILED {
            bail!("mmap: {}", std::io::Error::last_os_error());
        }
        std::mem::swap(&mut self.at, &mut self.spare);
        Ok(())
    }

    /// Discards the second half: it must read back as zeros.
    fn discard_half(&self) -> Result<bool> {
        let half = self.len / 2;
        // SAFETY: advice on our own mapping.
        let r = unsafe {
            libc::madvise(
                (self.at + half) as *mut libc::c_void,
                half,
                libc::MADV_DONTNEED,
            )
        };
        if r != 0 {
            bail!("madvise: {}", std::io::Error::last_os_error());
        }
        Ok(self.bytes()[half..].iter().all(|b| *b == 0))
    }
}

/// `--churn`: moves, discards and refills the scratch buffer and verifies
/// the state from a forked child, counting every check that fails.
fn churn(s: &Shared, scratch: &mut Scratch) {
    while !s.stop.load(Ordering::Acquire) {
        thread::sleep(CHURN_EVERY);
        let mut ok = scratch.relocate().is_ok() && scratch.holds_pattern(0, scratch.len);
        ok &= scratch.discard_half().unwrap_or(false);
        let len = scratch.len;
        scratch.fill(len / 2, len);
        ok &= scratch.holds_pattern(0, scratch.len);
        ok &= s.state.verify_in_child().unwrap_or(false);
        if !ok {
            s.churn_errors.fetch_add(1, Ordering::AcqRel);
        }
        s.churn_rounds.fetch_add(1, Ordering::AcqRel);
    }
}

/// Rewrites random pages at the configured rate, paced in [`DIRTY_STEP`]s
/// against an absolute schedule (no drift, no bursts after a freeze beyond
/// one step: a checkpoint pause must not be followed by a catch-up storm).
fn dirtier(s: &Shared) {
    let pages_per_s = s.config.dirty_mib_per_s * (1 << 20) as f64 / PAGE as f64;
    let mut rng = Rng::new(s.config.seed ^ 0xD1B5_4A32_D192_ED03);
    let mut buf = [0u8; PAGE];
    let n = s.state.pages() as u64;
    let mut origin = Instant::now();
    let mut done = 0f64;
    while !s.stop.load(Ordering::Acquire) {
        let elapsed = origin.elapsed().as_secs_f64();
        let due = elapsed * pages_per_s;
        if due - done > pages_per_s * 0.1 + 1.0 {
            // We were frozen (or starved) for a while: restart the schedule.
            origin = Instant::now();
            done = 0.0;
            continue;
        }
        while done + 1.0 <= due {
            let i = rng.below(n) as usize;
            s.state.write_page(i, &mut rng, &mut buf);
            done += 1.0;
        }
        thread::sleep(DIRTY_STEP);
    }
}

fn acceptor(s: &Arc<Shared>, listener: TcpListener) {
    for conn in listener.incoming() {
        if s.stop.load(Ordering::Acquire) {
            return;
        }
        match conn {
            Ok(stream) => {
                let s = s.clone();
                let r = thread::Builder::new().name("conn".into()).spawn(move || {
                    let _ = serve(&s, stream);
                });
                if let Err(e) = r {
                    eprintln!("mose-state-service: spawning connection thread: {e}");
                }
            }
            Err(e) => {
                eprintln!("mose-state-service: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Serves one connection until EOF, QUIT, an I/O error or service stop.
fn serve(s: &Shared, stream: TcpStream) -> Result<()> {
    stream.set_nodelay(true).context("TCP_NODELAY")?;
    // Clients that vanished without a FIN (e.g. across a migration) must
    // not pin a thread forever.
    stream
        .set_read_timeout(Some(IDLE_TIMEOUT))
        .context("read timeout")?;
    let mut w = stream.try_clone().context("cloning stream")?;
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).context("reading request")? == 0 {
            return Ok(());
        }
        if s.stop.load(Ordering::Acquire) {
            return Ok(());
        }
        let answer = match parse_request(&line) {
            Ok(Request::Ping) => PingReply {
                seq: s.seq.fetch_add(1, Ordering::AcqRel) + 1,
                sum: s.state.sum(),
                writes: s.state.writes(),
            }
            .to_line(),
            Ok(Request::Verify) => verify_report(s).to_line(),
            Ok(Request::Stats) => {
                let stats = Stats {
                    state_mib: s.config.state_mib,
                    pages: s.state.pages(),
                    page_size: PAGE,
                    dirty_mib_per_s: s.config.dirty_mib_per_s,
                    writes: s.state.writes(),
                    seq: s.seq.load(Ordering::Acquire),
                    sum: format!("{:016x}", s.state.sum()),
                    uptime_s: s.started.elapsed().as_secs_f64(),
                    pid: std::process::id(),
                    churn_rounds: s.churn_rounds.load(Ordering::Acquire),
                    churn_errors: s.churn_errors.load(Ordering::Acquire),
                    config: &s.config,
                };
                let mut j = serde_json::to_string(&stats).context("stats json")?;
                j.push('\n');
                j
            }
            Ok(Request::Quit) => return Ok(()),
            Err(_) => "error unknown command\n".to_string(),
        };
        w.write_all(answer.as_bytes()).context("writing answer")?;
    }
}

fn verify_report(s: &Shared) -> VerifyReport {
    match s.state.verify() {
        Verify::Ok { sum, pages } => VerifyReport::Ok {
            seq: s.seq.load(Ordering::Acquire),
            sum,
            pages: pages as u64,
        },
        Verify::Corrupt {
            page,
            expected,
            got,
        } => VerifyReport::Corrupt {
            first_bad_page: page as u64,
            expected,
            got,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(s: &str) -> std::result::Result<Flags, clap::Error> {
        use clap::Parser;
        Flags::try_parse_from(std::iter::once("mose-state-service").chain(s.split_whitespace()))
    }

    fn config(s: &str) -> Config {
        Config::from_env_and_flags(&flags(s).expect("flags")).expect("config")
    }

    #[test]
    fn flags_parse() {
        use clap::CommandFactory;
        Flags::command().debug_assert();
        let c =
            config("--state-mib 512 --dirty-mib-per-s=16 --port 9000 --seed 5 --bind 127.0.0.1");
        assert_eq!(
            (
                c.state_mib,
                c.dirty_mib_per_s,
                c.port,
                c.seed,
                c.bind.as_str()
            ),
            (512, 16.0, 9000, 5, "127.0.0.1")
        );
        assert_eq!(config(""), Config::default());
        // the later of --idle and --dirty-mib-per-s wins, as does a repeated flag
        assert_eq!(config("--dirty-mib-per-s 4 --idle").dirty_mib_per_s, 0.0);
        assert_eq!(config("--idle --dirty-mib-per-s 4").dirty_mib_per_s, 4.0);
        assert_eq!(config("--port 1 --port 2").port, 2);
        for bad in [
            "--bogus",
            "--port",
            "--port 70000",
            "--state-mib x",
            "--dirty-mib-per-s -1",
            "--dirty-mib-per-s inf",
            "extra",
        ] {
            let e = flags(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }

    #[test]
    fn churn_moves_discards_and_forks_without_errors() {
        let svc = Service::start(Config {
            state_mib: 2,
            port: 0,
            bind: "127.0.0.1".into(),
            churn: true,
            ..Config::default()
        })
        .expect("start");
        let deadline = Instant::now() + Duration::from_secs(20);
        let st = loop {
            let st = crate::probe::stats(&svc.local_addr().to_string()).expect("stats");
            if st["churn_rounds"].as_u64().unwrap_or(0) >= 2 || Instant::now() > deadline {
                break st;
            }
            thread::sleep(CHURN_EVERY);
        };
        assert!(st["churn_rounds"].as_u64().unwrap_or(0) >= 2, "{st}");
        assert_eq!(st["churn_errors"], 0, "{st}");
        assert!(config("--churn").churn);
    }

    #[test]
    fn serves_ping_verify_stats_in_process() {
        let svc = Service::start(Config {
            state_mib: 4,
            dirty_mib_per_s: 8.0,
            port: 0,
            bind: "127.0.0.1".into(),
            seed: 3,
            churn: false,
        })
        .expect("start");
        let addr = svc.local_addr().to_string();
        let a = crate::probe::ping(&addr).expect("ping 1");
        let b = crate::probe::ping(&addr).expect("ping 2");
        assert_eq!((a.seq, b.seq), (1, 2));
        thread::sleep(Duration::from_millis(100));
        let v = crate::probe::verify(&addr).expect("verify");
        assert!(v.is_ok(), "{v:?}");
        let st = crate::probe::stats(&addr).expect("stats");
        assert_eq!(st["pages"], 1024);
        assert!(st["writes"].as_u64().unwrap_or(0) > 0, "dirtier runs: {st}");
        // Corruption check on an idle service (the dirtier would heal the page).
        let idle = Service::start(Config {
            state_mib: 1,
            port: 0,
            bind: "127.0.0.1".into(),
            ..Config::default()
        })
        .expect("start idle");
        idle.state().corrupt_page_for_test(10);
        let v = crate::probe::verify(&idle.local_addr().to_string()).expect("verify");
        assert_eq!(
            match v {
                VerifyReport::Corrupt { first_bad_page, .. } => first_bad_page,
                _ => u64::MAX,
            },
            10
        );
    }
}
