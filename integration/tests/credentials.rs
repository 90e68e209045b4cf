//! Node credentials as operators handle them (real `mosectl`, `mose-plugin`,
//! containerd, runc and CRIU on the testbed): an agent refuses to start
//! beside the cluster CA's key, with a key others can read, without its
//! bundle or with a certificate of another CA; `mosectl` refuses node names
//! and directories that would misplace keys; and a certificate renewed with
//! `mosectl ca issue --renew` is served after SIGHUP while a migration that
//! began before goes on to completion.
//!
//! ```text
//! cargo build --workspace --bins
//! cargo test -p mose-integration --test credentials
//! ```

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use mose_integration::{
    cluster::{bin_dir, Cluster},
    testbed::Node,
    wait_for,
};
use mose_migrate::tls::{presented_certificate, CertificateInfo, Identity};
use nix::{sys::signal::Signal, unistd::Pid};

/// Generous bounds: the machine may be busy with other suites.
const LONG: Duration = Duration::from_secs(120);

fn mosectl(args: &[&str]) -> std::process::Output {
    let bin = bin_dir().expect("MOSE binaries built").join("mosectl");
    Command::new(bin)
        .args(args)
        .output()
        .expect("running mosectl")
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn ok(o: std::process::Output) -> String {
    assert!(
        o.status.success(),
        "mosectl failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Starts `mose-plugin` as node `node` with `tls_dir` and everything else
/// in `scratch` (no metrics listener); returns its exit code and stderr.
/// Panics if it is still running after two minutes.
fn start_agent(node: &str, tls_dir: &Path, scratch: &Path) -> (Option<i32>, String) {
    let bin = bin_dir().expect("MOSE binaries built").join("mose-plugin");
    let mut cmd = Command::new(bin);
    cmd.args(["--node", node, "--listen", "127.0.0.1:0"])
        .arg("--tls-dir")
        .arg(tls_dir)
        .arg("--containerd")
        .arg(scratch.join("no-containerd.sock"))
        .arg("--work")
        .arg(scratch.join("work"))
        .arg("--state")
        .arg(scratch.join("state"))
        .arg("--policy-socket")
        .arg(scratch.join("policy.sock"))
        .arg("--pods-socket")
        .arg(scratch.join("pods.sock"))
        .args(["--metrics-listen", "off"]);
    let out = mose_tests::ctr::run_command(cmd, None, LONG).expect("the agent exits by itself");
    (out.code, out.stderr)
}

#[test]
fn an_agent_refuses_the_ca_key_and_an_open_node_key_with_the_fix() {
    let d = tempfile::tempdir_in("/tmp").unwrap();
    let ca = d.path().join("ca");
    ok(mosectl(&["ca", "init", "--dir", &s(&ca)]));
    let bundle = d.path().join("n1");
    ok(mosectl(&[
        "ca",
        "issue",
        "--dir",
        &s(&ca),
        "--node",
        "n1",
        "--ip",
        "127.0.0.1",
        "--out",
        &s(&bundle),
    ]));

    // the old layout: the node's files beside the CA's own, key and all
    for f in ["n1.pem", "n1.key"] {
        std::fs::copy(bundle.join(f), ca.join(f)).unwrap();
    }
    let scratch = d.path().join("scratch-ca");
    let (code, stderr) = start_agent("n1", &ca, &scratch);
    assert_ne!(code, Some(0), "{stderr}");
    let ca_key = s(&ca.join("ca.key"));
    for want in [
        ca_key.as_str(),
        "mint any node's identity",
        "mosectl ca init",
        "mosectl ca issue",
        "--out",
    ] {
        assert!(stderr.contains(want), "stderr lacks {want:?}:\n{stderr}");
    }
    assert!(!scratch.join("work").exists(), "nothing started: {stderr}");

    // the bundle, with its key opened to the group
    let key = bundle.join("n1.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let scratch = d.path().join("scratch-key");
    let (code, stderr) = start_agent("n1", &bundle, &scratch);
    assert_ne!(code, Some(0), "{stderr}");
    let fix = format!("chmod 600 {}", s(&key));
    assert!(stderr.contains(&fix), "stderr lacks {fix:?}:\n{stderr}");
    assert!(!scratch.join("work").exists(), "nothing started: {stderr}");
}

fn failed(o: std::process::Output) -> String {
    assert!(
        !o.status.success(),
        "mosectl succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn mosectl_and_the_agent_refuse_unusable_names_directories_and_bundles_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir_in("/tmp").unwrap();
    let ca = d.path().join("ca");
    ok(mosectl(&["ca", "init", "--dir", &s(&ca)]));
    // `--node=NAME`: a name starting with '-' reaches mosectl's own check
    let issue = |node: &str, out: &Path| {
        mosectl(&[
            "ca",
            "issue",
            "--dir",
            &s(&ca),
            &format!("--node={node}"),
            "--out",
            &s(out),
        ])
    };

    // names that collide with the CA's files or read as an ssh option
    let out = d.path().join("out");
    for bad in ["ca", "-oProxyCommand=x"] {
        let e = failed(issue(bad, &out));
        assert!(e.contains("choose another name"), "{bad}: {e}");
    }
    assert!(!out.exists());

    // a file, a shared directory with content: no chmod advice
    let file = d.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let e = failed(issue("n1", &file));
    assert!(e.contains("is not a directory"), "{e}");
    let shared = d.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("other"), "x").unwrap();
    std::fs::set_permissions(&shared, PermissionsExt::from_mode(0o1777)).unwrap();
    let e = failed(issue("n1", &shared));
    assert!(e.contains("choose a new directory"), "{e}");
    assert!(!e.contains("chmod"), "{e}");
    assert!(!shared.join("n1.key").exists());

    // the agent and `mosectl migrate`: no directory, no files, another CA
    let scratch = d.path().join("scratch");
    let none = d.path().join("none");
    let (code, stderr) = start_agent("n1", &none, &scratch);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("no TLS directory {}", s(&none))),
        "{stderr}"
    );
    let bundle = d.path().join("n1");
    ok(issue("n1", &bundle));
    // every outgoing connection (`mosectl migrate`, pod pulls, link probes)
    // checks the bundle when it loads it
    let e = mose_migrate::tls::Identity::new(&bundle, "n2")
        .client_config()
        .expect_err("no certificate for n2")
        .to_string();
    let want = format!("mosectl ca issue --node n2 --out {}", s(&bundle));
    assert!(e.contains("no certificate for node n2 in"), "{e}");
    assert!(e.contains(&want), "{e}");
    let other = d.path().join("other-ca");
    ok(mosectl(&["ca", "init", "--dir", &s(&other)]));
    std::fs::copy(other.join("ca.pem"), bundle.join("ca.pem")).unwrap();
    let (code, stderr) = start_agent("n1", &bundle, &scratch);
    assert_ne!(code, Some(0), "{stderr}");
    for want in [
        "does not chain to",
        &s(&bundle.join("ca.pem")),
        &s(&bundle.join("n1.pem")),
    ] {
        assert!(stderr.contains(want), "stderr lacks {want:?}:\n{stderr}");
    }
    assert!(!scratch.join("work").exists(), "nothing started: {stderr}");
}

/// The certificate node `to`'s agent presents to a new connection from
/// node `from` (made inside node `from`'s netns with its bundle).
fn presented(c: &Cluster, from: usize, to: usize) -> anyhow::Result<CertificateInfo> {
    let n = c.node(from)?;
    let id = Identity::new(&c.bundle_dir(from)?, n.name());
    let endpoint = c.endpoint(to)?;
    n.run_in_netns(move || {
        Ok(presented_certificate(
            &id,
            &endpoint,
            Duration::from_secs(20),
        )?)
    })
}

fn signal(pid: u32, sig: Signal) {
    nix::sys::signal::kill(Pid::from_raw(pid as i32), sig).expect("signalling");
}

const RT: &str = "io.containerd.mose.v2";
/// The count lives only in the shell's memory; /tmp/c is a window on it.
const COUNTER: &str = "i=0; while true; do i=$((i+1)); echo $i > /tmp/c; sleep 0.05; done";

/// The counter of container `id` on `node`, if it answers.
fn counter(node: &Node, ns: &str, id: &str) -> Option<u64> {
    let exec = mose_tests::unique_id("rd");
    let o = node
        .ctr(ns)
        .run(["tasks", "exec", "--exec-id", &exec, id, "cat", "/tmp/c"])
        .ok()?;
    o.stdout.trim().parse().ok()
}

/// Waits until the counter of `id` on `node` is above `above`; returns it.
fn counter_above(node: &Node, ns: &str, id: &str, above: u64) -> u64 {
    let mut seen = None;
    wait_for(
        &format!("the counter of {id} to pass {above}"),
        LONG,
        || {
            seen = counter(node, ns, id).filter(|v| *v > above);
            seen.is_some()
        },
    );
    seen.unwrap_or_default()
}

#[test]
fn a_renewed_certificate_is_served_after_sighup_and_a_migration_in_flight_completes() {
    // the destination waits for a silent source as long as the test holds it
    let c = Cluster::up_with(2, None, &["--io-timeout".into(), "300".into()]).expect("cluster up");
    let ns = mose_tests::unique_id("cred");
    let (n1, n2) = (c.node(1).unwrap(), c.node(2).unwrap());
    let id = "svc";
    let image = n1.import_test_image(&ns).unwrap();
    n1.ctr(&ns)
        .ok([
            "run",
            "-d",
            "--runtime",
            RT,
            &image,
            id,
            "sh",
            "-c",
            COUNTER,
        ])
        .expect("start the counter");
    let before = counter_above(n1, &ns, id, 10);
    let cert2 = c.bundle_dir(2).unwrap().join(format!("{}.pem", n2.name()));
    let old = CertificateInfo::read(&cert2).unwrap();
    assert_eq!(presented(&c, 1, 2).unwrap(), old);
    let agent2 = n2.plugin_pid().expect("node 2 runs a plugin");

    // a migration to node 2, held mid-way: its source (mosectl) is stopped
    // once node 2 is receiving, so it is in flight across the SIGHUP
    let mut mig = c
        .migrate_command(
            1,
            2,
            &ns,
            id,
            &["--technique", "cold", "--io-timeout", "300"],
        )
        .unwrap()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting mosectl migrate");
    let deadline = std::time::Instant::now() + LONG;
    while c.wait_receiving(2, Duration::ZERO).is_err() {
        let ended = mig.try_wait().unwrap().is_some();
        if ended || std::time::Instant::now() > deadline {
            let _ = mig.kill();
            let o = mig.wait_with_output().unwrap();
            panic!(
                "node 2 never received the migration: {}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(mig.id(), Signal::SIGSTOP);

    // renewed where the CA is, into node 2's bundle; then SIGHUP
    let out = ok(mosectl(&[
        "ca",
        "issue",
        "--dir",
        &s(&c.tls),
        "--node",
        n2.name(),
        "--ip",
        &n2.ip().to_string(),
        "--out",
        &s(&c.bundle_dir(2).unwrap()),
        "--renew",
    ]));
    assert!(out.contains("kill -HUP"), "{out}");
    let new = CertificateInfo::read(&cert2).unwrap();
    assert_ne!(new.serial, old.serial);
    assert!(new.not_after >= old.not_after);
    signal(agent2, Signal::SIGHUP);
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let seen = presented(&c, 1, 2);
        if seen.as_ref().ok() == Some(&new) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 2 never presented its renewed certificate {new:?}; last seen {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log2 = || std::fs::read_to_string(n2.plugin_log()).unwrap_or_default();
    wait_for("node 2 to log the reload", LONG, || {
        log2().contains("reloaded this node's TLS identity")
    });
    assert!(
        c.wait_receiving(2, Duration::ZERO).is_ok(),
        "the held migration is still being received after the reload"
    );

    // the source goes on over the connection it had: the migration completes
    signal(mig.id(), Signal::SIGCONT);
    let o = mig.wait_with_output().unwrap();
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "mosectl printed no JSON result ({e}): {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    assert_eq!(r["status"], "ok", "{r}");
    // the count went on from where it was: the process's memory arrived
    let moved = counter_above(n2, &ns, id, before);

    // a reload that fails keeps the certificate being served, and says why
    let key2 = c.bundle_dir(2).unwrap().join(format!("{}.key", n2.name()));
    std::fs::set_permissions(&key2, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    signal(agent2, Signal::SIGHUP);
    wait_for("node 2 to log the failed reload", LONG, || {
        let l = log2();
        l.contains("reloading this node's TLS identity failed") && l.contains("chmod 600")
    });
    assert_eq!(presented(&c, 1, 2).unwrap(), new);
    std::fs::set_permissions(&key2, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    // node 2's renewed identity also serves its outgoing connections: back to node 1
    let r = c.migrate(2, 1, &ns, id, &["--technique", "cold"]).unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    counter_above(n1, &ns, id, moved);
}
