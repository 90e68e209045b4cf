//! This node's throughputs, learned online: every completed migration adds
//! a (bytes, milliseconds) sample per phase, and each phase is fitted as
//! `ms = fixed + bytes / throughput`. The fixed parts matter: CRIU costs a
//! few hundred milliseconds even for a tiny container, so a pure throughput
//! would mispredict small containers badly. Samples persist across restarts
//! in `<state>/calibration.json`; a fresh node starts from a quick start-up
//! calibration of what it can measure alone (hashing, tmpfs writes, live
//! memory scans) and the defaults for CRIU dump and restore.
//!
//! A migration whose address moves with the container (a MOSE service
//! address, or a Kubernetes pod's IP) pays fixed costs the others do not:
//! CRIU's network lock and unlock inside the dump and the restore, the
//! address's CNI attachment on the destination, its link brought up and
//! announced. Its dump and restore therefore stay out of the throughput
//! fits, and what its freeze took beyond an address-less one of the same
//! memory is learned apart, as `address_fixed_downtime_ms`.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context, Result};
use mose_policy::model::Calibration;
use serde::{Deserialize, Serialize};
use tracing::warn;

use mose_migrate::result::MigrationResult;

/// Samples kept per phase (the most recent win).
const KEEP: usize = 32;
/// Samples smaller than this say nothing about throughput.
const MIN_BYTES: f64 = 1048576.0;

/// The phases the cost model has a throughput for.
pub const PHASES: [&str; 5] = ["scan", "dump", "hash", "assemble", "restore"];

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    pub bytes: f64,
    pub ms: f64,
}

/// An affine fit `ms = fixed_ms + bytes / bytes_per_s * 1000`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Fit {
    pub fixed_ms: f64,
    pub bytes_per_s: f64,
}

/// Fits samples to `ms = a + bytes/b`. With too few samples or too little
/// spread in size to separate the two, it keeps the `prior` throughput and
/// learns only the fixed part; a fit that makes no physical sense (negative
/// fixed time, non-positive throughput) falls back the same way.
pub fn fit(samples: &[Sample], prior: f64) -> Fit {
    let ok: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.ms.is_finite() && s.ms > 0.0 && s.bytes.is_finite() && s.bytes >= 0.0)
        .collect();
    let fixed_only = |b: f64| {
        let n = ok.len().max(1) as f64;
        let a = ok.iter().map(|s| s.ms - s.bytes / b * 1000.0).sum::<f64>() / n;
        Fit {
            fixed_ms: a.max(0.0),
            bytes_per_s: b,
        }
    };
    let big: Vec<&&Sample> = ok.iter().filter(|s| s.bytes >= MIN_BYTES).collect();
    let (lo, hi) = big.iter().fold((f64::MAX, 0.0f64), |(lo, hi), s| {
        (lo.min(s.bytes), hi.max(s.bytes))
    });
    if big.len() < 2 || hi < lo * 1.5 {
        if big.is_empty() {
            return fixed_only(prior);
        }
        // one size only: split its time with the prior's fixed part unknown;
        // take the throughput it implies, capped by the prior from above
        let b = big.iter().map(|s| s.bytes).sum::<f64>()
            / (big.iter().map(|s| s.ms).sum::<f64>() / 1000.0);
        return fixed_only(prior.clamp(b, 4.0 * b));
    }
    let n = big.len() as f64;
    let mx = big.iter().map(|s| s.bytes).sum::<f64>() / n;
    let my = big.iter().map(|s| s.ms).sum::<f64>() / n;
    let sxy: f64 = big.iter().map(|s| (s.bytes - mx) * (s.ms - my)).sum();
    let sxx: f64 = big.iter().map(|s| (s.bytes - mx).powi(2)).sum();
    let slope = sxy / sxx; // ms per byte
    if !(slope.is_finite() && slope > 0.0) {
        return fixed_only(prior);
    }
    let a = my - slope * mx;
    if a < 0.0 {
        // through the origin instead
        let b = big.iter().map(|s| s.bytes).sum::<f64>()
            / (big.iter().map(|s| s.ms).sum::<f64>() / 1000.0);
        return Fit {
            fixed_ms: 0.0,
            bytes_per_s: b,
        };
    }
    Fit {
        fixed_ms: a,
        bytes_per_s: 1000.0 / slope,
    }
}

