//! A client given several broker addresses, with every setting at its default, notices a
//! broker that went silent within seconds (it pings when it has somewhere else to go:
//! `cassini_client::Liveness::Auto`) and moves to the next address, announcing the session it
//! lost; a client with one address keeps waiting for its broker, as QUIC's idle timeout says.

use std::time::Duration;

use bytes::Bytes;
use cassini_broker::BrokerConfig;
use cassini_client::{ConnectionState, Gap};
use cassini_e2e::edge::wait_for_state;
use cassini_e2e::relay::UdpRelay;
use cassini_e2e::{within, Pki, TestBroker};
use futures_util::StreamExt;

#[tokio::test]
async fn a_silent_broker_gives_way_to_the_next_address_with_default_settings() {
    let pki = Pki::new();
    let first = TestBroker::start_sharing_ca(&pki, BrokerConfig::default()).await;
    let second = TestBroker::start_sharing_ca(&pki, BrokerConfig::default()).await;
    let relay = UdpRelay::start(first.addr).await.expect("relay");
    let subscriber = first
        .client_builder("subscriber")
        .address(vec![relay.addr, second.addr])
        .connect()
        .await
        .expect("connects to the first address");
    let mut subscription = subscriber.subscribe("news").await.expect("subscribe");

    relay.cut();
    wait_for_state(
        &subscriber,
        "the client reconnects to the second broker",
        |state| matches!(state, ConnectionState::Connected { .. }) && subscriber.reconnects() >= 1,
    )
    .await;

    let publisher = second.client("publisher").await;
    let publishing = tokio::spawn({
        let publisher = publisher.clone();
        async move {
            // Until the subscription is in place on the second broker, publishes reach nobody.
            loop {
                let _ = publisher
                    .publish("news", Bytes::from_static(b"after"))
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let message = within(
        "a publish on the second broker reaches the subscriber",
        subscription.next(),
    )
    .await
    .expect("a message");
    publishing.abort();
    assert_eq!(message.payload().as_ref(), b"after");
    assert!(
        matches!(
            subscription.take_gaps().as_slice(),
            [Gap::SessionLost { .. }]
        ),
        "the lost session is announced"
    );
    within("close", subscriber.close()).await.expect("close");
    publisher.close().await.expect("close");
}
