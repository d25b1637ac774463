"""Several worktrees of one repository: one daemon, redirects, who-has across worktrees, orphan cleanup."""

from __future__ import annotations

import json
import os

import pytest

from conftest import git, pid_alive, wait_for


@pytest.fixture
def two_worktrees(daemon, env, tmp_path):
    """alice works in the main checkout, bob in a feature worktree linked with `thrum init`."""
    t = daemon
    feat = tmp_path / "feat"
    git(t.repo, "worktree", "add", "-q", str(feat), "-b", "feature/login", env=env)
    out = t.run("init", cwd=feat).stdout
    assert "Worktree detected" in out
    assert (feat / ".thrum" / "redirect").read_text() == f"{t.repo / '.thrum'}\n"
    t.quickstart("alice", "implementer", "core", intent="Refactor the core")
    t.run("quickstart", "--name", "bob", "--role", "implementer", "--module", "auth", "--intent", "Login flow",
          name="bob", cwd=feat)
    assert (feat / ".thrum" / "identities" / "bob.json").exists()
    assert not (t.repo / ".thrum" / "identities" / "bob.json").exists()
    # Both edit files: alice in the main checkout, bob commits one file and keeps editing another.
    (t.repo / "core.py").write_text("print('core')\n")
    (feat / "auth").mkdir()
    (feat / "auth" / "login.py").write_text("def login():\n    pass\n")
    git(feat, "add", "auth/login.py", env=env)
    git(feat, "commit", "-q", "-m", "Add login", env=env)
    (feat / "auth" / "login.py").write_text("def login():\n    return True\n")
    (feat / "auth" / "session.py").write_text("S = 1\n")
    t.run("session", "heartbeat", name="alice")
    t.run("session", "heartbeat", name="bob", cwd=feat)
    # The heartbeat waits (bounded) for the daemon's git refresh; on a slow machine, keep polling.
    for agent, path in (("alice", "core.py"), ("bob", "auth/session.py")):
        wait_for(lambda: any(path in (w.get("changed_files") or [])
                             for w in t.json("agent", "context", "--agent", agent)["contexts"]),
                 what=f"{agent}'s git context")
    return t, feat


def _holders(t, *args, cwd=None):
    return sorted(wc["agent_id"] for wc in t.json("who-has", *args, cwd=cwd)["contexts"])


def test_who_has_any_path_form_across_worktrees(two_worktrees):
    t, feat = two_worktrees
    assert _holders(t, "auth/login.py") == ["bob"]                      # repo-relative, from the main checkout
    assert _holders(t, feat / "auth" / "login.py") == ["bob"]             # absolute
    assert _holders(t, "login.py", cwd=feat / "auth") == ["bob"]          # relative, from a subdirectory
    assert _holders(t, "auth/login.py", cwd=feat / "auth") == ["bob"]     # repo-relative, from a subdirectory
    assert _holders(t, "../core.py", cwd=feat / "auth") == ["alice"]      # the same file in another worktree
    assert _holders(t, "core.py") == ["alice"]
    assert _holders(t, t.repo / "core.py", cwd=feat) == ["alice"]
    assert _holders(t, "auth") == ["bob"]                                 # a directory
    assert _holders(t, "login.py") == []                                  # not a substring match
    human = t.run("who-has", "auth/login.py").stdout
    assert human.startswith("@bob is editing auth/login.py (+2 -0, added") and "branch: feature/login" in human
    assert "No agents are currently editing nothing.py" in t.run("who-has", "nothing.py").stdout


def test_team_json_shows_who_holds_what(two_worktrees):
    t, feat = two_worktrees
    members = {m["agent_id"]: m for m in t.json("team")["members"]}
    bob = members["bob"]
    assert bob["branch"] == "feature/login" and bob["unmerged_commits"] == 1
    assert bob["worktree_path"] == str(feat) and bob["intent"] == "Login flow"
    assert {f["path"]: f["status"] for f in bob["file_changes"]} == \
        {"auth/login.py": "added", "auth/session.py": "untracked", ".gitignore": "untracked"}
    assert {f["path"] for f in members["alice"]["file_changes"]} >= {"core.py"}
    text = t.run("team").stdout
    assert "=== @bob (implementer @ auth) ===" in text and "A auth/login.py (+2 -0)" in text
    assert "Branch:   feature/login (1 commits ahead)" in text


