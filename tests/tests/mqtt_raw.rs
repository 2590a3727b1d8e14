//! The MQTT gateway against packets written byte by byte over plain TCP on loopback: what real
//! clients send that the well-behaved command-line clients of `tests/mqtt.rs` do not (a burst
//! of publishes without waiting for acknowledgements, a `DISCONNECT` carrying only a reason
//! code, requests sent before the answers to earlier ones). Needs no third-party client.

use std::time::Duration;

use cassini_broker::BrokerConfig;
use cassini_e2e::gateway::{connect_v5, Gateway};
use cassini_e2e::within;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One MQTT packet: its first byte and its body.
#[derive(Debug, PartialEq, Eq)]
struct Packet {
    header: u8,
    body: Vec<u8>,
}

impl Packet {
    fn kind(&self) -> u8 {
        self.header >> 4
    }

    /// The packet identifier at the start of a `PUBACK`, `SUBACK` or `UNSUBACK` body.
    fn packet_id(&self) -> u16 {
        u16::from_be_bytes([self.body[0], self.body[1]])
    }
}

const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBCOMP: u8 = 7;
const SUBACK: u8 = 9;
const UNSUBACK: u8 = 11;

fn remaining_length(mut len: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return;
        }
    }
}

fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    remaining_length(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

fn string(text: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// An MQTT 5 QoS 1 `PUBLISH` without properties.
fn publish_qos1(topic: &str, packet_id: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic, &mut body);
    body.extend_from_slice(&packet_id.to_be_bytes());
    body.push(0); // no properties
    body.extend_from_slice(payload);
    packet(0x32, &body)
}

/// An MQTT 5 `SUBSCRIBE` of `filter` at QoS 1.
fn subscribe(packet_id: u16, filter: &str) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    body.push(0); // no properties
    string(filter, &mut body);
    body.push(1);
    packet(0x82, &body)
}

/// An MQTT 5 `UNSUBSCRIBE` of `filter`.
fn unsubscribe(packet_id: u16, filter: &str) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    body.push(0); // no properties
    string(filter, &mut body);
    packet(0xA2, &body)
}

/// An MQTT 5 `CONNECT` for `id` with a clean start, a 60 s keep-alive and a will of `qos` on
/// `will_topic`.
fn connect_v5_with_will_qos(id: &str, will_topic: &str, will: &[u8], qos: u8) -> Vec<u8> {
    // Flags: the will's QoS (bits 3-4), will flag (0x04) and clean start (0x02).
    let flags = 0b0000_0110 | (qos << 3);
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, flags, 0, 60, 0];
    string(id, &mut body);
    body.push(0); // no will properties
    string(will_topic, &mut body);
    body.extend_from_slice(&(will.len() as u16).to_be_bytes());
    body.extend_from_slice(will);
    packet(0x10, &body)
}

/// An MQTT 5 `CONNECT` for `id` with a QoS 0 will on `will_topic`.
fn connect_v5_with_will(id: &str, will_topic: &str, will: &[u8]) -> Vec<u8> {
    connect_v5_with_will_qos(id, will_topic, will, 0)
}

/// An MQTT 5 `CONNECT` for `id` announcing a Receive Maximum of `receive_maximum`.
fn connect_v5_with_receive_maximum(id: &str, receive_maximum: u16) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0b0000_0010, 0, 60];
    body.push(3); // properties: Receive Maximum (0x21) and its two bytes
    body.push(0x21);
    body.extend_from_slice(&receive_maximum.to_be_bytes());
    string(id, &mut body);
    packet(0x10, &body)
}

/// An MQTT 3.1.1 `CONNECT` for `id` keeping its session (clean session 0), 60 s keep-alive.
fn connect_v311_persistent(id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0, 0, 60];
    string(id, &mut body);
    packet(0x10, &body)
}

/// An MQTT 3.1.1 QoS 2 `PUBLISH`, marked `dup` when it is sent again.
fn publish_v311_qos2(topic: &str, packet_id: u16, payload: &[u8], dup: bool) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic, &mut body);
    body.extend_from_slice(&packet_id.to_be_bytes());
    body.extend_from_slice(payload);
    packet(if dup { 0x3C } else { 0x34 }, &body)
}

/// A `PUBREL` of `packet_id` (3.1.1: no reason code).
fn pubrel(packet_id: u16) -> Vec<u8> {
    packet(0x62, &packet_id.to_be_bytes())
}

