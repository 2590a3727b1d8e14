"""The MQTT gateway (docs/MQTT.md) against the Python paho-mqtt client, MQTT 5 and 3.1.1, with
the certificates of `cassini certs init`, beside QUIC clients of this suite.

paho runs without its own reconnect loop here (`Paho.pump` drives it), so that a connection the
broker closes stays closed and the test sees why.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import queue
import ssl
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from cassini_wire import connect, drop, fresh_id, publish, publish_and_wait, subscribe
from conftest import Broker, CertDir, run_cli, spec

V5 = mqtt.MQTTv5
V311 = mqtt.MQTTv311
SESSION_TAKEN_OVER = 0x8E
NOT_AUTHORIZED = 0x87
ADMINISTRATIVE_ACTION = 0x98
CLIENT_IDENTIFIER_NOT_VALID = 0x85
BROKER_SESSION_EXPIRY = 300  # sessions.expiry's default, in seconds


def mqtt_port(broker: Broker, timeout: float = 20.0) -> int:
    """The gateway's port, from the broker's log line `MQTT gateway listening`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in broker.output().splitlines():
            try:
                fields = json.loads(line).get("fields", {})
            except ValueError:
                continue
            if fields.get("message") == "MQTT gateway listening":
                return int(fields["addr"].rsplit(":", 1)[1])
        time.sleep(0.02)
    raise RuntimeError(f"no MQTT address in the log: {broker.output()}")


@pytest.fixture(scope="module")
def gateway(start_broker) -> tuple[Broker, int]:
    broker = start_broker("--mqtt", "127.0.0.1:0")
    return broker, mqtt_port(broker)


class Paho:
    """One paho client, driven by a thread of ours: messages and disconnects land in queues.

    Every call that writes to the connection (publish, subscribe, ack, disconnect) runs on that
    thread (`call`): paho writes at once from the calling thread when it runs no thread of its
    own, and two threads writing one TLS connection corrupt it."""

    def __init__(self, certs: CertDir, name: str, port: int, protocol: int,
                 client_id: str = "", clean: bool = True, expiry: int | None = None,
                 will: tuple[str, bytes] | None = None,
                 will_properties: Properties | None = None, refused: bool = False,
                 receive_maximum: int | None = None, manual_ack: bool = False,
                 tls_max: ssl.TLSVersion | None = None):
        """Connects (with `will`, a QoS 1 will with `will_properties`); with `refused`, expects
        the CONNACK to refuse (its code is in `self.rc`);
        with `manual_ack`, QoS 1 deliveries wait for `ack` (paho acknowledges them itself
        otherwise); with `tls_max`, speaks at most that TLS version."""
        self.messages: queue.Queue = queue.Queue()
        self.disconnects: queue.Queue = queue.Queue()
        self.acks: queue.Queue = queue.Queue()
        kwargs = {"clean_session": clean} if protocol == V311 else {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol, **kwargs)
        ident = certs.identity(name)
        context = ssl.create_default_context(cafile=ident.ca)
        context.load_cert_chain(ident.cert, ident.key)
        if tls_max is not None:
            context.maximum_version = tls_max
        self.client.tls_set_context(context)
        self.connected: queue.Queue = queue.Queue()
        self.client.on_connect = lambda c, u, flags, rc, props: self.connected.put(
            (flags.session_present, rc, props))
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, props: self.acks.put(rcs)
        if will:
            self.client.will_set(will[0], will[1], qos=1, properties=will_properties)
        self.client.manual_ack_set(manual_ack)
        props = None
        if protocol == V5:
            props = Properties(PacketTypes.CONNECT)
            if expiry is not None:
                props.SessionExpiryInterval = expiry
            if receive_maximum is not None:
                props.ReceiveMaximum = receive_maximum
            self.client.connect("localhost", port, keepalive=30, clean_start=clean,
                                properties=props)
        else:
            self.client.connect("localhost", port, keepalive=30)
        self.stop = threading.Event()
        self.calls: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self.pump, daemon=True)
        self.thread.start()
        self.session_present, self.rc, self.connack = self.connected.get(timeout=10)
        if refused:
            assert self.rc.is_failure, f"CONNACK {self.rc}: accepted"
            self.stop.set()
            self.thread.join(timeout=5)
        else:
            assert not self.rc.is_failure, f"CONNACK {self.rc}"

    def pump(self) -> None:
        while not self.stop.is_set():
            self.run_calls()
            if self.client.loop(timeout=0.01) != mqtt.MQTT_ERR_SUCCESS:
                break
        self.run_calls()

    def run_calls(self) -> None:
        while True:
            try:
                fn, result = self.calls.get_nowait()
            except queue.Empty:
                return
            try:
                result.set_result(fn())
            except Exception as error:  # handed to the caller
                result.set_exception(error)

    def call(self, fn):
        """Runs `fn` on the client's thread (here, once that thread has ended); returns what it
        returns (at most 10 s)."""
        result: concurrent.futures.Future = concurrent.futures.Future()
        self.calls.put((fn, result))
        deadline = time.monotonic() + 10
        while True:
            try:
                return result.result(timeout=0.05)
            except concurrent.futures.TimeoutError:
                if not self.thread.is_alive():
                    self.run_calls()
                elif time.monotonic() > deadline:
                    raise

    def subscribe(self, topic: str, qos: int = 1) -> list:
        self.call(lambda: self.client.subscribe(topic, qos))
        return self.acks.get(timeout=10)

    def subscribe_with(self, topic: str, options: SubscribeOptions,
                       subscription_id: int | None = None) -> list:
        """An MQTT 5 subscription with `options` and a Subscription Identifier."""
        props = None
        if subscription_id is not None:
            props = Properties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = subscription_id
        self.call(lambda: self.client.subscribe((topic, options), properties=props))
        return self.acks.get(timeout=10)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                properties: Properties | None = None) -> None:
        info = self.call(lambda: self.client.publish(topic, payload, qos=qos, retain=retain,
                                                      properties=properties))
        info.wait_for_publish(timeout=10)
        assert info.is_published(), f"publish to {topic} not acknowledged"

    def next_message(self, timeout: float = 10.0):
        return self.messages.get(timeout=timeout)

    def no_message(self, within: float = 0.5) -> None:
        """Asserts that no message arrives within `within` seconds."""
        try:
            message = self.messages.get(timeout=within)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message on {message.topic}: {message.payload!r}")

    def ack(self, message) -> None:
        """Acknowledges a QoS 1 delivery (with `manual_ack`)."""
        self.call(lambda: self.client.ack(message.mid, message.qos))

    def next_disconnect(self, timeout: float = 10.0):
        return self.disconnects.get(timeout=timeout)

    def close(self, properties: Properties | None = None, with_will: bool = False) -> None:
        """Disconnects; with `with_will`, with reason 0x04 Disconnect with Will Message."""
        reason = ReasonCode(PacketTypes.DISCONNECT, identifier=0x04) if with_will else None
        self.call(lambda: self.client.disconnect(reasoncode=reason, properties=properties))
        self.stop.set()
        self.thread.join(timeout=5)


