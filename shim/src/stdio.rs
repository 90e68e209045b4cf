//! A container process's stdio: pipes or a terminal between the process and
//! the shim, and copies between those and the FIFOs containerd created.
//!
//! The shim, not the process, holds containerd's FIFOs, so a containerd
//! restart never breaks a container's stdout (the pipes stay open in the shim).

use std::{
    os::fd::{AsFd, AsRawFd, OwnedFd},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use containerd_shim::io::{IoTasks, Pty, Stdio};
use nix::{
    sys::socket::{recvmsg, ControlMessageOwned, MsgFlags},
    unistd::{fchown, pipe2, Gid, Uid},
};
use tokio::net::{unix::pipe, UnixListener};

use crate::{
    error::{Error, Result},
    log_uri::{open_log_file, FileCopies, LogBinary, LogTarget},
    runtime::ProcessIo,
};

static SOCKET_SEQ: AtomicU64 = AtomicU64::new(0);

/// The shim's side of a process's stdio, kept for its whole life.
#[derive(Clone, Default)]
pub struct ProcessStdio {
    pub tasks: IoTasks,
    pub pty: Option<Pty>,
    /// Output copies into log files (`file://` and plain-path log URIs).
    files: FileCopies,
    /// A logging binary (`binary://`), stopped if the process never starts.
    binary: Option<Arc<LogBinary>>,
    /// The shim's own reader on the stdin FIFO, kept until the process is
    /// deleted. At the process's exit the stdin copy ends (and with it the
    /// copy's reader), and a client still writing — a terminal's
    /// end-of-input, a late keystroke — would get EPIPE; containerd's CRI
    /// then closes its side of the exec's output before reading it all, and
    /// the output is lost (about half of `crictl exec -it` runs). containerd's
    /// runc shim likewise keeps stdin open until delete.
    stdin_reader: Option<Arc<std::fs::File>>,
}

impl ProcessStdio {
    /// Sets the terminal size (ResizePty).
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let Some(pty) = &self.pty else {
            // nothing to resize, as with containerd's runc shim
            return Ok(());
        };
        let ws = libc::winsize {
            ws_row: height.min(u16::MAX as u32) as u16,
            ws_col: width.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize struct we own from a valid pty fd.
        let rc = unsafe { libc::ioctl(pty.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc != 0 {
            return Err(Error::io("resize terminal")(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Lets the output reach containerd (FIFOs) or the log files, then
    /// releases everything: after the process exited.
    pub async fn drain(&self) {
        self.files.drain().await;
        self.tasks.shutdown().await;
    }

    /// Cancels every copy at once: at delete, or after a failed start.
    pub async fn abort(&self) {
        self.files.abort();
        self.tasks.abort().await;
        if let Some(b) = &self.binary {
            b.finish_later();
        }
    }

    /// Lets go of the process's input (CloseIO).
    pub fn close_input(&self) {
        self.tasks.close_input();
    }
}

/// Who the process's stdio belongs to.
#[derive(Clone, Copy)]
pub struct IoOwner<'a> {
    /// Owner of the pipes handed to the process (`IoUid`/`IoGid`).
    pub uid: u32,
    pub gid: u32,
    /// For a logging binary's environment.
    pub container: &'a str,
    pub namespace: &'a str,
}

/// Stdio being prepared for a process not yet started by the runtime.
pub struct PendingStdio {
    pub shim: ProcessStdio,
    /// Descriptors handed to the runtime (and so to the process).
    pub runtime: ProcessIo,
    /// For terminal processes: where the runtime sends the pty master.
    pub console: Option<ConsoleSocket>,
    stdio: Stdio,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::io("create stdio pipe")(std::io::Error::from(e)))
}

fn chown_fd(fd: &OwnedFd, uid: u32, gid: u32) -> Result<()> {
    if uid == 0 && gid == 0 {
        return Ok(());
    }
    fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .map_err(|e| Error::io("chown stdio pipe to the io uid/gid")(std::io::Error::from(e)))
}

/// Where stdout and stderr go: stdout's URI decides for both when it names a
/// file or a logging binary (containerd's runc shim does the same).
fn output_targets(stdio: &Stdio) -> Result<(Option<LogTarget>, Option<LogTarget>)> {
    let out = LogTarget::parse(&stdio.stdout)?;
    let err = match &out {
        Some(t) if t.takes_both_streams() => {
            if stdio.stderr.is_empty() {
                None
            } else {
                Some(t.clone())
            }
        }
        _ => LogTarget::parse(&stdio.stderr)?,
    };
    Ok((out, err))
}

impl PendingStdio {
    /// Prepares pipes (or a console socket for a terminal) for `stdio`, and
    /// starts copying between them and containerd's FIFOs (or log files, or
    /// a logging binary).
    pub async fn prepare(stdio: &Stdio, owner: IoOwner<'_>) -> Result<Self> {
        Self::prepare_with(stdio, owner, false).await
    }

    /// Like [`prepare`](Self::prepare), but streams containerd did not ask for
    /// become pipes the shim drains (stdout/stderr) or closes (stdin) instead
    /// of the host's `/dev/null`. A restored process holding the host's
    /// `/dev/null` could not be checkpointed again (CRIU cannot resolve a file
    /// outside the container's mounts), which would end its migrations.
    pub async fn prepare_with(stdio: &Stdio, owner: IoOwner<'_>, null_pipes: bool) -> Result<Self> {
        let mut me = Self {
            shim: ProcessStdio::default(),
            runtime: ProcessIo::default(),
            console: None,
            stdio: stdio.clone(),
        };
        if !stdio.stdin.is_empty() {
            let reader = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&stdio.stdin)
                .map_err(Error::io(format!("hold stdin FIFO {}", stdio.stdin)))?;
            me.shim.stdin_reader = Some(Arc::new(reader));
        }
        if stdio.terminal {
            me.console = Some(ConsoleSocket::bind()?);
            return Ok(me);
        }
        if !stdio.stdin.is_empty() {
            let (r, w) = pipe()?;
            chown_fd(&r, owner.uid, owner.gid)?;
            let sender =
                pipe::Sender::from_owned_fd(w).map_err(Error::io("register stdin pipe"))?;
            me.shim.tasks.copy_from_fifo(&stdio.stdin, sender)?;
            me.runtime.stdin = Some(r);
        }
        if let Err(e) = me.prepare_output(stdio, owner).await {
            me.shim.abort().await;
            return Err(e);
        }
        if null_pipes {
            me.null_pipes()?;
        }
        Ok(me)
    }

    async fn prepare_output(&mut self, stdio: &Stdio, owner: IoOwner<'_>) -> Result<()> {
        let (out, err) = output_targets(stdio)?;
        if let Some(LogTarget::Binary { path, args }) = &out {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            chown_fd(&out_w, owner.uid, owner.gid)?;
            chown_fd(&err_w, owner.uid, owner.gid)?;
            let bin = LogBinary::start(path, args, out_r, err_r, owner.container, owner.namespace)
                .await?;
            self.shim.binary = Some(Arc::new(bin));
            self.runtime.stdout = Some(out_w);
            self.runtime.stderr = (!stdio.stderr.is_empty()).then_some(err_w);
            return Ok(());
        }
        let mut file = None;
        for (target, slot) in [(out, 1), (err, 2)] {
            let Some(target) = target else { continue };
            let (r, w) = pipe()?;
            chown_fd(&w, owner.uid, owner.gid)?;
            let receiver =
                pipe::Receiver::from_owned_fd(r).map_err(Error::io("register output pipe"))?;
            self.route(receiver, &target, &mut file)?;
            if slot == 1 {
                self.runtime.stdout = Some(w);
            } else {
                self.runtime.stderr = Some(w);
            }
        }
        Ok(())
    }

    /// Sends one output stream to its destination; `file` caches the log
    /// file both streams share.
    fn route(
        &self,
        from: impl tokio::io::AsyncRead + Send + Unpin + 'static,
        target: &LogTarget,
        file: &mut Option<std::fs::File>,
    ) -> Result<()> {
        match target {
            LogTarget::Fifo(path) => self.shim.tasks.copy_to_fifo(from, path)?,
            LogTarget::File(path) => {
                if file.is_none() {
                    *file = Some(open_log_file(path)?);
                }
                let f = file
                    .as_ref()
                    .map(|f| f.try_clone())
                    .transpose()
                    .map_err(Error::io(format!("log file {}", path.display())))?
                    .ok_or_else(|| Error::Internal("log file not open".into()))?;
                self.shim.files.spawn(from, f);
            }
            LogTarget::Binary { path, .. } => {
                return Err(Error::InvalidArgument(format!(
                    "logging binary {} for a terminal process is not supported: \
                     use a file:// log URI or no terminal",
                    path.display()
                )))
            }
        }
        Ok(())
    }

    /// Streams containerd did not ask for become pipes (see `prepare_with`).
    fn null_pipes(&mut self) -> Result<()> {
        if self.runtime.stdin.is_none() {
            let (r, _w) = pipe()?;
            self.runtime.stdin = Some(r);
        }
        for slot in [&mut self.runtime.stdout, &mut self.runtime.stderr] {
            if slot.is_none() {
                let (r, w) = pipe()?;
                let mut receiver = pipe::Receiver::from_owned_fd(r)
                    .map_err(Error::io("register output drain pipe"))?;
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut receiver, &mut tokio::io::sink()).await;
                });
                *slot = Some(w);
            }
        }
        Ok(())
    }

    pub fn console_path(&self) -> Option<PathBuf> {
        self.console.as_ref().map(|c| c.path.clone())
    }

    /// Takes the descriptors to hand to the runtime.
    pub fn take_runtime_io(&mut self) -> ProcessIo {
        std::mem::take(&mut self.runtime)
    }

    /// Completes a terminal process's stdio once the runtime has sent the
    /// console; for pipes there is nothing left to do.
    pub async fn finish(mut self, console: Option<OwnedFd>) -> Result<ProcessStdio> {
        if let Some(master) = console {
            let pty = Pty::new(std::fs::File::from(master))?;
            if !self.stdio.stdin.is_empty() {
                self.shim
                    .tasks
                    .copy_from_fifo(&self.stdio.stdin, pty.clone())?;
            }
            if let (Some(target), _) = output_targets(&self.stdio)? {
                self.route(HangupAsEof(pty.clone()), &target, &mut None)?;
            }
            self.shim.pty = Some(pty);
        }
        Ok(self.shim)
    }

    /// Releases everything after a failed start.
    pub async fn abort(self) {
        self.shim.abort().await;
        if let Some(b) = &self.shim.binary {
            b.kill();
        }
    }
}

/// A terminal's master side read until the last process holding its slave
/// side is gone: the kernel then answers EIO, which this turns into end of
/// file. The copy to containerd's FIFO (`tokio::io::copy`) reads ahead of
/// what it has written and would drop its buffered output on an error;
/// at end of file it writes everything out first. Without this, the output
/// of a process that writes and exits at once was lost about one time in
/// three (`crictl exec -it ... sh -c 'echo ...'`).
struct HangupAsEof<R>(R);

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for HangupAsEof<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match std::pin::Pin::new(&mut self.0).poll_read(cx, buf) {
            std::task::Poll::Ready(Err(e)) if e.raw_os_error() == Some(libc::EIO) => {
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// A unix socket on which the runtime sends a terminal's master side.
pub struct ConsoleSocket {
    pub path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    fn bind() -> Result<Self> {
        let dir = Path::new("/run/mose/console");
        std::fs::create_dir_all(dir).map_err(Error::io("create /run/mose/console"))?;
        let n = SOCKET_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(Error::io(format!("bind console socket {}", path.display())))?;
        Ok(Self { path, listener })
    }

    /// Waits for the runtime to connect and receives the pty master.
    pub async fn receive(&self) -> Result<OwnedFd> {
        let (stream, _) = self
            .listener
            .accept()
            .await
            .map_err(Error::io("accept on console socket"))?;
        loop {
            stream
                .readable()
                .await
                .map_err(Error::io("console socket"))?;
            let got = stream.try_io(tokio::io::Interest::READABLE, || {
                let mut buf = [0u8; 4096];
                let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
                let msg = recvmsg::<()>(
                    stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(std::io::Error::from)?;
                let cmsgs = msg.cmsgs().map_err(std::io::Error::from)?;
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        if let Some(fd) = fds.first() {
                            // SAFETY: SCM_RIGHTS just gave us ownership of this descriptor.
                            return Ok(Some(unsafe {
                                <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(*fd)
                            }));
                        }
                    }
                }
                Ok(None)
            });
            match got {
                Ok(Some(fd)) => return Ok(fd),
                Ok(None) => {
                    return Err(Error::Runtime(
                        "the runtime connected to the console socket but sent no terminal".into(),
                    ))
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(Error::io("receive terminal from the runtime")(e)),
            }
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
