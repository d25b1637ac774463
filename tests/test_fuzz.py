"""Bad input (issue 8, point 3): fuzz the JSON-RPC framer and parser, every method's params, the HTTP side.

Three layers, each asked the same thing: whatever arrives, the answer is a well-formed
JSON-RPC response (a result, or an error with a client code), never -32603, never a
dropped connection, never a hang, and nothing the log or a rebuild cannot take.

1. In-process, no sockets: hypothesis streams of bytes through `LineFramer` and the
   daemon's `dispatch` (with a fake registry).
2. A real daemon (one per module): hypothesis params for every method the daemon
   registers, over the Unix socket and the WebSocket; then health, the daemon log and
   projection == rebuild.
3. Hand-made cases: huge lines, deep nesting, batches, ids, NUL, bad UTF-8, split writes,
   content of 32 KiB +-1, and garbage on the HTTP / WebSocket port.

Hypothesis runs derandomized with a bounded number of examples, so every run tries the
same inputs; the counts are printed at the end of the module.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FACTOR, ROOT, Thrum, make_repo
from helpers import RawConn, assert_log_clean, register, table_rows
from thrum import rpc
from thrum.daemon import Daemon

# Codes a client may get for a bad request: the standard ones and the documented -3200x (docs/rpc.md).
CLIENT_CODES = {-32700, -32600, -32601, -32602, -32000, -32001, -32002, -32003, -32004, -32005, -32006}

INPUTS: Counter = Counter()  # inputs tried, per section
# Reproducible in CI: the same examples every run, no example database written into the checkout.
FUZZ = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and INPUTS:
        total = sum(INPUTS.values())
        parts = ", ".join(f"{k} {v}" for k, v in sorted(INPUTS.items()))
        with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
            reporter.write_line(f"\ntest_fuzz: {total} inputs tried ({parts})")


def check_reply(raw: bytes, sent_id=None, *, check_id: bool = True) -> dict:
    """Assert `raw` is one well-formed JSON-RPC 2.0 response with a client error code or a result."""
    assert raw.endswith(b"\n") or not raw.endswith(b"\r"), raw[:200]
    text = raw.decode("utf-8")  # strict: a reply must be valid UTF-8 (Go and browsers reject the rest)
    msg = json.loads(text)
    assert isinstance(msg, dict) and msg.get("jsonrpc") == "2.0", text[:300]
    assert ("result" in msg) != ("error" in msg), text[:300]
    rid = msg.get("id", "missing")
    assert rid is None or isinstance(rid, (str, int, float)) and not isinstance(rid, bool), text[:300]
    if check_id:  # a line that is not JSON has no id to echo: JSON-RPC answers it with id null
        parse_error = msg.get("error", {}).get("code") == -32700
        assert rid == sent_id or parse_error and rid is None, text[:300]
    if "error" in msg:
        err = msg["error"]
        assert isinstance(err, dict) and isinstance(err.get("message"), str), text[:300]
        assert err.get("code") in CLIENT_CODES, f"not a client error code: {text[:500]}"
    return msg


# -- 1. in-process: framer, parser, dispatch ------------------------------------------------------

class _FakeStore:
    def savepoint(self):
        return 0

    def rollback_to(self, mark):
        pass

    def release(self):
        pass

    def rollback(self):
        pass

    def ensure_current(self):
        pass


def _typed_handler(p: rpc.Params, ctx) -> dict:
    """Reads every key through one of the Params accessors (picked by the key), as real handlers do."""
    accessors = (p.str, p.bool, lambda k: p.int(k, lo=0, hi=100, clamp=True), p.int, p.str_list, p.pairs, p.obj)
    for key in list(p.raw):
        accessors[sum(map(ord, key)) % len(accessors)](key)
    return {"ok": True, "echo": p.raw}


def make_dispatch():
    """The daemon's own dispatch path, up to a fake registry: line bytes in, reply bytes (or None) out."""
    registry = rpc.Registry()
    registry.add("echo", lambda p, ctx: {"params": p.raw})
    registry.add("typed", _typed_handler)
    registry.add("typed.write", _typed_handler, writes=True)
    registry.add("unix.only", lambda p, ctx: {}, transports=("ws",))
    daemon = SimpleNamespace(service=SimpleNamespace(registry=registry), store=_FakeStore(), request_listeners=[])
    daemon._ensure_current = lambda: Daemon._ensure_current(daemon)
    conn = SimpleNamespace(ctx=SimpleNamespace(transport="unix"))
    return lambda line: Daemon.dispatch(daemon, conn, line)[0]


DISPATCH = make_dispatch()

