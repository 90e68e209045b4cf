//! Bad input fails fast with a useful message and leaves nothing behind.

mod common;

use std::time::{Duration, Instant};

use common::{env, Env};
use mose_tests::client::status;

/// Upper bound for an expected failure to be reported.
const FAIL_FAST: Duration = Duration::from_secs(30);

/// Checks that `r` is an error returned within [`FAIL_FAST`] of `start`
/// whose text mentions one of `words` (case-insensitive); returns the text.
fn expect_error<T: std::fmt::Debug>(
    what: &str,
    r: anyhow::Result<T>,
    start: Instant,
    words: &[&str],
) -> String {
    let elapsed = start.elapsed();
    let err = match r {
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
        Err(e) => format!("{e:#}"),
    };
    assert!(elapsed < FAIL_FAST, "{what}: error took {elapsed:?}: {err}");
    let lower = err.to_lowercase();
    assert!(
        words.iter().any(|w| lower.contains(&w.to_lowercase())),
        "{what}: error should mention one of {words:?}: {err}"
    );
    eprintln!("{what}: {err}");
    err
}

/// Under the MOSE shim the message must say precisely what was wrong.
fn mose_says(what: &str, err: &str, needles: &[&str]) {
    if mose_tests::runtime_is_runc() {
        return;
    }
    for n in needles {
        assert!(
            err.contains(n),
            "{what}: MOSE error should contain {n:?}: {err}"
        );
    }
}

