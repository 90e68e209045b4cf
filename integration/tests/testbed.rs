//! The edge testbed against real network namespaces and real containerd
//! daemons (root only). Each test owns a `Testbed`, whose `Drop` removes it
//! even when an assertion panics; every wait is bounded.
//!
//! ```text
//! cargo build -p mose-shim
//! cargo test -p mose-integration --test testbed -- --test-threads=2
//! ```

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mose_integration::testbed::{leftovers, Node, PluginCommand, Testbed, TestbedOptions};

const NS: &str = "tb";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

fn up(nodes: usize) -> Testbed {
    Testbed::up(TestbedOptions::default().nodes(nodes)).expect("testbed up")
}

/// True if a TCP connection to `addr` is accepted or refused (the host is
/// reachable) within the timeout, false if it times out or is unreachable.
fn reachable(addr: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&addr, Duration::from_millis(700)) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
    }
}

fn ping_from(node: &Node, ip: Ipv4Addr) -> bool {
    node.exec_in_netns(&["busybox", "ping", "-c1", "-W1", &ip.to_string()])
        .map(|o| o.success())
        .unwrap_or(false)
}

/// Polls `f` every 50 ms for up to `timeout`.
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Accepts one connection on `l` (bounded) and reads it to EOF; returns the
/// receive rate in Mbit/s, timed from the first byte to EOF.
fn receive(l: TcpListener) -> Result<f64> {
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match l.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                anyhow::ensure!(Instant::now() < deadline, "no sender connected");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    };
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut first: Option<Instant> = None;
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf).context("receiving")?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        total += n as u64;
    }
    let secs = first.context("nothing received")?.elapsed().as_secs_f64();
    Ok(total as f64 * 8.0 / secs / 1e6)
}

/// Sends zeros to `addr` for `dur`, then closes.
fn send(addr: SocketAddr, dur: Duration) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).context("connecting")?;
    s.set_write_timeout(Some(Duration::from_secs(15)))?;
    let buf = vec![0u8; 64 * 1024];
    let t = Instant::now();
    while t.elapsed() < dur {
        s.write_all(&buf).context("sending")?;
    }
    Ok(())
}

/// Throughput root → node (`down == true`) or node → root, in Mbit/s.
fn throughput(tb: &Testbed, node: &Node, down: bool) -> Result<f64> {
    const DUR: Duration = Duration::from_millis(1500);
    if down {
        let ip = node.ip();
        let (tx, rx) = mpsc::channel();
        let h = node.spawn_in_netns(move || {
            let l = TcpListener::bind((ip, 0))?;
            tx.send(l.local_addr()?)?;
            receive(l)
        })?;
        let addr = rx.recv_timeout(Duration::from_secs(5))?;
        send(addr, DUR)?;
        h.join().map_err(|_| anyhow::anyhow!("receiver panicked"))?
    } else {
        let l = TcpListener::bind((tb.bridge_ip(), 0))?;
        let addr = l.local_addr()?;
        let h = node.spawn_in_netns(move || send(addr, DUR))?;
        let rate = receive(l)?;
        h.join().map_err(|_| anyhow::anyhow!("sender panicked"))??;
        Ok(rate)
    }
}