async def in_thread(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


@pytest.mark.parametrize("protocol", [V5, V311])
@spec
async def test_a_paho_publish_reaches_a_quic_subscriber(gateway, certs, protocol):
    broker, port = gateway
    quic = await connect(broker.port, certs.identity("bob"))
    sub = await subscribe(quic, f"paho.in.v{protocol}.>")
    paho = await in_thread(Paho, certs, "alice", port, protocol)
    props = None
    if protocol == V5:
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("unit", "celsius")]
    await in_thread(paho.publish, f"paho/in/v{protocol}/temp", b"21.5", 1, False, props)
    message = await sub.next_frame()
    assert (message["topic"], message["payload"]) == (f"paho.in.v{protocol}.temp", b"21.5")
    if protocol == V5:
        assert ["unit", "celsius"] in [list(h) for h in message["headers"]]
    await in_thread(paho.close)
    await drop(quic)


@pytest.mark.parametrize("protocol", [V5, V311])
@spec
async def test_a_quic_publish_reaches_a_paho_subscriber_through_wildcards(gateway, certs,
                                                                          protocol):
    broker, port = gateway
    paho = await in_thread(Paho, certs, "alice", port, protocol)
    granted = await in_thread(paho.subscribe, f"paho/out/v{protocol}/+/#", 1)
    assert [int(code.value) if hasattr(code, "value") else int(code) for code in granted] == [1]
    quic = await connect(broker.port, certs.identity("bob"))
    stream = quic.new_stream()
    answer = await publish_and_wait(quic, stream, publish(f"paho.out.v{protocol}.a.b.c", b"hi",
                                                          message_id=fresh_id(), ack=True))
    assert answer.name == "PublishAck"
    message = await in_thread(paho.next_message)
    assert (message.topic, message.payload, message.qos) == (f"paho/out/v{protocol}/a/b/c",
                                                             b"hi", 1)
    await in_thread(paho.close)
    await drop(quic)


@spec
async def test_paho_to_paho_with_a_retained_value(gateway, certs):
    _, port = gateway
    writer = await in_thread(Paho, certs, "alice", port, V5)
    await in_thread(writer.publish, "paho/retained/state", b"ready", 1, True)
    reader = await in_thread(Paho, certs, "bob", port, V311)
    await in_thread(reader.subscribe, "paho/retained/#", 1)
    message = await in_thread(reader.next_message)
    assert (message.topic, message.payload, message.retain) == ("paho/retained/state", b"ready",
                                                                True)
    await in_thread(writer.publish, "paho/retained/live", b"now", 1)
    message = await in_thread(reader.next_message)
    assert (message.topic, message.payload, message.retain) == ("paho/retained/live", b"now",
                                                                False)
    await in_thread(writer.close)
    await in_thread(reader.close)


