//! Signals, pause/resume, pids, metrics and resource updates.

mod common;

use std::time::Duration;

use common::{env, COUNTER, WAIT};
use mose_tests::client::status;
use mose_tests::fifo::FifoReader;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_with_chosen_signals() {
    let e = env("sig");
    let c = e.client().await;

    // A handler installed by the init process runs on SIGUSR1.
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

    // Signals without a handler are ignored by a pid namespace's init, so
    // SIGUSR1 goes to a child: it dies, and sh's `wait` returns 128+10.
    let id = "kl";
    e.create_container(id, &[], &["sh", "-c", "sleep 1000 & wait $!"])
        .await;
    let pid = c.create_task(id, &Default::default()).await.unwrap();
    c.start(id, "").await.unwrap();
    let child = mose_tests::poll_until_async("the sleep child", WAIT, || async {
        c.pids(id).await.ok()?.into_iter().find(|&p| p != pid)
    })
    .await
    .unwrap();
    let out = e
        .ctr
        .run([
            "tasks",
            "exec",
            "--exec-id",
            "k",
            id,
            "killall",
            "-USR1",
            "sleep",
        ])
        .unwrap();
    // killall may itself be SIGKILLed (137) when the init it signalled
    // dies first and takes its pid namespace down: either way it did its job
    assert!(out.success() || out.code == Some(137), "{out:?}");
    assert_eq!(c.wait(id, "", WAIT).await.unwrap(), 138);
    c.delete_task(id).await.unwrap();
    c.delete_container(id).await.unwrap();
    e.assert_clean(id, &[pid, child]);

    // SIGKILL → 137, via ctr.
    let id = "k9";
    e.run_detached(id, &[], &["sleep", "1000"]);
    let pid = e.ctr.task_pid(id).unwrap();
    e.ctr
        .ok(["tasks", "kill", "-s", "SIGKILL", id])
        .expect("ctr tasks kill");
    assert_eq!(c.wait(id, "", WAIT).await.unwrap(), 137);
    assert_eq!(e.ctr.task_status(id).unwrap().as_deref(), Some("STOPPED"));
    e.ctr.ok(["tasks", "delete", id]).unwrap();
    e.ctr.ok(["containers", "delete", id]).unwrap();
    e.assert_clean(id, &[pid]);

    // SIGTERM to init with a TERM trap, via ctr's default signal.
    let id = "term";
    e.create_container(
        id,
        &[],
        &[
            "sh",
            "-c",
            "trap 'exit 143' TERM; while true; do sleep 0.05; done",
        ],
    )
    .await;
    let pid = c.create_task(id, &Default::default()).await.unwrap();
    c.start(id, "").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    e.ctr.ok(["tasks", "kill", id]).unwrap();
    assert_eq!(c.wait(id, "", WAIT).await.unwrap(), 143);
    e.ctr.force_remove(id);
    e.assert_clean(id, &[pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_all_kills_every_process() {
    let e = env("sig");
    let c = e.client().await;
    let id = "all";
    e.create_container(id, &[], &["sh", "-c", "sleep 1000 & sleep 1000 & wait"])
        .await;
    let pid = c.create_task(id, &Default::default()).await.unwrap();
    c.start(id, "").await.unwrap();
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
    e.assert_clean(id, &pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_freeze_the_counter() {
    let e = env("pause");
    let c = e.client().await;
    let id = "cnt";
    e.run_detached(id, &[], &["sh", "-c", COUNTER]);
    let pid = e.ctr.task_pid(id).unwrap();
    e.wait_counter(id, 5);

    c.pause(id).await.expect("pause");
    assert_eq!(c.state(id, "").await.unwrap().0, status::PAUSED);
    assert_eq!(e.ctr.task_status(id).unwrap().as_deref(), Some("PAUSED"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let frozen = e.counter(id).expect("counter readable");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(e.counter(id), Some(frozen), "counter advanced while paused");

    c.resume(id).await.expect("resume");
    assert_eq!(c.state(id, "").await.unwrap().0, status::RUNNING);
    let after = e.wait_counter(id, frozen + 3);
    assert!(after > frozen);

    // Same through ctr.
    e.ctr.ok(["tasks", "pause", id]).unwrap();
    assert_eq!(e.ctr.task_status(id).unwrap().as_deref(), Some("PAUSED"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let frozen = e.counter(id).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(e.counter(id), Some(frozen));
    e.ctr.ok(["tasks", "resume", id]).unwrap();
    assert_eq!(e.ctr.task_status(id).unwrap().as_deref(), Some("RUNNING"));
    e.wait_counter(id, frozen + 3);

    e.ctr.force_remove(id);
    e.assert_clean(id, &[pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pids_list_init_and_children() {
    let e = env("pids");
    let c = e.client().await;
    let id = "tree";
    e.run_detached(id, &[], &["sh", "-c", "sleep 1001 & sleep 1002 & wait"]);
    let init = e.ctr.task_pid(id).unwrap();
    let pids = mose_tests::poll_until_async("3 pids", WAIT, || async {
        let p = c.pids(id).await.ok()?;
        (p.len() == 3).then_some(p)
    })
    .await
    .unwrap();
    assert!(pids.contains(&init), "init {init} in {pids:?}");
    let mut children: Vec<String> = pids
        .iter()
        .filter(|&&p| p != init)
        .map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap();
            let ppid: u32 = stat
                .rsplit_once(") ")
                .unwrap()
                .1
                .split(' ')
                .nth(1)
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(ppid, init, "parent of {p}");
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .unwrap()
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .collect();
    children.sort();
    assert_eq!(children, ["sleep 1001", "sleep 1002"]);
    let mut ctr_pids = e.ctr.task_pids(id).unwrap();
    ctr_pids.sort();
    let mut sorted = pids.clone();
    sorted.sort();
    assert_eq!(ctr_pids, sorted, "ctr tasks ps agrees");
    e.ctr.force_remove(id);
    e.assert_clean(id, &pids);
}

/// Value of `metric` in `ctr tasks metrics` output.
fn ctr_metric(out: &str, metric: &str) -> Option<u64> {
    out.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(metric)).then(|| it.next()?.parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_memory_and_cpu() {
    let e = env("stats");
    let c = e.client().await;
    let id = "busy";
    e.run_detached(
        id,
        &[],
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

    let out = e
        .ctr
        .ok(["tasks", "metrics", id])
        .expect("ctr tasks metrics");
    assert!(
        ctr_metric(&out, "memory.usage_in_bytes").unwrap_or(0) > 0,
        "{out}"
    );
    assert!(ctr_metric(&out, "cpuacct.usage").unwrap_or(0) > 0, "{out}");

    e.ctr.force_remove(id);
    e.assert_clean(id, &[pid]);
}

/// memory.limit_in_bytes of the memory cgroup of `pid` (cgroup v1).
fn memory_limit_of(pid: u32) -> u64 {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = cg
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrl, p) = (f.next()?, f.next()?, f.next()?);
            ctrl.split(',')
                .any(|c| c == "memory")
                .then(|| p.to_string())
        })
        .expect("memory cgroup (cgroup v1) of the task");
    std::fs::read_to_string(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_memory_limit() {
    let e = env("upd");
    let c = e.client().await;
    let id = "upd";
    // ctr 1.6 has no `tasks update`, so set an initial limit with `ctr run`
    // and change it through the gRPC Tasks.Update API.
    e.run_detached(id, &["--memory-limit", "134217728"], &["sleep", "1000"]);
    let pid = e.ctr.task_pid(id).unwrap();
    assert_eq!(memory_limit_of(pid), 134217728);

    c.update(id, &serde_json::json!({ "memory": { "limit": 67108864 } }))
        .await
        .expect("update memory limit");
    assert_eq!(memory_limit_of(pid), 67108864);
    let m = c.metrics_v1(id).await.unwrap();
    assert_eq!(m.memory.usage.as_ref().map(|u| u.limit), Some(67108864));
    let out = e.ctr.ok(["tasks", "metrics", id]).unwrap();
    assert_eq!(ctr_metric(&out, "memory.limit_in_bytes"), Some(67108864));

    // A bad update (invalid resources JSON) fails and leaves the limit alone.
    let bad = c
        .tasks()
        .update(c.req(containerd_client::services::v1::UpdateTaskRequest {
            container_id: id.into(),
            resources: Some(prost_types::Any {
                type_url: mose_tests::client::RESOURCES_TYPE_URL.into(),
                value: b"{not json".to_vec(),
            }),
            annotations: Default::default(),
        }))
        .await;
    assert!(bad.is_err(), "update with garbage resources must fail");
    assert_eq!(memory_limit_of(pid), 67108864);

    e.ctr.force_remove(id);
    e.assert_clean(id, &[pid]);
}
