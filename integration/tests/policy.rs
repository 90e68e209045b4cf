//! The policy hook on the testbed: a container annotated with a tight
//! downtime target is migrated with a technique that meets it; an operator's
//! policy program is used, and ignored with a clear error when it misbehaves.

use std::time::Duration;

use mose_integration::{cluster::Cluster, wait_for};
use mose_workloads::{
    image::ctr_import,
    images::{cache_dir, state_service_archive, STATE_SERVICE_REF},
    probe::{ping, verify},
};

const RT: &str = "io.containerd.mose.v2";

/// Runs the state service with `mib` MiB on node 1, with `annotations`.
fn run_service(c: &Cluster, ns: &str, mib: u32, annotations: &[&str]) -> String {
    let n1 = c.node(1).unwrap();
    let archive = state_service_archive(None, &cache_dir()).expect("state-service image");
    ctr_import(n1.containerd_socket(), ns, &archive).unwrap();
    let mut args: Vec<String> = ["run", "-d", "--runtime", RT, "--net-host"]
        .map(String::from)
        .to_vec();
    for a in annotations {
        args.push("--annotation".into());
        args.push(a.to_string());
    }
    let mib = mib.to_string();
    args.extend(
        [
            STATE_SERVICE_REF,
            "state",
            "/usr/local/bin/mose-state-service",
            "--state-mib",
            &mib,
            "--port",
            "7070",
        ]
        .map(String::from),
    );
    n1.ctr(ns).ok(args).unwrap();
    let addr = format!("{}:7070", n1.ip());
    wait_for("the state service", Duration::from_secs(30), || {
        ping(&addr).is_ok()
    });
    addr
}

/// The policy hook's status, over its unix socket.
fn status(socket: &std::path::Path) -> serde_json::Value {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.write_all(b"{\"op\":\"status\"}\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    v["answer"].clone()
}

#[test]
fn a_tight_downtime_target_gets_a_technique_that_meets_it() {
    // 128 MiB over 200 Mbit/s: a cold migration freezes for more than the
    // 5.4 s its memory takes on the wire, so a 3.5 s target rules it out.
    // Which of the others the policy picks depends on this machine's
    // calibration (pre-copy, or post-copy when a busy machine makes pre-copy's
    // dump predict too slow): the test checks the choice meets the target by
    // the policy's own prediction, not by a timing
    let c = Cluster::up(2, Some(200)).expect("cluster up");
    let ns = mose_tests::unique_id("pol");
    let addr = run_service(&c, &ns, 128, &["mose.io/max-downtime=3500ms"]);
    let before = ping(&addr).unwrap();

    let plan = c.plan(1, 2, &ns, "state").unwrap();
    let d = &plan["decision"];
    let technique = d["plan"]["technique"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        ["precopy", "postcopy", "hybrid"].contains(&technique.as_str()),
        "cold cannot meet 3.5 s here: {plan:#}"
    );
    assert_eq!(d["feasible"], true, "{plan:#}");
    let predicted = d["predicted"]["downtime_ms"]
        .as_f64()
        .expect("a predicted downtime");
    assert!(predicted <= 3500.0, "{plan:#}");
    assert_eq!(d["targets"][0]["annotation"], "mose.io/max-downtime");
    // the plan was made from what was measured: the service and its state
    let m = &plan["request"]["measurements"];
    assert!(
        m["memory_bytes"].as_u64().unwrap() > 120 << 20,
        "the measured memory is the service's state: {m}"
    );

    let r = c.migrate(1, 2, &ns, "state", &[]).unwrap();
    assert_eq!(r["status"], "ok", "{r:#}");
    assert_eq!(
        r["technique"],
        technique.as_str(),
        "the plan's technique was used"
    );
    let p = &r["plan"];
    assert_eq!(p["policy"], "builtin");
    let down = p["kpis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kpi"] == "downtime")
        .expect("downtime compared");
    eprintln!("kpis: {}", p["kpis"]);
    // whether the measured downtime met the target depends on how busy the
    // machine is: the comparison is recorded, benchmarks judge it
    assert_eq!(down["target"], 3500.0);
    assert!(
        down["met"].is_boolean() && down["measured"].is_number(),
        "{down}"
    );
    let a2 = format!("{}:7070", c.node(2).unwrap().ip());
    wait_for("the service on node 2", Duration::from_secs(30), || {
        ping(&a2).is_ok()
    });
    let after = ping(&a2).unwrap();
    assert!(after.seq > before.seq && after.sum == before.sum);
    assert!(verify(&a2).unwrap().is_ok());

    // the node learned from it
    let learned = status(&c.policy_socket(1).unwrap());
    assert!(
        learned["migrations_learned"].as_u64().unwrap() >= 1,
        "{learned}"
    );
}

