"""The Go v0.4 fixture (50 agents, 10,000 messages, 20 groups) loads through `thrum migrate`."""

import sqlite3

import pytest

from conftest import Thrum, extract_fixture
from helpers import message_create_counts


def _reads(db):
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT COUNT(*) FROM message_reads").fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def go_repo(repo, env, fixture_tar):
    extract_fixture(fixture_tar, repo)  # creates .thrum/ with the Go layout
    return Thrum(repo, env)


def test_fixture_loads(go_repo, fixture_tar):
    t = go_repo
    first = t.json("migrate")
    assert first["imported"] == 10_321 and first["skipped"] == 0 and first["unparseable"] == 0
    assert first["messages"] == 10_000 and first["agents"] == 50 and first["bad_lines"] == 0
    assert first["reads"] == 6_908
    assert _reads(t.var / "messages.db") == 6_908
    counts = message_create_counts(t.sync_dir)
    assert len(counts) == 10_000 and set(counts.values()) == {1}
    assert len(list((t.sync_dir / "messages").glob("*.jsonl"))) == 50

    # Running migrate again, even over a fresh copy of the Go files, imports nothing twice.
    extract_fixture(fixture_tar, t.repo)
    again = t.json("migrate")
    assert again["imported"] == 0 and again["skipped"] == 10_321
    assert again["messages"] == 10_000 and again["agents"] == 50
    assert _reads(t.var / "messages.db") == 6_908
    assert message_create_counts(t.sync_dir) == counts
    assert t.json("migrate")["imported"] == 0

    t.start()
    try:
        with t.client() as c:
            agents = c.call("agent.list", {})["agents"]
            assert len(agents) == 50
            assert len(c.call("agent.list", {"role": "coordinator"})["agents"]) == 10
            listing = c.call("message.list", {"page_size": 100})
            assert listing["total"] == 10_000 and len(listing["messages"]) == 100
            assert listing["total_pages"] == 100
            p1 = c.call("message.list", {"page_size": 50, "page": 1})["messages"]
            p2 = c.call("message.list", {"page_size": 50, "page": 2})["messages"]
            assert p1 and p2 and p1[0]["message_id"] != p2[0]["message_id"]
            groups = {g["name"]: g for g in c.call("group.list", None)["groups"]}
            assert len(groups) == 21 and "everyone" in groups
            assert {"coordinators", "team-auth", "super-team-0", "adhoc-16"} <= set(groups)
            assert c.call("group.info", {"name": "coordinators"})["name"] == "coordinators"
            sessions = c.call("session.list", {"active_only": True})["sessions"]
            assert len(sessions) == 27
            assert "coordinator_0000" in {s["agent_id"] for s in sessions}
            # Read markers carried over from the Go database.
            unread = c.call("message.list", {"unread_for_agent": "implementer_0001", "page_size": 1})
            assert unread["total"] < 10_000

        inbox = t.json("inbox", "--page-size", "5", name="coordinator_0000")
        assert len(inbox["messages"]) == 5 and inbox["total"] > 0
        assert all(m["agent_id"] != "coordinator_0000" for m in inbox["messages"])
        human = t.run("inbox", name="coordinator_0000").stdout
        assert "Showing 1-10 of" in human and "(filtered for @coordinator_0000)" in human
        # A fixture agent can send with its fixture session, and the other one reads it.
        sent = t.json("send", "hello from python", "--to", "@implementer_0001", name="coordinator_0000")
        got = t.json("inbox", "--unread", "--page-size", "100", name="implementer_0001")
        assert sent["message_id"] in [m["message_id"] for m in got["messages"]]
        assert (t.sync_dir / "messages" / "coordinator_0000.jsonl").read_bytes().count(b"\n") > 100
    finally:
        t.stop()


def test_daemon_start_imports_a_go_layout_without_migrate(go_repo):
    t = go_repo
    t.start()  # no `thrum migrate` first: start-up must not ignore (or overwrite) the Go data
    try:
        with t.client() as c:
            assert len(c.call("agent.list", {})["agents"]) == 50
            assert c.call("message.list", {"page_size": 1})["total"] == 10_000
            assert len(c.call("group.list", None)["groups"]) == 21
    finally:
        t.stop()
    # The Go database's read markers were imported, not lost with the database.
    assert _reads(t.var / "messages.db") == 6_908
    assert len(message_create_counts(t.sync_dir)) == 10_000
    assert t.json("migrate")["imported"] == 0
