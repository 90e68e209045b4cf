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

use anyhow::{bail, Context, Result};
use mose_integration::testbed::{PluginCommand, Testbed, TestbedOptions};

const USAGE: &str = "usage:
  mose-testbed up [--nodes N] [--name NAME] [--rate-mbit R] [--subnet A.B.C.0] [--plugin 'PROG ARGS']
  mose-testbed status [--name NAME]
  mose-testbed down (--name NAME | --all)";

/// Parsed `--flag value` pairs and bare `--flags`.
struct Args {
    rest: Vec<String>,
}

impl Args {
    fn value(&mut self, flag: &str) -> Result<Option<String>> {
        let Some(pos) = self.rest.iter().position(|a| a == flag) else {
            return Ok(None);
        };
        if pos + 1 >= self.rest.len() {
            bail!("{flag} needs a value\n{USAGE}");
        }
        let v = self.rest.remove(pos + 1);
        self.rest.remove(pos);
        Ok(Some(v))
    }
    fn flag(&mut self, flag: &str) -> bool {
        match self.rest.iter().position(|a| a == flag) {
            Some(pos) => {
                self.rest.remove(pos);
                true
            }
            None => false,
        }
    }
    fn done(&self) -> Result<()> {
        if !self.rest.is_empty() {
            bail!("unexpected arguments {:?}\n{USAGE}", self.rest);
        }
        Ok(())
    }
}

fn up(mut a: Args) -> Result<()> {
    let mut opts = TestbedOptions::default();
    if let Some(n) = a.value("--nodes")? {
        opts.nodes = n.parse().with_context(|| format!("--nodes {n}"))?;
    }
    opts.name = a.value("--name")?;
    if let Some(r) = a.value("--rate-mbit")? {
        opts.rate_mbit = Some(r.parse().with_context(|| format!("--rate-mbit {r}"))?);
    }
    if let Some(s) = a.value("--subnet")? {
        let addr = s.trim_end_matches("/24");
        opts.subnet = Some(
            addr.parse::<Ipv4Addr>()
                .with_context(|| format!("--subnet {s} (want A.B.C.0[/24])"))?,
        );
    }
    if let Some(p) = a.value("--plugin")? {
        opts.plugin = Some(mose_integration::testbed::Plugin::Template(
            PluginCommand::parse(&p)?,
        ));
    }
    a.done()?;
    let tb = Testbed::up(opts)?;
    let info = tb.detach()?;
    println!("{}", serde_json::to_string_pretty(&info)?);
    eprintln!("remove it with: mose-testbed down --name {}", info.name);
    Ok(())
}

fn status(mut a: Args) -> Result<()> {
    let names = match a.value("--name")? {
        Some(n) => vec![n],
        None => Testbed::list()?,
    };
    a.done()?;
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

fn down(mut a: Args) -> Result<()> {
    let all = a.flag("--all");
    let name = a.value("--name")?;
    a.done()?;
    let names = match (all, name) {
        (true, None) => {
            let mut v = Testbed::list()?;
            v.extend(Testbed::list_orphans()?);
            v
        }
        (false, Some(n)) => vec![n],
        _ => bail!("give either --name NAME or --all\n{USAGE}"),
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
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        bail!("{USAGE}");
    }
    let cmd = argv.remove(0);
    let a = Args { rest: argv };
    match cmd.as_str() {
        "up" => up(a),
        "status" => status(a),
        "down" => down(a),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}
