//! `mose-probe`: PINGs the state service at a fixed rate and reports the
//! client-observed downtime and seq continuity (see `mose_workloads::probe`).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, ValueEnum};
use mose_workloads::probe::{self, Probe, ProbeConfig};

/// Set by SIGINT/SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

#[derive(Debug, Parser)]
#[command(
    name = "mose-probe",
    args_override_self = true,
    about = "PINGs the state service at a fixed rate and reports the client-observed downtime, \
             gaps and seq continuity; or asks it once (--ping, --verify, --stats)",
    after_help = "Without --duration the probe runs until stdin closes or SIGINT/SIGTERM; stdin is \
                  ignored when it is /dev/null or with --ignore-stdin.\n\
                  --verify exits 1 when the service reports corruption."
)]
struct Args {
    /// Service address HOST:PORT; repeatable or comma-separated, tried in order after a failure.
    #[arg(
        long = "addr",
        value_name = "HOST:PORT",
        required = true,
        value_delimiter = ','
    )]
    addrs: Vec<String>,
    /// Requests per second.
    #[arg(long, default_value_t = 200.0, value_parser = positive, allow_negative_numbers = true)]
    rate: f64,
    /// How long to probe: seconds, or with a unit (10, 10s, 500ms, 2m).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text, overrides_with = "json")]
    output: Output,
    /// Same as --output json.
    #[arg(long, overrides_with = "output")]
    json: bool,
    /// List gaps longer than this, in ms [default: 3 request periods].
    #[arg(
        long = "gap-threshold-ms",
        value_name = "MS",
        value_parser = non_negative,
        allow_negative_numbers = true
    )]
    gap_ms: Option<f64>,
    /// Connect timeout per attempt, in ms [default: 50].
    #[arg(long = "connect-timeout-ms", value_name = "MS")]
    connect_ms: Option<u64>,
    /// Read timeout per request, in ms [default: 100].
    #[arg(long = "read-timeout-ms", value_name = "MS")]
    read_ms: Option<u64>,
    /// Also write every answer to this file as CSV (t_us,rtt_us,seq,sum,addr).
    #[arg(long, value_name = "FILE.csv")]
    samples: Option<PathBuf>,
    /// Do not stop when stdin closes (only --duration or a signal ends the probe).
    #[arg(long)]
    ignore_stdin: bool,
    /// Send one PING to the first address that answers and print the reply.
    #[arg(long, overrides_with_all = ["verify", "stats"])]
    ping: bool,
    /// Ask the first address that answers to VERIFY its state; exits 1 on corruption.
    #[arg(long, overrides_with_all = ["ping", "stats"])]
    verify: bool,
    /// Print the STATS of the first address that answers (JSON).
    #[arg(long, overrides_with_all = ["ping", "verify"])]
    stats: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ping,
    Verify,
    Stats,
}

impl Args {
    fn json(&self) -> bool {
        self.json || self.output == Output::Json
    }

    fn mode(&self) -> Option<Mode> {
        match (self.ping, self.verify, self.stats) {
            (true, ..) => Some(Mode::Ping),
            (_, true, _) => Some(Mode::Verify),
            (.., true) => Some(Mode::Stats),
            _ => None,
        }
    }

    /// Parses argv; `--addr` entries are trimmed and empty ones dropped (as
    /// in `--addr a:1,`), and at least one must remain.
    fn parse_from_env() -> Self {
        let mut a = Self::parse();
        if let Err(e) = a.tidy_addrs() {
            e.exit();
        }
        a
    }

    fn tidy_addrs(&mut self) -> Result<(), clap::Error> {
        self.addrs = self
            .addrs
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if self.addrs.is_empty() {
            return Err(Self::command().error(
                clap::error::ErrorKind::InvalidValue,
                "--addr <HOST:PORT>: no address given",
            ));
        }
        Ok(())
    }
}

/// A rate: finite and > 0.
fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(_) => Err("must be a number > 0".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// A threshold: finite and >= 0.
fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        Ok(_) => Err("must be a number >= 0".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// True when stdin is /dev/null (a background job): then EOF on stdin
/// means nothing and only a signal or `--duration` ends the probe.
fn stdin_is_dev_null() -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata("/proc/self/fd/0"),
        std::fs::metadata("/dev/null"),
    ) {
        (Ok(a), Ok(b)) => a.rdev() == b.rdev() && a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// `10`, `10s`, `500ms` or `2m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, mult) = if let Some(v) = s.strip_suffix("ms") {
        (v, 1e-3)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else {
        (s, 1.0)
    };
    let bad = || format!("bad duration {s:?} (e.g. 10, 10s, 500ms, 2m)");
    let secs: f64 = num.parse().map_err(|_| bad())?;
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(bad());
    }
    Duration::try_from_secs_f64(secs * mult).map_err(|_| bad())
}

