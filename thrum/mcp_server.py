"""`thrum mcp serve`: the MCP stdio server that lets agents use thrum through tools.

The server is a client of the daemon, like the CLI. It acts as one agent
(`--agent-id` > THRUM_NAME > the worktree's single identity, as `thrum.identity`
resolves it) and names that agent in `caller_agent_id` on every daemon call, so sends
come from it and reads are marked read for it. It never registers an agent.

Each tool call opens its own Unix-socket connection, so a daemon restart between calls
costs nothing. `wait_for_message` blocks on the daemon's push (a temporary
subscription: `push.wait_for_message`) in a worker thread; when the daemon goes away
during the wait it reconnects and the replay of unread matches picks up anything sent
meanwhile. A missing daemon, identity or repository is a tool error (`isError`) that
says what to run, never a crash, and the server keeps serving.

Everything above `serve()` is plain Python: only `serve()` imports the `mcp` SDK (and
through it anyio and pydantic), so the CLI never pays for it and a zipapp without the
SDK can still explain how to get it. stdout carries the protocol only; logs go to stderr.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from thrum import __version__

__all__ = ["TOOLS", "ToolError", "Bridge", "check_arguments", "call_tool", "serve", "SDK_MISSING"]

log = logging.getLogger("thrum.mcp")

PRIORITIES = ("critical", "high", "normal", "low")
WAIT_DEFAULT = 300       # seconds, when timeout is absent or <= 0 (as the Go server)
WAIT_MAX = 600
CALL_TIMEOUT = 30.0      # one daemon round trip, at most
MAX_RECIPIENTS = 50      # mentions per message (the daemon's limit)
HEARTBEAT = 15.0         # seconds between progress notifications during a wait

SDK_MISSING = """\
Error: `thrum mcp serve` needs the Python package `mcp` (the Model Context Protocol SDK, version 2.3 or newer), \
which is not available to this thrum{why}.
  A zipapp cannot carry it (it has compiled parts). Install thrum with its dependencies instead:
      pipx install .                (from a thrum checkout; it brings websockets and mcp)
      pipx install thrum-agents     (once published on PyPI; not `thrum`, an unrelated project)
  or add the SDK to the Python that runs thrum:
      python3 -m pip install 'mcp>=2.3,<3'
