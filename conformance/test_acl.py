"""SECURITY.md, "Authorization: the ACL file", as PROTOCOL.md's codes report it."""

import pytest

from cassini_wire import NOT_AUTHORIZED, connect, drop, fresh_id, publish, publish_and_wait
from cassini_wire import subscribe, try_subscribe
from conftest import spec

ACL = """
default = "deny"

[[rule]]
identity = "*"
publish = ["open.>"]
subscribe = ["open.>"]

[[rule]]
identity = "alice"
publish = ["secret.>"]
subscribe = ["secret.>"]
"""


@pytest.fixture(scope="module")
def acl_broker(start_broker, tmp_path_factory):
    path = tmp_path_factory.mktemp("acl") / "acl.toml"
    path.write_text(ACL)
    return start_broker("--acl", str(path))


@spec
async def test_a_publish_the_acl_denies_is_rejected_not_authorized_and_routed_nowhere(
        acl_broker, certs):
    alice = await connect(acl_broker.port, certs.identity("alice"))
    secrets = await subscribe(alice, "secret.>")
    bob = await connect(acl_broker.port, certs.identity("bob"))
    stream = bob.new_stream()
    mid = fresh_id()
    denied = await publish_and_wait(bob, stream, publish("secret.plans", b"x", message_id=mid,
                                                         ack=True))
    assert denied.name == "PublishRejected" and denied["code"] == NOT_AUTHORIZED
    assert (denied["topic"], denied["message_id"]) == ("secret.plans", mid)
    # The stream and the connection stay usable.
    allowed = await publish_and_wait(bob, stream, publish("open.news", b"y",
                                                          message_id=fresh_id(), ack=True))
    assert allowed.name == "PublishAck"
    alice_stream = alice.new_stream()
    alice.send(alice_stream, publish("secret.plans", b"from alice"))
    assert (await secrets.next_frame())["payload"] == b"from alice"
    await drop(alice)
    await drop(bob)


@spec
async def test_a_subscription_the_acl_denies_is_refused_not_authorized(acl_broker, certs):
    bob = await connect(acl_broker.port, certs.identity("bob"))
    for denied_filter in ("secret.>", "secret.plans", ">", "other.x"):
        answer = await try_subscribe(bob, denied_filter)
        assert answer.name == "Error" and answer["code"] == NOT_AUTHORIZED, denied_filter
    sub = await subscribe(bob, "open.*")
    stream = bob.new_stream()
    bob.send(stream, publish("open.x", b"allowed"))
    assert (await sub.next_frame())["payload"] == b"allowed"
    await drop(bob)
