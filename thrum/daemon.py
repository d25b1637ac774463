"""The daemon: one selectors loop, its Unix-socket server, and its lifecycle.

The loop serves every connection, timer and child process of the daemon; the only
thread besides it checkpoints a large WAL (store.py). Each turn it reads what is
ready, runs every complete request as one batch (group commit: one fsync for all
the writes of the turn, see store.py), then answers. Slow work (git) runs in child
processes whose pipes the loop watches, so it never blocks a request; each runs in
a process group of its own, on record in `var/children`, so the daemon that starts
after one was killed stops what it left running (children.py).

Lifecycle: the flock on `var/thrum.lock` is taken before anything else and held
for the daemon's life (the file is never unlinked, so two starts can never both
win); then the JSON pid file, the store, and last the socket, so a successful
`health` call means the daemon is ready.
"""

from __future__ import annotations

import errno
import fcntl
import heapq
import json
import logging
import logging.handlers
import os
import selectors
import signal
import sqlite3
import socket
import struct
import subprocess
import sys
import time
import traceback

from thrum import __version__
from thrum.children import ChildLedger
from thrum.components import (  # re-exported: make_store and the rest used to live here
    COMPONENT_MODULES, LOCK_NAME, make_store, origin_daemon_id, component_factories as _component_factories)
from thrum.events import now_timestamp
from thrum.proc import stat_fields
from thrum.rpc import (
    Deferred, InternalError, InvalidParams, LineFramer, Oversized, Params, StorageError, ThrumError, TooLarge,
    decode_request, encode_error, encode_notification, encode_response, request_id_of, MAX_LINE,
)

__all__ = ["Loop", "Daemon", "run_daemon", "LOCK_NAME", "PID_NAME", "SOCKET_NAME", "LOG_NAME"]

log = logging.getLogger("thrum.daemon")

PID_NAME, SOCKET_NAME, LOG_NAME = "thrum.pid", "thrum.sock", "daemon.log"
CHILDREN_NAME = "children"  # var/children: see children.py
MAX_BATCH = 1000               # requests run per loop turn, so one flood cannot starve timers
COMMIT_DELAY = 0.005           # seconds a projection COMMIT of send-only batches may wait (Daemon._run_batch)
MAX_OUTBUF = 16 * 1024 * 1024  # a reader this far behind is cut off rather than grow memory
MAX_CONNECTIONS = 1024
READ_CHUNK = 256 * 1024


# -- the loop --------------------------------------------------------------------

