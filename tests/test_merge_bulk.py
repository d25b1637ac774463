"""Large chunks of new events (sync merges, catch-up) are projected set-based: the result is exactly
what the live appliers give one event at a time, and what a rebuild gives.

The unit tests drive `Projection` on a bare database with seeded random streams of every kind of
message event; the end-to-end test merges a few thousand events pushed by a second clone into a
daemon whose agents keep unread indexes, and compares its projection with a rebuild's.
"""

from __future__ import annotations

import random
import sqlite3

import pytest

from helpers import RawConn, register, table_rows
from test_faults import assert_projection_equals_a_rebuild
from test_sync import clones, force, remote, sync_env  # noqa: F401 (fixtures)
from thrum import store as store_mod, views
from thrum.events import format_ns, order_key
from thrum.store import Projection

# The projection tables a rebuild computes; unread_index is local bookkeeping (compared apart).
PROJECTION_TABLES = ("agents", "sessions", "messages", "message_scopes", "message_refs", "message_reads",
                     "message_edits", "groups", "group_members", "message_audience", "keysets", "keyset_keys",
                     "audience_counts", "reader_counts", "scope_counts", "scope_reads", "counters")
AGENTS = ["ann", "ben", "cat", "dan", "eve", "fay"]
ROLES = {"ann": "lead", "ben": "dev", "cat": "dev", "dan": "qa", "eve": "ops", "fay": "dev"}
GROUPS = ["crew", "ops"]
T0 = 1_780_000_000 * 10**9


# -- a random stream of events -----------------------------------------------------------------

class Stream:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.ns = T0
        self.n = 0
        self.messages: list[tuple[str, str]] = []   # (message_id, author) created so far
        self.future: list[str] = []                 # ids of messages not created yet (read ahead)

    def _event(self, etype: str, **fields) -> dict:
        self.ns += self.rng.randrange(1, 10**9)
        self.n += 1
        return {"type": etype, "v": 1, "event_id": f"evt_{self.n:08d}", "timestamp": format_ns(self.ns), **fields}

    def setup(self) -> list[dict]:
        out = [self._event("agent.register", agent_id=a, role=ROLES[a], module="core") for a in AGENTS]
        for g in GROUPS:
            out.append(self._event("group.create", group_id="grp_" + g, name=g, created_by="ann"))
            out.append(self._event("group.member.add", group_id="grp_" + g, member_type="agent",
                                   member_value=self.rng.choice(AGENTS), added_by="ann"))
        return out

    def _create(self, mid: str | None = None) -> dict:
        rng = self.rng
        mid = mid or f"msg_{self.n:08d}_{rng.randrange(10**6)}"
        author = rng.choice(AGENTS)
        refs, scopes = [], []
        kind = rng.random()
        if kind < 0.3:  # a direct message, sometimes two recipients or a duplicate mention
            for _ in range(rng.choice([1, 1, 2])):
                refs.append({"type": "mention", "value": rng.choice(AGENTS)})
        elif kind < 0.45:  # a role
            refs.append({"type": "mention", "value": rng.choice(sorted(set(ROLES.values())))})
        elif kind < 0.6:  # a group
            g = rng.choice(GROUPS)
            scopes.append({"type": "group", "value": g})
            refs.append({"type": "group", "value": g})
        # else a broadcast
        if rng.random() < 0.4:
            scopes.append({"type": "module", "value": rng.choice(["auth", "ui", "db"])})
        if rng.random() < 0.1:
            scopes.append({"type": "file", "value": "src/a.py"})
        if self.messages and rng.random() < 0.25:  # a reply in a thread
            parent = rng.choice(self.messages)[0]
            refs.append({"type": "reply_to", "value": parent})
            fields = {"thread_id": "thr_" + parent[4:]}
        else:
            fields = {}
        self.messages.append((mid, author))
        return self._event("message.create", message_id=mid, agent_id=author, session_id="",
                           body={"format": "markdown", "content": f"hello {mid}"}, scopes=scopes, refs=refs,
                           **fields)

    def events(self, count: int) -> list[dict]:
        rng = self.rng
        out = []
        while len(out) < count:
            r = rng.random()
            if r < 0.45 or not self.messages:
                if self.future and rng.random() < 0.3:  # a message whose markers came first
                    out.append(self._create(self.future.pop(0)))
                else:
                    out.append(self._create())
            elif r < 0.75:  # read markers, some by the author, some of deleted messages, some repeated
                ids = [rng.choice(self.messages)[0] for _ in range(rng.randrange(1, 5))]
                if rng.random() < 0.15:
                    fut = f"msg_future_{self.n:08d}"
                    self.future.append(fut)
                    ids.append(fut)
                if rng.random() < 0.05:
                    ids.append("msg_never_created")
                out.append(self._event("message.read", agent_id=rng.choice(AGENTS), message_ids=ids))
            elif r < 0.82:
                mid, author = rng.choice(self.messages)
                out.append(self._event("message.edit", message_id=mid, edited_by=author,
                                       body={"format": "markdown", "content": f"edited {self.n}"}))
            elif r < 0.88:  # often of a message of the same chunk
                mid, _ = rng.choice(self.messages[-30:] if rng.random() < 0.6 else self.messages)
                out.append(self._event("message.delete", message_id=mid, reason="obsolete"))
            elif r < 0.92:
                out.append(self._event("message.delivered", agent_id=rng.choice(AGENTS),
                                       message_ids=[rng.choice(self.messages)[0]]))
            elif r < 0.95:
                g = rng.choice(GROUPS)
                out.append(self._event(rng.choice(["group.member.add", "group.member.remove"]), group_id="grp_" + g,
                                       member_type="agent", member_value=rng.choice(AGENTS), added_by="ann"))
            else:
                out.append(self._event("agent.update", agent_id=rng.choice(AGENTS),
                                       work_context={"intent": "x", "intent_updated_at": format_ns(self.ns)}))
        return out


