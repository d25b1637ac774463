"""`thrum migrate`: bring older or Go-written layouts into the sync worktree, then rebuild.

Sources, all optional: JSONL kept directly in `.thrum/` (the Go fixture layout:
`events.jsonl`, `messages/*.jsonl`), a monolithic `messages.jsonl` (Go before
sharding), and read markers from a Go `messages.db` (they were database-only there;
here they become `message.read` events). Lines are unioned by `event_id`, so running
migrate twice imports nothing twice. Imported source files are renamed `*.migrated`.

Runs only while no daemon runs: it takes the daemon's lock for its whole duration.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import sys
import time

from thrum.events import (
    EventError, author_file_name, decode_line, derived_event_id, deterministic_ulid, encode_line,
    parse_timestamp_ns,
)
from thrum.store import EVENTS_FILE, MESSAGES_DIR

__all__ = ["run", "union_import", "import_all", "needs_import", "MigrateError", "terminal_progress"]

# Types only the Go test generator wrote; they are imported under their real names.
_FIXTURE_TYPES = {"session.start": "agent.session.start", "session.end": "agent.session.end"}


class MigrateError(Exception):
    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def terminal_progress(stage: str, done: int, total: int) -> None:
    end = "\n" if done >= total else ""
    sys.stderr.write(f"\r  {stage}: {done}/{total}{' ' * 10}{end}")
    sys.stderr.flush()


def _line_files(root: str) -> list[str]:
    out = []
    for name in (EVENTS_FILE, "messages.jsonl"):
        if os.path.isfile(os.path.join(root, name)):
            out.append(name)
    mdir = os.path.join(root, MESSAGES_DIR)
    if os.path.isdir(mdir):
        out += [f"{MESSAGES_DIR}/{n}" for n in sorted(os.listdir(mdir)) if n.endswith(".jsonl")]
    return out


def _existing(dst: str) -> tuple[set[str], dict[str, str]]:
    """Event ids already in the destination, and message_id -> author for routing edits."""
    ids: set[str] = set()
    authors: dict[str, str] = {}
    for rel in _line_files(dst):
        with open(os.path.join(dst, rel), "rb") as f:
            for line in f:
                try:
                    event = decode_line(line)
                except EventError:
                    continue
                ids.add(event.get("event_id") or derived_event_id(event))
                if event["type"] == "message.create" and event.get("message_id"):
                    authors[event["message_id"]] = event.get("agent_id", "")
    return ids, authors


def union_import(src: str, dst: str, *, quarantine_dir: str | None = None) -> dict:
    """Append to `dst` every event of `src` whose event_id `dst` lacks: {added, skipped, bad}."""
    known, authors = _existing(dst)
    pending: dict[str, list[bytes]] = {}
    bad: list[bytes] = []
    parsed = []
    skipped = 0
    for rel in _line_files(src):
        stem = os.path.basename(rel)[:-6]
        with open(os.path.join(src, rel), "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    event = decode_line(line)
                except EventError:
                    bad.append(line if line.endswith(b"\n") else line + b"\n")
                    continue
                parsed.append((rel, stem, line, event))
                if event["type"] == "message.create" and event.get("message_id"):
                    authors.setdefault(event["message_id"], event.get("agent_id", ""))
    for rel, stem, line, event in parsed:
        changed = False
        if event["type"] in _FIXTURE_TYPES:
            event["type"] = _FIXTURE_TYPES[event["type"]]
            changed = True
        if not isinstance(event.get("event_id"), str) or not event["event_id"]:
            event["event_id"] = derived_event_id(event)
            event.setdefault("v", 1)
            changed = True
        if event["event_id"] in known:
            skipped += 1
            continue
        known.add(event["event_id"])
        if event["type"].startswith("message."):
            author = event.get("agent_id") if event["type"] in ("message.create", "message.read") else \
                authors.get(event.get("message_id", ""), "")
            try:
                target = f"{MESSAGES_DIR}/{author_file_name(author or stem)}.jsonl"
            except EventError:
                bad.append(line if line.endswith(b"\n") else line + b"\n")
                continue
        else:
            target = EVENTS_FILE
        data = encode_line(event) if changed else (line if line.endswith(b"\n") else line + b"\n")
        pending.setdefault(target, []).append(data)
    for target, lines in pending.items():
        _append(os.path.join(dst, target), lines)
    if bad:
        qdir = quarantine_dir or os.path.join(dst, "..")
        os.makedirs(qdir, exist_ok=True)
        _append(os.path.join(qdir, f"migrate-unparseable.{int(time.time())}.jsonl"), bad)
    return {"added": sum(len(v) for v in pending.values()), "skipped": skipped, "bad": len(bad)}


def _append(path: str, lines: list[bytes]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "ab") as f:
        f.write(b"".join(lines))
        f.flush()
        os.fsync(f.fileno())


def _go_reads(db_path: str, dst: str) -> int:
    """Turn a Go database's read markers into message.read events (deterministic ids: idempotent)."""
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "schema_version" not in tables or "message_reads" not in tables:
            conn.close()
            return 0
        rows = conn.execute("SELECT agent_id, message_id, MAX(read_at) FROM message_reads"
                            " WHERE agent_id != '' GROUP BY agent_id, message_id ORDER BY agent_id, message_id")
        by_agent: dict[str, list[tuple[str, str]]] = {}
        for agent_id, message_id, read_at in rows:
            by_agent.setdefault(agent_id, []).append((message_id, read_at or ""))
        conn.close()
    except sqlite3.DatabaseError:
        return 0
    known, _ = _existing(dst)
    count = 0
    for agent_id, reads in by_agent.items():
        try:
            target = os.path.join(dst, MESSAGES_DIR, author_file_name(agent_id) + ".jsonl")
        except EventError:
            continue
        lines = []
        for i in range(0, len(reads), 500):
            chunk = reads[i:i + 500]
            stamp = max(r[1] for r in chunk) or "2026-01-01T00:00:00Z"
            try:
                ms = parse_timestamp_ns(stamp) // 1_000_000
            except EventError:
                ms = 0
            eid = "evt_" + deterministic_ulid(ms, f"go-reads:{agent_id}:{chunk[0][0]}:{len(chunk)}".encode())
            if eid in known:
                continue
            lines.append(encode_line({"type": "message.read", "agent_id": agent_id, "event_id": eid,
                                      "message_ids": [r[0] for r in chunk], "timestamp": stamp, "v": 1}))
            count += len(chunk)
        if lines:
            _append(target, lines)
    return count


