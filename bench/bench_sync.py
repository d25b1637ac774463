"""Benchmark: one sync round that merges 10,000 remote events (target: <= 2 s).

    python3 bench/bench_sync.py [--events N] [--json]

Sets up, in a temp dir: a bare remote, a clone with a running daemon, and a second
writer that pushes N events to `a-sync` (the Go fixture's 10,000 messages plus its
321 other events when the fixture is found, else N synthetic messages from 50
authors), while the clone has ten unpushed messages of its own. Then it times
`sync.force {wait: true}` on the daemon -- fetch, union merge, projection, a
two-parent commit and the push -- and a second round after 100 more remote
events, to show that a round costs O(new events), not O(history).

`run()` returns the numbers as a dict, for bench/bench.py.
"""

from __future__ import annotations

import argparse
import json
import os
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


def run(events: int = 10_000, use_fixture: bool = True, keep: bool = False) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="thrum-bench-sync-"))
    home = tmp / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[user]\n\tname = Bench\n\temail = bench@example.com\n"
                                     "[init]\n\tdefaultBranch = main\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THRUM_", "GIT_"))}
    env.update({"HOME": str(home), "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"), "GIT_CONFIG_NOSYSTEM": "1",
                "PYTHONPATH": str(ROOT), "THRUM_SYNC_INTERVAL": "3600", "THRUM_SYNC_DEBOUNCE": "0"})
    if os.environ.get("THRUM_DEBUG"):  # per-step timings in the daemon log (with --keep)
        env["THRUM_DEBUG"] = os.environ["THRUM_DEBUG"]
    reader = tmp / "reader"
    try:
        remote = tmp / "remote.git"
        _git(tmp, "init", "-q", "--bare", str(remote), env=env)
        seed = tmp / "seed"
        seed.mkdir()
        _git(seed, "init", "-q", env=env)
        (seed / "README").write_text("bench\n")
        _git(seed, "add", "README", env=env)
        _git(seed, "commit", "-q", "-m", "seed", env=env)
        _git(seed, "push", "-q", str(remote), "main", env=env)

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
        if (reader / ".thrum" / "var" / "thrum.sock").exists():
            subprocess.run([sys.executable, "-m", "thrum", "daemon", "stop"], cwd=reader, env=env,
                           capture_output=True, timeout=60)
        if keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000, help="synthetic events when the fixture is absent")
    ap.add_argument("--synthetic", action="store_true", help="do not use the Go fixture")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (the daemon log is in reader/.thrum/var/)")
    args = ap.parse_args(argv)
    r = run(args.events, use_fixture=not args.synthetic, keep=args.keep)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"sync merge of {r['merge_pulled']} remote events ({r['source']}; {r['merge_pushed']} local events "
              f"pushed in the same round): {r['merge_wall_s']:.2f} s "
              f"(round {r['merge_round_s']:.2f} s; target <= {TARGET_S:g} s: "
              f"{'ok' if r['meets_target'] else 'MISSED'})")
        print(f"next round, 100 new remote events: {r['incremental_wall_s']:.3f} s, "
              f"{r['incremental_examined']} lines examined, {r['incremental_pulled']} pulled")
    return 0 if r["meets_target"] and r["merge_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
