//! Shim benchmark: the same image under containerd's own runc shim
//! (`io.containerd.runc.v2`) and under MOSE (`io.containerd.mose.v2`), in one
//! invocation against one private containerd, iterations interleaved so that
//! machine noise hits both alike. Measures through containerd's gRPC Tasks API:
//! task create, create→start, start→first output, checkpoint (leave running)
//! and restore (create from checkpoint + start). Prints medians and the ratio
//! MOSE / runc, writes `results/bench-shim.json` and `results/bench-shim.svg`.
//!
//! Usage: mose-bench-shim [ITERATIONS]   (default 20; see `--help`)

use std::{
    fs::File,
    io::Read,
    path::Path,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use containerd_client::types::Descriptor;
use mose_integration::{median, ms, percentile, plot, print_table, results_dir, write_json};
use mose_tests::{
    client::{CheckpointOptions, Client},
    containerd::TestContainerd,
    fifo::TaskIo,
};

const NS: &str = "mose-bench";
const RUNTIMES: [(&str, &str); 2] = [
    ("runc", "io.containerd.runc.v2"),
    ("mose", "io.containerd.mose.v2"),
];
const METRICS: [&str; 5] = [
    "create",
    "create_to_start",
    "start_to_output",
    "checkpoint",
    "restore",
];
const CRIU_MEDIA_TYPE: &str = "application/vnd.containerd.container.criu.checkpoint.criu.tar";
const CMD: &str = "echo ready; i=0; while true; do i=$((i+1)); sleep 0.05; done";

#[derive(Debug, Parser)]
#[command(
    name = "mose-bench-shim",
    about = "Shim benchmark: the same image under containerd's runc shim and under MOSE, iterations \
             interleaved, against one private containerd",
    after_help = "Measures create, create->start, start->first output, checkpoint and restore; writes \
                  results/bench-shim.json and results/bench-shim.svg (under $MOSE_RESULTS_DIR when set)."
)]
struct Args {
    /// Measured iterations under each runtime (after one warm-up each).
    #[arg(value_name = "ITERATIONS", default_value_t = 20)]
    iterations: usize,
}

/// Records when the first byte arrives on a FIFO.
fn first_byte(path: &Path) -> mpsc::Receiver<Instant> {
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        if let Ok(mut f) = File::open(&p) {
            let mut b = [0u8; 256];
            if matches!(f.read(&mut b), Ok(n) if n > 0) {
                let _ = tx.send(Instant::now());
            }
            // keep draining so the writer never blocks
            while matches!(f.read(&mut b), Ok(n) if n > 0) {}
        }
    });
    rx
}

struct Sample {
    values: [f64; 5],
}

async fn one(cd: &TestContainerd, c: &Client, image: &str, rt: &str, id: &str) -> Result<Sample> {
    let ctr = cd.ctr(NS);
    ctr.ok([
        "containers",
        "create",
        "--runtime",
        rt,
        image,
        id,
        "--",
        "sh",
        "-c",
        CMD,
    ])?;
    let io = TaskIo::create(&cd.fifo_dir(), id, false, true, false)?;
    let stdout = io.stdout.clone().ok_or_else(|| anyhow!("no stdout fifo"))?;
    let first = first_byte(&stdout);
    let _err = first_byte(
        io.stderr
            .as_deref()
            .ok_or_else(|| anyhow!("no stderr fifo"))?,
    );
    let t0 = Instant::now();
    c.create_task(id, &io).await?;
    let t1 = Instant::now();
    c.start(id, "").await?;
    let t2 = Instant::now();
    let t3 = first
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| anyhow!("{rt}: no output from {id} within 30 s"))?;
    std::thread::sleep(Duration::from_millis(200));

    let opts = CheckpointOptions::default().to_any();
    let t4 = Instant::now();
    let descs = checkpoint_leased(cd, id, opts).await?;
    let t5 = Instant::now();
    let criu = descs
        .into_iter()
        .find(|d| d.media_type == CRIU_MEDIA_TYPE)
        .ok_or_else(|| anyhow!("{rt}: checkpoint returned no CRIU image"))?;
    c.kill(id, "", 9, false).await?;
    c.wait(id, "", Duration::from_secs(30)).await?;
    c.delete_task(id).await?;

    let rio = TaskIo::create(&cd.fifo_dir(), &format!("{id}-r"), false, true, false)?;
    let _drain = first_byte(rio.stdout.as_deref().ok_or_else(|| anyhow!("no fifo"))?);
    let _drain_err = first_byte(rio.stderr.as_deref().ok_or_else(|| anyhow!("no fifo"))?);
    let rootfs = c.rootfs_mounts(id).await?;
    let t6 = Instant::now();
    c.create_task_with(id, &rio, rootfs, Some(criu), None)
        .await?;
    c.start(id, "").await?;
    let t7 = Instant::now();
    let (status, _) = c.state(id, "").await?;
    if status != mose_tests::client::status::RUNNING {
        bail!("{rt}: restored task is not running (status {status})");
    }
    c.kill(id, "", 9, false).await?;
    c.wait(id, "", Duration::from_secs(30)).await?;
    c.delete_task(id).await?;
    ctr.ok(["containers", "delete", id])?;
    io.remove();
    rio.remove();
    Ok(Sample {
        values: [
            ms(t1 - t0),
            ms(t2 - t0),
            ms(t3.saturating_duration_since(t1)),
            ms(t5 - t4),
            ms(t7 - t6),
        ],
    })
}