#[test]
fn two_nodes_talk_run_a_container_and_leave_nothing() {
    let tb = up(2);
    let (n1, n2) = (tb.node(1).expect("n1"), tb.node(2).expect("n2"));
    assert_ne!(n1.ip(), n2.ip());
    for n in tb.nodes() {
        n.ctr(NS).ok(["version"]).expect("containerd answers");
        assert!(
            n.containerd_socket().as_os_str().len() < 100,
            "socket path too long"
        );
    }
    // containerd really runs inside the node's netns.
    let pid = n1.containerd_pid().expect("containerd pid");
    assert!(mose_integration::testbed::net::pids_in_netns(n1.netns()).contains(&pid));

    assert!(ping_from(n1, n2.ip()), "n1 → n2 ping");
    assert!(ping_from(n2, n1.ip()), "n2 → n1 ping");
    assert!(ping_from(n1, tb.bridge_ip()), "n1 → root ping");
    assert!(reachable((n1.ip(), 9).into()), "root → n1 TCP");

    // A --net-host container in n1 serves on n1's address.
    let image = n1.import_test_image(NS).expect("import image");
    let rt = mose_tests::runtime();
    let fifo = n1.fifo_dir().display().to_string();
    let run = [
        "run",
        "-d",
        "--null-io",
        "--net-host",
        "--runtime",
        &rt,
        "--fifo-dir",
        &fifo,
        &image,
        "web",
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/etc",
    ];
    n1.ctr(NS).ok(run).expect("ctr run httpd");
    let task_pid = n1.ctr(NS).task_pid("web").expect("task pid");
    let addr: SocketAddr = (n1.ip(), 8080).into();
    let mut body = String::new();
    let got = eventually(Duration::from_secs(10), || {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        body.clear();
        s.write_all(b"GET /passwd HTTP/1.0\r\n\r\n").is_ok()
            && s.read_to_string(&mut body).is_ok()
            && body.contains("root:x:0:0")
    });
    assert!(
        got,
        "httpd in n1 not reachable from root ns; last reply {body:?}"
    );
    // The container process shares the node's netns (not the root one).
    assert!(mose_integration::testbed::net::pids_in_netns(n1.netns()).contains(&task_pid));

    let info = tb.info().clone();
    let t = Instant::now();
    tb.down().expect("down leaves nothing");
    eprintln!("down with a running container: {:?}", t.elapsed());
    assert_eq!(leftovers(&info), Vec::<String>::new());
    assert!(
        !mose_tests::cleanup::process_alive(task_pid),
        "task survived"
    );
    assert!(
        !mose_tests::cleanup::process_alive(pid),
        "containerd survived"
    );
    assert!(
        mose_tests::cleanup::processes_mentioning(&format!("{}/", info.dir.display())).is_empty(),
        "containerd or shim of the run survived"
    );
}

#[test]
fn shaping_limits_both_directions() {
    const CAP: f64 = 50.0;
    let tb = up(1);
    let n1 = tb.node(1).expect("n1");
    let free_down = throughput(&tb, n1, true).expect("unshaped root → n1");
    let free_up = throughput(&tb, n1, false).expect("unshaped n1 → root");
    tb.set_rate(1, Some(CAP as u32)).expect("shape");
    let down = throughput(&tb, n1, true).expect("shaped root → n1");
    let up = throughput(&tb, n1, false).expect("shaped n1 → root");
    tb.set_rate(1, None).expect("unshape");
    let again = throughput(&tb, n1, true).expect("unshaped again");
    eprintln!(
        "Mbit/s: unshaped down {free_down:.0} up {free_up:.0}; \
         shaped({CAP}) down {down:.1} up {up:.1}; unshaped again {again:.0}"
    );
    for (what, r) in [("root → n1", down), ("n1 → root", up)] {
        assert!(r < 1.5 * CAP, "{what}: {r:.1} Mbit/s exceeds 1.5 × {CAP}");
        assert!(r > 0.3 * CAP, "{what}: {r:.1} Mbit/s, far below {CAP}");
    }
    assert!(
        free_down > 4.0 * down,
        "unshaped {free_down:.0} vs {down:.1}"
    );
    assert!(free_up > 4.0 * up, "unshaped {free_up:.0} vs {up:.1}");
    assert!(
        again > 4.0 * down,
        "shaping removed: {again:.0} vs {down:.1}"
    );
    tb.down().expect("down");
}

#[test]
fn cut_link_isolates_and_restore_link_reconnects() {
    let tb = up(2);
    let (n1, n2) = (tb.node(1).expect("n1"), tb.node(2).expect("n2"));
    let addr: SocketAddr = (n1.ip(), 9).into();
    assert!(reachable(addr), "root → n1 before cut");
    tb.cut_link(1).expect("cut");
    assert!(!reachable(addr), "root → n1 while cut");
    assert!(!ping_from(n2, n1.ip()), "n2 → n1 while cut");
    // The node itself keeps running: its containerd still answers.
    n1.ctr(NS)
        .ok(["version"])
        .expect("containerd answers while cut");
    tb.restore_link(1).expect("restore");
    assert!(
        eventually(Duration::from_secs(10), || reachable(addr)),
        "root → n1 after restore"
    );
    assert!(
        eventually(Duration::from_secs(10), || ping_from(n2, n1.ip())),
        "n2 → n1 after restore"
    );
    tb.down().expect("down");
}

