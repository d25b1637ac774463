"""Reading /proc/PID/stat (Linux): a process's state, parent and start time.

Shared by the hooks (is the agent runtime that started us still the same process?), the daemon's
record of its children and `daemon.pid_alive`. It imports nothing, so the hooks may use it on their
hot path.
"""

from __future__ import annotations

__all__ = ["stat_fields"]


def stat_fields(pid: int) -> list[str] | None:
    """The fields after the command name: [0] is the state ("Z": a zombie), [1] the parent pid,
    [19] the start time in clock ticks since boot. None when there is no such process (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after the last ')'.
    return raw[raw.rfind(")") + 2:].split()
