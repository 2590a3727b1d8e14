"""The synchronous wrapper, for scripts."""

from __future__ import annotations

import threading

import pytest

import cassini
from cassini import sync


def test_sync_publish_subscribe_request(broker, topic):
    with sync.connect(broker.address, **broker.certs.identity("alice")) as client:
        sub = client.subscribe(f"{topic}.>")
        client.publish(f"{topic}.a", b"one", headers={"k": "v"})
        msg = sub.next(timeout=5)
        assert (msg.topic, msg.payload, msg.headers) == (f"{topic}.a", b"one", {"k": "v"})
        with pytest.raises(cassini.Timeout):
            sub.next(timeout=0.2)

        responder = client.serve(f"{topic}.svc")

        def serve():
            for request in responder:
                request.respond(request.payload.upper())

        threading.Thread(target=serve, daemon=True).start()
        assert client.request(f"{topic}.svc", b"ping", timeout=5).payload == b"PING"
        with pytest.raises(cassini.NoResponders):
            client.request(f"{topic}-nobody", b"?", timeout=5)
        responder.close()
    assert client.is_closed
