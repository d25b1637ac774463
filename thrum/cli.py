"""The `thrum` command: argparse front end and thin client of the daemon.

Agents run this hundreds of times a day, so start-up matters: only argparse, json,
os and sys are imported at the top, only the sub-parser of the command being run
is built, and each handler imports what it needs. Output is human text, or with
`--json` one JSON document on stdout (errors too: `{"error": {...}}`).

Exit codes: 0 success, 1 failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from thrum import __version__

__all__ = ["main", "CliError"]


class CliError(Exception):
    """A failure to report to the user: one line, an optional hint, an exit code."""

    def __init__(self, message: str, hint: str = "", code: int = 1, rpc_code: int | None = None,
                 data: object = None) -> None:
        super().__init__(message)
        self.message, self.hint, self.code, self.rpc_code, self.data = message, hint, code, rpc_code, data


class UsageError(CliError):
    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message, hint, code=2)


# -- small helpers -------------------------------------------------------------------

def parse_duration(text: str) -> float:
    """Go-style durations: 500ms, 30s, 5m, 1h30m, or a bare number of seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    total, num, i, sign = 0.0, "", 0, 1.0
    if text[:1] in "+-":
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if not text:
        raise ValueError("empty duration")
    while i < len(text):
        c = text[i]
        if c.isdigit() or c == ".":
            num += c
            i += 1
            continue
        unit = "ms" if text.startswith("ms", i) else c
        if unit not in units or not num:
            raise ValueError(f"invalid duration {text!r}")
        total += float(num) * units[unit]
        num = ""
        i += len(unit)
    if num:
        raise ValueError(f"missing unit in duration {text!r}")
    return sign * total


def split_pairs(values: list[str] | None, what: str) -> list[dict]:
    """`type:value` flags (repeatable, comma-separated) -> [{type, value}]."""
    out = []
    for raw in values or []:
        for item in raw.split(","):
            item = item.strip()
            if not item:
                continue
            if ":" not in item or item.startswith(":") or item.endswith(":"):
                raise UsageError(f"invalid {what}: {what} must be in 'type:value' format, got: {item}")
            t, v = item.split(":", 1)
            out.append({"type": t, "value": v})
    return out


def split_list(values: list[str] | None) -> list[str]:
    return [v.strip() for raw in values or [] for v in raw.split(",") if v.strip()]


def ago(timestamp: str) -> str:
    if not timestamp:
        return "never"
    from thrum.events import ago as _ago

    return _ago(timestamp)


def duration_text(ms: int) -> str:
    secs = max(0, int(ms // 1000))
    if secs < 60:
        return f"{secs}s"
    if secs < 3600:
        return f"{secs // 60}m"
    if secs < 86400:
        return f"{secs // 3600}h{(secs % 3600) // 60:02d}m"
    return f"{secs // 86400}d{(secs % 86400) // 3600}h"


def local_time(timestamp: str) -> str:
    import time

    from thrum.events import EventError, parse_timestamp_ns

    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(parse_timestamp_ns(timestamp) / 1e9))
    except EventError:
        return timestamp


def tty() -> bool:
    return sys.stderr.isatty()


# -- the per-invocation context --------------------------------------------------------

class Ctx:
    """What a command needs, computed lazily: paths, identity, a daemon connection."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json = bool(getattr(args, "json", False))
        self.quiet = bool(getattr(args, "quiet", False))
        self._paths = None
        self._client = None

    # output

    def emit(self, data, human=None) -> None:
        """Print `data` as JSON under --json, else the human lines (a list or a callable)."""
        if self.json:
            print(json.dumps(data, indent=2, ensure_ascii=False))
            return
        lines = human(data) if callable(human) else human
        if lines and self.quiet:  # --quiet keeps results, drops confirmations, details and tips
            lines = [ln for ln in lines if not ln.startswith(("✓", "  ", "Next:", "Tip:")) and ln]
        if lines:
            print("\n".join(lines))

    def note(self, text: str) -> None:
        """A ✓ line or tip: hidden by --quiet and --json."""
        if not self.quiet and not self.json:
            print(text)

    def warn(self, text: str) -> None:
        print(text, file=sys.stderr)

    # paths and identity

    @property
    def paths(self):
        if self._paths is None:
            from thrum.paths import NotInitialized, RedirectError, resolve

            try:
                self._paths = resolve(self.args.repo)
            except NotInitialized as exc:
                from thrum.paths import find_git_toplevel

                top = find_git_toplevel(str(exc))
                linked = top is not None and os.path.isfile(os.path.join(top, ".git"))
                raise CliError(f"thrum is not initialized in {exc}",
                               "This is a git worktree: run 'thrum init' here to use the main checkout's daemon"
                               if linked else "Run 'thrum init' in the repository first") from None
            except RedirectError as exc:
                raise CliError(str(exc), "Run 'thrum setup --main-repo <path>' to repair the redirect") from None
        return self._paths

    def worktree_name(self) -> str:
        from thrum.paths import find_git_toplevel

        top = find_git_toplevel(self.paths.repo)
        return os.path.basename(top or self.paths.repo)

    def identity(self):
        from thrum.identity import IdentityError, InvalidName, resolve_identity

        try:
            ident = resolve_identity(self.paths.identities, getattr(self.args, "name", None),
                                     worktree=self.worktree_name())
        except InvalidName as exc:
            raise CliError(f"invalid agent name: {exc}") from None
        except IdentityError as exc:
            raise CliError(f"failed to resolve agent identity: {exc}", exc.hint) from None
        role = getattr(self.args, "role", None)
        module = getattr(self.args, "module", None)
        if role:
            ident.role = role
        if module:
            ident.module = module
        return ident

    # daemon

    def client(self):
        if self._client is None:
            from thrum.rpc import Client, DaemonUnavailable

            try:
                self._client = Client(self.paths.socket, timeout=float(os.environ.get("THRUM_RPC_TIMEOUT", 30)))
                self._client.connect()
            except DaemonUnavailable as exc:
                self._client = None
                raise _foreign_owner_error(self.paths.var) or CliError(
                    f"the thrum daemon is not running for this repository ({exc})",
                    "Start it with: thrum daemon start") from None
        return self._client

    def call(self, method: str, params: dict | None = None) -> dict:
        from thrum.rpc import DaemonUnavailable, RPCError

        try:
            return self.client().call(method, params or {})
        except RPCError as exc:
            raise CliError(exc.message, code=1, rpc_code=exc.code, data=exc.data) from None
        except DaemonUnavailable as exc:
            raise _foreign_owner_error(self.paths.var) or CliError(
                str(exc), "Check the daemon with: thrum daemon status") from None

    def caller(self, params: dict | None = None, ident=None) -> dict:
        ident = ident or self.identity()
        out = dict(params or {})
        out["caller_agent_id"] = ident.name
        return out

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


# -- argument parsing ---------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2 on usage errors; keep that, but in our format
        raise UsageError(message, f"See: {self.prog} --help")


def _common_flags(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Global flags, accepted before or after the subcommand."""
    d = argparse.SUPPRESS if suppress else None
    parser.add_argument("--repo", default=d, help="repository root (default: nearest directory with .thrum/)")
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS if suppress else False,
                        help="machine-readable output")
    parser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS if suppress else False,
                        help="only essential output")
    parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS if suppress else False,
                        help=argparse.SUPPRESS)
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS if suppress else False,
                        help="show tracebacks")
    parser.add_argument("--role", default=d, help="override the identity's role")
    parser.add_argument("--module", default=d, help="override the identity's module")


class Commands:
    """Builds sub-parsers on demand: only the command being run pays for its parser."""

    def __init__(self, subparsers, common: argparse.ArgumentParser) -> None:
        self.sub = subparsers
        self.common = common

    def add(self, sub, name: str, help: str, func=None, aliases=(), **kw) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, aliases=list(aliases), parents=[self.common],
                           **kw)
        if func is not None:
            p.set_defaults(func=func)
        return p

    def group(self, name: str, help: str, aliases=()) -> argparse._SubParsersAction:
        p = self.add(self.sub, name, help, aliases=aliases)
        p.set_defaults(func=lambda ctx: _print_help(p))
        return p.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


# Top-level command name -> (module-level setup function name, aliases). A setup
# function receives a Commands and registers its parser(s).
COMMAND_TABLE: dict[str, tuple[str, tuple[str, ...]]] = {}


