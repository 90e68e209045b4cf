//! Containers survive a containerd restart and stay manageable.

mod common;

use common::{env, COUNTER, WAIT};
use mose_tests::client::status;
use mose_tests::fifo::FifoReader;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_survive_containerd_restart() {
    let e = env("rst");
    let id = "surv";
    e.run_detached(id, &[], &["sh", "-c", COUNTER]);
    let pid = e.ctr.task_pid(id).unwrap();
    e.wait_counter(id, 3);

    // A second, short-lived task that exits while containerd is down.
    let id2 = "quick";
    e.run_detached(id2, &[], &["sh", "-c", "sleep 0.3; exit 9"]);
    let pid2 = e.ctr.task_pid(id2).unwrap();

    e.cd.restart().expect("restart containerd");
    std::thread::sleep(std::time::Duration::from_millis(600));

    assert_eq!(
        e.ctr.task_status(id).unwrap().as_deref(),
        Some("RUNNING"),
        "log:\n{}",
        e.cd.log_tail(30)
    );
    assert_eq!(
        e.ctr.task_pid(id).unwrap(),
        pid,
        "same process after restart"
    );
    let v = e.counter(id).unwrap();
    e.wait_counter(id, v + 3);

    // New gRPC connection: state, exec, pids.
    let c = e.client().await;
    assert_eq!(c.state(id, "").await.unwrap().0, status::RUNNING);
    let io = e.fifos("surv-x", false, true, false);
    let out = FifoReader::spawn(io.stdout.as_ref().unwrap());
    let err = FifoReader::spawn(io.stderr.as_ref().unwrap());
    c.exec(id, "x", &["cat", "/tmp/c"], &io).await.unwrap();
    c.start(id, "x").await.expect("exec after restart");
    assert_eq!(c.wait(id, "x", WAIT).await.unwrap(), 0);
    let seen: u64 = out.collect(WAIT).unwrap().trim().parse().unwrap();
    assert!(seen > v);
    let _ = err.collect(WAIT);
    c.delete_process(id, "x").await.unwrap();
    io.remove();
    let fifo = e.cd.fifo_dir().display().to_string();
    let o = e
        .ctr
        .run([
            "tasks",
            "exec",
            "--fifo-dir",
            &fifo,
            "--exec-id",
            "y",
            id,
            "sh",
            "-c",
            "exit 5",
        ])
        .unwrap();
    assert_eq!(o.code, Some(5), "{o:?}");
    let pids = c.pids(id).await.unwrap();
    assert!(pids.contains(&pid));

    // The task that exited while containerd was down reports its status.
    assert_eq!(c.wait(id2, "", WAIT).await.unwrap(), 9);
    e.ctr.ok(["tasks", "delete", id2]).unwrap();
    e.ctr.ok(["containers", "delete", id2]).unwrap();
    e.assert_clean(id2, &[pid2]);

    // Kill + delete still work.
    c.kill(id, "", libc::SIGKILL as u32, false).await.unwrap();
    assert_eq!(c.wait(id, "", WAIT).await.unwrap(), 137);
    c.delete_task(id).await.unwrap();
    c.delete_container(id).await.unwrap();
    e.assert_clean(id, &pids);

    // And a restart with nothing running is fine, then new containers work.
    e.cd.restart().unwrap();
    let o = e.run("after", &["--rm"], &["sh", "-c", "exit 2"]);
    assert_eq!(o.code, Some(2), "{o:?}");
    e.assert_clean("after", &[]);
}
