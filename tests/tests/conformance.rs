//! What containerd's own client suite, the CRI and public checkpoint/restore
//! reports expect of a runtime, one case each: terminals of execs, resizes
//! without a terminal, host-pid containers, the legacy runc option types
//! containerd's client sends to non-runc runtimes, log URIs, restored
//! containers' cgroups, checkpoints of restored containers, loopback and file
//! locks after restore, and tty output that is never lost.

mod common;

use common::{env, Env, COUNTER, WAIT};
use mose_tests::client::{json_any, status};
use mose_tests::fifo::FifoReader;

const LEGACY_CREATE_TYPE: &str = "containerd.linux.runc.CreateOptions";
const LEGACY_CHECKPOINT_TYPE: &str = "containerd.linux.runc.CheckpointOptions";

/// `containerd.linux.runc.CreateOptions` (containerd's runctypes/runc.proto).
#[derive(Clone, PartialEq, prost::Message)]
struct LegacyCreateOptions {
    #[prost(bool, tag = "1")]
    no_pivot_root: bool,
    #[prost(string, tag = "9")]
    shim_cgroup: String,
    #[prost(uint32, tag = "10")]
    io_uid: u32,
    #[prost(uint32, tag = "11")]
    io_gid: u32,
    #[prost(string, tag = "13")]
    criu_image_path: String,
}

/// `containerd.runc.v1.Options` (containerd's runc options), the one field used.
#[derive(Clone, PartialEq, prost::Message)]
struct RuncOptions {
    #[prost(string, tag = "10")]
    criu_image_path: String,
}

/// `containerd.linux.runc.CheckpointOptions` (same source).
#[derive(Clone, PartialEq, prost::Message)]
struct LegacyCheckpointOptions {
    #[prost(bool, tag = "1")]
    exit: bool,
    #[prost(string, tag = "8")]
    work_path: String,
    #[prost(string, tag = "9")]
    image_path: String,
}

fn any(type_name: &str, msg: &impl prost::Message) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/{type_name}"),
        value: msg.encode_to_vec(),
    }
}

