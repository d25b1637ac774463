"""Subscriptions: the CLI and RPC surface, persistence, matching, and push to Unix-socket clients."""

from __future__ import annotations

import json

import pytest

from _rt import UnixListener
from thrum.push import MessageFacts, Subscription, match, preview
from thrum.rpc import RPCError


@pytest.fixture
def env(env):
    env["THRUM_WS_PORT"] = "0"  # any free port: tests never fight over 9999
    return env


# -- matching (no daemon) --------------------------------------------------------------------

def test_match_types_and_own_messages():
    msg = MessageFacts("alice", scopes=[("module", "auth")], mentions=["bob", "reviewer"], groups=["team"],
                       created_ns=10)
    assert match(Subscription(1, "bob", all=True), msg) == "all"
    assert match(Subscription(1, "bob", scope=("module", "auth")), msg) == "scope"
    assert match(Subscription(1, "bob", scope=("module", "db")), msg) is None
    assert match(Subscription(1, "carol", mention="reviewer"), msg) == "mention"
    assert match(Subscription(1, "carol", mention="team"), msg) == "mention"  # a group post mentions the group
    assert match(Subscription(1, "carol", mention="planner"), msg) is None
    # your own messages never match your subscriptions, nor those you wrote acting as someone
    assert match(Subscription(1, "alice", all=True), msg) is None
    assert match(Subscription(1, "user:leon", all=True), MessageFacts("bob", authored_by="user:leon")) is None
    # `after` cuts off older messages
    assert match(Subscription(1, "bob", all=True, after_ns=10), msg) is None


def test_inbox_matching():
    direct = MessageFacts("alice", mentions=["bob"], created_ns=1)
    by_role = MessageFacts("alice", mentions=["reviewer"], created_ns=1)
    group = MessageFacts("alice", groups=["team"], created_ns=1)
    other_group = MessageFacts("alice", groups=["ops"], created_ns=1)
    broadcast = MessageFacts("alice", broadcast=True, created_ns=1)
    to_carol = MessageFacts("alice", mentions=["carol"], created_ns=1)
    sub = Subscription(1, "bob", inbox=True)
    groups = lambda: frozenset({"team", "everyone"})  # noqa: E731
    assert match(sub, direct, "reviewer", groups) == "mention"
    assert match(sub, by_role, "reviewer", groups) == "mention"
    assert match(sub, group, "reviewer", groups) == "group"
    assert match(sub, other_group, "reviewer", groups) is None
    assert match(sub, broadcast, "reviewer", groups) == "broadcast"
    assert match(sub, to_carol, "reviewer", groups) is None


def test_preview_cuts_characters_not_bytes():
    assert preview("short") == "short"
    text = "é" * 150
    p = preview(text)
    assert p == "é" * 100 + "…"
    assert preview("x" * 100) == "x" * 100


# -- CLI and RPC ----------------------------------------------------------------------------------

def test_subscribe_list_unsubscribe(agents):
    t = agents
    assert t.json("subscriptions", name="bob") == {"subscriptions": []}  # [] never null
    r1 = t.json("subscribe", "--scope", "module:auth", name="bob")
    assert set(r1) >= {"subscription_id", "session_id", "created_at"}
    assert isinstance(r1["subscription_id"], int) and r1["session_id"].startswith("ses_")
    r2 = t.json("subscribe", "--mention", "@implementer", name="bob")
    r3 = t.json("subscribe", "--all", name="bob")
    subs = t.json("subscriptions", name="bob")["subscriptions"]
    assert [s["id"] for s in subs] == [r3["subscription_id"], r2["subscription_id"], r1["subscription_id"]]
    assert subs[2]["scope_type"] == "module" and subs[2]["scope_value"] == "auth"
    assert subs[1]["mention_role"] == "implementer"  # a leading @ is not part of the role
    assert subs[0]["all"] is True
    human = t.run("subscriptions", name="bob").stdout
    assert "Active subscriptions (3):" in human and "Scope (module:auth)" in human
    assert "All messages (firehose)" in human

    # only the owner removes a subscription
    proc = t.run("unsubscribe", str(r1["subscription_id"]), "--json", name="alice", check=False)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["error"]["code"] == -32002
    out = t.run("unsubscribe", str(r1["subscription_id"]), name="bob").stdout
    assert f"Subscription #{r1['subscription_id']} removed" in out
    proc = t.run("unsubscribe", str(r1["subscription_id"]), name="bob", check=False)
    assert proc.returncode == 1 and "No subscription" in proc.stderr
    assert len(t.json("subscriptions", name="bob")["subscriptions"]) == 2
    assert t.json("subscriptions", name="alice") == {"subscriptions": []}


