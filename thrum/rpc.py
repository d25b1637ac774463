"""JSON-RPC 2.0: errors, newline framing, request decoding, the method registry, a client.

Everything above the `Client` is sans-I/O: bytes in, requests and response bytes out,
so the Unix socket, WebSocket and stdio drivers share it and tests need no sockets.
The client is imported by every CLI call and therefore uses `_socket` rather than
`socket` (which drags in selectors and enum, several ms of start-up).

Error tree (code in brackets)::

    ThrumError [-32000]            any application error
    ├── ParseError [-32700]        not JSON
    ├── InvalidRequest [-32600]    not a JSON-RPC 2.0 request object
    ├── MethodNotFound [-32601]
    ├── InvalidParams [-32602]     a param is missing, of the wrong type or invalid
    ├── InternalError [-32603]     a bug: the traceback goes to the daemon log
    ├── NotFound [-32001]          the message, agent, group or session does not exist
    ├── PermissionDenied [-32002]  not the author / owner, or not allowed on this transport
    ├── Conflict [-32003]          already exists, already deleted, registration conflict
    ├── NoSession [-32004]         the agent has no active session
    ├── TooLarge [-32005]          request line or content over its limit
    └── StorageError [-32006]      the log could not be written (disk full, read-only)
"""

from __future__ import annotations

import json

__all__ = [
    "ThrumError", "ParseError", "InvalidRequest", "MethodNotFound", "InvalidParams",
    "InternalError", "NotFound", "PermissionDenied", "Conflict", "NoSession", "TooLarge",
    "StorageError", "RPCError", "DaemonUnavailable", "MAX_LINE", "LineFramer", "Request",
    "decode_request", "encode_response", "encode_error", "Params", "Registry", "Client", "Deferred",
]

MAX_LINE = 1024 * 1024  # one request line; larger lines get TooLarge and are discarded
MAX_DEPTH = 64  # params nesting; near Python's recursion limit (~1000) encoding a reply or event would fail


