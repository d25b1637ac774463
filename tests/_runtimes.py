"""Run the real agent runtimes (Claude Code, Codex, Gemini CLI) against the scripted model server.

Each runner owns a throwaway directory: its own HOME (and CODEX_HOME), the runtime's config pointing at
a `_models.ModelServer` on 127.0.0.1, and an environment with nothing of the caller's runtime settings
(no API keys, no base URLs, auto-update and telemetry off). The runtimes never reach the network.

Every process a runner starts carries the environment variable ``THRUM_RUNTIME_SANDBOX=<its dir>``,
which all descendants inherit, including the hooks the runtimes start in sessions of their own and
the tmux server of an interactive session. `Runtime.leftovers` finds them through /proc and
`Runtime.close` kills them: a test can assert that nothing outlived a run, and nothing ever does
outlive the test.

The runtimes are the pinned npm packages in tests/runtimes (``npm ci`` there installs them).
`require_runtimes` skips a test when one is missing, or fails it under CI (``CI`` set).

Usage::

    with ModelServer(Script(Shell("echo hi"), Text("done"))) as models, ClaudeCode(models, tmp_path) as cc:
        rc, out, err = cc.run("say hi")
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, NamedTuple

from _models import FACTOR, ModelServer

__all__ = ["RUNTIMES", "BIN", "runtime_bin", "missing_runtimes", "require_runtimes", "Completed", "Runtime",
           "ClaudeCode", "Codex", "Gemini", "ClaudeTmux", "HookRecorder", "sandbox_pids", "kill_pids"]

RUNTIMES_DIR = Path(__file__).resolve().parent / "runtimes"
BIN = RUNTIMES_DIR / "node_modules" / ".bin"
RUNTIMES = ("claude", "codex", "gemini")
MARKER = "THRUM_RUNTIME_SANDBOX"
API_KEY = "sk-test-scripted-0123456789abcdefghij"  # any key: the scripted server ignores it

# Caller's variables that would point a runtime elsewhere or change its behaviour.
_STRIP_PREFIXES = ("ANTHROPIC_", "CLAUDE", "OPENAI_", "CODEX_", "GEMINI_", "GOOGLE_", "VERTEX", "THRUM_", "TMUX",
                   "AWS_BEARER", "OTEL_", "NO_COLOR", "FORCE_COLOR")
_STRIP = {"IS_SANDBOX", "CI", "GITHUB_ACTIONS", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
          "ALL_PROXY", "all_proxy", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"}


def runtime_bin(name: str) -> Path:
    """The pinned binary of runtime `name` ("claude", "codex" or "gemini")."""
    return BIN / name


def missing_runtimes(*names: str) -> list[str]:
    """The runtimes among `names` (default: all) whose binary is not installed under tests/runtimes."""
    return [n for n in (names or RUNTIMES) if not os.access(runtime_bin(n), os.X_OK)]


def require_runtimes(*names: str) -> None:
    """Skip the calling test if a runtime is missing, or fail it under CI (env ``CI`` set), where
    .ci/run must have installed them."""
    import pytest

    missing = missing_runtimes(*names)
    if not missing:
        return
    why = (f"agent runtime(s) {', '.join(missing)} not installed in {BIN} "
           f"(run `npm ci --prefix {RUNTIMES_DIR}`)")
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


class Completed(NamedTuple):
    returncode: int  # -9 when the run hit its timeout and was killed
    stdout: str
    stderr: str


# --- processes ---------------------------------------------------------------------------------------------

def sandbox_pids(marker: str) -> list[int]:
    """Live processes whose environment carries ``THRUM_RUNTIME_SANDBOX=marker`` (zombies excluded)."""
    needle = f"{MARKER}={marker}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ and state not in (b"Z", b"X"):
            pids.append(int(entry))
    return pids


def kill_pids(pids: list[int], grace: float = 2.0) -> None:
    """SIGTERM then, after `grace` seconds, SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        pids = [p for p in pids if _alive(p)]
        if not pids:
            return


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def _run(argv: list[str], cwd: Path, env: dict, timeout: float) -> Completed:
    # Output goes to files, not pipes: a hook or tool that outlives the runtime keeps its inherited
    # stdout open, and a pipe reader would wait for it. Whatever outlives a normal exit is left alone,
    # for the caller to see (Runtime.leftovers) and kill (Runtime.close); a timed-out run is killed whole.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout * FACTOR)
        except subprocess.TimeoutExpired:
            kill_pids(sandbox_pids(env[MARKER]) + [proc.pid], grace=0)
            proc.wait()
            rc = -signal.SIGKILL
        out.seek(0)
        err.seek(0)
        return Completed(rc, out.read().decode(errors="replace"), err.read().decode(errors="replace"))


