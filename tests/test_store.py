"""The event store: durable append before projection, catch-up, rebuilds, torn and corrupt lines."""

import json
import os
import pty
import select
import sqlite3
import subprocess
import sys

import pytest

from conftest import ROOT, wait_for
from helpers import RawConn, log_lines, message_create_counts, register, settled_log_lines, table_rows
from thrum.events import encode_line, new_id, now_timestamp

PROJECTION_TABLES = ("agents", "sessions", "messages", "message_scopes", "message_refs", "message_reads",
                     "message_edits", "message_deliveries", "groups", "group_members", "work_contexts",
                     # the derived views (views.py): audience index, keysets and counters
                     "message_audience", "keysets", "keyset_keys", "audience_counts", "reader_counts", "scope_counts",
                     "scope_reads", "counters")


def _workload(t):
    """A bit of everything the projection holds."""
    register(t, "alice", "implementer", "auth")
    register(t, "bob", "reviewer", "auth")
    register(t, "carol", "planner", "ui")
    with t.client() as c:
        c.call("group.create", {"caller_agent_id": "alice", "name": "crew", "description": "the crew"})
        c.call("group.member.add", {"caller_agent_id": "alice", "group": "crew", "member_type": "agent",
                                    "member_value": "bob"})
        c.call("group.member.add", {"caller_agent_id": "alice", "group": "crew", "member_type": "role",
                                    "member_value": "planner"})
        c.call("group.create", {"caller_agent_id": "alice", "name": "gone"})
        c.call("group.delete", {"caller_agent_id": "alice", "name": "gone"})
        ids = []
        for i, to in enumerate(["@bob", "@crew", "@reviewer", "@everyone", None]):
            params = {"caller_agent_id": "alice", "content": f"m{i}", "scopes": [{"type": "module", "value": "auth"}]}
            if to:
                params["mentions"] = [to]
            ids.append(c.call("message.send", params)["message_id"])
        reply = c.call("message.send", {"caller_agent_id": "bob", "content": "re", "reply_to": ids[0],
                                        "priority": "high", "refs": [{"type": "ticket", "value": "42"}]})
        c.call("message.edit", {"caller_agent_id": "alice", "message_id": ids[1], "content": "m1 edited"})
        c.call("message.delete", {"caller_agent_id": "alice", "message_id": ids[2], "reason": "oops"})
        c.call("message.markRead", {"caller_agent_id": "bob", "message_ids": ids[:2]})
        c.call("message.markRead", {"caller_agent_id": "alice", "message_ids": [reply["message_id"]]})
        c.call("message.deliver", {"caller_agent_id": "carol", "via": "test", "backlog": True})
        c.call("message.markDelivered", {"caller_agent_id": "bob", "message_ids": ids[3:5]})
        c.call("session.setIntent", {"caller_agent_id": "carol", "intent": "planning"})
        c.call("session.setTask", {"caller_agent_id": "carol", "current_task": "T-1"})
        sid = c.call("agent.whoami", {"caller_agent_id": "bob"})["session_id"]
        c.call("session.end", {"caller_agent_id": "bob", "session_id": sid})
    return ids


def _dump(db_path):
    return {table: table_rows(db_path, table) for table in PROJECTION_TABLES}


def test_send_is_in_the_log_before_it_is_answered(agents):
    t = agents
    before = message_create_counts(t.sync_dir)
    with t.client() as c:
        mid = c.call("message.send", {"caller_agent_id": "alice", "content": "durable"})["message_id"]
        # The answer came back: the line is already in the file, complete and newline-terminated.
        raw = (t.sync_dir / "messages" / "alice.jsonl").read_bytes()
        assert raw.endswith(b"\n")
        assert message_create_counts(t.sync_dir)[mid] == 1
        assert c.call("message.get", {"message_id": mid})["message"]["body"]["content"] == "durable"
    assert sum(message_create_counts(t.sync_dir).values()) == sum(before.values()) + 1


