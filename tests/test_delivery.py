"""Delivery into the agent (message.deliver) and receipts (message.sent, message.get, sync).

Every test runs the real daemon; what a hook hands over is what message.deliver returns.
"""

from __future__ import annotations

import threading

from conftest import Thrum, git, make_repo, wait_for
from helpers import RawConn, log_events, register, table_rows


def deliver(t, agent: str, **params) -> dict:
    with t.client() as c:
        return c.call("message.deliver", {"caller_agent_id": agent, **params})


def ids(result: dict) -> list[str]:
    return [m["message_id"] for m in result["messages"]]


def send(c, author: str, content: str, *to: str, **extra) -> str:
    params = {"caller_agent_id": author, "content": content, **extra}
    if to:
        params["mentions"] = list(to)
    return c.call("message.send", params)["message_id"]


def test_each_message_is_handed_over_once_and_never_the_agents_own(agents):
    t = agents
    register(t, "carol", "planner", "ui")
    with t.client() as c:
        c.call("group.create", {"caller_agent_id": "alice", "name": "crew"})
        c.call("group.member.add", {"caller_agent_id": "alice", "group": "crew", "member_type": "agent",
                                    "member_value": "bob"})
    first = deliver(t, "bob")
    assert first["started"] is True and first["messages"] == []
    with t.client() as c:
        direct = send(c, "alice", "direct", "@bob")
        role = send(c, "alice", "role", "@reviewer")
        group = send(c, "alice", "group", "@crew")
        everyone = send(c, "alice", "everyone", "@everyone")
        broadcast = send(c, "alice", "broadcast")
        send(c, "alice", "for carol", "@carol")
        send(c, "alice", "for planners", "@planner")
        own = send(c, "bob", "bob's own", "@reviewer")
    got = deliver(t, "bob", via="test")
    assert set(ids(got)) == {direct, role, group, everyone, broadcast}
    assert own not in ids(got)
    audience = {m["message_id"]: m["audience"] for m in got["messages"]}
    assert audience[direct] == "you" and audience[role] == "@reviewer" and audience[group] == "@crew"
    assert audience[broadcast] == "@everyone"
    assert all(m["body"]["content"] for m in got["messages"]) and got["more"] == 0
    again = deliver(t, "bob")
    assert again["messages"] == [] and again["more"] == 0 and again["started"] is False
    # Handed over whole: delivered and read, as events in bob's shard.
    kinds = {(e["type"], tuple(e.get("message_ids", []))) for _, e in log_events(t.sync_dir)
             if e.get("agent_id") == "bob" and e["type"] in ("message.delivered", "message.read")}
    assert ("message.delivered", tuple(ids(got))) in kinds and ("message.read", tuple(ids(got))) in kinds
    # carol's copy of the broadcasts is hers alone: bob taking them changed nothing for her.
    assert set(ids(deliver(t, "carol"))) >= {everyone, broadcast}


def test_most_urgent_first_within_the_budget_the_rest_next_time(agents):
    t = agents
    deliver(t, "bob")
    with t.client() as c:
        low = send(c, "alice", "low " + "l" * 300, "@bob", priority="low")
        normal = [send(c, "alice", f"normal {i} " + "n" * 900, "@bob") for i in range(6)]
        critical = send(c, "alice", "critical", "@bob", priority="critical")
        high = send(c, "alice", "high", "@bob", priority="high")
    got = deliver(t, "bob", budget=4000)
    assert ids(got)[:3] == [critical, high, normal[0]]
    assert sum(len(m["body"]["content"]) for m in got["messages"]) <= 4000
    assert got["more"] == 9 - len(got["messages"])
    rest = []
    for _ in range(5):
        step = deliver(t, "bob", budget=4000)
        rest += ids(step)
        if not step["more"]:
            break
    assert ids(got) + rest == [critical, high] + normal + [low]


