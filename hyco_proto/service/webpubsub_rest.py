"""The Web PubSub REST API (``/api/...``) as a route of the service's router.

:class:`WebPubSubRestRoute` collects a request's whole body (at most 1 MiB: 413 beyond, before
reading it when ``Content-Length`` says so), hands it to the sans-IO
:class:`~hyco_proto.webpubsub.rest.RestApi`, delivers the hub actions it returns to the client
sockets (:func:`~hyco_proto.service.webpubsub.apply_hub_actions`) and answers. It sits before
:class:`~hyco_proto.service.webpubsub.WebPubSubRoute` on the ``"webpubsub"`` route set.
"""

from __future__ import annotations

from ..webpubsub.rest import MAX_BODY, RestApi, RestRequest, is_rest_path
from .front import FrontDoor, RequestHead
from .handler import ConnectionKind, ServiceCore
from .webpubsub import WebPubSubService, apply_hub_actions

__all__ = ["WebPubSubRestRoute"]

_TOO_LARGE = (b'{"code":"PayloadTooLarge","message":"The request body is over 1 MiB '
              b'(1048576 bytes): send smaller messages."}')


class WebPubSubRestRoute:
    """``/api/hubs/{hub}/...`` and ``/api/health`` of the Web PubSub service."""

    def __init__(self, svc: ServiceCore, wps: WebPubSubService) -> None:
        self.svc = svc
        self.wps = wps
        self.api = RestApi(wps.hub, wps.access_key)

    def match(self, head: RequestHead) -> bool:
        return not head.is_upgrade and is_rest_path(head.path)

    def handle(self, door: FrontDoor, head: RequestHead, now: float) -> None:
        length = (head.header("content-length") or "").strip()
        if length.isdigit() and int(length) > MAX_BODY:
            _too_large(door, now)  # refused unread: the door closes after the answer
            return
        door.exchange = _BodyReader(self, door, head, now)
        door.kind = ConnectionKind.HTTP
        door.continue_request()

    def answer(self, door: FrontDoor, head: RequestHead, body: bytes, now: float) -> None:
        scheme = "https" if door.conn.scheme == "wss" else "http"
        request = RestRequest(head.method, head.target,
                              f"{scheme}://{head.header('host') or 'localhost'}",
                              head.header("authorization"), head.header("content-type"), body)
        result = self.api.handle(request, now)
        if result.hub is not None and result.actions:
            apply_hub_actions(self.svc, result.hub, now, result.actions, self.wps.events,
                              batch=self.wps.batch_writes)
        response = result.response
        if response.status == 401:
            self.svc.stats.auth_failures += 1
        door.respond(now, response.status, headers=list(response.headers), body=response.body)


def _too_large(door: FrontDoor, now: float) -> None:
    door.respond(now, 413, headers=[("Content-Type", "application/json")], body=_TOO_LARGE,
                 close=True)


class _BodyReader:
    """The door's :class:`~hyco_proto.service.front.Exchange` while a request body arrives."""

    def __init__(self, route: WebPubSubRestRoute, door: FrontDoor, head: RequestHead,
                 now: float) -> None:
        self.route = route
        self.door = door
        self.head = head
        self.body = bytearray()
        # The body has the handshake timeout, counted from its head, to arrive.
        self._deadline = now + route.svc.handshake_timeout
        self._done = False

    def request_data(self, now: float, data: bytes) -> None:
        if self._done:
            return
        self.body += data
        if len(self.body) > MAX_BODY:  # a chunked body that grew too big
            self._done = True
            _too_large(self.door, now)

    def request_end(self, now: float) -> None:
        if not self._done:
            self._done = True
            self.route.answer(self.door, self.head, bytes(self.body), now)

    def sender_gone(self, now: float) -> None:
        self._done = True

    def deadline(self) -> float | None:
        return None if self._done else self._deadline

    def handle_timer(self, now: float) -> None:
        if not self._done and now >= self._deadline:
            self._done = True
            self.door.respond(now, 408, "Request Timeout: the body did not arrive in time.",
                              close=True)
