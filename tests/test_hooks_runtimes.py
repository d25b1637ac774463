"""thrum's hooks driven by the real runtimes (Claude Code, Codex, Gemini CLI from npm), each talking to our
scripted model server on 127.0.0.1: what the runtime sends to the model is where the assertions look.

Per runtime, in print mode: a message another agent sends while this one runs a tool is in the very next
model request; a message that arrives while the model is answering keeps the agent working at stop; no
message is handed over twice; without messages nothing but the session-start briefing is added; with the
daemon stopped the run still ends normally. Interactive Claude Code under tmux: a session that finished its
turn is woken by a message (the idle waiter), within 5 s, and no waiter outlives the session.

Cursor has no runnable CLI here; tests/test_hooks.py checks its documented hook contract instead.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import uuid

import pytest

from _models import ModelServer, Script, Shell, Text
from _runtimes import ClaudeCode, ClaudeTmux, Codex, Gemini, require_runtimes
from conftest import FACTOR, ROOT, Thrum, make_repo, wait_for

pytestmark = pytest.mark.runtime

RUNNERS = {"claude-code": ("claude", ClaudeCode), "codex": ("codex", Codex), "gemini": ("gemini", Gemini)}
THRUM = f"{shlex.quote(sys.executable)} -m thrum"
# The tool the scripted model calls: it runs until the test says go (a file), bounded to 20 s.
WAIT_GO = ("#!/bin/sh\nn=0\nwhile [ ! -f go ] && [ $n -lt 400 ]; do sleep 0.05; n=$((n+1)); done\n"
           "echo tool finished\n")


class Team:
    """A thrum repository with alice and bob, its daemon running, hooks set up for one runtime."""

    def __init__(self, tmp_path, env: dict, runtime: str) -> None:
        self.runtime = runtime
        self.t = Thrum(make_repo(tmp_path / "repo", env), env)
        self.t.init()
        self.t.start()
        self.t.quickstart("alice", "implementer", "auth")
        self.t.quickstart("bob", "reviewer", "auth")
        self.t.run("setup", "hooks", "--runtime", runtime, "--command", THRUM)
        (self.t.repo / "wait_go.sh").write_text(WAIT_GO)
        self.root = tmp_path / "rt"

    def runner(self, cls, models, **env):
        """The runtime as bob: the hooks act as THRUM_NAME, like `THRUM_NAME=bob claude`."""
        rt = cls(models, self.root, cwd=self.t.repo, env={"THRUM_NAME": "bob", "PYTHONPATH": str(ROOT), **env})
        if cls is Codex:
            # Only what `setup hooks` wrote may turn Codex's hooks on (.codex/config.toml in the project).
            config = rt.home / ".codex" / "config.toml"
            config.write_text(config.read_text().replace("[features]\nhooks = true\n", ""))
            assert "hooks = true" not in config.read_text()
        return rt

    def send(self, text: str, to: str = "@bob") -> str:
        with self.t.client() as c:
            return c.call("message.send", {"caller_agent_id": "alice", "content": text,
                                           "mentions": [to]})["message_id"]

    def go(self) -> None:
        (self.t.repo / "go").write_text("go")

    def close(self) -> None:
        self.t.stop()


@pytest.fixture
def team_for(tmp_path, env):
    made = []

    def make(runtime: str) -> Team:
        require_runtimes(RUNNERS.get(runtime, ("claude",))[0])
        team = Team(tmp_path, env, runtime)
        made.append(team)
        return team
    yield make
    for team in made:
        team.close()


def token() -> str:
    return "tok" + uuid.uuid4().hex[:10]


@pytest.mark.parametrize("runtime", list(RUNNERS))
def test_a_message_sent_during_a_tool_call_is_in_the_next_model_request(team_for, runtime):
    team = team_for(runtime)
    word = token()

    def policy(req):
        if "tool finished" not in req.text:
            return Shell("sh wait_go.sh")
        return Text("done reviewing")
    with ModelServer(Script(policy, policy, then=Text("ok"))) as models, \
            team.runner(RUNNERS[runtime][1], models) as rt:
        import threading

        result = {}
        run = threading.Thread(target=lambda: result.update(r=rt.run("review the change", timeout=120)))
        run.start()
        models.wait_for(lambda r: r.is_agent_turn, timeout=60)          # the tool call is on its way
        mid = team.send(f"please also check the token refresh {word}")   # alice, while bob's tool runs
        team.go()
        run.join(150 * FACTOR)
        rc, out, err = result["r"]
        assert rc == 0, f"stdout:\n{out}\nstderr:\n{err}"
        turns = models.agent_requests()
        first = turns[0]
        assert "You are @bob" in first.text                 # the session-start briefing
        assert word not in first.text
        after_tool = next(r for r in turns if "tool finished" in r.text)
        assert word in after_tool.text and f"@alice → you" in after_tool.text and mid in after_tool.text
        # Handed over once: the last request carries the whole conversation, the message in it once.
        assert turns[-1].text.count(word) == 1, [r.text.count(word) for r in turns]
        assert "done reviewing" in out
        receipts = team.t.call("message.receipts", message_id=mid)["receipts"]
        assert [(r["agent_id"], r["state"]) for r in receipts] == [("bob", "read")]
        assert rt.leftovers() == []


@pytest.mark.parametrize("runtime", list(RUNNERS))
def test_a_message_waiting_at_stop_keeps_the_agent_working(team_for, runtime):
    team = team_for(runtime)
    word = token()
    sent = {}

    def first_turn(req):
        sent["mid"] = team.send(f"one more thing before you stop: {word}")  # arrives while the model answers
        return Text("all done")

    def second_turn(req):
        return Text(f"handled {word}" if word in req.last_user_text else "nothing new")
    with ModelServer(Script(first_turn, second_turn, then=Text("ok"))) as models, \
            team.runner(RUNNERS[runtime][1], models) as rt:
        rc, out, err = rt.run("finish up", timeout=120)
        assert rc == 0, f"stdout:\n{out}\nstderr:\n{err}"
        turns = models.agent_requests()
        assert len(turns) >= 2
        assert word not in turns[0].text
        assert word in turns[1].last_user_text and sent["mid"] in turns[1].text
        assert f"handled {word}" in out
        assert turns[-1].text.count(word) in (1, 2)  # the message once (and the model's "handled" answer)
        assert rt.leftovers() == []


@pytest.mark.parametrize("runtime", list(RUNNERS))
def test_without_messages_only_the_briefing_is_added(team_for, runtime):
    team = team_for(runtime)
    with ModelServer(Script(Shell("echo quiet-tool"), Text("finished quietly"))) as models, \
            team.runner(RUNNERS[runtime][1], models) as rt:
        rc, out, err = rt.run("do a quiet thing", timeout=120)
        assert rc == 0, f"stdout:\n{out}\nstderr:\n{err}"
        turns = models.agent_requests()
        assert len(turns) == 2
        for r in turns:
            assert r.text.count("You are @bob") == 1          # the briefing, once
            assert "new message" not in r.text                # nothing else from thrum
        assert "finished quietly" in out
        assert not (team.t.var / "hooks.log").exists()


@pytest.mark.parametrize("runtime", list(RUNNERS))
def test_with_the_daemon_stopped_the_runtime_finishes_normally(team_for, runtime):
    team = team_for(runtime)
    team.t.stop()
    with ModelServer(Script(Shell("echo still-working"), Text("finished without thrum"))) as models, \
            team.runner(RUNNERS[runtime][1], models) as rt:
        started = time.monotonic()
        rc, out, err = rt.run("carry on", timeout=120)
        assert rc == 0, f"stdout:\n{out}\nstderr:\n{err}"
        assert "finished without thrum" in out
        # Nothing from thrum reached the model (Gemini lists the repository's files, .thrum/ included).
        assert all("You are @bob" not in r.text and "new message" not in r.text for r in models.agent_requests())
        assert "daemon unavailable" in (team.t.var / "hooks.log").read_text()
        assert rt.leftovers() == []
        assert time.monotonic() - started < 60 * FACTOR
    team.t.start()  # for the fixture's stop


def test_claude_code_idle_session_is_woken_by_a_message(team_for):
    """Interactive Claude Code: the turn ends, the session sits idle; a message arrives and a new model
    request carries it within 5 s, without anyone typing. Then /exit leaves no waiter behind."""
    team = team_for("claude-code")
    word = token()
    with ModelServer(Script(Text("first turn done"), Text(f"woken for {word}"), then=Text("ok"))) as models, \
            team.runner(ClaudeTmux, models) as cc:
        cc.start(timeout=60)
        cc.submit("say hi")
        cc.wait_screen("first turn done", timeout=60)
        # Idle now: the Stop hook found nothing, its waiter (and the session-start one) block on push.
        wait_for(lambda: len(list((team.t.var / "hooks").glob("*.pid"))) >= 1, 20, what="the waiter's lock")
        turns_before = len(models.agent_requests())
        sent_at = time.monotonic()
        mid = team.send(f"wake up, bob: {word}")
        req = models.wait_for(lambda r: word in r.text, timeout=20)
        latency = time.monotonic() - sent_at
        assert latency < 5 * FACTOR, f"{latency:.1f} s"
        assert mid in req.text and len(models.agent_requests()) == turns_before + 1
        cc.wait_screen(f"woken for {word}", timeout=30)
        receipts = team.t.call("message.receipts", message_id=mid)["receipts"]
        assert receipts[0]["state"] == "read"
        cc.quit()
        wait_for(lambda: cc.leftovers() == [], 15, what="no process of the session left (waiters included)")


def test_claude_code_prompt_is_not_held_by_the_session_start_waiter(team_for):
    """The waiter armed at session start runs in the background: typing a prompt gets an answer at once."""
    team = team_for("claude-code")
    with ModelServer(Script(Text("answered promptly"))) as models, team.runner(ClaudeTmux, models) as cc:
        cc.start(timeout=60)
        began = time.monotonic()
        cc.submit("are you there")
        cc.wait_screen("answered promptly", timeout=30)
        assert time.monotonic() - began < 20 * FACTOR
        cc.quit()
        wait_for(lambda: cc.leftovers() == [], 15, what="no process of the session left")


def test_claude_print_mode_is_not_held_open_by_a_waiter(team_for):
    team = team_for("claude-code")
    with ModelServer(Script(Text("quick answer"))) as models, team.runner(ClaudeCode, models) as rt:
        rc, out, err = rt.run("quick", timeout=60)
        assert rc == 0 and "quick answer" in out
        assert rt.seconds < 20 * FACTOR, f"the run took {rt.seconds:.1f} s"
        assert rt.leftovers() == []
