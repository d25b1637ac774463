#!/usr/bin/env python3
"""Push latency: `message.send` on the Unix socket -> `notification.message` on a subscribed WebSocket.

Usage: python3 bench/bench_push.py [-n 300] [--keep]

Starts a daemon in a scratch git repository (HOME and git config inside it), registers
two agents, subscribes a WebSocket client (a browser user) to everything, then times each
send until its notification arrives. The time includes the daemon's durable write (fsync)
and its answer, as a real subscriber sees it. Prints the median and the 95th percentile;
the design target is a median of at most 5 ms. The send's own round trip is shown too:
the difference is what push adds.

The WebSocket client is websockets' sans-I/O `ClientProtocol` on a blocking socket, so
no client-side thread hand-off blurs the number.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _run(argv, cwd, env):
    subprocess.run(argv, cwd=cwd, env=env, check=True, capture_output=True, timeout=60)


class _SansIOClient:
    """A minimal blocking WebSocket client: websockets' ClientProtocol on a plain socket."""

    def __init__(self, port: int, token: str) -> None:
        import socket

        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri

        self.proto = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/ws?token={token}"), max_size=None)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.proto.send_request(self.proto.connect())
        self._flush()
        while self.proto.handshake_exc is None and self.proto.state.name == "CONNECTING":
            self._feed()
        if self.proto.handshake_exc is not None:
            raise self.proto.handshake_exc
        self._id = 0

    def _flush(self) -> None:
        for data in self.proto.data_to_send():
            if data:
                self.sock.sendall(data)

    def _feed(self) -> None:
        data = self.sock.recv(262144)
        if not data:
            raise ConnectionError("the daemon closed the WebSocket")
        self.proto.receive_data(data)
        self._flush()

    def _frames(self) -> list[bytes]:
        while True:
            frames = [e.data for e in self.proto.events_received() if hasattr(e, "opcode") and e.opcode == 1]
            if frames:
                return frames
            self._feed()

    def wait_for(self, needle: bytes) -> bytes:
        while True:
            for data in self._frames():
                if needle in data:
                    return data

    def call(self, method: str, **params) -> dict:
        self._id += 1
        self.proto.send_text(json.dumps({"jsonrpc": "2.0", "id": self._id, "method": method,
                                         "params": params}).encode())
        self._flush()
        while True:
            for data in self._frames():
                msg = json.loads(data)
                if msg.get("id") == self._id:
                    return msg

    def close(self) -> None:
        self.sock.close()


def measure(n: int, keep: bool = False) -> dict:
    from thrum.rpc import Client

    tmp = tempfile.mkdtemp(prefix="thrum-bench-push-")
    repo = os.path.join(tmp, "repo")
    os.makedirs(os.path.join(tmp, "home"))
    gitconfig = os.path.join(tmp, "home", ".gitconfig")
    with open(gitconfig, "w") as f:
        f.write("[user]\n\tname = Bench User\n\temail = bench@example.com\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THRUM_", "GIT_"))}
    env.update({"HOME": os.path.join(tmp, "home"), "GIT_CONFIG_GLOBAL": gitconfig, "GIT_CONFIG_NOSYSTEM": "1",
                "PYTHONPATH": ROOT, "THRUM_WS_PORT": "0", "THRUM_LOCAL": "1"})
    thrum = [sys.executable, "-m", "thrum"]
    try:
        os.makedirs(repo)
        _run(["git", "init", "-q"], repo, env)
        _run(["git", "commit", "-q", "--allow-empty", "-m", "init"], repo, env)
        _run(thrum + ["init"], repo, env)
        _run(thrum + ["daemon", "start"], repo, env)
        for name, role in (("alice", "implementer"), ("bob", "reviewer")):
            _run(thrum + ["quickstart", "--name", name, "--role", role, "--module", "bench"], repo,
                 {**env, "THRUM_NAME": name})
        var = os.path.join(repo, ".thrum", "var")
        port = open(os.path.join(var, "ws.port")).read().strip()
        token = open(os.path.join(var, "ws.token")).read().strip()
        samples, sends = [], []
        ws = _SansIOClient(int(port), token)
        with Client(os.path.join(var, "thrum.sock")) as unix:
            ws.call("user.register", username="bench")
            ws.call("subscribe", all=True)
            for i in range(n + 20):
                text = f"bench message {i}"
                t0 = time.perf_counter()
                unix.call("message.send", {"content": text, "caller_agent_id": "alice"})
                t1 = time.perf_counter()
                ws.wait_for(text.encode())
                if i >= 20:  # warm-up first
                    samples.append((time.perf_counter() - t0) * 1000)
                    sends.append((t1 - t0) * 1000)
        ws.close()
        _run(thrum + ["daemon", "stop"], repo, env)
    finally:
        if keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            subprocess.run(thrum + ["daemon", "stop"], cwd=repo, env=env, capture_output=True, timeout=30)
            shutil.rmtree(tmp, ignore_errors=True)
    samples.sort()
    return {"n": len(samples), "median_ms": statistics.median(samples),
            "p95_ms": samples[int(len(samples) * 0.95) - 1], "min_ms": samples[0],
            "send_rtt_median_ms": statistics.median(sends)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="messages to time (after 20 warm-up ones)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch repository")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    r = measure(args.n, args.keep)
    if args.json:
        print(json.dumps(r))
    else:
        verdict = "ok" if r["median_ms"] <= 5 else "over the 5 ms target"
        print(f"send -> notification.message (WebSocket), n={r['n']}: median {r['median_ms']:.2f} ms "
              f"(p95 {r['p95_ms']:.2f} ms, min {r['min_ms']:.2f} ms) - {verdict}; "
              f"the durable send alone: median {r['send_rtt_median_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
