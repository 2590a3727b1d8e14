//! QUIC endpoints: the UDP socket and the quinn endpoint that drives it.
//!
//! This module creates the UDP socket itself (with socket2) so that it can ask for large
//! receive and send buffers before quinn takes the socket over, and reports what the kernel
//! granted: with the usual 208 KiB defaults, thousands of simultaneous handshakes lose packets.
//! It does not build TLS configurations (see [`crate::tls`]) and does not accept or use
//! connections; that is the caller's job.
//!
//! Both functions must be called from inside a Tokio runtime: the endpoint's driver task is
//! spawned on it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffer sizes the kernel granted, as it reports them.
///
/// Linux reports twice the usable size (it counts its bookkeeping) and caps requests at
/// `net.core.rmem_max` / `net.core.wmem_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketBuffers {
    /// Receive buffer (`SO_RCVBUF`), bytes.
    pub recv: usize,
    /// Send buffer (`SO_SNDBUF`), bytes.
    pub send: usize,
}

/// Why an endpoint could not be bound.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// There is no Tokio runtime to run the endpoint on.
    #[error("a QUIC endpoint must be bound from inside a Tokio runtime")]
    NoRuntime,
    /// Creating, configuring or binding the UDP socket failed.
    #[error("{action} UDP socket {addr}: {error}")]
    Socket {
        /// What was being done, e.g. `"binding"`.
        action: &'static str,
        /// The address the socket is for.
        addr: SocketAddr,
        /// The operating system's error.
        error: io::Error,
    },
    /// quinn could not start the endpoint on the socket.
    #[error("starting the QUIC endpoint on {addr}: {error}")]
    Start {
        /// The address the endpoint was asked to bind.
        addr: SocketAddr,
        /// quinn's error.
        error: io::Error,
    },
}

/// Binds the broker's endpoint to `addr`, accepting connections with `config`.
///
/// The socket's buffers are sized to `opts.socket_buffer_bytes`; the sizes granted are returned
/// (and logged at warn level if smaller than asked). Bind to port 0 for an ephemeral port and
/// read it back with [`quinn::Endpoint::local_addr`].
pub fn bind_server(
    addr: SocketAddr,
    config: quinn::ServerConfig,
    opts: &crate::tls::QuicOptions,
) -> Result<(quinn::Endpoint, SocketBuffers), EndpointError> {
    let (socket, buffers) = udp_socket(addr, opts.socket_buffer_bytes)?;
    let endpoint_config = endpoint_config(opts);
    let endpoint = start(addr, endpoint_config, Some(config), socket)?;
    Ok((endpoint, buffers))
}

/// Like [`bind_server`], with the socket wrapped by `layer` if one is given (fault injection
/// on a cluster node's endpoint, in tests).
pub fn bind_server_layered(
    addr: SocketAddr,
    config: quinn::ServerConfig,
    opts: &crate::tls::QuicOptions,
    layer: Option<&SocketLayer>,
) -> Result<(quinn::Endpoint, SocketBuffers), EndpointError> {
    let Some(layer) = layer else {
        return bind_server(addr, config, opts);
    };
    let (socket, buffers) = udp_socket(addr, opts.socket_buffer_bytes)?;
    let socket = wrap_socket(addr, socket, layer)?;
    let endpoint_config = endpoint_config(opts);
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config,
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|error| EndpointError::Start { addr, error })?;
    Ok((endpoint, buffers))
}

/// Binds a client endpoint to `bind` (usually `0.0.0.0:0` or `[::]:0`) whose connections use
/// `config` by default.
///
/// The socket's buffers are sized to `opts.socket_buffer_bytes`, as for [`bind_server`].
pub fn bind_client(
    bind: SocketAddr,
    config: quinn::ClientConfig,
    opts: &crate::tls::QuicOptions,
) -> Result<quinn::Endpoint, EndpointError> {
    bind_client_layered(bind, config, opts, None)
}

/// Wraps the UDP socket an endpoint uses, e.g. in a [`crate::faults::FaultySocket`].
#[derive(Clone)]
pub struct SocketLayer(Arc<SocketWrapper>);

type SocketWrapper =
    dyn Fn(Arc<dyn quinn::AsyncUdpSocket>) -> Arc<dyn quinn::AsyncUdpSocket> + Send + Sync;

impl SocketLayer {
    /// A layer that wraps each new socket with `wrap`.
    pub fn new(
        wrap: impl Fn(Arc<dyn quinn::AsyncUdpSocket>) -> Arc<dyn quinn::AsyncUdpSocket>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        Self(Arc::new(wrap))
    }

    fn wrap(&self, socket: Arc<dyn quinn::AsyncUdpSocket>) -> Arc<dyn quinn::AsyncUdpSocket> {
        (self.0)(socket)
    }
}

impl std::fmt::Debug for SocketLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SocketLayer")
    }
}

