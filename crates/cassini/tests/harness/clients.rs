//! Clients of a [`super::Broker`] that present the certificates `cassini certs init` wrote to a
//! directory (`ca.crt`, `client-NAME.crt`, `client-NAME.key`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use cassini_client::{Client, ClientBuilder, ReconnectPolicy};
use cassini_quic::tls;

use super::DEADLINE;

/// A raw quinn connection to the broker at `addr` as `name`, for clients that misbehave on
/// purpose; an error when a certificate cannot be read or the handshake fails.
pub(crate) async fn raw_client(
    addr: &str,
    dir: &Path,
    name: &str,
) -> Result<(quinn::Endpoint, quinn::Connection), Box<dyn std::error::Error>> {
    let ca = tls::load_certs(&dir.join("ca.crt"))?;
    let chain = tls::load_certs(&dir.join(format!("client-{name}.crt")))?;
    let key = tls::load_key(&dir.join(format!("client-{name}.key")))?;
    cassini_e2e::raw_connect(addr.parse()?, ca, chain, key).await
}

/// A connected client of the broker at `addr`, named `name`.
pub(crate) async fn client(addr: &str, dir: &Path, name: &str) -> Client {
    Client::builder(addr)
        .cert_dir(dir, name)
        .server_name("localhost")
        .connect()
        .await
        .expect("client connects")
}

/// `builder` made to notice a lost broker within a second
/// ([`cassini_e2e::edge::quick_quic`]) and to try again at once (backoff 50 ms to 500 ms), for
/// the suites that kill or restart brokers under their clients.
pub(crate) fn quick_reconnect(builder: ClientBuilder) -> ClientBuilder {
    builder
        .quic_options(cassini_e2e::edge::quick_quic())
        .reconnect(ReconnectPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            ..ReconnectPolicy::default()
        })
}

/// A client of the broker at `addr` presenting `dir`'s `dev` certificate, attached to the
/// session named `session` ([`ClientBuilder::session_name`]); not connected yet.
pub(crate) fn named(addr: SocketAddr, dir: &Path, session: &str) -> ClientBuilder {
    Client::builder(addr)
        .cert_dir(dir, "dev")
        .server_name("localhost")
        .session_name(session)
}

/// Connects the client `builder` makes, again every 200 ms while it is refused, for at most
/// [`DEADLINE`]: on a cluster with `cluster.members` a named session's claim is refused
/// (`NO_QUORUM`) until the Raft group has a leader, e.g. after the leader was killed.
pub(crate) async fn connect_retrying(builder: impl Fn() -> ClientBuilder) -> Client {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match builder().connect().await {
            Ok(client) => return client,
            Err(err) if Instant::now() < deadline => {
                eprintln!("not yet: {err}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("no connection within {DEADLINE:?}: {err}"),
        }
    }
}
