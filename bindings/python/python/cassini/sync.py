"""The `cassini` client for scripts without asyncio: the same client, driven from an asyncio
loop on a background thread that every synchronous client shares.

    from cassini import sync as cassini

    with cassini.connect("127.0.0.1:7700", cert_dir="certs") as client:
        sub = client.subscribe("demo.>")
        client.publish("demo.hello", b"hi")
        msg = sub.next(timeout=2.0)
        reply = client.request("svc.echo", b"ping", timeout=2.0)

Every call blocks until done; an interrupt (Ctrl-C) cancels the operation under way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Coroutine, Dict, Iterator, List, Optional, Tuple, TypeVar, Union

import cassini as _aio
from cassini import ConnectionState, Gap, Message, PublishReceipt

T = TypeVar("T")

_lock = threading.Lock()
_loop: Optional[asyncio.AbstractEventLoop] = None


def _run(coro: Coroutine[Any, Any, T], timeout: Optional[float] = None) -> T:
    """Runs `coro` on the shared loop and waits for it; cancels it if the wait is
    interrupted."""
    global _loop
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="cassini-sync", daemon=True).start()
            _loop = loop
        loop = _loop
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result(timeout)
    except BaseException:
        if future.done():
            raise  # the operation's own error
        future.cancel()
        if timeout is not None:
            raise _aio.Timeout(f"timed out after {timeout} s") from None
        raise


def connect(address: Union[str, List[str]] = "127.0.0.1:7700", **options: Any) -> "Client":
    """`cassini.connect`, blocking; the same arguments."""
    return Client(_run(_aio.connect(address, **options)))


class Client:
    """`cassini.Client`, blocking. Use `with` or call `close()`."""

    def __init__(self, client: _aio.Client) -> None:
        self._client = client

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._client.is_closed:
            self.close()

    def publish(self, topic: str, payload: _aio.Payload = b"", **options: Any
                ) -> Optional[PublishReceipt]:
        return _run(self._client.publish(topic, payload, **options))

    def publish_datagram(self, topic: str, payload: _aio.Payload) -> None:
        _run(self._client.publish_datagram(topic, payload))

    def subscribe(self, filter: str, **options: Any) -> "Subscription":
        return Subscription(_run(self._client.subscribe(filter, **options)))

    def request(self, topic: str, payload: _aio.Payload = b"", *, timeout: float = 5.0,
                headers: Optional[_aio.Headers] = None) -> Message:
        return _run(self._client.request(topic, payload, timeout=timeout, headers=headers))

    def serve(self, filter: str, *, queue: Optional[str] = None) -> "Responder":
        return Responder(_run(self._client.serve(filter, queue=queue)))

    def flush(self) -> None:
        _run(self._client.flush())

    def ping(self) -> float:
        return _run(self._client.ping())

    def close(self) -> None:
        _run(self._client.close())

    def leave(self) -> None:
        _run(self._client.leave())

    @property
    def state(self) -> ConnectionState:
        return self._client.state

    @property
    def session_id(self) -> str:
        return self._client.session_id

    @property
    def identity(self) -> str:
        return self._client.identity

    @property
    def is_closed(self) -> bool:
        return self._client.is_closed

    def unclaimed_subscriptions(self) -> List[Tuple[int, str]]:
        return self._client.unclaimed_subscriptions()


class Subscription:
    """`cassini.Subscription`, blocking: `for msg in sub`, or `sub.next(timeout)`."""

    def __init__(self, subscription: _aio.Subscription) -> None:
        self._subscription = subscription

    def __iter__(self) -> Iterator[Message]:
        while True:
            try:
                yield _run(self._subscription.__anext__())
            except StopAsyncIteration:
                return

    def next(self, timeout: Optional[float] = None) -> Message:
        """The next message; `cassini.Timeout` after `timeout` seconds, `StopIteration` once
        the subscription ended."""
        try:
            return _run(self._subscription.__anext__(), timeout)
        except StopAsyncIteration:
            raise StopIteration from None

    def next_event(self, timeout: Optional[float] = None) -> Union[Message, Gap]:
        """The next message or gap (see `Subscription.events`)."""
        try:
            return _run(self._subscription._next_item(), timeout)
        except StopAsyncIteration:
            raise StopIteration from None

    def ack(self) -> None:
        """At least once: acknowledges the last message yielded."""
        self._subscription._native.acknowledge()

    def unsubscribe(self) -> None:
        _run(self._subscription.unsubscribe())

    def close(self) -> None:
        self._subscription.close()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def gaps(self) -> int:
        return self._subscription.gaps

    def take_gaps(self) -> List[Gap]:
        return self._subscription.take_gaps()


class Request:
    """A request to answer with `respond`."""

    def __init__(self, request: _aio.Request) -> None:
        self._request = request

    @property
    def topic(self) -> str:
        return self._request.topic

    @property
    def payload(self) -> bytes:
        return self._request.payload

    @property
    def headers(self) -> Dict[str, str]:
        return self._request.headers

    def respond(self, payload: _aio.Payload, headers: Optional[_aio.Headers] = None) -> None:
        async def respond() -> None:
            await self._request.respond(_aio._payload(payload), _aio._headers(headers))
        _run(respond())


class Responder:
    """`cassini.Responder`, blocking: `for req in responder: req.respond(b"...")`."""

    def __init__(self, responder: _aio.Responder) -> None:
        self._responder = responder

    def __iter__(self) -> Iterator[Request]:
        while True:
            try:
                yield Request(_run(self._responder.__anext__()))
            except StopAsyncIteration:
                return

    def close(self) -> None:
        self._responder.close()


__all__ = ["connect", "Client", "Subscription", "Responder", "Request"]