/// Runs a one-shot request against the first address that answers.
fn one_shot(a: &Args, mode: Mode) -> Result<ExitCode> {
    let json = a.json();
    let mut last = None;
    for addr in &a.addrs {
        let r: Result<(String, bool)> = match mode {
            Mode::Ping => probe::ping(addr).map(|p| {
                if json {
                    (serde_json::json!({"addr": addr, "seq": p.seq, "sum": format!("{:016x}", p.sum), "writes": p.writes}).to_string(), true)
                } else {
                    (format!("{addr}: {}", p.to_line().trim_end()), true)
                }
            }),
            Mode::Verify => probe::verify(addr).map(|v| {
                let ok = v.is_ok();
                if json {
                    (serde_json::to_string(&v).unwrap_or_default(), ok)
                } else {
                    (format!("{addr}: {}", v.to_line().trim_end()), ok)
                }
            }),
            Mode::Stats => probe::stats(addr).map(|s| (s.to_string(), true)),
        };
        match r {
            Ok((out, ok)) => {
                let _ = writeln!(std::io::stdout().lock(), "{out}");
                return Ok(if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no address")))
}

fn run(a: Args) -> Result<ExitCode> {
    if let Some(mode) = a.mode() {
        return one_shot(&a, mode);
    }
    let json = a.json();
    let mut cfg = ProbeConfig::new(a.addrs.clone(), a.rate);
    if let Some(ms) = a.connect_ms {
        cfg.connect_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = a.read_ms {
        cfg.read_timeout = Duration::from_millis(ms);
    }
    cfg.gap_threshold = a.gap_ms.map(|ms| Duration::from_secs_f64(ms / 1e3));
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    if a.duration.is_none() && !a.ignore_stdin && !stdin_is_dev_null() {
        // Until stdin closes: lets a driving script stop us by closing a pipe.
        std::thread::spawn(|| {
            let mut sink = [0u8; 256];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            STOP.store(true, Ordering::SeqCst);
        });
    }
    let handle = Probe::start_with(cfg)?;
    let start = Instant::now();
    while !STOP.load(Ordering::SeqCst) && a.duration.is_none_or(|d| start.elapsed() < d) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let result = handle.stop();
    if let Some(path) = &a.samples {
        std::fs::write(path, result.samples_csv())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    // A reader that went away (`| head`) is not an error worth a panic.
    let mut text = if json {
        serde_json::to_string_pretty(&result).context("serializing result")?
    } else {
        let mut t = result.summary();
        for g in &result.gaps {
            t.push_str(&format!(
                "\ngap {:.1} ms from {:.1} ms to {:.1} ms",
                g.duration_ms, g.start_ms, g.end_ms
            ));
        }
        t
    };
    text.push('\n');
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(Args::parse_from_env()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mose-probe: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        let mut a =
            Args::try_parse_from(std::iter::once("mose-probe").chain(args.iter().copied()))?;
        a.tidy_addrs()?;
        Ok(a)
    }

    #[test]
    fn command_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1e300m").is_err());
    }

    #[test]
    fn addresses_accumulate() {
        let a = parse(&["--addr", "a:1,b:2", "--addr=c:3", "--output", "json"]).expect("args");
        assert_eq!(a.addrs, vec!["a:1", "b:2", "c:3"]);
        assert!(a.json());
        assert!(parse(&[]).is_err());
        assert!(parse(&["--addr", ","]).is_err());
    }

    #[test]
    fn last_of_conflicting_flags_wins() {
        let a = parse(&["--addr", "a:1", "--json", "--output", "text"]).expect("args");
        assert!(!a.json());
        let a = parse(&["--addr", "a:1", "--output", "text", "--json"]).expect("args");
        assert!(a.json());
        let a = parse(&["--addr", "a:1", "--verify", "--ping"]).expect("args");
        assert_eq!(a.mode(), Some(Mode::Ping));
        let a = parse(&["--addr", "a:1", "--rate", "10", "--rate", "20"]).expect("args");
        assert_eq!(a.rate, 20.0);
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            &["--addr", "a:1", "--bogus"][..],
            &["--addr", "a:1", "--rate", "0"],
            &["--addr", "a:1", "--rate", "x"],
            &["--addr", "a:1", "--output", "xml"],
            &["--addr", "a:1", "--gap-threshold-ms", "-5"],
            &["--addr", "a:1", "--duration", "soon"],
            &["--addr", "a:1", "--connect-timeout-ms", "1.5"],
        ] {
            let e = parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }
}
