"""Shared fixtures: real git repositories, real daemons, the real CLI in subprocesses.

Nothing here sleeps for a fixed time: waits poll a condition with a deadline
(`wait_for`), scaled by THRUM_TEST_TIMEOUT_FACTOR on slow machines. HOME and git's
global config point into the test's temp dir, so no test reads the user's files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("THRUM_SHARED_DIR") or ROOT.parent / "shared")
FIXTURE = SHARED / "fixtures" / "thrum-go-v0.4-fixture.tar.gz"
FACTOR = float(os.environ.get("THRUM_TEST_TIMEOUT_FACTOR", "1"))

sys.path.insert(0, str(ROOT))

from thrum.daemon import pid_alive  # noqa: E402,F401 (this checkout's; tests import it from here)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.01, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value; fail after `timeout` seconds (scaled)."""
    deadline = time.monotonic() + timeout * FACTOR
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout * FACTOR:g}s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.2)




@pytest.fixture
def env(tmp_path) -> dict:
    home = tmp_path / "home"
    home.mkdir()
    gitconfig = home / ".gitconfig"
    gitconfig.write_text("[user]\n\tname = Test User\n\temail = test@example.com\n"
                         "[init]\n\tdefaultBranch = main\n[advice]\n\tdetachedHead = false\n")
    e = {k: v for k, v in os.environ.items() if not k.startswith(("THRUM_", "GIT_"))}
    e.update({"HOME": str(home), "GIT_CONFIG_GLOBAL": str(gitconfig), "GIT_CONFIG_NOSYSTEM": "1",
              "PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(home / ".config"), "COLUMNS": "100"})
    return e


def git(cwd, *args, env=None, check=True) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout.strip()


def make_repo(path: Path, env: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", env=env)
    (path / "README.md").write_text("test repo\n")
    git(path, "add", "README.md", env=env)
    git(path, "commit", "-q", "-m", "initial", env=env)
    return path


class Thrum:
    """Drives the real CLI (and, for RPC-level tests, the real socket) for one repository."""

    def __init__(self, repo: Path, env: dict) -> None:
        self.repo = Path(repo)
        self.env = env

    # CLI

    def run(self, *args, name: str | None = None, check: bool = True, input: str | None = None,
            cwd=None, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        e = dict(self.env if env is None else env)
        if name:
            e["THRUM_NAME"] = name
        proc = subprocess.run([sys.executable, "-m", "thrum", *map(str, args)], cwd=cwd or self.repo, env=e,
                              input=input, capture_output=True, text=True, timeout=timeout * FACTOR)
        if check and proc.returncode != 0:
            raise AssertionError(f"thrum {' '.join(map(str, args))} exited {proc.returncode}\n"
                                 f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def json(self, *args, **kw):
        proc = self.run(*args, "--json", **kw)
        try:
            return json.loads(proc.stdout)
        except ValueError:
            raise AssertionError(f"not JSON: {proc.stdout!r} (stderr {proc.stderr!r})") from None

    # paths

    @property
    def var(self) -> Path:
        return self.repo / ".thrum" / "var"

    @property
    def socket(self) -> Path:
        return self.var / "thrum.sock"

    @property
    def sync_dir(self) -> Path:
        return self.repo / ".git" / "thrum-sync" / "a-sync"

    def pid(self) -> int | None:
        try:
            return json.loads((self.var / "thrum.pid").read_text())["pid"]
        except (OSError, ValueError, KeyError):
            return None

    # daemon

    def init(self) -> None:
        self.run("init")

    def start(self) -> None:
        self.run("daemon", "start")

    def stop(self) -> None:
        pid = self.pid()
        proc = self.run("daemon", "stop", check=False)
        if proc.returncode != 0 and pid and pid_alive(pid):
            self.kill()
        if pid:
            wait_for(lambda: not pid_alive(pid), 10, what="the daemon to exit")

    def kill(self) -> None:
        pid = self.pid()
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not pid_alive(pid), 10, what="the killed daemon to exit")

    def client(self, timeout: float = 10):
        from thrum.rpc import Client

        return Client(str(self.socket), timeout=timeout * FACTOR).connect()

    def call(self, method: str, **params):
        with self.client() as c:
            return c.call(method, params)

    def quickstart(self, name: str, role: str = "implementer", module: str = "core", intent: str = "") -> dict:
        args = ["quickstart", "--name", name, "--role", role, "--module", module]
        if intent:
            args += ["--intent", intent]
        return self.json(*args, name=name)


@pytest.fixture
def repo(tmp_path, env) -> Path:
    return make_repo(tmp_path / "repo", env)


@pytest.fixture
def thrum(repo, env) -> Thrum:
    t = Thrum(repo, env)
    t.init()
    return t


@pytest.fixture
def daemon(thrum):
    thrum.start()
    try:
        yield thrum
    finally:
        thrum.stop()


@pytest.fixture
def agents(daemon):
    """A running daemon with alice (implementer @ auth) and bob (reviewer @ auth), both in session."""
    daemon.quickstart("alice", "implementer", "auth")
    daemon.quickstart("bob", "reviewer", "auth")
    return daemon


@pytest.fixture
def fixture_tar() -> Path:
    if not FIXTURE.exists():
        pytest.skip(f"Go fixture not found at {FIXTURE} (set THRUM_SHARED_DIR to the shared/ directory)")
    return FIXTURE


def extract_fixture(tar_path: Path, dest: Path) -> None:
    with tarfile.open(tar_path) as tar:
        tar.extractall(dest, filter="data")
