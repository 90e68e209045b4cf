//! The workload images run under a real (private) containerd with the
//! runtime under test (`MOSE_TEST_RUNTIME`, default `io.containerd.mose.v2`):
//! the state service answers the probe at ≥ 200 requests/s with increasing
//! seq and verifies its memory, and redis answers RESP commands.
//!
//! Run as root: `cargo build -p mose-shim && cargo test -p mose-workloads`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mose_tests::containerd::TestContainerd;
use mose_tests::ctr::{Ctr, Output};
use mose_workloads::image::ctr_import;
use mose_workloads::images::{
    redis_archive, state_service_archive, REDIS_REF, STATE_SERVICE_PATH, STATE_SERVICE_REF,
};
use mose_workloads::probe::{self, Probe};

/// Bound for a container to start answering.
const READY: Duration = Duration::from_secs(30);

/// The state-service binary cargo built for this test run.
const STATE_SERVICE_BIN: &str = env!("CARGO_BIN_EXE_mose-state-service");

fn archive_dir() -> PathBuf {
    mose_workloads::images::cache_dir()
}

/// A free TCP port on the host (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Kills and deletes the container when the test ends, however it ends.
struct Running {
    ctr: Ctr,
    id: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.ctr.force_remove(&self.id);
    }
}

/// Starts containerd, imports `archive`, runs `image` detached in the host
/// network namespace with `args` as the process args.
fn run_container(
    cd: &TestContainerd,
    ns: &str,
    archive: &Path,
    image: &str,
    id: &str,
    args: &[&str],
) -> Running {
    if !mose_tests::runtime_is_runc() && cd.shim_dir().is_none() {
        panic!(
            "runtime {} needs {} (build it: cargo build -p mose-shim), \
             or set MOSE_TEST_RUNTIME=io.containerd.runc.v2",
            mose_tests::runtime(),
            mose_tests::containerd::SHIM_BINARY
        );
    }
    ctr_import(&cd.socket(), ns, archive).expect("import image");
    let ctr = cd.ctr(ns);
    let mut a: Vec<String> = [
        "run",
        "-d",
        "--null-io",
        "--net-host",
        "--runtime",
        &mose_tests::runtime(),
        image,
        id,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(args.iter().map(|s| s.to_string()));
    ctr.run(a).and_then(Output::check).expect("ctr run -d");
    Running {
        ctr,
        id: id.to_string(),
    }
}

/// Polls `f` until it succeeds or [`READY`] passes.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> anyhow::Result<T>) -> T {
    let deadline = Instant::now() + READY;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("{what}: not ready in {READY:?}: {e:#}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn state_service_answers_probe_and_verifies() {
    let archive =
        state_service_archive(Some(Path::new(STATE_SERVICE_BIN)), &archive_dir()).expect("archive");
    let cd = TestContainerd::start().expect("containerd");
    let ns = mose_tests::unique_id("wl-state");
    let port = free_port();
    let port_s = port.to_string();
    let id = "state";
    let _c = run_container(
        &cd,
        &ns,
        &archive,
        STATE_SERVICE_REF,
        id,
        &[
            STATE_SERVICE_PATH,
            "--state-mib",
            "64",
            "--dirty-mib-per-s",
            "8",
            "--port",
            &port_s,
            "--seed",
            "11",
        ],
    );
    let addr = format!("127.0.0.1:{port}");
    let first = wait_for("state service", || probe::ping(&addr));
    assert_eq!(first.seq, 1, "fresh service starts its seq at 1");

    let h = Probe::start(vec![addr.clone()], 200.0).expect("probe");
    std::thread::sleep(Duration::from_secs(3));
    let r = h.stop();
    eprintln!("{}", r.summary());
    assert!(r.answer_rate >= 190.0, "≥ 200 answers/s: {}", r.summary());
    assert!(r.seq_ok, "seq strictly increasing: {}", r.summary());
    assert!(r.first_seq > Some(first.seq), "{}", r.summary());
    assert_eq!(r.errors, 0, "{}", r.summary());
    // No real interruption (a loaded 2-core machine may delay a few ticks).
    assert!(r.downtime_ms < 250.0, "gaps: {:?}", r.gaps);

    let v = probe::verify(&addr).expect("verify");
    assert!(v.is_ok(), "VERIFY: {v:?}");
    let stats = probe::stats(&addr).expect("stats");
    assert_eq!(stats["pages"], 64 * 256);
    assert!(
        stats["writes"].as_u64().unwrap_or(0) > 0,
        "dirtying: {stats}"
    );

    let marker = cd.bundle(&ns, id).join("rootfs/data/started");
    let m = std::fs::read_to_string(&marker).expect("marker /data/started");
    assert!(m.contains("state_mib=64"), "{m}");

    // As PID 1 it must still stop on a plain SIGTERM (`ctr tasks kill`).
    let ctr = cd.ctr(&ns);
    ctr.ok(["tasks", "kill", id]).expect("ctr tasks kill");
    mose_tests::poll_until("task stopped by SIGTERM", Duration::from_secs(10), || {
        matches!(ctr.task_status(id), Ok(Some(s)) if s == "STOPPED").then_some(())
    })
    .expect("SIGTERM stops the state service");
}

/// Sends one RESP command and reads one reply line (simple replies and
/// short bulk strings are all these tests need).
fn resp(r: &mut BufReader<TcpStream>, args: &[&str]) -> anyhow::Result<String> {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    r.get_mut().write_all(req.as_bytes())?;
    let mut line = String::new();
    r.read_line(&mut line)?;
    if let Some(n) = line
        .strip_prefix('$')
        .and_then(|n| n.trim().parse::<usize>().ok())
    {
        let mut body = vec![0u8; n + 2];
        r.read_exact(&mut body)?;
        return Ok(String::from_utf8_lossy(&body[..n]).into_owned());
    }
    Ok(line.trim_end().to_string())
}

#[test]
fn redis_answers_resp() {
    let archive = redis_archive(&archive_dir()).expect("redis archive");
    let cd = TestContainerd::start().expect("containerd");
    let ns = mose_tests::unique_id("wl-redis");
    let port = free_port();
    let port_s = port.to_string();
    let _c = run_container(
        &cd,
        &ns,
        &archive,
        REDIS_REF,
        "redis",
        &[
            "/usr/bin/redis-server",
            "/etc/redis/redis.conf",
            "--port",
            &port_s,
        ],
    );
    let stream = wait_for("redis", || {
        let s = TcpStream::connect_timeout(
            &format!("127.0.0.1:{port}").parse()?,
            Duration::from_millis(200),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut r = BufReader::new(s);
        let pong = resp(&mut r, &["PING"])?;
        anyhow::ensure!(pong == "+PONG", "got {pong:?}");
        Ok(r)
    });
    let mut r = stream;
    let mut cmd = |args: &[&str]| resp(&mut r, args).expect("redis reply");
    assert_eq!(cmd(&["SET", "k", "v-mose"]), "+OK");
    assert_eq!(cmd(&["GET", "k"]), "v-mose");
    assert_eq!(cmd(&["DBSIZE"]), ":1");
}

#[test]
fn mose_images_cli_builds_and_imports_both_images() {
    let cd = TestContainerd::start().expect("containerd");
    let ns = mose_tests::unique_id("wl-images");
    let out = std::env::temp_dir().join(format!("mose-images-{}", std::process::id()));
    let cli = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mose-images"));
        cmd.args(args)
            .args(["--state-service-bin", STATE_SERVICE_BIN]);
        mose_tests::ctr::run_command(cmd, None, Duration::from_secs(120))
            .and_then(Output::check)
            .expect("mose-images")
    };
    let o = cli(&["build", "--out", &out.display().to_string()]);
    assert!(
        o.stdout.contains(STATE_SERVICE_REF) && o.stdout.contains(REDIS_REF),
        "{o:?}"
    );
    assert!(out.join("state-service.tar").is_file() && out.join("redis.tar").is_file());
    let _ = std::fs::remove_dir_all(&out);
    let sock = cd.socket().display().to_string();
    cli(&["import", "--address", &sock, "--namespace", &ns]);
    let images = cd
        .ctr(&ns)
        .ok(["images", "ls", "-q"])
        .expect("ctr images ls");
    for r in [STATE_SERVICE_REF, REDIS_REF] {
        assert!(images.lines().any(|l| l.trim() == r), "{r} in {images}");
    }
}
