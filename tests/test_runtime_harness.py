"""The runtime test harness works: each real runtime, driven by the scripted model server, runs the
scripted shell command, sends its output back to the model, prints the scripted answer and runs the
project hooks; interactive Claude Code under tmux answers a typed prompt and quits without leftovers.

The runtimes are the pinned npm packages in tests/runtimes; without them these tests skip (fail under CI).
"""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

from _models import ModelServer, Script, Shell, Text
from _runtimes import ClaudeCode, ClaudeTmux, Codex, Gemini, HookRecorder, require_runtimes

# Per runtime: the runner, the hook events to record, the event that sees the tool's output.
RUNNERS = {
    "claude": (ClaudeCode, ["SessionStart", "UserPromptSubmit", "PostToolUse", "Stop", "SessionEnd"], "PostToolUse"),
    "codex": (Codex, ["SessionStart", "UserPromptSubmit", "PostToolUse", "Stop", "SessionEnd"], "PostToolUse"),
    "gemini": (Gemini, ["SessionStart", "BeforeAgent", "AfterTool", "AfterAgent", "SessionEnd"], "AfterTool"),
}


@pytest.mark.runtime
@pytest.mark.parametrize("name", list(RUNNERS))
def test_print_mode_runs_scripted_shell_call_and_hooks(name, tmp_path):
    require_runtimes(name)
    runner, events, tool_event = RUNNERS[name]
    script = Script(Shell("echo harness-$RANDOM > out.txt; cat out.txt"), Text(f"{name} finished the task"))
    with ModelServer(script) as models, runner(models, tmp_path) as rt:
        hooks = HookRecorder(tmp_path / "hooks")
        rt.write_hooks(hooks.config(events))

        rc, out, err = rt.run("write the file", timeout=90)

        assert rc == 0, f"stdout:\n{out}\nstderr:\n{err}"
        written = (rt.cwd / "out.txt").read_text().strip()
        assert re.fullmatch(r"harness-\d+", written)
        turns = models.agent_requests()
        assert len(turns) == 2, turns
        assert "write the file" in turns[0].text
        assert written in turns[1].last_user_text  # the tool result went back to the model
        assert f"{name} finished the task" in out
        assert models.errors == []
        assert hooks.events() == events, hooks.events()
        assert written in json.dumps(hooks.records(tool_event)[0]["stdin"])
        assert rt.leftovers() == []


@pytest.mark.runtime
def test_claude_interactive_under_tmux_answers_and_quits(tmp_path):
    require_runtimes("claude")
    with ModelServer(Script(Text("scripted hello from the model"))) as models, ClaudeTmux(models, tmp_path) as cc:
        cc.start(timeout=30)
        assert models.agent_requests() == []

        cc.submit("say hello please")
        cc.wait_screen("scripted hello from the model", timeout=30)
        assert "say hello please" in models.agent_requests()[0].last_user_text

        cc.quit()
        assert cc.leftovers() == []  # Claude, its hooks and the tmux server are all gone


def _post(url: str, body: dict) -> str:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read().decode()


def _sse_data(text: str) -> list[dict]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def test_model_server_speaks_each_api_and_counts_agent_turns():
    """No runtime needed: the wire formats and the Script/side-call split."""
    script = Script(Shell("echo one"), Text("two"))
    with ModelServer(script) as models:
        side = _sse_data(_post(f"{models.url}/v1/messages?beta=true",
                               {"stream": True, "messages": [{"role": "user", "content": "title?"}]}))
        assert side[-1]["type"] == "message_stop" and script.turns == 0  # no tools: a side call

        events = _sse_data(_post(f"{models.url}/v1/messages?beta=true", {
            "stream": True, "tools": [{"name": "Bash"}], "messages": [{"role": "user", "content": "go"}]}))
        start = next(e for e in events if e["type"] == "content_block_start")
        delta = next(e for e in events if e["type"] == "content_block_delta")
        assert start["content_block"]["name"] == "Bash"
        assert json.loads(delta["delta"]["partial_json"]) == {"command": "echo one"}
        assert next(e for e in events if e["type"] == "message_delta")["delta"]["stop_reason"] == "tool_use"

        events = _sse_data(_post(f"{models.url}/v1/responses", {
            "stream": True, "tools": [{"type": "function", "name": "exec_command",
                                       "parameters": {"properties": {"cmd": {"type": "string"}}}}],
            "input": [{"type": "function_call_output", "call_id": "c", "output": "one"}]}))
        done = events[-1]
        assert done["type"] == "response.completed"
        assert done["response"]["output"][0]["content"][0]["text"] == "two"

        chunks = _sse_data(_post(f"{models.url}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", {
            "tools": [{"functionDeclarations": [{"name": "run_shell_command"}]}],
            "contents": [{"role": "user", "parts": [{"text": "more"}]}]}))
        assert chunks[0]["candidates"][0]["content"]["parts"] == [{"text": "ok"}]

        agent = models.agent_requests()
        assert [r.api for r in agent] == ["anthropic", "openai", "gemini"]
        assert agent[1].last_user_text == "one"
        assert models.wait_for(lambda r: "more" in r.text, timeout=1).api == "gemini"
        assert len(models.requests) == 4 and models.errors == []
