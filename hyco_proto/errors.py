"""Exception hierarchy.

``ProtocolError`` splits, as in h11/wsproto, into ``LocalProtocolError`` (the caller misused the
API: the message says what to do instead) and ``RemoteProtocolError`` (the peer broke the
protocol). ``RelayError`` and its subclasses describe what the relay service answered: an HTTP
status on a handshake or a WebSocket close code, with the service's tracking id when it sent one.
"""

from __future__ import annotations

import re

__all__ = [
    "AuthorizationError",
    "ConnectionLostError",
    "EndpointNotFoundError",
    "ForbiddenError",
    "ListenerRejectedError",
    "LocalProtocolError",
    "ProtocolError",
    "QuotaExceededError",
    "RelayError",
    "RemoteProtocolError",
    "TokenError",
    "connect_failure",
    "describe_connect_error",
    "extract_tracking_id",
    "host_port",
    "open_timeout_failure",
    "relay_error_for_close",
    "relay_error_for_status",
]

_TRACKING_RE = re.compile(r"TrackingId:\s*([^,\s]+)", re.IGNORECASE)


def extract_tracking_id(text: str | None) -> str | None:
    """Return the ``TrackingId:…`` value from a relay status description, if any."""
    if not text:
        return None
    match = _TRACKING_RE.search(text)
    return match.group(1) if match else None


class ProtocolError(Exception):
    """Base class of protocol violations; never raised itself."""

    def __init__(
        self, message: str, *, close_code: int | None = None, status_hint: int | None = None
    ) -> None:
        if type(self) is ProtocolError:
            raise TypeError("raise LocalProtocolError or RemoteProtocolError, not ProtocolError")
        super().__init__(message)
        self.message = message
        #: WebSocket close code that fits this error (1002, 1007, 1009, ...), if any.
        self.close_code = close_code
        #: HTTP status that fits this error on a handshake (400, 426, 431, ...), if any.
        self.status_hint = status_hint


class LocalProtocolError(ProtocolError):
    """The caller asked for something the protocol or the current state does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow (bad frame, bad JSON, bad field)."""


class RelayError(Exception):
    """The relay service refused or ended something.

    ``status`` is the HTTP status of a refused handshake, ``close_code`` the WebSocket close code of
    an ended connection; one of them is set. ``tracking_id`` is parsed from the description.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        close_code: int | None = None,
        description: str | None = None,
        tracking_id: str | None = None,
        transient: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.close_code = close_code
        self.description = description
        self.tracking_id = tracking_id or extract_tracking_id(description)
        self._transient = transient

    @property
    def transient(self) -> bool:
        """Whether trying again may succeed (reconnect policy, hybrid-connections-wire §4.2).

        Derived from the status (404 is not transient) unless given explicitly, e.g. ``False``
        for a fixed token that has expired.
        """
        if self._transient is not None:
            return self._transient
        return self.status != 404

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status!r}, "
            f"close_code={self.close_code!r}, tracking_id={self.tracking_id!r})"
        )


class AuthorizationError(RelayError):
    """401: token missing, malformed, invalid or expired; or close 1008 (token expired)."""


class ForbiddenError(RelayError):
    """403: token not valid for this path or action, or an invalid rendezvous address."""


class QuotaExceededError(ForbiddenError):
    """403 with a quota description, e.g. more than 25 listeners on one hybrid connection."""


class EndpointNotFoundError(RelayError):
    """404: the hybrid connection does not exist. Terminal for a listener."""


class ListenerRejectedError(RelayError):
    """The listener turned this sender away: its own reject, passed through by the relay.

    Any status the listener chose (400 "Rejected by user code" by default, but also 401, 403,
    404 ...); ``status`` and ``description`` are the listener's. Distinct from the relay's own
    refusals (:class:`AuthorizationError`, :class:`EndpointNotFoundError` ...), which carry a
    ``TrackingId``. See :func:`hyco_proto.sender.error_for_rejection`.
    """


class ConnectionLostError(RelayError):
    """The relay closed an established connection (close 1001, 1011, …) or the TCP link died."""


class TokenError(ValueError):
    """A SAS token could not be parsed or failed verification; ``reason`` says exactly why."""

    def __init__(self, reason: str, *, status: int = 401) -> None:
        super().__init__(reason)
        self.reason = reason
        #: 401 for a bad or expired token, 403 for a token that is valid but not for this target.
        self.status = status


def relay_error_for_status(
    status: int, description: str | None = None, tracking_id: str | None = None
) -> RelayError:
    """Map a handshake HTTP status to the matching ``RelayError`` subclass."""
    text = f"relay answered {status}" + (f": {description}" if description else "")
    cls: type[RelayError]
    if status == 401:
        cls = AuthorizationError
    elif status == 403:
        quota = description is not None and "quota" in description.lower()
        cls = QuotaExceededError if quota else ForbiddenError
    elif status == 404:
        cls = EndpointNotFoundError
    else:
        cls = RelayError
    return cls(text, status=status, description=description, tracking_id=tracking_id)


def relay_error_for_close(code: int, reason: str = "") -> RelayError:
    """Map a close code the relay sent on an established connection to a ``RelayError``."""
    text = f"relay closed the connection with {code}" + (f": {reason}" if reason else "")
    cls: type[RelayError] = AuthorizationError if code == 1008 else ConnectionLostError
    return cls(text, close_code=code, description=reason or None)


# --------------------------------------------------------------------------------------------
# Connect failures, in words (used by every adapter; no socket/ssl import: classes are
# recognised by name and attributes)

#: OpenSSL reasons seen when the peer answers a ClientHello with something that is not TLS.
_NOT_TLS_REASONS = frozenset({
    "WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST", "PACKET_LENGTH_TOO_LONG",
})


def _class_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _is_ssl_error(exc: BaseException) -> bool:
    return "SSLError" in _class_names(exc) or type(exc).__module__ in ("ssl", "_ssl")


def _is_not_tls(exc: BaseException) -> bool:
    if not _is_ssl_error(exc):
        return False
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason.upper().replace(" ", "_") in _NOT_TLS_REASONS:
        return True
    text = str(exc).lower()
    return "wrong version number" in text or "record layer failure" in text


def _is_resolution_error(exc: BaseException) -> bool:
    if "gaierror" in _class_names(exc):
        return True
    # getaddrinfo's EAI_* codes are negative on Linux, unlike every errno.
    errno = getattr(exc, "errno", None)
    return isinstance(exc, OSError) and isinstance(errno, int) and errno < 0


def host_port(host: str, port: int) -> str:
    """``host:port`` for messages, an IPv6 literal in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe_connect_error(exc: BaseException, *, host: str, port: int, secure: bool,
                           timeout: float | None = None, plain_scheme: str = "ws") -> str:
    """One sentence saying why connecting to ``host``:``port`` failed, for an error message.

    * ``ConnectionRefusedError`` → "nothing is listening at HOST:PORT (connection refused)";
    * a name-resolution failure (``socket.gaierror``) → "cannot resolve host HOST";
    * a TLS handshake answered by something that is not TLS (OpenSSL's
      ``WRONG_VERSION_NUMBER`` and kin) → "the relay is not speaking TLS on PORT (use ws://)";
    * ``TimeoutError`` → "no answer from HOST:PORT within N s" (``timeout``, when given);
    * anything else → "cannot connect to HOST:PORT: <exc>".

    ``secure`` says whether TLS was attempted (``wss://``); ``plain_scheme`` is the scheme the
    TLS-mismatch advice suggests (``"http"`` for HTTP clients). Neither ``socket`` nor ``ssl``
    is imported: their exceptions are recognised by class name and attributes.
    """
    address = host_port(host, port)
    if isinstance(exc, ConnectionRefusedError):
        return f"nothing is listening at {address} (connection refused)"
    if _is_resolution_error(exc):
        why = getattr(exc, "strerror", None)
        return f"cannot resolve host {host}" + (f" ({why})" if why else "")
    if _is_not_tls(exc):
        return f"the relay is not speaking TLS on {port} (use {plain_scheme}://)"
    if isinstance(exc, TimeoutError):
        if timeout is not None:
            return f"no answer from {address} within {timeout:g} s"
        return f"no answer from {address} (timed out)"
    if "SSLCertVerificationError" in _class_names(exc):
        return f"cannot connect to {address}: its TLS certificate was not accepted ({exc})"
    text = str(exc) or type(exc).__name__
    if secure and _is_ssl_error(exc):
        text = f"TLS handshake failed: {text}"
    return f"cannot connect to {address}: {text}"


