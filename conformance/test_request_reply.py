"""PROTOCOL.md, "reply_to", "Reply inboxes" and `NoResponders`."""

import os

from cassini_wire import (
    NOT_AUTHORIZED,
    barrier,
    connect,
    drop,
    fresh_id,
    publish,
    publish_and_wait,
    subscribe,
    try_subscribe,
)
from conftest import spec


def inbox_of(conn) -> str:
    """The client's inbox as PROTOCOL.md describes it: `_INBOX.<identity token>.<16 hex>`."""
    token = "".join(
        chr(b) if chr(b).isascii() and (chr(b).isalnum() or chr(b) in "-_~") else f"%{b:02X}"
        for b in conn.welcome["identity"].encode()
    )
    return f"_INBOX.{token}.{os.urandom(8).hex()}"


@spec
async def test_a_request_is_delivered_with_its_reply_to_and_the_reply_reaches_the_inbox(
        broker, certs, topic):
    service = await connect(broker.port, certs.identity("alice"))
    requests = await subscribe(service, f"{topic}.echo")
    client = await connect(broker.port, certs.identity("bob"))
    inbox = inbox_of(client)
    replies = await subscribe(client, f"{inbox}.>")

    stream = client.new_stream()
    client.send(stream, publish(f"{topic}.echo", b"ping?", reply_to=f"{inbox}.1"))
    request = await requests.next_frame()
    assert request["reply_to"] == f"{inbox}.1" and request["payload"] == b"ping?"

    answer_stream = service.new_stream()
    service.send(answer_stream, publish(request["reply_to"], b"pong!"))
    reply = await replies.next_frame()
    assert (reply["topic"], reply["payload"]) == (f"{inbox}.1", b"pong!")
    await drop(service)
    await drop(client)


@spec
async def test_a_request_nobody_subscribes_to_is_answered_no_responders(broker, certs, topic):
    client = await connect(broker.port, certs.identity("bob"))
    inbox = inbox_of(client)
    await subscribe(client, f"{inbox}.>")
    stream = client.new_stream()
    answer = await publish_and_wait(client, stream,
                                    publish(f"{topic}.nobody", b"?", reply_to=f"{inbox}.7"))
    assert answer.name == "NoResponders" and answer["reply_to"] == f"{inbox}.7"
    await drop(client)


@spec
async def test_a_request_whose_reply_to_its_publisher_could_not_read_is_not_authorized(
        broker, certs, topic):
    service = await connect(broker.port, certs.identity("alice"))
    requests = await subscribe(service, f"{topic}.svc")
    mallory = await connect(broker.port, certs.identity("bob"))
    stream = mallory.new_stream()
    mid = fresh_id()
    answer = await publish_and_wait(
        mallory, stream,
        publish(f"{topic}.svc", b"?", reply_to="_INBOX.alice.0123456789abcdef.1",
                message_id=mid, ack=True))
    assert answer.name == "PublishRejected" and answer["code"] == NOT_AUTHORIZED
    assert answer["message_id"] == mid
    # Routed nowhere: the service's next message is the one after it.
    mallory.send(stream, publish(f"{topic}.svc", b"plain"))
    assert (await requests.next_frame())["payload"] == b"plain"
    await drop(service)
    await drop(mallory)


@spec
async def test_inboxes_belong_to_their_identity(broker, certs, topic):
    bob = await connect(broker.port, certs.identity("bob"))
    denied = await try_subscribe(bob, "_INBOX.alice.>")
    assert denied.name == "Error" and denied["code"] == NOT_AUTHORIZED
    # A filter whose first token is a wildcard does not match reply inboxes.
    everything = await subscribe(bob, ">")
    alice = await connect(broker.port, certs.identity("alice"))
    inbox = inbox_of(alice)
    mine = await subscribe(alice, f"{inbox}.>")
    stream = bob.new_stream()
    bob.send(stream, publish(f"{inbox}.1", b"reply"))
    bob.send(stream, publish(f"{topic}.visible", b"plain"))
    await barrier(bob, stream, f"{topic}.barrier")
    assert (await mine.next_frame())["payload"] == b"reply"
    # `>` on the shared broker sees other tests' topics too: look for ours only.
    seen = []
    while b"plain" not in seen:
        msg = await everything.next_frame()
        assert not msg["topic"].startswith("_INBOX."), msg
        if msg["topic"].startswith(topic):
            seen.append(msg["payload"])
    await drop(alice)
    await drop(bob)
