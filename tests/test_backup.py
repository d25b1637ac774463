"""thrum backup / backup verify / backup restore: archives that restore exactly, and refuse what they should."""

import gzip
import io
import json
import os
import subprocess
import tarfile

import pytest

from conftest import Thrum, git, make_repo
from helpers import assert_log_clean, table_rows

# Projection tables that carry what the issue promises back: messages, agents, groups, read markers, receipts.
TABLES = ("messages", "agents", "groups", "group_members", "message_reads", "message_deliveries", "sessions")


def _tree(root) -> dict:
    """Every file under root with its bytes (a repository's state, to compare before and after)."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                with open(p, "rb") as f:
                    out[os.path.relpath(p, root)] = f.read()
    return out


def _state(t: Thrum) -> tuple:
    refs = git(t.repo, "for-each-ref", "--format=%(refname) %(objectname)", env=t.env)
    thrum_dir = t.repo / ".thrum"
    return refs, _tree(thrum_dir) if thrum_dir.exists() else None, _tree(t.sync_dir) if t.sync_dir.exists() else None


def _populate(t: Thrum) -> dict:
    """alice, bob and carol; a group; messages with read markers and delivery receipts."""
    t.quickstart("alice", "implementer", "auth")
    t.quickstart("bob", "reviewer", "auth")
    t.quickstart("carol", "tester", "qa")
    t.run("group", "create", "crew", name="alice")
    t.run("group", "add", "crew", "@bob", name="alice")
    t.run("group", "add", "crew", "@carol", name="alice")
    first = t.json("send", "to bob", "--to", "@bob", name="alice")["message_id"]
    second = t.json("send", "to the crew", "--to", "@crew", name="alice")["message_id"]
    t.json("send", "reply", "--reply-to", first, "--to", "@alice", name="bob")
    t.run("inbox", name="bob")  # bob reads both
    t.run("inbox", "--peek", name="carol")  # carol: delivered, not read
    (t.repo / ".thrum" / "context" / "alice.md").write_text("alice's notes\n")
    return {"first": first, "second": second}


def _tables(db) -> dict:
    return {name: table_rows(db, name) for name in TABLES}


def _rebuilt_tables(t: Thrum) -> dict:
    t.run("migrate", "--rebuild")
    return _tables(t.var / "messages.db")


def _log_files(sync_dir) -> dict:
    return {k: v for k, v in _tree(sync_dir).items() if k == "events.jsonl" or k.startswith("messages/")}


@pytest.fixture
def other(tmp_path, env):
    """A second repository (no thrum yet) whose daemon, if started, is stopped at the end."""
    t = Thrum(make_repo(tmp_path / "other", env), env)
    yield t
    if t.pid():
        t.stop()


def test_backup_then_restore_into_a_fresh_repository(daemon, other, tmp_path):
    t = daemon
    ids = _populate(t)
    made = t.json("backup", "--to", tmp_path / "backups")
    archive = made["archive"]
    assert os.path.dirname(archive) == str(tmp_path / "backups") and made["events"] > 0
    assert made["identities"] == 3 and made["context_notes"] >= 1 and made["config"]
    assert [n for n in os.listdir(tmp_path / "backups") if not n.endswith(".tar.gz")] == []  # no temp left
    assert t.json("backup", "verify", archive)["ok"] is True
    t.stop()
    expected = _rebuilt_tables(t)
    expected_log = _log_files(t.sync_dir)

    restored = other.json("backup", "restore", archive)  # not even initialized: restore sets thrum up
    assert restored["saved_backup"] is None and restored["events_present"] == 0
    # The log is byte for byte the archive's, and it is committed on the sync branch.
    assert _log_files(other.sync_dir) == expected_log
    for rel, data in expected_log.items():
        shown = subprocess.run(["git", "show", f"a-sync:{rel}"], cwd=other.repo, env=other.env,
                               capture_output=True, timeout=30)
        assert shown.stdout == data, rel
    # The user's checkout: only the .gitignore entries init adds.
    assert git(other.repo, "status", "--porcelain", env=other.env) == "?? .gitignore"
    assert _tables(other.var / "messages.db") == expected
    for name in ("alice", "bob", "carol"):
        assert (other.repo / ".thrum" / "identities" / f"{name}.json").read_bytes() == (
            t.repo / ".thrum" / "identities" / f"{name}.json").read_bytes()
    assert (other.repo / ".thrum" / "context" / "alice.md").read_text() == "alice's notes\n"

    # And the daemon serves it: bob's inbox is read, carol's is not, receipts are back.
    other.start()
    bob = other.json("inbox", "--all", "--peek", name="bob")["messages"]
    assert {m["message_id"]: m["is_read"] for m in bob if m["agent_id"] == "alice"} == {
        ids["first"]: True, ids["second"]: True}
    carol = other.json("inbox", "--unread", "--peek", name="carol")["messages"]
    assert [m["message_id"] for m in carol] == [ids["second"]]
    receipts = {r["agent_id"]: r["state"] for r in other.call("message.receipts", message_id=ids["second"])[
        "receipts"]}
    assert receipts == {"bob": "read", "carol": "delivered"}
    assert {g["name"] for g in other.json("group", "list")["groups"]} >= {"crew"}


def test_verify_catches_a_flipped_byte(daemon, tmp_path):
    t = daemon
    _populate(t)
    archive = t.json("backup", "--to", tmp_path)["archive"]
    data = open(archive, "rb").read()
    for where in (len(data) // 3, len(data) // 2, len(data) - 5):  # deflate data, and gzip's CRC trailer
        bad = tmp_path / f"flipped-{where}.tar.gz"
        bad.write_bytes(data[:where] + bytes([data[where] ^ 0x01]) + data[where + 1:])
        proc = t.run("backup", "verify", bad, "--json", check=False)
        assert proc.returncode == 1, where
        error = json.loads(proc.stdout)["error"]
        assert error["data"]["kind"] == "damaged" and "damaged" in error["message"], error
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(data[: len(data) // 2])
    assert "damaged" in t.run("backup", "verify", truncated, check=False).stderr


def _tar_gz(path, members: dict, kinds: dict | None = None) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if (kinds or {}).get(name) == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, data.decode()
                tar.addfile(info)
                continue
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buf.getvalue()))


def test_damaged_or_foreign_archives_change_nothing(daemon, other, tmp_path):
    t = daemon
    _populate(t)
    archive = t.json("backup", "--to", tmp_path)["archive"]
    data = open(archive, "rb").read()
    damaged = tmp_path / "damaged.tar.gz"
    damaged.write_bytes(data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1:])
    not_gzip = tmp_path / "notes.txt"
    not_gzip.write_text("hello\n")
    foreign = tmp_path / "project.tar.gz"
    _tar_gz(foreign, {"src/main.c": b"int main;\n", "README": b"x\n"})
    gzipped_text = tmp_path / "notes.txt.gz"
    gzipped_text.write_bytes(gzip.compress(b"just some notes\n" * 100))
    no_manifest = tmp_path / "no-manifest.tar.gz"
    _tar_gz(no_manifest, {"log/events.jsonl": b""})
    wrong_manifest = tmp_path / "other-format.tar.gz"
    _tar_gz(wrong_manifest, {"manifest.json": json.dumps({"format": "something-else"}).encode()})
    traversal = tmp_path / "traversal.tar.gz"
    _tar_gz(traversal, {"../../escaped.txt": b"gotcha\n", "manifest.json": b"{}"})
    link = tmp_path / "link.tar.gz"
    _tar_gz(link, {"config.json": b"/etc/passwd"}, {"config.json": "symlink"})
    cases = [(damaged, "damaged"), (not_gzip, "foreign"), (foreign, "foreign"), (gzipped_text, "foreign"),
             (no_manifest, "damaged"),
             (wrong_manifest, "foreign"), (traversal, "unsafe"), (link, "unsafe")]

    other_before = _state(other)  # not initialized: a refused restore must not even set thrum up
    t.stop()
    before = _state(t)
    for bad, kind in cases:
        for target in (t, other):
            proc = target.run("backup", "restore", bad, "--force", "--json", check=False)
            assert proc.returncode == 1, (bad, proc.stdout, proc.stderr)
            assert json.loads(proc.stdout)["error"]["data"]["kind"] == kind, (bad, proc.stdout)
        assert t.run("backup", "verify", bad, check=False).returncode == 1
    assert _state(t) == before
    assert _state(other) == other_before
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()


def test_restore_refuses_existing_data_without_force_and_saves_it_with_force(daemon, tmp_path):
    t = daemon
    _populate(t)
    archive = t.json("backup", "--to", tmp_path)["archive"]
    later = t.json("send", "written after the backup", "--to", "@bob", name="alice")["message_id"]
    (t.repo / ".thrum" / "context" / "alice.md").write_text("changed notes\n")

    proc = t.run("backup", "restore", archive, check=False)  # the daemon runs
    assert proc.returncode == 1 and "daemon is running" in proc.stderr and "thrum daemon stop" in proc.stderr
    t.stop()
    before = _state(t)
    proc = t.run("backup", "restore", archive, "--json", check=False)
    assert proc.returncode == 1
    error = json.loads(proc.stdout)["error"]
    assert error["data"]["kind"] == "refused" and "--force" in error["hint"], error
    assert "event(s) the archive does not have" in error["message"] and "context/alice.md" in error["message"]
    assert _state(t) == before

    result = t.json("backup", "restore", archive, "--force")
    saved = result["saved_backup"]
    assert saved and os.path.dirname(saved) == str(t.repo / ".thrum" / "backups") and "pre-restore" in saved
    check = t.json("backup", "verify", saved)
    assert check["kind"] == "pre-restore"
    with tarfile.open(saved) as tar:  # the state before the restore, with the later message and notes
        assert tar.extractfile("context/alice.md").read() == b"changed notes\n"
        assert later.encode() in tar.extractfile("log/messages/alice.jsonl").read()
    # Restore adds and never removes: the later message is still there; the notes are the archive's.
    assert result["events_added"] == 0 and ".thrum/context/alice.md" in result["files_written"]
    assert (t.repo / ".thrum" / "context" / "alice.md").read_text() == "alice's notes\n"
    t.start()
    assert t.call("message.get", message_id=later)["message"]["body"]["content"] == "written after the backup"


def test_restore_adds_what_the_log_lacks_and_commits_it(daemon, tmp_path):
    t = daemon
    _populate(t)
    archive = t.json("backup", "--to", tmp_path)["archive"]
    t.stop()
    # Lose a message file (as a bad edit of the sync worktree would), then restore it back.
    lost = t.sync_dir / "messages" / "bob.jsonl"
    content = lost.read_bytes()
    lost.write_bytes(b"")
    result = t.json("backup", "restore", archive)  # nothing local the archive lacks: no --force needed
    assert result["events_added"] == content.count(b"\n") and result["commit"]
    assert lost.read_bytes() == content
    assert git(t.repo, "rev-parse", "a-sync", env=t.env) == result["commit"]
    assert git(t.repo, "show", "a-sync:messages/bob.jsonl", env=t.env).encode() + b"\n" == content
    t.start()
    assert t.json("inbox", "--all", "--peek", name="alice")["messages"]  # served after the restore
    # The sync loop takes the moved branch in its stride: a round commits on top of the restore.
    t.json("send", "after the restore", "--to", "@bob", name="alice")
    t.run("sync", "force")
    assert git(t.repo, "rev-parse", "a-sync~1", env=t.env) == result["commit"]
    assert_log_clean(t)


def test_keep_prunes_older_archives_of_this_repository_only(daemon, tmp_path):
    t = daemon
    t.quickstart("alice", "implementer", "auth")
    dest = tmp_path / "backups"
    dest.mkdir()
    stranger = dest / "thrum-backup-elsewhere-20260101T000000Z.tar.gz"
    stranger.write_bytes(b"another repository's archive")
    unrelated = dest / "notes.txt"
    unrelated.write_text("mine\n")
    made = [t.json("backup", "--to", dest, "--keep", "2")["archive"] for _ in range(4)]
    ours = sorted(n for n in os.listdir(dest) if n.startswith("thrum-backup-repo-"))
    assert ours == sorted(os.path.basename(p) for p in made[-2:])
    assert stranger.exists() and unrelated.exists()
    assert t.run("backup", "--keep", "0", check=False).returncode == 2
    # Default place: .thrum/backups/, which git ignores (.thrum/ is in .gitignore) and sync never sees.
    default = t.json("backup")["archive"]
    assert os.path.dirname(default) == str(t.repo / ".thrum" / "backups")
    assert git(t.repo, "status", "--porcelain", "--ignored=no", env=t.env) in ("", "?? .gitignore")
    assert not any("backup" in p for p in _tree(t.sync_dir))


def test_progress_shows_only_for_long_runs():
    from thrum.backup import terminal_progress

    quick = io.StringIO()
    p = terminal_progress(quick, delay=60)
    for done in range(0, 101, 10):
        p("check bytes", done << 20, 100 << 20)
    assert quick.getvalue() == ""  # a short run prints nothing
    slow = io.StringIO()
    p = terminal_progress(slow, delay=0, every=0)
    p("check bytes", 50 << 20, 100 << 20)
    p("applying", 10, 10)
    assert "check: 50.0/100.0 MiB" in slow.getvalue() and slow.getvalue().endswith("applying: 10/10" + " " * 10 + "\n")
