#!/usr/bin/env python3
"""Delivery into a running agent: `thrum send` → the text in the next model request of Claude Code.

Usage: python3 bench/bench_hooks.py [-n 10] [--json FILE]

Runs the real Claude Code (the pinned npm package in tests/runtimes: `npm ci --prefix tests/runtimes`)
interactively under tmux against the tests' scripted model server on 127.0.0.1, in a scratch repository
with thrum's hooks set up, as agent bob; alice sends. Two rows, each the time from the send's answer to
the model server receiving the request that carries the message:

* idle_wake  — bob's turn is over and the session sits idle: the asyncRewake waiter takes the message
               and wakes the session (target: within 5 s; the issue's bound for the test).
* mid_turn   — bob is in a tool call that ends right after the send: the PostToolUse hook puts the
               message into the request that carries the tool's result.

A runtime that is not installed is an error, never a skipped row.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from _models import ModelServer, Shell, Text  # noqa: E402
from _runtimes import ClaudeTmux, missing_runtimes  # noqa: E402

WAIT_GO = ("#!/bin/sh\nn=0\nwhile [ ! -f go ] && [ $n -lt 400 ]; do sleep 0.01; n=$((n+1)); done\nrm -f go\n"
           "echo tool finished\n")


def _thrum(repo: str, env: dict, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "thrum", *args], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"thrum {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def setup(tmp: str) -> tuple[str, dict]:
    home = os.path.join(tmp, "home")
    os.makedirs(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THRUM_", "GIT_"))}
    env.update({"HOME": home, "GIT_CONFIG_NOSYSTEM": "1", "PYTHONPATH": ROOT,
                "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "b",
                "GIT_COMMITTER_EMAIL": "b@x"})
    repo = os.path.join(tmp, "repo")
    os.makedirs(repo)
    subprocess.run(["git", "init", "-q"], cwd=repo, env=env, check=True)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "init"], cwd=repo, env=env, check=True)
    _thrum(repo, env, "init")
    _thrum(repo, env, "daemon", "start")
    _thrum(repo, {**env, "THRUM_NAME": "alice"}, "quickstart", "--name", "alice", "--role", "implementer",
           "--module", "auth")
    _thrum(repo, {**env, "THRUM_NAME": "bob"}, "quickstart", "--name", "bob", "--role", "reviewer",
           "--module", "auth")
    _thrum(repo, env, "setup", "hooks", "--runtime", "claude-code", "--command",
           f"{shlex.quote(sys.executable)} -m thrum")
    with open(os.path.join(repo, "wait_go.sh"), "w") as f:
        f.write(WAIT_GO)
    return repo, env


class Scenario:
    """The scripted model: a prompt that says `tool` runs wait_go.sh; everything else is answered at once."""

    def __call__(self, req):
        if req.last_user_text.strip().endswith("run the tool") and "tool finished" not in req.last_user_text:
            return Shell("sh wait_go.sh")
        return Text("noted")


def measure(n: int) -> dict:
    missing = missing_runtimes("claude")
    if missing:
        raise SystemExit(f"error: Claude Code is not installed in tests/runtimes (npm ci --prefix "
                         f"{os.path.join(ROOT, 'tests', 'runtimes')})")
    from thrum.rpc import Client

    tmp = tempfile.mkdtemp(prefix="thrum-bench-hooks-")
    repo, env = setup(tmp)
    sock = os.path.join(repo, ".thrum", "var", "thrum.sock")
    idle, busy = [], []
    try:
        with ModelServer(Scenario()) as models, \
                ClaudeTmux(models, os.path.join(tmp, "rt"), cwd=repo,
                           env={"THRUM_NAME": "bob", "PYTHONPATH": ROOT}) as cc, Client(sock) as c:
            cc.start(timeout=60)
            cc.submit("hello")
            models.wait_for(lambda r: "hello" in r.text, timeout=60)

            for _ in range(n):
                _settle(models)
                idle.append(send_and_time(c, models))
            go = os.path.join(repo, "go")
            for _ in range(n):
                _settle(models)
                start = len(models.requests)
                cc.submit("run the tool")
                models.wait_for(lambda r: r.last_user_text.strip().endswith("run the tool"), timeout=60, start=start)
                # The tool is running (until `go` exists): the message arrives mid-turn and the tool ends.
                busy.append(send_and_time(c, models, then=lambda: open(go, "w").close()))
            cc.quit()
    finally:
        subprocess.run([sys.executable, "-m", "thrum", "daemon", "stop"], cwd=repo, env=env, capture_output=True,
                       timeout=60)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return {"idle_wake": idle, "mid_turn": busy}


def send_and_time(c, models, then=None) -> float:
    """Seconds from alice's send being answered to the model server receiving a request that carries it."""
    word = "w" + uuid.uuid4().hex[:12]
    before = len(models.requests)
    c.call("message.send", {"caller_agent_id": "alice", "content": f"ping {word}", "mentions": ["@bob"]})
    t0 = time.monotonic()
    if then is not None:
        then()
    models.wait_for(lambda r: word in r.text, timeout=30, start=before)
    return time.monotonic() - t0


def _settle(models) -> None:
    """Wait until the session is idle: no model request for a second (its Stop hooks have run)."""
    models.wait_idle(quiet=1.0, timeout=60)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=10, help="sends per row")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args(argv)
    samples = measure(args.n)
    rows = []
    for name, target in (("idle_wake", 5.0), ("mid_turn", None)):
        xs = sorted(samples[name])
        p50 = statistics.median(xs)
        p95 = xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]
        ok = "" if target is None else ("ok" if p50 <= target and p95 <= target else "MISS")
        rows.append({"name": name, "p50_s": round(p50, 3), "p95_s": round(p95, 3), "max_s": round(xs[-1], 3),
                     "n": len(xs), "target_s": target, "ok": ok})
    print("| row | p50 | p95 | max | n | target |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        target = f"≤ {r['target_s']:.0f} s {r['ok']}" if r["target_s"] else "—"
        print(f"| {r['name']} | {r['p50_s']:.2f} s | {r['p95_s']:.2f} s | {r['max_s']:.2f} s | {r['n']} | {target} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "samples": samples}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
