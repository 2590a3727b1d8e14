"""Cassini for Python: the Rust client (`cassini-client`) over QUIC, with an asyncio API.

    client = await cassini.connect("127.0.0.1:7700", ca="certs/ca.crt",
                                   cert="certs/client-dev.crt", key="certs/client-dev.key")
    await client.publish("demo.hello", b"hi", headers={"trace": "1"})
    sub = await client.subscribe("demo.>", ack=False, overflow="drop-oldest")
    async for msg in sub:
        print(msg.topic, msg.payload, msg.headers, msg.sequence, msg.redelivered)
    reply = await client.request("svc.echo", b"ping", timeout=2.0)
    await client.close()

`cassini.sync` has the same client for scripts without asyncio. docs/PYTHON.md is the
reference.
"""

from __future__ import annotations

import atexit
from collections import deque
from typing import (
    AsyncIterator, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union,
)

from . import _native
from ._errors import *  # noqa: F401,F403
from ._errors import __all__ as _errors_all
from ._native import ConnectionState, Gap, Message, PublishReceipt, Request

# Before the interpreter finalizes, no runtime thread may attach to it any more.
atexit.register(_native.shutdown)

Payload = Union[bytes, bytearray, memoryview, str]
Headers = Union[Mapping[str, str], Sequence[Tuple[str, str]]]

#: Most messages one crossing from Rust hands a subscription's Python buffer.
DEFAULT_BATCH = 512


def _payload(payload: Payload) -> bytes:
    if isinstance(payload, str):
        return payload.encode()
    return bytes(payload)


def _headers(headers: Optional[Headers]) -> Optional[List[Tuple[str, str]]]:
    if headers is None:
        return None
    if isinstance(headers, Mapping):
        return [(str(k), str(v)) for k, v in headers.items()]
    return [(str(k), str(v)) for k, v in headers]


async def connect(
    address: Union[str, Iterable[str]] = "127.0.0.1:7700",
    *,
    ca: Optional[str] = None,
    cert: Optional[str] = None,
    key: Optional[str] = None,
    cert_dir: Optional[str] = None,
    name: str = "dev",
    server_name: Optional[str] = None,
    client_name: Optional[str] = None,
    session_name: Optional[str] = None,
    resume_session: Optional[str] = None,
    reconnect: bool = True,
    reconnect_give_up_after: Optional[float] = None,
    connect_timeout: Optional[float] = None,
    subscription_buffer: Optional[int] = None,
    ack_timeout: Optional[float] = None,
    retry_first_connect: bool = False,
) -> "Client":
    """Connects to the broker over QUIC with mutual TLS.

    `address` is `"host:port"` or several (a list, or `"a:7700,b:7700"`), tried in order, then
    the cluster's client addresses learned from each broker's `Welcome`: a client of a cluster
    node that dies reconnects to another node (with a new session, each subscription
    reporting a `SessionLost` gap). The certificates are `ca` (the CA
    that issued the broker's certificate) and `cert`/`key` (this client's), or `cert_dir` with
    `ca.crt` and `client-NAME.crt`/`.key` (`name`, default `dev`). `session_name` gives the
    session a stable name for this identity and `resume_session` resumes a known session id:
    a later process takes its subscriptions up (see `Client.leave`). With `reconnect` (the
    default) a lost connection is reconnected and the session resumed; `state_changes()`
    reports each step. With `retry_first_connect` the first connection is tried again, on the
    same schedule, while it fails for a reason that may pass (a broker not there yet).
    """
    addresses = [address] if isinstance(address, str) else list(address)
    native = await _native.connect(
        addresses, ca=ca, cert=cert, key=key, cert_dir=cert_dir, name=name,
        server_name=server_name, client_name=client_name, session_name=session_name,
        resume_session=resume_session, reconnect=reconnect,
        reconnect_give_up_after=reconnect_give_up_after, connect_timeout=connect_timeout,
        subscription_buffer=subscription_buffer, ack_timeout=ack_timeout,
        retry_first_connect=retry_first_connect,
    )
    return Client(native)


