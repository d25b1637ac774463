"""The daemon's RPC methods: validation, addressing, authorization, and the queries behind them.

Every write method validates everything first and only then appends events, so a
failed call leaves nothing in the log. Handlers run inside the daemon's batch
(see store.py): they may read what earlier requests of the same batch wrote.

Who may do what: a caller names itself with `caller_agent_id` (a WebSocket
connection may instead be bound to one identity, which then cannot be changed).
Only a message's author edits or deletes it; only a session's agent ends it or
changes its intent and task; users (kind `user`) alone may post `acting_as` an
agent, and the message then records who really wrote it.
"""

from __future__ import annotations

import json
import os
import socket
import time

from thrum import __version__, views
from thrum.events import EventError, format_ns, new_id, now_ns, parse_timestamp_ns
from thrum.identity import InvalidName, list_identities, load_identity, validate_name, validate_word
from thrum.rpc import (
    Conflict, InvalidParams, NoSession, NotFound, Params, PermissionDenied, Registry, ThrumError, TooLarge,
)

__all__ = ["Service", "CallContext", "MAX_CONTENT_BYTES", "PRIORITIES"]

MAX_CONTENT_BYTES = 32 * 1024
PRIORITIES = ("critical", "high", "normal", "low")
FORMATS = ("markdown", "plain", "json")
EVERYONE = "everyone"
EVERYONE_GROUP_ID = "grp_everyone"
ACTIVE_WINDOW_NS = 2 * 60 * 1_000_000_000  # seen within 2 min = active (list_agents, ping)
_GROUP_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


class CallContext:
    """Who is calling and over what: set by the transport for each request."""

    __slots__ = ("transport", "bound_agent", "conn")

    def __init__(self, transport: str = "unix", bound_agent: str | None = None, conn=None) -> None:
        self.transport = transport
        self.bound_agent = bound_agent
        self.conn = conn


def validate_group_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidParams("group name is required")
    if len(name) > 64 or not _GROUP_CHARS.issuperset(name) or name[0] in "-_":
        raise InvalidParams(f"invalid group name '{name[:64]}': use lowercase letters, digits, '_' and '-'")
    return name


def _strip_at(value: str) -> str:
    return value[1:] if value.startswith("@") else value


def _loads(text: str, default):
    try:
        return json.loads(text) if text else default
    except ValueError:
        return default


