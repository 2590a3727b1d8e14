//! `cassini bench connections`: opens `--count` idle mutual-TLS connections to the broker and
//! holds them, reporting handshakes per second and the broker's resident memory per
//! connection. The same client first does the same against a bare quinn endpoint with the
//! broker's TLS configuration (see `bare_endpoint`), in the same run: the broker's accept path
//! should cost nothing measurable beyond it.
//!
//! A connection counts as open when its first answer arrives: the broker's `Welcome` to `Hello`
//! on the control stream, the bare endpoint's one byte on its stream. Both are one round trip
//! after the handshake, and both mean the server has verified the client certificate.
//! Without `--server` the broker runs as a child process (`cassini serve`), so its memory is
//! its own; with `--server`, `--broker-pid` lets the scenario read it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::BytesMut;
use cassini_bench::progress::Progress;
use cassini_protocol::{encode_frame, Frame, FrameDecoder, Hello, PROTOCOL_VERSION};
use cassini_quic::certs::{init_dir, InitOptions};
use cassini_quic::endpoint::bind_client;
use cassini_quic::tls::{self, QuicOptions};
use futures_util::StreamExt;
use serde_json::json;

use super::child::{free_udp_addr, rss_bytes, ChildProcess, ScratchDir};
use crate::cli::ConnectionsArgs;

/// How long one connection may take to open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// What the client waits for after the handshake.
#[derive(Debug, Clone, Copy)]
enum Server {
    /// The bare endpoint: one byte on a unidirectional stream.
    Bare,
    /// The broker: `Welcome` in answer to `Hello`.
    Broker,
}

/// One open connection and the streams that must stay open with it (dropping the control
/// stream's send side would finish it, which the broker takes as a goodbye).
struct Held {
    _connection: quinn::Connection,
    _streams: Option<(quinn::SendStream, quinn::RecvStream)>,
}

/// The result of opening connections against one server.
struct Opened {
    held: Vec<Held>,
    failed: u32,
    first_error: Option<String>,
    elapsed: Duration,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
}

impl Opened {
    fn handshakes_per_s(&self) -> f64 {
        self.held.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn rss_per_connection(&self) -> Option<f64> {
        let grown = self.rss_after?.saturating_sub(self.rss_before?);
        Some(grown as f64 / self.held.len().max(1) as f64)
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "opened": self.held.len(),
            "failed": self.failed,
            "first_error": self.first_error,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "handshakes_per_s": self.handshakes_per_s(),
            "rss_before_bytes": self.rss_before,
            "rss_after_bytes": self.rss_after,
            "rss_per_connection_bytes": self.rss_per_connection(),
        })
    }
}

pub(crate) async fn run(args: ConnectionsArgs) -> anyhow::Result<ExitCode> {
    let dir = ScratchDir::new()?;
    init_dir(
        dir.path(),
        &InitOptions {
            clients: vec!["dev".into()],
            ..InitOptions::default()
        },
    )
    .context("bench certificates")?;
    let scratch = dir.path().to_str().context("temporary directory path")?;

    let bare_addr = free_udp_addr()?;
    let bare = ChildProcess::start(
        &[
            "bench",
            "bare-endpoint",
            "--listen",
            &bare_addr.to_string(),
            "--certs",
            scratch,
        ],
        "bare endpoint listening",
    )?;
    let bare_client = client_endpoint(dir.path(), "dev")?;
    let bare_result = open_all(
        &bare_client,
        bare_addr,
        Server::Bare,
        &args,
        Some(bare.pid()),
    )
    .await;
    bare_client.close(0u32.into(), b"done");
    drop(bare);

    let (broker_addr, certs, name, broker) = match &args.target.server {
        Some(server) => {
            let addr = tokio::net::lookup_host(server.as_str())
                .await?
                .next()
                .with_context(|| format!("{server} resolves to no address"))?;
            (
                addr,
                args.target.certs.clone(),
                args.target.name.clone(),
                None,
            )
        }
        None => {
            let addr = free_udp_addr()?;
            // Every connection is the same identity ("dev") with a session of its own: lift
            // the per-identity limits on connections and sessions (1,024 each by default) and
            // the broker's limit (100,000) above the count, as an operator would for this test.
            let limit = args.count.saturating_add(1).to_string();
            let child = ChildProcess::start_with_env(
                &[
                    "serve",
                    "--listen",
                    &addr.to_string(),
                    "--certs",
                    scratch,
                    "--idle-timeout",
                    "60",
                ],
                &[
                    ("CASSINI_LIMITS_MAX_CONNECTIONS_PER_IDENTITY", limit.clone()),
                    ("CASSINI_LIMITS_MAX_SESSIONS_PER_IDENTITY", limit.clone()),
                    ("CASSINI_LIMITS_MAX_CONNECTIONS", limit),
                ],
                "cassini listening",
            )?;
            (
                addr,
                dir.path().to_path_buf(),
                "dev".to_string(),
                Some(child),
            )
        }
    };
    let pid = broker.as_ref().map(ChildProcess::pid).or(args.broker_pid);
    let broker_client = client_endpoint(&certs, &name)?;
    let broker_result = open_all(&broker_client, broker_addr, Server::Broker, &args, pid).await;
    broker_client.close(0u32.into(), b"done");
    drop(broker);
    let (bare_result, broker_result) = (bare_result?, broker_result?);

    let ratio = broker_result.handshakes_per_s() / bare_result.handshakes_per_s().max(1e-9);
    if args.json {
        println!(
            "{}",
            json!({
                "scenario": "connections",
                "broker": "cassini",
                "count": args.count,
                "concurrency": args.concurrency,
                "bare_quinn": bare_result.to_json(),
                "cassini": broker_result.to_json(),
                "handshakes_broker_over_bare": ratio,
            })
        );
    } else {
        println!(
            "connections: {} idle mTLS connections, {} handshakes in flight",
            args.count, args.concurrency
        );
        println!(
            "{:<12} {:>8} {:>7} {:>14} {:>16} {:>20}",
            "server", "opened", "failed", "handshakes/s", "RSS after MiB", "RSS per conn KiB"
        );
        for (label, opened) in [("bare quinn", &bare_result), ("cassini", &broker_result)] {
            println!(
                "{label:<12} {:>8} {:>7} {:>14.0} {:>16} {:>20}",
                opened.held.len(),
                opened.failed,
                opened.handshakes_per_s(),
                opened
                    .rss_after
                    .map_or("-".into(), |rss| format!("{:.1}", rss as f64 / 1048576.0)),
                opened
                    .rss_per_connection()
                    .map_or("-".into(), |rss| format!("{:.1}", rss / 1024.0)),
            );
            if let Some(error) = &opened.first_error {
                println!("  first failure: {error}");
            }
        }
        println!("handshakes/s cassini / bare quinn = {ratio:.2} (goal: at least 0.9)");
    }
    Ok(ExitCode::SUCCESS)
}

