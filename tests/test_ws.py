"""The WebSocket server with a real client: push, security, identity, limits, ports."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import stat
import subprocess
import sys

import pytest

from _rt import WS, UnixListener, http_get, raw_http, ws_port, ws_token, ws_url
from conftest import FACTOR, wait_for


@pytest.fixture
def env(env):
    env["THRUM_WS_PORT"] = "0"
    return env


def ws_error(t, **kw):
    """The HTTP status of a refused handshake."""
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as exc:
        WS(t, **kw)
    return exc.value.response.status_code


def registered_ws(t, username: str = "test-user") -> WS:
    ws = WS(t)
    ws.call("user.register", username=username)
    return ws


# -- basics -------------------------------------------------------------------------------------

def test_port_and_token_files(daemon):
    t = daemon
    port = ws_port(t)
    assert port > 0
    for name in ("ws.port", "ws.token"):
        assert stat.S_IMODE(os.stat(t.var / name).st_mode) == 0o600
    assert len(ws_token(t)) >= 32
    with WS(t) as ws:
        assert ws.call("health")["status"] == "ok"
    token = ws_token(t)
    t.stop()
    assert not (t.var / "ws.port").exists()  # removed at shutdown
    t.start()
    assert ws_token(t) == token  # kept across restarts, so open browser tabs keep working


def test_ws_subscriber_and_unix_subscriber_both_get_the_message(agents):
    t = agents
    with registered_ws(t) as ws:
        sub = ws.call("subscribe", mention_role="@reviewer")
        unix = UnixListener(t)
        try:
            unix.call("subscribe", caller_agent_id="bob", inbox=True, temporary=True)
            sent = t.json("send", "please review", "--to", "@reviewer", name="alice")
            note = ws.notification("notification.message")
            assert note["message_id"] == sent["message_id"]
            assert note["matched_subscription"] == {"subscription_id": sub["subscription_id"],
                                                    "match_type": "mention"}
            assert note["author"] == {"agent_id": "alice", "name": "alice", "role": "implementer",
                                      "module": "auth", "session_id": note["author"]["session_id"]}
            assert note["preview"] == "please review" and note["scopes"] == []
            assert unix.notification("notification.message")["message_id"] == sent["message_id"]
        finally:
            unix.close()
        # the browser user's subscription is stored: a new connection of the same user hears it
    with registered_ws(t) as ws2:
        t.run("send", "again", "--to", "@reviewer", name="alice")
        assert ws2.notification("notification.message")["preview"] == "again"


def test_batch_requests(daemon):
    with WS(daemon) as ws:
        ws.send_raw(json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "health"},
                                {"jsonrpc": "2.0", "method": "health"},
                                {"jsonrpc": "2.0", "id": 2, "method": "no.such"}]))
        replies = ws.recv()
        assert [r["id"] for r in replies] == [1, 2]
        assert replies[0]["result"]["status"] == "ok" and replies[1]["error"]["code"] == -32601
        ws.send_raw("[]")
        assert ws.recv()["error"]["code"] == -32600
        ws.send_raw("{not json")
        assert ws.recv()["error"]["code"] == -32700
    assert "Traceback" not in (daemon.var / "daemon.log").read_text()  # an id-less request is no bug


def test_unix_only_methods_are_not_on_ws(daemon):
    with WS(daemon) as ws:
        assert ws.request("agent.delete", name="alice")["error"]["code"] == -32601
        assert "members" in ws.call("team.list")  # read-only, opened to WebSocket for the web UI


# -- security ---------------------------------------------------------------------------------------

def test_cross_origin_handshake_is_refused(daemon):
    t = daemon
    assert ws_error(t, origin="http://evil.example") == 403
    assert ws_error(t, origin=f"http://evil.example:{ws_port(t)}") == 403
    assert ws_error(t, origin="null") == 403
    for origin in (f"http://127.0.0.1:{ws_port(t)}", f"http://localhost:{ws_port(t)}"):
        with WS(t, origin=origin) as ws:
            assert ws.call("health")["status"] == "ok"


def test_token_is_required(daemon):
    t = daemon
    assert ws_error(t, token="") == 401
    assert ws_error(t, token="wrong-" + ws_token(t)) == 401
    # the cookie set by `thrum ui`'s link and a bearer header work too
    from websockets.sync.client import connect

    for headers in ({"Cookie": f'other="a;b\\"c; thrum_token_{ws_port(t)}={ws_token(t)}; x=1'},
                    {"Authorization": f"Bearer {ws_token(t)}"}):
        with connect(ws_url(t, token=""), additional_headers=headers, open_timeout=10 * FACTOR) as c:
            c.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "health"}))
            assert json.loads(c.recv(timeout=10 * FACTOR))["result"]["status"] == "ok"


def test_foreign_host_header_is_refused(daemon):
    """DNS rebinding: a page from evil.example resolving to 127.0.0.1 must not reach the daemon."""
    port = ws_port(daemon)
    status, _, _ = http_get(port, "/", {"Host": f"evil.example:{port}"})
    assert status == 403
    status, _, _ = http_get(port, "/", {"Host": f"localhost:{port}"})
    assert status == 401  # right host, but no token


def test_ws_identity_binding(agents):
    t = agents
    with WS(t) as ws:  # no identity: reads work, writes do not
        assert ws.call("health")["status"] == "ok"
        assert ws.call("agent.list")["agents"]
        err = ws.request("message.send", content="who am I?")["error"]
        assert err["code"] == -32002 and "no identity" in err["message"]
        assert ws.request("session.end", session_id="ses_x")["error"]["code"] == -32002
        assert ws.request("subscriptions.list")["error"]["code"] == -32002
        ident = ws.call("user.identify")
        assert ident == {"username": "test-user", "email": "test@example.com", "display": "Test User"}
        reg = ws.call("user.register", username=ident["username"], display=ident["display"])
        assert reg["user_id"] == "user:test-user" and reg["status"] == "registered"
        assert reg["token"].startswith("tok_")
        # bound: acting as someone else is refused, the user itself works without a session
        err = ws.request("message.send", content="hi", caller_agent_id="alice")["error"]
        assert err["code"] == -32002
        assert ws.request("user.register", username="other")["error"]["code"] == -32002
        sent = ws.call("message.send", content="from the browser", mentions=["@bob"])
        assert t.call("message.get", message_id=sent["message_id"])["message"]["agent_id"] == "user:test-user"
        as_alice = ws.call("message.send", content="typed by a human", acting_as="alice")
        got = t.call("message.get", message_id=as_alice["message_id"])["message"]
        assert got["agent_id"] == "alice" and got["authored_by"] == "user:test-user"
        assert ws.call("agent.whoami")["agent_id"] == "user:test-user"
    with WS(t) as ws:  # registering again: same user, no new event
        assert ws.call("user.register", username="test-user")["status"] == "existing"
    with WS(t) as ws:  # an agent connection binds to the first caller it names
        assert ws.call("message.list", caller_agent_id="alice", page_size=1)
        err = ws.request("message.list", caller_agent_id="bob")["error"]
        assert err["code"] == -32002 and "acts as alice" in err["message"]
        assert ws.call("message.send", content="alice over ws")["message_id"]
    with WS(t) as ws:  # a pipelined register + write works (requests run in order)
        ws.send_raw(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "user.register",
                                "params": {"username": "piper"}}))
        ws.send_raw(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "message.send",
                                "params": {"content": "pipelined"}}))
        replies = {}
        while len(replies) < 2:
            msg = ws.recv()
            if "id" in msg:
                replies[msg["id"]] = msg
        assert "result" in replies[2], replies[2]


def test_user_methods_over_unix(daemon):
    from thrum.rpc import RPCError

    with pytest.raises(RPCError) as exc:
        daemon.call("user.register", username="x")
    assert exc.value.message == "User registration only available via WebSocket"
    assert daemon.call("user.identify")["username"] == "test-user"


# -- robustness ---------------------------------------------------------------------------------------

def _raw_ws(port: int, token: str, rcvbuf: int | None = None) -> socket.socket:
    """A hand-made WebSocket client socket that reads only what we tell it to."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10 * FACTOR)
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def _frame(text: str) -> bytes:
    from websockets.frames import Frame, Opcode

    return Frame(Opcode.TEXT, text.encode()).serialize(mask=True)


