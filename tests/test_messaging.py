"""Messaging through the CLI: addressing, replies, priority, unknown recipients, authorship, read state."""

import json

import pytest

from helpers import assert_log_clean


@pytest.fixture
def crew(daemon):
    """alice (implementer@auth), bob (reviewer@auth), carol (reviewer@ui), dave (planner@core), all in session."""
    for name, role, module in (("alice", "implementer", "auth"), ("bob", "reviewer", "auth"),
                               ("carol", "reviewer", "ui"), ("dave", "planner", "core")):
        daemon.quickstart(name, role, module)
    return daemon


def inbox(t, name, *extra):
    return t.json("inbox", "--peek", "--page-size", "100", *extra, name=name)


def contents(t, name, *extra):
    return sorted(m["body"]["content"] for m in inbox(t, name, *extra)["messages"])


def test_addressing_reaches_the_right_inboxes(crew):
    t = crew
    t.json("group", "create", "frontend", name="alice")
    t.json("group", "add", "frontend", "@carol", name="alice")
    sends = {
        "direct": ["--to", "@bob"],
        "role": ["--to", "@reviewer"],
        "group": ["--to", "@frontend"],
        "everyone": ["--to", "@everyone"],
        "broadcast": [],
        "mention": ["--mention", "@dave"],
        "two": ["--to", "bob", "--to", "@dave"],
    }
    ids = {text: t.json("send", text, *flags, name="alice")["message_id"] for text, flags in sends.items()}
    assert contents(t, "bob") == sorted(["direct", "role", "everyone", "broadcast", "two"])
    assert contents(t, "carol") == sorted(["role", "group", "everyone", "broadcast"])
    assert contents(t, "dave") == sorted(["everyone", "broadcast", "mention", "two"])
    assert contents(t, "alice") == []  # own messages are not in one's inbox
    assert len(inbox(t, "bob", "--all")["messages"]) == 7
    # Membership is resolved when reading: a role added to the group sees its messages.
    t.json("group", "add", "frontend", "--role", "planner", name="alice")
    assert "group" in contents(t, "dave")
    # A reply reaches the author of the message it answers, and only the people addressed.
    reply = t.json("reply", ids["direct"], "got it", name="bob")
    assert contents(t, "alice") == ["got it"]
    assert "got it" not in contents(t, "carol") + contents(t, "dave")
    got = t.json("message", "get", reply["message_id"], name="alice")["message"]
    assert got["reply_to"] == ids["direct"]
    # A reply to a group message goes to the group again.
    t.json("reply", ids["group"], "group reply", name="carol")
    assert "group reply" in contents(t, "alice") and "group reply" in contents(t, "dave")
    assert "group reply" not in contents(t, "bob")
    # send --reply-to works the same way.
    t.json("send", "via flag", "--reply-to", ids["mention"], name="dave")
    assert "via flag" in contents(t, "alice")
    human = t.run("inbox", "--peek", name="alice").stdout
    assert "↳" in human or "got it" in human
    assert_log_clean(t)


def test_scope_ref_thread_and_priority(crew):
    t = crew
    sent = t.json("send", "urgent fix", "--to", "@bob", "--scope", "module:auth", "--ref", "ticket:42,pr:7",
                  "--thread", "thr_x", "--priority", "high", name="alice")
    assert sent["thread_id"] == "thr_x"
    t.json("send", "plain one", "--to", "@bob", name="alice")
    m = t.json("message", "get", sent["message_id"], name="bob")["message"]
    assert m["priority"] == "high"
    assert {"type": "module", "value": "auth"} in m["scopes"]
    assert {"type": "ticket", "value": "42"} in m["refs"] and {"type": "pr", "value": "7"} in m["refs"]
    assert m["thread_id"] == "thr_x"
    assert "Priority: high" in t.run("message", "get", sent["message_id"], name="bob").stdout
    listed = {x["body"]["content"]: x for x in inbox(t, "bob")["messages"]}
    assert listed["urgent fix"]["priority"] == "high" and listed["plain one"]["priority"] == "normal"
    human = t.run("inbox", "--peek", name="bob").stdout
    line = next(ln for ln in human.splitlines() if sent["message_id"] in ln)
    assert "[high]" in line
    assert contents(t, "bob", "--scope", "module:auth") == ["urgent fix"]
    proc = t.run("send", "x", "--priority", "urgent", name="alice", check=False)
    assert proc.returncode == 2
    proc = t.run("send", "x", "--scope", "nocolon", name="alice", check=False)
    assert proc.returncode == 2 and "type:value" in proc.stderr
    assert_log_clean(t)