def command(name: str, *aliases: str):
    def register(fn):
        COMMAND_TABLE[name] = (fn.__name__, aliases)
        return fn
    return register


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    _common_flags(common, suppress=True)
    parser = Parser(prog="thrum", description="Git-backed messaging and coordination for AI coding agents.",
                    epilog="Run 'thrum COMMAND --help' for a command's options.")
    _common_flags(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"thrum {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    cmds = Commands(sub, common)
    module = sys.modules[__name__]
    for name, (setup, _) in COMMAND_TABLE.items():
        if only is None or name == only:
            getattr(module, setup)(cmds)
    parser.set_defaults(func=lambda ctx: _print_help(parser))
    return parser


_VALUE_FLAGS = {"--repo", "--role", "--module", "--name"}


def _command_of(argv: list[str]) -> str | None:
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return None
        if token.startswith("-"):
            i += 2 if token in _VALUE_FLAGS else 1
            continue
        for name, (_, aliases) in COMMAND_TABLE.items():
            if token == name or token in aliases:
                return name
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    want_json = "--json" in argv
    debug = "--debug" in argv
    ctx = None
    try:
        parser = build_parser(_command_of(argv))
        args = parser.parse_args(argv)
        ctx = Ctx(args)
        result = args.func(ctx)
        return int(result or 0)
    except CliError as exc:
        _report(exc, want_json)
        return exc.code
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except PermissionError as exc:  # most often: thrum's files here belong to another user
        _report(_foreign_owner_error(exc.filename) or CliError(f"permission denied: {exc.filename or exc}"),
                want_json)
        return 1
    except Exception as exc:  # a bug: one line for users, the traceback with --debug
        if debug:
            raise
        _report(CliError(f"unexpected error: {type(exc).__name__}: {exc}",
                         "Re-run with --debug for a traceback"), want_json)
        return 1
    finally:
        if ctx is not None:
            ctx.close()


def _foreign_owner_error(path) -> CliError | None:
    """An error naming the owner when `path` belongs to another user (the daemon serves only its own uid)."""
    for _ in range(64):  # up to the nearest directory we may look into: the one that keeps us out
        try:
            owner = os.stat(path).st_uid if path else os.geteuid()
            break
        except PermissionError:
            path = os.path.dirname(os.fsdecode(path))
        except (OSError, TypeError, ValueError):
            return None
    else:
        return None
    if owner == os.geteuid():
        return None
    return CliError(f"permission denied: thrum's files and daemon here ({path}) belong to uid {owner}, "
                    f"and you are uid {os.geteuid()}; a thrum daemon serves only its own user",
                    "Run thrum as that user, or in a repository of your own")


def _report(exc: CliError, want_json: bool) -> None:
    if want_json:
        err = {"message": exc.message, "exit_code": exc.code}
        if exc.rpc_code is not None:
            err["code"] = exc.rpc_code
        if exc.hint:
            err["hint"] = exc.hint
        if exc.data is not None:
            err["data"] = exc.data
        print(json.dumps({"error": err}, indent=2, ensure_ascii=False))
        return
    print(f"Error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"  {exc.hint}", file=sys.stderr)


# == commands ===============================================================================

# -- init, daemon, migrate, version, config -----------------------------------------------------

@command("init")
def _setup_init(c: Commands) -> None:
    p = c.add(c.sub, "init", "Set up thrum in this git repository (the .thrum/ dir and the a-sync branch)",
              cmd_init)
    p.add_argument("--force", action="store_true", help="repair an existing setup; overwrite runtime files")
    p.add_argument("--dry-run", action="store_true", help="show what would be done")
    p.add_argument("--runtime", default="", help="agent runtime whose files to write: claude, codex, cursor, "
                   "gemini, auggie, amp, cli-only or all (default: the configured one, else detected)")
    p.add_argument("--agent-name", default="", help="default agent name for scripts/thrum-startup.sh")
    p.add_argument("--agent-role", default="", help="default role for scripts/thrum-startup.sh")
    p.add_argument("--agent-module", default="", help="default module for scripts/thrum-startup.sh")
    _hooks_flags(p)


def _hooks_flags(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--hooks", dest="hooks", action="store_true", default=None,
                   help="also set up the runtime's hooks, so messages reach the agent on their own "
                        "(thrum setup hooks; asked on a terminal when neither flag is given)")
    g.add_argument("--no-hooks", dest="hooks", action="store_false", help="do not set up or suggest hooks")


def _offer_hooks(ctx: Ctx, root: str, runtime: str, *, ask: bool, dry_run: bool = False) -> dict | None:
    """Set up (or suggest) `thrum setup hooks` for a runtime that has hooks: --hooks does it, a terminal
    is asked, elsewhere the command is suggested. None when there is nothing to offer."""
    from thrum import hook_setup

    target = hook_setup.ALIASES.get(runtime, runtime)
    want = getattr(ctx.args, "hooks", None)
    if target not in hook_setup.RUNTIMES or want is False:
        return None
    command = hook_setup.default_command()
    try:
        plan = hook_setup.plan(target, root, command)
    except hook_setup.SetupError as exc:
        return {"runtime": target, "error": str(exc)}
    suggestion = f"thrum setup hooks --runtime {target}"
    if all(f["action"] == "unchanged" for f in plan["files"]):
        return {"runtime": target, "action": "unchanged"}
    if want is None and ask and not dry_run and sys.stdin.isatty() and not ctx.json and not ctx.quiet:
        answer = input(f"Set up {plan['display']} hooks so messages reach the agent on their own? [Y/n] ")
        want = answer.strip().lower() in ("", "y", "yes")
    if not want or dry_run:
        return {"runtime": target, "action": "suggested", "command": suggestion}
    try:
        hook_setup.apply(plan)
    except OSError as exc:
        return {"runtime": target, "error": f"cannot write {exc.filename or ''}: {exc.strerror or exc}"}
    return {"runtime": target, "action": "set up",
            "files": [os.path.relpath(f["path"], root) for f in plan["files"] if f["action"] != "unchanged"],
            "next": plan["next"]}


def _hooks_lines(h: dict | None) -> list[str]:
    if not h:
        return []
    if h.get("error"):
        return [f"  Hooks not set up: {h['error']}"]
    if h["action"] == "suggested":
        return [f"Tip: {h['command']}   (messages then reach the agent on their own)"]
    if h["action"] == "set up":
        return [f"✓ Hooks set up: {', '.join(h['files'])}"] + [f"  Next: {n}" for n in h["next"]]
    return []


def cmd_init(ctx: Ctx) -> int:
    from thrum import initialize

    repo = os.path.abspath(ctx.args.repo or os.getcwd())
    a = ctx.args
    try:
        result = initialize.init_repo(repo, force=a.force, dry_run=a.dry_run)
    except initialize.InitError as exc:
        raise CliError(str(exc), exc.hint) from None
    if not result.get("worktree") or a.runtime:
        root = result["repository"]
        ctx._paths = None if a.dry_run else _paths_at(root)
        runtime, detected, how = _choose_runtime(ctx, root, a.runtime, prompt=True)
        if ctx._paths is not None and not result.get("worktree") and how != "none":
            _save_runtime(ctx, runtime)  # a fallback is not a choice: detection runs again next time
        part = _runtime_files(ctx, root, runtime, force=a.force, dry_run=a.dry_run, name=a.agent_name,
                              role=a.agent_role, module=a.agent_module)
        result["runtime_init"] = {**part, "detected": detected, "source": how}
        hooks = _offer_hooks(ctx, root, runtime, ask=True, dry_run=a.dry_run)
        if hooks:
            result["hooks"] = hooks

    def human(r):
        lines = _init_lines(r)
        rt = r.get("runtime_init")
        if rt:
            how = {"flag": "Using", "config": "Using configured", "detected": "Auto-detected",
                   "chosen": "Using", "none": "No AI runtimes detected, using"}[rt["source"]]
            lines += ["", f"✓ {how} runtime: {rt['runtime']}"]
            if rt["files"]:
                lines += [""] + _runtime_file_lines(rt)
        lines += _hooks_lines(r.get("hooks"))
        if not r.get("dry_run") and not r.get("worktree"):
            lines += ["", "Done. Run 'thrum daemon start' to begin coordination."]
        return lines
    ctx.emit(result, human)
    return 0


def _paths_at(root: str):
    from thrum.paths import resolve

    return resolve(root, walk=False)


def _init_lines(r: dict) -> list[str]:
    if r.get("dry_run"):
        return ["Dry run: would initialize thrum in " + r["repository"]] + [f"  {a}" for a in r["actions"]]
    if r.get("worktree"):
        return ["✓ Worktree detected — set up redirect to main repo", f"  Main repo: {r['main_repo']}",
                f"  Redirect: .thrum/redirect → {r['main_repo']}/.thrum",
                "  Created: .thrum/identities/ (local to this worktree)"]
    head = "✓ Thrum already initialized" if r["already"] else "✓ Thrum initialized successfully"
    return [head, f"  Repository: {r['repository']}"] + [f"  {a}" for a in r["actions"]]


@command("daemon")
def _setup_daemon(c: Commands) -> None:
    g = c.group("daemon", "Start, stop and inspect the per-repository daemon")
    p = c.add(g, "start", "Start the daemon in the background (or --foreground)", cmd_daemon_start)
    p.add_argument("--foreground", action="store_true", help="run in this terminal until interrupted")
    p.add_argument("--local", action="store_true", help="local-only mode: never push or fetch")
    c.add(g, "stop", "Stop the daemon", cmd_daemon_stop)
    c.add(g, "status", "Show whether the daemon is running", cmd_daemon_status)
    p = c.add(g, "restart", "Stop, then start the daemon", cmd_daemon_restart)
    p.add_argument("--local", action="store_true", help="local-only mode: never push or fetch")
    p = c.add(g, "run", "Run the daemon in the foreground (used by 'start')", cmd_daemon_run)
    p.add_argument("--local", action="store_true", help=argparse.SUPPRESS)


def _persist_local(ctx: Ctx) -> None:
    if getattr(ctx.args, "local", False):
        from thrum.config import load_config, save_config

        data = load_config(ctx.paths.config)
        daemon = data.setdefault("daemon", {}) if isinstance(data.get("daemon"), dict) else data.setdefault(
            "daemon", {})
        daemon["local_only"] = True
        save_config(ctx.paths.config, data)


def cmd_daemon_start(ctx: Ctx) -> int:
    if ctx.args.foreground:
        return cmd_daemon_run(ctx)
    from thrum.daemon import StartError, start_background

    _persist_local(ctx)
    try:
        info = start_background(ctx.paths)
    except StartError as exc:
        raise CliError(str(exc)) from None
    ctx.emit({"status": "running", "pid": info["pid"], "socket": ctx.paths.socket, "log": ctx.paths.log},
             [f"✓ Daemon started successfully (PID {info['pid']})"])
    return 0


def cmd_daemon_run(ctx: Ctx) -> int:
    from thrum.daemon import run_daemon

    _persist_local(ctx)
    return run_daemon(ctx.paths, foreground=True)


def cmd_daemon_stop(ctx: Ctx) -> int:
    from thrum.daemon import StartError, stop_daemon

    try:
        info = stop_daemon(ctx.paths)
    except StartError as exc:
        raise CliError(str(exc)) from None
    ctx.emit({"status": "stopped", "pid": info["pid"]}, ["✓ Daemon stopped successfully"])
    return 0


def cmd_daemon_status(ctx: Ctx) -> int:
    from thrum.daemon import daemon_status

    st = daemon_status(ctx.paths)

    def human(s):
        if not s["running"]:
            return ["Daemon:   not running", "  Start it with: thrum daemon start"]
        lines = [f"Daemon:   {s['status']} (PID {s.get('pid')})"]
        if s.get("uptime_ms") is not None:
            lines.append(f"Uptime:   {duration_text(s['uptime_ms'])}")
            lines.append(f"Version:  {s.get('version')}")
            lines.append(f"Sync:     {s.get('sync_state')}")
        if s.get("error"):
            lines.append(f"Error:    {s['error']}")
        lines.append(f"Socket:   {s['socket']}")
        lines.append(f"Log:      {s['log']}")
        return lines
    ctx.emit(st, human)
    return 0 if st["running"] and st["status"] == "running" else 1


def cmd_daemon_restart(ctx: Ctx) -> int:
    from thrum.daemon import StartError, lock_is_held, start_background, stop_daemon

    try:
        if lock_is_held(ctx.paths):
            stop_daemon(ctx.paths)
        _persist_local(ctx)
        info = start_background(ctx.paths)
    except StartError as exc:
        raise CliError(str(exc)) from None
    ctx.emit({"status": "running", "pid": info["pid"]}, [f"✓ Daemon restarted successfully (PID {info['pid']})"])
    return 0


@command("migrate")
def _setup_migrate(c: Commands) -> None:
    p = c.add(c.sub, "migrate", "Import a Go-written .thrum/ (or older layouts) and rebuild the database",
              cmd_migrate)
    p.add_argument("--rebuild", action="store_true", help="only rebuild the database from the JSONL log")


def cmd_migrate(ctx: Ctx) -> int:
    from thrum import migrate

    progress = migrate.terminal_progress if (tty() and not ctx.json) else None
    try:
        result = migrate.run(ctx.paths, rebuild_only=ctx.args.rebuild, progress=progress)
    except migrate.MigrateError as exc:
        raise CliError(str(exc), exc.hint) from None

    def human(r):
        lines = []
        if r.get("imported") is not None:
            if r["imported"] or r.get("reads"):
                lines.append("✓ Migration complete:")
                lines.append(f"  Imported events: {r['imported']} (skipped as already present: {r['skipped']})")
                if r.get("reads"):
                    lines.append(f"  Read markers imported from the Go database: {r['reads']}")
                for src in r.get("sources", []):
                    lines.append(f"  From: {src}")
            else:
                lines.append("No migration needed.")
        lines.append(f"✓ Database rebuilt from the log: {r['events']} events, {r['messages']} messages, "
                     f"{r['agents']} agents ({r['seconds']:.2f}s)")
        if r.get("bad_lines"):
            lines.append(f"  Unparseable lines kept in the log and skipped: {r['bad_lines']}")
        if r.get("search_not_indexed"):
            lines.append(f"  Search index: the daemon builds it in the background when it runs "
                         f"({r['search_not_indexed']:,} messages; searches say what they could not search yet)")
        return lines
    ctx.emit(result, human)
    return 0


@command("backup")
def _setup_backup(c: Commands) -> None:
    p = c.add(c.sub, "backup", "Back up the log, identities, context notes and config into one archive "
              "(or: backup verify FILE, backup restore FILE)", cmd_backup)
    p.add_argument("--to", metavar="DIR", help="where to write the archive (default: .thrum/backups/)")
    p.add_argument("--keep", type=int, metavar="N", help="keep only the newest N archives of this repository there")
    sub = p.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    v = c.add(sub, "verify", "Check an archive completely (structure, manifest, checksums)", cmd_backup_verify)
    v.add_argument("file", metavar="FILE")
    r = c.add(sub, "restore", "Restore an archive into this repository (daemon stopped), then rebuild",
              cmd_backup_restore)
    r.add_argument("file", metavar="FILE")
    r.add_argument("--force", action="store_true",
                   help="restore even over existing thrum data (it is saved as a backup first)")


def _backup_progress(ctx: Ctx):
    from thrum.backup import terminal_progress

    return terminal_progress() if (tty() and not ctx.json) else None


def _backup_error(exc) -> CliError:
    return CliError(str(exc), exc.hint, data={"kind": exc.kind})


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB" if n >= 1048576 else f"{n / 1024:.1f} KiB"


def cmd_backup(ctx: Ctx) -> int:
    from thrum import backup

    if ctx.args.keep is not None and ctx.args.keep < 1:
        raise UsageError("--keep must be at least 1")
    try:
        result = backup.create(ctx.paths, dest=ctx.args.to, keep=ctx.args.keep, progress=_backup_progress(ctx))
    except backup.BackupError as exc:
        raise _backup_error(exc) from None

    def human(r):
        lines = [f"✓ Backup written: {r['archive']} ({_mib(r['bytes'])})",
                 f"  Log: {r['events']} events in {r['log_files']} files; identities: {r['identities']}; "
                 f"context notes: {r['context_notes']}; config: {'yes' if r['config'] else 'no'}"]
        lines += [f"  Pruned: {path}" for path in r["pruned"]]
        return lines
    ctx.emit(result, human)
    return 0


def cmd_backup_verify(ctx: Ctx) -> int:
    from thrum import backup

    try:
        result = backup.verify(ctx.args.file, progress=_backup_progress(ctx))
    except backup.BackupError as exc:
        raise _backup_error(exc) from None
    ctx.emit(result, [f"✓ {result['archive']} is a complete thrum backup",
                      f"  Made {result['created_at']} by thrum {result['thrum_version']} in {result['repo_id']}: "
                      f"{result['events']} events, {result['identities']} identities, "
                      f"{result['context_notes']} context notes ({result['files']} files, "
                      f"{_mib(result['data_bytes'])})"])
    return 0


def cmd_backup_restore(ctx: Ctx) -> int:
    from thrum import backup

    try:
        result = backup.restore(ctx.args.file, ctx.args.repo or os.getcwd(), force=ctx.args.force,
                                progress=_backup_progress(ctx))
    except backup.BackupError as exc:
        raise _backup_error(exc) from None

    def human(r):
        lines = [f"✓ Restored {r['archive']} into {r['repository']}"]
        if r["saved_backup"]:
            lines.append(f"  The state before the restore is saved in: {r['saved_backup']}")
        lines.append(f"  Log: {r['events_added']} events added ({r['events_present']} already present)")
        written = r["files_written"]
        if written:
            counts = [f"{sum(1 for f in written if f'/{d}/' in f)} {what}"
                      for d, what in (("identities", "identities"), ("context", "context notes"))]
            lines.append(f"  Written: {', '.join(counts)}" + (", config.json" if any(
                f.endswith("config.json") for f in written) else ""))
        b = r["rebuilt"]
        lines.append(f"  Database rebuilt: {b['events']} events, {b['messages']} messages, {b['agents']} agents")
        lines.append("Next: thrum daemon start")
        return lines
    ctx.emit(result, human)
    return 0


@command("version")
def _setup_version(c: Commands) -> None:
    c.add(c.sub, "version", "Show the thrum version", cmd_version)


def cmd_version(ctx: Ctx) -> int:
    import platform

    from thrum import DISTRIBUTION, ORIGINAL_PROJECT_URL

    # repo_url is this program's own source, which only the installed metadata can name; it is null
    # rather than borrowed from the Go project, which is reported as what it is.
    data = {"version": __version__, "build": "python", "python_version": platform.python_version(),
            "distribution": DISTRIBUTION, "repo_url": _own_project_url(DISTRIBUTION),
            "original_project_url": ORIGINAL_PROJECT_URL}
    ctx.emit(data, [f"thrum v{__version__} (python {data['python_version']})"])
    return 0


def _own_project_url(distribution: str) -> str | None:
    from importlib import metadata

    try:
        meta = metadata.metadata(distribution)
    except metadata.PackageNotFoundError:  # a checkout or a zipapp: no metadata, no claim
        return None
    for entry in meta.get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip().lower() in ("source", "repository", "homepage") and url.strip():
            return url.strip()
    return meta.get("Home-page") or None


@command("config")
def _setup_config(c: Commands) -> None:
    g = c.group("config", "Show the effective configuration")
    c.add(g, "show", "Show configuration values and where each comes from", cmd_config_show)


def cmd_config_show(ctx: Ctx) -> int:
    from thrum.config import load_settings
    from thrum.daemon import daemon_status

    paths = ctx.paths
    s = load_settings(paths.config)
    st = daemon_status(paths)
    overrides = [{"env_var": k, "value": os.environ[k]} for k in (
        "THRUM_NAME", "THRUM_ROLE", "THRUM_MODULE", "THRUM_SOCKET", "THRUM_WS_PORT", "THRUM_LOCAL",
        "THRUM_SYNC_INTERVAL", "THRUM_SYNC_DEBOUNCE", "THRUM_SYNC_PROBE_INTERVAL", "THRUM_SYNC_ACTIVE_WINDOW",
        "THRUM_HOSTNAME") if os.environ.get(k)]
    data = {"config_file": paths.config,
            "runtime": {"primary": s.runtime or "cli-only", "source": "config.json" if s.runtime else "default"},
            "daemon": {"local_only": {"value": s.local_only, "source": s.local_only_source},
                       "sync_interval": {"value": s.sync_interval, "source": s.sync_interval_source},
                       "ws_port": {"value": s.ws_port, "source": s.ws_port_source},
                       "status": st["status"], "socket": paths.socket}}
    if st.get("pid"):
        data["daemon"]["pid"] = st["pid"]
    try:
        ident = ctx.identity()
        data["identity"] = {"agent_id": ident.name, "role": ident.role, "module": ident.module,
                            "file": ident.path}
    except CliError:
        pass
    if overrides:
        data["overrides"] = overrides

    def human(d):
        dm = d["daemon"]
        lines = ["Thrum Configuration", f"  Config file: {d['config_file']}", "", "Runtime",
                 f"  Primary: {d['runtime']['primary']} ({d['runtime']['source']})", "", "Daemon",
                 f"  Local-only:    {dm['local_only']['value']} ({dm['local_only']['source']})",
                 f"  Sync interval: {dm['sync_interval']['value']}s ({dm['sync_interval']['source']})",
                 f"  WS port:       {dm['ws_port']['value']} ({dm['ws_port']['source']})",
                 f"  Status:        {dm['status']}", f"  Socket:        {dm['socket']}"]
        if "identity" in d:
            i = d["identity"]
            lines += ["", "Identity", f"  Agent:   @{i['agent_id']} ({i['role']} @ {i['module']})",
                      f"  File:    {i['file']}"]
        if d.get("overrides"):
            lines += ["", "Overrides (environment)"] + [f"  {o['env_var']}={o['value']}" for o in d["overrides"]]
        return lines
    ctx.emit(data, human)
    return 0


# -- identity and sessions -------------------------------------------------------------------

def _register(ctx: Ctx, name: str, role: str, module: str, display: str, *, force=False, re_register=False):
    from thrum.identity import Identity, InvalidName, save_identity, validate_name, validate_word

    try:
        if name:
            validate_name(name)
        validate_word(role, "role")
        validate_word(module, "module")
    except InvalidName as exc:
        raise CliError(f"invalid agent name: {exc}" if "agent name" in str(exc) else str(exc)) from None
    params = {"role": role, "module": module, "worktree": ctx.worktree_name()}
    if name:
        params["name"] = name
    if display:
        params["display"] = display
    if force:
        params["force"] = True
    if re_register:
        params["re_register"] = True
    result = ctx.call("agent.register", params)
    if result.get("status") == "conflict":
        conflict = result.get("conflict") or {}
        raise CliError(
            f"registration conflict: agent {conflict.get('existing_agent_id')} already exists as "
            f"{conflict.get('role')} @ {conflict.get('module')} (registered {conflict.get('registered_at')})",
            "Use --force to override or --re-register if this is the same agent returning.",
            data=result)
    agent_id = result["agent_id"]
    ident = Identity(agent_id, role, module, display, ctx.worktree_name())
    save_identity(ctx.paths.identities, ident)
    return result, ident


def _name_arg(ctx: Ctx) -> str:
    return os.environ.get("THRUM_NAME") or getattr(ctx.args, "name", None) or ""


@command("quickstart")
def _setup_quickstart(c: Commands) -> None:
    p = c.add(c.sub, "quickstart", "Register this agent, start a session and set its intent in one step",
              cmd_quickstart)
    p.add_argument("--name", help="agent name (lowercase letters, digits, _); THRUM_NAME wins")
    p.add_argument("--display", default="", help="display name")
    p.add_argument("--intent", default="", help="what you are about to work on")
    p.add_argument("--force", action="store_true", help="take over the name even if it has another role/module")
    p.add_argument("--dry-run", action="store_true", help="validate only")
    p.add_argument("--runtime", default="", help="also write this agent runtime's files (as 'init --runtime')")
    p.add_argument("--preamble-file", default="", help="append this file to your context preamble")
    p.add_argument("--no-init", action="store_true", help="never write runtime files")
    _hooks_flags(p)


def cmd_quickstart(ctx: Ctx) -> int:
    from thrum.identity import InvalidName, validate_name

    args = ctx.args
    name = _name_arg(ctx)
    role = args.role or os.environ.get("THRUM_ROLE", "")
    module = args.module or os.environ.get("THRUM_MODULE", "")
    if not role or not module:
        raise UsageError("--role and --module are required (or set THRUM_ROLE and THRUM_MODULE env vars)")
    if name:
        try:
            validate_name(name)
        except InvalidName as exc:
            raise CliError(f"invalid agent name: {exc}") from None
    if args.dry_run:
        ctx.emit({"dry_run": True, "name": name, "role": role, "module": module},
                 [f"Would register @{name or role} ({role} @ {module}) and start a session"])
        return 0
    reg, ident = _register(ctx, name, role, module, args.display, force=args.force, re_register=args.force)
    session = ctx.call("session.start", {"agent_id": ident.name, "caller_agent_id": ident.name,
                                         "refs": [{"type": "worktree", "value": _worktree_path(ctx)}]})
    data = {"register": reg, "session": session}
    if args.intent:
        data["intent"] = ctx.call("session.setIntent", {"session_id": session["session_id"],
                                                        "intent": args.intent, "caller_agent_id": ident.name})
    _bootstrap_context(ctx, ident.name)
    root = _worktree_path(ctx)
    runtime, detected, how = _choose_runtime(ctx, root, args.runtime, prompt=False)
    data["runtime"], data["runtime_detected"] = runtime, [d["runtime"] for d in detected]
    if args.runtime and not args.no_init:
        data["runtime_init"] = _runtime_files(ctx, root, runtime, force=args.force, dry_run=False,
                                              name=ident.name, role=role, module=module)
    if how in ("detected", "config", "flag") and not args.no_init:
        hooks = _offer_hooks(ctx, root, runtime, ask=False)
        if hooks:
            data["hooks"] = hooks

    def human(d):
        lines = [f"✓ Registered as @{ident.name} ({ident.role} @ {ident.module})",
                 f"✓ Session started: {d['session']['session_id']}"]
        if "intent" in d:
            lines.append(f"✓ Intent set: {d['intent']['intent']}")
        if how in ("detected", "config", "flag"):
            lines.append(f"✓ {'Detected' if how == 'detected' else 'Using'} runtime: {runtime}")
        if "runtime_init" in d:
            lines += ["  " + ln for ln in _runtime_file_lines(d["runtime_init"])[2:]]
        lines += _hooks_lines(d.get("hooks"))
        if not ctx.quiet:
            lines.append(f"  Identity saved to {os.path.relpath(ident.path, ctx.paths.repo)}")
        return lines
    ctx.emit(data, human)
    return 0


def _bootstrap_context(ctx: Ctx, name: str) -> None:
    """The agent's preamble in the main .thrum/context/ (where every context command looks)."""
    extra = ctx.args.preamble_file
    if not extra and ctx.call("context.preamble.show", {"agent_name": name})["has_preamble"]:
        return
    params = {"agent_name": name}
    if extra:
        from thrum.coordination import DEFAULT_PREAMBLE

        params["content"] = _b64(DEFAULT_PREAMBLE.encode() + b"\n---\n\n" + _read_input(extra, "preamble"))
    ctx.call("context.preamble.save", params)


def _worktree_path(ctx: Ctx) -> str:
    from thrum.paths import find_git_toplevel

    return find_git_toplevel(os.getcwd()) or ctx.paths.repo


@command("whoami")
def _setup_whoami(c: Commands) -> None:
    p = c.add(c.sub, "whoami", "Show which agent identity this shell acts as", cmd_whoami)
    p.add_argument("--name", help="choose among several identities")


def cmd_whoami(ctx: Ctx) -> int:
    ident = ctx.identity()
    data = {"agent_id": ident.name, "role": ident.role, "module": ident.module, "display": ident.display,
            "worktree": ident.worktree, "identity_file": ident.path, "repo_id": os.path.basename(ctx.paths.main_repo),
            "updated_at": ident.updated_at}
    ctx.emit(data, [f"@{ident.name} ({ident.role} @ {ident.module})"]
             + ([f"Display:  {ident.display}"] if ident.display else [])
             + [f"Identity: {os.path.relpath(ident.path, ctx.paths.repo)}", f"Worktree: {ident.worktree}"])
    return 0


def _name_flag(p) -> None:
    p.add_argument("--name", help="act as this agent (THRUM_NAME wins)")


@command("agent")
def _setup_agent(c: Commands) -> None:
    g = c.group("agent", "Register and inspect agents")
    p = c.add(g, "register", "Register an agent and save its identity file", cmd_agent_register)
    p.add_argument("--name", help="agent name")
    p.add_argument("--display", default="", help="display name")
    p.add_argument("--force", action="store_true", help="override a conflicting registration")
    p.add_argument("--re-register", action="store_true", help="update an existing registration")
    p = c.add(g, "whoami", "Show the calling agent as the daemon knows it", cmd_agent_whoami)
    _name_flag(p)
    p = c.add(g, "list", "List registered agents", cmd_agent_list)
    p.add_argument("--context", action="store_true", help="show work contexts instead")
    p = c.add(g, "delete", "Delete an agent (its messages are kept)", cmd_agent_delete)
    p.add_argument("agent", metavar="NAME")
    p.add_argument("--force", action="store_true", help="do not ask for confirmation")
    _setup_agent_coordination(c, g)
    _session_commands(c, g, alias_group=True)


def cmd_agent_register(ctx: Ctx) -> int:
    name = _name_arg(ctx)
    role = ctx.args.role or os.environ.get("THRUM_ROLE", "")
    module = ctx.args.module or os.environ.get("THRUM_MODULE", "")
    if not role or not module:
        raise UsageError("role and module are required (use --role and --module flags or THRUM_ROLE and "
                         "THRUM_MODULE env vars)")
    result, ident = _register(ctx, name, role, module, ctx.args.display, force=ctx.args.force,
                              re_register=ctx.args.re_register)
    verb = "re-registered" if result["status"] == "updated" else "registered"
    ctx.emit(result, [f"✓ Agent {verb}: {result['agent_id']}"])
    return 0


def cmd_agent_whoami(ctx: Ctx) -> int:
    ident = ctx.identity()
    result = ctx.call("agent.whoami", ctx.caller(ident=ident))

    def human(r):
        lines = [f"Agent ID:  {r['agent_id']}", f"Role:      @{r['role']}", f"Module:    {r['module']}",
                 f"Display:   {r.get('display', '')}", f"Source:    {r['source']}"]
        if r.get("session_id"):
            lines.append(f"Session:   {r['session_id']} ({ago(r['session_start'])})")
        else:
            lines.append("Session:   none (use 'thrum session start' to begin)")
        return lines
    ctx.emit(result, human)
    return 0


def cmd_agent_list(ctx: Ctx) -> int:
    params = {}
    if ctx.args.role:
        params["role"] = ctx.args.role
    if ctx.args.module:
        params["module"] = ctx.args.module
    if ctx.args.context:
        return _show_contexts(ctx)
    result = ctx.call("agent.list", params)

    def human(r):
        agents = r["agents"]
        if not agents:
            return ["No agents registered.", "  Tip: Register with 'thrum quickstart --name NAME --role ROLE "
                                             "--module MODULE'"]
        lines = [f"Registered agents ({len(agents)}):", ""]
        for a in agents:
            active = a["status"] == "active"
            lines.append(f"┌─ {'●' if active else '○'} @{a['agent_id']} ({a['role']}) ({a['status']})")
            lines.append(f"│  Module:  {a['module']}")
            if a.get("intent"):
                lines.append(f"│  Intent:  {a['intent'][:50]}")
            if a.get("current_task"):
                lines.append(f"│  Task:    {a['current_task'][:50]}")
            if a.get("branch"):
                lines.append(f"│  Branch:  {a['branch']}")
            label = "Active:" if active else "Last seen:"
            lines.append(f"│  {label}  {ago(a.get('last_seen_at', ''))}")
            lines.append("└─")
        return lines
    ctx.emit(result, human)
    return 0


def cmd_agent_delete(ctx: Ctx) -> int:
    name = ctx.args.agent.lstrip("@")
    if not ctx.args.force:
        if not sys.stdin.isatty():
            raise CliError(f"refusing to delete agent '{name}' without confirmation", "Pass --force to confirm")
        answer = input(f"Delete agent '{name}' and its identity? Its messages are kept. [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("Deletion canceled.")
            return 1
    result = ctx.call("agent.delete", {"name": name, "force": True})  # confirmed: ends a live session too
    ctx.emit(result, [f"✓ Agent {name} deleted successfully"])
    return 0


@command("session")
def _setup_session(c: Commands) -> None:
    g = c.group("session", "Start and end work sessions, set intent and task")
    _session_commands(c, g, alias_group=False)


def _session_commands(c: Commands, g, alias_group: bool) -> None:
    p = c.add(g, "start", "Start a work session (ends this agent's stale session here)", cmd_session_start)
    _name_flag(p)
    p = c.add(g, "end", "End the current session", cmd_session_end)
    _name_flag(p)
    p.add_argument("--reason", default="normal")
    p.add_argument("--session-id", default="")
    if not alias_group:
        p = c.add(g, "list", "List sessions", cmd_session_list)
        p.add_argument("--active", action="store_true", help="only active sessions")
        p.add_argument("--agent", default="", help="only this agent's sessions")
    p = c.add(g, "heartbeat", "Report that this agent is alive (and refresh its git work context)",
              cmd_session_heartbeat)
    p.add_argument("--add-ref", action="append", metavar="TYPE:VALUE",
                   help="e.g. worktree:/abs/path (the checkout whose git state this session reports)")
    _name_flag(p)
    p = c.add(g, "set-intent", "Say what you are working on ('' clears it)", cmd_session_set_intent)
    p.add_argument("text", metavar="TEXT")
    _name_flag(p)
    p = c.add(g, "set-task", "Set the current task ('' clears it)", cmd_session_set_task)
    p.add_argument("text", metavar="TASK")
    _name_flag(p)


def cmd_session_start(ctx: Ctx) -> int:
    ident = ctx.identity()
    result = ctx.call("session.start", {"agent_id": ident.name, "caller_agent_id": ident.name,
                                        "refs": [{"type": "worktree", "value": _worktree_path(ctx)}]})
    ctx.emit(result, [f"✓ Session started: {result['session_id']}", f"  Agent:      {result['agent_id']}",
                      f"  Started:    {local_time(result['started_at'])}"])
    return 0


def cmd_session_end(ctx: Ctx) -> int:
    ident = ctx.identity()
    params = ctx.caller({"reason": ctx.args.reason}, ident)
    if ctx.args.session_id:
        params["session_id"] = ctx.args.session_id
    else:
        who = ctx.call("agent.whoami", ctx.caller(ident=ident))
        if not who.get("session_id"):
            raise CliError("no active session to end")
        params["session_id"] = who["session_id"]
    result = ctx.call("session.end", params)
    ctx.emit(result, [f"✓ Session ended: {result['session_id']}", f"  Ended:      {local_time(result['ended_at'])}",
                      f"  Duration:   {duration_text(result['duration_ms'])}"])
    return 0


def cmd_session_list(ctx: Ctx) -> int:
    params = {"active_only": ctx.args.active}
    if ctx.args.agent:
        params["agent_id"] = ctx.args.agent.lstrip("@")
    result = ctx.call("session.list", params)

    def human(r):
        if not r["sessions"]:
            return ["No sessions found."]
        lines = [f"Sessions ({len(r['sessions'])}):"]
        for s in r["sessions"]:
            lines += ["", f"  {s['session_id']} [{s['status']}]", f"    Agent:    {s['agent_id']}",
                      f"    Started:  {local_time(s['started_at'])}"]
            if s.get("ended_at"):
                lines.append(f"    Ended:    {local_time(s['ended_at'])}")
            if s.get("intent"):
                lines.append(f"    Intent:   {s['intent']}")
            if s.get("end_reason") and s["end_reason"] != "normal":
                lines.append(f"    Reason:   {s['end_reason']}")
        return lines
    ctx.emit(result, human)
    return 0


def _session_call(ctx: Ctx, method: str, extra: dict) -> dict:
    from thrum.rpc import RPCError

    ident = ctx.identity()
    try:
        return ctx.client().call(method, ctx.caller(extra, ident))
    except RPCError as exc:
        if exc.code == -32004:
            raise CliError("no active session - start one with 'thrum session start'") from None
        raise CliError(exc.message, rpc_code=exc.code) from None


def cmd_session_heartbeat(ctx: Ctx) -> int:
    extra = {}
    refs = split_pairs(ctx.args.add_ref, "ref")
    if refs:
        extra["add_refs"] = refs
    result = _session_call(ctx, "session.heartbeat", extra)
    lines = [f"✓ Heartbeat sent: {result['session_id']}"]
    if result.get("context_refresh") == "scheduled":
        wc = _wait_for_refresh(ctx, result["session_id"], result["last_seen_at"])
        if wc and wc.get("git_updated_at"):
            result["work_context"] = wc
            lines.append(f"  Context: branch {_branch_text(wc)}, files: {_files_text(wc)}")
    ctx.emit(result, lines)
    return 0


def cmd_session_set_intent(ctx: Ctx) -> int:
    result = _session_call(ctx, "session.setIntent", {"intent": ctx.args.text})
    ctx.emit(result, [f"✓ Intent set: {result['intent']}" if result["intent"] else "✓ Intent cleared"])
    return 0


def cmd_session_set_task(ctx: Ctx) -> int:
    result = _session_call(ctx, "session.setTask", {"current_task": ctx.args.text})
    ctx.emit(result, [f"✓ Task set: {result['current_task']}" if result["current_task"] else "✓ Task cleared"])
    return 0


# -- messaging ---------------------------------------------------------------------------------

@command("send")
def _setup_send(c: Commands) -> None:
    p = c.add(c.sub, "send", "Send a message (to @name, @role, @group or @everyone)", cmd_send)
    p.add_argument("message", metavar="MESSAGE", nargs="?",
                   help="the message text ('-' reads it from stdin); or use --body-file / --stdin")
    body = p.add_mutually_exclusive_group()
    body.add_argument("--body-file", metavar="FILE",
                      help="read the message text from FILE (UTF-8, at most 32 KiB; '-' is stdin)")
    body.add_argument("--stdin", action="store_true", help="read the message text from stdin")
    p.add_argument("--to", action="append", help="recipient: @name, @role, @group or @everyone (repeatable)")
    p.add_argument("--mention", action="append", help="also mention @name or @role (repeatable)")
    p.add_argument("--scope", action="append", help="scope type:value (repeatable, comma-separated)")
    p.add_argument("--ref", action="append", help="reference type:value (repeatable, comma-separated)")
    p.add_argument("--thread", default="", help="thread id")
    p.add_argument("--reply-to", default="", help="message id this answers")
    p.add_argument("--structured", default="", help="a JSON object attached to the message")
    p.add_argument("-p", "--priority", default="normal", choices=["critical", "high", "normal", "low"])
    p.add_argument("--format", default="markdown", choices=["markdown", "plain", "json"])
    p.add_argument("-b", "--broadcast", action="store_true", help=argparse.SUPPRESS)
    _name_flag(p)


def _read_text(text: str) -> str:
    return sys.stdin.read() if text == "-" else text


# The daemon's limit (service.MAX_CONTENT_BYTES), checked here so a big file fails before it is sent.
MAX_BODY_BYTES = 32 * 1024


def _message_body(args) -> str:
    """The text of `send`: the MESSAGE argument, or --body-file FILE, or --stdin (never two of them)."""
    source = "--stdin" if args.stdin else f"--body-file {args.body_file}" if args.body_file is not None else None
    if source is None:
        if args.message is None:
            raise UsageError("a message is required: give MESSAGE, --body-file FILE or --stdin")
        return _read_text(args.message)
    if args.message is not None:
        raise UsageError(f"give the message either as MESSAGE or with {source}, not both")
    try:
        if args.stdin or args.body_file == "-":
            data = sys.stdin.buffer.read(MAX_BODY_BYTES + 1)
        else:
            with open(args.body_file, "rb") as f:
                data = f.read(MAX_BODY_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {args.body_file}: {exc.strerror or exc}") from None
    if len(data) > MAX_BODY_BYTES:
        raise UsageError(f"the message from {source} is larger than {MAX_BODY_BYTES} bytes, the most a message holds")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"the message from {source} is not UTF-8 text") from None
    if not text.strip():
        raise UsageError(f"the message from {source} is empty")
    return text


def cmd_send(ctx: Ctx) -> int:
    args = ctx.args
    ident = ctx.identity()
    if args.broadcast and args.to:
        raise UsageError("--broadcast and --to are mutually exclusive")
    mentions = [m if m.startswith("@") else "@" + m for m in split_list(args.to)] + split_list(args.mention)
    if args.broadcast:
        mentions.append("@everyone")
    params = ctx.caller({"content": _message_body(args), "format": args.format, "priority": args.priority,
                         "client_id": _client_id()}, ident)
    if mentions:
        params["mentions"] = mentions
    if args.scope:
        params["scopes"] = split_pairs(args.scope, "scope")
    if args.ref:
        params["refs"] = split_pairs(args.ref, "ref")
    if args.thread:
        params["thread_id"] = args.thread
    if args.reply_to:
        params["reply_to"] = args.reply_to
    if args.structured:
        try:
            structured = json.loads(args.structured)
        except ValueError as exc:
            raise UsageError(f"invalid structured data: {exc}") from None
        if not isinstance(structured, dict):
            raise UsageError("invalid structured data: must be a JSON object")
        params["structured"] = structured
    result = _send_with_retry(ctx, params)
    lines = [f"✓ Message sent: {result['message_id']}"]
    if result.get("thread_id"):
        lines.append(f"  Thread: {result['thread_id']}")
    if not ctx.quiet:
        lines.append(f"  To:      {', '.join(mentions) if mentions else '(everyone: no recipient given)'}")
        if result.get("priority", "normal") != "normal":
            lines.append(f"  Priority: {result['priority']}")
    ctx.emit(result, lines)
    return 0


def _client_id() -> str:
    return "cli_" + os.urandom(8).hex()


def _send_with_retry(ctx: Ctx, params: dict) -> dict:
    """Send; if the connection dropped before the answer, retry once with the same client id.

    The daemon answers a repeated client id with the first message, so the retry
    can never create a duplicate.
    """
    try:
        return ctx.call("message.send", params)
    except CliError as exc:
        if exc.rpc_code is not None or ctx._client is None:
            raise
    ctx.close()
    ctx._client = None
    return ctx.call("message.send", params)


@command("reply")
def _setup_reply(c: Commands) -> None:
    p = c.add(c.sub, "reply", "Reply to a message (reaches its author and its recipients)", cmd_reply)
    p.add_argument("message_id", metavar="MSG_ID")
    p.add_argument("text", metavar="TEXT", help="reply text ('-' reads stdin)")
    p.add_argument("--format", default="markdown", choices=["markdown", "plain", "json"])
    p.add_argument("-p", "--priority", default="normal", choices=["critical", "high", "normal", "low"])
    _name_flag(p)


def cmd_reply(ctx: Ctx) -> int:
    ident = ctx.identity()
    try:
        parent = ctx.call("message.get", {"message_id": ctx.args.message_id, "caller_agent_id": ident.name})
    except CliError as exc:
        # Keep the hint: when the daemon is down it says how to start it.
        raise CliError(f"failed to get parent message: {exc.message}", exc.hint, rpc_code=exc.rpc_code,
                       data=exc.data) from None
    msg = parent["message"]
    mentions = []
    for ref in msg.get("refs", []):
        if ref["type"] == "mention" and ref["value"] != ident.name:
            mentions.append("@" + ref["value"])
    for scope in msg.get("scopes", []):
        if scope["type"] == "group":
            mentions.append("@" + scope["value"])
    params = ctx.caller({"content": _read_text(ctx.args.text), "format": ctx.args.format,
                         "priority": ctx.args.priority, "reply_to": msg["message_id"],
                         "client_id": _client_id()}, ident)
    if msg.get("thread_id"):
        params["thread_id"] = msg["thread_id"]
    mentions = list(dict.fromkeys(mentions))
    if mentions:
        params["mentions"] = mentions
    result = _send_with_retry(ctx, params)
    try:
        ctx.call("message.markRead", ctx.caller({"message_ids": [msg["message_id"]]}, ident))
    except CliError:
        pass
    ctx.emit(result, [f"✓ Reply sent: {result['message_id']}",
                      *([] if ctx.quiet else [f"  In reply to: {msg['message_id']} from @{msg['agent_id']}"])])
    return 0


@command("inbox")
def _setup_inbox(c: Commands) -> None:
    p = c.add(c.sub, "inbox", "Show messages for you (direct, role, group and broadcast) and mark them read",
              cmd_inbox)
    p.add_argument("--scope", action="append", help="only messages with this scope type:value")
    p.add_argument("--mentions", action="store_true", help="only messages that mention you or your role")
    p.add_argument("--unread", action="store_true", help="only unread messages")
    p.add_argument("-a", "--all", action="store_true", help="every message, not only those for you")
    p.add_argument("--from", dest="from_agent", metavar="@NAME", help="only messages written by this agent or user")
    p.add_argument("--page-size", type=int, default=10, help="messages per page (1-100)")
    p.add_argument("--page", type=int, default=1)
    p.add_argument("--no-mark-read", "--peek", dest="no_mark_read", action="store_true",
                   help="do not mark the shown messages read")
    _name_flag(p)


def cmd_inbox(ctx: Ctx) -> int:
    args = ctx.args
    ident = ctx.identity()
    if not 1 <= args.page_size <= 100:
        raise UsageError("--page-size must be between 1 and 100")
    params = ctx.caller({"exclude_self": True, "page": max(1, args.page), "page_size": args.page_size}, ident)
    if not args.all:
        params["for_agent"] = ident.name
        params["for_agent_role"] = ident.role
    scopes = split_pairs(args.scope, "scope")
    if scopes:
        params["scope"] = scopes[0]
    if args.mentions:
        params["mentions"] = True
    if args.unread:
        params["unread"] = True
    if args.from_agent is not None:
        author = args.from_agent.removeprefix("@")
        if not author:
            raise UsageError("--from needs a name, e.g. --from @alice")
        params["author_id"] = author
    result = ctx.call("message.list", params)
    shown_unread = [m["message_id"] for m in result["messages"] if not m.get("is_read")]
    if shown_unread and not args.no_mark_read:
        ctx.call("message.markRead", ctx.caller({"message_ids": shown_unread}, ident))
    elif shown_unread and not args.all:
        # --peek leaves them unread, but they did reach whoever looked: a hook will not hand them over again.
        ctx.call("message.markDelivered", ctx.caller({"message_ids": shown_unread, "via": "inbox"}, ident))
    _render_inbox(ctx, result, ident, scopes)
    return 0


def _render_inbox(ctx: Ctx, result: dict, ident, scopes: list) -> None:
    def human(r):
        msgs = r["messages"]
        if not msgs:
            if scopes:
                return [f"No messages matching filter --scope {scopes[0]['type']}:{scopes[0]['value']}"]
            if ctx.args.from_agent:
                return [f"No messages from @{ctx.args.from_agent.removeprefix('@')}"
                        + ("." if ctx.args.all else f" for @{ident.name}.")]
            return [f"No messages for @{ident.name}."] if not ctx.args.all else ["No messages in inbox."]
        width = max(40, min(120, _terminal_columns() - 2))
        ordered = _cluster_replies(msgs)
        lines = ["┌" + "─" * (width - 2) + "┐"]
        for i, (m, is_reply) in enumerate(ordered):
            if i:
                lines.append("├" + "─" * (width - 2) + "┤")
            mark = "○" if m.get("is_read") else "●"
            to = [("@" + x["value"]) for x in m.get("refs", []) if x["type"] in ("mention", "group")]
            prio = f"  [{m['priority']}]" if m.get("priority", "normal") != "normal" else ""
            edited = " (edited)" if m.get("updated_at") else ""
            arrow = "↳ " if is_reply else ""
            head = f"{mark} {m['message_id']}  {arrow}@{m['agent_id']}"
            if to:
                head += " → " + ", ".join(dict.fromkeys(to))
            head += f"  {ago(m['created_at'])}{prio}{edited}"
            lines += _boxed(head, width, indent="  " if is_reply else "")
            for para in m["body"]["content"].splitlines() or [""]:
                lines += _boxed(para, width, indent="    " if is_reply else "  ")
        lines.append("└" + "─" * (width - 2) + "┘")
        start = (r["page"] - 1) * r["page_size"] + 1
        end = start + len(msgs) - 1
        footer = f"Showing {start}-{end} of {r['total']} messages ({r['unread']} unread)"
        if not ctx.args.all:
            footer += f" (filtered for @{ident.name})"
        lines.append(footer)
        if r["total_pages"] > r["page"]:
            lines.append(f"  More: thrum inbox --page {r['page'] + 1}")
        return lines
    ctx.emit(result, human)


def _terminal_columns() -> int:
    # os.get_terminal_size rather than shutil's: importing shutil costs a few ms per call.
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except (OSError, ValueError):
        return 80


def _cluster_replies(msgs: list[dict]) -> list[tuple[dict, bool]]:
    """Keep the page's order, but put each reply right under its parent when both are shown."""
    by_id = {m["message_id"]: m for m in msgs}
    children: dict[str, list[dict]] = {}
    for m in msgs:
        if m.get("reply_to") in by_id:
            children.setdefault(m["reply_to"], []).append(m)
    out: list[tuple[dict, bool]] = []
    placed: set[str] = set()

    def place(m: dict, depth: int) -> None:
        if m["message_id"] in placed:
            return
        placed.add(m["message_id"])
        out.append((m, depth > 0))
        for child in sorted(children.get(m["message_id"], []), key=lambda x: x["created_at"]):
            place(child, depth + 1)
    for m in msgs:
        if m.get("reply_to") not in by_id:
            place(m, 0)
    for m in msgs:
        place(m, 0)
    return out


def _display_width(text: str) -> int:
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 0 if unicodedata.combining(ch) else 1
               for ch in text)


def _boxed(text: str, width: int, indent: str = "") -> list[str]:
    """Wrap `text` into `│ … │` lines by display width (not bytes), so UTF-8 never breaks the box."""
    inner = width - 4 - len(indent)
    out, line, used = [], "", 0
    for ch in text.replace("\t", "    "):
        w = _display_width(ch)
        if used + w > inner:
            out.append(line)
            line, used = "", 0
        line += ch
        used += w
    out.append(line)
    return [f"│ {indent}{chunk}{' ' * (inner - _display_width(chunk))} │" for chunk in out]


@command("message")
def _setup_message(c: Commands) -> None:
    g = c.group("message", "Get, edit, delete or mark messages read")
    p = c.add(g, "get", "Show one message", cmd_message_get)
    p.add_argument("message_id", metavar="ID")
    _name_flag(p)
    p = c.add(g, "edit", "Edit your message", cmd_message_edit)
    p.add_argument("message_id", metavar="ID")
    p.add_argument("text", metavar="TEXT")
    _name_flag(p)
    p = c.add(g, "delete", "Delete your message", cmd_message_delete)
    p.add_argument("message_id", metavar="ID")
    p.add_argument("--force", action="store_true", help="confirm the deletion")
    p.add_argument("--reason", default="")
    _name_flag(p)
    p = c.add(g, "read", "Mark messages read", cmd_message_read)
    p.add_argument("message_ids", metavar="ID", nargs="*")
    p.add_argument("--all", action="store_true", help="mark every unread message in your inbox read")
    _name_flag(p)


def cmd_message_get(ctx: Ctx) -> int:
    params = {"message_id": ctx.args.message_id}
    ident = None
    try:
        ident = ctx.identity()
        params["caller_agent_id"] = ident.name
    except CliError:
        pass
    result = ctx.call("message.get", params)
    if ident is not None and not result["message"].get("is_read"):
        try:
            ctx.call("message.markRead", ctx.caller({"message_ids": [ctx.args.message_id]}, ident))
        except CliError as exc:
            ctx.warn(f"Warning: could not mark as read: {exc.message}")

    def human(r):
        m = r["message"]
        lines = [f"Message: {m['message_id']}", f"  From:     @{m['agent_id']}",
                 f"  Time:     {local_time(m['created_at'])} ({ago(m['created_at'])})"]
        if m.get("reply_to"):
            lines.append(f"  Reply to: {m['reply_to']}")
        if m.get("thread_id"):
            lines.append(f"  Thread:   {m['thread_id']}")
        if m.get("priority", "normal") != "normal":
            lines.append(f"  Priority: {m['priority']}")
        if m.get("scopes"):
            lines.append("  Scopes:   " + ", ".join(f"{s['type']}:{s['value']}" for s in m["scopes"]))
        if m.get("refs"):
            lines.append("  Refs:     " + ", ".join(f"{s['type']}:{s['value']}" for s in m["refs"]))
        if m.get("updated_at"):
            lines.append(f"  Edited:   {local_time(m['updated_at'])} (version {m.get('version', 1)})")
        if m.get("deleted"):
            lines.append("  Status:   DELETED")
        if m.get("receipts"):
            lines.append("  Receipts: " + receipt_summary(m["receipts"]))
        lines += ["", m["body"]["content"]]
        return lines
    ctx.emit(result, human)
    return 0


def receipt_summary(receipts: list[dict]) -> str:
    """`bob read 2m ago, carol delivered 5m ago, dave pending`."""
    parts = []
    for r in receipts:
        when = r.get("read_at") if r["state"] == "read" else r.get("delivered_at")
        parts.append(f"@{r['agent_id']} {r['state']}" + (f" {ago(when)}" if when else ""))
    return ", ".join(parts)


def cmd_message_edit(ctx: Ctx) -> int:
    ident = ctx.identity()
    result = ctx.call("message.edit", ctx.caller({"message_id": ctx.args.message_id,
                                                  "content": _read_text(ctx.args.text)}, ident))
    ctx.emit(result, [f"✓ Message edited: {result['message_id']} (version {result['version']})"])
    return 0


def cmd_message_delete(ctx: Ctx) -> int:
    if not ctx.args.force:
        raise UsageError("use --force to confirm deletion")
    ident = ctx.identity()
    params = ctx.caller({"message_id": ctx.args.message_id}, ident)
    if ctx.args.reason:
        params["reason"] = ctx.args.reason
    result = ctx.call("message.delete", params)
    ctx.emit(result, [f"✓ Message deleted: {result['message_id']}"])
    return 0


def cmd_message_read(ctx: Ctx) -> int:
    ident = ctx.identity()
    ids = list(ctx.args.message_ids)
    remaining = 0
    if ctx.args.all:
        listing = ctx.call("message.list", ctx.caller({"for_agent": ident.name, "for_agent_role": ident.role,
                                                       "exclude_self": True, "unread": True, "page_size": 100},
                                                      ident))
        ids += [m["message_id"] for m in listing["messages"]]
        remaining = max(0, listing["total"] - len(listing["messages"]))
    elif not ids:
        raise UsageError("requires at least 1 message id or --all")
    if not ids:
        ctx.emit({"marked_count": 0}, ["No unread messages."])
        return 0
    result = ctx.call("message.markRead", ctx.caller({"message_ids": ids}, ident))
    n = result["marked_count"]
    lines = [f"✓ Marked {n} message{'s' if n != 1 else ''} as read"]
    if result.get("not_found"):
        lines.append(f"  Not found: {', '.join(result['not_found'])}")
    if remaining:
        lines.append(f"  {remaining} unread messages remaining (run again to mark more)")
    ctx.emit(result, lines)
    return 1 if result.get("not_found") and n == 0 else 0


@command("hook")
def _setup_hook(c: Commands) -> None:
    # `thrum hook …` itself never gets here: thrum/__main__.py sends it straight to thrum.hooks.
    p = c.add(c.sub, "hook", "What agent runtimes run at their hook moments (set up with: thrum setup hooks)",
              cmd_hook)
    p.add_argument("runtime", metavar="RUNTIME", help="claude-code, codex, gemini or cursor")
    p.add_argument("event", metavar="EVENT", help="session-start, prompt, after-tool, stop, session-end or wait")
    p.add_argument("--name", default="", help="act as this agent (default: THRUM_NAME, else the only identity)")


def cmd_hook(ctx: Ctx) -> int:
    from thrum.hooks import main as hook_main

    return hook_main([ctx.args.runtime, ctx.args.event] + (["--name", ctx.args.name] if ctx.args.name else []))


@command("sent")
def _setup_sent(c: Commands) -> None:
    p = c.add(c.sub, "sent", "Your sent messages, with each recipient's state: pending, delivered or read",
              cmd_sent)
    p.add_argument("--unread", action="store_true", help="only messages some recipient has not read yet")
    p.add_argument("--to", default="", help="only messages addressed to this agent (@name), with its state")
    p.add_argument("--page-size", type=int, default=20, help="messages per page (1-100)")
    p.add_argument("--page", type=int, default=1)
    _name_flag(p)


def cmd_sent(ctx: Ctx) -> int:
    args = ctx.args
    if not 1 <= args.page_size <= 100:
        raise UsageError("--page-size must be between 1 and 100")
    ident = ctx.identity()
    params = ctx.caller({"page": max(1, args.page), "page_size": args.page_size}, ident)
    if args.unread:
        params["unread"] = True
    if args.to:
        params["to"] = args.to.lstrip("@")
    result = ctx.call("message.sent", params)

    def human(r):
        if not r["messages"]:
            return ["No sent messages" + (" with unread recipients." if args.unread else ".")
                    + ("" if r.get("searched_all") is not False else " (among your newest 5,000)")]
        lines = []
        for m in r["messages"]:
            prio = f"  [{m['priority']}]" if m.get("priority", "normal") != "normal" else ""
            c = m["counts"]
            lines.append(f"{m['message_id']}  {ago(m['created_at'])}  → {', '.join(m['to'])}{prio}  "
                         f"read {c['read']}/{c['recipients']}, delivered {c['delivered']}/{c['recipients']}")
            lines.append(f"    {m['preview']}")
            for rcp in m["recipients"]:
                times = []
                if rcp.get("delivered_at"):
                    times.append(f"delivered {ago(rcp['delivered_at'])}")
                if rcp.get("read_at"):
                    times.append(f"read {ago(rcp['read_at'])}")
                lines.append(f"    @{rcp['agent_id']:<16} {rcp['state']:<10} {', '.join(times)}".rstrip())
        start = (r["page"] - 1) * r["page_size"] + 1
        footer = f"Showing {start}-{start + len(r['messages']) - 1}"
        footer += f" of {r['total']} sent messages" if "total" in r else " sent messages"
        lines.append(footer)
        if r.get("has_more"):
            lines.append(f"  More: thrum sent --page {r['page'] + 1}")
        if r.get("searched_all") is False:
            lines.append("  (looked through your newest 5,000 messages only)")
        return lines
    ctx.emit(result, human)
    return 0


@command("search")
def _setup_search(c: Commands) -> None:
    p = c.add(c.sub, "search", "Full-text search of messages, best matches first, with the matching words marked",
              cmd_search)
    p.add_argument("query", metavar="QUERY", nargs="+",
                   help='words (all must match), "a phrase", prefix*, AND / OR / NOT (upper case), ( )')
    p.add_argument("--from", dest="author", default="", metavar="@NAME",
                   help="only messages written by this agent")
    p.add_argument("--to", default="", metavar="@NAME",
                   help="only messages addressed to @name (what its inbox shows: mentions of it or its role, "
                        "its groups, broadcasts), @role or @group")
    p.add_argument("--thread", default="", metavar="ID",
                   help="only messages of this thread (a thread id, or any message of the reply chain)")
    p.add_argument("--since", default="", metavar="WHEN",
                   help="only messages from then on: 2026-01-31, an RFC 3339 time, or a time ago such as 2h, 3d, 2w")
    p.add_argument("--until", default="", metavar="WHEN", help="only messages before then (same forms as --since)")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="hits to show (1-100, default 20)")
    import re

    p._negative_number_matcher = re.compile(r"^-\d")  # `--since -2d` reads as a time ago too


def _when(flag: str, text: str, now: float) -> str:
    """--since/--until: a date or RFC 3339 time as is; 2h, 3d, 2w (or -3d) ago -> an RFC 3339 time."""
    import time

    text = text.strip()
    if not text or text[:4].isdigit() and len(text) >= 10:
        return text
    units = {"w": 7 * 86400, "d": 86400}
    body = text.lstrip("-")
    try:
        if body[-1:] in units and body[:-1].replace(".", "", 1).isdigit():
            secs = float(body[:-1]) * units[body[-1]]
        else:
            secs = abs(parse_duration(body))
    except ValueError:
        raise UsageError(f'invalid {flag} "{text}"', "use a date (2026-01-31), an RFC 3339 time, or a time ago "
                         "such as 30m, 2h, 3d, 2w") from None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - secs))


