"""The exceptions of the `cassini` package.

Every error the client reports is a `CassiniError`. When the broker gave a code, `code` is its
number and `code_name` its name (`"NOT_AUTHORIZED"`, see docs/PROTOCOL.md); `reason` is the
broker's reason (or the client's message when the broker gave none).
"""

from __future__ import annotations

from typing import Optional


class CassiniError(Exception):
    """Base class of every error of the client."""

    def __init__(self, message: str, code: Optional[int] = None,
                 code_name: Optional[str] = None, reason: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.code_name = code_name
        self.reason = reason if reason is not None else message


class ConfigError(CassiniError, ValueError):
    """Settings that cannot work (a missing certificate, a zero buffer)."""


class TlsError(CassiniError):
    """A certificate or key could not be loaded, or the TLS configuration could not be built."""


class ConnectError(CassiniError, ConnectionError):
    """No connection: the address did not resolve, the broker is unreachable."""


class CertificateError(CassiniError):
    """A certificate was refused, by the broker or by this client."""


class CertificateRefused(CertificateError):
    """The broker refused this client's certificate (expired, another CA, revoked, missing)."""


class BrokerCertificateError(CertificateError):
    """This client refused the broker's certificate (another CA, expired, wrong name)."""


class Refused(CassiniError):
    """The broker closed the connection with a code (e.g. SESSION_TAKEN_OVER)."""


class RequestRefused(CassiniError):
    """The broker refused a subscribe or unsubscribe; the connection stays usable."""


class PublishRejected(CassiniError):
    """The broker refused an acknowledged publish; it was not routed."""


class NotAuthorized(CassiniError):
    """NOT_AUTHORIZED: the ACL does not allow this identity the topic or filter."""


class SlowConsumer(CassiniError):
    """SLOW_CONSUMER: a subscription under the `close` overflow policy fell behind."""


class NoResponders(CassiniError):
    """A request reached no subscription: the broker said so at once."""


class Timeout(CassiniError, TimeoutError):
    """An operation did not finish in time (a request's reply, a publish acknowledgement)."""


class Closed(CassiniError):
    """The client was closed."""


class Disconnected(CassiniError):
    """Not connected now (reconnecting, or given up); nothing was sent."""


class ConnectionLost(CassiniError, ConnectionError):
    """The connection was lost while the operation waited."""


class ProtocolError(CassiniError):
    """The broker broke the protocol; the client closed the connection."""


class InvalidTopic(CassiniError, ValueError):
    """An invalid topic, reply topic or filter; nothing was sent."""


class PayloadTooLarge(CassiniError, ValueError):
    """A payload above the broker's limit; nothing was sent."""


class HeadersTooLarge(CassiniError, ValueError):
    """Too many headers, or too many header bytes; nothing was sent."""


class OutboundBufferFull(CassiniError):
    """A publish made while reconnecting found the outbound buffer full."""


__all__ = [
    "CassiniError", "ConfigError", "TlsError", "ConnectError", "CertificateError",
    "CertificateRefused", "BrokerCertificateError", "Refused", "RequestRefused",
    "PublishRejected", "NotAuthorized", "SlowConsumer", "NoResponders", "Timeout", "Closed",
    "Disconnected", "ConnectionLost", "ProtocolError", "InvalidTopic", "PayloadTooLarge",
    "HeadersTooLarge", "OutboundBufferFull",
]
