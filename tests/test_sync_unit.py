"""The sans-I/O parts of sync: parsing git's output, finding the new part of a remote file."""

from __future__ import annotations

import hashlib

from thrum import sync
from thrum.rpc import Deferred, ThrumError


def _known(data: bytes) -> list:
    return [[len(data), hashlib.sha1(data).hexdigest()]]


def test_new_part_reads_only_the_tail_of_an_extended_file():
    old = b'{"a":1}\n{"a":2}\n'
    new = old + b'{"a":3}\n'
    assert sync.new_part(new, _known(old)) == (len(old), len(new))


def test_new_part_rereads_a_file_that_is_not_an_extension():
    old = b'{"a":1}\n{"a":2}\n'
    other = b'{"a":2}\n{"a":1}\n{"a":3}\n'  # same lines, another writer's order
    assert sync.new_part(other, _known(old)) == (0, len(other))
    assert sync.new_part(other, []) == (0, len(other))


def test_new_part_prefers_the_longest_known_prefix():
    v1 = b'{"a":1}\n'
    v2 = v1 + b'{"a":2}\n'
    v3 = v2 + b'{"a":3}\n'
    known = sync.remember(sync.remember([], *_known(v1)[0]), *_known(v2)[0])
    assert sync.new_part(v3, known) == (len(v2), len(v3))


def test_new_part_leaves_a_line_still_being_written():
    data = b'{"a":1}\n{"a":2'
    assert sync.new_part(data, []) == (0, 8)
    # ... and takes it whole once it is complete, even from a remembered mid-line size
    done = data + b'}\n'
    assert sync.new_part(done, _known(data)) == (8, len(done))


def test_remember_is_bounded_and_most_recent_first():
    known: list = []
    for i in range(1, 10):
        known = sync.remember(known, i, str(i))
    assert [k[0] for k in known] == [9, 8, 7, 6][:sync.BLOB_MEMORY]


def test_parse_ls_tree_and_mktree_input_round_trip():
    out = (b"100644 blob " + b"a" * 40 + b"     12\tevents.jsonl\0"
           b"040000 tree " + b"b" * 40 + b"      -\tmessages\0"
           b"100644 blob " + b"c" * 40 + b"      7\tmessages/alice.jsonl\0")
    entries = sync.parse_ls_tree(out)
    assert entries["events.jsonl"] == ("100644", "blob", "a" * 40, 12)
    assert entries["messages"] == ("040000", "tree", "b" * 40, -1)
    assert entries["messages/alice.jsonl"][3] == 7
    assert sync._mktree_input({"events.jsonl": entries["events.jsonl"]}) == \
        b"100644 blob " + b"a" * 40 + b"\tevents.jsonl\0"


def test_parse_diff_tree():
    z = "0" * 40
    out = (f":000000 100644 {z} {'1' * 40} A\0messages/bob.jsonl\0"
           f":100644 100644 {'2' * 40} {'3' * 40} M\0events.jsonl\0"
           f":100644 000000 {'4' * 40} {z} D\0old.jsonl\0").encode()
    assert sync.parse_diff_tree(out) == [("A", "1" * 40, "messages/bob.jsonl"), ("M", "3" * 40, "events.jsonl"),
                                         ("D", z, "old.jsonl")]


def test_parse_cat_file():
    out = b"a" * 40 + b" blob 3\nabc\n" + b"b" * 40 + b" blob 0\n\n"
    assert sync.parse_cat_file(out) == {"a" * 40: b"abc", "b" * 40: b""}


def test_log_paths_are_the_only_files_merged():
    ok = ["events.jsonl", "messages/alice.jsonl", "messages/user_leon.jsonl", "messages/coordinator-1.jsonl"]
    bad = ["messages.jsonl", "context/alice.md", "messages/../x.jsonl", "messages/a/b.jsonl", "messages/.jsonl",
           "events.jsonl.tmp"]
    assert all(sync._LOG_PATH.match(p) for p in ok)
    assert not any(sync._LOG_PATH.match(p) for p in bad)


def test_push_rejection_is_told_apart_from_failure():
    rejected = sync.GitResult(1, b"To /r\n!\trefs/heads/x:refs/heads/a-sync\t[rejected] (fetch first)\nDone\n", b"")
    failed = sync.GitResult(128, b"", b"fatal: '/r' does not appear to be a git repository\n")
    declined = sync.GitResult(1, b"!\tx:refs/heads/a-sync\t[remote rejected] (pre-receive hook declined)\n", b"")
    assert sync._push_was_rejected(rejected)
    assert not sync._push_was_rejected(failed)
    assert not sync._push_was_rejected(declined)
    assert sync._push_error(declined) == "[remote rejected] (pre-receive hook declined)"


def test_deferred_delivers_once_whenever_it_is_bound():
    got = []
    early = Deferred()
    early.resolve({"x": 1})
    early.resolve({"x": 2})
    early.bind(lambda ok, value: got.append((ok, value)))
    late = Deferred()
    late.bind(lambda ok, value: got.append((ok, value)))
    err = ThrumError("nope")
    late.fail(err)
    late.resolve({"y": 1})
    assert got == [(True, {"x": 1}), (False, err)]
