"""Fault injection: crashes, torn and corrupt files, a broken database, full and read-only disks,
git failing mid-sync, racing daemon starts. Each test tries to break one promise of
docs/guarantees.md and then checks that nothing acknowledged was lost or duplicated.

Mounts (tmpfs, read-only bind mounts) need root; those tests skip with the reason
otherwise and always unmount in `finally`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from conftest import FACTOR, Thrum, pid_alive, wait_for
from helpers import RawConn, log_events, log_lines, message_create_counts, register, table_rows
from test_sync import clones, event_id_counts, force, message_ids, remote, sync_env  # noqa: F401 (fixtures)

# Tables of messages.db that a rebuild from the log must reproduce. Columns that
# docs/guarantees.md names local-only (heartbeats, git check times) are left out.
PROJECTION_TABLES = ("agents", "sessions", "messages", "message_scopes", "message_refs", "message_reads",
                     "message_edits", "message_deliveries", "groups", "group_members", "work_contexts", "applied",
                     "bad_lines",
                     # the derived views (views.py): audience index, keysets and counters
                     "message_audience", "keysets", "keyset_keys", "audience_counts", "reader_counts", "scope_counts",
                     "scope_reads", "counters")
LOCAL_ONLY_COLUMNS = ("last_seen_at", "git_checked_at")


# -- helpers ------------------------------------------------------------------------------------

def _projection(db_path) -> dict:
    return {table: table_rows(db_path, table, exclude=LOCAL_ONLY_COLUMNS) for table in PROJECTION_TABLES}


def assert_projection_equals_a_rebuild(t: Thrum, tmp_path: Path) -> None:
    """Stop the daemon, rebuild a copy of .thrum/ from the same log, compare every table."""
    t.stop()
    copy = tmp_path / f"rebuild-{len(list(tmp_path.glob('rebuild-*')))}"
    shutil.copytree(t.repo / ".thrum" / "var", copy, ignore=shutil.ignore_patterns("thrum.sock", "quarantine"))
    live = _projection(t.var / "messages.db")
    from thrum.store import Store
    from thrum.daemon import make_store
    from thrum.paths import resolve

    store = make_store(resolve(str(t.repo)), str(t.sync_dir))
    assert isinstance(store, Store)
    store.db_path = str(copy / "messages.db")
    store.log.journal = None  # the daemon stopped cleanly: its journal is empty
    store.rebuild()
    store.close()
    rebuilt = _projection(copy / "messages.db")
    for table in PROJECTION_TABLES:
        assert live[table] == rebuilt[table], f"table {table} differs from a rebuild of the log"


def _mount_tmpfs(target: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(target)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")


def _umount(target: Path) -> None:
    # Lazy: a daemon that failed to stop must not leave the mount behind either.
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


@contextlib.contextmanager
def tmpfs_over(target: Path, size: str = "16m"):
    """A tmpfs mounted over `target` holding a copy of what was there; copied back at the end."""
    saved = target.parent / (target.name + ".saved")
    shutil.copytree(target, saved, symlinks=True)
    _mount_tmpfs(target, size)
    try:
        shutil.copytree(saved, target, symlinks=True, dirs_exist_ok=True)
        yield target
    finally:
        _umount(target)
        shutil.rmtree(saved, ignore_errors=True)


def fill(directory: Path) -> Path:
    """Fill the filesystem of `directory` until the kernel says ENOSPC; returns the filler file."""
    filler = directory / "filler"
    with open(filler, "wb") as f:
        chunk = b"\xee" * (1 << 16)
        for _ in range(1 << 16):  # bounded: at most 4 GiB, far more than any test tmpfs
            try:
                f.write(chunk)
                f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    # Bytes in Python's buffer may be lost with the failed flush; top up byte by byte.
    fd = os.open(filler, os.O_WRONLY | os.O_APPEND)
    try:
        for _ in range(1 << 16):
            os.write(fd, b"\xee" * 512)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def send(conn: RawConn, author: str, content: str, client_id: str | None = None, rid=1) -> dict:
    params = {"caller_agent_id": author, "content": content}
    if client_id:
        params["client_id"] = client_id
    return conn.call("message.send", params, rid=rid)


# -- 5. the database COMMIT fails after the log lines are durable ---------------------------------

def test_failed_database_commit_after_a_durable_log_write_is_not_an_error(agents, tmp_path):
    """The database lives on a tmpfs we fill: SQLite's COMMIT fails with SQLITE_FULL while the
    log (elsewhere) and the preallocated journal take the lines. The write is durable, so the
    caller gets success, and a retry with the same client_id can never duplicate it."""
    t = agents
    t.stop()  # a clean stop truncates the WAL: the next commit must grow it
    dbfs = tmp_path / "dbfs"
    dbfs.mkdir()
    _mount_tmpfs(dbfs, "4m")
    try:
        shutil.move(t.var / "messages.db", dbfs / "messages.db")
        for suffix in ("-wal", "-shm"):
            (t.var / f"messages.db{suffix}").unlink(missing_ok=True)
        (t.var / "messages.db").symlink_to(dbfs / "messages.db")
        t.start()
        filler = fill(dbfs)
        big = "x" * 30000  # more than any WAL slack left by the start-up
        with RawConn(t.socket) as c:
            first = send(c, "alice", big, client_id="cid-1", rid=1)
            assert "result" in first, f"a durable write was answered with an error: {first}"
            mid = first["result"]["message_id"]
            assert message_create_counts(t.sync_dir)[mid] == 1
            # The COMMIT of a send may wait for the next use of the database (Store.commit_projection):
            # any other request commits first, and that COMMIT fails.
            assert c.call("health", {}, rid=5)["result"]["status"] == "ok"
            # Still full: a new write cannot be validated against a projection that lacks a
            # logged line, so it is refused before it logs anything.
            lines_before = log_lines(t.sync_dir)
            second = send(c, "alice", "refused while behind", client_id="cid-2", rid=2)
            assert second["error"]["code"] == -32006, second
            assert log_lines(t.sync_dir) == lines_before
            filler.unlink()
            retry = send(c, "alice", big, client_id="cid-1", rid=3)
            assert retry["result"]["message_id"] == mid
            got = c.call("message.get", {"message_id": mid}, rid=4)
            assert got["result"]["message"]["body"]["content"] == big
        per_client = Counter(e.get("client_id") for _, e in log_events(t.sync_dir) if e.get("type") == "message.create")
        assert per_client["cid-1"] == 1 and per_client["cid-2"] == 0
        assert "the database commit failed" in (t.var / "daemon.log").read_text()
        t.stop()
        (t.var / "messages.db").unlink()
        shutil.move(dbfs / "messages.db", t.var / "messages.db")
    finally:
        t.kill()
        _umount(dbfs)
    t.start()
    assert t.call("message.get", message_id=mid)["message"]["body"]["content"] == big
    assert_projection_equals_a_rebuild(t, tmp_path)


# -- 1. SIGKILL during concurrent writes of every kind, several rounds ---------------------------

ROUNDS = 6
MAX_OPS = 3000  # per connection and round: a bound in case the kill never lands


class Acks:
    """What each connection sent and what the daemon acknowledged, shared across threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sends: dict[str, tuple[str, str]] = {}   # client_id -> (author, content) sent
        self.acked: dict[str, str] = {}               # client_id -> message_id
        self.edits: dict[str, list[str]] = {}         # message_id -> contents sent, in order
        self.acked_edit: dict[str, int] = {}          # message_id -> index of the last acknowledged edit
        self.reads: set[tuple[str, str]] = set()      # (reader, message_id) acknowledged
        self.members: set[tuple[str, str]] = set()    # (group, role) acknowledged
        self.delivered: list[tuple[str, str]] = []    # (agent, message_id) handed over by message.deliver
        self.count = 0

    def ack(self) -> None:
        self.count += 1