#[test]
fn drop_after_panic_detach_and_load_clean_up() {
    // A panicking test still removes its testbed (Drop).
    let (tx, rx) = mpsc::channel();
    let r = std::panic::catch_unwind(move || {
        let tb = up(1);
        let _ = tx.send(tb.info().clone());
        panic!("test failure while the testbed is up");
    });
    assert!(r.is_err());
    let info = rx.recv().expect("info sent before the panic");
    assert_eq!(leftovers(&info), Vec::<String>::new());

    // Detached testbeds outlive their value and are found by name; a plugin
    // runs in each node's netns with placeholders expanded.
    let plugin = PluginCommand::new(
        "sh",
        [
            "-c",
            "echo {node} {ip} {containerd_sock} $MOSE_NODE; exec sleep 600",
        ],
    );
    let tb = Testbed::up(TestbedOptions::default().nodes(2).plugin_template(plugin)).expect("up");
    let name = tb.name().to_string();
    let info = tb.detach().expect("detach");
    let tb = Testbed::load(&name).expect("load");
    for n in tb.nodes() {
        n.ctr(NS)
            .ok(["version"])
            .expect("still answers after detach");
        let pid = n.plugin_pid().expect("plugin pid");
        assert!(mose_integration::testbed::net::pids_in_netns(n.netns()).contains(&pid));
        let want = format!(
            "{} {} {} {}",
            n.name(),
            n.ip(),
            n.containerd_socket().display(),
            n.name()
        );
        assert!(
            eventually(Duration::from_secs(5), || {
                std::fs::read_to_string(n.plugin_log()).is_ok_and(|s| s.contains(&want))
            }),
            "plugin log of {} lacks {want:?}",
            n.name()
        );
    }
    drop(tb); // a loaded testbed is not owned: still up
    assert!(Testbed::list().expect("list").contains(&name));
    Testbed::load(&name).expect("load").down().expect("down");
    assert_eq!(leftovers(&info), Vec::<String>::new());
}

#[test]
fn parallel_testbeds_do_not_clash() {
    let a = up(1);
    let b = up(1);
    assert_ne!(a.name(), b.name());
    assert_ne!(a.info().subnet, b.info().subnet);
    assert!(Testbed::up(TestbedOptions::default().name(a.name())).is_err());
    a.down().expect("down a");
    let n = b.node(1).expect("n1");
    n.ctr(NS)
        .ok(["version"])
        .expect("b unaffected by a's teardown");
    b.down().expect("down b");
}

/// Shaping accuracy over the supported range (slow; prints a table).
#[test]
#[ignore]
fn shaping_accuracy_table() {
    let tb = up(1);
    let n1 = tb.node(1).expect("n1");
    for cap in [100u32, 500, 1000, 2000, 5000, 10_000] {
        tb.set_rate(1, Some(cap)).expect("shape");
        let down = throughput(&tb, n1, true).expect("down");
        let up = throughput(&tb, n1, false).expect("up");
        eprintln!("cap {cap:>6} Mbit/s: root → n1 {down:>8.1}, n1 → root {up:>8.1}");
    }
    tb.down().expect("down");
}

#[test]
fn recover_removes_a_testbed_whose_state_file_is_gone() {
    let tb = up(2);
    let name = tb.name().to_string();
    let info = tb.detach().expect("detach");
    std::fs::remove_file(mose_integration::testbed::state_file(&name)).expect("rm state file");
    assert!(Testbed::list_orphans().expect("orphans").contains(&name));
    let tb = Testbed::recover(&name).expect("recover");
    assert_eq!(tb.nodes().len(), 2);
    assert_eq!(tb.bridge_ip(), info.bridge_ip);
    assert_eq!(
        tb.node(1).expect("n1").containerd_pid(),
        info.nodes[0].containerd_pid()
    );
    tb.down().expect("down");
    assert_eq!(leftovers(&info), Vec::<String>::new());
    // Idempotent: nothing left, nothing to do.
    Testbed::recover(&name)
        .expect("recover")
        .down()
        .expect("down again");
}
