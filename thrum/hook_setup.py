"""`thrum setup hooks`: thrum's entries in an agent runtime's project hook configuration.

| runtime     | file                   | events (runtime's names)                                      |
|-------------|------------------------|---------------------------------------------------------------|
| claude-code | .claude/settings.json  | SessionStart, UserPromptSubmit, PostToolUse, Stop, SessionEnd |
| codex       | .codex/hooks.json      | SessionStart, UserPromptSubmit, PostToolUse, Stop             |
|             | + .codex/config.toml   | `[features] hooks = true`                                     |
| gemini      | .gemini/settings.json  | SessionStart, BeforeAgent, AfterTool, AfterAgent, SessionEnd  |
| cursor      | .cursor/hooks.json     | sessionStart, postToolUse, stop, sessionEnd                   |

Each entry runs `thrum hook RUNTIME EVENT [--name NAME]` (see hooks.py); Claude Code also gets
the idle waiter (`thrum hook claude-code wait`, asyncRewake) at SessionStart and Stop. thrum's
entries are recognised by their command, so a second run changes nothing, a changed command
or name replaces them, and `remove` takes out exactly them. Files are edited in place with
jsonedit: the user's own hooks and settings stay byte for byte where they were.
"""

from __future__ import annotations

import os
import re
import shlex

__all__ = ["RUNTIMES", "SetupError", "plan", "apply", "is_thrum_command", "default_command"]

# runtime -> (display name, hook file, format of hook entries)
RUNTIMES = {
    "claude-code": ("Claude Code", ".claude/settings.json", "grouped"),
    "codex": ("Codex", ".codex/hooks.json", "grouped"),
    "gemini": ("Gemini CLI", ".gemini/settings.json", "grouped"),
    "cursor": ("Cursor", ".cursor/hooks.json", "flat"),
}
ALIASES = {"claude": "claude-code"}

HOOK_TIMEOUT = 10          # seconds; a hook is done in well under one
WAITER_TIMEOUT = 86_400    # the idle waiter may wait a day

# runtime -> [(runtime's event name, thrum's event, matcher or None)]
_EVENTS = {
    "claude-code": [("SessionStart", "session-start", None), ("UserPromptSubmit", "prompt", None),
                    ("PostToolUse", "after-tool", "*"), ("Stop", "stop", None), ("SessionEnd", "session-end", None)],
    "codex": [("SessionStart", "session-start", None), ("UserPromptSubmit", "prompt", None),
              ("PostToolUse", "after-tool", "*"), ("Stop", "stop", None)],
    "gemini": [("SessionStart", "session-start", None), ("BeforeAgent", "prompt", None),
               ("AfterTool", "after-tool", "*"), ("AfterAgent", "stop", None), ("SessionEnd", "session-end", None)],
    "cursor": [("sessionStart", "session-start", None), ("postToolUse", "after-tool", None),
               ("stop", "stop", None), ("sessionEnd", "session-end", None)],
}
_WAITER_EVENTS = {"SessionStart", "Stop"}  # Claude Code: where the idle waiter is (re)armed

_OURS = re.compile(r"(?:^|[\s/'\"])thrum(?:\.pyz)?['\"]?\s+hook\s+(?:claude-code|claude|codex|gemini|cursor)\b")

_NEXT_STEPS = {
    "claude-code": ["Start Claude Code in this repository (running sessions pick hooks up after /hooks or a "
                    "restart). As several agents in one worktree, start each as itself: THRUM_NAME=bob claude"],
    "codex": ["Codex runs project hooks only in a trusted project, after you approve them: start `codex` here, "
              "trust the project and approve the hooks when it asks (codex exec: --trust "
              "--dangerously-bypass-hook-trust)",
              "Codex's shell tool starts a login shell: if `thrum` is not on that PATH, run this again with "
              "--command /full/path/to/thrum"],
    "gemini": ["Start Gemini CLI in this repository; it runs project hooks in a trusted folder only (trust it "
               "when asked)"],
    "cursor": ["Restart Cursor (or reload the window); project hooks run in trusted workspaces. Check them in "
               "Cursor Settings > Hooks"],
}


class SetupError(Exception):
    """A file cannot be updated safely; nothing was written."""


def is_thrum_command(command: object) -> bool:
    return isinstance(command, str) and bool(_OURS.search(command))