class ThrumError(Exception):
    code = -32000

    def __init__(self, message: str, data: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class ParseError(ThrumError):
    code = -32700


class InvalidRequest(ThrumError):
    code = -32600


class MethodNotFound(ThrumError):
    code = -32601


class InvalidParams(ThrumError):
    code = -32602


class InternalError(ThrumError):
    code = -32603


class NotFound(ThrumError):
    code = -32001


class PermissionDenied(ThrumError):
    code = -32002


class Conflict(ThrumError):
    code = -32003


class NoSession(ThrumError):
    code = -32004


class TooLarge(ThrumError):
    code = -32005


class StorageError(ThrumError):
    code = -32006


class RPCError(Exception):
    """An error response received by a client."""

    def __init__(self, code: int, message: str, data: object = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


class DaemonUnavailable(Exception):
    """Nothing answers on the socket."""


# -- framing ------------------------------------------------------------------

class Oversized:
    """Marks a line that exceeded the limit; its bytes were discarded."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


class LineFramer:
    """Splits a byte stream into lines of at most `limit` bytes.

    An over-long line is reported once as `Oversized` and its remaining bytes are
    skipped up to the next newline, so one bad request never ends the connection.
    """

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._skipping = 0  # >0 while discarding the rest of an oversized line

    def feed(self, data: bytes) -> list:
        out: list = []
        if self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                self._skipping += len(data)
                return out
            out.append(Oversized(self._skipping + nl))
            self._skipping = 0
            data = data[nl + 1:]
        buf = self._buf
        buf += data
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            if nl - start > self.limit:
                out.append(Oversized(nl - start))
            else:
                out.append(bytes(buf[start:nl]))
            start = nl + 1
        del buf[:start]
        if len(buf) > self.limit:
            self._skipping = len(buf)
            buf.clear()
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


# -- requests and responses ----------------------------------------------------

_NO_ID = object()


class Request:
    __slots__ = ("id", "method", "params")

    def __init__(self, id: object, method: str, params: dict) -> None:
        self.id, self.method, self.params = id, method, params

    @property
    def is_notification(self) -> bool:
        return self.id is _NO_ID


def decode_request(line: bytes | str) -> Request:
    """Parse one request line, or raise a ThrumError whose `data` may carry the id."""
    line = line.strip() if isinstance(line, (bytes, bytearray)) else line.strip()
    if not line:
        raise ParseError("Parse error", "empty line")
    try:
        # json.loads with these hooks would build a decoder (and its scanner) for every line.
        if isinstance(line, (bytes, bytearray)):
            line = line.decode(json.detect_encoding(line), "surrogatepass")
        elif line.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", line, 0)
        obj = _decoder().decode(line)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ParseError("Parse error", str(exc)[:200]) from None
    if isinstance(obj, list):
        raise InvalidRequest("Invalid request", "batch requests are not supported on this transport")
    if not isinstance(obj, dict):
        raise InvalidRequest("Invalid request", "a request must be a JSON object")
    rid = obj.get("id", _NO_ID)
    if rid is not _NO_ID and not (rid is None or isinstance(rid, (str, int, float)) and not isinstance(rid, bool)):
        raise _with_id(InvalidRequest("Invalid request", "id must be a string, a number or null"), None)
    if obj.get("jsonrpc") != "2.0":
        raise _with_id(InvalidRequest("Invalid request", "jsonrpc field must be '2.0'"), rid)
    method = obj.get("method")
    if not isinstance(method, str) or not method:
        raise _with_id(InvalidRequest("Invalid request", "method must be a non-empty string"), rid)
    params = obj.get("params")
    if params is None:
        params = {}
    elif not isinstance(params, dict):
        raise _with_id(InvalidParams("params must be an object"), rid)
    # Fewer brackets in the line than the limit cannot nest that deep: the walk is for rare lines.
    if _bracket_count(line) > MAX_DEPTH and _nested_deeper(params, MAX_DEPTH):
        raise _with_id(InvalidParams(f"params are nested deeper than {MAX_DEPTH} levels"), rid)
    return Request(rid, method, params)


_DECODER = None


def _decoder() -> json.JSONDecoder:
    global _DECODER
    if _DECODER is None:
        _DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float, parse_int=_finite_int)
    return _DECODER


def _bracket_count(line: bytes | str) -> int:
    return line.count(b"[" if isinstance(line, (bytes, bytearray)) else "[") + \
        line.count(b"{" if isinstance(line, (bytes, bytearray)) else "{")


def _nested_deeper(value: object, limit: int) -> bool:
    """True if some value inside `value` lies more than `limit` lists/objects down (no recursion)."""
    level = [value]
    for _ in range(limit + 1):
        level = [child for item in level if isinstance(item, (dict, list))
                 for child in (item.values() if isinstance(item, dict) else item)]
        if not level:
            return False
    return True


# Python's json accepts NaN and Infinity and turns 1e999 into inf; none of them is JSON,
# Go cannot read them back, and echoing one (as an id) would make the reply invalid JSON.
def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _finite_int(text: str) -> int:
    value = int(text)
    try:
        float(value)
    except OverflowError:
        raise ValueError(f"number out of range: {text[:40]}") from None
    return value


def _with_id(err: ThrumError, rid: object) -> ThrumError:
    err.request_id = rid  # type: ignore[attr-defined]
    return err


def request_id_of(err: Exception) -> object:
    rid = getattr(err, "request_id", None)
    return None if rid is _NO_ID else rid


def _dumps(obj: object) -> bytes:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (a "\ud800" escape, echoed back) is not UTF-8:
        return json.dumps(obj, separators=(",", ":")).encode()  # Go and browsers reject it, so escape


def encode_response(rid: object, result: object) -> bytes:
    return _dumps({"jsonrpc": "2.0", "result": result, "id": None if rid is _NO_ID else rid}) + b"\n"


def encode_error(rid: object, err: ThrumError) -> bytes:
    body: dict = {"code": err.code, "message": err.message}
    if err.data is not None:
        body["data"] = err.data
    return _dumps({"jsonrpc": "2.0", "error": body, "id": None if rid is _NO_ID else rid}) + b"\n"


def encode_notification(method: str, params: dict) -> bytes:
    return _dumps({"jsonrpc": "2.0", "method": method, "params": params}) + b"\n"


# -- params --------------------------------------------------------------------

class Params:
    """Typed access to a params object; every failure is an InvalidParams naming the field."""

    __slots__ = ("raw",)

    def __init__(self, raw: dict) -> None:
        self.raw = raw

    def _get(self, key: str, required: bool):
        value = self.raw.get(key)
        if value is None and required:
            raise InvalidParams(f"{key} is required")
        return value

    def str(self, key: str, *, required: bool = False, default: str = "", max_len: int = 4096,
            allow_nul: bool = False) -> str:
        value = self._get(key, required)
        if value is None:
            return default
        if not isinstance(value, str):
            raise InvalidParams(f"{key} must be a string")
        if required and not value:
            raise InvalidParams(f"{key} is required")
        if len(value) > max_len:
            raise TooLarge(f"{key} is longer than {max_len} characters")
        if not allow_nul and "\x00" in value:
            raise InvalidParams(f"{key} must not contain NUL characters")
        return value

    def bool(self, key: str, default: bool = False) -> bool:
        value = self.raw.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise InvalidParams(f"{key} must be true or false")
        return value

    def int(self, key: str, default: int = 0, *, lo: int | None = None, hi: int | None = None,
            clamp: bool = False) -> int:
        value = self.raw.get(key)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidParams(f"{key} must be an integer")
        if lo is not None and value < lo:
            if not clamp:
                raise InvalidParams(f"{key} must be at least {lo}")
            value = lo
        if hi is not None and value > hi:
            if not clamp:
                raise InvalidParams(f"{key} must be at most {hi}")
            value = hi
        return value

    def str_list(self, key: str, *, max_items: int = 100, max_len: int = 256, strict: bool = False) -> list:
        """A list of strings; a lone string counts as a one-item list unless ``strict``."""
        value = self.raw.get(key)
        if value is None:
            return []
        if isinstance(value, str):
            if strict:
                raise InvalidParams(f"{key} must be an array of strings, not a string")
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidParams(f"{key} must be a list of strings")
        if len(value) > max_items:
            raise TooLarge(f"{key} has more than {max_items} items")
        for v in value:
            if len(v) > max_len or "\x00" in v:
                raise InvalidParams(f"{key} has an invalid item")
        return value

    def pairs(self, key: str, *, max_items: int = 50) -> list:
        """A list of {type, value} objects (scopes and refs)."""
        value = self.raw.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise InvalidParams(f"{key} must be a list of {{type, value}} objects")
        if len(value) > max_items:
            raise TooLarge(f"{key} has more than {max_items} items")
        out = []
        for item in value:
            if isinstance(item, str) and ":" in item:  # tolerate "type:value"
                t, v = item.split(":", 1)
                item = {"type": t, "value": v}
            if (not isinstance(item, dict) or not isinstance(item.get("type"), str)
                    or not isinstance(item.get("value"), str) or not item["type"] or not item["value"]):
                raise InvalidParams(f"{key} must be a list of {{type, value}} objects with non-empty strings")
            if len(item["type"]) > 64 or len(item["value"]) > 256 or "\x00" in item["type"] + item["value"]:
                raise InvalidParams(f"{key} has an invalid item")
            out.append({"type": item["type"], "value": item["value"]})
        return out

    def obj(self, key: str) -> dict | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise InvalidParams(f"{key} must be an object")
        return value


# -- registry ------------------------------------------------------------------

class Method:
    """A registered handler. `events_only`: it writes nothing but events (store.append) and has no other
    effect to undo, so the daemon may run it in a batch without a savepoint (see Daemon.dispatch)."""

    __slots__ = ("name", "fn", "writes", "transports", "events_only")

    def __init__(self, name: str, fn, writes: bool, transports: frozenset, events_only: bool = False) -> None:
        self.name, self.fn, self.writes, self.transports = name, fn, writes, transports
        self.events_only = events_only and writes


ALL_TRANSPORTS = frozenset({"unix", "ws"})


class Deferred:
    """A handler's promise to answer later (e.g. `sync.force` with `wait`).

    A handler returns one instead of a dict; the daemon binds it to the request and
    sends the reply when `resolve(result)` or `fail(error)` is called (once; later
    calls are ignored). Replies of other requests on the same connection are not
    held back behind it.
    """

    __slots__ = ("_deliver", "_outcome", "_done")

    def __init__(self) -> None:
        self._deliver = None
        self._outcome = None
        self._done = False

    def bind(self, deliver) -> None:
        """deliver(ok: bool, value) sends the reply; called at most once."""
        self._deliver = deliver
        if self._outcome is not None and not self._done:
            self._done = True
            deliver(*self._outcome)

    def resolve(self, result: dict) -> None:
        self._settle(True, result)

    def fail(self, error: "ThrumError") -> None:
        self._settle(False, error)

    def _settle(self, ok: bool, value) -> None:
        if self._done or self._outcome is not None:
            return
        self._outcome = (ok, value)
        if self._deliver is not None:
            self._done = True
            self._deliver(ok, value)


class Registry:
    """Method name -> handler. A handler takes (Params, context) and returns a dict (or a Deferred)."""

    def __init__(self) -> None:
        self.methods: dict[str, Method] = {}

    def add(self, name: str, fn, *, writes: bool = False, transports=ALL_TRANSPORTS, events_only: bool = False) -> None:
        self.methods[name] = Method(name, fn, writes, frozenset(transports), events_only)

    def lookup(self, name: str, transport: str) -> Method:
        method = self.methods.get(name)
        if method is None or transport not in method.transports:
            raise MethodNotFound("Method not found", f"method '{name}' is not registered")
        return method


# -- client --------------------------------------------------------------------

class Client:
    """A blocking NDJSON client for the daemon's Unix socket."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock = None
        self._buf = b""
        self._next_id = 0

    def connect(self) -> "Client":
        import _socket
        import os

        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(min(self.timeout, 5.0))
        target, dir_fd = self.path, None
        if len(os.fsencode(target)) >= 100:  # AF_UNIX paths stop at ~107 bytes: go through the dir's fd
            try:
                dir_fd = os.open(os.path.dirname(target), os.O_RDONLY | os.O_DIRECTORY)
                target = f"/proc/self/fd/{dir_fd}/{os.path.basename(target)}"
            except OSError:
                pass
        try:
            sock.connect(target)
        except OSError as exc:
            sock.close()
            raise DaemonUnavailable(f"no daemon is answering at {self.path} ({exc.strerror or exc})") from None
        finally:
            if dir_fd is not None:
                os.close(dir_fd)
        sock.settimeout(self.timeout)
        self._sock = sock
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "Client":
        return self.connect() if self._sock is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        if self._sock is None:
            self.connect()
        try:
            self._sock.sendall(data)
        except OSError as exc:  # e.g. EPIPE: the daemon refused us (another uid) or went away
            raise DaemonUnavailable(f"connection to the daemon failed: {exc.strerror or exc}") from None

    def read_message(self, timeout: float | None = None) -> dict:
        """The next JSON line from the daemon (a response or a notification).

        With `timeout`, waiting longer than that raises TimeoutError (the connection stays usable).
        """
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line, self._buf = self._buf[:nl], self._buf[nl + 1:]
                return json.loads(line)
            if timeout is not None:
                self._sock.settimeout(max(timeout, 0.001))
            try:
                chunk = self._sock.recv(262144)
            except TimeoutError:
                if timeout is not None:
                    raise
                raise DaemonUnavailable(
                    "the daemon did not answer in time (daemon may be unresponsive - try: thrum daemon restart)"
                ) from None
            except OSError as exc:
                raise DaemonUnavailable(f"connection to the daemon failed: {exc.strerror or exc}") from None
            finally:
                if timeout is not None:
                    self._sock.settimeout(self.timeout)
            if not chunk:
                raise DaemonUnavailable("the daemon closed the connection")
            self._buf += chunk

    def call(self, method: str, params: dict | None = None, on_notification=None) -> dict:
        self._next_id += 1
        rid = self._next_id
        self.send_raw(_dumps({"jsonrpc": "2.0", "method": method, "params": params or {}, "id": rid}) + b"\n")
        while True:
            msg = self.read_message()
            if "id" not in msg and "method" in msg:
                if on_notification is not None:
                    on_notification(msg)
                continue
            if msg.get("id") != rid:
                continue
            if "error" in msg:
                err = msg["error"] or {}
                raise RPCError(err.get("code", -32000), err.get("message", "error"), err.get("data"))
            return msg.get("result")
