"""PROTOCOL.md, "Limits" of `Welcome`, the subscription bounds and the error codes that enforce
them; a broker configured through its documented environment (CONFIGURATION.md)."""

import pytest

from cassini_wire import (
    assert_closed_with,
    INVALID_OPTION,
    PAYLOAD_TOO_LARGE,
    TOO_MANY_SUBSCRIPTIONS,
    connect,
    drop,
    fresh_id,
    hello,
    open_connection,
    publish,
    publish_and_wait,
    subscribe,
    try_subscribe,
)
from conftest import spec


@pytest.fixture(scope="module")
def small_broker(start_broker):
    return start_broker(env={
        "CASSINI_LIMITS_MAX_PAYLOAD_BYTES": "1000",
        "CASSINI_LIMITS_MAX_FRAME_BYTES": "70000",
        "CASSINI_LIMITS_MAX_SUBSCRIPTIONS_PER_SESSION": "3",
        "CASSINI_LIMITS_MAX_TOPIC_BYTES": "40",
        "CASSINI_LIMITS_MAX_TOPIC_DEPTH": "4",
        "CASSINI_LIMITS_MAX_RETAINED_TOPICS": "1",
    })


@spec
async def test_welcome_announces_the_limits_the_broker_enforces(small_broker, certs):
    alice = await connect(small_broker.port, certs.identity("alice"))
    assert alice.welcome["limits"] == {
        "max_payload_bytes": 1000,
        "max_frame_bytes": 70000,
        "max_subscriptions": 3,
        "max_topic_bytes": 40,
        "max_topic_depth": 4,
    }
    stream = alice.new_stream()
    big = await publish_and_wait(alice, stream, publish("a.b", b"x" * 1001,
                                                        message_id=fresh_id(), ack=True))
    assert big.name == "PublishRejected" and big["code"] == PAYLOAD_TOO_LARGE
    fits = await publish_and_wait(alice, stream, publish("a.b", b"x" * 1000,
                                                         message_id=fresh_id(), ack=True))
    assert fits.name == "PublishAck"
    deep = await publish_and_wait(alice, stream, publish("a.b.c.d.e", b"",
                                                         message_id=fresh_id(), ack=True))
    assert deep.name == "PublishRejected" and deep["code"] == 10  # INVALID_TOPIC
    await drop(alice)


@spec
async def test_a_session_holds_at_most_max_subscriptions(small_broker, certs):
    alice = await connect(small_broker.port, certs.identity("alice"))
    for i in range(3):
        await subscribe(alice, f"s.{i}")
    fourth = await try_subscribe(alice, "s.3")
    assert fourth.name == "Error" and fourth["code"] == TOO_MANY_SUBSCRIPTIONS
    await drop(alice)


@spec
async def test_the_default_queue_bounds_do_not_cap_subscriptions_below_the_announced_maximum(
    broker, certs, topic
):
    # PROTOCOL.md: a session may hold `Welcome.limits.max_subscriptions` (1,024 by default), and
    # subscriptions with absent bounds take the broker's defaults; the session's pending-bytes
    # budget (4 GiB) fits all of them. 100 is past the old cap of 64 and within the 128
    # unidirectional streams this client allows.
    alice = await connect(broker.port, certs.identity("alice"))
    assert alice.welcome["limits"]["max_subscriptions"] == 1024
    for i in range(100):
        answer = await try_subscribe(alice, f"{topic}.{i}")
        assert answer.name == "Subscribed", (i, answer)
    await drop(alice)


@spec
async def test_a_malformed_queue_group_name_is_an_invalid_option(broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    for bad in ("", "a b", "x" * 129, "a/b"):
        answer = await try_subscribe(alice, topic, queue_group=bad)
        assert answer.name == "Error" and answer["code"] == INVALID_OPTION, bad
    await drop(alice)


@spec
async def test_a_queue_group_gives_each_message_to_one_member(broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    bob = await connect(broker.port, certs.identity("bob"))
    members = [await subscribe(alice, topic, queue_group="workers"),
               await subscribe(bob, topic, queue_group="workers")]
    plain = await subscribe(bob, topic)
    stream = alice.new_stream()
    for i in range(10):
        alice.send(stream, publish(topic, bytes([i])))
    everything = [(await plain.next_frame())["payload"] for _ in range(10)]
    assert everything == [bytes([i]) for i in range(10)]
    # Round-robin among attached members with room: five each, nothing twice.
    shares = [[(await m.next_frame())["payload"] for _ in range(5)] for m in members]
    assert sorted(shares[0] + shares[1]) == everything
    await drop(alice)
    await drop(bob)


@spec
async def test_subscription_bounds_above_the_maximum_are_capped_not_refused(
        broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    for options in ({"max_queued_messages": 2**32 - 1}, {"max_queued_bytes": 2**40},
                    {"acks": [2**32 - 1, 2**32 - 1]}):
        answer = await try_subscribe(alice, f"{topic}.x", **options)
        assert answer.name == "Subscribed", (options, answer)
    await drop(alice)


@spec
async def test_queue_group_members_do_not_receive_retained_values(broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    stream = alice.new_stream()
    ack = await publish_and_wait(alice, stream, publish(topic, b"retained", retain=True,
                                                        message_id=fresh_id(), ack=True))
    assert ack.name == "PublishAck"
    member = await subscribe(alice, topic, queue_group="g1")
    alice.send(stream, publish(topic, b"live"))
    msg = await member.next_frame()
    assert (msg["payload"], msg["retained"]) == (b"live", False)
    await drop(alice)


@spec
async def test_a_retained_publish_to_a_new_topic_beyond_the_store_is_rejected(
        small_broker, certs):
    alice = await connect(small_broker.port, certs.identity("alice"))
    stream = alice.new_stream()

    async def retain(t, payload):
        return await publish_and_wait(alice, stream, publish(t, payload, retain=True,
                                                             message_id=fresh_id(), ack=True))

    assert (await retain("r.one", b"1")).name == "PublishAck"
    full = await retain("r.two", b"2")
    assert full.name == "PublishRejected" and full["code"] == 16  # RETAINED_STORE_FULL
    # A topic that already has a value may change it.
    assert (await retain("r.one", b"1 again")).name == "PublishAck"
    assert (await retain("r.one", b"")).name == "PublishAck"
    await drop(alice)


@spec
async def test_connections_beyond_the_identity_limit_are_closed(start_broker, certs):
    b = start_broker(env={"CASSINI_LIMITS_MAX_CONNECTIONS_PER_IDENTITY": "1"})
    alice = await connect(b.port, certs.identity("alice"))
    second = await open_connection(b.port, certs.identity("alice"))
    second.send(second.new_stream(), hello())
    await assert_closed_with(second, 42)  # TOO_MANY_CONNECTIONS_FOR_IDENTITY
    # Another identity is not affected.
    bob = await connect(b.port, certs.identity("bob"))
    await drop(bob)
    await drop(alice)


@spec
async def test_connections_beyond_the_broker_limit_are_closed(start_broker, certs):
    b = start_broker(env={"CASSINI_LIMITS_MAX_CONNECTIONS": "1"})
    alice = await connect(b.port, certs.identity("alice"))
    bob = await open_connection(b.port, certs.identity("bob"))
    bob.send(bob.new_stream(), hello())
    await assert_closed_with(bob, 41)  # TOO_MANY_CONNECTIONS
    await drop(alice)