const LEASE: &str = "mose-bench-shim";

/// Checkpoints under a lease, so containerd's garbage collector cannot take
/// the checkpoint before the restore reads it (containerd's own clients do
/// the same).
async fn checkpoint_leased(
    cd: &TestContainerd,
    id: &str,
    opts: prost_types::Any,
) -> Result<Vec<Descriptor>> {
    use containerd_client::services::v1::{tasks_client::TasksClient, CheckpointTaskRequest};
    let channel = containerd_client::connect(cd.socket()).await?;
    let mut req = tonic::Request::new(CheckpointTaskRequest {
        container_id: id.into(),
        parent_checkpoint: String::new(),
        options: Some(opts),
    });
    req.metadata_mut()
        .insert("containerd-namespace", NS.parse()?);
    req.metadata_mut()
        .insert("containerd-lease", LEASE.parse()?);
    let r = TasksClient::new(channel)
        .checkpoint(req)
        .await
        .map_err(|s| anyhow!("checkpoint {id}: {}", s.message()))?;
    Ok(r.into_inner().descriptors)
}

async fn create_lease(cd: &TestContainerd) -> Result<()> {
    use containerd_client::services::v1::{leases_client::LeasesClient, CreateRequest};
    let channel = containerd_client::connect(cd.socket()).await?;
    let mut req = tonic::Request::new(CreateRequest {
        id: LEASE.into(),
        labels: Default::default(),
    });
    req.metadata_mut()
        .insert("containerd-namespace", NS.parse()?);
    LeasesClient::new(channel)
        .create(req)
        .await
        .map_err(|s| anyhow!("create lease: {}", s.message()))?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let n = Args::parse().iterations;
    let cd = TestContainerd::start()?;
    let image = cd.import_test_image(NS)?;
    let c = cd.client(NS).await?;
    create_lease(&cd).await?;
    let mut samples: Vec<Vec<[f64; 5]>> = vec![Vec::new(); RUNTIMES.len()];
    // one warm-up round each (page cache, first shim exec)
    for (i, (name, rt)) in RUNTIMES.iter().enumerate() {
        one(&cd, &c, &image, rt, &format!("warm-{name}"))
            .await
            .with_context(|| format!("warm-up under {rt}"))?;
        let _ = i;
    }
    for it in 0..n {
        // alternate the order so neither runtime always goes first
        let order: Vec<usize> = if it % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
        for i in order {
            let (name, rt) = RUNTIMES[i];
            let s = one(&cd, &c, &image, rt, &format!("b-{name}-{it}"))
                .await
                .with_context(|| format!("iteration {it} under {rt}"))?;
            samples[i].push(s.values);
        }
        eprintln!("[bench-shim] iteration {}/{n} done", it + 1);
    }

    let col = |r: usize, m: usize| samples[r].iter().map(|v| v[m]).collect::<Vec<f64>>();
    let mut rows = Vec::new();
    let mut json_metrics = serde_json::Map::new();
    let mut ratios = Vec::new();
    for (m, metric) in METRICS.iter().enumerate() {
        let (runc, mose) = (col(0, m), col(1, m));
        let (mr, mm) = (median(&runc), median(&mose));
        let ratio = mm / mr;
        ratios.push(ratio);
        rows.push(vec![
            metric.to_string(),
            format!("{mr:.1}"),
            format!("{:.1}", percentile(&runc, 90.0)),
            format!("{mm:.1}"),
            format!("{:.1}", percentile(&mose, 90.0)),
            format!("{ratio:.2}"),
            if ratio <= 1.10 {
                "yes".into()
            } else {
                "NO".into()
            },
        ]);
        json_metrics.insert(
            metric.to_string(),
            serde_json::json!({
                "runc_ms": runc, "mose_ms": mose,
                "runc_median_ms": mr, "mose_median_ms": mm, "ratio": ratio,
            }),
        );
    }
    println!("\nshim benchmark: {n} iterations each, medians in ms (p90 beside)\n");
    print_table(
        &[
            "metric",
            "runc.v2",
            "p90",
            "mose.v2",
            "p90",
            "mose/runc",
            "<=1.10",
        ],
        &rows,
    );
    let dir = results_dir()?;
    write_json(
        &dir.join("bench-shim.json"),
        &serde_json::json!({"iterations": n, "metrics": json_metrics}),
    )?;
    plot::grouped_bars(
        &dir.join("bench-shim.svg"),
        &format!("shim latency, median of {n} (ms)"),
        "ms",
        &METRICS,
        &[
            (
                "io.containerd.runc.v2",
                (0..METRICS.len()).map(|m| median(&col(0, m))).collect(),
            ),
            (
                "io.containerd.mose.v2",
                (0..METRICS.len()).map(|m| median(&col(1, m))).collect(),
            ),
        ],
    )?;
    println!(
        "\nwrote {} and {}",
        dir.join("bench-shim.json").display(),
        dir.join("bench-shim.svg").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("mose-bench-shim").chain(args.iter().copied()))
    }

    #[test]
    fn iterations() {
        Args::command().debug_assert();
        assert_eq!(parse(&[]).expect("default").iterations, 20);
        assert_eq!(parse(&["30"]).expect("30").iterations, 30);
        for bad in [&["x"][..], &["3", "4"], &["--bogus"]] {
            let e = parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }
}
