"""Git sync across clones, with real git: a bare remote, clones with their own daemons.

Rounds are driven with `thrum sync force` (it waits for a round that starts after
it is asked for), never with timers: every daemon here runs with a one-hour
interval, no write debounce and no probing of the remote, so only forced rounds
(and the one at start-up, which a forced round always waits behind) touch git.
Probing at default settings is tested in tests/test_cross_clone.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import FACTOR, Thrum, extract_fixture, git, make_repo, pid_alive, wait_for


# -- helpers --------------------------------------------------------------------------------

@pytest.fixture
def sync_env(env) -> dict:
    e = dict(env)
    e["THRUM_SYNC_INTERVAL"] = "3600"
    e["THRUM_SYNC_DEBOUNCE"] = "0"
    e["THRUM_SYNC_PROBE_INTERVAL"] = "0"
    return e


@pytest.fixture
def remote(tmp_path, sync_env) -> Path:
    """A bare remote holding one commit on main (as a hosting service would)."""
    bare = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(bare), env=sync_env)
    seed = make_repo(tmp_path / "seed", sync_env)
    git(seed, "push", "-q", str(bare), "main", env=sync_env)
    return bare


class Clones:
    def __init__(self, tmp_path: Path, remote: Path, env: dict) -> None:
        self.tmp, self.remote, self.env = tmp_path, remote, env
        self.started: list[Thrum] = []

    def clone(self, name: str, *, start: bool = True, init: bool = True, env: dict | None = None) -> Thrum:
        path = self.tmp / name
        git(self.tmp, "clone", "-q", str(self.remote), str(path), env=self.env)
        t = Thrum(path, env or self.env)
        if init:
            t.init()
        if start:
            t.start()
            self.started.append(t)
        return t

    def pair(self, env_a: dict | None = None) -> tuple[Thrum, Thrum]:
        """Clones a (agent alice) and b (agent bob) that have both synced once and agree."""
        a = self.clone("a", env=env_a)
        a.quickstart("alice")
        force(a)
        b = self.clone("b")
        b.quickstart("bob")
        force(b)
        force(a)
        return a, b

    def stop_all(self) -> None:
        for t in self.started:
            t.stop()


@pytest.fixture
def clones(tmp_path, remote, sync_env):
    c = Clones(tmp_path, remote, sync_env)
    try:
        yield c
    finally:
        c.stop_all()


def force(t: Thrum, check: bool = True) -> dict:
    proc = t.run("sync", "force", "--json", check=False)
    data = json.loads(proc.stdout)
    if check and proc.returncode != 0:
        raise AssertionError(f"sync force failed: {proc.stdout} {proc.stderr}")
    return data


def message_ids(t: Thrum) -> set[str]:
    ids: set[str] = set()
    page = 1
    while True:
        res = t.call("message.list", page_size=100, page=page)
        ids.update(m["message_id"] for m in res["messages"])
        if page >= res["total_pages"]:
            return ids
        page += 1


def log_lines(t: Thrum) -> list[bytes]:
    lines = []
    for path in [t.sync_dir / "events.jsonl", *sorted((t.sync_dir / "messages").glob("*.jsonl"))]:
        if path.exists():
            lines += path.read_bytes().splitlines()
    return lines


def event_id_counts(t: Thrum) -> Counter:
    counts: Counter = Counter()
    for line in log_lines(t):
        try:
            counts[json.loads(line)["event_id"]] += 1
        except (ValueError, KeyError):
            pass
    return counts


def remote_heads(remote: Path, env: dict) -> str:
    return git(remote.parent, "ls-remote", str(remote), env=env)


def as_other_writer(tmp_path: Path, remote: Path, env: dict, files: dict[str, bytes], name: str = "other") -> None:
    """Append lines to the remote's a-sync the way another tool would: clone, append, commit, push."""
    work = tmp_path / name
    if not work.exists():
        git(tmp_path, "clone", "-q", "--branch", "a-sync", str(remote), str(work), env=env)
    else:
        git(work, "pull", "-q", "--ff-only", "origin", "a-sync", env=env)
    for rel, data in files.items():
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:
            f.write(data)
    git(work, "add", "-A", env=env)
    git(work, "commit", "-q", "-m", "other writer", env=env)
    git(work, "push", "-q", "origin", "HEAD:a-sync", env=env)


