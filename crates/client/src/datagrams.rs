//! QUIC datagrams: deliveries of datagram subscriptions in, publishes out.
//!
//! One task per connection reads the broker's datagrams. Each holds one `Datagram` frame for
//! one subscription; the task hands its message to that subscription's channel if there is room
//! now, and otherwise drops it: a datagram subscription prefers the newest data, and a message
//! dropped here shows as lost like one the network lost. A datagram that does not decode, or
//! holds another frame, closes the connection as a protocol violation. No datagram waits.

use std::sync::Arc;

use cassini_protocol::{decode_frame, ErrorCode, Frame};

use crate::framed::decode_close_code;
use crate::link::Link;
use crate::message::Message;
use crate::registry::SubscriptionRegistry;

/// Reads datagrams until the connection ends.
pub(crate) async fn read_datagrams(link: Arc<Link>, registry: Arc<SubscriptionRegistry>) {
    loop {
        let datagram = match link.connection().read_datagram().await {
            Ok(datagram) => datagram,
            Err(error) => {
                tracing::debug!(%error, "connection ended; no more datagrams");
                return;
            }
        };
        match decode_frame(&datagram, link.max_frame_bytes()) {
            Ok((Frame::Datagram(delivery), _)) => {
                let Some(sink) = registry.live(delivery.subscription) else {
                    // Not (or no longer) ours: a subscription that just ended.
                    continue;
                };
                if !sink.offer_datagram(Message::from(delivery.message)) {
                    tracing::trace!(
                        subscription = delivery.subscription,
                        "datagram dropped: the subscription's buffer is full"
                    );
                }
            }
            Ok((other, _)) => {
                let reason = format!("{} frame in a datagram", other.kind());
                link.protocol_violation(ErrorCode::PROTOCOL_VIOLATION, &reason);
                return;
            }
            Err(error) => {
                let reason = format!("undecodable datagram: {error}");
                link.protocol_violation(decode_close_code(&error), &reason);
                return;
            }
        }
    }
}
