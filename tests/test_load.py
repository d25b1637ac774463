"""Load: many concurrent clients, slow and dead clients; nothing acknowledged is lost and nobody stalls.

The mixed-client driver is bench/bench_load.py's (the benchmark reports figures, these tests
assert facts). Timings are printed, never asserted, except stall bounds: a call that takes
longer than STALL (5 s, scaled by THRUM_TEST_TIMEOUT_FACTOR) fails. The daemon answers a
batch per loop turn, typically in a few milliseconds; 5 s can only mean a stuck loop, so it
detects stalls without being a performance threshold.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import sys
import time

import pytest

from _rt import WS, UnixListener, ws_port, ws_token
from conftest import FACTOR, ROOT, Thrum, extract_fixture, wait_for
from helpers import RawConn, assert_log_clean, message_create_counts, register

sys.path.insert(0, str(ROOT / "bench"))
import bench_load  # noqa: E402  (the bench directory is not a package)

STALL = 5.0 * FACTOR
SEED = int(os.environ.get("THRUM_TEST_SEED") or random.SystemRandom().randrange(1 << 30))
MiB = 1024 * 1024


@pytest.fixture
def env(env):
    env["THRUM_WS_PORT"] = "0"
    return env


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _figures(rnd) -> str:
    s = bench_load.summary(rnd)
    ops = ", ".join(f"{op} {v['per_s']:.0f}/s" for op, v in s["ops"].items())
    h, n = s["health"], s["notify"]
    return (f"{s['seconds']:.1f}s: {ops}; health n={h['n']} p50 {h['p50_ms']:.1f} p99 {h['p99_ms']:.1f} max "
            f"{h['max_ms']:.1f} ms; send->notification p50 {n['p50_ms']:.1f} p99 {n['p99_ms']:.1f} ms; "
            f"RSS {s['rss_mib']['before']:.1f} -> {s['rss_mib']['after']:.1f} MiB")


# -- 20 mixed clients on the 10K fixture --------------------------------------------------------------

ROUND_SECONDS = 5.0  # two rounds: ~10 s of load in all
# The second round may not grow the daemon by more than this. The first round warms every cache
# (SQLite's page cache is 2 MiB per connection, the statement cache, Python's free lists, socket
# buffers); after it, growth can only come from state that accumulates per request: a leak. A
# round adds a few thousand messages (about a megabyte of database), so 16 MiB is generous for
# honest growth and far below what a leak of per-request buffers or subscriptions would cost.
RSS_GROWTH_BOUND = 16 * MiB


def test_twenty_mixed_clients_on_the_10k_fixture(repo, env, fixture_tar):
    extract_fixture(fixture_tar, repo)
    t = Thrum(repo, env)
    t.json("migrate")  # in its own process: the daemon's memory then reflects the load, not the import
    t.start()
    try:
        target = bench_load.Target(str(t.var), t.pid())
        agents = bench_load.setup_agents(target, 20)
        before = t.call("message.list", page_size=1, include_deleted=True)["total"]
        rounds, counts = [], None
        for r in range(2):
            rnd = bench_load.run_round(target, agents, ROUND_SECONDS, SEED + r, timeout=30 * FACTOR, stall=STALL,
                                       drain_timeout=10 * FACTOR, label=f"round {r + 1}")
            print(f"seed {SEED} round {r + 1}: {_figures(rnd)}")
            counts = message_create_counts(t.sync_dir)
            proof = bench_load.verify(rnd, counts)
            where = f"(seed {SEED}, round {r + 1}; set THRUM_TEST_SEED to repeat)"
            assert proof["errors"] == [], where
            assert proof["monitor_ran"], where
            assert proof["acked"] > 100, where  # the load really ran
            assert proof["lost"] == [] and proof["duplicated"] == [], where
            assert proof["notifications_missing"] == {}, where
            assert proof["notifications_unexpected"] == {} and proof["notifications_duplicated"] == {}, where
            rounds.append(rnd)
        # The projection holds every acknowledged send, once: per author, its count is what was acked.
        with t.client() as c:
            for agent in agents:
                acked = sum(len(s.sent) for rnd in rounds for s in rnd.stats if s.agent == agent)
                got = c.call("message.list", {"author_id": agent, "page_size": 1})["total"]
                assert got == acked, (agent, SEED)
            everything = c.call("message.list", {"page_size": 1, "include_deleted": True})["total"]
            assert everything == before + sum(len(rnd.acked()) for rnd in rounds), SEED
        growth = (rounds[1].rss_after - rounds[0].rss_after) * 1024
        assert growth <= RSS_GROWTH_BOUND, (f"the daemon grew {growth / MiB:.1f} MiB in the second round "
                                            f"(seed {SEED})")
        assert_log_clean(t)
    finally:
        t.stop()



# -- lookups that run on every send must not scan every message -----------------------------------------

class _RecordingDB:
    """Delegates to a sqlite3 connection and keeps each statement with its parameters (unexpanded)."""

    def __init__(self, db) -> None:
        self.db = db
        self.statements: list[tuple[str, tuple]] = []

    def execute(self, sql, params=()):
        self.statements.append((sql, tuple(params)))
        return self.db.execute(sql, params)

    def __getattr__(self, name):
        return getattr(self.db, name)


class _Listener:
    ctx = None

    def __init__(self) -> None:
        self.notes = []

    def notify(self, method, params):
        self.notes.append((method, params))


def _in_process_push(tmp_path, authors=("alice",)):
    """A store with push and the service in this process: 30 messages of `authors` in threads t0..t2."""
    from thrum.push import Push
    from thrum.rpc import NoSession, Params
    from thrum.service import CallContext, Service
    from thrum.store import Store

    var = tmp_path / "var"
    var.mkdir()
    store = Store(str(tmp_path / "sync"), str(var / "messages.db"), str(var), "d_test")
    push = Push()
    push.extend_store(store)
    store.open()
    svc = Service(store, repo_id="r", thrum_dir=str(tmp_path), local_thrum=str(tmp_path), origin_daemon="d_test")
    for name in authors:
        svc.agent_register(Params({"name": name, "role": "tester", "module": "qa"}), CallContext())
    for i in range(30):
        store.append("message.create", {"message_id": f"msg_{i}", "agent_id": authors[i % len(authors)],
                                        "thread_id": f"t{i % 3}",
                                        "client_id": f"c{i}", "body": {"format": "markdown", "content": f"m{i}"}})
    store.commit()

    push.daemon = type("Daemon", (), {"store": store, "service": svc})()
    return store, svc, push


def test_thread_and_client_id_lookups_use_their_indexes(tmp_path):
    """Each send to a thread runs the thread summary for every WebSocket listener, and each CLI send
    looks up its client_id: a full scan of the messages table there made every batch O(history).

    The partial indexes (`WHERE thread_id != ''`...) are only usable when the query says so: a bound
    value alone does not prove it. Checked with the plans of the statements really run.
    """
    from thrum.rpc import NoSession, Params
    from thrum.service import CallContext

    store, svc, push = _in_process_push(tmp_path)
    conn = _Listener()
    push.attach(conn, "alice")
    real = store.db
    store.db = recorder = _RecordingDB(real)
    try:
        push._thread_updated("t1", {})
        svc.message_list(Params({"thread_id": "t1", "page_size": 5}), CallContext())
        svc.message_list(Params({"reply_to": "msg_1", "page_size": 5}), CallContext())
        with pytest.raises(NoSession):  # the client_id lookup comes first
            svc.message_send(Params({"content": "x", "client_id": "c_new", "caller_agent_id": "alice"}),
                             CallContext())
    finally:
        store.db = real
    assert conn.notes and conn.notes[0][1]["message_count"] == 10
    index_of = {"thread_id=?": "messages_thread", "client_id=?": "messages_client", "reply_to=?": "messages_reply"}
    checked = 0
    for sql, params in recorder.statements:
        for key, index in index_of.items():
            if key in sql:
                plan = [row[3] for row in real.execute("EXPLAIN QUERY PLAN " + sql, params)]
                assert any(index in step for step in plan), f"{sql}\n-> {plan}"
                checked += 1
    assert checked >= 6
    store.close()



def test_thread_unread_counts_match_their_definition(tmp_path):
    """notification.thread.updated's unread_count, computed for all listeners at once, equals the
    per-agent definition: the thread's live messages that are not the agent's own and not read by it."""
    from thrum.rpc import Params
    from thrum.service import CallContext

    agents = ("alice", "bob", "carol", "dave")
    store, svc, push = _in_process_push(tmp_path, agents)
    for reader, ids in (("bob", ["msg_1", "msg_4", "msg_0", "msg_3"]), ("carol", ["msg_1", "msg_2"]),
                        ("alice", ["msg_0", "msg_1", "msg_7"])):  # some of them in other threads, one own
        svc.message_mark_read(Params({"message_ids": ids, "caller_agent_id": reader}), CallContext())
    store.append("message.delete", {"message_id": "msg_10", "agent_id": "bob", "deleted_at": "x"})
    store.commit()
    listeners = {name: _Listener() for name in agents}
    for name, conn in listeners.items():
        push.attach(conn, name)
    push._thread_updated("t1", {})
    seen = {name: conn.notes[-1][1]["unread_count"] for name, conn in listeners.items()}
    expected = {name: store.db.execute(
        "SELECT COUNT(*) FROM messages m WHERE m.thread_id='t1' AND m.deleted=0 AND m.agent_id!=? AND NOT EXISTS"
        " (SELECT 1 FROM message_reads r WHERE r.agent_id=? AND r.message_id=m.message_id)", (name, name)
    ).fetchone()[0] for name in agents}
    assert seen == expected and len(set(expected.values())) > 1, (seen, expected)
    store.close()


# -- slow, dead and half-open clients never stall the others -------------------------------------------

def _flood_params(i: int) -> dict:
    """A message whose notification is ~14 KB (50 long scopes): a few hundred fill the 8 MiB output bound."""
    scopes = [{"type": "load", "value": f"{i}-{k}-" + "s" * 240} for k in range(50)]
    return {"caller_agent_id": "alice", "content": f"flood {i}", "mentions": ["@dave"], "scopes": scopes}


def _subscribed_slow_ws(port: int, token: str, agent: str) -> socket.socket:
    """A WebSocket that subscribes to everything, reads the answer, then never reads again."""
    from test_ws import _frame, _raw_ws

    s = _raw_ws(port, token, rcvbuf=4096)
    s.sendall(_frame(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {
        "all": True, "temporary": True, "caller_agent_id": agent}})))
    got = b""
    deadline = time.monotonic() + STALL
    while b"subscription_id" not in got and time.monotonic() < deadline:
        got += s.recv(4096)
    assert b"subscription_id" in got, got
    return s


def _cut_mid_frame(port: int, token: str) -> None:
    """Start a 100 KB frame, send 1 KB of it, hang up."""
    from test_ws import _raw_ws
    from websockets.frames import Frame, Opcode

    s = _raw_ws(port, token)
    s.sendall(Frame(Opcode.TEXT, b"x" * 100_000).serialize(mask=True)[:1000])
    s.close()


def _half_open(port: int, token: str) -> socket.socket:
    """A complete upgrade request, then silence: it never reads the 101 nor sends a frame."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    return s