# -- both directions -------------------------------------------------------------------------

def test_messages_agents_groups_sessions_travel_both_ways(clones, remote, sync_env):
    a = clones.clone("a")
    a.quickstart("alice", "implementer", "auth")
    first = force(a)
    assert first["ok"] and first["pushed"] >= 2 and first["sync_state"] == "synced"

    b = clones.clone("b")  # joins after a-sync exists: init adopts it
    assert git(b.repo, "rev-parse", "a-sync", env=sync_env) == git(b.repo, "rev-parse", "origin/a-sync",
                                                                   env=sync_env)
    b.quickstart("bob", "reviewer", "auth")
    force(b)
    sent_b = b.json("send", "hello from b", "--to", "@alice", name="bob")
    b.call("group.create", name="backend", description="Backend crew", caller_agent_id="bob")
    sent_a = a.json("send", "hello from a", "--to", "@everyone", name="alice")

    rb = force(b)
    assert rb["pushed"] >= 2 and rb["pulled"] == 0
    ra = force(a)
    assert ra["pulled"] >= 3 and ra["pushed"] >= 1
    # where the round's time went, stage by stage (and sync.status keeps it for the last round)
    stages = ra["stages_ms"]
    assert set(stages) == {"fetch", "merge", "commit", "push"}, stages
    assert all(isinstance(ms, int) and ms >= 0 for ms in stages.values())
    assert sum(stages.values()) <= ra["duration_ms"] + len(stages)  # (each rounded to the millisecond)
    assert a.json("sync", "status")["last_round"]["stages_ms"] == stages
    assert "(fetch " in a.run("sync", "force").stdout
    rb = force(b)
    assert rb["pulled"] >= 1

    ids = {sent_a["message_id"], sent_b["message_id"]}
    assert ids <= message_ids(a) and ids <= message_ids(b)
    inbox = a.json("inbox", "--peek", name="alice")
    assert "hello from b" in [m["body"]["content"] for m in inbox["messages"]]
    for t in (a, b):
        agents = {x["agent_id"] for x in t.call("agent.list")["agents"]}
        assert {"alice", "bob"} <= agents
        assert "backend" in [g["name"] for g in t.call("group.list")["groups"]]
        sessions = t.call("session.list")["sessions"]
        assert {"alice", "bob"} <= {s["agent_id"] for s in sessions}

    # One shared history: a single root, and both clones agree with the remote (the peek above recorded
    # a delivery receipt on a, which b pulls).
    force(a)
    force(b)
    for t in (a, b):
        roots = git(t.repo, "rev-list", "--max-parents=0", "a-sync", env=sync_env).split()
        assert len(roots) == 1
    head = git(a.repo, "rev-parse", "a-sync", env=sync_env)
    assert head == git(b.repo, "rev-parse", "a-sync", env=sync_env)
    assert head in remote_heads(remote, sync_env)
    for t in (a, b):
        status = t.json("sync", "status")
        assert status["sync_state"] == "synced" and status["ahead"] == 0 and status["behind"] == 0
        assert t.call("health")["sync_state"] == "synced"
        assert max(event_id_counts(t).values()) == 1


def test_two_clones_initialized_before_either_pushed_are_joined(clones, remote, sync_env):
    a = clones.clone("a", start=False)
    late = dict(sync_env, GIT_COMMITTER_DATE="2030-01-01T00:00:00Z", GIT_AUTHOR_DATE="2030-01-01T00:00:00Z")
    b = clones.clone("b", start=False, env=late)  # both start their own a-sync: neither has pushed yet
    # ... from the same root commit, whenever they do it: the histories are related.
    assert git(a.repo, "rev-parse", "a-sync", env=sync_env) == git(b.repo, "rev-parse", "a-sync", env=sync_env)
    for t in (a, b):
        t.start()
        clones.started.append(t)
    a.quickstart("alice")
    b.quickstart("bob")
    m_a = a.json("send", "from a", name="alice")["message_id"]
    m_b = b.json("send", "from b", name="bob")["message_id"]
    for t in (a, b, a):
        assert force(t)["ok"]
    assert {m_a, m_b} <= message_ids(a) and {m_a, m_b} <= message_ids(b)
    assert len(git(a.repo, "rev-list", "--max-parents=0", "a-sync", env=sync_env).split()) == 1
    for t in (a, b):
        assert max(event_id_counts(t).values()) == 1


