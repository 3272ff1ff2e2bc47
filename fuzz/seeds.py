"""Seed inputs for the atheris harnesses (``fuzz/run.py`` writes them into a fresh corpus
directory before each run): well-formed examples of what each parser reads, so mutations start
past the first checks. Seeds only steer the search; any input is still allowed."""

from __future__ import annotations

from fuzz import targets


def _text() -> list[bytes]:
    from hyco_proto import sas
    from hyco_proto.webpubsub import tokens

    relay = sas.create_relay_token("http://ns/hc", "root", targets.KEY, 3600, now=targets.NOW)
    jwt = tokens.create_client_token(targets.ENDPOINT, "chat", targets.KEY, user_id="u",
                                     roles=("webpubsub.joinLeaveGroup",), now=targets.NOW)
    texts = [
        relay, "SharedAccessSignature sr=http%3a%2f%2fns%2fhc&sig=abc%3d&se=1800003600&skn=root",
        "sb://ns.servicebus.windows.net/hc", "wss://ns/$hc/hc?sb-hc-action=listen&sb-hc-id=1",
        "http://127.0.0.1:9090/$hc/hc?sb-hc-action=accept&sb-hc-id=abc&sb-hc-token=x",
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=root;"
        "SharedAccessKey=abc=;EntityPath=hc",
        "Endpoint=http://127.0.0.1:8080;AccessKey=abc;Version=1.0;Port=8080",
        '{"accept":{"address":"wss://ns/$hc/hc?sb-hc-action=accept&sb-hc-id=1","id":"1",'
        '"connectHeaders":{"a":"b"},"remoteEndpoint":{"address":"::1","port":1}}}',
        '{"request":{"id":"1","requestTarget":"/hc/a?b","method":"POST","body":true,'
        '"requestHeaders":{"X":"y"},"address":"wss://ns/$hc/hc?sb-hc-action=request"}}',
        '{"response":{"requestId":"1","statusCode":200,"statusDescription":"OK",'
        '"responseHeaders":{"a":"b"},"body":true}}', '{"renewToken":{"token":"' + relay + '"}}',
        '{"type":"joinGroup","group":"g","ackId":1}',
        '{"type":"sendToGroup","group":"g","dataType":"json","data":{"a":1},"ackId":2,'
        '"noEcho":true}', '{"type":"event","event":"e","dataType":"binary","data":"AAE="}',
        '{"type":"sequenceAck","sequenceId":3}', '{"type":"ping"}',
        '{"type":"ack","ackId":1,"success":false,"error":{"name":"Duplicate","message":"m"}}',
        '{"type":"message","from":"group","group":"g","dataType":"text","data":"x",'
        '"sequenceId":1}',
        '{"type":"system","event":"connected","connectionId":"c","reconnectionToken":"t"}',
        f"/client/hubs/chat?access_token={jwt}", f"ws://127.0.0.1:8080/client/?hub=chat&"
        f"access_token={jwt}&awps_connection_id=c&awps_reconnection_token=t", jwt,
        "userId eq 'u1' and 'g' in groups or not (connectionId ne 'c1')",
        "/api/hubs/chat/:send?api-version=2024-01-01", "/api/hubs/chat/groups/g/connections/c",
    ]
    return [t.encode() for t in texts]


def _bytes() -> list[bytes]:
    from hyco_proto.handshake import ClientHandshake

    upgrade = ClientHandshake("127.0.0.1:9090", "/$hc/hc?sb-hc-action=listen",
                              subprotocols=["json.webpubsub.azure.v1"]).data_to_send()
    return [
        upgrade,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        b"POST /hc/a?b=c HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx",
        b"GET /$status HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /api/hubs/chat/:send HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer x\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
        b"\x03\xe8bye", *(t for t in _text()[7:12]),
    ]


def _frames() -> list[bytes]:
    from hyco_proto import _frames_py as k

    key = b"\x01\x02\x03\x04"
    masked = (k.encode_header(1, 5, False, 0, key) + k.apply_mask(b"hel\xc3\xa9"[:5], key)
              + k.encode_header(9, 1, True, 0, key) + k.apply_mask(b"p", key)
              + k.encode_header(0, 2, True, 0, key) + k.apply_mask(b"lo", key)
              + k.encode_header(8, 2, True, 0, key) + k.apply_mask(b"\x03\xe8", key))
    return [b"\x01\x07" + masked, b"\x00\x03" + k.encode_frame(2, b"abc") + k.encode_frame(1, b"x"),
            b"\x01" + masked]


def _utf8() -> list[bytes]:
    text = "ok κόσμε 𝄞 €".encode()
    return [bytes([0, 0]) + text, bytes([8, 1 | 2 << 3, 5, 0, 9, 0, 14]) + text,
            bytes([16, 1, 3]) + b"ab\xed\xa0\x80cd", bytes([64, 0]) + b"\xe0\x80\xaf",
            bytes([2, 0]) + b"\xc0\xaf", bytes([0, 0]) + b"a\xf0\x9f\x98"]


def _session(name: str) -> list[bytes]:
    control = [t for t in _text() if t.startswith(b'{"') and b'"type"' not in t]
    wps = [t for t in _text() if b'"type"' in t]
    if name == "relayed_http":
        return [bytes([1 | 8 | 16]) + b"/a?b\nContent-Length: 2\r\n\r\nhi\x00\x00"
                + b"200\x00OK\x00X\x00y\x00body",
                bytes([0]) + b"/a\n\r\n\x00\x00" + control[2].replace(b'"1"', b'"$I"')]
    if name == "listener_control":
        accept = b"wss://ns/$hc/hc?sb-hc-action=accept&sb-hc-id=1"
        return [bytes([m]) + b"\x00".join(c.replace(accept, b"$A") for c in control)
                for m in range(4)]
    if name == "webpubsub_session":
        return [bytes([m]) + b"\x00".join(wps[:5]) for m in range(8)]
    return [bytes([m]) + b"\x00".join(c.replace(b'"1"', b'"$I"') for c in control)
            for m in range(4)]


def seeds(name: str) -> list[bytes]:
    """Seeds for a ``python -m fuzz.run --list`` name."""
    kind, _, rest = name.partition(":")
    if kind == "text":
        return _text()
    if kind == "bytes":
        return _bytes()
    if kind == "frames":
        return _frames()
    if kind == "utf8":
        return _utf8()
    if kind == "session":
        return _session(rest)
    return []
