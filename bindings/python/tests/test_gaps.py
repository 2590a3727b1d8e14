"""A gap is an item the application sees: `sub.events()` yields it between messages."""

from __future__ import annotations

import asyncio

import cassini
from conftest import connect, eventually, run_async

# The flood: 400 messages of 32 KiB each, numbered "0:", "1:", ... so the last one is known.
FLOOD = 400
PAD = b"." * 32 * 1024
LAST = b"%d:" % (FLOOD - 1)


async def flooded(client, subject: str, max_queued: int):
    """A subscription to `subject` whose broker queue holds `max_queued` messages, flooded
    before anything is read: with a one-message client buffer the burst fills QUIC's
    flow-control window, then the broker's queue overflows, drops the oldest and announces
    the gap."""
    sub = await client.subscribe(subject, overflow="drop-oldest", max_queued_messages=max_queued)
    for i in range(FLOOD):
        await client.publish(subject, str(i).encode() + b":" + PAD)
    await client.flush()
    return sub


async def read_until_last(stream) -> list:
    """Everything `stream` yields until the flood's last message has arrived (within 10 s)."""
    items = []

    async def read():
        async for item in stream:
            items.append(item)

    reader = asyncio.create_task(read())
    await eventually(
        lambda: any(isinstance(i, cassini.Message) and i.payload.startswith(LAST) for i in items),
        10, "the last message")
    reader.cancel()
    return items


@run_async
async def test_overflow_gap_is_announced(broker, topic):
    async with await connect(broker, subscription_buffer=1) as client:
        sub = await flooded(client, f"{topic}.g", max_queued=10)
        items = await read_until_last(sub.events())
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
    assert covered == FLOOD
    sequences = [m.sequence for m in messages]
    assert sequences == sorted(sequences)


@run_async
async def test_plain_iteration_skips_gaps_and_counts_them(broker, topic):
    async with await connect(broker, subscription_buffer=1) as client:
        sub = await flooded(client, f"{topic}.g", max_queued=5)
        got = await read_until_last(sub)
        taken = sub.take_gaps()
        assert all(isinstance(m, cassini.Message) for m in got)
        assert sub.gaps > 0 and sub.dropped > 0
        assert len(got) + sub.gaps == FLOOD
    assert taken and all(g.kind == "missed" for g in taken)
    assert sum(g.missed for g in taken) == len(range(FLOOD)) - len(got)
