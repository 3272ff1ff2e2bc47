"""What a relayed socket tells its owner, shared by every adapter's ``RelayedWebSocket``.

The listener side of a relayed connection knows what the sender asked for: its upgrade headers
(looked up case-insensitively, as HTTP header names are), its address as the relay saw it, the
path and query it used. The sender side knows none of that (empty / None).
"""

from __future__ import annotations

from ..control import RemoteEndpoint
from ..headers import Headers
from ..listener import ConnectionRequested
from ..uris import parse_relay_uri

__all__ = ["Headers", "RelayedInfo"]


class RelayedInfo:
    """Mixin: ``connect_headers``, ``remote_endpoint``, ``request_id``, ``path``,
    ``request_url`` from the address a socket was opened for and the request it answers."""

    _address: str
    _request: ConnectionRequested | None

    @property
    def connection_request(self) -> ConnectionRequested | None:
        """Listener side: the connection request this socket answers (None for a sender)."""
        return self._request

    @property
    def connect_headers(self) -> Headers:
        """Listener side: the sender's upgrade headers, case-insensitive (empty for a sender)."""
        return self._request.command.connect_headers if self._request else Headers()

    @property
    def remote_endpoint(self) -> RemoteEndpoint | None:
        """Listener side: the sender's address as the relay saw it (None for a sender)."""
        return self._request.command.remote_endpoint if self._request else None

    @property
    def request_id(self) -> str | None:
        """Listener side: the relay's id for this connection request."""
        return self._request.id if self._request else None

    @property
    def path(self) -> str:
        """``/{hc}[/{suffix}][?{app query}]`` the sender used (``sb-hc-*`` removed, §1.5)."""
        return parse_relay_uri(self._address).request_target

    @property
    def request_url(self) -> str:
        """``sb://{namespace}/{hc}[/{suffix}][?{app query}]``, as the .NET listener shows it."""
        return parse_relay_uri(self._address).request_url()
