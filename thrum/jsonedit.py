"""Minimal-edit JSON: change one part of a user's JSON file and leave every other byte alone.

`thrum setup hooks` adds its entries to files other tools own (`.claude/settings.json`,
`.gemini/settings.json`, `.codex/hooks.json`, `.cursor/hooks.json`). `json.load` plus
`json.dump` would reformat the whole file, so this module parses the text keeping the
character span of every value, member and element, and edits by splicing text. What was
there is never re-serialized; only the new value is written, by `json.dumps`.

    doc = Document(text, comments=True)         # comments: JSON with // and /* */ (Gemini CLI)
    doc.append_to_array(("hooks", "Stop"), entry)  # creates "hooks" and "Stop" when missing
    doc.remove_array_items(("hooks", "Stop"), is_ours); doc.prune(("hooks", "Stop"))
    write(doc.text)

Layout of inserted text, copied from the neighbours:
- A container with one entry per line gets the new entry on a new line after its last entry,
  at that entry's indentation; nested values are indented by the file's unit (entry
  indentation minus the container's, searched outward, else two spaces) and use the file's
  `:` spacing. A container written on one line gets `, value` on that line, compact.
- An empty `{}`/`[]` is opened onto lines when it is the top level or its parent is one
  entry per line, else filled in place. Removing the last entry closes it to `{}`/`[]` again.
- The file's line ending (`\\r\\n` or `\\n`) is used; the end of the file is never touched.
  An empty or whitespace-only text is an empty object: the first edit writes `{...}` and a
  newline.
- Removing an entry that has its lines to itself deletes those lines (with any comment on
  them); otherwise exactly the entry, one comma and the whitespace between. So adding an
  entry and removing it again gives back the original text byte for byte.
- With `comments=True` a trailing comma is accepted, and a container that uses one gets one
  after the new entry too.

Every edit re-parses the new text before it is kept (files are small; correctness first), so
a failed edit leaves the document as it was. The parser is iterative and refuses nesting
deeper than 500 levels (no config file comes close; `json.loads` itself stops near 1000), so
hostile input raises JSONEditError, never RecursionError. A leading byte order mark is
accepted and kept. NaN and Infinity are not JSON and are refused.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Sequence

__all__ = ["Document", "JSONEditError"]

_MAX_DEPTH = 500

_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_STRING = re.compile(r'"(?:[^"\\\x00-\x1f]+|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"')
_COLON = re.compile(r"[ \t]*:[ \t]*")
_SPACES = re.compile(r"[ \t]*")
_CLOSE = {"object": "}", "array": "]"}


class JSONEditError(ValueError):
    """Invalid JSON text (`line` and `column`, 1-based, say where), or an edit that does not fit."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message if line is None else f"line {line} column {column}: {message}")
        self.line, self.column = line, column


class _Node:
    """One parsed value: its span [start, end) and, for a container, its entries in order."""

    __slots__ = ("kind", "start", "end", "entries", "scalar", "pending")

    def __init__(self, kind: str, start: int) -> None:
        self.kind, self.start, self.end = kind, start, start
        self.entries: list[_Entry] = []
        self.scalar = None
        self.pending: tuple | None = None  # an object's key awaiting its value while parsing


class _Entry:
    """A member (key, from its key's opening quote) or an element, and the comma after it if any."""

    __slots__ = ("key", "start", "key_end", "node", "comma")

    def __init__(self, key: str | None, start: int, key_end: int, node: _Node) -> None:
        self.key, self.start, self.key_end, self.node = key, start, key_end, node
        self.comma: int | None = None


def _error(text: str, pos: int, message: str) -> JSONEditError:
    line_start = text.rfind("\n", 0, pos) + 1
    return JSONEditError(message, text.count("\n", 0, pos) + 1, pos - line_start + 1)


