"""Benchmarks of git sync: a 10,000-event merge, and delivery across two clones.

    python3 bench/bench_sync.py [--row sync_merge_10k|cross_clone_delivery|all] [--events N] [--json]
    python3 bench/bench_sync.py --row sync_merge_100k_at_1m --repo GENERATED_1M_REPO [--runs 3] [--tmpdir DIR]

Row `sync_merge_10k` (target: <= 2 s):

Sets up, in a temp dir: a bare remote, a clone with a running daemon, and a second
writer that pushes N events to `a-sync` (the Go fixture's 10,000 messages plus its
321 other events when the fixture is found, else N synthetic messages from 50
authors), while the clone has ten unpushed messages of its own. Then it times
`sync.force {wait: true}` on the daemon -- fetch, union merge, projection, a
two-parent commit and the push -- and a second round after 100 more remote
events, to show that a round costs O(new events), not O(history).

Row `cross_clone_delivery` (targets: p50 <= 2 s, p95 <= 5 s): a bare remote and two
clones, A (alice) and B (bob), each with its daemon at default settings. Twenty
messages, alternating A->B and B->A, each sent after a random pause while the
recipient's clone has a blocked waiter (`push.wait_for_message`, the code of
`thrum wait` and MCP `wait_for_message`). Measured per message: send -> pushed (the
sender's `sync.status` has no uncommitted or unpushed events), send -> visible
(`message.get` on the recipient's daemon succeeds; both polled every 20 ms) and
send -> the waiter returns it. Probes and fetches per minute come from `sync.status`
(`probes_last_hour`, `fetches_last_hour`): while the messages flow (active), and over
a minute with both daemons restarted and nobody using them (idle).

Row `sync_merge_100k_at_1m` (targets: <= 5 s, daemon VmRSS and VmHWM <= 60 MiB; only with
`--row sync_merge_100k_at_1m`): a copy of a generated repository (`--repo`, e.g. one kept by
`bench.py --generate 1000000 --keep`; else one is generated), a bare remote of its a-sync
(pushed packs kept as packs), and a peer clone of the same 50-agent team that pushes
100,000 events of its last 30 days (bench/generate.py: messages, threads, edits, read
markers, receipts; most shards grow). Timed: `sync.force {wait: true}` on the copy's daemon
(fetch, merge, projection, commit), with the round's own split by stage (`stages_ms`); then
VmRSS and VmHWM from /proc (the peak is reset just before the round, so it is the merge's own;
the start-up peak is reported apart).

`run()`, `run_cross_clone()` and `run_at_scale()` return the numbers as dicts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("THRUM_SHARED_DIR") or ROOT.parent / "shared")
FIXTURE = SHARED / "fixtures" / "thrum-go-v0.4-fixture.tar.gz"
TARGET_S = 2.0
CROSS_P50_S, CROSS_P95_S = 2.0, 5.0


def _git(cwd, *args, env) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _thrum(cwd, *args, env) -> str:
    proc = subprocess.run([sys.executable, "-m", "thrum", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"thrum {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def _synthetic(n: int, offset: int = 0) -> dict[str, bytes]:
    sys.path.insert(0, str(ROOT))
    from thrum.events import encode_line, format_ns

    files: dict[str, list[bytes]] = {}
    base = 1_767_225_600 * 10**9
    for i in range(offset, offset + n):
        author = f"agent_{i % 50:04d}"
        line = encode_line({
            "agent_id": author, "body": {"content": f"synthetic message {i} " + "x" * 120, "format": "markdown"},
            "event_id": f"evt_01BENCH{i:018d}", "message_id": f"msg_01BENCH{i:018d}", "session_id": "ses_bench",
            "timestamp": format_ns(base + i * 1_000_000), "type": "message.create", "v": 1})
        files.setdefault(f"messages/{author}.jsonl", []).append(line)
    return {rel: b"".join(lines) for rel, lines in files.items()}


def _fixture_files(tmp: Path) -> dict[str, bytes] | None:
    if not FIXTURE.exists():
        return None
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp / "fixture", filter="data")
    src = tmp / "fixture" / ".thrum"
    out = {"events.jsonl": (src / "events.jsonl").read_bytes()}
    for path in sorted((src / "messages").glob("*.jsonl")):
        out[f"messages/{path.name}"] = path.read_bytes()
    return out


def _append_and_push(writer: Path, files: dict[str, bytes], env: dict) -> int:
    _git(writer, "pull", "-q", "--ff-only", "origin", "a-sync", env=env)  # others may have pushed meanwhile
    lines = 0
    for rel, data in files.items():
        path = writer / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:
            f.write(data)
        lines += data.count(b"\n")
    _git(writer, "add", "-A", env=env)
    _git(writer, "commit", "-q", "-m", "bench writer", env=env)
    _git(writer, "push", "-q", "origin", "HEAD:a-sync", env=env)
    return lines


def _force(socket_path: str) -> tuple[dict, float]:
    sys.path.insert(0, str(ROOT))
    from thrum.rpc import Client

    t0 = time.perf_counter()
    with Client(socket_path, timeout=600) as client:
        result = client.call("sync.force", {"wait": True})
    return result, time.perf_counter() - t0


def _send(socket_path: str, n: int) -> None:
    sys.path.insert(0, str(ROOT))
    from thrum.rpc import Client

    with Client(socket_path, timeout=60) as client:
        for i in range(n):
            client.call("message.send", {"content": f"local {i}", "caller_agent_id": "reader"})


def _bench_env(tmp: Path, sync_settings: dict) -> dict:
    home = tmp / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[user]\n\tname = Bench\n\temail = bench@example.com\n"
                                     "[init]\n\tdefaultBranch = main\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THRUM_", "GIT_"))}
    env.update({"HOME": str(home), "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"), "GIT_CONFIG_NOSYSTEM": "1",
                "PYTHONPATH": str(ROOT), **sync_settings})
    if os.environ.get("THRUM_DEBUG"):  # per-step timings in the daemon log (with --keep)
        env["THRUM_DEBUG"] = os.environ["THRUM_DEBUG"]
    return env


def _bare_remote(tmp: Path, env: dict) -> Path:
    remote = tmp / "remote.git"
    _git(tmp, "init", "-q", "--bare", str(remote), env=env)
    seed = tmp / "seed"
    seed.mkdir()
    _git(seed, "init", "-q", env=env)
    (seed / "README").write_text("bench\n")
    _git(seed, "add", "README", env=env)
    _git(seed, "commit", "-q", "-m", "seed", env=env)
    _git(seed, "push", "-q", str(remote), "main", env=env)
    return remote


def run(events: int = 10_000, use_fixture: bool = True, keep: bool = False) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="thrum-bench-sync-"))
    env = _bench_env(tmp, {"THRUM_SYNC_INTERVAL": "3600", "THRUM_SYNC_DEBOUNCE": "0",
                           "THRUM_SYNC_PROBE_INTERVAL": "0"})
    reader = tmp / "reader"
    try:
        remote = _bare_remote(tmp, env)
        _git(tmp, "clone", "-q", str(remote), str(reader), env=env)
        _thrum(reader, "init", env=env)
        _thrum(reader, "daemon", "start", env=env)
        sock = str(reader / ".thrum" / "var" / "thrum.sock")
        _force(sock)  # publishes a-sync (the reader's own first events)

        files = _fixture_files(tmp) if use_fixture else None
        source = "Go fixture" if files else "synthetic"
        if files is None:
            files = _synthetic(events)
        writer = tmp / "writer"
        _git(tmp, "clone", "-q", "--branch", "a-sync", str(remote), str(writer), env=env)
        pushed = _append_and_push(writer, files, env)

        # The reader has unpushed events of its own too, so the round is a real merge:
        # a two-parent commit of rewritten files, then a push.
        _thrum(reader, "quickstart", "--name", "reader", "--role", "bench", "--module", "sync", env=env)
        _send(sock, 10)
        big, big_wall = _force(sock)
        more = _synthetic(100, offset=10**6)
        _append_and_push(writer, more, env)
        small, small_wall = _force(sock)
        _thrum(reader, "daemon", "stop", env=env)
        return {
            "source": source, "remote_events": pushed,
            "merge_pulled": big.get("pulled"), "merge_pushed": big.get("pushed"), "merge_round_s": big.get("duration_ms", 0) / 1000,
            "merge_wall_s": round(big_wall, 3), "merge_ok": big.get("ok"),
            "incremental_pulled": small.get("pulled"), "incremental_examined": small.get("examined"),
            "incremental_round_s": small.get("duration_ms", 0) / 1000, "incremental_wall_s": round(small_wall, 3),
            "target_s": TARGET_S, "meets_target": big_wall <= TARGET_S,
        }
    finally:
        _stop_and_clean([reader], env, tmp, keep)


def _stop_and_clean(clones: list[Path], env: dict, tmp: Path, keep: bool) -> None:
    """Stop the benchmarked clones' daemons, then remove the temp dir unless it is to be kept."""
    for clone in clones:
        if (clone / ".thrum" / "var" / "thrum.sock").exists():
            subprocess.run([sys.executable, "-m", "thrum", "daemon", "stop"], cwd=clone, env=env,
                           capture_output=True, timeout=60)
    if keep:
        print(f"kept {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


# -- sync_merge_100k_at_1m -------------------------------------------------------------------------

SCALE_EVENTS = 100_000
SCALE_TARGET_S = 5.0
SCALE_RSS_MIB = 60.0
PEER_SPAN_NS = 30 * 86400 * 10**9  # the peer's events: its last 30 days (it was offline that long)


def _copy_repo(source: Path, dest: Path, env: dict) -> None:
    """cp -a of a repository with its a-sync worktree, re-pointed at the copy.

    A linked worktree's `.git` file and its admin dir's `gitdir` hold absolute paths: a plain
    copy would still run every git call of the sync worktree on the *original* repository.
    """
    if (source / ".thrum" / "var" / "thrum.sock").exists():
        raise RuntimeError(f"{source} has a running daemon (stop it first: a live database is not copied)")
    subprocess.run(["cp", "-a", str(source), str(dest)], check=True, timeout=1800)
    for sock in ("thrum.sock", "thrum.pid"):
        (dest / ".thrum" / "var" / sock).unlink(missing_ok=True)
    sync_dir = dest / ".git" / "thrum-sync" / "a-sync"
    admin = dest / ".git" / "worktrees" / "a-sync"
    (sync_dir / ".git").write_text(f"gitdir: {admin}\n")
    (admin / "gitdir").write_text(f"{sync_dir / '.git'}\n")
    if Path(_git(sync_dir, "rev-parse", "--git-common-dir", env=env)).resolve() != (dest / ".git").resolve():
        raise RuntimeError("the copied sync worktree still points elsewhere")


def _proc_status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024  # MiB
    return out


def _daemon_pid(repo: Path) -> int:
    return int(json.loads((repo / ".thrum" / "var" / "thrum.pid").read_text())["pid"])


def _call(sock: str, method: str, params: dict | None = None, timeout: float = 60):
    sys.path.insert(0, str(ROOT))
    from thrum.rpc import Client

    with Client(sock, timeout=timeout) as client:
        return client.call(method, params or {})


def _generate_repo(tmp: Path, count: int, env: dict) -> Path:
    """A repository with a generated history of `count` messages (as `bench.py --generate`)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from generate import setup_team, write_history

    repo = tmp / "generated"
    repo.mkdir()
    _git(repo, "init", "-q", env=env)
    (repo / "README.md").write_text("bench repo\n")
    _git(repo, "add", "README.md", env=env)
    _git(repo, "commit", "-q", "-m", "initial", env=env)
    _thrum(repo, "init", env=env)
    _thrum(repo, "daemon", "start", env=env)
    sock = str(repo / ".thrum" / "var" / "thrum.sock")

    def thrum(*args, name=None):
        return _thrum(repo, *args, env={**env, "THRUM_NAME": name} if name else env)
    team = setup_team(lambda m, p=None: _call(sock, m, p), thrum, 50)
    _thrum(repo, "daemon", "stop", env=env)
    write_history(str(repo / ".git" / "thrum-sync" / "a-sync"), team, count)
    (repo / ".thrum" / "var" / "messages.db").unlink()
    _thrum(repo, "migrate", "--rebuild", env=env)
    return repo


def run_at_scale(source: str | None = None, generate: int = 1_000_000, events: int = SCALE_EVENTS,
                 tmpdir: str | None = None, keep: bool = False) -> dict:
    """Row `sync_merge_100k_at_1m`: see the module docstring."""
    sys.path.insert(0, str(ROOT / "bench"))
    from generate import Team, write_history

    tmp = Path(tempfile.mkdtemp(prefix="thrum-bench-merge-", dir=tmpdir))
    env = _bench_env(tmp, {"THRUM_SYNC_INTERVAL": "3600", "THRUM_SYNC_DEBOUNCE": "0",
                           "THRUM_SYNC_PROBE_INTERVAL": "0", "THRUM_WS_PORT": "0"})
    reader = tmp / "reader"
    setup: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        src = Path(source).resolve() if source else _generate_repo(tmp, generate, env)
        _copy_repo(src, reader, env)
        if not source:
            shutil.rmtree(src)
        setup["copy_s"] = time.perf_counter() - t0
        sync_dir = reader / ".git" / "thrum-sync" / "a-sync"
        cfg_path = reader / ".thrum" / "config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        cfg["local_only"] = False
        cfg.setdefault("daemon", {})["local_only"] = False
        cfg_path.write_text(json.dumps(cfg, indent=2))

        # The shared remote: a bare clone of a-sync (hard links, no pack written), then the
        # reader's daemon syncs once with it (it commits anything uncommitted and pushes).
        t0 = time.perf_counter()
        remote = tmp / "remote.git"
        _git(tmp, "clone", "-q", "--bare", "--local", "--single-branch", "--branch", "a-sync", str(reader),
             str(remote), env=env)
        # Keep pushed packs as packs, as hosting services do. With git's default (a push of
        # fewer than 100 objects is unpacked into loose whole blobs) every fetch of a shard
        # recomputes its delta: ~45 s for this fetch at 1M, the remote's CPU, not thrum's.
        _git(remote, "config", "receive.unpackLimit", "1", env=env)
        for name in _git(reader, "remote", env=env).split():
            _git(reader, "remote", "remove", name, env=env)
        _git(reader, "remote", "add", "origin", str(remote), env=env)
        _thrum(reader, "daemon", "start", env=env)
        sock = str(reader / ".thrum" / "var" / "thrum.sock")
        first, _ = _force(sock)
        if not first.get("ok"):
            raise RuntimeError(f"first sync round failed: {first.get('last_error')}")
        setup["first_round_s"] = time.perf_counter() - t0

        # The peer: another clone of the same team, back from 30 days offline with `events` events.
        t0 = time.perf_counter()
        peer = tmp / "peer"
        _git(tmp, "clone", "-q", "--local", "--branch", "a-sync", "--single-branch", str(remote), str(peer), env=env)
        # The team of bench/generate.py (and of the Go fixture): as many agents as the highest shard number says.
        shards = [p.stem for p in (peer / "messages").glob("*.jsonl")] if (peer / "messages").is_dir() else []
        numbers = [int(n) for n in (s.rsplit("_", 1)[-1] for s in shards) if n.isdigit()]
        team = Team(max(numbers) + 1 if numbers else 50)
        stats = write_history(str(peer), team, events, seed=2, origin="d_benchpeer", end_ns=time.time_ns(),
                              span_ns=PEER_SPAN_NS, sessions_per_agent=1, max_events=events)
        _git(peer, "add", "-A", env=env)
        _git(peer, "commit", "-q", "-m", f"bench: {stats['events']} remote events", env=env)
        _git(peer, "push", "-q", "origin", "a-sync", env=env)
        setup["peer_s"] = time.perf_counter() - t0
        shutil.rmtree(peer)

        pid = _daemon_pid(reader)
        before = _call(sock, "message.list", {"page_size": 1, "include_deleted": True})["total"]
        idle = _proc_status(pid)
        with open(f"/proc/{pid}/clear_refs", "w") as f:  # VmHWM := VmRSS: the peak of the merge alone
            f.write("5")
        t0 = time.perf_counter()
        result, wall = _force(sock)
        after_status = _proc_status(pid)
        after = _call(sock, "message.list", {"page_size": 1, "include_deleted": True})["total"]
        if after - before != stats["messages"]:
            raise RuntimeError(f"{after - before} messages projected, {stats['messages']} expected")
        _thrum(reader, "daemon", "stop", env=env)
        return {
            "remote_events": stats["events"], "remote_messages": stats["messages"],
            "pulled": result.get("pulled"), "round_s": result.get("duration_ms", 0) / 1000, "wall_s": round(wall, 3),
            "stages_s": {k: ms / 1000 for k, ms in result.get("stages_ms", {}).items()},
            "ok": result.get("ok"), "error": result.get("last_error", "") if not result.get("ok") else "", "fast_forward": result.get("fast_forward"),
            "messages_before": before, "rss_before_mib": round(idle["VmRSS"], 1), "hwm_since_start_mib":
            round(max(idle["VmHWM"], after_status["VmHWM"]), 1), "rss_after_mib": round(after_status["VmRSS"], 1),
            "hwm_merge_mib": round(after_status["VmHWM"], 1),
            "setup": {k: round(v, 1) for k, v in setup.items()},
            "target_s": SCALE_TARGET_S, "target_rss_mib": SCALE_RSS_MIB,
            "meets_time": wall <= SCALE_TARGET_S,
            "meets_rss": max(after_status["VmRSS"], after_status["VmHWM"]) <= SCALE_RSS_MIB,
        }
    finally:
        _stop_and_clean([reader], env, tmp, keep)


def _median_run(runs: list[dict]) -> dict:
    """Per figure, the median over the runs (the other fields from the run with the median time)."""
    import statistics

    out = dict(sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2])
    for key in ("wall_s", "round_s", "rss_before_mib", "rss_after_mib", "hwm_merge_mib", "hwm_since_start_mib"):
        out[key] = round(statistics.median(r[key] for r in runs), 3)
    out["runs"] = [{k: r[k] for k in ("wall_s", "rss_after_mib", "hwm_merge_mib", "hwm_since_start_mib")}
                   for r in runs]
    out["ok"] = all(r["ok"] for r in runs)
    out["meets_time"] = out["wall_s"] <= SCALE_TARGET_S
    out["meets_rss"] = max(out["rss_after_mib"], out["hwm_merge_mib"]) <= SCALE_RSS_MIB
    return out


def _print_scale(r: dict) -> None:
    print(f"sync_merge_100k_at_1m: {r['remote_events']:,} remote events ({r['remote_messages']:,} messages) into "
          f"{r['messages_before']:,} messages: {r['wall_s']:.2f} s (round {r['round_s']:.2f} s; target <= "
          f"{SCALE_TARGET_S:g} s: {'ok' if r['meets_time'] else 'MISSED'})")
    if r.get("stages_s"):
        print("  stages: " + ", ".join(f"{name} {sec:.2f} s" for name, sec in r["stages_s"].items()))
    print(f"  daemon VmRSS {r['rss_before_mib']:.1f} MiB before, {r['rss_after_mib']:.1f} MiB after; VmHWM during "
          f"the merge {r['hwm_merge_mib']:.1f} MiB, since start {r['hwm_since_start_mib']:.1f} MiB (target <= "
          f"{SCALE_RSS_MIB:g} MiB: {'ok' if r['meets_rss'] else 'MISSED'})")
    print(f"  set-up: {r['setup']}")


# -- cross_clone_delivery -------------------------------------------------------------------------

def _percentile(values: list[float], pct: float) -> float:
    """Nearest rank: the smallest value with at least pct % of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def _status(sock: str) -> dict:
    from thrum.rpc import Client

    with Client(sock, timeout=30) as client:
        return client.call("sync.status")  # a quiet look: it does not make the clone active


def _counts(socks: list[str]) -> list[tuple[int, int]]:
    return [(s["probes_last_hour"], s["fetches_last_hour"]) for s in map(_status, socks)]


def _per_minute(before: list[tuple[int, int]], after: list[tuple[int, int]], seconds: float) -> tuple[float, float]:
    """The busiest clone's probes and fetches per minute over `seconds`."""
    probes = max(a[0] - b[0] for a, b in zip(after, before))
    fetches = max(a[1] - b[1] for a, b in zip(after, before))
    return round(probes * 60 / seconds, 1), round(fetches * 60 / seconds, 1)


def _deliver_one(send_sock: str, sender: str, recv_sock: str, recipient: str,
                 text: str) -> tuple[float, float, float]:
    """Send one message; seconds until it is pushed, visible on the other clone, and returned by the waiter there."""
    import threading

    from thrum.push import wait_for_message
    from thrum.rpc import Client, RPCError

    listening = threading.Event()
    returned: dict = {}

    def waiter() -> None:
        with Client(recv_sock, timeout=120) as client:
            msg = wait_for_message(client, recipient, {"inbox": True}, 60.0, on_listening=lambda _: listening.set())
            returned["at"] = time.perf_counter()
            returned["message_id"] = (msg or {}).get("message_id")
    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    if not listening.wait(30):
        raise RuntimeError("the waiter did not subscribe")
    with Client(send_sock, timeout=30) as client:
        t0 = time.perf_counter()
        mid = client.call("message.send", {"content": text, "mentions": [f"@{recipient}"],
                                           "caller_agent_id": sender})["message_id"]
    visible = pushed = None
    with Client(recv_sock, timeout=30) as receiver, Client(send_sock, timeout=30) as sender_client:
        deadline = t0 + 60
        while time.perf_counter() < deadline and (visible is None or pushed is None):
            if pushed is None:  # the sender's round committed and pushed it (sync.status is a quiet look)
                s = sender_client.call("sync.status")
                if s["uncommitted_events"] == 0 and s["unpushed_events"] == 0:
                    pushed = time.perf_counter() - t0
            if visible is None:
                try:
                    receiver.call("message.get", {"message_id": mid, "caller_agent_id": recipient})
                    visible = time.perf_counter() - t0
                except RPCError:
                    pass
            time.sleep(0.02)
    thread.join(65)
    if visible is None or pushed is None or returned.get("message_id") != mid:
        raise RuntimeError(f"message {mid} did not arrive within 60 s (waiter got {returned.get('message_id')})")
    return pushed, visible, returned["at"] - t0


def run_cross_clone(messages: int = 20, idle_seconds: float = 60.0, seed: int = 14, keep: bool = False) -> dict:
    sys.path.insert(0, str(ROOT))
    tmp = Path(tempfile.mkdtemp(prefix="thrum-bench-cross-"))
    env = _bench_env(tmp, {"THRUM_WS_PORT": "0"})  # default sync settings: that is what is measured
    clones = [tmp / "a", tmp / "b"]
    socks = [str(c / ".thrum" / "var" / "thrum.sock") for c in clones]
    names = ["alice", "bob"]
    try:
        remote = _bare_remote(tmp, env)
        for clone, name in zip(clones, names):
            _git(tmp, "clone", "-q", str(remote), str(clone), env=env)
            _thrum(clone, "init", env=env)
            _thrum(clone, "daemon", "start", env=env)
            _thrum(clone, "quickstart", "--name", name, "--role", "bench", "--module", "sync", env=env)
            _force(socks[clones.index(clone)])
        _force(socks[0])  # both agents are known on both clones
        rng = random.Random(seed)
        pushed, visible, waited = [], [], []
        before, started = _counts(socks), time.perf_counter()
        for i in range(messages):
            s, r = (0, 1) if i % 2 == 0 else (1, 0)
            time.sleep(rng.uniform(0, 2.5))  # the send lands anywhere in the other clone's probe cycle
            p, v, w = _deliver_one(socks[s], names[s], socks[r], names[r], f"cross-clone {i}")
            pushed.append(p)
            visible.append(v)
            waited.append(w)
        active_seconds = time.perf_counter() - started
        probes_active, fetches_active = _per_minute(before, _counts(socks), active_seconds)

        # Idle: fresh daemons that nobody uses (only quiet sync.status looks).
        for clone in clones:
            _thrum(clone, "daemon", "stop", env=env)
            _thrum(clone, "daemon", "start", env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the start-up round has fetched
            states = [_status(s) for s in socks]
            if all(st["fetches_last_hour"] >= 1 and not st["in_progress"] for st in states):
                break
            time.sleep(0.2)
        before, started = _counts(socks), time.perf_counter()
        modes = set()
        while time.perf_counter() - started < idle_seconds:
            modes |= {_status(s)["mode"] for s in socks}
            time.sleep(min(5.0, max(0.0, idle_seconds - (time.perf_counter() - started))))
        probes_idle, fetches_idle = _per_minute(before, _counts(socks), time.perf_counter() - started)
        for clone in clones:
            _thrum(clone, "daemon", "stop", env=env)
        p50_v, p95_v = _percentile(visible, 50), _percentile(visible, 95)
        p50_w, p95_w = _percentile(waited, 50), _percentile(waited, 95)
        return {
            "messages": messages,
            "pushed_p50_s": round(_percentile(pushed, 50), 3), "pushed_p95_s": round(_percentile(pushed, 95), 3),
            "visible_p50_s": round(p50_v, 3), "visible_p95_s": round(p95_v, 3), "visible_max_s": round(max(visible), 3),
            "wait_p50_s": round(p50_w, 3), "wait_p95_s": round(p95_w, 3), "wait_max_s": round(max(waited), 3),
            "probes_per_min_active": probes_active, "fetches_per_min_active": fetches_active,
            "probes_per_min_idle": probes_idle, "fetches_per_min_idle": fetches_idle,
            "idle_modes": sorted(modes), "idle_seconds": idle_seconds,
            "target_p50_s": CROSS_P50_S, "target_p95_s": CROSS_P95_S,
            "meets_target": max(p50_v, p50_w) <= CROSS_P50_S and max(p95_v, p95_w) <= CROSS_P95_S,
        }
    finally:
        _stop_and_clean(clones, env, tmp, keep)


def _print_merge(r: dict) -> None:
    print(f"sync merge of {r['merge_pulled']} remote events ({r['source']}; {r['merge_pushed']} local events "
          f"pushed in the same round): {r['merge_wall_s']:.2f} s "
          f"(round {r['merge_round_s']:.2f} s; target <= {TARGET_S:g} s: "
          f"{'ok' if r['meets_target'] else 'MISSED'})")
    print(f"next round, 100 new remote events: {r['incremental_wall_s']:.3f} s, "
          f"{r['incremental_examined']} lines examined, {r['incremental_pulled']} pulled")


def _print_cross(r: dict) -> None:
    print(f"cross_clone_delivery ({r['messages']} messages, both directions, default settings; "
          f"targets p50 <= {CROSS_P50_S:g} s, p95 <= {CROSS_P95_S:g} s: {'ok' if r['meets_target'] else 'MISSED'})")
    print(f"  send -> pushed:      p50 {r['pushed_p50_s']:.2f} s, p95 {r['pushed_p95_s']:.2f} s (sender's round)")
    print(f"  send -> visible:     p50 {r['visible_p50_s']:.2f} s, p95 {r['visible_p95_s']:.2f} s, "
          f"max {r['visible_max_s']:.2f} s")
    print(f"  send -> wait return: p50 {r['wait_p50_s']:.2f} s, p95 {r['wait_p95_s']:.2f} s, "
          f"max {r['wait_max_s']:.2f} s")
    print(f"  per clone and minute: active {r['probes_per_min_active']:g} probes, "
          f"{r['fetches_per_min_active']:g} fetches; idle ({', '.join(r['idle_modes'])}) "
          f"{r['probes_per_min_idle']:g} probes, {r['fetches_per_min_idle']:g} fetches")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--row", choices=["sync_merge_10k", "cross_clone_delivery", "sync_merge_100k_at_1m", "all"],
                    default="all", help="all = the first two (sync_merge_100k_at_1m copies a 1M repository: "
                    "only when named)")
    ap.add_argument("--repo", help="sync_merge_100k_at_1m: a generated repository to copy (bench.py --generate "
                    "1000000 --keep); without it one is generated (minutes)")
    ap.add_argument("--generate", type=int, default=1_000_000, help="sync_merge_100k_at_1m: messages to "
                    "generate when no --repo is given")
    ap.add_argument("--remote-events", type=int, default=SCALE_EVENTS, help="sync_merge_100k_at_1m: events the "
                    "peer pushes")
    ap.add_argument("--runs", type=int, default=1, help="sync_merge_100k_at_1m: runs (medians are reported)")
    ap.add_argument("--tmpdir", help="where the temp dirs go (the 1M copy needs ~3 GB)")
    ap.add_argument("--events", type=int, default=10_000, help="synthetic events when the fixture is absent")
    ap.add_argument("--synthetic", action="store_true", help="do not use the Go fixture")
    ap.add_argument("--messages", type=int, default=20, help="cross_clone_delivery: messages sent")
    ap.add_argument("--idle-seconds", type=float, default=60.0, help="cross_clone_delivery: idle measurement")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (daemon logs are in .thrum/var/)")
    args = ap.parse_args(argv)
    results, ok = {}, True
    if args.row in ("sync_merge_10k", "all"):
        r = results["sync_merge_10k"] = run(args.events, use_fixture=not args.synthetic, keep=args.keep)
        ok = ok and r["meets_target"] and r["merge_ok"]
        if not args.json:
            _print_merge(r)
    if args.row == "sync_merge_100k_at_1m":
        runs = []
        for i in range(args.runs):
            r = run_at_scale(args.repo, args.generate, args.remote_events, args.tmpdir, args.keep)
            runs.append(r)
            if not args.json:
                _print_scale(r)
        r = results["sync_merge_100k_at_1m"] = _median_run(runs)
        ok = ok and r["meets_time"] and r["meets_rss"] and r["ok"]
        if not args.json and len(runs) > 1:
            print(f"median of {len(runs)} runs:")
            _print_scale(r)
    if args.row in ("cross_clone_delivery", "all"):
        r = results["cross_clone_delivery"] = run_cross_clone(args.messages, args.idle_seconds, keep=args.keep)
        ok = ok and r["meets_target"]
        if not args.json:
            _print_cross(r)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
