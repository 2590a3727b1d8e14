"""A minimal Cassini client written from docs/PROTOCOL.md alone (aioquic + msgpack).

It knows the framing (4-byte big-endian body length, MessagePack body), the frame field
orders of the document's tables, and the four kinds of stream. It interprets nothing: tests
read frames and say what the document promises about them.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    DatagramFrameReceived,
    QuicEvent,
    StreamDataReceived,
    StreamReset,
)

ALPN = "cassini/1"
PROTOCOL_VERSION = 1

# The error-code table of PROTOCOL.md ("Error codes").
NORMAL = 0
PROTOCOL_VIOLATION = 1
MALFORMED_FRAME = 2
FRAME_TOO_LARGE = 3
UNSUPPORTED_VERSION = 4
HELLO_TIMEOUT = 5
INVALID_TOPIC = 10
INVALID_FILTER = 11
PAYLOAD_TOO_LARGE = 12
TOO_MANY_SUBSCRIPTIONS = 13
UNKNOWN_SUBSCRIPTION = 14
INVALID_OPTION = 15
MISSING_MESSAGE_ID = 17
DATAGRAMS_UNSUPPORTED = 19
SESSION_NOT_FOUND = 20
SESSION_IDENTITY_MISMATCH = 21
SESSION_TAKEN_OVER = 22
SLOW_CONSUMER = 30
NOT_AUTHORIZED = 50

# TLS failures are QUIC transport errors 0x100 + alert (PROTOCOL.md, after the table).
TLS_ALERT_BASE = 0x100

# Field names of every frame, in declaration (= wire) order, from PROTOCOL.md's tables.
FIELDS: dict[str, list[str]] = {
    # control, client -> broker
    "Hello": ["protocol_version", "resume", "client_name", "positions"],
    "Subscribe": ["request_id", "filter", "options"],
    "Unsubscribe": ["request_id", "subscription"],
    "Ping": ["nonce"],
    "Ack": ["subscription", "ranges"],
    # control, broker -> client
    "Welcome": ["protocol_version", "session_id", "resumed", "identity", "limits"],
    "Subscribed": ["request_id", "subscription"],
    "Unsubscribed": ["request_id", "subscription"],
    "Pong": ["nonce"],
    "Error": ["request_id", "code", "reason"],
    "GoingAway": ["reason", "reconnect_after_ms"],
    "SubscriptionEnded": ["subscription", "code", "reason"],
    # publish streams
    "Publish": [
        "topic",
        "headers",
        "payload",
        "message_id",
        "reply_to",
        "retain",
        "to_session",
        "ack",
    ],
    "PublishAck": ["message_id", "duplicate"],
    "PublishRejected": ["topic", "message_id", "code", "reason"],
    "NoResponders": ["reply_to"],
    # subscription streams
    "SubscriptionStart": ["subscription"],
    "Message": [
        "sequence",
        "topic",
        "headers",
        "payload",
        "message_id",
        "reply_to",
        "retained",
        "redelivered",
    ],
    "Gap": ["subscription", "from", "to", "reason"],
    "DatagramsSent": ["subscription", "through"],
    # datagrams
    "Datagram": ["subscription", "message"],
}

# Fields added to a struct after it was first defined: a sender may leave them off the end, and
# then they take these defaults (PROTOCOL.md, "Fields left off, fields added").
ADDED_FIELDS: dict[str, list[tuple[str, Any]]] = {
    "Welcome": [("subscriptions", []), ("cluster_addresses", [])],
}

LIMITS_FIELDS = [
    "max_payload_bytes",
    "max_frame_bytes",
    "max_subscriptions",
    "max_topic_bytes",
    "max_topic_depth",
]


class WireError(Exception):
    """The broker sent something the document does not describe."""


class Closed(Exception):
    """The connection ended while a test waited on it."""

    def __init__(self, termination: "Termination"):
        super().__init__(f"connection closed: {termination}")
        self.termination = termination


@dataclass
class Frame:
    """A decoded frame: its variant name and its fields by the document's names."""

    name: str
    fields: dict[str, Any]
    raw: Any = None

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def __repr__(self) -> str:
        return f"{self.name}{self.fields}"


@dataclass
class Termination:
    error_code: int
    # None for an application close (CONNECTION_CLOSE 0x1d), the frame type for a transport one.
    frame_type: int | None
    reason: str

    @property
    def is_application(self) -> bool:
        return self.frame_type is None


# ---- encoding -------------------------------------------------------------------------------


def frame(name: str, *values: Any) -> dict[str, list[Any]]:
    """An enum variant: a one-entry map from the variant name to the array of its fields."""
    return {name: list(values)}


