"""The event log (JSONL shards in the sync worktree) and its SQLite projection.

Write path, per batch of requests (group commit)::

    validate -> stage lines + apply to SQLite inside one open transaction
             -> append the lines to their log files (page cache)
             -> write them to the journal and fdatasync it (the one sync per batch)
             -> COMMIT the SQLite transaction -> answer the callers

The journal (`var/journal`, preallocated) holds every line written since the last
checkpoint, with the offset its file had before. A checkpoint (when idle, when the
journal fills, at shutdown) fsyncs the log files and empties the journal. After a
power loss, `recover` cuts each file back to where the journal says it was durable
and writes the journaled lines again: one fdatasync per batch, however many files
the batch touched, and the files end exactly as acknowledged.

The log is the truth. If the process dies after the fsync but before the COMMIT,
the next start finds the lines past the recorded offsets and applies them
(`catch_up`); the `applied` ledger makes every applier idempotent. If writing the
log fails (disk full, read-only), the files are truncated back, the transaction
is rolled back and every write in the batch gets a StorageError: nothing
half-written survives.

The projection is disposable: a missing, corrupt or older-schema database is
rebuilt from the log into a temp file that is then renamed into place. State that
is deliberately not in the log (heartbeat `last_seen_at`) is documented in
docs/guarantees.md and is lost by a rebuild.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import struct
import threading
import zlib
from itertools import chain

from thrum.events import (
    MAX_LINE_BYTES, EventError, decode_event, decode_line, encode_line, format_ns, new_id, now_ns, order_key,
    parse_timestamp_ns, shard_for,
)
from thrum.logreader import LogReader, bad_line

__all__ = ["EventLog", "Journal", "Store", "StorageFailure", "SCHEMA_VERSION", "EVENTS_FILE", "MESSAGES_DIR"]

log = logging.getLogger("thrum.store")

SCHEMA_VERSION = 3
EVENTS_FILE = "events.jsonl"
MESSAGES_DIR = "messages"
_TAIL = 32  # bytes of a file's end remembered to notice a file replaced under us
CATCH_UP_BYTES = 2 << 20  # log read and applied at a time by a catch-up (~2,500 events)
# A WAL past this size (a large sync merge's single COMMIT writes ~200 MiB at a million messages) is
# checkpointed by a thread on a connection of its own: copying it takes seconds, which the loop would
# otherwise spend not serving. The WAL file is cut back to this size once it restarts.
BACKGROUND_CHECKPOINT_BYTES = 16 << 20


class StorageFailure(Exception):
    """The log could not be written; nothing of the batch was kept."""


# -- the journal ----------------------------------------------------------------

class Journal:
    """A preallocated write-ahead file: records of (file, offset before, lines).

    Record: magic, generation, payload length, crc32, payload. The payload is a
    sequence of (path length, path, offset, data length, data). Writing with pwrite
    inside the preallocated size keeps the file's size fixed, so fdatasync has no
    metadata to flush. A checkpoint bumps the generation and starts again at 0;
    reading stops at the first record that is torn or of another generation.
    """

    MAGIC = b"THJ1"
    HEADER = struct.Struct("<4sQII")
    ENTRY = struct.Struct("<HQI")
    SIZE = 8 * 1024 * 1024

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        self.generation = 1
        self.pos = 0

    def open(self) -> None:
        if self.fd is not None:
            return
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        size = os.fstat(self.fd).st_size
        if size < self.SIZE:
            # Real zeros, not fallocate: ext4 marks fallocated blocks "unwritten", and
            # converting them on each write would cost a metadata commit per fdatasync.
            chunk = b"\0" * (1 << 20)
            while size < self.SIZE:
                size += os.pwrite(self.fd, chunk[:self.SIZE - size], size)
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def read(self) -> list[list[tuple[str, int, bytes]]]:
        """The records of the current generation, in order; sets the write position after them."""
        self.open()
        out = []
        pos = 0
        generation = None
        size = os.fstat(self.fd).st_size
        while pos + self.HEADER.size <= size:
            magic, gen, length, crc = self.HEADER.unpack(os.pread(self.fd, self.HEADER.size, pos))
            if magic != self.MAGIC or (generation is not None and gen != generation):
                break
            payload = os.pread(self.fd, length, pos + self.HEADER.size)
            if len(payload) != length or zlib.crc32(payload) != crc:
                break
            generation = gen
            out.append(self._decode(payload))
            pos += self.HEADER.size + length
        self.generation = (generation or self.generation)
        self.pos = pos
        return out

    def _decode(self, payload: bytes) -> list[tuple[str, int, bytes]]:
        entries = []
        i = 0
        while i < len(payload):
            plen, offset, dlen = self.ENTRY.unpack_from(payload, i)
            i += self.ENTRY.size
            rel = payload[i:i + plen].decode()
            i += plen
            entries.append((rel, offset, payload[i:i + dlen]))
            i += dlen
        return entries

    def fits(self, nbytes: int) -> bool:
        return self.pos + self.HEADER.size + nbytes <= self.SIZE

    def append(self, entries: list[tuple[str, int, bytes]]) -> None:
        """Write one record and fdatasync it. The caller checked `fits` (or checkpointed)."""
        self.open()
        parts = []
        for rel, offset, data in entries:
            path = rel.encode()
            parts += [self.ENTRY.pack(len(path), offset, len(data)), path, data]
        payload = b"".join(parts)
        record = self.HEADER.pack(self.MAGIC, self.generation, len(payload), zlib.crc32(payload)) + payload
        written = os.pwrite(self.fd, record, self.pos)
        if written != len(record):
            raise OSError(28, "short write to the journal")
        os.fdatasync(self.fd)
        self.pos += len(record)

    def reset(self) -> None:
        """Forget every record: the files they describe are durable now."""
        self.open()
        self.generation += 1
        os.pwrite(self.fd, b"\0" * self.HEADER.size, 0)
        os.fdatasync(self.fd)
        self.pos = 0


# -- the log ------------------------------------------------------------------

class EventLog:
    """Append-only JSONL files under `root` (events.jsonl and messages/<author>.jsonl)."""

    def __init__(self, root: str, quarantine_dir: str, journal_path: str | None = None) -> None:
        self.root = root
        self.quarantine_dir = quarantine_dir
        self.journal = Journal(journal_path) if journal_path else None
        self._fds: dict[str, int] = {}
        self._sizes: dict[str, int] = {}
        self._staged: list[tuple[str, bytes]] = []
        self._dirty: set[str] = set()  # written since the last checkpoint, not yet fsynced

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def files(self) -> list[str]:
        out = []
        if os.path.exists(self.path(EVENTS_FILE)):
            out.append(EVENTS_FILE)
        try:
            names = os.listdir(self.path(MESSAGES_DIR))
        except FileNotFoundError:
            names = []
        out.extend(f"{MESSAGES_DIR}/{n}" for n in sorted(names) if n.endswith(".jsonl"))
        return out

    def size(self, rel: str) -> int:
        if rel in self._sizes:
            return self._sizes[rel]
        try:
            return os.stat(self.path(rel)).st_size
        except FileNotFoundError:
            return 0

    def _fd(self, rel: str) -> int:
        fd = self._fds.get(rel)
        if fd is None:
            full = self.path(rel)
            parent = os.path.dirname(full)
            created_dir = not os.path.isdir(parent)
            if created_dir:
                os.makedirs(parent, exist_ok=True)
            existed = os.path.exists(full)
            fd = os.open(full, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
            if not existed:  # the new name must survive a crash too
                _fsync_dir(parent)
                if created_dir:
                    _fsync_dir(os.path.dirname(parent))
            self._fds[rel] = fd
            self._sizes[rel] = os.fstat(fd).st_size
        return fd

    def forget_sizes(self) -> None:
        """Re-stat files on the next write (someone else appended to them)."""
        self.close()

    def close(self) -> None:
        self.checkpoint()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._sizes.clear()
        if self.journal is not None:
            self.journal.close()

    def checkpoint(self) -> None:
        """Make every written line durable in its own file and empty the journal."""
        if not self._dirty:
            return
        for rel in sorted(self._dirty):
            fd = self._fds.get(rel)
            if fd is not None:
                os.fsync(fd)
        self._dirty.clear()
        if self.journal is not None:
            self.journal.reset()

    def recover(self) -> int:
        """Redo what the journal holds (after a crash): returns how many files were repaired."""
        if self.journal is None:
            return 0
        records = self.journal.read()
        if not records:
            return 0
        first: dict[str, int] = {}
        data: dict[str, list[bytes]] = {}
        for entries in records:
            for rel, offset, chunk in entries:
                first.setdefault(rel, offset)
                data.setdefault(rel, []).append(chunk)
        for rel, offset in first.items():
            full = self.path(rel)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            fd = os.open(full, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size < offset:
                    # Someone cut the file below its durable size: keep what is there and
                    # add only the journaled lines it lacks.
                    present = _event_ids(os.pread(fd, size, 0))
                    chunks = [ln + b"\n" for c in data[rel] for ln in c.splitlines()
                              if _event_id_of(ln) not in present]
                    os.lseek(fd, size, os.SEEK_SET)
                else:
                    tail = os.pread(fd, size - offset, offset)
                    journaled = b"".join(data[rel])
                    if tail.startswith(journaled):
                        # The lines are there (the process died, not the machine): nothing to
                        # redo, and whatever another writer appended since stays.
                        chunks = []
                    else:
                        # Past its durable size the file is not what was acknowledged (power
                        # loss): redo the journaled lines, keep a copy of what was there, and
                        # keep other writers' complete events after them.
                        if tail:
                            self.quarantine(rel, tail, "recovered")
                        ids = _event_ids(journaled) | {None}
                        chunks = data[rel] + [ln + b"\n" for ln in tail.split(b"\n")[:-1]
                                              if _event_id_of(ln) not in ids]
                        os.ftruncate(fd, offset)
                os.lseek(fd, 0, os.SEEK_END)
                os.write(fd, b"".join(chunks))
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(os.path.dirname(full))
        self.journal.reset()
        log.warning("recovered %d log file(s) from the journal after an unclean stop", len(first))
        return len(first)

    # staging and flushing

    def stage(self, rel: str, line: bytes) -> None:
        self._staged.append((rel, line))

    def mark(self) -> int:
        return len(self._staged)

    def discard(self, mark: int = 0) -> None:
        del self._staged[mark:]

    def flush(self) -> dict[str, tuple[int, bytes]]:
        """Write and fsync every staged line; return {rel: (new size, tail bytes)}.

        On failure every touched file is truncated back to its previous size and
        StorageFailure is raised, so a failed batch leaves no partial line behind.
        """
        if not self._staged:
            return {}
        by_file: dict[str, list[bytes]] = {}
        for rel, line in self._staged:
            by_file.setdefault(rel, []).append(line)
        self._staged = []
        before: dict[str, int] = {}
        entries: list[tuple[str, int, bytes]] = []
        new_files = [rel for rel in by_file if rel not in self._fds and not os.path.exists(self.path(rel))]
        try:
            for rel, lines in by_file.items():
                fd = self._fd(rel)
                before[rel] = self._sizes[rel]
                data = b"".join(lines)
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                self._sizes[rel] = before[rel] + len(data)
                entries.append((rel, before[rel], data))
            if self.journal is None:
                for rel in by_file:
                    os.fsync(self._fds[rel])
            else:
                if not self.journal.fits(sum(len(d) + len(r) + 16 for r, _, d in entries)):
                    self._dirty.update(by_file)  # make room: sync everything so far, then journal
                    self.checkpoint()
                self.journal.append(entries)
                self._dirty.update(by_file)
        except OSError as exc:
            for rel, size in before.items():
                try:
                    os.ftruncate(self._fds[rel], size)
                    self._sizes[rel] = size
                except OSError:
                    self.close()  # sizes unknown now: reopen and re-stat on the next write
                    break
            self._remove_empty(new_files)
            raise StorageFailure(f"cannot write the event log: {exc.strerror or exc}") from None
        return {rel: (self._sizes[rel], lines[-1][-_TAIL:]) for rel, lines in by_file.items()}

    def _remove_empty(self, rels: list[str]) -> None:
        """Unlink files a failed flush created and left empty: a refused write leaves no trace."""
        for rel in rels:
            fd = self._fds.pop(rel, None)
            self._sizes.pop(rel, None)
            if fd is not None:
                os.close(fd)
            try:
                if os.stat(self.path(rel)).st_size == 0:
                    os.unlink(self.path(rel))
            except OSError:
                pass

    # reading

    def read_from(self, rel: str, offset: int, limit: int = -1) -> tuple[list[tuple[bytes, int]], int]:
        """Complete lines from `offset` (about `limit` bytes of them, if given): [(line, end offset)],
        and where reading stopped."""
        try:
            with open(self.path(rel), "rb") as f:
                f.seek(offset)
                data = f.read(limit)
                if limit > 0 and len(data) == limit and b"\n" not in data:
                    data += f.read()  # one line longer than the limit (not ours): take it whole
        except FileNotFoundError:
            return [], offset
        out = []
        pos = 0
        while True:
            nl = data.find(b"\n", pos)
            if nl < 0:
                break
            out.append((data[pos:nl], offset + nl + 1))
            pos = nl + 1
        return out, offset + pos

    def tail_matches(self, rel: str, offset: int, tail: bytes) -> bool:
        if offset == 0:
            return True
        try:
            with open(self.path(rel), "rb") as f:
                f.seek(max(0, offset - len(tail)))
                return f.read(len(tail)) == tail
        except OSError:
            return False

    def repair_torn_tails(self) -> list[str]:
        """Move a last line without its newline (a write cut by a crash) to quarantine.

        Such a line was never acknowledged (we fsync before answering), but left in
        place it would glue itself to the next append.
        """
        repaired = []
        for rel in self.files():
            with open(self.path(rel), "rb+") as f:
                size = f.seek(0, os.SEEK_END)
                if size == 0:
                    continue
                f.seek(size - 1)
                if f.read(1) == b"\n":
                    continue
                chunk = min(size, 1 << 20)
                f.seek(size - chunk)
                data = f.read(chunk)
                nl = data.rfind(b"\n")
                cut = size - chunk + nl + 1 if nl >= 0 else 0
                f.seek(cut)
                torn = f.read()
                where = self.quarantine(rel, torn, "torn")
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())
            repaired.append(rel)
            log.warning("moved a torn last line of %s (%d bytes) to %s", rel, len(torn), where)
        return repaired

    def quarantine(self, rel: str, data: bytes, kind: str) -> str:
        os.makedirs(self.quarantine_dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.quarantine_dir, f"{rel.replace('/', '__')}.{now_ns()}.{kind}")
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return path


def _event_id_of(line: bytes) -> str | None:
    try:
        return decode_line(line).get("event_id")
    except EventError:
        return None


def _event_ids(data: bytes) -> set:
    return {_event_id_of(line) for line in data.splitlines() if line.strip()}


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the projection --------------------------------------------------------------

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE applied (event_id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE log_files (path TEXT PRIMARY KEY, offset INTEGER NOT NULL, tail BLOB NOT NULL);
CREATE TABLE bad_lines (path TEXT NOT NULL, offset INTEGER NOT NULL, error TEXT NOT NULL,
    sample TEXT NOT NULL, PRIMARY KEY (path, offset));
CREATE TABLE agents (
    agent_id TEXT PRIMARY KEY, kind TEXT NOT NULL DEFAULT 'agent', name TEXT NOT NULL DEFAULT '',
    role TEXT NOT NULL DEFAULT '', module TEXT NOT NULL DEFAULT '', display TEXT NOT NULL DEFAULT '',
    hostname TEXT NOT NULL DEFAULT '', worktree TEXT NOT NULL DEFAULT '',
    registered_at TEXT NOT NULL, registered_ns INTEGER NOT NULL,
    last_seen_at TEXT NOT NULL DEFAULT '', origin_daemon TEXT NOT NULL DEFAULT '');
CREATE INDEX agents_role ON agents(role);
CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, started_at TEXT NOT NULL,
    started_ns INTEGER NOT NULL, ended_at TEXT NOT NULL DEFAULT '', end_reason TEXT NOT NULL DEFAULT '',
    last_seen_at TEXT NOT NULL DEFAULT '', origin_daemon TEXT NOT NULL DEFAULT '');
CREATE INDEX sessions_agent ON sessions(agent_id, started_ns);
CREATE TABLE work_contexts (
    session_id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, branch TEXT NOT NULL DEFAULT '',
    worktree_path TEXT NOT NULL DEFAULT '', unmerged_commits TEXT NOT NULL DEFAULT '[]',
    uncommitted_files TEXT NOT NULL DEFAULT '[]', changed_files TEXT NOT NULL DEFAULT '[]',
    file_changes TEXT NOT NULL DEFAULT '[]', git_updated_at TEXT NOT NULL DEFAULT '',
    current_task TEXT NOT NULL DEFAULT '', task_updated_at TEXT NOT NULL DEFAULT '',
    intent TEXT NOT NULL DEFAULT '', intent_updated_at TEXT NOT NULL DEFAULT '');
CREATE INDEX work_contexts_agent ON work_contexts(agent_id);
CREATE TABLE messages (
    message_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL DEFAULT '', reply_to TEXT NOT NULL DEFAULT '',
    agent_id TEXT NOT NULL, session_id TEXT NOT NULL DEFAULT '', created_at TEXT NOT NULL,
    created_ns INTEGER NOT NULL, updated_at TEXT NOT NULL DEFAULT '', format TEXT NOT NULL DEFAULT 'markdown',
    content TEXT NOT NULL DEFAULT '', structured TEXT, priority TEXT NOT NULL DEFAULT 'normal',
    deleted INTEGER NOT NULL DEFAULT 0, deleted_at TEXT NOT NULL DEFAULT '', delete_reason TEXT NOT NULL DEFAULT '',
    authored_by TEXT NOT NULL DEFAULT '', disclosed INTEGER NOT NULL DEFAULT 0,
    broadcast INTEGER NOT NULL DEFAULT 1, edits INTEGER NOT NULL DEFAULT 0, client_id TEXT NOT NULL DEFAULT '',
    keyset INTEGER NOT NULL DEFAULT 0);
CREATE INDEX messages_created ON messages(created_ns);
CREATE INDEX messages_audience ON messages(broadcast, deleted, agent_id, message_id);
CREATE INDEX messages_agent ON messages(agent_id, created_ns);
CREATE INDEX messages_reply ON messages(reply_to) WHERE reply_to != '';
CREATE INDEX messages_thread ON messages(thread_id) WHERE thread_id != '';
CREATE INDEX messages_client ON messages(agent_id, client_id) WHERE client_id != '';
CREATE TABLE message_scopes (message_id TEXT NOT NULL, type TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (message_id, type, value)) WITHOUT ROWID;
CREATE INDEX message_scopes_tv ON message_scopes(type, value);
CREATE TABLE message_refs (message_id TEXT NOT NULL, type TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (message_id, type, value)) WITHOUT ROWID;
CREATE INDEX message_refs_tv ON message_refs(type, value);
CREATE TABLE message_reads (agent_id TEXT NOT NULL, message_id TEXT NOT NULL, read_at TEXT NOT NULL,
    PRIMARY KEY (agent_id, message_id)) WITHOUT ROWID;
CREATE INDEX message_reads_message ON message_reads(message_id);
CREATE TABLE message_edits (event_id TEXT PRIMARY KEY, message_id TEXT NOT NULL, edited_at TEXT NOT NULL,
    edited_by TEXT NOT NULL DEFAULT '', old_content TEXT, new_content TEXT);
CREATE INDEX message_edits_message ON message_edits(message_id);
CREATE TABLE groups (
    group_id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL, created_ns INTEGER NOT NULL, created_by TEXT NOT NULL DEFAULT '',
    event_id TEXT NOT NULL DEFAULT '', deleted INTEGER NOT NULL DEFAULT 0);
CREATE INDEX groups_name ON groups(name);
CREATE TABLE group_members (group_id TEXT NOT NULL, member_type TEXT NOT NULL, member_value TEXT NOT NULL,
    added_at TEXT NOT NULL, added_by TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (group_id, member_type, member_value)) WITHOUT ROWID;
CREATE INDEX group_members_tv ON group_members(member_type, member_value);
CREATE TABLE counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE keysets (keyset_id INTEGER PRIMARY KEY, keys TEXT NOT NULL UNIQUE);
CREATE TABLE keyset_keys (key TEXT NOT NULL, keyset_id INTEGER NOT NULL, PRIMARY KEY (key, keyset_id)) WITHOUT ROWID;
CREATE TABLE message_audience (key TEXT NOT NULL, created_ns INTEGER NOT NULL, seq INTEGER NOT NULL,
    author TEXT NOT NULL, PRIMARY KEY (key, created_ns, seq)) WITHOUT ROWID;
CREATE TABLE audience_counts (keyset_id INTEGER NOT NULL, author TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (keyset_id, author)) WITHOUT ROWID;
CREATE TABLE reader_counts (agent_id TEXT NOT NULL, keyset_id INTEGER NOT NULL, own INTEGER NOT NULL,
    n INTEGER NOT NULL, PRIMARY KEY (agent_id, keyset_id, own)) WITHOUT ROWID;
CREATE TABLE scope_counts (key TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE scope_reads (agent_id TEXT NOT NULL, key TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (agent_id, key)) WITHOUT ROWID;
CREATE TABLE unread_index (agent_id TEXT NOT NULL, created_ns INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (agent_id, created_ns, seq)) WITHOUT ROWID;
CREATE TABLE unread_ready (agent_id TEXT PRIMARY KEY, keys TEXT NOT NULL) WITHOUT ROWID;
"""

