"""Where things live: the repo root, the effective `.thrum/` (after a redirect), `var/`.

Imported by every CLI call, so it uses only `os`. The sync worktree's location needs
git (`--git-common-dir`) and is computed in sync.py, by the daemon and `init` only.
"""

from __future__ import annotations

import os

__all__ = ["ThrumPaths", "find_repo_root", "resolve", "RedirectError", "NotInitialized"]

THRUM_DIR = ".thrum"


class RedirectError(Exception):
    """`.thrum/redirect` is present but unusable."""


class NotInitialized(Exception):
    """No `.thrum/` here: the user must run `thrum init`."""


def find_repo_root(start: str) -> str | None:
    """The nearest directory at or above `start` that contains `.thrum/`, within one git checkout.

    The walk stops at a checkout's top (a `.git` dir or file): a linked worktree nested
    inside the main checkout must never borrow the main checkout's identities.
    """
    path = os.path.abspath(start)
    while True:
        if os.path.isdir(os.path.join(path, THRUM_DIR)):
            return path
        if os.path.exists(os.path.join(path, ".git")):
            return None
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def find_git_toplevel(start: str) -> str | None:
    """The nearest directory holding `.git` (a dir or a worktree's file), without running git."""
    path = os.path.abspath(start)
    while True:
        if os.path.exists(os.path.join(path, ".git")):
            return path
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def read_redirect(local_thrum: str) -> str | None:
    """The main `.thrum/` a feature worktree points to, or None when there is no redirect."""
    redirect = os.path.join(local_thrum, "redirect")
    try:
        with open(redirect, encoding="utf-8") as f:
            target = f.read().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RedirectError(f"cannot read {redirect}: {exc.strerror}") from None
    if not target:
        raise RedirectError("redirect file is empty")
    if not os.path.isabs(target):
        raise RedirectError(f"redirect target must be absolute path, got: {target}")
    if os.path.basename(os.path.normpath(target)) != ".thrum":  # never a way to put var/ anywhere else
        raise RedirectError(f"redirect target must be a .thrum directory, got: {target}")
    if not os.path.isdir(target):
        raise RedirectError(f"redirect target does not exist: {target}")
    if os.path.exists(os.path.join(target, "redirect")):
        raise RedirectError(f"redirect chain detected: {redirect} -> {target} redirects again")
    return target


class ThrumPaths:
    """The files of one repository's thrum state.

    `local` is this worktree's own `.thrum/` (identities live there); `thrum` is the
    effective one (a redirect's target, or `local`), which holds `var/` and config.
    """

    def __init__(self, repo: str, local: str, thrum: str) -> None:
        self.repo = repo
        self.local = local
        self.thrum = thrum
        self.var = os.path.join(thrum, "var")
        self.main_repo = os.path.dirname(thrum)

    @property
    def redirected(self) -> bool:
        return self.local != self.thrum

    def for_daemon(self) -> "ThrumPaths":
        """The main checkout's paths: one daemon serves every worktree, whichever one starts it."""
        return self if not self.redirected else ThrumPaths(self.main_repo, self.thrum, self.thrum)

    @property
    def socket(self) -> str:
        return os.environ.get("THRUM_SOCKET") or os.path.join(self.var, "thrum.sock")

    def var_file(self, name: str) -> str:
        return os.path.join(self.var, name)

    @property
    def identities(self) -> str:
        return os.path.join(self.local, "identities")

    @property
    def config(self) -> str:
        return os.path.join(self.thrum, "config.json")

    @property
    def context_dir(self) -> str:
        return os.path.join(self.thrum, "context")

    @property
    def db(self) -> str:
        return os.path.join(self.var, "messages.db")

    @property
    def log(self) -> str:
        return os.path.join(self.var, "daemon.log")


def resolve(repo: str | None = None, *, walk: bool = True) -> ThrumPaths:
    """Locate the thrum state for `repo` (or the cwd, walking up to the nearest `.thrum/`)."""
    start = os.path.abspath(repo or os.getcwd())
    root = find_repo_root(start) if walk else (start if os.path.isdir(os.path.join(start, THRUM_DIR)) else None)
    if root is None:
        raise NotInitialized(start)
    local = os.path.join(root, THRUM_DIR)
    target = read_redirect(local)
    return ThrumPaths(root, local, target or local)