def _pipelined_sender(t, author, tag, rng, acks: Acks, stop: threading.Event) -> None:
    """Sends windows of 1..8 pipelined message.send requests before reading the answers."""
    with contextlib.suppress(OSError, ConnectionError), RawConn(t.socket, timeout=30) as conn:
        i = 0
        while i < MAX_OPS and not stop.is_set():
            batch = []
            for _ in range(rng.randint(1, 8)):
                cid = f"{tag}-{author}-{i}"
                i += 1
                batch.append(cid)
                with acks.lock:
                    acks.sends[cid] = (author, f"content of {cid}")
            conn.send(b"".join(json.dumps({"jsonrpc": "2.0", "id": cid, "method": "message.send", "params": {
                "caller_agent_id": author, "content": f"content of {cid}", "client_id": cid}}).encode() + b"\n"
                for cid in batch))
            for _ in batch:
                reply = conn.recv()
                assert "result" in reply, reply
                with acks.lock:
                    acks.acked[reply["id"]] = reply["result"]["message_id"]
                    acks.ack()


def _mixed_writer(t, author, tag, rng, acks: Acks, stop: threading.Event, readable: list[str]) -> None:
    """Edits its own messages, marks others' read, adds roles to its group: one request at a time."""
    with contextlib.suppress(OSError, ConnectionError), RawConn(t.socket, timeout=30) as conn:
        cid = f"{tag}-{author}-own"
        with acks.lock:
            acks.sends[cid] = (author, f"content of {cid}")
        reply = send(conn, author, f"content of {cid}", client_id=cid)
        mid = reply["result"]["message_id"]
        with acks.lock:
            acks.acked[cid] = mid
            acks.edits[mid] = [f"content of {cid}"]
            acks.acked_edit[mid] = 0
        for i in range(MAX_OPS):
            if stop.is_set():
                break
            kind = rng.choice(("edit", "read", "member", "deliver"))
            if kind == "edit":
                text = f"{cid} edit {i}"
                with acks.lock:
                    acks.edits[mid].append(text)
                    index = len(acks.edits[mid]) - 1
                reply = conn.call("message.edit", {"caller_agent_id": author, "message_id": mid, "content": text})
                assert "result" in reply, reply
                with acks.lock:
                    acks.acked_edit[mid] = index
            elif kind == "read":
                target = rng.choice(readable)
                reply = conn.call("message.markRead", {"caller_agent_id": author, "message_ids": [target]})
                assert "result" in reply, reply
                with acks.lock:
                    acks.reads.add((author, target))
            elif kind == "deliver":
                reply = conn.call("message.deliver", {"caller_agent_id": author, "budget": 2000})
                assert "result" in reply, reply
                with acks.lock:
                    acks.delivered += [(author, m["message_id"]) for m in reply["result"]["messages"]]
            else:
                role = f"r_{tag}_{i}"
                reply = conn.call("group.member.add", {"caller_agent_id": author, "group": f"g_{author}",
                                                       "member_type": "role", "member_value": role})
                assert "result" in reply, reply
                with acks.lock:
                    acks.members.add((f"g_{author}", role))
            with acks.lock:
                acks.ack()


