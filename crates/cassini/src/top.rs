//! `cassini top` (also `cassini stats`): a terminal view of a broker's monitoring endpoint,
//! refreshed every `--interval` seconds, or printed once with `--once`.
//!
//! It reads `/varz`, `/connz`, `/topicz` and `/clusterz` over HTTP (presenting the token of
//! `--monitor-token-file`, if given); a cluster node gets a section of its peers (a standalone
//! broker, or one whose `/clusterz` does not answer, none). Rates are the change of the counters
//! between two refreshes (shown as `-` on the first screen and with `--once`). On a terminal,
//! `q` (or Ctrl-C) quits: standard input is read in raw mode by a thread of its own, and the
//! terminal is restored on every way out.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use cassini_monitor::client::get_json_as;
use cassini_monitor::BearerToken;
use serde_json::Value;

use crate::cli::TopArgs;
use crate::signals::ShutdownSignals;

/// How long one refresh may wait for the endpoint.
const REQUEST_LIMIT: Duration = Duration::from_secs(5);

/// The counters a rate is shown for: (label, key in `/varz` counters, unit).
const RATES: &[(&str, &str, Unit)] = &[
    ("msgs in", "messages_received", Unit::Count),
    ("bytes in", "bytes_received", Unit::Bytes),
    ("msgs out", "deliveries_queued", Unit::Count),
    ("bytes out", "delivery_bytes_queued", Unit::Bytes),
];

#[derive(Clone, Copy)]
enum Unit {
    Count,
    Bytes,
}

/// One refresh's data.
struct Sample {
    at: Instant,
    varz: Value,
    connz: Value,
    topicz: Value,
    /// `Null` when the endpoint has no `/clusterz`.
    clusterz: Value,
}

pub(crate) async fn run(args: TopArgs) -> anyhow::Result<ExitCode> {
    if !(args.interval.is_finite() && args.interval >= 0.1) {
        anyhow::bail!("--interval must be at least 0.1 seconds");
    }
    let target = args
        .monitor
        .resolve(
            args.context.as_deref(),
            Some(crate::context::DEFAULT_MONITOR),
        )
        .await?
        .context("no monitoring endpoint")?;
    let monitor = target.addr;
    let token: Option<&BearerToken> = target.token.as_ref();
    let connz_path = format!("/connz?limit={}", args.limit);
    let topicz_path = format!("/topicz?limit={}", args.limit);
    let fetch = || async {
        let varz = get_json_as(monitor, "/varz", token, REQUEST_LIMIT).await?;
        let connz = get_json_as(monitor, &connz_path, token, REQUEST_LIMIT).await?;
        let topicz = get_json_as(monitor, &topicz_path, token, REQUEST_LIMIT).await?;
        let clusterz = get_json_as(monitor, "/clusterz", token, REQUEST_LIMIT)
            .await
            .unwrap_or(Value::Null);
        Ok::<_, cassini_monitor::client::ClientError>(Sample {
            at: Instant::now(),
            varz,
            connz,
            topicz,
            clusterz,
        })
    };
    if args.once {
        let sample = fetch().await.context("reading the monitoring endpoint")?;
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(render(&sample, None).as_bytes())
            .and_then(|()| stdout.flush())
            .context("writing to standard output")?;
        return Ok(ExitCode::SUCCESS);
    }
    let interactive = std::io::stdout().is_terminal();
    let mut signals = ShutdownSignals::install()?;
    let keys = if interactive && std::io::stdin().is_terminal() {
        QuitKey::listen()
    } else {
        None
    };
    let (mut quit, raw_mode) = match keys {
        Some((quit, raw)) => (Some(quit), Some(raw)),
        None => (None, None),
    };
    let newline = if raw_mode.is_some() { "\r\n" } else { "\n" };
    let mut previous: Option<Sample> = None;
    let interval = Duration::from_secs_f64(args.interval);
    loop {
        let screen = match fetch().await {
            Ok(sample) => {
                let screen = render(&sample, previous.as_ref());
                previous = Some(sample);
                screen
            }
            Err(err) => format!(
                "cassini top: {err} (retrying every {:.1} s)\n",
                args.interval
            ),
        };
        let mut stdout = std::io::stdout().lock();
        let clear = if interactive { "\x1b[2J\x1b[H" } else { "" };
        let screen = screen.replace('\n', newline);
        if write!(stdout, "{clear}{screen}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return Ok(ExitCode::SUCCESS);
        }
        drop(stdout);
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = signals.next() => return Ok(ExitCode::SUCCESS),
            _ = async { quit.as_mut()?.recv().await }, if quit.is_some() => {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

fn num(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("-")
}

fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} {}", UNITS[0])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub(crate) fn duration_ms(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{:02}h", secs / 86400, (secs % 86400) / 3600),
    }
}