/// Sends `bytes` and reads the answer, which must be `kind` for `packet_id`.
async fn answered(raw: &mut TcpStream, bytes: &[u8], kind: u8, packet_id: u16) {
    raw.write_all(bytes).await.expect("write");
    let answer = within("the answer", read_packet(raw)).await;
    assert_eq!(
        (answer.kind(), answer.packet_id()),
        (kind, packet_id),
        "{answer:?}"
    );
}

/// The `CONNACK` answering `connect`, then the end of the connection.
async fn refused_connack(gateway: &Gateway, connect: &[u8]) -> Packet {
    let mut raw = TcpStream::connect(gateway.addr).await.expect("connect");
    raw.write_all(connect).await.expect("CONNECT");
    let connack = within("CONNACK", read_packet(&mut raw)).await;
    let mut rest = Vec::new();
    within("the gateway closes", raw.read_to_end(&mut rest))
        .await
        .expect("read");
    connack
}

async fn read_packet(stream: &mut TcpStream) -> Packet {
    let mut header = [0u8; 1];
    stream.read_exact(&mut header).await.expect("a packet");
    let mut len = 0usize;
    let mut shift = 0;
    loop {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.expect("its length");
        len |= usize::from(byte[0] & 0x7F) << shift;
        if byte[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.expect("its body");
    Packet {
        header: header[0],
        body,
    }
}

/// A raw MQTT 5 connection past its accepted `CONNACK`.
async fn connected(gateway: &Gateway, connect: &[u8]) -> TcpStream {
    let mut raw = TcpStream::connect(gateway.addr).await.expect("connect");
    raw.write_all(connect).await.expect("CONNECT");
    let connack = within("CONNACK", read_packet(&mut raw)).await;
    assert_eq!(connack.header, 0x20, "CONNACK: {connack:?}");
    assert_eq!(connack.body.get(1), Some(&0), "accepted: {connack:?}");
    raw
}

async fn plaintext_gateway() -> Gateway {
    Gateway::start_with(BrokerConfig::default(), true).await
}

#[tokio::test]
async fn a_burst_of_qos1_publishes_sent_without_waiting_is_acknowledged_in_full() {
    const BURST: u16 = 3_000;
    let gateway = plaintext_gateway().await;
    let quic = gateway.broker.client("reader").await;
    let mut subscription = quic.subscribe("burst.>").await.expect("subscribe");
    let mut raw = connected(&gateway, &connect_v5("burst")).await;
    // The whole burst in one write, as a client flushing its offline queue does; the
    // acknowledgements are read only afterwards.
    let mut burst = Vec::new();
    for id in 1..=BURST {
        burst.extend(publish_qos1("burst/x", id, &id.to_be_bytes()));
    }
    let (mut read_half, mut write_half) = raw.split();
    let reading = async {
        let mut acknowledged = 0u16;
        while acknowledged < BURST {
            let mut header = [0u8; 4];
            read_half.read_exact(&mut header).await.expect("PUBACK");
            assert_eq!(header[0] >> 4, PUBACK, "{header:?}");
            acknowledged += 1;
            assert_eq!(u16::from_be_bytes([header[2], header[3]]), acknowledged);
            // A PUBACK with reason Success and no properties is 4 bytes; anything longer
            // would carry a reason code.
            assert_eq!(header[1], 2, "a plain success: {header:?}");
        }
    };
    let (written, ()) = within("every publish acknowledged", async {
        tokio::join!(write_half.write_all(&burst), reading)
    })
    .await;
    written.expect("the burst written");
    for id in 1..=BURST {
        let message = within("delivery", subscription.next()).await.expect("open");
        assert_eq!(message.payload().as_ref(), id.to_be_bytes());
    }
}

#[tokio::test]
async fn a_disconnect_with_only_a_reason_code_is_a_normal_disconnect_and_keeps_the_will_back() {
    let gateway = plaintext_gateway().await;
    let quic = gateway.broker.client("watcher").await;
    let mut wills = quic.subscribe("wills.>").await.expect("subscribe");
    let mut raw = connected(
        &gateway,
        &connect_v5_with_will("leaving", "wills/leaving", b"gone"),
    )
    .await;
    // MQTT 5 §3.14.2.1: a DISCONNECT of remaining length 1 holds the reason code alone;
    // 0x00 is a normal disconnection, which publishes no will. libmosquitto and paho send it.
    raw.write_all(&[0xE0, 0x01, 0x00])
        .await
        .expect("DISCONNECT");
    let mut rest = Vec::new();
    within("the gateway closes", raw.read_to_end(&mut rest))
        .await
        .expect("read");
    assert!(rest.is_empty(), "no DISCONNECT back: {rest:?}");
    // A will published on the way out would arrive within this time; none may.
    let published = tokio::time::timeout(Duration::from_millis(500), wills.next()).await;
    assert!(published.is_err(), "the will was published: {published:?}");
}

#[tokio::test]
async fn an_unsubscribe_sent_before_its_subscribes_answer_is_answered_after_it_and_ends_it() {
    let gateway = plaintext_gateway().await;
    let quic = gateway.broker.client("publisher").await;
    let mut raw = connected(&gateway, &connect_v5("fickle")).await;
    raw.write_all(&[subscribe(1, "orders/#"), unsubscribe(2, "orders/#")].concat())
        .await
        .expect("SUBSCRIBE and UNSUBSCRIBE");
    let first = within("SUBACK", read_packet(&mut raw)).await;
    let second = within("UNSUBACK", read_packet(&mut raw)).await;
    assert_eq!(
        (first.kind(), first.packet_id()),
        (SUBACK, 1),
        "answers in order: {first:?}"
    );
    assert_eq!((second.kind(), second.packet_id()), (UNSUBACK, 2));
    assert_eq!(second.body.get(3), Some(&0), "unsubscribed: {second:?}");
    gateway.wait_subscriptions("orders.>", |n| n == 0).await;
    quic.publish("orders.new", "x").await.expect("publish");
    let delivered = tokio::time::timeout(Duration::from_millis(500), read_packet(&mut raw)).await;
    assert!(
        delivered.is_err(),
        "delivered after the unsubscribe: {delivered:?}"
    );
}

#[tokio::test]
async fn an_mqtt5_connect_breaking_a_rule_is_refused_with_its_reason() {
    let gateway = plaintext_gateway().await;
    // CONNACK body: session present flag, reason code, properties.
    let zero_window = refused_connack(&gateway, &connect_v5_with_receive_maximum("zero", 0)).await;
    assert_eq!(
        (zero_window.header, zero_window.body.get(1)),
        (0x20, Some(&0x82)),
        "a Receive Maximum of 0: Protocol error, {zero_window:?}"
    );
    let qos2_will = refused_connack(
        &gateway,
        &connect_v5_with_will_qos("exact", "wills/exact", b"gone", 2),
    )
    .await;
    assert_eq!(
        (qos2_will.header, qos2_will.body.get(1)),
        (0x20, Some(&0x9B)),
        "a QoS 2 will where the maximum is 1: QoS not supported, {qos2_will:?}"
    );
    let no_room = refused_connack(
        &gateway,
        &connect_v5_with_property("tiny", &[0x27, 0, 0, 0, 0]),
    )
    .await;
    assert_eq!(
        (no_room.header, no_room.body.get(1)),
        (0x20, Some(&0x82)),
        "a Maximum Packet Size of 0: Protocol error, {no_room:?}"
    );
    let mut scram = vec![0x15];
    string("SCRAM-SHA-256", &mut scram);
    let enhanced = refused_connack(&gateway, &connect_v5_with_property("scram", &scram)).await;
    assert_eq!(
        (enhanced.header, enhanced.body.get(1)),
        (0x20, Some(&0x8C)),
        "an authentication method: Bad authentication method, {enhanced:?}"
    );
    // A will on a topic with no Cassini form (a level holding '.') could never be published.
    let dotted_will = refused_connack(
        &gateway,
        &connect_v5_with_will("dotted", "devices/10.0.0.7/status", b"gone"),
    )
    .await;
    assert_eq!(
        (dotted_will.header, dotted_will.body.get(1)),
        (0x20, Some(&0x90)),
        "a will topic with no Cassini form: Topic Name invalid, {dotted_will:?}"
    );
    let fine = connected(&gateway, &connect_v5_with_receive_maximum("some", 10)).await;
    drop(fine);
}

/// An MQTT 5 `CONNECT` for `id` with a clean start and one property (`property`: its
/// identifier and value).
fn connect_v5_with_property(id: &str, property: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0b0000_0010, 0, 60];
    body.push(property.len() as u8);
    body.extend_from_slice(property);
    string(id, &mut body);
    packet(0x10, &body)
}

#[tokio::test]
async fn a_filter_listed_twice_in_one_subscribe_is_one_subscription() {
    let gateway = plaintext_gateway().await;
    let mut raw = connected(&gateway, &connect_v5("twice")).await;
    // MQTT §3.8.4: as two SUBSCRIBEs in a row, the second replacing the first.
    let mut body = 1u16.to_be_bytes().to_vec();
    body.push(0); // no properties
    for _ in 0..2 {
        string("twice/x", &mut body);
        body.push(1);
    }
    raw.write_all(&packet(0x82, &body))
        .await
        .expect("SUBSCRIBE");
    let suback = within("SUBACK", read_packet(&mut raw)).await;
    assert_eq!(suback.kind(), SUBACK);
    assert_eq!(&suback.body[3..], &[1, 1], "both granted QoS 1: {suback:?}");
    let quic = gateway.broker.client("feeder").await;
    quic.publish("twice.x", bytes::Bytes::from_static(b"one"))
        .await
        .expect("publish");
    quic.flush().await.expect("flush");
    let delivery = within("the delivery", read_packet(&mut raw)).await;
    assert_eq!(delivery.kind(), 3, "PUBLISH: {delivery:?}");
    let packet_id = [delivery.body[9], delivery.body[10]];
    raw.write_all(&packet(0x40, &packet_id))
        .await
        .expect("PUBACK");
    // One UNSUBSCRIBE ends it: nothing more arrives, and no second copy came.
    raw.write_all(&unsubscribe(2, "twice/x"))
        .await
        .expect("UNSUBSCRIBE");
    let unsuback = within("UNSUBACK", read_packet(&mut raw)).await;
    assert_eq!(
        (unsuback.kind(), unsuback.body.get(3)),
        (UNSUBACK, Some(&0)),
        "{unsuback:?}"
    );
    gateway
        .wait_subscriptions("twice.x", |count| count == 0)
        .await;
}

#[tokio::test]
async fn a_publish_too_large_once_translated_is_refused_and_the_connection_stays() {
    let gateway = plaintext_gateway().await;
    let mut raw = connected(&gateway, &connect_v5("large")).await;
    // Just under the Maximum Packet Size the CONNACK announced (`limits.max_frame_bytes`), so
    // the Cassini frame the gateway makes of it, with its fields, is over a frame's size.
    let max_frame = cassini_protocol::codec::DEFAULT_MAX_FRAME_BYTES as usize;
    let payload = vec![7u8; max_frame - 32];
    raw.write_all(&publish_qos1("large/x", 1, &payload))
        .await
        .expect("PUBLISH");
    let refused = within("PUBACK", read_packet(&mut raw)).await;
    assert_eq!(
        (refused.kind(), refused.packet_id(), refused.body.get(2)),
        (PUBACK, 1, Some(&0x97)),
        "refused with Quota exceeded: {refused:?}"
    );
    raw.write_all(&publish_qos1("large/x", 2, b"small"))
        .await
        .expect("PUBLISH");
    let accepted = within("PUBACK", read_packet(&mut raw)).await;
    assert_eq!((accepted.kind(), accepted.packet_id()), (PUBACK, 2));
}

#[tokio::test]
async fn a_qos2_publish_sent_again_on_the_resumed_session_is_not_published_twice() {
    let gateway = plaintext_gateway().await;
    let quic = gateway.broker.client("reader").await;
    let mut subscription = quic.subscribe("exactly.>").await.expect("subscribe");
    let connect = connect_v311_persistent("twice");
    let mut raw = connected(&gateway, &connect).await;
    let first = publish_v311_qos2("exactly/once", 7, b"one", false);
    answered(&mut raw, &first, PUBREC, 7).await;
    let message = within("delivery", subscription.next()).await.expect("open");
    assert_eq!(message.payload().as_ref(), b"one");
    // The connection drops before the client saw the PUBREC: on its next connection, the
    // session resumed, it sends the PUBLISH again (MQTT 3.1.1 §4.4).
    drop(raw);
    let mut raw = TcpStream::connect(gateway.addr).await.expect("connect");
    raw.write_all(&connect).await.expect("CONNECT");
    let connack = within("CONNACK", read_packet(&mut raw)).await;
    assert_eq!(
        connack.body,
        [1, 0],
        "accepted, the session present: {connack:?}"
    );
    let again = publish_v311_qos2("exactly/once", 7, b"one", true);
    answered(&mut raw, &again, PUBREC, 7).await;
    answered(&mut raw, &pubrel(7), PUBCOMP, 7).await;
    // Released: packet id 7 now names a new message, which is published.
    let next = publish_v311_qos2("exactly/once", 7, b"two", false);
    answered(&mut raw, &next, PUBREC, 7).await;
    let message = within("delivery", subscription.next()).await.expect("open");
    assert_eq!(
        message.payload().as_ref(),
        b"two",
        "\"one\" was published twice"
    );
}

#[tokio::test]
async fn a_qos2_publish_whose_connection_dropped_unanswered_is_delivered_once_when_sent_again() {
    let gateway = plaintext_gateway().await;
    let quic = gateway.broker.client("reader").await;
    let mut subscription = quic.subscribe("exactly.>").await.expect("subscribe");
    let connect = connect_v311_persistent("dropped");
    let mut raw = connected(&gateway, &connect).await;
    // The PUBLISH and the end of the connection in one go: the gateway may or may not have
    // sent it into Cassini before it saw the end.
    raw.write_all(&publish_v311_qos2("exactly/once", 9, b"one", false))
        .await
        .expect("PUBLISH");
    drop(raw);
    let mut raw = connected(&gateway, &connect).await;
    let again = publish_v311_qos2("exactly/once", 9, b"one", true);
    answered(&mut raw, &again, PUBREC, 9).await;
    answered(&mut raw, &pubrel(9), PUBCOMP, 9).await;
    answered(
        &mut raw,
        &publish_v311_qos2("exactly/once", 10, b"two", false),
        PUBREC,
        10,
    )
    .await;
    let message = within("delivery", subscription.next()).await.expect("open");
    assert_eq!(message.payload().as_ref(), b"one");
    let message = within("delivery", subscription.next()).await.expect("open");
    assert_eq!(
        message.payload().as_ref(),
        b"two",
        "\"one\" was published twice"
    );
}

#[tokio::test]
async fn a_publish_the_gateway_refuses_is_answered_after_the_publishes_sent_before_it() {
    let gateway = plaintext_gateway().await;
    let mut raw = connected(&gateway, &connect_v5("orderly")).await;
    // Publishes in the broker's hands, then one the gateway refuses itself (a `$` topic is
    // not for clients), in one write: MQTT 3.1.1 §4.6 and MQTT 5 §4.6 want the answers in the
    // order the publishes came.
    let mut burst = Vec::new();
    for id in 1..=50u16 {
        burst.extend(publish_qos1("ordered/x", id, b"x"));
    }
    burst.extend(publish_qos1("$refused/x", 51, b"x"));
    raw.write_all(&burst).await.expect("the publishes");
    for expected in 1..=51u16 {
        let answer = within("PUBACK", read_packet(&mut raw)).await;
        assert_eq!(
            (answer.kind(), answer.packet_id()),
            (PUBACK, expected),
            "{answer:?}"
        );
        let reason = answer.body.get(2).copied().unwrap_or(0);
        // 0x90: Topic Name invalid; the others succeeded.
        assert_eq!(reason, if expected == 51 { 0x90 } else { 0 }, "{answer:?}");
    }
}

/// An MQTT 3.1.1 `SUBSCRIBE` of `filter` at QoS 1.
fn subscribe_v311(packet_id: u16, filter: &str) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    string(filter, &mut body);
    body.push(1);
    packet(0x82, &body)
}