def _kill_round(t, rng, tag: str, readable: list[str], authors: list[str], acks: Acks) -> dict:
    """Start 4-8 connections, SIGKILL the daemon after a random delay, wait for them to stop."""
    pid = t.pid()
    stop = threading.Event()
    n = rng.randint(4, 8)
    threads = []
    for k in range(n):
        author = authors[k % len(authors)]
        worker_rng = random.Random(rng.random())
        if k % 3 == 2:
            target, args = _mixed_writer, (t, author, tag, worker_rng, acks, stop, readable)
        else:
            target, args = _pipelined_sender, (t, author, f"{tag}c{k}", worker_rng, acks, stop)
        threads.append(threading.Thread(target=target, args=args, daemon=True))
    for th in threads:
        th.start()
    # Kill after a seeded number of acknowledgements (timing-independent, so a slow
    # machine still kills mid-burst), 1..300.
    kill_after = rng.randint(1, 300)
    wait_for(lambda: acks.count >= kill_after, 60, what=f"{kill_after} acknowledgements")
    os.kill(pid, signal.SIGKILL)
    for th in threads:
        th.join(60 * FACTOR)
        assert not th.is_alive(), "a connection did not notice the kill"
    stop.set()
    wait_for(lambda: not pid_alive(pid), what="the killed daemon to go away")
    return {"connections": n, "kill_after": kill_after}


def _check_after_restart(t, acks: Acks) -> None:
    assert "bad_lines" not in t.call("health"), "a killed write left a line the projection cannot read"
    counts = message_create_counts(t.sync_dir)
    assert set(counts.values()) == {1}, "a message.create line appears twice"
    with t.client() as c:
        for cid, mid in acks.acked.items():
            assert counts[mid] == 1, f"acknowledged {cid} is not in the log exactly once"
            m = c.call("message.get", {"message_id": mid})["message"]
            contents = acks.edits.get(mid, [acks.sends[cid][1]])
            # The last acknowledged edit, or a later one that was in flight at the kill.
            assert m["body"]["content"] in contents[acks.acked_edit.get(mid, 0):], (cid, m["body"])
        assert c.call("message.list", {"page_size": 1})["total"] == len(counts)
        # Nothing unacknowledged shows up broken: every message is one that was sent, whole.
        sent_contents = {content for _, content in acks.sends.values()}
        for _, e in log_events(t.sync_dir):
            if e.get("type") == "message.create":
                assert e["body"]["content"] in sent_contents
    db = t.var / "messages.db"
    reads = set(table_rows(db, "message_reads", exclude=("read_at",)))
    assert acks.reads <= reads, "an acknowledged read marker was lost"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        members = set(conn.execute("SELECT g.name, m.member_value FROM group_members m"
                                   " JOIN groups g ON g.group_id=m.group_id WHERE m.member_type='role'"))
    finally:
        conn.close()
    assert acks.members <= members, "an acknowledged group member was lost"
    assert len(acks.delivered) == len(set(acks.delivered)), "message.deliver handed a message over twice"
    deliveries = set(table_rows(db, "message_deliveries", exclude=("delivered_at", "via")))
    assert set(acks.delivered) <= deliveries, "an acknowledged delivery receipt was lost"


