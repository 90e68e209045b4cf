//! Where a node keeps its CNI network configurations, its CNI plugins and
//! its attachment records, from the environment (the shim inherits
//! containerd's; the node agent has its own) with Debian's defaults.

use std::path::PathBuf;

/// Directory of `<network>.conflist` files.
pub const CONF_DIR_ENV: &str = "MOSE_CNI_CONF_DIR";
/// Default of [`CONF_DIR_ENV`].
pub const DEFAULT_CONF_DIR: &str = "/etc/mose/cni";
/// Colon-separated directories holding CNI plugin binaries (`CNI_PATH`).
pub const CNI_PATH_ENV: &str = "MOSE_CNI_PATH";
/// Default of [`CNI_PATH_ENV`]: Debian's `containernetworking-plugins`,
/// then the upstream location.
pub const DEFAULT_CNI_PATH: &str = "/usr/lib/cni:/opt/cni/bin";
/// The node's attachment records and the containers' network namespaces.
pub const STATE_DIR_ENV: &str = "MOSE_NETWORK_STATE_DIR";
/// Default of [`STATE_DIR_ENV`] (tmpfs: nothing outlives a reboot).
pub const DEFAULT_STATE_DIR: &str = "/run/mose/network";

/// A node's network settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub conf_dir: PathBuf,
    pub cni_path: String,
    pub state_dir: PathBuf,
}

impl NodeConfig {
    /// From [`CONF_DIR_ENV`], [`CNI_PATH_ENV`] and [`STATE_DIR_ENV`], each
    /// defaulted when unset or empty.
    pub fn from_env() -> Self {
        let var = |k: &str, d: &str| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| d.to_string())
        };
        NodeConfig {
            conf_dir: var(CONF_DIR_ENV, DEFAULT_CONF_DIR).into(),
            cni_path: var(CNI_PATH_ENV, DEFAULT_CNI_PATH),
            state_dir: var(STATE_DIR_ENV, DEFAULT_STATE_DIR).into(),
        }
    }

    /// The settings as environment entries (`KEY=value`), for processes that
    /// do not inherit the shim's environment (OCI hooks).
    pub fn env(&self) -> Vec<String> {
        vec![
            format!("{CONF_DIR_ENV}={}", self.conf_dir.display()),
            format!("{CNI_PATH_ENV}={}", self.cni_path),
            format!("{STATE_DIR_ENV}={}", self.state_dir.display()),
        ]
    }
}
