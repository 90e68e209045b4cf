//! youki as the OCI runtime (`BinaryName = "youki"` in the runtime
//! options): the task life cycle the runc tests check — create, start, exec
//! with pipes and with a terminal, pause/resume, signals and kill --all,
//! the OOM event, metrics, resource updates, delete — each with the same
//! assertions, and MOSE's refusal of what youki cannot do (restore, so
//! restore-from-checkpoint and migration) before anything is written.
//!
//! youki comes from `scripts/provision-youki.sh` (set-up runs it); without
//! it each test prints why it is skipped. Under containerd's own runc shim
//! (`MOSE_TEST_RUNTIME=io.containerd.runc.v2`) they are skipped too: these
//! are the MOSE shim's tests.

mod common;

use std::time::Duration;

use common::{env_with_binary, Env, COUNTER, WAIT};
use mose_tests::client::status;
use mose_tests::fifo::{FifoReader, FifoWriter};

const YOUKI: &str = "youki";

/// A test environment whose containers run under youki, or `None` (and
/// the reason printed) when youki is not there.
fn youki_env(name: &str) -> Option<Env> {
    if mose_tests::runtime_is_runc() {
        eprintln!(
            "skipped: the youki tests are the MOSE shim's (MOSE_TEST_RUNTIME is runc's shim)"
        );
        return None;
    }
    if !mose_tests::on_path(YOUKI) {
        eprintln!(
            "skipped: youki is not installed (scripts/provision-youki.sh, run by scripts/setup.sh, installs it)"
        );
        return None;
    }
    Some(env_with_binary(name, Some(YOUKI)))
}

