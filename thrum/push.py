"""Push: subscriptions, and the JSON-RPC notifications they deliver to open connections.

Owns the methods `subscribe`, `unsubscribe`, `subscriptions.list`, `subscriptions.attach`
and `subscriptions.detach`, the `subscription.create` / `subscription.delete` events with
their table, and delivery. Nothing here touches a socket: a listening connection is any
object with `.ctx` and `.notify(method, params)` (the Unix-socket `Connection` of
daemon.py, the WebSocket connection of ws.py).

Who hears what:

* A subscription belongs to an agent. Stored ones are events in `events.jsonl`, so they
  survive restarts and rebuilds; they last until `unsubscribe` (not until the session ends).
* `notification.message` for a stored subscription goes to every connection *attached* to
  its agent: a WebSocket connection bound to that identity, or a Unix connection that called
  `subscribe` or `subscriptions.attach`. One notification per message per connection.
* A *temporary* subscription (`temporary: true`, used by `thrum wait`) lives only as long as
  the connection that made it, and only that connection hears it.
* Attached connections also get `notification.agent`, `notification.session`,
  `notification.group`, `notification.thread.updated` and `notification.sync`.

Delivery hangs on `daemon.event_listeners`: it runs after a batch is durable and answered,
so a notification never announces something that could still be lost.
"""

from __future__ import annotations

import logging

from thrum.events import EventError, format_ns, now_ns, parse_timestamp_ns
from thrum.rpc import Conflict, InvalidParams, NotFound, Params, PermissionDenied, TooLarge

__all__ = ["make_component", "Push", "Subscription", "MessageFacts", "match", "preview", "wait_for_message",
           "SCHEMA"]

log = logging.getLogger("thrum.push")

PREVIEW_CHARS = 100
MAX_STORED_PER_AGENT = 100
MAX_TEMPORARY_PER_CONNECTION = 16
MAX_REPLAY = 100
REPLAY_SCAN = 5000          # stored messages examined for a replay, at most
SYNC_WATCH_INTERVAL = 2.0   # seconds between looks at the sync status (only while someone listens)

SCHEMA = """
CREATE TABLE subscriptions (
    agent_id TEXT NOT NULL, subscription_id INTEGER NOT NULL, session_id TEXT NOT NULL DEFAULT '',
    scope_type TEXT NOT NULL DEFAULT '', scope_value TEXT NOT NULL DEFAULT '',
    mention_role TEXT NOT NULL DEFAULT '', all_messages INTEGER NOT NULL DEFAULT 0,
    inbox INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL DEFAULT '', created_ns INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (agent_id, subscription_id)) WITHOUT ROWID;
"""


# -- the pure part: what a subscription is and what it matches ----------------------------

class Subscription:
    __slots__ = ("id", "agent_id", "scope", "mention", "all", "inbox", "after_ns", "temporary", "created_at",
                 "session_id")

    def __init__(self, id: int, agent_id: str, *, scope: tuple[str, str] | None = None, mention: str = "",
                 all: bool = False, inbox: bool = False, after_ns: int = 0, temporary: bool = False,
                 created_at: str = "", session_id: str = "") -> None:
        self.id, self.agent_id = id, agent_id
        self.scope, self.mention, self.all, self.inbox = scope, mention, all, inbox
        self.after_ns, self.temporary = after_ns, temporary
        self.created_at, self.session_id = created_at, session_id

    def same_filter(self, other: "Subscription") -> bool:
        return (self.scope, self.mention, self.all, self.inbox) == (other.scope, other.mention, other.all,
                                                                     other.inbox)

    def to_dict(self) -> dict:
        out: dict = {"id": self.id}
        if self.scope:
            out["scope_type"], out["scope_value"] = self.scope
        if self.mention:
            out["mention_role"] = self.mention
        if self.all:
            out["all"] = True
        if self.inbox:
            out["inbox"] = True
        if self.temporary:
            out["temporary"] = True
        if self.session_id:
            out["session_id"] = self.session_id
        out["created_at"] = self.created_at
        return out


