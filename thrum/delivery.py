"""Delivery into the agent and receipts: which messages an agent has been *given*, and when.

A message is *delivered* to a recipient when it reached the agent's context (a hook injected
it, even cut short or as a one-line summary; `inbox --peek` showed it) and *read* when its
full text was shown (`inbox`, `wait`, `message get`, the MCP tools, a hook that injected it
whole). Both are log events, so they survive a rebuild and travel with sync:

    message.delivered {agent_id, message_ids, via?}     (new; in the recipient's message shard)
    message.read      {agent_id, message_ids}           (the existing read marker)

`message.deliver` is what the runtime hooks call: it hands over, most urgent first and
within a character budget, the messages addressed to the caller (by name, role, group or
to everyone; never its own) that it has been given in no way yet, and records them in the
same request, so two hooks of one agent (a PostToolUse hook and the idle waiter) never
both get one. Its cost follows what is new, not the history: each agent has a cursor (the
messages table's rowid up to which nothing is left for it), and only rows after the cursor
are looked at. The cursor is local bookkeeping, not in the log; after a rebuild (or for an
agent that never used hooks) the first call starts it at the newest message and hands over
the unread backlog instead (`started`), most urgent first, the rest as a count.

Receipts: `message.sent` lists the caller's messages with each recipient's state
(pending, delivered, read) and times; `message.get` gains `receipts`. Recipients are
resolved when asked: the agents a message's address names now (`@name`, `@role`, a group's
members, every agent for a broadcast), never its author.
"""

from __future__ import annotations

import time

from thrum.push import preview
from thrum.rpc import InvalidParams, NotFound, Params
from thrum.service import CallContext

__all__ = ["Delivery", "PRIORITY_RANK", "make_component"]

SCHEMA = """
CREATE TABLE message_deliveries (agent_id TEXT NOT NULL, message_id TEXT NOT NULL, delivered_at TEXT NOT NULL,
    via TEXT NOT NULL DEFAULT '', PRIMARY KEY (agent_id, message_id)) WITHOUT ROWID;
CREATE INDEX message_deliveries_message ON message_deliveries(message_id);
CREATE TABLE delivery_cursors (agent_id TEXT PRIMARY KEY, after_seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX messages_authored_by ON messages(authored_by, created_ns) WHERE authored_by != '';
"""

_RECEIPT_EVENTS = {"message.delivered": "delivered", "message.read": "read"}
PRIORITY_RANK = {"critical": 0, "high": 1, "normal": 2, "low": 3}
DEFAULT_BUDGET = 4000
OVERHEAD = 160          # characters a hook adds around each message (attribution, fence, reply command)
SCAN_LIMIT = 500        # new messages looked at per call; the rest wait for the next one
BACKLOG_LOOK = 100      # unread backlog messages considered when a cursor starts (or on `backlog`)
BACKLOG_SCAN = 5000     # ... among this many of the newest messages (older unread ones stay in the inbox)
MAX_IDS = 1000
SENT_SCAN = 5000        # own messages a filtered `message.sent` looks through, at most


