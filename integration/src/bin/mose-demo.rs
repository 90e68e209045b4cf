//! MOSE demo (the README's main command, until live migration lands): a
//! stateful counter runs under the MOSE shim in a private containerd, is
//! checkpointed while running, and is restored into a new container whose
//! count continues where it was. Prints each step with its duration and
//! writes `results/demo.json` and `results/demo.svg`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mose_integration::{ms, plot, print_table, results_dir, write_json};
use mose_tests::{containerd::TestContainerd, ctr::Ctr};

const RUNTIME: &str = "io.containerd.mose.v2";
const NS: &str = "mose-demo";
/// The count lives only in the shell's memory; the file is just a window on it.
const COUNTER: &str = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done";

fn count(ctr: &Ctr, id: &str, n: &mut u32) -> Result<u64> {
    *n += 1;
    let out = ctr
        .ok([
            "tasks",
            "exec",
            "--exec-id",
            &format!("read-{n}"),
            id,
            "cat",
            "/tmp/count",
        ])
        .with_context(|| format!("reading the counter of {id}"))?;
    out.trim()
        .parse()
        .with_context(|| format!("counter of {id} is not a number: {out:?}"))
}

fn step<T>(log: &mut Vec<(String, f64)>, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    eprint!("  {name:<44} ");
    let t = Instant::now();
    let r = f();
    let d = ms(t.elapsed());
    match &r {
        Ok(_) => eprintln!("{d:>8.1} ms"),
        Err(e) => eprintln!("FAILED: {e:#}"),
    }
    log.push((name.to_string(), d));
    r
}

fn main() -> Result<()> {
    println!("MOSE demo: checkpoint a running stateful container and restore it elsewhere\n");
    let mut log = Vec::new();
    let cd = step(
        &mut log,
        "start a private containerd",
        TestContainerd::start,
    )?;
    let image = step(&mut log, "import the busybox test image", || {
        cd.import_test_image(NS)
    })?;
    let ctr = cd.ctr(NS);
    let mut reads = 0;
    step(
        &mut log,
        "run the counter under io.containerd.mose.v2",
        || {
            ctr.ok([
                "run",
                "-d",
                "--runtime",
                RUNTIME,
                &image,
                "svc",
                "sh",
                "-c",
                COUNTER,
            ])
        },
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let before = count(&ctr, "svc", &mut reads)?;
    step(&mut log, "checkpoint (leave running, with rootfs)", || {
        ctr.ok([
            "containers",
            "checkpoint",
            "--task",
            "--rw",
            "svc",
            "mose-demo/svc:ckpt",
        ])
    })?;
    let at_ckpt = count(&ctr, "svc", &mut reads)?;
    step(&mut log, "stop and remove the original", || {
        ctr.ok(["tasks", "kill", "-s", "SIGKILL", "svc"])?;
        mose_tests::poll_until("svc to stop", Duration::from_secs(10), || {
            (ctr.task_status("svc").ok().flatten().as_deref() == Some("STOPPED")).then_some(())
        })?;
        ctr.ok(["tasks", "delete", "svc"])?;
        ctr.ok(["containers", "delete", "svc"])
    })?;
    step(
        &mut log,
        "restore into a new container svc-restored",
        || {
            ctr.ok([
                "containers",
                "restore",
                "--live",
                "--rw",
                "svc-restored",
                "mose-demo/svc:ckpt",
            ])
        },
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let after = count(&ctr, "svc-restored", &mut reads)?;
    println!();
    println!(
        "counter before checkpoint: {before}, at checkpoint: {at_ckpt}, 1 s after restore: {after}"
    );
    let ok = after > at_ckpt && after < at_ckpt + 200;
    if ok {
        println!("=> the restored container continued counting from its checkpointed memory state");
    }
    println!();
    let rows: Vec<Vec<String>> = log
        .iter()
        .map(|(n, d)| vec![n.clone(), format!("{d:.1}")])
        .collect();
    print_table(&["step", "ms"], &rows);

    let dir = results_dir()?;
    let json = serde_json::json!({
        "runtime": RUNTIME,
        "counter": {"before": before, "at_checkpoint": at_ckpt, "after_restore": after},
        "continued": ok,
        "steps": log.iter().map(|(n, d)| serde_json::json!({"name": n, "ms": d})).collect::<Vec<_>>(),
    });
    write_json(&dir.join("demo.json"), &json)?;
    let names: Vec<&str> = log
        .iter()
        .map(|(n, _)| n.split(' ').next().unwrap_or(""))
        .collect();
    plot::grouped_bars(
        &dir.join("demo.svg"),
        "MOSE demo: step durations",
        "ms",
        &names,
        &[(
            "io.containerd.mose.v2",
            log.iter().map(|(_, d)| *d).collect(),
        )],
    )?;
    println!(
        "\nwrote {} and {}",
        dir.join("demo.json").display(),
        dir.join("demo.svg").display()
    );
    let _ = ctr.run(["tasks", "kill", "-s", "SIGKILL", "svc-restored"]);
    if !ok {
        bail!(
            "the restored counter did not continue: at checkpoint {at_ckpt}, after restore {after}"
        );
    }
    Ok(())
}
