//! How an MQTT 5 message's properties travel through Cassini, both ways (docs/MQTT.md, "Message
//! properties"): User Properties are Cassini headers, Response Topic is `reply_to` (mapped), and
//! what Cassini has no field for is one of the gateway's `mqtt-*` headers, so that a server
//! forwards them unaltered (MQTT 5 §3.3.2.3) to MQTT subscribers and a QUIC client reads and
//! writes them as headers.
//!
//! The gateway owns the `mqtt-*` headers listed here: it removes them from MQTT clients' user
//! properties (a client cannot forge them) and from deliveries to MQTT clients (they become
//! properties again, or nothing). No I/O here.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;

use crate::packets::MessageProperties;
use crate::topics::{self, Unmappable};

/// When a message expires, in milliseconds since the Unix epoch (the Message Expiry Interval
/// from the gateway's clock at publish time).
pub(crate) const EXPIRES_AT_HEADER: &str = "mqtt-expires-at";
/// `1` on a message an MQTT client published with the retain flag, for Retain As Published
/// subscriptions.
pub(crate) const RETAIN_HEADER: &str = "mqtt-retain";
/// The client id that published a message, when that client holds a No Local subscription.
pub(crate) const ORIGIN_HEADER: &str = "mqtt-origin";
/// The Payload Format Indicator as published: `0` (unspecified bytes) or `1` (UTF-8).
pub(crate) const PAYLOAD_FORMAT_HEADER: &str = "mqtt-payload-format";
/// The Content Type, as published.
pub(crate) const CONTENT_TYPE_HEADER: &str = "mqtt-content-type";
/// The Correlation Data, in standard base64 with padding (RFC 4648 §4): a header value is a
/// string, correlation data any bytes.
pub(crate) const CORRELATION_DATA_HEADER: &str = "mqtt-correlation-data";

/// Whether `name` is a header the gateway writes and reads (never passed on as a user property,
/// nor taken from one).
pub(crate) fn gateway_header(name: &str) -> bool {
    matches!(
        name,
        EXPIRES_AT_HEADER
            | RETAIN_HEADER
            | ORIGIN_HEADER
            | PAYLOAD_FORMAT_HEADER
            | CONTENT_TYPE_HEADER
            | CORRELATION_DATA_HEADER
    )
}

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// A message into Cassini: its headers and `reply_to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outgoing {
    /// The user properties, then the gateway's headers.
    pub(crate) headers: Vec<(String, String)>,
    /// The Response Topic in Cassini's form.
    pub(crate) reply_to: Option<String>,
}

/// The Cassini headers and `reply_to` of a message published with `properties` (and the retain
/// flag `retain`) at `now_ms`. A Response Topic with no Cassini form is an error.
pub(crate) fn to_cassini(
    properties: MessageProperties,
    retain: bool,
    now_ms: u64,
) -> Result<Outgoing, Unmappable> {
    let reply_to = properties
        .response_topic
        .as_deref()
        .map(topics::topic_to_cassini)
        .transpose()?;
    let mut headers = properties.user_properties;
    headers.retain(|(name, _)| !gateway_header(name));
    let mut add = |name: &str, value: String| headers.push((name.to_string(), value));
    // 0 is no expiry, as Mosquitto takes it (not "expired on arrival").
    if let Some(secs) = properties.message_expiry.filter(|&secs| secs > 0) {
        let at = now_ms.saturating_add(u64::from(secs) * 1000);
        add(EXPIRES_AT_HEADER, at.to_string());
    }
    if retain {
        add(RETAIN_HEADER, "1".to_string());
    }
    if let Some(format) = properties.payload_format {
        add(PAYLOAD_FORMAT_HEADER, format.to_string());
    }
    if let Some(content_type) = properties.content_type {
        add(CONTENT_TYPE_HEADER, content_type);
    }
    if let Some(data) = properties.correlation_data {
        add(CORRELATION_DATA_HEADER, STANDARD.encode(data));
    }
    Ok(Outgoing { headers, reply_to })
}

