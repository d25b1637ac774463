"""Full-text search over messages: the FTS5 index in the projection, `message.search`, and its formatting.

The index is part of the projection and is kept by SQL triggers on the `messages` table, so
it follows every insert, edit and deletion in the same transaction as the row itself, during a
rebuild as well as live, without any applier of its own:

* `message_search` — FTS5, external content (`messages.content`, keyed by the messages rowid),
  `unicode61` with diacritics folded. It holds only the inverted index: the text is read back from
  `messages` for snippets. Deleted messages are taken out of it, edited ones re-indexed.
* `message_search_cjk` — FTS5, contentless, for the messages that contain Chinese, Japanese or
  Korean characters. `unicode61` treats a run of such characters (written without spaces) as one
  token, so a two-character word inside a sentence could not be found; here every such character
  is indexed as a token of its own (the text is spaced out by a recursive view, in SQL, so no
  connection needs a Python function) and a query word becomes a phrase of its characters. A
  query with such characters asks both tables; the first answers for the other messages.

The query language is parsed here, never handed to FTS5 as typed: words, "phrases", prefix*,
AND / OR / NOT (upper case), parentheses; every word goes to FTS5 quoted, so `col:x`, `^x`,
`NEAR(...)` are plain text. A query FTS5 cannot take is -32602 with a sentence saying why.

Ranking is bm25, and it costs in two ways: about a microsecond per *matching* message, and, once per
query, a count of the messages that contain each word (a walk of the word's whole posting list: for a
word in most messages, most of the query's time at a million messages). So a search:

1. finds its newest RANK_POOL matches, unranked (cheap: FTS5 walks postings in rowid order); past
   RANK_POOL matches only those are ranked and `searched_all` is false;
2. ranks them by bm25 of the query without the words that (nearly) cannot change the order: the right
   side of NOT (in no match), and a word in more than COMMON_SHARE of the messages (and more than
   COMMON_MIN), which bm25 weighs at most log(3), at 1e-6 past half, and only such words are expensive
   to count. Which words are that common is counted once and remembered (DocFrequencies);
3. when every word is that common (nothing left to rank by), returns the newest matches, score 0;
4. reads the hits' rows and snippets.

Who may search: like `message.list`, any caller sees every message that is not deleted.
"""

from __future__ import annotations

import logging
import re

from thrum.rpc import InvalidParams, Params

log = logging.getLogger("thrum.search")

__all__ = ["Search", "make_component", "parse_query", "QueryError", "SCHEMA", "BULK_POPULATE_SQL", "bulk_populate",
           "human_lines", "DEFAULT_LIMIT", "MAX_LIMIT"]

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_QUERY = 1000        # characters
MAX_TERMS = 32
SNIPPET_TOKENS = 16
RANK_POOL = 1000  # matches ranked at most: the newest ones
# A word in more than this share of the messages only filters, like a stop word: bm25 would weigh it at
# most log(3) ~ 1.1 (from a quarter) and at 1e-6 past a half, against 5-10 for the rare words that decide
# the order, and counting the messages that contain it is what a query of common words spends its time on.
COMMON_SHARE = 0.25
COMMON_MIN = 10_000  # ... and in more messages than this: below, counting them is cheap, so bm25 gets all
MAX_THREAD = 2000   # a thread filter up to this many messages is looked up message by message in the index

# Scripts written without spaces between words (and Hangul, whose words carry attached particles).
_CJK_RANGES = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f"
_CJK_GLOB = f"[{_CJK_RANGES}]"
_CJK_RE = re.compile(f"[{_CJK_RANGES}]")
_CHUNK = 200  # the splitter walks the text in chunks: substr() from a far offset costs O(offset)


def _has_cjk(column: str) -> str:
    """SQL: whether `column` has a CJK character. The GLOB costs ~150 ns a character, so ASCII text
    (as many characters as bytes: the usual case) is let through by a length check first."""
    return f"(length({column}) != length(CAST({column} AS BLOB)) AND {column} GLOB '*{_CJK_GLOB}*')"

