//! A scenario's result: its parameters, its figures and its latency histograms, printed as a
//! table for people or as one JSON object for scripts (`--json`). The JSON keys are a contract
//! with `bench/peers.sh` and CI's smoke test.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::latencies::Latencies;
use crate::plot;

/// One scenario run against one broker.
#[derive(Debug)]
pub struct Report {
    scenario: &'static str,
    broker: String,
    headline: String,
    params: Map<String, Value>,
    figures: Vec<(&'static str, &'static str, Value)>,
    latencies: Vec<(&'static str, &'static str, Latencies)>,
}

impl Report {
    /// An empty report of `scenario` against `broker`, described by `headline` in the table.
    pub fn new(scenario: &'static str, broker: impl Into<String>, headline: String) -> Self {
        Self {
            scenario,
            broker: broker.into(),
            headline,
            params: Map::new(),
            figures: Vec::new(),
            latencies: Vec::new(),
        }
    }

    /// A parameter of the run (rate, size, ...), in the JSON only.
    pub fn param(&mut self, key: &'static str, value: impl Into<Value>) -> &mut Self {
        self.params.insert(key.to_string(), value.into());
        self
    }

    /// A figure: JSON `key`, table `label`.
    pub fn figure(
        &mut self,
        key: &'static str,
        label: &'static str,
        value: impl Into<Value>,
    ) -> &mut Self {
        self.figures.push((key, label, value.into()));
        self
    }

    /// A latency histogram: JSON `key` (an object of percentiles), table row `label`.
    pub fn latencies(
        &mut self,
        key: &'static str,
        label: &'static str,
        latencies: Latencies,
    ) -> &mut Self {
        self.latencies.push((key, label, latencies));
        self
    }

    /// The report as one JSON object: `scenario`, `broker`, the parameters, the figures, and
    /// each histogram under its key.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("scenario".into(), json!(self.scenario));
        object.insert("broker".into(), json!(self.broker));
        object.extend(self.params.clone());
        for (key, _, value) in &self.figures {
            object.insert((*key).to_string(), value.clone());
        }
        for (key, _, latencies) in &self.latencies {
            object.insert((*key).to_string(), latencies.to_json());
        }
        Value::Object(object)
    }

    /// The report as a table.
    pub fn table(&self) -> String {
        let mut out = format!("{} [{}]: {}\n", self.scenario, self.broker, self.headline);
        for (_, label, value) in &self.figures {
            let shown = match value.as_f64() {
                Some(number) if value.is_f64() && number.abs() < 100.0 => format!("{number:.3}"),
                Some(number) if value.is_f64() => format!("{number:.0}"),
                _ => value.to_string(),
            };
            out.push_str(&format!("  {label:<32} {shown:>14}\n"));
        }
        if !self.latencies.is_empty() {
            out.push_str(&Latencies::header());
            out.push('\n');
            for (_, label, latencies) in &self.latencies {
                out.push_str(&latencies.row(label));
                out.push('\n');
            }
        }
        out
    }

    /// Prints the report (JSON or table) and, if asked, draws its latency curves into `plot`.
    pub fn emit(&self, json: bool, plot: Option<&Path>) -> anyhow::Result<()> {
        if json {
            println!("{}", self.to_json());
        } else {
            print!("{}", self.table());
        }
        if let Some(path) = plot {
            let series: Vec<_> = self
                .latencies
                .iter()
                .map(|(_, label, latencies)| (*label, latencies))
                .collect();
            let title = format!("{} [{}]", self.scenario, self.broker);
            plot::percentile_curve(path, &title, &series)?;
            if !json {
                println!("plot: {}", path.display());
            }
        }
        Ok(())
    }
}
