"""The service's own pages refuse a client that names a foreign host (DNS rebinding, to
127.0.0.1 or to the address the service listens on): ``FrontDoor.refuse_rebound_host`` on
``/$status``, ``/metrics``, the web view and its event stream. Relayed traffic is not affected."""

from __future__ import annotations

import asyncio

import pytest

from hyco_proto.adapters.asyncio import RelayServiceServer
from hyco_proto.service.config import ServiceConfig
from hyco_proto.service.router import RelayService

NOW = 1_700_000_000.0
PAGES = ["/$status", "/metrics", "/", "/$events"]


def ask(service: RelayService, target: str, host: str | None, *,
        remote: tuple[str, int] = ("127.0.0.1", 40000), version: str = "1.1") -> bytes:
    """One request on a new connection; everything the service answered on it."""
    conn = service.connection_made(NOW, remote)
    head = f"GET {target} HTTP/{version}\r\n"
    if host is not None:
        head += f"Host: {host}\r\n"
    service.receive_data(NOW, conn, (head + "\r\n").encode())
    return b"".join(data for cid, data in service.data_to_send() if cid == conn)


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


@pytest.mark.parametrize("target", PAGES)
@pytest.mark.parametrize("host", ["evil.example", "evil.example:9090", "EVIL.example.",
                                  "127.0.0.1.nip.io", "localhost.evil.example"])
def test_a_foreign_name_from_this_machine_gets_403(target: str, host: str) -> None:
    service = RelayService()
    raw = ask(service, target, host)
    assert status_of(raw) == 403, raw[:200]
    assert b"DNS rebinding" in raw and b"localhost, an IP address" in raw
    assert b"\r\nConnection: close\r\n" in raw
    assert service.stats.handshake_errors == 1
    (refusal,) = service.refusal_log.recent
    assert refusal.status == 403 and "DNS rebinding" in refusal.reason
    assert b"hybrid" not in raw.lower()  # nothing of the page itself


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:9090", "localhost.", "app.localhost",
                                  "127.0.0.1", "127.0.0.1:9090", "[::1]:9090", "[::1]", "::1",
                                  "10.1.2.3:80", "myns", "MyNs:9090",
                                  "myns.servicebus.windows.net",
                                  "myns.servicebus.windows.net.:443"])
def test_this_machines_names_addresses_and_the_namespace_are_served(host: str) -> None:
    service = RelayService(ServiceConfig(namespace="myns"))
    for target in ("/$status", "/metrics", "/"):
        raw = ask(service, target, host)
        assert status_of(raw) == 200, (target, raw[:200])
    assert service.stats.handshake_errors == 0


def test_the_namespace_is_the_configured_one() -> None:
    service = RelayService(ServiceConfig(namespace="myns"))
    raw = ask(service, "/$status", "otherns")
    assert status_of(raw) == 403
    assert b"(myns)" in raw and b"--namespace" in raw  # what to do about it


def test_any_azure_namespace_name_is_served() -> None:
    # Azure's DNS answers for those names (nobody can rebind them to 127.0.0.1 from outside):
    # a hosts file mapping one to the emulator is the user's own doing, --namespace or not.
    service = RelayService()  # namespace "localhost"
    for host in ("otherns.servicebus.windows.net", "a.b.servicebus.windows.net:9090"):
        assert status_of(ask(service, "/$status", host)) == 200
    assert status_of(ask(service, "/$status", "servicebus.windows.net.evil.example")) == 403


def test_a_request_without_host_is_served() -> None:
    # HTTP/1.0 needs no Host, and no browser sends a request without one.
    assert status_of(ask(RelayService(), "/$status", None, version="1.0")) == 200


def test_a_client_on_the_network_is_checked_too() -> None:
    # With the service bound to a LAN address, a page can rebind its name to that address:
    # the browser then connects from the LAN (or from the machine's own LAN address).
    for remote in (("10.0.0.7", 40000), ("192.168.1.5", 40000), ("::ffff:127.0.0.1", 1)):
        raw = ask(RelayService(), "/$status", "evil.example", remote=remote)
        assert status_of(raw) == 403, remote
        assert status_of(ask(RelayService(), "/$status", "10.0.0.1:9090", remote=remote)) == 200


def test_the_drivers_names_are_served() -> None:
    # RelayServiceServer adds the name it was bound by and the machine's own name.
    service = RelayService()
    service.allowed_hosts.add("devbox")
    assert status_of(ask(service, "/$status", "DevBox:9090", remote=("10.0.0.7", 1))) == 200
    assert status_of(ask(service, "/$status", "devbox.evil.example")) == 403


def test_the_asyncio_server_allows_its_host_and_the_machines_name() -> None:
    import socket

    async def main() -> None:
        async with RelayServiceServer(host="localhost", port=0) as server:
            assert server.service.allowed_hosts == {"localhost",
                                                    socket.gethostname().lower()}

    asyncio.run(main())


def test_relayed_paths_are_not_affected() -> None:
    # A sender names the namespace it was given (any name in a hosts file): the relay's own
    # routes answer as before (here 404: no such hybrid connection; not the 403 above).
    raw = ask(RelayService(), "/$hc/nothere?sb-hc-action=connect", "evil.example")
    assert status_of(raw) != 403 and b"DNS rebinding" not in raw


def test_through_the_asyncio_server() -> None:
    async def main() -> None:
        async with RelayServiceServer(port=0) as server:
            async def get(host: str) -> bytes:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(f"GET /$status HTTP/1.1\r\nHost: {host}\r\n"
                             "Connection: close\r\n\r\n".encode())
                try:
                    return await asyncio.wait_for(reader.read(), 5)
                finally:
                    writer.close()

            refused = await get("evil.example")
            served = await get(f"localhost:{server.port}")
            assert status_of(refused) == 403 and b"DNS rebinding" in refused
            assert status_of(served) == 200 and b'"status"' in served

    asyncio.run(main())
