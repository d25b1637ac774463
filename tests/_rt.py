"""Helpers for the real-time tests: WebSocket and Unix-socket clients that collect notifications.

Every wait has a deadline (scaled by THRUM_TEST_TIMEOUT_FACTOR); nothing sleeps for a fixed time.
"""

from __future__ import annotations

import json
import os
import time

FACTOR = float(os.environ.get("THRUM_TEST_TIMEOUT_FACTOR", "1"))


def ws_port(t) -> int:
    return int((t.var / "ws.port").read_text().strip())


def ws_token(t) -> str:
    return (t.var / "ws.token").read_text().strip()


def ws_url(t, token: str | None = None, path: str = "/ws") -> str:
    tok = ws_token(t) if token is None else token
    return f"ws://127.0.0.1:{ws_port(t)}{path}" + (f"?token={tok}" if tok else "")


class WS:
    """A JSON-RPC client over a real WebSocket (websockets' sync client)."""

    def __init__(self, t, token: str | None = None, origin: str | None = None, **kw) -> None:
        from websockets.sync.client import connect

        self._cm = connect(ws_url(t, token), origin=origin, open_timeout=10 * FACTOR, **kw)
        self.conn = self._cm.__enter__()
        self.notes: list[dict] = []
        self._id = 0

    def close(self) -> None:
        self._cm.__exit__(None, None, None)

    def __enter__(self) -> "WS":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send_raw(self, text: str) -> None:
        self.conn.send(text)

    def recv(self, timeout: float = 10) -> dict | list:
        return json.loads(self.conn.recv(timeout=timeout * FACTOR))

    def request(self, method: str, **params) -> dict:
        """The whole response object (result or error)."""
        self._id += 1
        rid = self._id
        self.conn.send(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}))
        deadline = time.monotonic() + 10 * FACTOR
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if isinstance(msg, dict) and "id" not in msg:
                self.notes.append(msg)
                continue
            if msg.get("id") == rid:
                return msg

    def call(self, method: str, **params):
        msg = self.request(method, **params)
        assert "error" not in msg, msg["error"]
        return msg["result"]

    def notification(self, method: str, pred=lambda p: True, timeout: float = 10) -> dict:
        """The first notification `method` whose params satisfy `pred` (collected or still to come)."""
        return _await_notification(self.notes, self.recv, method, pred, timeout)


class UnixListener:
    """A Unix-socket client that stays connected and collects notifications."""

    def __init__(self, t) -> None:
        self.client = t.client()
        self.notes: list[dict] = []

    def call(self, method: str, **params):
        return self.client.call(method, params, on_notification=self.notes.append)

    def notification(self, method: str, pred=lambda p: True, timeout: float = 10) -> dict:
        return _await_notification(self.notes, lambda t: self.client.read_message(timeout=t), method, pred, timeout)

    def close(self) -> None:
        self.client.close()


def raw_http(port: int, request: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes to the web port and read the whole answer (until the server closes)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout * FACTOR) as s:
        s.sendall(request)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def http_get(port: int, path: str, headers: dict | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
    head = {"Host": f"127.0.0.1:{port}", **(headers or {})}
    req = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n"
    data = raw_http(port, req.encode())
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, body


def _await_notification(notes: list, recv, method: str, pred, timeout: float) -> dict:
    """Pop the first of `notes` (then of what `recv(seconds)` brings) that is `method` and satisfies `pred`."""
    deadline = time.monotonic() + timeout * FACTOR
    while True:
        for i, note in enumerate(notes):
            if note.get("method") == method and pred(note["params"]):
                return notes.pop(i)["params"]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {method} within {timeout * FACTOR:g}s; got {notes!r}")
        try:
            notes.append(recv(remaining))
        except TimeoutError:
            continue
