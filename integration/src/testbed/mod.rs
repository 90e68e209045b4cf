//! An N-node edge testbed on one machine, for MOSE's live-migration tests.
//!
//! Each node is a network namespace joined to a per-run bridge by a veth pair,
//! with its own containerd (running inside the netns, so containers started
//! with `--net-host` live on the node's address) and optionally a plugin
//! process. The root namespace holds the bridge address `<subnet>.1` and acts
//! as the "client" side. Links can be rate-shaped (tbf, both directions) and
//! cut. Everything a run creates is named after the run so that several
//! testbeds can coexist (parallel tests), and [`Testbed::down`] (or `Drop`)
//! removes all of it, also after a panic.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use mose_integration::testbed::{Testbed, TestbedOptions};
//! let tb = Testbed::up(TestbedOptions::default())?;
//! let n1 = tb.node(1)?;
//! n1.ctr("default").ok(["version"])?;
//! tb.set_rate(1, Some(100))?;
//! tb.down()?;
//! # Ok(()) }
//! ```

pub mod net;
mod node;
pub mod segment;

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use mose_tests::cleanup;
use mose_tests::ctr::{wait_timeout, Ctr};
use serde::{Deserialize, Serialize};

pub use node::{Node, NODE_IFACE};

/// `/run/mose/incoming/<testbed dir name>`: the node agents' work dirs
/// (`<node>` under it, a tmpfs each) by the testbed's convention.
pub fn incoming_root(testbed_dir: &Path) -> PathBuf {
    Path::new("/run/mose/incoming").join(testbed_dir.file_name().unwrap_or_default())
}

/// Where running testbeds are described (`<name>.json`).
pub const STATE_DIR: &str = "/run/mose-testbed";
/// Longest run name: interface names (`mtb<name>v<i>`) must fit in 15 chars.
pub const MAX_NAME_LEN: usize = 8;
/// Prefix of everything named after a run (netns, dirs, interfaces use `mtb`).
const PREFIX: &str = "mose-tb";
/// How long a containerd may take to answer `ctr version`.
const CONTAINERD_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A plugin command line; `{node}`, `{ip}`, `{dir}` and `{containerd_sock}`
/// in the program, args and env values are replaced per node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PluginCommand {
    /// Program (looked up on the node's PATH: shim dir first).
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

impl PluginCommand {
    /// A command `program args…` (placeholders allowed).
    pub fn new<I, S>(program: impl Into<String>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
        }
    }

    /// Parses a whitespace-separated command line (no quoting), for the CLI.
    pub fn parse(line: &str) -> Result<Self> {
        let mut words = line.split_whitespace();
        let program = words.next().context("empty plugin command")?;
        Ok(Self::new(program, words))
    }

    /// This command with the placeholders filled in for `node`.
    pub fn expand(&self, node: &Node) -> Self {
        let f = |s: &str| {
            s.replace("{node}", node.name())
                .replace("{ip}", &node.ip().to_string())
                .replace("{dir}", &node.dir().display().to_string())
                .replace(
                    "{containerd_sock}",
                    &node.containerd_socket().display().to_string(),
                )
        };
        Self {
            program: f(&self.program),
            args: self.args.iter().map(|a| f(a)).collect(),
            env: self.env.iter().map(|(k, v)| (k.clone(), f(v))).collect(),
        }
    }
}

/// Picks a node's (already expanded) plugin command, or none for that node.
pub type PluginFn = Arc<dyn Fn(&Node) -> Option<PluginCommand> + Send + Sync>;

/// How the plugin of each node is chosen.
#[derive(Clone)]
pub enum Plugin {
    /// The same command on every node, placeholders expanded per node.
    Template(PluginCommand),
    /// A function picking the (already expanded) command per node, or none.
    PerNode(PluginFn),
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Plugin::Template(c) => f.debug_tuple("Template").field(c).finish(),
            Plugin::PerNode(_) => f.write_str("PerNode(<fn>)"),
        }
    }
}

impl Plugin {
    fn command_for(&self, node: &Node) -> Option<PluginCommand> {
        match self {
            Plugin::Template(c) => Some(c.expand(node)),
            Plugin::PerNode(f) => f(node),
        }
    }
}

/// What [`Testbed::up`] builds.
#[derive(Debug, Clone)]
pub struct TestbedOptions {
    /// Number of nodes (1..=200).
    pub nodes: usize,
    /// Run name (`[a-z0-9]`, ≤ [`MAX_NAME_LEN`]); default derived from the pid.
    pub name: Option<String>,
    /// Network address of a /24 (e.g. `10.77.5.0`); default `10.77.<k>.0`
    /// with `k` free (not used by another testbed or interface).
    pub subnet: Option<Ipv4Addr>,
    /// Directory holding `containerd-shim-mose-v2`; default like
    /// [`mose_tests::containerd::shim_dir`].
    pub shim_dir: Option<PathBuf>,
    /// Plugin started in each node's netns once its containerd answers.
    pub plugin: Option<Plugin>,
    /// Initial rate limit of every node's link (Mbit/s), none by default.
    pub rate_mbit: Option<u32>,
}

impl Default for TestbedOptions {
    fn default() -> Self {
        Self {
            nodes: 2,
            name: None,
            subnet: None,
            shim_dir: None,
            plugin: None,
            rate_mbit: None,
        }
    }
}