def _retry_in_flight(t, acks: Acks) -> None:
    """Retry every unacknowledged send with its client_id: each ends up in the log once."""
    with t.client() as c:
        for cid, (author, content) in list(acks.sends.items()):
            if cid not in acks.acked:
                acks.acked[cid] = c.call("message.send", {"caller_agent_id": author, "content": content,
                                                          "client_id": cid})["message_id"]
    per_client = Counter(e.get("client_id") for _, e in log_events(t.sync_dir) if e.get("type") == "message.create")
    assert {cid: per_client[cid] for cid in acks.sends} == {cid: 1 for cid in acks.sends}


def test_sigkill_rounds_during_every_kind_of_write(daemon, tmp_path):
    t = daemon
    seed = int(os.environ.get("THRUM_FAULT_SEED") or random.randrange(1 << 30))
    print(f"seed {seed} (set THRUM_FAULT_SEED={seed} to replay)")
    rng = random.Random(seed)
    authors = ["alice", "bob", "carol", "dave"]
    for name in authors:
        register(t, name, "implementer", "core")
    with t.client() as c:
        for name in authors:
            c.call("group.create", {"caller_agent_id": name, "name": f"g_{name}"})
        readable = [c.call("message.send", {"caller_agent_id": "alice", "content": f"readable {i}",
                                          "client_id": f"seed-{i}"})["message_id"]
                    for i in range(5)]
    acks = Acks()
    acks.sends.update({f"seed-{i}": ("alice", f"readable {i}") for i in range(5)})
    acks.acked.update({f"seed-{i}": mid for i, mid in enumerate(readable)})
    rounds = []
    for r in range(ROUNDS):
        acks.count = 0
        rounds.append(_kill_round(t, rng, f"r{r}", readable, authors, acks))
        t.start()
        try:
            _check_after_restart(t, acks)
            if r % 2 == 0:  # every other round, retry what was in flight before the next kill
                _retry_in_flight(t, acks)
        except AssertionError as exc:
            raise AssertionError(f"round {r} {rounds[-1]}, seed {seed}: {exc}") from exc
        assert_projection_equals_a_rebuild(t, tmp_path)
        t.start()
    _retry_in_flight(t, acks)
    print(f"{ROUNDS} kills, {sum(r['connections'] for r in rounds)} connections, {len(acks.acked)} messages")


# -- 2. torn and corrupt tails: of a shard, of events.jsonl, of the journal ---------------------

def _acknowledged_workload(t) -> list[str]:
    with t.client() as c:
        c.call("group.create", {"caller_agent_id": "alice", "name": "crew"})
        return [c.call("message.send", {"caller_agent_id": who, "content": f"kept {i}"})["message_id"]
                for i, who in enumerate(["alice", "bob", "alice", "bob"])]


def _assert_all_there(t, ids: list[str]) -> None:
    counts = message_create_counts(t.sync_dir)
    assert {mid: counts[mid] for mid in ids} == {mid: 1 for mid in ids}
    for i, mid in enumerate(ids):
        assert t.call("message.get", message_id=mid)["message"]["body"]["content"] == f"kept {i}"
    assert "crew" in [g["name"] for g in t.call("group.list")["groups"]]


TORN = b'{"agent_id":"alice","body":{"content":"cut by a cra'
CORRUPT = b'{"type":"message.create","message_id":"msg_x","body":\x00\xff not json}\n'


