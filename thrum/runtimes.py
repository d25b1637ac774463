"""Agent runtimes (Claude Code, Codex, Cursor, …): presets, detection, the files `init` writes,
and the thrum section of an agent instructions file (CLAUDE.md, AGENTS.md, …).

CLI-only (the daemon never imports it). Generated files are small and never
replace a file that exists unless the caller forces it; instructions files only
ever get a marked section appended (`INSTRUCTIONS_MARKER`), once.
"""

from __future__ import annotations

import json
import os

__all__ = [
    "PRESETS", "RUNTIME_CHOICES", "INSTRUCTIONS_MARKER", "load_presets", "get_preset", "detect",
    "plan_files", "write_files", "instructions_section", "apply_section", "has_section",
]

INSTRUCTIONS_MARKER = "# Thrum Agent Coordination"

# name: (display name, command, MCP, hooks, instructions file, MCP config, setup notes)
_BUILTIN = {
    "amp": ("Sourcegraph Amp", "amp", False, False, "AGENTS.md", "",
            "Amp reads AGENTS.md: run 'thrum setup claude-md --apply --file AGENTS.md' to add the thrum section."),
    "auggie": ("Augment (Auggie)", "auggie", True, False, ".augment/rules/thrum.md", ".augment/settings.json",
               "'thrum init --runtime auggie' writes the MCP server entry and a rules file."),
    "claude": ("Claude Code", "claude", True, True, "CLAUDE.md", ".claude/settings.json",
               "'thrum init --runtime claude' adds a SessionStart hook that runs scripts/thrum-startup.sh; "
               "'thrum setup claude-md --apply' adds the instructions; 'thrum setup hooks --runtime claude-code' "
               "delivers messages into the session and wakes it when idle."),
    "cli-only": ("CLI only (any agent that can run shell commands)", "thrum", False, False, "", "",
                 "No files needed: agents call the thrum CLI directly ('thrum prime' to start)."),
    "codex": ("OpenAI Codex", "codex", True, True, "AGENTS.md", "~/.codex/config.toml",
              "Run: codex mcp add thrum -- thrum mcp serve; 'thrum setup hooks --runtime codex' delivers "
              "messages into the session."),
    "cursor": ("Cursor", "cursor-agent", True, True, ".cursorrules", ".cursor/mcp.json",
               "Add the MCP server in Settings > Tools & MCP (command: thrum mcp serve); 'thrum setup hooks "
               "--runtime cursor' delivers messages into the session."),
    "gemini": ("Google Gemini CLI", "gemini", True, True, "GEMINI.md", ".gemini/settings.json",
               "'thrum init --runtime gemini' writes .gemini/settings.json with the thrum MCP server; 'thrum setup "
               "hooks --runtime gemini' delivers messages into the session."),
}
PRESETS = {name: {"name": name, "display_name": v[0], "command": v[1], "mcp_supported": v[2],
                  "hooks_supported": v[3], "instructions_file": v[4], "mcp_config_path": v[5],
                  "setup_notes": v[6], "builtin": True} for name, v in _BUILTIN.items()}
RUNTIME_CHOICES = (*sorted(PRESETS), "all")


def _user_presets_file() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "thrum", "runtimes.json")


def load_presets() -> dict[str, dict]:
    """Built-in presets, overridden or extended by `custom_runtimes` in the user's runtimes.json."""
    presets = {k: dict(v) for k, v in PRESETS.items()}
    try:
        with open(_user_presets_file(), encoding="utf-8") as f:
            custom = json.load(f).get("custom_runtimes") or {}
    except (OSError, ValueError, AttributeError):
        custom = {}
    if isinstance(custom, dict):
        for name, spec in custom.items():
            if isinstance(spec, dict) and isinstance(name, str) and name:
                base = presets.get(name, {"name": name, "display_name": name, "command": name,
                                          "mcp_supported": False, "hooks_supported": False,
                                          "instructions_file": "", "mcp_config_path": "", "setup_notes": ""})
                presets[name] = {**base, **{k: v for k, v in spec.items() if k in base}, "name": name,
                                 "builtin": False}
    return presets