@spec
async def test_a_session_is_resumed_by_client_id_and_taken_over_once(gateway, certs):
    broker, port = gateway
    client_id = f"paho-{fresh_id()}"
    first = await in_thread(Paho, certs, "alice", port, V5, client_id, True, 300)
    assert not first.session_present
    await in_thread(first.subscribe, "paho/resume/#", 1)
    # A second connection with the same client id takes the session over: the first one is
    # closed with 0x8E Session taken over, and the session (its subscription) carries on.
    second = await in_thread(Paho, certs, "alice", port, V5, client_id, False, 300)
    assert second.session_present
    reason = await in_thread(first.next_disconnect)
    assert int(reason.value) == SESSION_TAKEN_OVER, reason
    quic = await connect(broker.port, certs.identity("bob"))
    stream = quic.new_stream()
    await publish_and_wait(quic, stream, publish("paho.resume.x", b"after takeover",
                                                 message_id=fresh_id(), ack=True))
    message = await in_thread(second.next_message)
    assert message.payload == b"after takeover"
    # Gone without a clean start, the session keeps queueing for the client id.
    await in_thread(second.close)
    await publish_and_wait(quic, stream, publish("paho.resume.y", b"while away",
                                                 message_id=fresh_id(), ack=True))
    third = await in_thread(Paho, certs, "alice", port, V5, client_id, False, 300)
    assert third.session_present
    message = await in_thread(third.next_message)
    assert (message.topic, message.payload) == ("paho/resume/y", b"while away")
    await in_thread(third.close)
    await drop(quic)


@spec
async def test_an_unmappable_filter_is_refused_with_topic_filter_invalid(gateway, certs):
    _, port = gateway
    paho = await in_thread(Paho, certs, "alice", port, V5)
    codes = await in_thread(paho.subscribe, "paho/with.dot", 1)
    assert [int(code.value) for code in codes] == [0x8F]
    codes = await in_thread(paho.subscribe, "$SYS/#", 0)
    assert [int(code.value) for code in codes] == [0x8F]
    await in_thread(paho.close)


@spec
async def test_a_revoked_certificate_is_cut_off_and_refused(tmp_path_factory):
    d = tmp_path_factory.mktemp("mqtt-revocation")
    run_cli("certs", "init", "--dir", str(d), "--client", "carol", "--client", "dave")
    certs = CertDir(d)
    broker = Broker(certs, tmp_path_factory.mktemp("broker"), ["--mqtt", "127.0.0.1:0"], {})
    try:
        port = mqtt_port(broker)
        carol = await in_thread(Paho, certs, "carol", port, V5)
        dave = await in_thread(Paho, certs, "dave", port, V311)
        await in_thread(carol.subscribe, "paho/revocation/#", 1)
        run_cli("certs", "revoke", "carol", "--dir", str(d))
        reason = await in_thread(carol.next_disconnect, 20.0)
        assert int(reason.value) in (NOT_AUTHORIZED, ADMINISTRATIVE_ACTION), reason
        with pytest.raises(Exception):
            await in_thread(Paho, certs, "carol", port, V5)
        # Everyone else carries on.
        await in_thread(dave.publish, "paho/revocation/still", b"here", 1)
        await in_thread(dave.close)
    finally:
        broker.stop()


