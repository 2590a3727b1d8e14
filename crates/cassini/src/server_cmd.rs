//! `cassini server ping|check`: a running broker asked over QUIC, as any client would ask it.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::{ServerCheckArgs, ServerCommand, ServerPingArgs};
use crate::pubsub::connect;

/// Exit status of a failed `check`: CRITICAL in the Nagios plugin convention.
const CRITICAL: u8 = 2;

pub(crate) async fn run(command: ServerCommand) -> anyhow::Result<ExitCode> {
    match command {
        ServerCommand::Ping(args) => ping(args).await,
        ServerCommand::Check(args) => Ok(check(args).await),
    }
}

/// Connects, then pings `--count` times, one line each and a summary.
async fn ping(args: ServerPingArgs) -> anyhow::Result<ExitCode> {
    let client = connect(&args.connect).await?;
    let mut rtts = Vec::new();
    for n in 1..=args.count {
        let rtt = client.ping().await.context("pinging the broker")?;
        println!(
            "pong {n} from {}: rtt={:.3} ms",
            args.connect.server,
            millis(rtt)
        );
        rtts.push(rtt);
    }
    if let (Some(min), Some(max)) = (rtts.iter().min(), rtts.iter().max()) {
        let total: Duration = rtts.iter().sum();
        let mean = total / u32::try_from(rtts.len()).unwrap_or(u32::MAX).max(1);
        println!(
            "{} pings: min {:.3} ms, mean {:.3} ms, max {:.3} ms",
            rtts.len(),
            millis(*min),
            millis(mean),
            millis(*max)
        );
    }
    client.close().await.context("closing the connection")?;
    Ok(ExitCode::SUCCESS)
}

/// Connects and pings once within `--timeout`; prints one line for a monitoring system.
async fn check(args: ServerCheckArgs) -> ExitCode {
    let started = Instant::now();
    let limit = match Duration::try_from_secs_f64(args.timeout) {
        Ok(limit) => limit,
        Err(_) => {
            println!(
                "CASSINI CRITICAL - --timeout {} is not a duration",
                args.timeout
            );
            return ExitCode::from(CRITICAL);
        }
    };
    let probe = async {
        let client = connect(&args.connect).await?;
        let connected = started.elapsed();
        let rtt = client.ping().await.context("pinging the broker")?;
        let identity = client.identity().to_owned();
        let _ = client.close().await;
        Ok::<_, anyhow::Error>((connected, rtt, identity))
    };
    match tokio::time::timeout(limit, probe).await {
        Ok(Ok((connected, rtt, identity))) => {
            println!(
                "CASSINI OK - {} answered: connected as {identity} in {:.1} ms, ping {:.3} ms",
                args.connect.server,
                millis(connected),
                millis(rtt)
            );
            ExitCode::SUCCESS
        }
        Ok(Err(error)) => {
            println!("CASSINI CRITICAL - {error:#}");
            ExitCode::from(CRITICAL)
        }
        Err(_) => {
            println!(
                "CASSINI CRITICAL - {} did not answer within {limit:?}",
                args.connect.server
            );
            ExitCode::from(CRITICAL)
        }
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
