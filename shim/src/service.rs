//! The containerd Task API (shim v2) served by the MOSE shim: one service for
//! every container of this shim's group, publishing task events to containerd.

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use containerd_shim::{
    asynchronous::monitor::monitor_subscribe,
    io::Stdio,
    monitor::{Subject, Topic},
    protos::{
        api::*,
        events::task::*,
        protobuf::{
            well_known_types::any::Any, well_known_types::timestamp::Timestamp, MessageDyn,
        },
        shim::oci::ProcessDetails,
        shim_async::Task,
        topics::*,
        ttrpc::{self, r#async::TtrpcContext},
    },
    publisher::RemotePublisher,
    util::timestamp,
    ExitSignal,
};
use containerd_shim_protos::protobuf::Message;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::{
    container::{parse_exec_spec, Container, CreateArgs},
    error::{Error, Result},
    metrics,
    options::{decode_checkpoint_options, decode_runtime_options},
    process::{Exit, Process, State},
};

/// How long an exit waits for the process's output to drain to containerd
/// before it is reported (so `ctr run` prints everything the process wrote).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
/// Exits of unknown pids are kept this long, in case the pid is registered late.
const UNCLAIMED_TTL: Duration = Duration::from_secs(30);

type ContainerRef = Arc<Mutex<Container>>;

/// The shared state behind the Task service.
pub struct TaskService {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    containerd_address: String,
    containers: Mutex<HashMap<String, ContainerRef>>,
    /// pid -> (container id, exec id) of every live process.
    pids: std::sync::Mutex<HashMap<i32, (String, String)>>,
    /// Exits that arrived before their pid was registered.
    unclaimed: std::sync::Mutex<VecDeque<(i32, i32, Timestamp, Instant)>>,
    publisher: RemotePublisher,
    exit: Arc<ExitSignal>,
}

impl TaskService {
    pub async fn new(
        namespace: &str,
        containerd_address: &str,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
    ) -> Result<Self> {
        let inner = Arc::new(Inner {
            namespace: namespace.to_string(),
            containerd_address: containerd_address.to_string(),
            containers: Mutex::new(HashMap::new()),
            pids: std::sync::Mutex::new(HashMap::new()),
            unclaimed: std::sync::Mutex::new(VecDeque::new()),
            publisher,
            exit,
        });
        let mut sub = monitor_subscribe(Topic::Pid).await?;
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            while let Some(ev) = sub.rx.recv().await {
                let Subject::Pid(pid) = ev.subject else {
                    continue;
                };
                let Some(inner) = weak.upgrade() else { break };
                let ts = timestamp().unwrap_or_default();
                tokio::spawn(async move { inner.handle_exit(pid, ev.exit_code, ts).await });
            }
        });
        Ok(Self { inner })
    }
}

