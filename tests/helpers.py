"""Small helpers shared by the core test files (no fixtures here: those live in conftest.py)."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections import Counter
from pathlib import Path

from conftest import FACTOR, wait_for


class RawConn:
    """A plain Unix-socket connection speaking NDJSON, for framing and error-code tests."""

    def __init__(self, path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout * FACTOR)
        self.sock.connect(str(path))
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, obj) -> None:
        self.send(json.dumps(obj).encode() + b"\n")

    def recv(self) -> dict:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the daemon closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, method: str, params=None, rid=1) -> dict:
        req = {"jsonrpc": "2.0", "method": method, "id": rid}
        if params is not None:
            req["params"] = params
        self.request(req)
        return self.recv()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def log_lines(sync_dir) -> list[tuple[str, bytes]]:
    """Every line of the event log: (relative file, raw line without the newline)."""
    sync_dir = Path(sync_dir)
    out = []
    files = [sync_dir / "events.jsonl"] + sorted((sync_dir / "messages").glob("*.jsonl"))
    for f in files:
        if f.is_file():
            rel = str(f.relative_to(sync_dir))
            out += [(rel, line) for line in f.read_bytes().split(b"\n") if line]
    return out


def log_events(sync_dir) -> list[tuple[str, dict]]:
    out = []
    for rel, line in log_lines(sync_dir):
        try:
            out.append((rel, json.loads(line)))
        except ValueError:
            pass
    return out


def message_create_counts(sync_dir) -> Counter:
    """message_id -> number of message.create lines for it in the log."""
    return Counter(e["message_id"] for _, e in log_events(sync_dir) if e.get("type") == "message.create")


def table_rows(db_path, table: str, exclude=()) -> list[tuple]:
    """All rows of a projection table, sorted, without the excluded columns."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})") if r[1] not in exclude]
        if table == "message_audience":  # seq is the messages rowid, which differs between a clone and a rebuild
            cols = [c if c != "seq" else "(SELECT message_id FROM messages WHERE rowid = seq)" for c in cols]
        rows = conn.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall()
    finally:
        conn.close()
    return sorted(rows, key=repr)


def register(thrum, name: str, role: str, module: str = "core", session: bool = True) -> str | None:
    """Register an agent (and start its session) over RPC: faster than the CLI for setup."""
    with thrum.client() as c:
        c.call("agent.register", {"name": name, "role": role, "module": module})
        if session:
            return c.call("session.start", {"agent_id": name, "caller_agent_id": name})["session_id"]
    return None


def mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def assert_log_clean(thrum) -> None:
    """The daemon logged no error: a handler that failed inside would show up here."""
    text = (thrum.var / "daemon.log").read_text()
    bad = [line for line in text.splitlines() if " ERROR " in line or line.startswith("Traceback")]
    assert bad == [], "\n".join(bad)


def settled_log_lines(thrum, agents=("alice", "bob"), timeout: float = 30.0) -> list[tuple[str, bytes]]:
    """The log once every session started by the fixture has had its git context refreshed: each session
    start is followed a moment later by an agent.update the daemon writes on its own."""
    def refreshed():
        return {json.loads(line)["agent_id"] for _, line in log_lines(thrum.sync_dir)
                if b'"type":"agent.update"' in line and b'"git_updated_at"' in line}
    wait_for(lambda: refreshed() >= set(agents), timeout, what="the sessions' git contexts")
    return log_lines(thrum.sync_dir)