def test_invalid_requests_append_nothing(agents):
    t = agents
    before = settled_log_lines(t)
    with RawConn(t.socket) as c:
        bad = [
            ("message.send", {"caller_agent_id": "alice", "content": ""}),
            ("message.send", {"caller_agent_id": "alice", "content": "x", "mentions": ["@nobody_here"]}),
            ("message.send", {"caller_agent_id": "alice", "content": "x", "reply_to": "msg_missing"}),
            ("message.send", {"caller_agent_id": "alice", "content": "x", "format": "html"}),
            ("message.send", {"caller_agent_id": "ghost", "content": "x"}),
            ("group.create", {"name": "Bad Name!"}),
            ("agent.register", {"name": "../evil", "role": "x", "module": "y"}),
            ("session.start", {"agent_id": "ghost"}),
        ]
        for i, (method, params) in enumerate(bad):
            reply = c.call(method, params, rid=i)
            assert "error" in reply, (method, params, reply)
    assert log_lines(t.sync_dir) == before


def test_failed_log_write_is_an_error_and_leaves_no_trace(agents):
    t = agents
    # Make bob's (not yet existing) message file unwritable: a directory in its place.
    target = t.sync_dir / "messages" / "bob.jsonl"
    assert not target.exists()
    target.mkdir()
    try:
        with t.client() as c:
            total = c.call("message.list", {})["total"]
            with RawConn(t.socket) as raw:
                reply = raw.call("message.send", {"caller_agent_id": "bob", "content": "lost?"})
            assert reply["error"]["code"] == -32006
            assert c.call("message.list", {})["total"] == total
            # The daemon is unharmed: other authors still write.
            mid = c.call("message.send", {"caller_agent_id": "alice", "content": "still fine"})["message_id"]
            assert c.call("message.list", {})["total"] == total + 1
            assert message_create_counts(t.sync_dir)[mid] == 1
    finally:
        target.rmdir()


def test_catch_up_applies_lines_appended_while_stopped(agents):
    t = agents
    t.stop()
    mid = new_id("msg")
    message = {"type": "message.create", "event_id": new_id("evt"), "timestamp": now_timestamp(), "v": 1,
               "message_id": mid, "agent_id": "alice", "session_id": "", "refs": [{"type": "mention", "value": "bob"}],
               "body": {"format": "markdown", "content": "written by another process"}}
    group = {"type": "group.create", "event_id": new_id("evt"), "timestamp": now_timestamp(), "v": 1,
             "group_id": new_id("grp"), "name": "latecomers", "created_by": "alice"}
    with open(t.sync_dir / "messages" / "alice.jsonl", "ab") as f:
        f.write(encode_line(message))
    with open(t.sync_dir / "events.jsonl", "ab") as f:
        f.write(encode_line(group))
    # A file the projection has never seen (a new author) is picked up as well.
    other = dict(message, event_id=new_id("evt"), message_id=new_id("msg"), agent_id="zed",
                 body={"format": "plain", "content": "from a newcomer"})
    (t.sync_dir / "messages" / "zed.jsonl").write_bytes(encode_line(other))
    t.start()
    assert t.call("message.get", message_id=other["message_id"])["message"]["agent_id"] == "zed"
    got = t.call("message.get", message_id=mid)["message"]
    assert got["body"]["content"] == "written by another process"
    assert "latecomers" in [g["name"] for g in t.call("group.list")["groups"]]
    inbox = t.json("inbox", "--peek", name="bob")
    assert [m["message_id"] for m in inbox["messages"]] == [other["message_id"], mid]


def _assert_same(dump, snapshot):
    for table in PROJECTION_TABLES:
        assert dump[table] == snapshot[table], f"table {table} differs after the rebuild"


def test_lines_appended_after_a_crash_survive_recovery(agents):
    t = agents
    with t.client() as c:
        acked = [c.call("message.send", {"caller_agent_id": "alice", "content": f"a{i}"})["message_id"]
                 for i in range(3)]
    t.kill()  # usually before the idle checkpoint: the journal still holds the last lines
    extra = {"type": "message.create", "event_id": new_id("evt"), "timestamp": now_timestamp(), "v": 1,
             "message_id": new_id("msg"), "agent_id": "alice", "session_id": "",
             "body": {"format": "markdown", "content": "appended by another writer after the crash"}}
    path = t.sync_dir / "messages" / "alice.jsonl"
    with open(path, "ab") as f:
        f.write(encode_line(extra))
    t.start()
    counts = message_create_counts(t.sync_dir)
    assert {mid: counts[mid] for mid in acked + [extra["message_id"]]} == \
        {mid: 1 for mid in acked + [extra["message_id"]]}
    assert t.call("message.get", message_id=extra["message_id"])["message"]["agent_id"] == "alice"
    assert t.call("message.list")["total"] == 4


