"""Git sync: the `a-sync` branch, its worktree, and the loop that syncs it with `origin`.

Git is always run as an argument list with a timeout, `GIT_TERMINAL_PROMPT=0`, a
pinned identity, no hooks, no signing, and never on the user's index, worktree,
HEAD or FETCH_HEAD. Branch writes go through `update-ref` with the expected old
value, so two writers racing on the ref fail loudly instead of losing a commit.

`init` and daemon start-up use the blocking helpers at the top (`git`,
`ensure_sync_branch`, `ensure_worktree`). After start-up every git call of the
daemon runs through its loop (`SyncLoop`, below): a round is a generator that
yields git calls and is resumed with their results.
"""

from __future__ import annotations

import os
import shutil
import subprocess

__all__ = [
    "GitError", "git", "git_env", "repo_info", "sync_dir_for", "ensure_sync_branch", "ensure_worktree",
    "SYNC_BRANCH", "EMPTY_INIT_MESSAGE", "SyncError", "SyncLoop", "make_component", "run_blocking",
]

SYNC_BRANCH = "a-sync"
SYNC_REF = "refs/heads/a-sync"
EMPTY_INIT_MESSAGE = "Initialize Thrum sync data"
IDENTITY = ("thrum", "thrum@localhost")
ROOT_DATE = "1767225600 +0000"  # 2026-01-01T00:00:00Z: the date of every a-sync root commit
DEFAULT_TIMEOUT = 10.0
# Network calls (fetch, push); THRUM_GIT_NETWORK_TIMEOUT shortens it (tests of a hanging remote).
FETCH_TIMEOUT = float(os.environ.get("THRUM_GIT_NETWORK_TIMEOUT") or 60.0)


class GitError(Exception):
    def __init__(self, args: list[str], returncode: int, stderr: str) -> None:
        self.args_list = args
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"git {' '.join(args)} failed ({returncode}): {self.stderr or 'no output'}")


def git_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    for key in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY",
                "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_PREFIX", "GIT_AUTHOR_DATE",
                "GIT_COMMITTER_DATE"):
        env.pop(key, None)  # a caller's git hook or rebase environment must not redirect or date our calls
    env.update({
        "GIT_TERMINAL_PROMPT": "0",
        "SSH_ASKPASS_REQUIRE": "never",  # no passphrase dialogs from a daemon (ssh has no tty here)
        "GIT_ASKPASS": "/bin/true" if os.path.exists("/bin/true") else "true",
        "GIT_AUTHOR_NAME": IDENTITY[0], "GIT_AUTHOR_EMAIL": IDENTITY[1],
        "GIT_COMMITTER_NAME": IDENTITY[0], "GIT_COMMITTER_EMAIL": IDENTITY[1],
        "LC_ALL": "C",
    })
    if extra:
        env.update(extra)
    return env


_SAFE_CONFIG = ["-c", "core.hooksPath=/dev/null", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false",
                "-c", "push.gpgSign=false", "-c", "core.fsmonitor=false", "-c", "gc.auto=0"]


def git_argv(args: list[str], *, allow_gc: bool = False) -> list[str]:
    config = _SAFE_CONFIG[:-2] if allow_gc else _SAFE_CONFIG  # gc.auto=0 is the last pair
    return ["git", *config, *args]


def git(args: list[str], cwd: str, *, timeout: float = DEFAULT_TIMEOUT, input: bytes | None = None,
        check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run git and return the completed process (stdout and stderr as bytes)."""
    try:
        proc = subprocess.run(git_argv(args), cwd=cwd, input=input, capture_output=True, timeout=timeout,
                              env=env or git_env(), stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise GitError(args, -1, f"timed out after {timeout:g}s") from None
    except FileNotFoundError:
        raise GitError(args, -1, "git is not installed") from None
    if check and proc.returncode != 0:
        raise GitError(args, proc.returncode, proc.stderr.decode("utf-8", "replace"))
    return proc


def _out(args: list[str], cwd: str, **kw) -> str:
    return git(args, cwd, **kw).stdout.decode("utf-8", "replace").strip()


class RepoInfo:
    __slots__ = ("toplevel", "git_dir", "common_dir")

    def __init__(self, toplevel: str, git_dir: str, common_dir: str) -> None:
        self.toplevel, self.git_dir, self.common_dir = toplevel, git_dir, common_dir

    @property
    def is_linked_worktree(self) -> bool:
        return os.path.realpath(self.git_dir) != os.path.realpath(self.common_dir)

    @property
    def sync_dir(self) -> str:
        return os.path.join(self.common_dir, "thrum-sync", SYNC_BRANCH)


def repo_info(path: str) -> RepoInfo:
    """Ask git where this checkout's toplevel, git dir and common dir are."""
    try:
        lines = _out(["rev-parse", "--show-toplevel", "--absolute-git-dir", "--git-common-dir"], path).splitlines()
    except GitError as exc:
        if "not a git repository" in exc.stderr:
            raise GitError(exc.args_list, exc.returncode,
                           f"{path} is not inside a git repository (thrum keeps its data on a git branch; "
                           "run 'git init' first)") from None
        raise
    toplevel, git_dir, common = lines[0], lines[1], lines[2]
    if not os.path.isabs(common):
        common = os.path.normpath(os.path.join(path, common))
    return RepoInfo(toplevel, git_dir, common)


def sync_dir_for(repo_root: str) -> str:
    return repo_info(repo_root).sync_dir


def _ref_exists(ref: str, cwd: str) -> bool:
    return git(["rev-parse", "--verify", "--quiet", ref + "^{commit}"], cwd, check=False).returncode == 0


def has_remote(cwd: str, name: str = "origin") -> bool:
    return name in _out(["remote"], cwd).split()


def _local_only_setting(repo_root: str) -> bool:
    from thrum.config import load_settings

    return load_settings(os.path.join(repo_root, ".thrum", "config.json")).local_only


def ensure_sync_branch(repo_root: str, *, fetch_remote: bool = True, local_only: bool | None = None,
                       notes: list | None = None) -> str:
    """Make sure `a-sync` exists: adopt `origin/a-sync` when there is one, else start an orphan.

    Returns how it was obtained: "existing", "remote" or "created". In local-only
    mode (from the argument, else `THRUM_LOCAL` / `.thrum/config.json`) the remote is
    neither fetched nor read. Warnings for the user are appended to `notes`.
    """
    if _ref_exists(SYNC_REF, repo_root):
        return "existing"
    if local_only is None:
        local_only = _local_only_setting(repo_root)
    remote = f"refs/remotes/origin/{SYNC_BRANCH}"
    if not local_only and has_remote(repo_root):
        if fetch_remote:
            # A fresh clone must continue the shared history, never start a second one.
            proc = git(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "origin",
                        f"+{SYNC_REF}:{remote}"], repo_root, check=False, timeout=FETCH_TIMEOUT)
            err = proc.stderr.decode("utf-8", "replace")
            if proc.returncode != 0 and "couldn't find remote ref" not in err and notes is not None:
                notes.append(f"could not fetch {SYNC_BRANCH} from origin ({_first_line(err)}); if origin has one, "
                             "the first sync joins the two histories")
        if _ref_exists(remote, repo_root):
            sha = _out(["rev-parse", remote + "^{commit}"], repo_root)
            if _create_ref(SYNC_REF, sha, repo_root):
                return "remote"
            return "existing"  # someone else created it meanwhile
    blob = _out(["hash-object", "-w", "--stdin"], repo_root, input=b"")
    tree = _out(["mktree"], repo_root, input=f"100644 blob {blob}\tevents.jsonl\n".encode())
    # Same tree, message, identity and date everywhere: clones that start a-sync
    # independently (before either pushed) share this root commit, so their
    # histories are related and merge like any other divergence.
    commit = _out(["commit-tree", tree, "-m", EMPTY_INIT_MESSAGE], repo_root,
                  env=git_env({"GIT_AUTHOR_DATE": ROOT_DATE, "GIT_COMMITTER_DATE": ROOT_DATE}))
    return "created" if _create_ref(SYNC_REF, commit, repo_root) else "existing"


