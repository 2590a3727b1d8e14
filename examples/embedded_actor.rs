//! The broker embedded in a program, with ractor actors as local clients: no network hop
//! between them, while QUIC clients of the same broker take part as usual.
//!
//! A `Thermostat` actor subscribes to `plant.*.temp` in process and, for every reading above
//! its set point, publishes `plant.<room>.cool` in process. A QUIC client (the "sensor") sends
//! readings and receives the commands. Certificates are made in memory for the demo. It stops
//! after `CASSINI_EXAMPLE_MESSAGES` commands (default 3).

use std::sync::Arc;

use bytes::Bytes;
use cassini_broker::{Broker, BrokerConfig, LocalClient, LocalMessage};
use cassini_client::Client;
use cassini_quic::certs::CertificateAuthority;
use cassini_quic::server::{QuicServer, ServerOptions};
use cassini_quic::tls;
use futures_util::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};

/// Reacts to temperature readings by publishing cooling commands.
struct Thermostat;

/// What the thermostat handles: readings forwarded by its local subscription.
enum ThermostatMsg {
    Reading(LocalMessage),
}

impl From<LocalMessage> for ThermostatMsg {
    fn from(message: LocalMessage) -> Self {
        ThermostatMsg::Reading(message)
    }
}

impl Actor for Thermostat {
    type Msg = ThermostatMsg;
    type State = (LocalClient, f64);
    type Arguments = (LocalClient, f64);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        ThermostatMsg::Reading(reading): Self::Msg,
        (broker, set_point): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let celsius: f64 = String::from_utf8_lossy(reading.payload()).parse()?;
        let room = reading.topic().split('.').nth(1).unwrap_or("unknown");
        println!("thermostat: {room} at {celsius} °C");
        if celsius > *set_point {
            broker.publish(&format!("plant.{room}.cool"), format!("{celsius}"))?;
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let commands: usize = std::env::var("CASSINI_EXAMPLE_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);

    // The broker and its QUIC listener, in this process.
    let ca = CertificateAuthority::generate("Embedded demo CA")?;
    let server_cert = ca.issue_server(&[])?;
    let crypto = tls::server_crypto(
        vec![ca.cert_der().clone()],
        vec![server_cert.cert_der()?],
        server_cert.key_der()?,
    )?;
    let server = Arc::new(QuicServer::bind(
        "127.0.0.1:0".parse()?,
        crypto,
        ServerOptions::default(),
    )?);
    let addr = server.local_addr()?;
    let broker = Broker::start(BrokerConfig::default()).await?;
    tokio::spawn({
        let server = Arc::clone(&server);
        let broker = broker.clone();
        async move { server.serve(broker).await }
    });

    // The thermostat: a local actor, subscribed in process.
    let local = broker.local_client();
    let (thermostat, _) = Actor::spawn(None, Thermostat, (local.clone(), 21.0)).await?;
    let readings = local.subscribe("plant.*.temp").await?;
    let forwarding = readings.forward_to(thermostat.clone(), 64);

    // The sensor: a QUIC client with its own certificate.
    let sensor_cert = ca.issue_client("sensor")?;
    let sensor = Client::builder(addr)
        .ca_certs(vec![ca.cert_der().clone()])
        .identity(vec![sensor_cert.cert_der()?], sensor_cert.key_der()?)
        .server_name("localhost")
        .connect()
        .await?;
    let mut cooling = sensor.subscribe("plant.*.cool").await?;
    for n in 0..commands * 2 {
        let celsius = if n % 2 == 0 { 19.5 } else { 23.0 + n as f64 };
        sensor
            .publish("plant.boiler.temp", Bytes::from(celsius.to_string()))
            .await?;
    }
    for _ in 0..commands {
        let Some(command) = cooling.next().await else {
            break;
        };
        println!(
            "sensor: {} ({} °C)",
            command.topic(),
            String::from_utf8_lossy(command.payload())
        );
    }

    sensor.close().await?;
    forwarding.abort();
    thermostat.stop(None);
    broker.shutdown("demo over").await;
    Ok(())
}
