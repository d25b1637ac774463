#!/usr/bin/env python3
"""Load: 20 mixed clients on the Unix socket and the WebSocket against one daemon, with a health monitor.

    python3 bench/bench_load.py                     # the Go fixture, 20 clients, 2 rounds of 10 s
    python3 bench/bench_load.py --quick             # 4 clients, 2 rounds of 2 s (a smoke run)
    python3 bench/bench_load.py --clients 20 --seconds 10 --rounds 2 --json out.json
    python3 bench/bench_load.py --generate 300      # a small generated dataset instead of the fixture

Set-up is bench.py's (a temp dir with a fresh repo, the fixture migrated, thrum byte-compiled
into a fresh venv, a daemon of its own). Then each client (a thread; half of them on the Unix
socket, half on a WebSocket with the token and no Origin: a browser, which sends one, is only ever a
user) is one agent with a
temporary inbox subscription, held open for the whole run, and does a seeded random mix of
`message.send` (to another client, sometimes to all of them by role), inbox pages (`message.list`
for_agent, unread, a thread), `message.markRead` of what it was notified of, `agent.list`, and
waits that block on `notification.message` (on the Unix socket also `thrum wait`'s
`wait_for_message` on a fresh connection). Meanwhile a monitor process calls `health` every
50 ms and times a send -> notification probe between two agents of its own.

Reported: throughput and median/p99 round trip per operation, `health` p50/p99/max, send ->
notification latency under load, daemon VmRSS before and after each round, and what the
load proved: every acknowledged send is in the log exactly once and every client was notified
of exactly the messages addressed to it. The test suite (tests/test_load.py) drives the same
functions and asserts those facts; this script only reports them (exit 1 only when set-up fails,
or with --strict when a message was lost, duplicated or an operation failed).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import select
import sys
import threading
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the clients use this checkout's thrum.rpc and thrum.push

ROLE = "loadtester"
PROBE_TX, PROBE_RX = "loadprobe_tx", "loadprobe_rx"
THREADS = 5                   # thread ids a client posts into, so `message.list {thread_id}` has pages
OPS = ("send", "list_inbox", "list_unread", "list_thread", "mark_read", "agent_list", "wait", "wait_fresh")
WEIGHTS = (40, 12, 10, 5, 10, 5, 15, 3)
HEALTH_EVERY = 0.05           # seconds between the monitor's health calls
PROBE_EVERY = 4               # one send -> notification probe every this many monitor ticks


# -- clients ----------------------------------------------------------------------------------

class CallFailed(Exception):
    """A request got a JSON-RPC error (or no answer); the load counts it as a failed operation."""


class UnixClient:
    """One agent on the Unix socket: a request connection and a connection holding its subscription."""

    transport = "unix"

    def __init__(self, sock_path: str, timeout: float) -> None:
        from thrum.rpc import Client

        self.sock_path, self.timeout = sock_path, timeout
        self.req = Client(sock_path, timeout=timeout).connect()
        self.sub = Client(sock_path, timeout=timeout).connect()
        self.notes: list[dict] = []

    def call(self, method: str, params: dict) -> dict:
        from thrum.rpc import DaemonUnavailable, RPCError

        try:
            return self.req.call(method, params)
        except (RPCError, DaemonUnavailable) as exc:
            raise CallFailed(f"{method}: {exc}") from None

    def subscribe(self, params: dict) -> dict:
        return self.sub.call("subscribe", params, self.notes.append)

    def wait_note(self, timeout: float) -> bool:
        """Block up to `timeout` for the next notification on the subscription; True if one came."""
        try:
            self.notes.append(self.sub.read_message(timeout=timeout))
            return True
        except TimeoutError:
            return False

    def drain(self) -> None:
        while self.sub._buf or select.select([self.sub._sock], [], [], 0)[0]:
            if not self.wait_note(0.5):
                return

    def wait_fresh(self, agent: str) -> dict | None:
        """`thrum wait` as the CLI does it: a new connection, a temporary subscription, one message."""
        from thrum.events import format_ns, now_ns
        from thrum.push import wait_for_message
        from thrum.rpc import Client

        with Client(self.sock_path, timeout=self.timeout) as c:
            return wait_for_message(c, agent, {"inbox": True}, 0.2, after=format_ns(now_ns() - 1_000_000_000))

    def close(self) -> None:
        self.req.close()
        self.sub.close()


class WSClient:
    """One agent on a WebSocket (token in the URL, no Origin: not a browser); notifications are collected."""

    transport = "ws"

    def __init__(self, port: int, token: str, timeout: float) -> None:
        from websockets.sync.client import connect

        self._cm = connect(f"ws://127.0.0.1:{port}/ws?token={token}", open_timeout=timeout,
                           close_timeout=2, max_size=None, proxy=None)
        self.conn = self._cm.__enter__()
        self.timeout = timeout
        self.notes: list[dict] = []
        self._id = 0

    def call(self, method: str, params: dict) -> dict:
        self._id += 1
        rid = self._id
        self.conn.send(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CallFailed(f"{method}: no answer within {self.timeout:g}s")
            try:
                msg = json.loads(self.conn.recv(timeout=remaining))
            except TimeoutError:
                continue
            except Exception as exc:  # the connection closed
                raise CallFailed(f"{method}: {type(exc).__name__}: {exc}") from None
            if "id" not in msg:
                self.notes.append(msg)
            elif msg["id"] == rid:
                if "error" in msg:
                    raise CallFailed(f"{method}: {msg['error']}")
                return msg["result"]

    def subscribe(self, params: dict) -> dict:
        return self.call("subscribe", params)

    def wait_note(self, timeout: float) -> bool:
        try:
            self.notes.append(json.loads(self.conn.recv(timeout=max(timeout, 0.001))))
            return True
        except TimeoutError:
            return False

    def drain(self) -> None:
        while self.wait_note(0.01):
            pass

    def wait_fresh(self, agent: str) -> None:
        return None  # the WebSocket has no `thrum wait`: its subscription is the wait

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


def message_notes(client) -> list[str]:
    """The message ids of every `notification.message` (created) the client has collected, in order."""
    return [n["params"]["message_id"] for n in client.notes
            if n.get("method") == "notification.message" and n["params"].get("event") == "created"]


# -- one client's work -----------------------------------------------------------------------------

class ClientStats:
    def __init__(self, agent: str, transport: str) -> None:
        self.agent, self.transport = agent, transport
        self.latencies: dict[str, list[float]] = {op: [] for op in OPS}
        self.errors: list[str] = []
        self.sent: list[tuple[str, tuple[str, ...]]] = []  # (message_id, the agents it is addressed to)
        self.read_marked = 0


def _client_loop(client, agent: str, agents: list[str], rng: random.Random, stop: threading.Event,
                 stats: ClientStats, label: str) -> None:
    peers = [a for a in agents if a != agent]
    marked: set[str] = set()
    n = 0
    while not stop.is_set():
        op = rng.choices(OPS, WEIGHTS)[0]
        n += 1
        t0 = time.perf_counter()
        try:
            _one_op(op, client, agent, peers, rng, stats, marked, f"{label} {agent} #{n}")
        except Exception as exc:  # a failed request, or a dropped connection
            stats.errors.append(f"{op}: {exc}" if isinstance(exc, CallFailed) else f"{op}: {type(exc).__name__}: {exc}")
            if len(stats.errors) > 50:  # a broken connection: stop rather than spin on errors
                return
            continue
        stats.latencies[op].append(time.perf_counter() - t0)


def _one_op(op: str, client, agent: str, peers: list[str], rng: random.Random, stats: ClientStats,
            marked: set, text: str) -> None:
    me = {"caller_agent_id": agent}
    if op == "send":
        if rng.random() < 0.1:  # to every client by role (the author never hears itself)
            mention, to = f"@{ROLE}", tuple(peers)
        else:
            target = rng.choice(peers)
            mention, to = f"@{target}", (target,)
        thread = f"load_thread_{rng.randrange(THREADS)}"
        result = client.call("message.send", {**me, "content": text, "mentions": [mention], "thread_id": thread})
        stats.sent.append((result["message_id"], to))
    elif op in ("list_inbox", "list_unread"):
        client.call("message.list", {**me, "for_agent": agent, "for_agent_role": ROLE, "exclude_self": True,
                                     "unread": op == "list_unread", "page_size": rng.choice((10, 100))})
    elif op == "list_thread":
        client.call("message.list", {**me, "thread_id": f"load_thread_{rng.randrange(THREADS)}", "page_size": 50})
    elif op == "mark_read":
        ids = [m for m in message_notes(client) if m not in marked][:10]
        if ids:
            client.call("message.markRead", {**me, "message_ids": ids})
            marked.update(ids)
            stats.read_marked += len(ids)
        else:
            client.call("message.list", {**me, "for_agent": agent, "unread": True, "page_size": 10})
    elif op == "agent_list":
        client.call("agent.list", {})
    elif op == "wait":
        client.wait_note(0.2)
    elif op == "wait_fresh":
        from thrum.rpc import DaemonUnavailable, RPCError

        try:
            client.wait_fresh(agent)
        except (RPCError, DaemonUnavailable) as exc:
            raise CallFailed(f"wait_for_message: {exc}") from None


# -- the monitor (a process of its own: its timings must not include this process's GIL) -------------

def _monitor_main(sock_path: str, stall: float, go, stop, out) -> None:
    """Call `health` every HEALTH_EVERY s and time a send -> notification probe every PROBE_EVERY ticks."""
    result = {"health": [], "health_failures": [], "probe": [], "probe_ids": [], "probe_failures": []}
    try:
        from thrum.rpc import Client, DaemonUnavailable, RPCError

        mon = Client(sock_path, timeout=stall).connect()
        tx = Client(sock_path, timeout=stall).connect()
        rx = Client(sock_path, timeout=stall).connect()
        rx.call("subscribe", {"inbox": True, "temporary": True, "caller_agent_id": PROBE_RX})
        go.wait(60)
        tick = 0
        next_at = time.monotonic()
        while not stop.is_set():
            tick += 1
            t0 = time.perf_counter()
            try:
                mon.call("health")
                result["health"].append(time.perf_counter() - t0)
            except (RPCError, DaemonUnavailable, OSError) as exc:  # the stall bound ran out, or worse
                result["health_failures"].append(f"after {time.perf_counter() - t0:.3f}s: {exc}")
                mon.close()
                mon = Client(sock_path, timeout=stall).connect()
            if tick % PROBE_EVERY == 0:
                _probe(tx, rx, stall, result)
            next_at += HEALTH_EVERY
            stop.wait(max(0.0, next_at - time.monotonic()))
    except BaseException as exc:
        result["health_failures"].append(f"monitor failed: {type(exc).__name__}: {exc}")
    out.send(result)


def _probe(tx, rx, stall: float, result: dict) -> None:
    from thrum.rpc import DaemonUnavailable, RPCError

    t0 = time.perf_counter()
    try:
        mid = tx.call("message.send", {"content": "probe", "mentions": [f"@{PROBE_RX}"],
                                       "caller_agent_id": PROBE_TX})["message_id"]
        result["probe_ids"].append(mid)
        while True:
            left = stall - (time.perf_counter() - t0)
            if left <= 0:
                raise TimeoutError(f"no notification for {mid} within {stall:g}s")
            note = rx.read_message(timeout=left)
            if note.get("method") == "notification.message" and note["params"]["message_id"] == mid:
                break
        result["probe"].append(time.perf_counter() - t0)
    except (RPCError, DaemonUnavailable, TimeoutError, OSError) as exc:
        result["probe_failures"].append(str(exc))


# -- one round of load ----------------------------------------------------------------------------

class Target:
    """Where the daemon is: its socket, its WebSocket port and token, its pid (for VmRSS)."""

    def __init__(self, var: str, pid: int) -> None:
        self.sock = os.path.join(var, "thrum.sock")
        with open(os.path.join(var, "ws.port")) as f:
            self.ws_port = int(f.read().strip())
        with open(os.path.join(var, "ws.token")) as f:
            self.token = f.read().strip()
        self.pid = pid

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for pid {self.pid}")


def setup_agents(target: Target, count: int) -> list[str]:
    """`count` client agents (role ROLE) and the monitor's two probe agents, each with a session."""
    from thrum.rpc import Client

    agents = [f"load_{i:02d}" for i in range(count)]
    with Client(target.sock, timeout=30) as c:
        for name in agents + [PROBE_TX, PROBE_RX]:
            c.call("agent.register", {"name": name, "role": ROLE if name in agents else "loadprobe",
                                      "module": "load"})
            c.call("session.start", {"agent_id": name, "caller_agent_id": name})
    return agents


