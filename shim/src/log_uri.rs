//! Where a process's output goes, as containerd names it in a task's stdout
//! and stderr: a FIFO containerd reads (the usual case), a file
//! (`file:///path`, or a plain path that is not a FIFO), or a logging binary
//! (`binary:///path?key=value`), as `ctr run --log-uri` and containerd's
//! `cio.LogURI` produce. The meaning follows containerd's runc shim
//! (`pkg/process/io.go`): the stdout URI decides for both streams when it
//! names a file or a binary; a file is created if missing and appended to;
//! a binary gets the output pipes as fds 3 and 4 and signals readiness by
//! closing fd 5, with `CONTAINER_ID` and `CONTAINER_NAMESPACE` set.

use std::{
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use command_fds::{CommandFdExt, FdMapping};
use tokio::{io::AsyncRead, task::JoinHandle};
use tracing::debug;

use crate::error::{Error, Result};

/// How long a logging binary may take to signal that it is ready.
const BINARY_READY: Duration = Duration::from_secs(10);

/// One output destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// A FIFO (containerd's own stdio).
    Fifo(String),
    /// A regular file, appended to.
    File(PathBuf),
    /// A logging binary and its arguments.
    Binary { path: PathBuf, args: Vec<String> },
}

impl LogTarget {
    /// Classifies a stdout/stderr value of a task; `None` for no output.
    pub fn parse(uri: &str) -> Result<Option<LogTarget>> {
        if uri.is_empty() {
            return Ok(None);
        }
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Ok(Some(plain_path(uri)));
        };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        // `file:///x` and `binary:///x` carry an empty host
        let path = path.to_string();
        if !matches!(scheme, "fifo" | "file" | "binary") {
            return Err(Error::InvalidArgument(format!(
                "unsupported log URI scheme {scheme:?} in {uri:?}: the MOSE shim accepts \
                 a FIFO or file path, fifo://, file:// and binary://"
            )));
        }
        if !path.starts_with('/') {
            return Err(Error::InvalidArgument(format!(
                "log URI {uri:?} must name an absolute path ({scheme}:///path)"
            )));
        }
        match scheme {
            "fifo" => Ok(Some(LogTarget::Fifo(path))),
            "file" => Ok(Some(LogTarget::File(PathBuf::from(path)))),
            _ => Ok(Some(LogTarget::Binary {
                path: PathBuf::from(path),
                args: query_args(query),
            })),
        }
    }

    /// True when this destination takes both streams (stdout names it).
    pub fn takes_both_streams(&self) -> bool {
        !matches!(self, LogTarget::Fifo(_))
    }
}

/// A plain path is a FIFO when it is one, else a file (as the runc shim
/// appends to a regular file it is given).
fn plain_path(path: &str) -> LogTarget {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(m) if !m.file_type().is_fifo() => LogTarget::File(PathBuf::from(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => LogTarget::File(PathBuf::from(path)),
        _ => LogTarget::Fifo(path.to_string()),
    }
}

/// `?a=1&b` -> `["a", "1", "b"]`, as containerd builds the binary's argv.
fn query_args(query: &str) -> Vec<String> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .flat_map(|kv| match kv.split_once('=') {
            Some((k, v)) => vec![k.to_string(), v.to_string()],
            None => vec![kv.to_string()],
        })
        .collect()
}

/// Opens (creating it and its directory if missing) a log file for appending.
pub fn open_log_file(path: &Path) -> Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(Error::io(format!("create log directory {}", dir.display())))?;
    }
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(Error::io(format!("open log file {}", path.display())))
}

/// Copies into log files, drained at exit and cancelled at delete.
#[derive(Clone, Default)]
pub struct FileCopies(Arc<Mutex<Copies>>);

#[derive(Default)]
struct Copies {
    /// Awaited by a drain (once).
    running: Vec<JoinHandle<()>>,
    /// Cancelled at delete, also after a drain gave up waiting (a process
    /// left behind may hold the output open).
    aborts: Vec<tokio::task::AbortHandle>,
}

