//! The network identity's errors: each names the container's address or the
//! file, interface or plugin involved, and what to do.

use std::path::PathBuf;

/// What went wrong attaching, holding, announcing or releasing a
/// container's service address.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "CNI network {network:?}: no {path} (create it, or set MOSE_CNI_CONF_DIR to the directory \
         holding <network>.conflist)"
    )]
    NoNetworkConfig { network: String, path: PathBuf },
    #[error("CNI network configuration {path}: {message}")]
    BadNetworkConfig { path: PathBuf, message: String },
    #[error("CNI plugin {plugin:?} not found in {search_path} (install containernetworking-plugins, or set MOSE_CNI_PATH)")]
    NoPlugin { plugin: String, search_path: String },
    #[error("CNI plugin {plugin} {command} failed: {message}")]
    Plugin {
        plugin: String,
        command: &'static str,
        message: String,
    },
    #[error(
        "address {address} on network {network:?} is already held on this node by the container \
         with bundle {owner} (network namespace {netns}): each service address has one owner; \
         choose another address or remove that container"
    )]
    AddressTaken {
        network: String,
        address: String,
        owner: String,
        netns: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, NetworkError>;

/// Maps an I/O error to [`NetworkError::Io`] saying what was being done.
pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Io { what, source }
}

/// Maps a nix error to [`NetworkError::Io`] saying what was being done.
pub fn errno(what: impl Into<String>) -> impl FnOnce(nix::Error) -> NetworkError {
    let what = what.into();
    move |e| NetworkError::Io {
        what,
        source: std::io::Error::from(e),
    }
}
