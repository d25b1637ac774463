"""Access: who may reach the daemon, act as whom, and write where. Each test tries hard to break one promise.

* another local uid is refused on the Unix socket, and thrum's private files are not readable by others;
* HTTP and WebSocket refuse requests without the token, from another origin, or for another Host;
* no caller acts as, or ends the session of, another agent; a browser never acts as an agent;
* no name, id or remote log line leads a write outside the repository's thrum directories.

"Act as" in thrum: a Unix-socket caller names itself with `caller_agent_id` (or is the repo's only
identity). Same-uid processes are trusted to name themselves truthfully (any local process can set
THRUM_NAME); what the daemon enforces is that every write is checked against the identity the request
names: authors alone edit and delete, owners alone end or change sessions and subscriptions, read
markers are the caller's own, and only users post `acting_as`. A WebSocket connection needs the token,
acts as nobody until it names one identity, and cannot switch; a browser (it always sends Origin) may
only be a user.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from _rt import WS, http_get, raw_http, ws_port, ws_token
from conftest import FACTOR, ROOT, Thrum, git, make_repo, wait_for
from helpers import RawConn, log_events, register

NOBODY = 65534


@pytest.fixture
def env(env):
    env["THRUM_WS_PORT"] = "0"
    return env


# -- helpers -----------------------------------------------------------------------------------------

def snapshot(root: Path) -> set[str]:
    """Every path under root (symlinks not followed)."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.add(os.path.join(dirpath, name))
    return out


def assert_nothing_new_outside(root: Path, before: set[str], allowed: list[Path]) -> None:
    """No path appeared under root except below one of the allowed directories."""
    prefixes = tuple(str(a) + os.sep for a in allowed)
    tops = {str(a) for a in allowed}
    stray = sorted(p for p in snapshot(root) - before if p not in tops and not p.startswith(prefixes))
    assert stray == [], f"files appeared outside the expected directories: {stray}"


def event_ids(t) -> set[str]:
    return {e["event_id"] for _, e in log_events(t.sync_dir)}


def events_since(t, before: set[str]) -> list[dict]:
    return [e for _, e in log_events(t.sync_dir) if e["event_id"] not in before]


def rpc_error(conn: RawConn, method: str, params: dict) -> dict:
    reply = conn.call(method, params)
    assert "error" in reply, f"{method} {params} was accepted: {reply}"
    return reply["error"]


def run_as(uid: int, argv: list[str], cwd: str, env: dict) -> subprocess.CompletedProcess:
    def drop():
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    return subprocess.run(argv, cwd=cwd, env=env, preexec_fn=drop, capture_output=True, text=True,
                          timeout=60 * FACTOR)


def python_for(uid: int) -> str | None:
    """An interpreter that `uid` may run (ours may sit in root's private home)."""
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        if not os.path.exists(candidate):
            continue
        try:
            proc = run_as(uid, [candidate, "-c", "import argparse, json, socket"], "/", {"PATH": "/usr/bin:/bin"})
        except (OSError, subprocess.SubprocessError):
            continue
        if proc.returncode == 0:
            return candidate
    return None


# -- 1. another local uid ---------------------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the CLI under another uid")


