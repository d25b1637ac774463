"""children.ChildLedger: a daemon stops the git a killed one left running, and nothing else."""

import subprocess
import sys

import pytest

from conftest import pid_alive, wait_for
from thrum.children import ChildLedger

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="start times come from /proc")


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


def test_only_recorded_children_with_their_start_time_are_stopped(tmp_path):
    path = str(tmp_path / "children")
    ours, reused, ended = _sleeper(), _sleeper(), _sleeper()
    try:
        first = ChildLedger(path)
        for p in (ours, reused, ended):
            first.started(p.pid)
        first.ended(ended.pid)  # reaped by the daemon: no longer its to stop
        lines = open(path).read().splitlines()
        assert len(lines) == 2
        # The daemon dies here. As if `reused`'s pid now belonged to another process:
        lines[1] = f"{reused.pid} 1"
        open(path, "w").write("\n".join(lines) + "\n12 torn-li")
        assert ChildLedger(path).stop_leftovers() == 1
        wait_for(lambda: ours.poll() is not None, what="the left-over child to be killed")
        assert pid_alive(reused.pid) and pid_alive(ended.pid)
        assert open(path).read() == ""  # the next daemon starts with a clean record
        assert ChildLedger(path).stop_leftovers() == 0
    finally:
        for p in (ours, reused, ended):
            p.kill()
            p.wait()


def test_no_record_is_nothing_to_stop(tmp_path):
    assert ChildLedger(str(tmp_path / "children")).stop_leftovers() == 0


def test_a_clean_exit_stops_what_is_still_running_and_clears_the_record(tmp_path):
    path = str(tmp_path / "children")
    running, reaped = _sleeper(), _sleeper()
    try:
        ledger = ChildLedger(path)
        ledger.started(running.pid)
        ledger.started(reaped.pid)
        reaped.kill()
        reaped.wait()  # gone, and its pid free for anyone
        assert ledger.stop_running() == 1
        wait_for(lambda: running.poll() is not None, what="the running child to be killed")
        assert open(path).read() == "" and not ledger.running
    finally:
        running.kill()
        running.wait()