class MessageFacts:
    """What matching needs to know about one message."""

    __slots__ = ("author", "authored_by", "scopes", "mentions", "groups", "broadcast", "created_ns")

    def __init__(self, author: str, *, authored_by: str = "", scopes=(), mentions=(), groups=(),
                 broadcast: bool = False, created_ns: int = 0) -> None:
        self.author, self.authored_by = author, authored_by
        self.scopes = frozenset(scopes)      # {(type, value)}
        self.mentions = frozenset(mentions)  # values of `mention` refs: agent names and roles
        self.groups = frozenset(groups)      # names of the groups it was posted to
        self.broadcast = broadcast
        self.created_ns = created_ns


def match(sub: Subscription, msg: MessageFacts, role: str = "", groups_of=lambda: frozenset()) -> str | None:
    """The match type ("all", "scope", "mention", "group", "broadcast") or None.

    Your own messages never match your subscriptions. `groups_of()` (the subscriber's
    groups) is called only for an inbox subscription on a group post, because it costs a query.
    """
    if msg.created_ns <= sub.after_ns or sub.agent_id in (msg.author, msg.authored_by):
        return None
    if sub.all:
        return "all"
    if sub.scope is not None and sub.scope in msg.scopes:
        return "scope"
    if sub.mention and (sub.mention in msg.mentions or sub.mention in msg.groups):
        return "mention"
    if sub.inbox:  # addressed to the subscriber: by name, by role, to one of its groups, or to everyone
        if sub.agent_id in msg.mentions or (role and role in msg.mentions):
            return "mention"
        if msg.groups and msg.groups & groups_of():
            return "group"
        if msg.broadcast:
            return "broadcast"
    return None


def preview(content: str, limit: int = PREVIEW_CHARS) -> str:
    """The first `limit` characters (never a cut UTF-8 sequence), with `…` when shortened."""
    if len(content) <= limit:
        return content
    return content[:limit].rstrip() + "…"


# -- the component ------------------------------------------------------------------------------

class _Listener:
    """One connection that hears notifications."""

    __slots__ = ("conn", "agent", "follow_ctx", "events", "temps")

    def __init__(self, conn, follow_ctx: bool) -> None:
        self.conn = conn
        self.agent: str | None = None  # attached agent (Unix); WebSocket follows its bound identity
        self.follow_ctx = follow_ctx
        self.events = follow_ctx       # agent/session/group/sync notifications
        self.temps: list[Subscription] = []

    def agent_id(self) -> str | None:
        return self.agent or (self.conn.ctx.bound_agent if self.follow_ctx else None)


