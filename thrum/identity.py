"""Agent names, identity files and which identity a CLI process acts as.

Identity files are `<local .thrum>/identities/<name>.json`, one per agent, in the Go
layout (keys inside `agent` capitalized; both cases are read). Resolution order:
THRUM_NAME, then `--name`, then the single identity of this worktree. Uses only
`os` and `json` because every CLI call goes through it.
"""

from __future__ import annotations

import json
import os

__all__ = [
    "NAME_CHARS", "RESERVED_NAMES", "InvalidName", "IdentityError", "Identity",
    "validate_name", "validate_word", "unnamed_agent_id", "load_identity", "save_identity",
    "list_identities", "resolve_identity", "atomic_write",
]

NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
RESERVED_NAMES = frozenset({"daemon", "system", "thrum", "all", "broadcast", "everyone"})
MAX_NAME_LEN = 64


class InvalidName(ValueError):
    """A name, role, module or context name that may not be used."""


class IdentityError(Exception):
    """No identity could be chosen; `hint` tells the user what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def validate_word(value: object, what: str) -> str:
    """`^[a-z0-9_]+$`, at most 64 characters: the rule for roles, modules and names."""
    if not isinstance(value, str) or value == "":
        raise InvalidName(f"{what} cannot be empty")
    if len(value) > MAX_NAME_LEN:
        raise InvalidName(f"{what} '{value[:20]}…' is longer than {MAX_NAME_LEN} characters")
    if not NAME_CHARS.issuperset(value):
        raise InvalidName(
            f"{what} '{value}' contains invalid characters; only lowercase letters (a-z), "
            "digits (0-9), and underscores (_) are allowed")
    return value


def validate_name(value: object, what: str = "agent name") -> str:
    validate_word(value, what)
    if value in RESERVED_NAMES:
        raise InvalidName(f"{what} '{value}' is reserved and cannot be used")
    return value  # type: ignore[return-value]


def unnamed_agent_id(repo_id: str, role: str, module: str) -> str:
    """`<role>_` + 10 lowercase Crockford chars of sha256("repo|role|module") (Go's rule)."""
    import hashlib

    from thrum.events import crockford_lower

    digest = hashlib.sha256(f"{repo_id}|{role}|{module}".encode()).digest()
    return f"{role}_{crockford_lower(digest, 10)}"


class Identity:
    __slots__ = ("name", "role", "module", "display", "worktree", "updated_at", "context_file", "path")

    def __init__(self, name: str, role: str, module: str, display: str = "", worktree: str = "",
                 updated_at: str = "", context_file: str = "", path: str = "") -> None:
        self.name, self.role, self.module, self.display = name, role, module, display
        self.worktree, self.updated_at, self.context_file, self.path = worktree, updated_at, context_file, path

    def to_file_dict(self) -> dict:
        data = {
            "version": 1,
            "repo_id": "",
            "agent": {"Kind": "agent", "Name": self.name, "Role": self.role,
                      "Module": self.module, "Display": self.display},
            "worktree": self.worktree,
            "confirmed_by": "",
            "updated_at": self.updated_at,
        }
        if self.context_file:
            data["context_file"] = self.context_file
        return data


def _field(agent: dict, key: str) -> str:
    # Go writes capitalized keys and reads case-insensitively; accept both.
    value = agent.get(key.capitalize(), agent.get(key, ""))
    return value if isinstance(value, str) else ""


def load_identity(path: str) -> Identity:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        agent = data["agent"]
        if not isinstance(agent, dict):
            raise TypeError
    except FileNotFoundError:
        raise IdentityError(f"identity file not found: {path}") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise IdentityError(f"identity file is unreadable: {path}") from None
    name = _field(agent, "name")
    if not name:  # legacy `<role>_<module>.json` files carry no name
        name = os.path.basename(path)[:-5]
    return Identity(name, _field(agent, "role"), _field(agent, "module"), _field(agent, "display"),
                    data.get("worktree", "") or "", data.get("updated_at", "") or "",
                    data.get("context_file", "") or "", path)


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write via a temp file in the same directory, fsync, then rename into place."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def save_identity(identities_dir: str, ident: Identity) -> str:
    from thrum.events import now_timestamp

    validate_name(ident.name)
    os.makedirs(identities_dir, mode=0o750, exist_ok=True)
    ident.updated_at = now_timestamp()
    path = os.path.join(identities_dir, ident.name + ".json")
    atomic_write(path, (json.dumps(ident.to_file_dict(), indent=2) + "\n").encode())
    ident.path = path
    return path


def list_identities(identities_dir: str) -> list[str]:
    try:
        return sorted(n[:-5] for n in os.listdir(identities_dir) if n.endswith(".json"))
    except FileNotFoundError:
        return []


def resolve_identity(identities_dir: str, name: str | None = None, *, worktree: str = "",
                     env: dict | None = None) -> Identity:
    """Pick the identity this process acts as: THRUM_NAME > `name` > the single one."""
    env = os.environ if env is None else env
    from_env = env.get("THRUM_NAME", "")
    if from_env:
        try:
            validate_name(from_env)
        except InvalidName as exc:
            raise IdentityError(f"invalid THRUM_NAME: {exc}") from None
        name = from_env
    if name:
        validate_name(name)
        path = os.path.join(identities_dir, name + ".json")
        if not os.path.exists(path):
            available = list_identities(identities_dir)
            raise IdentityError(
                f"no identity named '{name}' in {identities_dir}",
                f"Register with: thrum quickstart --name {name} --role <role> --module <module>"
                + (f"\n  Available: {', '.join(available)}" if available else ""))
        ident = load_identity(path)
    else:
        names = list_identities(identities_dir)
        if not names:
            raise IdentityError(
                "no agent identities registered in this worktree",
                "Register with: thrum quickstart --name <name> --role <role> --module <module>")
        if len(names) == 1:
            ident = load_identity(os.path.join(identities_dir, names[0] + ".json"))
        else:
            loaded = [load_identity(os.path.join(identities_dir, n + ".json")) for n in names]
            here = [i for i in loaded if worktree and i.worktree == worktree]
            if len(here) != 1:
                raise IdentityError(
                    f"cannot auto-select identity: {len(names)} identity files found in .thrum/identities/",
                    f"Hint: set THRUM_NAME=<name> or pass --name <name>\n  Available: {', '.join(names)}")
            ident = here[0]
    ident.role = env.get("THRUM_ROLE") or ident.role
    ident.module = env.get("THRUM_MODULE") or ident.module
    ident.display = env.get("THRUM_DISPLAY") or ident.display
    return ident