class Client:
    """A session with a Cassini broker. Use `async with` or call `close()`."""

    def __init__(self, native: "_native.NativeClient") -> None:
        self._native = native

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if not self._native.is_closed():
            await self.close()

    async def publish(
        self,
        topic: str,
        payload: Payload = b"",
        *,
        headers: Optional[Headers] = None,
        retain: bool = False,
        reply_to: Optional[str] = None,
        ack: bool = False,
        message_id: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> Optional[PublishReceipt]:
        """Publishes `payload` to `topic`.

        Returns once the message is queued (None). With `ack=True` waits until the broker has
        routed it and returns its `PublishReceipt` (sent again after a reconnect until
        acknowledged; `timeout` seconds, default the client's `ack_timeout`).
        """
        return await self._native.publish(
            topic, _payload(payload), _headers(headers), retain, reply_to, ack, message_id,
            timeout,
        )

    async def publish_datagram(self, topic: str, payload: Payload) -> None:
        """Publishes in one QUIC datagram: fire and forget, never retransmitted."""
        await self._native.publish_datagram(topic, _payload(payload))

    async def subscribe(
        self,
        filter: str,
        *,
        queue: Optional[str] = None,
        ack: bool = False,
        overflow: Optional[str] = None,
        max_queued_messages: Optional[int] = None,
        max_queued_bytes: Optional[int] = None,
        datagram: bool = False,
        max_in_flight: Optional[int] = None,
        ack_timeout: Optional[float] = None,
        batch: int = DEFAULT_BATCH,
    ) -> "Subscription":
        """Subscribes to `filter` (wildcards `*` and `>`).

        `queue`: join that queue group (each message goes to one member). `ack=True`: at least
        once (the broker keeps each message until acknowledged with `msg.ack()`, or when the
        next one is asked for, and redelivers after a lost connection). `overflow`: the
        broker's policy when the queue is full, `drop-oldest` (default), `drop-newest`,
        `latest` or `close`. `datagram=True`: deliveries as QUIC datagrams. `batch`: most
        messages taken from Rust per crossing (at-least-once subscriptions take one).
        """
        native = await self._native.subscribe(
            filter, queue, ack, overflow, max_queued_messages, max_queued_bytes, datagram,
            max_in_flight, ack_timeout,
        )
        return Subscription(native, batch)

    async def request(
        self,
        topic: str,
        payload: Payload = b"",
        *,
        timeout: float = 5.0,
        headers: Optional[Headers] = None,
    ) -> Message:
        """Publishes a request and returns the first reply; `NoResponders` at once when no
        one subscribes to `topic`, `Timeout` after `timeout` seconds."""
        return await self._native.request(topic, _payload(payload), timeout, _headers(headers))

    async def serve(self, filter: str, *, queue: Optional[str] = None) -> "Responder":
        """Serves requests on `filter` (as a member of queue group `queue`, if given):
        `async for req in responder: await req.respond(b"...")`."""
        return Responder(await self._native.serve(filter, queue))

    async def flush(self) -> None:
        """Returns once the broker has processed every publish made before."""
        await self._native.flush()

    async def ping(self) -> float:
        """One round trip on the control stream, in seconds."""
        return await self._native.ping()

    async def close(self) -> None:
        """Delivers what was published, says goodbye and ends the session."""
        await self._native.close()

    async def leave(self) -> None:
        """Closes without ending the session: a later client with the same `session_name` (or
        `resume_session=client.session_id`) resumes it, with what the broker kept meanwhile."""
        await self._native.leave()

    @property
    def state(self) -> ConnectionState:
        """The connection state now."""
        return self._native.state()

    def state_changes(self) -> AsyncIterator[ConnectionState]:
        """Every state change from this call on: connected, reconnecting, disconnected (then
        it ends). Each call has its own view; changes faster than it is read reach it as the
        latest one."""
        return _StateChanges(self._native.state_watcher())

    @property
    def session_id(self) -> str:
        """The session id, 32 hex digits."""
        return self._native.session_id()

    @property
    def identity(self) -> str:
        """The identity the broker read from this client's certificate."""
        return self._native.identity()

    @property
    def reconnects(self) -> int:
        """How many times the client reconnected."""
        return self._native.reconnects()

    @property
    def is_closed(self) -> bool:
        """Whether the client stopped for good."""
        return self._native.is_closed()

    def unclaimed_subscriptions(self) -> List[Tuple[int, str]]:
        """A resumed session's subscriptions not taken up yet, as `(id, filter)`; subscribing
        with the same filter and options takes one up."""
        return self._native.unclaimed_subscriptions()


class _StateChanges:
    """The iterator `Client.state_changes()` returns."""

    def __init__(self, watcher: "_native.NativeStates") -> None:
        self._watcher = watcher
        self._done = False

    def __aiter__(self) -> "_StateChanges":
        return self

    async def __anext__(self) -> ConnectionState:
        if self._done:
            raise StopAsyncIteration
        state = await self._watcher.next()
        if state is None:
            self._done = True
            raise StopAsyncIteration
        if state.kind == "disconnected":
            self._done = True
        return state


class Subscription:
    """Messages of one subscription: `async for msg in sub`, or `sub.events()` for messages
    and `Gap`s. Each crossing into Rust takes every ready message (up to `batch`)."""

    def __init__(self, native: "_native.NativeSubscription", batch: int) -> None:
        self._native = native
        self._batch = max(1, int(batch))
        self._buffer: Deque[Union[Message, Gap]] = deque()
        self._ended = False

    async def _next_item(self) -> Union[Message, Gap]:
        buffer = self._buffer
        while not buffer:
            if self._ended:
                raise StopAsyncIteration
            items, self._ended = self._native.poll_batch(self._batch)
            if items:
                buffer.extend(items)
            elif not self._ended:
                # Nothing ready: wait in Rust; what it takes is handed over by the next
                # poll_batch (a cancelled wait loses nothing).
                await self._native.wait(self._batch)
        return buffer.popleft()

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Message:
        while True:
            item = await self._next_item()
            if type(item) is Message:
                return item

    async def next(self, timeout: Optional[float] = None) -> Message:
        """The next message; `asyncio.TimeoutError` after `timeout` seconds,
        `StopAsyncIteration` once the subscription ended."""
        import asyncio
        return await asyncio.wait_for(self.__anext__(), timeout)

    async def events(self) -> AsyncIterator[Union[Message, Gap]]:
        """Messages and gaps, in order: a `Gap` says which messages will never come (dropped
        by the overflow policy, lost with a connection, or with an expired session)."""
        while True:
            try:
                item = await self._next_item()
            except StopAsyncIteration:
                return
            yield item

    async def unsubscribe(self) -> None:
        """Ends the subscription and waits for the broker's answer; messages already
        received are still yielded."""
        await self._native.unsubscribe()

    def close(self) -> None:
        """Ends the subscription at once (unsubscribing in the background)."""
        self._native.close()

    async def __aenter__(self) -> "Subscription":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def filter(self) -> str:
        return self._native.filter

    @property
    def id(self) -> int:
        """The broker's subscription id."""
        return self._native.id

    @property
    def dropped(self) -> int:
        """Messages the broker's overflow policy dropped so far."""
        return self._native.dropped

    @property
    def gaps(self) -> int:
        """Messages skipped so far, as the sequence numbers show (messages yielded or
        waiting in the Python buffer)."""
        return self._native.gaps

    @property
    def reading(self) -> bool:
        """Whether a read waits in Rust now (an `async for` waiting for the next message)."""
        return self._native.reading

    @property
    def lost(self) -> int:
        """Messages missing so far (datagram subscriptions: not arrived)."""
        return self._native.lost

    def take_gaps(self) -> List[Gap]:
        """The gaps found since the last call, oldest first (found as the subscription is
        read, in stream order)."""
        return self._native.take_gaps()

    @property
    def end_reason(self) -> Optional[str]:
        """Why the subscription ended, once it has."""
        return self._native.end_reason


class Responder:
    """Requests to a served filter: `async for req in responder: await req.respond(...)`."""

    def __init__(self, native: "_native.NativeResponder") -> None:
        self._native = native
        self._buffer: Deque[Request] = deque()
        self._ended = False

    def __aiter__(self) -> "Responder":
        return self

    async def __anext__(self) -> Request:
        while not self._buffer:
            if self._ended:
                raise StopAsyncIteration
            requests, self._ended = self._native.poll_batch()
            if requests:
                self._buffer.extend(requests)
            elif not self._ended:
                await self._native.wait()
        return self._buffer.popleft()

    async def unsubscribe(self) -> None:
        await self._native.unsubscribe()

    def close(self) -> None:
        self._native.close()

    async def __aenter__(self) -> "Responder":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


__all__ = [
    "connect", "Client", "Subscription", "Responder", "Message", "Request", "Gap",
    "ConnectionState", "PublishReceipt", "DEFAULT_BATCH", *_errors_all,
]