@pytest.fixture
def shared_repo(env):
    """A repo under a directory other users may traverse (pytest's tmp dir is private to root)."""
    top = Path(tempfile.mkdtemp(prefix="thrum-access-"))
    try:
        os.chmod(top, 0o711)
        shutil.copytree(ROOT / "thrum", top / "code" / "thrum", ignore=shutil.ignore_patterns("__pycache__"))
        for path in [top / "code", *(top / "code").rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        t = Thrum(make_repo(top / "repo", env), env)
        t.init()
        t.start()
        try:
            yield t, top
        finally:
            t.stop()
    finally:
        shutil.rmtree(top, ignore_errors=True)


@needs_root
def test_cli_of_another_uid_gets_a_clear_error_and_the_daemon_keeps_serving(shared_repo):
    t, top = shared_repo
    python = python_for(NOBODY)
    if python is None:
        pytest.skip(f"no Python interpreter that uid {NOBODY} may run")
    t.quickstart("alice")
    os.chmod(t.repo, 0o755)
    nobody_env = {"PATH": "/usr/bin:/bin", "HOME": str(top), "PYTHONPATH": str(top / "code"),
                  "THRUM_NAME": "alice", "THRUM_WS_PORT": "0"}
    commands = [["status"], ["send", "from another user"], ["--json", "inbox"], ["daemon", "status"],
                ["daemon", "stop"], ["context", "save", "--file", "/etc/hostname"], ["ui", "--no-open"]]

    def attempt_all() -> None:
        for args in commands:
            proc = run_as(NOBODY, [python, "-m", "thrum", *args], str(t.repo), nobody_env)
            out = proc.stdout + proc.stderr
            assert proc.returncode == 1, (args, out)
            assert "belong to uid 0" in out and f"you are uid {NOBODY}" in out, (args, out)
            assert "Traceback" not in out and "unexpected error" not in out, (args, out)

    attempt_all()  # the daemon's permissions keep the other user out of var/ altogether
    os.chmod(t.var, 0o711)  # opened up by mistake: the peer check must still refuse every request
    os.chmod(t.socket, 0o666)
    try:
        attempt_all()
    finally:
        os.chmod(t.socket, 0o600)
        os.chmod(t.var, 0o700)
    assert f"refused a connection from uid {NOBODY}" in (t.var / "daemon.log").read_text()
    assert t.call("health")["status"] == "ok"
    assert [e for _, e in log_events(t.sync_dir) if "another user" in json.dumps(e)] == []


def test_private_files_are_not_readable_by_others(daemon):
    """Everything in .thrum/var (pid, token, lock, journal, database, log, socket) and the identities."""
    t = daemon
    t.quickstart("alice")
    t.run("send", "something private", name="alice")
    t.run("context", "save", "--file", str(t.repo / "README.md"), name="alice")
    for path in ("messages.db", "messages.db-wal"):  # an older version left them 0644
        os.chmod(t.var / path, 0o644)
    os.chmod(t.var / "daemon.log", 0o644)
    t.stop()
    t.start()
    t.run("send", "after the restart", name="alice")

    def loose(root: Path) -> list[str]:
        bad = []
        for path in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            if mode & 0o077:
                bad.append(f"{path.relative_to(t.repo)} {oct(mode)}")
        return bad

    names = {p.name for p in t.var.iterdir()}
    assert {"thrum.pid", "ws.token", "journal", "messages.db", "daemon.log", "thrum.sock"} <= names
    assert loose(t.var) == []
    assert stat.S_IMODE(os.stat(t.var).st_mode) == 0o700
    identities = t.repo / ".thrum" / "identities"
    assert [p for p in identities.iterdir() if stat.S_IMODE(p.stat().st_mode) & 0o077] == []
    assert stat.S_IMODE(identities.stat().st_mode) & 0o007 == 0
    # a rebuilt database is private too
    t.stop()
    (t.var / "messages.db").unlink()
    t.start()
    assert loose(t.var) == []


# -- 2. HTTP and WebSocket: token, Origin, Host ----------------------------------------------------------------

BAD_ORIGINS = ["http://evil.test", "null", "http://127.0.0.1.evil.test", "http://localhost@evil.test",
               "http://127.0.0.1", "https://127.0.0.1:{port}", "http://127.0.0.1:{other}", "http://[::1]",
               "http://localhost:{port}.evil.test", "file://", "http://0.0.0.0:{port}"]
PATHS = ["/", "/index.html", "/ui/app.js", "/some/client/route", "/assets/missing.js", "/favicon.ico"]


def _ws_head(port: int, path: str, extra: dict) -> bytes:
    head = {"Host": f"127.0.0.1:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13", **extra}
    return (f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n").encode()


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_every_path_refuses_bad_tokens_origins_and_hosts(agents):
    t = agents
    t.run("send", "SECRET-CONTENT-42", name="alice")
    port, token = ws_port(t), ws_token(t)
    good = {"Cookie": f"thrum_token_{port}={token}"}
    wrong_same_length = ("A" if token[0] != "A" else "B") + token[1:]
    bad_tokens = [
        {},                                                     # none
        {"Cookie": f"thrum_token_{port}=wrong"},                 # wrong
        {"Cookie": f"thrum_token_{port}={wrong_same_length}"},   # right length, wrong
        {"Cookie": f"thrum_token_{port}={token[:-1]}"},          # a prefix
        {"Cookie": f"thrum_token_{port + 1}={token}"},           # another daemon's cookie
        {"Cookie": f"thrum_token={token}"},
        {"Authorization": f"Basic {token}"},                     # the right token in the wrong place
        {"Authorization": f"Token {token}"},
        {"X-Thrum-Token": token},
        {"Token": token},
        {"Cookie": f"thrum_token_{port}=; x={token}"},
    ]
    refused = 0
    for path in PATHS + ["/ws", f"/{token}", f"/ws/{token}", f"/ws#token={token}"]:
        for headers in bad_tokens:
            status, hdrs, body = http_get(port, path, headers)
            assert status == 401, (path, headers, status)
            assert token.encode() not in body and b"SECRET-CONTENT-42" not in body and b"alice" not in body
            refused += 1
        answer = raw_http(port, _ws_head(port, path, {}))
        assert _status(answer) == 401, path
        for query in (f"?TOKEN={token}", f"?tok={token}", f"?token={wrong_same_length}", f"?token=x&token={token}"):
            status, _, _ = http_get(port, path + query)
            assert status == 401, (path, query)
            refused += 1
        for origin in BAD_ORIGINS:
            origin = origin.format(port=port, other=port + 1)
            for headers in (good, {"Authorization": f"Bearer {token}"}):
                status, _, body = http_get(port, path, {**headers, "Origin": origin})
                assert status == 403, (path, origin, status)
                assert b"SECRET" not in body
                refused += 1
            assert _status(raw_http(port, _ws_head(port, path + f"?token={token}", {"Origin": origin}))) == 403
        # DNS rebinding: a valid token, but a Host that is not our loopback address and port
        for host in ("evil.test", f"evil.test:{port}", f"127.0.0.1:{port + 1}", "127.0.0.1", f"localhost.:{port}",
                     f"127.0.0.2:{port}", f"0.0.0.0:{port}", f"127.0.0.1:{port}@evil.test", ""):
            status, _, _ = http_get(port, path, {**good, "Host": host})
            assert status in (400, 403), (path, host, status)
            refused += 1
    print(f"refused {refused} HTTP requests")
    # the same paths with the token, our Host and our Origin (or none) work
    for path in PATHS:
        status, _, _ = http_get(port, path, {**good, "Origin": f"http://127.0.0.1:{port}"})
        assert status in (200, 404), path
    with WS(t, origin=f"http://localhost:{port}") as ws:
        assert ws.call("health")["status"] == "ok"
    assert t.call("health")["status"] == "ok"


def test_page_without_token_explains_and_leaks_nothing(agents):
    t = agents
    t.run("send", "SECRET-CONTENT-42", name="alice")
    port, token = ws_port(t), ws_token(t)
    status, headers, body = http_get(port, "/")
    text = body.decode()
    assert status == 401 and headers["content-type"].startswith("text/html")
    assert "thrum ui" in text and "No access token" in text
    assert headers.get("cache-control") == "no-store" and "set-cookie" not in headers
    for secret in (token, "SECRET-CONTENT-42", "alice", str(t.repo), "test@example.com"):
        assert secret not in text, secret
    status, _, body = http_get(port, "/?token=" + "x" * len(token))
    assert status == 401 and b"not valid" in body and token.encode() not in body


def test_token_is_compared_in_constant_time(monkeypatch):
    """hmac.compare_digest does the comparison, for any length and content of candidate."""
    import hmac

    from thrum.ws import WebServer

    server = WebServer(paths=None)
    server.token = "t" * 43
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    assert server.token_ok("t" * 43)
    for candidate in ("t" * 42 + "u", "t" * 42, "", None, "é" * 43, "t" * 4300):
        assert not server.token_ok(candidate)
    assert len(calls) == 5  # the right token and every non-empty wrong one (empty ones never match)


# -- 3. nobody acts as, or ends the session of, another agent ------------------------------------------------------

def _setup_victim(t) -> dict:
    """bob's session, message and subscription: what the attacks below aim at."""
    with t.client() as c:
        bob = {"session_id": c.call("agent.whoami", {"caller_agent_id": "bob"})["session_id"]}
        bob["message_id"] = c.call("message.send", {"content": "bob's words", "caller_agent_id": "bob"})["message_id"]
        bob["subscription_id"] = c.call("subscribe", {"all": True, "caller_agent_id": "bob"})["subscription_id"]
    return bob


def _attacks(bob: dict) -> list[tuple[str, dict]]:
    sid, mid = bob["session_id"], bob["message_id"]
    return [
        ("message.edit", {"message_id": mid, "content": "forged"}),
        ("message.delete", {"message_id": mid}),
        ("session.end", {"session_id": sid}),
        ("session.heartbeat", {"session_id": sid}),
        ("session.setIntent", {"session_id": sid, "intent": "forged"}),
        ("session.setTask", {"session_id": sid, "current_task": "forged"}),
        ("session.start", {"agent_id": "bob"}),
        ("unsubscribe", {"subscription_id": bob["subscription_id"]}),
        ("message.send", {"content": "as bob", "acting_as": "bob"}),
    ]


def _bob_unchanged(t, bob: dict) -> None:
    msg = t.call("message.get", message_id=bob["message_id"])["message"]
    assert msg["body"]["content"] == "bob's words" and not msg["deleted"]
    session = t.call("agent.whoami", caller_agent_id="bob")
    assert session["session_id"] == bob["session_id"]
    listed = [s for s in t.call("session.list", agent_id="bob")["sessions"] if s["session_id"] == bob["session_id"]]
    assert listed[0]["status"] == "active" and "intent" not in listed[0] and "current_task" not in listed[0]
    subs = t.call("subscriptions.list", caller_agent_id="bob")["subscriptions"]
    assert bob["subscription_id"] in [s["id"] for s in subs]


def test_unix_caller_cannot_act_for_another_agent(agents):
    t = agents
    bob = _setup_victim(t)
    before = event_ids(t)
    refused = 0
    with RawConn(t.socket) as c:
        for method, params in _attacks(bob):
            for caller in ({"caller_agent_id": "alice"}, {}):  # named as alice, or naming nobody
                if method in ("message.send", "session.start") and not caller:
                    continue  # no caller: two identities here, so the daemon cannot guess one (tested below)
                err = rpc_error(c, method, {**params, **caller})
                assert err["code"] in (-32002, -32602), (method, caller, err)
                refused += 1
        # forged author fields are ignored: the message is alice's, in alice's session
        sent = c.call("message.send", {"content": "mine", "caller_agent_id": "alice", "agent_id": "bob",
                                       "from": "bob", "author": "bob", "session_id": bob["session_id"],
                                       "authored_by": "bob"})["result"]
        got = t.call("message.get", message_id=sent["message_id"])["message"]
        assert got["agent_id"] == "alice" and got["author"]["session_id"] != bob["session_id"]
        assert "authored_by" not in got or got["authored_by"] in ("", None)
        # read markers are the caller's own, whatever else the params say
        c.call("message.markRead", {"message_ids": [sent["message_id"]], "caller_agent_id": "alice",
                                    "agent_id": "bob", "reader": "bob", "for_agent": "bob"})
    reads = [e for _, e in log_events(t.sync_dir) if e["type"] == "message.read"]
    assert [e["agent_id"] for e in reads] == ["alice"]
    _bob_unchanged(t, bob)
    new = [e["type"] for e in events_since(t, before)]
    assert sorted(new) == ["message.create", "message.read"], new  # the refused calls wrote nothing
    print(f"refused {refused} forged Unix requests")


def test_websocket_cannot_act_for_another_agent(agents):
    t = agents
    bob = _setup_victim(t)
    before = event_ids(t)
    port = ws_port(t)
    with WS(t) as ws:  # a browser user, bound by user.register
        ws.call("user.register", username="mallory")
        for method, params in _attacks(bob)[:-1]:
            for caller in ({}, {"caller_agent_id": "bob"}):
                assert ws.request(method, **params, **caller)["error"]["code"] == -32002, (method, caller)
        for method, params in (("message.markRead", {"message_ids": [bob["message_id"]]}),
                               ("subscribe", {"all": True}), ("agent.register", {"name": "bob", "role": "x",
                                                                                "module": "y", "force": True})):
            assert ws.request(method, **params, caller_agent_id="bob")["error"]["code"] == -32002, method
        assert ws.request("user.register", username="bob")["error"]["code"] == -32002
    with WS(t, origin=f"http://127.0.0.1:{port}") as page:  # a browser never claims an agent
        for method, params in (("message.list", {"caller_agent_id": "alice"}),
                               ("message.send", {"content": "x", "caller_agent_id": "alice"}),
                               ("agent.register", {"name": "bob", "role": "x", "module": "y", "force": True}),
                               ("agent.register", {"name": "newbie", "role": "x", "module": "y"})):
            assert page.request(method, **params)["error"]["code"] == -32002, (method, params)
        page.call("user.register", username="browser-user")
        typed = page.call("message.send", content="typed for alice", acting_as="alice")
        got = t.call("message.get", message_id=typed["message_id"])["message"]
        assert got["agent_id"] == "alice" and got["authored_by"] == "user:browser-user"
    with WS(t) as ws:  # a script with the token binds to the first agent it names, and stays it
        ws.send_raw(json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "agent.whoami",
                                 "params": {"caller_agent_id": "alice"}},
                                {"jsonrpc": "2.0", "id": 2, "method": "session.end",
                                 "params": {"session_id": bob["session_id"], "caller_agent_id": "bob"}},
                                {"jsonrpc": "2.0", "id": 3, "method": "session.end",
                                 "params": {"session_id": bob["session_id"]}}]))
        replies = ws.recv()
        assert replies[0]["result"]["agent_id"] == "alice"
        assert replies[1]["error"]["code"] == -32002 and replies[2]["error"]["code"] == -32002
    _bob_unchanged(t, bob)
    new = events_since(t, before)
    assert all(e.get("agent_id") != "bob" for e in new), new
    assert sorted(e["type"] for e in new) == ["agent.register", "agent.register", "message.create"]


