"""pytest fixtures for code that uses Hybrid Connections or Web PubSub (``hyco_proto[testing]``).

Installing the package registers this module as a pytest plugin (entry point ``pytest11``), so
these fixtures need no import or ``conftest.py``:

* ``relay`` / ``relay_session``: the local relay emulator on 127.0.0.1 (a free port), a
  :class:`Relay` with ``url``, ``namespace``, ``listen_uri(hc)``, ``send_uri(hc)``,
  ``token(uri)``, ``connection_string(entity)`` and ``status()``;
* ``webpubsub`` / ``webpubsub_session``: the same emulator's Web PubSub hubs, a
  :class:`WebPubSub` with ``endpoint``, ``connection_string``, ``access_key`` and
  ``client_url(hub, ...)`` (needs PyJWT: ``pip install PyJWT``, the ``webpubsub`` extra);
* ``hyco_emulator`` / ``hyco_emulator_session``: the :class:`Emulator` behind both (its
  ``thread`` is the :class:`~hyco_proto.adapters.asyncio.RelayServiceThread`).

``relay`` and ``webpubsub`` in one test share one emulator; the ``_session`` ones share one
for the whole run. Outside pytest: ``with Emulator() as emu: emu.relay.url``. Details:
docs/testing.md.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .adapters.asyncio import RelayServiceThread

__all__ = ["DEFAULT_TIMEOUT", "HOST", "Emulator", "Relay", "WebPubSub"]

HOST = "127.0.0.1"
#: Upper bound, in seconds, for starting or stopping the emulator and for ``status()``.
DEFAULT_TIMEOUT = 10.0
_WEBPUBSUB_HINT = "pip install PyJWT (hyco_proto's webpubsub extra)"


class Relay:
    """Addresses and credentials of a running emulator's Hybrid Connections.

    Tokens are signed with the emulator's development key (rule ``RootManageSharedAccessKey``,
    every right); any hybrid connection name works.
    """

    def __init__(self, port: int, key_name: str, key: str, *,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.port = port
        self.key_name = key_name
        self.key = key
        self.timeout = timeout

    @property
    def namespace(self) -> str:
        """``127.0.0.1:PORT``, as the ``hyco_proto.uris`` helpers take it."""
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT``."""
        return f"ws://{self.namespace}"

    def listen_uri(self, hc: str) -> str:
        """The listener URI of hybrid connection ``hc`` (no token: pass ``token(uri)``)."""
        from .uris import create_relay_listen_uri
        return create_relay_listen_uri(self.namespace, hc, scheme="ws")

    def send_uri(self, hc: str) -> str:
        """The sender (WebSocket) URI of hybrid connection ``hc`` (no token)."""
        from .uris import create_relay_send_uri
        return create_relay_send_uri(self.namespace, hc, scheme="ws")

    def http_uri(self, hc: str) -> str:
        """The ``http://`` URI of hybrid connection ``hc`` for relayed HTTP requests."""
        from .uris import create_relay_http_uri
        return create_relay_http_uri(self.namespace, hc, scheme="http")

    def token(self, uri: str, ttl: float = 3600) -> str:
        """A SAS token for ``uri`` valid ``ttl`` seconds."""
        from .sas import create_relay_token
        return create_relay_token(uri, self.key_name, self.key, ttl)

    def connection_string(self, entity: str | None = None) -> str:
        """``Endpoint=sb://127.0.0.1:PORT/;SharedAccessKeyName=…;SharedAccessKey=…`` with
        ``;EntityPath=entity`` when given (what ``hyco_proto.uris.parse_connection_string``
        and the ``hyco`` CLI read)."""
        text = (f"Endpoint=sb://{self.namespace}/;SharedAccessKeyName={self.key_name};"
                f"SharedAccessKey={self.key}")
        return text if entity is None else f"{text};EntityPath={entity}"

    def status(self) -> dict[str, Any]:
        """The emulator's ``/$status`` document."""
        url = f"http://{self.namespace}/$status"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                doc = json.loads(response.read())
        except OSError as exc:
            raise RuntimeError(f"GET {url} failed: {exc}") from exc
        if not isinstance(doc, dict):
            raise RuntimeError(f"GET {url} did not return a JSON object")
        return doc

    def __repr__(self) -> str:
        return f"Relay(url={self.url!r})"


class WebPubSub:
    """Addresses and credentials of a running emulator's Web PubSub hubs (hubs are created on
    first use)."""

    def __init__(self, port: int, access_key: str) -> None:
        self.port = port
        self.access_key = access_key

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``: the ``Endpoint=`` of the connection string."""
        return f"http://{HOST}:{self.port}"

    @property
    def connection_string(self) -> str:
        """``Endpoint=http://127.0.0.1:PORT;AccessKey=…;Version=1.0;`` for the server SDKs."""
        return f"Endpoint={self.endpoint};AccessKey={self.access_key};Version=1.0;"

    def client_url(self, hub: str, user_id: str | None = None, roles: Iterable[str] = (),
                   groups: Iterable[str] = (), ttl: int = 3600) -> str:
        """A client access URL (``ws://…/client/hubs/{hub}?access_token=…``) for ``hub``, its
        token valid ``ttl`` seconds from now."""
        from .webpubsub.tokens import create_client_access
        return create_client_access(self.endpoint, hub, self.access_key, user_id=user_id,
                                    roles=tuple(roles), groups=tuple(groups), ttl=ttl,
                                    now=time.time()).url

    def __repr__(self) -> str:
        return f"WebPubSub(endpoint={self.endpoint!r})"


