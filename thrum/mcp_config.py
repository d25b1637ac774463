"""MCP client configuration: add or update the `thrum` server entry in an agent tool's config file.

Used by `thrum setup mcp`. Each runtime keeps its MCP servers in one file: a JSON object
with `mcpServers` (Claude Code's project `.mcp.json`, Cursor's `.cursor/mcp.json`, Gemini
CLI's `.gemini/settings.json`) or a TOML table `[mcp_servers.<name>]` (Codex's
`~/.codex/config.toml`). Only the `thrum` entry is written: every other key, server and
table stays as it was, keys we do not set in our entry (`env`, timeouts you changed) are
kept, and a file that already says what we would write is not touched. Stdlib only
(`tomllib` reads TOML; the one table we own is written by hand and re-read to verify).
"""

from __future__ import annotations

import json
import os
import re

from thrum import runtimes

__all__ = ["RUNTIMES", "SetupError", "detect", "config_path", "server_entry", "plan", "write"]

SERVER = "thrum"


class SetupError(Exception):
    """The config file cannot be updated safely; `hint` says what to do instead."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


# name: (display name, default file, format, what to do after writing); names as `thrum runtime list`
RUNTIMES = {
    "claude": ("Claude Code", ".mcp.json", "json",
               "Restart Claude Code in this repository and approve the project's 'thrum' server (check with /mcp)."),
    "cursor": ("Cursor", ".cursor/mcp.json", "json",
               "Enable the 'thrum' server in Cursor Settings > Tools & MCP (or restart Cursor)."),
    "gemini": ("Gemini CLI", ".gemini/settings.json", "json",
               "Restart Gemini CLI in this repository (check with /mcp)."),
    "codex": ("OpenAI Codex", "$CODEX_HOME/config.toml", "toml",
              "Restart Codex (check with /mcp). Codex starts the server in the directory you run it from."),
    "auggie": ("Augment (Auggie)", ".augment/settings.json", "json", "Restart Auggie in this repository."),
}

# Markers in the checkout first (what the repository says), then the environment (what runs us).
_MARKERS = (("claude", ".mcp.json"), ("claude", ".claude"), ("claude", "CLAUDE.md"), ("cursor", ".cursor"),
            ("cursor", ".cursorrules"), ("gemini", ".gemini"), ("gemini", "GEMINI.md"), ("codex", ".codex"),
            ("auggie", ".augment"))
_ENV = (("claude", "CLAUDECODE"), ("claude", "CLAUDE_SESSION_ID"), ("cursor", "CURSOR_SESSION"),
        ("cursor", "CURSOR_TRACE_ID"), ("gemini", "GEMINI_CLI"), ("codex", "CODEX_SANDBOX"),
        ("auggie", "AUGMENT_AGENT"))

# How long a tool call may run: wait_for_message may block for up to 600 s, and some clients
# cut tool calls much sooner by default (Codex: 60 s). Set only when the entry has no value.
_TIMEOUT_KEYS = {"codex": ("tool_timeout_sec", 660), "gemini": ("timeout", 660_000)}


def detect(root: str, env: dict | None = None) -> list[dict]:
    """Runtimes whose MCP configuration this checkout or environment points to: [{runtime, evidence}]."""
    return runtimes.detect(root, env, markers=_MARKERS, env_vars=_ENV)


def config_path(runtime: str, root: str, env: dict | None = None) -> str:
    env = os.environ if env is None else env
    if runtime == "codex":
        home = env.get("CODEX_HOME") or os.path.join(os.path.expanduser("~"), ".codex")
        return os.path.join(home, "config.toml")
    return os.path.join(root, RUNTIMES[runtime][1])


def server_entry(runtime: str, command: list[str], agent_id: str = "") -> dict:
    """The keys of our server entry that `setup mcp` owns (others in an existing entry are kept)."""
    args = command[1:] + ["mcp", "serve"] + (["--agent-id", agent_id] if agent_id else [])
    entry = {"command": command[0], "args": args}
    if runtime == "claude":
        entry = {"type": "stdio", **entry}
    return entry


def plan(runtime: str, path: str, entry: dict) -> dict:
    """What writing `entry` to `path` means: {action, text (the new file), old, new (the entries)}.

    action is create (no file), add (file without our entry), update or unchanged.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = None
    except OSError as exc:
        raise SetupError(f"cannot read {path}: {exc.strerror}") from None
    fmt = RUNTIMES[runtime][2]
    update = _plan_toml if fmt == "toml" else _plan_json
    old, new, new_text = update(runtime, path, text or "", entry)
    if text is None:
        action = "create"
    elif old is None:
        action = "add"
    elif old == new:
        action = "unchanged"
    else:
        action = "update"
    return {"action": action, "text": new_text, "old": old, "new": new, "format": fmt}


def write(path: str, text: str) -> None:
    from thrum.identity import atomic_write

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        mode = 0o600 if path.endswith(".toml") else 0o644  # a user config may hold secrets (tokens in env)
    atomic_write(path, text.encode("utf-8"), mode)