/// The screen for `sample`, with rates against `previous` when given.
fn render(sample: &Sample, previous: Option<&Sample>) -> String {
    let mut out = String::new();
    let server = &sample.varz["server"];
    let counts = &sample.varz["counts"];
    let counters = &sample.varz["counters"];
    let rss = server["resident_memory_bytes"]
        .as_u64()
        .map_or_else(|| "-".to_string(), |rss| bytes(rss as f64));
    let _ = writeln!(
        out,
        "cassini {}  pid {}  up {}  listen {}  rss {}  {}",
        text(&server["version"]),
        num(&server["pid"]),
        duration_ms(num(&server["uptime_ms"])),
        text(&server["listen"]),
        rss,
        if server["ready"] == true {
            "ready"
        } else {
            "NOT READY"
        },
    );
    let _ = writeln!(
        out,
        "connections {}  sessions {}  subscriptions {}  topics {}  retained {}",
        num(&counts["connections"]),
        num(&counts["sessions"]),
        num(&counts["subscriptions"]),
        num(&counts["topics"]),
        num(&counts["retained_topics"]),
    );
    let rates: Vec<String> = RATES
        .iter()
        .map(|(label, key, unit)| {
            let total = num(&counters[key]);
            let rate = previous.and_then(|before| {
                let elapsed = sample.at.duration_since(before.at).as_secs_f64();
                let earlier = num(&before.varz["counters"][key]);
                (elapsed > 0.0).then(|| total.saturating_sub(earlier) as f64 / elapsed)
            });
            let (total, rate) = match unit {
                Unit::Count => (total.to_string(), rate.map(|r| format!("{r:.1}/s"))),
                Unit::Bytes => (bytes(total as f64), rate.map(|r| format!("{}/s", bytes(r)))),
            };
            format!("{label} {total} ({})", rate.unwrap_or_else(|| "-".into()))
        })
        .collect();
    let _ = writeln!(out, "{}", rates.join("  "));
    let dropped = [
        "dropped_oldest",
        "dropped_latest",
        "dropped_newest",
        "dropped_slow_consumer",
    ]
    .iter()
    .map(|key| num(&counters[key]))
    .collect::<Vec<_>>();
    let handshakes = &sample.varz["handshakes"];
    let _ = writeln!(
        out,
        "dropped {} (oldest {}, latest {}, newest {}, slow consumer {})  rejected {}  \
         sessions created {} resumed {}  handshake failures {}",
        dropped.iter().sum::<u64>(),
        dropped[0],
        dropped[1],
        dropped[2],
        dropped[3],
        num(&counters["publishes_rejected"]),
        num(&counters["sessions_created"]),
        num(&counters["sessions_resumed"]),
        num(&handshakes["refused"]),
    );

    render_cluster(&mut out, sample, previous);

    let connections = sample.connz["connections"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "\nCONNECTIONS ({} of {})",
        connections.len(),
        num(&sample.connz["total"])
    );
    let _ = writeln!(
        out,
        "{:>6}  {:<20} {:<22} {:>8} {:>9} {:>9} {:>10} {:>10} {:>5} {:>7} {:>8}",
        "ID",
        "IDENTITY",
        "REMOTE",
        "UPTIME",
        "RTT",
        "CWND",
        "SENT",
        "RECEIVED",
        "SUBS",
        "QUEUED",
        "DROPPED"
    );
    for connection in &connections {
        let transport = &connection["transport"];
        let subscriptions = connection["subscriptions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let queued: u64 = subscriptions.iter().map(|s| num(&s["depth"])).sum();
        let dropped: u64 = subscriptions.iter().map(|s| num(&s["dropped"])).sum();
        let _ = writeln!(
            out,
            "{:>6}  {:<20} {:<22} {:>8} {:>9} {:>9} {:>10} {:>10} {:>5} {:>7} {:>8}",
            num(&connection["id"]),
            text(&connection["identity"]),
            text(&connection["remote"]),
            duration_ms(num(&connection["uptime_ms"])),
            format!("{:.1}ms", num(&transport["rtt_us"]) as f64 / 1000.0),
            bytes(num(&transport["congestion_window"]) as f64),
            bytes(num(&transport["bytes_sent"]) as f64),
            bytes(num(&transport["bytes_received"]) as f64),
            subscriptions.len(),
            queued,
            dropped,
        );
    }

    let topics = sample.topicz["topics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "\nTOPICS ({} of {})",
        topics.len(),
        num(&sample.topicz["total"])
    );
    let _ = writeln!(
        out,
        "{:<40} {:>5} {:>7} {:>8} {:>10} {:>8}",
        "FILTER", "SUBS", "GROUPS", "QUEUED", "BYTES", "DROPPED"
    );
    for topic in &topics {
        let _ = writeln!(
            out,
            "{:<40} {:>5} {:>7} {:>8} {:>10} {:>8}",
            text(&topic["filter"]),
            num(&topic["subscriptions"]),
            topic["groups"].as_array().map_or(0, Vec::len),
            num(&topic["queued_messages"]),
            bytes(num(&topic["queued_bytes"]) as f64),
            num(&topic["dropped"]),
        );
    }
    out
}

/// The CLUSTER section: this node's peers with the state of both links, the RTT of the link
/// towards each, its interest entries, and the messages forwarded to it (with their rate),
/// dropped for it and queued for it. Nothing for a standalone broker.
fn render_cluster(out: &mut String, sample: &Sample, previous: Option<&Sample>) {
    let Some(node) = sample.clusterz["node"].as_str() else {
        return;
    };
    let peers = sample.clusterz["peers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let in_routing = peers.iter().filter(|peer| peer["inbound"] == true).count();
    let _ = writeln!(
        out,
        "\nCLUSTER node {node}: {} peers, {in_routing} in routing",
        peers.len()
    );
    let _ = writeln!(
        out,
        "{:<20} {:<10} {:>9} {:>9} {:>10} {:>9} {:>8} {:>7}",
        "PEER", "STATE", "RTT", "INTEREST", "FORWARDED", "RATE", "DROPPED", "QUEUED"
    );
    for peer in &peers {
        let name = text(&peer["node"]);
        let state = match (peer["outbound"] == true, peer["inbound"] == true) {
            (true, true) => "up",
            (true, false) => "out only",
            (false, true) => "in only",
            (false, false) => "down",
        };
        let rtt = peer["rtt_micros"].as_u64().map_or_else(
            || "-".to_owned(),
            |micros| format!("{:.1}ms", micros as f64 / 1000.0),
        );
        let forwarded = num(&peer["forwarded"]);
        let rate = previous
            .and_then(|before| {
                let earlier = before.clusterz["peers"]
                    .as_array()?
                    .iter()
                    .find(|p| p["node"].as_str() == Some(name))?;
                let elapsed = sample.at.duration_since(before.at).as_secs_f64();
                (elapsed > 0.0)
                    .then(|| forwarded.saturating_sub(num(&earlier["forwarded"])) as f64 / elapsed)
            })
            .map_or_else(|| "-".to_owned(), |rate| format!("{rate:.1}/s"));
        let _ = writeln!(
            out,
            "{:<20} {:<10} {:>9} {:>9} {:>10} {:>9} {:>8} {:>7}",
            name,
            state,
            rtt,
            num(&peer["interest"]),
            forwarded,
            rate,
            num(&peer["dropped"]),
            num(&peer["queued"]),
        );
    }
}

/// The terminal in raw mode for as long as this lives.
struct RawMode;

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// `q`, `Q`, Esc or Ctrl-C pressed on the terminal.
struct QuitKey;

impl QuitKey {
    /// Puts the terminal in raw mode and reads keys on a thread of its own; the channel gets a
    /// message when one of the quit keys is pressed. `None` if the terminal refuses raw mode.
    fn listen() -> Option<(tokio::sync::mpsc::Receiver<()>, RawMode)> {
        use crossterm::event::{Event, KeyCode, KeyEvent, KeyModifiers};
        crossterm::terminal::enable_raw_mode().ok()?;
        let raw = RawMode;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        std::thread::Builder::new()
            .name("top-keys".into())
            .spawn(move || loop {
                match crossterm::event::read() {
                    Ok(Event::Key(KeyEvent {
                        code, modifiers, ..
                    })) => {
                        let quits = matches!(code, KeyCode::Char('q' | 'Q') | KeyCode::Esc)
                            || (code == KeyCode::Char('c')
                                && modifiers.contains(KeyModifiers::CONTROL));
                        if quits {
                            let _ = tx.blocking_send(());
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            })
            .ok()?;
        Some((rx, raw))
    }
}
