//! The containerd operations a migration needs, over containerd's gRPC API.

use std::{collections::HashMap, path::Path, time::Duration};

use containerd_client::{
    services::v1::{
        container::Runtime,
        containers_client::ContainersClient,
        content_client::ContentClient,
        images_client::ImagesClient,
        leases_client::LeasesClient,
        snapshots::{
            snapshots_client::SnapshotsClient, MountsRequest, PrepareSnapshotRequest,
            RemoveSnapshotRequest,
        },
        tasks_client::TasksClient,
        Container, CreateContainerRequest, CreateRequest as CreateLeaseRequest, CreateTaskRequest,
        DeleteContainerRequest, DeleteRequest as DeleteLeaseRequest, DeleteTaskRequest,
        GetContainerRequest, GetImageRequest, GetRequest, KillRequest, ListContainersRequest,
        ListPidsRequest, PauseTaskRequest, ReadContentRequest, ResumeTaskRequest, StartRequest,
        WaitRequest,
    },
    types::Mount,
};
use prost_types::Any;
use sha2::{Digest, Sha256};
use tonic::{transport::Channel, Request, Status};

/// Why a containerd operation of a migration failed: the operation, the
/// object (container, task, snapshot, image, content), and containerd's
/// status or the local error as the `source()`.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("timed out connecting to containerd at {socket}")]
    ConnectTimeout { socket: String },
    #[error("cannot connect to containerd at {socket} (is it running?)")]
    Connect {
        socket: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("container {id} in namespace {namespace}: {}", .source.message())]
    GetContainer {
        id: String,
        namespace: String,
        #[source]
        source: Status,
    },
    #[error("listing containers in namespace {namespace} ({filter}): {}", .source.message())]
    ListContainers {
        namespace: String,
        filter: String,
        #[source]
        source: Status,
    },
    #[error("containerd returned no container {id}")]
    NoContainer { id: String },
    #[error("task of {id}: {} (is the container running?)", .source.message())]
    GetTask {
        id: String,
        #[source]
        source: Status,
    },
    #[error("no task for container {id}")]
    NoTask { id: String },
    #[error("container {id} is not running (task status {status})")]
    NotRunning { id: String, status: i32 },
    #[error("pids of {id}: {}", .source.message())]
    Pids {
        id: String,
        #[source]
        source: Status,
    },
    #[error("pause {id}: {}", .source.message())]
    Pause {
        id: String,
        #[source]
        source: Status,
    },
    #[error("resume {id}: {}", .source.message())]
    Resume {
        id: String,
        #[source]
        source: Status,
    },
    #[error("kill {id}: {}", .source.message())]
    Kill {
        id: String,
        #[source]
        source: Status,
    },
    #[error("wait {id}: {}", .source.message())]
    Wait {
        id: String,
        #[source]
        source: Status,
    },
    #[error("delete task {id}: {}", .source.message())]
    DeleteTask {
        id: String,
        #[source]
        source: Status,
    },
    #[error("reading /proc/{pid}/status")]
    ProcStatus {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("no parent of the task's pid {pid}")]
    NoParent { pid: u32 },
    #[error("finding the shim of {id} (pid {ppid})")]
    ShimBundle {
        id: String,
        ppid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("no shim address in {} (is {id} run by a containerd shim?)", .bundle.display())]
    ShimAddress {
        id: String,
        bundle: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to the shim of {id} at {address}")]
    ShimConnect {
        id: String,
        address: String,
        #[source]
        source: containerd_shim_protos::ttrpc::Error,
    },
    #[error("encoding the checkpoint options of {id}")]
    CheckpointOptions {
        id: String,
        #[source]
        source: BoxError,
    },
    #[error("checkpoint of {id}")]
    ShimCheckpoint {
        id: String,
        #[source]
        source: containerd_shim_protos::ttrpc::Error,
    },
    #[error("checkpoint of {id}: {}", .source.message())]
    Checkpoint {
        id: String,
        #[source]
        source: Status,
    },
    #[error("delete container {id}: {}", .source.message())]
    DeleteContainer {
        id: String,
        #[source]
        source: Status,
    },
    #[error("mounts of snapshot {key}: {}", .source.message())]
    SnapshotMounts {
        key: String,
        #[source]
        source: Status,
    },
    #[error("creating containerd lease {id}: {}", .source.message())]
    Lease {
        id: String,
        #[source]
        source: Status,
    },
    #[error("prepare snapshot {key}: {}", .source.message())]
    PrepareSnapshot {
        key: String,
        #[source]
        source: Status,
    },
    #[error("remove snapshot {key}: {}", .source.message())]
    RemoveSnapshot {
        key: String,
        #[source]
        source: Status,
    },
    #[error("read content {digest}: {}", .source.message())]
    ReadContent {
        digest: String,
        #[source]
        source: Status,
    },
    #[error("image {name}: {}", .source.message())]
    GetImage {
        name: String,
        #[source]
        source: Status,
    },
    #[error("no image {name}")]
    NoImage { name: String },
    #[error("image {name} has no target")]
    NoImageTarget { name: String },
    #[error("image {name}: {what} is not JSON")]
    ImageJson {
        name: String,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("image {name}: no amd64 manifest")]
    NoAmd64Manifest { name: String },
    #[error("bad index in {name}")]
    BadIndex { name: String },
    #[error("image {name}: manifest has no config")]
    NoImageConfig { name: String },
    #[error("image {name}: config has no rootfs.diff_ids")]
    NoDiffIds { name: String },
    #[error("create container {id}: {}", .source.message())]
    CreateContainer {
        id: String,
        #[source]
        source: Status,
    },
    #[error("create task {id}: {}", .source.message())]
    CreateTask {
        id: String,
        #[source]
        source: Status,
    },
    #[error("start task {id}: {}", .source.message())]
    StartTask {
        id: String,
        #[source]
        source: Status,
    },
    #[error("container {id} has no spec")]
    NoSpec { id: String },
    #[error("spec of container {id} is not JSON")]
    SpecJson {
        id: String,
        #[source]
        source: serde_json::Error,
    },
}