impl TestbedOptions {
    /// Sets the number of nodes.
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }
    /// Sets the run name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Runs `cmd` (placeholders expanded) as every node's plugin.
    pub fn plugin_template(mut self, cmd: PluginCommand) -> Self {
        self.plugin = Some(Plugin::Template(cmd));
        self
    }
    /// Chooses each node's plugin with `f` (`None`: no plugin on that node).
    pub fn plugin_fn(
        mut self,
        f: impl Fn(&Node) -> Option<PluginCommand> + Send + Sync + 'static,
    ) -> Self {
        self.plugin = Some(Plugin::PerNode(Arc::new(f)));
        self
    }
    /// Sets the initial rate limit of all links.
    pub fn rate_mbit(mut self, mbit: u32) -> Self {
        self.rate_mbit = Some(mbit);
        self
    }
}

/// Serializable description of a testbed (what `mose-testbed up` prints and
/// stores in `/run/mose-testbed/<name>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestbedInfo {
    /// Run name.
    pub name: String,
    /// The /24, e.g. `10.77.5.0/24`.
    pub subnet: String,
    /// Bridge in the root namespace.
    pub bridge: String,
    /// Bridge address (the root namespace's address on the subnet).
    pub bridge_ip: Ipv4Addr,
    /// Run directory (`/tmp/mose-tb-<name>`).
    pub dir: PathBuf,
    /// Shim dir put first on containerd's PATH.
    pub shim_dir: Option<PathBuf>,
    /// Nodes, index 1 first.
    pub nodes: Vec<Node>,
    /// The clients' netns on the service segment (see [`segment`]).
    #[serde(default)]
    pub user_netns: String,
    /// The user netns's veth end in the root namespace (on the bridge).
    #[serde(default)]
    pub user_veth: String,
    /// The user netns's address on the node subnet (its VXLAN underlay).
    #[serde(default = "unspecified")]
    pub user_ip: Ipv4Addr,
}

fn unspecified() -> Ipv4Addr {
    Ipv4Addr::UNSPECIFIED
}

/// A running testbed. Dropping an owning `Testbed` tears it down; one from
/// [`Testbed::load`] or after [`Testbed::detach`] is left running.
pub struct Testbed {
    info: TestbedInfo,
    children: Vec<Child>,
    owned: bool,
}