class Service:
    def __init__(self, store, *, repo_id: str, thrum_dir: str, local_thrum: str, origin_daemon: str) -> None:
        self.store = store
        self.repo_id = repo_id
        self.thrum_dir = thrum_dir
        self.local_thrum = local_thrum
        self.origin_daemon = origin_daemon
        self.started = time.monotonic()
        self.hostname = (os.environ.get("THRUM_HOSTNAME") or socket.gethostname()).removesuffix(".local")
        self.sync_status = lambda: {"sync_state": "disabled"}  # replaced by the sync loop
        self.registry = Registry()
        self._cache: dict = {}
        self._cache_version = -1
        self._register()

    def cached(self, key, compute):
        """Memoize a lookup of agents, sessions or groups until any of them changes."""
        version = self.store.projection.version
        if version != self._cache_version:
            self._cache.clear()
            self._cache_version = version
        try:
            return self._cache[key]
        except KeyError:
            value = self._cache[key] = compute()
            return value

    @property
    def db(self):
        return self.store.db

    def _register(self) -> None:
        r = self.registry.add
        unix = ("unix",)
        r("health", self.health)
        r("agent.register", self.agent_register, writes=True)
        r("agent.list", self.agent_list)
        r("agent.whoami", self.agent_whoami)
        r("agent.delete", self.agent_delete, writes=True, transports=unix)
        r("session.start", self.session_start, writes=True)
        r("session.end", self.session_end, writes=True)
        r("session.list", self.session_list)
        r("session.heartbeat", self.session_heartbeat, writes=True)
        r("session.setIntent", self.session_set_intent, writes=True)
        r("session.setTask", self.session_set_task, writes=True)
        r("message.send", self.message_send, writes=True, events_only=True)
        r("message.get", self.message_get)
        r("message.list", self.message_list)
        r("message.edit", self.message_edit, writes=True)
        r("message.delete", self.message_delete, writes=True)
        r("message.markRead", self.message_mark_read, writes=True)
        r("group.create", self.group_create, writes=True)
        r("group.delete", self.group_delete, writes=True)
        r("group.member.add", self.group_member_add, writes=True)
        r("group.member.remove", self.group_member_remove, writes=True)
        r("group.list", self.group_list)
        r("group.info", self.group_info)
        r("group.members", self.group_members)
        # Read-only, and nothing it shows is hidden from agent.list + message.list: the web UI's agents panel.
        r("team.list", self.team_list)

    # -- start-up --------------------------------------------------------------

    def ensure_everyone_group(self) -> None:
        """Write the built-in @everyone group once, with the same bytes on every clone."""
        if self.db.execute("SELECT 1 FROM groups WHERE group_id=?", (EVERYONE_GROUP_ID,)).fetchone():
            return
        from thrum.events import deterministic_ulid

        ts = "2026-01-01T00:00:00Z"
        base = {"timestamp": ts, "v": 1}
        self.store.begin()
        self.store.append_event({**base, "type": "group.create", "group_id": EVERYONE_GROUP_ID, "name": EVERYONE,
                                 "description": "All agents", "created_by": "system",
                                 "event_id": "evt_" + deterministic_ulid(0, b"thrum:group.create:everyone")})
        self.store.append_event({**base, "type": "group.member.add", "group_id": EVERYONE_GROUP_ID,
                                 "member_type": "role", "member_value": "*", "added_by": "system",
                                 "event_id": "evt_" + deterministic_ulid(0, b"thrum:group.member.add:everyone")})
        self.store.commit()

    # -- callers, agents, sessions -----------------------------------------------

    def agent_row(self, agent_id: str):
        return self.db.execute("SELECT * FROM agents WHERE agent_id=?", (agent_id,)).fetchone()

    def _default_caller(self) -> str:
        """A request without caller_agent_id acts as this repo's only identity, if there is one."""
        ids_dir = os.path.join(self.local_thrum, "identities")
        names = list_identities(ids_dir)
        env_name = os.environ.get("THRUM_NAME")
        if env_name and env_name in names:
            return env_name
        if len(names) == 1:
            return load_identity(os.path.join(ids_dir, names[0] + ".json")).name
        raise InvalidParams("caller_agent_id is required (the daemon cannot tell which agent is calling)")

    def caller_id(self, p: Params, ctx: CallContext, *, required: bool = True) -> str:
        cid = p.str("caller_agent_id", max_len=128)
        if ctx.bound_agent:
            if cid and cid != ctx.bound_agent:
                raise PermissionDenied(f"this connection acts as {ctx.bound_agent}, not {cid}")
            return ctx.bound_agent
        if cid:
            if ctx.transport == "ws" and getattr(ctx.conn, "browser", False) and not cid.startswith("user:"):
                raise PermissionDenied("a browser acts as a user (user.register), never as an agent")
            if ctx.transport == "ws" and self.agent_row(cid) is not None:
                ctx.bound_agent = cid  # a WebSocket connection acts as one identity: the first it names
            return cid
        if ctx.transport == "ws":  # never the daemon's guess: a WebSocket client says who it is
            if required:
                raise PermissionDenied("this WebSocket connection has no identity: call user.register "
                                       "(browser users) or pass caller_agent_id")
            return ""
        return self._default_caller() if required else ""

    def caller(self, p: Params, ctx: CallContext):
        cid = self.caller_id(p, ctx)
        row = self.cached(("agent", cid), lambda: self.agent_row(cid))
        if row is None:
            raise NotFound(f"agent {cid} is not registered (register with: thrum quickstart --name <name> "
                           "--role <role> --module <module>)")
        return row

    def active_session(self, agent_id: str):
        return self.db.execute(
            "SELECT * FROM sessions WHERE agent_id=? AND ended_at='' ORDER BY started_ns DESC LIMIT 1",
            (agent_id,)).fetchone()

    def require_session(self, agent_id: str):
        row = self.active_session(agent_id)
        if row is None:
            raise NoSession(f"no active session found for agent {agent_id} (start one with: thrum session start)")
        return row

    def _own_session(self, p: Params, ctx: CallContext):
        """The session a session.* call names (or the caller's active one), checked for ownership."""
        sid = p.str("session_id", max_len=128)
        cid = self.caller_id(p, ctx)  # never "anyone": without a caller, the repo's only identity
        if not sid:
            return self.require_session(cid)
        row = self.db.execute("SELECT * FROM sessions WHERE session_id=?", (sid,)).fetchone()
        if row is None:
            raise NotFound(f"session not found: {sid}")
        if row["agent_id"] != cid:
            raise PermissionDenied(f"session {sid} belongs to {row['agent_id']}, not {cid}")
        return row

    def is_active(self, agent_id: str) -> bool:
        return self.active_session(agent_id) is not None

    # -- health ---------------------------------------------------------------------

    def health(self, p: Params, ctx: CallContext) -> dict:
        result = {
            "status": "ok",
            "uptime_ms": int((time.monotonic() - self.started) * 1000),
            "version": __version__,
            "repo_id": self.repo_id,
            "pid": os.getpid(),
        }
        result.update(self.sync_status())
        bad = self.db.execute("SELECT COUNT(*) FROM bad_lines").fetchone()[0]
        if bad:
            result["bad_lines"] = bad
        quarantined = self._quarantined_files()
        if quarantined:  # torn tails and replaced bytes kept aside at start-up, for a human to look at
            result["quarantined"] = quarantined
        return result

    def _quarantined_files(self) -> int:
        try:
            return len(os.listdir(self.store.log.quarantine_dir))
        except OSError:
            return 0

    # -- agents ---------------------------------------------------------------------

    def agent_register(self, p: Params, ctx: CallContext) -> dict:
        try:
            role = validate_word(p.str("role", required=True, max_len=64), "role")
            module = validate_word(p.str("module", required=True, max_len=64), "module")
            name = p.str("name", max_len=64)
            if name:
                validate_name(name)
        except InvalidName as exc:
            raise InvalidParams(str(exc)) from None
        display = p.str("display", max_len=200)
        force, re_register = p.bool("force"), p.bool("re_register")
        if not name:
            from thrum.identity import unnamed_agent_id

            agent_id = unnamed_agent_id(self.repo_id, role, module)
        else:
            agent_id = name
        if ctx.bound_agent and ctx.bound_agent != agent_id:
            raise PermissionDenied(f"this connection acts as {ctx.bound_agent}; it cannot register {agent_id}")
        if getattr(ctx.conn, "browser", False):
            raise PermissionDenied("agents register from their own process (thrum quickstart), not from a browser")
        if self._group_ids(agent_id):
            raise Conflict(f"'{agent_id}' is the name of a group; choose another agent name")
        existing = self.agent_row(agent_id)
        status = "registered"
        if existing is not None:
            same = existing["role"] == role and existing["module"] == module and existing["kind"] == "agent"
            if same and not re_register and (not display or display == existing["display"]):
                return {"agent_id": agent_id, "status": "registered"}
            if not same and not (force or re_register):
                return {"agent_id": "", "status": "conflict", "conflict": {
                    "existing_agent_id": agent_id, "role": existing["role"], "module": existing["module"],
                    "registered_at": existing["registered_at"], "last_seen_at": existing["last_seen_at"]}}
            status = "updated"
        payload = {"agent_id": agent_id, "kind": "agent", "role": role, "module": module,
                   "hostname": p.str("hostname", max_len=200) or self.hostname}
        if name:
            payload["name"] = name
        worktree = p.str("worktree", max_len=255)
        if worktree:
            payload["worktree"] = worktree
        if display:
            payload["display"] = display
        self.store.append("agent.register", payload)
        return {"agent_id": agent_id, "status": status}

    def _agent_dict(self, row) -> dict:
        session = self.active_session(row["agent_id"])
        last_seen = row["last_seen_at"] or (session["last_seen_at"] if session else "")
        out = {
            "agent_id": row["agent_id"], "kind": row["kind"], "name": row["name"] or row["agent_id"],
            "role": row["role"], "module": row["module"], "display": row["display"],
            "hostname": row["hostname"], "worktree": row["worktree"], "registered_at": row["registered_at"],
            "status": "active" if session else "offline",
        }
        if last_seen:
            out["last_seen_at"] = last_seen
        if session:
            out["session_id"] = session["session_id"]
            wc = self.db.execute("SELECT intent, current_task, branch FROM work_contexts WHERE session_id=?",
                                 (session["session_id"],)).fetchone()
            if wc:
                for key in ("intent", "current_task", "branch"):
                    if wc[key]:
                        out[key] = wc[key]
        return out

    def agent_list(self, p: Params, ctx: CallContext) -> dict:
        where, args = [], []
        for key in ("role", "module"):
            value = p.str(key, max_len=64)
            if value:
                where.append(f"{key}=?")
                args.append(value)
        if p.bool("agents_only"):
            where.append("kind='agent'")
        sql = "SELECT * FROM agents" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self.db.execute(sql + " ORDER BY registered_ns DESC, agent_id", args).fetchall()
        return {"agents": [self._agent_dict(r) for r in rows]}

    def agent_whoami(self, p: Params, ctx: CallContext) -> dict:
        cid = self.caller_id(p, ctx)
        row = self.agent_row(cid)
        if row is None:
            raise NotFound(f"agent {cid} is not registered")
        out = {"agent_id": cid, "role": row["role"], "module": row["module"], "display": row["display"],
               "kind": row["kind"], "source": "connection" if ctx.bound_agent else "caller"}
        session = self.active_session(cid)
        if session:
            out["session_id"] = session["session_id"]
            out["session_start"] = session["started_at"]
        return out

    def agent_delete(self, p: Params, ctx: CallContext) -> dict:
        name = p.str("name", required=True, max_len=128)
        try:
            validate_name(name)
        except InvalidName as exc:
            raise InvalidParams(f"invalid agent name: {exc}") from None
        if self.agent_row(name) is None:
            raise NotFound(f"agent not found: {name}")
        sessions = [r[0] for r in self.db.execute("SELECT session_id FROM sessions WHERE agent_id=? AND ended_at=''"
                                                  " AND origin_daemon=?", (name, self.origin_daemon))]
        # Deleting an agent ends its sessions: the one way a session is ended by someone else,
        # so it must be asked for explicitly (the CLI asks for confirmation, or --force).
        if sessions and not p.bool("force") and self.caller_id(p, ctx, required=False) != name:
            raise Conflict(f"agent {name} has an active session ({sessions[0]}); it ends it with "
                           "'thrum session end', or pass force to end it and delete the agent")
        for session in sessions:
            self.store.append("agent.session.end", {"session_id": session, "reason": "agent deleted"})
        self.store.append("agent.cleanup", {"agent_id": name, "reason": "manual deletion", "method": "manual"})
        # The identity and context files go; the agent's messages stay in the log.
        for path in (os.path.join(self.local_thrum, "identities", name + ".json"),
                     os.path.join(self.thrum_dir, "context", name + ".md"),
                     os.path.join(self.thrum_dir, "context", name + "_preamble.md")):
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        return {"agent_id": name, "deleted": True, "message": f"agent {name} deleted; its messages are kept"}

    # -- sessions -------------------------------------------------------------------

    def session_start(self, p: Params, ctx: CallContext) -> dict:
        agent_id = p.str("agent_id", max_len=128) or self.caller_id(p, ctx)
        cid = self.caller_id(p, ctx, required=False)
        if cid and cid != agent_id:
            raise PermissionDenied(f"{cid} cannot start a session for {agent_id}")
        if self.agent_row(agent_id) is None:
            raise NotFound(f"agent not found: agent {agent_id} not registered")
        refs = p.pairs("refs")
        # A new session replaces this agent's sessions started by this daemon (a
        # crashed or forgotten one). Sessions opened on other machines are theirs.
        for row in self.db.execute("SELECT session_id FROM sessions WHERE agent_id=? AND ended_at=''"
                                   " AND origin_daemon=?", (agent_id, self.origin_daemon)).fetchall():
            self.store.append("agent.session.end", {"session_id": row[0], "reason": "crash_recovered"})
        sid = new_id("ses")
        event = self.store.append("agent.session.start", {"session_id": sid, "agent_id": agent_id})
        worktree = next((r["value"] for r in refs if r["type"] == "worktree"), "")
        if worktree:
            self.store.projection.merge_work_context(agent_id, {"session_id": sid, "worktree_path": worktree,
                                                                "git_updated_at": ""})
            self.db.execute("UPDATE work_contexts SET worktree_path=? WHERE session_id=?", (worktree, sid))
        return {"session_id": sid, "agent_id": agent_id, "started_at": event["timestamp"]}

    def session_end(self, p: Params, ctx: CallContext) -> dict:
        row = self._own_session(p, ctx)
        if row["ended_at"]:
            raise Conflict(f"session {row['session_id']} has already ended")
        reason = p.str("reason", max_len=200) or "normal"
        event = self.store.append("agent.session.end", {"session_id": row["session_id"], "reason": reason})
        wc = self.db.execute("SELECT * FROM work_contexts WHERE session_id=?", (row["session_id"],)).fetchone()
        if wc is not None and wc["git_updated_at"]:
            self.store.append("agent.update", {"agent_id": row["agent_id"], "work_contexts": [self._wc_dict(wc)]})
        ended_ns = parse_timestamp_ns(event["timestamp"])
        return {"session_id": row["session_id"], "ended_at": event["timestamp"],
                "duration_ms": max(0, (ended_ns - row["started_ns"]) // 1_000_000)}

    def session_list(self, p: Params, ctx: CallContext) -> dict:
        where, args = [], []
        agent_id = p.str("agent_id", max_len=128)
        if agent_id:
            where.append("s.agent_id=?")
            args.append(agent_id)
        if p.bool("active_only"):
            where.append("s.ended_at=''")
        sql = ("SELECT s.*, w.intent, w.current_task FROM sessions s LEFT JOIN work_contexts w"
               " ON w.session_id=s.session_id" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY s.started_ns DESC LIMIT ?")
        args.append(p.int("limit", 500, lo=1, hi=5000, clamp=True))
        out = []
        for r in self.db.execute(sql, args):
            item = {"session_id": r["session_id"], "agent_id": r["agent_id"], "started_at": r["started_at"],
                    "last_seen_at": r["last_seen_at"], "status": "ended" if r["ended_at"] else "active"}
            if r["ended_at"]:
                item["ended_at"], item["end_reason"] = r["ended_at"], r["end_reason"]
            if r["intent"]:
                item["intent"] = r["intent"]
            if r["current_task"]:
                item["current_task"] = r["current_task"]
            out.append(item)
        return {"sessions": out}

    def session_heartbeat(self, p: Params, ctx: CallContext) -> dict:
        row = self._own_session(p, ctx)
        if row["ended_at"]:
            raise Conflict(f"session {row['session_id']} has already ended")
        now = format_ns(now_ns())
        # Heartbeats are local-only state: frequent, and meaningless on other machines.
        self.db.execute("UPDATE sessions SET last_seen_at=? WHERE session_id=?", (now, row["session_id"]))
        self.db.execute("UPDATE agents SET last_seen_at=? WHERE agent_id=?", (now, row["agent_id"]))
        return {"session_id": row["session_id"], "last_seen_at": now}

    def _set_session_field(self, p: Params, ctx: CallContext, field: str, stamp: str) -> dict:
        row = self._own_session(p, ctx)
        if row["ended_at"]:
            raise Conflict(f"session {row['session_id']} has already ended")
        value = p.str(field, max_len=1000)
        now = format_ns(now_ns())
        self.store.append("agent.update", {"agent_id": row["agent_id"], "work_contexts": [
            {"session_id": row["session_id"], field: value, stamp: now}]})
        return {"session_id": row["session_id"], field: value, stamp: now}

    def session_set_intent(self, p: Params, ctx: CallContext) -> dict:
        return self._set_session_field(p, ctx, "intent", "intent_updated_at")

    def session_set_task(self, p: Params, ctx: CallContext) -> dict:
        return self._set_session_field(p, ctx, "current_task", "task_updated_at")

    @staticmethod
    def _wc_dict(wc) -> dict:
        out = {"session_id": wc["session_id"]}
        for key in ("branch", "worktree_path", "git_updated_at", "current_task", "task_updated_at", "intent",
                    "intent_updated_at"):
            if wc[key]:
                out[key] = wc[key]
        for key in ("unmerged_commits", "uncommitted_files", "changed_files", "file_changes"):
            value = _loads(wc[key], [])
            if value:
                out[key] = value
        return out

    # -- addressing -------------------------------------------------------------------

    def _group_ids(self, name: str) -> list[str]:
        return [r[0] for r in self.db.execute(
            "SELECT group_id FROM groups WHERE name=? AND deleted=0 ORDER BY created_ns, event_id", (name,))]

    def _recipient_candidates(self) -> list[str]:
        names = {r[0] for r in self.db.execute("SELECT agent_id FROM agents")}
        names |= {r[0] for r in self.db.execute("SELECT DISTINCT role FROM agents WHERE role != ''")}
        names |= {r[0] for r in self.db.execute("SELECT DISTINCT name FROM groups WHERE deleted=0")}
        return sorted(names)

    def unknown_error(self, what: str, value: str, candidates: list[str]) -> NotFound:
        import difflib

        close = difflib.get_close_matches(value, candidates, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join('@' + c for c in close)}?" if close else ""
        return NotFound(f"unknown {what} @{value}: no agent, role or group has that name{hint}",
                        {"unknown": value, "suggestions": close})

    def resolve_mention(self, raw: str) -> tuple[str, str]:
        """`@x` -> ("group", x) or ("mention", x); unknown names are an error naming close matches."""
        value = _strip_at(raw.strip())
        if not value:
            raise InvalidParams("empty recipient")
        if self._group_ids(value):
            return "group", value
        if self.agent_row(value) is not None:
            return "mention", value
        if self.db.execute("SELECT 1 FROM agents WHERE role=? LIMIT 1", (value,)).fetchone():
            return "mention", value
        raise self.unknown_error("recipient", value, self._recipient_candidates())

    def groups_of(self, agent_id: str, role: str) -> list[str]:
        """Names of the groups that contain this agent: directly, by role, by `*`, or through nesting."""
        rows = self.db.execute(
            "SELECT DISTINCT g.name FROM group_members m JOIN groups g ON g.group_id=m.group_id AND g.deleted=0"
            " WHERE (m.member_type='agent' AND m.member_value=?) OR (m.member_type='role' AND m.member_value IN (?, '*'))",
            (agent_id, role)).fetchall()
        found = {r[0] for r in rows}
        frontier = set(found)
        for _ in range(16):  # nesting depth bound; cycles end because `found` only grows
            if not frontier:
                break
            marks = ",".join("?" * len(frontier))
            rows = self.db.execute(
                "SELECT DISTINCT g.name FROM group_members m JOIN groups g ON g.group_id=m.group_id AND g.deleted=0"
                f" WHERE m.member_type='group' AND m.member_value IN ({marks})", list(frontier)).fetchall()
            frontier = {r[0] for r in rows} - found
            found |= frontier
        return sorted(found)

    # -- messages ---------------------------------------------------------------------

    def message_send(self, p: Params, ctx: CallContext) -> dict:
        sender = self.caller(p, ctx)
        author = sender
        content = p.str("content", required=True, max_len=MAX_CONTENT_BYTES, allow_nul=True)
        if len(content.encode("utf-8", "surrogatepass")) > MAX_CONTENT_BYTES:
            raise TooLarge(f"content is larger than {MAX_CONTENT_BYTES} bytes")
        fmt = p.str("format", default="markdown", max_len=16)
        if fmt not in FORMATS:
            raise InvalidParams(f"invalid format: {fmt} (must be 'markdown', 'plain', or 'json')")
        priority = p.str("priority", default="normal", max_len=16).lower()
        if priority not in PRIORITIES:
            raise InvalidParams(f"invalid priority \"{priority}\": must be critical, high, normal, or low")
        structured = p.obj("structured")
        thread_id = p.str("thread_id", max_len=128)
        client_id = p.str("client_id", max_len=128)
        acting_as = p.str("acting_as", max_len=128)
        if acting_as:
            if sender["kind"] != "user":
                raise PermissionDenied(f"only users can post as an agent (caller: {sender['agent_id']})")
            target = self.agent_row(acting_as)
            if target is None:
                raise NotFound(f"target agent does not exist: {acting_as}")
            if target["kind"] == "user":
                raise PermissionDenied("users can only post as agents, not as other users")
            author = target
        if client_id:
            # A retried send (same client id) returns the first result instead of a duplicate.
            row = self.db.execute("SELECT message_id, thread_id, created_at FROM messages WHERE agent_id=?"
                                  " AND client_id=? AND client_id!=''", (author["agent_id"], client_id)).fetchone()
            if row is not None:
                return self._send_result(row["message_id"], row["thread_id"], row["created_at"], priority, True)
        session = self.cached(("session", sender["agent_id"]), lambda: self.active_session(sender["agent_id"]))
        if session is None and sender["kind"] != "user":
            raise NoSession(f"no active session found for agent {sender['agent_id']} "
                            "(start one with: thrum session start)")
        scopes = p.pairs("scopes")
        refs = p.pairs("refs")
        for ref in refs:
            if ref["type"] == "mention":  # refs may name recipients too: check them like mentions
                kind, value = self.resolve_mention(ref["value"])
                ref["value"] = value
        for raw in p.str_list("mentions", max_items=50, max_len=128):
            kind, value = self.cached(("mention", raw), lambda: self.resolve_mention(raw))
            if kind == "group":
                scopes.append({"type": "group", "value": value})
                refs.append({"type": "group", "value": value})
            else:
                refs.append({"type": "mention", "value": value})
        reply_to = p.str("reply_to", max_len=128)
        if reply_to:
            parent = self.db.execute("SELECT agent_id FROM messages WHERE message_id=?", (reply_to,)).fetchone()
            if parent is None:
                raise NotFound(f"reply_to message not found: {reply_to}")
            refs.append({"type": "reply_to", "value": reply_to})
            if parent["agent_id"] != author["agent_id"]:  # a reply reaches the author of what it answers
                refs.append({"type": "mention", "value": parent["agent_id"]})
        payload = {"message_id": new_id("msg"), "agent_id": author["agent_id"],
                   "session_id": session["session_id"] if session else "",
                   "body": {"format": fmt, "content": content}}
        if structured is not None:
            payload["body"]["structured"] = structured
        scopes, refs = _dedupe(scopes), _dedupe(refs)
        if scopes:
            payload["scopes"] = scopes
        if refs:
            payload["refs"] = refs
        if thread_id:
            payload["thread_id"] = thread_id
        if priority != "normal":
            payload["priority"] = priority
        if client_id:
            payload["client_id"] = client_id
        if author is not sender:
            payload["authored_by"] = sender["agent_id"]
            payload["disclosed"] = p.bool("disclose")
        try:
            event = self.store.append("message.create", payload, author=author["agent_id"])
        except EventError as exc:
            raise TooLarge(str(exc)) from None
        return self._send_result(payload["message_id"], thread_id, event["timestamp"], priority, False)

    @staticmethod
    def _send_result(mid: str, thread_id: str, created_at: str, priority: str, duplicate: bool) -> dict:
        out = {"message_id": mid, "created_at": created_at, "priority": priority}
        if thread_id:
            out["thread_id"] = thread_id
        if duplicate:
            out["duplicate"] = True
        return out

    def _message_row(self, mid: str):
        row = self.db.execute("SELECT * FROM messages WHERE message_id=?", (mid,)).fetchone()
        if row is None:
            raise NotFound(f"message not found: {mid}")
        return row

    def _pairs_for(self, table: str, ids: list[str]) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        if not ids:
            return out
        marks = ",".join("?" * len(ids))
        for r in self.db.execute(f"SELECT message_id, type, value FROM {table} WHERE message_id IN ({marks})", ids):
            out.setdefault(r[0], []).append({"type": r[1], "value": r[2]})
        return out

    def _message_dict(self, r, scopes: list, refs: list, is_read: bool | None) -> dict:
        body = {"format": r["format"], "content": r["content"]}
        if r["structured"] is not None:
            body["structured"] = _loads(r["structured"], r["structured"])
        out = {"message_id": r["message_id"], "agent_id": r["agent_id"], "body": body,
               "created_at": r["created_at"], "deleted": bool(r["deleted"]), "priority": r["priority"],
               "scopes": scopes, "refs": refs}
        if r["thread_id"]:
            out["thread_id"] = r["thread_id"]
        if r["reply_to"]:
            out["reply_to"] = r["reply_to"]
        if r["updated_at"]:
            out["updated_at"] = r["updated_at"]
        if r["authored_by"]:
            out["authored_by"] = r["authored_by"]
        if is_read is not None:
            out["is_read"] = is_read
        return out

    def message_get(self, p: Params, ctx: CallContext) -> dict:
        mid = p.str("message_id", required=True, max_len=128)
        r = self._message_row(mid)
        scopes = self._pairs_for("message_scopes", [mid]).get(mid, [])
        refs = self._pairs_for("message_refs", [mid]).get(mid, [])
        reader = self.caller_id(p, ctx, required=False)
        is_read = None
        if reader:
            is_read = self.db.execute("SELECT 1 FROM message_reads WHERE agent_id=? AND message_id=?",
                                      (reader, mid)).fetchone() is not None
        msg = self._message_dict(r, scopes, refs, is_read)
        author = self.agent_row(r["agent_id"])
        msg["author"] = {"agent_id": r["agent_id"], "session_id": r["session_id"],
                         "role": author["role"] if author else "", "module": author["module"] if author else ""}
        msg["metadata"] = {}
        if r["deleted_at"]:
            msg["metadata"]["deleted_at"] = r["deleted_at"]
        if r["delete_reason"]:
            msg["metadata"]["delete_reason"] = r["delete_reason"]
        msg["version"] = r["edits"]
        return {"message": msg}

    def message_list(self, p: Params, ctx: CallContext) -> dict:
        where: list[str] = []
        args: list = []
        caller = self.caller_id(p, ctx, required=False)
        if not p.bool("include_deleted"):
            where.append("m.deleted=0")
        for key, table in (("scope", "message_scopes"), ("ref", "message_refs")):
            pair = p.obj(key)
            if pair is not None:
                if not isinstance(pair.get("type"), str) or not isinstance(pair.get("value"), str):
                    raise InvalidParams(f"{key} must be an object with string type and value")
                where.append(f"EXISTS (SELECT 1 FROM {table} x WHERE x.message_id=m.message_id AND x.type=?"
                             " AND x.value=?)")
                args += [pair["type"], pair["value"]]
        for key, column in (("thread_id", "m.thread_id"), ("author_id", "m.agent_id"), ("reply_to", "m.reply_to")):
            value = p.str(key, max_len=128)
            if value:  # `!= ''` lets SQLite use the partial indexes on thread_id and reply_to
                where.append(f"{column}=? AND {column}!=''")
                args.append(value)
        if p.bool("exclude_self") and caller:
            where.append("m.agent_id!=?")
            args.append(caller)
        exclude_author = p.str("exclude_author", max_len=128)  # another agent's inbox without its own posts
        if exclude_author:
            where.append("m.agent_id!=?")
            args.append(exclude_author)
        mention = _strip_at(p.str("mention_role", max_len=128))
        if p.bool("mentions") and not mention and caller:
            row = self.agent_row(caller)
            targets = [caller] + ([row["role"]] if row and row["role"] else [])
        else:
            targets = [mention] if mention else []
        if targets:
            marks = ",".join("?" * len(targets))
            where.append("EXISTS (SELECT 1 FROM message_refs x WHERE x.message_id=m.message_id AND x.type='mention'"
                         f" AND x.value IN ({marks}))")
            args += targets
        for_agent = p.str("for_agent", max_len=128)
        for_role = p.str("for_agent_role", max_len=64)
        if for_agent or for_role:
            if not for_role:
                row = self.agent_row(for_agent)
                for_role = row["role"] if row else for_agent
            for_agent = for_agent or for_role
            # Inbox: broadcasts, mentions of the agent or its role, and posts to its groups.
            # The addressed ids come from one materialized subquery, cheaper than a
            # correlated EXISTS per row.
            groups = self.cached(("groups_of", for_agent, for_role), lambda: self.groups_of(for_agent, for_role))
            sub = "SELECT message_id FROM message_refs WHERE type='mention' AND value IN (?,?)"
            sub_args = [for_agent, for_role]
            if groups:
                sub += (" UNION ALL SELECT message_id FROM message_scopes WHERE type='group'"
                        f" AND value IN ({','.join('?' * len(groups))})")
                sub_args += groups
            inbox = (sub, sub_args)
        else:
            inbox = None
        after = p.str("after", max_len=64)
        if after:
            try:
                where.append("m.created_ns>?")
                args.append(parse_timestamp_ns(after))
            except EventError as exc:
                raise InvalidParams(str(exc)) from None
        unread_for = p.str("unread_for_agent", max_len=128)
        # read_state_for: whose is_read/unread to report, without filtering (the web UI shows each
        # agent's inbox as that agent sees it). Reading read markers needs no identity.
        reader = unread_for or p.str("read_state_for", max_len=128) or caller
        only_unread = bool(reader) and (p.bool("unread") or bool(unread_for))
        sort_by = p.str("sort_by", default="created_at", max_len=16)
        sort_order = p.str("sort_order", default="desc", max_len=8).lower()
        if sort_by not in ("created_at", "updated_at"):
            raise InvalidParams(f"invalid sort_by: {sort_by} (must be created_at or updated_at)")
        if sort_order not in ("asc", "desc"):
            raise InvalidParams(f"invalid sort_order: {sort_order} (must be asc or desc)")
        page_size = p.int("page_size", 10, lo=1, hi=100, clamp=True) if p.raw.get("page_size") != 0 else 10
        page = p.int("page", 1, lo=1, hi=1_000_000, clamp=True)
        fast = self._view_page(p, caller, targets, for_agent, for_role, reader, only_unread, sort_by,
                               sort_order, page, page_size)
        if fast is not None:
            rows, total, unread = fast
            return self._list_result(rows, reader, only_unread, total, unread, page, page_size)
        if inbox is None:
            clause = (" WHERE " + " AND ".join(where)) if where else ""
            matching = self.db.execute(f"SELECT COUNT(*) FROM messages m{clause}", args).fetchone()[0]
        else:
            # Broadcasts and addressed messages are disjoint (broadcast = no mention, no group):
            # counting them apart lets each count use an index instead of scanning with an OR.
            sub, sub_args = inbox
            common = "".join(" AND " + w for w in where)
            matching = self.db.execute(f"SELECT COUNT(*) FROM messages m WHERE m.broadcast=1{common}",
                                       args).fetchone()[0]
            matching += self.db.execute(
                f"SELECT COUNT(*) FROM messages m WHERE m.broadcast=0{common} AND m.message_id IN ({sub})",
                args + sub_args).fetchone()[0]
            # For the page, walking messages by date and stopping at page_size is fastest when
            # matches are common; when they are rare, the audience index finds them directly.
            # The unary `+` keeps SQLite off that index.
            dense = matching * 20 >= self._message_count()
            where.append(f"({'+' if dense else ''}m.broadcast=1 OR m.message_id IN ({sub}))")
            args += sub_args
        unread = 0
        if reader:
            # Count what the reader has read among the matches by walking the reader's
            # read markers (usually far fewer rows than the messages).
            read = self.db.execute(
                "SELECT COUNT(*) FROM message_reads r JOIN messages m ON m.message_id=r.message_id"
                f" WHERE r.agent_id=?{' AND ' + ' AND '.join(where) if where else ''}", [reader] + args).fetchone()[0]
            unread = matching - read
        total = unread if only_unread else matching
        page_where, page_args = list(where), list(args)
        if only_unread:
            page_where.append("m.message_id NOT IN (SELECT message_id FROM message_reads WHERE agent_id=?)")
            page_args.append(reader)
        page_clause = (" WHERE " + " AND ".join(page_where)) if page_where else ""
        order_col = "m.created_ns" if sort_by == "created_at" else "COALESCE(NULLIF(m.updated_at,''), m.created_at)"
        order = f" ORDER BY {order_col} {sort_order.upper()}, m.message_id {sort_order.upper()}"
        rows = self.db.execute(f"SELECT m.* FROM messages m{page_clause}{order} LIMIT ? OFFSET ?",
                               page_args + [page_size, (page - 1) * page_size]).fetchall()
        return self._list_result(rows, reader, only_unread, total, unread, page, page_size)

    def _view_page(self, p: Params, caller: str, targets: list[str], for_agent: str, for_role: str, reader: str,
                   only_unread: bool, sort_by: str, sort_order: str, page: int, page_size: int):
        """The page from the audience index (views.py) when the filters are ones it serves, else None."""
        if (p.bool("include_deleted") or sort_by != "created_at" or p.obj("ref") is not None
                or any(p.str(k, max_len=128) for k in ("thread_id", "author_id", "reply_to", "after"))):
            return None
        excluded = {a for a in (caller if p.bool("exclude_self") else "", p.str("exclude_author", max_len=128)) if a}
        if len(excluded) > 1:
            return None
        exclude = excluded.pop() if excluded else ""
        scope = p.obj("scope")
        scope_key = ""
        keys = None
        if scope is not None:
            if for_agent or targets:
                return None
            if scope["type"] == "group":
                keys = ["#" + scope["value"]]
            else:
                scope_key = f"~{scope['type']}:{scope['value']}"
        if for_agent:
            if targets:
                return None
            groups = self.cached(("groups_of", for_agent, for_role), lambda: self.groups_of(for_agent, for_role))
            keys = views.audience_keys(for_agent, for_role, groups)
        elif targets:
            keys = ["@" + t for t in dict.fromkeys(targets)]
        return views.list_page(self.db, keys=keys, scope_key=scope_key, exclude_author=exclude, reader=reader,
                               only_unread=only_unread, page=page, page_size=page_size, desc=sort_order == "desc",
                               projection=self.store.projection, inbox_of=for_agent)

    def _list_result(self, rows, reader: str, only_unread: bool, total: int, unread: int, page: int,
                     page_size: int) -> dict:
        ids = [r["message_id"] for r in rows]
        scopes = self._pairs_for("message_scopes", ids)
        refs = self._pairs_for("message_refs", ids)
        read_ids: set[str] = set()
        if reader and ids and not only_unread:
            marks = ",".join("?" * len(ids))
            read_ids = {r[0] for r in self.db.execute(
                f"SELECT message_id FROM message_reads WHERE agent_id=? AND message_id IN ({marks})", [reader] + ids)}
        messages = [self._message_dict(r, scopes.get(r["message_id"], []), refs.get(r["message_id"], []),
                                       r["message_id"] in read_ids) for r in rows]
        return {"messages": messages, "total": total, "unread": unread, "page": page, "page_size": page_size,
                "total_pages": (total + page_size - 1) // page_size}

    def _message_count(self) -> int:
        # max(rowid) is O(1) and close enough to the row count to choose a query plan.
        return self.db.execute("SELECT COALESCE(MAX(rowid), 0) FROM messages").fetchone()[0]

    def _authored(self, p: Params, ctx: CallContext, verb: str):
        mid = p.str("message_id", required=True, max_len=128)
        row = self._message_row(mid)
        cid = self.caller_id(p, ctx)
        if cid not in (row["agent_id"], row["authored_by"]):
            raise PermissionDenied(f"only message author can {verb} (author: {row['agent_id']}, current: {cid})")
        return row, cid

    def message_edit(self, p: Params, ctx: CallContext) -> dict:
        content = p.str("content", max_len=MAX_CONTENT_BYTES, allow_nul=True)
        structured = p.obj("structured")
        if not content and structured is None:
            raise InvalidParams("at least one of content or structured must be provided")
        row, cid = self._authored(p, ctx, "edit")
        if row["deleted"]:
            raise Conflict(f"cannot edit deleted message: {row['message_id']}")
        body = {"format": row["format"], "content": content or row["content"]}
        if structured is not None:
            body["structured"] = structured
        try:
            event = self.store.append("message.edit", {"message_id": row["message_id"], "body": body,
                                                       "edited_by": cid}, author=row["agent_id"])
        except EventError as exc:
            raise TooLarge(str(exc)) from None
        return {"message_id": row["message_id"], "updated_at": event["timestamp"], "version": row["edits"] + 1}

    def message_delete(self, p: Params, ctx: CallContext) -> dict:
        row, _ = self._authored(p, ctx, "delete")
        if row["deleted"]:
            raise Conflict(f"message already deleted: {row['message_id']}")
        payload = {"message_id": row["message_id"]}
        reason = p.str("reason", max_len=500)
        if reason:
            payload["reason"] = reason
        event = self.store.append("message.delete", payload, author=row["agent_id"])
        return {"message_id": row["message_id"], "deleted_at": event["timestamp"]}

    def message_mark_read(self, p: Params, ctx: CallContext) -> dict:
        ids = p.str_list("message_ids", max_items=1000, max_len=128, strict=True)
        if not ids:
            raise InvalidParams("message_ids is required and must not be empty")
        reader = self.caller(p, ctx)["agent_id"]
        ids = list(dict.fromkeys(ids))
        marks = ",".join("?" * len(ids))
        existing = {r[0] for r in self.db.execute(f"SELECT message_id FROM messages WHERE message_id IN ({marks})",
                                                  ids)}
        already = {r[0] for r in self.db.execute(
            f"SELECT message_id FROM message_reads WHERE agent_id=? AND message_id IN ({marks})", [reader] + ids)}
        new = [m for m in ids if m in existing and m not in already]
        if new:  # read markers are events, so they survive rebuilds and reach other clones
            self.store.append("message.read", {"agent_id": reader, "message_ids": new}, author=reader)
        others: dict[str, list[str]] = {}
        for r in self.db.execute(f"SELECT message_id, agent_id FROM message_reads WHERE message_id IN ({marks})"
                                 " AND agent_id!=?", ids + [reader]):
            others.setdefault(r[0], []).append(r[1])
        out = {"marked_count": len([m for m in ids if m in existing]), "newly_read": len(new)}
        missing = [m for m in ids if m not in existing]
        if missing:
            out["not_found"] = missing
        if others:
            out["also_read_by"] = others
        return out

    # -- groups -------------------------------------------------------------------------

    def _live_group(self, raw: str) -> tuple[str, list[str]]:
        name = _strip_at(raw)
        ids = self._group_ids(name)
        if not ids:
            raise NotFound(f"group \"{name}\" not found")
        return name, ids

    def group_create(self, p: Params, ctx: CallContext) -> dict:
        name = validate_group_name(_strip_at(p.str("name", required=True, max_len=128)))
        description = p.str("description", max_len=500)
        creator = self.caller_id(p, ctx, required=False) or "system"
        if self._group_ids(name):
            raise Conflict(f"group \"{name}\" already exists")
        if self.agent_row(name) is not None:
            raise Conflict(f"'{name}' is an agent's name; a group may not shadow it")
        if self.db.execute("SELECT 1 FROM agents WHERE role=? LIMIT 1", (name,)).fetchone():
            raise Conflict(f"'{name}' is a role; a group may not shadow it")
        payload = {"group_id": new_id("grp"), "name": name, "created_by": creator}
        if description:
            payload["description"] = description
        event = self.store.append("group.create", payload)
        return {"group_id": payload["group_id"], "name": name, "created_at": event["timestamp"]}

    def group_delete(self, p: Params, ctx: CallContext) -> dict:
        name, ids = self._live_group(p.str("name", required=True, max_len=128))
        if name == EVERYONE:
            raise PermissionDenied("cannot delete built-in @everyone group")
        who = self.caller_id(p, ctx, required=False) or "system"
        event = None
        for gid in ids:
            event = self.store.append("group.delete", {"group_id": gid, "deleted_by": who})
        return {"name": name, "deleted_at": event["timestamp"]}

    def _member_args(self, p: Params) -> tuple[str, list[str], str, str]:
        name, ids = self._live_group(p.str("group", required=True, max_len=128))
        if name == EVERYONE:
            raise PermissionDenied("cannot modify members of built-in @everyone group")
        mtype = p.str("member_type", required=True, max_len=16)
        value = _strip_at(p.str("member_value", required=True, max_len=128))
        if mtype not in ("agent", "role", "group"):
            raise InvalidParams(f"invalid member_type \"{mtype}\" (must be 'agent', 'role' or 'group')")
        return name, ids, mtype, value

    def group_member_add(self, p: Params, ctx: CallContext) -> dict:
        name, ids, mtype, value = self._member_args(p)
        if mtype == "agent" and self.agent_row(value) is None:
            raise self.unknown_error("agent", value, [r[0] for r in self.db.execute("SELECT agent_id FROM agents")])
        if mtype == "role" and value != "*":
            try:
                validate_word(value, "role")
            except InvalidName as exc:
                raise InvalidParams(str(exc)) from None
        if mtype == "group":
            if not self._group_ids(value):
                raise NotFound(f"group \"{value}\" not found")
            if value == name:
                raise InvalidParams("a group cannot contain itself")
        result = {"group": name, "member_type": mtype, "member_value": value}
        if self.db.execute("SELECT 1 FROM group_members WHERE group_id=? AND member_type=? AND member_value=?",
                           (ids[0], mtype, value)).fetchone():
            return {**result, "status": "unchanged"}
        who = self.caller_id(p, ctx, required=False) or "system"
        self.store.append("group.member.add", {"group_id": ids[0], "member_type": mtype, "member_value": value,
                                               "added_by": who})
        return {**result, "status": "added"}

    def group_member_remove(self, p: Params, ctx: CallContext) -> dict:
        name, ids, mtype, value = self._member_args(p)
        result = {"group": name, "member_type": mtype, "member_value": value}
        who = self.caller_id(p, ctx, required=False) or "system"
        removed = False
        for gid in ids:
            if self.db.execute("SELECT 1 FROM group_members WHERE group_id=? AND member_type=? AND member_value=?",
                               (gid, mtype, value)).fetchone():
                self.store.append("group.member.remove", {"group_id": gid, "member_type": mtype,
                                                          "member_value": value, "removed_by": who})
                removed = True
        return {**result, "status": "removed" if removed else "not_a_member"}

    def _group_rows(self):
        return self.db.execute("SELECT * FROM groups WHERE deleted=0 ORDER BY name, created_ns, event_id").fetchall()

    def _members(self, ids: list[str]) -> list:
        marks = ",".join("?" * len(ids))
        return self.db.execute(f"SELECT DISTINCT member_type, member_value, added_at, added_by FROM group_members"
                               f" WHERE group_id IN ({marks}) ORDER BY member_type, member_value", ids).fetchall()

    def group_list(self, p: Params, ctx: CallContext) -> dict:
        seen: dict[str, dict] = {}
        for g in self._group_rows():
            if g["name"] in seen:
                continue
            ids = self._group_ids(g["name"])
            item = {"group_id": g["group_id"], "name": g["name"], "member_count": len(self._members(ids)),
                    "created_at": g["created_at"], "created_by": g["created_by"]}
            if g["description"]:
                item["description"] = g["description"]
            seen[g["name"]] = item
        return {"groups": list(seen.values())}

    def group_info(self, p: Params, ctx: CallContext) -> dict:
        name, ids = self._live_group(p.str("name", required=True, max_len=128))
        g = self.db.execute("SELECT * FROM groups WHERE group_id=?", (ids[0],)).fetchone()
        members = []
        for m in self._members(ids):
            item = {"member_type": m["member_type"], "member_value": m["member_value"], "added_at": m["added_at"]}
            if m["added_by"]:
                item["added_by"] = m["added_by"]
            members.append(item)
        out = {"group_id": g["group_id"], "name": name, "created_at": g["created_at"],
               "created_by": g["created_by"], "members": members}
        if g["description"]:
            out["description"] = g["description"]
        return out

    def expand_group(self, name: str) -> list[str]:
        agents: set[str] = set()
        seen: set[str] = set()
        pending = [name]
        while pending and len(seen) < 256:
            current = pending.pop()
            if current in seen:
                continue
            seen.add(current)
            ids = self._group_ids(current)
            if not ids:
                continue
            for m in self._members(ids):
                t, v = m["member_type"], m["member_value"]
                if t == "agent":
                    agents.add(v)
                elif t == "role":
                    sql = "SELECT agent_id FROM agents" + ("" if v == "*" else " WHERE role=?")
                    agents.update(r[0] for r in self.db.execute(sql, () if v == "*" else (v,)))
                elif t == "group":
                    pending.append(v)
        return sorted(agents)

    def group_members(self, p: Params, ctx: CallContext) -> dict:
        name, ids = self._live_group(p.str("name", required=True, max_len=128))
        out = {"members": [{"member_type": m["member_type"], "member_value": m["member_value"]}
                           for m in self._members(ids)]}
        if p.bool("expand"):
            out["expanded"] = self.expand_group(name)
        return out

    # -- team -----------------------------------------------------------------------------

    def inbox_counts(self, agent_id: str, role: str) -> tuple[int, int]:
        role = role or agent_id
        groups = self.cached(("groups_of", agent_id, role), lambda: self.groups_of(agent_id, role))
        return views.inbox_counts(self.db, agent_id, role, groups)

    def team_list(self, p: Params, ctx: CallContext) -> dict:
        include_offline = p.bool("include_offline")
        members = []
        for row in self.db.execute("SELECT * FROM agents ORDER BY agent_id").fetchall():
            session = self.active_session(row["agent_id"])
            if session is None and not include_offline:
                continue
            item = {"agent_id": row["agent_id"], "role": row["role"], "module": row["module"],
                    "status": "active" if session else "offline", "unmerged_commits": 0}
            for key in ("display", "hostname", "worktree"):
                if row[key]:
                    item[key] = row[key]
            if session:
                item["session_id"] = session["session_id"]
                item["session_start"] = session["started_at"]
                item["last_seen"] = session["last_seen_at"] or row["last_seen_at"]
                wc = self.db.execute("SELECT * FROM work_contexts WHERE session_id=?",
                                     (session["session_id"],)).fetchone()
                if wc is not None:
                    d = self._wc_dict(wc)
                    for key in ("intent", "current_task", "branch", "worktree_path", "file_changes",
                                "uncommitted_files", "changed_files"):
                        if key in d:
                            item[key] = d[key]
                    item["unmerged_commits"] = len(d.get("unmerged_commits", []))
            elif row["last_seen_at"]:
                item["last_seen"] = row["last_seen_at"]
            item["inbox_total"], item["inbox_unread"] = self.inbox_counts(row["agent_id"], row["role"])
            members.append(item)
        shared = {"broadcasts": views.count_addressed(self.db, ["*"])[0], "groups": {}}
        for (key,) in self.db.execute("SELECT DISTINCT key FROM keyset_keys WHERE key > '#' AND key < '#~'"):
            count = views.count_addressed(self.db, [key])[0]
            if count:
                shared["groups"][key[1:]] = count
        return {"members": members, "shared_messages": shared}


def _dedupe(pairs: list[dict]) -> list[dict]:
    seen = set()
    out = []
    for pair in pairs:
        key = (pair["type"], pair["value"])
        if key not in seen:
            seen.add(key)
            out.append(pair)
    return out


__all__ += ["validate_group_name", "ThrumError"]
