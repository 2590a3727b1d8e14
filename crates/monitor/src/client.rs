//! A small HTTP/1.1 client for the monitoring endpoint (`cassini top`, `cassini cluster`,
//! tests): GET, and POST without a body; one request per connection, bounded in time and size.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::BearerToken;

/// The largest answer read (a full page of `/connz` fits comfortably).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No answer within the time limit.
    #[error("no answer from {0} in time")]
    Timeout(SocketAddr),
    /// The connection failed.
    #[error("cannot reach the monitoring endpoint at {addr}: {source}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// HTTP failed.
    #[error("HTTP error from {addr}: {reason}")]
    Http {
        /// Where.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The endpoint answered with an error status.
    #[error("{path} answered {status}: {body}")]
    Status {
        /// The path asked for.
        path: String,
        /// The status.
        status: u16,
        /// The body.
        body: String,
    },
    /// The body is not the JSON expected.
    #[error("{path} did not answer JSON: {reason}")]
    Json {
        /// The path asked for.
        path: String,
        /// Why.
        reason: String,
    },
}

/// GETs `path` (with its query) from `addr`; returns the status and the body.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> Result<(u16, String), ClientError> {
    get_as(addr, path, None, limit).await
}

/// GETs `path` (with its query) from `addr`, presenting `token` (if any) as
/// `Authorization: Bearer TOKEN`; returns the status and the body.
pub async fn get_as(
    addr: SocketAddr,
    path: &str,
    token: Option<&BearerToken>,
    limit: Duration,
) -> Result<(u16, String), ClientError> {
    tokio::time::timeout(limit, request(hyper::Method::GET, addr, path, token))
        .await
        .map_err(|_| ClientError::Timeout(addr))?
}

/// POSTs (with an empty body) `path` (with its query) to `addr`, presenting `token` (if any);
/// returns the status and the body.
pub async fn post_as(
    addr: SocketAddr,
    path: &str,
    token: Option<&BearerToken>,
    limit: Duration,
) -> Result<(u16, String), ClientError> {
    tokio::time::timeout(limit, request(hyper::Method::POST, addr, path, token))
        .await
        .map_err(|_| ClientError::Timeout(addr))?
}

/// GETs `path` and parses a `200` answer as JSON.
pub async fn get_json(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> Result<serde_json::Value, ClientError> {
    get_json_as(addr, path, None, limit).await
}

/// GETs `path` presenting `token` (if any), and parses a `200` answer as JSON.
pub async fn get_json_as(
    addr: SocketAddr,
    path: &str,
    token: Option<&BearerToken>,
    limit: Duration,
) -> Result<serde_json::Value, ClientError> {
    let (status, body) = get_as(addr, path, token, limit).await?;
    if status != 200 {
        return Err(ClientError::Status {
            path: path.to_string(),
            status,
            body,
        });
    }
    serde_json::from_str(&body).map_err(|err| ClientError::Json {
        path: path.to_string(),
        reason: err.to_string(),
    })
}

async fn request(
    method: hyper::Method,
    addr: SocketAddr,
    path: &str,
    token: Option<&BearerToken>,
) -> Result<(u16, String), ClientError> {
    let http = |reason: String| ClientError::Http { addr, reason };
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect { addr, source })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| http(err.to_string()))?;
    let driver = tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string());
    if let Some(token) = token {
        request = request.header(
            hyper::header::AUTHORIZATION,
            format!("Bearer {}", token.secret()),
        );
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|err| http(err.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|err| http(err.to_string()))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|err| http(err.to_string()))?
        .to_bytes();
    driver.abort();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
