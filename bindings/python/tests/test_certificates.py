"""Certificates: a client certificate of another CA is refused, and so is a broker the client
cannot verify."""

from __future__ import annotations

import pytest

import cassini
from conftest import run_async


@run_async
async def test_client_certificate_of_another_ca_is_refused(broker, other_ca):
    with pytest.raises(cassini.CertificateRefused) as raised:
        await cassini.connect(
            broker.address, ca=str(broker.certs.path / "ca.crt"),
            cert=str(other_ca.path / "client-alice.crt"),
            key=str(other_ca.path / "client-alice.key"),
            reconnect=False, connect_timeout=10.0,
        )
    assert isinstance(raised.value, cassini.CertificateError)
    assert "certificate" in str(raised.value)


@run_async
async def test_broker_of_another_ca_is_refused(broker, other_ca):
    with pytest.raises(cassini.BrokerCertificateError):
        await cassini.connect(
            broker.address, ca=str(other_ca.path / "ca.crt"),
            cert=str(broker.certs.path / "client-alice.crt"),
            key=str(broker.certs.path / "client-alice.key"),
            reconnect=False, connect_timeout=10.0,
        )


@run_async
async def test_missing_key_file_is_a_tls_error():
    with pytest.raises(cassini.CassiniError):
        await cassini.connect("127.0.0.1:9", ca="/nonexistent/ca.crt",
                              cert="/nonexistent/c.crt", key="/nonexistent/c.key")
