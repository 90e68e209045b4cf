//! Running a CNI network configuration list (CNI spec 1.0: a `.conflist`)
//! the way a container runtime does: each plugin in order for `ADD` (each
//! given the previous one's result), in reverse for `DEL`, with the
//! `runtimeConfig` of the capabilities a plugin declares.
//!
//! Written here because no maintained crate runs CNI plugins from the
//! runtime side (the Rust CNI crates write plugins; `rust-cni` 0.1 panics on
//! bad input); the protocol is an exec with environment variables and JSON
//! on stdin and stdout (<https://www.cni.dev/docs/spec/>).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;

use crate::config::NodeConfig;
use crate::error::{io, NetworkError, Result};

/// Longest a plugin may run before it is killed and the call fails.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(20);

/// What a finished plugin left behind.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub success: bool,
    /// The exit status as text (`exit status: 1`, `signal: 9`).
    pub status: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// How plugin processes are run and waited for. A process that reaps its
/// children itself (the shim, a subreaper) supplies its own; everyone else
/// uses [`TokioRunner`].
pub trait Runner: Sync {
    /// Runs `cmd` (environment set, stdio not yet) with `input` on its
    /// stdin, collecting stdout and stderr; kills it after `timeout`.
    fn run(
        &self,
        cmd: Command,
        input: Vec<u8>,
        timeout: Duration,
    ) -> impl Future<Output = std::io::Result<RunOutput>> + Send;
}

/// Runs plugins with `tokio::process` (killed when the timeout passes).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioRunner;

impl Runner for TokioRunner {
    async fn run(
        &self,
        cmd: Command,
        input: Vec<u8>,
        timeout: Duration,
    ) -> std::io::Result<RunOutput> {
        let mut cmd = tokio::process::Command::from(cmd);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&input).await?;
        }
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no exit in {timeout:?}; killed"),
                )
            })??;
        Ok(RunOutput {
            success: out.status.success(),
            status: out.status.to_string(),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}

/// A network configuration list: its name, version and plugin entries.
#[derive(Debug, Clone)]
pub struct NetworkConfigList {
    pub path: PathBuf,
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Map<String, Value>>,
}

/// Loads `<conf_dir>/<network>.conflist`; its `name` must be `network`.
pub fn load(cfg: &NodeConfig, network: &str) -> Result<NetworkConfigList> {
    let path = cfg.conf_dir.join(format!("{network}.conflist"));
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(NetworkError::NoNetworkConfig {
                network: network.into(),
                path,
            })
        }
        Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
    };
    parse(&path, &bytes, network)
}

/// The capabilities a service network's plugins must declare between them
/// (CNI's `ips` and `mac` runtime configuration: the address and the MAC
/// derived from it, which keeps clients' neighbour entries valid).
const REQUIRED_CAPABILITIES: [&str; 2] = ["ips", "mac"];

fn parse(path: &Path, bytes: &[u8], network: &str) -> Result<NetworkConfigList> {
    let bad = |message: String| NetworkError::BadNetworkConfig {
        path: path.to_path_buf(),
        message,
    };
    let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let name = text("name").ok_or_else(|| bad("no \"name\"".into()))?;
    if name != network {
        return Err(bad(format!("its name is {name:?}, not {network:?}")));
    }
    let cni_version = text("cniVersion").ok_or_else(|| bad("no \"cniVersion\"".into()))?;
    let plugins: Vec<Map<String, Value>> = v
        .get("plugins")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no \"plugins\" list".into()))?
        .iter()
        .map(|p| p.as_object().cloned())
        .collect::<Option<_>>()
        .ok_or_else(|| bad("every entry of \"plugins\" must be an object".into()))?;
    if plugins.is_empty() {
        return Err(bad("\"plugins\" is empty".into()));
    }
    if let Some(p) = plugins.iter().find(|p| {
        p.get("type")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    }) {
        return Err(bad(format!(
            "a plugin entry has no \"type\": {}",
            Value::Object(p.clone())
        )));
    }
    for cap in REQUIRED_CAPABILITIES {
        let declared = plugins.iter().any(|p| {
            p.get("capabilities")
                .and_then(|c| c.get(cap))
                .and_then(Value::as_bool)
                == Some(true)
        });
        if !declared {
            return Err(bad(format!(
                "no plugin declares the {cap:?} capability: MOSE gives the container its address \
                 and MAC through the \"ips\" and \"mac\" runtime configuration (add \
                 \"capabilities\": {{\"ips\": true, \"mac\": true}} to the bridge plugin, whose \
                 IPAM must be \"static\")"
            )));
        }
    }
    Ok(NetworkConfigList {
        path: path.to_path_buf(),
        name,
        cni_version,
        plugins,
    })
}