/// A 3.1.1 QoS 1 `PUBLISH`'s packet id, payload and DUP flag.
fn delivered_v311(publish: &Packet) -> (u16, Vec<u8>, bool) {
    assert_eq!(publish.kind(), 3, "a PUBLISH: {publish:?}");
    let topic_len = usize::from(u16::from_be_bytes([publish.body[0], publish.body[1]]));
    let at = 2 + topic_len;
    let packet_id = u16::from_be_bytes([publish.body[at], publish.body[at + 1]]);
    let dup = publish.header & 0x08 != 0;
    (packet_id, publish.body[at + 2..].to_vec(), dup)
}

#[tokio::test]
async fn a_delivery_left_unacknowledged_comes_again_under_its_packet_id_on_the_resumed_session() {
    let gateway = plaintext_gateway().await;
    let quic = gateway.broker.client("publisher").await;
    let connect = connect_v311_persistent("forgetful");
    let mut raw = connected(&gateway, &connect).await;
    answered(&mut raw, &subscribe_v311(1, "redo/#"), SUBACK, 1).await;
    quic.publish("redo.a", "one").await.expect("publish");
    let (first, payload, _) = delivered_v311(&within("PUBLISH", read_packet(&mut raw)).await);
    assert_eq!(payload, b"one");
    raw.write_all(&packet(0x40, &first.to_be_bytes()))
        .await
        .expect("PUBACK");
    quic.publish("redo.a", "two").await.expect("publish");
    let (second, payload, dup) = delivered_v311(&within("PUBLISH", read_packet(&mut raw)).await);
    assert_eq!((payload.as_slice(), dup), (&b"two"[..], false));
    assert_ne!(
        second, 1,
        "the second delivery has a packet id the next connection would not"
    );
    // The connection ends before the client acknowledges "two": on the session's next
    // connection it comes again, marked DUP, under the same packet id (MQTT 3.1.1 §4.4).
    drop(raw);
    let mut raw = TcpStream::connect(gateway.addr).await.expect("connect");
    raw.write_all(&connect).await.expect("CONNECT");
    let connack = within("CONNACK", read_packet(&mut raw)).await;
    assert_eq!(connack.body, [1, 0], "the session present: {connack:?}");
    let (again, payload, dup) = delivered_v311(&within("PUBLISH", read_packet(&mut raw)).await);
    assert_eq!(
        (again, payload.as_slice(), dup),
        (second, &b"two"[..], true)
    );
}