def get_preset(name: str) -> dict | None:
    return load_presets().get(name)


# Marker files first (what the repository says), then the environment (what runs us).
_MARKERS = (("claude", ".claude/settings.json"), ("claude", ".claude"), ("codex", ".codex"),
            ("cursor", ".cursorrules"), ("cursor", ".cursor"), ("auggie", ".augment"), ("gemini", ".gemini"))
_ENV = (("claude", "CLAUDE_SESSION_ID"), ("claude", "CLAUDECODE"), ("cursor", "CURSOR_SESSION"),
        ("gemini", "GEMINI_CLI"), ("auggie", "AUGMENT_AGENT"))


def detect(root: str, env: dict | None = None, markers=_MARKERS, env_vars=_ENV) -> list[dict]:
    """Runtimes this checkout or environment points to: [{runtime, evidence}], each runtime once.

    `markers` (runtime, path in the checkout) and `env_vars` (runtime, variable) are tried in order;
    `thrum setup mcp` passes its own lists (the files that hold MCP configuration)."""
    env = os.environ if env is None else env
    found: dict[str, str] = {}
    for runtime, marker in markers:
        if runtime not in found and os.path.exists(os.path.join(root, marker)):
            found[runtime] = f"found {marker}"
    for runtime, var in env_vars:
        if runtime not in found and env.get(var):
            found[runtime] = f"env {var}"
    return [{"runtime": r, "evidence": e} for r, e in found.items()]


# -- generated files ------------------------------------------------------------------------

_STARTUP = """#!/usr/bin/env bash
# Written by 'thrum init': start thrum for an agent session, then print its briefing.
# Usage: scripts/thrum-startup.sh [NAME] [ROLE] [MODULE]  (or THRUM_NAME, THRUM_ROLE, THRUM_MODULE)
set -u
name="${{THRUM_NAME:-${{1:-{name}}}}}"
role="${{THRUM_ROLE:-${{2:-{role}}}}}"
module="${{THRUM_MODULE:-${{3:-{module}}}}}"
thrum daemon status >/dev/null 2>&1 || thrum daemon start >/dev/null || exit 1
if [ -n "$name" ]; then
  thrum quickstart --name "$name" --role "$role" --module "$module" \\
    --intent "${{THRUM_INTENT:-General agent work}}" --quiet >/dev/null || exit 1
fi
exec thrum prime
"""

_CODEX_HOOK = """#!/usr/bin/env bash
# Written by 'thrum init': Codex session start runs the thrum start-up script.
exec bash "$(git rev-parse --show-toplevel)/scripts/thrum-startup.sh" "$@"
"""


def _json(obj: dict) -> str:
    return json.dumps(obj, indent=2) + "\n"


def _mcp_servers() -> dict:
    return {"mcpServers": {"thrum": {"command": "thrum", "args": ["mcp", "serve"]}}}


def _templates(runtime: str, v: dict) -> list[tuple[str, str, int, str]]:
    """[(path, content, mode, template name)] for one runtime."""
    section = instructions_section()
    startup = ("scripts/thrum-startup.sh", _STARTUP.format(**v), 0o755, "startup")
    files = {
        "claude": [(".claude/settings.json", _json({"hooks": {"SessionStart": [{"hooks": [
            {"type": "command", "command": "bash scripts/thrum-startup.sh"}]}]}}), 0o644, "claude-settings")],
        "codex": [(".codex/hooks/session-start", _CODEX_HOOK, 0o755, "codex-hook"),
                  ("AGENTS.md", section, 0o644, "instructions")],
        "cursor": [(".cursorrules", section, 0o644, "instructions")],
        "gemini": [(".gemini/settings.json", _json(_mcp_servers()), 0o644, "gemini-settings"),
                   ("GEMINI.md", section, 0o644, "instructions")],
        "auggie": [(".augment/settings.json", _json(_mcp_servers()), 0o644, "augment-settings"),
                   (".augment/rules/thrum.md", section, 0o644, "instructions")],
        "amp": [("AGENTS.md", section, 0o644, "instructions")],
        "cli-only": [],
    }.get(runtime, [])
    return files + [startup] if runtime != "cli-only" else files


