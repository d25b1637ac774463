#!/usr/bin/env python3
"""Full-text search benchmark: the median `message.search` round trip for two-word queries.

    python3 bench/bench_search.py                    # builds a 100,000-message repository in a temp dir
    python3 bench/bench_search.py --messages 1000000
    python3 bench/bench_search.py --repo PATH        # an initialized thrum repository (e.g. one that
                                                     # `bench/bench.py --generate N` left); its daemon is
                                                     # started when it is not running, and stopped again
    python3 bench/bench_search.py --rebuild-cost     # also: what the index adds to a full rebuild

Queries are two words taken from one randomly chosen message (what a person remembers of a message);
a second row uses the two most frequent words of the index (the worst case: they match most
messages). The standalone dataset is generated text: a Zipf-distributed vocabulary of 30,000
made-up words, 5-40 words a message, 1% of the messages in Chinese. Its log lines are written
straight into the sync worktree and projected with `thrum migrate --rebuild` (the rebuild the
daemon does), so building 1,000,000 messages takes minutes, not hours.

Reported: query medians and p95 (round trip over the Unix socket, the daemon's own time inside; a first
pass over the queries, then the steady state),
the database bytes per message the index takes (dbstat), and, with --rebuild-cost, the rebuild
time per message with and without the search component.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import string
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from thrum.events import encode_line, format_ns, new_id  # noqa: E402

AGENTS = [f"agent{i}" for i in range(10)]
CHINESE = ["认证", "问题", "部署", "数据库", "服务器", "测试", "需要", "我们", "今天", "修复", "日志", "配置"]


def thrum(repo: str, *args: str, timeout: float = 3600, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("THRUM_NAME", None)
    proc = subprocess.run([sys.executable, "-m", "thrum", *args, "--repo", repo], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise SystemExit(f"thrum {' '.join(args)} failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    return proc


def make_vocabulary(rnd: random.Random, size: int = 30_000) -> tuple[list[str], list[float]]:
    words, seen = [], set()
    while len(words) < size:
        w = "".join(rnd.choice(string.ascii_lowercase) for _ in range(rnd.randint(3, 10)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    cum, total = [], 0.0
    for rank in range(1, size + 1):
        total += 1.0 / rank ** 1.07
        cum.append(total)
    return words, cum


def generate(repo: str, count: int, seed: int = 15) -> None:
    """git init, thrum init, `count` message.create lines in the agents' shards, projected by migrate."""
    os.makedirs(repo, exist_ok=True)
    subprocess.run(["git", "init", "-q", repo], check=True)
    subprocess.run(["git", "-C", repo, "-c", "user.name=bench", "-c", "user.email=bench@example.com",
                    "commit", "-q", "--allow-empty", "-m", "init"], check=True)
    thrum(repo, "init")
    sync_dir = os.path.join(repo, ".git", "thrum-sync", "a-sync")
    rnd = random.Random(seed)
    words, cum = make_vocabulary(rnd)
    start_ns = time.time_ns() - 30 * 86400 * 10**9
    step = (30 * 86400 * 10**9) // max(1, count)
    os.makedirs(os.path.join(sync_dir, "messages"), exist_ok=True)
    files = {a: open(os.path.join(sync_dir, "messages", f"{a}.jsonl"), "ab") for a in AGENTS}
    t0 = time.perf_counter()
    batch = 10_000
    for base in range(0, count, batch):
        n = min(batch, count - base)
        lengths = [rnd.randint(5, 40) for _ in range(n)]
        drawn = rnd.choices(words, cum_weights=cum, k=sum(lengths))
        pos = 0
        for i in range(n):
            k = base + i
            if rnd.random() < 0.01:
                content = "".join(rnd.choice(CHINESE) for _ in range(rnd.randint(4, 12))) + "。"
            else:
                content = " ".join(drawn[pos:pos + lengths[i]])
            pos += lengths[i]
            agent = AGENTS[k % len(AGENTS)]
            event = {"type": "message.create", "v": 1, "timestamp": format_ns(start_ns + k * step),
                     "event_id": new_id("evt"), "message_id": new_id("msg"), "agent_id": agent,
                     "session_id": "", "body": {"format": "markdown", "content": content},
                     "origin_daemon": "d_benchsearch"}
            files[agent].write(encode_line(event) + b"\n")
    for f in files.values():
        f.close()
    print(f"generated {count:,} messages in {time.perf_counter() - t0:.1f}s", flush=True)
    t0 = time.perf_counter()
    out = json.loads(thrum(repo, "migrate", "--rebuild", "--json").stdout)
    took = time.perf_counter() - t0
    print(f"rebuild (with the search index): {out.get('events'):,} events in {took:.1f}s "
          f"({took / max(1, count) * 1e6:.1f} µs/message)", flush=True)