/// Starts `id` running `cmd` through gRPC; returns the init pid.
async fn running(e: &Env, id: &str, flags: &[&str], cmd: &[&str]) -> u32 {
    e.create_container(id, flags, cmd).await;
    let c = e.client().await;
    let pid = c
        .create_task(id, &Default::default())
        .await
        .expect("create task");
    c.start(id, "").await.expect("start task");
    pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_terminal_follows_the_request_not_the_spec() {
    let e = env("conf");
    let c = e.client().await;
    let id = "tty1";
    running(&e, id, &[], &["sleep", "1000"]).await;
    let io = e.fifos("tty1-x", false, false, true);
    let out = FifoReader::spawn(io.stdout.as_ref().unwrap());
    // the process spec says no terminal; the request asks for one
    let mut process = c.container_spec(id).await.unwrap()["process"].clone();
    process["args"] = serde_json::json!(["sh", "-c", "tty; echo large-$((6*7))"]);
    process["terminal"] = false.into();
    let (_, stdout, _) = io.strings();
    c.tasks()
        .exec(c.req(containerd_client::services::v1::ExecProcessRequest {
            container_id: id.into(),
            stdout,
            terminal: true,
            spec: Some(json_any(mose_tests::client::PROCESS_TYPE_URL, &process).unwrap()),
            exec_id: "x".into(),
            ..Default::default()
        }))
        .await
        .expect("exec with terminal");
    c.start(id, "x").await.expect("start tty exec");
    assert_eq!(c.wait(id, "x", WAIT).await.unwrap(), 0);
    let text = out.collect(WAIT).unwrap();
    assert!(
        text.contains("/dev/pts/"),
        "the exec got a terminal: {text:?}"
    );
    assert!(text.contains("large-42"), "{text:?}");
    c.delete_process(id, "x").await.unwrap();
    io.remove();
    e.ctr.force_remove(id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resize_pty_without_a_terminal_is_a_no_op() {
    let e = env("conf");
    let c = e.client().await;
    let id = "rsz";
    running(&e, id, &[], &["sleep", "1000"]).await;
    c.resize_pty(id, "", 80, 24)
        .await
        .expect("resize of a process without a terminal succeeds, as with runc.v2");
    c.exec(id, "e", &["sleep", "1000"], &Default::default())
        .await
        .unwrap();
    c.resize_pty(id, "e", 80, 24)
        .await
        .expect("resize of a created exec succeeds");
    e.ctr.force_remove(id);
}

/// True when `pid` is gone, a zombie, or has SIGKILL pending: killed.
fn killed(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    let state = field("State:");
    let sigkill = 1u64 << (libc::SIGKILL - 1);
    let pending = |name: &str| u64::from_str_radix(&field(name), 16).unwrap_or(0) & sigkill != 0;
    state.starts_with('Z') || state.starts_with('X') || pending("SigPnd:") || pending("ShdPnd:")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_init_of_a_host_pid_container_kills_the_rest_before_its_exit() {
    let e = env("conf");
    let c = e.client().await;
    let id = "hpid";
    // the children hold the init's output open
    let io = e.fifos("hpid", false, true, false);
    let out = FifoReader::spawn(io.stdout.as_ref().unwrap());
    e.create_container(
        id,
        &[],
        &["sh", "-c", "sleep 1000 & sleep 1000 & echo ready; wait"],
    )
    .await;
    // the host's pid namespace: no pid namespace in the spec
    let mut spec = c.container_spec(id).await.unwrap();
    if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "pid");
    }
    c.set_container_spec(id, &spec).await.unwrap();
    let pid = c.create_task(id, &io).await.unwrap();
    c.start(id, "").await.unwrap();
    out.wait_for("ready", WAIT).unwrap();
    let pids: Vec<u32> = c
        .pids(id)
        .await
        .unwrap()
        .into_iter()
        .filter(|p| *p != pid)
        .collect();
    assert_eq!(pids.len(), 2, "two children besides init: {pids:?}");
    c.kill(id, "", libc::SIGKILL as u32, false).await.unwrap();
    assert_eq!(c.wait(id, "", WAIT).await.unwrap(), 137);
    for p in &pids {
        assert!(
            killed(*p),
            "child {p} still alive when the init's exit was reported"
        );
    }
    c.delete_task(id).await.unwrap();
    c.delete_container(id).await.unwrap();
    io.remove();
    let mut all = pids.clone();
    all.push(pid);
    e.assert_clean(id, &all);
}

/// Checkpoints `id` into `dir` with the legacy options (`exit` as given).
async fn legacy_checkpoint(e: &Env, id: &str, dir: &std::path::Path, exit: bool) {
    let c = e.client().await;
    let opts = LegacyCheckpointOptions {
        exit,
        image_path: dir.display().to_string(),
        work_path: String::new(),
    };
    c.checkpoint(id, Some(any(LEGACY_CHECKPOINT_TYPE, &opts)))
        .await
        .expect("checkpoint with legacy options");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_checkpoint_options_and_criu_image_path_restore() {
    if mose_tests::runtime_is_runc() {
        eprintln!("skipped: containerd sends runc-named runtimes the runc.v1 types");
        return;
    }
    if mose_tests::containerd::containerd_is_2x() {
        mose_tests::skip_note(
            "legacy_checkpoint_options_and_criu_image_path_restore",
            "containerd 2.x no longer has the containerd.linux.runc types: its client never \
             sends them and its daemon refuses them before the shim",
        );
        return;
    }
    let e = env("conf");
    let c = e.client().await;
    let id = "lck";
    let pid = running(&e, id, &["--net-host"], &["sh", "-c", COUNTER]).await;
    e.wait_counter(id, 5);
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    legacy_checkpoint(&e, id, dir.path(), true).await;
    assert!(
        dir.path().join("inventory.img").exists(),
        "the image went to the legacy options' image_path"
    );
    assert_eq!(
        c.wait(id, "", WAIT).await.unwrap(),
        137,
        "exit mode stops the task"
    );
    let last = e.counter(id).unwrap();
    c.delete_task(id).await.unwrap();

    // a create whose runtime options name CriuImagePath restores from it
    let opts = LegacyCreateOptions {
        criu_image_path: dir.path().display().to_string(),
        ..Default::default()
    };
    let rootfs = c.rootfs_mounts(id).await.unwrap();
    c.create_task_with(
        id,
        &Default::default(),
        rootfs,
        None,
        Some(any(LEGACY_CREATE_TYPE, &opts)),
    )
    .await
    .expect("create from CriuImagePath");
    let rpid = c.start(id, "").await.expect("start restores");
    let next = mose_tests::poll_until("counter moves on", WAIT, || {
        e.counter(id).filter(|v| *v > last)
    })
    .unwrap();
    assert!(
        next < last + 200,
        "restored from {last}, not restarted: {next}"
    );
    e.ctr.force_remove(id);
    e.assert_clean(id, &[pid, rpid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_create_options_place_the_shim_and_own_the_pipes() {
    if mose_tests::runtime_is_runc() {
        eprintln!("skipped: containerd sends runc-named runtimes the runc.v1 types");
        return;
    }
    if mose_tests::containerd::containerd_is_2x() {
        mose_tests::skip_note(
            "legacy_create_options_place_the_shim_and_own_the_pipes",
            "containerd 2.x no longer has the containerd.linux.runc types: its client never \
             sends them and its daemon refuses them before the shim",
        );
        return;
    }
    let e = env("conf");
    let c = e.client().await;
    let id = "lco";
    // the cgroup exists in every v1 hierarchy, as containerd's own test makes it
    let cg = format!("mose-test-shims-{}", std::process::id());
    let hierarchies: Vec<std::path::PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .filter_map(|d| d.ok().map(|d| d.path()))
        .filter(|p| p.join("cgroup.procs").exists() && !p.ends_with("unified"))
        .collect();
    for h in &hierarchies {
        std::fs::create_dir_all(h.join(&cg)).unwrap();
        // a cpuset cgroup takes no task before it has cpus and mems
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = std::fs::read_to_string(h.join(f)) {
                std::fs::write(h.join(&cg).join(f), v.trim()).unwrap();
            }
        }
    }
    let cg_dir = std::path::Path::new("/sys/fs/cgroup/memory").join(&cg);
    e.create_container(id, &[], &["sh", "-c", "echo owned; sleep 1000"])
        .await;
    let io = e.fifos("lco", false, true, false);
    let out = FifoReader::spawn(io.stdout.as_ref().unwrap());
    let opts = LegacyCreateOptions {
        shim_cgroup: format!("/{cg}"),
        io_uid: 1000,
        io_gid: 1000,
        ..Default::default()
    };
    let rootfs = c.rootfs_mounts(id).await.unwrap();
    let pid = c
        .create_task_with(id, &io, rootfs, None, Some(any(LEGACY_CREATE_TYPE, &opts)))
        .await
        .expect("create with the legacy runc create options");
    c.start(id, "").await.unwrap();
    out.wait_for("owned", WAIT).unwrap();
    // the pipe the process writes to was given to IoUid/IoGid (runc then
    // hands its uid to the container's user, the gid stays)
    let fd1 = std::fs::metadata(format!("/proc/{pid}/fd/1")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&fd1), 1000);
    let shim = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.to_string()))
        .and_then(|r| {
            r.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok())
        })
        .expect("parent of the init");
    let procs = std::fs::read_to_string(cg_dir.join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l.trim() == shim.to_string()),
        "shim {shim} is in ShimCgroup /{cg}: {procs:?}"
    );
    e.ctr.force_remove(id);
    io.remove();
    // the shim has exited: the cgroup empties and can go
    let _ = mose_tests::poll_until("shim cgroup empty", WAIT, || {
        std::fs::read_to_string(cg_dir.join("cgroup.procs"))
            .ok()
            .filter(|p| p.trim().is_empty())
    });
    for h in &hierarchies {
        let _ = std::fs::remove_dir(h.join(&cg));
    }
}