/// A delivery out of Cassini, read back from its headers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Incoming {
    /// The properties for the `PUBLISH`, but its Message Expiry Interval (the session works out
    /// what remains of it from `expires_at`).
    pub(crate) properties: MessageProperties,
    /// When the message expires, in milliseconds since the Unix epoch.
    pub(crate) expires_at: Option<u64>,
    /// Whether it was published with the retain flag.
    pub(crate) published_retained: bool,
}

/// Reads a delivery's `headers` and `reply_to` back into MQTT properties. A gateway header
/// whose value does not parse (a QUIC client may set any) is dropped.
pub(crate) fn from_cassini(headers: Vec<(String, String)>, reply_to: Option<&str>) -> Incoming {
    let mut incoming = Incoming::default();
    let properties = &mut incoming.properties;
    for (name, value) in headers {
        match name.as_str() {
            EXPIRES_AT_HEADER => incoming.expires_at = value.parse().ok(),
            RETAIN_HEADER => incoming.published_retained = value == "1",
            PAYLOAD_FORMAT_HEADER => {
                properties.payload_format = value.parse().ok().filter(|format| *format <= 1)
            }
            CONTENT_TYPE_HEADER => properties.content_type = Some(value),
            CORRELATION_DATA_HEADER => {
                properties.correlation_data = STANDARD.decode(value).ok().map(Bytes::from)
            }
            ORIGIN_HEADER => {}
            _ => properties.user_properties.push((name, value)),
        }
    }
    properties.response_topic = reply_to.map(topics::cassini_to_mqtt);
    incoming
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> MessageProperties {
        MessageProperties {
            payload_format: Some(1),
            message_expiry: Some(30),
            content_type: Some("application/json".into()),
            response_topic: Some("replies/7".into()),
            correlation_data: Some(Bytes::from_static(&[0, 0xFF, b'a'])),
            user_properties: vec![("unit".into(), "celsius".into())],
        }
    }

    #[test]
    fn every_forwarded_property_comes_back_as_published() {
        let outgoing = to_cassini(full(), true, 1_000).expect("mapped");
        assert_eq!(outgoing.reply_to.as_deref(), Some("replies.7"));
        assert!(outgoing
            .headers
            .contains(&(CORRELATION_DATA_HEADER.into(), "AP9h".into())));
        let incoming = from_cassini(outgoing.headers, outgoing.reply_to.as_deref());
        assert_eq!(incoming.expires_at, Some(31_000));
        assert!(incoming.published_retained);
        assert_eq!(
            incoming.properties,
            MessageProperties {
                message_expiry: None,
                ..full()
            }
        );
    }

    #[test]
    fn a_message_expiry_interval_of_zero_is_no_expiry() {
        let zero = MessageProperties {
            message_expiry: Some(0),
            ..MessageProperties::default()
        };
        let outgoing = to_cassini(zero, false, 1_000).expect("mapped");
        let incoming = from_cassini(outgoing.headers, None);
        assert_eq!(incoming.expires_at, None, "as Mosquitto: never expires");
    }

    #[test]
    fn a_client_cannot_forge_the_gateways_headers() {
        let forged = MessageProperties {
            user_properties: vec![
                (CORRELATION_DATA_HEADER.into(), "AP9h".into()),
                (ORIGIN_HEADER.into(), "someone".into()),
                ("k".into(), "v".into()),
            ],
            ..MessageProperties::default()
        };
        let outgoing = to_cassini(forged, false, 0).expect("mapped");
        assert_eq!(outgoing.headers, vec![("k".into(), "v".into())]);
    }

    #[test]
    fn unparsable_gateway_headers_from_a_quic_client_are_dropped() {
        let headers = vec![
            (CORRELATION_DATA_HEADER.into(), "not base64!".into()),
            (PAYLOAD_FORMAT_HEADER.into(), "2".into()),
            (EXPIRES_AT_HEADER.into(), "soon".into()),
        ];
        assert_eq!(from_cassini(headers, None), Incoming::default());
    }

    #[test]
    fn an_unmappable_response_topic_is_refused() {
        let properties = MessageProperties {
            response_topic: Some("a//b".into()),
            ..MessageProperties::default()
        };
        assert!(to_cassini(properties, false, 0).is_err());
    }
}
