"""Full-text search (thrum/search.py): `message.search`, `thrum search`, the index in the projection.

The query parser is tested on its own (with hypothesis fuzzing the query strings against the real
FTS5 schema in memory); everything else runs the real daemon.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from conftest import wait_for
from helpers import RawConn, register

from thrum import search as S


def send(c, author: str, content: str, *to: str, **extra) -> str:
    params = {"caller_agent_id": author, "content": content, **extra}
    if to:
        params["mentions"] = list(to)
    return c.call("message.send", params)["message_id"]


def found(t, query: str, **params) -> list[str]:
    return [h["message_id"] for h in t.call("message.search", query=query, **params)["hits"]]


def error_of(t, query, **params) -> dict:
    with RawConn(t.socket) as raw:
        reply = raw.call("message.search", {"query": query, **params})
    assert "error" in reply, reply
    return reply["error"]


# -- the query language, without a daemon ------------------------------------------------------

def memory_db() -> sqlite3.Connection:
    """The projection's messages table (the columns the index reads) with the search schema."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.executescript("CREATE TABLE messages (message_id TEXT PRIMARY KEY, content TEXT NOT NULL DEFAULT '',"
                     " deleted INTEGER NOT NULL DEFAULT 0);" + S.SCHEMA)
    return db


@pytest.mark.parametrize("query, reason", [
    ('"unbalanced', "unbalanced quote"),
    ("*", "'*' needs"),
    ("NOT", "needs a word"),
    ("NOT staging", "NOT needs a word before it"),
    ("deploy AND", "AND needs a word"),
    ("OR deploy", "OR needs a word"),
    ("deploy NOT", "NOT needs a word"),
    ("(deploy", "'(' without ')'"),
    ("deploy)", "')' without '('"),
    ("()", "empty parentheses"),
    ("a*b", "'*' may only end a word"),
    ("!!! ---", "no words"),
    ("   ", "query is required"),
    ("(" * 20 + "x" + ")" * 20, "nest too deep"),
    (" ".join(["w"] * 40), "too many words"),
])
def test_malformed_queries_say_why(query, reason):
    with pytest.raises(S.QueryError) as info:
        S.parse_query(query)
    assert reason in str(info.value)
    assert info.value.code == -32602


@pytest.mark.parametrize("query, expression", [
    ("auth token", '("auth" AND "token")'),
    ('"rate limit" OR throttl*', '("rate limit" OR "throttl" *)'),
    ("deploy NOT staging", '("deploy" NOT "staging")'),
    ("content:secret", '"content:secret"'),           # no column filter the user did not mean
    ("NEAR(a b)", '("NEAR" AND ("a" AND "b"))'),      # FTS5 syntax is only text here
    ("and or not", '(("and" AND "or") AND "not")'),   # lower case: plain words
    ("deploy !!! now", '("deploy" AND "now")'),       # punctuation alone drops out
    ('say "hi"*', '("say" AND "hi" *)'),
])
def test_queries_become_quoted_fts_expressions(query, expression):
    assert S.parse_query(query).main == expression


def test_cjk_words_become_phrases_of_characters():
    q = S.parse_query("认证 deploy")
    assert q.cjk and q.spaced == '(" 认  证 " AND "deploy")'
    assert not S.parse_query("привет").cjk


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

_ALPHABET = st.sampled_from(list('ab *"()-:^+.NOTANDOR 认证ログイ') + ["AND", "OR", "NOT", "NEAR", "\u00e9"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_ALPHABET, max_size=14).map("".join))
def test_any_query_is_searchable_or_a_clear_error(query):
    db = memory_db()
    db.execute("INSERT INTO messages VALUES ('m1', 'a b 认证 ログイン ab', 0)")
    S.index_pending(db)
    try:
        parsed = S.parse_query(query)
    except S.QueryError as exc:
        assert exc.code == -32602 and str(exc)
        return
    db.execute("SELECT rowid FROM message_search WHERE message_search MATCH ?", (parsed.main,)).fetchall()
    if parsed.cjk:
        db.execute("SELECT rowid FROM message_search_cjk WHERE message_search_cjk MATCH ?",
                   (parsed.spaced,)).fetchall()


