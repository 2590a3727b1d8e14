//! The links between cluster nodes (feature `server`): the second kind of peer of this
//! transport, beside clients. docs/CLUSTERING.md is the design.
//!
//! [`ClusterNode`] binds the cluster address with ALPN [`CLUSTER_ALPN`] (node certificates only,
//! both ways: [`crate::tls::PeerKind::Node`]), accepts the links peers dial, and dials every
//! address of its peer list, reconnecting with exponential backoff and jitter. Each connection
//! carries one direction: the dialing node sends `Hello`, then its interest (a snapshot, then
//! changes) and its forwards, in order on one bidirectional stream; the accepting node answers
//! each interest update with `Ack` on the same stream, and confirms the forwards (and `Dropped`
//! reports) it received with `Delivered` (a running count, sent every [`DELIVERED_EVERY`] and
//! when the link goes quiet). When a link ends, the dialer keeps what was not yet confirmed; its next
//! link to the same peer names the previous one in `Hello`, the peer answers how many of its
//! forwards it received (`Resumed`), and the rest are announced to it as dropped (`Dropped`):
//! a link that dies loses nothing silently, and announces no more than was lost. A peer with
//! no link up again 3 s after one ended is taken for gone: its queue groups' share of what was
//! unconfirmed or unannounced goes to other members of the groups
//! ([`ClusterPort::settle_gone_peer`]). `Hello` also
//! names the dialer's incarnation, and a dialer that stops with nothing left for the peer says
//! `Bye`: a link that ends without it is settled by the acceptor
//! ([`cassini_broker::peer::PeerInbox::ended`]) if the dialer does not come back as the same
//! incarnation. A connection to this node itself (its
//! address is in its own peer list) is closed and that address is not dialed again. A node
//! that dials this one is dialed back at the address its connection comes from (the peer's
//! cluster address: one socket both listens and dials), unless that address is dialed already:
//! so the mesh is full even when only one side lists the other (nodes on port 0 that learn each
//! other's addresses only once bound). A dial that reaches a node this one already has a link
//! to (the same node at another address) is closed and tried again later with backoff.
//!
//! Failure detection is QUIC's keep-alive and idle timeout ([`cluster_quic_options`]): a peer
//! silent for 2 s is gone, and with its connections go its interest and its queue.
//!
//! When the cluster has `members` (replicated session ownership), the links also carry the
//! Raft group's requests ([`RaftLinks`]): each request on a bidirectional stream of its own,
//! opened by the sending node on the connection it dialed (`Raft`, answered with
//! `RaftReply` on the same stream, then finished), so a slow snapshot never holds a vote or
//! the forwards of the link's first stream.
//!
//! Frames are MessagePack, each after its length as a big-endian `u32`, at most
//! [`MAX_PEER_FRAME_BYTES`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cassini_broker::cluster::{InterestEntry, InterestUpdate, Lost, Outgoing, UNSETTLED_WAIT};
use cassini_broker::peer::{ClusterPort, PeerInbox};
use cassini_broker::replication::{Replica, RpcTransport, TransportFailure};
use cassini_protocol::{Publish, SessionId, SubscriptionId};
use quinn::VarInt;
use rand::Rng;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::certs::NODE_SERVER_NAME;
use crate::endpoint::{bind_server_layered, SocketLayer};
use crate::identity::{node_name, peer_chain};
use crate::server::ServerError;
pub use crate::tls::CLUSTER_ALPN;
use crate::tls::{self, QuicOptions, RevocationOptions, ServerTls, TlsError};

mod interest_parts;
mod live_links;

use live_links::LiveLinks;

/// The largest frame a link reads; a longer one ends the link.
pub const MAX_PEER_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// The first wait before dialing a peer again; doubled after each failure up to
/// [`MAX_BACKOFF`], each wait drawn within ±50 %.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// The longest wait before dialing a peer again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The accepting node confirms received forwards at least every this many messages.
pub const DELIVERED_EVERY: u64 = 64;

/// ... and at the latest this long after the last unconfirmed one.
const DELIVERED_AFTER: Duration = Duration::from_millis(5);

/// How often a link's round-trip time is read for monitoring.
const RTT_EVERY: Duration = Duration::from_secs(1);

/// Close code of a cluster connection that ends on purpose (wrong cluster, this node itself,
/// the node stopping).
const CLOSE_CODE: u32 = 0;

/// The streams a peer may open at once on a cluster connection: its link's, and its Raft
/// requests, with room for Raft's own beyond those that wait on this node's answer.
const RAFT_STREAMS: u32 = 32;
const _: () = assert!(
    cassini_broker::replication::MAX_WAITING_REQUESTS_PER_NODE + 8 <= RAFT_STREAMS as usize
);

/// The QUIC settings of cluster connections: a keep-alive every 500 ms and an idle timeout of
/// 2 s (a dead peer leaves routing within 2 s), no datagrams, no unidirectional stream.
pub fn cluster_quic_options() -> QuicOptions {
    QuicOptions {
        idle_timeout: Duration::from_secs(2),
        keep_alive_interval: Duration::from_millis(500),
        max_concurrent_uni_streams: 0,
        // The link's stream, plus one per Raft request in flight: at most
        // MAX_WAITING_REQUESTS_PER_NODE (16) of them wait on this node's answer, so Raft's
        // own (heartbeats, votes, snapshots) always find a stream.
        max_concurrent_bidi_streams: RAFT_STREAMS,
        datagrams: false,
        ..QuicOptions::default()
    }
}

