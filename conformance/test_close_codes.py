"""PROTOCOL.md, "Framing" and "Error codes": what closes a connection, and with which code."""

import struct

import pytest

from cassini_wire import (
    assert_closed_with,
    closed_by_broker,
    FRAME_TOO_LARGE,
    MALFORMED_FRAME,
    NORMAL,
    PROTOCOL_VIOLATION,
    SESSION_NOT_FOUND,
    connect,
    control_request,
    drop,
    encode,
    frame,
    open_connection,
    handshake,
    publish,
    subscribe,
)
from conftest import spec


async def closed_after(broker, certs, data: bytes, on_publish_stream: bool = False):
    conn = await connect(broker.port, certs.identity("alice"))
    stream = conn.new_stream() if on_publish_stream else conn.control_id
    conn.send_raw(stream, data)
    return await closed_by_broker(conn)


@spec
async def test_a_body_that_does_not_decode_closes_with_malformed_frame(broker, certs):
    closed = await closed_after(broker, certs, struct.pack(">I", 3) + b"\xc1\xc1\xc1")
    assert closed.is_application and closed.error_code == MALFORMED_FRAME


@spec
async def test_a_body_with_bytes_left_over_closes_with_malformed_frame(broker, certs):
    body = encode(frame("Ping", 1))[4:] + b"\x00"
    closed = await closed_after(broker, certs, struct.pack(">I", len(body)) + body)
    assert closed.is_application and closed.error_code == MALFORMED_FRAME


@spec
async def test_an_empty_frame_closes_with_malformed_frame(broker, certs):
    closed = await closed_after(broker, certs, struct.pack(">I", 0))
    assert closed.is_application and closed.error_code == MALFORMED_FRAME


@spec
async def test_a_malformed_publish_on_a_publish_stream_closes_with_malformed_frame(
        broker, certs):
    closed = await closed_after(broker, certs, struct.pack(">I", 2) + b"\x81\xa1",
                                on_publish_stream=True)
    assert closed.is_application and closed.error_code == MALFORMED_FRAME


@spec
async def test_a_stream_ending_inside_a_frame_is_malformed(broker, certs):
    conn = await connect(broker.port, certs.identity("alice"))
    stream = conn.new_stream()
    whole = encode(publish("conf.truncated", b"abc"))
    conn.send_raw(stream, whole[:-2], end=True)
    await assert_closed_with(conn, MALFORMED_FRAME)


@spec
async def test_a_declared_length_above_the_maximum_closes_with_frame_too_large(broker, certs):
    conn = await connect(broker.port, certs.identity("alice"))
    limit = conn.welcome["limits"]["max_frame_bytes"]
    # Only the 4-byte header is sent: the refusal must not wait for the body.
    conn.send_raw(conn.control_id, struct.pack(">I", limit + 1))
    await assert_closed_with(conn, FRAME_TOO_LARGE)


@spec
async def test_a_huge_declared_length_on_a_publish_stream_closes_with_frame_too_large(
        broker, certs):
    closed = await closed_after(broker, certs, struct.pack(">I", 0xFFFF_FFFF),
                                on_publish_stream=True)
    assert closed.is_application and closed.error_code == FRAME_TOO_LARGE


@spec
async def test_a_control_frame_on_a_publish_stream_is_a_protocol_violation(broker, certs):
    closed = await closed_after(broker, certs, encode(frame("Ping", 1)), on_publish_stream=True)
    assert closed.is_application and closed.error_code == PROTOCOL_VIOLATION


@spec
async def test_a_second_hello_is_a_protocol_violation(broker, certs):
    closed = await closed_after(broker, certs,
                                encode(frame("Hello", 1, None, None, [])))
    assert closed.is_application and closed.error_code == PROTOCOL_VIOLATION


@spec
async def test_finishing_the_control_stream_is_a_goodbye_that_ends_the_session(
        broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    session_id = alice.welcome["session_id"]
    await subscribe(alice, topic)
    alice.finish(alice.control_id)
    await assert_closed_with(alice, NORMAL)

    # The session ended at once: it cannot be resumed.
    again = await open_connection(broker.port, certs.identity("alice"))
    again.send(again.new_stream(), frame("Hello", 1, session_id, None, []))
    await assert_closed_with(again, SESSION_NOT_FOUND)


@spec
async def test_a_goodbye_first_routes_every_publish_stream_already_finished(
        broker, certs, topic):
    bob = await connect(broker.port, certs.identity("bob"))
    sub = await subscribe(bob, topic)
    alice = await connect(broker.port, certs.identity("alice"))
    stream = alice.new_stream()
    for i in range(49):
        alice.send(stream, publish(topic, bytes([i])))
    # The broker has taken the publish stream (see the next test for one it has not).
    assert (await sub.next_frame())["payload"] == bytes([0])
    alice.send(stream, publish(topic, bytes([49])), end=True)
    alice.finish(alice.control_id)
    assert (await alice.closed()).error_code == NORMAL
    alice.close_transport()
    got = [(await sub.next_frame())["payload"] for _ in range(49)]
    assert got == [bytes([i]) for i in range(1, 50)]
    pong = await control_request(bob, frame("Ping", 3))
    assert pong.name == "Pong"
    await drop(bob)


@spec
async def test_a_goodbye_in_the_same_flight_as_a_new_publish_stream_loses_nothing(
        broker, certs, topic):
    bob = await connect(broker.port, certs.identity("bob"))
    lost = []
    for round in range(20):
        sub = await subscribe(bob, f"{topic}.{round}")
        alice = await connect(broker.port, certs.identity("alice"))
        stream = alice.new_stream()
        for i in range(10):
            alice.send(stream, publish(f"{topic}.{round}", bytes([i])))
        alice.finish(stream)
        alice.finish(alice.control_id)
        assert (await alice.closed()).error_code == NORMAL
        alice.close_transport()
        # Every publish of the round arrives, then a marker published after the goodbye.
        marker = bob.new_stream()
        bob.send(marker, publish(f"{topic}.{round}", b"end"))
        got = []
        while not got or got[-1] != b"end":
            got.append((await sub.next_frame())["payload"])
        if got != [bytes([i]) for i in range(10)] + [b"end"]:
            lost.append((round, len(got) - 1))
    await drop(bob)
    assert not lost, f"rounds that lost publishes (round, received of 10): {lost}"


@spec
async def test_resetting_the_control_stream_is_a_protocol_violation_not_a_goodbye(
        broker, certs):
    alice = await connect(broker.port, certs.identity("alice"))
    session_id = alice.welcome["session_id"]
    alice.reset(alice.control_id, 0)
    await assert_closed_with(alice, PROTOCOL_VIOLATION)
    # The session only detached: it can be resumed.
    again = await open_connection(broker.port, certs.identity("alice"))
    welcome = await handshake(again, resume=session_id)
    assert welcome["resumed"] is True and welcome["session_id"] == session_id
    again.close_transport()


@spec
async def test_stopping_the_brokers_side_of_the_control_stream_is_a_protocol_violation(
        broker, certs):
    alice = await connect(broker.port, certs.identity("alice"))
    alice.stop(alice.control_id, 0)
    # PROTOCOL.md says stopping the broker's side of the control stream closes the connection
    # with PROTOCOL_VIOLATION; the broker notices only when it next writes on that stream (here:
    # the Pong), and its reason says "control stream reset by the client".
    alice.send(alice.control_id, frame("Ping", 1))
    await assert_closed_with(alice, PROTOCOL_VIOLATION)
