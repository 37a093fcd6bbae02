"""The read server's checks on a request: what it cannot answer is poison, said why."""

from __future__ import annotations

import pytest

from cluster import keys, partitions
from cluster.partitions import PartitionMap
from gears.consumer import Entry, Poison
from gears.protocol import ReadReply, ReadRequest, SpanReply
from gears.read_server import parse_request

PMAP = PartitionMap.create(4, [[(0, 5460)], [(5461, 10922)], [(10923, 16383)]])


class _Shard:
    pmap = PMAP


def _pid_in(partition) -> str:
    return next(partitions.passage_id(f"d{i}", 0) for i in range(1000)
                if PMAP.for_doc(f"d{i}") == partition)


def _entry(partition, changes: dict | None = None) -> Entry:
    request = ReadRequest("a1", partition.index, "who?", [_pid_in(partition)],
                          keys.reply_list("a1"), 9_999_999_999_999)
    return Entry(partition, keys.request_stream(partition.tag), b"1-1",
                 {**request.fields(), **(changes or {})})


def test_a_good_request_parses():
    p = PMAP[1]
    request = parse_request(_entry(p), _Shard(), 65536)
    assert request.partition == 1 and request.pids == [_pid_in(p)]


@pytest.mark.parametrize("changes, why", [
    ({"partition": "15"}, "partition 15 on the stream of partition 1"),
    ({"partition": "one"}, "bad field"),
    ({"pids": "zz"}, "'zz' does not parse"),
    ({"pids": "0123456789abcdef"}, "does not parse"),
    ({"pids": _pid_in(PMAP[2])}, "belongs to another partition"),
    ({"reply": "sq:{p1.0}:requests"}, "is not the ask's reply list"),
    ({"deadline": "soon"}, "bad field"),
    ({"q": "x" * 70_000}, "over 65536 bytes"),
    ({"q": b"\xff\xfe"}, "bad field"),
    ({"spans": "0"}, "spans 0 is not from 1 to 10"),
    ({"spans": "11"}, "spans 11 is not from 1 to 10"),
    ({"spans": "x"}, "bad field"),
])
def test_what_cannot_be_answered_is_poison(changes, why):
    with pytest.raises(Poison, match=why):
        parse_request(_entry(PMAP[1], changes), _Shard(), 65536)


def test_a_missing_field_is_poison():
    entry = _entry(PMAP[1])
    del entry.fields["reply"]
    with pytest.raises(Poison, match="missing field 'reply'"):
        parse_request(entry, _Shard(), 65536)


def test_versions_mix_during_an_upgrade():
    """A request from an older asker (no ``spans``) asks for one span a passage; a reply
    carries ``more`` only when there is some, and a newer peer's fields are ignored."""
    entry = _entry(PMAP[1])
    assert parse_request(entry, _Shard(), 65536).spans == 1
    del entry.fields["spans"]
    assert parse_request(entry, _Shard(), 65536).spans == 1
    assert parse_request(_entry(PMAP[1], {"spans": "10"}), _Shard(), 65536).spans == 10
    reply = ReadReply("a1", 1, "w", [SpanReply("d.0", 0, 3, "abc", 2.0)])
    assert '"more"' not in reply.to_json()  # what older askers read
    reply.spans.append(SpanReply("d.1", 4, 6, "de", 1.5, more=[[0, 2, "xy", 1.0]]))
    back = ReadReply.from_json(reply.to_json())
    assert back.spans[0].more == [] and back.spans[1].all_spans() == [
        (4, 6, "de", 1.5), (0, 2, "xy", 1.0)]
    newer = reply.to_json().replace('"more"', '"shiny":1,"more"', 1)
    newer = newer.replace('"ask_id"', '"later":[],"ask_id"', 1)
    assert ReadReply.from_json(newer) == back