def test_agent_context_views(two_worktrees):
    t, feat = two_worktrees
    table = t.run("agent", "list", "--context").stdout.splitlines()
    assert table[0].split() == ["AGENT", "SESSION", "BRANCH", "COMMITS", "FILES", "INTENT", "UPDATED"]
    assert any(line.startswith("@bob") and "feature/login" in line for line in table)
    detail = t.run("agent", "context", "@bob").stdout
    assert "Agent: @bob" in detail and "Unmerged Commits (1):" in detail and "Add login" in detail
    only = t.json("agent", "context", "--branch", "feature/login")["contexts"]
    assert [w["agent_id"] for w in only] == ["bob"]
    unmerged = only[0]["unmerged_commits"]
    assert [(c["message"], c["files"]) for c in unmerged] == [("Add login", ["auth/login.py"])]


def test_the_git_context_reaches_the_log_only_when_it_changes(two_worktrees):
    t, feat = two_worktrees

    def updates():
        lines = [json.loads(x) for x in (t.sync_dir / "events.jsonl").read_text().splitlines() if x]
        return [e for e in lines if e["type"] == "agent.update" and e["agent_id"] == "bob"
                and e["work_contexts"][0].get("git_updated_at")]
    before = len(updates())
    assert updates()[-1]["work_contexts"][0]["changed_files"]
    t.run("session", "heartbeat", name="bob", cwd=feat)   # nothing changed: nothing logged
    assert len(updates()) == before
    (feat / "auth" / "third.py").write_text("x\n")          # a new file: logged
    t.run("session", "heartbeat", name="bob", cwd=feat)
    assert len(updates()) == before + 1
    assert "auth/third.py" in updates()[-1]["work_contexts"][0]["changed_files"]
    # More lines in a file already listed: the live context shows them, the log waits (debounced).
    (feat / "auth" / "third.py").write_text("x\ny\nz\n")
    t.run("session", "heartbeat", name="bob", cwd=feat)
    wait_for(lambda: [f["additions"] for f in t.json("who-has", feat / "auth" / "third.py")["contexts"][0]
                      ["file_changes"] if f["path"] == "auth/third.py"] == [3], what="the new line counts")
    assert len(updates()) == before + 1


def test_cli_and_daemon_agree_from_a_feature_worktree(two_worktrees):
    t, feat = two_worktrees
    pid = t.pid()
    again = t.run("daemon", "start", cwd=feat, check=False)
    assert again.returncode == 1 and f"already running (PID {pid})" in again.stderr
    t.run("daemon", "stop", cwd=feat)
    wait_for(lambda: not pid_alive(pid), what="the daemon to stop")
    t.run("daemon", "start", cwd=feat)      # starts the main checkout's daemon
    info = json.loads((t.var / "thrum.pid").read_text())
    assert info["repo_path"] == str(t.repo)
    assert not (feat / ".thrum" / "var").exists()
    status = t.json("status", name="bob", cwd=feat)
    assert status["agent"]["agent_id"] == "bob" and status["work_context"]["branch"] == "feature/login"


def test_setup_links_a_worktree(daemon, env, tmp_path):
    t = daemon
    feat = tmp_path / "other"
    git(t.repo, "worktree", "add", "-q", str(feat), "-b", "other", env=env)
    unlinked = t.run("status", cwd=feat, check=False)
    assert unlinked.returncode == 1 and "not initialized" in unlinked.stderr
    out = t.run("setup", cwd=feat).stdout
    assert "✓ Thrum worktree setup complete" in out and "Connected to daemon" in out
    assert (feat / ".thrum" / "redirect").read_text().strip() == str(t.repo / ".thrum")
    explicit = tmp_path / "third"
    git(t.repo, "worktree", "add", "-q", str(explicit), "-b", "third", env=env)
    t.run("setup", "worktree", "--main-repo", t.repo, cwd=explicit)
    assert (explicit / ".thrum" / "redirect").exists()
    self_redirect = t.run("setup", "--main-repo", t.repo, check=False)
    assert self_redirect.returncode == 1 and "redirect to self" in self_redirect.stderr