class Push:
    """Subscriptions and delivery inside one daemon."""

    def __init__(self) -> None:
        self.daemon = None
        self.listeners: dict[int, _Listener] = {}   # id(conn) -> listener
        self.stored: dict[str, list[Subscription]] = {}  # agent -> live stored subscriptions, by id
        self._next_temp = 0
        self._sync_timer = None
        self._last_sync: dict | None = None

    # component protocol

    def extend_store(self, store) -> None:
        store.extend(SCHEMA, {"subscription.create": lambda e, ns: _apply_create(store.projection.db, e, ns),
                              "subscription.delete": lambda e, ns: _apply_delete(store.projection.db, e, ns)})

    def start(self, daemon) -> None:
        self.daemon = daemon
        daemon.push = self
        r = daemon.service.registry.add
        r("subscribe", self.rpc_subscribe, writes=True)
        r("unsubscribe", self.rpc_unsubscribe, writes=True)
        r("subscriptions.list", self.rpc_list)
        r("subscriptions.attach", self.rpc_attach)
        r("subscriptions.detach", self.rpc_detach)
        daemon.event_listeners.append(self.on_events)
        self.reload()
        self._sync_timer = daemon.loop.call_later(SYNC_WATCH_INTERVAL, self._watch_sync)

    def stop(self) -> None:
        if self._sync_timer is not None:
            self.daemon.loop.cancel(self._sync_timer)
        self.listeners.clear()

    @property
    def db(self):
        return self.daemon.store.db

    @property
    def service(self):
        return self.daemon.service

    # -- connections ---------------------------------------------------------------------------

    def listen(self, conn, *, follow_ctx: bool = False) -> _Listener:
        """Track a connection; WebSocket connections (follow_ctx) hear their bound identity's pushes."""
        lst = self.listeners.get(id(conn))
        if lst is None:
            lst = self.listeners[id(conn)] = _Listener(conn, follow_ctx)
            on_close = getattr(conn, "on_close", None)
            if on_close is not None:
                on_close.append(lambda: self.forget(conn))
        return lst

    def forget(self, conn) -> None:
        self.listeners.pop(id(conn), None)

    def activity(self) -> str:
        """Whether someone is listening now (the sync loop probes the remote meanwhile): "waiter", "web_ui" or ""."""
        listeners = self.listeners.values()
        if any(lst.follow_ctx for lst in listeners):
            return "web_ui"  # an open WebSocket (the web UI, which also holds a temporary subscription)
        if any(lst.temps for lst in listeners):
            return "waiter"  # thrum wait, MCP wait_for_message, a hook's idle waiter
        return ""

    def attach(self, conn, agent_id: str, events: bool = True) -> None:
        lst = self.listen(conn)
        lst.agent = agent_id
        lst.events = lst.events or events

    # -- stored subscriptions -------------------------------------------------------------------

    def reload(self) -> None:
        stored: dict[str, list[Subscription]] = {}
        for r in self.db.execute("SELECT * FROM subscriptions WHERE deleted=0 ORDER BY agent_id, subscription_id"):
            stored.setdefault(r["agent_id"], []).append(_from_row(r))
        self.stored = stored

    # -- RPC ----------------------------------------------------------------------------------------

    def _filter_params(self, p: Params) -> dict:
        scope = p.raw.get("scope")
        if isinstance(scope, str) and ":" in scope:  # tolerate "type:value"
            t, v = scope.split(":", 1)
            scope = {"type": t, "value": v}
        if scope is not None:
            if (not isinstance(scope, dict) or not isinstance(scope.get("type"), str)
                    or not isinstance(scope.get("value"), str) or not scope["type"] or not scope["value"]):
                raise InvalidParams("scope must be an object {type, value} with non-empty strings")
            if len(scope["type"]) > 64 or len(scope["value"]) > 256:
                raise TooLarge("scope is too long")
            scope = (scope["type"], scope["value"])
        mention = p.str("mention_role", max_len=128).strip()
        mention = mention[1:] if mention.startswith("@") else mention  # `@reviewer` and `reviewer` are one role
        every, inbox = p.bool("all"), p.bool("inbox")
        if every:  # the firehose includes everything else
            scope, mention, inbox = None, "", False
        if not (scope or mention or every or inbox):
            raise InvalidParams("at least one of scope, mention_role, all or inbox must be specified")
        return {"scope": scope, "mention": mention, "all": every, "inbox": inbox}

    def rpc_subscribe(self, p: Params, ctx) -> dict:
        """subscribe {scope?, mention_role?, all?, inbox?, temporary?, after?, replay?, caller_agent_id?}."""
        agent = self.service.caller(p, ctx)["agent_id"]
        filters = self._filter_params(p)
        session = self.service.active_session(agent)
        session_id = session["session_id"] if session else ""
        after = p.str("after", max_len=64)
        replay = p.int("replay", 0, lo=0, hi=MAX_REPLAY, clamp=True)
        now = now_ns()
        conn = getattr(ctx, "conn", None)
        if p.bool("temporary"):
            if conn is None or not hasattr(conn, "notify"):
                raise InvalidParams("a temporary subscription needs a connection that stays open")
            try:
                after_ns = parse_timestamp_ns(after) if after else 0
            except EventError as exc:
                raise InvalidParams(f"after: {exc}") from None
            lst = self.listen(conn, follow_ctx=ctx.transport == "ws")
            if len(lst.temps) >= MAX_TEMPORARY_PER_CONNECTION:
                raise TooLarge(f"a connection may hold at most {MAX_TEMPORARY_PER_CONNECTION} temporary subscriptions")
            self._next_temp -= 1  # negative ids: never confused with stored ones
            sub = Subscription(self._next_temp, agent, after_ns=after_ns, temporary=True,
                               created_at=format_ns(now), session_id=session_id, **filters)
            lst.temps.append(sub)
            if replay:  # after the reply has gone out
                self.daemon.loop.call_soon(self._replay, conn, sub, replay)
            log.debug("temporary subscription %d for %s", sub.id, agent)
            return {"subscription_id": sub.id, "session_id": session_id, "created_at": sub.created_at,
                    "temporary": True}
        if after or replay:
            raise InvalidParams("after and replay apply to temporary subscriptions only")
        candidate = Subscription(0, agent, **filters)
        mine = self.db.execute("SELECT * FROM subscriptions WHERE agent_id=? AND deleted=0", (agent,)).fetchall()
        for r in mine:
            if _from_row(r).same_filter(candidate):
                raise Conflict(f"subscribe: subscription already exists (#{r['subscription_id']})",
                               {"subscription_id": r["subscription_id"]})
        if len(mine) >= MAX_STORED_PER_AGENT:
            raise TooLarge(f"an agent may hold at most {MAX_STORED_PER_AGENT} subscriptions")
        # Ids count up over every row ever stored here (deleted ones too), so one is never reused.
        sid = self.db.execute("SELECT COALESCE(MAX(subscription_id), 0) + 1 FROM subscriptions").fetchone()[0]
        payload: dict = {"subscription_id": sid, "agent_id": agent}
        if session_id:
            payload["session_id"] = session_id
        if filters["scope"]:
            payload["scope"] = {"type": filters["scope"][0], "value": filters["scope"][1]}
        if filters["mention"]:
            payload["mention_role"] = filters["mention"]
        if filters["all"]:
            payload["all"] = True
        if filters["inbox"]:
            payload["inbox"] = True
        event = self.daemon.store.append("subscription.create", payload)
        if conn is not None and ctx.transport == "unix" and hasattr(conn, "notify"):
            self.attach(conn, agent)  # the connection that subscribed hears it while it stays open
        return {"subscription_id": sid, "session_id": session_id, "created_at": event["timestamp"]}

    def rpc_unsubscribe(self, p: Params, ctx) -> dict:
        raw = p.raw.get("subscription_id")
        if raw in (None, 0, "0", ""):
            raise InvalidParams("subscription_id is required")
        if isinstance(raw, str) and raw.lstrip("-#").isdigit():
            raw = int(raw.lstrip("#"))
        sid = Params({"subscription_id": raw}).int("subscription_id")
        agent = self.service.caller_id(p, ctx)
        if sid < 0:
            for lst in self.listeners.values():
                for sub in lst.temps:
                    if sub.id == sid:
                        if sub.agent_id != agent:
                            raise PermissionDenied(f"subscription #{sid} belongs to {sub.agent_id}, not {agent}")
                        lst.temps.remove(sub)
                        return {"removed": True}
            return {"removed": False}
        rows = self.db.execute("SELECT agent_id FROM subscriptions WHERE subscription_id=? AND deleted=0",
                               (sid,)).fetchall()
        owners = {r[0] for r in rows}
        if agent not in owners:
            if owners:
                raise PermissionDenied(f"subscription #{sid} belongs to {', '.join(sorted(owners))}, not {agent}")
            return {"removed": False}
        self.daemon.store.append("subscription.delete", {"subscription_id": sid, "agent_id": agent})
        return {"removed": True}

    def rpc_list(self, p: Params, ctx) -> dict:
        agent = self.service.caller_id(p, ctx)
        rows = self.db.execute("SELECT * FROM subscriptions WHERE agent_id=? AND deleted=0"
                               " ORDER BY created_ns DESC, subscription_id DESC", (agent,)).fetchall()
        temps = [s for lst in self.listeners.values() for s in lst.temps if s.agent_id == agent]
        temps.sort(key=lambda s: s.id)  # newest (most negative) first
        return {"subscriptions": [s.to_dict() for s in temps] + [_from_row(r).to_dict() for r in rows]}

    def rpc_attach(self, p: Params, ctx) -> dict:
        agent = self.service.caller(p, ctx)["agent_id"]
        conn = getattr(ctx, "conn", None)
        if conn is None or not hasattr(conn, "notify"):
            raise InvalidParams("attach needs a connection that stays open")
        self.attach(conn, agent, events=p.bool("events", True))
        return {"agent_id": agent, "attached": True, "subscriptions": len(self.stored.get(agent, []))}

    def rpc_detach(self, p: Params, ctx) -> dict:
        conn = getattr(ctx, "conn", None)
        lst = self.listeners.get(id(conn))
        if lst is None or (lst.agent is None and not lst.temps and not lst.follow_ctx):
            return {"detached": False}
        lst.agent = None
        lst.events = lst.follow_ctx
        return {"detached": True}

    # -- delivery -----------------------------------------------------------------------------------

    def on_events(self, events: list) -> None:
        if any(e.get("type", "").startswith("subscription.") for e in events):
            self.reload()
        if not self.listeners:
            return
        groups_cache: dict = {}
        threads: dict[str, dict] = {}
        for e in events:
            etype = e.get("type", "")
            try:
                if etype in _MESSAGE_EVENTS:
                    self._message_event(e, _MESSAGE_EVENTS[etype], groups_cache, threads)
                elif etype == "message.read":
                    for tid in self._threads_of(e.get("message_ids") or []):
                        threads.setdefault(tid, e)
                else:
                    note = self._global_note(e)
                    if note is not None:
                        self.broadcast(*note)
            except Exception:  # one odd event (e.g. merged from an old clone) must not stop the rest
                log.exception("push for %s %s failed", etype, e.get("event_id"))
        for tid, e in threads.items():
            self._thread_updated(tid, e)

    def broadcast(self, method: str, params: dict) -> None:
        """Send to every connection that hears agent/session/group/sync notifications."""
        for lst in list(self.listeners.values()):
            if lst.events:
                lst.conn.notify(method, params)

    def _facts(self, mid: str):
        row = self.db.execute("SELECT * FROM messages WHERE message_id=?", (mid,)).fetchone()
        if row is None:
            return None, None
        scopes = [{"type": r[0], "value": r[1]} for r in
                  self.db.execute("SELECT type, value FROM message_scopes WHERE message_id=?", (mid,))]
        refs = [{"type": r[0], "value": r[1]} for r in
                self.db.execute("SELECT type, value FROM message_refs WHERE message_id=?", (mid,))]
        facts = MessageFacts(
            row["agent_id"], authored_by=row["authored_by"],
            scopes=[(s["type"], s["value"]) for s in scopes],
            mentions=[r["value"] for r in refs if r["type"] == "mention"],
            groups=[s["value"] for s in scopes + refs if s["type"] == "group"],
            broadcast=bool(row["broadcast"]), created_ns=row["created_ns"])
        return row, (facts, scopes, refs)

    def _payload(self, row, scopes: list, refs: list, kind: str, event: dict) -> dict:
        author = self.service.agent_row(row["agent_id"])
        out = {
            "message_id": row["message_id"], "event": kind, "thread_id": row["thread_id"],
            "author": {"agent_id": row["agent_id"],
                       "name": (author["name"] or row["agent_id"]) if author else row["agent_id"],
                       "role": author["role"] if author else "", "module": author["module"] if author else "",
                       "session_id": row["session_id"]},
            "preview": "" if kind == "deleted" else preview(row["content"]),
            "priority": row["priority"], "scopes": scopes, "refs": refs,
            "created_at": row["created_at"], "timestamp": event.get("timestamp") or row["created_at"],
        }
        if row["reply_to"]:
            out["reply_to"] = row["reply_to"]
        if row["authored_by"]:
            out["authored_by"] = row["authored_by"]
        return out

    def _message_event(self, e: dict, kind: str, groups_cache: dict, threads: dict) -> None:
        candidates = []
        for lst in list(self.listeners.values()):
            agent = lst.agent_id()
            subs = lst.temps + (self.stored.get(agent, []) if agent else [])
            if subs:
                candidates.append((lst, subs))
        if kind == "created" and e.get("thread_id"):
            threads.setdefault(e["thread_id"], e)
        if not candidates:
            return
        row, parts = self._facts(e.get("message_id") or "")
        if row is None:
            return
        facts, scopes, refs = parts
        payload = None
        for lst, subs in candidates:
            for sub in subs:
                role, groups = self._subscriber(sub.agent_id, groups_cache)
                how = match(sub, facts, role, groups)
                if how is None:
                    continue
                if payload is None:
                    payload = self._payload(row, scopes, refs, kind, e)
                lst.conn.notify("notification.message", {
                    **payload, "matched_subscription": {"subscription_id": sub.id, "match_type": how}})
                break

    def _subscriber(self, agent_id: str, cache: dict):
        """(role, lazy groups-of function) for a subscriber, cached for one batch."""
        entry = cache.get(agent_id)
        if entry is None:
            row = self.service.agent_row(agent_id)
            role = row["role"] if row else ""
            holder: list = []

            def groups() -> frozenset:
                if not holder:
                    holder.append(frozenset(self.service.groups_of(agent_id, role)))
                return holder[0]
            entry = cache[agent_id] = (role, groups)
        return entry

    def _replay(self, conn, sub: Subscription, limit: int) -> None:
        """Deliver stored unread messages that match a new temporary subscription, oldest first."""
        lst = self.listeners.get(id(conn))
        if lst is None or sub not in lst.temps:
            return
        sent, last_ns, last_id, scanned = 0, sub.after_ns, "", 0
        cache: dict = {}
        role, groups = self._subscriber(sub.agent_id, cache)
        while sent < limit and scanned < REPLAY_SCAN:
            rows = self.db.execute(
                "SELECT m.message_id, m.created_ns FROM messages m WHERE m.deleted=0 AND"
                " (m.created_ns > ? OR (m.created_ns = ? AND m.message_id > ?)) AND m.agent_id != ?"
                " AND NOT EXISTS (SELECT 1 FROM message_reads r WHERE r.agent_id=? AND r.message_id=m.message_id)"
                " ORDER BY m.created_ns, m.message_id LIMIT 500",
                (last_ns, last_ns, last_id, sub.agent_id, sub.agent_id)).fetchall()
            if not rows:
                break
            for r in rows:
                scanned += 1
                last_ns, last_id = r["created_ns"], r["message_id"]
                row, parts = self._facts(r["message_id"])
                if row is None:
                    continue
                facts, scopes, refs = parts
                how = match(sub, facts, role, groups)
                if how is None:
                    continue
                payload = self._payload(row, scopes, refs, "created", {"timestamp": row["created_at"]})
                payload["replay"] = True
                conn.notify("notification.message", {
                    **payload, "matched_subscription": {"subscription_id": sub.id, "match_type": how}})
                sent += 1
                if sent >= limit:
                    break

    # thread summaries (spec §5.1), for attached connections

    def _threads_of(self, ids: list) -> list[str]:
        ids = [i for i in ids if isinstance(i, str)][:1000]
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        return [r[0] for r in self.db.execute(
            f"SELECT DISTINCT thread_id FROM messages WHERE thread_id != '' AND message_id IN ({marks})", ids)]

    def _thread_updated(self, thread_id: str, event: dict) -> None:
        targets = [lst for lst in self.listeners.values() if lst.events]
        if not targets:
            return
        # `thread_id!=''` lets SQLite use the partial index on thread_id (a bound value alone does not
        # prove the index's WHERE): without it each lookup scans every message.
        row = self.db.execute("SELECT COUNT(*), MAX(created_ns) FROM messages WHERE thread_id=? AND thread_id!=''"
                              " AND deleted=0", (thread_id,)).fetchone()
        last = self.db.execute("SELECT agent_id, content, created_at FROM messages WHERE thread_id=?"
                               " AND thread_id!='' AND deleted=0 ORDER BY created_ns DESC LIMIT 1",
                               (thread_id,)).fetchone()
        base = {"thread_id": thread_id, "message_count": row[0],
                "last_activity": last["created_at"] if last else "", "last_sender": last["agent_id"] if last else "",
                "preview": preview(last["content"]) if last else None,
                "timestamp": event.get("timestamp", "")}
        unread = self._thread_unread(thread_id, row[0], {lst.agent_id() for lst in targets} - {""})
        for lst in targets:
            lst.conn.notify("notification.thread.updated",
                            {**base, "unread_count": unread.get(lst.agent_id(), 0)})

    def _thread_unread(self, thread_id: str, total: int, agents: set) -> dict[str, int]:
        """agent -> messages of the thread that are neither theirs nor read by them.

        Two grouped queries per thread, whatever the number of listeners (one query per
        listener made each threaded send cost thread size x listeners lookups)."""
        if not agents:
            return {}
        own = dict(self.db.execute(
            "SELECT agent_id, COUNT(*) FROM messages WHERE thread_id=? AND thread_id!='' AND deleted=0"
            " GROUP BY agent_id", (thread_id,)).fetchall())
        read = dict(self.db.execute(
            "SELECT r.agent_id, COUNT(*) FROM messages m JOIN message_reads r ON r.message_id=m.message_id"
            " WHERE m.thread_id=? AND m.thread_id!='' AND m.deleted=0 AND r.agent_id!=m.agent_id"
            " GROUP BY r.agent_id", (thread_id,)).fetchall())
        return {a: total - own.get(a, 0) - read.get(a, 0) for a in agents}

    # agent, session and group changes

    def _global_note(self, e: dict):
        etype, ts = e.get("type", ""), e.get("timestamp", "")
        if etype == "agent.register":
            return "notification.agent", {"event": "registered", "agent_id": e.get("agent_id", ""),
                                          "kind": e.get("kind") or "agent", "role": e.get("role", ""),
                                          "module": e.get("module", ""), "display": e.get("display", ""),
                                          "timestamp": ts}
        if etype == "agent.cleanup":
            return "notification.agent", {"event": "deleted", "agent_id": e.get("agent_id", ""),
                                          "reason": e.get("reason", ""), "timestamp": ts}
        if etype == "agent.update":
            out = {"event": "updated", "agent_id": e.get("agent_id", ""), "timestamp": ts}
            for wc in e.get("work_contexts") or []:
                if isinstance(wc, dict):
                    out["session_id"] = wc.get("session_id", "")
                    for key in ("intent", "current_task", "branch"):
                        if key in wc:
                            out[key] = wc[key]
            return "notification.agent", out
        if etype in ("agent.session.start", "session.start"):
            return "notification.session", {"event": "started", "session_id": e.get("session_id", ""),
                                            "agent_id": e.get("agent_id", ""), "timestamp": ts}
        if etype in ("agent.session.end", "session.end"):
            row = self.db.execute("SELECT agent_id FROM sessions WHERE session_id=?",
                                  (e.get("session_id", ""),)).fetchone()
            return "notification.session", {"event": "ended", "session_id": e.get("session_id", ""),
                                            "agent_id": row[0] if row else "", "reason": e.get("reason") or "normal",
                                            "timestamp": ts}
        if etype.startswith("group."):
            kinds = {"group.create": "created", "group.delete": "deleted", "group.update": "updated",
                     "group.member.add": "member_added", "group.member.remove": "member_removed"}
            if etype not in kinds:
                return None
            row = self.db.execute("SELECT name FROM groups WHERE group_id=?", (e.get("group_id", ""),)).fetchone()
            out = {"event": kinds[etype], "group_id": e.get("group_id", ""),
                   "name": e.get("name") or (row[0] if row else ""), "timestamp": ts}
            if "member_type" in e:
                out["member_type"], out["member_value"] = e.get("member_type"), e.get("member_value", "")
            return "notification.group", out
        return None

    # sync results: the sync loop owns its status; we announce its changes

    def _watch_sync(self) -> None:
        self._sync_timer = self.daemon.loop.call_later(SYNC_WATCH_INTERVAL, self._watch_sync)
        if not any(lst.events for lst in self.listeners.values()):
            return
        try:
            status = dict(getattr(self.service, "sync_details", self.service.sync_status)())
        except Exception:
            log.exception("sync status failed")
            return
        # Compare the fields of spec's sync.status only: a counter such as "seconds since" must not
        # turn every look into a notification.
        key = {k: status.get(k) for k in _SYNC_KEYS}
        if key != self._last_sync:
            first = self._last_sync is None
            self._last_sync = key
            if not first:
                self.broadcast("notification.sync", {**status, "timestamp": format_ns(now_ns())})


