//! The builder refuses settings that cannot work before it touches the network.

#![allow(clippy::panic, clippy::expect_used)] // A failed expectation in a test panics on purpose.

use std::time::Duration;

use cassini_quic::certs::CertificateAuthority;

use super::*;

/// A builder with a valid in-memory CA and client identity.
fn complete_builder() -> ClientBuilder {
    let ca = CertificateAuthority::generate("test CA").expect("CA");
    let client = ca.issue_client("alice").expect("client certificate");
    ClientBuilder::new("127.0.0.1:7700".into())
        .ca_certs(vec![ca.cert_der().clone()])
        .identity(
            vec![client.cert_der().expect("certificate DER")],
            client.key_der().expect("key DER"),
        )
}

fn config_reason(builder: ClientBuilder) -> String {
    match builder.prepare() {
        Err(ClientError::Config { reason }) => reason,
        Err(other) => panic!("expected a configuration error, got {other:?}"),
        Ok(_) => panic!("expected a configuration error, got a valid configuration"),
    }
}

#[test]
fn a_complete_builder_is_ready_to_connect() {
    let prepared = complete_builder().prepare().expect("valid settings");
    assert_eq!(prepared.server_name, "localhost");
    assert_eq!(prepared.client.subscription_buffer, 1024);
    assert_eq!(prepared.client.publisher.max_lanes, 64);
}

#[test]
fn a_missing_ca_is_refused_with_the_fix() {
    let builder = ClientBuilder::new("127.0.0.1:7700".into());
    let reason = config_reason(builder);
    assert!(reason.contains("ca_file()"), "{reason}");
}

#[test]
fn a_missing_client_certificate_is_refused_with_the_fix() {
    let ca = CertificateAuthority::generate("test CA").expect("CA");
    let builder = ClientBuilder::new("127.0.0.1:7700".into()).ca_certs(vec![ca.cert_der().clone()]);
    let reason = config_reason(builder);
    assert!(reason.contains("identity_files()"), "{reason}");
}

#[test]
fn zero_sized_buffers_and_timeouts_are_refused() {
    let reason = config_reason(complete_builder().subscription_buffer(0));
    assert!(reason.contains("subscription_buffer"), "{reason}");
    let reason = config_reason(complete_builder().max_publish_lanes(0));
    assert!(reason.contains("max_publish_lanes"), "{reason}");
    let reason = config_reason(complete_builder().publish_lane_buffer(0));
    assert!(reason.contains("publish_lane_buffer"), "{reason}");
    let reason = config_reason(complete_builder().connect_timeout(Duration::ZERO));
    assert!(reason.contains("connect_timeout"), "{reason}");
}

#[test]
fn an_unreadable_ca_file_names_the_file() {
    let builder = complete_builder().ca_file("/nonexistent/cassini/ca.crt");
    match builder.prepare() {
        Err(error @ ClientError::Tls(_)) => {
            assert!(
                error.to_string().contains("/nonexistent/cassini/ca.crt"),
                "{error}"
            );
        }
        Err(other) => panic!("expected a TLS error, got {other:?}"),
        Ok(_) => panic!("expected a TLS error, got a valid configuration"),
    }
}

#[test]
fn a_cert_dir_reads_the_cassini_layout() {
    let builder = ClientBuilder::new("127.0.0.1:7700".into()).cert_dir("/etc/cassini", "dev");
    let debug = format!("{builder:?}");
    assert!(debug.contains("/etc/cassini/ca.crt"), "{debug}");
    assert!(debug.contains("/etc/cassini/client-dev.crt"), "{debug}");
}

#[test]
fn the_debug_output_never_shows_the_key() {
    let debug = format!("{:?}", complete_builder());
    assert!(!debug.contains("PrivateKey"), "{debug}");
    assert!(debug.contains("1 certificates"), "{debug}");
}

#[test]
fn an_explicit_server_name_wins() {
    let prepared = complete_builder()
        .server_name("broker.internal")
        .prepare()
        .expect("valid settings");
    assert_eq!(prepared.server_name, "broker.internal");
}

#[test]
fn addresses_parse_as_socket_addresses_when_they_can() {
    assert_eq!(
        BrokerAddress::from("127.0.0.1:7700"),
        BrokerAddress::Socket("127.0.0.1:7700".parse().expect("address"))
    );
    assert_eq!(
        BrokerAddress::from("[::1]:7700"),
        BrokerAddress::Socket("[::1]:7700".parse().expect("address"))
    );
    assert_eq!(
        BrokerAddress::from("broker.internal:7700"),
        BrokerAddress::HostPort("broker.internal:7700".into())
    );
}

#[test]
fn the_default_server_name_is_the_host_or_localhost() {
    let name = |addr: &str| BrokerAddress::from(addr).default_server_name();
    assert_eq!(name("127.0.0.1:7700"), "localhost");
    assert_eq!(name("[::1]:7700"), "localhost");
    assert_eq!(name("localhost:7700"), "localhost");
    assert_eq!(name("broker.internal:7700"), "broker.internal");
}

#[tokio::test]
async fn an_unresolvable_host_is_a_resolve_error() {
    let result = complete_builder_for("no-such-host.invalid:7700")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    match result {
        Err(ClientError::Resolve { addr, .. }) => assert_eq!(addr, "no-such-host.invalid:7700"),
        Err(ClientError::Timeout(_)) => {} // a resolver without network may hang instead
        Err(other) => panic!("expected a resolve error, got {other:?}"),
        Ok(_) => panic!("connected to a host that does not exist"),
    }
}

#[tokio::test]
async fn a_silent_broker_address_times_out() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("UDP socket");
    let address = silent.local_addr().expect("local address");
    let result = complete_builder_for(&address.to_string())
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .await;
    match result {
        Err(ClientError::Connect { reason }) => {
            assert_eq!(reason, format!("no answer from {address} within 300ms"))
        }
        Err(other) => panic!("expected a timeout naming the address, got {other:?}"),
        Ok(_) => panic!("connected to a socket that never answers"),
    }
}

#[tokio::test]
async fn an_address_where_nothing_listens_fails_fast_and_is_named() {
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").expect("UDP socket");
    let address = closed.local_addr().expect("local address");
    drop(closed);
    let started = std::time::Instant::now();
    let result = complete_builder_for(&address.to_string())
        .connect_timeout(Duration::from_secs(30))
        .connect()
        .await;
    match result {
        Err(ClientError::Connect { reason }) => assert_eq!(
            reason,
            format!("nothing listens on {address} (the port is unreachable)")
        ),
        Err(other) => panic!("expected the unreachable port, got {other:?}"),
        Ok(_) => panic!("connected to a closed port"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "failed on the ICMP answer, not at the connect timeout"
    );
}

fn complete_builder_for(address: &str) -> ClientBuilder {
    let mut builder = complete_builder();
    builder.address = BrokerAddress::from(address);
    builder
}