#[tokio::test]
async fn a_clean_start_on_a_session_with_many_subscriptions_is_accepted() {
    let gateway = plaintext_gateway().await;
    let mut raw = connected(&gateway, &connect_v311_persistent("crowded")).await;
    // Forty subscriptions in one SUBSCRIBE: more answers than the bridge holds unread.
    let mut body = 1u16.to_be_bytes().to_vec();
    for n in 0..40 {
        string(&format!("crowd/{n}"), &mut body);
        body.push(1);
    }
    answered(&mut raw, &packet(0x82, &body), SUBACK, 1).await;
    gateway.wait_subscribed("crowd.39").await;
    raw.write_all(&[0xE0, 0x00]).await.expect("DISCONNECT");
    drop(raw);
    // A clean start unsubscribes from all forty before its CONNACK.
    let mut clean = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0b0000_0010, 0, 60];
    string("crowded", &mut clean);
    let mut raw = TcpStream::connect(gateway.addr).await.expect("connect");
    raw.write_all(&packet(0x10, &clean)).await.expect("CONNECT");
    let connack = within("CONNACK", read_packet(&mut raw)).await;
    assert_eq!(
        connack.body,
        [0, 0],
        "accepted, no session present: {connack:?}"
    );
    for n in [0, 39] {
        gateway.wait_unsubscribed(&format!("crowd.{n}")).await;
    }
}

