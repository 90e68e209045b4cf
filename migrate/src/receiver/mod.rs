//! The receiver (destination) side: authenticates the source, receives a
//! migration into tmpfs, recreates the container in the local containerd and
//! restores it through the MOSE shim. Partial state is removed on any
//! failure; a restored container is kept only once the source has released
//! its copy.
//!
//! One file per phase, driven by the state machine in [`machine`]:
//! [`handshake`] (and [`probe`] for a link probe) → [`transfer`] into
//! [`incoming`] → [`assemble`] → [`restore`] → [`commit`] (cold, pre-copy) or
//! [`lazy`] (post-copy, hybrid).

pub mod assemble;
pub mod commit;
pub mod config;
pub mod handshake;
pub mod incoming;
pub mod lazy;
pub mod machine;
pub mod pod_request;
pub mod probe;
pub mod restore;
pub mod session;
pub mod transfer;

use std::{net::SocketAddr, sync::Arc, time::Instant};

use mose_wire::{
    frame::{FrameReader, FrameWriter},
    ContainerIdentity, Technique,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
};
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

pub use config::EndpointConfig;

use crate::{
    containerd::Containerd,
    error::{error_chain, InPhase, MigrateError, Phase, Result},
    link::Link,
    record::{record_incoming, IncomingRecord},
};
use handshake::Started;
use restore::RestoreTarget;
use session::Session;

/// Serves migrations until the process ends. Each accepted connection is
/// handshaken with the server configuration `tls` holds at its accept, so
/// a [`crate::tls::ReloadableServerConfig::reload`] (the agent's SIGHUP)
/// changes the certificate of later connections only; migrations in flight
/// keep theirs.
///
/// Errors: the work directory (a tmpfs is mounted on it when it is not one)
/// or the listening address.
pub async fn serve(
    cfg: EndpointConfig,
    tls: Arc<crate::tls::ReloadableServerConfig>,
) -> Result<()> {
    prepare_work_root(&cfg)?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .in_phase(Phase::Handshake, &format!("listening on {}", cfg.listen))?;
    info!(listen = %cfg.listen, node = %cfg.identity.node, "MOSE migration endpoint ready");
    let cfg = Arc::new(cfg);
    loop {
        let (tcp, peer) = listener
            .accept()
            .await
            .in_phase(Phase::Handshake, "accepting a connection")?;
        let _ = tcp.set_nodelay(true);
        let (tls, cfg) = (TlsAcceptor::from(tls.current()), cfg.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(cfg.io_timeout, tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return warn!(%peer, error = %e, "peer rejected during TLS handshake"),
                Err(_) => return warn!(%peer, "TLS handshake timed out"),
            };
            let node = match crate::peer::certified_node(stream.get_ref().1.peer_certificates()) {
                Ok(node) => node,
                Err(why) => {
                    return warn!(%peer, error = %why, "peer refused after the TLS handshake")
                }
            };
            let (r, w) = tokio::io::split(stream);
            let (r, w) = (FrameReader::new(r), FrameWriter::new(w));
            if let Err(e) = handle(&cfg, r, w, peer, node).await {
                error!(%peer, error = %error_chain(&e), "incoming migration failed");
            }
        });
    }
}

/// The work root is a tmpfs (received images live in memory, never on disk);
/// whatever an earlier, killed endpoint left half-received is garbage now.
fn prepare_work_root(cfg: &EndpointConfig) -> Result<()> {
    crate::ensure_tmpfs(&cfg.work_root).in_phase(Phase::Handshake, "preparing the work root")?;
    std::fs::create_dir_all(&cfg.state_dir).in_phase(
        Phase::Handshake,
        &format!("creating {}", cfg.state_dir.display()),
    )?;
    if let Ok(rd) = std::fs::read_dir(&cfg.work_root) {
        for e in rd
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with(".mose-"))
        {
            warn!(path = %e.path().display(), "removing a stale incoming migration");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(())
}

/// One connection: a handshake, then a link probe or a migration, recorded.
/// `peer_node` is the node the peer's certificate was issued for.
async fn handle<R, W>(
    cfg: &EndpointConfig,
    r: FrameReader<R>,
    w: FrameWriter<W>,
    peer: SocketAddr,
    peer_node: String,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let link = Link::new(r, w, peer.to_string(), cfg.io_timeout);
    let mut s = Session::new(cfg, link);
    s.peer_ip = Some(peer.ip());
    s.peer_node = Some(peer_node);
    let (migration, container, technique, cd, into) = match handshake::run(&mut s).await? {
        Started::Probe { bytes } => return probe::answer(&mut s, bytes).await,
        Started::Pod(request) => return pod_request::answer(&mut s, request).await,
        Started::Migration {
            migration,
            container,
            technique,
            containerd,
            into,
        } => (migration, container, technique, containerd, into),
    };
    info!(%peer, source = %s.link.peer, %migration, container = %container.id, %technique, "incoming migration");
    let started = Instant::now();
    let target = RestoreTarget::of(into);
    let res = receive(&mut s, &cd, &migration, &container, technique, target).await;
    let _ = std::fs::remove_dir_all(cfg.work_root.join(&migration));
    release_freed_memory();
    let record = IncomingRecord {
        migration: &migration,
        container: &container.id,
        namespace: &container.namespace,
        peer: &s.link.peer,
        technique: technique.as_str(),
        status: if res.is_ok() { "ok" } else { "failed" },
        error: res.as_ref().err().map(|e| error_chain(e)),
        step: res.as_ref().err().map(|e| e.phase().to_string()),
        took: started.elapsed(),
    };
    if let Some(observe) = &cfg.on_incoming {
        observe(&record);
    }
    record_incoming(&cfg.state_dir, record);
    res
}

/// Gives the memory a finished migration freed (its block store: one 4 KiB
/// block per page that crossed) back to the system. glibc keeps freed chunks
/// in the arena of the thread that allocated them, so without this the
/// agent's resident size grows by a migration's blocks for every arena that
/// ever received one (measured by the soak test: +25 to +34 MiB per hybrid
/// of 32 MiB until all arenas held one).
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks glibc's own heap structures under their
    // locks and returns whole free pages; no live allocation is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Receives, restores and hands over one migration.
async fn receive<R, W>(
    s: &mut Session<'_, R, W>,
    cd: &Containerd,
    migration: &str,
    container: &ContainerIdentity,
    technique: Technique,
    target: RestoreTarget,
) -> Result<(), MigrateError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut inc = incoming::Incoming::create(s.cfg.work_root.join(migration))?;
    transfer::run(s, container, &mut inc).await?;
    if s.state.is_lazy() {
        lazy::run(s, cd, container, &mut inc, migration, technique, target).await
    } else {
        commit::run(s, cd, container, &mut inc, target).await
    }
}