def _parse(text: str, comments: bool) -> _Node | None:
    """The tree of `text`, or None when it holds no value (only whitespace and comments)."""
    n = len(text)

    def skip(pos: int) -> int:
        while True:
            pos = _WS.match(text, pos).end()
            if not comments or not text.startswith("/", pos):
                return pos
            if text.startswith("//", pos):
                end = text.find("\n", pos)
                pos = n if end < 0 else end
            elif text.startswith("/*", pos):
                end = text.find("*/", pos + 2)
                if end < 0:
                    raise _error(text, pos, "unterminated /* comment")
                pos = end + 2
            else:
                return pos

    def fail(pos: int, expected: str) -> JSONEditError:
        if pos >= n:
            return _error(text, n, f"unexpected end of text, expected {expected}")
        if text.startswith(("//", "/*"), pos) and not comments:
            return _error(text, pos, "comments are not allowed in this file")
        return _error(text, pos, f"expected {expected}, found {text[pos]!r}")

    def string(pos: int) -> tuple[str, int]:
        m = _STRING.match(text, pos)
        if m:
            return json.loads(m.group()), m.end()
        i = pos + 1  # find what the pattern refused, to point at it
        while i < n and text[i] != '"':
            if text[i] == "\\":
                if not re.match(r'\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})', text[i:i + 6]):
                    raise _error(text, i, "invalid escape in string")
                i += 2 if text[i + 1] != "u" else 6
            elif text[i] < " ":
                raise _error(text, i, "control character in string (write it as an escape)")
            else:
                i += 1
        raise _error(text, pos, "unterminated string")

    def scalar(pos: int) -> _Node:
        node = _Node("scalar", pos)
        c = text[pos]
        if c == '"':
            node.scalar, node.end = string(pos)
        elif c == "-" or "0" <= c <= "9":
            m = _NUMBER.match(text, pos)
            if not m:
                raise _error(text, pos, "invalid number")
            try:
                # like json.loads: a fraction or exponent makes a float, else an exact int
                node.scalar = float(m.group()) if m.group(1) or m.group(2) else int(m.group())
            except ValueError:  # more digits than int() converts (sys.int_info.str_digits_check_threshold)
                raise _error(text, pos, "number too long") from None
            node.end = m.end()
        else:
            for word, value in (("true", True), ("false", False), ("null", None)):
                if text.startswith(word, pos):
                    node.scalar, node.end = value, pos + len(word)
                    break
            else:
                raise fail(pos, "a value")
        return node

    def key(pos: int, obj: _Node) -> int:
        if pos >= n or text[pos] != '"':
            if pos < n and text[pos] == "}" and obj.entries:
                raise _error(text, pos, "trailing comma before '}'")
            raise fail(pos, "a string key")
        name, end = string(pos)
        colon = skip(end)
        if colon >= n or text[colon] != ":":
            raise fail(colon, "':'")
        obj.pending = (name, pos, end)
        return skip(colon + 1)

    pos = skip(1 if text.startswith("\ufeff") else 0)
    if pos >= n:
        return None
    stack: list[_Node] = []
    while True:
        if pos >= n:
            raise fail(pos, "a value")
        c = text[pos]
        if c in "{[":
            if len(stack) >= _MAX_DEPTH:
                raise _error(text, pos, f"nested deeper than {_MAX_DEPTH} levels")
            node = _Node("object" if c == "{" else "array", pos)
            inner = skip(pos + 1)
            if inner < n and text[inner] == _CLOSE[node.kind]:
                node.end = pos = inner + 1
            else:
                stack.append(node)
                pos = key(inner, node) if c == "{" else inner
                continue
        elif c == "]" and stack and stack[-1].kind == "array" and stack[-1].entries:
            raise _error(text, pos, "trailing comma before ']'")
        else:
            node = scalar(pos)
            pos = node.end
        # `node` is complete: attach it, then close every container that ends here
        while True:
            pos = skip(pos)
            if not stack:
                if pos < n:
                    raise _error(text, pos, "extra text after the top-level value")
                return node
            parent = stack[-1]
            if parent.kind == "object":
                name, start, key_end = parent.pending
                entry = _Entry(name, start, key_end, node)
            else:
                entry = _Entry(None, node.start, node.start, node)
            parent.entries.append(entry)
            close = _CLOSE[parent.kind]
            if pos < n and text[pos] == ",":
                entry.comma = pos
                pos = skip(pos + 1)
                if not (comments and pos < n and text[pos] == close):  # JSONC allows a trailing comma
                    break
            if pos < n and text[pos] == close:
                parent.end = pos + 1
                pos += 1
                node = stack.pop()
                continue
            raise fail(pos, f"',' or '{close}'")
        if parent.kind == "object":
            pos = key(pos, parent)


