//! Pods migrated the Kubernetes way (see `mose_contract::pod`): a pod created
//! on the destination through the CRI names the running pod it continues;
//! the destination's agent asks the source's agent for the pod's address
//! ([`client::query_pod`], for the new sandbox's CNI) and, at each
//! container's start, pulls that container ([`client::request_pull`]): the
//! source agent runs an ordinary migration of the container back to the
//! asking node ([`source::pull`]), whose receiver restores it into the CRI's
//! container through its shim ([`handoff`]) instead of creating one.
//!
//! ```text
//! destination agent                         source agent
//! Hello / PodQuery{ns,pod}          ->      (CNI ADD of the new sandbox)
//!                                   <-      PodInfo{address, containers}
//! Hello / Pull{ns,pod,container,..} ->      (StartContainer of each container)
//!                                   <-      PullOk{container}
//! ... the source connects back: Hello, Begin, rounds, freeze, Commit ...
//! receiver: Handoff to the waiting shim -> shim restores -> Restored -> Released
//!                                           source: CRI StopContainer; StopPodSandbox
//!                                           once none of the pod's containers runs
//! ```

pub mod client;
pub mod cri;
pub mod freeze_group;
pub mod handoff;
pub mod plan;
pub mod source;

pub use client::{query_pod, request_pull};
pub use handoff::{Handoff, HandoffRegistry, PullKey};

/// containerd's CRI label on its containerd containers: `sandbox` or
/// `container`.
pub const LABEL_KIND: &str = "io.cri-containerd.kind";
/// containerd's CRI annotations (in each container's OCI spec) naming the
/// pod and the container.
pub const ANNOTATION_POD_NAME: &str = "io.kubernetes.cri.sandbox-name";
pub const ANNOTATION_POD_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
pub const ANNOTATION_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const ANNOTATION_CONTAINER_NAME: &str = mose_contract::pod::CRI_CONTAINER_NAME;
pub const ANNOTATION_CONTAINER_TYPE: &str = mose_contract::pod::CRI_CONTAINER_TYPE;
/// The containerd namespace of containerd's CRI.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// The pod a CRI container belongs to and its name in it, from its OCI
/// spec's annotations (`None` for containers the CRI does not manage, and
/// for sandboxes).
pub fn pod_container_of(spec: &serde_json::Value) -> Option<PullKey> {
    let a = &spec["annotations"];
    if a[ANNOTATION_CONTAINER_TYPE].as_str() != Some("container") {
        return None;
    }
    Some(PullKey {
        namespace: a[ANNOTATION_POD_NAMESPACE].as_str()?.into(),
        pod: a[ANNOTATION_POD_NAME].as_str()?.into(),
        container: a[ANNOTATION_CONTAINER_NAME].as_str()?.into(),
    })
}
