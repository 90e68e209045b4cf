//! The shim binary's life cycle as containerd drives it: `start` (spawn or
//! reuse the shim server for a container group), `delete` (clean up after a
//! dead server) and serving the Task API over ttrpc.
//!
//! Written here rather than taken from the shim crate's `run` so the Task
//! service can be registered under both `containerd.task.v2.Task` (containerd
//! 1.6/1.7) and `containerd.task.v3.Task` (containerd 2.x).
//!
//! What `start` prints depends on the daemon (see [`start_response`]):
//! containerd 1.6 reads a bare address; 1.7 also reads JSON bootstrap
//! parameters but refuses `"version": 3`; 2.x reads both and uses task API
//! v3 only when told so by `{"version":3,"address":…,"protocol":"ttrpc"}`
//! (a bare address makes it fall back to v2). The `address` file in the
//! bundle always holds the bare address: 1.7 re-reads it after a restart
//! through the same parser, 2.x reads its own `bootstrap.json` first.
//!
//! Signals: SIGTERM or SIGINT make a server that holds no container exit 0
//! (as containerd's runc shim does); a server that still holds containers
//! logs the signal and keeps serving them. See [`handle_exit_signals`].

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
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{error, info, warn};

use crate::{
    container::{PersistedRuntime, OPTIONS_FILE},
    error::{Error, Result},
    runtime::OciRuntime,
    service::TaskService,
};

/// The runtime type containerd knows this shim by.
pub const RUNTIME_TYPE: &str = mose_contract::RUNTIME_TYPE;
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
    let major = containerd_major(&flags.publish_binary).await;
    let response = start_response(&address, major);
    let mut out = std::io::stdout();
    out.write_all(response.as_bytes())
        .and_then(|_| out.flush())
        .map_err(Error::io("print the shim address"))?;
    Ok(())
}

/// The task API version announced to containerd 2.x.
const TASK_API_VERSION: u32 = 3;

/// What `start` prints for containerd of major version `major`:
///
/// - 2.x: `{"version":3,"address":"unix://…","protocol":"ttrpc"}`, so it
///   calls `containerd.task.v3.Task` (its `parseStartResponse` takes JSON
///   of version 2 or 3 and treats anything else as a bare v2 address);
/// - 1.7: the bare address. Its `parseStartResponse` takes JSON too, but
///   rejects version 3 ("unsupported shim version (3)"), and JSON of
///   version 2 would say no more than the bare address does;
/// - 1.6 reads only a bare address (`client.Connect` on the trimmed output);
/// - unknown (no `-publish-binary`, `--version` failed): the bare address,
///   which every version accepts (2.x then uses v2, as before).
///
/// containerd's own runc shim always prints the JSON of its release (v3
/// since 2.0): it ships with the daemon. The MOSE shim serves daemons of
/// several releases, and the environment they set is the same in 1.7 and
/// 2.x (`MAX_SHIM_VERSION=2` in both), so it asks the daemon binary.
fn start_response(address: &str, major: Option<u32>) -> String {
    match major {
        Some(m) if m >= 2 => serde_json::json!({
            "version": TASK_API_VERSION,
            "address": address,
            "protocol": "ttrpc",
        })
        .to_string(),
        _ => address.to_string(),
    }
}

