"""The `a-sync` branch, its worktree, and the git calls that maintain them.

Git is always run as an argument list with a timeout, `GIT_TERMINAL_PROMPT=0`, a
pinned committer identity, no hooks, no signing, and never on the user's index,
worktree or HEAD. Branch writes go through `update-ref` with the expected old
value, so two writers racing on the ref fail loudly instead of losing a commit.
"""

from __future__ import annotations

import os
import shutil
import subprocess

__all__ = [
    "GitError", "git", "git_env", "repo_info", "sync_dir_for", "ensure_sync_branch", "ensure_worktree",
    "SYNC_BRANCH", "EMPTY_INIT_MESSAGE",
]

SYNC_BRANCH = "a-sync"
SYNC_REF = "refs/heads/a-sync"
EMPTY_INIT_MESSAGE = "Initialize Thrum sync data"
IDENTITY = ("thrum", "thrum@localhost")
DEFAULT_TIMEOUT = 10.0


class GitError(Exception):
    def __init__(self, args: list[str], returncode: int, stderr: str) -> None:
        self.args_list = args
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"git {' '.join(args)} failed ({returncode}): {self.stderr or 'no output'}")


def git_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    for key in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR"):
        env.pop(key, None)  # a caller's git hook environment must not redirect our calls
    env.update({
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/true" if os.path.exists("/bin/true") else "true",
        "GIT_AUTHOR_NAME": IDENTITY[0], "GIT_AUTHOR_EMAIL": IDENTITY[1],
        "GIT_COMMITTER_NAME": IDENTITY[0], "GIT_COMMITTER_EMAIL": IDENTITY[1],
        "LC_ALL": "C",
    })
    if extra:
        env.update(extra)
    return env


_SAFE_CONFIG = ["-c", "core.hooksPath=/dev/null", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false",
                "-c", "core.fsmonitor=false", "-c", "gc.auto=0"]


def git_argv(args: list[str]) -> list[str]:
    return ["git", *_SAFE_CONFIG, *args]


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


def ensure_sync_branch(repo_root: str, *, fetch_remote: bool = True) -> str:
    """Make sure `a-sync` exists: adopt `origin/a-sync` when there is one, else start an orphan.

    Returns how it was obtained: "existing", "remote" or "created".
    """
    if _ref_exists(SYNC_REF, repo_root):
        return "existing"
    if fetch_remote and has_remote(repo_root):
        # A fresh clone must continue the shared history, never start a second one.
        git(["fetch", "--quiet", "--no-tags", "origin", f"+{SYNC_REF}:refs/remotes/origin/{SYNC_BRANCH}"],
            repo_root, check=False, timeout=30)
    remote = f"refs/remotes/origin/{SYNC_BRANCH}"
    if _ref_exists(remote, repo_root):
        sha = _out(["rev-parse", remote], repo_root)
        git(["update-ref", SYNC_REF, sha, ""], repo_root)
        return "remote"
    blob = _out(["hash-object", "-w", "--stdin"], repo_root, input=b"")
    tree = _out(["mktree"], repo_root, input=f"100644 blob {blob}\tevents.jsonl\n".encode())
    commit = _out(["commit-tree", tree, "-m", EMPTY_INIT_MESSAGE], repo_root)
    git(["update-ref", SYNC_REF, commit, ""], repo_root)  # "" = the ref must not exist yet
    return "created"


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
    os.makedirs(os.path.join(sync_dir, "messages"), exist_ok=True)
    events = os.path.join(sync_dir, "events.jsonl")
    if not os.path.exists(events):
        open(events, "ab").close()


def remove_broken(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
