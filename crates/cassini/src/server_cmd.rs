//! `cassini server ping|check|info|report`: a running broker asked over QUIC, as any client
//! would ask it, and (`info`, `report`) over its monitoring endpoint's JSON.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use cassini_monitor::client::get_json_as;
use serde_json::{json, Value};

use crate::cli::{
    ReportWhat, ServerCheckArgs, ServerCommand, ServerInfoArgs, ServerPingArgs, ServerReportArgs,
};
use crate::context::{print_out, MonitorTarget, DEFAULT_MONITOR};
use crate::pubsub::connect_target;

/// How long one request to the monitoring endpoint may take.
const MONITOR_LIMIT: Duration = Duration::from_secs(10);

/// Exit status of a failed `check`: CRITICAL in the Nagios plugin convention.
const CRITICAL: u8 = 2;

pub(crate) async fn run(command: ServerCommand) -> anyhow::Result<ExitCode> {
    match command {
        ServerCommand::Ping(args) => ping(args).await,
        ServerCommand::Check(args) => Ok(check(args).await),
        ServerCommand::Info(args) => info(args).await,
        ServerCommand::Report(args) => report(args).await,
    }
}

/// Connects, then pings `--count` times, one line each and a summary.
async fn ping(args: ServerPingArgs) -> anyhow::Result<ExitCode> {
    let target = args.connect.resolve()?;
    let client = connect_target(&target, None).await?;
    let mut rtts = Vec::new();
    for n in 1..=args.count {
        let rtt = client.ping().await.context("pinging the broker")?;
        println!("pong {n} from {}: rtt={:.3} ms", target.server, millis(rtt));
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
    let target = match args.connect.resolve() {
        Ok(target) => target,
        Err(error) => {
            println!("CASSINI CRITICAL - {error:#}");
            return ExitCode::from(CRITICAL);
        }
    };
    let probe = async {
        let client = connect_target(&target, None).await?;
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
                target.server,
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
                target.server
            );
            ExitCode::from(CRITICAL)
        }
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Connects, pings once, and (with a monitoring endpoint) reads `/varz`; prints the facts.
async fn info(args: ServerInfoArgs) -> anyhow::Result<ExitCode> {
    let target = args.connect.resolve()?;
    let monitor = args
        .monitor
        .resolve(args.connect.context.as_deref(), None)
        .await?;
    let client = connect_target(&target, None).await?;
    let rtt = client.ping().await.context("pinging the broker")?;
    let limits = serde_json::to_value(client.limits()).context("describing the limits")?;
    let facts = json!({
        "server": target.server,
        "server_name": target.server_name,
        "remote_address": client.remote_address().to_string(),
        "identity": client.identity(),
        "rtt_ms": millis(rtt),
        "limits": limits,
    });
    // Read while connected, so the counts include this connection.
    let varz = match &monitor {
        Some(MonitorTarget { addr, token }) => Some(
            get_json_as(*addr, "/varz", token.as_ref(), MONITOR_LIMIT)
                .await
                .with_context(|| format!("reading /varz from the monitoring endpoint {addr}"))?,
        ),
        None => None,
    };
    let _ = client.close().await;
    let monitor_facts = varz.map(|varz| {
        json!({
            "address": monitor.as_ref().map(|m| m.addr.to_string()),
            "version": varz["server"]["version"],
            "pid": varz["server"]["pid"],
            "uptime_ms": varz["server"]["uptime_ms"],
            "started_at_ms": varz["server"]["started_at_ms"],
            "listen": varz["server"]["listen"],
            "ready": varz["server"]["ready"],
            "identity_rule": varz["config"]["security"]["identity_rule"],
            "acl_file": varz["config"]["security"]["acl_file"],
            "storage": varz["config"]["storage"]["mode"],
            "token_required": varz["token_required"],
            "counts": varz["counts"],
        })
    });
    let mut all = facts;
    all["monitor"] = monitor_facts.clone().unwrap_or(Value::Null);
    if args.json {
        let text = serde_json::to_string_pretty(&all).context("writing JSON")?;
        return print_out(&format!("{text}\n"));
    }
    let mut out = String::new();
    let mut line = |key: &str, value: String| {
        out.push_str(&format!("  {key:<34} {value}\n"));
    };
    line("server", target.server.clone());
    line("server name (certificate)", target.server_name.clone());
    line("remote address", text(&all["remote_address"]));
    line("connected as (identity)", text(&all["identity"]));
    line("round trip", format!("{:.3} ms", millis(rtt)));
    if let Some(limits) = all["limits"].as_object() {
        for (key, value) in limits {
            line(key, text(value));
        }
    }
    match &monitor_facts {
        Some(facts) => {
            line("monitoring endpoint", text(&facts["address"]));
            line("version", text(&facts["version"]));
            line(
                "uptime",
                facts["uptime_ms"]
                    .as_u64()
                    .map(crate::top::duration_ms)
                    .unwrap_or_else(|| "?".into()),
            );
            line("pid", text(&facts["pid"]));
            line("listen", text(&facts["listen"]));
            line("ready", text(&facts["ready"]));
            line("identity rule", text(&facts["identity_rule"]));
            line("acl file", text(&facts["acl_file"]));
            line("storage", text(&facts["storage"]));
            line("monitor token required", text(&facts["token_required"]));
            if let Some(counts) = facts["counts"].as_object() {
                for (key, value) in counts {
                    line(key, text(value));
                }
            }
        }
        None => line(
            "version, uptime, settings",
            "unknown: give --monitor ADDR (or a context's monitor) to read them".into(),
        ),
    }
    print_out(&format!("Server information\n{out}"))
}

/// A JSON value as plain text: strings without quotes, null as `-`, empty strings as `-`.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Reads `/connz` or `/subz` and prints a table (or the JSON page).
async fn report(args: ServerReportArgs) -> anyhow::Result<ExitCode> {
    let monitor = args
        .monitor
        .resolve(args.context.as_deref(), Some(DEFAULT_MONITOR))
        .await?
        .context("no monitoring endpoint")?;
    let (path, list) = match args.what {
        ReportWhat::Connections => ("/connz", "connections"),
        ReportWhat::Subscriptions => ("/subz", "subscriptions"),
    };
    let page = get_json_as(
        monitor.addr,
        &format!("{path}?limit={}", args.limit),
        monitor.token.as_ref(),
        MONITOR_LIMIT,
    )
    .await
    .with_context(|| {
        format!(
            "reading {path} from the monitoring endpoint {}",
            monitor.addr
        )
    })?;
    if args.json {
        let text = serde_json::to_string_pretty(&page).context("writing JSON")?;
        return print_out(&format!("{text}\n"));
    }
    let items = page[list].as_array().cloned().unwrap_or_default();
    let total = page["total"].as_u64().unwrap_or(0);
    let (header, rows): (Vec<&str>, Vec<Vec<String>>) = match args.what {
        ReportWhat::Connections => (
            vec![
                "ID", "IDENTITY", "REMOTE", "UPTIME", "RTT", "SUBS", "SENT", "RECEIVED", "LOST",
                "RESUMED",
            ],
            items
                .iter()
                .map(|c| {
                    let t = &c["transport"];
                    vec![
                        text(&c["id"]),
                        text(&c["identity"]),
                        text(&c["remote"]),
                        c["uptime_ms"]
                            .as_u64()
                            .map(crate::top::duration_ms)
                            .unwrap_or_else(|| "-".into()),
                        t["rtt_us"]
                            .as_f64()
                            .map(|us| format!("{:.2}ms", us / 1000.0))
                            .unwrap_or_else(|| "-".into()),
                        c["subscriptions"]
                            .as_array()
                            .map_or(0, Vec::len)
                            .to_string(),
                        text(&t["bytes_sent"]),
                        text(&t["bytes_received"]),
                        text(&t["packets_lost"]),
                        text(&c["resumed"]),
                    ]
                })
                .collect(),
        ),
        ReportWhat::Subscriptions => (
            vec![
                "FILTER",
                "GROUP",
                "DELIVERY",
                "POLICY",
                "ATTACHED",
                "QUEUED",
                "FILL",
                "BYTES",
                "DROPPED",
                "IN FLIGHT",
                "LAST SEQ",
            ],
            items
                .iter()
                .map(|s| {
                    let depth = s["depth"].as_u64().unwrap_or(0);
                    let max = s["max_messages"].as_u64().unwrap_or(0);
                    let fill = if max == 0 {
                        "-".to_owned()
                    } else {
                        format!("{:.0}%", 100.0 * depth as f64 / max as f64)
                    };
                    vec![
                        text(&s["filter"]),
                        text(&s["queue_group"]),
                        text(&s["delivery"]),
                        text(&s["policy"]),
                        text(&s["attached"]),
                        format!("{depth}/{max}"),
                        fill,
                        text(&s["queued_bytes"]),
                        text(&s["dropped"]),
                        text(&s["in_flight"]),
                        text(&s["last_sequence"]),
                    ]
                })
                .collect(),
        ),
    };
    let mut out = table(&header, &rows);
    let shown = rows.len();
    out.push_str(&if u64::try_from(shown).unwrap_or(u64::MAX) < total {
        format!("{shown} of {total} {list} (--limit shows more)\n")
    } else {
        format!("{total} {list}\n")
    });
    print_out(&out)
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut push = |cells: &mut dyn Iterator<Item = &str>| {
        let mut line = String::new();
        for (cell, width) in cells.zip(&widths) {
            line.push_str(&format!("{cell:<width$}  "));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    };
    push(&mut header.iter().copied());
    for row in rows {
        push(&mut row.iter().map(String::as_str));
    }
    out
}
