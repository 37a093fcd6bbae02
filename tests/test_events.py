"""The worker's wake-ups: a master's xadd and keymiss events, on a real cluster."""

from __future__ import annotations

import time

from cluster import keys, partitions, routing
from gears.events import ShardEvents


def test_xadd_wakes_and_keymiss_is_dispatched_on_the_owning_master(cluster):
    client = cluster.client()
    pmap = partitions.load(client)
    part = pmap[0]
    owner = routing.owner_name(client, part.slot)
    misses: list = []
    events = ShardEvents(misses.append)
    host, _, port = owner.rpartition(":")
    events.attach(routing.node_connection(client, host, int(port)))
    assert events.wait(0.05) is False  # nothing happened
    client.xadd(keys.request_stream(part.tag), {"n": "1"})
    deadline = time.monotonic() + 10
    woke = False
    while not woke and time.monotonic() < deadline:
        woke = events.wait(0.2)
    assert woke
    # a GET that misses a key of this master publishes keymiss there
    key = next(keys.ask_key(f"q{i}") for i in range(1000)
               if routing.owner_name(client, client.keyslot(keys.ask_key(f"q{i}"))) == owner)
    assert client.get(key) is None
    deadline = time.monotonic() + 10
    while not misses and time.monotonic() < deadline:
        events.wait(0.2)
    assert [m.decode() if isinstance(m, bytes) else m for m in misses] == [key]