/// Asserts that task `id` really runs under youki: the shim recorded youki
/// for it, and youki itself knows the container in that state root.
fn assert_under_youki(e: &Env, id: &str, want_status: &str) {
    let record = e.cd.bundle(&e.ns, id).join("mose-runtime.json");
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record).expect("shim's runtime record"))
            .unwrap();
    assert_eq!(rec["binary"], YOUKI, "{rec}");
    let root = rec["root"].as_str().unwrap();
    let out = std::process::Command::new(YOUKI)
        .args(["--root", root, "state", id])
        .output()
        .expect("youki state");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "youki state {id}: {out:?}");
    let state: serde_json::Value = serde_json::from_str(&text).expect("youki state JSON");
    assert_eq!(state["status"], want_status, "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn youki_create_start_wait_delete() {
    let Some(e) = youki_env("yk-life") else {
        return;
    };
    // ctr run: exit codes, stdout and stderr apart
    let ok = e.run("ok-0", &["--rm"], &["sh", "-c", "echo out; echo err >&2"]);
    assert_eq!(ok.code, Some(0), "exit 0 expected: {ok:?}");
    assert_eq!(ok.stdout.trim(), "out", "{ok:?}");
    assert_eq!(ok.stderr.trim(), "err", "stderr kept apart: {ok:?}");
    let bad = e.run("exit-3", &["--rm"], &["sh", "-c", "exit 3"]);
    assert_eq!(bad.code, Some(3), "exit 3 expected: {bad:?}");
    for id in ["ok-0", "exit-3"] {
        e.assert_clean(id, &[]);
    }

    // gRPC: created, running (under youki), stopped with the exit status
    let c = e.client().await;
    let id = "g42";
    e.create_container(
        id,
        &[],
        &["sh", "-c", "echo to-out; echo to-err >&2; read x; exit 42"],
    )
    .await;
    let io = e.fifos(id, true, true, false);
    let out = FifoReader::spawn(io.stdout.as_ref().unwrap());
    let err = FifoReader::spawn(io.stderr.as_ref().unwrap());
    let mut stdin = FifoWriter::open(io.stdin.as_ref().unwrap()).unwrap();
    let pid = c
        .create_task(id, &io)
        .await
        .expect("create task under youki");
    assert!(pid > 0);
    assert_eq!(c.state(id, "").await.unwrap().0, status::CREATED);
    assert_under_youki(&e, id, "created");
    c.start(id, "").await.expect("start");
    out.wait_for("to-out\n", WAIT).unwrap();
    assert_under_youki(&e, id, "running");
    stdin.write(b"go\n").unwrap();
    assert_eq!(c.wait(id, "", WAIT).await.unwrap(), 42);
    assert_eq!(
        c.state(id, "").await.unwrap(),
        (status::STOPPED, 42),
        "stopped with its exit status"
    );
    assert_eq!(out.collect(WAIT).unwrap(), "to-out\n");
    assert_eq!(err.collect(WAIT).unwrap(), "to-err\n");
    stdin.close();
    assert_eq!(c.delete_task(id).await.expect("delete task"), 42);
    c.delete_container(id).await.unwrap();
    io.remove();
    e.assert_clean(id, &[pid]);

    // deleting a running task fails; kill --all then delete leaves nothing
    let id = "tree";
    e.create_container(id, &[], &["sh", "-c", "sleep 1000 & sleep 1000 & wait"])
        .await;
    let pid = c.create_task(id, &Default::default()).await.unwrap();
    c.start(id, "").await.unwrap();
    let pids = mose_tests::poll_until_async("3 processes", WAIT, || async {
        let p = c.pids(id).await.unwrap_or_default();
        (p.len() >= 3).then_some(p)
    })
    .await
    .expect("process tree (youki ps)");
    assert!(pids.contains(&pid));
    assert!(c.delete_task(id).await.is_err(), "delete of a running task");
    c.kill(id, "", libc::SIGKILL as u32, true).await.unwrap();
    assert_eq!(c.wait(id, "", WAIT).await.unwrap(), 137);
    c.delete_task(id).await.unwrap();
    c.delete_container(id).await.unwrap();
    e.assert_clean(id, &pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn youki_exec_with_pipes_and_terminal() {
    let Some(e) = youki_env("yk-exec") else {
        return;
    };
    let c = e.client().await;
    let id = "ex";
    e.create_container(id, &[], &["sleep", "1000"]).await;
    let pid = c.create_task(id, &Default::default()).await.unwrap();
    c.start(id, "").await.unwrap();

    // pipes: exit code, stdout and stderr apart
    let io = e.fifos("ex-e1", false, true, false);
    let out = FifoReader::spawn(io.stdout.as_ref().unwrap());
    let err = FifoReader::spawn(io.stderr.as_ref().unwrap());
    c.exec(
        id,
        "e1",
        &["sh", "-c", "echo exec-out; echo exec-err >&2; exit 7"],
        &io,
    )
    .await
    .expect("exec");
    let epid = c.start(id, "e1").await.expect("start exec under youki");
    assert!(epid > 0 && epid != pid);
    assert_eq!(c.wait(id, "e1", WAIT).await.unwrap(), 7);
    assert_eq!(out.collect(WAIT).unwrap(), "exec-out\n");
    assert_eq!(err.collect(WAIT).unwrap(), "exec-err\n");
    assert_eq!(c.state(id, "e1").await.unwrap(), (status::STOPPED, 7));
    assert_eq!(c.delete_process(id, "e1").await.unwrap(), 7);
    io.remove();

    // stdin, closed with CloseIO
    let io = e.fifos("ex-cat", true, true, false);
    let out = FifoReader::spawn(io.stdout.as_ref().unwrap());
    let err = FifoReader::spawn(io.stderr.as_ref().unwrap());
    let mut stdin = FifoWriter::open(io.stdin.as_ref().unwrap()).unwrap();
    c.exec(id, "cat", &["cat"], &io).await.unwrap();
    c.start(id, "cat").await.unwrap();
    stdin.write(b"via exec stdin\n").unwrap();
    out.wait_for("via exec stdin\n", WAIT).unwrap();
    stdin.close();
    c.close_stdin(id, "cat").await.unwrap();
    assert_eq!(c.wait(id, "cat", WAIT).await.unwrap(), 0);
    let _ = err.collect(WAIT);
    c.delete_process(id, "cat").await.unwrap();
    io.remove();

    // a terminal, resized before it prints its size
    let io = e.fifos("ex-tty", true, false, true);
    let out = FifoReader::spawn(io.stdout.as_ref().unwrap());
    let mut stdin = FifoWriter::open(io.stdin.as_ref().unwrap()).unwrap();
    c.exec(id, "t", &["sh", "-c", "tty; read x; stty size"], &io)
        .await
        .unwrap();
    c.start(id, "t").await.expect("start exec with a terminal");
    out.wait_for("/dev/pts/", WAIT).unwrap();
    c.resize_pty(id, "t", 77, 22)
        .await
        .expect("resize exec pty");
    tokio::time::sleep(Duration::from_millis(50)).await;
    stdin.write(b"go\n").unwrap();
    out.wait_for("22 77", WAIT).unwrap();
    assert_eq!(c.wait(id, "t", WAIT).await.unwrap(), 0);
    stdin.close();
    let _ = out.collect(WAIT);
    c.delete_process(id, "t").await.unwrap();
    io.remove();

    // ctr: exec output and exit code, and an exec with a terminal
    let fifo = e.cd.fifo_dir().display().to_string();
    let o = e
        .ctr
        .run([
            "tasks",
            "exec",
            "--fifo-dir",
            &fifo,
            "--exec-id",
            "x1",
            id,
            "sh",
            "-c",
            "echo hello-exec; exit 7",
        ])
        .unwrap();
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (Some(7), "hello-exec\n"),
        "{o:?}"
    );
    let o = e
        .ctr
        .run_in_pty(&[
            "tasks",
            "exec",
            "-t",
            "--fifo-dir",
            &fifo,
            "--exec-id",
            "tx",
            id,
            "sh",
            "-c",
            "tty; sleep 0.2; exit 6",
        ])
        .unwrap();
    assert_eq!(o.code, Some(6), "{o:?}");
    assert!(o.stdout.contains("/dev/pts/"), "{o:?}");

    e.ctr.force_remove(id);
    e.assert_clean(id, &[pid, epid]);

    // the init with a terminal (ctr run -t under a pty)
    let mut args: Vec<String> = ["run", "--rm", "-t", "--fifo-dir", &fifo, "--runtime", &e.rt]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(e.runtime_config_flags());
    args.extend(
        [e.image.as_str(), "t1", "sh", "-c", "tty; sleep 0.2; exit 5"]
            .iter()
            .map(|s| s.to_string()),
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = e.ctr.run_in_pty(&refs).unwrap();
    assert_eq!(o.code, Some(5), "{o:?}");
    assert!(o.stdout.contains("/dev/pts/0"), "{o:?}");
    e.assert_clean("t1", &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn youki_pause_resume_and_signals() {
    let Some(e) = youki_env("yk-sig") else { return };
    let c = e.client().await;

    // pause freezes the counter, resume lets it go on
    let id = "cnt";
    e.run_detached(id, &[], &["sh", "-c", COUNTER]);
    let pid = e.ctr.task_pid(id).unwrap();
    e.wait_counter(id, 5);
    c.pause(id).await.expect("pause under youki");
    assert_eq!(c.state(id, "").await.unwrap().0, status::PAUSED);
    assert_under_youki(&e, id, "paused");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let frozen = e.counter(id).expect("counter readable");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(e.counter(id), Some(frozen), "counter advanced while paused");
    c.resume(id).await.expect("resume under youki");
    assert_eq!(c.state(id, "").await.unwrap().0, status::RUNNING);
    e.wait_counter(id, frozen + 3);
    e.ctr.ok(["tasks", "pause", id]).unwrap();
    assert_eq!(e.ctr.task_status(id).unwrap().as_deref(), Some("PAUSED"));
    e.ctr.ok(["tasks", "resume", id]).unwrap();
    assert_eq!(e.ctr.task_status(id).unwrap().as_deref(), Some("RUNNING"));
    e.ctr.force_remove(id);
    e.assert_clean(id, &[pid]);

    // a signal the init traps
    let id = "trap";
    e.create_container(
        id,
        &[],
        &[
            "sh",
            "-c",
            "trap 'echo got-usr1; exit 10' USR1; echo ready; while true; do sleep 0.05; done",
        ],
    )
    .await;
    let io = e.fifos(id, false, true, false);
    let out = FifoReader::spawn(io.stdout.as_ref().unwrap());
    let err = FifoReader::spawn(io.stderr.as_ref().unwrap());
    let pid = c.create_task(id, &io).await.unwrap();
    c.start(id, "").await.unwrap();
    out.wait_for("ready", WAIT).unwrap();
    c.kill(id, "", libc::SIGUSR1 as u32, false).await.unwrap();
    assert_eq!(c.wait(id, "", WAIT).await.unwrap(), 10);
    assert_eq!(out.collect(WAIT).unwrap(), "ready\ngot-usr1\n");
    let _ = err.collect(WAIT);
    c.delete_task(id).await.unwrap();
    c.delete_container(id).await.unwrap();
    io.remove();
    e.assert_clean(id, &[pid]);

    // SIGKILL through ctr: 137
    let id = "k9";
    e.run_detached(id, &[], &["sleep", "1000"]);
    let pid = e.ctr.task_pid(id).unwrap();
    e.ctr.ok(["tasks", "kill", "-s", "SIGKILL", id]).unwrap();
    assert_eq!(c.wait(id, "", WAIT).await.unwrap(), 137);
    assert_eq!(e.ctr.task_status(id).unwrap().as_deref(), Some("STOPPED"));
    e.ctr.ok(["tasks", "delete", id]).unwrap();
    e.ctr.ok(["containers", "delete", id]).unwrap();
    e.assert_clean(id, &[pid]);

    // kill --all reaches the init, its children and an exec; an exec
    // killed by a signal reports 128+signal
    let id = "all";
    e.create_container(id, &[], &["sh", "-c", "sleep 1000 & sleep 1000 & wait"])
        .await;
    let pid = c.create_task(id, &Default::default()).await.unwrap();
    c.start(id, "").await.unwrap();
    c.exec(id, "slp", &["sleep", "1000"], &Default::default())
        .await
        .unwrap();
    let spid = c.start(id, "slp").await.unwrap();
    c.kill(id, "slp", libc::SIGUSR1 as u32, false)
        .await
        .unwrap();
    assert_eq!(c.wait(id, "slp", WAIT).await.unwrap(), 128 + 10);
    c.delete_process(id, "slp").await.unwrap();
    c.exec(id, "x", &["sleep", "1000"], &Default::default())
        .await
        .unwrap();
    let xpid = c.start(id, "x").await.unwrap();
    let pids = mose_tests::poll_until_async("4 processes", WAIT, || async {
        let p = c.pids(id).await.ok()?;
        (p.len() >= 4).then_some(p)
    })
    .await
    .unwrap();
    assert!(pids.contains(&pid) && pids.contains(&xpid), "{pids:?}");
    c.kill(id, "", libc::SIGKILL as u32, true).await.unwrap();
    assert_eq!(c.wait(id, "", WAIT).await.unwrap(), 137);
    assert_eq!(c.wait(id, "x", WAIT).await.unwrap(), 137);
    mose_tests::poll_until("all processes gone", WAIT, || {
        pids.iter()
            .all(|&p| !mose_tests::cleanup::process_alive(p))
            .then_some(())
    })
    .unwrap();
    c.delete_process(id, "x").await.unwrap();
    c.delete_task(id).await.unwrap();
    c.delete_container(id).await.unwrap();
    let mut all = pids.clone();
    all.push(spid);
    e.assert_clean(id, &all);
}

/// Value of `metric` in `ctr tasks metrics` output.
fn ctr_metric(out: &str, metric: &str) -> Option<u64> {
    out.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(metric)).then(|| it.next()?.parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn youki_metrics_update_and_oom() {
    let Some(e) = youki_env("yk-stats") else {
        return;
    };
    let c = e.client().await;

    // metrics of a container that used some CPU, and a memory limit update
    let id = "busy";
    e.run_detached(
        id,
        &["--memory-limit", "134217728"],
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done; echo $i > /tmp/c; sleep 1000",
        ],
    );
    let pid = e.ctr.task_pid(id).unwrap();
    e.wait_counter(id, 30000);
    let m = c.metrics_v1(id).await.expect("gRPC metrics");
    let mem = m.memory.usage.as_ref().map(|u| u.usage).unwrap_or(0);
    let cpu = m.cpu.usage.as_ref().map(|u| u.total).unwrap_or(0);
    assert!(mem > 0, "memory usage > 0: {m:?}");
    assert!(cpu > 0, "cpu usage > 0: {m:?}");
    assert!(m.pids.current >= 1, "pids.current: {m:?}");
    assert_eq!(m.memory.usage.as_ref().map(|u| u.limit), Some(134217728));
    let out = e
        .ctr
        .ok(["tasks", "metrics", id])
        .expect("ctr tasks metrics");
    assert!(
        ctr_metric(&out, "memory.usage_in_bytes").unwrap_or(0) > 0,
        "{out}"
    );
    assert!(ctr_metric(&out, "cpuacct.usage").unwrap_or(0) > 0, "{out}");
    c.update(id, &serde_json::json!({ "memory": { "limit": 67108864 } }))
        .await
        .expect("update memory limit (youki update --resources)");
    let m = c.metrics_v1(id).await.unwrap();
    assert_eq!(m.memory.usage.as_ref().map(|u| u.limit), Some(67108864));
    e.ctr.force_remove(id);
    e.assert_clean(id, &[pid]);

    // the OOM killer ends a container over its limit: /tasks/oom, exit 137
    let mut events = e.ctr.command(["events"]);
    events.stdout(std::process::Stdio::piped());
    let mut child = events.spawn().expect("ctr events");
    std::thread::sleep(Duration::from_millis(300));
    let id = "oom1";
    let out = e.run(
        id,
        &["--rm", "--memory-limit", "20000000"],
        &[
            "sh",
            "-c",
            "x=0123456789abcdef; while true; do x=$x$x; done",
        ],
    );
    assert_eq!(
        out.code,
        Some(137),
        "the OOM killer ends the container: {out:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let _ = child.kill();
    let out = child.wait_with_output().expect("ctr events output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("/tasks/oom") && l.contains(id)),
        "no /tasks/oom event for {id}:\n{text}"
    );
    e.assert_clean(id, &[]);
}

/// The fields of `containerd.runc.v1.Options` a restore needs
/// (containerd's api/types/runc/options/oci.proto).
#[derive(Clone, PartialEq, prost::Message)]
struct RuncOptions {
    #[prost(string, tag = "6")]
    binary_name: String,
    #[prost(string, tag = "10")]
    criu_image_path: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn youki_checkpoints_a_running_container_and_restores_are_refused() {
    let Some(e) = youki_env("yk-ckpt") else {
        return;
    };
    let c = e.client().await;
    let id = "ck";
    e.run_detached(id, &["--net-host"], &["sh", "-c", COUNTER]);
    let pid = e.ctr.task_pid(id).unwrap();
    e.wait_counter(id, 20);

    // a CRIU dump through the Tasks API (no pause first): youki checkpointt,
    // leaving the container running
    let image = e.cd.dir().join("youki-image");
    let opts = mose_tests::client::CheckpointOptions {
        image_path: image.display().to_string(),
        ..Default::default()
    };
    c.checkpoint(id, Some(opts.to_any()))
        .await
        .expect("youki dumps a running container");
    assert!(image.join("inventory.img").exists(), "a CRIU image");
    assert_eq!(c.state(id, "").await.unwrap().0, status::RUNNING);
    let after = e.counter(id).unwrap();
    e.wait_counter(id, after + 3);

    // containerd's client pauses the task before a checkpoint: youki cannot
    // dump a paused container, and MOSE says so before calling it
    let out = e.ctr.run(["tasks", "checkpoint", id]).unwrap();
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("youki 0.7")
            && out.stderr.contains("cannot checkpoint a paused container"),
        "{out:?}"
    );
    assert_eq!(c.state(id, "").await.unwrap().0, status::RUNNING, "resumed");

    // a restore is refused at create, before the bundle or rootfs are
    // touched: from CriuImagePath in runc options (containerd's
    // WithRestoreImagePath) ...
    let new_id = "ck-r";
    e.create_container(new_id, &["--net-host"], &["sh", "-c", COUNTER])
        .await;
    let rootfs = c.rootfs_mounts(new_id).await.unwrap();
    let runc_opts = RuncOptions {
        binary_name: YOUKI.into(),
        criu_image_path: image.display().to_string(),
    };
    let err = c
        .create_task_with(
            new_id,
            &Default::default(),
            rootfs.clone(),
            None,
            Some(prost_types::Any {
                type_url: "containerd.runc.v1.Options".into(),
                value: prost::Message::encode_to_vec(&runc_opts),
            }),
        )
        .await
        .expect_err("youki cannot restore");
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!("cannot restore container {new_id}"))
            && msg.contains("youki 0.7")
            && msg.contains("no `restore`")
            && msg.contains("with runc"),
        "{msg}"
    );
    // ... and from MOSE's own restore_image (a migration destination's;
    // containerd 2.x decodes task options itself and knows no mose.v1.Options)
    if mose_tests::containerd::containerd_is_2x() {
        eprintln!("restore_image not checked: containerd 2.x refuses mose.v1.Options itself");
    } else {
        let mose = mose_tests::client::json_any(
            "mose.v1.Options",
            &serde_json::json!({"binary_name": YOUKI, "restore_image": image.display().to_string()}),
        )
        .unwrap();
        let err = c
            .create_task_with(new_id, &Default::default(), rootfs, None, Some(mose))
            .await
            .expect_err("youki cannot restore");
        assert!(format!("{err:#}").contains("no `restore`"), "{err:#}");
    }
    // the same for a crun built without CRIU (Debian 12's 1.8.1)
    let crun_has_criu = std::process::Command::new("crun")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("+CRIU"));
    if let Ok(false) = crun_has_criu {
        let crun_opts = RuncOptions {
            binary_name: "crun".into(),
            criu_image_path: image.display().to_string(),
        };
        let rootfs = c.rootfs_mounts(new_id).await.unwrap();
        let err = c
            .create_task_with(
                new_id,
                &Default::default(),
                rootfs,
                None,
                Some(prost_types::Any {
                    type_url: "containerd.runc.v1.Options".into(),
                    value: prost::Message::encode_to_vec(&crun_opts),
                }),
            )
            .await
            .expect_err("crun without CRIU cannot restore");
        assert!(format!("{err:#}").contains("built without CRIU"), "{err:#}");
    }
    assert!(
        !e.cd
            .bundle(&e.ns, new_id)
            .join("rootfs")
            .join("bin")
            .exists(),
        "no rootfs was mounted"
    );
    c.delete_container(new_id).await.unwrap();
    e.assert_clean(new_id, &[]);

    // a checkpoint that stops the container, by `mosectl checkpoint` (the
    // Tasks API, no pause)
    let mosectl = mose_tests::target_dir().join("debug/mosectl");
    let out = mose_tests::ctr::run_command(
        {
            let mut cmd = std::process::Command::new(&mosectl);
            cmd.arg("checkpoint")
                .arg("--address")
                .arg(e.cd.socket())
                .args(["-n", &e.ns, id, "--exit", "--image-path"])
                .arg(e.cd.dir().join("youki-image-2"));
            cmd
        },
        None,
        WAIT,
    )
    .unwrap();
    assert!(
        out.success(),
        "mosectl checkpoint --exit under youki: {out:?}"
    );
    assert!(e.cd.dir().join("youki-image-2/inventory.img").exists());
    assert_eq!(c.wait(id, "", WAIT).await.unwrap(), 137);
    c.delete_task(id).await.unwrap();
    c.delete_container(id).await.unwrap();
    e.assert_clean(id, &[pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn youki_container_with_its_own_network_has_loopback() {
    let Some(e) = youki_env("yk-lo") else { return };
    let id = "lo";
    // runc brings the loopback of a new network namespace up, youki does
    // not: the shim does it for youki
    e.run_detached(
        id,
        &[],
        &[
            "sh",
            "-c",
            "echo hello > /tmp/index.html; exec httpd -f -p 127.0.0.1:8080 -h /tmp",
        ],
    );
    let pid = e.ctr.task_pid(id).unwrap();
    let fifo = e.cd.fifo_dir().display().to_string();
    let out = mose_tests::poll_until("the server on 127.0.0.1", WAIT, || {
        let out = e
            .ctr
            .run([
                "tasks",
                "exec",
                "--fifo-dir",
                &fifo,
                "--exec-id",
                "w",
                id,
                "sh",
                "-c",
                "ip link show lo; wget -qO- http://127.0.0.1:8080/index.html",
            ])
            .ok()?;
        out.success().then_some(out)
    })
    .unwrap();
    assert!(
        out.stdout.contains("UP") && out.stdout.contains("hello"),
        "{out:?}"
    );
    e.ctr.force_remove(id);
    e.assert_clean(id, &[pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn youki_container_migration_is_refused_before_the_freeze() {
    let Some(e) = youki_env("yk-mig") else { return };
    let c = e.client().await;
    let id = "mig";
    e.run_detached(id, &["--net-host"], &["sh", "-c", COUNTER]);
    let pid = e.ctr.task_pid(id).unwrap();
    e.wait_counter(id, 5);
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let mosectl = mose_tests::target_dir().join("debug/mosectl");
    // no destination listens there: the refusal comes before any contact
    let out = mose_tests::ctr::run_command(
        {
            let mut cmd = std::process::Command::new(&mosectl);
            cmd.arg("migrate")
                .arg("--address")
                .arg(e.cd.socket())
                .args([
                    "-n",
                    &e.ns,
                    id,
                    "--to",
                    "127.0.0.1:9",
                    "--technique",
                    "cold",
                ])
                .args(["--node", "n1", "--output", "json"])
                .arg("--tls-dir")
                .arg(dir.path().join("tls"))
                .arg("--work")
                .arg(dir.path().join("work"))
                .arg("--state")
                .arg(dir.path().join("state"))
                .arg("--policy-socket")
                .arg(dir.path().join("policy.sock"));
            cmd
        },
        None,
        WAIT,
    )
    .unwrap();
    assert_eq!(out.code, Some(1), "{out:?}");
    let r: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("JSON result");
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["bytes_sent"], 0, "{r}");
    let error = r["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("cannot migrate container {id}"))
            && error.contains("youki 0.7")
            && error.contains("no `restore`")
            && error.contains("with runc"),
        "{r}"
    );
    assert!(!dir.path().join("work").exists(), "nothing written: {r}");
    assert_eq!(c.state(id, "").await.unwrap().0, status::RUNNING);
    let n = e.counter(id).unwrap();
    e.wait_counter(id, n + 3);
    e.ctr.force_remove(id);
    e.assert_clean(id, &[pid]);
}