"""


class ToolError(Exception):
    """A tool call that failed for a reason the user (or the model) can act on."""

    def __init__(self, message: str, hint: str = "", code: int | None = None, data: object = None) -> None:
        super().__init__(message)
        self.message, self.hint, self.code, self.data = message, hint, code, data


# == tool definitions ==========================================================================

def _prop(kind, description: str, **extra) -> dict:
    return {"type": kind, "description": description, **extra}


_TO = ("Recipients, separated by commas: `@name` (one agent), `@role` (every agent with that role), `@group` "
       "(every member of that group), `@everyone` (all agents). The `@` is optional. Unknown names are an error "
       "that suggests close matches; list_agents and list_groups show who exists.")
_PRIORITY = _prop("string", "critical, high, normal (default) or low. Recipients see it; use high/critical only "
                  "for what should interrupt other work.", enum=list(PRIORITIES), default="normal")
_GROUP_NAME = "Group name: lowercase letters, digits, '-' and '_' (a leading @ is ignored)."
_MEMBER_TYPE = _prop("string", "agent (member_value is an agent name), role (every agent with that role; "
                     "member_value '*' = every agent) or group (nest another group).",
                     enum=["agent", "role", "group"])


def _schema(properties: dict, required: tuple = ()) -> dict:
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return schema


class Tool:
    __slots__ = ("name", "title", "description", "schema", "annotations", "fn")

    def __init__(self, name: str, title: str, description: str, schema: dict, annotations: dict, fn) -> None:
        self.name, self.title, self.description = name, title, description
        self.schema, self.annotations, self.fn = schema, annotations, fn


TOOLS: list[Tool] = []


def _tool(name: str, title: str, description: str, schema: dict, **annotations):
    def register(fn):
        TOOLS.append(Tool(name, title, " ".join(description.split()), schema,
                          {"title": title, "openWorldHint": False, **annotations}, fn))
        return fn
    return register


# == arguments ===================================================================================

_JSON_TYPES = {"string": str, "integer": int, "boolean": bool, "object": dict, "array": list}


def _coerce(path: str, spec: dict, value):
    """One argument against its schema; models sometimes send "30" or "true": accept those."""
    kinds = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
    if value is None:
        if "null" in kinds:
            return None
        raise ToolError(f"'{path}' must not be null")
    if "integer" in kinds and not isinstance(value, bool):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value.strip())
    if "boolean" in kinds and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        value = value.strip().lower() == "true"
    if not any(isinstance(value, _JSON_TYPES[k]) and not (k == "integer" and isinstance(value, bool))
               for k in kinds if k != "null"):
        raise ToolError(f"'{path}' must be {' or '.join(k for k in kinds if k != 'null')}")
    if isinstance(value, str):
        if "enum" in spec:
            value = value.strip().lower()
            if value not in spec["enum"]:
                raise ToolError(f"'{path}' must be one of: {', '.join(spec['enum'])} (got {value!r})")
        if len(value) < spec.get("minLength", 0):
            raise ToolError(f"'{path}' must not be empty")
    if isinstance(value, int) and not isinstance(value, bool):
        if "minimum" in spec and value < spec["minimum"]:
            raise ToolError(f"'{path}' must be at least {spec['minimum']}")
        if "maximum" in spec and value > spec["maximum"]:
            raise ToolError(f"'{path}' must be at most {spec['maximum']}")
    if isinstance(value, dict):
        if "properties" in spec:
            return check_arguments(spec, value, prefix=path + ".")
        extra = spec.get("additionalProperties")
        if isinstance(extra, dict):
            return {k: _coerce(f"{path}.{k}", extra, v) for k, v in value.items()}
    if isinstance(value, list) and "items" in spec:
        return [_coerce(f"{path}[{i}]", spec["items"], v) for i, v in enumerate(value)]
    return value


def check_arguments(schema: dict, args, prefix: str = "") -> dict:
    """Validate `args` against one of our input schemas; a ToolError names the first problem."""
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ToolError("the arguments must be a JSON object")
    props = schema.get("properties", {})
    unknown = sorted(set(args) - set(props))
    if unknown:
        takes = ", ".join(props) or "no arguments"
        raise ToolError(f"unknown argument{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(prefix + u for u in unknown)} (accepted: {takes})")
    for key in schema.get("required", ()):
        if args.get(key) is None or args.get(key) == "":
            raise ToolError(f"'{prefix}{key}' is required")
    return {k: _coerce(prefix + k, props[k], v) for k, v in args.items()}


# == the daemon side ===============================================================================

class Bridge:
    """Who this server acts as and how it reaches the daemon. Thread-safe; used from worker threads.

    The repository and the identity are resolved lazily and retried on every call until they
    resolve, so `thrum init`, `thrum quickstart` or `thrum daemon start` run after the server
    started take effect without restarting it.
    """

    def __init__(self, repo: str | None = None, agent_id: str | None = None, env: dict | None = None) -> None:
        from thrum.events import format_ns

        self.repo = repo
        self.agent_id = agent_id or None
        self.env = dict(os.environ if env is None else env)
        if self.agent_id:  # --agent-id beats THRUM_NAME: resolve as if THRUM_NAME were set to it
            self.env["THRUM_NAME"] = self.agent_id
        self._lock = threading.Lock()
        self._paths = None
        self._ident = None
        # wait_for_message also returns unread messages that arrived since the server started, so
        # nothing sent while the agent was busy between two waits is missed.
        self.started_at = format_ns(time.time_ns())

    # where and who

    def paths(self):
        from thrum.paths import NotInitialized, RedirectError, resolve

        with self._lock:
            if self._paths is None:
                try:
                    self._paths = resolve(self.repo)
                except NotInitialized as exc:
                    raise ToolError(f"thrum is not initialized in {exc} or any directory above it",
                                    "Run 'thrum init' in the repository (the MCP server looks in the directory "
                                    "its tool started it in; pass --repo PATH to 'thrum mcp serve' to choose)") \
                        from None
                except RedirectError as exc:
                    raise ToolError(str(exc), "Repair it with: thrum setup --main-repo <path>") from None
            return self._paths

    def identity(self):
        from thrum.identity import IdentityError, InvalidName, resolve_identity
        from thrum.paths import find_git_toplevel

        paths = self.paths()
        with self._lock:
            if self._ident is None:
                worktree = os.path.basename(find_git_toplevel(paths.repo) or paths.repo)
                try:
                    self._ident = resolve_identity(paths.identities, None, worktree=worktree, env=self.env)
                except (IdentityError, InvalidName) as exc:
                    hint = getattr(exc, "hint", "") or ""
                    raise ToolError(
                        f"this MCP server has no thrum identity: {exc}",
                        "Register one with: thrum quickstart --name <name> --role <role> --module <module>"
                        + ("" if "quickstart" in hint else (f"\n{hint}" if hint else ""))
                        + "\nThen call the tool again (or start the server with: thrum mcp serve --agent-id <name>)",
                    ) from None
            return self._ident

    @property
    def name(self) -> str:
        return self.identity().name

    # calls

    def client(self, timeout: float = CALL_TIMEOUT):
        return _AbortableClient(self.paths().socket, timeout=timeout)

    def connect(self, timeout: float = CALL_TIMEOUT):
        from thrum.rpc import DaemonUnavailable

        client = self.client(timeout)
        try:
            return client.connect()
        except DaemonUnavailable:
            raise self.daemon_down() from None

    def daemon_down(self) -> ToolError:
        paths = self.paths()
        return ToolError(f"thrum daemon is not running for {paths.main_repo} (nothing answers on {paths.socket})",
                         "Start it with: thrum daemon start")

    def call(self, method: str, params: dict, client=None) -> dict:
        """One daemon call (on `client`, or on a connection of its own)."""
        from thrum.rpc import DaemonUnavailable, RPCError

        own = client is None
        if own:
            client = self.connect()
        try:
            return client.call(method, params)
        except RPCError as exc:
            raise _rpc_error(exc, self._ident.name if self._ident else "") from None
        except DaemonUnavailable as exc:
            raise ToolError(f"lost the connection to the thrum daemon ({exc})",
                            "Check it with: thrum daemon status (start it with: thrum daemon start)") from None
        finally:
            if own:
                client.close()

    def startup_notes(self) -> tuple[str, list[str]]:
        """(a line for the log, warnings): whether the identity and the daemon are usable right now."""
        warnings = []
        try:
            ident = self.identity()
        except ToolError as exc:
            return "the agent of this worktree's thrum identity", [f"{exc.message}. {exc.hint.splitlines()[0]}"]
        who = f"@{ident.name} (role {ident.role or '?'})"
        try:
            self.call("agent.whoami", {"caller_agent_id": ident.name})
        except ToolError as exc:
            warnings.append(f"{exc.message}. {exc.hint.splitlines()[0] if exc.hint else ''}".strip())
        return who, warnings


class _AbortableClient:
    """An `rpc.Client` that another thread can interrupt (`abort`) while it blocks on a read."""

    def __init__(self, path: str, timeout: float) -> None:
        from thrum.rpc import Client

        self._client = Client(path, timeout=timeout)

    def connect(self):
        self._client.connect()
        return self

    def abort(self) -> None:
        sock = self._client._sock  # shutdown wakes a recv blocked in another thread; close() would not
        if sock is not None:
            try:
                sock.shutdown(2)  # SHUT_RDWR
            except OSError:
                pass

    def close(self) -> None:
        self._client.close()

    def call(self, method, params=None, on_notification=None):
        return self._client.call(method, params, on_notification)

    def read_message(self, timeout=None):
        return self._client.read_message(timeout)


def _rpc_error(exc, name: str = "") -> ToolError:
    """A daemon error as a tool error, with the command that fixes it when there is one."""
    hint = ""
    if exc.code == -32004:  # no active session
        hint = f"Start one with: thrum session start --name {name or '<name>'}"
    elif "not registered" in exc.message and "quickstart" not in exc.message:
        hint = f"Register it with: thrum quickstart --name {name or '<name>'} --role <role> --module <module>"
    return ToolError(exc.message, hint, exc.code, exc.data)


# == rendering =====================================================================================

def _audience(m: dict) -> list[str]:
    """Who a message was addressed to, as the sender wrote it: @name/@role, @group, or @everyone."""
    out = [f"@{s['value']}" for s in m.get("scopes") or [] if s.get("type") == "group"]
    out += [f"@{r['value']}" for r in m.get("refs") or [] if r.get("type") == "mention"]
    return list(dict.fromkeys(out)) or ["@everyone"]


def _message_info(m: dict) -> dict:
    body = m.get("body") or {}
    info = {"message_id": m["message_id"], "from": m.get("agent_id", ""), "to": _audience(m),
            "content": body.get("content", ""), "priority": m.get("priority") or "normal",
            "timestamp": m.get("created_at", "")}
    for key in ("reply_to", "thread_id", "authored_by", "updated_at"):
        if m.get(key):
            info[key] = m[key]
    if body.get("format") and body["format"] != "markdown":
        info["format"] = body["format"]
    if body.get("structured") is not None:
        info["metadata"] = body["structured"]
    return info


def _render_message(info: dict) -> str:
    head = f"[{info['message_id']}] from @{info['from']} to {', '.join(info['to'])}"
    if info["priority"] != "normal":
        head += f" · {info['priority'].upper()}"
    head += f" · {info['timestamp']}"
    if info.get("reply_to"):
        head += f" · reply to {info['reply_to']}"
    lines = [head] + ["  " + line for line in (info["content"].splitlines() or [""])]
    if info.get("metadata") is not None:
        import json

        lines.append(f"  metadata: {json.dumps(info['metadata'], ensure_ascii=False)}")
    return "\n".join(lines)


def _recipients(to: str) -> list[str]:
    names = []
    for raw in to.replace(",", " ").split():
        name = raw.strip().lstrip("@")
        if name.startswith("agent:") and name.count(":") == 2:  # legacy Go ids `agent:<role>:<hash>`
            name = name.split(":")[1]
        if name:
            names.append(name)
    return list(dict.fromkeys(names))


def _client_id() -> str:
    import secrets

    return "mcp_" + secrets.token_hex(8)


# == the tools ===================================================================================

@_tool("send_message", "Send a message", f"""
    Send a message as you to another agent, a role, a group or everyone. The message is stored in the
    repository's thrum log; recipients see it in check_messages / wait_for_message (and `thrum inbox`).
    `to`: {_TO} To answer a message pass its message_id as reply_to: its author is then added to the
    recipients. Returns the new message_id.""",
    _schema({
        "to": _prop("string", _TO, minLength=1),
        "content": _prop("string", "The message text (Markdown). At most 32 KiB.", minLength=1),
        "priority": _PRIORITY,
        "reply_to": _prop("string", "message_id of the message this answers (optional)."),
        "metadata": _prop("object", "Optional string key/value pairs stored with the message "
                          "(e.g. {\"pr\": \"42\"}); recipients get them back as `metadata`.",
                          additionalProperties={"type": "string"}),
    }, ("to", "content")), destructiveHint=False, idempotentHint=False)
def send_message(b: Bridge, a: dict):
    names = _recipients(a["to"])
    if not names:
        raise ToolError("'to' names no recipient", "Example: to='@bob' or to='@reviewer, @alice'")
    if len(names) > MAX_RECIPIENTS:
        raise ToolError(f"too many recipients ({len(names)}; at most {MAX_RECIPIENTS})",
                        "Make a group (create_group, add_group_member) and send to @group")
    priority = a.get("priority") or "normal"
    params = {"content": a["content"], "format": "markdown", "mentions": ["@" + n for n in names],
              "priority": priority, "caller_agent_id": b.name, "client_id": _client_id()}
    if a.get("reply_to"):
        params["reply_to"] = a["reply_to"]
    if a.get("metadata"):
        params["structured"] = a["metadata"]
    res = b.call("message.send", params)
    to = ["@" + n for n in names]
    data = {"status": "delivered", "message_id": res["message_id"], "recipient_status": "resolved", "to": to,
            "priority": res.get("priority", priority), "created_at": res.get("created_at", "")}
    if a.get("reply_to"):
        data["reply_to"] = a["reply_to"]
    text = f"Sent {res['message_id']} to {', '.join(to)}"
    if data["priority"] != "normal":
        text += f" ({data['priority']} priority)"
    if a.get("reply_to"):
        text += f", in reply to {a['reply_to']}"
    return text + ".", data


@_tool("check_messages", "Check your messages", """
    Get your unread messages and mark them read: messages to you by name, to your role, to groups you
    belong to, and to everyone; never your own. Oldest first, at most `limit`. `remaining` is how many
    unread messages are left after these (call again to get them). Each message has message_id, from, to,
    priority, content and timestamp (and reply_to, metadata when set). Call it when you start and between
    tasks; use wait_for_message to block until something arrives.""",
    _schema({"limit": _prop("integer", "How many messages at most (1-100, default 50).", minimum=1, maximum=100,
                            default=50)}),
    readOnlyHint=False, destructiveHint=False, idempotentHint=False)
def check_messages(b: Bridge, a: dict):
    name = b.name
    limit = a.get("limit") or 50
    client = b.connect()
    try:
        me = b.call("agent.whoami", {"caller_agent_id": name}, client)  # registered? and its role
        res = b.call("message.list", {"for_agent": name, "for_agent_role": me.get("role") or "",
                                      "exclude_self": True, "unread": True, "page_size": limit,
                                      "sort_by": "created_at", "sort_order": "asc", "caller_agent_id": name},
                     client)
        msgs = res["messages"]
        if msgs:
            b.call("message.markRead", {"message_ids": [m["message_id"] for m in msgs], "caller_agent_id": name},
                   client)
    finally:
        client.close()
    infos = [_message_info(m) for m in msgs]
    remaining = max(0, res.get("total", 0) - len(infos))
    data = {"status": "messages" if infos else "empty", "messages": infos, "remaining": remaining}
    if not infos:
        return f"No unread messages for @{name}.", data
    head = (f"{len(infos)} unread message{'s' if len(infos) != 1 else ''} for @{name} (now marked read)"
            + (f"; {remaining} more unread: call check_messages again" if remaining else "") + ":")
    return head + "\n\n" + "\n\n".join(_render_message(i) for i in infos), data


_PRIORITY_FILTERS = {"all": 4, "critical": 1, "high_and_above": 2, "normal_and_above": 3}


@_tool("wait_for_message", "Wait for a message", f"""
    Block until a message for you arrives (to you, your role, your groups or everyone; never your own),
    then return it and mark it read, so neither this tool nor check_messages returns it again. If an unread
    message already arrived since this MCP server started, it is returned at once (oldest first). Waits
    up to `timeout` seconds (default {WAIT_DEFAULT}, max {WAIT_MAX}; 0 or less means the default) and then
    returns status "timeout". The daemon pushes messages, so the answer comes as soon as one is sent. Use
    it to wait for a reply or for work; keep the timeout below your tool-call time limit.""",
    _schema({
        "timeout": _prop("integer", f"Seconds to wait at most (default {WAIT_DEFAULT}, max {WAIT_MAX}).",
                         default=WAIT_DEFAULT),
        "priority_filter": _prop("string", "Which messages end the wait: all (default), critical, high_and_above "
                                 "or normal_and_above. Others stay unread for check_messages.",
                                 enum=list(_PRIORITY_FILTERS), default="all"),
    }), readOnlyHint=False, destructiveHint=False, idempotentHint=False)
def wait_for_message(b: Bridge, a: dict, abort: "_Abort | None" = None):
    from thrum.push import wait_for_message as wait_on_push
    from thrum.rpc import DaemonUnavailable, RPCError

    abort = abort or _Abort()
    name = b.name
    timeout = a.get("timeout") or 0
    timeout = WAIT_DEFAULT if timeout <= 0 else min(timeout, WAIT_MAX)
    rank = _PRIORITY_FILTERS[a.get("priority_filter") or "all"]
    accept = None
    if rank < 4:
        def accept(note: dict) -> bool:
            return PRIORITIES.index(note.get("priority") or "normal") < rank
    start = time.monotonic()
    deadline = start + timeout
    reconnects = 0
    client = b.connect()  # a daemon that is down now is an error, not a wait
    while True:
        abort.client = client
        if abort.is_set():  # cancelled while (re)connecting: never claim a message nobody will receive
            client.close()
            raise _Aborted()
        try:
            msg = wait_on_push(client, name, {"inbox": True}, max(0.0, deadline - time.monotonic()), b.started_at,
                               accept=accept, replay=100 if accept else 1)
            break
        except RPCError as exc:
            raise _rpc_error(exc, name) from None
        except (DaemonUnavailable, OSError) as exc:
            if abort.is_set():
                raise _Aborted() from None
            log.warning("lost the daemon during wait_for_message (%s); reconnecting", exc)
        finally:
            client.close()
        client = _reconnect(b, deadline, abort)
        reconnects += 1
        if client is None:
            if abort.is_set():
                raise _Aborted()
            raise ToolError(f"the thrum daemon stopped during the wait and is not running "
                            f"(waited {time.monotonic() - start:.0f} s)", "Start it with: thrum daemon start")
    waited = round(time.monotonic() - start, 1)
    data: dict = {"status": "message_received" if msg else "timeout", "waited_seconds": waited}
    if reconnects:
        data["reconnects"] = reconnects
    if msg is None:
        return f"No message for @{name} within {timeout:g} s (timeout).", data
    data["message"] = _message_info(msg)
    return f"Message for @{name} (now marked read):\n\n{_render_message(data['message'])}", data


class _Aborted(Exception):
    """The wait was cancelled by the MCP client."""


class _Abort:
    """Lets the event loop stop a wait that runs in a worker thread."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.client = None

    def is_set(self) -> bool:
        return self.event.is_set()

    def set(self) -> None:
        self.event.set()
        client = self.client
        if client is not None:
            client.abort()