/// Where the major versions of containerd binaries are remembered, so only
/// the first `start` after a containerd install or upgrade runs
/// `containerd --version` (≈30 ms on the task-create path).
const VERSION_CACHE_DIR: &str = "/run/mose/containerd-version";
/// Bound on `containerd --version`.
const VERSION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The major version of the containerd binary `binary` (containerd passes
/// its own executable as `-publish-binary`), from `<binary> --version`,
/// cached by the binary's path, inode, size and mtime.
async fn containerd_major(binary: &str) -> Option<u32> {
    containerd_major_cached(binary, Path::new(VERSION_CACHE_DIR)).await
}

async fn containerd_major_cached(binary: &str, cache_dir: &Path) -> Option<u32> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    if binary.is_empty() {
        return None;
    }
    let md = std::fs::metadata(binary).ok()?;
    let key = format!(
        "{binary} {} {} {} {}.{}",
        md.dev(),
        md.ino(),
        md.size(),
        md.mtime(),
        md.mtime_nsec()
    );
    let mut h = std::collections::hash_map::DefaultHasher::new();
    binary.hash(&mut h);
    let cache = cache_dir.join(format!("{:016x}", h.finish()));
    if let Some(major) = std::fs::read_to_string(&cache).ok().and_then(|text| {
        let (k, v) = text.trim_end().rsplit_once(' ')?;
        (k == key).then(|| v.parse().ok()).flatten()
    }) {
        return Some(major);
    }
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(VERSION_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) if out.status.success() => out,
        other => {
            warn!(binary, result = ?other.map(|r| r.map(|o| o.status)), "cannot tell the containerd version; announcing a bare address");
            return None;
        }
    };
    let major = parse_containerd_major(&String::from_utf8_lossy(&out.stdout))?;
    let _ = std::fs::create_dir_all(cache_dir);
    let tmp = cache.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, format!("{key} {major}\n")).is_ok() {
        let _ = std::fs::rename(&tmp, &cache);
    }
    Some(major)
}

/// The major version in `containerd --version` output, e.g.
/// `containerd github.com/containerd/containerd v2.2.4 193637f…` or
/// Debian's `containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1`.
fn parse_containerd_major(text: &str) -> Option<u32> {
    text.split_whitespace().find_map(|tok| {
        let v = tok.strip_prefix('v').unwrap_or(tok);
        let (major, rest) = v.split_once('.')?;
        let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
        (!major.is_empty() && !minor.is_empty())
            .then(|| major.parse().ok())
            .flatten()
    })
}

/// The group (sandbox) of the container whose bundle holds `spec`.
fn group_of(spec: &Path) -> Option<String> {
    let bytes = std::fs::read(spec).ok()?;
    let spec = crate::oci::BundleSpec::parse(&bytes).ok()?;
    let ann = spec.annotations().as_ref()?;
    SANDBOX_ANNOTATIONS
        .iter()
        .find_map(|k| ann.get(*k).cloned())
        .filter(|s| !s.is_empty())
}

/// `delete`: containerd found the shim server dead; remove what is left of
/// the container (cwd is its bundle).
pub async fn delete(flags: &Flags) -> Result<()> {
    ignore_exit_signals();
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
    // registered first: from here on SIGTERM/SIGINT wait for the handler
    // instead of killing the server half-started
    let exit_signals = ExitSignals::register()?;
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
    for (name, svc) in create_task(service.clone()) {
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
    tokio::spawn(handle_exit_signals(exit_signals, service, exit.clone()));
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

/// SIGTERM and SIGINT, caught from the start of `serve`.
struct ExitSignals {
    term: Signal,
    int: Signal,
}

impl ExitSignals {
    fn register() -> Result<Self> {
        let catch =
            |kind: SignalKind, name: &str| signal(kind).map_err(Error::io(format!("catch {name}")));
        Ok(Self {
            term: catch(SignalKind::terminate(), "SIGTERM")?,
            int: catch(SignalKind::interrupt(), "SIGINT")?,
        })
    }
}

/// SIGTERM/SIGINT to the shim server: handled as containerd's `Shutdown`
/// request without `now` — the server exits (status 0, socket removed) when
/// it holds no container, as containerd's runc shim exits on these signals
/// (`pkg/shim` `handleExitSignals`). A server that still holds containers
/// logs the signal and keeps serving them; it exits once containerd has
/// deleted the last one (containerd then sends `Shutdown`), and SIGKILL
/// still ends it at once.
///
/// Where runc's shim differs: it exits even with containers, leaving them
/// running without a shim until containerd notices the lost connection and
/// runs `shim delete`, which kills them. MOSE's containers carry state the
/// migration machinery exists to keep; a stray signal to a shim (an admin's
/// `pkill`, a service manager stopping containerd's process group) must not
/// take that state with it. containerd itself never signals shims: they run
/// in their own process group, and a containerd restart reconnects to them.
async fn handle_exit_signals(
    mut sig: ExitSignals,
    service: Arc<TaskService>,
    exit: Arc<ExitSignal>,
) {
    use containerd_shim::protos::{
        api::ShutdownRequest, shim_async::Task, ttrpc::r#async::TtrpcContext,
    };
    loop {
        let name = tokio::select! {
            Some(()) = sig.term.recv() => "SIGTERM",
            Some(()) = sig.int.recv() => "SIGINT",
            else => return,
        };
        let ctx = TtrpcContext {
            mh: Default::default(),
            metadata: Default::default(),
            timeout_nano: 0,
            connection_data: Default::default(),
        };
        let req = ShutdownRequest {
            now: false,
            ..Default::default()
        };
        if let Err(e) = service.shutdown(&ctx, req).await {
            warn!(signal = name, error = ?e, "shutdown on signal failed");
        }
        // the exit signal is set now if the server had no container left
        if tokio::time::timeout(std::time::Duration::ZERO, exit.wait())
            .await
            .is_ok()
        {
            info!(signal = name, "no container left: exiting");
            return;
        }
        warn!(
            signal = name,
            "signal ignored: this shim still serves containers; it exits once \
             containerd has deleted them (SIGKILL ends it now, and containerd \
             then kills its containers)"
        );
    }
}

/// SIGTERM and SIGINT are ignored by helpers that must finish (`delete`).
fn ignore_exit_signals() {
    for kind in [SignalKind::terminate(), SignalKind::interrupt()] {
        if let Ok(mut s) = signal(kind) {
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    info!(signal = ?kind, "signal ignored while cleaning up");
                }
            });
        }
    }
}

