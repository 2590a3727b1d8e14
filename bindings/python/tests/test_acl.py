"""The broker's refusals as exceptions with its code: NOT_AUTHORIZED from an ACL."""

from __future__ import annotations

import pytest

import cassini
from conftest import connect, run_async

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


@run_async
async def test_denied_publish_and_subscribe_raise_not_authorized(acl_broker):
    async with await connect(acl_broker, "bob") as bob:
        with pytest.raises(cassini.NotAuthorized) as publish:
            await bob.publish("secret.plans", b"x", ack=True)
        with pytest.raises(cassini.NotAuthorized) as subscribe:
            await bob.subscribe("secret.>")
        # The connection stays usable.
        receipt = await bob.publish("open.news", b"y", ack=True)
        assert receipt.duplicate is False
    for raised in (publish.value, subscribe.value):
        assert isinstance(raised, cassini.CassiniError)
        assert raised.code == 50 and raised.code_name == "NOT_AUTHORIZED"
        assert raised.reason