#[test]
fn a_strict_target_that_cannot_be_met_is_refused_and_nothing_moves() {
    let c = Cluster::up(2, None).expect("cluster up");
    let ns = mose_tests::unique_id("pols");
    let addr = run_service(
        &c,
        &ns,
        64,
        &["mose.io/max-downtime=1ms", "mose.io/strict=true"],
    );
    let r = c.migrate(1, 2, &ns, "state", &[]).unwrap();
    assert_eq!(r["status"], "failed", "{r:#}");
    let e = r["error"].as_str().unwrap();
    assert!(
        e.contains("mose.io/max-downtime") && e.contains("refused"),
        "{e}"
    );
    // the source never stopped
    assert!(ping(&addr).is_ok());
    assert!(verify(&addr).unwrap().is_ok());
}

#[test]
fn an_operator_policy_program_is_used_and_ignored_when_it_misbehaves() {
    let dir = tempfile::tempdir().unwrap();
    let prog = dir.path().join("policy.sh");
    let mode = dir.path().join("mode");
    // a site policy: always cold, whatever the model says; "bad" mode prints garbage
    std::fs::write(
        &prog,
        format!(
            r#"#!/bin/sh
cat > {dir}/request.json
case "$(cat {mode} 2>/dev/null)" in
bad) echo 'this is not a decision'; exit 0 ;;
fail) echo 'policy database unreachable' >&2; exit 3 ;;
esac
echo '{{"plan":{{"technique":"cold","max_rounds":0,"bandwidth_cap_bps":null,"compression":false}},"predicted":{{"downtime_ms":900,"total_ms":1200,"bytes":70000000,"rate_bps":1000000000,"rounds":0,"available":true}},"targets":[],"feasible":true,"refused":false,"reason":"site policy: always cold","candidates_considered":1}}'
"#,
            dir = dir.path().display(),
            mode = mode.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let c = Cluster::up_with(
        2,
        None,
        &["--policy-program".into(), prog.display().to_string()],
    )
    .expect("cluster up");
    let ns = mose_tests::unique_id("polp");
    run_service(&c, &ns, 32, &["mose.io/max-downtime=5s"]);

    let plan = c.plan(1, 2, &ns, "state").unwrap();
    assert_eq!(plan["policy"], prog.display().to_string(), "{plan:#}");
    assert_eq!(plan["decision"]["plan"]["technique"], "cold");
    assert_eq!(plan["decision"]["reason"], "site policy: always cold");
    // the program was given the whole request
    let req: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("request.json")).unwrap()).unwrap();
    assert_eq!(req["container"], "state");
    assert_eq!(req["targets"]["max_downtime_ms"], 5000.0);
    assert!(req["measurements"]["link_bytes_per_s"].as_f64().unwrap() > 0.0);

    for (mode_text, expect) in [
        ("bad", "not a valid decision"),
        ("fail", "policy database unreachable"),
    ] {
        std::fs::write(&mode, mode_text).unwrap();
        let plan = c.plan(1, 2, &ns, "state").unwrap();
        assert_eq!(plan["policy"], "builtin", "{plan:#}");
        let err = plan["policy_error"].as_str().unwrap_or_default();
        assert!(
            err.contains(&prog.display().to_string()) && err.contains(expect),
            "{mode_text}: {err}"
        );
        assert!(
            plan["decision"]["plan"].is_object(),
            "the built-in policy decided"
        );
    }

    // used for a real migration: the program's cold plan is followed
    std::fs::remove_file(&mode).unwrap();
    let r = c.migrate(1, 2, &ns, "state", &[]).unwrap();
    assert_eq!(r["status"], "ok", "{r:#}");
    assert_eq!(r["technique"], "cold");
    assert_eq!(r["plan"]["policy"], prog.display().to_string());
}
