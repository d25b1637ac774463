"""Ways to run thrum: `python -m thrum`, a zipapp on a bare interpreter, and a CLI that starts light."""

import json
import os
import subprocess
import sys

import pytest

from conftest import FACTOR, ROOT, make_repo

HEAVY = ("sqlite3", "_sqlite3", "websockets", "mcp", "selectors", "subprocess", "asyncio", "logging")

_PROBE = r"""
import json, os, sys
from thrum.cli import main
code = main(sys.argv[1:])
with open(os.environ["THRUM_TEST_MODULES"], "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""


def test_python_m_thrum_help(env, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "thrum", "--help"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60 * FACTOR)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: thrum")
    for command in ("init", "daemon", "quickstart", "send", "inbox", "group", "migrate"):
        assert command in proc.stdout
    assert proc.stderr == ""


def test_common_cli_paths_do_not_import_heavy_modules(agents, tmp_path):
    t = agents
    t.json("send", "warm up", "--to", "@bob", name="alice")
    out = tmp_path / "modules.json"
    for argv, who in ((["send", "hello", "--to", "@bob"], "alice"), (["inbox"], "bob"), (["status"], "bob"),
                      (["inbox", "--json"], "bob")):
        proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], cwd=t.repo,
                              env={**t.env, "THRUM_NAME": who, "THRUM_TEST_MODULES": str(out)},
                              capture_output=True, text=True, timeout=60 * FACTOR)
        assert proc.returncode == 0, (argv, proc.stderr)
        data = json.loads(out.read_text())
        assert data["code"] == 0, (argv, proc.stdout, proc.stderr)
        loaded = [m for m in data["modules"] if m.split(".")[0] in HEAVY]
        assert loaded == [], f"thrum {' '.join(argv)} imported {loaded}"
    assert "hello" in t.run("inbox", "--peek", name="bob").stdout


def test_zipapp_runs_on_a_bare_interpreter(env, tmp_path):
    pyz = tmp_path / "dist" / "thrum.pyz"
    build = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_zipapp.py"), "--no-deps", "-o", str(pyz)],
                           env=env, capture_output=True, text=True, timeout=120 * FACTOR)
    assert build.returncode == 0, build.stderr
    assert pyz.is_file()
    bare = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    repo = make_repo(tmp_path / "zrepo", bare)

    def run(*args, check=True, name=None):
        e = dict(bare, THRUM_NAME=name) if name else bare
        proc = subprocess.run([sys.executable, "-I", str(pyz), *args], cwd=repo, env=e, capture_output=True,
                              text=True, timeout=60 * FACTOR)
        if check:
            assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc

    run("init")
    run("daemon", "start")
    try:
        # The daemon runs from the zipapp, not from this checkout.
        pid = json.loads((repo / ".thrum" / "var" / "thrum.pid").read_text())["pid"]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
        paths = [e for e in environ if e.startswith(b"PYTHONPATH=")]
        assert paths and str(pyz).encode() in paths[0] and str(ROOT).encode() not in paths[0], (cmdline, paths)
        run("quickstart", "--name", "zed", "--role", "tester", "--module", "qa", name="zed")
        run("quickstart", "--name", "amy", "--role", "planner", "--module", "qa", name="amy")
        sent = json.loads(run("send", "from a zipapp", "--to", "@amy", "--json", name="zed").stdout)
        assert sent["message_id"].startswith("msg_")
        inbox = json.loads(run("inbox", "--json", name="amy").stdout)
        assert [m["message_id"] for m in inbox["messages"]] == [sent["message_id"]]
        assert "from a zipapp" in run("inbox", "--all", name="amy").stdout
    finally:
        run("daemon", "stop")
    assert run("daemon", "status", check=False).returncode == 1


@pytest.mark.skipif(not os.path.exists(ROOT / "pyproject.toml"), reason="needs the source tree")
def test_version_is_consistent(env):
    from thrum import __version__

    proc = subprocess.run([sys.executable, "-m", "thrum", "--version"], env=env, capture_output=True, text=True,
                          timeout=60 * FACTOR)
    assert proc.stdout.strip() == f"thrum {__version__}"


@pytest.mark.skipif(not os.path.exists(ROOT / "pyproject.toml"), reason="needs the source tree")
def test_distribution_name_is_ours_and_the_command_is_thrum(env):
    import tomllib

    from thrum import DISTRIBUTION, ORIGINAL_PROJECT_URL

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # "thrum" on PyPI is somebody else's project: installing it by that name would run their code.
    assert project["name"] == DISTRIBUTION == "thrum-agents"
    assert project["scripts"] == {"thrum": "thrum.__main__:main"}
    readme = (ROOT / "README.md").read_text()
    assert "pipx install thrum-agents" in readme and "pipx install ." in readme
    version = json.loads(subprocess.run([sys.executable, "-m", "thrum", "version", "--json"], env=env,
                                        capture_output=True, text=True, timeout=60 * FACTOR).stdout)
    assert version["distribution"] == "thrum-agents"
    # Never the Go project's address as this program's own.
    assert version["repo_url"] != ORIGINAL_PROJECT_URL and version["original_project_url"] == ORIGINAL_PROJECT_URL
