"""Event envelope, ids, timestamps and the canonical JSONL line encoding.

Pure functions only: no files, no sockets. Everything written to the log goes
through `encode_line`, which produces the exact bytes the Go tool writes (keys
sorted at every level, compact separators, raw UTF-8, and `<>&` U+2028 U+2029
escaped as Go's encoding/json does), so Python and Go clones can share one
branch. Lines read from the log are never re-encoded: dedup is by `event_id`.
"""

from __future__ import annotations

import json
import json.scanner
import os
import re
import time

__all__ = [
    "MAX_LINE_BYTES", "EventError", "encode_line", "decode_line", "decode_event", "now_ns", "format_ns",
    "now_timestamp", "parse_timestamp_ns", "ago", "new_ulid", "new_id", "shard_for",
    "author_file_name", "order_key", "derived_event_id", "deterministic_ulid",
]

# Go readers scan lines with a 64 KiB buffer; a longer line makes them read a
# whole file as empty, so no line we write may reach it.
MAX_LINE_BYTES = 60 * 1024

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_GO_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
               ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


class EventError(ValueError):
    """A line or event that cannot be encoded or decoded."""


def encode_line(event: dict) -> bytes:
    """Return the canonical, newline-terminated bytes of one event."""
    try:  # NaN and Infinity are not JSON: Go could not read the line
        text = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        raise EventError(str(exc)) from None
    if "<" in text or ">" in text or "&" in text or "\u2028" in text or "\u2029" in text:
        for raw, escaped in _GO_ESCAPES:
            text = text.replace(raw, escaped)
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError as exc:  # lone surrogates cannot be stored as UTF-8
        raise EventError(f"text is not valid Unicode: {exc.reason}") from None


_scan_json = json.scanner.make_scanner(json.JSONDecoder())


def decode_line(line: bytes) -> dict:
    """Parse one log line; raise EventError if it is not a JSON object with a type."""
    try:  # the common case without json.loads' encoding detection and wrappers (~20% of a decode)
        text = line.decode("utf-8")
        obj, end = _scan_json(text, 0)
        if end != len(text) and text[end:].strip():
            raise ValueError
    except (ValueError, StopIteration, RecursionError):
        try:  # anything unusual: json.loads decides, and words the error
            obj = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # a line nested ~1000 deep (another writer)
            raise EventError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise EventError("not an event object")
    return obj


def decode_event(line: bytes) -> dict:
    """decode_line, and an event without an id gets its derived one (how every reader of the log dedups)."""
    event = decode_line(line)
    if not isinstance(event.get("event_id"), str) or not event["event_id"]:
        event["event_id"] = derived_event_id(event)
    return event


# -- time ---------------------------------------------------------------------

def now_ns() -> int:
    return time.time_ns()


def format_ns(ns: int) -> str:
    """RFC3339Nano in UTC with trailing fractional zeros trimmed (Go's format)."""
    secs, frac = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        text += ("." + f"{frac:09d}").rstrip("0")
    return text + "Z"


def now_timestamp() -> str:
    return format_ns(now_ns())


def ago(timestamp: str, now: int | None = None) -> str:
    """`just now`, `5m ago`, `3h ago`, `2d ago`, else the date; an unreadable timestamp as it is."""
    try:
        secs = ((time.time_ns() if now is None else now) - parse_timestamp_ns(timestamp)) / 1e9
    except EventError:
        return timestamp
    if secs < 45:
        return "just now"
    if secs < 3600:
        return f"{int(secs // 60) or 1}m ago"
    if secs < 86400:
        return f"{int(secs // 3600)}h ago"
    if secs < 86400 * 30:
        return f"{int(secs // 86400)}d ago"
    return timestamp[:10]


_DAYS_BEFORE_MONTH = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)


def _days_from_civil(y: int, m: int, d: int) -> int:
    # Howard Hinnant's algorithm: days since 1970-01-01 without datetime's cost.
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


_CANONICAL_TS = re.compile(r"(\d{4}-\d\d-\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z", re.ASCII)
_MIDNIGHTS: dict[str, int] = {}  # 'YYYY-MM-DD' -> its midnight in seconds since the epoch


def parse_timestamp_ns(text: str) -> int:
    """Parse an RFC3339 timestamp (any fraction length, Z or offset) to ns since the epoch."""
    # The form thrum and Go write (UTC, up to 9 fraction digits) takes a shortcut: a rebuild
    # parses a million of them.
    m = _CANONICAL_TS.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        return _parse_timestamp_general(text)
    day, h, mi, s, frac = m.groups()  # the same arithmetic as the general parser, fewer steps
    midnight = _MIDNIGHTS.get(day)
    if midnight is None:
        if len(_MIDNIGHTS) >= 100_000:
            _MIDNIGHTS.clear()
        midnight = _MIDNIGHTS[day] = _days_from_civil(int(day[0:4]), int(day[5:7]), int(day[8:10])) * 86400
    secs = midnight + int(h) * 3600 + int(mi) * 60 + int(s)
    return secs * 1_000_000_000 + (int(frac.ljust(9, "0")) if frac else 0)