def _reconnect(b: Bridge, deadline: float, abort: _Abort):
    """A connection to the (restarted) daemon, or None when the deadline passes or the wait is aborted.

    This polls connect() with a growing interval: a dead daemon cannot push, and it is only while it is down.
    """
    from thrum.rpc import DaemonUnavailable

    delay = 0.05
    while not abort.is_set():
        client = b.client()
        try:
            client.connect()
            log.info("reconnected to the daemon")
            return client
        except DaemonUnavailable:
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        abort.event.wait(min(delay, remaining))
        delay = min(delay * 2, 1.0)
    return None


@_tool("list_agents", "List agents", """
    List the agents (and browser users) known to this repository's thrum: name (address it as @name), role
    (@role reaches every agent with it), module, status (active = has an open session, offline), what
    they are doing (intent, current_task, branch) and when they were last seen. You are marked `you`.""",
    _schema({"include_offline": _prop(["boolean", "null"], "Also list agents without an open session "
                                      "(default true).", default=True)}),
    readOnlyHint=True, idempotentHint=True)
def list_agents(b: Bridge, a: dict):
    name = b.name
    include_offline = a.get("include_offline")
    include_offline = True if include_offline is None else include_offline
    rows = b.call("agent.list", {"caller_agent_id": name})["agents"]
    agents = []
    for r in rows:
        if not include_offline and r.get("status") != "active":
            continue
        item = {"name": r["agent_id"], "role": r.get("role", ""), "module": r.get("module", ""),
                "status": r.get("status", "offline")}
        if r.get("kind") and r["kind"] != "agent":
            item["kind"] = r["kind"]
        for key in ("display", "intent", "current_task", "branch", "last_seen_at"):
            if r.get(key):
                item[key] = r[key]
        if r["agent_id"] == name:
            item["you"] = True
        agents.append(item)
    active = sum(1 for x in agents if x["status"] == "active")
    data = {"agents": agents, "count": len(agents)}
    if not agents:
        return "No agents" + ("" if include_offline else " are active") + ".", data
    lines = [f"{len(agents)} agent{'s' if len(agents) != 1 else ''} ({active} active):"]
    for x in agents:
        line = f"- @{x['name']}{' (you)' if x.get('you') else ''}: role @{x['role']}"
        line += f", module {x['module']}" if x["module"] else ""
        line += f", {x['status']}"
        extra = [f"{k.replace('_', ' ')}: {x[k]}" for k in ("intent", "current_task", "branch") if x.get(k)]
        if x.get("last_seen_at"):
            extra.append(f"last seen {x['last_seen_at']}")
        lines.append(line + (" — " + "; ".join(extra) if extra else ""))
    return "\n".join(lines), data


