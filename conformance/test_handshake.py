"""PROTOCOL.md, "Transport", "Control stream" and "Versioning": the handshake."""

import pytest

from cassini_wire import (
    assert_closed_with,
    PROTOCOL_VIOLATION,
    TLS_ALERT_BASE,
    UNSUPPORTED_VERSION,
    Closed,
    control_request,
    drop,
    frame,
    handshake,
    hello,
    open_connection,
)
from conftest import spec


@spec
async def test_hello_is_answered_by_a_welcome_with_a_new_session_and_the_default_limits(
        broker, certs):
    conn = await open_connection(broker.port, certs.identity("alice"))
    welcome = await handshake(conn)

    # Welcome: protocol_version, session_id, resumed, identity, limits.
    assert welcome["protocol_version"] == 1
    session_id = welcome["session_id"]
    assert isinstance(session_id, list) and len(session_id) == 16
    assert all(isinstance(b, int) and 0 <= b <= 255 for b in session_id)
    assert welcome["resumed"] is False
    # `cassini certs` puts the client's name in the DNS SAN and the CN: the identity is "alice".
    assert welcome["identity"] == "alice"
    assert welcome["limits"] == {
        "max_payload_bytes": 1_048_576,
        "max_frame_bytes": 1_114_112,
        "max_subscriptions": 1024,
        "max_topic_bytes": 256,
        "max_topic_depth": 16,
    }
    # A new session lists no subscriptions; a standalone broker lists no cluster addresses.
    assert welcome["subscriptions"] == []
    assert welcome["cluster_addresses"] == []
    await drop(conn)


@spec
async def test_every_session_gets_its_own_random_id(broker, certs):
    ids = []
    for _ in range(2):
        conn = await open_connection(broker.port, certs.identity("bob"))
        ids.append((await handshake(conn))["session_id"])
        await drop(conn)
    assert ids[0] != ids[1]


@spec
async def test_ping_is_answered_by_a_pong_with_the_same_nonce(broker, certs):
    conn = await open_connection(broker.port, certs.identity("alice"))
    await handshake(conn)
    for nonce in (0, 7, 2**64 - 1):
        pong = await control_request(conn, frame("Ping", nonce))
        assert pong.name == "Pong" and pong["nonce"] == nonce
    await drop(conn)


@spec
async def test_a_hello_of_another_version_closes_the_connection_with_unsupported_version(
        broker, certs):
    conn = await open_connection(broker.port, certs.identity("alice"))
    control = conn.new_stream()
    conn.send(control, hello(version=2))
    await assert_closed_with(conn, UNSUPPORTED_VERSION)


@spec
async def test_a_first_frame_other_than_hello_is_a_protocol_violation(broker, certs):
    conn = await open_connection(broker.port, certs.identity("alice"))
    control = conn.new_stream()
    conn.send(control, frame("Ping", 1))
    await assert_closed_with(conn, PROTOCOL_VIOLATION)


@spec
async def test_no_hello_within_the_deadline_closes_with_hello_timeout(start_broker, certs):
    # limits.hello_timeout_ms (CONFIGURATION.md), shortened so the test is quick.
    b = start_broker(env={"CASSINI_LIMITS_HELLO_TIMEOUT_MS": "300"})
    conn = await open_connection(b.port, certs.identity("alice"))
    closed = await conn.closed(timeout=5)
    assert closed.is_application and closed.error_code == 5  # HELLO_TIMEOUT
    conn.close_transport()


async def refused(port, identity, **kwargs):
    """Connects and returns the QUIC close that ends the attempt, wherever it lands: a TLS 1.3
    client may finish its side of the handshake before it hears the refusal."""
    conn = await open_connection(port, identity, check=False, **kwargs)
    try:
        if conn.termination is not None:
            return conn.termination
        control = conn.new_stream()
        conn.send(control, hello())
        try:
            answer = await conn.next(control)
        except Closed as e:
            return e.termination
        pytest.fail(f"the broker answered {answer} instead of refusing the certificate")
    finally:
        conn.close_transport()


@spec
async def test_a_client_certificate_from_another_ca_is_refused_in_the_tls_handshake(
        broker, certs, other_ca):
    # The other CA is made by `cassini certs init` too, so it has the same name as the broker's
    # CA but another key.
    closed = await refused(broker.port, other_ca.identity("alice").__class__(
        ca=certs.identity("alice").ca,
        cert=other_ca.identity("alice").cert,
        key=other_ca.identity("alice").key,
    ))
    assert not closed.is_application
    # PROTOCOL.md says an unknown CA is TLS alert 48 (0x130); the broker sends alert 51
    # (decrypt_error, 0x133) for a certificate whose issuer has the same name as its CA but
    # another key.
    assert closed.error_code in (TLS_ALERT_BASE + 51,), hex(closed.error_code)


@spec
async def test_a_connection_without_the_cassini_alpn_is_refused(broker, certs):
    # PROTOCOL.md names the ALPN `cassini/1` but not the refusal of another one; the broker
    # closes the handshake with TLS alert 120 (no_application_protocol, 0x178).
    closed = await refused(broker.port, certs.identity("alice"), alpn="other/1")
    assert not closed.is_application
    assert closed.error_code == TLS_ALERT_BASE + 120, hex(closed.error_code)


@spec
async def test_a_client_without_a_certificate_is_refused_with_certificate_required(
        broker, certs):
    from cassini_wire import Identity

    closed = await refused(broker.port, Identity(ca=certs.identity("alice").ca, cert="",
                                                 key=""))
    assert not closed.is_application
    assert closed.error_code == TLS_ALERT_BASE + 116, hex(closed.error_code)


@spec
async def test_a_hello_without_the_trailing_positions_field_is_accepted(broker, certs):
    # Versioning: a field added at the end of a struct decodes with its default when left off.
    conn = await open_connection(broker.port, certs.identity("alice"))
    control = conn.new_stream()
    conn.send(control, frame("Hello", 1, None, "older client"))
    welcome = await conn.next_frame(control)
    assert welcome.name == "Welcome" and welcome["resumed"] is False
    await drop(conn)


@spec
async def test_a_broker_shutting_down_says_going_away_then_closes(start_broker, certs):
    b = start_broker()
    conn = await open_connection(b.port, certs.identity("alice"))
    await handshake(conn)
    b.proc.terminate()  # SIGTERM
    going = await conn.next_frame(conn.control_id, timeout=10)
    assert going.name == "GoingAway"
    assert going["reason"] and going["reconnect_after_ms"] == 2000
    closed = await conn.closed(timeout=10)
    assert closed.is_application and closed.error_code == 40  # SERVER_SHUTTING_DOWN
    conn.close_transport()