#[tokio::test]
async fn a_subscribe_listing_more_filters_than_a_session_may_hold_closes_the_connection() {
    let gateway = plaintext_gateway().await;
    let mut raw = connected(&gateway, &connect_v311_persistent("greedy")).await;
    let most = BrokerConfig::default().limits.max_subscriptions_per_session;
    let mut body = 1u16.to_be_bytes().to_vec();
    for n in 0..=most {
        string(&format!("g/{n}"), &mut body);
        body.push(0);
    }
    raw.write_all(&packet(0x82, &body))
        .await
        .expect("SUBSCRIBE");
    let mut rest = Vec::new();
    within("the gateway closes", raw.read_to_end(&mut rest))
        .await
        .expect("read");
    assert!(rest.is_empty(), "no SUBACK: {rest:?}");
}

#[tokio::test]
async fn a_client_holding_a_thousand_unreleased_qos2_publishes_may_not_send_another() {
    let gateway = plaintext_gateway().await;
    let mut raw = connected(&gateway, &connect_v311_persistent("hoarder")).await;
    let mut burst = Vec::new();
    for id in 1..=1_000u16 {
        burst.extend(publish_v311_qos2("hoard/x", id, b"x", false));
    }
    raw.write_all(&burst).await.expect("the publishes");
    for id in 1..=1_000u16 {
        let answer = within("PUBREC", read_packet(&mut raw)).await;
        assert_eq!((answer.kind(), answer.packet_id()), (PUBREC, id));
    }
    // None released: the 1,001st is one too many (EMQX's max_awaiting_rel is 100).
    raw.write_all(&publish_v311_qos2("hoard/x", 1_001, b"x", false))
        .await
        .expect("PUBLISH");
    let mut rest = Vec::new();
    within("the gateway closes", raw.read_to_end(&mut rest))
        .await
        .expect("read");
    assert!(rest.is_empty(), "no PUBREC: {rest:?}");
}

