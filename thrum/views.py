"""Everyday message views at the cost of their answer: inbox, mentions, scope, all messages.

The projection keeps, for every message that is not deleted, one `message_audience` row per
key it is addressed by (`@name` for a mention of an agent or a role, `#group`, `*` for a
broadcast) and per scope (`~type:value`), ordered by date. A view is a few keys; its page is
the newest rows of each key merged, so it costs the page, not the history. Its counts come
from counters the appliers keep (see store.py): messages per (keyset, author), read markers
per (reader, keyset, own?), and per scope. A keyset is the set of addressing keys of a
message, so an inbox total is the sum over the keysets that meet the inbox's keys: exact,
also for a message addressed twice to the same reader, and also after a group or role
changes (membership is resolved when asked, as before).

`list_page` answers a `message.list` request when its filters are ones these structures
serve, and None otherwise (the caller falls back to its general query).
"""

from __future__ import annotations

__all__ = ["audience_keys", "count_addressed", "inbox_counts", "list_page"]


def audience_keys(agent_id: str, role: str, groups: list[str]) -> list[str]:
    """The keys of everything addressed to this agent: its name, its role, its groups, broadcasts."""
    keys = ["@" + agent_id]
    if role and role != agent_id:
        keys.append("@" + role)
    keys += ["#" + g for g in groups]
    keys.append("*")
    return keys


def _marks(items: list) -> str:
    return ",".join("?" * len(items))


def _keysets_clause(keys: list[str]) -> str:
    return f"keyset_id IN (SELECT keyset_id FROM keyset_keys WHERE key IN ({_marks(keys)}))"


def count_addressed(db, keys: list[str], *, exclude_author: str = "", reader: str = "") -> tuple[int, int]:
    """(total, read by `reader`) of the live messages addressed by any of `keys`.

    With `exclude_author`, that author's own messages are left out; it must then be the reader
    (or no reader), since read markers are counted apart only for the reader's own messages."""
    sql = f"SELECT COALESCE(SUM(n), 0) FROM audience_counts WHERE {_keysets_clause(keys)}"
    args: list = list(keys)
    if exclude_author:
        sql += " AND author != ?"
        args.append(exclude_author)
    total = db.execute(sql, args).fetchone()[0]
    read = 0
    if reader:
        sql = f"SELECT COALESCE(SUM(n), 0) FROM reader_counts WHERE agent_id = ? AND {_keysets_clause(keys)}"
        if exclude_author:
            sql += " AND own = 0"
        read = db.execute(sql, [reader] + keys).fetchone()[0]
    return total, read


def inbox_counts(db, agent_id: str, role: str, groups: list[str]) -> tuple[int, int]:
    """(total, unread) of an agent's inbox, its own messages left out."""
    total, read = count_addressed(db, audience_keys(agent_id, role, groups), exclude_author=agent_id,
                                  reader=agent_id)
    return total, total - read


def _count_all(db, *, exclude_author: str, reader: str) -> tuple[int, int]:
    row = db.execute("SELECT n FROM counters WHERE name = 'live_messages'").fetchone()
    total = row[0] if row else 0
    if exclude_author:
        total -= db.execute("SELECT COALESCE(SUM(n), 0) FROM audience_counts WHERE author = ?",
                            (exclude_author,)).fetchone()[0]
    read = 0
    if reader:
        sql = "SELECT COALESCE(SUM(n), 0) FROM reader_counts WHERE agent_id = ?"
        read = db.execute(sql + (" AND own = 0" if exclude_author else ""), (reader,)).fetchone()[0]
    return total, read


def _count_scope(db, key: str, reader: str) -> tuple[int, int]:
    row = db.execute("SELECT n FROM scope_counts WHERE key = ?", (key,)).fetchone()
    read = 0
    if reader:
        r = db.execute("SELECT n FROM scope_reads WHERE agent_id = ? AND key = ?", (reader, key)).fetchone()
        read = r[0] if r else 0
    return (row[0] if row else 0), read


_UNREAD = (" AND NOT EXISTS (SELECT 1 FROM message_reads r WHERE r.agent_id = ? AND r.message_id ="
           " (SELECT message_id FROM messages WHERE rowid = a.seq))")


def _newest(db, keys: list[str], *, exclude_author: str, unread_for: str, limit: int, desc: bool) -> list[int]:
    """The rowids of the first `limit` messages (by date) addressed by any key: each key's own
    first `limit` rows, merged. Any message among the first `limit` of the union is among the
    first `limit` of one of its keys, so the merge is exact."""
    order = "DESC" if desc else "ASC"
    found: dict[int, int] = {}
    for key in keys:
        sql = "SELECT a.created_ns, a.seq FROM message_audience a WHERE a.key = ?"
        args: list = [key]
        if exclude_author:
            sql += " AND a.author != ?"
            args.append(exclude_author)
        if unread_for:
            sql += _UNREAD
            args.append(unread_for)
        sql += f" ORDER BY a.created_ns {order}, a.seq {order} LIMIT ?"
        for ns, seq in db.execute(sql, args + [limit]):
            found[seq] = ns
    ranked = sorted(found.items(), key=lambda item: (item[1], item[0]), reverse=desc)
    return [seq for seq, _ in ranked[:limit]]


