"""Fault injection: crashes, torn and corrupt files, a broken database, full and read-only disks,
git failing mid-sync, racing daemon starts. Each test tries to break one promise of
docs/guarantees.md and then checks that nothing acknowledged was lost or duplicated.

Mounts (tmpfs, read-only bind mounts) need root; those tests skip with the reason
otherwise and always unmount in `finally`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from conftest import FACTOR, ROOT, Thrum, pid_alive, wait_for
from helpers import RawConn, log_events, log_lines, message_create_counts, register, table_rows

# Tables of messages.db that a rebuild from the log must reproduce. Columns that
# docs/guarantees.md names local-only (heartbeats, git check times) are left out.
PROJECTION_TABLES = ("agents", "sessions", "messages", "message_scopes", "message_refs", "message_reads",
                     "message_edits", "groups", "group_members", "work_contexts", "applied", "bad_lines")
LOCAL_ONLY_COLUMNS = ("last_seen_at", "git_checked_at")


# -- helpers ------------------------------------------------------------------------------------

def _projection(db_path) -> dict:
    return {table: table_rows(db_path, table, exclude=LOCAL_ONLY_COLUMNS) for table in PROJECTION_TABLES}


def assert_projection_equals_a_rebuild(t: Thrum, tmp_path: Path) -> None:
    """Stop the daemon, rebuild a copy of .thrum/ from the same log, compare every table."""
    t.stop()
    copy = tmp_path / f"rebuild-{len(list(tmp_path.glob('rebuild-*')))}"
    shutil.copytree(t.repo / ".thrum" / "var", copy, ignore=shutil.ignore_patterns("thrum.sock", "quarantine"))
    live = _projection(t.var / "messages.db")
    from thrum.store import Store
    from thrum.daemon import make_store
    from thrum.paths import resolve

    store = make_store(resolve(str(t.repo)), str(t.sync_dir))
    assert isinstance(store, Store)
    store.db_path = str(copy / "messages.db")
    store.log.journal = None  # the daemon stopped cleanly: its journal is empty
    store.rebuild()
    store.close()
    rebuilt = _projection(copy / "messages.db")
    for table in PROJECTION_TABLES:
        assert live[table] == rebuilt[table], f"table {table} differs from a rebuild of the log"


def _mount_tmpfs(target: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(target)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")


def _umount(target: Path) -> None:
    # Lazy: a daemon that failed to stop must not leave the mount behind either.
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


def _remount(target: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(target)], check=True, capture_output=True)


@contextlib.contextmanager
def tmpfs_over(target: Path, size: str = "16m"):
    """A tmpfs mounted over `target` holding a copy of what was there; copied back at the end."""
    saved = target.parent / (target.name + ".saved")
    shutil.copytree(target, saved, symlinks=True)
    _mount_tmpfs(target, size)
    try:
        shutil.copytree(saved, target, symlinks=True, dirs_exist_ok=True)
        yield target
    finally:
        _umount(target)
        shutil.rmtree(saved, ignore_errors=True)


def fill(directory: Path) -> Path:
    """Fill the filesystem of `directory` until the kernel says ENOSPC; returns the filler file."""
    filler = directory / "filler"
    with open(filler, "wb") as f:
        chunk = b"\xee" * (1 << 16)
        for _ in range(1 << 16):  # bounded: at most 4 GiB, far more than any test tmpfs
            try:
                f.write(chunk)
                f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    # Bytes in Python's buffer may be lost with the failed flush; top up byte by byte.
    fd = os.open(filler, os.O_WRONLY | os.O_APPEND)
    try:
        for _ in range(1 << 16):
            os.write(fd, b"\xee" * 512)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def send(conn: RawConn, author: str, content: str, client_id: str | None = None, rid=1) -> dict:
    params = {"caller_agent_id": author, "content": content}
    if client_id:
        params["client_id"] = client_id
    return conn.call("message.send", params, rid=rid)


# -- 5. the database COMMIT fails after the log lines are durable ---------------------------------

def test_failed_database_commit_after_a_durable_log_write_is_not_an_error(agents, tmp_path):
    """The database lives on a tmpfs we fill: SQLite's COMMIT fails with SQLITE_FULL while the
    log (elsewhere) and the preallocated journal take the lines. The write is durable, so the
    caller gets success, and a retry with the same client_id can never duplicate it."""
    t = agents
    t.stop()  # a clean stop truncates the WAL: the next commit must grow it
    dbfs = tmp_path / "dbfs"
    dbfs.mkdir()
    _mount_tmpfs(dbfs, "4m")
    try:
        shutil.move(t.var / "messages.db", dbfs / "messages.db")
        for suffix in ("-wal", "-shm"):
            (t.var / f"messages.db{suffix}").unlink(missing_ok=True)
        (t.var / "messages.db").symlink_to(dbfs / "messages.db")
        t.start()
        filler = fill(dbfs)
        big = "x" * 30000  # more than any WAL slack left by the start-up
        with RawConn(t.socket) as c:
            first = send(c, "alice", big, client_id="cid-1", rid=1)
            assert "result" in first, f"a durable write was answered with an error: {first}"
            mid = first["result"]["message_id"]
            assert message_create_counts(t.sync_dir)[mid] == 1
            # Still full: a new write cannot be validated against a projection that lacks a
            # logged line, so it is refused before it logs anything.
            lines_before = log_lines(t.sync_dir)
            second = send(c, "alice", "refused while behind", client_id="cid-2", rid=2)
            assert second["error"]["code"] == -32006, second
            assert log_lines(t.sync_dir) == lines_before
            filler.unlink()
            retry = send(c, "alice", big, client_id="cid-1", rid=3)
            assert retry["result"]["message_id"] == mid
            got = c.call("message.get", {"message_id": mid}, rid=4)
            assert got["result"]["message"]["body"]["content"] == big
        per_client = Counter(e.get("client_id") for _, e in log_events(t.sync_dir) if e.get("type") == "message.create")
        assert per_client["cid-1"] == 1 and per_client["cid-2"] == 0
        assert "the database commit failed" in (t.var / "daemon.log").read_text()
        t.stop()
        (t.var / "messages.db").unlink()
        shutil.move(dbfs / "messages.db", t.var / "messages.db")
    finally:
        t.kill()
        _umount(dbfs)
    t.start()
    assert t.call("message.get", message_id=mid)["message"]["body"]["content"] == big
    assert_projection_equals_a_rebuild(t, tmp_path)