#[tokio::test]
async fn connections_beyond_max_connecting_without_connect_are_closed_at_once() {
    let gateway = Gateway::start_with_options(cassini_mqtt::MqttOptions {
        allow_plaintext_loopback: true,
        max_connecting: 2,
        ..cassini_mqtt::MqttOptions::new("127.0.0.1:0".parse().expect("addr"))
    })
    .await;
    // Two connections that send nothing hold both places.
    let mut first = TcpStream::connect(gateway.addr).await.expect("connect");
    let _second = TcpStream::connect(gateway.addr).await.expect("connect");
    let mut third = TcpStream::connect(gateway.addr).await.expect("connect");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), third.read_to_end(&mut rest))
        .await
        .expect("the third is closed at once, not after the CONNECT timeout")
        .expect("read");
    assert!(rest.is_empty());
    // A CONNECT gives its place back.
    first
        .write_all(&connect_v5("first"))
        .await
        .expect("CONNECT");
    let connack = within("CONNACK", read_packet(&mut first)).await;
    assert_eq!(connack.header, 0x20);
    let mut fourth = TcpStream::connect(gateway.addr).await.expect("connect");
    fourth
        .write_all(&connect_v5("fourth"))
        .await
        .expect("CONNECT");
    let connack = within("CONNACK", read_packet(&mut fourth)).await;
    assert_eq!(connack.header, 0x20);
}