def test_sync_state_is_truthful(clones):
    a = clones.clone("a")
    a.quickstart("alice")
    force(a)
    assert a.call("health")["sync_state"] == "synced"
    a.json("send", "not yet pushed", name="alice")
    status = a.json("sync", "status")
    assert status["sync_state"] == "pending" and status["uncommitted_events"] >= 1
    assert a.call("health")["sync_state"] == "pending"
    quick = a.call("sync.force")  # without wait: answers at once
    assert quick["triggered"] is True and "sync_state" in quick
    force(a)
    assert a.json("sync", "status")["sync_state"] == "synced"
    human = a.run("sync", "status").stdout
    assert "Sync loop:  ✓ running" in human and "State:      ✓ synced" in human and "Last sync:" in human


# -- concurrency -----------------------------------------------------------------------------

def _popen(t: Thrum, *args, name: str | None = None) -> subprocess.Popen:
    e = dict(t.env)
    if name:
        e["THRUM_NAME"] = name
    return subprocess.Popen([sys.executable, "-m", "thrum", *args], cwd=t.repo, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120 * FACTOR)
        assert p.returncode in (0, 1), err
        outs.append(out)
    return outs


def test_concurrent_sends_and_rounds_converge_exactly_once(clones, sync_env):
    a, b = clones.pair()
    sent: set[str] = set()
    for rnd in range(3):
        procs = []
        for i in range(4):
            procs.append(_popen(a, "send", f"a{rnd}.{i}", "--json", name="alice"))
            procs.append(_popen(b, "send", f"b{rnd}.{i}", "--json", name="bob"))
        # rounds on both sides while the sends are still arriving
        procs += [_popen(a, "sync", "force", "--json"), _popen(b, "sync", "force", "--json")]
        for out in _finish(procs):
            data = json.loads(out)
            if "message_id" in data:
                sent.add(data["message_id"])
    assert len(sent) == 24
    for t in (a, b, a, b):  # settle: every side has merged every other side's last push
        force(t)
    assert message_ids(a) == message_ids(b) == sent
    for t in (a, b):
        counts = event_id_counts(t)
        assert counts and max(counts.values()) == 1, [k for k, v in counts.items() if v > 1]
    assert git(a.repo, "rev-parse", "a-sync", env=sync_env) == git(b.repo, "rev-parse", "a-sync", env=sync_env)


def test_rejected_push_is_fetched_merged_and_retried(tmp_path, clones, remote, sync_env):
    a, b = clones.pair()
    # b's next fetch sees a snapshot taken now, before a pushes again; its push goes to the
    # real remote, which by then has a's commit: a genuine "fetch first" rejection.
    stale = tmp_path / "stale.git"
    git(tmp_path, "clone", "-q", "--bare", str(remote), str(stale), env=sync_env)
    mark = tmp_path / "served-stale"
    wrapper = tmp_path / "upload-pack.sh"
    wrapper.write_text(f"#!/bin/sh\nif [ ! -e '{mark}' ]; then touch '{mark}'; exec git upload-pack '{stale}'; fi\n"
                       'exec git upload-pack "$@"\n')
    wrapper.chmod(0o755)
    git(b.repo, "config", "remote.origin.uploadpack", str(wrapper), env=sync_env)

    m_a = a.json("send", "a first", name="alice")["message_id"]
    force(a)
    m_b = b.json("send", "b second", name="bob")["message_id"]
    rb = force(b)
    assert mark.exists()
    assert rb["ok"] and rb["push_attempts"] == 2, rb
    # b had committed on the stale head: its retry joins both lines of history
    parents = git(b.repo, "rev-list", "--parents", "-n1", "a-sync", env=sync_env).split()[1:]
    assert len(parents) == 2
    assert rb["pulled"] >= 1 and m_a in message_ids(b)
    force(a)
    assert m_b in message_ids(a)
    for t in (a, b):
        assert max(event_id_counts(t).values()) == 1


