"""SIGKILL while sends are in flight: every acknowledged message survives, exactly once."""

import json
import os
import signal
import threading
from collections import Counter

import pytest

from conftest import FACTOR, pid_alive, wait_for
from helpers import RawConn, assert_log_clean, log_events, message_create_counts, register

SENDERS = ("alice", "bob", "carol", "dave")
WINDOW = 8          # requests each sender pipelines before reading the answers
MAX_PER_SENDER = 5000  # a bound in case the kill never lands


def _sender(t, name, acked, sent, lock, enough, kill_after):
    try:
        conn = RawConn(t.socket, timeout=30)
    except OSError:
        return
    i = 0
    try:
        while i < MAX_PER_SENDER:
            batch = []
            for _ in range(WINDOW):
                cid = f"{name}-{i}"
                batch.append(cid)
                i += 1
            with lock:
                sent.update({cid: name for cid in batch})
            conn.send(b"".join(json.dumps({"jsonrpc": "2.0", "method": "message.send", "id": cid, "params": {
                "caller_agent_id": name, "content": f"content of {cid}", "client_id": cid}}).encode() + b"\n"
                for cid in batch))
            for _ in batch:
                reply = conn.recv()
                assert "result" in reply, reply
                with lock:
                    acked[reply["id"]] = reply["result"]["message_id"]
                    if len(acked) >= kill_after:
                        enough.set()
    except (ConnectionError, OSError):
        pass  # the daemon was killed under us
    finally:
        conn.close()


@pytest.mark.parametrize("kill_after", [1, 60, 400])
def test_sigkill_mid_write_loses_no_acknowledged_message(daemon, kill_after):
    t = daemon
    for name in SENDERS:
        register(t, name, "implementer", "core")
    pid = t.pid()
    acked, sent, lock, enough = {}, {}, threading.Lock(), threading.Event()
    threads = [threading.Thread(target=_sender, args=(t, name, acked, sent, lock, enough, kill_after), daemon=True)
               for name in SENDERS]
    for th in threads:
        th.start()
    assert enough.wait(60 * FACTOR), f"only {len(acked)} acknowledgements before the deadline"
    os.kill(pid, signal.SIGKILL)
    for th in threads:
        th.join(60 * FACTOR)
        assert not th.is_alive()
    wait_for(lambda: not pid_alive(pid), what="the killed daemon to go away")
    with lock:
        acked = dict(acked)
        sent = dict(sent)
    assert len(acked) >= kill_after
    in_flight = [cid for cid in sent if cid not in acked]  # some may have been written, some not

    t.start()
    assert "bad_lines" not in t.call("health")
    with t.client() as c:
        for cid, mid in acked.items():
            m = c.call("message.get", {"message_id": mid})["message"]
            assert m["body"]["content"] == f"content of {cid}"
        counts = message_create_counts(t.sync_dir)
        assert all(counts[mid] == 1 for mid in acked.values())
        assert set(counts.values()) == {1}  # no duplicate of anything, acknowledged or not
        # The projection holds exactly what the log holds.
        assert c.call("message.list", {"page_size": 1})["total"] == len(counts)
        # Retrying what was in flight, with the same client ids, never duplicates.
        for cid in in_flight:
            c.call("message.send", {"caller_agent_id": sent[cid], "content": f"content of {cid}", "client_id": cid})
        per_client = Counter(e.get("client_id") for _, e in log_events(t.sync_dir)
                             if e.get("type") == "message.create")
        assert {cid: per_client[cid] for cid in sent} == {cid: 1 for cid in sent}
        assert c.call("message.list", {"page_size": 1})["total"] == len(sent)
    assert_log_clean(t)