# -- projections on bare databases -----------------------------------------------------------

def _open(path) -> sqlite3.Connection:
    conn = store_mod.connect(str(path))
    conn.executescript(store_mod._SCHEMA)
    return conn


def _ordered(events: list[dict]) -> list[dict]:
    return sorted(events, key=order_key)  # as a merge or a catch-up applies them


def _build_unread(conn, proj: Projection, agent: str) -> None:
    """Build an agent's unread index the way an unread inbox page does (views.py)."""
    keys = views.audience_keys(agent, ROLES[agent], [g for g in GROUPS if conn.execute(
        "SELECT 1 FROM group_members WHERE group_id = ? AND member_value = ?", ("grp_" + g, agent)).fetchone()])
    views._unread_inbox(conn, proj, agent, keys, limit=10, desc=True)
    assert conn.execute("SELECT 1 FROM unread_ready WHERE agent_id = ?", (agent,)).fetchone()


def _expected_unread(conn) -> list[tuple]:
    """What building every kept index afresh would give."""
    rows = []
    for agent, keys in conn.execute("SELECT agent_id, keys FROM unread_ready").fetchall():
        keys = keys.split("\n")
        rows += conn.execute(
            f"SELECT DISTINCT ?, a.created_ns, a.seq FROM message_audience a WHERE a.key IN ({','.join('?' * len(keys))})"
            f" AND a.author != ?{views._UNREAD}", [agent] + keys + [agent, agent]).fetchall()
    return sorted((tuple(r) for r in rows), key=repr)


def _rows(conn, table: str) -> list[tuple]:
    return sorted((tuple(r) for r in conn.execute(f"SELECT * FROM {table}")), key=repr)


def _live(path, history: list[dict], later: list[dict], indexed: list[str], chunk: int | None):
    """History applied event by event, unread indexes built, then `later` by chunks through apply_all
    (chunk=None: event by event, the reference)."""
    conn = _open(path)
    proj = Projection(conn, {})
    conn.execute("BEGIN")
    for e in _ordered(history):
        proj.apply(e)
    conn.execute("COMMIT")
    for agent in indexed:
        _build_unread(conn, proj, agent)
    later = _ordered(later)
    conn.execute("BEGIN")
    if chunk is None:
        for e in later:
            proj.apply(e, guard=True)
    else:
        for i in range(0, len(later), chunk):
            assert len(proj.apply_all(later[i:i + chunk])) == len(later[i:i + chunk])
    conn.execute("COMMIT")
    return conn, proj


