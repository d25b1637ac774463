"""The journal makes a batch durable with one fdatasync; recovery restores exactly what was acknowledged.

A power loss can drop log-file writes that were never fsynced. We simulate it by
cutting the files back after the batch committed (the journal was synced), then
check that opening the store restores every acknowledged line, once.
"""

import os

from thrum.store import Journal, Store


def _store(tmp_path):
    sync, var = tmp_path / "sync", tmp_path / "var"
    var.mkdir(exist_ok=True)
    return Store(str(sync), str(var / "messages.db"), str(var), "d_test")


def _send(store, n, author="alice", start=0):
    ids = []
    for i in range(start, start + n):
        event = store.append("message.create", {"message_id": f"msg_{i:04d}", "agent_id": author,
                                                "body": {"format": "markdown", "content": f"m{i}"}})
        ids.append(event["event_id"])
    store.commit()
    return ids


def _lines(path):
    return path.read_bytes().splitlines() if path.exists() else []


def test_lost_file_writes_are_restored_from_the_journal(tmp_path):
    store = _store(tmp_path)
    store.open()
    _send(store, 3, "alice")
    store.maintain()  # checkpoint: these three are durable in their file
    durable = (tmp_path / "sync/messages/alice.jsonl").stat().st_size
    _send(store, 4, "alice", start=3)
    _send(store, 2, "bob", start=7)
    expected_alice = _lines(tmp_path / "sync/messages/alice.jsonl")
    expected_bob = _lines(tmp_path / "sync/messages/bob.jsonl")
    assert len(expected_alice) == 7 and len(expected_bob) == 2
    # Simulate the crash: no checkpoint, and the un-fsynced tails of the files are gone.
    os.truncate(tmp_path / "sync/messages/alice.jsonl", durable + 10)  # a torn fragment
    os.remove(tmp_path / "sync/messages/bob.jsonl")
    store.db.close()
    store.db = None
    store.log._fds.clear()  # drop the handles without the checkpoint close() would do

    reopened = _store(tmp_path)
    reopened.open()
    assert _lines(tmp_path / "sync/messages/alice.jsonl") == expected_alice
    assert _lines(tmp_path / "sync/messages/bob.jsonl") == expected_bob
    assert reopened.stats()["messages"] == 9
    reopened.close()


def test_checkpoint_empties_the_journal(tmp_path):
    store = _store(tmp_path)
    store.open()
    _send(store, 2)
    assert len(Journal(str(tmp_path / "var/journal")).read()) == 1
    store.maintain()
    assert Journal(str(tmp_path / "var/journal")).read() == []
    store.close()


def test_a_torn_journal_record_is_ignored(tmp_path):
    journal = Journal(str(tmp_path / "journal"))
    journal.open()
    journal.append([("messages/a.jsonl", 0, b'{"x":1}\n')])
    journal.append([("messages/a.jsonl", 8, b'{"x":2}\n')])
    # Corrupt the second record's payload: its CRC no longer matches.
    second = Journal.HEADER.size + len(b'{"x":1}\n') + Journal.ENTRY.size + len(b"messages/a.jsonl")
    os.pwrite(journal.fd, b"X", second + Journal.HEADER.size + 3)
    journal.close()
    records = Journal(str(tmp_path / "journal")).read()
    assert records == [[("messages/a.jsonl", 0, b'{"x":1}\n')]]


def test_records_of_an_old_generation_are_not_replayed(tmp_path):
    journal = Journal(str(tmp_path / "journal"))
    journal.append([("events.jsonl", 0, b"a" * 100 + b"\n")])
    journal.append([("events.jsonl", 101, b"b" * 100 + b"\n")])
    journal.reset()
    journal.append([("events.jsonl", 0, b"c\n")])  # shorter: old records lie beyond it
    journal.close()
    assert Journal(str(tmp_path / "journal")).read() == [[("events.jsonl", 0, b"c\n")]]