def _create_ref(ref: str, sha: str, cwd: str) -> bool:
    """update-ref with an empty expected value: succeeds only if the ref does not exist yet."""
    proc = git(["update-ref", "-m", "thrum: create a-sync", ref, sha, ""], cwd, check=False)
    if proc.returncode == 0:
        return True
    if _ref_exists(ref, cwd):
        return False
    raise GitError(["update-ref", ref, sha, ""], proc.returncode, proc.stderr.decode("utf-8", "replace"))


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line.removeprefix("fatal: ").removeprefix("error: ")
    return "no output"


def worktree_is_valid(repo_root: str, sync_dir: str) -> bool:
    if not os.path.isfile(os.path.join(sync_dir, ".git")):
        return False
    proc = git(["symbolic-ref", "--quiet", "HEAD"], sync_dir, check=False)
    return proc.returncode == 0 and proc.stdout.decode().strip() == SYNC_REF


def ensure_worktree(repo_root: str, sync_dir: str) -> str | None:
    """Check out `a-sync` at `sync_dir` if it is not already there.

    A broken directory is moved aside (never deleted: it may hold lines not yet
    committed) and its path is returned so the caller can merge its lines back.
    """
    if worktree_is_valid(repo_root, sync_dir):
        _ensure_layout(sync_dir)
        return None
    moved = None
    if os.path.exists(sync_dir):
        moved = f"{sync_dir}.broken.{os.getpid()}"
        os.replace(sync_dir, moved)
    git(["worktree", "prune"], repo_root, check=False)
    os.makedirs(os.path.dirname(sync_dir), exist_ok=True)
    git(["worktree", "add", "--force", sync_dir, SYNC_BRANCH], repo_root, timeout=60)
    _ensure_layout(sync_dir)
    return moved


def _ensure_layout(sync_dir: str) -> None:
    messages = os.path.join(sync_dir, "messages")
    # A branch from a remote is checked out as it is: a symlink in it (events.jsonl ->
    # ~/.ssh/id_rsa, messages -> /etc) would make us append to, and push, files outside
    # the log. Each becomes a regular file holding its target as one (bad, kept) line.
    _unlink_symlink(messages)
    os.makedirs(messages, exist_ok=True)
    for rel in ["events.jsonl"] + [os.path.join("messages", n) for n in os.listdir(messages)]:
        _unlink_symlink(os.path.join(sync_dir, rel), keep_target=True)
    events = os.path.join(sync_dir, "events.jsonl")
    if not os.path.exists(events):
        open(events, "ab").close()


def _unlink_symlink(path: str, keep_target: bool = False) -> None:
    try:
        target = os.readlink(path)
    except OSError:
        return  # not a symlink (or not there)
    log.warning("replaced the symlink %s -> %s in the sync worktree by a regular file", path, target)
    os.unlink(path)
    if keep_target:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(os.fsencode(target).replace(b"\n", b" ") + b"\n")