def _stop_and_snapshot(t):
    ids = _workload(t)
    t.stop()
    return ids, _dump(t.var / "messages.db")


def _remove_db(t):
    for suffix in ("", "-wal", "-shm"):
        p = t.var / ("messages.db" + suffix)
        if p.exists():
            p.unlink()


@pytest.mark.parametrize("damage", ["missing", "garbage", "old_schema"])
def test_projection_is_rebuilt_at_start(daemon, damage):
    t = daemon
    ids, snapshot = _stop_and_snapshot(t)
    db = t.var / "messages.db"
    if damage == "missing":
        _remove_db(t)
    elif damage == "garbage":
        _remove_db(t)
        db.write_bytes(b"this is not a database " * 500)
    else:
        # An older schema: also plant a row the log does not have, so a rebuild is visible.
        conn = sqlite3.connect(db)
        conn.execute("INSERT INTO agents(agent_id, registered_at, registered_ns) VALUES ('phantom', 'x', 0)")
        conn.execute("PRAGMA user_version=1")
        conn.commit()
        conn.close()
    t.start()
    agents = {a["agent_id"] for a in t.call("agent.list")["agents"]}
    assert agents == {"alice", "bob", "carol"}
    assert t.call("message.get", message_id=ids[1])["message"]["body"]["content"] == "m1 edited"
    t.stop()
    _assert_same(_dump(db), snapshot)
    log = (t.var / "daemon.log").read_text()
    assert "rebuilding the projection" in log


def test_projection_equals_a_rebuild(daemon):
    t = daemon
    proc = t.run("migrate", "--rebuild", check=False)  # never under a running daemon
    assert proc.returncode == 1 and "daemon is running" in proc.stderr
    _, snapshot = _stop_and_snapshot(t)
    out = t.json("migrate", "--rebuild")
    assert out["messages"] == 6 and out["agents"] == 3 and out["bad_lines"] == 0
    _assert_same(_dump(t.var / "messages.db"), snapshot)


def test_torn_last_line_is_quarantined_and_nothing_else_is_lost(agents):
    t = agents
    with t.client() as c:
        kept = [c.call("message.send", {"caller_agent_id": "alice", "content": f"k{i}"})["message_id"]
                for i in range(3)]
    t.stop()
    path = t.sync_dir / "messages" / "alice.jsonl"
    good = path.read_bytes()
    torn = b'{"agent_id":"alice","body":{"content":"half a li'
    with open(path, "ab") as f:
        f.write(torn)
    t.start()
    assert path.read_bytes() == good
    quarantined = list((t.var / "quarantine").iterdir())
    assert [q.read_bytes() for q in quarantined] == [torn]
    with t.client() as c:
        for mid in kept:
            assert c.call("message.get", {"message_id": mid})["message"]["agent_id"] == "alice"
        new = c.call("message.send", {"caller_agent_id": "alice", "content": "after"})["message_id"]
    assert path.read_bytes().startswith(good)
    assert message_create_counts(t.sync_dir)[new] == 1
    assert "bad_lines" not in t.call("health")


def test_corrupt_complete_line_is_kept_skipped_and_reported(agents):
    t = agents
    mid = t.json("send", "before", name="alice")["message_id"]
    t.stop()
    junk = b'{"type":"message.create","message_id": oops}\n'
    events = t.sync_dir / "events.jsonl"
    with open(events, "ab") as f:
        f.write(junk)
    t.start()
    health = t.call("health")
    assert health["bad_lines"] == 1
    assert junk in events.read_bytes()  # kept, never dropped
    assert t.call("message.get", message_id=mid)["message"]["body"]["content"] == "before"
    t.json("send", "after", name="alice")
    assert t.call("message.list")["total"] == 2
    t.stop()
    out = t.json("migrate", "--rebuild")
    assert out["bad_lines"] == 1 and out["messages"] == 2
    assert junk in events.read_bytes()


