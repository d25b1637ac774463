"""`thrum wait`: blocks on push, returns a matching message once, marks it read, times out cleanly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import FACTOR, wait_for


@pytest.fixture
def env(env):
    env["THRUM_WS_PORT"] = "0"
    return env


def start_wait(t, name: str, *args) -> subprocess.Popen:
    e = dict(t.env)
    e["THRUM_NAME"] = name
    return subprocess.Popen([sys.executable, "-m", "thrum", "wait", *args], cwd=t.repo, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def temp_subs(t, name: str) -> list:
    return [s for s in t.call("subscriptions.list", caller_agent_id=name)["subscriptions"] if s.get("temporary")]


def wait_until_listening(t, proc: subprocess.Popen, name: str, count: int = 1) -> None:
    def ready():
        assert proc.poll() is None, proc.communicate()
        return len(temp_subs(t, name)) >= count
    wait_for(ready, 20, what=f"{count} wait(s) of {name} to subscribe")


def finish(proc: subprocess.Popen, timeout: float = 20) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout * FACTOR)
    return proc.returncode, out, err


def test_wait_returns_the_message_when_it_arrives(agents):
    t = agents
    proc = start_wait(t, "bob", "--timeout", "60s", "--json")
    try:
        wait_until_listening(t, proc, "bob")
        sent = t.json("send", "review please", "--to", "@bob", name="alice")
        code, out, err = finish(proc)
    finally:
        proc.kill()
    assert code == 0, err
    msg = json.loads(out)
    assert msg["message_id"] == sent["message_id"]
    assert msg["body"]["content"] == "review please" and msg["agent_id"] == "alice"
    # marked read, and the temporary subscription went with the connection
    inbox = t.json("inbox", "--peek", name="bob")["messages"]
    assert [m["is_read"] for m in inbox if m["message_id"] == sent["message_id"]] == [True]
    assert temp_subs(t, "bob") == []
    # the same message is never returned twice
    again = t.run("wait", "--timeout", "0.2s", "--after", "-10m", name="bob", check=False)
    assert again.returncode == 1


def test_wait_times_out(agents):
    t = agents
    proc = t.run("wait", "--timeout", "0.3s", name="bob", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "Timeout: no matching messages received"
    assert proc.stdout == ""
    proc = t.run("wait", "--timeout", "300ms", "--json", name="bob", check=False)
    assert proc.returncode == 1 and json.loads(proc.stdout)["status"] == "timeout"


def test_wait_usage_errors(agents):
    t = agents
    assert t.run("wait", "--timeout", "soon", name="bob", check=False).returncode == 2
    assert t.run("wait", "--timeout", "0s", name="bob", check=False).returncode == 2
    proc = t.run("wait", "--after", "yesterday", name="bob", check=False)
    assert proc.returncode == 2 and "invalid --after" in proc.stderr


def test_wait_after_returns_an_already_waiting_message(agents):
    t = agents
    old = t.json("send", "sent before the wait", "--to", "@bob", name="alice")
    # by default only new messages count
    assert t.run("wait", "--timeout", "0.2s", name="bob", check=False).returncode == 1
    # `--after -30s` (the Go CLI's spelling) accepts an unread one created in the last 30 s
    proc = t.run("wait", "--after", "-30s", "--timeout", "5s", "--json", name="bob")
    assert json.loads(proc.stdout)["message_id"] == old["message_id"]
    proc = t.run("wait", "--after", "-30s", "--timeout", "0.2s", name="bob", check=False)
    assert proc.returncode == 1  # it was marked read
    # an RFC 3339 --after works too; the oldest unread match comes first
    first = t.json("send", "one", "--to", "@bob", name="alice")
    t.json("send", "two", "--to", "@bob", name="alice")
    proc = t.run("wait", "--after", old["created_at"], "--timeout", "5s", "--json", name="bob")
    assert json.loads(proc.stdout)["message_id"] == first["message_id"]


def test_wait_default_is_addressed_to_me_and_not_mine(agents):
    t = agents
    t.quickstart("carol", "planner", "core")
    proc = start_wait(t, "bob", "--timeout", "60s", "--json")
    try:
        wait_until_listening(t, proc, "bob")
        t.run("send", "not for bob", "--to", "@carol", name="alice")
        t.run("send", "bob talking", "--to", "@alice", name="bob")
        t.run("send", "to reviewers", "--to", "@reviewer", name="carol")
        code, out, err = finish(proc)
    finally:
        proc.kill()
    assert code == 0, err
    assert json.loads(out)["body"]["content"] == "to reviewers"


def test_wait_with_filters(agents):
    t = agents
    proc = start_wait(t, "bob", "--scope", "module:db", "--timeout", "60s", "--json")
    all_proc = start_wait(t, "alice", "--all", "--timeout", "60s", "--json")
    try:
        wait_until_listening(t, proc, "bob")
        wait_until_listening(t, all_proc, "alice")
        t.run("send", "no scope", "--to", "@bob", name="alice")
        t.run("send", "db change", "--scope", "module:db", name="alice")
        t.run("send", "bob says hi to nobody in particular", name="bob")
        code, out, err = finish(proc)
        all_code, all_out, all_err = finish(all_proc)
    finally:
        proc.kill()
        all_proc.kill()
    assert code == 0, err
    assert json.loads(out)["body"]["content"] == "db change"
    assert all_code == 0, all_err
    assert json.loads(all_out)["body"]["content"] == "bob says hi to nobody in particular"


def test_two_waiters_never_get_the_same_message(agents):
    t = agents
    procs = [start_wait(t, "bob", "--timeout", "60s", "--json") for _ in range(2)]
    try:
        wait_until_listening(t, procs[0], "bob", count=2)
        t.run("send", "first", "--to", "@bob", name="alice")
        t.run("send", "second", "--to", "@bob", name="alice")
        results = [finish(p) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [r[0] for r in results] == [0, 0], results
    got = sorted(json.loads(r[1])["body"]["content"] for r in results)
    assert got == ["first", "second"]


def test_wait_human_output(agents):
    t = agents
    t.run("send", "line one\nline two", "--to", "@bob", name="alice")
    proc = t.run("wait", "--after", "-1m", "--timeout", "5s", name="bob")
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("✓ Message received: msg_") and lines[0].endswith("from @alice")
    assert lines[1:] == ["  line one", "  line two"]