# -- offline ---------------------------------------------------------------------------------

def test_remote_that_disappears_and_comes_back(clones, remote, sync_env):
    a, b = clones.pair()

    gone = remote.with_name("remote-moved.git")
    remote.rename(gone)
    offline = {a.json("send", f"offline {i}", name="alice")["message_id"] for i in range(3)}
    proc = a.run("sync", "force", check=False)
    assert proc.returncode == 1 and "sync failed" in proc.stderr and "origin" in proc.stderr
    status = a.json("sync", "status")
    assert status["sync_state"] == "error" and status["last_error"]
    assert "Last error:" in a.run("sync", "status").stdout
    assert a.call("health")["sync_state"] == "error"
    # Everything keeps working locally, and the events are committed (not just in files).
    assert offline <= message_ids(a)
    committed = git(a.repo, "show", "a-sync:messages/alice.jsonl", env=sync_env)
    assert all(m in committed for m in offline)

    gone.rename(remote)
    back = force(a)
    assert back["ok"] and back["pushed"] >= 3 and back["sync_state"] == "synced"
    assert "last_error" not in a.json("sync", "status")
    force(b)
    assert offline <= message_ids(b)


def test_no_remote_commits_locally(tmp_path, sync_env):
    repo = make_repo(tmp_path / "solo", sync_env)
    t = Thrum(repo, sync_env)
    t.init()
    t.start()
    try:
        t.quickstart("alice")
        mid = t.json("send", "alone", name="alice")["message_id"]
        res = force(t)
        assert res["ok"] and res["pushed"] == 0 and res["committed"] >= 1
        assert res["sync_state"] == "local" and res["remote"] == ""
        assert mid in git(repo, "show", "a-sync:messages/alice.jsonl", env=sync_env)
        assert "no 'origin' remote" in t.run("sync", "status").stdout
    finally:
        t.stop()


# -- joining late, local-only ----------------------------------------------------------------

def test_third_clone_joining_late_sees_everything(clones, sync_env):
    a = clones.clone("a")
    a.quickstart("alice")
    b = clones.clone("b")
    b.quickstart("bob")
    for i in range(3):
        a.json("send", f"a{i}", name="alice")
        b.json("send", f"b{i}", name="bob")
    b.call("group.create", name="crew", caller_agent_id="bob")
    for t in (a, b, a):
        force(t)
    c = clones.clone("c")
    res = force(c)
    assert res["ok"]
    assert message_ids(c) == message_ids(a) == message_ids(b)
    assert len(message_ids(c)) == 6
    assert {"alice", "bob"} <= {x["agent_id"] for x in c.call("agent.list")["agents"]}
    assert "crew" in [g["name"] for g in c.call("group.list")["groups"]]
    assert len(git(c.repo, "rev-list", "--max-parents=0", "a-sync", env=sync_env).split()) == 1


def test_local_only_publishes_nothing_and_reads_no_remote(clones, remote, sync_env):
    local_env = dict(sync_env, THRUM_LOCAL="1")
    loc = clones.clone("loc", env=local_env)
    loc.quickstart("lou")
    mid = loc.json("send", "private", name="lou")["message_id"]
    res = force(loc)
    assert res["ok"] and res["local_only"] and res["pushed"] == 0 and res["sync_state"] == "local"
    assert "a-sync" not in remote_heads(remote, sync_env)
    # The data is committed, under a ref `git push --all` does not publish.
    assert mid in git(loc.repo, "show", "refs/thrum/a-sync:messages/lou.jsonl", env=sync_env)
    assert "local-only" in loc.run("sync", "status").stdout

    # Someone else publishes a-sync; the user fetches it by hand: local-only still ignores it.
    pub = clones.clone("pub")
    pub.quickstart("pat")
    theirs = pub.json("send", "public", name="pat")["message_id"]
    force(pub)
    git(loc.repo, "fetch", "-q", "origin", env=sync_env)
    assert git(loc.repo, "rev-parse", "origin/a-sync", env=sync_env)
    force(loc)
    assert theirs not in message_ids(loc)
    heads = remote_heads(remote, sync_env)
    assert git(pub.repo, "rev-parse", "a-sync", env=sync_env) in heads  # only pub's history is there
    assert git(loc.repo, "rev-parse", "refs/thrum/a-sync", env=sync_env) not in heads
    assert "private" not in git(pub.repo, "log", "-p", "origin/a-sync", env=sync_env)