def _wait(predicate: Callable[[], object], timeout: float, what: str):
    deadline = time.monotonic() + timeout * FACTOR
    interval = 0.02
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout * FACTOR:g}s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.25)


# --- runners -----------------------------------------------------------------------------------------------

class Runtime:
    """One runtime in one throwaway directory `root`: ``root/home`` is HOME; `cwd` (default
    ``root/repo``, created) is where it runs. Subclasses set `name` and build the argv and config."""

    name = ""

    def __init__(self, models: ModelServer, root: Path | str, cwd: Path | str | None = None,
                 env: dict | None = None) -> None:
        self.models = models
        self.root = Path(root)
        self.home = self.root / "home"
        self.cwd = Path(cwd) if cwd is not None else self.root / "repo"
        self.home.mkdir(parents=True, exist_ok=True)
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.marker = str(self.root.resolve())
        self.seconds = 0.0  # how long the last run() took
        base = {k: v for k, v in os.environ.items() if k not in _STRIP and not k.startswith(_STRIP_PREFIXES)}
        self.env = {**base, "HOME": str(self.home), "TERM": "xterm-256color", MARKER: self.marker,
                    "DISABLE_AUTOUPDATER": "1", "NO_UPDATE_NOTIFIER": "1", **self._env(), **(env or {})}
        self._configure()

    # subclass hooks
    def _env(self) -> dict:
        return {}

    def _configure(self) -> None:
        pass

    def argv(self, prompt: str, args: tuple = ()) -> list[str]:
        raise NotImplementedError

    def hooks_file(self) -> Path:
        """Where this runtime reads project hooks."""
        raise NotImplementedError

    # API
    def run(self, prompt: str, timeout: float = 60, args: tuple | list = ()) -> Completed:
        """Run non-interactively in `cwd` with `prompt`; kill the run after `timeout` seconds (scaled)."""
        started = time.monotonic()
        result = _run(self.argv(prompt, tuple(args)), self.cwd, self.env, timeout)
        self.seconds = time.monotonic() - started
        return result

    def write_hooks(self, hooks: dict) -> Path:
        """Install project hooks (``{event: [{"matcher": ..., "hooks": [{"type": "command", ...}]}]}``)
        into this runtime's project config, keeping any other settings there."""
        path = self.hooks_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.loads(path.read_text()) if path.exists() else {}
        data["hooks"] = hooks
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path

    def leftovers(self) -> list[int]:
        """Processes started by this runner (any depth) that are still alive."""
        return sandbox_pids(self.marker)

    def close(self) -> None:
        kill_pids(self.leftovers())

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ClaudeCode(Runtime):
    """Claude Code: ``claude -p PROMPT --dangerously-skip-permissions`` (print mode)."""

    name = "claude"

    def _env(self) -> dict:
        return {"ANTHROPIC_BASE_URL": self.models.url, "ANTHROPIC_API_KEY": API_KEY,
                "IS_SANDBOX": "1",  # as root, --dangerously-skip-permissions refuses to start without it
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
                "DISABLE_ERROR_REPORTING": "1", "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_TERMINAL_TITLE": "1"}

    def _configure(self) -> None:
        state = {
            "hasCompletedOnboarding": True,
            "lastOnboardingVersion": "2.1.197",
            "bypassPermissionsModeAccepted": True,
            "customApiKeyResponses": {"approved": [API_KEY[-20:]], "rejected": []},
            "projects": {str(p): {"hasTrustDialogAccepted": True, "hasCompletedProjectOnboarding": True,
                                  "projectOnboardingSeenCount": 1}
                         for p in {str(self.cwd), str(self.cwd.resolve())}},
        }
        (self.home / ".claude.json").write_text(json.dumps(state, indent=2))
        settings = self.home / ".claude" / "settings.json"
        settings.parent.mkdir(exist_ok=True)
        settings.write_text(json.dumps({"skipDangerousModePermissionPrompt": True}, indent=2))

    def argv(self, prompt: str, args: tuple = ()) -> list[str]:
        return [str(runtime_bin("claude")), "-p", prompt, "--dangerously-skip-permissions", *args]

    def hooks_file(self) -> Path:
        return self.cwd / ".claude" / "settings.json"


