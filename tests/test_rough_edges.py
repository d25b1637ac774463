"""Small fixes from review: strict params, CLI body sources and filters, the module import graph."""

import ast

from conftest import ROOT
from helpers import RawConn


def test_mark_read_wants_an_array_of_ids(agents):
    t = agents
    with RawConn(t.socket) as c:
        mid = c.call("message.send", {"caller_agent_id": "alice", "content": "hi", "mentions": ["@bob"]})["result"][
            "message_id"]
        r = c.call("message.markRead", {"caller_agent_id": "bob", "message_ids": mid})
        assert r["error"]["code"] == -32602 and "array" in r["error"]["message"], r
        for wrong in (5, {"id": mid}, [mid, 7], None):
            r = c.call("message.markRead", {"caller_agent_id": "bob", "message_ids": wrong})
            assert r["error"]["code"] == -32602, (wrong, r)
        # Nothing was marked by the refused calls; the array form works.
        r = c.call("message.markRead", {"caller_agent_id": "bob", "message_ids": [mid]})
        assert r["result"]["newly_read"] == 1
