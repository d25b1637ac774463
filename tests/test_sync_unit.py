"""The sans-I/O parts of sync: parsing git's output (trees, diffs, the lines a diff adds)."""

from __future__ import annotations

import os

import pytest

from thrum import sync
from thrum.rpc import Deferred, ThrumError


def test_parse_ls_tree_and_mktree_input_round_trip():
    out = (b"100644 blob " + b"a" * 40 + b"     12\tevents.jsonl\0"
           b"040000 tree " + b"b" * 40 + b"      -\tmessages\0"
           b"100644 blob " + b"c" * 40 + b"      7\tmessages/alice.jsonl\0")
    entries = sync.parse_ls_tree(out)
    assert entries["events.jsonl"] == ("100644", "blob", "a" * 40, 12)
    assert entries["messages"] == ("040000", "tree", "b" * 40, -1)
    assert entries["messages/alice.jsonl"][3] == 7
    assert sync._mktree_input({"events.jsonl": entries["events.jsonl"]}) == \
        b"100644 blob " + b"a" * 40 + b"\tevents.jsonl\0"


def test_parse_diff_tree():
    z = "0" * 40
    out = (f":000000 100644 {z} {'1' * 40} A\0messages/bob.jsonl\0"
           f":100644 100644 {'2' * 40} {'3' * 40} M\0events.jsonl\0"
           f":100644 000000 {'4' * 40} {z} D\0old.jsonl\0").encode()
    assert sync.parse_diff_tree(out) == [("A", "1" * 40, "messages/bob.jsonl"), ("M", "3" * 40, "events.jsonl"),
                                         ("D", z, "old.jsonl")]


def test_parse_cat_file():
    out = b"a" * 40 + b" blob 3\nabc\n" + b"b" * 40 + b" blob 0\n\n"
    assert sync.parse_cat_file(out) == {"a" * 40: b"abc", "b" * 40: b""}


def test_log_paths_are_the_only_files_merged():
    ok = ["events.jsonl", "messages/alice.jsonl", "messages/user_leon.jsonl", "messages/coordinator-1.jsonl"]
    bad = ["messages.jsonl", "context/alice.md", "messages/../x.jsonl", "messages/a/b.jsonl", "messages/.jsonl",
           "events.jsonl.tmp"]
    assert all(sync._LOG_PATH.match(p) for p in ok)
    assert not any(sync._LOG_PATH.match(p) for p in bad)


def test_push_rejection_is_told_apart_from_failure():
    rejected = sync.GitResult(1, b"To /r\n!\trefs/heads/x:refs/heads/a-sync\t[rejected] (fetch first)\nDone\n", b"")
    failed = sync.GitResult(128, b"", b"fatal: '/r' does not appear to be a git repository\n")
    declined = sync.GitResult(1, b"!\tx:refs/heads/a-sync\t[remote rejected] (pre-receive hook declined)\n", b"")
    assert sync._push_was_rejected(rejected)
    assert not sync._push_was_rejected(failed)
    assert not sync._push_was_rejected(declined)
    assert sync._push_error(declined) == "[remote rejected] (pre-receive hook declined)"


def test_deferred_delivers_once_whenever_it_is_bound():
    got = []
    early = Deferred()
    early.resolve({"x": 1})
    early.resolve({"x": 2})
    early.bind(lambda ok, value: got.append((ok, value)))
    late = Deferred()
    late.bind(lambda ok, value: got.append((ok, value)))
    err = ThrumError("nope")
    late.fail(err)
    late.resolve({"y": 1})
    assert got == [(True, {"x": 1}), (False, err)]


# -- probing origin while the clone is active (no git, no sockets: a fake loop and daemon) --------

def test_parse_ls_remote_takes_exactly_the_sync_ref():
    out = b"1" * 40 + b"\trefs/heads/a-sync-old\n" + b"2" * 40 + b"\trefs/heads/a-sync\n"
    assert sync.parse_ls_remote(out) == "2" * 40
    assert sync.parse_ls_remote(b"") == ""


