//! Driver for the OCI runtime binary (runc by default; crun and youki speak
//! the same command line for everything but checkpoint/restore).
//!
//! Every invocation gets its own JSON log file, so a failure is reported with
//! the runtime's own error message instead of a bare exit status.

use std::{
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
};

use command_fds::{CommandFdExt, FdMapping};
use tracing::debug;

use crate::{
    error::{Error, Result},
    options::CheckpointOptions,
    reaper::{self, Capture},
};

static LOG_SEQ: AtomicU64 = AtomicU64::new(0);

/// Where the provisioned CRIU lives when the distribution's is too old; put
/// first on the runtime's PATH so `runc checkpoint/restore` find it.
const CRIU_DIRS: [&str; 1] = ["/usr/local/sbin"];

/// The three stdio descriptors handed to a container process through the runtime.
#[derive(Default)]
pub struct ProcessIo {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

fn to_stdio(fd: Option<OwnedFd>) -> Stdio {
    match fd {
        Some(fd) => Stdio::from(fd),
        None => Stdio::null(),
    }
}

/// Arguments for `create`/`restore` that concern the new container's init.
pub struct InitArgs<'a> {
    pub bundle: &'a Path,
    pub pid_file: &'a Path,
    pub console_socket: Option<&'a Path>,
    pub no_pivot_root: bool,
    pub no_new_keyring: bool,
}

/// One OCI runtime binary with its state root.
#[derive(Debug, Clone)]
pub struct OciRuntime {
    pub binary: String,
    pub root: PathBuf,
    pub systemd_cgroup: bool,
    /// Directory for per-invocation log files (the bundle).
    pub log_dir: PathBuf,
}

impl OciRuntime {
    fn command(&self, log: &Path) -> Command {
        let mut cmd = Command::new(&self.binary);
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        let mut dirs: Vec<&str> = CRIU_DIRS
            .iter()
            .copied()
            .filter(|d| Path::new(d).join("criu").exists())
            .collect();
        dirs.push(&path);
        cmd.env("PATH", dirs.join(":"));
        // youki (Rust, anyhow) would append a stack backtrace to its error
        // message when the shim's environment asks for backtraces
        cmd.env("RUST_LIB_BACKTRACE", "0");
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(log)
            .arg("--log-format")
            .arg("json");
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    fn log_path(&self) -> PathBuf {
        let n = LOG_SEQ.fetch_add(1, Ordering::Relaxed);
        self.log_dir
            .join(format!(".runtime-{}-{n}.log", std::process::id()))
    }

    /// Runs one runtime subcommand; on failure the error carries the runtime's
    /// own last error message (from its JSON log) and stderr.
    async fn exec(
        &self,
        sub: &str,
        id: &str,
        args: impl FnOnce(&mut Command),
        io: Option<ProcessIo>,
    ) -> Result<Vec<u8>> {
        let log = self.log_path();
        let mut cmd = self.command(&log);
        cmd.arg(sub);
        args(&mut cmd);
        let capture = match io {
            Some(io) => {
                cmd.stdin(to_stdio(io.stdin))
                    .stdout(to_stdio(io.stdout))
                    .stderr(to_stdio(io.stderr));
                Capture::Configured
            }
            None => Capture::Both,
        };
        debug!(binary = %self.binary, sub, id, "running OCI runtime");
        let what = format!("{} {sub}", self.binary);
        let out = reaper::run(cmd, capture, &what).await;
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        let out = out?;
        if out.code != 0 {
            let mut msg = one_line(&last_error(&log_text));
            let stderr = one_line(&String::from_utf8_lossy(&out.stderr));
            // youki repeats its logged error on stderr as `Error: …`
            let said = stderr.strip_prefix("Error: ").unwrap_or(&stderr);
            if msg.is_empty() {
                msg = stderr;
            } else if !stderr.is_empty() && !msg.contains(said) {
                msg = format!("{msg}; stderr: {stderr}");
            }
            if msg.is_empty() {
                msg = format!("exit status {}", out.code);
            }
            let prefix = format!("{} {sub} failed: ", self.binary);
            let msg = msg.strip_prefix(&prefix).unwrap_or(&msg);
            return Err(Error::Runtime(format!(
                "{} {sub} failed for container {id}: {msg}",
                self.binary
            )));
        }
        Ok(out.stdout)
    }

    pub async fn create(&self, id: &str, init: &InitArgs<'_>, io: ProcessIo) -> Result<()> {
        self.exec(
            "create",
            id,
            |c| {
                c.arg("--bundle")
                    .arg(init.bundle)
                    .arg("--pid-file")
                    .arg(init.pid_file);
                if let Some(s) = init.console_socket {
                    c.arg("--console-socket").arg(s);
                }
                if init.no_pivot_root {
                    c.arg("--no-pivot");
                }
                if init.no_new_keyring {
                    c.arg("--no-new-keyring");
                }
                c.arg(id);
            },
            Some(io),
        )
        .await
        .map(|_| ())
    }

    /// A subcommand whose only argument is the container id.
    async fn on_container(&self, sub: &str, id: &str) -> Result<()> {
        self.exec(
            sub,
            id,
            |c| {
                c.arg(id);
            },
            None,
        )
        .await
        .map(|_| ())
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        self.on_container("start", id).await
    }

    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        self.exec(
            "kill",
            id,
            |c| {
                if all {
                    c.arg("--all");
                }
                c.arg(id).arg(signal.to_string());
            },
            None,
        )
        .await
        .map(|_| ())
    }

