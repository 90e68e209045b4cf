//! `mose-pod-cni`: the CNI plugin of a MOSE node's pod network. It wraps the
//! pod network's real plugin (its `delegate`, e.g. CNI's `bridge` with
//! `host-local` addresses) and changes one thing: a pod that continues a
//! running pod of another node (`mose.io/migrate-from`, which containerd's
//! CRI passes in `runtimeConfig` when the plugin declares the
//! `io.kubernetes.cri.pod-annotations` capability) gets that pod's address,
//! asked of the node agent, and its interface stays down until its
//! containers are restored (the address still lives at the source until
//! then). Every other pod, and every DEL, CHECK and VERSION, is the
//! delegate's alone.
//!
//! Written here rather than taken from a library: no CNI crate offers a
//! delegating plugin, and the wrapper is a few lines of the CNI
//! specification's exec protocol (SPEC.md: environment, stdin config,
//! stdout result or error).

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use mose_contract::pod::{AgentReply, AgentRequest, DEFAULT_AGENT_SOCKET, MIGRATE_FROM_ANNOTATION};
use serde_json::{json, Value};

const POD_ANNOTATIONS: &str = "io.kubernetes.cri.pod-annotations";
const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// CNI's error code for errors of the plugin itself (SPEC.md, "Error").
const CODE_PLUGIN: u32 = 999;
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let conf: Value = serde_json::from_slice(&stdin).unwrap_or(Value::Null);
    let version = conf["cniVersion"].as_str().unwrap_or("1.0.0").to_string();
    let code = match run(&command, &conf) {
        Ok((out, code)) => {
            let _ = std::io::stdout().write_all(&out);
            code
        }
        Err(msg) => {
            let e = json!({"cniVersion": version, "code": CODE_PLUGIN, "msg": msg});
            println!("{e}");
            1
        }
    };
    std::process::exit(code);
}

/// The plugin's stdout and exit status.
fn run(command: &str, conf: &Value) -> Result<(Vec<u8>, i32), String> {
    if command == "VERSION" {
        let v = json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED});
        return Ok((v.to_string().into_bytes(), 0));
    }
    if !conf.is_object() {
        return Err("the network configuration on stdin is not a JSON object".into());
    }
    let mut delegate = conf
        .get("delegate")
        .filter(|d| d.get("type").and_then(Value::as_str).is_some())
        .cloned()
        .ok_or("the network configuration has no \"delegate\" with a \"type\" (the pod network's real plugin)")?;
    for k in ["cniVersion", "name", "prevResult"] {
        if let Some(v) = conf.get(k) {
            delegate[k] = v.clone();
        }
    }
    let origin = conf["runtimeConfig"][POD_ANNOTATIONS][MIGRATE_FROM_ANNOTATION].as_str();
    let netns = std::env::var("CNI_NETNS").unwrap_or_default();
    let sandbox = std::env::var("CNI_CONTAINERID").unwrap_or_default();
    let ifname = std::env::var("CNI_IFNAME").unwrap_or_else(|_| "eth0".into());
    let state_dir = conf["stateDir"]
        .as_str()
        .map(PathBuf::from)
        .unwrap_or_else(|| mose_network::NodeConfig::from_env().state_dir);
    match (command, origin) {
        ("ADD", origin) => {
            if let Some(from) = origin {
                same_namespace(from)?;
                let socket = conf["agentSocket"].as_str().unwrap_or(DEFAULT_AGENT_SOCKET);
                let address = ask_address(Path::new(socket), from)?;
                // coming home: the reservation its departure left goes
                unreserve(&delegate, &address);
                keep_address(&mut delegate, &address)?;
            }
            let (out, code) = delegate_to(&delegate)?;
            if code != 0 {
                return Ok((out, code));
            }
            let link = record_link(&out, &ifname, &netns, &state_dir, &sandbox)?;
            if let Some(from) = origin {
                link.hold_down().map_err(|e| {
                    format!("the pod continuing {from} got its address, but its link could not be held down: {e}")
                })?;
            }
            Ok((out, code))
        }
        ("DEL", _) => {
            let moved = mose_network::pod::PodLink::moved(&state_dir, &sandbox);
            let link = mose_network::pod::PodLink::load(&state_dir, &sandbox).ok();
            let out = delegate_to(&delegate)?;
            if let (true, Some(l), 0) = (moved, &link, out.1) {
                // the address lives on in the pod's new node: this node's
                // range must not hand it out again
                reserve(&delegate, &l.address, &sandbox)?;
            }
            mose_network::pod::PodLink::remove(&state_dir, &sandbox);
            Ok(out)
        }
        _ => delegate_to(&delegate),
    }
}

