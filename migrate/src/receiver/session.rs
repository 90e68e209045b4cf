//! One incoming connection: the configuration, the link to the source and
//! the receiver's state, advanced only through [`Session::step`].

use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    config::EndpointConfig,
    machine::{ReceiverEvent, ReceiverState},
};
use crate::{error::Result, link::Link};

pub struct Session<'a, R, W> {
    pub cfg: &'a EndpointConfig,
    pub link: Link<R, W>,
    pub state: ReceiverState,
    /// The peer's IP address, as the connection came from.
    pub peer_ip: Option<std::net::IpAddr>,
    /// The node the peer's certificate was issued for ([`crate::peer`]);
    /// its `Hello` must claim this name. `serve` always sets it (a peer
    /// whose certificate names no node is refused before a session
    /// exists); only sessions over in-memory streams in unit tests lack it.
    pub peer_node: Option<String>,
}

impl<'a, R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Session<'a, R, W> {
    pub fn new(cfg: &'a EndpointConfig, link: Link<R, W>) -> Self {
        Session {
            cfg,
            link,
            state: ReceiverState::AwaitHello,
            peer_ip: None,
            peer_node: None,
        }
    }

    /// Advances the state machine; an event it does not allow is a protocol
    /// error naming the phase and the source.
    pub fn step(&mut self, event: ReceiverEvent<'_>) -> Result<()> {
        let next = self
            .state
            .clone()
            .step(event)
            .map_err(|e| self.link.protocol(e))?;
        self.state = next;
        Ok(())
    }
}
