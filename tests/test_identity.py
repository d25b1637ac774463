"""Agent names, identity files, which identity a command acts as, and the identity/session commands."""

import json

import pytest

from helpers import RawConn, assert_log_clean, log_lines, mode

BAD_NAMES = ["Alice", "a-b", "../x", "a/b", "a b", "a.b", "x" * 65]
RESERVED = ["daemon", "system", "thrum", "all", "broadcast", "everyone"]


def test_invalid_and_reserved_names_are_refused_everywhere(daemon):
    t = daemon
    ids_dir = t.repo / ".thrum" / "identities"
    log_before = log_lines(t.sync_dir)
    for name in BAD_NAMES + RESERVED:
        for argv in (("quickstart", "--name", name, "--role", "tester", "--module", "qa"),
                     ("agent", "register", "--name", name, "--role", "tester", "--module", "qa")):
            proc = t.run(*argv, check=False)
            assert proc.returncode == 1, (argv, proc.stderr)
            assert "invalid agent name" in proc.stderr, (argv, proc.stderr)
            if name in RESERVED:
                assert "reserved" in proc.stderr
    # THRUM_NAME is validated too (it names a file).
    for name in ("../../etc/passwd", "Bob", "everyone"):
        proc = t.run("whoami", check=False, env={**t.env, "THRUM_NAME": name})
        assert proc.returncode == 1 and "invalid THRUM_NAME" in proc.stderr, (name, proc.stderr)
        proc = t.run("quickstart", "--role", "tester", "--module", "qa", check=False,
                     env={**t.env, "THRUM_NAME": name})
        assert proc.returncode == 1 and "invalid agent name" in proc.stderr, (name, proc.stderr)
    # Roles and modules follow the same character rule.
    proc = t.run("quickstart", "--name", "zed", "--role", "Bad-Role", "--module", "qa", check=False)
    assert proc.returncode == 1 and "role" in proc.stderr
    with RawConn(t.socket) as c:
        for i, name in enumerate(BAD_NAMES + RESERVED):
            # -32602 invalid params (-32005 for a name over the length limit)
            r = c.call("agent.register", {"name": name, "role": "tester", "module": "qa"}, rid=i)
            assert r["error"]["code"] in (-32602, -32005), (name, r)
            r = c.call("agent.delete", {"name": name}, rid=i)
            assert r["error"]["code"] in (-32602, -32005), (name, r)
            if name in RESERVED:
                assert "reserved" in r["error"]["message"]
        r = c.call("agent.register", {"name": "ok_name", "role": "../x", "module": "qa"})
        assert r["error"]["code"] == -32602
    assert list(ids_dir.iterdir()) == []
    assert log_lines(t.sync_dir) == log_before
    assert not (t.repo / ".thrum" / "x.json").exists() and not (t.repo / "x.json").exists()
    assert_log_clean(t)


def test_identity_file_layout(daemon):
    t = daemon
    t.run("quickstart", "--name", "alice", "--role", "implementer", "--module", "auth", "--display", "Alice A")
    path = t.repo / ".thrum" / "identities" / "alice.json"
    data = json.loads(path.read_text())
    assert data["agent"] == {"Kind": "agent", "Name": "alice", "Role": "implementer", "Module": "auth",
                             "Display": "Alice A"}
    assert data["version"] == 1 and data["repo_id"] == "" and data["confirmed_by"] == ""
    assert data["worktree"] == "repo"
    assert data["updated_at"].endswith("Z")
    assert mode(path) == 0o600
    # A Go-written file may use lowercase keys; it is read all the same.
    go = {"version": 2, "repo_id": "r", "agent": {"kind": "agent", "name": "gopher", "role": "planner",
                                                  "module": "core", "display": ""},
          "worktree": "elsewhere", "confirmed_by": "", "updated_at": "2026-01-01T00:00:00Z"}
    (path.parent / "gopher.json").write_text(json.dumps(go))
    who = t.json("whoami", name="gopher")
    assert (who["agent_id"], who["role"], who["module"]) == ("gopher", "planner", "core")