    pub async fn delete(&self, id: &str, force: bool) -> Result<()> {
        self.exec(
            "delete",
            id,
            |c| {
                if force {
                    c.arg("--force");
                }
                c.arg(id);
            },
            None,
        )
        .await
        .map(|_| ())
    }

    pub async fn pause(&self, id: &str) -> Result<()> {
        self.on_container("pause", id).await
    }

    pub async fn resume(&self, id: &str) -> Result<()> {
        self.on_container("resume", id).await
    }

    /// Pids of every process in the container.
    pub async fn ps(&self, id: &str) -> Result<Vec<i32>> {
        let out = self
            .exec(
                "ps",
                id,
                |c| {
                    c.arg("--format").arg("json").arg(id);
                },
                None,
            )
            .await?;
        let text = String::from_utf8_lossy(&out);
        let text = text.trim();
        if text.is_empty() || text == "null" {
            return Ok(Vec::new());
        }
        serde_json::from_str(text).map_err(|e| {
            Error::Runtime(format!(
                "{} ps returned malformed JSON {text:?}: {e}",
                self.binary
            ))
        })
    }

    /// Applies new resource limits from an OCI `LinuxResources` JSON file.
    pub async fn update(&self, id: &str, resources_json: &Path) -> Result<()> {
        self.exec(
            "update",
            id,
            |c| {
                c.arg("--resources").arg(resources_json).arg(id);
            },
            None,
        )
        .await
        .map(|_| ())
    }

    /// Starts an additional process described by an OCI process JSON file.
    pub async fn exec_process(
        &self,
        id: &str,
        process_json: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        io: ProcessIo,
    ) -> Result<()> {
        self.exec(
            "exec",
            id,
            |c| {
                c.arg("--detach")
                    .arg("--process")
                    .arg(process_json)
                    .arg("--pid-file")
                    .arg(pid_file);
                if let Some(s) = console_socket {
                    c.arg("--console-socket").arg(s);
                }
                c.arg(id);
            },
            Some(io),
        )
        .await
        .map(|_| ())
    }

    /// Dumps the container with CRIU through `command` (`checkpoint`; youki
    /// spells it `checkpointt`). On failure the error names the step and
    /// carries the tail of CRIU's `dump.log`.
    pub async fn checkpoint(
        &self,
        command: &str,
        id: &str,
        opts: &CheckpointOptions,
        image: &Path,
        work: &Path,
    ) -> Result<()> {
        crate::criu_kdat::forget_if_stale();
        let r = self
            .exec(
                command,
                id,
                |c| {
                    dump_args(c, opts, image, work);
                    c.arg(id);
                },
                None,
            )
            .await;
        r.map(|_| ())
            .map_err(|e| criu_error("checkpoint (CRIU dump)", e, &work.join("dump.log")))
    }

