"""HTTP and WebSocket on one loopback port, inside the daemon's selectors loop; the static UI; browser users.

Each TCP connection gets a `websockets` sans-I/O `ServerProtocol`: we feed it the bytes we
read and write the bytes it gives back, from the daemon's one selectors loop (no asyncio,
no threads). The first request decides what the connection is:

* `GET /ws` with a valid token and our own Origin becomes a WebSocket speaking JSON-RPC 2.0,
  one message per text frame (an array is a batch). Requests go through `daemon.enqueue`, so
  they share the Unix socket's batches and group commit; push notifications arrive as frames.
* anything else is one HTTP response (the UI's static files, with an SPA fallback to
  index.html), after which the connection closes.

Security (see docs/rpc.md): bound to 127.0.0.1 only; the Host must name the loopback at our
port (no DNS rebinding) and the Origin, when present, must be our own origin; every request
needs the token of `var/ws.token` (0600) as `?token=`, an `Authorization: Bearer` header or the
cookie set when a `?token=` URL (from `thrum ui`) is opened. A WebSocket connection acts as
nobody until it names an identity: `user.register` (browser users) or its first
`caller_agent_id`; after that it cannot act as anyone else.

Limits: request head 16 KiB, WebSocket message 1 MiB; a client that leaves 8 MiB unread is cut
off when more output is due (never waited for), 64 connections, 10 s to send a
request head, a ping every 30 s and a close after 60 s of silence.

`websockets` is imported inside functions only, so the CLI never loads it.
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import os
import re
import secrets
import selectors
import socket
import time
import traceback
import unicodedata

from thrum.daemon import SocketPeer, accept_waiting
from thrum.rpc import (
    InvalidParams, InvalidRequest, Params, PermissionDenied, ThrumError, TooLarge,
    decode_request, encode_error, encode_notification,
)

__all__ = ["make_component", "WebServer", "StaticFiles", "derive_username", "parse_port", "TOKEN_NAME",
           "PORT_NAME", "DEFAULT_PORT"]

log = logging.getLogger("thrum.ws")

DEFAULT_PORT = 9999
TOKEN_NAME, PORT_NAME = "ws.token", "ws.port"
MAX_MESSAGE = 1 << 20
MAX_HEAD = 16 * 1024
MAX_OUTBUF = 8 << 20     # unsent output a client may leave behind before it is cut off
HARD_MAX_OUTBUF = 32 << 20  # more than the largest single reply (100 messages of escaped 32 KiB content)
MAX_CONNECTIONS = 64
MAX_BATCH_ITEMS = 100
MAX_STATIC_FILE = 16 << 20
HEAD_TIMEOUT = 10.0
PING_INTERVAL = 30.0
IDLE_TIMEOUT = 60.0     # nothing received (not even a pong) for this long: the peer is gone
LINGER = 2.0            # after our last byte, how long we wait for the peer to close
USERNAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,32}$")
# Writes a connection without an identity may still make: they are how it gets one.
IDENTITY_FREE_WRITES = frozenset({"user.register", "agent.register"})


# -- pure helpers ----------------------------------------------------------------------------

def parse_port(value: str | int | None) -> int:
    """`9999` -> 9999; `0`, `auto` or empty -> 0 (any free port). Raises ValueError otherwise."""
    text = str(value if value is not None else "").strip().lower()
    if text in ("", "0", "auto"):
        return 0
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    return port


def derive_username(git_name: str) -> str:
    """A browser user's name from `git config user.name` (spec §4.7), kept to what user.register accepts.

    Lowercase; accents are folded (`José` -> `jose`) and other non-ASCII letters dropped; spaces,
    `-` and `_` become `-`; everything else goes; at most 32 characters; `user` if nothing is left.
    """
    folded = unicodedata.normalize("NFKD", git_name.lower())
    out = []
    for ch in folded:
        if ch.isascii() and ch.isalnum():
            out.append(ch)
        elif ch in " -_":
            if out and out[-1] != "-":
                out.append("-")
    name = "".join(out).strip("-")[:32].strip("-")
    return name or "user"


_TYPES = {
    ".html": "text/html; charset=utf-8", ".htm": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8", ".json": "application/json", ".map": "application/json",
    ".svg": "image/svg+xml", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
    ".gif": "image/gif", ".webp": "image/webp", ".ico": "image/x-icon", ".woff": "font/woff",
    ".woff2": "font/woff2", ".ttf": "font/ttf", ".txt": "text/plain; charset=utf-8",
    ".webmanifest": "application/manifest+json", ".wasm": "application/wasm",
}


def content_type(name: str) -> str:
    return _TYPES.get(os.path.splitext(name)[1].lower(), "application/octet-stream")


def _ui_root():
    """Where the UI's files are: $THRUM_UI_DEV, the packaged `thrum.web`, or the checkout's `web/`."""
    import importlib.resources

    dev = os.environ.get("THRUM_UI_DEV")
    if dev:
        import pathlib

        return pathlib.Path(dev)
    try:
        root = importlib.resources.files("thrum.web")
        if root.joinpath("index.html").is_file():
            return root
    except (ModuleNotFoundError, TypeError):
        pass
    # A checkout (or `python -m thrum` from one): web/ sits next to the thrum package.
    root = importlib.resources.files("thrum").parent / "web"
    return root if root.joinpath("index.html").is_file() else None


class StaticFiles:
    """Maps a URL path to a file under the UI root: no traversal, SPA fallback, cache rules."""

    def __init__(self, root) -> None:
        self.root = root

    def lookup(self, url_path: str) -> tuple[int, dict, bytes]:
        """(status, headers, body) for GET `url_path` (already stripped of its query)."""
        from urllib.parse import unquote

        if self.root is None:
            return 404, {"Content-Type": "text/plain; charset=utf-8"}, b"The web UI is not installed.\n"
        decoded = unquote(url_path, errors="strict") if "%" in url_path else url_path
        segments = [s for s in decoded.split("/") if s]
        # Any dot-segment, hidden name, backslash or NUL is refused outright (traversal, Windows paths).
        if any(s.startswith(".") or "\\" in s or "\x00" in s for s in segments):
            return 404, {"Content-Type": "text/plain; charset=utf-8"}, b"Not found\n"
        node = self._file(segments) if segments else None
        if node is None:
            if segments and segments[0] == "assets":  # a missing script must not come back as HTML
                return 404, {"Content-Type": "text/plain; charset=utf-8"}, b"Not found\n"
            segments = ["index.html"]
            node = self._file(segments)
            if node is None:
                return 404, {"Content-Type": "text/plain; charset=utf-8"}, b"The web UI is not installed.\n"
        body = node.read_bytes()
        cache = ("public, max-age=31536000, immutable" if segments[0] == "assets" and len(segments) > 1
                 else "no-cache")
        return 200, {"Content-Type": content_type(segments[-1]), "Cache-Control": cache}, body

    def _file(self, segments: list[str]):
        node = self.root
        for s in segments:
            node = node.joinpath(s)
        try:
            if not node.is_file():
                return None
            if isinstance(node, os.PathLike):  # a real directory: a symlink must not lead outside it
                real = os.path.realpath(node)
                base = os.path.realpath(self.root)
                if not real.startswith(base.rstrip(os.sep) + os.sep):
                    return None
                if os.path.getsize(real) > MAX_STATIC_FILE:
                    return None
            return node
        except (OSError, ValueError):
            return None


_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark"><title>thrum: open it with thrum ui</title>
<style>
:root{{--bg:#f5f6f8;--surface:#fff;--text:#1b1f24;--muted:#545d68;--border:#cdd3da;--accent:#0a58a8;--code:#eef0f3}}
@media (prefers-color-scheme:dark){{:root{{--bg:#0e1217;--surface:#161b22;--text:#e6e9ee;--muted:#a3adb9;
--border:#343d48;--accent:#79b8ff;--code:#1f262f}}}}
body{{margin:0;font:16px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","DejaVu Sans",sans-serif;
background:var(--bg);color:var(--text)}}
header{{padding:.5rem 1rem;background:var(--surface);border-bottom:1px solid var(--border);font-weight:700;font-size:1.15rem}}
header span{{color:var(--accent)}}
main{{max-width:38rem;margin:2.5rem auto;padding:1.2rem 1.5rem;background:var(--surface);border:1px solid var(--border);
border-radius:10px}}
h1{{font-size:1.4rem;margin:0 0 .6rem}}
code{{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;background:var(--code);padding:.1em .35em;
border-radius:4px}}
pre{{background:var(--code);padding:.6em .9em;border-radius:6px;font-size:1.05rem}}
pre code{{padding:0}}
.muted{{color:var(--muted)}}
</style></head>
<body><header><span aria-hidden="true">≋</span> thrum</header>
<main><h1>Open this page with <code>thrum ui</code></h1>
<p>This is the web UI of a thrum daemon on this machine. It shows your agents' messages, so it only opens
with the access token that only you can read.</p>
<p>In a terminal inside the repository, run:</p>
<pre><code>thrum ui</code></pre>
<p>It prints (and on a desktop opens) a link that carries the token. After you open it once, this browser
remembers the token, and plain <code>http://127.0.0.1:{port}/</code> works too.</p>
<p class="muted">{reason}</p>
</main></body></html>
"""


