//! Opening a connection and a session: the first time, and after every loss.
//!
//! A [`Connector`] holds what every attempt needs (the local endpoint, the broker's address,
//! the names) and runs one attempt under the connect timeout: it resolves the address again
//! each time, so a broker that came back elsewhere is found, and tries each of its addresses
//! in turn. QUIC's unconnected socket never hears the ICMP "port unreachable" that says
//! nothing listens at an address, so beside each handshake a small probe on a connected UDP
//! socket listens for it ([`port_unreachable`]): such an address fails at once, naming it,
//! instead of after the whole connect timeout.

use std::net::SocketAddr;
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
    /// The session's name, sent in every `Hello`: the broker resumes the session of that name
    /// (or creates it), whatever `resume` says.
    pub(crate) session_name: Option<String>,
    /// Bound on one attempt, from resolving the address to `Welcome`.
    pub(crate) connect_timeout: Duration,
}

impl Connector {
    /// One attempt: connects and exchanges `Hello` (resuming `resume` if set, where the
    /// client stands at `positions`) and `Welcome`, trying each of the broker's addresses in
    /// turn until one answers.
    ///
    /// With `fail_fast` (the first connection, where a person or script waits for the answer)
    /// an address where nothing listens fails at once. Reconnects do not probe: there a
    /// handshake that waits for a restarting broker connects as soon as it listens, while a
    /// failed attempt would wait out the growing backoff first.
    pub(crate) async fn connect(
        &self,
        resume: Option<SessionId>,
        positions: Vec<ResumePosition>,
        fail_fast: bool,
    ) -> Result<Established, ClientError> {
        let attempt = async {
            let remotes = self.address.resolve_all().await?;
            // Each address gets an equal share of the attempt, so one that never answers
            // leaves time for the next (a single address gets it all).
            let count = u32::try_from(remotes.len()).unwrap_or(u32::MAX).max(1);
            let share = self.connect_timeout / count;
            let mut failed = Vec::new();
            let mut last_error = None;
            for remote in remotes {
                let handshake = timeout(
                    share,
                    handshake(
                        &self.endpoint,
                        remote,
                        &self.server_name,
                        self.client_name.clone(),
                        self.session_name.clone(),
                        resume,
                        positions.clone(),
                    ),
                );
                let outcome = tokio::select! {
                    () = port_unreachable(remote), if fail_fast => {
                        failed.push(format!("nothing listens on {remote} (the port is unreachable)"));
                        continue;
                    }
                    outcome = handshake => outcome,
                };
                match outcome {
                    Ok(Ok(established)) => return Ok(established),
                    // Refusals (certificates, versions, sessions) say the same on every address.
                    Ok(Err(error)) if !matches!(error, ClientError::Connect { .. }) => {
                        return Err(error)
                    }
                    Ok(Err(error)) => {
                        failed.push(format!("{remote}: {error}"));
                        last_error = Some(error);
                    }
                    Err(_) => failed.push(format!("no answer from {remote} within {share:?}")),
                }
            }
            match (failed.len(), last_error) {
                (1, Some(error)) => Err(error),
                _ => Err(ClientError::Connect {
                    reason: failed.join("; "),
                }),
            }
        };
        timeout(self.connect_timeout, attempt)
            .await
            .map_err(|_| no_answer(&self.address.to_string(), self.connect_timeout))?
    }
}

/// The error of a connect attempt that heard nothing from `address` within `limit`.
pub(crate) fn no_answer(address: &str, limit: Duration) -> ClientError {
    ClientError::Connect {
        reason: format!("no answer from {address} within {limit:?}"),
    }
}

/// Probes sent to an address while its handshake runs, and the time between them (ICMP
/// replies are rate-limited, so one lost or suppressed reply must not decide).
const PROBES: u32 = 5;
const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// Completes only when the operating system reports that nothing listens on `remote` (ICMP
/// port unreachable, seen as `ECONNREFUSED` on a connected UDP socket); otherwise never. The
/// probes are single zero bytes, which a QUIC endpoint that does listen drops as too short to
/// be a packet.
async fn port_unreachable(remote: SocketAddr) {
    let local: SocketAddr = if remote.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let refused = |result: std::io::Result<usize>| matches!(result, Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused);
    if let Ok(socket) = tokio::net::UdpSocket::bind(local).await {
        if socket.connect(remote).await.is_ok() {
            let mut reply = [0u8; 1];
            for _ in 0..PROBES {
                if refused(socket.send(&[0]).await) {
                    return;
                }
                if let Ok(result) = timeout(PROBE_INTERVAL, socket.recv(&mut reply)).await {
                    if refused(result) {
                        return;
                    }
                }
            }
        }
    }
    std::future::pending::<()>().await
}