/// What a container's attachment is called in CNI calls.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// Offered to each plugin whose `capabilities` names the key (e.g.
    /// `ips`, `mac`).
    pub runtime_config: Map<String, Value>,
}

/// An interface in a CNI result.
#[derive(Debug, Clone, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: String,
    /// The container's namespace; absent for the node's interfaces.
    #[serde(default)]
    pub sandbox: Option<String>,
}

/// The parts of a CNI `ADD` result MOSE uses.
#[derive(Debug, Clone, Deserialize)]
pub struct AddResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(skip)]
    pub raw: Value,
}

impl AddResult {
    /// The node-side end of the container's interface `ifname`: the last
    /// node interface listed before it (CNI's bridge and ptp plugins list
    /// the bridge, then the veth's node end, then the container end).
    pub fn host_interface(&self, ifname: &str) -> Option<&str> {
        let at = self
            .interfaces
            .iter()
            .position(|i| i.name == ifname && i.sandbox.is_some())?;
        self.interfaces[..at]
            .iter()
            .rev()
            .find(|i| i.sandbox.is_none())
            .map(|i| i.name.as_str())
    }
}

/// Runs `ADD` through the list; on a failure, the plugins already run are
/// deleted again (best effort) before the error returns.
pub async fn add(
    cfg: &NodeConfig,
    runner: &impl Runner,
    list: &NetworkConfigList,
    inv: &Invocation,
) -> Result<AddResult> {
    let mut prev: Option<Value> = None;
    for (i, plugin) in list.plugins.iter().enumerate() {
        let conf = plugin_conf(list, plugin, inv, prev.as_ref());
        match exec(cfg, runner, &conf, "ADD", inv).await {
            Ok(out) => prev = Some(out),
            Err(e) => {
                for p in list.plugins[..i].iter().rev() {
                    let conf = plugin_conf(list, p, inv, prev.as_ref());
                    let _ = exec(cfg, runner, &conf, "DEL", inv).await;
                }
                return Err(e);
            }
        }
    }
    let raw = prev.unwrap_or(Value::Null);
    let mut r: AddResult =
        serde_json::from_value(raw.clone()).map_err(|e| NetworkError::Plugin {
            plugin: list.name.clone(),
            command: "ADD",
            message: format!("its result is not a CNI result: {e}"),
        })?;
    r.raw = raw;
    Ok(r)
}

/// Runs `DEL` through the list in reverse, with the `ADD` result as
/// `prevResult` when known; every plugin runs, the first failure returns.
pub async fn del(
    cfg: &NodeConfig,
    runner: &impl Runner,
    list: &NetworkConfigList,
    inv: &Invocation,
    added: Option<&Value>,
) -> Result<()> {
    let mut first_err = None;
    for plugin in list.plugins.iter().rev() {
        let conf = plugin_conf(list, plugin, inv, added);
        if let Err(e) = exec(cfg, runner, &conf, "DEL", inv).await {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// A plugin's stdin: its entry plus the list's name and version, the
/// runtime configuration of the capabilities it declares, `prevResult`.
fn plugin_conf(
    list: &NetworkConfigList,
    plugin: &Map<String, Value>,
    inv: &Invocation,
    prev: Option<&Value>,
) -> Value {
    let mut conf = plugin.clone();
    conf.insert("name".into(), json!(list.name));
    conf.insert("cniVersion".into(), json!(list.cni_version));
    conf.remove("capabilities");
    let caps = plugin.get("capabilities").and_then(Value::as_object);
    let offered: Map<String, Value> = inv
        .runtime_config
        .iter()
        .filter(|(k, _)| caps.and_then(|c| c.get(*k)).and_then(Value::as_bool) == Some(true))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !offered.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(offered));
    }
    if let Some(p) = prev {
        conf.insert("prevResult".into(), p.clone());
    }
    Value::Object(conf)
}

fn find_plugin(cfg: &NodeConfig, plugin: &str) -> Result<PathBuf> {
    if plugin.contains('/') {
        return Err(NetworkError::Invalid(format!(
            "CNI plugin type {plugin:?} must be a file name, not a path"
        )));
    }
    cfg.cni_path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| NetworkError::NoPlugin {
            plugin: plugin.into(),
            search_path: cfg.cni_path.clone(),
        })
}