fn lock_std<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(
                ttrpc::context::Context::default(),
                topic,
                &self.namespace,
                event,
            )
            .await
        {
            warn!(topic, error = %e, "failed to publish event");
        }
    }

    async fn container(&self, id: &str) -> Result<ContainerRef> {
        self.containers
            .lock()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id} not found in this shim")))
    }

    /// Registers a running process's pid; returns an exit that already
    /// arrived for it, if any.
    ///
    /// The pid table stays locked while the unclaimed exits are looked at,
    /// here and in [`Inner::handle_exit`] (lock order: pids, then
    /// unclaimed): otherwise an exit could find the pid unregistered, the pid
    /// be registered and find no exit, and the exit then be parked for
    /// nobody — a Wait that never returns (seen once under load).
    fn register_pid(&self, pid: i32, id: &str, exec_id: &str) -> Option<(i32, Timestamp)> {
        let mut pids = lock_std(&self.pids);
        pids.insert(pid, (id.to_string(), exec_id.to_string()));
        let mut un = lock_std(&self.unclaimed);
        let pos = un.iter().position(|(p, ..)| *p == pid)?;
        un.remove(pos).map(|(_, code, ts, _)| (code, ts))
    }

    async fn handle_exit(self: Arc<Self>, pid: i32, code: i32, ts: Timestamp) {
        let owner = {
            let mut pids = lock_std(&self.pids);
            let owner = pids.remove(&pid);
            if owner.is_none() {
                let mut un = lock_std(&self.unclaimed);
                let now = Instant::now();
                while un
                    .front()
                    .is_some_and(|(.., at)| now.duration_since(*at) > UNCLAIMED_TTL)
                {
                    un.pop_front();
                }
                un.push_back((pid, code, ts.clone(), now));
            }
            owner
        };
        let Some((id, exec_id)) = owner else {
            return;
        };
        let Ok(c) = self.container(&id).await else {
            return;
        };
        // let the output drain before reporting the exit, without holding the lock
        let (io, oom) = {
            let c = c.lock().await;
            let oom = c.oom.clone().filter(|_| exec_id.is_empty());
            if exec_id.is_empty() && c.shares_host_pids {
                // no pid namespace takes the rest down with the init; they may
                // hold its output open, so they go before the drain
                if let Err(e) = c.runtime.kill(&c.id, 9, true).await {
                    debug!(container = %c.id, error = %e, "kill remaining processes");
                }
            }
            (c.process(&exec_id).ok().and_then(|p| p.io.clone()), oom)
        };
        if let Some(counter) = oom {
            // OOM kills go out before the exit: a notification's event being
            // published finishes first, then what no notification claimed
            let _publishing = counter.publishing().await;
            counter.settle_after(code).await;
            for _ in 0..counter.unreported() {
                warn!(container = %id, "OOM kill (counted at exit)");
                self.publish_oom(&id).await;
            }
        }
        if let Some(io) = io {
            let drain = tokio::spawn(async move { io.drain().await });
            if tokio::time::timeout(OUTPUT_DRAIN, drain).await.is_err() {
                debug!(pid, "output still open after exit; reporting exit anyway");
            }
        }
        let mut c = c.lock().await;
        let Ok(p) = c.process_mut(&exec_id) else {
            return;
        };
        let exit = Exit {
            code: code as u32,
            at: ts.clone(),
        };
        p.set_exited(exit);
        info!(container = %id, exec = %exec_id, pid, code, "process exited");
        self.publish(
            TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: id.clone(),
                id: if exec_id.is_empty() {
                    id.clone()
                } else {
                    exec_id.clone()
                },
                pid: pid as u32,
                exit_status: code as u32,
                exited_at: Some(ts).into(),
                ..Default::default()
            }),
        )
        .await;
        drop(c);
    }
}

/// The exit status of a task whose restore failed at Start (no process
/// ran; 128 is what containerd's CRI reports for a failed start).
const RESTORE_FAILED_EXIT: u32 = 128;

/// The CRIU image a Create restores from: the request's checkpoint; else a
/// migration destination's image in MOSE's options; else the runtime
/// options' `CriuImagePath`, which containerd's client sets for a restore
/// (`WithRestoreImagePath`) and containerd's daemon turns into the request's
/// checkpoint only for runtimes named `io.containerd.runc*`.
fn restore_source(checkpoint: &str, options: &crate::options::RuntimeOptions) -> String {
    [checkpoint, &options.restore_image, &options.criu_image_path]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or_default()
        .to_string()
}

fn task_io(stdio: &Stdio) -> TaskIO {
    TaskIO {
        stdin: stdio.stdin.clone(),
        stdout: stdio.stdout.clone(),
        stderr: stdio.stderr.clone(),
        terminal: stdio.terminal,
        ..Default::default()
    }
}

fn empty() -> containerd_shim::protos::protobuf::well_known_types::empty::Empty {
    Default::default()
}

type TResult<T> = ttrpc::Result<T>;

