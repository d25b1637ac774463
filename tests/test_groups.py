"""Groups through the CLI: create, members (agent, role, nested group), info, list, delete, the rules."""

import json

from helpers import assert_log_clean


def test_group_commands(agents):
    t = agents
    t.quickstart("carol", "planner", "ui")
    created = t.json("group", "create", "@backend", "--description", "Backend crew", name="alice")
    assert created["name"] == "backend" and created["group_id"].startswith("grp_")
    assert "✓ Group created: ops" in t.run("group", "create", "ops", name="alice").stdout

    add = t.json("group", "add", "backend", "@bob", name="alice")
    assert (add["group"], add["member_type"], add["member_value"]) == ("backend", "agent", "bob")
    assert "✓ Added role:planner to backend" in t.run("group", "add", "backend", "--role", "planner",
                                                       name="alice").stdout
    nested = t.json("group", "add", "ops", "--group", "backend", name="alice")
    assert nested["member_type"] == "group"
    again = t.json("group", "add", "backend", "@bob", name="alice")
    assert again["member_value"] == "bob"  # adding twice is harmless

    groups = {g["name"]: g for g in t.json("group", "list")["groups"]}
    assert set(groups) == {"backend", "ops", "everyone"}
    assert groups["backend"]["member_count"] == 2 and groups["backend"]["description"] == "Backend crew"
    listing = t.run("group", "list").stdout
    assert "backend" in listing and "Backend crew" in listing and "2 members" in listing

    info = t.json("group", "info", "backend")
    assert info["created_by"] == "alice" and info["description"] == "Backend crew"
    assert sorted((m["member_type"], m["member_value"]) for m in info["members"]) == \
        [("agent", "bob"), ("role", "planner")]
    human = t.run("group", "info", "backend").stdout
    assert "Members (2):" in human and "@bob" in human and "role:planner" in human
    assert "role:* (all agents)" in t.run("group", "info", "everyone").stdout

    assert t.json("group", "members", "ops", "--expand")["expanded"] == ["bob", "carol"]
    assert t.json("group", "members", "everyone", "--expand")["expanded"] == ["alice", "bob", "carol"]
    assert "Expanded (2 agents):" in t.run("group", "members", "backend", "--expand").stdout

    # Messages to the nested group reach its members' members.
    t.json("send", "ops call", "--to", "@ops", name="alice")
    carol = t.json("inbox", "--peek", name="carol")
    assert [m["body"]["content"] for m in carol["messages"]] == ["ops call"]

    removed = t.json("group", "remove", "backend", "--role", "planner", name="alice")
    assert removed["member_value"] == "planner"
    proc = t.run("group", "remove", "backend", "--role", "planner", name="alice", check=False)
    assert proc.returncode == 1 and "not a member" in proc.stderr
    assert t.json("group", "members", "ops", "--expand")["expanded"] == ["bob"]

    deleted = t.json("group", "delete", "ops", name="alice")
    assert deleted["name"] == "ops"
    assert {g["name"] for g in t.json("group", "list")["groups"]} == {"backend", "everyone"}
    # A deleted group's name can be used again.
    assert t.json("group", "create", "ops", name="alice")["name"] == "ops"
    assert_log_clean(t)


def test_group_rules(agents):
    t = agents
    t.json("group", "create", "crew", name="alice")
    cases = [
        (("group", "create", "crew"), 1, "already exists"),
        (("group", "create", "Bad Name"), 1, "invalid group name"),
        (("group", "create", "alice"), 1, "agent"),         # may not shadow an agent
        (("group", "create", "reviewer"), 1, "role"),       # nor a role
        (("group", "delete", "everyone"), 1, "built-in"),
        (("group", "add", "everyone", "@bob"), 1, "built-in"),
        (("group", "delete", "nope"), 1, "not found"),
        (("group", "add", "nope", "@bob"), 1, "not found"),
        (("group", "add", "crew", "@ghost"), 1, "ghost"),
        (("group", "add", "crew", "--group", "crew"), 1, "itself"),
        (("group", "add", "crew"), 2, "exactly one"),
        (("group", "add", "crew", "@bob", "--role", "reviewer"), 2, "exactly one"),
        (("group", "info"), 2, ""),
    ]
    for argv, code, text in cases:
        proc = t.run(*argv, name="alice", check=False)
        assert proc.returncode == code, (argv, proc.returncode, proc.stderr)
        assert text in proc.stderr, (argv, proc.stderr)
    err = json.loads(t.run("group", "delete", "everyone", "--json", check=False).stdout)["error"]
    assert err["code"] == -32002
    # None of that changed anything.
    assert {g["name"]: g["member_count"] for g in t.json("group", "list")["groups"]} == {"crew": 0, "everyone": 1}
    # An agent may not take a group's name either.
    proc = t.run("quickstart", "--name", "crew", "--role", "tester", "--module", "qa", check=False)
    assert proc.returncode == 1 and "group" in proc.stderr
    assert_log_clean(t)