def connect_until(wanted, *args, timeout: float = 10.0, **kwargs) -> Paho:
    """Connects a `Paho(*args, **kwargs)` again and again until it is accepted and `wanted`
    of it holds: the broker ends a session a moment after its connection's DISCONNECT."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            paho = Paho(*args, **kwargs)
            if wanted(paho):
                return paho
            paho.close()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"no connection as wanted within {timeout} s")
        time.sleep(0.05)


def disconnect_properties(expiry: int) -> Properties:
    props = Properties(PacketTypes.DISCONNECT)
    props.SessionExpiryInterval = expiry
    return props


@pytest.mark.parametrize("protocol", [V5, V311])
@spec
async def test_a_client_id_held_by_another_identity_is_refused(gateway, certs, protocol):
    broker, port = gateway
    client_id = f"paho-{fresh_id()}"
    owner = await in_thread(Paho, certs, "alice", port, V5, client_id, False, 300)
    await in_thread(owner.subscribe, "paho/owned/#", 1)
    # Another identity asking for the same client id is refused (MQTT 5: 0x85 Client Identifier
    # not valid; 3.1.1: 0x02 Identifier rejected, which paho reports as 0x85 too): it neither
    # takes the session over nor sees it.
    intruder = await in_thread(Paho, certs, "bob", port, protocol, client_id, False, 300,
                               refused=True)
    assert int(intruder.rc.value) == CLIENT_IDENTIFIER_NOT_VALID, intruder.rc
    assert not intruder.session_present
    quic = await connect(broker.port, certs.identity("bob"))
    stream = quic.new_stream()
    await publish_and_wait(quic, stream, publish("paho.owned.x", b"still mine",
                                                 message_id=fresh_id(), ack=True))
    message = await in_thread(owner.next_message)
    assert message.payload == b"still mine"
    # Once the owner's session ends (a DISCONNECT that sets its expiry to 0), the id is free.
    await in_thread(owner.close, disconnect_properties(0))
    newcomer = await in_thread(connect_until, lambda paho: not paho.session_present,
                               certs, "bob", port, protocol, client_id)
    await in_thread(newcomer.close)
    await drop(quic)


@spec
async def test_a_session_expiry_above_the_brokers_is_capped_and_connack_says_so(gateway, certs):
    _, port = gateway
    forever = await in_thread(Paho, certs, "alice", port, V5, f"paho-{fresh_id()}", True,
                              0xFFFFFFFF)
    assert forever.connack.SessionExpiryInterval == BROKER_SESSION_EXPIRY
    await in_thread(forever.close, disconnect_properties(0))
    # Within the broker's, the client's own interval holds, and CONNACK does not repeat it.
    brief = await in_thread(Paho, certs, "alice", port, V5, f"paho-{fresh_id()}", True, 60)
    assert not hasattr(brief.connack, "SessionExpiryInterval")
    await in_thread(brief.close, disconnect_properties(0))


@spec
async def test_a_disconnect_may_end_the_session_but_not_revive_one_that_expires_with_it(
        gateway, certs):
    broker, port = gateway
    quic = await connect(broker.port, certs.identity("bob"))
    wills = await subscribe(quic, "paho.expiry.will")
    # Connected with expiry 300, a DISCONNECT setting 0 ends the session.
    client_id = f"paho-{fresh_id()}"
    first = await in_thread(Paho, certs, "alice", port, V5, client_id, False, 300)
    await in_thread(first.subscribe, "paho/expiry/#", 1)
    await in_thread(first.close, disconnect_properties(0))
    again = await in_thread(connect_until, lambda paho: not paho.session_present,
                            certs, "alice", port, V5, client_id, False, 300)
    await in_thread(again.close, disconnect_properties(0))
    # Connected with expiry 0, a DISCONNECT setting another value is a protocol error: not a
    # valid DISCONNECT, so the will is published.
    doomed = await in_thread(Paho, certs, "alice", port, V5, f"paho-{fresh_id()}", True, 0,
                             ("paho/expiry/will", b"protocol error"))
    await in_thread(doomed.close, disconnect_properties(60))
    message = await wills.next_frame()
    assert (message["topic"], message["payload"]) == ("paho.expiry.will", b"protocol error")
    await drop(quic)


@pytest.mark.parametrize("protocol", [V5, V311])
@spec
async def test_a_shared_subscription_gives_each_message_to_exactly_one_member(gateway, certs,
                                                                              protocol):
    broker, port = gateway
    group = f"workers{protocol}"
    members = [await in_thread(Paho, certs, name, port, protocol) for name in ("alice", "bob")]
    for member in members:
        granted = await in_thread(member.subscribe, f"$share/{group}/paho/jobs/v{protocol}/+", 1)
        assert [int(code.value) if hasattr(code, "value") else int(code)
                for code in granted] == [1]
    quic = await connect(broker.port, certs.identity("bob"))
    stream = quic.new_stream()
    count = 20
    for n in range(count):
        await publish_and_wait(quic, stream, publish(f"paho.jobs.v{protocol}.{n}", b"job",
                                                     message_id=fresh_id(), ack=True))
    # Every message reaches exactly one member: together they got each topic once.
    got: list[str] = []
    deadline = time.monotonic() + 10
    while len(got) < count and time.monotonic() < deadline:
        for member in members:
            try:
                got.append((await in_thread(member.next_message, 0.05)).topic)
            except queue.Empty:
                pass
    assert sorted(got) == sorted(f"paho/jobs/v{protocol}/{n}" for n in range(count))
    for member in members:
        with pytest.raises(queue.Empty):
            await in_thread(member.next_message, 0.2)
        await in_thread(member.close)
    await drop(quic)


@spec
async def test_receive_maximum_bounds_the_whole_connection_and_is_shared_fairly(gateway, certs):
    broker, port = gateway
    paho = await in_thread(Paho, certs, "alice", port, V5, receive_maximum=2, manual_ack=True)
    await in_thread(paho.subscribe, "paho/window/a/#", 1)
    await in_thread(paho.subscribe, "paho/window/b/#", 1)
    quic = await connect(broker.port, certs.identity("bob"))
    stream = quic.new_stream()
    count = 4
    for sub in ("a", "b"):
        for n in range(count):
            await publish_and_wait(quic, stream, publish(f"paho.window.{sub}.{n}", b"x",
                                                         message_id=fresh_id(), ack=True))
    # MQTT 5 §4.9: no more than Receive Maximum QoS 1 deliveries unacknowledged on the whole
    # connection, whatever the subscriptions.
    unacked = [await in_thread(paho.next_message), await in_thread(paho.next_message)]
    await in_thread(paho.no_message)
    # Each PUBACK lets exactly one more in, and "b" gets its turns while "a" still has messages.
    order = [message.topic for message in unacked]
    while len(order) < 2 * count:
        await in_thread(paho.ack, unacked.pop(0))
        message = await in_thread(paho.next_message)
        order.append(message.topic)
        unacked.append(message)
        await in_thread(paho.no_message, 0.1)
    assert sorted(order) == sorted(f"paho/window/{sub}/{n}" for sub in "ab"
                                   for n in range(count))
    for sub in ("a", "b"):
        mine = [topic for topic in order if topic.startswith(f"paho/window/{sub}/")]
        assert mine == [f"paho/window/{sub}/{n}" for n in range(count)], order
    first_b = next(i for i, topic in enumerate(order) if "/b/" in topic)
    last_a = max(i for i, topic in enumerate(order) if "/a/" in topic)
    assert first_b < last_a, f"one subscription starved the other: {order}"
    for message in unacked:
        await in_thread(paho.ack, message)
    await in_thread(paho.close)
    await drop(quic)


@pytest.mark.parametrize("protocol", [V5, V311])
@spec
async def test_a_tls12_only_client_is_served(gateway, certs, protocol):
    broker, port = gateway
    paho = await in_thread(Paho, certs, "alice", port, protocol, tls_max=ssl.TLSVersion.TLSv1_2)
    assert paho.client.socket().version() == "TLSv1.2"
    await in_thread(paho.subscribe, f"paho/tls12/v{protocol}", 1)
    quic = await connect(broker.port, certs.identity("bob"))
    stream = quic.new_stream()
    await publish_and_wait(quic, stream, publish(f"paho.tls12.v{protocol}", b"old device",
                                                 message_id=fresh_id(), ack=True))
    message = await in_thread(paho.next_message)
    assert message.payload == b"old device"
    await in_thread(paho.close)
    await drop(quic)


@spec
async def test_with_mqtt_tls12_off_a_tls12_only_client_is_refused(start_broker, certs):
    broker = start_broker("--mqtt", "127.0.0.1:0", env={"CASSINI_MQTT_TLS12": "false"})
    port = mqtt_port(broker)
    with pytest.raises(ssl.SSLError):
        await in_thread(Paho, certs, "alice", port, V5, tls_max=ssl.TLSVersion.TLSv1_2)
    paho = await in_thread(Paho, certs, "alice", port, V5)
    assert paho.client.socket().version() == "TLSv1.3"
    await in_thread(paho.close)


def publish_properties(**values) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(props, name, value)
    return props


@spec
async def test_message_expiry_drops_what_expired_while_queued_and_sends_the_rest(gateway, certs):
    _, port = gateway
    client_id = f"paho-{fresh_id()}"
    reader = await in_thread(Paho, certs, "bob", port, V5, client_id, True, 300)
    await in_thread(reader.subscribe, "paho/expiry/msg/#", 1)
    await in_thread(reader.close)
    writer = await in_thread(Paho, certs, "alice", port, V5)
    await in_thread(writer.publish, "paho/expiry/msg/short", b"short", 1, False,
                    publish_properties(MessageExpiryInterval=1))
    await in_thread(writer.publish, "paho/expiry/msg/long", b"long", 1, False,
                    publish_properties(MessageExpiryInterval=600))
    await in_thread(writer.publish, "paho/expiry/msg/none", b"none", 1)
    # The short one's interval passes while it waits in the detached session's queue.
    await asyncio.sleep(1.5)
    reader = await in_thread(Paho, certs, "bob", port, V5, client_id, False, 300)
    assert reader.session_present
    first = await in_thread(reader.next_message)
    assert (first.topic, first.payload) == ("paho/expiry/msg/long", b"long")
    # MQTT 5 §3.3.2.3.3: the interval sent on is what remains of it.
    assert 590 <= first.properties.MessageExpiryInterval <= 600
    second = await in_thread(reader.next_message)
    assert (second.topic, second.payload) == ("paho/expiry/msg/none", b"none")
    assert not hasattr(second.properties, "MessageExpiryInterval")
    assert not hasattr(second.properties, "UserProperty"), second.properties
    await in_thread(reader.no_message)
    await in_thread(reader.close, disconnect_properties(0))
    await in_thread(writer.close)


@spec
async def test_topic_aliases_up_to_the_announced_maximum(gateway, certs):
    broker, port = gateway
    quic = await connect(broker.port, certs.identity("bob"))
    sub = await subscribe(quic, "paho.alias.>")
    paho = await in_thread(Paho, certs, "alice", port, V5)
    assert paho.connack.TopicAliasMaximum == 10
    await in_thread(paho.publish, "paho/alias/room1", b"set", 1, False,
                    publish_properties(TopicAlias=10))
    await in_thread(paho.publish, "", b"used", 1, False, publish_properties(TopicAlias=10))
    for payload in (b"set", b"used"):
        message = await sub.next_frame()
        assert (message["topic"], message["payload"]) == ("paho.alias.room1", payload)
    # Above the maximum: DISCONNECT 0x94 Topic Alias invalid.
    paho.call(lambda: paho.client.publish("paho/alias/room2", b"x", qos=0,
                                          properties=publish_properties(TopicAlias=11)))
    reason = await in_thread(paho.next_disconnect)
    assert int(reason.value) == 0x94, reason
    await drop(quic)


@spec
async def test_subscription_identifiers_come_back_in_each_delivery(gateway, certs):
    broker, port = gateway
    client_id = f"paho-{fresh_id()}"
    paho = await in_thread(Paho, certs, "alice", port, V5, client_id, True, 300)
    assert getattr(paho.connack, "SubscriptionIdentifierAvailable", 1) == 1
    await in_thread(paho.subscribe_with, "paho/subid/#", SubscribeOptions(qos=1), 7)
    await in_thread(paho.subscribe_with, "paho/subid/+/x", SubscribeOptions(qos=0), 9)
    quic = await connect(broker.port, certs.identity("bob"))
    stream = quic.new_stream()
    await publish_and_wait(quic, stream, publish("paho.subid.a.x", b"both",
                                                 message_id=fresh_id(), ack=True))
    ids = sorted([(await in_thread(paho.next_message)).properties.SubscriptionIdentifier[0]
                  for _ in range(2)])
    assert ids == [7, 9]
    # The identifiers are part of the session: a resumed one keeps them.
    await in_thread(paho.close)
    paho = await in_thread(Paho, certs, "alice", port, V5, client_id, False, 300)
    assert paho.session_present
    await publish_and_wait(quic, stream, publish("paho.subid.b", b"resumed",
                                                 message_id=fresh_id(), ack=True))
    message = await in_thread(paho.next_message)
    assert (message.payload, message.properties.SubscriptionIdentifier) == (b"resumed", [7])
    await in_thread(paho.close, disconnect_properties(0))
    await drop(quic)


@spec
async def test_no_local_keeps_a_clients_own_messages_from_it(gateway, certs):
    _, port = gateway
    me = await in_thread(Paho, certs, "alice", port, V5)
    await in_thread(me.subscribe_with, "paho/nolocal/#", SubscribeOptions(qos=1, noLocal=True))
    other = await in_thread(Paho, certs, "bob", port, V5)
    await in_thread(me.publish, "paho/nolocal/mine", b"mine", 1)
    await in_thread(other.publish, "paho/nolocal/theirs", b"theirs", 1)
    message = await in_thread(me.next_message)
    assert (message.topic, message.payload) == ("paho/nolocal/theirs", b"theirs")
    await in_thread(me.no_message)
    await in_thread(me.close)
    await in_thread(other.close)


@spec
async def test_retain_as_published_and_retain_handling(gateway, certs):
    _, port = gateway
    writer = await in_thread(Paho, certs, "alice", port, V5)
    await in_thread(writer.publish, "paho/rh/state", b"stored", 1, True)
    reader = await in_thread(Paho, certs, "bob", port, V5)
    # Retain Handling 2: no retained values.
    await in_thread(reader.subscribe_with, "paho/rh/#",
                    SubscribeOptions(qos=0, retainHandling=2))
    await in_thread(reader.no_message)
    # Retain Handling 1: retained values for a new subscription only.
    await in_thread(reader.subscribe_with, "paho/rh/+",
                    SubscribeOptions(qos=0, retainHandling=1))
    message = await in_thread(reader.next_message)
    assert (message.topic, message.payload, message.retain) == ("paho/rh/state", b"stored", True)
    await in_thread(reader.subscribe_with, "paho/rh/+",
                    SubscribeOptions(qos=1, retainHandling=1))
    await in_thread(reader.no_message)
    # Retain Handling 0: at every subscribe; and Retain As Published keeps a live message's
    # retain flag, which is otherwise cleared.
    await in_thread(reader.subscribe_with, "paho/rh/state",
                    SubscribeOptions(qos=1, retainHandling=0, retainAsPublished=True))
    message = await in_thread(reader.next_message)
    assert (message.topic, message.retain) == ("paho/rh/state", True)
    await in_thread(writer.publish, "paho/rh/state", b"live", 1, True)
    # The "#" and "+" subscriptions clear it; the Retain As Published one keeps it.
    flags = [(await in_thread(reader.next_message)).retain for _ in range(3)]
    assert sorted(flags) == [False, False, True]
    await in_thread(writer.close)
    await in_thread(reader.close)


# Correlation data is any bytes: these are not UTF-8.
CORRELATION = b"\x00\xffreq-7"


def request_properties(response_topic: str) -> Properties:
    """Every property MQTT 5 §3.3.2.3 says a server forwards unaltered."""
    return publish_properties(ResponseTopic=response_topic, CorrelationData=CORRELATION,
                              ContentType="application/json", PayloadFormatIndicator=1,
                              UserProperty=[("trace", "t-1")])


def assert_forwarded(properties, response_topic: str) -> None:
    assert properties.ResponseTopic == response_topic
    assert properties.CorrelationData == CORRELATION
    assert properties.ContentType == "application/json"
    assert properties.PayloadFormatIndicator == 1
    assert properties.UserProperty == [("trace", "t-1")]


def headers_of(message) -> dict:
    return {key: value for key, value in message["headers"]}


@spec
async def test_mqtt5_request_response_between_paho_clients_keeps_every_property(gateway, certs):
    """Node-RED style: the requester names a Response Topic and Correlation Data, the responder
    answers on that topic with that data."""
    _, port = gateway
    responder = await in_thread(Paho, certs, "bob", port, V5)
    await in_thread(responder.subscribe, "paho/rpc/echo", 1)
    requester = await in_thread(Paho, certs, "alice", port, V5)
    await in_thread(requester.subscribe, "paho/rpc/replies/alice", 1)
    await in_thread(requester.publish, "paho/rpc/echo", b'{"n": 1}', 1, False,
                    request_properties("paho/rpc/replies/alice"))
    request = await in_thread(responder.next_message)
    assert request.payload == b'{"n": 1}'
    assert_forwarded(request.properties, "paho/rpc/replies/alice")
    await in_thread(responder.publish, request.properties.ResponseTopic, b'{"echo": 1}', 1, False,
                    publish_properties(CorrelationData=request.properties.CorrelationData))
    reply = await in_thread(requester.next_message)
    assert (reply.topic, reply.payload) == ("paho/rpc/replies/alice", b'{"echo": 1}')
    assert reply.properties.CorrelationData == CORRELATION
    assert not hasattr(reply.properties, "ContentType")
    await in_thread(requester.close)
    await in_thread(responder.close)


@spec
async def test_a_quic_responder_answers_an_mqtt5_request_with_its_correlation_data(gateway, certs):
    broker, port = gateway
    quic = await connect(broker.port, certs.identity("bob"))
    requests = await subscribe(quic, "paho.rpc.quic")
    requester = await in_thread(Paho, certs, "alice", port, V5)
    await in_thread(requester.subscribe, "paho/rpc/replies/from-quic", 1)
    await in_thread(requester.publish, "paho/rpc/quic", b"ping", 1, False,
                    request_properties("paho/rpc/replies/from-quic"))
    request = await requests.next_frame()
    assert request["reply_to"] == "paho.rpc.replies.from-quic"
    headers = headers_of(request)
    assert base64.b64decode(headers["mqtt-correlation-data"]) == CORRELATION
    assert headers["mqtt-content-type"] == "application/json"
    assert headers["mqtt-payload-format"] == "1"
    assert headers["trace"] == "t-1"
    stream = quic.new_stream()
    answer = await publish_and_wait(quic, stream, publish(
        request["reply_to"], b"pong",
        headers=[["mqtt-correlation-data", headers["mqtt-correlation-data"]]],
        message_id=fresh_id(), ack=True))
    assert answer.name == "PublishAck"
    reply = await in_thread(requester.next_message)
    assert (reply.topic, reply.payload) == ("paho/rpc/replies/from-quic", b"pong")
    assert reply.properties.CorrelationData == CORRELATION
    assert not hasattr(reply.properties, "UserProperty"), reply.properties
    await in_thread(requester.close)
    await drop(quic)


@spec
async def test_an_mqtt5_responder_answers_a_quic_request_with_its_correlation_data(gateway,
                                                                                    certs):
    broker, port = gateway
    responder = await in_thread(Paho, certs, "bob", port, V5)
    await in_thread(responder.subscribe, "paho/rpc/device", 1)
    quic = await connect(broker.port, certs.identity("alice"))
    replies = await subscribe(quic, "paho.rpc.replies.quic")
    correlation = base64.b64encode(CORRELATION).decode()
    stream = quic.new_stream()
    answer = await publish_and_wait(quic, stream, publish(
        "paho.rpc.device", b"status?",
        headers=[["mqtt-correlation-data", correlation], ["mqtt-content-type", "text/plain"]],
        reply_to="paho.rpc.replies.quic", message_id=fresh_id(), ack=True))
    assert answer.name == "PublishAck"
    request = await in_thread(responder.next_message)
    assert request.properties.ResponseTopic == "paho/rpc/replies/quic"
    assert request.properties.CorrelationData == CORRELATION
    assert request.properties.ContentType == "text/plain"
    await in_thread(responder.publish, request.properties.ResponseTopic, b"ok", 1, False,
                    publish_properties(CorrelationData=request.properties.CorrelationData))
    reply = await replies.next_frame()
    assert reply["payload"] == b"ok"
    assert headers_of(reply)["mqtt-correlation-data"] == correlation
    await in_thread(responder.close)
    await drop(quic)


@spec
async def test_a_will_carries_its_own_properties(gateway, certs):
    _, port = gateway
    watcher = await in_thread(Paho, certs, "bob", port, V5)
    await in_thread(watcher.subscribe, "paho/will/props/#", 1)
    will_properties = Properties(PacketTypes.WILLMESSAGE)
    will_properties.ResponseTopic = "paho/will/props/ack"
    will_properties.CorrelationData = CORRELATION
    will_properties.ContentType = "application/json"
    will_properties.PayloadFormatIndicator = 1
    will_properties.UserProperty = [("trace", "t-1")]
    will_properties.MessageExpiryInterval = 600
    doomed = await in_thread(Paho, certs, "alice", port, V5,
                             will=("paho/will/props/dev-1", b'{"state": "gone"}'),
                             will_properties=will_properties)
    await in_thread(doomed.close, None, True)
    will = await in_thread(watcher.next_message)
    assert (will.topic, will.payload) == ("paho/will/props/dev-1", b'{"state": "gone"}')
    assert_forwarded(will.properties, "paho/will/props/ack")
    assert 590 <= will.properties.MessageExpiryInterval <= 600
    await in_thread(watcher.close)


def delayed_will(seconds: int) -> Properties:
    props = Properties(PacketTypes.WILLMESSAGE)
    props.WillDelayInterval = seconds
    return props


async def watched_delayed_will(gateway, certs, branch: str):
    """`bob` subscribed to `paho/will/BRANCH/#`, and `alice` connected with a fresh client id,
    a clean start, a 300 s session and a will (`gone` on `paho/will/BRANCH/dev`) delayed 60 s:
    the gateway's port, the client id, the watcher and the client."""
    _, port = gateway
    client_id = f"paho-{fresh_id()}"
    watcher = await in_thread(Paho, certs, "bob", port, V5)
    await in_thread(watcher.subscribe, f"paho/will/{branch}/#", 1)
    client = await in_thread(Paho, certs, "alice", port, V5, client_id, True, 300,
                             will=(f"paho/will/{branch}/dev", b"gone"),
                             will_properties=delayed_will(60))
    return port, client_id, watcher, client


