//! `mose-testbed`: brings MOSE's N-node edge testbed (netns + bridge + one
//! containerd per node) up and leaves it running, shows it, tears it down.
//!
//! ```text
//! mose-testbed up [--nodes N] [--name NAME] [--rate-mbit R] [--subnet A.B.C.0] [--plugin 'PROG ARGS…']
//! mose-testbed status [--name NAME]
//! mose-testbed down (--name NAME | --all)
//! ```
//!
//! `up` prints the testbed description (JSON, also kept in
//! `/run/mose-testbed/<name>.json`). Plugin arguments may use `{node}`, `{ip}`,
//! `{dir}` and `{containerd_sock}`. Must run as root.

use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use mose_integration::testbed::{PluginCommand, Testbed, TestbedOptions};

#[derive(Debug, Parser)]
#[command(
    name = "mose-testbed",
    args_override_self = true,
    arg_required_else_help = true,
    about = "Brings MOSE's N-node edge testbed (netns + bridge + one containerd per node) up and \
             leaves it running, shows it, tears it down; must run as root"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Bring a testbed up and print its description (JSON, also kept in
    /// /run/mose-testbed/<name>.json).
    Up(UpArgs),
    /// Show the testbeds (or one), their nodes and whether each containerd answers.
    Status {
        /// Only this testbed [default: all].
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove a testbed, or all of them (a no-op for what is already gone).
    #[command(group(clap::ArgGroup::new("which").required(true).args(["name", "all"])))]
    Down {
        /// The testbed to remove.
        #[arg(long)]
        name: Option<String>,
        /// Every testbed, and the remains of any without a state file.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Number of nodes, 1 to 200 [default: 2].
    #[arg(long, value_name = "N")]
    nodes: Option<usize>,
    /// Testbed name, [a-z0-9] [default: derived from the pid].
    #[arg(long)]
    name: Option<String>,
    /// Rate limit of every node's link, in Mbit/s [default: none].
    #[arg(long, value_name = "R")]
    rate_mbit: Option<u32>,
    /// Network address of the testbed's /24, A.B.C.0[/24] [default: a free 10.77.<k>.0].
    #[arg(long, value_name = "A.B.C.0", value_parser = parse_subnet)]
    subnet: Option<Ipv4Addr>,
    /// Plugin started in each node's netns once its containerd answers:
    /// 'PROG ARGS…' as one argument, split at whitespace; {node}, {ip}, {dir}
    /// and {containerd_sock} are replaced per node.
    #[arg(long, value_name = "'PROG ARGS'", value_parser = parse_plugin)]
    plugin: Option<PluginCommand>,
}

/// `A.B.C.0` or `A.B.C.0/24`.
fn parse_subnet(s: &str) -> Result<Ipv4Addr, String> {
    s.trim_end_matches("/24")
        .parse()
        .map_err(|_| format!("{s:?} is not A.B.C.0[/24]"))
}

fn parse_plugin(s: &str) -> Result<PluginCommand, String> {
    PluginCommand::parse(s).map_err(|e| format!("{e:#}"))
}

fn up(a: UpArgs) -> Result<()> {
    let mut opts = TestbedOptions::default();
    if let Some(n) = a.nodes {
        opts.nodes = n;
    }
    opts.name = a.name;
    opts.rate_mbit = a.rate_mbit;
    opts.subnet = a.subnet;
    opts.plugin = a.plugin.map(mose_integration::testbed::Plugin::Template);
    let tb = Testbed::up(opts)?;
    let info = tb.detach()?;
    println!("{}", serde_json::to_string_pretty(&info)?);
    eprintln!("remove it with: mose-testbed down --name {}", info.name);
    Ok(())
}

fn status(name: Option<String>) -> Result<()> {
    let names = match name {
        Some(n) => vec![n],
        None => Testbed::list()?,
    };
    if names.is_empty() {
        println!("no testbeds");
    }
    for orphan in Testbed::list_orphans()? {
        println!("{orphan}: remains without a state file (mose-testbed down --name {orphan})");
    }
    for name in names {
        let tb = Testbed::load(&name)?;
        let i = tb.info();
        println!(
            "{}: {} node(s), subnet {}, bridge {} ({}), dir {}",
            i.name,
            i.nodes.len(),
            i.subnet,
            i.bridge,
            i.bridge_ip,
            i.dir.display()
        );
        for n in tb.nodes() {
            let answers = UnixStream::connect(n.containerd_socket()).is_ok()
                && n.ctr("default")
                    .with_timeout(Duration::from_secs(5))
                    .run(["version"])
                    .is_ok_and(|o| o.success());
            let netns = mose_integration::testbed::net::netns_exists(n.netns());
            println!(
                "  {} {} netns {}{} containerd {} ({})",
                n.name(),
                n.ip(),
                n.netns(),
                if netns { "" } else { " (MISSING)" },
                n.containerd_socket().display(),
                if answers { "answers" } else { "NOT answering" }
            );
        }
    }
    Ok(())
}

fn down(name: Option<String>, all: bool) -> Result<()> {
    let names = match (all, name) {
        (true, None) => {
            let mut v = Testbed::list()?;
            v.extend(Testbed::list_orphans()?);
            v
        }
        (false, Some(n)) => vec![n],
        _ => bail!("give either --name NAME or --all"),
    };
    let mut failed = Vec::new();
    for name in names {
        // Without a state file the remains are found by their names; when
        // nothing is left this is a no-op (down is idempotent).
        let res = Testbed::recover(&name).and_then(Testbed::down);
        match res {
            Ok(()) => println!("{name}: down"),
            Err(e) => {
                eprintln!("{name}: {e:#}");
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        bail!("could not fully remove: {failed:?}");
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Up(a) => up(a),
        Cmd::Status { name } => status(name),
        Cmd::Down { name, all } => down(name, all),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mose-testbed").chain(args.iter().copied()))
    }

    #[test]
    fn command_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn commands_parse() {
        let c = parse(&[
            "up",
            "--nodes",
            "3",
            "--subnet",
            "10.9.8.0/24",
            "--rate-mbit",
            "100",
            "--plugin",
            "mose-plugin --node={node} {ip}:7000",
        ])
        .expect("up");
        let Cmd::Up(a) = c.cmd else {
            panic!("not up: {c:?}");
        };
        assert_eq!(a.nodes, Some(3));
        assert_eq!(a.subnet, Some(Ipv4Addr::new(10, 9, 8, 0)));
        assert_eq!(a.rate_mbit, Some(100));
        let p = a.plugin.expect("plugin");
        assert_eq!((p.program.as_str(), p.args.len()), ("mose-plugin", 2));
        assert!(matches!(
            parse(&["status"]).expect("status").cmd,
            Cmd::Status { name: None }
        ));
        assert!(matches!(
            parse(&["down", "--all"]).expect("down").cmd,
            Cmd::Down {
                name: None,
                all: true
            }
        ));
        for bad in [
            &[][..],
            &["start"],
            &["up", "--bogus"],
            &["up", "--nodes", "two"],
            &["up", "--subnet", "10.9.8"],
            &["up", "--plugin", " "],
            &["status", "extra"],
            &["down"],
            &["down", "--name", "a", "--all"],
        ] {
            let e = parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
    }
}