def test_resolution_order_and_several_agents_per_worktree(daemon):
    t = daemon
    t.quickstart("alice", "implementer", "auth")
    t.quickstart("bob", "reviewer", "auth")
    # Neither THRUM_NAME nor --name: an error that lists the choices.
    proc = t.run("whoami", check=False)
    assert proc.returncode == 1
    assert "cannot auto-select identity" in proc.stderr and "alice, bob" in proc.stderr
    assert "THRUM_NAME" in proc.stderr
    proc = t.run("send", "hi", check=False)
    assert proc.returncode == 1 and "alice, bob" in proc.stderr
    err = json.loads(t.run("inbox", "--json", check=False).stdout)["error"]
    assert "alice, bob" in err["hint"]
    assert t.json("whoami", "--name", "bob")["agent_id"] == "bob"
    assert t.json("whoami", name="alice")["agent_id"] == "alice"
    # THRUM_NAME beats --name.
    assert t.json("whoami", "--name", "bob", name="alice")["agent_id"] == "alice"
    proc = t.run("whoami", check=False, env={**t.env, "THRUM_NAME": "ghost"})
    assert proc.returncode == 1 and "ghost" in proc.stderr and "alice, bob" in proc.stderr
    # Each acts as itself.
    t.json("send", "from bob", "--to", "@alice", "--name", "bob")
    inbox = t.json("inbox", name="alice")
    assert [(m["agent_id"], m["body"]["content"]) for m in inbox["messages"]] == [("bob", "from bob")]
    # One identity left: it is chosen without a name.
    (t.repo / ".thrum" / "identities" / "bob.json").unlink()
    assert t.json("whoami")["agent_id"] == "alice"
    assert_log_clean(t)


def test_identity_and_session_commands(daemon):
    t = daemon
    reg = t.json("agent", "register", "--name", "carol", "--role", "tester", "--module", "qa")
    assert reg == {"agent_id": "carol", "status": "registered"}
    assert (t.repo / ".thrum" / "identities" / "carol.json").exists()
    assert t.json("agent", "register", "--name", "carol", "--role", "tester", "--module", "qa",
                  "--re-register")["status"] == "updated"
    conflict = t.run("agent", "register", "--name", "carol", "--role", "planner", "--module", "qa", check=False)
    assert conflict.returncode == 1 and "conflict" in conflict.stderr and "--force" in conflict.stderr
    assert "✓ Agent registered: dave" in t.run("agent", "register", "--name", "dave", "--role", "planner",
                                              "--module", "qa").stdout

    who = t.json("agent", "whoami", name="carol")
    assert who["agent_id"] == "carol" and who["role"] == "tester" and "session_id" not in who
    assert "Session:   none" in t.run("agent", "whoami", name="carol").stdout

    started = t.json("session", "start", name="carol")
    assert started["agent_id"] == "carol" and started["session_id"].startswith("ses_")
    assert t.json("agent", "whoami", name="carol")["session_id"] == started["session_id"]
    hb = t.json("session", "heartbeat", name="carol")
    assert hb["session_id"] == started["session_id"]
    intent = t.json("session", "set-intent", "write tests", name="carol")
    assert intent["intent"] == "write tests"
    task = t.json("session", "set-task", "T-9", name="carol")
    assert task["current_task"] == "T-9"
    listed = t.json("session", "list", "--active", "--agent", "carol")["sessions"]
    assert [(s["session_id"], s["intent"], s["current_task"]) for s in listed] == \
        [(started["session_id"], "write tests", "T-9")]
    assert "✓ Intent cleared" in t.run("session", "set-intent", "", name="carol").stdout
    ended = t.json("session", "end", name="carol")
    assert ended["session_id"] == started["session_id"] and ended["duration_ms"] >= 0
    proc = t.run("session", "end", name="carol", check=False)
    assert proc.returncode == 1 and "no active session" in proc.stderr
    proc = t.run("session", "set-intent", "x", name="carol", check=False)
    assert proc.returncode == 1 and "thrum session start" in proc.stderr

    # The `agent` aliases do the same.
    s2 = t.json("agent", "start", name="carol")
    assert s2["session_id"] != started["session_id"]
    assert t.json("agent", "heartbeat", name="carol")["session_id"] == s2["session_id"]
    assert t.json("agent", "set-intent", "aliases", name="carol")["intent"] == "aliases"
    assert t.json("agent", "set-task", "T-10", name="carol")["current_task"] == "T-10"
    assert t.json("agent", "end", name="carol")["session_id"] == s2["session_id"]
    sessions = {s["session_id"]: s for s in t.json("session", "list", "--agent", "carol")["sessions"]}
    assert {sid: s["status"] for sid, s in sessions.items()} == \
        {started["session_id"]: "ended", s2["session_id"]: "ended"}

    agents = t.json("agent", "list")["agents"]
    assert sorted(a["agent_id"] for a in agents) == ["carol", "dave"]
    assert "Registered agents (2)" in t.run("agent", "list").stdout
    assert [a["agent_id"] for a in t.json("agent", "list", "--role", "planner")["agents"]] == ["dave"]

    proc = t.run("agent", "delete", "dave", check=False, input="")
    assert proc.returncode == 1 and "--force" in proc.stderr  # no silent deletion without a terminal
    gone = t.json("agent", "delete", "dave", "--force")
    assert gone["agent_id"] == "dave" and gone["deleted"] is True
    assert [a["agent_id"] for a in t.json("agent", "list")["agents"]] == ["carol"]
    assert not (t.repo / ".thrum" / "identities" / "dave.json").exists()
    proc = t.run("agent", "delete", "dave", "--force", check=False)
    assert proc.returncode == 1 and "not found" in proc.stderr
    assert_log_clean(t)