def _value(node: _Node):
    """The Python value of a node, built without recursion (fresh objects each call)."""
    if node.kind == "scalar":
        return node.scalar
    top = {} if node.kind == "object" else []
    todo = [(node, top)]
    while todo:
        parent, out = todo.pop()
        for entry in parent.entries:
            child = entry.node
            if child.kind == "scalar":
                value = child.scalar
            else:
                value = {} if child.kind == "object" else []
                todo.append((child, value))
            if isinstance(out, dict):
                out[entry.key] = value  # a repeated key: the last one wins, at the first one's place, as json.loads
            else:
                out.append(value)
    return top


def _line_start(text: str, pos: int) -> int:
    return text.rfind("\n", 0, pos) + 1


def _starts_line(text: str, pos: int) -> bool:
    """Only spaces and tabs precede `pos` on its line."""
    return _SPACES.fullmatch(text, _line_start(text, pos), pos) is not None


def _indent(text: str, pos: int) -> str:
    """The leading spaces and tabs of the line holding `pos`."""
    return _SPACES.match(text, _line_start(text, pos)).group()


def _line_end(text: str, pos: int) -> tuple[int, int] | None:
    """(start, end) of the line break ending `pos`'s line when only whitespace and comments
    come before it, else None. Outside strings, valid JSON has no '/', so this also holds
    for files without comments."""
    n = len(text)
    while pos < n:
        c = text[pos]
        if c in " \t\r":
            pos += 1
        elif c == "\n":
            return (pos - 1 if text[pos - 1] == "\r" else pos), pos + 1
        elif text.startswith("//", pos):
            pos = text.find("\n", pos)
            if pos < 0:
                return None
        elif text.startswith("/*", pos):
            end = text.find("*/", pos + 2)
            if end < 0 or "\n" in text[pos:end]:
                return None
            pos = end + 2
        else:
            return None
    return None


def _space_back(text: str, pos: int) -> int:
    # Never across a line break: a // comment before it would swallow what follows.
    while pos > 0 and text[pos - 1] in " \t":
        pos -= 1
    return pos


def _newline(text: str) -> str:
    i = text.find("\n")
    return "\r\n" if i > 0 and text[i - 1] == "\r" else "\n"


def _dump(value, indent: str | None, base: str, newline: str, colon: str, sep: str) -> str:
    """`value` as JSON: on lines indented by `indent` under `base`, or on one line when indent is None."""
    try:
        if indent is None:
            return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=("," + sep, colon))
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, indent=indent, separators=(",", colon))
    except (ValueError, RecursionError) as e:  # NaN, a circular or absurdly deep value
        raise JSONEditError(f"cannot write this value as JSON: {e}") from None
    return text.replace("\n", newline + base)  # JSON strings escape newlines: every "\n" is layout


def _as_read(value):
    """`value` as it reads back once written (string keys, tuples as lists); JSONEditError if
    json cannot write it. Checked before any edit, and compared with the text after it."""
    return json.loads(_dump(value, None, "", "\n", ": ", " "))


def _same(a, b) -> bool:
    """Equal as JSON (1 is not 1.0 or true; key order does not matter)."""
    try:
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        return False


def _check(ok: bool, path: tuple) -> None:
    # A splice that re-parses but says something else would be a bug here; the caller's
    # _atomic() puts the old text back.
    if not ok:
        raise JSONEditError(f"internal error: the edit at {_where(path)} did not read back as written; "
                            "nothing was changed")


def _where(path: tuple) -> str:
    if not path:
        return "the top-level value"
    return "".join(f"[{json.dumps(p, ensure_ascii=False)}]" for p in path)


def _check_path(path: Sequence) -> tuple:
    if isinstance(path, (str, bytes)) or not isinstance(path, (tuple, list)):
        raise TypeError(f"path must be a tuple of keys and indexes, not {path!r}")
    for part in path:
        if isinstance(part, bool) or not isinstance(part, (str, int)):
            raise TypeError(f"path parts must be str keys or int indexes, not {part!r}")
    return tuple(path)