#[test]
fn log_uris_file_path_and_binary() {
    let e = env("conf");
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    // file:// (created with its directory)
    let file = dir.path().join("logs/a.log");
    let uri = format!("file://{}", file.display());
    let out = e.run(
        "log1",
        &["--rm", "--log-uri", &uri],
        &["sh", "-c", "echo hi; echo err >&2"],
    );
    assert!(out.success(), "{out:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("hi\n") && text.contains("err\n"), "{text:?}");
    // a plain path to an existing file: appended to
    let out = e.run(
        "log2",
        &["--rm", "--log-uri", &file.display().to_string()],
        &["echo", "again"],
    );
    assert!(out.success(), "{out:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("hi\n") || text.starts_with("err\n"),
        "{text:?}"
    );
    assert!(text.ends_with("again\n"), "appended: {text:?}");
    // binary://: the logger gets stdout as fd 3 and signals readiness on fd 5
    let logger = dir.path().join("logger.sh");
    let sink = dir.path().join("binary.log");
    std::fs::write(
        &logger,
        "#!/bin/sh\nexec 5>&-\necho \"$CONTAINER_NAMESPACE/$CONTAINER_ID\" > \"$1\"\ncat <&3 >> \"$1\"\n",
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&logger).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let uri = format!("binary://{}?{}", logger.display(), sink.display());
    let out = e.run(
        "log3",
        &["--rm", "--log-uri", &uri],
        &["echo", "via-binary"],
    );
    assert!(out.success(), "{out:?}");
    let text = mose_tests::poll_until("logger wrote", WAIT, || {
        std::fs::read_to_string(&sink)
            .ok()
            .filter(|t| t.contains("via-binary"))
    })
    .unwrap();
    assert!(text.starts_with(&format!("{}/log3\n", e.ns)), "{text:?}");
    e.assert_clean("log3", &[]);
}

#[test]
fn a_restored_container_has_its_own_cgroup_and_checkpoints_again() {
    if mose_tests::runtime_is_runc() {
        eprintln!("skipped: containerd's runc shim shares the cgroup (MOSE does better)");
        return;
    }
    let e = env("conf");
    let (c1, c2, c3) = ("own1", "own2", "own3");
    e.run_detached(c1, &[], &["sh", "-c", COUNTER]);
    e.wait_counter(c1, 5);
    let ck = |id: &str, image: &str| {
        e.ctr
            .ok(["containers", "checkpoint", "--task", "--rw", id, image])
            .unwrap_or_else(|err| panic!("checkpoint {id}: {err:#}"));
    };
    let restore = |id: &str, image: &str| {
        let out = e
            .ctr
            .run(["containers", "restore", "--live", "--rw", id, image])
            .unwrap();
        assert!(out.success(), "restore {id} from {image}: {out:?}");
    };
    ck(c1, "conf/own:1");
    restore(c2, "conf/own:1");
    let p1 = e.ctr.task_pid(c1).unwrap();
    let p2 = e.ctr.task_pid(c2).unwrap();
    let cgroup = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap()
            .lines()
            .find(|l| l.contains(":memory:"))
            .map(str::to_string)
            .unwrap_or_default()
    };
    assert_ne!(cgroup(p1), cgroup(p2), "each container has its own cgroup");
    // removing the original leaves the restored one running
    e.ctr.force_remove(c1);
    assert_eq!(e.ctr.task_status(c2).unwrap().as_deref(), Some("RUNNING"));
    let before = e.counter(c2);
    mose_tests::poll_until("restored container counts on", WAIT, || {
        e.counter(c2).filter(|v| Some(*v) != before)
    })
    .unwrap();
    // and a checkpoint of the restored container restores again
    ck(c2, "conf/own:2");
    restore(c3, "conf/own:2");
    assert_eq!(e.ctr.task_status(c3).unwrap().as_deref(), Some("RUNNING"));
    let p3 = e.ctr.task_pid(c3).unwrap();
    e.ctr.force_remove(c2);
    e.ctr.force_remove(c3);
    e.assert_clean(c3, &[p1, p2, p3]);
}

