"""PROTOCOL.md, "Publish streams", "Subscription streams" and "Topics": publish and subscribe."""

from cassini_wire import (
    INVALID_FILTER,
    INVALID_TOPIC,
    MISSING_MESSAGE_ID,
    PAYLOAD_TOO_LARGE,
    UNKNOWN_SUBSCRIPTION,
    StreamEnd,
    barrier,
    connect,
    control_request,
    drop,
    encode,
    frame,
    fresh_id,
    publish,
    publish_and_wait,
    subscribe,
    try_subscribe,
)
from conftest import spec


@spec
async def test_a_subscription_gets_its_own_stream_starting_with_subscription_start(
        broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    # subscribe() checks `Subscribed` on the control stream and that the first frame of a
    # broker-opened unidirectional stream is `SubscriptionStart` naming the subscription.
    sub = await subscribe(alice, f"{topic}.>")
    assert alice.by_subscription[sub.id].stream_id % 4 == 3  # server-initiated, unidirectional
    other = await subscribe(alice, f"{topic}.other")
    assert other.id != sub.id and other.stream_id != sub.stream_id
    await drop(alice)


@spec
async def test_a_publish_reaches_each_matching_subscriber_as_a_message_with_every_field(
        broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    bob = await connect(broker.port, certs.identity("bob"))
    sub = await subscribe(alice, f"{topic}.*.created")

    stream = bob.new_stream()
    bob.send(stream, publish(f"{topic}.eu.created", b"\x00\x01payload",
                             headers=[["k", "1"], ["k", "2"], ["content-type", "x"]],
                             message_id=42))
    msg = await sub.next_frame()
    assert msg.name == "Message"
    assert msg["sequence"] == 1
    assert msg["topic"] == f"{topic}.eu.created"
    assert msg["headers"] == [["k", "1"], ["k", "2"], ["content-type", "x"]]
    assert msg["payload"] == b"\x00\x01payload"
    assert isinstance(msg["payload"], bytes)  # MessagePack bin
    assert msg["message_id"] == 42
    assert msg["reply_to"] is None
    assert msg["retained"] is False and msg["redelivered"] is False
    await drop(alice)
    await drop(bob)


@spec
async def test_wildcards_match_as_the_topic_rules_say(broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    star = await subscribe(alice, f"{topic}.*.created")
    rest = await subscribe(alice, f"{topic}.>")
    stream = alice.new_stream()
    for t in (f"{topic}", f"{topic}.eu", f"{topic}.eu.created", f"{topic}.eu.x.created"):
        alice.send(stream, publish(t, t.encode()))
    await barrier(alice, stream, f"{topic}x.barrier")

    # `*` is exactly one token; `>` one or more trailing tokens (not the prefix itself).
    assert (await star.next_frame())["topic"] == f"{topic}.eu.created"
    got = [(await rest.next_frame())["topic"] for _ in range(3)]
    assert got == [f"{topic}.eu", f"{topic}.eu.created", f"{topic}.eu.x.created"]
    await drop(alice)


@spec
async def test_one_publish_stream_is_delivered_in_order_with_consecutive_sequences(
        broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    bob = await connect(broker.port, certs.identity("bob"))
    sub = await subscribe(alice, topic)
    stream = bob.new_stream()
    for i in range(200):
        bob.send(stream, publish(topic, i.to_bytes(4, "big")))
    for i in range(200):
        msg = await sub.next_frame()
        assert (msg["sequence"], msg["payload"]) == (i + 1, i.to_bytes(4, "big"))
    await drop(alice)
    await drop(bob)


@spec
async def test_an_acknowledged_publish_is_answered_and_a_retry_is_a_duplicate(
        broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    sub = await subscribe(alice, topic)
    stream = alice.new_stream()
    first_id, second_id = fresh_id(), fresh_id()
    ack = await publish_and_wait(alice, stream, publish(topic, b"once", message_id=first_id,
                                                        ack=True))
    assert ack.name == "PublishAck"
    assert ack["message_id"] == first_id and ack["duplicate"] is False
    assert (await sub.next_frame())["payload"] == b"once"

    # The same (identity, message_id) inside the dedupe window: acknowledged, not routed again.
    again = await publish_and_wait(alice, stream, publish(topic, b"once", message_id=first_id,
                                                          ack=True))
    assert again.name == "PublishAck" and again["duplicate"] is True
    await barrier(alice, stream, f"{topic}x.barrier")
    after = await publish_and_wait(alice, stream, publish(topic, b"next", message_id=second_id,
                                                          ack=True))
    assert after.name == "PublishAck" and after["duplicate"] is False
    assert (await sub.next_frame())["payload"] == b"next"
    await drop(alice)


@spec
async def test_an_acknowledged_publish_without_a_message_id_is_rejected(broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    stream = alice.new_stream()
    answer = await publish_and_wait(alice, stream, publish(topic, b"x", ack=True))
    assert answer.name == "PublishRejected"
    assert answer["code"] == MISSING_MESSAGE_ID and answer["topic"] == topic
    assert answer["message_id"] is None and answer["reason"]
    await drop(alice)


@spec
async def test_invalid_topics_are_rejected_and_the_stream_stays_usable(broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    stream = alice.new_stream()
    invalid = [
        f"{topic}.",  # empty token
        f".{topic}",
        f"{topic}..x",
        f"{topic}.*",  # wildcards are for filters
        f"{topic}.>",
        "$SYS.x",  # reserved for the broker
        f"{topic}.a b",  # whitespace
        f"{topic}.a\u0001",  # control character
        "a." * 16 + "a",  # 17 tokens
        "a" * 257,  # 257 bytes
        "",
    ]
    for bad in invalid:
        mid = fresh_id()
        answer = await publish_and_wait(alice, stream, publish(bad, b"x", message_id=mid,
                                                               ack=True))
        assert answer.name == "PublishRejected", (bad, answer)
        assert answer["code"] == INVALID_TOPIC, (bad, answer)
        assert answer["topic"] == bad and answer["message_id"] == mid
    # At the limits exactly: 16 tokens and 256 bytes are fine.
    for good in ("a." * 15 + "a", "a" * 256):
        ok = await publish_and_wait(alice, stream, publish(good, b"x", message_id=fresh_id(),
                                                           ack=True))
        assert ok.name == "PublishAck", (good, ok)
    await drop(alice)


@spec
async def test_a_payload_above_max_payload_bytes_is_rejected(broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    limit = alice.welcome["limits"]["max_payload_bytes"]
    sub = await subscribe(alice, topic)
    stream = alice.new_stream()
    big_id = fresh_id()
    big = await publish_and_wait(alice, stream,
                                 publish(topic, b"x" * (limit + 1), message_id=big_id,
                                         ack=True),
                                 timeout=20)
    assert big.name == "PublishRejected" and big["code"] == PAYLOAD_TOO_LARGE
    assert big["message_id"] == big_id
    fits = await publish_and_wait(alice, stream,
                                  publish(topic, b"y" * limit, message_id=fresh_id(), ack=True),
                                  timeout=20)
    assert fits.name == "PublishAck"
    msg = await sub.next_frame(timeout=20)
    assert len(msg["payload"]) == limit and msg["sequence"] == 1
    await drop(alice)


@spec
async def test_invalid_filters_are_refused_with_an_error_and_the_connection_stays(
        broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    for bad in (f"{topic}.>.x", f"{topic}.a*", f"{topic}..x", "", f"{topic}.>x"):
        answer = await try_subscribe(alice, bad)
        assert answer.name == "Error" and answer["code"] == INVALID_FILTER, (bad, answer)
        assert answer["request_id"] is not None
    pong = await control_request(alice, frame("Ping", 5))
    assert pong.name == "Pong"
    await drop(alice)


@spec
async def test_unsubscribe_finishes_the_stream_and_stops_deliveries(broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    sub = await subscribe(alice, topic)
    keep = await subscribe(alice, topic)
    answer = await control_request(alice, frame("Unsubscribe", 900, sub.id))
    assert answer.name == "Unsubscribed"
    assert answer["request_id"] == 900 and answer["subscription"] == sub.id
    end = await sub.next()
    assert isinstance(end, StreamEnd) and end.reset_code in (None, 0)

    stream = alice.new_stream()
    alice.send(stream, publish(topic, b"after"))
    assert (await keep.next_frame())["payload"] == b"after"

    again = await control_request(alice, frame("Unsubscribe", 901, sub.id))
    assert again.name == "Error" and again["code"] == UNKNOWN_SUBSCRIPTION
    assert again["request_id"] == 901
    await drop(alice)


@spec
async def test_control_requests_are_answered_in_order(broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    alice.send_raw(alice.control_id,
                   encode(frame("Ping", 1))
                   + encode(frame("Subscribe", 501, f"{topic}.>", ["DropOldest", None, None,
                                                                  None, None, "Reliable"]))
                   + encode(frame("Unsubscribe", 502, 123456))
                   + encode(frame("Ping", 2)))
    answers = [await alice.next_frame(alice.control_id) for _ in range(4)]
    assert [a.name for a in answers] == ["Pong", "Subscribed", "Error", "Pong"]
    assert answers[0]["nonce"] == 1 and answers[3]["nonce"] == 2
    await drop(alice)


@spec
async def test_a_retained_value_is_replayed_to_a_new_subscription(broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    stream = alice.new_stream()
    ack = await publish_and_wait(alice, stream, publish(f"{topic}.state", b"on", retain=True,
                                                        message_id=fresh_id(), ack=True))
    assert ack.name == "PublishAck"
    sub = await subscribe(alice, f"{topic}.>")
    msg = await sub.next_frame()
    assert msg["retained"] is True and msg["payload"] == b"on"
    assert msg["topic"] == f"{topic}.state"

    # An empty retained payload clears the value.
    await publish_and_wait(alice, stream, publish(f"{topic}.state", b"", retain=True,
                                                  message_id=fresh_id(), ack=True))
    later = await subscribe(alice, f"{topic}.*")
    stream2 = alice.new_stream()
    alice.send(stream2, publish(f"{topic}.state", b"live"))
    first = await later.next_frame()
    assert first["retained"] is False and first["payload"] == b"live"
    await drop(alice)


@spec
async def test_a_direct_message_reaches_only_the_named_session(broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    bob = await connect(broker.port, certs.identity("bob"))
    to_alice = await subscribe(alice, topic)
    to_bob = await subscribe(bob, topic)
    stream = bob.new_stream()
    bob.send(stream, publish(topic, b"for alice", to_session=alice.welcome["session_id"]))
    bob.send(stream, publish(topic, b"for all"))
    assert (await to_alice.next_frame())["payload"] == b"for alice"
    assert (await to_alice.next_frame())["payload"] == b"for all"
    assert (await to_bob.next_frame())["payload"] == b"for all"
    await drop(alice)
    await drop(bob)


@spec
async def test_a_datagram_publish_is_routed_like_a_stream_publish(broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    sub = await subscribe(alice, topic)
    # PROTOCOL.md: client -> broker datagrams carry `Publish`; the length prefix is included, as
    # for the broker's `Datagram` frames.
    alice.send_datagram(encode(publish(topic, b"by datagram")))
    msg = await sub.next_frame()
    assert msg["payload"] == b"by datagram" and msg["sequence"] == 1
    await drop(alice)
