"""One batch of requests in the daemon: sends run without a savepoint (Store.mark/undo_to), and a
request that fails after it wrote leaves nothing while the others of its batch are kept.

The daemon is built in-process on a stopped test repository (its store, no socket) and
`_run_batch` is fed request lines directly, so one batch is exactly the lines a test gives.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import message_create_counts
from test_faults import assert_projection_equals_a_rebuild


class _Conn:
    def __init__(self) -> None:
        from thrum.service import CallContext

        self.ctx = CallContext()
        self.replies: list[dict] = []

    def send(self, data: bytes) -> None:
        self.replies.append(json.loads(data))


def _line(rid, method: str, **params) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}).encode()


class _InProcess:
    """The daemon's store and service on the repository of `t` (which must be stopped)."""

    def __init__(self, t) -> None:
        from thrum.components import component_factories
        from thrum.daemon import Daemon
        from thrum.paths import resolve

        paths = resolve(str(t.repo)).for_daemon()
        self.daemon = Daemon(paths)
        self.daemon.components = [c for c in (f(paths) for f in component_factories()) if c is not None]
        self.daemon.acquire_lock()
        self.daemon.open_store()  # with the components' tables, as the daemon opens it
        self.daemon.components = []  # none started, none to stop
        self.store = self.daemon.store
        self.events: list[dict] = []
        self.daemon.event_listeners.append(self.events.extend)

    def batch(self, *lines: bytes) -> list[dict]:
        conn = _Conn()
        self.daemon._run_batch([(conn, line) for line in lines])
        return conn.replies

    def close(self) -> None:
        if self.daemon.lock_fd is not None:
            self.daemon.shutdown()


@pytest.fixture
def inproc(agents):
    agents.stop()
    d = _InProcess(agents)
    try:
        yield d
    finally:
        d.close()


def _fail_after_writing(store, content: str, *, also=None):
    """Make the message.create applier raise, after it wrote its rows, for messages with `content`."""
    real = store.projection.appliers["message.create"]

    def applier(event, ns):
        real(event, ns)
        if event.get("body", {}).get("content") == content:
            if also is not None:
                also()
            raise RuntimeError("injected failure after writing")

    store.projection.appliers["message.create"] = applier
    return real


def _contents(t) -> list[str]:
    return [m["body"]["content"] for m in t.call("message.list", page_size=100, sort_order="asc")["messages"]]


def test_a_send_failing_after_it_wrote_leaves_nothing_and_its_batch_is_kept(agents, inproc, tmp_path: Path):
    _fail_after_writing(inproc.store, "boom")
    replies = inproc.batch(
        _line(1, "message.send", caller_agent_id="alice", content="first", mentions=["@bob"]),
        _line(2, "message.send", caller_agent_id="alice", content="boom", mentions=["@bob"]),
        _line(3, "message.send", caller_agent_id="bob", content="", mentions=["@alice"]),  # invalid: before writing
        _line(4, "message.send", caller_agent_id="bob", content="third", mentions=["@alice"]),
        _line(5, "message.list", caller_agent_id="bob", for_agent="bob", unread=True))
    assert "result" in replies[0] and "result" in replies[3]
    assert replies[1]["error"]["code"] == -32603 and replies[2]["error"]["code"] == -32602
    listed = [m["body"]["content"] for m in replies[4]["result"]["messages"]]
    assert "first" in listed and "boom" not in listed
    assert [e["body"]["content"] for e in inproc.events if e["type"] == "message.create"] == ["first", "third"]
    inproc.close()
    agents.start()
    contents = _contents(agents)
    assert "first" in contents and "third" in contents and "boom" not in contents
    assert sum(1 for c in contents if c == "first") == 1
    assert_projection_equals_a_rebuild(agents, tmp_path)


