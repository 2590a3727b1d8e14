//! [`BrokerAddress`]: where the broker listens, and resolving it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::error::ConnectionError;

/// Where the broker listens: a socket address, or `host:port` resolved when connecting, or
/// several of them (`"a:7700,b:7700"`, or a `Vec`), tried in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerAddress {
    /// An IP address and port.
    Socket(SocketAddr),
    /// A `host:port` string, resolved with the system resolver when connecting.
    HostPort(String),
    /// Several addresses of one broker (or of a cluster's brokers), tried in order.
    List(Vec<BrokerAddress>),
}

impl From<SocketAddr> for BrokerAddress {
    fn from(addr: SocketAddr) -> Self {
        Self::Socket(addr)
    }
}

impl From<&str> for BrokerAddress {
    /// One address, or a comma-separated list of them.
    fn from(addr: &str) -> Self {
        if addr.contains(',') {
            return Self::List(
                addr.split(',')
                    .map(str::trim)
                    .filter(|one| !one.is_empty())
                    .map(Self::from)
                    .collect(),
            );
        }
        match addr.parse() {
            Ok(socket) => Self::Socket(socket),
            Err(_) => Self::HostPort(addr.to_owned()),
        }
    }
}

impl From<String> for BrokerAddress {
    fn from(addr: String) -> Self {
        Self::from(addr.as_str())
    }
}

impl<T: Into<BrokerAddress>> From<Vec<T>> for BrokerAddress {
    fn from(addrs: Vec<T>) -> Self {
        Self::List(addrs.into_iter().map(Into::into).collect())
    }
}

impl BrokerAddress {
    /// Whether this names more than one address (a list of two or more).
    pub(crate) fn is_several(&self) -> bool {
        matches!(self, Self::List(list) if list.len() > 1)
    }
}

impl fmt::Display for BrokerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Socket(addr) => addr.fmt(f),
            Self::HostPort(addr) => f.write_str(addr),
            Self::List(addrs) => {
                for (n, addr) in addrs.iter().enumerate() {
                    if n > 0 {
                        f.write_str(",")?;
                    }
                    addr.fmt(f)?;
                }
                Ok(())
            }
        }
    }
}

impl BrokerAddress {
    /// The name to verify the broker's certificate against when none is set: the host of a
    /// `host:port` address (the first one of a list), else `localhost` (the name Cassini
    /// development certificates carry).
    pub(crate) fn default_server_name(&self) -> String {
        if let Self::List(addrs) = self {
            return addrs
                .iter()
                .map(Self::default_server_name)
                .find(|name| name != "localhost")
                .unwrap_or_else(|| "localhost".to_owned());
        }
        if let Self::HostPort(addr) = self {
            let host = addr
                .rsplit_once(':')
                .map_or(addr.as_str(), |(host, _)| host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if !host.is_empty() && host.parse::<IpAddr>().is_err() {
                return host.to_owned();
            }
        }
        "localhost".to_owned()
    }

    /// Every socket address of the broker, in order without repeats: the address itself,
    /// every address of a `host:port` (IPv6 and IPv4 alike, in the resolver's order), and a
    /// list's addresses one after the other. A list fails only if none of its entries resolves.
    pub(crate) async fn resolve_all(&self) -> Result<Vec<SocketAddr>, ConnectionError> {
        let mut addresses: Vec<SocketAddr> = Vec::new();
        let mut first_error = None;
        let entries: Vec<&BrokerAddress> = match self {
            Self::List(addrs) => addrs.iter().collect(),
            one => vec![one],
        };
        for entry in entries {
            match entry.resolve_one().await {
                Ok(found) => {
                    for candidate in found {
                        if !addresses.contains(&candidate) {
                            addresses.push(candidate);
                        }
                    }
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) if addresses.is_empty() => Err(error),
            _ if addresses.is_empty() => Err(ConnectionError::Resolve {
                addr: self.to_string(),
                reason: "no address given".to_owned(),
            }),
            _ => Ok(addresses),
        }
    }

    async fn resolve_one(&self) -> Result<Vec<SocketAddr>, ConnectionError> {
        let addr = match self {
            Self::Socket(addr) => return Ok(vec![*addr]),
            Self::HostPort(addr) => addr,
            Self::List(_) => return Box::pin(self.resolve_all()).await,
        };
        let resolve_error = |reason: String| ConnectionError::Resolve {
            addr: addr.clone(),
            reason,
        };
        let found: Vec<SocketAddr> = tokio::net::lookup_host(addr.as_str())
            .await
            .map_err(|error| resolve_error(error.to_string()))?
            .collect();
        if found.is_empty() {
            return Err(resolve_error("the name has no addresses".to_owned()));
        }
        Ok(found)
    }
}