def _last_member(obj: _Node, key: str) -> int | None:
    # With a repeated key, json.loads (and JavaScript's JSON.parse) keeps the last
    # occurrence, so that is the one to read and edit.
    for i in range(len(obj.entries) - 1, -1, -1):
        if obj.entries[i].key == key:
            return i
    return None


class Document:
    """A JSON text that can be edited in place; see the module docstring for the layout rules.

    Paths are tuples of object keys (str) and array indexes (int >= 0), `()` being the
    top-level value. Edits need the top-level value to be an object. Every edit method
    raises JSONEditError when the path leads through something that is not an object
    (or array, for `append_to_array` and `remove_array_items`) and leaves the text as it was.
    """

    def __init__(self, text: str, *, comments: bool = False) -> None:
        """Parse `text`; JSONEditError (with line and column) if it is not valid JSON.

        With `comments=True`, // and /* */ comments and trailing commas are accepted and kept.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        self._comments = comments
        self._root = _parse(text, comments)
        self._text = text

    @property
    def text(self) -> str:
        """The current text."""
        return self._text

    @property
    def value(self):
        """The current value, as json.loads gives it (`{}` for an empty document)."""
        return {} if self._root is None else _value(self._root)

    def get(self, path: Sequence = (), default=None):
        """The value at `path`, or `default` when there is nothing there."""
        path = _check_path(path)
        if self._root is None:
            return {} if not path else default
        chain, found = self._walk(path)
        return _value(chain[-1]) if found == len(path) else default

    def set_member(self, path: Sequence, key: str, value) -> None:
        """Set `key` in the object at `path`: replace only its value's text, or append it as the
        last member. Missing objects on `path` are created. A value already equal (as JSON) is
        left as written."""
        path = _check_path(path)
        if not isinstance(key, str):
            raise TypeError(f"object keys are strings, not {key!r}")
        expected, full = _as_read(value), path + (key,)
        with self._atomic():
            self._object_root()
            chain, found = self._walk(path)
            if found < len(path):
                missing = path[found:]
                if chain[-1].kind != "object" or not all(isinstance(p, str) for p in missing):
                    raise JSONEditError(f"cannot create {_where(path)}: {_where(path[:found])} is not an object")
                for part in reversed(missing[1:]):
                    key, value = part, {key: value}
                value = {key: value}
                key = missing[0]
            obj = chain[-1]
            if obj.kind != "object":
                raise JSONEditError(f"{_where(path)} is not an object")
            index = _last_member(obj, key)
            if index is None:
                self._insert(chain, key, value)
            elif not _same(_value(obj.entries[index].node), expected):
                self._replace(chain, obj.entries[index], value)
            _check(_same(self.get(full), expected), full)

    def append_to_array(self, path: Sequence, value) -> None:
        """Append `value` to the array at `path`. When nothing is there and the last part of
        `path` is a key, the array is created as `[value]` (and missing objects above it)."""
        path = _check_path(path)
        expected = _as_read(value)
        with self._atomic():
            self._object_root()
            chain, found = self._walk(path)
            if found == len(path):
                if chain[-1].kind != "array":
                    raise JSONEditError(f"{_where(path)} is not an array")
                count = len(chain[-1].entries)
                self._insert(chain, None, value)
                now = self.get(path)
                _check(len(now) == count + 1 and _same(now[-1], expected), path)
            elif path and isinstance(path[-1], str):
                self.set_member(path[:-1], path[-1], [value])
            else:
                raise JSONEditError(f"there is no array at {_where(path)}")

    def remove_array_items(self, path: Sequence, predicate: Callable[[object], bool]) -> int:
        """Remove every element of the array at `path` whose value satisfies `predicate`;
        the number removed (0 when there is no array there)."""
        path = _check_path(path)
        array = self._existing(path, "array")
        if array is None:
            return 0
        doomed = [i for i, entry in enumerate(array.entries) if predicate(_value(entry.node))]
        with self._atomic():
            for i in reversed(doomed):  # from the end, so the earlier indexes stay valid
                chain, _ = self._walk(path)
                self._commit(self._removal(chain[-1], i))
        return len(doomed)

    def remove_member(self, path: Sequence, key: str) -> bool:
        """Remove `key` from the object at `path` (every occurrence, if it is repeated, so it is
        really gone); False when there was nothing to remove."""
        path = _check_path(path)
        removed = False
        with self._atomic():
            while (obj := self._existing(path, "object")) is not None:
                index = _last_member(obj, key)
                if index is None:
                    break
                self._commit(self._removal(obj, index))
                removed = True
        return removed

    def prune(self, path: Sequence) -> int:
        """Remove the value at `path` if it is an empty object or array, then each enclosing one
        that became empty, stopping below the top level; the number removed."""
        path = _check_path(path)
        removed = 0
        with self._atomic():
            while path and self._existing((), "object") is not None:
                chain, found = self._walk(path)
                if found < len(path) or chain[-1].kind == "scalar" or chain[-1].entries:
                    break
                parent = chain[-2]
                index = next(i for i, e in enumerate(parent.entries) if e.node is chain[-1])
                self._commit(self._removal(parent, index))
                removed += 1
                path = path[:-1]
        return removed

    # -- internals -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _atomic(self):
        saved = self._text, self._root
        try:
            yield
        except BaseException:
            self._text, self._root = saved
            raise

    def _object_root(self) -> None:
        if self._root is None:
            # Nothing but whitespace (or comments, which stay above): start from an empty object.
            newline = _newline(self._text)
            kept = self._text.rstrip(" \t\r\n")
            kept += newline if kept.lstrip("\ufeff") else ""
            self._commit([(0, len(self._text), kept + "{}" + newline)])
        if self._root.kind != "object":
            raise JSONEditError("the top-level value is not an object")

    def _walk(self, path: tuple) -> tuple[list[_Node], int]:
        """The nodes along `path` from the top and how many parts of it were found."""
        chain = [self._root]
        for part in path:
            node = chain[-1]
            if node.kind == "object" and isinstance(part, str):
                index = _last_member(node, part)
            elif node.kind == "array" and isinstance(part, int) and 0 <= part < len(node.entries):
                index = part
            else:
                index = None
            if index is None:
                break
            chain.append(node.entries[index].node)
        return chain, len(chain) - 1

    def _existing(self, path: tuple, kind: str) -> _Node | None:
        """The container at `path`, None when absent; JSONEditError when it is something else."""
        if self._root is None:
            return None
        if self._root.kind != "object":
            raise JSONEditError("the top-level value is not an object")
        chain, found = self._walk(path)
        if found < len(path):
            return None
        if chain[-1].kind != kind:
            raise JSONEditError(f"{_where(path)} is not an {kind}")
        return chain[-1]

    def _commit(self, edits: list[tuple[int, int, str]]) -> None:
        """Apply non-overlapping (start, end, new) splices (inserts at one place keep their
        order), re-parse, and keep the result only if it is valid."""
        text = self._text
        for start, end, new in reversed(sorted(edits, key=lambda e: e[0])):
            text = text[:start] + new + text[end:]
        try:
            root = _parse(text, self._comments)
        except JSONEditError as e:
            raise JSONEditError(f"the edit would make the text invalid ({e}); nothing was changed") from None
        self._text, self._root = text, root

    def _style(self, chain: list[_Node]) -> tuple[str, str, str]:
        """(indent unit, key separator, space after commas on one line), from the nearest
        container that shows each, else two spaces, ': ' and ' '."""
        text = self._text
        unit = colon = sep = None
        for node in reversed(chain):
            entries = node.entries
            if unit is None:
                lined = [e for e in entries if _starts_line(text, e.start)]
                if lined:
                    inner, outer = _indent(text, lined[-1].start), _indent(text, node.start)
                    if inner.startswith(outer):
                        unit = inner[len(outer):]
            if colon is None and node.kind == "object":
                for entry in reversed(entries):
                    if _COLON.fullmatch(text, entry.key_end, entry.node.start):
                        colon = text[entry.key_end:entry.node.start]
                        break
            if sep is None:
                for a, b in zip(entries, entries[1:]):
                    if _SPACES.fullmatch(text, a.comma + 1, b.start):
                        sep = text[a.comma + 1:b.start]
                        break
        return ("  " if unit is None else unit), colon or ": ", (" " if sep is None else sep)

    def _insert(self, chain: list[_Node], key: str | None, value) -> None:
        text, node, newline = self._text, chain[-1], _newline(self._text)
        unit, colon, sep = self._style(chain)
        head = "" if key is None else json.dumps(key, ensure_ascii=False) + colon
        if node.entries:
            last = node.entries[-1]
            end = last.node.end
            after = end if last.comma is None else last.comma + 1
            trailing = "" if last.comma is None else ","  # a container that uses trailing commas keeps them
            comma = [] if last.comma is not None else [(end, end, ",")]
            if _starts_line(text, last.start):
                indent = _indent(text, last.start)
                new = newline + indent + head + _dump(value, unit, indent, newline, colon, sep) + trailing
                # after any comment on the last entry's line, so the comment stays with its entry
                brk = _line_end(text, after)
                at = after if brk is None else brk[0]
            else:
                new = sep + head + _dump(value, None, "", newline, colon, sep) + trailing
                at = after
            self._commit(comma + [(at, at, new)])
            return
        inside = text[node.start + 1:node.end - 1]
        base = _indent(text, node.start)
        lined = newline + base + unit
        body = head + _dump(value, unit, base + unit, newline, colon, sep)
        if inside.strip(" \t\r\n"):  # only comments inside: add after them
            at = node.start + 1 + len(inside.rstrip(" \t\r\n"))
            flat = " " + head + _dump(value, None, "", newline, colon, sep)
            self._commit([(at, at, lined + body if "\n" in inside else flat)])
        elif "\n" in inside or self._opens_onto_lines(chain):
            self._commit([(node.start + 1, node.end - 1, lined + body + newline + base)])
        else:
            self._commit([(node.start + 1, node.end - 1, head + _dump(value, None, "", newline, colon, sep))])

    def _opens_onto_lines(self, chain: list[_Node]) -> bool:
        if len(chain) == 1:
            return True
        entry = next(e for e in chain[-2].entries if e.node is chain[-1])
        return _starts_line(self._text, entry.start)

    def _replace(self, chain: list[_Node], entry: _Entry, value) -> None:
        text, node, newline = self._text, entry.node, _newline(self._text)
        unit, colon, sep = self._style(chain)
        if _starts_line(text, entry.start) or "\n" in text[node.start:node.end]:
            new = _dump(value, unit, _indent(text, node.start), newline, colon, sep)
        else:
            new = _dump(value, None, "", newline, colon, sep)
        self._commit([(node.start, node.end, new)])

    def _removal(self, container: _Node, i: int) -> list[tuple[int, int, str]]:
        """The splices that remove entry `i` the way a person would."""
        text, entries = self._text, container.entries
        entry = entries[i]
        start, end, comma = entry.start, entry.node.end, entry.comma
        own_end = end if comma is None else comma + 1
        brk = _line_end(text, own_end)
        whole_lines = _starts_line(text, start) and brk is not None
        if len(entries) == 1:
            inside = text[container.start + 1:start] + text[own_end:container.end - 1]
            if not inside.strip(" \t\r\n"):
                return [(container.start + 1, container.end - 1, "")]  # back to {} / []
            if whole_lines:
                return [(_line_start(text, start), brk[1], "")]
            return [(_space_back(text, start), own_end, "")]
        if comma is not None:
            if whole_lines:
                return [(_line_start(text, start), brk[1], "")]
            if i + 1 < len(entries):
                gap = _WS.match(text, own_end).end()
                if "\n" in text[own_end:gap]:  # the next entry is on its own line: leave that line alone
                    return [(_space_back(text, start), own_end, "")]
                return [(start, gap, "")]  # `[1, 2]` -> `[2]`
            return [(_space_back(text, start), own_end, "")]  # last, with a trailing comma
        # the last entry: the comma before it goes
        before = entries[i - 1].comma
        if whole_lines:
            return [(before, before + 1, ""), (_line_start(text, start), brk[1], "")]
        if not text[before + 1:start].strip(" \t\r\n"):
            return [(before, end, "")]
        return [(before, before + 1, ""), (_space_back(text, start), end, "")]
