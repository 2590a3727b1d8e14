//! One MQTT connection: its `CONNECT`, then every packet, translated to Cassini frames on a
//! bridged connection (`crate::bridge`) and back.
//!
//! Tasks: one reads and decodes the client's packets, one reads the control stream, one the
//! publish stream's answers, one per subscription stream; all report to this connection's loop
//! through bounded channels, and only the loop writes to the client. A client that stops
//! reading therefore stops the loop, then every reader, then the broker's writers, whose queues
//! then apply their overflow policies: the subscriptions of one MQTT connection share its one TCP
//! stream (no head-of-line isolation, unlike QUIC).
//!
//! The broker's answers (control stream and publish stream) come through a channel of their
//! own, which the loop keeps reading while it waits to write a frame to the broker, holding
//! what it reads for afterwards. Otherwise a burst of publishes would deadlock: the loop waiting
//! for room in the pipe to the broker, the broker waiting for room for its answers, and the
//! answers' reader waiting for room in a channel full of packets only the loop takes.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use cassini_broker::memory::{FrameBufferCharge, MemoryError};
use cassini_broker::{BrokerHandle, PeerInfo};
use cassini_protocol::{
    encode_frame, AckOptions, Delivery, ErrorCode, Frame, FrameDecoder, Hello, SequenceRange,
    SubscribeOptions, SubscriptionId, Welcome, PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::bridge::{self, ClientEnd, PipeReader, PipeWriter};
use crate::codes::{close_code, connect_refusal, pub_code, sub_code, unsub_code};
use crate::headers::{self, unix_millis, ORIGIN_HEADER};
use crate::options::{OptionsTable, Qos2, SubOptions};
use crate::packets::{
    self, CloseCode, ConnAckInfo, Connect, ConnectCode, DecodeError, Encoder, Inbound,
    MessageProperties, PubCode, Publish, SubCode, SubscribeFilter, UnsubCode, Version,
};
use crate::stash::Stash;
use crate::topics;
use crate::will::{Owner, Wills};

/// How long a goodbye waits for the broker to close the connection.
const GOODBYE_WAIT: Duration = Duration::from_secs(5);
/// How long one write to the client may make no progress before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A read buffer grown larger than this is given back once it holds nothing.
const KEPT_BUFFER_BYTES: usize = 64 * 1024;
/// What a connection's read buffer starts with.
const INITIAL_BUFFER_BYTES: usize = 4096;
/// Events waiting for the connection's loop.
const EVENT_BACKLOG: usize = 256;
/// The most QoS 1 and 2 publishes of one connection waiting for their answer: one per packet
/// id (a client sending more reuses ids it has no answer for).
const MAX_UNANSWERED_PUBLISHES: usize = u16::MAX as usize;
/// The most QoS 2 publishes of one session waiting for their `PUBREL`; one more closes the
/// connection.
pub(crate) const MAX_AWAITING_RELEASE: usize = 1_000;
/// The most bytes (as sent) of a connection's packets decoded and waiting to be handled, when a
/// packet's twice the maximum packet size is less.
const PACKET_BYTES_WAITING: usize = 4 * 1024 * 1024;
/// Ended subscriptions remembered, so that deliveries still on their way for them are dropped.
const ENDED_REMEMBERED: usize = 4096;
/// The highest topic alias an MQTT 5 client may use (Mosquitto's default, `max_topic_alias`).
pub(crate) const TOPIC_ALIAS_MAXIMUM: u16 = 10;
/// What a connection needs from the gateway.
#[derive(Clone)]
pub(crate) struct Context {
    pub(crate) broker: BrokerHandle,
    /// How long a client has to send `CONNECT`.
    pub(crate) connect_timeout: Duration,
    /// Cancelled when the gateway closes, or this connection's certificate is no longer valid.
    pub(crate) cut: CancellationToken,
    /// The wills waiting for their delay.
    pub(crate) wills: Wills,
    /// MQTT 5 subscription options kept per client id.
    pub(crate) sub_options: OptionsTable,
    /// This connection's place among those that have not sent `CONNECT` yet
    /// (`MqttOptions::max_connecting`), given back once `CONNECT` is read.
    pub(crate) connecting: Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>,
}

enum Event {
    /// A packet from the client, with its share of [`PACKET_BYTES_WAITING`] and of the
    /// identity's charge (its size on the wire), given back once it is handled.
    Packet(Inbound, WaitingShare),
    BadPacket(DecodeError),
    /// Reading more would take the identity's buffers past their bound ([`ReadCharge`]).
    OverLimit(MemoryError),
    ClientGone(String),
    KeepAliveExpired,
    Control(Frame),
    ControlEnded,
    Answer(Frame),
    Delivery(SubscriptionId, Delivery),
}

struct Sub {
    /// The MQTT filter.
    filter: String,
    /// The QoS granted.
    qos: u8,
    /// MQTT 5 options Cassini's subscription does not hold.
    options: SubOptions,
    /// Retain Handling 2, or 1 on a subscription that replaced one: retained replays are not
    /// delivered.
    drop_retained: bool,
}

enum Pending {
    /// Filter `index` of the `SUBSCRIBE` with packet id `pkid`.
    Subscribe {
        pkid: u16,
        index: usize,
        filter: String,
        qos: u8,
        options: SubOptions,
        drop_retained: bool,
    },
    /// Filter `index` of the `UNSUBSCRIBE` with packet id `pkid`.
    Unsubscribe { pkid: u16, index: usize },
    /// Ending an old subscription (clean start, or one replaced by a new `SUBSCRIBE`).
    Drop,
}

/// The broker's answer to one filter of a `SUBSCRIBE` or `UNSUBSCRIBE`.
enum Answer {
    Sub(SubCode),
    Unsub(UnsubCode),
}

struct Batch {
    sub: Vec<Option<SubCode>>,
    unsub: Vec<Option<UnsubCode>>,
    /// A filter listed again later in the same `SUBSCRIBE`: `(index, later index)`. As MQTT
    /// asks (§3.8.4), the packet is taken as consecutive `SUBSCRIBE`s, so the later entry
    /// replaces the earlier one, which is answered as the later one is.
    same_as: Vec<(usize, usize)>,
}

/// How the connection ended, for the session: with a goodbye (the session ends) or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client's `DISCONNECT`.
    Disconnect { publish_will: bool },
    /// Lost, timed out, malformed, or cut by the gateway.
    Abnormal(Option<CloseCode>),
    /// The broker closed the connection.
    Broker,
}

/// Serves one client whose transport (TLS or loopback TCP) is `io` and whose identity is in
/// `peer`, until the connection ends.
pub(crate) async fn serve<S>(io: S, peer: PeerInfo, context: Context)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let limits = context.broker.config().limits.clone();
    let max_packet = limits.max_frame_bytes as usize;
    let (mut reader, mut writer) = tokio::io::split(io);
    let mut buf = BytesMut::with_capacity(INITIAL_BUFFER_BYTES);
    let mut charge = ReadCharge::new(&context.broker, &peer.identity);
    let connect = tokio::time::timeout(
        context.connect_timeout,
        read_connect(&mut reader, &mut buf, max_packet, &mut charge.buffer),
    )
    .await;
    if let Ok(mut place) = context.connecting.lock() {
        place.take();
    }
    let connect = match connect {
        Ok(Ok(connect)) => connect,
        Ok(Err(ConnectFailure::Unsupported(level))) => {
            tracing::debug!(remote = %peer.remote_addr, level, "MQTT protocol level not supported");
            let mut out = BytesMut::new();
            let encoder = Encoder {
                version: Version::V311,
                max_packet_size: None,
            };
            if encoder
                .connack(
                    ConnectCode::UnsupportedVersion,
                    ConnAckInfo::default(),
                    &mut out,
                )
                .is_ok()
            {
                let _ = write(&mut writer, &out).await;
            }
            return;
        }
        Ok(Err(ConnectFailure::Other(reason))) => {
            tracing::debug!(remote = %peer.remote_addr, %reason, "no valid MQTT CONNECT");
            return;
        }
        Err(_) => {
            tracing::debug!(remote = %peer.remote_addr, "no MQTT CONNECT in time");
            return;
        }
    };
    let encoder = Encoder {
        version: connect.version,
        // 0 is refused in `CONNACK`, which must be sent all the same.
        max_packet_size: connect.max_packet_size.filter(|&size| size > 0),
    };
    let mut connection = Connection::new(connect, encoder, writer, context, max_packet, &peer);
    let Some((client, welcome)) = connection.start().await else {
        return;
    };
    tracing::debug!(
        remote = %peer.remote_addr,
        identity = %peer.identity,
        client_id = %connection.connect.client_id,
        version = connection.connect.version.name(),
        clean_start = connection.connect.clean_start,
        session_expiry = ?connection.connect.session_expiry,
        resumed = welcome.resumed,
        "MQTT client connected"
    );
    connection.run(client, reader, buf, charge).await;
}

/// What a connection's reading holds, charged to its identity like a QUIC stream reader's
/// buffer (`limits.max_partial_frame_bytes_per_identity`, shared with every connection of the
/// identity, and the memory budget): the read buffer, as large as it has grown, and the
/// packets decoded and waiting to be handled. Growth past either bound ends the connection
/// (MQTT 5: `DISCONNECT` Quota exceeded).
struct ReadCharge {
    buffer: FrameBufferCharge,
    waiting: Arc<std::sync::Mutex<FrameBufferCharge>>,
}