/// `ctr tasks exec` of `sh -c CMD` in `cid`.
fn exec(e: &Env, cid: &str, n: &str, cmd: &str) -> mose_tests::ctr::Output {
    let fifo = e.cd.fifo_dir().display().to_string();
    e.ctr
        .run([
            "tasks",
            "exec",
            "--fifo-dir",
            &fifo,
            "--exec-id",
            n,
            cid,
            "sh",
            "-c",
            cmd,
        ])
        .unwrap()
}

/// `ctr containers checkpoint --task --rw` of `id`, then `ctr containers
/// restore --live --rw` of the image as `id2` after `id` is gone.
fn checkpoint_and_restore_elsewhere(e: &Env, id: &str, id2: &str, image: &str) {
    e.ctr
        .ok(["containers", "checkpoint", "--task", "--rw", id, image])
        .unwrap();
    e.ctr.force_remove(id);
    let out = e
        .ctr
        .run(["containers", "restore", "--live", "--rw", id2, image])
        .unwrap();
    assert!(out.success(), "restore: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_is_up_after_restore_into_a_new_netns() {
    if mose_tests::runtime_is_runc() {
        eprintln!("skipped: containerd's runc shim leaves it down (MOSE does better)");
        return;
    }
    let e = env("conf");
    let (id, id2) = ("lo1", "lo2");
    e.run_detached(
        id,
        &[],
        &[
            "sh",
            "-c",
            "echo hello > /tmp/index.html; httpd -f -p 127.0.0.1:8080 -h /tmp & wait",
        ],
    );
    let pid = e.ctr.task_pid(id).unwrap();
    mose_tests::poll_until("server up", WAIT, || {
        exec(&e, id, "w0", "wget -qO- http://127.0.0.1:8080/index.html")
            .success()
            .then_some(())
    })
    .unwrap();
    checkpoint_and_restore_elsewhere(&e, id, id2, "conf/lo:1");
    let out = exec(
        &e,
        id2,
        "w1",
        "ip link show lo; wget -qO- http://127.0.0.1:8080/index.html",
    );
    assert!(
        out.success() && out.stdout.contains("hello"),
        "loopback works after restore: {out:?}"
    );
    assert!(out.stdout.contains("UP"), "lo is up: {out:?}");
    let p2 = e.ctr.task_pid(id2).unwrap();
    e.ctr.force_remove(id2);
    e.assert_clean(id2, &[pid, p2]);
}

/// A static program holding (`hold PATH`) or trying (`try PATH`: exit 0 when
/// the lock was free) an flock: the test image's busybox has no flock applet.
const LOCKER_C: &str = r#"#include <sys/file.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc != 3) return 2;
    int fd = open(argv[2], O_RDWR | O_CREAT, 0644);
    if (fd < 0) return 3;
    if (strcmp(argv[1], "hold") == 0) {
        if (flock(fd, LOCK_EX) != 0) return 4;
        for (;;) pause();
    }
    return flock(fd, LOCK_EX | LOCK_NB) == 0 ? 0 : 1;
}
"#;

