"""At least once across a broker restart in disk mode, connection state changes, and
resuming a session from a new client."""

from __future__ import annotations

import asyncio

import pytest

import cassini
from conftest import connect, eventually, run_async


@pytest.fixture(scope="module")
def disk_broker(start_broker, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    return start_broker("--storage", "disk", "--data-dir", str(data))


@run_async
async def test_at_least_once_across_a_broker_restart(disk_broker, topic):
    name = f"worker-{topic.rsplit('x', 1)[1]}"
    first = await connect(disk_broker, "alice", session_name=name)
    sub = await first.subscribe(f"{topic}.jobs", ack=True)
    publisher = await connect(disk_broker, "bob")
    await publisher.publish(f"{topic}.jobs", b"job-1", ack=True)
    msg = await sub.next(timeout=5)
    assert msg.payload == b"job-1"
    msg.ack()
    await first.ping()  # the acknowledgement went out before this round trip
    await first.leave()  # the session (and its subscription) stays on the broker
    for i in (2, 3):
        await publisher.publish(f"{topic}.jobs", f"job-{i}", ack=True)
    await publisher.close()

    disk_broker.kill()  # a crash: only what is on disk survives
    disk_broker.start()

    second = await connect(disk_broker, "alice", session_name=name)
    try:
        assert second.session_id == first.session_id, "the session survived the restart"
        assert [f for _, f in second.unclaimed_subscriptions()] == [f"{topic}.jobs"]
        sub = await second.subscribe(f"{topic}.jobs", ack=True)
        got = []
        while not got or got[-1].payload != b"job-3":
            msg = await sub.next(timeout=10)
            msg.ack()
            got.append(msg)
    finally:
        await second.close()
    payloads = [m.payload for m in got]
    assert payloads[-2:] == [b"job-2", b"job-3"]
    # job-1 was acknowledged; if it comes again it says so.
    assert all(m.redelivered for m in got if m.payload == b"job-1")


@run_async
async def test_state_changes_through_a_restart(start_broker, tmp_path_factory, topic):
    broker = start_broker("--storage", "disk", "--data-dir",
                          str(tmp_path_factory.mktemp("data")))
    client = await connect(broker)
    sub = await client.subscribe(f"{topic}.s")
    states = []

    async def watch():
        async for state in client.state_changes():
            states.append(state)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.05)
    broker.kill()
    broker.start()
    await eventually(lambda: any(s.kind == "connected" for s in states), 30, "reconnected")
    assert states[0].kind == "reconnecting" and states[0].attempt >= 1
    connected = next(s for s in states if s.kind == "connected")
    assert connected.resumed, "the session was resumed"
    assert client.reconnects >= 1
    await client.publish(f"{topic}.s", b"after restart")
    assert (await sub.next(timeout=10)).payload == b"after restart"
    await client.close()
    await asyncio.wait_for(watcher, 10)
    assert states[-1].kind == "disconnected"
    broker.stop()


@run_async
async def test_a_first_connect_told_to_retry_waits_for_a_broker_that_starts_later(
        start_broker, topic):
    broker = start_broker()
    broker.stop()
    with pytest.raises(cassini.CassiniError):
        await connect(broker, connect_timeout=5)
    pending = asyncio.ensure_future(connect(broker, retry_first_connect=True))
    broker.start()
    client = await asyncio.wait_for(pending, 20)
    sub = await client.subscribe(f"{topic}.early")
    await client.publish(f"{topic}.early", b"hello")
    assert (await sub.next(timeout=10)).payload == b"hello"
    await client.close()
    broker.stop()


@run_async
async def test_ack_of_an_earlier_message_does_not_acknowledge_the_one_held(broker, topic):
    name = f"acker-{topic.rsplit('x', 1)[1]}"
    first = await connect(broker, "alice", session_name=name)
    sub = await first.subscribe(f"{topic}.jobs", ack=True)
    publisher = await connect(broker, "bob")
    for i in (1, 2):
        await publisher.publish(f"{topic}.jobs", f"job-{i}", ack=True)
    await publisher.close()
    one = await sub.next(timeout=5)
    two = await sub.next(timeout=5)  # asking for it acknowledged job-1
    assert (one.payload, two.payload) == (b"job-1", b"job-2")
    one.ack()  # already acknowledged: job-2, still held, is not
    await first.ping()
    await first.leave()

    second = await connect(broker, "alice", session_name=name)
    try:
        sub = await second.subscribe(f"{topic}.jobs", ack=True)
        again = await sub.next(timeout=10)
        if again.payload == b"job-1":  # its acknowledgement may not have gone out yet
            again = await sub.next(timeout=10)
        assert (again.payload, again.redelivered) == (b"job-2", True)
    finally:
        await second.close()