def cmd_search(ctx: Ctx) -> int:
    import time

    from thrum.search import MARK_END, MARK_START, human_lines

    args = ctx.args
    if not 1 <= args.limit <= 100:
        raise UsageError("--limit must be between 1 and 100")
    now = time.time()
    params = {"query": " ".join(args.query), "limit": args.limit}
    for key, value in (("from", args.author.lstrip("@")), ("to", args.to.lstrip("@")),
                       ("thread_id", args.thread), ("since", _when("--since", args.since, now)),
                       ("until", _when("--until", args.until, now))):
        if value:
            params[key] = value
    if not ctx.json:
        params["highlight"] = [MARK_START, MARK_END]
    result = ctx.call("message.search", params)
    ctx.emit(result, lambda r: human_lines(r, tty=sys.stdout.isatty(), ago=ago))
    return 0


# -- groups, team, status ---------------------------------------------------------------------

@command("group")
def _setup_group(c: Commands) -> None:
    g = c.group("group", "Create groups of agents and roles, and manage their members")
    p = c.add(g, "create", "Create a group", cmd_group_create)
    p.add_argument("group", metavar="NAME")
    p.add_argument("--description", default="")
    p = c.add(g, "delete", "Delete a group", cmd_group_delete)
    p.add_argument("group", metavar="NAME")
    for verb, func in (("add", cmd_group_add), ("remove", cmd_group_remove)):
        # Here --role names the member, so these parsers get their own copy of the global flags
        # with that one replaced (the shared parent's actions must stay untouched).
        own = Parser(add_help=False, conflict_handler="resolve")
        _common_flags(own, suppress=True)
        own.add_argument("--role", dest="member_role", default="", help="every agent with this role ('*' = all)")
        help_text = f"{verb.capitalize()} a member: an agent, --role R or --group G"
        p = g.add_parser(verb, help=help_text, description=help_text, parents=[own])
        p.set_defaults(func=func)
        p.add_argument("group", metavar="GROUP")
        p.add_argument("member", metavar="MEMBER", nargs="?", help="agent name (@name)")
        p.add_argument("--group", dest="member_group", default="", help="another group (nested)")
    c.add(g, "list", "List groups", cmd_group_list)
    p = c.add(g, "info", "Show a group and its members", cmd_group_info)
    p.add_argument("group", metavar="NAME")
    p = c.add(g, "members", "List a group's members", cmd_group_members)
    p.add_argument("group", metavar="NAME")
    p.add_argument("--expand", action="store_true", help="resolve roles and nested groups to agents")


