"""A scripted model server for driving real agent runtimes in tests (stdlib only).

One HTTP server on 127.0.0.1 speaks the three model APIs the runtimes call:

- Anthropic Messages (Claude Code): ``POST /v1/messages[?beta=true]``, SSE when ``stream`` is true,
  plus ``/v1/messages/count_tokens``;
- OpenAI Responses (Codex): ``POST /v1/responses`` (SSE), plus ``GET /v1/models``;
- Gemini (Gemini CLI): ``POST /v1beta/models/<model>:streamGenerateContent?alt=sse``,
  ``:generateContent`` and ``:countTokens``.

Every request is recorded as a `ModelRequest`. A *policy* answers the agent's turns: a callable
``policy(req) -> list of actions`` where an action is `Text` (assistant text) or `Shell` (a call of
the runtime's own shell tool, whichever the request declares: ``Bash``, ``exec_command``/``shell``,
``run_shell_command``). `Script` is the usual policy: one step per agent turn, in order.

Requests that declare no tools are the runtimes' side calls (session titles, Gemini's next-speaker
check, ...): they are recorded but answered by `side_policy` (a short text by default) and never
reach the policy, so a script's steps count agent turns only.

Usage::

    with ModelServer(Script(Shell("echo hi > f"), Text("done"))) as models:
        run_claude(models, repo, "go")
        models.wait_for(lambda r: "done" in r.text)
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable
from urllib.parse import parse_qs, urlsplit

__all__ = ["Text", "Shell", "ModelRequest", "Script", "ModelServer", "FACTOR"]

FACTOR = float(os.environ.get("THRUM_TEST_TIMEOUT_FACTOR", "1"))
_MAX_BODY = 64 * 1024 * 1024  # requests carry whole transcripts; refuse anything absurd


@dataclass(frozen=True)
class Text:
    """Assistant text."""

    text: str


@dataclass(frozen=True)
class Shell:
    """A call of the runtime's shell tool running `command` (one shell command line)."""

    command: str


Action = Text | Shell
Policy = Callable[["ModelRequest"], "Iterable[Action] | Action"]

# Keys whose string values are identifiers or markup, not text the model reads.
_NOT_TEXT = frozenset({"type", "role", "id", "call_id", "tool_use_id", "status", "signature", "cache_control",
                       "model", "media_type", "mimeType", "encrypted_content", "thoughtSignature"})


# OpenAI Responses input items that the model produced.
_MODEL_ITEMS = frozenset({"function_call", "reasoning", "custom_tool_call", "local_shell_call", "web_search_call"})


def _strings(node, out: list[str]) -> list[str]:
    if isinstance(node, str):
        out.append(node)
    elif isinstance(node, list):
        for item in node:
            _strings(item, out)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key not in _NOT_TEXT:
                _strings(value, out)
    return out