/// Everything learned, as persisted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Learned {
    /// Per phase (see [`PHASES`]).
    pub samples: BTreeMap<String, Vec<Sample>>,
    /// Downtime not explained by the phases above (containerd create, round
    /// trips), of eager migrations whose address stayed put.
    pub other_downtime_ms: Vec<f64>,
    /// Eager migrations whose address moved with the container: `bytes` the
    /// memory, `ms` the downtime less the measured transfer and assembly
    /// (the dump, the restore and the rest of the freeze, the address's
    /// fixed costs included). Absent from calibrations persisted before it.
    #[serde(default)]
    pub address_downtime: Vec<Sample>,
    /// Total time outside the live rounds and the downtime (connect, image, release).
    pub other_total_ms: Vec<f64>,
    /// Migrations learned from.
    pub migrations: u64,
}

fn push<T>(v: &mut Vec<T>, x: T) {
    v.push(x);
    if v.len() > KEEP {
        v.remove(0);
    }
}

/// Whether a completed migration moved the container's address: it names
/// the service address, or kept its connections (only a moving address,
/// such as a pod's IP, keeps them; see `mose_migrate::network::connections`).
pub fn moved_address(r: &MigrationResult) -> bool {
    r.address.is_some() || r.connections == "kept"
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

impl Learned {
    pub fn add(&mut self, phase: &str, bytes: f64, ms: f64) {
        if ms.is_finite() && ms > 0.0 && bytes.is_finite() && bytes >= 0.0 {
            push(
                self.samples.entry(phase.to_string()).or_default(),
                Sample { bytes, ms },
            );
        }
    }

    /// The model's calibration: fitted throughputs, every fixed part that
    /// falls inside the freeze folded into `fixed_downtime_ms`, and the
    /// extra fixed downtime of a moving address.
    ///
    /// `address_fixed_downtime_ms` = max(0, median over the
    /// [`Learned::address_downtime`] samples of (ms − the dump's fit − the
    /// restore's fit at that memory) − the median of `other_downtime_ms` (0
    /// when there is none, as in `fixed_downtime_ms`)): what such a
    /// migration's dump, restore and rest of the freeze took beyond what
    /// the address-less calibration counts for them. Without samples, or
    /// while `fixed_downtime_ms` is still the default, it is the default.
    pub fn calibration(&self) -> Calibration {
        let d = Calibration::default();
        let f =
            |p: &str, prior: f64| fit(self.samples.get(p).map(Vec::as_slice).unwrap_or(&[]), prior);
        let scan = f("scan", d.scan_bytes_per_s);
        let dump = f("dump", d.dump_bytes_per_s);
        let hash = f("hash", d.hash_bytes_per_s);
        let assemble = f("assemble", d.assemble_bytes_per_s);
        let restore = f("restore", d.restore_bytes_per_s);
        let have = |p: &str| self.samples.get(p).is_some_and(|v| !v.is_empty());
        let in_freeze = ["dump", "hash", "assemble", "restore"];
        let learned_freeze = in_freeze.iter().all(|p| have(p));
        let other = median(&self.other_downtime_ms).unwrap_or(0.0);
        let fixed_downtime = if learned_freeze {
            dump.fixed_ms + hash.fixed_ms + assemble.fixed_ms + restore.fixed_ms + other
        } else {
            d.fixed_downtime_ms
        };
        let at = |f: Fit, bytes: f64| f.fixed_ms + bytes / f.bytes_per_s * 1000.0;
        let beyond: Vec<f64> = self
            .address_downtime
            .iter()
            .map(|s| s.ms - at(dump, s.bytes) - at(restore, s.bytes))
            .collect();
        let address_fixed = match median(&beyond) {
            Some(b) if learned_freeze => (b - other).max(0.0),
            _ => d.address_fixed_downtime_ms,
        };
        Calibration {
            scan_bytes_per_s: scan.bytes_per_s,
            dump_bytes_per_s: dump.bytes_per_s,
            hash_bytes_per_s: hash.bytes_per_s,
            assemble_bytes_per_s: assemble.bytes_per_s,
            restore_bytes_per_s: restore.bytes_per_s,
            fixed_downtime_ms: fixed_downtime,
            fixed_total_ms: median(&self.other_total_ms).unwrap_or(d.fixed_total_ms),
            address_fixed_downtime_ms: address_fixed,
            ..d
        }
    }

    /// Learns from a completed migration; `link_bytes_per_s` is the rate
    /// the link was measured at (to separate sending from computing). When
    /// the address moved ([`moved_address`]), its dump and restore do not
    /// feed the throughput fits (their fixed parts carry the address's
    /// cost) and an eager one's freeze becomes an `address_downtime` sample
    /// instead of an `other_downtime_ms` one.
    pub fn learn(&mut self, r: &MigrationResult, link_bytes_per_s: f64) {
        if r.status != "ok" {
            return;
        }
        let Some(last) = r.round_details.iter().find(|x| x.final_round) else {
            return;
        };
        let m = (last.pages_present * mose_wire::BLOCK_SIZE as u64) as f64;
        let link = if link_bytes_per_s > 0.0 {
            link_bytes_per_s
        } else {
            f64::INFINITY
        };
        let phase = |name: &str| r.phases.iter().find(|p| p.name == name);
        let moved = moved_address(r);
        let mut explained = 0.0;
        if let Some(p) = phase("freeze+dump") {
            if !moved {
                self.add("dump", m, p.duration_ms);
            }
            explained += p.duration_ms;
        }
        // a lazy restore moves most memory after the freeze: its transfer,
        // assembly and restore say nothing about an eager one's
        let lazy = matches!(r.technique.as_str(), "postcopy" | "hybrid");
        if lazy {
            self.learn_rounds(r, link);
            self.migrations += 1;
            return;
        }
        // the transfer and the assembly: the same with or without an address
        let mut carried_ms = 0.0;
        if let Some(p) = phase("transfer") {
            let wire = p.bytes.unwrap_or(last.bytes) as f64 / link * 1000.0;
            self.add("hash", m, (p.duration_ms - wire).max(1.0));
            explained += p.duration_ms;
            carried_ms += p.duration_ms;
        }
        if let Some(p) = phase("dest: assemble image") {
            self.add("assemble", m, p.duration_ms);
            explained += p.duration_ms;
            carried_ms += p.duration_ms;
        }
        let restore = phase("dest: CRIU restore");
        if let Some(p) = restore {
            if !moved {
                self.add("restore", m, p.duration_ms);
            }
            explained += p.duration_ms;
        }
        if moved {
            // the dump's and the restore's fits are subtracted at
            // calibration: both must be in this downtime
            let ms = (r.downtime_ms - carried_ms).max(0.0);
            if phase("freeze+dump").is_some() && restore.is_some() && ms.is_finite() {
                push(&mut self.address_downtime, Sample { bytes: m, ms });
            }
        } else if explained > 0.0 {
            push(
                &mut self.other_downtime_ms,
                (r.downtime_ms - explained).max(0.0),
            );
        }
        let live = self.learn_rounds(r, link);
        push(
            &mut self.other_total_ms,
            (r.total_ms - r.downtime_ms - live).max(0.0),
        );
        self.migrations += 1;
    }

    /// Learns the live scan rate from pre-copy rounds; returns their length.
    fn learn_rounds(&mut self, r: &MigrationResult, link: f64) -> f64 {
        let mut live = 0.0;
        for round in r.round_details.iter().filter(|x| !x.final_round) {
            live += round.duration_ms;
            let wire = round.bytes as f64 / link * 1000.0;
            // a scan-bound round says how fast memory is read and hashed live
            if round.round > 1 && wire < 0.3 * round.duration_ms {
                let scanned = (round.pages_present * mose_wire::BLOCK_SIZE as u64) as f64;
                self.add("scan", scanned, round.duration_ms - wire);
            }
        }
        live
    }
}

/// The learned calibration of this node, persisted in its state directory.
pub struct Store {
    path: PathBuf,
    pub learned: Learned,
}

impl Store {
    /// Loads `<state>/calibration.json`; a missing or unreadable file starts
    /// afresh (with a warning for the unreadable one).
    pub fn open(state_dir: &std::path::Path) -> Self {
        let path = state_dir.join("calibration.json");
        let learned = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                warn!(path = %path.display(), error = %e, "ignoring an unreadable calibration");
                Learned::default()
            }),
            Err(_) => Learned::default(),
        };
        Self { path, learned }
    }

    pub fn save(&self) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.learned)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("replacing {}", self.path.display()))
    }

    /// Start-up calibration of what this node can measure on its own, done
    /// once (only when nothing was learned for those phases yet): hashing
    /// and tmpfs writes of `mib` MiB, and a live scan of that much memory.
    pub fn calibrate_startup(&mut self, tmpfs: &std::path::Path, mib: usize) -> Result<()> {
        let have = |p: &str| self.learned.samples.get(p).is_some_and(|v| !v.is_empty());
        let (has_hash, has_assemble, has_scan) = (have("hash"), have("assemble"), have("scan"));
        if has_hash && has_assemble && has_scan {
            return Ok(());
        }
        // two sizes, so the fit separates fixed costs from throughput
        for bytes in [(mib / 4).max(1) << 20, mib << 20] {
            let mut data = vec![0u8; bytes];
            for (i, c) in data.chunks_mut(8).enumerate() {
                let x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
            }
            let t = std::time::Instant::now();
            let hashes = mose_wire::blocks::hash_blocks(&data);
            let hash_ms = t.elapsed().as_secs_f64() * 1000.0;
            std::hint::black_box(&hashes);
            let file = tmpfs.join(".mose-calibration");
            let t = std::time::Instant::now();
            std::fs::write(&file, &data).with_context(|| format!("writing {}", file.display()))?;
            let write_ms = t.elapsed().as_secs_f64() * 1000.0;
            let _ = std::fs::remove_file(&file);
            // a live scan of this process reads the same buffer through /proc
            let t = std::time::Instant::now();
            let mut known = std::collections::HashSet::new();
            let stats =
                mose_migrate::memory::scan(&[std::process::id()], &mut known, None, |_| Ok(()))?;
            let scan_ms = t.elapsed().as_secs_f64() * 1000.0;
            let scanned = (stats.pages_present * mose_wire::BLOCK_SIZE as u64) as f64;
            drop(data);
            let b = bytes as f64;
            if !has_hash {
                self.learned.add("hash", b, hash_ms);
            }
            if !has_assemble {
                self.learned.add("assemble", b, write_ms);
            }
            if !has_scan {
                self.learned.add("scan", scanned, scan_ms);
            }
        }
        Ok(())
    }
}

