//! Cassini's QUIC transport: quinn endpoints secured by mutual TLS, and the certificate tooling
//! behind them.
//!
//! Layering (no file imports one above it): PEM loading and [`tls::TlsError`] at the bottom, then
//! [`revocation`] (CRLs and certificate keys), [`tls`] (configurations built on both), [`certs`],
//! [`endpoint`] and [`faults`] above it, and `server` on top, whose accept counters and
//! live-connection registry are files below it; `cluster` sits above `server` (it uses the
//! server's error type).
//!
//! # Layout
//!
//! - [`certs`]: the private certificate authority; issuing server and client certificates; the
//!   certificate directory layout (`ca.crt`, `server.key`, `client-NAME.crt`, ...).
//! - [`tls`]: rustls configurations (TLS 1.3, ALPN, required client certificates, no
//!   resumption) and [`tls::QuicOptions`] turned into quinn configurations; PEM loading
//!   (`tls/pem_files.rs`) and [`tls::TlsError`] (`tls/error.rs`) below it.
//! - [`identity`]: the identity a peer certificate stands for (URI SAN, DNS SAN, then CN).
//! - [`revocation`]: the CRL rule (a CRL once in force is never dropped by a missing file),
//!   and the issuer-and-serial keys by which CRLs and sessions name certificates.
//! - [`endpoint`]: UDP sockets with large buffers and the quinn endpoints that drive them.
//! - [`reset_key`]: the stateless reset key, kept in a file so a restarted broker can reset
//!   its previous life's connections.
//! - [`faults`]: a UDP socket that loses, delays, reorders, duplicates and black-holes
//!   datagrams, seeded, for fault-injection tests and lossy-link benchmarks.
//! - `test_util` (feature `test-util`, for tests only): a certificate authority made in memory
//!   for a test, and a framed reader over a quinn receive stream, shared by every crate's tests.
//! - `cluster` (feature `server`): the links between cluster nodes (ALPN `cassini-cluster/1`,
//!   node certificates only), the transport's second kind of peer (docs/CLUSTERING.md).
//! - `server` (feature `server`): the broker's accept loop and the adapter from quinn to
//!   `cassini-broker`'s transport interface. Clients build without it.

pub mod certs;
#[cfg(feature = "server")]
pub mod cluster;
pub mod endpoint;
pub mod faults;
pub mod identity;
pub mod reset_key;
pub mod revocation;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "test-util")]
pub mod test_util;
pub mod tls;
