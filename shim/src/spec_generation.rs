//! Keeps every checkpoint of a container recordable by containerd 1.6/1.7.
//!
//! A checkpoint through containerd (`ctr containers checkpoint`, the Tasks
//! API) stores the container's OCI spec in containerd's content store beside
//! the CRIU image. containerd 1.6 and 1.7 fail that write with AlreadyExists
//! when the very same bytes are stored already (containerd 2.x ignores it),
//! and containerd's client library swallows AlreadyExists: the checkpoint
//! "succeeds" with an index that holds no CRIU image, and its restore fails
//! later with "media type not found". That happens on the second checkpoint
//! of an unchanged container, and on the first checkpoint of a container
//! restored from a checkpoint (its spec *is* that checkpoint's spec), under
//! containerd's runc shim too.
//!
//! So MOSE counts a generation in an annotation of the container's spec in
//! containerd's metadata, after every checkpoint and at every restore: each
//! checkpoint then records a spec of its own. The annotation changes nothing
//! the runtime does.

use std::path::Path;

use containerd_client::{
    services::v1::{
        containers_client::ContainersClient, GetContainerRequest, UpdateContainerRequest,
    },
    tonic::Request,
    with_namespace,
};
use tracing::debug;

use crate::error::{Error, Result};

/// The annotation counting a container's checkpoints and restores.
pub const GENERATION_ANNOTATION: &str = "io.mose.checkpoint.generation";

/// How long containerd may take to answer.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Increments the generation annotation of container `id` in the containerd
/// at `address` (its gRPC socket), namespace `namespace`.
pub async fn bump(address: &str, namespace: &str, id: &str) -> Result<()> {
    tokio::time::timeout(TIMEOUT, bump_inner(address, namespace, id))
        .await
        .map_err(|_| Error::Internal(format!("containerd at {address} did not answer in time")))?
}

async fn bump_inner(address: &str, namespace: &str, id: &str) -> Result<()> {
    let channel = containerd_client::connect(Path::new(address))
        .await
        .map_err(|e| Error::Internal(format!("connect to containerd at {address}: {e}")))?;
    let mut client = ContainersClient::new(channel);
    let get = GetContainerRequest { id: id.to_string() };
    let got = client
        .get(with_namespace!(get, namespace))
        .await
        .map_err(|e| Error::Internal(format!("get container {id}: {}", e.message())))?;
    let Some(mut container) = got.into_inner().container else {
        return Err(Error::NotFound(format!("container {id} has no record")));
    };
    let Some(spec) = container.spec.as_mut() else {
        return Ok(());
    };
    let mut json: serde_json::Value = serde_json::from_slice(&spec.value)
        .map_err(|e| Error::Internal(format!("container {id} spec is not JSON: {e}")))?;
    let next = next_generation(&json);
    if let Some(obj) = json.as_object_mut() {
        let ann = obj
            .entry("annotations")
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        if let Some(a) = ann.as_object_mut() {
            a.insert(GENERATION_ANNOTATION.into(), next.to_string().into());
        }
    }
    spec.value = serde_json::to_vec(&json).map_err(|e| Error::Internal(e.to_string()))?;
    let update = UpdateContainerRequest {
        container: Some(container),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["spec".into()],
        }),
    };
    client
        .update(with_namespace!(update, namespace))
        .await
        .map_err(|e| Error::Internal(format!("update container {id}: {}", e.message())))?;
    debug!(container = id, generation = next, "spec generation bumped");
    Ok(())
}

fn next_generation(spec: &serde_json::Value) -> u64 {
    spec.pointer("/annotations")
        .and_then(|a| a.get(GENERATION_ANNOTATION))
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0)
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_count_up() {
        assert_eq!(next_generation(&serde_json::json!({})), 1);
        let s = serde_json::json!({"annotations": {GENERATION_ANNOTATION: "41"}});
        assert_eq!(next_generation(&s), 42);
        let s = serde_json::json!({"annotations": {GENERATION_ANNOTATION: "x"}});
        assert_eq!(next_generation(&s), 1);
    }
}