@dataclass
class ModelRequest:
    """One HTTP request a runtime sent to the model server."""

    api: str  # "anthropic" | "openai" | "gemini" | "other"
    method: str
    path: str  # without the query
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: dict | None
    raw: bytes = b""
    time: float = field(default_factory=time.monotonic)
    seq: int = 0  # 0-based order of arrival on this server
    reply: list = field(default_factory=list)  # the actions it was answered with

    @property
    def kind(self) -> str:
        """"messages", "count_tokens", "responses", "models", "generate", "count", or "other"."""
        p = self.path
        if p.endswith("/count_tokens"):
            return "count_tokens"
        if p.endswith("/messages"):
            return "messages"
        if p.endswith("/responses"):
            return "responses"
        if p.endswith("/models"):
            return "models"
        if p.endswith((":streamGenerateContent", ":generateContent")):
            return "generate"
        if p.endswith(":countTokens"):
            return "count"
        return "other"

    @property
    def tools(self) -> list[str]:
        """Names of the tools the request declares (any API)."""
        body = self.body or {}
        names = []
        for tool in body.get("tools") or []:
            if not isinstance(tool, dict):
                continue
            if "name" in tool:
                names.append(tool["name"])
            for decl in tool.get("functionDeclarations") or tool.get("function_declarations") or []:
                names.append(decl.get("name"))
            if isinstance(tool.get("function"), dict):
                names.append(tool["function"].get("name"))
        return [n for n in names if n]

    @property
    def is_agent_turn(self) -> bool:
        """A model turn of the agent loop (it declares tools), not a side call such as a title."""
        return self.kind in ("messages", "responses", "generate") and bool(self.tools)

    @property
    def streaming(self) -> bool:
        if self.api == "gemini":
            return self.path.endswith(":streamGenerateContent")
        return bool((self.body or {}).get("stream"))

    @property
    def conversation(self) -> list:
        """The turns: Anthropic ``messages``, OpenAI ``input`` items, Gemini ``contents``."""
        body = self.body or {}
        key = {"anthropic": "messages", "openai": "input", "gemini": "contents"}.get(self.api, "")
        conv = body.get(key) or []
        return [{"role": "user", "content": conv}] if isinstance(conv, str) else conv

    @property
    def system(self) -> str:
        body = self.body or {}
        node = body.get("system") or body.get("instructions") or body.get("systemInstruction") \
            or body.get("system_instruction") or ""
        return "\n".join(_strings(node, []))

    @property
    def text(self) -> str:
        """All the text the request carries (system, messages, tool calls and results), one string."""
        return "\n".join([self.system, *_strings(self.conversation, [])])

    @property
    def last_user_text(self) -> str:
        """The text of the trailing user-side input: the last user message or tool results."""
        # Everything after the model's last output, minus system/developer items (Claude Code puts
        # `role: "system"` messages among the turns, Codex its hook context as developer messages).
        tail = []
        for item in reversed(self.conversation):
            if not isinstance(item, dict):
                continue
            role, itype = item.get("role"), item.get("type")
            if role in ("assistant", "model") or itype in _MODEL_ITEMS:
                break
            if role in ("system", "developer"):
                continue
            tail.append(item)
        return "\n".join(_strings(list(reversed(tail)), []))

    def __repr__(self) -> str:
        return f"<ModelRequest #{self.seq} {self.api} {self.method} {self.path} agent={self.is_agent_turn}>"


class Script:
    """A policy answering agent turns in order: step i answers the i-th agent turn.

    A step is an action, a list of actions, or a callable ``step(req) -> action(s)``. After the last
    step every turn gets `then` (``Text("ok")`` by default), so a runtime always comes to an end.
    """

    def __init__(self, *steps, then: "Action | list | None" = None) -> None:
        self.steps = list(steps)
        self.then = then if then is not None else Text("ok")
        self.turns = 0
        self._lock = threading.Lock()

    def __call__(self, req: ModelRequest):
        with self._lock:
            i = self.turns
            self.turns += 1
        step = self.steps[i] if i < len(self.steps) else self.then
        return step(req) if callable(step) else step


def _actions(result) -> list:
    if isinstance(result, (Text, Shell)):
        return [result]
    actions = list(result or [])
    for a in actions:
        if not isinstance(a, (Text, Shell)):
            raise TypeError(f"policy returned {a!r}, not Text or Shell")
    return actions or [Text("")]


# --- the wire formats ------------------------------------------------------------------------------------

def _sse(events: Iterable[tuple[str | None, dict]]) -> bytes:
    chunks = []
    for name, data in events:
        head = f"event: {name}\n" if name else ""
        chunks.append(f"{head}data: {json.dumps(data)}\n\n")
    return "".join(chunks).encode()