def _actor(ctx: Ctx) -> dict:
    try:
        return {"caller_agent_id": ctx.identity().name}
    except CliError:
        return {}


def cmd_group_create(ctx: Ctx) -> int:
    params = {"name": ctx.args.group.lstrip("@"), **_actor(ctx)}
    if ctx.args.description:
        params["description"] = ctx.args.description
    result = ctx.call("group.create", params)
    ctx.emit(result, [f"✓ Group created: {result['name']} ({result['group_id']})"])
    return 0


def cmd_group_delete(ctx: Ctx) -> int:
    result = ctx.call("group.delete", {"name": ctx.args.group.lstrip("@"), **_actor(ctx)})
    ctx.emit(result, [f"✓ Group deleted: {result['name']}"])
    return 0


def _member_params(ctx: Ctx) -> dict:
    a = ctx.args
    given = [x for x in (a.member, a.member_role, a.member_group) if x]
    if len(given) != 1:
        raise UsageError("provide exactly one of: a member argument, --role or --group")
    if a.member_role:
        mtype, value = "role", a.member_role
    elif a.member_group:
        mtype, value = "group", a.member_group.lstrip("@")
    else:
        mtype, value = "agent", a.member.lstrip("@")
    return {"group": a.group.lstrip("@"), "member_type": mtype, "member_value": value, **_actor(ctx)}


def _member_label(r: dict) -> str:
    return "@" + r["member_value"] if r["member_type"] == "agent" else f"{r['member_type']}:{r['member_value']}"