/// What a node needs to take part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The cluster's name; a peer of another cluster is refused.
    pub cluster: String,
    /// The cluster address to bind (UDP; port 0 for any).
    pub listen: SocketAddr,
    /// The cluster addresses to dial (this node's own may be among them).
    pub peers: Vec<SocketAddr>,
    /// QUIC settings. Default: [`cluster_quic_options`].
    pub quic: QuicOptions,
    /// How long a dialing peer has to complete the handshake and say `Hello`.
    pub handshake_timeout: Duration,
    /// Wraps the endpoint's socket (fault injection in tests). Default: none.
    pub layer: Option<SocketLayer>,
    /// This node's client address as its peers' clients should dial it (`host:port`), told to
    /// every peer and listed in `Welcome`. Default: none (set it on the port instead).
    pub advertise: Option<String>,
}

impl ClusterOptions {
    /// Cluster `cluster`, bound to `listen`, dialing `peers`, with the default settings.
    pub fn new(cluster: impl Into<String>, listen: SocketAddr, peers: Vec<SocketAddr>) -> Self {
        Self {
            cluster: cluster.into(),
            listen,
            peers,
            quic: cluster_quic_options(),
            handshake_timeout: Duration::from_secs(5),
            layer: None,
            advertise: None,
        }
    }
}

/// A node's TLS material for the cluster: the listener's and the dialer's.
#[derive(Debug, Clone)]
pub struct ClusterTls {
    /// The cluster listener's: node certificates only, ALPN [`CLUSTER_ALPN`].
    pub server: ServerTls,
    /// The dialer's: trusts node certificates only.
    pub client: Arc<rustls::ClientConfig>,
}

impl ClusterTls {
    /// Both from the CA `ca_certs` and this node's certificate `chain` and `key`, refusing
    /// peers whose node certificate `crls` revoke (see [`crate::tls`] for how revocation fails
    /// closed; no CRL: no revocation check).
    pub fn build(
        ca_certs: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        crls: Vec<CertificateRevocationListDer<'static>>,
        revocation: RevocationOptions,
    ) -> Result<Self, TlsError> {
        let server = ServerTls::build_cluster(
            ca_certs.clone(),
            chain.clone(),
            key.clone_key(),
            crls.clone(),
            revocation,
        )?;
        let client = tls::cluster_client_crypto(ca_certs, chain, key, crls, revocation)?;
        Ok(Self { server, client })
    }
}

/// One frame of a cluster link.
#[derive(Debug, Serialize, Deserialize)]
enum PeerFrame {
    /// Dialer → acceptor, first: who is speaking, this link's id, and the id of its previous
    /// link to this peer whose forwards are not all confirmed.
    Hello {
        cluster: String,
        node: String,
        link: u64,
        previous: Option<u64>,
        /// The dialer's client address, for its peers' clients (`Welcome.cluster_addresses`).
        #[serde(default)]
        client_address: Option<String>,
        /// The dialer's incarnation (drawn when it started; 0: unknown): whether the counts it
        /// keeps for the acceptor survived since its previous link.
        #[serde(default)]
        incarnation: u64,
    },
    /// Acceptor → dialer, first: how many forwards of the previous link it received, if it
    /// knows that link.
    Resumed { received: Option<u64> },
    /// Dialer → acceptor: the dialer's interest.
    Interest(InterestUpdate),
    /// Acceptor → dialer: interest applied up to `seq`.
    Ack { seq: u64 },
    /// Acceptor → dialer: this many forwards received on this link so far.
    Delivered { count: u64 },
    /// Dialer → acceptor: a forwarded message and the queue groups it is for (a direct one
    /// carries its session in `to_session`).
    ///
    /// Fields are encoded in order as an array: one left out shifts those after it, so only
    /// the last present field may be skipped when empty.
    Message {
        publish: Publish,
        groups: Vec<String>,
        /// Named sessions' subscriptions the dialer delivered the message to through the
        /// cluster's records: the acceptor leaves them out.
        #[serde(default)]
        delivered: Vec<(SessionId, SubscriptionId)>,
        /// For an acknowledged publish: its publisher's certificate identity, set by the
        /// dialer (with `publish.message_id`, its dedupe pair), so the acceptor hands a resend
        /// of it only to its replicated subscriptions.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        acknowledged_by: Option<String>,
    },
    /// Dialer → acceptor: `count` messages the dialer dropped for the acceptor, and what they
    /// were for.
    Dropped { lost: Lost, count: u64 },
    /// Dialer → acceptor, last: the dialer is stopping with nothing left for the acceptor (no
    /// forward queued, no drop unannounced), so the link's end loses nothing.
    Bye,
    /// Dialer → acceptor, alone on a stream of its own: a request of the Raft group.
    Raft(Bytes),
    /// Acceptor → dialer, on the request's stream: its reply.
    RaftReply(Bytes),
    /// Dialer → acceptor: entries of an interest snapshot too large for one frame; the
    /// `Interest` snapshot after the parts carries the rest (`interest_parts`).
    InterestPart { entries: Vec<InterestEntry> },
}

/// A node's cluster endpoint: its listener and its dialers. See the module documentation.
#[derive(Debug)]
pub struct ClusterNode {
    endpoint: quinn::Endpoint,
    closing: CancellationToken,
    tasks: TaskTracker,
    port: ClusterPort,
    dialer: Dialer,
}

/// The Raft group's transport over the cluster links: a request to a node goes on a new
/// stream of the connection this node dialed to it.
#[derive(Debug, Clone, Default)]
pub struct RaftLinks {
    /// The connection this node dialed to each peer, by node name, while its link is up.
    dialed: Arc<std::sync::Mutex<HashMap<String, quinn::Connection>>>,
}

