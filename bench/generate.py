"""A year of a team's messages, written straight into a repository's log.

`bench.py --generate N` registers the agents and groups through a real daemon (so identities,
sessions and groups are what thrum itself writes), stops it, and then appends N messages and
what a team does with them to the log files as the daemon would have written them: direct
mentions, role and group mentions, `@everyone` and plain broadcasts, threads and replies,
module scopes, priorities, edits, deletions, read markers (most messages are read in batches
some time after they arrive; the newest and a few stragglers stay unread), delivery receipts
and several past sessions per agent. Timestamps spread over the year before now, in order.

Writing the log directly takes seconds per 100,000 messages, where sending them through the
socket would take minutes; the projection is then built by `thrum migrate --rebuild`, which
is itself a benchmark row.
"""

from __future__ import annotations

import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from thrum.events import deterministic_ulid, encode_line, format_ns, now_ns  # noqa: E402

YEAR_NS = 365 * 86400 * 10**9
ROLES = ("coordinator", "implementer", "reviewer", "planner", "tester")
MODULES = ("auth", "api", "storage", "sync", "ui", "cli", "billing", "search", "infra", "docs")
GROUPS = ("backend", "frontend", "release", "oncall", "security", "data", "platform", "qa")
WORDS = ("the token refresh fails when the session expires before the retry loop runs again and the client"
         " caches a stale credential please review my change to the storage layer migration is ready for a"
         " second look tests pass locally but CI times out on the integration suite I moved the handler into"
         " its own module we decided to keep the old endpoint for one more release can you take the parser"
         " ticket the benchmark regressed by ten percent after the index change rollback plan is documented"
         " merge conflict in the config loader blocked waiting on review done shipping tonight").split()
# A vocabulary as wide as a team's: the words above plus generated ones (identifiers, names, jargon),
# drawn Zipf-like, so a few words are in most messages and most words in few (what search meets).
_SYLLABLES = ("ka", "to", "ri", "ne", "mo", "sa", "lu", "de", "vi", "po", "gra", "tek", "zor", "ux", "bel", "fin")
VOCABULARY = WORDS + [a + b + c for a in _SYLLABLES for b in _SYLLABLES for c in _SYLLABLES][:5000]
FOREIGN = ("токен обновления истёк после перезапуска", "令牌刷新失败 需要重新登录", "トークンの更新に失敗しました",
           "сервер синхронизации недоступен", "数据库迁移已完成")


def agent_name(i: int) -> str:
    return f"{ROLES[i % len(ROLES)]}_{i:04d}"


class Team:
    """Who exists: agents with roles, groups and their members (resolved to agent names)."""

    def __init__(self, agents: int) -> None:
        self.agents = [agent_name(i) for i in range(agents)]
        self.by_role = {r: [a for a in self.agents if a.startswith(r + "_")] for r in ROLES}
        # Each group: a few agents, one role, and the first group nested in the last.
        self.group_members: dict[str, list[tuple[str, str]]] = {}
        for g, name in enumerate(GROUPS):
            members = [("agent", self.agents[(g * 7 + k * 3) % agents]) for k in range(4)]
            if g < 2:
                members.append(("role", ROLES[g % len(ROLES)]))
            self.group_members[name] = members
        self.group_members[GROUPS[-1]].append(("group", GROUPS[0]))

    def expand(self, group: str, seen: frozenset = frozenset()) -> set[str]:
        out: set[str] = set()
        for kind, value in self.group_members[group]:
            if kind == "agent":
                out.add(value)
            elif kind == "role":
                out.update(self.by_role[value])
            elif value not in seen:
                out |= self.expand(value, seen | {group})
        return out


def setup_team(call, thrum, agents: int) -> Team:
    """Register the agents (quickstart: identity file, session) and the groups through the daemon."""
    team = Team(agents)
    for name in team.agents:
        thrum("quickstart", "--name", name, "--role", name.rsplit("_", 1)[0], "--module", "main", name=name)
    for name, members in team.group_members.items():
        call("group.create", {"name": name, "caller_agent_id": team.agents[0]})
    for name, members in team.group_members.items():
        for kind, value in members:
            call("group.member.add", {"group": name, "member_type": kind, "member_value": value,
                                      "caller_agent_id": team.agents[0]})
    return team


