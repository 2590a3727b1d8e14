"""A gap is an item the application sees: `sub.events()` yields it between messages."""

from __future__ import annotations

import asyncio

import cassini
from conftest import connect, eventually, run_async


@run_async
async def test_overflow_gap_is_announced(broker, topic):
    # A one-message client buffer and a ten-message broker queue: a burst of 12 MiB the
    # subscriber does not read fills QUIC's flow-control window, then the broker's queue
    # overflows: it drops the oldest and announces the gap.
    async with await connect(broker, subscription_buffer=1) as client:
        sub = await client.subscribe(f"{topic}.g", overflow="drop-oldest", max_queued_messages=10)
        total = 400
        pad = b"." * 32 * 1024
        for i in range(total):
            await client.publish(f"{topic}.g", str(i).encode() + b":" + pad)
        await client.flush()
        items = []

        async def read():
            async for item in sub.events():
                items.append(item)

        reader = asyncio.create_task(read())
        await eventually(
            lambda: any(isinstance(i, cassini.Message) and i.payload.startswith(b"%d:" % (total - 1))
                        for i in items), 10, "the last message")
        reader.cancel()
    gaps = [i for i in items if isinstance(i, cassini.Gap)]
    messages = [i for i in items if isinstance(i, cassini.Message)]
    assert gaps, "a gap was announced"
    gap = gaps[0]
    assert gap.kind == "missed"
    assert gap.reason == "overflow"
    assert gap.first is not None and gap.last >= gap.first
    assert gap.missed == gap.last - gap.first + 1
    # Messages and gaps together account for every sequence, in order.
    covered = len(messages) + sum(g.missed for g in gaps)
    assert covered == total
    sequences = [m.sequence for m in messages]
    assert sequences == sorted(sequences)


@run_async
async def test_plain_iteration_skips_gaps_and_counts_them(broker, topic):
    async with await connect(broker, subscription_buffer=1) as client:
        sub = await client.subscribe(f"{topic}.g", overflow="drop-oldest", max_queued_messages=5)
        total = 400
        pad = b"." * 32 * 1024
        for i in range(total):
            await client.publish(f"{topic}.g", str(i).encode() + b":" + pad)
        await client.flush()
        got = []

        async def read():
            async for msg in sub:
                got.append(msg)

        reader = asyncio.create_task(read())
        await eventually(lambda: got and got[-1].payload.startswith(b"%d:" % (total - 1)), 10,
                         "the last message")
        reader.cancel()
        taken = sub.take_gaps()
        assert all(isinstance(m, cassini.Message) for m in got)
        assert sub.gaps > 0 and sub.dropped > 0
        assert len(got) + sub.gaps == total
    assert taken and all(g.kind == "missed" for g in taken)
    assert sum(g.missed for g in taken) == len(range(total)) - len(got)
