"""The fast views (views.py) give exactly what the general query gives.

`message.list` with an `after` filter always takes the general query (a scan with SQL
filters), so `after: 1970-01-01` is an oracle for the same view without the audience index
and counters. Each check compares pages and counts for every agent and view, after sends of
every kind, reads, deletions, group and role changes, and a read marker logged before its
message arrives.
"""

from helpers import assert_log_clean, register

from thrum.events import encode_line, format_ns, new_id, now_ns

EPOCH = "1970-01-01T00:00:00Z"


def _views(agent: str, role: str) -> list[dict]:
    inbox = {"for_agent": agent, "for_agent_role": role, "exclude_self": True, "caller_agent_id": agent}
    return [
        inbox,
        {**inbox, "unread": True},
        {**inbox, "page": 2, "page_size": 3},
        {**inbox, "sort_order": "asc", "page_size": 4},
        {"mentions": True, "caller_agent_id": agent},
        {"mentions": True, "caller_agent_id": agent, "unread": True},
        {"mention_role": role},
        {"caller_agent_id": agent},
        {"caller_agent_id": agent, "unread": True, "page_size": 5},
        {"caller_agent_id": agent, "exclude_self": True},
        {"scope": {"type": "module", "value": "auth"}, "caller_agent_id": agent},
        {"scope": {"type": "module", "value": "auth"}, "caller_agent_id": agent, "unread": True},
        {"scope": {"type": "group", "value": "crew"}, "caller_agent_id": agent},
        {"exclude_author": agent, "read_state_for": agent},
    ]


def _shape(result: dict) -> tuple:
    return ([m["message_id"] for m in result["messages"]], [m.get("is_read") for m in result["messages"]],
            result["total"], result["unread"], result["total_pages"])


def assert_views_match(t, agents: dict) -> None:
    with t.client() as c:
        for agent, role in agents.items():
            for params in _views(agent, role):
                params = {"page_size": 50, **params}
                fast = c.call("message.list", params)
                slow = c.call("message.list", {**params, "after": EPOCH})
                assert _shape(fast) == _shape(slow), (agent, params)
            team = {m["agent_id"]: m for m in c.call("team.list", {"include_offline": True})["members"]}
            inbox = c.call("message.list", {"for_agent": agent, "for_agent_role": role, "exclude_self": True,
                                            "caller_agent_id": agent, "after": EPOCH})
            assert (team[agent]["inbox_total"], team[agent]["inbox_unread"]) == (inbox["total"], inbox["unread"])


def test_views_match_the_general_query_through_every_change(daemon):
    t = daemon
    agents = {"alice": "implementer", "bob": "reviewer", "carol": "reviewer", "dave": "planner"}
    for name, role in agents.items():
        register(t, name, role, module="auth")
    with t.client() as c:
        c.call("group.create", {"name": "crew", "caller_agent_id": "alice"})
        c.call("group.member.add", {"group": "crew", "member_type": "agent", "member_value": "alice"})
        c.call("group.member.add", {"group": "crew", "member_type": "role", "member_value": "reviewer"})
        sent = []

        def send(who, text, **extra):
            mid = c.call("message.send", {"content": text, "caller_agent_id": who, **extra})["message_id"]
            sent.append(mid)
            return mid

        send("alice", "to bob", mentions=["@bob"])
        send("alice", "to reviewers", mentions=["@reviewer"])
        send("bob", "to the crew", mentions=["@crew"], scopes=[{"type": "module", "value": "auth"}])
        send("carol", "to everyone", mentions=["@everyone"])
        send("dave", "a broadcast", scopes=[{"type": "module", "value": "auth"}])
        send("bob", "to bob and reviewers", mentions=["@bob", "@reviewer"])  # two keys meet one inbox
        root = send("alice", "question for carol", mentions=["@carol"])
        send("carol", "the answer", reply_to=root)
        for i in range(8):
            send(["alice", "bob", "carol", "dave"][i % 4], f"chatter {i}", mentions=["@everyone"],
                 scopes=[{"type": "module", "value": "auth"}] if i % 2 else [])
        c.call("message.markRead", {"message_ids": sent[:6], "caller_agent_id": "bob"})
        c.call("message.markRead", {"message_ids": sent[2:9], "caller_agent_id": "carol"})
        c.call("message.markRead", {"message_ids": [sent[2]], "caller_agent_id": "bob"})  # its own message
    assert_views_match(t, agents)  # builds each agent's unread index (views.py)

    with t.client() as c:  # the unread indexes follow new messages and read markers from here on
        more = [c.call("message.send", {"content": f"later {i}", "caller_agent_id": who, "mentions": [to]})
                ["message_id"] for i, (who, to) in enumerate([("alice", "@bob"), ("dave", "@reviewer"),
                                                              ("bob", "@crew"), ("carol", "@everyone")])]
        sent += more
        c.call("message.markRead", {"message_ids": more[:2] + [sent[7]], "caller_agent_id": "bob"})
        c.call("message.markRead", {"message_ids": more[2:], "caller_agent_id": "carol"})
    assert_views_match(t, agents)

    with t.client() as c:  # deleting read and unread messages
        c.call("message.delete", {"message_id": sent[1], "caller_agent_id": "alice"})
        c.call("message.delete", {"message_id": sent[3], "caller_agent_id": "carol"})
        c.call("message.edit", {"message_id": sent[0], "content": "edited", "caller_agent_id": "alice"})
    assert_views_match(t, agents)

    with t.client() as c:  # membership and role changes take effect at once
        c.call("group.member.add", {"group": "crew", "member_type": "agent", "member_value": "dave"})
        c.call("group.member.remove", {"group": "crew", "member_type": "role", "member_value": "reviewer"})
    assert_views_match(t, agents)
    t.call("agent.register", name="carol", role="planner", module="auth", force=True)
    agents["carol"] = "planner"
    assert_views_match(t, agents)
    assert_log_clean(t)


def test_a_read_marker_logged_before_its_message_counts_once_the_message_arrives(daemon):
    """Another clone's read marker can be applied before the message it marks (clock skew, file order)."""
    t = daemon
    register(t, "alice", "implementer")
    register(t, "bob", "reviewer")
    t.stop()
    mid = new_id("msg")
    ns = now_ns()
    read = {"type": "message.read", "event_id": new_id("evt"), "timestamp": format_ns(ns - 10**9), "v": 1,
            "agent_id": "bob", "message_ids": [mid], "origin_daemon": "d_other"}
    create = {"type": "message.create", "event_id": new_id("evt"), "timestamp": format_ns(ns), "v": 1,
              "message_id": mid, "agent_id": "alice", "body": {"format": "markdown", "content": "late"},
              "refs": [{"type": "mention", "value": "bob"}], "origin_daemon": "d_other"}
    with open(t.sync_dir / "messages" / "bob.jsonl", "ab") as f:
        f.write(encode_line(read))
    with open(t.sync_dir / "messages" / "alice.jsonl", "ab") as f:
        f.write(encode_line(create))
    t.start()  # catch-up applies both, the marker first
    inbox = t.call("message.list", for_agent="bob", for_agent_role="reviewer", exclude_self=True,
                   caller_agent_id="bob")
    assert (inbox["total"], inbox["unread"]) == (1, 0)
    assert inbox["messages"][0]["is_read"] is True
    assert_views_match(t, {"alice": "implementer", "bob": "reviewer"})