_SYNC_KEYS = ("sync_state", "last_sync_at", "last_error", "local_only", "running")
_MESSAGE_EVENTS = {"message.create": "created", "message.edit": "edited", "message.delete": "deleted"}


def _from_row(r) -> Subscription:
    return Subscription(r["subscription_id"], r["agent_id"],
                        scope=(r["scope_type"], r["scope_value"]) if r["scope_type"] else None,
                        mention=r["mention_role"], all=bool(r["all_messages"]), inbox=bool(r["inbox"]),
                        created_at=r["created_at"], session_id=r["session_id"])


# appliers (idempotent, order-tolerant: a delete that arrives first leaves a tombstone the create cannot revive)

def _apply_create(db, e: dict, ns: int) -> None:
    agent, sid = e.get("agent_id"), e.get("subscription_id")
    if not agent or not isinstance(sid, int) or isinstance(sid, bool):
        return
    scope = e.get("scope") if isinstance(e.get("scope"), dict) else {}
    db.execute(
        "INSERT OR IGNORE INTO subscriptions(agent_id, subscription_id, session_id, scope_type, scope_value,"
        " mention_role, all_messages, inbox, created_at, created_ns) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (agent, sid, e.get("session_id") or "", scope.get("type") or "", scope.get("value") or "",
         e.get("mention_role") or "", 1 if e.get("all") else 0, 1 if e.get("inbox") else 0,
         e.get("timestamp", ""), ns))