def test_rebuild_progress_callback(daemon):
    t = daemon
    _workload(t)
    t.stop()
    from thrum import migrate
    from thrum.paths import resolve

    calls = []
    result = migrate.run(resolve(str(t.repo)), rebuild_only=True,
                         progress=lambda stage, done, total: calls.append((stage, done, total)))
    assert result["messages"] == 6
    reading = [c for c in calls if c[0] == "reading the log (KiB)"]
    assert reading and reading[-1][1] == reading[-1][2] > 0
    assert [c[1] for c in reading] == sorted(c[1] for c in reading)
    indexing = [c for c in calls if c[0] == "indexing"]
    assert indexing and indexing[-1][1] == indexing[-1][2] > 1


def test_migrate_rebuild_prints_progress_on_a_terminal(daemon):
    t = daemon
    _workload(t)
    t.stop()
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "thrum", "migrate", "--rebuild"], cwd=t.repo, env=t.env,
                                stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
        os.close(slave)
        slave = None
        out, _ = proc.communicate(timeout=60)
        err = b""
        while select.select([master], [], [], 0)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            err += chunk
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 0, (out, err)
    assert b"reading the log (KiB): " in err and b"indexing: " in err
    assert b"Database rebuilt from the log" in out
    # Not a terminal: no progress noise.
    plain = t.run("migrate", "--rebuild")
    assert "applying" not in plain.stderr


def test_recovery_after_power_loss_keeps_other_writers_lines(tmp_path):
    from thrum.store import Store

    var = tmp_path / "var"
    var.mkdir()
    store = Store(str(tmp_path / "sync"), str(var / "messages.db"), str(var), "d_test")
    store.open()
    for i in range(3):
        store.append("message.create", {"message_id": f"msg_{i}", "agent_id": "alice",
                                        "body": {"format": "markdown", "content": f"m{i}"}})
    store.commit()  # acknowledged: in the journal (fdatasync), the file itself not fsynced yet
    path = tmp_path / "sync" / "messages" / "alice.jsonl"
    acknowledged = path.read_bytes()
    # Power loss: the file's unsynced blocks come back as zeros; then another writer appends.
    foreign = encode_line({"type": "message.create", "event_id": "evt_FOREIGN", "timestamp": now_timestamp(),
                           "message_id": "msg_foreign", "agent_id": "alice", "body": {"content": "x"}})
    path.write_bytes(b"\0" * 40 + b"\n" + foreign)
    store.db.close()
    store.db = None
    store.log._fds.clear()  # no checkpoint: the process is gone

    again = Store(str(tmp_path / "sync"), str(var / "messages.db"), str(var), "d_test")
    again.open()
    assert path.read_bytes() == acknowledged + foreign
    assert again.stats()["messages"] == 4
    assert any(q.name.endswith(".recovered") for q in (var / "quarantine").iterdir())
    again.close()


def test_a_rebuild_that_fails_while_indexing_leaves_no_projection_and_the_next_open_rebuilds(tmp_path):
    """The old database goes while the new one is indexed (nothing reads it then): a failure there must not
    leave the old one half-removed or a half-built one in its place, and the next open rebuilds it all."""
    from thrum.store import Store

    var = tmp_path / "var"
    var.mkdir()
    db = var / "messages.db"

    def make(fail: bool) -> Store:
        store = Store(str(tmp_path / "sync"), str(db), str(var), "d_test")

        def derive(conn):
            if fail:
                raise RuntimeError("disk full")
        store.extend("", {}, derive=derive)
        return store
    store = make(False)
    store.open()
    for i in range(5):
        store.append("message.create", {"message_id": f"msg_{i}", "agent_id": "alice",
                                        "body": {"format": "markdown", "content": f"m{i}"}})
    store.commit()
    store.close()

    broken = make(True)
    with pytest.raises(RuntimeError, match="disk full"):
        broken.rebuild()
    assert not db.exists() and not (var / "messages.db-wal").exists()
    assert (var / "messages.db.rebuild").exists()  # the next rebuild starts it again
    broken.log.close()

    again = make(False)
    again.open()
    assert again.stats()["messages"] == 5
    assert not (var / "messages.db.rebuild").exists()
    again.close()


