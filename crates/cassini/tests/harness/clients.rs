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

/// A client of the broker at `address`, named `name`, that notices a lost connection within
/// 1 s (keep-alive every 250 ms) and reconnects quickly (backoff 50 ms up to 500 ms).
pub(crate) fn quick_to_reconnect(
    address: impl Into<BrokerAddress>,
    dir: &Path,
    name: &str,
) -> ClientBuilder {
    Client::builder(address)
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

/// A connected client of the broker at `addr`, named `name`.
pub(crate) async fn client(addr: &str, dir: &Path, name: &str) -> Client {
    Client::builder(addr)
        .cert_dir(dir, name)
        .server_name("localhost")
        .connect()
        .await
        .expect("client connects")
}