LONE_SURROGATES = ["\ud800", "\udfff", "a\udc00b"]
NASTY_TEXT = ["", " ", "\x00", "a\x00b", "\ufeff", "\ufeffalice", "\u202eevil\u202c", "e\u0301", "\u00e9", "😀",
              "👩\u200d👩\u200d👧", "../x", "a/b", ".", "..", "CON", "nul", "ALICE", "x" * 1000, "\n", "\r\n",
              "a\u2028b", "<&>", "' OR 1=1 --", "%s%n", "*"] + LONE_SURROGATES
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from([2 ** 63, -2 ** 63 - 1, 10 ** 300, -0]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.5, -0.0, 1e308, 5e-324]),
    st.text(max_size=30), st.sampled_from(NASTY_TEXT),
)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8) | st.sampled_from(NASTY_TEXT), inner, max_size=4), max_leaves=12)

valid_ids = st.none() | st.integers(-2 ** 53, 2 ** 53) | st.text(max_size=20) | st.sampled_from(NASTY_TEXT) | \
    st.floats(allow_nan=False, allow_infinity=False, width=32)
valid_requests = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0"), "method": st.sampled_from(["echo", "typed", "typed.write"]), "id": valid_ids},
    optional={"params": st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=5)})
any_requests = st.fixed_dictionaries({}, optional={
    "jsonrpc": st.sampled_from(["2.0", "1.0", "2", 2.0, None, ""]) | json_values,
    "method": st.sampled_from(["echo", "typed", "typed.write", "unix.only", "nope", "", "rpc.x"]) | json_values,
    "id": valid_ids | json_values,
    "params": json_values,
})

# Raw texts no json.dumps of a Python value gives: non-JSON constants, overflows, giant ints, deep nesting.
RAW_TOKENS = [b"NaN", b"-Infinity", b"Infinity", b"1e999", b"-1e400", b"1" * 5000, b"0x10", b"01", b"+1", b".5",
              b"'x'", b"undefined", b"[" * 3000, b"{\"a\":" * 3000, b"\"\\ud800\"", b"\"\\udc00\\ud800\"",
              b"\"\xed\xa0\x80\"", b"\"\xff\xfe\"", b"\xef\xbb\xbf{}", b"\x00", b"{\"a\":1,\"a\":2}", b"\"\\u0000\""]


def _as_line(obj, raw_swaps) -> bytes:
    """json.dumps of obj; then some strings are swapped for raw tokens (a value no encoder would write)."""
    text = json.dumps(obj).encode()
    for needle, token in raw_swaps:
        text = text.replace(json.dumps(needle).encode(), token, 1)
    return text


