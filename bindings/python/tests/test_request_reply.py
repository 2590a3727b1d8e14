"""Requests, services (`serve`, alone and in a queue group) and no-responders."""

from __future__ import annotations

import asyncio

import pytest

import cassini
from conftest import connect, run_async


async def echo(responder, tag: bytes = b""):
    async for request in responder:
        await request.respond(tag + request.payload, headers={"served-by": tag.decode() or "x"})


@run_async
async def test_request_reply(broker, topic):
    async with await connect(broker, "alice") as server, await connect(broker, "bob") as client:
        responder = await server.serve(f"{topic}.echo")
        task = asyncio.create_task(echo(responder))
        reply = await client.request(f"{topic}.echo", b"ping", timeout=5.0)
        task.cancel()
    assert reply.payload == b"ping"
    assert reply.headers == {"served-by": "x"}


@run_async
async def test_no_responders_raises_at_once(broker, topic):
    async with await connect(broker) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(cassini.NoResponders) as raised:
            await client.request(f"{topic}.nobody", b"ping", timeout=10.0)
        assert loop.time() - started < 5.0, "answered at once, not at the timeout"
    assert isinstance(raised.value, cassini.CassiniError)
    assert f"{topic}.nobody" in str(raised.value)


@run_async
async def test_request_timeout(broker, topic):
    async with await connect(broker) as client:
        silent = await client.subscribe(f"{topic}.silent")  # a subscriber that never answers
        with pytest.raises(cassini.Timeout):
            await client.request(f"{topic}.silent", b"ping", timeout=0.3)
        silent.close()


@run_async
async def test_serve_in_a_queue_group(broker, topic):
    async with await connect(broker, "alice") as server, await connect(broker, "bob") as client:
        one = await server.serve(f"{topic}.svc", queue="svc")
        two = await server.serve(f"{topic}.svc", queue="svc")
        tasks = [asyncio.create_task(echo(one, b"1:")), asyncio.create_task(echo(two, b"2:"))]
        replies = [await client.request(f"{topic}.svc", b"r", timeout=5.0) for _ in range(20)]
        for task in tasks:
            task.cancel()
    served = {reply.payload for reply in replies}
    assert served <= {b"1:r", b"2:r"}
    assert served == {b"1:r", b"2:r"}, "both members served"