def test_a_message_too_long_for_the_budget_is_cut_and_only_delivered(agents):
    t = agents
    deliver(t, "bob")
    with t.client() as c:
        mid = send(c, "alice", "x" * 9000, "@bob")
    got = deliver(t, "bob", budget=2000)
    (m,) = got["messages"]
    assert m["truncated"] is True and m["length"] == 9000 and len(m["body"]["content"]) < 2000
    receipts = t.call("message.receipts", message_id=mid)["receipts"]
    assert [(r["agent_id"], r["state"]) for r in receipts] == [("bob", "delivered")]
    assert deliver(t, "bob")["messages"] == []  # delivered is given: never handed over again
    # `message get` shows it whole, and that is the read.
    t.run("message", "get", mid, name="bob")
    assert t.call("message.receipts", message_id=mid)["receipts"][0]["state"] == "read"


def test_what_inbox_wait_get_or_peek_showed_is_not_handed_over(agents):
    t = agents
    deliver(t, "bob")
    with t.client() as c:
        a, b, c_, d = (send(c, "alice", f"m{i}", "@bob") for i in range(4))
    t.run("inbox", "--page-size", "1", name="bob")                          # the newest: d
    t.run("inbox", "--peek", "--page-size", "1", "--page", "2", name="bob")  # c, left unread
    t.run("message", "get", b, name="bob")
    waited = t.json("wait", "--timeout", "5s", "--after", "-60s", name="bob")
    assert waited["message_id"] == a
    assert deliver(t, "bob") == {"messages": [], "more": 0, "started": False}
    states = {mid: t.call("message.receipts", message_id=mid)["receipts"][0]["state"] for mid in (a, b, c_, d)}
    assert states == {a: "read", b: "read", c_: "delivered", d: "read"}


def test_peek_records_delivery_not_read(agents):
    t = agents
    deliver(t, "bob")
    with t.client() as c:
        mid = send(c, "alice", "peek me", "@bob")
    t.run("inbox", "--peek", name="bob")
    assert t.call("message.receipts", message_id=mid)["receipts"][0]["state"] == "delivered"
    assert deliver(t, "bob")["messages"] == []
    assert t.json("inbox", "--unread", "--peek", name="bob")["unread"] == 1


def test_two_hooks_at_once_never_both_get_a_message(agents):
    t = agents
    deliver(t, "bob")
    with t.client() as c:
        sent = [send(c, "alice", f"m{i}", "@bob") for i in range(60)]
    got: list[str] = []
    lock = threading.Lock()

    def hook() -> None:
        with RawConn(t.socket) as conn:
            for _ in range(40):
                reply = conn.call("message.deliver", {"caller_agent_id": "bob", "budget": 400})
                with lock:
                    got.extend(m["message_id"] for m in reply["result"]["messages"])
    threads = [threading.Thread(target=hook) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert sorted(got) == sorted(sent)


def test_a_new_cursor_hands_over_the_unread_backlog_most_urgent_first(agents):
    t = agents
    with t.client() as c:
        old = [send(c, "alice", f"old {i}", "@bob") for i in range(3)]
        urgent = send(c, "alice", "urgent", "@bob", priority="high")
        c.call("message.markRead", {"caller_agent_id": "bob", "message_ids": [old[0]]})
    first = deliver(t, "bob", budget=4000)
    assert first["started"] is True
    assert ids(first) == [urgent, old[1], old[2]] and first["unread"] == 0
    assert deliver(t, "bob")["messages"] == []


def test_cursor_and_receipts_survive_restart_and_rebuild(agents):
    t = agents
    deliver(t, "bob")
    with t.client() as c:
        a = send(c, "alice", "before restart", "@bob")
    assert ids(deliver(t, "bob")) == [a]
    t.stop()
    t.start()
    with t.client() as c:
        b = send(c, "alice", "after restart", "@bob")
    assert ids(deliver(t, "bob")) == [b]
    t.stop()
    t.run("migrate", "--rebuild")
    t.start()
    # The cursor is local and gone; the receipts are in the log: nothing is handed over twice.
    again = deliver(t, "bob")
    assert again["started"] is True and again["messages"] == []
    states = [t.call("message.receipts", message_id=m)["receipts"][0]["state"] for m in (a, b)]
    assert states == ["read", "read"]


def test_deliver_looks_only_at_what_is_new(agents):
    """The query walks the rows after the cursor (rowid range), not the history."""
    t = agents
    deliver(t, "bob")
    import sqlite3

    conn = sqlite3.connect(f"file:{t.var / 'messages.db'}?mode=ro", uri=True)
    try:
        plan = " ".join(r[3] for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT m.rowid FROM messages m WHERE m.rowid>? AND m.deleted=0 AND m.agent_id!=?"
            " AND m.authored_by!=? AND (m.broadcast=1 OR EXISTS (SELECT 1 FROM message_refs x"
            " WHERE x.message_id=m.message_id AND x.type='mention' AND x.value IN (?,?)))"
            " AND NOT EXISTS (SELECT 1 FROM message_reads r WHERE r.agent_id=? AND r.message_id=m.message_id)"
            " AND NOT EXISTS (SELECT 1 FROM message_deliveries d WHERE d.agent_id=? AND d.message_id=m.message_id)"
            " ORDER BY m.rowid", (0, "bob", "bob", "bob", "reviewer", "bob", "bob")))
    finally:
        conn.close()
    assert "USING INTEGER PRIMARY KEY (rowid>?)" in plan, plan
    assert "SCAN" not in plan.replace("SCAN m USING", ""), plan


