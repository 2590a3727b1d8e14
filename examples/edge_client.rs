//! An edge client that survives its network and its broker: it reconnects with backoff,
//! resumes its session, keeps its subscription, buffers publishes while disconnected, and prints
//! every state change and every gap. Stop it with Ctrl-C, or set `CASSINI_EXAMPLE_MESSAGES=N` to
//! stop after N messages.
//!
//! Try it: run it against `cassini serve`, stop the broker, start it again.

mod connect;

use std::time::Duration;

use bytes::Bytes;
use cassini_client::SubscriptionEvent;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let limit: Option<u64> = std::env::var("CASSINI_EXAMPLE_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok());
    let client = connect::connect().await?;
    println!(
        "connected as {}, session {}",
        client.identity(),
        client.session_id()
    );

    let mut states = client.state_changes();
    tokio::spawn(async move {
        while states.changed().await.is_ok() {
            let state = states.borrow_and_update().clone();
            println!("state: {state:?}");
        }
    });

    let mut readings = client.subscribe("edge.readings").await?;
    let publisher = client.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        for n in 0u64.. {
            tick.tick().await;
            if let Err(err) = publisher
                .publish("edge.readings", Bytes::from(format!("reading {n}")))
                .await
            {
                println!("publish {n} failed: {err}");
            }
        }
    });

    let mut received = 0u64;
    loop {
        let event = tokio::select! {
            event = readings.next_event() => event,
            _ = tokio::signal::ctrl_c() => break,
        };
        let message = match event {
            Some(SubscriptionEvent::Message(message)) => message,
            Some(SubscriptionEvent::Gap(gap)) => {
                // Announced as soon as the client knows, even if no reading follows.
                println!("gap: {gap:?}");
                continue;
            }
            Some(_) => continue,
            None => {
                println!("subscription ended: {:?}", readings.end_reason());
                break;
            }
        };
        println!(
            "#{} {}",
            message.sequence(),
            String::from_utf8_lossy(message.payload())
        );
        received += 1;
        if limit.is_some_and(|limit| received >= limit) {
            break;
        }
    }
    client.close().await?;
    Ok(())
}
