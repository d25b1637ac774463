"""Reading the whole log for a rebuild: every file in chunks, merged by time, in batches.

A rebuild is CPU-bound in two places: decoding JSON lines (and their timestamps) and writing
SQLite rows. On a machine with a second core the decoding runs in a forked child that hands
the parent ready batches through a pipe, so the parent spends its core on SQLite. A caller may
pass `shape`, a function of (event, ns) run where the decoding runs: a rebuild turns the common
events into the flat rows it inserts there, which are also three times cheaper to pickle and
unpickle than the events' nested dicts (6 µs an event each way at a million). Without fork, or when threads are running
(forking a threaded process is unsafe), the same batches are read in-process.

Memory stays flat whatever the log's size: each file is read a chunk at a time and the pipe
holds at most what the parent has not taken yet.
"""

from __future__ import annotations

import fcntl
import heapq
import os
import pickle
import signal
import threading

from thrum.events import EventError, decode_event, parse_timestamp_ns

__all__ = ["LogReader", "bad_line"]

BATCH = 1000  # events per batch handed to the appliers (~650 KiB pickled)
_PIPE_BYTES = 1 << 20  # Linux's default limit for an unprivileged pipe
_CHUNK = 1 << 20  # bytes of one file read at a time (less when there are many files)
_TAIL = 32


def bad_line(rel: str, line: bytes, end: int, error: Exception) -> tuple[str, int, str, str]:
    """The `bad_lines` row of a line (ending at byte `end` of `rel`) that is not an event."""
    return rel, end - len(line) - 1, str(error), line[:200].decode("utf-8", "replace")


class LogReader:
    """Iterate over batches of (event, ns) of the whole log, merged by time (or of `shape(event, ns)`).

    Each file keeps its own order (every append follows what it depends on in the same file);
    across files events are merged by timestamp, so ULID-keyed index inserts land at the end.
    As it goes, `bad` collects the lines that are not events (the caller records them and
    clears the list), `done` counts the bytes read, and at the end `ends` holds each file's
    end offset and the tail of its last line.
    """

    def __init__(self, log, files: list[str], *, fork: bool | None = None, shape=None) -> None:
        self.log = log
        self.files = files
        self.shape = shape
        self.bad: list[tuple[str, int, str, str]] = []  # (path, offset, error, sample)
        self.done = 0
        self.ends: dict[str, tuple[int, bytes]] = {}
        if fork is None:
            fork = hasattr(os, "fork") and threading.active_count() == 1 and (os.cpu_count() or 1) > 1
        self.fork = fork
        self._pid = 0
        self._pipe = None

    # -- the reading itself (in the child, or in-process) --

    def _frames(self):
        """("batch", [(event, ns) or shape(event, ns)], bad, done) ... then ("end", ends)."""
        chunk = max(16 << 10, min(_CHUNK, (4 << 20) // max(1, len(self.files))))
        ends: dict[str, tuple[int, bytes]] = {}
        bad: list = []
        done = [0]

        def events_of(rel: str):
            offset = 0
            while True:
                lines, end = self.log.read_from(rel, offset, limit=chunk)
                if not lines:
                    return
                for line, line_end in lines:
                    if not line.strip():
                        continue
                    try:
                        event = decode_event(line)
                    except EventError as exc:
                        bad.append(bad_line(rel, line, line_end, exc))
                        continue
                    try:
                        ns = parse_timestamp_ns(event.get("timestamp", ""))
                    except EventError:
                        ns = 0
                    yield ns, event
                ends[rel] = (end, (lines[-1][0] + b"\n")[-_TAIL:])
                done[0] += end - offset
                offset = end

        batch: list = []
        shape = self.shape or (lambda event, ns: (event, ns))
        for ns, event in heapq.merge(*(events_of(rel) for rel in self.files), key=lambda item: item[0]):
            batch.append(shape(event, ns))
            if len(batch) >= BATCH:
                yield "batch", batch, bad, done[0]
                batch, bad = [], []
        yield "batch", batch, bad, done[0]
        yield "end", ends

    # -- the parent's side --

    def __iter__(self):
        frames = self._frames() if not self.fork else self._from_child()
        for frame in frames:
            if frame[0] == "end":
                self.ends = frame[1]
                return
            _, batch, bad, self.done = frame
            self.bad.extend(bad)
            if batch:
                yield batch

    def _from_child(self):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: read, decode, pickle; never return into the caller's code
            code = 1
            try:
                os.close(r)
                # Not the daemon's handlers or wake-up fd: a signal ends the child, and the parent
                # notices the missing end frame.
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                with os.fdopen(w, "wb", buffering=1 << 16) as out:
                    for frame in self._frames():
                        pickle.dump(frame, out, protocol=pickle.HIGHEST_PROTOCOL)
                code = 0
            except BaseException as exc:  # reported to the parent by the missing end frame
                try:
                    os.write(2, f"thrum: the log reader failed: {type(exc).__name__}: {exc}\n".encode())
                except OSError:
                    pass
            finally:
                os._exit(code)
        os.close(w)
        try:  # room for a whole batch in the pipe, so the child decodes the next one meanwhile
            fcntl.fcntl(r, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BYTES)
        except OSError:
            pass
        self._pid = pid
        self._pipe = os.fdopen(r, "rb", buffering=1 << 16)
        try:
            while True:
                try:
                    frame = pickle.load(self._pipe)
                except (EOFError, pickle.UnpicklingError):  # the child died: nothing, or half a frame
                    raise OSError("the log reader process ended before the end of the log") from None
                yield frame
                if frame[0] == "end":
                    return
        finally:
            self.close()

    def close(self) -> None:
        """Stop and reap the child, if any (also when the caller stops iterating early)."""
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        if self._pid:
            pid, self._pid = self._pid, 0
            try:
                os.kill(pid, signal.SIGKILL)  # a no-op race if it has just exited: it is not reaped yet
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
