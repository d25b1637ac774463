"""Daemon component for coordination: work contexts, orphaned agents, stale sessions, agent context files.

RPC methods it adds (Unix socket only where marked):

    agent.listContext     the work context of each open session (branch, commits, files, intent, task)
    agent.refreshContext  re-read git now for some or all of this daemon's sessions
    agent.cleanup (unix)  list or delete agents registered here that nothing refers to any more
    context.save/show/clear/preamble.show/preamble.save/sync (unix)  per-agent notes

It also hooks `session.heartbeat` (a heartbeat refreshes the caller's git context and
accepts a `worktree` ref) and `agent.delete` (the identity file goes from every
worktree of the repository, not only the main one).

Only this daemon's own sessions (`origin_daemon`) are refreshed or expired: sessions
that reached us through sync belong to another clone, which keeps them current.

Context files live in the main `.thrum/context/` (the daemon's), for every worktree:
`<name>.md` and `<name>_preamble.md`. `context.sync` copies an agent's notes into the
log as a `context.update` event, which sync carries to other clones; a clone without
a local file shows the synced copy.
"""

from __future__ import annotations

import base64
import logging
import os
import time

from thrum import gitctx
from thrum.events import EventError, format_ns, now_ns, parse_timestamp_ns
from thrum.identity import InvalidName, atomic_write, validate_name
from thrum.rpc import InvalidParams, NotFound, Params, TooLarge

__all__ = ["Coordination", "DEFAULT_PREAMBLE", "MAX_CONTEXT_BYTES", "MAX_SYNCED_CONTEXT_BYTES"]

log = logging.getLogger("thrum.coordination")

MAX_CONTEXT_BYTES = 256 * 1024
MAX_SYNCED_CONTEXT_BYTES = 40 * 1024  # one log line carries it (the log's lines stay under 60 KiB)
DAY_NS = 86400 * 1_000_000_000

DEFAULT_PREAMBLE = """## Thrum quick reference

- `thrum prime`: who you are, your team, unread messages and your work context, in one view
- `thrum inbox --unread`: messages for you; `thrum reply MSG_ID "text"` answers one
- `thrum send "text" --to @name`: message an agent, a role (@reviewer) or a group (@everyone)
- `thrum who-has FILE`: who else is changing a file
- `thrum team`: what everyone is working on
- `thrum session set-intent "text"`: tell the others what you are doing
- `thrum context save --file notes.md`: leave notes for your next session
"""

_CONTEXT_SCHEMA = """
CREATE TABLE synced_contexts (agent_id TEXT PRIMARY KEY, content TEXT NOT NULL, updated_at TEXT NOT NULL,
    updated_ns INTEGER NOT NULL, origin_daemon TEXT NOT NULL DEFAULT '', event_id TEXT NOT NULL);
"""


def _apply_context_update(db, e: dict, ns: int) -> None:
    agent_id, content = e.get("agent_id"), e.get("content")
    if not isinstance(agent_id, str) or not agent_id or not isinstance(content, str):
        return
    row = db.execute("SELECT updated_ns, event_id FROM synced_contexts WHERE agent_id=?", (agent_id,)).fetchone()
    if row is not None and (row[0], row[1]) > (ns, e["event_id"]):
        return  # an older copy arriving late
    db.execute("INSERT OR REPLACE INTO synced_contexts VALUES (?,?,?,?,?,?)",
               (agent_id, content, e.get("timestamp", ""), ns, e.get("origin_daemon") or "", e["event_id"]))


def _ns(timestamp) -> int:
    if not timestamp:
        return 0
    try:
        return parse_timestamp_ns(timestamp)
    except EventError:
        return 0


def _setting(env: str, config: dict, key: str, default: float) -> float:
    """A duration knob: environment, then config.json's `daemon` section, then the default."""
    for raw in (os.environ.get(env), (config.get("daemon") or {}).get(key) if isinstance(config.get("daemon"),
                                                                                            dict) else None):
        if raw is None or raw == "":
            continue
        value = gitctx.parse_seconds(str(raw))
        if value is not None:
            return value
        log.warning("ignoring unreadable %s=%r", env if raw == os.environ.get(env) else f"daemon.{key}", raw)
    return default