def _anthropic(req: ModelRequest, actions: list, ids) -> tuple[str, bytes]:
    blocks = []
    for a in actions:
        if isinstance(a, Text):
            blocks.append({"type": "text", "text": a.text})
        else:
            blocks.append({"type": "tool_use", "id": f"toolu_{next(ids):08d}", "name": _tool(req, a), "input":
                           {"command": a.command}})
    stop = "tool_use" if any(isinstance(a, Shell) for a in actions) else "end_turn"
    model = (req.body or {}).get("model", "claude-test")
    usage = {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    msg = {"id": f"msg_{next(ids):08d}", "type": "message", "role": "assistant", "model": model,
           "stop_reason": stop, "stop_sequence": None, "usage": usage}
    if not req.streaming:
        return "application/json", json.dumps({**msg, "content": blocks}).encode()
    events = [("message_start", {"type": "message_start", "message": {**msg, "content": [], "stop_reason": None,
                                                                       "usage": {**usage, "output_tokens": 1}}})]
    for i, b in enumerate(blocks):
        if b["type"] == "text":
            events += [("content_block_start", {"type": "content_block_start", "index": i,
                                                "content_block": {"type": "text", "text": ""}}),
                       ("content_block_delta", {"type": "content_block_delta", "index": i,
                                                "delta": {"type": "text_delta", "text": b["text"]}})]
        else:
            events += [("content_block_start", {"type": "content_block_start", "index": i,
                                                "content_block": {**b, "input": {}}}),
                       ("content_block_delta", {"type": "content_block_delta", "index": i,
                                                "delta": {"type": "input_json_delta",
                                                          "partial_json": json.dumps(b["input"])}})]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events += [("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                  "usage": {"output_tokens": 5}}),
               ("message_stop", {"type": "message_stop"})]
    return "text/event-stream", _sse(events)


def _tool(req: ModelRequest, action: Shell) -> str:
    """The name of the runtime's shell tool among those the request declares."""
    names = req.tools
    for name in ("Bash", "exec_command", "shell_command", "shell", "run_shell_command"):
        if name in names:
            return name
    raise LookupError(f"no shell tool among the declared tools {names}")


def _openai_args(req: ModelRequest, name: str, command: str) -> dict:
    # Codex declares its shell tool in one of a few shapes depending on model/config; follow the schema.
    params = {}
    for tool in (req.body or {}).get("tools") or []:
        if tool.get("name") == name:
            params = (tool.get("parameters") or {}).get("properties") or {}
    if "cmd" in params:
        return {"cmd": command}
    if params.get("command", {}).get("type") == "array":
        return {"command": ["bash", "-lc", command]}
    return {"command": command}


def _openai(req: ModelRequest, actions: list, ids) -> tuple[str, bytes]:
    rid = f"resp_{next(ids):08d}"
    items = []
    for a in actions:
        if isinstance(a, Text):
            items.append({"type": "message", "id": f"msg_{next(ids):08d}", "role": "assistant", "status": "completed",
                          "content": [{"type": "output_text", "text": a.text, "annotations": []}]})
        else:
            name = _tool(req, a)
            items.append({"type": "function_call", "id": f"fc_{next(ids):08d}", "call_id": f"call_{next(ids):08d}",
                          "name": name, "arguments": json.dumps(_openai_args(req, name, a.command)),
                          "status": "completed"})
    model = (req.body or {}).get("model", "gpt-test")
    usage = {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15}
    base = {"id": rid, "object": "response", "created_at": int(time.time()), "model": model}
    done = {**base, "status": "completed", "output": items, "usage": usage}
    if not req.streaming:
        return "application/json", json.dumps(done).encode()
    events = [("response.created", {"type": "response.created",
                                    "response": {**base, "status": "in_progress", "output": []}})]
    for i, item in enumerate(items):
        events.append(("response.output_item.added", {"type": "response.output_item.added", "output_index": i,
                                                       "item": {**item, "status": "in_progress"}}))
        if item["type"] == "message":
            events.append(("response.output_text.delta", {"type": "response.output_text.delta", "output_index": i,
                                                           "item_id": item["id"], "content_index": 0,
                                                           "delta": item["content"][0]["text"]}))
        events.append(("response.output_item.done", {"type": "response.output_item.done", "output_index": i,
                                                      "item": item}))
    events.append(("response.completed", {"type": "response.completed", "response": done}))
    return "text/event-stream", _sse(events)


def _gemini(req: ModelRequest, actions: list, ids) -> tuple[str, bytes]:
    parts = []
    for a in actions:
        if isinstance(a, Text):
            parts.append({"text": a.text})
        else:
            parts.append({"functionCall": {"name": _tool(req, a), "args": {"command": a.command},
                                           "id": f"call_{next(ids):08d}"}})
    model = req.path.rsplit("/", 1)[-1].split(":")[0]
    resp = {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15},
            "modelVersion": model, "responseId": f"r{next(ids):08d}"}
    if not req.streaming:
        return "application/json", json.dumps(resp).encode()
    return "text/event-stream", _sse([(None, resp)])


def _side_text(req: ModelRequest) -> list:
    """Answer for side calls. Some runtimes ask for JSON (Gemini's next-speaker check, Claude's title)."""
    body = req.body or {}
    gen = body.get("generationConfig") or {}
    if gen.get("responseMimeType") == "application/json" or gen.get("responseJsonSchema") or gen.get("responseSchema"):
        return [Text(json.dumps({"reasoning": "scripted", "next_speaker": "user"}))]
    return [Text("Scripted side reply")]


# --- the server ------------------------------------------------------------------------------------------

class ModelServer:
    """The scripted model server; a context manager that starts and stops it.

    `policy` answers agent turns (default: ``Script()``, i.e. ``Text("ok")`` forever); `side_policy`
    answers side calls (requests declaring no tools).
    """

    def __init__(self, policy: Policy | None = None, side_policy: Policy | None = None) -> None:
        self.policy = policy if policy is not None else Script()
        self.side_policy = side_policy if side_policy is not None else _side_text
        self._requests: list[ModelRequest] = []
        self.errors: list[str] = []  # policy failures and unknown paths, to assert on
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._ids = itertools.count(1)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> "ModelServer":
        server = self

        class Handler(_Handler):
            model_server = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="model-server", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)
            self._httpd = None

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash, no ``/v1``)."""
        return f"http://127.0.0.1:{self.port}"

    # the record
    @property
    def requests(self) -> list[ModelRequest]:
        """A snapshot of every request so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def agent_requests(self) -> list[ModelRequest]:
        return [r for r in self.requests if r.is_agent_turn]

    def wait_for(self, predicate: Callable[[ModelRequest], bool], timeout: float = 30.0,
                 start: int = 0, agent_only: bool = True) -> ModelRequest:
        """The first recorded request (from index `start` of `requests`) satisfying `predicate`;
        waits up to `timeout` seconds (scaled by THRUM_TEST_TIMEOUT_FACTOR), then raises AssertionError."""
        deadline = time.monotonic() + timeout * FACTOR
        seen = start
        with self._cond:
            while True:
                while seen < len(self._requests):
                    req = self._requests[seen]
                    seen += 1
                    if (req.is_agent_turn or not agent_only) and predicate(req):
                        return req
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching model request within {timeout * FACTOR:g}s; "
                                         f"{len(self._requests)} recorded")
                self._cond.wait(min(left, 0.5))

    def wait_idle(self, quiet: float, timeout: float = 30.0) -> None:
        """Wait until no request has arrived for `quiet` seconds."""
        deadline = time.monotonic() + timeout * FACTOR
        with self._cond:
            while True:
                last = self._requests[-1].time if self._requests else 0.0
                now = time.monotonic()
                if now - last >= quiet:
                    return
                if now > deadline:
                    raise AssertionError(f"model server not idle for {quiet}s within {timeout * FACTOR:g}s")
                self._cond.wait(min(quiet - (now - last), deadline - now) + 0.01)

    def _record(self, req: ModelRequest) -> None:
        with self._cond:
            req.seq = len(self._requests)
            self._requests.append(req)
            self._cond.notify_all()

    def _answer(self, req: ModelRequest) -> tuple[int, str, bytes]:
        kind = req.kind
        if kind == "models":
            return 200, "application/json", json.dumps({"object": "list", "data": [], "models": []}).encode()
        if kind == "count_tokens":
            return 200, "application/json", json.dumps({"input_tokens": 10}).encode()
        if kind == "count":
            return 200, "application/json", json.dumps({"totalTokens": 10}).encode()
        if kind not in ("messages", "responses", "generate") or req.method != "POST":
            self.errors.append(f"unexpected {req.method} {req.path}")
            return 404, "application/json", json.dumps({"error": {"message": "not found"}}).encode()
        policy = self.policy if req.is_agent_turn else self.side_policy
        try:
            actions = _actions(policy(req))
            req.reply = actions
            encode = {"anthropic": _anthropic, "openai": _openai, "gemini": _gemini}[req.api]
            ctype, body = encode(req, actions, self._ids)
        except Exception as exc:  # a broken policy must fail the test, not hang the runtime
            self.errors.append(f"policy failed on {req!r}: {exc!r}")
            return 500, "application/json", json.dumps({"error": {"message": repr(exc)}}).encode()
        return 200, ctype, body


def _api(path: str) -> str:
    if path.startswith("/v1beta/") or path.startswith("/v1/models/") and ":" in path:
        return "gemini"
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith("/v1/responses") or path == "/v1/models" or path.startswith("/v1/"):
        return "openai"
    return "other"


class _Handler(BaseHTTPRequestHandler):
    model_server: ModelServer
    protocol_version = "HTTP/1.1"  # keep-alive: the runtimes' HTTP clients reuse connections

    def _handle(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self.send_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        req = ModelRequest(api=_api(url.path), method=self.command, path=url.path, query=parse_qs(url.query),
                           headers={k.lower(): v for k, v in self.headers.items()}, body=body, raw=raw)
        status, ctype, payload = self.model_server._answer(req)
        self.model_server._record(req)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        if ctype == "text/event-stream":
            self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _handle

    def log_message(self, format, *args) -> None:  # quiet: the record is in model_server.requests
        pass