/// The hidden `mose-plugin` mode that CRIU calibration dumps and restores:
/// holds `mib` MiB of incompressible memory in its own session, says so by
/// creating `ready`, and sleeps until killed.
pub fn calibration_target(mib: usize, ready: &std::path::Path) -> ! {
    // a session of its own: CRIU dumps it without --shell-job
    let _ = nix::unistd::setsid();
    let mut data = vec![0u8; mib << 20];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for c in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    std::hint::black_box(&data);
    let _ = std::fs::write(ready, b"ready");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
        std::hint::black_box(&data);
    }
}

/// Times a real CRIU dump and restore of a process holding `mib` MiB (this
/// very binary in [`calibration_target`] mode), in `dir` (tmpfs). Returns
/// (dumped bytes, dump ms, restore ms).
fn criu_round(exe: &std::path::Path, dir: &std::path::Path, mib: usize) -> Result<(f64, f64, f64)> {
    let _ = std::fs::remove_dir_all(dir);
    let images = dir.join("images");
    std::fs::create_dir_all(&images)?;
    let mut child = start_calibration_target(exe, mib, &dir.join("ready"))?;
    let pid = child.id();
    let img = images.display().to_string();
    let dumped = run_criu(
        dir,
        &[
            "dump",
            "-t",
            &pid.to_string(),
            "-D",
            &img,
            "-o",
            "../dump.log",
        ],
        "dump",
    );
    // the dump ends the process: reap it
    let _ = child.kill();
    let _ = child.wait();
    let dump_ms = dumped?;
    let pages: f64 = std::fs::read_dir(&images)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len() as f64)
        .sum();
    let pidfile = dir.join("restored.pid");
    let restore_ms = run_criu(
        dir,
        &[
            "restore",
            "-D",
            &img,
            "-o",
            "../restore.log",
            "--restore-detached",
            "--pidfile",
            &pidfile.display().to_string(),
        ],
        "restore",
    );
    kill_restored(&pidfile);
    let restore_ms = restore_ms?;
    let _ = std::fs::remove_dir_all(dir);
    Ok((pages, dump_ms, restore_ms))
}