impl ReadCharge {
    fn new(broker: &BrokerHandle, identity: &Arc<str>) -> Self {
        Self {
            buffer: broker.read_buffer_charge(identity),
            waiting: Arc::new(std::sync::Mutex::new(broker.read_buffer_charge(identity))),
        }
    }
}

/// A decoded packet's share of what its connection's waiting packets may hold: of
/// [`PACKET_BYTES_WAITING`] and of the identity's charge, both given back once it is handled.
struct WaitingShare {
    _permit: OwnedSemaphorePermit,
    charge: Arc<std::sync::Mutex<FrameBufferCharge>>,
    bytes: usize,
}

impl WaitingShare {
    fn take(
        permit: OwnedSemaphorePermit,
        charge: &Arc<std::sync::Mutex<FrameBufferCharge>>,
        bytes: usize,
    ) -> Result<Self, MemoryError> {
        {
            let mut held = charge.lock().unwrap_or_else(|p| p.into_inner());
            let more = held.bytes().saturating_add(bytes);
            held.resize(more)?;
        }
        Ok(Self {
            _permit: permit,
            charge: Arc::clone(charge),
            bytes,
        })
    }
}

impl Drop for WaitingShare {
    fn drop(&mut self) {
        let mut held = self.charge.lock().unwrap_or_else(|p| p.into_inner());
        let less = held.bytes().saturating_sub(self.bytes);
        let _ = held.resize(less);
    }
}

enum ConnectFailure {
    Unsupported(u8),
    Other(String),
}

async fn read_connect<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max_packet: usize,
    charge: &mut FrameBufferCharge,
) -> Result<Connect, ConnectFailure> {
    loop {
        match packets::decode(buf, None, max_packet) {
            Ok(Some(Inbound::Connect(connect))) => return Ok(connect),
            Ok(Some(_)) => {
                return Err(ConnectFailure::Other(
                    "the first packet is not CONNECT".into(),
                ))
            }
            Ok(None) => {}
            Err(DecodeError::UnsupportedVersion(level)) => {
                return Err(ConnectFailure::Unsupported(level))
            }
            Err(err) => return Err(ConnectFailure::Other(err.to_string())),
        }
        let charged = |charge: &mut FrameBufferCharge, buf: &BytesMut| {
            charge
                .grow_to(buf.capacity())
                .map_err(|err| ConnectFailure::Other(err.to_string()))
        };
        charged(charge, buf)?;
        match reader.read_buf(buf).await {
            Ok(0) => return Err(ConnectFailure::Other("closed before CONNECT".into())),
            Ok(_) => {}
            Err(err) => return Err(ConnectFailure::Other(err.to_string())),
        }
        charged(charge, buf)?;
    }
}

async fn write<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    let io = async {
        writer.write_all(bytes).await?;
        writer.flush().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, io).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client read nothing for 30 s",
        )),
    }
}

/// Why `publish` (a delivery, from a QUIC client perhaps) is no valid MQTT `PUBLISH`: a topic
/// name holding a wildcard character (MQTT §4.7.1) or U+0000, or a string property holding
/// U+0000 (§1.5.4). Strict clients close the connection on either.
fn not_for_mqtt(publish: &Publish) -> Option<&'static str> {
    if publish.topic.contains(['+', '#', '\0']) {
        return Some("a wildcard character or U+0000 in the topic");
    }
    let properties = &publish.properties;
    let strings = properties
        .user_properties
        .iter()
        .flat_map(|(name, value)| [name.as_str(), value.as_str()])
        .chain(properties.content_type.as_deref())
        .chain(properties.response_topic.as_deref());
    for text in strings {
        if text.contains('\0') {
            return Some("U+0000 in a property");
        }
    }
    if properties
        .response_topic
        .as_deref()
        .is_some_and(|topic| topic.contains(['+', '#']))
    {
        return Some("a wildcard character in the response topic");
    }
    None
}

/// A Cassini session name for an MQTT client id, if the id is one: 1 to 128 ASCII letters,
/// digits, `-`, `_` and `.`.
fn session_name(client_id: &str) -> Option<&str> {
    let valid = !client_id.is_empty()
        && client_id.len() <= 128
        && client_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    valid.then_some(client_id)
}

struct Connection<W> {
    /// The client's identity and address.
    peer: PeerInfo,
    connect: Connect,
    encoder: Encoder,
    writer: W,
    out: BytesMut,
    context: Context,
    max_frame: u32,
    /// The client id the gateway chose for an empty one.
    assigned: Option<String>,
    /// MQTT 5: the Session Expiry Interval granted, when less than the client asked for (the
    /// broker's `sessions.expiry`), for `CONNACK` to say so.
    capped_expiry: Option<u32>,
    control: Option<PipeWriter>,
    /// The control stream's reader and what it read past `Welcome`, until the loop takes them.
    control_reader: Option<PipeReader>,
    control_buf: BytesMut,
    publish: Option<PipeWriter>,
    frame_buf: BytesMut,
    subs: HashMap<SubscriptionId, Sub>,
    by_filter: HashMap<String, SubscriptionId>,
    next_request: u64,
    pending: HashMap<u64, Pending>,
    batches: HashMap<u16, Batch>,
    stash: Stash,
    /// The subscriptions of this connection that ended lately (the newest
    /// [`ENDED_REMEMBERED`]): deliveries still on their way for one are dropped, never stashed.
    ended: BTreeSet<SubscriptionId>,
    /// Acknowledged publishes in the broker's hands: message id → (packet id, QoS, the
    /// publish's number among those forwarded).
    publishes: HashMap<u64, (u16, u8, u64)>,
    /// How many acknowledged publishes were forwarded to the broker.
    forwarded: u64,
    /// Answers the gateway gave itself (a refusal, a QoS 2 publish sent again) while earlier
    /// publishes were in the broker's hands: each waits for the answer to the publish forwarded
    /// last before it, so the client gets its answers in the order it published (MQTT 3.1.1
    /// §4.6). (That publish's number, packet id, QoS, reason.) At most one per packet id in
    /// flight.
    held_answers: VecDeque<(u64, u16, u8, PubCode)>,
    next_message_id: u64,
    /// MQTT 5 topic aliases the client set: alias → topic.
    aliases: HashMap<u16, String>,
    /// QoS 1 deliveries sent and not yet acknowledged: packet id → (subscription, sequence).
    /// Never more than `receive_maximum` (MQTT 5 §4.9: the client's Receive Maximum bounds the
    /// whole connection).
    outbound: HashMap<u16, (SubscriptionId, u64)>,
    /// How many QoS 1 deliveries the client takes unacknowledged: its Receive Maximum (MQTT 5;
    /// 65,535 when absent, and for 3.1.1).
    receive_maximum: usize,
    /// QoS 1 deliveries waiting for a free place in `outbound`, per subscription, in order. Each
    /// holds at most the subscription's in-flight window (the broker sends no more without an
    /// `Ack`), so the whole is bounded by the subscriptions.
    waiting: HashMap<SubscriptionId, VecDeque<Delivery>>,
    /// The subscriptions with deliveries in `waiting`, in turn: a free place goes to the front
    /// one, which then goes to the back if it has more, so a busy subscription never starves
    /// another.
    turns: VecDeque<SubscriptionId>,
    next_pkid: u16,
    /// Where the publish stream's reader sends the broker's answers.
    answers_to: Option<mpsc::Sender<Event>>,
    /// The connection's reading tasks (the control stream's from `Welcome` on, the client's
    /// packets and the subscription streams from `run`), aborted when it ends.
    tasks: tokio::task::JoinSet<()>,
    /// The broker's answers, read by the loop, and by [`Connection::frame`] while it waits.
    answers: Option<mpsc::Receiver<Event>>,
    /// Answers read while a frame waited to be written, handled before anything else.
    deferred: VecDeque<Event>,
    /// Set (by `Wills`) when a newer connection with a clean start takes this one's client id
    /// over: the session ends, so the will is due at once, whatever its delay.
    clean_start_flag: Option<Arc<AtomicBool>>,
    /// The number `Wills` gave this connection's will (kept in the broker's store in disk
    /// mode until it is published or not due).
    will_number: Option<u64>,
}

impl<W: AsyncWrite + Unpin + Send> Connection<W> {
    fn new(
        connect: Connect,
        encoder: Encoder,
        writer: W,
        context: Context,
        max_packet: usize,
        peer: &PeerInfo,
    ) -> Self {
        let receive_maximum = usize::from(connect.receive_maximum.unwrap_or(u16::MAX)).max(1);
        Self {
            peer: peer.clone(),
            connect,
            encoder,
            writer,
            out: BytesMut::new(),
            context,
            max_frame: u32::try_from(max_packet).unwrap_or(u32::MAX),
            assigned: None,
            capped_expiry: None,
            control: None,
            control_reader: None,
            control_buf: BytesMut::new(),
            publish: None,
            frame_buf: BytesMut::new(),
            subs: HashMap::new(),
            by_filter: HashMap::new(),
            next_request: 1,
            pending: HashMap::new(),
            batches: HashMap::new(),
            stash: Stash::default(),
            ended: BTreeSet::new(),
            publishes: HashMap::new(),
            forwarded: 0,
            held_answers: VecDeque::new(),
            next_message_id: rand::random::<u64>() >> 1,
            aliases: HashMap::new(),
            receive_maximum,
            outbound: HashMap::new(),
            waiting: HashMap::new(),
            turns: VecDeque::new(),
            next_pkid: 1,
            answers_to: None,
            tasks: tokio::task::JoinSet::new(),
            answers: None,
            deferred: VecDeque::new(),
            clean_start_flag: None,
            will_number: None,
        }
    }