/// Deletes container `id` (and a task if one was left) and checks cleanliness.
async fn remove_and_check(e: &Env, id: &str) {
    let c = e.client().await;
    assert!(
        c.state(id, "").await.is_err(),
        "no task may exist after a failed create of {id}"
    );
    c.delete_container(id).await.unwrap();
    e.assert_clean(id, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_task_options_are_rejected() {
    let e = env("bad");
    let c = e.client().await;
    let id = "opts";
    e.create_container(id, &[], &["true"]).await;
    let rootfs = c.rootfs_mounts(id).await.unwrap();
    let opts = prost_types::Any {
        type_url: "example.invalid/mose.test.NoSuchOptions".into(),
        value: vec![0x0a, 0x03, b'x', b'y', b'z'],
    };
    let t = Instant::now();
    let r = c
        .create_task_with(id, &Default::default(), rootfs, None, Some(opts))
        .await;
    let err = expect_error(
        "unknown options",
        r,
        t,
        &["NoSuchOptions", "option", "type", "unknown", "not found"],
    );
    if mose_tests::containerd::containerd_is_2x() {
        // containerd 2.x decodes task options itself (as runc options) and
        // refuses an unknown type before any shim sees it
        mose_tests::skip_note(
            "unknown_task_options_are_rejected",
            &format!(
                "MOSE's own message is not checked: containerd {:?} rejects the \
                 options type itself",
                mose_tests::containerd::containerd_version()
            ),
        );
        assert!(err.contains("NoSuchOptions"), "{err}");
    } else {
        mose_says(
            "unknown options",
            &err,
            &[
                "unsupported runtime options type",
                "NoSuchOptions",
                "containerd.runc.v1.Options",
            ],
        );
    }
    remove_and_check(&e, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_rejected() {
    let e = env("bad");
    let c = e.client().await;

    // Empty process.args.
    let id = "noargs";
    e.create_container(id, &[], &[]).await;
    let mut spec = c.container_spec(id).await.unwrap();
    spec["process"]["args"] = serde_json::json!([]);
    c.set_container_spec(id, &spec).await.unwrap();
    let t = Instant::now();
    let r = c.create_task(id, &Default::default()).await;
    let err = expect_error("empty args", r, t, &["arg"]);
    mose_says(
        "empty args",
        &err,
        &["invalid OCI spec", "process.args is empty"],
    );
    remove_and_check(&e, id).await;

    // Relative cwd.
    let id = "relcwd";
    e.create_container(id, &[], &["true"]).await;
    let mut spec = c.container_spec(id).await.unwrap();
    spec["process"]["cwd"] = serde_json::json!("relative/dir");
    c.set_container_spec(id, &spec).await.unwrap();
    let t = Instant::now();
    let r = c.create_task(id, &Default::default()).await;
    let err = expect_error("relative cwd", r, t, &["cwd", "absolute"]);
    mose_says(
        "relative cwd",
        &err,
        &["process.cwd", "not an absolute path"],
    );
    remove_and_check(&e, id).await;

    // Init binary that does not exist.
    let id = "nobin";
    e.create_container(id, &[], &["/no/such/binary"]).await;
    let t = Instant::now();
    let r = async {
        c.create_task(id, &Default::default()).await?;
        c.start(id, "").await
    }
    .await;
    expect_error("missing binary", r, t, &["/no/such/binary", "no such file"]);
    let _ = c.delete_task(id).await;
    remove_and_check(&e, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_rootfs_is_rejected() {
    let e = env("bad");
    let c = e.client().await;
    let id = "noroot";
    e.create_container(id, &[], &["true"]).await;
    let mut spec = c.container_spec(id).await.unwrap();
    spec["root"]["path"] = serde_json::json!("/nonexistent/mose-missing-rootfs");
    c.set_container_spec(id, &spec).await.unwrap();
    let t = Instant::now();
    // No rootfs mounts: the spec's root path is all there is, and it is missing.
    let r = c
        .create_task_with(id, &Default::default(), vec![], None, None)
        .await;
    let err = expect_error(
        "missing rootfs",
        r,
        t,
        &["rootfs", "mose-missing-rootfs", "no such file", "root"],
    );
    mose_says(
        "missing rootfs",
        &err,
        &["/nonexistent/mose-missing-rootfs", "does not exist"],
    );
    remove_and_check(&e, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_of_missing_binary_fails_cleanly() {
    let e = env("bad");
    let c = e.client().await;
    let id = "exbad";
    e.create_container(id, &[], &["sleep", "1000"]).await;
    let pid = c.create_task(id, &Default::default()).await.unwrap();
    c.start(id, "").await.unwrap();
    let t = Instant::now();
    let r = async {
        c.exec(id, "bad", &["/no/such/exec"], &Default::default())
            .await?;
        c.start(id, "bad").await
    }
    .await;
    expect_error(
        "exec missing binary",
        r,
        t,
        &["/no/such/exec", "no such file"],
    );
    let _ = c.delete_process(id, "bad").await;
    // Duplicate exec ids are refused while the first exists.
    c.exec(id, "dup", &["sleep", "1000"], &Default::default())
        .await
        .unwrap();
    let t = Instant::now();
    let r = c.exec(id, "dup", &["true"], &Default::default()).await;
    expect_error("duplicate exec id", r, t, &["dup", "exist"]);
    assert_eq!(c.state(id, "").await.unwrap().0, status::RUNNING);
    e.ctr.force_remove(id);
    e.assert_clean(id, &[pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_criu_checkpoint_reports_error_and_keeps_task() {
    let e = env("bad");
    let c = e.client().await;
    // An established TCP connection cannot be dumped without open_tcp.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let id = "tcp";
    e.create_container(
        id,
        &["--net-host"],
        &["sh", "-c", &format!("sleep 1000 | nc 127.0.0.1 {port}")],
    )
    .await;
    let pid = c.create_task(id, &Default::default()).await.unwrap();
    c.start(id, "").await.unwrap();
    listener.set_nonblocking(true).unwrap();
    let conn = mose_tests::poll_until("the container's TCP connection", FAIL_FAST, || {
        listener.accept().ok().map(|(s, _)| s)
    })
    .expect("container connects");
    let pids = c.pids(id).await.unwrap();

    let t = Instant::now();
    let r = c.checkpoint(id, None).await;
    let err = expect_error(
        "checkpoint with open TCP connection",
        r,
        t,
        &["criu", "checkpoint", "tcp"],
    );
    // the failing step, and the tail of CRIU's own log
    mose_says(
        "checkpoint with open TCP connection",
        &err,
        &["checkpoint (CRIU dump) failed", "dump.log", "Error ("],
    );
    assert_eq!(c.state(id, "").await.unwrap().0, status::RUNNING);

    // ctr pauses the task around the checkpoint; it must be running afterwards.
    let out = e.ctr.run(["tasks", "checkpoint", id]).unwrap();
    assert!(!out.success(), "ctr checkpoint must fail: {out:?}");
    assert!(!out.stderr.trim().is_empty());
    assert_eq!(e.ctr.task_status(id).unwrap().as_deref(), Some("RUNNING"));
    assert!(mose_tests::cleanup::process_alive(pid));
    drop(conn);

    e.ctr.force_remove(id);
    e.assert_clean(id, &pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_mose_annotations_are_rejected_at_create() {
    if mose_tests::runtime_is_runc() {
        return; // the mose.io/* contract is MOSE's own
    }
    let e = env("bad");
    let c = e.client().await;

    // Through the spec, as the CRI plugin passes pod annotations.
    let id = "annot";
    e.create_container(id, &[], &["true"]).await;
    let mut spec = c.container_spec(id).await.unwrap();
    spec["annotations"] = serde_json::json!({
        "mose.io/max-downtime": "abc",
        "mose.io/objective": "min-downtime",
    });
    c.set_container_spec(id, &spec).await.unwrap();
    let t = Instant::now();
    let r = c.create_task(id, &Default::default()).await;
    let err = expect_error("malformed annotation", r, t, &["mose.io/max-downtime"]);
    mose_says(
        "malformed annotation",
        &err,
        &[
            "annotation mose.io/max-downtime=\"abc\": expected a duration such as 200ms or 1.5s",
            "InvalidArgument",
        ],
    );
    remove_and_check(&e, id).await;

    // Through `ctr run --annotation`: a typo in the key.
    let id = "annotypo";
    let out = e.run(
        id,
        &["--annotation", "mose.io/max-downtme=200ms"],
        &["true"],
    );
    assert!(!out.success(), "ctr run must fail: {out:?}");
    for needle in ["mose.io/max-downtme", "did you mean mose.io/max-downtime?"] {
        assert!(out.stderr.contains(needle), "{needle:?} missing: {out:?}");
    }
    assert!(
        c.state(id, "").await.is_err(),
        "no task may exist after a failed create"
    );
    e.ctr.force_remove(id);
    e.assert_clean(id, &[]);

    // A valid set is accepted and the container runs.
    let id = "annotok";
    let out = e.run(
        id,
        &[
            "--rm",
            "--annotation",
            "mose.io/max-downtime=200ms",
            "--annotation",
            "mose.io/max-migration-time=5s",
            "--annotation",
            "mose.io/objective=min-bandwidth",
            "--annotation",
            "mose.io/max-bandwidth=300Mbit",
            "--annotation",
            "mose.io/technique=precopy",
            "--annotation",
            "mose.io/strict=true",
        ],
        &["echo", "annotated"],
    );
    let out = out.check().expect("valid annotations are accepted");
    assert!(out.stdout.contains("annotated"), "{out:?}");
    e.assert_clean(id, &[]);
}
