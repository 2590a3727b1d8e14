//! `cassini cluster members|add|remove`: the cluster's Raft membership, read and changed
//! through a member's monitoring endpoint (`/cluster/members`, `/cluster/add`,
//! `/cluster/remove`), with its bearer token.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cassini_monitor::client::{get_as, post_as};
use serde_json::Value;

use crate::cli::{ClusterChangeArgs, ClusterCommand, ClusterMembersArgs, MonitorArgs};
use crate::context::{print_out, MonitorTarget, DEFAULT_MONITOR};

/// How long a request may take: the endpoint gives a change 10 s, then answers.
const LIMIT: Duration = Duration::from_secs(15);

pub(crate) async fn run(command: ClusterCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::Members(args) => members(args).await,
        ClusterCommand::Add(args) => change(args, "add").await,
        ClusterCommand::Remove(args) => change(args, "remove").await,
    }
}

async fn target(monitor: &MonitorArgs, context: Option<&str>) -> anyhow::Result<MonitorTarget> {
    monitor
        .resolve(context, Some(DEFAULT_MONITOR))
        .await?
        .context("no monitoring endpoint")
}

async fn members(args: ClusterMembersArgs) -> anyhow::Result<ExitCode> {
    let monitor = target(&args.monitor, args.context.as_deref()).await?;
    let (status, body) = get_as(
        monitor.addr,
        "/cluster/members",
        monitor.token.as_ref(),
        LIMIT,
    )
    .await?;
    let membership = answer(status, &body)?;
    show(&membership, args.json)
}

async fn change(args: ClusterChangeArgs, verb: &str) -> anyhow::Result<ExitCode> {
    let monitor = target(&args.monitor, args.context.as_deref()).await?;
    let path = format!("/cluster/{verb}?node={}", query_value(&args.node));
    let (status, body) = post_as(monitor.addr, &path, monitor.token.as_ref(), LIMIT).await?;
    let membership =
        answer(status, &body).with_context(|| format!("cluster {verb} {}", args.node))?;
    show(&membership, args.json)
}

/// The JSON of a `200` answer, or the endpoint's reason as the error.
fn answer(status: u16, body: &str) -> anyhow::Result<Value> {
    let json: Option<Value> = serde_json::from_str(body).ok();
    if status == 200 {
        return json.context("the monitoring endpoint did not answer JSON");
    }
    let reason = json
        .as_ref()
        .and_then(|json| json["error"].as_str())
        .map_or_else(|| body.trim().to_owned(), str::to_owned);
    anyhow::bail!("{reason} (HTTP {status})")
}

fn show(membership: &Value, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        let text = serde_json::to_string_pretty(membership).context("writing JSON")?;
        return print_out(&format!("{text}\n"));
    }
    let list = |key: &str| {
        let names: Vec<&str> = membership[key]
            .as_array()
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if names.is_empty() {
            "-".to_owned()
        } else {
            names.join(" ")
        }
    };
    let leader = membership["leader"].as_str().unwrap_or("-");
    let mut out = format!(
        "voters    {}\nlearners  {}\nleader    {leader}\n",
        list("voters"),
        list("learners")
    );
    if membership["joint"].as_bool() == Some(true) {
        out.push_str("a change is under way (joint configuration)\n");
    }
    print_out(&out)
}

/// `value` percent-encoded for a query string (node names are plain, but never trusted).
fn query_value(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
