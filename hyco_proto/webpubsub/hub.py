"""One Azure Web PubSub hub at the message level, without I/O (the core of a local emulator).

:class:`Hub` keeps the hub's logical connections, their groups and users, and turns what clients
and the server-side REST API do into *actions* for its caller. It knows nothing of sockets,
WebSocket framing, HTTP or the clock: a router feeds it the text and binary frames of each
accepted WebSocket, reports a lost transport, and passes ``now`` (seconds, any monotonic origin)
to the methods that need time.

Output model: every method that has an effect *returns* the actions to carry out, in order, as a
list (nothing is queued inside the hub):

* :class:`Deliver` ``(connection_id, frame)``: send ``frame`` on that connection's transport, a
  text frame when it is a ``str`` (always, for the JSON subprotocols) and a binary frame when it is
  ``bytes`` (raw clients only);
* :class:`CloseTransport` ``(connection_id, code, reason)``: close that transport; the hub has
  already forgotten the connection (or kept it for recovery, see below). Before a close it starts
  itself, a JSON client first gets a ``system``/``disconnected`` :class:`Deliver`;
* :class:`UpstreamEvent`: a client's ``event`` (or a raw client's frame, event ``message``) for
  the upstream application server; the hub does no HTTP.

Clients: a connection uses ``json.webpubsub.azure.v1``, ``json.reliable.webpubsub.azure.v1`` or
no subprotocol (a *raw* client: every frame it sends is an upstream ``message`` event, and group
and server messages reach it as bare text or binary frames, with no envelope, ack or sequence id).

Reliable connections number their ``type:"message"`` frames with a ``sequenceId`` from 1 and keep
each one until a cumulative ``sequenceAck`` covers it, up to 1,000 messages or 16 MiB (then the
connection is closed with 1008 and cannot be recovered). When the transport of a reliable
connection is lost (:meth:`Hub.transport_lost`) the logical connection stays for 30 seconds,
still in its groups and still buffering; :meth:`Hub.recover` attaches a new transport and replays
every unacknowledged message in order, without a new ``connected`` message. Other connections end
with their transport.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .messages import (
    CLOSE_MESSAGE_TOO_BIG,
    DEFAULT_MAX_SIZE,
    JSON_RELIABLE_SUBPROTOCOL,
    SUBPROTOCOLS,
    AckError,
    AckMessage,
    BinaryData,
    ConnectedMessage,
    Data,
    DisconnectedMessage,
    EventMessage,
    GroupDataMessage,
    JoinGroupMessage,
    JsonData,
    LeaveGroupMessage,
    PingMessage,
    PongMessage,
    SendToGroupMessage,
    SequenceAckMessage,
    ServerDataMessage,
    TextData,
    WebPubSubProtocolError,
    parse_client_message,
    serialize,
)
from .permissions import Permissions, is_valid_group_name

__all__ = [
    "CLOSE_NORMAL",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_UNSUPPORTED_DATA",
    "MAX_UNACKED_BYTES",
    "MAX_UNACKED_MESSAGES",
    "RECOVERY_WINDOW",
    "CloseTransport",
    "ConnectResult",
    "Deliver",
    "Hub",
    "HubAction",
    "RecoverResult",
    "UpstreamEvent",
]

#: Close code of a close the service starts on purpose (REST ``closeConnection``).
CLOSE_NORMAL = 1000
#: Close code for a binary frame on a JSON subprotocol.
CLOSE_UNSUPPORTED_DATA = 1003
#: Close code that tells the client SDKs not to try recovery (refused recovery, full buffer).
CLOSE_POLICY_VIOLATION = 1008
#: Seconds a reliable logical connection outlives its lost transport.
RECOVERY_WINDOW = 30.0
#: Most unacknowledged messages a reliable connection may have.
MAX_UNACKED_MESSAGES = 1000
#: Most bytes of unacknowledged message frames a reliable connection may have: 16 MiB.
MAX_UNACKED_BYTES = 16 * 1024 * 1024

_BUFFER_FULL = "The reliable message buffer is full."
_NOT_RECOVERABLE = "The connection could not be recovered."
_NOT_RECOVERED = "The connection was not recovered in time."
_MAX_REASON_BYTES = 123  # a WebSocket close reason's limit


@dataclass(frozen=True, slots=True)
class Deliver:
    """Send ``frame`` to ``connection_id``: text when ``str``, binary when ``bytes``."""

    connection_id: str
    frame: str | bytes


@dataclass(frozen=True, slots=True)
class CloseTransport:
    """Close the transport of ``connection_id`` with ``code`` and ``reason``."""

    connection_id: str
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class UpstreamEvent:
    """A user event for the upstream server (CloudEvent ``azure.webpubsub.user.<event>``)."""

    connection_id: str
    user_id: str | None
    event: str
    data: Data


HubAction = Deliver | CloseTransport | UpstreamEvent


@dataclass(frozen=True, slots=True)
class ConnectResult:
    """A new connection: its id, its reconnection token (reliable only) and what to send first."""

    connection_id: str
    reconnection_token: str | None
    permissions: Permissions
    actions: list[HubAction]


@dataclass(frozen=True, slots=True)
class RecoverResult:
    """The outcome of :meth:`Hub.recover`.

    When ``accepted``, ``actions`` replays the unacknowledged messages on the new transport. When
    not, the caller closes the new transport with ``close_code`` (1008) and ``reason``.
    """

    accepted: bool
    actions: list[HubAction] = field(default_factory=list)
    close_code: int | None = None
    reason: str = ""


@dataclass(slots=True)
class _Connection:
    connection_id: str
    user_id: str | None
    subprotocol: str | None
    permissions: Permissions
    reconnection_token: str | None
    groups: set[str] = field(default_factory=set)
    ack_ids: set[int] = field(default_factory=set)
    last_sequence_id: int = 0
    unacked: list[tuple[int, str, int]] = field(default_factory=list)
    unacked_bytes: int = 0
    #: When the transport was lost (reliable connections waiting for recovery), else None.
    lost_at: float | None = None

    @property
    def raw(self) -> bool:
        return self.subprotocol is None

    @property
    def reliable(self) -> bool:
        return self.subprotocol == JSON_RELIABLE_SUBPROTOCOL


def _default_connection_id() -> str:
    return secrets.token_urlsafe(16)


def _default_reconnection_token() -> str:
    return secrets.token_urlsafe(32)


def _close_reason(reason: str) -> str:
    raw = reason.encode("utf-8")
    if len(raw) <= _MAX_REASON_BYTES:
        return reason
    return raw[:_MAX_REASON_BYTES].decode("utf-8", "ignore")


def _raw_frame(data: Data) -> str | bytes:
    """What a raw client receives for ``data`` (§2.4): text for json/text, bytes otherwise."""
    if isinstance(data, JsonData):
        return json.dumps(data.value, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    if isinstance(data, TextData):
        return data.text
    return data.data


class Hub:
    """The connections, groups and users of one Web PubSub hub (sans-IO; see the module doc).

    ``connection_id_factory`` and ``reconnection_token_factory`` make fresh random strings
    (inject them for deterministic tests); ``max_frame_size`` is the client frame limit (1 MiB),
    ``recovery_window`` the seconds a reliable connection waits for recovery, and
    ``max_unacked_messages`` / ``max_unacked_bytes`` the reliable buffer limits.
    """

    def __init__(
        self,
        name: str = "hub",
        *,
        connection_id_factory: Callable[[], str] = _default_connection_id,
        reconnection_token_factory: Callable[[], str] = _default_reconnection_token,
        max_frame_size: int = DEFAULT_MAX_SIZE,
        recovery_window: float = RECOVERY_WINDOW,
        max_unacked_messages: int = MAX_UNACKED_MESSAGES,
        max_unacked_bytes: int = MAX_UNACKED_BYTES,
        report_departures: bool = False,
    ) -> None:
        self.name = name
        self._new_id = connection_id_factory
        self._new_token = reconnection_token_factory
        self.max_frame_size = max_frame_size
        self.recovery_window = recovery_window
        self.max_unacked_messages = max_unacked_messages
        self.max_unacked_bytes = max_unacked_bytes
        self._connections: dict[str, _Connection] = {}
        self._groups: dict[str, set[str]] = {}
        #: Each group's members sorted, cached for fan-outs (dropped when the group changes).
        self._sorted: dict[str, list[str]] = {}
        #: Reliable connections waiting for recovery (the only ones with a deadline), so the
        #: timer questions the driver asks after every read do not walk every connection.
        self._detached: dict[str, _Connection] = {}
        self._users: dict[str, set[str]] = {}
        #: Connections removed for good, with why, until :meth:`departures` takes them (only
        #: when ``report_departures``: the service sends ``disconnected`` events from them).
        self._departed: list[tuple[str, str]] | None = [] if report_departures else None

    def departures(self) -> list[tuple[str, str]]:
        """``(connection_id, reason)`` of every connection removed for good since the last call
        (however it went: closed, dropped, not recovered in time, closed by the REST API).
        Always empty unless the hub was made with ``report_departures=True``."""
        if not self._departed:
            return []
        out, self._departed = self._departed, []
        return out

    # ----------------------------------------------------------------------------------------
    # connection lifecycle

    def connect(
        self,
        now: float,
        *,
        user_id: str | None = None,
        roles: Iterable[str] = (),
        groups: Iterable[str] = (),
        subprotocol: str | None = None,
        connection_id: str | None = None,
    ) -> ConnectResult:
        """Add a new connection for an accepted WebSocket.

        ``subprotocol`` is the negotiated one (``None``: a raw client). ``groups`` (the token's
        ``webpubsub.group``) are joined without any permission; invalid names are skipped.
        JSON clients get the ``connected`` system message first, with the reconnection token on
        the reliable subprotocol. ``connection_id``: one chosen before the upstream ``connect``
        event (:meth:`new_connection_id`); by default a fresh one.
        """
        if subprotocol is not None and subprotocol not in SUBPROTOCOLS:
            raise ValueError(f"unsupported Web PubSub subprotocol {subprotocol!r}")
        if connection_id is None:
            connection_id = self.new_connection_id()
        elif connection_id in self._connections:
            raise ValueError(f"connection id {connection_id!r} is in use")
        return self._add(connection_id, user_id, roles, groups, subprotocol)

    def new_connection_id(self) -> str:
        """A fresh connection id not in use."""
        connection_id = self._new_id()
        for _ in range(100):
            if connection_id not in self._connections:
                break
            connection_id = self._new_id()
        else:
            raise RuntimeError("the connection id factory keeps returning ids in use")
        return connection_id

    def _add(self, connection_id: str, user_id: str | None, roles: Iterable[str],
             groups: Iterable[str], subprotocol: str | None) -> ConnectResult:
        token = self._new_token() if subprotocol == JSON_RELIABLE_SUBPROTOCOL else None
        conn = _Connection(connection_id, user_id or None, subprotocol,
                           Permissions.from_roles(tuple(roles)), token)
        self._connections[connection_id] = conn
        if conn.user_id is not None:
            self._users.setdefault(conn.user_id, set()).add(connection_id)
        for group in groups:
            if is_valid_group_name(group):
                self._join(conn, group)
        actions: list[HubAction] = []
        if not conn.raw:
            connected = ConnectedMessage(connection_id, conn.user_id, token)
            actions.append(Deliver(connection_id, serialize(connected)))
        return ConnectResult(connection_id, token, conn.permissions, actions)

    def recover(self, now: float, connection_id: str, reconnection_token: str,
                subprotocol: str | None) -> RecoverResult:
        """Attach a new transport to a reliable logical connection (``awps_*`` recovery URL).

        Accepted when the connection still exists, is reliable, the token matches and the
        subprotocol is the same: the unacknowledged messages are replayed in order and no new
        ``connected`` message is sent. If the old transport is still attached, the new one takes
        its place (the caller drops the old one without calling :meth:`transport_lost`).
        Otherwise the caller accepts the upgrade and closes it with 1008.
        """
        conn = self._connections.get(connection_id)
        if (
            conn is None
            or not conn.reliable
            or conn.reconnection_token is None
            or subprotocol != conn.subprotocol
            or not hmac.compare_digest(conn.reconnection_token.encode("utf-8"),
                                       reconnection_token.encode("utf-8"))
        ):
            return RecoverResult(False, [], CLOSE_POLICY_VIOLATION, _NOT_RECOVERABLE)
        if conn.lost_at is not None and now >= conn.lost_at + self.recovery_window:
            self._drop(conn, _NOT_RECOVERED)
            return RecoverResult(False, [], CLOSE_POLICY_VIOLATION, _NOT_RECOVERABLE)
        conn.lost_at = None
        self._detached.pop(connection_id, None)
        return RecoverResult(True, [Deliver(connection_id, frame) for _, frame, _ in conn.unacked])

    def transport_lost(self, now: float, connection_id: str, code: int | None = None) -> None:
        """The connection's WebSocket is gone (closed by the client or broken).

        ``code`` is the close code the client sent, or ``None`` when the connection broke
        without a closing handshake. A reliable connection that dropped unexpectedly waits
        :attr:`recovery_window` seconds for :meth:`recover`; one the client closed normally
        (1000: it is done, reference §9.2 keeps sessions only after an unexpected drop) and
        any other connection is removed at once, leaving its groups.
        """
        conn = self._connections.get(connection_id)
        if conn is None or conn.lost_at is not None:
            return
        if conn.reliable and code != CLOSE_NORMAL:
            conn.lost_at = now
            self._detached[connection_id] = conn
        else:
            self._drop(conn, "The client closed the connection." if code is not None
                       else "The connection was lost.")

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` has work next (a recovery window ends), or ``None``."""
        deadlines = [c.lost_at + self.recovery_window for c in self._detached.values()
                     if c.lost_at is not None]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> list[str]:
        """Drop the connections whose recovery window has passed; return their ids."""
        expired = [c for c in self._detached.values()
                   if c.lost_at is not None and now >= c.lost_at + self.recovery_window]
        for conn in expired:
            self._drop(conn, _NOT_RECOVERED)
        return [c.connection_id for c in expired]

    # ----------------------------------------------------------------------------------------
    # what clients send

    def client_text(self, now: float, connection_id: str, text: str | bytes) -> list[HubAction]:
        """Handle one text frame (``str``, or its UTF-8 bytes) from ``connection_id``.

        JSON clients: a request of §2.1 (acks, pong, fan-out, upstream events); a malformed frame
        closes with 1007, one over :attr:`max_frame_size` bytes with 1009. Raw clients: the
        frame is an upstream ``message`` event with text data.
        """
        conn = self._attached(connection_id)
        if conn is None:
            return []
        if conn.raw:
            raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
            if len(raw) > self.max_frame_size:
                return self._too_big(conn, len(raw))
            try:
                decoded = raw.decode("utf-8")
            except UnicodeDecodeError:
                return self._close(conn, 1007, "The text frame is not valid UTF-8.")
            return [UpstreamEvent(conn.connection_id, conn.user_id, "message",
                                  TextData(decoded))]
        try:
            msg = parse_client_message(text, max_size=self.max_frame_size)
        except WebPubSubProtocolError as exc:
            return self._close(conn, exc.close_code, str(exc))
        if isinstance(msg, PingMessage):
            return [self._send_json(conn, PongMessage())]
        if isinstance(msg, SequenceAckMessage):
            self._sequence_ack(conn, msg.sequence_id)
            return []
        if msg.ack_id is not None and msg.ack_id in conn.ack_ids:
            return [self._ack(conn, msg.ack_id, AckError(
                "Duplicate", f"Message with ack-id: {msg.ack_id} has been processed."))]
        actions: list[HubAction] = []
        error: AckError | None = None
        if isinstance(msg, (JoinGroupMessage, LeaveGroupMessage)):
            joining = isinstance(msg, JoinGroupMessage)
            if not is_valid_group_name(msg.group):
                error = AckError("BadRequest", f"Invalid group name {msg.group!r}.")
            elif not conn.permissions.can_join(msg.group):
                verb = "join" if joining else "leave"
                error = AckError("Forbidden", f"The client does not have permission to {verb} "
                                              f"group '{msg.group}'.")
            elif joining:
                self._join(conn, msg.group)
            else:
                self._leave(conn, msg.group)
        elif isinstance(msg, SendToGroupMessage):
            if not is_valid_group_name(msg.group):
                error = AckError("BadRequest", f"Invalid group name {msg.group!r}.")
            elif not conn.permissions.can_send(msg.group):
                error = AckError("Forbidden", "The client does not have permission to send to "
                                              f"group '{msg.group}'.")
            else:
                excluded = {conn.connection_id} if msg.no_echo else set()
                actions.extend(self._to_group(msg.group, msg.data, conn.user_id, excluded))
        elif isinstance(msg, EventMessage):
            actions.append(UpstreamEvent(conn.connection_id, conn.user_id, msg.event, msg.data))
        if msg.ack_id is not None and conn.connection_id in self._connections:
            if error is None:
                conn.ack_ids.add(msg.ack_id)
            actions.append(self._ack(conn, msg.ack_id, error))
        return actions

    def client_binary(self, now: float, connection_id: str, data: bytes) -> list[HubAction]:
        """Handle one binary frame: an upstream ``message`` event (binary data) from a raw
        client; on a JSON subprotocol, a close with 1003 (1009 when over the limit)."""
        conn = self._attached(connection_id)
        if conn is None:
            return []
        if len(data) > self.max_frame_size:
            return self._too_big(conn, len(data))
        if not conn.raw:
            return self._close(conn, CLOSE_UNSUPPORTED_DATA,
                               "Binary frames are not supported on JSON subprotocols.")
        return [UpstreamEvent(conn.connection_id, conn.user_id, "message", BinaryData(data))]

    # ----------------------------------------------------------------------------------------
    # server-side operations (what the REST API does)

    def send_to_all(self, data: Data, *, excluded: Iterable[str] = ()) -> list[HubAction]:
        """Send ``data`` as a server message to every connection except ``excluded``."""
        skip = set(excluded)
        return self._to_connections(
            [c for cid, c in list(self._connections.items()) if cid not in skip], data)

    def send_to_group(self, group: str, data: Data, *,
                      excluded: Iterable[str] = ()) -> list[HubAction]:
        """Send ``data`` to the members of ``group`` as a group message with no sender
        (``fromUserId`` null), except the ``excluded`` connection ids."""
        return self._to_group(group, data, None, set(excluded))

    def send_to_user(self, user_id: str, data: Data) -> list[HubAction]:
        """Send ``data`` as a server message to every connection of ``user_id``."""
        ids = sorted(self._users.get(user_id, ()))
        return self._to_connections([self._connections[cid] for cid in ids], data)

    def send_to_connection(self, connection_id: str, data: Data) -> list[HubAction]:
        """Send ``data`` as a server message to one connection (nothing if it is unknown)."""
        conn = self._connections.get(connection_id)
        return self._to_connections([conn], data) if conn is not None else []

    def add_connection_to_group(self, group: str, connection_id: str) -> bool:
        """Add a connection to ``group``; ``False`` when the connection does not exist."""
        if not is_valid_group_name(group):
            raise ValueError(f"invalid group name {group!r}")
        conn = self._connections.get(connection_id)
        if conn is None:
            return False
        self._join(conn, group)
        return True

    def remove_connection_from_group(self, group: str, connection_id: str) -> bool:
        """Remove a connection from ``group``; ``False`` when it was not a member."""
        conn = self._connections.get(connection_id)
        if conn is None or group not in conn.groups:
            return False
        self._leave(conn, group)
        return True

    def add_user_to_group(self, group: str, user_id: str) -> int:
        """Add every current connection of ``user_id`` to ``group``; return how many."""
        if not is_valid_group_name(group):
            raise ValueError(f"invalid group name {group!r}")
        ids = list(self._users.get(user_id, ()))
        for cid in ids:
            self._join(self._connections[cid], group)
        return len(ids)

    def remove_user_from_group(self, group: str, user_id: str) -> None:
        """Remove every connection of ``user_id`` from ``group``."""
        for cid in list(self._users.get(user_id, ())):
            self._leave(self._connections[cid], group)

    def remove_user_from_all_groups(self, user_id: str) -> None:
        """Remove every connection of ``user_id`` from every group."""
        for cid in list(self._users.get(user_id, ())):
            conn = self._connections[cid]
            for group in list(conn.groups):
                self._leave(conn, group)

    def close_connection(self, connection_id: str, reason: str = "") -> list[HubAction]:
        """Close one connection: ``disconnected`` (JSON clients), then close 1000 with
        ``reason``. The connection is gone; a later recovery attempt is refused."""
        conn = self._connections.get(connection_id)
        return self._close(conn, CLOSE_NORMAL, reason) if conn is not None else []

    def close_group_connections(self, group: str, reason: str = "", *,
                                excluded: Iterable[str] = ()) -> list[HubAction]:
        """Close every connection in ``group`` except ``excluded``."""
        skip = set(excluded)
        return self._close_many(sorted(self._groups.get(group, set()) - skip), reason)

    def close_user_connections(self, user_id: str, reason: str = "", *,
                               excluded: Iterable[str] = ()) -> list[HubAction]:
        """Close every connection of ``user_id`` except ``excluded``."""
        skip = set(excluded)
        return self._close_many(sorted(self._users.get(user_id, set()) - skip), reason)

    def close_all_connections(self, reason: str = "", *,
                              excluded: Iterable[str] = ()) -> list[HubAction]:
        """Close every connection of the hub except ``excluded``."""
        skip = set(excluded)
        return self._close_many([cid for cid in self._connections if cid not in skip], reason)

    def connection_count(self) -> int:
        """How many logical connections the hub has (those waiting for recovery too)."""
        return len(self._connections)

    def group_sizes(self) -> dict[str, int]:
        """Every group with at least one member, with its member count."""
        return {group: len(members) for group, members in self._groups.items() if members}

    def connection_exists(self, connection_id: str) -> bool:
        """Whether the logical connection exists (one waiting for recovery counts)."""
        return connection_id in self._connections

    def group_exists(self, group: str) -> bool:
        """Whether ``group`` has at least one connection."""
        return bool(self._groups.get(group))

    def user_exists(self, user_id: str) -> bool:
        """Whether ``user_id`` has at least one connection."""
        return bool(self._users.get(user_id))

    def connection_groups(self, connection_id: str) -> frozenset[str]:
        """The groups of a connection (empty when it does not exist)."""
        conn = self._connections.get(connection_id)
        return frozenset(conn.groups) if conn is not None else frozenset()

    # ----------------------------------------------------------------------------------------
    # REST API helpers: listing, filtering and the permission API

    def connection_ids(self) -> list[str]:
        """Every logical connection's id (those waiting for recovery too), sorted."""
        return sorted(self._connections)

    def connection_user(self, connection_id: str) -> str | None:
        """The user of a connection (``None`` when anonymous or unknown)."""
        conn = self._connections.get(connection_id)
        return conn.user_id if conn is not None else None

    def user_connection_ids(self, user_id: str) -> list[str]:
        """The ids of ``user_id``'s connections, sorted."""
        return sorted(self._users.get(user_id, ()))

    def group_members(self, group: str) -> list[tuple[str, str | None]]:
        """``(connection_id, user_id)`` of every member of ``group``, sorted by id."""
        return [(cid, self._connections[cid].user_id)
                for cid in sorted(self._groups.get(group, ())) if cid in self._connections]

    def grant_permission(self, connection_id: str, permission: str,
                         group: str | None = None) -> bool:
        """Grant ``joinLeaveGroup`` / ``sendToGroup`` on ``group`` (every group when ``None``)
        to a connection, for its later requests; ``False`` when it does not exist."""
        conn = self._connections.get(connection_id)
        if conn is None:
            return False
        conn.permissions = conn.permissions.granted(permission, group)
        return True

    def revoke_permission(self, connection_id: str, permission: str,
                          group: str | None = None) -> bool:
        """Revoke a permission (see :meth:`Permissions.revoked`); ``False`` when the connection
        does not exist."""
        conn = self._connections.get(connection_id)
        if conn is None:
            return False
        conn.permissions = conn.permissions.revoked(permission, group)
        return True

    def has_permission(self, connection_id: str, permission: str,
                       group: str | None = None) -> bool:
        """Whether the connection exists and holds ``permission`` on ``group``."""
        conn = self._connections.get(connection_id)
        return conn is not None and conn.permissions.has(permission, group)

    # ----------------------------------------------------------------------------------------
    # internals

    def _attached(self, connection_id: str) -> _Connection | None:
        conn = self._connections.get(connection_id)
        if conn is None or conn.lost_at is not None:
            return None
        return conn

    def _join(self, conn: _Connection, group: str) -> None:
        conn.groups.add(group)
        self._groups.setdefault(group, set()).add(conn.connection_id)
        self._sorted.pop(group, None)

    def _leave(self, conn: _Connection, group: str) -> None:
        conn.groups.discard(group)
        members = self._groups.get(group)
        self._sorted.pop(group, None)
        if members is not None:
            members.discard(conn.connection_id)
            if not members:
                del self._groups[group]

    def _drop(self, conn: _Connection, reason: str) -> None:
        if self._departed is not None and conn.connection_id in self._connections:
            self._departed.append((conn.connection_id, reason))
        for group in list(conn.groups):
            self._leave(conn, group)
        self._connections.pop(conn.connection_id, None)
        self._detached.pop(conn.connection_id, None)
        if conn.user_id is not None:
            ids = self._users.get(conn.user_id)
            if ids is not None:
                ids.discard(conn.connection_id)
                if not ids:
                    del self._users[conn.user_id]
        conn.unacked.clear()
        conn.unacked_bytes = 0

    def _close(self, conn: _Connection, code: int, reason: str) -> list[HubAction]:
        """A service-initiated close: ``disconnected`` first (JSON clients, attached), then the
        close; the connection is dropped for good."""
        attached = conn.lost_at is None
        self._drop(conn, reason)
        if not attached:
            return []
        actions: list[HubAction] = []
        if not conn.raw:
            actions.append(self._send_json(conn, DisconnectedMessage(reason)))
        actions.append(CloseTransport(conn.connection_id, code, _close_reason(reason)))
        return actions

    def _close_many(self, ids: Iterable[str], reason: str) -> list[HubAction]:
        actions: list[HubAction] = []
        for cid in list(ids):
            conn = self._connections.get(cid)
            if conn is not None:
                actions.extend(self._close(conn, CLOSE_NORMAL, reason))
        return actions

    def _too_big(self, conn: _Connection, size: int) -> list[HubAction]:
        return self._close(conn, CLOSE_MESSAGE_TOO_BIG,
                           f"The message is {size} bytes, over the limit of "
                           f"{self.max_frame_size}.")

    @staticmethod
    def _send_json(conn: _Connection, msg: AckMessage | PongMessage | ConnectedMessage
                   | DisconnectedMessage) -> Deliver:
        return Deliver(conn.connection_id, serialize(msg))

    def _ack(self, conn: _Connection, ack_id: int, error: AckError | None) -> Deliver:
        return self._send_json(conn, AckMessage(ack_id, error is None, error))

    def _sequence_ack(self, conn: _Connection, sequence_id: int) -> None:
        if not conn.reliable:
            return
        keep = 0
        while keep < len(conn.unacked) and conn.unacked[keep][0] <= sequence_id:
            conn.unacked_bytes -= conn.unacked[keep][2]
            keep += 1
        del conn.unacked[:keep]

    def _members(self, group: str) -> list[str]:
        """The group's connection ids, sorted (kept until the group changes: a fan-out reads it
        once per message)."""
        members = self._sorted.get(group)
        if members is None:
            members = self._sorted[group] = sorted(self._groups.get(group, ()))
        return members

    def _to_group(self, group: str, data: Data, from_user_id: str | None,
                  excluded: set[str]) -> list[HubAction]:
        def build(seq: int | None) -> str:
            return serialize(GroupDataMessage(group, data, from_user_id, seq))

        members = self._members(group)
        if excluded:
            members = [cid for cid in members if cid not in excluded]
        get = self._connections.get
        return self._fan_out([conn for cid in members if (conn := get(cid)) is not None],
                             data, build)

    def _to_connections(self, conns: Iterable[_Connection], data: Data) -> list[HubAction]:
        return self._fan_out(conns, data, lambda seq: serialize(ServerDataMessage(data, seq)))

    def _fan_out(self, conns: Iterable[_Connection], data: Data,
                 build: Callable[[int | None], str]) -> list[HubAction]:
        """One message to many connections. Every raw client gets the same frame object, and
        so does every plain JSON client (built once, on first need): callers may encode it once
        (``Deliver.frame`` identity). Reliable clients each get their own (a sequence id)."""
        actions: list[HubAction] = []
        append = actions.append
        raw: str | bytes | None = None
        plain: str | None = None
        for conn in conns:
            subprotocol = conn.subprotocol
            if subprotocol is None:  # raw: nothing is buffered for a detached one
                if conn.lost_at is None:
                    if raw is None:
                        raw = _raw_frame(data)
                    append(Deliver(conn.connection_id, raw))
            elif subprotocol == JSON_RELIABLE_SUBPROTOCOL:
                actions.extend(self._deliver_message(conn, build))
            else:
                if plain is None:
                    plain = build(None)
                append(Deliver(conn.connection_id, plain))
        return actions

    def _deliver_message(self, conn: _Connection,
                         build: Callable[[int | None], str]) -> list[HubAction]:
        """One ``type:"message"`` frame for a JSON client: numbered and buffered when reliable
        (a detached reliable connection only buffers); the buffer limits close it with 1008."""
        if not conn.reliable:
            return [Deliver(conn.connection_id, build(None))]
        seq = conn.last_sequence_id + 1
        frame = build(seq)
        size = len(frame.encode("utf-8"))
        if (len(conn.unacked) + 1 > self.max_unacked_messages
                or conn.unacked_bytes + size > self.max_unacked_bytes):
            return self._close(conn, CLOSE_POLICY_VIOLATION, _BUFFER_FULL)
        conn.last_sequence_id = seq
        conn.unacked.append((seq, frame, size))
        conn.unacked_bytes += size
        if conn.lost_at is not None:
            return []
        return [Deliver(conn.connection_id, frame)]
