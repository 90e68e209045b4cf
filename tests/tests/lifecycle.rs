//! Run to completion, exit codes, stdio (stdout/stderr/stdin) and cleanup.

mod common;

use std::time::Duration;

use common::{env, WAIT};
use mose_tests::client::status;
use mose_tests::fifo::{FifoReader, FifoWriter};

#[test]
fn ctr_run_exit_codes_and_output() {
    let e = env("life");
    let ok = e.run("ok-0", &["--rm"], &["sh", "-c", "echo out; echo err >&2"]);
    assert_eq!(ok.code, Some(0), "exit 0 expected: {ok:?}");
    assert_eq!(ok.stdout.trim(), "out", "{ok:?}");
    assert_eq!(ok.stderr.trim(), "err", "stderr kept apart: {ok:?}");

    let bad = e.run("exit-3", &["--rm"], &["sh", "-c", "exit 3"]);
    assert_eq!(bad.code, Some(3), "exit 3 expected: {bad:?}");

    let f = e.run("false", &["--rm"], &["false"]);
    assert_eq!(f.code, Some(1), "{f:?}");

    for id in ["ok-0", "exit-3", "false"] {
        e.assert_clean(id, &[]);
    }
    assert!(e.ctr.list("containers").unwrap().is_empty());
}

/// ctr 1.6 never sends CloseIO when its own stdin hits EOF (non-tty), so the
/// container must stop reading by itself (`head -n 2`).
#[test]
fn ctr_run_stdin_is_forwarded() {
    let e = env("life");
    let out = e
        .ctr
        .run_stdin(
            e.run_args("cat-in", &["--rm"], &["sh", "-c", "head -n 2; echo done"]),
            b"hello from stdin\nline 2\n",
        )
        .expect("ctr run -i");
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "hello from stdin\nline 2\ndone\n", "{out:?}");
    e.assert_clean("cat-in", &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_run_exit_codes_and_separate_streams() {
    let e = env("life");
    let c = e.client().await;
    for (id, script, code) in [
        ("g0", "echo to-out; echo to-err >&2; exit 0", 0u32),
        ("g3", "echo to-out; echo to-err >&2; exit 3", 3),
        ("g42", "echo to-out; echo to-err >&2; exit 42", 42),
    ] {
        e.create_container(id, &[], &["sh", "-c", script]).await;
        let io = e.fifos(id, false, true, false);
        let out = FifoReader::spawn(io.stdout.as_ref().unwrap());
        let err = FifoReader::spawn(io.stderr.as_ref().unwrap());
        let pid = c.create_task(id, &io).await.expect("create task");
        assert!(pid > 0);
        let (st, _) = c.state(id, "").await.expect("state");
        assert_eq!(st, status::CREATED);
        c.start(id, "").await.expect("start");
        let exit = c.wait(id, "", WAIT).await.expect("wait");
        assert_eq!(exit, code, "exit status of {id}");
        let (st, es) = c.state(id, "").await.expect("state");
        assert_eq!((st, es), (status::STOPPED, code));
        assert_eq!(out.collect(WAIT).unwrap(), "to-out\n");
        assert_eq!(err.collect(WAIT).unwrap(), "to-err\n");
        assert_eq!(c.delete_task(id).await.expect("delete task"), code);
        c.delete_container(id).await.expect("delete container");
        io.remove();
        e.assert_clean(id, &[pid]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_stdin_cat_ends_on_close_io() {
    let e = env("life");
    let c = e.client().await;
    let id = "cat";
    e.create_container(id, &[], &["cat"]).await;
    let io = e.fifos(id, true, true, false);
    let out = FifoReader::spawn(io.stdout.as_ref().unwrap());
    let err = FifoReader::spawn(io.stderr.as_ref().unwrap());
    let mut stdin = FifoWriter::open(io.stdin.as_ref().unwrap()).expect("open stdin fifo");
    let pid = c.create_task(id, &io).await.expect("create");
    c.start(id, "").await.expect("start");
    stdin.write(b"ping 1\nping 2\n").unwrap();
    // cat keeps running while stdin is open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, _) = c.state(id, "").await.unwrap();
    assert_eq!(st, status::RUNNING, "cat must wait for more input");
    stdin.close();
    c.close_stdin(id, "").await.expect("close io");
    let exit = c.wait(id, "", WAIT).await.expect("cat ends after CloseIO");
    assert_eq!(exit, 0);
    assert_eq!(out.collect(WAIT).unwrap(), "ping 1\nping 2\n");
    assert_eq!(err.collect(WAIT).unwrap(), "");
    c.delete_task(id).await.unwrap();
    c.delete_container(id).await.unwrap();
    io.remove();
    e.assert_clean(id, &[pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_running_container_leaves_nothing_behind() {
    let e = env("life");
    let c = e.client().await;
    let id = "tree";
    // A small process tree: sh with two background sleepers.
    e.create_container(id, &[], &["sh", "-c", "sleep 1000 & sleep 1000 & wait"])
        .await;
    let io = e.fifos(id, false, true, false);
    let out = FifoReader::spawn(io.stdout.as_ref().unwrap());
    let err = FifoReader::spawn(io.stderr.as_ref().unwrap());
    let pid = c.create_task(id, &io).await.unwrap();
    c.start(id, "").await.unwrap();
    let pids = mose_tests::poll_until_async("3 processes", WAIT, || async {
        let p = c.pids(id).await.unwrap_or_default();
        (p.len() >= 3).then_some(p)
    })
    .await
    .expect("process tree");
    assert!(pids.contains(&pid));
    // Deleting a running task must fail.
    assert!(c.delete_task(id).await.is_err(), "delete of a running task");
    c.kill(id, "", libc::SIGKILL as u32, true).await.unwrap();
    assert_eq!(c.wait(id, "", WAIT).await.unwrap(), 137);
    c.delete_task(id).await.unwrap();
    c.delete_container(id).await.unwrap();
    let _ = out.collect(WAIT);
    let _ = err.collect(WAIT);
    io.remove();
    e.assert_clean(id, &pids);
}