SCHEMA = f"""
CREATE VIRTUAL TABLE message_search USING fts5(content, content='messages', content_rowid='rowid',
    tokenize='unicode61 remove_diacritics 2');
CREATE TRIGGER message_search_update AFTER UPDATE OF content, deleted ON messages
        WHEN old.rowid <= (SELECT upto FROM message_search_upto) BEGIN
    INSERT INTO message_search(message_search, rowid, content) SELECT 'delete', old.rowid, old.content
        WHERE old.deleted = 0;
    INSERT INTO message_search(rowid, content) SELECT new.rowid, new.content WHERE new.deleted = 0;
END;
CREATE TRIGGER message_search_delete AFTER DELETE ON messages
        WHEN old.deleted = 0 AND old.rowid <= (SELECT upto FROM message_search_upto) BEGIN
    INSERT INTO message_search(message_search, rowid, content) VALUES ('delete', old.rowid, old.content);
END;
CREATE TABLE message_search_upto (upto INTEGER NOT NULL);
INSERT INTO message_search_upto VALUES (0);
CREATE VIRTUAL TABLE message_search_cjk USING fts5(content, content='', tokenize='unicode61 remove_diacritics 2');
CREATE TABLE message_search_scratch (text TEXT NOT NULL);
CREATE VIEW message_search_spaced(text) AS
WITH RECURSIVE
    chunks(n, piece) AS (
        SELECT 0, substr(text, 1, {_CHUNK}) FROM message_search_scratch
        UNION ALL SELECT n + 1, substr((SELECT text FROM message_search_scratch), (n + 1) * {_CHUNK} + 1, {_CHUNK})
            FROM chunks WHERE length(piece) = {_CHUNK}),
    chars(n, i, piece) AS (
        SELECT n, 1, piece FROM chunks WHERE piece != ''
        UNION ALL SELECT n, i + 1, piece FROM chars WHERE i < length(piece))
SELECT group_concat(CASE WHEN ch GLOB '{_CJK_GLOB}' THEN ' ' || ch || ' ' ELSE ch END, '')
    FROM (SELECT substr(piece, i, 1) AS ch FROM chars ORDER BY n, i);
CREATE TRIGGER message_search_cjk_update AFTER UPDATE OF content, deleted ON messages
        WHEN old.rowid <= (SELECT upto FROM message_search_upto) AND ((old.deleted = 0 AND {_has_cjk('old.content')})
          OR (new.deleted = 0 AND {_has_cjk('new.content')})) BEGIN
    INSERT INTO message_search_scratch SELECT old.content WHERE old.deleted = 0 AND {_has_cjk('old.content')};
    INSERT INTO message_search_cjk(message_search_cjk, rowid, content)
        SELECT 'delete', old.rowid, text FROM message_search_spaced WHERE text IS NOT NULL;
    DELETE FROM message_search_scratch;
    INSERT INTO message_search_scratch SELECT new.content WHERE new.deleted = 0 AND {_has_cjk('new.content')};
    INSERT INTO message_search_cjk(rowid, content) SELECT new.rowid, text FROM message_search_spaced
        WHERE text IS NOT NULL;
    DELETE FROM message_search_scratch;
END;
CREATE TRIGGER message_search_cjk_delete AFTER DELETE ON messages
        WHEN old.deleted = 0 AND old.rowid <= (SELECT upto FROM message_search_upto) AND {_has_cjk('old.content')} BEGIN
    INSERT INTO message_search_scratch VALUES (old.content);
    INSERT INTO message_search_cjk(message_search_cjk, rowid, content)
        SELECT 'delete', old.rowid, text FROM message_search_spaced;
    DELETE FROM message_search_scratch;
END;
"""

# What a bulk load of `messages` (rows inserted before these triggers existed, or with them dropped)
# runs afterwards to build the same index as the triggers would have. The main table is one statement
# (FTS5's own 'rebuild' would index deleted messages too: they stay in `messages`); the few messages
# with CJK characters go one by one through the splitter view.
BULK_POPULATE_SQL = "INSERT INTO message_search(rowid, content) SELECT rowid, content FROM messages WHERE deleted = 0"
BULK_CJK_ROWS_SQL = f"SELECT rowid, content FROM messages WHERE deleted = 0 AND {_has_cjk('content')}"


# A rebuild of more messages than this leaves the index to the daemon's idle time (Search._tick): at a
# million messages indexing is 10 s of a rebuild's ~50, and the daemon can answer everything else meanwhile.
DEFER_ABOVE = 50_000


def bulk_populate(db) -> None:
    """Index every message that is not deleted, in bulk (inside the caller's transaction), then merge the
    index into one segment per table ('optimize': 1.4 s at 1,000,000 messages; queries then read one
    b-tree per word instead of dozens, about a third faster). Past DEFER_ABOVE messages, nothing: the
    watermark stays at 0 and the daemon indexes them in the background."""
    if db.execute("SELECT COALESCE(MAX(rowid), 0) FROM messages").fetchone()[0] > DEFER_ABOVE:
        return
    db.execute(BULK_POPULATE_SQL)
    _index_cjk(db, db.execute(BULK_CJK_ROWS_SQL).fetchall())
    db.execute("UPDATE message_search_upto SET upto = (SELECT COALESCE(MAX(rowid), 0) FROM messages)")
    for table in ("message_search", "message_search_cjk"):
        db.execute(f"INSERT INTO {table}({table}) VALUES ('optimize')")


