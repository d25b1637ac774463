"""`thrum backup`: one archive of a repository's thrum data; `verify` checks it; `restore` brings it back.

An archive is a gzip-compressed tar holding

    log/events.jsonl, log/messages/<name>.jsonl   the log, byte for byte as in the sync worktree
                                                   (whole lines only: a line being written is left out)
    identities/<name>.json                         this worktree's agent identities
    context/<name>.md                              the agents' context notes
    config.json                                    the repository's thrum settings
    manifest.json                                  last: format, versions, repo id, and the size and
                                                   sha256 of every other member

The database is not in it: it is a projection, rebuilt from the log on restore. Delivery
receipts and read markers are log events, so they come back with the log; the delivery cursor
is local and restarts at the newest message (docs/architecture.md).

Restore never removes an event. The log is append-only and shared with other clones, so a
restore adds every event of the archive that the repository lacks (deduplicated by event_id,
as sync does): into a fresh repository that gives the archive's log exactly; into a used one,
the union. It refuses, without `--force`, when the repository holds data the archive does not
(events it lacks, identity or context files that differ), and with `--force` it first saves the
current state as a backup. It needs the daemon stopped (it takes the daemon's lock, as
`thrum migrate` does), commits the restored log onto the local sync branch (so the next sync
pushes it) and rebuilds the database. Every archive is verified completely before anything is
written: a damaged or foreign one changes nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import zlib

__all__ = ["BackupError", "create", "verify", "restore", "default_dir", "terminal_progress"]

FORMAT = "thrum-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20
MAX_MEMBERS = 200_000
CHUNK = 1 << 20

# Every member name an archive may hold; anything else (absolute paths, `..`, links,
# devices, unknown files) makes it foreign or unsafe, and it is refused whole.
_MEMBER = re.compile(r"^(log/events\.jsonl|log/messages/[A-Za-z0-9_-]+\.jsonl|identities/[A-Za-z0-9_-]+\.json"
                     r"|context/[A-Za-z0-9_-]+\.md|config\.json|manifest\.json)$")
_LOG_FILE = re.compile(r"^[A-Za-z0-9_-]+\.jsonl$")
_NOTE_FILE = re.compile(r"^[A-Za-z0-9_-]+\.md$")
_IDENTITY_FILE = re.compile(r"^[A-Za-z0-9_-]+\.json$")


class BackupError(Exception):
    """A backup cannot be made, checked or restored; `kind` says why, the message says what to do.

    kinds: "damaged" (truncated, corrupt, checksum mismatch), "foreign" (not a thrum backup),
    "unsafe" (a path or entry type that could write outside its place), "refused" (restore
    would overwrite data), "daemon" (the daemon runs), "io" (reading or writing failed).
    """

    def __init__(self, message: str, hint: str = "", kind: str = "io") -> None:
        super().__init__(message)
        self.hint = hint
        self.kind = kind


def default_dir(paths) -> str:
    """`.thrum/backups/`: inside the git-ignored `.thrum/`, outside the synced branch."""
    return os.path.join(paths.thrum, "backups")


# -- progress ---------------------------------------------------------------------------------------

def terminal_progress(stream=None, *, delay: float = 0.5, every: float = 0.1):
    """A progress(stage, done, total) callback for a terminal: silent for short runs, throttled."""
    stream = stream or sys.stderr
    start = time.monotonic()
    state = {"last": 0.0, "shown": False}

    def progress(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        finished = done >= total
        if now - start < delay and not state["shown"]:
            return
        if not finished and now - state["last"] < every:
            return
        state["last"], state["shown"] = now, True
        if stage.endswith("bytes"):
            text = f"{stage[:-6]}: {done / 1048576:.1f}/{total / 1048576:.1f} MiB"
        else:
            text = f"{stage}: {done}/{total}"
        stream.write(f"\r  {text}{' ' * 10}" + ("\n" if finished else ""))
        stream.flush()
    return progress


def _quiet(stage: str, done: int, total: int) -> None:
    pass


# -- what a repository holds ------------------------------------------------------------------------

def _sync_dir(paths) -> str:
    from thrum import sync

    return sync.repo_info(paths.main_repo).sync_dir


def _whole_lines_size(path: str) -> int:
    """The size up to the last newline: a line the daemon is writing right now is left out."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            step = min(pos, 65536)
            f.seek(pos - step)
            nl = f.read(step).rfind(b"\n")
            if nl >= 0:
                return pos - step + nl + 1
            pos -= step
    return 0


