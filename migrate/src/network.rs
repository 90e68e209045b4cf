//! The container's service address as the engine sees it: read from the
//! spec's `mose.io/network` and `mose.io/address` annotations. When it is
//! there, the address moves with the container and so do its established
//! TCP connections (the shim holds the link down around the dump and
//! brings it up, announced, where the container runs next; see
//! `mose_network`); without it, connections are dumped closed.

use mose_contract::NetworkIdentity;

/// The identity the spec's annotations give; a malformed one is an error
/// naming the annotation.
pub fn identity_of(spec: &serde_json::Value) -> Result<Option<NetworkIdentity>, String> {
    let Some(a) = spec.get("annotations").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    NetworkIdentity::from_annotations(
        a.iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k.as_str(), v))),
    )
    .map_err(|e| format!("the container's service address: {e}"))
}

/// What became of the container's established TCP connections: `kept`
/// (TCP repair, the address moved too), `closed` (CRIU `tcp-close`), or
/// `untouched` when the migration did not complete (the source keeps them).
pub fn connections(completed: bool, kept: bool) -> &'static str {
    if !completed {
        "untouched"
    } else if kept {
        "kept"
    } else {
        "closed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identity_comes_from_the_annotations() {
        assert_eq!(identity_of(&json!({})).unwrap(), None);
        let id = identity_of(&json!({"annotations": {
            "mose.io/network": "svc", "mose.io/address": "10.89.0.7/24"}}))
        .unwrap()
        .unwrap();
        assert_eq!(id.to_string(), "10.89.0.7/24 on network svc");
        assert_eq!(connections(true, true), "kept");
        assert_eq!(connections(true, false), "closed");
        assert_eq!(connections(false, true), "untouched");
        let e = identity_of(&json!({"annotations": {"mose.io/address": "10.89.0.7"}})).unwrap_err();
        assert!(e.contains("mose.io/network"), "{e}");
    }
}
