#!/usr/bin/env python3
"""Soak: kill the daemon over and over under load, then fuzz it, and check nothing was lost.

    python3 bench/bench.py --generate 1000000 --only rebuild --keep --tmpdir /var/tmp   # a 1M repository
    python3 bench/soak.py --repo /var/tmp/thrum-bench-XXXX/repo                          # soak it (in place)
    python3 bench/soak.py --repo R --kills 10 --fuzz 5000 --no-partner                  # a short run

Not part of the test suite (it takes many minutes at 1M). What it does, in a temp dir beside
its own HOME and git config:

1. A sync partner (unless --no-partner): a bare remote, the repository's a-sync pushed to
   it, a clone of it with its own daemon and agent, sending all along.
2. `--kills` rounds: start the daemon, wait for health, let senders (idempotent retries with
   client ids, as the CLI does) and readers (inbox pages, mark-read) run, SIGKILL the daemon
   after a random 0.3-2 s. Every tenth round both sides sync.
3. Final sync both ways, then the checks: every acknowledged send is in the log exactly once
   (by message id and by client id), and the projection equals a rebuild of the log
   (a digest of every projection table, in a fixed order).
4. `--fuzz` inputs over the Unix socket: every registered method with random params, and raw
   garbage lines. Every input must get a JSON-RPC answer with a client error code or a
   result (never -32603), the daemon must stay up and its log free of tracebacks; the
   projection must still equal a rebuild.

Prints a report (also --json FILE); exit 1 when a check failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import wait_until  # noqa: E402  (bench/ is on sys.path: this script's directory)
from thrum.rpc import Client, DaemonUnavailable, RPCError  # noqa: E402

CLIENT_CODES = {-32700, -32600, -32601, -32602, -32000, -32001, -32002, -32003, -32004, -32005, -32006}
LOCAL_ONLY = {"delivery_cursors", "unread_index", "unread_ready"}  # docs/guarantees.md: local bookkeeping
LOCAL_COLUMNS = {"last_seen_at", "git_checked_at"}  # heartbeats and git check times


def log(text: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Side:
    """One clone: its repository, its daemon process, its socket."""

    def __init__(self, name: str, repo: str, env: dict, logdir: str) -> None:
        self.name, self.repo, self.env, self.logdir = name, repo, env, logdir
        self.proc: subprocess.Popen | None = None

    @property
    def socket(self) -> str:
        return os.path.join(self.repo, ".thrum", "var", "thrum.sock")

    def thrum(self, *args: str, name: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        env = dict(self.env, **({"THRUM_NAME": name} if name else {}))
        proc = subprocess.run([sys.executable, "-m", "thrum", *args], cwd=self.repo, env=env, capture_output=True,
                              text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"thrum {' '.join(args)} in {self.name}: {proc.stderr.strip()[:500]}")
        return proc

    def start(self, timeout: float = 300) -> float:
        t0 = time.monotonic()
        out = open(os.path.join(self.logdir, f"{self.name}-daemon.out"), "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "thrum", "daemon", "run", "--repo", self.repo],
                                     cwd=self.repo, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                     start_new_session=True)
        out.close()
        wait_until(lambda: self.proc.poll() is not None or self.healthy(), timeout, f"the {self.name} daemon")
        if self.proc.poll() is not None:
            raise RuntimeError(f"the {self.name} daemon exited with {self.proc.returncode} during start-up")
        return time.monotonic() - t0

    def healthy(self) -> bool:
        try:
            with Client(self.socket, timeout=2) as c:
                return c.call("health", {}).get("status") == "ok"
        except (DaemonUnavailable, RPCError, OSError):
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def call(self, method: str, params: dict | None = None, timeout: float = 120):
        with Client(self.socket, timeout=timeout) as c:
            return c.call(method, params or {})


# -- load: senders and readers in child processes ---------------------------------------------

def _sender(sock: str, who: str, to: list[str], tag: str, ack_path: str, stop_path: str, seed: int) -> None:
    rng = random.Random(seed)
    n = 0
    with open(ack_path, "a") as acks:
        while not os.path.exists(stop_path):
            n += 1
            cid = f"{tag}-{n}"
            params = {"content": f"soak {cid}", "caller_agent_id": who, "client_id": cid,
                      "mentions": [f"@{rng.choice(to)}"]}
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and not os.path.exists(stop_path):
                try:  # the same client id until acknowledged: a retry may never duplicate
                    with Client(sock, timeout=10) as c:
                        mid = c.call("message.send", params)["message_id"]
                    acks.write(f"{cid} {mid}\n")
                    acks.flush()
                    break
                except (DaemonUnavailable, OSError, RPCError):
                    time.sleep(0.05)


def _reader(sock: str, who: str, role: str, stop_path: str) -> None:
    while not os.path.exists(stop_path):
        try:
            with Client(sock, timeout=10) as c:
                page = c.call("message.list", {"for_agent": who, "for_agent_role": role, "exclude_self": True,
                                               "caller_agent_id": who, "unread": True, "page_size": 20})
                ids = [m["message_id"] for m in page["messages"]]
                if ids:
                    c.call("message.markRead", {"message_ids": ids, "caller_agent_id": who})
                c.call("message.list", {"page_size": 50})
        except (DaemonUnavailable, OSError, RPCError):
            time.sleep(0.05)


# -- checks -----------------------------------------------------------------------------------

def log_creates(repo: str) -> tuple[Counter, Counter]:
    """message.create lines per message id and per (agent, client id), over every log file."""
    root = os.path.join(repo, ".git", "thrum-sync", "a-sync")
    by_id: Counter = Counter()
    by_client: Counter = Counter()
    for dirpath, _, names in os.walk(root):
        for name in names:
            if not name.endswith(".jsonl"):
                continue
            with open(os.path.join(dirpath, name), "rb") as f:
                for line in f:
                    if b'"message.create"' not in line:
                        continue
                    try:
                        e = json.loads(line)
                    except ValueError:
                        continue
                    by_id[e.get("message_id")] += 1
                    if e.get("client_id"):
                        by_client[(e.get("agent_id"), e["client_id"])] += 1
    return by_id, by_client


def projection_digest(db_path: str) -> dict[str, str]:
    """A digest of each projection table's rows in a fixed order (rowids left out)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    out = {}
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'"
                                             " AND name NOT LIKE 'sqlite_%'")]
        # The full-text index's pages differ between triggers and a rebuild's bulk load (same content).
        for table in sorted(t for t in set(tables) - LOCAL_ONLY if not t.startswith("message_search")):
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})") if r[1] not in LOCAL_COLUMNS]
            if table == "message_audience":
                cols = [c if c != "seq" else "(SELECT message_id FROM messages WHERE rowid = seq)" for c in cols]
            order = ", ".join(str(i + 1) for i in range(len(cols)))
            h = hashlib.sha256()
            rows = 0
            for row in conn.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {order}"):
                h.update(repr(row).encode())
                rows += 1
            out[table] = f"{rows}:{h.hexdigest()[:16]}"
    finally:
        conn.close()
    return out