/// A client endpoint presenting `name`'s certificate from `certs`.
fn client_endpoint(certs: &Path, name: &str) -> anyhow::Result<quinn::Endpoint> {
    let (cert, key) = cassini_quic::certs::client_paths(certs, name);
    let crypto = tls::client_crypto(
        tls::load_certs(&certs.join("ca.crt"))?,
        tls::load_certs(&cert)?,
        tls::load_key(&key)?,
    )?;
    let options = QuicOptions::default();
    let config = tls::client_config(crypto, &options)?;
    Ok(bind_client("127.0.0.1:0".parse()?, config, &options)?)
}

/// Opens `args.count` connections, `args.concurrency` at a time, and holds them.
async fn open_all(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server: Server,
    args: &ConnectionsArgs,
    pid: Option<u32>,
) -> anyhow::Result<Opened> {
    let rss_before = pid.and_then(rss_bytes);
    let label = match server {
        Server::Bare => "bare quinn",
        Server::Broker => "cassini",
    };
    let progress = Progress::new(u64::from(args.count), label);
    let started = Instant::now();
    let mut attempts = futures_util::stream::iter(0..args.count)
        .map(|_| async move {
            tokio::time::timeout(OPEN_TIMEOUT, open_one(endpoint, addr, server))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("not open within {OPEN_TIMEOUT:?}")))
        })
        .buffer_unordered(args.concurrency.max(1) as usize);
    let (mut held, mut failed, mut first_error) = (Vec::new(), 0u32, None);
    while let Some(attempt) = attempts.next().await {
        match attempt {
            Ok(connection) => held.push(connection),
            Err(err) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{err:#}"));
            }
        }
        progress.set(held.len() as u64 + u64::from(failed));
    }
    let elapsed = started.elapsed();
    progress.finish();
    Ok(Opened {
        held,
        failed,
        first_error,
        elapsed,
        rss_before,
        rss_after: pid.and_then(rss_bytes),
    })
}

async fn open_one(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server: Server,
) -> anyhow::Result<Held> {
    let connection = endpoint.connect(addr, "localhost")?.await?;
    let streams = match server {
        Server::Bare => {
            let mut stream = connection.accept_uni().await?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await?;
            None
        }
        Server::Broker => Some(hello(&connection).await?),
    };
    Ok(Held {
        _connection: connection,
        _streams: streams,
    })
}

/// Opens the control stream, sends `Hello` and waits for `Welcome`.
async fn hello(
    connection: &quinn::Connection,
) -> anyhow::Result<(quinn::SendStream, quinn::RecvStream)> {
    let (mut send, mut recv) = connection.open_bi().await?;
    let decoder = FrameDecoder::default();
    let mut buf = BytesMut::new();
    let hello = Frame::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        resume: None,
        client_name: Some("bench-idle".into()),
        positions: Vec::new(),
        session_name: None,
    });
    encode_frame(&hello, &mut buf, decoder.max_frame_bytes())?;
    send.write_all(&buf).await?;
    buf.clear();
    loop {
        if let Some(frame) = decoder.decode(&mut buf)? {
            return match frame {
                Frame::Welcome(_) => Ok((send, recv)),
                other => Err(anyhow::anyhow!("expected Welcome, got {}", other.kind())),
            };
        }
        let chunk = recv
            .read_chunk(64 * 1024, true)
            .await?
            .context("control stream ended before Welcome")?;
        buf.extend_from_slice(&chunk.bytes);
    }
}
