//! A kubelet-like CRI client for the testbed's nodes: containerd's CRI
//! plugin (`runtime.v1`, the `k8s-cri` crate) on the node's containerd
//! socket, blocking (each call runs on the client's own tokio runtime), with
//! the pod and container configurations a kubelet sends.

use std::{collections::HashMap, path::Path};

use anyhow::{Context, Result};
use k8s_cri::v1::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient, *,
};
use tonic::transport::Channel;

/// The runtime handler of MOSE in containerd's CRI configuration.
pub const MOSE_HANDLER: &str = "mose";

/// A connection to one node's CRI.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// What a pod is created with.
#[derive(Debug, Clone, Default)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    /// Where the kubelet keeps the pod's logs (`log_directory`).
    pub log_dir: String,
}

/// What a container is created with (image by reference, already on the node).
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub annotations: HashMap<String, String>,
    /// Relative to the pod's log directory.
    pub log_path: String,
    /// The container's memory limit in bytes (`None`: unlimited).
    pub memory_limit: Option<i64>,
}

/// One `ExecSync` answer.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Cri {
    /// Connects to the CRI on containerd's socket.
    pub fn connect(socket: &Path) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the CRI client's runtime")?;
        let channel = rt
            .block_on(containerd_client::connect(socket))
            .with_context(|| format!("connecting to the CRI on {}", socket.display()))?;
        Ok(Self {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// `RunPodSandbox` with `handler`; returns the sandbox id.
    pub fn run_pod(&mut self, pod: &PodSpec, handler: &str) -> Result<String> {
        let config = pod_config(pod);
        let r = self
            .rt
            .block_on(self.runtime.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: handler.into(),
            }));
        Ok(
            r.with_context(|| format!("RunPodSandbox {} ({handler})", pod.name))?
                .into_inner()
                .pod_sandbox_id,
        )
    }

    /// `PodSandboxStatus`.
    pub fn pod_status(&mut self, id: &str) -> Result<PodSandboxStatus> {
        let r = self
            .rt
            .block_on(self.runtime.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            }));
        r.with_context(|| format!("PodSandboxStatus {id}"))?
            .into_inner()
            .status
            .context("PodSandboxStatus without a status")
    }

    /// `ListPodSandbox` (all pods on the node).
    pub fn pods(&mut self) -> Result<Vec<PodSandbox>> {
        let r = self.rt.block_on(
            self.runtime
                .list_pod_sandbox(ListPodSandboxRequest { filter: None }),
        );
        Ok(r.context("ListPodSandbox")?.into_inner().items)
    }

    /// `CreateContainer` in pod `pod_id`; returns the container id.
    pub fn create_container(
        &mut self,
        pod_id: &str,
        pod: &PodSpec,
        c: &ContainerSpec,
    ) -> Result<String> {
        let req = CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(container_config(c)),
            sandbox_config: Some(pod_config(pod)),
        };
        let r = self.rt.block_on(self.runtime.create_container(req));
        Ok(r.with_context(|| format!("CreateContainer {}", c.name))?
            .into_inner()
            .container_id)
    }

    /// `StartContainer`.
    pub fn start_container(&mut self, id: &str) -> Result<()> {
        let r = self
            .rt
            .block_on(self.runtime.start_container(StartContainerRequest {
                container_id: id.into(),
            }));
        r.with_context(|| format!("StartContainer {id}"))?;
        Ok(())
    }

    /// `ContainerStatus`.
    pub fn container_status(&mut self, id: &str) -> Result<ContainerStatus> {
        let r = self
            .rt
            .block_on(self.runtime.container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            }));
        r.with_context(|| format!("ContainerStatus {id}"))?
            .into_inner()
            .status
            .context("ContainerStatus without a status")
    }

    /// `ExecSync` of `cmd` with a timeout in seconds.
    pub fn exec_sync(&mut self, id: &str, cmd: &[&str], timeout_s: i64) -> Result<ExecOutput> {
        let r = self.rt.block_on(self.runtime.exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_s,
        }));
        let r = r
            .with_context(|| format!("ExecSync {cmd:?} in {id}"))?
            .into_inner();
        Ok(ExecOutput {
            exit_code: r.exit_code,
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
        })
    }

    /// `ContainerStats`.
    pub fn container_stats(&mut self, id: &str) -> Result<ContainerStats> {
        let r = self
            .rt
            .block_on(self.runtime.container_stats(ContainerStatsRequest {
                container_id: id.into(),
            }));
        r.with_context(|| format!("ContainerStats {id}"))?
            .into_inner()
            .stats
            .context("ContainerStats without stats")
    }

    /// `UpdateContainerResources` with Linux resources.
    pub fn update_resources(&mut self, id: &str, linux: LinuxContainerResources) -> Result<()> {
        let r = self.rt.block_on(self.runtime.update_container_resources(
            UpdateContainerResourcesRequest {
                container_id: id.into(),
                linux: Some(linux),
                windows: None,
                annotations: HashMap::new(),
            },
        ));
        r.with_context(|| format!("UpdateContainerResources {id}"))?;
        Ok(())
    }

    /// `Exec` of `cmd` with stdout and stderr (no stdin, no terminal):
    /// the streaming URL to open (see [`crate::cri_stream`]).
    pub fn exec_url(&mut self, id: &str, cmd: &[&str]) -> Result<String> {
        let r = self.rt.block_on(self.runtime.exec(ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        }));
        Ok(r.with_context(|| format!("Exec {cmd:?} in {id}"))?
            .into_inner()
            .url)
    }

    /// `Attach` to the container's stdout and stderr: the streaming URL.
    pub fn attach_url(&mut self, id: &str) -> Result<String> {
        let r = self.rt.block_on(self.runtime.attach(AttachRequest {
            container_id: id.into(),
            stdin: false,
            tty: false,
            stdout: true,
            stderr: true,
        }));
        Ok(r.with_context(|| format!("Attach {id}"))?.into_inner().url)
    }

    /// `StopPodSandbox` alone (a kubelet's first step of a pod's deletion).
    pub fn stop_pod(&mut self, id: &str) -> Result<()> {
        let stop = self
            .rt
            .block_on(self.runtime.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }));
        stop.with_context(|| format!("StopPodSandbox {id}"))?;
        Ok(())
    }

    /// `StopPodSandbox` then `RemovePodSandbox` (its containers go with it).
    pub fn remove_pod(&mut self, id: &str) -> Result<()> {
        let stop = self
            .rt
            .block_on(self.runtime.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }));
        stop.with_context(|| format!("StopPodSandbox {id}"))?;
        let rm = self
            .rt
            .block_on(self.runtime.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }));
        rm.with_context(|| format!("RemovePodSandbox {id}"))?;
        Ok(())
    }

    /// Whether the CRI lists image `reference` (`ImageStatus`).
    pub fn has_image(&mut self, reference: &str) -> Result<bool> {
        let r = self
            .rt
            .block_on(self.images.image_status(ImageStatusRequest {
                image: Some(image_spec(reference)),
                verbose: false,
            }));
        Ok(r.with_context(|| format!("ImageStatus {reference}"))?
            .into_inner()
            .image
            .is_some())
    }
}