def test_local_flag_on_daemon_start(clones, remote, sync_env):
    loc = clones.clone("loc", start=False)
    loc.run("daemon", "start", "--local")
    clones.started.append(loc)
    loc.quickstart("lou")
    assert force(loc)["local_only"] is True
    assert "a-sync" not in remote_heads(remote, sync_env)


# -- bad lines, Go lines, cost --------------------------------------------------------------

def _event(eid: str, mid: str, text: str) -> bytes:
    from thrum.events import encode_line

    return encode_line({"agent_id": "gopher", "body": {"content": text, "format": "markdown"},
                        "event_id": eid, "message_id": mid, "session_id": "ses_go",
                        "timestamp": "2026-02-01T10:00:00Z", "type": "message.create", "v": 1})


def test_unparseable_remote_line_is_kept_reported_and_not_duplicated(tmp_path, clones, remote, sync_env):
    a = clones.clone("a")
    a.quickstart("alice")
    force(a)
    state_before = (a.var / "sync-state.json").read_text()
    bad = b'{"type": "message.create", "broken'
    lines = (_event("evt_01KBADLINE00000000000000A1", "msg_01KBADLINE00000000000000A1", "before")
             + bad + b"\n"
             + _event("evt_01KBADLINE00000000000000A2", "msg_01KBADLINE00000000000000A2", "after"))
    as_other_writer(tmp_path, remote, sync_env, {"messages/gopher.jsonl": lines})
    res = force(a)
    assert res["ok"] and res["pulled"] == 3 and res["bad_lines"] == 1
    assert {"msg_01KBADLINE00000000000000A1", "msg_01KBADLINE00000000000000A2"} <= message_ids(a)
    local = (a.sync_dir / "messages" / "gopher.jsonl").read_bytes()
    assert local.count(bad + b"\n") == 1
    assert a.call("health").get("bad_lines", 0) >= 1
    status = a.json("sync", "status")
    assert status["bad_remote_lines"] == 1
    assert "unparseable" in a.run("sync", "status").stdout
    # more rounds, more remote writes: the bad line is never appended twice
    as_other_writer(tmp_path, remote, sync_env,
                    {"messages/gopher.jsonl": _event("evt_01KBADLINE00000000000000A3", "msg_01KBADLINE00000000000000A3",
                                                     "later")})
    force(a)
    force(a)
    local = (a.sync_dir / "messages" / "gopher.jsonl").read_bytes()
    assert local.count(bad + b"\n") == 1
    # The round's memory of it lost (the daemon died before saving its state): the line comes in a diff
    # again, and is found in the local file instead.
    a.stop()
    (a.var / "sync-state.json").write_text(state_before)
    a.start()
    res = force(a)
    assert res["ok"] and res["bad_lines"] == 0
    assert (a.sync_dir / "messages" / "gopher.jsonl").read_bytes().count(bad + b"\n") == 1
    assert "msg_01KBADLINE00000000000000A3" in message_ids(a)
    b = clones.clone("b")
    force(b)
    assert (b.sync_dir / "messages" / "gopher.jsonl").read_bytes().count(bad + b"\n") == 1


