//! Running helper processes (the OCI runtime binary) without racing the
//! shim's child reaper.
//!
//! The shim is a subreaper and reaps every child on SIGCHLD with
//! `waitpid(-1)`, so a plain `Child::wait` would lose the exit status. Instead
//! a command is spawned after subscribing to the exit monitor, and its status
//! is taken from the monitor's notification for its pid.

use std::{
    io::Read,
    process::{Command, Stdio},
};

use containerd_shim::{
    asynchronous::monitor::{monitor_subscribe, monitor_unsubscribe},
    monitor::{Subject, Topic},
};

use crate::error::{Error, Result};

/// What a finished helper process left behind.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// How the helper's stdout/stderr are treated.
pub enum Capture {
    /// Both piped and collected.
    Both,
    /// The caller already configured stdio on the command (e.g. container stdio).
    Configured,
}

/// Spawns `cmd` and waits for it to exit, returning its exit code and
/// captured output. `what` names the command in errors.
pub async fn run(mut cmd: Command, capture: Capture, what: &str) -> Result<Output> {
    if let Capture::Both = capture {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let mut sub = monitor_subscribe(Topic::Pid).await?;
    let spawned = cmd.spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let _ = monitor_unsubscribe(sub.id).await;
            return Err(Error::Io {
                context: format!("cannot start {what} (is the binary installed and on PATH?)"),
                source: e,
            });
        }
    };
    // The command object holds the parent's copies of pipe ends handed to the
    // child; drop them so readers see EOF when the child is gone.
    drop(cmd);
    let pid = child.id() as i32;
    let out = child
        .stdout
        .take()
        .map(|o| tokio::task::spawn_blocking(move || drain(o)));
    let err = child
        .stderr
        .take()
        .map(|e| tokio::task::spawn_blocking(move || drain(e)));

    let code = loop {
        match sub.rx.recv().await {
            Some(ev) => {
                if let Subject::Pid(p) = ev.subject {
                    if p == pid {
                        break ev.exit_code;
                    }
                }
            }
            None => {
                let _ = monitor_unsubscribe(sub.id).await;
                return Err(Error::Internal(format!(
                    "exit monitor closed while waiting for {what} (pid {pid})"
                )));
            }
        }
    };
    let _ = monitor_unsubscribe(sub.id).await;
    let stdout = match out {
        Some(h) => h.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let stderr = match err {
        Some(h) => h.await.unwrap_or_default(),
        None => Vec::new(),
    };
    Ok(Output {
        code,
        stdout,
        stderr,
    })
}

fn drain(mut r: impl Read) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf);
    buf
}
