"""Daemon lifecycle: permissions, peer credentials, lock, pid file, stale socket, start failures."""

import fcntl
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import FACTOR, pid_alive, wait_for
from helpers import RawConn, mode
from thrum.events import parse_timestamp_ns


def test_socket_dir_and_socket_are_private(thrum):
    t = thrum
    os.chmod(t.var, 0o755)  # loosened by someone: the daemon tightens it again
    t.start()
    try:
        assert mode(t.var) == 0o700
        assert mode(t.socket) == 0o600
        assert mode(t.var / "thrum.pid") == 0o600
    finally:
        t.stop()


_PEER = r"""
import json, os, socket, sys
var, uid = sys.argv[1], int(sys.argv[2])
fd = os.open(var, os.O_RDONLY | os.O_DIRECTORY)  # opened as root: the path above may be private
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(f"/proc/self/fd/{fd}/thrum.sock")
except OSError as exc:
    print("CONNECT_FAILED", exc.errno)
    sys.exit(0)
try:
    s.sendall(b'{"jsonrpc":"2.0","method":"health","id":1}\n')
    data = s.recv(65536)
except OSError as exc:
    print("RECV_FAILED", exc.errno)
    sys.exit(0)
print("ANSWERED" if data else "CLOSED", data[:80])
"""


