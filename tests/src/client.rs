//! containerd gRPC client (Containers, Snapshots and Tasks APIs) with timeouts.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::MountsRequest;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    CheckpointTaskRequest, CloseIoRequest, Container, CreateContainerRequest, CreateTaskRequest,
    DeleteContainerRequest, DeleteProcessRequest, DeleteTaskRequest, ExecProcessRequest,
    GetContainerRequest, GetRequest, KillRequest, ListPidsRequest, MetricsRequest,
    PauseTaskRequest, ResizePtyRequest, ResumeTaskRequest, StartRequest, UpdateContainerRequest,
    UpdateTaskRequest, WaitRequest,
};
use containerd_client::types::{Descriptor, Mount};
use containerd_shim_protos::cgroups::metrics::Metrics as CgroupsV1Metrics;
use containerd_shim_protos::protobuf::Message as _;
use prost_types::Any;
use tonic::transport::Channel;
use tonic::Request;

use crate::fifo::TaskIo;
use crate::DEFAULT_TIMEOUT;

/// Type URL of an OCI runtime spec in an `Any`.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Type URL of an OCI process spec in an `Any` (exec).
pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// Type URL of OCI Linux resources in an `Any` (update).
pub const RESOURCES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";
/// Type URL of cgroup v1 metrics.
pub const CGROUPS_V1_METRICS_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";
/// Type URL of runc's checkpoint options (also understood by runc-like shims).
pub const CHECKPOINT_OPTIONS_TYPE_URL: &str = "containerd.runc.v1.CheckpointOptions";

/// Task status values (containerd.v1.types.Status).
pub mod status {
    /// Unknown.
    pub const UNKNOWN: i32 = 0;
    /// Created, not started.
    pub const CREATED: i32 = 1;
    /// Running.
    pub const RUNNING: i32 = 2;
    /// Exited.
    pub const STOPPED: i32 = 3;
    /// Paused.
    pub const PAUSED: i32 = 4;
    /// Pausing.
    pub const PAUSING: i32 = 5;
}

/// `containerd.runc.v1.CheckpointOptions`, hand-written for prost.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckpointOptions {
    /// Stop the task after checkpointing.
    #[prost(bool, tag = "1")]
    pub exit: bool,
    /// Checkpoint open TCP connections.
    #[prost(bool, tag = "2")]
    pub open_tcp: bool,
    /// Checkpoint external unix sockets.
    #[prost(bool, tag = "3")]
    pub external_unix_sockets: bool,
    /// Checkpoint terminals.
    #[prost(bool, tag = "4")]
    pub terminal: bool,
    /// Allow file locks.
    #[prost(bool, tag = "5")]
    pub file_locks: bool,
    /// Namespaces not to checkpoint.
    #[prost(string, repeated, tag = "6")]
    pub empty_namespaces: Vec<String>,
    /// cgroups mode (soft, full, strict, ignore).
    #[prost(string, tag = "7")]
    pub cgroups_mode: String,
    /// Where to put the CRIU images.
    #[prost(string, tag = "8")]
    pub image_path: String,
    /// Where to put CRIU work files.
    #[prost(string, tag = "9")]
    pub work_path: String,
}

impl CheckpointOptions {
    /// Packs the options into an `Any`.
    pub fn to_any(&self) -> Any {
        Any {
            type_url: CHECKPOINT_OPTIONS_TYPE_URL.to_string(),
            value: prost::Message::encode_to_vec(self),
        }
    }
}

/// JSON value packed into an `Any` with `type_url`.
pub fn json_any(type_url: &str, v: &serde_json::Value) -> Result<Any> {
    Ok(Any {
        type_url: type_url.to_string(),
        value: serde_json::to_vec(v)?,
    })
}

/// A namespaced gRPC client; every call is bounded by a timeout.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    namespace: String,
    timeout: Duration,
}

impl Client {
    /// Connects to containerd's gRPC socket.
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Self> {
        let channel = tokio::time::timeout(DEFAULT_TIMEOUT, containerd_client::connect(socket))
            .await
            .map_err(|_| anyhow!("timed out connecting to {}", socket.display()))?
            .with_context(|| format!("connecting to {}", socket.display()))?;
        Ok(Self {
            channel,
            namespace: namespace.to_string(),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The namespace used.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Tasks API stub.
    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }

    /// Containers API stub.
    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }

    /// Snapshots API stub.
    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }

    /// Wraps `msg` in a request carrying the namespace and a deadline.
    pub fn req<T>(&self, msg: T) -> Request<T> {
        self.req_timeout(msg, self.timeout)
    }

    fn req_timeout<T>(&self, msg: T, timeout: Duration) -> Request<T> {
        let mut r = Request::new(msg);
        if let Ok(v) = self.namespace.parse() {
            r.metadata_mut().insert("containerd-namespace", v);
        }
        r.set_timeout(timeout);
        r
    }

