"""The event log's bytes: Go's canonical encoding (byte-exact on the whole fixture) and sharding."""

import json
import tarfile

import pytest

from helpers import log_events, log_lines, register
from thrum.events import EventError, decode_line, encode_line, shard_for


def _fixture_lines(tar_path):
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():
            name = member.name
            if member.isfile() and name.endswith(".jsonl") and (
                    name == ".thrum/events.jsonl" or name.startswith(".thrum/messages/")):
                data = tar.extractfile(member).read()
                assert data.endswith(b"\n"), f"{name} does not end with a newline"
                for line in data.split(b"\n")[:-1]:
                    yield name, line + b"\n"


def test_every_fixture_line_reencodes_byte_exact(fixture_tar):
    count = 0
    mismatches = []
    for name, line in _fixture_lines(fixture_tar):
        count += 1
        if encode_line(json.loads(line)) != line:
            mismatches.append((name, line[:120]))
    assert mismatches == []
    assert count == 10_321  # 321 in events.jsonl + 10,000 message lines


def test_go_escapes_html_characters_and_line_separators():
    event = {"type": "message.create", "body": {"content": "a<b>&c\u2028d\u2029e"}, "z": "é😀", "a": 1}
    assert encode_line(event) == (
        b'{"a":1,"body":{"content":"a\\u003cb\\u003e\\u0026c\\u2028d\\u2029e"},'
        b'"type":"message.create","z":"\xc3\xa9\xf0\x9f\x98\x80"}\n')


def test_control_characters_are_escaped_like_go():
    line = encode_line({"type": "x", "c": "tab\there\nnl\r\x01\x1f\"\\/"})
    # Go: \t \n \r short forms, other controls as lowercase \u00XX, '/' left alone.
    assert line == b'{"c":"tab\\there\\nnl\\r\\u0001\\u001f\\"\\\\/","type":"x"}\n'


def test_encoding_is_canonical_at_every_level():
    a = encode_line({"type": "t", "b": {"y": 1, "x": [{"q": 1, "p": 2}]}, "a": None})
    b = encode_line({"a": None, "b": {"x": [{"p": 2, "q": 1}], "y": 1}, "type": "t"})
    assert a == b == b'{"a":null,"b":{"x":[{"p":2,"q":1}],"y":1},"type":"t"}\n'
    assert b"\n" not in a[:-1]


def test_lone_surrogate_is_refused():
    with pytest.raises(EventError):
        encode_line({"type": "x", "c": "\ud800"})


@pytest.mark.parametrize("line", [b"not json", b"[1,2]", b'{"no_type":1}', b'{"type":5}', b"\xff\xfe"])
def test_decode_rejects_non_events(line):
    with pytest.raises(EventError):
        decode_line(line)


def test_shard_paths():
    assert shard_for({"type": "message.create", "agent_id": "alice"}) == "messages/alice.jsonl"
    assert shard_for({"type": "message.edit", "message_id": "m"}, author="bob") == "messages/bob.jsonl"
    assert shard_for({"type": "message.create", "agent_id": "user:leon"}) == "messages/user_leon.jsonl"
    assert shard_for({"type": "message.create", "agent_id": "agent:planner:1B9K"}) == \
        "messages/planner_1B9K.jsonl"
    for etype in ("agent.register", "agent.session.start", "group.create", "group.member.add", "agent.update"):
        assert shard_for({"type": etype, "agent_id": "alice"}) == "events.jsonl"
    for evil in ("../x", "a/b", ".hidden", ""):
        with pytest.raises(EventError):
            shard_for({"type": "message.create", "agent_id": evil})


def test_daemon_writes_canonical_lines_sharded_by_author(daemon):
    t = daemon
    register(t, "alice", "implementer", "auth")
    register(t, "bob", "reviewer", "auth")
    with t.client() as c:
        sent = c.call("message.send", {"caller_agent_id": "alice", "content": "x <y> & z\u2028", "mentions": ["@bob"]})
        c.call("message.edit", {"caller_agent_id": "alice", "message_id": sent["message_id"], "content": "v2 <b>"})
        c.call("message.markRead", {"caller_agent_id": "bob", "message_ids": [sent["message_id"]]})
        c.call("group.create", {"caller_agent_id": "alice", "name": "crew"})
    lines = log_lines(t.sync_dir)
    # Every line the daemon wrote is in canonical form.
    for rel, line in lines:
        assert encode_line(json.loads(line)) == line + b"\n", (rel, line)
    by_type = {}
    for rel, event in log_events(t.sync_dir):
        by_type.setdefault(event["type"], set()).add(rel)
    assert by_type["message.create"] == {"messages/alice.jsonl"}
    assert by_type["message.edit"] == {"messages/alice.jsonl"}  # the original author's file
    assert by_type["message.read"] == {"messages/bob.jsonl"}    # the reader's file
    for etype in ("agent.register", "agent.session.start", "group.create", "group.member.add"):
        assert by_type[etype] == {"events.jsonl"}, etype
    raw = (t.sync_dir / "messages" / "alice.jsonl").read_bytes()
    assert b"x \\u003cy\\u003e \\u0026 z\\u2028" in raw
    create = next(e for _, e in log_events(t.sync_dir) if e["type"] == "message.create")
    assert create["event_id"].startswith("evt_") and len(create["event_id"]) == 30
    assert create["v"] == 1 and create["timestamp"].endswith("Z")
    assert create["body"] == {"format": "markdown", "content": "x <y> & z\u2028"}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused(value):
    # Go cannot read NaN or Infinity: such a line would be lost to every Go clone.
    with pytest.raises(EventError):
        encode_line({"type": "x", "structured": {"n": value}})