@pytest.mark.parametrize("where, junk", [
    ("events.jsonl", TORN),
    ("messages/bob.jsonl", TORN),
    ("events.jsonl", CORRUPT),
    ("messages/alice.jsonl", CORRUPT),
    ("messages/alice.jsonl", CORRUPT + TORN),
])
def test_torn_or_corrupt_tail_is_kept_and_reported(agents, where, junk):
    t = agents
    ids = _acknowledged_workload(t)
    t.kill()  # no clean stop: recovery and the tail repair run together
    path = t.sync_dir / where
    good = path.read_bytes()
    with open(path, "ab") as f:
        f.write(junk)
    t.start()
    _assert_all_there(t, ids)
    health = t.call("health")
    torn = junk[junk.rfind(b"\n") + 1:]
    complete = junk[:len(junk) - len(torn)]
    assert path.read_bytes() == good + complete  # a complete line stays where it is
    assert health.get("bad_lines", 0) == (1 if complete else 0)
    quarantine = t.var / "quarantine"
    kept = [q.read_bytes() for q in quarantine.iterdir()] if quarantine.exists() else []
    assert kept == ([torn] if torn else [])
    assert health.get("quarantined", 0) == len(kept)
    # The file ends cleanly: the next line is whole and readable.
    author = "bob" if "bob" in where else "alice"
    mid = t.json("send", "after the repair", name=author)["message_id"]
    assert message_create_counts(t.sync_dir)[mid] == 1
    assert t.call("message.get", message_id=mid)["message"]["body"]["content"] == "after the repair"


def _journal_records_after_kill(t) -> tuple[list[str], list, int]:
    """Send, then SIGKILL before the idle checkpoint; returns the ids and the journal's end."""
    from thrum.store import Journal

    with t.client() as c:
        ids = [c.call("message.send", {"caller_agent_id": "alice", "content": f"kept {i}"})["message_id"]
               for i in range(4)]
        t.kill()
    journal = Journal(str(t.var / "journal"))
    try:
        records = journal.read()
    finally:
        journal.close()
    return ids, records, journal.pos


@pytest.mark.parametrize("damage", ["garbage_after_records", "torn_last_record", "all_garbage"])
def test_damaged_journal_loses_nothing_in_the_files(agents, damage):
    """The process died (not the machine): the files hold every acknowledged line, whatever
    became of the journal. A record that fails its checksum is never replayed."""
    t = agents
    rng = random.Random(damage)
    for _ in range(5):  # the idle checkpoint may empty the journal before the kill: retry
        ids, records, end = _journal_records_after_kill(t)
        if records or damage == "all_garbage":
            break
        t.start()
    else:
        pytest.skip("the journal was always checkpointed before the kill")
    before = {rel: data for rel, data in log_lines(t.sync_dir)}
    journal = t.var / "journal"
    with open(journal, "r+b") as f:
        if damage == "garbage_after_records":
            f.seek(end)
            f.write(rng.randbytes(4096))
        elif damage == "torn_last_record":
            f.seek(end - 7)
            f.write(b"\0" * 7)  # the tail of the last record never reached the disk
        else:
            f.write(rng.randbytes(1 << 16))
    t.start()
    assert {rel: data for rel, data in log_lines(t.sync_dir)} == before
    with t.client() as c:
        for i, mid in enumerate(ids):
            assert c.call("message.get", {"message_id": mid})["message"]["body"]["content"] == f"kept {i}"
    assert set(message_create_counts(t.sync_dir).values()) == {1}
    assert "bad_lines" not in t.call("health")
    t.json("send", "after", name="alice")


# -- 3. a corrupt, outdated or deleted database ----------------------------------------------------

def _snapshot_stop(t) -> tuple[list[str], dict]:
    ids = _acknowledged_workload(t)
    with t.client() as c:
        c.call("message.markRead", {"caller_agent_id": "bob", "message_ids": ids[:2]})
        c.call("message.edit", {"caller_agent_id": "alice", "message_id": ids[0], "content": "kept 0"})
    t.stop()
    return ids, _projection(t.var / "messages.db")