def test_go_encoded_lines_merge_byte_for_byte(tmp_path, clones, remote, sync_env, fixture_tar):
    src = tmp_path / "go"
    extract_fixture(fixture_tar, src)
    go_events = (src / ".thrum" / "events.jsonl").read_bytes().splitlines(keepends=True)[:20]
    msg_file = sorted((src / ".thrum" / "messages").glob("*.jsonl"))[0]
    go_msgs = msg_file.read_bytes().splitlines(keepends=True)[:30]
    # A hand-written line in non-canonical form (spaces, unsorted keys) must also stay as it is.
    odd = (b'{"type": "message.create", "message_id": "msg_odd0000001", "event_id": "evt_odd0000001", '
           b'"agent_id": "' + msg_file.stem.encode() + b'", "timestamp": "2026-01-05T00:00:00Z", '
           b'"body": {"format": "markdown", "content": "odd & <spaced>"}}\n')
    a = clones.clone("a")
    a.quickstart("alice")
    force(a)
    as_other_writer(tmp_path, remote, sync_env, {"events.jsonl": b"".join(go_events),
                                                 f"messages/{msg_file.name}": b"".join(go_msgs) + odd})
    b = clones.clone("b")
    b.quickstart("bob")
    for t in (a, b, a, b):
        force(t)
    go_lines = go_events + go_msgs + [odd]
    for t in (a, b):
        mine = (t.sync_dir / "events.jsonl").read_bytes() + (t.sync_dir / "messages" / msg_file.name).read_bytes()
        for line in go_lines:
            assert mine.count(line) == 1, line[:80]
        ids = message_ids(t)
        assert "msg_odd0000001" in ids
        assert {json.loads(line)["message_id"] for line in go_msgs} <= ids
        assert max(event_id_counts(t).values()) == 1


def test_a_round_reads_only_what_is_new(tmp_path, clones, remote, sync_env):
    a = clones.clone("a")
    a.quickstart("alice")
    force(a)
    big = b"".join(_event(f"evt_01KCOST{i:019d}", f"msg_01KCOST{i:019d}", f"bulk {i}") for i in range(300))
    as_other_writer(tmp_path, remote, sync_env, {"messages/gopher.jsonl": big})
    first = force(a)
    assert first["pulled"] == 300 and first["examined"] == 300
    more = b"".join(_event(f"evt_01KCOSU{i:019d}", f"msg_01KCOSU{i:019d}", f"more {i}") for i in range(5))
    as_other_writer(tmp_path, remote, sync_env, {"messages/gopher.jsonl": more})
    second = force(a)
    assert second["pulled"] == 5 and second["examined"] == 5  # the tail only, not the 305-line file
    # A round after our own push (remote head = our commit) examines nothing at all.
    a.json("send", "mine", name="alice")
    force(a)
    assert force(a)["examined"] == 0


# -- sync soon after writes --------------------------------------------------------------------

def test_local_writes_are_pushed_soon_without_a_force(clones, remote, sync_env):
    quick = dict(sync_env, THRUM_SYNC_DEBOUNCE="0.2")
    a = clones.clone("a", env=quick)
    a.quickstart("alice")
    mid = a.json("send", "soon", name="alice")["message_id"]

    def pushed():
        heads = remote_heads(remote, sync_env)
        if "refs/heads/a-sync" not in heads:
            return False
        return mid in git(a.repo, "show", "origin/a-sync:messages/alice.jsonl", env=sync_env, check=False)
    wait_for(lambda: (git(a.repo, "fetch", "-q", "origin", env=sync_env, check=False) is not None) and pushed(),
             timeout=60, what="the debounced round to push the message")


# -- init ----------------------------------------------------------------------------------

def test_init_adopts_the_remote_branch_and_says_so(clones, remote, sync_env):
    a = clones.clone("a")
    a.quickstart("alice")
    force(a)
    path = clones.tmp / "fresh"
    git(clones.tmp, "clone", "-q", str(remote), str(path), env=sync_env)
    git(path, "update-ref", "-d", "refs/remotes/origin/a-sync", env=sync_env)  # init must fetch it itself
    out = Thrum(path, sync_env).run("init").stdout
    assert "Adopted: a-sync branch from origin" in out
    assert git(path, "rev-parse", "a-sync", env=sync_env) == git(a.repo, "rev-parse", "a-sync", env=sync_env)
    assert b'"agent_id":"alice"' in (path / ".git" / "thrum-sync" / "a-sync" / "events.jsonl").read_bytes()
    # The user's own checkout is untouched: same branch, clean status.
    assert git(path, "rev-parse", "--abbrev-ref", "HEAD", env=sync_env) == "main"
    assert git(path, "status", "--porcelain", "--untracked-files=no", env=sync_env) == ""