@spec
async def test_a_clean_start_takeover_publishes_the_old_connections_delayed_will(gateway, certs):
    """MQTT 5 §3.1.2.5: the will waits for its delay or the end of the session; a clean start
    ends the session the old connection held."""
    port, client_id, watcher, old = await watched_delayed_will(gateway, certs, "takeover")
    new = await in_thread(Paho, certs, "alice", port, V5, client_id, True, 300)
    assert not new.session_present
    reason = await in_thread(old.next_disconnect)
    assert int(reason.value) == SESSION_TAKEN_OVER, reason
    will = await in_thread(watcher.next_message)
    assert (will.topic, will.payload) == ("paho/will/takeover/dev", b"gone")
    await in_thread(new.close, disconnect_properties(0))
    await in_thread(watcher.close)


@spec
async def test_a_takeover_resuming_the_session_does_not_publish_a_delayed_will(gateway, certs):
    port, client_id, watcher, old = await watched_delayed_will(gateway, certs, "resumed")
    new = await in_thread(Paho, certs, "alice", port, V5, client_id, False, 300)
    assert new.session_present
    reason = await in_thread(old.next_disconnect)
    assert int(reason.value) == SESSION_TAKEN_OVER, reason
    await in_thread(watcher.no_message, 1.0)
    await in_thread(new.close, disconnect_properties(0))
    await in_thread(watcher.close)