class Loop:
    """A selectors loop with timers, a self-pipe for signals, and async child processes."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._timers: list = []
        self._seq = 0
        self._soon: list = []
        self.running = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wakeup)
        self.after_turn = []  # callables run after each turn's ready handlers (batch commit)
        self.ledger = None  # a children.ChildLedger: the daemon's record of the children running

    # scheduling

    def call_later(self, delay: float, fn, *args) -> list:
        self._seq += 1
        entry = [time.monotonic() + max(0.0, delay), self._seq, fn, args, False]
        heapq.heappush(self._timers, entry)
        return entry

    @staticmethod
    def cancel(entry: list) -> None:
        entry[4] = True

    def call_soon(self, fn, *args) -> None:
        self._soon.append((fn, args))
        self.wakeup()

    def wakeup(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    def _drain_wakeup(self, mask: int) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def install_signal_wakeup(self) -> None:
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)

    # fds

    def add_reader(self, fileobj, callback) -> None:
        self.selector.register(fileobj, selectors.EVENT_READ, callback)

    def add_writer(self, fileobj, callback) -> None:
        self.selector.register(fileobj, selectors.EVENT_WRITE, callback)

    def modify(self, fileobj, events: int, callback) -> None:
        self.selector.modify(fileobj, events, callback)

    def remove(self, fileobj) -> None:
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    # running

    def run_once(self, max_wait: float = 1.0) -> None:
        timeout = max_wait
        if self._soon:
            timeout = 0
        elif self._timers:
            timeout = max(0.0, min(timeout, self._timers[0][0] - time.monotonic()))
        for key, mask in self.selector.select(timeout):
            try:
                key.data(mask)
            except Exception:  # one bad handler must not stop the daemon
                log.error("handler failed:\n%s", traceback.format_exc())
        soon, self._soon = self._soon, []
        for fn, args in soon:
            self._guard(fn, *args)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            entry = heapq.heappop(self._timers)
            if not entry[4]:
                self._guard(entry[2], *entry[3])
        for fn in self.after_turn:
            self._guard(fn)

    @staticmethod
    def _guard(fn, *args) -> None:
        try:
            fn(*args)
        except Exception:
            log.error("callback failed:\n%s", traceback.format_exc())

    def close(self) -> None:
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:
            pass
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # child processes

    def spawn(self, argv: list[str], on_done, *, cwd: str | None = None, env: dict | None = None,
              timeout: float = 30.0, stdin_data: bytes | None = None, max_output: int = 64 * 1024 * 1024):
        """Run a child without blocking; call on_done(returncode, stdout, stderr) when it ends.

        A child past its timeout is killed and reported with returncode -9. Output
        beyond `max_output` bytes is dropped (and the child killed), bounding memory.
        """
        return _Child(self, argv, on_done, cwd, env, timeout, stdin_data, max_output)


class _Child:
    def __init__(self, loop: Loop, argv, on_done, cwd, env, timeout, stdin_data, max_output) -> None:
        self.loop, self.on_done, self.max_output = loop, on_done, max_output
        self.out, self.err = bytearray(), bytearray()
        self.open_pipes = 2
        self.done = False
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE if stdin_data is not None
                                     else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     close_fds=True, start_new_session=True)
        if loop.ledger is not None:
            loop.ledger.started(self.proc.pid)
        self._stdin = None
        self._source = None
        if stdin_data is not None:
            # Fed by the loop as the pipe drains: a blocking write of more than a pipe
            # buffer would stall the loop, or deadlock with a child blocked on stdout.
            # Bytes, or an object with read(n) (e.g. a file prefix), read a chunk at a time.
            if hasattr(stdin_data, "read"):
                self._source, self._stdin = stdin_data, memoryview(b"")
            else:
                self._stdin = memoryview(stdin_data)
            os.set_blocking(self.proc.stdin.fileno(), False)
            loop.add_writer(self.proc.stdin, lambda mask: self._write())
        for pipe, buf in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            os.set_blocking(pipe.fileno(), False)
            loop.add_reader(pipe, lambda mask, p=pipe, b=buf: self._read(p, b))
        self.timer = loop.call_later(timeout, self._timeout)

    def _write(self) -> None:
        try:
            while True:
                if not self._stdin and self._source is not None:
                    self._stdin = memoryview(self._source.read(READ_CHUNK))
                if not self._stdin:
                    break
                written = os.write(self.proc.stdin.fileno(), self._stdin[:READ_CHUNK])
                self._stdin = self._stdin[written:]
        except BlockingIOError:
            return
        except OSError:  # the child stopped reading (exited or closed stdin)
            pass
        self._close_stdin()

    def _close_stdin(self) -> None:
        if self._stdin is None:
            return
        self._stdin = None
        if self._source is not None:
            self._source.close()
            self._source = None
        self.loop.remove(self.proc.stdin)
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def _read(self, pipe, buf: bytearray) -> None:
        try:
            data = os.read(pipe.fileno(), READ_CHUNK)
        except BlockingIOError:
            return
        if data:
            if len(buf) < self.max_output:
                buf += data
            else:
                self.kill()
            return
        self.loop.remove(pipe)
        pipe.close()
        self.open_pipes -= 1
        if self.open_pipes == 0:
            self._finish(self.proc.wait())

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _timeout(self) -> None:
        if not self.done:
            self.err += b"\n[thrum] killed: timed out"
            self.kill()

    def _finish(self, code: int) -> None:
        if self.done:
            return
        self.done = True
        if self.loop.ledger is not None:
            self.loop.ledger.ended(self.proc.pid)
        self._close_stdin()
        Loop.cancel(self.timer)
        self.on_done(code, bytes(self.out), bytes(self.err))


# -- connections --------------------------------------------------------------------

def accept_waiting(listener: socket.socket, limit: int = 64):
    """The connections waiting on a non-blocking listener, made non-blocking; at most `limit` per
    loop turn, so a flood of connections cannot starve the clients already served."""
    for _ in range(limit):
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("accept failed: %s", exc)
            return
        sock.setblocking(False)
        yield sock


class SocketPeer:
    """A non-blocking socket on the loop: `_read` when readable, `outbuf` drained when writable.

    Subclasses (Unix-socket clients here, HTTP/WebSocket clients in ws.py) implement `_read`,
    `_flush` (usually `_drain` then `_watch_writes`) and `close`.
    """

    def __init__(self, loop: Loop, sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock
        self.outbuf = bytearray()
        self.writing = False
        self.closed = False

    def on_event(self, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            self._read()
        if mask & selectors.EVENT_WRITE and not self.closed:
            self._flush()

    def _recv(self) -> bytes | None:
        """What the peer sent (b"" at its end), or None: nothing yet, or an error (we closed)."""
        try:
            return self.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            self.close()
            return None

    def _drain(self) -> bool:
        """Send what the socket takes now; False if the peer is gone (we closed)."""
        try:
            while self.outbuf:
                sent = self.sock.send(self.outbuf)
                del self.outbuf[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.close()
            return False
        return True

    def _watch_writes(self) -> None:
        """Ask for writability only while output waits (a writable socket would wake the loop for nothing)."""
        want = bool(self.outbuf)
        if want != self.writing:
            self.writing = want
            self.loop.modify(self.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0), self.on_event)


class Connection(SocketPeer):
    """One client of the Unix socket: a framer in, a buffer out, a call context."""

    def __init__(self, daemon: "Daemon", sock: socket.socket, ctx) -> None:
        super().__init__(daemon.loop, sock)
        self.daemon = daemon
        self.framer = LineFramer(MAX_LINE)
        self.ctx = ctx
        self.on_close = []  # callbacks (subscription cleanup)

    def _read(self) -> None:
        data = self._recv()
        if data is None:
            return
        if not data:
            self.close()
            return
        for item in self.framer.feed(data):
            if isinstance(item, Oversized):
                self.daemon.enqueue(self, Ready(encode_error(None, TooLarge(
                    f"request line of {item.size} bytes is larger than the {MAX_LINE}-byte limit"))))
            else:  # an empty line too: it gets -32700 like any other non-JSON line (docs/rpc.md)
                self.daemon.enqueue(self, item)

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        self.outbuf += data
        if len(self.outbuf) > MAX_OUTBUF:
            log.warning("closing a connection that stopped reading (%d bytes queued)", len(self.outbuf))
            self.close()
            return
        self._flush()

    def _flush(self) -> None:
        if self._drain():
            self._watch_writes()

    def notify(self, method: str, params: dict) -> None:
        self.send(encode_notification(method, params))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.outbuf = bytearray()  # now, not when the garbage collector breaks the ctx.conn cycle
        self.daemon.loop.remove(self.sock)
        self.daemon.connections.discard(self)
        for fn in self.on_close:
            Loop._guard(fn)
        try:
            self.sock.close()
        except OSError:
            pass


class Ready(bytes):
    """A reply a transport has already encoded (e.g. for an oversized line); kept in order."""


# -- the daemon ---------------------------------------------------------------------

class StartError(Exception):
    """The daemon cannot start; the message says why."""


def _short_unix_path(path: str) -> tuple[str, int | None]:
    """AF_UNIX paths are limited to ~107 bytes; reach longer ones through /proc/self/fd."""
    if len(os.fsencode(path)) < 100:
        return path, None
    fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{os.path.basename(path)}", fd


def socket_answers(path: str, timeout: float = 0.5) -> bool:
    short, fd = _short_unix_path(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(short)
        return True
    except OSError:
        return False
    finally:
        s.close()
        if fd is not None:
            os.close(fd)


class Daemon:
    def __init__(self, paths, *, foreground: bool = False) -> None:
        self.paths = paths
        self.foreground = foreground
        self.loop = Loop()
        self.connections: set[Connection] = set()
        self.pending: list = []
        self.lock_fd: int | None = None
        self.listener: socket.socket | None = None
        self.store = None
        self.service = None
        self.stopping = False
        self.event_listeners = []  # callables(list of committed events)
        self.request_listeners = []  # callables(method, ctx) told of each request before it runs (sync: activity)
        self._maintenance = None
        self._commit_timer = None
        self.components = []       # objects with start() / stop() (sync loop, WebSocket server)

    # -- start ------------------------------------------------------------------------

    def acquire_lock(self) -> None:
        os.makedirs(self.paths.var, mode=0o700, exist_ok=True)
        os.chmod(self.paths.var, 0o700)
        fd = os.open(self.paths.var_file(LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise already_running(self.paths) from None
        self.lock_fd = fd

    def write_pid_file(self) -> None:
        from thrum.identity import atomic_write

        info = {"pid": os.getpid(), "repo_path": self.paths.repo, "started_at": now_timestamp(),
                "socket_path": self.paths.var_file(SOCKET_NAME), "version": __version__}
        atomic_write(self.paths.var_file(PID_NAME), json.dumps(info, indent=2).encode(), 0o600)

    def open_store(self) -> None:
        from thrum import sync
        from thrum.service import Service

        info = sync.repo_info(self.paths.main_repo)
        sync_dir = info.sync_dir
        if not os.path.isdir(sync_dir) or not sync.worktree_is_valid(info.toplevel, sync_dir):
            sync.ensure_sync_branch(info.toplevel, fetch_remote=False)
            moved = sync.ensure_worktree(info.toplevel, sync_dir)
            if moved:
                log.warning("the sync worktree was broken; the old copy is kept at %s", moved)
        from thrum import migrate

        self.store = make_store(self.paths, sync_dir, self.components)
        if migrate.needs_import(self.paths, sync_dir):
            # A Go-written (or older) .thrum/: import it before the projection opens, so its data
            # shows and the Go database (its read markers) is not replaced by a rebuild. A crashed
            # daemon's journal goes first, as in `thrum migrate`.
            self.store.log.recover()
            log.warning("imported an older or Go-written layout: %s", migrate.import_all(self.paths, sync_dir))
        origin = self.store.origin_daemon
        result = self.store.open()
        if result["rebuilt"]:
            log.info("projection rebuilt (%s)", result["rebuilt"])
        self.service = Service(self.store, repo_id=os.path.basename(self.paths.main_repo),
                               thrum_dir=self.paths.thrum, local_thrum=self.paths.local, origin_daemon=origin)
        self.service.ensure_everyone_group()
        self.sync_dir = sync_dir

    def open_socket(self) -> None:
        path = self.paths.var_file(SOCKET_NAME)
        if os.path.exists(path) or os.path.islink(path):
            if socket_answers(path):
                raise StartError(f"socket {path} is in use by another daemon")
            os.unlink(path)  # left behind by a daemon that died
        short, fd = _short_unix_path(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is created 0600: no window where others may connect
        try:
            sock.bind(short)
        finally:
            os.umask(old_umask)
            if fd is not None:
                os.close(fd)
        os.chmod(path, 0o600)
        sock.listen(128)
        sock.setblocking(False)
        self.listener = sock
        self.loop.add_reader(sock, self._accept)

    def start(self) -> None:
        self.acquire_lock()
        self.loop.ledger = ChildLedger(self.paths.var_file(CHILDREN_NAME))
        self.loop.ledger.stop_leftovers()  # git a killed daemon left running (we hold the lock: ours to stop)
        self.write_pid_file()
        self.open_store()
        for component in self.components:
            component.start(self)
        self.open_socket()
        self.loop.after_turn.append(self.process_pending)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.loop.install_signal_wakeup()
        log.info("thrum daemon %s ready (pid %d, repo %s)", __version__, os.getpid(), self.paths.repo)

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    def serve(self) -> None:
        while not self.stopping:
            self.loop.run_once()
        log.info("shutting down")

    def shutdown(self) -> None:
        if self.listener is not None:
            self.loop.remove(self.listener)
            self.listener.close()
            self.listener = None
            try:
                os.unlink(self.paths.var_file(SOCKET_NAME))
            except FileNotFoundError:
                pass
        for conn in list(self.connections):
            conn._flush()
            conn.close()
        for component in reversed(self.components):
            try:
                component.stop()
            except Exception:
                log.error("stopping %r failed:\n%s", component, traceback.format_exc())
        if self.store is not None:
            if self.store.in_batch:
                self.process_pending()
            self.store.close()
        info = read_pid_file(self.paths)
        if info.get("pid") == os.getpid():
            try:
                os.unlink(self.paths.var_file(PID_NAME))
            except FileNotFoundError:
                pass
        if self.loop.ledger is not None:
            self.loop.ledger.stop_running()  # what no component stopped, and an empty record for the next start
        self.loop.close()
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # releases the flock; the file itself stays
            self.lock_fd = None

    # -- connections -------------------------------------------------------------------

    def _accept(self, mask: int) -> None:
        from thrum.service import CallContext

        for sock in accept_waiting(self.listener):
            if not self._peer_allowed(sock) or len(self.connections) >= MAX_CONNECTIONS:
                sock.close()
                continue
            conn = Connection(self, sock, CallContext("unix"))
            conn.ctx.conn = conn
            self.connections.add(conn)
            self.loop.add_reader(sock, conn.on_event)

    @staticmethod
    def _peer_allowed(sock: socket.socket) -> bool:
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return False
        pid, uid, gid = struct.unpack("3i", creds)
        if uid != os.getuid():
            log.warning("refused a connection from uid %d (pid %d): only uid %d may connect",
                        uid, pid, os.getuid())
            return False
        return True

    # -- requests ------------------------------------------------------------------------

    def enqueue(self, conn, item) -> None:
        """Queue a request line (or a Ready reply) from any transport; answers keep this order."""
        self.pending.append((conn, item))

    def process_pending(self) -> None:
        """Run queued requests as batches: one durable commit per batch, then answer."""
        while self.pending:
            batch, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
            self._run_batch(batch)

    def _run_batch(self, batch: list) -> None:
        replies: list[tuple[object, bytes, bool]] = []
        store = self.store
        state = _BatchState()
        for conn, item in batch:
            if isinstance(item, Ready):
                replies.append((conn, bytes(item), False))
                continue
            # A lone request needs no savepoint: if it fails, the whole batch rolls back.
            reply, wrote = self.dispatch(conn, item, savepoint=len(batch) > 1, batch=state)
            if state.lost:  # the store dropped the batch: what the earlier requests wrote is gone
                state.lost = False
                failure = StorageError("the change was not saved: the batch failed")
                replies = [(c, encode_error(_reply_id(r), failure) if w else r, w) for c, r, w in replies]
            if reply is not None:
                replies.append((conn, reply, wrote))
        events: list[dict] = []
        if store.in_batch:
            try:
                events = store.make_durable()
            except Exception as exc:
                store.rollback()
                log.error("commit failed: %s", exc)
                failure = StorageError(f"the change was not saved: {exc}")
                replies = [(c, encode_error(_reply_id(r), failure) if wrote else r, wrote)
                           for c, r, wrote in replies]
        # The batch is durable: answer first, then commit the projection (nothing else runs
        # in between, so no request can see the projection before its commit).
        # A batch that wrote only events (sends) may leave its COMMIT to a later batch: the durable
        # log, not the database, makes a write happen, and a COMMIT writes every page the batch
        # changed to the WAL (two write calls a page), which cost a lone send more than all else
        # but the fdatasync. Anything that uses the database before then commits first (Store.db).
        deferred = False
        try:
            _send_replies(replies)
        finally:
            deferred = store.commit_projection(defer=not state.direct)
        if deferred and self._commit_timer is None:
            self._commit_timer = self.loop.call_later(COMMIT_DELAY, self._commit_deferred)
        if events:
            for listener in self.event_listeners:
                Loop._guard(listener, events)
            self._schedule_maintenance()

    def _commit_deferred(self) -> None:
        self._commit_timer = None
        self.store.commit_deferred()

    def _schedule_maintenance(self) -> None:
        # Soon after writes (and at least every half second under load) the log files
        # are fsynced and the journal emptied, off the path of any reply.
        if self._maintenance is None:
            self._maintenance = self.loop.call_later(0.5, self._maintain)

    def _maintain(self) -> None:
        self._maintenance = None
        self.store.maintain()
        if self.store.behind or self.store.holding:  # failing, or a merge is under way: later
            self._schedule_maintenance()

    def run_write(self, fn, hold: bool = False):
        """Run fn(store) as its own durable batch (for components: sync merges, git context).

        Appends made by `fn` are committed like a request's, and the committed
        events reach the event listeners (push notifications). If `fn` raises,
        nothing it appended is kept. With `hold` (a sync merge's chunks) the batch is
        durable but its COMMIT waits for the next chunk (Store.hold_merged).
        """
        self.process_pending()  # never mix with a half-built request batch
        store = self.store
        try:
            result = fn(store)
            events = store.hold_merged() if hold else store.commit()
        except BaseException:
            store.rollback()
            raise
        for listener in self.event_listeners:
            Loop._guard(listener, events)
        if events:
            self._schedule_maintenance()
        return result

    def _ensure_current(self) -> None:
        from thrum.store import StorageFailure

        try:
            self.store.ensure_current()
        except StorageFailure as exc:
            raise StorageError(f"the change was not saved: {exc}") from None

    def dispatch(self, conn, line, savepoint: bool = True, batch: "_BatchState | None" = None
                 ) -> tuple[bytes | None, bool]:
        """Run one request line; returns (encoded reply or None for a notification, wrote).

        Within a batch (`batch` given), a method that writes only events runs without a savepoint
        as long as no request before it in the batch wrote anything else (Store.mark/undo_to); a
        lone one too (its failure then does not undo a COMMIT that waits: Store.commit_projection)."""
        try:
            req = decode_request(line)
        except ThrumError as err:
            return encode_error(request_id_of(err), err), False
        ctx = conn.ctx
        for listener in self.request_listeners:
            listener(req.method, ctx)
        method = None
        changes = -1
        try:
            method = self.service.registry.lookup(req.method, ctx.transport)
            if method.writes:
                self._ensure_current()  # validation must see every logged line (client_id retries)
            fast = batch is not None and method.events_only and not batch.direct
            if batch is not None and not fast:
                changes = self.store.db.total_changes
            if fast:
                from thrum.store import StorageFailure

                mark = self.store.mark()
                try:
                    result = method.fn(Params(req.params), ctx)
                except BaseException:
                    try:
                        self.store.undo_to(mark)
                    except StorageFailure as exc:
                        batch.lost = True
                        raise StorageError(f"the change was not saved: {exc}") from None
                    raise
            elif method.writes and savepoint:
                mark = self.store.savepoint()
                try:
                    result = method.fn(Params(req.params), ctx)
                except BaseException:
                    self.store.rollback_to(mark)
                    raise
                self.store.release()
            elif method.writes:
                try:
                    result = method.fn(Params(req.params), ctx)
                except BaseException:
                    self.store.rollback()
                    raise
            else:
                result = method.fn(Params(req.params), ctx)
            if isinstance(result, Deferred):  # answered later, when the handler's work is done
                if not req.is_notification:
                    rid = req.id
                    result.bind(lambda ok, value: conn.send(
                        encode_response(rid, value) if ok else encode_error(rid, value)))
                reply = None
            else:
                reply = encode_response(req.id, result)
        except ThrumError as err:
            reply = encode_error(req.id, err)
        except (ValueError, TypeError) as exc:
            from thrum.events import EventError
            from thrum.identity import InvalidName

            if isinstance(exc, (InvalidName, EventError)):
                reply = encode_error(req.id, InvalidParams(str(exc)))
            else:
                log.error("%s failed:\n%s", req.method, traceback.format_exc())
                reply = encode_error(req.id, InternalError("Internal error", f"{type(exc).__name__}: {exc}"))
        except Exception as exc:
            log.error("%s failed:\n%s", req.method, traceback.format_exc())
            if isinstance(exc, sqlite3.DatabaseError) and self.store is not None:
                self.store.distrust()  # the next start checks the whole database (and rebuilds it if damaged)
            reply = encode_error(req.id, InternalError("Internal error", f"{type(exc).__name__}: {exc}"))
        if changes >= 0 and self.store.db.total_changes != changes:
            batch.direct = True  # an undo could not restore what this request wrote: savepoints from here on
        if req.is_notification:
            reply = None
        return reply, bool(method and method.writes)


class _BatchState:
    """What the requests of one batch did so far (Daemon.dispatch)."""

    __slots__ = ("direct", "lost")

    def __init__(self) -> None:
        self.direct = False  # a request wrote other than through events: undo_to() cannot restore it
        self.lost = False    # undo_to() failed and the store dropped the whole batch


def _send_replies(replies: list) -> None:
    """Each reply to its connection, in order; a Unix connection gets all of its replies in one
    write (a client with 64 requests in flight: one syscall instead of 64)."""
    joined: dict = {}
    for conn, reply, _ in replies:
        if type(conn) is Connection:
            joined.setdefault(conn, []).append(reply)
        else:  # a WebSocket frame holds one message
            conn.send(reply)
    for conn, parts in joined.items():
        conn.send(parts[0] if len(parts) == 1 else b"".join(parts))


def _reply_id(reply: bytes):
    try:
        return json.loads(reply).get("id")
    except ValueError:
        return None


# -- pid file, logging, entry point --------------------------------------------------------

def read_pid_file(paths) -> dict:
    try:
        with open(paths.var_file(PID_NAME), encoding="utf-8") as f:
            text = f.read().strip()
    except OSError:
        return {}
    if text.isdigit():  # the legacy bare-integer form
        return {"pid": int(text)}
    try:
        data = json.loads(text)
        return data if isinstance(data, dict) else {}
    except ValueError:
        return {}


def already_running(paths, wait: float = 2.0) -> "StartError":
    """The error for a start that found the lock held, naming the daemon that holds it.

    Right after a crash the pid file still names the dead daemon until the new holder
    (which locks first, then writes it) replaces it: wait, bounded, for a live pid.
    """
    deadline = time.monotonic() + wait
    info = read_pid_file(paths)
    while not (isinstance(info.get("pid"), int) and info["pid"] != os.getpid() and not not pid_alive(info["pid"])):
        if time.monotonic() >= deadline:
            info = {}
            break
        time.sleep(0.01)
        info = read_pid_file(paths)
    who = f" (PID {info['pid']})" if info.get("pid") else ""
    return StartError(f"daemon is already running{who} for repo {info.get('repo_path', paths.repo)}")


def lock_is_held(paths) -> bool:
    """True while some daemon holds the lock (the only trustworthy liveness test)."""
    try:
        # Read-only is enough for flock, and still works when .thrum/var is read-only.
        fd = os.open(paths.var_file(LOCK_NAME), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EACCES)
    finally:
        os.close(fd)
    return False


class _PrivateLogHandler(logging.handlers.RotatingFileHandler):
    """The log names agents and messages: 0600, also for the files rotation creates."""

    def _open(self):
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if os.fstat(fd).st_mode & 0o077:  # written by an older version
            os.fchmod(fd, 0o600)
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)


def setup_logging(paths, foreground: bool) -> None:
    os.makedirs(paths.var, mode=0o700, exist_ok=True)
    root = logging.getLogger("thrum")
    root.setLevel(logging.DEBUG if os.environ.get("THRUM_DEBUG") else logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    handler = _PrivateLogHandler(paths.log, maxBytes=5 * 1024 * 1024, backupCount=2)
    handler.setFormatter(fmt)
    root.addHandler(handler)
    if foreground and not _is_file(sys.stderr, paths.log):  # `start` sends our stderr to the log already
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(fmt)
        root.addHandler(stream)


def _is_file(stream, path: str) -> bool:
    try:
        a, b = os.fstat(stream.fileno()), os.stat(path)
    except (OSError, ValueError, AttributeError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def registered_methods(paths) -> dict[str, list[str]]:
    """{method: transports} of the registry a daemon for `paths` would serve, built as `daemon run`
    builds it (store and components, no socket). For fuzzers; the daemon must not be running."""
    paths = paths.for_daemon()
    daemon = Daemon(paths)
    daemon.components = [c for c in (f(paths) for f in _component_factories()) if c is not None]
    daemon.acquire_lock()
    try:
        daemon.open_store()
        for component in daemon.components:
            component.start(daemon)
        return {name: sorted(m.transports) for name, m in daemon.service.registry.methods.items()}
    finally:
        daemon.shutdown()


def run_daemon(paths, *, foreground: bool = False) -> int:
    """The body of `thrum daemon run`. Returns the process exit code."""
    paths = paths.for_daemon()
    setup_logging(paths, foreground)
    daemon = Daemon(paths, foreground=foreground)
    for factory in _component_factories():
        component = factory(paths)
        if component is not None:
            daemon.components.append(component)
    try:
        daemon.start()
    except StartError as exc:
        log.error("%s", exc)
        print(f"Error: {exc}", file=sys.stderr)
        if daemon.lock_fd is not None:
            daemon.shutdown()
        return 1
    except Exception as exc:
        log.error("start failed:\n%s", traceback.format_exc())
        print(f"Error: daemon failed to start: {exc}", file=sys.stderr)
        daemon.shutdown()
        return 1
    if foreground:
        print(f"thrum daemon {__version__} ready (pid {os.getpid()}, socket {paths.var_file(SOCKET_NAME)})",
              file=sys.stderr, flush=True)
    try:
        daemon.serve()
    finally:
        daemon.shutdown()
    return 0


# -- controlling a daemon from the CLI ------------------------------------------------------

def daemon_status(paths) -> dict:
    """{running, pid?, repo_path?, ...health} without trusting a possibly reused pid."""
    from thrum.rpc import Client, DaemonUnavailable, RPCError

    info = read_pid_file(paths)
    if not lock_is_held(paths):
        return {"running": False, "status": "stopped"}
    out = {"running": True, "status": "running", "pid": info.get("pid"), "repo_path": info.get("repo_path", ""),
           "socket": paths.var_file(SOCKET_NAME), "log": paths.log}
    try:
        with Client(paths.var_file(SOCKET_NAME), timeout=5) as client:
            health = client.call("health")
        out.update({"uptime_ms": health.get("uptime_ms"), "version": health.get("version"),
                    "sync_state": health.get("sync_state")})
    except (DaemonUnavailable, RPCError) as exc:
        out["status"] = "unresponsive"
        out["error"] = str(exc)
    return out


def log_tail(paths, lines: int = 12) -> str:
    try:
        with open(paths.log, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def start_background(paths, *, timeout: float = 10.0, env: dict | None = None) -> dict:
    """Spawn `thrum daemon run` detached and wait until it answers `health`."""
    from thrum.rpc import Client, DaemonUnavailable, RPCError

    paths = paths.for_daemon()
    if lock_is_held(paths):
        raise already_running(paths)
    os.makedirs(paths.var, mode=0o700, exist_ok=True)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child_env = dict(os.environ if env is None else env)
    # The child must import this same thrum: an installed one, a vendored copy or a zipapp.
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, child_env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "thrum", "daemon", "run", "--repo", paths.repo]
    try:
        logf = open(os.open(paths.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600), "ab")
    except OSError as exc:  # a read-only or full .thrum/var: say which file, not a traceback
        raise StartError(f"cannot write {exc.filename or paths.log}: {exc.strerror or exc}") from None
    with logf:
        proc = subprocess.Popen(argv, cwd=paths.repo, env=child_env, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=logf, start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout
    sock = paths.var_file(SOCKET_NAME)
    delay = 0.005
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            if lock_is_held(paths):  # our child lost the lock to a daemon started at the same moment
                raise already_running(paths)
            tail = log_tail(paths, 6)
            raise StartError(f"the daemon exited during start-up (code {code}). See the log: {paths.log}"
                             + (f"\n{tail}" if tail else ""))
        if os.path.exists(sock):
            try:
                with Client(sock, timeout=2) as client:
                    health = client.call("health")
                if health.get("pid") not in (None, proc.pid):
                    # Another daemon answers: ours lost the lock to it and is exiting.
                    proc.wait(timeout)
                    raise already_running(paths)
                return {"pid": proc.pid, "health": health}
            except (DaemonUnavailable, RPCError):
                pass
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    raise StartError(f"the daemon did not become ready within {timeout:g}s. See the log: {paths.log}")


def stop_daemon(paths, *, timeout: float = 10.0) -> dict:
    """SIGTERM the daemon holding the lock; wait until the lock is released and the process is gone."""
    if not lock_is_held(paths):
        raise StartError("daemon is not running")
    info = read_pid_file(paths)
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        raise StartError(f"the daemon holds its lock but its pid file is unreadable: {paths.var_file(PID_NAME)}")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    delay = 0.005
    while time.monotonic() < deadline:
        # The lock goes first; "stopped" also means the process has exited (it still
        # tears down its interpreter after releasing the lock).
        if not lock_is_held(paths) and not pid_alive(pid):
            return {"pid": pid, "stopped": True}
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    raise StartError(f"timeout waiting for daemon to stop (PID {pid} still running)")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, which no parent may reap in some containers, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = stat_fields(pid)
    return not fields or fields[0] != "Z"  # no /proc: the signal check is all we know
