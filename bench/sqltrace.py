#!/usr/bin/env python3
"""Where the daemon's hot paths spend their time, statement by statement.

    python3 bench/bench.py --only rebuild --quick --keep     # prints "kept /tmp/thrum-bench-…"
    python3 bench/sqltrace.py /tmp/thrum-bench-…/repo

Opens the repository's store in-process (the daemon must not be running), runs
`message.list` as the inbox does (with and without `unread`, and unfiltered) and
`message.send`, and prints for each SQL statement its mean time (from its start to
the next statement, so the Python work in between is included) and its
EXPLAIN QUERY PLAN. Sends are rolled back: nothing is written, and the COMMIT and
fsync (which bench.py measures end to end) are not part of these figures.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("repo", help="a repository with .thrum/ (e.g. one kept by bench.py --keep)")
    p.add_argument("--agent", default="implementer_0001", help="the inbox owner (default: %(default)s)")
    p.add_argument("--sender", default="coordinator_0000", help="the sender (default: %(default)s)")
    p.add_argument("-n", type=int, default=200, help="iterations per case (default: %(default)s)")
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    from thrum import sync
    from thrum.daemon import lock_is_held, make_store
    from thrum.paths import resolve
    from thrum.rpc import Params
    from thrum.service import CallContext, Service

    paths = resolve(args.repo, walk=False)
    if lock_is_held(paths):
        print("Error: a daemon is running for this repository; stop it first.", file=sys.stderr)
        return 1
    store = make_store(paths, sync.repo_info(paths.main_repo).sync_dir)
    store.open()
    svc = Service(store, repo_id=os.path.basename(paths.main_repo), thrum_dir=paths.thrum,
                  local_thrum=paths.local, origin_daemon=store.origin_daemon)
    db = store.db
    row = svc.agent_row(args.agent)
    if row is None:
        print(f"Error: no agent {args.agent} in this repository (use --agent).", file=sys.stderr)
        return 1
    inbox = {"for_agent": args.agent, "for_agent_role": row["role"], "exclude_self": True,
             "caller_agent_id": args.agent, "page_size": 100}
    send = {"content": "sqltrace probe", "caller_agent_id": args.sender, "mentions": [f"@{args.agent}"]}
    print(f"{db.execute('SELECT COUNT(*) FROM messages').fetchone()[0]} messages, "
          f"{db.execute('SELECT COUNT(*) FROM message_reads').fetchone()[0]} read markers\n")

    def list_case(params):
        return lambda: svc.message_list(Params(dict(params)), CallContext())

    def send_case():
        store.begin()
        try:
            svc.message_send(Params({**send, "mentions": list(send["mentions"])}), CallContext())
        finally:
            store.rollback()

    cases = [("message.list inbox", list_case(inbox)), ("message.list inbox unread", list_case({**inbox, "unread": True})),
             ("message.list page 100, no filter", list_case({"page_size": 100})),
             ("message.send (rolled back; no COMMIT, no fsync)", send_case)]
    for title, fn in cases:
        for _ in range(max(5, args.n // 10)):
            fn()
        t0 = time.perf_counter()
        for _ in range(args.n):
            fn()
        total = (time.perf_counter() - t0) / args.n * 1000
        per: dict[str, float] = collections.defaultdict(float)
        example: dict[str, str] = {}
        marks: list = []
        db.set_trace_callback(lambda sql: marks.append((time.perf_counter(), sql)))
        for _ in range(args.n):
            marks.clear()
            fn()
            end = time.perf_counter()
            for i, (t, sql) in enumerate(marks):
                key = _normalize(sql)  # the same statement with other literal values
                example.setdefault(key, sql)
                per[key] += ((marks[i + 1][0] if i + 1 < len(marks) else end) - t) * 1000 / args.n
        db.set_trace_callback(None)
        print(f"== {title}: {total:.3f} ms per call (in-process, untraced)")
        for key, ms in sorted(per.items(), key=lambda kv: -kv[1]):
            print(f"  {ms:7.3f} ms  {key[:160]}")
            if key.upper().startswith("SELECT"):
                try:
                    plan = [r[3] for r in db.execute("EXPLAIN QUERY PLAN " + example[key])]
                except Exception as exc:  # noqa: BLE001 - a plan is informative only
                    plan = [f"(no plan: {exc})"]
                for step in plan:
                    print(f"               plan: {step}")
        print()
    store.close()
    return 0


def _normalize(sql: str) -> str:
    sql = re.sub(r"'(?:[^']|'')*'", "?", " ".join(sql.split()))
    sql = re.sub(r"x\?", "?", sql)
    sql = re.sub(r"\b\d+\b", "?", sql)
    return re.sub(r"\?(?:\s*,\s*\?)+", "?,…", sql)


if __name__ == "__main__":
    sys.exit(main())