def _rebuilt(path, events: list[dict]) -> sqlite3.Connection:
    conn = _open(path)
    proj = Projection(conn, {}, bulk=True)
    conn.execute("BEGIN")
    ordered = _ordered(events)
    items = [store_mod.bulk_item(e, order_key(e)[0]) for e in ordered]  # as a rebuild's reader hands them over
    for i in range(0, len(items), 1000):
        proj.apply_items(items[i:i + 1000])
    for stmt in store_mod._split_statements(store_mod._DERIVE_SQL):
        conn.execute(stmt)
    conn.execute("COMMIT")
    return conn


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_set_based_chunks_equal_event_by_event_and_a_rebuild(tmp_path, seed, monkeypatch):
    calls = []
    real = Projection._apply_new_run
    monkeypatch.setattr(Projection, "_apply_new_run", lambda self, run: (calls.append(len(run)), real(self, run)))
    s = Stream(seed)
    history = s.setup() + s.events(600)
    later = s.events(3000)
    indexed = ["ann", "ben", "dan"]
    ref, _ = _live(tmp_path / "ref.db", history, later, indexed, None)
    calls.clear()
    real_apply = Projection.apply
    guarded = []
    monkeypatch.setattr(Projection, "apply", lambda self, e, ns=None, *, guard=False: (
        guarded.append(e) if guard else None, real_apply(self, e, ns, guard=guard))[1])
    got, _ = _live(tmp_path / "got.db", history, later, indexed, 500)
    assert any(n >= store_mod.NEW_RUN_MIN for n in calls), "the set-based path was not taken"
    assert guarded == [], "a set-based chunk failed and fell back to the guarded path"
    for table in PROJECTION_TABLES + ("unread_index", "unread_ready"):
        assert _rows(got, table) == _rows(ref, table), f"{table} differs from event-by-event"
    assert _rows(got, "unread_index") == _expected_unread(got)
    assert _rows(got, "unread_index"), "no unread index kept: the test would prove little"
    rebuilt = _rebuilt(tmp_path / "rebuilt.db", history + later)
    for table in PROJECTION_TABLES:
        assert table_rows(tmp_path / "got.db", table) == table_rows(tmp_path / "rebuilt.db", table), \
            f"{table} differs from a rebuild"
    for c in (ref, got, rebuilt):
        c.close()


def test_markers_before_their_messages_and_reads_of_deleted_ones(tmp_path):
    """One chunk: read markers of messages that arrive later in it, a message deleted in the chunk
    that created it (and read after), reads by the author."""
    s = Stream(7)
    history = s.setup()
    later = []
    ids = [f"msg_x{i:04d}" for i in range(300)]
    later.append(s._event("message.read", agent_id="ben", message_ids=ids[:150]))
    for mid in ids:
        e = s._create(mid)
        e["refs"] = [{"type": "mention", "value": "ben"}]
        later.append(e)
    later.append(s._event("message.delete", message_id=ids[0], reason="x"))
    later.append(s._event("message.read", agent_id="ben", message_ids=ids[:2] + ids[200:260]))
    authors = dict(s.messages)
    later.append(s._event("message.read", agent_id=authors[ids[5]], message_ids=[ids[5]]))
    later += s.events(400)
    ref, _ = _live(tmp_path / "ref.db", history, later, ["ben"], None)
    got, _ = _live(tmp_path / "got.db", history, later, ["ben"], len(later))
    for table in PROJECTION_TABLES + ("unread_index",):
        assert _rows(got, table) == _rows(ref, table), f"{table} differs"
    unread = got.execute("SELECT COUNT(*) FROM unread_index WHERE agent_id = 'ben'").fetchone()[0]
    assert unread >= 299 - 150 - 60 - 1


