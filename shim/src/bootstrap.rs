//! The shim binary's life cycle as containerd drives it: `start` (spawn or
//! reuse the shim server for a container group), `delete` (clean up after a
//! dead server) and serving the Task API over ttrpc.
//!
//! Written here rather than taken from the shim crate's `run` so the Task
//! service can be registered under both `containerd.task.v2.Task` (containerd
//! 1.6/1.7) and `containerd.task.v3.Task` (containerd 2.x).

use std::{
    io::{Read, Write},
    os::unix::{fs::OpenOptionsExt, net::UnixListener},
    path::{Path, PathBuf},
    sync::Arc,
};

use containerd_shim::{
    asynchronous::monitor::monitor_notify_by_pid,
    protos::{
        protobuf::{well_known_types::any::Any, Message},
        shim::oci::Options as RuncOptions,
        shim_async::create_task,
        ttrpc::r#async::{transport::Listener, Server},
    },
    publisher::RemotePublisher,
    util::timestamp,
    ExitSignal, Flags, StartOpts,
};
use containerd_shim_protos::api::DeleteResponse;
use nix::{
    errno::Errno,
    sys::wait::{waitpid, WaitPidFlag, WaitStatus},
    unistd::Pid,
};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::{
    container::{PersistedRuntime, OPTIONS_FILE},
    error::{Error, Result},
    runtime::OciRuntime,
    service::TaskService,
};

/// The runtime type containerd knows this shim by.
pub const RUNTIME_TYPE: &str = "io.containerd.mose.v2";
/// Containers carrying this annotation share one shim per sandbox (pod).
const SANDBOX_ANNOTATIONS: [&str; 2] = [
    "io.kubernetes.cri.sandbox-id",
    "io.kubernetes.cri-o.SandboxID",
];
/// Exit status containerd reports for a task whose shim died.
const KILLED_STATUS: u32 = 128 + 9;

/// `start`: find the container's group, spawn (or reuse) the shim server for
/// it and print its address for containerd.
pub async fn start(flags: &Flags) -> Result<()> {
    let mut stdin = Vec::new();
    if !nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
        let _ = std::io::stdin().take(1 << 20).read_to_end(&mut stdin);
    }
    let mut extensions = Vec::new();
    if !stdin.is_empty() {
        if let Some(any) = Any::parse_from_bytes(&stdin)
            .ok()
            .as_ref()
            .and_then(crate::options::start_options)
        {
            extensions.push(any);
        }
    }
    let grouping = group_of(Path::new("config.json")).unwrap_or_else(|| flags.id.clone());
    let opts = StartOpts {
        id: flags.id.clone(),
        publish_binary: flags.publish_binary.clone(),
        address: flags.address.clone(),
        ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        namespace: flags.namespace.clone(),
        debug: flags.debug,
        extensions: extensions
            .into_iter()
            .filter(containerd_shim::bootstrap::any_is::<RuncOptions>)
            .collect(),
        ..Default::default()
    };
    let address = containerd_shim::spawn(opts, &grouping, Vec::new()).await?;
    std::fs::write("address", &address).map_err(Error::io("write the shim address file"))?;
    let mut out = std::io::stdout();
    out.write_all(address.as_bytes())
        .and_then(|_| out.flush())
        .map_err(Error::io("print the shim address"))?;
    Ok(())
}

/// The group (sandbox) of the container whose bundle holds `spec`.
fn group_of(spec: &Path) -> Option<String> {
    let text = std::fs::read_to_string(spec).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let ann = v.get("annotations")?;
    SANDBOX_ANNOTATIONS
        .iter()
        .find_map(|k| ann.get(*k).and_then(|s| s.as_str()).map(str::to_string))
        .filter(|s| !s.is_empty())
}

/// `delete`: containerd found the shim server dead; remove what is left of
/// the container (cwd is its bundle).
pub async fn delete(flags: &Flags) -> Result<()> {
    // the runtime's exit is delivered through the reaper
    reap_children();
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().map_err(Error::io("current dir"))?
    } else {
        PathBuf::from(&flags.bundle)
    };
    if let Ok(text) = std::fs::read_to_string(bundle.join(OPTIONS_FILE)) {
        if let Ok(p) = serde_json::from_str::<PersistedRuntime>(&text) {
            let rt = OciRuntime {
                binary: p.binary,
                root: p.root,
                systemd_cgroup: p.systemd_cgroup,
                log_dir: bundle.clone(),
            };
            if let Err(e) = rt.delete(&flags.id, true).await {
                warn!(error = %e, "delete after shim death");
            }
        }
    }
    let rootfs = bundle.join("rootfs");
    if let Some(r) = rootfs.to_str() {
        let _ = containerd_shim::mount::umount_recursive(Some(r), libc::MNT_DETACH);
    }
    let resp = DeleteResponse {
        pid: 0,
        exit_status: KILLED_STATUS,
        exited_at: Some(timestamp()?).into(),
        ..Default::default()
    };
    let bytes = resp.write_to_bytes()?;
    std::io::stdout()
        .write_all(&bytes)
        .map_err(Error::io("write delete response"))?;
    Ok(())
}

