"""bench/bench_search.py builds a small repository, measures it and reports (timings are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import FACTOR, ROOT


def test_bench_search_runs_standalone(tmp_path, env):
    out = tmp_path / "search.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_search.py"), "--messages", "400",
                           "--queries", "10", "--json", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300 * FACTOR)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "two words of one message" in proc.stdout and "bytes per message" in proc.stdout
    data = json.loads(out.read_text())
    assert data["messages"] == 400
    assert data["median_ms"] > 0 and data["p95_ms"] >= data["median_ms"]
    assert data["index_bytes_per_message"] > 0