def test_subscribe_usage_and_duplicates(agents):
    t = agents
    assert t.run("subscribe", name="bob", check=False).returncode == 2
    proc = t.run("subscribe", "--all", "--scope", "a:b", name="bob", check=False)
    assert proc.returncode == 2 and "mutually exclusive" in proc.stderr
    assert t.run("subscribe", "--scope", "nocolon", name="bob", check=False).returncode == 2
    assert t.run("unsubscribe", "x", name="bob", check=False).returncode == 2
    first = t.json("subscribe", "--all", name="bob")
    proc = t.run("subscribe", "--all", "--json", name="bob", check=False)
    assert proc.returncode == 1
    err = json.loads(proc.stdout)["error"]
    assert "already exists" in err["message"] and err["data"]["subscription_id"] == first["subscription_id"]
    with pytest.raises(RPCError) as exc:
        t.call("subscribe", caller_agent_id="bob")
    assert "at least one of" in exc.value.message


def test_subscriptions_survive_restart_and_rebuild(agents):
    t = agents
    sub = t.json("subscribe", "--scope", "module:auth", name="bob")
    gone = t.json("subscribe", "--all", name="bob")
    t.run("unsubscribe", str(gone["subscription_id"]), name="bob")
    events = (t.sync_dir / "events.jsonl").read_text()
    assert '"type":"subscription.create"' in events and '"type":"subscription.delete"' in events
    t.stop()
    t.start()
    assert [s["id"] for s in t.json("subscriptions", name="bob")["subscriptions"]] == [sub["subscription_id"]]
    t.stop()
    (t.var / "messages.db").unlink()  # the projection is rebuilt from the log at start
    t.start()
    assert [s["id"] for s in t.json("subscriptions", name="bob")["subscriptions"]] == [sub["subscription_id"]]
    # ids are never reused, even after a delete
    again = t.json("subscribe", "--all", name="bob")
    assert again["subscription_id"] > gone["subscription_id"]
    # and a stored subscription still pushes after the restart
    listener = UnixListener(t)
    try:
        listener.call("subscriptions.attach", caller_agent_id="bob")
        t.run("send", "auth news", "--scope", "module:auth", name="alice")
        note = listener.notification("notification.message", lambda p: p["preview"] == "auth news")
        assert note["matched_subscription"]["subscription_id"] in (sub["subscription_id"], again["subscription_id"])
    finally:
        listener.close()


# -- push over the Unix socket ----------------------------------------------------------------------

def test_unix_subscriber_receives_notification(agents):
    t = agents
    listener = UnixListener(t)
    try:
        sub = listener.call("subscribe", caller_agent_id="bob", scope={"type": "module", "value": "auth"})
        t.run("send", "the login flow is ready " + "x" * 120, "--scope", "module:auth", "--to", "@bob",
              name="alice")
        note = listener.notification("notification.message")
        assert note["matched_subscription"] == {"subscription_id": sub["subscription_id"], "match_type": "scope"}
        assert note["event"] == "created"
        assert note["author"]["agent_id"] == "alice" and note["author"]["role"] == "implementer"
        assert note["preview"].startswith("the login flow is ready") and note["preview"].endswith("…")
        assert len(note["preview"]) == 101
        assert note["scopes"] == [{"type": "module", "value": "auth"}]
        assert {"type": "mention", "value": "bob"} in note["refs"]
        assert note["thread_id"] == "" and note["message_id"].startswith("msg_")
        # one notification per message, even when several subscriptions match
        listener.call("subscribe", caller_agent_id="bob", all=True)
        t.run("send", "second", "--scope", "module:auth", name="alice")
        note = listener.notification("notification.message", lambda p: p["preview"] == "second")
        assert not [n for n in listener.notes if n.get("method") == "notification.message"
                    and n["params"]["message_id"] == note["message_id"]]
        # bob's own messages are not pushed back to bob
        t.run("send", "from bob", "--scope", "module:auth", name="bob")
        t.run("send", "marker", name="alice")
        assert listener.notification("notification.message", lambda p: p["preview"] == "marker")
        assert not [n for n in listener.notes if n.get("params", {}).get("preview") == "from bob"]
    finally:
        listener.close()