def connect_failure(exc: BaseException, *, host: str, port: int, secure: bool,
                    timeout: float | None = None, plain_scheme: str = "ws") -> OSError:
    """The exception every adapter raises when connecting to ``host``:``port`` failed.

    Its message is :func:`describe_connect_error`; its class is ``TimeoutError`` for a timeout,
    ``ConnectionRefusedError`` / ``ConnectionResetError`` for those, and ``ConnectionError``
    for the rest (TLS, name resolution ...), so ``except ConnectionError`` / ``except OSError``
    catch them all alike. ``__cause__`` is ``exc``.
    """
    message = describe_connect_error(exc, host=host, port=port, secure=secure, timeout=timeout,
                                     plain_scheme=plain_scheme)
    error: OSError
    if isinstance(exc, TimeoutError):
        error = TimeoutError(message)
    elif isinstance(exc, ConnectionRefusedError):
        error = ConnectionRefusedError(message)
    elif isinstance(exc, ConnectionResetError):
        error = ConnectionResetError(message)
    else:
        error = ConnectionError(message)
    error.__cause__ = exc
    return error


def open_timeout_failure(*, host: str, port: int, url: str, timeout: float | None,
                         connected: bool) -> TimeoutError:
    """The ``TimeoutError`` every adapter's ``connect`` / ``relayed_connect`` raises when its
    ``open_timeout`` ran out, naming the stage it ran out in:

    * ``connected`` false (TCP, or TLS, never connected; no upgrade was sent) →
      "could not connect (TCP, or TLS) to HOST:PORT (URL) within N s";
    * ``connected`` true (the upgrade request went out) →
      "no answer to the WebSocket upgrade from HOST:PORT (URL) within N s".

    ``url`` is shown without its query and fragment (a token travels there: ``sb-hc-token``,
    ``access_token``). ``timeout`` None (the system's own connect timeout) says "(timed out)".
    """
    shown = url.split("?", 1)[0].split("#", 1)[0]
    address = host_port(host, port)
    what = (f"no answer to the WebSocket upgrade from {address}" if connected
            else f"could not connect (TCP, or TLS) to {address}")
    limit = f"within {timeout:g} s" if timeout is not None else "(timed out)"
    return TimeoutError(f"{what} ({shown}) {limit}")