    /// Writes what `fill` encodes to the client; false if the client is gone.
    async fn send(
        &mut self,
        fill: impl FnOnce(&Encoder, &mut BytesMut) -> Result<(), packets::EncodeError>,
    ) -> bool {
        self.out.clear();
        if let Err(err) = fill(&self.encoder, &mut self.out) {
            tracing::debug!(%err, "packet not sent");
            return true;
        }
        write(&mut self.writer, &self.out).await.is_ok()
    }

    async fn connack(
        &mut self,
        code: ConnectCode,
        session_present: bool,
        reason: Option<String>,
    ) -> bool {
        let info = ConnAckInfo {
            session_present,
            assigned_client_id: self.assigned.clone(),
            max_packet_size: Some(self.max_frame),
            session_expiry: self.capped_expiry,
            reason,
            topic_alias_maximum: Some(TOPIC_ALIAS_MAXIMUM),
        };
        self.send(|encoder, out| encoder.connack(code, info, out))
            .await
    }

    async fn frame(&mut self, frame: &Frame, on_publish_stream: bool) -> bool {
        self.encode(frame) && self.write_encoded(on_publish_stream).await
    }

    /// Encodes `frame` for [`Connection::write_encoded`]; false if it does not fit in a frame.
    fn encode(&mut self, frame: &Frame) -> bool {
        self.frame_buf.clear();
        if let Err(err) = encode_frame(frame, &mut self.frame_buf, self.max_frame) {
            tracing::debug!(%err, "frame not encoded");
            return false;
        }
        true
    }

    /// Writes the frame [`Connection::encode`] made to the broker; false if the broker is gone.
    async fn write_encoded(&mut self, on_publish_stream: bool) -> bool {
        let stream = if on_publish_stream {
            self.publish.as_mut()
        } else {
            self.control.as_mut()
        };
        let Some(stream) = stream else {
            return false;
        };
        let write = stream.write(&self.frame_buf);
        tokio::pin!(write);
        // The broker may be waiting for its answers to be taken before it reads more: take
        // them meanwhile, for the loop to handle once this frame is written. They are the
        // answers to frames already written, so they are few.
        loop {
            tokio::select! {
                biased;
                written = &mut write => return written.is_ok(),
                Some(answer) = next_answer(&mut self.answers) => self.deferred.push_back(answer),
            }
        }
    }

    /// `CONNECT` → `Hello` → `Welcome` → `CONNACK`. `None` if the connection ends here.
    async fn start(&mut self) -> Option<(ClientEnd, Welcome)> {
        if self.connect.version == Version::V5 {
            // MQTT 5 §3.1.2.11.3: a Receive Maximum of 0 is a protocol error.
            if self.connect.receive_maximum == Some(0) {
                let reason = "a Receive Maximum of 0 is a protocol error";
                self.connack(ConnectCode::ProtocolError, false, Some(reason.into()))
                    .await;
                return None;
            }
            // MQTT 5 §3.2.2.3.4: the will's QoS above the maximum QoS announced.
            if self.connect.will.as_ref().is_some_and(|will| will.qos > 1) {
                let reason = "the maximum QoS is 1";
                self.connack(ConnectCode::QosNotSupported, false, Some(reason.into()))
                    .await;
                return None;
            }
            // MQTT 5 §3.1.2.11.4: a Maximum Packet Size of 0 is a protocol error.
            if self.connect.max_packet_size == Some(0) {
                let reason = "a Maximum Packet Size of 0 is a protocol error";
                self.connack(ConnectCode::ProtocolError, false, Some(reason.into()))
                    .await;
                return None;
            }
            // MQTT 5 §4.12: enhanced authentication is not supported (identities come from
            // client certificates).
            if let Some(method) = &self.connect.authentication_method {
                let reason = format!("authentication method {method:?} is not supported");
                self.connack(ConnectCode::BadAuthenticationMethod, false, Some(reason))
                    .await;
                return None;
            }
        }
        // A will with no Cassini form could never be published: refused now, not lost later.
        if let Some(will) = &self.connect.will {
            let translated = topics::topic_to_cassini(&will.topic)
                .map(|_| ())
                .map_err(|err| format!("will topic {:?}: {err}", will.topic))
                .and_then(|()| {
                    headers::to_cassini(will.properties.clone(), will.retain, 0)
                        .map(|_| ())
                        .map_err(|err| format!("will response topic: {err}"))
                });
            if let Err(reason) = translated {
                self.connack(ConnectCode::TopicNameInvalid, false, Some(reason))
                    .await;
                return None;
            }
        }
        if self.connect.client_id.is_empty() {
            if self.connect.version == Version::V311 && !self.connect.clean_start {
                self.connack(ConnectCode::BadClientId, false, None).await;
                return None;
            }
            let id = format!("mqtt-{:016x}", rand::random::<u64>());
            self.connect.client_id = id.clone();
            if self.connect.version == Version::V5 {
                self.assigned = Some(id);
            }
        }
        let Some(name) = session_name(&self.connect.client_id).map(str::to_string) else {
            let reason = "a client id is 1 to 128 ASCII letters, digits, '-', '_' and '.'";
            self.connack(ConnectCode::BadClientId, false, Some(reason.into()))
                .await;
            return None;
        };
        // A session that was to end with its connection (a 3.1.1 clean session, an MQTT 5
        // Session Expiry of 0) ends when another connection takes it over: this one starts
        // clean whatever it asked (Session Present 0), as Mosquitto does.
        let start_clean = self.connect.clean_start
            || self
                .context
                .wills
                .held_session_ends(&self.connect.client_id);
        // Before the `Hello`, so before the broker closes the connection this one takes over:
        // with a clean start, that one's session ends here, and so its will is due at once.
        let holder = start_clean
            .then(|| {
                self.context
                    .wills
                    .clean_start_coming(&self.connect.client_id)
            })
            .flatten();
        let (broker_end, client) =
            bridge::connection(self.peer.clone(), self.connect.version.name());
        self.grant_session_expiry(&client);
        self.context.broker.accept(Arc::new(broker_end));
        let welcome = match self.hello(&client, name).await {
            Ok(welcome) => welcome,
            Err(code) => {
                // Refused: it takes nothing over.
                if let Some(holder) = holder {
                    holder.store(false, Ordering::Release);
                }
                let reason = if code == ErrorCode::SESSION_IDENTITY_MISMATCH {
                    Some("the client id is in use by another identity".to_string())
                } else {
                    client.close_reason().map(|(_, reason)| reason)
                };
                client.close("CONNECT refused");
                self.connack(connect_refusal(code), false, reason).await;
                return None;
            }
        };
        // The broker's answers are read from here on: a clean start unsubscribes from every
        // subscription of the session it resumed, and the broker stops reading requests while
        // its answers are not taken.
        self.read_control();
        // MQTT 5 §3.1.3.2.2: a new connection for the client id cancels a will waiting for its
        // delay; a clean start ends the session, so the will is published at once (§3.1.2.5).
        self.context
            .wills
            .connected(&self.connect.client_id, start_clean);
        self.clean_start_flag = Some(
            self.context
                .wills
                .hold(&self.connect.client_id, self.ends_with_connection()),
        );
        if let Some(will) = &self.connect.will {
            let delay = Duration::from_secs(u64::from(self.will_delay(will)));
            self.will_number = Some(self.context.wills.remember(&self.owner(), will, delay));
        }
        let session_present = welcome.resumed && !start_clean;
        self.context
            .sub_options
            .attach(&self.connect.client_id, session_present);
        for subscription in &welcome.subscriptions {
            if start_clean {
                let request = self.request(Pending::Drop);
                let frame = Frame::Unsubscribe(cassini_protocol::Unsubscribe {
                    request_id: request,
                    subscription: subscription.subscription,
                });
                if !self.frame(&frame, false).await {
                    client.close("control stream lost");
                    return None;
                }
            } else {
                let filter = topics::cassini_to_mqtt_filter(
                    &subscription.filter,
                    subscription.options.queue_group.as_deref(),
                );
                let qos = u8::from(subscription.options.acks.is_some());
                let options = self
                    .context
                    .sub_options
                    .get(&self.connect.client_id, &filter);
                self.by_filter
                    .insert(filter.clone(), subscription.subscription);
                self.subs.insert(
                    subscription.subscription,
                    Sub {
                        filter,
                        qos,
                        options,
                        drop_retained: false,
                    },
                );
            }
        }
        if !self
            .connack(ConnectCode::Accepted, session_present, None)
            .await
        {
            client.close("client gone");
            return None;
        }
        Some((client, welcome))
    }

