"""Coordination views and lifecycle: intent/task persistence, stale sessions, prime, overview, status, ping,
setup claude-md, runtimes."""

from __future__ import annotations

import json
import time

from conftest import git, wait_for
from helpers import register


def _events(t) -> list[dict]:
    return [json.loads(x) for x in (t.sync_dir / "events.jsonl").read_text().splitlines() if x]


def _my_context(t, agent: str) -> dict:
    found = t.json("agent", "context", "--agent", agent)["contexts"]
    assert len(found) == 1, found
    return found[0]


def test_intent_and_task_survive_restart_and_rebuild(agents, env):
    t = agents
    git(t.repo, "checkout", "-q", "-b", "feat/persist", env=env)
    t.run("session", "set-intent", "Persist the work context", name="alice")
    t.run("session", "set-task", "issue 6", name="alice")
    (t.repo / "persist.py").write_text("x = 1\n")
    t.run("session", "heartbeat", name="alice")
    wait_for(lambda: "persist.py" in (_my_context(t, "alice").get("changed_files") or []), what="git context")
    t.stop()
    t.start()
    wc = _my_context(t, "alice")
    assert (wc["intent"], wc["current_task"], wc["branch"]) == ("Persist the work context", "issue 6", "feat/persist")
    t.stop()
    t.run("migrate", "--rebuild")
    t.start()
    wc = _my_context(t, "alice")
    assert (wc["intent"], wc["current_task"], wc["branch"]) == ("Persist the work context", "issue 6", "feat/persist")
    assert "persist.py" in wc["changed_files"]
    status = t.run("status", name="alice").stdout
    assert "Intent:   Persist the work context" in status and "Task:     issue 6" in status
    assert "Branch:   feat/persist (0 commits ahead)" in status and "Files:    " in status


def test_stale_sessions_of_this_clone_end_and_others_do_not(agents, env):
    t = agents
    origin = next(e["origin_daemon"] for e in _events(t) if e["type"] == "agent.register")
    t.stop()
    with open(t.sync_dir / "events.jsonl", "a") as f:
        for sid, who in (("ses_01KHG96H3M0GX731VMRNSBV2H5", origin), ("ses_01KHG96H3M0GX731VMRNSBV2H6",
                                                                       "d_otherclone01")):
            f.write(json.dumps({"agent_id": "bob", "event_id": "evt_" + sid[4:], "origin_daemon": who,
                                "session_id": sid, "timestamp": "2020-01-01T00:00:00Z",
                                "type": "agent.session.start", "v": 1}) + "\n")
    env2 = dict(env, THRUM_SESSION_TIMEOUT="1s")
    t.run("daemon", "start", env=env2)

    def sessions():
        return {s["session_id"]: s for s in t.json("session", "list")["sessions"]}
    wait_for(lambda: sessions()["ses_01KHG96H3M0GX731VMRNSBV2H5"]["status"] == "ended", 30,
             what="the stale local session to end")
    s = sessions()
    assert s["ses_01KHG96H3M0GX731VMRNSBV2H5"]["end_reason"] == "stale"
    assert s["ses_01KHG96H3M0GX731VMRNSBV2H6"]["status"] == "active"   # another clone's: never ours to end
    ends = [e for e in _events(t) if e["type"] == "agent.session.end" and e.get("reason") == "stale"]
    assert "ses_01KHG96H3M0GX731VMRNSBV2H6" not in {e["session_id"] for e in ends}


def test_messages_sent_and_read_keep_a_session_alive(agents, env):
    """A session whose agent sends, or reads what it is sent, is not stale; an idle one of the same
    age is ended (the sweep learns of messages and read markers from the committed events)."""
    t = agents
    t.stop()
    t.run("daemon", "start", env=dict(env, THRUM_SESSION_TIMEOUT="2s"))
    register(t, "carol", "planner", "auth")  # idle from here on

    def active():
        return {s["agent_id"] for s in t.json("session", "list", "--active")["sessions"]}
    with t.client() as c:
        started = time.monotonic()
        # alice writes to bob every ~0.3 s and bob reads each: neither heartbeats nor touches git.
        while "carol" in active():
            assert time.monotonic() - started < 30, "the idle session was never ended"
            mid = c.call("message.send", {"caller_agent_id": "alice", "content": "still here",
                                          "mentions": ["@bob"]})["message_id"]
            c.call("message.markRead", {"caller_agent_id": "bob", "message_ids": [mid]})
            time.sleep(0.3)  # the pace of their work, not a wait for a result
        assert time.monotonic() - started > 2  # carol outlived the timeout first
        assert {"alice", "bob"} <= active()


def test_sessions_survive_a_restart_with_the_default_timeout(agents):
    t = agents
    t.stop()
    t.start()
    active = {s["agent_id"] for s in t.json("session", "list", "--active")["sessions"]}
    assert active == {"alice", "bob"}