def _index_cjk(db, rows) -> None:
    for rowid, content in rows:
        db.execute("INSERT INTO message_search_scratch VALUES (?)", (content,))
        db.execute("INSERT INTO message_search_cjk(rowid, content) SELECT ?, text FROM message_search_spaced",
                   (rowid,))
        db.execute("DELETE FROM message_search_scratch")


INDEX_BATCH = 2000  # messages indexed per idle-time step (~20 ms)
IDLE_TICK = 0.5  # seconds between idle-time steps
CATCH_UP_TICK = 0.01  # ... while a large backlog is indexed: the loop serves requests between the steps
CATCH_UP_ABOVE = 20_000  # a backlog this large (after a rebuild) is indexed at CATCH_UP_TICK
SEARCH_CATCH_UP = 10_000  # a search indexes at most this many pending messages first (~0.1 s)
MERGE_PAGES = 100  # index pages one merge step writes, after a catch-up (~25 ms)


def pending_count(db) -> int:
    """Messages not indexed yet (past the watermark)."""
    return db.execute("SELECT COALESCE(MAX(rowid), 0) - (SELECT upto FROM message_search_upto) FROM messages"
                      ).fetchone()[0]


def merge_step(db) -> bool:
    """One bounded step of merging the index's segments into one (what 'optimize' does at once), inside
    the caller's transaction; False when there was nothing left to merge."""
    before = db.total_changes
    for table in ("message_search", "message_search_cjk"):
        db.execute(f"INSERT INTO {table}({table}, rank) VALUES ('merge', ?)", (-MERGE_PAGES,))
    return db.total_changes - before > 2  # the two commands themselves count one change each


def index_pending(db, limit: int = 0) -> int:
    """Index the messages past the watermark (`message_search_upto`), at most `limit` (0: all), inside
    the caller's transaction; returns how many were looked at.

    New messages are indexed here, after the fact, not by a trigger in the send's transaction: an FTS5
    insert is the dearest part of a send (a segment per transaction). A search indexes what is pending
    first, and the component does it in idle time, so a search always finds what was sent before it.
    Edits and deletions of indexed messages go through the triggers."""
    upto = db.execute("SELECT upto FROM message_search_upto").fetchone()[0]
    last = db.execute("SELECT COALESCE(MAX(rowid), 0) FROM messages").fetchone()[0]
    if last <= upto:
        return 0
    end = min(last, upto + limit) if limit else last
    db.execute("INSERT INTO message_search(rowid, content) SELECT rowid, content FROM messages"
               " WHERE rowid > ? AND rowid <= ? AND deleted = 0", (upto, end))
    _index_cjk(db, db.execute(f"SELECT rowid, content FROM messages WHERE rowid > ? AND rowid <= ?"
                              f" AND deleted = 0 AND {_has_cjk('content')}", (upto, end)).fetchall())
    db.execute("UPDATE message_search_upto SET upto = ?", (end,))
    return end - upto


# -- the query language --------------------------------------------------------------------

class QueryError(InvalidParams):
    """A query the search cannot take; the message says why (JSON-RPC -32602)."""


_OPERATORS = ("AND", "OR", "NOT")


def _has_words(text: str) -> bool:
    """Whether the tokenizer finds anything to index in `text` (letters, digits, marks)."""
    return any(c.isalnum() for c in text)