    async fn hello(&mut self, client: &ClientEnd, name: String) -> Result<Welcome, ErrorCode> {
        let closed_code = |client: &ClientEnd| {
            client
                .close_reason()
                .map_or(ErrorCode::INTERNAL, |(code, _)| code)
        };
        let Ok(stream) = client.open_bi().await else {
            return Err(closed_code(client));
        };
        self.control = Some(stream.send);
        let hello = Frame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            resume: None,
            client_name: Some(format!(
                "{} {}",
                self.connect.version.name(),
                self.connect.client_id
            )),
            positions: Vec::new(),
            session_name: Some(name),
        });
        if !self.frame(&hello, false).await {
            return Err(closed_code(client));
        }
        let mut recv = stream.recv;
        let decoder = FrameDecoder::new(self.max_frame);
        let mut buf = BytesMut::new();
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(Frame::Welcome(welcome))) => {
                    self.control_reader = Some(recv);
                    self.control_buf = buf;
                    return Ok(welcome);
                }
                Ok(Some(_)) => return Err(ErrorCode::PROTOCOL_VIOLATION),
                Ok(None) => {}
                Err(_) => return Err(ErrorCode::MALFORMED_FRAME),
            }
            match recv.read(&mut buf).await {
                Ok(true) => {}
                Ok(false) | Err(_) => {
                    // The broker closes the connection right after refusing a Hello.
                    let _ = tokio::time::timeout(GOODBYE_WAIT, client.closed()).await;
                    return Err(closed_code(client));
                }
            }
        }
    }
}

/// The next of the broker's answers; never, once there are none.
async fn next_answer(answers: &mut Option<mpsc::Receiver<Event>>) -> Option<Event> {
    match answers {
        Some(answers) => answers.recv().await,
        None => std::future::pending().await,
    }
}

/// Reads `recv` frame by frame into `events` (`wrap` makes each an event), until it ends.
async fn read_frames(
    mut recv: PipeReader,
    mut buf: BytesMut,
    max_frame: u32,
    events: mpsc::Sender<Event>,
    wrap: fn(Frame) -> Event,
    ended: Option<Event>,
) {
    let decoder = FrameDecoder::new(max_frame);
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if events.send(wrap(frame)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::warn!(%err, "undecodable frame from the broker");
                    recv.stop(ErrorCode::MALFORMED_FRAME);
                    if let Some(ended) = ended {
                        let _ = events.send(ended).await;
                    }
                    return;
                }
            }
        }
        match recv.read(&mut buf).await {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                if let Some(ended) = ended {
                    let _ = events.send(ended).await;
                }
                return;
            }
        }
    }
}

/// Reads one subscription stream: `SubscriptionStart`, then deliveries.
async fn read_subscription(mut recv: PipeReader, max_frame: u32, events: mpsc::Sender<Event>) {
    let decoder = FrameDecoder::new(max_frame);
    let mut buf = BytesMut::new();
    let mut subscription = None;
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(Frame::SubscriptionStart(start))) => {
                    subscription = Some(start.subscription)
                }
                Ok(Some(Frame::Message(delivery))) => {
                    let Some(id) = subscription else {
                        recv.stop(ErrorCode::PROTOCOL_VIOLATION);
                        return;
                    };
                    if events.send(Event::Delivery(id, delivery)).await.is_err() {
                        return;
                    }
                }
                // Gaps: MQTT has no way to say what was lost.
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(err) => {
                    tracing::warn!(%err, "undecodable frame on a subscription stream");
                    recv.stop(ErrorCode::MALFORMED_FRAME);
                    return;
                }
            }
        }
        match recv.read(&mut buf).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
    }
}

