//! `mose-images`: builds the OCI archives of MOSE's workloads and imports
//! them into containerd.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use mose_workloads::image::ctr_import;
use mose_workloads::images::{
    cache_dir, redis_archive, state_service_archive, REDIS_REF, STATE_SERVICE_REF,
};

const USAGE: &str = "usage: mose-images build [--out DIR] [--state-service-bin PATH] [--no-redis]
       mose-images import [--address SOCK (/run/containerd/containerd.sock)] [--namespace NS (default)]
                          [--state-service-bin PATH] [--no-redis]
Archives are cached by content hash in <target>/mose-workloads; `build --out` copies them to
DIR/state-service.tar and DIR/redis.tar.";

#[derive(Debug)]
struct Args {
    cmd: String,
    out: Option<PathBuf>,
    address: PathBuf,
    namespace: String,
    bin: Option<PathBuf>,
    redis: bool,
}

fn parse(raw: &[String]) -> Result<Args> {
    let mut it = raw.iter();
    let cmd = it
        .next()
        .context("missing command (build or import)")?
        .clone();
    let mut a = Args {
        cmd,
        out: None,
        address: PathBuf::from("/run/containerd/containerd.sock"),
        namespace: "default".into(),
        bin: None,
        redis: true,
    };
    while let Some(f) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{f} needs a value"))
        };
        match f.as_str() {
            "--out" => a.out = Some(value()?.into()),
            "--address" | "-a" => a.address = value()?.into(),
            "--namespace" | "-n" => a.namespace = value()?,
            "--state-service-bin" => a.bin = Some(value()?.into()),
            "--no-redis" => a.redis = false,
            o => bail!("unknown argument {o:?}"),
        }
    }
    Ok(a)
}

/// Builds (or takes from the cache) the archives: `(ref, path)`.
fn archives(a: &Args) -> Result<Vec<(&'static str, PathBuf)>> {
    let cache = cache_dir();
    let mut v = vec![(
        STATE_SERVICE_REF,
        state_service_archive(a.bin.as_deref(), &cache)?,
    )];
    if a.redis {
        v.push((REDIS_REF, redis_archive(&cache)?));
    }
    Ok(v)
}

fn copy_to(src: &Path, dir: &Path, name: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dst = dir.join(name);
    std::fs::copy(src, &dst)
        .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    Ok(dst)
}

fn run(a: Args) -> Result<()> {
    match a.cmd.as_str() {
        "build" => {
            for (r, path) in archives(&a)? {
                let path = match &a.out {
                    Some(dir) => {
                        let name = if r == REDIS_REF {
                            "redis.tar"
                        } else {
                            "state-service.tar"
                        };
                        copy_to(&path, dir, name)?
                    }
                    None => path,
                };
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                println!("{r} {} {size}", path.display());
            }
        }
        "import" => {
            for (r, path) in archives(&a)? {
                ctr_import(&a.address, &a.namespace, &path)?;
                println!(
                    "imported {r} into {} ({})",
                    a.namespace,
                    a.address.display()
                );
            }
        }
        other => bail!("unknown command {other:?}"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.is_empty() || raw.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return if raw.is_empty() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    match parse(&raw).and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mose-images: {e:#}");
            ExitCode::FAILURE
        }
    }
}