def _peer(t, uid):
    proc = subprocess.run([sys.executable, "-c", _PEER, str(t.var), str(uid)], capture_output=True, text=True,
                          timeout=30 * FACTOR, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client under another uid")
def test_peer_of_another_uid_is_refused(daemon):
    t = daemon
    # With the daemon's permissions, another user cannot even connect.
    assert _peer(t, 65534) == "CONNECT_FAILED"
    # Open the permissions up: the SO_PEERCRED check must still refuse the peer.
    os.chmod(t.var, 0o711)
    os.chmod(t.socket, 0o666)
    try:
        assert _peer(t, 65534) in ("CLOSED", "RECV_FAILED")
        assert _peer(t, 0) == "ANSWERED"  # the same uid still gets its answer
    finally:
        os.chmod(t.socket, 0o600)
        os.chmod(t.var, 0o700)
    assert "refused a connection from uid 65534" in (t.var / "daemon.log").read_text()
    assert t.call("health")["status"] == "ok"


def test_pid_file_lock_and_log(daemon):
    t = daemon
    info = json.loads((t.var / "thrum.pid").read_text())
    assert {"pid", "repo_path", "started_at", "socket_path"} <= set(info)
    health = t.call("health")
    assert info["pid"] == health["pid"] and pid_alive(info["pid"])
    assert info["repo_path"] == str(t.repo)
    assert info["socket_path"] == str(t.socket)
    parse_timestamp_ns(info["started_at"])
    # The lock is held for the daemon's life.
    fd = os.open(t.var / "thrum.lock", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    log = (t.var / "daemon.log").read_text()
    assert "ready" in log
    # Each record is written once (the child's stderr also goes to the log).
    assert sum(1 for line in log.splitlines() if "INFO thrum.daemon: thrum daemon" in line) == 1
    t.stop()
    # Clean exit: socket and pid file gone, the lock file stays (never unlinked).
    assert not t.socket.exists() and not (t.var / "thrum.pid").exists()
    assert (t.var / "thrum.lock").exists()
    assert "shutting down" in (t.var / "daemon.log").read_text()


def test_start_stop_status_restart(thrum):
    t = thrum
    st = t.run("daemon", "status", "--json", check=False)
    assert st.returncode == 1 and json.loads(st.stdout)["running"] is False
    assert "not running" in t.run("daemon", "status", check=False).stdout

    started = t.json("daemon", "start")
    pid = started["pid"]
    # Ready means it answers: no waiting needed after `start` returns.
    assert t.call("health")["pid"] == pid

    again = t.run("daemon", "start", check=False)
    assert again.returncode == 1
    assert "already running" in again.stderr and f"PID {pid}" in again.stderr

    st = t.json("daemon", "status")
    assert st["running"] is True and st["status"] == "running" and st["pid"] == pid
    assert "running (PID" in t.run("daemon", "status").stdout

    restarted = t.json("daemon", "restart")
    assert restarted["pid"] != pid and not pid_alive(pid)
    assert t.call("health")["pid"] == restarted["pid"]

    stopped = t.json("daemon", "stop")
    assert stopped == {"status": "stopped", "pid": restarted["pid"]}
    assert not pid_alive(restarted["pid"])
    again = t.run("daemon", "stop", check=False)
    assert again.returncode == 1 and "not running" in again.stderr


@pytest.mark.parametrize("argv", [("daemon", "start", "--foreground"), ("daemon", "run")])
def test_foreground(thrum, argv):
    t = thrum
    proc = subprocess.Popen([sys.executable, "-m", "thrum", *argv], cwd=t.repo, env=t.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def ready():
            if proc.poll() is not None:
                raise AssertionError(f"daemon exited early: {proc.communicate()}")
            try:
                return t.call("health")
            except Exception:
                return None
        health = wait_for(ready, 20, what="the foreground daemon to answer")
        assert health["pid"] == proc.pid
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20 * FACTOR)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "ready" in err
    assert not t.socket.exists()


def test_lock_is_taken_before_anything_else(thrum):
    t = thrum
    t.var.mkdir(exist_ok=True)
    fd = os.open(t.var / "thrum.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = t.run("daemon", "run", check=False, timeout=30)
    finally:
        os.close(fd)
    assert proc.returncode == 1
    assert "already running" in proc.stderr
    # It touched nothing: no database, no pid file, no socket.
    for name in ("messages.db", "thrum.pid", "thrum.sock"):
        assert not (t.var / name).exists(), name
    assert (t.var / "thrum.lock").exists()


def test_stale_socket_after_sigkill(daemon):
    t = daemon
    old = t.pid()
    t.kill()
    assert t.socket.exists() and (t.var / "thrum.pid").exists()  # left behind by the killed daemon
    st = t.run("daemon", "status", "--json", check=False)
    assert st.returncode == 1 and json.loads(st.stdout)["running"] is False
    started = t.json("daemon", "start")
    assert started["pid"] != old
    assert t.call("health")["pid"] == started["pid"]
    assert json.loads((t.var / "thrum.pid").read_text())["pid"] == started["pid"]


@pytest.mark.parametrize("breakage", ["db_is_a_directory", "sync_worktree_is_a_file"])
def test_failing_start_names_the_log(thrum, breakage):
    t = thrum
    if breakage == "db_is_a_directory":
        (t.var / "messages.db").mkdir()
        (t.var / "messages.db" / "x").write_text("keep me")
    else:
        # The sync worktree's parent replaced by a file: git cannot check out a-sync there.
        parent = t.sync_dir.parent
        subprocess.run(["git", "worktree", "remove", "--force", str(t.sync_dir)], cwd=t.repo, env=t.env,
                       check=True, capture_output=True)
        subprocess.run(["rm", "-rf", str(parent)], check=True)
        parent.write_text("not a directory")
    proc = t.run("daemon", "start", check=False, timeout=60)
    assert proc.returncode == 1
    log_path = str(t.var / "daemon.log")
    assert log_path in proc.stderr
    assert "Error:" in proc.stderr
    assert not (t.var / "thrum.pid").exists() or t.pid() is None or not pid_alive(t.pid())
    st = t.run("daemon", "status", check=False)
    assert st.returncode == 1
    log = (t.var / "daemon.log").read_text()
    assert "start failed" in log or "Error" in log
    if breakage == "db_is_a_directory":
        assert (t.var / "messages.db" / "x").read_text() == "keep me"  # nothing of the user's is destroyed
    json_err = t.run("daemon", "start", "--json", check=False, timeout=60)
    assert json_err.returncode == 1
    err = json.loads(json_err.stdout)["error"]
    assert log_path in err["message"]


NEEDS_DAEMON = [
    ("send", "hello"),
    ("inbox",),
    ("status",),
    ("reply", "msg_x", "text"),
    ("message", "get", "msg_x"),
    ("message", "read", "--all"),
    ("agent", "list"),
    ("agent", "whoami"),
    ("session", "start"),
    ("session", "list"),
    ("session", "set-intent", "x"),
    ("group", "list"),
    ("group", "create", "crew"),
    ("team",),
    ("quickstart", "--name", "zed", "--role", "r", "--module", "m"),
    ("agent", "register", "--name", "zed", "--role", "r", "--module", "m"),
    ("agent", "delete", "zed", "--force"),
    ("message", "edit", "msg_x", "text"),
    ("message", "delete", "msg_x", "--force"),
    ("group", "add", "crew", "@alice"),
    ("group", "members", "crew"),
    ("session", "end"),
    ("session", "heartbeat"),
    ("agent", "set-task", "x"),
    ("daemon", "status"),
]


def test_commands_say_to_start_the_daemon(daemon):
    t = daemon
    t.quickstart("alice")
    t.kill()  # a stale socket file is left: connecting is refused rather than impossible
    assert t.socket.exists()
    for argv in NEEDS_DAEMON:
        proc = t.run(*argv, check=False)
        assert proc.returncode == 1, argv
        assert "thrum daemon start" in proc.stderr + proc.stdout, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr
    t.start()
    t.stop()  # a clean stop: no socket file at all
    assert not t.socket.exists()
    for argv in NEEDS_DAEMON[:4]:
        proc = t.run(*argv, check=False)
        assert proc.returncode == 1 and "thrum daemon start" in proc.stderr, (argv, proc.stderr)
    proc = t.run("inbox", "--json", check=False)
    assert proc.returncode == 1
    err = json.loads(proc.stdout)["error"]
    assert "thrum daemon start" in err["message"] + err.get("hint", "")


def test_long_socket_path(tmp_path, env):
    from conftest import Thrum, make_repo

    deep = tmp_path / ("d" * 60) / ("e" * 60) / "repo"
    assert len(str(deep / ".thrum" / "var" / "thrum.sock")) > 108  # beyond what AF_UNIX can bind directly
    t = Thrum(make_repo(deep, env), env)
    t.init()
    t.start()
    try:
        t.quickstart("alice")
        assert t.json("send", "deep", name="alice")["message_id"].startswith("msg_")
        t.kill()
        t.start()  # the stale socket is detected and replaced at a long path too
        assert t.json("inbox", "--all", "--peek", name="alice")["total"] == 0  # own message
        assert t.call("message.list")["total"] == 1
    finally:
        t.stop()
