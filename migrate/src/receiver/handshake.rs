//! `Hello`/`HelloOk`, then `Begin` (a migration) or `Measure` (a link probe).
//! A migration of a container that already exists here is refused before
//! anything is received.

use mose_wire::{ContainerIdentity, Message, Technique, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{incoming::safe_name, machine::ReceiverEvent, session::Session};
use crate::pods::handoff::Target;
use crate::{
    containerd::Containerd,
    error::{error_chain, InPhase, MigrateError, Phase, ProtocolError, Result},
};

/// What the source asked for.
pub enum Started {
    /// A link probe of `bytes` filler bytes.
    Probe { bytes: u64 },
    /// A migration; `into` when it continues a pod's container the CRI
    /// created here.
    Migration {
        migration: String,
        container: Box<ContainerIdentity>,
        technique: Technique,
        containerd: Containerd,
        into: Option<Target>,
    },
    /// A pod hand-over request (see [`crate::pods`]), answered by the caller.
    Pod(Message),
}

/// Runs the handshake; on return the source knows whether to send the image.
pub async fn run<R, W>(s: &mut Session<'_, R, W>) -> Result<Started>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    s.link.phase = Phase::Handshake;
    let hello = s.link.recv(s.cfg.io_timeout).await?;
    if let Err(e) = s.step(ReceiverEvent::Message(&hello)) {
        if let MigrateError::Protocol {
            source: ProtocolError::Version { got, ours },
            ..
        } = &e
        {
            let why = format!("protocol {got} not supported (this node speaks {ours})");
            s.link.fail("hello", &why).await;
        }
        return Err(e);
    }
    if let Message::Hello { node, .. } = &hello {
        if let Some(certified) = &s.peer_node {
            if let Err(why) = crate::peer::check_claim(node, certified) {
                s.link.fail("hello", &why).await;
                return Err(MigrateError::local(Phase::Handshake, why));
            }
        }
        s.link.peer = format!("{node} ({})", s.link.peer);
    }
    s.link
        .send(&Message::HelloOk {
            version: PROTOCOL_VERSION,
            node: s.cfg.identity.node.clone(),
        })
        .await?;
    let begin = s.link.recv(s.cfg.io_timeout).await?;
    if let Err(e) = s.step(ReceiverEvent::Message(&begin)) {
        let step = match begin {
            Message::Measure { .. } => "measure",
            Message::PodQuery { .. } | Message::Pull { .. } => begin.name(),
            _ => "begin",
        };
        s.link.fail(step, &error_chain(&e)).await;
        return Err(e);
    }
    match begin {
        Message::Measure { bytes } => Ok(Started::Probe { bytes }),
        m @ (Message::PodQuery { .. } | Message::Pull { .. }) => Ok(Started::Pod(m)),
        Message::Begin {
            migration,
            technique,
            container,
        } => begin_migration(s, migration, container, technique).await,
        _ => Err(MigrateError::local(
            Phase::Handshake,
            "the machine let an unknown start through",
        )),
    }
}

/// Checks a `Begin` against this node and answers `BeginOk{has_image}`, or
/// `Failed` when the container cannot come here.
async fn begin_migration<R, W>(
    s: &mut Session<'_, R, W>,
    migration: String,
    container: ContainerIdentity,
    technique: Technique,
) -> Result<Started>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let migration = match safe_name(&migration) {
        Ok(m) => m.to_string(),
        Err(e) => {
            s.link.fail("begin", &e.to_string()).await;
            return Err(e);
        }
    };
    let cd = Containerd::connect(&s.cfg.containerd, &container.namespace)
        .await
        .in_phase(Phase::Handshake, "connecting to this node's containerd")?;
    let into = match crate::pods::pod_container_of(&container.spec) {
        Some(key) => match s.cfg.handoffs.take(&key) {
            Some(t) => Some(t),
            None => {
                let err = format!(
                    "{key} comes to this node only into a pod created here through the CRI \
                     with mose.io/migrate-from, and none waits for it"
                );
                s.link.fail("begin", &err).await;
                return Err(MigrateError::local(Phase::Handshake, err));
            }
        },
        // a pod's container runs the spec this node's CRI built, not the peer's
        None => {
            if let Err(err) = s.cfg.admission.check(&s.cfg.identity.node, &container) {
                s.link.fail("begin", &err).await;
                return Err(MigrateError::local(Phase::Handshake, err));
            }
            None
        }
    };
    if cd.container(&container.id).await.is_ok() {
        let err = format!("container {} already exists on this node", container.id);
        s.link.fail("begin", &err).await;
        return Err(MigrateError::local(Phase::Handshake, err));
    }
    if let Err(err) = address_free(&container) {
        s.link.fail("begin", &err).await;
        return Err(MigrateError::local(Phase::Handshake, err));
    }
    let work = s.cfg.work_root.join(&migration);
    if let Err(err) = claim_work_dir(&work, &migration) {
        s.link.fail("begin", &err).await;
        return Err(MigrateError::local(Phase::Handshake, err));
    }
    let has_image = cd.has_image(&container.image).await;
    if let Err(e) = s.link.send(&Message::BeginOk { has_image }).await {
        let _ = std::fs::remove_dir(&work);
        return Err(e);
    }
    Ok(Started::Migration {
        migration,
        container: Box::new(container),
        technique,
        containerd: cd,
        into,
    })
}

/// Creates the migration's work directory, refusing an id whose directory
/// exists: another migration of that id is being received here (its files
/// must not be mixed with or removed by this one's).
fn claim_work_dir(work: &std::path::Path, migration: &str) -> std::result::Result<(), String> {
    match std::fs::create_dir(work) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(format!(
            "migration {migration} is already being received on this node ({} exists); \
             start the migration again, it gets a new id",
            work.display()
        )),
        Err(e) => Err(format!("creating {}: {e}", work.display())),
    }
}

/// Refuses a container whose service address another container holds on
/// this node, or whose network this node has no usable CNI configuration
/// for (before anything is frozen at the source).
fn address_free(container: &ContainerIdentity) -> std::result::Result<(), String> {
    let Some(id) = crate::network::identity_of(&container.spec)? else {
        return Ok(());
    };
    let cfg = mose_network::NodeConfig::from_env();
    let refuse =
        |e: mose_network::NetworkError| format!("container {} cannot come here: {e}", container.id);
    mose_network::cni::load(&cfg, &id.network).map_err(refuse)?;
    mose_network::Attachment::check_free(&cfg, &id, "").map_err(refuse)
}

#[cfg(test)]
mod tests {
    use super::claim_work_dir;

    #[test]
    fn a_work_directory_in_use_is_refused_and_left_alone() {
        let root = tempfile::tempdir().expect("tempdir");
        let work = root.path().join("svc-1-00");
        assert!(claim_work_dir(&work, "svc-1-00").is_ok());
        std::fs::write(work.join("pages-1.img"), b"theirs").expect("write");
        let err = claim_work_dir(&work, "svc-1-00").expect_err("second claim");
        assert!(err.contains("already being received"), "{err}");
        assert_eq!(
            std::fs::read(work.join("pages-1.img")).expect("read"),
            b"theirs"
        );
    }
}
