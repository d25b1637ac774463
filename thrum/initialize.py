"""`thrum init`: the `.thrum/` directory, `.gitignore` entries and the `a-sync` branch.

Always at the git toplevel (never a nested `.thrum/` in a subdirectory); idempotent;
a first-time failure removes what it created. In a linked git worktree it writes
`.thrum/redirect` to the main checkout's `.thrum/` instead.
"""

from __future__ import annotations

import os
import shutil

from thrum import sync
from thrum.config import load_config, save_config
from thrum.identity import atomic_write

__all__ = ["init_repo", "InitError", "GITIGNORE_LINES"]

GITIGNORE_LINES = (".thrum/", ".thrum.*.json")
GITIGNORE_HEADER = "# Thrum data directory (all data lives on a-sync branch via worktree)"


class InitError(Exception):
    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


_cli_error = InitError


def init_repo(path: str, *, force: bool = False, dry_run: bool = False) -> dict:
    try:
        info = sync.repo_info(path)
    except sync.GitError as exc:
        raise _cli_error(exc.stderr) from None
    root = info.toplevel
    thrum_dir = os.path.join(root, ".thrum")
    if info.is_linked_worktree:
        return _init_worktree(root, info, dry_run)
    already = os.path.isdir(thrum_dir)
    actions = []
    if dry_run:
        if not already:
            actions.append("create .thrum/ (var/, identities/, config.json)")
        actions.append(f"ensure branch {sync.SYNC_BRANCH} and its worktree at {info.sync_dir}")
        actions.append("add .thrum/ to .gitignore")
        return {"dry_run": True, "repository": root, "actions": actions, "already": already}
    try:
        os.makedirs(os.path.join(thrum_dir, "identities"), mode=0o750, exist_ok=True)
        os.makedirs(os.path.join(thrum_dir, "var"), mode=0o700, exist_ok=True)
        os.chmod(os.path.join(thrum_dir, "var"), 0o700)
        if not already:
            actions.append("Created: .thrum/ directory structure")
            atomic_write(os.path.join(thrum_dir, "schema_version"), b"1\n", 0o644)
        config_path = os.path.join(thrum_dir, "config.json")
        if not os.path.exists(config_path):
            save_config(config_path, {"daemon": {"sync_interval": 60}})
        notes: list[str] = []
        how = sync.ensure_sync_branch(root, notes=notes)
        if how == "created":
            actions.append(f"Created: {sync.SYNC_BRANCH} branch for message sync")
        elif how == "remote":
            actions.append(f"Adopted: {sync.SYNC_BRANCH} branch from origin (shared history)")
        actions += [f"Note: {n}" for n in notes]
        moved = sync.ensure_worktree(root, info.sync_dir)
        if moved:
            from thrum.migrate import union_import

            counts = union_import(moved, info.sync_dir)
            shutil.rmtree(moved, ignore_errors=True)
            actions.append(f"Repaired: sync worktree (kept {counts['added']} uncommitted lines)")
        if _update_gitignore(root):
            actions.append("Updated: .gitignore")
    except sync.GitError as exc:
        if not already:
            shutil.rmtree(thrum_dir, ignore_errors=True)
        raise _cli_error(f"failed to set up the sync branch: {exc}") from None
    except BaseException:
        if not already:
            shutil.rmtree(thrum_dir, ignore_errors=True)
        raise
    return {"repository": root, "already": already and not force, "actions": actions,
            "sync_worktree": info.sync_dir}


def _update_gitignore(root: str) -> bool:
    path = os.path.join(root, ".gitignore")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    present = {line.strip() for line in text.splitlines()}
    missing = [line for line in GITIGNORE_LINES if line not in present]
    if not missing:
        return False
    prefix = "" if not text or text.endswith("\n") else "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(prefix + ("\n" if text else "") + GITIGNORE_HEADER + "\n" + "\n".join(missing) + "\n")
    return True


def _init_worktree(root: str, info, dry_run: bool) -> dict:
    main_root = os.path.dirname(os.path.realpath(info.common_dir))
    main_thrum = os.path.join(main_root, ".thrum")
    if not os.path.isdir(main_thrum):
        raise _cli_error(f"this is a git worktree, but the main repo ({main_root}) is not initialized.",
                         "Run 'thrum init' in the main repo first, then run 'thrum init' here again")
    if not dry_run:
        write_redirect(root, main_thrum)
    return {"worktree": True, "repository": root, "main_repo": main_root, "already": False, "actions": []}


def write_redirect(root: str, main_thrum: str) -> None:
    local = os.path.join(root, ".thrum")
    if os.path.realpath(local) == os.path.realpath(main_thrum):
        raise _cli_error("cannot setup redirect to self — this is the main repo")
    os.makedirs(os.path.join(local, "identities"), mode=0o750, exist_ok=True)
    atomic_write(os.path.join(local, "redirect"), (os.path.abspath(main_thrum) + "\n").encode(), 0o644)
    _update_gitignore(root)