/// Like [`bind_client`], with the socket wrapped by `layer` if one is given.
pub fn bind_client_layered(
    bind: SocketAddr,
    config: quinn::ClientConfig,
    opts: &crate::tls::QuicOptions,
    layer: Option<&SocketLayer>,
) -> Result<quinn::Endpoint, EndpointError> {
    let (socket, _) = udp_socket(bind, opts.socket_buffer_bytes)?;
    let mut endpoint = match layer {
        None => start(bind, endpoint_config(opts), None, socket)?,
        Some(layer) => {
            let socket = wrap_socket(bind, socket, layer)?;
            start_abstract(bind, endpoint_config(opts), socket)?
        }
    };
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Moves `endpoint` to `socket`, wrapped by `layer` if one is given (QUIC migrates its
/// connections to the new address).
pub fn rebind_layered(
    endpoint: &quinn::Endpoint,
    socket: std::net::UdpSocket,
    layer: Option<&SocketLayer>,
) -> io::Result<()> {
    match layer {
        None => endpoint.rebind(socket),
        Some(layer) => {
            let socket = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket)?;
            endpoint.rebind_abstract(layer.wrap(socket))
        }
    }
}

fn wrap_socket(
    addr: SocketAddr,
    socket: std::net::UdpSocket,
    layer: &SocketLayer,
) -> Result<Arc<dyn quinn::AsyncUdpSocket>, EndpointError> {
    tokio::runtime::Handle::try_current().map_err(|_| EndpointError::NoRuntime)?;
    let socket = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket)
        .map_err(|error| EndpointError::Start { addr, error })?;
    Ok(layer.wrap(socket))
}

/// The endpoint's settings: the stateless reset key, if given, and the largest UDP payload it
/// accepts, `opts.max_udp_payload_bytes` (announced to peers, whose path MTU discovery may
/// grow their packets up to it).
fn endpoint_config(opts: &crate::tls::QuicOptions) -> quinn::EndpointConfig {
    let mut config = match &opts.stateless_reset_key {
        Some(key) => key.endpoint_config(),
        None => quinn::EndpointConfig::default(),
    };
    // quinn refuses only values outside 1,200..=65,527; `QuicOptions::max_udp_payload_bytes`
    // is checked against a narrower range when the TLS configuration is built, and an
    // endpoint given a value quinn refuses keeps quinn's default.
    let _ = config.max_udp_payload_size(opts.max_udp_payload_bytes);
    config
}

fn start_abstract(
    addr: SocketAddr,
    endpoint_config: quinn::EndpointConfig,
    socket: Arc<dyn quinn::AsyncUdpSocket>,
) -> Result<quinn::Endpoint, EndpointError> {
    quinn::Endpoint::new_with_abstract_socket(
        endpoint_config,
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|error| EndpointError::Start { addr, error })
}

fn udp_socket(
    addr: SocketAddr,
    buffer_bytes: usize,
) -> Result<(std::net::UdpSocket, SocketBuffers), EndpointError> {
    let socket_error = |action| {
        move |error| EndpointError::Socket {
            action,
            addr,
            error,
        }
    };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(socket_error("creating"))?;
    if addr.is_ipv6() {
        // Accept IPv4 too on `[::]`; some platforms refuse, and IPv6 alone still works.
        if let Err(error) = socket.set_only_v6(false) {
            tracing::debug!(%addr, %error, "could not make the UDP socket dual-stack");
        }
    }
    socket
        .set_recv_buffer_size(buffer_bytes)
        .map_err(socket_error("setting the receive buffer of"))?;
    socket
        .set_send_buffer_size(buffer_bytes)
        .map_err(socket_error("setting the send buffer of"))?;
    let buffers = SocketBuffers {
        recv: socket
            .recv_buffer_size()
            .map_err(socket_error("reading the receive buffer of"))?,
        send: socket
            .send_buffer_size()
            .map_err(socket_error("reading the send buffer of"))?,
    };
    if buffers.recv < buffer_bytes || buffers.send < buffer_bytes {
        tracing::warn!(
            %addr,
            requested = buffer_bytes,
            recv = buffers.recv,
            send = buffers.send,
            "the kernel granted smaller UDP buffers than requested; bursts of packets may be \
             dropped (raise net.core.rmem_max and net.core.wmem_max)"
        );
    } else {
        tracing::debug!(%addr, recv = buffers.recv, send = buffers.send, "UDP socket buffers");
    }
    socket
        .set_nonblocking(true)
        .map_err(socket_error("configuring"))?;
    socket.bind(&addr.into()).map_err(socket_error("binding"))?;
    Ok((socket.into(), buffers))
}

fn start(
    addr: SocketAddr,
    endpoint_config: quinn::EndpointConfig,
    server_config: Option<quinn::ServerConfig>,
    socket: std::net::UdpSocket,
) -> Result<quinn::Endpoint, EndpointError> {
    // quinn's Tokio runtime panics outside a runtime; report it as an error instead.
    tokio::runtime::Handle::try_current().map_err(|_| EndpointError::NoRuntime)?;
    quinn::Endpoint::new(
        endpoint_config,
        server_config,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|error| EndpointError::Start { addr, error })
}

#[cfg(test)]
mod tests;