@st.composite
def request_lines(draw) -> bytes:
    kind = draw(st.sampled_from(["valid", "any", "mutated", "bytes", "token"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "token":
        return draw(st.sampled_from(RAW_TOKENS))
    obj = draw(valid_requests if kind == "valid" else any_requests)
    line = _as_line(obj, [])
    if kind == "mutated":
        if isinstance(obj.get("params"), (str, list, dict)):
            needle = draw(st.sampled_from(sorted(_strings_in(obj["params"])) or [""]))
            line = _as_line(obj, [(needle, draw(st.sampled_from(RAW_TOKENS)))])
        cut = draw(st.integers(0, len(line)))
        line = line[:cut] + draw(st.binary(max_size=4)) + line[cut + draw(st.integers(0, 3)):]
    return line


def _strings_in(value) -> set:
    if isinstance(value, str):
        return {value}
    if isinstance(value, list):
        return set().union(*map(_strings_in, value)) if value else set()
    if isinstance(value, dict):
        return set(value) | (set().union(*map(_strings_in, value.values())) if value else set())
    return set()


def _is_valid_request(line: bytes) -> bool:
    try:
        obj = json.loads(line)
    except ValueError:
        return False
    return isinstance(obj, dict) and obj.get("method") in ("echo", "typed", "typed.write")


@settings(max_examples=300, **FUZZ)
@given(lines=st.lists(request_lines(), min_size=1, max_size=8), ends=st.lists(st.sampled_from([b"\n", b"\r\n"])),
       cuts=st.lists(st.integers(0, 4000), max_size=6), limit=st.sampled_from([64, 512, 4096]))
def test_framer_and_dispatch_answer_every_line(lines, ends, cuts, limit):
    INPUTS["in-process lines"] += len(lines)
    stream = b"".join(line + (ends[i] if i < len(ends) else b"\n") for i, line in enumerate(lines))
    framer = rpc.LineFramer(limit)
    items = []
    pieces = [stream[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(stream)])]
    for piece in pieces:
        items += framer.feed(piece)
        assert framer.pending <= limit  # memory stays bounded by the line limit
    # The framer neither loses nor invents a line: the same as splitting on newlines.
    expected = [None if len(raw) > limit else raw for raw in stream.split(b"\n")[:-1]]
    assert [None if isinstance(i, rpc.Oversized) else i for i in items] == expected
    for item in items:
        if isinstance(item, rpc.Oversized):
            assert item.size > limit
            continue
        reply = DISPATCH(item)
        if reply is None:  # a notification: it must have been a request without id
            assert b'"id"' not in item or not _has_id(item)
            continue
        check_reply(reply, check_id=False)


def _has_id(line: bytes) -> bool:
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return True
    return isinstance(obj, dict) and "id" in obj


@settings(max_examples=200, **FUZZ)
@given(req=valid_requests)
def test_valid_requests_get_their_result_and_id(req):
    """The oracle the other way: a well-formed request to a tolerant handler is answered with a result."""
    INPUTS["in-process valid requests"] += 1
    reply = DISPATCH(json.dumps(req).encode())
    msg = check_reply(reply, req["id"])
    if req["method"] == "echo":
        assert msg["result"] == {"params": req.get("params") or {}}


def test_notifications_get_no_answer():
    for line in (b'{"jsonrpc":"2.0","method":"echo"}', b'{"jsonrpc":"2.0","method":"nope"}',
                 b'{"jsonrpc":"2.0","method":"typed","params":{"x":[1]}}'):
        assert DISPATCH(line) is None


@pytest.mark.parametrize("depth", [65, 500, 990, 100_000])
@pytest.mark.parametrize("shape", ["array", "object", "params"])
def test_deep_nesting_is_an_error_not_a_crash(shape, depth):
    nest = {"array": (b"[", b"]"), "object": (b'{"a":', b"}"), "params": (b'{"a":', b"}")}[shape]
    body = nest[0] * depth + b"1" + nest[1] * depth
    if shape == "params":
        body = b'{"jsonrpc":"2.0","method":"echo","id":7,"params":' + body + b"}"
    msg = check_reply(DISPATCH(body), check_id=False)
    assert "error" in msg, "nesting this deep must be refused"
    if shape == "params" and depth <= 500:  # deeper, the parser itself gives up (-32700, no id)
        assert msg["id"] == 7 and msg["error"]["code"] == -32602


def test_a_log_line_nested_too_deep_is_a_bad_line_not_a_crash():
    """Another writer (Go reads 10,000 levels) may leave such a line; rebuilds must skip it as bad."""
    from thrum.events import EventError, decode_line

    INPUTS["in-process lines"] += 1
    with pytest.raises(EventError):
        decode_line(b'{"type":"message.create","structured":' + b"[" * 100_000 + b"]" * 100_000 + b"}")


def test_memory_is_bounded_by_the_line_limit():
    """Feeding 5 MiB without a newline keeps at most MAX_LINE bytes; the line is reported once."""
    framer = rpc.LineFramer()
    chunk = b"x" * (256 * 1024)
    for _ in range(20):
        assert framer.feed(chunk) == []
        assert framer.pending <= rpc.MAX_LINE
    out = framer.feed(b"tail\n" + b'{"jsonrpc":"2.0","method":"echo","id":1}\n')
    assert isinstance(out[0], rpc.Oversized) and out[0].size == 20 * len(chunk) + 4
    assert out[1] == b'{"jsonrpc":"2.0","method":"echo","id":1}'
    INPUTS["in-process lines"] += 2


# -- 2. a real daemon: every registered method, fuzzed params -------------------------------------

# Builds the daemon's registry in a child process exactly as `thrum daemon run` does (store and
# components, no socket), so a method added anywhere is fuzzed without editing this file.
_LIST_METHODS = ("import json, sys\nfrom thrum import daemon, paths\n"
                 "print(json.dumps(daemon.registered_methods(paths.resolve(sys.argv[1]))))")


def registered_methods(t: Thrum) -> dict:
    proc = subprocess.run([sys.executable, "-c", _LIST_METHODS, str(t.repo)], env=t.env, capture_output=True,
                          text=True, timeout=60 * FACTOR)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def param_keys() -> list:
    """Every params key a handler reads (found in the source), so fuzzed params reach real code."""
    keys = set()
    for path in (ROOT / "thrum").glob("*.py"):
        keys |= set(re.findall(r'\.(?:str|int|bool|str_list|pairs|obj|get)\(\s*"([a-z_]{2,30})"', path.read_text()))
    return sorted(keys | {"scope", "ref", "intent", "current_task", "subscription_id", "branch"})


def _fuzz_env(home: Path) -> dict:
    home.mkdir()
    gitconfig = home / ".gitconfig"
    gitconfig.write_text("[user]\n\tname = Test User\n\temail = test@example.com\n[init]\n\tdefaultBranch = main\n")
    e = {k: v for k, v in os.environ.items() if not k.startswith(("THRUM_", "GIT_"))}
    e.update({"HOME": str(home), "GIT_CONFIG_GLOBAL": str(gitconfig), "GIT_CONFIG_NOSYSTEM": "1",
              "PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(home / ".config"), "THRUM_WS_PORT": "0"})
    return e


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """One daemon for the module, with agents, sessions, a group, messages and context to aim at."""
    base = tmp_path_factory.mktemp("fuzz")
    env = _fuzz_env(base / "home")
    t = Thrum(make_repo(base / "repo", env), env)
    t.init()
    methods = registered_methods(t)
    t.start()
    try:
        sessions = [register(t, "alice", "implementer", "auth"), register(t, "bob", "reviewer", "auth")]
        register(t, "idle", "tester", "qa", session=False)
        with t.client() as c:
            c.call("group.create", {"caller_agent_id": "alice", "name": "crew"})
            c.call("group.member.add", {"caller_agent_id": "alice", "group": "crew", "member_type": "agent",
                                        "member_value": "bob"})
            mids = [c.call("message.send", {"caller_agent_id": "alice", "content": "hello @bob",
                                            "mentions": ["@bob"]})["message_id"],
                    c.call("message.send", {"caller_agent_id": "bob", "content": "to the crew",
                                            "mentions": ["@crew"]})["message_id"]]
            c.call("context.save", {"agent_name": "alice", "content": base64.b64encode(b"notes").decode()})
            sub = c.call("subscribe", {"caller_agent_id": "alice", "all": True})
        plausible = ["alice", "bob", "idle", "crew", "everyone", "@bob", "@crew", "@reviewer", "@everyone",
                     "implementer", "auth", "agent", "role", "group", "markdown", "plain", "json", "high",
                     "created_at", "asc", "exact", "worktree", "mention", "module", str(t.repo), *sessions, *mids,
                     sub.get("subscription_id", "sub_x"), base64.b64encode(b"ctx").decode()]
        yield SimpleNamespace(t=t, methods=methods, plausible=plausible, keys=param_keys())
    finally:
        t.stop()


NAN_TOKENS = {"__nan__": b"NaN", "__inf__": b"-Infinity", "__big__": b"1e999"}


def param_values(plausible: list):
    leaf = st.one_of(
        st.sampled_from(plausible), st.sampled_from(NASTY_TEXT), st.sampled_from(sorted(NAN_TOKENS)),
        st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.sampled_from([0, -1, 2 ** 63, 10 ** 300]),
        st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["1", "true", "null", "-5", "1e3"]),
        st.text(max_size=20), st.sampled_from(["y" * 5000, "z" * 40000]),
        st.sampled_from(plausible).map(str.upper), st.sampled_from(plausible).map(lambda s: s + "\x00"),
    )
    pair = st.fixed_dictionaries({"type": leaf, "value": leaf})
    return st.recursive(leaf | pair, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["type", "value", "a", ""]), inner, max_size=3), max_leaves=6)


def fuzzed_params(keys: list, plausible: list):
    values = param_values(plausible)
    as_object = st.builds(
        lambda base, extra: {**base, **extra},
        st.fixed_dictionaries({}, optional={"caller_agent_id": st.sampled_from(["alice", "bob", "idle"])}),
        st.dictionaries(st.sampled_from(keys) | st.text(max_size=12), values, max_size=6))
    not_an_object = st.one_of(st.lists(values, max_size=3), st.text(max_size=10), st.integers(), st.booleans())
    return st.one_of(as_object, as_object, as_object, not_an_object)


def encode_request(method: str, params, rid: int) -> bytes:
    line = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": rid}).encode()
    for marker, token in NAN_TOKENS.items():
        line = line.replace(json.dumps(marker).encode(), token)
    return line


def _method_order(methods) -> list:
    """Destructive methods last, so the others still find alice, the group and the messages."""
    destructive = ("delete", "end", "cleanup", "clear", "remove", "unsubscribe")
    return sorted(methods, key=lambda m: (any(d in m for d in destructive), m))


EXAMPLES_PER_METHOD = 25


def test_every_unix_method_survives_fuzzed_params(target):
    methods = [m for m in _method_order(target.methods) if "unix" in target.methods[m]]
    assert {"health", "message.send", "agent.register"} <= set(methods)
    strategy = fuzzed_params(target.keys, target.plausible)
    conn = RawConn(target.t.socket, timeout=15)  # a stall bound, not a speed check: one request, 15 s
    counter = iter(range(1, 10 ** 9))
    try:
        for method in methods:
            @settings(max_examples=EXAMPLES_PER_METHOD, **FUZZ)
            @given(params=strategy)
            def one(params):
                rid = next(counter)
                conn.send(encode_request(method, params, rid) + b"\n")
                raw = _recv_line(conn)
                INPUTS["unix params"] += 1
                try:
                    INPUTS["unix params answered with a result"] += "result" in check_reply(raw, rid)
                except AssertionError as exc:
                    raise AssertionError(f"{method} {params!r:.300}: {exc}") from None

            one()
    finally:
        conn.close()


def _recv_line(conn: RawConn) -> bytes:
    while b"\n" not in conn.buf:
        chunk = conn.sock.recv(65536)
        assert chunk, "the daemon dropped the connection"
        conn.buf += chunk
    line, conn.buf = conn.buf.split(b"\n", 1)
    return line + b"\n"


def test_every_ws_method_survives_fuzzed_params(target):
    from _rt import WS

    methods = [m for m in _method_order(target.methods) if "ws" in target.methods[m]]
    strategy = fuzzed_params(target.keys, target.plausible)
    counter = iter(range(1, 10 ** 9))
    with WS(target.t) as ws:
        ws.call("user.register", username="fuzzer")
        for method in methods:
            @settings(max_examples=EXAMPLES_PER_METHOD // 3, **FUZZ)
            @given(params=strategy)
            def one(params):
                rid = next(counter)
                ws.conn.send(encode_request(method, params, rid).decode())
                while True:  # push notifications may come first
                    raw = ws.conn.recv(timeout=15 * FACTOR)  # stall bound, as above
                    if b'"id"' in raw.encode() if isinstance(raw, str) else raw:
                        break
                INPUTS["ws params"] += 1
                try:
                    msg = check_reply(raw.encode() if isinstance(raw, str) else raw, rid)
                    INPUTS["ws params answered with a result"] += "result" in msg
                except AssertionError as exc:
                    raise AssertionError(f"{method} {params!r:.300}: {exc}") from None

            one()


def _projection_tables(db: Path) -> list:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                           "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    finally:
        conn.close()


# -- 3. hand-made cases -----------------------------------------------------------------------------

def _req(method="health", params=None, rid=1, **extra) -> bytes:
    obj = {"jsonrpc": "2.0", "method": method, "id": rid, **extra}
    if params is not None:
        obj["params"] = params
    return json.dumps(obj).encode()


def _sized(total: int) -> bytes:
    """A health request of exactly `total` bytes (padded with an ignored param)."""
    bare = _req(params={"pad": ""})
    return _req(params={"pad": "x" * (total - len(bare))})


H = b'{"jsonrpc":"2.0","method":"health","id":%d}'
# name -> (bytes to send, the answers expected in order: "ok" for a result, else the error code)
UNIX_CASES = {
    "line of exactly 1 MiB": (_sized(rpc.MAX_LINE) + b"\n", ["ok"]),
    "line of 1 MiB + 1": (_sized(rpc.MAX_LINE + 1) + b"\n", [-32005]),
    "line of 5 MiB": (_sized(5 * rpc.MAX_LINE) + b"\n", [-32005]),
    "100k nested arrays": (b"[" * 100_000 + b"\n", [-32700]),
    "100k nested objects in params": (b'{"jsonrpc":"2.0","method":"health","id":1,"params":' + b'{"a":' * 100_000
                                      + b"1" + b"}" * 100_001 + b"\n", [-32700]),
    "params 66 deep": (b'{"jsonrpc":"2.0","method":"health","id":1,"params":{"a":' + b"[" * 64 + b"1" + b"]" * 64
                       + b"}}\n", [-32602]),
    "jsonrpc 1.0": (_req(jsonrpc="1.0") + b"\n", [-32600]),
    "jsonrpc as a number": (_req(jsonrpc=2.0) + b"\n", [-32600]),
    "jsonrpc null": (_req(jsonrpc=None) + b"\n", [-32600]),
    "no jsonrpc": (b'{"method":"health","id":1}\n', [-32600]),
    "empty batch": (b"[]\n", [-32600]),
    "batch of garbage": (b'[1,"x",null,{}]\n', [-32600]),
    "huge batch": (b"[" + b",".join([H % i for i in range(20_000)]) + b"]\n", [-32600]),
    "string id": (_req(rid="abc\u00e9\U0001F600") + b"\n", ["ok"]),
    "float id": (_req(rid=1.5) + b"\n", ["ok"]),
    "negative id": (_req(rid=-(2 ** 53)) + b"\n", ["ok"]),
    "null id": (_req(rid=None) + b"\n", ["ok"]),
    "bool id": (_req(rid=True) + b"\n", [-32600]),
    "object id": (_req(rid={"a": 1}) + b"\n", [-32600]),
    "array id": (_req(rid=[1]) + b"\n", [-32600]),
    "huge int id": (b'{"jsonrpc":"2.0","method":"health","id":' + b"9" * 400 + b"}\n", [-32700]),
    "NaN id": (b'{"jsonrpc":"2.0","method":"health","id":NaN}\n', [-32700]),
    "notifications get no answer": (b'{"jsonrpc":"2.0","method":"health"}\n{"jsonrpc":"2.0","method":"nope"}\n'
                                    + H % 5 + b"\n", ["ok"]),
    "a lone NUL line": (b"\x00\n" + H % 2 + b"\n", [-32700, "ok"]),
    "NUL inside a request": (b'{"jsonrpc":"2.0",\x00"method":"health","id":1}\n', [-32700]),
    "NUL between requests": (H % 1 + b"\n\x00\x00\n" + H % 2 + b"\n", ["ok", -32700, "ok"]),
    "NUL in content (kept)": (_req("message.send", {"caller_agent_id": "alice", "content": "a\x00b"}) + b"\n",
                              ["ok"]),
    "NUL in a name": (_req("group.create", {"caller_agent_id": "alice", "name": "a\x00b"}) + b"\n", [-32602]),
    "invalid UTF-8": (b'{"jsonrpc":"2.0","method":"health","id":1,"params":{"x":"\xff\xfe"}}\n', [-32700]),
    "UTF-8 surrogate bytes": (b'{"jsonrpc":"2.0","method":"group.create","id":1,"params":{"name":"\xed\xa0\x80"}}\n',
                              [-32602]),
    # Python's json reads UTF-16/32 and skips a BOM (RFC 8259 allows ignoring one): lenient, still answered.
    "UTF-16 text": (H.replace(b"%d", b"1").decode().encode("utf-16") + b"\n", ["ok"]),
    "BOM before the object": (b"\xef\xbb\xbf" + H % 1 + b"\n", ["ok"]),
    "CRLF line ends": (H % 1 + b"\r\n" + H % 2 + b"\r\n", ["ok", "ok"]),
    "many requests in one write": (b"".join(H % i + b"\n" for i in range(500)), ["ok"] * 500),
    "agent name ../x": (_req("agent.register", {"name": "../x", "role": "r", "module": "m"}) + b"\n", [-32602]),
    "group name a/b": (_req("group.create", {"caller_agent_id": "alice", "name": "a/b"}) + b"\n", [-32602]),
    "context of ../../x": (_req("context.save", {"agent_name": "../../x", "content": "aGk="}) + b"\n", [-32602]),
    "lone surrogate echoed": (_req("agent.register", {"name": "\ud800", "role": "r", "module": "m"}) + b"\n",
                              [-32602]),
    "content 32 KiB - 1": (_req("message.send", {"caller_agent_id": "alice", "content": "c" * 32767}) + b"\n",
                           ["ok"]),
    "content 32 KiB": (_req("message.send", {"caller_agent_id": "alice", "content": "é" * 16384}) + b"\n", ["ok"]),
    "content 32 KiB + 1": (_req("message.send", {"caller_agent_id": "alice", "content": "é" * 16384 + "c"})
                           + b"\n", [-32005]),
}


@pytest.mark.parametrize("case", list(UNIX_CASES))
def test_hand_made_input_on_the_unix_socket(target, case):
    payload, expected = UNIX_CASES[case]
    INPUTS["hand-made"] += 1
    register(target.t, "alice", "implementer", "auth")  # the params fuzz may have ended or deleted her
    with RawConn(target.t.socket, timeout=30) as conn:  # stall bound: 5 MiB on a busy 2-core box
        conn.send(payload)
        got = []
        for _ in expected:
            msg = check_reply(_recv_line(conn), check_id=False)
            got.append("ok" if "result" in msg else msg["error"]["code"])
        assert got == expected
        # Still in step: the next request on the same connection gets its own answer.
        conn.send(H % 424242 + b"\n")
        assert check_reply(_recv_line(conn), 424242)["result"]["status"] == "ok"


def test_a_request_split_into_one_byte_writes(target):
    INPUTS["hand-made"] += 1
    with RawConn(target.t.socket) as conn:
        for byte in _req(rid=9) + b"\n":
            conn.send(bytes([byte]))
        assert check_reply(_recv_line(conn), 9)["result"]["status"] == "ok"


def test_nesting_near_the_recursion_limit_never_breaks_send_or_list(target):
    """Just under Python's recursion limit, parsing works but encoding the event or a reply did not (-32603)."""
    register(target.t, "alice", "implementer", "auth")
    with RawConn(target.t.socket) as conn:
        for depth in range(900, 1001, 4):
            INPUTS["hand-made"] += 1
            conn.send(b'{"jsonrpc":"2.0","method":"message.send","id":1,"params":{"caller_agent_id":"alice",'
                      b'"content":"deep","structured":{"a":' + b"[" * depth + b"]" * depth + b"}}}\n")
            msg = check_reply(_recv_line(conn), check_id=False)
            assert "error" in msg, f"depth {depth} was stored"
        conn.send(_req("message.list", {"page_size": 100}, rid=2) + b"\n")
        assert "result" in check_reply(_recv_line(conn), 2)


def test_ws_batches_and_nesting(target):
    from _rt import WS

    with WS(target.t) as ws:
        for depth in range(900, 1001, 4):  # a batch is parsed by the WebSocket side first
            INPUTS["hand-made"] += 1
            ws.conn.send('[{"jsonrpc":"2.0","method":"health","id":1,"params":{"a":' + "[" * depth + "]" * depth
                         + "}}]")
            reply = json.loads(ws.conn.recv(timeout=15 * FACTOR))
            items = reply if isinstance(reply, list) else [reply]
            for item in items:
                check_reply(json.dumps(item).encode(), check_id=False)
                assert "error" in item
        for text, code in (("[]", -32600), ("[1]", -32600), ("[" + ",".join(['{"jsonrpc":"2.0","method":"health",'
                                                                             '"id":1}'] * 101) + "]", -32005),
                           ("[NaN]", -32700), ("not json", -32700), ('{"jsonrpc":"2.0","method":"health","id":'
                                                                     '1,"params":{"x":"\\ud800"}}', None)):
            INPUTS["hand-made"] += 1
            ws.conn.send(text)
            reply = json.loads(ws.conn.recv(timeout=15 * FACTOR))
            item = reply[0] if isinstance(reply, list) else reply
            check_reply(json.dumps(item).encode(), check_id=False)
            if code is not None:
                assert item["error"]["code"] == code, text[:60]
        # A name with a lone surrogate is echoed in the error: the frame must still be valid UTF-8 text.
        msg = ws.request("agent.register", name="\ud800x", role="r", module="m")
        assert msg["error"]["code"] == -32602
        assert ws.call("health")["status"] == "ok"


# -- the HTTP side --------------------------------------------------------------------------------------

def _http_raw(port: int, data: bytes) -> bytes:
    """Send `data`, then read until the daemon closes (bounded: every wait has a 15 s stall limit)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15 * FACTOR) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon may refuse before reading everything: what it answered still counts
        chunks = []
        deadline = time.monotonic() + 15 * FACTOR
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        else:
            raise AssertionError("the daemon neither answered nor closed")
    return b"".join(chunks)


def _upgrade(port: int, token: str, **over) -> bytes:
    head = {"Host": f"127.0.0.1:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(), "Sec-WebSocket-Version": "13"}
    head.update(over)
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items() if v is not None)
    return f"GET /ws?token={token} HTTP/1.1\r\n{lines}\r\n".encode()


HTTP_CASES = {
    "TLS client hello": lambda p, tok: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(200),
    "garbage line": lambda p, tok: b"GARBAGE\r\n\r\n",
    "method only": lambda p, tok: b"GET\r\n\r\n",
    "HTTP/9.9": lambda p, tok: b"GET / HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
    "NUL bytes": lambda p, tok: b"\x00" * 5000 + b"\r\n\r\n",
    "request line of 100 KB": lambda p, tok: b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n",
    "500 headers": lambda p, tok: b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % p
                                  + b"".join(b"X-H%d: v\r\n" % i for i in range(500)) + b"\r\n",
    "one 64 KB header": lambda p, tok: b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-Big: " % p + b"b" * 65536
                                       + b"\r\n\r\n",
    "header without a colon": lambda p, tok: b"GET / HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n",
    "invalid UTF-8 path": lambda p, tok: b"GET /\xff\xfe HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % p,
    "upgrade without a key": lambda p, tok: _upgrade(p, tok, **{"Sec-WebSocket-Key": None}),
    "upgrade with a bad key": lambda p, tok: _upgrade(p, tok, **{"Sec-WebSocket-Key": "not base64!"}),
    "upgrade version 12": lambda p, tok: _upgrade(p, tok, **{"Sec-WebSocket-Version": "12"}),
    "upgrade to something else": lambda p, tok: _upgrade(p, tok, Upgrade="h2c"),
    "upgrade with a body": lambda p, tok: _upgrade(p, tok, **{"Content-Length": "5"}) + b"hello",
    "POST with a huge length": lambda p, tok: b"POST /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                                              b"Content-Length: 99999999999999999999\r\n\r\nx" % p,
}


def _assert_ws_alive(t) -> None:
    from _rt import WS

    with WS(t) as ws:
        assert ws.call("health")["status"] == "ok"
    assert t.call("health")["status"] == "ok"


@pytest.mark.parametrize("case", list(HTTP_CASES))
def test_bad_http_gets_a_4xx_and_the_daemon_keeps_serving(target, case):
    from _rt import ws_port, ws_token

    INPUTS["hand-made"] += 1
    port = ws_port(target.t)
    answer = _http_raw(port, HTTP_CASES[case](port, ws_token(target.t)))
    if answer:  # a clean refusal: an HTTP 4xx status line
        assert re.match(rb"HTTP/1\.[01] 4\d\d ", answer), answer[:200]
    _assert_ws_alive(target.t)


def _frame(opcode: int, payload: bytes, *, fin=True, mask=True, rsv=0, length: int | None = None) -> bytes:
    """A hand-built WebSocket frame (RFC 6455 5.2), so it can break every rule."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    if n < 126:
        head = bytes([first, (0x80 if mask else 0) | n])
    elif n < 1 << 16:
        head = bytes([first, (0x80 if mask else 0) | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first, (0x80 if mask else 0) | 127]) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = b"\x01\x02\x03\x04"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


WS_FRAMES = {
    "unmasked frame": _frame(1, H % 1, mask=False),
    "reserved bits": _frame(1, H % 1, rsv=7),
    "unknown opcode": _frame(3, b"x"),
    "control frame over 125 bytes": _frame(9, b"p" * 126),
    "fragmented control frame": _frame(9, b"p", fin=False),
    "continuation without a start": _frame(0, b"x"),
    "text that is not UTF-8": _frame(1, b'{"x":"\xff"}'),
    "close with an invalid code": _frame(8, (999).to_bytes(2, "big")),
    "close with a 1-byte payload": _frame(8, b"\x03"),
    "length of 2**62": _frame(1, b"", length=1 << 62),
    "message over 1 MiB": _frame(1, b"x" * ((1 << 20) + 1)),
    "new message inside a fragmented one": _frame(1, b"[", fin=False) + _frame(1, b"x"),
}


def _read_frame(s: socket.socket):
    """(opcode, payload) of the daemon's next frame, or None if it closed the connection."""
    data = b""
    deadline = time.monotonic() + 15 * FACTOR  # stall bound: the daemon must answer or close, not wait
    while time.monotonic() < deadline:
        if len(data) >= 2:
            n, start = data[1] & 0x7F, 2
            if n == 126:
                n, start = int.from_bytes(data[2:4], "big"), 4
            elif n == 127:
                n, start = int.from_bytes(data[2:10], "big"), 10
            if len(data) >= start + n:
                return data[0] & 0x0F, data[start:start + n]
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    raise AssertionError("the connection stayed open and silent after a protocol violation")


@pytest.mark.parametrize("case", list(WS_FRAMES))
def test_bad_websocket_frames_close_the_connection_cleanly(target, case):
    from _rt import ws_port, ws_token

    INPUTS["hand-made"] += 1
    port = ws_port(target.t)
    with socket.create_connection(("127.0.0.1", port), timeout=15 * FACTOR) as s:
        s.sendall(_upgrade(port, ws_token(target.t)))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(1)
            assert chunk, "no handshake answer"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        try:
            s.sendall(WS_FRAMES[case])
        except (BrokenPipeError, ConnectionResetError):
            pass
        frame = _read_frame(s)
    # A close frame with a protocol error / bad data / too big code, a plain close, or (for a text
    # frame that is not UTF-8, which websockets' sans-I/O core passes on) a JSON-RPC parse error.
    if frame is not None and frame[0] == 8:
        assert int.from_bytes(frame[1][:2], "big") in (1002, 1007, 1009), frame
    elif frame is not None:
        assert frame[0] == 1 and json.loads(frame[1])["error"]["code"] == -32700, frame
    _assert_ws_alive(target.t)


def test_after_the_fuzzing_the_daemon_log_and_projection_are_sound(target):
    t = target.t
    health = t.call("health")
    assert health["status"] == "ok" and not health.get("bad_lines")
    assert_log_clean(t)
    t.stop()
    # Delivery cursors and unread indexes are local bookkeeping (delivery.py, views.py, docs/guarantees.md):
    # a rebuild drops them.
    # The full-text index is compared by what it finds (test_search.py: bulk population == triggers); its
    # b-tree pages differ between one-at-a-time inserts and a rebuild's bulk load.
    tables = [n for n in _projection_tables(t.var / "messages.db")
              if n not in ("delivery_cursors", "unread_index", "unread_ready") and not n.startswith("message_search")]
    # Heartbeat times are deliberately not in the log (store.py, docs/guarantees.md): a rebuild drops them.
    unlogged = ("last_seen_at",)
    before = {name: table_rows(t.var / "messages.db", name, unlogged) for name in tables}
    out = t.json("migrate", "--rebuild")
    assert out["bad_lines"] == 0
    after = {name: table_rows(t.var / "messages.db", name, unlogged) for name in tables}
    for name in tables:
        assert after[name] == before[name], f"table {name} differs after a rebuild from the log"
    t.start()
    assert t.call("health")["status"] == "ok"