def test_init_offline_says_the_histories_will_be_joined(clones, remote, sync_env):
    path = clones.tmp / "offline"
    git(clones.tmp, "clone", "-q", str(remote), str(path), env=sync_env)
    remote.rename(remote.with_name("away.git"))
    try:
        out = Thrum(path, sync_env).run("init").stdout
    finally:
        remote.with_name("away.git").rename(remote)
    assert "Created: a-sync branch" in out and "Note: could not fetch a-sync from origin" in out


def test_init_in_local_only_mode_does_not_read_the_remote(clones, remote, sync_env):
    a = clones.clone("a")
    force(a)
    loc = clones.clone("loc", init=False, start=False, env=dict(sync_env, THRUM_LOCAL="1"))
    out = loc.run("init").stdout
    assert "Created: a-sync branch" in out and "Adopted" not in out


def test_branch_moved_by_hand_loses_nothing(clones, sync_env):
    a = clones.clone("a")
    a.quickstart("alice")
    force(a)
    b = clones.clone("b")
    b.quickstart("bob")
    m_b = b.json("send", "from b", name="bob")["message_id"]
    force(b)
    m_a = a.json("send", "from a, not pushed", name="alice")["message_id"]
    # The user fetches and moves a's branch onto origin's behind thrum's back.
    git(a.repo, "fetch", "-q", "origin", env=sync_env)
    git(a.repo, "update-ref", "refs/heads/a-sync", "refs/remotes/origin/a-sync", env=sync_env)
    res = force(a)
    assert res["ok"] and m_b in message_ids(a)
    force(b)
    assert m_a in message_ids(b)
    for t in (a, b):
        assert max(event_id_counts(t).values()) == 1


def test_leaving_local_only_publishes_what_was_kept(clones, remote, sync_env):
    loc = clones.clone("loc", env=dict(sync_env, THRUM_LOCAL="1"))
    loc.quickstart("lou")
    mid = loc.json("send", "kept locally", name="lou")["message_id"]
    force(loc)
    assert "a-sync" not in remote_heads(remote, sync_env)
    loc.stop()
    loc.env = dict(sync_env, THRUM_LOCAL="0")
    loc.start()
    res = force(loc)
    assert res["ok"] and not res["local_only"] and res["sync_state"] == "synced"
    assert "refs/heads/a-sync" in remote_heads(remote, sync_env)
    other = clones.clone("other")
    force(other)
    assert mid in message_ids(other)


def test_git_hygiene_hooks_signing_stray_files_and_the_users_checkout(clones, sync_env):
    a = clones.clone("a", start=False)
    hooks = a.repo / "my-hooks"
    hooks.mkdir()
    for name in ("pre-push", "reference-transaction", "post-commit", "pre-commit"):
        (hooks / name).write_text("#!/bin/sh\necho hook ran >&2\nexit 1\n")
        (hooks / name).chmod(0o755)
    for key, value in (("core.hooksPath", str(hooks)), ("commit.gpgsign", "true"), ("push.gpgSign", "true"),
                       ("user.signingkey", "no-such-key")):
        git(a.repo, "config", key, value, env=sync_env)
    (a.repo / "work.txt").write_text("staged by the user\n")
    git(a.repo, "add", "work.txt", env=sync_env, check=False)  # the user's index has a staged file
    head_before = git(a.repo, "rev-parse", "HEAD", env=sync_env)
    a.start()
    clones.started.append(a)
    (a.sync_dir / "stray.txt").write_text("not ours to commit\n")
    (a.sync_dir / "messages" / "half.jsonl.tmp").write_text("{")
    a.quickstart("alice")
    a.json("send", "hygienic", name="alice")
    res = force(a)
    assert res["ok"] and res["pushed"] >= 3
    tree = git(a.repo, "ls-tree", "-r", "--name-only", "origin/a-sync", env=sync_env).split()
    assert sorted(tree) == ["events.jsonl", "messages/alice.jsonl"]
    assert git(a.repo, "log", "-1", "--format=%an <%ae>", "a-sync", env=sync_env) == "thrum <thrum@localhost>"
    assert git(a.repo, "log", "-1", "--format=%G?", "a-sync", env=sync_env) == "N"  # not signed
    assert git(a.repo, "rev-parse", "HEAD", env=sync_env) == head_before
    assert git(a.repo, "rev-parse", "--abbrev-ref", "HEAD", env=sync_env) == "main"
    assert git(a.repo, "diff", "--cached", "--name-only", env=sync_env) == "work.txt"