def _parse_timestamp_general(text: str) -> int:
    try:
        if not isinstance(text, str) or len(text) < 20 or text[4] != "-" or text[10] not in "Tt ":
            raise ValueError
        y, mo, d = int(text[0:4]), int(text[5:7]), int(text[8:10])
        h, mi, s = int(text[11:13]), int(text[14:16]), int(text[17:19])
        rest = text[19:]
        frac = 0
        if rest.startswith("."):
            digits = 0
            i = 1
            while i < len(rest) and rest[i].isdigit():
                i += 1
            digits = rest[1:i]
            if not digits:
                raise ValueError
            frac = int((digits + "000000000")[:9])
            rest = rest[i:]
        if rest in ("Z", "z"):
            offset = 0
        elif len(rest) == 6 and rest[0] in "+-" and rest[3] == ":":
            offset = (int(rest[1:3]) * 60 + int(rest[4:6])) * 60
            if rest[0] == "-":
                offset = -offset
        else:
            raise ValueError
        secs = _days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - offset
        return secs * 1_000_000_000 + frac
    except (ValueError, IndexError):
        raise EventError(f"invalid timestamp: {text!r}") from None


def order_key(event: dict) -> tuple[int, str]:
    """Replay order: the parsed instant, then event_id (never the raw string)."""
    try:
        ns = parse_timestamp_ns(event.get("timestamp", ""))
    except EventError:
        ns = 0
    return ns, str(event.get("event_id", ""))


# -- ids ----------------------------------------------------------------------

_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]  # 10 bits -> 2 chars: half the steps


def _crockford(value: int, length: int) -> str:
    chars = []
    if length % 2:
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    for _ in range(length // 2):
        chars.append(_PAIRS[value & 1023])
        value >>= 10
    return "".join(reversed(chars))


class _UlidGenerator:
    """ULIDs that stay strictly increasing within this process."""

    def __init__(self) -> None:
        self._last_ms = -1
        self._last_rand = 0

    def __call__(self, ms: int | None = None) -> str:
        if ms is None:
            ms = time.time_ns() // 1_000_000
        if ms <= self._last_ms:
            ms = self._last_ms
            rand = self._last_rand + 1
            if rand >= 1 << 80:  # entropy exhausted within one ms: borrow the next ms
                ms += 1
                rand = int.from_bytes(os.urandom(10), "big") >> 1
        else:
            rand = int.from_bytes(os.urandom(10), "big") >> 1  # headroom for increments
        self._last_ms, self._last_rand = ms, rand
        return _crockford((ms << 80) | rand, 26)


new_ulid = _UlidGenerator()


def new_id(prefix: str) -> str:
    """`evt_`, `msg_`, `ses_`, `grp_`, `tok_` + ULID."""
    return f"{prefix}_{new_ulid()}"


def deterministic_ulid(ms: int, seed: bytes) -> str:
    """A ULID whose time and entropy are fixed, so every clone writes the same id."""
    import hashlib

    entropy = int.from_bytes(hashlib.sha256(seed).digest()[:10], "big")
    return _crockford((ms << 80) | entropy, 26)


def crockford_lower(data: bytes, length: int) -> str:
    """Base32 (Crockford alphabet, RFC 4648 bit order, no padding), lowercased, first `length` chars."""
    bits = int.from_bytes(data, "big")
    total = len(data) * 8
    out = []
    for i in range(length):
        shift = total - 5 * (i + 1)
        chunk = (bits >> shift) & 31 if shift >= 0 else (bits << -shift) & 31
        out.append(_CROCKFORD[chunk])
    return "".join(out).lower()


# -- sharding -----------------------------------------------------------------

def author_file_name(agent_id: str) -> str:
    """Go's AgentIDToName: `agent:r:h` -> `r_h`, `user:leon` -> `user_leon`."""
    name = agent_id[6:] if agent_id.startswith("agent:") else agent_id
    name = name.replace(":", "_")
    if not name or name.startswith(".") or any(c not in _FILE_CHARS for c in name):
        raise EventError(f"author id {agent_id!r} cannot name a log file")
    return name


_FILE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def shard_for(event: dict, author: str | None = None) -> str:
    """Relative log path of an event: message.* by author, the rest in events.jsonl."""
    if event["type"].startswith("message."):
        if author is None:
            author = event.get("agent_id", "")
        return f"messages/{author_file_name(author)}.jsonl"
    return "events.jsonl"


def derived_event_id(event: dict) -> str:
    """The id Go's backfill gives a line that has none, so both sides dedup it alike.

    ULID time = the event's timestamp; entropy = the first 10 ASCII characters of
    hex(sha256("<type>:<timestamp>:<entity>")).
    """
    import hashlib

    etype = event.get("type", "")
    ts = event.get("timestamp", "")
    if etype.startswith("message."):
        entity = event.get("message_id")
    elif etype.startswith("thread."):
        entity = event.get("thread_id")
    elif etype in ("agent.register", "agent.update"):
        entity = event.get("agent_id")
    elif etype.startswith("agent."):
        entity = event.get("session_id")
    else:
        entity = None
    entity = entity or ts
    digest = hashlib.sha256(f"{etype}:{ts}:{entity}".encode()).hexdigest()[:10].encode()
    try:
        ms = parse_timestamp_ns(ts) // 1_000_000
    except EventError:
        ms = 0
    return "evt_" + _crockford((ms << 80) | int.from_bytes(digest, "big"), 26)