def test_mcp_tools_cannot_name_another_caller(agents):
    pytest.importorskip("mcp")
    from test_mcp import call, mcp_server, run

    t = agents
    bob = _setup_victim(t)

    async def main():
        async with mcp_server(t, "alice") as alice:
            out = []
            for extra in ({"caller_agent_id": "bob"}, {"acting_as": "bob"}, {"from": "bob"}, {"agent_id": "bob"}):
                res = await call(alice, "send_message", to="@bob", content="forged", **extra)
                out.append(res.is_error)
            res = await call(alice, "send_message", to="@bob", content="honest")
            return out, res.structured_content

    refused, sent = run(main)
    assert refused == [True] * 4
    assert t.call("message.get", message_id=sent["message_id"])["message"]["agent_id"] == "alice"
    assert [m["body"]["content"] for m in t.call("message.list", author_id="bob")["messages"]] == ["bob's words"]
    _bob_unchanged(t, bob)


def test_without_a_caller_a_session_is_ended_only_by_the_only_identity(daemon):
    t = daemon
    t.quickstart("alice")
    sid = t.call("agent.whoami", caller_agent_id="alice")["session_id"]
    # one identity in the repo: a caller that names nobody is that identity
    assert t.call("session.setIntent", session_id=sid, intent="solo")["intent"] == "solo"
    t.quickstart("bob", "reviewer")
    with RawConn(t.socket) as c:
        err = rpc_error(c, "session.end", {"session_id": sid})
        assert "caller_agent_id is required" in err["message"]
    assert t.call("agent.whoami", caller_agent_id="alice")["session_id"] == sid


