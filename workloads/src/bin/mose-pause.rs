//! The pod sandbox's process for MOSE's CRI tests and testbed (the role of
//! Kubernetes' `pause`): it holds the pod's namespaces, reaps the orphans
//! that end up with it as their parent (pid 1 of a shared pid namespace),
//! and exits 0 on SIGINT or SIGTERM. Written here because the testbed has
//! no registry to pull `registry.k8s.io/pause` from; the image is built
//! from this binary (`mose_workloads::images::pause_image`).

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

fn main() {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGCHLD] {
        set.add(s);
    }
    // blocked signals are taken synchronously below: no handler runs
    if let Err(e) = set.thread_block() {
        eprintln!("mose-pause: blocking signals failed: {e}");
        std::process::exit(1);
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => reap(),
            Ok(_) => std::process::exit(0),
            Err(e) => {
                eprintln!("mose-pause: waiting for signals failed: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// Waits for every child that has exited.
fn reap() {
    while let Ok(st) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if st == WaitStatus::StillAlive {
            break;
        }
    }
}