def test_unknown_recipient_is_an_error_naming_close_matches(crew):
    t = crew
    before = t.call("message.list", include_deleted=True)["total"]
    proc = t.run("send", "hi", "--to", "@bobb", name="alice", check=False)
    assert proc.returncode == 1
    assert "@bobb" in proc.stderr and "@bob" in proc.stderr.replace("@bobb", "")
    out = t.run("send", "hi", "--to", "@bobb", "--json", name="alice", check=False)
    assert out.returncode == 1
    err = json.loads(out.stdout)["error"]
    assert err["code"] == -32001 and err["data"]["suggestions"] == ["bob"] and err["exit_code"] == 1
    proc = t.run("send", "hi", "--mention", "@reviewr", name="alice", check=False)
    assert proc.returncode == 1 and "@reviewer" in proc.stderr
    proc = t.run("send", "hi", "--to", "@zzzzzz", name="alice", check=False)
    assert proc.returncode == 1 and "zzzzzz" in proc.stderr
    assert t.call("message.list", include_deleted=True)["total"] == before
    assert_log_clean(t)


def test_only_the_author_edits_or_deletes(crew):
    t = crew
    mid = t.json("send", "original", "--to", "@bob", name="alice")["message_id"]
    proc = t.run("message", "edit", mid, "hijacked", name="bob", check=False)
    assert proc.returncode == 1 and "only message author" in proc.stderr
    err = json.loads(t.run("message", "edit", mid, "hijacked", "--json", name="bob", check=False).stdout)["error"]
    assert err["code"] == -32002
    err = json.loads(t.run("message", "delete", mid, "--force", "--json", name="bob", check=False).stdout)["error"]
    assert err["code"] == -32002
    assert t.json("message", "get", mid, name="bob")["message"]["body"]["content"] == "original"

    edited = t.json("message", "edit", mid, "revised", name="alice")
    assert edited["message_id"] == mid and edited["version"] == 1
    m = t.json("message", "get", mid, name="bob")["message"]
    assert m["body"]["content"] == "revised" and m["updated_at"] == edited["updated_at"]
    assert "Edited:" in t.run("message", "get", mid, name="bob").stdout

    proc = t.run("message", "delete", mid, name="alice", check=False)
    assert proc.returncode == 2 and "--force" in proc.stderr
    deleted = t.json("message", "delete", mid, "--force", name="alice")
    assert deleted["message_id"] == mid
    assert t.json("message", "get", mid, name="bob")["message"]["deleted"] is True
    assert "DELETED" in t.run("message", "get", mid, name="bob").stdout
    assert contents(t, "bob") == []
    proc = t.run("message", "delete", mid, "--force", name="alice", check=False)
    assert proc.returncode == 1 and "already deleted" in proc.stderr
    assert_log_clean(t)


def test_read_tracking_and_pagination(crew):
    t = crew
    ids = [t.json("send", f"m{i}", "--to", "@bob", name="alice")["message_id"] for i in range(5)]
    first = inbox(t, "bob")
    assert (first["total"], first["unread"]) == (5, 5)
    assert [m["message_id"] for m in first["messages"]] == ids[::-1]  # newest first
    assert all(m["is_read"] is False for m in first["messages"])
    assert inbox(t, "bob", "--unread")["total"] == 5  # --peek marked nothing

    page = t.json("inbox", "--page-size", "2", "--page", "2", name="bob")
    assert (page["page"], page["page_size"], page["total"], page["total_pages"]) == (2, 2, 5, 3)
    assert [m["message_id"] for m in page["messages"]] == [ids[2], ids[1]]
    unread = inbox(t, "bob", "--unread")
    assert sorted(m["message_id"] for m in unread["messages"]) == sorted([ids[0], ids[3], ids[4]])
    assert unread["unread"] == 3

    read = t.json("message", "read", ids[4], name="bob")
    assert read["marked_count"] == 1
    assert sorted(m["message_id"] for m in inbox(t, "bob", "--unread")["messages"]) == sorted([ids[0], ids[3]])
    # Read state is per agent.
    assert t.call("message.get", message_id=ids[4], caller_agent_id="bob")["message"]["is_read"] is True
    assert t.call("message.get", message_id=ids[4], caller_agent_id="carol")["message"]["is_read"] is False
    all_read = t.json("message", "read", "--all", name="bob")
    assert all_read["marked_count"] == 2
    assert inbox(t, "bob", "--unread")["messages"] == []
    assert "No unread messages." in t.run("message", "read", "--all", name="bob").stdout
    proc = t.run("message", "read", name="bob", check=False)
    assert proc.returncode == 2

    # The human inbox marks what it shows.
    t.json("send", "fresh", "--to", "@bob", name="alice")
    shown = t.run("inbox", name="bob").stdout
    assert "fresh" in shown and "(1 unread)" in shown
    assert inbox(t, "bob", "--unread")["messages"] == []
    final = inbox(t, "bob")
    assert final["unread"] == 0 and all(m["is_read"] for m in final["messages"])
    # Bad page sizes are usage errors.
    for size in ("0", "101"):
        proc = t.run("inbox", "--page-size", size, name="bob", check=False)
        assert proc.returncode == 2, size
    assert_log_clean(t)