class Emulator:
    """The local emulator on 127.0.0.1 on free ports (Hybrid Connections and Web PubSub), run
    on its own event loop thread: ``with Emulator() as emu: ...``. Starting and stopping wait
    at most ``timeout`` seconds; the keys are the documented development key."""

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        self._thread: RelayServiceThread | None = None
        self._relay: Relay | None = None
        self._webpubsub: WebPubSub | None = None

    @property
    def thread(self) -> RelayServiceThread:
        """The running :class:`~hyco_proto.adapters.asyncio.RelayServiceThread`."""
        if self._thread is None:
            raise RuntimeError("the emulator is not started")
        return self._thread

    @property
    def relay(self) -> Relay:
        if self._relay is None:
            raise RuntimeError("the emulator is not started")
        return self._relay

    @property
    def webpubsub(self) -> WebPubSub:
        if self._webpubsub is None:
            raise RuntimeError("the emulator is not started")
        return self._webpubsub

    def start(self) -> Emulator:
        """Bind two free ports on 127.0.0.1 and start serving; ``RuntimeError`` saying why
        not (closing what was started)."""
        from .adapters.asyncio import RelayServiceThread
        from .service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY, ServiceConfig
        from .service.router import RelayService
        from .service.webpubsub import WebPubSubService

        if self._thread is not None:
            return self
        service = RelayService(ServiceConfig(), webpubsub=WebPubSubService(DEVELOPMENT_KEY))
        thread = RelayServiceThread(service, host=HOST, port=0, webpubsub_port=0,
                                    timeout=self.timeout)
        try:
            thread.start()
        except BaseException as exc:
            with contextlib.suppress(Exception):  # the start failure is the news
                thread.close()
            if isinstance(exc, Exception):
                raise RuntimeError(f"the hyco_proto emulator did not start on {HOST} (free "
                                   f"ports) within {self.timeout} s: "
                                   f"{type(exc).__name__}: {exc}") from exc
            raise
        self._thread = thread
        self._relay = Relay(thread.port, DEFAULT_RULE_NAME, DEVELOPMENT_KEY,
                            timeout=self.timeout)
        self._webpubsub = WebPubSub(thread.server.webpubsub_port, DEVELOPMENT_KEY)
        return self

    def close(self) -> None:
        """Close every connection and stop the thread; ``RuntimeError`` if that takes longer
        than ``timeout`` seconds. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._relay = self._webpubsub = None
        address = f"{HOST}:{thread.port}"
        try:
            thread.close()
        except Exception as exc:
            raise RuntimeError(f"the hyco_proto emulator on {address} did not stop within "
                               f"{self.timeout} s: {type(exc).__name__}: {exc}") from exc
        if not thread._loop.is_closed():  # close() leaves the loop open if the join timed out
            raise RuntimeError(f"the hyco_proto emulator on {address}: its thread did not "
                               f"end within {self.timeout} s")

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._relay is None or self._webpubsub is None:
            return "Emulator(stopped)"
        return f"Emulator(url={self._relay.url!r}, webpubsub={self._webpubsub.endpoint!r})"


def _require_pyjwt() -> None:
    try:
        import jwt  # noqa: F401
    except ImportError:
        pytest.fail("the webpubsub fixtures need PyJWT (Web PubSub client access tokens): "
                    f"{_WEBPUBSUB_HINT}", pytrace=False)


@pytest.fixture
def hyco_emulator() -> Iterator[Emulator]:
    """A fresh emulator for one test (Hybrid Connections and Web PubSub)."""
    with Emulator() as emulator:
        yield emulator


@pytest.fixture(scope="session")
def hyco_emulator_session() -> Iterator[Emulator]:
    """One emulator for the whole test session."""
    with Emulator() as emulator:
        yield emulator


@pytest.fixture
def relay(hyco_emulator: Emulator) -> Relay:
    """A fresh emulator's Hybrid Connections (see :class:`Relay`)."""
    return hyco_emulator.relay


@pytest.fixture(scope="session")
def relay_session(hyco_emulator_session: Emulator) -> Relay:
    """The session emulator's Hybrid Connections (see :class:`Relay`)."""
    return hyco_emulator_session.relay


@pytest.fixture
def webpubsub(hyco_emulator: Emulator) -> WebPubSub:
    """A fresh emulator's Web PubSub hubs (see :class:`WebPubSub`; needs PyJWT)."""
    _require_pyjwt()
    return hyco_emulator.webpubsub


@pytest.fixture(scope="session")
def webpubsub_session(hyco_emulator_session: Emulator) -> WebPubSub:
    """The session emulator's Web PubSub hubs (see :class:`WebPubSub`; needs PyJWT)."""
    _require_pyjwt()
    return hyco_emulator_session.webpubsub