def compare_with_rebuild(side: Side) -> list[str]:
    db = os.path.join(side.repo, ".thrum", "var", "messages.db")
    before = projection_digest(db)
    t0 = time.monotonic()
    side.thrum("migrate", "--rebuild", "--json", timeout=3600)
    log(f"rebuilt {side.name} in {time.monotonic() - t0:.1f}s")
    after = projection_digest(db)
    return [f"{side.name}: table {t} differs from a rebuild ({before.get(t)} vs {after.get(t)})"
            for t in sorted(set(before) | set(after)) if before.get(t) != after.get(t)]


# -- fuzz -------------------------------------------------------------------------------------

_LIST_METHODS = ("import json, sys\nfrom thrum import daemon, paths\n"
                 "print(json.dumps(sorted(n for n, t in daemon.registered_methods(paths.resolve(sys.argv[1])).items()"
                 " if 'unix' in t)))")


def _random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 2 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 7, 100, 2**31, -2**63, 10**20, 1.5, float("1e308")])
    if kind == 3:
        return rng.choice(["", "@", "x" * rng.randrange(1, 300), "alice", "@everyone", "*", "../../etc", "\u0000",
                           "msg_01", "2026-01-01T00:00:00Z", "ünï 漢字", "a" * 70000])
    if kind == 4:
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(0, 40)))
    if kind == 5:
        return rng.choice(["implementer", "reviewer", "module", "group", "mention", "high", "asc", "desc"])
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    if kind == 7:
        return {rng.choice(["type", "value", "content", "x"]): _random_value(rng, depth + 1)
                for _ in range(rng.randrange(0, 3))}
    return [{"type": _random_value(rng, depth + 1), "value": _random_value(rng, depth + 1)}]