def cmd_group_add(ctx: Ctx) -> int:
    result = ctx.call("group.member.add", _member_params(ctx))
    text = (f"✓ Added {_member_label(result)} to {result['group']}" if result["status"] == "added"
            else f"✓ {_member_label(result)} is already in {result['group']}")
    ctx.emit(result, [text])
    return 0


def cmd_group_remove(ctx: Ctx) -> int:
    result = ctx.call("group.member.remove", _member_params(ctx))
    if result["status"] != "removed":
        raise CliError(f"{_member_label(result)} is not a member of {result['group']}", data=result)
    ctx.emit(result, [f"✓ Removed {_member_label(result)} from {result['group']}"])
    return 0


def cmd_group_list(ctx: Ctx) -> int:
    result = ctx.call("group.list", {})

    def human(r):
        if not r["groups"]:
            return ["No groups found."]
        return [f"  {g['name']:<20} {g.get('description') or '(no description)':<40} {g['member_count']} members"
                for g in r["groups"]]
    ctx.emit(result, human)
    return 0


def cmd_group_info(ctx: Ctx) -> int:
    result = ctx.call("group.info", {"name": ctx.args.group.lstrip("@")})

    def human(r):
        lines = [f"Group:       {r['name']}", f"Description: {r.get('description', '')}", f"ID:          {r['group_id']}",
                 f"Created:     {local_time(r['created_at'])} by {r['created_by']}",
                 f"Members ({len(r['members'])}):"]
        for m in r["members"]:
            if m["member_type"] == "role" and m["member_value"] == "*":
                lines.append("  role:* (all agents)")
            else:
                lines.append("  " + _member_label(m))
        return lines
    ctx.emit(result, human)
    return 0


def cmd_group_members(ctx: Ctx) -> int:
    result = ctx.call("group.members", {"name": ctx.args.group.lstrip("@"), "expand": ctx.args.expand})

    def human(r):
        lines = [f"Members ({len(r['members'])}):"] + ["  " + _member_label(m) for m in r["members"]]
        if "expanded" in r:
            lines += [f"Expanded ({len(r['expanded'])} agents):"] + [f"  @{a}" for a in r["expanded"]]
        return lines
    ctx.emit(result, human)
    return 0


@command("team")
def _setup_team(c: Commands) -> None:
    p = c.add(c.sub, "team", "Who is working: agents with sessions, their intent, branch and inbox", cmd_team)
    p.add_argument("--all", action="store_true", help="include offline agents")


def cmd_team(ctx: Ctx) -> int:
    result = ctx.call("team.list", {"include_offline": ctx.args.all})

    def human(r):
        if not r["members"]:
            return ["No active agents. Use --all to include offline agents."]
        lines = []
        for m in r["members"]:
            lines.append(f"=== @{m['agent_id']} ({m['role']} @ {m['module']}) ===")
            if m.get("hostname") or m.get("worktree_path"):
                lines.append(f"Location: {m.get('hostname', '')} {m.get('worktree_path', '')}".rstrip())
            if m["status"] == "active":
                lines.append(f"Session:  {m['session_id']} (active {ago(m.get('session_start', ''))})")
            else:
                lines.append(f"Session:  offline (last seen {ago(m.get('last_seen', ''))})")
            if m.get("intent"):
                lines.append(f"Intent:   {m['intent']}")
            if m.get("current_task"):
                lines.append(f"Task:     {m['current_task']}")
            lines.append(f"Inbox:    {m['inbox_unread']} unread / {m['inbox_total']} total")
            if m.get("branch"):
                lines.append(f"Branch:   {m['branch']} ({m['unmerged_commits']} commits ahead)")
            changes = m.get("file_changes") or [{"path": f} for f in m.get("changed_files") or []]
            if changes:
                lines.append(f"Files:    {len(changes)} changed, {len(m.get('uncommitted_files') or [])} uncommitted")
                lines += ["  " + _file_row(f) for f in changes[:12]]
                if len(changes) > 12:
                    lines.append(f"  … and {len(changes) - 12} more (thrum agent context @{m['agent_id']})")
            else:
                lines.append("Files:    (no changes)")
            lines.append("")
        shared = r.get("shared_messages") or {}
        if shared:
            lines.append("--- Shared ---")
            lines.append(f"Broadcasts: {shared.get('broadcasts', 0)} messages")
            for g, n in sorted((shared.get("groups") or {}).items()):
                lines.append(f"@{g}: {n} messages")
        return lines
    ctx.emit(result, human)
    return 0


@command("status")
def _setup_status(c: Commands) -> None:
    p = c.add(c.sub, "status", "Your identity, session, inbox, and the daemon's health", cmd_status)
    _name_flag(p)


def cmd_status(ctx: Ctx) -> int:
    health = ctx.call("health")
    data: dict = {"health": health}
    try:
        ident = ctx.identity()
    except CliError:
        ident = None
    if ident is not None:
        from thrum.rpc import RPCError

        try:
            data["agent"] = ctx.client().call("agent.whoami", {"caller_agent_id": ident.name})
        except RPCError:
            data["agent"] = {"agent_id": ident.name, "role": ident.role, "module": ident.module,
                             "registered": False}
        if data["agent"].get("session_id"):
            found = _contexts(ctx, session_id=data["agent"]["session_id"])
            if found:
                data["work_context"] = found[0]
        if data["agent"].get("registered") is not False:
            notes = ctx.call("context.show", {"agent_name": ident.name, "include_preamble": False})
            data["context"] = {"has_context": notes["has_context"]}
            if notes["has_context"]:
                data["context"].update(size=notes["size"], updated_at=notes.get("updated_at", ""))
        data["inbox"] = _inbox_counts(ctx, ident)
    port = _ws_port(ctx)
    if port:
        data["websocket_port"] = port

    def human(d):
        h = d["health"]
        lines = []
        a = d.get("agent")
        if a is None:
            lines.append("Agent:    not registered (use 'thrum quickstart')")
        elif a.get("registered") is False:
            lines.append(f"Agent:    {a['agent_id']} (identity file only; not registered with the daemon)")
        else:
            lines += [f"Agent:    {a['agent_id']} (@{a['role']})", f"Module:   {a['module']}"]
            if a.get("display"):
                lines.append(f"Display:  {a['display']}")
            if a.get("session_id"):
                lines.append(f"Session:  {a['session_id']} (started {ago(a['session_start'])})")
            else:
                lines.append("Session:  none (use 'thrum session start' to begin)")
            wc = d.get("work_context") or {}
            if wc.get("intent"):
                lines.append(f"Intent:   {wc['intent']}")
            if wc.get("current_task"):
                lines.append(f"Task:     {wc['current_task']}")
            if wc.get("branch"):
                lines.append(f"Branch:   {_branch_text(wc)}")
                lines.append(f"Files:    {_files_text(wc)}")
            c = d.get("context") or {}
            if c.get("has_context"):
                lines.append(f"Context:  {c['size']} bytes (updated {ago(c.get('updated_at', ''))})")
        if "inbox" in d:
            lines.append(f"Inbox:    {d['inbox']['total']} messages ({d['inbox']['unread']} unread)")
        mode = f" ({h['sync_mode']})" if h.get("sync_mode") else ""
        lines.append(f"Sync:     {h.get('sync_state', 'unknown')}{mode}")
        lines.append(f"Daemon:   running ({duration_text(h['uptime_ms'])} uptime, v{h['version']})")
        if d.get("websocket_port"):
            lines.append(f"WebSocket: ws://127.0.0.1:{d['websocket_port']}/ws")
            lines.append(f"UI:        http://127.0.0.1:{d['websocket_port']} (open it with: thrum ui)")
        return lines
    ctx.emit(data, human)
    return 0