# -- orphaned agents --------------------------------------------------------------------------------

def _snapshot(t, feat):
    agents = sorted(a["agent_id"] for a in t.json("agent", "list")["agents"])
    files = sorted(str(p.relative_to(p.parents[2])) for base in (t.repo, feat)
                   for p in (base / ".thrum" / "identities").glob("*.json"))
    return agents, files


def test_cleanup_only_removes_real_orphans(two_worktrees, env, tmp_path):
    t, feat = two_worktrees
    for sid in (t.json("session", "list", "--active")["sessions"]):
        t.call("session.end", session_id=sid["session_id"], caller_agent_id=sid["agent_id"])
    # ghost: registered here, but no identity file anywhere.
    t.call("agent.register", name="ghost", role="tester", module="qa")
    # carol: registered in a worktree that is then removed.
    gone = tmp_path / "gone"
    git(t.repo, "worktree", "add", "-q", str(gone), "-b", "gone", env=env)
    t.run("init", cwd=gone)
    t.run("quickstart", "--name", "carol", "--role", "tester", "--module", "ui", name="carol", cwd=gone)
    t.run("session", "end", name="carol", cwd=gone)
    git(t.repo, "worktree", "remove", "--force", str(gone), env=env)
    # remote: registered by another clone (arrived through sync): never ours to judge.
    t.stop()
    with open(t.sync_dir / "events.jsonl", "a") as f:
        f.write(json.dumps({"agent_id": "remote", "event_id": "evt_01KHG95R76QAXQTJ775ND9BPQZ", "kind": "agent",
                            "module": "x", "name": "remote", "origin_daemon": "d_otherclone01", "role": "tester",
                            "timestamp": "2020-01-01T00:00:00Z", "type": "agent.register", "v": 1}) + "\n")
    t.start()
    before = _snapshot(t, feat)
    assert "remote" in before[0] and "ghost" in before[0]

    dry = t.json("agent", "cleanup", "--dry-run")
    reasons = {o["agent_id"]: o["reasons"] for o in dry["orphans"]}
    assert sorted(reasons) == ["carol", "ghost"]
    assert reasons["ghost"] == ["no identity file in any worktree of this repository"]
    assert any("no longer exists" in r for r in reasons["carol"])
    assert dry["skipped_other_clones"] == 1 and dry["dry_run"] and dry["deleted"] == []
    assert _snapshot(t, feat) == before                       # the dry run changed nothing
    seen = {os.path.basename(w["path"]): w["identities"] for w in dry["worktrees"]}
    assert seen["feat"] == ["bob"] and "alice" in seen["repo"]  # identities of every worktree are seen
    human = t.run("agent", "cleanup", "--dry-run").stdout
    assert human.startswith("Orphaned agents (dry-run mode):") and "Why:" in human

    listed = t.run("agent", "cleanup").stdout                 # no tty, no --force: list only
    assert "Run 'thrum agent cleanup --force'" in listed and _snapshot(t, feat) == before

    usage = t.run("agent", "cleanup", "--dry-run", "--force", check=False)
    assert usage.returncode == 2 and "mutually exclusive" in usage.stderr

    done = t.json("agent", "cleanup", "--force")
    assert sorted(done["deleted"]) == ["carol", "ghost"]
    agents, files = _snapshot(t, feat)
    assert sorted(agents) == ["alice", "bob", "remote"]
    assert files == before[1]
    assert t.json("agent", "cleanup", "--dry-run")["orphans"] == []


def test_cleanup_threshold_and_delete_everywhere(two_worktrees):
    t, feat = two_worktrees
    sessions = t.json("session", "list", "--active")["sessions"]
    bob = next(s for s in sessions if s["agent_id"] == "bob")
    t.call("session.end", session_id=bob["session_id"], caller_agent_id="bob")
    # Seen today: a threshold of 0 days never counts, and bob has an identity file in feat.
    assert t.json("agent", "cleanup", "--dry-run", "--threshold", "0")["orphans"] == []
    # `agent delete` removes the identity file from the worktree that holds it, too.
    t.run("agent", "delete", "bob", "--force")
    assert not (feat / ".thrum" / "identities" / "bob.json").exists()