#[async_trait]
impl Task for TaskService {
    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TResult<StateResponse> {
        let c = self.inner.container(&req.id).await?;
        let c = c.lock().await;
        let p = c.process(&req.exec_id)?;
        let mut resp = StateResponse {
            id: if req.exec_id.is_empty() {
                c.id.clone()
            } else {
                req.exec_id.clone()
            },
            bundle: c.bundle.display().to_string(),
            pid: p.pid.max(0) as u32,
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        resp.status = p.state.to_proto().into();
        if let Some(e) = &p.exit {
            resp.exit_status = e.code;
            resp.exited_at = Some(e.at.clone()).into();
        }
        Ok(resp)
    }

    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TResult<CreateTaskResponse> {
        if req.id.is_empty() {
            return Err(Error::InvalidArgument("create: container id is empty".into()).into());
        }
        let exists = |id: &str| Error::AlreadyExists(format!("container {id} already exists"));
        if self.inner.containers.lock().await.contains_key(&req.id) {
            return Err(exists(&req.id).into());
        }
        let mut options = decode_runtime_options(req.options.as_ref())?;
        let stdio = Stdio::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let bundle = PathBuf::from(&req.bundle);
        // a pod's container continuing another node's pod: its migration
        // is pulled here (without holding the shim's container map: the
        // pod's other containers stay served), and it restores from that
        let mut pulled = None;
        if req.checkpoint.is_empty() && options.restore_image.is_empty() {
            if let Some(p) = crate::pod_migration::pull_if_continuing(&bundle, &req.id).await? {
                options.restore_image = p.images.clone();
                options.lazy_pages_socket = p.lazy_socket.clone();
                pulled = Some(p.pull);
            }
        }
        let mut map = self.inner.containers.lock().await;
        if map.contains_key(&req.id) {
            if let Some(p) = pulled {
                let _ = p.report(Err(exists(&req.id).to_string())).await;
            }
            return Err(exists(&req.id).into());
        }
        let checkpoint = restore_source(&req.checkpoint, &options);
        if !checkpoint.is_empty() {
            // refused before the bundle is touched or the rootfs mounted
            let binary = options.binary();
            let caps = crate::runtime_caps::probe(binary).await;
            if let Err(e) = crate::runtime_caps::check_restore(&caps, binary, &req.id) {
                if let Some(p) = pulled {
                    let _ = p.report(Err(e.to_string())).await;
                }
                return Err(e.into());
            }
        }
        let c = Container::create(CreateArgs {
            id: &req.id,
            bundle: &bundle,
            rootfs: &req.rootfs,
            stdio: stdio.clone(),
            checkpoint: &checkpoint,
            options,
            address: &self.inner.containerd_address,
            namespace: &self.inner.namespace,
        })
        .await;
        let mut c = match c {
            Ok(c) => c,
            Err(e) => {
                if let Some(p) = pulled {
                    let _ = p.report(Err(e.to_string())).await;
                }
                return Err(e.into());
            }
        };
        c.pod_pull = pulled;
        let pid = c.init.pid;
        if pid > 0 {
            self.inner.register_pid(pid, &req.id, "");
            c.oom = self.inner.watch_oom(pid, &req.id);
        }
        info!(id = %req.id, pid, restore = !checkpoint.is_empty(), "task created");
        map.insert(req.id.clone(), Arc::new(Mutex::new(c)));
        drop(map);
        self.inner
            .publish(
                TASK_CREATE_EVENT_TOPIC,
                Box::new(TaskCreate {
                    container_id: req.id.clone(),
                    bundle: req.bundle.clone(),
                    rootfs: req.rootfs.clone(),
                    io: Some(task_io(&stdio)).into(),
                    checkpoint: checkpoint.clone(),
                    pid: pid.max(0) as u32,
                    ..Default::default()
                }),
            )
            .await;
        Ok(CreateTaskResponse {
            pid: pid.max(0) as u32,
            ..Default::default()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TResult<StartResponse> {
        let cref = self.inner.container(&req.id).await?;
        let mut c = cref.lock().await;
        if req.exec_id.is_empty() {
            let restored = c.restore_from.is_some();
            let pull = c.pod_pull.take();
            let started = c.start_init().await;
            if let (Err(e), true) = (&started, restored) {
                // no process ever ran: waiters (containerd's CRI waits on
                // the task before starting it) hear of a failed start now
                let exit = Exit {
                    code: RESTORE_FAILED_EXIT,
                    at: timestamp().unwrap_or_default(),
                };
                c.init.set_exited(exit.clone());
                warn!(id = %req.id, error = %e, "restore failed; the task is stopped");
                self.inner
                    .publish(
                        TASK_EXIT_EVENT_TOPIC,
                        Box::new(TaskExit {
                            container_id: req.id.clone(),
                            id: req.id.clone(),
                            exit_status: exit.code,
                            exited_at: Some(exit.at).into(),
                            ..Default::default()
                        }),
                    )
                    .await;
            }
            let pid = match (started, pull) {
                (Ok(pid), None) => pid,
                (Err(e), None) => return Err(e.into()),
                (Err(e), Some(p)) => {
                    let _ = p.report(Err(e.to_string())).await;
                    return Err(e.into());
                }
                (Ok(pid), Some(p)) => {
                    if let Err(e) = p.report(Ok(pid as u32)).await {
                        // the source keeps (or resumes) the service: this
                        // copy must not run on
                        warn!(id = %req.id, error = %e, "pulled container restored but not handed over; killing it");
                        // registered first, so that its exit is reported
                        // (and waiters return) like any other
                        c.oom = self.inner.watch_oom(pid, &req.id);
                        let early = self.inner.register_pid(pid, &req.id, "");
                        let _ = c.runtime.kill(&req.id, 9, true).await;
                        drop(c);
                        if let Some((code, ts)) = early {
                            self.inner
                                .clone()
                                .handle_exit_now(pid, code, ts, &req.id, "")
                                .await;
                        }
                        return Err(e.into());
                    }
                    pid
                }
            };
            if restored {
                // a migration destination restores from MOSE's own image
                let migration = !c.options.restore_image.is_empty();
                self.inner.bump_spec_generation(&req.id, !migration).await;
                c.oom = self.inner.watch_oom(pid, &req.id);
                if let Some((code, ts)) = self.inner.register_pid(pid, &req.id, "") {
                    drop(c);
                    self.inner
                        .clone()
                        .handle_exit_now(pid, code, ts, &req.id, "")
                        .await;
                    c = cref.lock().await;
                }
            }
            self.inner
                .publish(
                    TASK_START_EVENT_TOPIC,
                    Box::new(TaskStart {
                        container_id: req.id.clone(),
                        pid: pid as u32,
                        ..Default::default()
                    }),
                )
                .await;
            drop(c);
            Ok(StartResponse {
                pid: pid as u32,
                ..Default::default()
            })
        } else {
            let pid = c.start_exec(&req.exec_id).await?;
            let early = self.inner.register_pid(pid, &req.id, &req.exec_id);
            self.inner
                .publish(
                    TASK_EXEC_STARTED_EVENT_TOPIC,
                    Box::new(TaskExecStarted {
                        container_id: req.id.clone(),
                        exec_id: req.exec_id.clone(),
                        pid: pid as u32,
                        ..Default::default()
                    }),
                )
                .await;
            drop(c);
            if let Some((code, ts)) = early {
                self.inner
                    .clone()
                    .handle_exit_now(pid, code, ts, &req.id, &req.exec_id)
                    .await;
            }
            Ok(StartResponse {
                pid: pid as u32,
                ..Default::default()
            })
        }
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TResult<DeleteResponse> {
        let cref = self.inner.container(&req.id).await?;
        let mut c = cref.lock().await;
        if !req.exec_id.is_empty() {
            let p = c.exec(&req.exec_id)?;
            if p.state == State::Running {
                return Err(Error::FailedPrecondition(format!(
                    "cannot delete exec {}: it is still running",
                    req.exec_id
                ))
                .into());
            }
            let exit = p.exit.clone().unwrap_or_default();
            let pid = p.pid;
            if let Some(p) = c.execs.remove(&req.exec_id) {
                if let Some(io) = p.io {
                    io.abort().await;
                }
            }
            return Ok(DeleteResponse {
                pid: pid.max(0) as u32,
                exit_status: exit.code,
                exited_at: Some(exit.at).into(),
                ..Default::default()
            });
        }
        if matches!(c.init.state, State::Running | State::Paused) {
            return Err(Error::FailedPrecondition(format!(
                "cannot delete container {}: its task is still running (kill it first)",
                req.id
            ))
            .into());
        }
        c.destroy().await?;
        if let Some(io) = c.init.io.take() {
            io.abort().await;
        }
        for (_, p) in c.execs.drain() {
            if let Some(io) = p.io {
                io.abort().await;
            }
        }
        let exit = c.init.exit.clone().unwrap_or_else(|| Exit {
            code: 0,
            at: timestamp().unwrap_or_default(),
        });
        let pid = c.init.pid.max(0) as u32;
        lock_std(&self.inner.pids).retain(|_, (cid, _)| cid != &req.id);
        drop(c);
        self.inner.containers.lock().await.remove(&req.id);
        info!(id = %req.id, "task deleted");
        self.inner
            .publish(
                TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: req.id.clone(),
                    pid,
                    exit_status: exit.code,
                    exited_at: Some(exit.at.clone()).into(),
                    id: req.id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(DeleteResponse {
            pid,
            exit_status: exit.code,
            exited_at: Some(exit.at).into(),
            ..Default::default()
        })
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TResult<PidsResponse> {
        let cref = self.inner.container(&req.id).await?;
        let c = cref.lock().await;
        let pids = c.runtime.ps(&c.id).await?;
        let mut resp = PidsResponse::default();
        for pid in pids {
            let mut info = ProcessInfo {
                pid: pid as u32,
                ..Default::default()
            };
            if let Some((exec_id, _)) = c.execs.iter().find(|(_, p)| p.pid == pid) {
                let d = ProcessDetails {
                    exec_id: exec_id.clone(),
                    ..Default::default()
                };
                info.info = Some(Any {
                    type_url: "containerd.runc.v1.ProcessDetails".into(),
                    value: d.write_to_bytes().map_err(Error::from)?,
                    ..Default::default()
                })
                .into();
            }
            resp.processes.push(info);
        }
        Ok(resp)
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TResult<Empty> {
        let cref = self.inner.container(&req.id).await?;
        let mut c = cref.lock().await;
        if c.init.state != State::Running {
            return Err(Error::FailedPrecondition(format!(
                "cannot pause container {}: it is {:?}, not running",
                req.id, c.init.state
            ))
            .into());
        }
        c.runtime.pause(&req.id).await?;
        c.init.state = State::Paused;
        self.inner
            .publish(
                TASK_PAUSED_EVENT_TOPIC,
                Box::new(TaskPaused {
                    container_id: req.id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(empty())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TResult<Empty> {
        let cref = self.inner.container(&req.id).await?;
        let mut c = cref.lock().await;
        if c.init.state != State::Paused {
            return Err(Error::FailedPrecondition(format!(
                "cannot resume container {}: it is {:?}, not paused",
                req.id, c.init.state
            ))
            .into());
        }
        if c.lazy_dump_running() {
            // its memory is being handed to a destination that may run it
            // already: resumed here too, two copies would run
            return Err(Error::FailedPrecondition(format!(
                "cannot resume container {}: CRIU's lazy dump still serves its memory to a \
                 migration; the migration resumes it if it fails (or end the dump first)",
                req.id
            ))
            .into());
        }
        c.runtime.resume(&req.id).await?;
        c.init.state = State::Running;
        let address = c.bring_up_if_held();
        self.inner
            .publish(
                TASK_RESUMED_EVENT_TOPIC,
                Box::new(TaskResumed {
                    container_id: req.id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        address?;
        Ok(empty())
    }

    async fn checkpoint(&self, _ctx: &TtrpcContext, req: CheckpointTaskRequest) -> TResult<Empty> {
        let opts = decode_checkpoint_options(req.options.as_ref())?;
        let migration = opts.migration;
        let cref = self.inner.container(&req.id).await?;
        if opts.finish_lazy_dump {
            // waited for without the container's lock: the migration's
            // rollback may resume the container meanwhile
            let dump = cref.lock().await.take_lazy_dump()?;
            let res = dump.finish(opts.wake_page_server).await;
            match &res {
                Ok(()) => info!(id = %req.id, "lazy dump finished"),
                Err(e) => warn!(id = %req.id, error = %e, "lazy dump failed"),
            }
            return res.map(|()| empty()).map_err(Into::into);
        }
        let mut c = cref.lock().await;
        c.checkpoint(&req.path, opts).await?;
        drop(c);
        self.inner.bump_spec_generation(&req.id, !migration).await;
        self.inner
            .publish(
                TASK_CHECKPOINTED_EVENT_TOPIC,
                Box::new(TaskCheckpointed {
                    container_id: req.id.clone(),
                    checkpoint: req.path.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(empty())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TResult<Empty> {
        let cref = self.inner.container(&req.id).await?;
        let c = cref.lock().await;
        if req.exec_id.is_empty() {
            if c.init.is_stopped() && !req.all {
                return Err(Error::NotFound(format!(
                    "process already finished: container {}",
                    req.id
                ))
                .into());
            }
            if c.init.is_stopped() || (c.init.state == State::Created && c.restore_from.is_some()) {
                return Ok(empty());
            }
            c.runtime.kill(&req.id, req.signal, req.all).await?;
        } else {
            let p: &Process = c.exec(&req.exec_id)?;
            if p.is_stopped() {
                return Err(Error::NotFound(format!(
                    "process already finished: exec {}",
                    req.exec_id
                ))
                .into());
            }
            if p.pid <= 0 {
                return Err(Error::FailedPrecondition(format!(
                    "exec {} has not been started",
                    req.exec_id
                ))
                .into());
            }
            let sig = nix::sys::signal::Signal::try_from(req.signal as i32)
                .map_err(|_| Error::InvalidArgument(format!("invalid signal {}", req.signal)))?;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), sig).map_err(|e| {
                Error::Internal(format!(
                    "kill exec {} (pid {}) with {sig}: {e}",
                    req.exec_id, p.pid
                ))
            })?;
        }
        Ok(empty())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TResult<Empty> {
        if req.exec_id.is_empty() {
            return Err(Error::InvalidArgument("exec: exec id is empty".into()).into());
        }
        let mut spec = parse_exec_spec(req.spec.as_ref())?;
        // the request decides whether the process gets a terminal, as with
        // containerd's runc shim: the runtime must allocate the pty the shim
        // waits for on its console socket
        spec.set_terminal(req.terminal)
            .map_err(|e| Error::Internal(format!("exec {}: {e}", req.exec_id)))?;
        let cref = self.inner.container(&req.id).await?;
        let mut c = cref.lock().await;
        if c.execs.contains_key(&req.exec_id) {
            return Err(Error::AlreadyExists(format!(
                "exec {} already exists in container {}",
                req.exec_id, req.id
            ))
            .into());
        }
        if c.init.is_stopped() {
            return Err(Error::FailedPrecondition(format!(
                "cannot exec in container {}: it is stopped",
                req.id
            ))
            .into());
        }
        let mut p = Process::new(Stdio::new(
            &req.stdin,
            &req.stdout,
            &req.stderr,
            req.terminal,
        ));
        p.spec = Some(spec);
        c.execs.insert(req.exec_id.clone(), p);
        self.inner
            .publish(
                TASK_EXEC_ADDED_EVENT_TOPIC,
                Box::new(TaskExecAdded {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        Ok(empty())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TResult<Empty> {
        let cref = self.inner.container(&req.id).await?;
        let c = cref.lock().await;
        let p = c.process(&req.exec_id)?;
        // without a terminal (or before the process has one) there is nothing
        // to resize: containerd's runc shim succeeds, and clients (kubelet,
        // ctr) resize blindly
        if let Some(io) = &p.io {
            io.resize(req.width, req.height)?;
        }
        Ok(empty())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TResult<Empty> {
        let cref = self.inner.container(&req.id).await?;
        let c = cref.lock().await;
        let p = c.process(&req.exec_id)?;
        if let Some(io) = &p.io {
            io.close_input();
        }
        Ok(empty())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TResult<Empty> {
        let res = req
            .resources
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("update carries no resources".into()))?;
        let _: serde_json::Value = serde_json::from_slice(&res.value).map_err(|e| {
            Error::InvalidArgument(format!(
                "update resources ({}) are not valid JSON: {e}",
                res.type_url
            ))
        })?;
        let cref = self.inner.container(&req.id).await?;
        let c = cref.lock().await;
        let path = c.bundle.join(".update-resources.json");
        std::fs::write(&path, &res.value)
            .map_err(Error::io(format!("write {}", path.display())))?;
        let r = c.runtime.update(&req.id, &path).await;
        let _ = std::fs::remove_file(&path);
        r?;
        Ok(empty())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TResult<WaitResponse> {
        let mut rx = {
            let cref = self.inner.container(&req.id).await?;
            let c = cref.lock().await;
            c.process(&req.exec_id)?.subscribe_exit()
        };
        let exit = loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                break e;
            }
            if rx.changed().await.is_err() {
                return Err(Error::NotFound(format!(
                    "process {} was deleted while waiting",
                    req.id
                ))
                .into());
            }
        };
        Ok(WaitResponse {
            exit_status: exit.code,
            exited_at: Some(exit.at).into(),
            ..Default::default()
        })
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TResult<StatsResponse> {
        let cref = self.inner.container(&req.id).await?;
        let pid = cref.lock().await.init.pid;
        let any = tokio::task::spawn_blocking(move || metrics::collect(pid))
            .await
            .map_err(|e| Error::Internal(format!("metrics task failed: {e}")))??;
        Ok(StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    async fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TResult<ConnectResponse> {
        let task_pid = match self.inner.container(&req.id).await {
            Ok(c) => c.lock().await.init.pid.max(0) as u32,
            Err(_) => 0,
        };
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> TResult<Empty> {
        let n = self.inner.containers.lock().await.len();
        if req.now || n == 0 {
            info!(remaining = n, "shim shutting down");
            self.inner.exit.signal();
        }
        Ok(empty())
    }
}

impl Inner {
    /// See [`crate::spec_generation`]. Awaited for requests through
    /// containerd (a checkpoint right after must find it); in the background
    /// for a migration's freeze and restore, which must not wait for
    /// containerd's metadata. A failure only costs a later checkpoint its
    /// recording under containerd 1.6/1.7, so it is logged.
    async fn bump_spec_generation(self: &Arc<Self>, id: &str, wait: bool) {
        let (inner, id) = (self.clone(), id.to_string());
        let bump = async move {
            let r = crate::spec_generation::bump(&inner.containerd_address, &inner.namespace, &id)
                .await;
            if let Err(e) = r {
                warn!(container = %id, error = %e, "cannot update the checkpoint generation in containerd");
            }
        };
        if wait {
            bump.await;
        } else {
            tokio::spawn(bump);
        }
    }

    async fn publish_oom(&self, id: &str) {
        self.publish(
            TASK_OOM_EVENT_TOPIC,
            Box::new(TaskOOM {
                container_id: id.to_string(),
                ..Default::default()
            }),
        )
        .await;
    }

    /// Publishes TaskOOM for every OOM kill in the container's cgroup; the
    /// counter lets the init's exit report kills a notification missed.
    fn watch_oom(self: &Arc<Self>, pid: i32, id: &str) -> Option<crate::oom::OomCounter> {
        let (mut rx, counter) = crate::oom::watch(pid)?;
        let weak = Arc::downgrade(self);
        let id = id.to_string();
        let watched = counter.clone();
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                let Some(inner) = weak.upgrade() else { break };
                let _publishing = watched.publishing().await;
                let kills = match watched.counts_kills() {
                    true => watched.unreported(),
                    false => 1,
                };
                for _ in 0..kills {
                    warn!(container = %id, "OOM event");
                    inner.publish_oom(&id).await;
                }
            }
        });
        Some(counter)
    }

    /// Reports an exit that arrived before its process was registered.
    async fn handle_exit_now(
        self: Arc<Self>,
        pid: i32,
        code: i32,
        ts: Timestamp,
        id: &str,
        exec_id: &str,
    ) {
        lock_std(&self.pids).insert(pid, (id.to_string(), exec_id.to_string()));
        self.handle_exit(pid, code, ts).await;
    }
}
