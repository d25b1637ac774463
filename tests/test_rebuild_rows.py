"""A rebuild's reader turns message.create and message.read into rows (store.bulk_item); the database it
builds must be the one the appliers build from the whole events, odd lines included."""

import sqlite3

import pytest

from thrum import store as store_mod
from thrum.events import encode_line, format_ns
from thrum.store import Store

T0 = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z


def _create(i: int, author: str, **extra) -> dict:
    event = {"type": "message.create", "event_id": f"evt_{author}_{i:05d}", "message_id": f"msg_{author}_{i:05d}",
             "agent_id": author, "session_id": "ses_1", "timestamp": format_ns(T0 + i * 10**6),
             "body": {"format": "markdown", "content": f"note {i} from {author}"}, "v": 1}
    if i % 3 == 0:
        event["refs"] = [{"type": "mention", "value": "bob" if author == "alice" else "alice"}]
    if i % 5 == 0:
        event["scopes"] = [{"type": "group", "value": "team"}, {"type": "module", "value": "docs"}]
    if i % 7 == 0:
        event["thread_id"] = f"thr_{i // 7 % 4}"
    event.update(extra)
    return event


def _write_log(root) -> None:
    """Two authors, reads before and after their message, edits and deletions of messages from the same
    batch, a repeated event, a repeated message id, and values SQLite cannot bind."""
    lines = {"alice": [], "bob": []}
    for i in range(2500):
        for author in lines:
            lines[author].append(_create(i, author))
        other = "bob"
        ts = format_ns(T0 + i * 10**6 + 500)
        lines[other].append({"type": "message.read", "event_id": f"evt_read_{i:05d}", "agent_id": other,
                             "timestamp": ts, "message_ids": [f"msg_alice_{i:05d}", f"msg_alice_{i + 3:05d}",
                                                              f"msg_alice_{i:05d}", 7]})
        if i % 11 == 0:
            lines["alice"].append({"type": "message.edit", "event_id": f"evt_edit_{i:05d}", "agent_id": "alice",
                                   "message_id": f"msg_alice_{i:05d}", "timestamp": ts,
                                   "body": {"content": f"edited {i}"}})
        if i % 13 == 0:
            lines["bob"].append({"type": "message.delete", "event_id": f"evt_del_{i:05d}", "agent_id": "bob",
                                 "message_id": f"msg_bob_{i:05d}", "timestamp": ts, "reason": "typo"})
        if i == 100:  # the same event again (a union merge of two histories)
            lines["bob"].append(lines["alice"][0])
        if i == 200:  # another event with a message id already taken: its scopes and refs stay out
            lines["bob"].append(_create(3, "alice", event_id="evt_again",
                                        timestamp=format_ns(T0 + i * 10**6 + 700),
                                        scopes=[{"type": "module", "value": "other"}]))
        if i == 300:  # values SQLite cannot bind: these go to the appliers, which report them
            lines["alice"].append(_create(300, "carol", event_id="evt_dict_body", timestamp=ts,
                                          body={"content": {"not": "text"}}))
            lines["bob"].append({"type": "message.read", "event_id": "evt_dict_reader", "agent_id": {"x": 1},
                                 "timestamp": ts, "message_ids": ["msg_alice_00001"]})
            lines["bob"].append({"type": "message.read", "event_id": "evt_dict_read_at", "agent_id": "bob",
                                 "timestamp": {"x": 1}, "message_ids": ["msg_alice_00002", "msg_alice_00005"]})
        if i == 400:
            lines["alice"].append({"type": "message.create", "event_id": "evt_no_id", "agent_id": "alice",
                                   "timestamp": ts, "body": {"content": "no message id"}})
    (root / "messages").mkdir(parents=True)
    (root / "events.jsonl").write_bytes(
        encode_line({"type": "group.create", "event_id": "evt_group", "group_id": "grp_team", "name": "team",
                     "agent_id": "alice", "timestamp": format_ns(T0 - 10**9)}))
    for author, events in lines.items():
        (root / "messages" / f"{author}.jsonl").write_bytes(b"".join(encode_line(e) for e in events))


def _rebuild(tmp_path, name: str) -> str:
    var = tmp_path / name
    var.mkdir()
    store = Store(str(tmp_path / "sync"), str(var / "messages.db"), str(var), "d_test")
    store.open()  # no database yet: a rebuild
    store.close()
    return str(var / "messages.db")


def _tables(path: str) -> dict:
    db = sqlite3.connect(path)
    out = {}
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
                              " AND name NOT LIKE 'message_search%'"):
        out[name] = sorted(db.execute(f"SELECT rowid, * FROM {name}" if name == "messages" else
                                      f"SELECT * FROM {name}").fetchall(), key=repr)
    db.close()
    return out


@pytest.mark.parametrize("fork", [True, False])
def test_rows_made_by_the_reader_equal_the_appliers(tmp_path, monkeypatch, fork):
    _write_log(tmp_path / "sync")
    monkeypatch.setattr(store_mod.LogReader, "__init__", _with_fork(store_mod.LogReader.__init__, fork))
    fast = _tables(_rebuild(tmp_path, "fast"))
    # The oracle: every event whole to its applier, as before the reader made rows.
    monkeypatch.setattr(store_mod, "bulk_item", lambda event, ns: ("e", event["event_id"], event, ns))
    whole = _tables(_rebuild(tmp_path, "whole"))
    assert fast == whole
    # ... and the odd lines were really there to take the slow paths.
    messages = {row[1]: row for row in fast["messages"]}
    assert len(messages) == 5000 and "msg_carol_00300" not in messages
    assert sum(1 for row in fast["message_scopes"] if row[0] == "msg_alice_00003") == 0  # i=3: no scopes
    assert not any(row[2] == "other" for row in fast["message_scopes"])
    assert {row[0] for row in fast["bad_lines"]} == {"event evt_dict_body", "event evt_dict_reader",
                                                   "event evt_dict_read_at"}
    assert len(fast["message_reads"]) == 2503  # repeated and non-text ids dropped, markers of later messages kept
    assert len(fast["message_edits"]) == len(range(0, 2500, 11))
    assert fast["counters"] == [("live_messages", 5000 - len(range(0, 2500, 13)))]


def _with_fork(init, fork: bool):
    def patched(self, *args, **kwargs):
        kwargs["fork"] = fork
        init(self, *args, **kwargs)
    return patched
