//! `summary FILE`: the side-by-side table of `bench/peers.sh`. Reads one JSON report per line
//! (from `cassini bench ... --json` and `cassini-bench-peers ... --json`), groups them by case
//! (scenario and its distinguishing parameters) and broker, takes the median of each figure
//! over the repetitions, and prints a Markdown table with the ratio Cassini/peer per peer, and
//! the ratio of Cassini's MQTT gateway to Mosquitto at each QoS (`cassini-mqtt-qosN` over
//! `mosquitto-qosN`: the same MQTT client against both).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

/// The figures compared per scenario: (label, JSON pointer).
fn figures(scenario: &str) -> &'static [(&'static str, &'static str)] {
    match scenario {
        "throughput" => &[("msg/s", "/msgs_per_s"), ("lost", "/lost")],
        "fanout" => &[("deliveries/s", "/deliveries_per_s"), ("lost", "/lost")],
        "latency" => &[
            ("p50 µs", "/latency/p50_us"),
            ("p99 µs", "/latency/p99_us"),
            ("p99.9 µs", "/latency/p999_us"),
            ("lost", "/lost"),
        ],
        "request" => &[
            ("round trips/s", "/round_trips_per_s"),
            ("p50 µs", "/latency/p50_us"),
            ("p99 µs", "/latency/p99_us"),
        ],
        _ => &[],
    }
}

/// What tells two runs of one scenario apart.
fn case(report: &Value) -> String {
    let scenario = report["scenario"].as_str().unwrap_or("?");
    let param = |key: &str| report.get(key).map(Value::to_string).unwrap_or_default();
    match scenario {
        "latency" => format!("latency {} msg/s, {} B", param("rate"), param("size")),
        "fanout" => format!("fanout 1→{}, {} B", param("subscribers"), param("size")),
        "throughput" => format!("throughput 1→1, {} B", param("size")),
        "request" => format!("request/reply, {} B", param("size")),
        other => other.to_string(),
    }
}

/// The ratio columns, as (ours, theirs): `cassini` against every peer, and each
/// `cassini-mqtt-qosN` (the MQTT gateway) against `mosquitto-qosN`.
fn comparisons(brokers: &[String]) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    if brokers.iter().any(|broker| broker == "cassini") {
        for peer in brokers.iter().filter(|b| !b.starts_with("cassini")) {
            pairs.push(("cassini".to_string(), peer.clone()));
        }
    }
    for gateway in brokers {
        let Some(qos) = gateway.strip_prefix("cassini-mqtt-") else {
            continue;
        };
        let mosquitto = format!("mosquitto-{qos}");
        if brokers.contains(&mosquitto) {
            pairs.push((gateway.clone(), mosquitto));
        }
    }
    pairs
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if !values.len().is_multiple_of(2) {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    })
}

fn show(value: f64) -> String {
    if value.abs() >= 1000.0 {
        let rounded = value.round() as i64;
        let digits = rounded.abs().to_string();
        let mut grouped = String::new();
        for (index, digit) in digits.chars().enumerate() {
            if index > 0 && (digits.len() - index).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        if rounded < 0 {
            format!("-{grouped}")
        } else {
            grouped
        }
    } else if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// Prints the table for the reports in `file`.
pub(crate) fn print(file: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    // case → broker → reports
    let mut cases: BTreeMap<String, BTreeMap<String, Vec<Value>>> = BTreeMap::new();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let report: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON report", file.display(), number + 1))?;
        let broker = report["broker"].as_str().unwrap_or("?").to_string();
        cases
            .entry(case(&report))
            .or_default()
            .entry(broker)
            .or_default()
            .push(report);
    }
    let mut brokers: Vec<String> = cases
        .values()
        .flat_map(|by_broker| by_broker.keys().cloned())
        .collect();
    brokers.sort_by_key(|broker| (!broker.starts_with("cassini"), broker.clone()));
    brokers.dedup();
    let pairs = comparisons(&brokers);

    let mut header = vec!["case".to_string(), "figure".to_string()];
    header.extend(brokers.iter().cloned());
    header.extend(
        pairs
            .iter()
            .map(|(ours, theirs)| format!("{ours}/{theirs}")),
    );
    println!("| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for (case, by_broker) in &cases {
        let scenario = case.split_whitespace().next().unwrap_or_default();
        let scenario = if scenario == "request/reply," {
            "request"
        } else {
            scenario
        };
        for (label, pointer) in figures(scenario) {
            let medians: BTreeMap<&String, (f64, usize)> = brokers
                .iter()
                .filter_map(|broker| {
                    let mut values: Vec<f64> = by_broker
                        .get(broker)?
                        .iter()
                        .filter_map(|report| report.pointer(pointer)?.as_f64())
                        .collect();
                    let runs = values.len();
                    Some((broker, (median(&mut values)?, runs)))
                })
                .collect();
            if medians.is_empty() {
                continue;
            }
            let mut row = vec![case.clone(), label.to_string()];
            for broker in &brokers {
                row.push(medians.get(broker).map_or("—".into(), |(value, runs)| {
                    format!("{} (n={runs})", show(*value))
                }));
            }
            for (ours, theirs) in &pairs {
                let ratio = medians
                    .get(ours)
                    .zip(medians.get(theirs))
                    .filter(|_| *label != "lost")
                    .map(|((ours, _), (theirs, _))| ours / theirs.max(f64::MIN_POSITIVE));
                row.push(ratio.map_or("—".into(), |ratio| format!("{ratio:.2}")));
            }
            println!("| {} |", row.join(" | "));
        }
    }
    println!();
    println!(
        "Medians over the repetitions (n = runs). Ratios are Cassini's median over the peer's"
    );
    println!("(the MQTT gateway's over Mosquitto's at the same QoS, with the same MQTT client):");
    println!("above 1 is better for msg/s, deliveries/s and round trips/s; below 1 is better for latencies.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn cassini_is_compared_with_every_peer_and_the_gateway_with_mosquitto_at_its_qos() {
        let brokers: Vec<String> = [
            "cassini",
            "cassini-mqtt-qos0",
            "cassini-mqtt-qos1",
            "mosquitto-qos0",
            "mosquitto-qos1",
            "nats",
        ]
        .map(String::from)
        .to_vec();
        let pairs: Vec<String> = comparisons(&brokers)
            .into_iter()
            .map(|(ours, theirs)| format!("{ours}/{theirs}"))
            .collect();
        assert_eq!(
            pairs,
            [
                "cassini/mosquitto-qos0",
                "cassini/mosquitto-qos1",
                "cassini/nats",
                "cassini-mqtt-qos0/mosquitto-qos0",
                "cassini-mqtt-qos1/mosquitto-qos1",
            ]
        );
    }

    #[test]
    fn large_figures_are_grouped_by_thousands() {
        assert_eq!(show(1_234_567.4), "1,234,567");
        assert_eq!(show(999.0), "999");
        assert_eq!(show(12.25), "12.2");
    }
}
