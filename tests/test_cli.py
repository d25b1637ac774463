"""CLI conventions: --json on every command (spec field names), errors as JSON, exit codes 0/1/2."""

import json

import pytest

from helpers import assert_log_clean


def _json(proc):
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"not one JSON document: {proc.stdout!r} (stderr {proc.stderr!r})") from None


def test_every_command_speaks_json(agents):
    t = agents
    mid = t.json("send", "hello", "--to", "@bob", name="alice")["message_id"]
    # (argv, identity, keys the JSON must have)
    cases = [
        (("init",), None, {"repository", "already"}),
        (("version",), None, {"version"}),
        (("config", "show"), "alice", {"config_file", "runtime", "daemon", "identity"}),
        (("daemon", "status"), None, {"running", "status", "pid"}),
        (("whoami",), "alice", {"agent_id", "role", "module", "display", "worktree", "identity_file", "repo_id",
                                "updated_at"}),
        (("agent", "whoami"), "alice", {"agent_id", "role", "module", "display", "source", "session_id",
                                        "session_start"}),
        (("agent", "list"), None, {"agents"}),
        (("agent", "register", "--name", "zoe", "--role", "tester", "--module", "qa"), None,
         {"agent_id", "status"}),
        (("session", "list"), None, {"sessions"}),
        (("session", "heartbeat"), "alice", {"session_id", "last_seen_at"}),
        (("session", "set-intent", "x"), "alice", {"session_id", "intent", "intent_updated_at"}),
        (("session", "set-task", "y"), "alice", {"session_id", "current_task", "task_updated_at"}),
        (("send", "second", "--to", "@bob"), "alice", {"message_id", "created_at"}),
        (("reply", mid, "answer"), "bob", {"message_id", "created_at"}),
        (("inbox",), "bob", {"messages", "total", "unread", "page", "page_size", "total_pages"}),
        (("message", "get", mid), "bob", {"message"}),
        (("message", "edit", mid, "hello v2"), "alice", {"message_id", "updated_at", "version"}),
        (("message", "read", mid), "bob", {"marked_count"}),
        (("group", "create", "crew"), "alice", {"group_id", "name", "created_at"}),
        (("group", "add", "crew", "@bob"), "alice", {"group", "member_type", "member_value"}),
        (("group", "list"), None, {"groups"}),
        (("group", "info", "crew"), None, {"group_id", "name", "created_at", "created_by", "members"}),
        (("group", "members", "crew", "--expand"), None, {"members", "expanded"}),
        (("group", "remove", "crew", "@bob"), "alice", {"group", "member_type", "member_value"}),
        (("group", "delete", "crew"), "alice", {"name", "deleted_at"}),
        (("team",), None, {"members"}),
        (("status",), "alice", {"health", "agent", "inbox"}),
        (("message", "delete", mid, "--force"), "alice", {"message_id", "deleted_at"}),
        (("session", "start"), "zoe", {"session_id", "agent_id", "started_at"}),
        (("session", "end"), "zoe", {"session_id", "ended_at", "duration_ms"}),
        (("quickstart", "--name", "yan", "--role", "tester", "--module", "qa"), None, {"register", "session"}),
        (("agent", "delete", "yan", "--force"), None, {"agent_id", "deleted"}),
    ]
    for argv, who, keys in cases:
        proc = t.run(*argv, "--json", name=who, check=False)
        assert proc.returncode == 0, (argv, proc.stdout, proc.stderr)
        data = _json(proc)
        assert isinstance(data, dict) and keys <= set(data), (argv, keys - set(data))
        assert "✓" not in proc.stdout and "Tip" not in proc.stdout
    # Field names inside the nested results.
    msg = t.json("message", "get", mid, name="bob")["message"]
    assert {"message_id", "author", "body", "scopes", "refs", "metadata", "created_at", "deleted"} <= set(msg)
    assert set(msg["author"]) >= {"agent_id", "session_id"}
    listed = t.json("inbox", "--all", name="bob")["messages"][0]
    assert {"message_id", "agent_id", "body", "created_at", "deleted", "is_read"} <= set(listed)
    agent = t.json("agent", "list")["agents"][0]
    assert {"agent_id", "kind", "role", "module", "display", "registered_at"} <= set(agent)
    member = t.json("team")["members"][0]
    assert {"agent_id", "role", "module", "status", "inbox_total", "inbox_unread", "unmerged_commits"} <= set(member)
    # The global flag may come first.
    assert _json(t.run("--json", "whoami", name="alice"))["agent_id"] == "alice"
    assert_log_clean(t)


