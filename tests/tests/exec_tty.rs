//! Exec processes and terminals (ctr under a pty, and gRPC with terminal=true).

mod common;

use std::time::Duration;

use common::{env, WAIT};
use mose_tests::client::status;
use mose_tests::fifo::{FifoReader, FifoWriter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_exec_exit_code_and_output() {
    let e = env("exec");
    let c = e.client().await;
    let id = "ex";
    e.create_container(id, &[], &["sleep", "1000"]).await;
    let pid = c.create_task(id, &Default::default()).await.unwrap();
    c.start(id, "").await.unwrap();

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
    let epid = c.start(id, "e1").await.expect("start exec");
    assert!(epid > 0 && epid != pid);
    assert_eq!(c.wait(id, "e1", WAIT).await.unwrap(), 7);
    assert_eq!(out.collect(WAIT).unwrap(), "exec-out\n");
    assert_eq!(err.collect(WAIT).unwrap(), "exec-err\n");
    let (st, code) = c.state(id, "e1").await.unwrap();
    assert_eq!((st, code), (status::STOPPED, 7));
    assert_eq!(c.delete_process(id, "e1").await.unwrap(), 7);
    assert!(c.state(id, "e1").await.is_err(), "exec gone after delete");
    io.remove();

    // Same exec id can be reused once deleted; the init process is unaffected.
    let io2 = e.fifos("ex-e1b", false, true, false);
    let out2 = FifoReader::spawn(io2.stdout.as_ref().unwrap());
    let err2 = FifoReader::spawn(io2.stderr.as_ref().unwrap());
    c.exec(id, "e1", &["cat", "/etc/passwd"], &io2)
        .await
        .unwrap();
    c.start(id, "e1").await.unwrap();
    assert_eq!(c.wait(id, "e1", WAIT).await.unwrap(), 0);
    assert!(out2.collect(WAIT).unwrap().starts_with("root:x:0:0"));
    let _ = err2.collect(WAIT);
    c.delete_process(id, "e1").await.unwrap();
    io2.remove();
    assert_eq!(c.state(id, "").await.unwrap().0, status::RUNNING);

    c.kill(id, "", libc::SIGKILL as u32, false).await.unwrap();
    assert_eq!(c.wait(id, "", WAIT).await.unwrap(), 137);
    c.delete_task(id).await.unwrap();
    c.delete_container(id).await.unwrap();
    e.assert_clean(id, &[pid, epid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_exec_stdin_and_kill() {
    let e = env("exec");
    let c = e.client().await;
    let id = "exi";
    e.create_container(id, &[], &["sleep", "1000"]).await;
    c.create_task(id, &Default::default()).await.unwrap();
    c.start(id, "").await.unwrap();

    let io = e.fifos("exi-cat", true, true, false);
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

    // An exec killed by a signal reports 128+signal; SIGUSR1 (not pid 1) kills.
    c.exec(id, "slp", &["sleep", "1000"], &Default::default())
        .await
        .unwrap();
    let spid = c.start(id, "slp").await.unwrap();
    c.kill(id, "slp", libc::SIGUSR1 as u32, false)
        .await
        .unwrap();
    assert_eq!(c.wait(id, "slp", WAIT).await.unwrap(), 128 + 10);
    c.delete_process(id, "slp").await.unwrap();
    assert!(!mose_tests::cleanup::process_alive(spid));

    e.ctr.force_remove(id);
    e.assert_clean(id, &[spid]);
}

#[test]
fn ctr_exec_exit_code_and_output() {
    let e = env("exec");
    let id = "cex";
    e.run_detached(id, &[], &["sleep", "1000"]);
    let fifo = e.cd.fifo_dir().display().to_string();
    let out = e
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
    assert_eq!(out.code, Some(7), "{out:?}");
    assert_eq!(out.stdout, "hello-exec\n");
    let out = e
        .ctr
        .run([
            "tasks",
            "exec",
            "--fifo-dir",
            &fifo,
            "--exec-id",
            "x2",
            id,
            "true",
        ])
        .unwrap();
    assert_eq!(out.code, Some(0), "{out:?}");
    let pid = e.ctr.task_pid(id).unwrap();
    e.ctr.force_remove(id);
    e.assert_clean(id, &[pid]);
}

/// `sleep 0.2` after printing: ctr 1.6 may stop copying a console's output
/// as soon as the process exits, dropping its last bytes.
#[test]
fn ctr_run_and_exec_with_tty() {
    let e = env("tty");
    let fifo = e.cd.fifo_dir().display().to_string();
    let out = e
        .ctr
        .run_in_pty(&[
            "run",
            "--rm",
            "-t",
            "--fifo-dir",
            &fifo,
            "--runtime",
            &e.rt,
            &e.image,
            "t1",
            "sh",
            "-c",
            "tty; sleep 0.2; exit 5",
        ])
        .unwrap();
    assert_eq!(out.code, Some(5), "{out:?}");
    assert!(out.stdout.contains("/dev/pts/0"), "{out:?}");

    let id = "t2";
    e.run_detached(id, &[], &["sleep", "1000"]);
    let out = e
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
    assert_eq!(out.code, Some(6), "{out:?}");
    assert!(out.stdout.contains("/dev/pts/"), "{out:?}");
    let pid = e.ctr.task_pid(id).unwrap();
    e.ctr.force_remove(id);
    e.assert_clean("t1", &[]);
    e.assert_clean(id, &[pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_tty_and_resize() {
    let e = env("tty");
    let c = e.client().await;
    let id = "gt";
    e.create_container(id, &["-t"], &["sh", "-c", "tty; read x; stty size; exit 4"])
        .await;
    let io = e.fifos(id, true, false, true);
    let out = FifoReader::spawn(io.stdout.as_ref().unwrap());
    let mut stdin = FifoWriter::open(io.stdin.as_ref().unwrap()).unwrap();
    let pid = c.create_task(id, &io).await.expect("create with terminal");
    c.start(id, "").await.unwrap();
    out.wait_for("/dev/pts/0", WAIT).unwrap();
    c.resize_pty(id, "", 123, 45).await.expect("resize pty");
    stdin.write(b"go\n").unwrap();
    out.wait_for("45 123", WAIT).unwrap();
    assert_eq!(c.wait(id, "", WAIT).await.unwrap(), 4);

    // Exec with its own terminal, resized before it prints.
    // (The container has exited; run a new one for the exec.)
    stdin.close();
    let _ = out.collect(WAIT);
    c.delete_task(id).await.unwrap();
    c.delete_container(id).await.unwrap();
    io.remove();
    e.assert_clean(id, &[pid]);

    let id = "gt2";
    e.create_container(id, &[], &["sleep", "1000"]).await;
    c.create_task(id, &Default::default()).await.unwrap();
    c.start(id, "").await.unwrap();
    let io = e.fifos("gt2-x", true, false, true);
    let out = FifoReader::spawn(io.stdout.as_ref().unwrap());
    let mut stdin = FifoWriter::open(io.stdin.as_ref().unwrap()).unwrap();
    c.exec(id, "x", &["sh", "-c", "tty; read x; stty size"], &io)
        .await
        .unwrap();
    c.start(id, "x").await.unwrap();
    out.wait_for("/dev/pts/", WAIT).unwrap();
    c.resize_pty(id, "x", 77, 22)
        .await
        .expect("resize exec pty");
    tokio::time::sleep(Duration::from_millis(50)).await;
    stdin.write(b"go\n").unwrap();
    out.wait_for("22 77", WAIT).unwrap();
    assert_eq!(c.wait(id, "x", WAIT).await.unwrap(), 0);
    stdin.close();
    let _ = out.collect(WAIT);
    c.delete_process(id, "x").await.unwrap();
    io.remove();
    e.ctr.force_remove(id);
    e.assert_clean(id, &[]);
}