impl RaftLinks {
    fn connection(&self, node: &str) -> Option<quinn::Connection> {
        self.dialed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .filter(|connection| connection.close_reason().is_none())
            .cloned()
    }

    fn link_up(&self, node: &str, connection: &quinn::Connection) {
        self.dialed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_owned(), connection.clone());
    }

    fn link_down(&self, node: &str, connection: &quinn::Connection) {
        let mut dialed = self.dialed.lock().unwrap_or_else(|p| p.into_inner());
        if dialed
            .get(node)
            .is_some_and(|up| up.stable_id() == connection.stable_id())
        {
            dialed.remove(node);
        }
    }
}

#[async_trait::async_trait]
impl RpcTransport for RaftLinks {
    async fn call(
        &self,
        node: &str,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportFailure> {
        let connection = self
            .connection(node)
            .ok_or_else(|| TransportFailure::Unreachable(node.to_owned()))?;
        let exchange = async {
            let (mut send, mut recv) = connection.open_bi().await.map_err(|err| err.to_string())?;
            write_frame(&mut send, &PeerFrame::Raft(Bytes::from(request))).await?;
            let _ = send.finish();
            match read_frame(&mut recv).await? {
                Some(PeerFrame::RaftReply(reply)) => Ok(reply.to_vec()),
                _ => Err("the peer did not answer the Raft request".to_owned()),
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(reason)) => Err(TransportFailure::Failed {
                node: node.to_owned(),
                reason,
            }),
            Err(_) => Err(TransportFailure::Failed {
                node: node.to_owned(),
                reason: format!("no reply within {timeout:?}"),
            }),
        }
    }

    fn connected(&self, node: &str) -> bool {
        self.connection(node).is_some()
    }
}

/// Answers the Raft requests a peer sends on `connection` (each on a stream of its own) until
/// the connection ends; each request is served in a task of its own, so a slow one never
/// holds the others (QUIC's stream limit bounds how many are in flight). A request whose
/// sender gave up (it stopped the stream) is dropped at once, freeing its stream.
async fn serve_raft_requests(connection: quinn::Connection, replica: Arc<Replica>) {
    let mut requests = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = connection.accept_bi() => {
                let Ok((mut send, mut recv)) = accepted else { return };
                let replica = Arc::clone(&replica);
                requests.spawn(async move {
                    let reply = match read_frame(&mut recv).await {
                        Ok(Some(PeerFrame::Raft(request))) => tokio::select! {
                            reply = replica.handle(&request) => reply,
                            _ = send.stopped() => return,
                        },
                        _ => return,
                    };
                    if write_frame(&mut send, &PeerFrame::RaftReply(Bytes::from(reply)))
                        .await
                        .is_ok()
                    {
                        let _ = send.finish();
                    }
                });
            }
            Some(_) = requests.join_next() => {}
        }
    }
}

/// Starts one dial loop per peer address, at most one per address.
#[derive(Debug, Clone)]
struct Dialer {
    endpoint: quinn::Endpoint,
    port: ClusterPort,
    options: Arc<ClusterOptions>,
    closing: CancellationToken,
    tasks: TaskTracker,
    dialed: Arc<std::sync::Mutex<std::collections::HashSet<SocketAddr>>>,
    /// The dialed connections, for the Raft group's requests.
    raft: RaftLinks,
    /// Per peer, what the last link to it left unconfirmed, whichever address it was dialed at.
    previous: Arc<PreviousLinks>,
    /// The dialer's quinn configuration, replaced by [`ClusterNode::reload`].
    client_config: Arc<std::sync::Mutex<quinn::ClientConfig>>,
    /// The links up, both directions, checked again at each reload.
    live: Arc<LiveLinks>,
}