def test_remote_events_that_cannot_be_projected_stop_nothing(tmp_path, clones, remote, sync_env):
    a = clones.clone("a")
    a.quickstart("alice")
    force(a)
    poison = (b'{"agent_id":{"not":"a string"},"event_id":"evt_01KPOISON0000000000000001","kind":"agent",'
              b'"timestamp":"2026-02-01T10:00:00Z","type":"agent.register","v":1}\n'
              b'{"event_id":"evt_01KPOISON0000000000000002","group_id":["grp_x"],"name":"odd",'
              b'"timestamp":"2026-02-01T10:00:00Z","type":"group.create","v":1}\n'
              b'{"event_id":"evt_01KPOISON0000000000000004","group_id":"grp_y","name":"odd","timestamp":5,'
              b'"type":"group.create","v":1}\n')
    good = _event("evt_01KPOISON0000000000000003", "msg_01KPOISON0000000000000003", "still arrives")
    as_other_writer(tmp_path, remote, sync_env, {"events.jsonl": poison, "messages/gopher.jsonl": good})
    res = force(a)
    assert res["ok"] and res["pulled"] == 4
    assert "msg_01KPOISON0000000000000003" in message_ids(a)
    assert a.call("health").get("bad_lines", 0) >= 2
    # kept in the log (once), and the daemon still starts on it: a rebuild does not trip either
    assert (a.sync_dir / "events.jsonl").read_bytes().count(poison) == 1
    a.stop()
    (a.var / "messages.db").unlink()
    a.start()
    assert "msg_01KPOISON0000000000000003" in message_ids(a)
    force(a)
    assert (a.sync_dir / "events.jsonl").read_bytes().count(poison) == 1


def test_git_left_running_by_a_killed_daemon_is_stopped_by_the_next(tmp_path, clones, sync_env):
    """A daemon killed with SIGKILL cannot stop its git children (a fetch or push of a large repository runs
    for minutes); the next daemon stops the ones still running before it starts anything."""
    hang = tmp_path / "hang-fetch"
    pid_file = tmp_path / "fetch.pid"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real_git = shutil.which("git", path=sync_env.get("PATH"))
    wrapper = bin_dir / "git"
    wrapper.write_text(f"""#!/bin/sh
# A fetch that hangs while {hang} exists (a slow remote); anything else is the real git.
for a in "$@"; do
    if [ "$a" = fetch ] && [ -e "{hang}" ]; then echo $$ > "{pid_file}"; exec sleep 300; fi
done
exec "{real_git}" "$@"
""")
    wrapper.chmod(0o755)
    env = dict(sync_env, PATH=f"{bin_dir}{os.pathsep}{sync_env.get('PATH', os.defpath)}")
    a = clones.clone("a", env=env)
    a.quickstart("alice")
    hang.touch()
    a.call("sync.force")  # without wait: the round is under way when the call returns
    fetch_pid = wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), what="the fetch to hang")
    fetch_pid = int(fetch_pid)
    assert pid_alive(fetch_pid)
    a.kill()
    assert pid_alive(fetch_pid)  # the killed daemon's child runs on
    hang.unlink()
    a.start()
    wait_for(lambda: not pid_alive(fetch_pid), what="the next daemon to stop the left-over fetch")
    assert force(a)["ok"]  # and syncs as before