@_tool("broadcast_message", "Broadcast a message", """
    Send a message to every agent (@everyone), as you. With `filter`, address only some agents instead:
    status "active" = only agents with an open session, exclude = agent names to leave out. For one agent,
    a role or a group use send_message.""",
    _schema({
        "content": _prop("string", "The message text (Markdown). At most 32 KiB.", minLength=1),
        "priority": _PRIORITY,
        "filter": {**_schema({
            "status": _prop("string", "all (default) or active (only agents with an open session).",
                            enum=["all", "active"]),
            "exclude": _prop("array", "Agent names to leave out.", items={"type": "string"}),
        }), "description": "Optional: send to a subset of the agents instead of @everyone."},
    }, ("content",)), destructiveHint=False, idempotentHint=False)
def broadcast_message(b: Bridge, a: dict):
    name = b.name
    priority = a.get("priority") or "normal"
    flt = a.get("filter") or {}
    exclude = {x.strip().lstrip("@") for x in flt.get("exclude") or []}
    if (flt.get("status") or "all") == "all" and not exclude:
        batches = [["everyone"]]
    else:
        rows = b.call("agent.list", {"caller_agent_id": name, "agents_only": True})["agents"]
        chosen = [r["agent_id"] for r in rows if r["agent_id"] != name and r["agent_id"] not in exclude
                  and (flt.get("status") != "active" or r.get("status") == "active")]
        batches = [chosen[i:i + MAX_RECIPIENTS] for i in range(0, len(chosen), MAX_RECIPIENTS)]
    if not batches:
        data = {"status": "no_recipients", "sent_to": [], "total_sent": 0, "message_ids": []}
        return "No agent matches the filter; nothing was sent.", data
    ids, sent_to = [], []
    for batch in batches:
        res = b.call("message.send", {"content": a["content"], "format": "markdown",
                                      "mentions": ["@" + n for n in batch], "priority": priority,
                                      "caller_agent_id": name, "client_id": _client_id()})
        ids.append(res["message_id"])
        sent_to += ["@" + n for n in batch]
    data = {"status": "sent", "sent_to": sent_to, "total_sent": len(ids), "message_ids": ids, "priority": priority}
    return f"Sent {', '.join(ids)} to {', '.join(sent_to)}.", data