class Coordination:
    def __init__(self, paths) -> None:
        self.paths = paths
        self.daemon = None
        self.stopped = False
        self.last_message_ns: dict[str, int] = {}  # agent -> its newest message or read marker since the start
        # refresh engine: one checkout at a time, each a short chain of git processes
        self.queue: list[str] = []
        self.again: set[str] = set()
        self.running: str | None = None
        self.children: set = set()
        self.base_cache: dict[str, tuple[float, list[str]]] = {}
        self.checked: dict[str, str] = {}        # worktree path -> when its last refresh sampled git
        self.logged: dict[str, tuple] = {}       # session -> (content key, shape key, monotonic) last logged
        self.timers: list = []
        from thrum.config import load_config

        config = load_config(paths.config)
        self.refresh_every = max(1.0, _setting("THRUM_CONTEXT_INTERVAL", config, "context_interval",
                                               gitctx.REFRESH_EVERY))
        self.session_timeout = _setting("THRUM_SESSION_TIMEOUT", config, "session_timeout",
                                        gitctx.DEFAULT_SESSION_TIMEOUT)

    # -- lifecycle ------------------------------------------------------------------

    def extend_store(self, store) -> None:
        # store.projection is the database being built during a rebuild too.
        store.extend(_CONTEXT_SCHEMA, {"context.update": lambda e, ns: _apply_context_update(
            store.projection.db, e, ns)})

    def start(self, daemon) -> None:
        from thrum.sync import git_env

        self.daemon = daemon
        self.service = daemon.service
        self.store = daemon.store
        self.origin = self.service.origin_daemon
        self.common_dir = gitctx.git_common_dir(self.paths.main_repo) or os.path.join(self.paths.main_repo, ".git")
        self.git_env = git_env()
        self.started_ns = now_ns()
        r = self.service.registry
        unix = ("unix",)
        r.add("agent.listContext", self.list_context)
        r.add("agent.refreshContext", self.refresh_context)
        r.add("agent.cleanup", self.cleanup, writes=True, transports=unix)
        r.add("context.save", self.context_save, transports=unix)
        r.add("context.show", self.context_show, transports=unix)
        r.add("context.clear", self.context_clear, transports=unix)
        r.add("context.preamble.show", self.preamble_show, transports=unix)
        r.add("context.preamble.save", self.preamble_save, transports=unix)
        r.add("context.sync", self.context_sync, writes=True, transports=unix)
        self._wrap("session.heartbeat", self._heartbeat)
        self._wrap("agent.delete", self._agent_delete)
        daemon.event_listeners.append(self._on_events)
        loop = daemon.loop
        loop.call_soon(self._tick)
        if self.session_timeout > 0:
            loop.call_soon(self._sweep)

    def _wrap(self, name: str, fn) -> None:
        method = self.service.registry.methods[name]
        inner = method.fn
        self.service.registry.add(name, lambda p, ctx: fn(inner, p, ctx), writes=method.writes,
                                  transports=method.transports)

    def stop(self) -> None:
        self.stopped = True
        for entry in self.timers:
            self.daemon.loop.cancel(entry)
        for child in list(self.children):
            child.kill()

    def _later(self, delay: float, fn) -> None:
        self.timers = [t for t in self.timers if not t[4]]
        self.timers.append(self.daemon.loop.call_later(delay, fn))

    # -- which sessions are ours ----------------------------------------------------------

    def _local_sessions(self, path: str | None = None) -> list:
        sql = ("SELECT s.session_id AS session_id, s.agent_id AS agent_id, w.* FROM sessions s"
               " JOIN work_contexts w ON w.session_id=s.session_id"
               " WHERE s.ended_at='' AND s.origin_daemon=? AND w.worktree_path!=''")
        args = [self.origin]
        if path is not None:
            sql += " AND w.worktree_path=?"
            args.append(path)
        return self.store.db.execute(sql, args).fetchall()

    # -- refreshing ---------------------------------------------------------------------

    def _tick(self) -> None:
        """Periodic: refresh every checkout with an open session of ours; log pending line counts."""
        if self.stopped:
            return
        self._later(self.refresh_every, self._tick)  # first, so a failure below cannot stop the timer
        for path in dict.fromkeys(row["worktree_path"] for row in self._local_sessions()):
            self.request(path)
        self._log_pending()

    def request(self, path: str) -> None:
        if not path or self.stopped:
            return
        if path == self.running:
            self.again.add(path)  # what changed since that run started must be seen too
        elif path not in self.queue:
            self.queue.append(path)
        self._pump()

    def _pump(self) -> None:
        while self.running is None and self.queue and not self.stopped:
            path = self.queue.pop(0)
            if os.path.isdir(path):
                self.running = path
                _Refresh(self, path).start()

    def _refresh_done(self, path: str, wc: dict | None, started: str) -> None:
        self.running = None
        try:
            if wc is not None and not self.stopped:
                # Stamp after storing: _apply's write first answers queued requests, which must
                # not see the new check time next to the old context.
                self._apply(path, wc)
                self.checked[path] = started
        finally:
            if path in self.again:
                self.again.discard(path)
                self.queue.append(path)
            self._pump()

    def spawn(self, path: str, argv: list[str], on_done) -> None:
        """Run one git command in `path` through the loop; on_done(returncode, stdout)."""
        holder: list = []

        def done(code: int, out: bytes, err: bytes) -> None:
            if holder:
                self.children.discard(holder[0])
            if code != 0:
                log.debug("git %s in %s: exit %s: %s", argv[7:9], path, code, err[-300:])
            on_done(code, out)
        try:
            child = self.daemon.loop.spawn(argv, done, cwd=path, env=self.git_env, timeout=gitctx.GIT_TIMEOUT,
                                           max_output=gitctx.MAX_OUTPUT)
        except OSError as exc:  # no git, or the checkout vanished: report it like a failed run
            self.daemon.loop.call_soon(done, -1, b"", str(exc).encode())
            return
        holder.append(child)
        self.children.add(child)

    def _apply(self, path: str, fresh: dict) -> None:
        """Store a refreshed context for every open session of ours in this checkout."""
        fresh = gitctx.fit_for_log(fresh)
        key, shape = gitctx.content_key(fresh), gitctx.shape_key(fresh)
        writes = []
        for row in self._local_sessions(path):
            if row["git_updated_at"] and gitctx.content_key(self.service._wc_dict(row)) == key:
                continue
            logged = self.logged.get(row["session_id"])
            emit = (logged is None or logged[1] != shape
                    or time.monotonic() - logged[2] >= gitctx.LOG_NUMBERS_EVERY)
            writes.append((row["session_id"], row["agent_id"], emit))
        if not writes:
            return
        stamp = format_ns(now_ns())

        def write(store):
            store.begin()
            for sid, agent_id, emit in writes:
                wc = {**fresh, "session_id": sid, "git_updated_at": stamp}
                if emit:  # the log gets the same bytes the projection keeps
                    store.append("agent.update", {"agent_id": agent_id, "work_contexts": [wc]})
                    self.logged[sid] = (key, shape, time.monotonic())
                else:
                    store.projection.merge_work_context(agent_id, wc)
        self.daemon.run_write(write)

    def _log_pending(self) -> None:
        """Line-count changes kept locally reach the log once LOG_NUMBERS_EVERY has passed."""
        due = []
        for row in self._local_sessions():
            logged = self.logged.get(row["session_id"])
            if logged is None or not row["git_updated_at"]:
                continue
            wc = self.service._wc_dict(row)
            if gitctx.content_key(wc) != logged[0] and time.monotonic() - logged[2] >= gitctx.LOG_NUMBERS_EVERY:
                due.append((row["agent_id"], wc))
        if due:
            def write(store):
                for agent_id, wc in due:
                    git_part = {k: v for k, v in wc.items() if k not in (
                        "current_task", "task_updated_at", "intent", "intent_updated_at")}
                    store.append("agent.update", {"agent_id": agent_id, "work_contexts": [git_part]})
                    self.logged[wc["session_id"]] = (gitctx.content_key(wc), gitctx.shape_key(wc),
                                                     time.monotonic())
            self.daemon.run_write(write)

    def _on_events(self, events: list[dict]) -> None:
        for e in events:
            etype = e.get("type")
            if etype in ("message.create", "message.read"):
                # A sign of life for the sweep. Kept here, not asked of the database: the newest read
                # marker of an agent is a walk of all its markers (0.8 s at a million messages, every
                # sweep), and only what happened since this daemon started can be newer than its start.
                agent_id, ts = e.get("agent_id"), e.get("timestamp")
                if isinstance(agent_id, str) and isinstance(ts, str):
                    ns = _ns(ts)
                    if ns > self.last_message_ns.get(agent_id, 0):
                        self.last_message_ns[agent_id] = ns
            elif etype == "agent.session.start" and e.get("origin_daemon") == self.origin:
                row = self.store.db.execute("SELECT worktree_path FROM work_contexts WHERE session_id=?",
                                            (e.get("session_id"),)).fetchone()
                if row and row[0]:
                    self.daemon.loop.call_soon(self.request, row[0])
            elif e.get("type") == "agent.session.end":
                self.logged.pop(e.get("session_id"), None)

    # -- RPC: work contexts -----------------------------------------------------------------

    def list_context(self, p: Params, ctx) -> dict:
        where, args = [], []
        if not p.bool("include_ended"):
            where.append("s.ended_at=''")
        for key, column in (("agent_id", "s.agent_id"), ("session_id", "s.session_id"), ("branch", "w.branch")):
            value = p.str(key, max_len=256).lstrip("@") if key == "agent_id" else p.str(key, max_len=256)
            if value:
                where.append(f"{column}=?")
                args.append(value)
        sql = ("SELECT s.session_id AS session_id, s.agent_id AS agent_id, s.ended_at AS ended_at,"
               " s.origin_daemon AS origin_daemon, s.last_seen_at AS last_seen_at, s.started_at AS started_at,"
               " w.branch, w.worktree_path, w.unmerged_commits, w.uncommitted_files, w.changed_files,"
               " w.file_changes, w.git_updated_at, w.current_task, w.task_updated_at, w.intent,"
               " w.intent_updated_at FROM sessions s LEFT JOIN work_contexts w ON w.session_id=s.session_id"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY s.started_ns DESC LIMIT 1000")
        wanted = p.str("file", max_len=4096).strip().strip("/")
        exact = p.str("match", default="substring", max_len=16) == "exact"
        out = []
        for row in self.store.db.execute(sql, args):
            wc = self.service._wc_dict(row)
            wc["agent_id"] = row["agent_id"]
            wc["session_start"] = row["started_at"]
            wc["status"] = "ended" if row["ended_at"] else "active"
            wc["local"] = row["origin_daemon"] == self.origin
            if row["last_seen_at"]:
                wc["last_seen_at"] = row["last_seen_at"]
            if wc["local"] and wc.get("worktree_path") in self.checked:
                wc["git_checked_at"] = self.checked[wc["worktree_path"]]
            if wanted:
                paths = set(wc.get("changed_files") or []) | set(wc.get("uncommitted_files") or [])
                paths |= {f.get("path", "") for f in wc.get("file_changes") or []}
                hits = sorted(x for x in paths if x == wanted or x.startswith(wanted + "/")
                              or (not exact and wanted in x))
                if not hits:
                    continue
                wc["matched_files"] = hits
            out.append(wc)
        out.sort(key=lambda w: _ns(w.get("git_updated_at")), reverse=True)  # newest first (stable otherwise)
        return {"contexts": out}

    def refresh_context(self, p: Params, ctx) -> dict:
        """Re-read git for the named session, agent, or every open session of ours; returns at once."""
        sid = p.str("session_id", max_len=128)
        agent = p.str("agent_id", max_len=128).lstrip("@")
        paths = []
        for row in self._local_sessions():
            if (not sid or row["session_id"] == sid) and (not agent or row["agent_id"] == agent):
                paths.append(row["worktree_path"])
        paths = list(dict.fromkeys(paths))
        requested = format_ns(now_ns())
        for path in paths:
            self.daemon.loop.call_soon(self.request, path)
        return {"scheduled": paths, "requested_at": requested}

    def _heartbeat(self, inner, p: Params, ctx) -> dict:
        result = inner(p, ctx)
        sid = result["session_id"]
        db = self.store.db
        for ref in p.pairs("add_refs"):
            if ref["type"] == "worktree":
                path = ref["value"]
                if not os.path.isabs(path) or not os.path.isdir(path):
                    raise InvalidParams(f"worktree ref must be an existing absolute directory, got: {path}")
                agent = db.execute("SELECT agent_id FROM sessions WHERE session_id=?", (sid,)).fetchone()[0]
                db.execute("INSERT OR IGNORE INTO work_contexts(session_id, agent_id) VALUES (?,?)", (sid, agent))
                db.execute("UPDATE work_contexts SET worktree_path=? WHERE session_id=?", (os.path.normpath(path),
                                                                                          sid))
        row = db.execute("SELECT w.worktree_path, s.origin_daemon FROM sessions s LEFT JOIN work_contexts w"
                         " ON w.session_id=s.session_id WHERE s.session_id=?", (sid,)).fetchone()
        if row and row[0] and row[1] == self.origin:
            self.daemon.loop.call_soon(self.request, row[0])
            result["context_refresh"] = "scheduled"
        return result

    # -- stale sessions ------------------------------------------------------------------------

    def _sweep(self) -> None:
        """End this daemon's sessions that showed no sign of life for `session_timeout` seconds.

        Signs of life: heartbeats, the session's start, intent/task changes, git changes in
        its checkout, messages the agent sent or read. The clock starts no earlier than this
        daemon's start, so a restart (which loses heartbeats) never expires a live agent.
        Sessions of other clones are theirs to end.
        """
        if self.stopped:
            return
        self._later(min(60.0, max(0.25, self.session_timeout / 4)), self._sweep)
        limit = int(self.session_timeout * 1e9)
        now = now_ns()
        stale = []
        rows = self.store.db.execute(
            "SELECT s.session_id, s.agent_id, s.started_ns, s.last_seen_at, w.git_updated_at, w.intent_updated_at,"
            " w.task_updated_at FROM sessions s LEFT JOIN work_contexts w ON w.session_id=s.session_id"
            " WHERE s.ended_at='' AND s.origin_daemon=?", (self.origin,)).fetchall()
        for r in rows:
            last = max(self.started_ns, r["started_ns"] or 0, self.last_message_ns.get(r["agent_id"], 0),
                       *(_ns(r[k]) for k in ("last_seen_at", "git_updated_at", "intent_updated_at",
                                             "task_updated_at")))
            if now - last > limit:
                stale.append((r["session_id"], r["agent_id"], (now - last) // 1_000_000_000))
        if stale:
            def write(store):
                for sid, agent_id, idle in stale:
                    log.info("ending stale session %s of %s (no activity for %ds)", sid, agent_id, idle)
                    store.append("agent.session.end", {"session_id": sid, "reason": gitctx.STALE_REASON})
            self.daemon.run_write(write)

    # -- orphaned agents ---------------------------------------------------------------------------

    def worktrees(self) -> list[dict]:
        return gitctx.list_worktrees(self.common_dir)

    def _agent_delete(self, inner, p: Params, ctx) -> dict:
        result = inner(p, ctx)
        name = result["agent_id"]
        for path in gitctx.identity_locations(self.worktrees()).get(name, []):
            try:
                os.remove(path)
            except OSError:
                pass
        return result

    def cleanup(self, p: Params, ctx) -> dict:
        dry_run, force = p.bool("dry_run"), p.bool("force")
        threshold = p.int("threshold", 30, lo=0, hi=36500)
        db = self.store.db
        worktrees = self.worktrees()
        existing = {os.path.basename(w["path"]) for w in worktrees if w["exists"]}
        identities = gitctx.identity_locations(worktrees)
        now = now_ns()
        orphans, foreign = [], 0
        for a in db.execute("SELECT * FROM agents WHERE kind='agent' ORDER BY agent_id").fetchall():
            aid = a["agent_id"]
            if a["origin_daemon"] != self.origin:
                foreign += 1  # registered by another clone or machine: never ours to judge
                continue
            if db.execute("SELECT 1 FROM sessions WHERE agent_id=? AND ended_at='' LIMIT 1", (aid,)).fetchone():
                continue  # an open session is alive until the stale-session sweep says otherwise
            wc = db.execute("SELECT w.branch, w.worktree_path FROM work_contexts w JOIN sessions s"
                            " ON s.session_id=w.session_id WHERE w.agent_id=? AND w.worktree_path!=''"
                            " ORDER BY s.started_ns DESC LIMIT 1", (aid,)).fetchone()
            seen = max([_ns(a["last_seen_at"]), a["registered_ns"] or 0] + [
                max(r[0] or 0, _ns(r[1]), _ns(r[2])) for r in db.execute(
                    "SELECT MAX(started_ns), MAX(last_seen_at), MAX(ended_at) FROM sessions WHERE agent_id=?",
                    (aid,))])
            days = int((now - seen) // DAY_NS) if seen else None
            worktree_path = wc["worktree_path"] if wc else ""
            branch = wc["branch"] if wc else ""
            reasons = []
            if aid not in identities:
                reasons.append("no identity file in any worktree of this repository")
            if worktree_path and not os.path.isdir(worktree_path):
                reasons.append(f"its worktree {worktree_path} no longer exists")
            elif not worktree_path and a["worktree"] and a["worktree"] not in existing:
                reasons.append(f"no worktree named '{a['worktree']}' exists any more")
            if threshold and days is not None and days >= threshold:
                reasons.append(f"not seen for {days} days (threshold {threshold})")
            if not reasons:
                continue
            orphans.append({
                "agent_id": aid, "role": a["role"], "module": a["module"],
                "worktree": worktree_path or a["worktree"], "branch": branch,
                "last_seen_at": format_ns(seen) if seen else "",
                "worktree_missing": any("worktree" in r for r in reasons),
                "branch_missing": bool(branch) and not gitctx.ref_exists(self.common_dir, branch),
                "identity_missing": aid not in identities,
                "identity_files": identities.get(aid, []),
                "days_since_last_seen": days,
                "message_count": db.execute("SELECT COUNT(*) FROM messages WHERE agent_id=?", (aid,)).fetchone()[0],
                "reasons": reasons,
            })
        deleted, failed = [], []
        if force and not dry_run:
            for o in orphans:
                try:
                    validate_name(o["agent_id"])
                except InvalidName as exc:
                    failed.append({"agent_id": o["agent_id"], "error": str(exc)})
                    continue
                self._agent_delete(self.service.agent_delete, Params({"name": o["agent_id"]}), ctx)
                deleted.append(o["agent_id"])
        if not orphans:
            message = "No orphaned agents found."
        elif dry_run:
            message = f"{len(orphans)} orphaned agent(s) found (dry run: nothing changed)."
        elif force:
            message = f"Deleted {len(deleted)} orphaned agent(s)."
        else:
            message = f"{len(orphans)} orphaned agent(s) found. Run with --force to delete them."
        out = {"orphans": orphans, "deleted": deleted, "dry_run": dry_run, "message": message,
               "skipped_other_clones": foreign, "threshold_days": threshold,
               "worktrees": [{**w, "identities": sorted(n for n, fs in identities.items()
                                                        if any(f.startswith(os.path.join(w["path"], ".thrum", ""))
                                                               for f in fs))} for w in worktrees]}
        if failed:
            out["failed"] = failed
        return out

    # -- RPC: context files ----------------------------------------------------------------------------

    def _context_paths(self, p: Params) -> tuple[str, str, str]:
        name = p.str("agent_name", required=True, max_len=128).lstrip("@")
        try:
            validate_name(name, "context name")
        except InvalidName as exc:
            raise InvalidParams(str(exc)) from None
        cdir = os.path.join(self.service.thrum_dir, "context")
        return name, os.path.join(cdir, name + ".md"), os.path.join(cdir, name + "_preamble.md")

    @staticmethod
    def _content(p: Params) -> bytes:
        raw = p.str("content", max_len=MAX_CONTEXT_BYTES * 2)
        try:
            data = base64.b64decode(raw.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError):
            raise InvalidParams("content must be base64") from None
        if len(data) > MAX_CONTEXT_BYTES:
            raise TooLarge(f"context is larger than {MAX_CONTEXT_BYTES} bytes")
        return data

    @staticmethod
    def _write(path: str, data: bytes) -> None:
        os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
        atomic_write(path, data, 0o644)

    def context_save(self, p: Params, ctx) -> dict:
        name, path, preamble = self._context_paths(p)
        data = self._content(p)
        self._write(path, data)
        if not os.path.exists(preamble):
            self._write(preamble, DEFAULT_PREAMBLE.encode())
        return {"agent_name": name, "size": len(data), "path": path,
                "message": f"Context saved for {name} ({len(data)} bytes)"}

    def context_show(self, p: Params, ctx) -> dict:
        name, path, preamble = self._context_paths(p)
        out = {"agent_name": name, "path": path, "has_context": False, "has_preamble": False, "content": None}
        synced = self.store.db.execute("SELECT * FROM synced_contexts WHERE agent_id=?", (name,)).fetchone()
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_CONTEXT_BYTES + 1)
            st = os.stat(path)
            out.update(has_context=True, content=base64.b64encode(data).decode(), size=len(data),
                       updated_at=format_ns(st.st_mtime_ns), source="local")
            if synced is not None and synced["updated_ns"] > st.st_mtime_ns and synced["content"].encode() != data:
                out["newer_synced_copy"] = {"updated_at": synced["updated_at"], "size": len(synced["content"])}
        except FileNotFoundError:
            if synced is not None:
                data = synced["content"].encode()
                out.update(has_context=True, content=base64.b64encode(data).decode(), size=len(data),
                           updated_at=synced["updated_at"], source="sync", synced_from=synced["origin_daemon"])
        if p.bool("include_preamble", True):
            try:
                with open(preamble, "rb") as f:
                    pre = f.read(MAX_CONTEXT_BYTES + 1)
                out.update(has_preamble=True, preamble=base64.b64encode(pre).decode(), preamble_size=len(pre))
            except FileNotFoundError:
                pass
        return out

    def context_clear(self, p: Params, ctx) -> dict:
        name, path, _ = self._context_paths(p)
        try:
            os.remove(path)
            existed = True
        except FileNotFoundError:
            existed = False
        return {"agent_name": name, "cleared": existed, "message": f"Context cleared for {name}"}

    def preamble_show(self, p: Params, ctx) -> dict:
        name, _, preamble = self._context_paths(p)
        try:
            with open(preamble, "rb") as f:
                return {"agent_name": name, "has_preamble": True, "content": base64.b64encode(f.read()).decode()}
        except FileNotFoundError:
            return {"agent_name": name, "has_preamble": False, "content": None}

    def preamble_save(self, p: Params, ctx) -> dict:
        name, _, preamble = self._context_paths(p)
        data = self._content(p) if p.raw.get("content") is not None else DEFAULT_PREAMBLE.encode()
        self._write(preamble, data)
        return {"agent_name": name, "size": len(data), "message": f"Preamble saved for {name} ({len(data)} bytes)"}

    def context_sync(self, p: Params, ctx) -> dict:
        """Put the agent's notes into the log (one `context.update` event) for other clones."""
        name, path, _ = self._context_paths(p)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_CONTEXT_BYTES + 1)
        except FileNotFoundError:
            raise NotFound(f"no context file for {name}, nothing to sync") from None
        if len(data) > MAX_SYNCED_CONTEXT_BYTES:
            raise TooLarge(f"context of {name} is {len(data)} bytes; at most {MAX_SYNCED_CONTEXT_BYTES} bytes "
                           "can be synced (trim it, or keep it local)")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidParams(f"context of {name} is not UTF-8 text") from None
        row = self.store.db.execute("SELECT content FROM synced_contexts WHERE agent_id=?", (name,)).fetchone()
        if row is not None and row[0] == text:
            return {"agent_name": name, "synced": False, "unchanged": True, "size": len(data),
                    "message": f"Context for {name} is already synced ({len(data)} bytes)."}
        event = self.store.append("context.update", {"agent_id": name, "content": text})
        return {"agent_name": name, "synced": True, "size": len(data), "event_id": event["event_id"],
                "message": f"Context synced for {name} ({len(data)} bytes)."}


class _Refresh:
    """One checkout's refresh: base refs (cached) -> log and status together -> diff -> result."""

    def __init__(self, owner: Coordination, path: str) -> None:
        self.owner, self.path = owner, path
        self.started = format_ns(now_ns())
        self.status: bytes | None = None
        self.log_out: bytes | None = None
        self.waiting = 0
        self.failed = False

    def start(self) -> None:
        cached = self.owner.base_cache.get(self.path)
        if cached and time.monotonic() - cached[0] < gitctx.BASE_TTL:
            self._with_bases(cached[1])
        else:
            self.owner.spawn(self.path, gitctx.base_refs_argv(), self._bases_done)

    def _bases_done(self, code: int, out: bytes) -> None:
        bases = gitctx.parse_base_refs(out) if code == 0 else []
        self.owner.base_cache[self.path] = (time.monotonic(), bases)
        self._with_bases(bases)

    def _with_bases(self, bases: list[str]) -> None:
        self.waiting = 2 if bases else 1
        self.owner.spawn(self.path, gitctx.status_argv(), self._status_done)
        if bases:
            self.owner.spawn(self.path, gitctx.log_argv(bases), self._log_done)
        else:
            self.log_out = b""

    def _status_done(self, code: int, out: bytes) -> None:
        self.status = out if code == 0 else None
        self.failed = code != 0
        self._joined()

    def _log_done(self, code: int, out: bytes) -> None:
        self.log_out = out if code == 0 else b""  # an unborn HEAD has no commits
        self._joined()

    def _joined(self) -> None:
        self.waiting -= 1
        if self.waiting:
            return
        if self.failed:
            self.owner._refresh_done(self.path, None, self.started)
            return
        self.log_info = gitctx.parse_log(self.log_out or b"")
        fork = self.log_info["fork_point"] or ("HEAD" if not self.log_info["commits"] else "")
        if not fork:
            self._finish({})
            return
        self.owner.spawn(self.path, gitctx.diff_argv(fork),
                         lambda code, out: self._finish(gitctx.parse_diff(out) if code == 0 else {}))

    def _finish(self, diff: dict) -> None:
        try:
            wc = gitctx.build_context(self.path, gitctx.parse_status(self.status), self.log_info, diff)
        except Exception:
            log.exception("building the work context of %s failed", self.path)
            wc = None
        self.owner._refresh_done(self.path, wc, self.started)


def make_component(paths):
    return Coordination(paths)
