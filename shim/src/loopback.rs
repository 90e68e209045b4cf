//! Loopback in a restored container's fresh network namespace.
//!
//! runc creates a container's new network namespace and brings its loopback
//! up at create (its "loopback" network). At restore it creates the namespace
//! too, CRIU restores into it as an empty namespace, and nobody brings the
//! loopback up: a server on 127.0.0.1 inside is unreachable ("Network is
//! unreachable"). The shim brings it up right after the restore; the kernel
//! then configures 127.0.0.1/8 and ::1 itself. youki (0.7) leaves it down
//! at create too, so the shim also brings it up after every create (a no-op
//! when the runtime did).

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Error, Result};

/// Sets `lo` up in the network namespace of process `pid`, on a thread of
/// its own that enters the namespace and ends there (`mose_network`'s
/// `netns::run_in`), so no thread of the shim ever serves from another
/// namespace.
pub fn bring_up(pid: i32) -> Result<()> {
    let ns = std::path::PathBuf::from(format!("/proc/{pid}/ns/net"));
    mose_network::netns::run_in(&ns, || mose_network::link::set_up("lo", true)).map_err(|e| {
        Error::Internal(format!(
            "bringing up the loopback of pid {pid}'s network namespace: {e}"
        ))
    })
}

/// True when the spec asks for a network namespace of the container's own
/// (no path): the one runc creates, whose loopback needs bringing up after a
/// restore. A namespace given by path (CNI, CRI, a migration's prepared
/// namespace) is its owner's to configure.
pub fn has_own_netns(spec: &Spec) -> bool {
    crate::oci::creates_namespace(spec, LinuxNamespaceType::Network)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_netns_only_without_a_path() {
        let spec = |v: serde_json::Value| -> Spec { serde_json::from_value(v).unwrap() };
        let own = spec(serde_json::json!({"linux": {"namespaces": [{"type": "network"}]}}));
        assert!(has_own_netns(&own));
        let given = spec(serde_json::json!({"linux": {"namespaces": [
            {"type": "network", "path": "/run/netns/x"}]}}));
        assert!(!has_own_netns(&given));
        let host = spec(serde_json::json!({"linux": {"namespaces": [{"type": "pid"}]}}));
        assert!(!has_own_netns(&host));
    }
}