class _Writer:
    """Buffered appends to the log's shard files."""

    def __init__(self, sync_dir: str) -> None:
        self.sync_dir = sync_dir
        self.buffers: dict[str, list[bytes]] = {}
        self.pending = 0
        self.bytes = 0
        self.events = 0

    def add(self, rel: str, event: dict) -> None:
        line = encode_line(event)
        self.buffers.setdefault(rel, []).append(line)
        self.pending += 1
        self.events += 1
        self.bytes += len(line)
        if self.pending >= 20000:
            self.flush()

    def flush(self) -> None:
        for rel, lines in self.buffers.items():
            path = os.path.join(self.sync_dir, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "ab") as f:
                f.write(b"".join(lines))
        self.buffers.clear()
        self.pending = 0


def write_history(sync_dir: str, team: Team, count: int, *, seed: int = 1, origin: str = "d_generated",
                  progress=None, end_ns: int | None = None, span_ns: int = YEAR_NS, sessions_per_agent: int = 10,
                  max_events: int | None = None) -> dict:
    """Append `count` messages and the team's edits, deletions, reads and receipts; returns counts.

    By default a year that ends an hour ago; `end_ns`/`span_ns` place it elsewhere (another
    clone's recent work, bench_sync.py). With `max_events`, no message is started once that
    many events were written (so the total ends at most a few read markers above it).
    """
    rng = random.Random(seed)
    out = _Writer(sync_dir)
    end = now_ns() - 3600 * 10**9 if end_ns is None else end_ns  # an hour ago: quickstart sessions stay newest
    start = end - span_ns
    step = span_ns // max(count, 1)
    seq = 0

    def event(etype: str, ns: int, **fields) -> dict:
        nonlocal seq
        seq += 1
        ev = {"type": etype, "timestamp": format_ns(ns), "v": 1, "origin_daemon": origin,
              "event_id": "evt_" + deterministic_ulid(ns // 1_000_000, b"gen:%d:%d" % (seed, seq))}
        ev.update(fields)
        return ev

    # Past sessions: ten per agent, spread over the year, each a start and an end.
    sessions: dict[str, list[tuple[int, str]]] = {}
    for a in team.agents:
        spans = sorted(rng.randrange(start, end) for _ in range(sessions_per_agent))
        for k, t0 in enumerate(spans):
            sid = "ses_" + deterministic_ulid(t0 // 1_000_000, f"{a}:{k}".encode())
            sessions.setdefault(a, []).append((t0, sid))
            out.add("events.jsonl", event("agent.session.start", t0, agent_id=a, session_id=sid))
            out.add("events.jsonl", event("agent.session.end", t0 + 3 * 3600 * 10**9, session_id=sid,
                                          reason="normal"))
    members = {g: sorted(team.expand(g)) for g in GROUPS}
    vocab_weights, acc = [], 0.0
    for k in range(len(VOCABULARY)):
        acc += 1 / (k + 1)
        vocab_weights.append(acc)
    # How much each agent talks: Zipf-like (the busiest ~10% of all messages), in a shuffled order.
    weights = [1 / (k + 1) ** 0.8 for k in range(len(team.agents))]
    rng.shuffle(weights)
    talk, acc = [], 0.0
    for w in weights:
        acc += w
        talk.append(acc)
    recent: list[tuple[str, str, str]] = []  # (message_id, author, thread_id) of recent messages
    unread: dict[str, list[str]] = {a: [] for a in team.agents}
    batch_at = {a: rng.randint(3, 40) for a in team.agents}
    own: list[tuple[int, str, str]] = []  # messages to edit or delete later: (due ns, kind, id+author)
    stats = {"messages": 0, "edits": 0, "deletes": 0, "read_events": 0, "reads": 0, "delivered_events": 0,
             "broadcasts": 0, "threads": 0}
    for i in range(count):
        if max_events is not None and out.events >= max_events:
            break
        ns = start + i * step + rng.randrange(step)
        author = rng.choices(team.agents, cum_weights=talk)[0]  # a few agents talk most
        sid = next((s for t, s in reversed(sessions[author]) if t <= ns), sessions[author][0][1])
        mid = "msg_" + deterministic_ulid(ns // 1_000_000, b"m:%d:%d" % (seed, i))
        refs: list[dict] = []
        scopes: list[dict] = []
        thread_id = ""
        kind = rng.random()
        if kind < 0.25 and recent:  # a reply in a thread
            parent, parent_author, thread_id = recent[rng.randrange(len(recent))]
            refs.append({"type": "reply_to", "value": parent})
            if not thread_id:
                thread_id = "thr_" + parent[4:]
            # A reply reaches the author of what it answers (thrum adds that mention); a follow-up to
            # one's own message names someone, or it would be a broadcast.
            if parent_author == author:
                parent_author = team.agents[rng.randrange(len(team.agents))]
            refs.append({"type": "mention", "value": parent_author})
            recipients = {parent_author}
            stats["threads"] += 1
        elif kind < 0.80:
            target = team.agents[rng.randrange(len(team.agents))]
            refs.append({"type": "mention", "value": target})
            recipients = {target}
        elif kind < 0.85:
            role = ROLES[rng.randrange(len(ROLES))]
            refs.append({"type": "mention", "value": role})
            recipients = set(team.by_role[role])
        elif kind < 0.97:
            g = GROUPS[rng.randrange(len(GROUPS))]
            scopes.append({"type": "group", "value": g})
            refs.append({"type": "group", "value": g})
            recipients = set(members[g])
        elif kind < 0.99:
            scopes.append({"type": "group", "value": "everyone"})
            refs.append({"type": "group", "value": "everyone"})
            recipients = set(team.agents)
            stats["broadcasts"] += 1
        else:
            recipients = set(team.agents)
            stats["broadcasts"] += 1
        if rng.random() < 0.5:
            scopes.append({"type": "module", "value": MODULES[rng.randrange(len(MODULES))]})
        words = rng.randint(6, 60)
        text = " ".join(rng.choices(VOCABULARY, cum_weights=vocab_weights, k=words))
        if rng.random() < 0.01:
            text += " " + FOREIGN[rng.randrange(len(FOREIGN))]
        fields = {"message_id": mid, "agent_id": author, "session_id": sid,
                  "body": {"format": "markdown", "content": f"{text} (#{i})"}}
        if refs:
            fields["refs"] = refs
        if scopes:
            fields["scopes"] = scopes
        if thread_id:
            fields["thread_id"] = thread_id
        p = rng.random()
        if p < 0.02:
            fields["priority"] = "critical"
        elif p < 0.07:
            fields["priority"] = "high"
        elif p < 0.10:
            fields["priority"] = "low"
        rel = f"messages/{author}.jsonl"
        out.add(rel, event("message.create", ns, **fields))
        stats["messages"] += 1
        recent.append((mid, author, thread_id))
        if len(recent) > 200:
            recent.pop(0)
        r = rng.random()
        if r < 0.02:
            own.append((ns + rng.randrange(60, 3600) * 10**9, "edit", mid + " " + author))
        elif r < 0.03:
            own.append((ns + rng.randrange(60, 3600) * 10**9, "delete", mid + " " + author))
        for due, what, ref in [o for o in own if o[0] <= ns]:
            own.remove((due, what, ref))
            m, a = ref.split(" ")
            if what == "edit":
                out.add(f"messages/{a}.jsonl", event("message.edit", due, message_id=m, edited_by=a,
                                                     body={"format": "markdown", "content": f"edited: {m}"}))
                stats["edits"] += 1
            else:
                out.add(f"messages/{a}.jsonl", event("message.delete", due, message_id=m, reason="obsolete"))
                stats["deletes"] += 1
        for a in recipients - {author}:
            if rng.random() < 0.001:
                continue  # a straggler: never read (an unread page walks past the read ones around it)
            pending = unread[a]
            pending.append(mid)
            if len(pending) >= batch_at[a]:
                t = ns + rng.randrange(1, 600) * 10**9
                if rng.random() < 0.3:  # a hook handed them over first, then the agent read them
                    out.add(f"messages/{a}.jsonl", event("message.delivered", t, agent_id=a,
                                                         message_ids=list(pending), via="hook"))
                    stats["delivered_events"] += 1
                    t += 10**9
                out.add(f"messages/{a}.jsonl", event("message.read", t, agent_id=a, message_ids=list(pending)))
                stats["read_events"] += 1
                stats["reads"] += len(pending)
                pending.clear()
                batch_at[a] = rng.randint(3, 40)
        if progress and (i + 1) % 50000 == 0:
            progress(i + 1, count)
    out.flush()
    stats["log_bytes"] = out.bytes
    stats["events"] = out.events
    stats["unread_left"] = sum(len(v) for v in unread.values())
    return stats