@_tool("create_group", "Create a group", """
    Create a named group so one message reaches all its members (send_message to @name). The name may not
    be an agent's name or a role. Add members with add_group_member.""",
    _schema({"name": _prop("string", _GROUP_NAME, minLength=1),
             "description": _prop("string", "What the group is for (optional).")}, ("name",)),
    destructiveHint=False, idempotentHint=False)
def create_group(b: Bridge, a: dict):
    params = {"name": a["name"], "caller_agent_id": b.name}
    if a.get("description"):
        params["description"] = a["description"]
    res = b.call("group.create", params)
    data = {"group_id": res["group_id"], "name": res["name"], "status": "created"}
    return (f"Created group @{res['name']} ({res['group_id']}). Add members with add_group_member; "
            f"send_message to @{res['name']} reaches them all."), data


@_tool("delete_group", "Delete a group", """
    Delete a group. Messages already sent to it are kept. The built-in @everyone group cannot be deleted.""",
    _schema({"name": _prop("string", _GROUP_NAME, minLength=1)}, ("name",)),
    destructiveHint=True, idempotentHint=False)
def delete_group(b: Bridge, a: dict):
    res = b.call("group.delete", {"name": a["name"], "caller_agent_id": b.name})
    return f"Deleted group @{res['name']}.", {"name": res["name"], "status": "deleted"}