fn build_locker(dir: &std::path::Path) -> std::path::PathBuf {
    let src = dir.join("locker.c");
    let bin = dir.join("locker");
    std::fs::write(&src, LOCKER_C).unwrap();
    let st = std::process::Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("cc (gcc and libc6-dev, installed by setup) builds the locker");
    assert!(st.success(), "cc -static locker.c: {st}");
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_locks_survive_checkpoint_and_restore() {
    if mose_tests::runtime_is_runc() {
        eprintln!("skipped: containerd's runc shim drops them at restore (MOSE does better)");
        return;
    }
    let e = env("conf");
    let c = e.client().await;
    let (id, id2) = ("fl1", "fl2");
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let locker = build_locker(dir.path());
    e.create_container(id, &[], &["sh", "-c", "/locker hold /tmp/lock & wait"])
        .await;
    let pid = c.create_task(id, &Default::default()).await.unwrap();
    std::fs::copy(&locker, e.rootfs_path(id, "/locker")).unwrap();
    c.start(id, "").await.unwrap();
    mose_tests::poll_until("lock taken", WAIT, || {
        let out = exec(&e, id, "t0", "/locker try /tmp/lock; echo rc=$?");
        out.stdout.contains("rc=1").then_some(())
    })
    .unwrap();
    let free = exec(&e, id, "t1", "/locker try /tmp/free; echo rc=$?");
    assert!(
        free.stdout.contains("rc=0"),
        "a free lock is taken: {free:?}"
    );
    checkpoint_and_restore_elsewhere(&e, id, id2, "conf/fl:1");
    let out = exec(&e, id2, "t2", "/locker try /tmp/lock; echo rc=$?");
    assert!(
        out.stdout.contains("rc=1"),
        "the lock is still held after restore: {out:?}"
    );
    let free = exec(&e, id2, "t3", "/locker try /tmp/free; echo rc=$?");
    assert!(free.stdout.contains("rc=0"), "{free:?}");
    let p2 = e.ctr.task_pid(id2).unwrap();
    e.ctr.force_remove(id2);
    e.assert_clean(id2, &[pid, p2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_tty_execs_lose_no_output() {
    let e = env("conf");
    let c = e.client().await;
    let id = "ttyx";
    running(&e, id, &[], &["sleep", "1000"]).await;
    for i in 0..200 {
        let name = format!("t{i}");
        let io = e.fifos(&format!("ttyx-{name}"), false, false, true);
        let out = FifoReader::spawn(io.stdout.as_ref().unwrap());
        c.exec(id, &name, &["sh", "-c", &format!("echo output-{i}")], &io)
            .await
            .unwrap();
        c.start(id, &name).await.unwrap();
        assert_eq!(c.wait(id, &name, WAIT).await.unwrap(), 0);
        let text = out.collect(WAIT).unwrap();
        assert!(
            text.contains(&format!("output-{i}")),
            "tty exec {i} lost its output: {text:?}"
        );
        c.delete_process(id, &name).await.unwrap();
        io.remove();
    }
    assert_eq!(c.state(id, "").await.unwrap().0, status::RUNNING);
    e.ctr.force_remove(id);
}

/// `mosectl checkpoint --address SOCK -n NS ID ARGS…`.
fn mosectl_checkpoint(e: &Env, id: &str, args: &[&str]) -> mose_tests::ctr::Output {
    let mut cmd = std::process::Command::new(mose_tests::target_dir().join("debug/mosectl"));
    cmd.arg("checkpoint")
        .arg("--address")
        .arg(e.cd.socket())
        .args(["-n", &e.ns, id])
        .args(args);
    mose_tests::ctr::run_command(cmd, None, WAIT).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosectl_checkpoint_exit_into_an_image_path_then_restore() {
    // `ctr tasks checkpoint --exit --image-path` sends checkpoint options only
    // to runc-named runtimes; `mosectl checkpoint` offers the same for MOSE
    let e = env("conf");
    let c = e.client().await;
    let id = "mck";
    let pid = running(&e, id, &["--net-host"], &["sh", "-c", COUNTER]).await;
    e.wait_counter(id, 5);
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let image = dir.path().join("image");
    let image_arg = image.display().to_string();
    let out = mosectl_checkpoint(&e, id, &["--exit", "--image-path", &image_arg]);
    assert!(out.success(), "mosectl checkpoint: {out:?}");
    assert!(out.stdout.contains("task stopped"), "{out:?}");
    assert!(image.join("inventory.img").exists());
    assert_eq!(c.wait(id, "", WAIT).await.unwrap(), 137);
    let last = e.counter(id).unwrap();
    c.delete_task(id).await.unwrap();
    // restored from the directory by a create whose runc options name it
    let opts = RuncOptions {
        criu_image_path: image.display().to_string(),
    };
    let rootfs = c.rootfs_mounts(id).await.unwrap();
    c.create_task_with(
        id,
        &Default::default(),
        rootfs,
        None,
        Some(any("containerd.runc.v1.Options", &opts)),
    )
    .await
    .unwrap();
    let rpid = c.start(id, "").await.unwrap();
    mose_tests::poll_until("counter continues", WAIT, || {
        e.counter(id).filter(|v| *v > last && *v < last + 200)
    })
    .unwrap();
    // a relative image path is refused before anything is frozen
    let out = mosectl_checkpoint(&e, id, &["--image-path", "relative/dir"]);
    assert!(
        !out.success() && out.stderr.contains("absolute path"),
        "{out:?}"
    );
    assert_eq!(c.state(id, "").await.unwrap().0, status::RUNNING);
    e.ctr.force_remove(id);
    e.assert_clean(id, &[pid, rpid]);
}
