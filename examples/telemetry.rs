//! Telemetry over QUIC datagrams: a fast sensor publisher and a datagram subscriber that shows
//! its loss counter. A datagram subscription never waits for a retransmission, so on a lossy
//! link the newest reading arrives now instead of every reading late.
//!
//! Run it against `cassini serve`. It publishes `CASSINI_EXAMPLE_MESSAGES` readings (default
//! 200) at 1 kHz and prints each one received, then the loss counter.

mod connect;

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let readings: u64 = std::env::var("CASSINI_EXAMPLE_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let client = connect::connect().await?;
    let mut telemetry = client.subscribe_datagram("telemetry.>").await?;

    let sensor = client.clone();
    let publishing = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for n in 0..readings {
            tick.tick().await;
            let celsius = 20.0 + (n % 50) as f64 / 10.0;
            sensor
                .publish(
                    "telemetry.boiler.temp",
                    Bytes::from(format!("{n} {celsius:.1}")),
                )
                .await?;
        }
        Ok::<_, cassini_client::ClientError>(())
    });

    let mut received = 0u64;
    let mut highest = 0u64;
    // Stop when the last reading arrived, or when the link has been quiet for a second.
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_secs(1), telemetry.next()).await
    {
        received += 1;
        highest = highest.max(message.sequence());
        println!(
            "#{} {}",
            message.sequence(),
            String::from_utf8_lossy(message.payload())
        );
        if highest == readings {
            break;
        }
    }
    publishing.await??;
    println!(
        "received {received} of {readings} readings; lost so far: {}",
        telemetry.lost()
    );
    client.close().await?;
    Ok(())
}
