//! MQTT packets, 3.1.1 and 5.0, through one codec crate: rumqttc's `mqttbytes` (`v4` is MQTT
//! 3.1.1, `v5` is 5.0), which reads and writes every packet of both versions, client and server
//! side. This module gives the gateway one form of each packet whatever the version, and is the
//! only place that names the codec's types.
//!
//! What is checked here before the codec runs: the fixed header's reserved flags (MQTT requires
//! a connection with wrong flags to be closed), and, for the first packet, which version the
//! `CONNECT` speaks. A declared remaining length over the limit is refused by the codec before the
//! packet is read in full. Any error closes the connection (see `session`).

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::mqttbytes::QoS as QoS4;
use rumqttc::v5::mqttbytes::v5;
use rumqttc::v5::mqttbytes::QoS as QoS5;

/// The MQTT version a connection speaks, fixed by its `CONNECT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

impl Version {
    /// How `/connz` and the logs name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::V311 => "mqtt/3.1.1",
            Self::V5 => "mqtt/5",
        }
    }
}

/// A will message, as the `CONNECT` gave it (and as the gateway stores it in disk mode).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Will {
    /// The MQTT topic.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// Its QoS (0 to 2).
    pub qos: u8,
    /// Whether it is retained.
    pub retain: bool,
    /// MQTT 5 will delay interval, in seconds.
    pub delay_secs: u32,
    /// MQTT 5: the will message's own properties, forwarded as a `PUBLISH`'s are.
    pub properties: MessageProperties,
}

/// The MQTT 5 properties of an application message (a `PUBLISH`'s, or a will's) that a server
/// forwards to subscribers unaltered (MQTT 5 §3.3.2.3), and its Message Expiry Interval. All
/// absent for 3.1.1.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct MessageProperties {
    /// Payload Format Indicator: 0 unspecified bytes, 1 UTF-8.
    pub payload_format: Option<u8>,
    /// Message Expiry Interval, in seconds (to a client: what remains of it).
    pub message_expiry: Option<u32>,
    /// Content Type (a MIME type, or anything the applications agree on).
    pub content_type: Option<String>,
    /// Response Topic, as an MQTT topic.
    pub response_topic: Option<String>,
    /// Correlation Data (binary).
    pub correlation_data: Option<Bytes>,
    /// User properties, in order.
    pub user_properties: Vec<(String, String)>,
}