class Delivery:
    """The daemon component: receipts in the projection, and the RPC methods over them."""

    def __init__(self) -> None:
        self.daemon = None

    # component protocol

    def extend_store(self, store) -> None:
        store.extend(SCHEMA, {"message.delivered": lambda e, ns: _apply_delivered(store.projection, e)})

    def start(self, daemon) -> None:
        self.daemon = daemon
        registry = daemon.service.registry
        unix = ("unix",)
        registry.add("message.deliver", self.rpc_deliver, writes=True, transports=unix)
        registry.add("message.markDelivered", self.rpc_mark_delivered, writes=True)
        registry.add("message.sent", self.rpc_sent)
        registry.add("message.receipts", self.rpc_receipts)
        get = registry.methods["message.get"]
        registry.add("message.get", self._with_receipts(get.fn), writes=get.writes, transports=get.transports)
        daemon.event_listeners.append(self.on_events)

    def stop(self) -> None:
        pass

    @property
    def db(self):
        return self.daemon.store.db

    @property
    def service(self):
        return self.daemon.service

    # -- recording --------------------------------------------------------------------------

    def _record(self, agent_id: str, delivered: list[str], read: list[str], via: str) -> None:
        store = self.daemon.store
        if delivered:
            payload = {"agent_id": agent_id, "message_ids": delivered}
            if via:
                payload["via"] = via
            store.append("message.delivered", payload, author=agent_id)
        if read:
            store.append("message.read", {"agent_id": agent_id, "message_ids": read}, author=agent_id)

    def _given(self, agent_id: str, ids: list[str]) -> set[str]:
        """Which of `ids` this agent was given already (delivered or read)."""
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))
        args = [agent_id] + ids
        found = {r[0] for r in self.db.execute(
            f"SELECT message_id FROM message_reads WHERE agent_id=? AND message_id IN ({marks})", args)}
        found.update(r[0] for r in self.db.execute(
            f"SELECT message_id FROM message_deliveries WHERE agent_id=? AND message_id IN ({marks})", args))
        return found

    # -- push: authors hear their receipts ----------------------------------------------------

    def on_events(self, events: list) -> None:
        """`notification.receipt` {agent_id, state, message_ids, timestamp} to the connections of the
        messages' authors (a web UI showing your own messages updates their receipts live)."""
        push = getattr(self.daemon, "push", None)
        if push is None or not push.listeners:
            return
        for e in events:
            state = _RECEIPT_EVENTS.get(e.get("type", ""))
            ids = [m for m in (e.get("message_ids") or []) if isinstance(m, str)][:MAX_IDS] if state else []
            if not ids:
                continue
            marks = ",".join("?" * len(ids))
            by_author: dict[str, list[str]] = {}
            for mid, author, written_by in self.db.execute(
                    f"SELECT message_id, agent_id, authored_by FROM messages WHERE message_id IN ({marks})", ids):
                for who in {author, written_by} - {"", e.get("agent_id")}:
                    by_author.setdefault(who, []).append(mid)
            if not by_author:
                continue
            for lst in list(push.listeners.values()):
                mine = by_author.get(lst.agent_id() or "")
                if mine and lst.events:
                    lst.conn.notify("notification.receipt", {"agent_id": e.get("agent_id", ""), "state": state,
                                                             "message_ids": mine,
                                                             "timestamp": e.get("timestamp", "")})

    # -- message.deliver ----------------------------------------------------------------------

    def rpc_deliver(self, p: Params, ctx) -> dict:
        """Hand over what the caller has not been given yet, most urgent first, within `budget` characters.

        → {messages: [{message_id, agent_id, created_at, priority, audience, body{format, content},
        truncated?, reply_to?, thread_id?, authored_by?}], more, started, unread?}
        """
        me = self.service.caller(p, ctx)
        agent_id, role = me["agent_id"], me["role"]
        budget = p.int("budget", DEFAULT_BUDGET, lo=200, hi=32_000, clamp=True)
        via = p.str("via", max_len=64)
        groups = self.service.cached(("groups_of", agent_id, role),
                                     lambda: self.service.groups_of(agent_id, role))
        deadline = p.raw.get("deadline")
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, (int, float))):
            raise InvalidParams("deadline must be a number (seconds since the epoch)")
        row = self.db.execute("SELECT after_seq FROM delivery_cursors WHERE agent_id=?", (agent_id,)).fetchone()
        started = row is None
        newest = self.db.execute("SELECT COALESCE(MAX(rowid), 0) FROM messages").fetchone()[0]
        cursor = newest if started else row[0]
        candidates = self._addressed(agent_id, role, groups, after=cursor, limit=SCAN_LIMIT)
        scanned_all = len(candidates) < SCAN_LIMIT
        if started or p.bool("backlog"):
            # What was waiting before the cursor: the newest unread, not given yet, of the latest messages.
            candidates += self._addressed(agent_id, role, groups, after=max(0, cursor - BACKLOG_SCAN), upto=cursor,
                                          newest_first=True, limit=BACKLOG_LOOK)
        candidates.sort(key=lambda r: (PRIORITY_RANK.get(r["priority"], 2), r["created_ns"], r["message_id"]))
        chosen, left = _within_budget(candidates, budget)
        result = {"more": len(left), "started": started}
        if started or p.bool("backlog"):
            unread = self.service.inbox_counts(agent_id, role)[1]  # before the deadline check: it can be slow
            result["unread"] = max(0, unread - sum(1 for _, cut in chosen if cut is None))
        if deadline is not None and time.time() > deadline:
            # The caller has given up waiting by now: recording these as delivered would lose them.
            return {"messages": [], "more": len(candidates), "started": started, "late": True}
        out_messages = []
        delivered, read = [], []
        for r, cut in chosen:
            delivered.append(r["message_id"])
            if cut is None:
                read.append(r["message_id"])
            out_messages.append(self._delivered_dict(r, cut, agent_id, role, groups))
        self._record(agent_id, delivered, read, via)
        # The cursor moves past everything handled: up to the first message after it still left, or past
        # all that was looked at.
        left_after = [r["seq"] for r in left if r["seq"] > cursor]
        if left_after:
            new_cursor = min(left_after) - 1
        elif not scanned_all:  # more may follow the rows looked at: stop after the last of them
            new_cursor = max(r["seq"] for r, _ in chosen if r["seq"] > cursor)
        else:
            new_cursor = newest
        if started or new_cursor != cursor:
            self.db.execute("INSERT OR REPLACE INTO delivery_cursors(agent_id, after_seq) VALUES (?,?)",
                            (agent_id, new_cursor))
        return {"messages": out_messages, **result}

    def _addressed(self, agent_id: str, role: str, groups: list[str], *, after: int, upto: int | None = None,
                   newest_first: bool = False, limit: int) -> list[dict]:
        """Messages in the rowid range (after, upto] addressed to this agent, not its own, not deleted, and
        not given to it yet. The rowid range comes first in the plan: only those rows are walked."""
        args: list = [after]
        bound = ""
        if upto is not None:
            bound = " AND m.rowid<=?"
            args.append(upto)
        args += [agent_id, agent_id, agent_id, role]
        group_test = ""
        if groups:
            group_test = (" OR EXISTS (SELECT 1 FROM message_scopes s WHERE s.message_id=m.message_id"
                          f" AND s.type='group' AND s.value IN ({','.join('?' * len(groups))}))")
            args += groups
        args += [agent_id, agent_id, limit]
        rows = self.db.execute(
            f"SELECT m.rowid AS seq, m.* FROM messages m WHERE m.rowid>?{bound} AND m.deleted=0 AND m.agent_id!=?"
            " AND m.authored_by!=?"
            " AND (m.broadcast=1 OR EXISTS (SELECT 1 FROM message_refs x WHERE x.message_id=m.message_id"
            " AND x.type='mention' AND x.value IN (?,?))" + group_test + ")"
            " AND NOT EXISTS (SELECT 1 FROM message_reads r WHERE r.agent_id=? AND r.message_id=m.message_id)"
            " AND NOT EXISTS (SELECT 1 FROM message_deliveries d WHERE d.agent_id=? AND d.message_id=m.message_id)"
            f" ORDER BY m.rowid {'DESC' if newest_first else 'ASC'} LIMIT ?", args).fetchall()
        return [dict(r) for r in rows]

    def _delivered_dict(self, r: dict, cut: int | None, agent_id: str, role: str, groups: list[str]) -> dict:
        content = r["content"]
        out = {"message_id": r["message_id"], "agent_id": r["agent_id"], "created_at": r["created_at"],
               "priority": r["priority"], "audience": self._audience(r, agent_id, role, groups),
               "body": {"format": r["format"], "content": content if cut is None else content[:cut]}}
        if cut is not None:
            out["truncated"] = True
            out["length"] = len(content)
        for key in ("reply_to", "thread_id", "authored_by"):
            if r.get(key):
                out[key] = r[key]
        return out

    def _audience(self, r: dict, agent_id: str, role: str, groups: list[str]) -> str:
        """How the message reached this agent: "you", "@role", "@group" or "@everyone"."""
        if r["broadcast"]:
            return "@everyone"
        refs = {(x[0], x[1]) for x in self.db.execute(
            "SELECT type, value FROM message_refs WHERE message_id=?", (r["message_id"],))}
        if ("mention", agent_id) in refs:
            return "you"
        if role and ("mention", role) in refs:
            return "@" + role
        for (kind, value) in sorted(refs):
            if kind == "group" and value in groups:
                return "@" + value
        scopes = [x[0] for x in self.db.execute(
            "SELECT value FROM message_scopes WHERE message_id=? AND type='group'", (r["message_id"],))]
        return "@" + next((g for g in scopes if g in groups), scopes[0] if scopes else "everyone")

    # -- message.markDelivered -------------------------------------------------------------------

    def rpc_mark_delivered(self, p: Params, ctx) -> dict:
        """Record that messages reached the caller's context (e.g. `inbox --peek` showed them)."""
        ids = _id_list(p)
        agent_id = self.service.caller(p, ctx)["agent_id"]
        marks = ",".join("?" * len(ids))
        existing = {r[0] for r in self.db.execute(
            f"SELECT message_id FROM messages WHERE message_id IN ({marks})", ids)}
        given = self._given(agent_id, [m for m in ids if m in existing])
        new = [m for m in ids if m in existing and m not in given]
        self._record(agent_id, new, [], p.str("via", max_len=64))
        out = {"marked_count": len([m for m in ids if m in existing]), "newly_delivered": len(new)}
        missing = [m for m in ids if m not in existing]
        if missing:
            out["not_found"] = missing
        return out

    # -- receipts ----------------------------------------------------------------------------------

    def recipients(self, row) -> list[str]:
        """The agents this message is addressed to now (never its author)."""
        mid = row["message_id"]
        authors = {row["agent_id"], row["authored_by"]}
        found: set[str] = set()
        if row["broadcast"]:
            found.update(r[0] for r in self.db.execute("SELECT agent_id FROM agents WHERE kind='agent'"))
        else:
            for kind, value in self.db.execute("SELECT type, value FROM message_refs WHERE message_id=?"
                                               " AND type IN ('mention', 'group')", (mid,)).fetchall():
                if kind == "mention":
                    found.update(r[0] for r in self.db.execute(
                        "SELECT agent_id FROM agents WHERE agent_id=? OR (role=? AND kind='agent')", (value, value)))
                else:
                    found.update(self.service.cached(("expand", value), lambda v=value: self.service.expand_group(v)))
            for (value,) in self.db.execute("SELECT value FROM message_scopes WHERE message_id=? AND type='group'",
                                            (mid,)).fetchall():
                found.update(self.service.cached(("expand", value), lambda v=value: self.service.expand_group(v)))
        return sorted(found - authors)

    def receipts(self, row) -> list[dict]:
        """[{agent_id, state: pending|delivered|read, delivered_at?, read_at?}] for each recipient."""
        mid = row["message_id"]
        reads = dict(self.db.execute("SELECT agent_id, read_at FROM message_reads WHERE message_id=?", (mid,)))
        deliveries = dict(self.db.execute("SELECT agent_id, delivered_at FROM message_deliveries"
                                          " WHERE message_id=?", (mid,)))
        out = []
        for agent in self.recipients(row):
            item = {"agent_id": agent, "state": "pending"}
            delivered_at, read_at = deliveries.get(agent, ""), reads.get(agent, "")
            if read_at:
                item["state"] = "read"
                item["read_at"] = read_at
                # read implies delivered: at the read, unless something delivered it earlier
                item["delivered_at"] = min(delivered_at, read_at) if delivered_at else read_at
            elif delivered_at:
                item["state"] = "delivered"
                item["delivered_at"] = delivered_at
            out.append(item)
        return out

    def _with_receipts(self, get):
        def message_get(p: Params, ctx) -> dict:
            result = get(p, ctx)
            row = self.db.execute("SELECT * FROM messages WHERE message_id=?",
                                  (result["message"]["message_id"],)).fetchone()
            result["message"]["receipts"] = self.receipts(row)
            return result
        return message_get

    def rpc_receipts(self, p: Params, ctx) -> dict:
        mid = p.str("message_id", required=True, max_len=128)
        row = self.db.execute("SELECT * FROM messages WHERE message_id=?", (mid,)).fetchone()
        if row is None:
            raise NotFound(f"message not found: {mid}")
        return {"message_id": mid, "receipts": self.receipts(row)}

    def rpc_sent(self, p: Params, ctx) -> dict:
        """The caller's messages, newest first, each with its recipients' states.

        `to` keeps the messages addressed to that agent (and shows only its receipt);
        `unread` keeps those some recipient has not read. Pages walk the caller's
        messages by date through an index and stop once the page is full; a filtered
        walk gives up after SENT_SCAN messages (`searched_all: false`).
        """
        me = self.service.caller(p, ctx)["agent_id"]
        to = p.str("to", max_len=128).lstrip("@")
        if to and self.service.agent_row(to) is None:
            raise NotFound(f"agent not found: {to}")
        only_unread = p.bool("unread")
        page_size = p.int("page_size", 20, lo=1, hi=100, clamp=True)
        page = p.int("page", 1, lo=1, hi=100_000, clamp=True)
        skip = (page - 1) * page_size
        out: list[dict] = []
        has_more, searched_all = False, True
        for walked, row in enumerate(self._own_messages(me)):
            if (to or only_unread) and walked >= SENT_SCAN:
                searched_all = False
                break
            receipts = self.receipts(row)
            if to:
                receipts = [r for r in receipts if r["agent_id"] == to]
                if not receipts:
                    continue
            if only_unread and all(r["state"] == "read" for r in receipts):
                continue
            if skip:
                skip -= 1
                continue
            if len(out) == page_size:
                has_more = True
                break
            out.append(self._sent_dict(row, receipts))
        result = {"messages": out, "page": page, "page_size": page_size, "has_more": has_more}
        if not searched_all:
            result["searched_all"] = False
        if not to and not only_unread:
            # Its own live messages from the audience counters (a scan of a few thousand counter rows; counting
            # the messages themselves walks every one the agent ever sent: 26 ms at a million).
            result["total"] = sum(self.db.execute(sql, (me,)).fetchone()[0] or 0 for sql in (
                "SELECT SUM(n) FROM audience_counts WHERE author=?",
                "SELECT COUNT(*) FROM messages WHERE authored_by=? AND authored_by!='' AND deleted=0"))
        return result

    def _own_messages(self, me: str):
        """Rows of the messages `me` sent (as author, or as the user who wrote them acting_as), newest
        first: two index walks (agent_id, created_ns) and (authored_by, created_ns), merged."""
        import heapq

        def walk(column: str, extra: str):
            last = None
            while True:
                bound = "" if last is None else " AND (created_ns<? OR (created_ns=? AND message_id<?))"
                args = [me] + ([] if last is None else [last[0], last[0], last[1]]) + [200]
                rows = self.db.execute(f"SELECT * FROM messages WHERE {column}=?{extra} AND deleted=0{bound}"
                                       " ORDER BY created_ns DESC, message_id DESC LIMIT ?", args).fetchall()
                if not rows:
                    return
                yield from rows
                last = (rows[-1]["created_ns"], rows[-1]["message_id"])
        streams = [walk("agent_id", "")]
        if me.startswith("user:"):  # only users post acting_as an agent
            streams.append(walk("authored_by", " AND authored_by!=''"))
        yield from heapq.merge(*streams, key=lambda row: (row["created_ns"], row["message_id"]), reverse=True)

    def _sent_dict(self, row, receipts: list[dict]) -> dict:
        to = [("@" + r[1]) for r in self.db.execute(
            "SELECT type, value FROM message_refs WHERE message_id=? AND type IN ('mention', 'group')",
            (row["message_id"],))]
        out = {"message_id": row["message_id"], "created_at": row["created_at"], "priority": row["priority"],
               "preview": preview(row["content"]), "to": list(dict.fromkeys(to)) or ["@everyone"],
               "recipients": receipts,
               "counts": {"recipients": len(receipts),
                          "delivered": sum(1 for r in receipts if r["state"] != "pending"),
                          "read": sum(1 for r in receipts if r["state"] == "read")}}
        for key in ("thread_id", "reply_to"):
            if row[key]:
                out[key] = row[key]
        return out


