//! Clients of a [`super::Broker`] that present the certificates `cassini certs init` wrote to a
//! directory (`ca.crt`, `client-NAME.crt`, `client-NAME.key`).

use std::path::Path;
use std::time::Duration;

use cassini_client::{BrokerAddress, Client, ClientBuilder, QuicOptions, ReconnectPolicy};
use cassini_quic::tls;

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

/// A client of the broker(s) at `addr` as `name` that notices a lost connection within about a
/// second (1 s idle timeout, keep-alive every 250 ms) and reconnects at once (backoff from
/// 50 ms to 500 ms), not yet connected.
pub(crate) fn quick_client(
    addr: impl Into<BrokerAddress>,
    dir: &Path,
    name: &str,
) -> ClientBuilder {
    Client::builder(addr)
        .cert_dir(dir, name)
        .server_name("localhost")
        .quic_options(QuicOptions {
            idle_timeout: Duration::from_secs(1),
            keep_alive_interval: Duration::from_millis(250),
            ..QuicOptions::default()
        })
        .reconnect(ReconnectPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            ..ReconnectPolicy::default()
        })
}
