//! Shared by the examples: connect as the environment says.

use cassini_client::{Client, ConnectionError};

/// Connects to `CASSINI_SERVER` with the certificates in `CASSINI_CERTS` for `CASSINI_NAME`.
pub async fn connect() -> Result<Client, ConnectionError> {
    let server = std::env::var("CASSINI_SERVER").unwrap_or_else(|_| "127.0.0.1:7700".into());
    let certs = std::env::var("CASSINI_CERTS").unwrap_or_else(|_| "certs".into());
    let name = std::env::var("CASSINI_NAME").unwrap_or_else(|_| "dev".into());
    Client::builder(server.as_str())
        .cert_dir(certs, &name)
        .server_name("localhost")
        .connect()
        .await
}