def _newest_all(db, *, exclude_author: str, unread_for: str, limit: int, desc: bool) -> list[int]:
    order = "DESC" if desc else "ASC"
    sql = "SELECT m.rowid FROM messages m WHERE m.deleted = 0"
    args: list = []
    if exclude_author:
        sql += " AND m.agent_id != ?"
        args.append(exclude_author)
    if unread_for:
        sql += " AND NOT EXISTS (SELECT 1 FROM message_reads r WHERE r.agent_id = ? AND r.message_id = m.message_id)"
        args.append(unread_for)
    sql += f" ORDER BY m.created_ns {order} LIMIT ?"
    return [r[0] for r in db.execute(sql, args + [limit])]


def _unread_inbox(db, projection, agent: str, keys: list[str], *, limit: int, desc: bool) -> list[int] | None:
    """The first `limit` unread messages of an agent's inbox from its unread index, building the
    index first when it is missing or was built for other keys (a role or group change).

    The index holds one row per unread message of the inbox and is kept by the appliers from
    then on (store.py), so an unread page costs the page. Building it walks the inbox once;
    that happens only outside a write batch (the daemon answers reads between batches), else
    None and the caller walks the inbox this time. It is local bookkeeping, like the delivery
    cursors: a rebuild drops it."""
    text = "\n".join(sorted(keys))
    row = db.execute("SELECT keys FROM unread_ready WHERE agent_id = ?", (agent,)).fetchone()
    if row is None or row[0] != text:
        if db.in_transaction:
            return None
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM unread_index WHERE agent_id = ?", (agent,))
            db.execute(f"INSERT OR IGNORE INTO unread_index SELECT ?, a.created_ns, a.seq FROM message_audience a"
                       f" WHERE a.key IN ({_marks(keys)}) AND a.author != ?{_UNREAD}", [agent] + keys + [agent, agent])
            db.execute("INSERT OR REPLACE INTO unread_ready VALUES (?, ?)", (agent, text))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        projection.unread_version += 1
    order = "DESC" if desc else "ASC"
    return [r[0] for r in db.execute(f"SELECT seq FROM unread_index WHERE agent_id = ?"
                                     f" ORDER BY created_ns {order}, seq {order} LIMIT ?", (agent, limit))]


def list_page(db, *, keys: list[str] | None, scope_key: str = "", exclude_author: str = "", reader: str = "",
              only_unread: bool = False, page: int, page_size: int, desc: bool = True, projection=None,
              inbox_of: str = ""):
    """(rows in order, total, unread) for one page of a view, or None when the view needs the
    general query (a reader other than the excluded author: read markers are not kept that way).

    keys: the addressing keys of an inbox or mentions view, or None for every message;
    scope_key: `~type:value` for a scope view (then `keys` is ignored; no author exclusion);
    inbox_of: the agent whose inbox `keys` are (its unread page then comes from its unread index)."""
    if exclude_author and reader and reader != exclude_author:
        return None
    if scope_key and exclude_author:
        return None
    if scope_key:
        total, read = _count_scope(db, scope_key, reader)
    elif keys is None:
        total, read = _count_all(db, exclude_author=exclude_author, reader=reader)
    else:
        total, read = count_addressed(db, keys, exclude_author=exclude_author, reader=reader)
    unread = total - read if reader else 0
    want = page * page_size
    unread_for = reader if only_unread else ""
    if (unread if only_unread else total) <= (page - 1) * page_size:
        seqs = []
    elif scope_key:
        seqs = _newest(db, [scope_key], exclude_author="", unread_for=unread_for, limit=want, desc=desc)
    elif keys is None:
        seqs = _newest_all(db, exclude_author=exclude_author, unread_for=unread_for, limit=want, desc=desc)
    else:
        seqs = None
        if only_unread and inbox_of and inbox_of == reader == exclude_author and projection is not None:
            seqs = _unread_inbox(db, projection, reader, keys, limit=want, desc=desc)
        if seqs is None:
            seqs = _newest(db, keys, exclude_author=exclude_author, unread_for=unread_for, limit=want, desc=desc)
    seqs = seqs[(page - 1) * page_size:]
    rows = []
    if seqs:
        by_seq = {r["rowid"]: r for r in db.execute(
            f"SELECT rowid, * FROM messages WHERE rowid IN ({_marks(seqs)})", seqs)}
        rows = [by_seq[s] for s in seqs if s in by_seq]
        # Equal instants are ordered by message id, as the general query does.
        rows.sort(key=lambda r: (r["created_ns"], r["message_id"]), reverse=desc)
    return rows, (unread if only_unread else total), unread