# -- 4. no path escapes ----------------------------------------------------------------------------------------------

EVIL = ["../../escape", "..", "/tmp/escape", "a/b", "..\\escape", "%2e%2e%2fescape", "x\x00y", "~root", ".hidden",
        "x/../../escape", "Alice", "escape\n", " ", "a" * 300]


def _writes_with(value: str) -> list[tuple[str, dict]]:
    b64 = "aGk="  # "hi"
    return [
        ("agent.register", {"name": value, "role": "r", "module": "m"}),
        ("agent.register", {"role": value, "module": "m"}),
        ("agent.register", {"role": "r", "module": value}),
        ("agent.delete", {"name": value}),
        ("group.create", {"name": value}),
        ("group.member.add", {"group": "team", "member_type": "role", "member_value": value}),
        ("context.save", {"agent_name": value, "content": b64}),
        ("context.preamble.save", {"agent_name": value, "content": b64}),
        ("context.show", {"agent_name": value}),
        ("context.clear", {"agent_name": value}),
        ("context.sync", {"agent_name": value}),
        ("session.start", {"agent_id": value, "caller_agent_id": value}),
        ("session.heartbeat", {"session_id": value, "caller_agent_id": "alice"}),
        ("message.get", {"message_id": value}),
        ("message.edit", {"message_id": value, "content": "x", "caller_agent_id": "alice"}),
        ("message.send", {"content": "x", "caller_agent_id": value}),
        ("message.send", {"content": "x", "caller_agent_id": "alice", "mentions": [value]}),
        ("message.send", {"content": "x", "caller_agent_id": "alice", "reply_to": value}),
    ]


