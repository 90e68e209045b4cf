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
use oci_spec::runtime::Spec;
use tracing::debug;

use crate::{
    error::{Error, Result},
    oci::BundleSpec,
};

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
    // the spec goes back with the annotation as its only change (see
    // `crate::oci`): containerd stores it as the container's, and a later
    // checkpoint records it
    let mut doc = BundleSpec::parse(&spec.value)
        .map_err(|e| Error::Internal(format!("container {id} spec: {e}")))?;
    let next = next_generation(&doc);
    doc.set_annotation(GENERATION_ANNOTATION, &next.to_string())
        .map_err(|e| Error::Internal(format!("container {id} spec: {e}")))?;
    spec.value = doc.to_vec().map_err(Error::Internal)?;
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

fn next_generation(spec: &Spec) -> u64 {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(GENERATION_ANNOTATION))
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0)
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> BundleSpec {
        BundleSpec::parse(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn generations_count_up() {
        assert_eq!(next_generation(&spec(serde_json::json!({}))), 1);
        let s = spec(serde_json::json!({"annotations": {GENERATION_ANNOTATION: "41"}}));
        assert_eq!(next_generation(&s), 42);
        let s = spec(serde_json::json!({"annotations": {GENERATION_ANNOTATION: "x"}}));
        assert_eq!(next_generation(&s), 1);
    }

    #[test]
    fn the_generation_is_the_only_change_to_the_spec() {
        let text = include_str!("testdata/containerd-cri-config.json");
        let mut doc = BundleSpec::parse(text.as_bytes()).unwrap();
        for n in 1..=2 {
            let next = next_generation(&doc);
            assert_eq!(next, n);
            doc.set_annotation(GENERATION_ANNOTATION, &next.to_string())
                .unwrap();
            let bytes = doc.to_vec().unwrap();
            doc = BundleSpec::parse(&bytes).unwrap();
        }
        let mut expected: serde_json::Value = serde_json::from_str(text).unwrap();
        expected["annotations"][GENERATION_ANNOTATION] = "2".into();
        let written: serde_json::Value = serde_json::from_slice(&doc.to_vec().unwrap()).unwrap();
        assert_eq!(written, expected);
    }
}