/// Runs one plugin; its stdout JSON on success, its CNI error otherwise.
async fn exec(
    cfg: &NodeConfig,
    runner: &impl Runner,
    conf: &Value,
    command: &'static str,
    inv: &Invocation,
) -> Result<Value> {
    let plugin = conf
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let bin = find_plugin(cfg, &plugin)?;
    let fail = |message: String| NetworkError::Plugin {
        plugin: plugin.clone(),
        command,
        message,
    };
    let mut cmd = Command::new(&bin);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &inv.container_id)
        .env("CNI_NETNS", &inv.netns)
        .env("CNI_IFNAME", &inv.ifname)
        .env("CNI_PATH", &cfg.cni_path);
    let input =
        serde_json::to_vec(conf).map_err(|e| fail(format!("encoding its configuration: {e}")))?;
    let out = runner
        .run(cmd, input, PLUGIN_TIMEOUT)
        .await
        .map_err(io(format!("running CNI plugin {}", bin.display())))?;
    if !out.success {
        return Err(fail(plugin_error(&out.stdout, &out.stderr, &out.status)));
    }
    if command == "DEL" || out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&out.stdout).map_err(|e| fail(format!("its output is not JSON: {e}")))
}

/// The CNI error a plugin printed (`{"code", "msg", "details"}`), else its
/// stderr and exit status.
fn plugin_error(stdout: &[u8], stderr: &[u8], status: &str) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(stdout) {
        if let Some(msg) = v.get("msg").and_then(Value::as_str) {
            let details = v.get("details").and_then(Value::as_str).unwrap_or_default();
            let code = v.get("code").and_then(Value::as_u64).unwrap_or_default();
            return format!("{msg} {details} (CNI error code {code})")
                .trim()
                .to_string();
        }
    }
    format!("{status}: {}", String::from_utf8_lossy(stderr).trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(json: &str) -> Result<NetworkConfigList> {
        parse(Path::new("/x/svc.conflist"), json.as_bytes(), "svc")
    }

    #[test]
    fn conflists_are_checked() {
        let ok = list(r#"{"cniVersion":"1.0.0","name":"svc","plugins":[{"type":"bridge","capabilities":{"mac":true,"ips":true}}]}"#)
            .unwrap();
        assert_eq!(ok.plugins.len(), 1);
        for (bad, says) in [
            ("nope", "not JSON"),
            (r#"{"cniVersion":"1.0.0","plugins":[]}"#, "no \"name\""),
            (
                r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"x"}]}"#,
                "not \"svc\"",
            ),
            (r#"{"name":"svc","plugins":[{"type":"x"}]}"#, "cniVersion"),
            (
                r#"{"cniVersion":"1.0.0","name":"svc","plugins":[]}"#,
                "empty",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"svc","plugins":[{"mtu":1}]}"#,
                "no \"type\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"svc","plugins":[1]}"#,
                "object",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"svc","plugins":[{"type":"bridge","capabilities":{"mac":true}}]}"#,
                "\"ips\" capability",
            ),
        ] {
            let e = list(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn runtime_config_goes_only_to_plugins_declaring_the_capability() {
        let l = list(
            r#"{"cniVersion":"1.0.0","name":"svc","plugins":[
                {"type":"bridge","capabilities":{"mac":true,"ips":true}},
                {"type":"tuning"}]}"#,
        )
        .unwrap();
        let inv = Invocation {
            container_id: "c".into(),
            netns: "/n".into(),
            ifname: "eth0".into(),
            runtime_config: serde_json::from_str(
                r#"{"mac":"02:6d:0a:59:00:0a","ips":["10.89.0.10/24"],"other":1}"#,
            )
            .unwrap(),
        };
        let a = plugin_conf(&l, &l.plugins[0], &inv, None);
        assert_eq!(a["name"], "svc");
        assert_eq!(a["runtimeConfig"]["mac"], "02:6d:0a:59:00:0a");
        assert!(a["runtimeConfig"].get("other").is_none());
        assert!(a.get("capabilities").is_none());
        let b = plugin_conf(&l, &l.plugins[1], &inv, Some(&json!({"x":1})));
        assert!(b.get("runtimeConfig").is_none());
        assert_eq!(b["prevResult"]["x"], 1);
    }

    #[test]
    fn the_node_side_interface_is_found_before_the_container_one() {
        let r: AddResult = serde_json::from_str(
            r#"{"interfaces":[{"name":"br0","mac":"a"},{"name":"veth1","mac":"b"},
                {"name":"eth0","mac":"c","sandbox":"/n"}]}"#,
        )
        .unwrap();
        assert_eq!(r.host_interface("eth0"), Some("veth1"));
        assert_eq!(r.host_interface("eth1"), None);
    }
}
