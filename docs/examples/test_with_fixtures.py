"""Tests against the local emulator through the hyco_proto pytest fixtures (docs/testing.md).

Run with ``pytest test_with_fixtures.py`` once hyco_proto is installed with its ``testing``
extra (``pip install '.[testing]'`` in a clone):
the fixtures need no import and no conftest.py.
"""

from hyco_proto.adapters.threads import RelayedServer, WebPubSubClient, relayed_connect
from hyco_proto.uris import parse_connection_string

ROLES = ["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"]


def test_listener_and_sender(relay):
    listen_uri, send_uri = relay.listen_uri("orders"), relay.send_uri("orders")
    with RelayedServer(listen_uri, relay.token(listen_uri)) as server:
        with relayed_connect(send_uri, relay.token(send_uri)) as sender:
            sender.send("hello")
            accepted = server.accept(timeout=10)
            assert accepted.recv(timeout=10) == "hello"
            accepted.send("hello back")
            assert sender.recv(timeout=10) == "hello back"
            counters = relay.status()["counters"]  # the emulator's /$status document
            assert (counters["listeners"], counters["relayed_pairs"]) == (1, 1)


def test_connection_string(relay_session):
    # Code that reads a connection string gets one for the (session-wide) emulator.
    cs = parse_connection_string(relay_session.connection_string("orders"))
    assert cs.listen_uri().startswith(relay_session.url + "/$hc/orders?")


def test_two_webpubsub_clients(webpubsub):
    alice = WebPubSubClient(webpubsub.client_url("chat", user_id="alice", roles=ROLES))
    bob = WebPubSubClient(webpubsub.client_url("chat", user_id="bob", roles=ROLES))
    with alice, bob:
        inbox = bob.messages(timeout=10)
        bob.join_group("room")
        alice.send_to_group("room", "hello")  # waits for the service's ack
        message = next(inbox)
        assert (message.group, message.from_user_id, message.value) == ("room", "alice", "hello")