/// Records the pod's node-side interface (from the delegate's result), so
/// that the MOSE shim can hold the link down and bring it up around a
/// migration.
fn record_link(
    result: &[u8],
    ifname: &str,
    netns: &str,
    state_dir: &Path,
    sandbox: &str,
) -> Result<mose_network::pod::PodLink, String> {
    let r: mose_network::cni::AddResult = serde_json::from_slice(result)
        .map_err(|e| format!("the delegate's result is not a CNI result: {e}"))?;
    let host = r.host_interface(ifname).ok_or_else(|| {
        format!("the delegate's result names no node-side interface for {ifname}")
    })?;
    let raw: Value = serde_json::from_slice(result).unwrap_or_default();
    let address = raw["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let link = mose_network::pod::PodLink {
        host_ifname: host.to_string(),
        netns: PathBuf::from(netns),
        address,
    };
    link.save(state_dir, sandbox)
        .map_err(|e| format!("recording the pod's link: {e}"))?;
    Ok(link)
}

/// A pod continues only a pod of its own Kubernetes namespace (the CRI
/// passes the new pod's in `CNI_ARGS` as `K8S_POD_NAMESPACE`).
fn same_namespace(from: &str) -> Result<(), String> {
    let origin =
        mose_contract::PodOrigin::parse(from).map_err(|e| format!("mose.io/migrate-from: {e}"))?;
    let args = std::env::var("CNI_ARGS").unwrap_or_default();
    let ns = args
        .split(';')
        .find_map(|kv| kv.strip_prefix("K8S_POD_NAMESPACE="))
        .unwrap_or_default();
    if ns != origin.namespace {
        return Err(format!(
            "mose.io/migrate-from: a pod in Kubernetes namespace {ns:?} may continue only a pod \
             of that namespace, not {origin}"
        ));
    }
    Ok(())
}

/// The address of the pod `from` names, from the node agent.
fn ask_address(socket: &Path, from: &str) -> Result<String, String> {
    let fail = |e: String| {
        format!(
            "this pod continues {from}, but the MOSE agent on {} could not give its address: {e}",
            socket.display()
        )
    };
    let mut s =
        UnixStream::connect(socket).map_err(|e| fail(format!("{e} (is mose-plugin running?)")))?;
    let _ = s.set_read_timeout(Some(AGENT_TIMEOUT));
    let req = AgentRequest::PodAddress { from: from.into() };
    let mut line = serde_json::to_vec(&req).map_err(|e| fail(e.to_string()))?;
    line.push(b'\n');
    s.write_all(&line).map_err(|e| fail(e.to_string()))?;
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .map_err(|e| fail(e.to_string()))?;
    let reply: AgentReply =
        serde_json::from_str(&answer).map_err(|e| fail(format!("answer {answer:?}: {e}")))?;
    if !reply.ok {
        return Err(fail(reply.error));
    }
    Ok(reply.address)
}

/// Makes the delegate's `host-local` IPAM hand out exactly `address`
/// (`A.B.C.D/len`): its range becomes the whole subnet, and the address is
/// asked for through `runtimeConfig.ips`, which `host-local` honours.
fn keep_address(delegate: &mut Value, address: &str) -> Result<(), String> {
    let ipam_type = delegate["ipam"]["type"].as_str().unwrap_or_default();
    if ipam_type != "host-local" {
        return Err(format!(
            "a pod keeps its address only with host-local IPAM in the delegate (it has {ipam_type:?})"
        ));
    }
    let subnet = subnet_of(address)?;
    delegate["ipam"]["ranges"] = json!([[{"subnet": subnet}]]);
    if let Some(o) = delegate["ipam"].as_object_mut() {
        o.remove("subnet");
        o.remove("rangeStart");
        o.remove("rangeEnd");
    }
    delegate["runtimeConfig"]["ips"] = json!([address]);
    delegate["capabilities"]["ips"] = json!(true);
    Ok(())
}

/// Content of a `host-local` reservation MOSE keeps for a pod whose
/// address moved to another node (`host-local` keeps one file per address,
/// named by it, in `<dataDir>/<network>/`, holding its owner's id).
const MOVED_OWNER: &str = "mose-moved-away";

