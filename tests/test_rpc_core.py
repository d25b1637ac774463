"""RPC methods over the Unix socket: the spec's params and result field names (rpc-ws-mcp.md §4)."""

import pytest

from helpers import assert_log_clean, log_events, log_lines, message_create_counts
from thrum.rpc import RPCError


def _has(obj: dict, *keys):
    missing = [k for k in keys if k not in obj]
    assert not missing, f"missing {missing} in {obj}"


def test_health(daemon):
    h = daemon.call("health")
    _has(h, "status", "uptime_ms", "version", "repo_id", "sync_state")
    assert h["status"] == "ok" and h["repo_id"] == "repo" and isinstance(h["uptime_ms"], int)
    with daemon.client() as c:  # absent params are fine
        assert c.call("health", None)["status"] == "ok"


def test_agents_and_sessions(daemon):
    t = daemon
    with t.client() as c:
        r = c.call("agent.register", {"name": "alice", "role": "implementer", "module": "auth", "display": "Al"})
        assert r == {"agent_id": "alice", "status": "registered"}
        assert c.call("agent.register", {"name": "alice", "role": "implementer", "module": "auth"})["status"] == \
            "registered"
        conflict = c.call("agent.register", {"name": "alice", "role": "reviewer", "module": "auth"})
        assert conflict["status"] == "conflict" and conflict["agent_id"] == ""
        _has(conflict["conflict"], "existing_agent_id", "registered_at", "last_seen_at")
        assert conflict["conflict"]["existing_agent_id"] == "alice"
        assert c.call("agent.register", {"name": "alice", "role": "implementer", "module": "auth",
                                         "re_register": True})["status"] == "updated"
        unnamed = c.call("agent.register", {"role": "tester", "module": "qa"})
        assert unnamed["agent_id"].startswith("tester_") and len(unnamed["agent_id"]) == len("tester_") + 10
        c.call("agent.register", {"name": "bob", "role": "reviewer", "module": "auth"})

        agents = c.call("agent.list", {})["agents"]
        assert {a["agent_id"] for a in agents} == {"alice", "bob", unnamed["agent_id"]}
        for a in agents:
            _has(a, "agent_id", "kind", "role", "module", "display", "registered_at")
        assert [a["agent_id"] for a in c.call("agent.list", {"role": "reviewer"})["agents"]] == ["bob"]
        assert c.call("agent.list", {"module": "qa"})["agents"][0]["agent_id"] == unnamed["agent_id"]

        who = c.call("agent.whoami", {"caller_agent_id": "alice"})
        assert who["agent_id"] == "alice" and who["role"] == "implementer" and who["module"] == "auth"
        _has(who, "display", "source")
        assert "session_id" not in who

        s1 = c.call("session.start", {"agent_id": "alice"})
        assert set(s1) == {"session_id", "agent_id", "started_at"} and s1["session_id"].startswith("ses_")
        who = c.call("agent.whoami", {"caller_agent_id": "alice"})
        assert who["session_id"] == s1["session_id"] and who["session_start"] == s1["started_at"]
        # A new session replaces the agent's open one (ended as crash_recovered).
        s2 = c.call("session.start", {"agent_id": "alice"})
        sessions = c.call("session.list", {"agent_id": "alice"})["sessions"]
        by_id = {s["session_id"]: s for s in sessions}
        assert by_id[s1["session_id"]]["status"] == "ended"
        assert by_id[s1["session_id"]]["end_reason"] == "crash_recovered"
        assert by_id[s2["session_id"]]["status"] == "active"
        for s in sessions:
            _has(s, "session_id", "agent_id", "started_at", "last_seen_at", "status")
        assert [s["session_id"] for s in c.call("session.list", {"active_only": True})["sessions"]] == \
            [s2["session_id"]]

        hb = c.call("session.heartbeat", {"session_id": s2["session_id"], "caller_agent_id": "alice"})
        assert set(hb) == {"session_id", "last_seen_at"} and hb["session_id"] == s2["session_id"]
        intent = c.call("session.setIntent", {"session_id": s2["session_id"], "intent": "login flow",
                                              "caller_agent_id": "alice"})
        assert intent["intent"] == "login flow" and intent["session_id"] == s2["session_id"]
        _has(intent, "intent_updated_at")
        task = c.call("session.setTask", {"session_id": s2["session_id"], "current_task": "T-7",
                                          "caller_agent_id": "alice"})
        assert task["current_task"] == "T-7"
        _has(task, "task_updated_at")
        listed = c.call("session.list", {"agent_id": "alice", "active_only": True})["sessions"][0]
        assert listed["intent"] == "login flow"

        # Only a session's own agent ends it or changes it.
        for method, extra in (("session.end", {}), ("session.setIntent", {"intent": "x"}),
                              ("session.heartbeat", {})):
            with pytest.raises(RPCError) as exc:
                c.call(method, {"session_id": s2["session_id"], "caller_agent_id": "bob", **extra})
            assert exc.value.code == -32002, method
        end = c.call("session.end", {"session_id": s2["session_id"], "reason": "done", "caller_agent_id": "alice"})
        assert set(end) == {"session_id", "ended_at", "duration_ms"} and end["duration_ms"] >= 0
        with pytest.raises(RPCError) as exc:
            c.call("session.end", {"session_id": s2["session_id"], "caller_agent_id": "alice"})
        assert exc.value.code == -32003
        with pytest.raises(RPCError) as exc:
            c.call("session.heartbeat", {"session_id": "ses_nope", "caller_agent_id": "alice"})
        assert exc.value.code == -32001
        with pytest.raises(RPCError) as exc:
            c.call("session.start", {"agent_id": "ghost"})
        assert exc.value.code == -32001 and "ghost" in exc.value.message

        # Deleting bob ends his live session: another caller must ask for it explicitly (force).
        live = c.call("session.start", {"agent_id": "bob"})["session_id"]
        with pytest.raises(RPCError) as exc:
            c.call("agent.delete", {"name": "bob", "caller_agent_id": "alice"})
        assert exc.value.code == -32003 and live in exc.value.message
        assert c.call("session.list", {"agent_id": "bob", "active_only": True})["sessions"][0]["session_id"] == live
        deleted = c.call("agent.delete", {"name": "bob", "force": True})
        assert c.call("session.list", {"agent_id": "bob", "active_only": True})["sessions"] == []
        assert deleted["agent_id"] == "bob" and deleted["deleted"] is True
        _has(deleted, "message")
        assert "bob" not in {a["agent_id"] for a in c.call("agent.list", {})["agents"]}
        with pytest.raises(RPCError) as exc:
            c.call("agent.delete", {"name": "bob"})
        assert exc.value.code == -32001
    assert_log_clean(t)