# Derived state a rebuild computes in bulk after loading the events (the appliers maintain it
# one event at a time otherwise). Every message that is not deleted has one row in
# message_audience per key it is addressed by (`@name` mention, `#group`, `*` broadcast) and per
# scope (`~type:value`); the counters let unread and total counts skip the messages themselves.
# A covering index, dropped at the end, spares the joins the wide message rows (at 1,000,000
# messages they are 1.5 GB of content); per-reader counts are upserts into their small tables rather
# than a GROUP BY that would sort millions of read markers. Per-scope reads are counted without
# looking each message up (then the reads of the few deleted messages are taken off): 1.7 -> 1.3 s
# at 1M. The audience index is inserted in key order: its pages come out full and in sequence,
# which inbox pages read (unordered, 20% faster to build, but an inbox page at 1M took 4.4 ms
# instead of 2.4).
_DERIVE_SQL = """
CREATE INDEX rebuild_messages_cover ON messages(message_id, deleted, keyset, agent_id, created_ns, broadcast);
INSERT INTO message_audience SELECT key, created_ns, seq, author FROM (
    SELECT '@' || r.value AS key, m.created_ns AS created_ns, m.rowid AS seq, m.agent_id AS author
        FROM message_refs r JOIN messages m INDEXED BY rebuild_messages_cover
        ON m.message_id = r.message_id AND m.deleted = 0 WHERE r.type = 'mention'
    UNION ALL SELECT CASE s.type WHEN 'group' THEN '#' || s.value ELSE '~' || s.type || ':' || s.value END,
        m.created_ns, m.rowid, m.agent_id
        FROM message_scopes s JOIN messages m INDEXED BY rebuild_messages_cover
        ON m.message_id = s.message_id AND m.deleted = 0
    UNION ALL SELECT '*', created_ns, rowid, agent_id FROM messages WHERE broadcast = 1 AND deleted = 0)
    ORDER BY 1, 2, 3;
INSERT INTO audience_counts SELECT keyset, agent_id, COUNT(*) FROM messages INDEXED BY rebuild_messages_cover
    WHERE deleted = 0 GROUP BY 1, 2;
INSERT INTO reader_counts SELECT r.agent_id, m.keyset, m.agent_id = r.agent_id, 1
    FROM messages m INDEXED BY rebuild_messages_cover CROSS JOIN message_reads r ON r.message_id = m.message_id
    WHERE m.deleted = 0 ON CONFLICT(agent_id, keyset_id, own) DO UPDATE SET n = n + 1;
INSERT INTO scope_counts SELECT key, COUNT(*) FROM message_audience WHERE key > '~' AND key < '~~' GROUP BY 1;
INSERT INTO scope_reads SELECT r.agent_id, '~' || s.type || ':' || s.value, COUNT(*)
    FROM message_scopes s CROSS JOIN message_reads r ON r.message_id = s.message_id
    WHERE s.type != 'group' GROUP BY s.type, s.value, r.agent_id;
INSERT INTO scope_reads SELECT r.agent_id, '~' || s.type || ':' || s.value, -COUNT(*)
    FROM messages m INDEXED BY rebuild_messages_cover CROSS JOIN message_scopes s ON s.message_id = m.message_id
    CROSS JOIN message_reads r ON r.message_id = m.message_id
    WHERE m.deleted = 1 AND s.type != 'group' GROUP BY 1, 2 ON CONFLICT(agent_id, key) DO UPDATE SET n = n + excluded.n;
DELETE FROM scope_reads WHERE n = 0;
INSERT INTO counters SELECT 'live_messages', COUNT(*) FROM messages INDEXED BY rebuild_messages_cover WHERE deleted = 0;
DROP INDEX rebuild_messages_cover;
"""


