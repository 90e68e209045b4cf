//! The shim binary's protocol with containerd beyond the Task API: `-info`
//! (runtime features, asked by containerd 2.x), the bootstrap answer of
//! `start` (task API v3 for containerd 2.x, a bare address for 1.x) and
//! exit on SIGTERM. Runs under whichever containerd the harness starts
//! (`MOSE_TEST_CONTAINERD`); checks that only apply to one daemon version
//! say so when they are skipped.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{env, WAIT};
use containerd_shim_protos::{
    protobuf::{well_known_types::any::Any, Message},
    shim::oci::Options as RuncOptions,
    types::introspection::RuntimeInfo,
};
use mose_tests::cleanup::{process_alive, processes_mentioning};
use mose_tests::containerd::{containerd_is_2x, containerd_version, SHIM_BINARY};
use mose_tests::ctr::Output;

const MOSE: &str = "io.containerd.mose.v2";
const FEATURES_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

fn shim_path() -> PathBuf {
    mose_tests::containerd::shim_dir()
        .expect("containerd-shim-mose-v2 built (cargo build -p mose-shim)")
        .join(SHIM_BINARY)
}

fn skip_unless_mose(test: &str) -> bool {
    if mose_tests::runtime_is_runc() {
        let why = format!("tests the MOSE shim binary, not {}", mose_tests::runtime());
        mose_tests::skip_note(test, &why);
        return true;
    }
    false
}

/// `containerd-shim-mose-v2 -info` with `stdin` (as containerd 2.x runs
/// it), its answer decoded.
fn info(stdin: &[u8]) -> RuntimeInfo {
    let mut child = Command::new(shim_path())
        .arg("-info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the shim binary");
    {
        use std::io::Write;
        let mut w = child.stdin.take().unwrap();
        w.write_all(stdin).unwrap();
    }
    let mut bytes = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    let st = mose_tests::ctr::wait_timeout(&mut child, WAIT)
        .unwrap()
        .expect("-info finishes");
    assert!(st.success(), "shim -info failed: {st:?}: {err}");
    RuntimeInfo::parse_from_bytes(&bytes).expect("stdout is a containerd.types.RuntimeInfo")
}

fn runc_options(binary: &str) -> Vec<u8> {
    let o = RuncOptions {
        binary_name: binary.into(),
        ..Default::default()
    };
    Any {
        type_url: "containerd.runc.v1.Options".into(),
        value: o.write_to_bytes().unwrap(),
        ..Default::default()
    }
    .write_to_bytes()
    .unwrap()
}

#[test]
fn info_names_the_runtime_and_carries_runc_features() {
    if skip_unless_mose("info_names_the_runtime_and_carries_runc_features") {
        return;
    }
    for stdin in [Vec::new(), runc_options("runc")] {
        let i = info(&stdin);
        assert_eq!(i.name, MOSE);
        assert!(!i.version.version.is_empty(), "{i:?}");
        assert_eq!(
            i.options.is_some(),
            !stdin.is_empty(),
            "options echoed as received"
        );
        assert_eq!(i.features.type_url, FEATURES_TYPE, "{i:?}");
        let f: serde_json::Value = serde_json::from_slice(&i.features.value).unwrap();
        assert!(f["ociVersionMin"].is_string(), "{f}");
        assert!(
            f["hooks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h == "prestart"),
            "{f}"
        );
        assert!(
            f["annotations"]["org.opencontainers.runc.version"].is_string(),
            "runc's own features: {f}"
        );
    }
    // an OCI runtime without `features` (crun 1.8): an answer all the same
    if Command::new("crun").arg("--version").output().is_ok() {
        let i = info(&runc_options("crun"));
        assert_eq!(i.name, MOSE);
        if i.features.is_none() {
            let why = i
                .annotations
                .get("mose.shim/features-unavailable")
                .expect("reason for missing features");
            assert!(why.contains("features"), "{why}");
        }
    }
}

#[test]
fn ctr_inspect_runtime_reports_mose_under_containerd_2() {
    if skip_unless_mose("ctr_inspect_runtime_reports_mose_under_containerd_2") {
        return;
    }
    if !containerd_is_2x() {
        mose_tests::skip_note(
            "ctr_inspect_runtime_reports_mose_under_containerd_2",
            &format!(
                "containerd {:?} has no runtime introspection (`ctr plugins \
                 inspect-runtime` and `-info` are 2.x)",
                containerd_version()
            ),
        );
        return;
    }
    let e = env("info");
    let out = e
        .ctr
        .run(["plugins", "inspect-runtime", "--runtime", MOSE])
        .unwrap();
    assert!(out.success(), "{out:?}\n{}", e.cd.log_tail(20));
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v["Name"], MOSE, "{v}");
    assert!(v["Features"]["ociVersionMin"].is_string(), "{v}");
}