impl Dialer {
    /// Dials `addr` from now on, unless it is dialed already.
    fn dial(&self, addr: SocketAddr) {
        let new = self
            .dialed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr);
        if new {
            self.tasks.spawn(dial_loop(self.clone(), addr));
        }
    }

    /// The configuration a new dial uses: the latest installed.
    fn client_config(&self) -> quinn::ClientConfig {
        self.client_config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ClusterNode {
    /// Binds `options.listen`, accepts peers' links and dials every peer, for the broker
    /// behind `port`.
    pub fn start(
        options: ClusterOptions,
        tls: ClusterTls,
        port: ClusterPort,
    ) -> Result<Self, ServerError> {
        let server_config = tls::server_config(tls.server.config, &options.quic)?;
        let (endpoint, _) = bind_server_layered(
            options.listen,
            server_config,
            &options.quic,
            options.layer.as_ref(),
        )?;
        let client_config = tls::client_config(tls.client, &options.quic)?;
        if let Some(address) = &options.advertise {
            port.set_client_address(address.clone());
        }
        port.expect_peers(options.peers.iter().copied());
        let options = Arc::new(options);
        let closing = CancellationToken::new();
        let tasks = TaskTracker::new();
        let raft = RaftLinks::default();
        if let Some(replica) = port.replica() {
            replica.set_transport(Arc::new(raft.clone()));
        }
        let dialer = Dialer {
            endpoint: endpoint.clone(),
            port: port.clone(),
            options: Arc::clone(&options),
            closing: closing.clone(),
            tasks: tasks.clone(),
            dialed: Arc::default(),
            raft,
            previous: Arc::default(),
            client_config: Arc::new(std::sync::Mutex::new(client_config)),
            live: Arc::default(),
        };
        let node = Self {
            endpoint,
            closing,
            tasks,
            port,
            dialer,
        };
        node.tasks.spawn(accept_loop(
            node.endpoint.clone(),
            node.port.clone(),
            Received::default(),
            node.dialer.clone(),
        ));
        for &addr in &options.peers {
            node.dial(addr);
        }
        Ok(node)
    }

    /// Dials `addr` too, from now on (as if it were in the peer list), unless it is dialed
    /// already: for tests and tools whose nodes learn their addresses only once bound.
    pub fn dial(&self, addr: SocketAddr) {
        self.port.expect_peers([addr]);
        self.dialer.dial(addr);
    }

    /// Installs `tls` (after a reload of the certificate files or the CRL) for the links made
    /// from now on, both directions, and closes every live link whose peer's node certificate
    /// it refuses, with `CERTIFICATE_REVOKED`. Returns the peers closed, each with the reason.
    pub fn reload(&self, tls: ClusterTls) -> Result<Vec<(String, String)>, ServerError> {
        let options = &self.dialer.options;
        let server_config = tls::server_config(Arc::clone(&tls.server.config), &options.quic)?;
        let client_config = tls::client_config(tls.client, &options.quic)?;
        Ok(self.dialer.live.install(&tls.server, || {
            self.endpoint.set_server_config(Some(server_config));
            *self
                .dialer
                .client_config
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = client_config;
        }))
    }

    /// This node's side of the cluster, as the broker keeps it (peers and their numbers).
    pub fn port(&self) -> &ClusterPort {
        &self.port
    }

    /// The cluster address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Ends every link (a link with nothing left for its peer says `Bye` first) and stops
    /// dialing; waits at most `limit` for the tasks to end, then closes the endpoint.
    pub async fn close(&self, limit: Duration) {
        self.closing.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(limit, self.tasks.wait()).await;
        self.endpoint
            .close(VarInt::from_u32(CLOSE_CODE), b"node stopping");
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.closing.cancel();
        self.endpoint
            .close(VarInt::from_u32(CLOSE_CODE), b"node stopping");
    }
}

/// Per dialing peer: the ids of its latest links to this node (at most [`LINKS_REMEMBERED`],
/// newest last) and how many forwards arrived on each, for its next link's `Resumed`. More than
/// the latest one: a link that ends between its `Hello` and the dialer's reading of `Resumed`
/// leaves the dialer naming the link before it.
type Received =
    Arc<std::sync::Mutex<HashMap<String, std::collections::VecDeque<(u64, Arc<AtomicU64>)>>>>;

/// How many of a dialing peer's latest links the accepting node remembers (see [`Received`]).
const LINKS_REMEMBERED: usize = 4;

async fn accept_loop(
    endpoint: quinn::Endpoint,
    port: ClusterPort,
    received: Received,
    dialer: Dialer,
) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            () = dialer.closing.cancelled() => return,
        };
        let Some(incoming) = incoming else { return };
        let port = port.clone();
        let dialer = dialer.clone();
        let received = Arc::clone(&received);
        dialer.tasks.clone().spawn(async move {
            let remote = incoming.remote_address();
            if let Err(reason) = serve_inbound(incoming, &port, &dialer, &received).await {
                tracing::info!(%remote, %reason, "cluster link from a peer ended");
            }
        });
    }
}