# A large chunk of new events (a sync merge, a catch-up) is applied like a rebuild: the appliers
# write the raw rows (bulk mode), then these statements add the derived rows of just what the chunk
# added (Projection._apply_new_run). `:start` is the largest messages rowid before the chunk, so
# the new messages are the rows after it (rows are never removed). The TEMP tables live in the
# connection's temp database and take part in the transaction, so a rollback empties them too.
_NEW_RUN_TEMP = """
CREATE TEMP TABLE IF NOT EXISTS run_reads (agent_id, message_id, read_at);
CREATE TEMP TABLE IF NOT EXISTS run_new_reads (agent_id TEXT NOT NULL, message_id TEXT NOT NULL,
    PRIMARY KEY (agent_id, message_id)) WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS run_messages (seq INTEGER PRIMARY KEY, message_id TEXT NOT NULL,
    created_ns INTEGER NOT NULL, author TEXT NOT NULL, keyset INTEGER NOT NULL);
CREATE TEMP TABLE IF NOT EXISTS run_scopes (seq INTEGER NOT NULL, key TEXT NOT NULL, PRIMARY KEY (seq, key))
    WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS run_counted (agent_id TEXT NOT NULL, message_id TEXT NOT NULL, seq INTEGER NOT NULL,
    created_ns INTEGER NOT NULL, keyset INTEGER NOT NULL, own INTEGER NOT NULL);
CREATE TEMP TABLE IF NOT EXISTS run_owners (key TEXT NOT NULL, agent_id TEXT NOT NULL,
    PRIMARY KEY (key, agent_id)) WITHOUT ROWID;
"""
_NEW_RUN_SQL = """
INSERT OR IGNORE INTO temp.run_new_reads SELECT agent_id, message_id FROM temp.run_reads b
    WHERE NOT EXISTS (SELECT 1 FROM message_reads r WHERE r.agent_id = b.agent_id AND r.message_id = b.message_id);
INSERT OR IGNORE INTO message_reads(agent_id, message_id, read_at)
    SELECT agent_id, message_id, read_at FROM temp.run_reads ORDER BY rowid;
INSERT INTO temp.run_messages SELECT rowid, message_id, created_ns, agent_id, keyset FROM messages WHERE rowid > :start;
INSERT OR IGNORE INTO temp.run_scopes SELECT n.seq, '~' || s.type || ':' || s.value
    FROM temp.run_messages n JOIN message_scopes s ON s.message_id = n.message_id AND s.type != 'group';
INSERT OR IGNORE INTO message_audience SELECT key, created_ns, seq, author FROM (
    SELECT k.key AS key, n.created_ns AS created_ns, n.seq AS seq, n.author AS author
        FROM temp.run_messages n JOIN keyset_keys k ON k.keyset_id = n.keyset
    UNION ALL SELECT s.key, n.created_ns, n.seq, n.author FROM temp.run_scopes s JOIN temp.run_messages n USING (seq))
    ORDER BY 1, 2, 3;
INSERT INTO audience_counts SELECT keyset, author, COUNT(*) FROM temp.run_messages WHERE true GROUP BY 1, 2
    ON CONFLICT(keyset_id, author) DO UPDATE SET n = n + excluded.n;
INSERT INTO counters SELECT 'live_messages', COUNT(*) FROM temp.run_messages WHERE true HAVING COUNT(*) > 0
    ON CONFLICT(name) DO UPDATE SET n = n + excluded.n;
INSERT INTO scope_counts SELECT key, COUNT(*) FROM temp.run_scopes WHERE true GROUP BY 1
    ON CONFLICT(key) DO UPDATE SET n = n + excluded.n;
INSERT INTO temp.run_counted
    SELECT r.agent_id, m.message_id, m.rowid, m.created_ns, m.keyset, m.agent_id = r.agent_id
        FROM temp.run_new_reads r JOIN messages m ON m.message_id = r.message_id
        WHERE m.deleted = 0 AND m.rowid <= :start
    UNION ALL SELECT r.agent_id, n.message_id, n.seq, n.created_ns, n.keyset, n.author = r.agent_id
        FROM temp.run_messages n JOIN message_reads r ON r.message_id = n.message_id;
INSERT INTO reader_counts SELECT agent_id, keyset, own, COUNT(*) FROM temp.run_counted WHERE true GROUP BY 1, 2, 3
    ON CONFLICT(agent_id, keyset_id, own) DO UPDATE SET n = n + excluded.n;
INSERT INTO scope_reads SELECT agent_id, key, COUNT(*) FROM (
    SELECT c.agent_id AS agent_id, s.key AS key FROM temp.run_counted c JOIN temp.run_scopes s ON s.seq = c.seq
    UNION ALL SELECT c.agent_id, '~' || s.type || ':' || s.value FROM temp.run_counted c
        JOIN message_scopes s ON s.message_id = c.message_id AND s.type != 'group' WHERE c.seq <= :start
        GROUP BY c.agent_id, c.seq, 2)
    WHERE true GROUP BY 1, 2 ON CONFLICT(agent_id, key) DO UPDATE SET n = n + excluded.n;
"""
# Only while some agent's unread index is kept (views.py); run_owners holds key -> owner.
_NEW_RUN_UNREAD_SQL = """
INSERT OR IGNORE INTO unread_index SELECT o.agent_id, n.created_ns, n.seq
    FROM temp.run_messages n JOIN keyset_keys k ON k.keyset_id = n.keyset JOIN temp.run_owners o ON o.key = k.key
    WHERE o.agent_id != n.author
      AND NOT EXISTS (SELECT 1 FROM message_reads r WHERE r.agent_id = o.agent_id AND r.message_id = n.message_id);
DELETE FROM unread_index WHERE (agent_id, created_ns, seq) IN (
    SELECT agent_id, created_ns, seq FROM temp.run_counted WHERE seq <= :start);
"""
_NEW_RUN_CLEAR = [f"DELETE FROM temp.{t}" for t in (
    "run_reads", "run_new_reads", "run_messages", "run_scopes", "run_counted", "run_owners")]
# A chunk of at least BULK_MIN new events is applied set-based (Projection._apply_new). Smaller chunks
# are the everyday trickle (a few remote events a round, a short catch-up), where the per-event path
# costs a few ms anyway; a merge hands over chunks of up to 2,000 (sync.WRITE_CHUNK). Inside one, a run
# between two deletions costs ~15 statements whatever its length; from NEW_RUN_MIN events on that is
# cheaper than the appliers one event at a time (at 100K messages: 68 against 87 us an event at 200,
# about even at 10).
BULK_MIN = 200
NEW_RUN_MIN = 20


class NeedsRebuild(Exception):
    """The database is missing, corrupt, foreign or of another schema."""


def connect(path: str) -> sqlite3.Connection:
    _make_private(path)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    # The log is the durable copy, so the projection may lose its last commits on
    # power loss (catch-up re-applies them): synchronous=NORMAL is enough.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def _make_private(db_path: str) -> None:
    """The database holds every message: 0600 like the rest of var/ (SQLite gives -wal and -shm its mode)."""
    for path in (db_path, db_path + "-wal", db_path + "-shm"):
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if path == db_path else 0)
        try:
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:
            continue
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)


