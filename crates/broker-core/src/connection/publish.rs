//! One publish stream: validate each `Publish` and hand it to the router.
//!
//! This is the start of the hot path and it involves no actor: the router pushes into each
//! matching subscription's bounded queue and returns at once, so a publisher never waits on a
//! subscriber. A refused publish is answered with `PublishRejected` on the same stream, which
//! stays usable; anything that is not a `Publish` closes the connection.

use std::sync::Arc;

use cassini_protocol::{Frame, Publish, PublishRejected, TopicName};

use crate::config::BrokerConfig;
use crate::connection::framed::{write_frame, FrameReader};
use crate::error::BrokerError;
use crate::message::PublishedMessage;
use crate::router::Router;
use crate::transport::{RecvStream, SendStream};

/// Serves one publish stream until the client finishes it.
pub(crate) async fn serve_publish_stream(
    mut send: Box<dyn SendStream>,
    recv: Box<dyn RecvStream>,
    config: Arc<BrokerConfig>,
    router: Arc<Router>,
) -> Result<(), BrokerError> {
    let max_frame_bytes = config.limits.max_frame_bytes;
    let mut reader = FrameReader::new(recv, max_frame_bytes);
    while let Some(frame) = reader.next().await? {
        let Frame::Publish(publish) = frame else {
            return Err(BrokerError::ProtocolViolation(format!(
                "{} frame on a publish stream",
                frame.kind()
            )));
        };
        let topic = publish.topic.clone();
        match accept(publish, &config) {
            Ok(message) => {
                router.publish(&Arc::new(message));
            }
            Err(err) => {
                let rejected = Frame::PublishRejected(PublishRejected {
                    topic,
                    code: err.code(),
                    reason: err.reason(),
                });
                write_frame(send.as_mut(), &rejected, max_frame_bytes).await?;
            }
        }
    }
    let _ = send.finish();
    Ok(())
}

/// Checks a publish against the limits and turns it into the broker's shared form.
fn accept(publish: Publish, config: &BrokerConfig) -> Result<PublishedMessage, BrokerError> {
    let limits = &config.limits;
    if publish.payload.len() > limits.max_payload_bytes as usize {
        return Err(BrokerError::PayloadTooLarge {
            size: publish.payload.len(),
            max: limits.max_payload_bytes,
        });
    }
    let topic =
        TopicName::parse(&publish.topic, &limits.topics).map_err(BrokerError::InvalidTopic)?;
    Ok(PublishedMessage {
        topic,
        headers: publish.headers,
        payload: publish.payload,
    })
}