def test_after_a_request_wrote_directly_sends_take_savepoints(agents, inproc, tmp_path: Path):
    """A write that is not only events (a delivery cursor moves) cannot be redone from events, so a
    send failing after it in the same batch is undone with a savepoint: the cursor move stays."""
    first = inproc.batch(_line(1, "message.send", caller_agent_id="alice", content="seen", mentions=["@bob"]))
    assert "result" in first[0]
    db = inproc.store.db
    _fail_after_writing(inproc.store, "boom")
    direct = "INSERT OR REPLACE INTO meta(key, value) VALUES ('test_direct', 'kept')"
    inproc.daemon.service.registry.add("test.direct", lambda p, ctx: db.execute(direct) and {}, writes=True)
    replies = inproc.batch(
        _line(1, "message.send", caller_agent_id="alice", content="before", mentions=["@bob"]),
        _line(2, "test.direct"),
        _line(3, "message.send", caller_agent_id="alice", content="boom", mentions=["@bob"]),
        _line(4, "message.send", caller_agent_id="bob", content="after", mentions=["@alice"]))
    assert ["result" in r for r in replies] == [True, True, False, True]
    assert db.execute("SELECT value FROM meta WHERE key = 'test_direct'").fetchone()[0] == "kept"
    db.execute("DELETE FROM meta WHERE key = 'test_direct'")
    inproc.close()
    agents.start()
    contents = _contents(agents)
    assert {"seen", "before", "after"} <= set(contents) and "boom" not in contents
    assert_projection_equals_a_rebuild(agents, tmp_path)


def test_when_the_batch_cannot_be_applied_again_every_write_in_it_fails(agents, inproc, tmp_path: Path):
    store = inproc.store
    first = inproc.batch(_line(1, "message.send", caller_agent_id="bob", content="waiting", mentions=["@alice"]))
    assert "result" in first[0] and store._deferred  # its COMMIT waits: a ROLLBACK must not lose it

    def break_reapply():  # this batch's events will fail when applied again (the waiting one will not)
        def failing(event, ns):
            if event.get("body", {}).get("content") in ("one", "boom", "later"):
                raise RuntimeError("the database broke")
            real(event, ns)
        store.projection.appliers["message.create"] = failing

    real = _fail_after_writing(store, "boom", also=break_reapply)
    before = message_create_counts(agents.sync_dir)
    replies = inproc.batch(
        _line(1, "message.send", caller_agent_id="alice", content="one", mentions=["@bob"]),
        _line(2, "agent.list"),
        _line(3, "message.send", caller_agent_id="alice", content="boom", mentions=["@bob"]),
        _line(4, "message.send", caller_agent_id="bob", content="later", mentions=["@alice"]))
    store.projection.appliers["message.create"] = real
    assert replies[0]["error"]["code"] == -32006 and "result" in replies[1]
    assert replies[2]["error"]["code"] == -32006
    assert "error" in replies[3]  # the applier still fails: not "later" in the log either
    assert message_create_counts(agents.sync_dir) == before
    ok = inproc.batch(_line(1, "message.send", caller_agent_id="bob", content="fine", mentions=["@alice"]),
                      _line(2, "message.send", caller_agent_id="bob", content="fine too", mentions=["@alice"]))
    assert all("result" in r for r in ok)
    inproc.close()
    agents.start()
    contents = _contents(agents)
    assert {"waiting", "fine", "fine too"} <= set(contents)
    assert not {"one", "boom", "later"} & set(contents)
    assert_projection_equals_a_rebuild(agents, tmp_path)


def test_a_send_batch_leaves_its_commit_for_later_and_a_read_commits_it(agents, inproc, tmp_path: Path):
    """The COMMIT of a batch of sends waits (the log made them durable); the next use of the
    database commits first, and a daemon killed before the COMMIT loses nothing (catch-up)."""
    store = inproc.store
    replies = inproc.batch(_line(1, "message.send", caller_agent_id="alice", content="waits", mentions=["@bob"]))
    mid = replies[0]["result"]["message_id"]
    assert store.commit_projection() is False and store._deferred  # the transaction is still open
    _fail_after_writing(store, "boom")
    replies = inproc.batch(_line(1, "message.send", caller_agent_id="bob", content="boom"))  # a lone send fails
    assert replies[0]["error"]["code"] == -32603 and store._deferred
    listed = inproc.batch(_line(1, "message.get", caller_agent_id="bob", message_id=mid))
    assert listed[0]["result"]["message"]["body"]["content"] == "waits" and not store._deferred
    replies = inproc.batch(_line(1, "message.send", caller_agent_id="alice", content="lost at the kill?",
                                 mentions=["@bob"]),
                           _line(2, "message.send", caller_agent_id="bob", content="and me?"))
    assert all("result" in r for r in replies) and store._deferred
    # A crash now: the open transaction is gone with the process; the log has both lines.
    store._conn.close()
    store._conn, store._deferred = None, False
    inproc.close()
    agents.start()
    contents = _contents(agents)
    assert {"waits", "lost at the kill?", "and me?"} <= set(contents) and "boom" not in contents
    assert_projection_equals_a_rebuild(agents, tmp_path)