def _listdir(path: str, pattern: re.Pattern) -> list[str]:
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError:
        return []
    return [n for n in names if pattern.match(n) and os.path.isfile(os.path.join(path, n))
            and not os.path.islink(os.path.join(path, n))]


def _sources(paths, sync_dir: str) -> list[tuple[str, str]]:
    """(member name, file path) of everything a backup holds, manifest aside."""
    out = []
    if os.path.isfile(os.path.join(sync_dir, "events.jsonl")):
        out.append(("log/events.jsonl", os.path.join(sync_dir, "events.jsonl")))
    mdir = os.path.join(sync_dir, "messages")
    out += [(f"log/messages/{n}", os.path.join(mdir, n)) for n in _listdir(mdir, _LOG_FILE)]
    out += [(f"identities/{n}", os.path.join(paths.identities, n)) for n in _listdir(paths.identities, _IDENTITY_FILE)]
    out += [(f"context/{n}", os.path.join(paths.context_dir, n)) for n in _listdir(paths.context_dir, _NOTE_FILE)]
    if os.path.isfile(paths.config) and not os.path.islink(paths.config):
        out.append(("config.json", paths.config))
    return out


# -- create -----------------------------------------------------------------------------------------

class _HashingReader:
    """Reads exactly `size` bytes of a file for tarfile, hashing and counting lines on the way."""

    def __init__(self, f, size: int, progress, path: str) -> None:
        self.f, self.left, self.progress, self.path = f, size, progress, path
        self.sha = hashlib.sha256()
        self.lines = 0

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        if len(data) != n:
            raise BackupError(f"{self.path} shrank while it was being backed up", "Run the backup again")
        self.left -= n
        self.sha.update(data)
        self.lines += data.count(b"\n")
        self.progress(len(data))
        return data


def _archive_name(repo_id: str, kind: str, directory: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    suffix = "-pre-restore" if kind == "pre-restore" else ""
    # Several in one second get -2, -3, ...: always above the highest taken, even one pruned
    # meanwhile, so names sort in the order the archives were made.
    taken = re.compile(rf"^thrum-backup-{re.escape(repo_id)}-{stamp}(?:-(\d+))?{suffix}\.tar\.gz$")
    seqs = [int(m.group(1) or 1) for m in map(taken.match, os.listdir(directory)) if m]
    n = max(seqs, default=0) + 1
    return f"thrum-backup-{repo_id}-{stamp}{'' if n == 1 else f'-{n}'}{suffix}.tar.gz"


def _repo_id(paths) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(os.path.normpath(paths.main_repo))) or "repo"


def _fsync_dir(path: str) -> None:
    from thrum.store import _fsync_dir as fsync_dir  # one definition; imported lazily (store needs sqlite3)

    fsync_dir(path)