/// The largest partial packets one identity's connections may hold, in the tests below.
const IDENTITY_BUFFER_BOUND: u64 = 2 * 1024 * 1024;

/// A plaintext gateway whose identities may hold [`IDENTITY_BUFFER_BOUND`] in partial packets,
/// and whose clients have two minutes to send `CONNECT` (so that no connection in these tests
/// ends by that deadline).
async fn gateway_with_small_buffer_bound() -> Gateway {
    let mut config = BrokerConfig::default();
    config.limits.max_partial_frame_bytes_per_identity = IDENTITY_BUFFER_BOUND;
    Gateway::start_configured(
        config,
        cassini_mqtt::MqttOptions {
            allow_plaintext_loopback: true,
            connect_timeout: Duration::from_secs(120),
            ..cassini_mqtt::MqttOptions::new("127.0.0.1:0".parse().expect("addr"))
        },
    )
    .await
}

/// The start of a packet of type `header` announcing 1,000,000 bytes, and 900,000 of them,
/// beginning with `start`.
fn most_of_a_large_packet(header: u8, start: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    remaining_length(1_000_000, &mut out);
    out.extend_from_slice(start);
    out.resize(out.len() + 900_000 - start.len(), 0);
    out
}

/// Sends `bytes` on each of `connections` and reads each until the gateway closes it (the
/// last packet read before, if any), in tasks; the first to end is reported.
async fn first_closed(connections: Vec<TcpStream>, bytes: Vec<u8>) -> Option<Packet> {
    let (ended, mut first) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    for mut raw in connections {
        let (ended, bytes) = (ended.clone(), bytes.clone());
        tasks.spawn(async move {
            // A write the gateway cuts short by closing is the outcome looked for.
            let _ = raw.write_all(&bytes).await;
            let mut last = None;
            loop {
                let mut header = [0u8; 1];
                if raw.read_exact(&mut header).await.is_err() {
                    break;
                }
                let Some(packet) = read_rest(&mut raw, header[0]).await else {
                    break;
                };
                last = Some(packet);
            }
            let _ = ended.send(last);
        });
    }
    within("the gateway closes a connection", first.recv())
        .await
        .expect("a report")
}

