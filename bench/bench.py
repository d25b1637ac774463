#!/usr/bin/env python3
"""Measure thrum against the performance targets of the design (DESIGN.md §4).

    python3 bench/bench.py                  # the Go fixture (50 agents, 10,000 messages)
    python3 bench/bench.py --quick          # fewer iterations (CI smoke)
    python3 bench/bench.py --generate 300   # a small generated dataset instead of the fixture
    python3 bench/bench.py --only cli,list --json out.json

Everything runs in a temporary directory: a fresh git repository with the fixture
extracted and migrated, a daemon of its own, and a byte-compiled copy of this
checkout's `thrum/` package (an installed thrum has compiled bytecode; a checkout run
with PYTHONDONTWRITEBYTECODE recompiles on every call). The CLI is run through a
pip-style console script with every PYTHON* variable cleared except PYTHONPATH.

Numbers on a shared machine are noisy: each figure is a median over several runs
after a warm-up, and the conditions (cores, load, filesystem) are printed with the
table. Every wait is bounded, and daemons and temp dirs are removed even on failure
(`--keep` keeps the temp dir). Exit code: 0 when the run completed, 1 when it could
not set up; with `--strict`, also 1 when a target is missed or a row errored.

Rows not implemented yet by thrum (sync merge) print "not available" with the reason;
they are measured as soon as the feature exists. A missing benchmark dependency (the
`websockets` client for ws_notify) stops the run before set-up with exit 1 and the
command that installs it: a target is never skipped silently.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_NAME = "thrum-go-v0.4-fixture.tar.gz"
PY = sys.executable
MiB = 1024 * 1024

ROLES = ("coordinator", "implementer", "reviewer", "planner", "tester")  # the fixture's naming scheme
SENDER = "coordinator_0000"
RECIPIENT = "implementer_0001"
SUBSCRIBER = "reviewer_0002"


def default_fixture() -> str:
    shared = os.environ.get("THRUM_SHARED_DIR") or os.path.join(os.path.dirname(ROOT), "shared")
    return os.path.join(shared, "fixtures", FIXTURE_NAME)


def agent_name(i: int) -> str:
    return f"{ROLES[i % len(ROLES)]}_{i:04d}"


# -- rows -----------------------------------------------------------------------------

REBUILD_EVENTS_PER_S = 50_000



class Row:
    """One line of the result table: a target, a measurement and its verdict."""

    def __init__(self, name: str, group: str, what: str, unit: str, op: str | None, target: float | None) -> None:
        self.name, self.group, self.what, self.unit, self.op, self.target = name, group, what, unit, op, target
        self.value: float | None = None
        self.status = "not run"
        self.detail = ""

    def set(self, value: float, detail: str = "") -> None:
        self.value = value
        self.detail = detail
        if self.op is None:
            self.status = "info"
        elif self.op == "<=":
            self.status = "ok" if value <= self.target else "MISS"
        else:
            self.status = "ok" if value >= self.target else "MISS"

    def mark(self, status: str, detail: str = "") -> None:
        self.status, self.detail = status, detail

    def target_text(self) -> str:
        if self.op is None:
            return "—"
        return f"{'≤' if self.op == '<=' else '≥'} {_fmt(self.target, self.unit)}"

    def measured_text(self) -> str:
        return _fmt(self.value, self.unit) if self.value is not None else self.status

    def to_json(self) -> dict:
        return {"name": self.name, "group": self.group, "what": self.what, "unit": self.unit,
                "measured": self.value, "target": self.target, "op": self.op, "status": self.status,
                "detail": self.detail}


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:.2f} {unit}"


def make_rows() -> list[Row]:
    return [
        Row("cli_send", "cli", "CLI `send` wall − interpreter start-up, median", "ms", "<=", 25),
        Row("cli_inbox", "cli", "CLI `inbox` wall − interpreter start-up, median", "ms", "<=", 25),
        Row("cli_status", "cli", "CLI `status` wall − interpreter start-up, median", "ms", "<=", 25),
        Row("send_sequential", "send", "message.send, 1 connection, one request at a time", "/s", ">=", 2500),
        Row("send_pipelined", "send", "message.send, 1 connection, 64 requests in flight", "/s", ">=", 2500),
        Row("send_concurrent10", "send", "message.send, 10 client processes × 1 connection, total", "/s",
            ">=", 8000),
        Row("list_inbox", "list", "message.list inbox (for_agent…, page 100), median round trip", "ms", "<=", 3),
        Row("list_inbox_unread", "list", "the same with unread:true, median round trip", "ms", "<=", 3),
        Row("list_all", "list", "message.list page 100, no filter, median round trip", "ms", "<=", 3),
        Row("daemon_ready", "startup", "daemon spawn → health answers (projection present), median", "s",
            "<=", 1),
        Row("rebuild", "rebuild", "`thrum migrate --rebuild` of the whole log, wall, median (the target is "
            "3 s, or a second per 50,000 events when that is more)", "s", "<=", 3),
        Row("rss_rebuild", "rebuild",
            "daemon VmHWM after a start without a projection (it rebuilds first, then indexes for search)", "MiB",
            "<=", 60),
        Row("rss_10k", "rss", "daemon VmRSS at ~10K messages, after list + CLI load", "MiB", "<=", 60),
        Row("rss_after_sends", "rss", "daemon VmRSS after the send load too", "MiB", "<=", 60),
        Row("hook_idle", "hook", "`thrum hook claude-code after-tool` with nothing to deliver, wall, median", "ms",
            "<=", 40),
        Row("ws_notify", "ws", "send → notification.message on a subscribed WebSocket, median", "ms", "<=", 5),
        Row("search_two_words", "search", "message.search, two words sampled from the messages, median round trip",
            "ms", "<=", 10),
        Row("sync_merge_10k", "sync", "merge of 10K remote events (sync.force → projected)", "s", "<=", 2),
        # On a copy of the repository (~3 GB at 1M: mind --tmpdir); the target is for 1M (bench_sync.py).
        Row("sync_merge_100k_at_1m", "sync_scale", "merge of a peer's 100K remote events into a copy of this "
            "repository (sync.force → projected and committed)", "s", "<=", 5),
        Row("rss_after_merge", "sync_scale", "daemon VmRSS after that merge (VmHWM in the detail)", "MiB", "<=",
            60),
    ]


# -- small helpers ----------------------------------------------------------------------

def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def pid_alive(pid: int) -> bool:
    from thrum.daemon import pid_alive as alive  # the checkout's thrum: main() puts it on sys.path

    return alive(pid)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.002, growth: float = 1.5):
    """Poll `predicate` until truthy; the interval grows by `growth` up to 50 ms (1.0 keeps it fixed)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * growth, 0.05)