/// Lines of containerd's log mentioning `needle`.
fn log_lines(e: &common::Env, needle: &str) -> Vec<String> {
    std::fs::read_to_string(e.cd.log_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

#[test]
fn task_create_uses_the_announced_task_api() {
    if skip_unless_mose("task_create_uses_the_announced_task_api") {
        return;
    }
    let e = env("boot");
    let o = e.run("boot0", &["--rm"], &["sh", "-c", "echo hello"]);
    assert_eq!((o.code, o.stdout.trim()), (Some(0), "hello"), "{o:?}");
    let id = "boot1";
    e.run_detached(id, &[], &["sleep", "1000"]);
    let bundle = e.cd.bundle(&e.ns, id);
    // the address file stays a bare address, whatever was announced
    let address = std::fs::read_to_string(bundle.join("address")).unwrap();
    assert!(address.starts_with("unix://"), "{address:?}");
    let errors: Vec<String> = log_lines(&e, "level=error")
        .into_iter()
        .filter(|l| l.contains("-info") || l.contains("runtime info"))
        .collect();
    assert!(
        errors.is_empty(),
        "-info errors in containerd's log:\n{errors:#?}"
    );
    if containerd_is_2x() {
        // core/runtime/v2 makeConnection: "connecting to shim <id>" address=… protocol=ttrpc version=3
        let conn = log_lines(&e, &format!("connecting to shim {id}"));
        assert!(
            !conn.is_empty(),
            "no connection line:\n{}",
            e.cd.log_tail(40)
        );
        assert!(
            conn.iter()
                .all(|l| l.contains("version=3") && l.contains("protocol=ttrpc")),
            "task API v3 expected: {conn:#?}"
        );
        // what containerd 2.x keeps to reconnect after a restart
        let boot: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle.join("bootstrap.json")).unwrap()).unwrap();
        assert_eq!(boot["version"], 3, "{boot}");
        assert_eq!(boot["protocol"], "ttrpc", "{boot}");
        assert_eq!(boot["address"], address.trim(), "{boot}");
        // the runtime info was loaded (debug) with the OCI runtime the features came from
        let loaded = log_lines(&e, "loaded shim info");
        assert!(
            loaded
                .iter()
                .any(|l| l.contains(MOSE) && l.contains("oci-runtime")),
            "{loaded:#?}"
        );
    } else {
        // 1.7 logs the parsed bootstrap (debug): a bare address is ttrpc, task API v2
        let params = log_lines(&e, "shim bootstrap parameters");
        assert!(
            params.iter().all(|l| !l.contains('{')),
            "containerd {:?} got a bare address: {params:#?}",
            containerd_version()
        );
    }
    let pid = e.ctr.task_pid(id).unwrap();
    e.ctr.force_remove(id);
    e.assert_clean(id, &[pid]);
}

