//! The source's answer to a pod hand-over request (`PodQuery` or `Pull`, see
//! [`crate::pods`]): one answer per connection, `Failed` with the reason when
//! the pod or container cannot be handed over.

use mose_wire::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};

use super::session::Session;
use crate::{
    containerd::Containerd,
    error::{MigrateError, Phase, Result},
    pods::{self, source::SourcePod, PullKey},
};

/// Answers `request` on the session's link.
pub async fn answer<R, W>(s: &mut Session<'_, R, W>, request: Message) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let step = request.name();
    match respond(s, request).await {
        Ok(m) => s.link.send(&m).await,
        Err(why) => {
            warn!(peer = %s.link.peer, request = step, error = %why, "pod hand-over refused");
            s.link.fail(step, &why).await;
            Err(MigrateError::local(Phase::Handshake, why))
        }
    }
}

async fn respond<R, W>(
    s: &mut Session<'_, R, W>,
    request: Message,
) -> std::result::Result<Message, String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match request {
        Message::PodQuery { namespace, pod } => {
            let cd = Containerd::connect(&s.cfg.containerd, pods::CRI_NAMESPACE)
                .await
                .map_err(|e| format!("connecting to this node's containerd: {e}"))?;
            let p = SourcePod::find(&cd, &namespace, &pod).await?;
            let address = p.address().await?;
            info!(peer = %s.link.peer, pod = %format!("{namespace}/{pod}"), %address, "pod described for its hand-over");
            Ok(Message::PodInfo {
                address,
                containers: p.names(),
            })
        }
        Message::Pull {
            namespace,
            pod,
            container,
            technique,
            reply_to,
        } => {
            let key = PullKey {
                namespace,
                pod,
                container,
            };
            let peer = s.peer_ip;
            let container = pods::source::pull(s.cfg, key, technique, reply_to, peer).await?;
            Ok(Message::PullOk { container })
        }
        other => Err(format!("{} is not a pod hand-over request", other.name())),
    }
}