def test_sent_lists_each_recipients_state(agents):
    t = agents
    t.quickstart("carol", "reviewer", "ui")
    deliver(t, "bob")
    deliver(t, "carol")
    with t.client() as c:
        to_bob = send(c, "alice", "for bob", "@bob")
        to_reviewers = send(c, "alice", "for reviewers", "@reviewer", priority="high")
    deliver(t, "bob")                                   # bob: both read (whole, by the hook)
    t.run("inbox", "--peek", name="carol")              # carol: delivered, not read
    out = t.json("sent", name="alice")
    by_id = {m["message_id"]: m for m in out["messages"]}
    assert out["total"] == 2 and list(by_id) == [to_reviewers, to_bob]
    assert [(r["agent_id"], r["state"]) for r in by_id[to_bob]["recipients"]] == [("bob", "read")]
    rec = {r["agent_id"]: r for r in by_id[to_reviewers]["recipients"]}
    assert rec["bob"]["state"] == "read" and rec["bob"]["read_at"] and rec["bob"]["delivered_at"]
    assert rec["carol"]["state"] == "delivered" and "read_at" not in rec["carol"]
    assert by_id[to_reviewers]["counts"] == {"recipients": 2, "delivered": 2, "read": 1}
    unread = t.json("sent", "--unread", name="alice")
    assert [m["message_id"] for m in unread["messages"]] == [to_reviewers]
    only_carol = t.json("sent", "--to", "@carol", name="alice")
    assert [[r["agent_id"] for r in m["recipients"]] for m in only_carol["messages"]] == [["carol"]]
    human = t.run("sent", name="alice").stdout
    assert "@carol" in human and "delivered" in human and "read 1/2" in human
    got = t.run("message", "get", to_reviewers, name="alice").stdout
    assert "Receipts: @bob read" in got and "@carol delivered" in got
    assert t.run("sent", "--to", "@nobody", name="alice", check=False).returncode == 1


def test_bad_input_to_the_delivery_methods_is_refused_and_writes_nothing(agents):
    t = agents
    from helpers import log_lines, settled_log_lines

    before = settled_log_lines(t)
    with RawConn(t.socket) as c:
        for method, params in [
            ("message.markDelivered", {"caller_agent_id": "bob", "message_ids": "msg_x"}),
            ("message.markDelivered", {"caller_agent_id": "bob", "message_ids": []}),
            ("message.markDelivered", {"caller_agent_id": "bob", "message_ids": [1, 2]}),
            ("message.deliver", {"caller_agent_id": "nobody"}),
            ("message.deliver", {"caller_agent_id": "bob", "budget": "lots"}),
            ("message.deliver", {"caller_agent_id": "bob", "deadline": "soon"}),
            ("message.deliver", {"caller_agent_id": "bob", "deadline": True}),
            ("message.sent", {"caller_agent_id": "alice", "page_size": "x"}),
            ("message.receipts", {}),
        ]:
            reply = c.call(method, params)
            assert "error" in reply and reply["error"]["code"] in (-32602, -32001), (method, reply)
    assert log_lines(t.sync_dir) == before