def test_a_bad_event_in_a_large_chunk_is_skipped_and_the_rest_applied(tmp_path):
    s = Stream(11)
    history = s.setup()
    later = s.events(400)
    bad = s._create()
    bad["scopes"] = [{"type": "module", "value": {"not": "text"}}]  # cannot be bound: the applier raises
    later.append(bad)
    ref, _ = _live(tmp_path / "ref.db", history, [e for e in later if e is not bad], ["ben"], None)
    got, proj = _live(tmp_path / "got.db", history, later, ["ben"], len(later))
    assert got.execute("SELECT COUNT(*) FROM bad_lines").fetchone()[0] == 1
    assert got.execute("SELECT COUNT(*) FROM applied").fetchone()[0] == len(history) + len(later)
    for table in PROJECTION_TABLES + ("unread_index",):
        assert _rows(got, table) == _rows(ref, table), f"{table} differs"
    # The rollback left nothing staged behind: the next chunk is set-based and exact again.
    more = _ordered(s.events(400))
    got.execute("BEGIN")
    proj.apply_all(more)
    got.execute("COMMIT")
    ref_proj = Projection(ref, {})
    ref.execute("BEGIN")
    for e in more:
        ref_proj.apply(e)
    ref.execute("COMMIT")
    for table in PROJECTION_TABLES + ("unread_index",):
        assert _rows(got, table) == _rows(ref, table), f"{table} differs after the next chunk"