def _closed_by_peer(s: socket.socket) -> bool:
    """Read what is left; True once the daemon has closed its end (EOF or reset) within STALL."""
    s.settimeout(STALL)
    try:
        while s.recv(1 << 20):
            pass
        return True
    except ConnectionResetError:
        return True
    except (TimeoutError, socket.timeout):
        return False


def _timed(fn, *args):
    t0 = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - t0


def _log_count(t, text: str) -> int:
    return (t.var / "daemon.log").read_text().count(text)


EPISODES = 3
MAX_FLOOD_CHUNKS = 30  # 3,000 messages of ~14 KB notifications: far beyond what three slow readers may hold
WS_DROP = "closing a WebSocket client that stopped reading"
UNIX_DROP = "closing a connection that stopped reading"


def _episode(t, fast_ws, fast_unix, sender, episode: int) -> list[float]:
    """Three slow WebSockets, mid-frame hang-ups and a Unix client that never reads, until all are dropped.

    Returns how long each probe notification and health call took meanwhile.
    """
    port, token = ws_port(t), ws_token(t)
    ws_drops, unix_drops = _log_count(t, WS_DROP), _log_count(t, UNIX_DROP)
    slow = [_subscribed_slow_ws(port, token, f"slow_{k}") for k in range(3)]
    latencies: list[float] = []
    try:
        for chunk in range(MAX_FLOOD_CHUNKS):
            base = (episode * MAX_FLOOD_CHUNKS + chunk) * 100
            sender.send(b"".join(json.dumps({"jsonrpc": "2.0", "id": base + i, "method": "message.send",
                                             "params": _flood_params(base + i)}).encode() + b"\n"
                                 for i in range(100)))
            assert all("result" in sender.recv() for _ in range(100))
            _cut_mid_frame(port, token)
            # The others are answered and notified promptly while the slow ones fill up.
            mid = sender.call("message.send", {"caller_agent_id": "alice", "content": f"probe {episode}.{chunk}",
                                               "mentions": ["@bob", "@carol"]}, rid="p")["result"]["message_id"]
            _, took_ws = _timed(fast_ws.notification, "notification.message", lambda p: p["message_id"] == mid, STALL)
            _, took_unix = _timed(fast_unix.notification, "notification.message", lambda p: p["message_id"] == mid,
                                  STALL)
            health, took_health = _timed(t.call, "health")
            assert health["status"] == "ok"
            latencies += [took_ws, took_unix, took_health]
            if _log_count(t, WS_DROP) >= ws_drops + 3:
                break
        assert _log_count(t, WS_DROP) == ws_drops + 3
        assert all(_closed_by_peer(s) for s in slow)
    finally:
        for s in slow:
            s.close()
    # A Unix client that asks for ~1.4 MB pages and never reads its answers is dropped too.
    with RawConn(t.socket) as greedy:
        greedy.send(b"".join(json.dumps({"jsonrpc": "2.0", "id": i, "method": "message.list",
                                         "params": {"page_size": 100}}).encode() + b"\n" for i in range(20)))
        wait_for(lambda: _log_count(t, UNIX_DROP) >= unix_drops + 1, 20,
                 what="the daemon to drop the Unix client that never reads")
        _, took_health = _timed(t.call, "health")
        latencies.append(took_health)
    return latencies