def default_command() -> str:
    """`thrum` when that is on PATH, else the full command that runs this thrum."""
    import shutil
    import sys

    if shutil.which("thrum"):
        return "thrum"
    argv0 = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if os.path.basename(argv0) == "thrum" and os.access(argv0, os.X_OK):
        return shlex.quote(argv0)
    if argv0.endswith(".pyz"):
        return f"{shlex.quote(sys.executable)} {shlex.quote(argv0)}"
    return f"{shlex.quote(sys.executable)} -m thrum"


def _hook_command(command: str, runtime: str, event: str, name: str) -> str:
    parts = [command, "hook", runtime, event]
    if name:
        parts += ["--name", name]
    return " ".join(parts[:1] + [shlex.quote(p) for p in parts[1:]])


def _entry(runtime: str, command: str, event: str, *, waiter: bool = False) -> dict:
    item = {"type": "command", "command": command}
    if runtime == "gemini":
        item["timeout"] = HOOK_TIMEOUT * 1000  # Gemini CLI counts milliseconds
    elif runtime == "cursor":
        item = {"command": command}
    else:
        item["timeout"] = WAITER_TIMEOUT if waiter else HOOK_TIMEOUT
    if waiter:
        item["asyncRewake"] = True
    return item


def desired(runtime: str, command: str, name: str = "") -> dict[str, list]:
    """{runtime's event name: [what thrum puts in its array]}: one group (or flat entries) per event."""
    out = {}
    for event_name, event, matcher in _EVENTS[runtime]:
        items = [_entry(runtime, _hook_command(command, runtime, event, name), event)]
        if runtime == "claude-code" and event_name in _WAITER_EVENTS:
            items.append(_entry(runtime, _hook_command(command, runtime, "wait", name), "wait", waiter=True))
        if RUNTIMES[runtime][2] == "flat":
            out[event_name] = items
        else:
            group = {"matcher": matcher} if matcher else {}
            group["hooks"] = items
            out[event_name] = [group]
    return out


def _ours_in(item) -> bool:
    return isinstance(item, dict) and is_thrum_command(item.get("command"))


def _group_is_ours(group) -> bool:
    hooks = group.get("hooks") if isinstance(group, dict) else None
    return isinstance(hooks, list) and bool(hooks) and all(_ours_in(h) for h in hooks)


def _remove_ours(doc, runtime: str) -> None:
    """Take thrum's entries out of every event; drop what that leaves empty."""
    hooks = doc.get(("hooks",))
    if not isinstance(hooks, dict):
        return
    flat = RUNTIMES[runtime][2] == "flat"
    for event_name, entries in list(hooks.items()):
        if not isinstance(entries, list):
            continue
        path = ("hooks", event_name)
        if flat:
            removed = doc.remove_array_items(path, _ours_in)
        else:
            removed = doc.remove_array_items(path, _group_is_ours)
            # thrum's hooks inside a group of the user's own: only those items go.
            for i, group in enumerate(doc.get(path) or []):
                if isinstance(group, dict) and isinstance(group.get("hooks"), list) \
                        and any(_ours_in(h) for h in group["hooks"]):
                    removed += doc.remove_array_items(path + (i, "hooks"), _ours_in)
        if removed and doc.get(path) == []:
            doc.remove_member(("hooks",), event_name)
    if doc.get(("hooks",)) == {} and hooks:
        doc.remove_member((), "hooks")