/// The rest of a packet whose first byte was `header`; `None` if the connection ends first.
async fn read_rest(raw: &mut TcpStream, header: u8) -> Option<Packet> {
    let mut len = 0usize;
    for shift in 0..4 {
        let mut byte = [0u8; 1];
        raw.read_exact(&mut byte).await.ok()?;
        len |= usize::from(byte[0] & 0x7f) << (7 * shift);
        if byte[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    raw.read_exact(&mut body).await.ok()?;
    Some(Packet { header, body })
}

#[tokio::test]
async fn partial_connect_packets_of_one_identity_are_bounded_like_its_partial_frames() {
    let gateway = gateway_with_small_buffer_bound().await;
    // Six connections of one identity each hold most of a 1 MB CONNECT: together past the
    // identity's 2 MiB. The gateway closes some of them well before their CONNECT deadline.
    let mut connections = Vec::new();
    for _ in 0..6 {
        connections.push(TcpStream::connect(gateway.addr).await.expect("connect"));
    }
    // An MQTT 5 CONNECT's variable header, then (as if) a large will or password.
    let connect_start = [0, 4, b'M', b'Q', b'T', b'T', 5, 0b10, 0, 60, 0];
    first_closed(connections, most_of_a_large_packet(0x10, &connect_start)).await;
    let held = gateway.broker.broker.memory().frame_buffer_bytes as u64;
    assert!(
        held <= IDENTITY_BUFFER_BOUND,
        "the identity's buffers are counted and bounded: {held}"
    );
    // The connections are gone (`first_closed` dropped them): what they held is given back,
    // and a client of the same identity is served again.
    cassini_e2e::eventually("the buffers given back", || async {
        (gateway.broker.broker.memory().frame_buffer_bytes == 0).then_some(())
    })
    .await;
    drop(connected(&gateway, &connect_v5("small")).await);
}

#[tokio::test]
async fn partial_publishes_of_one_identity_are_bounded_and_end_with_quota_exceeded() {
    let gateway = gateway_with_small_buffer_bound().await;
    let mut connections = Vec::new();
    for i in 0..6 {
        connections.push(connected(&gateway, &connect_v5(&format!("hog{i}"))).await);
    }
    // Each sends most of a 1 MB QoS 0 PUBLISH: together past the identity's 2 MiB.
    let last = first_closed(connections, most_of_a_large_packet(0x30, &[0, 1, b't'])).await;
    let disconnect = last.expect("a DISCONNECT before the close");
    assert_eq!(disconnect.header, 0xE0, "DISCONNECT: {disconnect:?}");
    assert_eq!(
        disconnect.body.first(),
        Some(&0x97),
        "reason Quota exceeded: {disconnect:?}"
    );
}

#[tokio::test]
async fn a_message_mqtt_cannot_carry_is_not_delivered_to_mqtt_clients() {
    let gateway = plaintext_gateway().await;
    let mut raw = connected(&gateway, &connect_v5("strict")).await;
    raw.write_all(&subscribe(1, "metrics/#"))
        .await
        .expect("SUBSCRIBE");
    let suback = within("SUBACK", read_packet(&mut raw)).await;
    assert_eq!(suback.kind(), SUBACK);
    let quic = gateway.broker.client("feeder").await;
    // Valid Cassini topics, not valid MQTT topic names (§4.7.1): a strict client would close
    // its connection on them.
    for topic in ["metrics.cpu#1", "metrics.a+b"] {
        quic.publish(topic, bytes::Bytes::from_static(b"x"))
            .await
            .expect("publish");
    }
    quic.publish("metrics.ok", bytes::Bytes::from_static(b"fine"))
        .await
        .expect("publish");
    quic.flush().await.expect("flush");
    let delivery = within("the delivery", read_packet(&mut raw)).await;
    assert_eq!(delivery.kind(), 3, "PUBLISH: {delivery:?}");
    let topic_len = usize::from(u16::from_be_bytes([delivery.body[0], delivery.body[1]]));
    assert_eq!(
        &delivery.body[2..2 + topic_len],
        b"metrics/ok",
        "only the message MQTT can carry"
    );
}

#[tokio::test]
async fn unsuback_names_an_invalid_filter_apart_from_one_never_subscribed() {
    let gateway = plaintext_gateway().await;
    let mut raw = connected(&gateway, &connect_v5("leaver")).await;
    for (packet_id, filter, reason) in [(1u16, "a/#/b", 0x8F), (2, "never/x", 0x11)] {
        raw.write_all(&unsubscribe(packet_id, filter))
            .await
            .expect("UNSUBSCRIBE");
        let unsuback = within("UNSUBACK", read_packet(&mut raw)).await;
        assert_eq!(
            (unsuback.kind(), unsuback.packet_id(), unsuback.body.get(3)),
            (UNSUBACK, packet_id, Some(&reason)),
            "{filter}: {unsuback:?}"
        );
    }
}

#[tokio::test]
async fn a_takeover_of_a_session_that_ends_with_its_connection_starts_clean() {
    let gateway = plaintext_gateway().await;
    // MQTT 5, clean start, no Session Expiry Interval: the session ends with the connection.
    let mut first = connected(&gateway, &connect_v5("twin")).await;
    first
        .write_all(&subscribe(1, "twin/x"))
        .await
        .expect("SUBSCRIBE");
    let suback = within("SUBACK", read_packet(&mut first)).await;
    assert_eq!(suback.kind(), SUBACK);
    // A second connection of the client id, asking to carry on (Clean Start 0), while the
    // first is still connected (as after a half-open drop).
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0, 0, 60, 0];
    string("twin", &mut body);
    let mut second = TcpStream::connect(gateway.addr).await.expect("connect");
    second
        .write_all(&packet(0x10, &body))
        .await
        .expect("CONNECT");
    let connack = within("CONNACK", read_packet(&mut second)).await;
    assert_eq!(connack.header, 0x20, "{connack:?}");
    assert_eq!(
        (connack.body[0], connack.body[1]),
        (0, 0),
        "accepted, Session Present 0: the first's session ended with it"
    );
    second
        .write_all(&unsubscribe(2, "twin/x"))
        .await
        .expect("UNSUBSCRIBE");
    let unsuback = within("UNSUBACK", read_packet(&mut second)).await;
    assert_eq!(
        unsuback.body.get(3),
        Some(&0x11),
        "no subscription carried over: {unsuback:?}"
    );
}