def remove_broken(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


# == the sync loop ===========================================================================
#
# One round: take var/sync.lock, fetch origin/a-sync, append to the local JSONL
# files only the remote lines whose event_id is new (through the daemon's write
# path, so they are projected and pushed to subscribers like local writes), build
# a tree from the files we own with hash-object/mktree, commit it with the remote
# head as a second parent when it brings history we lack, move the branch with a
# compare-and-swap update-ref, and push. A rejected push (someone pushed first)
# goes back to the fetch, a bounded number of times.
#
# The round is a generator (`_Round.run`) that yields what it needs done -- a git
# call, a durable write, a progress note -- and is resumed with the result. The
# daemon drives it with `loop.spawn`, so git never blocks the loop; `run_blocking`
# drives the same code with subprocess for scripts and benchmarks.

import fcntl
import hashlib
import json
import logging
import re
import time
from collections import deque
from collections.abc import Iterator

log = logging.getLogger("thrum.sync")

REMOTE = "origin"
REMOTE_REF = f"refs/remotes/{REMOTE}/{SYNC_BRANCH}"
LOCAL_ONLY_REF = "refs/thrum/a-sync"  # local-only commits: not a branch, so `git push --all` skips it
STATE_NAME = "sync-state.json"
LOCK_NAME = "sync.lock"
GIT_TIMEOUT = 30.0
PUSH_ATTEMPTS = 5          # a rejected push is retried from the fetch this many times in one round
WRITE_CHUNK = 2000         # remote lines projected per durable write (the loop serves requests between)
MERGE_FILES_AT_ONCE = 2    # remote files whose new lines are read (git diff-tree) at the same time
DEFAULT_INTERVAL = 60
DEFAULT_DEBOUNCE = 0.25    # seconds from the first unsynced local write to a round (then pushed in ~0.5 s)
WRITE_ROUND_SPACING = 1.0  # under a stream of writes, at most one round for them per second
# While someone uses this clone, `git ls-remote` (one round trip) asks origin every few seconds
# whether a-sync moved, and only a change costs a round (a fetch); otherwise the interval applies.
DEFAULT_PROBE_INTERVAL = 2.0
MIN_PROBE_INTERVAL = 2.0   # settings cannot probe a remote more often than this
DEFAULT_ACTIVE_WINDOW = 120.0  # a request keeps the clone active this long
PROBE_TIMEOUT = min(FETCH_TIMEOUT, 15.0)  # an answer later than this is no use to a fast probe
QUIET_METHODS = frozenset({"health", "sync.status"})  # looking at the daemon is not using it
MAX_GIT_OUTPUT = 1 << 30   # cat-file of remote log files is the only large output
GC_EVERY = 100             # commits of ours between two `git gc --auto` (git's own thresholds decide)
_LOG_PATH = re.compile(r"^(events\.jsonl|messages/[A-Za-z0-9_-]+\.jsonl)$")


class SyncError(Exception):
    """A round failed; the message is for the user (status `last_error`)."""


class _Git:
    __slots__ = ("args", "input", "timeout")

    def __init__(self, args: list[str], input: bytes | None, timeout: float) -> None:
        self.args, self.input, self.timeout = args, input, timeout


class _GitBatch:
    """Independent git calls the host may run concurrently; resumed with their results in order.

    Each item's input is a function, called when that call starts, so only the
    inputs of the calls in flight are in memory. With wait=False the round resumes at
    once (with None) and the calls run on while it does other work, such as projecting;
    a later `_Await()` resumes with their results. One such batch at a time.
    """
    __slots__ = ("items", "wait")
    LIMIT = 4

    def __init__(self, items: list, wait: bool = True) -> None:
        self.items = items  # [(args, input_fn, timeout)]
        self.wait = wait


class _Await:
    """Resume with the results of the batch started with wait=False."""
    __slots__ = ()


class _Write:
    """fn(store) as a durable batch; with `hold`, a merge's chunk whose COMMIT may wait for the next
    (the daemon's host does so: Store.hold_merged; a blocking round commits each)."""
    __slots__ = ("fn", "hold")

    def __init__(self, fn, hold: bool = False) -> None:
        self.fn, self.hold = fn, hold


class _Progress:
    __slots__ = ("stage", "detail")

    def __init__(self, stage: str, detail: dict) -> None:
        self.stage, self.detail = stage, detail


class GitResult:
    __slots__ = ("rc", "out", "err")

    def __init__(self, rc: int, out: bytes, err: bytes) -> None:
        self.rc, self.out, self.err = rc, out, err

    @property
    def text(self) -> str:
        return self.out.decode("utf-8", "replace").strip()

    @property
    def error(self) -> str:
        return _first_line(self.err.decode("utf-8", "replace"))


# -- pure helpers (no I/O) ------------------------------------------------------------------

def parse_ls_tree(out: bytes) -> dict[str, tuple[str, str, str, int]]:
    """`ls-tree -r -t -l -z` output -> {path: (mode, type, sha, size or -1)}."""
    entries = {}
    for item in out.split(b"\0"):
        if not item:
            continue
        meta, _, path = item.partition(b"\t")
        mode, typ, sha, size = meta.decode().split()
        entries[path.decode("utf-8", "surrogateescape")] = (mode, typ, sha, int(size) if size != "-" else -1)
    return entries


def parse_diff_tree(out: bytes) -> list[tuple[str, str, str]]:
    """`diff-tree -r -z` raw output -> [(status letter, new blob sha, path)]."""
    fields = out.split(b"\0")
    changes = []
    i = 0
    while i < len(fields) - 1:
        meta = fields[i].decode()
        if not meta.startswith(":"):
            i += 1
            continue
        parts = meta[1:].split()
        status = parts[4][:1]
        if status in "RC":  # two paths follow (renames are off, but be safe)
            path = fields[i + 2]
            i += 3
        else:
            path = fields[i + 1]
            i += 2
        changes.append((status, parts[3], path.decode("utf-8", "surrogateescape")))
    return changes


def parse_cat_file(out: bytes) -> dict[str, bytes]:
    """`cat-file --batch` output -> {sha: content}; a missing object raises SyncError."""
    blobs = {}
    pos = 0
    while pos < len(out):
        nl = out.index(b"\n", pos)
        header = out[pos:nl].decode().split()
        if len(header) != 3:
            raise SyncError(f"git could not read object {header[0] if header else '?'} ({' '.join(header[1:])})")
        sha, size = header[0], int(header[2])
        blobs[sha] = out[nl + 1:nl + 1 + size]
        pos = nl + 1 + size + 1  # the content is followed by a newline
    return blobs


def added_lines(diff: bytes) -> list[bytes]:
    """The complete lines a `diff-tree -p -U0` of one file adds (without their newline)."""
    return list(iter_added_lines(diff.split(b"\n")))


def iter_added_lines(lines) -> Iterator[bytes]:
    """The added lines of a `diff-tree -p -U0` of one file, given its lines (without newlines), one by one.

    Hunk headers say how many old (-) and new (+) lines follow, so a line is never
    mistaken for a header whatever it holds. A last line without its newline
    ("\\ No newline at end of file" after it) is still being written: it is left for a
    later round, which sees it as added again (with its newline) against this version.
    """
    old = new = 0
    held = None  # an added line waits for the next one, which may say it has no newline
    for line in lines:
        if held is not None:
            if line.startswith(b"\\"):
                held = None
                continue
            yield held
            held = None
        if old or new:
            if line.startswith(b"-") and old:
                old -= 1
            elif line.startswith(b"+") and new:
                new -= 1
                held = line[1:]
            elif not line.startswith(b"\\"):
                raise SyncError(f"unexpected git diff output: {line[:80]!r}")
        elif line.startswith(b"@@ "):
            m = _HUNK.match(line)
            if m is None:
                raise SyncError(f"unexpected git diff output: {line[:80]!r}")
            old = int(m.group(2)) if m.group(2) is not None else 1
            new = int(m.group(4)) if m.group(4) is not None else 1
    if held is not None:
        yield held


def _file_lines(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        for line in f:
            yield line[:-1] if line.endswith(b"\n") else line


_HUNK = re.compile(rb"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


class _FilePrefix:
    """The first `size` bytes of a file, read in chunks (a git child's stdin); `on_end()` is
    called once all of them were read."""

    def __init__(self, path: str, size: int, on_end) -> None:
        self.f = open(path, "rb")
        self.left, self.on_end = size, on_end

    def read(self, n: int) -> bytes:
        if self.f is None or self.left <= 0:
            return b""
        data = self.f.read(min(n, self.left))
        if not data:  # the file shrank: git gets fewer bytes and the end is not reported
            self.left = -1
            return b""
        self.left -= len(data)
        if self.left == 0:
            self.on_end()
        return data

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


def _whole(data):
    """Bytes for a blocking git call: a _FilePrefix read to its end."""
    if not hasattr(data, "read"):
        return data
    chunks = []
    while chunk := data.read(1 << 20):
        chunks.append(chunk)
    data.close()
    return b"".join(chunks)


def _commit_merged(store) -> None:
    store.commit_deferred()


def _event_of(line: bytes) -> dict | None:
    """The event a line holds (deduplicated by its event_id), or None when the line is not an event."""
    from thrum.events import EventError, decode_event

    try:
        return decode_event(line)
    except EventError:
        return None


def _event_id_of(line: bytes):
    """The event_id a line is deduplicated by, or None when the line is not an event."""
    event = _event_of(line)
    return None if event is None else event["event_id"]


def _local_offset_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch)) + _utc_offset(epoch)


def _utc_offset(epoch: float) -> str:
    off = time.localtime(epoch).tm_gmtoff
    if off == 0:
        return "Z"
    sign = "+" if off > 0 else "-"
    off = abs(off)
    return f"{sign}{off // 3600:02d}:{off % 3600 // 60:02d}"


# -- persistent state ---------------------------------------------------------------------------

def load_state(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, dict) and data.get("version") == 1:
            return data
    except (OSError, ValueError):
        pass
    return {"version": 1}


def save_state(path: str, state: dict) -> None:
    from thrum.identity import atomic_write

    atomic_write(path, json.dumps(state, sort_keys=True, indent=1).encode(), 0o600)


# -- one round ------------------------------------------------------------------------------------

class RoundEnv:
    """What a round needs from its host (the daemon, or a script)."""

    def __init__(self, store, sync_dir: str, var_dir: str, *, local_only: bool) -> None:
        self.store = store
        self.sync_dir = sync_dir
        self.var_dir = var_dir
        self.local_only = local_only


class _Round:
    def __init__(self, env: RoundEnv, state: dict) -> None:
        self.env = env
        self.state = state
        self.result = {"pulled": 0, "pushed": 0, "committed": 0, "examined": 0, "bad_lines": 0, "push_attempts": 0,
                       "merged_remote": False, "fast_forward": False, "stages_ms": {}}
        self._stage_name, self._stage_at = "", 0.0
        self.remote_configured = False
        self.fetch_error = ""
        self.head = ""
        self.remote_head = ""
        self.ahead = self.behind = 0
        self.made_commit = False

    # small steps

    def _git(self, *args: str, input: bytes | None = None, timeout: float = GIT_TIMEOUT, ok=(0,)):
        res = yield _Git(list(args), input, timeout)
        if ok is not None and res.rc not in ok:
            if res.rc == -9:
                raise SyncError(f"git {args[0]} was stopped: timed out after {timeout:g}s or its output was too large")
            raise SyncError(f"git {args[0]} failed: {res.error}")
        return res

    def _refs(self):
        res = yield from self._git("for-each-ref", "--format=%(objectname) %(tree) %(refname)",
                                   SYNC_REF, REMOTE_REF, LOCAL_ONLY_REF)
        refs = {}
        for line in res.text.splitlines():
            sha, tree, name = line.split(" ", 2)
            refs[name] = (sha, tree)
        return refs

    def _counts(self, left: str, right: str):
        """(commits only in left, commits only in right)."""
        res = yield from self._git("rev-list", "--left-right", "--count", f"{left}...{right}")
        a, b = res.text.split()
        return int(a), int(b)

    # the round

    def _stage(self, name: str, detail: dict) -> _Progress:
        """The progress step that starts a stage; the time until the next one is the stage's
        (result["stages_ms"]: where a slow round spent its time, e.g. a fetch against a merge)."""
        self._end_stage()
        self._stage_name, self._stage_at = name, time.monotonic()
        return _Progress(name, detail)

    def _end_stage(self) -> None:
        if self._stage_name:
            spent = self.result["stages_ms"]
            ms = round((time.monotonic() - self._stage_at) * 1000)
            spent[self._stage_name] = spent.get(self._stage_name, 0) + ms
            self._stage_name = ""

    def run(self):
        try:
            yield from self._run()
        finally:
            self._end_stage()

    def _run(self):
        env, st = self.env, self.state
        if not env.local_only:
            res = yield from self._git("remote", "get-url", REMOTE, ok=None)
            self.remote_configured = res.rc == 0
        attempt = 0
        while True:
            attempt += 1
            remote_missing = False
            if self.remote_configured:
                yield self._stage("fetch", {"attempt": attempt})
                res = yield from self._git("fetch", "--quiet", "--no-tags", "--no-write-fetch-head",
                                           "--no-recurse-submodules", REMOTE, f"+{SYNC_REF}:{REMOTE_REF}",
                                           timeout=FETCH_TIMEOUT, ok=None)
                if res.rc != 0:
                    if "couldn't find remote ref" in res.err.decode("utf-8", "replace"):
                        remote_missing = True  # nobody has pushed a-sync yet: our push creates it
                    else:
                        self.fetch_error = ("timed out" if res.rc == -9 else res.error)
            refs = yield from self._refs()
            if SYNC_REF not in refs:
                raise SyncError(f"the {SYNC_BRANCH} branch is missing (run 'thrum init' to recreate it)")
            if env.local_only:
                ref = LOCAL_ONLY_REF
                expected, _ = refs.get(LOCAL_ONLY_REF, ("", ""))
                base, base_tree = refs.get(LOCAL_ONLY_REF) or refs[SYNC_REF]
            else:
                ref = SYNC_REF
                base, base_tree = expected, _ = refs[SYNC_REF]
            remote = None
            if self.remote_configured and not remote_missing and REMOTE_REF in refs:
                remote = refs[REMOTE_REF]  # may be stale when the fetch failed: still worth merging
            if attempt == 1 and st.get("head") and st["head"] != base:
                # Our ref was moved by someone else (a `git pull` in the sync worktree, a restore):
                # make sure what it holds is in our files before committing on top of it.
                log.warning("%s moved outside thrum (%s -> %s); merging its content", ref, st["head"][:12],
                            base[:12])
                yield from self._merge(base, base, st["head"])
                st["head"] = base
                st.pop("committed_sizes", None)  # they describe the old head's tree: compare with base's
            behind = 0
            if remote is not None:
                self.ahead, behind = yield from self._counts(base, remote[0])
                if remote[0] != st.get("merged_remote") and behind:
                    yield self._stage("merge", {"remote": remote[0]})
                    yield from self._merge(base, remote[0], st.get("merged_remote") or "")
                st["merged_remote"] = remote[0]
            yield self._stage("commit", {})
            head = yield from self._commit(ref, expected, base, base_tree, remote, behind)
            self.head = head
            self.remote_head = remote[0] if remote else ""
            if not self.remote_configured or self.fetch_error:
                break
            if remote is not None and head == remote[0]:
                break
            yield self._stage("push", {"attempt": attempt})
            self.result["push_attempts"] = attempt
            res = yield from self._git("push", "--porcelain", "--no-verify", REMOTE, f"{head}:{SYNC_REF}",
                                       timeout=FETCH_TIMEOUT, ok=None)
            if res.rc == 0:
                self.result["pushed"] += st.get("unpushed", 0)
                st["unpushed"] = 0
                st["merged_remote"] = head  # the remote now holds exactly our commit
                self.remote_head = head
                self.ahead = self.behind = 0
                break
            if not _push_was_rejected(res):
                raise SyncError(f"git push failed: {_push_error(res)}")
            if attempt >= PUSH_ATTEMPTS:
                raise SyncError(f"push rejected {attempt} times: origin/{SYNC_BRANCH} kept moving; "
                                "will retry on the next round")
            log.info("push rejected (someone pushed first); fetching and merging again")
        if self.remote_head and self.head != self.remote_head:
            self.ahead, self.behind = yield from self._counts(self.head, self.remote_head)
        elif self.remote_head:
            self.ahead = self.behind = 0
        if self.fetch_error:
            raise SyncError(f"cannot reach origin: {self.fetch_error} (changes are committed locally and "
                            "will be pushed when it is back)")

    # merge: append the remote's new lines to the local files

    def _merge(self, base: str, remote: str, since: str):
        """Append the lines of `remote` (a commit) that are new, looking at what changed after `since`."""
        st = self.state
        diff = None
        if since:
            diff = yield from self._git("diff-tree", "-r", "-z", "--no-renames", since, remote, ok=None)
            if diff.rc != 0:
                diff = None  # that commit is gone (history rewritten, state from elsewhere)
        if diff is None:
            res = yield from self._git("merge-base", base, remote, ok=(0, 1))
            since = res.text.split()[0] if res.rc == 0 and res.text else ""
            if not since or since == remote:  # unrelated: everything on the remote is a candidate
                res = yield from self._git("hash-object", "-t", "tree", "--stdin", input=b"")
                since = res.text
            diff = yield from self._git("diff-tree", "-r", "-z", "--no-renames", since, remote)
        wanted = []
        for status, sha, path in parse_diff_tree(diff.out):
            if status not in "AMT" or set(sha) == {"0"}:
                continue  # deletions never remove lines: the log is a union
            if _LOG_PATH.match(path):
                wanted.append((path, sha))
            else:
                log.debug("not merging %s (not a log file)", path)
        if not wanted:
            return
        wanted.sort(key=lambda w: (w[0] != "events.jsonl", w[0]))  # groups and agents before messages
        # Each file's new lines come from git as a diff against `since` (whose lines we hold
        # already): git reads the two blobs, we get the added lines only. Reading whole blobs
        # would put every touched shard -- tens of MiB each in a long-lived repository -- in
        # the daemon's memory. Two files at a time, then their lines are deduplicated and
        # projected a WRITE_CHUNK at a time (while git diffs the next two), so memory follows
        # the new lines of a few files, not the history.
        seen_bad = set(st.get("bad_seen", []))
        # git writes each diff to a file (--output), read back a line at a time: one shard can
        # gain tens of MiB in a merge, which a pipe buffer would hold whole (and leave the
        # daemon's heap that much larger for good).
        parts = [wanted[i:i + MERGE_FILES_AT_ONCE] for i in range(0, len(wanted), MERGE_FILES_AT_ONCE)]
        # Two sets of output files: git writes the next part's diffs while we project this one's.
        outputs = [[os.path.join(self.env.var_dir, f"merge-diff-{k}-{j}.tmp") for j in range(MERGE_FILES_AT_ONCE)]
                   for k in range(2)]

        def diffs(k: int) -> _GitBatch:
            return _GitBatch([(["diff-tree", "-p", "-U0", "-a", "--no-renames", "--no-color", "--no-ext-diff",
                                "--no-textconv", "--diff-algorithm=myers", f"--output={outputs[k % 2][j]}",
                                since, remote, "--", path], lambda: None, FETCH_TIMEOUT)
                              for j, (path, _) in enumerate(parts[k])], wait=False)
        try:
            yield diffs(0)
            for k, part in enumerate(parts):
                results = yield _Await()
                if k + 1 < len(parts):
                    yield diffs(k + 1)
                for (path, _), res, out in zip(part, results, outputs[k % 2]):
                    if res.rc != 0:
                        raise SyncError(f"git diff-tree failed for {path}: {res.error}")
                    chunk: list[bytes] = []
                    for line in iter_added_lines(_file_lines(out)):
                        chunk.append(line)
                        if len(chunk) >= WRITE_CHUNK:
                            yield from self._merge_lines(path, chunk, seen_bad)
                            chunk = []
                    if chunk:
                        yield from self._merge_lines(path, chunk, seen_bad)
            yield _Write(_commit_merged)
        finally:  # (a batch still running when the round ends is killed by the host)
            for out in (o for pair in outputs for o in pair):
                try:
                    os.unlink(out)
                except FileNotFoundError:
                    pass
        st["bad_seen"] = sorted(seen_bad)[-1000:]

    def _merge_lines(self, path: str, lines: list, seen_bad: set):
        """Append and project those of a file's remote lines that are not ours yet (one durable write)."""
        st = self.state
        self.result["examined"] += len(lines)
        events = [_event_of(line) for line in lines]  # decoded once: the projection takes them as they are
        eids = [e["event_id"] if e is not None else None for e in events]
        known = self.env.store.known_event_ids([e for e in eids if e])
        new: list[tuple[bytes, dict | None]] = []
        for line, eid, event in zip(lines, eids, events):
            if eid is not None:
                if eid in known:
                    continue
                known.add(eid)
            else:
                h = hashlib.sha256(line).hexdigest()
                if h in seen_bad or self._line_in_local_file(path, line):
                    seen_bad.add(h)
                    continue
                seen_bad.add(h)
                self.result["bad_lines"] += 1
            new.append((line + b"\n", event))
        if not new:
            return
        yield _Write(lambda store, p=path, ls=new: store.append_foreign_lines(p, ls), hold=True)
        self.result["pulled"] += len(new)
        st["pulled_uncommitted"] = st.get("pulled_uncommitted", 0) + len(new)
        self.result["merged_remote"] = True

    def _line_in_local_file(self, rel: str, line: bytes) -> bool:
        """Slow path, for unparseable lines only (they have no event_id to dedup by). A line at a time:
        a shard of a long-lived repository is tens of MiB, which the daemon's heap would keep."""
        try:
            return any(ours == line for ours in _file_lines(os.path.join(self.env.sync_dir, rel)))
        except FileNotFoundError:
            return False

    # commit: a tree from the files we own, a commit, a compare-and-swap ref update

    def _commit(self, ref: str, expected: str, base: str, base_tree: str, remote, behind: int):
        env, st = self.env, self.state
        store = env.store
        yield _Progress("snapshot", {})  # the host notes which local writes this commit includes
        sizes = {}
        for rel in store.log.files():
            try:
                sizes[rel] = os.stat(store.log.path(rel)).st_size
            except FileNotFoundError:
                pass
        needs_remote_parent = remote is not None and behind > 0
        if (st.get("head") == base and st.get("committed_sizes") == sizes and not needs_remote_parent
                and expected == base):
            return base
        res = yield from self._git("ls-tree", "-r", "-t", "-l", "-z", base)
        listing = parse_ls_tree(res.out)
        touched = []
        new_lines = 0
        for rel, size in sizes.items():
            old = listing.get(rel)
            if old is not None and old[1] == "blob" and old[3] == size:
                continue  # append-only: same size, same bytes
            old_size = old[3] if old is not None and 0 <= old[3] <= size else 0
            with open(store.log.path(rel), "rb") as f:  # a chunk at a time: a merge may have added 100 MiB
                f.seek(old_size)
                left = size - old_size
                while left > 0 and (chunk := f.read(min(left, 1 << 20))):
                    new_lines += chunk.count(b"\n")
                    left -= len(chunk)
            touched.append(rel)
        local_new = max(0, new_lines - st.get("pulled_uncommitted", 0))
        if needs_remote_parent and self.ahead == 0 and local_new == 0:
            # Everything we have came from the remote (our history is part of its history):
            # move to its head rather than commit the same lines in another order.
            commit = remote[0]
            self.result["fast_forward"] = True
        else:
            st.pop("blobs", None)  # remembered prefixes of remote files, before merges read git's diffs
            complete = set()

            def snapshot(rel: str) -> "_FilePrefix":
                # Up to the snapshot: whole lines only (files only grow). Streamed to git a chunk at a
                # time: a shard of a long-lived repository is tens of MiB.
                return _FilePrefix(store.log.path(rel), sizes[rel], lambda rel=rel: complete.add(rel))
            results = yield _GitBatch([(["hash-object", "-w", "--no-filters", "--stdin"],
                                        lambda rel=rel: snapshot(rel), GIT_TIMEOUT) for rel in touched])
            changed = {}
            for rel, res in zip(touched, results):
                if res.rc != 0:
                    raise SyncError(f"git hash-object failed for {rel}: {res.error}")
                if rel not in complete:  # git got less than the snapshot: the file shrank under us
                    raise SyncError(f"{rel} changed while it was being committed; retrying next round")
                changed[rel] = res.text
            tree = yield from self._tree(listing, changed, remote if needs_remote_parent else None)
            if tree == base_tree and not needs_remote_parent:
                commit = base
            else:
                # On top of the remote head when our history is already part of it; else a
                # merge: our head first, the remote head second.
                parents = [remote[0]] if (needs_remote_parent and self.ahead == 0) else [base]
                if needs_remote_parent and self.ahead:
                    parents.append(remote[0])
                msg = (f"thrum sync: {local_new} local event(s)"
                       + (f", merged {remote[0][:12]}" if needs_remote_parent else "") + "\n")
                args = ["commit-tree", tree]
                for p in parents:
                    args += ["-p", p]
                res = yield from self._git(*args, input=msg.encode())
                commit = res.text
                self.made_commit = True
        if commit != expected:
            res = yield from self._git("update-ref", "-m", "thrum sync", ref, commit, expected, ok=None)
            if res.rc != 0:
                raise SyncError(f"{ref} moved during the round ({res.error}); retrying next round")
        st["head"] = commit
        st["committed_sizes"] = sizes
        st["pulled_uncommitted"] = 0
        st["unpushed"] = st.get("unpushed", 0) + local_new
        self.result["committed"] += local_new
        yield _Progress("committed", {"head": commit})
        return commit

    def _tree(self, listing: dict, changed: dict, remote):
        """mktree for messages/ (if touched) and the root, reusing every unchanged entry."""
        root = {p: e for p, e in listing.items() if "/" not in p}
        msgs = {p[len("messages/"):]: e for p, e in listing.items()
                if p.startswith("messages/") and "/" not in p[len("messages/"):]}
        if remote is not None:
            # Keep files others put on the branch that we do not own (e.g. Go's context/): L wins.
            res = yield from self._git("ls-tree", "-r", "-t", "-l", "-z", remote[0])
            for p, e in parse_ls_tree(res.out).items():
                if "/" not in p and p not in root and p != "messages" and p not in changed:
                    root[p] = e
                elif p.startswith("messages/") and "/" not in p[9:] and p[9:] not in msgs \
                        and p not in changed and not _LOG_PATH.match(p):
                    msgs[p[9:]] = e
        touched_msgs = False
        for rel, sha in changed.items():
            if rel.startswith("messages/"):
                msgs[rel[9:]] = ("100644", "blob", sha, 0)
                touched_msgs = True
            else:
                root[rel] = ("100644", "blob", sha, 0)
        if touched_msgs or ("messages" not in root and msgs):
            res = yield from self._git("mktree", "-z", input=_mktree_input(msgs))
            root["messages"] = ("040000", "tree", res.text, -1)
        res = yield from self._git("mktree", "-z", input=_mktree_input(root))
        return res.text


def _mktree_input(entries: dict) -> bytes:
    return b"".join(f"{mode} {typ} {sha}\t".encode() + name.encode("utf-8", "surrogateescape") + b"\0"
                    for name, (mode, typ, sha, _) in entries.items())


def _push_was_rejected(res: GitResult) -> bool:
    """A race with another pusher (retry after a fetch), as opposed to a real failure."""
    text = (res.out + b"\n" + res.err).decode("utf-8", "replace")
    for line in text.splitlines():
        if line.startswith("!") and ("[rejected]" in line or "stale info" in line
                                     or "cannot lock ref" in line or "failed to update ref" in line
                                     or "incorrect old value" in line):
            return True
    return "fetch first" in text or "non-fast-forward" in text


def _push_error(res: GitResult) -> str:
    if res.rc == -9:
        return "timed out"
    for line in res.out.decode("utf-8", "replace").splitlines():
        if line.startswith("!"):
            return line.split("\t")[-1].strip()
    return res.error


# -- drivers --------------------------------------------------------------------------------------

def _run_git(cwd: str, args: list[str], input: bytes | None, timeout: float) -> GitResult:
    try:
        proc = subprocess.run(git_argv(args), cwd=cwd, input=input, capture_output=True, timeout=timeout,
                              env=git_env(), stdin=None if input is not None else subprocess.DEVNULL)
        return GitResult(proc.returncode, proc.stdout, proc.stderr)
    except subprocess.TimeoutExpired:
        return GitResult(-9, b"", b"timed out")


def run_blocking(env: RoundEnv, state: dict, on_progress=None) -> dict:
    """Run one round synchronously (scripts, benchmarks): returns the round's result."""
    rnd = _Round(env, state)
    gen = rnd.run()
    value = started = None
    while True:
        try:
            step = gen.send(value)
        except StopIteration:
            break
        if isinstance(step, _Git):
            value = _run_git(env.sync_dir, step.args, step.input, step.timeout)
        elif isinstance(step, _GitBatch):
            value = [_run_git(env.sync_dir, args, _whole(input_fn()), timeout) for args, input_fn, timeout in step.items]
            if not step.wait:  # run now, handed over at the _Await
                started, value = value, None
        elif isinstance(step, _Await):
            value, started = started, None
        elif isinstance(step, _Write):
            store = env.store
            try:
                step.fn(store)
                store.commit()
            except BaseException:
                store.rollback()
                raise
            value = None
        else:
            if on_progress:
                on_progress(step.stage, step.detail)
            value = None
    return rnd.result


def _seconds_setting(config_path: str, env_name: str, key: str, default: float) -> float:
    """A duration in seconds: the environment variable > "daemon": {key} in config.json > default."""
    from thrum.config import load_config

    raw = os.environ.get(env_name)
    if raw is None:
        daemon = load_config(config_path).get("daemon")
        raw = daemon.get(key) if isinstance(daemon, dict) else None
    if raw is None:
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        log.warning("ignoring invalid %s %r", key, raw)
        return default
    return max(0.0, value)


def _debounce_setting(config_path: str) -> float:
    """THRUM_SYNC_DEBOUNCE (seconds, 0 = off) > daemon.sync_debounce in config.json > 0.25 s."""
    return _seconds_setting(config_path, "THRUM_SYNC_DEBOUNCE", "sync_debounce", DEFAULT_DEBOUNCE)


def _probe_interval_setting(config_path: str) -> float:
    """THRUM_SYNC_PROBE_INTERVAL > daemon.sync_probe_interval > 2 s; 0 = never probe, else at least 2 s."""
    value = _seconds_setting(config_path, "THRUM_SYNC_PROBE_INTERVAL", "sync_probe_interval",
                             DEFAULT_PROBE_INTERVAL)
    return 0.0 if value == 0 else max(MIN_PROBE_INTERVAL, value)


def _active_window_setting(config_path: str) -> float:
    """THRUM_SYNC_ACTIVE_WINDOW > daemon.sync_active_window > 120 s."""
    return _seconds_setting(config_path, "THRUM_SYNC_ACTIVE_WINDOW", "sync_active_window", DEFAULT_ACTIVE_WINDOW)


def parse_ls_remote(out: bytes, ref: str = SYNC_REF) -> str:
    """The sha `git ls-remote` reports for exactly `ref`, or "" when the remote does not have it."""
    for line in out.decode("utf-8", "replace").splitlines():
        sha, _, name = line.partition("\t")
        if name.strip() == ref:
            return sha.strip()
    return ""


class _RecentCounter:
    """Times of something over the last hour (probes, fetches): how many, and the latest."""

    __slots__ = ("times", "last_wall")

    def __init__(self) -> None:
        self.times: deque = deque()   # monotonic
        self.last_wall = 0.0          # epoch of the latest, for status

    def note(self) -> None:
        self.times.append(time.monotonic())
        self.last_wall = time.time()
        self._prune()

    def count(self) -> int:
        self._prune()
        return len(self.times)

    def last_at(self) -> str:
        return _local_offset_time(self.last_wall) if self.last_wall else ""

    def _prune(self) -> None:
        horizon = time.monotonic() - 3600
        while self.times and self.times[0] < horizon:
            self.times.popleft()


class SyncLoop:
    """The daemon component: runs rounds on a timer, soon after local writes, and on demand.

    One round at a time. A request that arrives during a round is served by the
    next one (requests coalesce), so `sync.force` with `wait` always reports a round
    that started after it was asked for and therefore includes the caller's writes.
    """

    def __init__(self, paths) -> None:
        self.paths = paths
        self.daemon = None
        self.running = False
        self.state_path = os.path.join(paths.var, STATE_NAME)
        self.state: dict = {"version": 1}
        self.local_only = False
        self.interval = DEFAULT_INTERVAL
        self.debounce = DEFAULT_DEBOUNCE
        self.remote_configured: bool | None = None
        self.remote_url = ""
        self.active = False
        self.rerun = False
        self.queued: list = []    # (Deferred, conn) waiting for the next round
        self.waiters: list = []   # (Deferred, conn) waiting for the round in flight
        self.timer = None
        self.debounce_timer = None
        self.children: set = set()  # git calls of the round in flight
        self.batch = None
        self.gc_child = None
        self.step_name, self.step_started = "", 0.0
        self.gen = None
        self.round = None
        self.lock_fd: int | None = None
        self.dirty = 0            # local events written since the last commit (not yet in git)
        self.dirty_snapshot = 0
        self.dirty_unknown = False
        self.merging = False
        self.failures = 0
        self.rounds = 0
        self.started_at = 0.0
        self.ended_at = 0.0       # monotonic end of the last round
        self.write_round_at = 0.0  # monotonic start of the last round started for local writes
        self.last_result: dict = {}
        # probing origin while the clone is active (see DEFAULT_PROBE_INTERVAL)
        self.probe_interval = DEFAULT_PROBE_INTERVAL
        self.active_window = DEFAULT_ACTIVE_WINDOW
        self.probe_timer = None
        self.probe_child = None
        self.probe_failures = 0
        self.probe_error = ""
        self.last_probe_started = 0.0   # monotonic
        self.last_fetch_started = 0.0   # monotonic
        self.last_request_at = 0.0      # monotonic: the last request that was not a QUIET_METHODS look
        self.probes = _RecentCounter()
        self.fetches = _RecentCounter()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, daemon) -> None:
        from thrum.config import load_settings

        self.daemon = daemon
        settings = load_settings(self.paths.config)
        self.local_only = settings.local_only
        self.interval = settings.sync_interval
        self.debounce = _debounce_setting(self.paths.config)
        self.probe_interval = _probe_interval_setting(self.paths.config)
        self.active_window = _active_window_setting(self.paths.config)
        self.state = load_state(self.state_path)
        self.env = RoundEnv(daemon.store, daemon.sync_dir, self.paths.var, local_only=self.local_only)
        self.lock_fd = os.open(os.path.join(self.paths.var, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                               0o600)
        committed = self.state.get("committed_sizes")
        sizes = self._sizes()
        self.dirty_unknown = committed != sizes and bool(sizes)
        registry = daemon.service.registry
        registry.add("sync.force", self.rpc_force)
        registry.add("sync.status", self.rpc_status)
        daemon.service.sync_status = self.health_fields
        daemon.service.sync_details = self.status  # everything sync.status says (notification.sync)
        daemon.event_listeners.append(self._on_events)
        listeners = getattr(daemon, "request_listeners", None)
        if listeners is not None:
            listeners.append(self._on_request)
        self.running = True
        log.info("sync loop started (%s, every %ss, %s after writes, %s)",
                 "local-only" if self.local_only else "origin", self.interval,
                 f"{self.debounce:g}s" if self.debounce else "not",
                 f"probing every {self.probe_interval:g}s while active" if self.probes_allowed() else "no probing")
        daemon.loop.call_soon(self.request)  # catch up with what others pushed while we were down
        if self.probes_allowed():
            self.probe_timer = daemon.loop.call_later(self.probe_interval, self._probe_tick)

    def stop(self) -> None:
        self.running = False
        for handle in (self.timer, self.debounce_timer, self.probe_timer):
            if handle is not None:
                self.daemon.loop.cancel(handle)
        self.timer = self.debounce_timer = self.probe_timer = None
        for child in [*self.children, self.gc_child, self.probe_child]:
            if child is not None and not child.done:
                child.kill()  # every git step is safe to interrupt: refs move atomically or not at all
                try:
                    child.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        self.children.clear()
        self.gc_child = self.batch = self.probe_child = None
        if self.gen is not None:
            self.gen.close()
            self.gen = None
        from thrum.rpc import ThrumError

        for deferred, _ in self.waiters + self.queued:
            deferred.fail(ThrumError("the daemon is shutting down; the sync round did not finish"))
        self.waiters, self.queued = [], []
        if self.active:
            self._unlock()
            self.active = False
            self._save()
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    # -- triggers --------------------------------------------------------------------------

    def request(self, waiter=None) -> None:
        """Run a round now, or right after the one in flight."""
        if not self.running:
            if waiter is not None:
                from thrum.rpc import ThrumError

                waiter[0].fail(ThrumError("the sync loop is not running"))
            return
        if waiter is not None:
            self.queued.append(waiter)
        if self.active:
            self.rerun = True
            return
        self._start_round()

    def _on_events(self, events: list) -> None:
        if self.merging or not events:
            return  # lines merged from the remote are not local writes
        self.dirty += len(events)
        if (self.debounce > 0 and self.running and not self.active and self.debounce_timer is None
                and self.failures == 0):
            self.debounce_timer = self.daemon.loop.call_later(self.write_delay(), self._debounced)

    def write_delay(self) -> float:
        """Seconds from now to the round that pushes a local write.

        A write after a quiet spell waits `debounce`. Under a stream of writes the rounds
        for them start at most once per WRITE_ROUND_SPACING, and no sooner than three times
        the last round's length after it ended, so git (which hashes whole log files) gets
        at most a quarter of the time on a big log.
        """
        now = time.monotonic()
        last = self.last_result.get("duration_ms", 0) / 1000
        return max(self.debounce, self.write_round_at + WRITE_ROUND_SPACING - now, 3 * last - (now - self.ended_at))

    def _debounced(self) -> None:
        self.debounce_timer = None
        self.write_round_at = time.monotonic()
        self.request()

    def _tick(self) -> None:
        self.timer = None
        self.request()

    # -- probing: is there something new on origin? ------------------------------------------
    #
    # While the clone is active (activity()), every probe_interval seconds one `git ls-remote`
    # compares origin's a-sync with the head we last fetched or pushed; only a difference
    # starts a round (and so a fetch). Probes never overlap a round or each other, wait for
    # probe_interval after the last fetch, and back off when they or the rounds fail.

    def probes_allowed(self) -> bool:
        return not self.local_only and self.probe_interval > 0

    def activity(self) -> str:
        """Why this clone counts as active now: "waiter", "web_ui", "requests", or "" (idle)."""
        push = getattr(self.daemon, "push", None)
        reason = push.activity() if push is not None and hasattr(push, "activity") else ""
        if reason:
            return reason
        if self.last_request_at and time.monotonic() - self.last_request_at < self.active_window:
            return "requests"
        return ""

    def mode(self) -> str:
        """active (probing) | idle (interval only) | local (local-only or no origin: never probes)."""
        if self.local_only or self.remote_configured is False:
            return "local"
        if self.probe_interval > 0 and self.activity():
            return "active"
        return "idle"

    def _on_request(self, method: str, ctx) -> None:
        if method in QUIET_METHODS:
            return
        now = time.monotonic()
        was_idle = not self.last_request_at or now - self.last_request_at >= self.active_window
        self.last_request_at = now
        if was_idle and self.probe_timer is not None:
            self._schedule_probe(0)  # someone came back: look at origin now, not at the next check

    def _schedule_probe(self, delay: float) -> None:
        if self.probe_timer is not None:
            self.daemon.loop.cancel(self.probe_timer)
        self.probe_timer = self.daemon.loop.call_later(delay, self._probe_tick)

    def _probe_tick(self) -> None:
        self.probe_timer = None
        if self.running:
            self._schedule_probe(self._maybe_probe())

    def _maybe_probe(self) -> float:
        """Probe origin if it is time to; returns the seconds until the next check."""
        if self.remote_configured is False:
            return max(self.interval, self.probe_interval)  # no origin: only a round can tell us it appeared
        if not self.probes_allowed() or self.remote_configured is None or self.probe_child is not None:
            return self.probe_interval  # nowhere to probe yet, or a probe is under way
        if self.active:
            return 0.25  # a round fetches anyway; its fetch moves the next probe
        now = time.monotonic()
        due = max(self.last_probe_started, self.last_fetch_started) + self.probe_interval
        if self.probe_failures:
            due = self.last_probe_started + self._backoff(self.probe_failures)
        if self.failures:
            due = max(due, self.ended_at + self._backoff(self.failures))  # failing rounds rest; the interval retries
        if now < due:
            return due - now
        if not self.activity():
            return self.probe_interval
        self.last_probe_started = now
        self.probes.note()
        try:
            self.probe_child = self.daemon.loop.spawn(
                git_argv(["ls-remote", "--quiet", REMOTE, SYNC_REF]), self._probe_done, cwd=self.env.sync_dir,
                env=git_env(), timeout=PROBE_TIMEOUT, max_output=1 << 20)
        except OSError as exc:
            self._probe_failed(f"cannot run git: {exc}")
        return self.probe_interval

    def _backoff(self, failures: int) -> float:
        return min(max(self.interval, self.probe_interval), self.probe_interval * 2 ** min(failures, 10))

    def _probe_done(self, rc: int, out: bytes, err: bytes) -> None:
        self.probe_child = None
        if not self.running:
            return
        if rc != 0:
            self._probe_failed("timed out" if rc == -9 else _first_line(err.decode("utf-8", "replace")))
            return
        self.probe_failures = 0
        self.probe_error = ""
        remote = parse_ls_remote(out)
        known = self.state.get("remote_head", "")
        if remote != known and (remote or known):
            log.debug("probe: origin/%s is %s, we know %s: syncing", SYNC_BRANCH, remote[:12] or "gone",
                      known[:12] or "nothing")
            self.request()

    def _probe_failed(self, error: str) -> None:
        self.probe_failures += 1
        self.probe_error = error
        log.info("probe of origin/%s failed (%d in a row): %s", SYNC_BRANCH, self.probe_failures, error)

    # -- driving a round ---------------------------------------------------------------------

    def _start_round(self) -> None:
        loop = self.daemon.loop
        for handle in (self.timer, self.debounce_timer):
            if handle is not None:
                loop.cancel(handle)
        self.timer = self.debounce_timer = None
        self.active = True
        self.rerun = False
        self.waiters, self.queued = self.queued, []
        self.started_at = time.monotonic()
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._finish(f"another process holds {os.path.join(self.paths.var, LOCK_NAME)} (a sync in progress)",
                         locked=False)
            return
        self.round = _Round(self.env, self.state)
        self.gen = self.round.run()
        self._advance(None)

    def _advance(self, value) -> None:
        while self.gen is not None:
            try:
                step = self.gen.send(value)
            except StopIteration:
                self._finish("")
                return
            except SyncError as exc:
                self._finish(str(exc))
                return
            except Exception as exc:  # a bug: keep the daemon, report the round
                import traceback

                log.error("sync round failed:\n%s", traceback.format_exc())
                self._finish(f"internal error: {type(exc).__name__}: {exc}")
                return
            value = None
            if isinstance(step, _Git):
                self.step_started = time.monotonic()
                self.step_name = step.args[0]
                try:
                    self._spawn(step.args, step.input, step.timeout, self._git_done)
                except OSError as exc:
                    self.gen.close()
                    self._finish(f"cannot run git: {exc}")
                return
            if isinstance(step, _GitBatch):
                if self.batch is not None:
                    self._abandon("internal error: a second git batch started while one runs")
                    return
                self.step_started = time.monotonic()
                self.step_name = f"{len(step.items)} x {step.items[0][0][0]}" if step.items else "nothing"
                # items, results, next, running, whether the round waits for it
                self.batch = [step.items, [None] * len(step.items), 0, 0, step.wait]
                self._batch_fill()
                if step.wait:
                    return
                continue
            if isinstance(step, _Await):
                batch = self.batch
                if batch is None:
                    self._abandon("internal error: awaited a git batch that was not started")
                    return
                if batch[3] == 0 and batch[2] == len(batch[0]):
                    self.batch, value = None, batch[1]
                    continue
                batch[4] = True  # resumed by _batch_fill when the last call ends
                return
            if isinstance(step, _Write):
                self.merging = True
                started = time.monotonic()
                try:
                    self.daemon.run_write(step.fn, hold=step.hold)
                    log.debug("sync write: %.1f ms", (time.monotonic() - started) * 1000)
                except Exception as exc:
                    self.gen.close()
                    self._finish(f"cannot write the merged lines: {exc}")
                    return
                finally:
                    self.merging = False
                # Let the loop answer requests between large merges.
                self.daemon.loop.call_soon(self._advance, None)
                return
            if step.stage == "fetch":
                self.fetches.note()
                self.last_fetch_started = time.monotonic()
            elif step.stage == "snapshot":
                self.dirty_snapshot = self.dirty
            elif step.stage == "committed":
                self.dirty = max(0, self.dirty - self.dirty_snapshot)
                self.dirty_snapshot = 0
                self.dirty_unknown = False
            self._progress(step.stage, step.detail)

    def _spawn(self, args: list[str], input: bytes | None, timeout: float, on_done) -> None:
        holder = []

        def done(rc, out, err):
            self.children.discard(holder[0])
            on_done(rc, out, err)
        child = self.daemon.loop.spawn(git_argv(args), done, cwd=self.env.sync_dir, env=git_env(),
                                       timeout=timeout, stdin_data=input, max_output=MAX_GIT_OUTPUT)
        holder.append(child)
        self.children.add(child)

    def _batch_fill(self) -> None:
        batch = self.batch
        if batch is None:
            return
        items, results = batch[0], batch[1]
        try:
            while batch[3] < _GitBatch.LIMIT and batch[2] < len(items):
                i = batch[2]
                args, input_fn, timeout = items[i]
                batch[2] += 1
                batch[3] += 1
                self._spawn(args, input_fn(), timeout,
                            lambda rc, out, err, i=i, b=batch: self._batch_done(b, i, rc, out, err))
        except OSError as exc:
            self.batch = None
            for child in list(self.children):
                child.kill()
            self.gen.close()
            self._finish(f"cannot run git: {exc}")
            return
        if batch[3] == 0 and batch[2] == len(items) and batch[4]:
            self.batch = None
            log.debug("sync git %s: %.1f ms", self.step_name, (time.monotonic() - self.step_started) * 1000)
            self._advance(results)

    def _batch_done(self, batch: list, i: int, rc: int, out: bytes, err: bytes) -> None:
        if self.batch is not batch:
            return  # a batch of a round that has ended
        self.batch[1][i] = GitResult(rc, out, err)
        self.batch[3] -= 1
        self._batch_fill()

    def _git_done(self, rc: int, out: bytes, err: bytes) -> None:
        log.debug("sync git %s: exit %d, %.1f ms", self.step_name, rc, (time.monotonic() - self.step_started) * 1000)
        if self.gen is not None:
            self._advance(GitResult(rc, out, err))

    def _progress(self, stage: str, detail: dict) -> None:
        if stage in ("snapshot", "committed"):
            return
        for _, conn in self.waiters:
            notify = getattr(conn, "notify", None)
            if notify is not None:
                notify("sync.progress", {"stage": stage, **detail})

    def _unlock(self) -> None:
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
        except OSError:
            pass

    def _abandon(self, error: str) -> None:
        self.gen.close()
        self._finish(error)

    def _finish(self, error: str, *, locked: bool = True) -> None:
        rnd, self.round, self.gen = self.round, None, None
        self.batch = None
        for child in list(self.children):  # git calls started without waiting, still running
            if not child.done:
                child.kill()
        if self.daemon.store.holding:  # a merge that stopped half-way: what it applied stays
            self.daemon.store.commit_deferred()
        if locked:
            self._unlock()
        self.active = False
        self.rounds += 1
        self.ended_at = time.monotonic()
        result = dict(rnd.result) if rnd is not None else {"pulled": 0, "pushed": 0, "committed": 0, "stages_ms": {}}
        result["duration_ms"] = int((time.monotonic() - self.started_at) * 1000)
        result["ok"] = not error
        st = self.state
        if rnd is not None:
            if not self.local_only:
                self.remote_configured = rnd.remote_configured
            if rnd.made_commit:
                st["commits_since_gc"] = st.get("commits_since_gc", 0) + 1
            if rnd.head:  # the round got as far as its commit
                st["remote_head"] = rnd.remote_head
                st["ahead"], st["behind"] = rnd.ahead, rnd.behind
        if error:
            self.failures += 1
            st["last_error"] = error
            log.warning("sync round failed: %s", error)
        else:
            self.failures = 0
            st["last_error"] = ""
            st["last_sync_at"] = _local_offset_time(time.time())
            if result.get("pulled") or result.get("pushed"):
                log.info("sync: pulled %d, pushed %d event(s) in %d ms", result["pulled"], result["pushed"],
                         result["duration_ms"])
        st["bad_remote_lines"] = st.get("bad_remote_lines", 0) + result.get("bad_lines", 0)
        st["last_round"] = {k: result[k] for k in ("pulled", "pushed", "committed", "duration_ms", "ok", "stages_ms")}
        self.last_result = result
        if st.get("commits_since_gc", 0) >= GC_EVERY and self.gc_child is None and self.running:
            st["commits_since_gc"] = 0
            self._gc()
        self._save()
        waiters, self.waiters = self.waiters, []
        if waiters:
            answer = {"triggered": True, **self.status(), **result}
            if error:
                answer["last_error"] = error
            for deferred, _ in waiters:
                deferred.resolve(answer)
        if not self.running:
            return
        loop = self.daemon.loop
        if self.rerun or self.queued:
            loop.call_soon(self.request)
            return
        self.timer = loop.call_later(self.interval, self._tick)
        if self.dirty and self.debounce > 0 and not error:
            self.debounce_timer = loop.call_later(self.write_delay(), self._debounced)

    def _gc(self) -> None:
        """Each round writes whole-file blobs; let git pack them now and then (as `git commit` would)."""
        def done(rc, out, err):
            self.gc_child = None
            if rc != 0:
                log.info("git gc --auto: %s", _first_line(err.decode("utf-8", "replace")))
        try:
            self.gc_child = self.daemon.loop.spawn(git_argv(["gc", "--auto", "--quiet"], allow_gc=True), done,
                                                   cwd=self.env.sync_dir, env=git_env(), timeout=600)
        except OSError as exc:
            log.info("cannot run git gc: %s", exc)

    def _save(self) -> None:
        try:
            save_state(self.state_path, self.state)
        except OSError as exc:
            log.warning("cannot save %s: %s", self.state_path, exc)

    def _sizes(self) -> dict:
        store = self.daemon.store
        sizes = {}
        for rel in store.log.files():
            try:
                sizes[rel] = os.stat(store.log.path(rel)).st_size
            except FileNotFoundError:
                pass
        return sizes

    # -- status ---------------------------------------------------------------------------------

    def sync_state(self) -> str:
        """stopped | error | idle | pending | synced | local (see the README's sync section)."""
        st = self.state
        if not self.running:
            return "stopped"
        if st.get("last_error") and self.rounds:
            return "error"
        if not self.rounds:
            return "idle"
        uncommitted = self.dirty > 0 or self.dirty_unknown
        if self.local_only or not self.remote_configured:
            return "pending" if uncommitted else "local"
        if uncommitted or st.get("unpushed") or st.get("ahead") or st.get("behind") \
                or not st.get("remote_head") or st.get("remote_head") != st.get("head"):
            return "pending"
        return "synced"

    def status(self) -> dict:
        st = self.state
        out = {
            "running": self.running,
            "last_sync_at": st.get("last_sync_at", ""),
            "sync_state": self.sync_state(),
            "local_only": self.local_only,
            "remote": "" if self.local_only or self.remote_configured is False else REMOTE,
            "branch": LOCAL_ONLY_REF if self.local_only else SYNC_BRANCH,
            "in_progress": self.active,
            "interval": self.interval,
            "debounce": self.debounce,
            "head": st.get("head", ""),
            "remote_head": st.get("remote_head", ""),
            "ahead": st.get("ahead", 0),
            "behind": st.get("behind", 0),
            "unpushed_events": st.get("unpushed", 0),
            "uncommitted_events": self.dirty,
            "bad_remote_lines": st.get("bad_remote_lines", 0),
        }
        if st.get("last_error") and self.rounds:
            out["last_error"] = st["last_error"]
        if st.get("last_round"):
            out["last_round"] = st["last_round"]
        out.update(self._probe_status())
        return out

    def _probe_status(self) -> dict:
        mode = self.mode()
        out = {
            "mode": mode,
            "active_because": self.activity() if mode == "active" else "",
            "probe_interval": self.probe_interval if self.probes_allowed() else 0,
            "active_window": self.active_window,
            "last_probe_at": self.probes.last_at(),
            "last_fetch_at": self.fetches.last_at(),
            "probes_last_hour": self.probes.count(),
            "fetches_last_hour": self.fetches.count(),
        }
        if self.probe_error:
            out["last_probe_error"] = self.probe_error
        return out

    def health_fields(self) -> dict:
        """What `health` says about sync: the state, and the probing mode and counts (sync_ prefixed)."""
        probe = self._probe_status()
        return {"sync_state": self.sync_state(), "sync_mode": probe["mode"],
                "sync_last_probe_at": probe["last_probe_at"], "sync_last_fetch_at": probe["last_fetch_at"],
                "sync_probes_last_hour": probe["probes_last_hour"],
                "sync_fetches_last_hour": probe["fetches_last_hour"]}

    # -- RPC ------------------------------------------------------------------------------------

    def rpc_force(self, p, ctx):
        """sync.force {wait?: bool} -> status now, or with wait the round's result when it ends."""
        wait = p.bool("wait")
        if not wait:
            self.request()
            return {"triggered": True, **self.status()}
        from thrum.rpc import Deferred

        deferred = Deferred()
        self.request((deferred, getattr(ctx, "conn", None)))
        return deferred

    def rpc_status(self, p, ctx):
        return self.status()


def make_component(paths):
    """The daemon's sync loop (daemon.COMPONENT_MODULES)."""
    return SyncLoop(paths)