/// Reads the client's packets into `events`, with the keep-alive deadline.
async fn read_packets<R: AsyncRead + Unpin>(
    mut reader: R,
    mut buf: BytesMut,
    version: Version,
    max_packet: usize,
    keep_alive: u16,
    mut charge: ReadCharge,
    events: mpsc::Sender<Event>,
) {
    // MQTT: the server may close a connection silent for one and a half keep-alive periods.
    let deadline = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
    // Packets decoded and not yet handled hold at most this many bytes (as sent), whatever
    // their number: a client that stops reading while it sends holds up the loop, not memory.
    let budget = PACKET_BYTES_WAITING.max(max_packet.saturating_mul(2));
    let waiting = Arc::new(Semaphore::new(budget));
    loop {
        loop {
            let before = buf.len();
            match packets::decode(&mut buf, Some(version), max_packet) {
                Ok(Some(packet)) => {
                    let size = (before - buf.len()).clamp(1, budget);
                    let Ok(permit) = Arc::clone(&waiting)
                        .acquire_many_owned(u32::try_from(size).unwrap_or(u32::MAX))
                        .await
                    else {
                        return;
                    };
                    let share = match WaitingShare::take(permit, &charge.waiting, size) {
                        Ok(share) => share,
                        Err(err) => {
                            let _ = events.send(Event::OverLimit(err)).await;
                            return;
                        }
                    };
                    if events.send(Event::Packet(packet, share)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    let _ = events.send(Event::BadPacket(err)).await;
                    return;
                }
            }
        }
        if buf.is_empty() && buf.capacity() > KEPT_BUFFER_BYTES {
            // Grown for a large packet: given back (the packets split from it keep what they
            // hold, charged as waiting).
            buf = BytesMut::with_capacity(INITIAL_BUFFER_BYTES);
            let _ = charge.buffer.resize(buf.capacity());
        }
        if let Err(err) = charge.buffer.grow_to(buf.capacity()) {
            let _ = events.send(Event::OverLimit(err)).await;
            return;
        }
        let read = reader.read_buf(&mut buf);
        let read = match deadline {
            Some(deadline) => match tokio::time::timeout(deadline, read).await {
                Ok(read) => read,
                Err(_) => {
                    let _ = events.send(Event::KeepAliveExpired).await;
                    return;
                }
            },
            None => read.await,
        };
        match read {
            Ok(0) => {
                let _ = events
                    .send(Event::ClientGone("closed by the client".into()))
                    .await;
                return;
            }
            Ok(_) => {}
            Err(err) => {
                let _ = events.send(Event::ClientGone(err.to_string())).await;
                return;
            }
        }
        if let Err(err) = charge.buffer.grow_to(buf.capacity()) {
            let _ = events.send(Event::OverLimit(err)).await;
            return;
        }
    }
}

impl<W: AsyncWrite + Unpin + Send> Connection<W> {
    fn request(&mut self, pending: Pending) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        self.pending.insert(id, pending);
        id
    }

    /// MQTT 5: grants the client's Session Expiry Interval, capped by the broker's
    /// `sessions.expiry` (then `CONNACK` says so), and tells the broker (through `client`) how
    /// long the session outlives this connection. 3.1.1 sessions get `sessions.expiry`.
    fn grant_session_expiry(&mut self, client: &ClientEnd) {
        if self.connect.version != Version::V5 {
            return;
        }
        let most = self.most_session_expiry();
        let asked = self.connect.session_expiry.unwrap_or(0);
        if asked > most {
            self.capped_expiry = Some(most);
        }
        self.set_session_expiry(asked, client);
    }

    /// The longest Session Expiry Interval the gateway grants: `sessions.expiry`, in seconds.
    fn most_session_expiry(&self) -> u32 {
        let most = self.context.broker.config().sessions.expiry.as_secs();
        u32::try_from(most).unwrap_or(u32::MAX)
    }

    /// Puts MQTT 5's Session Expiry Interval `secs`, capped, in force.
    fn set_session_expiry(&mut self, secs: u32, client: &ClientEnd) {
        let granted = secs.min(self.most_session_expiry());
        self.connect.session_expiry = Some(granted);
        client.set_session_expiry(Some(Duration::from_secs(u64::from(granted))));
    }

    /// How long the session outlives this connection when it does: MQTT 5's granted Session
    /// Expiry Interval, else the broker's `sessions.expiry`.
    fn session_outlives(&self) -> Duration {
        match self.connect.session_expiry {
            Some(secs) if self.connect.version == Version::V5 => {
                Duration::from_secs(u64::from(secs))
            }
            _ => self.context.broker.config().sessions.expiry,
        }
    }

    /// Whether the session ends with this connection: a 3.1.1 clean session, or an MQTT 5
    /// session expiry of 0 (the default).
    fn ends_with_connection(&self) -> bool {
        match self.connect.version {
            Version::V311 => self.connect.clean_start,
            Version::V5 => self.connect.session_expiry.unwrap_or(0) == 0,
        }
    }

    async fn run<R>(mut self, mut client: ClientEnd, reader: R, buf: BytesMut, charge: ReadCharge)
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let (events, mut inbox) = mpsc::channel(EVENT_BACKLOG);
        self.read_control();
        self.tasks.spawn(read_packets(
            reader,
            buf,
            self.connect.version,
            self.max_frame as usize,
            self.connect.keep_alive,
            charge,
            events.clone(),
        ));
        if let Some(mut uni) = client.uni.take() {
            let events = events.clone();
            let max_frame = self.max_frame;
            self.tasks.spawn(async move {
                let mut streams = tokio::task::JoinSet::new();
                while let Some(stream) = uni.recv().await {
                    streams.spawn(read_subscription(stream, max_frame, events.clone()));
                }
                while streams.join_next().await.is_some() {}
            });
        }
        drop(events);
        let cut = self.context.cut.clone();
        let end = loop {
            let event = match self.deferred.pop_front() {
                Some(answer) => Some(answer),
                None => tokio::select! {
                    biased;
                    Some(answer) = next_answer(&mut self.answers) => Some(answer),
                    event = inbox.recv() => event,
                    () = client.closed() => break End::Broker,
                    () = cut.cancelled() => break End::Abnormal(Some(CloseCode::Administrative)),
                },
            };
            let Some(event) = event else {
                break End::Abnormal(None);
            };
            if let Some(end) = self.handle(event, &client).await {
                break end;
            }
        };
        self.finish(end, &client).await;
        self.tasks.abort_all();
    }

    /// The most filters one `SUBSCRIBE` or `UNSUBSCRIBE` may list: as many as a session may
    /// hold subscriptions (`limits.max_subscriptions_per_session`); more closes the connection.
    fn most_filters_per_request(&self) -> usize {
        let most = self
            .context
            .broker
            .config()
            .limits
            .max_subscriptions_per_session;
        usize::try_from(most).unwrap_or(usize::MAX)
    }

    /// Starts reading the broker's answers on the control stream into `answers`, once.
    fn read_control(&mut self) {
        let Some(recv) = self.control_reader.take() else {
            return;
        };
        let (answers_to, answers) = mpsc::channel(EVENT_BACKLOG);
        self.tasks.spawn(read_frames(
            recv,
            std::mem::take(&mut self.control_buf),
            self.max_frame,
            answers_to.clone(),
            Event::Control,
            Some(Event::ControlEnded),
        ));
        self.answers = Some(answers);
        self.answers_to = Some(answers_to);
    }

    /// Handles one event; `Some` when the connection ends.
    async fn handle(&mut self, event: Event, client: &ClientEnd) -> Option<End> {
        match event {
            Event::Packet(packet, _waiting) => self.packet(packet, client).await,
            Event::BadPacket(err) => {
                tracing::debug!(client_id = %self.connect.client_id, %err, "closing on a bad packet");
                let code = match err {
                    DecodeError::TooLarge { .. } => CloseCode::PacketTooLarge,
                    _ => CloseCode::Malformed,
                };
                Some(End::Abnormal(Some(code)))
            }
            Event::OverLimit(err) => {
                tracing::info!(client_id = %self.connect.client_id, %err, "closing an MQTT connection: its identity's read buffers are full");
                Some(End::Abnormal(Some(CloseCode::QuotaExceeded)))
            }
            Event::ClientGone(reason) => {
                tracing::debug!(client_id = %self.connect.client_id, %reason, "MQTT connection lost");
                Some(End::Abnormal(None))
            }
            Event::KeepAliveExpired => Some(End::Abnormal(Some(CloseCode::KeepAliveTimeout))),
            Event::ControlEnded => Some(End::Broker),
            Event::Control(frame) => self.control_frame(frame).await,
            Event::Answer(frame) => self.answer(frame).await,
            Event::Delivery(subscription, delivery) => self.deliver(subscription, delivery).await,
        }
    }

    async fn packet(&mut self, packet: Inbound, client: &ClientEnd) -> Option<End> {
        match packet {
            Inbound::Publish(publish) => self.inbound_publish(publish, client).await,
            Inbound::PubAck(pkid) => {
                if let Some((subscription, sequence)) = self.outbound.remove(&pkid) {
                    let ack = Frame::Ack(cassini_protocol::Ack {
                        subscription,
                        ranges: vec![SequenceRange {
                            from: sequence,
                            to: sequence,
                        }],
                    });
                    if !self.frame(&ack, false).await {
                        return Some(End::Broker);
                    }
                    return self.release().await;
                }
                None
            }
            Inbound::PubRel(pkid) => {
                self.set_qos2(pkid, None);
                (!self.send(|encoder, out| encoder.pubcomp(pkid, out)).await)
                    .then_some(End::Abnormal(None))
            }
            // The gateway sends no QoS 2 delivery, so these answer nothing.
            Inbound::PubRec(_) | Inbound::PubComp(_) => {
                Some(End::Abnormal(Some(CloseCode::ProtocolError)))
            }
            Inbound::Subscribe { pkid, filters } => self.subscribe(pkid, filters).await,
            Inbound::Unsubscribe { pkid, filters } => self.unsubscribe(pkid, filters).await,
            Inbound::PingReq => (!self.send(|encoder, out| encoder.pingresp(out)).await)
                .then_some(End::Abnormal(None)),
            Inbound::Disconnect {
                with_will,
                session_expiry,
            } => {
                if let Some(expiry) = session_expiry {
                    // MQTT 5 §3.14.2.2.2: a client may change a non-zero expiry at DISCONNECT;
                    // from 0 to another value it is a protocol error, and the DISCONNECT is not
                    // a valid one (the will is published).
                    if self.connect.session_expiry.unwrap_or(0) == 0 && expiry != 0 {
                        return Some(End::Abnormal(Some(CloseCode::ProtocolError)));
                    }
                    self.set_session_expiry(expiry, client);
                }
                Some(End::Disconnect {
                    publish_will: with_will,
                })
            }
            Inbound::Connect(_) => Some(End::Abnormal(Some(CloseCode::ProtocolError))),
            Inbound::Unexpected(kind) => {
                tracing::debug!(client_id = %self.connect.client_id, kind, "packet a client may not send");
                Some(End::Abnormal(Some(CloseCode::ProtocolError)))
            }
        }
    }

    async fn publish_stream(&mut self, client: &ClientEnd) -> bool {
        if self.publish.is_some() {
            return true;
        }
        let Ok(stream) = client.open_bi().await else {
            return false;
        };
        self.publish = Some(stream.send);
        if let Some(answers) = &self.answers_to {
            tokio::spawn(read_frames(
                stream.recv,
                BytesMut::new(),
                self.max_frame,
                answers.clone(),
                Event::Answer,
                None,
            ));
        }
        true
    }

    async fn inbound_publish(&mut self, mut publish: Publish, client: &ClientEnd) -> Option<End> {
        // MQTT 5 §3.3.2.3.4: an alias with a topic sets it, an alias alone stands for its topic.
        if let Some(alias) = publish.topic_alias {
            if alias == 0 || alias > TOPIC_ALIAS_MAXIMUM {
                return Some(End::Abnormal(Some(CloseCode::TopicAliasInvalid)));
            }
            if publish.topic.is_empty() {
                let Some(topic) = self.aliases.get(&alias) else {
                    return Some(End::Abnormal(Some(CloseCode::ProtocolError)));
                };
                publish.topic = topic.clone();
            } else {
                self.aliases.insert(alias, publish.topic.clone());
            }
        }
        if publish.qos == 2 && self.connect.version == Version::V5 {
            // The CONNACK said maximum QoS 1.
            return Some(End::Abnormal(Some(CloseCode::QosNotSupported)));
        }
        // A QoS 2 publish sent again (on this connection or, its session resumed, a later one).
        let sent_before = match publish.qos {
            2 => self
                .context
                .sub_options
                .qos2(&self.connect.client_id, publish.pkid),
            _ => None,
        };
        if publish.qos == 2
            && sent_before.is_none()
            && self.context.sub_options.qos2_count(&self.connect.client_id) >= MAX_AWAITING_RELEASE
        {
            // As EMQX's `max_awaiting_rel`: a client that does not release its QoS 2
            // publishes may not hold the gateway's memory with ever more of them.
            return Some(End::Abnormal(Some(CloseCode::QuotaExceeded)));
        }
        if sent_before == Some(Qos2::Received) {
            // Already taken: not published again.
            return self
                .answer_in_order(publish.pkid, 2, PubCode::Success)
                .await;
        }
        let mapped = topics::topic_to_cassini(&publish.topic).and_then(|topic| {
            let outgoing = headers::to_cassini(publish.properties, publish.retain, unix_millis())?;
            Ok((topic, outgoing))
        });
        let (topic, outgoing) = match mapped {
            Ok(mapped) => mapped,
            Err(err) => {
                tracing::debug!(client_id = %self.connect.client_id, topic = %publish.topic, %err, "publish refused");
                return self
                    .answer_in_order(publish.pkid, publish.qos, PubCode::TopicNameInvalid)
                    .await;
            }
        };
        if !self.publish_stream(client).await {
            return Some(End::Broker);
        }
        let acknowledged = publish.qos > 0;
        let message_id = acknowledged.then(|| match sent_before {
            // The same message id: within the broker's dedupe window the first copy, if it
            // was routed, is not routed again.
            Some(Qos2::Sent { message_id }) => message_id,
            _ => {
                self.next_message_id = self.next_message_id.wrapping_add(1);
                self.next_message_id
            }
        });
        let mut headers = outgoing.headers;
        if self.subs.values().any(|sub| sub.options.no_local) {
            headers.push((ORIGIN_HEADER.to_string(), self.connect.client_id.clone()));
        }
        let frame = Frame::Publish(cassini_protocol::Publish {
            topic,
            headers,
            payload: publish.payload,
            message_id,
            reply_to: outgoing.reply_to,
            retain: publish.retain,
            to_session: None,
            ack: acknowledged,
        });
        if !self.encode(&frame) {
            // The gateway's headers took a publish just under the packet size past a frame's.
            return self
                .answer_in_order(publish.pkid, publish.qos, PubCode::QuotaExceeded)
                .await;
        }
        if let Some(id) = message_id {
            self.forwarded += 1;
            self.publishes
                .insert(id, (publish.pkid, publish.qos, self.forwarded));
            if publish.qos == 2 {
                self.set_qos2(publish.pkid, Some(Qos2::Sent { message_id: id }));
            }
        }
        (!self.write_encoded(true).await).then_some(End::Broker)
    }

    /// Records where the session's QoS 2 publish `pkid` stands (`None`: released), where its
    /// next connection finds it.
    fn set_qos2(&self, pkid: u16, state: Option<Qos2>) {
        self.context.sub_options.set_qos2(
            &self.peer.identity,
            &self.connect.client_id,
            pkid,
            state,
        );
    }

    /// Answers a publish the gateway did not forward (refused, or a QoS 2 publish already taken)
    /// as [`Self::refuse_publish`] does, after the answers to the publishes forwarded before it.
    async fn answer_in_order(&mut self, pkid: u16, qos: u8, code: PubCode) -> Option<End> {
        if qos > 0 && !self.publishes.is_empty() {
            if self.publishes.len() + self.held_answers.len() >= MAX_UNANSWERED_PUBLISHES {
                // More publishes waiting for their answer than there are packet ids.
                return Some(End::Abnormal(Some(CloseCode::QuotaExceeded)));
            }
            self.held_answers
                .push_back((self.forwarded, pkid, qos, code));
            return None;
        }
        self.refuse_publish(pkid, qos, code).await
    }

    /// Gives the answers held behind the publish forwarded as number `answered` (and before).
    async fn release_held_answers(&mut self, answered: u64) -> Option<End> {
        while let Some(&(after, pkid, qos, code)) = self.held_answers.front() {
            if after > answered {
                break;
            }
            self.held_answers.pop_front();
            if let Some(end) = self.refuse_publish(pkid, qos, code).await {
                return Some(end);
            }
        }
        None
    }

    /// Answers a publish the gateway or the broker refused: MQTT 5 says why in the `PUBACK`;
    /// MQTT 3.1.1 has no way to, and acknowledges it (3.1.1 §3.3.5).
    async fn refuse_publish(&mut self, pkid: u16, qos: u8, code: PubCode) -> Option<End> {
        let sent = match qos {
            0 => true,
            1 => {
                self.send(|encoder, out| encoder.puback(pkid, code, out))
                    .await
            }
            _ => {
                self.set_qos2(pkid, Some(Qos2::Received));
                self.send(|encoder, out| encoder.pubrec(pkid, out)).await
            }
        };
        (!sent).then_some(End::Abnormal(None))
    }

    async fn answer(&mut self, frame: Frame) -> Option<End> {
        match frame {
            Frame::PublishAck(ack) => {
                let (pkid, qos, number) = self.publishes.remove(&ack.message_id)?;
                let sent = if qos == 1 {
                    self.send(|encoder, out| encoder.puback(pkid, PubCode::Success, out))
                        .await
                } else {
                    self.set_qos2(pkid, Some(Qos2::Received));
                    self.send(|encoder, out| encoder.pubrec(pkid, out)).await
                };
                if !sent {
                    return Some(End::Abnormal(None));
                }
                self.release_held_answers(number).await
            }
            Frame::PublishRejected(rejected) => {
                tracing::debug!(
                    client_id = %self.connect.client_id,
                    topic = %rejected.topic,
                    code = %rejected.code,
                    reason = %rejected.reason,
                    "publish refused by the broker"
                );
                let (pkid, qos, number) = self.publishes.remove(&rejected.message_id?)?;
                if let Some(end) = self
                    .refuse_publish(pkid, qos, pub_code(rejected.code))
                    .await
                {
                    return Some(end);
                }
                self.release_held_answers(number).await
            }
            _ => None,
        }
    }

    async fn subscribe(&mut self, pkid: u16, filters: Vec<SubscribeFilter>) -> Option<End> {
        if filters.len() > self.most_filters_per_request() {
            return Some(End::Abnormal(Some(CloseCode::QuotaExceeded)));
        }
        if let Some(end) = self.settle_subscription_requests().await {
            return Some(end);
        }
        let mut batch = Batch {
            sub: vec![None; filters.len()],
            unsub: Vec::new(),
            same_as: Vec::new(),
        };
        let mut last_of: HashMap<&str, usize> = HashMap::new();
        for (index, wanted) in filters.iter().enumerate() {
            last_of.insert(wanted.filter.as_str(), index);
        }
        batch.same_as = filters
            .iter()
            .enumerate()
            .filter_map(|(index, wanted)| {
                let last = last_of.get(wanted.filter.as_str()).copied()?;
                (last != index).then_some((index, last))
            })
            .collect();
        let mut frames = Vec::new();
        for (index, wanted) in filters.into_iter().enumerate() {
            if batch.same_as.iter().any(|&(earlier, _)| earlier == index) {
                continue;
            }
            // `$share/GROUP/FILTER`: a queue group on FILTER (3.1.1 clients may use it too).
            let cassini = match topics::shared_filter_to_cassini(&wanted.filter) {
                Some(shared) => shared.map(|shared| (shared.filter, Some(shared.group))),
                None => topics::filter_to_cassini(&wanted.filter).map(|filter| (filter, None)),
            };
            let (cassini, queue_group) = match cassini.map_err(|_| SubCode::FilterInvalid) {
                Ok(mapped) => mapped,
                Err(code) => {
                    batch.sub[index] = Some(code);
                    continue;
                }
            };
            if wanted.no_local && queue_group.is_some() {
                // MQTT 5 §3.8.3.1.
                return Some(End::Abnormal(Some(CloseCode::ProtocolError)));
            }
            let qos = wanted.qos.min(1);
            let sub_options = SubOptions {
                subscription_id: wanted.subscription_id,
                no_local: wanted.no_local,
                retain_as_published: wanted.retain_as_published,
            };
            // MQTT: a SUBSCRIBE of a filter the session holds replaces that subscription, and
            // loses none of its messages: at the same QoS the subscription is kept as it is
            // (with the new options); at another QoS it is replaced (what its queue held is
            // lost; docs/MQTT.md).
            let held = self.by_filter.get(&wanted.filter).copied();
            if let Some(sub) = held.and_then(|held| self.subs.get_mut(&held)) {
                if sub.qos == qos {
                    sub.options = sub_options;
                    self.context.sub_options.set(
                        &self.peer.identity,
                        &self.connect.client_id,
                        &wanted.filter,
                        Some(sub_options),
                    );
                    batch.sub[index] = Some(SubCode::Granted(qos));
                    continue;
                }
            }
            let drop_retained = match wanted.retain_handling {
                0 => false,
                1 => held.is_some(),
                _ => true,
            };
            if let Some(old) = self.by_filter.remove(&wanted.filter) {
                let request = self.request(Pending::Drop);
                frames.push(Frame::Unsubscribe(cassini_protocol::Unsubscribe {
                    request_id: request,
                    subscription: old,
                }));
            }
            let options = SubscribeOptions {
                acks: (qos == 1).then(|| AckOptions {
                    max_in_flight: self.connect.receive_maximum.map(u32::from),
                    // MQTT sends a delivery again only on a new connection, never on a live one.
                    ack_timeout_ms: Some(u32::MAX),
                }),
                queue_group,
                ..SubscribeOptions::default()
            };
            let request = self.request(Pending::Subscribe {
                pkid,
                index,
                filter: wanted.filter,
                qos,
                options: sub_options,
                drop_retained,
            });
            frames.push(Frame::Subscribe(cassini_protocol::Subscribe {
                request_id: request,
                filter: cassini,
                options,
            }));
        }
        self.batches.insert(pkid, batch);
        for frame in frames {
            if !self.frame(&frame, false).await {
                return Some(End::Broker);
            }
        }
        self.complete(pkid).await
    }

    async fn unsubscribe(&mut self, pkid: u16, filters: Vec<String>) -> Option<End> {
        if filters.len() > self.most_filters_per_request() {
            return Some(End::Abnormal(Some(CloseCode::QuotaExceeded)));
        }
        if let Some(end) = self.settle_subscription_requests().await {
            return Some(end);
        }
        let mut batch = Batch {
            sub: Vec::new(),
            unsub: vec![None; filters.len()],
            same_as: Vec::new(),
        };
        let mut frames = Vec::new();
        for (index, filter) in filters.into_iter().enumerate() {
            self.context.sub_options.set(
                &self.peer.identity,
                &self.connect.client_id,
                &filter,
                None,
            );
            match self.by_filter.remove(&filter) {
                Some(subscription) => {
                    let request = self.request(Pending::Unsubscribe { pkid, index });
                    frames.push(Frame::Unsubscribe(cassini_protocol::Unsubscribe {
                        request_id: request,
                        subscription,
                    }));
                }
                None => {
                    let valid = match topics::shared_filter_to_cassini(&filter) {
                        Some(shared) => shared.is_ok(),
                        None => topics::filter_to_cassini(&filter).is_ok(),
                    };
                    batch.unsub[index] = Some(if valid {
                        UnsubCode::NoSubscriptionExisted
                    } else {
                        UnsubCode::FilterInvalid
                    });
                }
            }
        }
        self.batches.insert(pkid, batch);
        for frame in frames {
            if !self.frame(&frame, false).await {
                return Some(End::Broker);
            }
        }
        self.complete(pkid).await
    }

    /// Handles the broker's answers until every earlier `SUBSCRIBE` and `UNSUBSCRIBE` is
    /// answered, so that each takes effect, and is answered, in the order the client sent them
    /// (an `UNSUBSCRIBE` ends the subscription a `SUBSCRIBE` just before it made; a second
    /// `SUBSCRIBE` of a filter replaces the first one's subscription). The broker answers every
    /// request, or ends the control stream.
    async fn settle_subscription_requests(&mut self) -> Option<End> {
        while !self.batches.is_empty() {
            let answer = match self.deferred.pop_front() {
                Some(answer) => answer,
                None => match next_answer(&mut self.answers).await {
                    Some(answer) => answer,
                    None => return Some(End::Broker),
                },
            };
            let end = match answer {
                Event::Control(frame) => self.control_frame(frame).await,
                Event::Answer(frame) => self.answer(frame).await,
                Event::ControlEnded => Some(End::Broker),
                // Only the broker's answers come this way.
                _ => None,
            };
            if end.is_some() {
                return end;
            }
        }
        None
    }

    /// Sends the `SUBACK` or `UNSUBACK` of `pkid` once every filter of it is answered.
    async fn complete(&mut self, pkid: u16) -> Option<End> {
        let batch = self.batches.get_mut(&pkid)?;
        for &(earlier, later) in &batch.same_as {
            let code = batch.sub.get(later).copied().flatten();
            if let Some(slot) = batch.sub.get_mut(earlier) {
                *slot = code;
            }
        }
        let sent = if !batch.sub.is_empty() {
            let codes = batch.sub.iter().copied().collect::<Option<Vec<_>>>()?;
            self.batches.remove(&pkid);
            self.send(|encoder, out| encoder.suback(pkid, &codes, out))
                .await
        } else {
            let codes = batch.unsub.iter().copied().collect::<Option<Vec<_>>>()?;
            self.batches.remove(&pkid);
            self.send(|encoder, out| encoder.unsuback(pkid, &codes, out))
                .await
        };
        (!sent).then_some(End::Abnormal(None))
    }

    /// Filter `index` of `SUBSCRIBE` or `UNSUBSCRIBE` `pkid` is answered: `SUBACK` or
    /// `UNSUBACK` if it was the last.
    async fn answered(&mut self, pkid: u16, index: usize, answer: Answer) -> Option<End> {
        if let Some(batch) = self.batches.get_mut(&pkid) {
            match answer {
                Answer::Sub(code) => {
                    if let Some(slot) = batch.sub.get_mut(index) {
                        *slot = Some(code);
                    }
                }
                Answer::Unsub(code) => {
                    if let Some(slot) = batch.unsub.get_mut(index) {
                        *slot = Some(code);
                    }
                }
            }
        }
        self.complete(pkid).await
    }

    async fn control_frame(&mut self, frame: Frame) -> Option<End> {
        let end = self.apply_control_frame(frame).await;
        if !self.stash.is_empty() && !self.subscribe_pending() {
            // Every subscribe is answered: what is still stashed belongs to no subscription.
            self.stash.clear();
        }
        end
    }

    /// Whether a `Subscribe` of this connection waits for its answer.
    fn subscribe_pending(&self) -> bool {
        self.pending
            .values()
            .any(|pending| matches!(pending, Pending::Subscribe { .. }))
    }

    async fn apply_control_frame(&mut self, frame: Frame) -> Option<End> {
        match frame {
            Frame::Subscribed(subscribed) => match self.pending.remove(&subscribed.request_id) {
                Some(Pending::Subscribe {
                    pkid,
                    index,
                    filter,
                    qos,
                    options,
                    drop_retained,
                }) => {
                    self.context.sub_options.set(
                        &self.peer.identity,
                        &self.connect.client_id,
                        &filter,
                        Some(options),
                    );
                    self.by_filter
                        .insert(filter.clone(), subscribed.subscription);
                    self.subs.insert(
                        subscribed.subscription,
                        Sub {
                            filter,
                            qos,
                            options,
                            drop_retained,
                        },
                    );
                    if let Some(end) = self
                        .answered(pkid, index, Answer::Sub(SubCode::Granted(qos)))
                        .await
                    {
                        return Some(end);
                    }
                    for delivery in self.stash.take(subscribed.subscription) {
                        if let Some(end) = self.deliver(subscribed.subscription, delivery).await {
                            return Some(end);
                        }
                    }
                    None
                }
                _ => None,
            },
            Frame::Unsubscribed(unsubscribed) => {
                self.forget(unsubscribed.subscription);
                match self.pending.remove(&unsubscribed.request_id) {
                    Some(Pending::Unsubscribe { pkid, index }) => {
                        self.answered(pkid, index, Answer::Unsub(UnsubCode::Success))
                            .await
                    }
                    _ => None,
                }
            }
            Frame::Error(error) => {
                let pending = error.request_id.and_then(|id| self.pending.remove(&id));
                tracing::debug!(client_id = %self.connect.client_id, code = %error.code, reason = %error.reason, "request refused by the broker");
                match pending {
                    Some(Pending::Subscribe { pkid, index, .. }) => {
                        self.answered(pkid, index, Answer::Sub(sub_code(error.code)))
                            .await
                    }
                    Some(Pending::Unsubscribe { pkid, index }) => {
                        self.answered(pkid, index, Answer::Unsub(unsub_code(error.code)))
                            .await
                    }
                    _ => None,
                }
            }
            Frame::SubscriptionEnded(ended) => {
                // MQTT cannot tell a client that the server ended a subscription.
                tracing::info!(client_id = %self.connect.client_id, subscription = ended.subscription, code = %ended.code, reason = %ended.reason, "subscription ended by the broker");
                if let Some(sub) = self.subs.get(&ended.subscription) {
                    self.context.sub_options.set(
                        &self.peer.identity,
                        &self.connect.client_id,
                        &sub.filter,
                        None,
                    );
                }
                self.forget(ended.subscription);
                None
            }
            _ => None,
        }
    }

    fn forget(&mut self, subscription: SubscriptionId) {
        if let Some(sub) = self.subs.remove(&subscription) {
            if self.by_filter.get(&sub.filter) == Some(&subscription) {
                self.by_filter.remove(&sub.filter);
            }
        }
        self.stash.take(subscription);
        self.waiting.remove(&subscription);
        self.turns.retain(|waiting| *waiting != subscription);
        // The broker numbers a session's subscriptions upwards: the lowest is the oldest.
        self.ended.insert(subscription);
        if self.ended.len() > ENDED_REMEMBERED {
            self.ended.pop_first();
        }
    }

    /// For a delivery the session's previous connection sent without getting its `PUBACK`: the
    /// packet id it had, unless this connection uses it already (MQTT 3.1.1 §4.4: sent again
    /// under its original packet id).
    fn redelivery_packet_id(
        &self,
        subscription: SubscriptionId,
        sequence: u64,
        redelivered: bool,
    ) -> Option<u16> {
        if !redelivered {
            return None;
        }
        self.context
            .sub_options
            .take_unacked(&self.connect.client_id, subscription, sequence)
            .filter(|pkid| !self.outbound.contains_key(pkid))
    }

    fn packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.outbound.contains_key(&id) {
                return id;
            }
        }
    }

    /// A delivery from the broker: sent now, or, for a QoS 1 delivery while the client's
    /// Receive Maximum is reached (or its subscription has deliveries waiting already), kept in
    /// `waiting` for its turn.
    async fn deliver(&mut self, subscription: SubscriptionId, delivery: Delivery) -> Option<End> {
        let Some(sub) = self.subs.get(&subscription) else {
            if self.subscribe_pending() && !self.ended.contains(&subscription) {
                self.stash.keep(subscription, delivery);
            }
            return None;
        };
        // Retain Handling (2, or 1 for a subscription that replaced one) and No Local: not for
        // this client, as if delivered.
        let unwanted = (sub.drop_retained && delivery.retained)
            || (sub.options.no_local
                && delivery.headers.iter().any(|(name, value)| {
                    name == ORIGIN_HEADER && *value == self.connect.client_id
                }));
        if unwanted {
            let qos = sub.qos;
            return self.skip(subscription, qos, delivery.sequence).await;
        }
        if sub.qos == 1
            && (self.outbound.len() >= self.receive_maximum
                || self.waiting.contains_key(&subscription))
        {
            let queue = self.waiting.entry(subscription).or_default();
            if queue.is_empty() {
                self.turns.push_back(subscription);
            }
            queue.push_back(delivery);
            return None;
        }
        self.send_delivery(subscription, delivery).await
    }

    /// Sends waiting QoS 1 deliveries while the client's Receive Maximum allows, one per
    /// subscription in turn.
    async fn release(&mut self) -> Option<End> {
        while self.outbound.len() < self.receive_maximum {
            let subscription = self.turns.pop_front()?;
            let Some(queue) = self.waiting.get_mut(&subscription) else {
                continue;
            };
            let Some(delivery) = queue.pop_front() else {
                self.waiting.remove(&subscription);
                continue;
            };
            if queue.is_empty() {
                self.waiting.remove(&subscription);
            } else {
                self.turns.push_back(subscription);
            }
            if let Some(end) = self.send_delivery(subscription, delivery).await {
                return Some(end);
            }
        }
        None
    }

    /// Writes one delivery of `subscription` to the client as a `PUBLISH`, with the rest of
    /// its Message Expiry Interval; one that expired, or is larger than the client accepts, is
    /// dropped as if delivered (MQTT 5 §3.3.2.3.3, §3.1.2.11.4).
    async fn send_delivery(
        &mut self,
        subscription: SubscriptionId,
        delivery: Delivery,
    ) -> Option<End> {
        let sub = self.subs.get(&subscription)?;
        let (qos, options) = (sub.qos, sub.options);
        let sequence = delivery.sequence;
        let redelivered = delivery.redelivered;
        let v5 = self.connect.version == Version::V5;
        let incoming = headers::from_cassini(delivery.headers, delivery.reply_to.as_deref());
        let message_expiry = match incoming.expires_at {
            Some(at) => {
                let now = unix_millis();
                if at <= now {
                    tracing::debug!(client_id = %self.connect.client_id, topic = %delivery.topic, "expired delivery dropped");
                    return self.skip(subscription, qos, sequence).await;
                }
                Some(u32::try_from((at - now).div_ceil(1000)).unwrap_or(u32::MAX))
            }
            None => None,
        };
        let pkid = match qos {
            1 => self
                .redelivery_packet_id(subscription, sequence, redelivered)
                .unwrap_or_else(|| self.packet_id()),
            _ => 0,
        };
        let publish = Publish {
            topic: topics::cassini_to_mqtt(&delivery.topic),
            pkid,
            qos,
            retain: delivery.retained
                || (options.retain_as_published && incoming.published_retained),
            dup: delivery.redelivered && qos == 1,
            payload: delivery.payload,
            properties: if v5 {
                MessageProperties {
                    message_expiry,
                    ..incoming.properties
                }
            } else {
                MessageProperties::default()
            },
            topic_alias: None,
            subscription_ids: options.subscription_id.filter(|_| v5).into_iter().collect(),
        };
        if let Some(why) = not_for_mqtt(&publish) {
            tracing::debug!(client_id = %self.connect.client_id, topic = %delivery.topic, why, "delivery dropped: MQTT cannot carry it");
            return self.skip(subscription, qos, sequence).await;
        }
        self.out.clear();
        if let Err(err) = self.encoder.publish(publish, &mut self.out) {
            tracing::debug!(client_id = %self.connect.client_id, %err, "delivery dropped");
            return self.skip(subscription, qos, sequence).await;
        }
        if qos == 1 {
            self.outbound.insert(pkid, (subscription, sequence));
        }
        (write(&mut self.writer, &self.out).await.is_err()).then_some(End::Abnormal(None))
    }

    /// Drops a delivery as if the client had it: a QoS 1 one is acknowledged to the broker.
    async fn skip(&mut self, subscription: SubscriptionId, qos: u8, sequence: u64) -> Option<End> {
        if qos == 0 {
            return None;
        }
        let ack = Frame::Ack(cassini_protocol::Ack {
            subscription,
            ranges: vec![SequenceRange {
                from: sequence,
                to: sequence,
            }],
        });
        (!self.frame(&ack, false).await).then_some(End::Broker)
    }

    /// The delay of `will` once this connection closes without a goodbye (MQTT 5 §3.1.2.5): the
    /// will delay or the end of the session, whichever comes first, so none when the session
    /// ends with the connection.
    fn will_delay(&self, will: &packets::Will) -> u32 {
        if self.ends_with_connection() {
            0
        } else {
            will.delay_secs
                .min(self.connect.session_expiry.unwrap_or(u32::MAX))
        }
    }

    /// Whose will this connection's is.
    fn owner(&self) -> Owner {
        Owner {
            peer: self.peer.clone(),
            protocol: self.connect.version.name(),
            client_id: self.connect.client_id.clone(),
        }
    }

    /// Hands a due will to `Wills` with its delay ([`Connection::will_delay`]), at once if a
    /// newer connection's clean start ended the session. On another takeover the new
    /// connection is already there: a will with a delay whose session carries on is not
    /// published.
    fn schedule_will(&self, will: packets::Will, number: u64, taken_over: bool) {
        let ended_by_clean_start = self
            .clean_start_flag
            .as_ref()
            .is_some_and(|flag| flag.load(Ordering::Acquire));
        let delay = if ended_by_clean_start {
            0
        } else {
            self.will_delay(&will)
        };
        if taken_over && delay > 0 {
            tracing::debug!(client_id = %self.connect.client_id, "session taken over within the will delay: will not published");
            self.context.wills.forget(&self.connect.client_id, number);
            return;
        }
        self.context.wills.schedule(
            self.context.broker.clone(),
            self.owner(),
            will,
            Duration::from_secs(u64::from(delay)),
            number,
        );
    }

    /// Ends the connection: the will when MQTT says so, the goodbye that ends a session whose
    /// expiry is 0 (else the session is only detached and outlives the connection for the
    /// broker's `sessions.expiry`), and MQTT 5's `DISCONNECT` with the reason.
    async fn finish(&mut self, end: End, client: &ClientEnd) {
        let taken_over = end == End::Broker
            && client
                .close_reason()
                .is_some_and(|(code, _)| code == ErrorCode::SESSION_TAKEN_OVER);
        let will_due = match end {
            End::Disconnect { publish_will } => publish_will,
            End::Abnormal(_) => true,
            End::Broker => taken_over,
        };
        // The broker is stopping: in disk mode the will's record stays, and after the restart
        // the will is due as if the connection had closed then (as after a crash).
        let broker_stopping = end == End::Broker
            && client
                .close_reason()
                .is_some_and(|(code, _)| code == ErrorCode::SERVER_SHUTTING_DOWN);
        if let (Some(will), Some(number)) = (self.connect.will.take(), self.will_number.take()) {
            if will_due {
                self.schedule_will(will, number, taken_over);
            } else if !broker_stopping {
                self.context.wills.forget(&self.connect.client_id, number);
            }
        }
        if let Some(flag) = &self.clean_start_flag {
            self.context.wills.release(&self.connect.client_id, flag);
        }
        if !self.ends_with_connection() {
            // QoS 1 deliveries sent and not acknowledged go again on the next connection,
            // under the same packet ids.
            self.context.sub_options.keep_unacked(
                &self.peer.identity,
                &self.connect.client_id,
                self.outbound
                    .iter()
                    .map(|(pkid, (subscription, sequence))| (*subscription, *sequence, *pkid)),
            );
        }
        if !taken_over {
            let expiry = (!self.ends_with_connection()).then(|| self.session_outlives());
            self.context
                .sub_options
                .detach(&self.connect.client_id, expiry);
        }
        let code = match end {
            End::Abnormal(code) => code,
            End::Broker => Some(
                client
                    .close_reason()
                    .map_or(CloseCode::Unspecified, |(code, _)| close_code(code)),
            ),
            End::Disconnect { .. } => None,
        };
        if let Some(code) = code {
            let _ = self
                .send(|encoder, out| encoder.disconnect(code, out))
                .await;
        }
        if end != End::Broker && self.ends_with_connection() {
            // Finishing the control stream is Cassini's goodbye: the broker reads the publish
            // stream to its end, closes the connection and ends the session.
            if let Some(mut publish) = self.publish.take() {
                let _ = publish.finish();
            }
            if let Some(mut control) = self.control.take() {
                let _ = control.finish();
            }
            let _ = tokio::time::timeout(GOODBYE_WAIT, client.closed()).await;
        } else if end != End::Broker {
            // The session stays: make sure the broker applied every `Ack` sent so far (it
            // answers control requests in order), so what the client acknowledged is not sent
            // to it again on its next connection.
            self.sync_control().await;
        }
        client.close("MQTT connection closed");
        let _ = self.writer.shutdown().await;
    }

    /// Sends a `Ping` and waits (a few seconds at most) for its `Pong`.
    async fn sync_control(&mut self) {
        let nonce = rand::random::<u64>();
        if !self
            .frame(&Frame::Ping(cassini_protocol::Ping { nonce }), false)
            .await
        {
            return;
        }
        let answered = |event: &Event| match event {
            Event::Control(Frame::Pong(pong)) => pong.nonce == nonce,
            Event::ControlEnded => true,
            _ => false,
        };
        if self.deferred.drain(..).any(|event| answered(&event)) {
            return;
        }
        let answers = &mut self.answers;
        let answered = async {
            while let Some(event) = next_answer(answers).await {
                if answered(&event) {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(GOODBYE_WAIT, answered).await;
    }
}
