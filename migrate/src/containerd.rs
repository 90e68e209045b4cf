//! The containerd operations a migration needs, over containerd's gRPC API.

use std::{collections::HashMap, path::Path, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use containerd_client::{
    services::v1::{
        container::Runtime,
        containers_client::ContainersClient,
        content_client::ContentClient,
        images_client::ImagesClient,
        snapshots::{
            snapshots_client::SnapshotsClient, MountsRequest, PrepareSnapshotRequest,
            RemoveSnapshotRequest,
        },
        tasks_client::TasksClient,
        Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
        DeleteTaskRequest, GetContainerRequest, GetImageRequest, GetRequest, KillRequest,
        ListPidsRequest, PauseTaskRequest, ReadContentRequest, ResumeTaskRequest, StartRequest,
        WaitRequest,
    },
    types::Mount,
};
use prost_types::Any;
use sha2::{Digest, Sha256};
use tonic::{transport::Channel, Request};

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
}

impl Containerd {
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Self> {
        let channel =
            tokio::time::timeout(Duration::from_secs(10), containerd_client::connect(socket))
                .await
                .map_err(|_| anyhow!("timed out connecting to containerd at {}", socket.display()))?
                .with_context(|| {
                    format!(
                        "cannot connect to containerd at {} (is it running?)",
                        socket.display()
                    )
                })?;
        Ok(Self {
            channel,
            namespace: namespace.to_string(),
            socket: socket.display().to_string(),
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
            .map_err(|s| {
                anyhow!(
                    "container {id} in namespace {}: {}",
                    self.namespace,
                    s.message()
                )
            })?;
        r.into_inner()
            .container
            .ok_or_else(|| anyhow!("containerd returned no container {id}"))
    }

    pub async fn task_pid(&self, id: &str) -> Result<u32> {
        let r = self
            .tasks()
            .get(self.req(GetRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
            .map_err(|s| anyhow!("task of {id}: {} (is the container running?)", s.message()))?;
        let p = r
            .into_inner()
            .process
            .ok_or_else(|| anyhow!("no task for container {id}"))?;
        if p.status != 2 && p.status != 4 {
            bail!("container {id} is not running (task status {})", p.status);
        }
        Ok(p.pid)
    }

    pub async fn pids(&self, id: &str) -> Result<Vec<u32>> {
        let r = self
            .tasks()
            .list_pids(self.req(ListPidsRequest {
                container_id: id.into(),
            }))
            .await
            .map_err(|s| anyhow!("pids of {id}: {}", s.message()))?;
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
            .map_err(|s| anyhow!("pause {id}: {}", s.message()))?;
        Ok(())
    }

    pub async fn resume(&self, id: &str) -> Result<()> {
        self.tasks()
            .resume(self.req(ResumeTaskRequest {
                container_id: id.into(),
            }))
            .await
            .map_err(|s| anyhow!("resume {id}: {}", s.message()))?;
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
            .map_err(|s| anyhow!("kill {id}: {}", s.message()))?;
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
            .map_err(|s| anyhow!("wait {id}: {}", s.message()))?;
        Ok(r.into_inner().exit_status)
    }

    pub async fn delete_task(&self, id: &str) -> Result<()> {
        self.tasks()
            .delete(self.req(DeleteTaskRequest {
                container_id: id.into(),
            }))
            .await
            .map_err(|s| anyhow!("delete task {id}: {}", s.message()))?;
        Ok(())
    }

    /// CRIU dump straight through the container's shim (not containerd's
    /// Checkpoint, which also writes a checkpoint record into its content
    /// store: disk on the hot path, and refused when an identical record
    /// exists). The task keeps the state it had (running or paused).
    pub async fn shim_checkpoint(&self, id: &str, image: &Path, work: &Path) -> Result<()> {
        use containerd_shim_protos::{
            protobuf::well_known_types::any::Any as PbAny,
            shim::shim::CheckpointTaskRequest as ShimCheckpoint, shim_async::TaskClient, ttrpc,
        };
        let pid = self.task_pid(id).await?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let ppid: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("no parent of the task's pid {pid}"))?;
        let bundle = std::fs::read_link(format!("/proc/{ppid}/cwd"))
            .with_context(|| format!("finding the shim of {id} (pid {ppid})"))?;
        let address = std::fs::read_to_string(bundle.join("address")).with_context(|| {
            format!(
                "no shim address in {} (is {id} run by a containerd shim?)",
                bundle.display()
            )
        })?;
        let client = ttrpc::asynchronous::Client::connect(address.trim())
            .await
            .map_err(|e| anyhow!("connecting to the shim of {id} at {address}: {e}"))?;
        // established connections cannot follow the service to another
        // address: dump them closed, and ignore ones not yet accepted
        let opts = mose_contract::CheckpointOptions {
            image_path: image.display().to_string(),
            work_path: work.display().to_string(),
            tcp_close: true,
            skip_in_flight: true,
            ..Default::default()
        };
        let req = ShimCheckpoint {
            id: id.into(),
            path: image.display().to_string(),
            options: Some(PbAny {
                type_url: mose_contract::CHECKPOINT_OPTIONS_TYPE.into(),
                value: serde_json::to_vec(&opts)?,
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
            .map_err(|e| anyhow!("checkpoint of {id}: {e}"))?;
        Ok(())
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
                value: pb.write_to_bytes()?,
            }),
        };
        self.tasks()
            .checkpoint(self.req(req))
            .await
            .map_err(|e| anyhow!("checkpoint of {id}: {}", e.message()))?;
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
            .map_err(|s| anyhow!("delete container {id}: {}", s.message()))?;
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
            .map_err(|s| anyhow!("mounts of snapshot {key}: {}", s.message()))?;
        Ok(r.into_inner().mounts)
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
            .map_err(|s| anyhow!("prepare snapshot {key}: {}", s.message()))?;
        Ok(r.into_inner().mounts)
    }

    pub async fn remove_snapshot(&self, snapshotter: &str, key: &str) -> Result<()> {
        SnapshotsClient::new(self.channel.clone())
            .remove(self.req(RemoveSnapshotRequest {
                snapshotter: snapshotter.into(),
                key: key.into(),
            }))
            .await
            .map_err(|s| anyhow!("remove snapshot {key}: {}", s.message()))?;
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
            .map_err(|s| anyhow!("read content {digest}: {}", s.message()))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| anyhow!("read content {digest}: {}", s.message()))?
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
            .map_err(|s| anyhow!("image {name}: {}", s.message()))?
            .into_inner()
            .image
            .ok_or_else(|| anyhow!("no image {name}"))?;
        let target = img
            .target
            .ok_or_else(|| anyhow!("image {name} has no target"))?;
        let mut doc: serde_json::Value =
            serde_json::from_slice(&self.read_content(&target.digest).await?)?;
        if let Some(ms) = doc.get("manifests").and_then(|m| m.as_array()).cloned() {
            let m = ms
                .iter()
                .find(|m| {
                    m.pointer("/platform/architecture")
                        .and_then(|a| a.as_str())
                        .is_none_or(|a| a == "amd64")
                })
                .ok_or_else(|| anyhow!("image {name}: no amd64 manifest"))?;
            let d = m["digest"]
                .as_str()
                .ok_or_else(|| anyhow!("bad index in {name}"))?;
            doc = serde_json::from_slice(&self.read_content(d).await?)?;
        }
        let cfg = doc
            .pointer("/config/digest")
            .and_then(|d| d.as_str())
            .ok_or_else(|| anyhow!("image {name}: manifest has no config"))?;
        let config: serde_json::Value = serde_json::from_slice(&self.read_content(cfg).await?)?;
        let diff_ids: Vec<String> = config
            .pointer("/rootfs/diff_ids")
            .and_then(|d| d.as_array())
            .ok_or_else(|| anyhow!("image {name}: config has no rootfs.diff_ids"))?
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
            .map_err(|s| anyhow!("create container {id}: {}", s.message()))?;
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
            .map_err(|s| anyhow!("create task {id}: {}", s.message()))?;
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
            .map_err(|s| anyhow!("start task {id}: {}", s.message()))?;
        Ok(r.into_inner().pid)
    }
}

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
        .ok_or_else(|| anyhow!("container {} has no spec", c.id))?;
    serde_json::from_slice(&any.value)
        .with_context(|| format!("spec of container {} is not JSON", c.id))
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