def _ensure_token(path: str) -> str:
    """The access token, created (0600) at the first start and kept, so open browser tabs stay valid."""
    try:
        with open(path, encoding="ascii") as f:
            token = f.read().strip()
        if len(token) >= 32:
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)
            return token
    except (OSError, UnicodeDecodeError):
        pass
    from thrum.identity import atomic_write

    token = secrets.token_urlsafe(32)
    atomic_write(path, (token + "\n").encode(), 0o600)
    return token


# -- the server -------------------------------------------------------------------------------

class WebServer:
    """The daemon component: listener, connections, token, port file, user.* methods."""

    def __init__(self, paths) -> None:
        self.paths = paths
        self.daemon = None
        self.listener: socket.socket | None = None
        self.port = 0
        self.token = ""
        self.conns: set[_Conn] = set()
        self.refused: set[_Conn] = set()  # over the cap: answered 503, closing
        self.static: StaticFiles | None = None
        self.git_user: dict | None = None
        self.allowed_hosts: frozenset = frozenset()
        self.allowed_origins: frozenset = frozenset()

    # component protocol

    def start(self, daemon) -> None:
        self.daemon = daemon
        r = daemon.service.registry.add
        r("user.identify", self.rpc_user_identify)
        r("user.register", self.rpc_user_register, writes=True)
        self._read_git_user()
        try:
            import websockets.server  # noqa: F401  (fail here, with a clear log line, if it is missing)
        except ImportError:
            log.warning("the websockets package is not installed: no WebSocket server and no web UI")
            return
        try:
            self._listen()
        except OSError as exc:
            log.error("cannot start the WebSocket server: %s", exc)
            return
        self.static = StaticFiles(_ui_root())

    def stop(self) -> None:
        for conn in list(self.conns) + list(self.refused):
            conn.shutdown()
        if self.listener is not None:
            self.daemon.loop.remove(self.listener)
            self.listener.close()
            self.listener = None
            try:
                os.unlink(self.paths.var_file(PORT_NAME))
            except FileNotFoundError:
                pass

    def _listen(self) -> None:
        from thrum.config import load_settings
        from thrum.identity import atomic_write

        settings = load_settings(self.paths.config)
        try:
            wanted = parse_port(settings.ws_port)
        except ValueError:
            log.warning("invalid WebSocket port %r (from %s); using %d", settings.ws_port, settings.ws_port_source,
                        DEFAULT_PORT)
            wanted = DEFAULT_PORT
        self.token = _ensure_token(self.paths.var_file(TOKEN_NAME))
        try:
            sock = _bind(wanted)
        except OSError as exc:
            if not wanted or exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise
            # Busy (another repo's daemon, say): any free port beats no UI; ws.port names the real one.
            log.warning("port %d is busy (%s); using a free port instead", wanted, exc.strerror)
            sock = _bind(0)
        self.listener = sock
        self.port = sock.getsockname()[1]
        hosts = (f"127.0.0.1:{self.port}", f"localhost:{self.port}", f"[::1]:{self.port}")
        self.allowed_hosts = frozenset(hosts)
        self.allowed_origins = frozenset(f"http://{h}" for h in hosts)
        atomic_write(self.paths.var_file(PORT_NAME), f"{self.port}\n".encode(), 0o600)
        self.daemon.loop.add_reader(sock, self._accept)
        log.info("web UI and WebSocket on http://127.0.0.1:%d (ws: /ws)", self.port)

    def _accept(self, mask: int) -> None:
        for sock in accept_waiting(self.listener):
            if len(self.conns) >= MAX_CONNECTIONS:
                if len(self.refused) >= MAX_CONNECTIONS:  # a flood: no manners left
                    sock.close()
                    continue
                log.warning("refused a connection: already %d open", MAX_CONNECTIONS)
                conn = _Conn(self, sock)
                self.refused.add(conn)
                self.daemon.loop.add_reader(sock, conn.on_event)
                conn._raw_error(503, "Service Unavailable")  # then it lingers briefly, like any refusal
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # notifications are small and urgent
            conn = _Conn(self, sock)
            self.conns.add(conn)
            self.daemon.loop.add_reader(sock, conn.on_event)

    # requests

    def token_ok(self, candidate: str | None) -> bool:
        return bool(candidate) and bool(self.token) and hmac.compare_digest(candidate.encode(), self.token.encode())

    def cookie_name(self) -> str:
        return f"thrum_token_{self.port}"  # cookies ignore ports: one name per daemon on this host

    def presented_token(self, request, query: dict) -> tuple[str | None, bool]:
        """(token, from_query) from ?token=, `Authorization: Bearer`, or our cookie."""
        values = query.get("token")
        if values:
            return values[0], True
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip(), False
        # Not http.cookies: cookies for 127.0.0.1 are shared by every local port, and one odd
        # cookie of another app makes SimpleCookie drop the rest.
        name = self.cookie_name()
        for header in request.headers.get_all("Cookie"):
            for part in header.split(";"):
                key, sep, value = part.strip().partition("=")
                if sep and key == name:
                    return value.strip().strip('"'), False
        return None, False

    def dispatch_checked(self, conn, data: bytes) -> None:
        """Enqueue one WebSocket request, refusing writes from a connection that has no identity.

        A request that may give the connection an identity (user.register, a caller_agent_id)
        lifts the check for what follows it, since requests run in order: a pipelined
        `user.register` + `message.send` must work.
        """
        real = conn.ctx.conn
        if conn.ctx.bound_agent is None and not real.identity_pending:
            try:
                req = decode_request(data)
            except ThrumError:
                req = None  # the dispatcher reports it
            if req is not None and (req.method in IDENTITY_FREE_WRITES or req.params.get("caller_agent_id")):
                real.identity_pending = True
            elif req is not None:
                method = self.daemon.service.registry.methods.get(req.method)
                if method is not None and method.writes and "ws" in method.transports:
                    err = PermissionDenied("this WebSocket connection has no identity: call user.register "
                                           "(browser users) or pass caller_agent_id")
                    if not req.is_notification:
                        conn.send(encode_error(req.id, err))
                    return
        self.daemon.enqueue(conn, data)

    # user.* (spec §4.7)

    def _read_git_user(self) -> None:
        """git config user.name/email of the daemon's repo, read once without blocking the loop."""
        def done(code: int, out: bytes, err: bytes) -> None:
            values = {}
            for line in out.decode("utf-8", "replace").splitlines():
                key, _, value = line.partition(" ")
                values[key.strip().lower()] = value.strip()
            self.git_user = {"name": values.get("user.name", ""), "email": values.get("user.email", ""),
                             "error": "" if values.get("user.name") else (err.decode("utf-8", "replace").strip()
                                                                          or "not set")}
        try:
            self.daemon.loop.spawn(_GIT_USER_ARGV, done, cwd=self.paths.main_repo, env=_git_env(), timeout=10)
        except OSError as exc:
            self.git_user = {"name": "", "email": "", "error": str(exc)}

    def rpc_user_identify(self, p: Params, ctx) -> dict:
        if self.git_user is None:  # asked within milliseconds of start: read it now
            import subprocess

            try:
                proc = subprocess.run(_GIT_USER_ARGV, cwd=self.paths.main_repo, env=_git_env(),
                                      capture_output=True, stdin=subprocess.DEVNULL, timeout=5)
                out, err = proc.stdout, proc.stderr
            except (OSError, subprocess.TimeoutExpired) as exc:
                out, err = b"", str(exc).encode()
            values = dict(line.partition(" ")[::2] for line in out.decode("utf-8", "replace").splitlines())
            self.git_user = {"name": values.get("user.name", "").strip(), "email": values.get("user.email", "").strip(),
                             "error": err.decode("utf-8", "replace").strip() or "not set"}
        user = self.git_user
        if not user["name"]:
            raise ThrumError(f"git config user.name not set: {user['error']}")
        return {"username": derive_username(user["name"]), "email": user["email"], "display": user["name"]}

    def rpc_user_register(self, p: Params, ctx) -> dict:
        from thrum.events import new_id

        if ctx.transport != "ws":
            raise PermissionDenied("User registration only available via WebSocket")
        username = p.str("username", required=True, max_len=128)
        if username.startswith("agent:"):
            raise InvalidParams("username cannot start with 'agent:' prefix")
        if not USERNAME_RE.match(username):
            raise InvalidParams(f"invalid username format: {username} (1-32 letters, digits, '_' or '-')")
        display = p.str("display", max_len=200) or p.str("display_name", max_len=200)
        user_id = "user:" + username
        if ctx.bound_agent and ctx.bound_agent != user_id:
            raise PermissionDenied(f"this connection acts as {ctx.bound_agent}; it cannot register {user_id}")
        service = self.daemon.service
        existing = service.agent_row(user_id)
        if existing is not None and existing["kind"] != "user":
            raise PermissionDenied(f"{user_id} is not a user")
        status = "existing"
        if existing is None or (display and display != existing["display"]):
            payload = {"agent_id": user_id, "kind": "user", "role": username, "module": "ui",
                       "hostname": service.hostname}
            if display or (existing is not None and existing["display"]):
                payload["display"] = display or existing["display"]
            self.daemon.store.append("agent.register", payload)
            status = "registered" if existing is None else "updated"
        ctx.bound_agent = user_id
        out = {"user_id": user_id, "username": username, "status": status,
               # Upstream hands out a token here; ours is not a credential (the ws.token is).
               "token": new_id("tok")}
        name = display or (existing["display"] if existing is not None else "")
        if name:
            out["display_name"] = name
        return out