def _damage_db(t, how: str, rng: random.Random) -> None:
    db = t.var / "messages.db"
    if how == "deleted":
        for suffix in ("", "-wal", "-shm"):
            (t.var / f"messages.db{suffix}").unlink(missing_ok=True)
    elif how == "truncated":
        with open(db, "r+b") as f:
            f.truncate(db.stat().st_size // 2)
    elif how == "header":
        with open(db, "r+b") as f:
            f.seek(rng.randrange(0, 100))
            f.write(rng.randbytes(16))
    elif how == "garbage_wal_shm":
        (t.var / "messages.db-wal").write_bytes(rng.randbytes(40000))
        (t.var / "messages.db-shm").write_bytes(rng.randbytes(32768))
    elif how == "zero_pages":
        with open(db, "r+b") as f:
            f.seek(4096)
            f.write(b"\0" * (db.stat().st_size - 4096))


@pytest.mark.parametrize("how", ["deleted", "truncated", "header", "garbage_wal_shm", "zero_pages"])
def test_damaged_database_is_rebuilt_with_the_same_content(daemon, tmp_path, how):
    t = daemon
    register(t, "alice", "implementer", "auth")
    register(t, "bob", "reviewer", "auth")
    ids, snapshot = _snapshot_stop(t)
    _damage_db(t, how, random.Random(how))
    t.start()
    _assert_all_there(t, ids)
    t.stop()
    after = _projection(t.var / "messages.db")
    for table in PROJECTION_TABLES:
        assert after[table] == snapshot[table], f"table {table} differs after the {how} database was replaced"


def test_garbage_wal_after_a_crash_is_caught_up_from_the_log(agents):
    """SIGKILL leaves committed transactions in the WAL only; garbage in their place means an
    older database, and the lines past its recorded offsets are applied again."""
    t = agents
    ids = _acknowledged_workload(t)
    t.kill()
    wal = t.var / "messages.db-wal"
    wal.write_bytes(random.Random(7).randbytes(max(wal.stat().st_size, 4096)))
    t.start()
    _assert_all_there(t, ids)


def test_database_deleted_under_the_running_daemon(agents, tmp_path):
    t = agents
    ids = _acknowledged_workload(t)
    for suffix in ("", "-wal", "-shm"):
        (t.var / f"messages.db{suffix}").unlink(missing_ok=True)
    # The daemon keeps its open (now nameless) database; writes are still logged first.
    with t.client() as c:
        later = c.call("message.send", {"caller_agent_id": "bob", "content": "kept 4"})["message_id"]
    t.stop()
    assert not (t.var / "messages.db").exists()
    t.start()
    _assert_all_there(t, ids + [later])
    assert "rebuilding the projection" in (t.var / "daemon.log").read_text()
    assert_projection_equals_a_rebuild(t, tmp_path)


# -- 4. a full disk and a read-only .thrum -----------------------------------------------------

BIG = "y" * 30000  # crosses page boundaries: a full tmpfs cannot absorb it in a file's last page


def _setup_two_agents(t) -> None:
    t.start()
    t.quickstart("alice", "implementer", "core")
    t.quickstart("bob", "reviewer", "core")
    t.stop()


def _file_bytes(sync_dir: Path) -> dict:
    return {str(p.relative_to(sync_dir)): p.read_bytes() for p in sorted(sync_dir.rglob("*.jsonl"))}


def _assert_refused_without_trace(t, reason: str) -> int:
    """Sends (one at a time, pipelined and from the CLI) all fail with -32006 naming the reason,
    and leave every log file byte-for-byte as it was and the projection unchanged."""
    before = _file_bytes(t.sync_dir)
    total = t.call("message.list", page_size=1)["total"]
    with RawConn(t.socket) as c:
        reply = send(c, "alice", BIG, client_id="refused-1")
        assert reply["error"]["code"] == -32006, reply
        assert reason in reply["error"]["message"], reply
        c.send(b"".join(json.dumps({"jsonrpc": "2.0", "id": i, "method": "message.send", "params": {
            "caller_agent_id": who, "content": BIG}}).encode() + b"\n" for i, who in enumerate(["alice", "bob"] * 3)))
        replies = [c.recv() for _ in range(6)]
        assert [r.get("error", {}).get("code") for r in replies] == [-32006] * 6, replies
    proc = t.run("send", BIG, name="bob", check=False)
    assert proc.returncode != 0 and reason in proc.stderr, (proc.returncode, proc.stderr)
    assert _file_bytes(t.sync_dir) == before, "a refused write left bytes in the log"
    assert t.call("message.list", page_size=1)["total"] == total
    return 8


def _assert_clean_restart(t, tmp_path, acked: list[str]) -> None:
    t.stop()
    t.start()
    health = t.call("health")
    assert "bad_lines" not in health and "quarantined" not in health, health
    counts = message_create_counts(t.sync_dir)
    assert {mid: counts[mid] for mid in acked} == {mid: 1 for mid in acked}
    assert set(counts.values()) == {1}
    assert t.call("message.list", page_size=1)["total"] == len(counts)
    assert_projection_equals_a_rebuild(t, tmp_path)


def test_full_disk_under_the_log_refuses_writes_and_leaves_no_trace(thrum, tmp_path):
    t = thrum
    _setup_two_agents(t)
    with tmpfs_over(t.sync_dir, "2m"):
        try:
            t.start()
            acked = [t.call("message.send", caller_agent_id="alice", content="before")["message_id"]]
            filler = fill(t.sync_dir)
            faults = _assert_refused_without_trace(t, "No space left on device")
            filler.unlink()
            acked += [t.call("message.send", caller_agent_id=who, content=BIG, client_id=f"ok-{who}")["message_id"]
                      for who in ("alice", "bob")]
            _assert_clean_restart(t, tmp_path, acked)
            print(f"{faults} writes refused on a full disk")
        finally:
            t.kill()


def _bind(target: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    proc = subprocess.run(["mount", "--bind", str(target), str(target)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {proc.stderr.strip()}")


def _bind_mode(target: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,bind,{mode}", str(target)], check=True, capture_output=True)


def test_read_only_log_while_running_and_at_start(thrum, tmp_path):
    """chmod does not stop root: a read-only bind mount does. The daemon opens a log file
    for writing only on its first write, so the remount succeeds while it runs."""
    t = thrum
    _setup_two_agents(t)
    _bind(t.sync_dir)
    try:
        t.start()
        _bind_mode(t.sync_dir, "ro")
        faults = _assert_refused_without_trace(t, "Read-only file system")
        _bind_mode(t.sync_dir, "rw")
        acked = [t.call("message.send", caller_agent_id="alice", content="writable again")["message_id"]]
        t.stop()
        _bind_mode(t.sync_dir, "ro")
        proc = t.run("daemon", "start", check=False)
        assert proc.returncode == 1, proc
        assert "Read-only file system" in proc.stderr and str(t.sync_dir) in proc.stderr, proc.stderr
        faults += 1
        _bind_mode(t.sync_dir, "rw")
    finally:
        t.kill()
        _umount(t.sync_dir)
    _assert_clean_restart(t, tmp_path, acked)
    print(f"{faults} writes and starts refused on a read-only log")


def test_read_only_var_at_start_names_the_path(thrum):
    t = thrum
    _setup_two_agents(t)
    _bind(t.var)
    try:
        _bind_mode(t.var, "ro")
        proc = t.run("daemon", "start", check=False)
        assert proc.returncode == 1
        assert "Read-only file system" in proc.stderr and str(t.var) in proc.stderr, proc.stderr
        assert "unexpected error" not in proc.stderr
    finally:
        t.kill()
        _umount(t.var)
    t.start()
    assert {a["agent_id"] for a in t.call("agent.list")["agents"]} >= {"alice", "bob"}
    t.stop()


# -- 7. several daemons started at once for one repository ---------------------------------------

START_RACE = [("daemon", "start")] * 6 + [("daemon", "run"), ("daemon", "start", "--foreground")]


def _launch_race(t, barrier_file: Path) -> list[subprocess.Popen]:
    """Start every contender at (nearly) the same moment: each waits for one file to appear."""
    wait = ("import os, runpy, sys, time\n"
            "for _ in range(20000):\n"
            f"    if os.path.exists({str(barrier_file)!r}): break\n"
            "    time.sleep(0.0005)\n"
            "sys.argv = ['thrum'] + sys.argv[1:]\n"
            "runpy.run_module('thrum', run_name='__main__')\n")
    return [subprocess.Popen([sys.executable, "-c", wait, *argv], cwd=t.repo, env=t.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for argv in START_RACE]


def _health_pid(t) -> int | None:
    try:
        return t.call("health")["pid"]
    except Exception:  # not listening yet, or a dead daemon's socket
        return None


@pytest.mark.parametrize("previous", ["fresh", "after_sigkill"])
def test_daemons_started_at_once_one_wins_the_others_name_it(thrum, tmp_path, previous):
    t = thrum
    if previous == "after_sigkill":  # a stale pid file and socket from a dead daemon
        t.start()
        t.kill()
    barrier = tmp_path / "go"
    procs = _launch_race(t, barrier)
    try:
        barrier.touch()
        done = {}
        def finished(indices):
            for i in indices:
                if i not in done and procs[i].poll() is not None:
                    done[i] = (procs[i].returncode, *procs[i].communicate())
            return all(i in done for i in indices)
        # Background starts return once they succeed or fail; a foreground winner keeps running.
        background = [i for i, argv in enumerate(START_RACE) if argv == ("daemon", "start")]
        wait_for(lambda: finished(background), 60, what="every background start to return")
        winner = wait_for(lambda: _health_pid(t), 30, what="the winner to answer")
        losers = [i for i in range(len(procs)) if procs[i].pid != winner]
        wait_for(lambda: finished(losers), 60, what="every foreground loser to exit")
        assert t.pid() == winner and pid_alive(winner)
        winners = [i for i, (code, _, _) in done.items() if code == 0]
        foreground = [i for i in range(len(procs)) if i not in done]
        assert len(winners) + len(foreground) == 1, (winners, foreground, done)
        if foreground:
            assert procs[foreground[0]].pid == winner
        for i, (code, out, err) in done.items():
            if code == 0:
                assert str(winner) in out + err, (START_RACE[i], out, err)
                continue
            assert code == 1, (START_RACE[i], code, err)
            assert "already running" in err and f"PID {winner}" in err, (START_RACE[i], err)
        # The winner keeps serving and owns the lock, the pid file and the socket.
        from thrum.daemon import lock_is_held
        from thrum.paths import resolve

        assert lock_is_held(resolve(str(t.repo)))
        t.quickstart("alice")
        assert t.call("health")["pid"] == winner
        print(f"{len(procs) - 1} contenders refused")
    finally:
        t.stop()
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()


# -- 6. git failing mid-sync: a hanging fetch, a dying upload-pack, a push killed half-way --------

NETWORK_TIMEOUT = 3  # seconds the daemon gives a fetch or push here (THRUM_GIT_NETWORK_TIMEOUT)


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def _failing_round(t, label: str, reason: str = "") -> None:
    """A forced round fails with an error (never hangs), and the daemon answers afterwards."""
    proc = t.run("sync", "force", "--json", check=False, timeout=60)
    assert proc.returncode == 1, (label, proc.stdout, proc.stderr)
    status = t.json("sync", "status")
    assert status["sync_state"] == "error", label
    assert reason in status.get("last_error", ""), (label, status)
    assert t.call("health")["status"] == "ok"


def test_git_failing_mid_sync_loses_nothing(tmp_path, clones, sync_env):
    env_a = dict(sync_env, THRUM_GIT_NETWORK_TIMEOUT=str(NETWORK_TIMEOUT * FACTOR))
    a, b = clones.pair(env_a)
    sent = set()
    upload_pack_faults = {
        # A remote that never answers: the daemon's timeout must kill git and its children.
        "hanging fetch": _script(tmp_path / "hang.sh", "sleep 30\n"),
        # A remote that dies after half a packet line.
        "dying upload-pack": _script(tmp_path / "die.sh", "printf '0032want'\nexit 1\n"),
    }
    for label, script in upload_pack_faults.items():
        sent |= {a.json("send", f"{label} {i}", name="alice")["message_id"] for i in range(3)}
        sent |= {b.json("send", f"{label} b{i}", name="bob")["message_id"] for i in range(2)}
        subprocess.run(["git", "-C", str(a.repo), "config", "remote.origin.uploadpack", str(script)], check=True,
                       env=sync_env)
        try:
            _failing_round(a, label, "timed out" if "hanging" in label else "")
        finally:
            subprocess.run(["git", "-C", str(a.repo), "config", "--unset", "remote.origin.uploadpack"], check=True,
                           env=sync_env)
        force(b)
    # The fetch works, the push hangs (a receive-pack that never advertises its refs).
    subprocess.run(["git", "-C", str(a.repo), "config", "remote.origin.receivepack",
                    str(_script(tmp_path / "recv.sh", "sleep 30\n"))], check=True, env=sync_env)
    sent |= {a.json("send", f"push hangs {i}", name="alice")["message_id"] for i in range(3)}
    try:
        _failing_round(a, "push hangs", "timed out")
    finally:
        subprocess.run(["git", "-C", str(a.repo), "config", "--unset", "remote.origin.receivepack"], check=True,
                       env=sync_env)
    # The remote receives the whole pack, then a hook refuses it.
    hook = _script(clones.remote / "hooks" / "pre-receive", "cat >/dev/null\necho refused by policy >&2\nexit 1\n")
    sent |= {a.json("send", f"push refused {i}", name="alice")["message_id"] for i in range(3)}
    try:
        _failing_round(a, "push refused by a hook")
    finally:
        hook.unlink()
    # Healed: rounds on both sides converge, every message in both clones, once.
    for t in (a, b, a, b):
        assert force(t)["ok"]
    for t in (a, b):
        assert sent <= message_ids(t)
        assert set(event_id_counts(t).values()) == {1}
    assert message_ids(a) == message_ids(b)
    assert a.json("sync", "status")["sync_state"] == "synced"
    print("4 git faults injected (hanging fetch, dying upload-pack, hanging push, refused push)")
