//! `cassini events`: the broker's system events (`$SYS.event.<kind>`, docs/EVENTS.md) printed
//! as readable lines or as their JSON payloads.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use cassini_broker::events::TOPIC_PREFIX;
use serde_json::Value;

use crate::cli::EventsArgs;
use crate::pubsub::{connect, deadline_after, next_before, timed_out, Next};
use crate::signals::ShutdownSignals;

/// Subscribes to the asked kinds and prints each event until `--count`, `--timeout`, a signal,
/// or the end of a subscription.
pub(crate) async fn run(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let mut signals = ShutdownSignals::install()?;
    let deadline = deadline_after(args.timeout)?;
    let filters: Vec<String> = if args.kind.is_empty() {
        vec![format!("{TOPIC_PREFIX}.>")]
    } else {
        let mut kinds = args.kind.clone();
        kinds.sort();
        kinds.dedup();
        kinds
            .iter()
            .map(|kind| format!("{TOPIC_PREFIX}.{kind}"))
            .collect()
    };
    let client = connect(&args.connect).await?;
    let mut subscriptions = Vec::with_capacity(filters.len());
    for filter in &filters {
        let subscription = client
            .subscribe(filter.as_str())
            .await
            .with_context(|| format!("subscribing to {filter}"))?;
        subscriptions.push(subscription);
    }
    eprintln!("subscribed to {}", filters.join(", "));
    let mut events = futures_util::stream::select_all(subscriptions);
    let mut received = 0u64;
    let mut stdout = std::io::stdout().lock();
    while args.count.is_none_or(|count| received < count) {
        match next_before(deadline, &mut events, &mut signals).await {
            Next::Signalled => break,
            Next::TimedOut => {
                let status = timed_out(args.timeout, received, "event");
                let _ = client.close().await;
                return Ok(status);
            }
            Next::Ended => {
                anyhow::bail!("the events subscription ended after {received} event(s)");
            }
            Next::Item(message) => {
                received += 1;
                let line = if args.json {
                    String::from_utf8_lossy(message.payload()).into_owned()
                } else {
                    readable(message.topic(), message.payload())
                };
                writeln!(stdout, "{line}")
                    .and_then(|()| stdout.flush())
                    .context("writing to standard output")?;
            }
        }
    }
    client.close().await.context("closing the connection")?;
    Ok(ExitCode::SUCCESS)
}

/// One readable line: the time (UTC), the kind, then every other field as `key=value` in name
/// order (strings with spaces quoted). A payload that is not a JSON object is printed after
/// its topic as it is.
fn readable(topic: &str, payload: &[u8]) -> String {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(payload) else {
        return format!("{topic} {}", String::from_utf8_lossy(payload));
    };
    let time = fields
        .get("time_ms")
        .and_then(Value::as_u64)
        .map_or_else(|| "-".to_string(), utc);
    let kind = fields.get("kind").and_then(Value::as_str).unwrap_or(topic);
    let mut line = format!("{time} {kind}");
    for (key, value) in &fields {
        if key == "time_ms" || key == "kind" {
            continue;
        }
        let value = match value {
            Value::String(text) if text.is_empty() || text.contains(char::is_whitespace) => {
                format!("{text:?}")
            }
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        line.push_str(&format!(" {key}={value}"));
    }
    line
}

/// `ms` since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        ms % 1000
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc(1_796_520_857_851), "2026-12-06T01:34:17.851Z");
    }

    #[test]
    fn a_line_has_time_kind_and_sorted_fields() {
        let payload = br#"{"kind":"disconnect","time_ms":0,"identity":"a","reason":"connection lost: x","clean":false,"code":null}"#;
        assert_eq!(
            readable("$SYS.event.disconnect", payload),
            "1970-01-01T00:00:00.000Z disconnect clean=false code=null identity=a reason=\"connection lost: x\""
        );
        assert_eq!(
            readable("$SYS.event.x", b"not json"),
            "$SYS.event.x not json"
        );
    }
}