class Round:
    """The outcome of one round: per-client stats, the monitor's timings, notifications, RSS."""

    def __init__(self) -> None:
        self.stats: list[ClientStats] = []
        self.monitor: dict = {}
        self.received: dict[str, list[str]] = {}  # agent -> notified message ids, in order
        self.duration = 0.0
        self.rss_before = self.rss_after = 0

    def acked(self) -> list[str]:
        return [mid for s in self.stats for mid, _ in s.sent] + self.monitor.get("probe_ids", [])

    def expected(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {s.agent: set() for s in self.stats}
        for s in self.stats:
            for mid, to in s.sent:
                for agent in to:
                    out[agent].add(mid)
        return out

    def errors(self) -> list[str]:
        return [f"{s.agent}: {e}" for s in self.stats for e in s.errors]


def run_round(target: Target, agents: list[str], seconds: float, seed: int, *, ws_share: float = 0.5,
              timeout: float = 30.0, stall: float = 5.0, drain_timeout: float = 10.0, label: str = "") -> Round:
    """Run the mix for `seconds` with one client per agent; every wait is bounded by the given timeouts."""
    rnd = Round()
    rnd.rss_before = target.rss_kib()
    ctx = multiprocessing.get_context("fork")  # forked before any client thread exists
    go, stop = ctx.Event(), ctx.Event()
    parent_end, child_end = ctx.Pipe(duplex=False)
    monitor = ctx.Process(target=_monitor_main, args=(target.sock, stall, go, stop, child_end), daemon=True)
    monitor.start()
    child_end.close()
    clients, threads = [], []
    stop_clients = threading.Event()
    try:
        n_ws = round(len(agents) * ws_share)
        for i, agent in enumerate(agents):
            client = (WSClient(target.ws_port, target.token, timeout) if i % 2 and n_ws > i // 2
                      else UnixClient(target.sock, timeout))
            clients.append(client)
            client.subscribe({"inbox": True, "temporary": True, "caller_agent_id": agent})
            stats = ClientStats(agent, client.transport)
            rnd.stats.append(stats)
            threads.append(threading.Thread(target=_client_loop, name=f"load-{agent}", daemon=True, args=(
                client, agent, agents, random.Random(f"{seed}:{agent}"), stop_clients, stats, label)))
        go.set()
        t0 = time.monotonic()
        for t in threads:
            t.start()
        stop_clients.wait(seconds)
        stop_clients.set()
        for t in threads:
            t.join(timeout)
        rnd.duration = time.monotonic() - t0
        stop.set()
        if parent_end.poll(timeout + stall):
            rnd.monitor = parent_end.recv()
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            rnd.stats[0].errors.append(f"client threads still running after {timeout:g}s: {stuck}")
        _collect(rnd, clients, drain_timeout)
        rnd.rss_after = target.rss_kib()
    finally:
        stop_clients.set()
        stop.set()
        go.set()
        for client in clients:
            try:
                client.close()
            except Exception:
                pass
        monitor.join(timeout)
        if monitor.is_alive():
            monitor.kill()
            monitor.join(5)
    return rnd


def _collect(rnd: Round, clients: list, drain_timeout: float) -> None:
    """Read the notifications still on their way, until every client has what it expects (bounded)."""
    expected = rnd.expected()
    deadline = time.monotonic() + drain_timeout
    for stats, client in zip(rnd.stats, clients):
        while True:
            client.drain()
            got = set(message_notes(client))
            if expected[stats.agent] <= got or time.monotonic() > deadline:
                break
            client.wait_note(min(0.1, max(0.0, deadline - time.monotonic())))
        rnd.received[stats.agent] = message_notes(client)


# -- what a round proves ------------------------------------------------------------------------------

def verify(rnd: Round, log_counts: Counter) -> dict:
    """Lost, duplicated and unexpected messages, and failed operations (all must be zero)."""
    acked = rnd.acked()
    expected = rnd.expected()
    missing = {a: sorted(expected[a] - set(got)) for a, got in rnd.received.items() if expected[a] - set(got)}
    extra = {a: sorted(set(got) - expected[a]) for a, got in rnd.received.items() if set(got) - expected[a]}
    dup_notes = {a: [m for m, c in Counter(got).items() if c > 1] for a, got in rnd.received.items()
                 if len(got) != len(set(got))}
    return {
        "acked": len(acked),
        "lost": sorted(m for m in acked if log_counts.get(m, 0) == 0),
        "duplicated": sorted(m for m in acked if log_counts.get(m, 0) > 1),
        "notified": sum(len(v) for v in rnd.received.values()),
        "notifications_missing": missing,
        "notifications_unexpected": extra,
        "notifications_duplicated": dup_notes,
        "errors": rnd.errors() + rnd.monitor.get("health_failures", []) + rnd.monitor.get("probe_failures", []),
        "monitor_ran": bool(rnd.monitor.get("health")),
    }


def log_counts(sync_dir: str) -> Counter:
    """message_id -> number of message.create lines in the log."""
    counts: Counter = Counter()
    files = [os.path.join(sync_dir, "events.jsonl")]
    msg_dir = os.path.join(sync_dir, "messages")
    if os.path.isdir(msg_dir):
        files += [os.path.join(msg_dir, n) for n in sorted(os.listdir(msg_dir)) if n.endswith(".jsonl")]
    for path in files:
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            for line in f:
                if b'"message.create"' not in line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("type") == "message.create":
                    counts[event.get("message_id")] += 1
    return counts


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else float("nan")


def summary(rnd: Round) -> dict:
    """Throughput and latency per operation, health and probe percentiles (seconds -> ms)."""
    ops = {}
    for op in OPS:
        lat = [x for s in rnd.stats for x in s.latencies[op]]
        ops[op] = {"count": len(lat), "per_s": len(lat) / rnd.duration if rnd.duration else 0.0,
                   "p50_ms": pct(lat, 0.5) * 1000, "p99_ms": pct(lat, 0.99) * 1000}
    health, probe = rnd.monitor.get("health", []), rnd.monitor.get("probe", [])
    return {"ops": ops, "seconds": rnd.duration,
            "health": {"n": len(health), "p50_ms": pct(health, 0.5) * 1000, "p99_ms": pct(health, 0.99) * 1000,
                       "max_ms": max(health, default=float("nan")) * 1000},
            "notify": {"n": len(probe), "p50_ms": pct(probe, 0.5) * 1000, "p99_ms": pct(probe, 0.99) * 1000,
                       "max_ms": max(probe, default=float("nan")) * 1000},
            "rss_mib": {"before": rnd.rss_before / 1024, "after": rnd.rss_after / 1024}}


# -- the benchmark script ---------------------------------------------------------------------------------

def make_load_rows(rounds: int) -> list:
    from bench import Row

    rows = [Row(f"{op}_per_s", "ops", f"{op}: operations per second over all clients (median/p99 round trip in "
                                      "detail)", "/s", None, None) for op in OPS]
    rows += [Row("health_p50", "health", "`health` every 50 ms under load: median", "ms", None, None),
             Row("health_p99", "health", "`health` under load: 99th percentile", "ms", None, None),
             Row("health_max", "health", "`health` under load: slowest call", "ms", None, None),
             Row("notify_p50", "notify", "send -> notification.message (Unix) under load: median", "ms", "<=", 5),
             Row("notify_p99", "notify", "send -> notification.message under load: 99th percentile", "ms", None,
                 None),
             Row("rss_start", "rss", "daemon VmRSS before the first round", "MiB", "<=", 60)]
    rows += [Row(f"rss_round{i + 1}", "rss", f"daemon VmRSS after round {i + 1}", "MiB", "<=", 60)
             for i in range(rounds)]
    rows += [Row("lost", "proof", "acknowledged sends missing from the log, duplicated, or not notified to "
                                  "their recipients; failed operations", "", None, None)]
    return rows


def _bench_main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import bench

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fixture", help=f"the Go fixture tarball (default: {bench.default_fixture()})")
    p.add_argument("--generate", type=int, metavar="N", default=0,
                   help="use a generated dataset of N messages (bench/generate.py) instead of the fixture")
    p.add_argument("--quick", action="store_true", help="4 clients, 2 s rounds (a smoke run; numbers are rough)")
    p.add_argument("--clients", type=int, default=None, help="concurrent clients (default 20; --quick 4)")
    p.add_argument("--seconds", type=float, default=None, help="length of one round (default 10; --quick 2)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of load (RSS is read after each)")
    p.add_argument("--seed", type=int, default=1, help="seed of the clients' random mix")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--cli-env", choices=("venv", "system"), default="venv",
                   help="how thrum is installed for the daemon: a fresh venv like pipx (default) or PYTHONPATH")
    p.add_argument("--tmpdir", help="where to create the temp dir (its filesystem decides what fsync costs)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (repo, daemon logs)")
    p.add_argument("--profile-daemon", metavar="DIR",
                   help="run the daemon under cProfile and write DIR/daemon.prof and DIR/daemon.txt")
    p.add_argument("--strict", action="store_true", help="exit 1 when anything was lost or an operation failed")
    args = p.parse_args(argv)
    clients = args.clients or (4 if args.quick else 20)
    seconds = args.seconds or (2.0 if args.quick else 10.0)

    ns = argparse.Namespace(fixture=args.fixture, generate=args.generate, quick=args.quick, only="",
                            cli_env=args.cli_env, tmpdir=args.tmpdir, keep=args.keep, verbose=False,
                            profile_daemon=args.profile_daemon)
    b = _load_bench_class(bench)(ns)
    b.rows = {r.name: r for r in make_load_rows(args.rounds)}
    outcome: dict = {}

    def body(b) -> None:
        bench.log(f"setting up in {args.tmpdir or 'the temp dir'} …")
        b.setup()
        b.env["THRUM_WS_PORT"] = "0"
        if args.profile_daemon:
            os.makedirs(args.profile_daemon, exist_ok=True)
            b.start_profiled_daemon(os.path.join(os.path.abspath(args.profile_daemon), "daemon.prof"))
        else:
            b.start_daemon()
        bench.log(f"dataset: {b.dataset}")
        outcome.update(_measure(b, clients, seconds, args.rounds, args.seed))
    code = bench.run_guarded(b, args, body, "the load benchmark could not complete")
    if code == 1 and not outcome:
        return code
    conditions = bench.collect_conditions(b)
    conditions["load"] = (f"{clients} clients (Unix socket and WebSocket alternating), {args.rounds} round(s) of "
                          f"{seconds:g} s, seed {args.seed}, mix {dict(zip(OPS, WEIGHTS))}")
    print(bench.report(b, conditions))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"conditions": conditions, "rows": [r.to_json() for r in b.rows.values()],
                       "rounds": outcome.get("rounds", []), "completed": code == 0}, f, indent=2)
    if code == 0 and args.strict and outcome.get("bad"):
        code = 1
    return code


