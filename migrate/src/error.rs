//! The engine's typed errors: which phase failed, with which peer, and why,
//! keeping the `source()` chain of wire, I/O and containerd errors.

use std::time::Duration;

use mose_wire::WireError;

/// Any error of a boxed lower layer (containerd, CRIU through the shim, the
/// file system), kept as the `source()` of a [`MigrateError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The phases of a migration, as `docs/migration.md` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connection, TLS, `Hello`/`Begin` (and a link probe's `Measure`).
    Handshake,
    /// The container image, when the destination lacks it.
    Image,
    /// Live pre-copy rounds and the layout hint.
    Rounds,
    /// Pausing the container and CRIU's dump.
    FreezeDump,
    /// The final transfer: remaining blocks, CRIU files, manifests, rootfs.
    Transfer,
    /// Assembling the image and restoring the container.
    Restore,
    /// Post-copy and hybrid: the lazy pages after the restore.
    Lazy,
    /// The two-phase hand-over (`Released`/`Ack`) and removing the source.
    Release,
    /// A link probe (`Measure`).
    Probe,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Handshake => "handshake",
            Phase::Image => "image transfer",
            Phase::Rounds => "pre-copy rounds",
            Phase::FreezeDump => "freeze+dump",
            Phase::Transfer => "final transfer",
            Phase::Restore => "restore",
            Phase::Lazy => "lazy phase",
            Phase::Release => "release",
            Phase::Probe => "link probe",
        })
    }
}

/// A message or frame the protocol does not allow where it arrived, or data
/// that contradicts what was announced. Raised by the two state machines
/// (the sender's and the receiver's `machine.rs`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("unexpected {got} while {state}")]
    Unexpected { state: &'static str, got: String },
    #[error("the peer speaks protocol {got}, this node speaks {ours}: upgrade the older node")]
    Version { got: u32, ours: u32 },
    #[error("a link probe must be 1 to {max} bytes, not {bytes}")]
    ProbeSize { bytes: u64, max: u64 },
    #[error("file data outside a file")]
    DataOutsideFile,
    #[error("FileBegin {name:?} while {open:?} is still open")]
    FileInsideFile { open: String, name: String },
    #[error("file {name:?} is longer than its announced {size} bytes")]
    FileTooLong { name: String, size: u64 },
    #[error("FileEnd {got:?} closes {open:?}")]
    FileEndMismatch { open: String, got: String },
    #[error("file {name:?} ended after {written} of its {size} bytes (truncated)")]
    FileTruncated {
        name: String,
        written: u64,
        size: u64,
    },
    #[error("Commit while file {name:?} is still open")]
    CommitInsideFile { name: String },
    #[error("the source let go before every page was in place")]
    ReleasedEarly,
    #[error("the source aborted: {reason}")]
    Aborted { reason: String },
}

/// Why a migration (or one side's part of it) failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The peer broke the protocol.
    #[error("{phase}: {peer}: {source}")]
    Protocol {
        phase: Phase,
        peer: String,
        #[source]
        source: ProtocolError,
    },
    /// The peer reported its own failure (`Failed{step,error}`).
    #[error("{phase}: {peer} failed at {step}: {error}")]
    PeerFailed {
        phase: Phase,
        peer: String,
        step: String,
        error: String,
    },
    /// A wait on the network outlived its bound.
    #[error("{phase}: {peer} did not {what} within {after:?} (link down or peer stuck?)")]
    Timeout {
        phase: Phase,
        peer: String,
        what: String,
        after: Duration,
    },
    /// The stream broke: closed, truncated, corrupt, or an I/O error.
    #[error("{phase}: stream with {peer} ({what})")]
    Wire {
        phase: Phase,
        peer: String,
        what: String,
        #[source]
        source: WireError,
    },
    /// A local step failed: containerd, the shim/CRIU, the file system.
    #[error("{phase}: {what}")]
    Local {
        phase: Phase,
        what: String,
        #[source]
        source: BoxError,
    },
    /// A test asked for this failure ([`crate::sender::Fault`]).
    #[error("{phase}: injected fault: {what}")]
    Injected { phase: Phase, what: &'static str },
}

impl MigrateError {
    /// The phase the error happened in.
    pub fn phase(&self) -> Phase {
        match self {
            MigrateError::Protocol { phase, .. }
            | MigrateError::PeerFailed { phase, .. }
            | MigrateError::Timeout { phase, .. }
            | MigrateError::Wire { phase, .. }
            | MigrateError::Local { phase, .. }
            | MigrateError::Injected { phase, .. } => *phase,
        }
    }

    /// A local failure with a plain message (no lower error).
    pub fn local(phase: Phase, what: impl Into<String>) -> Self {
        MigrateError::Local {
            phase,
            what: what.into(),
            source: "failed".into(),
        }
    }
}

/// Attaches a phase and a description to a lower layer's error.
pub trait InPhase<T> {
    /// `what` says what was being done ("pausing the container").
    fn in_phase(self, phase: Phase, what: &str) -> Result<T, MigrateError>;
}

impl<T, E: Into<BoxError>> InPhase<T> for Result<T, E> {
    fn in_phase(self, phase: Phase, what: &str) -> Result<T, MigrateError> {
        self.map_err(|e| MigrateError::Local {
            phase,
            what: what.to_string(),
            source: e.into(),
        })
    }
}

/// An error with its `source()` chain, for logs and records.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A result of the engine.
pub type Result<T, E = MigrateError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn errors_name_phase_and_peer_and_keep_their_source() {
        let e = MigrateError::Wire {
            phase: Phase::Transfer,
            peer: "node-b".into(),
            what: "sending blocks".into(),
            source: WireError::Truncated("frame header"),
        };
        assert!(e
            .to_string()
            .starts_with("final transfer: stream with node-b"));
        assert!(e.source().is_some());
        let io: Result<(), std::io::Error> = Err(std::io::Error::other("disk full"));
        let e = io
            .in_phase(Phase::FreezeDump, "writing the image")
            .unwrap_err();
        assert_eq!(e.phase(), Phase::FreezeDump);
        assert_eq!(
            e.source().map(|s| s.to_string()).as_deref(),
            Some("disk full")
        );
    }
}