def plan_files(root: str, runtime: str, *, force: bool = False, name: str = "", role: str = "implementer",
               module: str = "main") -> list[dict]:
    """What `write_files` would do: [{path, action: create|overwrite|skip, runtime, template, ...}]."""
    runtimes = [r for r in sorted(PRESETS) if r != "cli-only"] if runtime == "all" else [runtime]
    values = {"name": name, "role": role or "implementer", "module": module or "main"}
    plan: dict[str, dict] = {}
    for r in runtimes:
        for rel, content, mode, template in _templates(r, values):
            if rel in plan:
                continue
            exists = os.path.exists(os.path.join(root, rel))
            item = {"path": rel, "action": "overwrite" if exists else "create", "runtime": r,
                    "template": template, "content": content, "mode": mode}
            if exists and not force:
                item.update(action="skip", skipped=True, skip_reason="file exists (use --force to overwrite)")
                if template == "instructions" and not has_section(os.path.join(root, rel)):
                    item["skip_reason"] = (f"file exists (add the thrum section with: thrum setup claude-md "
                                           f"--apply --file {rel})")
            plan[rel] = item
    return list(plan.values())


def write_files(root: str, plan: list[dict]) -> None:
    from thrum.identity import atomic_write

    for item in plan:
        if item["action"] == "skip":
            continue
        path = os.path.join(root, item["path"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, item["content"].encode(), item["mode"])


# -- the instructions section ------------------------------------------------------------------

def instructions_section() -> str:
    return f"""{INSTRUCTIONS_MARKER}

Several agents work in this repository at once. thrum lets them message each other and
see who is changing what. Run these commands from your checkout (any worktree works).

## When you start (and after a restart or a context compaction)

- `thrum prime`: your identity, your team, unread messages, your branch and files, your saved notes.
- New here? `thrum quickstart --name <name> --role <role> --module <area> --intent "<what you will do>"`.

## While you work

- Before editing a shared file: `thrum who-has <file>`. If someone else holds it, message them first.
- Keep your status honest: `thrum session set-intent "<what you are doing>"` and `thrum session set-task "<task>"`.
- `thrum session heartbeat` every so often: it refreshes your branch and changed files for the others.
- `thrum team` shows what everyone is doing; `thrum ping @name` checks on one agent.

## Messages

- `thrum inbox --unread` at natural breaks; answer with `thrum reply <message-id> "<text>"`.
- `thrum send "<text>" --to @name` (an agent), `@role` (everyone with that role) or `@everyone`.
- Use `--priority high` only when the other agent should stop what it is doing.
- `thrum wait --timeout 10m` blocks until a message for you arrives.

## Before you stop

- `thrum context save --file <notes.md>` (or pipe text in): what is done, what is next, open questions.
- `thrum session end`.
"""


def has_section(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return any(line.strip() == INSTRUCTIONS_MARKER for line in f)
    except OSError:
        return False


def apply_section(text: str, section: str, *, force: bool) -> tuple[str, str]:
    """New file text and what happened: "appended", "replaced" or "skipped".

    Without force an existing section is left alone. With force it is replaced, from
    the marker line to the next top-level heading or `---` line.
    """
    lines = text.splitlines()
    at = next((i for i, line in enumerate(lines) if line.strip() == INSTRUCTIONS_MARKER), None)
    if at is None:
        body = text.rstrip()
        return (body + "\n\n---\n\n" if body else "") + section.rstrip() + "\n", "appended"
    if not force:
        return text, "skipped"
    end = next((j for j in range(at + 1, len(lines))
                if lines[j].startswith("# ") or lines[j].strip() == "---"), len(lines))
    before = "\n".join(lines[:at]).rstrip()
    after = "\n".join(lines[end:]).strip()
    out = (before + "\n\n" if before else "") + section.rstrip() + "\n"
    if after:
        out += "\n" + after + "\n"
    return out, "replaced"