def test_edits_and_deletes_are_pushed(agents):
    t = agents
    listener = UnixListener(t)
    try:
        listener.call("subscribe", caller_agent_id="bob", all=True)
        sent = t.json("send", "v1", name="alice")
        listener.notification("notification.message", lambda p: p["event"] == "created")
        t.run("message", "edit", sent["message_id"], "v2", name="alice")
        note = listener.notification("notification.message", lambda p: p["event"] == "edited")
        assert note["preview"] == "v2" and note["message_id"] == sent["message_id"]
        t.run("message", "delete", sent["message_id"], "--force", name="alice")
        note = listener.notification("notification.message", lambda p: p["event"] == "deleted")
        assert note["message_id"] == sent["message_id"]
    finally:
        listener.close()


def test_attached_connection_gets_agent_session_group_notifications(agents):
    t = agents
    listener = UnixListener(t)
    try:
        assert listener.call("subscriptions.attach", caller_agent_id="bob")["attached"] is True
        t.quickstart("carol", "planner", "core")
        note = listener.notification("notification.agent", lambda p: p["agent_id"] == "carol")
        assert note["event"] == "registered" and note["role"] == "planner"
        note = listener.notification("notification.session", lambda p: p["agent_id"] == "carol")
        assert note["event"] == "started" and note["session_id"].startswith("ses_")
        t.run("session", "end", name="carol")
        note = listener.notification("notification.session", lambda p: p["event"] == "ended")
        assert note["agent_id"] == "carol"
        t.call("group.create", name="reviewers", caller_agent_id="alice")
        note = listener.notification("notification.group")
        assert note["event"] == "created" and note["name"] == "reviewers"
        # a threaded message updates its thread summary
        t.run("send", "in a thread", "--thread", "thr_1", name="alice")
        note = listener.notification("notification.thread.updated")
        assert note["thread_id"] == "thr_1" and note["message_count"] == 1 and note["unread_count"] == 1
        assert listener.call("subscriptions.detach")["detached"] is True
    finally:
        listener.close()


def test_temporary_subscription_lives_with_its_connection(agents):
    t = agents
    listener = UnixListener(t)
    try:
        sub = listener.call("subscribe", caller_agent_id="bob", inbox=True, temporary=True)
        assert sub["subscription_id"] < 0 and sub["temporary"] is True
        listed = t.call("subscriptions.list", caller_agent_id="bob")["subscriptions"]
        assert [s["id"] for s in listed] == [sub["subscription_id"]] and listed[0]["temporary"] is True
        t.run("send", "for bob", "--to", "@bob", name="alice")
        note = listener.notification("notification.message")
        assert note["matched_subscription"] == {"subscription_id": sub["subscription_id"], "match_type": "mention"}
    finally:
        listener.close()
    from conftest import wait_for

    wait_for(lambda: t.call("subscriptions.list", caller_agent_id="bob")["subscriptions"] == [],
             what="the temporary subscription to go with its connection")
    # a temporary subscription writes nothing to the log
    assert "subscription.create" not in (t.sync_dir / "events.jsonl").read_text()


def test_sync_status_changes_become_notifications():
    """The sync loop owns its status; push announces changes of it (no daemon needed to check)."""
    from thrum.push import Push

    class Loop:
        def call_later(self, delay, fn, *args):
            return [delay, fn]

    class Service:
        status = {"sync_state": "idle", "last_sync_at": "", "seconds_since": 1}

        def sync_status(self):
            return dict(self.status)

    class Daemon:
        loop, service = Loop(), Service()

    class Conn:
        ctx = None

        def __init__(self):
            self.notes = []

        def notify(self, method, params):
            self.notes.append((method, params))

    push = Push()
    push.daemon = Daemon()
    conn = Conn()
    push.attach(conn, "bob")
    push._watch_sync()  # the first look only records the state
    Service.status = {**Service.status, "seconds_since": 3}
    push._watch_sync()  # a counter ticking is not news
    assert conn.notes == []
    Service.status = {"sync_state": "synced", "last_sync_at": "2026-01-01T00:00:00Z", "seconds_since": 0}
    push._watch_sync()
    assert [m for m, _ in conn.notes] == ["notification.sync"]
    assert conn.notes[0][1]["sync_state"] == "synced" and conn.notes[0][1]["timestamp"]


def test_cli_real_time_commands_never_load_websockets(agents):
    """The CLI starts fast: only the daemon imports websockets (inside ws.py functions)."""
    import subprocess
    import sys

    code = ("import io, sys, contextlib\n"
            "from thrum.cli import main\n"
            "for argv in (['subscriptions'], ['wait', '--timeout', '0.1s'], ['ui', '--no-open'], ['status']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            "        main(argv)\n"
            "print(sorted(m for m in ('websockets', 'sqlite3', 'mcp', 'asyncio') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=agents.repo, env={**agents.env, "THRUM_NAME": "bob"},
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr
