"""Live git work context of each session, worktrees of the repository, orphans and stale sessions.

Git parsing and refresh logic for the daemon component (coordination.py, which imports
this module, never the other way) that keeps `work_contexts` current for the sessions this
daemon started (a session.start `worktree` ref names the checkout). A refresh of
one checkout costs at most four short git processes, whatever the history size:

    for-each-ref   the main-branch refs (cached for a while)
    log            every commit of HEAD not on a main branch, with its files (one process)
    status         porcelain v2: branch and uncommitted files with their status
    diff --numstat per-file additions and deletions against the branch's fork point

They run through `daemon.loop.spawn` with timeouts, so the loop never waits. The
parsers below are pure functions over git's bytes (tested without processes); the
CLI uses the same ones, synchronously, when the daemon is down (`thrum prime`).

What reaches the log: when a refresh finds a new branch, new commits or a new set
of changed files, the session's context is written as an `agent.update` event, so
other clones see it after a sync and a rebuild keeps it. Changes of line counts
alone are kept in the local projection and logged at most every LOG_NUMBERS_EVERY
seconds. The "last checked" time (`git_checked_at`) is local-only.
"""

from __future__ import annotations

import json
import logging
import os
import time

from thrum.events import format_ns, now_ns, parse_timestamp_ns, EventError

__all__ = [
    "parse_status", "parse_log", "parse_diff", "parse_base_refs", "build_context", "read_context",
    "git_common_dir", "list_worktrees", "identity_locations", "make_component", "STALE_REASON",
]

log = logging.getLogger("thrum.gitctx")

GIT_TIMEOUT = 5.0
MAX_OUTPUT = 8 * 1024 * 1024   # a checkout with more status than this is not refreshed
MAX_COMMITS = 100
MAX_FILES = 300
REFRESH_EVERY = 45.0           # seconds between refreshes of an open session's checkout
BASE_TTL = 120.0               # how long the main-branch refs of a checkout are reused
LOG_NUMBERS_EVERY = 300.0      # line-count-only changes reach the log at most this often
DEFAULT_SESSION_TIMEOUT = 120 * 60
STALE_REASON = "stale"
LOG_BUDGET = 50 * 1024         # an agent.update line must stay under the log's 60 KiB line limit

_BASE_CANDIDATES = ("refs/remotes/origin/HEAD", "refs/remotes/origin/main", "refs/remotes/origin/master",
                    "refs/heads/main", "refs/heads/master")
_RS, _US = "\x1e", "\x1f"


# -- git command lines ----------------------------------------------------------

def _argv(*args: str) -> list[str]:
    # No index refresh (no index.lock fights with the user's git), raw UTF-8 paths.
    return ["git", "--no-optional-locks", "-c", "core.quotePath=false", "-c", "core.fsmonitor=false",
            "-c", "color.ui=false", *args]


def base_refs_argv() -> list[str]:
    return _argv("for-each-ref", "--format=%(refname)%00%(symref)", *_BASE_CANDIDATES)


def status_argv() -> list[str]:
    return _argv("status", "--porcelain=v2", "-z", "--branch", "--untracked-files=all")


def log_argv(bases: list[str]) -> list[str]:
    # %P lets the parser find where the branch leaves the main line (for the diff).
    return _argv("log", "--topo-order", "--name-only", f"--format={_RS}%H{_US}%P{_US}%cI{_US}%s",
                 "-n", str(MAX_COMMITS + 1), "HEAD", "--not", *bases, "--")


def diff_argv(fork_point: str) -> list[str]:
    return _argv("diff", "--no-ext-diff", "--no-textconv", "-z", "--raw", "--numstat", fork_point, "--")


# -- parsers (pure) ----------------------------------------------------------------

def parse_base_refs(out: bytes) -> list[str]:
    """The refs that count as "the main branch", most specific first (origin/HEAD's target leads)."""
    found: dict[str, str] = {}
    for line in out.decode("utf-8", "replace").splitlines():
        name, _, symref = line.partition("\0")
        found[name] = symref
    refs = []
    head = found.get("refs/remotes/origin/HEAD")
    if head:
        refs.append(head)
    for name in _BASE_CANDIDATES[1:]:
        if name in found and name not in refs:
            refs.append(name)
    env = os.environ.get("THRUM_BASE_BRANCH", "").strip()
    if env:
        refs.insert(0, env if env.startswith("refs/") else f"refs/heads/{env}")
    return refs


_STATUS_WORDS = {"M": "modified", "T": "modified", "A": "added", "D": "deleted", "R": "renamed",
                 "C": "copied", "U": "conflicted", "?": "untracked"}


# Paths are decoded with "replace": a file name that is not UTF-8 must not make the
# context unloggable (the log is UTF-8 JSON); it only shows with U+FFFD in it.

def parse_status(out: bytes) -> dict:
    """`status --porcelain=v2 -z --branch` -> {branch, head, files: {path: {status, old_path?}}}."""
    tokens = out.decode("utf-8", "replace").split("\0")
    branch, head = "", ""
    files: dict[str, dict] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if not tok:
            continue
        kind = tok[0]
        if kind == "#":
            parts = tok.split(" ", 2)
            if len(parts) == 3 and parts[1] == "branch.head":
                branch = "" if parts[2] == "(detached)" else parts[2]
            elif len(parts) == 3 and parts[1] == "branch.oid" and parts[2] != "(initial)":
                head = parts[2]
        elif kind == "1":  # 1 XY sub mH mI mW hH hI path
            fields = tok.split(" ", 8)
            if len(fields) == 9:
                files[fields[8]] = {"status": _xy_word(fields[1])}
        elif kind == "2":  # 2 XY sub mH mI mW hH hI Xscore path \0 origPath
            fields = tok.split(" ", 9)
            old = tokens[i] if i < len(tokens) else ""
            i += 1
            if len(fields) == 10:
                files[fields[9]] = {"status": _xy_word(fields[1]), "old_path": old}
        elif kind == "u":  # u XY sub m1 m2 m3 mW h1 h2 h3 path
            fields = tok.split(" ", 10)
            if len(fields) == 11:
                files[fields[10]] = {"status": "conflicted"}
        elif kind == "?":
            files[tok[2:]] = {"status": "untracked"}
    return {"branch": branch, "head": head, "files": files}


def _xy_word(xy: str) -> str:
    # The worktree column says what the file is now; the index column what is staged.
    for c in (xy[1:2], xy[:1]):
        if c and c != ".":
            return _STATUS_WORDS.get(c, "modified")
    return "modified"


def parse_log(out: bytes) -> dict:
    """`log --name-only --format=<RS>%H<US>%P<US>%cI<US>%s` -> {commits, truncated, fork_point}."""
    commits = []
    parents: dict[str, list[str]] = {}
    for chunk in out.decode("utf-8", "replace").split(_RS):
        if not chunk.strip():
            continue
        header, _, rest = chunk.partition("\n")
        fields = header.split(_US, 3)
        if len(fields) != 4:
            continue
        sha, par, date, subject = fields
        files = [ln for ln in rest.split("\n") if ln]
        commits.append({"sha": sha, "message": subject, "date": date, "files": files})
        parents[sha] = par.split()
    truncated = len(commits) > MAX_COMMITS
    commits = commits[:MAX_COMMITS]
    fork = ""
    if commits and not truncated:
        # In topo order every parent follows its children: the last commit's first
        # parent is where the branch left the main line.
        last = parents.get(commits[-1]["sha"]) or []
        fork = last[0] if last else ""
    return {"commits": commits, "truncated": truncated, "fork_point": fork}


def parse_diff(out: bytes) -> dict:
    """`diff -z --raw --numstat` -> {path: {status, additions, deletions, old_path?}}."""
    tokens = out.decode("utf-8", "replace").split("\0")
    result: dict[str, dict] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if not tok:
            continue
        if tok.startswith(":"):  # :mode mode sha sha STATUS \0 path [\0 path]
            letter = tok.split()[-1][:1] if tok.split() else "M"
            if letter in "RC":
                old, new = tokens[i], tokens[i + 1] if i + 1 < len(tokens) else ""
                i += 2
                result.setdefault(new, {}).update({"status": _STATUS_WORDS[letter], "old_path": old})
            else:
                path = tokens[i] if i < len(tokens) else ""
                i += 1
                result.setdefault(path, {})["status"] = _STATUS_WORDS.get(letter, "modified")
            continue
        parts = tok.split("\t", 2)
        if len(parts) != 3:
            continue
        adds, dels, path = parts
        if not path:  # a rename: old and new path follow
            path = tokens[i + 1] if i + 1 < len(tokens) else ""
            i += 2
        entry = result.setdefault(path, {})
        entry["additions"] = int(adds) if adds.isdigit() else 0
        entry["deletions"] = int(dels) if dels.isdigit() else 0
        if adds == "-":
            entry["binary"] = True
    result.pop("", None)
    return result


UNTRACKED_READ_BUDGET = 2 * 1024 * 1024  # bytes read per refresh to count new files' lines


def _count_lines(path: str, budget: list[int]) -> tuple[int, bool] | None:
    """(lines, binary) of a small untracked file, or None when over the read budget."""
    try:
        size = os.stat(path).st_size
        if size > budget[0]:
            return None
        with open(path, "rb") as f:
            data = f.read(size)
    except OSError:
        return None
    budget[0] -= len(data)
    if b"\0" in data[:8192]:
        return 0, True
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0), False


def build_context(worktree: str, status: dict, log_info: dict, diff: dict, *, stat=os.stat) -> dict:
    """One work context (the git part) from the three parsed outputs.

    changed_files: every path that differs from the fork point, committed or not;
    uncommitted_files: what `git status` lists (untracked included);
    file_changes: per path, its status, line counts and when it last changed.
    """
    commit_time: dict[str, str] = {}
    for c in reversed(log_info["commits"]):  # oldest first, so the newest commit wins
        for f in c["files"]:
            commit_time[f] = c["date"]
    uncommitted = status["files"]
    paths = list(dict.fromkeys([*diff, *uncommitted]))
    changes = []
    budget = [UNTRACKED_READ_BUDGET]
    for path in paths[:MAX_FILES]:
        d = diff.get(path, {})
        u = uncommitted.get(path)
        if u is not None and u.get("status") == "untracked" and not d:
            counted = _count_lines(os.path.join(worktree, path), budget)
            if counted is not None:
                d = {"additions": counted[0], "deletions": 0, "binary": counted[1]}
        # The status against the fork point (added on this branch) says more than the worktree's.
        entry = {"path": path, "status": d.get("status") or (u or {}).get("status") or "modified",
                 "additions": d.get("additions", 0), "deletions": d.get("deletions", 0)}
        old = (u or {}).get("old_path") or d.get("old_path")
        if old:
            entry["old_path"] = old
        if d.get("binary"):
            entry["binary"] = True
        if u is not None:
            entry["uncommitted"] = True
            try:
                entry["last_modified"] = format_ns(stat(os.path.join(worktree, path)).st_mtime_ns)
            except OSError:
                entry["last_modified"] = ""
        if not entry.get("last_modified") and path in commit_time:
            entry["last_modified"] = _rfc3339_utc(commit_time[path])
        entry.setdefault("last_modified", "")
        changes.append(entry)
    wc = {
        "branch": status["branch"] or ("(detached)" if status["head"] else ""),
        "worktree_path": worktree,
        "unmerged_commits": [{"sha": c["sha"], "message": c["message"], "files": c["files"][:50]}
                             for c in log_info["commits"]],
        "uncommitted_files": sorted(uncommitted)[:MAX_FILES],
        "changed_files": paths[:MAX_FILES],
        "file_changes": changes,
    }
    if log_info.get("truncated"):
        wc["unmerged_truncated"] = True
    return wc


def _rfc3339_utc(date: str) -> str:
    try:
        return format_ns(parse_timestamp_ns(date))
    except EventError:
        return date


def content_key(wc: dict) -> str:
    """What a refresh compares: the git part without times (mtimes move on a mere `touch`)."""
    changes = [{k: v for k, v in f.items() if k != "last_modified"} for f in wc.get("file_changes") or []]
    return json.dumps([wc.get("branch") or "", wc.get("worktree_path") or "",
                       [c.get("sha") for c in wc.get("unmerged_commits") or []],
                       sorted(wc.get("uncommitted_files") or []), changes], sort_keys=True)


def shape_key(wc: dict) -> str:
    """The part worth an immediate log line: branch, commits and which files (not line counts)."""
    return json.dumps([wc.get("branch") or "", [c.get("sha") for c in wc.get("unmerged_commits") or []],
                       sorted(wc.get("changed_files") or []), sorted(wc.get("uncommitted_files") or [])])