impl MessageProperties {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A `CONNECT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The version it speaks.
    pub version: Version,
    /// The client identifier (may be empty).
    pub client_id: String,
    /// Clean session (3.1.1) or clean start (5.0).
    pub clean_start: bool,
    /// Keep-alive in seconds; 0: none.
    pub keep_alive: u16,
    /// MQTT 5 session expiry interval, in seconds (absent: 0).
    pub session_expiry: Option<u32>,
    /// MQTT 5 receive maximum: how many QoS 1 deliveries the client takes unacknowledged.
    pub receive_maximum: Option<u16>,
    /// MQTT 5 maximum packet size the client accepts.
    pub max_packet_size: Option<u32>,
    /// MQTT 5 authentication method, if the client asks for enhanced authentication.
    pub authentication_method: Option<String>,
    /// The will message.
    pub will: Option<Will>,
}

/// A `PUBLISH`, either way.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Publish {
    /// The MQTT topic.
    pub topic: String,
    /// The packet id (QoS 1 and 2).
    pub pkid: u16,
    /// The QoS (0 to 2).
    pub qos: u8,
    /// The retain flag.
    pub retain: bool,
    /// The DUP flag.
    pub dup: bool,
    /// The payload.
    pub payload: Bytes,
    /// MQTT 5 message properties.
    pub properties: MessageProperties,
    /// MQTT 5 topic alias (from a client: the session resolves it; the gateway sends none).
    pub topic_alias: Option<u16>,
    /// MQTT 5 subscription identifiers of the subscription a delivery is for.
    pub subscription_ids: Vec<usize>,
}

/// One filter of a `SUBSCRIBE`, with its MQTT 5 options (all off, 0 or absent for 3.1.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscribeFilter {
    /// The MQTT filter.
    pub filter: String,
    /// The maximum QoS asked for (0 to 2).
    pub qos: u8,
    /// No Local: not the messages this client id publishes.
    pub no_local: bool,
    /// Retain As Published: deliveries carry the retain flag they were published with.
    pub retain_as_published: bool,
    /// Retain Handling: 0 retained values at every subscribe, 1 only if the subscription is
    /// new, 2 never.
    pub retain_handling: u8,
    /// The `SUBSCRIBE`'s Subscription Identifier.
    pub subscription_id: Option<usize>,
}

/// A packet from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// `CONNECT`.
    Connect(Connect),
    /// `PUBLISH`.
    Publish(Publish),
    /// `PUBACK` of a QoS 1 delivery.
    PubAck(u16),
    /// `PUBREC` (QoS 2 deliveries: the gateway sends none).
    PubRec(u16),
    /// `PUBREL` of a QoS 2 publish.
    PubRel(u16),
    /// `PUBCOMP` (QoS 2 deliveries: the gateway sends none).
    PubComp(u16),
    /// `SUBSCRIBE`.
    Subscribe {
        /// Packet id.
        pkid: u16,
        /// The filters, in order.
        filters: Vec<SubscribeFilter>,
    },
    /// `UNSUBSCRIBE`.
    Unsubscribe {
        /// Packet id.
        pkid: u16,
        /// The filters, in order.
        filters: Vec<String>,
    },
    /// `PINGREQ`.
    PingReq,
    /// `DISCONNECT`.
    Disconnect {
        /// MQTT 5: the client asks that its will be published (reason 0x04).
        with_will: bool,
        /// MQTT 5: a new session expiry interval.
        session_expiry: Option<u32>,
    },
    /// A packet only a server sends (`CONNACK`, `SUBACK`, ...) or `AUTH`: a protocol error.
    Unexpected(&'static str),
}

/// Why bytes from a client are not a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The declared remaining length passes the limit.
    #[error("packet of {size} bytes is larger than the maximum {max}")]
    TooLarge {
        /// The declared size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The `CONNECT` names a protocol level the gateway does not speak.
    #[error("unsupported protocol level {0}")]
    UnsupportedVersion(u8),
    /// Anything else: reserved flags, bad lengths, bad UTF-8, bad QoS, ...
    #[error("malformed packet: {0}")]
    Malformed(String),
}

/// Takes the next whole packet out of `buf`: `Ok(None)` until one is complete. `version` is
/// `None` until the `CONNECT` was read (and then only a `CONNECT` is accepted).
pub fn decode(
    buf: &mut BytesMut,
    version: Option<Version>,
    max_size: usize,
) -> Result<Option<Inbound>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    check_flags(first, version)?;
    let version = match version {
        Some(version) => version,
        None => {
            if first >> 4 != 1 {
                return Err(DecodeError::Malformed(
                    "the first packet is not CONNECT".into(),
                ));
            }
            match connect_level(buf)? {
                None => return Ok(None),
                Some(4) => Version::V311,
                Some(5) => Version::V5,
                Some(level) => return Err(DecodeError::UnsupportedVersion(level)),
            }
        }
    };
    if first >> 4 == 1 {
        binary_password::remove_binary_password(buf, version);
    }
    // The frame is checked whole first: once it is, the codec's "insufficient bytes" means a
    // packet shorter than its own fields say (malformed), not one still arriving.
    match version {
        Version::V311 => {
            match rumqttc::mqttbytes::check(buf.iter(), max_size) {
                Ok(_) => {}
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
                Err(rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(size)) => {
                    return Err(DecodeError::TooLarge {
                        size,
                        max: max_size,
                    })
                }
                Err(err) => return Err(DecodeError::Malformed(err.to_string())),
            }
            v4::Packet::read(buf, max_size)
                .map(|packet| Some(from_v4(packet)))
                .map_err(|err| DecodeError::Malformed(err.to_string()))
        }
        Version::V5 => {
            // A DISCONNECT with reason 0 and no properties may leave both out (MQTT 5
            // §3.14.2.1); rumqttc 0.25 refuses a zero remaining length on anything but pings.
            if buf.starts_with(&[0xE0, 0x00]) {
                let _ = buf.split_to(2);
                return Ok(Some(Inbound::Disconnect {
                    with_will: false,
                    session_expiry: None,
                }));
            }
            // One with a reason code and no properties may leave out the properties' length
            // (libmosquitto and paho send `E0 01 <reason>`); rumqttc 0.25 reads it regardless.
            if buf.starts_with(&[0xE0, 0x01]) {
                let Some(&reason) = buf.get(2) else {
                    return Ok(None);
                };
                let _ = buf.split_to(3);
                let mut whole = BytesMut::from(&[0xE0, 0x02, reason, 0x00][..]);
                return match v5::Packet::read(&mut whole, None) {
                    Ok(packet) => from_v5(packet).map(Some),
                    Err(err) => Err(DecodeError::Malformed(err.to_string())),
                };
            }
            let max = u32::try_from(max_size).unwrap_or(u32::MAX);
            match v5::check(buf.iter(), Some(max)) {
                Ok(_) => {}
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
                Err(rumqttc::v5::mqttbytes::Error::PayloadSizeLimitExceeded {
                    pkt_size, ..
                }) => {
                    return Err(DecodeError::TooLarge {
                        size: pkt_size,
                        max: max_size,
                    })
                }
                Err(err) => return Err(DecodeError::Malformed(err.to_string())),
            }
            match v5::Packet::read(buf, Some(max)) {
                Ok(packet) => from_v5(packet).map(Some),
                Err(err) => Err(DecodeError::Malformed(err.to_string())),
            }
        }
    }
}

/// MQTT fixes the low four bits of every fixed header but `PUBLISH`'s; a packet with other
/// flags is malformed (3.1.1 §2.2.2, 5.0 §2.1.3).
fn check_flags(first: u8, version: Option<Version>) -> Result<(), DecodeError> {
    let kind = first >> 4;
    let flags = first & 0x0F;
    let expected = match kind {
        3 => {
            if (flags >> 1) & 0b11 == 3 {
                return Err(DecodeError::Malformed("PUBLISH with QoS 3".into()));
            }
            return Ok(());
        }
        6 | 8 | 10 => 0b0010,
        1..=14 => 0,
        15 if version == Some(Version::V5) => 0,
        _ => return Err(DecodeError::Malformed(format!("packet type {kind}"))),
    };
    if flags != expected {
        return Err(DecodeError::Malformed(format!(
            "reserved flags {flags:#06b} on packet type {kind}"
        )));
    }
    Ok(())
}

/// The protocol level of the `CONNECT` at the start of `buf`, once enough of it is there to tell
/// (after the fixed header: the protocol name's length, the name, the level).
fn connect_level(buf: &BytesMut) -> Result<Option<u8>, DecodeError> {
    let mut at = 1;
    for shift in 0..4 {
        let Some(&byte) = buf.get(at) else {
            return Ok(None);
        };
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if shift == 3 {
            return Err(DecodeError::Malformed("remaining length too long".into()));
        }
    }
    let (Some(&high), Some(&low)) = (buf.get(at), buf.get(at + 1)) else {
        return Ok(None);
    };
    let name_len = usize::from(u16::from_be_bytes([high, low]));
    let Some(name) = buf.get(at + 2..at + 2 + name_len) else {
        return Ok(None);
    };
    let Some(&level) = buf.get(at + 2 + name_len) else {
        return Ok(None);
    };
    if name != b"MQTT" {
        return Err(DecodeError::UnsupportedVersion(level));
    }
    Ok(Some(level))
}

fn qos4(qos: QoS4) -> u8 {
    qos as u8
}

fn qos5(qos: QoS5) -> u8 {
    qos as u8
}

fn from_v4(packet: v4::Packet) -> Inbound {
    match packet {
        v4::Packet::Connect(connect) => Inbound::Connect(Connect {
            version: Version::V311,
            client_id: connect.client_id,
            clean_start: connect.clean_session,
            keep_alive: connect.keep_alive,
            session_expiry: None,
            receive_maximum: None,
            max_packet_size: None,
            authentication_method: None,
            will: connect.last_will.map(|will| Will {
                topic: will.topic,
                payload: will.message,
                qos: qos4(will.qos),
                retain: will.retain,
                delay_secs: 0,
                properties: MessageProperties::default(),
            }),
        }),
        v4::Packet::Publish(publish) => Inbound::Publish(Publish {
            topic: publish.topic,
            pkid: publish.pkid,
            qos: qos4(publish.qos),
            retain: publish.retain,
            dup: publish.dup,
            payload: publish.payload,
            ..Publish::default()
        }),
        v4::Packet::PubAck(ack) => Inbound::PubAck(ack.pkid),
        v4::Packet::PubRec(rec) => Inbound::PubRec(rec.pkid),
        v4::Packet::PubRel(rel) => Inbound::PubRel(rel.pkid),
        v4::Packet::PubComp(comp) => Inbound::PubComp(comp.pkid),
        v4::Packet::Subscribe(subscribe) => Inbound::Subscribe {
            pkid: subscribe.pkid,
            filters: subscribe
                .filters
                .into_iter()
                .map(|filter| SubscribeFilter {
                    filter: filter.path,
                    qos: qos4(filter.qos),
                    ..SubscribeFilter::default()
                })
                .collect(),
        },
        v4::Packet::Unsubscribe(unsubscribe) => Inbound::Unsubscribe {
            pkid: unsubscribe.pkid,
            filters: unsubscribe.topics,
        },
        v4::Packet::PingReq => Inbound::PingReq,
        v4::Packet::Disconnect => Inbound::Disconnect {
            with_will: false,
            session_expiry: None,
        },
        v4::Packet::ConnAck(_) => Inbound::Unexpected("CONNACK"),
        v4::Packet::SubAck(_) => Inbound::Unexpected("SUBACK"),
        v4::Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
        v4::Packet::PingResp => Inbound::Unexpected("PINGRESP"),
    }
}

/// The message properties of an MQTT 5 `PUBLISH` or will, taken out of `$properties`: the same
/// six fields in rumqttc's `PublishProperties` and `LastWillProperties`, which share no type.
macro_rules! message_properties {
    ($properties:ident) => {
        MessageProperties {
            payload_format: $properties.payload_format_indicator,
            message_expiry: $properties.message_expiry_interval,
            content_type: $properties.content_type,
            response_topic: $properties.response_topic,
            correlation_data: $properties.correlation_data,
            user_properties: $properties.user_properties,
        }
    };
}

fn from_v5(packet: v5::Packet) -> Result<Inbound, DecodeError> {
    let utf8 = |bytes: Bytes, what: &str| {
        String::from_utf8(bytes.to_vec())
            .map_err(|_| DecodeError::Malformed(format!("{what} is not UTF-8")))
    };
    Ok(match packet {
        v5::Packet::Connect(connect, will, _login) => {
            let properties = connect.properties.as_ref();
            Inbound::Connect(Connect {
                version: Version::V5,
                session_expiry: properties.and_then(|p| p.session_expiry_interval),
                receive_maximum: properties.and_then(|p| p.receive_maximum),
                max_packet_size: properties.and_then(|p| p.max_packet_size),
                authentication_method: properties.and_then(|p| p.authentication_method.clone()),
                client_id: connect.client_id,
                clean_start: connect.clean_start,
                keep_alive: connect.keep_alive,
                will: match will {
                    Some(will) => {
                        let (delay_secs, properties) = match will.properties {
                            Some(properties) => (
                                properties.delay_interval.unwrap_or(0),
                                message_properties!(properties),
                            ),
                            None => (0, MessageProperties::default()),
                        };
                        Some(Will {
                            topic: utf8(will.topic, "the will topic")?,
                            payload: will.message,
                            qos: qos5(will.qos),
                            retain: will.retain,
                            delay_secs,
                            properties,
                        })
                    }
                    None => None,
                },
            })
        }
        v5::Packet::Publish(publish) => {
            let properties = publish.properties.unwrap_or_default();
            Inbound::Publish(Publish {
                topic: utf8(publish.topic, "the topic")?,
                pkid: publish.pkid,
                qos: qos5(publish.qos),
                retain: publish.retain,
                dup: publish.dup,
                payload: publish.payload,
                properties: message_properties!(properties),
                topic_alias: properties.topic_alias,
                subscription_ids: Vec::new(),
            })
        }
        v5::Packet::PubAck(ack) => Inbound::PubAck(ack.pkid),
        v5::Packet::PubRec(rec) => Inbound::PubRec(rec.pkid),
        v5::Packet::PubRel(rel) => Inbound::PubRel(rel.pkid),
        v5::Packet::PubComp(comp) => Inbound::PubComp(comp.pkid),
        v5::Packet::Subscribe(subscribe) => {
            let subscription_id = subscribe.properties.and_then(|properties| properties.id);
            if subscription_id == Some(0) {
                return Err(DecodeError::Malformed("subscription identifier 0".into()));
            }
            Inbound::Subscribe {
                pkid: subscribe.pkid,
                filters: subscribe
                    .filters
                    .into_iter()
                    .map(|filter| SubscribeFilter {
                        filter: filter.path,
                        qos: qos5(filter.qos),
                        no_local: filter.nolocal,
                        retain_as_published: filter.preserve_retain,
                        retain_handling: match filter.retain_forward_rule {
                            v5::RetainForwardRule::OnEverySubscribe => 0,
                            v5::RetainForwardRule::OnNewSubscribe => 1,
                            v5::RetainForwardRule::Never => 2,
                        },
                        subscription_id,
                    })
                    .collect(),
            }
        }
        v5::Packet::Unsubscribe(unsubscribe) => Inbound::Unsubscribe {
            pkid: unsubscribe.pkid,
            filters: unsubscribe.filters,
        },
        v5::Packet::PingReq(_) => Inbound::PingReq,
        v5::Packet::Disconnect(disconnect) => Inbound::Disconnect {
            with_will: disconnect.reason_code
                == v5::DisconnectReasonCode::DisconnectWithWillMessage,
            session_expiry: disconnect
                .properties
                .and_then(|properties| properties.session_expiry_interval),
        },
        v5::Packet::Auth(_) => Inbound::Unexpected("AUTH"),
        v5::Packet::ConnAck(_) => Inbound::Unexpected("CONNACK"),
        v5::Packet::SubAck(_) => Inbound::Unexpected("SUBACK"),
        v5::Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
        v5::Packet::PingResp(_) => Inbound::Unexpected("PINGRESP"),
    })
}

/// The outcome of a `CONNECT`, in both versions' terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectCode {
    /// Accepted.
    Accepted,
    /// The protocol level is not 4 or 5.
    UnsupportedVersion,
    /// The client id has no Cassini session name, or another identity's client holds it.
    BadClientId,
    /// The broker refused the identity (a revoked or expired certificate, or the ACL).
    NotAuthorized,
    /// A connection or session limit.
    QuotaExceeded,
    /// The broker is stopping or failed.
    Unavailable,
    /// The `CONNECT` was malformed.
    Malformed,
    /// MQTT 5: the `CONNECT` broke a rule (a Receive Maximum of 0).
    ProtocolError,
    /// MQTT 5: the will asks for QoS 2, above the maximum QoS 1.
    QosNotSupported,
    /// The will's topic (or response topic) has no Cassini form (3.1.1: server unavailable).
    TopicNameInvalid,
    /// MQTT 5: an authentication method was named; none is supported.
    BadAuthenticationMethod,
}

/// What a `CONNACK` announces besides its code.
#[derive(Debug, Clone, Default)]
pub struct ConnAckInfo {
    /// A session was resumed.
    pub session_present: bool,
    /// MQTT 5: the client id the gateway chose for an empty one.
    pub assigned_client_id: Option<String>,
    /// MQTT 5: the largest packet the gateway accepts.
    pub max_packet_size: Option<u32>,
    /// MQTT 5: the Session Expiry Interval granted, when it is not the one asked for.
    pub session_expiry: Option<u32>,
    /// MQTT 5: a reason for a refusal.
    pub reason: Option<String>,
    /// MQTT 5: the highest topic alias a client may use.
    pub topic_alias_maximum: Option<u16>,
}

/// Subscription outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubCode {
    /// Granted at this QoS.
    Granted(u8),
    /// The ACL refused it.
    NotAuthorized,
    /// The filter has no Cassini form, or the broker refused it as invalid.
    FilterInvalid,
    /// A subscription or memory limit.
    QuotaExceeded,
    /// Anything else.
    Unspecified,
}

/// Unsubscription outcomes (MQTT 5 `UNSUBACK` reason codes; 3.1.1 has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsubCode {
    /// The subscription ended.
    Success,
    /// The session held no subscription of that filter.
    NoSubscriptionExisted,
    /// The filter has no Cassini form.
    FilterInvalid,
    /// The ACL refused it.
    NotAuthorized,
    /// Anything else.
    Unspecified,
}

/// Publish outcomes (MQTT 5 `PUBACK` reason codes; 3.1.1 has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PubCode {
    /// Accepted.
    Success,
    /// Accepted, and no subscription matched.
    NoMatchingSubscribers,
    /// The ACL refused it.
    NotAuthorized,
    /// The topic has no Cassini form or broke a topic rule.
    TopicNameInvalid,
    /// A size, memory, storage or quota limit.
    QuotaExceeded,
    /// Anything else.
    Unspecified,
}

/// Why the gateway closes a connection (MQTT 5 `DISCONNECT` reason codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// Malformed packet.
    Malformed,
    /// Protocol error.
    ProtocolError,
    /// Not authorized (revoked certificate).
    NotAuthorized,
    /// The broker is stopping.
    ShuttingDown,
    /// No packet for 1.5 keep-alives.
    KeepAliveTimeout,
    /// Another connection took the session over.
    SessionTakenOver,
    /// A packet over the size limit.
    PacketTooLarge,
    /// QoS 2 publish to an MQTT 5 gateway that announced maximum QoS 1.
    QosNotSupported,
    /// Topic alias 0 or above the Topic Alias Maximum.
    TopicAliasInvalid,
    /// A limit.
    QuotaExceeded,
    /// Administrative action (e.g. a certificate no longer valid).
    Administrative,
    /// Anything else.
    Unspecified,
}

impl CloseCode {
    /// What an MQTT 5 client reads as the reason string.
    pub fn text(self) -> &'static str {
        match self {
            Self::Malformed => "malformed packet",
            Self::ProtocolError => "protocol error",
            Self::NotAuthorized => "not authorized (certificate revoked)",
            Self::ShuttingDown => "server shutting down",
            Self::KeepAliveTimeout => "no packet within 1.5 keep-alive periods",
            Self::SessionTakenOver => "session taken over by a newer connection",
            Self::PacketTooLarge => "packet larger than the maximum packet size",
            Self::QosNotSupported => "QoS 2 is not supported: maximum QoS is 1",
            Self::TopicAliasInvalid => "topic alias 0 or above the Topic Alias Maximum",
            Self::QuotaExceeded => "a limit was reached",
            Self::Administrative => {
                "closed by the server (certificate no longer valid, or the gateway stopped)"
            }
            Self::Unspecified => "closed by the server",
        }
    }
}

fn v4qos(qos: u8) -> QoS4 {
    match qos {
        0 => QoS4::AtMostOnce,
        1 => QoS4::AtLeastOnce,
        _ => QoS4::ExactlyOnce,
    }
}

fn v5qos(qos: u8) -> QoS5 {
    match qos {
        0 => QoS5::AtMostOnce,
        1 => QoS5::AtLeastOnce,
        _ => QoS5::ExactlyOnce,
    }
}

/// Writes packets to a client of one version.
#[derive(Debug, Clone, Copy)]
pub struct Encoder {
    /// The version.
    pub version: Version,
    /// MQTT 5: the largest packet the client accepts (a larger delivery is dropped).
    pub max_packet_size: Option<u32>,
}

/// A packet the gateway could not write (too large for the client).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode: {0}")]
pub struct EncodeError(String);

impl Encoder {
    fn v4(&self, packet: v4::Packet, buf: &mut BytesMut) -> Result<(), EncodeError> {
        packet
            .write(buf, usize::MAX)
            .map(|_| ())
            .map_err(|err| EncodeError(err.to_string()))
    }

    fn v5(&self, packet: v5::Packet, buf: &mut BytesMut) -> Result<(), EncodeError> {
        packet
            .write(buf, self.max_packet_size)
            .map(|_| ())
            .map_err(|err| EncodeError(err.to_string()))
    }

    /// `CONNACK`.
    pub fn connack(
        &self,
        code: ConnectCode,
        info: ConnAckInfo,
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        match self.version {
            Version::V311 => {
                let code = match code {
                    ConnectCode::Accepted => v4::ConnectReturnCode::Success,
                    ConnectCode::UnsupportedVersion => {
                        v4::ConnectReturnCode::RefusedProtocolVersion
                    }
                    ConnectCode::BadClientId => v4::ConnectReturnCode::BadClientId,
                    ConnectCode::NotAuthorized => v4::ConnectReturnCode::NotAuthorized,
                    ConnectCode::QuotaExceeded
                    | ConnectCode::Unavailable
                    | ConnectCode::Malformed
                    | ConnectCode::ProtocolError
                    | ConnectCode::QosNotSupported
                    | ConnectCode::TopicNameInvalid
                    | ConnectCode::BadAuthenticationMethod => {
                        v4::ConnectReturnCode::ServiceUnavailable
                    }
                };
                let session_present =
                    info.session_present && code == v4::ConnectReturnCode::Success;
                self.v4(
                    v4::Packet::ConnAck(v4::ConnAck::new(code, session_present)),
                    buf,
                )
            }
            Version::V5 => {
                let accepted = code == ConnectCode::Accepted;
                let code = match code {
                    ConnectCode::Accepted => v5::ConnectReturnCode::Success,
                    ConnectCode::UnsupportedVersion => {
                        v5::ConnectReturnCode::UnsupportedProtocolVersion
                    }
                    ConnectCode::BadClientId => v5::ConnectReturnCode::ClientIdentifierNotValid,
                    ConnectCode::NotAuthorized => v5::ConnectReturnCode::NotAuthorized,
                    ConnectCode::QuotaExceeded => v5::ConnectReturnCode::QuotaExceeded,
                    ConnectCode::Unavailable => v5::ConnectReturnCode::ServerUnavailable,
                    ConnectCode::Malformed => v5::ConnectReturnCode::MalformedPacket,
                    ConnectCode::ProtocolError => v5::ConnectReturnCode::ProtocolError,
                    ConnectCode::QosNotSupported => v5::ConnectReturnCode::QoSNotSupported,
                    ConnectCode::TopicNameInvalid => v5::ConnectReturnCode::TopicNameInvalid,
                    ConnectCode::BadAuthenticationMethod => {
                        v5::ConnectReturnCode::BadAuthenticationMethod
                    }
                };
                let properties = v5::ConnAckProperties {
                    session_expiry_interval: info.session_expiry,
                    receive_max: None,
                    max_qos: Some(1),
                    retain_available: Some(1),
                    max_packet_size: info.max_packet_size,
                    assigned_client_identifier: info.assigned_client_id,
                    topic_alias_max: info.topic_alias_maximum,
                    reason_string: info.reason,
                    user_properties: Vec::new(),
                    wildcard_subscription_available: Some(1),
                    subscription_identifiers_available: Some(1),
                    shared_subscription_available: Some(1),
                    server_keep_alive: None,
                    response_information: None,
                    server_reference: None,
                    authentication_method: None,
                    authentication_data: None,
                };
                let connack = v5::ConnAck {
                    session_present: info.session_present && accepted,
                    code,
                    properties: Some(properties),
                };
                self.v5(v5::Packet::ConnAck(connack), buf)
            }
        }
    }

    /// `PUBLISH` of a delivery.
    pub fn publish(&self, publish: Publish, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match self.version {
            Version::V311 => {
                let packet = v4::Publish {
                    dup: publish.dup,
                    qos: v4qos(publish.qos),
                    retain: publish.retain,
                    topic: publish.topic,
                    pkid: publish.pkid,
                    payload: publish.payload,
                };
                self.v4(v4::Packet::Publish(packet), buf)
            }
            Version::V5 => {
                let message = publish.properties;
                let properties = (!message.is_empty() || !publish.subscription_ids.is_empty())
                    .then(|| v5::PublishProperties {
                        payload_format_indicator: message.payload_format,
                        message_expiry_interval: message.message_expiry,
                        topic_alias: None,
                        response_topic: message.response_topic,
                        correlation_data: message.correlation_data,
                        user_properties: message.user_properties,
                        subscription_identifiers: publish.subscription_ids,
                        content_type: message.content_type,
                    });
                let packet = v5::Publish {
                    dup: publish.dup,
                    qos: v5qos(publish.qos),
                    retain: publish.retain,
                    topic: Bytes::from(publish.topic),
                    pkid: publish.pkid,
                    payload: publish.payload,
                    properties,
                };
                self.v5(v5::Packet::Publish(packet), buf)
            }
        }
    }

    /// `PUBACK`.
    pub fn puback(&self, pkid: u16, code: PubCode, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match self.version {
            Version::V311 => self.v4(v4::Packet::PubAck(v4::PubAck::new(pkid)), buf),
            Version::V5 => {
                let reason = match code {
                    PubCode::Success => v5::PubAckReason::Success,
                    PubCode::NoMatchingSubscribers => v5::PubAckReason::NoMatchingSubscribers,
                    PubCode::NotAuthorized => v5::PubAckReason::NotAuthorized,
                    PubCode::TopicNameInvalid => v5::PubAckReason::TopicNameInvalid,
                    PubCode::QuotaExceeded => v5::PubAckReason::QuotaExceeded,
                    PubCode::Unspecified => v5::PubAckReason::UnspecifiedError,
                };
                let ack = v5::PubAck {
                    pkid,
                    reason,
                    properties: None,
                };
                self.v5(v5::Packet::PubAck(ack), buf)
            }
        }
    }

    /// `PUBREC` of a QoS 2 publish (3.1.1 only; MQTT 5 clients are told maximum QoS 1).
    pub fn pubrec(&self, pkid: u16, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match self.version {
            Version::V311 => self.v4(v4::Packet::PubRec(v4::PubRec::new(pkid)), buf),
            Version::V5 => self.v5(v5::Packet::PubRec(v5::PubRec::new(pkid, None)), buf),
        }
    }

    /// `PUBCOMP` after a `PUBREL`.
    pub fn pubcomp(&self, pkid: u16, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match self.version {
            Version::V311 => self.v4(v4::Packet::PubComp(v4::PubComp::new(pkid)), buf),
            Version::V5 => self.v5(v5::Packet::PubComp(v5::PubComp::new(pkid, None)), buf),
        }
    }

    /// `SUBACK`.
    pub fn suback(
        &self,
        pkid: u16,
        codes: &[SubCode],
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        match self.version {
            Version::V311 => {
                let codes = codes
                    .iter()
                    .map(|code| match code {
                        SubCode::Granted(qos) => v4::SubscribeReasonCode::Success(v4qos(*qos)),
                        _ => v4::SubscribeReasonCode::Failure,
                    })
                    .collect();
                self.v4(v4::Packet::SubAck(v4::SubAck::new(pkid, codes)), buf)
            }
            Version::V5 => {
                let codes = codes
                    .iter()
                    .map(|code| match code {
                        SubCode::Granted(qos) => v5::SubscribeReasonCode::Success(v5qos(*qos)),
                        SubCode::NotAuthorized => v5::SubscribeReasonCode::NotAuthorized,
                        SubCode::FilterInvalid => v5::SubscribeReasonCode::TopicFilterInvalid,
                        SubCode::QuotaExceeded => v5::SubscribeReasonCode::QuotaExceeded,
                        SubCode::Unspecified => v5::SubscribeReasonCode::Unspecified,
                    })
                    .collect();
                let ack = v5::SubAck {
                    pkid,
                    return_codes: codes,
                    properties: None,
                };
                self.v5(v5::Packet::SubAck(ack), buf)
            }
        }
    }

    /// `UNSUBACK`: `codes[i]` is the outcome for the i-th filter.
    pub fn unsuback(
        &self,
        pkid: u16,
        codes: &[UnsubCode],
        buf: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        match self.version {
            Version::V311 => self.v4(v4::Packet::UnsubAck(v4::UnsubAck::new(pkid)), buf),
            Version::V5 => {
                let reasons = codes
                    .iter()
                    .map(|code| match code {
                        UnsubCode::Success => v5::UnsubAckReason::Success,
                        UnsubCode::NoSubscriptionExisted => {
                            v5::UnsubAckReason::NoSubscriptionExisted
                        }
                        UnsubCode::FilterInvalid => v5::UnsubAckReason::TopicFilterInvalid,
                        UnsubCode::NotAuthorized => v5::UnsubAckReason::NotAuthorized,
                        UnsubCode::Unspecified => v5::UnsubAckReason::UnspecifiedError,
                    })
                    .collect();
                let ack = v5::UnsubAck {
                    pkid,
                    reasons,
                    properties: None,
                };
                self.v5(v5::Packet::UnsubAck(ack), buf)
            }
        }
    }

    /// `PINGRESP`.
    pub fn pingresp(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match self.version {
            Version::V311 => self.v4(v4::Packet::PingResp, buf),
            Version::V5 => self.v5(v5::Packet::PingResp(v5::PingResp), buf),
        }
    }

    /// MQTT 5 `DISCONNECT` with `code`; nothing for 3.1.1, where a server just closes.
    pub fn disconnect(&self, code: CloseCode, buf: &mut BytesMut) -> Result<(), EncodeError> {
        if self.version == Version::V311 {
            return Ok(());
        }
        use v5::DisconnectReasonCode as R;
        let reason_code = match code {
            CloseCode::Malformed => R::MalformedPacket,
            CloseCode::ProtocolError => R::ProtocolError,
            CloseCode::NotAuthorized => R::NotAuthorized,
            CloseCode::ShuttingDown => R::ServerShuttingDown,
            CloseCode::KeepAliveTimeout => R::KeepAliveTimeout,
            CloseCode::SessionTakenOver => R::SessionTakenOver,
            CloseCode::PacketTooLarge => R::PacketTooLarge,
            CloseCode::QosNotSupported => R::QoSNotSupported,
            CloseCode::TopicAliasInvalid => R::TopicAliasInvalid,
            CloseCode::QuotaExceeded => R::QuotaExceeded,
            CloseCode::Administrative => R::AdministrativeAction,
            CloseCode::Unspecified => R::UnspecifiedError,
        };
        // With a reason string: rumqttc 0.25 writes a DISCONNECT with a reason code and no
        // properties one byte longer than its remaining length says.
        let packet = v5::Disconnect {
            reason_code,
            properties: Some(v5::DisconnectProperties {
                session_expiry_interval: None,
                reason_string: Some(code.text().to_string()),
                user_properties: Vec::new(),
                server_reference: None,
            }),
        };
        self.v5(v5::Packet::Disconnect(packet), buf)
    }
}

mod binary_password;

#[cfg(test)]
mod tests {
    use super::*;

    fn encoders() -> [Encoder; 2] {
        [Version::V311, Version::V5].map(|version| Encoder {
            version,
            max_packet_size: None,
        })
    }

    /// Every packet the gateway writes reads back whole with the codec a client would use.
    fn reads_back(encoder: &Encoder, buf: &mut BytesMut) {
        let written = buf.len();
        assert!(written > 0);
        match encoder.version {
            Version::V311 => {
                v4::Packet::read(buf, usize::MAX).expect("3.1.1 packet reads back");
            }
            Version::V5 => {
                v5::Packet::read(buf, None).expect("5.0 packet reads back");
            }
        }
        assert!(buf.is_empty(), "{} bytes left over of {written}", buf.len());
    }

    #[test]
    fn a_connect_with_a_password_that_is_not_utf8_is_read_without_it() {
        // MQTT 5 CONNECT: clean start, username and password, keep-alive 60, no properties.
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0b1100_0010, 0, 60, 0];
        for field in [&b"dev-1"[..], b"user", &[0xFF, 0xFE, 0x00][..]] {
            body.extend_from_slice(&(field.len() as u16).to_be_bytes());
            body.extend_from_slice(field);
        }
        let mut buf = BytesMut::from(&[0x10, body.len() as u8][..]);
        buf.extend_from_slice(&body);
        buf.extend_from_slice(&[0xC0, 0x00]); // a PINGREQ right behind it
        match decode(&mut buf, None, 1024) {
            Ok(Some(Inbound::Connect(connect))) => assert_eq!(connect.client_id, "dev-1"),
            other => panic!("expected the CONNECT, got {other:?}"),
        }
        assert_eq!(
            decode(&mut buf, Some(Version::V5), 1024),
            Ok(Some(Inbound::PingReq)),
            "what follows is untouched"
        );
    }

    #[test]
    fn a_disconnect_may_carry_its_reason_code_alone() {
        let decoded = |bytes: &[u8]| {
            let mut buf = BytesMut::from(bytes);
            let packet = decode(&mut buf, Some(Version::V5), 1024);
            (packet, buf.len())
        };
        let normal = Inbound::Disconnect {
            with_will: false,
            session_expiry: None,
        };
        assert_eq!(decoded(&[0xE0, 0x01, 0x00]), (Ok(Some(normal)), 0));
        let with_will = Inbound::Disconnect {
            with_will: true,
            session_expiry: None,
        };
        assert_eq!(decoded(&[0xE0, 0x01, 0x04, 0xC0]), (Ok(Some(with_will)), 1));
        assert_eq!(decoded(&[0xE0, 0x01]), (Ok(None), 2), "still arriving");
        assert!(
            matches!(
                decoded(&[0xE0, 0x01, 0x05]).0,
                Err(DecodeError::Malformed(_))
            ),
            "not a reason code DISCONNECT may carry"
        );
    }

    #[test]
    fn outgoing_packets_are_well_formed() {
        for encoder in encoders() {
            let mut buf = BytesMut::new();
            for code in [ConnectCode::Accepted, ConnectCode::NotAuthorized] {
                encoder
                    .connack(code, ConnAckInfo::default(), &mut buf)
                    .expect("connack");
                reads_back(&encoder, &mut buf);
            }
            for code in [PubCode::Success, PubCode::NotAuthorized] {
                encoder.puback(7, code, &mut buf).expect("puback");
                reads_back(&encoder, &mut buf);
            }
            encoder
                .suback(3, &[SubCode::Granted(1), SubCode::NotAuthorized], &mut buf)
                .expect("suback");
            reads_back(&encoder, &mut buf);
            encoder
                .unsuback(
                    4,
                    &[
                        UnsubCode::Success,
                        UnsubCode::NoSubscriptionExisted,
                        UnsubCode::FilterInvalid,
                        UnsubCode::NotAuthorized,
                        UnsubCode::Unspecified,
                    ],
                    &mut buf,
                )
                .expect("unsuback");
            reads_back(&encoder, &mut buf);
            encoder.pingresp(&mut buf).expect("pingresp");
            reads_back(&encoder, &mut buf);
            encoder.pubrec(5, &mut buf).expect("pubrec");
            reads_back(&encoder, &mut buf);
            encoder.pubcomp(5, &mut buf).expect("pubcomp");
            reads_back(&encoder, &mut buf);
            let publish = Publish {
                topic: "a/b".into(),
                pkid: 9,
                qos: 1,
                payload: Bytes::from_static(b"x"),
                properties: MessageProperties {
                    payload_format: Some(1),
                    message_expiry: Some(30),
                    content_type: Some("text/plain".into()),
                    response_topic: Some("replies/1".into()),
                    correlation_data: Some(Bytes::from_static(&[0, 0xFF, 7])),
                    user_properties: vec![("k".into(), "v".into())],
                },
                subscription_ids: vec![4],
                ..Publish::default()
            };
            encoder.publish(publish, &mut buf).expect("publish");
            reads_back(&encoder, &mut buf);
            if encoder.version == Version::V5 {
                for code in [CloseCode::Malformed, CloseCode::SessionTakenOver] {
                    encoder.disconnect(code, &mut buf).expect("disconnect");
                    reads_back(&encoder, &mut buf);
                }
            }
        }
    }

    #[test]
    fn reserved_flags_and_qos_3_are_malformed() {
        for bytes in [
            &[0x82u8, 0][..],
            &[0x80, 0],
            &[0x36, 0],
            &[0xC1, 0],
            &[0x00, 0],
        ] {
            let mut buf = BytesMut::from(bytes);
            assert!(
                matches!(
                    decode(&mut buf, Some(Version::V5), 1024),
                    Err(DecodeError::Malformed(_))
                ),
                "{bytes:?}"
            );
        }
        let mut ping = BytesMut::from(&[0xC0u8, 0][..]);
        assert_eq!(
            decode(&mut ping, Some(Version::V311), 1024),
            Ok(Some(Inbound::PingReq))
        );
    }

    #[test]
    fn the_connect_decides_the_version() {
        let mut v311 =
            BytesMut::from(&[0x10u8, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0][..]);
        match decode(&mut v311, None, 1024) {
            Ok(Some(Inbound::Connect(connect))) => assert_eq!(connect.version, Version::V311),
            other => panic!("{other:?}"),
        }
        let mut v5 = BytesMut::from(
            &[
                0x10u8, 13, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0, 0, 0,
            ][..],
        );
        match decode(&mut v5, None, 1024) {
            Ok(Some(Inbound::Connect(connect))) => assert_eq!(connect.version, Version::V5),
            other => panic!("{other:?}"),
        }
        let mut v31 = BytesMut::from(
            &[
                0x10u8, 14, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 60, 0, 0,
            ][..],
        );
        assert_eq!(
            decode(&mut v31, None, 1024),
            Err(DecodeError::UnsupportedVersion(3))
        );
        let mut partial = BytesMut::from(&[0x10u8, 12, 0, 4, b'M'][..]);
        assert_eq!(decode(&mut partial, None, 1024), Ok(None));
        let mut huge = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x80, 0x60][..]);
        assert!(matches!(
            decode(&mut huge, Some(Version::V311), 1024),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