def test_messages(agents):
    t = agents
    with t.client() as c:
        sent = c.call("message.send", {"caller_agent_id": "alice", "content": "hello", "mentions": ["@bob"],
                                       "thread_id": "thr_1", "structured": {"k": [1, 2]}, "format": "plain",
                                       "scopes": [{"type": "module", "value": "auth"}],
                                       "refs": [{"type": "ticket", "value": "T-1"}]})
        _has(sent, "message_id", "created_at")
        assert sent["thread_id"] == "thr_1"
        mid = sent["message_id"]
        m = c.call("message.get", {"message_id": mid})["message"]
        _has(m, "message_id", "author", "body", "scopes", "refs", "metadata", "created_at", "deleted")
        assert m["author"]["agent_id"] == "alice" and m["author"]["session_id"].startswith("ses_")
        assert m["body"] == {"format": "plain", "content": "hello", "structured": {"k": [1, 2]}}
        assert m["thread_id"] == "thr_1" and m["deleted"] is False
        assert {"type": "module", "value": "auth"} in m["scopes"]
        assert {"type": "mention", "value": "bob"} in m["refs"]
        assert {"type": "ticket", "value": "T-1"} in m["refs"]

        reply = c.call("message.send", {"caller_agent_id": "bob", "content": "hi back", "reply_to": mid})
        got = c.call("message.get", {"message_id": reply["message_id"]})["message"]
        assert got["reply_to"] == mid
        assert {"type": "reply_to", "value": mid} in got["refs"]

        listing = c.call("message.list", {"caller_agent_id": "bob", "unread": True})
        _has(listing, "messages", "total", "unread", "page", "page_size", "total_pages")
        assert [x["message_id"] for x in listing["messages"]] == [reply["message_id"], mid]
        for x in listing["messages"]:
            _has(x, "message_id", "agent_id", "body", "created_at", "deleted", "is_read")
        assert c.call("message.list", {"thread_id": "thr_1"})["total"] == 1
        assert c.call("message.list", {"author_id": "bob"})["total"] == 1
        assert c.call("message.list", {"scope": {"type": "module", "value": "auth"}})["total"] == 1
        assert c.call("message.list", {"ref": {"type": "reply_to", "value": mid}})["messages"][0]["message_id"] == \
            reply["message_id"]
        assert c.call("message.list", {"mention_role": "bob"})["total"] == 1
        asc = c.call("message.list", {"sort_order": "asc"})["messages"]
        assert [x["message_id"] for x in asc] == [mid, reply["message_id"]]
        for bad in ({"sort_by": "size"}, {"sort_order": "sideways"}):
            with pytest.raises(RPCError) as exc:
                c.call("message.list", bad)
            assert exc.value.code == -32602

        marked = c.call("message.markRead", {"caller_agent_id": "bob", "message_ids": [mid, "msg_unknown"]})
        assert marked["marked_count"] == 1
        unread = c.call("message.list", {"unread_for_agent": "bob"})
        assert [x["message_id"] for x in unread["messages"]] == [reply["message_id"]]
        also = c.call("message.markRead", {"caller_agent_id": "alice", "message_ids": [mid]})
        assert also["also_read_by"] == {mid: ["bob"]}
        # Marking again changes nothing and writes nothing.
        reads_before = [e for _, e in log_events(t.sync_dir) if e["type"] == "message.read"]
        again = c.call("message.markRead", {"caller_agent_id": "bob", "message_ids": [mid]})
        assert again["marked_count"] == 1 and again["newly_read"] == 0
        assert [e for _, e in log_events(t.sync_dir) if e["type"] == "message.read"] == reads_before
        with pytest.raises(RPCError) as exc:
            c.call("message.markRead", {"caller_agent_id": "bob", "message_ids": []})
        assert exc.value.code == -32602

        edit = c.call("message.edit", {"caller_agent_id": "alice", "message_id": mid, "content": "hello v2"})
        assert set(edit) >= {"message_id", "updated_at", "version"} and edit["version"] == 1
        assert c.call("message.edit", {"caller_agent_id": "alice", "message_id": mid,
                                       "content": "hello v3"})["version"] == 2
        m = c.call("message.get", {"message_id": mid})["message"]
        assert m["body"]["content"] == "hello v3" and m["updated_at"] == \
            c.call("message.list", {"thread_id": "thr_1"})["messages"][0]["updated_at"]
        with pytest.raises(RPCError) as exc:
            c.call("message.edit", {"caller_agent_id": "alice", "message_id": mid})
        assert exc.value.code == -32602

        dele = c.call("message.delete", {"caller_agent_id": "alice", "message_id": mid, "reason": "old"})
        assert set(dele) >= {"message_id", "deleted_at"}
        m = c.call("message.get", {"message_id": mid})["message"]
        assert m["deleted"] is True and m["metadata"]["delete_reason"] == "old"
        assert m["metadata"]["deleted_at"] == dele["deleted_at"]
        for method, params, code in (
                ("message.delete", {"caller_agent_id": "alice", "message_id": mid}, -32003),
                ("message.edit", {"caller_agent_id": "alice", "message_id": mid, "content": "z"}, -32003),
                ("message.get", {"message_id": "msg_nope"}, -32001),
                ("message.send", {"caller_agent_id": "alice", "content": "x", "reply_to": "msg_nope"}, -32001),
                ("message.send", {"caller_agent_id": "alice", "content": "x", "format": "html"}, -32602),
                ("message.send", {"caller_agent_id": "alice", "content": "x", "priority": "urgent"}, -32602),
                ("message.send", {"caller_agent_id": "alice"}, -32602)):
            with pytest.raises(RPCError) as exc:
                c.call(method, params)
            assert exc.value.code == code, (method, params)
        # Deleted messages are hidden from lists unless asked for.
        assert c.call("message.list", {})["total"] == 1
        assert c.call("message.list", {"include_deleted": True})["total"] == 2
    assert_log_clean(t)


