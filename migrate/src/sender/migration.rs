//! One outgoing migration: the options, the container, the link to the
//! destination, the sender's state (advanced only through
//! [`Migration::step`]) and what is measured on the way. Each phase file of
//! [`super`] adds the methods of its phase.

use std::{collections::HashSet, path::PathBuf};

use containerd_client::services::v1::Container;
use mose_wire::BlockHash;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{
    machine::{SenderEvent, SenderState},
    options::{Progress, SourceOptions},
};
use crate::{
    containerd::Containerd,
    error::Result,
    link::Link,
    result::{LazyResult, Round, Timeline},
};

/// The reading half of a stream to a node endpoint.
pub type Reader = mose_wire::FrameReader<tokio::io::ReadHalf<TlsStream<TcpStream>>>;
/// The writing half of a stream to a node endpoint.
pub type Writer = mose_wire::FrameWriter<tokio::io::WriteHalf<TlsStream<TcpStream>>>;
/// A stream to a node endpoint.
pub type SourceLink =
    Link<tokio::io::ReadHalf<TlsStream<TcpStream>>, tokio::io::WriteHalf<TlsStream<TcpStream>>>;

pub struct Migration<'a> {
    pub opts: &'a SourceOptions,
    /// `<container>-<unix ms>`: names the migration on both nodes.
    pub id: String,
    pub cd: Containerd,
    pub container: Container,
    pub link: SourceLink,
    pub state: SenderState,
    pub tl: Timeline,
    /// This migration's tmpfs directory (CRIU images).
    pub work: PathBuf,
    /// Held while the migration runs (see [`super::workdir`]).
    pub work_lock: Option<super::workdir::WorkLock>,
    /// Every block hash the destination holds.
    pub known: HashSet<BlockHash>,
    pub rounds: Vec<Round>,
    /// When the container was paused (ms on the migration's clock).
    pub freeze_at: f64,
    pub downtime_ms: f64,
    pub lazy: Option<LazyResult>,
    /// The container's service address, which moves with it (its
    /// connections are then kept); `None`: connections are closed.
    pub address: Option<mose_contract::NetworkIdentity>,
    /// The port of CRIU's lazy page server while a lazy dump runs (it ends
    /// through [`Migration::end_lazy_dump`]).
    pub lazy_dump: Option<u16>,
    /// The session with CRIU's page server, until the lazy phase takes it.
    pub page_server: Option<crate::lazy::PageServerClient>,
    /// Whether that session was ever opened (else the shim ends a page
    /// server still waiting for it).
    pub page_server_connected: bool,
    /// Post-copy and hybrid: the lazy pages' source used, and why it is not
    /// the lazy dump when it is not.
    pub lazy_source: Option<(&'static str, Option<String>)>,
    /// The final round's `RoundStart` went out (cold opens it before its
    /// dump, to stream the dump as CRIU writes it).
    pub final_round_open: bool,
    /// Cold: page blocks the final round sent while the dump still ran.
    pub streamed_blocks: u64,
}

impl Migration<'_> {
    /// Advances the state machine; what it does not allow is a protocol
    /// error naming the phase and the destination.
    pub fn step(&mut self, event: SenderEvent<'_>) -> Result<()> {
        self.state = self
            .state
            .step(self.opts.technique, event)
            .map_err(|e| self.link.protocol(e))?;
        Ok(())
    }

    /// Whether established TCP connections are dumped to be restored open:
    /// the address moves too and the caller did not ask to close them.
    pub fn keeps_connections(&self) -> bool {
        self.moves_address() && !self.opts.close_connections
    }

    /// Whether the container's address moves with it: its service address,
    /// or the pod IP of a Kubernetes pod's container.
    pub fn moves_address(&self) -> bool {
        self.address.is_some() || self.opts.cri_pod
    }

    /// Reports progress to the caller's callback, if any.
    pub fn report(&self, phase: &str, round: u32) {
        if let Some(p) = &self.opts.progress {
            p(&Progress {
                phase: phase.into(),
                round,
                bytes: self.link.w.bytes(),
            });
        }
    }
}