def test_errors_are_json_under_json(agents):
    t = agents
    failures = [
        (("message", "get", "msg_nope"), "bob", 1, -32001),
        (("send", "x", "--to", "@nobody"), "alice", 1, -32001),
        (("group", "delete", "nope"), "alice", 1, -32001),
        (("agent", "delete", "ghost", "--force"), None, 1, -32001),
        (("whoami",), None, 1, None),  # two identities, none chosen
        (("send",), "alice", 2, None),  # missing MESSAGE
        (("inbox", "--bogus"), "alice", 2, None),
        (("frobnicate",), None, 2, None),
        (("inbox", "--page-size", "500"), "alice", 2, None),
    ]
    for argv, who, code, rpc_code in failures:
        proc = t.run(*argv, "--json", name=who, check=False)
        assert proc.returncode == code, (argv, proc.returncode, proc.stderr)
        err = _json(proc)["error"]
        assert err["message"] and err["exit_code"] == code, (argv, err)
        if rpc_code is not None:
            assert err["code"] == rpc_code, (argv, err)
        assert "Traceback" not in proc.stderr
    assert_log_clean(t)


def test_exit_codes_and_plain_errors(agents):
    t = agents
    assert t.run("--version").returncode == 0
    bare = t.run()
    assert bare.returncode == 0 and "usage: thrum" in bare.stdout
    assert "commands" in t.run("agent").stdout
    help_all = t.run("--help")
    assert help_all.returncode == 0
    for command in ("send", "inbox", "daemon", "group", "session", "agent", "message", "migrate"):
        assert command in help_all.stdout
    for argv in (("group", "add", "--help"), ("send", "--help"), ("inbox", "--help")):
        assert t.run(*argv).returncode == 0
    usage = t.run("send", name="alice", check=False)
    assert usage.returncode == 2 and usage.stderr.startswith("Error: ")
    unknown = t.run("frobnicate", check=False)
    assert unknown.returncode == 2 and "frobnicate" in unknown.stderr
    failure = t.run("message", "get", "msg_nope", name="bob", check=False)
    assert failure.returncode == 1 and "message not found: msg_nope" in failure.stderr
    assert failure.stdout == ""


def test_quiet_hides_confirmations(agents):
    t = agents
    proc = t.run("send", "hush", "--to", "@bob", "--quiet", name="alice")
    assert proc.stdout == ""
    assert "✓" not in t.run("session", "heartbeat", "--quiet", name="alice").stdout
    # Results are still shown.
    assert "hush" in t.run("inbox", "--quiet", name="bob").stdout


@pytest.mark.parametrize("where", ["subdir", "outside"])
def test_commands_find_the_repository(agents, tmp_path, where):
    t = agents
    if where == "subdir":
        sub = t.repo / "src" / "deep"
        sub.mkdir(parents=True)
        assert t.json("whoami", name="alice", cwd=sub)["agent_id"] == "alice"
        assert t.json("inbox", name="bob", cwd=sub)["total"] == 0
    else:
        proc = t.run("inbox", name="bob", cwd=tmp_path, check=False)
        assert proc.returncode == 1 and "thrum init" in proc.stderr
        assert t.json("inbox", "--repo", str(t.repo), name="bob", cwd=tmp_path)["total"] == 0
