//! Latency histograms and how they are printed.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;

/// Latencies in microseconds, 1 µs to 60 s, three significant figures.
#[derive(Debug, Clone)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Latencies {
    /// An empty histogram.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            histogram: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        })
    }

    /// Records one latency (below 1 µs counts as 1 µs, above 60 s as 60 s).
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.histogram.saturating_record(micros);
    }

    /// Adds every value recorded in `other`.
    pub fn merge(&mut self, other: &Latencies) -> anyhow::Result<()> {
        self.histogram.add(&other.histogram)?;
        Ok(())
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// Microseconds at quantile `q`.
    pub fn at(&self, q: f64) -> u64 {
        self.histogram.value_at_quantile(q)
    }

    /// The highest latency, µs.
    pub fn max(&self) -> u64 {
        self.histogram.max()
    }

    /// Count and percentiles as a JSON object (`count`, `p50_us` ... `max_us`).
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "count": self.count(),
            "p50_us": self.at(0.50),
            "p90_us": self.at(0.90),
            "p99_us": self.at(0.99),
            "p999_us": self.at(0.999),
            "max_us": self.max(),
        })
    }

    /// One table row: label, count, p50, p90, p99, p99.9, max.
    pub fn row(&self, label: &str) -> String {
        format!(
            "{label:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            self.count(),
            self.at(0.50),
            self.at(0.90),
            self.at(0.99),
            self.at(0.999),
            self.max()
        )
    }

    /// The header line for [`Latencies::row`].
    pub fn header() -> String {
        format!(
            "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "scenario", "messages", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs"
        )
    }
}