def _load_bench_class(bench):
    class LoadBench(bench.Bench):
        """bench.py's set-up, with daemons on a free WebSocket port (never the shared default one)."""

        def thrum(self, *args, extra_env: dict | None = None, **kw):
            return super().thrum(*args, extra_env={"THRUM_WS_PORT": "0", **(extra_env or {})}, **kw)
    return LoadBench


def _measure(b, clients: int, seconds: float, rounds: int, seed: int) -> dict:
    import bench

    target = Target(b.var, b.daemon_pid)
    agents = setup_agents(target, clients)
    b.rows["rss_start"].set(target.rss_kib() / 1024)
    results, all_health, all_probe, ops_total = [], [], [], {}
    sync_dir = os.path.join(b.repo, ".git", "thrum-sync", "a-sync")
    bad = 0
    for r in range(rounds):
        bench.log(f"round {r + 1}/{rounds}: {clients} clients for {seconds:g} s …")
        rnd = run_round(target, agents, seconds, seed + r, label=f"round {r + 1}")
        proof = verify(rnd, log_counts(sync_dir))
        s = summary(rnd)
        results.append({"summary": s, "proof": {k: (v if isinstance(v, (int, bool)) else len(v))
                                                 for k, v in proof.items()}})
        b.sent += proof["acked"]
        b.rows[f"rss_round{r + 1}"].set(rnd.rss_after / 1024, f"before the round {rnd.rss_before / 1024:.1f} MiB")
        all_health += rnd.monitor.get("health", [])
        all_probe += rnd.monitor.get("probe", [])
        for op in OPS:
            lat = [x for st in rnd.stats for x in st.latencies[op]]
            ops_total.setdefault(op, []).append((len(lat), rnd.duration, lat))
        bad += sum(len(proof[k]) for k in ("lost", "duplicated", "notifications_missing",
                                           "notifications_unexpected", "notifications_duplicated", "errors"))
    for op, parts in ops_total.items():
        count = sum(c for c, _, _ in parts)
        secs = sum(d for _, d, _ in parts)
        lat = [x for _, _, xs in parts for x in xs]
        b.rows[f"{op}_per_s"].set(count / secs if secs else 0.0,
                                  f"n={count}, median {pct(lat, 0.5) * 1000:.2f} ms, p99 {pct(lat, 0.99) * 1000:.2f} ms")
    n_h = len(all_health)
    b.rows["health_p50"].set(pct(all_health, 0.5) * 1000, f"n={n_h}")
    b.rows["health_p99"].set(pct(all_health, 0.99) * 1000, f"n={n_h}")
    b.rows["health_max"].set(max(all_health, default=float("nan")) * 1000, f"n={n_h}")
    b.rows["notify_p50"].set(pct(all_probe, 0.5) * 1000, f"n={len(all_probe)}; includes the durable send")
    b.rows["notify_p99"].set(pct(all_probe, 0.99) * 1000, f"n={len(all_probe)}")
    b.rows["lost"].set(float(bad), "; ".join(f"round {i + 1}: " + ", ".join(f"{k} {v}" for k, v in r["proof"].items())
                                             for i, r in enumerate(results)))
    return {"rounds": results, "bad": bad}


if __name__ == "__main__":
    sys.exit(_bench_main())