def _merged(runtime: str, old, entry: dict) -> dict:
    new = dict(old) if isinstance(old, dict) else {}
    new.update(entry)
    if runtime == "claude" and "type" not in (old or {}):  # keep Claude's usual key order: type first
        new = {"type": new.pop("type"), **new}
    key, value = _TIMEOUT_KEYS.get(runtime, (None, None))
    if key and key not in new:
        new[key] = value
    return new


def _manual(path: str, snippet: str) -> str:
    return f"Add this to {path} by hand:\n{snippet}"


# -- JSON ------------------------------------------------------------------------------------------

def _plan_json(runtime: str, path: str, text: str, entry: dict):
    data: dict = {}
    if text.strip():
        try:
            data = json.loads(text)
        except ValueError as exc:
            snippet = json.dumps({"mcpServers": {SERVER: _merged(runtime, None, entry)}}, indent=2)
            raise SetupError(f"{path} is not valid JSON ({exc}); it was left unchanged",
                             _manual(path, snippet)) from None
        if not isinstance(data, dict):
            raise SetupError(f"{path} does not hold a JSON object; it was left unchanged")
    servers = data.get("mcpServers")
    if servers is None:
        servers = data["mcpServers"] = {}
    if not isinstance(servers, dict):
        raise SetupError(f"'mcpServers' in {path} is not an object; it was left unchanged")
    old = servers.get(SERVER)
    new = _merged(runtime, old, entry)
    servers[SERVER] = new
    return old, new, json.dumps(data, indent=2, ensure_ascii=False) + "\n"


# -- TOML (Codex) ------------------------------------------------------------------------------------

# `[mcp_servers.thrum]` and its sub-tables (`[mcp_servers.thrum.env]`), however the key is quoted.
_OUR_HEADER = re.compile(r"""^\s*\[\s*mcp_servers\s*\.\s*(?:thrum|"thrum"|'thrum')\s*(?:\.[^\]]*)?\]\s*(?:#.*)?$""")
_ANY_HEADER = re.compile(r"^\s*\[")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value == value and value not in (float("inf"), float("-inf")):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list) and not any(isinstance(v, dict) for v in value):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise SetupError(f"cannot write the value {value!r} in TOML")


def _toml_table(name: str, table: dict) -> list[str]:
    lines = [f"[{name}]"]
    subtables = []
    for key, value in table.items():
        if isinstance(value, dict):
            subtables.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in subtables:
        lines += [""] + _toml_table(f"{name}.{_toml_key(key)}", value)
    return lines


def _plan_toml(runtime: str, path: str, text: str, entry: dict):
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SetupError(f"{path} is not valid TOML ({exc}); it was left unchanged",
                         _manual(path, "\n".join(_toml_table(f"mcp_servers.{SERVER}",
                                                             _merged(runtime, None, entry))))) from None
    servers = data.get("mcp_servers") if isinstance(data.get("mcp_servers"), dict) else {}
    old = servers.get(SERVER)
    new = _merged(runtime, old, entry)
    block = _toml_table(f"mcp_servers.{SERVER}", new)
    lines = text.splitlines()
    out: list[str] = []
    insert_at = None
    skipping = False
    skipped: list[str] = []
    for line in lines:
        if _OUR_HEADER.match(line):
            skipping, skipped = True, []
            if insert_at is None:
                insert_at = len(out)
            continue
        if skipping and _ANY_HEADER.match(line):
            skipping = False
            # comments right above the next table belong to it, not to ours
            keep = len(skipped)
            while keep and (not skipped[keep - 1].strip() or skipped[keep - 1].lstrip().startswith("#")):
                keep -= 1
            out += [ln for ln in skipped[keep:] if ln.strip()]
        if skipping:
            skipped.append(line)
        else:
            out.append(line)
    if insert_at is None:
        while out and not out[-1].strip():
            out.pop()
        insert_at = len(out)
        if out:
            block = [""] + block
    else:
        block = block + [""]
    out[insert_at:insert_at] = block
    new_text = "\n".join(out).rstrip("\n") + "\n"
    # Re-read what we would write: our table must say exactly `new`, and nothing else may have moved
    # (a `thrum` entry written as an inline table or with dotted keys is not ours to rewrite).
    try:
        check = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        check = None
    if check is not None and (check.get("mcp_servers", {}).get(SERVER) != new
                              or _without_ours(check) != _without_ours(data)):
        check = None
    if check is None:
        raise SetupError(f"cannot update the 'thrum' entry of {path} safely (it is written in a form this "
                         "command does not edit); the file was left unchanged",
                         _manual(path, "\n".join(_toml_table(f"mcp_servers.{SERVER}", new))))
    return old, new, new_text


def _without_ours(data: dict) -> dict:
    copy = json.loads(json.dumps(data, default=str))  # TOML dates become strings: fine for comparing
    servers = copy.get("mcp_servers")
    if isinstance(servers, dict):
        servers.pop(SERVER, None)
        if not servers:
            copy.pop("mcp_servers")
    return copy