def _id_list(p: Params) -> list[str]:
    raw = p.raw.get("message_ids")
    if not isinstance(raw, list):
        raise InvalidParams("message_ids must be an array of message ids")
    ids = p.str_list("message_ids", max_items=MAX_IDS, max_len=128)
    if not ids:
        raise InvalidParams("message_ids is required and must not be empty")
    return list(dict.fromkeys(ids))


def _within_budget(candidates: list[dict], budget: int) -> tuple[list[tuple[dict, int | None]], list[dict]]:
    """Pick messages in order while their text fits; the first one is cut to fit rather than left out.

    Returns ([(row, cut)], left) where cut is None for a whole message, else its kept length.
    """
    chosen: list[tuple[dict, int | None]] = []
    used = 0
    for i, r in enumerate(candidates):
        size = len(r["content"]) + OVERHEAD
        if used + size <= budget:
            chosen.append((r, None))
            used += size
            continue
        if not chosen:  # too long on its own: hand over its beginning, the rest stays a `message get` away
            chosen.append((r, max(0, budget - OVERHEAD - 80)))
            return chosen, candidates[i + 1:]
        return chosen, candidates[i:]
    return chosen, []


_INSERT_DELIVERY = ("INSERT OR IGNORE INTO message_deliveries(agent_id, message_id, delivered_at, via)"
                    " VALUES (?,?,?,?)")


def _apply_delivered(projection, e: dict) -> None:
    agent_id, ids = e.get("agent_id"), e.get("message_ids")
    if agent_id and isinstance(ids, list):
        at, via = e.get("timestamp", ""), e.get("via") or ""
        # (a rebuild or a merge inserts a chunk's receipts in one call: a million of them at 1M)
        projection.add_rows(_INSERT_DELIVERY, [(agent_id, m, at, via) for m in ids if isinstance(m, str)])


def make_component(paths):
    return Delivery()