def fit_for_log(wc: dict) -> dict:
    """Trim a context so its agent.update line stays well under the log's line limit."""
    out = dict(wc)
    if len(json.dumps(out, ensure_ascii=False)) <= LOG_BUDGET:
        return out
    out["unmerged_commits"] = [{"sha": c["sha"], "message": c["message"][:200]} for c in out["unmerged_commits"]]
    for key in ("file_changes", "changed_files", "uncommitted_files", "unmerged_commits"):
        while len(json.dumps(out, ensure_ascii=False)) > LOG_BUDGET and out.get(key):
            out[key] = out[key][: len(out[key]) // 2]
            out["truncated"] = True
    return out


# -- synchronous reading (the CLI, when the daemon is down) ----------------------------

def read_context(worktree: str, timeout: float = GIT_TIMEOUT) -> dict:
    """The same context the daemon computes, with blocking subprocess calls (bounded)."""
    import subprocess

    from thrum.sync import git_env

    def run(argv: list[str]) -> bytes | None:
        try:
            proc = subprocess.run(argv, cwd=worktree, env=git_env(), capture_output=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout if proc.returncode == 0 else None

    st = run(status_argv())
    if st is None:
        raise ValueError(f"not a git checkout: {worktree}")
    bases = parse_base_refs(run(base_refs_argv()) or b"")
    log_info = parse_log(run(log_argv(bases)) or b"") if bases else parse_log(b"")
    fork = log_info["fork_point"] or ("HEAD" if not log_info["commits"] else "")
    diff = parse_diff(run(diff_argv(fork)) or b"") if fork else {}
    return build_context(worktree, parse_status(st), log_info, diff)


# -- worktrees and identities, from git's own files (no process) -----------------------

def git_common_dir(toplevel: str) -> str | None:
    """The repository's common git dir, read from `.git` the way git does (gitrepository-layout(5))."""
    dotgit = os.path.join(toplevel, ".git")
    if os.path.isdir(dotgit):
        gitdir = dotgit
    else:
        try:
            with open(dotgit, encoding="utf-8") as f:
                text = f.read().strip()
        except OSError:
            return None
        if not text.startswith("gitdir:"):
            return None
        gitdir = text[len("gitdir:"):].strip()
        if not os.path.isabs(gitdir):
            gitdir = os.path.normpath(os.path.join(toplevel, gitdir))
    try:
        with open(os.path.join(gitdir, "commondir"), encoding="utf-8") as f:
            common = f.read().strip()
        gitdir = common if os.path.isabs(common) else os.path.normpath(os.path.join(gitdir, common))
    except OSError:
        pass
    return gitdir


def list_worktrees(common_dir: str) -> list[dict]:
    """Every checkout of the repository: [{path, main, exists}] (the thrum sync worktree excluded).

    Reads `<common>/worktrees/*/gitdir`, which is what `git worktree list` reads, so
    a request can answer without waiting for a child process.
    """
    out = []
    if os.path.basename(os.path.normpath(common_dir)) == ".git":
        main = os.path.dirname(os.path.normpath(common_dir))
        out.append({"path": main, "main": True, "exists": os.path.isdir(main)})
    admin = os.path.join(common_dir, "worktrees")
    try:
        names = sorted(os.listdir(admin))
    except OSError:
        names = []
    sync_root = os.path.join(os.path.realpath(common_dir), "thrum-sync")
    for name in names:
        try:
            with open(os.path.join(admin, name, "gitdir"), encoding="utf-8") as f:
                dotgit = f.read().strip()
        except OSError:
            continue
        path = os.path.dirname(dotgit)
        if os.path.realpath(path).startswith(sync_root + os.sep):
            continue
        out.append({"path": path, "main": False, "exists": os.path.isdir(path)})
    return out


def identity_locations(worktrees: list[dict]) -> dict[str, list[str]]:
    """agent name -> identity files naming it, across every existing worktree."""
    found: dict[str, list[str]] = {}
    for wt in worktrees:
        if not wt["exists"]:
            continue
        ids = os.path.join(wt["path"], ".thrum", "identities")
        try:
            names = sorted(os.listdir(ids))
        except OSError:
            continue
        for n in names:
            if n.endswith(".json"):
                found.setdefault(n[:-5], []).append(os.path.join(ids, n))
    return found


def ref_exists(common_dir: str, branch: str) -> bool:
    """Whether refs/heads/<branch> exists (loose or packed), without running git."""
    if not branch or branch.startswith("("):
        return False
    if os.path.isfile(os.path.join(common_dir, "refs", "heads", *branch.split("/"))):
        return True
    try:
        with open(os.path.join(common_dir, "packed-refs"), encoding="utf-8") as f:
            return any(line.rstrip("\n").endswith(" refs/heads/" + branch) for line in f)
    except OSError:
        return False


def parse_seconds(text: str) -> float | None:
    """`90`, `45s`, `30m`, `2h`, `1h30m` -> seconds; None when unreadable."""
    text = (text or "").strip().lower()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    total, num = 0.0, ""
    for ch in text:
        if ch.isdigit() or ch == ".":
            num += ch
        elif ch in "smhd" and num:
            total += float(num) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[ch]
            num = ""
        else:
            return None
    return None if num else total

