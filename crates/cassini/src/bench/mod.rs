//! `cassini bench`: measurements, not tests. Each scenario starts a broker in-process (or uses
//! `--server`), drives it with real clients over QUIC on loopback, and reports figures; it never
//! asserts a timing. Figures are meant to be compared as ratios within one run.

pub(crate) mod durable;
pub(crate) mod embedded;
pub(crate) mod hol;
pub(crate) mod latency;
pub(crate) mod paced_run;
pub(crate) mod pacing;
pub(crate) mod report;
pub(crate) mod throughput;