def test_slow_client_is_cut_off_and_never_stalls_the_daemon(agents):
    t = agents
    with t.client() as c:  # 100 large messages: one page of them is a ~3 MB reply
        for i in range(100):
            c.call("message.send", {"content": f"{i} " + "x" * 30000, "caller_agent_id": "alice"})
    slow = _raw_ws(ws_port(t), ws_token(t), rcvbuf=4096)
    try:
        request = _frame(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "message.list",
                                     "params": {"page_size": 100}}))
        slow.sendall(request * 12)  # ~36 MB of answers it will never read
        with registered_ws(t, "watcher") as ws:
            ws.call("subscribe", all=True)
            for _ in range(3):
                assert ws.call("health")["status"] == "ok"
            t.run("send", "still alive", name="alice")
            assert ws.notification("notification.message")["preview"] == "still alive"
            wait_for(lambda: "stopped reading" in (t.var / "daemon.log").read_text(), 20,
                     what="the daemon to cut off the slow client")
            assert ws.call("health")["status"] == "ok"
    finally:
        slow.close()


def test_dead_client_does_not_break_push(agents):
    t = agents
    script = (
        "import json, sys\n"
        "from websockets.sync.client import connect\n"
        "ws = connect(sys.argv[1])\n"
        "for m, p in (('user.register', {'username': 'ghost'}), ('subscribe', {'all': True})):\n"
        "    ws.send(json.dumps({'jsonrpc': '2.0', 'id': 1, 'method': m, 'params': p}))\n"
        "    while 'id' not in json.loads(ws.recv()): pass\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    ghost = subprocess.Popen([sys.executable, "-c", script, ws_url(t)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=t.env)
    try:
        assert ghost.stdout.readline().strip() == "ready"
        with registered_ws(t, "watcher") as ws:
            ws.call("subscribe", all=True)
            ghost.send_signal(signal.SIGKILL)
            ghost.wait(10 * FACTOR)
            for i in range(3):
                t.run("send", f"after the ghost {i}", name="alice")
                assert ws.notification("notification.message")["preview"] == f"after the ghost {i}"
            assert ws.call("health")["status"] == "ok"
    finally:
        ghost.kill()
        ghost.wait()


def test_half_sent_request_and_oversized_message(agents):
    t = agents
    from websockets.exceptions import ConnectionClosed

    port = ws_port(t)
    stuck = socket.create_connection(("127.0.0.1", port))
    try:
        stuck.sendall(b"GET / HTTP/1.1\r\nHost: 127.0")  # and nothing more
        with WS(t) as ws:
            assert ws.call("health")["status"] == "ok"
        big = WS(t, max_size=None)
        with pytest.raises(ConnectionClosed) as exc:
            big.send_raw("x" * (2 << 20))
            big.recv()
        big.close()
        assert exc.value.rcvd is not None and exc.value.rcvd.code == 1009  # message too big
        with WS(t) as ws:
            assert ws.call("health")["status"] == "ok"
        # an oversized request head is refused
        answer = raw_http(port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 8000 +
                          b"\r\nX-Pad2: " + b"b" * 8000 + b"\r\nX-Pad3: " + b"c" * 8000 + b"\r\n\r\n")
        assert answer.split(b" ")[1] in (b"431", b"400")
    finally:
        stuck.close()


def test_connection_cap(daemon):
    port = ws_port(daemon)
    socks = []
    try:
        for _ in range(64):
            socks.append(socket.create_connection(("127.0.0.1", port)))
        status, _, _ = http_get(port, "/")  # the 65th gets a refusal, not a hang
        assert status == 503
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: _healthy(daemon), 10, what="the cap to free up")


