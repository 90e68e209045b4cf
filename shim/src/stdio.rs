//! A container process's stdio: pipes or a terminal between the process and
//! the shim, and copies between those and the FIFOs containerd created.
//!
//! The shim, not the process, holds containerd's FIFOs, so a containerd
//! restart never breaks a container's stdout (the pipes stay open in the shim).

use std::{
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use containerd_shim::io::{IoTasks, Pty, Stdio};
use nix::{
    sys::socket::{recvmsg, ControlMessageOwned, MsgFlags},
    unistd::{fchown, pipe2, Gid, Uid},
};
use tokio::net::{unix::pipe, UnixListener};

use crate::{
    error::{Error, Result},
    runtime::ProcessIo,
};

static SOCKET_SEQ: AtomicU64 = AtomicU64::new(0);

/// The shim's side of a process's stdio, kept for its whole life.
#[derive(Clone, Default)]
pub struct ProcessStdio {
    pub tasks: IoTasks,
    pub pty: Option<Pty>,
}

impl ProcessStdio {
    /// Sets the terminal size (ResizePty).
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let Some(pty) = &self.pty else {
            return Err(Error::FailedPrecondition(
                "cannot resize: the process has no terminal".into(),
            ));
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

impl PendingStdio {
    /// Prepares pipes (or a console socket for a terminal) for `stdio`, and
    /// starts copying between them and containerd's FIFOs.
    pub fn prepare(stdio: &Stdio, uid: u32, gid: u32) -> Result<Self> {
        Self::prepare_with(stdio, uid, gid, false)
    }

    /// Like [`prepare`](Self::prepare), but streams containerd did not ask for
    /// become pipes the shim drains (stdout/stderr) or closes (stdin) instead
    /// of the host's `/dev/null`. A restored process holding the host's
    /// `/dev/null` could not be checkpointed again (CRIU cannot resolve a file
    /// outside the container's mounts), which would end its migrations.
    pub fn prepare_with(stdio: &Stdio, uid: u32, gid: u32, null_pipes: bool) -> Result<Self> {
        let shim = ProcessStdio::default();
        let mut runtime = ProcessIo::default();
        if stdio.terminal {
            let console = ConsoleSocket::bind()?;
            return Ok(Self {
                shim,
                runtime,
                console: Some(console),
                stdio: stdio.clone(),
            });
        }
        if !stdio.stdin.is_empty() {
            let (r, w) = pipe()?;
            chown_fd(&r, uid, gid)?;
            let sender =
                pipe::Sender::from_owned_fd(w).map_err(Error::io("register stdin pipe"))?;
            shim.tasks.copy_from_fifo(&stdio.stdin, sender)?;
            runtime.stdin = Some(r);
        }
        if !stdio.stdout.is_empty() {
            let (r, w) = pipe()?;
            chown_fd(&w, uid, gid)?;
            let receiver =
                pipe::Receiver::from_owned_fd(r).map_err(Error::io("register stdout pipe"))?;
            shim.tasks.copy_to_fifo(receiver, &stdio.stdout)?;
            runtime.stdout = Some(w);
        }
        if !stdio.stderr.is_empty() {
            let (r, w) = pipe()?;
            chown_fd(&w, uid, gid)?;
            let receiver =
                pipe::Receiver::from_owned_fd(r).map_err(Error::io("register stderr pipe"))?;
            shim.tasks.copy_to_fifo(receiver, &stdio.stderr)?;
            runtime.stderr = Some(w);
        }
        if null_pipes {
            if runtime.stdin.is_none() {
                let (r, _w) = pipe()?;
                runtime.stdin = Some(r);
            }
            for slot in [&mut runtime.stdout, &mut runtime.stderr] {
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
        }
        Ok(Self {
            shim,
            runtime,
            console: None,
            stdio: stdio.clone(),
        })
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
            if !self.stdio.stdout.is_empty() {
                self.shim
                    .tasks
                    .copy_to_fifo(pty.clone(), &self.stdio.stdout)?;
            }
            self.shim.pty = Some(pty);
        }
        Ok(self.shim)
    }

    /// Releases everything after a failed start.
    pub async fn abort(self) {
        self.shim.tasks.abort().await;
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