def test_quickstart_and_whoami(daemon):
    t = daemon
    out = t.json("quickstart", "--name", "erin", "--role", "planner", "--module", "core", "--intent", "plan it")
    assert out["register"]["agent_id"] == "erin"
    assert out["session"]["session_id"].startswith("ses_")
    assert out["intent"]["intent"] == "plan it"
    who = t.json("whoami")
    assert {k: who[k] for k in ("agent_id", "role", "module", "worktree", "repo_id")} == \
        {"agent_id": "erin", "role": "planner", "module": "core", "worktree": "repo", "repo_id": "repo"}
    assert who["identity_file"].endswith("identities/erin.json")
    assert t.run("whoami").stdout.startswith("@erin (planner @ core)")
    # Again: the same agent comes back (no conflict), with a new session.
    again = t.json("quickstart", "--name", "erin", "--role", "planner", "--module", "core")
    assert again["register"]["status"] == "registered"
    assert again["session"]["session_id"] != out["session"]["session_id"]
    proc = t.run("quickstart", "--name", "erin", check=False)
    assert proc.returncode == 2 and "--role and --module are required" in proc.stderr
    human = t.run("quickstart", "--name", "fay", "--role", "planner", "--module", "core").stdout
    assert "✓ Registered as @fay" in human and "✓ Session started: ses_" in human
    # THRUM_NAME beats --name for register and quickstart too.
    assert t.json("quickstart", "--name", "gil", "--role", "tester", "--module", "qa",
                  name="hal")["register"]["agent_id"] == "hal"
    assert t.json("agent", "register", "--name", "gil", "--role", "tester", "--module", "qb",
                  name="ivy")["agent_id"] == "ivy"
    names = sorted(p.stem for p in (t.repo / ".thrum" / "identities").iterdir())
    assert names == ["erin", "fay", "hal", "ivy"]


@pytest.mark.parametrize("argv", [("whoami",), ("inbox",)])
def test_no_identity_says_how_to_register(daemon, argv):
    proc = daemon.run(*argv, check=False)
    assert proc.returncode == 1
    assert "thrum quickstart --name" in proc.stderr
