"""bench/bench.py --quick runs to the end and reports every row (timings are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import FACTOR, FIXTURE, ROOT

BENCH = ROOT / "bench" / "bench.py"


def _row_names() -> list[str]:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bench
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return [r.name for r in bench.make_rows()]


def _run(tmp_path, env, *args) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out), "--tmpdir", str(tmp_path),
                           *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600 * FACTOR)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc, json.loads(out.read_text())


def _check(proc, data, tmp_path) -> None:
    names = _row_names()
    table = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ")]
    assert table[0].startswith("| name | measured | target | ok?")
    assert [ln.split("|")[1].strip() for ln in table[1:]] == names
    assert [r["name"] for r in data["rows"]] == names
    assert data["completed"] is True
    # Every core row got a number; only the hooks for features still being built may be unavailable.
    for row in data["rows"]:
        if row["group"] not in ("ws", "sync"):
            assert row["status"] in ("ok", "MISS", "info"), row
    # It cleaned up: its temp dir (repo, daemon, compiled copy) is gone.
    assert not list(tmp_path.glob("thrum-bench-*"))



def test_bench_quick_generated(tmp_path, env):
    proc, data = _run(tmp_path, env, "--generate", "200")
    _check(proc, data, tmp_path)


def test_bench_quick_fixture(tmp_path, env):
    if not FIXTURE.exists():
        pytest.skip(f"Go fixture not found at {FIXTURE} (set THRUM_SHARED_DIR to the shared/ directory)")
    proc, data = _run(tmp_path, env, "--fixture", str(FIXTURE))
    _check(proc, data, tmp_path)


def test_bench_missing_fixture_is_explained(tmp_path, env):
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--fixture", str(tmp_path / "nope.tar.gz")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120 * FACTOR)
    assert proc.returncode == 1
    assert "fixture is missing" in proc.stderr and "nope.tar.gz" in proc.stderr


def test_bench_load_quick(tmp_path, env):
    """bench/bench_load.py runs one short round end to end and proves what it reports (nothing lost)."""
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_load.py"), "--quick", "--generate", "100",
                           "--rounds", "1", "--seconds", "1", "--strict", "--json", str(out), "--tmpdir", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300 * FACTOR)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    data = json.loads(out.read_text())
    rows = {r["name"]: r for r in data["rows"]}
    assert data["completed"] is True and rows["lost"]["measured"] == 0
    assert all(r["status"] in ("ok", "MISS", "info") for r in data["rows"]), data["rows"]
    assert rows["send_per_s"]["measured"] > 0 and rows["health_p50"]["measured"] > 0
    assert [ln.split("|")[1].strip() for ln in proc.stdout.splitlines() if ln.startswith("| ")][1:] == list(rows)
    assert not list(tmp_path.glob("thrum-bench-*"))
