//! `mose-probe`: PINGs the state service at a fixed rate and reports the
//! client-observed downtime and seq continuity (see `mose_workloads::probe`).

use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mose_workloads::probe::{self, Probe, ProbeConfig};

const USAGE: &str = "usage: mose-probe --addr HOST:PORT [--addr HOST:PORT ...] [--rate N (200)]
       [--duration D (e.g. 10, 10s, 500ms, 2m; default: until stdin closes or SIGINT/SIGTERM;
                      stdin is ignored when it is /dev/null or with --ignore-stdin)]
       [--output text|json] [--gap-threshold-ms MS (3 periods)] [--connect-timeout-ms MS (50)]
       [--read-timeout-ms MS (100)] [--samples FILE.csv]
   or: mose-probe --addr HOST:PORT (--ping | --verify | --stats)
--addr may also hold a comma-separated list; addresses are tried in order after a failure.
--verify exits 1 when the service reports corruption.";

/// Set by SIGINT/SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

#[derive(Debug, Default)]
struct Args {
    addrs: Vec<String>,
    rate: Option<f64>,
    duration: Option<Duration>,
    json: bool,
    gap_ms: Option<f64>,
    connect_ms: Option<u64>,
    read_ms: Option<u64>,
    samples: Option<String>,
    mode: Option<&'static str>,
    ignore_stdin: bool,
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

fn parse_duration(s: &str) -> Result<Duration> {
    let (num, mult) = if let Some(v) = s.strip_suffix("ms") {
        (v, 1e-3)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else {
        (s, 1.0)
    };
    let secs: f64 = num.parse().with_context(|| format!("bad duration {s:?}"))?;
    if !(secs.is_finite() && secs >= 0.0) {
        bail!("bad duration {s:?}");
    }
    Ok(Duration::from_secs_f64(secs * mult))
}

fn parse_args(raw: &[String]) -> Result<Args> {
    let mut a = Args::default();
    let mut it = raw.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || -> Result<String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .with_context(|| format!("{flag} needs a value")),
            }
        };
        match flag {
            "--addr" => a.addrs.extend(
                value()?
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            ),
            "--rate" => a.rate = Some(value()?.parse().context("--rate")?),
            "--duration" => a.duration = Some(parse_duration(&value()?)?),
            "--output" => {
                a.json = match value()?.as_str() {
                    "json" => true,
                    "text" => false,
                    o => bail!("--output must be text or json, not {o:?}"),
                }
            }
            "--json" => a.json = true,
            "--gap-threshold-ms" => {
                a.gap_ms = Some(value()?.parse().context("--gap-threshold-ms")?)
            }
            "--connect-timeout-ms" => {
                a.connect_ms = Some(value()?.parse().context("--connect-timeout-ms")?)
            }
            "--read-timeout-ms" => a.read_ms = Some(value()?.parse().context("--read-timeout-ms")?),
            "--samples" => a.samples = Some(value()?),
            "--ignore-stdin" => a.ignore_stdin = true,
            "--ping" => a.mode = Some("ping"),
            "--verify" => a.mode = Some("verify"),
            "--stats" => a.mode = Some("stats"),
            other => bail!("unknown argument {other:?}"),
        }
    }
    if a.addrs.is_empty() {
        bail!("--addr is required");
    }
    Ok(a)
}

/// Runs a one-shot request against the first address that answers.
fn one_shot(a: &Args, mode: &str) -> Result<ExitCode> {
    let mut last = None;
    for addr in &a.addrs {
        let r: Result<(String, bool)> = match mode {
            "ping" => probe::ping(addr).map(|p| {
                if a.json {
                    (serde_json::json!({"addr": addr, "seq": p.seq, "sum": format!("{:016x}", p.sum), "writes": p.writes}).to_string(), true)
                } else {
                    (format!("{addr}: {}", p.to_line().trim_end()), true)
                }
            }),
            "verify" => probe::verify(addr).map(|v| {
                let ok = v.is_ok();
                if a.json {
                    (serde_json::to_string(&v).unwrap_or_default(), ok)
                } else {
                    (format!("{addr}: {}", v.to_line().trim_end()), ok)
                }
            }),
            _ => probe::stats(addr).map(|s| (s.to_string(), true)),
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
    if let Some(mode) = a.mode {
        return one_shot(&a, mode);
    }
    let mut cfg = ProbeConfig::new(a.addrs.clone(), a.rate.unwrap_or(200.0));
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
        std::fs::write(path, result.samples_csv()).with_context(|| format!("writing {path}"))?;
    }
    // A reader that went away (`| head`) is not an error worth a panic.
    let mut text = if a.json {
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
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let args = match parse_args(&raw) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mose-probe: {e:#}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
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

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10").expect("s"), Duration::from_secs(10));
        assert_eq!(
            parse_duration("500ms").expect("ms"),
            Duration::from_millis(500)
        );
        assert_eq!(parse_duration("2m").expect("m"), Duration::from_secs(120));
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn addresses_accumulate() {
        let raw: Vec<String> = ["--addr", "a:1,b:2", "--addr=c:3", "--output", "json"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let a = parse_args(&raw).expect("args");
        assert_eq!(a.addrs, vec!["a:1", "b:2", "c:3"]);
        assert!(a.json);
        assert!(parse_args(&[]).is_err());
    }
}
