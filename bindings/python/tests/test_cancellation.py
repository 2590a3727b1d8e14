"""Cancelling a Python task leaves nothing stuck on the Rust side: the subscription is free
again at once, no message is lost, and the client still closes promptly."""

from __future__ import annotations

import asyncio

import pytest

import cassini
from conftest import connect, eventually, run_async


@run_async
async def test_cancelled_read_releases_the_subscription(broker, topic):
    async with await connect(broker) as client:
        sub = await client.subscribe(f"{topic}.c")
        for _ in range(20):
            reader = asyncio.create_task(sub.__anext__())
            await asyncio.sleep(0.01)  # waiting in Rust now
            assert sub.reading, "a read in Rust holds the subscription"
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            # The Rust future was dropped: the subscription is free again.
            await eventually(lambda: not sub.reading, 5, "the subscription released")
        await client.publish(f"{topic}.c", b"after")
        msg = await sub.next(timeout=5)
    assert msg.payload == b"after"


@run_async
async def test_cancelled_waits_lose_no_message(broker, topic):
    async with await connect(broker) as client:
        sub = await client.subscribe(f"{topic}.n")
        total = 300

        async def publish():
            for i in range(total):
                await client.publish(f"{topic}.n", str(i))
                if i % 10 == 0:
                    await asyncio.sleep(0)

        publisher = asyncio.create_task(publish())
        got = []
        while len(got) < total:
            try:
                # Short timeouts cancel reads over and over, some just as messages arrive.
                got.append(await asyncio.wait_for(sub.__anext__(), 0.001))
            except asyncio.TimeoutError:
                pass
        await publisher
    assert [int(m.payload) for m in got] == list(range(total))


@run_async
async def test_cancelled_request_and_close(broker, topic):
    async with await connect(broker) as client:
        silent = await client.subscribe(f"{topic}.r")  # never answers
        request = asyncio.create_task(client.request(f"{topic}.r", b"?", timeout=30))
        await asyncio.sleep(0.1)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        # The client is not held up by the abandoned request.
        assert await client.ping() >= 0
        reply_task = asyncio.create_task(client.request(f"{topic}.r", b"?", timeout=30))
        await asyncio.sleep(0.05)
        reply_task.cancel()
        silent.close()
        await asyncio.wait_for(client.close(), 10)
    assert client.is_closed


@run_async
async def test_cancelled_state_wait(broker):
    client = await connect(broker)
    waiter = asyncio.create_task(client.state_changes().__anext__())
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    changes = client.state_changes()
    closing = asyncio.create_task(client.close())
    state = await asyncio.wait_for(changes.__anext__(), 10)
    await closing
    assert state.kind == "disconnected" and state.disconnect_reason == "closed"


@run_async
async def test_unsubscribe_and_close_end_a_read_waiting_in_another_task(broker, topic):
    async with await connect(broker) as client:

        async def drain(iterable):
            return [item async for item in iterable]

        # unsubscribe() from one task while another iterates a quiet topic.
        sub = await client.subscribe(f"{topic}.u")
        consumer = asyncio.create_task(drain(sub))
        await eventually(lambda: sub.reading, 5, "the consumer waiting in Rust")
        await asyncio.wait_for(sub.unsubscribe(), 10)
        assert await asyncio.wait_for(consumer, 10) == []

        # close() likewise ends the iteration at once.
        closing = await client.subscribe(f"{topic}.c")
        consumer = asyncio.create_task(drain(closing))
        await eventually(lambda: closing.reading, 5, "the consumer waiting in Rust")
        closing.close()
        assert await asyncio.wait_for(consumer, 10) == []

        # A responder's iteration too.
        responder = await client.serve(f"{topic}.r")
        serving = asyncio.create_task(drain(responder))
        await asyncio.sleep(0)
        await asyncio.wait_for(responder.unsubscribe(), 10)
        assert await asyncio.wait_for(serving, 10) == []
        responder = await client.serve(f"{topic}.r2")
        serving = asyncio.create_task(drain(responder))
        await asyncio.sleep(0)
        responder.close()
        assert await asyncio.wait_for(serving, 10) == []


@run_async
async def test_two_state_iterators_both_see_the_close(broker):
    client = await connect(broker)
    first, second = client.state_changes(), client.state_changes()
    waiting = [asyncio.create_task(changes.__anext__()) for changes in (first, second)]
    await client.close()
    for task in waiting:
        state = await asyncio.wait_for(task, 10)
        assert state.kind == "disconnected"