@spec
async def test_a_clean_start_publishes_a_will_waiting_for_its_delay(gateway, certs):
    port, client_id, watcher, old = await watched_delayed_will(gateway, certs, "waiting")
    # Lost without DISCONNECT: the will waits for its 60 s.
    old.stop.set()
    await in_thread(old.thread.join, 5)
    old.client.socket().close()
    await in_thread(watcher.no_message, 1.0)
    new = await in_thread(Paho, certs, "alice", port, V5, client_id, True, 300)
    will = await in_thread(watcher.next_message)
    assert (will.topic, will.payload) == ("paho/will/waiting/dev", b"gone")
    await in_thread(new.close, disconnect_properties(0))
    await in_thread(watcher.close)


@spec
async def test_the_will_of_a_client_connected_when_the_broker_is_killed_comes_after_the_restart(
        start_broker, certs, tmp_path_factory):
    """docs/MQTT.md, Wills: in disk mode the will of a connection open when the broker died is
    published after the restart as if the connection had closed then (MQTT 5 §3.1.2.5 lets a
    server do so), after its delay, unless the client resumes its session first."""
    data = tmp_path_factory.mktemp("data")
    args = ("--mqtt", "127.0.0.1:0", "--storage", "disk", "--data-dir", str(data))
    first = start_broker(*args)
    device = await in_thread(Paho, certs, "alice", mqtt_port(first), V5, f"paho-{fresh_id()}",
                             True, 300, will=("paho/will/killed/dev", b"gone"),
                             will_properties=delayed_will(5))
    # A retained QoS 1 publish is acknowledged once it is synced, and the will's record was
    # written before it: both are on disk now.
    await in_thread(device.publish, "paho/will/killed/state", b"alive", 1, True)
    first.proc.kill()
    first.proc.wait(10)
    device.stop.set()
    await in_thread(device.thread.join, 5)

    second = start_broker(*args)
    watcher = await in_thread(Paho, certs, "bob", mqtt_port(second), V5)
    await in_thread(watcher.subscribe, "paho/will/killed/dev", 1)
    will = await in_thread(watcher.next_message, 20.0)
    assert (will.topic, will.payload) == ("paho/will/killed/dev", b"gone")
    await in_thread(watcher.close)