/// Accepts one peer's link and applies what it sends until it ends.
async fn serve_inbound(
    incoming: quinn::Incoming,
    port: &ClusterPort,
    dialer: &Dialer,
    registry: &Received,
) -> Result<(), String> {
    let options = &dialer.options;
    let closing = &dialer.closing;
    let limit = options.handshake_timeout;
    let greeting = async {
        let connection = incoming
            .accept()
            .map_err(|err| err.to_string())?
            .await
            .map_err(|err| err.to_string())?;
        let node = node_of(&connection)?;
        dialer.live.admit(&connection, &node)?;
        let (mut send, mut recv) = connection
            .accept_bi()
            .await
            .map_err(|err| err.to_string())?;
        let counter = match read_frame(&mut recv).await? {
            Some(PeerFrame::Hello {
                cluster,
                node: claimed,
                link,
                previous,
                client_address,
                incarnation,
            }) => {
                if cluster != options.cluster {
                    let reason = format!("cluster {cluster:?} is not {:?}", options.cluster);
                    connection.close(VarInt::from_u32(CLOSE_CODE), reason.as_bytes());
                    return Err(reason);
                }
                if claimed != node {
                    let reason = format!("node {claimed:?} presented the certificate of {node:?}");
                    connection.close(VarInt::from_u32(CLOSE_CODE), reason.as_bytes());
                    return Err(reason);
                }
                let counter = Arc::new(AtomicU64::new(0));
                let before = {
                    let mut registry = registry.lock().unwrap_or_else(|p| p.into_inner());
                    let links = registry.entry(node.clone()).or_default();
                    let before = links
                        .iter()
                        .find(|(id, _)| Some(*id) == previous)
                        .map(|(_, count)| count.load(Ordering::Acquire));
                    if links.len() == LINKS_REMEMBERED {
                        links.pop_front();
                    }
                    links.push_back((link, Arc::clone(&counter)));
                    before
                };
                write_frame(&mut send, &PeerFrame::Resumed { received: before }).await?;
                (counter, client_address, incarnation)
            }
            _ => return Err("the link did not start with Hello".to_owned()),
        };
        Ok((connection, node, send, recv, counter))
    };
    let (connection, node, mut send, mut recv, (counter, client_address, incarnation)) =
        tokio::time::timeout(limit, greeting)
            .await
            .map_err(|_| format!("no Hello within {limit:?}"))??;
    if node == port.node() {
        connection.close(VarInt::from_u32(CLOSE_CODE), b"that is this node");
        return Ok(());
    }
    tracing::info!(peer = %node, "cluster link from a peer up");
    let raft_requests = port
        .replica()
        .map(|replica| tokio::spawn(serve_raft_requests(connection.clone(), replica)));
    port.set_peer_client_address(&node, client_address);
    dialer.dial(connection.remote_address());
    let mut inbox = port.open_inbound(&node, incarnation);
    // Whether the link ends losing nothing: the peer said `Bye`, or this node is stopping.
    let mut cleanly = false;
    let mut received = 0u64;
    let mut confirmed = 0u64;
    let mut snapshot_parts = interest_parts::Reassembly::default();
    // Frames are read in a task of their own: a read cut off mid-frame by the other branches
    // below would lose bytes of the stream.
    let (frames_in, mut frames) = tokio::sync::mpsc::channel(64);
    let reader = tokio::spawn(async move {
        loop {
            let frame = read_frame(&mut recv).await;
            let last = !matches!(frame, Ok(Some(_)));
            if frames_in.send(frame).await.is_err() || last {
                return;
            }
        }
    });
    let result = loop {
        let quiet = tokio::time::sleep(DELIVERED_AFTER);
        let frame = tokio::select! {
            frame = frames.recv() => frame.unwrap_or(Ok(None)),
            () = quiet, if received > confirmed => {
                confirmed = received;
                match write_frame(&mut send, &PeerFrame::Delivered { count: received }).await {
                    Ok(()) => continue,
                    Err(reason) => break Err(reason),
                }
            }
            () = closing.cancelled() => {
                cleanly = true;
                break Ok(());
            }
        };
        match frame {
            Ok(Some(PeerFrame::Bye)) => {
                cleanly = true;
                break Ok(());
            }
            Ok(Some(frame)) => {
                let frame = match frame {
                    PeerFrame::InterestPart { entries } => match snapshot_parts.part(entries) {
                        Ok(()) => continue,
                        Err(reason) => break Err(reason),
                    },
                    PeerFrame::Interest(update) => match snapshot_parts.complete(update) {
                        Ok(update) => PeerFrame::Interest(update),
                        Err(reason) => break Err(reason),
                    },
                    other => other,
                };
                // Forwards and drop reports are confirmed alike: a report the link lost is
                // reported again on the next link, as an unconfirmed forward is.
                let is_message =
                    matches!(frame, PeerFrame::Message { .. } | PeerFrame::Dropped { .. });
                if let Err(reason) = apply(&mut inbox, &mut send, frame).await {
                    break Err(reason);
                }
                if is_message {
                    counter.fetch_add(1, Ordering::AcqRel);
                    received += 1;
                    if received - confirmed >= DELIVERED_EVERY {
                        confirmed = received;
                        let delivered = PeerFrame::Delivered { count: received };
                        if let Err(reason) = write_frame(&mut send, &delivered).await {
                            break Err(reason);
                        }
                    }
                }
            }
            Ok(None) => break Ok(()),
            Err(reason) => break Err(reason),
        }
    };
    reader.abort();
    if let Some(raft_requests) = raft_requests {
        raft_requests.abort();
    }
    inbox.ended(cleanly);
    tracing::info!(peer = %node, "cluster link from a peer down");
    result
}

async fn apply(
    inbox: &mut PeerInbox,
    send: &mut quinn::SendStream,
    frame: PeerFrame,
) -> Result<(), String> {
    match frame {
        PeerFrame::Interest(update) => {
            let seq = inbox.interest(update);
            write_frame(send, &PeerFrame::Ack { seq }).await
        }
        PeerFrame::Message {
            publish,
            groups,
            delivered,
            acknowledged_by,
        } => {
            inbox.deliver(publish, &groups, &delivered, acknowledged_by.as_deref());
            Ok(())
        }
        PeerFrame::Dropped { lost, count } => {
            inbox.dropped(&lost, count);
            Ok(())
        }
        PeerFrame::Hello { .. }
        | PeerFrame::Resumed { .. }
        | PeerFrame::Ack { .. }
        | PeerFrame::Delivered { .. }
        | PeerFrame::Bye
        | PeerFrame::Raft(_)
        | PeerFrame::RaftReply(_)
        | PeerFrame::InterestPart { .. } => {
            Err("unexpected frame from the dialing peer".to_owned())
        }
    }
}

/// How one dialed link ended.
enum LinkEnd {
    /// The address is this node's own: never dial it again.
    ThisNode,
    /// The link was up and ended.
    Ended,
}