def _member_change(b: Bridge, a: dict, method: str):
    value = a["member_value"].strip()
    value = value if value == "*" else value.lstrip("@")
    res = b.call(method, {"group": a["group"], "member_type": a["member_type"], "member_value": value,
                          "caller_agent_id": b.name})
    data = {"group": res.get("group", a["group"]), "member_type": res.get("member_type", a["member_type"]),
            "member_value": res.get("member_value", a["member_value"]), "status": res.get("status", "")}
    return data


@_tool("add_group_member", "Add a group member", """
    Add a member to a group: an agent, a role (every agent with it, now and later) or another group.
    Adding an existing member changes nothing (status "unchanged").""",
    _schema({"group": _prop("string", _GROUP_NAME, minLength=1), "member_type": _MEMBER_TYPE,
             "member_value": _prop("string", "The agent name, role or group name to add.", minLength=1)},
            ("group", "member_type", "member_value")), destructiveHint=False, idempotentHint=True)
def add_group_member(b: Bridge, a: dict):
    data = _member_change(b, a, "group.member.add")
    what = f"{data['member_type']} {data['member_value']}"
    if data["status"] == "unchanged":
        return f"{what} was already a member of @{data['group']}.", data
    return f"Added {what} to @{data['group']}.", data


@_tool("remove_group_member", "Remove a group member", """
    Remove a member from a group (give the member_type and member_value it was added with).""",
    _schema({"group": _prop("string", _GROUP_NAME, minLength=1), "member_type": _MEMBER_TYPE,
             "member_value": _prop("string", "The agent name, role or group name to remove.", minLength=1)},
            ("group", "member_type", "member_value")), destructiveHint=True, idempotentHint=True)
def remove_group_member(b: Bridge, a: dict):
    data = _member_change(b, a, "group.member.remove")
    what = f"{data['member_type']} {data['member_value']}"
    if data["status"] == "not_a_member":
        return f"{what} was not a member of @{data['group']}; nothing changed.", data
    return f"Removed {what} from @{data['group']}.", data


@_tool("list_groups", "List groups", """
    List the groups (address one as @name) with their description and member count. @everyone is built
    in and contains every agent.""", _schema({}), readOnlyHint=True, idempotentHint=True)