fn reservation_path(delegate: &Value, address: &str) -> Option<PathBuf> {
    let ip = address.split('/').next().filter(|s| !s.is_empty())?;
    let data = delegate["ipam"]["dataDir"]
        .as_str()
        .unwrap_or("/var/lib/cni/networks");
    let name = delegate["name"].as_str()?;
    Some(Path::new(data).join(name).join(ip))
}

/// Keeps `address` allocated in the delegate's `host-local` store after
/// its pod left for another node.
fn reserve(delegate: &Value, address: &str, sandbox: &str) -> Result<(), String> {
    let Some(p) = reservation_path(delegate, address) else {
        return Ok(());
    };
    std::fs::write(&p, format!("{MOVED_OWNER}:{sandbox}")).map_err(|e| {
        format!(
            "keeping {address} reserved for its moved pod ({}): {e}",
            p.display()
        )
    })
}

/// Drops the reservation [`reserve`] left for `address`, if it is one.
fn unreserve(delegate: &Value, address: &str) {
    if let Some(p) = reservation_path(delegate, address) {
        let ours = std::fs::read_to_string(&p).is_ok_and(|s| s.starts_with(MOVED_OWNER));
        if ours {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// `10.89.0.161/24` → `10.89.0.0/24`.
fn subnet_of(address: &str) -> Result<String, String> {
    let bad = || format!("the agent's address {address:?} is not A.B.C.D/len");
    let (ip, len) = address.split_once('/').ok_or_else(bad)?;
    let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let len: u32 = len
        .parse()
        .ok()
        .filter(|l| (1..=32).contains(l))
        .ok_or_else(bad)?;
    let mask = u32::MAX << (32 - len);
    Ok(format!(
        "{}/{len}",
        std::net::Ipv4Addr::from(u32::from(ip) & mask)
    ))
}

/// Runs the delegate plugin with this invocation's environment; its stdout
/// and exit status become this plugin's.
fn delegate_to(delegate: &Value) -> Result<(Vec<u8>, i32), String> {
    let typ = delegate["type"].as_str().unwrap_or_default();
    let plugin = find_plugin(typ)?;
    let mut child = Command::new(&plugin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("running the delegate plugin {}: {e}", plugin.display()))?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(delegate.to_string().as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for the delegate plugin {}: {e}", plugin.display()))?;
    Ok((out.stdout, out.status.code().unwrap_or(1)))
}

fn find_plugin(typ: &str) -> Result<PathBuf, String> {
    if typ.is_empty() || typ.contains('/') {
        return Err(format!("delegate type {typ:?} is not a plugin name"));
    }
    let path = std::env::var("CNI_PATH").unwrap_or_default();
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(typ))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("delegate plugin {typ:?} not found in CNI_PATH {path:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_address_replaces_the_nodes_range() {
        let mut d = json!({"type": "bridge", "ipam": {"type": "host-local",
            "ranges": [[{"subnet": "10.89.0.0/24", "rangeStart": "10.89.0.168", "rangeEnd": "10.89.0.175"}]],
            "dataDir": "/x"}});
        keep_address(&mut d, "10.89.0.161/24").unwrap();
        assert_eq!(d["ipam"]["ranges"], json!([[{"subnet": "10.89.0.0/24"}]]));
        assert_eq!(d["runtimeConfig"]["ips"], json!(["10.89.0.161/24"]));
        assert_eq!(d["ipam"]["dataDir"], "/x");
        let mut dhcp = json!({"type": "bridge", "ipam": {"type": "dhcp"}});
        assert!(keep_address(&mut dhcp, "10.89.0.161/24")
            .unwrap_err()
            .contains("host-local"));
    }

    #[test]
    fn subnets_and_bad_addresses() {
        assert_eq!(subnet_of("10.89.0.161/24").unwrap(), "10.89.0.0/24");
        assert_eq!(subnet_of("10.89.0.161/32").unwrap(), "10.89.0.161/32");
        for bad in ["10.89.0.161", "x/24", "10.89.0.1/0", "10.89.0.1/33"] {
            assert!(subnet_of(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn without_a_delegate_nothing_runs() {
        let e = run("ADD", &json!({"cniVersion": "1.0.0", "name": "n"})).unwrap_err();
        assert!(e.contains("delegate"), "{e}");
    }
}