def test_receipts_travel_to_another_clone(tmp_path, env):
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote), env=env)
    a_repo = make_repo(tmp_path / "a", env)
    git(a_repo, "remote", "add", "origin", str(remote), env=env)
    git(a_repo, "push", "-q", "origin", "main", env=env)
    a = Thrum(a_repo, env)
    a.init()
    a.start()
    try:
        a.quickstart("alice", "implementer", "auth")
        a.run("sync", "force")
        b_repo = tmp_path / "b"
        git(tmp_path, "clone", "-q", str(remote), str(b_repo), env=env)
        b = Thrum(b_repo, env)
        b.init()
        b.start()
        try:
            b.quickstart("bob", "reviewer", "auth")
            b.run("sync", "force")
            a.run("sync", "force")
            mid = a.json("send", "across", "--to", "@bob", name="alice")["message_id"]
            a.run("sync", "force")
            b.run("sync", "force")
            wait_for(lambda: mid in ids(deliver(b, "bob", backlog=True)) or None, 20, what="the message on b")
            b.run("sync", "force")
            a.run("sync", "force")
            rec = a.call("message.receipts", message_id=mid)["receipts"]
            assert [(r["agent_id"], r["state"]) for r in rec] == [("bob", "read")]
            rows = table_rows(a.var / "messages.db", "message_deliveries", exclude=("delivered_at", "via"))
            assert rows == [("bob", mid)]
        finally:
            b.stop()
    finally:
        a.stop()


def test_the_author_hears_receipts_as_they_happen(agents):
    t = agents
    deliver(t, "bob")
    with t.client() as alice:
        alice.call("subscriptions.attach", {"caller_agent_id": "alice"})
        mid = send(alice, "alice", "watch this", "@bob")
        t.run("inbox", "--peek", name="bob")
        t.run("message", "get", mid, name="bob")
        notes: list = []
        wait_for(lambda: notes.append(alice.read_message(timeout=5)) or
                 [n["params"]["state"] for n in notes if n.get("method") == "notification.receipt"]
                 == ["delivered", "read"], 10, what="two receipts")
    receipts = [n["params"] for n in notes if n.get("method") == "notification.receipt"]
    assert all(r["agent_id"] == "bob" and r["message_ids"] == [mid] for r in receipts)


def test_a_caller_past_its_deadline_is_given_nothing_and_nothing_is_recorded(agents):
    import time

    t = agents
    deliver(t, "bob")
    with t.client() as c:
        mid = send(c, "alice", "in time?", "@bob")
    late = deliver(t, "bob", deadline=time.time() - 1)
    assert late == {"messages": [], "more": 1, "started": False, "late": True}
    assert t.call("message.receipts", message_id=mid)["receipts"][0]["state"] == "pending"
    assert ids(deliver(t, "bob", deadline=time.time() + 30)) == [mid]


def test_sent_pages_through_own_messages_and_a_users_acting_as_ones(agents):
    from _rt import WS

    t = agents
    with t.client() as c:
        mine = [send(c, "alice", f"a{i}", "@bob") for i in range(25)]
    with WS(t) as ws:  # a browser user writes one message as alice and one as itself
        ws.call("user.register", username="leon")
        as_alice = ws.call("message.send", content="written by leon", mentions=["@bob"],
                           acting_as="alice")["message_id"]
        own = ws.call("message.send", content="leon himself", mentions=["@bob"])["message_id"]
    first = t.call("message.sent", caller_agent_id="alice", page_size=10)
    assert first["total"] == 26 and first["has_more"] and len(first["messages"]) == 10
    pages = first["messages"] + t.call("message.sent", caller_agent_id="alice", page_size=10, page=2)["messages"] \
        + t.call("message.sent", caller_agent_id="alice", page_size=10, page=3)["messages"]
    assert [m["message_id"] for m in pages] == [as_alice] + mine[::-1]
    leon = t.call("message.sent", caller_agent_id="user:leon")
    assert [m["message_id"] for m in leon["messages"]] == [own, as_alice] and leon["total"] == 2
    t.call("message.delete", caller_agent_id="alice", message_id=mine[0])  # the total counts live messages
    assert t.call("message.sent", caller_agent_id="alice")["total"] == 25