_GIT_USER_ARGV = ["git", "config", "--get-regexp", r"^user\.(name|email)$"]


def _git_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_COMMON_DIR")}
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart while old sockets sit in TIME_WAIT
        sock.bind(("127.0.0.1", port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


# -- one connection -----------------------------------------------------------------------------

class _Conn(SocketPeer):
    """One TCP connection: an HTTP request, or a WebSocket after the upgrade."""

    def __init__(self, server: WebServer, sock: socket.socket) -> None:
        from websockets.server import ServerProtocol

        from thrum.service import CallContext

        super().__init__(server.daemon.loop, sock)
        self.server = server
        self.proto = ServerProtocol(max_size=MAX_MESSAGE)  # origins: checked by us, before accept()
        self.state = "http"          # http -> ws -> closing ; or http -> closing
        self.head_bytes = 0
        self.answered = False
        self.eof_pending = False     # the protocol wants the write side closed once outbuf drains
        self.identity_pending = False  # a request that may bind an identity is queued (see dispatch_checked)
        self.browser = False           # the handshake carried an Origin: a web page, which may only be a user
        self.ctx = CallContext("ws")
        self.ctx.conn = self
        self.fragments: list[bytes] = []
        self.last_rx = time.monotonic()
        self.timer = self.loop.call_later(HEAD_TIMEOUT, self._head_timeout)

    # I/O

    def _read(self) -> None:
        data = self._recv()
        if data is None:
            return
        if self.state == "closing":  # draining until the peer closes too
            if not data:
                self.close()
            return
        if not data:
            self.proto.receive_eof()
            self._pump()
            self.close()
            return
        self.last_rx = time.monotonic()
        if self.state == "http":
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD and not self.answered:
                self._raw_error(431, "Request Header Fields Too Large")
                return
        self.proto.receive_data(data)
        for event in self.proto.events_received():
            if self.closed or self.state == "closing":
                break
            if self.state == "http":
                try:
                    self._on_request(event)
                except Exception:  # e.g. a duplicated Host header: a bad request, not a daemon problem
                    log.info("bad HTTP request: %s", traceback.format_exc(limit=2))
                    if not self.answered:
                        self._raw_error(400, "Bad Request")
                    return
            else:
                self._on_frame(event)
        if self.state == "http" and not self.answered and self.proto.handshake_exc is not None:
            # websockets gave up on the head. It answers some failures itself (414, 431); for the
            # others (e.g. a request body) it just hangs up, so we say why first.
            out = self.proto.data_to_send()
            if any(out):
                self.answered = True
                self.outbuf += b"".join(out)
                self.eof_pending = True
                self._flush()
            else:
                self._raw_error(400, "Bad Request")
            return
        self._pump()

    def _pump(self) -> None:
        if self.closed:
            return
        # What the client has not taken yet, before this write: one big reply alone never trips the
        # limit, a client that keeps not reading does. The hard cap bounds memory whatever happens.
        backlog = len(self.outbuf)
        for chunk in self.proto.data_to_send():
            if chunk:
                self.outbuf += chunk
            else:
                self.eof_pending = True
        if backlog > MAX_OUTBUF or len(self.outbuf) > HARD_MAX_OUTBUF:
            log.warning("closing a WebSocket client that stopped reading (%d bytes queued)", len(self.outbuf))
            self.close()
            return
        self._flush()

    def _flush(self) -> None:
        if self.closed or not self._drain():
            return
        if not self.outbuf and self.eof_pending and self.state != "closing":
            self._half_close()
            return
        self._watch_writes()

    def _half_close(self) -> None:
        """Our side is done: send FIN, then wait briefly for the peer's so it reads our last bytes."""
        self.state = "closing"
        push = getattr(self.server.daemon, "push", None)
        if push is not None:
            push.forget(self)
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self.loop.cancel(self.timer)
        self.timer = self.loop.call_later(LINGER, self.close)
        if self.writing:
            self.writing = False
            self.loop.modify(self.sock, selectors.EVENT_READ, self.on_event)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # Let go of unsent output now: this object is in a reference cycle (ctx.conn) and a cancelled
        # timer holds it, so it may live on until the garbage collector's next full pass.
        self.outbuf = bytearray()
        self.loop.cancel(self.timer)
        self.loop.remove(self.sock)
        self.server.conns.discard(self)
        self.server.refused.discard(self)
        push = getattr(self.server.daemon, "push", None)
        if push is not None:
            push.forget(self)
        try:
            self.sock.close()
        except OSError:
            pass

    def shutdown(self) -> None:
        """Daemon stopping: a polite close frame if we can send it right away, then gone."""
        if self.state == "ws" and not self.closed:
            try:
                self.proto.send_close(1001, "daemon shutting down")
                self._pump()
            except Exception:
                pass
        self.close()

    def _raw_error(self, status: int, reason: str) -> None:
        if self.closed:
            return
        body = f"{status} {reason}\n".encode()
        self.outbuf += (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
        self.answered = True
        self.eof_pending = True
        self._flush()

    # timers

    def _head_timeout(self) -> None:
        if self.state == "http" and not self.closed:
            self._raw_error(408, "Request Timeout")

    def _keepalive(self) -> None:
        if self.closed or self.state != "ws":
            return
        if time.monotonic() - self.last_rx > IDLE_TIMEOUT:
            log.info("closing a silent WebSocket client (no data for %ds)", IDLE_TIMEOUT)
            self.close()
            return
        try:
            self.proto.send_ping(b"thrum")
            self._pump()
        except Exception:
            self.close()
            return
        self.timer = self.loop.call_later(PING_INTERVAL, self._keepalive)

    # HTTP

    def _send_response(self, status: int, headers: dict, body: bytes, head_only: bool = False) -> None:
        import email.utils
        import http

        from websockets.datastructures import Headers
        from websockets.http11 import Response

        h = Headers()
        h["Date"] = email.utils.formatdate(usegmt=True)
        h["Server"] = "thrum"
        h["Connection"] = "close"
        h["X-Content-Type-Options"] = "nosniff"
        h["X-Frame-Options"] = "DENY"
        h["Referrer-Policy"] = "no-referrer"
        for key, value in headers.items():
            h[key] = value
        h["Content-Length"] = str(len(body))
        self.answered = True
        self.proto.send_response(Response(status, http.HTTPStatus(status).phrase, h, b"" if head_only else body))

    def _on_request(self, request) -> None:
        from urllib.parse import parse_qs, urlencode, urlsplit

        server = self.server
        self.answered = True
        try:
            url = urlsplit(request.path)
            query = parse_qs(url.query)
        except ValueError:
            self._send_response(400, {"Content-Type": "text/plain; charset=utf-8"}, b"Bad request\n")
            return
        host = request.headers.get("Host", "").lower()
        if host not in server.allowed_hosts:
            self._send_response(403, {"Content-Type": "text/plain; charset=utf-8"},
                                f"Forbidden: open http://127.0.0.1:{server.port}/ instead.\n".encode())
            return
        origin = request.headers.get("Origin")
        if origin is not None and origin.lower() not in server.allowed_origins:
            log.warning("refused a request from origin %r", origin[:100])
            self._send_response(403, {"Content-Type": "text/plain; charset=utf-8"},
                                b"Forbidden: cross-origin requests are not allowed.\n")
            return
        token, from_query = server.presented_token(request, query)
        authorized = server.token_ok(token)
        if url.path == "/ws":
            if not authorized:
                self._send_response(401, {"Content-Type": "text/plain; charset=utf-8"},
                                    b"Unauthorized: a valid token is required (see: thrum ui).\n")
                return
            self.browser = origin is not None
            response = self.proto.accept(request)
            self.proto.send_response(response)
            if response.status_code == 101:
                self.state = "ws"
                self.loop.cancel(self.timer)
                self.timer = self.loop.call_later(PING_INTERVAL, self._keepalive)
                push = getattr(server.daemon, "push", None)
                if push is not None:
                    push.listen(self, follow_ctx=True)
            return
        if request.method not in ("GET", "HEAD"):
            self._send_response(405, {"Content-Type": "text/plain; charset=utf-8", "Allow": "GET, HEAD"},
                                b"Method not allowed\n")
            return
        head_only = request.method == "HEAD"
        if not authorized:
            reason = "The token in that link is not valid (it changes when .thrum/var/ws.token is removed)." \
                if token else "No access token was presented."
            self._send_response(401, {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"},
                                _LOGIN_PAGE.format(reason=reason, port=server.port).encode(), head_only)
            return
        if from_query:  # remember the token in a cookie, then drop it from the address bar and history
            rest = {k: v for k, v in query.items() if k != "token"}
            location = (url.path or "/") + ("?" + urlencode(rest, doseq=True) if rest else "")
            cookie = f"{server.cookie_name()}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=31536000"
            self._send_response(303, {"Location": location, "Set-Cookie": cookie, "Cache-Control": "no-store",
                                      "Content-Type": "text/plain; charset=utf-8"}, b"See Other\n", head_only)
            return
        try:
            status, headers, body = server.static.lookup(url.path)
        except (OSError, ValueError, UnicodeError):
            status, headers, body = 404, {"Content-Type": "text/plain; charset=utf-8"}, b"Not found\n"
        self._send_response(status, headers, body, head_only)

    # WebSocket

    def _on_frame(self, frame) -> None:
        from websockets.frames import Opcode

        if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            self.fragments = [frame.data]
        elif frame.opcode == Opcode.CONT:
            self.fragments.append(frame.data)
        else:
            return  # ping, pong and close are answered by the protocol itself
        if not frame.fin:
            return
        data, self.fragments = b"".join(self.fragments), []
        try:
            self._on_message(data)
        except Exception:
            log.error("WebSocket request failed:\n%s", traceback.format_exc())

    def _on_message(self, data: bytes) -> None:
        if data.lstrip()[:1] != b"[":
            self.server.dispatch_checked(self, data)
            return
        try:  # a batch: answered with one array, in one frame
            items = json.loads(data)
        except (ValueError, RecursionError) as exc:
            from thrum.rpc import ParseError

            self.send(encode_error(None, ParseError("Parse error", str(exc)[:200])))
            return
        if not isinstance(items, list) or not items:
            self.send(encode_error(None, InvalidRequest("Invalid request", "batch request cannot be empty")))
            return
        if len(items) > MAX_BATCH_ITEMS:
            self.send(encode_error(None, TooLarge(f"a batch may hold at most {MAX_BATCH_ITEMS} requests")))
            return
        lines = [json.dumps(item, ensure_ascii=False).encode() for item in items]
        expected = 0
        for line in lines:
            try:
                if decode_request(line).is_notification:
                    continue
            except ThrumError:
                pass
            expected += 1
        sink = _BatchSink(self, expected)
        for line in lines:
            self.server.dispatch_checked(sink, line)

    def send(self, reply: bytes) -> None:
        """One encoded JSON-RPC message (a reply or a notification) as one text frame."""
        if self.closed or self.state != "ws":
            return
        if self.ctx.bound_agent is None:
            self.identity_pending = False  # whatever was to bind us has run (and did not)
        try:
            self.proto.send_text(reply.rstrip(b"\n"))
        except Exception:  # the protocol is closing: nothing more may be sent
            return
        self._pump()

    def notify(self, method: str, params: dict) -> None:
        self.send(encode_notification(method, params))


class _BatchSink:
    """Collects the replies of one WebSocket batch and sends them as one array."""

    def __init__(self, conn: _Conn, expected: int) -> None:
        self.conn = conn
        self.ctx = conn.ctx
        self.expected = expected
        self.replies: list[bytes] = []

    def send(self, reply: bytes) -> None:
        self.replies.append(reply.rstrip(b"\n"))
        if len(self.replies) == self.expected:
            self.conn.send(b"[" + b",".join(self.replies) + b"]")

    def notify(self, method: str, params: dict) -> None:
        self.conn.notify(method, params)


def make_component(paths):
    return WebServer(paths)
