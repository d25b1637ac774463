"""Git work-context parsing (pure), agent context notes (save/show/clear/preamble/sync), instructions files."""

from __future__ import annotations

import json
import os

import pytest

from conftest import git, wait_for
from thrum import gitctx, runtimes


# -- parsers ------------------------------------------------------------------------------

def test_parse_status_branch_and_entries():
    out = b"\0".join([
        b"# branch.oid 4d6132578b936e218f9dc1be7aa01edeabb01f92", b"# branch.head feat/x",
        b"1 .M N... 100644 100644 100644 aaaa bbbb src/a b.py",
        b"1 A. N... 000000 100644 100644 0000 cccc new.py",
        b"2 R. N... 100644 100644 100644 dddd eeee R100 moved.py", b"old.py",
        b"u UU N... 100644 100644 100644 100644 1 2 3 conflict.py",
        b"? notes/todo.md", b""])
    st = gitctx.parse_status(out)
    assert st["branch"] == "feat/x" and st["head"].startswith("4d61")
    assert st["files"] == {"src/a b.py": {"status": "modified"}, "new.py": {"status": "added"},
                           "moved.py": {"status": "renamed", "old_path": "old.py"},
                           "conflict.py": {"status": "conflicted"}, "notes/todo.md": {"status": "untracked"}}


def test_parse_status_detached_and_unborn():
    assert gitctx.parse_status(b"# branch.oid (initial)\0# branch.head main\0") == \
        {"branch": "main", "head": "", "files": {}}
    st = gitctx.parse_status(b"# branch.oid abc\0# branch.head (detached)\0")
    assert st["branch"] == "" and st["head"] == "abc"


def test_parse_log_finds_commits_files_and_fork_point():
    out = ("\x1e" + "c2\x1fc1\x1f2026-02-15T10:00:00+01:00\x1fsecond\n\nb.py\nsrc/c.py\n"
           "\x1e" + "c1\x1fbase0\x1f2026-02-15T09:00:00Z\x1ffirst: with \x1f-free text\n\na.py\n").encode()
    info = gitctx.parse_log(out)
    assert [c["sha"] for c in info["commits"]] == ["c2", "c1"]
    assert info["commits"][0]["files"] == ["b.py", "src/c.py"]
    assert info["fork_point"] == "base0" and not info["truncated"]


def test_parse_log_truncates():
    chunks = "".join(f"\x1ec{i}\x1fc{i + 1}\x1f2026-01-01T00:00:00Z\x1fm{i}\n\nf.py\n"
                     for i in range(gitctx.MAX_COMMITS + 1))
    info = gitctx.parse_log(chunks.encode())
    assert len(info["commits"]) == gitctx.MAX_COMMITS and info["truncated"] and info["fork_point"] == ""


def test_parse_diff_raw_and_numstat_with_renames_and_binary():
    out = b"\0".join([b":100644 100644 1 2 M", b"a.txt", b":100644 000000 3 0 D", b"b c.txt",
                      b":100644 100644 4 5 R090", b"old.py", b"new.py", b":000000 100644 0 6 A", b"bin.dat",
                      b"2\t1\ta.txt", b"0\t3\tb c.txt", b"4\t0\t", b"old.py", b"new.py", b"-\t-\tbin.dat", b""])
    d = gitctx.parse_diff(out)
    assert d["a.txt"] == {"status": "modified", "additions": 2, "deletions": 1}
    assert d["b c.txt"] == {"status": "deleted", "additions": 0, "deletions": 3}
    assert d["new.py"] == {"status": "renamed", "old_path": "old.py", "additions": 4, "deletions": 0}
    assert d["bin.dat"]["binary"] and d["bin.dat"]["status"] == "added"


def test_parse_base_refs_prefers_origin_head(monkeypatch):
    monkeypatch.delenv("THRUM_BASE_BRANCH", raising=False)
    out = (b"refs/heads/main\0\nrefs/remotes/origin/HEAD\0refs/remotes/origin/trunk\n"
           b"refs/remotes/origin/main\0\n")
    assert gitctx.parse_base_refs(out) == ["refs/remotes/origin/trunk", "refs/remotes/origin/main",
                                          "refs/heads/main"]
    monkeypatch.setenv("THRUM_BASE_BRANCH", "develop")
    assert gitctx.parse_base_refs(b"")[0] == "refs/heads/develop"