def _read(path: str) -> str | None:
    """A config file's text as it is (\r\n kept), or None when there is none."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise SetupError(f"cannot read {path}: {exc}") from None


def _plan_hook_file(runtime: str, path: str, command: str, name: str, remove: bool) -> dict:
    from thrum.jsonedit import Document, JSONEditError

    text = _read(path)
    if text is None and remove:
        return {"path": path, "action": "unchanged", "text": None, "old": None}
    try:
        doc = Document(text or "", comments=runtime == "gemini")
        if not isinstance(doc.value, dict):
            raise SetupError(f"{path} does not hold a JSON object; it was left unchanged")
        if doc.get(("hooks",)) is not None and not isinstance(doc.get(("hooks",)), dict):
            raise SetupError(f"'hooks' in {path} is not an object; it was left unchanged")
        want = {} if remove else desired(runtime, command, name)
        current = doc.get(("hooks",)) or {}
        if not remove and _already(current, want, runtime):
            return {"path": path, "action": "unchanged", "text": text, "old": text}
        _remove_ours(doc, runtime)
        if text is None and runtime == "cursor":
            doc.set_member((), "version", 1)
        for event_name, entries in want.items():
            for entry in entries:
                doc.append_to_array(("hooks", event_name), entry)
    except JSONEditError as exc:
        raise SetupError(f"{path} is not valid JSON ({exc}); it was left unchanged") from None
    new = doc.text
    if new == (text or ""):
        return {"path": path, "action": "unchanged", "text": text, "old": text}
    action = "remove" if remove else "create" if text is None else "update"
    return {"path": path, "action": action, "text": new, "old": text}


def _already(current: dict, want: dict, runtime: str) -> bool:
    """Whether thrum's entries are exactly `want` already (and nowhere else)."""
    flat = RUNTIMES[runtime][2] == "flat"
    for event_name, entries in current.items():
        if not isinstance(entries, list):
            continue
        ours = [e for e in entries if (_ours_in(e) if flat else _group_is_ours(e))]
        mixed = [] if flat else [g for g in entries if isinstance(g, dict) and not _group_is_ours(g)
                                 and isinstance(g.get("hooks"), list) and any(_ours_in(h) for h in g["hooks"])]
        if mixed or ours != want.get(event_name, []):
            return False
    return all(event_name in current for event_name in want)


# -- Codex: the feature flag in .codex/config.toml -------------------------------------------------------

_FEATURES = re.compile(r"^\s*\[\s*features\s*\]\s*(?:#.*)?$")
_TABLE = re.compile(r"^\s*\[")
_HOOKS_KEY = re.compile(r"^\s*hooks\s*=")


def _plan_codex_config(path: str, remove: bool) -> dict | None:
    """`[features] hooks = true` in the project's config.toml (left alone on remove: other hooks may need it)."""
    import tomllib

    text = _read(path)
    if remove:
        return None
    try:
        data = tomllib.loads(text or "")
    except tomllib.TOMLDecodeError as exc:
        raise SetupError(f"{path} is not valid TOML ({exc}); add `[features]` `hooks = true` by hand") from None
    features = data.get("features")
    if isinstance(features, dict) and features.get("hooks") is True:
        return {"path": path, "action": "unchanged", "text": text, "old": text}
    if isinstance(features, dict) and "hooks" in features:
        raise SetupError(f"{path} sets features.hooks = {features['hooks']!r}; set it to true for thrum's hooks")
    lines = (text or "").splitlines()
    at = next((i for i, line in enumerate(lines) if _FEATURES.match(line)), None)
    if at is None:
        body = (text or "").rstrip("\n")
        new = (body + "\n\n" if body else "") + "[features]\nhooks = true\n"
    else:
        lines.insert(at + 1, "hooks = true")
        new = "\n".join(lines) + "\n"
    check = tomllib.loads(new)
    if check.get("features", {}).get("hooks") is not True:
        raise SetupError(f"cannot add features.hooks to {path} safely; add `[features]` `hooks = true` by hand")
    return {"path": path, "action": "create" if text is None else "update", "text": new, "old": text}


# -- the whole change ---------------------------------------------------------------------------------------

def plan(runtime: str, root: str, command: str, name: str = "", *, remove: bool = False) -> dict:
    """What `setup hooks` would do: {runtime, display, files: [{path, action, text, old}], next: [...]}.

    action: create, update, remove or unchanged. Raises SetupError when a file cannot be edited safely.
    """
    runtime = ALIASES.get(runtime, runtime)
    display, rel, _ = RUNTIMES[runtime]
    files = [_plan_hook_file(runtime, os.path.join(root, rel), command, name, remove)]
    if runtime == "codex":
        extra = _plan_codex_config(os.path.join(root, ".codex", "config.toml"), remove)
        if extra is not None:
            files.append(extra)
    return {"runtime": runtime, "display": display, "files": files,
            "next": [] if remove else list(_NEXT_STEPS[runtime])}


def apply(result: dict) -> None:
    from thrum.identity import atomic_write

    for f in result["files"]:
        if f["action"] == "unchanged":
            continue
        os.makedirs(os.path.dirname(f["path"]), exist_ok=True)
        try:
            mode = os.stat(f["path"]).st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
        atomic_write(f["path"], f["text"].encode("utf-8"), mode)
