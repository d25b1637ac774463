"""The rebuild's log reader: the forked child and the in-process reader hand over the same batches."""

import os
import signal

import pytest

from thrum import logreader
from thrum.events import encode_line, format_ns
from thrum.logreader import LogReader
from thrum.store import EventLog

T0 = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z


def _event(i: int, author: str, ns: int) -> dict:
    return {"type": "message.create", "event_id": f"evt_{author}_{i:06d}", "message_id": f"msg_{author}_{i:06d}",
            "agent_id": author, "timestamp": format_ns(ns), "body": {"format": "markdown", "content": f"m {i}"},
            "v": 1}


@pytest.fixture
def log(tmp_path):
    """Three files with interleaved times, a bad line in one, an event without an id in another."""
    root = tmp_path / "sync"
    (root / "messages").mkdir(parents=True)
    with open(root / "events.jsonl", "wb") as f:
        f.write(encode_line({"type": "agent.register", "agent_id": "a", "timestamp": format_ns(T0), "v": 1}))
    for k, author in enumerate(("a", "b")):
        with open(root / "messages" / f"{author}.jsonl", "wb") as f:
            for i in range(4500):
                f.write(encode_line(_event(i, author, T0 + (2 * i + k) * 10**6)))
                if author == "b" and i == 1234:
                    f.write(b'{"type": "message.create", broken\n')
                if author == "a" and i == 10:
                    f.write(b"\n")  # blank lines are skipped, not bad
    return EventLog(str(root), str(tmp_path / "quarantine"))


def _read(log, fork: bool):
    reader = LogReader(log, log.files(), fork=fork)
    batches = [list(batch) for batch in reader]
    return batches, reader.bad, reader.ends, reader.done


def test_forked_and_in_process_readers_agree(log):
    batches, bad, ends, done = _read(log, fork=True)
    assert (batches, bad, ends, done) == _read(log, fork=False)
    events = [e for batch in batches for e, _ in batch]
    assert len(events) == 9001 and all(len(b) <= logreader.BATCH for b in batches)
    # merged by time across files, each file in its own order
    assert [ns for batch in batches for _, ns in batch] == sorted(ns for batch in batches for _, ns in batch)
    assert [e["event_id"] for e in events if e["agent_id"] == "b"] == [f"evt_b_{i:06d}" for i in range(4500)]
    assert events[0]["type"] == "agent.register" and events[0]["event_id"].startswith("evt_")  # derived id
    assert len(bad) == 1 and bad[0][0] == "messages/b.jsonl" and bad[0][3].startswith('{"type": "message.create"')
    assert ends == {rel: (log.size(rel), open(log.path(rel), "rb").read()[-32:]) for rel in log.files()}
    assert done == sum(log.size(rel) for rel in log.files())


def test_a_reader_child_that_dies_is_an_error_and_is_reaped(log, monkeypatch):
    reader = LogReader(log, log.files(), fork=True)
    it = iter(reader)
    next(it)
    pid = reader._pid
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(OSError, match="log reader"):
        for _ in it:
            pass
    assert reader._pid == 0
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already reaped


def test_stopping_early_reaps_the_child(log):
    reader = LogReader(log, log.files(), fork=True)
    it = iter(reader)
    next(it)
    pid = reader._pid
    it.close()
    assert reader._pid == 0
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
