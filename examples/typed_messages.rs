//! Typed payloads: your own serde types as JSON or MessagePack.

mod connect;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Reading {
    sensor: String,
    celsius: f32,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = connect::connect().await?;
    let mut subscription = client.subscribe("sensors.*").await?;
    let reading = Reading {
        sensor: "kitchen".into(),
        celsius: 21.5,
    };
    client.publish_json("sensors.kitchen", &reading).await?;
    client.publish_msgpack("sensors.kitchen", &reading).await?;

    let as_json = subscription.next().await.ok_or("subscription ended")?;
    let decoded: Reading = as_json.decode_json()?;
    println!("json:    {decoded:?}");
    let as_msgpack = subscription.next().await.ok_or("subscription ended")?;
    let decoded: Reading = as_msgpack.decode_msgpack()?;
    println!("msgpack: {decoded:?}");
    client.close().await?;
    Ok(())
}