def fuzz(side: Side, methods: list[str], keys: list[str], count: int, seed: int) -> dict:
    rng = random.Random(seed)
    codes: Counter = Counter()
    bad: list[str] = []
    sock = None
    buf = b""
    t0 = time.monotonic()
    for i in range(count):
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(30)
            sock.connect(side.socket)
            buf = b""
        if rng.random() < 0.1:
            line = rng.choice([b"{", b"[]", b"null", b"\xff\xfe", b'{"jsonrpc":"2.0"}', b"x" * 1000,
                               b'{"jsonrpc":"2.0","id":1,"method":5}', bytes(rng.randrange(256) for _ in range(64))])
            line = line.replace(b"\n", b" ")
        else:
            params = {k: _random_value(rng) for k in rng.sample(keys, rng.randrange(0, 5))}
            if rng.random() < 0.5:
                params["caller_agent_id"] = rng.choice(["coordinator_0000", "implementer_0001", "nobody", ""])
            req = {"jsonrpc": "2.0", "id": i, "method": rng.choice(methods), "params": params}
            line = json.dumps(req, ensure_ascii=False).encode("utf-8", "surrogatepass")
        sock.sendall(line + b"\n")
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                bad.append(f"input {i}: the connection closed: {line[:200]!r}")
                break
            buf += chunk
        if b"\n" not in buf:
            sock.close()
            sock = None
            continue
        raw, buf = buf.split(b"\n", 1)
        try:
            msg = json.loads(raw)
            code = msg["error"]["code"] if "error" in msg else "result"
        except (ValueError, KeyError, TypeError):
            bad.append(f"input {i}: not a JSON-RPC answer: {raw[:200]!r}")
            continue
        codes[code] += 1
        if code != "result" and code not in CLIENT_CODES:
            bad.append(f"input {i}: code {code} for {line[:300]!r}: {raw[:300]!r}")
        if (i + 1) % 10000 == 0:
            log(f"fuzz: {i + 1:,}/{count:,} inputs")
    if sock is not None:
        sock.close()
    return {"inputs": count, "seconds": round(time.monotonic() - t0, 1), "codes": dict(codes), "bad": bad[:20],
            "bad_count": len(bad)}


def param_keys() -> list[str]:
    import re

    keys = set()
    for name in os.listdir(os.path.join(ROOT, "thrum")):
        if name.endswith(".py"):
            text = open(os.path.join(ROOT, "thrum", name), encoding="utf-8").read()
            keys |= set(re.findall(r'\.(?:str|int|bool|str_list|pairs|obj|get)\(\s*"([a-z_]{2,30})"', text))
    return sorted(keys | {"scope", "ref"})


# -- the run ----------------------------------------------------------------------------------