impl FileCopies {
    /// Copies `from` into `file` until end of file.
    pub fn spawn(&self, from: impl AsyncRead + Send + Unpin + 'static, file: std::fs::File) {
        let mut from = from;
        let mut to = tokio::fs::File::from_std(file);
        let h = tokio::spawn(async move {
            if let Err(e) = tokio::io::copy(&mut from, &mut to).await {
                debug!(error = %e, "log file copy ended");
            }
        });
        let mut c = self.lock();
        c.aborts.push(h.abort_handle());
        c.running.push(h);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Copies> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for every copy to reach the end of its output.
    pub async fn drain(&self) {
        let running = std::mem::take(&mut self.lock().running);
        for h in running {
            let _ = h.await;
        }
    }

    /// Cancels the copies.
    pub fn abort(&self) {
        let mut c = self.lock();
        c.running.clear();
        for a in c.aborts.drain(..) {
            a.abort();
        }
    }
}

/// How long a logging binary may take to finish after its task's delete
/// (containerd's runc shim allows the same) before it is killed.
const BINARY_GRACE: Duration = Duration::from_secs(10);

/// A running logging binary.
pub struct LogBinary {
    pid: i32,
    path: PathBuf,
}

impl LogBinary {
    /// Starts `path args…` with the read ends of the process's output pipes
    /// as fds 3 and 4 and waits until it closes fd 5 (ready).
    pub async fn start(
        path: &Path,
        args: &[String],
        stdout: OwnedFd,
        stderr: OwnedFd,
        container: &str,
        namespace: &str,
    ) -> Result<LogBinary> {
        let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::io("create logging binary ready pipe")(e.into()))?;
        let mut cmd = Command::new(path);
        cmd.args(args)
            .env("CONTAINER_ID", container)
            .env("CONTAINER_NAMESPACE", namespace)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd.fd_mappings(vec![
            FdMapping {
                parent_fd: stdout,
                child_fd: 3,
            },
            FdMapping {
                parent_fd: stderr,
                child_fd: 4,
            },
            FdMapping {
                parent_fd: ready_w,
                child_fd: 5,
            },
        ])
        .map_err(|e| Error::Internal(format!("logging binary fds: {e}")))?;
        // the shim's reaper collects its exit; the handle is not waited on
        let child = cmd.spawn().map_err(Error::io(format!(
            "start logging binary {} (is it installed and executable?)",
            path.display()
        )))?;
        drop(cmd); // the parent's copies of the pipe ends go with it
        let pid = child.id() as i32;
        let ready = tokio::task::spawn_blocking(move || {
            let mut b = [0u8; 1];
            nix::unistd::read(&ready_r, &mut b)
        });
        let me = LogBinary {
            pid,
            path: path.to_path_buf(),
        };
        match tokio::time::timeout(BINARY_READY, ready).await {
            Ok(Ok(Ok(_))) => Ok(me),
            Ok(Ok(Err(e))) => Err(Error::io(format!(
                "wait for logging binary {} to be ready",
                path.display()
            ))(e.into())),
            Ok(Err(e)) => Err(Error::Internal(format!("logging binary wait: {e}"))),
            Err(_) => {
                me.kill();
                Err(Error::Runtime(format!(
                    "logging binary {} did not signal readiness (close fd 5) within {BINARY_READY:?}",
                    path.display()
                )))
            }
        }
    }

    /// After the task's delete: the binary normally ends at the end of its
    /// input; one still running after a grace period (a process left behind
    /// holds the output open) is killed.
    pub fn finish_later(&self) {
        let (pid, path) = (self.pid, self.path.clone());
        tokio::spawn(async move {
            tokio::time::sleep(BINARY_GRACE).await;
            // still the same program (pids are reused)
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            let script = std::fs::read(format!("/proc/{pid}/cmdline"))
                .ok()
                .is_some_and(|c| {
                    c.windows(path.as_os_str().len())
                        .any(|w| w == path.as_os_str().as_encoded_bytes())
                });
            if exe.as_deref() == Some(path.as_path()) || script {
                LogBinary { pid, path }.kill();
            }
        });
    }

    /// Stops the binary (after a failed start).
    pub fn kill(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_classified_like_containerd() {
        assert_eq!(LogTarget::parse("").unwrap(), None);
        assert_eq!(
            LogTarget::parse("file:///tmp/x.log").unwrap(),
            Some(LogTarget::File("/tmp/x.log".into()))
        );
        assert_eq!(
            LogTarget::parse("binary:///usr/bin/logger?tag=svc&-s").unwrap(),
            Some(LogTarget::Binary {
                path: "/usr/bin/logger".into(),
                args: vec!["tag".into(), "svc".into(), "-s".into()]
            })
        );
        let missing = "/nonexistent-mose-dir/out.log";
        assert_eq!(
            LogTarget::parse(missing).unwrap(),
            Some(LogTarget::File(missing.into()))
        );
        let e = LogTarget::parse("http://example.invalid/x").unwrap_err();
        assert!(e.to_string().contains("unsupported log URI scheme"), "{e}");
        let e = LogTarget::parse("file://relative").unwrap_err();
        assert!(e.to_string().contains("absolute path"), "{e}");
    }

    #[test]
    fn a_fifo_path_stays_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let s = p.to_str().unwrap();
        assert_eq!(
            LogTarget::parse(s).unwrap(),
            Some(LogTarget::Fifo(s.into()))
        );
    }
}