def index_bytes(db_path: str) -> dict:
    """Bytes of the search tables (dbstat) and of everything, plus the message count."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        messages = conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        try:
            rows = conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall()
        except sqlite3.OperationalError:  # SQLite built without dbstat
            return {"messages": messages}
    finally:
        conn.close()
    search = sum(size for name, size in rows if name.startswith("message_search"))
    messages_table = sum(size for name, size in rows if name == "messages")
    return {"messages": messages, "search_bytes": search, "total_bytes": sum(size for _, size in rows),
            "messages_table_bytes": messages_table}


def sample_queries(db_path: str, n: int, seed: int) -> tuple[list[str], list[str]]:
    """Two words of a random message each; and the index's most frequent words, in pairs."""
    rnd = random.Random(seed)
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        top = conn.execute("SELECT MAX(rowid) FROM messages").fetchone()[0] or 0
        queries: list[str] = []
        while len(queries) < n and top:
            row = conn.execute("SELECT content FROM messages WHERE rowid >= ? AND deleted = 0 LIMIT 1",
                               (rnd.randint(1, top),)).fetchone()
            words = [w for w in (row[0].split() if row else []) if len(w) >= 3 and w.isalnum() and w.isascii()]
            words = list(dict.fromkeys(words))
            if len(words) >= 2:
                queries.append(" ".join(rnd.sample(words, 2)))
        conn.execute("CREATE VIRTUAL TABLE temp.vocab USING fts5vocab(main, message_search, 'row')")
        common = [r[0] for r in conn.execute("SELECT term FROM temp.vocab ORDER BY doc DESC LIMIT 6")]
    finally:
        conn.close()
    return queries, [f"{common[i]} {common[i + 1]}" for i in range(0, len(common) - 1, 2)]


def measure(repo: str, queries: list[str], repeat: int = 1) -> list[float]:
    from thrum.rpc import Client

    sock = os.path.join(repo, ".thrum", "var", "thrum.sock")
    times = []
    with Client(sock, timeout=60).connect() as c:
        c.call("message.search", {"query": queries[0]})  # warm the page cache
        for _ in range(repeat):
            for q in queries:
                t0 = time.perf_counter()
                c.call("message.search", {"query": q, "limit": 20})
                times.append(time.perf_counter() - t0)
    return times


def rebuild_cost(repo: str) -> None:
    """A rebuild into a scratch database with and without the search component: the difference is
    what the index's triggers cost per message."""
    from thrum.daemon import _component_factories, origin_daemon_id
    from thrum.paths import resolve
    from thrum.store import Store

    paths = resolve(repo)
    sync_dir = os.path.join(repo, ".git", "thrum-sync", "a-sync")
    results = {}
    for with_search in (False, True):
        db = os.path.join(paths.var, "bench-rebuild.db")
        store = Store(sync_dir, db, paths.var, origin_daemon_id(paths.thrum))
        for factory in _component_factories():
            component = factory(paths)
            if component is None or (not with_search and type(component).__module__ == "thrum.search"):
                continue
            if hasattr(component, "extend_store"):
                component.extend_store(store)
        t0 = time.perf_counter()
        events = store.rebuild()
        results[with_search] = (time.perf_counter() - t0, events)
        store.close()
        if not with_search:  # the other way: load without the triggers, then index in bulk
            from thrum import search

            conn = sqlite3.connect(db, isolation_level=None)
            conn.executescript(search.SCHEMA)
            t0 = time.perf_counter()
            conn.execute("BEGIN")
            search.bulk_populate(conn)
            conn.execute("COMMIT")
            results["bulk"] = time.perf_counter() - t0
            conn.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(db + suffix):
                os.remove(db + suffix)
    (plain, events), (searched, _) = results[False], results[True]
    print(f"rebuild of {events:,} events: {plain:.1f}s without search, {searched:.1f}s with it: the index adds "
          f"{(searched - plain) / max(1, events) * 1e6:.1f} µs per event through the triggers; indexing in bulk "
          f"after the load (search.bulk_populate, 'optimize' included) takes {results['bulk']:.1f}s = "
          f"{results['bulk'] / max(1, events) * 1e6:.1f} µs per event", flush=True)