def _vm(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) * 1024


def test_slow_dead_and_half_open_clients_never_stall_the_others(agents):
    t = agents
    for name in ("carol", "dave", "slow_0", "slow_1", "slow_2"):
        register(t, name, "watcher", "load")
    port, pid = ws_port(t), t.pid()
    rss, peaks = [_vm(pid, "VmRSS")], []
    half = _half_open(port, ws_token(t))
    fast_ws = WS(t)  # an agent's client, not a browser: no Origin
    fast_unix = UnixListener(t)
    latencies: list[float] = []
    try:
        fast_ws.call("subscribe", inbox=True, temporary=True, caller_agent_id="carol")
        fast_unix.call("subscribe", inbox=True, temporary=True, caller_agent_id="bob")
        with RawConn(t.socket, timeout=30) as sender:
            for episode in range(EPISODES):
                latencies += _episode(t, fast_ws, fast_unix, sender, episode)
                rss.append(_vm(pid, "VmRSS"))
                peaks.append(_vm(pid, "VmHWM"))
        # The half-open upgrade and the fast clients are still served.
        assert fast_ws.call("health")["status"] == "ok"
        assert fast_unix.call("health")["status"] == "ok"
        half.settimeout(STALL)
        assert half.recv(1 << 16).startswith(b"HTTP/1.1 101")
    finally:
        half.close()
        fast_ws.close()
        fast_unix.close()
    peak = _vm(pid, "VmHWM")
    print(f"probe notifications and health: max {max(latencies) * 1000:.1f} ms over {len(latencies)}; VmRSS "
          f"{' -> '.join(f'{x / MiB:.1f}' for x in rss)} MiB (start, after each episode); VmHWM "
          f"{' -> '.join(f'{x / MiB:.1f}' for x in peaks)} MiB")
    # Memory is bounded. At the peak, three slow WebSockets may each hold 8 MiB (plus a message), the
    # Unix reader 16 MiB, and its batch of 20 encoded ~1.4 MB answers waits to be sent: about 70 MiB,
    # so 128 MiB above the start is generous. Dropped clients' buffers must not stay behind: each
    # episode drops ~40 MiB of them (kept, three episodes add ~170 MiB). The allocator may keep one
    # episode's worth of freed heap mapped for reuse, hence 80 MiB above the start after three.
    assert peak - rss[0] <= 128 * MiB
    assert rss[-1] - rss[0] <= 80 * MiB
    assert_log_clean(t)