def _ws_port(ctx: Ctx) -> int | None:
    for base in (ctx.paths.var, os.path.join(ctx.paths.local, "var")):
        try:
            with open(os.path.join(base, "ws.port")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            continue
    return None


# == sync: `sync force|status` =================================================================

@command("sync")
def _setup_sync(c: Commands) -> None:
    g = c.group("sync", "Sync messages with other clones through the a-sync branch")
    p = c.add(g, "force", "Run a sync round now and report what moved", cmd_sync_force)
    p.add_argument("--no-wait", action="store_true", help="only trigger the round; do not wait for it")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the round (default 300)")
    c.add(g, "status", "Show the sync loop's state, last sync and last error", cmd_sync_status)


_STATE_TEXT = {
    "synced": "✓ synced", "idle": "idle (no syncs yet)", "error": "✗ error", "stopped": "stopped",
    "pending": "pending (local changes not pushed yet)", "local": "local (committed locally, never pushed)",
}


def _sync_lines(s: dict, indent: str = "") -> list[str]:
    mode = "local-only (remote sync disabled)" if s.get("local_only") else "normal"
    state = _STATE_TEXT.get(s.get("sync_state", ""), s.get("sync_state", "?"))
    if s.get("sync_state") == "local" and not s.get("local_only"):
        state = "local (no 'origin' remote: committed locally only)"
    last = s.get("last_sync_at") or ""
    lines = [f"{indent}Mode:       {mode}", f"{indent}State:      {state}",
             f"{indent}Last sync:  {f'{last} ({ago(last)})' if last else 'never'}"]
    if s.get("remote"):
        lines.append(f"{indent}Remote:     {s['remote']}/a-sync (ahead {s.get('ahead', 0)}, behind "
                     f"{s.get('behind', 0)}; {s.get('unpushed_events', 0)} event(s) not pushed)")
    if s.get("last_error"):
        lines.append(f"{indent}Last error: {s['last_error']}")
    if s.get("mode"):
        lines += _probe_lines(s, indent)
    if s.get("bad_remote_lines"):
        lines.append(f"{indent}Bad lines:  {s['bad_remote_lines']} unparseable remote line(s) kept in the log")
    return lines


_ACTIVE_BECAUSE = {"waiter": "a waiter is blocked", "web_ui": "the web UI is open", "requests": "recent requests"}


def _probe_text(mode: str, because: str, probe_interval, interval) -> str:
    if mode == "active":
        return (f"active ({_ACTIVE_BECAUSE.get(because, because)}): origin checked every "
                f"{probe_interval:g} s, fetched when it moved")
    if mode == "idle":
        return f"idle: origin fetched every {interval:g} s (checked every few seconds once this clone is used)"
    return "none (local-only or no origin)"


def _probe_lines(s: dict, indent: str) -> list[str]:
    """Which sync mode the clone is in, and what it cost (sync.status' mode and counts)."""
    text = _probe_text(s["mode"], s.get("active_because", ""), s.get("probe_interval", 0), s.get("interval", 60))
    last = ", ".join(f"last {what} {ago(at) if at else 'never'}"
                     for what, at in (("probe", s.get("last_probe_at")), ("fetch", s.get("last_fetch_at"))))
    lines = [f"{indent}Probing:    {text}",
             f"{indent}            {last}; in the last hour {s.get('probes_last_hour', 0)} probe(s), "
             f"{s.get('fetches_last_hour', 0)} fetch(es)"]
    if s.get("last_probe_error"):
        lines.append(f"{indent}Probe error: {s['last_probe_error']}")
    return lines


def cmd_sync_status(ctx: Ctx) -> int:
    s = ctx.call("sync.status")

    def human(s):
        return [f"Sync loop:  {'✓ running' if s.get('running') else '✗ stopped'}"] + _sync_lines(s)
    ctx.emit(s, human)
    return 0


def cmd_sync_force(ctx: Ctx) -> int:
    if ctx.args.no_wait:
        s = ctx.call("sync.force")
        ctx.emit(s, lambda s: ["✓ Sync triggered"] + _sync_lines(s, "  "))
        return 0
    from thrum.rpc import Client, DaemonUnavailable, RPCError

    show = tty() and not ctx.json and not ctx.quiet
    stages = {"fetch": "fetching from origin", "merge": "merging remote events", "commit": "committing",
              "push": "pushing to origin"}

    def progress(msg: dict) -> None:
        if show and msg.get("method") == "sync.progress":
            params = msg.get("params") or {}
            text = stages.get(params.get("stage"), params.get("stage", ""))
            if (params.get("attempt") or 1) > 1:
                text += f" (attempt {params['attempt']})"
            sys.stderr.write(f"\r\033[K  sync: {text}…")
            sys.stderr.flush()

    try:
        with Client(ctx.paths.socket, timeout=max(1.0, ctx.args.timeout)) as client:
            result = client.call("sync.force", {"wait": True}, on_notification=progress)
    except RPCError as exc:
        raise CliError(exc.message, code=1, rpc_code=exc.code, data=exc.data) from None
    except DaemonUnavailable as exc:
        raise CliError(f"sync did not finish: {exc}", "Check the daemon with: thrum daemon status") from None
    finally:
        if show:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
    if not result.get("ok", True):
        err = result.get("last_error") or "unknown error"
        hint = "Local data is safe; it is pushed on a later round. See: thrum sync status"
        raise CliError(f"sync failed: {err}", hint, data=result)

    def human(r):
        moved = f"pulled {r.get('pulled', 0)}, pushed {r.get('pushed', 0)} event(s)"
        if r.get("local_only") or r.get("sync_state") == "local":
            moved = f"committed {r.get('committed', 0)} event(s) locally"
        stages = ", ".join(f"{name} {ms} ms" for name, ms in (r.get("stages_ms") or {}).items())
        took = f"{r.get('duration_ms', 0)} ms" + (f" ({stages})" if stages else "")
        return [f"✓ Sync complete: {moved} in {took}"] + _sync_lines(r, "  ")
    ctx.emit(result, human)
    return 0


# == real time: `subscribe`, `unsubscribe`, `subscriptions`, `wait`, `ui` ============================
# (commands for push notifications and the web UI live here)

def _filter_flags(p, *, inbox_help: str) -> None:
    p.add_argument("--scope", action="append", help="messages with this scope type:value")
    p.add_argument("--mention", action="append", help="messages that mention @role, @name or @group")
    p.add_argument("--all", action="store_true", help="every message but your own (firehose)")
    p.add_argument("--inbox", action="store_true", help=inbox_help)


def _filter_params(ctx: Ctx, exclusive: bool) -> dict:
    args = ctx.args
    scopes = split_pairs(args.scope, "scope")
    mentions = split_list(args.mention)
    given = sum(1 for x in (scopes, mentions, args.all, args.inbox) if x)
    if exclusive and given > 1:
        raise UsageError("--scope, --mention, --inbox and --all are mutually exclusive")
    if exclusive and given == 0:
        raise UsageError("must specify one of: --scope, --mention, --inbox, or --all")
    if len(scopes) > 1 or len(mentions) > 1:
        raise UsageError("give --scope and --mention at most once")
    params: dict = {}
    if args.all:
        params["all"] = True
    if args.inbox:
        params["inbox"] = True
    if scopes:
        params["scope"] = scopes[0]
    if mentions:
        params["mention_role"] = mentions[0].lstrip("@")
    return params


def _describe_subscription(s: dict) -> str:
    if s.get("all"):
        return "All messages (firehose)"
    parts = []
    if s.get("scope_type"):
        parts.append(f"Scope ({s['scope_type']}:{s['scope_value']})")
    if s.get("mention_role"):
        parts.append(f"Mention (@{s['mention_role']})")
    if s.get("inbox"):
        parts.append("Inbox (messages for you)")
    return " or ".join(parts) or "?"


@command("subscribe")
def _setup_subscribe(c: Commands) -> None:
    p = c.add(c.sub, "subscribe", "Get push notifications for matching messages (kept until unsubscribe)",
              cmd_subscribe)
    _filter_flags(p, inbox_help="messages addressed to you (direct, role, group, broadcast)")
    _name_flag(p)


def cmd_subscribe(ctx: Ctx) -> int:
    params = _filter_params(ctx, exclusive=True)
    ident = ctx.identity()
    result = ctx.call("subscribe", ctx.caller(params, ident))
    ctx.emit(result, [f"✓ Subscription created: #{result['subscription_id']}",
                      f"  Session:    {result.get('session_id') or 'none'}",
                      f"  Created:    {local_time(result['created_at'])}",
                      "  Delivered to: WebSocket clients (thrum ui) and connections of this agent that stay open"])
    return 0


@command("unsubscribe")
def _setup_unsubscribe(c: Commands) -> None:
    p = c.add(c.sub, "unsubscribe", "Remove one of your subscriptions", cmd_unsubscribe)
    p.add_argument("subscription_id", metavar="ID")
    _name_flag(p)


def cmd_unsubscribe(ctx: Ctx) -> int:
    raw = ctx.args.subscription_id.lstrip("#")
    try:
        sid = int(raw)
    except ValueError:
        raise UsageError(f"invalid subscription ID: {ctx.args.subscription_id}") from None
    if sid <= 0:
        raise UsageError(f"invalid subscription ID: {ctx.args.subscription_id}")
    ident = ctx.identity()
    result = ctx.call("unsubscribe", ctx.caller({"subscription_id": sid}, ident))
    if result.get("removed"):
        ctx.emit(result, [f"✓ Subscription #{sid} removed"])
        return 0
    if ctx.json:
        ctx.emit(result)
    else:
        ctx.warn(f"✗ No subscription #{sid} (see: thrum subscriptions)")
    return 1


@command("subscriptions")
def _setup_subscriptions(c: Commands) -> None:
    p = c.add(c.sub, "subscriptions", "List your subscriptions", cmd_subscriptions)
    _name_flag(p)


def cmd_subscriptions(ctx: Ctx) -> int:
    ident = ctx.identity()
    result = ctx.call("subscriptions.list", ctx.caller({}, ident))

    def human(r):
        subs = r["subscriptions"]
        if not subs:
            return ["No active subscriptions.", "  Tip: Subscribe with 'thrum subscribe --scope module:X' or --all"]
        lines = [f"Active subscriptions ({len(subs)}):", ""]
        for s in subs:
            label = "Temporary #" if s.get("temporary") else "Subscription #"
            lines += [f"┌─ {label}{s['id']}", f"│  Type:       {_describe_subscription(s)}",
                      f"│  Created:    {local_time(s['created_at'])}", "└─"]
        return lines
    ctx.emit(result, human)
    return 0


@command("wait")
def _setup_wait(c: Commands) -> None:
    p = c.add(c.sub, "wait", "Wait for a message for you (or matching a filter), print it and mark it read",
              cmd_wait)
    _filter_flags(p, inbox_help="messages addressed to you (the default)")
    p.add_argument("--timeout", default="30s", help="give up after this long (30s, 5m, 1h; default 30s)")
    p.add_argument("--after", default="",
                   help="also accept unread messages created after this: -30s (ago), +60s (from now) or an "
                        "RFC 3339 time (default: now, i.e. only new messages)")
    _name_flag(p)
    import re

    # `--after -30s` (as the Go CLI and its prompts write it): a value that starts with -digit is not a flag.
    p._negative_number_matcher = re.compile(r"^-\d")


def _after_ns(text: str, now: int) -> int:
    from thrum.events import EventError, parse_timestamp_ns

    text = text.strip()
    if not text:
        return now
    if text[0] in "+-" or text[0].isdigit() and not text[:4].isdigit():
        try:
            return now + int(parse_duration(text) * 1e9)
        except ValueError as exc:
            raise UsageError(f'invalid --after duration "{text}": {exc} (examples: -30s, -5m, +60s)') from None
    try:
        return parse_timestamp_ns(text)
    except EventError as exc:
        raise UsageError(f'invalid --after duration "{text}": {exc} (examples: -30s, -5m, +60s)') from None


def cmd_wait(ctx: Ctx) -> int:
    """Block on push (a temporary subscription on this connection; see push.wait_for_message)."""
    import time

    from thrum.events import format_ns
    from thrum.push import wait_for_message
    from thrum.rpc import DaemonUnavailable, RPCError

    try:
        timeout = parse_duration(ctx.args.timeout)
    except ValueError as exc:
        raise UsageError(f"invalid timeout: {exc}") from None
    if timeout <= 0:
        raise UsageError(f"invalid timeout: {ctx.args.timeout} (must be positive)")
    filters = _filter_params(ctx, exclusive=False) or {"inbox": True}
    ident = ctx.identity()
    start = time.monotonic()
    after = format_ns(_after_ns(ctx.args.after, time.time_ns()))

    def listening(sub: dict) -> None:
        if ctx.args.verbose:
            print(f"Listening for messages after {after}", file=sys.stderr)
    try:
        msg = wait_for_message(ctx.client(), ident.name, filters, timeout, after, listening)
    except RPCError as exc:
        raise CliError(exc.message, rpc_code=exc.code, data=exc.data) from None
    except DaemonUnavailable as exc:
        raise CliError(f"lost the daemon while waiting: {exc}", "Check the daemon with: thrum daemon status") \
            from None
    if msg is not None:
        ctx.emit(msg, [f"✓ Message received: {msg['message_id']} from @{msg['agent_id']}"]
                 + ["  " + line for line in msg["body"]["content"].splitlines()])
        return 0
    print("Timeout: no matching messages received", file=sys.stderr)
    if ctx.json:
        print(json.dumps({"status": "timeout", "waited_seconds": round(time.monotonic() - start, 3)}))
    return 1


@command("ui")
def _setup_ui(c: Commands) -> None:
    p = c.add(c.sub, "ui", "Print (and on a desktop, open) the web UI's address with its access token", cmd_ui)
    p.add_argument("--no-open", action="store_true", help="only print the address")


def cmd_ui(ctx: Ctx) -> int:
    ctx.call("health")  # a clear error when the daemon is down
    port = _ws_port(ctx)
    try:
        with open(os.path.join(ctx.paths.var, "ws.token"), encoding="ascii") as f:
            token = f.read().strip()
    except OSError:
        token = ""
    if not port or not token:
        raise CliError("the daemon has no web server (see its log: " + ctx.paths.log + ")",
                       "Is the 'websockets' package installed? Then: thrum daemon restart")
    url = f"http://127.0.0.1:{port}/?token={token}"
    data = {"url": url, "port": port, "ws_url": f"ws://127.0.0.1:{port}/ws?token={token}"}
    opened = False
    desktop = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform == "darwin"
    if desktop and not ctx.args.no_open and not ctx.json:
        import webbrowser

        try:
            opened = webbrowser.open(url)
        except webbrowser.Error:
            opened = False
    ctx.emit(data, [f"Thrum UI: {url}",
                    "  Opened in your browser." if opened else "  Open this address in a browser on this machine.",
                    f"  After that, this browser remembers the token: http://127.0.0.1:{port}/ is enough.",
                    "  The token gives full access to this repository's thrum; do not share the link."])
    return 0


# == work context: `who-has`, `ping`, `overview`, `context`, `prime`, `setup`, `runtime`, `agent cleanup` ==
# Views of who is doing what (the daemon computes work contexts; the CLI never runs git here,
# except `prime` when the daemon is down), agent notes, worktree setup and runtime presets.

def _repo_relative(raw: str) -> tuple[str, str | None]:
    """A path as typed (relative to the cwd, absolute, from a subdirectory) -> (repo-relative path, toplevel)."""
    from thrum.paths import find_git_toplevel

    full = os.path.realpath(raw if os.path.isabs(raw) else os.path.join(os.getcwd(), raw))
    top = find_git_toplevel(full if os.path.isdir(full) else os.path.dirname(full))
    if top is None:
        return raw.strip("/"), None
    rel = os.path.relpath(full, os.path.realpath(top))
    if rel == ".":
        return "", top
    if rel.startswith(".."):
        return raw.strip("/"), None
    return rel.replace(os.sep, "/"), top


def _contexts(ctx: Ctx, **params) -> list[dict]:
    return ctx.call("agent.listContext", {k: v for k, v in params.items() if v})["contexts"]


def _file_change(wc: dict, path: str) -> dict:
    return next((f for f in wc.get("file_changes") or [] if f.get("path") == path), {})


_STATUS_LETTER = {"added": "A", "modified": "M", "deleted": "D", "renamed": "R", "copied": "C",
                  "conflicted": "U", "untracked": "?"}


def _file_row(f: dict) -> str:
    status = _STATUS_LETTER.get(f.get("status") or "modified", "M")
    counts = " (binary)" if f.get("binary") else f" (+{f.get('additions', 0)} -{f.get('deletions', 0)})"
    where = "" if f.get("uncommitted") else " [committed]"
    return f"{status} {f['path']}{counts}{where}"


def _branch_text(wc: dict) -> str:
    n = len(wc.get("unmerged_commits") or [])
    more = "+" if wc.get("unmerged_truncated") else ""
    return f"{wc.get('branch') or '-'} ({n}{more} commit{'s' if n != 1 else ''} ahead)"


def _files_text(wc: dict) -> str:
    return (f"{len(wc.get('changed_files') or [])} changed, "
            f"{len(wc.get('uncommitted_files') or [])} uncommitted")


def _wait_for_refresh(ctx: Ctx, session_id: str, since: str, timeout: float = 3.0) -> dict | None:
    """After a heartbeat: the session's context once the daemon re-read git (bounded wait)."""
    import time

    from thrum.events import parse_timestamp_ns

    since_ns = parse_timestamp_ns(since)
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        found = _contexts(ctx, session_id=session_id)
        wc = found[0] if found else None
        checked = wc.get("git_checked_at") if wc else None
        if wc is None or (checked and parse_timestamp_ns(checked) >= since_ns) or time.monotonic() > deadline:
            return wc
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


@command("who-has")
def _setup_who_has(c: Commands) -> None:
    p = c.add(c.sub, "who-has", "Which agents are changing a file (or anything under a directory)", cmd_who_has)
    p.add_argument("file", metavar="FILE", help="a path: relative to here, absolute, or repo-relative")


def cmd_who_has(ctx: Ctx) -> int:
    raw = ctx.args.file
    rel, _ = _repo_relative(raw)
    candidates = [rel]
    if not os.path.isabs(raw) and not os.path.exists(raw):
        # Typed from a subdirectory as a repo-relative path? Ask for that too.
        candidates.append(raw.strip("/").replace(os.sep, "/"))
    seen, contexts = set(), []
    for cand in dict.fromkeys(c for c in candidates if c):
        for wc in _contexts(ctx, file=cand, match="exact"):
            if wc["session_id"] not in seen:
                seen.add(wc["session_id"])
                contexts.append(wc)
    shown = rel or raw

    def human(r):
        if not r["contexts"]:
            return [f"No agents are currently editing {shown}"]
        lines = []
        for wc in r["contexts"]:
            for path in wc.get("matched_files") or [shown]:
                f = _file_change(wc, path)
                if f:
                    counts = "binary" if f.get("binary") else f"+{f.get('additions', 0)} -{f.get('deletions', 0)}"
                    when = f", changed {ago(f['last_modified'])}" if f.get("last_modified") else ""
                    state = "is editing" if f.get("uncommitted") else "changed (committed, not merged)"
                    detail = f" ({counts}, {f.get('status', 'modified')}{when})"
                else:
                    state, detail = "is editing", ""
                lines.append(f"@{wc['agent_id']} {state} {path}{detail}, branch: {wc.get('branch') or '-'}")
            if wc.get("intent"):
                lines.append(f"  Intent: {wc['intent']}")
            if wc.get("worktree_path"):
                lines.append(f"  Worktree: {wc['worktree_path']}")
        return lines
    ctx.emit({"file": shown, "contexts": contexts}, human)
    return 0


@command("ping")
def _setup_ping(c: Commands) -> None:
    p = c.add(c.sub, "ping", "Is an agent online? Its last heartbeat, intent, task and branch", cmd_ping)
    p.add_argument("agent", metavar="AGENT", help="@name, display name or @role")


def cmd_ping(ctx: Ctx) -> int:
    query = ctx.args.agent.lstrip("@")
    agents = ctx.call("agent.list", {})["agents"]
    matches = [a for a in agents if a["agent_id"] == query or (a.get("display") and a["display"] == query)] \
        or [a for a in agents if a["role"] == query]
    if not matches:
        import difflib

        names = sorted({a["agent_id"] for a in agents} | {a["role"] for a in agents})
        close = difflib.get_close_matches(query, names, n=3, cutoff=0.6)
        raise CliError(f"@{query}: not found (no agent registered with this name or role)",
                       f"Did you mean: {', '.join('@' + x for x in close)}?" if close
                       else "See who is registered: thrum agent list", data={"query": query})
    by_agent: dict[str, dict] = {}
    for wc in _contexts(ctx):
        by_agent.setdefault(wc["agent_id"], wc)
    for a in matches:
        if a["agent_id"] in by_agent:
            a["work_context"] = by_agent[a["agent_id"]]

    def human(r):
        lines = []
        for a in r["agents"]:
            if a["status"] == "active":
                lines.append(f"@{a['agent_id']}: active, last heartbeat {ago(a.get('last_seen_at', ''))}")
            else:
                lines.append(f"@{a['agent_id']}: offline (last seen {ago(a.get('last_seen_at', ''))})")
            wc = a.get("work_context") or {}
            for label, key in (("Intent", "intent"), ("Task", "current_task")):
                if wc.get(key) or a.get(key):
                    lines.append(f"  {label}: {wc.get(key) or a.get(key)}")
            if wc.get("branch"):
                lines.append(f"  Branch: {_branch_text(wc)}, files: {_files_text(wc)}")
        return lines
    ctx.emit({"query": query, "agents": matches}, human)
    return 0


def _context_table(contexts: list[dict]) -> list[str]:
    import shutil

    width = shutil.get_terminal_size((100, 24)).columns
    cols = [("AGENT", 16), ("SESSION", 14), ("BRANCH", 22), ("COMMITS", 7), ("FILES", 5), ("INTENT", 0),
            ("UPDATED", 10)]
    fixed = sum(w for _, w in cols) + len(cols) - 1
    intent_w = max(12, width - fixed)
    rows = []
    for wc in contexts:
        rows.append([f"@{wc['agent_id']}", wc["session_id"][:14], wc.get("branch") or "-",
                     str(len(wc.get("unmerged_commits") or [])), str(len(wc.get("changed_files") or [])),
                     wc.get("intent") or "-", ago(wc["git_updated_at"]) if wc.get("git_updated_at") else "-"])

    def fmt(values):
        out = []
        for (name, w), v in zip(cols, values):
            w = w or intent_w
            v = v if len(v) <= w else v[:w - 1] + "…"
            out.append(v.rjust(w) if name in ("COMMITS", "FILES") else v.ljust(w))
        return " ".join(out).rstrip()
    header = fmt([name for name, _ in cols])
    return [header, "-" * len(header)] + [fmt(r) for r in rows]


def _show_contexts(ctx: Ctx, agent: str = "") -> int:
    a = ctx.args  # `agent list --context` has no filters; `agent context` has them (--file: a substring)
    contexts = _contexts(ctx, agent_id=agent or getattr(a, "agent_id", ""), branch=getattr(a, "branch", ""),
                         file=getattr(a, "file", ""))
    detail = bool(agent) and len(contexts) == 1

    def human(r):
        if not r["contexts"]:
            return ["No active work contexts found.",
                    "  Tip: contexts appear for sessions started with 'thrum session start' in a git checkout"]
        if not detail:
            return _context_table(r["contexts"])
        wc = r["contexts"][0]
        lines = [f"Agent: @{wc['agent_id']} ({wc['session_id']})", f"Branch: {wc.get('branch') or '-'}"]
        if wc.get("worktree_path"):
            lines.append(f"Worktree: {wc['worktree_path']}")
        if wc.get("intent"):
            lines.append(f"Intent: {wc['intent']} (set {ago(wc.get('intent_updated_at', ''))})")
        if wc.get("current_task"):
            lines.append(f"Task: {wc['current_task']} (set {ago(wc.get('task_updated_at', ''))})")
        commits = wc.get("unmerged_commits") or []
        lines.append(f"Unmerged Commits ({len(commits)}):")
        lines += [f"  {c['sha'][:10]} {c['message']}" for c in commits[:20]]
        lines.append(f"Changed Files (vs main): {len(wc.get('changed_files') or [])}")
        lines += ["  " + _file_row(f) for f in (wc.get("file_changes") or [])[:40]]
        lines.append(f"Uncommitted: {len(wc.get('uncommitted_files') or [])}")
        if wc.get("git_updated_at"):
            lines.append(f"Updated: {ago(wc['git_updated_at'])}")
        return lines
    ctx.emit({"contexts": contexts}, human)
    return 0


def cmd_agent_context(ctx: Ctx) -> int:
    return _show_contexts(ctx, (ctx.args.target or "").lstrip("@"))


def _setup_agent_coordination(c: Commands, g) -> None:
    """`agent context` and `agent cleanup` (called from the agent group's setup)."""
    p = c.add(g, "context", "Work contexts: branch, commits, changed files and intent of each session",
              cmd_agent_context)
    p.add_argument("target", metavar="AGENT", nargs="?", help="one agent (@name): show its details")
    p.add_argument("--agent", dest="agent_id", default="", help="only this agent")
    p.add_argument("--branch", default="", help="only sessions on this branch")
    p.add_argument("--file", default="", help="only sessions changing this file")
    p = c.add(g, "cleanup", "Find (and with --force delete) agents nothing refers to any more", cmd_agent_cleanup)
    p.add_argument("--dry-run", action="store_true", help="list orphans, change nothing")
    p.add_argument("--force", action="store_true", help="delete the orphans without asking")
    p.add_argument("--threshold", type=int, default=30, metavar="DAYS",
                   help="also count agents not seen for this many days (0: never; default 30)")


def cmd_agent_cleanup(ctx: Ctx) -> int:
    a = ctx.args
    if a.dry_run and a.force:
        raise UsageError("--dry-run and --force are mutually exclusive")
    if a.threshold < 0:
        raise UsageError("--threshold must be 0 or more days")
    result = ctx.call("agent.cleanup", {"dry_run": a.dry_run, "threshold": a.threshold})
    if result["orphans"] and not a.dry_run:
        confirmed = a.force
        if not confirmed and sys.stdin.isatty() and not ctx.json:
            print("\n".join(_cleanup_lines(result, "Orphaned agents:")))
            confirmed = input("Delete these orphaned agents? [y/N] ").strip().lower() in ("y", "yes")
            if not confirmed:
                print("Cleanup canceled.")
                return 0
        if confirmed:
            result = ctx.call("agent.cleanup", {"force": True, "threshold": a.threshold})
    title = "Orphaned agents (dry-run mode):" if a.dry_run else "Agent cleanup results:"
    ctx.emit(result, lambda r: _cleanup_lines(r, title))
    return 0


def _cleanup_lines(r: dict, title: str) -> list[str]:
    if not r["orphans"]:
        lines = ["No orphaned agents found."]
    else:
        lines = [title, ""]
        for o in r["orphans"]:
            lines.append(f"Agent: {o['agent_id']} ({o['role']}, module: {o['module']})")
            if o.get("worktree"):
                lines.append(f"  Worktree:  {o['worktree']} [{'DELETED' if o['worktree_missing'] else 'exists'}]")
            if o.get("branch"):
                lines.append(f"  Branch:    {o['branch']} [{'DELETED' if o['branch_missing'] else 'exists'}]")
            lines.append(f"  Last seen: {ago(o['last_seen_at']) if o.get('last_seen_at') else 'never'}")
            lines.append(f"  Messages:  {o['message_count']}")
            lines += [f"  Why:       {why}" for why in o["reasons"]]
            lines.append("")
        if r["deleted"]:
            lines.append(f"✓ Deleted {len(r['deleted'])} orphaned agent(s): {', '.join(r['deleted'])}")
        elif not r["dry_run"]:
            lines.append("Nothing deleted. Run 'thrum agent cleanup --force' to delete them.")
    if r.get("skipped_other_clones"):
        lines.append(f"({r['skipped_other_clones']} agent(s) registered by other clones or machines were "
                     "not considered)")
    return lines


@command("overview")
def _setup_overview(c: Commands) -> None:
    p = c.add(c.sub, "overview", "You, your team and your inbox at a glance", cmd_overview)
    _name_flag(p)


def cmd_overview(ctx: Ctx) -> int:
    health = ctx.call("health")
    data: dict = {"health": health}
    ident = _optional_identity(ctx)
    contexts = _contexts(ctx)
    if ident is not None:
        agent = _whoami(ctx, ident)
        if agent is not None:
            data["agent"] = agent
            mine = [wc for wc in contexts if wc["agent_id"] == ident.name]
            if mine:
                data["work_context"] = mine[0]
            data["inbox"] = _inbox_counts(ctx, ident)
    data["team"] = [wc for wc in contexts if ident is None or wc["agent_id"] != ident.name]
    port = _ws_port(ctx)
    if port:
        data["websocket_port"] = port

    def human(d):
        lines = []
        a = d.get("agent")
        if a is None:
            lines.append("Not registered (use 'thrum quickstart --name NAME --role ROLE --module MODULE')")
        else:
            lines.append(f"You: @{a['agent_id']} ({a['role']} @ {a['module']})")
            lines.append(f"Session: active (started {ago(a['session_start'])})" if a.get("session_id")
                         else "Session: none (start one: thrum session start)")
            wc = d.get("work_context") or {}
            if wc.get("intent"):
                lines.append(f"Intent: {wc['intent']}")
            if wc.get("current_task"):
                lines.append(f"Task: {wc['current_task']}")
            if wc.get("branch"):
                lines.append(f"Branch: {_branch_text(wc)}, files: {_files_text(wc)}")
        lines += ["", f"Team ({len(d['team'])} other active session{'s' if len(d['team']) != 1 else ''}):"]
        for wc in d["team"]:
            bits = [f"  @{wc['agent_id']}", wc.get("branch") or "-", wc.get("intent") or "-",
                    ago(wc.get("last_seen_at") or wc.get("session_start", ""))]
            lines.append("  ".join(bits))
        if not d["team"]:
            lines.append("  (nobody else)")
        if "inbox" in d:
            i = d["inbox"]
            lines += ["", f"Inbox: {i['unread']} unread ({i['total']} total)" if i["unread"]
                      else f"Inbox: {i['total']} messages (all read)" if i["total"] else "Inbox: empty"]
        h = d["health"]
        lines.append(f"Sync: {h.get('sync_state', 'unknown')}")
        lines.append(f"Daemon: ok (v{h['version']}, up {duration_text(h['uptime_ms'])})")
        if d.get("websocket_port"):
            lines.append(f"UI: http://127.0.0.1:{d['websocket_port']}")
        return lines
    ctx.emit(data, human)
    return 0


def _optional_identity(ctx: Ctx):
    try:
        return ctx.identity()
    except CliError:
        return None


def _whoami(ctx: Ctx, ident) -> dict | None:
    from thrum.rpc import RPCError

    try:
        return ctx.client().call("agent.whoami", {"caller_agent_id": ident.name})
    except RPCError:
        return None


def _inbox_counts(ctx: Ctx, ident) -> dict:
    inbox = ctx.call("message.list", {"for_agent": ident.name, "for_agent_role": ident.role,
                                      "exclude_self": True, "caller_agent_id": ident.name, "page_size": 1})
    return {"total": inbox["total"], "unread": inbox["unread"]}


# -- context: per-agent notes that survive restarts and compaction ----------------------------------

@command("context")
def _setup_context(c: Commands) -> None:
    g = c.group("context", "Save and show an agent's notes (kept in the main .thrum/context/)")
    p = c.add(g, "save", "Save your notes (from --file, or stdin)", cmd_context_save)
    p.add_argument("--file", default="", help="read the notes from this file ('-' = stdin)")
    _context_agent_flag(p)
    p = c.add(g, "show", "Show your notes, after your preamble", cmd_context_show, aliases=["load"])
    p.add_argument("--raw", action="store_true", help="mark where the preamble ends (for tools)")
    p.add_argument("--no-preamble", action="store_true", help="only the notes")
    _context_agent_flag(p)
    p = c.add(g, "clear", "Delete your notes", cmd_context_clear)
    _context_agent_flag(p)
    p = c.add(g, "sync", "Publish your notes to other clones (through the log)", cmd_context_sync)
    _context_agent_flag(p)
    p = c.add(g, "preamble", "Show or set the text shown before your notes", cmd_context_preamble)
    p.add_argument("--init", action="store_true", help="write the default preamble")
    p.add_argument("--file", default="", help="set the preamble from this file ('-' = stdin)")
    _context_agent_flag(p)
    p = c.add(g, "prime", "Everything an agent needs to (re)start: same as 'thrum prime'", cmd_prime)
    _name_flag(p)


def _context_agent_flag(p) -> None:
    p.add_argument("--agent", default="", help="whose notes (default: your identity)")
    _name_flag(p)


def _context_name(ctx: Ctx) -> str:
    from thrum.identity import InvalidName, validate_name

    name = (ctx.args.agent or "").lstrip("@")
    if not name:
        return ctx.identity().name
    try:
        return validate_name(name, "context name")
    except InvalidName as exc:
        raise UsageError(str(exc)) from None


def _read_input(path: str, what: str) -> bytes:
    if path and path != "-":
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror}") from None
    if sys.stdin.isatty():
        print(f"Reading {what} from stdin (finish with Ctrl-D; use --file FILE to read a file)...",
              file=sys.stderr)
    return sys.stdin.buffer.read()


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