/// Reaps every child on SIGCHLD and reports its exit to the monitor, which
/// feeds both container exits and helper-process waits. SIGPIPE is ignored
/// (a reader of a copied stream went away; the write reports it).
fn reap_children() {
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot watch SIGCHLD; exits will not be seen");
            return;
        }
    };
    if let Ok(mut s) = signal(SignalKind::pipe()) {
        tokio::spawn(async move { while s.recv().await.is_some() {} });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_versions_are_parsed() {
        let cases = [
            (
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3",
                Some(1),
            ),
            (
                "containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+deb13u1",
                Some(1),
            ),
            (
                "containerd github.com/containerd/containerd v2.2.4 193637f7ee8ae5f5aa5248f49e7baa3e6164966e",
                Some(2),
            ),
            (
                "containerd github.com/containerd/containerd/v2 v2.3.0-rc.1 abc",
                Some(2),
            ),
            ("containerd", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_containerd_major(text), want, "{text}");
        }
    }

    #[test]
    fn start_response_is_json_v3_only_for_containerd_2() {
        let addr = "unix:///run/containerd/s/abc";
        assert_eq!(start_response(addr, None), addr);
        assert_eq!(start_response(addr, Some(1)), addr);
        let v: serde_json::Value = serde_json::from_str(&start_response(addr, Some(2))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"version": 3, "address": addr, "protocol": "ttrpc"})
        );
    }

    #[tokio::test]
    async fn containerd_major_is_asked_once_and_cached() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("containerd");
        let count = dir.path().join("count");
        std::fs::write(
            &bin,
            format!(
                "#!/bin/sh\necho x >> {}\necho 'containerd github.com/containerd/containerd v2.2.4 abc'\n",
                count.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let b = bin.display().to_string();
        let cache = dir.path().join("cache");
        assert_eq!(containerd_major_cached(&b, &cache).await, Some(2));
        assert_eq!(containerd_major_cached(&b, &cache).await, Some(2));
        let runs = std::fs::read_to_string(&count).unwrap().lines().count();
        assert_eq!(runs, 1, "asked once, then cached");
        // a changed binary is asked again
        std::fs::write(&bin, "#!/bin/sh\necho 'containerd x 1.7.24~ds1 y'\n").unwrap();
        assert_eq!(containerd_major_cached(&b, &cache).await, Some(1));
        assert_eq!(containerd_major_cached("", &cache).await, None);
        assert_eq!(
            containerd_major_cached("/nonexistent/containerd", &cache).await,
            None
        );
    }
}