def _j(value) -> str:
    # Sorted keys: a live write and a rebuild from the (canonical, sorted) log line store the same text.
    return json.dumps(value if value is not None else [], ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _newer(candidate, current) -> bool:
    if not candidate:
        return not current
    if not current:
        return True
    try:
        return parse_timestamp_ns(candidate) >= parse_timestamp_ns(current)
    except EventError:
        return candidate >= current


_BUMP_SQL: dict[tuple, tuple[str, str]] = {}  # (table, key columns) -> (upsert, delete at zero): Projection._bump


class _OneByOne(Exception):
    """A bulk batch that has to be applied one event at a time."""


class Projection:
    """Appliers that turn events into rows; each is idempotent through `applied`."""

    def __init__(self, conn: sqlite3.Connection, extra_appliers: dict, *, bulk: bool = False) -> None:
        self.db = conn
        # A rebuild loads events in bulk: the derived tables (_DERIVE_SQL) are computed once at
        # the end instead of one event at a time.
        self.bulk = bulk
        self._keysets: dict[str, int] = {}
        self._keysets_version = 0
        self._pending_rows: dict[str, list] = {}
        self.fresh = False  # set while applying an event this daemon has just created (Store.append)
        # Bumped when an unread index is built or dropped (views.py), so the owners map is re-read.
        self.unread_version = 0
        self._owners: dict[str, set] = {}
        self._owners_version = -1
        self.appliers = {
            "agent.register": self._agent_register,
            "agent.session.start": self._session_start,
            "session.start": self._session_start,  # fixture-only Go test type: read, never written
            "agent.session.end": self._session_end,
            "session.end": self._session_end,
            "agent.update": self._agent_update,
            "agent.cleanup": self._agent_cleanup,
            "group.create": self._group_create,
            "group.update": self._group_update,
            "group.delete": self._group_delete,
            "group.member.add": self._member_add,
            "group.member.remove": self._member_remove,
            "message.create": self._message_create,
            "message.edit": self._message_edit,
            "message.delete": self._message_delete,
            "message.read": self._message_read,
            **extra_appliers,
        }
        # Bumped whenever agents, sessions or groups change, so callers may cache lookups of them.
        self.version = 0
        self._versioned = frozenset({
            "agent.register", "agent.cleanup", "agent.session.start", "session.start", "agent.session.end",
            "session.end", "group.create", "group.update", "group.delete", "group.member.add",
            "group.member.remove"})

    def apply(self, event: dict, ns: int | None = None, *, guard: bool = False) -> bool:
        """Apply one event unless it was applied before. Returns True when it was new.

        `ns` is the event's instant when the caller already knows it (saves a parse).
        With `guard` (lines read back from the log or merged from another clone, which
        no one validated), an event its applier cannot take is rolled back, recorded
        in `bad_lines` and skipped: it stays in the log and stops nothing else.
        """
        cur = self.db.execute("INSERT OR IGNORE INTO applied(event_id) VALUES (?)", (event["event_id"],))
        if cur.rowcount == 0:
            return False
        etype = event["type"]
        fn = self.appliers.get(etype)
        if fn is None:  # unknown types stay in the log and are skipped here
            return True
        if not guard:
            fn(event, order_key(event)[0] if ns is None else ns)
        else:
            self.db.execute("SAVEPOINT apply_one")
            try:
                fn(event, order_key(event)[0] if ns is None else ns)
                self._flush_rows()  # rows a bulk applier deferred: if SQLite cannot take them, it is this event
            except Exception as exc:
                self._pending_rows.clear()
                self.db.execute("ROLLBACK TO apply_one")
                self.version += 1
                self.db.execute("INSERT OR REPLACE INTO bad_lines VALUES (?,?,?,?)",
                                (f"event {event['event_id']}", 0, f"cannot apply {etype}: {type(exc).__name__}: {exc}",
                                 json.dumps(event, ensure_ascii=False)[:200]))
                log.warning("skipped %s %s: %s", etype, event["event_id"], exc)
                return True
            finally:
                self.db.execute("RELEASE apply_one")
        if etype in self._versioned:
            self.version += 1
        return True

    def apply_all(self, events: list, *, savepoint: bool = True) -> list:
        """Apply events from the log or another clone; returns those that were new.

        `events` holds events, or (event, ns) pairs when the caller parsed the instants.
        The fast path has no per-event savepoint; if an applier raises, the whole
        batch is rolled back and applied again with `guard`, so the event that
        cannot be taken is skipped and recorded and every other one is applied.

        A live projection given at least BULK_MIN events that are all new (a sync
        merge, a catch-up) applies them set-based (`_apply_new`) rather than one
        event at a time; the result is the same.

        Without `savepoint` the batch takes none, and an exception leaves its
        partial writes in the open transaction, for the caller to roll back whole
        (Store.append_foreign_lines). A savepoint held over a large merge copies every page it
        touches into a statement journal, chunk after chunk: a quarter of a large merge's projection.
        """
        pairs = events if not events or isinstance(events[0], tuple) else [(e, None) for e in events]
        if not savepoint:
            return self._apply_all_unguarded(pairs)
        self.db.execute("SAVEPOINT apply_all")
        try:
            if not self.bulk and len(pairs) >= BULK_MIN and self._all_new(pairs):
                self._apply_new(pairs)
                new = [e for e, _ in pairs]
            else:
                new = [e for e, ns in pairs if self.apply(e, ns)]
                self._flush_rows()
        except Exception as exc:
            log.debug("a chunk of %d events failed (%s: %s); applying them one at a time",
                      len(pairs), type(exc).__name__, exc)
            self._pending_rows.clear()
            self.db.execute("ROLLBACK TO apply_all")
            self.version += 1
            new = [e for e, ns in pairs if self.apply(e, ns, guard=True)]
            self._flush_rows()
        finally:
            self.db.execute("RELEASE apply_all")
        return new

    def _apply_all_unguarded(self, pairs: list) -> list:
        try:
            if len(pairs) >= BULK_MIN:
                if not self._record_ids([e["event_id"] for e, _ in pairs]):
                    raise _OneByOne("a known or repeated event id in the batch")
                self._apply_new(pairs)
                return [e for e, _ in pairs]
            new = [e for e, ns in pairs if self.apply(e, ns)]
            self._flush_rows()
            return new
        except BaseException:
            self._pending_rows.clear()
            self.version += 1  # the caller rolls back: cached lookups may describe undone rows
            raise

    def apply_items(self, items: list) -> int:
        """A rebuild's batch of `bulk_item`s, made in its reader process; returns how many events were new.

        Rows come ready: the messages of a run of them go in by one statement, then their scopes,
        refs and read markers, as `_rows` defers them. Any other event goes to its applier (after the
        messages before it, which it may edit or delete). If an event was applied before, a message
        id repeats, or anything fails, the batch is rolled back and goes again one event at a time.
        """
        self.db.execute("SAVEPOINT apply_all")
        try:
            try:
                if not self._all_new_ids([item[1] for item in items]):
                    raise _OneByOne
                self._apply_items_at_once(items)
                return len(items)
            except Exception:
                self._pending_rows.clear()
                self.db.execute("ROLLBACK TO apply_all")
                self.version += 1
                return self._apply_items_one_by_one(items)
        finally:
            self.db.execute("RELEASE apply_all")

    def _apply_items_at_once(self, items: list) -> None:
        messages: list[tuple] = []
        pending = self._pending_rows
        scope_rows, ref_rows = pending.setdefault(_INSERT_SCOPE, []), pending.setdefault(_INSERT_REF, [])
        read_rows_ = pending.setdefault(_INSERT_READ, [])
        for item in items:
            kind = item[0]
            if kind == "m":
                messages.append(item[2] + (self._keyset(item[3]),))
                scope_rows += item[4]
                ref_rows += item[5]
            elif kind == "r":
                read_rows_ += item[2]
            elif kind == "e":
                if messages:
                    self._insert_messages(messages)
                    messages = []
                fn = self.appliers.get(item[2]["type"])
                if fn is not None:
                    fn(item[2], item[3])
        if messages:
            self._insert_messages(messages)
        self._flush_rows()

    def _insert_messages(self, rows: list) -> None:
        if self.db.executemany(_INSERT_MESSAGE, rows).rowcount != len(rows):
            raise _OneByOne  # a message id seen before: its scopes and refs must be left out, as the applier does

    def _apply_items_one_by_one(self, items: list) -> int:
        new = 0
        for item in items:
            kind = item[0]
            if kind == "e":
                new += self.apply(item[2], item[3], guard=True)
                continue
            if self.db.execute("INSERT OR IGNORE INTO applied(event_id) VALUES (?)", (item[1],)).rowcount == 0:
                continue
            new += 1
            if kind == "m" and self.db.execute(_INSERT_MESSAGE, item[2] + (self._keyset(item[3]),)).rowcount:
                self.db.executemany(_INSERT_SCOPE, item[4])
                self.db.executemany(_INSERT_REF, item[5])
            elif kind == "r":
                self.db.executemany(_INSERT_READ, item[2])
        return new

    def _apply_new(self, pairs: list) -> None:
        """Apply events already recorded in `applied`, in order: runs between deletions set-based.

        A deletion takes away the derived rows of its message (and of its read markers), so
        it needs those rows in place: the run before it is finished first, and the deletion
        is applied by its live applier. Every other applier writes the same rows in bulk mode
        as live (the raw ones), or only raw ones that `_apply_new_run` derives from after.
        """
        log.debug("applying %d new events set-based", len(pairs))
        run: list = []
        for e, ns in pairs:
            if e["type"] == "message.delete":
                self._apply_new_run(run)
                run = []
                self._apply_one(e, ns)
            else:
                run.append((e, ns))
        self._apply_new_run(run)

    def _apply_one(self, e: dict, ns: int | None) -> None:
        """`apply` without the ledger (the caller recorded the event)."""
        fn = self.appliers.get(e["type"])
        if fn is not None:
            fn(e, order_key(e)[0] if ns is None else ns)
            if e["type"] in self._versioned:
                self.version += 1

    def _apply_new_run(self, run: list) -> None:
        """Raw rows in bulk mode, then the derived rows of just the messages and read markers added:
        the audience index, the counters, and the unread index of the agents that keep one.

        The end state matches the live appliers': a read marker counts once its message is here
        and not deleted (whichever came first), an unread index row exists for an owner of one of
        the message's keys who is not its author and has not read it."""
        if len(run) < NEW_RUN_MIN:
            for e, ns in run:
                self._apply_one(e, ns)
            return
        db = self.db
        start = db.execute("SELECT COALESCE(MAX(rowid), 0) FROM messages").fetchone()[0]
        fns = self.appliers
        versioned = False
        self.bulk = True
        try:
            for e, ns in run:
                fn = fns.get(e["type"])
                if fn is not None:
                    fn(e, order_key(e)[0] if ns is None else ns)
                    versioned = versioned or e["type"] in self._versioned
        finally:
            self.bulk = False
        reads = self._pending_rows.pop(_INSERT_READ, [])
        self._flush_rows()  # scopes and refs
        for stmt in _split_statements(_NEW_RUN_TEMP):  # (IF NOT EXISTS: a rollback may have undone them)
            db.execute(stmt)
        if reads:
            db.executemany("INSERT INTO temp.run_reads VALUES (?,?,?)", reads)
        args = {"start": start}
        for stmt in _split_statements(_NEW_RUN_SQL):
            db.execute(stmt, args if ":start" in stmt else ())
        owners = self._unread_owners()
        if owners:
            db.executemany("INSERT INTO temp.run_owners VALUES (?,?)",
                           [(k, a) for k, agents in owners.items() for a in agents])
            for stmt in _split_statements(_NEW_RUN_UNREAD_SQL):
                db.execute(stmt, args if ":start" in stmt else ())
        for stmt in _NEW_RUN_CLEAR:
            db.execute(stmt)
        if versioned:
            self.version += 1

    def _all_new(self, pairs: list) -> bool:
        return self._all_new_ids([e["event_id"] for e, _ in pairs])

    def _all_new_ids(self, ids: list) -> bool:
        """Record a bulk chunk's event ids in one statement; False (nothing recorded) if any was known."""
        self.db.execute("SAVEPOINT ids")
        if self._record_ids(ids):
            self.db.execute("RELEASE ids")
            return True
        self.db.execute("ROLLBACK TO ids")
        self.db.execute("RELEASE ids")
        return False

    def _record_ids(self, ids: list) -> bool:
        """The ids into the ledger in one statement; False if one was there or repeats (the others went in)."""
        added = self.db.executemany("INSERT OR IGNORE INTO applied(event_id) VALUES (?)",
                                    [(eid,) for eid in ids]).rowcount
        return added == len(ids) and len(set(ids)) == len(ids)

    def add_rows(self, sql: str, rows: list) -> None:
        """executemany of an insert, deferred to the end of the chunk in bulk mode (one call instead of
        one per event). For rows nothing else in the chunk reads, e.g. an extra applier's
        INSERT OR IGNORE."""
        if self.bulk:
            self._pending_rows.setdefault(sql, []).extend(rows)
        else:
            self.db.executemany(sql, rows)

    def _flush_rows(self) -> None:
        pending, self._pending_rows = self._pending_rows, {}
        for sql, rows in pending.items():
            self.db.executemany(sql, rows)

    # agents and sessions

    def _agent_register(self, e: dict, ns: int) -> None:
        agent_id = e.get("agent_id") or ""
        if not agent_id:
            return
        row = self.db.execute("SELECT registered_ns, last_seen_at FROM agents WHERE agent_id=?",
                              (agent_id,)).fetchone()
        if row is not None and row[0] > ns:
            return  # an older registration arriving late does not win
        self.db.execute(
            "INSERT OR REPLACE INTO agents(agent_id, kind, name, role, module, display, hostname, worktree,"
            " registered_at, registered_ns, last_seen_at, origin_daemon) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (agent_id, e.get("kind") or "agent", e.get("name") or "", e.get("role") or "",
             e.get("module") or "", e.get("display") or "", e.get("hostname") or "", e.get("worktree") or "",
             e.get("timestamp", ""), ns, row[1] if row else "", e.get("origin_daemon") or ""))

    def _session_start(self, e: dict, ns: int) -> None:
        sid, agent_id = e.get("session_id"), e.get("agent_id")
        if not sid or not agent_id:
            return
        self.db.execute(
            "INSERT OR IGNORE INTO sessions(session_id, agent_id, started_at, started_ns, last_seen_at,"
            " origin_daemon) VALUES (?,?,?,?,?,?)",
            (sid, agent_id, e.get("timestamp", ""), ns, e.get("timestamp", ""), e.get("origin_daemon") or ""))
        # Starting a session is when an agent was last seen: derived from the log here (not
        # set by the RPC handler) so a rebuild reproduces it.
        row = self.db.execute("SELECT last_seen_at FROM agents WHERE agent_id=?", (agent_id,)).fetchone()
        if row is not None and _newer(e.get("timestamp", ""), row[0]):
            self.db.execute("UPDATE agents SET last_seen_at=? WHERE agent_id=?", (e.get("timestamp", ""), agent_id))

    def _session_end(self, e: dict, ns: int) -> None:
        self.db.execute("UPDATE sessions SET ended_at=?, end_reason=? WHERE session_id=? AND ended_at=''",
                        (e.get("timestamp", ""), e.get("reason") or "normal", e.get("session_id") or ""))

    def _agent_update(self, e: dict, ns: int) -> None:
        agent_id = e.get("agent_id") or ""
        for wc in e.get("work_contexts") or []:
            if isinstance(wc, dict) and wc.get("session_id"):
                self.merge_work_context(agent_id, wc)

    def merge_work_context(self, agent_id: str, wc: dict) -> None:
        """Merge one work context; each part keeps the value with the newest timestamp."""
        sid = wc["session_id"]
        self.db.execute("INSERT OR IGNORE INTO work_contexts(session_id, agent_id) VALUES (?,?)", (sid, agent_id))
        row = self.db.execute("SELECT git_updated_at, task_updated_at, intent_updated_at FROM work_contexts"
                              " WHERE session_id=?", (sid,)).fetchone()
        if wc.get("git_updated_at") and _newer(wc["git_updated_at"], row[0]):
            self.db.execute(
                "UPDATE work_contexts SET branch=?, worktree_path=?, unmerged_commits=?, uncommitted_files=?,"
                " changed_files=?, file_changes=?, git_updated_at=? WHERE session_id=?",
                (wc.get("branch") or "", wc.get("worktree_path") or "", _j(wc.get("unmerged_commits")),
                 _j(wc.get("uncommitted_files")), _j(wc.get("changed_files")), _j(wc.get("file_changes")),
                 wc["git_updated_at"], sid))
        if wc.get("task_updated_at") and _newer(wc["task_updated_at"], row[1]):
            self.db.execute("UPDATE work_contexts SET current_task=?, task_updated_at=? WHERE session_id=?",
                            (wc.get("current_task") or "", wc["task_updated_at"], sid))
        if wc.get("intent_updated_at") and _newer(wc["intent_updated_at"], row[2]):
            self.db.execute("UPDATE work_contexts SET intent=?, intent_updated_at=? WHERE session_id=?",
                            (wc.get("intent") or "", wc["intent_updated_at"], sid))

    def _agent_cleanup(self, e: dict, ns: int) -> None:
        row = self.db.execute("SELECT registered_ns FROM agents WHERE agent_id=?", (e.get("agent_id"),)).fetchone()
        if row is not None and row[0] <= ns:  # a later re-registration survives an older cleanup
            self.db.execute("DELETE FROM agents WHERE agent_id=?", (e.get("agent_id"),))

    # groups

    def _group_create(self, e: dict, ns: int) -> None:
        if e.get("group_id") and e.get("name"):
            self.db.execute(
                "INSERT OR IGNORE INTO groups(group_id, name, description, created_at, created_ns, created_by,"
                " event_id) VALUES (?,?,?,?,?,?,?)",
                (e["group_id"], e["name"], e.get("description") or "", e.get("timestamp", ""), ns,
                 e.get("created_by") or "", e["event_id"]))

    def _group_update(self, e: dict, ns: int) -> None:
        fields = e.get("fields")
        if isinstance(fields, dict) and "description" in fields:
            self.db.execute("UPDATE groups SET description=? WHERE group_id=?",
                            (fields.get("description") or "", e.get("group_id")))

    def _group_delete(self, e: dict, ns: int) -> None:
        self.db.execute("UPDATE groups SET deleted=1 WHERE group_id=?", (e.get("group_id"),))
        self.db.execute("DELETE FROM group_members WHERE group_id=?", (e.get("group_id"),))

    def _member_add(self, e: dict, ns: int) -> None:
        if e.get("group_id") and e.get("member_type") and e.get("member_value"):
            self.db.execute(
                "INSERT OR IGNORE INTO group_members(group_id, member_type, member_value, added_at, added_by)"
                " VALUES (?,?,?,?,?)", (e["group_id"], e["member_type"], e["member_value"],
                                        e.get("timestamp", ""), e.get("added_by") or ""))

    def _member_remove(self, e: dict, ns: int) -> None:
        self.db.execute("DELETE FROM group_members WHERE group_id=? AND member_type=? AND member_value=?",
                        (e.get("group_id"), e.get("member_type"), e.get("member_value")))

    # messages

    def _message_create(self, e: dict, ns: int) -> None:
        made = message_rows(e, ns)
        if made is None:
            return
        row, keys, scope_rows, ref_rows = made
        keyset = self._keyset(keys)
        cur = self.db.execute(_INSERT_MESSAGE, row + (keyset,))
        if cur.rowcount == 0:
            return
        if scope_rows:
            self.add_rows(_INSERT_SCOPE, scope_rows)
        if ref_rows:
            self.add_rows(_INSERT_REF, ref_rows)
        if self.bulk:
            return
        seq, mid, author = cur.lastrowid, row[0], row[3]
        scope_keys = sorted({f"~{t}:{v}" for _, t, v in scope_rows if t != "group"})
        self.db.executemany("INSERT OR IGNORE INTO message_audience VALUES (?,?,?,?)",
                            [(k, ns, seq, author) for k in keys + scope_keys])
        self._audience(keyset, author, 1)
        self._count("live_messages", 1)
        for k in scope_keys:
            self._scope_count(k, 1)
        # Read markers can arrive before the message (another clone, a rebuild's file order); a message
        # this daemon just created has none.
        readers = [] if self.fresh else [
            r[0] for r in self.db.execute("SELECT agent_id FROM message_reads WHERE message_id=?", (mid,))]
        for reader in readers:
            self._reader(reader, keyset, reader == author, 1, scope_keys)
        unread_for = {a for k in keys for a in self._unread_owners().get(k, ())} - {author} - set(readers)
        if unread_for:
            self.db.executemany("INSERT OR IGNORE INTO unread_index VALUES (?,?,?)",
                                [(a, ns, seq) for a in unread_for])

    def _unread_owners(self) -> dict[str, set]:
        """key -> agents whose unread index (views.py) is kept and whose inbox that key reaches."""
        if self._owners_version != (self.version, self.unread_version):  # a rollback may undo a build
            owners: dict[str, set] = {}
            for agent_id, keys in self.db.execute("SELECT agent_id, keys FROM unread_ready"):
                for k in keys.split("\n"):
                    owners.setdefault(k, set()).add(agent_id)
            self._owners, self._owners_version = owners, (self.version, self.unread_version)
        return self._owners

    def _keyset(self, keys: list[str]) -> int:
        text = "\n".join(keys)
        # The same few keysets come a million times. Every rollback bumps `version`: a keyset
        # cached from a transaction that was undone is then looked up again.
        if self._keysets_version != self.version:
            self._keysets.clear()
            self._keysets_version = self.version
        found = self._keysets.get(text)
        if found is not None:
            return found
        # The id is a hash of the keys, so a live projection and a rebuild (which meet keysets in
        # another order) agree; a collision of 56-bit hashes is not a practical concern.
        keyset = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=7).digest(), "big")
        if self.db.execute("INSERT OR IGNORE INTO keysets(keyset_id, keys) VALUES (?,?)", (keyset, text)).rowcount:
            self.db.executemany("INSERT INTO keyset_keys VALUES (?,?)", [(k, keyset) for k in keys])
        if len(self._keysets) < 10000:
            self._keysets[text] = keyset
        return keyset

    # Counters: a row exists only while its count is not zero, as a rebuild's GROUP BY leaves them.

    def _bump(self, table: str, names: tuple[str, ...], values: tuple, delta: int, keep_zero: bool = False) -> None:
        sql = _BUMP_SQL.get((table, names))
        if sql is None:
            cols = ", ".join(names)
            sql = _BUMP_SQL[(table, names)] = (
                f"INSERT INTO {table}({cols}, n) VALUES ({', '.join('?' * (len(names) + 1))})"
                f" ON CONFLICT({cols}) DO UPDATE SET n = n + excluded.n",
                f"DELETE FROM {table} WHERE {' AND '.join(c + ' = ?' for c in names)} AND n = 0")
        self.db.execute(sql[0], values + (delta,))
        if delta < 0 and not keep_zero:
            self.db.execute(sql[1], values)

    def _count(self, name: str, delta: int) -> None:
        self._bump("counters", ("name",), (name,), delta, keep_zero=True)  # a rebuild writes them all

    def _audience(self, keyset: int, author: str, delta: int) -> None:
        self._bump("audience_counts", ("keyset_id", "author"), (keyset, author), delta)

    def _scope_count(self, key: str, delta: int) -> None:
        self._bump("scope_counts", ("key",), (key,), delta)

    def _reader(self, reader: str, keyset: int, own: bool, delta: int, scope_keys: list[str]) -> None:
        self._bump("reader_counts", ("agent_id", "keyset_id", "own"), (reader, keyset, 1 if own else 0), delta)
        for k in scope_keys:
            self._bump("scope_reads", ("agent_id", "key"), (reader, k), delta)

    def _message_edit(self, e: dict, ns: int) -> None:
        mid = e.get("message_id")
        body = e.get("body") if isinstance(e.get("body"), dict) else {}
        row = self.db.execute("SELECT content, agent_id FROM messages WHERE message_id=?", (mid,)).fetchone()
        if row is None:
            return
        content = body.get("content") or row["content"]
        self.db.execute("UPDATE messages SET content=?, updated_at=?, edits=edits+1 WHERE message_id=?",
                        (content, e.get("timestamp", ""), mid))
        if "structured" in body:
            s = body.get("structured")
            if s is not None and not isinstance(s, str):
                s = json.dumps(s, ensure_ascii=False, separators=(",", ":"))
            self.db.execute("UPDATE messages SET structured=? WHERE message_id=?", (s, mid))
        self.db.execute(
            "INSERT OR IGNORE INTO message_edits(event_id, message_id, edited_at, edited_by, old_content,"
            " new_content) VALUES (?,?,?,?,?,?)",
            (e["event_id"], mid, e.get("timestamp", ""), e.get("edited_by") or row["agent_id"],
             row["content"], content))

    def _message_delete(self, e: dict, ns: int) -> None:
        mid = e.get("message_id")
        cur = self.db.execute("UPDATE messages SET deleted=1, deleted_at=?, delete_reason=? WHERE message_id=?"
                              " AND deleted=0", (e.get("timestamp", ""), e.get("reason") or "", mid))
        if cur.rowcount == 0 or self.bulk:
            return
        row = self.db.execute("SELECT rowid, created_ns, agent_id, keyset FROM messages WHERE message_id=?",
                              (mid,)).fetchone()
        seq, created_ns, author, keyset = row
        keys = self.db.execute("SELECT keys FROM keysets WHERE keyset_id=?", (keyset,)).fetchone()[0].split("\n")
        scope_keys = _scope_keys(self.db, mid)
        self.db.executemany("DELETE FROM message_audience WHERE key=? AND created_ns=? AND seq=?",
                            [(k, created_ns, seq) for k in keys + scope_keys])
        self._audience(keyset, author, -1)
        self._count("live_messages", -1)
        for k in scope_keys:
            self._scope_count(k, -1)
        for (reader,) in self.db.execute("SELECT agent_id FROM message_reads WHERE message_id=?", (mid,)).fetchall():
            self._reader(reader, keyset, reader == author, -1, scope_keys)
        owners = {a for k in keys for a in self._unread_owners().get(k, ())}
        if owners:
            self.db.executemany("DELETE FROM unread_index WHERE agent_id=? AND created_ns=? AND seq=?",
                                [(a, created_ns, seq) for a in owners])

    def _message_read(self, e: dict, ns: int) -> None:
        rows = read_rows(e)
        if not rows:
            return
        agent_id = rows[0][0]
        if self.bulk:
            self.add_rows(_INSERT_READ, rows)
            return
        for row in rows:
            if self.db.execute(_INSERT_READ, row).rowcount == 0:
                continue
            m = self.db.execute("SELECT agent_id, keyset, created_ns, rowid FROM messages WHERE message_id=?"
                                " AND deleted=0", (row[1],)).fetchone()
            if m is not None:  # a marker for a message not here yet is counted when the message arrives
                self._reader(agent_id, m[1], m[0] == agent_id, 1, _scope_keys(self.db, row[1]))
                self.db.execute("DELETE FROM unread_index WHERE agent_id=? AND created_ns=? AND seq=?",
                                (agent_id, m[2], m[3]))