def test_chunks_with_known_events_and_small_chunks_take_the_event_path(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(Projection, "_apply_new", lambda self, pairs: calls.append(len(pairs)))
    conn = _open(tmp_path / "p.db")
    proj = Projection(conn, {})
    s = Stream(3)
    events = _ordered(s.setup() + s.events(store_mod.BULK_MIN * 2))
    conn.execute("BEGIN")
    proj.apply_all(events[:store_mod.BULK_MIN - 1])
    assert calls == []
    proj.apply_all(events[:store_mod.BULK_MIN + 10])  # some known already
    assert calls == []
    conn.execute("COMMIT")
    assert conn.execute("SELECT COUNT(*) FROM applied").fetchone()[0] == store_mod.BULK_MIN + 10


def test_versions_bump_for_agents_and_groups_in_a_set_based_chunk(tmp_path):
    conn = _open(tmp_path / "p.db")
    proj = Projection(conn, {})
    s = Stream(5)
    conn.execute("BEGIN")
    proj.apply_all(_ordered(s.setup()))
    before = proj.version
    proj.apply_all([s._create() for _ in range(store_mod.BULK_MIN)])  # no agent or group events
    assert proj.version == before
    proj.apply_all(s.setup() + [s._create() for _ in range(store_mod.BULK_MIN)])  # re-registrations, groups
    conn.execute("COMMIT")
    assert proj.version > before


# -- end to end: a merge from another clone ---------------------------------------------------

def _pipelined(conn: RawConn, calls: list[tuple[str, dict]]) -> list:
    """Send a block of requests before reading the answers (the daemon commits them in batches)."""
    out = []
    for i in range(0, len(calls), 200):
        block = calls[i:i + 200]
        for rid, (method, params) in enumerate(block):
            conn.request({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        replies = sorted((conn.recv() for _ in block), key=lambda r: r["id"])
        for (method, _), reply in zip(block, replies):
            assert "result" in reply, f"{method}: {reply}"
            out.append(reply["result"])
    return out


def _unread_inbox(t, agent: str) -> set[str]:
    ids, page = set(), 1
    while True:
        res = t.call("message.list", caller_agent_id=agent, for_agent=agent, exclude_self=True, unread=True,
                     page_size=100, page=page)
        ids.update(m["message_id"] for m in res["messages"])
        if page >= res["total_pages"]:
            return ids
        page += 1


INDEXED = ("alice", "carol", "bob", "amy")  # agents whose unread index clone a keeps


def test_a_merge_of_thousands_of_events_equals_a_rebuild(tmp_path, clones, sync_env):
    rng = random.Random(42)
    a = clones.clone("a", env={**sync_env, "THRUM_DEBUG": "1"})
    a.quickstart("alice", role="implementer")
    register(a, "carol", "reviewer")
    with a.client() as c:
        c.call("group.create", {"caller_agent_id": "alice", "name": "crew"})
        c.call("group.member.add", {"caller_agent_id": "alice", "group": "crew", "member_type": "agent",
                                    "member_value": "carol"})
        old = [c.call("message.send", {"caller_agent_id": "alice", "content": f"old {i}",
                                       **({"mentions": ["@reviewer"]} if i % 2 else {}),
                                       **({"scopes": [{"type": "module", "value": "auth"}]} if i % 3 else {})}
                      )["message_id"] for i in range(40)]
        for mid in old[10:13]:  # read by others in the merge: such markers count for nothing
            c.call("message.delete", {"caller_agent_id": "alice", "message_id": mid})
    force(a)
    b = clones.clone("b")
    b.quickstart("bob", role="reviewer")
    register(b, "zed", "implementer")
    register(b, "amy", "planner")
    force(b)
    force(a)
    # Unread indexes kept on a, built before the merge: the merge must keep them exact.
    for agent in INDEXED:
        _unread_inbox(a, agent)

    to = [["@alice"], ["@carol"], ["@reviewer"], ["@implementer"], ["@bob"], ["@crew"], ["@alice", "@bob"], None]
    with RawConn(b.socket, timeout=60) as conn:
        _pipelined(conn, [("group.member.add", {"caller_agent_id": "bob", "group": "crew", "member_type": "agent",
                                                "member_value": "bob"})])
        sends = []
        for i in range(1500):
            params = {"caller_agent_id": rng.choice(["zed", "zed", "amy"]), "content": f"merged word{i % 37} {i}"}
            target = rng.choice(to)
            if target:
                params["mentions"] = target
            if rng.random() < 0.4:
                params["scopes"] = [{"type": "module", "value": rng.choice(["auth", "ui"])}]
            if rng.random() < 0.2:
                params["reply_to"] = rng.choice(old)
            sends.append(("message.send", params))
        new = [(r["message_id"], p["caller_agent_id"]) for r, (_, p) in zip(_pipelined(conn, sends), sends)]
        later = []
        # bob's markers sort into messages/bob.jsonl, merged before zed's file: they arrive before the messages
        for i in range(0, 900, 10):
            later.append(("message.markRead", {"caller_agent_id": "bob", "message_ids": [m for m, _ in new[i:i + 7]]}))
        later.append(("message.markRead", {"caller_agent_id": "bob", "message_ids": old[:30]}))
        # amy's file is merged before zed's, in chunks large enough for the set-based path
        later.append(("message.markRead", {"caller_agent_id": "amy", "message_ids": old[5:25]}))
        for i in range(0, 1500, 25):
            later.append(("message.markRead", {"caller_agent_id": "amy", "message_ids": [m for m, _ in new[i:i + 5]]}))
        for mid, author in new[::9]:  # read by their author
            later.append(("message.markRead", {"caller_agent_id": author, "message_ids": [mid]}))
        for mid, author in new[::13]:
            later.append(("message.edit", {"caller_agent_id": author, "message_id": mid, "content": "edited"}))
        later.append(("message.markDelivered", {"caller_agent_id": "bob", "message_ids": [m for m, _ in new[:300]]}))
        _pipelined(conn, later)
        # deletions of messages that were read, then more reads of them
        deletes = [("message.delete", {"caller_agent_id": author, "message_id": mid, "reason": "obsolete"})
                   for mid, author in new[::17]]
        _pipelined(conn, deletes)
        _pipelined(conn, [("message.markRead", {"caller_agent_id": "bob", "message_ids": [m for m, _ in new[::17][:40]]})]
                   + [("message.send", {"caller_agent_id": "amy", "content": f"tail {i}"}) for i in range(300)])
    force(b)
    res = force(a)
    assert res["pulled"] >= 2000
    log = (a.var / "daemon.log").read_text()
    assert "set-based" in log, "the merge did not take the set-based path"
    assert "applying them one at a time" not in log, "a set-based chunk failed and fell back"
    assert "failed at once" not in log, "a merged chunk failed and was applied again event by event"

    # The kept unread indexes are what building them afresh gives, and the pages agree.
    for agent in INDEXED:
        from_index = _unread_inbox(a, agent)
        counted = a.call("message.list", caller_agent_id=agent, for_agent=agent, exclude_self=True,
                         page_size=1)["unread"]  # from the counters
        assert len(from_index) == counted, agent
    assert a.call("message.search", query="word5")["hits"], "merged messages are not found by search"
    a.stop()
    conn = sqlite3.connect(a.var / "messages.db")
    try:
        assert conn.execute("SELECT COUNT(*) FROM unread_index").fetchone()[0] > 100
        assert sorted(conn.execute("SELECT * FROM unread_index")) == sorted(_expected_unread(conn))
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] >= 40 + 1500 + 300
    finally:
        conn.close()
    assert_projection_equals_a_rebuild(a, tmp_path)  # the ledger and bad lines included


# -- a merge's chunks share one transaction (Store.hold_merged) -----------------------------------

def _held_store(tmp_path):
    from thrum.store import Store

    var = tmp_path / "var"
    var.mkdir(exist_ok=True)
    store = Store(str(tmp_path / "sync"), str(var / "messages.db"), str(var), "d_test")
    store.open()
    return store, str(var / "messages.db")


def _foreign(n0: int, n: int) -> list[bytes]:
    from thrum.events import encode_line

    return [encode_line({"type": "message.create", "v": 1, "event_id": f"evt_peer_{i:05d}",
                         "timestamp": format_ns(T0 + i * 10**6), "message_id": f"msg_peer_{i:05d}",
                         "agent_id": "peer", "body": {"format": "markdown", "content": f"from the peer {i}"}})
            for i in range(n0, n0 + n)]


def _committed_messages(db_path: str) -> int:
    other = sqlite3.connect(db_path)  # another connection sees only what was committed
    try:
        return other.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    finally:
        other.close()


def test_held_merge_chunks_commit_once_and_keep_no_events_in_memory(tmp_path):
    store, db_path = _held_store(tmp_path)
    for k in range(3):
        store.append_foreign_lines("messages/peer.jsonl", _foreign(k * 300, 300))
        store.hold_merged()
        assert store.holding and store._uncommitted == []
    store.maintain()  # idle upkeep waits for the merge: no COMMIT, no checkpoint
    assert store.holding and _committed_messages(db_path) == 0
    assert len(store.known_event_ids(["evt_peer_00000", "evt_peer_00899"])) == 2  # and it commits nothing
    assert store.holding
    store.commit_deferred()
    assert not store.holding and _committed_messages(db_path) == 900
    store.close()


def test_a_request_never_joins_a_held_merge(tmp_path):
    store, db_path = _held_store(tmp_path)
    store.append_foreign_lines("messages/peer.jsonl", _foreign(0, 300))
    store.hold_merged()
    store.begin()  # a request's batch: the merge's rows are committed before it starts
    assert not store.holding and _committed_messages(db_path) == 300
    store.append("message.create", {"message_id": "msg_local", "agent_id": "alice",
                                    "body": {"format": "markdown", "content": "local"}})
    store.rollback()  # a failed request undoes itself only
    assert _committed_messages(db_path) == 300
    store.close()


def test_a_failed_chunk_rolls_back_to_the_logged_lines_of_the_chunks_before_it(tmp_path, monkeypatch):
    store, db_path = _held_store(tmp_path)
    store.append_foreign_lines("messages/peer.jsonl", _foreign(0, 300))
    store.hold_merged()
    store.append_foreign_lines("messages/peer.jsonl", _foreign(300, 300))
    store.hold_merged()

    apply_all = store.projection.apply_all
    tries = []

    def broken_for_the_third_chunk(pairs, **kw):  # at once, and again event by event
        if any((p[0] if isinstance(p, tuple) else p)["event_id"] == "evt_peer_00600" for p in pairs):
            tries.append(kw)
            raise sqlite3.OperationalError("disk I/O error")
        return apply_all(pairs, **kw)
    monkeypatch.setattr(store.projection, "apply_all", broken_for_the_third_chunk)
    with pytest.raises(sqlite3.OperationalError):
        store.append_foreign_lines("messages/peer.jsonl", _foreign(600, 300))
    assert tries == [{"savepoint": False}, {}]
    store.rollback()  # what the daemon does when a chunk fails (Daemon.run_write)
    # The two durable chunks were applied again from the log; the failed one is in neither.
    assert not store.holding and _committed_messages(db_path) == 600
    assert len(store.known_event_ids([f"evt_peer_{i:05d}" for i in range(900)])) == 600
    log = (tmp_path / "sync" / "messages" / "peer.jsonl").read_bytes()
    assert log == b"".join(_foreign(0, 600))
    store.close()


def test_a_bad_event_in_a_held_chunk_is_skipped_and_the_chunks_before_it_stay(tmp_path):
    """A merge's chunk goes in without a savepoint; when one of its events cannot be applied, the open
    transaction is rolled back, the chunks before it come again from the log, and the chunk goes
    again event by event: the bad event is recorded and skipped, every other one applied."""
    from thrum.events import encode_line

    store, db_path = _held_store(tmp_path)
    store.append_foreign_lines("messages/peer.jsonl", _foreign(0, 300))
    store.hold_merged()
    store.append_foreign_lines("messages/peer.jsonl", _foreign(300, 300))
    store.hold_merged()
    bad = {"type": "message.create", "v": 1, "event_id": "evt_peer_bad", "timestamp": format_ns(T0 + 650 * 10**6),
           "message_id": "msg_peer_bad", "agent_id": "peer", "body": {"format": "markdown", "content": "bad"},
           "scopes": [{"type": "module", "value": {"not": "text"}}]}  # cannot be bound: the applier raises
    third = _foreign(600, 300)
    third.insert(50, encode_line(bad))
    new = store.append_foreign_lines("messages/peer.jsonl", third)
    assert len(new) == 301  # new to the projection (the bad one is recorded as applied, and skipped)
    store.hold_merged()
    assert store.holding
    store.commit_deferred()
    assert _committed_messages(db_path) == 900
    assert len(store.known_event_ids([f"evt_peer_{i:05d}" for i in range(900)] + ["evt_peer_bad"])) == 901
    assert store.db.execute("SELECT COUNT(*) FROM bad_lines").fetchone()[0] == 1
    log = (tmp_path / "sync" / "messages" / "peer.jsonl").read_bytes()
    assert log == b"".join(_foreign(0, 600) + third)
    store.close()


def test_a_long_catch_up_goes_a_chunk_at_a_time(tmp_path, monkeypatch):
    """Lines past the recorded offsets (a merge cut short by a crash, another writer) are read and applied a
    chunk at a time, so memory stays flat however far behind the projection is; a partial last line waits."""
    store, db_path = _held_store(tmp_path)
    store.append_foreign_lines("messages/peer.jsonl", _foreign(0, 10))
    store.commit()
    store.close()
    lines = _foreign(10, 3000)
    path = tmp_path / "sync" / "messages" / "peer.jsonl"
    with open(path, "ab") as f:
        f.write(b"".join(lines))
    monkeypatch.setattr(store_mod, "CATCH_UP_BYTES", 40_000)
    sizes = []
    apply_all = Projection.apply_all
    monkeypatch.setattr(Projection, "apply_all", lambda self, events, **kw: sizes.append(len(events))
                        or apply_all(self, events, **kw))
    store, _ = _held_store(tmp_path)  # opening catches up
    assert sum(sizes) == 3000 and _committed_messages(db_path) == 3010
    per_chunk = 40_000 // len(lines[0]) + 1
    assert len(sizes) >= 3000 // per_chunk and max(sizes) <= per_chunk
    # Another writer's line, half written: left for the next catch-up, which applies it once it is whole.
    late = lines[0].replace(b"evt_peer_00010", b"evt_peer_late_").replace(b"msg_peer_00010", b"msg_peer_late_")
    with open(path, "ab") as f:
        f.write(late[:20])
    assert store.catch_up() == 0
    offset = store.db.execute("SELECT offset FROM log_files WHERE path = 'messages/peer.jsonl'").fetchone()[0]
    assert offset == path.stat().st_size - 20
    with open(path, "ab") as f:
        f.write(late[20:])
    assert store.catch_up() == 1 and _committed_messages(db_path) == 3011
    store.close()
