//! Request/reply: a service that answers on `svc.time`, and a caller. A request to a topic no
//! service listens on fails at once with "no responders" instead of waiting for its timeout.

mod connect;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cassini_client::RequestError;
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let service = connect::connect().await?;
    let mut requests = service.serve("svc.time").await?;
    let server = tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let answer = format!(
                "{} asked; it is {} s after the epoch",
                String::from_utf8_lossy(request.payload()),
                now.as_secs()
            );
            if let Err(err) = request.respond(Bytes::from(answer)).await {
                eprintln!("could not answer: {err}");
            }
        }
    });

    let caller = connect::connect().await?;
    let reply = caller
        .request("svc.time", Bytes::from("caller"), Duration::from_secs(5))
        .await?;
    println!("reply: {}", String::from_utf8_lossy(reply.payload()));

    match caller
        .request("svc.nobody", Bytes::from("anyone?"), Duration::from_secs(5))
        .await
    {
        Err(RequestError::NoResponders { .. }) => {
            println!("svc.nobody: no responders, as expected")
        }
        other => return Err(format!("expected no responders, got {other:?}").into()),
    }

    caller.close().await?;
    server.abort();
    service.close().await?;
    Ok(())
}
