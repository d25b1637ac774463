"""A large rebuild leaves the search index to the daemon's idle time: searches meanwhile say how much they
could not search, the backlog is worked off in bounded steps on the daemon's own loop, and the index it
ends with is whole (FTS5's integrity check against the messages) and merged."""

import sqlite3
import time
import types

from thrum import search as search_mod
from thrum.daemon import Loop
from thrum.events import encode_line, format_ns
from thrum.rpc import Params
from thrum.store import Store

T0 = 1_767_225_600 * 10**9
MESSAGES = 30_000


def _write_log(root) -> None:
    (root / "messages").mkdir(parents=True)
    lines = []
    for i in range(MESSAGES):
        word = "aardvark" if i in (5, MESSAGES - 1) else "ordinary"
        lines.append(encode_line({
            "type": "message.create", "event_id": f"evt_{i:06d}", "message_id": f"msg_{i:06d}", "agent_id": "alice",
            "timestamp": format_ns(T0 + i * 10**6), "body": {"format": "markdown", "content": f"{word} note {i}"}}))
        if i == 7:  # deleted before it was ever indexed: never found
            lines.append(encode_line({"type": "message.delete", "event_id": "evt_del", "message_id": "msg_000005",
                                      "agent_id": "alice", "timestamp": format_ns(T0 + i * 10**6 + 1)}))
    (root / "messages" / "alice.jsonl").write_bytes(b"".join(lines))


def _run_until(loop, done, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the backlog was not indexed in time"
        loop.run_once(0.05)


def test_a_large_rebuild_is_indexed_in_the_background(tmp_path, monkeypatch):
    _write_log(tmp_path / "sync")
    monkeypatch.setattr(search_mod, "DEFER_ABOVE", 1000)
    var = tmp_path / "var"
    var.mkdir()
    store = Store(str(tmp_path / "sync"), str(var / "messages.db"), str(var), "d_test")
    component = search_mod.Search()
    component.extend_store(store)
    store.open()  # no database: a rebuild, which leaves the index alone past DEFER_ABOVE
    assert search_mod.pending_count(store.db) == MESSAGES

    loop = Loop()
    daemon = types.SimpleNamespace(loop=loop, store=store,
                                   service=types.SimpleNamespace(registry=types.SimpleNamespace(add=lambda *a: None)))
    try:
        component.start(daemon)  # the first step: one batch
        assert search_mod.pending_count(store.db) == MESSAGES - search_mod.INDEX_BATCH
        assert component.merging and component.timer[0] - time.monotonic() <= search_mod.CATCH_UP_TICK  # catching up
        result = component.rpc_search(Params({"query": "aardvark"}), None)
        left = MESSAGES - search_mod.INDEX_BATCH - search_mod.SEARCH_CATCH_UP
        assert result["not_indexed_yet"] == left and result["searched_all"] is False
        assert result["hits"] == []  # the old one is deleted, the newest not indexed yet
        lines = search_mod.human_lines(result, tty=False)
        assert f"{left:,} messages not searched yet" in lines[-1]

        _run_until(loop, lambda: search_mod.pending_count(store.db) == 0 and not component.merging)
        result = component.rpc_search(Params({"query": "aardvark"}), None)
        assert [h["message_id"] for h in result["hits"]] == [f"msg_{MESSAGES - 1:06d}"]
        assert "not_indexed_yet" not in result and result["searched_all"] is True
        db = store.db
        db.execute("INSERT INTO message_search(message_search) VALUES ('integrity-check')")  # raises if not whole
        assert db.execute("SELECT count(*) FROM message_search WHERE message_search MATCH 'ordinary'"
                          ).fetchone()[0] == MESSAGES - 2
        assert not search_mod.merge_step(db)  # merged as far as 'optimize' would
        # Idle again: the half-second tick, and no write while nothing is pending.
        assert component.timer[0] - time.monotonic() > search_mod.CATCH_UP_TICK
    finally:
        component.stop()
        store.close()


def test_a_small_rebuild_still_builds_the_index_at_once(tmp_path):
    _write_log(tmp_path / "sync")
    var = tmp_path / "var"
    var.mkdir()
    store = Store(str(tmp_path / "sync"), str(var / "messages.db"), str(var), "d_test")
    search_mod.Search().extend_store(store)
    store.open()
    try:
        assert search_mod.pending_count(store.db) == 0
    finally:
        store.close()
    db = sqlite3.connect(var / "messages.db")
    assert db.execute("SELECT count(*) FROM message_search WHERE message_search MATCH 'aardvark'").fetchone()[0] == 1