def list_groups(b: Bridge, a: dict):
    rows = b.call("group.list", {"caller_agent_id": b.name})["groups"]
    groups = []
    for g in rows:
        item = {"name": g["name"], "member_count": g.get("member_count", 0)}
        if g.get("description"):
            item["description"] = g["description"]
        groups.append(item)
    data = {"groups": groups, "count": len(groups)}
    lines = [f"{len(groups)} group{'s' if len(groups) != 1 else ''}:"]
    lines += [f"- @{g['name']}: {g['member_count']} member{'s' if g['member_count'] != 1 else ''}"
              + (f" — {g['description']}" if g.get("description") else "") for g in groups]
    return "\n".join(lines), data


@_tool("get_group", "Show a group", """
    Show a group's description and members (member_type agent/role/group and member_value). With
    expand=true, also the names of the agents its messages reach (roles and nested groups resolved).""",
    _schema({"name": _prop("string", _GROUP_NAME, minLength=1),
             "expand": _prop("boolean", "Also list the agents the group reaches (default false).", default=False)},
            ("name",)), readOnlyHint=True, idempotentHint=True)
def get_group(b: Bridge, a: dict):
    name = b.name
    client = b.connect()
    try:
        info = b.call("group.info", {"name": a["name"], "caller_agent_id": name}, client)
        expanded = None
        if a.get("expand"):
            expanded = b.call("group.members", {"name": a["name"], "expand": True, "caller_agent_id": name},
                              client).get("expanded") or []
    finally:
        client.close()
    data: dict = {"name": info["name"]}
    if info.get("description"):
        data["description"] = info["description"]
    data["members"] = [{"member_type": m["member_type"], "member_value": m["member_value"]}
                       for m in info.get("members", [])]
    if expanded is not None:
        data["expanded"] = expanded
    lines = [f"@{data['name']}" + (f" — {data['description']}" if data.get("description") else "")
             + f": {len(data['members'])} member{'s' if len(data['members']) != 1 else ''}"]
    lines += [f"- {m['member_type']} {m['member_value']}" for m in data["members"]]
    if expanded is not None:
        lines.append("Reaches: " + (", ".join("@" + x for x in expanded) if expanded else "no agents"))
    return "\n".join(lines), data


@_tool("search_messages", "Search messages", """
    Full-text search of this repository's messages, best matches first (bm25), each hit with a snippet where
    the matching words are marked **like this**. Query: words (all must match), "a phrase", prefix* (auth*
    finds auth, authentication), AND / OR / NOT in capitals, parentheses; Chinese, Japanese and Korean words
    are found inside sentences too. Filters narrow it: from (author), to (what an agent's inbox shows, or a
    role or group), thread_id, since/until. Read-only: nothing is marked read.""",
    _schema({
        "query": _prop("string", 'What to search for, e.g. `auth token`, `"rate limit" OR throttl*`, '
                       "`deploy NOT staging`.", minLength=1),
        "from": _prop("string", "Only messages written by this agent (@name)."),
        "to": _prop("string", "Only messages addressed to this agent (@name: mentions of it or its role, its "
                    "groups, broadcasts), role (@role) or group (@group)."),
        "thread_id": _prop("string", "Only messages of this thread (its thread id or first message id)."),
        "since": _prop("string", "Only messages from this time on: RFC 3339 (2026-01-31T09:00:00Z) or a date."),
        "until": _prop("string", "Only messages before this time: RFC 3339 or a date."),
        "limit": _prop("integer", "Hits to return, 1-100 (default 20).", default=20, minimum=1, maximum=100),
    }, ("query",)), readOnlyHint=True, idempotentHint=True)
def search_messages(b: Bridge, a: dict):
    params = {"query": a["query"], "caller_agent_id": b.name}
    for key in ("from", "to", "thread_id", "since", "until"):
        value = (a.get(key) or "").strip()
        if value:
            params[key] = value.lstrip("@") if key in ("from", "to") else value
    if a.get("limit") is not None:
        params["limit"] = a["limit"]
    result = b.call("message.search", params)
    hits = result["hits"]
    data = {"hits": hits, "count": len(hits), "query": result["query"], "searched_all": result["searched_all"]}
    if result.get("not_indexed_yet"):
        data["not_indexed_yet"] = result["not_indexed_yet"]
    if not hits:
        return f"No messages match {result['query']!r}.", data
    lines = [f"{len(hits)} message{'s' if len(hits) != 1 else ''} match {result['query']!r}, best first:"]
    for h in hits:
        thread = f", thread {h['thread_id']}" if h.get("thread_id") else ""
        lines.append(f"- {h['message_id']} from @{h['author']} at {h['created_at']}{thread}: "
                     + " ".join(h["snippet"].split()))
    if result.get("not_indexed_yet"):
        lines.append(f"(The search index is catching up: {result['not_indexed_yet']:,} messages were not searched"
                     " yet; try again shortly.)")
    elif not result["searched_all"]:
        lines.append("(Ranked among the newest messages; narrow the search with from, to, thread_id or since to "
                     "reach older ones.)")
    return "\n".join(lines), data