def make_env(tmp: str) -> dict:
    home = os.path.join(tmp, "home")
    os.makedirs(home, exist_ok=True)
    gitconfig = os.path.join(home, ".gitconfig")
    with open(gitconfig, "w") as f:
        f.write("[user]\n\tname = Soak\n\temail = soak@example.com\n[init]\n\tdefaultBranch = main\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THRUM_", "GIT_"))}
    env.update({"HOME": home, "GIT_CONFIG_GLOBAL": gitconfig, "GIT_CONFIG_NOSYSTEM": "1", "PYTHONPATH": ROOT,
                "XDG_CONFIG_HOME": os.path.join(home, ".config"), "THRUM_WS_PORT": "0"})
    return env


def git(cwd: str, env: dict, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True,
                          timeout=1800).stdout


def run(args) -> dict:
    tmp = tempfile.mkdtemp(prefix="thrum-soak-", dir=args.tmpdir)
    env = make_env(tmp)
    report: dict = {"repo": args.repo, "kills": args.kills, "fuzz": args.fuzz}
    main = Side("main", os.path.abspath(args.repo), env, tmp)
    partner = None
    added_origin = False
    stop_path = os.path.join(tmp, "stop")
    children: list = []
    try:
        log_path = os.path.join(main.repo, ".thrum", "var", "daemon.log")
        log_start = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        methods = json.loads(subprocess.run([sys.executable, "-c", _LIST_METHODS, main.repo], env=env, check=True,
                                            capture_output=True, text=True, timeout=600).stdout)
        if args.partner:
            remote = os.path.join(tmp, "remote.git")
            git(tmp, env, "init", "-q", "--bare", remote)
            if "origin" in git(main.repo, env, "remote").split():
                url = git(main.repo, env, "remote", "get-url", "origin").strip()
                raise RuntimeError(f"the repository has an origin of its own ({url}); the partner needs one of "
                                   "the soak's: remove it (git remote remove origin) or pass --no-partner")
            git(main.repo, env, "remote", "add", "origin", remote)
            added_origin = True
            git(main.repo, env, "push", "-q", "origin", "HEAD:refs/heads/main")
            log("pushing a-sync to the partner's remote …")
            main.start()
            main.call("sync.force", {"wait": True}, timeout=1800)
            main.stop()
            partner = Side("partner", os.path.join(tmp, "partner"), env, tmp)
            git(tmp, env, "clone", "-q", remote, partner.repo)
            log("the partner adopts the remote a-sync and builds its projection …")
            partner.thrum("init")
            partner.start(timeout=1800)
            partner.thrum("quickstart", "--name", "partner_agent", "--role", "tester", "--module", "soak",
                          name="partner_agent")
        main.start(timeout=1800)
        roster = main.call("agent.list", {}).get("agents", [])
        names = [a["agent_id"] for a in roster if a.get("kind", "agent") == "agent"][:20]
        roles = {a["agent_id"]: a.get("role", "") for a in roster}
        if len(names) < 3:
            raise RuntimeError("the repository needs at least 3 registered agents (use bench.py --generate)")
        main.stop()
        for i in range(args.senders):
            ack = os.path.join(tmp, f"acks-main-{i}.txt")
            children.append(mp.Process(target=_sender, args=(main.socket, names[i % len(names)], names,
                                                             f"soak-m{i}", ack, stop_path, i)))
        for i in range(args.readers):
            who = names[(i + 1) % len(names)]
            children.append(mp.Process(target=_reader, args=(main.socket, who, roles.get(who, ""), stop_path)))
        if partner is not None:
            children.append(mp.Process(target=_sender, args=(partner.socket, "partner_agent", names, "soak-p0",
                                                             os.path.join(tmp, "acks-partner-0.txt"), stop_path, 99)))
        for c in children:
            c.start()
        rng = random.Random(args.seed)
        starts = []
        for k in range(args.kills):
            starts.append(main.start())
            if k % 10 == 9 and partner is not None:
                for side in (partner, main):
                    try:
                        side.call("sync.force", {"wait": True}, timeout=600)
                    except (RPCError, DaemonUnavailable, OSError) as exc:
                        log(f"sync on {side.name}: {exc}")
            time.sleep(rng.uniform(0.3, 2.0))  # let the load run; then the crash, wherever it lands
            main.kill()
            if (k + 1) % 10 == 0:
                log(f"{k + 1}/{args.kills} kills; start-up median {sorted(starts)[len(starts) // 2]:.2f}s")
        with open(stop_path, "w"):
            pass
        for c in children:
            c.join(timeout=120)
            if c.is_alive():
                c.kill()
        report["restart_seconds"] = {"median": round(sorted(starts)[len(starts) // 2], 3) if starts else None,
                                     "max": round(max(starts), 3) if starts else None}
        main.start(timeout=1800)
        if partner is not None:  # union both ways until the heads agree
            for _ in range(3):
                partner.call("sync.force", {"wait": True}, timeout=1800)
                main.call("sync.force", {"wait": True}, timeout=1800)
        failures: list[str] = []
        if args.fuzz:
            log(f"fuzzing {args.fuzz:,} inputs over {len(methods)} methods …")
            fz = fuzz(main, [m for m in methods if "shutdown" not in m and "stop" not in m], param_keys(),
                      args.fuzz, args.seed)
            report["fuzz_result"] = fz
            failures += fz["bad"]
            if not main.healthy():
                failures.append("the daemon is not healthy after the fuzzing")
        main.stop()
        with open(log_path, errors="replace") as f:
            f.seek(log_start)
            daemon_log = f.read()
        tracebacks = daemon_log.count("Traceback")
        report["daemon_log_tracebacks"] = tracebacks
        if tracebacks:
            failures.append(f"{tracebacks} traceback(s) in the daemon log")
        acked: dict[str, str] = {}
        for name in os.listdir(tmp):
            if name.startswith("acks-"):
                for line in open(os.path.join(tmp, name)):
                    cid, mid = line.split()
                    acked[mid] = cid
        by_id, by_client = log_creates(main.repo)
        lost = [m for m in acked if by_id[m] == 0]
        dup = [m for m in acked if by_id[m] > 1]
        dup_clients = [k for k, v in by_client.items() if v > 1 and k[1].startswith("soak-")]
        report.update({"acknowledged_sends": len(acked), "lost": len(lost), "duplicated": len(dup),
                       "duplicated_client_ids": len(dup_clients)})
        if lost or dup or dup_clients:
            failures.append(f"acknowledged writes: {len(lost)} lost, {len(dup)} duplicated by id, "
                            f"{len(dup_clients)} by client id")
        failures += compare_with_rebuild(main)
        if partner is not None:
            partner.stop()
            failures += compare_with_rebuild(partner)
        report["failures"] = failures
        return report
    finally:
        if os.path.exists(tmp):
            with open(stop_path, "w"):
                pass
        for c in children:
            if c.is_alive():
                c.kill()
        for side in (main, partner):
            if side is not None:
                side.kill()
        if added_origin:  # the next run, or a benchmark, must not push to a remote that is gone
            subprocess.run(["git", "remote", "remove", "origin"], cwd=main.repo, env=env, check=False,
                           capture_output=True)
        if not args.keep:
            subprocess.run(["rm", "-rf", tmp], check=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", required=True, help="the repository to soak, in place (e.g. from bench.py --keep)")
    p.add_argument("--kills", type=int, default=100)
    p.add_argument("--fuzz", type=int, default=100_000)
    p.add_argument("--senders", type=int, default=3)
    p.add_argument("--readers", type=int, default=2)
    p.add_argument("--no-partner", dest="partner", action="store_false", help="no sync partner clone")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tmpdir", help="where the partner clone and logs go")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    report = run(args)
    report["seconds"] = round(time.monotonic() - t0, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