impl Testbed {
    /// Brings a testbed up: bridge, one netns + veth + containerd (+ plugin)
    /// per node. On error everything created so far is removed again.
    pub fn up(opts: TestbedOptions) -> Result<Testbed> {
        let started = Instant::now();
        if opts.nodes == 0 || opts.nodes > 200 {
            bail!("a testbed needs 1..=200 nodes, not {}", opts.nodes);
        }
        let name = match &opts.name {
            Some(n) => n.clone(),
            // Skip names left behind by an earlier process with our pid.
            None => (0..50)
                .map(|_| default_name())
                .find(|n| !name_taken(n))
                .context("no free default testbed name; run `mose-testbed down --all`")?,
        };
        validate_name(&name)?;
        let shim_dir = opts
            .shim_dir
            .clone()
            .or_else(mose_tests::containerd::shim_dir);
        match &shim_dir {
            Some(d) if d.join(mose_tests::containerd::SHIM_BINARY).exists() => {}
            Some(d) => eprintln!(
                "testbed {name}: warning: no {} in {} (build it: cargo build -p mose-shim)",
                mose_tests::containerd::SHIM_BINARY,
                d.display()
            ),
            None => eprintln!(
                "testbed {name}: warning: {} not found (build it: cargo build -p mose-shim, or set MOSE_SHIM_DIR)",
                mose_tests::containerd::SHIM_BINARY
            ),
        }
        let dir = run_dir(&name);
        let info = reserve(&name, opts.subnet, opts.nodes, &dir, shim_dir)?;
        // From here on, dropping `tb` (error or panic) removes what exists.
        let mut tb = Testbed {
            info,
            children: Vec::new(),
            owned: true,
        };
        eprintln!(
            "testbed {name}: bringing up {} node(s) on {}",
            opts.nodes, tb.info.subnet
        );
        tb.create_network()?;
        tb.start_containerds()?;
        if let Some(plugin) = &opts.plugin {
            tb.start_plugins(plugin)?;
        }
        if let Some(r) = opts.rate_mbit {
            for i in 1..=tb.info.nodes.len() {
                tb.set_rate(i, Some(r))?;
            }
        }
        tb.save()?;
        eprintln!(
            "testbed {name}: up in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Ok(tb)
    }

    /// A testbed described in `/run/mose-testbed/<name>.json` (e.g. made by
    /// `mose-testbed up`). It is not owned: dropping it leaves it running;
    /// call [`Testbed::down`] to remove it.
    pub fn load(name: &str) -> Result<Testbed> {
        validate_name(name)?;
        let path = state_file(name);
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (no testbed named {name}? see `mose-testbed status`)",
                path.display()
            )
        })?;
        let info: TestbedInfo =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(Testbed {
            info,
            children: Vec::new(),
            owned: false,
        })
    }

    /// Names of the testbeds described in `/run/mose-testbed`.
    pub fn list() -> Result<Vec<String>> {
        let rd = match fs::read_dir(STATE_DIR) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("listing {STATE_DIR}")),
        };
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".json")
                    .map(String::from)
            })
            .collect();
        names.sort();
        Ok(names)
    }

    /// Names of runs that left something (a netns `mose-tb-<name>-n<i>` or a
    /// dir `/tmp/mose-tb-<name>`) but have no state file, e.g. after it was
    /// deleted by hand; [`Testbed::recover`] can still remove them.
    pub fn list_orphans() -> Result<Vec<String>> {
        let described: BTreeSet<String> = Testbed::list()?.into_iter().collect();
        let mut names = BTreeSet::new();
        if let Ok(rd) = fs::read_dir(net::NETNS_DIR) {
            for e in rd.flatten() {
                let f = e.file_name();
                let Some(rest) = f.to_str().and_then(|f| f.strip_prefix(PREFIX)) else {
                    continue;
                };
                if let Some((name, _)) = rest.trim_start_matches('-').rsplit_once("-n") {
                    names.insert(name.to_string());
                }
            }
        }
        if let Ok(rd) = fs::read_dir("/tmp") {
            for e in rd.flatten() {
                let f = e.file_name();
                if let Some(name) = f.to_str().and_then(|f| f.strip_prefix("mose-tb-")) {
                    names.insert(name.to_string());
                }
            }
        }
        Ok(names
            .into_iter()
            .filter(|n| validate_name(n).is_ok() && !described.contains(n))
            .collect())
    }

    /// Like [`Testbed::load`], but without a state file rebuilds the
    /// description from what exists (netns, node dirs, bridge, containerd
    /// processes) so that [`Testbed::down`] can remove the remains.
    pub fn recover(name: &str) -> Result<Testbed> {
        validate_name(name)?;
        if state_file(name).exists() {
            return Testbed::load(name);
        }
        let dir = run_dir(name);
        let mut indices = BTreeSet::new();
        let ns_prefix = format!("{PREFIX}-{name}-n");
        if let Ok(rd) = fs::read_dir(net::NETNS_DIR) {
            for e in rd.flatten() {
                if let Some(i) = e
                    .file_name()
                    .to_str()
                    .and_then(|f| f.strip_prefix(&ns_prefix))
                    .and_then(|i| i.parse::<usize>().ok())
                {
                    indices.insert(i);
                }
            }
        }
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                if let Some(i) = e
                    .file_name()
                    .to_str()
                    .and_then(|f| f.strip_prefix('n'))
                    .and_then(|i| i.parse::<usize>().ok())
                {
                    indices.insert(i);
                }
            }
        }
        let bridge = format!("mtb{name}");
        let bridge_ip = net::run("ip", &["-o", "-4", "addr", "show", "dev", &bridge])
            .ok()
            .and_then(|o| {
                o.stdout
                    .split_whitespace()
                    .find_map(|w| w.split_once('/')?.0.parse::<Ipv4Addr>().ok())
            })
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let nodes = indices
            .into_iter()
            .map(|i| {
                let ndir = dir.join(format!("n{i}"));
                let config = ndir.join("config.toml").display().to_string();
                let mut n = Node {
                    name: format!("n{i}"),
                    index: i,
                    netns: format!("{ns_prefix}{i}"),
                    ip: Ipv4Addr::UNSPECIFIED,
                    socket: ndir.join("c.sock"),
                    dir: ndir,
                    host_veth: format!("mtb{name}v{i}"),
                    containerd_pid: None,
                    plugin_pid: None,
                };
                n.containerd_pid = cleanup::processes_mentioning(&config).first().copied();
                n
            })
            .collect();
        Ok(Testbed {
            info: TestbedInfo {
                name: name.to_string(),
                subnet: String::from("unknown (no state file)"),
                bridge,
                bridge_ip,
                dir,
                shim_dir: None,
                nodes,
                user_netns: format!("{PREFIX}-{name}-user"),
                user_veth: format!("mtb{name}u"),
                user_ip: Ipv4Addr::UNSPECIFIED,
            },
            children: Vec::new(),
            owned: false,
        })
    }

    /// Leaves the testbed running after this value is gone (for the CLI);
    /// returns its description, which is also saved for [`Testbed::load`].
    pub fn detach(mut self) -> Result<TestbedInfo> {
        self.save()?;
        self.owned = false;
        // Dropping a `Child` neither kills nor waits: the processes live on.
        self.children.clear();
        Ok(self.info.clone())
    }

    /// Tears everything down (see [`Testbed::teardown`]), then checks that
    /// nothing is left; the error lists what remains.
    pub fn down(mut self) -> Result<()> {
        self.owned = false;
        let started = Instant::now();
        let name = self.info.name.clone();
        eprintln!("testbed {name}: tearing down");
        let result = self.teardown();
        let left = leftovers(&self.info);
        eprintln!(
            "testbed {name}: down in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        result?;
        if !left.is_empty() {
            bail!("testbed {name} left state behind:\n  {}", left.join("\n  "));
        }
        Ok(())
    }

    /// The description (names, addresses, sockets, dirs).
    pub fn info(&self) -> &TestbedInfo {
        &self.info
    }
    /// Run name.
    pub fn name(&self) -> &str {
        &self.info.name
    }
    /// All nodes, index 1 first.
    pub fn nodes(&self) -> &[Node] {
        &self.info.nodes
    }
    /// Node `index` (1-based).
    pub fn node(&self, index: usize) -> Result<&Node> {
        index
            .checked_sub(1)
            .and_then(|i| self.info.nodes.get(i))
            .with_context(|| {
                format!(
                    "testbed {} has nodes 1..={}, not {index}",
                    self.info.name,
                    self.info.nodes.len()
                )
            })
    }
    /// The root namespace's address on the testbed subnet.
    pub fn user_netns(&self) -> &str {
        &self.info.user_netns
    }

    /// Runs `f` on a thread in the user netns (a client on the service
    /// segment, see [`segment`]).
    pub fn spawn_in_user<T, F>(&self, f: F) -> Result<thread::JoinHandle<Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        net::spawn_in_netns(&self.info.user_netns, f)
    }

    /// Like [`Self::spawn_in_user`] but waits for the result.
    pub fn run_in_user<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        net::run_in_netns(&self.info.user_netns, f)
    }

    pub fn bridge_ip(&self) -> Ipv4Addr {
        self.info.bridge_ip
    }
    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.info.dir
    }

    /// Shapes both directions of node `index`'s link (`None`: unshaped).
    pub fn set_rate(&self, index: usize, mbit: Option<u32>) -> Result<()> {
        self.node(index)?.set_rate(mbit)
    }
    /// Takes node `index` off the network (interface down).
    pub fn cut_link(&self, index: usize) -> Result<()> {
        self.node(index)?.cut_link()
    }
    /// Puts node `index` back on the network.
    pub fn restore_link(&self, index: usize) -> Result<()> {
        self.node(index)?.restore_link()
    }

    /// Writes the description to `/run/mose-testbed/<name>.json`.
    fn save(&self) -> Result<()> {
        write_state(&self.info)
    }

    fn create_network(&self) -> Result<()> {
        let i = &self.info;
        fs::create_dir_all(&i.dir).with_context(|| format!("creating {}", i.dir.display()))?;
        net::run_ok("ip", &["link", "add", &i.bridge, "type", "bridge"])
            .with_context(|| format!("creating bridge {}", i.bridge))?;
        net::run_ok(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", i.bridge_ip),
                "dev",
                &i.bridge,
            ],
        )?;
        net::run_ok("ip", &["link", "set", &i.bridge, "up"])?;
        for n in &i.nodes {
            self.create_endpoint(&n.netns, &n.host_veth, n.ip)
                .with_context(|| format!("node {}", n.name))?;
        }
        self.create_endpoint(&i.user_netns, &i.user_veth, i.user_ip)
            .context("the user netns")?;
        self.create_segment()
    }

    /// A netns joined to the bridge by veth `host_veth` (its end inside is
    /// [`NODE_IFACE`] with address `ip`): a node, or the user netns.
    fn create_endpoint(&self, ns: &str, host_veth: &str, ip: Ipv4Addr) -> Result<()> {
        net::run_ok("ip", &["netns", "add", ns]).with_context(|| format!("creating netns {ns}"))?;
        net::run_ok(
            "ip",
            &[
                "link", "add", host_veth, "type", "veth", "peer", "name", NODE_IFACE, "netns", ns,
            ],
        )
        .with_context(|| format!("creating veth {host_veth}"))?;
        net::run_ok(
            "ip",
            &["link", "set", host_veth, "master", &self.info.bridge],
        )?;
        net::run_ok("ip", &["link", "set", host_veth, "up"])?;
        let addr = format!("{ip}/24");
        net::run_ok("ip", &["-n", ns, "addr", "add", &addr, "dev", NODE_IFACE])?;
        net::run_ok("ip", &["-n", ns, "link", "set", NODE_IFACE, "up"])?;
        net::run_ok("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The service segment: a bridge + VXLAN per node, the user's VXLAN,
    /// each flooding to all the others.
    fn create_segment(&self) -> Result<()> {
        let i = &self.info;
        let mut endpoints: Vec<(&str, Ipv4Addr)> =
            i.nodes.iter().map(|n| (n.netns.as_str(), n.ip)).collect();
        endpoints.push((i.user_netns.as_str(), i.user_ip));
        for n in &i.nodes {
            segment::create_node(&n.netns, n.index, n.ip, &n.dir)?;
        }
        segment::create_user(&i.user_netns, i.user_ip)?;
        for (ns, ip) in &endpoints {
            let peers: Vec<Ipv4Addr> = endpoints
                .iter()
                .map(|(_, p)| *p)
                .filter(|p| p != ip)
                .collect();
            segment::flood_to(ns, &peers)?;
        }
        Ok(())
    }

    fn path_env(&self) -> String {
        let mut path = String::new();
        if let Some(d) = &self.info.shim_dir {
            path.push_str(&d.display().to_string());
            path.push(':');
        }
        path.push_str("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path
    }

    /// Starts every node's containerd (in parallel), then waits for each.
    fn start_containerds(&mut self) -> Result<()> {
        let path = self.path_env();
        for idx in 0..self.info.nodes.len() {
            let n = &self.info.nodes[idx];
            for d in [n.root(), n.state(), n.fifo_dir()] {
                fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            }
            if let Some(bin) = &self.info.shim_dir {
                segment::link_pod_cni_plugins(n.dir(), Path::new(CNI_BIN_DIR), bin)?;
            }
            fs::write(n.config_path(), containerd_config(n))
                .with_context(|| format!("writing {}", n.config_path().display()))?;
            let log = open_log(&n.containerd_log())?;
            // containerd's checkpoint temp dirs stay in the node's directory
            // (see mose_tests::containerd::TestContainerd::start)
            let xdg = n.dir().join("xdg");
            fs::create_dir_all(&xdg).with_context(|| format!("creating {}", xdg.display()))?;
            let mut cmd = n.command(mose_tests::containerd::containerd_binary());
            cmd.arg("--config")
                .arg(n.config_path())
                .env("PATH", &path)
                .env("XDG_RUNTIME_DIR", &xdg)
                .envs(segment::node_env(n.dir()))
                .stdin(Stdio::null())
                .stdout(log.try_clone().context("duplicating a log file handle")?)
                .stderr(log);
            // Own process group: a ^C to the test run must not hit it first.
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            let child = cmd.spawn().with_context(|| {
                format!(
                    "spawning containerd for node {} (nsenter, containerd on PATH?)",
                    n.name
                )
            })?;
            self.info.nodes[idx].containerd_pid = Some(child.id());
            self.children.push(child);
        }
        self.save()?;
        for n in &self.info.nodes {
            wait_containerd(n, &mut self.children)?;
        }
        Ok(())
    }

    fn start_plugins(&mut self, plugin: &Plugin) -> Result<()> {
        let path = self.path_env();
        for idx in 0..self.info.nodes.len() {
            let n = &self.info.nodes[idx];
            let Some(pc) = plugin.command_for(n) else {
                continue;
            };
            let log = open_log(&n.plugin_log())?;
            let mut cmd = n.command(&pc.program);
            cmd.args(&pc.args)
                .env("PATH", &path)
                .env("MOSE_NODE", n.name())
                .env("MOSE_NODE_IP", n.ip().to_string())
                .env("MOSE_NODE_DIR", n.dir())
                .env("CONTAINERD_ADDRESS", n.containerd_socket())
                .envs(segment::node_env(n.dir()))
                .envs(pc.env.iter().map(|(k, v)| (k, v)))
                .current_dir(n.dir())
                .stdin(Stdio::null())
                .stdout(log.try_clone().context("duplicating a log file handle")?)
                .stderr(log);
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            let child = cmd
                .spawn()
                .with_context(|| format!("spawning plugin `{}` for node {}", pc.program, n.name))?;
            eprintln!(
                "testbed {}: node {} plugin `{}` pid {}",
                self.info.name,
                n.name,
                pc.program,
                child.id()
            );
            self.info.nodes[idx].plugin_pid = Some(child.id());
            self.children.push(child);
        }
        self.save()?;
        // A plugin failing at once (bad path, bad args) is reported here.
        thread::sleep(Duration::from_millis(200));
        for n in &self.info.nodes {
            let Some(pid) = n.plugin_pid else { continue };
            if let Some(c) = self.children.iter_mut().find(|c| c.id() == pid) {
                if let Some(st) = c.try_wait().context("checking the plugin")? {
                    if !st.success() {
                        bail!(
                            "plugin of node {} exited with {st}; {} tail:\n{}",
                            n.name,
                            n.plugin_log().display(),
                            node::tail(&n.plugin_log(), 20)
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes everything of the run, best effort and idempotent: per node
    /// kills tasks and containers, stops plugin and containerd (SIGTERM, then
    /// SIGKILL), kills whatever still runs in the netns or mentions its socket,
    /// unmounts under the node dir; then deletes netns, veths, bridge, empty
    /// cgroup dirs of the containerd namespaces used, the run dir and the JSON.
    /// Returns the first error met (after trying everything).
    pub fn teardown(&mut self) -> Result<()> {
        let mut errors: Vec<String> = Vec::new();
        let mut namespaces: BTreeSet<String> = BTreeSet::new();
        let nodes = self.info.nodes.clone();
        for n in &nodes {
            namespaces.extend(self.stop_node(n, &mut errors));
        }
        for n in &nodes {
            remove_pod_netns(n, &mut errors);
            if let Err(e) = net::run_tolerant(
                "ip",
                &["netns", "del", &n.netns],
                &["No such file", "Cannot remove"],
            ) {
                errors.push(format!("deleting netns {}: {e:#}", n.netns));
            }
            // Usually gone with the netns (its peer lived there).
            if let Err(e) = net::run_tolerant(
                "ip",
                &["link", "del", &n.host_veth],
                &["Cannot find device"],
            ) {
                errors.push(format!("deleting veth {}: {e:#}", n.host_veth));
            }
        }
        if !self.info.user_netns.is_empty() {
            for (what, args) in [
                ("netns", vec!["netns", "del", self.info.user_netns.as_str()]),
                ("veth", vec!["link", "del", self.info.user_veth.as_str()]),
            ] {
                if let Err(e) = net::run_tolerant(
                    "ip",
                    &args,
                    &["No such file", "Cannot remove", "Cannot find device"],
                ) {
                    errors.push(format!("deleting the user {what}: {e:#}"));
                }
            }
        }
        if let Err(e) = net::run_tolerant(
            "ip",
            &["link", "del", &self.info.bridge],
            &["Cannot find device"],
        ) {
            errors.push(format!("deleting bridge {}: {e:#}", self.info.bridge));
        }
        for ns in &namespaces {
            cleanup::remove_empty_cgroup_dirs(ns);
        }
        cleanup::unmount_under(&self.info.dir);
        // the node agents' tmpfs work dirs, where `Cluster` (and the README's
        // `--plugin` example) put them
        let incoming = incoming_root(&self.info.dir);
        cleanup::unmount_under(&incoming);
        let _ = fs::remove_dir_all(&incoming);
        match fs::remove_dir_all(&self.info.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("removing {}: {e}", self.info.dir.display())),
        }
        // Kept on failure, so that `mose-testbed down` can try again.
        if errors.is_empty() {
            match fs::remove_file(state_file(&self.info.name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("removing the state file: {e}")),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "tearing down testbed {}:\n  {}",
                self.info.name,
                errors.join("\n  ")
            ))
        }
    }

    /// Stops everything of node `n`; returns the containerd namespaces seen.
    fn stop_node(&mut self, n: &Node, errors: &mut Vec<String>) -> BTreeSet<String> {
        let mut namespaces = BTreeSet::new();
        let mut task_pids = Vec::new();
        let alive = n.containerd_pid.is_some_and(cleanup::process_alive)
            && UnixStream::connect(&n.socket).is_ok();
        if alive {
            let ctr = Ctr::new(&n.socket, "default").with_timeout(Duration::from_secs(10));
            if let Ok(list) = ctr.list("namespaces") {
                namespaces.extend(list);
            }
        }
        // Fallback when containerd is gone: namespaces that had tasks.
        if let Ok(rd) = fs::read_dir(n.state().join("io.containerd.runtime.v2.task")) {
            namespaces.extend(
                rd.flatten()
                    .filter_map(|e| e.file_name().into_string().ok()),
            );
        }
        if alive {
            for ns in &namespaces {
                let ctr = Ctr::new(&n.socket, ns).with_timeout(Duration::from_secs(20));
                let mut ids: BTreeSet<String> =
                    ctr.list("tasks").unwrap_or_default().into_iter().collect();
                for id in &ids {
                    if let Ok(pid) = ctr.task_pid(id) {
                        task_pids.push(pid);
                    }
                }
                ids.extend(ctr.list("containers").unwrap_or_default());
                for id in ids {
                    ctr.force_remove(&id);
                }
            }
        }
        if let Some(pid) = n.plugin_pid {
            self.stop_process(pid, &format!("plugin of node {}", n.name), errors);
        }
        if let Some(pid) = n.containerd_pid {
            self.stop_process(pid, &format!("containerd of node {}", n.name), errors);
        }
        let _ = fs::remove_file(&n.socket);
        // Shims carry `-address <socket>`; anything else left in the netns
        // (plugin children, --net-host containers) goes too.
        let sock = n.socket.display().to_string();
        let mut rest: BTreeSet<u32> = cleanup::processes_mentioning(&sock).into_iter().collect();
        rest.extend(net::pids_in_netns(&n.netns));
        rest.extend(task_pids.into_iter().filter(|&p| cleanup::process_alive(p)));
        for pid in &rest {
            kill(*pid, nix::sys::signal::Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while rest.iter().any(|&p| cleanup::process_alive(p)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let stuck: Vec<u32> = rest
            .into_iter()
            .filter(|&p| cleanup::process_alive(p))
            .collect();
        if !stuck.is_empty() {
            errors.push(format!(
                "node {}: processes survived SIGKILL: {stuck:?}",
                n.name
            ));
        }
        cleanup::unmount_under(&n.dir);
        namespaces
    }

    /// SIGTERM, wait, SIGKILL; reaps it when it is our child.
    fn stop_process(&mut self, pid: u32, what: &str, errors: &mut Vec<String>) {
        if let Some(pos) = self.children.iter().position(|c| c.id() == pid) {
            let mut child = self.children.swap_remove(pos);
            kill(pid, nix::sys::signal::Signal::SIGTERM);
            match wait_timeout(&mut child, STOP_GRACE) {
                Ok(Some(_)) => {}
                Ok(None) => eprintln!("{what} ignored SIGTERM for {STOP_GRACE:?}; killed"),
                Err(e) => errors.push(format!("waiting for {what}: {e:#}")),
            }
            return;
        }
        // Not our child (loaded testbed): the pid may have been reused, so
        // only signal it if it still runs something of this testbed.
        if !cleanup::processes_mentioning(&dir_needle(&self.info.dir)).contains(&pid)
            && !net::pids_in_netns(&self.node_netns_of(pid)).contains(&pid)
        {
            return;
        }
        kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while cleanup::process_alive(pid) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        if cleanup::process_alive(pid) {
            eprintln!("{what} ignored SIGTERM for {STOP_GRACE:?}; killing");
            kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }

    fn node_netns_of(&self, pid: u32) -> String {
        self.info
            .nodes
            .iter()
            .find(|n| n.containerd_pid == Some(pid) || n.plugin_pid == Some(pid))
            .map(|n| n.netns.clone())
            .unwrap_or_default()
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if std::env::var_os("MOSE_TESTBED_KEEP").is_some() {
            eprintln!(
                "testbed {}: kept (MOSE_TESTBED_KEEP); remove with `mose-testbed down --name {}`",
                self.info.name, self.info.name
            );
            return;
        }
        if let Err(e) = self.teardown() {
            eprintln!("{e:#}");
        }
    }
}

/// What of testbed `info` still exists (empty when fully removed): netns,
/// interfaces, processes mentioning the run dir or living in a netns, mounts
/// under the run dir, the run dir, the state file.
pub fn leftovers(info: &TestbedInfo) -> Vec<String> {
    let mut left = Vec::new();
    for n in &info.nodes {
        if net::netns_exists(&n.netns) {
            left.push(format!("netns {}", n.netns));
            let pids = net::pids_in_netns(&n.netns);
            if !pids.is_empty() {
                left.push(format!("processes in netns {}: {pids:?}", n.netns));
            }
        }
        if net::link_exists(&n.host_veth) {
            left.push(format!("veth {}", n.host_veth));
        }
    }
    if net::link_exists(&info.bridge) {
        left.push(format!("bridge {}", info.bridge));
    }
    if !info.user_netns.is_empty() && net::netns_exists(&info.user_netns) {
        left.push(format!("netns {}", info.user_netns));
    }
    if !info.user_veth.is_empty() && net::link_exists(&info.user_veth) {
        left.push(format!("veth {}", info.user_veth));
    }
    let procs = cleanup::processes_mentioning(&dir_needle(&info.dir));
    if !procs.is_empty() {
        left.push(format!(
            "processes mentioning {}: {procs:?}",
            info.dir.display()
        ));
    }
    let mounts = cleanup::mounts_under(&info.dir);
    if !mounts.is_empty() {
        left.push(format!("mounts: {mounts:?}"));
    }
    if info.dir.exists() {
        left.push(format!("dir {}", info.dir.display()));
    }
    if state_file(&info.name).exists() {
        left.push(format!("state file {}", state_file(&info.name).display()));
    }
    left
}

/// `/run/mose-testbed/<name>.json`.
pub fn state_file(name: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{name}.json"))
}

fn write_state(info: &TestbedInfo) -> Result<()> {
    fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
    let path = state_file(&info.name);
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(info).context("serializing the testbed")?;
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
}

fn kill(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
    }
}

/// `t<pid: 5 base36 digits><counter base36>`: unique per process and call
/// (fixed-width pid so that no two (pid, counter) pairs collide), ≤ 8 chars.
fn default_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("t{:0>5}{}", base36(std::process::id()), base36(n % 1296))
}

/// True if something of a testbed called `name` exists.
fn name_taken(name: &str) -> bool {
    state_file(name).exists()
        || net::link_exists(&format!("mtb{name}"))
        || net::netns_exists(&format!("{PREFIX}-{name}-n1"))
        || run_dir(name).exists()
}

/// `/tmp/mose-tb-<name>`: short, so socket paths stay far below 108 bytes.
fn run_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/{PREFIX}-{name}"))
}

/// `dir` as a string with a trailing `/`, so that looking for processes
/// mentioning run `t1` does not match run `t10`.
fn dir_needle(dir: &Path) -> String {
    format!("{}/", dir.display())
}

fn base36(mut v: u32) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        bail!(
            "testbed name {name:?} must be 1..={MAX_NAME_LEN} chars of [a-z0-9] \
             (interface names are limited to 15 chars)"
        );
    }
    Ok(())
}

/// Under an exclusive lock on `/run/mose-testbed/.lock`: checks the name is
/// free, picks a free /24 and writes the state file, so concurrent `up`s
/// (threads or processes) get distinct names and subnets.
fn reserve(
    name: &str,
    subnet: Option<Ipv4Addr>,
    nodes: usize,
    dir: &Path,
    shim_dir: Option<PathBuf>,
) -> Result<TestbedInfo> {
    fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
    let lock_path = Path::new(STATE_DIR).join(".lock");
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow!("locking {}: {e}", lock_path.display()))?;

    let bridge = format!("mtb{name}");
    if name_taken(name) || dir.exists() {
        bail!(
            "a testbed named {name} already exists (or left state behind); \
             remove it with `mose-testbed down --name {name}`"
        );
    }
    let used = used_prefixes()?;
    let prefix: [u8; 3] = match subnet {
        Some(s) => {
            let o = s.octets();
            let p = [o[0], o[1], o[2]];
            if used.contains(&p) {
                bail!("subnet {s}/24 is already in use (by an interface or another testbed)");
            }
            p
        }
        None => {
            let start = name.bytes().fold(std::process::id(), |h, b| {
                h.wrapping_mul(31).wrapping_add(u32::from(b))
            }) % 250;
            (0..250u32)
                .map(|i| [10, 77, ((start + i) % 250 + 1) as u8])
                .find(|p| !used.contains(p))
                .context("no free 10.77.<k>.0/24 subnet left; tear down old testbeds")?
        }
    };
    let ip = |last: u8| Ipv4Addr::new(prefix[0], prefix[1], prefix[2], last);
    let nodes = (1..=nodes)
        .map(|i| {
            let ndir = dir.join(format!("n{i}"));
            Node {
                name: format!("n{i}"),
                index: i,
                netns: format!("{PREFIX}-{name}-n{i}"),
                ip: ip((10 + i) as u8),
                socket: ndir.join("c.sock"),
                dir: ndir,
                host_veth: format!("mtb{name}v{i}"),
                containerd_pid: None,
                plugin_pid: None,
            }
        })
        .collect();
    let info = TestbedInfo {
        name: name.to_string(),
        subnet: format!("{}/24", ip(0)),
        bridge,
        bridge_ip: ip(1),
        dir: dir.to_path_buf(),
        shim_dir,
        nodes,
        user_netns: format!("{PREFIX}-{name}-user"),
        user_veth: format!("mtb{name}u"),
        user_ip: ip(250),
    };
    write_state(&info)?;
    Ok(info)
}

/// /24 prefixes in use: by root-namespace IPv4 addresses or other testbeds.
fn used_prefixes() -> Result<BTreeSet<[u8; 3]>> {
    let mut used = BTreeSet::new();
    let out = net::run_ok("ip", &["-o", "-4", "addr", "show"]).context("listing addresses")?;
    for word in out.split_whitespace() {
        if let Some((addr, _)) = word.split_once('/') {
            if let Ok(a) = addr.parse::<Ipv4Addr>() {
                let o = a.octets();
                used.insert([o[0], o[1], o[2]]);
            }
        }
    }
    for name in Testbed::list()? {
        if let Ok(text) = fs::read_to_string(state_file(&name)) {
            if let Ok(info) = serde_json::from_str::<TestbedInfo>(&text) {
                let o = info.bridge_ip.octets();
                used.insert([o[0], o[1], o[2]]);
            }
        }
    }
    Ok(used)
}

fn open_log(path: &Path) -> Result<fs::File> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// The same configuration as `mose_tests::containerd::TestContainerd`
/// (private root/state/sockets, CRI runtimes `runc` and `mose`), with the
/// CRI's pods on the service segment: sandbox image
/// [`mose_workloads::images::PAUSE_REF`] (imported by whoever runs pods,
/// see `cluster::Cluster::enable_pods`) and the node's pod network.
fn containerd_config(n: &Node) -> String {
    let cri = mose_tests::containerd::CriSettings {
        sandbox_image: Some(mose_workloads::images::PAUSE_REF.into()),
        cni: Some((
            segment::pod_cni_bin_dir(&n.dir),
            segment::pod_conf_dir(&n.dir),
        )),
        restrict_oom_score_adj: true,
        // NRI where containerd has it, for MOSE's NRI plugin (`mose-nri`)
        nri_socket: (mose_tests::containerd::containerd_version() >= (1, 7))
            .then(|| nri_socket(&n.dir)),
    };
    mose_tests::containerd::containerd_config_with(&n.root(), &n.state(), &n.socket, &cri)
}

/// Deletes the network namespaces of the pods still on node `n` (its
/// containerd, stopped, cannot): mose-pod-cni recorded each (see
/// `mose_network::pod::PodLink`).
fn remove_pod_netns(n: &Node, errors: &mut Vec<String>) {
    let state = segment::state_dir(&n.dir);
    let Ok(rd) = fs::read_dir(state.join("pods")) else {
        return;
    };
    for e in rd.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let sandbox = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let Ok(link) = mose_network::pod::PodLink::load(&state, sandbox) else {
            continue;
        };
        let Some(name) = link.netns.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        if !link.netns.exists() || !name.starts_with("cni-") {
            continue;
        }
        if let Err(e) = net::run_tolerant("ip", &["netns", "del", name], &["No such file"]) {
            errors.push(format!("deleting pod netns {name}: {e:#}"));
        }
    }
}

/// NRI's socket of the node whose directory is `dir` (containerd ≥ 1.7).
pub fn nri_socket(dir: &Path) -> PathBuf {
    dir.join("nri.sock")
}

/// Where Debian's `containernetworking-plugins` installs the CNI plugins.
const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// Waits until `n`'s containerd answers `ctr version`.
fn wait_containerd(n: &Node, children: &mut [Child]) -> Result<()> {
    let deadline = Instant::now() + CONTAINERD_START_TIMEOUT;
    let ctr = Ctr::new(&n.socket, "default").with_timeout(Duration::from_secs(5));
    loop {
        if UnixStream::connect(&n.socket).is_ok() && ctr.run(["version"]).is_ok_and(|o| o.success())
        {
            return Ok(());
        }
        if let Some(c) = children
            .iter_mut()
            .find(|c| Some(c.id()) == n.containerd_pid)
        {
            if let Some(st) = c.try_wait().context("checking containerd")? {
                bail!(
                    "containerd of node {} exited early with {st}; {} tail:\n{}",
                    n.name,
                    n.containerd_log().display(),
                    n.containerd_log_tail(40)
                );
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "containerd of node {} did not answer `ctr version` on {} within \
                 {CONTAINERD_START_TIMEOUT:?}; log tail:\n{}",
                n.name,
                n.socket.display(),
                n.containerd_log_tail(40)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_and_valid() {
        let n = default_name();
        validate_name(&n).expect("default name is valid");
        assert_ne!(n, default_name());
        assert!(validate_name("toolongname").is_err());
        assert!(validate_name("Bad").is_err());
        // Longest interface name: mtb + 8 + v + 3 digits.
        assert!(format!("mtb{}v200", "a".repeat(MAX_NAME_LEN)).len() <= 15);
        assert_eq!(base36(4_194_304).len(), 5);
    }

    #[test]
    fn plugin_placeholders_are_expanded() {
        let node = Node {
            name: "n2".into(),
            index: 2,
            netns: "ns".into(),
            ip: Ipv4Addr::new(10, 77, 3, 12),
            dir: "/tmp/x/n2".into(),
            socket: "/tmp/x/n2/c.sock".into(),
            host_veth: "v".into(),
            containerd_pid: None,
            plugin_pid: None,
        };
        let mut c = PluginCommand::new("mose-plugin", ["--node={node}", "{ip}:7000", "{dir}"]);
        c.env.push(("SOCK".into(), "{containerd_sock}".into()));
        let e = c.expand(&node);
        assert_eq!(e.args, ["--node=n2", "10.77.3.12:7000", "/tmp/x/n2"]);
        assert_eq!(e.env[0].1, "/tmp/x/n2/c.sock");
    }
}