def test_build_context_merges_committed_and_uncommitted(tmp_path):
    (tmp_path / "a.py").write_text("x\n")
    status = {"branch": "feat", "head": "abc", "files": {"a.py": {"status": "modified"},
                                                         "n.md": {"status": "untracked"}}}
    log_info = {"commits": [{"sha": "c1", "message": "m", "date": "2026-01-01T00:00:00Z", "files": ["b.py"]}],
                "truncated": False, "fork_point": "base"}
    diff = {"a.py": {"status": "modified", "additions": 3, "deletions": 1},
            "b.py": {"status": "added", "additions": 5, "deletions": 0}}
    wc = gitctx.build_context(str(tmp_path), status, log_info, diff)
    assert wc["branch"] == "feat" and wc["changed_files"] == ["a.py", "b.py", "n.md"]
    assert wc["uncommitted_files"] == ["a.py", "n.md"]
    by_path = {f["path"]: f for f in wc["file_changes"]}
    assert by_path["a.py"]["uncommitted"] and by_path["a.py"]["additions"] == 3 and by_path["a.py"]["last_modified"]
    assert by_path["b.py"]["status"] == "added" and by_path["b.py"]["last_modified"] == "2026-01-01T00:00:00Z"
    assert "uncommitted" not in by_path["b.py"]
    assert by_path["n.md"]["status"] == "untracked"
    # line counts alone change the content but not the shape
    wc2 = json.loads(json.dumps(wc))
    wc2["file_changes"][0]["additions"] = 4
    assert gitctx.content_key(wc) != gitctx.content_key(wc2) and gitctx.shape_key(wc) == gitctx.shape_key(wc2)


def test_fit_for_log_bounds_the_line():
    big = {"branch": "b", "worktree_path": "/w", "unmerged_commits": [
        {"sha": "f" * 40, "message": "m" * 300, "files": [f"dir/file_{i}.py" for i in range(50)]} for i in range(100)],
        "changed_files": [f"some/long/path/number_{i}.py" for i in range(300)],
        "uncommitted_files": [f"some/long/path/number_{i}.py" for i in range(300)],
        "file_changes": [{"path": f"some/long/path/number_{i}.py", "status": "modified", "additions": i,
                          "deletions": i, "last_modified": "2026-01-01T00:00:00Z"} for i in range(300)]}
    fitted = gitctx.fit_for_log(big)
    assert len(json.dumps(fitted)) <= gitctx.LOG_BUDGET and fitted["truncated"]
    small = {"branch": "b", "changed_files": ["a"]}
    assert gitctx.fit_for_log(small) == small


def test_parse_seconds():
    assert gitctx.parse_seconds("90") == 90 and gitctx.parse_seconds("1h30m") == 5400
    assert gitctx.parse_seconds("2s") == 2 and gitctx.parse_seconds("x") is None and gitctx.parse_seconds("") is None


def test_worktrees_listed_from_git_files(repo, env, tmp_path):
    git(repo, "worktree", "add", "-q", str(tmp_path / "feat"), "-b", "feat", env=env)
    git(repo, "worktree", "add", "-q", str(tmp_path / "gone"), "-b", "gone", env=env)
    (tmp_path / "feat" / ".thrum" / "identities").mkdir(parents=True)
    (tmp_path / "feat" / ".thrum" / "identities" / "bob.json").write_text("{}")
    import shutil

    shutil.rmtree(tmp_path / "gone")
    common = gitctx.git_common_dir(str(tmp_path / "feat"))
    assert os.path.realpath(common) == os.path.realpath(repo / ".git")
    wts = {os.path.basename(w["path"]): w for w in gitctx.list_worktrees(common)}
    assert wts["repo"]["main"] and wts["feat"]["exists"] and not wts["gone"]["exists"]
    assert list(gitctx.identity_locations(list(wts.values()))) == ["bob"]
    # The same checkouts `git worktree list --porcelain` reports (which reads the same files).
    porcelain = git(repo, "worktree", "list", "--porcelain", env=env)
    listed = {os.path.realpath(line[len("worktree "):]) for line in porcelain.splitlines()
              if line.startswith("worktree ")}
    listed = {p for p in listed if "thrum-sync" not in p}
    assert {os.path.realpath(w["path"]) for w in wts.values()} == listed
    assert gitctx.ref_exists(common, "feat") and not gitctx.ref_exists(common, "nope")


def test_read_context_without_daemon(repo, env):
    git(repo, "checkout", "-q", "-b", "feat", env=env)
    (repo / "x.py").write_text("one\ntwo\n")
    git(repo, "add", "x.py", env=env)
    git(repo, "commit", "-q", "-m", "add x", env=env)
    (repo / "README.md").write_text("changed\n")
    wc = gitctx.read_context(str(repo))
    assert wc["branch"] == "feat" and [c["message"] for c in wc["unmerged_commits"]] == ["add x"]
    assert sorted(wc["changed_files"]) == ["README.md", "x.py"] and wc["uncommitted_files"] == ["README.md"]


# -- instructions section ----------------------------------------------------------------------

def test_apply_section_append_skip_replace():
    section = runtimes.instructions_section()
    text, action = runtimes.apply_section("# My project\n\nRules.\n", section, force=False)
    assert action == "appended" and text.startswith("# My project\n\nRules.\n\n---\n\n# Thrum Agent Coordination")
    again, action = runtimes.apply_section(text, section, force=False)
    assert action == "skipped" and again == text
    edited = text.replace("thrum prime", "thrum prime (old)") + "\n---\n\n# Later\nmore\n"
    replaced, action = runtimes.apply_section(edited, section, force=True)
    assert action == "replaced" and "(old)" not in replaced and replaced.count(runtimes.INSTRUCTIONS_MARKER) == 1
    assert replaced.startswith("# My project") and replaced.rstrip().endswith("# Later\nmore")


# -- context notes through the daemon ------------------------------------------------------------