def test_no_name_or_id_leads_a_write_outside(agents, tmp_path):
    t = agents
    t.call("group.create", name="team", caller_agent_id="alice")
    before = snapshot(tmp_path)
    accepted = []
    tried = 0
    with RawConn(t.socket) as c:
        for value in EVIL:
            for method, params in _writes_with(value):
                reply = c.call(method, params)
                tried += 1
                if "error" not in reply:
                    accepted.append((method, value))
                assert reply.get("error", {}).get("code") != -32603, (method, value, reply)
        # fields stored as data, never used as paths, are accepted: prove they name no file either
        for value in EVIL[:4]:
            c.call("message.send", {"content": "x", "caller_agent_id": "alice", "thread_id": value,
                                    "client_id": value, "scopes": [{"type": value, "value": value}]})
            c.call("subscribe", {"scope": {"type": "module", "value": value}, "caller_agent_id": "alice"})
    assert accepted == [], accepted
    assert_nothing_new_outside(tmp_path, before, [t.var, t.sync_dir / "messages", t.repo / ".git" / "objects"])
    assert sorted(p.name for p in (t.sync_dir / "messages").iterdir()) == ["alice.jsonl"]  # bob never sent
    print(f"refused {tried} requests carrying {len(EVIL)} hostile names")
    # the CLI refuses the same names before they reach a path
    for args in (["context", "save", "--agent", "../../escape", "--file", str(t.repo / "README.md")],
                 ["context", "show", "--agent", "/tmp/escape"], ["quickstart", "--name", "../x", "--role", "r",
                                                                 "--module", "m"],
                 ["agent", "register", "--name", "a/b", "--role", "r", "--module", "m"]):
        proc = t.run(*args, check=False)
        assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr, (args, proc.stderr)
    assert_nothing_new_outside(tmp_path, before, [t.var, t.sync_dir / "messages", t.repo / ".git" / "objects"])


