//! Publish and subscribe: a subscription with a wildcard, three messages, one line each.

mod connect;

use bytes::Bytes;
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = connect::connect().await?;
    let mut subscription = client.subscribe("demo.>").await?;
    for greeting in ["hello", "bonjour", "hallo"] {
        client
            .publish("demo.greetings", Bytes::from(greeting))
            .await?;
    }
    for _ in 0..3 {
        let Some(message) = subscription.next().await else {
            return Err("the subscription ended early".into());
        };
        println!(
            "{} #{}: {}",
            message.topic(),
            message.sequence(),
            String::from_utf8_lossy(message.payload())
        );
    }
    client.close().await?;
    Ok(())
}