def encode(obj: Any) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def hello(resume: list[int] | None = None, positions: list[list[int]] | None = None,
          version: int = PROTOCOL_VERSION, client_name: str | None = "conformance") -> dict:
    return frame("Hello", version, resume, client_name, positions or [])


def subscribe_options(overflow: str = "DropOldest", max_queued_messages: int | None = None,
                      max_queued_bytes: int | None = None, queue_group: str | None = None,
                      acks: list | None = None, delivery: Any = "Reliable") -> list:
    return [overflow, max_queued_messages, max_queued_bytes, queue_group, acks, delivery]


def publish(topic: str, payload: bytes, headers: list[list[str]] | None = None,
            message_id: int | None = None, reply_to: str | None = None, retain: bool = False,
            to_session: list[int] | None = None, ack: bool = False) -> dict:
    return frame("Publish", topic, headers or [], payload, message_id, reply_to, retain,
                 to_session, ack)


# ---- decoding -------------------------------------------------------------------------------


def decode_body(body: bytes) -> Frame:
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except msgpack.ExtraData as e:
        raise WireError(f"trailing bytes after a frame: {e}") from e
    return to_frame(obj)


def to_frame(obj: Any) -> Frame:
    if not (isinstance(obj, dict) and len(obj) == 1):
        raise WireError(f"a frame is a one-entry map, got {obj!r}")
    ((name, values),) = obj.items()
    if name not in FIELDS:
        raise WireError(f"unknown frame {name!r}: {values!r}")
    if not isinstance(values, list):
        raise WireError(f"{name}: a struct is an array of its fields, got {values!r}")
    names = FIELDS[name]
    if len(values) < len(names):
        raise WireError(f"{name}: expected {len(names)} fields, got {values!r}")
    fields = dict(zip(names, values))
    for index, (added, default) in enumerate(ADDED_FIELDS.get(name, []), start=len(names)):
        fields[added] = values[index] if index < len(values) else default
    if name == "Welcome":
        fields["limits"] = dict(zip(LIMITS_FIELDS, values[4]))
    if name == "Datagram":
        fields["message"] = to_frame({"Message": values[1]})
    return Frame(name, fields, obj)