async fn dial_loop(dialer: Dialer, addr: SocketAddr) {
    let closing = &dialer.closing;
    let mut backoff = INITIAL_BACKOFF;
    loop {
        match dial_once(&dialer, addr).await {
            Ok(LinkEnd::ThisNode) => return,
            Ok(LinkEnd::Ended) => backoff = INITIAL_BACKOFF,
            Err(reason) => tracing::debug!(%addr, %reason, "dialing a cluster peer failed"),
        }
        let wait = jittered(backoff);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = closing.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// `backoff` drawn uniformly within ±50 %.
fn jittered(backoff: Duration) -> Duration {
    backoff.mul_f64(rand::rng().random_range(0.5..1.5))
}

async fn dial_once(dialer: &Dialer, addr: SocketAddr) -> Result<LinkEnd, String> {
    let Dialer {
        endpoint,
        port,
        options,
        closing,
        previous,
        raft,
        live,
        ..
    } = dialer;
    let connecting = endpoint
        .connect_with(dialer.client_config(), addr, NODE_SERVER_NAME)
        .map_err(|err| err.to_string())?;
    let connection = tokio::select! {
        connection = tokio::time::timeout(options.handshake_timeout, connecting) => connection
            .map_err(|_| "handshake timed out".to_owned())?
            .map_err(|err| err.to_string())?,
        () = closing.cancelled() => return Ok(LinkEnd::Ended),
    };
    let node = node_of(&connection)?;
    port.reached(addr, &node);
    if node == port.node() {
        connection.close(VarInt::from_u32(CLOSE_CODE), b"that is this node");
        return Ok(LinkEnd::ThisNode);
    }
    if port.has_outbound(&node) {
        // The same node at another address (dialed back, or listed twice): one link per peer;
        // this address is tried again with backoff, in case that link ends.
        connection.close(VarInt::from_u32(CLOSE_CODE), b"a link to this node is up");
        return Err(format!("a link to {node} is up already"));
    }
    live.admit(&connection, &node)?;
    let previous = &previous.of(&node);
    let (mut send, mut recv) = connection.open_bi().await.map_err(|err| err.to_string())?;
    let link_id: u64 = rand::rng().random();
    let hello = PeerFrame::Hello {
        cluster: options.cluster.clone(),
        node: port.node().to_owned(),
        link: link_id,
        previous: previous.lock().as_ref().map(|old| old.link),
        client_address: port.client_address(),
        incarnation: port.incarnation(),
    };
    write_frame(&mut send, &hello).await?;
    let received = match read_frame(&mut recv).await? {
        Some(PeerFrame::Resumed { received }) => received,
        _ => return Err("the peer did not answer Hello".to_owned()),
    };
    tracing::info!(peer = %node, %addr, "cluster link to a peer up");
    // What the previous link lost is recorded before this link opens, so the link announces it
    // before any forward queued on it (opening moves every waiting drop to its front).
    let old = previous.lock().take();
    if let Some(mut old) = old {
        if let Some(count) = received {
            old.in_flight.confirm(count);
        }
        for (lost, count) in old.in_flight.by_kind() {
            port.drop_for_peer(&node, lost, count);
        }
    }
    let mut link = port.open_outbound(&node);
    raft.link_up(&node, &connection);
    let acks = link.acknowledger();
    let gauge = link.acknowledger();
    gauge.unconfirmed(0);
    // The forwards written and not yet confirmed, oldest first.
    let in_flight: Arc<std::sync::Mutex<InFlight>> = Arc::default();
    let confirmations = Arc::clone(&in_flight);
    let mut read_acks = tokio::spawn(async move {
        loop {
            match read_frame(&mut recv).await {
                Ok(Some(PeerFrame::Ack { seq })) => acks.acknowledged(seq),
                Ok(Some(PeerFrame::Delivered { count })) => {
                    let mut in_flight = confirmations.lock().unwrap_or_else(|p| p.into_inner());
                    in_flight.confirm(count);
                    acks.unconfirmed(in_flight.messages());
                }
                Ok(Some(_)) => return "unexpected frame from the accepting peer".to_owned(),
                Ok(None) => return "the peer finished the link".to_owned(),
                Err(reason) => return reason,
            }
        }
    });
    link.measured_rtt(connection.rtt());
    let mut rtt_every = tokio::time::interval(RTT_EVERY);
    let reason = loop {
        tokio::select! {
            _ = rtt_every.tick() => link.measured_rtt(connection.rtt()),
            next = link.next() => {
                let unconfirmed = match &next {
                    Some(Outgoing::Message(forward)) => Some((forward.lost(), 1)),
                    Some(Outgoing::Dropped { lost, count }) => Some((lost.clone(), *count)),
                    _ => None,
                };
                if let Some(unconfirmed) = unconfirmed {
                    let mut in_flight = in_flight.lock().unwrap_or_else(|p| p.into_inner());
                    in_flight.forwards.push_back(unconfirmed);
                    gauge.unconfirmed(in_flight.messages());
                }
                let frame = match next {
                    Some(Outgoing::Interest(update)) => {
                        let mut frames = interest_frames(update);
                        let last = frames.pop();
                        let mut failed = None;
                        for part in frames {
                            if let Err(reason) = write_frame(&mut send, &part).await {
                                failed = Some(reason);
                                break;
                            }
                        }
                        match (failed, last) {
                            (Some(reason), _) => break reason,
                            (None, Some(last)) => last,
                            (None, None) => continue,
                        }
                    }
                    Some(Outgoing::Message(forward)) => PeerFrame::Message {
                        publish: Publish {
                            topic: forward.message.topic.as_str().to_owned(),
                            headers: forward.message.headers.clone(),
                            payload: forward.message.payload.clone(),
                            message_id: forward.message.message_id,
                            reply_to: forward.message.reply_to.clone(),
                            retain: false,
                            to_session: forward.session,
                            ack: false,
                        },
                        groups: forward.groups.iter().map(|g| g.to_string()).collect(),
                        delivered: forward.delivered,
                        acknowledged_by: forward.acknowledged_by.map(|identity| identity.to_string()),
                    },
                    Some(Outgoing::Dropped { lost, count }) => PeerFrame::Dropped { lost, count },
                    None => break "the broker stopped".to_owned(),
                };
                if let Err(reason) = write_frame(&mut send, &frame).await {
                    break reason;
                }
            }
            ended = &mut read_acks => break ended.unwrap_or_else(|err| err.to_string()),
            () = closing.cancelled() => {
                if link.is_drained() {
                    say_bye(&mut send).await;
                }
                break "the node is stopping".to_owned();
            }
        }
    };
    read_acks.abort();
    raft.link_down(&node, &connection);
    let in_flight = std::mem::take(&mut *in_flight.lock().unwrap_or_else(|p| p.into_inner()));
    if !in_flight.forwards.is_empty() {
        *previous.lock() = Some(Previous {
            link: link_id,
            in_flight,
        });
    }
    drop(link);
    tracing::info!(peer = %node, %addr, %reason, "cluster link to a peer down");
    if !closing.is_cancelled() {
        let ended = previous.ends.fetch_add(1, Ordering::AcqRel) + 1;
        tokio::spawn(settle_if_gone(
            port.clone(),
            node,
            Arc::clone(previous),
            ended,
            closing.clone(),
        ));
    }
    Ok(LinkEnd::Ended)
}

/// After a link to peer `node` ended (the `ended`th to it): if no link to it is up
/// [`UNSETTLED_WAIT`] later, and none came and went meanwhile, the peer is taken for gone and
/// what its queue groups lost is announced to other members of the groups
/// ([`ClusterPort::settle_gone_peer`]). What it lost for its plain subscribers stays counted,
/// for its next link if it comes back as the same incarnation.
async fn settle_if_gone(
    port: ClusterPort,
    node: String,
    previous: Arc<PreviousLink>,
    ended: u64,
    closing: CancellationToken,
) {
    tokio::select! {
        () = tokio::time::sleep(UNSETTLED_WAIT) => {}
        () = closing.cancelled() => return,
    }
    if previous.ends.load(Ordering::Acquire) != ended || port.has_outbound(&node) {
        return;
    }
    let unconfirmed = previous
        .lock()
        .as_mut()
        .map(|old| old.in_flight.take_group_part())
        .unwrap_or_default();
    port.settle_gone_peer(&node, unconfirmed);
}

/// Per peer node, its [`PreviousLink`] (one per node with a verified node certificate).
#[derive(Debug, Default)]
struct PreviousLinks(std::sync::Mutex<HashMap<String, Arc<PreviousLink>>>);

impl PreviousLinks {
    fn of(&self, node: &str) -> Arc<PreviousLink> {
        let mut links = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(links.entry(node.to_owned()).or_default())
    }
}

/// What the last link to one peer left unconfirmed, and how many links to it have ended.
#[derive(Debug, Default)]
struct PreviousLink {
    previous: std::sync::Mutex<Option<Previous>>,
    ends: AtomicU64,
}

impl PreviousLink {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Previous>> {
        self.previous.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Tells the peer the link ends with nothing left for it, and waits (briefly) until it has
/// read that.
async fn say_bye(send: &mut quinn::SendStream) {
    if write_frame(send, &PeerFrame::Bye).await.is_err() || send.finish().is_err() {
        return;
    }
    let _ = tokio::time::timeout(BYE_WAIT, send.stopped()).await;
}

/// The longest a stopping node waits for a peer to read its `Bye`.
const BYE_WAIT: Duration = Duration::from_millis(500);

/// A dialed link that ended with forwards its peer had not confirmed: settled by the next
/// link to the same peer (`Resumed`).
#[derive(Debug)]
struct Previous {
    link: u64,
    in_flight: InFlight,
}

/// The forwards and drop reports of one link written and not yet confirmed by the peer.
#[derive(Debug, Default)]
struct InFlight {
    /// How many the peer has confirmed so far.
    confirmed: u64,
    /// What the rest were for and how many messages each stands for (a forward 1, a drop
    /// report its count), oldest first.
    forwards: std::collections::VecDeque<(Lost, u64)>,
}

impl InFlight {
    /// The peer has received `count` forwards of this link in total.
    fn confirm(&mut self, count: u64) {
        let newly = count.saturating_sub(self.confirmed);
        self.confirmed = self.confirmed.max(count);
        let newly = usize::try_from(newly).unwrap_or(usize::MAX);
        self.forwards.drain(..newly.min(self.forwards.len()));
    }

    /// How many messages the unconfirmed forwards and drop reports stand for.
    fn messages(&self) -> u64 {
        self.forwards.iter().map(|(_, count)| count).sum()
    }

    /// The unconfirmed forwards counted by what they were for.
    fn by_kind(&self) -> std::collections::BTreeMap<Lost, u64> {
        let mut counts = std::collections::BTreeMap::new();
        for (lost, count) in self.forwards.iter().filter(|(lost, _)| !lost.is_empty()) {
            *counts.entry(lost.clone()).or_default() += count;
        }
        counts
    }

    /// Takes the queue-group part out of the unconfirmed forwards, one entry per group (the
    /// forwards stay, for counting confirmations, with only their plain part).
    fn take_group_part(&mut self) -> Vec<(Lost, u64)> {
        let mut taken = Vec::new();
        for (lost, count) in &mut self.forwards {
            if lost.groups.is_empty() || lost.session.is_some() {
                continue;
            }
            let (groups, _) = lost.split_groups();
            taken.extend(groups.into_iter().map(|group| (group, *count)));
            lost.groups.clear();
        }
        taken
    }
}

/// The node name of the peer of `connection`, from its (verified) certificate.
fn node_of(connection: &quinn::Connection) -> Result<String, String> {
    let chain = peer_chain(connection).map_err(|err| err.to_string())?;
    chain
        .first()
        .and_then(node_name)
        .ok_or_else(|| "the peer's certificate is not a node certificate".to_owned())
}

/// The frames that carry `update`: a snapshot too large for one frame as its parts, then the
/// snapshot with the rest (`interest_parts`); anything else alone.
fn interest_frames(update: InterestUpdate) -> Vec<PeerFrame> {
    let (parts, update) = interest_parts::split(update, interest_parts::PART_BYTES);
    let mut frames: Vec<PeerFrame> = parts
        .into_iter()
        .map(|entries| PeerFrame::InterestPart { entries })
        .collect();
    frames.push(PeerFrame::Interest(update));
    frames
}

async fn write_frame(send: &mut quinn::SendStream, frame: &PeerFrame) -> Result<(), String> {
    let body = rmp_serde::to_vec(frame).map_err(|err| err.to_string())?;
    let len = u32::try_from(body.len()).map_err(|_| "frame too large".to_owned())?;
    let mut bytes = Vec::with_capacity(4 + body.len());
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes.extend_from_slice(&body);
    send.write_all(&bytes).await.map_err(|err| err.to_string())
}

async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Option<PeerFrame>, String> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(err) => return Err(err.to_string()),
    }
    let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if len > MAX_PEER_FRAME_BYTES {
        return Err(format!("a frame of {len} bytes is too large"));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|err| err.to_string())?;
    rmp_serde::from_slice(&body)
        .map(Some)
        .map_err(|err| format!("an undecodable frame: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost(topic: &str) -> Lost {
        Lost {
            topic: topic.to_owned(),
            plain: true,
            groups: Vec::new(),
            session: None,
            any_topic: false,
        }
    }

    fn publish() -> Publish {
        Publish {
            topic: "orders.new".to_owned(),
            headers: Default::default(),
            payload: bytes::Bytes::from_static(b"order"),
            message_id: Some(7),
            reply_to: None,
            retain: false,
            to_session: None,
            ack: false,
        }
    }

    /// The message frame as nodes without `acknowledged_by` wrote it (and, older, without
    /// `delivered`).
    #[derive(Serialize)]
    enum OlderFrame {
        _Hello,
        _Resumed,
        _Interest,
        _Ack,
        _Delivered,
        Message {
            publish: Publish,
            groups: Vec<String>,
            #[serde(skip_serializing_if = "Vec::is_empty")]
            delivered: Vec<(SessionId, SubscriptionId)>,
        },
    }

    fn decoded(bytes: &[u8]) -> (Vec<(SessionId, SubscriptionId)>, Option<String>) {
        match rmp_serde::from_slice(bytes).expect("decodes") {
            PeerFrame::Message {
                delivered,
                acknowledged_by,
                ..
            } => (delivered, acknowledged_by),
            other => panic!("not a message: {other:?}"),
        }
    }

    #[test]
    fn an_interest_snapshot_larger_than_a_frame_crosses_in_frames_within_the_bound() {
        // 72,000 entries of 1,000-byte filters: about 72 MB, past the 64 MiB frame bound.
        let entries: Vec<InterestEntry> = (0..72_000)
            .map(|n| InterestEntry {
                filter: format!("{n:06}.{}", "f".repeat(993)),
                group: None,
                count: 1,
            })
            .collect();
        let snapshot = InterestUpdate::Snapshot {
            seq: 9,
            entries,
            sessions: Vec::new(),
        };
        let mut reassembly = interest_parts::Reassembly::default();
        let mut whole = None;
        for frame in interest_frames(snapshot.clone()) {
            let body = rmp_serde::to_vec(&frame).expect("encodes");
            assert!(
                body.len() <= MAX_PEER_FRAME_BYTES,
                "a frame of {} bytes",
                body.len()
            );
            match rmp_serde::from_slice(&body).expect("decodes") {
                PeerFrame::InterestPart { entries } => reassembly.part(entries).expect("a part"),
                PeerFrame::Interest(update) => {
                    whole = Some(reassembly.complete(update).expect("the snapshot"));
                }
                other => panic!("not interest: {other:?}"),
            }
        }
        assert!(whole == Some(snapshot), "the snapshot reassembled");
    }

    #[test]
    fn message_frames_of_older_nodes_and_with_each_optional_field_decode() {
        let one = vec![(SessionId([1; 16]), 3)];
        for delivered in [Vec::new(), one.clone()] {
            let older = OlderFrame::Message {
                publish: publish(),
                groups: Vec::new(),
                delivered: delivered.clone(),
            };
            let bytes = rmp_serde::to_vec(&older).expect("encodes");
            assert_eq!(decoded(&bytes), (delivered.clone(), None));
            for acknowledged_by in [None, Some("shop".to_owned())] {
                let frame = PeerFrame::Message {
                    publish: publish(),
                    groups: vec!["g".to_owned()],
                    delivered: delivered.clone(),
                    acknowledged_by: acknowledged_by.clone(),
                };
                let bytes = rmp_serde::to_vec(&frame).expect("encodes");
                assert_eq!(decoded(&bytes), (delivered.clone(), acknowledged_by));
            }
        }
    }

    #[test]
    fn what_the_peer_never_confirmed_counts_drop_reports_by_the_messages_they_stand_for() {
        let mut in_flight = InFlight::default();
        in_flight.forwards.push_back((lost("a"), 1));
        in_flight.forwards.push_back((lost("b"), 40));
        in_flight.forwards.push_back((lost("a"), 1));
        in_flight.confirm(1);
        let counts: Vec<_> = in_flight.by_kind().into_iter().collect();
        assert_eq!(counts, vec![(lost("a"), 1), (lost("b"), 40)]);
    }
}