def create(paths, *, dest: str | None = None, keep: int | None = None, kind: str = "backup",
           sync_dir: str | None = None, progress=None) -> dict:
    """Write one archive into `dest` (default `.thrum/backups/`) atomically; prune beyond `keep`."""
    from thrum import __version__

    progress = progress or _quiet
    sync_dir = sync_dir or _sync_dir(paths)
    directory = os.path.abspath(dest or default_dir(paths))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    sources = _sources(paths, sync_dir)
    sizes, small = {}, {}
    for name, path in sources:
        if name.startswith("log/"):
            sizes[name] = _whole_lines_size(path)
        else:  # identities and notes are replaced whole (atomic_write): read each once, as it is now
            with open(path, "rb") as f:
                small[name] = f.read()
            sizes[name] = len(small[name])
    total = sum(sizes.values())
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        progress("backup bytes", done, total)

    repo_id = _repo_id(paths)
    final = os.path.join(directory, _archive_name(repo_id, kind, directory))
    fd, tmp = tempfile.mkstemp(prefix=".thrum-backup-", suffix=".tmp", dir=directory)
    files, events = [], 0
    now = int(time.time())
    try:
        with os.fdopen(fd, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=now) as gz:
                with tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                    for name, path in sources:
                        info = _tarinfo(name, sizes[name], now)
                        with (io.BytesIO(small[name]) if name in small else open(path, "rb")) as f:
                            reader = _HashingReader(f, sizes[name], advance, path)
                            tar.addfile(info, reader)
                        entry = {"path": name, "size": sizes[name], "sha256": reader.sha.hexdigest()}
                        if name.startswith("log/"):
                            entry["events"] = reader.lines
                            events += reader.lines
                        files.append(entry)
                    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind,
                                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                                "thrum_version": __version__, "repo_id": repo_id, "repository": paths.main_repo,
                                "sync_head": _sync_head(sync_dir), "events": events, "files": files}
                    data = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
                    tar.addfile(_tarinfo(MANIFEST, len(data), now), io.BytesIO(data))
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    pruned = prune(directory, repo_id, keep) if keep is not None else []
    return {"archive": final, "kind": kind, "files": len(files), "bytes": os.path.getsize(final),
            "data_bytes": total, "events": events, "log_files": sum(1 for f in files if f["path"].startswith("log/")),
            "identities": sum(1 for f in files if f["path"].startswith("identities/")),
            "context_notes": sum(1 for f in files if f["path"].startswith("context/")),
            "config": any(f["path"] == "config.json" for f in files), "pruned": pruned}