    /// Runs `fut` with the client timeout (plus slack), mapping gRPC errors.
    async fn call<F, T>(&self, what: &str, fut: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_timeout(what, self.timeout, fut).await
    }

    async fn call_timeout<F, T>(&self, what: &str, timeout: Duration, fut: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(timeout + Duration::from_secs(2), fut).await {
            Err(_) => bail!("{what}: timed out after {timeout:?}"),
            Ok(Err(st)) => Err(anyhow!("{what}: {:?}: {}", st.code(), st.message())),
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }

    /// Gets a container record.
    pub async fn container(&self, id: &str) -> Result<Container> {
        let r = self
            .call(
                "containers.get",
                self.containers()
                    .get(self.req(GetContainerRequest { id: id.into() })),
            )
            .await?;
        r.container.context("no container in response")
    }

    /// The container's OCI spec as JSON.
    pub async fn container_spec(&self, id: &str) -> Result<serde_json::Value> {
        let c = self.container(id).await?;
        let spec = c.spec.context("container has no spec")?;
        serde_json::from_slice(&spec.value).context("parsing spec")
    }

    /// Replaces the container's OCI spec.
    pub async fn set_container_spec(&self, id: &str, spec: &serde_json::Value) -> Result<()> {
        let mut c = self.container(id).await?;
        c.spec = Some(json_any(SPEC_TYPE_URL, spec)?);
        self.call(
            "containers.update",
            self.containers().update(self.req(UpdateContainerRequest {
                container: Some(c),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["spec".into()],
                }),
            })),
        )
        .await?;
        Ok(())
    }

    /// Creates a container record (no snapshot is prepared).
    pub async fn create_container(&self, c: Container) -> Result<()> {
        self.call(
            "containers.create",
            self.containers()
                .create(self.req(CreateContainerRequest { container: Some(c) })),
        )
        .await?;
        Ok(())
    }

    /// Deletes a container record.
    pub async fn delete_container(&self, id: &str) -> Result<()> {
        self.call(
            "containers.delete",
            self.containers()
                .delete(self.req(DeleteContainerRequest { id: id.into() })),
        )
        .await?;
        Ok(())
    }

    /// Rootfs mounts of the container's snapshot.
    pub async fn rootfs_mounts(&self, id: &str) -> Result<Vec<Mount>> {
        let c = self.container(id).await?;
        let r = self
            .call(
                "snapshots.mounts",
                self.snapshots().mounts(self.req(MountsRequest {
                    snapshotter: c.snapshotter.clone(),
                    key: c.snapshot_key.clone(),
                })),
            )
            .await?;
        Ok(r.mounts)
    }

    /// Creates the task of container `id` with its snapshot as rootfs; returns the pid.
    pub async fn create_task(&self, id: &str, io: &TaskIo) -> Result<u32> {
        let rootfs = self.rootfs_mounts(id).await?;
        self.create_task_with(id, io, rootfs, None, None).await
    }

    /// Creates a task with explicit rootfs, checkpoint and options.
    pub async fn create_task_with(
        &self,
        id: &str,
        io: &TaskIo,
        rootfs: Vec<Mount>,
        checkpoint: Option<Descriptor>,
        options: Option<Any>,
    ) -> Result<u32> {
        let (stdin, stdout, stderr) = io.strings();
        let r = self
            .call(
                "tasks.create",
                self.tasks().create(self.req(CreateTaskRequest {
                    container_id: id.into(),
                    rootfs,
                    stdin,
                    stdout,
                    stderr,
                    terminal: io.terminal,
                    checkpoint,
                    options,
                    runtime_path: String::new(),
                })),
            )
            .await?;
        Ok(r.pid)
    }

    /// Starts the task (`exec_id` empty) or an exec; returns the pid.
    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let r = self
            .call(
                "tasks.start",
                self.tasks().start(self.req(StartRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                })),
            )
            .await?;
        Ok(r.pid)
    }

    /// Waits up to `timeout` for the task or exec to exit; returns its exit status.
    pub async fn wait(&self, id: &str, exec_id: &str, timeout: Duration) -> Result<u32> {
        let r = self
            .call_timeout(
                "tasks.wait",
                timeout,
                self.tasks().wait(self.req_timeout(
                    WaitRequest {
                        container_id: id.into(),
                        exec_id: exec_id.into(),
                    },
                    timeout,
                )),
            )
            .await?;
        Ok(r.exit_status)
    }

    /// Sends `signal` to the task/exec (`all`: every process of the container).
    pub async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        self.call(
            "tasks.kill",
            self.tasks().kill(self.req(KillRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
                signal,
                all,
            })),
        )
        .await?;
        Ok(())
    }

    /// Deletes the task; returns its exit status.
    pub async fn delete_task(&self, id: &str) -> Result<u32> {
        let r = self
            .call(
                "tasks.delete",
                self.tasks().delete(self.req(DeleteTaskRequest {
                    container_id: id.into(),
                })),
            )
            .await?;
        Ok(r.exit_status)
    }

    /// Deletes an exec process.
    pub async fn delete_process(&self, id: &str, exec_id: &str) -> Result<u32> {
        let r = self
            .call(
                "tasks.delete_process",
                self.tasks().delete_process(self.req(DeleteProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                })),
            )
            .await?;
        Ok(r.exit_status)
    }

    /// Creates an exec running `args` (env/cwd taken from the container spec).
    pub async fn exec(&self, id: &str, exec_id: &str, args: &[&str], io: &TaskIo) -> Result<()> {
        let spec = self.container_spec(id).await?;
        let mut process = spec
            .get("process")
            .cloned()
            .context("container spec has no process")?;
        process["args"] = serde_json::json!(args);
        process["terminal"] = serde_json::json!(io.terminal);
        let (stdin, stdout, stderr) = io.strings();
        self.call(
            "tasks.exec",
            self.tasks().exec(self.req(ExecProcessRequest {
                container_id: id.into(),
                stdin,
                stdout,
                stderr,
                terminal: io.terminal,
                spec: Some(json_any(PROCESS_TYPE_URL, &process)?),
                exec_id: exec_id.into(),
            })),
        )
        .await?;
        Ok(())
    }

    /// Status of the task/exec (see [`status`]) and its exit status.
    pub async fn state(&self, id: &str, exec_id: &str) -> Result<(i32, u32)> {
        let r = self
            .call(
                "tasks.get",
                self.tasks().get(self.req(GetRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                })),
            )
            .await?;
        let p = r.process.context("no process in response")?;
        Ok((p.status, p.exit_status))
    }

    /// Pauses the task.
    pub async fn pause(&self, id: &str) -> Result<()> {
        self.call(
            "tasks.pause",
            self.tasks().pause(self.req(PauseTaskRequest {
                container_id: id.into(),
            })),
        )
        .await?;
        Ok(())
    }

    /// Resumes the task.
    pub async fn resume(&self, id: &str) -> Result<()> {
        self.call(
            "tasks.resume",
            self.tasks().resume(self.req(ResumeTaskRequest {
                container_id: id.into(),
            })),
        )
        .await?;
        Ok(())
    }

    /// Pids of all processes in the container.
    pub async fn pids(&self, id: &str) -> Result<Vec<u32>> {
        let r = self
            .call(
                "tasks.list_pids",
                self.tasks().list_pids(self.req(ListPidsRequest {
                    container_id: id.into(),
                })),
            )
            .await?;
        Ok(r.processes.iter().map(|p| p.pid).collect())
    }

    /// Closes the stdin of the task/exec.
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        self.call(
            "tasks.close_io",
            self.tasks().close_io(self.req(CloseIoRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
                stdin: true,
            })),
        )
        .await?;
        Ok(())
    }

    /// Resizes the terminal of the task/exec.
    pub async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        self.call(
            "tasks.resize_pty",
            self.tasks().resize_pty(self.req(ResizePtyRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
                width,
                height,
            })),
        )
        .await?;
        Ok(())
    }

    /// Raw metrics `Any` of the task.
    pub async fn metrics_any(&self, id: &str) -> Result<Any> {
        let r = self
            .call(
                "tasks.metrics",
                self.tasks().metrics(self.req(MetricsRequest {
                    filters: vec![format!("id=={id}")],
                })),
            )
            .await?;
        let m = r
            .metrics
            .into_iter()
            .find(|m| m.id == id)
            .with_context(|| format!("no metrics for {id}"))?;
        m.data.context("metric without data")
    }

    /// cgroup v1 metrics of the task.
    pub async fn metrics_v1(&self, id: &str) -> Result<CgroupsV1Metrics> {
        let any = self.metrics_any(id).await?;
        if !any.type_url.ends_with(CGROUPS_V1_METRICS_TYPE_URL) {
            bail!("unexpected metrics type {}", any.type_url);
        }
        CgroupsV1Metrics::parse_from_bytes(&any.value).context("decoding cgroups v1 metrics")
    }

    /// Updates the task's resources (OCI LinuxResources JSON).
    pub async fn update(&self, id: &str, resources: &serde_json::Value) -> Result<()> {
        self.call(
            "tasks.update",
            self.tasks().update(self.req(UpdateTaskRequest {
                container_id: id.into(),
                resources: Some(json_any(RESOURCES_TYPE_URL, resources)?),
                annotations: Default::default(),
            })),
        )
        .await?;
        Ok(())
    }

    /// Checkpoints the task; returns the checkpoint descriptors (CRIU tar, spec).
    pub async fn checkpoint(&self, id: &str, options: Option<Any>) -> Result<Vec<Descriptor>> {
        let r = self
            .call(
                "tasks.checkpoint",
                self.tasks().checkpoint(self.req(CheckpointTaskRequest {
                    container_id: id.into(),
                    parent_checkpoint: String::new(),
                    options,
                })),
            )
            .await?;
        Ok(r.descriptors)
    }
}