def test_context_save_show_clear_preamble(agents):
    t = agents
    saved = t.json("context", "save", input="Done: login form\nNext: tests\n", name="alice")
    assert saved["size"] == len("Done: login form\nNext: tests\n")
    path = t.repo / ".thrum" / "context" / "alice.md"
    assert path.read_text() == "Done: login form\nNext: tests\n"
    assert (t.repo / ".thrum" / "context" / "alice_preamble.md").exists()
    shown = t.run("context", "show", name="alice").stdout
    assert shown.startswith("# Context for alice (") and "Thrum quick reference" in shown and "Next: tests" in shown
    raw = t.run("context", "show", "--raw", "--no-preamble", name="alice").stdout
    assert raw == "Done: login form\nNext: tests\n"
    as_json = t.json("context", "show", name="alice")
    assert as_json["content"] == "Done: login form\nNext: tests\n" and as_json["has_preamble"]
    notes = t.repo / "notes.md"
    notes.write_text("from a file\n")
    t.run("context", "save", "--file", notes, "--agent", "bob")
    assert t.json("context", "show", "--agent", "bob")["content"] == "from a file\n"
    t.run("context", "preamble", "--file", "-", input="# custom\n", name="alice")
    assert t.run("context", "preamble", name="alice").stdout == "# custom\n"
    t.run("context", "clear", name="alice")
    t.run("context", "clear", name="alice")  # idempotent
    assert not path.exists()
    assert "No context saved" in t.run("context", "show", "--no-preamble", name="alice").stdout


@pytest.mark.parametrize("bad", ["../etc", "Alice", "a/b", "all"])
def test_context_names_are_validated(agents, bad):
    proc = agents.run("context", "save", "--agent", bad, input="x", check=False)
    assert proc.returncode == 2 and "Error" in proc.stderr
    assert not (agents.repo / ".thrum" / "etc.md").exists()


def test_context_rpc_refuses_traversal(agents):
    import base64

    from thrum.rpc import RPCError

    with pytest.raises(RPCError):
        agents.call("context.save", agent_name="../../x", content=base64.b64encode(b"x").decode())


def test_context_sync_goes_through_the_log(agents):
    t = agents
    t.run("context", "save", input="shared notes\n", name="alice")
    first = t.json("context", "sync", name="alice")
    assert first["synced"]
    assert t.json("context", "sync", name="alice")["unchanged"]
    lines = [json.loads(x) for x in (t.sync_dir / "events.jsonl").read_text().splitlines() if x]
    updates = [e for e in lines if e["type"] == "context.update"]
    assert [(e["agent_id"], e["content"]) for e in updates] == [("alice", "shared notes\n")]
    # Without the local file (another clone), the synced copy is shown.
    (t.repo / ".thrum" / "context" / "alice.md").unlink()
    shown = t.json("context", "show", name="alice")
    assert shown["source"] == "sync" and shown["content"] == "shared notes\n"
    # The sync worktree holds only the log: no stray files for the sync engine to trip on.
    status = git(t.sync_dir, "status", "--porcelain", "--untracked-files=all").splitlines()
    paths = [line.split(maxsplit=1)[-1] for line in status]
    assert all(p == "events.jsonl" or p.startswith("messages/") for p in paths), status


def test_quickstart_writes_preamble_in_the_main_context_dir(daemon, env, tmp_path):
    extra = tmp_path / "extra.md"
    extra.write_text("Team rule: small commits.\n")
    daemon.json("quickstart", "--name", "carol", "--role", "tester", "--module", "qa", "--preamble-file", extra,
                name="carol")
    text = (daemon.repo / ".thrum" / "context" / "carol_preamble.md").read_text()
    assert "Thrum quick reference" in text and text.endswith("---\n\nTeam rule: small commits.\n")


def test_heartbeat_accepts_a_worktree_ref(agents, tmp_path, env):
    t = agents
    other = tmp_path / "elsewhere"
    git(t.repo, "worktree", "add", "-q", str(other), "-b", "side", env=env)
    (other / "side.txt").write_text("s\n")
    t.run("session", "heartbeat", "--add-ref", f"worktree:{other}", name="alice")
    wc = wait_for(lambda: [w for w in t.json("agent", "context", "--agent", "alice")["contexts"]
                           if "side.txt" in (w.get("changed_files") or [])], what="alice's new worktree")
    assert wc[0]["branch"] == "side"


def test_refresh_context_rpc(agents):
    t = agents
    (t.repo / "fresh.py").write_text("f\n")
    asked = t.call("agent.refreshContext", agent_id="alice")
    assert asked["scheduled"] == [str(t.repo)]
    from thrum.events import parse_timestamp_ns

    def refreshed():
        wc = t.call("agent.listContext", agent_id="alice")["contexts"][0]
        checked = wc.get("git_checked_at")
        return checked and parse_timestamp_ns(checked) >= parse_timestamp_ns(asked["requested_at"]) and wc
    wc = wait_for(refreshed, what="the refresh")
    assert "fresh.py" in wc["changed_files"] and wc["local"] and wc["status"] == "active"
    assert t.call("agent.refreshContext", agent_id="nobody")["scheduled"] == []