def run(paths, *, rebuild_only: bool = False, progress=None) -> dict:
    from thrum import sync
    from thrum.components import LOCK_NAME, make_store

    os.makedirs(paths.var, mode=0o700, exist_ok=True)
    lock_fd = os.open(paths.var_file(LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MigrateError("the daemon is running for this repository",
                               "Stop it with 'thrum daemon stop', run migrate, then start it again") from None
        try:
            info = sync.repo_info(paths.main_repo)
            sync.ensure_sync_branch(info.toplevel)
            sync.ensure_worktree(info.toplevel, info.sync_dir)
        except sync.GitError as exc:
            raise MigrateError(f"cannot prepare the sync branch: {exc}") from None
        store = make_store(paths, info.sync_dir)
        store.log.recover()  # a crashed daemon's journal first, before anything else writes
        store.log.repair_torn_tails()
        result: dict = {}
        if not rebuild_only:
            result.update(import_all(paths, info.sync_dir))
        started = time.monotonic()
        events = store.rebuild(progress=progress)
        stats = store.stats()
        from thrum.search import pending_count

        not_indexed = pending_count(store.db)  # a large rebuild leaves the search index to the daemon
        store.close()
        result.update({"events": events, "messages": stats["messages"], "agents": stats["agents"],
                       "bad_lines": stats["bad_lines"], "seconds": time.monotonic() - started,
                       "sync_worktree": info.sync_dir, "search_not_indexed": not_indexed})
        return result
    finally:
        os.close(lock_fd)


def needs_import(paths, sync_dir: str) -> bool:
    """True when an older or Go-written layout waits to be imported (checked at every daemon start)."""
    for root in (paths.thrum, os.path.join(paths.thrum, "sync")):
        if _line_files(root) and os.path.realpath(root) != os.path.realpath(sync_dir):
            return True
    return os.path.isfile(os.path.join(sync_dir, "messages.jsonl")) or (
        os.path.isfile(paths.db) and _is_go_db(paths.db))


def import_all(paths, sync_dir: str) -> dict:
    """Import every older source into the sync worktree. The caller holds the daemon lock."""
    sources = []
    totals = {"added": 0, "skipped": 0, "bad": 0}
    qdir = os.path.join(paths.var, "quarantine")

    def add(counts: dict) -> None:
        for key in totals:
            totals[key] += counts[key]
    for root in (paths.thrum, os.path.join(paths.thrum, "sync")):
        files = _line_files(root)
        if not files or os.path.realpath(root) == os.path.realpath(sync_dir):
            continue
        add(union_import(root, sync_dir, quarantine_dir=qdir))
        for rel in files:
            os.replace(os.path.join(root, rel), os.path.join(root, rel) + ".migrated")
        sources.append(root)
    # Go before v7 kept every event in one messages.jsonl inside the sync worktree.
    legacy = os.path.join(sync_dir, "messages.jsonl")
    if os.path.isfile(legacy):
        tmp = os.path.join(paths.var, "legacy-import")
        os.makedirs(tmp, exist_ok=True)
        os.replace(legacy, os.path.join(tmp, "messages.jsonl"))
        add(union_import(tmp, sync_dir, quarantine_dir=qdir))
        os.replace(os.path.join(tmp, "messages.jsonl"), legacy + ".v6.bak")
        os.rmdir(tmp)
        sources.append(legacy)
    reads = 0
    if os.path.isfile(paths.db) and _is_go_db(paths.db):
        reads = _go_reads(paths.db, sync_dir)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(paths.db + suffix):
                os.replace(paths.db + suffix, paths.db + ".go-backup" + suffix)
        sources.append(paths.db)
    return {"imported": totals["added"], "skipped": totals["skipped"], "unparseable": totals["bad"],
            "reads": reads, "sources": sources}


def _is_go_db(path: str) -> bool:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT 1 FROM sqlite_master WHERE name='schema_version'").fetchone() is not None
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return False