def test_client_id_retry_returns_the_same_message(agents):
    t = agents
    with t.client() as c:
        params = {"caller_agent_id": "alice", "content": "once", "client_id": "cli_retry_1"}
        first = c.call("message.send", params)
        second = c.call("message.send", params)
        assert second["message_id"] == first["message_id"]
        assert second.get("duplicate") is True and "duplicate" not in first
        assert second["created_at"] == first["created_at"]
        # The same client id from another author is another message.
        other = c.call("message.send", {**params, "caller_agent_id": "bob"})
        assert other["message_id"] != first["message_id"]
        assert c.call("message.list", {})["total"] == 2
    assert message_create_counts(t.sync_dir)[first["message_id"]] == 1
    assert_log_clean(t)


def test_groups_and_team(agents):
    t = agents
    with t.client() as c:
        g = c.call("group.create", {"name": "crew", "description": "the crew", "caller_agent_id": "alice"})
        assert set(g) == {"group_id", "name", "created_at"} and g["group_id"].startswith("grp_")
        add = c.call("group.member.add", {"group": "crew", "member_type": "agent", "member_value": "bob"})
        assert {k: add[k] for k in ("group", "member_type", "member_value")} == \
            {"group": "crew", "member_type": "agent", "member_value": "bob"}
        c.call("group.member.add", {"group": "crew", "member_type": "role", "member_value": "implementer"})
        lines = log_lines(t.sync_dir)
        same = c.call("group.member.add", {"group": "crew", "member_type": "agent", "member_value": "bob"})
        assert same["status"] == "unchanged"
        gone = c.call("group.member.remove", {"group": "crew", "member_type": "agent", "member_value": "carol"})
        assert gone["status"] == "not_a_member"
        assert log_lines(t.sync_dir) == lines  # no event when nothing changes
        groups = {x["name"]: x for x in c.call("group.list", None)["groups"]}
        assert set(groups) == {"crew", "everyone"}
        _has(groups["crew"], "group_id", "name", "member_count", "created_at")
        assert groups["crew"]["member_count"] == 2 and groups["crew"]["description"] == "the crew"
        info = c.call("group.info", {"name": "crew"})
        _has(info, "group_id", "name", "created_at", "created_by", "members")
        assert info["created_by"] == "alice"
        assert sorted((m["member_type"], m["member_value"]) for m in info["members"]) == \
            [("agent", "bob"), ("role", "implementer")]
        for m in info["members"]:
            _has(m, "member_type", "member_value", "added_at")
        members = c.call("group.members", {"name": "crew", "expand": True})
        assert members["expanded"] == ["alice", "bob"]
        assert "expanded" not in c.call("group.members", {"name": "crew"})
        everyone = c.call("group.members", {"name": "everyone", "expand": True})
        assert everyone["members"] == [{"member_type": "role", "member_value": "*"}]
        assert everyone["expanded"] == ["alice", "bob"]
        rem = c.call("group.member.remove", {"group": "crew", "member_type": "agent", "member_value": "bob"})
        assert rem["member_value"] == "bob"
        assert c.call("group.members", {"name": "crew", "expand": True})["expanded"] == ["alice"]

        team = c.call("team.list", {})
        assert [m["agent_id"] for m in team["members"]] == ["alice", "bob"]
        for m in team["members"]:
            _has(m, "agent_id", "role", "module", "unmerged_commits", "inbox_total", "inbox_unread", "status")
            assert m["status"] == "active"
        c.call("message.send", {"caller_agent_id": "alice", "content": "to bob", "mentions": ["@bob"]})
        bob = next(m for m in c.call("team.list", {})["members"] if m["agent_id"] == "bob")
        assert (bob["inbox_total"], bob["inbox_unread"]) == (1, 1)

        dele = c.call("group.delete", {"name": "crew"})
        assert dele["name"] == "crew"
        _has(dele, "deleted_at")
        for method, params, code in (
                ("group.delete", {"name": "everyone"}, -32002),
                ("group.member.add", {"group": "everyone", "member_type": "agent", "member_value": "bob"}, -32002),
                ("group.delete", {"name": "crew"}, -32001),
                ("group.info", {"name": "crew"}, -32001),
                ("group.create", {}, -32602),
                ("group.create", {"name": "Bad Name"}, -32602),
                ("group.create", {"name": "alice"}, -32003),
                ("group.member.add", {"group": "everyone"}, -32002)):
            with pytest.raises(RPCError) as exc:
                c.call(method, params)
            assert exc.value.code == code, (method, params, exc.value.message)
    assert_log_clean(t)