fn image_spec(reference: &str) -> ImageSpec {
    ImageSpec {
        image: reference.into(),
        ..Default::default()
    }
}

fn pod_config(pod: &PodSpec) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            namespace: pod.namespace.clone(),
            attempt: 0,
        }),
        hostname: pod.name.clone(),
        log_directory: pod.log_dir.clone(),
        labels: pod.labels.clone(),
        annotations: pod.annotations.clone(),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

fn container_config(c: &ContainerSpec) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: c.name.clone(),
            attempt: 0,
        }),
        image: Some(image_spec(&c.image)),
        command: c.command.clone(),
        args: c.args.clone(),
        annotations: c.annotations.clone(),
        log_path: c.log_path.clone(),
        linux: Some(LinuxContainerConfig {
            resources: c.memory_limit.map(|m| LinuxContainerResources {
                memory_limit_in_bytes: m,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The lines of a CRI log file (`<RFC 3339 time> <stream> <P|F> <text>`,
/// partial lines joined), as (stream, text).
pub fn log_lines(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut partial = String::new();
    for l in text.lines() {
        let mut f = l.splitn(4, ' ');
        let (Some(_time), Some(stream), Some(tag), rest) = (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        partial.push_str(rest.unwrap_or(""));
        if tag == "F" {
            out.push((stream.to_string(), std::mem::take(&mut partial)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_lines_are_parsed_and_partials_joined() {
        let text = "2026-11-30T20:00:00.1Z stdout P hel\n\
                    2026-11-30T20:00:00.2Z stdout F lo\n\
                    2026-11-30T20:00:00.3Z stderr F oops\n\
                    garbage\n\
                    2026-11-30T20:00:00.4Z stdout F \n";
        assert_eq!(
            log_lines(text),
            vec![
                ("stdout".into(), "hello".into()),
                ("stderr".into(), "oops".into()),
                ("stdout".into(), "".into())
            ]
        );
    }
}