/// Serves the Task API on the socket containerd chose until shutdown.
pub async fn serve(flags: &Flags) -> Result<()> {
    if flags.socket.is_empty() {
        return Err(Error::InvalidArgument(
            "-socket is required to serve".into(),
        ));
    }
    set_subreaper()?;
    reap_children();
    let exit = Arc::new(ExitSignal::default());
    let ttrpc_address = std::env::var("TTRPC_ADDRESS")
        .map_err(|_| Error::InvalidArgument("TTRPC_ADDRESS is not set by containerd".into()))?;
    let publisher = RemotePublisher::new(&ttrpc_address).await?;
    let service = Arc::new(
        TaskService::new(&flags.namespace, &flags.address, publisher, exit.clone()).await?,
    );

    let Some(listener) = listen(&flags.socket)? else {
        // another server already serves this group
        signal_started();
        return Ok(());
    };
    let listener = Listener::try_from(listener).map_err(Error::io("ttrpc listener"))?;
    let mut services = create_task(service.clone());
    for (name, svc) in create_task(service) {
        services.insert(name.replace(".v3.", ".v2."), svc);
    }
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(services);
    server
        .start()
        .await
        .map_err(|e| Error::Internal(format!("start ttrpc server: {e}")))?;
    signal_started();
    info!(socket = %flags.socket, namespace = %flags.namespace, "MOSE shim serving");
    exit.wait().await;
    info!("shutting down");
    let _ = server.shutdown().await;
    let _ = std::fs::remove_file(socket_path(&flags.socket));
    Ok(())
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Binds the server socket; `None` when a live server already owns it.
fn listen(address: &str) -> Result<Option<UnixListener>> {
    let path = socket_path(address);
    if let Some(parent) = Path::new(path).parent() {
        std::fs::create_dir_all(parent)
            .map_err(Error::io(format!("create {}", parent.display())))?;
    }
    match UnixListener::bind(path) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                std::fs::write("address", address).map_err(Error::io("write address file"))?;
                return Ok(None);
            }
            std::fs::remove_file(path).map_err(Error::io(format!("remove stale socket {path}")))?;
            UnixListener::bind(path)
                .map(Some)
                .map_err(Error::io(format!("bind shim socket {path}")))
        }
        Err(e) => Err(Error::io(format!("bind shim socket {path}"))(e)),
    }
}

/// Tells the `start` process (reading our stdout) that the server is up.
fn signal_started() {
    // SAFETY: dup2 on the process's own standard descriptors.
    unsafe {
        libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO);
    }
}

fn set_subreaper() -> Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes a plain integer.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(Error::io("become child subreaper")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Reaps every child on SIGCHLD and reports its exit to the monitor, which
/// feeds both container exits and helper-process waits.
fn reap_children() {
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot watch SIGCHLD; exits will not be seen");
            return;
        }
    };
    // containerd signals the shim on its own shutdown; the shim must live on
    for kind in [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::pipe(),
    ] {
        if let Ok(mut s) = signal(kind) {
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    info!(signal = ?kind, "signal ignored");
                }
            });
        }
    }
    tokio::spawn(async move {
        loop {
            reap_all().await;
            if sigchld.recv().await.is_none() {
                break;
            }
        }
    });
}

async fn reap_all() {
    loop {
        match waitpid(Some(Pid::from_raw(-1)), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => notify(pid.as_raw(), code).await,
            Ok(WaitStatus::Signaled(pid, sig, _)) => notify(pid.as_raw(), 128 + sig as i32).await,
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(e) => {
                warn!(error = %e, "waitpid");
                break;
            }
        }
    }
}

async fn notify(pid: i32, code: i32) {
    if let Err(e) = monitor_notify_by_pid(pid, code).await {
        error!(pid, error = %e, "cannot report exit");
    }
}

/// Opens containerd's log FIFO in the bundle (cwd) for the server's logs.
pub fn open_log_fifo() -> Option<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log")
        .ok()?;
    // back to blocking writes so lines are never dropped on a full pipe
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Some(f)
}