def test_hostile_identity_file_and_redirect(daemon, tmp_path):
    t = daemon
    before = snapshot(tmp_path)
    ids = t.repo / ".thrum" / "identities"
    ids.mkdir(exist_ok=True)
    (ids / "evil.json").write_text(json.dumps({"version": 1, "agent": {"Name": "../../escape", "Role": "../r",
                                                                       "Module": "/m"}}))
    for args in (["send", "hi"], ["context", "save", "--file", str(t.repo / "README.md")],
                 ["quickstart", "--role", "r", "--module", "m"], ["session", "start"]):
        proc = t.run(*args, name="../../escape", check=False)
        assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr, (args, proc.stdout, proc.stderr)
    for args in (["status"], ["whoami"]):  # reads may show the odd name; they write nothing
        assert "Traceback" not in t.run(*args, name="../../escape", check=False).stderr
    (ids / "evil.json").unlink()
    assert_nothing_new_outside(tmp_path, before, [t.var, t.repo / ".git" / "objects"])
    # a worktree's redirect may only name a .thrum directory, never a place to put var/ in
    outside = tmp_path / "outside"
    outside.mkdir()
    wt = tmp_path / "wt"
    git(t.repo, "worktree", "add", "-q", str(wt), "-b", "feature", env=t.env)
    (wt / ".thrum").mkdir()
    for target in (str(outside), str(outside) + "/", str(t.repo / ".thrum" / ".." / ".." / "outside"), "../outside"):
        (wt / ".thrum" / "redirect").write_text(target + "\n")
        for args in (["daemon", "start"], ["status"], ["send", "hi"]):
            proc = t.run(*args, cwd=wt, check=False)
            assert proc.returncode != 0 and "Traceback" not in proc.stderr, (target, args, proc.stdout, proc.stderr)
    assert list(outside.iterdir()) == []