def _lex(query: str) -> list[tuple[str, str]]:
    """-> [(kind, text)]: kind is 'word', 'prefix', 'phrase', 'op', '(' or ')'."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if c.isspace():
            i += 1
        elif c in "()":
            out.append((c, c))
            i += 1
        elif c == '"':
            end = query.find('"', i + 1)
            if end < 0:
                raise QueryError('unbalanced quote: a phrase needs a closing " (search for the words '
                                 'without quotes, or close the phrase)')
            prefix = query.startswith("*", end + 1)
            out.append(("phrase-prefix" if prefix else "phrase", query[i + 1:end]))
            i = end + 1 + (1 if prefix else 0)
        else:
            j = i
            while j < n and not query[j].isspace() and query[j] not in '()"':
                j += 1
            word = query[i:j]
            i = j
            if word in _OPERATORS:
                out.append(("op", word))
                continue
            prefix = word.endswith("*")
            core = word.rstrip("*") if prefix else word
            if "*" in core:
                raise QueryError(f"'*' may only end a word (a prefix such as auth*): {word!r}")
            if prefix and not _has_words(core):
                raise QueryError("'*' needs the start of a word before it (e.g. auth*)")
            out.append(("prefix" if prefix else "word", core))
    return out


class _Parser:
    """or := and (OR and)* ; and := not (AND? not)* ; not := atom (NOT atom)* ; atom := term | ( or ).

    A node is ('term', text, prefix) or (op, left, right); None stands for a term with nothing
    the tokenizer would index (punctuation), which drops out.
    """

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens, self.i, self.depth = tokens, 0, 0

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else (None, None)

    def parse(self):
        node = self.parse_or()
        kind, text = self.peek()
        if kind == ")":
            raise QueryError("unbalanced parenthesis: ')' without '('")
        if kind is not None:  # cannot happen: every token starts some rule
            raise QueryError(f"unexpected {text!r}")
        return node

    def parse_or(self):
        node = self.parse_and()
        while self.peek() == ("op", "OR"):
            self.i += 1
            self._need_operand("OR")
            node = _combine("OR", node, self.parse_and())
        return node

    def parse_and(self):
        node = self.parse_not()
        while True:
            kind, text = self.peek()
            if (kind, text) == ("op", "AND"):
                self.i += 1
                self._need_operand("AND")
            elif kind is None or kind == ")" or kind == "op":
                return node
            node = _combine("AND", node, self.parse_not())

    def parse_not(self):
        if self.peek() == ("op", "NOT"):
            raise QueryError("NOT needs a word before it: search 'deploy NOT staging', not 'NOT staging'")
        node = self.parse_atom()
        while self.peek() == ("op", "NOT"):
            self.i += 1
            self._need_operand("NOT")
            right = self.parse_atom()
            if node is None and right is not None:
                raise QueryError("NOT needs a word before it: search 'deploy NOT staging', not 'NOT staging'")
            node = node if right is None else ("NOT", node, right)
        return node

    def parse_atom(self):
        kind, text = self.peek()
        if kind is None:
            raise QueryError("the query ends where a word was expected")
        if kind == "op":
            raise QueryError(f"{text} needs a word on each side (to search for the word itself, write it in "
                             f'lower case or in quotes: "{text.lower()}")')
        self.i += 1
        if kind == "(":
            self.depth += 1
            if self.depth > 16:
                raise QueryError("parentheses nest too deep")
            if self.peek()[0] == ")":
                raise QueryError("empty parentheses")
            node = self.parse_or()
            if self.peek()[0] != ")":
                raise QueryError("unbalanced parenthesis: '(' without ')'")
            self.i += 1
            self.depth -= 1
            return node
        if kind == ")":
            raise QueryError("unbalanced parenthesis: ')' without '('")
        if not _has_words(text):
            return None
        return ("term", text, kind in ("prefix", "phrase-prefix"))

    def _need_operand(self, op: str) -> None:
        kind, _ = self.peek()
        if kind is None or kind == ")" or kind == "op":
            raise QueryError(f"{op} needs a word on each side (to search for the word itself, write it in "
                             f'lower case or in quotes: "{op.lower()}")')


def _combine(op: str, left, right):
    if left is None:
        return right
    if right is None:
        return left
    return (op, left, right)


def _terms(node) -> list[tuple[str, bool]]:
    if node is None:
        return []
    if node[0] == "term":
        return [(node[1], node[2])]
    return _terms(node[1]) + _terms(node[2])


def _fts(node, spaced: bool) -> str:
    """The FTS5 expression: every term quoted (so nothing in it is FTS syntax), operators parenthesized."""
    if node[0] == "term":
        text = _CJK_RE.sub(lambda m: f" {m.group(0)} ", node[1]) if spaced else node[1]
        return '"' + text.replace('"', '""') + '"' + (" *" if node[2] else "")
    return f"({_fts(node[1], spaced)} {node[0]} {_fts(node[2], spaced)})"


class ParsedQuery:
    __slots__ = ("node", "terms", "cjk", "main", "spaced")

    def __init__(self, node) -> None:
        self.node = node
        self.terms = _terms(node)
        self.cjk = any(_CJK_RE.search(t) for t, _ in self.terms)
        self.main = _fts(node, False)
        self.spaced = _fts(node, True) if self.cjk else ""


def parse_query(query: str) -> ParsedQuery:
    """The user's query -> FTS5 expressions; QueryError (-32602) with a reason when it cannot be searched."""
    if not query.strip():
        raise QueryError("query is required: the words to search for")
    tokens = _lex(query)
    if sum(1 for kind, _ in tokens if kind not in ("op", "(", ")")) > MAX_TERMS:
        raise QueryError(f"too many words: at most {MAX_TERMS}")
    node = _Parser(tokens).parse()
    if node is None:
        raise QueryError("the query has no words to search for (only punctuation)")
    return ParsedQuery(node)


# -- snippets for the contentless table ---------------------------------------------------------