def _healthy(t) -> bool:
    try:
        with WS(t) as ws:
            return ws.call("health")["status"] == "ok"
    except Exception:
        return False


# -- ports ------------------------------------------------------------------------------------------

def test_busy_port_falls_back_to_a_free_one(thrum, env):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    taken = busy.getsockname()[1]
    try:
        env["THRUM_WS_PORT"] = str(taken)
        thrum.start()
        try:
            real = ws_port(thrum)
            assert real != taken
            with WS(thrum) as ws:
                assert ws.call("health")["status"] == "ok"
            assert f"port {taken} is busy" in (thrum.var / "daemon.log").read_text()
        finally:
            thrum.stop()
    finally:
        busy.close()


def test_port_from_config(thrum, env):
    env.pop("THRUM_WS_PORT")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    (thrum.repo / ".thrum" / "config.json").write_text(json.dumps({"daemon": {"ws_port": port}}))
    thrum.start()
    try:
        assert ws_port(thrum) == port
    finally:
        thrum.stop()


# -- thrum ui and the page ------------------------------------------------------------------------

def test_thrum_ui_link_sets_a_cookie(daemon):
    t = daemon
    info = t.json("ui", "--no-open")
    port = ws_port(t)
    assert info["port"] == port and info["url"] == f"http://127.0.0.1:{port}/?token={ws_token(t)}"
    assert "thrum ui" in http_get(port, "/")[2].decode()  # no token: a page that says how to get in
    status, headers, _ = http_get(port, f"/?token={ws_token(t)}")
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"].split(";")[0]
    assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
    status, headers, body = http_get(port, "/", {"Cookie": cookie})
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert b"<html" in body.lower()
    status, _, body = http_get(port, "/", {"Cookie": cookie.split("=")[0] + "=nope"})
    assert status == 401
    human = t.run("ui", "--no-open").stdout
    assert info["url"] in human
    assert f"http://127.0.0.1:{port}/ is enough" in human  # the cookie: the token is needed once
