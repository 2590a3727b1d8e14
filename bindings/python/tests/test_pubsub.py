"""Publish and subscribe: payloads and headers, wildcards, queue groups, datagrams, `async
with`, connection state."""

from __future__ import annotations

import asyncio

import cassini
from conftest import connect, eventually, run_async


@run_async
async def test_publish_subscribe_with_headers(broker, topic):
    async with await connect(broker) as client:
        sub = await client.subscribe(f"{topic}.>", ack=False, overflow="drop-oldest")
        await client.publish(f"{topic}.hello", b"hi", headers={"trace": "1"})
        await client.publish(f"{topic}.hello", "text")
        first = await sub.next(timeout=5)
        second = await sub.next(timeout=5)
    assert first.topic == f"{topic}.hello"
    assert first.payload == b"hi"
    assert first.headers == {"trace": "1"}
    assert first.sequence == 1 and second.sequence == 2
    assert not first.redelivered
    assert second.payload == b"text"
    assert client.is_closed
    assert client.state.kind == "disconnected"


@run_async
async def test_wildcards(broker, topic):
    async with await connect(broker) as client:
        star = await client.subscribe(f"{topic}.*.temp")
        tail = await client.subscribe(f"{topic}.>")
        for t in (f"{topic}.a.temp", f"{topic}.b.temp", f"{topic}.a.humidity", f"{topic}.a.b.temp"):
            await client.publish(t, t)
        got_star = [(await star.next(timeout=5)).topic for _ in range(2)]
        got_tail = [(await tail.next(timeout=5)).topic for _ in range(4)]
        await client.flush()
        # Nothing else matched the single-token wildcard.
        try:
            extra = await star.next(timeout=0.3)
        except asyncio.TimeoutError:
            extra = None
    # Order holds per topic; each topic is its own publish stream.
    assert sorted(got_star) == sorted([f"{topic}.a.temp", f"{topic}.b.temp"])
    assert sorted(got_tail) == sorted([f"{topic}.a.temp", f"{topic}.b.temp",
                                       f"{topic}.a.humidity", f"{topic}.a.b.temp"])
    assert extra is None


@run_async
async def test_queue_group_shares_messages(broker, topic):
    a = await connect(broker, "alice")
    b = await connect(broker, "bob")
    try:
        sub_a = await a.subscribe(f"{topic}.work", queue="workers")
        sub_b = await b.subscribe(f"{topic}.work", queue="workers")
        total = 200
        for i in range(total):
            await a.publish(f"{topic}.work", str(i))
        seen = {"a": [], "b": []}

        async def drain(name, sub):
            async for msg in sub:
                seen[name].append(int(msg.payload))

        tasks = [asyncio.create_task(drain("a", sub_a)), asyncio.create_task(drain("b", sub_b))]
        await eventually(lambda: len(seen["a"]) + len(seen["b"]) >= total, 10, "all delivered")
        for task in tasks:
            task.cancel()
    finally:
        await a.close()
        await b.close()
    assert sorted(seen["a"] + seen["b"]) == list(range(total)), "each message to one member"
    assert seen["a"] and seen["b"], "both members got some"


@run_async
async def test_datagram_subscription(broker, topic):
    async with await connect(broker) as client:
        sub = await client.subscribe(f"{topic}.d", datagram=True)
        received = []

        async def read():
            async for msg in sub:
                received.append(msg.payload)

        reader = asyncio.create_task(read())
        # Datagrams may be lost: publish until one arrives.
        for i in range(200):
            await client.publish(f"{topic}.d", b"dgram")
            if received:
                break
            await asyncio.sleep(0.02)
        reader.cancel()
    assert received and received[0] == b"dgram"


@run_async
async def test_acknowledged_publish_returns_a_receipt(broker, topic):
    async with await connect(broker) as client:
        sub = await client.subscribe(f"{topic}.acked")
        receipt = await client.publish(f"{topic}.acked", b"x", ack=True, message_id=42)
        assert receipt.message_id == 42 and receipt.duplicate is False
        again = await client.publish(f"{topic}.acked", b"x", ack=True, message_id=42)
        assert again.duplicate is True, "the broker drops a repeated message id"
        msg = await sub.next(timeout=5)
        assert msg.message_id == 42


@run_async
async def test_invalid_topic_is_a_value_error(broker):
    async with await connect(broker) as client:
        try:
            await client.publish("bad..topic", b"x")
        except cassini.InvalidTopic as error:
            assert isinstance(error, ValueError)
        else:
            raise AssertionError("an invalid topic was accepted")


@run_async
async def test_unsubscribe_ends_iteration(broker, topic):
    async with await connect(broker) as client:
        sub = await client.subscribe(f"{topic}.u")
        await client.publish(f"{topic}.u", b"last")
        assert (await sub.next(timeout=5)).payload == b"last"
        await sub.unsubscribe()
        rest = [msg async for msg in sub]
    assert rest == []