    /// CRIU's lazy dump through `runc checkpoint --lazy-pages`: returns once
    /// CRIU's page server listens on `127.0.0.1:<port>` (CRIU writes a byte
    /// to the status descriptor then), with the dump's end still to come: the
    /// returned task ends when the page server's client has closed the
    /// connection and runc has exited. The container is left as it was
    /// (`--leave-running`: the caller keeps it paused).
    ///
    /// Errors: the runtime could not start, or it exited before the page
    /// server listened (the CRIU log's tail is quoted).
    pub async fn checkpoint_lazy(
        &self,
        id: &str,
        opts: &CheckpointOptions,
        image: &Path,
        work: &Path,
        port: u16,
    ) -> Result<LazyDump> {
        crate::criu_kdat::forget_if_stale();
        let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::io("create the lazy dump's status pipe")(e.into()))?;
        let me = self.clone();
        let (id_owned, opts_owned) = (id.to_string(), opts.clone());
        let (image, work) = (image.to_path_buf(), work.to_path_buf());
        let log = work.join("dump.log");
        let dump = tokio::spawn(async move {
            let r = me
                .exec(
                    "checkpoint",
                    &id_owned,
                    |c| {
                        // `exit` is refused with a lazy dump (see
                        // `options::decode_checkpoint_options`): it leaves
                        // the tasks running
                        dump_args(c, &opts_owned, &image, &work);
                        c.arg("--lazy-pages")
                            .arg("--page-server")
                            .arg(format!("127.0.0.1:{port}"))
                            .arg("--status-fd")
                            .arg(LAZY_STATUS_FD.to_string())
                            .arg(&id_owned);
                        // the closure cannot fail: a mapping error shows as
                        // runc's own complaint about the status descriptor
                        let _ = c.fd_mappings(vec![FdMapping {
                            parent_fd: ready_w,
                            child_fd: LAZY_STATUS_FD,
                        }]);
                    },
                    None,
                )
                .await;
            r.map(|_| ())
                .map_err(|e| criu_error("lazy checkpoint (CRIU dump)", e, &log))
        });
        // CRIU writes one byte when its page server listens; end of file
        // means runc (and CRIU with it) exited first
        let ready = tokio::task::spawn_blocking(move || {
            let mut b = [0u8; 1];
            nix::unistd::read(&ready_r, &mut b)
        })
        .await;
        match ready {
            Ok(Ok(1)) => Ok(LazyDump {
                dump,
                port,
                work: work_log(&opts.work_path),
            }),
            _ => {
                let outcome = dump.await.map_err(|e| {
                    Error::Internal(format!("the lazy checkpoint's task failed: {e}"))
                })?;
                outcome?;
                Err(Error::Runtime(format!(
                    "{} checkpoint --lazy-pages of container {id} exited before CRIU's page \
                     server listened (see {})",
                    self.binary,
                    work_log(&opts.work_path)
                )))
            }
        }
    }

    /// Restores a container from a CRIU image, detached, as a child of the shim.
    pub async fn restore(
        &self,
        id: &str,
        init: &InitArgs<'_>,
        opts: &CheckpointOptions,
        image: &Path,
        work: &Path,
        io: ProcessIo,
    ) -> Result<()> {
        crate::criu_kdat::forget_if_stale();
        let r = self
            .exec(
                "restore",
                id,
                |c| {
                    c.arg("--detach")
                        .arg("--bundle")
                        .arg(init.bundle)
                        .arg("--pid-file")
                        .arg(init.pid_file)
                        .arg("--image-path")
                        .arg(image)
                        .arg("--work-path")
                        .arg(work);
                    if let Some(s) = init.console_socket {
                        c.arg("--console-socket").arg(s);
                    }
                    if init.no_pivot_root {
                        c.arg("--no-pivot");
                    }
                    criu_flags(c, opts);
                    c.arg(id);
                },
                Some(io),
            )
            .await;
        r.map(|_| ())
            .map_err(|e| criu_error("restore (CRIU restore)", e, &work.join("restore.log")))
    }
}

/// The arguments every `checkpoint` takes: where the images and CRIU's
/// work files go, whether the tasks stay, and CRIU's flags.
fn dump_args(c: &mut Command, opts: &CheckpointOptions, image: &Path, work: &Path) {
    c.arg("--image-path")
        .arg(image)
        .arg("--work-path")
        .arg(work);
    if !opts.exit {
        c.arg("--leave-running");
    }
    criu_flags(c, opts);
}

fn criu_flags(c: &mut Command, opts: &CheckpointOptions) {
    if opts.open_tcp {
        c.arg("--tcp-established");
    }
    if opts.external_unix_sockets {
        c.arg("--ext-unix-sk");
    }
    if opts.terminal {
        c.arg("--shell-job");
    }
    if opts.file_locks {
        c.arg("--file-locks");
    }
    for ns in &opts.empty_namespaces {
        c.arg("--empty-ns").arg(ns);
    }
    if !opts.cgroups_mode.is_empty() {
        c.arg("--manage-cgroups-mode").arg(&opts.cgroups_mode);
    }
    if opts.lazy_pages {
        c.arg("--lazy-pages");
    }
}

/// The descriptor runc is told CRIU's lazy-dump status goes to.
const LAZY_STATUS_FD: i32 = 3;

/// A lazy dump whose page server is serving: [`LazyDump::finish`] waits for
/// its end.
pub struct LazyDump {
    dump: tokio::task::JoinHandle<Result<()>>,
    /// CRIU's page server port on 127.0.0.1.
    port: u16,
    /// Where CRIU's log is, for errors.
    work: String,
}