class Codex(Runtime):
    """Codex: ``codex exec`` with approvals, sandbox and hook trust bypassed, stdin closed."""

    name = "codex"
    model = "gpt-5.5"

    def _env(self) -> dict:
        return {"CODEX_HOME": str(self.home / ".codex"), "SCRIPTED_API_KEY": API_KEY}

    def _configure(self) -> None:
        codex_home = self.home / ".codex"
        codex_home.mkdir(exist_ok=True)
        (codex_home / "config.toml").write_text(f"""\
model = "{self.model}"
model_provider = "scripted"
check_for_update_on_startup = false

[model_providers.scripted]
name = "scripted"
base_url = "{self.models.url}/v1"
wire_api = "responses"
env_key = "SCRIPTED_API_KEY"
request_max_retries = 0
stream_max_retries = 0

[features]
hooks = true

[analytics]
enabled = false
""")

    def argv(self, prompt: str, args: tuple = ()) -> list[str]:
        return [str(runtime_bin("codex")), "exec", "--dangerously-bypass-approvals-and-sandbox", "--trust",
                "--dangerously-bypass-hook-trust", "--skip-git-repo-check", "--color", "never", *args, "--", prompt]

    def hooks_file(self) -> Path:
        return self.cwd / ".codex" / "hooks.json"


class Gemini(Runtime):
    """Gemini CLI: ``gemini -p PROMPT -m gemini-2.5-flash --approval-mode yolo``."""

    name = "gemini"
    model = "gemini-2.5-flash"

    def _env(self) -> dict:
        return {"GOOGLE_GEMINI_BASE_URL": self.models.url, "GEMINI_API_KEY": API_KEY,
                "GEMINI_CLI_TRUST_WORKSPACE": "true"}

    def _configure(self) -> None:
        settings = self.home / ".gemini" / "settings.json"
        settings.parent.mkdir(exist_ok=True)
        settings.write_text(json.dumps({
            "security": {"auth": {"selectedType": "gemini-api-key"}},
            "privacy": {"usageStatisticsEnabled": False},
            "telemetry": {"enabled": False},
            "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
        }, indent=2))

    def argv(self, prompt: str, args: tuple = ()) -> list[str]:
        return [str(runtime_bin("gemini")), "-p", prompt, "-m", self.model, "--approval-mode", "yolo", *args]

    def hooks_file(self) -> Path:
        return self.cwd / ".gemini" / "settings.json"