def test_the_bulk_population_matches_the_incremental_index():
    """Live: each message indexed after the fact (index_pending), an indexed one deleted through the
    triggers, one deleted and one edited before they were indexed. A rebuild: bulk_populate."""
    texts = ["auth tokens expire", "我们需要讨论一下认证问题", "ログインできません", "café", "deleted one",
             "gone before indexing", "draft"]
    by_trigger = memory_db()
    for i, text in enumerate(texts[:5]):
        by_trigger.execute("INSERT INTO messages VALUES (?,?,0)", (f"m{i}", text))
        S.index_pending(by_trigger)
    by_trigger.execute("UPDATE messages SET deleted=1 WHERE message_id='m4'")
    by_trigger.execute("INSERT INTO messages VALUES ('m5', ?, 0)", (texts[5],))
    by_trigger.execute("INSERT INTO messages VALUES ('m6', ?, 0)", (texts[6],))
    by_trigger.execute("UPDATE messages SET deleted=1 WHERE message_id='m5'")
    by_trigger.execute("UPDATE messages SET content='认证 final' WHERE message_id='m6'")
    S.index_pending(by_trigger)
    texts[6] = "认证 final"
    bulk = sqlite3.connect(":memory:", isolation_level=None)
    bulk.executescript("CREATE TABLE messages (message_id TEXT PRIMARY KEY, content TEXT NOT NULL DEFAULT '',"
                       " deleted INTEGER NOT NULL DEFAULT 0);")
    for i, text in enumerate(texts):
        bulk.execute("INSERT INTO messages VALUES (?,?,?)", (f"m{i}", text, 1 if i in (4, 5) else 0))
    bulk.executescript(S.SCHEMA)  # triggers after the load: nothing indexed yet
    S.bulk_populate(bulk)
    for q in ("auth", "认证", "ログイン", "cafe", "deleted", "问题 OR tokens", "gone", "draft", "final"):
        parsed = S.parse_query(q)
        main = [sorted(r[0] for r in db.execute("SELECT rowid FROM message_search WHERE message_search MATCH ?",
                                                 (parsed.main,))) for db in (by_trigger, bulk)]
        assert main[0] == main[1], q
        if parsed.cjk:
            cjk = [sorted(r[0] for r in db.execute(
                "SELECT rowid FROM message_search_cjk WHERE message_search_cjk MATCH ?", (parsed.spaced,)))
                for db in (by_trigger, bulk)]
            assert cjk[0] == cjk[1] and cjk[0], q


