//! Task IO over FIFOs created by the test (as containerd clients do).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

/// FIFO paths for one process; empty strings mean "no such stream".
#[derive(Debug, Clone, Default)]
pub struct TaskIo {
    /// stdin FIFO path.
    pub stdin: Option<PathBuf>,
    /// stdout FIFO path.
    pub stdout: Option<PathBuf>,
    /// stderr FIFO path (unused with a terminal).
    pub stderr: Option<PathBuf>,
    /// Allocate a terminal.
    pub terminal: bool,
}

fn s(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

impl TaskIo {
    /// No IO at all (streams go to /dev/null).
    pub fn null() -> Self {
        Self::default()
    }

    /// Creates FIFOs `<dir>/<name>-{stdin,stdout,stderr}` as requested.
    pub fn create(
        dir: &Path,
        name: &str,
        stdin: bool,
        stderr: bool,
        terminal: bool,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mk = |stream: &str| -> Result<PathBuf> {
            let p = dir.join(format!("{name}-{stream}"));
            nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .with_context(|| format!("mkfifo {}", p.display()))?;
            Ok(p)
        };
        Ok(Self {
            stdin: if stdin { Some(mk("stdin")?) } else { None },
            stdout: Some(mk("stdout")?),
            stderr: if stderr && !terminal {
                Some(mk("stderr")?)
            } else {
                None
            },
            terminal,
        })
    }

    /// Paths as strings, as the Tasks API wants them.
    pub fn strings(&self) -> (String, String, String) {
        (s(&self.stdin), s(&self.stdout), s(&self.stderr))
    }

    /// Removes the FIFO files.
    pub fn remove(&self) {
        for p in [&self.stdin, &self.stdout, &self.stderr]
            .into_iter()
            .flatten()
        {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Reads a FIFO to EOF in a background thread, keeping what was read so far.
pub struct FifoReader {
    path: PathBuf,
    buf: Arc<Mutex<Vec<u8>>>,
    rx: mpsc::Receiver<std::io::Result<()>>,
}

impl FifoReader {
    /// Starts reading `path` (opening blocks until a writer appears).
    pub fn spawn(path: &Path) -> Self {
        let (tx, rx) = mpsc::channel();
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (p, b) = (path.to_path_buf(), buf.clone());
        thread::spawn(move || {
            let r = (|| {
                let mut f = File::open(&p)?;
                let mut chunk = [0u8; 4096];
                loop {
                    let n = f.read(&mut chunk)?;
                    if n == 0 {
                        return Ok(());
                    }
                    if let Ok(mut b) = b.lock() {
                        b.extend_from_slice(&chunk[..n]);
                    }
                }
            })();
            let _ = tx.send(r);
        });
        Self {
            path: path.to_path_buf(),
            buf,
            rx,
        }
    }

    /// What was read so far (lossy UTF-8).
    pub fn contents(&self) -> String {
        self.buf
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the output contains `needle`; returns the output so far.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String> {
        crate::poll_until(
            &format!("{needle:?} on {}", self.path.display()),
            timeout,
            || {
                let c = self.contents();
                c.contains(needle).then_some(c)
            },
        )
        .with_context(|| format!("output so far: {:?}", self.contents()))
    }

    /// Waits for EOF up to `timeout`; returns everything read (lossy UTF-8).
    pub fn collect(self, timeout: Duration) -> Result<String> {
        match self.rx.recv_timeout(timeout) {
            Ok(r) => {
                r.with_context(|| format!("reading {}", self.path.display()))?;
                Ok(self.contents())
            }
            Err(_) => {
                // Unblock a reader still waiting in open(2).
                let _ = OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&self.path);
                Err(anyhow!(
                    "no EOF on {} within {timeout:?}; read so far: {:?}",
                    self.path.display(),
                    self.contents()
                ))
            }
        }
    }
}

/// Writer side of a stdin FIFO; opened O_RDWR so it never blocks.
pub struct FifoWriter {
    file: Option<File>,
}

impl FifoWriter {
    /// Opens `path` for writing without waiting for a reader.
    pub fn open(path: &Path) -> Result<Self> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self { file: Some(f) })
    }

    /// Writes `data` (must fit in the pipe buffer if nobody reads yet).
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let f = self.file.as_mut().context("stdin already closed")?;
        f.write_all(data)?;
        Ok(())
    }

    /// Closes our end.
    pub fn close(&mut self) {
        self.file = None;
    }
}