class ClaudeTmux(ClaudeCode):
    """Interactive Claude Code (``claude --dangerously-skip-permissions``) in a tmux session on a tmux
    server of its own (``tmux -L <socket>``), so tests never touch the user's tmux.

    `start` waits for the input prompt with no dialog in the way; `submit` types a prompt and sends
    it; `screen` reads the pane; `quit` exits Claude and kills the tmux server.
    """

    width, height = 160, 50

    def __init__(self, models: ModelServer, root: Path | str, cwd: Path | str | None = None,
                 env: dict | None = None) -> None:
        super().__init__(models, root, cwd, env)
        self.socket = f"thrum-test-{os.getpid()}-{abs(hash(self.marker)) % 10**8}"
        self.started = False
        self.server_pid = 0

    def tmux(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args], env=self.env,
                              capture_output=True, text=True, timeout=10 * FACTOR)
        if check and proc.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def start(self, args: tuple | list = (), timeout: float = 30) -> "ClaudeTmux":
        cmd = shlex.join([str(runtime_bin("claude")), "--dangerously-skip-permissions", *args])
        # `exec` so the pane's process is Claude itself; the server and pane inherit self.env.
        self.tmux("new-session", "-d", "-s", "main", "-x", str(self.width), "-y", str(self.height),
                  "-c", str(self.cwd), f"exec {cmd}")
        self.started = True
        self.server_pid = int(self.tmux("display-message", "-p", "#{pid}").strip())
        # remain-on-exit: a Claude that dies stays readable (capture-pane) and is seen as dead;
        # focus-events: otherwise Claude shows a hint about it in the footer.
        self.tmux("set-option", "-t", "main", "remain-on-exit", "on")
        self.tmux("set-option", "-g", "focus-events", "on")
        self.wait_ready(timeout)
        return self

    def pane_pid(self) -> int | None:
        out = self.tmux("display-message", "-p", "-t", "main", "#{pane_pid} #{pane_dead}", check=False).split()
        return int(out[0]) if out and out[-1] == "0" else None

    def screen(self) -> str:
        """The visible pane, plain text."""
        return self.tmux("capture-pane", "-p", "-t", "main", check=False)

    def wait_screen(self, predicate: Callable[[str], object] | str, timeout: float = 30) -> str:
        """Poll the pane until `predicate(text)` holds (or `text` is on it); return the screen."""
        test = (lambda s: predicate in s) if isinstance(predicate, str) else predicate
        what = repr(predicate) if isinstance(predicate, str) else "screen condition"
        box = {}

        def check():
            box["s"] = self.screen()
            if self.pane_pid() is None:
                raise AssertionError("claude exited")
            return test(box["s"])
        try:
            _wait(check, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; screen:\n{box.get('s', '')}") from None
        return box["s"]

    def wait_ready(self, timeout: float = 30) -> str:
        """Wait for the idle input box, answering any start-up dialog that still shows."""
        answered: dict[str, float] = {}

        def ready(s: str):
            for dialog, keys in _DIALOGS:
                # Answer each dialog once; again only if it is still there 2 s later.
                if dialog in s and time.monotonic() - answered.get(dialog, -10.0) > 2:
                    answered[dialog] = time.monotonic()
                    self.tmux("send-keys", "-t", "main", *keys)
                    return False
            return _is_ready(s)
        return self.wait_screen(ready, timeout)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "main", "-l", text)

    def submit(self, prompt: str, timeout: float = 10) -> None:
        """Type `prompt` and press Enter once it shows in the input box."""
        self.type(prompt)
        self.wait_screen(lambda s: prompt[-30:] in s, timeout)
        self.tmux("send-keys", "-t", "main", "Enter")

    def quit(self, timeout: float = 20) -> None:
        """Exit Claude (``/exit``) and wait for it; then kill the tmux server."""
        if self.started and self.pane_pid() is not None:
            self.tmux("send-keys", "-t", "main", "Escape")
            self.type("/exit")
            self.wait_screen(lambda s: "/exit" in s, 5)
            self.tmux("send-keys", "-t", "main", "Enter")
            _wait(lambda: self.pane_pid() is None, timeout, "claude to exit")
        self.kill_server()

    def kill_server(self, timeout: float = 5) -> None:
        """Kill the tmux server (and with it the pane) and wait until it is gone."""
        if self.started:
            self.tmux("kill-server", check=False)
            self.started = False
            try:
                _wait(lambda: not _alive(self.server_pid), timeout, "the tmux server to exit")
            except AssertionError:
                kill_pids([self.server_pid], 0)

    def close(self) -> None:
        self.kill_server()
        super().close()


# Start-up dialogs of interactive Claude Code, with the key that accepts each (a digit picks that option;
# arrow keys sent together with Enter get lost). The state ClaudeCode writes skips all of them; this is
# the safety net for a runtime update that adds one.
_DIALOGS = [
    ("Do you want to use this API key", ("1",)),  # the key is not in customApiKeyResponses.approved
    ("Yes, I accept", ("2",)),  # --dangerously-skip-permissions confirmation (bypassPermissionsModeAccepted)
    ("Yes, I trust this folder", ("1",)),  # projects.<dir>.hasTrustDialogAccepted
]


def _is_ready(screen: str) -> bool:
    # The idle input box: a prompt line starting with the ❯ (or >) marker and the permission-mode footer.
    lines = [ln.strip() for ln in screen.splitlines()]
    return any(ln.startswith(("❯", ">")) for ln in lines) and "bypass permissions" in screen.lower()


# --- hooks -------------------------------------------------------------------------------------------------