def percentiles(times: list[float]) -> tuple[float, float]:
    ms = sorted(t * 1000 for t in times)
    return statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.95))]


def summary(label: str, times: list[float]) -> str:
    median, p95 = percentiles(times)
    return f"{label:<34} median {median:7.2f} ms   p95 {p95:7.2f} ms   ({len(times)} queries)"


def measure_repo(repo: str, queries: int = 200) -> dict:
    """The numbers for a benchmark row, from a repository whose daemon runs: {messages, median_ms, p95_ms,
    common_median_ms, index_bytes_per_message}. (bench/bench.py may call this for its search row.)"""
    db_path = os.path.join(repo, ".thrum", "var", "messages.db")
    sizes = index_bytes(db_path)
    sampled, common = sample_queries(db_path, queries, seed=15)
    measure(repo, sampled)  # the first pass counts each word once (see main)
    median, p95 = percentiles(measure(repo, sampled))
    common_median, _ = percentiles(measure(repo, common, repeat=5))
    n = sizes["messages"]
    return {"messages": n, "median_ms": median, "p95_ms": p95, "common_median_ms": common_median,
            "index_bytes_per_message": sizes["search_bytes"] / n if n and "search_bytes" in sizes else None,
            "queries": sampled, "common_queries": common}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", help="an initialized thrum repository to search (default: build one)")
    ap.add_argument("--messages", type=int, default=100_000, help="messages to generate (default 100,000)")
    ap.add_argument("--queries", type=int, default=200, help="sampled two-word queries (default 200)")
    ap.add_argument("--rebuild-cost", action="store_true", help="also time a rebuild with and without search")
    ap.add_argument("--keep", action="store_true", help="keep the generated repository")
    ap.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    args = ap.parse_args(argv)
    tmp = None
    repo = args.repo
    if repo is None:
        tmp = tempfile.mkdtemp(prefix="thrum-bench-search-")
        repo = os.path.join(tmp, "repo")
        generate(repo, args.messages)
    repo = os.path.abspath(repo)
    db_path = os.path.join(repo, ".thrum", "var", "messages.db")
    started = False
    try:
        status = thrum(repo, "daemon", "status", "--json", check=False).stdout
        if not json.loads(status or "{}").get("running"):
            t0 = time.perf_counter()
            thrum(repo, "daemon", "start")
            started = True
            print(f"daemon start: {time.perf_counter() - t0:.2f}s", flush=True)
        sizes = index_bytes(db_path)
        n = sizes["messages"]
        print(f"messages: {n:,}", flush=True)
        if "search_bytes" in sizes and n:
            print(f"search index: {sizes['search_bytes'] / 2**20:.1f} MiB = {sizes['search_bytes'] / n:.0f} bytes "
                  f"per message (messages table {sizes['messages_table_bytes'] / n:.0f}, whole database "
                  f"{sizes['total_bytes'] / n:.0f} bytes per message)", flush=True)
        queries, common = sample_queries(db_path, args.queries, seed=15)
        # The daemon remembers how many messages contain a word (bm25 would count it per query): the first
        # pass pays for counting each word once, as right after a daemon start; the second is the steady state.
        print(summary("two words, first pass", measure(repo, queries)), flush=True)
        sampled_times, common_times = measure(repo, queries), measure(repo, common, repeat=5)
        print(summary("two words of one message", sampled_times), flush=True)
        print(summary(f"most frequent words ({common[0]!r}…)", common_times), flush=True)
        if args.json:
            median, p95 = percentiles(sampled_times)
            with open(args.json, "w") as f:
                json.dump({"messages": n, "median_ms": median, "p95_ms": p95,
                           "common_median_ms": percentiles(common_times)[0],
                           "index_bytes_per_message": sizes["search_bytes"] / n if "search_bytes" in sizes else None},
                          f, indent=2)
        if args.rebuild_cost:
            thrum(repo, "daemon", "stop")
            started = False
            rebuild_cost(repo)
    finally:
        if started:
            thrum(repo, "daemon", "stop")
        if tmp and not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp:
            print(f"kept: {repo}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