def full_memory_db() -> sqlite3.Connection:
    """The columns search reads, for calling `search()` without a daemon."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.row_factory = sqlite3.Row
    db.executescript("CREATE TABLE messages (message_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL DEFAULT '',"
                     " reply_to TEXT NOT NULL DEFAULT '', agent_id TEXT NOT NULL, created_at TEXT NOT NULL,"
                     " created_ns INTEGER NOT NULL, content TEXT NOT NULL DEFAULT '', priority TEXT NOT NULL"
                     " DEFAULT 'normal', deleted INTEGER NOT NULL DEFAULT 0, authored_by TEXT NOT NULL DEFAULT '',"
                     " edits INTEGER NOT NULL DEFAULT 0);" + S.SCHEMA)
    return db


def test_only_the_newest_matches_are_ranked_beyond_the_pool(monkeypatch):
    from thrum.rpc import Params

    monkeypatch.setattr(S, "RANK_POOL", 5)
    db = full_memory_db()
    db.execute("INSERT INTO messages(message_id, agent_id, created_at, created_ns, content) VALUES"
               " ('m00', 'a', '2026-01-01T00:00:00Z', 0, 'common common common')")
    for i in range(1, 10):
        db.execute("INSERT INTO messages(message_id, agent_id, created_at, created_ns, content) VALUES (?,?,?,?,?)",
                   (f"m{i:02d}", "a", "2026-01-01T00:00:00Z", i, f"common word and filler {i} " * 3))
    S.index_pending(db)
    wide = S.search(None, db, Params({"query": "common", "limit": 100}))
    assert wide["searched_all"] is False
    assert sorted(h["message_id"] for h in wide["hits"]) == ["m05", "m06", "m07", "m08", "m09"]
    narrow = S.search(None, db, Params({"query": '"common common"', "limit": 100}))
    assert narrow["searched_all"] is True and [h["message_id"] for h in narrow["hits"]] == ["m00"]


def test_common_words_only_filter_and_the_order_stays_bm25s(monkeypatch):
    from thrum.rpc import Params

    monkeypatch.setattr(S, "COMMON_MIN", 0)  # as in a large repository
    db = full_memory_db()
    texts = ["common rare rare", "common rare and some other words here", "common filler", "common rare x",
             "common y", "common z", "common w", "common v"] + [f"other {i}" for i in range(8)]
    for i, text in enumerate(texts):
        db.execute("INSERT INTO messages(message_id, agent_id, created_at, created_ns, content) VALUES (?,?,?,?,?)",
                   (f"m{i}", "a", "2026-01-01T00:00:00Z", i, text))
    S.index_pending(db)
    full = [r[0] for r in db.execute("SELECT m.message_id FROM message_search JOIN messages m ON m.rowid ="
                                     " message_search.rowid WHERE message_search MATCH '\"common\" \"rare\"'"
                                     " ORDER BY rank")]
    ours = S.search(None, db, Params({"query": "common rare"}))
    assert [h["message_id"] for h in ours["hits"]] == full == ["m0", "m3", "m1"]
    assert ours["hits"][0]["score"] > ours["hits"][-1]["score"] > 0
    assert [h["message_id"] for h in S.search(None, db, Params({"query": "rare NOT x"}))["hits"]] == ["m0", "m1"]
    # every word in most messages: the newest matches first, unscored
    everyday = S.search(None, db, Params({"query": "common"}))
    assert [h["message_id"] for h in everyday["hits"]][:3] == ["m7", "m6", "m5"]
    assert {h["score"] for h in everyday["hits"]} == {0.0}


# -- through the daemon ---------------------------------------------------------------------------

def test_words_phrases_prefixes_and_operators(agents):
    t = agents
    with t.client() as c:
        a = send(c, "alice", "The auth tokens expire after an hour")
        b = send(c, "bob", "Authentication fails on staging")
        d = send(c, "alice", "deploy to production tonight")
        e = send(c, "bob", "deploy to staging first, then tokens rotate")
    assert found(t, "tokens") and set(found(t, "tokens")) == {a, e}
    assert set(found(t, "auth*")) == {a, b}
    assert found(t, '"tokens expire"') == [a]
    assert found(t, '"expire tokens"') == []
    assert set(found(t, "deploy staging")) == {e}
    assert set(found(t, "production OR authentication")) == {b, d}
    assert set(found(t, "deploy NOT staging")) == {d}
    assert set(found(t, "(staging OR production) AND deploy")) == {d, e}
    assert found(t, "AUTHENTICATION") == [b]  # case folded
    hits = t.call("message.search", query="tokens")["hits"]
    assert all("**tokens**" in h["snippet"] for h in hits)
    assert all(isinstance(h["score"], float) for h in hits)


def test_ranking_puts_the_better_match_first(agents):
    t = agents
    with t.client() as c:
        weak = send(c, "alice", "a long note about many things, the cache among them, and more words to "
                                "dilute it: planning, reviews, meetings, lunch, coffee, builds, releases")
        strong = send(c, "alice", "cache cache: the cache is cold")
        for i in range(5):
            send(c, "bob", f"unrelated filler message number {i}")
    hits = t.call("message.search", query="cache")["hits"]
    assert [h["message_id"] for h in hits] == [strong, weak]
    assert hits[0]["score"] > hits[1]["score"] > 0


def test_chinese_japanese_korean_cyrillic_and_accents(agents):
    t = agents
    with t.client() as c:
        zh = send(c, "alice", "我们需要讨论一下认证问题，然后部署数据库。")
        ja = send(c, "alice", "ログインできません。パスワードを確認してください")
        ko = send(c, "alice", "인증을 확인하세요")
        ru = send(c, "alice", "Привет, мир! Сервер упал ночью.")
        fr = send(c, "alice", "Le café est prêt")
        mixed = send(c, "bob", "auth: 认证 is done")
    assert set(found(t, "认证")) == {zh, mixed}          # a two-character word inside a sentence
    assert found(t, "数据库") == [zh]
    assert found(t, "认证问题") == [zh]
    assert found(t, "问认") == []                        # characters, but not next to each other
    assert found(t, "ログイン") == [ja]
    assert found(t, "パスワード") == [ja]
    assert found(t, "인증") == [ko]
    assert found(t, "сервер") == [ru]                   # Cyrillic, case folded
    assert found(t, "серв*") == [ru]
    assert found(t, "cafe") == [fr] and found(t, "pret") == [fr]
    assert set(found(t, "认证 OR сервер")) == {zh, mixed, ru}
    assert found(t, "认证 NOT auth") == [zh]
    assert found(t, "auth 认证") == [mixed]
    hit = t.call("message.search", query="认证")["hits"]
    assert any("**认证**" in h["snippet"] for h in hit)


def test_edits_and_deletions_show_at_once_and_survive_a_rebuild(agents):
    t = agents
    with t.client() as c:
        mid = send(c, "alice", "the build is flaky on arm64")
        gone = send(c, "alice", "secret rotation plan")
        zh = send(c, "alice", "旧的文本内容")
        assert found(t, "flaky") == [mid]
        c.call("message.edit", {"caller_agent_id": "alice", "message_id": mid, "content": "the build is green"})
        c.call("message.edit", {"caller_agent_id": "alice", "message_id": zh, "content": "新的说明"})
        c.call("message.delete", {"caller_agent_id": "alice", "message_id": gone})
    def check():
        assert found(t, "flaky") == []
        assert found(t, "green") == [mid]
        assert t.call("message.search", query="green")["hits"][0]["edited"] is True
        assert found(t, "secret") == [] and found(t, "rotation plan") == []
        assert found(t, "旧的") == [] and found(t, "说明") == [zh]
    check()
    # The index is part of the projection: rebuilt from the log, it says the same.
    t.stop()
    for suffix in ("", "-wal", "-shm"):
        (t.var / ("messages.db" + suffix)).unlink(missing_ok=True)
    t.start()
    check()
    assert found(t, "build") == [mid]


def test_filters_from_to_thread_time_and_limit(agents):
    t = agents
    register(t, "carol", "planner", "ui")
    with t.client() as c:
        c.call("group.create", {"caller_agent_id": "alice", "name": "crew"})
        c.call("group.member.add", {"caller_agent_id": "alice", "group": "crew", "member_type": "agent",
                                    "member_value": "bob"})
        to_bob = send(c, "alice", "release notes draft", "@bob")
        to_role = send(c, "alice", "release checklist", "@reviewer")
        to_group = send(c, "alice", "release party", "@crew")
        to_carol = send(c, "alice", "release budget", "@carol")
        broadcast = send(c, "carol", "release date moved")
        own = send(c, "bob", "release blockers", "@alice")
        root = send(c, "alice", "thread about the release train")
        reply = c.call("message.send", {"caller_agent_id": "bob", "content": "release train is late",
                                        "reply_to": root})
        reply_id = reply["message_id"]
    everything = set(found(t, "release", limit=100))
    assert {to_bob, to_role, to_group, to_carol, broadcast, own, root, reply_id} <= everything
    assert set(found(t, "release", **{"from": "carol"})) == {broadcast}
    assert set(found(t, "release", **{"from": "@bob"})) == {own, reply_id}
    # to an agent: what its inbox shows (by name, role, group, broadcasts; not its own)
    to_bob_hits = set(found(t, "release", to="bob", limit=100))
    assert {to_bob, to_role, to_group, broadcast} <= to_bob_hits
    assert to_carol not in to_bob_hits and own not in to_bob_hits
    assert set(found(t, "release", to="crew")) == {to_group}
    assert set(found(t, "release", to="reviewer")) == {to_role}
    # A thread: the reply chain around the message named (from any message of it), or a thread_id.
    assert set(found(t, "release", thread_id=root)) == {root, reply_id}
    assert set(found(t, "release", thread_id=reply_id)) == {root, reply_id}
    with t.client() as c:
        tagged = send(c, "carol", "release retro", thread_id="thr_retro")
        send(c, "carol", "release retro again")
    assert found(t, "release", thread_id="thr_retro") == [tagged]
    assert found(t, "release", since="2999-01-01") == []
    assert found(t, "release", until="2000-01-01T00:00:00Z") == []
    assert set(found(t, "release", since="2000-01-01", limit=100)) == everything | {tagged} | set(
        found(t, '"release retro again"'))
    assert len(found(t, "release", limit=2)) == 2
    err = error_of(t, "release", **{"from": "nobody"})
    assert err["code"] == -32001 and "nobody" in err["message"]
    assert error_of(t, "release", since="yesterday")["code"] == -32602


def test_malformed_queries_are_invalid_params_over_rpc(agents):
    t = agents
    for query in ('"open', "*", "NOT", "NOT x", "x OR", "(x", "!!!"):
        err = error_of(t, query)
        assert err["code"] == -32602, (query, err)
        assert err["message"]
    assert error_of(t, "x", highlight="**")["code"] == -32602
    assert error_of(t, "")["code"] == -32602
    with RawConn(t.socket) as raw:
        assert "error" in raw.call("message.search", {})
    # The daemon is fine afterwards.
    assert t.call("message.search", query="anything")["hits"] == []


def test_cli_json_hits_and_human_output(agents):
    t = agents
    with t.client() as c:
        mid = send(c, "alice", "the migration script drops the index first")
    data = t.json("search", "migration", "script", name="bob")
    hit = data["hits"][0]
    assert {"message_id", "author", "created_at", "snippet", "score", "thread_id"} <= set(hit)
    assert hit["message_id"] == mid and hit["author"] == "alice"
    assert "**migration** **script**" in hit["snippet"]
    out = t.run("search", "migration", "--from", "@alice", "--since", "1d", name="bob").stdout
    assert mid in out and "@alice" in out and "**migration**" in out and "\x1b" not in out
    assert "1 hit" in out
    none = t.run("search", "nothing-like-this", name="bob").stdout
    assert "No messages match" in none
    bad = t.run("search", '"open', "--json", check=False, name="bob")
    assert bad.returncode == 1 and json.loads(bad.stdout)["error"]["code"] == -32602
    usage = t.run("search", "x", "--limit", "500", check=False, name="bob")
    assert usage.returncode == 2
    late = t.run("search", "migration", "--until", "-2d", name="bob").stdout
    assert "No messages match" in late


def test_search_does_not_slow_or_break_sends(agents):
    """Many messages through the triggers, in one batch per call, all searchable at once."""
    t = agents
    with t.client() as c:
        for i in range(200):
            send(c, "alice", f"bulk message {i} about topic{i % 7}")
    wait_for(lambda: len(found(t, "topic3", limit=100)) == len([i for i in range(200) if i % 7 == 3]),
             what="every bulk message to be searchable")
    result = t.call("message.search", query="bulk", limit=100)
    assert len(result["hits"]) == 100 and result["searched_all"] is True


def test_random_queries_over_rpc_get_hits_or_invalid_params(agents):
    """Whatever a person types, the answer is hits or -32602, never an internal error."""
    import random

    t = agents
    with t.client() as c:
        for text in ("auth tokens expire", "我们讨论认证问题", "Привет мир", "a:b c^d NEAR(x y)", 'say "hi" now'):
            send(c, "alice", text)
    rnd = random.Random(15)
    pieces = ['"', "*", "(", ")", "AND", "OR", "NOT", "NEAR", ":", "^", "-", "+", "auth", "认证", "мир", "a", " ",
              "  ", "\t", "é", "\u200b", "'", "\\", "{", "}", "%", "_", "col:", "NOT(", '*"', "🙂"]
    codes = set()
    with RawConn(t.socket) as raw:
        for i in range(400):
            query = "".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 9)))
            reply = raw.call("message.search", {"query": query, "limit": 5}, rid=i)
            assert reply["id"] == i
            if "error" in reply:
                assert reply["error"]["code"] == -32602, (query, reply)
                codes.add("error")
            else:
                assert isinstance(reply["result"]["hits"], list)
                codes.add("result")
    assert codes == {"error", "result"}
