//! Before anything is frozen: refuse a container MOSE cannot migrate, connect
//! over mutual TLS, `Hello`/`HelloOk`, `Begin`/`BeginOk`.

use std::{collections::BTreeMap, collections::HashSet, time::Duration};

use mose_wire::{
    frame::{FrameReader, FrameWriter},
    ContainerIdentity, Message, PROTOCOL_VERSION,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{
    machine::{SenderEvent, SenderState},
    migration::{Migration, Reader, SourceLink, Writer},
    options::SourceOptions,
};
use crate::{
    containerd::{spec_of, Containerd},
    error::{InPhase, MigrateError, Phase, Result},
    link::Link,
    oci_runtime,
    result::Timeline,
    tls::{server_name, Identity},
};

/// A mutually authenticated stream to a node endpoint, and the node its
/// certificate was issued for (its `HelloOk` must name that node, see
/// [`crate::peer::check_claim`]).
pub struct Certified {
    pub reader: Reader,
    pub writer: Writer,
    pub node: String,
}

/// Opens a mutually authenticated stream to the node endpoint at `to`
/// (`HOST:PORT`). Errors: a bad address, a connection or TLS handshake
/// failure or timeout, or a certificate that names no node.
pub async fn connect_to(identity: &Identity, to: &str, io: Duration) -> Result<Certified> {
    let fail = |what: String| MigrateError::local(Phase::Handshake, what);
    let host = to
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| fail(format!("destination {to:?} is not HOST:PORT")))?;
    let cfg = identity
        .client_config()
        .in_phase(Phase::Handshake, "loading this node's TLS identity")?;
    let tcp = tokio::time::timeout(io, TcpStream::connect(to))
        .await
        .map_err(|_| fail(format!("connecting to {to} timed out after {io:?}")))?
        .in_phase(Phase::Handshake, &format!("connecting to destination {to}"))?;
    let _ = tcp.set_nodelay(true);
    let name = server_name(host).in_phase(Phase::Handshake, "naming the destination")?;
    let tls = tokio::time::timeout(io, TlsConnector::from(cfg).connect(name, tcp))
        .await
        .map_err(|_| fail(format!("TLS handshake with {to} timed out after {io:?}")))?
        .in_phase(
            Phase::Handshake,
            &format!("TLS handshake with {to} (same cluster CA?)"),
        )?;
    let node = crate::peer::certified_node(tls.get_ref().1.peer_certificates())
        .map_err(|why| fail(format!("destination {to}: {why}")))?;
    let (r, w) = tokio::io::split(tls);
    Ok(Certified {
        reader: FrameReader::new(r),
        writer: FrameWriter::new(w),
        node,
    })
}

/// Checks the container, connects and begins: the destination has accepted
/// the migration when this returns.
pub async fn start<'a>(opts: &'a SourceOptions, id: String, tl: Timeline) -> Result<Migration<'a>> {
    let p = tl.begin("prepare");
    let cd = Containerd::connect(&opts.socket, &opts.namespace)
        .await
        .in_phase(Phase::Handshake, "connecting to containerd")?;
    let container = cd
        .container(&opts.container)
        .await
        .in_phase(Phase::Handshake, "looking up the container")?;
    let pid = cd
        .task_pid(&opts.container)
        .await
        .in_phase(Phase::Handshake, "looking up the container's task")?;
    // refused before the destination is contacted or anything frozen
    let binary = oci_runtime::binary_of(&container, pid);
    let caps = oci_runtime::probe(&binary).await;
    oci_runtime::check_migratable(&caps, &binary, &opts.container)
        .in_phase(Phase::Handshake, "checking the container's OCI runtime")?;
    let spec = spec_of(&container).in_phase(Phase::Handshake, "reading the container's spec")?;
    let address =
        crate::network::identity_of(&spec).map_err(|e| MigrateError::local(Phase::Handshake, e))?;
    let (link, destination_node) = connect(opts).await?;
    let mut m = Migration {
        opts,
        work: opts.work_root.join(&id),
        work_lock: None,
        id,
        cd,
        container,
        link,
        state: SenderState::Connecting,
        tl,
        known: HashSet::new(),
        rounds: Vec::new(),
        freeze_at: 0.0,
        downtime_ms: 0.0,
        lazy: None,
        address,
        lazy_dump: None,
        page_server: None,
        page_server_connected: false,
        lazy_source: None,
        final_round_open: false,
        streamed_blocks: 0,
    };
    m.hello(&destination_node).await?;
    m.begin().await?;
    crate::ensure_tmpfs(&opts.work_root).in_phase(Phase::Handshake, "preparing the work root")?;
    super::workdir::sweep(&opts.work_root);
    m.work_lock = Some(
        super::workdir::lock(&opts.work_root, &m.id)
            .in_phase(Phase::Handshake, "locking the migration's work directory")?,
    );
    std::fs::create_dir_all(&m.work)
        .in_phase(Phase::Handshake, &format!("creating {}", m.work.display()))?;
    m.tl.end(p, None);
    Ok(m)
}

/// The link to the destination, and the node its certificate names.
async fn connect(opts: &SourceOptions) -> Result<(SourceLink, String)> {
    let mut c = connect_to(&opts.identity, &opts.to, opts.io_timeout).await?;
    c.writer.set_compression(opts.compress);
    c.writer
        .set_rate_limit(opts.bandwidth_cap_bps.map(|b| b / 8));
    let link = Link::new(c.reader, c.writer, opts.to.clone(), opts.io_timeout);
    Ok((link, c.node))
}

impl Migration<'_> {
    /// `Hello`/`HelloOk`; the destination must answer with the node name
    /// its certificate (`certified`) was issued for.
    async fn hello(&mut self, certified: &str) -> Result<()> {
        self.link
            .send(&Message::Hello {
                version: PROTOCOL_VERSION,
                node: self.opts.identity.node.clone(),
            })
            .await?;
        self.step(SenderEvent::SentHello)?;
        let answer = self.link.recv(self.opts.io_timeout).await?;
        self.step(SenderEvent::Received(&answer))?;
        if let Message::HelloOk { node, .. } = answer {
            crate::peer::check_claim(&node, certified)
                .map_err(|why| MigrateError::local(Phase::Handshake, why))?;
            self.link.peer = format!("{node} ({})", self.opts.to);
        }
        Ok(())
    }

    async fn begin(&mut self) -> Result<()> {
        let c = &self.container;
        let identity = ContainerIdentity {
            id: c.id.clone(),
            namespace: self.opts.namespace.clone(),
            image: c.image.clone(),
            spec: spec_of(c).in_phase(Phase::Handshake, "reading the container's spec")?,
            labels: c.labels.clone().into_iter().collect::<BTreeMap<_, _>>(),
            snapshotter: c.snapshotter.clone(),
            runtime: c
                .runtime
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_default(),
        };
        self.link
            .send(&Message::Begin {
                migration: self.id.clone(),
                technique: self.opts.technique,
                container: identity,
            })
            .await?;
        let answer = self.link.recv(self.opts.io_timeout).await?;
        self.step(SenderEvent::Received(&answer))
    }
}