def daemon_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (0 without one)."""
    if not pid:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def fs_type(path: str) -> str:
    """The filesystem type of `path` from /proc/mounts (fsync cost depends on it: tmpfs makes it free)."""
    best, kind = "", "?"
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and (real == parts[1] or real.startswith(parts[1].rstrip("/") + "/")) \
                        and len(parts[1]) > len(best):
                    best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


# -- the environment under test -------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.rows = {r.name: r for r in make_rows()}
        self.only = set(filter(None, (args.only or "").split(",")))
        self.tmp = ""
        self.repo = ""
        self.pkg = ""        # the directory holding the compiled copy of thrum/
        self.python = PY     # the interpreter of the CLI, the baseline and the daemon
        self.launcher = ""   # the console script
        self.env: dict = {}      # for daemons and untimed commands
        self.cli_env: dict = {}  # for the timed CLI runs
        self.daemon_pid: int | None = None
        self.children: list[subprocess.Popen] = []
        self.conditions: dict = {}
        self.notes: list[str] = []
        self.load_before = loadavg()
        self.sent = 0
        self.dataset = ""

    # selection

    def group_wanted(self, group: str) -> bool:
        return not self.only or group in self.only or any(
            r.group == group and r.name in self.only for r in self.rows.values())

    def row_wanted(self, name: str) -> bool:
        row = self.rows[name]
        return not self.only or name in self.only or row.group in self.only

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    # paths

    @property
    def var(self) -> str:
        return os.path.join(self.repo, ".thrum", "var")

    @property
    def sock(self) -> str:
        return os.path.join(self.var, "thrum.sock")

    # -- setup ------------------------------------------------------------------------------

    def setup(self) -> None:
        base = self.args.tmpdir or None
        self.tmp = tempfile.mkdtemp(prefix="thrum-bench-", dir=base)
        home = os.path.join(self.tmp, "home")
        os.makedirs(home)
        gitconfig = os.path.join(home, ".gitconfig")
        with open(gitconfig, "w") as f:
            f.write("[user]\n\tname = Bench\n\temail = bench@example.com\n[init]\n\tdefaultBranch = main\n")
        self._install()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("THRUM_", "GIT_", "PYTHON")) and k not in ("VIRTUAL_ENV",)}
        env.update({"HOME": home, "GIT_CONFIG_GLOBAL": gitconfig, "GIT_CONFIG_NOSYSTEM": "1",
                    "XDG_CONFIG_HOME": os.path.join(home, ".config"), "COLUMNS": "100",
                    "THRUM_SYNC_INTERVAL": "3600"})
        if self.args.cli_env == "venv":
            # The CLI sees only the venv, like a pipx install. Daemons also get the base interpreter's
            # site-packages on PYTHONPATH (websockets, mcp), which does not run its .pth files.
            self.cli_env = dict(env)
            base_site = [p for p in dict.fromkeys(_site_dirs(PY)) if os.path.isdir(p)]
            self.env = {**env, "PYTHONPATH": os.pathsep.join(base_site)}
        else:
            self.cli_env = {**env, "PYTHONPATH": self.pkg}
            self.env = dict(self.cli_env)
        if getattr(self.args, "repo", None):  # a repository an earlier run kept (--keep): no set-up, no dataset load
            self.repo = os.path.abspath(self.args.repo)
            self.dataset = f"the repository {self.repo} (--repo), {self._count_lines():,} log lines"
            return
        self.repo = os.path.join(self.tmp, "repo")
        os.makedirs(self.repo)
        self.git("init", "-q")
        with open(os.path.join(self.repo, "README.md"), "w") as f:
            f.write("bench repo\n")
        self.git("add", "README.md")
        self.git("commit", "-q", "-m", "initial")
        if self.args.generate:
            self._generate(self.args.generate)
        else:
            self._load_fixture()

    def _install(self) -> None:
        """A byte-compiled copy of thrum/ and a console script like the one pip writes.

        `--cli-env venv` (default): a fresh venv (no pip, no system site-packages) with thrum copied
        into its site-packages, i.e. a pipx install minus the dependencies, which the CLI does
        not import. `system`: the copy on PYTHONPATH of this interpreter, whose site-packages
        may run .pth files at every start-up.
        """
        if self.args.cli_env == "venv":
            venv = os.path.join(self.tmp, "venv")
            proc = subprocess.run([PY, "-m", "venv", "--without-pip", venv], capture_output=True, text=True,
                                  timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"python -m venv failed: {proc.stderr.strip()}")
            self.python = os.path.join(venv, "bin", "python")
            self.pkg = _site_dirs(self.python)[0]
            bindir = os.path.join(venv, "bin")
        else:
            self.python = PY
            self.pkg = os.path.join(self.tmp, "site")
            bindir = os.path.join(self.tmp, "bin")
            os.makedirs(bindir)
        shutil.copytree(os.path.join(ROOT, "thrum"), os.path.join(self.pkg, "thrum"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        proc = subprocess.run([self.python, "-m", "compileall", "-q", os.path.join(self.pkg, "thrum")],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"compileall failed: {proc.stdout}{proc.stderr}")
        self.launcher = os.path.join(bindir, "thrum")
        with open(self.launcher, "w") as f:  # pip's console-script template (pip 23, distlib)
            f.write(f"#!{self.python}\n# -*- coding: utf-8 -*-\nimport re\nimport sys\nfrom thrum.__main__ import main\n"
                    "if __name__ == '__main__':\n"
                    "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
                    "    sys.exit(main())\n")
        os.chmod(self.launcher, 0o755)

    def git(self, *args: str, cwd: str | None = None, check: bool = True) -> str | None:
        """git's output; with check=False, None when it fails."""
        proc = subprocess.run(["git", *args], cwd=cwd or self.repo, env=self.env or None, capture_output=True,
                              text=True, timeout=120)
        if proc.returncode != 0 and not check:
            return None
        if proc.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def thrum(self, *args: str, name: str | None = None, check: bool = True, timeout: float = 120,
              extra_env: dict | None = None) -> subprocess.CompletedProcess:
        env = dict(self.env)
        if name:
            env["THRUM_NAME"] = name
        if extra_env:
            env.update(extra_env)
        proc = subprocess.run([self.launcher, *args], cwd=self.repo, env=env, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"thrum {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}"
                               f" {proc.stdout.strip()}")
        return proc

    def _load_fixture(self) -> None:
        path = self.args.fixture or default_fixture()
        if not os.path.isfile(path):
            raise SetupError(f"the Go fixture is missing: {path}\n  Pass --fixture PATH, set THRUM_SHARED_DIR to "
                             "the shared/ directory, or use --generate N for a generated dataset.")
        with tarfile.open(path) as tar:
            tar.extractall(self.repo, filter="data")
        t0 = time.perf_counter()
        proc = self.thrum("migrate", "--json")
        data = json.loads(proc.stdout)
        self.dataset = (f"Go fixture {path}: {data.get('events')} events, {data.get('messages')} messages, "
                        f"{data.get('agents')} agents (migrate {time.perf_counter() - t0:.2f}s)")

    def _generate(self, count: int) -> None:
        """init, 50 agents and 8 groups through the daemon, then a year of `count` messages written to
        the log (bench/generate.py) and projected by `migrate --rebuild`; the daemon is left stopped."""
        from generate import setup_team, write_history

        self.thrum("init")
        self.start_daemon()
        team = setup_team(self.call, self.thrum, getattr(self.args, "agents", 50))
        self.stop_daemon()
        t0 = time.perf_counter()
        stats = write_history(os.path.join(self.repo, ".git", "thrum-sync", "a-sync"), team, count,
                              progress=lambda i, n: log(f"generated {i:,}/{n:,} messages"))
        wrote = time.perf_counter() - t0
        os.remove(os.path.join(self.var, "messages.db"))
        t0 = time.perf_counter()
        proc = self.thrum("migrate", "--rebuild", "--json", timeout=3600)
        data = json.loads(proc.stdout)
        self.dataset = (f"generated (bench/generate.py): {len(team.agents)} agents, {stats['messages']:,} messages"
                        f" ({stats['threads']:,} replies, {stats['broadcasts']:,} to everyone, {stats['edits']:,}"
                        f" edits, {stats['deletes']:,} deletions), {stats['read_events']:,} read events"
                        f" ({stats['reads']:,} markers), {stats['delivered_events']:,} receipts;"
                        f" {data.get('events'):,} events, log {stats['log_bytes'] / MiB:,.0f} MiB written in"
                        f" {wrote:.0f} s, first rebuild {time.perf_counter() - t0:.1f} s")
        log(self.dataset)

    def _count_lines(self) -> int:
        root = os.path.join(self.repo, ".git", "thrum-sync", "a-sync")
        total = 0
        for dirpath, _, names in os.walk(root):
            for name in names:
                if name.endswith(".jsonl"):
                    with open(os.path.join(dirpath, name), "rb") as f:
                        total += sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        return total

    # -- daemon control ----------------------------------------------------------------------

    def pid_from_file(self) -> int | None:
        try:
            with open(os.path.join(self.var, "thrum.pid")) as f:
                return int(json.load(f)["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def start_daemon(self) -> float:
        t0 = time.perf_counter()
        self.thrum("daemon", "start", timeout=60)
        wall = time.perf_counter() - t0
        self.daemon_pid = self.pid_from_file()
        return wall

    def start_profiled_daemon(self, out: str) -> None:
        """The daemon in the foreground under cProfile (stopped with SIGTERM, which writes the profile)."""
        logf = open(os.path.join(self.tmp, "daemon-profiled.log"), "ab")
        proc = subprocess.Popen([self.python, "-m", "cProfile", "-o", out, "-m", "thrum", "daemon", "run", "--repo",
                                 self.repo], cwd=self.repo, env=self.env, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=logf, start_new_session=True)
        logf.close()
        self.children.append(proc)
        wait_until(lambda: self.health_ok() or proc.poll() is not None, 60, "the profiled daemon")
        if proc.poll() is not None:
            raise RuntimeError("the profiled daemon exited during start-up")
        self.daemon_pid = proc.pid

    def stop_daemon(self) -> None:
        pid = self.daemon_pid or self.pid_from_file()
        self.thrum("daemon", "stop", check=False, timeout=30)
        if pid:
            try:
                wait_until(lambda: not pid_alive(pid), 15, "the daemon to exit")
            except TimeoutError:
                _kill(pid)
        for proc in self.children:
            if proc.pid == pid:
                _reap(proc)
        self.daemon_pid = None

    def health_ok(self) -> bool:
        if not os.path.exists(self.sock):
            return False
        from thrum.rpc import Client, DaemonUnavailable, RPCError

        try:
            with Client(self.sock, timeout=2) as c:
                return c.call("health").get("status") == "ok"
        except (DaemonUnavailable, RPCError, OSError, ValueError):
            return False

    def client(self, timeout: float = 30):
        from thrum.rpc import Client

        return Client(self.sock, timeout=timeout).connect()

    def call(self, method: str, params: dict | None = None) -> dict:
        with self.client() as c:
            return c.call(method, params or {})

    def message_count(self) -> int:
        return self.call("message.list", {"page_size": 1, "include_deleted": True})["total"]

    def pipeline_send(self, params_list: list[dict], window: int) -> tuple[float, int, str]:
        """Send every params dict as message.send on one connection with `window` requests in flight."""
        from thrum.rpc import _dumps

        reqs = [_dumps({"jsonrpc": "2.0", "method": "message.send", "params": p, "id": i}) + b"\n"
                for i, p in enumerate(params_list)]
        c = self.client()
        sock = c._sock
        n = len(reqs)
        sent = received = errors = 0
        first_error = ""
        buf = b""
        try:
            t0 = time.perf_counter()
            k = min(window, n)
            sock.sendall(b"".join(reqs[:k]))
            sent = k
            while received < n:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise RuntimeError("the daemon closed the connection")
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    msg = json.loads(line)
                    if "id" not in msg:
                        continue  # a notification
                    received += 1
                    if "error" in msg:
                        errors += 1
                        first_error = first_error or msg["error"].get("message", "")
                k = min(n - sent, window - (sent - received))
                if k > 0:
                    sock.sendall(b"".join(reqs[sent:sent + k]))
                    sent += k
            elapsed = time.perf_counter() - t0
        finally:
            c.close()
        self.sent += n - errors
        return elapsed, errors, first_error

    # -- the benchmarks ------------------------------------------------------------------------

    def bench_rebuild(self) -> None:
        row = self.rows["rebuild"]
        walls, inner = [], []
        for _ in range(self.n(3, 1)):
            t0 = time.perf_counter()
            proc = self.thrum("migrate", "--rebuild", "--json", timeout=300)
            walls.append(time.perf_counter() - t0)
            data = json.loads(proc.stdout)
            inner.append(data["seconds"])
        # DESIGN §4: 10K events in <= 3 s, and >= 50,000 events/s at scale (25 s for 1.25M events).
        row.target = max(3.0, data["events"] / REBUILD_EVENTS_PER_S)
        row.set(median(walls), f"{data['events'] / median(walls):,.0f} events/s (target >= "
                               f"{REBUILD_EVENTS_PER_S:,}/s at scale); in-process make_store+rebuild "
                               f"{median(inner):.2f}s; {data['events']} events, {data['messages']} messages; "
                               f"runs {len(walls)}")
        if self.row_wanted("rss_rebuild"):
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(os.path.join(self.var, "messages.db" + suffix)):
                    os.remove(os.path.join(self.var, "messages.db" + suffix))
            status: dict = {}
            after: dict = {}

            def on_ready(pid: int) -> None:
                status.update(proc_status(pid))
                # A large rebuild leaves the search index to the daemon's loop: its peak counts too.
                t0 = time.perf_counter()
                wait_until(lambda: self._search_backlog() == 0, 900, "the search index to catch up")
                after.update(proc_status(pid), seconds=time.perf_counter() - t0)

            took = self._one_start(timeout=3600, on_ready=on_ready)
            self.rows["rss_rebuild"].set(max(status["VmHWM"], after["VmHWM"]) / 1024,
                                         f"VmHWM when ready {status['VmHWM'] / 1024:.1f} MiB, after the search index"
                                         f" caught up in the background ({after['seconds']:.1f}s more)"
                                         f" {after['VmHWM'] / 1024:.1f} MiB; start with the rebuild {took:.1f}s")

    def _search_backlog(self) -> int:
        """Messages the daemon has not indexed for search yet (read from its database)."""
        import sqlite3

        db = sqlite3.connect(f"file:{os.path.join(self.var, 'messages.db')}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute("SELECT COALESCE(MAX(rowid), 0) - (SELECT upto FROM message_search_upto)"
                              " FROM messages").fetchone()[0]
        finally:
            db.close()

    def bench_startup(self) -> None:
        row = self.rows["daemon_ready"]
        times = []
        runs = self.n(5, 1)
        for i in range(runs + 1):  # the first start is a warm-up (page cache, first-start writes)
            t = self._one_start()
            if i:
                times.append(t)
        row.set(median(times), f"runs {runs} after 1 warm-up, min {min(times):.3f}s, max {max(times):.3f}s; "
                               "`python -m thrum daemon run` (bytecode compiled)")

    def _one_start(self, timeout: float = 30, on_ready=None) -> float:
        logf = open(os.path.join(self.tmp, "daemon-startup.log"), "ab")
        t0 = time.perf_counter()
        proc = subprocess.Popen([self.python, "-m", "thrum", "daemon", "run", "--repo", self.repo], cwd=self.repo,
                                env=self.env, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                start_new_session=True)
        logf.close()
        self.children.append(proc)
        try:
            # A fixed 1 ms poll: a growing interval would quantize every run to the same few values.
            wait_until(lambda: proc.poll() is not None or self.health_ok(), timeout, "the daemon to answer health",
                       interval=0.001, growth=1.0)
            elapsed = time.perf_counter() - t0
            if proc.poll() is not None:
                raise RuntimeError(f"the daemon exited during start-up (code {proc.returncode}); see "
                                   f"{os.path.join(self.tmp, 'daemon-startup.log')}")
            if on_ready is not None:
                on_ready(proc.pid)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            _reap(proc)
        return elapsed

    def start_sessions(self) -> None:
        for i in range(10):
            name = agent_name(i)
            self.call("session.start", {"agent_id": name, "caller_agent_id": name})

    def bench_list(self) -> None:
        inbox = {"for_agent": RECIPIENT, "for_agent_role": "implementer", "exclude_self": True,
                 "caller_agent_id": RECIPIENT, "page_size": 100}
        cases = [("list_inbox", inbox), ("list_inbox_unread", {**inbox, "unread": True}),
                 ("list_all", {"page_size": 100})]
        n = self.n(200, 20)
        with self.client() as c:
            for name, params in cases:
                if not self.row_wanted(name):
                    continue
                for _ in range(max(5, n // 10)):  # warm-up
                    c.call("message.list", params)
                times = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    result = c.call("message.list", params)
                    times.append((time.perf_counter() - t0) * 1000)
                self.rows[name].set(median(times), f"n={n}, p90 {pct(times, 0.9):.2f} ms, min {min(times):.2f} ms;"
                                                   f" {len(result['messages'])} rows of total {result['total']}"
                                                   f" (unread {result['unread']})")

    def bench_cli(self) -> None:
        runs = self.n(15, 3)
        warm = self.n(2, 1)
        commands = {
            "cli_send": (SENDER, ["send", "benchmark message from the CLI", "--to", f"@{RECIPIENT}"]),
            "cli_inbox": (RECIPIENT, ["inbox"]),
            "cli_status": (SENDER, ["status"]),
        }
        commands = {k: v for k, v in commands.items() if self.row_wanted(k)}
        base_argv = [self.python, "-I", "-c", "pass"]
        samples: dict[str, list[float]] = {k: [] for k in commands}
        baseline: list[float] = []

        def timed(argv, env) -> float:
            t0 = time.perf_counter()
            proc = subprocess.run(argv, cwd=self.repo, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
            elapsed = (time.perf_counter() - t0) * 1000
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(argv[1:])} exited {proc.returncode}: {proc.stderr.decode()[:300]}")
            return elapsed

        envs = {k: {**self.cli_env, "THRUM_NAME": who} for k, (who, _) in commands.items()}
        # Rounds interleave the baseline and the commands, so load drifting over the run hits all alike.
        for r in range(warm + runs):
            b = timed(base_argv, self.cli_env)
            if r >= warm:
                baseline.append(b)
            for key, (_, argv) in commands.items():
                t = timed([self.launcher, *argv], envs[key])
                if r >= warm:
                    samples[key].append(t)
                    if key == "cli_send":
                        self.sent += 1
        base = median(baseline)
        self.conditions["interpreter start-up (python -I -c pass)"] = \
            f"median {base:.1f} ms, min {min(baseline):.1f} ms over {len(baseline)} runs"
        for key, xs in samples.items():
            self.rows[key].set(median(xs) - base, f"wall median {median(xs):.1f} ms (min {min(xs):.1f}, "
                                                  f"p90 {pct(xs, 0.9):.1f}) − start-up {base:.1f} ms; "
                                                  f"min − min {min(xs) - min(baseline):.1f} ms; runs {runs}")

    def bench_hook(self) -> None:
        """What every tool call of an agent costs: the PostToolUse hook, as Claude Code runs it (JSON on
        stdin, a console script), when there is nothing new for the agent. Wall time, interpreter included."""
        runs = self.n(30, 5)
        warm = self.n(3, 1)
        payload = json.dumps({"session_id": "bench", "cwd": self.repo, "hook_event_name": "PostToolUse",
                              "tool_name": "Bash", "tool_input": {"command": "ls"},
                              "tool_response": {"stdout": "README.md\n" * 50, "stderr": ""}}).encode()
        env = {**self.cli_env, "THRUM_NAME": RECIPIENT}
        argv = [self.launcher, "hook", "claude-code", "after-tool"]
        self.call("message.deliver", {"caller_agent_id": RECIPIENT, "budget": 32000})
        while self.call("message.deliver", {"caller_agent_id": RECIPIENT, "budget": 32000})["more"]:
            pass  # drain: the row measures the empty check
        # The receipts just written start a sync round 2 s later; on a large log a round hashes whole shard
        # files (O(history), issue 13) and slows everything on the machine. Measure the hook, not that.
        wait_until(lambda: (lambda s: not s.get("in_progress") and not s.get("uncommitted_events"))(
            self.call("sync.status")), 600, "the sync round after the drain", interval=0.2)
        samples = []
        for r in range(warm + runs):
            t0 = time.perf_counter()
            proc = subprocess.run(argv, input=payload, cwd=self.repo, env=env, capture_output=True, timeout=60)
            elapsed = (time.perf_counter() - t0) * 1000
            if proc.returncode != 0 or proc.stdout:
                raise RuntimeError(f"the hook exited {proc.returncode} with {proc.stdout[:200]!r}")
            if r >= warm:
                samples.append(elapsed)
        log_path = os.path.join(self.var, "hooks.log")
        if os.path.exists(log_path):
            raise RuntimeError(f"the hook logged a problem: {open(log_path).read()[-300:]}")
        self.rows["hook_idle"].set(median(samples), f"min {min(samples):.1f}, p90 {pct(samples, 0.9):.1f} ms; "
                                                    f"runs {runs}; {self.message_count():,} messages in the repo")

    def bench_search(self) -> None:
        from bench_search import measure_repo  # bench/ is on sys.path (this script's directory)

        m = measure_repo(self.repo, queries=self.n(200, 20))
        per = m["index_bytes_per_message"]
        self.rows["search_two_words"].set(m["median_ms"], f"p95 {m['p95_ms']:.1f} ms; the most common words "
                                          f"{m['common_median_ms']:.1f} ms; {m['messages']:,} messages; index "
                                          f"{per:.0f} bytes/message" if per else "")

    def bench_rss(self, name: str) -> None:
        pid = self.daemon_pid
        if not pid:
            self.rows[name].mark("error", "no daemon pid")
            return
        st = proc_status(pid)
        count = self.message_count()
        self.rows[name].set(st["VmRSS"] / 1024, f"peak VmHWM {st['VmHWM'] / 1024:.1f} MiB; {count} messages in the"
                                                f" projection; pid {pid}")

    def bench_send(self) -> None:
        # Every send waits for an fdatasync. The rebuild rows leave gigabytes of the database they wrote
        # (without syncs) for the kernel to flush, and on a shared disk that flush slows those
        # fdatasyncs: 10 clients at 1M, 8,676/s after a sync against 5,733/s with 2.3 GB still dirty.
        # The send rows measure the daemon, so they start once earlier rows' writes are on disk.
        t0 = time.perf_counter()
        os.sync()
        self.conditions["write-back before the send rows (os.sync)"] = f"{time.perf_counter() - t0:.2f} s"
        content = "benchmark message: durable send over the Unix socket"
        params = {"content": content, "caller_agent_id": SENDER, "mentions": [f"@{RECIPIENT}"]}
        if self.row_wanted("send_sequential"):
            runs, n = self.n(3, 1), self.n(1000, 100)
            rates = []
            from thrum.rpc import RPCError

            with self.client() as c:
                for _ in range(20):
                    c.call("message.send", params)
                errors = 0
                cpu = []  # the daemon's CPU time a send: steadier than a rate on a shared machine
                for _ in range(runs):
                    cpu0 = daemon_cpu_s(self.daemon_pid)
                    t0 = time.perf_counter()
                    for _ in range(n):
                        try:
                            c.call("message.send", params)
                        except RPCError:
                            errors += 1
                    rates.append(n / (time.perf_counter() - t0))
                    cpu.append((daemon_cpu_s(self.daemon_pid) - cpu0) / n * 1e6)
            self.sent += runs * n + 20
            self.rows["send_sequential"].set(
                median(rates), f"{runs}×{n} sends, runs {', '.join(f'{r:,.0f}' for r in rates)}/s; daemon CPU"
                               f" {median(cpu):.0f} µs a send; errors {errors}; thrum.rpc.Client")
        if self.row_wanted("send_pipelined"):
            runs, n, window = self.n(3, 1), self.n(3000, 200), 64
            self.pipeline_send([params] * 20, window)  # warm-up
            rates, errs = [], 0
            first = ""
            for _ in range(runs):
                elapsed, errors, first_error = self.pipeline_send([params] * n, window)
                rates.append(n / elapsed)
                errs += errors
                first = first or first_error
            self.rows["send_pipelined"].set(median(rates), f"{runs}×{n} sends, window {window}, runs "
                                                           f"{', '.join(f'{r:,.0f}' for r in rates)}/s; errors {errs}"
                                                           + (f" ({first})" if first else ""))
        if self.row_wanted("send_concurrent10"):
            runs, n = self.n(3, 1), self.n(300, 20)
            rates, details = [], []
            for _ in range(runs):
                rate, detail = self._concurrent(10, n)
                rates.append(rate)
                details.append(detail)
            self.rows["send_concurrent10"].set(median(rates), f"{runs}×(10×{n}) sends, runs "
                                                              f"{', '.join(f'{r:,.0f}' for r in rates)}/s; {details[-1]}")

    def _concurrent(self, procs: int, n: int) -> tuple[float, str]:
        import multiprocessing as mp

        ctx = mp.get_context("fork")
        barrier = ctx.Barrier(procs)
        queue = ctx.Queue()
        workers = []
        for i in range(procs):
            agent = agent_name(i)
            params = {"content": f"concurrent benchmark message from {agent}", "caller_agent_id": agent,
                      "mentions": [f"@{agent_name((i + 1) % procs)}"]}
            w = ctx.Process(target=_send_worker, args=(self.sock, params, n, 10, barrier, queue, ROOT), daemon=True)
            workers.append(w)
        try:
            for w in workers:
                w.start()
            results = [queue.get(timeout=300) for _ in workers]
        finally:
            for w in workers:
                w.join(timeout=30)
                if w.is_alive():
                    w.terminate()
                    w.join(timeout=5)
        failed = [r["error"] for r in results if r["error"]]
        if failed:
            raise RuntimeError(f"a sender failed: {failed[0]}")
        start = min(r["t0"] for r in results)
        end = max(r["t1"] for r in results)
        total = sum(r["n"] for r in results)
        errors = sum(r["errors"] for r in results)
        self.sent += total - errors + 10 * procs
        per = [r["n"] / (r["t1"] - r["t0"]) for r in results]
        return total / (end - start), (f"per connection {min(per):,.0f}–{max(per):,.0f}/s; errors {errors}; "
                                       "multiprocessing (fork), each sender its own agent and session")

    # -- hooks for features still being built --------------------------------------------------------

    def bench_ws(self) -> None:
        """send → notification.message on a WebSocket subscribed with `subscribe {all:true}`."""
        row = self.rows["ws_notify"]
        if not os.path.exists(os.path.join(self.pkg, "thrum", "ws.py")):
            row.mark("not available", "thrum/ws.py does not exist yet")
            return
        port_file = os.path.join(self.var, "ws.port")
        try:
            wait_until(lambda: os.path.exists(port_file), 5, "ws.port")
            with open(port_file) as f:
                port = int(f.read().strip())
        except (TimeoutError, OSError, ValueError):
            row.mark("not available", "the daemon wrote no .thrum/var/ws.port")
            return
        from websockets.sync.client import connect  # present: run() checked before setting up
        token = self._ws_token()
        url = f"ws://127.0.0.1:{port}/ws" + (f"?token={token}" if token else "")
        n = self.n(100, 10)
        times = []
        kw = {"open_timeout": 10, "close_timeout": 5}  # no Origin: an agent's client (a browser is a user)
        try:
            ws = connect(url, proxy=None, **kw)  # websockets ≥ 15 would otherwise honour *_PROXY for 127.0.0.1
        except TypeError:
            ws = connect(url, **kw)
        with ws, self.client() as c:
            subscribe = {"all": True, "caller_agent_id": SUBSCRIBER}
            ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": subscribe}))
            reply = _ws_reply(ws, 1)
            old = ((reply.get("error") or {}).get("data") or {}).get("subscription_id")
            if old:  # a repository benchmarked before (--repo) keeps that run's subscription: start afresh
                c.call("unsubscribe", {"subscription_id": old, "caller_agent_id": SUBSCRIBER})
                ws.send(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "subscribe", "params": subscribe}))
                reply = _ws_reply(ws, 2)
            if "error" in reply:
                raise RuntimeError(f"subscribe failed: {reply['error']}")
            params = {"content": "websocket latency probe", "caller_agent_id": SENDER,
                      "mentions": [f"@{RECIPIENT}"]}
            for i in range(n + 5):
                t0 = time.perf_counter()
                mid = c.call("message.send", params)["message_id"]
                deadline = time.monotonic() + 5
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError("no notification.message within 5 s")
                    msg = json.loads(ws.recv(timeout=remaining))
                    if msg.get("method") == "notification.message" and \
                            (msg.get("params") or {}).get("message_id") == mid:
                        break
                if i >= 5:
                    times.append((time.perf_counter() - t0) * 1000)
            self.sent += n + 5
        row.set(median(times), f"n={n}, p90 {pct(times, 0.9):.2f} ms; includes the send round trip; "
                               f"token {'yes' if token else 'none found'}")

    def _ws_token(self) -> str:
        if os.environ.get("THRUM_WS_TOKEN"):
            return os.environ["THRUM_WS_TOKEN"]
        for name in ("ws.token", "ui.token", "token", "ws_token", "auth.token"):
            path = os.path.join(self.var, name)
            try:
                with open(path) as f:
                    text = f.read().strip()
            except OSError:
                continue
            if text.startswith("{"):
                try:
                    return str(json.loads(text).get("token", ""))
                except ValueError:
                    continue
            return text
        return ""

    def bench_sync(self) -> None:
        """10K events appended by another clone, pushed to a shared remote, then `sync.force` here."""
        row = self.rows["sync_merge_10k"]
        from thrum.rpc import RPCError

        try:
            self.call("sync.status")
        except RPCError as exc:
            if exc.code == -32601:
                row.mark("not available", "the daemon has no sync.* methods yet")
                return
            raise
        # The row pushes to the remote it sets up: never to one of a --repo's own.
        if self.git("remote", "get-url", "origin", check=False) is not None:
            row.mark("skipped", "the repository has an `origin` remote; this row runs only without one")
            return
        # Make the repo sync with a bare remote (not local-only), then restart the daemon. A --repo
        # gets its settings back afterwards, so that a later run on it starts as this one did.
        self.stop_daemon()
        cfg_path = os.path.join(self.repo, ".thrum", "config.json")
        try:
            with open(cfg_path) as f:
                cfg_text = f.read()
        except OSError:
            cfg_text = None
        try:
            self._sync_10k(row, cfg_path, cfg_text)
        finally:
            self.git("remote", "remove", "origin", check=False)
            if cfg_text is None:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(cfg_path)
            else:
                with open(cfg_path, "w") as f:
                    f.write(cfg_text)

    def _sync_10k(self, row: Row, cfg_path: str, cfg_text: str | None) -> None:
        try:
            cfg = json.loads(cfg_text) if cfg_text else {}
        except ValueError:
            cfg = {}
        cfg["local_only"] = False
        cfg.setdefault("daemon", {})["local_only"] = False
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=2)
        remote = os.path.join(self.tmp, "remote.git")
        self.git("init", "-q", "--bare", remote)
        self.git("remote", "add", "origin", remote)
        sync_dir = os.path.join(self.repo, ".git", "thrum-sync", "a-sync")
        self.git("add", "-A", cwd=sync_dir)
        self.git("commit", "-q", "--allow-empty", "-m", "bench: local state", cwd=sync_dir)
        self.git("push", "-q", "origin", "a-sync:a-sync")
        self.start_daemon()
        before = self.message_count()
        peer = os.path.join(self.tmp, "peer")
        self.git("clone", "-q", "--branch", "a-sync", "--single-branch", remote, peer, cwd=self.tmp)
        count = 10_000 if not self.quick else 1_000
        _write_peer_events(peer, count, ROOT)
        self.git("add", "-A", cwd=peer)
        self.git("commit", "-q", "-m", f"bench: {count} remote events", cwd=peer)
        self.git("push", "-q", "origin", "a-sync", cwd=peer)
        t0 = time.perf_counter()
        self.call("sync.force")
        wait_until(lambda: self.message_count() >= before + count, 120, f"{count} remote messages", interval=0.01)
        elapsed = time.perf_counter() - t0
        if count != 10_000:  # --quick: scale linearly, and say so
            row.set(elapsed * 10_000 / count, f"--quick: {count} events in {elapsed:.2f}s, scaled to 10K")
        else:
            row.set(elapsed, f"{count} message.create events + 1 agent.register from a peer clone")


    def bench_sync_scale(self) -> None:
        """bench_sync.run_at_scale on a copy of this repository (the daemon is stopped for the copy)."""
        from bench_sync import run_at_scale

        self.stop_daemon()
        events = self.n(100_000, 1_000)
        r = run_at_scale(self.repo, events=events, tmpdir=self.tmp)
        if not r["ok"]:
            raise RuntimeError(f"the merge round failed: {r['error']}")
        self.rows["sync_merge_100k_at_1m"].set(
            r["wall_s"], f"{r['remote_events']:,} events ({r['remote_messages']:,} messages) into "
            f"{r['messages_before']:,} messages (the target is for 100K into 1M); round {r['round_s']:.2f} s"
            + ("; --quick: not scaled" if events != 100_000 else ""))
        self.rows["rss_after_merge"].set(
            r["rss_after_mib"], f"VmHWM during the merge {r['hwm_merge_mib']:.1f} MiB, since daemon start "
            f"{r['hwm_since_start_mib']:.1f} MiB; before the merge {r['rss_before_mib']:.1f} MiB")


def _site_dirs(python: str) -> list[str]:
    """purelib and platlib of an interpreter (a venv's own site-packages for a venv's python)."""
    out = subprocess.run([python, "-I", "-c", "import sysconfig; p = sysconfig.get_paths(); "
                          "print(p['purelib']); print(p['platlib'])"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"cannot ask {python} for its site-packages: {out.stderr.strip()}")
    return out.stdout.split()


def _ws_reply(ws, rid, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no WebSocket reply to request {rid}")
        msg = json.loads(ws.recv(timeout=remaining))
        if msg.get("id") == rid:
            return msg


def _write_peer_events(peer: str, count: int, root: str) -> None:
    """`count` message.create events (plus the author's agent.register) as another clone writes them."""
    sys.path.insert(0, root)
    from thrum.events import encode_line, format_ns, new_id, now_ns

    origin = "d_benchpeer0000"
    agent = "bench_peer"
    stamp = format_ns(now_ns())
    with open(os.path.join(peer, "events.jsonl"), "ab") as f:
        f.write(encode_line({"type": "agent.register", "agent_id": agent, "kind": "agent", "name": agent,
                             "role": "tester", "module": "sync", "event_id": new_id("evt"), "timestamp": stamp,
                             "v": 1, "origin_daemon": origin}))
    os.makedirs(os.path.join(peer, "messages"), exist_ok=True)
    with open(os.path.join(peer, "messages", agent + ".jsonl"), "ab") as f:
        for i in range(count):
            f.write(encode_line({"type": "message.create", "message_id": new_id("msg"), "agent_id": agent,
                                 "session_id": "", "body": {"format": "markdown", "content": f"remote {i}"},
                                 "event_id": new_id("evt"), "timestamp": format_ns(now_ns()), "v": 1,
                                 "origin_daemon": origin}))


def _send_worker(sock_path: str, params: dict, n: int, warm: int, barrier, queue, root: str) -> None:
    """One concurrent sender (a separate process, so the bench's GIL does not cap the total)."""
    out = {"agent": params.get("caller_agent_id"), "t0": 0.0, "t1": 0.0, "n": 0, "errors": 0, "error": ""}
    try:
        sys.path.insert(0, root)
        from thrum.rpc import Client, RPCError

        c = Client(sock_path, timeout=30).connect()
        for _ in range(warm):
            c.call("message.send", params)
        barrier.wait(timeout=120)
        errors = 0
        t0 = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes
        for _ in range(n):
            try:
                c.call("message.send", params)
            except RPCError:
                errors += 1
        out.update(t0=t0, t1=time.monotonic(), n=n, errors=errors)
        c.close()
    except BaseException as exc:  # report, and release the others from the barrier
        out["error"] = f"{type(exc).__name__}: {exc}"
        try:
            barrier.abort()
        except Exception:
            pass
    queue.put(out)


def _kill(pid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.02)
        if not pid_alive(pid):
            return


def _reap(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


class SetupError(Exception):
    """The benchmark cannot run (e.g. the fixture is missing)."""


# -- running and reporting --------------------------------------------------------------------

def run(b: Bench) -> None:
    a = b.args
    if b.group_wanted("ws"):
        _require_websockets()
    log(f"setting up in {b.tmp or tempfile.gettempdir()} …")
    b.setup()
    log(f"dataset: {b.dataset}")
    if b.group_wanted("rebuild"):
        log("rebuild …")
        guarded(b, ["rebuild", "rss_rebuild"], b.bench_rebuild)
    if b.group_wanted("startup"):
        log("daemon start-up …")
        guarded(b, "daemon_ready", b.bench_startup)
    if a.profile_daemon:
        os.makedirs(a.profile_daemon, exist_ok=True)
        b.start_profiled_daemon(os.path.join(os.path.abspath(a.profile_daemon), "daemon.prof"))
        cli_wall = None
    else:
        cli_wall = b.start_daemon()
    b.start_sessions()
    if cli_wall is not None:
        b.conditions["`thrum daemon start` wall"] = f"{cli_wall:.2f} s (spawn, poll health, exit)"
    if b.group_wanted("list"):
        log("message.list …")
        guarded(b, ["list_inbox", "list_inbox_unread", "list_all"], b.bench_list)
    if b.group_wanted("cli"):
        log("CLI …")
        guarded(b, ["cli_send", "cli_inbox", "cli_status"], b.bench_cli)
    if b.group_wanted("hook"):
        log("hook with nothing to deliver …")
        guarded(b, "hook_idle", b.bench_hook)
    if b.row_wanted("rss_10k"):
        guarded(b, "rss_10k", lambda: b.bench_rss("rss_10k"))
    if b.group_wanted("ws"):
        log("WebSocket push …")
        guarded(b, "ws_notify", b.bench_ws)
    if b.group_wanted("search"):
        log("full-text search …")
        guarded(b, "search_two_words", b.bench_search)
    if b.group_wanted("send"):
        log("message.send throughput …")
        guarded(b, ["send_sequential", "send_pipelined", "send_concurrent10"], b.bench_send)
    if b.row_wanted("rss_after_sends"):
        guarded(b, "rss_after_sends", lambda: b.bench_rss("rss_after_sends"))
    if b.group_wanted("sync") and not a.profile_daemon:
        log("sync merge …")
        guarded(b, "sync_merge_10k", b.bench_sync)
    if b.group_wanted("sync_scale") and not a.profile_daemon:
        log("sync merge of a peer's remote events into a copy of the repository …")
        guarded(b, ["sync_merge_100k_at_1m", "rss_after_merge"], b.bench_sync_scale)
    for row in b.rows.values():
        if row.status == "not run" and not b.row_wanted(row.name):
            row.mark("skipped", "not selected by --only")


def _require_websockets() -> None:
    """ws_notify needs a real WebSocket client in this interpreter; skipping the row would hide a target."""
    try:
        import websockets.sync.client  # noqa: F401
    except ImportError:
        raise SetupError(
            f"the ws_notify row needs the websockets package in the interpreter running the bench "
            f"({sys.executable}); install it with: {sys.executable} -m pip install 'websockets>=13' "
            f"(or leave the row out with --only)") from None


def guarded(b: Bench, names, fn) -> None:
    names = [names] if isinstance(names, str) else names
    try:
        fn()
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        log(f"{', '.join(names)} failed: {text}")
        if b.args.verbose:
            traceback.print_exc()
        for name in names:
            if b.rows[name].status == "not run":
                b.rows[name].mark("error", text[:300])


def collect_conditions(b: Bench) -> dict:
    c = {}
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        c["thrum"] = f"{ROOT} @ {head}{' (uncommitted changes)' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        c["thrum"] = ROOT
    c["machine"] = (f"{os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} {platform.release()}, "
                    f"Python {platform.python_version()} ({PY})")
    c["load average (1/5/15 min)"] = f"before {b.load_before}, after {loadavg()}"
    if b.tmp:
        c["temp dir"] = f"{b.tmp} on {fs_type(b.tmp)} (fsync is real unless tmpfs)"
    c["dataset"] = b.dataset or "?"
    if b.args.cli_env == "venv":
        c["CLI"] = ("thrum/ copied into a fresh venv's site-packages (no system site-packages, like pipx) and "
                    "byte-compiled (compileall); run through a pip-style console script; every PYTHON* variable "
                    "unset, so PYTHONDONTWRITEBYTECODE is off and the .pyc files are used")
    else:
        c["CLI"] = ("byte-compiled copy of thrum/ (compileall) on PYTHONPATH of the base interpreter "
                    f"({PY}, whose site-packages .pth files run at start-up); pip-style console script; "
                    "PYTHON* unset except PYTHONPATH")
    c["mode"] = "--quick (few iterations: smoke only, not for comparison)" if b.quick else "full"
    c["messages sent by the benchmark"] = str(b.sent)
    c.update(b.conditions)
    return c


def report(b: Bench, conditions: dict) -> str:
    lines = ["## thrum benchmark", ""]
    for key, value in conditions.items():
        lines.append(f"- **{key}**: {value}")
    lines += ["", "| name | measured | target | ok? | detail |", "|---|---|---|---|---|"]
    for row in b.rows.values():
        detail = (row.what + ("; " + row.detail if row.detail else "")).replace("|", "\\|")
        lines.append(f"| {row.name} | {row.measured_text()} | {row.target_text()} | {row.status} | {detail} |")
    return "\n".join(lines)


def cleanup(b: Bench) -> None:
    pids = {b.daemon_pid} if b.daemon_pid else set()
    if b.repo:
        pid = b.pid_from_file()
        if pid:
            pids.add(pid)
    for proc in b.children:
        if proc.poll() is None:
            pids.add(proc.pid)
    for pid in pids:
        if pid and pid_alive(pid):
            _kill(pid)
    for proc in b.children:
        if proc.poll() is None:
            _reap(proc)
    if b.tmp and os.path.isdir(b.tmp):
        if b.args.keep:
            log(f"kept {b.tmp}")
        else:
            shutil.rmtree(b.tmp, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fixture", help=f"the Go fixture tarball (default: {default_fixture()})")
    p.add_argument("--generate", type=int, metavar="N", default=0,
                   help="use a generated dataset of N messages (bench/generate.py) instead of the fixture")
    p.add_argument("--agents", type=int, default=50, help="agents in a generated dataset (default 50)")
    p.add_argument("--repo", help="benchmark this repository (e.g. a generated one kept with --keep) in place")
    p.add_argument("--quick", action="store_true", help="few iterations (a smoke run; numbers are rough)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    groups = sorted({r.group for r in make_rows()})
    p.add_argument("--only", metavar="NAME,...",
                   help=f"only these groups or rows (groups: {', '.join(groups)}); the others print as skipped")
    p.add_argument("--cli-env", choices=("venv", "system"), default="venv",
                   help="how the CLI is installed: a fresh venv like pipx (default) or this interpreter + PYTHONPATH")
    p.add_argument("--tmpdir", help="where to create the temp dir (its filesystem decides what fsync costs)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (repo, daemon logs)")
    p.add_argument("--profile-daemon", metavar="DIR",
                   help="run the benchmarked daemon under cProfile and write DIR/daemon.prof and DIR/daemon.txt")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed or a row errored")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks for failed rows")
    args = p.parse_args(argv)
    known = {r.name for r in make_rows()} | set(groups)
    unknown = set(filter(None, (args.only or "").split(","))) - known
    if unknown:
        p.error(f"unknown --only name(s): {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, ROOT)  # the bench's own client code comes from this checkout
    b = Bench(args)

    code = run_guarded(b, args, run, "the benchmark could not complete its setup")
    if code == 1 and not any(r.status not in ("not run",) for r in b.rows.values()):
        return code
    conditions = collect_conditions(b)
    text = report(b, conditions)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"conditions": conditions, "rows": [r.to_json() for r in b.rows.values()],
                       "completed": code == 0}, f, indent=2)
    if code == 0 and args.strict and any(r.status in ("MISS", "error") for r in b.rows.values()):
        code = 1
    return code


def run_guarded(b: "Bench", args, body, failure: str) -> int:
    """Run body(b); whatever happens, stop a profiled daemon (writing its profile) and clean up.

    Returns 0, 1 (a setup error or a crash, reported on stderr as `failure`) or 130 (interrupted,
    also by SIGTERM/SIGHUP, so that an interrupted run still removes its temp dir and daemon).
    """
    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    code = 0
    try:
        body(b)
    except SetupError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("Interrupted; cleaning up.", file=sys.stderr)
        code = 130
    except Exception:
        traceback.print_exc()
        print(f"Error: {failure} (see above).", file=sys.stderr)
        code = 1
    finally:
        try:
            if args.profile_daemon and b.daemon_pid:
                b.stop_daemon()
                _write_profile_summary(args.profile_daemon)
        except Exception as exc:
            log(f"writing the profile failed: {exc}")
        cleanup(b)
    return code


def _write_profile_summary(directory: str) -> None:
    import io
    import pstats

    prof = os.path.join(directory, "daemon.prof")
    if not os.path.exists(prof):
        log("no profile was written")
        return
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(40)
    stats.sort_stats("cumulative").print_stats(40)
    with open(os.path.join(directory, "daemon.txt"), "w") as f:
        f.write(out.getvalue())
    log(f"profile: {prof} and {os.path.join(directory, 'daemon.txt')}")


if __name__ == "__main__":
    sys.exit(main())
