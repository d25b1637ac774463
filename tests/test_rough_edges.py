"""Small fixes from review: strict params, CLI body sources and filters, the module import graph."""

import ast
import subprocess
import sys

from conftest import FACTOR, ROOT
from helpers import RawConn


def test_mark_read_wants_an_array_of_ids(agents):
    t = agents
    with RawConn(t.socket) as c:
        mid = c.call("message.send", {"caller_agent_id": "alice", "content": "hi", "mentions": ["@bob"]})["result"][
            "message_id"]
        r = c.call("message.markRead", {"caller_agent_id": "bob", "message_ids": mid})
        assert r["error"]["code"] == -32602 and "array" in r["error"]["message"], r
        for wrong in (5, {"id": mid}, [mid, 7], None):
            r = c.call("message.markRead", {"caller_agent_id": "bob", "message_ids": wrong})
            assert r["error"]["code"] == -32602, (wrong, r)
        # Nothing was marked by the refused calls; the array form works.
        r = c.call("message.markRead", {"caller_agent_id": "bob", "message_ids": [mid]})
        assert r["result"]["newly_read"] == 1


def _thrum_imports(path) -> set[str]:
    """The thrum modules a source file imports, at top level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "thrum":
            parts = node.module.split(".")
            out.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("thrum."))
    return out


def test_module_imports_have_no_cycles():
    # Lazy imports count too: a cycle through a function-level import is still two modules that
    # cannot be understood (or vendored) apart. docs/architecture.md draws the flow.
    package = ROOT / "thrum"
    modules = {p.stem for p in package.glob("*.py")}
    graph = {p.stem: _thrum_imports(p) & modules - {p.stem} for p in package.glob("*.py")}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module, path):
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


_WITHOUT_WEBSOCKETS = """
import sys
sys.modules["websockets"] = None  # this interpreter "lacks" websockets: importing it raises ImportError
sys.path.insert(0, sys.argv[1])
import bench
sys.exit(bench.main(["--quick", "--only", "ws_notify", "--tmpdir", sys.argv[2]]))
"""


def test_bench_fails_loudly_without_websockets(env, tmp_path):
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_WEBSOCKETS, str(ROOT / "bench"), str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120 * FACTOR)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "not available" not in proc.stdout + proc.stderr
    assert "ws_notify" in proc.stderr and "pip install 'websockets" in proc.stderr


def test_send_body_from_a_file_or_stdin(agents, tmp_path):
    t = agents
    awkward = "line one\n  `quoted` $HOME \"double\" 'single' -- --to @nobody\n\u00e9t\u00e9 \u2713\n"
    body = tmp_path / "body.md"
    body.write_text(awkward)
    sent = t.json("send", "--body-file", body, "--to", "@bob", name="alice")
    got = t.json("message", "get", sent["message_id"], name="bob")["message"]
    assert got["body"]["content"] == awkward
    for args in (["--stdin"], ["--body-file", "-"]):
        sent = t.json("send", *args, "--to", "@bob", name="alice", input="from stdin " + args[0])
        assert t.json("message", "get", sent["message_id"], name="bob")["message"]["body"]["content"] == (
            "from stdin " + args[0])

    def refused(*args, input=None):
        proc = t.run("send", *args, "--to", "@bob", name="alice", check=False, input=input)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        return proc.stderr

    before = t.json("inbox", "--all", "--peek", "--page-size", "100", name="bob")["messages"]
    assert "not both" in refused("text", "--body-file", body)
    assert "not allowed with" in refused("--stdin", "--body-file", body, input="x")
    assert "cannot read" in refused("--body-file", tmp_path / "missing.md")
    assert "cannot read" in refused("--body-file", tmp_path)  # a directory
    (tmp_path / "empty.md").write_text("  \n")
    assert "empty" in refused("--body-file", tmp_path / "empty.md")
    assert "empty" in refused("--stdin", input="")
    (tmp_path / "big.md").write_text("x" * (32 * 1024 + 1))
    assert "larger than 32768 bytes" in refused("--body-file", tmp_path / "big.md")
    (tmp_path / "latin1.md").write_bytes(b"caf\xe9\n")
    assert "not UTF-8" in refused("--body-file", tmp_path / "latin1.md")
    assert "a message is required" in refused()
    assert t.json("inbox", "--all", "--peek", "--page-size", "100", name="bob")["messages"] == before  # nothing sent


def test_cli_body_limit_is_the_daemons():
    from thrum import cli, service

    assert cli.MAX_BODY_BYTES == service.MAX_CONTENT_BYTES


def test_inbox_from(agents):
    t = agents
    t.quickstart("carol", "tester", "qa")
    t.run("send", "from alice", "--to", "@bob", name="alice")
    t.run("send", "from carol", "--to", "@bob", name="carol")
    inbox = t.json("inbox", "--from", "@carol", "--peek", name="bob")
    assert [m["body"]["content"] for m in inbox["messages"]] == ["from carol"]
    assert [m["body"]["content"] for m in t.json("inbox", "--from", "alice", name="bob")["messages"]] == [
        "from alice"]
    # Only the shown message was marked read: carol's is still unread.
    unread = t.json("inbox", "--unread", "--peek", name="bob")["messages"]
    assert [m["body"]["content"] for m in unread] == ["from carol"]
    assert "No messages from @nobody for @bob." in t.run("inbox", "--from", "@nobody", name="bob").stdout
    assert t.run("inbox", "--from", "@", name="bob", check=False).returncode == 2


def test_every_command_has_help_and_a_readme_mention():
    import re

    from thrum import cli

    readme = (ROOT / "README.md").read_text()
    for name in cli.COMMAND_TABLE:
        parser = cli.build_parser(name)
        sub = next(a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction))
        assert (sub.choices[name].description or "").strip(), f"thrum {name} has no help text"
        assert re.search(r"`(thrum )?" + re.escape(name) + r"\b", readme), f"README never mentions `{name}`"
