"""The daemon's child processes on record, so a daemon can stop what a killed one left running.

Every git call of the daemon runs in a process group of its own (so a timeout kills git and
whatever it started: pack-objects, a local remote's receive-pack). A daemon killed with SIGKILL
cannot stop them, and a push or a fetch of a large repository may then run for minutes with
hundreds of MiB. So the loop notes each child (its pid, which is also its group, and its start
time, which tells it from a later process given the same pid) in `var/children`, and the next
daemon, once it holds the lock, kills the groups still running.

Linux only (start times come from /proc); elsewhere nothing is recorded.
"""

from __future__ import annotations

import logging
import os
import signal

from thrum.proc import stat_fields

__all__ = ["ChildLedger"]

log = logging.getLogger("thrum.daemon")


def _start_time(pid: int) -> str | None:
    """The process's start time (a zombie's too: its group may live on), or None."""
    fields = stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None


class ChildLedger:
    """The file of running children: one "pid start_time" line each."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.enabled = os.path.isdir("/proc/self")
        self.running: dict[int, str] = {}

    def started(self, pid: int) -> None:
        if not self.enabled:
            return
        start = _start_time(pid)
        if start is not None:
            self.running[pid] = start
            self._write()

    def ended(self, pid: int) -> None:
        if self.running.pop(pid, None) is not None:
            self._write()

    def stop_leftovers(self) -> int:
        """Kill the process groups a previous daemon recorded that are still running; returns how many."""
        if not self.enabled:
            return 0
        try:
            with open(self.path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("cannot read %s: %s", self.path, exc)
            return 0
        recorded = []
        for line in lines:
            try:
                pid_text, start = line.split()
                recorded.append((int(pid_text), start))
            except ValueError:
                continue  # a line torn by the crash
        stopped = self._stop(recorded)
        if stopped:
            log.warning("stopped %d child process group(s) left running by a daemon that did not exit cleanly",
                        stopped)
        return stopped

    def stop_running(self) -> int:
        """At a clean exit: kill what is still running (the components stopped theirs) and clear the record."""
        return self._stop(list(self.running.items())) if self.enabled else 0

    def _stop(self, recorded: list[tuple[int, str]]) -> int:
        stopped = 0
        for pid, start in recorded:
            now = _start_time(pid)
            # No process with that pid: its group may live on (git's own children), and Linux gives
            # no new process an id that is still some group's. Another start time: the pid was reused.
            if pid <= 1 or (now is not None and now != start):
                continue
            try:
                os.killpg(pid, signal.SIGKILL)
                stopped += 1
            except (ProcessLookupError, PermissionError):
                pass
        self.running.clear()
        self._write()
        return stopped

    def _write(self) -> None:
        # Not synced: after a power loss no child is running either.
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with open(fd, "w") as f:  # private, like everything in var/
                f.write("".join(f"{pid} {start}\n" for pid, start in self.running.items()))
        except OSError as exc:
            log.debug("cannot write %s: %s", self.path, exc)
