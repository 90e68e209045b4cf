//! The few CRI calls the source agent makes after a pod's hand-over, on the
//! node's containerd socket (containerd serves the CRI there), through the
//! `k8s-cri` crate's generated client.

use std::{path::Path, time::Duration};

use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, StopContainerRequest, StopPodSandboxRequest,
};
use tonic::{transport::Channel, Request};

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A CRI connection; errors are strings naming the call and the object.
pub struct Cri {
    runtime: RuntimeServiceClient<Channel>,
}

impl Cri {
    pub async fn connect(socket: &Path) -> Result<Self, String> {
        let channel =
            tokio::time::timeout(Duration::from_secs(10), containerd_client::connect(socket))
                .await
                .map_err(|_| format!("timed out connecting to the CRI on {}", socket.display()))?
                .map_err(|e| format!("connecting to the CRI on {}: {e}", socket.display()))?;
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel),
        })
    }

    fn req<T>(msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(CALL_TIMEOUT);
        r
    }

    /// StopContainer with no grace period (its copy now runs elsewhere).
    pub async fn stop_container(&mut self, id: &str) -> Result<(), String> {
        self.runtime
            .stop_container(Self::req(StopContainerRequest {
                container_id: id.into(),
                timeout: 0,
            }))
            .await
            .map_err(|s| format!("CRI StopContainer {id}: {}", s.message()))?;
        Ok(())
    }

    /// StopPodSandbox: its containers stopped, its network torn down (CNI
    /// DEL releases the address), its namespace gone.
    pub async fn stop_pod(&mut self, sandbox: &str) -> Result<(), String> {
        self.runtime
            .stop_pod_sandbox(Self::req(StopPodSandboxRequest {
                pod_sandbox_id: sandbox.into(),
            }))
            .await
            .map_err(|s| format!("CRI StopPodSandbox {sandbox}: {}", s.message()))?;
        Ok(())
    }
}