# -- 4b. lines merged from a remote ------------------------------------------------------------------------------------

from test_sync import as_other_writer, clones, force, remote, sync_env  # noqa: E402,F401  (fixtures)


def _line(**fields) -> bytes:
    base = {"v": 1, "timestamp": "2026-02-01T00:00:00Z"}
    return json.dumps({**base, **fields}, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def test_remote_lines_naming_paths_stay_in_their_file(tmp_path, clones, remote, sync_env):
    a = clones.clone("a")
    a.quickstart("alice")
    force(a)
    hostile = (_line(type="agent.register", event_id="evt_01KEVIL0000000000000000001", agent_id="../../escape",
                     kind="agent", name="../../escape", role="../r", module="/m")
               + _line(type="agent.session.start", event_id="evt_01KEVIL0000000000000000002",
                       agent_id="../../escape", session_id="../../ses")
               + _line(type="message.create", event_id="evt_01KEVIL0000000000000000003", agent_id="../../escape",
                       message_id="../../msg", session_id="../../ses", thread_id="../t",
                       body={"format": "markdown", "content": "from ../../escape"})
               + _line(type="group.create", event_id="evt_01KEVIL0000000000000000004", group_id="../g",
                       name="../../grp", created_by="../x")
               + _line(type="context.update", event_id="evt_01KEVIL0000000000000000005", agent_id="../../escape",
                       content="notes")
               + _line(type="agent.cleanup", event_id="evt_01KEVIL0000000000000000006", agent_id="../../../a",
                       reason="x", method="manual")
               + b'{"type":"message.create","agent_id":"/etc/x","broken\n')
    as_other_writer(tmp_path, remote, sync_env, {"messages/gopher.jsonl": hostile})
    before = snapshot(tmp_path)
    res = force(a)
    assert res["ok"] and res["bad_lines"] == 1, res
    data = (a.sync_dir / "messages" / "gopher.jsonl").read_bytes()  # every line kept, where the remote had it
    assert all(line in data for line in hostile.splitlines())
    assert a.call("health").get("bad_lines", 0) >= 1
    # acting as the remote's odd agent writes no file either
    with RawConn(a.socket) as c:
        for method, params in (("message.send", {"content": "x", "caller_agent_id": "../../escape"}),
                               ("message.edit", {"message_id": "../../msg", "content": "y",
                                                 "caller_agent_id": "../../escape"}),
                               ("message.delete", {"message_id": "../../msg", "caller_agent_id": "../../escape"}),
                               ("context.show", {"agent_name": "../../escape"})):
            err = rpc_error(c, method, params)
            assert err["code"] != -32603, (method, err)
        c.call("agent.cleanup", {"force": True, "threshold": 0})
    force(a)
    assert a.call("health")["status"] == "ok"
    assert_nothing_new_outside(tmp_path, before, [a.var, a.sync_dir / "messages", a.repo / ".git" / "objects",
                                                  a.repo / ".git" / "refs", a.repo / ".git" / "logs",
                                                  remote / "objects", remote / "refs"])
    assert sorted(p.name for p in (a.sync_dir / "messages").iterdir()) == ["gopher.jsonl"]


def test_symlinks_in_a_remote_branch_are_never_followed(tmp_path, clones, remote, sync_env):
    """A remote a-sync whose log files are symlinks: a new clone must neither write to nor push their targets."""
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-KEY-MATERIAL\n")
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    outside_dir = tmp_path / "outside_dir"
    outside_dir.mkdir()
    seed = tmp_path / "seed"  # made by the remote fixture; build the hostile commit there, by plumbing

    def plumb(args: list[str], data: str) -> str:
        return subprocess.run(["git", *args], cwd=seed, env=sync_env, input=data.encode(), capture_output=True,
                              check=True, timeout=60).stdout.decode().strip()

    def blob(text: str) -> str:
        return plumb(["hash-object", "-w", "--stdin"], text)

    def mktree(entries: str) -> str:
        return plumb(["mktree"], entries)

    msgs = mktree(f"120000 blob {blob(str(victim))}\talice.jsonl\n")
    tree = mktree(f"120000 blob {blob(str(secret))}\tevents.jsonl\n040000 tree {msgs}\tmessages\n")
    commit = git(seed, "commit-tree", tree, "-m", "hostile", env=sync_env)
    git(seed, "push", "-q", str(remote), f"{commit}:refs/heads/a-sync", env=sync_env)
    # and a second remote whose messages/ directory itself is a symlink
    tree2 = mktree(f"100644 blob {blob('')}\tevents.jsonl\n120000 blob {blob(str(outside_dir))}\tmessages\n")
    commit2 = git(seed, "commit-tree", tree2, "-m", "hostile dir", env=sync_env)

    before = snapshot(tmp_path)
    a = clones.clone("a")
    a.quickstart("alice")
    a.run("send", "hello", name="alice")
    force(a)
    assert secret.read_text() == "SECRET-KEY-MATERIAL\n" and victim.read_text() == "untouched\n"
    pushed = git(seed, "--git-dir", str(remote), "cat-file", "-p", "a-sync:events.jsonl", env=sync_env)
    assert "SECRET-KEY-MATERIAL" not in pushed
    assert str(secret) in pushed  # the link's target is kept as a (bad) line, like any unparseable line
    assert a.call("health").get("bad_lines", 0) >= 2
    for rel in ("events.jsonl", "messages", "messages/alice.jsonl"):
        assert not os.path.islink(a.sync_dir / rel), rel

    git(seed, "push", "-q", "--force", str(remote), f"{commit2}:refs/heads/a-sync", env=sync_env)
    b = clones.clone("b")
    b.quickstart("bob", "reviewer")
    b.run("send", "hello", name="bob")
    force(b)
    assert list(outside_dir.iterdir()) == []
    assert not os.path.islink(b.sync_dir / "messages")
    assert_nothing_new_outside(tmp_path, before, [tmp_path / "a", tmp_path / "b", remote])