_FULL_CHECK_BYTES = 64 << 20  # databases up to this size are checked in full at every start


def _wal_size(db_path: str) -> int:
    try:
        return os.path.getsize(db_path + "-wal")
    except OSError:
        return 0


def _split_statements(sql: str) -> list[str]:
    out, buf = [], ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


def _split_schema(sql: str) -> tuple[str, list[str]]:
    """Tables now; indexes and triggers after a bulk load (building an index at once is faster,
    and a trigger would fire per row)."""
    now, later = [], []
    for stmt in _split_statements(sql):
        head = " ".join(stmt.split()[:3]).upper()
        (later if head.startswith(("CREATE INDEX", "CREATE UNIQUE INDEX", "CREATE TRIGGER")) else now).append(stmt)
    return "\n".join(s if s.endswith(";") else s + ";" for s in now), later


_INSERT_MESSAGE = (
    "INSERT OR IGNORE INTO messages(message_id, thread_id, reply_to, agent_id, session_id, created_at, created_ns,"
    " format, content, structured, priority, authored_by, disclosed, broadcast, client_id, keyset)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
_INSERT_SCOPE = "INSERT OR IGNORE INTO message_scopes VALUES (?,?,?)"
_INSERT_REF = "INSERT OR IGNORE INTO message_refs VALUES (?,?,?)"
_INSERT_READ = "INSERT OR IGNORE INTO message_reads(agent_id, message_id, read_at) VALUES (?,?,?)"


def message_rows(e: dict, ns: int):
    """A message.create event -> (its `messages` row but the keyset, its audience keys, scope rows, ref rows),
    or None when it makes no message. Pure: the live applier and a rebuild's reader process share it."""
    mid = e.get("message_id")
    if not mid or not e.get("agent_id"):
        return None
    body = e.get("body") if isinstance(e.get("body"), dict) else {}
    scopes = [s for s in e.get("scopes") or [] if isinstance(s, dict)]
    refs = [r for r in e.get("refs") or [] if isinstance(r, dict)]
    reply_to = next((r.get("value") for r in refs if r.get("type") == "reply_to"), "") or ""
    keys = sorted({"@" + str(r.get("value", "")) for r in refs if r.get("type") == "mention"}
                  | {"#" + str(s.get("value", "")) for s in scopes if s.get("type") == "group"}) or ["*"]
    structured = body.get("structured")
    if structured is not None and not isinstance(structured, str):
        structured = json.dumps(structured, ensure_ascii=False, separators=(",", ":"))
    row = (mid, e.get("thread_id") or "", reply_to, e["agent_id"], e.get("session_id") or "",
           e.get("timestamp", ""), ns, body.get("format") or "markdown", body.get("content") or "",
           structured, e.get("priority") or "normal", e.get("authored_by") or "", 1 if e.get("disclosed") else 0,
           1 if keys == ["*"] else 0, e.get("client_id") or "")
    return (row, keys, [(mid, s.get("type", ""), s.get("value", "")) for s in scopes],
            [(mid, r.get("type", ""), r.get("value", "")) for r in refs])


def read_rows(e: dict) -> list[tuple]:
    """A message.read event -> its `message_reads` rows (pure, like message_rows)."""
    agent_id, ids = e.get("agent_id"), e.get("message_ids")
    if not agent_id or not isinstance(ids, list):
        return []
    return [(agent_id, m, e.get("timestamp", "")) for m in dict.fromkeys(ids) if isinstance(m, str)]


_BINDABLE = frozenset({str, int, float, type(None)})


def _bindable(rows) -> bool:
    return _BINDABLE.issuperset(map(type, chain.from_iterable(rows)))  # no Python frame per value


def bulk_item(event: dict, ns: int) -> tuple:
    """What a rebuild's reader hands over for one event (see Projection.apply_items).

    The two events that make nearly all of a log, message.create and message.read, become their
    rows here, in the reader's process; any other event, and one whose values SQLite could not
    bind as they are, goes over whole to its applier (which records it as a bad line if it fails).
    """
    etype, eid = event.get("type"), event["event_id"]
    if etype == "message.create":
        made = message_rows(event, ns)
        if made is None:
            return "-", eid
        row, keys, scope_rows, ref_rows = made
        if _bindable((row,)) and _bindable(scope_rows) and _bindable(ref_rows):
            return "m", eid, row, keys, scope_rows, ref_rows
    elif etype == "message.read":
        rows = read_rows(event)
        if _bindable(rows[:1]):  # the rows differ only in their message id, which read_rows keeps to strings
            return "r", eid, rows
    return "e", eid, event, ns


def _scope_keys(db: sqlite3.Connection, mid: str) -> list[str]:
    return ["~" + t + ":" + v for t, v in db.execute(
        "SELECT type, value FROM message_scopes WHERE message_id=? AND type != 'group'", (mid,))]


# -- the store ------------------------------------------------------------------

class Store:
    """The log plus its projection, written through batches."""

    def __init__(self, sync_dir: str, db_path: str, var_dir: str, origin_daemon: str) -> None:
        self.sync_dir = sync_dir
        self.db_path = db_path
        self.var_dir = var_dir
        self.origin_daemon = origin_daemon
        self.log = EventLog(sync_dir, os.path.join(var_dir, "quarantine"), os.path.join(var_dir, "journal"))
        self._conn: sqlite3.Connection | None = None
        self.projection: Projection | None = None
        self._in_batch = False
        # The COMMIT of batches that wrote only events may wait (commit_projection(defer=True)): the
        # transaction stays open, and whatever uses the database next commits it first (`db`).
        self._deferred = False
        self._uncommitted: list[dict] = []  # the events of the durable batches the open transaction holds
        # The open transaction also holds merged batches whose events are not kept (hold_merged):
        # a ROLLBACK applies the log from the recorded offsets instead.
        self._held = False
        self._checkpointer: threading.Thread | None = None  # see BACKGROUND_CHECKPOINT_BYTES
        self.behind = ""  # why the projection lacks lines that are in the log (a failed COMMIT)
        self._batch_events: list[dict] = []
        self._flushed: dict = {}  # log files the durable, not yet committed batch wrote to
        self._extra_schema: list[str] = []
        self._extra_appliers: dict = {}
        self._extra_derive: list[str] = []

    @property
    def db(self) -> sqlite3.Connection | None:
        """The connection; a COMMIT that was deferred is done first (outside a batch, every use of the
        database sees a committed projection, as if the COMMIT had not waited)."""
        if self._deferred:
            self.commit_deferred()
        return self._conn

    @db.setter
    def db(self, conn: sqlite3.Connection | None) -> None:
        self._conn = conn

    def extend(self, schema_sql: str, appliers: dict, derive=None) -> None:
        """Add the tables and event appliers of another component (call before `open`).

        An applier is called as fn(event, ns); it writes through `store.projection.db`,
        which is the database being built during a rebuild too. A rebuild creates the
        component's indexes and triggers only after loading every event, then runs
        `derive` (SQL text, or a function of the connection) to fill what its triggers
        would have maintained.
        """
        self._extra_schema.append(schema_sql)
        self._extra_appliers.update(appliers)
        if derive:
            self._extra_derive.append(derive)

    def _schema_sql(self) -> str:
        return _SCHEMA + "".join(self._extra_schema)

    def _schema_hash(self) -> str:
        return hashlib.sha256(self._schema_sql().encode()).hexdigest()[:16]

    # lifecycle

    def open(self, progress=None) -> dict:
        """Repair torn tails, open or rebuild the projection, apply what it lacks."""
        os.makedirs(self.sync_dir, exist_ok=True)
        self.log.recover()
        self.log.repair_torn_tails()
        rebuilt = ""
        try:
            self._open_db()
        except NeedsRebuild as why:
            log.warning("rebuilding the projection: %s", why)
            self.rebuild(progress=progress)
            rebuilt = str(why)
        applied = self.catch_up()
        return {"rebuilt": rebuilt, "caught_up": applied}

    def _open_db(self) -> None:
        if not os.path.exists(self.db_path):
            raise NeedsRebuild("no database yet")
        conn = None
        try:
            conn = connect(self.db_path)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                raise NeedsRebuild(f"schema version {version}, expected {SCHEMA_VERSION}")
            row = conn.execute("SELECT value FROM meta WHERE key='schema_hash'").fetchone()
            if row is None or row[0] != self._schema_hash():
                raise NeedsRebuild("the schema changed")
            self._check_integrity(conn)
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            raise NeedsRebuild(f"database unreadable: {exc}") from None
        except NeedsRebuild:
            conn.close()
            raise
        self._attach(conn)

    def _check_integrity(self, conn: sqlite3.Connection) -> None:
        """A whole-database check costs seconds at a million messages, so a large database gets the
        cheap checks only: its size against its page count, and the small tables that steer
        everything else. (A killed process cannot damage a WAL database; a disk or a hand can.)
        A small one, or one a request found damaged (`distrust`), is checked in full."""
        page_size, pages = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_size", "page_count"))
        if page_size * pages > os.path.getsize(self.db_path) + _wal_size(self.db_path):
            raise NeedsRebuild("the database file is shorter than its pages")
        if not os.path.exists(self._suspect_marker()) and page_size * pages > _FULL_CHECK_BYTES:
            checks = [f"PRAGMA quick_check({t})" for t in ("meta", "log_files", "counters", "keysets")]
        else:
            checks = ["PRAGMA quick_check"]
        for sql in checks:
            ok = conn.execute(sql).fetchone()[0]
            if ok != "ok":
                raise NeedsRebuild(f"integrity check failed: {ok}")
        _remove(self._suspect_marker())

    def _suspect_marker(self) -> str:
        return os.path.join(self.var_dir, "projection.suspect")

    def distrust(self) -> None:
        """A query failed with a database error: check the whole database at the next start."""
        try:
            with open(self._suspect_marker(), "w"):
                pass
        except OSError:
            pass

    def _attach(self, conn: sqlite3.Connection) -> None:
        # WAL checkpoints run from `maintain`, after replies are sent, instead of
        # stalling whichever COMMIT crosses SQLite's automatic threshold.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA journal_size_limit={BACKGROUND_CHECKPOINT_BYTES}")
        self.db = conn
        self.projection = Projection(conn, self._extra_appliers)

    def maintain(self) -> None:
        """Idle-time upkeep: fsync the log files (emptying the journal) and checkpoint the WAL."""
        if self._in_batch or self.holding:
            return
        try:
            self.ensure_current()
        except StorageFailure as exc:
            log.warning("%s", exc)
        self.log.checkpoint()
        if self._checkpointer is not None:
            if self._checkpointer.is_alive():
                return
            self._checkpointer = None
        try:
            wal = os.path.getsize(self.db_path + "-wal")
        except OSError:
            wal = 0
        if wal > BACKGROUND_CHECKPOINT_BYTES:
            self._checkpointer = threading.Thread(target=_checkpoint, args=(self.db_path,), daemon=True,
                                                  name="thrum-wal-checkpoint")
            self._checkpointer.start()
            return
        try:
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            log.warning("WAL checkpoint failed: %s", exc)

    def _join_checkpointer(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.join(timeout=120)  # bounded: a checkpoint of a large WAL takes seconds
            self._checkpointer = None

    def close(self) -> None:
        self._join_checkpointer()
        if self.db is not None:
            try:
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self.db.close()
            self.db = None
        self.log.close()

    def rebuild(self, progress=None) -> int:
        """Project the whole log into a fresh database, then swap it in. Returns the event count.

        Memory stays flat whatever the log's size: the files are read in chunks, merged by time,
        and each one is applied in its own order (every append follows what it depends on in the
        same file, and the appliers do not depend on the order across files: a read marker may
        arrive before its message). Indexes, triggers and the derived tables are built once,
        after the load.
        """
        self._join_checkpointer()  # no connection of ours may be on the file being replaced
        if self.db is not None:
            self.db.close()
            self.db = None
        tmp = self.db_path + ".rebuild"
        for suffix in ("", "-wal", "-shm"):
            _remove(tmp + suffix)
        conn = connect(tmp)
        # A crash here just means rebuilding again: no syncs, a larger page cache, and while the log is
        # loaded the journal in memory, not off: a batch with an event its applier cannot take is
        # rolled back to its savepoint and applied again one event at a time, and without a journal
        # SQLite's ROLLBACK TO is undefined (it dropped every batch before). The database is empty
        # when the load begins, so that journal holds only pages a batch changed that existed before
        # it. The indexes and derived tables are built with no journal (nothing there rolls back;
        # dropping the temporary index would journal 65 MiB).
        conn.execute("PRAGMA journal_mode=MEMORY")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-8192")
        tables, later = _split_schema(self._schema_sql())
        conn.executescript(tables)
        conn.execute("INSERT INTO meta VALUES ('schema_hash', ?)", (self._schema_hash(),))
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        proj = Projection(conn, self._extra_appliers, bulk=True)
        self.projection = proj  # extra appliers reach the database being built through store.projection.db
        files = self.log.files()
        total_bytes = sum(self.log.size(rel) for rel in files) or 1
        reader = LogReader(self.log, files, shape=bulk_item)
        total = 0
        last_report = 0
        conn.execute("BEGIN")
        try:
            for batch in reader:
                total += proj.apply_items(batch)
                if reader.bad:
                    self._record_bad_lines(conn, reader.bad)
                    reader.bad.clear()
                if progress and reader.done - last_report >= (1 << 20):
                    last_report = reader.done
                    progress("reading the log (KiB)", -(-reader.done // 1024), -(-total_bytes // 1024))
        finally:
            reader.close()
        self._record_bad_lines(conn, reader.bad)
        conn.executemany("INSERT OR REPLACE INTO log_files VALUES (?,?,?)",
                         [(rel, end, tail) for rel, (end, tail) in reader.ends.items()])
        if progress:
            progress("reading the log (KiB)", -(-total_bytes // 1024), -(-total_bytes // 1024))
        conn.execute("COMMIT")
        # Nothing reads the old database: removing it now (freeing a 2 GB file takes 0.7 s) overlaps
        # the indexing instead of delaying the swap. A rebuild that fails from here on leaves no
        # projection, which the next start rebuilds, as after a crash. The main file goes last: its
        # name is gone as soon as its removal starts, so the swap below is safe even if that outlasts
        # the join's bound.
        remover = threading.Thread(target=_remove_all, args=[self.db_path + x for x in ("-wal", "-shm", "")],
                                   name="thrum-old-projection", daemon=True)
        remover.start()
        try:
            self._derive(conn, later, progress)
        finally:
            remover.join(timeout=120)
        os.replace(tmp, self.db_path)
        _remove(self._suspect_marker())
        for suffix in ("-wal", "-shm"):
            _remove(tmp + suffix)
        self._attach(connect(self.db_path))
        return total

    def _derive(self, conn: sqlite3.Connection, later: list, progress) -> None:
        """A rebuild's second part: the indexes and triggers (`later`) and the derived tables, then
        WAL mode; closes `conn`."""
        conn.execute("PRAGMA journal_mode=OFF")
        # What follows is mostly sorting (CREATE INDEX, ORDER BY), on one core while the reader
        # process has ended: SQLite's sorter may sort in helper threads, each in up to a page
        # cache's worth of memory, so the cache shrinks as they start. At 1M: 12.1 -> 10.8 s,
        # the peak RSS 56 -> 53 MiB (two threads with the load's 8 MiB cache: 89 MiB).
        if (os.cpu_count() or 1) > 1:
            conn.execute("PRAGMA threads=2")
            conn.execute("PRAGMA cache_size=-2048")
        conn.execute("BEGIN")
        steps = later + _split_statements(_DERIVE_SQL)
        for derive in self._extra_derive:
            steps += [derive] if callable(derive) else _split_statements(derive)
        for i, step in enumerate(steps):
            if callable(step):
                step(conn)
            else:
                conn.execute(step)
            if progress:
                progress("indexing", i + 1, len(steps))
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()

    def catch_up(self) -> int:
        """Apply log lines past the recorded offsets (after a crash, or lines added by another process).

        Each file a CATCH_UP_BYTES chunk at a time, each chunk in (timestamp, event_id) order, as a sync
        merge applies a peer's lines: memory stays flat however far behind the projection is (a merge of
        100,000 events cut short by a crash leaves that many lines past the offsets)."""
        db = self.db
        known = {row[0]: (row[1], row[2]) for row in db.execute("SELECT path, offset, tail FROM log_files")}
        applied = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            for rel in self.log.files():
                size = self.log.size(rel)
                offset, tail = known.get(rel, (0, b""))
                if offset > size or not self.log.tail_matches(rel, offset, tail):
                    log.warning("%s changed below its recorded offset; rescanning it", rel)
                    offset = 0
                while offset < size:
                    lines, end = self.log.read_from(rel, offset, CATCH_UP_BYTES)
                    if not lines:
                        break  # only a partial line (being appended): the next catch-up takes it
                    pending = []
                    for line, line_end in lines:
                        event = self._parse(db, rel, line, line_end)
                        if event is not None:
                            pending.append((order_key(event), event))
                    pending.sort(key=lambda item: item[0])
                    applied += len(self.projection.apply_all([(event, key[0]) for key, event in pending]))
                    db.execute("INSERT OR REPLACE INTO log_files VALUES (?,?,?)",
                               (rel, end, (lines[-1][0][-_TAIL:] + b"\n")[-_TAIL:]))
                    offset = end
            db.execute("COMMIT")
        except BaseException:
            self.projection.version += 1  # what this catch-up applied is undone
            if db.in_transaction:  # a failed COMMIT may have rolled back already
                db.execute("ROLLBACK")
            raise
        if applied:
            log.info("caught up %d event(s) from the log", applied)
        return applied

    def _parse(self, db: sqlite3.Connection, rel: str, line: bytes, end: int) -> dict | None:
        if not line.strip():
            return None
        try:
            return decode_event(line)
        except EventError as exc:
            self._record_bad_lines(db, [bad_line(rel, line, end, exc)])
            return None

    @staticmethod
    def _record_bad_lines(db: sqlite3.Connection, bad: list) -> None:
        """Lines that are not events stay in the log; the projection remembers where they are."""
        for rel, offset, error, sample in bad:
            db.execute("INSERT OR IGNORE INTO bad_lines VALUES (?,?,?,?)", (rel, offset, error, sample))
            log.warning("kept an unparseable line in %s at byte %d: %s", rel, offset, error)

    # batches: begin -> (savepoint, append..., release | rollback_to)* -> commit | rollback

    @property
    def in_batch(self) -> bool:
        return self._in_batch

    @property
    def holding(self) -> bool:
        """A sync merge's transaction is open, its COMMIT waiting for the merge to end (hold_merged)."""
        return self._deferred and self._held

    def begin(self, merged: bool = False) -> None:
        if self._deferred and self._held and not merged:
            # A request never shares a transaction with batches only the log could restore:
            # undoing a failed request (undo_to) applies again only the events kept in memory.
            self.commit_deferred()
        if self._deferred:  # the next batch goes on in the transaction whose COMMIT waits
            self._deferred = False
            self._in_batch = True
        if not self._in_batch:
            self.ensure_current()
            self.db.execute("BEGIN IMMEDIATE")
            self._in_batch = True

    def savepoint(self) -> tuple[int, int]:
        self.begin()
        self.db.execute("SAVEPOINT req")
        return self.log.mark(), len(self._batch_events)

    def release(self) -> None:
        self.db.execute("RELEASE req")

    def rollback_to(self, mark: tuple[int, int]) -> None:
        self.projection.version += 1  # cached lookups may describe what is being undone
        self.db.execute("ROLLBACK TO req")
        self.db.execute("RELEASE req")
        self.log.discard(mark[0])
        del self._batch_events[mark[1]:]

    # A request that writes only events can do without a savepoint: while one is open, SQLite copies
    # every page the request changes into a statement journal, and a send changes more pages than
    # that journal keeps in memory (64 KiB), so it goes through a temp file. Undoing such a request
    # rolls the batch back and applies the batch's earlier events again, which is right only while
    # nothing else in the transaction wrote (the daemon checks: Daemon.dispatch).

    def mark(self) -> tuple[int, int, int]:
        """Where the open batch is now, for undo_to()."""
        self.begin()
        return self.log.mark(), len(self._batch_events), self.db.total_changes

    def undo_to(self, mark: tuple[int, int, int]) -> None:
        """Undo what was written after mark(), which took no savepoint. If applying the earlier events
        again fails, the whole batch is dropped (as by rollback()) and StorageFailure raised."""
        log_mark, n_events, changes = mark
        if self.db.total_changes == changes and len(self._batch_events) == n_events and self.log.mark() == log_mark:
            return  # it failed before writing anything (a validation error)
        kept = self._batch_events[:n_events]
        self.projection.version += 1  # cached lookups may describe what is being undone
        self.log.discard(log_mark)
        del self._batch_events[n_events:]
        try:
            self.db.execute("ROLLBACK")
            self.db.execute("BEGIN IMMEDIATE")
            for event in self._uncommitted + kept:  # the same events on the same state: the same rows (and rowids)
                self.projection.apply(event)
        except Exception as exc:
            self._in_batch = True  # whatever is open goes; the batches whose COMMIT waits are applied again
            self.rollback()
            raise StorageFailure(f"the batch could not be applied again after a failed request: {exc}") from exc

    def append(self, etype: str, payload: dict, *, author: str | None = None) -> dict:
        """Stage one new event and apply it inside the open batch; returns the event."""
        ns = now_ns()
        event = dict(payload)
        event["type"] = etype
        event["event_id"] = new_id("evt")
        event["timestamp"] = format_ns(ns)
        event["v"] = 1
        event["origin_daemon"] = self.origin_daemon
        return self.append_event(event, author=author, ns=ns, fresh=True)

    def append_event(self, event: dict, *, author: str | None = None, ns: int | None = None,
                     fresh: bool = False) -> dict:
        line = encode_line(event)
        if len(line) > MAX_LINE_BYTES:
            raise EventError(f"the event is {len(line)} bytes encoded; the limit is {MAX_LINE_BYTES}")
        rel = shard_for(event, author)
        self.begin()
        self.log.stage(rel, line)
        self.projection.fresh = fresh
        try:
            self.projection.apply(event, ns)
        finally:
            self.projection.fresh = False
        self._batch_events.append(event)
        return event

    def commit(self) -> list[dict]:
        """Make the batch durable (log first, then projection); returns its new events."""
        events = self.make_durable()
        self.commit_projection()
        return events

    def make_durable(self, keep: bool = True) -> list[dict]:
        """Write and sync the batch's log lines: from here on the writes have happened.

        The projection's transaction stays open until commit_projection(), so the daemon can
        answer in between (the database is not what makes a write durable). Without `keep`,
        the events are not kept for applying again after a ROLLBACK: the log is read instead."""
        if not self._in_batch:
            return []
        events, self._batch_events = self._batch_events, []
        try:
            self._flushed.update(self.log.flush())
        except StorageFailure:
            self.projection.version += 1
            self._in_batch = False
            try:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            finally:
                self._reapply_uncommitted()
            raise
        if keep:
            self._uncommitted.extend(events)
        else:
            self._held = True
        return events

    def hold_merged(self) -> list[dict]:
        """Make a batch of merged lines durable and leave its COMMIT waiting for the next one.

        A sync merge projects a peer's lines a chunk at a time. Committing each chunk rewrote the
        same index pages (the peer's messages land among the newest of every index) for every
        chunk, and checkpointing them again; one COMMIT for the merge writes them once. The
        events are not kept in memory meanwhile (a merge can hold a hundred thousand): a ROLLBACK
        applies the logged lines from the offsets of the last COMMIT, as after a crash. Whatever
        uses the database commits first (`db`); idle upkeep waits (`holding`)."""
        events = self.make_durable(keep=False)
        self.commit_projection(defer=True)
        return events

    def commit_projection(self, defer: bool = False) -> bool:
        """COMMIT the projection; with `defer`, later: the transaction stays open for the next batch
        until something else uses the database (see `db`) or commit_deferred() is called. Only for
        batches that wrote nothing but events: after a ROLLBACK they are applied again from
        `_uncommitted` (a crash loses nothing either: catch-up applies the logged lines).
        Returns True when the COMMIT waits."""
        if not self._in_batch:
            return False
        if defer:
            self._in_batch = False
            self._deferred = True
            return True
        self._uncommitted, self._held = [], False
        flushed, self._flushed = self._flushed, {}
        try:
            for rel, (size, tail) in flushed.items():
                self.db.execute("INSERT OR REPLACE INTO log_files VALUES (?,?,?)", (rel, size, tail[-_TAIL:]))
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            # The lines are durable, so the writes happened: the callers must hear success
            # (an error would make them retry and duplicate). Apply the lines from the log.
            self._in_batch = False
            self._project_from_log(f"the database commit failed ({exc})")
        self._in_batch = False

    def commit_deferred(self) -> None:
        """The COMMIT that commit_projection(defer=True) left for later, if any."""
        if self._deferred:
            self._deferred = False
            self._in_batch = True
            self.commit_projection()

    def _reapply_uncommitted(self) -> None:
        """After a ROLLBACK: the durable batches whose COMMIT was deferred are applied again, in an open
        transaction whose COMMIT waits; if that fails, from the log."""
        events, self._uncommitted = self._uncommitted, []
        if self._held:
            self._flushed = {}
            self._project_from_log("a merge's open transaction was rolled back")
            return
        if not events:
            return
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            for event in events:
                self.projection.apply(event)
        except Exception as exc:
            self._flushed = {}
            self._project_from_log(f"applying the deferred batches again failed ({exc})")
            return
        self._uncommitted = events
        self._deferred = True

    def _project_from_log(self, why: str) -> None:
        """Drop the failed transaction and catch up from the log, now or before the next write."""
        self.projection.version += 1
        self._uncommitted, self._held, self._deferred = [], False, False
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite may have rolled back already
        self.behind = why
        log.error("%s; applying the logged lines from the log instead", why)
        try:
            self.ensure_current()
        except StorageFailure as exc:
            log.error("%s; will retry before the next write", exc)

    def ensure_current(self) -> None:
        """Before a write: a projection that missed logged lines catches up first, or the write fails.

        A write validated against a projection that lacks logged lines could duplicate
        them (a client_id retry), so it is refused with StorageFailure before it logs anything.
        """
        if not self.behind or self._in_batch:
            return
        try:
            self.catch_up()
        except sqlite3.Error as exc:
            raise StorageFailure(f"the database is behind the log and cannot catch up: {exc}") from None
        self.projection.version += 1
        log.warning("the projection caught up with the log after: %s", self.behind)
        self.behind = ""

    def rollback(self) -> None:
        if self.projection is not None:
            self.projection.version += 1
        if self._in_batch:
            self._in_batch = False
            try:
                if self._conn.in_transaction:  # SQLite may have rolled back already (a full disk)
                    self._conn.execute("ROLLBACK")
            finally:
                self._reapply_uncommitted()
        self.log.discard(0)
        self._batch_events = []

    # lines merged from elsewhere (sync)

    def append_foreign_lines(self, rel: str, lines: list) -> list[dict]:
        """Append lines written by another clone verbatim and project them (inside a batch).

        `lines` holds lines, or (line, event) pairs when the caller decoded them already (None
        for a line that is not an event). The caller has already dropped lines whose event_id
        is known. Unparseable lines are appended too, and reported as bad lines: the union never
        drops one.
        """
        events = []
        bad = []
        self.begin(merged=True)
        # Alone in its batch (a merge's chunk: Daemon.run_write), the chunk can do without a savepoint:
        # if it fails, the transaction is rolled back and what it held comes again from the log.
        alone = not self._batch_events and self.log.mark() == 0
        for item in lines:
            line, event = item if isinstance(item, tuple) else (item, None)
            if not line.endswith(b"\n"):
                line += b"\n"
            self.log.stage(rel, line)
            if event is None:
                try:
                    event = decode_event(line)
                except EventError as exc:
                    bad.append((rel, -now_ns(), f"from remote: {exc}", line[:200].decode("utf-8", "replace")))
                    log.warning("kept an unparseable remote line in %s: %s", rel, exc)
                    continue
            events.append((order_key(event), event))
        events.sort(key=lambda pair: pair[0])
        pairs = [(e, key[0]) for key, e in events]  # instants parsed once
        if not alone:
            new = self.projection.apply_all(pairs)
        else:
            try:
                new = self.projection.apply_all(pairs, savepoint=False)
            except Exception as exc:
                self._reproject_before(exc)
                new = self.projection.apply_all(pairs)
        self.db.executemany("INSERT OR IGNORE INTO bad_lines VALUES (?,?,?,?)", bad)
        self._batch_events.extend(new)
        return new

    def _reproject_before(self, exc: Exception) -> None:
        """A chunk applied without a savepoint failed: drop the open transaction (the chunk and any
        batches whose COMMIT waits), apply the logged lines again from the log, then begin anew, so
        the chunk can go again event by event (the guard skips and records the one that fails). Its
        lines stay staged: they are not in the log yet."""
        log.info("a merged chunk failed at once (%s: %s); applying it event by event", type(exc).__name__, exc)
        self._in_batch = False
        self._flushed = {}
        self._project_from_log("a merged chunk was rolled back")
        self.begin(merged=True)  # StorageFailure if the log could not be applied

    def known_event_ids(self, ids: list[str]) -> set[str]:
        out: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            q = "SELECT event_id FROM applied WHERE event_id IN (%s)" % ",".join("?" * len(chunk))
            # (a read of this connection's own open transaction: no need to commit a merge's first)
            out.update(r[0] for r in self._conn.execute(q, chunk))
        return out

    # health

    def stats(self) -> dict:
        """Counts for reports. (Not the events: counting a million ledger rows takes 0.4 s, and the
        callers, migrate and restore, have the count their rebuild returned.)"""
        q = self.db.execute
        return {
            "messages": q("SELECT COALESCE(MAX(rowid), 0) FROM messages").fetchone()[0],  # rows are never removed
            "agents": q("SELECT COUNT(*) FROM agents").fetchone()[0],
            "bad_lines": q("SELECT COUNT(*) FROM bad_lines").fetchone()[0],
        }


def _checkpoint(db_path: str) -> None:
    """PASSIVE: copies what it can without waiting for, or blocking, the daemon's connection."""
    try:
        conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        log.warning("WAL checkpoint failed: %s", exc)


def _remove_all(*paths: str) -> None:
    for path in paths:
        _remove(path)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