/// Starts this binary as a calibration target holding `mib` MiB and waits
/// (up to 30 s) until it says it is ready by creating `ready`.
fn start_calibration_target(
    exe: &std::path::Path,
    mib: usize,
    ready: &std::path::Path,
) -> Result<std::process::Child> {
    use std::process::{Command, Stdio};
    let mut child = Command::new(exe)
        .arg("--calibration-target")
        .arg(mib.to_string())
        .arg(ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ready.exists() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("the calibration target did not get ready");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(child)
}

/// Runs `criu <args>` (its log in `dir`); returns how long it took, in ms.
fn run_criu(dir: &std::path::Path, args: &[&str], what: &str) -> Result<f64> {
    use std::process::{Command, Stdio};
    let t = std::time::Instant::now();
    let o = Command::new("criu")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running criu {what} (is CRIU installed?)"))?;
    if !o.status.success() {
        anyhow::bail!(
            "criu {what} failed ({}); see {}",
            o.status,
            dir.join(format!("{what}.log")).display()
        );
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// Kills the process CRIU restored (its pid in `pidfile`), if any.
fn kill_restored(pidfile: &std::path::Path) {
    if let Some(p) = std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::SIGKILL);
    }
}

impl Store {
    /// Start-up calibration of CRIU dump and restore on this node, done once
    /// (only when nothing was learned for them yet): a process holding 16
    /// and then 64 MiB is dumped and restored for real.
    pub fn calibrate_criu(&mut self, exe: &std::path::Path, tmpfs: &std::path::Path) -> Result<()> {
        let have = |p: &str| self.learned.samples.get(p).is_some_and(|v| !v.is_empty());
        if have("dump") && have("restore") {
            return Ok(());
        }
        let dir = tmpfs.join(".mose-criu-calibration");
        let mut got = Vec::new();
        for mib in [16, 64] {
            got.push(criu_round(exe, &dir, mib)?);
        }
        for (bytes, dump_ms, restore_ms) in got {
            self.learned.add("dump", bytes, dump_ms);
            self.learned.add("restore", bytes, restore_ms);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(mib: f64, ms: f64) -> Sample {
        Sample {
            bytes: mib * 1048576.0,
            ms,
        }
    }

    #[test]
    fn affine_fit_recovers_fixed_cost_and_throughput() {
        // 200 ms + 1 GiB/s
        let gib = 1073741824.0;
        let v: Vec<Sample> = [64.0, 128.0, 512.0]
            .iter()
            .map(|m| s(*m, 200.0 + m * 1048576.0 / gib * 1000.0))
            .collect();
        let f = fit(&v, 5e8);
        assert!((f.fixed_ms - 200.0).abs() < 1.0, "{f:?}");
        assert!((f.bytes_per_s / gib - 1.0).abs() < 0.01, "{f:?}");
    }

    #[test]
    fn one_size_keeps_a_throughput_that_explains_it() {
        let f = fit(&[s(64.0, 100.0)], 1e9);
        let predicted = f.fixed_ms + 64.0 * 1048576.0 / f.bytes_per_s * 1000.0;
        assert!((predicted - 100.0).abs() < 1.0, "{f:?}");
        assert!(f.fixed_ms >= 0.0 && f.bytes_per_s > 0.0);
    }

    #[test]
    fn nonsense_falls_back_to_the_prior() {
        // bigger took less time: noise, not physics
        let f = fit(&[s(64.0, 500.0), s(512.0, 100.0)], 1e9);
        assert_eq!(f.bytes_per_s, 1e9);
        assert!(f.fixed_ms >= 0.0);
        let f = fit(&[], 1e9);
        assert_eq!(
            f,
            Fit {
                fixed_ms: 0.0,
                bytes_per_s: 1e9
            }
        );
        let f = fit(&[s(f64::NAN, 1.0), s(1.0, -4.0)], 7e8);
        assert_eq!(f.bytes_per_s, 7e8);
    }

    #[test]
    fn learning_from_a_migration_moves_the_calibration() {
        let r: MigrationResult = serde_json::from_value(serde_json::json!({
            "status": "ok", "migration": "m", "container": "c", "destination": "d",
            "technique": "precopy", "rounds": 2, "downtime_ms": 900.0, "total_ms": 2500.0,
            "bytes_sent": 70000000u64,
            "round_details": [
                {"round": 1, "final_round": false, "pages_present": 16384, "new_blocks": 16000, "bytes": 67000000u64, "duration_ms": 600.0, "freeze_ms": 0.0},
                {"round": 2, "final_round": false, "pages_present": 16384, "new_blocks": 3, "bytes": 12000u64, "duration_ms": 60.0, "freeze_ms": 0.0},
                {"round": 3, "final_round": true, "pages_present": 16384, "new_blocks": 18, "bytes": 360000u64, "duration_ms": 30.0, "freeze_ms": 30.0}
            ],
            "phases": [
                {"name": "freeze+dump", "start_ms": 700.0, "duration_ms": 300.0},
                {"name": "transfer", "start_ms": 1000.0, "duration_ms": 30.0, "bytes": 360000u64},
                {"name": "dest: assemble image", "start_ms": 1030.0, "duration_ms": 100.0},
                {"name": "dest: CRIU restore", "start_ms": 1150.0, "duration_ms": 400.0}
            ]
        }))
        .unwrap();
        let mut l = Learned::default();
        l.learn(&r, 125e6);
        assert_eq!(l.migrations, 1);
        for p in ["dump", "hash", "assemble", "restore", "scan"] {
            assert_eq!(l.samples[p].len(), 1, "{p}");
        }
        let c = l.calibration();
        let m = 16384.0 * 4096.0;
        // one sample per phase: the calibration reproduces it
        let dump_ms = m / c.dump_bytes_per_s * 1000.0;
        assert!(dump_ms <= 300.0 + 1e-6);
        assert!(c.fixed_downtime_ms >= 0.0 && c.fixed_downtime_ms < 900.0);
        // a failed migration teaches nothing
        let mut failed = r.clone();
        failed.status = "rolled-back".into();
        l.learn(&failed, 125e6);
        assert_eq!(l.migrations, 1);
    }

    const LINK: f64 = 125e6;
    const MIB: f64 = 1048576.0;

    /// An ok eager migration of `mib` MiB whose phases follow this node:
    /// dump 50 ms + 1 GB/s, hashing 10 ms + 4 GB/s, assembly 5 ms + 2 GB/s,
    /// restore 80 ms + 700 MB/s, 20 ms unexplained. With `address` (the
    /// service address moving, `connections` as the result says) the dump
    /// takes 60 ms more, the restore 70 ms more and the rest 40 ms more.
    fn eager(
        technique: &str,
        mib: f64,
        address: Option<&str>,
        connections: &str,
    ) -> MigrationResult {
        let m = mib * MIB;
        let extra = |x: f64| {
            if address.is_some() || connections == "kept" {
                x
            } else {
                0.0
            }
        };
        let delta = 100_000u64;
        let dump = 50.0 + m / 1e9 * 1e3 + extra(60.0);
        let transfer = 10.0 + m / 4e9 * 1e3 + delta as f64 / LINK * 1e3;
        let assemble = 5.0 + m / 2e9 * 1e3;
        let restore = 80.0 + m / 7e8 * 1e3 + extra(70.0);
        let downtime = dump + transfer + assemble + restore + 20.0 + extra(40.0);
        let mut v = serde_json::json!({
            "status": "ok", "migration": "m", "container": "c", "destination": "d",
            "technique": technique, "rounds": 0, "downtime_ms": downtime,
            "total_ms": downtime + 300.0, "bytes_sent": m as u64,
            "round_details": [
                {"round": 1, "final_round": true, "pages_present": (m / 4096.0) as u64,
                 "new_blocks": 24, "bytes": delta, "duration_ms": transfer, "freeze_ms": transfer}
            ],
            "phases": [
                {"name": "freeze+dump", "start_ms": 0.0, "duration_ms": dump},
                {"name": "transfer", "start_ms": dump, "duration_ms": transfer, "bytes": delta},
                {"name": "dest: assemble image", "start_ms": 0.0, "duration_ms": assemble},
                {"name": "dest: CRIU restore", "start_ms": 0.0, "duration_ms": restore}
            ],
            "connections": connections
        });
        if let Some(a) = address {
            v["address"] = a.into();
        }
        serde_json::from_value(v).unwrap()
    }

    fn still(mib: f64) -> MigrationResult {
        eager("cold", mib, None, "closed")
    }

    fn service(mib: f64) -> MigrationResult {
        eager("precopy", mib, Some("10.89.0.61/24 on network svc"), "kept")
    }

    #[test]
    fn a_moving_address_is_told_from_the_result() {
        assert!(!moved_address(&still(4.0)));
        assert!(moved_address(&service(4.0)));
        // --close-connections: the address moved all the same
        assert!(moved_address(&eager(
            "cold",
            4.0,
            Some("10.89.0.7/24 on network svc"),
            "closed"
        )));
        // a pod's container: no service address, its pod IP moved
        assert!(moved_address(&eager("cold", 4.0, None, "kept")));
        // a result from before `connections` existed
        let mut old = still(4.0);
        old.connections = String::new();
        assert!(!moved_address(&old));
    }

    #[test]
    fn the_address_cost_is_learned_apart_from_mixed_migrations() {
        let mut alone = Learned::default();
        let mut mixed = Learned::default();
        for mib in [64.0, 256.0, 64.0, 256.0] {
            alone.learn(&still(mib), LINK);
            mixed.learn(&still(mib), LINK);
        }
        // more migrations with an address than without: the old median
        // would have been theirs
        for mib in [4.0, 64.0, 4.0, 64.0, 128.0] {
            mixed.learn(&service(mib), LINK);
        }
        assert_eq!(mixed.migrations, 9);
        assert_eq!(mixed.address_downtime.len(), 5);
        assert_eq!(mixed.other_downtime_ms, alone.other_downtime_ms);
        let (a, c) = (alone.calibration(), mixed.calibration());
        // containers whose address stays put are predicted as before ...
        let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(1.0);
        for (name, x, y) in [
            ("dump", a.dump_bytes_per_s, c.dump_bytes_per_s),
            ("hash", a.hash_bytes_per_s, c.hash_bytes_per_s),
            ("assemble", a.assemble_bytes_per_s, c.assemble_bytes_per_s),
            ("restore", a.restore_bytes_per_s, c.restore_bytes_per_s),
            ("fixed_downtime", a.fixed_downtime_ms, c.fixed_downtime_ms),
            ("fixed_total", a.fixed_total_ms, c.fixed_total_ms),
        ] {
            assert!(close(x, y), "{name}: {a:?} {c:?}");
        }
        assert!((c.dump_bytes_per_s / 1e9 - 1.0).abs() < 1e-6, "{c:?}");
        assert!((c.restore_bytes_per_s / 7e8 - 1.0).abs() < 1e-6, "{c:?}");
        // 50 + 10 + 5 + 80 ms of fixed phases and 20 ms unexplained
        assert!((c.fixed_downtime_ms - 165.0).abs() < 1e-6, "{c:?}");
        // ... and the address costs its dump's, its restore's and its own
        // extra fixed time (60 + 70 + 40 ms), not only the unexplained 40
        assert!((c.address_fixed_downtime_ms - 170.0).abs() < 1e-6, "{c:?}");
        // no migration with an address yet: the prior
        assert_eq!(
            a.address_fixed_downtime_ms,
            Calibration::default().address_fixed_downtime_ms
        );
    }

    #[test]
    fn the_model_then_predicts_a_moving_address_as_measured() {
        let mut l = Learned::default();
        for mib in [64.0, 256.0] {
            l.learn(&still(mib), LINK);
        }
        for mib in [4.0, 64.0] {
            l.learn(&service(mib), LINK);
        }
        let c = l.calibration();
        let r = service(16.0);
        let m = mose_policy::Measurements {
            memory_bytes: 16 * 1048576,
            dirty_bytes_per_s: 0.0,
            working_set_bytes: None,
            link_bytes_per_s: LINK,
            moves_address: true,
        };
        // an idle container's pre-copy: the freeze sends nothing
        let plan = mose_policy::PlanParams {
            technique: mose_policy::Technique::Precopy,
            max_rounds: 1,
            bandwidth_cap_bps: None,
            compression: false,
            stop_below_downtime_ms: None,
        };
        let p = mose_policy::predict(&m, &c, &plan).unwrap();
        // as measured, but for the wire time of the measured final delta
        let wire = 100_000.0 / LINK * 1e3;
        assert!(
            (p.downtime_ms - (r.downtime_ms - wire)).abs() < 1e-6,
            "{p:?} vs {}",
            r.downtime_ms
        );
        let still = mose_policy::Measurements {
            moves_address: false,
            ..m
        };
        let q = mose_policy::predict(&still, &c, &plan).unwrap();
        assert!((p.downtime_ms - q.downtime_ms - 170.0).abs() < 1e-6);
    }

    #[test]
    fn the_prior_stands_until_the_freeze_is_learned() {
        // only migrations with an address, nothing learned of a freeze
        // without one: the fixed costs cannot be told apart
        let mut l = Learned::default();
        l.learn(&service(64.0), LINK);
        assert!(!l.samples.contains_key("dump") && !l.samples.contains_key("restore"));
        let c = l.calibration();
        let d = Calibration::default();
        assert_eq!(c.fixed_downtime_ms, d.fixed_downtime_ms);
        assert_eq!(c.address_fixed_downtime_ms, d.address_fixed_downtime_ms);
        // a lazy migration with an address teaches its dump nothing either
        let mut lazy = service(64.0);
        lazy.technique = "postcopy".into();
        let mut l = Learned::default();
        l.learn(&lazy, LINK);
        assert_eq!(l.migrations, 1);
        assert!(!l.samples.contains_key("dump"));
        assert!(l.address_downtime.is_empty());
        // an address faster than the rest of the freeze is free, not negative
        let mut l = Learned::default();
        for mib in [64.0, 256.0] {
            l.learn(&still(mib), LINK);
        }
        let mut quick = eager("cold", 64.0, None, "closed");
        quick.address = Some("10.89.0.7/24 on network svc".into());
        quick.downtime_ms -= 30.0;
        l.learn(&quick, LINK);
        assert_eq!(l.calibration().address_fixed_downtime_ms, 0.0);
    }

    #[test]
    fn a_calibration_persisted_before_the_address_cost_still_loads() {
        let old = r#"{"samples":{"dump":[{"bytes":16777216.0,"ms":80.0},{"bytes":67108864.0,"ms":140.0}]},
            "other_downtime_ms":[20.0],"other_total_ms":[300.0],"migrations":3}"#;
        let dir = std::env::temp_dir().join(format!("mose-calibration-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("calibration.json"), old).unwrap();
        let store = Store::open(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(store.learned.migrations, 3, "the old file was read");
        assert!(store.learned.address_downtime.is_empty());
        assert_eq!(
            store.learned.calibration().address_fixed_downtime_ms,
            Calibration::default().address_fixed_downtime_ms
        );
        // and what is written now reads back
        let mut l = store.learned.clone();
        l.learn(&service(4.0), LINK);
        let back: Learned = serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
        assert_eq!(back.address_downtime, l.address_downtime);
    }
}
