//! Clients at the edge of a network that drops silently: they reach the broker through a
//! [`UdpRelay`] a test cuts and restores, with QUIC settings that notice the drop within about
//! a second, and reconnect at once.
//!
//! Layering: imports the broker harness (`lib.rs`) and `relay`; neither imports it.

use std::time::Duration;

use cassini_broker::BrokerConfig;
use cassini_client::{Client, ConnectionState, QuicOptions, ReconnectPolicy};
use cassini_quic::server::ServerOptions;

use crate::relay::UdpRelay;
use crate::{within, TestBroker};

/// QUIC settings with which both ends notice a silent drop within about a second.
pub fn quick_quic() -> QuicOptions {
    QuicOptions {
        idle_timeout: Duration::from_secs(1),
        keep_alive_interval: Duration::from_millis(250),
        ..QuicOptions::default()
    }
}

/// A broker with `config` whose connections use [`quick_quic`].
pub async fn quick_broker(config: BrokerConfig) -> TestBroker {
    let options = ServerOptions {
        quic: quick_quic(),
        ..ServerOptions::default()
    };
    TestBroker::start_with(config, options).await
}

/// A client named `name` that reaches `broker` through `relay`, uses [`quick_quic`] and
/// reconnects at once (backoff from 50 ms to 300 ms, never giving up).
pub async fn edge_client(broker: &TestBroker, relay: &UdpRelay, name: &str) -> Client {
    let (chain, key) = crate::identity_of(&broker.pki.client(name));
    Client::builder(relay.addr)
        .ca_certs(broker.pki.ca_certs())
        .identity(chain, key)
        .server_name("localhost")
        .quic_options(quick_quic())
        .reconnect(ReconnectPolicy {
            enabled: true,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(300),
            give_up_after: None,
        })
        .connect()
        .await
        .expect("edge client connects")
}

/// Waits, within the harness deadline, until `client`'s connection state is one `wanted`
/// accepts.
pub async fn wait_for_state(
    client: &Client,
    what: &str,
    wanted: impl Fn(&ConnectionState) -> bool,
) {
    let mut changes = client.state_changes();
    within(what, async {
        loop {
            if wanted(&changes.borrow_and_update()) {
                return;
            }
            if changes.changed().await.is_err() {
                panic!("state channel closed while waiting for: {what}");
            }
        }
    })
    .await;
}