_RECORDER = r'''#!/usr/bin/env python3
"""Hook recorder: recorder.py LOG EVENT. Appends what the hook saw to LOG as one JSON line, then answers
as LOG.d/EVENT.json says: {"stdout": str|obj, "stderr": str, "exit": int, "sleep": seconds, "times": n}
(with "times", only the first n invocations answer so; later ones exit 0 silently)."""
import json, os, sys, time
log, event = sys.argv[1], sys.argv[2]
started = time.time()
data = sys.stdin.read()
def proc(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = [c.decode(errors="replace") for c in f.read().split(b"\0") if c]
        return {"pid": pid, "ppid": int(stat[stat.rindex(")") + 2:].split()[1]),
                "comm": stat[stat.index("(") + 1:stat.rindex(")")], "cmdline": cmd}
    except (OSError, ValueError) as e:
        return {"pid": pid, "error": str(e)}
chain, pid = [], os.getpid()
for _ in range(5):
    p = proc(pid)
    chain.append(p)
    pid = p.get("ppid")
    if not pid:
        break
try:
    stdin = json.loads(data)
except ValueError:
    stdin = data
prefixes = ("CLAUDE", "CODEX", "GEMINI", "ANTHROPIC", "OPENAI", "GOOGLE")
rec = {"event": event, "t": started, "pid": os.getpid(), "argv": sys.argv, "cwd": os.getcwd(), "stdin": stdin,
       "env_names": sorted(os.environ),
       "env": {k: v for k, v in os.environ.items() if k.startswith(prefixes) or k in ("IS_SANDBOX", "TERM", "SHLVL", "_")},
       "chain": chain, "isatty": [os.isatty(0), os.isatty(1), os.isatty(2)], "pgid": os.getpgid(0), "sid": os.getsid(0)}
def append(obj):
    with open(log, "a") as f:
        f.write(json.dumps(obj) + "\n")
append(rec)
try:
    with open(f"{log}.d/{event}.json") as f:
        answer = json.load(f)
except FileNotFoundError:
    sys.exit(0)
times = answer.get("times")
if times is not None:
    with open(log) as f:
        seen = sum(1 for line in f if json.loads(line).get("event") == event and not json.loads(line).get("done"))
    if seen > times:
        sys.exit(0)
if answer.get("sleep"):
    time.sleep(answer["sleep"])
out = answer.get("stdout")
if out is not None:
    sys.stdout.write(out if isinstance(out, str) else json.dumps(out))
if answer.get("stderr"):
    sys.stderr.write(answer["stderr"])
append({"event": event, "done": True, "pid": os.getpid(), "t": time.time(), "exit": answer.get("exit", 0)})
sys.exit(answer.get("exit", 0))
'''


class HookRecorder:
    """A hook command that records what each hook invocation saw, and answers as told.

    `command(event)` is the command line to put in a runtime's hook config; each call appends one JSON
    record (stdin JSON, argv, cwd, env names, runtime env values, parent chain, tty, pgid/sid) to the
    log. `respond(event, stdout=..., stderr=..., exit=..., sleep=...)` sets that event's answer.
    """

    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.script = self.dir / "recorder.py"
        self.script.write_text(_RECORDER)
        self.script.chmod(0o755)
        self.log = self.dir / "hooks.jsonl"
        (self.dir / "hooks.jsonl.d").mkdir(exist_ok=True)

    def command(self, event: str) -> str:
        return shlex.join([sys.executable, str(self.script), str(self.log), event])

    def respond(self, event: str, stdout: str | dict | None = None, stderr: str = "", exit: int = 0,
                sleep: float = 0, times: int | None = None) -> None:
        """Set how `event` answers: print `stdout` (a dict is printed as JSON) and `stderr`, exit with
        `exit`, after sleeping `sleep` seconds; with `times`, only its first `times` invocations do."""
        answer = {"stderr": stderr, "exit": exit, "sleep": sleep, "times": times}
        if stdout is not None:
            answer["stdout"] = stdout
        (self.dir / "hooks.jsonl.d" / f"{event}.json").write_text(json.dumps(answer))

    def config(self, events, **extra) -> dict:
        """A Claude-style hooks block running this recorder for each of `events`; `extra` keys
        (e.g. ``timeout=5``) go into each hook entry."""
        return {e: [{"hooks": [{"type": "command", "command": self.command(e), **extra}]}] for e in events}

    def records(self, event: str | None = None, done: bool = False) -> list[dict]:
        """The records so far (the start records; with `done`, the completion records)."""
        if not self.log.exists():
            return []
        recs = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [r for r in recs if bool(r.get("done")) == done and (event is None or r["event"] == event)]

    def events(self) -> list[str]:
        return [r["event"] for r in self.records()]

    def wait(self, event: str, count: int = 1, timeout: float = 30, done: bool = False) -> list[dict]:
        return _wait(lambda: len(recs := self.records(event, done)) >= count and recs, timeout,
                     f"{count} {event} hook record(s)")
