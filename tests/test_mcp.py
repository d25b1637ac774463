"""`thrum mcp serve`: the real server process, driven by the `mcp` SDK's stdio client, against a real daemon.

Every wait polls a condition with a deadline (scaled by THRUM_TEST_TIMEOUT_FACTOR); nothing sleeps for
a fixed time. A wait_for_message call runs as a task; the test waits until the daemon lists the
server's temporary subscription before it sends.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager

import pytest

from conftest import FACTOR

anyio = pytest.importorskip("anyio")
pytest.importorskip("mcp")

from mcp.client.session import ClientSession  # noqa: E402
from mcp.client.stdio import StdioServerParameters, stdio_client  # noqa: E402

TOOL_FIELDS = {  # spec rpc-ws-mcp.md §7: names and input fields (C5)
    "send_message": {"to", "content", "priority", "reply_to", "metadata"},
    "check_messages": {"limit"},
    "wait_for_message": {"timeout", "priority_filter"},
    "list_agents": {"include_offline"},
    "broadcast_message": {"content", "priority", "filter"},
    "create_group": {"name", "description"},
    "delete_group": {"name"},
    "add_group_member": {"group", "member_type", "member_value"},
    "remove_group_member": {"group", "member_type", "member_value"},
    "list_groups": set(),
    "get_group": {"name", "expand"},
    "search_messages": {"query", "from", "to", "thread_id", "since", "until", "limit"},  # issue 15: a twelfth
}


@pytest.fixture
def env(env):
    env["THRUM_WS_PORT"] = "0"
    return env


def run(main, timeout: float = 60):
    async def bounded():
        with anyio.fail_after(timeout * FACTOR):
            return await main()
    return anyio.run(bounded)


@asynccontextmanager
async def mcp_server(t, agent: str | None = None, errlog=None, **env):
    args = ["-m", "thrum", "mcp", "serve"] + (["--agent-id", agent] if agent else [])
    params = StdioServerParameters(command=sys.executable, args=args, env={**t.env, **env}, cwd=str(t.repo))
    log = errlog if errlog is not None else open(t.repo.parent / f"mcp-{agent or 'default'}.log", "a")
    try:
        async with stdio_client(params, errlog=log) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session
    finally:
        if errlog is None:
            log.close()


async def call(session, tool: str, **arguments):
    res = await session.call_tool(tool, arguments)
    return res


async def ok(session, tool: str, **arguments) -> dict:
    res = await call(session, tool, **arguments)
    assert not res.is_error, res.content[0].text
    assert res.content and res.content[0].type == "text" and res.content[0].text
    return res.structured_content


async def until(predicate, what: str, timeout: float = 20):
    deadline = time.monotonic() + timeout * FACTOR
    interval = 0.01
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await anyio.sleep(interval)
        interval = min(interval * 1.5, 0.2)


def temp_subs(t, name: str) -> list:
    try:
        subs = t.call("subscriptions.list", caller_agent_id=name)["subscriptions"]
    except Exception:  # the daemon is restarting
        return []
    return [s for s in subs if s.get("temporary")]


def unread_for(t, name: str) -> list[str]:
    res = t.call("message.list", for_agent=name, exclude_self=True, unread=True, page_size=100,
                 caller_agent_id=name)
    return [m["body"]["content"] for m in res["messages"]]


# -- tools and schemas -----------------------------------------------------------------------------

def test_tools_are_listed_with_their_input_schemas(agents):
    async def main():
        async with mcp_server(agents, "alice") as s:
            init = s.initialize_result
            assert init.server_info.name == "thrum"
            assert "@alice" in (init.instructions or "")
            return (await s.list_tools()).tools

    tools = {t.name: t for t in run(main)}
    assert set(tools) == set(TOOL_FIELDS)
    for name, fields in TOOL_FIELDS.items():
        schema = tools[name].input_schema
        assert schema["type"] == "object" and set(schema["properties"]) == fields, name
        assert schema["additionalProperties"] is False
        assert len(tools[name].description) > 80, name
        for prop in schema["properties"].values():
            assert prop.get("description"), (name, prop)
    assert tools["send_message"].input_schema["required"] == ["to", "content"]
    send_props = tools["send_message"].input_schema["properties"]
    assert send_props["priority"]["enum"] == ["critical", "high", "normal", "low"]
    assert all(x in send_props["to"]["description"] for x in ("@name", "@role", "@group", "@everyone"))
    assert tools["add_group_member"].input_schema["required"] == ["group", "member_type", "member_value"]
    assert tools["list_agents"].annotations.read_only_hint is True
    assert tools["delete_group"].annotations.destructive_hint is True


# -- sending and checking as two agents ----------------------------------------------------------------

def test_send_as_one_agent_check_as_another(agents):
    t = agents
    t.quickstart("carol", "planner", "core")

    async def main():
        async with mcp_server(t, "alice") as alice, mcp_server(t, "bob", THRUM_NAME="carol") as bob:
            # --agent-id beats THRUM_NAME: this server is bob, not carol
            assert "@bob" in (bob.initialize_result.instructions or "")
            sent = {}
            sent["direct"] = (await ok(alice, "send_message", to="@bob", content="direct", priority="high"))
            sent["role"] = await ok(alice, "send_message", to="reviewer", content="to reviewers")
            await ok(alice, "create_group", name="backend", description="API people")
            added = await ok(alice, "add_group_member", group="backend", member_type="agent", member_value="bob")
            assert added["status"] == "added"
            sent["group"] = await ok(alice, "send_message", to="@backend", content="to the group",
                                     metadata={"pr": "42"})
            sent["all"] = await ok(alice, "broadcast_message", content="to everyone")
            await ok(alice, "send_message", to="@carol", content="not for bob")
            assert sent["direct"]["status"] == "delivered" and sent["direct"]["to"] == ["@bob"]
            assert sent["all"]["sent_to"] == ["@everyone"] and len(sent["all"]["message_ids"]) == 1

            first = await ok(bob, "check_messages", limit=3)
            rest = await ok(bob, "check_messages")
            empty = await ok(bob, "check_messages")
            return sent, first, rest, empty

    sent, first, rest, empty = run(main)
    got = first["messages"] + rest["messages"]
    assert [m["content"] for m in got] == ["direct", "to reviewers", "to the group", "to everyone"]
    assert first["status"] == "messages" and first["remaining"] == 1 and rest["remaining"] == 0
    assert empty == {"status": "empty", "messages": [], "remaining": 0}
    assert {m["from"] for m in got} == {"alice"}  # sent as alice, not as the daemon's identity
    assert got[0]["message_id"] == sent["direct"]["message_id"] and got[0]["priority"] == "high"
    assert [m["to"] for m in got] == [["@bob"], ["@reviewer"], ["@backend"], ["@everyone"]]
    assert got[2]["metadata"] == {"pr": "42"}
    # marked read for bob (and only for bob)
    assert unread_for(t, "bob") == []
    assert sorted(unread_for(t, "carol")) == ["not for bob", "to everyone"]
    # no phantom agents: the servers registered nobody
    assert sorted(a["agent_id"] for a in t.call("agent.list")["agents"]) == ["alice", "bob", "carol"]


def test_reply_list_agents_and_groups(agents):
    t = agents

    async def main():
        async with mcp_server(t, "alice") as alice, mcp_server(t, "bob") as bob:
            asked = await ok(alice, "send_message", to="@bob", content="can you review?")
            await ok(bob, "check_messages")
            replied = await ok(bob, "send_message", to="@alice", content="yes", reply_to=asked["message_id"])
            inbox = await ok(alice, "check_messages")
            agents_ = await ok(alice, "list_agents")
            active = await ok(alice, "list_agents", include_offline=False)
            await ok(alice, "create_group", name="reviewers")
            await ok(alice, "add_group_member", group="reviewers", member_type="role", member_value="reviewer")
            again = await ok(alice, "add_group_member", group="reviewers", member_type="role", member_value="reviewer")
            groups = await ok(alice, "list_groups")
            group = await ok(alice, "get_group", name="reviewers", expand=True)
            removed = await ok(alice, "remove_group_member", group="reviewers", member_type="role",
                               member_value="reviewer")
            deleted = await ok(alice, "delete_group", name="reviewers")
            everyone = await call(alice, "delete_group", name="everyone")
            return asked, replied, inbox, agents_, active, again, groups, group, removed, deleted, everyone

    asked, replied, inbox, agents_, active, again, groups, group, removed, deleted, everyone = run(main)
    assert [m["reply_to"] for m in inbox["messages"]] == [asked["message_id"]]
    assert inbox["messages"][0]["from"] == "bob" and replied["reply_to"] == asked["message_id"]
    names = {a["name"]: a for a in agents_["agents"]}
    assert set(names) == {"alice", "bob"} and agents_["count"] == 2
    assert names["alice"]["you"] is True and names["bob"]["role"] == "reviewer"
    assert names["bob"]["status"] == "active" and active["count"] == 2
    assert again["status"] == "unchanged"
    assert {g["name"] for g in groups["groups"]} == {"everyone", "reviewers"} and groups["count"] == 2
    assert group["members"] == [{"member_type": "role", "member_value": "reviewer"}]
    assert group["expanded"] == ["bob"]
    assert removed["status"] == "removed" and deleted == {"name": "reviewers", "status": "deleted"}
    assert everyone.is_error and "everyone" in everyone.content[0].text


def test_broadcast_filter_addresses_a_subset(agents):
    t = agents
    t.quickstart("carol", "planner", "core")
    t.run("session", "end", name="carol")

    async def main():
        async with mcp_server(t, "alice") as alice:
            active = await ok(alice, "broadcast_message", content="only active", filter={"status": "active"})
            excl = await ok(alice, "broadcast_message", content="not bob", filter={"exclude": ["@bob"]})
            none = await ok(alice, "broadcast_message", content="nobody",
                            filter={"status": "active", "exclude": ["bob"]})
            return active, excl, none

    active, excl, none = run(main)
    assert active["sent_to"] == ["@bob"] and excl["sent_to"] == ["@carol"]
    assert none == {"status": "no_recipients", "sent_to": [], "total_sent": 0, "message_ids": []}
    assert unread_for(t, "bob") == ["only active"]


# -- wait_for_message ----------------------------------------------------------------------------------------

def test_wait_returns_a_message_sent_after_it_started(agents):
    t = agents

    async def main():
        async with mcp_server(t, "bob") as bob:
            assert (await ok(bob, "check_messages"))["status"] == "empty"
            result = {}

            async def waiter():
                result["wait"] = await ok(bob, "wait_for_message", timeout=60)

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await until(lambda: temp_subs(t, "bob"), "the server to subscribe")
                sent = await anyio.to_thread.run_sync(
                    lambda: t.json("send", "please review", "--to", "@bob", name="alice"))
            again = await ok(bob, "check_messages")
            return sent, result["wait"], again

    sent, wait, again = run(main)
    assert wait["status"] == "message_received"
    msg = wait["message"]
    assert msg["message_id"] == sent["message_id"] and msg["content"] == "please review"
    assert msg["from"] == "alice" and msg["to"] == ["@bob"]
    assert again["status"] == "empty"  # marked read: not returned twice
    assert temp_subs(t, "bob") == []


def test_wait_times_out(agents):
    async def main():
        async with mcp_server(agents, "bob") as bob:
            return await ok(bob, "wait_for_message", timeout=1)

    res = run(main)
    assert res["status"] == "timeout" and "message" not in res
    assert res["waited_seconds"] >= 0.9


def test_wait_returns_what_arrived_since_the_server_started_and_filters_priority(agents):
    t = agents

    async def main():
        async with mcp_server(t, "bob") as bob:
            await anyio.to_thread.run_sync(lambda: t.run("send", "routine", "--to", "@bob", name="alice"))
            await anyio.to_thread.run_sync(
                lambda: t.run("send", "urgent", "--to", "@bob", "--priority", "critical", name="alice"))
            urgent = await ok(bob, "wait_for_message", timeout=30, priority_filter="high_and_above")
            routine = await ok(bob, "wait_for_message", timeout=30)
            left = await ok(bob, "check_messages")
            return urgent, routine, left

    urgent, routine, left = run(main)
    assert urgent["message"]["content"] == "urgent" and urgent["message"]["priority"] == "critical"
    assert routine["message"]["content"] == "routine"
    assert left["status"] == "empty"


def test_wait_survives_a_daemon_restart(agents):
    t = agents

    async def main():
        async with mcp_server(t, "bob") as bob:
            result = {}

            async def waiter():
                result["wait"] = await ok(bob, "wait_for_message", timeout=120)

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await until(lambda: temp_subs(t, "bob"), "the server to subscribe")
                await anyio.to_thread.run_sync(t.stop)
                await anyio.to_thread.run_sync(t.start)
                # sent whether or not the server has re-subscribed yet: the replay covers the gap
                sent = await anyio.to_thread.run_sync(
                    lambda: t.json("send", "after the restart", "--to", "@bob", name="alice"))
            return sent, result["wait"]

    sent, wait = run(main, 120)
    assert wait["status"] == "message_received" and wait["reconnects"] >= 1
    assert wait["message"]["message_id"] == sent["message_id"]
    assert unread_for(t, "bob") == []


def test_a_cancelled_wait_consumes_nothing(agents):
    t = agents

    async def main():
        async with mcp_server(t, "bob") as bob:
            async def waiter():
                await call(bob, "wait_for_message", timeout=60)

            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(waiter)
                    await until(lambda: temp_subs(t, "bob"), "the server to subscribe")
                    scope.cancel()
            await until(lambda: not temp_subs(t, "bob"), "the cancelled wait to drop its subscription")
            await anyio.to_thread.run_sync(lambda: t.run("send", "still here", "--to", "@bob", name="alice"))
            return await ok(bob, "check_messages")

    res = run(main)
    assert [m["content"] for m in res["messages"]] == ["still here"]


# -- errors --------------------------------------------------------------------------------------------------

def test_errors_are_tool_errors_and_the_server_survives_a_missing_daemon(agents):
    t = agents

    async def main():
        async with mcp_server(t, "alice") as alice:
            unknown = await call(alice, "send_message", to="@bobb", content="hi")
            bad_priority = await call(alice, "send_message", to="@bob", content="hi", priority="urgent")
            missing = await call(alice, "send_message", content="hi")
            extra = await call(alice, "check_messages", limit=5, verbose=True)
            no_tool = await call(alice, "no_such_tool")
            await anyio.to_thread.run_sync(t.stop)
            down = await call(alice, "check_messages")
            down_wait = await call(alice, "wait_for_message", timeout=5)
            await anyio.to_thread.run_sync(t.start)
            back = await ok(alice, "send_message", to="@bob", content="daemon is back")
            return unknown, bad_priority, missing, extra, no_tool, down, down_wait, back

    unknown, bad_priority, missing, extra, no_tool, down, down_wait, back = run(main, 90)
    assert unknown.is_error and "unknown recipient @bobb" in unknown.content[0].text
    assert unknown.structured_content["error"]["data"]["suggestions"] == ["bob"]
    assert "did you mean @bob" in unknown.content[0].text
    assert bad_priority.is_error and "critical, high, normal, low" in bad_priority.content[0].text
    assert missing.is_error and "'to' is required" in missing.content[0].text
    assert extra.is_error and "verbose" in extra.content[0].text
    assert no_tool.is_error and "no_such_tool" in no_tool.content[0].text
    for res in (down, down_wait):
        assert res.is_error
        text = res.content[0].text
        assert "thrum daemon is not running" in text and "thrum daemon start" in text
    assert back["status"] == "delivered"
    assert unread_for(t, "bob") == ["daemon is back"]


def test_without_an_identity_tools_say_how_to_register(daemon):
    t = daemon

    async def main():
        async with mcp_server(t) as server:
            before = await call(server, "check_messages")
            await anyio.to_thread.run_sync(lambda: t.quickstart("dave", "tester", "qa"))
            after = await ok(server, "check_messages")  # resolved now: no restart needed
            return before, after

    before, after = run(main)
    assert before.is_error
    text = before.content[0].text
    assert "no thrum identity" in text and "thrum quickstart --name" in text and "--role" in text
    assert after["status"] == "empty"


def test_outside_a_thrum_repository_tools_say_so(tmp_path, env):
    from conftest import Thrum

    outside = tmp_path / "elsewhere"
    outside.mkdir()

    async def main():
        async with mcp_server(Thrum(outside, env)) as server:
            return await call(server, "list_agents")

    res = run(main)
    assert res.is_error and "not initialized" in res.content[0].text and "thrum init" in res.content[0].text


def test_invalid_agent_id_is_a_usage_error(agents):
    proc = agents.run("mcp", "serve", "--agent-id", "Not Valid", check=False, input="")
    assert proc.returncode == 2 and "invalid --agent-id" in proc.stderr and proc.stdout == ""


def test_stdout_carries_only_json_rpc(agents):
    """A raw client: every line on stdout is a JSON-RPC message; logs and stray output go to stderr."""
    t = agents
    lines = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "send_message", "arguments": {
            "to": "@bob", "content": "raw hello"}}},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "send_message", "arguments": {
            "to": "@ghost", "content": "x"}}},
        {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "wait_for_message", "arguments": {
            "timeout": 1}}},
    ]
    proc = subprocess.Popen([sys.executable, "-m", "thrum", "mcp", "serve", "--agent-id", "alice"], cwd=t.repo,
                            env=t.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    watchdog = threading.Timer(60 * FACTOR, proc.kill)  # a hung server fails the test instead of hanging it
    watchdog.start()
    try:
        proc.stdin.write("".join(json.dumps(m) + "\n" for m in lines))
        proc.stdin.flush()
        out_lines, answered = [], set()
        while answered != {1, 2, 3, 4, 5}:  # keep stdin open until every request is answered
            line = proc.stdout.readline()
            assert line, "the server closed stdout early"
            out_lines.append(line)
            answered.add(json.loads(line).get("id"))
            answered.discard(None)
        proc.stdin.close()
        assert proc.wait() == 0  # stdin closed: a clean exit
        out_lines += proc.stdout.read().splitlines(keepends=True)
        err = proc.stderr.read()
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
    messages = [json.loads(line) for line in out_lines if line.strip()]
    assert len(messages) == len([line for line in out_lines if line.strip()])
    assert all(m.get("jsonrpc") == "2.0" for m in messages)
    answers = {m["id"]: m for m in messages if "id" in m}
    assert set(answers) == {1, 2, 3, 4, 5}
    assert answers[3]["result"]["isError"] is False
    assert answers[4]["result"]["isError"] is True and "ghost" in answers[4]["result"]["content"][0]["text"]
    assert answers[5]["result"]["structuredContent"]["status"] == "timeout"
    assert "thrum mcp: INFO" in err and "Traceback" not in err


# -- import hygiene and the zipapp -------------------------------------------------------------------------------

def test_cli_common_paths_never_import_mcp(agents):
    code = ("import io, sys, contextlib\n"
            "from thrum.cli import main\n"
            "for argv in (['send', 'hi', '--to', '@alice'], ['inbox'], ['status'], ['whoami'],\n"
            "             ['setup', 'mcp', '--runtime', 'claude', '--dry-run'], ['mcp'], ['--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            "        try:\n"
            "            main(argv)\n"
            "        except SystemExit:\n"
            "            pass\n"
            "print(sorted(m for m in ('mcp', 'mcp_types', 'anyio', 'pydantic', 'websockets') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=agents.repo, env={**agents.env, "THRUM_NAME": "bob"},
                          capture_output=True, text=True, timeout=60 * FACTOR)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_zipapp_without_the_sdk_explains_how_to_get_it(tmp_path, thrum):
    from conftest import ROOT

    out = tmp_path / "thrum.pyz"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_zipapp.py"), "--no-deps", "-o", str(out)],
                   check=True, capture_output=True, timeout=120 * FACTOR)
    # -S: no site-packages, so no `mcp`, as on a bare Python
    proc = subprocess.run([sys.executable, "-I", "-S", str(out), "mcp", "serve"], cwd=thrum.repo, env=thrum.env,
                          input="", capture_output=True, text=True, timeout=60 * FACTOR)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "needs the Python package `mcp`" in proc.stderr
    assert "pipx install ." in proc.stderr and "pip install 'mcp" in proc.stderr


# -- search_messages (issue 15: the twelfth tool) -----------------------------------------------------

def test_search_messages_finds_ranks_filters_and_explains_bad_queries(agents):
    t = agents
    with t.client() as c:
        hit = c.call("message.send", {"caller_agent_id": "bob", "content": "the cache warmer is broken again"})
        c.call("message.send", {"caller_agent_id": "alice", "content": "cache is fine here"})
        c.call("message.send", {"caller_agent_id": "bob", "content": "认证问题已经解决"})

    async def main():
        async with mcp_server(t, "alice") as s:
            both = await ok(s, "search_messages", query="cache")
            bobs = await ok(s, "search_messages", query="cache", **{"from": "@bob"}, limit=5)
            zh = await ok(s, "search_messages", query="认证")
            none = await ok(s, "search_messages", query="nothing-here")
            bad = await call(s, "search_messages", query='"open')
            too_many = await call(s, "search_messages", query="cache", limit=500)
            unread = unread_for(t, "alice")
            return both, bobs, zh, none, bad, too_many, unread

    both, bobs, zh, none, bad, too_many, unread = run(main)
    assert both["count"] == 2 and all("**cache**" in h["snippet"] for h in both["hits"])
    assert [h["message_id"] for h in bobs["hits"]] == [hit["message_id"]]
    assert {"message_id", "author", "created_at", "snippet", "score", "thread_id"} <= set(bobs["hits"][0])
    assert zh["count"] == 1 and "**认证**" in zh["hits"][0]["snippet"]
    assert none["count"] == 0 and none["hits"] == []
    assert bad.is_error and "unbalanced quote" in bad.content[0].text
    assert too_many.is_error and "at most 100" in too_many.content[0].text
    assert len(unread) == 2  # searching marks nothing read
