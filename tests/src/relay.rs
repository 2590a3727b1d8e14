//! A UDP relay between clients and the broker that a test can cut and restore, to drop a
//! connection the way a network does: silently, with no close frame from either side.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Relays datagrams from each client address to `upstream` through a socket of its own, and
/// back. While cut, every datagram in either direction is dropped.
pub struct UdpRelay {
    /// Where clients should connect.
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    cut_downstream: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl UdpRelay {
    /// Starts a relay on `127.0.0.1:0` in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        Self::start_delayed(upstream, Duration::ZERO).await
    }

    /// Starts a relay that holds every datagram for `one_way` before passing it on, in either
    /// direction: a path whose round trip is at least twice that.
    pub async fn start_delayed(upstream: SocketAddr, one_way: Duration) -> std::io::Result<Self> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let cut_downstream = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(relay(
            front,
            upstream,
            Arc::clone(&cut),
            Arc::clone(&cut_downstream),
            one_way,
        ));
        Ok(Self {
            addr,
            cut,
            cut_downstream,
            task,
        })
    }

    /// Drops every datagram from now on.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Drops only what the broker sends: the broker keeps hearing the client (so it keeps the
    /// connection) while the client hears nothing (so it gives the connection up).
    pub fn cut_downstream(&self) {
        self.cut_downstream.store(true, Ordering::SeqCst);
    }

    /// Relays datagrams again, both ways.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.cut_downstream.store(false, Ordering::SeqCst);
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    front: Arc<UdpSocket>,
    upstream: SocketAddr,
    cut: Arc<AtomicBool>,
    cut_downstream: Arc<AtomicBool>,
    one_way: Duration,
) {
    let mut backs: HashMap<SocketAddr, (Arc<UdpSocket>, JoinHandle<()>)> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    while let Ok((len, client)) = front.recv_from(&mut buf).await {
        if cut.load(Ordering::SeqCst) {
            continue;
        }
        let back = match backs.get(&client) {
            Some((back, _)) => Arc::clone(back),
            None => {
                let Ok(back) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                let back = Arc::new(back);
                let returning = tokio::spawn(return_path(
                    Arc::clone(&back),
                    Arc::clone(&front),
                    client,
                    [Arc::clone(&cut), Arc::clone(&cut_downstream)],
                    one_way,
                ));
                backs.insert(client, (Arc::clone(&back), returning));
                back
            }
        };
        forward(back, &buf[..len], upstream, one_way).await;
    }
    for (_, (_, task)) in backs {
        task.abort();
    }
}

async fn return_path(
    back: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    cuts: [Arc<AtomicBool>; 2],
    one_way: Duration,
) {
    let mut buf = vec![0u8; 65_536];
    while let Ok((len, _)) = back.recv_from(&mut buf).await {
        if !cuts.iter().any(|cut| cut.load(Ordering::SeqCst)) {
            forward(Arc::clone(&front), &buf[..len], client, one_way).await;
        }
    }
}

/// Sends `datagram` from `socket` to `to`, at once or after `delay` (from a task of its own, so
/// the relay keeps reading meanwhile). Datagrams that came within the same millisecond may
/// leave in either order (the timer's resolution), which QUIC handles as reordering.
async fn forward(socket: Arc<UdpSocket>, datagram: &[u8], to: SocketAddr, delay: Duration) {
    if delay.is_zero() {
        let _ = socket.send_to(datagram, to).await;
        return;
    }
    let datagram = datagram.to_vec();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = socket.send_to(&datagram, to).await;
    });
}