TOOLS_BY_NAME = {t.name: t for t in TOOLS}


def call_tool(b: Bridge, name: str, arguments, abort: _Abort | None = None) -> tuple[str, dict, bool]:
    """Run one tool synchronously: (text, structured content, is_error). Never raises for user errors."""
    tool = TOOLS_BY_NAME.get(name)
    try:
        if tool is None:
            raise ToolError(f"unknown tool {name!r}", "Available: " + ", ".join(TOOLS_BY_NAME))
        args = check_arguments(tool.schema, arguments)
        if tool.fn is wait_for_message:
            text, data = tool.fn(b, args, abort)
        else:
            text, data = tool.fn(b, args)
        return text, data, False
    except ToolError as exc:
        return _error(exc)
    except _Aborted:
        return _error(ToolError("the wait was cancelled"))
    except Exception as exc:  # a bug: keep serving, tell the model, leave the traceback in the log
        log.exception("tool %s failed", name)
        return _error(ToolError(f"internal error in {name}: {type(exc).__name__}: {exc}",
                                "This is a bug in thrum; the traceback is in the MCP server's log (stderr)"))


def _error(exc: ToolError) -> tuple[str, dict, bool]:
    err: dict = {"message": exc.message}
    if exc.code is not None:
        err["code"] = exc.code
    if exc.hint:
        err["hint"] = exc.hint
    if exc.data is not None:
        err["data"] = exc.data
    text = f"Error: {exc.message}" + (f"\n{exc.hint}" if exc.hint else "")
    return text, {"error": err}, True


def _instructions(who: str) -> str:
    return (
        "thrum carries messages between the coding agents working on this repository, across sessions and "
        f"worktrees. Through this server you are {who}. Call check_messages when you start and between tasks; "
        "answer with send_message (reply_to = the message_id); call wait_for_message to block until someone "
        "writes to you. Address agents as @name, every agent with a role as @role, a group as @group and "
        "everyone as @everyone; list_agents and list_groups show who is there; search_messages finds earlier "
        "messages by their words.")


# == the MCP glue (the only part that imports the SDK) ==================================================

def _load_sdk():
    """The SDK pieces we use, or None with the reason when the SDK is missing or too old."""
    try:
        import anyio
        import mcp_types
        from mcp.server.lowlevel import Server
        from mcp.server.stdio import stdio_server
    except ImportError as exc:
        try:
            import mcp  # noqa: F401
            why = f" (the installed `mcp` is too old or incomplete: {exc})"
        except ImportError:
            why = ""
        return None, why
    return (anyio, mcp_types, Server, stdio_server), ""


def serve(repo: str | None = None, agent_id: str | None = None, debug: bool = False) -> int:
    """Serve MCP on stdin/stdout until the client closes stdin. Returns the process exit code."""
    sdk, why = _load_sdk()
    if sdk is None:
        sys.stderr.write(SDK_MISSING.format(why=why))
        return 1
    anyio, types, Server, stdio_server = sdk

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("thrum mcp: %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, handlers=[handler])
    log.setLevel(logging.DEBUG if debug else logging.INFO)

    bridge = Bridge(repo, agent_id)
    who, warnings = bridge.startup_notes()
    log.info("thrum %s MCP server acting as %s", __version__, who)
    for w in warnings:
        log.warning("%s (tools will say so until it is fixed)", w)

    sdk_tools = [types.Tool(name=t.name, title=t.title, description=t.description, input_schema=t.schema,
                            annotations=types.ToolAnnotations(**{_camel_to_snake(k): v
                                                                 for k, v in t.annotations.items()}))
                 for t in TOOLS]

    async def on_list_tools(ctx, params):
        return types.ListToolsResult(tools=sdk_tools)

    async def on_call_tool(ctx, params):
        if params.name == "wait_for_message":
            text, data, is_error = await _wait(ctx, params.arguments)
        else:
            text, data, is_error = await anyio.to_thread.run_sync(call_tool, bridge, params.name, params.arguments)
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)], structured_content=data,
                                    is_error=is_error)

    async def _wait(ctx, arguments):
        abort = _Abort()

        async def heartbeat():  # clients that reset their time limit on progress keep waiting
            started = time.monotonic()
            while True:
                await anyio.sleep(HEARTBEAT)
                try:
                    await ctx.session.report_progress(round(time.monotonic() - started), None,
                                                      "waiting for a message")
                except Exception as exc:  # a progress note is a courtesy: never end the wait for it
                    log.debug("progress notification failed: %s", exc)
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(heartbeat)
            try:
                return await anyio.to_thread.run_sync(call_tool, bridge, "wait_for_message", arguments, abort,
                                                      abandon_on_cancel=True)
            finally:
                abort.set()  # cancelled: wake the thread and drop the subscription; done: a no-op
                tg.cancel_scope.cancel()

    server = Server("thrum", version=__version__, title="thrum",
                    description="Messages and coordination between coding agents (git-backed)",
                    instructions=_instructions(who),
                    on_list_tools=on_list_tools, on_call_tool=on_call_tool)

    async def main():
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())

    try:
        anyio.run(main)
    except KeyboardInterrupt:
        return 130
    return 0


def _camel_to_snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)
