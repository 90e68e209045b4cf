//! Runs `ctr` (and other external commands) against the private containerd,
//! always with a timeout.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::DEFAULT_TIMEOUT;

/// Result of a finished command.
#[derive(Debug, Clone)]
pub struct Output {
    /// Printable form of the command line.
    pub cmdline: String,
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Captured standard output.
    pub stdout: String,
    /// Captured standard error.
    pub stderr: String,
}

impl Output {
    /// True when the command exited with status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Fails with a descriptive error unless the command succeeded.
    pub fn check(self) -> Result<Self> {
        if !self.success() {
            bail!(
                "`{}` failed with {:?}\nstdout: {}\nstderr: {}",
                self.cmdline,
                self.code,
                self.stdout.trim(),
                self.stderr.trim()
            );
        }
        Ok(self)
    }
}

fn spawn_reader<R: Read + Send + 'static>(r: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        buf
    })
}

/// Waits for `child` up to `timeout`; kills it (SIGKILL) on timeout.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().context("waiting for child")? {
            return Ok(Some(st));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `cmd` to completion with `timeout`, feeding `stdin` and capturing output.
/// A timeout is an error that includes whatever output was produced.
pub fn run_command(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let cmdline = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmdline}"))?;
    let out_t = spawn_reader(child.stdout.take());
    let err_t = spawn_reader(child.stderr.take());
    if let (Some(data), Some(mut w)) = (stdin, child.stdin.take()) {
        let data = data.to_vec();
        thread::spawn(move || {
            use std::io::Write;
            let _ = w.write_all(&data);
        });
    }
    let status = wait_timeout(&mut child, timeout)?;
    // Readers end when every holder of the pipes exits; bound that wait too.
    let join = |t: thread::JoinHandle<Vec<u8>>| -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !t.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        if t.is_finished() {
            String::from_utf8_lossy(&t.join().unwrap_or_default()).into_owned()
        } else {
            String::from("<output still held open by another process>")
        }
    };
    let stdout = join(out_t);
    let stderr = join(err_t);
    match status {
        Some(st) => Ok(Output {
            cmdline,
            code: st.code(),
            stdout,
            stderr,
        }),
        None => bail!(
            "`{cmdline}` timed out after {timeout:?}\nstdout: {}\nstderr: {}",
            stdout.trim(),
            stderr.trim()
        ),
    }
}

/// `ctr` bound to one containerd socket and namespace.
#[derive(Debug, Clone)]
pub struct Ctr {
    address: PathBuf,
    namespace: String,
    timeout: Duration,
}

impl Ctr {
    /// Creates a `ctr` runner for `address` (grpc socket) and `namespace`.
    pub fn new(address: &Path, namespace: &str) -> Self {
        Self {
            address: address.to_path_buf(),
            namespace: namespace.to_string(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Returns a copy using another timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            timeout,
            ..self.clone()
        }
    }

    /// The namespace used.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A `Command` for `ctr -a SOCK -n NS <args>`.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(ctr_binary());
        quiet_ctr(&mut cmd);
        cmd.arg("-a")
            .arg(&self.address)
            .arg("-n")
            .arg(&self.namespace)
            .args(args);
        cmd
    }

    /// Runs ctr with `args`; returns the output whatever the exit code.
    pub fn run<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_command(self.command(args), None, self.timeout)
    }

    /// Runs ctr with `args`, feeding `stdin`.
    pub fn run_stdin<I, S>(&self, args: I, stdin: &[u8]) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_command(self.command(args), Some(stdin), self.timeout)
    }

    /// Runs ctr with `args` and fails unless it exits 0; returns stdout.
    pub fn ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Ok(self.run(args)?.check()?.stdout)
    }

    /// Runs ctr under `script(1)` so that it has a controlling terminal
    /// (needed by `ctr run -t` / `ctr tasks exec -t`). Output has CRLF line ends.
    pub fn run_in_pty(&self, args: &[&str]) -> Result<Output> {
        let mut line = format!(
            "{} -a {} -n {}",
            shell_quote(&ctr_binary().display().to_string()),
            self.address.display(),
            shell_quote(&self.namespace)
        );
        for a in args {
            line.push(' ');
            line.push_str(&shell_quote(a));
        }
        let mut cmd = Command::new("script");
        quiet_ctr(&mut cmd);
        cmd.args(["-q", "-e", "-c", &line, "/dev/null"]);
        run_command(cmd, None, self.timeout)
    }

    /// IDs printed by `ctr <what> ls -q` (e.g. `tasks`, `containers`).
    pub fn list(&self, what: &str) -> Result<Vec<String>> {
        let out = self.ok([what, "ls", "-q"])?;
        Ok(out
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// Status of task `id` from `ctr tasks ls` (e.g. `RUNNING`), if listed.
    pub fn task_status(&self, id: &str) -> Result<Option<String>> {
        let out = self.ok(["tasks", "ls"])?;
        Ok(out.lines().skip(1).find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.first() == Some(&id)).then(|| cols.get(2).unwrap_or(&"").to_string())
        }))
    }

    /// Pid of task `id` from `ctr tasks ls`.
    pub fn task_pid(&self, id: &str) -> Result<u32> {
        let out = self.ok(["tasks", "ls"])?;
        for l in out.lines().skip(1) {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.first() == Some(&id) {
                return cols
                    .get(1)
                    .context("no pid column")?
                    .parse()
                    .context("parsing pid");
            }
        }
        bail!("task {id} not listed by ctr tasks ls:\n{out}")
    }

    /// Pids of task `id` from `ctr tasks ps`.
    pub fn task_pids(&self, id: &str) -> Result<Vec<u32>> {
        let out = self.ok(["tasks", "ps", id])?;
        Ok(out
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect())
    }

    /// Kills (SIGKILL) and deletes task `id` and container `id`, ignoring errors.
    pub fn force_remove(&self, id: &str) {
        let _ = self.run(["tasks", "kill", "-a", "-s", "SIGKILL", id]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.run(["tasks", "delete", id]) {
                Ok(o) if o.success() || o.stderr.contains("not found") => break,
                _ => thread::sleep(Duration::from_millis(100)),
            }
        }
        let _ = self.run(["tasks", "delete", "-f", id]);
        let _ = self.run(["containers", "delete", id]);
    }
}

/// ctr 2.x prints the daemon's deprecation warnings (cgroup v1 on this
/// machine) on stderr before every command's own output; tests compare
/// stderr, so they are suppressed (ctr 1.x ignores the variable).
fn quiet_ctr(cmd: &mut Command) {
    cmd.env("CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS", "1");
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The ctr binary the tests run: `$MOSE_TEST_CTR`, else `ctr` (from PATH).
pub fn ctr_binary() -> PathBuf {
    env_binary("MOSE_TEST_CTR", "ctr")
}

pub(crate) fn env_binary(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("abc-1"), "abc-1");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn commands_time_out() {
        let mut cmd = Command::new("sleep");
        cmd.arg("10");
        let t = Instant::now();
        let err = run_command(cmd, None, Duration::from_millis(200)).expect_err("timeout");
        assert!(format!("{err:#}").contains("timed out"));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn output_and_exit_code_are_captured() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "cat; echo e >&2; exit 3"]);
        let o = run_command(cmd, Some(b"in"), Duration::from_secs(10)).expect("run");
        assert_eq!(
            (o.code, o.stdout.as_str(), o.stderr.as_str()),
            (Some(3), "in", "e\n")
        );
    }
}