/// idmapped mounts make containerd 2.x check the runtime's features (from
/// `-info`): the create fails for runc 1.1 (no idmap support), with that
/// reason — before, it failed because `-info` itself failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idmap_mounts_are_checked_against_runc_features() {
    if skip_unless_mose("idmap_mounts_are_checked_against_runc_features") {
        return;
    }
    if !containerd_is_2x() {
        mose_tests::skip_note(
            "idmap_mounts_are_checked_against_runc_features",
            &format!(
                "containerd {:?} does not validate runtime features",
                containerd_version()
            ),
        );
        return;
    }
    let e = env("idmap");
    let c = e.client().await;
    let id = "idm";
    e.create_container(id, &[], &["true"]).await;
    let mut spec = c.container_spec(id).await.unwrap();
    let src = e.cd.dir().join("idmap-src");
    std::fs::create_dir_all(&src).unwrap();
    spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "destination": "/mnt",
            "type": "bind",
            "source": src.display().to_string(),
            "options": ["rbind", "idmap"],
            "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
        }));
    c.set_container_spec(id, &spec).await.unwrap();
    let runc_has_idmap = Command::new("runc")
        .arg("features")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("idmap"))
        .unwrap_or(false);
    let r = c.create_task(id, &Default::default()).await;
    if runc_has_idmap {
        mose_tests::skip_note(
            "idmap_mounts_are_checked_against_runc_features",
            &format!("runc supports idmap mounts here (create: {r:?}): the refusal is not checked"),
        );
        e.ctr.force_remove(id);
        return;
    }
    let err = format!("{:#}", r.expect_err("runc 1.1 has no idmap mounts"));
    assert!(err.contains("idmap mounts not supported"), "{err}");
    assert!(!err.contains("runtime info"), "-info failed: {err}");
    e.ctr.force_remove(id);
}

/// Shim server processes of the test's containerd (they carry `-address <sock>`).
fn shim_servers(e: &common::Env) -> Vec<u32> {
    processes_mentioning(&e.cd.socket().display().to_string())
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains(SHIM_BINARY) && c.contains("-socket")
                })
                .unwrap_or(false)
        })
        .collect()
}

fn sigterm(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

/// A shim server holding no container exits 0 on SIGTERM and removes its
/// socket; one holding a container ignores it and goes on serving.
#[test]
fn sigterm_ends_only_a_shim_without_containers() {
    if skip_unless_mose("sigterm_ends_only_a_shim_without_containers") {
        return;
    }
    let e = env("term");

    // 1. a server containerd has not given a task yet: started as containerd
    //    starts one, against this containerd's sockets
    let dir = tempfile::tempdir_in(e.cd.dir()).unwrap();
    let sock = dir.path().join("s.sock");
    let mut server = Command::new(shim_path())
        .args(["-namespace", &e.ns, "-id", "lonely", "-address"])
        .arg(e.cd.socket())
        .arg("-socket")
        .arg(format!("unix://{}", sock.display()))
        .env(
            "TTRPC_ADDRESS",
            format!("{}.ttrpc", e.cd.socket().display()),
        )
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // stdout closes once the server serves
    let mut buf = Vec::new();
    let _ = server.stdout.take().unwrap().read_to_end(&mut buf);
    assert!(sock.exists(), "server socket {}", sock.display());
    sigterm(server.id());
    let st = mose_tests::ctr::wait_timeout(&mut server, Duration::from_secs(10))
        .unwrap()
        .expect("shim without containers exits on SIGTERM");
    let mut err = String::new();
    let _ = server.stderr.take().unwrap().read_to_string(&mut err);
    assert_eq!(st.code(), Some(0), "clean exit: {st:?}\n{err}");
    assert!(!sock.exists(), "socket removed on exit");
    assert!(err.contains("no container left"), "{err}");

    // 2. a server with a running container stays
    let id = "kept";
    e.run_detached(id, &[], &["sleep", "1000"]);
    let pid = e.ctr.task_pid(id).unwrap();
    let shims = shim_servers(&e);
    assert_eq!(shims.len(), 1, "one shim server: {shims:?}");
    sigterm(shims[0]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(process_alive(shims[0]), "shim with a container lives on");
    assert_eq!(e.ctr.task_status(id).unwrap().as_deref(), Some("RUNNING"));
    let fifo = e.cd.fifo_dir().display().to_string();
    let o: Output = e
        .ctr
        .run([
            "tasks",
            "exec",
            "--fifo-dir",
            &fifo,
            "--exec-id",
            "x",
            id,
            "true",
        ])
        .unwrap();
    assert_eq!(o.code, Some(0), "still serving: {o:?}");
    // deleting the container ends it (containerd's Shutdown)
    e.ctr.force_remove(id);
    mose_tests::poll_until("shim exit after the last delete", WAIT, || {
        (!process_alive(shims[0])).then_some(())
    })
    .unwrap();
    e.assert_clean(id, &[pid]);
}