def test_prime_has_every_section(agents, env):
    t = agents
    t.run("send", "please review auth", "--to", "@bob", name="alice")
    t.run("session", "set-intent", "Reviewing", name="bob")
    (t.repo / "review.md").write_text("notes\n")
    t.run("session", "heartbeat", name="bob")
    t.run("context", "save", input="Next: finish the review\n", name="bob")
    out = t.run("prime", name="bob").stdout
    for needle in ("Agent: @bob (reviewer @ auth)", "Session: ses_", "  Intent: Reviewing", "Team: 2 agents (2 active)",
                   "Inbox: 1 unread (1 total)", "@alice: please review auth", "Branch: main",
                   "Your saved notes", "Next: finish the review", "Daemon: ok", "  Sync: ", "Commands:",
                   "Tip: Run 'thrum setup claude-md --apply'"):
        assert needle in out, needle
    data = t.json("prime", name="bob")
    assert data["identity"]["agent_id"] == "bob" and data["messages"]["unread"] == 1
    assert data["agents"]["total"] == 2 and data["daemon"]["running"] and data["context"]["size"] > 0
    assert data["instructions"] == {"file": "CLAUDE.md", "has_thrum_section": False}
    # prime reads the inbox without marking it read
    assert t.json("prime", name="bob")["messages"]["unread"] == 1
    t.run("setup", "claude-md", "--apply")
    assert "setup claude-md" not in t.run("prime", name="bob").stdout
    assert t.run("context", "prime", name="bob").stdout.startswith("Agent: @bob")


def test_prime_degrades_when_the_daemon_is_down(agents, tmp_path, env):
    t = agents
    t.run("context", "save", input="left off here\n", name="bob")
    t.stop()
    proc = t.run("prime", name="bob")
    assert proc.returncode == 0
    assert "Daemon: not running — start it with: thrum daemon start" in proc.stdout
    assert "Agent: @bob" in proc.stdout and "Branch: main" in proc.stdout and "left off here" in proc.stdout
    data = t.json("prime", name="bob")
    assert data["daemon"]["running"] is False and data["work_context"]["branch"] == "main"
    bare = tmp_path / "bare"
    bare.mkdir()
    git(bare, "init", "-q", env=env)
    proc = t.run("prime", cwd=bare)
    assert proc.returncode == 0 and "Thrum not initialized (run: thrum init && thrum daemon start)" in proc.stdout


def test_overview_and_status_sections(agents):
    t = agents
    t.run("session", "set-intent", "Build login", name="alice")
    (t.repo / "login.py").write_text("L\n")
    t.run("session", "heartbeat", name="alice")
    wait_for(lambda: "login.py" in (_my_context(t, "alice").get("changed_files") or []), what="git context")
    out = t.run("overview", name="alice").stdout
    for needle in ("You: @alice (implementer @ auth)", "Session: active", "Intent: Build login",
                   "Branch: main (0 commits ahead), files: ", "Team (1 other active session):", "@bob",
                   "Inbox: ", "Sync: ", "Daemon: ok"):
        assert needle in out, needle
    data = t.json("overview", name="alice")
    assert data["agent"]["agent_id"] == "alice" and data["work_context"]["intent"] == "Build login"
    assert [m["agent_id"] for m in data["team"]] == ["bob"] and "inbox" in data and "health" in data
    status = t.json("status", name="alice")
    assert "login.py" in status["work_context"]["changed_files"]
    assert "Files:    2 changed, 2 uncommitted" in t.run("status", name="alice").stdout  # + init's .gitignore


def test_ping(agents):
    t = agents
    t.run("session", "set-intent", "Reviewing", name="bob")
    out = t.run("ping", "@bob").stdout
    assert out.startswith("@bob: active, last heartbeat") and "Intent: Reviewing" in out
    by_role = t.json("ping", "reviewer")
    assert [a["agent_id"] for a in by_role["agents"]] == ["bob"]
    t.run("session", "end", name="bob")
    assert t.run("ping", "bob").stdout.startswith("@bob: offline (last seen")
    missing = t.run("ping", "@bobb", check=False)
    assert missing.returncode == 1 and "@bobb: not found" in missing.stderr and "@bob" in missing.stderr