def _tarinfo(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o600
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _sync_head(sync_dir: str) -> str:
    from thrum import sync

    proc = sync.git(["rev-parse", "--verify", "--quiet", sync.SYNC_REF], sync_dir, check=False)
    return proc.stdout.decode().strip() if proc.returncode == 0 else ""


def prune(directory: str, repo_id: str, keep: int) -> list[str]:
    """Remove this repository's regular archives in `directory` beyond the newest `keep`.

    Only names this module writes are touched; pre-restore archives are never pruned.
    """
    pattern = re.compile(rf"^thrum-backup-{re.escape(repo_id)}-(\d{{8}}T\d{{6}}Z)(?:-(\d+))?\.tar\.gz$")
    found = []
    for name in os.listdir(directory):
        m = pattern.match(name)
        if m:
            found.append(((m.group(1), int(m.group(2) or 1)), name))
    found.sort(reverse=True)
    removed = []
    for _, name in found[keep:]:
        os.unlink(os.path.join(directory, name))
        removed.append(os.path.join(directory, name))
    return removed


# -- reading an archive -----------------------------------------------------------------------------

def _read(archive: str, sink=None, progress=None) -> dict:
    """Read and check every member of `archive`; hand each one's chunks to `sink`. Returns the manifest.

    sink(name) returns a writer with write(bytes) and close(), or None to discard.
    """
    progress = progress or _quiet
    try:
        total = os.path.getsize(archive)
        raw = open(archive, "rb")
    except OSError as exc:
        raise BackupError(f"cannot read {archive}: {exc.strerror or exc}") from None
    with raw:
        if raw.read(2) != b"\x1f\x8b":
            raise BackupError(f"{archive} is not a thrum backup (not a gzip-compressed tar archive)",
                              "thrum backups are the .tar.gz files 'thrum backup' writes", kind="foreign")
        raw.seek(0)
        seen: dict[str, tuple[int, str]] = {}
        manifest_bytes = None
        try:
            gz = gzip.GzipFile(fileobj=raw, mode="rb")
            with tarfile.open(fileobj=gz, mode="r|") as tar:
                for member in tar:
                    name = _check_member(archive, member)
                    if name in seen or (name == MANIFEST and manifest_bytes is not None):
                        raise BackupError(f"{archive} holds {name} twice", kind="unsafe")
                    if len(seen) >= MAX_MEMBERS:
                        raise BackupError(f"{archive} has more than {MAX_MEMBERS} members", kind="foreign")
                    src = tar.extractfile(member)
                    if name == MANIFEST:
                        if member.size > MAX_MANIFEST_BYTES:
                            raise BackupError(f"{archive}: the manifest is too large", kind="damaged")
                        manifest_bytes = src.read()
                        continue
                    writer = sink(name) if sink else None
                    sha, size = hashlib.sha256(), 0
                    while True:
                        chunk = src.read(CHUNK)
                        if not chunk:
                            break
                        sha.update(chunk)
                        size += len(chunk)
                        if writer is not None:
                            writer.write(chunk)
                        progress("check bytes", min(raw.tell(), total), total)
                    if writer is not None:
                        writer.close()
                    seen[name] = (size, sha.hexdigest())
            # tarfile stops at the end-of-archive blocks; reading on checks gzip's own CRC and length.
            while gz.read(CHUNK):
                pass
        except BackupError:
            raise
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            if isinstance(exc, tarfile.ReadError) and not seen and manifest_bytes is None and _gzip_is_whole(raw):
                raise BackupError(f"{archive} is not a thrum backup (a gzip file, but not a tar archive)",
                                  "thrum backups are the .tar.gz files 'thrum backup' writes",
                                  kind="foreign") from None
            raise BackupError(f"{archive} is damaged: {exc}", "Use another backup", kind="damaged") from None
        except OSError as exc:
            raise BackupError(f"cannot read {archive}: {exc.strerror or exc}") from None
    progress("check bytes", total, total)
    if manifest_bytes is None:
        raise BackupError(f"{archive} has no manifest: it is not a complete thrum backup",
                          "Use another backup", kind="foreign" if not seen else "damaged")
    manifest = _check_manifest(archive, manifest_bytes)
    listed = {f["path"]: f for f in manifest["files"]}
    for name, (size, digest) in seen.items():
        entry = listed.get(name)
        if entry is None:
            raise BackupError(f"{archive} holds {name}, which its manifest does not list", kind="damaged")
        if entry["size"] != size or entry["sha256"] != digest:
            raise BackupError(f"{archive} is damaged: {name} does not match its checksum", "Use another backup",
                              kind="damaged")
    missing = sorted(set(listed) - set(seen))
    if missing:
        raise BackupError(f"{archive} is damaged: {len(missing)} file(s) of its manifest are missing "
                          f"(first: {missing[0]})", "Use another backup", kind="damaged")
    return manifest


def _gzip_is_whole(raw) -> bool:
    """True when the gzip stream itself is intact (so what it holds is simply not a tar archive)."""
    try:
        raw.seek(0)
        with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
            while gz.read(CHUNK):
                pass
        return True
    except (OSError, EOFError, zlib.error):
        return False


def _check_member(archive: str, member: tarfile.TarInfo) -> str:
    name = member.name
    if name.startswith("/") or ".." in name.split("/") or "\\" in name or "\0" in name:
        raise BackupError(f"{archive} holds an unsafe path ({name!r}); refused", kind="unsafe")
    if not member.isfile():
        what = "link" if (member.issym() or member.islnk()) else "directory" if member.isdir() else "special file"
        raise BackupError(f"{archive} holds a {what} ({name!r}), which no thrum backup has; refused", kind="unsafe")
    if not _MEMBER.match(name):
        raise BackupError(f"{archive} is not a thrum backup (it holds {name!r})",
                          "thrum backups are the .tar.gz files 'thrum backup' writes", kind="foreign")
    return name


def _check_manifest(archive: str, data: bytes) -> dict:
    try:
        manifest = json.loads(data)
    except ValueError:
        raise BackupError(f"{archive} is damaged: its manifest is not JSON", kind="damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{archive} is not a thrum backup (its manifest is not a {FORMAT} manifest)",
                          kind="foreign")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BackupError(f"{archive} has backup format {version!r}; this thrum reads format {FORMAT_VERSION}",
                          "Use the thrum version that wrote it", kind="foreign")
    files = manifest.get("files")
    if not isinstance(files, list) or not all(
            isinstance(f, dict) and isinstance(f.get("path"), str) and _MEMBER.match(f["path"])
            and f["path"] != MANIFEST and isinstance(f.get("size"), int) and isinstance(f.get("sha256"), str)
            for f in files):
        raise BackupError(f"{archive} is damaged: its manifest's file list is malformed", kind="damaged")
    return manifest


def verify(archive: str, progress=None) -> dict:
    """Check `archive` completely (structure, manifest, every checksum) without writing anything."""
    manifest = _read(archive, progress=progress)
    return _summary(archive, manifest)


def _summary(archive: str, manifest: dict) -> dict:
    files = manifest["files"]
    return {"ok": True, "archive": os.path.abspath(archive), "format_version": manifest["format_version"],
            "kind": manifest.get("kind", "backup"), "created_at": manifest.get("created_at", ""),
            "repo_id": manifest.get("repo_id", ""), "thrum_version": manifest.get("thrum_version", ""),
            "files": len(files), "data_bytes": sum(f["size"] for f in files),
            "events": sum(f.get("events", 0) for f in files if f["path"].startswith("log/")),
            "identities": sum(1 for f in files if f["path"].startswith("identities/")),
            "context_notes": sum(1 for f in files if f["path"].startswith("context/"))}


# -- restore ----------------------------------------------------------------------------------------

class _FileSink:
    """Writes an archive's members under a temporary directory (their names are checked first)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def __call__(self, name: str):
        path = os.path.join(self.root, *name.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return _TempWriter(open(path, "xb"), self.root)


class _TempWriter:
    """A member being unpacked; a full temp filesystem is reported as such, not as an unreadable archive."""

    def __init__(self, f, root: str) -> None:
        self.f, self.root = f, root

    def write(self, data: bytes) -> None:
        try:
            self.f.write(data)
        except OSError as exc:
            self.f.close()
            raise BackupError(f"cannot unpack the archive into {self.root}: {exc.strerror or exc}",
                              "Free some space there, or point TMPDIR at a larger filesystem") from None

    def close(self) -> None:
        self.f.close()


def _event_id_of(line: bytes) -> str | None:
    """The id a line is deduplicated by (as sync does), or None when the line is not an event."""
    from thrum.sync import _event_id_of as event_id_of

    return event_id_of(line)


def _event_ids_in(path: str) -> tuple[set, set]:
    """(event ids, unparseable lines) of one log file."""
    ids, bad = set(), set()
    try:
        with open(path, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                eid = _event_id_of(line)
                if eid is None:
                    bad.add(line.rstrip(b"\n"))
                else:
                    ids.add(eid)
    except FileNotFoundError:
        pass
    return ids, bad


def _log_files(root: str) -> list[str]:
    """Relative paths of the log files under a sync worktree (or an extracted archive's log/)."""
    out = ["events.jsonl"] if os.path.isfile(os.path.join(root, "events.jsonl")) else []
    return out + [f"messages/{n}" for n in _listdir(os.path.join(root, "messages"), _LOG_FILE)]


def _prepare(repo: str):
    """The repository's thrum paths, initializing thrum there first when needed."""
    from thrum.paths import NotInitialized, resolve

    try:
        paths = resolve(repo)
    except NotInitialized:
        from thrum.initialize import InitError, init_repo

        try:
            init_repo(repo)
        except InitError as exc:
            raise BackupError(str(exc), exc.hint) from None
        paths = resolve(repo)
    return paths


def _sync_ready(paths):
    """The sync branch and worktree, repaired if needed (under the daemon's lock, as at daemon start)."""
    from thrum import sync

    try:
        info = sync.repo_info(paths.main_repo)
        sync.ensure_sync_branch(info.toplevel)
        moved = sync.ensure_worktree(info.toplevel, info.sync_dir)
    except sync.GitError as exc:
        raise BackupError(f"cannot prepare the sync branch: {exc}") from None
    if moved:
        from thrum.migrate import union_import

        union_import(moved, info.sync_dir)
        shutil.rmtree(moved, ignore_errors=True)
    return info


def _take_daemon_lock(paths) -> int:
    import fcntl

    from thrum.components import LOCK_NAME

    os.makedirs(paths.var, mode=0o700, exist_ok=True)
    fd = os.open(paths.var_file(LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BackupError("the daemon is running for this repository; restore needs it stopped",
                          "Stop it with 'thrum daemon stop', restore, then start it again", kind="daemon") from None
    return fd


def _differs(src: str, dst: str) -> bool:
    try:
        with open(dst, "rb") as a, open(src, "rb") as b:
            return a.read() != b.read()
    except FileNotFoundError:
        return False


def _file_targets(paths, extracted: str) -> list[tuple[str, str, int]]:
    """(extracted file, where it goes, mode) for identities, context notes and config."""
    out = []
    for n in _listdir(os.path.join(extracted, "identities"), _IDENTITY_FILE):
        out.append((os.path.join(extracted, "identities", n), os.path.join(paths.identities, n), 0o600))
    for n in _listdir(os.path.join(extracted, "context"), _NOTE_FILE):
        out.append((os.path.join(extracted, "context", n), os.path.join(paths.context_dir, n), 0o644))
    if os.path.isfile(os.path.join(extracted, "config.json")):
        out.append((os.path.join(extracted, "config.json"), paths.config, 0o600))
    return out


def restore(archive: str, repo: str, *, force: bool = False, progress=None) -> dict:
    """Restore `archive` into the repository at `repo` (see the module docstring for the rules)."""
    from thrum.components import make_store
    from thrum.config import load_settings
    from thrum.identity import atomic_write

    progress = progress or _quiet
    tmp = tempfile.mkdtemp(prefix="thrum-restore-")
    try:
        # 1. The whole archive is checked (and unpacked aside) before anything in the repository changes.
        manifest = _read(archive, sink=_FileSink(tmp), progress=progress)
        extracted_log = os.path.join(tmp, "log")
        paths = _prepare(repo)
        lock_fd = _take_daemon_lock(paths.for_daemon())
        try:
            info = _sync_ready(paths)
            store = make_store(paths.for_daemon(), info.sync_dir)
            store.log.recover()  # a crashed daemon's journal first, as migrate does
            store.log.repair_torn_tails()
            # 2. What the repository has that the archive lacks.
            archive_ids, local_ids = set(), set()
            for rel in _log_files(extracted_log):
                archive_ids |= _event_ids_in(os.path.join(extracted_log, rel))[0]
            for rel in _log_files(info.sync_dir):
                local_ids |= _event_ids_in(os.path.join(info.sync_dir, rel))[0]
            only_local = len(local_ids - archive_ids)
            targets = _file_targets(paths, tmp)
            differing = [dst for src, dst, _ in targets if not dst.endswith("config.json") and _differs(src, dst)]
            if (only_local or differing) and not force:
                what = []
                if only_local:
                    what.append(f"{only_local} event(s) the archive does not have")
                if differing:
                    what.append(f"{len(differing)} identity or context file(s) that differ from the archive's "
                                f"(first: {os.path.relpath(differing[0], paths.repo)})")
                raise BackupError(
                    "this repository already has thrum data: " + " and ".join(what),
                    "Restore adds the archive's events and never removes any"
                    + (", but it replaces those files" if differing else "; the log would hold both histories")
                    + ". Pass --force to restore anyway (the current state is saved as a backup first)",
                    kind="refused")
            saved = None
            has_data = bool(local_ids) or any(
                os.listdir(d) for d in (paths.identities, paths.context_dir) if os.path.isdir(d))
            if force and has_data:
                saved = create(paths, kind="pre-restore", sync_dir=info.sync_dir)["archive"]
            # 3. The log: append every archive line whose event the repository lacks, file by file.
            added = skipped = 0
            for rel in _log_files(extracted_log):
                a, s = _union_file(os.path.join(extracted_log, rel), os.path.join(info.sync_dir, rel), local_ids)
                added, skipped = added + a, skipped + s
            # 4. Identities, context notes, config.
            written = []
            for src, dst, mode in targets:
                with open(src, "rb") as f:
                    data = f.read()
                os.makedirs(os.path.dirname(dst), mode=0o750, exist_ok=True)
                try:
                    with open(dst, "rb") as f:
                        if f.read() == data:
                            continue
                except FileNotFoundError:
                    pass
                atomic_write(dst, data, mode)
                written.append(os.path.relpath(dst, paths.repo))
            # 5. Onto the branch, so the restored lines are not only in a worktree file; then the database.
            local_only = load_settings(paths.for_daemon().config).local_only
            commit = _commit_log(info.sync_dir, local_only, added, os.path.basename(archive)) if added else ""
            events = store.rebuild(progress=progress)
            stats = store.stats()
            store.close()
        finally:
            os.close(lock_fd)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"archive": os.path.abspath(archive), "repository": paths.repo, "created_at": manifest.get("created_at"),
            "events_added": added, "events_present": skipped, "files_written": written, "saved_backup": saved,
            "commit": commit, "rebuilt": {"events": events, "messages": stats["messages"],
                                          "agents": stats["agents"], "bad_lines": stats["bad_lines"]}}


def _union_file(src: str, dst: str, known: set) -> tuple[int, int]:
    """Append to `dst` the lines of `src` whose event `known` lacks; unparseable lines unless present."""
    _, bad_here = _event_ids_in(dst) if os.path.exists(dst) else (set(), set())
    fresh = not os.path.exists(dst) or os.path.getsize(dst) == 0
    added = skipped = 0
    lines = []
    with open(src, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            eid = _event_id_of(line)
            if eid is None:
                if line.rstrip(b"\n") in bad_here:  # kept, never dropped, but not twice
                    skipped += 1
                    continue
                bad_here.add(line.rstrip(b"\n"))
            elif eid in known:
                skipped += 1
                continue
            else:
                known.add(eid)
            lines.append(line if line.endswith(b"\n") else line + b"\n")
            added += 1
    if lines:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        fd = os.open(dst, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "ab") as out:
            out.write(b"".join(lines))
            out.flush()
            os.fsync(out.fileno())
        if fresh:
            _fsync_dir(os.path.dirname(dst))
    return added, skipped


def _commit_log(sync_dir: str, local_only: bool, added: int, archive_name: str) -> str:
    """Commit the sync worktree's log files onto the branch the sync loop commits to.

    Plumbing only, with a private index: the branch moves by compare-and-swap, so a
    concurrent writer fails loudly instead of losing a commit. The sync loop notices
    the moved head at its next round and merges from it (sync.py).
    """
    from thrum import sync

    def out(args, **kw) -> str:
        return sync.git(args, sync_dir, **kw).stdout.decode().strip()

    ref = sync.LOCAL_ONLY_REF if local_only else sync.SYNC_REF
    expected = out(["rev-parse", "--verify", "--quiet", ref + "^{commit}"], check=False) if local_only else ""
    base = expected or out(["rev-parse", "--verify", sync.SYNC_REF + "^{commit}"])
    if not local_only:
        expected = base
    rels = _log_files(sync_dir)
    shas = out(["hash-object", "-w", "--no-filters", "--stdin-paths"], input="\n".join(rels).encode() + b"\n").split()
    fd, index = tempfile.mkstemp(prefix="thrum-restore-index-")
    os.close(fd)
    os.unlink(index)  # git wants to create it; read-tree fills it from the base
    try:
        env = sync.git_env({"GIT_INDEX_FILE": index})
        out(["read-tree", base], env=env)
        entries = "".join(f"100644 {sha}\t{rel}\n" for sha, rel in zip(shas, rels))
        out(["update-index", "--add", "--index-info"], input=entries.encode(), env=env)
        tree = out(["write-tree"], env=env)
    finally:
        if os.path.exists(index):
            os.unlink(index)
    if tree == out(["rev-parse", base + "^{tree}"]):
        return base
    message = f"thrum backup restore: {added} event(s) from {archive_name}\n"
    commit = out(["commit-tree", tree, "-p", base], input=message.encode())
    out(["update-ref", "-m", "thrum backup restore", ref, commit, expected])
    return commit
