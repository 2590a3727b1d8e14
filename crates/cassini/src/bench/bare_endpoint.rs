//! `cassini bench bare-endpoint` (hidden): the control for `connections`. A quinn endpoint with
//! the broker's own TLS and transport configuration (mutual TLS, client certificate verified,
//! no session tickets, `QuicOptions::broker`) that accepts the way `QuicServer` does (a task per handshake, the
//! identity read from the certificate), answers each connection with one byte on a stream of
//! its own (the counterpart of the broker's `Welcome`), and then only holds it. Everything the
//! broker does beyond this is what `connections` measures.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cassini_quic::endpoint::bind_server;
use cassini_quic::identity::peer_identity;
use cassini_quic::server::server_crypto_from_dir;
use cassini_quic::tls::{self, QuicOptions};

use crate::cli::BareEndpointArgs;

/// The broker's default handshake deadline.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn run(args: BareEndpointArgs) -> anyhow::Result<ExitCode> {
    let crypto = server_crypto_from_dir(&args.certs)
        .with_context(|| format!("loading certificates from {}", args.certs.display()))?;
    let options = QuicOptions {
        idle_timeout: Duration::from_secs(60),
        ..QuicOptions::broker()
    };
    let config = tls::server_config(crypto, &options)?;
    let (endpoint, _) = bind_server(args.listen, config, &options)?;
    eprintln!("bare endpoint listening on {}", endpoint.local_addr()?);
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(incoming) = incoming else { break };
        tokio::spawn(async move {
            let Ok(connecting) = incoming.accept() else {
                return;
            };
            let Ok(Ok(connection)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await
            else {
                return;
            };
            if peer_identity(&connection).is_err() {
                connection.close(1u32.into(), b"no identity");
                return;
            }
            if let Ok(mut stream) = connection.open_uni().await {
                if stream.write_all(&[1]).await.is_ok() {
                    connection.closed().await;
                }
            }
        });
    }
    endpoint.close(0u32.into(), b"bye");
    Ok(ExitCode::SUCCESS)
}