def _apply_delete(db, e: dict, ns: int) -> None:
    agent, sid = e.get("agent_id"), e.get("subscription_id")
    if not agent or not isinstance(sid, int) or isinstance(sid, bool):
        return
    db.execute("INSERT OR IGNORE INTO subscriptions(agent_id, subscription_id, created_ns, deleted)"
                    " VALUES (?,?,?,1)", (agent, sid, ns))
    db.execute("UPDATE subscriptions SET deleted=1 WHERE agent_id=? AND subscription_id=?", (agent, sid))


# -- the client side: wait for one message (thrum wait, MCP wait_for_message) -------------------------

def wait_for_message(client, caller_agent_id: str, filters: dict, timeout: float, after: str = "",
                     on_listening=None, *, accept=None, replay: int = 1) -> dict | None:
    """Block on push until a matching message arrives; claim it (mark it read) and return it (message.get form).

    `client` is a connected `rpc.Client`; `filters` are subscribe filters (`{"inbox": True}`,
    `{"scope": {...}}`, `{"mention_role": ...}`, `{"all": True}`); `after` (RFC 3339) also admits
    unread messages created since then (the oldest comes first). Returns None after `timeout`
    seconds. A message another waiter of the same agent marked read first is skipped, so no two
    waiters return the same message. `accept(notification_params)`, when given, may refuse a
    match, which then stays unread (give a larger `replay` so an acceptable older one is found).
    Raises rpc.RPCError / rpc.DaemonUnavailable.
    """
    import time

    deadline = time.monotonic() + timeout
    queue: list = []
    params = {**filters, "temporary": True, "replay": replay, "caller_agent_id": caller_agent_id}
    if after:
        params["after"] = after
    sub = client.call("subscribe", params, queue.append)
    if on_listening is not None:
        on_listening(sub)
    while True:
        while queue:
            note = queue.pop(0)
            p = note.get("params") or {}
            if (note.get("method") != "notification.message" or p.get("event") != "created"
                    or (p.get("matched_subscription") or {}).get("subscription_id") != sub["subscription_id"]):
                continue
            if accept is not None and not accept(p):
                continue  # not wanted: left unread for someone else to take
            mid = p["message_id"]
            marked = client.call("message.markRead", {"message_ids": [mid], "caller_agent_id": caller_agent_id},
                                 queue.append)
            if not marked.get("newly_read", 1):
                continue  # another waiter (or an inbox) took it first
            return client.call("message.get", {"message_id": mid, "caller_agent_id": caller_agent_id},
                               queue.append)["message"]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            queue.append(client.read_message(timeout=remaining))
        except TimeoutError:
            return None


def make_component(paths):
    return Push()