/// How long runc may take to exit once its page server's session is over.
const LAZY_FINISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl LazyDump {
    /// Waits for runc to exit; its error quotes CRIU's log. `wake`: the
    /// client never connected, so CRIU may still wait for one; a connection
    /// that closes at once ends its page server (CRIU takes a closed session
    /// as the end of the transfer and leaves the processes as they were).
    /// Errors after [`LAZY_FINISH_TIMEOUT`] rather than waiting forever.
    pub async fn finish(self, wake: bool) -> Result<()> {
        if wake && !self.dump.is_finished() {
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                tokio::net::TcpStream::connect(("127.0.0.1", self.port)),
            )
            .await;
        }
        match tokio::time::timeout(LAZY_FINISH_TIMEOUT, self.dump).await {
            Ok(joined) => joined
                .map_err(|e| Error::Internal(format!("the lazy checkpoint's task failed: {e}")))?,
            Err(_) => Err(Error::Runtime(format!(
                "runc checkpoint --lazy-pages did not exit within {LAZY_FINISH_TIMEOUT:?} after \
                 its page server's session ended; CRIU may still hold the container's processes \
                 (see {}; ending runc and its criu child resumes them)",
                self.work
            ))),
        }
    }

    /// Whether runc has exited already.
    pub fn is_finished(&self) -> bool {
        self.dump.is_finished()
    }
}

fn work_log(work: &str) -> String {
    if work.is_empty() {
        "CRIU's dump.log".into()
    } else {
        format!("{work}/dump.log")
    }
}

/// Number of CRIU log lines quoted in an error.
const CRIU_TAIL_LINES: usize = 12;

fn criu_error(step: &str, e: Error, log: &Path) -> Error {
    let tail = criu_log_tail(log, CRIU_TAIL_LINES);
    let log_note = if tail.is_empty() {
        format!("(no CRIU log at {})", log.display())
    } else {
        format!("; tail of {}:\n{tail}", log.display())
    };
    Error::Criu(format!("{step} failed: {e} {log_note}"))
}

/// The last lines of a CRIU log, preferring the ones CRIU marked as errors.
pub fn criu_log_tail(log: &Path, n: usize) -> String {
    let Ok(text) = std::fs::read_to_string(log) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("Error") || l.contains("error"))
        .collect();
    let pick = if errors.is_empty() { &lines } else { &errors };
    pick[pick.len().saturating_sub(n)..].join("\n")
}

/// The message of the last error-level entry of a runtime's JSON log: runc
/// and crun write `{"level":"error","msg":…}`, youki (tracing's JSON)
/// `{"level":"ERROR","message":…}`.
fn last_error(log: &str) -> String {
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| {
            v.get("level")
                .and_then(|l| l.as_str())
                .is_some_and(|l| l.eq_ignore_ascii_case("error"))
        })
        .and_then(|v| {
            v.get("msg")
                .or_else(|| v.get("message"))
                .and_then(|m| m.as_str())
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default()
}

/// A multi-line runtime message (youki's `…\n\nCaused by:\n    0: …`) on
/// one line.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads the pid the runtime wrote to `path`.
pub fn read_pid_file(path: &Path) -> Result<i32> {
    let text = std::fs::read_to_string(path)
        .map_err(Error::io(format!("read pid file {}", path.display())))?;
    text.trim().parse().map_err(|e| {
        Error::Runtime(format!(
            "pid file {} holds {text:?}, not a pid: {e}",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_error_takes_the_final_error_line() {
        let log = r#"{"level":"info","msg":"x"}
{"level":"error","msg":"first"}
not json
{"level":"error","msg":"container_linux.go:380: starting container process caused: exec: \"nope\": executable file not found in $PATH"}
{"level":"warning","msg":"y"}"#;
        assert!(last_error(log).contains("executable file not found"));
        assert_eq!(last_error("{\"level\":\"info\",\"msg\":\"x\"}"), "");
        // youki
        let log = r#"{"timestamp":"t","level":"ERROR","message":"error in executing command: failed to checkpoint container c\n\nCaused by:\n    failed operation due to incompatible container status: `Paused`","target":"youki"}"#;
        assert_eq!(
            one_line(&last_error(log)),
            "error in executing command: failed to checkpoint container c Caused by: \
             failed operation due to incompatible container status: `Paused`"
        );
    }

    #[test]
    fn criu_tail_prefers_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dump.log");
        std::fs::write(
            &p,
            "a\nb\n(00.1) Error (criu/sk-unix.c:1): unix: Can't dump\nc\n",
        )
        .unwrap();
        assert_eq!(
            criu_log_tail(&p, 5),
            "(00.1) Error (criu/sk-unix.c:1): unix: Can't dump"
        );
        assert_eq!(criu_log_tail(&dir.path().join("missing"), 5), "");
    }
}