def test_recent_counter_counts_the_last_hour_only(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(sync.time, "monotonic", lambda: clock[0])
    counter = sync._RecentCounter()
    assert counter.count() == 0 and counter.last_at() == ""
    counter.note()
    clock[0] += 1800
    counter.note()
    assert counter.count() == 2 and counter.last_at()
    clock[0] += 1801
    assert counter.count() == 1


def test_probe_settings(monkeypatch, tmp_path):
    config = str(tmp_path / "config.json")
    monkeypatch.setenv("THRUM_SYNC_PROBE_INTERVAL", "0.5")
    assert sync._probe_interval_setting(config) == sync.MIN_PROBE_INTERVAL  # never more often than every 2 s
    monkeypatch.setenv("THRUM_SYNC_PROBE_INTERVAL", "0")
    assert sync._probe_interval_setting(config) == 0
    monkeypatch.delenv("THRUM_SYNC_PROBE_INTERVAL")
    (tmp_path / "config.json").write_text('{"daemon": {"sync_probe_interval": 5, "sync_active_window": 30}}')
    assert sync._probe_interval_setting(config) == 5 and sync._active_window_setting(config) == 30
    (tmp_path / "config.json").write_text("{}")
    assert sync._probe_interval_setting(config) == 2 and sync._active_window_setting(config) == 120
    assert sync._debounce_setting(config) == 0.25


class _FakeLoop:
    def __init__(self) -> None:
        self.spawned: list = []

    def call_later(self, delay, fn, *args):
        return [delay, fn]

    def cancel(self, entry) -> None:
        pass

    def call_soon(self, fn, *args) -> None:
        fn(*args)

    def spawn(self, argv, on_done, **kw):
        self.spawned.append((argv, on_done))
        return object()


class _FakePush:
    def __init__(self) -> None:
        self.reason = ""

    def activity(self) -> str:
        return self.reason


def _probing_loop(tmp_path, **kw) -> sync.SyncLoop:
    from types import SimpleNamespace

    loop = sync.SyncLoop(SimpleNamespace(var=str(tmp_path), config=str(tmp_path / "config.json")))
    loop.daemon = SimpleNamespace(loop=_FakeLoop(), push=_FakePush())
    loop.env = SimpleNamespace(sync_dir=str(tmp_path))
    loop.running, loop.remote_configured = True, True
    loop.requested = 0

    def request(waiter=None):
        loop.requested += 1
    loop.request = request
    for k, v in kw.items():
        setattr(loop, k, v)
    return loop


def test_an_idle_clone_does_not_probe_an_active_one_does_once_per_interval(tmp_path):
    loop = _probing_loop(tmp_path)
    fake = loop.daemon.loop
    assert loop.mode() == "idle" and loop._maybe_probe() == loop.probe_interval and fake.spawned == []
    loop.daemon.push.reason = "waiter"
    assert loop.mode() == "active" and loop.activity() == "waiter"
    loop._maybe_probe()
    assert len(fake.spawned) == 1 and "ls-remote" in fake.spawned[0][0]
    loop._maybe_probe()  # one probe at a time
    assert len(fake.spawned) == 1
    fake.spawned[0][1](0, b"", b"")
    wait = loop._maybe_probe()  # too soon after the last one
    assert len(fake.spawned) == 1 and 0 < wait <= loop.probe_interval
    assert loop.probes.count() == 1


def test_only_a_moved_ref_starts_a_round(tmp_path):
    loop = _probing_loop(tmp_path, state={"version": 1, "remote_head": "a" * 40})
    loop._probe_done(0, b"a" * 40 + b"\trefs/heads/a-sync\n", b"")
    assert loop.requested == 0
    loop._probe_done(0, b"b" * 40 + b"\trefs/heads/a-sync\n", b"")
    assert loop.requested == 1


def test_failed_probes_back_off_and_report(tmp_path):
    loop = _probing_loop(tmp_path)
    loop.daemon.push.reason = "web_ui"
    loop._maybe_probe()
    loop.daemon.loop.spawned[0][1](-9, b"", b"")
    assert loop.probe_error == "timed out" and loop._probe_status()["last_probe_error"] == "timed out"
    wait = loop._maybe_probe()
    assert len(loop.daemon.loop.spawned) == 1 and wait > loop.probe_interval  # backing off
    loop.last_probe_started -= 10
    loop._maybe_probe()
    loop.daemon.loop.spawned[1][1](0, b"", b"")
    assert loop.probe_error == "" and "last_probe_error" not in loop._probe_status()


def test_requests_make_a_clone_active_but_looking_at_it_does_not(tmp_path):
    loop = _probing_loop(tmp_path)
    loop._on_request("health", None)
    loop._on_request("sync.status", None)
    assert loop.activity() == ""
    loop._on_request("message.list", None)
    assert loop.activity() == "requests"
    loop.last_request_at -= loop.active_window + 1
    assert loop.mode() == "idle"


def test_local_only_and_remote_less_clones_never_probe(tmp_path):
    loop = _probing_loop(tmp_path, local_only=True)
    loop.daemon.push.reason = "waiter"
    assert loop.mode() == "local" and not loop.probes_allowed()
    loop = _probing_loop(tmp_path, remote_configured=False)
    loop.daemon.push.reason = "waiter"
    loop._maybe_probe()
    assert loop.mode() == "local" and loop.daemon.loop.spawned == []


def test_rounds_after_writes_are_spaced_by_their_own_cost(tmp_path):
    loop = _probing_loop(tmp_path)
    loop.ended_at = sync.time.monotonic()
    loop.last_result = {"duration_ms": 50}
    assert loop.write_delay() == loop.debounce  # a cheap round: the write goes out after the debounce
    loop.last_result = {"duration_ms": 2000}
    assert 5.9 < loop.write_delay() <= 6.0  # a 2 s round (a big log): the next starts 6 s after it
    loop.ended_at -= 60
    assert loop.write_delay() == loop.debounce  # a lone write after a quiet spell
    loop.write_round_at = sync.time.monotonic()
    assert loop.write_delay() > sync.WRITE_ROUND_SPACING - 0.1  # a stream: at most one round a second


# -- added_lines: what a merge takes from `git diff-tree -p -U0` of one file ---------------------

def test_added_lines_are_the_plus_lines_of_the_hunks_whatever_they_hold():
    diff = (b"diff --git a/messages/a.jsonl b/messages/a.jsonl\nindex 1..2 100644\n--- a/messages/a.jsonl\n"
            b"+++ b/messages/a.jsonl\n@@ -2,0 +3,3 @@\n+{\"n\":1}\n++++ not a header\n+@@ -1 +1 @@\n")
    assert sync.added_lines(diff) == [b'{"n":1}', b"+++ not a header", b"@@ -1 +1 @@"]


def test_added_lines_of_a_new_file_and_of_a_rewritten_one():
    new_file = (b"diff --git a/m b/m\nnew file mode 100644\nindex 0..1\n--- /dev/null\n+++ b/m\n"
                b"@@ -0,0 +1,2 @@\n+l1\n+l2\n")
    assert sync.added_lines(new_file) == [b"l1", b"l2"]
    rewritten = b"diff --git a/m b/m\n--- a/m\n+++ b/m\n@@ -1,2 +1 @@\n-l1\n-l2\n+l3\n@@ -5 +4,0 @@\n-l4\n"
    assert sync.added_lines(rewritten) == [b"l3"]  # removals never remove anything: the log is a union


def test_added_lines_leave_a_line_still_being_written():
    partial = b"--- a/m\n+++ b/m\n@@ -3,0 +4,2 @@\n+done\n+half\n\\ No newline at end of file\n"
    assert sync.added_lines(partial) == [b"done"]
    # The next version completes it: against the old one (whose last line had no newline) it is added.
    completed = (b"--- a/m\n+++ b/m\n@@ -5 +5,2 @@\n-half\n\\ No newline at end of file\n+half and done\n"
                 b"+next\n")
    assert sync.added_lines(completed) == [b"half and done", b"next"]


def test_added_lines_read_from_git_output_file_one_at_a_time(tmp_path):
    """A merge reads each diff back from the file git wrote (--output), a line at a time."""
    diff = (b"diff --git a/m b/m\n--- a/m\n+++ b/m\n@@ -1,2 +1 @@\n-l1\n-l2\n+l3\r\n@@ -5 +4,3 @@\n-l4\n"
            b"+" + b"x" * 100_000 + b"\n+l5\n+half\n\\ No newline at end of file\n")
    out = tmp_path / "diff.tmp"
    out.write_bytes(diff)
    streamed = sync.iter_added_lines(sync._file_lines(str(out)))
    assert next(streamed) == b"l3\r"  # nothing but the newline is taken off
    assert [b"l3\r", *streamed] == sync.added_lines(diff) == [b"l3\r", b"x" * 100_000, b"l5"]


# -- the round host: git calls that run while the round projects --------------------------------

class _Children(_FakeLoop):
    """A loop whose children end when the test says so; each records whether it was killed."""

    class Child:
        def __init__(self, argv, on_done) -> None:
            self.argv, self.on_done, self.done, self.killed = argv, on_done, False, False

        def kill(self) -> None:
            self.killed = True

        def end(self, rc: int = 0, out: bytes = b"") -> None:
            self.done = True
            self.on_done(rc, out, b"")

    def spawn(self, argv, on_done, **kw):
        child = self.Child(argv, on_done)
        self.spawned.append(child)
        return child


@pytest.fixture
def round_host(tmp_path):
    """make(round_steps) -> a SyncLoop running the generator `round_steps(trace)`, and the trace of what
    the round saw. The loops' lock files are closed after the test."""
    from types import SimpleNamespace

    fds: list[int] = []

    def make(round_steps) -> tuple[sync.SyncLoop, list]:
        loop = _probing_loop(tmp_path, daemon=None)
        loop.daemon = SimpleNamespace(loop=_Children(), push=_FakePush(), store=SimpleNamespace(holding=False),
                                      run_write=lambda fn, hold=False: trace.append(("write", fn())))
        loop.running, loop.started_at = False, sync.time.monotonic()
        loop.lock_fd = os.open(tmp_path / "sync.lock", os.O_CREAT | os.O_RDWR)
        fds.append(loop.lock_fd)
        loop.state_path = str(tmp_path / "state.json")
        trace: list = []
        loop.round, loop.gen = None, round_steps(trace)
        return loop, trace
    yield make
    for fd in fds:
        os.close(fd)


def test_a_batch_started_without_waiting_runs_while_the_round_writes_and_hands_over_its_results(round_host):
    def steps(trace):
        yield sync._GitBatch([(["diff-tree", "one"], lambda: None, 5), (["diff-tree", "two"], lambda: None, 5)],
                             wait=False)
        yield sync._Write(lambda: "projected while git ran")
        results = yield sync._Await()
        trace.append(("results", [r.out for r in results]))
        yield sync._GitBatch([(["diff-tree", "three"], lambda: None, 5)], wait=False)
        results = yield sync._Await()
        trace.append(("results", [r.out for r in results]))

    loop, trace = round_host(steps)
    loop._advance(None)
    children = loop.daemon.loop.spawned
    assert [c.argv[-1] for c in children] == ["one", "two"]
    assert trace == [("write", "projected while git ran")]  # the write did not wait for git
    children[1].end(0, b"second")
    assert loop.gen is not None and len(trace) == 1  # still waiting for the first call
    children[0].end(0, b"first")
    assert trace[1] == ("results", [b"first", b"second"])  # in the order they were asked for
    children[2].end(0, b"third")  # ended before the round awaited it: handed over at once
    assert trace[2] == ("results", [b"third"]) and loop.gen is None and loop.batch is None
    assert loop.state["last_error"] == ""


def test_a_round_that_ends_with_git_still_running_kills_it_and_ignores_its_late_answer(round_host):
    def steps(trace):
        yield sync._GitBatch([(["diff-tree", "next"], lambda: None, 5)], wait=False)
        raise sync.SyncError("the projection failed")
        yield  # pragma: no cover

    loop, trace = round_host(steps)
    loop._advance(None)
    child = loop.daemon.loop.spawned[0]
    assert child.killed and loop.batch is None and loop.state["last_error"] == "the projection failed"
    loop.batch = marker = [[], [], 0, 0, True]  # the next round's batch
    child.end(-9)
    assert loop.batch is marker and marker[1] == []