def test_setup_claude_md_is_idempotent(thrum):
    t = thrum
    printed = t.run("setup", "claude-md").stdout
    assert printed.startswith("# Thrum Agent Coordination\n")
    claude = t.repo / "CLAUDE.md"
    claude.write_text("# Project\n\nOur rules.\n")
    first = t.run("setup", "claude-md", "--apply")
    assert "✓ Thrum section written to" in first.stderr and first.stdout == ""
    text = claude.read_text()
    assert text.startswith("# Project\n\nOur rules.\n\n---\n\n# Thrum Agent Coordination")
    second = t.run("setup", "claude-md", "--apply")
    assert "Skipped: Thrum section already exists (use --force to overwrite)" in second.stderr
    assert claude.read_text() == text
    t.run("setup", "claude-md", "--apply", "--force")
    assert claude.read_text() == text
    t.run("setup", "claude-md", "--apply", "--file", "AGENTS.md")
    assert (t.repo / "AGENTS.md").read_text().startswith("# Thrum Agent Coordination")


def test_runtime_presets_and_default(thrum):
    t = thrum
    listing = t.json("runtime", "list")
    names = [p["name"] for p in listing["presets"]]
    assert names == ["amp", "auggie", "claude", "cli-only", "codex", "cursor", "gemini"]
    claude = t.json("runtime", "show", "claude")
    assert claude["instructions_file"] == "CLAUDE.md" and claude["mcp_supported"] and claude["hooks_supported"]
    assert set(claude) >= {"name", "display_name", "command", "mcp_supported", "hooks_supported",
                           "instructions_file", "mcp_config_path", "setup_notes"}
    assert "Display Name:     Claude Code" in t.run("runtime", "show", "claude").stdout
    missing = t.run("runtime", "show", "nope", check=False)
    assert missing.returncode == 1 and 'runtime preset "nope" not found' in missing.stderr
    t.run("runtime", "set-default", "codex")
    assert json.loads((t.repo / ".thrum" / "config.json").read_text())["runtime"]["primary"] == "codex"
    assert t.json("runtime", "list")["default_runtime"] == "codex"
    # The default is used: init (no --runtime) writes codex's files, and prime checks AGENTS.md.
    init = t.json("init")
    assert init["runtime_init"]["runtime"] == "codex" and init["runtime_init"]["source"] == "config"
    assert (t.repo / "AGENTS.md").read_text().startswith("# Thrum Agent Coordination")
    assert (t.repo / ".codex" / "hooks" / "session-start").stat().st_mode & 0o111


def test_init_detects_runtimes_and_never_overwrites(repo, env):
    from conftest import Thrum

    t = Thrum(repo, env)
    (repo / ".claude").mkdir()
    settings = repo / ".claude" / "settings.json"
    settings.write_text('{"mine": true}\n')
    out = t.run("init").stdout
    assert "✓ Auto-detected runtime: claude" in out
    assert "SKIP .claude/settings.json (file exists (use --force to overwrite))" in out
    assert settings.read_text() == '{"mine": true}\n'
    script = repo / "scripts" / "thrum-startup.sh"
    assert script.exists() and "exec thrum prime" in script.read_text()
    script.write_text("# my edits\n")
    again = t.json("init")
    actions = {f["path"]: f["action"] for f in again["runtime_init"]["files"]}
    assert actions == {".claude/settings.json": "skip", "scripts/thrum-startup.sh": "skip"}
    assert script.read_text() == "# my edits\n"
    forced = t.json("init", "--force", "--runtime", "claude")
    assert {f["action"] for f in forced["runtime_init"]["files"]} == {"overwrite"}
    assert "SessionStart" in settings.read_text()
    dry = t.run("init", "--dry-run", "--runtime", "gemini").stdout
    assert "Dry run for runtime: gemini" in dry and not (repo / ".gemini").exists()
    bad = t.run("init", "--runtime", "nope", check=False)
    assert bad.returncode == 2 and "unknown runtime" in bad.stderr


def test_quickstart_reports_runtime_and_writes_files_only_when_asked(daemon):
    t = daemon
    (t.repo / ".cursorrules").write_text("my rules\n")
    plain = t.json("quickstart", "--name", "dora", "--role", "planner", "--module", "plan", name="dora")
    assert plain["runtime"] == "cursor" and "runtime_init" not in plain
    asked = t.json("quickstart", "--name", "dora", "--role", "planner", "--module", "plan", "--runtime", "gemini",
                   name="dora")
    assert {f["path"] for f in asked["runtime_init"]["files"]} == {".gemini/settings.json", "GEMINI.md",
                                                                   "scripts/thrum-startup.sh"}
    assert (t.repo / ".cursorrules").read_text() == "my rules\n"


def test_help_lists_the_coordination_commands(thrum):
    out = thrum.run("--help").stdout
    for name in ("who-has", "ping", "overview", "prime", "context", "setup", "runtime"):
        assert f"    {name} " in out or f"    {name}\n" in out, name
    for args in (("agent", "cleanup"), ("agent", "context"), ("context", "save"), ("setup", "claude-md"),
                 ("group", "add")):
        assert thrum.run(*args, "--help").returncode == 0