type BoxError = crate::error::BoxError;
type Result<T, E = ContainerdError> = std::result::Result<T, E>;

impl ContainerdError {
    /// The container's shim refused a checkpoint before doing anything (a
    /// precondition or an argument it does not take).
    pub fn is_shim_refusal(&self) -> bool {
        use containerd_shim_protos::ttrpc::{Code, Error};
        matches!(
            self,
            ContainerdError::ShimCheckpoint { source: Error::RpcStatus(st), .. }
                if matches!(st.code(), Code::FAILED_PRECONDITION | Code::INVALID_ARGUMENT)
        )
    }
}

/// What `mosectl checkpoint` asks of a task's checkpoint.
#[derive(Debug, Clone, Default)]
pub struct TaskCheckpoint {
    /// Directory receiving the CRIU image (absolute).
    pub image_path: std::path::PathBuf,
    /// CRIU's work directory (logs); default: inside the shim's bundle.
    pub work_path: Option<std::path::PathBuf>,
    /// Stop the task after the dump.
    pub exit: bool,
    /// Dump established TCP connections (CRIU `--tcp-established`).
    pub tcp_established: bool,
    /// Dump external unix sockets (CRIU `--ext-unix-sk`).
    pub ext_unix_sk: bool,
    /// The task has a terminal (CRIU `--shell-job`).
    pub shell_job: bool,
}

pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A namespaced containerd client.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
    socket: String,
    /// The lease requests are made under ([`Containerd::leased`]).
    lease: Option<String>,
}