def _python_snippet(content: str, terms: list[tuple[str, bool]], start: str, end: str, width: int = 80) -> str:
    """A window of `content` around the first hit, hits marked (the contentless index cannot do it)."""
    words = sorted({w for text, _ in terms for w in re.split(r"\W+", text.casefold()) if w}, key=len,
                   reverse=True)
    folded = content.casefold()
    if len(folded) != len(content):  # casefold changed lengths (ß → ss): positions would drift
        folded = content.lower() if len(content.lower()) == len(content) else content
    spans: list[tuple[int, int]] = []
    if words:
        pattern = re.compile("|".join(re.escape(w) for w in words))
        for m in pattern.finditer(folded):
            spans.append((m.start(), m.end()))
    first = spans[0][0] if spans else 0
    lo = max(0, first - width // 3)
    hi = min(len(content), lo + width)
    out = ["…"] if lo > 0 else []
    pos = lo
    for s, e in spans:
        if s < pos or e > hi:
            continue
        out += [content[pos:s], start, content[s:e], end]
        pos = e
    out.append(content[pos:hi])
    if hi < len(content):
        out.append("…")
    return " ".join("".join(out).split()) if "\n" in content else "".join(out)


# -- the component --------------------------------------------------------------------------

class Search:
    """The daemon component: the index's schema and `message.search`."""

    def __init__(self) -> None:
        self.daemon = None
        self.timer = None  # stop() may come without start() (a start that failed)
        self.frequencies = DocFrequencies()
        self.merging = False  # catching up a large backlog, then merging its segments

    def extend_store(self, store) -> None:
        # New messages are indexed after the fact (index_pending); a rebuild indexes everything
        # at once (9 µs a message).
        store.extend(SCHEMA, {}, derive=bulk_populate)

    def start(self, daemon) -> None:
        self.daemon = daemon
        daemon.service.registry.add("message.search", self.rpc_search)
        self._tick()

    def stop(self) -> None:
        if self.timer is not None:
            self.daemon.loop.cancel(self.timer)
            self.timer = None

    def _tick(self) -> None:
        """Idle-time indexing: a batch at a time, between write batches, so the index stays close. A large
        backlog (a rebuild leaves the whole index to this) goes a batch every CATCH_UP_TICK, then the
        segments that made are merged the same way, a bounded step at a time."""
        import sqlite3  # not at the top: the CLI imports this module for `thrum search`

        delay = CATCH_UP_TICK if self.merging else IDLE_TICK
        try:
            store = self.daemon.store
            if store.in_batch or store.holding or self.db.in_transaction:
                return  # (a sync merge's messages are indexed once it has committed them)
            if self._index(INDEX_BATCH) > 0:
                if self.merging or pending_count(self.db) > CATCH_UP_ABOVE:
                    self.merging = True
                    delay = CATCH_UP_TICK
            elif self.merging:
                self.merging = self._write(merge_step)
                delay = CATCH_UP_TICK if self.merging else IDLE_TICK
        except sqlite3.Error as exc:
            log.warning("indexing new messages for search failed: %s", exc)
        finally:
            self.timer = self.daemon.loop.call_later(delay, self._tick)

    def _index(self, limit: int) -> int:
        """Index up to `limit` pending messages (0: all); returns how many are still pending."""
        db = self.db
        if db.in_transaction:  # inside a write batch: its commit (or rollback) takes this along
            index_pending(db, limit)
            return pending_count(db)
        pending = pending_count(db)
        if pending <= 0:
            return 0  # nothing new: no write transaction every half second while idle
        self._write(lambda db: index_pending(db, limit))
        return max(0, pending - limit) if limit else 0

    def _write(self, step):
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = step(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return result

    @property
    def db(self):
        return self.daemon.store.db

    def rpc_search(self, p: Params, ctx) -> dict:
        """{query, from?, to?, thread_id?, since?, until?, limit?, highlight?: [start, end]}
        → {hits: [{message_id, author, created_at, snippet, score, thread_id, ...}], query, searched_all}
        """
        # Whatever was sent before this search is found by it -- unless a backlog larger than a search
        # should index first (after a rebuild, or sends faster than the idle-time steps) is still being
        # worked through: then the search says how much it missed.
        pending = self._index(SEARCH_CATCH_UP)
        result = search(self.daemon.service, self.db, p, self.frequencies)
        if pending:
            result["searched_all"] = False
            result["not_indexed_yet"] = pending
        return result


def _time_param(p: Params, key: str) -> int | None:
    from thrum.events import EventError, parse_timestamp_ns

    text = p.str(key, max_len=64).strip()
    if not text:
        return None
    if len(text) == 10 and text[4] == "-" and text[7] == "-":
        text += "T00:00:00Z"  # a date alone is that day's start, UTC
    try:
        return max(-(2**63), min(2**63 - 1, parse_timestamp_ns(text)))  # past 2262 no longer fits SQLite
    except EventError:
        raise InvalidParams(f"invalid {key}: {text!r} (use an RFC 3339 time such as 2026-01-31T12:00:00Z, or a "
                            "date such as 2026-01-31)") from None


def _highlight(p: Params) -> tuple[str, str]:
    raw = p.raw.get("highlight")
    if raw is None:
        return "**", "**"
    if (not isinstance(raw, list) or len(raw) != 2 or not all(isinstance(x, str) and len(x) <= 16 for x in raw)):
        raise InvalidParams("highlight must be [start, end]: two strings of at most 16 characters")
    return raw[0], raw[1]


def _filters(service, p: Params) -> tuple[list[str], list]:
    """SQL conditions on `m` (messages) for from/to/thread_id/since/until."""
    where: list[str] = ["m.deleted = 0"]
    args: list = []
    author = p.str("from", max_len=128).strip().lstrip("@")
    if author:
        if service.agent_row(author) is None:
            raise service.unknown_error("author", author, sorted(
                r[0] for r in service.db.execute("SELECT agent_id FROM agents")))
        where.append("(m.agent_id = ? OR m.authored_by = ?)")
        args += [author, author]
    to = p.str("to", max_len=128).strip().lstrip("@")
    if to:
        where.append(_addressed_to(service, to, args))
    thread = p.str("thread_id", max_len=128).strip()
    if thread:
        # A thread as the UI shows one: the reply chain around a message (up to its first message, then
        # every reply below), and the messages that share a thread_id.
        root = thread
        for _ in range(50):
            row = service.db.execute("SELECT reply_to FROM messages WHERE message_id = ?", (root,)).fetchone()
            if row is None or not row[0]:
                break
            root = row[0]
        # A thread is small: its rowids go to FTS5 itself (a lookup each), so a common word is not walked
        # through the whole history to find the few messages of one thread.
        rowids = [r[0] for r in service.db.execute(
            "SELECT rowid FROM messages WHERE message_id IN (WITH RECURSIVE chain(id) AS (SELECT ? UNION"
            " SELECT r.message_id FROM messages r JOIN chain ON r.reply_to = chain.id AND r.reply_to != '')"
            " SELECT id FROM chain) UNION SELECT rowid FROM messages WHERE thread_id = ? AND thread_id != ''"
            " LIMIT ?", (root, thread, MAX_THREAD + 1))]
        if len(rowids) <= MAX_THREAD:
            where.append("{fts}.rowid IN (" + ",".join(str(int(r)) for r in rowids or [0]) + ")")
        else:
            where.append("(m.thread_id = ? OR m.message_id IN (WITH RECURSIVE chain(id) AS (SELECT ? UNION"
                         " SELECT r.message_id FROM messages r JOIN chain ON r.reply_to = chain.id"
                         " AND r.reply_to != '') SELECT id FROM chain))")
            args += [thread, root]
    since, until = _time_param(p, "since"), _time_param(p, "until")
    if since is not None:
        where.append("m.created_ns >= ?")
        args.append(since)
    if until is not None:
        where.append("m.created_ns < ?")
        args.append(until)
    return where, args


def _addressed_to(service, name: str, args: list) -> str:
    """`to`: an agent → what its inbox shows (broadcasts, mentions of it or its role, posts to its
    groups; not its own messages); a role → mentions of the role; a group → posts to the group."""
    row = service.agent_row(name)
    if row is not None:
        role = row["role"] or name
        groups = service.groups_of(name, role)
        args += [name, name, name, role]
        cond = ("(m.agent_id != ? AND m.authored_by != ? AND (m.broadcast = 1 OR m.message_id IN ("
                "SELECT message_id FROM message_refs WHERE type = 'mention' AND value IN (?, ?))")
        if groups:
            cond += (" OR m.message_id IN (SELECT message_id FROM message_scopes WHERE type = 'group'"
                     f" AND value IN ({','.join('?' * len(groups))}))")
            args += groups
        return cond + "))"
    if service.db.execute("SELECT 1 FROM agents WHERE role = ? LIMIT 1", (name,)).fetchone():
        args.append(name)
        return "m.message_id IN (SELECT message_id FROM message_refs WHERE type = 'mention' AND value = ?)"
    if service.db.execute("SELECT 1 FROM groups WHERE name = ? AND deleted = 0 LIMIT 1", (name,)).fetchone():
        args.append(name)
        return "m.message_id IN (SELECT message_id FROM message_scopes WHERE type = 'group' AND value = ?)"
    raise service.unknown_error("recipient", name, service._recipient_candidates())


class DocFrequencies:
    """How many messages contain a term, remembered: bm25 counts it again on every query (a scan of the
    term's whole posting list), which for a word in most messages is most of a query's time."""

    MAX_TERMS = 10_000

    def __init__(self) -> None:
        self.known: dict[tuple[str, str], tuple[int, int]] = {}  # (table, term) -> (count, messages then)

    def count(self, db, table: str, term: str, messages: int) -> int:
        known = self.known.get((table, term))
        if known is not None and messages <= known[1] * 1.25 + 100:
            return known[0]
        if len(self.known) >= self.MAX_TERMS:
            self.known.clear()
        n = db.execute(f"SELECT COUNT(*) FROM {table} WHERE {table} MATCH ?", (term,)).fetchone()[0]
        self.known[(table, term)] = (n, messages)
        return n


def _ranking_node(node, common):
    """The part of the query that can change bm25 among messages that match all of it.

    FTS5's bm25 weighs a term by its IDF, log((N-n+.5)/(n+.5)), and gives one in more than half of the
    messages 1e-6; a common term (see COMMON_SHARE) where every match must contain it (a side of AND) changes
    the order little and costs much; the right side of NOT is in no match. OR keeps both sides: either may be
    what matched. `common(node)` tells the first kind. Returns None when nothing is left."""
    kind = node[0]
    if kind == "term":
        return None if common(node) else node
    if kind == "NOT":
        return _ranking_node(node[1], common)
    if kind == "AND":
        return _combine("AND", _ranking_node(node[1], common), _ranking_node(node[2], common))
    return node


def search(service, db, p: Params, frequencies: DocFrequencies | None = None) -> dict:
    import sqlite3

    query = p.str("query", required=True, max_len=MAX_QUERY)
    parsed = parse_query(query)
    limit = p.int("limit", DEFAULT_LIMIT, lo=1, hi=MAX_LIMIT, clamp=True)
    start, end = _highlight(p)
    where, args = _filters(service, p)
    frequencies = frequencies or DocFrequencies()
    conditions = " AND ".join(where) if len(where) > 1 else ""  # `m.deleted = 0` alone: the index implies it
    hits: list[tuple[float, int, str]] = []
    searched_all = True
    try:
        tables = [("message_search", False, parsed.cjk)]
        if parsed.cjk:
            tables.append(("message_search_cjk", True, False))
        messages = db.execute("SELECT COALESCE(MAX(rowid), 0) FROM messages").fetchone()[0]
        for table, spaced, skip_cjk in tables:
            candidates = _candidates(db, table, _fts(parsed.node, spaced), conditions.replace("{fts}", table),
                                     args, skip_cjk)
            searched_all = searched_all and len(candidates) < RANK_POOL
            if not candidates:
                continue

            def common(term, table=table, spaced=spaced):
                # A phrase is as costly to rank as its words are common (bm25 evaluates it in every message
                # that has them all), so it only filters when each of its words would.
                text = _CJK_RE.sub(lambda m: f" {m.group(0)} ", term[1]) if spaced else term[1]
                words = re.findall(r"\w+", text) or [term[1]]
                for i, word in enumerate(words):
                    last_prefix = term[2] and i == len(words) - 1
                    n = frequencies.count(db, table, _fts(("term", word, last_prefix), spaced), messages)
                    if n <= messages * COMMON_SHARE or n <= COMMON_MIN:
                        return False
                return True
            ranking = _ranking_node(parsed.node, common)
            if ranking is None:
                # Every word is common: bm25 would weigh each at most log(3) (at 1e-6 past half), so its
                # order says little, and counting such words is the expensive part. The newest come first.
                hits += [(0.0, rowid, table) for rowid in candidates[:limit]]
                continue
            wanted = set(candidates)
            only = f" AND rowid IN ({','.join(map(str, candidates))})" if "{fts}" in conditions else ""
            ranked = [(rank, rowid) for rowid, rank in db.execute(
                f"SELECT rowid, rank FROM {table} WHERE {table} MATCH ? AND rowid >= ?{only}",
                (_fts(ranking, spaced), candidates[-1])) if rowid in wanted]
            ranked.sort()
            hits += [(-rank, rowid, table) for rank, rowid in ranked[:limit]]
    except sqlite3.OperationalError as exc:
        # The parser quotes every term, so this is not expected; still the caller's query, not our crash.
        if "fts5" in str(exc):
            raise QueryError(f"cannot search for {query!r}: {exc}") from None
        raise
    best: dict[int, tuple[float, str]] = {}
    for score, rowid, table in hits:  # a message in both tables counts once, at its better score
        if rowid not in best or best[rowid][0] < score:
            best[rowid] = (score, table)
    chosen = sorted(best.items(), key=lambda item: (-item[1][0], -item[0]))[:limit]  # ties: newest first
    details = _details(db, parsed, [rowid for rowid, _ in chosen], start, end)
    out = []
    for rowid, (score, table) in chosen:
        hit = details[rowid]
        if table != "message_search" or hit["snippet"] is None:
            hit["snippet"] = _python_snippet(hit.pop("content"), parsed.terms, start, end)
        hit.pop("content", None)
        hit["score"] = round(score, 6)
        out.append(hit)
    out.sort(key=lambda h: -h["score"])  # stable: `chosen`'s newest-first among equal scores stays
    return {"hits": out, "query": query, "searched_all": searched_all}


def _candidates(db, table: str, expression: str, conditions: str, args: list, skip_cjk: bool) -> list[int]:
    """Rowids of the newest RANK_POOL matches, newest first: FTS5 walks its postings in rowid order, so
    this costs the matches it returns (and those the filters drop), not bm25's count of all of them."""
    extra = f" AND NOT {_has_cjk('m.content')}" if skip_cjk else ""
    if conditions or extra:
        sql = (f"SELECT {table}.rowid FROM {table} JOIN messages m ON m.rowid = {table}.rowid"
               f" WHERE {table} MATCH ?{' AND ' + conditions if conditions else ''}{extra}")
        sql_args = [expression] + args
    else:
        sql, sql_args = f"SELECT rowid FROM {table} WHERE {table} MATCH ?", [expression]
    return [r[0] for r in db.execute(f"{sql} ORDER BY {table}.rowid DESC LIMIT ?", sql_args + [RANK_POOL])]


def _details(db, parsed: ParsedQuery, rowids: list[int], start: str, end: str) -> dict[int, dict]:
    """The hits' messages, with FTS5's snippet (the whole query's words marked) where the text is indexed."""
    if not rowids:
        return {}
    marks = ",".join("?" * len(rowids))
    rows = db.execute(
        "SELECT rowid AS seq, message_id, agent_id, authored_by, created_at, thread_id, reply_to, priority, edits,"
        f" content FROM messages WHERE rowid IN ({marks})", rowids).fetchall()
    # One walk over the hits' rowid range, the `+rowid IN` applied by SQLite, not FTS5: FTS5 would run the
    # query once per rowid, and a prefix query rebuilds its merged posting list each time (seconds at 1M).
    snippets = dict(db.execute(
        f"SELECT rowid, snippet(message_search, 0, ?, ?, '…', ?) FROM message_search WHERE message_search MATCH ?"
        f" AND rowid BETWEEN ? AND ? AND +rowid IN ({marks})",
        [start, end, SNIPPET_TOKENS, parsed.main, min(rowids), max(rowids)] + rowids).fetchall())
    out = {}
    for r in rows:
        hit = {"message_id": r["message_id"], "author": r["agent_id"], "created_at": r["created_at"],
               "snippet": snippets.get(r["seq"]), "score": 0.0, "thread_id": r["thread_id"] or "",
               "priority": r["priority"], "content": r["content"]}
        if r["reply_to"]:
            hit["reply_to"] = r["reply_to"]
        if r["authored_by"]:
            hit["authored_by"] = r["authored_by"]
        if r["edits"]:
            hit["edited"] = True
        out[r["seq"]] = hit
    return out


# -- human output (the CLI) ------------------------------------------------------------------

BOLD, RESET = "\x1b[1m", "\x1b[0m"
MARK_START, MARK_END = "\x02", "\x03"  # asked of the daemon by the CLI, replaced per terminal


def human_lines(result: dict, *, tty: bool, ago=None) -> list[str]:
    """Lines for `thrum search`: author, time ago, thread, and the snippet with its hits marked."""
    hits = result.get("hits") or []
    missed = result.get("not_indexed_yet")
    note = ([f"(the search index is catching up: {missed:,} messages not searched yet)"]
            if missed else [])
    if not hits:
        return [f"No messages match {result.get('query', '')!r}."] + note
    on, off = (BOLD, RESET) if tty else ("**", "**")
    lines = []
    for h in hits:
        when = ago(h["created_at"]) if ago else h["created_at"]
        where = f"  thread {h['thread_id']}" if h.get("thread_id") else ""
        lines.append(f"{h['message_id']}  @{h['author']}  {when}{where}")
        snippet = " ".join(h["snippet"].split()).replace(MARK_START, on).replace(MARK_END, off)
        lines.append(f"  {snippet}")
    more = ("" if result.get("searched_all", True) or missed else " (ranked among the newest messages)")
    lines.append(f"{len(hits)} hit{'s' if len(hits) != 1 else ''}{more}")
    return lines + note


def make_component(paths):
    return Search()
