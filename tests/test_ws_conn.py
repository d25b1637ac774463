"""The WebSocket connection driver in-process, on a socketpair: timers are called directly, never waited for."""

from __future__ import annotations

import socket
import time

import pytest

from thrum.daemon import Loop
from thrum.ws import IDLE_TIMEOUT, WebServer, _Conn


class _Daemon:
    def __init__(self) -> None:
        from thrum.rpc import Registry

        self.loop = Loop()
        self.push = None
        self.enqueued = []
        self.service = type("Service", (), {"registry": Registry()})()
        self.service.registry.add("health", lambda p, ctx: {})

    def enqueue(self, conn, item) -> None:
        self.enqueued.append((conn, item))


@pytest.fixture
def server():
    srv = WebServer(paths=None)
    srv.daemon = _Daemon()
    srv.port = 12345
    srv.token = "t" * 43
    srv.allowed_hosts = frozenset({"127.0.0.1:12345"})
    srv.allowed_origins = frozenset({"http://127.0.0.1:12345"})
    yield srv
    srv.daemon.loop.close()


def _pair(server):
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(5)
    conn = _Conn(server, ours)
    server.conns.add(conn)
    server.daemon.loop.add_reader(ours, conn.on_event)
    return conn, theirs


def _turns(server, n: int = 3) -> None:
    for _ in range(n):
        server.daemon.loop.run_once(max_wait=0.05)


def _read_all(sock) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def _handshake(server):
    from websockets.client import ClientProtocol
    from websockets.uri import parse_uri

    conn, peer = _pair(server)
    client = ClientProtocol(parse_uri(f"ws://127.0.0.1:12345/ws?token={server.token}"))
    client.send_request(client.connect())
    for data in client.data_to_send():
        peer.sendall(data)
    _turns(server)
    client.receive_data(peer.recv(65536))
    client.events_received()  # the handshake response
    assert conn.state == "ws" and client.handshake_exc is None
    return conn, peer, client


def test_head_timeout_answers_408_and_closes(server):
    conn, peer = _pair(server)
    peer.sendall(b"GET / HTTP/1.1\r\nHost: 127.0")
    _turns(server)
    conn._head_timeout()  # what the 10 s timer does
    assert _read_all(peer).startswith(b"HTTP/1.1 408 ")
    peer.close()
    _turns(server)
    assert conn.closed and conn not in server.conns


def test_silent_client_is_closed_and_a_live_one_is_pinged(server):
    from websockets.frames import Opcode

    conn, peer, client = _handshake(server)
    conn._keepalive()  # recent data: a ping goes out
    client.receive_data(peer.recv(65536))
    assert [f.opcode for f in client.events_received()] == [Opcode.PING]
    conn.last_rx = time.monotonic() - IDLE_TIMEOUT - 1
    conn._keepalive()  # nothing heard for too long: gone
    assert conn.closed and conn not in server.conns


def test_requests_are_enqueued_and_replies_framed(server):
    conn, peer, client = _handshake(server)
    client.send_text(b'{"jsonrpc":"2.0","id":7,"method":"health"}')
    for data in client.data_to_send():
        peer.sendall(data)
    _turns(server)
    assert server.daemon.enqueued == [(conn, b'{"jsonrpc":"2.0","id":7,"method":"health"}')]
    conn.send(b'{"jsonrpc":"2.0","result":{},"id":7}\n')
    client.receive_data(peer.recv(65536))
    [frame] = client.events_received()
    assert frame.data == b'{"jsonrpc":"2.0","result":{},"id":7}'  # one frame, no newline
    # a close frame from the client is answered and the connection ends
    client.send_close(1000)
    for data in client.data_to_send():
        peer.sendall(data)
    _turns(server)
    client.receive_data(_read_all(peer))
    assert client.close_rcvd is not None and client.close_rcvd.code == 1000
    peer.close()
    _turns(server)
    assert conn.closed


def test_output_beyond_the_limit_drops_the_client(server, monkeypatch):
    import thrum.ws

    monkeypatch.setattr(thrum.ws, "MAX_OUTBUF", 64 * 1024)
    conn, peer, client = _handshake(server)
    big = b'{"jsonrpc":"2.0","method":"x","params":"' + b"y" * 200_000 + b'"}\n'
    conn.send(big)  # one large message is always accepted, even beyond the limit
    assert not conn.closed
    for _ in range(10):  # but a client that takes none of it is cut off
        conn.send(big)
        if conn.closed:
            break
    assert conn.closed and conn not in server.conns