class FrameReader:
    """Splits a byte stream into length-prefixed frames."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self.buf += data
        out = []
        while len(self.buf) >= 4:
            (n,) = struct.unpack(">I", self.buf[:4])
            if n == 0:
                raise WireError("a frame of length zero")
            if len(self.buf) < 4 + n:
                break
            body = bytes(self.buf[4 : 4 + n])
            del self.buf[: 4 + n]
            out.append(decode_body(body))
        return out


# ---- streams and connection -----------------------------------------------------------------


@dataclass
class StreamEnd:
    """What ended a stream: a FIN (reset_code None) or a reset with a code."""

    reset_code: int | None


@dataclass
class Stream:
    stream_id: int
    items: asyncio.Queue = field(default_factory=asyncio.Queue)
    reader: FrameReader = field(default_factory=FrameReader)
    first: Frame | None = None
    # Everything the stream carried so far, frames and its end, whether read or not.
    history: list = field(default_factory=list)


class Connection(QuicConnectionProtocol):
    def __init__(self, quic: QuicConnection, **kwargs: Any) -> None:
        super().__init__(quic, **kwargs)
        self.streams: dict[int, Stream] = {}
        self.datagrams: asyncio.Queue = asyncio.Queue()
        self.termination: Termination | None = None
        self.terminated = asyncio.Event()
        self.changed = asyncio.Event()
        self.by_subscription: dict[int, Stream] = {}
        self.control_id: int | None = None
        self.welcome: Frame | None = None
        # `SubscriptionEnded` frames that came between answers on the control stream.
        self.subscription_ends: list[Frame] = []

    # -- events

    def stream(self, stream_id: int) -> Stream:
        s = self.streams.get(stream_id)
        if s is None:
            s = Stream(stream_id)
            self.streams[stream_id] = s
        return s

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            s = self.stream(event.stream_id)
            try:
                frames = s.reader.feed(event.data)
            except WireError as e:
                s.items.put_nowait(e)
                frames = []
            for f in frames:
                if s.first is None:
                    s.first = f
                    if f.name == "SubscriptionStart":
                        self.by_subscription[f["subscription"]] = s
                s.items.put_nowait(f)
                s.history.append(f)
            if event.end_stream:
                s.items.put_nowait(StreamEnd(None))
                s.history.append(StreamEnd(None))
            self._notify()
        elif isinstance(event, StreamReset):
            s = self.stream(event.stream_id)
            s.items.put_nowait(StreamEnd(event.error_code))
            s.history.append(StreamEnd(event.error_code))
            self._notify()
        elif isinstance(event, DatagramFrameReceived):
            self.datagrams.put_nowait(event.data)
        elif isinstance(event, ConnectionTerminated):
            self.termination = Termination(event.error_code, event.frame_type,
                                           event.reason_phrase)
            self.terminated.set()
            self._notify()
            for s in self.streams.values():
                s.items.put_nowait(Closed(self.termination))

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    # -- sending

    def new_stream(self, bidirectional: bool = True) -> int:
        sid = self._quic.get_next_available_stream_id(is_unidirectional=not bidirectional)
        self.stream(sid)
        return sid

    def send(self, stream_id: int, obj: Any, end: bool = False) -> None:
        self.send_raw(stream_id, encode(obj), end)

    def send_raw(self, stream_id: int, data: bytes, end: bool = False) -> None:
        self._quic.send_stream_data(stream_id, data, end_stream=end)
        self.transmit()

    def finish(self, stream_id: int) -> None:
        self.send_raw(stream_id, b"", end=True)

    def reset(self, stream_id: int, code: int) -> None:
        self._quic.reset_stream(stream_id, code)
        self.transmit()

    def stop(self, stream_id: int, code: int) -> None:
        """Asks the peer to stop sending on a stream (QUIC STOP_SENDING)."""
        self._quic.stop_stream(stream_id, code)
        self.transmit()

    def send_datagram(self, data: bytes) -> None:
        self._quic.send_datagram_frame(data)
        self.transmit()

    @property
    def max_datagram_size(self) -> int:
        return self._quic._remote_max_datagram_frame_size or 0

    # -- receiving

    async def next(self, stream_id: int, timeout: float = 5.0) -> Frame | StreamEnd:
        """The next frame on a stream, or how it ended; raises Closed if the connection ended."""
        item = await asyncio.wait_for(self.stream(stream_id).items.get(), timeout)
        if isinstance(item, Exception):
            raise item
        return item

    async def next_frame(self, stream_id: int, timeout: float = 5.0) -> Frame:
        item = await self.next(stream_id, timeout)
        if isinstance(item, StreamEnd):
            raise WireError(f"stream {stream_id} ended ({item}) where a frame was expected")
        return item

    async def subscription_stream(self, subscription: int, timeout: float = 5.0) -> Stream:
        """The unidirectional stream whose SubscriptionStart names `subscription`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while subscription not in self.by_subscription:
            if self.termination is not None:
                raise Closed(self.termination)
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"no stream for subscription {subscription}")
            await asyncio.wait_for(self.changed.wait(), left)
        return self.by_subscription[subscription]

    async def until(self, predicate, timeout: float = 5.0, what: str = "condition") -> Any:
        """Waits until `predicate()` returns something truthy, woken by every stream event."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            changed = self.changed
            result = predicate()
            if result:
                return result
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"{what} not met within {timeout} s")
            try:
                await asyncio.wait_for(changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def closed(self, timeout: float = 5.0) -> Termination:
        await asyncio.wait_for(self.terminated.wait(), timeout)
        assert self.termination is not None
        return self.termination

    async def next_datagram(self, timeout: float = 5.0) -> Frame:
        data = await asyncio.wait_for(self.datagrams.get(), timeout)
        (n,) = struct.unpack(">I", data[:4])
        if n != len(data) - 4:
            raise WireError(f"datagram length prefix {n} but {len(data) - 4} body bytes")
        return decode_body(data[4:])


@dataclass
class Identity:
    ca: str
    cert: str
    key: str


async def open_connection(port: int, identity: Identity, *, datagrams: bool = True,
                          alpn: str = ALPN, idle_timeout: float = 30.0,
                          check: bool = True) -> Connection:
    """A QUIC connection with mutual TLS; raises ConnectionError if the handshake fails
    (with `check=False`, returns the connection, whose `termination` then says why)."""
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=[alpn],
        server_name="localhost",
        idle_timeout=idle_timeout,
        max_datagram_frame_size=65536 if datagrams else None,
        verify_mode=ssl.CERT_REQUIRED,
    )
    config.load_verify_locations(cafile=identity.ca)
    if identity.cert:
        config.load_cert_chain(identity.cert, identity.key)
    loop = asyncio.get_running_loop()
    quic = QuicConnection(configuration=config)
    _transport, protocol = await loop.create_datagram_endpoint(
        lambda: Connection(quic), local_addr=("127.0.0.1", 0)
    )
    conn: Connection = protocol  # type: ignore[assignment]
    conn.connect(("127.0.0.1", port))
    try:
        await asyncio.wait_for(conn.wait_connected(), 10.0)
    except ConnectionError:
        if check:
            conn.close_transport()
            raise
    except BaseException:
        conn.close_transport()
        raise
    return conn


def close_transport(self: Connection) -> None:
    if self._transport is not None:
        self._transport.close()


Connection.close_transport = close_transport  # type: ignore[attr-defined]


async def closed_by_broker(conn: Connection) -> Termination:
    """Waits until the broker closes `conn`, releases it, and returns how it was closed."""
    closed = await conn.closed()
    conn.close_transport()
    return closed


async def assert_closed_with(conn: Connection, code: int) -> None:
    """Waits until the broker closes `conn`, releases it, and asserts that the broker closed it
    with the application error code `code`."""
    closed = await closed_by_broker(conn)
    assert closed.is_application and closed.error_code == code, closed


async def handshake(conn: Connection, **hello_args: Any) -> Frame:
    """Opens the control stream, sends Hello and returns the Welcome."""
    conn.control_id = conn.new_stream()
    conn.send(conn.control_id, hello(**hello_args))
    welcome = await conn.next_frame(conn.control_id)
    if welcome.name != "Welcome":
        raise WireError(f"expected Welcome, got {welcome}")
    conn.welcome = welcome
    return welcome


async def drop(conn: Connection) -> None:
    """Ends the connection without a goodbye (a QUIC close, the control stream left open)."""
    conn.close(error_code=0, reason_phrase="conformance: drop")
    try:
        await asyncio.wait_for(conn.wait_closed(), 5.0)
    finally:
        conn.close_transport()


# ---- a thin session layer used by the tests ---------------------------------------------------


@dataclass
class Subscription:
    conn: Connection
    id: int
    stream_id: int

    async def next(self, timeout: float = 5.0) -> Frame | StreamEnd:
        return await self.conn.next(self.stream_id, timeout)

    async def next_frame(self, timeout: float = 5.0) -> Frame:
        return await self.conn.next_frame(self.stream_id, timeout)


_request_ids = iter(range(1, 1 << 62))


def fresh_id() -> int:
    """A message id no other publish of this identity used: the broker remembers acknowledged
    (identity, message_id) pairs for 120 s and acknowledges a repeat as a duplicate."""
    return random.getrandbits(63)


async def connect(port: int, identity: Identity, **hello_args: Any) -> Connection:
    conn = await open_connection(port, identity)
    await handshake(conn, **hello_args)
    return conn


async def control_request(conn: Connection, obj: Any, timeout: float = 5.0) -> Frame:
    """Sends a control request and returns its answer. PROTOCOL.md: `SubscriptionEnded` may
    come between answers; those are kept in `conn.subscription_ends`."""
    assert conn.control_id is not None
    conn.send(conn.control_id, obj)
    while True:
        answer = await conn.next_frame(conn.control_id, timeout)
        if answer.name != "SubscriptionEnded":
            return answer
        conn.subscription_ends.append(answer)


async def subscribe(conn: Connection, filter: str, **options: Any) -> Subscription:
    """Subscribes, expects `Subscribed`, and takes the subscription's `SubscriptionStart`."""
    request_id = next(_request_ids)
    answer = await control_request(
        conn, frame("Subscribe", request_id, filter, subscribe_options(**options))
    )
    if answer.name != "Subscribed":
        raise WireError(f"subscribe {filter!r}: {answer}")
    assert answer["request_id"] == request_id
    sub_id = answer["subscription"]
    stream = await conn.subscription_stream(sub_id)
    start = await conn.next_frame(stream.stream_id)
    assert start.name == "SubscriptionStart" and start["subscription"] == sub_id, start
    return Subscription(conn, sub_id, stream.stream_id)


async def try_subscribe(conn: Connection, filter: str, **options: Any) -> Frame:
    """Sends a Subscribe and returns the broker's answer as is."""
    return await control_request(
        conn, frame("Subscribe", next(_request_ids), filter, subscribe_options(**options))
    )


async def publish_and_wait(conn: Connection, stream_id: int, obj: Any,
                           timeout: float = 5.0) -> Frame:
    """Sends one publish and returns the broker's answer on that stream."""
    conn.send(stream_id, obj)
    return await conn.next_frame(stream_id, timeout)


async def barrier(conn: Connection, stream_id: int, topic: str) -> None:
    """Waits until the broker routed everything sent earlier on `stream_id`: an acknowledged
    publish after them is answered only once it is routed, and the stream is in order."""
    mid = next(_request_ids)
    answer = await publish_and_wait(conn, stream_id, publish(topic, b"", message_id=mid,
                                                             ack=True))
    assert answer.name == "PublishAck" and answer["message_id"] == mid, answer
