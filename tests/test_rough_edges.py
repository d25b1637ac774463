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