def _unb64(text) -> str:
    import base64

    return base64.b64decode(text).decode("utf-8", "replace") if text else ""


def cmd_context_save(ctx: Ctx) -> int:
    name = _context_name(ctx)
    data = _read_input(ctx.args.file, "context")
    result = ctx.call("context.save", {"agent_name": name, "content": _b64(data)})
    ctx.emit(result, [f"✓ Context saved for {name} ({result['size']} bytes)"])
    return 0


def cmd_context_show(ctx: Ctx) -> int:
    name = _context_name(ctx)
    r = ctx.call("context.show", {"agent_name": name, "include_preamble": not ctx.args.no_preamble})
    content, preamble = _unb64(r.get("content")), _unb64(r.get("preamble"))
    if ctx.json:
        ctx.emit({**{k: v for k, v in r.items() if k not in ("content", "preamble")}, "content": content,
                  "preamble": preamble if r.get("has_preamble") else None})
        return 0
    if not r["has_context"] and not preamble:
        print(f"No context saved for {name}")
        return 0
    out = []
    if ctx.args.raw:
        if preamble:
            out += [f"<!-- preamble: .thrum/context/{name}_preamble.md -->", preamble.rstrip(),
                    "<!-- end preamble -->", ""]
        out.append(content.rstrip())
    else:
        head = f"# Context for {name}"
        if r["has_context"]:
            src = ", synced from another clone" if r.get("source") == "sync" else ""
            head += f" ({r['size']} bytes, updated {ago(r['updated_at'])}{src})"
        out += [head, ""]
        if preamble:
            out += [preamble.rstrip(), ""]
        out.append(content.rstrip() if r["has_context"] else "(no notes saved yet: thrum context save)")
        if r.get("newer_synced_copy"):
            out += ["", f"Note: another clone synced a newer copy ({ago(r['newer_synced_copy']['updated_at'])})."]
    print("\n".join(out))
    return 0


def cmd_context_clear(ctx: Ctx) -> int:
    name = _context_name(ctx)
    result = ctx.call("context.clear", {"agent_name": name})
    ctx.emit(result, [f"✓ Context cleared for {name}"])
    return 0


def cmd_context_sync(ctx: Ctx) -> int:
    name = _context_name(ctx)
    result = ctx.call("context.sync", {"agent_name": name})
    lines = [("✓ " if result["synced"] else "") + result["message"]]
    if result["synced"]:
        lines.append("  Other clones receive it with the next sync (never in local-only mode).")
    ctx.emit(result, lines)
    return 0


def cmd_context_preamble(ctx: Ctx) -> int:
    name = _context_name(ctx)
    if ctx.args.init or ctx.args.file:
        params = {"agent_name": name}
        if ctx.args.file:
            params["content"] = _b64(_read_input(ctx.args.file, "preamble"))
        result = ctx.call("context.preamble.save", params)
        ctx.emit(result, [f"✓ Preamble saved for {name} ({result['size']} bytes)"])
        return 0
    r = ctx.call("context.preamble.show", {"agent_name": name})
    text = _unb64(r.get("content"))
    ctx.emit({"agent_name": name, "has_preamble": r["has_preamble"], "content": text if r["has_preamble"] else None},
             [text.rstrip()] if r["has_preamble"] else [f"No preamble for {name} (use --init to create default)"])
    return 0


# -- prime: everything an agent needs after a start, restart or context compaction ---------------------

@command("prime")
def _setup_prime(c: Commands) -> None:
    p = c.add(c.sub, "prime", "Identity, team, inbox, work context, notes and health in one view", cmd_prime)
    _name_flag(p)


_PRIME_COMMANDS = [
    "  thrum inbox --unread           messages for you",
    "  thrum reply MSG_ID \"text\"      answer a message",
    "  thrum send \"text\" --to @name   message an agent, @role or @everyone",
    "  thrum who-has FILE             who is changing a file",
    "  thrum team                     what everyone is working on",
    "  thrum session set-intent TEXT  tell the others what you are doing",
    "  thrum context save --file F    leave notes for your next session",
    "  thrum wait --timeout 10m       block until a message arrives",
]


def cmd_prime(ctx: Ctx) -> int:
    from thrum.paths import NotInitialized, RedirectError, find_git_toplevel, resolve

    try:
        paths = resolve(ctx.args.repo)
    except (NotInitialized, RedirectError) as exc:
        data = {"initialized": False, "error": str(exc),
                "instructions": ["thrum init", "thrum daemon start",
                                 "thrum quickstart --name NAME --role ROLE --module MODULE"]}
        ctx.emit(data, ["Thrum not initialized (run: thrum init && thrum daemon start)", "", "Commands:",
                        "  thrum init                     set up thrum in this repository",
                        "  thrum daemon start             start the repository's daemon",
                        "  thrum quickstart --name NAME --role ROLE --module MODULE"])
        return 0
    ctx._paths = paths
    top = find_git_toplevel(os.getcwd()) or paths.repo
    data: dict = {"repo_path": top}
    ident = _optional_identity(ctx)
    if ident is not None:
        data["identity"] = {"agent_id": ident.name, "role": ident.role, "module": ident.module,
                            "display": ident.display}
    try:
        ctx.client()
        up = True
    except CliError:
        up = False
    if up:
        _prime_from_daemon(ctx, data, ident)
    else:
        data["daemon"] = {"running": False, "hint": "thrum daemon start"}
        if ident is not None:  # the notes are plain files: readable without the daemon
            try:
                with open(os.path.join(paths.context_dir, ident.name + ".md"), encoding="utf-8") as f:
                    text = f.read()
                data["context"] = {"size": len(text.encode()), "updated_at": "", "content": text[:4000],
                                   "truncated": len(text) > 4000}
            except OSError:
                pass
        try:
            from thrum import gitctx

            data["work_context"] = gitctx.read_context(top, timeout=3.0)
        except Exception as exc:  # prime must never fail: it is what agents run first
            data["work_context"] = {"error": str(exc)}
    data.update(_prime_runtime(paths, top))
    ctx.emit(data, lambda d: _prime_lines(d))
    return 0


def _prime_from_daemon(ctx: Ctx, data: dict, ident) -> None:
    health = ctx.call("health")
    data["daemon"] = {"running": True, "status": health.get("status"), "version": health.get("version"),
                      "uptime_ms": health.get("uptime_ms"), "sync_state": health.get("sync_state")}
    agents = ctx.call("agent.list", {"agents_only": True})["agents"]
    contexts = _contexts(ctx)
    data["agents"] = {"total": len(agents), "active": sum(a["status"] == "active" for a in agents),
                      "list": [{k: a.get(k) for k in ("agent_id", "role", "module", "status", "intent", "branch")
                                if a.get(k)} for a in agents if a["status"] == "active"][:30]}
    if ident is None:
        return
    me = _whoami(ctx, ident)
    if me is None:
        data["identity"]["registered"] = False
        return
    if me.get("session_id"):
        data["session"] = {"session_id": me["session_id"], "started_at": me.get("session_start", "")}
    mine = [wc for wc in contexts if wc["agent_id"] == ident.name]
    if mine:
        data["work_context"] = mine[0]
        for key in ("intent", "current_task"):
            if mine[0].get(key) and "session" in data:
                data["session"][key] = mine[0][key]
    listing = ctx.call("message.list", {"for_agent": ident.name, "for_agent_role": ident.role, "exclude_self": True,
                                        "caller_agent_id": ident.name, "unread": True, "page_size": 5})
    counts = _inbox_counts(ctx, ident)
    data["messages"] = {**counts, "recent": [
        {"message_id": m["message_id"], "from": m["agent_id"], "priority": m.get("priority", "normal"),
         "content": m["body"]["content"][:200]} for m in listing["messages"]]}
    try:
        notes = ctx.call("context.show", {"agent_name": ident.name, "include_preamble": False})
    except CliError:  # e.g. a legacy name that cannot name a file; prime must still answer
        notes = {}
    if notes.get("has_context"):
        text = _unb64(notes.get("content"))
        data["context"] = {"size": notes["size"], "updated_at": notes.get("updated_at", ""),
                           "content": text[:4000], "truncated": len(text) > 4000}


def _prime_runtime(paths, top: str) -> dict:
    from thrum import runtimes
    from thrum.config import load_config

    primary = ((load_config(paths.config).get("runtime") or {}).get("primary")) or ""
    detected = runtimes.detect(top)
    name = primary or (detected[0]["runtime"] if detected else "cli-only")
    preset = runtimes.get_preset(name) or runtimes.PRESETS["cli-only"]
    instructions = preset["instructions_file"] if preset["instructions_file"] and not \
        preset["instructions_file"].startswith("~") else "CLAUDE.md"
    path = os.path.join(top, instructions)
    return {"runtime": name, "instructions": {"file": instructions, "has_thrum_section": runtimes.has_section(path)}}


def _prime_lines(d: dict) -> list[str]:
    lines = []
    ident = d.get("identity")
    if ident is None:
        lines.append("Agent: no identity here (register: thrum quickstart --name NAME --role ROLE --module MODULE)")
    else:
        note = "" if ident.get("registered", True) else " — not registered with the daemon"
        lines.append(f"Agent: @{ident['agent_id']} ({ident['role']} @ {ident['module']}){note}")
    s = d.get("session")
    daemon = d.get("daemon") or {}
    if s:
        lines.append(f"Session: {s['session_id']} (started {ago(s.get('started_at', ''))})")
        if s.get("intent"):
            lines.append(f"  Intent: {s['intent']}")
        if s.get("current_task"):
            lines.append(f"  Task: {s['current_task']}")
    elif daemon.get("running") and ident:
        lines.append("Session: none (start one: thrum session start)")
    if "agents" in d:
        a = d["agents"]
        lines += ["", f"Team: {a['total']} agent{'s' if a['total'] != 1 else ''} ({a['active']} active)"]
        for m in a["list"]:
            if m.get("status") == "active":
                extra = "".join(f", {m[k]}" for k in ("branch", "intent") if m.get(k))
                lines.append(f"  @{m['agent_id']} ({m['role']} @ {m['module']}{extra})")
    if "messages" in d:
        m = d["messages"]
        lines.append("")
        if m["unread"]:
            lines.append(f"Inbox: {m['unread']} unread ({m['total']} total) — process these before starting new work")
            for r in m["recent"]:
                text = " ".join(r["content"].split())
                lines.append(f"  @{r['from']}: {text[:70]}{'…' if len(text) > 70 else ''}  ({r['message_id']})")
        else:
            lines.append(f"Inbox: {m['total']} messages (all read)" if m["total"] else "Inbox: empty")
    wc = d.get("work_context")
    lines.append("")
    if not wc:
        lines.append("Git: no work context yet (heartbeat to refresh: thrum session heartbeat)")
    elif wc.get("error"):
        lines.append(f"Git: {wc['error']}")
    else:
        lines.append(f"Branch: {_branch_text(wc)}")
        lines.append(f"  Changed files: {len(wc.get('changed_files') or [])}")
        lines.append(f"  Uncommitted files: {len(wc.get('uncommitted_files') or [])}")
        lines += ["    " + _file_row(f) for f in (wc.get("file_changes") or [])[:15]]
    c = d.get("context")
    if c:
        when = f", updated {ago(c['updated_at'])}" if c.get("updated_at") else ""
        lines += ["", f"Your saved notes ({c['size']} bytes{when}):", c["content"].rstrip()]
        if c.get("truncated"):
            lines.append("  … (more: thrum context show)")
    lines.append("")
    if daemon.get("running"):
        lines.append(f"Daemon: {daemon.get('status', 'ok')} (v{daemon.get('version')}), "
                     f"up {duration_text(daemon.get('uptime_ms') or 0)}")
        lines.append(f"  Sync: {daemon.get('sync_state', 'unknown')}")
    else:
        lines.append("Daemon: not running — start it with: thrum daemon start")
        lines.append("  (messages, team and inbox need the daemon; the git context above was read directly)")
    lines += ["", "Commands:"] + _PRIME_COMMANDS
    inst = d.get("instructions") or {}
    if inst and not inst.get("has_thrum_section"):
        flag = "" if inst["file"] == "CLAUDE.md" else f" --file {inst['file']}"
        lines += ["", f"Tip: Run 'thrum setup claude-md --apply{flag}' to add agent coordination instructions "
                      f"to your {inst['file']}"]
    return lines


# -- setup: feature worktrees and agent instructions ---------------------------------------------------

@command("setup")
def _setup_setup(c: Commands) -> None:
    p = c.add(c.sub, "setup",
              "Link this worktree to the main repository's thrum (or: setup claude-md, mcp, hooks)",
              cmd_setup_worktree)
    p.add_argument("--main-repo", default="", help="the main checkout (default: found through git)")
    sub = p.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    w = c.add(sub, "worktree", "Link this worktree to the main repository's thrum", cmd_setup_worktree)
    w.add_argument("--main-repo", default="", help="the main checkout (default: found through git)")
    m = c.add(sub, "claude-md", "Print, or with --apply add, the thrum section of CLAUDE.md", cmd_setup_claude_md)
    m.add_argument("--apply", action="store_true", help="write it into the file (default: print it)")
    m.add_argument("--force", action="store_true", help="replace an existing thrum section")
    m.add_argument("--file", default="CLAUDE.md", help="instructions file, relative to the repository root")


