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
pub async fn run(cmd: Command, capture: Capture, what: &str) -> Result<Output> {
    run_inner(cmd, capture, None, None, what).await
}

/// Like [`run`] with both outputs captured, `input` written to the command's
/// stdin, and the command killed (SIGKILL) when it has not exited after
/// `timeout` (its exit then reported as by signal 9).
pub async fn run_with_input(
    mut cmd: Command,
    input: Vec<u8>,
    timeout: std::time::Duration,
    what: &str,
) -> Result<Output> {
    cmd.stdin(Stdio::piped());
    run_inner(cmd, Capture::Both, Some(input), Some(timeout), what).await
}

async fn run_inner(
    mut cmd: Command,
    capture: Capture,
    input: Option<Vec<u8>>,
    timeout: Option<std::time::Duration>,
    what: &str,
) -> Result<Output> {
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
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        // a child that exits without reading gets EPIPE here: not an error
        tokio::task::spawn_blocking(move || {
            let _ = std::io::Write::write_all(&mut stdin, &input);
        });
    }
    let mut deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let code = loop {
        let ev = match deadline {
            Some(d) => match tokio::time::timeout_at(d, sub.rx.recv()).await {
                Ok(ev) => ev,
                Err(_) => {
                    // the exit still arrives through the monitor
                    deadline = None;
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    continue;
                }
            },
            None => sub.rx.recv().await,
        };
        match ev {
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
