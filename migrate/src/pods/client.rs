//! The destination agent's requests to a source node's endpoint: one
//! authenticated connection per request (`Hello`, then `PodQuery` or `Pull`).

use std::time::Duration;

use mose_wire::{Message, Technique, PROTOCOL_VERSION};

use super::PullKey;
use crate::{
    error::{error_chain, MigrateError, Phase, Result},
    link::Link,
    sender::connect_to,
    tls::Identity,
};

/// What the source says of a pod.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodInfo {
    /// `A.B.C.D/len`.
    pub address: String,
    /// Container names, in creation order.
    pub containers: Vec<String>,
}

async fn ask(identity: &Identity, endpoint: &str, io: Duration, m: Message) -> Result<Message> {
    let c = connect_to(identity, endpoint, io).await?;
    let certified = c.node.clone();
    let mut link = Link::new(c.reader, c.writer, endpoint.to_string(), io);
    link.send(&Message::Hello {
        version: PROTOCOL_VERSION,
        node: identity.node.clone(),
    })
    .await?;
    match link.recv(io).await? {
        Message::HelloOk { node, .. } => {
            crate::peer::check_claim(&node, &certified)
                .map_err(|why| MigrateError::local(Phase::Handshake, why))?;
            link.peer = format!("{node} ({endpoint})");
        }
        other => return Err(unexpected(endpoint, "HelloOk", &other)),
    }
    link.send(&m).await?;
    link.recv(io).await
}

fn unexpected(endpoint: &str, wanted: &str, got: &Message) -> MigrateError {
    MigrateError::local(
        Phase::Handshake,
        format!("{endpoint} answered {} where {wanted} was due", got.name()),
    )
}

/// The running pod `namespace/pod` on the node at `endpoint`.
pub async fn query_pod(
    identity: &Identity,
    endpoint: &str,
    namespace: &str,
    pod: &str,
    io: Duration,
) -> Result<PodInfo> {
    let q = Message::PodQuery {
        namespace: namespace.into(),
        pod: pod.into(),
    };
    match ask(identity, endpoint, io, q).await? {
        Message::PodInfo {
            address,
            containers,
        } => Ok(PodInfo {
            address,
            containers,
        }),
        other => Err(unexpected(endpoint, "PodInfo", &other)),
    }
}

/// Asks the node at `endpoint` to migrate `key` to `reply_to` (this node's
/// endpoint); returns the source container's id once the migration began.
pub async fn request_pull(
    identity: &Identity,
    endpoint: &str,
    key: &PullKey,
    technique: Option<Technique>,
    reply_to: &str,
    io: Duration,
) -> Result<String> {
    let m = Message::Pull {
        namespace: key.namespace.clone(),
        pod: key.pod.clone(),
        container: key.container.clone(),
        technique,
        reply_to: reply_to.into(),
    };
    match ask(identity, endpoint, io, m).await {
        Ok(Message::PullOk { container }) => Ok(container),
        Ok(other) => Err(unexpected(endpoint, "PullOk", &other)),
        Err(e) => Err(MigrateError::local(
            Phase::Handshake,
            format!("{endpoint} refused to hand over {key}: {}", error_chain(&e)),
        )),
    }
}