def cmd_setup_worktree(ctx: Ctx) -> int:
    from thrum import gitctx
    from thrum.initialize import InitError, write_redirect
    from thrum.paths import find_git_toplevel

    root = find_git_toplevel(os.path.abspath(ctx.args.repo or os.getcwd()))
    if root is None:
        raise CliError("not inside a git checkout")
    main = ctx.args.main_repo
    if not main:
        common = gitctx.git_common_dir(root)
        if common is None or os.path.basename(os.path.normpath(common)) != ".git":
            raise CliError("cannot find the main checkout of this repository", "Pass --main-repo PATH")
        main = os.path.dirname(os.path.normpath(common))
    main = os.path.abspath(main)
    main_thrum = os.path.join(main, ".thrum")
    if not os.path.isdir(main_thrum):
        raise CliError("main repo not initialized — run 'thrum init' in the main repo first", f"Main repo: {main}")
    try:
        write_redirect(root, main_thrum)
    except InitError as exc:
        raise CliError(str(exc), "Run this in a feature worktree (or pass --main-repo)") from None
    from thrum.daemon import socket_answers

    connected = socket_answers(os.path.join(main_thrum, "var", "thrum.sock"))
    data = {"worktree": root, "main_repo": main, "redirect": main_thrum, "daemon_running": connected}
    ctx.emit(data, [f"  Redirect: .thrum/redirect → {main_thrum}",
                    "  Created: .thrum/identities/ (local to this worktree)",
                    "Connected to daemon" if connected else "Daemon not running — start it with: thrum daemon start",
                    "✓ Thrum worktree setup complete"])
    return 0


def cmd_setup_claude_md(ctx: Ctx) -> int:
    from thrum import runtimes
    from thrum.identity import atomic_write
    from thrum.paths import find_git_toplevel

    section = runtimes.instructions_section()
    if not ctx.args.apply:
        if ctx.json:
            ctx.emit({"section": section})
        else:
            sys.stdout.write(section)
        return 0
    rel = ctx.args.file
    if os.path.isabs(rel) or ".." in rel.replace("\\", "/").split("/"):
        raise UsageError("--file must be a path inside the repository")
    root = find_git_toplevel(os.path.abspath(ctx.args.repo or os.getcwd())) or os.getcwd()
    path = os.path.join(root, rel)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        text, mode = "", 0o644
    new, action = runtimes.apply_section(text, section, force=ctx.args.force)
    if action != "skipped":
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, new.encode(), mode)
    data = {"path": path, "action": action}
    if ctx.json:
        ctx.emit(data)
    elif action == "skipped":
        print("Skipped: Thrum section already exists (use --force to overwrite)", file=sys.stderr)
    elif not ctx.quiet:
        print(f"✓ Thrum section written to {path}", file=sys.stderr)
    return 0


# -- runtimes --------------------------------------------------------------------------------------

@command("runtime")
def _setup_runtime(c: Commands) -> None:
    g = c.group("runtime", "Agent runtime presets (Claude Code, Codex, Cursor, …)")
    c.add(g, "list", "List runtime presets and the default", cmd_runtime_list)
    p = c.add(g, "show", "Show one preset", cmd_runtime_show)
    p.add_argument("runtime", metavar="NAME")
    p = c.add(g, "set-default", "Use this runtime by default (init, quickstart, prime)", cmd_runtime_set_default)
    p.add_argument("runtime", metavar="NAME")


def _default_runtime(ctx: Ctx) -> str:
    from thrum.config import load_config

    try:
        return (load_config(ctx.paths.config).get("runtime") or {}).get("primary") or ""
    except CliError:
        return ""


def cmd_runtime_list(ctx: Ctx) -> int:
    from thrum import runtimes

    presets = runtimes.load_presets()
    default = _default_runtime(ctx)
    data = {"presets": [presets[k] for k in sorted(presets)]}
    if default:
        data["default_runtime"] = default

    def flags(pr):
        if pr["mcp_supported"] and pr["hooks_supported"]:
            return "MCP ✓, Hooks ✓"
        return "MCP ✓" if pr["mcp_supported"] else "CLI-only"

    def human(d):
        lines = ["Built-in Runtimes:"]
        lines += [f"  {p['name']:<10} {p['display_name']} ({flags(p)})" for p in d["presets"] if p["builtin"]]
        custom = [p for p in d["presets"] if not p["builtin"]]
        if custom:
            lines += ["", "Custom Runtimes:"] + [f"  {p['name']:<10} {p['display_name']} ({flags(p)})"
                                                for p in custom]
        lines += ["", f"Default: {d.get('default_runtime') or '(none set; detected at init)'}"]
        return lines
    ctx.emit(data, human)
    return 0


def _preset_or_fail(name: str) -> dict:
    from thrum import runtimes

    preset = runtimes.get_preset(name)
    if preset is None:
        raise CliError(f"runtime preset \"{name}\" not found",
                       "Known: " + ", ".join(sorted(runtimes.load_presets())))
    return preset


def cmd_runtime_show(ctx: Ctx) -> int:
    p = _preset_or_fail(ctx.args.runtime)
    rows = [("Name:", p["name"]), ("Display Name:", p["display_name"]), ("Command:", p["command"]),
            ("MCP Supported:", str(p["mcp_supported"]).lower()), ("Hooks Supported:", str(p["hooks_supported"]).lower()),
            ("Instructions:", p["instructions_file"] or "-"), ("MCP Config:", p["mcp_config_path"] or "-"),
            ("Setup Notes:", p["setup_notes"] or "-")]
    ctx.emit({k: v for k, v in p.items() if k != "builtin"}, [f"{k:<17} {v}" for k, v in rows])
    return 0


def cmd_runtime_set_default(ctx: Ctx) -> int:
    from thrum.config import load_config, save_config

    p = _preset_or_fail(ctx.args.runtime)
    data = load_config(ctx.paths.config)
    runtime = data.get("runtime") if isinstance(data.get("runtime"), dict) else {}
    runtime["primary"] = p["name"]
    data["runtime"] = runtime
    save_config(ctx.paths.config, data)
    ctx.emit({"default_runtime": p["name"], "config_file": ctx.paths.config},
             [f"✓ Default runtime set to: {p['name']}"])
    return 0


def _choose_runtime(ctx: Ctx, root: str, explicit: str, *, prompt: bool) -> tuple[str, list[dict], str]:
    """(runtime, detected, how): --runtime > the configured default > detection > cli-only."""
    from thrum import runtimes

    detected = runtimes.detect(root)
    if explicit:
        if explicit not in runtimes.RUNTIME_CHOICES and runtimes.get_preset(explicit) is None:
            raise UsageError(f"unknown runtime \"{explicit}\"; supported: {', '.join(runtimes.RUNTIME_CHOICES)}")
        return explicit, detected, "flag"
    configured = _default_runtime(ctx) if os.path.isdir(os.path.join(root, ".thrum")) else ""
    if configured:
        return configured, detected, "config"
    if not detected:
        return "cli-only", detected, "none"
    if prompt and len(detected) > 1 and sys.stdin.isatty() and not ctx.quiet and not ctx.json:
        print("Detected AI runtimes:")
        for i, d in enumerate(detected, 1):
            print(f"  {i}. {runtimes.PRESETS[d['runtime']]['display_name']:<16} ({d['evidence']})")
        answer = input("Which is your primary runtime? [1]: ").strip() or "1"
        if not answer.isdigit() or not 1 <= int(answer) <= len(detected):
            raise UsageError(f"invalid selection \"{answer}\"; enter a number 1-{len(detected)}")
        return detected[int(answer) - 1]["runtime"], detected, "chosen"
    return detected[0]["runtime"], detected, "detected"


def _runtime_files(ctx: Ctx, root: str, runtime: str, *, force: bool, dry_run: bool, name: str = "",
                   role: str = "", module: str = "") -> dict:
    from thrum import runtimes

    for value, what in ((name, "name"), (role, "role"), (module, "module")):
        if value and not set(value) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-"):
            raise UsageError(f"invalid agent {what} \"{value}\": must contain only lowercase alphanumeric, "
                             "underscore, or hyphen")
    plan = runtimes.plan_files(root, runtime, force=force, name=name, role=role or "implementer",
                               module=module or "main")
    if not dry_run:
        runtimes.write_files(root, plan)
    return {"runtime": runtime, "dry_run": dry_run,
            "files": [{k: v for k, v in item.items() if k not in ("content", "mode")} for item in plan]}


def _runtime_file_lines(result: dict) -> list[str]:
    if result["dry_run"]:
        return [f"Dry run for runtime: {result['runtime']}", "", "Would create/update:"] + [
            f"  {'skip' if f['action'] == 'skip' else f['action']} {f['path']}" for f in result["files"]]
    lines = [f"Runtime: {result['runtime']}", ""]
    for f in result["files"]:
        lines.append(f"  SKIP {f['path']} ({f['skip_reason']})" if f["action"] == "skip" else f"  ✓ {f['path']}")
    return lines


def _save_runtime(ctx: Ctx, runtime: str) -> None:
    from thrum.config import load_config, save_config

    data = load_config(ctx.paths.config)
    section = data.get("runtime") if isinstance(data.get("runtime"), dict) else {}
    if section.get("primary") != runtime:
        section["primary"] = runtime
        data["runtime"] = section
        save_config(ctx.paths.config, data)


# == MCP: `mcp serve`, `setup mcp` ===========================================================
# The server itself is thrum/mcp_server.py (the only module that imports the `mcp` SDK, inside
# serve()); the client configuration files are thrum/mcp_config.py.

@command("mcp")
def _setup_mcp(c: Commands) -> None:
    g = c.group("mcp", "MCP server: thrum's messaging tools for Claude Code, Codex, Cursor, Gemini, …")
    p = c.add(g, "serve", "Serve thrum's MCP tools on stdin/stdout (what an agent tool's MCP configuration runs)",
              cmd_mcp_serve)
    p.add_argument("--agent-id", metavar="NAME",
                   help="act as this agent (default: THRUM_NAME, else this worktree's only identity)")


def cmd_mcp_serve(ctx: Ctx) -> int:
    from thrum.identity import InvalidName, validate_name

    agent_id = ctx.args.agent_id
    if agent_id:
        try:
            validate_name(agent_id.lstrip("@"))
        except InvalidName as exc:
            raise UsageError(f"invalid --agent-id: {exc}") from None
        agent_id = agent_id.lstrip("@")
    from thrum.mcp_server import serve

    return serve(ctx.args.repo, agent_id, debug=bool(getattr(ctx.args, "debug", False)))


# `setup mcp`. The work-context section may define `setup` (worktree, claude-md) above this
# point: then `mcp` joins its sub-commands; otherwise `setup` is a group holding `mcp` alone.
_SETUP_BEFORE_MCP = COMMAND_TABLE.get("setup")


@command("setup", *(_SETUP_BEFORE_MCP[1] if _SETUP_BEFORE_MCP else ()))
def _setup_setup_with_mcp(c: Commands) -> None:
    if _SETUP_BEFORE_MCP is None:
        sub = c.group("setup", "Set up thrum for an agent tool (setup mcp)")
    else:
        getattr(sys.modules[__name__], _SETUP_BEFORE_MCP[0])(c)
        parser = c.sub.choices["setup"]
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None:
            sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    p = c.add(sub, "mcp", "Add (or update) the thrum MCP server in an agent tool's MCP configuration",
              cmd_setup_mcp)
    p.add_argument("--runtime", choices=("claude", "cursor", "codex", "gemini", "auggie"),
                   help="the tool to configure (default: the runtime set with 'thrum runtime set-default', else "
                        "the one this checkout or environment shows): claude (.mcp.json), cursor "
                        "(.cursor/mcp.json), codex (~/.codex/config.toml), gemini (.gemini/settings.json), "
                        "auggie (.augment/settings.json)")
    p.add_argument("--agent-id", metavar="NAME", help="pin the server to this agent (default: THRUM_NAME, else "
                   "the worktree's only identity, decided when the server starts)")
    p.add_argument("--config", metavar="PATH", help="write this file instead of the tool's default one")
    p.add_argument("--command", default="thrum",
                   help="how the tool should start thrum (default: thrum; e.g. \"python3 -m thrum\")")
    p.add_argument("--dry-run", action="store_true", help="show what would change; write nothing")
    h = c.add(sub, "hooks", "Add thrum's hooks to an agent runtime, so messages reach the agent on their own",
              cmd_setup_hooks)
    h.add_argument("--runtime", required=True, choices=("claude-code", "claude", "codex", "gemini", "cursor"),
                   help="claude-code (.claude/settings.json), codex (.codex/hooks.json and .codex/config.toml), "
                        "gemini (.gemini/settings.json) or cursor (.cursor/hooks.json)")
    h.add_argument("--name", metavar="AGENT", default="",
                   help="the hooks act as this agent (default: THRUM_NAME in the runtime's environment, else "
                        "the worktree's only identity)")
    h.add_argument("--command", default="",
                   help="how the runtime should run thrum (default: thrum when it is on PATH, else its full path)")
    h.add_argument("--remove", action="store_true", help="take thrum's hooks out again (nothing else)")
    h.add_argument("--dry-run", action="store_true", help="show what would change; write nothing")


def _setup_target(ctx: Ctx, agent: str, flag: str) -> tuple[str, str]:
    """Where `setup mcp|hooks` writes (the checkout's top) and the agent named by `flag`, validated."""
    from thrum.identity import InvalidName, validate_name
    from thrum.paths import find_git_toplevel, find_repo_root

    start = os.path.abspath(ctx.args.repo or os.getcwd())
    root = find_git_toplevel(start) or find_repo_root(start) or start
    agent = (agent or "").lstrip("@")
    if agent:
        try:
            validate_name(agent)
        except InvalidName as exc:
            raise UsageError(f"invalid {flag}: {exc}") from None
    return root, agent


def cmd_setup_hooks(ctx: Ctx) -> int:
    from thrum import hook_setup

    a = ctx.args
    root, name = _setup_target(ctx, a.name, "--name")
    command = a.command.strip() or hook_setup.default_command()
    try:
        plan = hook_setup.plan(a.runtime, root, command, name, remove=a.remove)
        if not a.dry_run:
            hook_setup.apply(plan)
    except hook_setup.SetupError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot write {exc.filename or ''}: {exc.strerror or exc}") from None
    changed = [f for f in plan["files"] if f["action"] != "unchanged"]
    data = {"runtime": plan["runtime"], "dry_run": bool(a.dry_run), "removed": bool(a.remove),
            "command": command, "files": [{"path": f["path"], "action": f["action"]} for f in plan["files"]],
            "changed": bool(changed), "next": plan["next"] if changed or a.dry_run else []}

    def human(d):
        display = plan["display"]
        if not changed:
            what = "no thrum hooks to remove" if a.remove else "thrum's hooks are already set up"
            return [f"✓ {display}: {what}; nothing to change"]
        if a.dry_run:
            lines = [f"Would change ({display}):"]
            for f in changed:
                lines += ["", f"--- {f['path']} ({f['action']})"] + _diff_lines(f["old"] or "", f["text"] or "")
            return lines
        verb = "Removed thrum's hooks from" if a.remove else "Set up thrum's hooks in"
        lines = [f"✓ {verb} {display}: " + ", ".join(os.path.relpath(f["path"], root) for f in changed)]
        if not a.remove:
            lines.append(f"  Runs: {command} hook {plan['runtime']} EVENT" + (f" --name {name}" if name else ""))
        lines += [f"  Next: {n}" for n in d["next"]]
        return lines
    ctx.emit(data, human)
    return 0


def _diff_lines(old: str, new: str) -> list[str]:
    import difflib

    return [line.rstrip("\n") for line in difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                               "before", "after", n=2)][2:]


def cmd_setup_mcp(ctx: Ctx) -> int:
    import shlex
    import shutil

    from thrum import mcp_config

    a = ctx.args
    root, agent_id = _setup_target(ctx, a.agent_id, "--agent-id")
    try:
        command = shlex.split(a.command)
    except ValueError as exc:
        raise UsageError(f"invalid --command: {exc}") from None
    if not command:
        raise UsageError("--command must not be empty")
    runtime, how = a.runtime, "chosen"
    if not runtime:
        from thrum.config import load_config
        from thrum.paths import NotInitialized, RedirectError, resolve

        try:
            primary = load_config(resolve(a.repo).config).get("runtime") or {}
            primary = primary.get("primary", "") if isinstance(primary, dict) else ""
        except (NotInitialized, RedirectError):
            primary = ""
        found = mcp_config.detect(root)
        if primary in mcp_config.RUNTIMES:
            runtime, how = primary, "the default runtime"
        elif len(found) == 1:
            runtime, how = found[0]["runtime"], f"detected: {found[0]['evidence']}"
        elif found:
            raise UsageError("several agent tools found here ("
                             + ", ".join(f"{d['runtime']}: {d['evidence']}" for d in found) + ")",
                             "Choose one with: thrum setup mcp --runtime " + "|".join(d["runtime"] for d in found))
        else:
            raise UsageError("no agent tool (Claude Code, Cursor, Codex, Gemini CLI, Auggie) found in this checkout",
                             "Choose one with: thrum setup mcp --runtime claude|cursor|codex|gemini|auggie")
    display, _, _, next_step = mcp_config.RUNTIMES[runtime]
    path = os.path.abspath(a.config) if a.config else mcp_config.config_path(runtime, root)
    entry = mcp_config.server_entry(runtime, command, agent_id)
    try:
        plan = mcp_config.plan(runtime, path, entry)
        if not a.dry_run and plan["action"] != "unchanged":
            mcp_config.write(path, plan["text"])
    except mcp_config.SetupError as exc:
        raise CliError(exc.message, exc.hint) from None
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
    warnings = []
    if shutil.which(command[0]) is None:
        warnings.append(f"'{command[0]}' is not on this PATH, so {display} may fail to start the server: install "
                        "thrum with pipx, or pass --command with a full path")
    data = {"runtime": runtime, "runtime_source": how, "path": path, "action": plan["action"],
            "entry": plan["new"], "dry_run": bool(a.dry_run)}
    if warnings:
        data["warnings"] = warnings
    run = " ".join(shlex.quote(x) for x in [plan["new"]["command"], *plan["new"].get("args", [])])

    def human(d):
        if d["action"] == "unchanged":
            return [f"✓ The thrum MCP server is already set up in {path} ({display}); nothing to change",
                    f"  Runs: {run}"]
        if a.dry_run:
            snippet = (plan["text"] if plan["format"] == "toml"
                       else json.dumps({"mcpServers": {"thrum": d["entry"]}}, indent=2))
            return ([f"Would {'create' if d['action'] == 'create' else 'update'} {path} ({display}, {how}):", ""]
                    + ["  " + ln for ln in snippet.splitlines()])
        done = {"create": f"Created {path} with the thrum MCP server",
                "add": f"Added the thrum MCP server to {path}",
                "update": f"Updated the thrum MCP server in {path}"}[d["action"]]
        return [f"✓ {done} ({display}, {how})", f"  Runs: {run}", f"  Next: {next_step}"]
    ctx.emit(data, human)
    for w in warnings:
        if not ctx.json:
            ctx.warn(f"Warning: {w}")
    return 0