impl Containerd {
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Self> {
        let channel =
            tokio::time::timeout(Duration::from_secs(10), containerd_client::connect(socket))
                .await
                .map_err(|_| ContainerdError::ConnectTimeout {
                    socket: socket.display().to_string(),
                })?
                .map_err(|source| ContainerdError::Connect {
                    socket: socket.display().to_string(),
                    source,
                })?;
        Ok(Self {
            channel,
            namespace: namespace.to_string(),
            socket: socket.display().to_string(),
            lease: None,
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn socket(&self) -> &str {
        &self.socket
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Ok(v) = self.namespace.parse() {
            r.metadata_mut().insert("containerd-namespace", v);
        }
        if let Some(Ok(v)) = self.lease.as_deref().map(str::parse) {
            r.metadata_mut().insert("containerd-lease", v);
        }
        r.set_timeout(CALL_TIMEOUT);
        r
    }

    fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }

    pub async fn container(&self, id: &str) -> Result<Container> {
        let r = ContainersClient::new(self.channel.clone())
            .get(self.req(GetContainerRequest { id: id.into() }))
            .await
            .map_err(|source| ContainerdError::GetContainer {
                id: id.into(),
                namespace: self.namespace.clone(),
                source,
            })?;
        r.into_inner()
            .container
            .ok_or_else(|| ContainerdError::NoContainer { id: id.into() })
    }

    /// The containers matching containerd's `filter` (e.g.
    /// `labels."io.kubernetes.pod.name"==web`; commas join conditions).
    pub async fn list(&self, filter: &str) -> Result<Vec<Container>> {
        let r = ContainersClient::new(self.channel.clone())
            .list(self.req(ListContainersRequest {
                filters: vec![filter.to_string()],
            }))
            .await
            .map_err(|source| ContainerdError::ListContainers {
                namespace: self.namespace.clone(),
                filter: filter.to_string(),
                source,
            })?;
        Ok(r.into_inner().containers)
    }

    pub async fn task_pid(&self, id: &str) -> Result<u32> {
        let (pid, status) = self.task_state(id).await?;
        if status != TASK_RUNNING && status != TASK_PAUSED {
            return Err(ContainerdError::NotRunning {
                id: id.into(),
                status,
            });
        }
        Ok(pid)
    }

    /// The task's init pid and status (containerd's `task.Status`: see
    /// [`TASK_RUNNING`], [`TASK_PAUSED`]).
    pub async fn task_state(&self, id: &str) -> Result<(u32, i32)> {
        let r = self
            .tasks()
            .get(self.req(GetRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
            .map_err(|source| ContainerdError::GetTask {
                id: id.into(),
                source,
            })?;
        let p = r
            .into_inner()
            .process
            .ok_or_else(|| ContainerdError::NoTask { id: id.into() })?;
        Ok((p.pid, p.status))
    }

    pub async fn pids(&self, id: &str) -> Result<Vec<u32>> {
        let r = self
            .tasks()
            .list_pids(self.req(ListPidsRequest {
                container_id: id.into(),
            }))
            .await
            .map_err(|source| ContainerdError::Pids {
                id: id.into(),
                source,
            })?;
        Ok(r.into_inner()
            .processes
            .into_iter()
            .map(|p| p.pid)
            .collect())
    }

    pub async fn pause(&self, id: &str) -> Result<()> {
        self.tasks()
            .pause(self.req(PauseTaskRequest {
                container_id: id.into(),
            }))
            .await
            .map_err(|source| ContainerdError::Pause {
                id: id.into(),
                source,
            })?;
        Ok(())
    }

    pub async fn resume(&self, id: &str) -> Result<()> {
        self.tasks()
            .resume(self.req(ResumeTaskRequest {
                container_id: id.into(),
            }))
            .await
            .map_err(|source| ContainerdError::Resume {
                id: id.into(),
                source,
            })?;
        Ok(())
    }

    pub async fn kill(&self, id: &str, signal: u32) -> Result<()> {
        self.tasks()
            .kill(self.req(KillRequest {
                container_id: id.into(),
                exec_id: String::new(),
                signal,
                all: true,
            }))
            .await
            .map_err(|source| ContainerdError::Kill {
                id: id.into(),
                source,
            })?;
        Ok(())
    }

    pub async fn wait(&self, id: &str) -> Result<u32> {
        let r = self
            .tasks()
            .wait(self.req(WaitRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
            .map_err(|source| ContainerdError::Wait {
                id: id.into(),
                source,
            })?;
        Ok(r.into_inner().exit_status)
    }

    pub async fn delete_task(&self, id: &str) -> Result<()> {
        self.tasks()
            .delete(self.req(DeleteTaskRequest {
                container_id: id.into(),
            }))
            .await
            .map_err(|source| ContainerdError::DeleteTask {
                id: id.into(),
                source,
            })?;
        Ok(())
    }

    /// CRIU dump straight through the container's shim (not containerd's
    /// Checkpoint, which also writes a checkpoint record into its content
    /// store: disk on the hot path, and refused when an identical record
    /// exists). The task keeps the state it had (running or paused).
    ///
    /// `lazy_port`: CRIU's lazy dump, its page server on
    /// `127.0.0.1:<port>`; the call returns once it listens, and
    /// [`Self::shim_finish_lazy_dump`] waits for its end.
    pub async fn shim_checkpoint(
        &self,
        id: &str,
        image: &Path,
        work: &Path,
        hand_over_address: bool,
        keep_connections: bool,
        lazy_port: Option<u16>,
    ) -> Result<()> {
        // established connections follow a service that keeps its address
        // (TCP repair) unless asked not to; otherwise they are dumped closed.
        // Connections not yet accepted are ignored either way.
        let opts = mose_contract::CheckpointOptions {
            image_path: image.display().to_string(),
            work_path: work.display().to_string(),
            tcp_close: !keep_connections,
            tcp_established: keep_connections,
            hand_over_address,
            skip_in_flight: true,
            lazy_page_server_port: lazy_port.unwrap_or(0),
            ..Default::default()
        };
        self.shim_checkpoint_call(id, &image.display().to_string(), &opts)
            .await
    }

    /// Waits for the lazy dump begun by [`Self::shim_checkpoint`] to end:
    /// after its page server's client closed the connection, runc exits.
    /// `never_connected`: the shim first ends a page server still waiting
    /// for its client. Errors quote CRIU's log.
    pub async fn shim_finish_lazy_dump(&self, id: &str, never_connected: bool) -> Result<()> {
        let opts = mose_contract::CheckpointOptions {
            finish_lazy_dump: true,
            wake_page_server: never_connected,
            ..Default::default()
        };
        self.shim_checkpoint_call(id, "", &opts).await
    }

    /// One Checkpoint call to the container's shim with MOSE's options.
    async fn shim_checkpoint_call(
        &self,
        id: &str,
        path: &str,
        opts: &mose_contract::CheckpointOptions,
    ) -> Result<()> {
        use containerd_shim_protos::{
            protobuf::well_known_types::any::Any as PbAny,
            shim::shim::CheckpointTaskRequest as ShimCheckpoint, shim_async::TaskClient, ttrpc,
        };
        let client = self.shim_client(id).await?;
        let req = ShimCheckpoint {
            id: id.into(),
            path: path.into(),
            options: Some(PbAny {
                type_url: mose_contract::CHECKPOINT_OPTIONS_TYPE.into(),
                value: serde_json::to_vec(opts).map_err(|e| {
                    ContainerdError::CheckpointOptions {
                        id: id.into(),
                        source: e.into(),
                    }
                })?,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        TaskClient::new(client)
            .checkpoint(
                ttrpc::context::with_timeout(CALL_TIMEOUT.as_nanos() as i64),
                &req,
            )
            .await
            .map_err(|source| ContainerdError::ShimCheckpoint {
                id: id.into(),
                source,
            })?;
        Ok(())
    }

    /// A ttrpc client of the container's shim: its address is in the
    /// bundle, the working directory of the task's parent (the shim).
    async fn shim_client(
        &self,
        id: &str,
    ) -> Result<containerd_shim_protos::ttrpc::asynchronous::Client> {
        use containerd_shim_protos::ttrpc;
        let pid = self.task_pid(id).await?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|source| ContainerdError::ProcStatus { pid, source })?;
        let ppid: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or(ContainerdError::NoParent { pid })?;
        let bundle = std::fs::read_link(format!("/proc/{ppid}/cwd")).map_err(|source| {
            ContainerdError::ShimBundle {
                id: id.into(),
                ppid,
                source,
            }
        })?;
        let address = match std::fs::read_to_string(bundle.join("address")) {
            Ok(a) => a,
            Err(source) => {
                return Err(ContainerdError::ShimAddress {
                    id: id.into(),
                    bundle,
                    source,
                })
            }
        };
        ttrpc::asynchronous::Client::connect(address.trim())
            .await
            .map_err(|source| ContainerdError::ShimConnect {
                id: id.into(),
                address: address.clone(),
                source,
            })
    }

    /// Checkpoints the task through containerd's Tasks API with
    /// `containerd.runc.v1.CheckpointOptions` (what `ctr tasks checkpoint
    /// --exit --image-path` sends runc-named runtimes only; see
    /// `mosectl checkpoint`). The CRIU image goes to `opts.image_path`.
    pub async fn checkpoint_task(&self, id: &str, opts: &TaskCheckpoint) -> Result<()> {
        use containerd_shim_protos::{protobuf::Message, shim::oci::CheckpointOptions};
        let pb = CheckpointOptions {
            exit: opts.exit,
            open_tcp: opts.tcp_established,
            external_unix_sockets: opts.ext_unix_sk,
            terminal: opts.shell_job,
            file_locks: true,
            image_path: opts.image_path.display().to_string(),
            work_path: opts
                .work_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            ..Default::default()
        };
        let req = containerd_client::services::v1::CheckpointTaskRequest {
            container_id: id.into(),
            parent_checkpoint: String::new(),
            options: Some(Any {
                type_url: "containerd.runc.v1.CheckpointOptions".into(),
                value: pb
                    .write_to_bytes()
                    .map_err(|e| ContainerdError::CheckpointOptions {
                        id: id.into(),
                        source: e.into(),
                    })?,
            }),
        };
        self.tasks()
            .checkpoint(self.req(req))
            .await
            .map_err(|source| ContainerdError::Checkpoint {
                id: id.into(),
                source,
            })?;
        Ok(())
    }

    /// Kills, waits for and deletes the task, then the container and its snapshot.
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        if self.task_pid(id).await.is_ok() {
            let _ = self.kill(id, 9).await;
            let _ = tokio::time::timeout(Duration::from_secs(10), self.wait(id)).await;
        }
        let _ = self.delete_task(id).await;
        let c = self.container(id).await.ok();
        ContainersClient::new(self.channel.clone())
            .delete(self.req(DeleteContainerRequest { id: id.into() }))
            .await
            .map_err(|source| ContainerdError::DeleteContainer {
                id: id.into(),
                source,
            })?;
        if let Some(c) = c.filter(|c| !c.snapshot_key.is_empty()) {
            let _ = self.remove_snapshot(&c.snapshotter, &c.snapshot_key).await;
        }
        Ok(())
    }

    pub async fn snapshot_mounts(&self, snapshotter: &str, key: &str) -> Result<Vec<Mount>> {
        let r = SnapshotsClient::new(self.channel.clone())
            .mounts(self.req(MountsRequest {
                snapshotter: snapshotter.into(),
                key: key.into(),
            }))
            .await
            .map_err(|source| ContainerdError::SnapshotMounts {
                key: key.into(),
                source,
            })?;
        Ok(r.into_inner().mounts)
    }

    /// A client whose requests are made under a new lease `id`: what they
    /// create (a snapshot prepared before the container that will hold it
    /// exists) is not garbage-collected until [`Containerd::release`], or
    /// at the latest `expire` from now (containerd's `gc.expire` label, in
    /// case this process dies first). containerd collects what nothing
    /// references, and a collection runs after any deletion, e.g. the end
    /// of an image import: without a lease a snapshot prepared right after
    /// one could vanish before its container is created.
    ///
    /// Errors: the lease cannot be created.
    pub async fn leased(&self, id: &str, expire: Duration) -> Result<Containerd> {
        let mut labels = HashMap::new();
        let until = time::OffsetDateTime::now_utc() + expire;
        if let Ok(t) = until.format(&time::format_description::well_known::Rfc3339) {
            labels.insert("containerd.io/gc.expire".to_string(), t);
        }
        LeasesClient::new(self.channel.clone())
            .create(self.req(CreateLeaseRequest {
                id: id.into(),
                labels,
            }))
            .await
            .map_err(|source| ContainerdError::Lease {
                id: id.into(),
                source,
            })?;
        Ok(Containerd {
            lease: Some(id.to_string()),
            ..self.clone()
        })
    }

    /// Ends this client's lease (a no-op without one); what it protected
    /// stays if something else references it. A failure is logged: the
    /// lease expires by itself.
    pub async fn release(&self) {
        let Some(id) = &self.lease else {
            return;
        };
        let r = LeasesClient::new(self.channel.clone())
            .delete(self.req(DeleteLeaseRequest {
                id: id.clone(),
                sync: false,
            }))
            .await;
        if let Err(e) = r {
            tracing::warn!(lease = %id, error = %e.message(), "ending a containerd lease (it expires by itself)");
        }
    }

    pub async fn prepare_snapshot(
        &self,
        snapshotter: &str,
        key: &str,
        parent: &str,
    ) -> Result<Vec<Mount>> {
        let r = SnapshotsClient::new(self.channel.clone())
            .prepare(self.req(PrepareSnapshotRequest {
                snapshotter: snapshotter.into(),
                key: key.into(),
                parent: parent.into(),
                labels: HashMap::new(),
            }))
            .await
            .map_err(|source| ContainerdError::PrepareSnapshot {
                key: key.into(),
                source,
            })?;
        Ok(r.into_inner().mounts)
    }

    pub async fn remove_snapshot(&self, snapshotter: &str, key: &str) -> Result<()> {
        SnapshotsClient::new(self.channel.clone())
            .remove(self.req(RemoveSnapshotRequest {
                snapshotter: snapshotter.into(),
                key: key.into(),
            }))
            .await
            .map_err(|source| ContainerdError::RemoveSnapshot {
                key: key.into(),
                source,
            })?;
        Ok(())
    }

    pub async fn has_image(&self, name: &str) -> bool {
        ImagesClient::new(self.channel.clone())
            .get(self.req(GetImageRequest { name: name.into() }))
            .await
            .is_ok()
    }

    async fn read_content(&self, digest: &str) -> Result<Vec<u8>> {
        let mut stream = ContentClient::new(self.channel.clone())
            .read(self.req(ReadContentRequest {
                digest: digest.into(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(|source| ContainerdError::ReadContent {
                digest: digest.into(),
                source,
            })?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) =
            stream
                .message()
                .await
                .map_err(|source| ContainerdError::ReadContent {
                    digest: digest.into(),
                    source,
                })?
        {
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    /// The chain id of the image's layers: the parent of the container's snapshot.
    pub async fn image_chain_id(&self, name: &str) -> Result<String> {
        let img = ImagesClient::new(self.channel.clone())
            .get(self.req(GetImageRequest { name: name.into() }))
            .await
            .map_err(|source| ContainerdError::GetImage {
                name: name.into(),
                source,
            })?
            .into_inner()
            .image
            .ok_or_else(|| ContainerdError::NoImage { name: name.into() })?;
        let target = img
            .target
            .ok_or_else(|| ContainerdError::NoImageTarget { name: name.into() })?;
        let json = |what: &'static str, data: &[u8]| {
            serde_json::from_slice::<serde_json::Value>(data).map_err(|source| {
                ContainerdError::ImageJson {
                    name: name.into(),
                    what,
                    source,
                }
            })
        };
        let mut doc = json("target", &self.read_content(&target.digest).await?)?;
        if let Some(ms) = doc.get("manifests").and_then(|m| m.as_array()).cloned() {
            let m = ms
                .iter()
                .find(|m| {
                    m.pointer("/platform/architecture")
                        .and_then(|a| a.as_str())
                        .is_none_or(|a| a == "amd64")
                })
                .ok_or_else(|| ContainerdError::NoAmd64Manifest { name: name.into() })?;
            let d = m["digest"]
                .as_str()
                .ok_or_else(|| ContainerdError::BadIndex { name: name.into() })?;
            doc = json("manifest", &self.read_content(d).await?)?;
        }
        let cfg = doc
            .pointer("/config/digest")
            .and_then(|d| d.as_str())
            .ok_or_else(|| ContainerdError::NoImageConfig { name: name.into() })?;
        let config = json("config", &self.read_content(cfg).await?)?;
        let diff_ids: Vec<String> = config
            .pointer("/rootfs/diff_ids")
            .and_then(|d| d.as_array())
            .ok_or_else(|| ContainerdError::NoDiffIds { name: name.into() })?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        Ok(chain_id(&diff_ids))
    }

    pub async fn create_container(&self, c: Container) -> Result<()> {
        let id = c.id.clone();
        ContainersClient::new(self.channel.clone())
            .create(self.req(CreateContainerRequest { container: Some(c) }))
            .await
            .map_err(|source| ContainerdError::CreateContainer { id, source })?;
        Ok(())
    }

    /// Creates the task with MOSE task options (e.g. the CRIU image to restore).
    pub async fn create_task(
        &self,
        id: &str,
        rootfs: Vec<Mount>,
        options: Option<Any>,
    ) -> Result<u32> {
        let r = self
            .tasks()
            .create(self.req(CreateTaskRequest {
                container_id: id.into(),
                rootfs,
                stdin: String::new(),
                stdout: String::new(),
                stderr: String::new(),
                terminal: false,
                checkpoint: None,
                options,
                runtime_path: String::new(),
            }))
            .await
            .map_err(|source| ContainerdError::CreateTask {
                id: id.into(),
                source,
            })?;
        Ok(r.into_inner().pid)
    }

    pub async fn start(&self, id: &str) -> Result<u32> {
        let r = self
            .tasks()
            .start(self.req(StartRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
            .map_err(|source| ContainerdError::StartTask {
                id: id.into(),
                source,
            })?;
        Ok(r.into_inner().pid)
    }
}

/// containerd's task status `RUNNING` (`containerd.v1.types.Status`).
pub const TASK_RUNNING: i32 = 2;
/// containerd's task status `PAUSED`.
pub const TASK_PAUSED: i32 = 4;

/// OCI chain id of a layer stack.
pub fn chain_id(diff_ids: &[String]) -> String {
    let mut it = diff_ids.iter();
    let Some(first) = it.next() else {
        return String::new();
    };
    let mut chain = first.clone();
    for d in it {
        let h = Sha256::digest(format!("{chain} {d}").as_bytes());
        chain = format!("sha256:{}", hex(&h));
    }
    chain
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The spec, decoded from a container record.
pub fn spec_of(c: &Container) -> Result<serde_json::Value> {
    let any = c
        .spec
        .as_ref()
        .ok_or_else(|| ContainerdError::NoSpec { id: c.id.clone() })?;
    serde_json::from_slice(&any.value).map_err(|source| ContainerdError::SpecJson {
        id: c.id.clone(),
        source,
    })
}

pub fn runtime(name: &str, options: Option<Any>) -> Runtime {
    Runtime {
        name: name.into(),
        options,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        assert_eq!(chain_id(&["sha256:a".into()]), "sha256:a");
        let two = chain_id(&["sha256:a".into(), "sha256:b".into()]);
        assert_eq!(
            two,
            format!("sha256:{}", hex(&Sha256::digest(b"sha256:a sha256:b")))
        );
        assert_eq!(chain_id(&[]), "");
    }
}
