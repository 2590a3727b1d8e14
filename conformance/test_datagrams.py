"""PROTOCOL.md, "delivery" of SubscribeOptions and "QUIC datagrams"."""

from cassini_wire import (
    DATAGRAMS_UNSUPPORTED,
    INVALID_OPTION,
    barrier,
    closed_by_broker,
    connect,
    drop,
    handshake,
    open_connection,
    publish,
    subscribe,
    try_subscribe,
)
from conftest import spec


def datagram(oversize):
    return {"Datagram": {"oversize": oversize}}


@spec
async def test_a_datagram_subscription_delivers_each_message_in_a_datagram_of_its_own(
        broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    sub = await subscribe(alice, topic, delivery=datagram("Drop"))
    stream = alice.new_stream()
    alice.send(stream, publish(topic, b"one", message_id=5))
    alice.send(stream, publish(topic, b"two"))
    # next_datagram checks the 4-byte length prefix against the datagram's size.
    d1 = await alice.next_datagram()
    d2 = await alice.next_datagram()
    assert d1.name == "Datagram" and d1["subscription"] == sub.id
    # The delivery inside has the fields of `Message`.
    m1, m2 = d1["message"], d2["message"]
    assert (m1["sequence"], m1["topic"], m1["payload"], m1["message_id"]) == (
        1, topic, b"one", 5)
    assert (m2["sequence"], m2["payload"]) == (2, b"two")
    await drop(alice)


@spec
async def test_a_message_too_large_for_a_datagram_is_a_gap_under_drop(broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    sub = await subscribe(alice, topic, delivery=datagram("Drop"))
    stream = alice.new_stream()
    alice.send(stream, publish(topic, b"x" * 4000))
    await barrier(alice, stream, f"{topic}x.barrier")
    alice.send(stream, publish(topic, b"small"))
    gap = await sub.next_frame()
    assert (gap.name, gap["subscription"], gap["from"], gap["to"], gap["reason"]) == (
        "Gap", sub.id, 1, 1, "TooLargeForDatagram")
    small = await alice.next_datagram()
    assert small["message"]["sequence"] == 2
    await drop(alice)


@spec
async def test_a_message_too_large_for_a_datagram_goes_on_the_stream_under_stream(
        broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    sub = await subscribe(alice, topic, delivery=datagram("Stream"))
    stream = alice.new_stream()
    alice.send(stream, publish(topic, b"y" * 4000))
    msg = await sub.next_frame()
    assert (msg.name, msg["sequence"], len(msg["payload"])) == ("Message", 1, 4000)
    await drop(alice)


@spec
async def test_a_datagram_subscription_with_acks_is_refused_with_invalid_option(
        broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    answer = await try_subscribe(alice, topic, acks=[None, None], delivery=datagram("Drop"))
    assert answer.name == "Error" and answer["code"] == INVALID_OPTION
    await drop(alice)


@spec
async def test_a_datagram_subscription_without_negotiated_datagrams_is_refused(
        broker, certs, topic):
    conn = await open_connection(broker.port, certs.identity("alice"), datagrams=False)
    await handshake(conn)
    answer = await try_subscribe(conn, topic, delivery=datagram("Drop"))
    assert answer.name == "Error" and answer["code"] == DATAGRAMS_UNSUPPORTED
    await drop(conn)


async def closed_after_datagram(broker, certs, data):
    from cassini_wire import connect as _connect

    alice = await _connect(broker.port, certs.identity("alice"))
    alice.send_datagram(data)
    return await closed_by_broker(alice)


@spec
async def test_a_datagram_that_does_not_decode_closes_with_malformed_frame(broker, certs):
    import struct

    closed = await closed_after_datagram(broker, certs, struct.pack(">I", 3) + b"\xc1\xc1\xc1")
    assert closed.is_application and closed.error_code == 2  # MALFORMED_FRAME


@spec
async def test_a_datagram_holding_another_frame_is_a_protocol_violation(broker, certs):
    from cassini_wire import encode, frame

    closed = await closed_after_datagram(broker, certs, encode(frame("Ping", 1)))
    assert closed.is_application and closed.error_code == 1  # PROTOCOL_VIOLATION


@spec
async def test_a_datagram_publish_without_its_length_prefix_is_refused(broker, certs, topic):
    from cassini_wire import encode

    # PROTOCOL.md says a datagram that does not decode closes the connection with
    # MALFORMED_FRAME; without the length prefix the broker reads the body's first four bytes as
    # a length and closes with FRAME_TOO_LARGE.
    closed = await closed_after_datagram(broker, certs, encode(publish(topic, b"x"))[4:])
    assert closed.is_application and closed.error_code == 3  # FRAME_TOO_LARGE


@spec
async def test_a_datagram_subscription_says_on_its_stream_how_far_it_has_sent_once_quiet(
        broker, certs, topic):
    alice = await connect(broker.port, certs.identity("alice"))
    sub = await subscribe(alice, topic, delivery=datagram("Drop"))
    stream = alice.new_stream()
    alice.send(stream, publish(topic, b"one"))
    alice.send(stream, publish(topic, b"two"))
    await alice.next_datagram()
    await alice.next_datagram()
    # A receiver counts a sequence up to `through` that it has not received as lost (a late
    # datagram still arrives), even when nothing follows on the topic.
    sent = await sub.next_frame()
    assert (sent.name, sent["subscription"], sent["through"]) == ("DatagramsSent", sub.id, 2)
    await drop(alice)