def test_a_large_database_is_checked_in_full_only_after_a_request_met_damage(tmp_path, monkeypatch):
    """Above 64 MiB a start checks the size and the small tables only (a full check costs seconds at 1M);
    a database error in a request (`distrust`) makes the next start check everything and rebuild."""
    from thrum import store as store_mod

    monkeypatch.setattr(store_mod, "_FULL_CHECK_BYTES", 0)  # every database counts as large here
    sync_dir, var = tmp_path / "log", tmp_path / "var"
    var.mkdir()

    def open_store():
        s = store_mod.Store(str(sync_dir), str(var / "messages.db"), str(var), "d_test")
        return s, s.open()

    s, _ = open_store()
    s.append("agent.register", {"agent_id": "alice", "name": "alice", "role": "implementer"})
    for i in range(300):
        s.append("message.create", {"message_id": f"msg_{i:04d}", "agent_id": "alice",
                                    "body": {"format": "markdown", "content": "x" * 500}})
    s.commit()
    s.close()
    db = var / "messages.db"
    conn = sqlite3.connect(db)
    page = conn.execute("SELECT pageno FROM dbstat WHERE name='messages' AND pagetype='leaf' LIMIT 1 OFFSET 5")\
        .fetchone()[0]
    conn.close()
    with open(db, "r+b") as f:  # zero a leaf of the messages table: the cheap checks miss it
        f.seek((page - 1) * 4096)
        f.write(b"\0" * 4096)
    s, opened = open_store()
    assert opened["rebuilt"] == ""
    s.distrust()
    s.close()
    s, opened = open_store()
    assert "integrity check failed" in opened["rebuilt"] or "malformed" in opened["rebuilt"]
    assert s.db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 300
    assert not (var / "projection.suspect").exists()
    s.close()


def test_a_large_wal_is_checkpointed_by_a_thread_while_writes_go_on(tmp_path, monkeypatch):
    import shutil
    import threading

    from thrum import store as store_mod
    from thrum.store import Store

    var = tmp_path / "var"
    var.mkdir()
    store = Store(str(tmp_path / "sync"), str(var / "messages.db"), str(var), "d_test")
    store.open()
    store.maintain()  # the rebuild's WAL, checkpointed on the loop: it is small

    def send(i: int) -> None:
        store.append("message.create", {"message_id": f"msg_{i:04d}", "agent_id": "alice",
                                        "body": {"format": "markdown", "content": f"m{i} " + "x" * 2000}})
        store.commit()
    for i in range(200):
        send(i)
    ran_in: list[str] = []
    real = store_mod._checkpoint

    started = threading.Event()

    def checkpoint(path: str) -> None:
        ran_in.append(threading.current_thread().name)
        started.set()
        real(path)
    monkeypatch.setattr(store_mod, "_checkpoint", checkpoint)
    monkeypatch.setattr(store_mod, "BACKGROUND_CHECKPOINT_BYTES", 64 << 10)
    assert os.path.getsize(var / "messages.db-wal") > 64 << 10
    def in_the_file_alone() -> int:
        alone = tmp_path / "alone.db"  # the database file without its WAL: what checkpoints copied
        shutil.copy(var / "messages.db", alone)
        copy = sqlite3.connect(alone)
        try:
            return copy.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        finally:
            copy.close()
            alone.unlink()

    store.maintain()  # returns at once: the loop goes on
    assert started.wait(10)
    send(1000)  # a write while the copy may still run (PASSIVE: neither waits for the other)
    # A PASSIVE copy stops short of frames a concurrent transaction might still read; the next
    # upkeep (every half second after writes) copies the rest, one copy at a time.
    for _ in range(50):
        store._join_checkpointer()
        if in_the_file_alone() >= 200:
            break
        store.maintain()
    assert in_the_file_alone() >= 200
    assert ran_in and set(ran_in) == {"thrum-wal-checkpoint"}  # never on the calling thread
    assert store.stats()["messages"] == 201
    assert store.db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    store.close()
