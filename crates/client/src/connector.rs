//! Opening a connection and a session: the first time, and after every loss.
//!
//! A [`Connector`] holds what every attempt needs (the local endpoint, the broker's address,
//! the names) and runs one attempt under the connect timeout: it resolves the address again
//! each time, so a broker that came back elsewhere is found.

use std::time::Duration;

use cassini_protocol::{ResumePosition, SessionId};
use tokio::time::timeout;

use crate::builder::BrokerAddress;
use crate::error::ClientError;
use crate::handshake::{handshake, Established};

/// Everything needed to connect to the broker again.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    /// The local QUIC endpoint every connection of the client uses.
    pub(crate) endpoint: quinn::Endpoint,
    /// Where the broker listens.
    pub(crate) address: BrokerAddress,
    /// The name the broker's certificate must carry.
    pub(crate) server_name: String,
    /// Sent in `Hello` for the broker's logs.
    pub(crate) client_name: Option<String>,
    /// Bound on one attempt, from resolving the address to `Welcome`.
    pub(crate) connect_timeout: Duration,
}

impl Connector {
    /// One attempt: connects and exchanges `Hello` (resuming `resume` if set, where the
    /// client stands at `positions`) and `Welcome`.
    pub(crate) async fn connect(
        &self,
        resume: Option<SessionId>,
        positions: Vec<ResumePosition>,
    ) -> Result<Established, ClientError> {
        let attempt = async {
            let remote = self.address.resolve().await?;
            handshake(
                &self.endpoint,
                remote,
                &self.server_name,
                self.client_name.clone(),
                resume,
                positions,
            )
            .await
        };
        timeout(self.connect_timeout, attempt)
            .await
            .map_err(|_| ClientError::Timeout("connecting to the broker"))?
    }
}
