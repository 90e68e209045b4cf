//! Errors of the MOSE shim and their mapping onto containerd's error codes.
//!
//! containerd's clients (`ctr`, the CRI plugin) branch on the gRPC code
//! (`NotFound`, `FailedPrecondition`, ...), so every failure is classified here
//! once, and the message always says what failed and what to do about it.

use containerd_shim_protos::ttrpc;

/// A failure inside the shim, classified the way containerd's errdefs expect.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    /// The OCI runtime binary (runc, crun) failed; the message carries its own words.
    #[error("{0}")]
    Runtime(String),
    /// CRIU failed during checkpoint or restore; the message names the step and
    /// carries the tail of CRIU's log.
    #[error("{0}")]
    Criu(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    fn code(&self) -> ttrpc::Code {
        match self {
            Error::NotFound(_) => ttrpc::Code::NOT_FOUND,
            Error::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            Error::InvalidArgument(_) => ttrpc::Code::INVALID_ARGUMENT,
            Error::FailedPrecondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            Error::Unimplemented(_) => ttrpc::Code::UNIMPLEMENTED,
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                ttrpc::Code::NOT_FOUND
            }
            Error::Runtime(_) | Error::Criu(_) | Error::Io { .. } | Error::Internal(_) => {
                ttrpc::Code::UNKNOWN
            }
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

impl From<containerd_shim::Error> for Error {
    fn from(e: containerd_shim::Error) -> Self {
        Error::Internal(e.to_string())
    }
}

impl From<containerd_shim_protos::protobuf::Error> for Error {
    fn from(e: containerd_shim_protos::protobuf::Error) -> Self {
        Error::InvalidArgument(format!("malformed protobuf message: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_containerd_errdefs() {
        let not_found: ttrpc::Error = Error::NotFound("container x not found".into()).into();
        match not_found {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), ttrpc::Code::NOT_FOUND);
                assert_eq!(s.message(), "container x not found");
            }
            other => panic!("unexpected {other:?}"),
        }
        let io = Error::io("open fifo /x")(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(io.code(), ttrpc::Code::NOT_FOUND);
        assert!(io.to_string().starts_with("open fifo /x: "));
    }
}
