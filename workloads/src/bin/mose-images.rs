//! `mose-images`: builds the OCI archives of MOSE's workloads and imports
//! them into containerd.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mose_workloads::image::ctr_import;
use mose_workloads::images::{
    cache_dir, redis_archive, state_service_archive, REDIS_REF, STATE_SERVICE_REF,
};

#[derive(Debug, Parser)]
#[command(
    name = "mose-images",
    args_override_self = true,
    arg_required_else_help = true,
    about = "Builds the OCI archives of MOSE's workloads (state service, redis) and imports them \
             into containerd",
    after_help = "Archives are cached by content hash in <target>/mose-workloads; `build --out` \
                  copies them to DIR/state-service.tar and DIR/redis.tar."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build the archives (or take them from the cache) and print `REF PATH BYTES` for each.
    Build {
        /// Copy the archives to DIR/state-service.tar and DIR/redis.tar.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        #[command(flatten)]
        images: Images,
    },
    /// Build the archives (or take them from the cache) and import them with `ctr images import`.
    Import {
        /// containerd's socket.
        #[arg(
            long,
            short = 'a',
            value_name = "SOCK",
            default_value = "/run/containerd/containerd.sock"
        )]
        address: PathBuf,
        /// containerd namespace to import into.
        #[arg(long, short = 'n', value_name = "NS", default_value = "default")]
        namespace: String,
        #[command(flatten)]
        images: Images,
    },
}

/// What goes into the archives (both commands).
#[derive(Debug, clap::Args)]
struct Images {
    /// The mose-state-service binary to put in its image [default: the one next to this program].
    #[arg(long = "state-service-bin", value_name = "PATH")]
    bin: Option<PathBuf>,
    /// Leave out the redis image.
    #[arg(long)]
    no_redis: bool,
}

/// Builds (or takes from the cache) the archives: `(ref, path)`.
fn archives(i: &Images) -> Result<Vec<(&'static str, PathBuf)>> {
    let cache = cache_dir();
    let mut v = vec![(
        STATE_SERVICE_REF,
        state_service_archive(i.bin.as_deref(), &cache)?,
    )];
    if !i.no_redis {
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

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Build { out, images } => {
            for (r, path) in archives(&images)? {
                let path = match &out {
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
        Cmd::Import {
            address,
            namespace,
            images,
        } => {
            for (r, path) in archives(&images)? {
                ctr_import(&address, &namespace, &path)?;
                println!("imported {r} into {namespace} ({})", address.display());
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse().cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mose-images: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mose-images").chain(args.iter().copied()))
    }

    #[test]
    fn command_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn callers_parse() {
        // as workloads/tests/containers.rs runs it
        let c = parse(&["build", "--out", "/tmp/x", "--state-service-bin", "/b"]).expect("build");
        assert!(matches!(
            c.cmd,
            Cmd::Build {
                out: Some(_),
                images: Images {
                    bin: Some(_),
                    no_redis: false
                }
            }
        ));
        let c = parse(&["import", "-a", "/s", "--namespace", "ns", "--no-redis"]).expect("import");
        let Cmd::Import {
            address,
            namespace,
            images,
        } = c.cmd
        else {
            panic!("not import");
        };
        assert_eq!(
            (address, namespace.as_str(), images.no_redis),
            (PathBuf::from("/s"), "ns", true)
        );
        for bad in [
            &[][..],
            &["list"],
            &["build", "--bogus"],
            &["build", "--address", "/s"],
        ] {
            let e = parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }
}
